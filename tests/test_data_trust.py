"""qzoo.data trusts nothing it reads: a tampered decode cache is rebuilt, labels must be
integers in range, signals finite in float32, masks 0/1; bad content is a DataError
naming the file and key."""
import io
import json
import re
import shutil
import zipfile

import numpy as np
import pytest
import torch

from qzoo.data import _common, cifar, cwru, load_dataset
from qzoo.errors import DataError
from test_data import _cwru_folder, _jpeg_pack

pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning')


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('QZOO_CACHE', str(tmp_path / 'cache'))


def _cache_file(ds, split):
    return _common.cache_dir() / 'cifar10-jpeg75' / f"{ds.info['source_sha256']}-{split}.npz"


def _rewrite(path, **changes):
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)


# ============================================================================ decode cache
@pytest.mark.parametrize('tamper', ['ten images', 'zero labels', 'one pixel', 'no digest', 'garbage'])
def test_tampered_decode_cache_is_detected_and_rebuilt(tmp_path, tamper):
    _jpeg_pack(tmp_path / 'cifar10-jpeg75.npz', n_train=40, n_test=20)
    first = load_dataset('cifar10-jpeg75', root=tmp_path)
    assert first.info['decode_cache'] == {'train': 'decoded and cached', 'test': 'decoded and cached'}
    path = _cache_file(first, 'test')
    with np.load(path) as z:
        x, y = z['x'], z['y']
    if tamper == 'ten images':
        _rewrite(path, x=x[:10], y=y[:10])
    elif tamper == 'zero labels':
        _rewrite(path, y=np.zeros_like(y))
    elif tamper == 'one pixel':
        x = x.copy()
        x[3, 1, 5, 7] ^= 1
        _rewrite(path, x=x)
    elif tamper == 'no digest':   # a cache written before digests were recorded
        _rewrite(path, sha256=None)
    else:
        path.write_bytes(b'not an npz')
    with pytest.warns(RuntimeWarning, match=rf'{path.name} is not a valid copy of the test split'):
        again = load_dataset('cifar10-jpeg75', root=tmp_path)
    status = again.info['decode_cache']
    assert status['test'].startswith('rebuilt (') and status['train'] == 'cached'
    assert torch.equal(again.test.x, first.test.x) and torch.equal(again.test.y, first.test.y)
    assert len(again.test) == 20
    third = load_dataset('cifar10-jpeg75', root=tmp_path)   # the rewritten cache is valid again
    assert third.info['decode_cache'] == {'train': 'cached', 'test': 'cached'}
    assert torch.equal(third.test.x, first.test.x)


def test_cache_of_the_right_shape_but_other_content_is_not_used(tmp_path):
    """A cache entry copied from another file of the same size: its digest is its own (valid),
    but its labels are not the source's, so it is rebuilt."""
    _jpeg_pack(tmp_path / 'cifar10-jpeg75.npz', n_train=40, n_test=20)
    ds = load_dataset('cifar10-jpeg75', root=tmp_path, splits=('test',))
    path = _cache_file(ds, 'test')
    y = np.roll(ds.test.y.numpy(), 1)
    x = ds.test.x.numpy()
    np.savez(path, x=x, y=y, sha256=np.array(_common.sha256_array(x, y)))
    with pytest.warns(RuntimeWarning, match='differ from the source'):
        again = load_dataset('cifar10-jpeg75', root=tmp_path, splits=('test',))
    assert torch.equal(again.test.y, ds.test.y)


# ============================================================================ labels
@pytest.mark.parametrize('labels,found', [(99, 'found 99 at index 4'), (-1, 'found -1 at index 4'),
                                          (0.5, 'found dtype float64 (e.g. 0.5 at index 4)')])
