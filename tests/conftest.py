import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get('QZOO_SHARED', ROOT.parent / 'shared'))


def need_shared(*parts):
    """Skip (with the reason) unless ../shared/<parts> exists."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f'needs {p} (the shared data folder beside the checkout; set QZOO_SHARED to point elsewhere)')
    return p


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def ck_copy(tmp_path, monkeypatch):
    """The published checkpoints copied and pointed at by $QZOO_CHECKPOINTS, so that a test can damage files
    without touching the checkout."""
    import shutil
    from qzoo import weights
    ck = tmp_path / 'ck'
    shutil.copytree(ROOT / 'qzoo' / 'checkpoints', ck)
    monkeypatch.setenv(weights.CHECKPOINTS_ENV, str(ck))
    weights.clear_cache()
    yield ck
    weights.clear_cache()
