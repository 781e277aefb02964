#!/usr/bin/env python
"""Regenerate, from the weights records (qzoo/checkpoints/manifest.json), every published folder's
config.json and README.md card, each architecture's default, and MODEL_CARDS.md (weights untouched)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qzoo.publish import index_path, refresh  # noqa: E402

if __name__ == '__main__':
    print(f'{refresh()} checkpoints; index {index_path()}')
