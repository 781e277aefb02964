"""Accuracy per parameter of the published checkpoints, with bootstrap intervals: qzoo's main job
(``make eval``, ``python -m qzoo.efficiency``, ``eval/efficiency.py``).

For every dataset with published checkpoints (:func:`qzoo.weights.all_weights`), each checkpoint
is scored on its test split with the data settings its card was measured with (its record's
``data_spec``), with per-example scores (:func:`qzoo.evaluation.evaluate_spec`, through the
evaluation cache). CWRU checkpoints are scored a second time on non-overlapping test windows
(``eval_stride`` = the window length). Seeds of one experiment form a group (mean over seeds).
For each quadratic group the job reports the **parameters saved at equal metric**,
1 - p_Q / p_C(a_Q) with p_C read off the conventional groups' metric-vs-log-params frontier, and
the **gain at equal parameters**, a_Q - a_C(p_Q). External conventional checkpoints
(:mod:`qzoo.external`) are scored where available offline and kept out of the frontier.

Every number gets a 95% bootstrap interval (:mod:`qzoo.stats`): each replicate resamples the
test examples (one draw per dataset, shared by all its models) and each group's seeds, then
recomputes every group mean, the conventional frontier and every derived number. A derived number
whose interval contains 0, or that is undefined in more than 10% of the replicates, is printed as
**not established**.

Writes ``<out>/efficiency.csv``, ``<out>/efficiency.md``, ``<out>/pareto-<dataset>.png`` and, with
``--readme``, the generated block between ``<!-- results:begin -->`` and ``<!-- results:end -->``.
"""
from __future__ import annotations

import argparse
import csv
import difflib
import fnmatch
import io
import math
import os
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import stats
from .bounds import device_of
from .errors import CheckpointError
from .external import ExternalCheckpointError
from .evaluation import (EvalCache, Evaluation, Scores, compare_to_curve, evaluate_spec, external_available,
                         frontier, load_split)
from .fileio import atomic_write_bytes, atomic_write_text
from .metrics import Metrics

__all__ = ['main', 'human_name', 'design_for', 'replace_block', 'BEGIN', 'END']

BEGIN, END = '<!-- results:begin -->', '<!-- results:end -->'
#: the external checkpoints worth comparing on each dataset (trained elsewhere) and the data to score them on
EXTERNAL_DATA = {'cifar10-jpeg75': dict(spec={'name': 'cifar10-jpeg75', 'args': {}}, task='classification')}
SECONDARY = {'top1': 'macro_f1', 'iou': 'dice'}
NO_SECONDARY = {'cifar10-jpeg75'}
#: rough CPU throughput used only to weigh the progress bar's steps (multiply-accumulates per second)
_REF_MACS_PER_S = 1.5e10

CSV_COLUMNS = ['dataset', 'title', 'model', 'group', 'family', 'neuron', 'params', 'macs', 'metric', 'mean', 'mean_lo',
               'mean_hi', 'std', 'n_seeds', 'secondary', 'secondary_mean', 'secondary_lo', 'secondary_hi',
               'secondary_std', 'test_stride', 'nonoverlap_stride', 'nonoverlap_mean', 'nonoverlap_lo',
               'nonoverlap_hi', 'conv_params_at_equal_metric', 'params_saved', 'params_saved_lo', 'params_saved_hi',
               'params_saved_defined', 'params_saved_verdict', 'metric_gain_at_equal_params', 'gain_lo', 'gain_hi',
               'gain_defined', 'gain_verdict', 'external', 'diverged', 'checkpoints', 'note']


# ---- names ---------------------------------------------------------------------------------------
_KINDS = {'circles': 'circles', 'spheres': 'concentric spheres', 'moons': 'two moons', 'gaussians': 'Gaussian blobs',
          'interaction': 'regression y = x1·x2 + noise', 'norm2': 'regression y = ‖x‖² + noise'}


def _minus(v: float) -> str:
    return f'{v:g}'.replace('-', '−')


def human_name(ds) -> str:
    """A title for a loaded dataset: 'CWRU bearings, 0 HP, SNR −6 dB', 'CIFAR-10 (JPEG quality 75)', ..."""
    opts = ds.info.get('options', {})
    base = ds.name.split('-')[0]
    if ds.name.startswith('cwru'):
        snr = opts.get('snr_db')
        return 'CWRU bearings, 0 HP, ' + ('clean' if snr is None else f'SNR {_minus(snr)} dB')
    if ds.name.startswith('cifar10-jpeg75'):
        return 'CIFAR-10 (JPEG quality 75)'
    if base == 'cifar10':
        return 'CIFAR-10'
    if ds.name.startswith('dsb2018-96'):
        return 'DSB2018 nuclei, 96×96'
    if base == 'synthetic':
        kind = opts.get('kind', '')
        return f"Synthetic {_KINDS.get(kind, kind)}, {opts.get('dim')}-D"
    return ds.name


def condition(ds) -> str:
    """The test condition a title leaves out ('test windows of 2048 samples at stride 256'), or ''."""
    meta = ds.test.meta
    if 'stride' in meta and 'window' in meta:
        return f"test windows of {meta['window']} samples at stride {meta['stride']}"
    return ''


# ---- resampling design ---------------------------------------------------------------------------
def design_for(ds) -> stats.Design:
    """The bootstrap design of a test split: windows cut with overlap from recordings (``start``,
    ``window``, ``stride`` in the split's meta) get circular blocks of ceil(window / stride)
    windows within each recording segment (:meth:`qzoo.stats.Design.blocks`); classification sets
    (class counts fixed by construction) a bootstrap stratified by class; others an ordinary one."""
    part = ds.test
    meta = part.meta
    if 'start' in meta and 'window' in meta and 'stride' in meta:
        window, stride = int(meta['window']), int(meta['stride'])
        block = max(1, math.ceil(window / stride))
        y = part.y.numpy()
        start = meta['start'].numpy()
        # a recording segment: one class's windows, contiguous at the stride (a gap starts a new one)
        seg = np.zeros(len(y), np.int64)
        order = np.lexsort((start, y))
        for prev, cur in zip(order[:-1], order[1:]):
            new = y[cur] != y[prev] or start[cur] - start[prev] != stride
            seg[cur] = seg[prev] + int(new)
        what = (f'window {window}, stride {stride}: windows {block} or more apart share no samples' if block > 1
                else f'window {window}, stride {stride}: no two windows share a sample')
        return stats.Design.blocks(seg, start, block, what)
    if ds.task == 'classification':
        return stats.Design.stratified(part.y.numpy())
    return stats.Design.iid(len(part))


