"""Publish training runs as zoo checkpoints, and keep every generated file in step with the records.

A published checkpoint is a folder ``<checkpoints>/<architecture>.<experiment>-s<seed>/``
(the Hugging Face repository layout: ``model.safetensors``, ``config.json``, ``README.md``,
plus the run's ``recipe.yaml`` and its ``log.jsonl`` gzip-compressed as ``log.jsonl.gz``) and a :class:`~qzoo.weights.Weights`
record in ``manifest.json``. ``config.json``, the card and ``MODEL_CARDS.md`` are generated
from the record (:func:`write_folder_metadata`, :func:`refresh`).

What is published is checked first: the run folder's files are regular files (no symbolic link is
followed), recipe.yaml, results.json and log.jsonl belong to one complete run (:func:`_check_one_run`),
what the weights and recipe.yaml determine (parameters, MACs, neuron, dataset, task, data_spec, seed,
epochs) is derived from them and must agree with results.json (:func:`_facts`), and weights with a
NaN/inf output on the validation or test split are refused.

Publishing is atomic: the new folder is built beside the old one and swapped in only when
complete, then the manifest is replaced in one rename; a failure at any point leaves the
previous checkpoint and manifest as they were. Every change of the records (publish, set_default,
refresh) reads, changes and writes the manifest under a lock (``manifest.lock`` beside it), so
concurrent publishes keep every record. Weights of the same name from another run are replaced only
with ``force`` (``--force``), after a copy is kept outside the package (:func:`backups_dir`).
Weights are stored in float16 when that
moves the primary test metric by at most :data:`FP16_TOLERANCE` points (measured here by
evaluating both), else in float32; the published metrics are those of the stored weights.

Each architecture's default weights (what ``pretrained=True`` loads) follow one stated rule
(:func:`choose_default`): among its runs that did not diverge (:mod:`qzoo.divergence`; all runs
when every one did), its preferred experiment (:data:`PREFERRED_EXPERIMENT`), then the seed with
the median validation metric, so the default is a typical run, not the luckiest.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch

from .cards import model_card, zoo_index
from .bounds import MAX_JSON_BYTES, MAX_YAML_BYTES
from .checkout import is_checkout
from .engine import check_results
from .errors import CheckpointError, NotARegularFileError, RunDirError
from .fileio import (atomic_write_bytes, atomic_write_json, atomic_write_text, check_regular, locked, read_regular,
                     sha256_bytes)
from .hub import from_pretrained, write_config
from .models import MODEL_FACTORIES
from .registry import create_model, register_all, tag_cfg
from .serialization import save_weights
from .weights import (TAG_PATTERN, Weights, all_weights, checkpoints_dir, clear_cache, manifest_path,
                      WEIGHTS_NAME)

__all__ = ['publish', 'set_default', 'choose_default', 'refresh', 'write_folder_metadata', 'variant_of',
           'index_path', 'select_on_validation', 'FP16_TOLERANCE', 'PREFERRED_EXPERIMENT']

FP16_TOLERANCE = 0.02  # points of the primary test metric that storing float16 may cost (2 images in 10k)

#: data (qzoo.data name) -> (the experiment an architecture's default weights come from, why)
PREFERRED_EXPERIMENT: Dict[str, Tuple[str, str]] = {
    'cwru': ('cwru-snr-6db', 'the noisy condition (SNR -6 dB) is the one QCNN was designed for and the one where '
                             'the models differ; on clean signals every model is near 100%'),
    'synthetic': ('synthetic-circles-d2', 'circles is the first task of the paper\'s synthetic study'),
}


# ---- records and their files ---------------------------------------------------------------
def index_path() -> Optional[Path]:
    """``MODEL_CARDS.md`` of the qzoo checkout whose package folder holds the checkpoints: only when the
    checkpoints folder is exactly ``<checkout>/qzoo/checkpoints`` (:func:`qzoo.checkout.is_checkout`), else None
    (a zoo elsewhere, e.g. ``$QZOO_CHECKPOINTS=myproject/models/zoo``, never writes beside itself)."""
    ck = checkpoints_dir().resolve()
    root = ck.parent.parent
    return root / 'MODEL_CARDS.md' if (ck.name, ck.parent.name) == ('checkpoints', 'qzoo') and is_checkout(root) \
        else None


def related_experiments(w: Weights, records: Dict[str, Weights]) -> List[Dict[str, Any]]:
    """The other experiments of ``w``'s architecture (on any dataset), one summary each: its seeds' mean test
    metric, device, autocast dtype, key settings and how many seeds diverged (a card compares them)."""
    groups: Dict[str, List[Weights]] = {}
    for o in records.values():
        if o.architecture == w.architecture and o.group != w.group:
            groups.setdefault(o.experiment, []).append(o)
    out = []
    for exp, ws in sorted(groups.items()):
        t = ws[0].training or {}
        out.append(dict(experiment=exp, dataset=ws[0].dataset, seeds=sorted(o.seed for o in ws),
                        metric=ws[0].primary_metric, mean=statistics.fmean(o.metric for o in ws),
                        device=t.get('device'), amp=(t.get('provenance') or {}).get('amp'),
                        settings=t.get('key_settings') or {}, diverged=sum(1 for o in ws if _diverged(o))))
    return out


def write_folder_metadata(w: Weights, folder: Optional[Path] = None,
                          records: Optional[Dict[str, Weights]] = None) -> None:
    """(Re)write ``config.json`` and ``README.md`` of ``w``'s folder (or ``folder``) from the record (and the
    records of its architecture's other experiments, default the published ones, which the card compares)."""
    folder = Path(folder or w.folder)
    with torch.device('meta'):
        model = create_model(w.architecture, **dict(w.model_args))
    model.pretrained_cfg = dict(tag_cfg(w), architecture=w.architecture, tag=w.tag)
    model._model_args = dict(w.model_args)
    qz = dict(sha256=w.sha256, neuron=w.neuron, params=w.params, weights_dtype=w.weights_dtype, weights=w.to_dict(),
              related=related_experiments(w, all_weights() if records is None else records))
    config = write_config(model, folder / 'config.json', qz, w.label_names)
    atomic_write_text(folder / 'README.md', model_card(config))


def _write_manifest(records: Dict[str, Weights]) -> None:
    path = manifest_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {n: records[n].to_dict() for n in sorted(records)})
    clear_cache()


#: the lock file beside the manifest that every change of the records holds (see :func:`_manifest_lock`)
MANIFEST_LOCK = 'manifest.lock'


@contextlib.contextmanager
def _manifest_lock() -> Iterator[None]:
    """Hold the zoo's manifest lock (an ``fcntl.flock`` on ``manifest.lock`` beside ``manifest.json``; another
    publish waits) with the records cache cleared, so that what is read inside is the manifest as it is now: every
    read-change-write of the records happens inside, and two publishes at once both keep their record."""
    path = manifest_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path.with_name(MANIFEST_LOCK)):
        clear_cache()
        try:
            yield
        finally:
            clear_cache()


