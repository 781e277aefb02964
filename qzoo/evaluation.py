"""Evaluation shared by ``eval/validate.py`` and :mod:`qzoo.efficiency`: load any weights spec,
check that it fits the data, score it on a named dataset split with per-example scores next to
the metrics, cache those scores, and compare families by accuracy per parameter.

Per-example scores (:class:`Scores`): classification ``label``, ``pred`` (argmax), ``correct``
(and ``top5`` above 5 classes); segmentation ``iou`` and ``dice`` per image; regression
``sq_err`` (per-example mean squared error). Every metric is a function of them
(:meth:`Scores.metric`: top-1 = 100 x mean(correct), IoU = 100 x mean(iou), MSE = mean(sq_err),
macro-F1 from the per-class counts), and scoring checks that it equals what
:class:`qzoo.metrics.Metrics` computes.

Evaluation cache (:class:`EvalCache`): ``$QZOO_CACHE/eval/`` (default ``~/.cache/qzoo/eval``),
one ``.npz`` per key = SHA-256 of (weights file SHA-256, architecture and its arguments, test-data
digest, scoring-code digest, device, batch size), holding the per-example scores, the results row
and a *probe*: the model's outputs on the first :data:`PROBE` test examples. The test-data digest
is the SHA-256 of the loaded split (inputs, targets, per-example metadata, dataset name and
normalisation), so any change to the data or its loader is another key. The scoring-code digest
(:func:`code_digest`) covers :data:`EVAL_VERSION`, torch's version, the metric and counting code
and this module's scoring functions. The model code is checked by behaviour: a hit loads the
weights and reruns the probe, and an entry whose model now computes other outputs is scored again
(so editing a model's forward re-scores exactly the checkpoints it changes).
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .bounds import device_of, load_yaml
from .errors import CheckpointError, DataError, NotARegularFileError
from .fileio import atomic_open, check_target, sha256_bytes, sha256_file
from .measure import count_macs, count_params
from .metrics import Metrics, evaluate
from .serialization import hub_cache_error

__all__ = ['load_any', 'external_available', 'evaluate_on', 'validate', 'evaluate_spec', 'Evaluation', 'Scores',
           'TrainedOn', 'training_data', 'parse_data_args',
           'score_split', 'check_fits_data', 'DataMismatchError', 'data_settings', 'load_split', 'EvalCache',
           'EVAL_VERSION', 'entry_problem', 'frontier', 'params_at_metric', 'metric_at_params', 'compare_to_curve',
           'efficiency_rows', 'TIMM_COLUMNS', 'QZOO_COLUMNS', 'write_results_csv', 'main']

#: bump when scoring (per-example scores, metrics, normalisation, the results row) changes
EVAL_VERSION = 2
#: timm's results CSV columns, then qzoo's
TIMM_COLUMNS = ['model', 'top1', 'top1_err', 'top5', 'top5_err', 'param_count', 'img_size', 'crop_pct',
                'interpolation']
QZOO_COLUMNS = ['dataset', 'split', 'data', 'data_args', 'neuron', 'macs', 'weights', 'sha256', 'source',
                'macro_f1', 'iou', 'dice', 'mse']


class DataMismatchError(CheckpointError, ValueError):
    """The weights do not fit the dataset they are scored on (task, class count, input or output
    shape). Both a :class:`~qzoo.errors.CheckpointError` and a ``ValueError``."""


# ---- loading ---------------------------------------------------------------------------------
def load_any(spec: str) -> Tuple[nn.Module, Dict[str, Any]]:
    """Model + description for a weights spec: an external registry name
    (``akamaster/resnet20``), or anything :func:`qzoo.hub.resolve_spec` takes."""
    from . import external, hub
    if spec in external.EXTERNAL:
        model = external.load_external(spec)
        path = external.cache_path(spec)
        return model, dict(file=str(path), sha256=sha256_file(path), source=external.EXTERNAL[spec].url,
                           external=True, architecture=model.pretrained_cfg.get('architecture'))
    model, info = hub.load_with_info(spec)
    return model, dict(info, external=False)


def external_available(name: str, mirrors: Sequence[Path] = ()) -> bool:
    """True when external checkpoint ``name`` can load offline: its file is in torch's hub cache,
    or a mirror folder holds it as ``<mirror>/<owner>/<file>`` (e.g. ../shared/checkpoints/akamaster/),
    in which case it is copied into the cache (and hash-checked when loaded)."""
    import shutil
    from . import external
    path = external.cache_path(name)
    if path.is_file():
        return True
    entry = external.EXTERNAL[name]
    for m in mirrors:
        src = Path(m) / name.split('/')[0] / entry.file_name
        if src.is_file():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, path)
            except OSError as e:
                raise hub_cache_error(path, e) from None
            return True
    return False


def _record(spec: str):
    """The published :class:`~qzoo.weights.Weights` record named ``spec``, or None."""
    from .weights import all_weights
    try:
        return all_weights().get(str(spec))
    except CheckpointError:
        return None


@dataclass(frozen=True)
class TrainedOn:
    """What weights were trained on, where it is recorded: the task, the dataset's name as its loader
    gives it (e.g. ``cwru-0hp-snr-6db-tr256-ev256``), the ``qzoo.data`` settings (``{'name', 'args'}``)
    and where the record was read (``how``, for messages)."""
    task: Optional[str]
    dataset: Optional[str]
    data_spec: Mapping[str, Any]
    how: str


def training_data(spec: str) -> Optional[TrainedOn]:
    """What weights ``spec`` were trained on: a published checkpoint's record, or the ``qzoo.results``
    block of the ``config.json`` of a folder (what ``qzoo train`` and ``qzoo.hub.save_pretrained(results=...)``
    write) or of an ``hf-hub:`` repository. None for weights that record nothing (a bare ``.safetensors``
    file, a URL, an external checkpoint, a folder saved without results) and for a spec that names no
    weights (loading it says why); a folder whose config.json is unreadable raises the loader's
    :class:`~qzoo.errors.CheckpointError`."""
    rec = _record(spec)
    if rec is not None:
        return TrainedOn(rec.task, rec.dataset, dict(rec.data_spec), "the record's data_spec")
    s = str(spec)
    if not (s.startswith('hf-hub:') or Path(s).expanduser().is_dir()):
        return None
    from .hub import resolve_spec
    results = ((resolve_spec(s)[2].get('config') or {}).get('qzoo') or {}).get('results')
    if not isinstance(results, Mapping) or not isinstance(results.get('data_spec'), Mapping) \
            or 'name' not in results['data_spec']:
        return None
    return TrainedOn(results.get('task'), results.get('dataset'), dict(results['data_spec']),
                     "its config.json's data_spec")


# ---- data settings -------------------------------------------------------------------------------
def data_settings(spec: str, data: Optional[str] = None, data_args: Optional[Mapping[str, Any]] = None,
                  use_record: bool = True) -> Tuple[str, Dict[str, Any], str]:
    """``(dataset, options, where they came from)`` to score weights ``spec`` with.

    Weights that record what they were trained on (:func:`training_data`: a published checkpoint, a
    run folder of ``qzoo train``) are scored with those settings (for a published checkpoint, the ones its
    test metrics were measured with) unless ``use_record`` is False or ``data`` names another dataset;
    ``data_args`` override single options on top. Other weights need ``data``."""
    rec = training_data(spec) if use_record else None
    over = dict(data_args or {})
    if rec is not None and data in (None, rec.data_spec['name']):
        args = dict(rec.data_spec.get('args') or {}, **over)
        how = rec.how + (f', overridden: {sorted(over)}' if over else '')
        return rec.data_spec['name'], args, how
    if data is None:
        raise ValueError(f'{spec!r} is not a published checkpoint or a run folder that records its training data, '
                         f'so its data settings are unknown: name the dataset to score it on (--data NAME '
                         f'[--data-arg KEY=VALUE ...]; qzoo.data.list_datasets() lists them)')
    how = 'dataset defaults' + (f', overridden: {sorted(over)}' if over else '')
    return data, over, how


@functools.lru_cache(maxsize=8)
def _load_split_cached(name: str, args_json: str, split: str):
    from .data import load_dataset
    from .data._common import sha256_array
    ds = load_dataset(name, splits=(split,), **json.loads(args_json))
    part = getattr(ds, split)
    tensors = [part.x, part.y] + [v for _, v in sorted(part.meta.items()) if isinstance(v, torch.Tensor)]
    scalars = {k: v for k, v in sorted(part.meta.items()) if isinstance(v, (int, float, str))}
    digest = sha256_bytes(json.dumps(dict(name=ds.name, split=split, arrays=sha256_array(*tensors),
                                          meta=scalars, task=ds.task, num_classes=ds.num_classes,
                                          normalize=ds.normalize), sort_keys=True, default=str))
    return ds, digest


def load_split(name: str, args: Optional[Mapping[str, Any]] = None, split: str = 'test'):
    """``(DataSplits with only split loaded, its digest)``; the last few loads are kept in memory
    (treat the returned tensors as read-only)."""
    return _load_split_cached(name, json.dumps(dict(args or {}), sort_keys=True), split)


def _normalize_for(model: nn.Module, ds) -> Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]]:
    """The dataset's normalisation with the *model's* mean/std where its config has them
    (external checkpoints were trained with other statistics than the dataset default)."""
    norm = ds.normalize
    if norm is None:
        return None
    cfg = getattr(model, 'pretrained_cfg', {}) or {}
    return tuple(cfg.get('mean', norm[0])), tuple(cfg.get('std', norm[1]))


# ---- fit checks ----------------------------------------------------------------------------------
def _fix_hint(spec: str, record) -> str:
    if record is not None:
        ds = record.data_spec
        return (f"Fix: score it on the data it was trained for (eval/validate.py without --data uses its "
                f"record's data_spec: {ds['name']} {dict(ds.get('args') or {})})")
    return 'Fix: pass --data (and --data-arg) for a dataset of the task and shape the model was trained for'


def check_fits_data(model: nn.Module, ds, split: str = 'test', spec: str = 'the model', record=None,
                    device='cpu') -> None:
    """Raise :class:`DataMismatchError` unless ``model`` fits ``ds``: the record's task is the
    dataset's, the model takes the split's inputs, and its output has the shape the task needs
    (classification: one logit per class of the dataset; segmentation: a map the size of the mask;
    regression: one value per target)."""
    from .data import BatchLoader
    ds.require_samples((split,), f'{spec} is scored on it')
    fix = _fix_hint(spec, record)
    if record is not None and record.task and record.task != ds.task:
        raise DataMismatchError(f'{spec} is a {record.task} checkpoint (trained on {record.dataset}), but {ds.name} '
                                f'is a {ds.task} dataset: its {Metrics.primary(ds.task)[0]} would mean nothing. {fix}')
    part = getattr(ds, split)
    x, y = next(iter(BatchLoader(part, 2, shuffle=False, device=device, normalize=_normalize_for(model, ds))))
    arch = getattr(model, 'pretrained_cfg', {}).get('architecture', type(model).__name__)
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except (RuntimeError, ValueError, TypeError) as e:
        raise DataMismatchError(f'{spec} ({arch}, input_size {getattr(model, "pretrained_cfg", {}).get("input_size")}) '
                                f'cannot take the inputs of {ds.name} (shape {tuple(x.shape[1:])}): '
                                f'{str(e).splitlines()[0]}. {fix}') from None
    problem = _output_problem(out, y, ds)
    if problem:
        raise DataMismatchError(f'{spec} ({arch}) does not fit {ds.name} ({ds.task}): {problem}. {fix}')


def _output_problem(out: torch.Tensor, y: torch.Tensor, ds) -> str:
    n = len(y)
    if ds.task == 'classification':
        if out.dim() != 2 or out.shape[1] != ds.num_classes:
            return (f'the model outputs {tuple(out.shape[1:])} per example, the dataset has {ds.num_classes} '
                    f'classes (expected {ds.num_classes} logits)')
    elif ds.task == 'segmentation':
        if out.dim() != y.dim() or out.shape[-2:] != y.shape[-2:]:
            return f'the model outputs {tuple(out.shape[1:])} per image, the masks are {tuple(y.shape[1:])}'
    elif out.reshape(n, -1).shape[1] != y.reshape(n, -1).shape[1]:
        return (f'the model outputs {out.reshape(n, -1).shape[1]} value(s) per example, the targets have '
                f'{y.reshape(n, -1).shape[1]}')
    return ''


# ---- per-example scores --------------------------------------------------------------------------
@dataclass
class Scores:
    """Per-example scores of one model on one split (see the module doc) and the metrics
    :class:`~qzoo.metrics.Metrics` computed from the same outputs."""
    task: str
    num_classes: int
    arrays: Dict[str, np.ndarray]
    metrics: Dict[str, float] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(next(iter(self.arrays.values())))

    def metric(self, name: str, weights: Optional[np.ndarray] = None) -> np.ndarray:
        """Metric ``name`` for each row of ``weights`` (replicates x examples: how often each
        example counts); ``weights=None`` is every example once (the plain metric, shape (1,))."""
        w = np.ones((1, self.n)) if weights is None else np.asarray(weights, dtype=np.float64)
        total = w.sum(axis=1)
        if name == 'macro_f1':
            return self._macro_f1(w)
        source = {'top1': 'correct', 'top5': 'top5', 'iou': 'iou', 'dice': 'dice', 'mse': 'sq_err'}.get(name)
        if source not in self.arrays:
            raise ValueError(f'no per-example scores for metric {name!r} (have {sorted(self.arrays)})')
        mean = w @ self.arrays[source].astype(np.float64) / total
        return mean if name == 'mse' else 100.0 * mean

    def _macro_f1(self, w: np.ndarray) -> np.ndarray:
        k = self.num_classes
        label, pred, correct = self.arrays['label'], self.arrays['pred'], self.arrays['correct'].astype(bool)
        true_c = w @ (label[:, None] == np.arange(k)).astype(np.float64)
        pred_c = w @ (pred[:, None] == np.arange(k)).astype(np.float64)
        tp_c = w @ ((label[:, None] == np.arange(k)) & correct[:, None]).astype(np.float64)
        denom = true_c + pred_c
        f1 = np.where(denom > 0, 2 * tp_c / np.where(denom > 0, denom, 1.0), 0.0)
        present = true_c > 0
        return 100.0 * np.where(present, f1, 0.0).sum(1) / np.maximum(present.sum(1), 1)

    def check(self, rel: float = 1e-9) -> None:
        """Raise RuntimeError unless every metric recomputed from the per-example scores equals the
        aggregate (a bug in one of the two)."""
        for name, value in self.metrics.items():
            if name == 'nonfinite':
                continue
            mine = float(self.metric(name)[0])
            if not abs(mine - value) <= rel * max(1.0, abs(value)):
                raise RuntimeError(f'per-example {name} {mine!r} differs from the aggregate {value!r}')


def _per_example(out: torch.Tensor, y: torch.Tensor, task: str, num_classes: int) -> Dict[str, torch.Tensor]:
    """The per-example scores of one batch, by the formulas of :class:`~qzoo.metrics.Metrics`."""
    out = out.float()
    if task == 'classification':
        pred = out.argmax(1)
        d = dict(label=y, pred=pred, correct=(pred == y).to(torch.uint8))
        if num_classes > 5:
            d['top5'] = (out.topk(5, 1).indices == y[:, None]).any(1).to(torch.uint8)
        return d
    if task == 'segmentation':
        pred = (out > 0) if out.shape[1] == 1 else out.argmax(1, keepdim=True).bool()
        t = y.bool()
        inter = (pred & t).flatten(1).sum(1).double()
        union = (pred | t).flatten(1).sum(1).double()
        size = (pred.flatten(1).sum(1) + t.flatten(1).sum(1)).double()
        return dict(iou=torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)),
                    dice=torch.where(size > 0, 2 * inter / size.clamp(min=1), torch.ones_like(size)))
    return dict(sq_err=(out.view(len(out), -1) - y.view(len(y), -1).float()).pow(2).mean(1).double())


@torch.no_grad()
def score_split(model: nn.Module, ds, split: str = 'test', device='cpu', batch_size: int = 500) -> Scores:
    """Per-example scores and metrics of ``model`` on ``split`` of ``ds`` (checked to agree)."""
    from .data import BatchLoader
    loader = BatchLoader(getattr(ds, split), batch_size, shuffle=False, device=device,
                         normalize=_normalize_for(model, ds))
    was = model.training
    model.to(device).eval()
    agg = Metrics(ds.task, ds.num_classes, device)
    parts: Dict[str, List[np.ndarray]] = {}
    for x, y in loader:
        out = model(x)
        agg.update(out, y)
        for k, v in _per_example(out, y, ds.task, ds.num_classes).items():
            parts.setdefault(k, []).append(v.cpu().numpy())
    model.train(was)
    scores = Scores(ds.task, ds.num_classes, {k: np.concatenate(v) for k, v in parts.items()}, agg.compute())
    scores.check()
    return scores


def evaluate_on(model: nn.Module, data: str, split: str = 'test', data_args: Optional[Dict] = None,
                batch_size: int = 500, device: str = 'cpu') -> Tuple[Dict[str, float], Any]:
    """Metrics of ``model`` on ``split`` of dataset ``data`` (after :func:`check_fits_data`),
    normalised with the *model's* mean/std where it has them."""
    from .data import BatchLoader, load_dataset
    ds = load_dataset(data, splits=(split,), **(data_args or {}))
    check_fits_data(model, ds, split, device=device)
    loader = BatchLoader(getattr(ds, split), batch_size, shuffle=False, device=device,
                         normalize=_normalize_for(model, ds))
    model.to(device)
    return evaluate(model, loader, ds.task, ds.num_classes, device), ds


