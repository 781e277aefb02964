#!/usr/bin/env python
"""Publish a training run as zoo weights: qzoo/checkpoints/<architecture>.<experiment>-s<seed>/, its record in
the manifest, its card, and MODEL_CARDS.md. The architecture is the registered name that builds the run's model
(e.g. a run of `qcnn` with width 8 is published as `qcnn_w8`); the seed comes from the run.

    python recipes/publish.py runs/cwru/qcnn-w8-cwru-snr-6db-s3 --experiment cwru-snr-6db [--dtype auto|float16|float32]
    python recipes/publish.py --set-default qcnn.cwru-snr-6db-s1 --reason "..."   # pin a default by hand
    python recipes/publish.py --refresh        # regenerate config.json, cards, defaults and MODEL_CARDS.md

Each architecture's default weights follow qzoo.publish.choose_default unless pinned by hand.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qzoo.errors import CheckpointError, RunDirError  # noqa: E402
from qzoo.publish import publish, refresh, set_default  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('runs', nargs='*', help='run folders written by recipes/train.py')
    ap.add_argument('--experiment', help='what the weights were trained on, without the seed (e.g. cwru-clean)')
    ap.add_argument('--dtype', default='auto', choices=['auto', 'float16', 'float32'])
    ap.add_argument('--set-default', metavar='NAME', help="pin published <architecture>.<tag> as its default")
    ap.add_argument('--reason', help='why (printed on the card), with --set-default')
    ap.add_argument('--refresh', action='store_true', help='regenerate every generated file from the records')
    a = ap.parse_args(argv)
    try:
        if a.set_default:
            print(set_default(a.set_default, a.reason or '').name)
        elif a.refresh:
            print(f'{refresh()} checkpoints refreshed')
        elif a.runs and a.experiment:
            for run in a.runs:
                print(json.dumps({'published': publish(run, a.experiment, a.dtype).name}), flush=True)
        else:
            ap.error('give run folders and --experiment, or --set-default NAME --reason ..., or --refresh')
    except (CheckpointError, RunDirError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
