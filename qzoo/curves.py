"""The zoo's curves, shared by ``make eval`` (:mod:`qzoo.efficiency`) and ``qzoo compare``
(:mod:`qzoo.comparison`): published checkpoints scored on a dataset's test split with per-example
scores, grouped by experiment, every group's mean with a bootstrap interval, the conventional
frontier, and what each compared group saves against it, by parameters and by compute (MACs).

A *job* (:class:`Job`) is one checkpoint scored on one data setting (:func:`plan` lists those of
the published checkpoints; :func:`run_jobs` scores them through the evaluation cache). Seeds of
one experiment form a group (mean over seeds). The **conventional frontier** of a table is the
Pareto curve of its conventional groups' metric against the logarithm of their cost, on one of
two axes (:data:`AXES`): parameters, or multiply-accumulates per example (MACs, which is what a
quadratic layer costs more of per parameter). Each *compared* group (a quadratic one, or a model
brought to ``qzoo compare``) gets, on both axes, the **cost saved at equal metric**,
1 - x_Q / x_C(a_Q), with x_C read off the frontier, and the **gain at equal cost**, a_Q - a_C(x_Q).

Every number gets a 95% bootstrap interval (:mod:`qzoo.stats`): each replicate resamples the test
examples (one draw per dataset, shared by all its models: paired) and each group's seeds, then
recomputes every group mean, the frontier and every derived number. :func:`_qualify` is the
verdict rule: a derived number is **not established** when its interval contains 0, when it is
undefined in more than 10% of the replicates, or when a group it rests on has one seed.
:func:`figure` draws a table's Pareto plot on either axis.
"""
from __future__ import annotations

import io
import math
import os
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import stats
from .evaluation import EvalCache, Evaluation, Scores, compare_to_curve, evaluate_spec, external_available, frontier, \
    load_split
from .fileio import atomic_write_bytes
from .metrics import Metrics

__all__ = ['Job', 'Axis', 'AXES', 'ONE_SEED', 'EXTERNAL_DATA', 'plan', 'run_jobs', 'table_for', 'headline_pair',
           'design_for', 'human_name', 'condition', 'resampled_metric', 'divergence_note', 'figure', 'plot',
           'plot_label']

