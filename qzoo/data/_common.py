"""Pieces shared by the dataset loaders: a split's dataclass, where data and caches live,
version-independent seeded splits, checked file access, content checks (labels, finite
values, binary masks) and clear errors: :class:`~qzoo.errors.DataError` (a ValueError) for bad
content, FileNotFoundError for missing files."""
from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from torch import Tensor

from ..checkout import PACKAGE_PARENT
from ..checkout import require as require_checkout
from ..checkout import root as checkout_root
from ..errors import DataError
from ..fileio import atomic_open, sha256_file

SPLITS = ('train', 'val', 'test')

HOW_TO_POINT = ('set the environment variable QZOO_DATA to the folder that holds the data, or pass '
                'root=... to load_dataset')


# ----------------------------------------------------------------------------- results
@dataclass
class Split:
    """One split on the CPU.

    ``x``: images uint8 (N, C, H, W); signals / points float32. ``y``: labels int64 (N,),
    masks uint8 {0, 1} (N, 1, H, W), regression targets float32 (N, 1).
    ``meta``: per-sample provenance (e.g. ``source_index``, ``start``, ``ids``)."""
    x: Tensor
    y: Tensor
    meta: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if len(self.x) != len(self.y):
            raise ValueError(f'x has {len(self.x)} samples but y has {len(self.y)}')

    def __len__(self) -> int:
        return len(self.x)


# ----------------------------------------------------------------------------- places
def data_root(root=None) -> Path:
    """``root`` if given, else ``$QZOO_DATA``, else ``<checkout>/../shared/data`` (the checkout of
    :func:`qzoo.checkout.root`; without one, beside the folder that holds the installed package)."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get('QZOO_DATA')
    return Path(env).expanduser() if env else (checkout_root() or PACKAGE_PARENT).parent / 'shared' / 'data'


def root_source(root=None) -> str:
    if root is not None:
        return 'root= argument'
    return 'QZOO_DATA' if os.environ.get('QZOO_DATA') else 'default <checkout>/../shared/data'


def cache_dir() -> Path:
    """``$QZOO_CACHE`` or ``~/.cache/qzoo``."""
    env = os.environ.get('QZOO_CACHE')
    return Path(env).expanduser() if env else Path.home() / '.cache' / 'qzoo'


def missing(path: Path, what: str, source: str, root_from: str = '') -> FileNotFoundError:
    where = f' (data root from {root_from})' if root_from else ''
    return FileNotFoundError(f'{path} not found{where}: expected {what}. {source} Then {HOW_TO_POINT}.')


# ----------------------------------------------------------------------------- hashing, seeds
def sha256_array(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a.numpy() if isinstance(a, Tensor) else a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def hash_rank(seed: int, keys: Iterable) -> np.ndarray:
    """A seeded, library-version-independent random order: the 64-bit BLAKE2b digest of
    ``f'{seed}:{key}'`` for each key (sort by it to shuffle)."""
    return np.array([int.from_bytes(hashlib.blake2b(f'{seed}:{k}'.encode(), digest_size=8).digest(), 'big')
                     for k in keys], dtype=np.uint64)


def mix_seed(*parts) -> int:
    """A 63-bit seed from any tuple of ints/strings (for torch.Generator / numpy SeedSequence)."""
    d = hashlib.blake2b(':'.join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(d, 'big') & ((1 << 63) - 1)


def apportion(total: int, weights: Sequence[float]) -> List[int]:
    """Integers proportional to ``weights`` summing exactly to ``total`` (largest remainder;
    ties go to the earlier entry)."""
    w = np.asarray(weights, dtype=np.float64)
    exact = total * w / w.sum()
    base = np.floor(exact).astype(int)
    order = sorted(range(len(w)), key=lambda i: (-(exact[i] - base[i]), i))
    for i in order[:total - base.sum()]:
        base[i] += 1
    return base.tolist()


STRATIFIED_RULE = ('per class, indices ranked by the 64-bit BLAKE2b digest of "<seed>:<index>" (index into '
                   'the source training set); the first k_c of class c go to val, with k_c proportional to '
                   'the class size (largest remainder) and summing to n_val; the rest go to train; both '
                   'splits keep source order')


def stratified_holdout(labels: np.ndarray, n_val: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx), sorted, following :data:`STRATIFIED_RULE`."""
    labels = np.asarray(labels)
    if not 0 <= n_val <= len(labels):
        raise ValueError(f'n_val={n_val} must be in [0, {len(labels)}]')
    classes = np.unique(labels)
    per = apportion(n_val, [np.sum(labels == c) for c in classes])
    rank = hash_rank(seed, range(len(labels)))
    val = []
    for c, k in zip(classes, per):
        idx = np.flatnonzero(labels == c)
        val.append(idx[np.argsort(rank[idx], kind='stable')[:k]])
    val = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    train = np.setdiff1d(np.arange(len(labels)), val)
    return train.astype(np.int64), val.astype(np.int64)


