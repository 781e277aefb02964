#!/usr/bin/env python
"""`make eval`: accuracy per parameter of the published checkpoints with bootstrap intervals.

A thin wrapper of :mod:`qzoo.efficiency` (``python -m qzoo.efficiency --help`` for the options)
that writes into this checkout's results/ folder by default.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qzoo.efficiency import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main(sys.argv[1:], default_out=str(ROOT / 'results')))
