"""CWRU bearing data, 12 kHz drive end, 0 HP: the 10-class fault-diagnosis benchmark.

Source: ``<root>/cwru-12k-drive-end-0hp/*.mat`` (the ten original Case Western Reserve
University files); the drive-end channel ``X<id>_DE_time`` of each, cast to float32.

Classes (fixed order): normal, B007, B014, B021, IR007, IR014, IR021, OR007@6, OR014@6,
OR021@6, from the file names (``normal_0_<id>.mat``, ``12k_Drive_End_<fault><size>[@6]_0_<id>.mat``).

Split by time, before windowing: each recording of L samples is cut into contiguous
segments train = [0, floor(0.6 L)), val = [floor(0.6 L), floor(0.8 L)), test = [floor(0.8 L), L),
so no window crosses a split and no sample is in two splits (the seed project's train and
test files were byte-identical; this layout rules that out by construction).

Windows: 2048 samples, starting at 0, stride, 2 * stride, ... of each segment while the window
fits: ``train_stride`` (default 512, overlapping) for train, ``eval_stride`` (default 2048,
non-overlapping) for val and test. The normal recording is twice as long, so class 0 has about
twice the windows of each fault class (reported, not rebalanced).

Noise (``snr_db``, default -6; None = clean): additive white Gaussian noise per window at that
SNR relative to the window's own clean power, P_noise = mean(w**2) / 10**(snr_db / 10), drawn
(float64, numpy PCG64) from a generator seeded by (noise_seed, split, class), so every split's
noise is independent of the other splits and of the other classes; the sum is cast to float32.

Normalisation (``normalize``): ``'none'`` (default; raw acceleration in g plus noise) or
``'window'`` (each noisy window z-scored by its own mean and std: no statistics cross windows,
so none cross splits).

Values: the drive-end signal must be real and finite in float32 (a value such as 1e300 is
finite in float64 but inf in float32), and so must every window after noise and
normalisation; otherwise a :class:`~qzoo.errors.DataError` names the file and key.

The repository ships the test segments (``data/cwru-0hp-test.npz``, float32) so
``splits=('test',)`` works without the .mat files and gives bit-identical windows and noise.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import DataError
from ._common import (Split, check_finite, check_pack, data_root, load_npz, missing, only_test, repo_pack, root_source,
                      save_npz_atomic, sha256_file)
from .splits import DataSplits, add_size_info

CLASSES = ['normal', 'B007', 'B014', 'B021', 'IR007', 'IR014', 'IR021', 'OR007@6', 'OR014@6', 'OR021@6']
FOLDER = 'cwru-12k-drive-end-0hp'
TEST_PACK = 'cwru-0hp-test.npz'
WINDOW = 2048
FRACTIONS = (0.6, 0.2, 0.2)
SPLIT_CODE = {'train': 0, 'val': 1, 'test': 2}
#: the most values a recording may declare (the longest of the ten CWRU files, normal_0_97.mat, has 243,938)
MAX_SAMPLES = 10_000_000
#: the most windows one class's segment of a split is cut into (164 MB of float64 while noise is added)
MAX_WINDOWS = 10_000
NORMALIZE = ('none', 'window')
SOURCE = ('The files come from the Case Western Reserve University Bearing Data Center (12k drive end, '
          '0 HP: normal_0_97.mat and the nine 12k_Drive_End_*_0_*.mat fault files); the shared qzoo data '
          'folder has them.')
_NAME = re.compile(r'^(?:normal_0_(?P<nid>\d+)|12k_Drive_End_(?P<fault>B|IR|OR)(?P<size>\d{3})(?P<pos>@\d+)?_0_(?P<id>\d+))\.mat$')


def class_of(filename: str) -> Tuple[Optional[str], Optional[int]]:
    """(class name, recording id) from a CWRU file name, or (None, None)."""
    m = _NAME.match(filename)
    if not m:
        return None, None
    if m['nid']:
        return 'normal', int(m['nid'])
    name = f"{m['fault']}{m['size']}{m['pos'] or ''}"
    return name, int(m['id'])


def find_files(folder: Path) -> Dict[str, Tuple[Path, int]]:
    """Class name -> (.mat path, recording id); exactly one file per class."""
    found: Dict[str, List[Tuple[Path, int]]] = {}
    for p in sorted(folder.glob('*.mat')):
        c, rid = class_of(p.name)
        if c in CLASSES:
            found.setdefault(c, []).append((p, rid))
    lost = [c for c in CLASSES if c not in found]
    if lost:
        have = sorted(p.name for p in folder.glob('*.mat'))
        raise FileNotFoundError(
            f'{folder}: no .mat file for class(es) {lost} (found {have or "no .mat files"}); expected one file per '
            f'class named normal_0_<id>.mat or 12k_Drive_End_<B|IR|OR><007|014|021>[@6]_0_<id>.mat. {SOURCE}')
    dup = {c: [p.name for p, _ in v] for c, v in found.items() if len(v) > 1}
    if dup:
        raise DataError(f'{folder}: more than one file for class(es) {dup}; keep one per class')
    return {c: found[c][0] for c in CLASSES}


def read_de(path: Path, rid: int) -> np.ndarray:
    """The drive-end signal ``X<id>_DE_time`` of a CWRU .mat file as float32 (L,), checked to be
    real, finite in float32 and at least 5 windows long."""
    import scipy.io
    if not path.is_file():
        raise DataError(f'{path} is not a regular file (a FIFO or device can block or never end); copy the .mat file '
                        f'again')
    try:  # the variables' names and shapes, from their headers: nothing large is read or decompressed yet
        shapes = {name: shape for name, shape, _ in scipy.io.whosmat(str(path))}
    except Exception as e:  # scipy raises several types for truncated / non-MAT files
        raise DataError(f'{path} is not a readable MATLAB file ({type(e).__name__}: {e}); copy it again') from e
    key = f'X{rid:03d}_DE_time'
    if key not in shapes:
        cands = [k for k in shapes if k.endswith('_DE_time')]
        if len(cands) != 1:
            raise DataError(f'{path} has no drive-end channel {key!r} (keys: {sorted(shapes)}); expected a CWRU file '
                            f'with X<id>_DE_time for the id in its name')
        key = cands[0]
    if math.prod(shapes[key]) > MAX_SAMPLES:
        raise DataError(f'{path}: {key} declares {shapes[key]} values, more than a CWRU recording holds '
                        f'({MAX_SAMPLES:,} at most); it is not the expected file: copy it again')
    try:
        arr = np.asarray(scipy.io.loadmat(str(path), variable_names=[key])[key])
    except Exception as e:
        raise DataError(f'{path} is not a readable MATLAB file ({type(e).__name__}: {e}); copy it again') from e
    if arr.dtype.kind not in 'iuf':
        raise DataError(f'{path}: {key} holds {arr.dtype} values, expected a real-valued recording; copy it again')
    with np.errstate(over='ignore', invalid='ignore'):   # checked just below
        sig = arr.astype(np.float32).reshape(-1)
    if sig.size < 5 * WINDOW:
        raise DataError(f'{path}: {key} has {sig.size} samples; expected a recording of at least {5 * WINDOW}')
    check_finite(sig, f'{path}, key {key} (as float32, the dtype qzoo uses; float32 holds |x| < 3.4e38)',
                 'copy the file again from its source')
    return sig


def bounds(length: int, fractions: Sequence[float] = FRACTIONS) -> Dict[str, Tuple[int, int]]:
    """Contiguous [start, stop) of each split in a recording of ``length`` samples."""
    a = math.floor(fractions[0] * length)
    b = math.floor((fractions[0] + fractions[1]) * length)
    return {'train': (0, a), 'val': (a, b), 'test': (b, length)}


def window_starts(seg_len: int, stride: int, window: int = WINDOW) -> np.ndarray:
    """Start offsets (within a segment) of every full window."""
    if seg_len < window:
        return np.zeros(0, np.int64)
    return np.arange(0, seg_len - window + 1, stride, dtype=np.int64)


def make_windows(seg: np.ndarray, stride: int, snr_db: Optional[float], noise_seed: int, split: str, cls: int,
                 normalize: str) -> Tuple[np.ndarray, np.ndarray]:
    """(windows float32 (n, 2048), starts within the segment) of one class's segment; at most
    :data:`MAX_WINDOWS` (ValueError naming the stride option before anything is allocated)."""
    starts = window_starts(len(seg), stride)
    if len(starts) > MAX_WINDOWS:
        option = 'train_stride' if split == 'train' else 'eval_stride'
        least = math.ceil((len(seg) - WINDOW + 1) / MAX_WINDOWS)
        raise ValueError(f'cwru: {option}={stride} cuts the {split} segment of {CLASSES[cls]} ({len(seg):,} samples) '
                         f'into {len(starts):,} windows of {WINDOW}, more than the {MAX_WINDOWS:,} a segment may give '
                         f'({len(starts) * WINDOW * 4 / 2 ** 30:.1f} GiB as float32). Fix: {option} of at least {least}')
    idx = starts[:, None] + np.arange(WINDOW)
    w = seg[idx].astype(np.float64) if len(starts) else np.zeros((0, WINDOW))
    if snr_db is not None:
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(noise_seed), SPLIT_CODE[split], cls])))
        power = np.mean(w ** 2, axis=1, keepdims=True)
        w = w + rng.standard_normal(w.shape) * np.sqrt(power / 10.0 ** (snr_db / 10.0))
    if normalize == 'window' and len(w):
        w = (w - w.mean(axis=1, keepdims=True)) / np.maximum(w.std(axis=1, keepdims=True), 1e-12)
    with np.errstate(over='ignore', invalid='ignore'):   # load_cwru checks the windows are finite
        return w.astype(np.float32), starts


def _segments_full(folder: Path, splits) -> Tuple[Dict, Dict]:
    files = find_files(folder)
    segs, src = {}, {}
    for c, (path, rid) in files.items():
        sig = read_de(path, rid)
        bd = bounds(len(sig))
        segs[c] = {s: (bd[s][0], sig[bd[s][0]:bd[s][1]]) for s in splits}
        src[c] = dict(file=str(path), sha256=sha256_file(path), length=int(len(sig)),
                      key=f'X{rid:03d}_DE_time', segments={s: list(bd[s]) for s in ('train', 'val', 'test')})
    return segs, src


def _segments_pack(path: Path) -> Tuple[Dict, Dict]:
    keys = ['signal', 'offsets', 'starts', 'lengths', 'classes', 'files', 'sha256']
    z = load_npz(path, keys)
    if [str(c) for c in z['classes']] != CLASSES:
        raise DataError(f'{path}: classes {list(z["classes"])} differ from {CLASSES}')
    segs, src = {}, {}
    for i, c in enumerate(CLASSES):
        seg = z['signal'][z['offsets'][i]:z['offsets'][i + 1]]
        start, length = int(z['starts'][i]), int(z['lengths'][i])
        bd = bounds(length)
        if bd['test'] != (start, start + len(seg)):
            raise DataError(f'{path}: class {c} segment [{start}, {start + len(seg)}) is not the test segment '
                             f'{bd["test"]} of its {length}-sample recording: the pack is corrupt; restore it')
        check_finite(seg, f'{path}, key signal (class {c})', f'restore it (git checkout -- data/{path.name})')
        segs[c] = {'test': (start, seg)}
        src[c] = dict(file=str(z['files'][i]), sha256=str(z['sha256'][i]), length=length,
                      segments={s: list(bd[s]) for s in ('train', 'val', 'test')})
    return segs, src


def load_cwru(root=None, splits: Sequence[str] = ('train', 'val', 'test'), snr_db: Optional[float] = -6.0,
              train_stride: int = 512, eval_stride: int = WINDOW, noise_seed: int = 0,
              normalize: str = 'none') -> DataSplits:
    """CWRU 0 HP drive end, 10 classes, windows (1, 2048), split by time (60/20/20) before windowing."""
    for k, v in (('train_stride', train_stride), ('eval_stride', eval_stride)):
        if int(v) < 1:
            raise ValueError(f'{k} must be >= 1, got {v}')
    if normalize not in NORMALIZE:
        raise ValueError(f'unknown normalize {normalize!r} for cwru; valid: {list(NORMALIZE)}')
    if snr_db is not None and not np.isfinite(snr_db):
        raise ValueError(f'snr_db must be a finite number of dB or None (clean), got {snr_db}')
    base = data_root(root)
    folder = base / FOLDER if (base / FOLDER).is_dir() or not any(base.glob('*.mat')) else base
    info = dict(split_rule=f'by time, before windowing: per recording of L samples train=[0, floor(0.6L)), '
                           f'val=[floor(0.6L), floor(0.8L)), test=[floor(0.8L), L); windows of {WINDOW} samples '
                           f'never cross a segment boundary',
                window=WINDOW, fractions=list(FRACTIONS),
                noise=('none' if snr_db is None else
                       f'white Gaussian per window at {snr_db:g} dB SNR of the clean window power (mean of '
                       f'squares), numpy PCG64 seeded by SeedSequence([noise_seed, split 0/1/2, class index])'),
                normalization={'none': 'none: raw drive-end acceleration (g) plus noise',
                               'window': 'per-window z-score of the noisy window (its own mean/std)'}[normalize],
                options=dict(snr_db=snr_db, train_stride=int(train_stride), eval_stride=int(eval_stride),
                             noise_seed=int(noise_seed), normalize=normalize))
    if not folder.is_dir() or not any(folder.glob('*.mat')):
        if not only_test(splits):
            raise missing(folder, f'the folder {FOLDER} with the ten CWRU .mat files (the repository ships only the '
                                  f'test segments, data/{TEST_PACK}, enough for splits=("test",))', SOURCE,
                          root_source(root))
        path = repo_pack(TEST_PACK)
        check_pack(path)
        segs, src = _segments_pack(path)
        info['fallback'] = f'{path} (shipped test segments, float32, of the files listed in sources)'
    else:
        segs, src = _segments_full(folder, splits)
    info['sources'] = src
    out, info['windows'] = _windowed_splits(segs, src, splits, info['options'])
    ds = DataSplits(name=_name(info['options']), task='classification', num_classes=10, in_shape=(1, WINDOW),
                    classes=list(CLASSES), normalize=None, augment=None, info=info, **out)
    return add_size_info(ds)


def _windowed_splits(segs: Dict, src: Dict, splits: Sequence[str], options: Dict) -> Tuple[Dict, Dict]:
    """({split: Split of every class's windows}, {split: {class: number of windows}}) from the segments
    ``segs[class][split] = (start, signal)``, with the noise and normalisation ``options`` say."""
    out, windows = {}, {}
    for s in splits:
        stride = options['train_stride'] if s == 'train' else options['eval_stride']
        xs, ys, st = [], [], []
        for ci, c in enumerate(CLASSES):
            seg_start, seg = segs[c][s]
            w, starts = make_windows(seg, stride, options['snr_db'], options['noise_seed'], s, ci,
                                     options['normalize'])
            check_finite(w, f'{src[c]["file"]}, key {src[c].get("key", "signal")}: {s} windows after noise and '
                            f'normalisation', 'the recording holds values too large for float32 arithmetic')
            xs.append(w)
            ys.append(np.full(len(w), ci, np.int64))
            st.append(starts + seg_start)
        windows[s] = {c: int(len(v)) for c, v in zip(CLASSES, ys)}
        x = torch.from_numpy(np.concatenate(xs)).unsqueeze(1)
        out[s] = Split(x, torch.from_numpy(np.concatenate(ys)),
                       meta={'start': torch.from_numpy(np.concatenate(st)), 'window': WINDOW, 'stride': stride})
    return out, windows


def _name(options: Dict) -> str:
    """The data's precise name: ``cwru-0hp-<clean|snr<dB>db>`` plus every option off its default."""
    snr_db = options['snr_db']
    name = 'cwru-0hp-' + ('clean' if snr_db is None else f'snr{snr_db:g}db')
    defaults = dict(train_stride=512, eval_stride=WINDOW, noise_seed=0, normalize='none')
    short = dict(train_stride='tr', eval_stride='ev', noise_seed='noise', normalize='norm-')
    for k, d in defaults.items():
        v = options[k]
        if v != d and not (k == 'noise_seed' and snr_db is None):
            name += f'-{short[k]}{v}'
    return name


def write_test_pack(folder: Path, dst: Path) -> None:
    """Write the test segment (float32) of every class's recording to ``dst``."""
    folder = Path(folder)
    files = find_files(folder)
    sigs, starts, lengths, names, shas = [], [], [], [], []
    for c, (path, rid) in files.items():
        sig = read_de(path, rid)
        a, b = bounds(len(sig))['test']
        sigs.append(sig[a:b])
        starts.append(a)
        lengths.append(len(sig))
        names.append(path.name)
        shas.append(sha256_file(path))
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sigs])]).astype(np.int64)
    save_npz_atomic(dst, compressed=True, signal=np.concatenate(sigs).astype(np.float32), offsets=offsets,
                    starts=np.array(starts, np.int64), lengths=np.array(lengths, np.int64),
                    classes=np.array(CLASSES), files=np.array(names), sha256=np.array(shas))
