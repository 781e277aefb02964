#!/usr/bin/env python
"""The figures of docs/experiments.md's stability study, from the runs' own logs.

    python recipes/cifar10-jpeg75/stability_plots.py --continued BASE CLIPPED --scratch RUN... --out docs/img

* ``--continued BASE CLIPPED``: two folders of ``continue_run.py`` from the same saved state (without and with
  the remedy), each with a per-step ``monitor.jsonl``: the gradient norm, the training loss and the largest
  quadratic-term output per step (``stability-continued.png``), and, at the step with the largest gradient
  norm of BASE and the step before it, the largest output of every quadratic layer by depth
  (``stability-depth.png``).
* ``--scratch RUN[=LABEL]...``: run folders trained from scratch (``log.jsonl``; label: LABEL or the folder name):
  training loss and validation top-1 per epoch, a marker where ``qzoo.divergence`` finds a divergence
  (``stability-scratch.png``).
"""
import argparse
import json
import sys
from pathlib import Path


def _lines(path: Path):
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def _largest(rec, suffix: str) -> float:
    return max(v[1] for k, v in rec['out'].items() if k.endswith(suffix))


def continued(base: Path, clipped: Path, out: Path, plt) -> None:
    fig, axes = plt.subplots(3, 1, figsize=(7.0, 7.5), dpi=110, sharex=True)
    for folder, style in ((base, 'tab:red'), (clipped, 'tab:blue')):
        steps = _lines(folder / 'monitor.jsonl')
        x = [r['step'] for r in steps]
        label = folder.name
        axes[0].plot(x, [r['grad_norm'] for r in steps], color=style, label=label)
        axes[1].plot(x, [r['loss'] for r in steps], color=style, label=label)
        axes[2].plot(x, [_largest(r, '.b') for r in steps], color=style, label=label)
    axes[0].set_yscale('log')
    axes[0].set_ylabel('gradient norm\n(before clipping)')
    axes[1].set_ylabel('training loss\n(batch)')
    axes[2].set_yscale('log')
    axes[2].set_ylabel('largest |W_b x²+c|\nover all layers')
    axes[2].set_xlabel('optimizer step')
    axes[0].legend(fontsize=7)
    for ax in axes:
        ax.grid(True, alpha=0.3)
    fig.suptitle('Continued from the same saved state, per step', fontsize=9)
    fig.tight_layout()
    fig.savefig(out / 'stability-continued.png', metadata={'Software': None})
    plt.close(fig)


def depth(base: Path, out: Path, plt) -> None:
    steps = _lines(base / 'monitor.jsonl')
    i = max(range(len(steps)), key=lambda k: steps[k]['grad_norm'])
    before, at = steps[max(0, i - 1)], steps[i]
    layers = [k for k in at['out'] if not k.endswith(('.r', '.g', '.b'))]
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.8), dpi=110)
    for rec, color in ((before, 'tab:blue'), (at, 'tab:red')):
        label = f"step {rec['step']} (gradient norm {rec['grad_norm']:.3g})"
        axes[0].plot(range(len(layers)), [rec['out'][k + '.b'][1] for k in layers], 'o-', color=color, ms=3,
                     label=label)
        grads = [max(rec['grad'].get(f'{k}.conv_{t}', 0.0) for t in 'rgb') for k in layers]
        axes[1].plot(range(len(layers)), grads, 'o-', color=color, ms=3, label=label)
    axes[0].set_ylabel('largest |W_b x²+c| of the layer')
    axes[1].set_ylabel("largest gradient norm of the layer's terms")
    for ax in axes:
        ax.set_yscale('log')
        ax.set_xlabel('quadratic layer (0 = stem, then by depth)')
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f'{base.name}: the blow-up step against the step before', fontsize=9)
    fig.tight_layout()
    fig.savefig(out / 'stability-depth.png', metadata={'Software': None})
    plt.close(fig)


def scratch(runs, out: Path, plt) -> None:
    import yaml
    from qzoo.divergence import detect
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 4.0), dpi=110)
    colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for n, (folder, label) in enumerate(runs):
        log = _lines(folder / 'log.jsonl')
        ran = yaml.safe_load((folder / 'recipe.yaml').read_text())
        e = [r['epoch'] for r in log]
        style = '-' if ran.get('grad_clip') else '--'
        c = colors[n % len(colors)]
        axes[0].plot(e, [r['train_loss'] for r in log], style, color=c, label=label)
        axes[1].plot(e, [r['val_top1'] for r in log], style, color=c, label=label)
        d = detect(log, ran.get('warmup_epochs') or 0, 5000)
        if d is not None:
            axes[0].plot([d.epoch], [d.loss], 'x', color=c, ms=9, mew=2)
    axes[0].set_ylabel('training loss (epoch mean)')
    axes[1].set_ylabel('validation top-1 (%)')
    for ax in axes:
        ax.set_xlabel('epoch')
        ax.grid(True, alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle('qresnet20 from scratch (x: a divergence by qzoo.divergence; dashed: no gradient clipping)', fontsize=9)
    fig.tight_layout()
    fig.savefig(out / 'stability-scratch.png', metadata={'Software': None})
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--continued', nargs=2, metavar=('BASE', 'CLIPPED'))
    ap.add_argument('--scratch', nargs='*', default=[], metavar='RUN[=LABEL]')
    ap.add_argument('--out', default='docs/img')
    a = ap.parse_args(argv)
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.continued:
        continued(Path(a.continued[0]), Path(a.continued[1]), out, plt)
        depth(Path(a.continued[0]), out, plt)
    if a.scratch:
        runs = [r.partition('=') for r in a.scratch]
        scratch([(Path(p), label or Path(p).name) for p, _, label in runs], out, plt)
    return 0


if __name__ == '__main__':
    sys.exit(main())