EXTERNAL_DATA = {'cifar10-jpeg75': dict(spec={'name': 'cifar10-jpeg75', 'args': {}}, task='classification')}
SECONDARY = {'top1': 'macro_f1', 'iou': 'dice'}
NO_SECONDARY = {'cifar10-jpeg75'}
#: rough CPU throughput used only to weigh the progress bar's steps (multiply-accumulates per second)
_REF_MACS_PER_S = 1.5e10

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
    (``role`` 'main' or 'nonoverlap'). A published checkpoint has its ``record``; ``group`` and
    ``family`` override the group and family it would get from it (:func:`_groups`, :func:`_family`):
    ``qzoo compare`` puts a model of its own in family 'user'."""
    spec: str
    dataset: str
    data: str
    args: Dict[str, Any]
    role: str = 'main'
    record: Any = None
    cost: int = 1   #: estimated milliseconds (weighs the progress bar)
    result: Optional[Evaluation] = None
    ds: Any = None  #: the loaded test data (DataSplits)
    group: Optional[str] = None
    family: Optional[str] = None


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


class _Advance:
    """Moves the bar through one job's estimated cost as its test examples are scored (a forward hook
    reports each batch), so a long scoring shows progress; :meth:`rest` adds what is left."""

    def __init__(self, bar, cost: int, n: int):
        self.bar, self.cost, self.n, self.seen, self.done = bar, cost, max(1, n), 0, 0

    def __call__(self, examples: int) -> None:
        self.seen += examples
        step = min(self.cost, self.cost * self.seen // self.n) - self.done
        if step > 0:
            self.bar.update(step)
            self.done += step

    def rest(self) -> None:
        self.bar.update(self.cost - self.done)


def run_jobs(jobs: List[Job], device: str, cache: Optional[EvalCache], log, extra_ms: int,
             progress: bool = True) -> Any:
    """Score every job (a tqdm bar over the whole run, weighted by estimated time and advanced batch by
    batch, with ``extra_ms`` for the steps that follow; ``progress=False`` shows none); returns the
    open bar so the caller advances it through those."""
    from tqdm import tqdm
    for j in jobs:
        j.cost = _ms(_estimate(j, cache, device))
    bar = tqdm(total=sum(j.cost for j in jobs) + extra_ms, unit='ms', file=sys.stderr, disable=not progress,
               bar_format='{desc}{percentage:3.0f}%|{bar}| [{elapsed}<{remaining}] {postfix}', mininterval=1.0)
    try:
        for j in jobs:
            bar.set_description_str(f'{j.spec}' + (' (stride 2048)' if j.role == 'nonoverlap' else '') + ' ')
            advance = _Advance(bar, j.cost, len(j.ds.test))
            j.result = evaluate_spec(j.spec, j.data, j.args, 'test', device, cache, use_record=False,
                                     progress=advance)
            _check_published(j, log)
            advance.rest()
    except BaseException:
        bar.close()
        raise
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
    if job.family is not None:
        return job.family
    if job.record is None:
        return 'external'
    return 'conventional' if job.record.neuron == 'linear' else 'quadratic'


def _groups(jobs: List[Job]) -> Dict[str, List[Job]]:
    """Group key -> its jobs, seeds ascending: a published experiment ('<arch>.<experiment>'), an
    external checkpoint on its own, or the job's own ``group``."""
    out: Dict[str, List[Job]] = defaultdict(list)
    for j in jobs:
        out[j.group or (j.record.group if j.record is not None else j.spec)].append(j)
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
                     key: str) -> Dict[int, Dict[str, np.ndarray]]:
    """id(job) -> metric -> (replicates,) values on the resampled test examples (one draw per
    replicate, the same for every job: paired). Keyed by the job, not its spec: ``qzoo compare`` may
    score a published checkpoint both as the user's model and as a member of its group."""
    for j in jobs:
        if j.result.scores.n != design.n:
            raise ValueError(f'{j.spec} was scored on {j.result.scores.n} test examples, the {key} test set has '
                             f'{design.n}: the checkpoints of one table must share their test set')
    parts: Dict[int, Dict[str, List[np.ndarray]]] = {id(j): {n: [] for n in names} for j in jobs}
    for idx in stats.index_chunks(design, replicates, seed, key):
        for j in jobs:
            for n in names:
                parts[id(j)][n].append(resampled_metric(j.result.scores, n, idx))
    return {s: {n: np.concatenate(v) for n, v in d.items()} for s, d in parts.items()}


def _summarise(groups: Dict[str, List[Job]], reps, name: str, replicates: int, seed: int, dataset: str):
    """group -> (point mean over seeds, std over seeds, (replicates,) resampled means)."""
    out = {}
    for g, js in groups.items():
        vals = [float(j.result.scores.metric(name)[0]) for j in js]
        per_seed = np.stack([reps[id(j)][name] for j in js], axis=1)
        draws = stats.seed_draws(len(js), replicates, seed, f'{dataset}/{g}')
        out[g] = (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0,
                  stats.mean_over_seeds(per_seed, draws))
    return out


@dataclass(frozen=True)
class Axis:
    """A cost axis of the curves: the group info's ``key`` (parameters or MACs per example), its words,
    and the row keys of what a compared group saves on it (the parameter axis keeps the keys the
    tables had before there were two axes)."""
    key: str                    #: 'params' | 'macs'
    short: str                  #: 'params' | 'MACs'
    words: str                  #: 'parameters' | 'MACs per example'
    saved: str                  #: row key of 1 - x_Q / x_C(a_Q); '<saved>_lo', '_hi', '_defined', '_verdict'
    at_equal: str               #: row key of x_C(a_Q)
    gain: str                   #: row key of a_Q - a_C(x_Q)
    gain_ci: str                #: prefix of the gain's '_lo', '_hi', '_defined', '_verdict'
    verdicts: Tuple[str, str]   #: row keys of the saving's and the gain's :class:`~qzoo.stats.Verdict`
    note: str                   #: row key of the note on undefined numbers


AXES = {'params': Axis('params', 'params', 'parameters', 'params_saved', 'conv_params_at_equal_metric',
                       'metric_gain_at_equal_params', 'gain', ('_saved', '_gain'), 'note'),
        'macs': Axis('macs', 'MACs', 'MACs per example', 'macs_saved', 'conv_macs_at_equal_metric',
                     'metric_gain_at_equal_macs', 'macs_gain', ('_macs_saved', '_macs_gain'), 'macs_note')}
