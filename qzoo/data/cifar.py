"""CIFAR-10: ``cifar10-jpeg75`` (the local JPEG-75 pack) and ``cifar10`` (torchvision's original).

``cifar10-jpeg75`` reads ``<root>/cifar10-jpeg75.npz``: a 623-byte JFIF header shared by every
image plus the concatenated entropy-coded scans (image i = header + scans[off[i]:off[i+1]]).
Every image is decoded once with ``torchvision.io.decode_jpeg`` (libjpeg-turbo, on the CPU:
this decoder's pixels are the dataset; nvJPEG's IDCT may differ) and the decoded uint8 arrays
are cached in ``$QZOO_CACHE`` (default ``~/.cache/qzoo``) as
``cifar10-jpeg75/<source sha256>-<split>.npz`` with the SHA-256 of their content
(:func:`~qzoo.data._common.sha256_array` of images and labels). A cached split is used only if
its images are uint8 (N, 3, 32, 32) with N the source's image count, its labels equal the
source's, and its content digest matches; otherwise it is decoded again and rewritten (with a
warning naming the file). ``info['decode_cache']`` says per split whether the cache was used.

Labels must be integers in [0, 10) (a :class:`~qzoo.errors.DataError` naming the file and key
otherwise), in the source file as in torchvision's ``cifar10``.

Split rule (both datasets): the 50,000 training images give a fixed 45,000 / 5,000
train / val split, stratified per class (500 val images per class), see
:data:`qzoo.data._common.STRATIFIED_RULE`, ``split_seed`` 0; the 10,000 test images are only
``test``. The repository ships the test split (``data/cifar10-jpeg75-test.npz``, the source's
format and bytes), used when the full file is missing and only ``test`` is asked for.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import DataError
from ._common import (STRATIFIED_RULE, Split, cache_dir, check_labels, check_pack, data_root, load_npz, missing,
                      only_test, repo_pack, root_source, save_npz_atomic, sha256_array, sha256_file, stratified_holdout)
from .splits import DataSplits, add_size_info

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']
JPEG_FILE = 'cifar10-jpeg75.npz'
TEST_PACK = 'cifar10-jpeg75-test.npz'
VAL_FRACTION = 0.1  # 5,000 of the 50,000 training images
SPLIT_RULE = (f'train/val = 90/10 of the training images (45,000 / 5,000 of 50,000): {STRATIFIED_RULE}; '
              f'test = the test images (10,000)')
JPEG_SOURCE = ('It is the shared qzoo data file (CIFAR-10 re-encoded as JPEG quality 75, see '
               '../shared/README.md); copy it into the data folder.')


def _keys(split: str):
    return [f'{split}_scans', f'{split}_offsets', f'{split}_labels']


def decode_jpeg_split(header: np.ndarray, scans: np.ndarray, offsets: np.ndarray, path: Path = None) -> np.ndarray:
    """Decode ``header + scans[offsets[i]:offsets[i+1]]`` for every i to uint8 (N, 3, H, W)."""
    from torchvision.io import decode_jpeg, ImageReadMode
    n = len(offsets) - 1
    if n < 0 or offsets[0] != 0 or offsets[-1] != len(scans) or np.any(np.diff(offsets) <= 0):
        raise DataError(f'{path}: offsets do not index the scans (first {offsets[:1]}, last {offsets[-1:]}, '
                         f'{len(scans)} scan bytes): the file is corrupt; copy it again')
    head = header.tobytes()
    blobs = [torch.frombuffer(bytearray(head + scans[offsets[i]:offsets[i + 1]].tobytes()), dtype=torch.uint8)
             for i in range(n)]
    out = []
    for s in range(0, n, 8192):
        try:
            imgs = decode_jpeg(blobs[s:s + 8192], mode=ImageReadMode.RGB)
        except RuntimeError as e:
            raise DataError(f'{path}: a JPEG in images {s}..{min(n, s + 8192) - 1} does not decode ({e}); '
                             f'the file is corrupt: copy it again') from e
        out.append(torch.stack(imgs).numpy())
    return np.concatenate(out) if out else np.zeros((0, 3, 32, 32), np.uint8)


def _source_labels(path: Path, split: str) -> Tuple[int, np.ndarray]:
    """(image count, checked int64 labels) of one split of a JPEG pack."""
    raw = load_npz(path, [f'{split}_offsets', f'{split}_labels'],
                   what='the cifar10-jpeg75 format (see ../shared/README.md)')
    y = check_labels(raw[f'{split}_labels'], len(CLASSES), f'{path}, key {split}_labels')
    n = len(raw[f'{split}_offsets']) - 1
    if len(y) != n:
        raise DataError(f'{path}: {n} {split} images (key {split}_offsets) but {len(y)} labels (key {split}_labels); '
                        f'the file is corrupt: copy it again')
    return n, y


def _cache_problem(cpath: Path, n: int, labels: np.ndarray) -> Tuple[Optional[str], Optional[Dict[str, np.ndarray]]]:
    """(None, arrays) when the cached split at ``cpath`` holds ``n`` uint8 (3, 32, 32) images, the
    source's ``labels`` and a matching content digest; (what is wrong, None) otherwise."""
    try:
        d = load_npz(cpath, ['x', 'y', 'sha256'])
    except DataError as e:
        return str(e), None
    x, y = d['x'], d['y']
    if x.dtype != np.uint8 or x.shape != (n, 3, 32, 32):
        return f'images are {x.dtype} {x.shape}, expected uint8 {(n, 3, 32, 32)}', None
    if y.dtype != np.int64 or y.shape != (n,) or not np.array_equal(y, labels):
        return f'labels ({y.dtype} {y.shape}) differ from the source\'s {n} labels', None
    if str(d['sha256']) != sha256_array(x, y):
        return 'content does not match the SHA-256 recorded when it was written', None
    return None, {'x': x, 'y': y}


