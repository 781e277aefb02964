"""Accuracy per parameter (and per MAC) of the published checkpoints, with bootstrap intervals: qzoo's
main job (``make eval``, ``python -m qzoo.efficiency``, ``eval/efficiency.py``).

For every dataset with published checkpoints (:func:`qzoo.weights.all_weights`), each checkpoint
is scored on its test split with the data settings its card was measured with (its record's
``data_spec``), with per-example scores (:func:`qzoo.evaluation.evaluate_spec`, through the
evaluation cache). CWRU checkpoints are scored a second time on non-overlapping test windows
(``eval_stride`` = the window length). Seeds of one experiment form a group (mean over seeds).
For each quadratic group the job reports the **parameters saved at equal metric**,
1 - p_Q / p_C(a_Q) with p_C read off the conventional groups' metric-vs-log-params frontier, and
the **gain at equal parameters**, a_Q - a_C(p_Q); and the same by compute: **MACs saved at equal
metric** and the gain at equal MACs, against the frontier of metric against log-MACs (a second
table per dataset). External conventional checkpoints (:mod:`qzoo.external`) are scored where
available offline and kept out of the frontier. The tables themselves are computed by
:mod:`qzoo.curves` (shared with ``qzoo compare``); this module writes them out.

Every number gets a 95% bootstrap interval (:mod:`qzoo.stats`): each replicate resamples the
test examples (one draw per dataset, shared by all its models) and each group's seeds, then
recomputes every group mean, the conventional frontier and every derived number. A derived number
whose interval contains 0, or that is undefined in more than 10% of the replicates, or that rests
on a group of one seed, is printed as **not established**.

Writes ``<out>/efficiency.csv``, ``<out>/efficiency.md``, ``<out>/pareto-<dataset>.png`` and, with
``--readme``, the generated block between ``<!-- results:begin -->`` and ``<!-- results:end -->`` and the
architecture table's last column (the names without published weights, :func:`architecture_table`).
"""
from __future__ import annotations

import argparse
import csv
import difflib
import fnmatch
import io
import os
import re
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from . import stats
from .bounds import device_of
from .curves import (AXES, EXTERNAL_DATA, ONE_SEED, Job, _LABEL, _ci, _m, _ms, _pct, _verdict_cell, plan, plot,
                     run_jobs, table_for)
from .errors import CheckpointError, NotARegularFileError
from .evaluation import EvalCache
from .external import ExternalCheckpointError
from .fileio import atomic_write_text, check_target

__all__ = ['main', 'markdown', 'table_markdown', 'write_csv', 'readme_block', 'summary_sentence', 'headline_row',
           'replace_block', 'architecture_table', 'table_names', 'BEGIN', 'END', 'ARCH_BEGIN', 'ARCH_END']

BEGIN, END = '<!-- results:begin -->', '<!-- results:end -->'
#: the README's architecture table, whose last column this job writes
ARCH_BEGIN, ARCH_END = '<!-- architectures:begin -->', '<!-- architectures:end -->'
_MACS = AXES['macs']
CSV_COLUMNS = ['dataset', 'title', 'model', 'group', 'family', 'neuron', 'params', 'macs', 'metric', 'mean', 'mean_lo',
               'mean_hi', 'std', 'n_seeds', 'secondary', 'secondary_mean', 'secondary_lo', 'secondary_hi',
               'secondary_std', 'test_stride', 'nonoverlap_stride', 'nonoverlap_mean', 'nonoverlap_lo',
               'nonoverlap_hi', 'conv_params_at_equal_metric', 'params_saved', 'params_saved_lo', 'params_saved_hi',
               'params_saved_defined', 'params_saved_verdict', 'metric_gain_at_equal_params', 'gain_lo', 'gain_hi',
               'gain_defined', 'gain_verdict', 'conv_macs_at_equal_metric', 'macs_saved', 'macs_saved_lo',
               'macs_saved_hi', 'macs_saved_defined', 'macs_saved_verdict', 'metric_gain_at_equal_macs',
               'macs_gain_lo', 'macs_gain_hi', 'macs_gain_defined', 'macs_gain_verdict', 'external', 'diverged',
               'checkpoints', 'note', 'macs_note']


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
    return out + [''] + macs_markdown(t)


