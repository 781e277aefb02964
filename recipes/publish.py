#!/usr/bin/env python
"""`qzoo publish` from a checkout: qzoo.publish.main. python recipes/publish.py --help for the options."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, without installing it

from qzoo.publish import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
