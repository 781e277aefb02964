#!/usr/bin/env python
"""Regenerate MODEL_CARDS.md from checkpoints/manifest.json and each checkpoint's config.json."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qzoo.publish import write_cards  # noqa: E402

if __name__ == '__main__':
    print(write_cards())