def _per_param(v: float) -> str:
    """MACs per parameter: whole numbers from 10 up, two decimals below (an MLP does fewer MACs than it has
    parameters: biases are parameters that multiply nothing)."""
    return f'{v:,.0f}' if v >= 10 else f'{v:.2f}'


def _macs_cells(r: Dict[str, Any], t: Dict[str, Any]) -> List[str]:
    metric = t['metric']
    cells = [r['group'], r['family'], f"{r['params']:,}", f"{r['macs']:,}", _per_param(r['macs'] / r['params']),
             f"{_m(r['mean'], metric)}{_ci(r.get('mean_lo'), r.get('mean_hi'), lambda v: _m(v, metric))}"]
    if r['family'] == 'quadratic':
        v_saved, v_gain = (r[k] for k in _MACS.verdicts)
        cells.append(_verdict_cell(r[_MACS.saved], r[f'{_MACS.saved}_lo'], r[f'{_MACS.saved}_hi'], _pct, v_saved))
        cells.append(_verdict_cell(r[_MACS.gain], r[f'{_MACS.gain_ci}_lo'], r[f'{_MACS.gain_ci}_hi'],
                                   lambda v: _m(v, metric, signed=True), v_gain))
    else:
        cells += ['–', '–']
    return cells + [r.get(_MACS.note, '')]


def macs_markdown(t: Dict[str, Any]) -> List[str]:
    """The table's groups by compute: MACs per example (and per parameter), and for each quadratic group the
    MACs saved at equal metric and the gain at equal MACs against the frontier of the conventional groups'
    metric against log-MACs (the same resamples as the table above); nothing without a quadratic group."""
    if not any(r['family'] == 'quadratic' for r in t['rows']):
        return []
    metric = t['metric']
    head = ['model', 'family', 'params', 'MACs', 'MACs / param', f'{metric} [95% CI]',
            f'MACs saved at equal {metric} [95% CI]', 'gain at equal MACs [95% CI]', 'note']
    order = {'conventional': 0, 'quadratic': 1}
    rows = sorted((r for r in t['rows'] if r['family'] in order), key=lambda r: (order[r['family']], r['macs']))
    out = [f"### {t['title']} by compute (`{t['dataset']}`, test {metric} against MACs per example)", '',
           '| ' + ' | '.join(head) + ' |',
           '|' + '|'.join('---:' if i in (2, 3, 4) else '---' for i in range(len(head))) + '|']
    return out + ['| ' + ' | '.join(_macs_cells(r, t)) + ' |' for r in rows] + ['']


