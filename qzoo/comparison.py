"""Bring your own model: ``qzoo compare WEIGHTS... [--dataset NAME] [--axis params|macs] [--plot FILE.png]``
and :func:`compare` put any checkpoint on the zoo's curves.

WEIGHTS is anything ``qzoo validate --weights`` takes: a run folder of ``qzoo train``, a folder or
``.safetensors`` file written by :func:`qzoo.hub.save_pretrained`, ``hf-hub:org/name``, an https URL,
a published or an external name. Each model is scored on the test split of the dataset with the data
settings it was trained with (a published record or a run folder's ``config.json``, see
:func:`qzoo.evaluation.training_data`; or ``--data``/``--data-arg``; weights that record none are
scored with the zoo's settings for ``--dataset``), through the evaluation cache, as are the zoo's
checkpoints of that dataset (the cache is filled on first use).

The model is then read against the dataset's published **conventional** frontier exactly as ``make
eval`` reads a quadratic group (:func:`qzoo.curves.table_for`: the same paired resamples of the test
examples, the same seed resampling of the zoo's groups, the same verdict rule): its test metric with a
95% interval, the parameters saved at equal metric, 1 - p / p_C(a), and the gain at equal parameters,
a - a_C(p), each with its interval and verdict; ``axis='macs'`` reads the frontier of metric against
log-MACs instead. A model brought here is one seed: its interval covers test-set sampling only, so no
verdict that rests on it is established (the one-seed rule). A conventional model is placed on the
same curve, and its "saved" is its distance to the frontier (negative: the zoo's conventional models
reach its metric with less).
"""
from __future__ import annotations

import argparse
import difflib
import json
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from . import stats
from .curves import AXES, Job, _LABEL, _ci, _m, _ms, _pct, _verdict_cell, plan, plot as plot_table, run_jobs, \
    table_for
from .errors import CheckpointError
from .evaluation import DataMismatchError, EvalCache, TrainedOn, data_settings, load_split, parse_data_args, \
    training_data

__all__ = ['compare', 'Comparison', 'ModelComparison', 'CurvePoint', 'datasets_with_curves', 'main']


# ---- the result ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CurvePoint:
    """A group of the zoo's conventional frontier: its mean over seeds with its 95% interval."""
    group: str
    model: str
    params: int
    macs: int
    seeds: int
    metric: stats.Interval