#: the families whose groups are read against the conventional frontier ('user': a model brought to qzoo compare)
COMPARED = ('quadratic', 'user')


def _derived(info: Dict[str, Dict[str, Any]], means: Dict[str, np.ndarray], higher: bool, axis: str = 'params'):
    """Per compared group, over replicates: (saved, gain, side) arrays on ``axis`` ('params' or
    'macs'); NaN where undefined; where the saving is undefined, side is +1 when a_Q is better than
    every conventional group and -1 when it is below the start of the conventional curve (0 where the
    saving is defined)."""
    conv = [g for g, d in info.items() if d['family'] == 'conventional']
    quad = [g for g, d in info.items() if d['family'] in COMPARED]
    reps = len(next(iter(means.values())))
    out = {g: (np.full(reps, np.nan), np.full(reps, np.nan), np.zeros(reps)) for g in quad}
    if not conv:
        return out
    for r in range(reps):
        pts = [(info[g][axis], float(means[g][r])) for g in conv]
        best = max(m for _, m in pts) if higher else min(m for _, m in pts)
        for g in quad:
            a = float(means[g][r])
            _, saved, gain = compare_to_curve(pts, info[g][axis], a, higher)
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


def _point_derived(info, point_means, higher, axis: str = 'params'):
    conv = [(d[axis], point_means[g]) for g, d in info.items() if d['family'] == 'conventional']
    return {g: compare_to_curve(conv, d[axis], point_means[g], higher) if conv else (None, None, None)
            for g, d in info.items() if d['family'] in COMPARED}


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
    """Compared group ``g`` and every conventional group of the frontier it is read against."""
    return [g] + [k for k, d in info.items() if d['family'] == 'conventional']


def _outside_notes(g: str, info, metric: str, point_mean: float, higher: bool, axis: Axis, saved_undefined: bool,
                   gain_undefined: bool) -> str:
    """Why a compared group's point estimates are undefined: its metric outside the conventional curve,
    its cost outside the conventional models' range."""
    conv = sorted((d[axis.key], d['mean']) for d in info.values() if d['family'] == 'conventional')
    notes = []
    if saved_undefined and conv:
        curve = frontier(conv, higher)
        if point_mean > curve[-1][1] if higher else point_mean < curve[-1][1]:
            notes.append(f'{metric} {point_mean:.4g} is better than every conventional model (best {curve[-1][1]:.4g})')
        else:
            notes.append(f'{metric} {point_mean:.4g} is worse than where the conventional curve starts '
                         f'({curve[0][1]:.4g} at {curve[0][0]:,} {axis.short})')
    if gain_undefined and conv:
        notes.append(f"{info[g][axis.key]:,} {axis.short} is outside the conventional models' range "
                     f"({conv[0][0]:,}..{conv[-1][0]:,})")
    return '; '.join(notes)


def _compared_fields(g: str, ctx: Dict[str, Any], point_mean: float, axis: Axis) -> Dict[str, Any]:
    """A compared group's saving and gain on ``axis`` against the conventional frontier: point estimates,
    intervals, verdicts (:func:`_qualify`) and a note where they are undefined."""
    info = ctx['info']
    pc, saved, gain = ctx['pder'][axis.key][g]
    saved_r, gain_r, side = ctx['der'][axis.key][g]
    s_iv, g_iv = stats.interval(saved, saved_r), stats.interval(gain, gain_r)
    s_v = _qualify(stats.judge(s_iv, why_undefined=_why(side)), info, _with_frontier(info, g))
    g_v = _qualify(stats.judge(g_iv, why_undefined=f'{axis.words} outside the conventional range'), info,
                   _with_frontier(info, g))
    note = _outside_notes(g, info, ctx['metric'], point_mean, ctx['higher'], axis, saved is None, gain is None)
    d = {axis.at_equal: pc, axis.saved: saved, axis.gain: gain, axis.note: note, axis.verdicts[0]: s_v,
         axis.verdicts[1]: g_v}
    d.update(_interval_fields(axis.saved, s_iv, s_v))
    d.update(_interval_fields(axis.gain_ci, g_iv, g_v))
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
    non-overlapping CWRU accuracy's), and for a compared group the derived numbers on both axes."""
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
    if d['family'] in COMPARED:
        for axis in AXES.values():
            row.update(_compared_fields(g, ctx, mean, axis))
    row['diverged'], why = divergence_note(js)
    for axis in AXES.values():  # every table that reads the group says when a seed of it diverged
        if axis.note in row:  # 'note' always; 'macs_note' for the compared groups
            row[axis.note] = '; '.join(filter(None, [why, row.get(axis.note, '')]))
    return row


