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
from typing import Callable, Dict, List, Sequence

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
    return fn(root=root, splits=splits, **options_)
