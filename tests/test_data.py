"""qzoo.data: every loader on generated fixtures and (when ../shared is there) on the real data;
split rules (CWRU by time, no window in two splits), determinism, shipped test packs equal to
the full path, BatchLoader numerics / augmentation / resumability / sharding, error messages."""
import io
import json
import os
import time

import numpy as np
import pytest
import torch

from qzoo.data import BatchLoader, DataSplits, Split, list_datasets, load_dataset
from qzoo.data import _common, cifar, cwru, segmentation
from qzoo.data.loader import crop_flip, flip2d
from conftest import need_shared

pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning')


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path_factory, monkeypatch):
    """Never write to the user's ~/.cache from tests."""
    monkeypatch.setenv('QZOO_CACHE', str(tmp_path_factory.getbasetemp() / 'qzoo-cache'))


# ============================================================================ registry, errors
def test_registry_and_option_errors(tmp_path):
    assert list_datasets() == ['carvana', 'cifar10', 'cifar10-jpeg75', 'cwru', 'dsb2018-96', 'synthetic']
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar'.*did you mean.*valid: \['carvana'"):
        load_dataset('cifar')
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['strid'\] for dataset 'cwru'; valid: snr_db=-6.0"):
        load_dataset('cwru', strid=3)
    with pytest.raises(ValueError, match=r"splits must be distinct names from \['train', 'val', 'test'\]"):
        load_dataset('synthetic', splits=('train', 'testing'))
    with pytest.raises(ValueError, match="unknown synthetic kind 'spiral'; valid: .*'circles'"):
        load_dataset('synthetic', kind='spiral')
    with pytest.raises(ValueError, match="unknown normalize 'global' for cwru; valid"):
        load_dataset('cwru', normalize='global', root=tmp_path)


def test_stratified_holdout_and_hash_rank():
    y = np.repeat(np.arange(3), [10, 20, 30])
    tr, va = _common.stratified_holdout(y, 6, seed=0)
    assert len(va) == 6 and len(tr) == 54 and not set(tr) & set(va)
    assert np.bincount(y[va]).tolist() == [1, 2, 3]
    assert np.all(np.diff(va) > 0) and np.all(np.diff(tr) > 0)
    tr2, va2 = _common.stratified_holdout(y, 6, seed=0)
    assert np.array_equal(va, va2)
    assert not np.array_equal(va, _common.stratified_holdout(y, 6, seed=1)[1])
    assert _common.apportion(7, [1, 1, 1]) == [3, 2, 2]
    # the rule is BLAKE2b, not a library RNG: pinned so any change of the split shows up here
    assert int(_common.hash_rank(0, ['x'])[0]) == int.from_bytes(
        __import__('hashlib').blake2b(b'0:x', digest_size=8).digest(), 'big')
    groups = _common.group_split([f'car{i}' for i in range(20)], (0.8, 0.1, 0.1), seed=0)
    assert [len(groups[s]) for s in ('train', 'val', 'test')] == [16, 2, 2]


# ============================================================================ synthetic
KIND_SHAPES = {'circles': (2, 2), 'spheres': (10, 2), 'moons': (2, 2), 'gaussians': (2, 3), 'interaction': (2, 1),
               'norm2': (2, 1)}


@pytest.mark.parametrize('kind', list(KIND_SHAPES))
def test_synthetic_kinds(kind):
    dim, nc = KIND_SHAPES[kind]
    ds = load_dataset('synthetic', kind=kind, n_train=40, n_val=10, n_test=20)
    assert ds.name == f'synthetic-{kind}-d{dim}' + ('-k3' if kind == 'gaussians' else '')
    assert ds.in_shape == (dim,) and ds.num_classes == nc
    assert ds.train.x.shape == (40, dim) and ds.train.x.dtype == torch.float32
    if ds.task == 'classification':
        assert ds.train.y.dtype == torch.int64 and ds.train.y.shape == (40,)
        counts = torch.bincount(ds.train.y, minlength=nc)
        assert counts.max() - counts.min() <= 1          # balanced
        assert ds.info['class_counts']['test'] == dict(zip(ds.classes, torch.bincount(ds.test.y, minlength=nc).tolist()))
    else:
        assert ds.task == 'regression' and ds.train.y.shape == (40, 1) and ds.train.y.dtype == torch.float32
    again = load_dataset('synthetic', kind=kind, n_train=40, n_val=10, n_test=20)
    other = load_dataset('synthetic', kind=kind, n_train=40, n_val=10, n_test=20, seed=1)
    bigger = load_dataset('synthetic', kind=kind, n_train=80, n_val=10, n_test=20)
    assert torch.equal(ds.train.x, again.train.x) and torch.equal(ds.test.y, again.test.y)
    assert not torch.equal(ds.train.x, other.train.x) and other.name.endswith('-seed1')
    assert torch.equal(ds.test.x, bigger.test.x)          # test set independent of n_train
    assert not torch.equal(ds.train.x, ds.test.x[:40] if len(ds.test) >= 40 else ds.val.x)
    json.dumps(ds.info)
    assert ds.summary().splitlines()[0].startswith(ds.name)