# ---- the evaluation cache ------------------------------------------------------------------------
#: modules whose source is part of the cache key: the metric formulas and the parameter/MAC counts
_SCORING_FILES = ('metrics.py', 'measure.py')
#: the parts of this module that make a score (their source is part of the cache key)
_SCORING = ('_load_split_cached', '_normalize_for', '_per_example', 'score_split', 'Scores', '_model_row', 'probe')
#: test examples whose model outputs are stored with a cache entry and compared on every hit
PROBE = 16


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """SHA-256 of the scoring code: :data:`EVAL_VERSION`, torch's version, the metric and
    counting modules and the scoring functions of this module. (The model code is checked by
    behaviour instead: see :func:`probe`.)"""
    import inspect
    pkg = Path(__file__).resolve().parent
    parts = [f'eval-version {EVAL_VERSION}', f'torch {torch.__version__}']
    parts += [f'{name} {sha256_file(pkg / name)}' for name in _SCORING_FILES]
    here = sys.modules[__name__]
    for name in _SCORING:
        obj = getattr(here, name)
        parts.append(f'{name} {sha256_bytes(inspect.getsource(getattr(obj, "__wrapped__", obj)))}')
    return sha256_bytes('\n'.join(parts))


@torch.no_grad()
def probe(model: nn.Module, ds, split: str = 'test', device='cpu') -> np.ndarray:
    """The model's float32 outputs on the first :data:`PROBE` examples of ``split``, one batch,
    through the same input pipeline as scoring."""
    from .data import BatchLoader
    x, _ = next(iter(BatchLoader(getattr(ds, split), PROBE, shuffle=False, device=device,
                                 normalize=_normalize_for(model, ds))))
    was = model.training
    out = model.to(device).eval()(x).float().cpu().numpy()
    model.train(was)
    return out


