#!/usr/bin/env python
"""`qzoo cards` from a checkout: regenerate, from the weights records (qzoo/checkpoints/manifest.json), every
published folder's config.json and README.md card, each architecture's default, and MODEL_CARDS.md (weights
untouched). The code is qzoo.cli.cards_main."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, without installing it

from qzoo.cli import cards_main as main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