def test_cifar_jpeg_labels_must_be_integers_in_range(tmp_path, labels, found):
    p = _jpeg_pack(tmp_path / 'cifar10-jpeg75.npz', n_train=20, n_test=10)
    with np.load(p) as z:
        test_labels = z['test_labels'].astype(np.float64 if isinstance(labels, float) else np.int64)
    test_labels[4] = labels
    _rewrite(p, test_labels=test_labels)
    with pytest.raises(DataError) as ei:
        load_dataset('cifar10-jpeg75', root=tmp_path, splits=('test',))
    msg = str(ei.value)
    assert str(p) in msg and 'key test_labels' in msg and 'integers in [0, 10)' in msg and found in msg
    assert isinstance(ei.value, ValueError)


def test_cifar_jpeg_label_count_must_match_images(tmp_path):
    p = _jpeg_pack(tmp_path / 'cifar10-jpeg75.npz', n_train=20, n_test=10)
    with np.load(p) as z:
        _rewrite(p, test_labels=z['test_labels'][:7])
    with pytest.raises(DataError, match=r'10 test images \(key test_offsets\) but 7 labels \(key test_labels\)'):
        load_dataset('cifar10-jpeg75', root=tmp_path, splits=('test',))


def test_torchvision_cifar10_labels_checked(tmp_path, monkeypatch):
    class Fake:   # stands in for torchvision's CIFAR10 (its download needs the internet)
        def __init__(self, root, train, download):
            n = 100 if train else 10
            self.data = np.zeros((n, 32, 32, 3), np.uint8)
            self.targets = [i % 10 for i in range(n)]
            if not train:
                self.targets[2] = 10
    import torchvision.datasets
    monkeypatch.setattr(torchvision.datasets, 'CIFAR10', Fake)
    with pytest.raises(DataError, match=r'test batches, torchvision targets\): labels must be integers in \[0, 10\), '
                                        r'found 10 at index 2'):
        load_dataset('cifar10', root=tmp_path)


# ============================================================================ cwru values
@pytest.mark.parametrize('value', [1e300, np.inf, np.nan])
def test_cwru_values_beyond_float32_are_refused(tmp_path, value):
    import scipy.io
    folder = _cwru_folder(tmp_path)
    f = folder / '12k_Drive_End_IR014_0_169.mat'
    mat = scipy.io.loadmat(f)
    sig = mat['X169_DE_time'].copy()
    sig[1234, 0] = value
    scipy.io.savemat(f, {'X169_DE_time': sig})
    with pytest.raises(DataError) as ei:
        load_dataset('cwru', root=tmp_path, snr_db=None)
    msg = str(ei.value)
    assert str(f) in msg and 'key X169_DE_time' in msg and 'finite' in msg and 'index 1234' in msg


def test_cwru_windows_that_overflow_after_noise_are_refused(tmp_path):
    """Values finite in float32 whose noisy windows are not (noise power is relative)."""
    import scipy.io
    folder = _cwru_folder(tmp_path)
    f = folder / '12k_Drive_End_B021_0_222.mat'
    sig = scipy.io.loadmat(f)['X222_DE_time'].copy()
    sig[:] = 3e38
    scipy.io.savemat(f, {'X222_DE_time': sig})
    with pytest.raises(DataError, match=r'B021_0_222.mat, key X222_DE_time: train windows after noise'):
        load_dataset('cwru', root=tmp_path, snr_db=-6)


def _repo_copy(tmp_path, monkeypatch):
    repo = tmp_path / 'repo-data'
    shutil.copytree(_common.repo_data(), repo)
    monkeypatch.setattr(_common, 'repo_data', lambda *what: repo)
    return repo


def _reregister(repo, name):
    """Record a changed pack's sha256 in the copy's MANIFEST.json (so only the content check can catch it)."""
    manifest = json.loads((repo / 'MANIFEST.json').read_text())
    manifest['files'][name]['sha256'] = _common.sha256_file(repo / name)
    (repo / 'MANIFEST.json').write_text(json.dumps(manifest))