def markdown(tables: List[Dict[str, Any]], replicates: int, seed: int) -> str:
    out = ['# Accuracy per parameter', '',
           'Generated by `make eval` (`qzoo.efficiency`) from the published checkpoints, each scored on its '
           "dataset's *test* split with the data settings of its card (weights selected on the validation split). "
           'A group is one experiment over its seeds; its value is the mean over seeds.', '',
           '*params saved* = 1 − p_Q / p_C(a_Q), p_C read off the frontier of the conventional groups (metric vs '
           'log-params, linear interpolation): the one definition of "parameters saved" in this repository. '
           '*gain* = a_Q − a_C(p_Q), in metric units (positive: the quadratic model is better, also for MSE).', '',
           '*By compute*: the same with multiply-accumulates per example (MACs, `qzoo.count_macs`, which counts '
           'every term of a quadratic layer) in place of parameters: *MACs saved* = 1 − m_Q / m_C(a_Q), m_C read '
           "off the frontier of the conventional groups' metric against log-MACs, and *gain at equal MACs* = "
           'a_Q − a_C(m_Q). A quadratic layer costs more MACs per parameter than a conventional one, so a model '
           'can save parameters and still cost more compute.', '',
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

def _short_name(r: Dict[str, Any], rows: List[Dict[str, Any]]) -> str:
    """The model's name, or, when two groups of a table share it (e.g. one architecture trained on two devices),
    its group name '<model>.<experiment>'."""
    same = [x for x in rows if x['model'] == r['model']]
    return r['model'] if len(same) == 1 else r['group']


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


def replace_block(text: str, block: str, what: str = 'README.md', begin: str = BEGIN, end: str = END,
                  belongs: str = 'the generated results summary') -> str:
    """``text`` with everything between ``begin`` and ``end`` (:data:`BEGIN`, :data:`END`) replaced by ``block``."""
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ValueError(f'{what} must hold exactly one {begin} followed by one {end} (found {text.count(begin)} and '
                         f'{text.count(end)}); add them where {belongs} belongs')
    a, b = text.index(begin) + len(begin), text.index(end)
    return text[:a] + '\n' + block.rstrip('\n') + '\n' + text[b:]


# ---- the README's architecture table -------------------------------------------------------------
_BRACES = re.compile(r'^([^{}]*)\{([^{}]+)\}([^{}]*)$')
_NUMBERED = re.compile(r'^(.*?)(\d+)$')


def table_names(cell: str) -> List[str]:
    """The model names a table cell lists as code spans, brace lists expanded: ``resnet{8,14}`` -> resnet8,
    resnet14; ``q{a,b}_x`` -> qa_x, qb_x."""
    names = []
    for code in re.findall(r'`([^`]+)`', cell):
        m = _BRACES.match(code)
        names += [m.group(1) + v.strip() + m.group(3) for v in m.group(2).split(',')] if m else [code]
    return names


def _compact(names: Sequence[str]) -> str:
    """Names as code spans, those that differ only in a trailing number joined in braces (``resnet{8,110}``)."""
    groups: Dict[str, List[str]] = {}
    for n in names:
        m = _NUMBERED.match(n)
        groups.setdefault(m.group(1) if m else n, []).append(m.group(2) if m else '')
    return ', '.join(f'`{p}`' if nums == [''] else f'`{p}{nums[0]}`' if len(nums) == 1 else
                     f"`{p}{{{','.join(nums)}}}`" for p, nums in groups.items())


def _without_weights(names: Sequence[str], published: set) -> str:
    """The cell that names which of ``names`` have no published weights: none, all, all but ..., or a list."""
    without = [n for n in names if n not in published]
    if not without:
        return 'none'
    if len(without) == len(names):
        return 'all'
    with_ = [n for n in names if n in published]
    return f'all but {_compact(with_)}' if len(with_) < len(without) else _compact(without)


def architecture_table(text: str, published: set, what: str = 'README.md') -> str:
    """``text`` with the last column of every row of the table between :data:`ARCH_BEGIN` and :data:`ARCH_END`
    rewritten: which of the row's models (its first column, :func:`table_names`) have no published weights
    (``published``: the architectures with weights, from :func:`qzoo.list_models` with ``pretrained=True``)."""
    replace_block(text, '', what, ARCH_BEGIN, ARCH_END, 'the architecture table')  # checks the markers
    a, b = text.index(ARCH_BEGIN) + len(ARCH_BEGIN), text.index(ARCH_END)
    lines = text[a:b].split('\n')
    for i, line in enumerate(lines):
        cells = line.split(' | ')
        if line.startswith('| `') and len(cells) > 2:
            lines[i] = ' | '.join(cells[:-1] + [_without_weights(table_names(cells[0]), published) + ' |'])
    return text[:a] + '\n'.join(lines) + text[b:]


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
                    help=f'also rewrite the summary between {BEGIN} and {END} and the last column of the architecture '
                         f'table (between {ARCH_BEGIN} and {ARCH_END}) in this file (all datasets only)')
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
        from .registry import list_models
        text = replace_block(readme_text, readme_block(tables, a.bootstrap), a.readme)
        published = {name.partition('.')[0] for name in list_models(pretrained=True)}
        atomic_write_text(a.readme, architecture_table(text, published, a.readme))


def _check_outputs(ap, a) -> None:
    """Refuse (before anything is scored) an --out or --readme that cannot be written as regular files
    (:func:`qzoo.fileio.check_target`)."""
    out = Path(a.out)
    for path, option in ((out / 'efficiency.csv', '--out'), (out / 'efficiency.md', '--out'),
                         *(((Path(a.readme), '--readme'),) if a.readme else ())):
        try:
            check_target(path)
        except NotARegularFileError as e:
            ap.error(f'{option}: {e}')


def main(argv: Optional[Sequence[str]] = None, default_out: str = 'results') -> int:
    from .weights import all_weights
    ap = _parser(default_out)
    a = ap.parse_args(argv)
    if a.bootstrap < 100:
        ap.error(f'--bootstrap must be at least 100 replicates for a 95% interval, got {a.bootstrap}')
    _check_outputs(ap, a)
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
            architecture_table(readme_text, set(), a.readme)
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
