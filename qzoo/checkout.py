"""Where the qzoo checkout is, for the commands that read its files rather than the package's.

An installed wheel holds only the ``qzoo`` package (with its published weights) and the
``qzoo_cli`` entry point. The recipes (``recipes/``), the shipped data packs (``data/``), the
tests (``tests/``) and the run folders of the zoo's own training (``runs/``) live in a checkout
of the repository. :func:`root` finds it: the folder that holds this package when qzoo runs from
a checkout (editable install or ``PYTHONPATH``), else the current directory when it is one;
:func:`require` raises a :class:`FileNotFoundError` that says a checkout is needed when there is
none.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Dict, Optional

__all__ = ['PACKAGE_PARENT', 'is_checkout', 'root', 'require', 'code_identity', 'COMMIT_ENV']

#: the commit a run's code came from, for a copy of the tracked files without .git (a device call)
COMMIT_ENV = 'QZOO_COMMIT'

#: the folder that holds the imported ``qzoo`` package: the checkout, or site-packages for a wheel
PACKAGE_PARENT = Path(__file__).resolve().parents[1]


def is_checkout(folder: Path) -> bool:
    """Whether ``folder`` is a qzoo checkout: it has the ``qzoo`` package, ``recipes/`` and ``pyproject.toml``."""
    folder = Path(folder)
    return (folder / 'pyproject.toml').is_file() and (folder / 'recipes').is_dir() and (folder / 'qzoo').is_dir()


def root() -> Optional[Path]:
    """The checkout qzoo runs from, else the current directory when it is a checkout, else None."""
    for folder in (PACKAGE_PARENT, Path.cwd().resolve()):
        if is_checkout(folder):
            return folder
    return None


def require(what: str) -> Path:
    """The checkout (see :func:`root`), or a FileNotFoundError saying that ``what`` needs one."""
    found = root()
    if found is None:
        raise FileNotFoundError(
            f'{what} needs a checkout of the qzoo repository (its recipes/, data/ and tests/ folders are not part '
            f'of the installed package at {PACKAGE_PARENT / "qzoo"}). Fix: clone the repository and run the command '
            f'inside it (pip install -e . there makes `qzoo` use the checkout)')
    return found


def _git_commit(folder: Path) -> Optional[str]:
    if not (folder / '.git').exists():
        return None
    try:
        out = subprocess.run(['git', '-C', str(folder), 'rev-parse', 'HEAD'], capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(['git', '-C', str(folder), 'status', '--porcelain', '--untracked-files=no', '--',
                                'qzoo', 'qzoo_cli.py', 'recipes'], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ('-dirty' if dirty.returncode == 0 and dirty.stdout.strip() else '')


def code_identity() -> Dict[str, Optional[str]]:
    """What code a run used: ``commit`` (git's HEAD of the checkout, ``-dirty`` when qzoo/, qzoo_cli.py or
    recipes/ have uncommitted changes; else ``$QZOO_COMMIT``; else None) and ``source_sha256``, the SHA-256 of
    the package's Python sources (path and bytes of every ``qzoo/**/*.py``, sorted), which identifies the code
    even in a copy without .git."""
    h = hashlib.sha256()
    pkg = PACKAGE_PARENT / 'qzoo'
    for path in sorted(pkg.rglob('*.py')):
        if 'checkpoints' in path.relative_to(pkg).parts:
            continue
        h.update(path.relative_to(pkg).as_posix().encode() + b'\0' + path.read_bytes() + b'\0')
    found = root()
    commit = (_git_commit(found) if found is not None else None) or os.environ.get(COMMIT_ENV) or None
    return dict(commit=commit, source_sha256=h.hexdigest())
