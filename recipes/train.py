#!/usr/bin/env python
"""`qzoo train` from a checkout (also under torchrun: torchrun --nproc_per_node=2 recipes/train.py ...):
qzoo.engine.main. python recipes/train.py --help for the options."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, without installing it

from qzoo.engine import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
