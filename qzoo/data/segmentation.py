"""Binary segmentation: ``dsb2018-96`` (Kaggle 2018 Data Science Bowl nuclei, 96 x 96) and
``carvana`` (Kaggle Carvana Image Masking layout).

dsb2018-96: ``<root>/dsb2018_96/images/<id>.png`` (RGB) and ``masks/0/<id>.png`` (gray, soft
edges from resizing; foreground = value > 127). The split is fixed and kept in the repository,
``data/dsb2018-96-split.json`` (made once by :func:`make_dsb_split`: ids ranked by
BLAKE2b("<seed>:<id>"), seed 0, first 67 test, next 67 val, remaining 536 train); loading
checks that every listed id exists. The repository ships the test split
(``data/dsb2018-96-test.npz``), used when the images are missing and only ``test`` is asked for.

carvana: ``<root>/carvana/train/<car>_<view>.jpg`` and ``train_masks/<car>_<view>_mask.gif``
(the Kaggle layout; images 1918 x 1280). Resized to ``size`` = (H, W), default (256, 384),
which keeps the 2:3 aspect ratio: images bilinear, masks binarised (> 127 after conversion to
gray), resized bilinear as 0/255 and binarised again at 127. Split 80/10/10 by car (all views of
a car in one split): cars ranked by BLAKE2b("<seed>:<car>"), seed 0, see
:func:`qzoo.data._common.group_split`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from ..bounds import MAX_JSON_BYTES, read_bounded
from ..errors import DataError
from ._common import (Split, check_binary, check_pack, data_root, group_split, hash_rank, load_npz, missing, only_test,
                      repo_pack, root_source, save_npz_atomic, sha256_file)
from .splits import DataSplits, add_size_info

DSB_FOLDER = 'dsb2018_96'
DSB_SPLIT_FILE = 'dsb2018-96-split.json'
DSB_TEST_PACK = 'dsb2018-96-test.npz'
DSB_SIZE = 96
#: the largest carvana ``size`` side
MAX_SIDE = 4096
#: the most pixels an image file may declare (4096 x 4096)
MAX_PIXELS = MAX_SIDE * MAX_SIDE
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
DSB_SOURCE = ('It is the 670 stage-1 training images of the Kaggle 2018 Data Science Bowl resized to 96x96 '
              '(images/<id>.png, masks/0/<id>.png), in the shared qzoo data folder.')
DSB_RULE = ('ids (file stems) ranked by the 64-bit BLAKE2b digest of "<seed>:<id>"; the first round(0.1 n) are '
            'test, the next round(0.1 n) val, the rest train; each list sorted')
CARVANA_SOURCE = ('It is the Kaggle "Carvana Image Masking Challenge" training data (train.zip and '
                  'train_masks.zip, unpacked as train/ and train_masks/).')


def _rgb(img) -> np.ndarray:
    """uint8 (3, H, W) from any PIL mode (gray, palette, RGBA: alpha dropped)."""
    if img.mode != 'RGB':
        img = img.convert('RGB')
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def _binary(img, threshold: int = 127) -> np.ndarray:
    """uint8 {0, 1} (1, H, W): gray value > threshold."""
    if img.mode != 'L':
        img = img.convert('L')
    return (np.asarray(img) > threshold).astype(np.uint8)[None]


def _open(path: Path):
    """The decoded image at ``path``; its size (from the header) is checked before it is decoded: at most
    :data:`MAX_PIXELS`, far above the datasets' images (96 x 96, 1918 x 1280), since a small compressed file can
    decode to gigabytes."""
    from PIL import Image
    if path.exists() and not path.is_file():
        raise DataError(f'{path} is not a regular file (a FIFO or device can block or never end); copy it again')
    try:
        img = Image.open(path)
        if img.size[0] * img.size[1] > MAX_PIXELS:
            raise DataError(f'{path} declares {img.size[0]} x {img.size[1]} pixels, more than a dataset image may '
                            f'have ({MAX_PIXELS:,}); it is not the expected file: copy it again')
        img.load()
        return img
    except (FileNotFoundError, DataError):
        raise
    except Exception as e:  # PIL raises several types for truncated / non-image files
        raise DataError(f'{path} is not a readable image ({type(e).__name__}: {e}); copy it again') from e


# ----------------------------------------------------------------------------- dsb2018-96
def make_dsb_split(ids: Sequence[str], seed: int = 0) -> Dict:
    """The split document for ``ids`` (what ``data/dsb2018-96-split.json`` holds)."""
    ids = sorted(ids)
    n = len(ids)
    order = [ids[i] for i in np.argsort(hash_rank(seed, ids), kind='stable')]
    n_test = n_val = int(round(0.1 * n))
    split = {'train': sorted(order[n_test + n_val:]), 'val': sorted(order[n_test:n_test + n_val]),
             'test': sorted(order[:n_test])}
    return {'dataset': 'dsb2018-96', 'seed': seed, 'rule': DSB_RULE,
            'counts': {k: len(v) for k, v in split.items()}, 'ids': split}


def read_dsb_split(path: Path = None) -> Dict:
    """The fixed split document (default: the repository's, checked against data/MANIFEST.json)."""
    if path is None:
        path = repo_pack(DSB_SPLIT_FILE)
        check_pack(path)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f'{path} (a dsb2018-96 split file) is missing')
    text = read_bounded(path, MAX_JSON_BYTES, 'split file', DataError, 'give a JSON split file (see make_dsb_split)')
    try:
        doc = json.loads(text)
        ids = doc['ids']
        assert all(isinstance(ids[s], list) for s in ('train', 'val', 'test'))
    except Exception as e:
        raise DataError(f'{path} is not a valid split file ({type(e).__name__}: {e}); restore it with git') from e
    seen = [i for s in ('train', 'val', 'test') for i in ids[s]]
    if len(seen) != len(set(seen)):
        raise DataError(f'{path}: an id is listed twice (the splits must be disjoint); restore it with git')
    return doc


