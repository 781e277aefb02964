#!/usr/bin/env python
"""Publish training runs as zoo checkpoints (checkpoints/<arch>.<tag>/ + manifest + MODEL_CARDS.md).

    python recipes/publish.py runs/qcnn-cwru-s0 --tag cwru-0hp-snr-6db-s0 [--default] [--dtype auto|float16|float32]
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qzoo.publish import publish  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('run', help='run folder written by recipes/train.py')
    ap.add_argument('--tag', required=True, help='pretrained tag: the checkpoint is published as <arch>.<tag>')
    ap.add_argument('--default', action='store_true', help="make it the architecture's pretrained=True default")
    ap.add_argument('--dtype', default='auto', choices=['auto', 'float16', 'float32'])
    a = ap.parse_args(argv)
    print(json.dumps(publish(a.run, a.tag, a.default, a.dtype)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
