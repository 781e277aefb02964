"""Evaluation shared by ``eval/validate.py`` and ``eval/efficiency.py``: load any
weights spec, score it on a named dataset split, and compare families by
accuracy per parameter."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .metrics import Metrics, evaluate
from .measure import count_macs, count_params

__all__ = ['load_any', 'external_available', 'evaluate_on', 'validate', 'frontier', 'params_at_metric', 'metric_at_params',
           'efficiency_rows', 'TIMM_COLUMNS']

#: timm's results CSV columns, then qzoo's
TIMM_COLUMNS = ['model', 'top1', 'top1_err', 'top5', 'top5_err', 'param_count', 'img_size', 'crop_pct',
                'interpolation']
QZOO_COLUMNS = ['dataset', 'split', 'neuron', 'macs', 'weights', 'sha256', 'source', 'macro_f1', 'iou', 'dice',
                'mse']


def load_any(spec: str) -> Tuple[nn.Module, Dict[str, Any]]:
    """Model + description for a weights spec: an external registry name
    (``akamaster/resnet20``), or anything :func:`qzoo.hub.resolve_spec` takes."""
    from . import external, hub
    if spec in external.EXTERNAL:
        model = external.load_external(spec)
        path = external.cache_path(spec)
        return model, dict(file=str(path), sha256=hub.sha256_file(path), source=external.EXTERNAL[spec].url,
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
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, path)
            return True
    return False


def evaluate_on(model: nn.Module, data: str, split: str = 'test', data_args: Optional[Dict] = None,
                batch_size: int = 500, device: str = 'cpu') -> Tuple[Dict[str, float], Any]:
    """Metrics of ``model`` on ``split`` of dataset ``data``, normalised with the *model's*
    mean/std (external checkpoints were trained with other statistics than the dataset default)."""
    from .data import BatchLoader, load_dataset
    ds = load_dataset(data, splits=(split,), **(data_args or {}))
    part = getattr(ds, split)
    norm = ds.normalize
    if norm is not None:
        cfg = getattr(model, 'pretrained_cfg', {})
        norm = (tuple(cfg.get('mean', norm[0])), tuple(cfg.get('std', norm[1])))
    loader = BatchLoader(part, batch_size, shuffle=False, device=device, normalize=norm)
    model.to(device)
    return evaluate(model, loader, ds.task, ds.num_classes, device), ds


def validate(spec: str, data: str, split: str = 'test', data_args: Optional[Dict] = None,
             device: str = 'cpu') -> Dict[str, Any]:
    """One results row (timm's columns + qzoo's) for weights ``spec`` on ``data``/``split``."""
    model, info = load_any(spec)
    metrics, ds = evaluate_on(model, data, split, data_args, device=device)
    cfg = model.pretrained_cfg
    row = dict(model=cfg.get('architecture'), param_count=count_params(model),
               img_size=cfg.get('input_size', [None])[-1], crop_pct=cfg.get('crop_pct'),
               interpolation=cfg.get('interpolation'), dataset=ds.name, split=split,
               neuron=getattr(model, 'neuron', 'linear'), macs=count_macs(model, (1, *ds.in_shape)),
               weights=spec, sha256=info.get('sha256', ''), source=info.get('source', spec))
    for k, v in metrics.items():
        row[k] = round(v, 4)
    if 'top1' in metrics:
        row['top1_err'] = round(100 - metrics['top1'], 4)
    if 'top5' in metrics:
        row['top5_err'] = round(100 - metrics['top5'], 4)
    return row


# ---- accuracy per parameter --------------------------------------------------------------
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
            if m1 == m0:
                return p0
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
            t = (math.log(params) - math.log(p0)) / (math.log(p1) - math.log(p0))
            return m0 + t * (m1 - m0)
    return curve[0][1]


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
            pc = params_at_metric(curve, g['mean'])
            ac = metric_at_params(curve, g['params'], max_p)
            row['conv_params_at_equal_metric'] = pc
            row['params_saved'] = None if pc is None else 1 - g['params'] / pc
            row['metric_gain_at_equal_params'] = None if ac is None else (g['mean'] - ac if higher else ac - g['mean'])
            notes = []
            if pc is None:
                best = max(m for _, m in curve) if higher else min(m for _, m in curve)
                notes.append(f"{metric} {g['mean']:.4g} is outside the conventional curve "
                             f"({curve[0][1]:.4g}..{curve[-1][1]:.4g})" +
                             (': better than every conventional model' if (g['mean'] > best if higher else g['mean'] < best)
                              else ': below every conventional model'))
            if ac is None:
                notes.append(f"{g['params']:,} params is outside the conventional models' range "
                             f"({curve[0][0]:,}..{max_p:,})")
            row['note'] = '; '.join(notes)
        out.append(row)
    return out