def test_cwru_pack_with_nan_is_refused(tmp_path, monkeypatch):
    repo = _repo_copy(tmp_path, monkeypatch)
    with np.load(repo / cwru.TEST_PACK) as z:
        arrays = {k: z[k] for k in z.files}
    arrays['signal'] = arrays['signal'].copy()
    arrays['signal'][arrays['offsets'][3] + 10] = np.nan
    np.savez_compressed(repo / cwru.TEST_PACK, **arrays)
    _reregister(repo, cwru.TEST_PACK)
    with pytest.raises(DataError, match=r'cwru-0hp-test.npz, key signal \(class B021\): expected finite values, '
                                        r'found nan at flat index 10'):
        load_dataset('cwru', root=tmp_path / 'none', splits=('test',))


# ============================================================================ masks
def test_dsb_pack_masks_must_be_binary(tmp_path, monkeypatch):
    from qzoo.data import segmentation
    repo = _repo_copy(tmp_path, monkeypatch)
    with np.load(repo / segmentation.DSB_TEST_PACK) as z:
        arrays = {k: z[k] for k in z.files}
    arrays['masks'] = arrays['masks'].copy()
    arrays['masks'][5, 0, 40, 41] = 255
    np.savez_compressed(repo / segmentation.DSB_TEST_PACK, **arrays)
    _reregister(repo, segmentation.DSB_TEST_PACK)
    with pytest.raises(DataError, match=r'dsb2018-96-test.npz, key masks: masks must hold only 0 and 1, found 255'):
        load_dataset('dsb2018-96', root=tmp_path / 'none', splits=('test',))


def test_synthetic_noise_must_be_finite():
    with pytest.raises(ValueError, match='noise must be a finite number >= 0, got inf'):
        load_dataset('synthetic', noise=float('inf'))


# ============================================================================ bounded sizes, whole numbers
@pytest.mark.parametrize('options, message', [
    (dict(n_train=1.9), "option n_train must be a whole number, got 1.9"),      # was silently 1 sample
    (dict(n_val=True), "option n_val must be a whole number, got True"),
    (dict(kind='spheres', dim='ten'), "option dim must be a whole number, got 'ten'"),
    (dict(noise=[0.1]), 'option noise must be a number or null, got [0.1]'),
    (dict(kind=3), 'option kind must be a string, got 3'),
])
def test_dataset_options_must_have_their_declared_types(options, message):
    with pytest.raises(ValueError, match=re.escape(f"dataset 'synthetic': {message}")):
        load_dataset('synthetic', **options)


def test_whole_numbers_may_be_written_as_whole_floats_or_numeric_strings():
    ds = load_dataset('synthetic', n_train=100.0, n_val='1e1', n_test=10)   # YAML reads 1e1 as a string
    assert (len(ds.train), len(ds.val), len(ds.test)) == (100, 10, 10)
    assert ds.info['options']['n_val'] == 10 and isinstance(ds.info['options']['n_val'], int)


def test_synthetic_sizes_are_bounded_before_anything_is_drawn():
    with pytest.raises(ValueError, match=r'n_train=1000000000000 samples of dim=2 are 2,000,000,000,000 values, more '
                                         r'than a synthetic split may hold \(33,554,432\)'):
        load_dataset('synthetic', n_train=10 ** 12)
    with pytest.raises(ValueError, match=r'gaussians needs k in \[2, 10,000\] classes, got 1000000000'):
        load_dataset('synthetic', kind='gaussians', k=10 ** 9)


def test_cwru_window_count_is_bounded_before_windowing(tmp_path):
    """eval_stride=1 cut the test segments into 470,000 overlapping windows (over 3 GB); refused at once, naming
    the smallest stride that fits."""
    with pytest.raises(ValueError, match=r'cwru: eval_stride=1 cuts the test segment of normal \(48,788 samples\) into '
                                         r'46,741 windows of 2048, more than the 10,000 a segment may give .*Fix: '
                                         r'eval_stride of at least 5'):
        load_dataset('cwru', root=tmp_path / 'none', splits=('test',), eval_stride=1)