def same_outputs(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two probes agree to float32 noise (relative 1e-4 of the larger output scale)."""
    if a.shape != b.shape:
        return False
    scale = max(1.0, float(np.abs(b).max()) if b.size else 1.0)
    return bool(np.allclose(a, b, rtol=1e-4, atol=1e-5 * scale))


class EvalCache:
    """Per-example scores, results rows and probes on disk, one ``<key>.npz`` per evaluation under
    ``root`` (default ``$QZOO_CACHE/eval``); writes are atomic. Each entry records the SHA-256 of its
    content (the scores, the row, the metrics and the probe), checked on every read; an entry that is
    unreadable (truncated, not an .npz, too large), whose digest does not match (edited, damaged, or
    written before digests were recorded) or whose scores disagree with the data they claim to score
    (:func:`entry_problem`) is a miss: it is scored again and rewritten, with a note on stderr.
    ``refresh=True`` reads nothing (every lookup is a miss) and rewrites the entries it scores.
    ``hits``, ``misses``, ``stale`` (entries whose model now computes other outputs) and ``damaged``
    (entries refused as above) count lookups."""

    def __init__(self, root: Optional[Path] = None, refresh: bool = False):
        from .data._common import cache_dir
        self.root = Path(root) if root is not None else cache_dir() / 'eval'
        self.refresh = bool(refresh)
        self.hits = self.misses = self.stale = self.damaged = 0

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f'{key}.npz'

    def refuse(self, key: str, why: str) -> None:
        """Count entry ``key`` as damaged and say why on stderr (it is scored again and rewritten)."""
        self.damaged += 1
        print(f'evaluation cache: {self.path(key)} {why}; scoring again', file=sys.stderr)

    def get(self, key: str) -> Optional[Tuple['Scores', Dict[str, Any], np.ndarray]]:
        """``(scores, row, probe)`` of a stored evaluation whose digest matches its content, or None."""
        from .data._common import load_npz
        p = self.path(key)
        if self.refresh or not p.is_file():
            return None
        try:
            arrays = load_npz(p, None, 'an evaluation cache entry')
            text, out, digest = str(arrays.pop('__meta__')), arrays.pop('__probe__'), str(arrays.pop('__sha256__'))
            meta = json.loads(text)
            scores = Scores(meta['task'], meta['num_classes'], arrays, meta['metrics'])
            row = dict(meta['row'])
        except (DataError, KeyError, TypeError, ValueError) as e:
            cause = e.__cause__ or e
            self.refuse(key, f'is unreadable ({type(cause).__name__}: {cause})')
            return None
        if digest != _entry_digest(text, arrays, out):
            self.refuse(key, 'does not match the SHA-256 recorded when it was written (edited, damaged, or written '
                             'before entries recorded one)')
            return None
        return scores, row, out

    def put(self, key: str, scores: 'Scores', row: Dict[str, Any], out: np.ndarray) -> None:
        text = json.dumps(dict(task=scores.task, num_classes=scores.num_classes, metrics=scores.metrics, row=row),
                          sort_keys=True)
        p = self.path(key)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(p, 'wb') as f:
                np.savez(f, __meta__=np.array(text), __probe__=out,
                         __sha256__=np.array(_entry_digest(text, scores.arrays, out)), **scores.arrays)
        except OSError as e:  # an unwritable cache only costs time
            print(f'evaluation cache: cannot write {p} ({e}); continuing without it', file=sys.stderr)


def _entry_digest(meta: str, arrays: Mapping[str, np.ndarray], out: np.ndarray) -> str:
    """SHA-256 of a cache entry's content: its metadata (task, metrics, row), the names, dtypes, shapes and bytes
    of its per-example arrays, and the probe."""
    from .data._common import sha256_array
    names = sorted(arrays)
    return sha256_bytes('\n'.join([meta, json.dumps(names), sha256_array(out, *(arrays[k] for k in names))]))


def entry_problem(scores: 'Scores', ds, split: str) -> str:
    """What makes cached ``scores`` not scores of ``split`` of ``ds``, or '': the number of examples, the task,
    the labels (classification: they must be the split's, and ``correct`` must be ``pred == label``) and the
    metrics recomputed from the per-example scores."""
    part = getattr(ds, split)
    if (scores.task, scores.num_classes) != (ds.task, ds.num_classes):
        return f'it scores a {scores.task} task of {scores.num_classes} classes, not {ds.name}'
    try:
        if scores.n != len(part):
            return f'it holds {scores.n} examples, the split {len(part)}'
        if ds.task == 'classification':
            label, pred = scores.arrays['label'], scores.arrays['pred']
            if not np.array_equal(label, part.y.numpy()):
                return "its labels are not the split's"
            if not np.array_equal(scores.arrays['correct'], (pred == label).astype(np.uint8)):
                return 'its per-example correct flags disagree with its predictions'
        scores.check()
    except (KeyError, ValueError, TypeError, RuntimeError, StopIteration) as e:
        return f'its scores are inconsistent ({type(e).__name__}: {e})'
    return ''


# ---- one evaluation ------------------------------------------------------------------------------
@dataclass
class Evaluation:
    """One weights spec scored on one split: the results ``row`` (timm's columns + qzoo's),
    the per-example ``scores``, and whether they came from the cache."""
    row: Dict[str, Any]
    scores: Scores
    cached: bool = False


def weights_identity(spec: str) -> Dict[str, Any]:
    """What the weights ``spec`` are, without loading them: file SHA-256 (computed), architecture
    and arguments, and the SHA-256 the registry expects (a mismatch disables the cache for it)."""
    from . import external, hub
    if spec in external.EXTERNAL:
        e = external.EXTERNAL[spec]
        path = external.cache_path(spec)
        sha = sha256_file(path) if path.is_file() else None
        return dict(sha256=sha, expected=None if sha is None else (sha if sha.startswith(e.sha256_prefix) else '?'),
                    architecture=e.arch, model_args={'external': spec}, source=e.url, external=True)
    file, expected, info = hub.resolve_spec(spec)
    sha = sha256_file(file) if Path(file).is_file() else None
    return dict(sha256=sha, expected=expected or sha, architecture=info['architecture'],
                model_args=info['model_args'], source=info['source'], external=False)


def cache_key(ident: Mapping[str, Any], data_digest: str, device: str, batch_size: int) -> Optional[str]:
    """The cache key of an evaluation (None when the weights file is missing or not the one the
    registry expects: such weights are always loaded, and refused, again)."""
    if ident['sha256'] is None or ident['expected'] != ident['sha256']:
        return None
    return sha256_bytes(json.dumps(dict(weights=ident['sha256'], architecture=ident['architecture'],
                                        model_args=ident['model_args'], data=data_digest, code=code_digest(),
                                        device=str(torch.device(device).type), batch_size=int(batch_size)),
                                   sort_keys=True, default=str))


def _model_row(model: nn.Module, ds) -> Dict[str, Any]:
    cfg = getattr(model, 'pretrained_cfg', {}) or {}
    return dict(model=cfg.get('architecture'), param_count=count_params(model),
                img_size=(cfg.get('input_size') or [None])[-1], crop_pct=cfg.get('crop_pct'),
                interpolation=cfg.get('interpolation'), neuron=getattr(model, 'neuron', 'linear'),
                macs=count_macs(model, (1, *ds.in_shape)))


@contextlib.contextmanager
def one_thread():
    """Run torch on one CPU thread inside the block (a probe is a handful of examples: thread
    start-up and, on a busy machine, thread contention cost far more than the arithmetic)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cached(cache: Optional[EvalCache], key: Optional[str], model: nn.Module, ds, split: str, device: str):
    """The cache entry of ``key`` if its scores are consistent with the split (:func:`entry_problem`) and the model
    still computes the stored probe outputs, else None."""
    hit = cache.get(key) if cache is not None and key is not None else None
    if hit is not None:
        problem = entry_problem(hit[0], ds, split)
        if problem:
            cache.refuse(key, problem)
            hit = None
    if hit is None:
        if cache is not None:
            cache.misses += 1
        return None
    with one_thread():
        now = probe(model, ds, split, device)
    if not same_outputs(now, hit[2]):
        cache.stale += 1
        return None
    cache.hits += 1
    return hit[0], hit[1]


def evaluate_spec(spec: str, data: Optional[str] = None, data_args: Optional[Mapping[str, Any]] = None,
                  split: str = 'test', device: str = 'cpu', cache: Optional[EvalCache] = None,
                  use_record: bool = True, batch_size: int = 500,
                  progress: Optional[Callable[[int], None]] = None) -> Evaluation:
    """Score weights ``spec`` on ``split`` (data settings from :func:`data_settings`), through
    ``cache`` when given: an entry is used only while the model still computes the outputs stored
    with it on the first examples. Raises :class:`DataMismatchError` when the weights do not fit.
    ``progress`` is called with the size of each batch as it is scored (not on a cache hit)."""
    name, args, how = data_settings(spec, data, data_args, use_record)
    ds, digest = load_split(name, args, split)
    ident = weights_identity(spec)
    key = cache_key(ident, digest, device, batch_size) if cache is not None else None
    model, _ = load_any(spec)
    hit = _cached(cache, key, model, ds, split, device)
    if hit is not None:
        scores, base = hit
    else:
        check_fits_data(model, ds, split, spec, training_data(spec), device)
        hook = model.register_forward_hook(lambda m, i, out: progress(len(out))) if progress is not None else None
        try:
            scores = score_split(model, ds, split, device, batch_size)
        finally:
            if hook is not None:
                hook.remove()
        base = _model_row(model, ds)
        if key is not None:
            with one_thread():
                cache.put(key, scores, base, probe(model, ds, split, device))
    row = dict(base, dataset=ds.name, split=split, data=name, data_args=json.dumps(args, sort_keys=True),
               data_settings=how, weights=spec, sha256=ident['sha256'] or '', source=ident['source'],
               external=ident['external'])
    for k, v in scores.metrics.items():
        row[k] = round(v, 4) if isinstance(v, float) else v
    if 'top1' in scores.metrics:
        row['top1_err'] = round(100 - scores.metrics['top1'], 4)
    if 'top5' in scores.metrics:
        row['top5_err'] = round(100 - scores.metrics['top5'], 4)
    return Evaluation(row, scores, hit is not None)


def validate(spec: str, data: Optional[str] = None, split: str = 'test', data_args: Optional[Dict] = None,
             device: str = 'cpu', cache: Optional[EvalCache] = None, use_record: bool = True) -> Dict[str, Any]:
    """One results row (timm's columns + qzoo's) for weights ``spec`` on ``data``/``split`` (a
    published checkpoint defaults to its record's data settings, see :func:`data_settings`)."""
    return evaluate_spec(spec, data, data_args, split, device, cache, use_record).row


# ---- accuracy per parameter ----------------------------------------------------------------------
def frontier(points: Iterable[Tuple[float, float]], higher: bool = True) -> List[Tuple[float, float]]:
    """The Pareto frontier (params ascending, metric strictly improving) of (params, metric)."""
    pts = sorted(points)
    out: List[Tuple[float, float]] = []
    for p, m in pts:
        if not out or (m > out[-1][1] if higher else m < out[-1][1]):
            if out and out[-1][0] == p:
                out[-1] = (p, m)
            else:
                out.append((p, m))
    return out


def params_at_metric(curve: Sequence[Tuple[float, float]], metric: float) -> Optional[float]:
    """Parameters the frontier ``curve`` needs to reach ``metric`` (linear in log-params between
    points); None when ``metric`` is outside the curve's range."""
    if not curve:
        return None
    higher = len(curve) < 2 or curve[-1][1] >= curve[0][1]
    lo, hi = (curve[0][1], curve[-1][1]) if higher else (curve[-1][1], curve[0][1])
    if not lo <= metric <= hi:
        return None
    for (p0, m0), (p1, m1) in zip(curve, curve[1:]):
        if min(m0, m1) <= metric <= max(m0, m1):
            if metric == m0:
                return p0
            if metric == m1:    # exact at the points: 'saved' is exactly 0 for a model matching one
                return p1
            t = (metric - m0) / (m1 - m0)
            return math.exp(math.log(p0) + t * (math.log(p1) - math.log(p0)))
    return curve[0][0]


def metric_at_params(curve: Sequence[Tuple[float, float]], params: float,
                     max_params: Optional[float] = None) -> Optional[float]:
    """The frontier's metric at ``params`` (linear in log-params between its points). Past the last
    frontier point and up to ``max_params`` (the largest model evaluated) it is that point's metric:
    the larger models did not do better. None outside that range."""
    if not curve:
        return None
    if curve[-1][0] < params <= (max_params or curve[-1][0]):
        return curve[-1][1]
    if not curve[0][0] <= params <= curve[-1][0]:
        return None
    for (p0, m0), (p1, m1) in zip(curve, curve[1:]):
        if p0 <= params <= p1:
            if params in (p0, p1):
                return m0 if params == p0 else m1
            t = (math.log(params) - math.log(p0)) / (math.log(p1) - math.log(p0))
            return m0 + t * (m1 - m0)
    return curve[0][1]


def compare_to_curve(conv: Sequence[Tuple[float, float]], params: float, metric: float,
                     higher: bool = True) -> Tuple[Optional[float], Optional[float], Optional[float]]:
    """``(p_C(a_Q), parameters saved 1 - p_Q / p_C(a_Q), gain a_Q - a_C(p_Q))`` of a model with
    ``params`` and ``metric`` against the frontier of the conventional points ``conv`` (the gain
    is signed so that positive is better also for lower-is-better metrics); None where undefined."""
    curve = frontier(conv, higher)
    if not curve:
        return None, None, None
    max_p = max(p for p, _ in conv)
    pc = params_at_metric(curve, metric)
    ac = metric_at_params(curve, params, max_p)
    saved = None if pc is None else 1 - params / pc
    gain = None if ac is None else (metric - ac if higher else ac - metric)
    return pc, saved, gain


def _outside_note(g: Mapping[str, Any], metric: str, curve, max_p, saved_undefined: bool, gain_undefined: bool,
                  higher: bool) -> str:
    notes = []
    if saved_undefined:
        best = max(m for _, m in curve) if higher else min(m for _, m in curve)
        above = g['mean'] > best if higher else g['mean'] < best
        notes.append(f"{metric} {g['mean']:.4g} is outside the conventional curve ({curve[0][1]:.4g}..{curve[-1][1]:.4g})"
                     + (': better than every conventional model' if above else ': below every conventional model'))
    if gain_undefined:
        notes.append(f"{g['params']:,} params is outside the conventional models' range ({curve[0][0]:,}..{max_p:,})")
    return '; '.join(notes)


def efficiency_rows(groups: List[Dict[str, Any]], metric: str, higher: bool = True) -> List[Dict[str, Any]]:
    """For each quadratic group: parameters saved at equal metric, 1 - p_Q / p_C(a_Q), and the metric
    gain at equal parameters, a_Q - a_C(p_Q), against the frontier of the conventional groups
    (external checkpoints excluded: they were trained on other data/recipes)."""
    conv = [(g['params'], g['mean']) for g in groups if not g['quadratic'] and not g.get('external')]
    curve = frontier(conv, higher)
    max_p = max((p for p, _ in conv), default=None)
    out = []
    for g in groups:
        row = dict(g)
        if g['quadratic'] and curve:
            pc, saved, gain = compare_to_curve(conv, g['params'], g['mean'], higher)
            row.update(conv_params_at_equal_metric=pc, params_saved=saved, metric_gain_at_equal_params=gain,
                       note=_outside_note(g, metric, curve, max_p, saved is None, gain is None, higher))
        out.append(row)
    return out


# ---- the validate command ------------------------------------------------------------------------
VALIDATE_HELP = """Score weights on a dataset split: one JSON line per model on stdout, the data settings used on
stderr, and a CSV with timm's results columns (model, top1, top1_err, top5, top5_err, param_count,
img_size, crop_pct, interpolation) plus dataset, split, data, data_args, neuron, macs, weights,
sha256, ...

A published checkpoint is scored with the data settings its card was measured with (its
record's data_spec), a run folder of `qzoo train` with those it was trained with (its config.json),
unless told otherwise: --data-arg changes single options on top of them, --data names another
dataset, --data-defaults starts from the dataset's defaults instead. Other weights (files, URLs,
external names, folders without a record) need --data.

    {prog} --weights qcnn.cwru-snr-6db-s1 wdcnn.cwru-snr-6db-s1
    {prog} --weights qcnn.cwru-snr-6db-s1 --data-arg eval_stride=2048
    {prog} --weights resnet20.cifar10-jpeg75-e40-s0 akamaster/resnet20 --data cifar10-jpeg75
    {prog} --data synthetic --data-arg kind=moons --weights qmlp_h2.synthetic-moons-d2-s0

--weights takes: a published name (python -c "import qzoo; print(qzoo.list_models(pretrained=True))"),
a run/checkpoint folder, a .safetensors file, hf-hub:org/name[@rev], an https URL of a .safetensors
file, or an external registry name (qzoo.external, e.g. akamaster/resnet20, once its file is in the
torch hub cache). With several --weights, a failure is reported and the others are still scored and
written; the exit status is then 1.
"""


def write_results_csv(rows: List[Dict[str, Any]], path) -> None:
    """timm's results columns, then the qzoo columns any row has."""
    import csv
    cols = TIMM_COLUMNS + [c for c in QZOO_COLUMNS if any(c in r for r in rows)]
    path = check_target(path, parents=True)
    with atomic_open(path, 'w') as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction='ignore', lineterminator='\n')
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, '') for c in cols})