@dataclass(frozen=True)
class ModelComparison:
    """One model read against the conventional frontier on the comparison's axis. ``saved`` is
    1 - x / x_C(a) (x: parameters or MACs; x_C(a) is ``curve_at_equal_metric``), ``gain`` is
    a - a_C(x) in metric units (positive: better, also for MSE); each with its interval (point None
    where undefined) and verdict. ``seeds`` is 1: the interval covers test-set sampling only."""
    weights: str
    label: str
    architecture: str
    neuron: str
    params: int
    macs: int
    data: str                     #: the data settings it was scored with, and where they came from
    metric: stats.Interval
    curve_at_equal_metric: Optional[float]
    saved: stats.Interval
    saved_verdict: stats.Verdict
    gain: stats.Interval
    gain_verdict: stats.Verdict
    note: str
    cached: bool
    in_curve: Optional[str] = None  #: the curve's group this published checkpoint is a seed of, if it is one
    seeds: int = 1

    @property
    def quadratic(self) -> bool:
        return self.neuron != 'linear'


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare` returns: the dataset, the axis, the zoo's conventional frontier and each
    model's place against it. ``str()`` is the text ``qzoo compare`` prints; :meth:`plot` draws the
    dataset's Pareto plot with the models highlighted."""
    dataset: str
    title: str
    metric: str
    higher: bool
    axis: str
    n_test: int
    design: str
    replicates: int
    seed: int
    curve: Tuple[CurvePoint, ...]
    models: Tuple[ModelComparison, ...]
    table: Dict[str, Any] = field(repr=False, compare=False)   #: the full table (:func:`qzoo.curves.table_for`)

    def text(self) -> str:
        return '\n'.join(_intro(self) + [line for m in self.models for line in [''] + _model_lines(self, m)]) + '\n'

    def __str__(self) -> str:
        return self.text()

    def plot(self, path: Union[str, Path]) -> Path:
        """Write the dataset's Pareto plot on the comparison's axis, the models highlighted and labelled."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        plot_table(self.table, path, self.axis)
        return path


# ---- text ----------------------------------------------------------------------------------------
def _intro(c: Comparison) -> List[str]:
    ax, label = AXES[c.axis], _LABEL.get(c.metric, c.metric)
    xs = [getattr(p, c.axis) for p in c.curve]
    seeds = sorted({p.seeds for p in c.curve})
    seeds_s = f"{seeds[0]}{'' if len(seeds) == 1 else f'–{seeds[-1]}'} seed{'s' if seeds[-1] > 1 else ''} each"
    paragraph = (f'{c.title} (`{c.dataset}`): test {label} on {c.n_test:,} examples, against the zoo\'s '
                 f'conventional frontier of {label} against log-{ax.words} ({len(c.curve)} published groups, '
                 f'{min(xs):,}–{max(xs):,} {ax.short}, {seeds_s}). 95% paired bootstrap intervals, {c.replicates} '
                 f"replicates, seed {c.seed} ({c.design}; the same draws for the zoo's models). Each model here is "
                 f'one seed: its interval covers test-set sampling only, and no verdict that rests on one seed is '
                 f'established.')
    return textwrap.wrap(paragraph, 100, break_on_hyphens=False)


def _model_lines(c: Comparison, m: ModelComparison) -> List[str]:
    ax, label, metric = AXES[c.axis], _LABEL.get(c.metric, c.metric), c.metric
    kind = f'quadratic ({m.neuron})' if m.quadratic else 'conventional'
    lines = [f'{m.label}: {m.architecture}, {kind}, {m.params:,} params, {m.macs:,} MACs, one seed']
    if not m.quadratic:
        lines.append(f'  a conventional model: it is placed on the conventional curve, and "{ax.short} saved" is '
                     f'its distance to the frontier (negative: the zoo\'s conventional models reach its {label} '
                     f'with fewer {ax.words})')
    if m.in_curve:
        lines.append(f"  a seed of the curve's own group {m.in_curve}: the frontier it is read against includes it")
    cells = [('scored on', m.data),
             (f'test {label}', f'{_m(m.metric.point, metric)}{_ci(m.metric.lo, m.metric.hi, lambda v: _m(v, metric))}'),
             (f'{ax.short} saved at equal {label}',
              _verdict_cell(m.saved.point, m.saved.lo, m.saved.hi, _pct, m.saved_verdict)),
             (f'gain at equal {ax.short}', _verdict_cell(m.gain.point, m.gain.lo, m.gain.hi,
                                                         lambda v: _m(v, metric, signed=True), m.gain_verdict))]
    width = max(len(k) for k, _ in cells)
    lines += [f'  {k + ":":{width + 1}} {v.replace("**", "")}' for k, v in cells]
    return lines + ([f'  note: {m.note}'] if m.note else [])


# ---- where the zoo has curves --------------------------------------------------------------------
def datasets_with_curves(records: Optional[Mapping[str, Any]] = None) -> List[str]:
    """The datasets (as the tables name them) with at least one published conventional checkpoint."""
    if records is None:
        from .weights import all_weights
        records = all_weights()
    return sorted({w.dataset for w in records.values() if w.neuron == 'linear'})


def _check_curve(dataset: str, curves: List[str], why: str = '') -> None:
    if dataset in curves:
        return
    close = [c for c in curves if c.startswith(dataset)] or difflib.get_close_matches(dataset, curves, n=2,
                                                                                    cutoff=0.8)
    raise ValueError(f'{why}the zoo has no published conventional curve for dataset {dataset!r}'
                     + (f"; did you mean {' or '.join(close)}?" if close else '.')
                     + f" Datasets with one: {', '.join(curves)}. Fix: --dataset NAME (one of those), or --data and "
                       f'--data-arg for the data settings that give one of them')


def _zoo_data(records: Mapping[str, Any], dataset: str) -> Tuple[str, Dict[str, Any]]:
    """The data settings the zoo's checkpoints of ``dataset`` were scored with (its first conventional one's)."""
    w = next(w for _, w in sorted(records.items()) if w.dataset == dataset and w.neuron == 'linear')
    return w.data_spec['name'], dict(w.data_spec.get('args') or {})


@dataclass
class _User:
    """A model brought to the comparison, before scoring: its job and what it records about its training."""
    job: Job
    how: str
    trained: Optional[TrainedOn]


def _user(spec: str, dataset: Optional[str], data: Optional[str], data_args: Mapping[str, Any],
          records: Mapping[str, Any], curves: List[str]) -> _User:
    """The data settings to score ``spec`` with (see the module doc) and its test split, loaded."""
    trained = training_data(spec)
    if data is None and trained is None:
        if dataset is None:
            raise ValueError(f'{spec} does not record the data it was trained on (it is not a published checkpoint '
                             f'or a run folder of qzoo train): name the dataset to compare it on, --dataset NAME '
                             f"(datasets with a published conventional curve: {', '.join(curves)}), or --data NAME "
                             f'[--data-arg KEY=VALUE ...]')
        name, zoo_args = _zoo_data(records, dataset)
        args, how = dict(zoo_args, **data_args), f"the zoo's data settings for {dataset}"
    else:
        name, args, how = data_settings(spec, data, data_args)
    ds, _ = load_split(name, args)
    job = Job(spec, '', name, args, 'main', records.get(spec), family='user')
    job.ds = ds
    return _User(job, how, trained)


def _labels(specs: List[str]) -> List[str]:
    """Short unique names for the models: a published name as it is, a path's last part, else the spec."""
    short = [s if '://' in s or s.startswith('hf-hub:') else (Path(s).name or s) for s in specs]
    return [sh if short.count(sh) == 1 else s for s, sh in zip(specs, short)]


def _check_test_set(u: _User, ref: Job, dataset: str, curves: List[str]) -> None:
    """Refuse a model of another task than the dataset's, and one whose data settings give another test
    set than the zoo's models of ``dataset`` were scored on (the comparison pairs them example by example)."""
    ref_ds, ref_digest = load_split(ref.data, ref.args)
    ds, digest = load_split(u.job.data, u.job.args)
    task = (u.trained.task if u.trained is not None else None) or ds.task
    if task != ref_ds.task:
        where = f' (trained on {u.trained.dataset})' if u.trained is not None and u.trained.dataset else ''
        raise DataMismatchError(f'{u.job.spec} is a {task} model{where}, but {dataset} is a {ref_ds.task} dataset: '
                                f'the model cannot be placed on its curve. Fix: compare it on a {task} dataset; '
                                f"datasets with a published conventional curve: {', '.join(curves)}")
    if digest == ref_digest:
        return
    settings = f"{u.job.data} {json.dumps(u.job.args, sort_keys=True)}"
    fix = (f'--dataset {ds.name}' if ds.name in curves else
           f"--data {ref.data}" + ''.join(f' --data-arg {k}={json.dumps(v)}' for k, v in sorted(ref.args.items())))
    raise DataMismatchError(
        f"{u.job.spec} would be scored on the test set of {ds.name} ({len(ds.test):,} examples; data settings "
        f"{settings}, from {u.how}), not on the one the zoo's models of {dataset} were scored on ({len(ref_ds.test):,} "
        f'examples; {ref.data} {json.dumps(ref.args, sort_keys=True)}): the comparison pairs the models example by '
        f'example, so they must share the test set. Fix: {fix}')


# ---- the comparison ------------------------------------------------------------------------------
def _prepare(specs: List[str], dataset: Optional[str], data: Optional[str], data_args: Mapping[str, Any],
             with_quadratic: bool) -> Tuple[str, List[_User], List[Job]]:
    """(dataset, the user's models, the zoo's jobs), every input checked before anything is scored."""
    from .weights import all_weights
    records = all_weights()
    curves = datasets_with_curves(records)
    if dataset is not None:
        _check_curve(dataset, curves)
    users = [_user(s, dataset, data, data_args, records, curves) for s in specs]
    if dataset is None:
        dataset = users[0].job.ds.name
        _check_curve(dataset, curves, f'{users[0].job.spec} was trained on {dataset} ({users[0].how}), and ')
    zoo = [j for j in plan(records, [dataset], (), lambda msg: None) if j.role == 'main' and j.record is not None
           and (with_quadratic or j.record.neuron == 'linear')]
    for u, label in zip(users, _labels(specs)):
        _check_test_set(u, zoo[0], dataset, curves)
        u.job.dataset, u.job.group = dataset, label
    return dataset, users, zoo


def _interval(r: Mapping[str, Any], point: str, prefix: str) -> stats.Interval:
    return stats.Interval(r[point], r[f'{prefix}_lo'], r[f'{prefix}_hi'], r.get(f'{prefix}_defined', 1.0))


def _model_result(u: _User, r: Mapping[str, Any], axis: str, curve: Sequence[CurvePoint]) -> ModelComparison:
    ax = AXES[axis]
    rec = u.job.record
    in_curve = rec.group if rec is not None and rec.group in {p.group for p in curve} else None
    settings = f"{u.job.data} {json.dumps(u.job.args, sort_keys=True)} ({u.how})"
    return ModelComparison(
        weights=u.job.spec, label=r['group'], architecture=r['model'], neuron=r['neuron'], params=r['params'],
        macs=r['macs'], data=settings, metric=_interval(r, 'mean', 'mean'), curve_at_equal_metric=r[ax.at_equal],
        saved=_interval(r, ax.saved, ax.saved), saved_verdict=r[ax.verdicts[0]],
        gain=_interval(r, ax.gain, ax.gain_ci), gain_verdict=r[ax.verdicts[1]], note=r[ax.note],
        cached=u.job.result.cached, in_curve=in_curve)


def _result(t: Dict[str, Any], users: List[_User], axis: str, seed: int) -> Comparison:
    rows = {r['group']: r for r in t['rows']}
    curve = tuple(CurvePoint(r['group'], r['model'], r['params'], r['macs'], r['n_seeds'],
                             _interval(r, 'mean', 'mean')) for r in t['rows'] if r['family'] == 'conventional')
    return Comparison(t['dataset'], t['title'], t['metric'], t['higher'], axis, t['n_test'], t['design'],
                      t['replicates'], seed, curve,
                      tuple(_model_result(u, rows[u.job.group], axis, curve) for u in users), t)


def compare(weights: Union[str, Path, Sequence[Union[str, Path]]], dataset: Optional[str] = None, *,
            axis: str = 'params', data: Optional[str] = None, data_args: Optional[Mapping[str, Any]] = None,
            plot: Union[str, Path, None] = None, device: str = 'cpu', cache: Union[bool, EvalCache] = True,
            replicates: int = stats.REPLICATES, seed: int = 0, progress: bool = True) -> Comparison:
    """Place ``weights`` (one spec or several, see the module doc) on the zoo's conventional curve of
    ``dataset`` (default: the dataset the first model was trained on) by ``axis`` ('params' or 'macs');
    ``plot`` also writes the Pareto plot with the models highlighted. ``cache``: True for the evaluation
    cache ($QZOO_CACHE/eval), False for none, or an :class:`~qzoo.evaluation.EvalCache`. Raises
    ValueError (an unknown axis or a dataset without a curve), :class:`~qzoo.evaluation.DataMismatchError`
    (a model that does not fit the dataset) or the loader's :class:`~qzoo.errors.CheckpointError`."""
    specs = list(dict.fromkeys(str(w) for w in ([weights] if isinstance(weights, (str, Path)) else weights)))
    if not specs:
        raise ValueError('compare needs at least one weights spec (a run folder, a .safetensors file, a name, ...)')
    if axis not in AXES:
        raise ValueError(f"axis must be one of {', '.join(AXES)} (parameters or multiply-accumulates), got {axis!r}")
    if replicates < 100:
        raise ValueError(f'replicates must be at least 100 for a 95% interval, got {replicates}')
    if plot is not None and Path(plot).suffix.lower() != '.png':
        raise ValueError(f'plot writes a PNG: give a file name ending in .png, got {str(plot)!r}')
    dataset, users, zoo = _prepare(specs, dataset, data, dict(data_args or {}), plot is not None)
    store = EvalCache() if cache is True else (cache or None)
    step = _ms(1.0 + (len(users) + len(zoo)) * replicates / 20000)
    bar = run_jobs([u.job for u in users] + zoo, device, store, lambda msg: print(msg, file=sys.stderr), step,
                   progress)
    bar.set_description_str(f'bootstrap {dataset} ')
    t = table_for(dataset, [u.job for u in users] + zoo, replicates, seed)
    bar.update(step)
    bar.close()
    result = _result(t, users, axis, seed)
    if plot is not None:
        result.plot(plot)
    return result


# ---- the command ---------------------------------------------------------------------------------
COMPARE_HELP = """Put your own weights on the zoo's curves: each model's test metric with a 95% interval, and its
place against the dataset's published conventional frontier (parameters saved at equal metric, gain at
equal parameters; --axis macs: by multiply-accumulates), with the paired bootstrap intervals and the
verdict rule of `make eval`. A model brought here is one seed, so no verdict on it is established.

    {prog} runs/qcnn-w16-s1                                   # a run folder: its own dataset
    {prog} runs/my-resnet --dataset cifar10-jpeg75 --plot mine.png
    {prog} my.safetensors --dataset cwru-0hp-snr-6db-tr256-ev256 --axis macs
    {prog} qresnet20_w8.cifar10-jpeg75-e40-cpu-s0             # a published checkpoint

WEIGHTS: a run folder of `qzoo train`, a folder or .safetensors file saved by qzoo.hub.save_pretrained,
hf-hub:org/name, an https URL, a published or an external name. The zoo's checkpoints and yours are
scored through the evaluation cache ($QZOO_CACHE/eval), filled on first use.
"""


def _parser(prog: Optional[str]) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.description = COMPARE_HELP.replace('{prog}', ap.prog)
    ap.add_argument('weights', nargs='+', metavar='WEIGHTS', help='the models to compare')
    ap.add_argument('--dataset', metavar='NAME', help="the zoo's dataset, as the tables name it (default: the one "
                                                      'the first model was trained on)')
    ap.add_argument('--axis', choices=tuple(AXES), default='params',
                    help='the cost axis of the frontier: parameters or MACs per example (default: %(default)s)')
    ap.add_argument('--plot', metavar='FILE.png', help='also write the Pareto plot with your models highlighted')
    ap.add_argument('--data', metavar='NAME', help='score on this qzoo.data dataset instead of the recorded one')
    ap.add_argument('--data-arg', action='append', default=[], metavar='KEY=VALUE',
                    help='a dataset option over the recorded (or --data) settings; repeatable')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--no-cache', action='store_true', help='score again instead of reading $QZOO_CACHE/eval')
    ap.add_argument('--bootstrap', type=int, default=stats.REPLICATES, metavar='R',
                    help='bootstrap replicates (default: %(default)s)')
    ap.add_argument('--seed', type=int, default=0, help='bootstrap seed (default: %(default)s)')
    return ap


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """``qzoo compare``: print the comparison (see :data:`COMPARE_HELP`); 2 with ``error: ...`` on bad input."""
    from .external import ExternalCheckpointError
    from .bounds import device_of
    from .errors import NotARegularFileError
    from .fileio import check_target
    ap = _parser(prog)
    a = ap.parse_args(argv)
    try:
        a.device = str(device_of(a.device, '--device'))
    except ValueError as e:
        ap.error(str(e))
    if a.plot:
        try:  # an unusable --plot path is refused before anything is scored
            check_target(a.plot)
        except NotARegularFileError as e:
            print(f'error: --plot {a.plot}: {e}', file=sys.stderr)
            return 2
    t0 = time.time()
    try:
        c = compare(a.weights, a.dataset, axis=a.axis, data=a.data, data_args=parse_data_args(a.data_arg),
                    plot=a.plot, device=a.device, cache=EvalCache(refresh=a.no_cache), replicates=a.bootstrap,
                    seed=a.seed)
    except (ValueError, TypeError, FileNotFoundError, CheckpointError, ExternalCheckpointError, OSError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(c.text(), end='')
    print(f'compared {len(c.models)} model(s) on {c.dataset} in {time.time() - t0:.0f} s'
          + (f'; wrote {a.plot}' if a.plot else ''), file=sys.stderr)
    return 0