def _lying_header(path, key, shape):
    """Rewrite .npz ``path`` so that array ``key``'s header declares ``shape`` (its bytes stay what they were)."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    with zipfile.ZipFile(path, 'w') as zf:
        for k, a in arrays.items():
            buf = io.BytesIO()
            if k == key:
                np.lib.format.write_array_header_1_0(buf, {'descr': np.lib.format.dtype_to_descr(a.dtype),
                                                           'fortran_order': False, 'shape': shape})
                buf.write(a.tobytes())
            else:
                np.lib.format.write_array(buf, a)
            zf.writestr(f'{k}.npy', buf.getvalue())


def test_an_array_header_that_claims_more_than_its_file_holds_is_refused_before_allocating(tmp_path):
    """numpy allocates what an .npy header declares before it reads: a 10-label array claiming 10**12 labels asked
    for a terabyte."""
    p = _jpeg_pack(tmp_path / 'cifar10-jpeg75.npz', n_train=20, n_test=10)
    _lying_header(p, 'test_labels', (10 ** 12,))
    with pytest.raises(DataError, match=re.escape(f'{p}, key test_labels: its header declares a uint8 array of shape '
                                                  f'(1000000000000,) (1,000,000,000,000 bytes), but the file holds')):
        load_dataset('cifar10-jpeg75', root=tmp_path, splits=('test',))


def test_npz_members_are_read_only_within_the_size_limit(tmp_path, monkeypatch):
    """A compressed file can claim gigabytes in kilobytes (zeros compress 1000:1): the uncompressed sizes of the
    arrays asked for are added up from the zip directory before anything is decompressed."""
    p = tmp_path / 'zeros.npz'
    np.savez_compressed(p, a=np.zeros(2_000_000, np.uint8))
    assert p.stat().st_size < 10_000
    with pytest.raises(DataError, match=r"zeros.npz: the arrays \['a'\] hold 2,000,128 bytes uncompressed, more than qzoo "
                                        r'reads from one file \(1,000,000 bytes\)'):
        _common.load_npz(p, ['a'], limit=1_000_000)
    monkeypatch.setattr(_common, 'MAX_NPZ_BYTES', 1_000_000)    # the default limit, through a loader
    big = _jpeg_pack(tmp_path / 'cifar10-jpeg75.npz', n_train=20, n_test=10)
    with np.load(big) as z:
        arrays = dict(z, test_scans=np.zeros(2_000_000, np.uint8))
    np.savez_compressed(big, **arrays)
    with pytest.raises(DataError, match='hold .* bytes uncompressed, more than qzoo reads from one file'):
        load_dataset('cifar10-jpeg75', root=tmp_path, splits=('test',), cache=False)


def test_a_recording_larger_than_any_cwru_file_is_refused_from_its_header(tmp_path, monkeypatch):
    """The .mat headers are read first (scipy.io.whosmat): a file declaring more values than a recording holds is
    refused before anything is decompressed, and only the drive-end channel is read."""
    _cwru_folder(tmp_path)
    monkeypatch.setattr(cwru, 'MAX_SAMPLES', 50_000)      # the fixture's normal recording has 60,000
    with pytest.raises(DataError, match=r'normal_0_97.mat: X097_DE_time declares \(60000, 1\) values, more than a '
                                        r'CWRU recording holds \(50,000 at most\)'):
        load_dataset('cwru', root=tmp_path, snr_db=None)


def test_an_image_declaring_too_many_pixels_is_refused_before_decoding(tmp_path, monkeypatch):
    from PIL import Image
    from qzoo.data import segmentation
    Image.fromarray(np.zeros((100, 120, 3), np.uint8)).save(tmp_path / 'x.png')
    monkeypatch.setattr(segmentation, 'MAX_PIXELS', 10_000)
    with pytest.raises(DataError, match=r'x.png declares 120 x 100 pixels, more than a dataset image may have '
                                        r'\(10,000\)'):
        segmentation._open(tmp_path / 'x.png')