def _check_dsb_pack(path: Path, z: Dict[str, np.ndarray], n: int) -> None:
    """Images uint8 (n, 3, 96, 96) and masks uint8 {0, 1} (n, 1, 96, 96), else a DataError."""
    for key, shape in (('images', (n, 3, DSB_SIZE, DSB_SIZE)), ('masks', (n, 1, DSB_SIZE, DSB_SIZE))):
        if z[key].dtype != np.uint8 or z[key].shape != shape:
            raise DataError(f'{path}, key {key}: {z[key].dtype} {z[key].shape}, expected uint8 {shape}; restore it '
                            f'(git checkout -- data/{path.name})')
    check_binary(z['masks'], f'{path}, key masks')


def dsb_ids(folder: Path) -> List[str]:
    return sorted(p.stem for p in (folder / 'images').glob('*.png'))


def load_dsb2018_96(root=None, splits: Sequence[str] = ('train', 'val', 'test'), split_file=None) -> DataSplits:
    """DSB 2018 nuclei at 96 x 96: images uint8 (N, 3, 96, 96), masks uint8 {0, 1} (N, 1, 96, 96).
    ``split_file``: another split document (JSON with ``ids`` per split); default the repository's."""
    t0 = time.perf_counter()
    base = data_root(root)
    folder = base / DSB_FOLDER if (base / DSB_FOLDER).is_dir() or not (base / 'images').is_dir() else base
    doc = read_dsb_split(split_file)
    spath = Path(split_file) if split_file is not None else repo_pack(DSB_SPLIT_FILE)
    info = dict(split_file=str(spath), split_file_sha256=sha256_file(spath), split_seed=doc.get('seed'),
                split_rule=doc.get('rule'), mask_rule='mask PNG gray value > 127 -> 1, else 0',
                options=dict(split_file=None if split_file is None else str(split_file)))
    out = {}
    if not (folder / 'images').is_dir():
        if not only_test(splits):
            raise missing(folder, f'the folder {DSB_FOLDER} with images/<id>.png and masks/0/<id>.png (the repository '
                                  f'ships only the test split, data/{DSB_TEST_PACK}, enough for splits=("test",))',
                          DSB_SOURCE, root_source(root))
        path = repo_pack(DSB_TEST_PACK)
        digest = check_pack(path)
        z = load_npz(path, ['ids', 'images', 'masks'])
        ids = [str(i) for i in z['ids']]
        if ids != doc['ids']['test']:
            raise DataError(f'{path}: its ids differ from the test ids of {spath} (the shipped pack holds the test '
                             f'split of data/{DSB_SPLIT_FILE}; another split needs the full {DSB_FOLDER} folder)')
        info.update(source=str(path), source_sha256=digest, fallback=f'{path} (shipped test split)')
        _check_dsb_pack(path, z, len(ids))
        if 'test' in splits:
            out['test'] = Split(torch.from_numpy(z['images']), torch.from_numpy(z['masks']), meta={'ids': ids})
    else:
        have = set(dsb_ids(folder))
        listed = [i for s in ('train', 'val', 'test') for i in doc['ids'][s]]
        lost = [i for i in listed if i not in have]
        lost_masks = [i for i in listed if i in have and not (folder / 'masks' / '0' / f'{i}.png').exists()]
        if lost or lost_masks:
            raise FileNotFoundError(
                f'{folder}: {len(lost)} image(s) and {len(lost_masks)} mask(s) listed in data/{DSB_SPLIT_FILE} are '
                f'missing (e.g. {(lost + lost_masks)[:3]}); expected images/<id>.png and masks/0/<id>.png for all '
                f'{len(listed)} ids. {DSB_SOURCE} Then {"set QZOO_DATA or pass root=..."}.')
        info.update(source=str(folder), unlisted_ids=len(have - set(listed)))
        for s in splits:
            ids = doc['ids'][s]
            x = np.zeros((len(ids), 3, DSB_SIZE, DSB_SIZE), np.uint8)
            y = np.zeros((len(ids), 1, DSB_SIZE, DSB_SIZE), np.uint8)
            for i, k in enumerate(ids):
                for arr, p, fn in ((x, folder / 'images' / f'{k}.png', _rgb),
                                   (y, folder / 'masks' / '0' / f'{k}.png', _binary)):
                    a = fn(_open(p))
                    if a.shape[1:] != (DSB_SIZE, DSB_SIZE):
                        raise DataError(f'{p} is {a.shape[2]}x{a.shape[1]}, expected {DSB_SIZE}x{DSB_SIZE} '
                                         f'(dsb2018-96 is the resized copy)')
                    arr[i] = a
            out[s] = Split(torch.from_numpy(x), torch.from_numpy(y), meta={'ids': list(ids)})
    info['load_seconds'] = round(time.perf_counter() - t0, 3)
    name = 'dsb2018-96' + ('' if split_file is None else f'-split{info["split_file_sha256"][:8]}')
    ds = DataSplits(name=name, task='segmentation', num_classes=1, in_shape=(3, DSB_SIZE, DSB_SIZE),
                    classes=None, normalize=HALF, augment='flip2d', info=info, **out)
    ds = add_size_info(ds)
    ds.info['foreground_fraction'] = {s: round(float(sp.y.float().mean()), 5) for s, sp in ds.splits().items()}
    return ds