def _decoded(path: Path, split: str, digest: str, use_cache: bool, status: Dict[str, str]) -> Dict[str, np.ndarray]:
    """{'x', 'y'} of one split of a JPEG pack, through the checked decode cache; ``status[split]``
    records 'cached', 'decoded and cached', 'rebuilt (<why>)' or 'decoded (cache off)'."""
    n, labels = _source_labels(path, split)
    cpath = cache_dir() / 'cifar10-jpeg75' / f'{digest}-{split}.npz'
    why = None
    if use_cache and cpath.exists():
        why, arrays = _cache_problem(cpath, n, labels)
        if why is None:
            status[split] = 'cached'
            return arrays
        warnings.warn(f'decoded-image cache {cpath} is not a valid copy of the {split} split of {path} ({why}); '
                      f'decoding again and rewriting it', RuntimeWarning, stacklevel=3)
    raw = load_npz(path, ['header', f'{split}_scans', f'{split}_offsets'],
                   what='the cifar10-jpeg75 format (see ../shared/README.md)')
    x = decode_jpeg_split(raw['header'], raw[f'{split}_scans'], raw[f'{split}_offsets'], path)
    if x.shape[1:] != (3, 32, 32):
        raise DataError(f'{path}: the {split} JPEGs decode to {x.shape[1:]} images, expected (3, 32, 32); the file '
                        f'is not cifar10-jpeg75: copy it again')
    status[split] = 'decoded (cache off)'
    if use_cache:
        try:
            save_npz_atomic(cpath, x=x, y=labels, sha256=np.array(sha256_array(x, labels)))
            status[split] = f'rebuilt ({why})' if why else 'decoded and cached'
        except OSError:
            pass  # an unwritable cache only costs time
    return {'x': x, 'y': labels}


def load_cifar10_jpeg75(root=None, splits: Sequence[str] = ('train', 'val', 'test'), split_seed: int = 0,
                        cache: bool = True) -> DataSplits:
    """CIFAR-10 as JPEG quality 75 (the shared ``cifar10-jpeg75.npz``); options ``split_seed``
    (train/val split seed, default 0) and ``cache`` (decoded-array cache, default True)."""
    t0 = time.perf_counter()
    base = data_root(root)
    path = base if base.suffix == '.npz' else base / JPEG_FILE
    info = dict(split_rule=SPLIT_RULE,
                split_seed=split_seed, options=dict(split_seed=split_seed, cache=cache),
                decoder='torchvision.io.decode_jpeg (libjpeg-turbo, CPU), mode RGB')
    if not path.exists():
        if not only_test(splits):
            raise missing(path, f'the CIFAR-10 JPEG-75 file {JPEG_FILE} (the repository ships only its test split, '
                                f'data/{TEST_PACK}, enough for splits=("test",))', JPEG_SOURCE, root_source(root))
        path = repo_pack(TEST_PACK)
        digest = check_pack(path)
        info['fallback'] = f'{path} (shipped test split; {path.parent / "MANIFEST.json"} records its source)'
    else:
        digest = sha256_file(path)
    info['source'] = str(path)
    info['source_sha256'] = digest
    meta = load_npz(path, ['classes'])
    classes = [str(c) for c in meta['classes']]
    if classes != CLASSES:
        raise DataError(f'{path}: classes {classes} are not CIFAR-10\'s {CLASSES}')
    out, status = {}, {}
    info['decode_cache'] = status
    if {'train', 'val'} & set(splits):
        d = _decoded(path, 'train', digest, cache, status)
        tr, va = stratified_holdout(d['y'], int(round(VAL_FRACTION * len(d['y']))), split_seed)
        info['split_sha256'] = sha256_array(tr, va)
        for s, idx in (('train', tr), ('val', va)):
            if s in splits:
                out[s] = Split(torch.from_numpy(np.ascontiguousarray(d['x'][idx])), torch.from_numpy(d['y'][idx]),
                               meta={'source_split': 'train', 'source_index': torch.from_numpy(idx)})
    if 'test' in splits:
        d = _decoded(path, 'test', digest, cache, status)
        out['test'] = Split(torch.from_numpy(d['x']), torch.from_numpy(d['y']),
                            meta={'source_split': 'test', 'source_index': torch.arange(len(d['y']))})
    name = 'cifar10-jpeg75' + (f'-split{split_seed}' if split_seed != 0 else '')
    info['load_seconds'] = round(time.perf_counter() - t0, 3)
    ds = DataSplits(name=name, task='classification', num_classes=10, in_shape=(3, 32, 32), classes=list(CLASSES),
                    normalize=(CIFAR_MEAN, CIFAR_STD), augment='crop4-flip', info=info, **out)
    return add_size_info(ds)