def _validate_parser(prog: Optional[str] = None):
    import argparse
    ap = argparse.ArgumentParser(prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.description = VALIDATE_HELP.replace('{prog}', ap.prog)
    ap.add_argument('--weights', nargs='+', required=True)
    ap.add_argument('--data', help="dataset name (qzoo.data.list_datasets()); default: a published checkpoint's own")
    ap.add_argument('--data-arg', action='append', default=[], metavar='KEY=VALUE',
                    help="a dataset option, over the checkpoint's data_spec (repeatable)")
    ap.add_argument('--data-defaults', action='store_true',
                    help="start from the dataset's default options, not the checkpoint's data_spec")
    ap.add_argument('--split', default='test', choices=['train', 'val', 'test'])
    ap.add_argument('--results-file', default='results/validate.csv',
                    help='CSV to write, relative to the current directory (default: %(default)s)')
    ap.add_argument('--no-cache', action='store_true', help='score again instead of reading $QZOO_CACHE/eval')
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    return ap


def parse_data_args(items: Sequence[str]) -> Dict[str, Any]:
    """The ``--data-arg KEY=VALUE`` items as options (values read as YAML); ValueError naming a malformed one."""
    import yaml
    out = {}
    for item in items:
        k, sep, v = item.partition('=')
        if not sep or not k:
            raise ValueError(f'--data-arg {item!r}: expected KEY=VALUE (e.g. snr_db=-6, eval_stride=2048)')
        try:
            out[k] = load_yaml(v, f'--data-arg {item!r}')[0]
        except yaml.YAMLError as e:
            raise ValueError(str(e).splitlines()[0]) from None
    return out


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """``validate``: score each ``--weights`` (see :data:`VALIDATE_HELP`); 1 when any failed."""
    ap = _validate_parser(prog)
    a = ap.parse_args(argv)
    try:
        data_args = parse_data_args(a.data_arg)
    except ValueError as e:
        ap.error(str(e))
    try:  # an unusable --results-file is refused before anything is scored
        check_target(a.results_file)
    except NotARegularFileError as e:
        print(f'error: --results-file {a.results_file}: {e}', file=sys.stderr)
        return 2
    try:
        a.device = str(device_of(a.device, '--device'))
    except ValueError as e:
        ap.error(str(e))
    cache = EvalCache(refresh=a.no_cache)
    rows, failed = [], []
    for spec in a.weights:
        try:
            row = evaluate_spec(spec, a.data, data_args, a.split, a.device, cache, use_record=not a.data_defaults).row
        except Exception as e:  # one bad spec must not lose the others' rows
            print(f'FAILED {spec}: {type(e).__name__}: {e}', file=sys.stderr, flush=True)
            failed.append(spec)
            continue
        print(f"{spec}: {row['data']} {row['data_args']} ({row['data_settings']}) -> {row['dataset']}",
              file=sys.stderr, flush=True)
        print(json.dumps(row), flush=True)
        rows.append(row)
    if rows:
        write_results_csv(rows, a.results_file)
        print(f'wrote {len(rows)} row(s) to {a.results_file}', file=sys.stderr)
    if failed:
        print(f'{len(failed)} of {len(a.weights)} failed: {", ".join(failed)}', file=sys.stderr)
        return 1
    return 0

