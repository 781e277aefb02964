#!/usr/bin/env python
"""Accuracy per parameter of the published checkpoints — qzoo's main job (`make eval`).

For every dataset with published checkpoints (qzoo/checkpoints/manifest.json), evaluate each
checkpoint on its *test* split (offline: shipped checkpoints and test splits), group seeds
(mean ± std), and for each quadratic model report the parameters saved at equal metric,
1 - p_Q / p_C(a_Q), with p_C read off the conventional family's metric-vs-log-params
frontier, and the metric gain at equal parameters. External conventional checkpoints
(qzoo.external) are evaluated too where their files are available offline (torch hub cache,
or a mirror such as ../shared/checkpoints), shown in the plots and excluded from the curve.

Writes results/efficiency.csv, results/efficiency.md and results/pareto-<dataset>.png.
"""
import argparse
import csv
import json
import os
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qzoo import external  # noqa: E402
from qzoo.metrics import Metrics  # noqa: E402
from qzoo.evaluation import efficiency_rows, external_available, validate  # noqa: E402
from qzoo.weights import all_weights  # noqa: E402

# the external checkpoints worth comparing on each dataset (weights trained elsewhere), and how to load it
EXTERNAL_FOR = {'cifar10-jpeg75': [n for n, e in external.EXTERNAL.items() if e.num_classes == 10]}
EXTERNAL_DATA = {'cifar10-jpeg75': dict(spec={'name': 'cifar10-jpeg75', 'args': {}}, task='classification')}

CSV_COLUMNS = ['dataset', 'model', 'group', 'family', 'neuron', 'params', 'macs', 'metric', 'mean', 'std', 'n_seeds',
               'secondary', 'secondary_mean', 'secondary_std', 'conv_params_at_equal_metric', 'params_saved',
               'metric_gain_at_equal_params', 'external', 'checkpoints', 'note']


def _fmt(v, pct=False):
    if v is None or v == '':
        return '–'
    if isinstance(v, float):
        return f'{100 * v:.1f}%' if pct else (f'{v:.4g}' if abs(v) < 10 else f'{v:.2f}')
    return f'{v:,}' if isinstance(v, int) else str(v)


def evaluate_all(entries, device, log):
    rows = []
    for name, e in sorted(entries.items()):
        t = time.time()
        row = validate(name, e['data_spec']['name'], 'test', e['data_spec']['args'], device=device)
        metric = e['primary_metric']
        if abs(row[metric] - e['test'][metric]) > 1e-3:  # rows are rounded to 4 decimals
            log(f'WARNING {name}: re-evaluated test {metric} {row[metric]} differs from the published '
                f'{e["test"][metric]}')
        rows.append(dict(row, name=name, entry=e, external=False))
        log(f'{name}: test {metric} {row[metric]:.4f} ({time.time() - t:.1f}s)')
    return rows


def evaluate_external(dataset, data_spec, device, log, mirrors):
    rows = []
    for name in EXTERNAL_FOR.get(dataset, []):
        if not external_available(name, mirrors):
            log(f'{name}: not available offline (not in the torch hub cache {external.cache_path(name).parent}, '
                f'no mirror in {[str(m) for m in mirrors]}); skipped')
            continue
        row = validate(name, data_spec['name'], 'test', data_spec['args'], device=device)
        rows.append(dict(row, name=name, external=True))
        log(f"{name}: test top1 {row['top1']:.2f} (external, trained on {external.EXTERNAL[name].dataset})")
    return rows


def group_rows(rows, metric, secondary):
    groups = defaultdict(list)
    for r in rows:
        key = r['name'] if r['external'] else f"{r['entry']['architecture']}.{r['entry']['group']}"
        groups[key].append(r)
    out = []
    for key, rs in groups.items():
        vals = [r[metric] for r in rs]
        sec = [r[secondary] for r in rs if secondary in r]
        first = rs[0]
        out.append(dict(
            dataset=first['dataset'], model=first['model'], group=key, neuron=first['neuron'],
            family='external' if first['external'] else ('quadratic' if first['neuron'] != 'linear' else 'conventional'),
            quadratic=first['neuron'] != 'linear' and not first['external'], external=first['external'],
            params=first['param_count'], macs=first['macs'], metric=metric, mean=statistics.fmean(vals),
            std=statistics.stdev(vals) if len(vals) > 1 else 0.0, n_seeds=len(vals),
            secondary=secondary, secondary_mean=statistics.fmean(sec) if sec else None,
            secondary_std=(statistics.stdev(sec) if len(sec) > 1 else 0.0) if sec else None,
            checkpoints=' '.join(sorted(r['name'] for r in rs))))
    return sorted(out, key=lambda g: (g['family'], g['params']))


def _label(group: str) -> str:
    """A plot label: the architecture of 'resnet20_w8.cifar10-jpeg75-e40' is 'resnet20_w8'."""
    return group.partition('.')[0]


