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

from pathlib import Path
from typing import Optional

__all__ = ['PACKAGE_PARENT', 'is_checkout', 'root', 'require']

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
