#!/usr/bin/env python
"""Publish the runs behind qzoo/checkpoints again: every folder, record, card and MODEL_CARDS.md of a group.

    python recipes/publish_all.py synthetic|cwru|dsb|cifar [--only-missing]

Each group lists its run folders (under runs/, where the training commands below wrote them) and the
experiment each is published under; the seed comes from the run, the architecture from the run's model
(qzoo.publish.variant_of), and each architecture's default follows qzoo.publish.choose_default. It stops at
the first run that cannot be published (qzoo.publish names it).

The runs:
    synthetic  python recipes/synthetic/sweep.py --sizes 2 4 8 16 32 --seeds 0 1 2 3 4
    cwru       python recipes/launch.py recipes/cwru/[!_]*.yaml recipes/cwru/clean/*.yaml --grid seed=0,1,2,3,4 \\
                   --runs-dir runs/cwru
    dsb        python recipes/launch.py recipes/dsb2018-96/[!_]*.yaml --runs-dir runs/dsb2018-96   (seed 0; b4 and
                   b8 also --grid seed=1,2)
    cifar      python recipes/launch.py --preset conventional (an H100, --fit-in: 40 epochs), and the CPU run of
                   recipes/cifar10-jpeg75/qresnet20-w8.yaml with epochs=40 into runs/cifar-cpu
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SYNTHETIC = ('circles-d2', 'moons-d2', 'spheres-d10', 'spheres-d50', 'interaction-d2')


def _synthetic():
    return [(f'runs/synthetic/{task}/{m}-h{h}-s{s}', f'synthetic-{task}')
            for task in SYNTHETIC for m in ('mlp', 'qmlp') for h in (2, 4, 8, 16, 32) for s in range(5)]


def _cwru():
    return [(f'runs/cwru/{m}-w{w}-cwru-{cond}-s{s}', f'cwru-{cond}')
            for cond in ('snr-6db', 'clean') for s in range(5)
            for m, widths in (('wdcnn', (4, 8, 16)), ('qcnn', (8, 16, 32))) for w in widths]


def _dsb():
    return [(f'runs/dsb2018-96/{m}-b{w}-dsb2018-96-s{s}', 'dsb2018-96')
            for w, seeds in ((4, range(3)), (8, range(3)), (16, range(1))) for m in ('unet', 'qunet') for s in seeds]


def _cifar():
    runs = [(f'runs/conventional/resnet{d}-cifar10-jpeg75-s0', 'cifar10-jpeg75-e40') for d in (20, 32, 44, 56)]
    runs += [(f'runs/conventional/resnet20-w{w}-cifar10-jpeg75-s0', 'cifar10-jpeg75-e40') for w in (8, 12, 24)]
    return runs + [('runs/cifar-cpu/qresnet20-w8-cifar10-jpeg75-s0', 'cifar10-jpeg75-e40-cpu')]


GROUPS = {'synthetic': _synthetic, 'cwru': _cwru, 'dsb': _dsb, 'cifar': _cifar}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('group', choices=list(GROUPS))
    ap.add_argument('--only-missing', action='store_true', help='skip runs whose weights are already published')
    ap.add_argument('--runs-root', default=str(ROOT), help='folder that holds runs/ (default: the checkout)')
    a = ap.parse_args(argv)
    import json
    from qzoo.publish import publish
    from qzoo.weights import all_weights
    for run, experiment in GROUPS[a.group]():
        folder = Path(a.runs_root) / run
        if a.only_missing and (folder / 'results.json').is_file():
            res = json.loads((folder / 'results.json').read_text())
            if any(w.experiment == experiment and w.seed == res['seed'] and w.training.get('recipe') == res['recipe']
                   and w.params == res['params'] for w in all_weights().values()):
                continue
        w = publish(folder, experiment)
        print(f'{run} -> {w.name}', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