def write_test_pack(src: Path, dst: Path) -> None:
    """Copy the test split of a cifar10-jpeg75 file into ``dst`` in the same format (header,
    test_scans, test_offsets, test_labels, classes), bytes unchanged."""
    raw = load_npz(src, ['header', 'classes'] + _keys('test'))
    save_npz_atomic(dst, **raw)


def load_cifar10(root=None, splits: Sequence[str] = ('train', 'val', 'test'), split_seed: int = 0,
                 download: bool = False) -> DataSplits:
    """The original CIFAR-10 through ``torchvision.datasets.CIFAR10(root)`` (needs its download:
    ``download=True`` with internet access). Same 45,000 / 5,000 split rule as ``cifar10-jpeg75``."""
    from torchvision.datasets import CIFAR10
    base = data_root(root)
    info = dict(split_rule=SPLIT_RULE, split_seed=split_seed,
                options=dict(split_seed=split_seed, download=download), source=str(base / 'cifar-10-batches-py'))
    data = {}
    for train in ((True,) if {'train', 'val'} & set(splits) else ()) + ((False,) if 'test' in splits else ()):
        try:
            ds = CIFAR10(str(base), train=train, download=download)
        except RuntimeError as e:
            raise FileNotFoundError(
                f'{base / "cifar-10-batches-py"} not found or incomplete ({e}): torchvision\'s CIFAR-10 needs a '
                f'download (load_dataset("cifar10", download=True) on a machine with internet access, into root=... '
                f'or $QZOO_DATA). Without internet use "cifar10-jpeg75", the local JPEG-75 copy (report it under '
                f'that name: its pixels differ from the original).') from e
        where = f'{base / "cifar-10-batches-py"} ({"training" if train else "test"} batches, torchvision targets)'
        x = np.asarray(ds.data)
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
            raise DataError(f'{where}: images are {x.dtype} {x.shape}, expected uint8 (N, 32, 32, 3); download it '
                            f'again')
        data[train] = (x.transpose(0, 3, 1, 2).copy(), check_labels(np.asarray(ds.targets), len(CLASSES), where))
    out = {}
    if True in data:
        x, y = data[True]
        tr, va = stratified_holdout(y, int(round(VAL_FRACTION * len(y))), split_seed)
        info['split_sha256'] = sha256_array(tr, va)
        for s, idx in (('train', tr), ('val', va)):
            if s in splits:
                out[s] = Split(torch.from_numpy(x[idx]), torch.from_numpy(y[idx]),
                               meta={'source_split': 'train', 'source_index': torch.from_numpy(idx)})
    if False in data:
        x, y = data[False]
        out['test'] = Split(torch.from_numpy(x), torch.from_numpy(y),
                            meta={'source_split': 'test', 'source_index': torch.arange(len(y))})
    name = 'cifar10' + (f'-split{split_seed}' if split_seed != 0 else '')
    ds = DataSplits(name=name, task='classification', num_classes=10, in_shape=(3, 32, 32), classes=list(CLASSES),
                    normalize=(CIFAR_MEAN, CIFAR_STD), augment='crop4-flip', info=info, **out)
    return add_size_info(ds)
