#!/usr/bin/env python
"""Score weights on a dataset split (``qzoo validate``): a thin wrapper of
:func:`qzoo.evaluation.main`; ``python eval/validate.py --help`` lists the options and examples."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qzoo.evaluation import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main(sys.argv[1:], prog='python eval/validate.py'))