def table_for(dataset: str, jobs: List[Job], replicates: int, seed: int) -> Dict[str, Any]:
    """The table of one dataset: every group's mean with its interval, and for compared groups the
    parameters and MACs saved and the gains with intervals and verdicts (see the module doc)."""
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
    der = {a: _derived(info, {g: summ[metric][g][2] for g in groups}, higher, a) for a in AXES}
    pder = {a: _point_derived(info, {g: summ[metric][g][0] for g in groups}, higher, a) for a in AXES}
    non = _nonoverlap(dataset, [j for j in jobs if j.role == 'nonoverlap'], metric, replicates, seed)
    ctx = dict(dataset=dataset, ds=ds, metric=metric, secondary=secondary, higher=higher, info=info, der=der,
               pder=pder, non=non)
    rows = [_group_row(g, js, summ, ctx) for g, js in groups.items()]
    order = {'conventional': 0, 'quadratic': 1, 'external': 2, 'user': 3}
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
_LABEL = {'top1': 'top-1 accuracy', 'iou': 'IoU', 'mse': 'MSE'}


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
            (-5, 14, 'right'), (5, -20, 'left'), (-5, -20, 'right'), (8, -2, 'left'), (-8, -2, 'right'),
            (5, 24, 'left'), (-5, 24, 'right'), (5, -30, 'left'), (-5, -30, 'right'))


def _annotate(fig, ax, labels: List[Tuple[str, float, float, Any]],
              bars: Sequence[Tuple[float, float, float]] = ()) -> None:
    """Label points with their architecture, each at the first offset (right/left, above/below)
    where its text overlaps no label placed before, no point's marker or interval bar (``bars``:
    (x, lo, hi) in data units) and stays inside the axes, else where it covers least (greedy, in
    order of params, so the result is fixed by the table)."""
    from matplotlib.transforms import Bbox
    fig.canvas.draw()  # the axes' limits are final only after a draw: transData then maps data to pixels
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    placed = []
    legend = ax.get_legend()
    if legend is not None:  # the legend stays where the draw put it ('best' would move it around the labels)
        lb = legend.get_window_extent(renderer)
        legend.set_loc('lower left')
        legend.set_bbox_to_anchor(tuple(ax.transAxes.inverted().transform((lb.x0, lb.y0))), transform=ax.transAxes)
        placed.append(lb)
    for x, lo, hi in bars:  # each marker and its interval bar, in pixels, as an obstacle
        (x0, y0), (x1, y1) = ax.transData.transform([(x, lo), (x, hi)])
        placed.append(Bbox([[x0 - 5, min(y0, y1) - 5], [x1 + 5, max(y0, y1) + 5]]))

    def cost(ext) -> Tuple[bool, float]:  # (outside the axes, pixels² covered of labels, markers and bars)
        inside = box.x0 <= ext.x0 and ext.x1 <= box.x1 and box.y0 <= ext.y0 and ext.y1 <= box.y1
        cover = sum(max(0.0, min(ext.x1, o.x1) - max(ext.x0, o.x0)) * max(0.0, min(ext.y1, o.y1) - max(ext.y0, o.y0))
                    for o in placed)
        return not inside, cover

    for text, x, y, color in sorted(labels, key=lambda v: (v[1], v[2], v[0])):
        best = None  # the first offset that covers nothing; else the one that covers least
        for dx, dy, ha in _OFFSETS:
            t = ax.annotate(text, (x, y), textcoords='offset points', xytext=(dx, dy), ha=ha, fontsize=7, color=color)
            ext = t.get_window_extent(renderer)
            c = cost(ext)
            t.remove()
            if best is None or c < best[0]:
                best = (c, dx, dy, ha, ext)
            if c == (False, 0.0):
                break
        _, dx, dy, ha, ext = best
        ax.annotate(text, (x, y), textcoords='offset points', xytext=(dx, dy), ha=ha, fontsize=7, color=color)
        placed.append(ext)


#: family -> (colour, marker, legend name) of the Pareto plots; 'user': the models brought to qzoo compare
_STYLE = {'conventional': ('tab:blue', 'o', 'conventional'), 'quadratic': ('tab:red', '^', 'quadratic'),
          'external': ('0.45', 'X', 'external hub checkpoint'), 'user': ('black', '*', 'your model, one seed')}


