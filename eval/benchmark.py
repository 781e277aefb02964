#!/usr/bin/env python
"""`qzoo bench` from a checkout: qzoo.benchmark.cli. python eval/benchmark.py --help for the options."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, without installing it

from qzoo.benchmark import cli as main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
