"""qzoo's datasets: exact about provenance, seeded, device-resident batching.

::

    from qzoo.data import load_dataset, BatchLoader
    ds = load_dataset('cifar10-jpeg75')              # DataSplits: .train/.val/.test Splits on the CPU
    print(ds.summary())
    loader = ds.loader('train', 128, device='cuda')  # = BatchLoader(ds.train, 128, shuffle=True,
    for epoch in range(epochs):                      #     augment=ds.augment, normalize=ds.normalize)
        loader.set_epoch(epoch)
        for x, y in loader: ...

Data root: ``root=`` or ``$QZOO_DATA`` or ``<checkout>/../shared/data``. Caches:
``$QZOO_CACHE`` or ``~/.cache/qzoo``. The repository's ``data/`` folder ships the test splits
of ``cifar10-jpeg75``, ``cwru`` and ``dsb2018-96`` (used when the full data is missing and only
``splits=('test',)`` is asked for) and the fixed ``dsb2018-96`` split.
"""
from __future__ import annotations

import difflib
import inspect
import typing
from typing import Callable, Dict, List, Sequence

from ..bounds import as_number, whole_number
from ._common import SPLITS, Split
from .loader import AUGMENTATIONS, BatchLoader
from .splits import DataSplits
from .cifar import load_cifar10, load_cifar10_jpeg75
from .cwru import load_cwru
from .segmentation import load_carvana, load_dsb2018_96
from .synthetic import load_synthetic

__all__ = ['load_dataset', 'list_datasets', 'BatchLoader', 'DataSplits', 'Split', 'AUGMENTATIONS']

_LOADERS: Dict[str, Callable[..., DataSplits]] = {
    'cifar10-jpeg75': load_cifar10_jpeg75,
    'cifar10': load_cifar10,
    'cwru': load_cwru,
    'dsb2018-96': load_dsb2018_96,
    'carvana': load_carvana,
    'synthetic': load_synthetic,
}


def list_datasets() -> List[str]:
    """The names :func:`load_dataset` accepts."""
    return sorted(_LOADERS)


def options(name: str) -> Dict[str, object]:
    """The options of dataset ``name`` and their defaults."""
    fn = _loader(name)
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if k not in ('root', 'splits')}


def _loader(name: str):
    if name not in _LOADERS:
        close = difflib.get_close_matches(str(name), list(_LOADERS), n=2, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ''
        raise ValueError(f'unknown dataset {name!r}{hint}; valid: {list_datasets()} (a DataSplits.name such as '
                         f'"cwru-0hp-clean" names a result: load it by its dataset and options, see info["options"])')
    return _LOADERS[name]


def load_dataset(name: str, root=None, splits: Sequence[str] = SPLITS, **options_) -> DataSplits:
    """Load dataset ``name`` (see :func:`list_datasets`); only the requested ``splits`` are built
    (the others are None). Unknown names and options raise ValueError listing the valid ones."""
    fn = _loader(name)
    if isinstance(splits, str):
        splits = (splits,)
    splits = tuple(splits)
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits or len(set(splits)) != len(splits):
        raise ValueError(f'splits must be distinct names from {list(SPLITS)}, got {list(splits)}')
    valid = options(name)
    unknown = [k for k in options_ if k not in valid]
    if unknown:
        raise ValueError(f'unknown option(s) {unknown} for dataset {name!r}; valid: '
                         + ', '.join(f'{k}={v!r}' for k, v in valid.items()))
    return fn(root=root, splits=splits, **_checked_options(name, fn, options_))


def _checked_options(name: str, fn, given: Dict[str, object]) -> Dict[str, object]:
    """``given`` with each value checked against the type its loader declares: a whole number where it takes an
    ``int`` (``n_train=1.9`` is an error, never 1 sample; ``1000.0`` and ``'1e3'`` are 1000), a number where it
    takes a ``float`` (numeric strings converted), a boolean where a ``bool``, a string where a ``str``; ValueError
    naming the option otherwise. (Each loader checks its own ranges.)"""
    hints = typing.get_type_hints(fn)
    out = dict(given)
    for k, v in given.items():
        hint = hints.get(k)
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = type(None) in typing.get_args(hint)
        kind = args[0] if optional and len(args) == 1 else hint
        what = f'dataset {name!r}: option {k}'
        if v is None and optional:
            continue
        if kind is int:
            out[k] = whole_number(v, what)
        elif kind is float:  # the loader checks the range (finite, >= 0, ...)
            if isinstance(v, bool) or not isinstance(v, (int, float)) and as_number(v) is None:
                raise ValueError(f'{what} must be a number{" or null" if optional else ""}, got {v!r}')
            out[k] = v if isinstance(v, (int, float)) else as_number(v)
        elif kind is bool and not isinstance(v, bool):
            raise ValueError(f'{what} must be true or false, got {v!r}')
        elif kind is str and not isinstance(v, str):
            raise ValueError(f'{what} must be a string, got {v!r}')
        elif typing.get_origin(kind) is tuple and all(a is int for a in typing.get_args(kind)):
            if not isinstance(v, (list, tuple)) or len(v) != len(typing.get_args(kind)):
                raise ValueError(f'{what} must be {len(typing.get_args(kind))} whole numbers, got {v!r}')
            out[k] = tuple(whole_number(x, what) for x in v)
    return out