def _draw_family(ax, rs: List[Dict[str, Any]], fam: str, axis: str) -> None:
    """A family's points with their 95% interval bars (a group with a diverged seed hollow; a user's
    model as a large star in front)."""
    color, marker, name = _STYLE[fam]
    for diverged in (False, True):
        part = [r for r in rs if bool(r.get('diverged')) == diverged]
        if not part:
            continue
        x, y = [r[axis] for r in part], [r['mean'] for r in part]
        err = [[r['mean'] - r['mean_lo'] for r in part], [r['mean_hi'] - r['mean'] for r in part]]
        extra = dict(ms=12, zorder=4) if fam == 'user' else dict(ms=7 if diverged else 6)
        ax.errorbar(x, y, yerr=err, fmt=marker, color=color, capsize=3, mfc='white' if diverged else color, mew=1.5,
                    label=name + (', a seed diverged (†)' if diverged else '') + ' (95% CI)', **extra)


def figure(t: Dict[str, Any], axis: str = 'params'):
    """The Pareto plot of a table on ``axis`` ('params' or 'macs'): each group's mean with its 95%
    interval, the frontier of each family through the means, readable log-scale ticks and a human
    title; the models a user brought to ``qzoo compare`` (family 'user') highlighted and labelled."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter
    fig, ax = plt.subplots(figsize=(7.0, 4.6), dpi=120)
    labels: List[Tuple[str, float, float, Any]] = []
    for fam, (color, _, _) in _STYLE.items():
        rs = [r for r in t['rows'] if r['family'] == fam]
        if not rs:
            continue
        _draw_family(ax, rs, fam, axis)
        if fam not in ('external', 'user'):
            curve = frontier([(r[axis], r['mean']) for r in rs], t['higher'])
            ax.plot([p for p, _ in curve], [m for _, m in curve], '-', color=color, alpha=0.5)
        labels += [(plot_label(r, t['rows']), r[axis], r['mean'], color) for r in rs]
    ps = [r[axis] for r in t['rows']]
    ax.set_xscale('log')
    ax.set_xlim(min(ps) / 1.6, max(ps) * 1.6)
    ax.xaxis.set_major_locator(FixedLocator(_log_ticks(min(ps) / 1.6, max(ps) * 1.6)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _short(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(f'{AXES[axis].words} (log scale)')
    ax.set_ylabel(f"test {_LABEL.get(t['metric'], t['metric'])}" + (' (%)' if t['metric'] != 'mse' else ''))
    sub = (f"{t['condition']}; " if t['condition'] else f"{t['n_test']:,} test examples; ") + \
        'mean over seeds with its 95% bootstrap interval'
    ax.set_title(f"{t['title']}\n{sub}", fontsize=9)
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    ends = [(r[axis], *(r['mean'] if r.get(k) is None else r[k] for k in ('mean_lo', 'mean_hi'))) for r in t['rows']]
    _annotate(fig, ax, labels, ends)
    return fig


def plot(t: Dict[str, Any], path: Path, axis: str = 'params') -> None:
    """Write :func:`figure` as a PNG with fixed metadata (byte-identical for identical tables)."""
    import matplotlib.pyplot as plt
    fig = figure(t, axis)
    buf = io.BytesIO()
    fig.savefig(buf, format='png', metadata={'Software': None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_label(r: Dict[str, Any], rows: List[Dict[str, Any]]) -> str:
    """A point's label in a Pareto plot: the model, with what tells its experiment apart from the other groups
    of the same model ('qresnet20_w8 [e40-cpu]'), and a dagger when a seed diverged; an external checkpoint and
    a user's model by their own names."""
    if r['family'] in ('external', 'user'):
        return r['group'] + (' †' if r.get('diverged') else '')
    same = [x for x in rows if x['model'] == r['model'] and x['group'] != r['group']
            and x['family'] not in ('external', 'user')]
    label = r['model']
    if same:
        exp = r['group'].split('.', 1)[1]
        common = os.path.commonprefix([exp] + [x['group'].split('.', 1)[1] for x in same])
        tail = exp[len(common):].strip('-') if len(common) < len(exp) else ''
        label += f" [{tail or exp}]"
    return label + (' †' if r.get('diverged') else '')
