"""What :func:`qzoo.data.load_dataset` returns: :class:`DataSplits`, the loaded splits of one dataset
(each a :class:`~qzoo.data.Split`) with its name, task, classes, normalisation, augmentation and
provenance, and a :class:`~qzoo.data.BatchLoader` for each split with the dataset's defaults."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..errors import DataError
from ._common import SPLITS, Split
from .loader import BatchLoader

__all__ = ['DataSplits', 'add_size_info', 'split_counts']


@dataclass
class DataSplits:
    """What :func:`qzoo.data.load_dataset` returns. ``name`` is the precise name of the data
    (options that change it included), to be used in cards, CSVs and plots."""
    name: str
    task: str
    num_classes: int
    in_shape: Tuple[int, ...]
    classes: Optional[List[str]]
    train: Optional[Split] = None
    val: Optional[Split] = None
    test: Optional[Split] = None
    normalize: Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]] = None
    augment: Optional[str] = None
    info: Dict[str, Any] = field(default_factory=dict)

    def splits(self) -> Dict[str, Split]:
        """The loaded splits by name."""
        return {s: getattr(self, s) for s in SPLITS if getattr(self, s) is not None}

    def loader(self, split: str, batch_size: int, **kwargs) -> BatchLoader:
        """A :class:`~qzoo.data.BatchLoader` for one split with this dataset's defaults:
        ``'train'`` shuffles and uses ``augment``; every split uses ``normalize``. Keyword
        arguments override (``device=``, ``seed=``, ``rank=``, ...)."""
        s = getattr(self, split, None) if split in SPLITS else None
        if s is None:
            raise ValueError(f'{self.name} has no {split!r} split loaded (loaded: {list(self.splits())})')
        train = split == 'train'
        kw = dict(shuffle=train, augment=self.augment if train else None, normalize=self.normalize)
        kw.update(kwargs)
        return BatchLoader(s, batch_size, **kw)

    def require_samples(self, splits: Sequence[str], why: str) -> None:
        """Raise a :class:`~qzoo.errors.DataError` unless every split of ``splits`` is loaded and holds at least one
        sample (``why`` says what needs them): an empty split trains, selects and scores nothing, and every metric of
        it would be a made-up 0."""
        empty = [s for s in splits if getattr(self, s, None) is None or len(getattr(self, s)) == 0]
        if not empty:
            return
        options = self.info.get('options') or {}
        sizes = [f'n_{s}' for s in empty if f'n_{s}' in options]
        fix = (f'set {" and ".join(f"data_args.{k}" for k in sizes)} to 1 or more' if sizes else
               'choose options that leave samples in every split (a smaller stride, another split file)')
        raise DataError(f'{self.name}: the {" and ".join(empty)} split{"s" if len(empty) > 1 else ""} '
                        f'{"hold" if len(empty) > 1 else "holds"} no samples (options {options}); {why}. Fix: {fix}')

    def summary(self) -> str:
        """A small printable table: samples per class (or size / target statistics) and split."""
        splits = self.splits()
        head = f'{self.name} ({self.task}, in_shape={tuple(self.in_shape)}'
        head += f', {self.num_classes} classes)' if self.task == 'classification' else ')'
        names = list(splits)
        rows: List[List[str]] = []
        if self.task == 'classification':
            classes = self.classes or [str(i) for i in range(self.num_classes)]
            counts = {s: torch.bincount(sp.y, minlength=self.num_classes).tolist() for s, sp in splits.items()}
            for c, cname in enumerate(classes):
                rows.append([f'{c} {cname}'] + [str(counts[s][c]) for s in names])
            rows.append(['total'] + [str(len(splits[s])) for s in names])
        elif self.task == 'segmentation':
            rows.append(['images'] + [str(len(splits[s])) for s in names])
            rows.append(['foreground %'] + [f'{100 * sp.y.float().mean().item():.1f}' if len(sp) else '-'
                                            for sp in splits.values()])
        else:
            rows.append(['samples'] + [str(len(splits[s])) for s in names])
            rows.append(['y mean'] + [f'{sp.y.mean().item():.4g}' if len(sp) else '-' for sp in splits.values()])
            rows.append(['y std'] + [f'{sp.y.std().item():.4g}' if len(sp) > 1 else '-' for sp in splits.values()])
        table = [[''] + names] + rows
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
        lines = [head]
        for i, r in enumerate(table):
            lines.append('  '.join(v.ljust(widths[0]) if j == 0 else v.rjust(widths[j]) for j, v in enumerate(r)))
            if i == 0:
                lines.append('  '.join('-' * w for w in widths))
        return '\n'.join(lines)

    def __repr__(self) -> str:
        sizes = ', '.join(f'{s}={len(sp)}' for s, sp in self.splits().items())
        return (f'DataSplits(name={self.name!r}, task={self.task!r}, num_classes={self.num_classes}, '
                f'in_shape={tuple(self.in_shape)}, {sizes})')


def split_counts(y: Tensor, num_classes: int) -> List[int]:
    return torch.bincount(y.reshape(-1).long(), minlength=num_classes).tolist()


def add_size_info(ds: DataSplits) -> DataSplits:
    """Fill ``info['sizes']`` (and ``info['class_counts']`` for classification)."""
    ds.info['sizes'] = {s: len(sp) for s, sp in ds.splits().items()}
    if ds.task == 'classification':
        classes = ds.classes or [str(i) for i in range(ds.num_classes)]
        ds.info['class_counts'] = {s: dict(zip(classes, split_counts(sp.y, ds.num_classes)))
                                   for s, sp in ds.splits().items()}
    return ds
