#!/usr/bin/env python
"""Publish the runs behind checkpoints/ again: every folder, card and manifest entry of a group.

    python recipes/publish_all.py synthetic|cwru|dsb|cifar

Each group lists its run folders (under runs/, as the training commands wrote them), the tag
each is published under, and the architectures' pretrained=True defaults. It stops at the
first run that cannot be published (qzoo.publish names it).
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SYNTHETIC = ('circles-d2', 'moons-d2', 'spheres-d10', 'spheres-d50', 'interaction-d2')


def _synthetic():
    runs = [(f'runs/synthetic/{task}/{m}-h{h}-s0', f'h{h}-synthetic-{task}-s0')
            for task in SYNTHETIC for m in ('mlp', 'qmlp') for h in (2, 4, 8, 16, 32)]
    return runs, ['mlp.h8-synthetic-circles-d2-s0', 'qmlp.h2-synthetic-circles-d2-s0']


def _cwru():
    runs = []
    for cond in ('snr-6db', 'clean'):
        for s in (0, 1, 2):
            runs += [(f'runs/cwru/wdcnn-w{w}-cwru-{cond}-s{s}', f'w{w}-cwru-{cond}-s{s}') for w in (4, 8, 16)]
            runs += [(f'runs/cwru/qcnn-w{w}-cwru-{cond}-s{s}', f'w{w}-cwru-{cond}-s{s}') for w in (8, 16, 32)]
    return runs, ['wdcnn.w16-cwru-snr-6db-s0', 'qcnn.w16-cwru-snr-6db-s0']


def _dsb():
    runs = [(f'runs/dsb2018-96/{m}-b{w}-dsb2018-96-s0', f'b{w}-dsb2018-96-s0')
            for w in (4, 8, 16) for m in ('unet', 'qunet')]
    return runs, ['unet.b16-dsb2018-96-s0', 'qunet.b16-dsb2018-96-s0']


def _cifar():
    # the conventional preset's runs (launch.py --preset conventional; --fit-in cut the recipe's 50 epochs to 40)
    runs = [(f'runs/conventional/resnet{d}-cifar10-jpeg75-s0', 'cifar10-jpeg75-e40-s0') for d in (20, 32, 44, 56)]
    runs += [(f'runs/conventional/resnet20-w{w}-cifar10-jpeg75-s0', f'w{w}-cifar10-jpeg75-e40-s0') for w in (8, 12, 24)]
    return runs, ['resnet20.cifar10-jpeg75-e40-s0']


GROUPS = {'synthetic': _synthetic, 'cwru': _cwru, 'dsb': _dsb, 'cifar': _cifar}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('group', choices=list(GROUPS))
    a = ap.parse_args(argv)
    from qzoo.publish import publish, set_default
    runs, defaults = GROUPS[a.group]()
    for run, tag in runs:
        entry = publish(ROOT / run, tag)
        print(f'{run} -> {entry.get("architecture", "?")}.{tag}', flush=True)
    for name in defaults:
        set_default(name)
        print(f'default: {name}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