def test_synthetic_exact_without_noise():
    ds = load_dataset('synthetic', kind='interaction', n_train=50, n_val=1, n_test=1, noise=0.0, dim=3)
    x = ds.train.x.double()
    assert torch.allclose(ds.train.y[:, 0].double(), x[:, 0] * x[:, 1], atol=1e-6) and ds.name.endswith('-noise0')
    ds = load_dataset('synthetic', kind='norm2', n_train=50, n_val=1, n_test=1, noise=0.0, dim=4)
    assert torch.allclose(ds.train.y[:, 0], (ds.train.x ** 2).sum(1), atol=1e-5)
    assert ds.train.x.abs().max() <= 1
    ds = load_dataset('synthetic', kind='spheres', dim=5, noise=0.0, n_train=30, n_val=1, n_test=1)
    r = ds.train.x.norm(dim=1)
    assert torch.allclose(r, torch.where(ds.train.y == 0, 0.5, 1.0), atol=1e-5)
    ds = load_dataset('synthetic', kind='gaussians', k=5, dim=3, n_train=100, n_val=0, n_test=1, splits=('train', 'val'))
    assert ds.num_classes == 5 and ds.test is None and len(ds.val) == 0 and ds.name == 'synthetic-gaussians-d3-k5'
    with pytest.raises(ValueError, match="'circles' is 2-D only .*spheres"):
        load_dataset('synthetic', kind='circles', dim=3)


# ============================================================================ BatchLoader
def _images(n=10, c=3, h=4, w=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8), torch.arange(n))


def test_loader_shapes_and_normalisation():
    s = _images(10)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    ld = BatchLoader(s, 4, shuffle=False, normalize=(mean, std))
    assert len(ld) == 3 and len(BatchLoader(s, 4, shuffle=False, drop_last=True)) == 2
    batches = list(ld)
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    x = torch.cat([b[0] for b in batches])
    assert x.dtype == torch.float32 and batches[0][1].dtype == torch.int64
    want = (s.x.double() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(x.double(), want, atol=1e-6)
    assert torch.equal(torch.cat([b[1] for b in batches]), torch.arange(10))
    assert ld.x.dtype == torch.uint8                                  # stored as uint8 on the device
    f = Split(torch.randn(5, 2), torch.zeros(5, 1))                  # float inputs go through unchanged
    assert torch.equal(next(iter(BatchLoader(f, 5, shuffle=False)))[0], f.x)
    with pytest.raises(ValueError, match='unknown augment'):
        BatchLoader(s, 4, shuffle=True, augment='cutout')
    with pytest.raises(ValueError, match='rank < world_size'):
        BatchLoader(s, 4, shuffle=True, rank=2, world_size=2)


def test_crop_flip_by_hand():
    x = torch.tensor([[1., 2.], [3., 4.]]).view(1, 1, 2, 2).repeat(4, 1, 1, 1)
    oy = torch.tensor([4, 4, 4, 3])
    ox = torch.tensor([4, 5, 5, 4])
    fl = torch.tensor([False, False, True, False])
    out = crop_flip(x, oy, ox, fl, pad=4)[:, 0]
    assert out[0].tolist() == [[1, 2], [3, 4]]          # centre
    assert out[1].tolist() == [[2, 0], [4, 0]]          # one column right: zero padding enters
    assert out[2].tolist() == [[0, 2], [0, 4]]          # the same, mirrored
    assert out[3].tolist() == [[0, 0], [1, 2]]          # one row up
    xm, ym = flip2d(x[:2], x[:2, :, :, :1], torch.tensor([True, False]), torch.tensor([True, True]))
    assert xm[0, 0].tolist() == [[4, 3], [2, 1]] and xm[1, 0].tolist() == [[3, 4], [1, 2]]
    assert ym[0, 0].tolist() == [[3], [1]]


def test_loader_crop4_flip_outputs_are_crops():
    s = _images(12, c=2, h=5, w=6)
    ld = BatchLoader(s, 5, shuffle=True, seed=3, augment='crop4-flip')
    xp = torch.nn.functional.pad(s.x.float() / 255, (4, 4, 4, 4))
    seen_flip = set()
    for xb, yb in ld:
        assert xb.shape[1:] == (2, 5, 6)
        for img, i in zip(xb, yb.tolist()):
            hits = [(oy, ox, f) for oy in range(9) for ox in range(9) for f in (0, 1)
                    if torch.equal(img, (lambda c: c.flip(-1) if f else c)(xp[i, :, oy:oy + 5, ox:ox + 6]))]
            assert hits, 'an output is not a 4-pixel-padded crop (optionally flipped) of its input'
            seen_flip |= {h[2] for h in hits}
    assert seen_flip == {0, 1}


def test_loader_flip2d_joint():
    x = torch.randint(0, 256, (16, 3, 5, 7), dtype=torch.uint8)
    s = Split(x, x[:, :1].clone())                              # the "mask" is channel 0: must move with it
    outs = list(BatchLoader(s, 8, shuffle=True, augment='flip2d', seed=1))
    for xb, yb in outs:
        assert yb.dtype == torch.uint8 and torch.equal((xb[:, :1] * 255).round().to(torch.uint8), yb)
    xb = torch.cat([o[0] for o in outs])
    kinds = {min(i for i, t in enumerate([img, img.flip(-1), img.flip(-2), img.flip(-1, -2)])
                 if any(torch.equal((t * 255).round().to(torch.uint8), x[j]) for j in range(16))) for img in xb}
    assert kinds == {0, 1, 2, 3}


def test_loader_set_epoch_resume():
    s = _images(20)
    run = BatchLoader(s, 6, shuffle=True, seed=5, augment='crop4-flip', normalize=((0.5,), (0.5,)))
    epochs = []
    for e in range(3):
        run.set_epoch(e)
        epochs.append([(x.clone(), y.clone()) for x, y in run])
    resumed = BatchLoader(s, 6, shuffle=True, seed=5, augment='crop4-flip', normalize=((0.5,), (0.5,)))
    resumed.set_epoch(2)
    for (xa, ya), (xb, yb) in zip(epochs[2], resumed):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(torch.cat([y for _, y in epochs[0]]), torch.cat([y for _, y in epochs[1]]))
    other = BatchLoader(s, 6, shuffle=True, seed=6)
    assert not torch.equal(torch.cat([y for _, y in other]), torch.cat([y for _, y in epochs[0]]))
    torch.manual_seed(123)                                      # the global RNG plays no part
    again = BatchLoader(s, 6, shuffle=True, seed=5, augment='crop4-flip', normalize=((0.5,), (0.5,)))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(epochs[0], again))