def _write_index(records: Dict[str, Weights]) -> None:
    path = index_path()
    if path is not None:
        atomic_write_text(path, zoo_index([w.to_dict() for w in records.values()]))


# ---- defaults ----------------------------------------------------------------------------------
def _diverged(w: Weights) -> bool:
    return bool((w.training or {}).get('divergence'))


def choose_default(records: List[Weights], _kept: str = '') -> Tuple[Weights, str]:
    """The default among one architecture's records, and the reason, by the module's rule (``_kept``: what the
    records were narrowed to, said in the reason: ' that did not diverge')."""
    if not records:
        raise ValueError('choose_default needs at least one record')
    stable = [w for w in records if not _diverged(w)]
    if stable and len(stable) < len(records):
        pick, why = choose_default(stable, ' that did not diverge')
        n = len(records) - len(stable)
        return pick, (f'Runs whose training diverged are not defaults while a run that did not diverge exists '
                      f'({n} of {len(records)} published runs of this architecture diverged). {why}')
    experiments = sorted({w.experiment for w in records})
    pref = PREFERRED_EXPERIMENT.get(records[0].data_spec['name'])
    if pref and pref[0] in experiments:
        exp, why = pref[0], pref[1]
    elif len(experiments) == 1:
        exp, why = experiments[0], f'its only experiment{" with a run" + _kept if _kept else ""}'
    else:
        exp, why = experiments[0], 'the first of its experiments in name order'
    seeds = sorted((w for w in records if w.experiment == exp), key=lambda w: (w.val[w.primary_metric], w.seed))
    pick = seeds[(len(seeds) - 1) // 2]
    metric = pick.primary_metric
    if len(seeds) == 1:
        seed_why = f'seed {pick.seed}: its only seed{_kept}'
    else:
        vals = ', '.join(f's{w.seed} {w.val[metric]:.2f}' for w in sorted(seeds, key=lambda w: w.seed))
        seed_why = (f'seed {pick.seed}: the median validation {metric} of its {len(seeds)} seeds{_kept} ({vals}), '
                    f'so the default is a typical run, not the luckiest')
    every = (f' Every published run of this architecture diverged (see the card\'s training notes); these are the '
             f'weights of its best validation epoch.' if _diverged(pick) else '')
    return pick, f'Experiment `{exp}`: {why}. {seed_why[0].upper() + seed_why[1:]}.{every}'


def _apply_defaults(records: Dict[str, Weights], pinned: Optional[Dict[str, Tuple[str, str]]] = None
                    ) -> Dict[str, Weights]:
    """Records with ``default``/``default_reason`` set by :func:`choose_default` for every architecture,
    except those ``pinned`` (architecture -> (name, reason)) by hand."""
    pinned = pinned or {}
    by_arch: Dict[str, List[Weights]] = {}
    for w in records.values():
        by_arch.setdefault(w.architecture, []).append(w)
    out = {}
    for arch, ws in by_arch.items():
        if arch in pinned:
            name, reason = pinned[arch]
        else:
            pick, reason = choose_default(ws)
            name = pick.name
        for w in ws:
            out[w.name] = _replace(w, default=w.name == name, default_reason=reason if w.name == name else '')
    return out


def _replace(w: Weights, **changes) -> Weights:
    return Weights.from_dict(dict(w.to_dict(), **changes), f'record {w.name}')


def _pinned(records: Dict[str, Weights]) -> Dict[str, Tuple[str, str]]:
    return {w.architecture: (w.name, w.default_reason) for w in records.values()
            if w.default and w.default_reason.startswith('Chosen by hand')}


def set_default(name: str, reason: str) -> Weights:
    """Make published weights ``name`` their architecture's default by hand; ``reason`` is stated on the card."""
    if not reason or not reason.strip():
        raise ValueError('set_default needs a reason: it is printed on the card')
    with _manifest_lock():
        records = dict(all_weights())
        if name not in records:
            raise CheckpointError(f'{name!r} is not published; published: {", ".join(sorted(records))}')
        pinned = _pinned(records)
        pinned[records[name].architecture] = (name, f'Chosen by hand: {reason.strip()}')
        _commit(_apply_defaults(records, pinned), changed=[records[name].architecture])
    return all_weights()[name]


def _commit(records: Dict[str, Weights], changed: List[str]) -> None:
    """Write the manifest, the metadata of every folder of the ``changed`` architectures, the index."""
    old = all_weights()
    _write_manifest(records)
    register_all()  # timm's cfgs follow the new records
    for w in records.values():
        if w.architecture in changed or old.get(w.name) != w:
            write_folder_metadata(w, records=records)
    _write_index(records)


def _rederived(w: Weights, tuning: Optional[Tuple[Optional[Path], Any]] = None) -> Weights:
    """``w`` with what its folder's own files determine recomputed: the divergence (the rule of
    :mod:`qzoo.divergence` applied to ``log.jsonl.gz`` and ``recipe.yaml``) and, for records published before
    provenance was recorded, the autocast dtype and memory format the recipe's rule gave on its device."""
    import gzip
    import yaml
    from .divergence import read_log
    folder = w.folder
    if not (folder / LOG_NAME).is_file() or not (folder / 'recipe.yaml').is_file():
        return w
    ran = yaml.safe_load((folder / 'recipe.yaml').read_text()) or {}
    log = read_log(gzip.decompress((folder / LOG_NAME).read_bytes()).decode().splitlines())
    training = dict(w.training, **_stability(log, ran, (w.training.get('splits') or {}).get('val')),
                    key_settings=key_settings(ran), recipe_overrides=_current_overrides(w, ran))
    budget = tuning_budget(w.experiment, tuning)
    if budget is not None:
        training['tuning'] = budget
    if not _quadratic_run(ran) and (training.get('provenance') or {}).get('chosen'):
        training['provenance'] = dict(training['provenance'],
                                      chosen=[c for c in training['provenance']['chosen'] if not c.startswith('quad_')])
    if not training.get('provenance'):
        image = len(w.input_size) == 3 and w.input_size[1] > 1 and w.input_size[2] > 1
        amp, cl = _effective({'device': training.get('device')}, ran, (0, 0, 0) if image else (0, 0))
        training['provenance'] = dict(amp=amp, channels_last=cl, timm=None, commit=None, source_sha256=None, chosen=[])
    return _replace(w, training=training)


def refresh() -> int:
    """Regenerate every folder's config.json and card, the defaults, the manifest and the index from the
    records and the folders' own files (weights untouched). Returns the number of checkpoints."""
    with _manifest_lock():
        tuning = _tuning_table()
        derived = {n: _rederived(w, tuning) for n, w in all_weights().items()}
        records = _apply_defaults(derived, _pinned(derived))
        _write_manifest(records)
        register_all()
        for w in records.values():
            write_folder_metadata(w, records=records)
        _write_index(records)
    return len(records)


# ---- publishing a run --------------------------------------------------------------------------
def variant_of(model: torch.nn.Module) -> Tuple[str, Dict[str, Any]]:
    """The registered architecture that builds exactly ``model``'s structure (with only ``num_classes``
    and ``in_chans``), and those arguments; CheckpointError when none does."""
    want = repr(model)
    args = {k: getattr(model, k) for k in ('num_classes', 'in_chans') if isinstance(getattr(model, k, None), int)}
    for name, fn in MODEL_FACTORIES.items():
        try:
            with torch.device('meta'):
                if repr(fn(**args)) == want:
                    return name, args
        except (TypeError, ValueError):
            continue
    raise CheckpointError(f'no registered qzoo architecture builds this model ({type(model).__name__}, '
                          f'{getattr(model, "_model_args", {})}): publish registers weights only under an '
                          f'architecture name. Fix: add a factory for this variant in qzoo/models')


def _evaluate_here(model: torch.nn.Module, spec: Dict[str, Any]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """{'float32'|'float16': {'val'|'test': metrics}}: the weights as trained and rounded to float16 (a copy),
    evaluated here in float32 on dataset ``spec``."""
    from .evaluation import evaluate_on
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for t in rounded.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())
    return {dtype: {split: evaluate_on(m.eval(), spec['name'], split, spec['args'])[0] for split in ('val', 'test')}
            for dtype, m in (('float32', model), ('float16', rounded))}


def _storage(results: Dict[str, Any], here, dtype: str) -> Tuple[str, Dict[str, Any]]:
    key = results['primary_metric']
    f32, f16 = here['float32']['test'][key], here['float16']['test'][key]
    check = dict(metric=key, fp32=f32, fp16=f16, unchanged=here['float16'] == here['float32'], tolerance=FP16_TOLERANCE)
    if dtype == 'auto':
        dtype = 'float16' if abs(f16 - f32) <= FP16_TOLERANCE and not _nonfinite(here['float16']) else 'float32'
    if dtype not in ('float16', 'float32'):
        raise ValueError(f"dtype must be 'auto', 'float16' or 'float32', got {dtype!r}")
    return dtype, check


def _nonfinite(metrics: Dict[str, Dict[str, float]]) -> Dict[str, int]:
    """split -> samples whose outputs held NaN/inf (the ``nonfinite`` count of qzoo.metrics), where any did."""
    return {split: int(m['nonfinite']) for split, m in metrics.items() if m.get('nonfinite')}


def _check_finite_outputs(run: Path, here, dtype: str) -> None:
    """Refuse weights whose outputs (as trained, or as stored in ``dtype``) are NaN/inf for any sample."""
    for kind in dict.fromkeys(('float32', dtype)):
        bad = _nonfinite(here[kind])
        if bad:
            where = ', '.join(f'{n} of the {split} samples' for split, n in bad.items())
            raise CheckpointError(
                f'{run}: the weights ({kind}, evaluated in float32 on the CPU) give non-finite (NaN/inf) outputs for '
                f'{where}; their metrics would mean nothing, so they are not published. Fix: train again (grad_clip, '
                f'a lower lr or quad_lr_scale) and publish a run whose selected epoch has finite outputs')


def _recipe_overrides(ran: Dict[str, Any], path: Optional[Path]) -> List[str]:
    """``key=value`` for every recipe key whose value in the run (its resolved recipe.yaml, ``ran``) differs from
    what recipe file ``path`` (:func:`_recipe_file`; None: no file, no overrides) gives today: the overrides the run
    was started with."""
    from .recipe import load_recipe
    if path is None:
        return []
    now = load_recipe(path).to_dict()
    return [f'{k}={json.dumps(ran.get(k), separators=(",", ":"))}' for k in sorted(set(ran) | set(now))
            if ran.get(k) != now.get(k) and (ran.get(k) or now.get(k))]  # None and {} alike


def _recipe_file(recipe: Optional[str]) -> Optional[Path]:
    """The recipe file a run names (relative to where training ran: this directory or the checkout), or None."""
    from .checkout import root
    if not recipe:
        return None
    rel = Path(recipe)
    found = next((b / rel for b in (Path.cwd(), root()) if b is not None and (b / rel).is_file()), None)
    return found if found is not None else (rel if rel.is_file() else None)


def _current_overrides(w: Weights, ran: Dict[str, Any]) -> List[str]:
    """The overrides that give run ``ran`` (its recipe.yaml) from its recipe file as the file reads today, when
    they reproduce the recorded recipe hash; else the recorded overrides (a recipe file changed since, such as a
    new default, moves what a published run had to override, not what it ran)."""
    from .recipe import RecipeError, load_recipe
    t = w.training
    path = _recipe_file(t.get('recipe'))
    if path is None:
        return list(t.get('recipe_overrides') or [])
    try:
        new = _recipe_overrides(ran, path)
        if load_recipe(path, new).sha256() == t.get('recipe_sha256'):
            return new
    except (RecipeError, ValueError, OSError):
        pass
    return list(t.get('recipe_overrides') or [])


#: where each experiment's tuning budget is written (:func:`tuning_budget`), relative to the checkout
TUNING_FILE = 'recipes/tuning.yaml'
FAMILIES = ('conventional', 'quadratic')


def _tuning_table() -> Tuple[Optional[Path], Any]:
    """(:data:`TUNING_FILE` of the checkout, its parsed content), or (None, None) outside a checkout."""
    import yaml
    from .bounds import load_yaml
    from .checkout import root
    base = root()
    if base is None or not (base / TUNING_FILE).is_file():
        return None, None
    path = base / TUNING_FILE
    try:
        return path, load_yaml(path.read_text(encoding='utf-8'), str(path))[0] or {}
    except yaml.YAMLError as e:
        raise ValueError(f'{path} is not valid YAML ({str(e).splitlines()[0]}). Fix: correct it (git diff shows '
                         f'what changed)') from None


def tuning_budget(experiment: str, table: Optional[Tuple[Optional[Path], Any]] = None) -> Optional[Dict[str, Any]]:
    """The tuning budget of both families in ``experiment`` from :data:`TUNING_FILE` ({family: {trials, epochs,
    summary}}), or None outside a checkout or for an experiment the file does not list. ``table``: the file as
    :func:`_tuning_table` read it (read here when not given)."""
    path, table = table if table is not None else _tuning_table()
    entry = table.get(experiment) if isinstance(table, dict) else None
    if entry is None:
        return None
    fields = {'trials', 'epochs', 'summary'}
    if (not isinstance(entry, dict) or set(entry) - set(FAMILIES) or
            any(not isinstance(v, dict) or set(v) - fields for v in entry.values())):
        raise ValueError(f'{path}, experiment {experiment}: expected {{conventional|quadratic: {{trials, epochs, '
                         f'summary}}}}, got {entry!r}. Fix: write the entry in that form')
    return {f: dict(entry[f]) for f in FAMILIES if f in entry}


#: the training log in a published folder: the run's log.jsonl, gzip-compressed (a byte-deterministic
#: stream: no file name, mtime 0), because 300 logs of up to 200 epochs are most of the zoo's size
LOG_NAME = 'log.jsonl.gz'


def write_log_gz(log: bytes, dst: Path) -> None:
    """``log`` (the bytes of a log.jsonl) gzip-compressed into ``dst``, the same bytes for the same log."""
    import gzip
    buf = io.BytesIO()
    with gzip.GzipFile(filename='', mode='wb', compresslevel=9, fileobj=buf, mtime=0) as gz:
        gz.write(log)
    atomic_write_bytes(dst, buf.getvalue())


#: the files of a finished run that publishing reads
RUN_FILES = ('results.json', 'config.json', WEIGHTS_NAME, 'recipe.yaml', 'log.jsonl')
#: the results.json fields publishing needs beyond those :func:`qzoo.engine.check_results` requires of every
#: results file (a run that lacks one did not finish)
PUBLISH_FIELDS = ('model_args', 'selected_epoch', 'device', 'recipe_sha256')


@dataclass
class _Run:
    """A run folder as publishing read it: every file a regular file (not a link), read once."""
    path: Path
    results: Dict[str, Any]
    ran: Dict[str, Any]          #: recipe.yaml, parsed
    recipe_bytes: bytes
    log: List[Dict[str, Any]]    #: log.jsonl's records
    log_bytes: bytes


#: the most bytes publish reads from a run's text files: results.json and recipe.yaml as qzoo.bounds bounds them
#: elsewhere, the log (a 200-epoch log is about 60 kB)
_RUN_FILE_LIMITS = {'results.json': MAX_JSON_BYTES, 'recipe.yaml': MAX_YAML_BYTES, 'log.jsonl': 64 << 20}


def _run_file(run: Path, name: str, read: bool = True) -> bytes:
    """The bytes of ``run/name`` (``read`` False: only checked, b''), a regular file that is not a symbolic link
    and not larger than :data:`_RUN_FILE_LIMITS` allows: publish copies nothing a link points at."""
    try:
        if not read:
            check_regular(run / name, f"a run's {name}")
            return b''
        return read_regular(run / name, f"a run's {name}", _RUN_FILE_LIMITS.get(name))
    except NotARegularFileError as e:
        raise RunDirError(f'{e} (publish reads only the run\'s own files)') from None
    except ValueError as e:
        raise RunDirError(f'{e}: not what a training run writes. Fix: re-run the training') from None


def _read_run(run: Path) -> _Run:
    """The run's files, read and parsed; RunDirError naming the file when one is missing, not a regular file, a
    link, or not what the engine writes."""
    import yaml
    from .divergence import read_log
    if not run.is_dir():
        raise RunDirError(f'{run} is not a run folder. Fix: give the --out folder of a finished recipes/train.py run')
    missing = [f for f in RUN_FILES if not os.path.lexists(run / f)]
    if missing:
        raise RunDirError(f'{run} lacks {", ".join(missing)}: it is not a finished run. Fix: finish it '
                          f'(recipes/train.py --resume) before publishing')
    raw = {f: _run_file(run, f, read=f != WEIGHTS_NAME) for f in RUN_FILES}  # the weights: read by the loader
    try:
        results = json.loads(raw['results.json'])
        ran = yaml.safe_load(raw['recipe.yaml'])
        log = read_log(raw['log.jsonl'].decode().splitlines())
    except (ValueError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise RunDirError(f'{run}: results.json, recipe.yaml or log.jsonl is not what a training run writes '
                          f'({type(e).__name__}: {e}). Fix: re-run the training') from None
    results = check_results(results, run / 'results.json')
    if not isinstance(ran, dict):
        raise RunDirError(f'{run}: recipe.yaml is not a mapping. Fix: re-run the training')
    if results.get('smoke'):
        raise ValueError(f'{run} is a --smoke run; publish real runs only')
    if results.get('model') not in MODEL_FACTORIES:
        raise CheckpointError(f'{run / "results.json"} names model {results.get("model")!r}, which is not a qzoo '
                              f'architecture (qzoo.list_models()). Fix: publish the runs recipes/train.py wrote')
    return _Run(run, results, ran, raw['recipe.yaml'], log, raw['log.jsonl'])


def _check_one_run(r: _Run) -> None:
    """recipe.yaml, results.json and log.jsonl must come from one complete run: results.json has every field
    publishing reads, the recipe's SHA-256 is the one results.json recorded, and the log holds epochs
    0..epochs-1 once each, the selected epoch among them."""
    res = r.results
    fix = 'Fix: re-run the training into a new folder (or --resume the run that results.json describes)'
    lacking = [k for k in PUBLISH_FIELDS if k not in res]
    if lacking:
        raise RunDirError(f'{r.path / "results.json"} lacks {", ".join(lacking)}: not written by a finished run. {fix}')
    if sha256_bytes(r.recipe_bytes) != res['recipe_sha256']:
        raise RunDirError(f'{r.path / "recipe.yaml"} is not the recipe of the run in results.json (its SHA-256 '
                          f'{sha256_bytes(r.recipe_bytes)[:12]} is not the recorded {str(res["recipe_sha256"])[:12]}): '
                          f'the folder mixes two runs. {fix}')
    epochs = [rec.get('epoch') for rec in r.log]
    n = res['epochs']
    if not isinstance(n, int) or isinstance(n, bool) or epochs != list(range(n)):
        shown = epochs if len(epochs) <= 8 else epochs[:4] + ['...'] + epochs[-3:]
        raise RunDirError(f'{r.path / "log.jsonl"} holds epochs {shown}, not 0..{n - 1 if isinstance(n, int) else n} '
                          f'of the run in results.json ({n} epochs): it is not the complete log of that run. {fix}')
    if res['selected_epoch'] not in epochs:
        raise RunDirError(f'{r.path / "results.json"}: the selected epoch {res["selected_epoch"]!r} is not one of the '
                          f'logged epochs 0..{n - 1}. {fix}')


def _facts(r: _Run, model: torch.nn.Module):
    """What the weights and recipe.yaml determine (model, its arguments, parameters, MACs, neuron, dataset, task,
    data_spec, seed, epochs, primary metric), checked against results.json: RunDirError naming the first field
    that differs. Returns (the facts, the dataset's test split)."""
    from .data import load_dataset
    from .measure import count_macs, count_params
    from .metrics import Metrics
    ran = r.ran
    if not isinstance(ran.get('model_args') or {}, dict) or not isinstance(ran.get('data_args') or {}, dict):
        raise RunDirError(f'{r.path / "recipe.yaml"}: model_args and data_args must be mappings. Fix: re-run the '
                          'training')
    facts: Dict[str, Any] = dict(model=ran.get('model'), model_args=ran.get('model_args') or {}, seed=ran.get('seed'),
                                 epochs=ran.get('epochs'),
                                 data_spec=dict(name=ran.get('data'), args=ran.get('data_args') or {}))
    _same_facts(r, facts)
    ds = load_dataset(facts['data_spec']['name'], splits=('test',), **facts['data_spec']['args'])
    with torch.device('meta'):
        built = create_model(facts['model'], num_classes=ds.num_classes, in_chans=ds.in_shape[0], **facts['model_args'])
    if repr(built) != repr(model):
        raise RunDirError(f'{r.path}: the weights (config.json, {WEIGHTS_NAME}) are not a model of recipe.yaml '
                          f'({facts["model"]} {facts["model_args"]} on {ds.name}). Fix: re-run the training')
    facts.update(params=count_params(model), macs=count_macs(model, (1, *ds.in_shape)),
                 neuron=getattr(model, 'neuron', 'linear'), dataset=ds.name, task=ds.task,
                 primary_metric=Metrics.primary(ds.task)[0])
    _same_facts(r, facts)
    return facts, ds


def _same_facts(r: _Run, facts: Dict[str, Any]) -> None:
    for k, v in facts.items():
        if r.results.get(k) != v:
            raise RunDirError(f'{r.path / "results.json"} says {k} {r.results.get(k)!r}, but the run\'s weights and '
                              f'recipe.yaml give {v!r}: results.json does not describe this run. Fix: re-run the '
                              f'training into a new folder')


def _effective(results: Dict[str, Any], ran: Dict[str, Any], in_shape) -> Tuple[str, bool]:
    """(autocast dtype, channels_last) the run trained with: results.json says so since they were recorded;
    older runs get them from the recipe's rule (auto: bf16 and channels_last for images on CUDA)."""
    gpu = not str(results.get('device', 'CPU')).startswith('CPU')
    amp = results.get('amp') or ('bfloat16' if ran.get('amp') == 'bf16' or (ran.get('amp') == 'auto' and gpu)
                                 else 'off')
    cl = results.get('channels_last')
    if cl is None:
        cl = ran.get('channels_last') is True or (ran.get('channels_last') == 'auto' and gpu and len(in_shape) == 3)
    return amp, bool(cl)


def read_launch_logs(folder) -> Dict[str, Any]:
    """What a ``qzoo launch`` device call's logs (an unpacked logs.tar.gz) say about the runs it made: the timm
    and torch versions (environment.txt) and the values chosen on validation (choice.json)."""
    import re
    folder = Path(folder)
    if not folder.is_dir():
        raise RunDirError(f'--launch-logs {folder} is not a folder. Fix: unpack the call\'s logs.tar.gz and give '
                          'its folder')
    out: Dict[str, Any] = {'choices': {}}
    env = folder / 'environment.txt'
    if env.is_file():
        first = env.read_text(errors='replace').splitlines()[:1]
        for key in ('torch', 'timm'):
            m = re.search(rf'\b{key} ([^\s,]+)', first[0]) if first else None
            if m:
                out[key] = m.group(1)
    choice = folder / 'choice.json'
    if choice.is_file():
        try:
            out['choices'] = json.loads(choice.read_text())
        except ValueError as e:
            raise RunDirError(f'{choice} is not JSON ({e}). Fix: unpack the call\'s logs.tar.gz again') from None
    return out


def _chosen(ran: Dict[str, Any], launch: Dict[str, Any]) -> List[str]:
    """The run's hyper-parameters that its launch chose on validation (a preset's sweep), in words (none for a
    conventional run: the quadratic terms' scale does not act on it)."""
    out = []
    if not _quadratic_run(ran):
        return out
    for swept, c in sorted((launch.get('choices') or {}).items()):
        value = c.get('quad_lr_scale')
        try:
            same = value is not None and float(value) == float(ran.get('quad_lr_scale'))
        except (TypeError, ValueError):
            same = False
        if same:
            out.append(f"quad_lr_scale={value}, chosen by a `qzoo launch` validation sweep of `{swept}` (best "
                       f"validation {c.get('metric')} {float(c.get('val')):.2f}, run `{c.get('run')}`)")
    return out


def _provenance(results: Dict[str, Any], ran: Dict[str, Any], in_shape, launch: Optional[Dict[str, Any]],
                commit: Optional[str]) -> Dict[str, Any]:
    """How the run was made, from its own files (results.json, recipe.yaml) and, for runs trained before
    results.json recorded everything, its launch's logs and the commit it ran (``--commit``)."""
    launch = launch or {}
    amp, cl = _effective(results, ran, in_shape)
    code = dict(results.get('code') or {})
    if commit:
        if code.get('commit') and not str(code['commit']).startswith(commit):
            raise ValueError(f'--commit {commit}: the run recorded that it ran commit {code["commit"]}')
        code['commit'] = code.get('commit') or commit
    if launch.get('torch') and results.get('torch') and launch['torch'] != results['torch']:
        raise ValueError(f"--launch-logs say torch {launch['torch']}, the run recorded torch {results['torch']}: "
                         'these are not the logs of the call that made it')
    return dict(amp=amp, channels_last=cl, timm=results.get('timm') or launch.get('timm'),
                commit=code.get('commit'), source_sha256=code.get('source_sha256'), chosen=_chosen(ran, launch))


#: the recipe values a card states beside the recipe path (the ones that differ between the zoo's runs)
KEY_SETTINGS = ('optimizer', 'lr', 'batch_size', 'epochs', 'weight_decay', 'quad_lr_scale', 'quad_weight_decay',
                'warmup_epochs', 'grad_clip')


def _quadratic_run(ran: Mapping[str, Any]) -> bool:
    """Whether a resolved recipe trains a quadratic model (where the quad_* settings act)."""
    neuron = (ran.get('model_args') or {}).get('neuron', 'linear')
    return neuron != 'linear' or str(ran.get('model', '')).startswith('q')


def key_settings(ran: Mapping[str, Any]) -> Dict[str, Any]:
    """The run's :data:`KEY_SETTINGS` from its resolved recipe (a quadratic-only setting only for a quadratic
    model's run, where it acts)."""
    quad = _quadratic_run(ran)
    return {k: ran[k] for k in KEY_SETTINGS if k in ran and ran[k] is not None and (quad or not k.startswith('quad_'))}


def _stability(log: List[Dict[str, Any]], ran: Dict[str, Any], n_val: Optional[int]) -> Dict[str, Any]:
    """``divergence`` (the one rule of :mod:`qzoo.divergence`, or None) and ``nonfinite`` (the epochs whose
    validation outputs held NaN/inf values, with counts) of a training log."""
    from .divergence import detect, nonfinite_epochs
    d = detect(log, ran.get('warmup_epochs') or 0.0, n_val)
    return dict(divergence=d.to_dict() if d is not None else None, nonfinite=nonfinite_epochs(log))


def _record(r: _Run, facts, variant, args, experiment, here, dtype, check, sha, ds, launch=None,
            commit=None) -> Weights:
    """The record of run ``r``: what the weights and recipe determine from ``facts`` (:func:`_facts`), the metrics
    of the stored weights measured here, the training's details from results.json (device: it cannot be derived)."""
    mine, results, ran = here[dtype], r.results, r.ran
    training = {k: results.get(k) for k in ('recipe', 'recipe_sha256', 'epochs', 'selected_epoch', 'selection',
                                            'device', 'world_size', 'wall_time_s', 'torch', 'qzoo')}
    splits = (results.get('data') or {}).get('splits')
    training.update(recipe_overrides=_recipe_overrides(ran, _recipe_file(results.get('recipe'))), fp16_check=check,
                    splits=splits,
                    provenance=_provenance(results, ran, ds.in_shape, launch, commit), key_settings=key_settings(ran),
                    **_stability(r.log, ran, (splits or {}).get('val')))
    budget = tuning_budget(experiment)
    if budget is not None:
        training['tuning'] = budget
    if (mine['val'], mine['test']) != (results['val'], results['test']):
        training['at_training'] = dict(val=results['val'], test=results['test'], device=results['device'])
        training['metrics_from'] = f'the published {dtype} weights, evaluated in float32 on the CPU when published'
    return Weights(
        architecture=variant, model_args=args, dataset=facts['dataset'], num_classes=ds.num_classes,
        params=facts['params'], label_names=tuple(ds.classes) if ds.task == 'classification' and ds.classes else None,
        experiment=experiment, seed=int(facts['seed']), task=facts['task'], data_spec=facts['data_spec'],
        input_size=input_size_of(ds.in_shape), neuron=facts['neuron'], macs=facts['macs'],
        primary_metric=facts['primary_metric'], val=mine['val'], test=mine['test'], sha256=sha,
        weights_dtype=dtype, training=training)


def input_size_of(in_shape) -> Tuple[int, ...]:
    """timm's 3-tuple input_size for a sample shape: (C, H, W) as is, (C, L) -> (C, 1, L), (F,) -> (F, 1, 1)."""
    s = tuple(int(v) for v in in_shape)
    return s if len(s) == 3 else (s[0], 1, s[1]) if len(s) == 2 else (s[0], 1, 1)


def _swap_in(tmp: Path, final: Path, records: Dict[str, Weights], changed: str) -> None:
    """Replace ``final`` by ``tmp`` and write the manifest; on failure restore the previous state."""
    old = final.with_name(f'.old-{final.name}-{os.getpid()}')
    had = final.exists()
    if had:
        os.replace(final, old)
    try:
        os.replace(tmp, final)
        _commit(records, changed=[changed])
    except BaseException:
        if final.exists():
            shutil.rmtree(final, ignore_errors=True)
        if had:
            os.replace(old, final)
        raise
    if had:
        shutil.rmtree(old, ignore_errors=True)


#: the results.json fields that identify a training run (a record keeps them under ``training``)
RUN_IDENTITY = ('recipe_sha256', 'epochs', 'selected_epoch', 'wall_time_s', 'device', 'world_size')


def _same_run(w: Weights, results: Mapping[str, Any]) -> bool:
    """Whether record ``w`` was published from the run that wrote ``results`` (republishing it is allowed)."""
    return all((w.training or {}).get(k) == results.get(k) for k in RUN_IDENTITY)


def backups_dir() -> Path:
    """Where ``publish --force`` keeps the folders and records it replaced: ``$QZOO_CACHE/replaced`` (default
    ``~/.cache/qzoo/replaced``), outside the package."""
    from .data._common import cache_dir
    return cache_dir() / 'replaced'


def _backup(w: Weights) -> Path:
    """A copy of ``w``'s folder and its record (record.json) under :func:`backups_dir`; returns the copy's path."""
    base = backups_dir() / f'{w.name}.{time.strftime("%Y%m%d-%H%M%S")}'
    dest, n = base, 1
    while dest.exists():
        dest, n = base.with_name(f'{base.name}-{n}'), n + 1
    if w.folder.is_dir():
        shutil.copytree(w.folder, dest, symlinks=True)
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write_json(dest / 'record.json', w.to_dict())
    return dest


def _may_replace(records: Dict[str, Weights], name: str, r: _Run, force: bool) -> Optional[Weights]:
    """The published record that publishing ``r`` as ``name`` replaces when it comes from another run (None when
    there is none, or it is this run's); CheckpointError for such a record without ``force``."""
    old = records.get(name)
    if old is None or _same_run(old, r.results):
        return None
    if not force:
        t = old.training or {}
        raise CheckpointError(
            f'{name} is already published from another run ({t.get("epochs")} epochs on {t.get("device")}, test '
            f'{old.primary_metric} {old.metric:.2f}); publishing {r.path} would replace it. Fix: publish it under '
            f'another --experiment, or pass --force to replace it (the replaced folder and record are kept under '
            f'{backups_dir()})')
    return old


def publish(run_dir, experiment: str, dtype: str = 'auto', launch_logs=None, commit: Optional[str] = None,
            force: bool = False, say: Optional[Callable[[str], None]] = None,
            chosen: Sequence[str] = ()) -> Weights:
    """Publish run folder ``run_dir`` as ``<architecture>.<experiment>-s<seed>``. ``experiment`` names the
    training (data, recipe), e.g. ``cwru-clean``; the seed comes from the run. For runs whose results.json
    predates the provenance fields: ``launch_logs`` (the unpacked logs of the ``qzoo launch`` call that made
    it: timm version, values chosen on validation) and ``commit`` (the code it ran). Weights of that name from
    another run are replaced only with ``force``, after a copy is kept under :func:`backups_dir` (``say``, default
    stderr, tells where). ``chosen``: sentences saying which values were chosen on validation for this run (the
    card's "chosen on validation" lines; :func:`select_on_validation`). Returns the record."""
    run = Path(run_dir)
    if not TAG_PATTERN.match(experiment or '') or experiment.endswith(tuple(f'-s{i}' for i in range(10))):
        raise ValueError(f'experiment {experiment!r}: use letters, digits, ".", "_" and "-", without the seed '
                         f'(it is added as -s<seed>)')
    r = _read_run(run)
    _check_one_run(r)
    model = from_pretrained(run)
    variant, args = variant_of(model)
    facts, ds = _facts(r, model)
    here = _evaluate_here(model, facts['data_spec'])
    dtype, check = _storage(r.results, here, dtype)
    _check_finite_outputs(run, here, dtype)
    root = checkpoints_dir()
    root.mkdir(parents=True, exist_ok=True)
    name = f'{variant}.{experiment}-s{int(facts["seed"])}'
    tmp = root / f'.tmp-{name}-{os.getpid()}'
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        meta = dict(format='pt', architecture=variant, model_args=json.dumps(args, sort_keys=True),
                    neuron=facts['neuron'], params=str(facts['params']), dtype=dtype)
        sha = save_weights(model.state_dict(), tmp / WEIGHTS_NAME, meta,
                           {'float16': torch.float16, 'float32': torch.float32}[dtype])
        w = _record(r, facts, variant, args, experiment, here, dtype, check, sha, ds,
                    read_launch_logs(launch_logs) if launch_logs else None, commit)
        if chosen:
            pv = dict(w.training['provenance'])
            pv['chosen'] = list(pv.get('chosen') or []) + list(chosen)
            w = _replace(w, training=dict(w.training, provenance=pv))
        atomic_write_bytes(tmp / 'recipe.yaml', r.recipe_bytes)
        write_log_gz(r.log_bytes, tmp / LOG_NAME)
        with _manifest_lock():  # read the records as they are now, change them and write them back
            records = dict(all_weights())
            replaced = _may_replace(records, w.name, r, force)
            backup = _backup(replaced) if replaced is not None else None
            records[w.name] = w
            records = _apply_defaults(records, _pinned(records))
            write_folder_metadata(records[w.name], tmp, records)
            _swap_in(tmp, root / w.name, records, w.architecture)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if backup is not None:
        (say or (lambda text: print(text, file=sys.stderr)))(
            f'replaced {w.name} (published from another run); its previous folder and record are kept in {backup}')
    return all_weights()[w.name]


# ---- choosing among search runs on validation -----------------------------------------------------------
#: recipe keys that name a run rather than set its training (never what a search varies)
_NOT_SEARCHED = ('name', 'seed', 'smoke', 'monitor_every', 'nan_check_every', 'device', 'compile', 'eval_batch_size')


def _fmt_setting(v: Any) -> str:
    return json.dumps(v, separators=(',', ':')) if not isinstance(v, float) else f'{v:g}'


def select_on_validation(run_dirs: Sequence[Any]) -> List[Tuple[Path, str]]:
    """The runs to publish from a validation search: the runs are grouped by architecture (model, model
    arguments) and seed; in each group the run with the best validation primary metric among those that did not
    diverge (:mod:`qzoo.divergence`) is chosen. Returns (run folder, the sentence that says what was chosen and
    every trial of the group, for its card) per group; ValueError when a group has no run that did not diverge,
    or its runs do not differ in any training setting."""
    from .metrics import Metrics
    groups: Dict[str, List[Tuple[Path, _Run, Dict[str, Any]]]] = {}
    for d in run_dirs:
        r = _read_run(Path(d))
        ran = r.ran
        splits = (r.results.get('data') or {}).get('splits') or {}
        stab = _stability(r.log, ran, splits.get('val'))
        key = json.dumps([ran.get('model'), ran.get('model_args'), ran.get('data'), ran.get('data_args'),
                          ran.get('seed')], sort_keys=True, default=str)
        groups.setdefault(key, []).append((Path(d), r, stab))
    out = []
    for members in groups.values():
        recipes = [m[1].ran for m in members]
        varied = sorted(k for k in set().union(*recipes) if k not in _NOT_SEARCHED
                        and len({json.dumps(rr.get(k), sort_keys=True) for rr in recipes}) > 1)
        first = members[0][1]
        label = f"{first.ran.get('model')} {json.dumps(first.ran.get('model_args') or {}, sort_keys=True)}, " \
                f"seed {first.ran.get('seed')}"
        if len(members) > 1 and not varied:
            raise ValueError(f'{label}: the runs {[str(m[0]) for m in members]} do not differ in any training '
                             f'setting, so there is nothing to choose. Fix: give one run per searched value')
        metric, higher = Metrics.PRIMARY[first.results['task']]
        stable = [m for m in members if m[2]['divergence'] is None]
        if not stable:
            raise ValueError(f'{label}: every run diverged ({", ".join(str(m[0]) for m in members)}); none is '
                             f'chosen. Fix: search other values, or publish one of them by name')
        best = (max if higher else min)(stable, key=lambda m: m[1].results['val'][metric])

        def setting(rr: Dict[str, Any]) -> str:
            return ', '.join(f'{k}={_fmt_setting(rr.get(k))}' for k in varied) or 'as the recipe reads'

        trials = []
        for path, r, stab in sorted(members, key=lambda m: [json.dumps(m[1].ran.get(k), sort_keys=True)
                                                              for k in varied]):
            note = (f" (diverged at epoch {stab['divergence']['epoch']}: never chosen)" if stab['divergence']
                    else '')
            trials.append(f"{setting(r.ran)}: {metric} {r.results['val'][metric]:.2f}{note}")
        epochs = sorted({m[1].ran.get('epochs') for m in members})
        sentence = (f"{setting(best[1].ran)}, chosen on validation among {len(members)} runs of this "
                    f"architecture and seed at {'/'.join(map(str, epochs))} epochs (best validation {metric} among "
                    f"the runs that did not diverge): " + '; '.join(trials))
        out.append((best[0], sentence))
    return out


# ---- the command line ------------------------------------------------------------------------
PUBLISH_HELP = """Publish a training run as zoo weights: qzoo/checkpoints/<architecture>.<experiment>-s<seed>/, its
record in the manifest, its card, and MODEL_CARDS.md. The architecture is the registered name that builds the run's
model (e.g. a run of `qcnn` with width 8 is published as `qcnn_w8`); the seed comes from the run.

    qzoo publish runs/cwru/qcnn-w8-cwru-snr-6db-s3 --experiment cwru-snr-6db [--dtype auto|float16|float32]
    qzoo publish RUN --experiment E --force     # replace weights of that name from another run (a copy is kept)
    qzoo publish --set-default qcnn.cwru-snr-6db-s1 --reason "..."   # pin a default by hand
    qzoo publish --refresh        # regenerate config.json, cards, defaults and MODEL_CARDS.md
    qzoo publish RUN... --experiment E --select   # a validation search: the best run per architecture and seed
    qzoo publish --group cwru [--only-missing]    # publish again every run behind a group of the zoo's weights

Each architecture's default weights follow qzoo.publish.choose_default unless pinned by hand. ``python
recipes/publish.py ...`` in a checkout is the same command.

--group names the runs behind qzoo/checkpoints (folders under <runs-root>/runs/, the checkout by default, where
these training commands wrote them) and the experiment each is published under; it stops at the first run that
cannot be published (the error names it):
    synthetic  python recipes/synthetic/sweep.py --sizes 2 4 8 16 32 --seeds 0 1 2 3 4
    cwru       qzoo launch recipes/cwru/[!_]*.yaml recipes/cwru/clean/*.yaml --grid seed=0,1,2,3,4 \\
                   --runs-dir runs/cwru
    dsb        qzoo launch recipes/dsb2018-96/[!_]*.yaml --runs-dir runs/dsb2018-96   (seed 0; b4 and b8 also
                   --grid seed=1,2)
    cifar      qzoo launch --preset conventional (an H100, --fit-in: 40 epochs), and the CPU run of
                   recipes/cifar10-jpeg75/qresnet20-w8.yaml with epochs=40 into runs/cifar-cpu
"""

SYNTHETIC_TASKS = ('circles-d2', 'moons-d2', 'spheres-d10', 'spheres-d50', 'interaction-d2')


def _synthetic_runs() -> List[Tuple[str, str]]:
    return [(f'runs/synthetic/{task}/{m}-h{h}-s{s}', f'synthetic-{task}')
            for task in SYNTHETIC_TASKS for m in ('mlp', 'qmlp') for h in (2, 4, 8, 16, 32) for s in range(5)]


def _cwru_runs() -> List[Tuple[str, str]]:
    return [(f'runs/cwru/{m}-w{w}-cwru-{cond}-s{s}', f'cwru-{cond}')
            for cond in ('snr-6db', 'clean') for s in range(5)
            for m, widths in (('wdcnn', (4, 8, 16)), ('qcnn', (8, 16, 32))) for w in widths]


def _dsb_runs() -> List[Tuple[str, str]]:
    return [(f'runs/dsb2018-96/{m}-b{w}-dsb2018-96-s{s}', 'dsb2018-96')
            for w, seeds in ((4, range(3)), (8, range(3)), (16, range(1))) for m in ('unet', 'qunet') for s in seeds]


def _cifar_runs() -> List[Tuple[str, str]]:
    runs = [(f'runs/conventional/resnet{d}-cifar10-jpeg75-s0', 'cifar10-jpeg75-e40') for d in (20, 32, 44, 56)]
    runs += [(f'runs/conventional/resnet20-w{w}-cifar10-jpeg75-s0', 'cifar10-jpeg75-e40') for w in (8, 12, 24)]
    return runs + [('runs/cifar-cpu/qresnet20-w8-cifar10-jpeg75-s0', 'cifar10-jpeg75-e40-cpu')]


#: the runs behind the published weights, by group: (run folder under the runs root, experiment)
RUN_GROUPS = {'synthetic': _synthetic_runs, 'cwru': _cwru_runs, 'dsb': _dsb_runs, 'cifar': _cifar_runs}


def _already_published(folder: Path, experiment: str) -> bool:
    """Whether the run in ``folder`` is published under ``experiment`` (same seed, recipe and parameter count)."""
    if not (folder / 'results.json').is_file():
        return False
    res = json.loads((folder / 'results.json').read_text())
    return any(w.experiment == experiment and w.seed == res['seed'] and w.training.get('recipe') == res['recipe']
               and w.params == res['params'] for w in all_weights().values())


def publish_group(group: str, runs_root, only_missing: bool = False, say=print) -> List[Weights]:
    """Publish every run of ``RUN_GROUPS[group]`` found under ``runs_root`` (``only_missing``: skip those already
    published); stops at the first run that cannot be published. Returns the records."""
    out = []
    for run, experiment in RUN_GROUPS[group]():
        folder = Path(runs_root) / run
        if only_missing and _already_published(folder, experiment):
            continue
        w = publish(folder, experiment)
        say(f'{run} -> {w.name}')
        out.append(w)
    return out


def _publish_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=PUBLISH_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('runs', nargs='*', help='run folders written by qzoo train')
    ap.add_argument('--experiment', help='what the weights were trained on, without the seed (e.g. cwru-clean)')
    ap.add_argument('--dtype', default='auto', choices=['auto', 'float16', 'float32'])
    ap.add_argument('--launch-logs', metavar='DIR',
                    help="the unpacked logs.tar.gz of the qzoo launch call that made the runs (timm version, values "
                         "chosen on validation), for runs whose results.json does not record them")
    ap.add_argument('--commit', help='the commit the runs were trained from, when their results.json does not say')
    ap.add_argument('--select', action='store_true',
                    help='the runs are a validation search: publish, per architecture and seed, only the run with '
                         'the best validation metric among those that did not diverge, with every trial on its card')
    ap.add_argument('--force', action='store_true',
                    help='replace weights of the same name published from another run (a copy of the replaced '
                         'folder and record is kept under $QZOO_CACHE/replaced, default ~/.cache/qzoo/replaced)')
    ap.add_argument('--set-default', metavar='NAME', help="pin published <architecture>.<tag> as its default")
    ap.add_argument('--reason', help='why (printed on the card), with --set-default')
    ap.add_argument('--refresh', action='store_true', help='regenerate every generated file from the records')
    ap.add_argument('--group', choices=list(RUN_GROUPS), help='publish again every run of a group (see above)')
    ap.add_argument('--only-missing', action='store_true', help='--group: skip runs already published')
    ap.add_argument('--runs-root', default=None,
                    help='--group: the folder that holds runs/ (default: the checkout, else the current directory)')
    return ap


def main(argv=None) -> int:
    """``qzoo publish`` (see :data:`PUBLISH_HELP`); returns the exit status."""
    from . import checkout
    ap = _publish_parser()
    a = ap.parse_args(argv)
    try:
        if a.set_default:
            print(set_default(a.set_default, a.reason or '').name)
        elif a.refresh:
            print(f'{refresh()} checkpoints refreshed')
        elif a.group:
            publish_group(a.group, a.runs_root or checkout.root() or Path.cwd(), a.only_missing,
                          lambda text: print(text, flush=True))
        elif a.runs and a.experiment:
            picks = select_on_validation(a.runs) if a.select else [(run, None) for run in a.runs]
            for run, why in picks:
                w = publish(run, a.experiment, a.dtype, a.launch_logs, a.commit, force=a.force,
                            chosen=[why] if why else ())
                print(json.dumps({'published': w.name, 'run': str(run)} if a.select else {'published': w.name}),
                      flush=True)
        else:
            ap.error('give run folders and --experiment, or --set-default NAME --reason ..., or --refresh, '
                     'or --group NAME')
    except (CheckpointError, RunDirError, NotARegularFileError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0
