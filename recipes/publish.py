#!/usr/bin/env python
"""Publish training runs as zoo checkpoints (checkpoints/<arch>.<tag>/ + manifest + MODEL_CARDS.md).

    python recipes/publish.py runs/qcnn-cwru-s0 --tag cwru-0hp-snr-6db-s0 [--default] [--dtype auto|float16|float32]
    python recipes/publish.py --set-default qcnn.w16-cwru-snr-6db-s0
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qzoo.publish import publish, set_default  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('run', nargs='?', help='run folder written by recipes/train.py')
    ap.add_argument('--tag', help='pretrained tag: the checkpoint is published as <arch>.<tag>')
    ap.add_argument('--set-default', metavar='NAME', help="make a published <arch>.<tag> its architecture's default")
    ap.add_argument('--default', action='store_true', help="make it the architecture's pretrained=True default")
    ap.add_argument('--dtype', default='auto', choices=['auto', 'float16', 'float32'])
    a = ap.parse_args(argv)
    if a.set_default:
        set_default(a.set_default)
        return 0
    if not (a.run and a.tag):
        ap.error('give a run folder and --tag (or --set-default NAME)')
    print(json.dumps(publish(a.run, a.tag, a.default, a.dtype)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