# ---- planning and scoring ------------------------------------------------------------------------
@dataclass
class Job:
    """One evaluation of the run: weights ``spec`` on ``data``/``args`` for table ``dataset``
    (``role`` 'main' or 'nonoverlap')."""
    spec: str
    dataset: str
    data: str
    args: Dict[str, Any]
    role: str = 'main'
    record: Any = None
    cost: int = 1   #: estimated milliseconds (weighs the progress bar)
    result: Optional[Evaluation] = None
    ds: Any = None  #: the loaded test data (DataSplits)


def _nonoverlap_args(data_spec: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """CWRU settings with non-overlapping test windows, or None when they already are / not CWRU."""
    if data_spec['name'] != 'cwru':
        return None
    from .data.cwru import WINDOW
    args = dict(data_spec.get('args') or {})
    if int(args.get('eval_stride', WINDOW)) >= WINDOW:
        return None
    return dict(args, eval_stride=WINDOW)


def plan(records: Mapping[str, Any], datasets: Optional[List[str]], mirrors: Sequence[Path], log) -> List[Job]:
    """Every evaluation the tables need: each published checkpoint (and its non-overlapping CWRU
    twin), then the external checkpoints available offline for the datasets in EXTERNAL_DATA."""
    from . import external
    jobs = []
    for name, w in sorted(records.items()):
        if datasets is not None and w.dataset not in datasets:
            continue
        spec = dict(w.data_spec)
        jobs.append(Job(name, w.dataset, spec['name'], dict(spec.get('args') or {}), 'main', w))
        extra = _nonoverlap_args(spec)
        if extra is not None:
            jobs.append(Job(name, w.dataset, spec['name'], extra, 'nonoverlap', w))
    for dataset, d in sorted(EXTERNAL_DATA.items()):
        if datasets is not None and dataset not in datasets:
            continue
        for ext in sorted(n for n, e in external.EXTERNAL.items() if e.num_classes == 10):
            if external_available(ext, mirrors):
                jobs.append(Job(ext, dataset, d['spec']['name'], dict(d['spec']['args'])))
            else:
                log(f'{ext}: not available offline (torch hub cache {external.cache_path(ext).parent}, mirrors '
                    f'{[str(m) for m in mirrors]}); skipped')
    # one data setting after the other, so each test split is loaded once
    return sorted(jobs, key=lambda j: (j.dataset, j.role, j.spec))


def _estimate(job: Job, cache: Optional[EvalCache], device: str) -> float:
    """Seconds the job should take on a reference CPU (cache hits ~0), to weigh the progress bar."""
    from .evaluation import cache_key, weights_identity
    ds, digest = load_split(job.data, job.args)
    job.ds = ds
    if cache is not None:
        key = cache_key(weights_identity(job.spec), digest, device, 500)
        if key is not None and cache.path(key).is_file():
            return 0.2     # load the weights, rerun the probe, read the entry
    macs = job.record.macs if job.record is not None else 4e7
    return 0.5 + macs * len(ds.test) / _REF_MACS_PER_S


def _ms(seconds: float) -> int:
    """Progress-bar units: whole estimated milliseconds (integers, so the steps add up exactly)."""
    return max(1, int(round(1000 * seconds)))


def run_jobs(jobs: List[Job], device: str, cache: Optional[EvalCache], log, extra_ms: int) -> Any:
    """Score every job (a tqdm bar over the whole run, weighted by estimated time, with ``extra_ms``
    for the steps that follow); returns the open bar so the caller advances it through those."""
    from tqdm import tqdm
    for j in jobs:
        j.cost = _ms(_estimate(j, cache, device))
    bar = tqdm(total=sum(j.cost for j in jobs) + extra_ms, unit='ms', file=sys.stderr,
               bar_format='{desc}{percentage:3.0f}%|{bar}| [{elapsed}<{remaining}] {postfix}', mininterval=1.0)
    for j in jobs:
        bar.set_description_str(f'{j.spec}' + (' (stride 2048)' if j.role == 'nonoverlap' else '') + ' ')
        j.result = evaluate_spec(j.spec, j.data, j.args, 'test', device, cache, use_record=False)
        _check_published(j, log)
        bar.update(j.cost)
    return bar


def _check_published(job: Job, log) -> None:
    w = job.record
    if w is None or job.role != 'main':
        return
    m = w.primary_metric
    got = float(job.result.scores.metric(m)[0])
    if abs(got - float(w.test[m])) > 1e-3:
        log(f'WARNING {job.spec}: re-evaluated test {m} {got:.4f} differs from the published {w.test[m]}')


# ---- groups and their intervals ------------------------------------------------------------------
def _family(job: Job) -> str:
    if job.record is None:
        return 'external'
    return 'conventional' if job.record.neuron == 'linear' else 'quadratic'


def _groups(jobs: List[Job]) -> Dict[str, List[Job]]:
    """Group key -> its jobs, seeds ascending: a published experiment ('<arch>.<experiment>'), or
    an external checkpoint on its own."""
    out: Dict[str, List[Job]] = defaultdict(list)
    for j in jobs:
        out[j.record.group if j.record is not None else j.spec].append(j)
    return {k: sorted(v, key=lambda j: (j.record.seed if j.record is not None else 0, j.spec))
            for k, v in out.items()}


_SOURCE = {'top1': 'correct', 'top5': 'top5', 'iou': 'iou', 'dice': 'dice', 'mse': 'sq_err'}


def resampled_metric(scores: Scores, name: str, idx: np.ndarray) -> np.ndarray:
    """Metric ``name`` on each row of drawn example indices ``idx`` (replicates x draws): the same
    numbers as :meth:`qzoo.evaluation.Scores.metric` with the matching counts, computed by gathers
    and bincounts (single-threaded: no BLAS, whose threads contend on a busy machine)."""
    if name != 'macro_f1':
        mean = scores.arrays[_SOURCE[name]][idx].astype(np.float64).mean(axis=1)
        return mean if name == 'mse' else 100.0 * mean
    k, reps = scores.num_classes, len(idx)
    off = (np.arange(reps) * k)[:, None]
    lab = (scores.arrays['label'][idx] + off).ravel()
    true_c = np.bincount(lab, minlength=reps * k).reshape(reps, k).astype(np.float64)
    pred_c = np.bincount((scores.arrays['pred'][idx] + off).ravel(), minlength=reps * k).reshape(reps, k)
    tp_c = np.bincount(lab, weights=scores.arrays['correct'][idx].ravel().astype(np.float64),
                       minlength=reps * k).reshape(reps, k)
    denom = true_c + pred_c
    f1 = np.where(denom > 0, 2 * tp_c / np.where(denom > 0, denom, 1.0), 0.0)
    present = true_c > 0
    return 100.0 * np.where(present, f1, 0.0).sum(1) / np.maximum(present.sum(1), 1)


def _checkpoint_reps(jobs: List[Job], names: List[str], design: stats.Design, replicates: int, seed: int,
                     key: str) -> Dict[str, Dict[str, np.ndarray]]:
    """spec -> metric -> (replicates,) values on the resampled test examples (one draw per
    replicate, the same for every job: paired)."""
    for j in jobs:
        if j.result.scores.n != design.n:
            raise ValueError(f'{j.spec} was scored on {j.result.scores.n} test examples, the {key} test set has '
                             f'{design.n}: the checkpoints of one table must share their test set')
    parts: Dict[str, Dict[str, List[np.ndarray]]] = {j.spec: {n: [] for n in names} for j in jobs}
    for idx in stats.index_chunks(design, replicates, seed, key):
        for j in jobs:
            for n in names:
                parts[j.spec][n].append(resampled_metric(j.result.scores, n, idx))
    return {s: {n: np.concatenate(v) for n, v in d.items()} for s, d in parts.items()}


def _summarise(groups: Dict[str, List[Job]], reps, name: str, replicates: int, seed: int, dataset: str):
    """group -> (point mean over seeds, std over seeds, (replicates,) resampled means)."""
    out = {}
    for g, js in groups.items():
        vals = [float(j.result.scores.metric(name)[0]) for j in js]
        per_seed = np.stack([reps[j.spec][name] for j in js], axis=1)
        draws = stats.seed_draws(len(js), replicates, seed, f'{dataset}/{g}')
        out[g] = (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0,
                  stats.mean_over_seeds(per_seed, draws))
    return out


def _derived(info: Dict[str, Dict[str, Any]], means: Dict[str, np.ndarray], higher: bool):
    """Per quadratic group, over replicates: (saved, gain, side) arrays; NaN where undefined; where
    the saving is undefined, side is +1 when a_Q is better than every conventional group and -1
    when it is below the start of the conventional curve (0 where the saving is defined)."""
    conv = [g for g, d in info.items() if d['family'] == 'conventional']
    quad = [g for g, d in info.items() if d['family'] == 'quadratic']
    reps = len(next(iter(means.values())))
    out = {g: (np.full(reps, np.nan), np.full(reps, np.nan), np.zeros(reps)) for g in quad}
    if not conv:
        return out
    for r in range(reps):
        pts = [(info[g]['params'], float(means[g][r])) for g in conv]
        best = max(m for _, m in pts) if higher else min(m for _, m in pts)
        for g in quad:
            a = float(means[g][r])
            _, saved, gain = compare_to_curve(pts, info[g]['params'], a, higher)
            saved_a, gain_a, side = out[g]
            saved_a[r] = np.nan if saved is None else saved
            gain_a[r] = np.nan if gain is None else gain
            if saved is None:
                side[r] = 1 if (a > best if higher else a < best) else -1
    return out


def _why(side: np.ndarray) -> str:
    """Why a saving is undefined in most replicates where it is."""
    undefined = side[side != 0]
    if len(undefined) and (undefined > 0).mean() >= 0.5:
        return 'better than every conventional model'
    return 'worse than where the conventional curve starts'


def _point_derived(info, point_means, higher):
    conv = [(d['params'], point_means[g]) for g, d in info.items() if d['family'] == 'conventional']
    return {g: compare_to_curve(conv, d['params'], point_means[g], higher) if conv else (None, None, None)
            for g, d in info.items() if d['family'] == 'quadratic'}


def _interval_fields(prefix: str, iv: stats.Interval, verdict: Optional[stats.Verdict] = None) -> Dict[str, Any]:
    d = {f'{prefix}_lo': iv.lo, f'{prefix}_hi': iv.hi}
    if verdict is not None:
        d[f'{prefix}_defined'] = round(iv.defined, 4)
        d[f'{prefix}_verdict'] = verdict.text
    return d


ONE_SEED = 'not established (one seed: training variation not measured)'


def _qualify(v: stats.Verdict, info: Dict[str, Dict[str, Any]], groups: Sequence[str]) -> stats.Verdict:
    """A verdict that rests on a one-seed group (any of ``groups``) is not established, whatever its
    interval: that interval covers test-set sampling only, and training variation (seeds) is as
    large as the differences measured."""
    if v.established and min(info[k]['n_seeds'] for k in groups) == 1:
        return stats.Verdict(False, 0, ONE_SEED)
    return v


def _with_frontier(info: Dict[str, Dict[str, Any]], g: str) -> List[str]:
    """Quadratic group ``g`` and every conventional group of the frontier it is read against."""
    return [g] + [k for k, d in info.items() if d['family'] == 'conventional']


def _quadratic_fields(g: str, info, pder, der, metric: str, point_mean: float, higher: bool) -> Dict[str, Any]:
    pc, saved, gain = pder[g]
    saved_r, gain_r, side = der[g]
    s_iv, g_iv = stats.interval(saved, saved_r), stats.interval(gain, gain_r)
    s_v = _qualify(stats.judge(s_iv, why_undefined=_why(side)), info, _with_frontier(info, g))
    g_v = _qualify(stats.judge(g_iv, why_undefined='parameters outside the conventional range'), info,
                   _with_frontier(info, g))
    conv = sorted((d['params'], d['mean']) for d in info.values() if d['family'] == 'conventional')
    notes = []
    if saved is None and conv:
        curve = frontier(conv, higher)
        if point_mean > curve[-1][1] if higher else point_mean < curve[-1][1]:
            notes.append(f'{metric} {point_mean:.4g} is better than every conventional model (best {curve[-1][1]:.4g})')
        else:
            notes.append(f'{metric} {point_mean:.4g} is worse than where the conventional curve starts '
                         f'({curve[0][1]:.4g} at {curve[0][0]:,} params)')
    if gain is None and conv:
        notes.append(f"{info[g]['params']:,} params is outside the conventional models' range "
                     f"({conv[0][0]:,}..{conv[-1][0]:,})")
    d = dict(conv_params_at_equal_metric=pc, params_saved=saved, metric_gain_at_equal_params=gain,
             note='; '.join(notes), _saved=s_v, _gain=g_v)
    d.update(_interval_fields('params_saved', s_iv, s_v))
    d.update({'gain_lo': g_iv.lo, 'gain_hi': g_iv.hi, 'gain_defined': round(g_iv.defined, 4),
              'gain_verdict': g_v.text})
    return d


def _group_info(groups: Dict[str, List[Job]], summ) -> Dict[str, Dict[str, Any]]:
    info = {}
    for g, js in groups.items():
        row = js[0].result.row
        info[g] = dict(family=_family(js[0]), params=int(row['param_count']), macs=int(row['macs']),
                       neuron=row.get('neuron', 'linear'), model=row.get('model'), mean=summ[g][0],
                       n_seeds=len(js))
    return info


def divergence_note(js: List[Job]) -> Tuple[int, str]:
    """(seeds that diverged, a note naming each: 's0 diverged at epoch 22 (loss 0.503 → 2.16), never recovered;
    weights of epoch 21') from the records' ``training.divergence`` (:mod:`qzoo.divergence`)."""
    from .divergence import Divergence
    notes = []
    for j in js:
        t = (j.record.training or {}) if j.record is not None else {}
        d = Divergence.from_dict(t.get('divergence'))
        if d is not None:
            notes.append(f's{j.record.seed} {d.short()}; weights of epoch {t.get("selected_epoch")}')
    return len(notes), '; '.join(notes)


def _group_row(g: str, js: List[Job], summ, ctx: Dict[str, Any]) -> Dict[str, Any]:
    """One table row: the group's mean over seeds with its interval (and the secondary metric's, the
    non-overlapping CWRU accuracy's), and for a quadratic group the derived numbers."""
    d, metric, ds = ctx['info'][g], ctx['metric'], ctx['ds']
    mean, std, rep = summ[metric][g]
    row = dict(dataset=ctx['dataset'], title=human_name(ds), model=d['model'], group=g, family=d['family'],
               neuron=d['neuron'], params=d['params'], macs=d['macs'], metric=metric, mean=mean, std=std,
               n_seeds=len(js), external=d['family'] == 'external', test_stride=ds.test.meta.get('stride'),
               checkpoints=' '.join(j.spec for j in js), note='')
    row.update(_interval_fields('mean', stats.interval(mean, rep)))
    if ctx['secondary']:
        s_mean, s_std, s_rep = summ[ctx['secondary']][g]
        row.update(secondary=ctx['secondary'], secondary_mean=s_mean, secondary_std=s_std)
        row.update(_interval_fields('secondary', stats.interval(s_mean, s_rep)))
    non = ctx['non']
    if non is not None and g in non['summary']:
        n_mean, _, n_rep = non['summary'][g]
        iv = stats.interval(n_mean, n_rep)
        row.update(nonoverlap_stride=non['stride'], nonoverlap_mean=n_mean, nonoverlap_lo=iv.lo, nonoverlap_hi=iv.hi)
    if d['family'] == 'quadratic':
        row.update(_quadratic_fields(g, ctx['info'], ctx['pder'], ctx['der'], metric, mean, ctx['higher']))
    row['diverged'], why = divergence_note(js)
    row['note'] = '; '.join(filter(None, [why, row.get('note', '')]))
    return row


def table_for(dataset: str, jobs: List[Job], replicates: int, seed: int) -> Dict[str, Any]:
    """The table of one dataset: every group's mean with its interval, and for quadratic groups the
    parameters saved and the gain with intervals and verdicts (see the module doc)."""
    main = [j for j in jobs if j.role == 'main']
    ref = next((j for j in main if j.record is not None), main[0])
    ds = ref.ds if ref.ds is not None else load_split(ref.data, ref.args)[0]
    metric, higher = Metrics.primary(ds.task)
    secondary = None if dataset in NO_SECONDARY else SECONDARY.get(metric)
    names = [metric] + ([secondary] if secondary else [])
    groups = _groups(main)
    design = design_for(ds)
    reps = _checkpoint_reps(main, names, design, replicates, seed, dataset)
    summ = {n: _summarise(groups, reps, n, replicates, seed, dataset) for n in names}
    info = _group_info(groups, summ[metric])
    der = _derived(info, {g: summ[metric][g][2] for g in groups}, higher)
    pder = _point_derived(info, {g: summ[metric][g][0] for g in groups}, higher)
    non = _nonoverlap(dataset, [j for j in jobs if j.role == 'nonoverlap'], metric, replicates, seed)
    ctx = dict(dataset=dataset, ds=ds, metric=metric, secondary=secondary, higher=higher, info=info, der=der,
               pder=pder, non=non)
    rows = [_group_row(g, js, summ, ctx) for g, js in groups.items()]
    order = {'conventional': 0, 'quadratic': 1, 'external': 2}
    rows.sort(key=lambda r: (order[r['family']], r['params'], r['group']))
    return dict(dataset=dataset, title=human_name(ds), condition=condition(ds), metric=metric, higher=higher,
                secondary=secondary, design=design.description, n_test=len(ds.test), nonoverlap=non, rows=rows,
                replicates=replicates, data_args=dict(ref.args),
                headline=headline_pair(info, {g: summ[metric][g] for g in groups}, higher))


def headline_pair(info: Dict[str, Dict[str, Any]], summ: Dict[str, Tuple[float, float, np.ndarray]],
                  higher: bool) -> Optional[Dict[str, Any]]:
    """The README's headline comparison for one dataset: the best conventional group against the best
    quadratic group with at most its parameters (the smallest quadratic group when every one is
    larger), and their difference (positive: the quadratic group is better, also for MSE) with its
    paired interval (each replicate draws the same test examples for both) and verdict; None when a
    family is missing."""
    conv = [g for g, d in info.items() if d['family'] == 'conventional']
    quad = [g for g, d in info.items() if d['family'] == 'quadratic']
    if not conv or not quad:
        return None
    sign = 1.0 if higher else -1.0
    c = max(conv, key=lambda g: (sign * summ[g][0], -info[g]['params']))
    fits = [g for g in quad if info[g]['params'] <= info[c]['params']]
    q = max(fits, key=lambda g: (sign * summ[g][0], -info[g]['params'])) if fits else \
        min(quad, key=lambda g: info[g]['params'])
    diff = sign * (summ[q][0] - summ[c][0])
    iv = stats.interval(diff, sign * (summ[q][2] - summ[c][2]))
    verdict = _qualify(stats.judge(iv), info, [q, c])
    return dict(conventional=c, quadratic=q, diff=diff, lo=iv.lo, hi=iv.hi, verdict=verdict,
                params_ratio=info[q]['params'] / info[c]['params'], fits=bool(fits))


def _nonoverlap(dataset: str, jobs: List[Job], metric: str, replicates: int, seed: int) -> Optional[Dict[str, Any]]:
    if not jobs:
        return None
    ds = jobs[0].ds if jobs[0].ds is not None else load_split(jobs[0].data, jobs[0].args)[0]
    design = design_for(ds)
    reps = _checkpoint_reps(jobs, [metric], design, replicates, seed, f'{dataset}/nonoverlap')
    return dict(stride=ds.test.meta.get('stride'), n=len(ds.test), name=ds.name, design=design.description,
                summary=_summarise(_groups(jobs), reps, metric, replicates, seed, dataset))


# ---- formatting ----------------------------------------------------------------------------------
def _m(v: Optional[float], metric: str, signed: bool = False) -> str:
    """A metric value: points with 2 decimals (% metrics), 4 significant digits for MSE."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return '–'
    s = (f'{v:+.2f}' if signed else f'{v:.2f}') if metric != 'mse' else (f'{v:+#.3g}' if signed else f'{v:#.4g}')
    return s.replace('-', '−')


def _pct(v: Optional[float]) -> str:
    return '–' if v is None else f'{100 * v:+.1f}%'.replace('-', '−')


def _ci(lo, hi, fmt) -> str:
    return '' if lo is None else f' [{fmt(lo)}, {fmt(hi)}]'


def _verdict_cell(point, lo, hi, fmt, verdict: stats.Verdict) -> str:
    """'+12.0% [+3.1%, +20.2%] established', '−4.0% [−9.9%, +2.0%] **not established**', or for an
    undefined point '– **not established** (better than every conventional model in 60% of resamples)'."""
    ci = _ci(lo, hi, fmt) if point is not None else ''
    if verdict.established:
        return f'{fmt(point)}{ci} {verdict.text}'
    reason = verdict.text[len('not established'):].strip()
    if reason.startswith('(the interval'):
        reason = ''
    return f'{fmt(point)}{ci} **not established**' + (f' {reason}' if reason else '')


def _row_cells(r: Dict[str, Any], t: Dict[str, Any]) -> List[str]:
    metric = t['metric']
    mfmt = lambda v: _m(v, metric)  # noqa: E731
    cells = [r['group'], r['family'], r['neuron'], f"{r['params']:,}", f"{r['macs']:,}", str(r['n_seeds']),
             f"{_m(r['mean'], metric)}{_ci(r.get('mean_lo'), r.get('mean_hi'), mfmt)}",
             _m(r['std'], metric) if r['n_seeds'] > 1 else '–']
    if t['secondary']:
        cells.append(f"{_m(r['secondary_mean'], metric)}{_ci(r.get('secondary_lo'), r.get('secondary_hi'), mfmt)}")
    if t['nonoverlap'] is not None:
        cells.append(f"{_m(r.get('nonoverlap_mean'), metric)}{_ci(r.get('nonoverlap_lo'), r.get('nonoverlap_hi'), mfmt)}")
    if not any(x['family'] == 'quadratic' for x in t['rows']):
        pass                                  # no quadratic group: no derived columns
    elif r['family'] == 'quadratic':
        cells.append(_verdict_cell(r['params_saved'], r['params_saved_lo'], r['params_saved_hi'], _pct, r['_saved']))
        gfmt = lambda v: _m(v, metric, signed=True)  # noqa: E731
        cells.append(_verdict_cell(r['metric_gain_at_equal_params'], r['gain_lo'], r['gain_hi'], gfmt, r['_gain']))
    else:
        cells += ['–', '–']
    cells.append(r.get('note', ''))
    return cells


def _table_intro(t: Dict[str, Any]) -> List[str]:
    cond = f" ({t['condition']})" if t['condition'] else ''
    lines = [f"Test set: {t['n_test']:,} examples{cond}. Resampling: {t['design']}."]
    non = t['nonoverlap']
    if non is not None:
        lines.append(f"The cards' test {t['metric']} uses these windows (stride {t['rows'][0]['test_stride']}, "
                     f"overlapping). Column *stride {non['stride']}*: the same checkpoints on the {non['n']} "
                     f"non-overlapping windows of the same segments (`{non['name']}`; resampling: {non['design']}).")
    fams = {r['family'] for r in t['rows']}
    if 'quadratic' not in fams:
        lines.append('No quadratic checkpoint is published on this dataset yet: the conventional curve below is '
                     'what they will be compared with.')
    if 'external' in fams:
        lines.append('External checkpoints were trained on other data (the original CIFAR-10) and are not part of '
                     'the conventional curve.')
    return [' '.join(lines), '']


def table_markdown(t: Dict[str, Any]) -> List[str]:
    metric = t['metric']
    head = ['model', 'family', 'neuron', 'params', 'MACs', 'seeds', f'{metric} [95% CI]', 'std over seeds']
    if t['secondary']:
        head.append(f"{t['secondary']} [95% CI]")
    if t['nonoverlap'] is not None:
        head.append(f"{metric}, stride {t['nonoverlap']['stride']} [95% CI]")
    if any(r['family'] == 'quadratic' for r in t['rows']):
        head += [f'params saved at equal {metric} [95% CI]', 'gain at equal params [95% CI]']
    head.append('note')
    out = [f"## {t['title']} (`{t['dataset']}`, test {metric})", ''] + _table_intro(t)
    out += ['| ' + ' | '.join(head) + ' |',
            '|' + '|'.join('---:' if i in (3, 4, 5) else '---' for i in range(len(head))) + '|']
    out += ['| ' + ' | '.join(_row_cells(r, t)) + ' |' for r in t['rows']]
    return out + ['']


def markdown(tables: List[Dict[str, Any]], replicates: int, seed: int) -> str:
    out = ['# Accuracy per parameter', '',
           'Generated by `make eval` (`qzoo.efficiency`) from the published checkpoints, each scored on its '
           "dataset's *test* split with the data settings of its card (weights selected on the validation split). "
           'A group is one experiment over its seeds; its value is the mean over seeds.', '',
           '*params saved* = 1 − p_Q / p_C(a_Q), p_C read off the frontier of the conventional groups (metric vs '
           'log-params, linear interpolation): the one definition of "parameters saved" in this repository. '
           '*gain* = a_Q − a_C(p_Q), in metric units (positive: the quadratic model is better, also for MSE).', '',
           f'Intervals: 95% percentile bootstrap, {replicates} replicates, seed {seed}. Each replicate resamples the '
           "test examples once per dataset — the same draw for every model of the table (paired) — as each "
           "table's *Resampling* line says, and the seeds of each group with replacement; it then recomputes every "
           'group mean, the conventional frontier and every derived number. A group of one seed has an interval '
           'for test-set sampling only (training variation is not measured). A derived number is **not '
           f'established** when its interval contains 0, when it is undefined (the quadratic metric outside the '
           f'conventional curve) in more than {100 * stats.MAX_UNDEFINED:.0f}% of the replicates (its interval is '
           'then over the replicates where it is defined), or when the quadratic group or a conventional group '
           'has one seed.', '']
    for t in tables:
        out += table_markdown(t)
    if not tables:
        out += ['No checkpoints are published yet.', '']
    return '\n'.join(out)


def write_csv(tables: List[Dict[str, Any]], path: Path) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction='ignore', lineterminator='\n')
    w.writeheader()
    for t in tables:
        for r in t['rows']:
            w.writerow({c: _csv_value(r.get(c)) for c in CSV_COLUMNS})
    atomic_write_text(path, buf.getvalue())


def _csv_value(v: Any) -> Any:
    """Floats to 7 significant digits. Scoring the same weights with another thread count or CPU
    reorders float32 reductions and moves a metric by a few parts in 10^8 (measured: a fresh
    one-thread run against cached two-thread scores); the CSV should not change with that, and no
    number here is meaningful beyond its 4th digit (see the intervals)."""
    if v is None:
        return ''
    return float(f'{v:.7g}') if isinstance(v, float) else v


# ---- the README summary --------------------------------------------------------------------------
_LABEL = {'top1': 'top-1 accuracy', 'iou': 'IoU', 'mse': 'MSE'}


def _short_name(r: Dict[str, Any], rows: List[Dict[str, Any]]) -> str:
    """The model's name, or, when two groups of a table share it (e.g. one architecture trained on two devices),
    its group name '<model>.<experiment>'."""
    same = [x for x in rows if x['model'] == r['model']]
    return r['model'] if len(same) == 1 else r['group']


def plot_label(r: Dict[str, Any], rows: List[Dict[str, Any]]) -> str:
    """A point's label in a Pareto plot: the model, with what tells its experiment apart from the other groups
    of the same model ('qresnet20_w8 [e40-cpu]'), and a dagger when a seed diverged."""
    same = [x for x in rows if x['model'] == r['model'] and x['group'] != r['group']]
    label = r['model'] if r['family'] != 'external' else r['group']
    if same:
        exp = r['group'].split('.', 1)[1]
        common = os.path.commonprefix([exp] + [x['group'].split('.', 1)[1] for x in same])
        tail = exp[len(common):].strip('-') if len(common) < len(exp) else ''
        label += f" [{tail or exp}]"
    return label + (' †' if r.get('diverged') else '')


def _undefined_reason(r: Dict[str, Any], key: str, conv_params: List[int]) -> str:
    """Why a derived number is undefined: the side of the curve (savings) or of the parameter range (gains)."""
    if key == 'params_saved':
        return r['_saved'].text[len('not established ('):].split(' in ')[0]
    return 'more parameters than any conventional model' if r['params'] > max(conv_params) else \
        'fewer parameters than any conventional model'


def _clause(what: str, quads, rows, vkey: str, key: str, ci: str, fmt) -> str:
    """'<what> — established for A +x [lo, hi] (B +y [lo, hi] not established; C, D: <why undefined>)'."""
    conv_params = [r['params'] for r in rows if r['family'] == 'conventional']
    est, inner, single, why = [], [], [], defaultdict(list)
    for r in quads:
        name = _short_name(r, rows)
        item = f"{name} {fmt(r[key])} [{fmt(r[f'{ci}_lo'])}, {fmt(r[f'{ci}_hi'])}]"
        if r[vkey].established:
            est.append(item)
        elif r[key] is not None and r[vkey].text.endswith('contains 0)'):
            inner.append(item)
        elif r[key] is not None and r[vkey].text == ONE_SEED:
            single.append(item)
        else:
            why[_undefined_reason(r, key, conv_params)].append((name, r.get(f'{ci}_defined', 0.0)))
    extra = ([', '.join(inner) + ' not established'] if inner else [])
    extra += ([', '.join(single) + ' not established: one seed'] if single else [])
    for reason, items in why.items():
        shares = sorted({round(100 * (1 - d)) for _, d in items})
        span = '' if key != 'params_saved' else (f' in {shares[0]}% of resamples' if len(shares) == 1 else
                                                  f' in {shares[0]}–{shares[-1]}% of resamples')
        extra.append(f"{', '.join(n for n, _ in items)}: {reason}{span}")
    text = f'{what} — established for ' + (', '.join(est) if est else f'none of {len(quads)}')
    return text + (f" ({'; '.join(extra)})" if extra else '')


def summary_sentence(t: Dict[str, Any]) -> str:
    """One sentence on a table, written from its numbers (with their intervals)."""
    metric, rows = t['metric'], t['rows']
    label = _LABEL.get(metric, metric)
    seeds = sorted({r['n_seeds'] for r in rows if r['family'] != 'external'})
    seeds_s = (f'{seeds[0]}' if len(seeds) == 1 else f'{seeds[0]}–{seeds[-1]}') + \
        (' seed' if seeds[-1] == 1 else ' seeds')
    cond = f", {t['condition'].replace('test windows', 'windows')}" if t['condition'] else ''
    head = f"**{t['title']}** (test {label}, {t['n_test']:,} test examples{cond}, {seeds_s})"
    quads = [r for r in rows if r['family'] == 'quadratic']
    conv = [r for r in rows if r['family'] == 'conventional']
    mf = lambda v: _m(v, metric)  # noqa: E731
    if not quads:
        best = (max if t['higher'] else min)(conv, key=lambda r: r['mean'])
        small = conv[0]
        return (f"{head}: no quadratic model is published yet; the conventional models go from {mf(small['mean'])} "
                f"[{mf(small['mean_lo'])}, {mf(small['mean_hi'])}] ({small['model']}, {small['params']:,} parameters) "
                f"to {mf(best['mean'])} [{mf(best['mean_lo'])}, {mf(best['mean_hi'])}] ({best['model']}, "
                f"{best['params']:,} parameters).")
    gf = lambda v: _m(v, metric, signed=True)  # noqa: E731
    unit = 'MSE, positive = lower' if metric == 'mse' else 'points'
    saved = _clause(f'parameters saved at equal {label}', quads, rows, '_saved', 'params_saved', 'params_saved', _pct)
    gain = _clause(f'gain at equal parameters ({unit})', quads, rows, '_gain', 'metric_gain_at_equal_params', 'gain',
                   gf)
    return f'{head}: {saved}; {gain}.' + _diverged_clause(rows)


def _diverged_clause(rows: List[Dict[str, Any]]) -> str:
    """' Training diverged for a seed of qresnet20_w8 (s0 at epoch 22, never recovered), ...: their numbers are
    those of the best validation epoch before it (see the cards).' ('' when no run diverged)."""
    hit = [r for r in rows if r.get('diverged')]
    if not hit:
        return ''
    items = [f"{_short_name(r, rows)} ({r['diverged']} of {r['n_seeds']} seed{'s' if r['n_seeds'] > 1 else ''})"
             for r in hit]
    return (' Training diverged (†, `qzoo.divergence`) for ' + ', '.join(items) + '; a diverged run\'s number is '
            'that of its best validation epoch, and its card and the table\'s note say when it diverged.')


def _model_cell(r: Dict[str, Any], rows: List[Dict[str, Any]]) -> str:
    seeds = f"{r['n_seeds']} seed" + ('s' if r['n_seeds'] > 1 else '')
    if r.get('diverged'):
        seeds += f", {r['diverged']} diverged †"
    mf = _m(r['mean'], r['metric'])
    return (f"`{_short_name(r, rows)}` ({r['params']:,} params, {seeds}): {mf} "
            f"[{_m(r['mean_lo'], r['metric'])}, {_m(r['mean_hi'], r['metric'])}]")


def headline_row(t: Dict[str, Any]) -> str:
    """One row of the README's headline table (see :func:`headline_pair`)."""
    metric, rows = t['metric'], t['rows']
    task = f"{t['title']}: test {_LABEL.get(metric, metric)}" + (' (difference > 0: lower MSE)' if metric == 'mse' else '')
    by = {r['group']: r for r in rows}
    h = t.get('headline')
    if h is None:
        conv = [r for r in rows if r['family'] == 'conventional']
        if not conv:
            return f'| {task} | – | no conventional model published | – | – | – |'
        best = (max if t['higher'] else min)(conv, key=lambda r: r['mean'])
        return f'| {task} | {_model_cell(best, rows)} | no quadratic model published yet | – | – | – |'
    c, q = by[h['conventional']], by[h['quadratic']]
    diff = _verdict_cell(h['diff'], h['lo'], h['hi'], lambda v: _m(v, metric, signed=True), h['verdict'])
    if h['verdict'].established:
        diff = diff.replace(' established', ' **quadratic better**' if h['verdict'].sign > 0 else
                            ' **quadratic worse**')
    qcell = _model_cell(q, rows) + ('' if h['fits'] else ' (every quadratic model is larger)')
    saved = _verdict_cell(q['params_saved'], q['params_saved_lo'], q['params_saved_hi'], _pct, q['_saved'])
    return f"| {task} | {_model_cell(c, rows)} | {qcell} | {h['params_ratio']:.2f}× | {diff} | {saved} |"


def headline_markdown(tables: List[Dict[str, Any]]) -> List[str]:
    """The headline table: per dataset, the best conventional model against the best quadratic model
    with at most its parameters."""
    lines = ['| task | best conventional [95% CI] | best quadratic with at most its parameters [95% CI] | '
             'params, Q/C | quadratic − conventional [95% CI] | params saved at equal metric [95% CI] |',
             '|---|---|---|---:|---|---|']
    return lines + [headline_row(t) for t in tables]


def readme_block(tables: List[Dict[str, Any]], replicates: int) -> str:
    lines = ['<!-- generated by `make eval` (qzoo.efficiency) from results/efficiency.md; edits here are overwritten -->',
             '']
    lines += headline_markdown(tables)
    lines += ['', f'95% percentile bootstrap intervals over seeds and test examples ({replicates} replicates, '
              'paired: both models of a row are scored on the same resampled test examples). A difference or a '
              '*parameters saved* (1 − p_Q / p_C(a_Q), p_C read off the conventional frontier of metric against '
              'log-parameters) is **established** when its interval excludes 0, it is defined in at least '
              f'{100 * (1 - stats.MAX_UNDEFINED):.0f}% of the replicates and every group it involves has two '
              'seeds or more (one seed measures test-set sampling only, not training variation). Per dataset:', '']
    lines += [f'- {summary_sentence(t)}' for t in tables]
    return '\n'.join(lines) + '\n'


def replace_block(text: str, block: str, what: str = 'README.md') -> str:
    """``text`` with everything between :data:`BEGIN` and :data:`END` replaced by ``block``."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f'{what} must hold exactly one {BEGIN} followed by one {END} (found {text.count(BEGIN)} and '
                         f'{text.count(END)}); add them where the generated results summary belongs')
    a, b = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:a] + '\n' + block.rstrip('\n') + '\n' + text[b:]


# ---- plots ---------------------------------------------------------------------------------------
def _short(v: float) -> str:
    for div, suffix in ((1e6, 'M'), (1e3, 'k')):
        if v >= div:
            return f'{v / div:g}{suffix}'
    return f'{v:g}'


def _log_ticks(lo: float, hi: float) -> List[float]:
    """1-2-5 ticks between lo and hi, thinned to decades when there would be more than 7."""
    for subs in ((1, 2, 5), (1, 3), (1,)):
        ticks = [s * 10.0 ** e for e in range(int(math.floor(math.log10(lo))), int(math.ceil(math.log10(hi))) + 1)
                 for s in subs if lo <= s * 10.0 ** e <= hi]
        if len(ticks) <= 7:
            return ticks
    return ticks


_OFFSETS = ((5, 5, 'left'), (5, -11, 'left'), (-5, 5, 'right'), (-5, -11, 'right'), (5, 14, 'left'),
            (-5, 14, 'right'), (5, -20, 'left'), (-5, -20, 'right'))


def _annotate(fig, ax, labels: List[Tuple[str, float, float, Any]]) -> None:
    """Label points with their architecture, each at the first offset (right/left, above/below)
    where its text overlaps no label placed before and stays inside the axes (greedy, in order of
    params, so the result is fixed by the table)."""
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    placed = []
    for text, x, y, color in sorted(labels, key=lambda v: (v[1], v[2], v[0])):
        for i, (dx, dy, ha) in enumerate(_OFFSETS):
            t = ax.annotate(text, (x, y), textcoords='offset points', xytext=(dx, dy), ha=ha, fontsize=7, color=color)
            ext = t.get_window_extent(renderer)
            inside = box.x0 <= ext.x0 and ext.x1 <= box.x1 and box.y0 <= ext.y0 and ext.y1 <= box.y1
            if (inside and not any(ext.overlaps(o) for o in placed)) or i == len(_OFFSETS) - 1:
                placed.append(ext)
                break
            t.remove()


def figure(t: Dict[str, Any]):
    """The Pareto plot of a table: each group's mean with its 95% interval, the frontier of each
    family through the means, readable log-scale parameter ticks and a human title."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter
    fig, ax = plt.subplots(figsize=(7.0, 4.6), dpi=120)
    style = {'conventional': ('tab:blue', 'o'), 'quadratic': ('tab:red', '^'), 'external': ('0.45', 'X')}
    labels: List[Tuple[str, float, float, Any]] = []
    for fam, (color, marker) in style.items():
        rs = [r for r in t['rows'] if r['family'] == fam]
        if not rs:
            continue
        for diverged in (False, True):
            part = [r for r in rs if bool(r.get('diverged')) == diverged]
            if not part:
                continue
            x, y = [r['params'] for r in part], [r['mean'] for r in part]
            err = [[r['mean'] - r['mean_lo'] for r in part], [r['mean_hi'] - r['mean'] for r in part]]
            name = {'external': 'external hub checkpoint'}.get(fam, fam)
            ax.errorbar(x, y, yerr=err, fmt=marker, color=color, capsize=3, ms=7 if diverged else 6,
                        mfc='white' if diverged else color, mew=1.5,
                        label=name + (', a seed diverged (†)' if diverged else '') + ' (95% CI)')
        if fam != 'external':
            curve = frontier([(r['params'], r['mean']) for r in rs], t['higher'])
            ax.plot([p for p, _ in curve], [m for _, m in curve], '-', color=color, alpha=0.5)
        labels += [(plot_label(r, t['rows']), r['params'], r['mean'], color) for r in rs]
    ps = [r['params'] for r in t['rows']]
    ax.set_xscale('log')
    ax.set_xlim(min(ps) / 1.6, max(ps) * 1.6)
    ax.xaxis.set_major_locator(FixedLocator(_log_ticks(min(ps) / 1.6, max(ps) * 1.6)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _short(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel('parameters (log scale)')
    ax.set_ylabel(f"test {_LABEL.get(t['metric'], t['metric'])}" + (' (%)' if t['metric'] != 'mse' else ''))
    sub = (f"{t['condition']}; " if t['condition'] else f"{t['n_test']:,} test examples; ") + \
        'mean over seeds with its 95% bootstrap interval'
    ax.set_title(f"{t['title']}\n{sub}", fontsize=9)
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _annotate(fig, ax, labels)
    return fig


def plot(t: Dict[str, Any], path: Path) -> None:
    """Write :func:`figure` as a PNG with fixed metadata (byte-identical for identical tables)."""
    import matplotlib.pyplot as plt
    fig = figure(t)
    buf = io.BytesIO()
    fig.savefig(buf, format='png', metadata={'Software': None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


# ---- the job -------------------------------------------------------------------------------------
def _select(ap: argparse.ArgumentParser, wanted: Optional[List[str]], valid: List[str]) -> Optional[List[str]]:
    """The datasets ``--dataset`` names (exact names or globs); an unknown one is a usage error
    (exit 2) naming the nearest valid names, before anything is written."""
    if not wanted:
        return None
    chosen = set()
    for w in wanted:
        hits = fnmatch.filter(valid, w) if any(c in w for c in '*?[') else [v for v in valid if v == w]
        if not hits:
            close = difflib.get_close_matches(w, valid, n=3, cutoff=0.5)
            heads = difflib.get_close_matches(w.split('-')[0], sorted({v.split('-')[0] for v in valid}), n=2, cutoff=0.5)
            close = close or [v for v in valid if v.split('-')[0] in heads]
            ap.error(f'unknown dataset {w!r}' + (f"; did you mean {', '.join(close)}?" if close else '') +
                     f" Valid: {', '.join(valid)} (globs such as 'cwru*' work). Nothing was written.")
        chosen.update(hits)
    return sorted(chosen)


def _parser(default_out: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--out', default=default_out, help='folder for efficiency.{csv,md} and the plots (default: %(default)s)')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--dataset', action='append', metavar='NAME',
                    help='only these datasets (exact names as in the tables, or globs like "cwru*"); repeatable')
    ap.add_argument('--mirror', action='append', default=None,
                    help='folders holding external checkpoints as <owner>/<file> (default: $QZOO_MIRROR and the '
                         "checkout's ../shared/checkpoints when they exist)")
    ap.add_argument('--no-cache', action='store_true',
                    help='score every checkpoint again instead of reading $QZOO_CACHE/eval (the entries are rewritten)')
    ap.add_argument('--bootstrap', type=int, default=stats.REPLICATES, metavar='R',
                    help='bootstrap replicates (default: %(default)s)')
    ap.add_argument('--seed', type=int, default=0, help='bootstrap seed (default: %(default)s)')
    ap.add_argument('--readme', metavar='PATH',
                    help=f'also rewrite the summary between {BEGIN} and {END} in this file (all datasets only)')
    return ap


def _mirrors(given: Optional[List[str]]) -> List[Path]:
    default = [os.environ.get('QZOO_MIRROR', ''), Path(__file__).resolve().parents[2] / 'shared' / 'checkpoints']
    return [Path(m) for m in (given or default) if m and Path(m).is_dir()]


def _write(tables: List[Dict[str, Any]], out: Path, a, readme_text: Optional[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for t in tables:
        plot(t, out / f"pareto-{t['dataset']}.png")
    write_csv(tables, out / 'efficiency.csv')
    atomic_write_text(out / 'efficiency.md', markdown(tables, a.bootstrap, a.seed))
    if readme_text is not None:
        atomic_write_text(a.readme, replace_block(readme_text, readme_block(tables, a.bootstrap), a.readme))


def main(argv: Optional[Sequence[str]] = None, default_out: str = 'results') -> int:
    from .weights import all_weights
    ap = _parser(default_out)
    a = ap.parse_args(argv)
    if a.bootstrap < 100:
        ap.error(f'--bootstrap must be at least 100 replicates for a 95% interval, got {a.bootstrap}')
    records = all_weights()
    valid = sorted({w.dataset for w in records.values()} | set(EXTERNAL_DATA))
    datasets = _select(ap, a.dataset, valid)
    readme_text = None
    if a.readme:
        if datasets is not None:
            ap.error('--readme summarises every dataset: drop --dataset (or --readme)')
        try:
            readme_text = Path(a.readme).read_text(encoding='utf-8')
            replace_block(readme_text, '', a.readme)
        except (OSError, ValueError) as e:
            ap.error(f'--readme {a.readme}: {e}')

    try:
        a.device = str(device_of(a.device, '--device'))
    except ValueError as e:
        ap.error(str(e))
    try:
        return _run(a, records, datasets, readme_text)
    except (CheckpointError, ExternalCheckpointError, ValueError, TypeError, OSError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _run(a, records, datasets: Optional[List[str]], readme_text: Optional[str], log=_log) -> int:
    """``qzoo eval`` after its arguments are checked: score, bootstrap, write."""
    t0 = time.time()
    jobs = plan(records, datasets, _mirrors(a.mirror), log)
    cache = EvalCache(refresh=a.no_cache)
    by_dataset: Dict[str, List[Job]] = defaultdict(list)
    for j in jobs:
        by_dataset[j.dataset].append(j)
    step = {d: 1.0 + len(js) * a.bootstrap / 20000 for d, js in by_dataset.items()}  # bootstrap + plot, s
    bar = run_jobs(jobs, a.device, cache, log, sum(_ms(v) for v in step.values()))
    tables = []
    for dataset in sorted(by_dataset):
        bar.set_description_str(f'bootstrap {dataset} ')
        tables.append(table_for(dataset, by_dataset[dataset], a.bootstrap, a.seed))
        bar.update(_ms(step[dataset]))
    bar.close()
    _write(tables, Path(a.out), a, readme_text)
    log(f'scored {len(jobs)} evaluations ({cache.hits} from the cache {cache.root}, {cache.misses} scored); '
        f'wrote {Path(a.out) / "efficiency.csv"}, {Path(a.out) / "efficiency.md"} and {len(tables)} plot(s)'
        + (f', and the summary in {a.readme}' if a.readme else '') + f' in {time.time() - t0:.0f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