@pytest.mark.parametrize('n,ws', [(10, 3), (12, 4), (7, 2), (3, 4)])
def test_loader_rank_shards(n, ws):
    s = _images(n)
    shards = []
    for r in range(ws):
        ld = BatchLoader(s, 2, shuffle=True, seed=9, rank=r, world_size=ws)
        ld.set_epoch(4)
        shards.append(torch.cat([y for _, y in ld]))
    per = -(-n // ws)
    assert all(len(t) == per for t in shards)                  # equal length, like DistributedSampler
    allidx = torch.cat(shards)
    assert set(allidx.tolist()) == set(range(n))              # complete
    order, _ = BatchLoader(s, 2, shuffle=True, seed=9).plan(4)
    padded = torch.cat([order] * ws)[:per * ws]
    for r in range(ws):                                       # disjoint positions of one padded order
        assert torch.equal(shards[r], padded[r::ws])


def test_loader_augmentation_independent_of_world_size():
    s = _images(8)
    single = BatchLoader(s, 8, shuffle=True, seed=2, augment='crop4-flip')
    xs, ys = next(iter(single))
    got = {}
    for r in range(2):
        for x, y in BatchLoader(s, 8, shuffle=True, seed=2, augment='crop4-flip', rank=r, world_size=2):
            got.update({int(i): img for i, img in zip(y, x)})
    assert all(torch.equal(got[int(i)], img) for i, img in zip(ys, xs))


def _reference_batches(split, bs, augment, normalize, seed=1):
    """The loader's batches as its earlier code computed them on the CPU: uint8 -> float / 255, augment, then
    (x - mean) / std (the published CPU results were measured this way)."""
    ld = BatchLoader(split, bs, shuffle=True, seed=seed, augment=augment)
    order, params = ld.plan()
    mean, std = (torch.tensor(v, dtype=torch.float32).reshape(1, -1, 1, 1) for v in normalize)
    for b in range(len(ld)):
        sel = slice(b * bs, (b + 1) * bs)
        x, y = split.x[order[sel]].float().div_(255), split.y[order[sel]]
        if augment == 'crop4-flip':
            x = crop_flip(x, params['oy'][sel], params['ox'][sel], params['flip'][sel], pad=4)
        yield (x - mean) / std, y


def test_loader_pixels_are_bit_identical_to_the_division_on_the_cpu():
    """The pixel table gives exactly the bits of the CPU's (v / 255 - mean) / std, so every CPU result (training,
    published evaluations) is unchanged by it; padding pixels get the value of 0."""
    s = _images(40, h=8, w=8)
    norm = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    for augment in (None, 'crop4-flip'):
        got = list(BatchLoader(s, 16, shuffle=True, seed=1, augment=augment, normalize=norm))
        ref = list(_reference_batches(s, 16, augment, norm))
        assert len(got) == len(ref) == 3
        for (x, y), (xr, yr) in zip(got, ref):
            assert x.dtype == torch.float32 and torch.equal(y, yr)
            assert torch.equal(x.view(torch.int32), xr.view(torch.int32))  # bit for bit


def test_a_reciprocal_multiply_is_what_made_cuda_differ():
    """The cause of the H200's failed comparison: CUDA divides by a CPU scalar as x * (1 / 255) (PyTorch's
    div_true_kernel_cuda), which differs in the last bit from the division for some pixel values; where
    v / 255 and the mean cancel, the difference is then all there is (|d| ~ 1e-7 against an expected 0,
    beyond allclose's atol of 1e-8). Emulated here on the CPU; the pixel table computes every value on the CPU."""
    v = torch.arange(256, dtype=torch.float32)
    div, mul = v / 255, v * torch.tensor(1 / 255, dtype=torch.float32)
    assert int((div != mul).sum()) > 0
    mean = torch.tensor(0.4)
    cancels = div == mean  # 102 / 255 is 0.4 in float32
    assert cancels.any() and not torch.allclose((div - mean) / 0.2, (mul - mean) / 0.2)


def _max_difference(a, b) -> str:
    d = (a.double() - b.double()).abs()
    i = int(d.argmax())
    return f'largest difference {float(d.max()):.3g} at flat index {i}: cpu {a.flatten()[i].item()!r}, cuda {b.flatten()[i].item()!r}'


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_loader_cuda_matches_cpu():
    """Bit-identical batches on CUDA and the CPU (the pixel table is computed on the CPU)."""
    s = _images(30)
    kw = dict(shuffle=True, seed=1, augment='crop4-flip', normalize=((0.4,) * 3, (0.2,) * 3))
    for (xc, yc), (xg, yg) in zip(BatchLoader(s, 7, **kw), BatchLoader(s, 7, device='cuda', **kw)):
        assert xg.is_cuda and torch.equal(yc, yg.cpu())
        assert torch.equal(xc, xg.cpu()), _max_difference(xc, xg.cpu())


def test_datasplits_loader_defaults():
    ds = DataSplits('t', 'classification', 2, (3, 4, 4), ['a', 'b'], train=_images(6), test=_images(4),
                    normalize=((0.5,) * 3, (0.5,) * 3), augment='crop4-flip')
    tr, te = ds.loader('train', 4), ds.loader('test', 4)
    assert tr.shuffle and tr.augment == 'crop4-flip' and not te.shuffle and te.augment is None
    assert te.mean is not None
    with pytest.raises(ValueError, match="no 'val' split"):
        ds.loader('val', 4)


# ============================================================================ cifar10-jpeg75
def _jpeg_pack(path, n_train=40, n_test=10, seed=0):
    """A tiny file in the cifar10-jpeg75 format (shared header + scans) made with PIL."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    header, parts = None, {}
    for split, n in (('train', n_train), ('test', n_test)):
        scans, offsets = [], [0]
        for i in range(n):
            img = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, 'JPEG', quality=75, subsampling=2)
            b = buf.getvalue()
            sos = b.index(b'\xff\xda')
            end = sos + 2 + int.from_bytes(b[sos + 2:sos + 4], 'big')
            assert header is None or header == b[:end]
            header = b[:end]
            scans.append(np.frombuffer(b[end:], np.uint8))
            offsets.append(offsets[-1] + len(b) - end)
        parts[f'{split}_scans'] = np.concatenate(scans)
        parts[f'{split}_offsets'] = np.array(offsets, np.int64)
        parts[f'{split}_labels'] = (np.arange(n) % 10).astype(np.uint8)
    np.savez(path, header=np.frombuffer(header, np.uint8), classes=np.array(cifar.CLASSES), **parts)
    return path


def test_cifar_jpeg_format_on_fixture(tmp_path):
    p = _jpeg_pack(tmp_path / 'cifar10-jpeg75.npz')
    ds = load_dataset('cifar10-jpeg75', root=tmp_path)
    assert ds.name == 'cifar10-jpeg75' and ds.in_shape == (3, 32, 32) and ds.augment == 'crop4-flip'
    assert (len(ds.train), len(ds.val), len(ds.test)) == (36, 4, 10)
    assert ds.train.x.dtype == torch.uint8 and ds.train.x.shape[1:] == (3, 32, 32) and ds.train.y.dtype == torch.int64
    assert not set(ds.train.meta['source_index'].tolist()) & set(ds.val.meta['source_index'].tolist())
    assert ds.info['source_sha256'] == _common.sha256_file(p)
    json.dumps(ds.info)
    cached = list(_common.cache_dir().rglob('*.npz'))
    assert any(ds.info['source_sha256'] in c.name for c in cached)
    again = load_dataset('cifar10-jpeg75', root=tmp_path)   # from the cache
    assert torch.equal(again.train.x, ds.train.x) and torch.equal(again.val.y, ds.val.y)
    other = load_dataset('cifar10-jpeg75', root=tmp_path, split_seed=1)
    assert other.name == 'cifar10-jpeg75-split1' and not torch.equal(other.val.meta['source_index'],
                                                                     ds.val.meta['source_index'])
    # truncated file: a clear error naming it
    bad = tmp_path / 'bad'
    bad.mkdir()
    (bad / 'cifar10-jpeg75.npz').write_bytes(p.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r'bad/cifar10-jpeg75.npz is not a readable .npz.*truncated or corrupt'):
        load_dataset('cifar10-jpeg75', root=bad)


def test_cifar_shipped_test_pack_without_shared(tmp_path):
    ds = load_dataset('cifar10-jpeg75', root=tmp_path, splits=('test',))
    assert ds.train is None and ds.val is None and len(ds.test) == 10000
    assert 'fallback' in ds.info and ds.info['class_counts']['test']['cat'] == 1000
    with pytest.raises(FileNotFoundError, match=r'cifar10-jpeg75.npz not found .*ships only its test split.*QZOO_DATA'):
        load_dataset('cifar10-jpeg75', root=tmp_path, splits=('train', 'test'))


def test_cifar_shipped_pack_equals_shared():
    src = need_shared('data', 'cifar10-jpeg75.npz')
    keys = ['header', 'classes', 'test_scans', 'test_offsets', 'test_labels']
    full = _common.load_npz(src, keys)
    pack = _common.load_npz(_common.repo_data() / cifar.TEST_PACK, keys)
    assert all(np.array_equal(full[k], pack[k]) for k in keys)
    a = cifar.decode_jpeg_split(full['header'], full['test_scans'], full['test_offsets'])
    b = cifar.decode_jpeg_split(pack['header'], pack['test_scans'], pack['test_offsets'])
    assert a.shape == (10000, 3, 32, 32) and np.array_equal(a, b)
    manifest = json.loads((_common.repo_data() / 'MANIFEST.json').read_text())
    assert manifest['files'][cifar.TEST_PACK]['source_sha256'] == _common.sha256_file(src)


def test_cifar_full_shared(tmp_path, monkeypatch):
    """The one full decode (60k JPEGs, a few seconds), then the cached load."""
    root = need_shared('data', 'cifar10-jpeg75.npz').parent
    monkeypatch.setenv('QZOO_CACHE', str(tmp_path))
    t0 = time.perf_counter()
    ds = load_dataset('cifar10-jpeg75', root=root)
    t_decode = time.perf_counter() - t0
    assert (len(ds.train), len(ds.val), len(ds.test)) == (45000, 5000, 10000)
    assert set(ds.info['class_counts']['val'].values()) == {500}
    assert set(ds.info['class_counts']['train'].values()) == {4500}
    tr, va = ds.train.meta['source_index'], ds.val.meta['source_index']
    assert len(set(tr.tolist()) | set(va.tolist())) == 50000
    # the split is pinned: changing the rule or seed must be deliberate
    assert ds.info['split_sha256'] == 'f21491f4bcd0ed077516abcd70d234ec03aa64379256737919ccdd8f2f79863c'
    t0 = time.perf_counter()
    again = load_dataset('cifar10-jpeg75', root=root)
    t_cached = time.perf_counter() - t0
    assert torch.equal(again.train.x, ds.train.x) and torch.equal(again.test.x, ds.test.x)
    assert t_cached < t_decode
    packed = load_dataset('cifar10-jpeg75', root=tmp_path / 'empty', splits=('test',))
    assert torch.equal(packed.test.x, ds.test.x) and torch.equal(packed.test.y, ds.test.y)
    assert 'airplane' in ds.summary()


def test_cifar10_torchvision_needs_download(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r'needs a download.*cifar10-jpeg75'):
        load_dataset('cifar10', root=tmp_path)

    class Fake:   # stands in for torchvision's CIFAR10 (whose download this machine can't do)
        def __init__(self, root, train, download):
            n = 100 if train else 10
            self.data = np.full((n, 32, 32, 3), 7, np.uint8)
            self.targets = list(np.arange(n) % 10)
    import torchvision.datasets
    monkeypatch.setattr(torchvision.datasets, 'CIFAR10', Fake)
    ds = load_dataset('cifar10', root=tmp_path)
    assert ds.name == 'cifar10' and (len(ds.train), len(ds.val), len(ds.test)) == (90, 10, 10)
    assert ds.train.x.shape == (90, 3, 32, 32) and set(ds.info['class_counts']['val'].values()) == {1}


# ============================================================================ cwru
def _cwru_folder(tmp_path, length=30000, seed=0):
    import scipy.io
    folder = tmp_path / cwru.FOLDER
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    ids = [97, 118, 185, 222, 105, 169, 209, 130, 197, 234]
    names = ['normal_0_97'] + [f'12k_Drive_End_{c}_0_{i}' for c, i in zip(cwru.CLASSES[1:], ids[1:])]
    for k, (name, rid) in enumerate(zip(names, ids)):
        n = length * (2 if k == 0 else 1)
        sig = (np.sin(np.arange(n) * (k + 1) * 0.01) + 0.1 * rng.standard_normal(n))[:, None]
        scipy.io.savemat(folder / f'{name}.mat', {f'X{rid:03d}_DE_time': sig, f'X{rid:03d}_FE_time': sig * 0.5})
    return folder


def _no_overlap(ds):
    """Reconstruct every window's sample range and check it lies inside its split's segment."""
    for c in cwru.CLASSES:
        seg = ds.info['sources'][c]['segments']
        assert seg['train'][0] == 0 and seg['train'][1] == seg['val'][0] and seg['val'][1] == seg['test'][0]
        assert seg['test'][1] == ds.info['sources'][c]['length']
    for s, sp in ds.splits().items():
        for ci, c in enumerate(cwru.CLASSES):
            lo, hi = ds.info['sources'][c]['segments'][s]
            st = sp.meta['start'][sp.y == ci]
            assert len(st) == ds.info['windows'][s][c]
            assert (st >= lo).all() and (st + cwru.WINDOW <= hi).all()


def _window_hashes(sp):
    return {bytes(r.numpy().tobytes()) for r in sp.x[:, 0]}


def test_cwru_on_fixture(tmp_path):
    _cwru_folder(tmp_path)
    ds = load_dataset('cwru', root=tmp_path, snr_db=None, train_stride=1024)
    assert ds.name == 'cwru-0hp-clean-tr1024' and ds.in_shape == (1, 2048) and ds.classes == cwru.CLASSES
    assert ds.train.x.shape[1:] == (1, 2048) and ds.train.x.dtype == torch.float32
    # windows per segment: floor((len - 2048) / stride) + 1
    seg = ds.info['sources']['B007']['segments']
    assert seg == {'train': [0, 18000], 'val': [18000, 24000], 'test': [24000, 30000]}
    assert ds.info['windows']['train']['B007'] == (18000 - 2048) // 1024 + 1
    assert ds.info['windows']['test']['B007'] == 2 and ds.info['windows']['test']['normal'] == 5
    _no_overlap(ds)
    hs = {s: _window_hashes(sp) for s, sp in ds.splits().items()}
    assert not (hs['train'] & hs['val'] or hs['train'] & hs['test'] or hs['val'] & hs['test'])
    # class k is the k-th file's DE channel: first train window equals the raw signal
    import scipy.io
    raw = scipy.io.loadmat(tmp_path / cwru.FOLDER / '12k_Drive_End_IR014_0_169.mat')['X169_DE_time'][:, 0]
    i = int(torch.nonzero(ds.train.y == cwru.CLASSES.index('IR014'))[0])
    assert torch.equal(ds.train.x[i, 0], torch.from_numpy(raw[:2048].astype(np.float32)))


def test_cwru_noise_and_normalisation_on_fixture(tmp_path):
    _cwru_folder(tmp_path)
    clean = load_dataset('cwru', root=tmp_path, snr_db=None)
    noisy = load_dataset('cwru', root=tmp_path, snr_db=-6)
    assert noisy.name == 'cwru-0hp-snr-6db' and clean.name == 'cwru-0hp-clean'
    for s in ('train', 'test'):
        c, n = clean.splits()[s].x.double(), noisy.splits()[s].x.double()
        snr = 10 * torch.log10((c ** 2).mean(-1) / ((n - c) ** 2).mean(-1))
        assert abs(snr.mean().item() + 6) < 0.1 and snr.std().item() < 0.5       # per window, about -6 dB
    again = load_dataset('cwru', root=tmp_path)
    other = load_dataset('cwru', root=tmp_path, noise_seed=1)
    assert torch.equal(again.train.x, noisy.train.x) and torch.equal(again.test.x, noisy.test.x)
    assert not torch.equal(other.test.x, noisy.test.x) and other.name == 'cwru-0hp-snr-6db-noise1'
    z = load_dataset('cwru', root=tmp_path, normalize='window', splits=('test',))
    m, sd = z.test.x.double().mean(-1), z.test.x.double().std(-1, unbiased=False)
    assert torch.allclose(m, torch.zeros_like(m), atol=1e-5) and torch.allclose(sd, torch.ones_like(sd), atol=1e-4)
    # the test split does not depend on the train stride or on which splits were asked for
    t2 = load_dataset('cwru', root=tmp_path, train_stride=100, splits=('test',))
    assert torch.equal(t2.test.x, noisy.test.x)


def test_cwru_errors(tmp_path):
    import scipy.io
    folder = _cwru_folder(tmp_path)
    os.remove(folder / '12k_Drive_End_B014_0_185.mat')
    with pytest.raises(FileNotFoundError, match=r"no .mat file for class\(es\) \['B014'\]"):
        load_dataset('cwru', root=tmp_path)
    scipy.io.savemat(folder / '12k_Drive_End_B014_0_185.mat', {'X185_FE_time': np.zeros((20000, 1))})
    with pytest.raises(ValueError, match=r"B014_0_185.mat has no drive-end channel 'X185_DE_time' \(keys: \['X185_FE_time'\]"):
        load_dataset('cwru', root=tmp_path)
    (folder / '12k_Drive_End_B014_0_185.mat').write_bytes(b'not a mat file at all' * 10)
    with pytest.raises(ValueError, match=r'B014_0_185.mat is not a readable MATLAB file'):
        load_dataset('cwru', root=tmp_path)
    with pytest.raises(FileNotFoundError, match=r'cwru-12k-drive-end-0hp not found .*ships only the test segments.*QZOO_DATA'):
        load_dataset('cwru', root=tmp_path / 'nothing')


def test_cwru_shared_no_leak_and_counts():
    root = need_shared('data', cwru.FOLDER).parent
    ds = load_dataset('cwru', root=root, snr_db=None)
    _no_overlap(ds)
    hs = {s: _window_hashes(sp) for s, sp in ds.splits().items()}
    assert not (hs['train'] & hs['val'] or hs['train'] & hs['test'] or hs['val'] & hs['test'])
    assert ds.info['windows']['test'] == {'normal': 23, **{c: 11 for c in cwru.CLASSES[1:]}}
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1536, 122, 122)
    assert ds.info['sources']['normal']['key'] == 'X097_DE_time'
    assert ds.info['sources']['OR021@6']['file'].endswith('12k_Drive_End_OR021@6_0_234.mat')
    json.dumps(ds.info)
    assert 'OR014@6' in ds.summary()


@pytest.mark.parametrize('opts', [{}, dict(snr_db=0.0, normalize='window', eval_stride=1000), dict(snr_db=None)])
def test_cwru_shipped_pack_bit_identical(tmp_path, opts):
    packed = load_dataset('cwru', root=tmp_path, splits=('test',), **opts)   # works without ../shared
    assert 'fallback' in packed.info and packed.test.x.shape[1:] == (1, 2048)
    root = need_shared('data', cwru.FOLDER).parent
    full = load_dataset('cwru', root=root, splits=('test',), **opts)
    assert full.name == packed.name
    assert torch.equal(full.test.x, packed.test.x) and torch.equal(full.test.y, packed.test.y)
    assert torch.equal(full.test.meta['start'], packed.test.meta['start'])
    assert full.info['windows'] == packed.info['windows']
    assert all(full.info['sources'][c]['sha256'] == packed.info['sources'][c]['sha256'] for c in cwru.CLASSES)


# ============================================================================ dsb2018-96
def _dsb_folder(tmp_path):
    from PIL import Image
    folder = tmp_path / 'dsb2018_96'
    (folder / 'images').mkdir(parents=True)
    (folder / 'masks' / '0').mkdir(parents=True)
    ids = ['a1', 'b2', 'c3', 'd4', 'e5']
    modes = ['RGB', 'RGBA', 'L', 'RGB', 'RGB']
    rng = np.random.default_rng(0)
    for i, m in zip(ids, modes):
        arr = (rng.random((96, 96, 4)) * 255).astype(np.uint8)
        img = Image.fromarray(arr).convert(m)
        img.save(folder / 'images' / f'{i}.png')
        mask = np.zeros((96, 96), np.uint8)
        mask[:, :48] = 127          # not foreground (> 127 is)
        mask[:10, :] = 128          # foreground
        Image.fromarray(mask).save(folder / 'masks' / '0' / f'{i}.png')
    doc = {'seed': None, 'rule': 'hand-made', 'ids': {'train': ids[:3], 'val': ids[3:4], 'test': ids[4:]}}
    split = tmp_path / 'split.json'
    split.write_text(json.dumps(doc))
    return folder, split


def test_dsb_on_fixture(tmp_path):
    folder, split = _dsb_folder(tmp_path)
    ds = load_dataset('dsb2018-96', root=tmp_path, split_file=split)
    assert ds.name.startswith('dsb2018-96-split') and ds.task == 'segmentation' and ds.num_classes == 1
    assert ds.train.x.shape == (3, 3, 96, 96) and ds.train.x.dtype == torch.uint8
    assert ds.train.y.shape == (3, 1, 96, 96) and ds.train.y.dtype == torch.uint8
    assert ds.train.y.unique().tolist() == [0, 1]
    assert int(ds.train.y[0].sum()) == 10 * 96                # rows 0..9 only: 127 -> 0, 128 -> 1
    gray = ds.train.x[2]                                      # the 'L' image came back as 3 equal channels
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert ds.train.meta['ids'] == ['a1', 'b2', 'c3'] and ds.normalize == ((0.5,) * 3, (0.5,) * 3)
    assert ds.augment == 'flip2d' and 'foreground' in ds.summary()
    os.remove(folder / 'images' / 'b2.png')
    with pytest.raises(FileNotFoundError, match=r'1 image\(s\) and 0 mask\(s\) listed .* are missing'):
        load_dataset('dsb2018-96', root=tmp_path, split_file=split)
    # the repository's split lists 670 ids this folder lacks
    with pytest.raises(FileNotFoundError, match=r'670 image\(s\) .*missing'):
        load_dataset('dsb2018-96', root=tmp_path)


def test_dsb_split_file_and_pack_without_shared(tmp_path):
    doc = segmentation.read_dsb_split()
    assert doc['counts'] == {'train': 536, 'val': 67, 'test': 67} and doc['seed'] == 0
    ids = [i for s in ('train', 'val', 'test') for i in doc['ids'][s]]
    assert len(set(ids)) == 670
    assert segmentation.make_dsb_split(ids, seed=0) == doc           # the committed file follows its rule
    ds = load_dataset('dsb2018-96', root=tmp_path, splits=('test',))
    assert len(ds.test) == 67 and ds.test.meta['ids'] == doc['ids']['test'] and 'fallback' in ds.info
    assert ds.test.y.max() == 1 and ds.test.x.shape == (67, 3, 96, 96)
    with pytest.raises(FileNotFoundError, match=r'dsb2018_96 not found .*ships only the test split.*QZOO_DATA'):
        load_dataset('dsb2018-96', root=tmp_path, splits=('train',))


def test_dsb_shared_and_pack_equal():
    folder = need_shared('data', 'dsb2018_96')
    assert segmentation.make_dsb_split(segmentation.dsb_ids(folder), 0) == segmentation.read_dsb_split()
    ds = load_dataset('dsb2018-96', root=folder.parent)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (536, 67, 67) and ds.info['unlisted_ids'] == 0
    assert 0.10 < ds.info['foreground_fraction']['train'] < 0.20
    packed = load_dataset('dsb2018-96', root=folder.parent / 'no-such-dir', splits=('test',))
    assert torch.equal(packed.test.x, ds.test.x) and torch.equal(packed.test.y, ds.test.y)
    json.dumps(ds.info)


# ============================================================================ carvana
def _carvana(tmp_path, cars=5, views=3):
    from PIL import Image
    root = tmp_path / 'carvana'
    (root / 'train').mkdir(parents=True)
    (root / 'train_masks').mkdir()
    rng = np.random.default_rng(0)
    for c in range(cars):
        for v in range(1, views + 1):
            i = f'{c:04x}beef_{v:02d}'
            Image.fromarray((rng.random((32, 48, 3)) * 255).astype(np.uint8)).save(root / 'train' / f'{i}.jpg')
            m = np.zeros((32, 48), np.uint8)
            m[8:24, 12:36] = 1
            pm = Image.fromarray(m, 'L').convert('P')
            pm.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
            pm.save(root / 'train_masks' / f'{i}_mask.gif')
    return root


def test_carvana_on_fixture(tmp_path):
    root = _carvana(tmp_path)
    ds = load_dataset('carvana', root=tmp_path, size=(16, 24))
    assert ds.name == 'carvana-16x24' and ds.in_shape == (3, 16, 24) and ds.task == 'segmentation'
    assert (len(ds.train), len(ds.val), len(ds.test)) == (9, 3, 3) and ds.info['cars'] == {'test': 1, 'val': 1, 'train': 3}
    cars = {s: {segmentation.car_of(i) for i in sp.meta['ids']} for s, sp in ds.splits().items()}
    assert not (cars['train'] & cars['val'] or cars['train'] & cars['test'] or cars['val'] & cars['test'])
    y = ds.train.y
    assert y.shape == (9, 1, 16, 24) and y.dtype == torch.uint8 and y.unique().tolist() == [0, 1]
    assert y[0, 0, 8, 12] == 1 and y[0, 0, 0, 0] == 0 and abs(y.float().mean().item() - 0.25) < 0.03
    again = load_dataset('carvana', root=root, size=(16, 24))          # root may be the dataset folder
    assert torch.equal(again.test.x, ds.test.x)
    other = load_dataset('carvana', root=tmp_path, size=(16, 24), split_seed=3)
    assert other.name == 'carvana-16x24-split3'
    os.remove(root / 'train_masks' / f'{ds.test.meta["ids"][0]}_mask.gif')
    with pytest.raises(FileNotFoundError, match=r'no mask for 1 image'):
        load_dataset('carvana', root=tmp_path, size=(16, 24))
    with pytest.raises(FileNotFoundError, match=r'carvana/train not found.*Carvana Image Masking.*QZOO_DATA'):
        load_dataset('carvana', root=tmp_path / 'none')


def test_datasplits_summary_and_info_json():
    ds = load_dataset('synthetic', kind='gaussians', k=4, n_train=8, n_val=4, n_test=4)
    text = ds.summary()
    assert 'g3' in text and 'total' in text and text.splitlines()[-1].split() == ['total', '8', '4', '4']
    info = json.loads(json.dumps(ds.info))
    assert info['sizes'] == {'train': 8, 'val': 4, 'test': 4} and info['options']['k'] == 4


def test_shipped_pack_checked_against_manifest(tmp_path, monkeypatch):
    import shutil
    repo = tmp_path / 'data'
    shutil.copytree(_common.repo_data(), repo)
    monkeypatch.setattr(_common, 'repo_data', lambda *what: repo)
    raw = bytearray((repo / cwru.TEST_PACK).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (repo / cwru.TEST_PACK).write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r'cwru-0hp-test.npz does not match data/MANIFEST.json'):
        load_dataset('cwru', root=tmp_path / 'none', splits=('test',))
    os.remove(repo / segmentation.DSB_TEST_PACK)
    with pytest.raises(FileNotFoundError, match=r'dsb2018-96-test.npz \(shipped with the repository\) is missing'):
        load_dataset('dsb2018-96', root=tmp_path / 'none', splits=('test',))


def test_shipped_packs_are_found_in_the_checkout_when_the_package_is_installed_elsewhere(tmp_path, monkeypatch):
    """An installed wheel (its package outside any checkout) run inside a clone reads the clone's data/; with no
    checkout at all, the error says a checkout is needed and how to get one (not 'restore it with git')."""
    from conftest import ROOT
    from qzoo import checkout
    monkeypatch.delenv('QZOO_DATA', raising=False)
    site = tmp_path / 'site-packages'
    (site / 'qzoo').mkdir(parents=True)
    monkeypatch.setattr(checkout, 'PACKAGE_PARENT', site)   # where a wheel puts the package
    monkeypatch.chdir(ROOT)                                 # the user's clone
    ds = load_dataset('cwru', root=tmp_path / 'none', splits=('test',))
    assert ds.info['fallback'].startswith(str(ROOT / 'data' / cwru.TEST_PACK))
    assert _common.data_root() == ROOT.parent / 'shared' / 'data'   # <checkout>/../shared/data
    monkeypatch.chdir(tmp_path)                             # no checkout anywhere
    for name in ('cwru', 'cifar10-jpeg75', 'dsb2018-96'):
        with pytest.raises(FileNotFoundError, match=r'reading data/\S+ .*needs a checkout of the qzoo repository.*'
                                                    r'Fix: clone the repository and run the command inside it'):
            load_dataset(name, root=tmp_path / 'none', splits=('test',))
