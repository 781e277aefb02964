"""qzoo.data trusts nothing it reads: a tampered decode cache is rebuilt, labels must be
integers in range, signals finite in float32, masks 0/1; bad content is a DataError
naming the file and key."""
import json
import shutil

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