def plot(dataset, groups, metric, higher, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from qzoo.evaluation import frontier
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    style = {'conventional': ('tab:blue', 'o'), 'quadratic': ('tab:red', '^'), 'external': ('0.45', 'X')}
    for fam, (color, marker) in style.items():
        gs = [g for g in groups if g['family'] == fam]
        if not gs:
            continue
        ax.errorbar([g['params'] for g in gs], [g['mean'] for g in gs], yerr=[g['std'] for g in gs], fmt=marker,
                    color=color, capsize=3, ms=7, label={'external': 'external hub checkpoint'}.get(fam, fam))
        if fam != 'external':
            curve = frontier([(g['params'], g['mean']) for g in gs], higher)
            ax.plot([p for p, _ in curve], [m for _, m in curve], '-', color=color, alpha=0.5)
        for g in gs:
            ax.annotate(_label(g['group']) if fam != 'external' else g['group'], (g['params'], g['mean']),
                        textcoords='offset points', xytext=(4, 4), fontsize=7, color=color)
    ax.set_xscale('log')
    ax.set_xlabel('parameters (log scale)')
    ax.set_ylabel(f'test {metric}' + (' (%)' if metric != 'mse' else ''))
    ax.set_title(f'{dataset}: test {metric} vs parameters')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown(tables):
    out = ['# Accuracy per parameter', '',
           'Generated by `make eval` (eval/efficiency.py) from the published checkpoints, each evaluated on its '
           "dataset's *test* split (weights selected on the validation split). mean ± std over seeds where n > 1. "
           '*params saved* = 1 − p_Q / p_C(a_Q), p_C read off the conventional frontier (metric vs log-params, '
           'linear interpolation); *gain* = a_Q − a_C(p_Q). External checkpoints were trained on other data '
           '(e.g. the original CIFAR-10) and are not part of the curve.', '']
    for dataset, (metric, groups) in tables.items():
        out += [f'## {dataset} (test {metric})', '']
        if all(g['external'] for g in groups):
            out += ['No qzoo checkpoint is published on this dataset yet (the CIFAR trainings need a GPU: '
                    'see README, "GPU work"); the external conventional checkpoints available offline, '
                    'evaluated here, are the reference they will be compared with.', '']
        elif not any(g['family'] == 'quadratic' for g in groups):
            out += ['No quadratic checkpoint is published on this dataset yet (see README, "GPU work"): the '
                    'conventional curve below is what they will be compared with.', '']
        out += [f'| model | family | neuron | params | MACs | {metric} | seeds | params saved at equal metric | '
                'gain at equal params | note |', '|---|---|---|---:|---:|---:|---:|---:|---:|---|']
        for g in groups:
            m = f"{g['mean']:.2f} ± {g['std']:.2f}" if g['n_seeds'] > 1 else f"{g['mean']:.4g}"
            if g.get('secondary_mean') is not None:
                m += f" ({g['secondary']} {g['secondary_mean']:.2f})"
            out.append(f"| {g['group']} | {g['family']} | {g['neuron']} | {_fmt(g['params'])} | {_fmt(g['macs'])} | "
                       f"{m} | {g['n_seeds']} | {_fmt(g.get('params_saved'), pct=True)} | "
                       f"{_fmt(g.get('metric_gain_at_equal_params'))} | {g.get('note', '')} |")
        out.append('')
    if not tables:
        out += ['No checkpoints are published yet.', '']
    return '\n'.join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--out', default=str(ROOT / 'results'))
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--dataset', action='append', help='only these datasets')
    ap.add_argument('--mirror', action='append', default=None,
                    help='folders holding external checkpoints as <owner>/<file> (default: ../shared/checkpoints '
                         'and $QZOO_MIRROR when they exist)')
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    mirrors = [Path(m) for m in (a.mirror or [os.environ.get('QZOO_MIRROR', ''), ROOT.parent / 'shared' / 'checkpoints'])
               if m and Path(m).is_dir()]
    by_dataset = defaultdict(dict)
    for name, w in all_weights().items():
        e = dict(w.to_dict(), group=w.experiment)
        by_dataset[e['dataset']][name] = e
    tables, all_groups = {}, []
    for dataset in sorted(set(by_dataset) | set(EXTERNAL_DATA)):
        if a.dataset and dataset not in a.dataset:
            continue
        entries = by_dataset.get(dataset, {})
        first = next(iter(entries.values())) if entries else dict(data_spec=EXTERNAL_DATA[dataset]['spec'],
                                                                  task=EXTERNAL_DATA[dataset]['task'])
        metric, higher = Metrics.primary(first['task'])
        secondary = {'top1': 'macro_f1', 'iou': 'dice'}.get(metric) if dataset != 'cifar10-jpeg75' else None
        rows = evaluate_all(entries, a.device, log) + evaluate_external(dataset, first['data_spec'], a.device, log, mirrors)
        if not rows:
            continue
        if not entries:
            log(f'{dataset}: no qzoo checkpoint is published on it yet; external checkpoints only')
        groups = efficiency_rows(group_rows(rows, metric, secondary), metric, higher)
        tables[dataset] = (metric, groups)
        all_groups += groups
        plot(dataset, groups, metric, higher, out / f'pareto-{dataset}.png')
    with open(out / 'efficiency.csv', 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction='ignore')
        w.writeheader()
        for g in all_groups:
            w.writerow({c: g.get(c, '') for c in CSV_COLUMNS})
    (out / 'efficiency.md').write_text(markdown(tables))
    log(f'wrote {out / "efficiency.csv"}, {out / "efficiency.md"} and {len(tables)} plot(s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
