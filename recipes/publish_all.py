#!/usr/bin/env python
"""`qzoo publish --group GROUP [--only-missing] [--runs-root DIR]` from a checkout: publish again every run behind
a group of the zoo's weights (synthetic, cwru, dsb, cifar; qzoo.publish.RUN_GROUPS)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, without installing it

from qzoo.publish import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main((['--group'] if sys.argv[1:2] and not sys.argv[1].startswith('-') else []) + sys.argv[1:]))