def write_dsb_test_pack(folder: Path, dst: Path) -> None:
    """Write the test split (ids, images, masks, per-file sha256) of ``data/dsb2018-96-split.json``."""
    doc = read_dsb_split()
    ds = load_dsb2018_96(root=folder, splits=('test',))
    folder = Path(ds.info['source'])
    ids = doc['ids']['test']
    shas = [[sha256_file(folder / 'images' / f'{i}.png'), sha256_file(folder / 'masks' / '0' / f'{i}.png')]
            for i in ids]
    save_npz_atomic(dst, compressed=True, ids=np.array(ids), images=ds.test.x.numpy(), masks=ds.test.y.numpy(),
                    source_sha256=np.array(shas))


# ----------------------------------------------------------------------------- carvana
def car_of(image_id: str) -> str:
    """The car of a Carvana id ``<car>_<view>``."""
    return image_id.rsplit('_', 1)[0]


def load_carvana(root=None, splits: Sequence[str] = ('train', 'val', 'test'), size: Tuple[int, int] = (256, 384),
                 split_seed: int = 0) -> DataSplits:
    """Carvana car masks, resized to ``size`` = (H, W); split 80/10/10 by car."""
    from PIL import Image
    t0 = time.perf_counter()
    h, w = (int(v) for v in size)
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise ValueError(f'size must be (H, W) with whole numbers in [1, {MAX_SIDE}] (the images are 1918 x 1280), '
                         f'got {size}')
    base = data_root(root)
    folder = base / 'carvana' if (base / 'carvana').is_dir() or not (base / 'train').is_dir() else base
    imdir, mdir = folder / 'train', folder / 'train_masks'
    for d, what in ((imdir, 'train/<car>_<view>.jpg images'), (mdir, 'train_masks/<car>_<view>_mask.gif masks')):
        if not d.is_dir():
            raise missing(d, f'the Kaggle Carvana folder with {what}', CARVANA_SOURCE, root_source(root))
    ids = sorted(p.stem for p in imdir.glob('*.jpg'))
    if not ids:
        raise missing(imdir / '<car>_<view>.jpg', 'Carvana training images', CARVANA_SOURCE, root_source(root))
    lost = [i for i in ids if not (mdir / f'{i}_mask.gif').exists()]
    if lost:
        raise FileNotFoundError(f'{mdir}: no mask for {len(lost)} image(s) (e.g. {lost[0]}_mask.gif); expected '
                                f'train_masks/<id>_mask.gif for every train/<id>.jpg. {CARVANA_SOURCE}')
    cars = group_split([car_of(i) for i in ids], (0.8, 0.1, 0.1), split_seed)
    info = dict(source=str(folder), split_seed=split_seed,
                split_rule='80/10/10 by car (<car>_<view>: every view of a car in one split): cars ranked by the '
                           '64-bit BLAKE2b digest of "<seed>:<car>", first round(0.1 n) test, next round(0.1 n) val '
                           '(at least 1 each with 3+ cars), the rest train',
                resize=f'images bilinear to {h}x{w}; masks: gray > 127, resized bilinear as 0/255, > 127',
                mask_rule='mask gray value > 127 -> 1', options=dict(size=[h, w], split_seed=split_seed),
                cars={s: len(v) for s, v in cars.items()})
    out = {}
    for s in splits:
        keep = set(cars[s])
        sids = [i for i in ids if car_of(i) in keep]
        x = np.zeros((len(sids), 3, h, w), np.uint8)
        y = np.zeros((len(sids), 1, h, w), np.uint8)
        for n, i in enumerate(sids):
            img = _open(imdir / f'{i}.jpg').convert('RGB')
            x[n] = _rgb(img.resize((w, h), Image.BILINEAR))
            m = Image.fromarray(_binary(_open(mdir / f'{i}_mask.gif'))[0] * np.uint8(255))
            y[n] = _binary(m.resize((w, h), Image.BILINEAR))
        out[s] = Split(torch.from_numpy(x), torch.from_numpy(y), meta={'ids': sids})
    info['load_seconds'] = round(time.perf_counter() - t0, 3)
    name = f'carvana-{h}x{w}' + (f'-split{split_seed}' if split_seed != 0 else '')
    ds = DataSplits(name=name, task='segmentation', num_classes=1, in_shape=(3, h, w), classes=None,
                    normalize=HALF, augment='flip2d', info=info, **out)
    return add_size_info(ds)