def group_split(groups: Sequence[str], fractions: Sequence[float], seed: int) -> Dict[str, List[str]]:
    """Split distinct group keys into train/val/test: keys ranked by BLAKE2b("<seed>:<key>"), test
    takes the first round(f_test * n), val the next round(f_val * n) (each at least 1 when there
    are 3+ groups), train the rest. Lists come back sorted."""
    keys = sorted(set(groups))
    n = len(keys)
    f_train, f_val, f_test = fractions
    n_test, n_val = int(round(f_test * n)), int(round(f_val * n))
    if n >= 3:
        n_test, n_val = max(n_test, 1 if f_test > 0 else 0), max(n_val, 1 if f_val > 0 else 0)
    if n_test + n_val > n:
        raise ValueError(f'cannot split {n} groups by fractions {tuple(fractions)}')
    order = [keys[i] for i in np.argsort(hash_rank(seed, keys), kind='stable')]
    return {'test': sorted(order[:n_test]), 'val': sorted(order[n_test:n_test + n_val]),
            'train': sorted(order[n_test + n_val:])}


# ----------------------------------------------------------------------------- files
#: the most bytes :func:`load_npz` reads from one .npz (the arrays asked for, uncompressed): 1 GiB; the zoo's
#: largest, the decoded CIFAR-10 training images, is 154 MB
MAX_NPZ_BYTES = 1 << 30
_CORRUPT = 'it may be truncated or corrupt: copy it again from its source'


def load_npz(path: Path, keys: Optional[Sequence[str]], what: str = '',
             limit: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Read ``keys`` (None: every array) from an .npz. Before anything is decompressed, the arrays' sizes (the
    zip members' uncompressed sizes, and the shape and dtype each array's header declares) are checked to fit
    ``limit`` bytes in all (default :data:`MAX_NPZ_BYTES`): a compressed file can claim gigabytes in a few
    kilobytes. A truncated / corrupt / oversized file or a missing key is a :class:`DataError` naming the file."""
    path = Path(path)
    limit = MAX_NPZ_BYTES if limit is None else limit
    try:
        with np.load(path, allow_pickle=False) as z:
            have = set(z.files)
            keys = sorted(have) if keys is None else list(keys)
            lost = [k for k in keys if k not in have]
            if lost:
                raise DataError(f'{path} lacks key(s) {lost} (it has {sorted(have)}); expected {what or "keys " + str(list(keys))}. '
                                 f'The file is not the expected one: copy it again from its source.')
            _check_sizes(path, z.zip, keys, limit)
            return {k: z[k] for k in keys}
    except FileNotFoundError:
        raise
    except DataError:
        raise
    except AttributeError as e:  # np.load returned an array: a .npy file, not an .npz
        raise DataError(f'{path} is not an .npz archive ({e}); {_CORRUPT}') from e
    except (ValueError, zipfile.BadZipFile, EOFError, OSError, KeyError) as e:
        raise DataError(f'{path} is not a readable .npz ({type(e).__name__}: {e}); {_CORRUPT}') from e


def _check_sizes(path: Path, zf: zipfile.ZipFile, keys: Sequence[str], limit: int) -> None:
    """DataError unless the members of ``keys`` hold at most ``limit`` bytes uncompressed in all and each array
    header's shape x itemsize fits its member (read from the headers only)."""
    names = set(zf.namelist())
    infos = {k: zf.getinfo(f'{k}.npy' if f'{k}.npy' in names else k) for k in keys}
    total = sum(i.file_size for i in infos.values())
    if total > limit:
        raise DataError(f'{path}: the arrays {list(keys)} hold {total:,} bytes uncompressed, more than qzoo reads '
                        f'from one file ({limit:,} bytes); it is not the expected file: copy it again from its source')
    for k, info in infos.items():
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
            need = math.prod(shape) * dtype.itemsize
            if need > info.file_size:
                raise DataError(f'{path}, key {k}: its header declares a {dtype} array of shape {shape} '
                                f'({need:,} bytes), but the file holds {info.file_size:,} bytes for it; {_CORRUPT}')


def save_npz_atomic(path: Path, compressed: bool = False, **arrays) -> None:
    """Write an .npz atomically (readers see the old file or the new one, never a partial one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, 'wb') as f:
        (np.savez_compressed if compressed else np.savez)(f, **arrays)


def repo_data(what: str = "reading the repository's data/ folder") -> Path:
    """The repository's own ``data/`` folder (shipped test packs, fixed split files) in the checkout of
    :func:`qzoo.checkout.root`: the one qzoo runs from, else the current directory (an installed wheel run
    inside a clone). Without a checkout, a FileNotFoundError that says ``what`` needs one and how to get it."""
    return require_checkout(what) / 'data'


def repo_pack(name: str) -> Path:
    """``name`` in the repository's ``data/`` folder (see :func:`repo_data`)."""
    return repo_data(f"reading data/{name} (a file of the repository's data/ folder, which the installed "
                     f"package does not include)") / name


def check_pack(path: Path) -> str:
    """Verify a shipped pack against ``data/MANIFEST.json``; returns its sha256."""
    if not path.exists():
        raise FileNotFoundError(f'{path} (shipped with the repository) is missing: restore it with git '
                                f'(git checkout -- data/) or regenerate it with data/make_packs.py')
    digest = sha256_file(path)
    manifest = path.parent / 'MANIFEST.json'
    if manifest.exists():
        want = json.loads(manifest.read_text()).get('files', {}).get(path.name, {}).get('sha256')
        if want and want != digest:
            raise DataError(f'{path} does not match data/MANIFEST.json (sha256 {digest[:12]}..., expected '
                             f'{want[:12]}...): restore it with git (git checkout -- data/{path.name})')
    return digest


def only_test(splits: Sequence[str]) -> bool:
    return set(splits) <= {'test'}


# ----------------------------------------------------------------------------- content checks
def check_labels(y: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    """``y`` as int64 after checking it is a 1-D array of integers in ``[0, num_classes)``; a
    :class:`DataError` naming ``where`` (file and key) and the first offending value otherwise."""
    y = np.asarray(y)
    fix = 'the file is corrupt or not the expected one: copy it again from its source'
    if y.ndim != 1:
        raise DataError(f'{where}: labels must be a 1-D array, found shape {y.shape}; {fix}')
    if y.dtype.kind not in 'iu':
        bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y))) if y.dtype.kind == 'f' else np.arange(len(y))
        example = f' (e.g. {y[bad[0]].item()!r} at index {int(bad[0])})' if len(bad) else ''
        raise DataError(f'{where}: labels must be integers in [0, {num_classes}), found dtype {y.dtype}{example}; '
                        f'{fix}')
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if len(bad):
        raise DataError(f'{where}: labels must be integers in [0, {num_classes}), found {int(y[bad[0]])} at index '
                        f'{int(bad[0])} ({len(bad)} label(s) out of range); {fix}')
    return y.astype(np.int64)


def check_finite(x: np.ndarray, where: str, fix: str = 'copy the file again from its source') -> None:
    """Raise a :class:`DataError` naming ``where`` unless every value of ``x`` is finite."""
    finite = np.isfinite(x)
    if not finite.all():
        i = int(np.flatnonzero(~finite.reshape(-1))[0])
        raise DataError(f'{where}: expected finite values, found {x.reshape(-1)[i]} at flat index {i} '
                        f'({int((~finite).sum())} non-finite value(s)); {fix}')


def check_binary(m: np.ndarray, where: str) -> None:
    """Raise a :class:`DataError` naming ``where`` unless mask array ``m`` is uint8 with values in {0, 1}."""
    if m.dtype != np.uint8:
        raise DataError(f'{where}: masks must be uint8 0/1, found dtype {m.dtype}; copy the file again')
    bad = np.flatnonzero(m.reshape(-1) > 1)
    if len(bad):
        raise DataError(f'{where}: masks must hold only 0 and 1, found {int(m.reshape(-1)[bad[0]])} at flat index '
                        f'{int(bad[0])} ({len(bad)} value(s)); copy the file again')
