"""qzoo.external: the registry of published CIFAR ResNet checkpoints and load_external.

Loading tests seed a temporary TORCH_HOME with the real akamaster files from
../shared/checkpoints/akamaster and go through the real
torch.hub.load_state_dict_from_url(check_hash=True, weights_only=True) path (no mocks
of torch). "Downloads" use file:// URLs, so no test touches the network.
"""
import dataclasses
import hashlib
import io
import re
import shutil

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

import qzoo
from qzoo import external as ext
from qzoo.external import (EXTERNAL, ExternalHashError, ExternalLayoutError, ExternalNotCachedError,
                           UnknownExternalError, cache_path, convert_state_dict, list_external, load_external)
from conftest import ROOT, need_shared

AKA_FILES = {'akamaster/resnet20': 'resnet20-12fca82f.th', 'akamaster/resnet56': 'resnet56-4bfd9763.th'}
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


# ---- fixtures ------------------------------------------------------------------------------
@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch.hub cache under a temporary TORCH_HOME; returns its checkpoints/ folder."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.delenv(ext.OFFLINE_ENV, raising=False)
    if getattr(torch.hub, '_hub_dir', None) is not None:  # someone called torch.hub.set_dir()
        monkeypatch.setattr(torch.hub, '_hub_dir', None)
    ckpt = tmp_path / 'torch' / 'hub' / 'checkpoints'
    ckpt.mkdir(parents=True)
    assert torch.hub.get_dir() == str(tmp_path / 'torch' / 'hub')
    return ckpt


@pytest.fixture
def seeded(hub):
    """The hub cache holding copies of the real akamaster resnet20/resnet56 files."""
    src = need_shared('checkpoints', 'akamaster')
    for f in AKA_FILES.values():
        if not (src / f).is_file():
            pytest.skip(f'needs {src / f} (the published akamaster checkpoint in ../shared)')
        shutil.copyfile(src / f, hub / f)
    return hub


def _with_file(monkeypatch, name, path, **changes):
    """Point registry entry ``name`` at a local file (file:// URL, hash-named), for download tests;
    with ``monkeypatch=None`` return the changed entry without registering it."""
    entry = dataclasses.replace(EXTERNAL[name], url=path.resolve().as_uri(), file_name=path.name,
                                sha256_prefix=re.search(r'-([0-9a-f]{8})\.', path.name).group(1), **changes)
    if monkeypatch is not None:
        monkeypatch.setitem(EXTERNAL, name, entry)
    return entry


def _hash_named(path, stem, ext_):
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    return path.rename(path.with_name(f'{stem}-{digest}.{ext_}'))


# ---- registry ------------------------------------------------------------------------------
def test_registry_names_and_published_metadata():
    assert list_external() == [f'akamaster/resnet{d}' for d in (20, 32, 44, 56, 110, 1202)] + [
        f'chenyaofo/{ds}_resnet{d}' for ds in ('cifar10', 'cifar100') for d in (20, 32, 44, 56)] + [
        'quadralib/qresnet14']
    for name, e in EXTERNAL.items():
        assert e.name == name
        assert re.fullmatch(r'[0-9a-f]{8}', e.sha256_prefix)
        assert f'-{e.sha256_prefix}.' in e.file_name
        assert e.url.endswith('/' + e.file_name) or e.url.endswith('/' + e.file_name.replace(f'-{e.sha256_prefix}', ''))
        assert e.dataset in ('cifar10', 'cifar100')   # the ORIGINAL datasets, never a JPEG variant
        assert 'jpeg' not in repr(e.as_dict()).lower()
        assert e.num_classes == {'cifar10': 10, 'cifar100': 100}[e.dataset] == e.model_args['num_classes']
        assert e.depth == int(re.fullmatch(r'q?resnet(\d+)', e.architecture).group(1)) and (e.depth - 2) % 6 == 0
        assert e.tag == f"{name.split('/')[0]}_{e.dataset}"
        if name.startswith('akamaster/'):
            assert e.url == ('https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/'
                             + e.file_name)
            assert (e.shortcut, e.layout, e.license, (e.mean, e.std)) == ('A', 'akamaster', 'bsd-2-clause', IMAGENET)
            assert 91 < e.reported_top1 < 94
        elif name.startswith('chenyaofo/'):
            assert e.url.startswith('https://github.com/chenyaofo/pytorch-cifar-models/releases/download/resnet/')
            assert (e.shortcut, e.layout, e.license) == ('B', 'chenyaofo', 'bsd-3-clause')
            assert e.reported_top1 > 92 if e.dataset == 'cifar10' else 68 < e.reported_top1 < 73
        else:
            assert name == 'quadralib/qresnet14' and (e.layout, e.license) == ('quadralib', 'mit')
    assert EXTERNAL['akamaster/resnet20'].reported_top1 == 91.73   # README: 8.27% error
    assert EXTERNAL['chenyaofo/cifar100_resnet56'].mean == (0.507, 0.4865, 0.4409)
    with pytest.raises(dataclasses.FrozenInstanceError):
        EXTERNAL['akamaster/resnet20'].url = 'x'


@pytest.mark.parametrize('name', list_external())
def test_params_computed_with_qzoo_match_registry_and_published(name):
    e = EXTERNAL[name]
    model = ext._build(e)
    n = qzoo.count_params(model)
    assert n == e.params
    assert model.shortcut_type == e.shortcut and model.num_classes == e.num_classes
    if e.layout == 'quadralib':   # QuadraLib's README count matches neither the file nor the folded model
        assert e.params_reported == '0.39M' and e.params_file > n
        assert f'{n:,}' in e.notes and f'{e.params_file:,}' in e.notes and '0.39M' in e.notes
        return
    decimals = len(e.params_reported.rstrip('M').partition('.')[2])
    assert f'{n / 1e6:.{decimals}f}M' == e.params_reported


def test_list_external_filters():
    assert list_external('akamaster') == [n for n in list_external() if n.startswith('akamaster/')]
    assert list_external('*cifar100*') == [f'chenyaofo/cifar100_resnet{d}' for d in (20, 32, 44, 56)]
    assert list_external('*resnet56') == ['akamaster/resnet56', 'chenyaofo/cifar10_resnet56',
                                          'chenyaofo/cifar100_resnet56']
    assert list_external('nothing-like-this') == []


def test_unknown_name_lists_valid_and_close_names():
    with pytest.raises(UnknownExternalError) as ei:
        load_external('resnet20')
    msg = str(ei.value)
    assert "'akamaster/resnet20'" in msg and "'chenyaofo/cifar10_resnet20'" in msg   # suggestions
    assert 'akamaster/resnet1202' in msg and 'chenyaofo/cifar100_resnet56' in msg    # the full list
    assert isinstance(ei.value, ValueError)
    with pytest.raises(UnknownExternalError, match="Did you mean 'akamaster/resnet56'"):
        ext.get_external('akamaster/resnet65')


# ---- loading the real akamaster files --------------------------------------------------------
@pytest.mark.parametrize('name,params', [('akamaster/resnet20', 269_722), ('akamaster/resnet56', 853_018)])
def test_load_akamaster_strict(seeded, name, params):
    model = load_external(name)
    assert qzoo.count_params(model) == params == EXTERNAL[name].params
    assert not model.training
    cfg = model.pretrained_cfg
    assert (cfg['mean'], cfg['std']) == IMAGENET
    assert cfg['url'] == EXTERNAL[name].url and cfg['tag'] == 'akamaster_cifar10' and cfg['source'] == 'external'
    assert cfg['dataset'] == 'cifar10' and cfg['num_classes'] == 10
    assert cfg['checkpoint_meta']['best_prec1'] == pytest.approx({'akamaster/resnet20': 91.78,
                                                                  'akamaster/resnet56': 93.62}[name], abs=1e-3)
    data_cfg = timm.data.resolve_data_config({}, model=model)   # evaluation code normalises with these
    assert (data_cfg['mean'], data_cfg['std']) == IMAGENET
    # the tensors are the file's, under qzoo's names
    raw = torch.load(seeded / AKA_FILES[name], weights_only=True, map_location='cpu')['state_dict']
    sd = model.state_dict()
    assert torch.equal(sd['fc.weight'], raw['module.linear.weight'])
    assert torch.equal(sd['layer3.0.bn2.running_var'], raw['module.layer3.0.bn2.running_var'])
    assert len(raw) + sum(k.endswith('num_batches_tracked') for k in sd) == len(sd)  # legacy file: no nbt


def _bn(x, sd, p):
    return F.batch_norm(x, sd[p + 'running_mean'], sd[p + 'running_var'], sd[p + 'weight'], sd[p + 'bias'],
                        False, 0.0, 1e-5)


def _reference_forward(sd, x, prefix, fc, downsample):
    """He et al. CIFAR ResNet computed directly from a checkpoint in its own key layout.
    Shortcuts: ``downsample`` 1x1 conv + BN where the file has one, else option A
    (subsample by 2, zero-pad new channels equally on both sides)."""
    x = F.relu(_bn(F.conv2d(x, sd[prefix + 'conv1.weight'], padding=1), sd, prefix + 'bn1.'))
    for i in (1, 2, 3):
        j = 0
        while f'{prefix}layer{i}.{j}.conv1.weight' in sd:
            p, stride = f'{prefix}layer{i}.{j}.', 2 if i > 1 and j == 0 else 1
            out = F.relu(_bn(F.conv2d(x, sd[p + 'conv1.weight'], stride=stride, padding=1), sd, p + 'bn1.'))
            out = _bn(F.conv2d(out, sd[p + 'conv2.weight'], padding=1), sd, p + 'bn2.')
            if p + f'{downsample}.0.weight' in sd:
                short = _bn(F.conv2d(x, sd[p + f'{downsample}.0.weight'], stride=stride), sd, p + f'{downsample}.1.')
            elif stride != 1 or x.shape[1] != out.shape[1]:
                extra = out.shape[1] - x.shape[1]
                short = F.pad(x[:, :, ::stride, ::stride], (0, 0, 0, 0, extra // 2, extra - extra // 2))
            else:
                short = x
            x = F.relu(out + short)
            j += 1
    return F.linear(x.mean((2, 3)), sd[prefix + fc + '.weight'], sd[prefix + fc + '.bias'])


def test_converted_akamaster_computes_the_published_network(seeded):
    model = load_external('akamaster/resnet20')
    raw = torch.load(seeded / AKA_FILES['akamaster/resnet20'], weights_only=True, map_location='cpu')['state_dict']
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _reference_forward(raw, x, 'module.', 'linear', 'downsample'),
                                   rtol=1e-4, atol=1e-4)


# ---- sane predictions on real images --------------------------------------------------------
@pytest.fixture(scope='module')
def jpeg75_test_subset():
    """Every 20th image of the cifar10-jpeg75 test split (500 images), as floats in [0, 1]."""
    from PIL import Image
    path = need_shared('data', 'cifar10-jpeg75.npz')
    d = np.load(path)
    header, scans, offsets = d['header'].tobytes(), d['test_scans'], d['test_offsets']
    idx = range(0, len(d['test_labels']), 20)
    imgs = np.stack([np.asarray(Image.open(io.BytesIO(header + scans[offsets[i]:offsets[i + 1]].tobytes()))
                                .convert('RGB')) for i in idx])
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div_(255)
    return x, torch.from_numpy(d['test_labels'][::20].astype(np.int64))


# full 10k test split of cifar10-jpeg75 (measured once): resnet20 81.03%, resnet56 83.20%;
# on this 500-image subset: 80.0% and 83.0%. Original CIFAR-10 (README): 91.73% / 93.39%.
@pytest.mark.parametrize('name,band', [('akamaster/resnet20', (0.72, 0.88)), ('akamaster/resnet56', (0.75, 0.90))])
def test_predictions_on_cifar10_jpeg75(seeded, jpeg75_test_subset, name, band):
    x, y = jpeg75_test_subset
    model = load_external(name)
    mean = torch.tensor(model.pretrained_cfg['mean']).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg['std']).view(1, 3, 1, 1)
    with torch.inference_mode():
        top1 = (model((x - mean) / std).argmax(1) == y).float().mean().item()
    assert band[0] < top1 < band[1], f'{name}: top-1 {top1:.3f} on 500 cifar10-jpeg75 test images'


# ---- errors: corrupt, truncated, missing -----------------------------------------------------
def test_flipped_byte_is_a_hash_error_with_the_fix(seeded):
    path = seeded / AKA_FILES['akamaster/resnet20']
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ExternalHashError) as ei:
        load_external('akamaster/resnet20')
    msg = str(ei.value)
    assert str(path) in msg and "'12fca82f'" in msg and f'rm {path}' in msg and 'delete it' in msg
    assert 'corrupt' in msg and EXTERNAL['akamaster/resnet20'].url in msg
    assert path.exists()   # never deleted behind the user's back


def test_truncated_file_is_a_hash_error_saying_truncated(seeded):
    path = seeded / AKA_FILES['akamaster/resnet56']
    path.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(ExternalHashError, match='truncated') as ei:
        load_external('akamaster/resnet56')
    assert "'4bfd9763'" in str(ei.value) and f'rm {path}' in str(ei.value) and '100,000 bytes' in str(ei.value)


@pytest.mark.parametrize('how', ['download=False', 'QZOO_OFFLINE=1'])
def test_missing_file_offline_says_where_to_put_it(hub, monkeypatch, how):
    kw = {}
    if how == 'download=False':
        kw['download'] = False
    else:
        monkeypatch.setenv(ext.OFFLINE_ENV, '1')
    with pytest.raises(ExternalNotCachedError) as ei:
        load_external('chenyaofo/cifar100_resnet56', **kw)
    msg = str(ei.value)
    e = EXTERNAL['chenyaofo/cifar100_resnet56']
    assert str(hub / e.file_name) in msg and e.url in msg and 'TORCH_HOME' in msg
    assert 'network was not tried' in msg
    assert cache_path(e.name) == hub / e.file_name
    assert list(hub.iterdir()) == []


def test_missing_file_with_failing_download_is_the_same_clear_error(hub, monkeypatch, tmp_path):
    # a file:// URL that does not exist: the real torch.hub download path fails at once, no network
    entry = dataclasses.replace(EXTERNAL['akamaster/resnet20'],
                                url=(tmp_path / 'nowhere' / 'resnet20-12fca82f.th').as_uri())
    monkeypatch.setitem(EXTERNAL, entry.name, entry)
    with pytest.raises(ExternalNotCachedError) as ei:
        load_external(entry.name, download=True)
    msg = str(ei.value)
    assert 'downloading' in msg and 'failed' in msg and str(hub / entry.file_name) in msg
    assert [p for p in hub.iterdir()] == []   # no partial file left behind


def test_download_path_checks_the_hash(hub, monkeypatch, tmp_path):
    src = need_shared('checkpoints', 'akamaster', AKA_FILES['akamaster/resnet20'])
    served = tmp_path / 'served'
    served.mkdir()
    good = served / src.name
    shutil.copyfile(src, good)
    _with_file(monkeypatch, 'akamaster/resnet20', good)
    model = load_external('akamaster/resnet20', download=True)    # "downloaded" by torch.hub, hash-checked
    assert (hub / src.name).is_file() and qzoo.count_params(model) == 269_722
    # a published file that changed: torch's RuntimeError is wrapped with the fix
    (hub / src.name).unlink()
    data = bytearray(good.read_bytes())
    data[-10] ^= 0xFF
    good.write_bytes(bytes(data))
    with pytest.raises(ExternalHashError) as ei:
        load_external('akamaster/resnet20')
    assert 'downloaded from' in str(ei.value) and "'12fca82f'" in str(ei.value)
    assert isinstance(ei.value.__cause__, RuntimeError) and 'invalid hash value' in str(ei.value.__cause__)
    assert not (hub / src.name).exists()


def test_keys_that_do_not_fit_are_listed(seeded, monkeypatch):
    # the resnet20 file claimed for a ResNet-32: 2 blocks x 3 stages x 12 entries missing
    wrong = dataclasses.replace(EXTERNAL['akamaster/resnet20'], architecture='resnet32', depth=32)
    monkeypatch.setitem(EXTERNAL, wrong.name, wrong)
    with pytest.raises(ExternalLayoutError) as ei:
        load_external(wrong.name)
    msg = str(ei.value)
    assert 'missing 72 keys: layer1.3.' in msg and 'resnet32' in msg
    assert str(seeded / AKA_FILES['akamaster/resnet20']) in msg
    # ... and for 100 classes: shape mismatches of the classifier
    e = EXTERNAL['akamaster/resnet20']
    wrong = dataclasses.replace(e, num_classes=100, label_names=None, model_args=dict(e.model_args, num_classes=100))
    monkeypatch.setitem(EXTERNAL, wrong.name, wrong)
    with pytest.raises(ExternalLayoutError, match=r'shape mismatches: fc.bias: checkpoint \(10,\) vs model \(100,\), '
                                                  r'fc.weight: checkpoint \(10, 64\) vs model \(100, 64\)'):
        load_external(wrong.name)


_EXECUTED = []


def _mark(what):
    _EXECUTED.append(what)


class _Payload:
    def __reduce__(self):   # unpickling would call _mark('code ran')
        return _mark, ('code ran',)


def test_weights_only_never_runs_pickled_code(hub, monkeypatch, tmp_path):
    path = tmp_path / 'evil.th'
    torch.save({'state_dict': {}, 'payload': _Payload()}, path)
    path = _hash_named(path, 'resnet20', 'th')
    shutil.copyfile(path, hub / path.name)
    _with_file(monkeypatch, 'akamaster/resnet20', path)
    with pytest.raises(ExternalLayoutError, match='weights_only=True'):
        load_external('akamaster/resnet20')
    assert _EXECUTED == []
    torch.load(path, weights_only=False)   # control: the payload is live when unpickled unsafely
    assert _EXECUTED == ['code ran']
    _EXECUTED.clear()


# ---- option B (chenyaofo) key conversion ----------------------------------------------------
def _chenyaofo_state_dict(depth=20, num_classes=10, seed=0):
    """A random state dict in chenyaofo/pytorch-cifar-models' layout (torchvision-style
    BasicBlocks; stage-entry blocks of layer2/3 have 'downsample.0' conv1x1 + 'downsample.1' BN;
    classifier 'fc'; saved by PyTorch >= 1.x, so BN has num_batches_tracked)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def conv(key, o, i, k):
        sd[key] = torch.randn(o, i, k, k, generator=g) * (2 / (i * k * k)) ** 0.5

    def bn(p, c):
        sd[p + 'weight'] = 1 + 0.1 * torch.randn(c, generator=g)
        sd[p + 'bias'] = 0.1 * torch.randn(c, generator=g)
        sd[p + 'running_mean'] = 0.1 * torch.randn(c, generator=g)
        sd[p + 'running_var'] = 0.5 + torch.rand(c, generator=g)
        sd[p + 'num_batches_tracked'] = torch.tensor(1000)

    conv('conv1.weight', 16, 3, 3)
    bn('bn1.', 16)
    n, cin = (depth - 2) // 6, 16
    for i, cout in enumerate((16, 32, 64), 1):
        for j in range(n):
            p = f'layer{i}.{j}.'
            conv(p + 'conv1.weight', cout, cin, 3)
            bn(p + 'bn1.', cout)
            conv(p + 'conv2.weight', cout, cout, 3)
            bn(p + 'bn2.', cout)
            if j == 0 and cin != cout:
                conv(p + 'downsample.0.weight', cout, cin, 1)
                bn(p + 'downsample.1.', cout)
            cin = cout
    sd['fc.weight'] = 0.1 * torch.randn(num_classes, 64, generator=g)
    sd['fc.bias'] = torch.zeros(num_classes)
    return sd


@pytest.mark.parametrize('depth,num_classes', [(20, 10), (32, 100)])
def test_option_b_conversion_loads_strictly_and_computes_the_same(depth, num_classes):
    raw = _chenyaofo_state_dict(depth, num_classes)
    sd, meta = convert_state_dict(raw, 'chenyaofo')
    assert meta == {} and not any('downsample' in k for k in sd)
    assert torch.equal(sd['layer2.0.shortcut.0.weight'], raw['layer2.0.downsample.0.weight'])
    assert torch.equal(sd['layer3.0.shortcut.1.running_var'], raw['layer3.0.downsample.1.running_var'])
    model = qzoo.create_model(f'resnet{depth}', shortcut='B', num_classes=num_classes)
    result = model.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), _reference_forward(raw, x, '', 'fc', 'downsample'),
                                   rtol=1e-4, atol=1e-4)
    # the same, wrapped as {'state_dict': {'module.' ...}} (a DataParallel training checkpoint)
    sd2, _ = convert_state_dict({'state_dict': {'module.' + k: v for k, v in raw.items()}}, 'chenyaofo')
    assert sd2.keys() == sd.keys()


def test_option_b_end_to_end_through_the_hub_cache(hub, tmp_path):
    path = tmp_path / 'synthetic.pt'
    torch.save(_chenyaofo_state_dict(20, 100), path)
    path = _hash_named(path, 'cifar100_resnet20', 'pt')
    shutil.copyfile(path, hub / path.name)
    entry = _with_file(None, 'chenyaofo/cifar100_resnet20', path)   # an entry object, not registered
    model = load_external(entry)
    assert cache_path(entry) == hub / path.name
    assert qzoo.count_params(model) == EXTERNAL['chenyaofo/cifar100_resnet20'].params == 278_324
    assert model.pretrained_cfg['mean'] == (0.507, 0.4865, 0.4409)
    assert model.pretrained_cfg['std'] == (0.2673, 0.2564, 0.2761)
    assert model.pretrained_cfg['tag'] == 'chenyaofo_cifar100' and model.pretrained_cfg['license'] == 'bsd-3-clause'
    raw = torch.load(path, weights_only=True)
    assert torch.equal(model.layer3[0].shortcut[0].weight, raw['layer3.0.downsample.0.weight'])
    assert int(model.layer3[0].shortcut[1].num_batches_tracked) == 1000


def test_akamaster_conversion_fills_legacy_bn_counters():
    raw = {'best_prec1': 90.0, 'state_dict': {'module.bn1.running_mean': torch.zeros(2),
                                              'module.linear.weight': torch.zeros(10, 2)}}
    sd, meta = convert_state_dict(raw, 'akamaster')
    assert meta == {'best_prec1': 90.0}
    assert set(sd) == {'bn1.running_mean', 'bn1.num_batches_tracked', 'fc.weight'}


# ---- one typed record ----------------------------------------------------------------------
def test_entries_are_weights_records_with_model_args_and_label_names():
    from qzoo.data.cifar import CLASSES
    from qzoo.weights import WeightsRecord
    for e in EXTERNAL.values():
        assert isinstance(e, WeightsRecord) and e.arch == e.architecture
        assert e.model_args['num_classes'] == e.num_classes and e.model_args['shortcut'] == e.shortcut
        assert len(e.label_names) == e.num_classes
        assert e.as_dict()['architecture'] == e.architecture and 'arch' not in e.as_dict()
    assert list(EXTERNAL['akamaster/resnet20'].label_names) == CLASSES
    c100 = EXTERNAL['chenyaofo/cifar100_resnet20'].label_names
    assert len(set(c100)) == 100 and list(c100) == sorted(c100) and c100[:3] == ('apple', 'aquarium_fish', 'baby')
    with pytest.raises(AttributeError):
        EXTERNAL['akamaster/resnet20'].arch = 'resnet32'    # a read-only alias
    assert len(set(EXTERNAL.values())) == len(EXTERNAL)      # hashable, as before
    e = EXTERNAL['akamaster/resnet20']
    with pytest.raises(ValueError, match='model_args num_classes 10 != num_classes 100'):
        dataclasses.replace(e, num_classes=100, label_names=None)
    with pytest.raises(ValueError, match='11 label_names for 10 classes'):
        dataclasses.replace(e, label_names=e.label_names + ('extra',))


# ---- QuadraLib QResNet14 (quadratic; Quadraour folded into the quadralib neuron) ---------------
QL = 'quadralib/qresnet14'
QL_MEAN_STD = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))


def _quadralib_checkpoint(seed=0, conv_bias=True, dtype=torch.float64, prefix=''):
    """A random checkpoint in QuadraLib's format: {'net': state_dict, 'acc', 'epoch'} of
    image_classification/models/resnet.py qresnet14 (Quadraour = conv1..3 + bn1..3 per block
    conv; plain stem conv; 1x1 conv + BN shortcuts; classifier 'linear'), random BN statistics."""
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def conv(key, o, i, k, bias=False, scale=1.0):
        sd[key + '.weight'] = (torch.randn(o, i, k, k, generator=g, dtype=dtype) * scale * (1 / (i * k * k)) ** 0.5)
        if bias:
            sd[key + '.bias'] = 0.1 * torch.randn(o, generator=g, dtype=dtype)

    def bn(p, c, gamma=(0.5, 1.0)):
        sd[p + '.weight'] = gamma[0] + gamma[1] * torch.rand(c, generator=g, dtype=dtype)
        sd[p + '.bias'] = 0.2 * torch.randn(c, generator=g, dtype=dtype)
        sd[p + '.running_mean'] = 0.2 * torch.randn(c, generator=g, dtype=dtype)
        sd[p + '.running_var'] = 0.5 + torch.rand(c, generator=g, dtype=dtype)
        sd[p + '.num_batches_tracked'] = torch.tensor(39100)

    def quadraour(p, i, o):   # product terms scaled down so that 12 products in series stay finite
        for t in (1, 2, 3):
            conv(f'{p}.conv{t}', o, i, 3, bias=conv_bias)
            bn(f'{p}.bn{t}', o, (0.5, 1.0) if t == 3 else (0.2, 0.4))

    conv('conv1', 16, 3, 3)
    bn('bn1', 16)
    cin = 16
    for s, cout in enumerate((16, 32, 64), 1):
        for j in range(2):
            p = f'layer{s}.{j}'
            quadraour(p + '.conv1', cin, cout)
            bn(p + '.bn1', cout)
            quadraour(p + '.conv2', cout, cout)
            bn(p + '.bn2', cout)
            if j == 0 and cin != cout:
                conv(p + '.shortcut.0', cout, cin, 1)
                bn(p + '.shortcut.1', cout)
            cin = cout
    sd['linear.weight'] = 0.1 * torch.randn(10, 64, generator=g, dtype=dtype)
    sd['linear.bias'] = 0.1 * torch.randn(10, generator=g, dtype=dtype)
    return {'net': {prefix + k: v for k, v in sd.items()}, 'acc': 93.23, 'epoch': 199}


def _qbn(x, sd, p):
    return F.batch_norm(x, sd[p + '.running_mean'], sd[p + '.running_var'], sd[p + '.weight'], sd[p + '.bias'],
                        False, 0.0, 1e-5)


def _quadraour(x, sd, p, stride):
    y = [_qbn(F.conv2d(x, sd[f'{p}.conv{t}.weight'], sd.get(f'{p}.conv{t}.bias'), stride=stride, padding=1),
              sd, f'{p}.bn{t}') for t in (1, 2, 3)]
    return y[0] * y[1] + y[2]


def _quadralib_forward(sd, x):
    """QuadraLib's ResNet.forward (eval mode) written out from its resnet.py / quadratic_layer.py."""
    out = F.relu(_qbn(F.conv2d(x, sd['conv1.weight'], padding=1), sd, 'bn1'))
    for s in (1, 2, 3):
        for j in range(2):
            p, stride = f'layer{s}.{j}', 2 if s > 1 and j == 0 else 1
            o = F.relu(_qbn(_quadraour(out, sd, p + '.conv1', stride), sd, p + '.bn1'))
            o = _qbn(_quadraour(o, sd, p + '.conv2', 1), sd, p + '.bn2')
            if p + '.shortcut.0.weight' in sd:
                short = _qbn(F.conv2d(out, sd[p + '.shortcut.0.weight'], stride=stride), sd, p + '.shortcut.1')
            else:
                short = out
            out = F.relu(o + short)
    out = F.avg_pool2d(out, 8).view(out.size(0), -1)
    return F.linear(out, sd['linear.weight'], sd['linear.bias'])


@pytest.mark.parametrize('conv_bias', [True, False])
def test_quadraour_folding_computes_quadralib_network_in_float64(conv_bias):
    ckpt = _quadralib_checkpoint(seed=1, conv_bias=conv_bias)
    sd, meta = convert_state_dict(ckpt, 'quadralib')
    assert meta == {'acc': 93.23, 'epoch': 199}
    assert not any(re.search(r'\.conv\d\.(conv\d|bn\d)\.', k) for k in sd) and 'fc.weight' in sd
    model = ext._build(EXTERNAL[QL]).double()
    result = model.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert type(model.conv1) is torch.nn.Conv2d and model.layer1[0].conv1.neuron.name == 'quadralib'
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        ref = _quadralib_forward(ckpt['net'], x)
        got = model.eval()(x)
    assert ref.abs().max() > 1e-2   # not a degenerate network
    torch.testing.assert_close(got, ref, rtol=1e-11, atol=1e-11 * float(ref.abs().max()))
    # one Quadraour alone, random input with every sign: exact too
    layer = model.layer2[0].conv1
    xin = torch.randn(2, 16, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer(xin), _quadraour(xin, ckpt['net'], 'layer2.0.conv1', 2),
                                   rtol=1e-12, atol=1e-12)
    # a DataParallel-saved file ('module.' keys) converts to the same tensors
    sd2, _ = convert_state_dict(_quadralib_checkpoint(seed=1, conv_bias=conv_bias, prefix='module.'), 'quadralib')
    assert sd2.keys() == sd.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)


def test_quadralib_parameter_counts_file_and_folded():
    e = EXTERNAL[QL]
    with_bias = ext.file_params(_quadralib_checkpoint(conv_bias=True)['net'])
    without = ext.file_params(_quadralib_checkpoint(conv_bias=False)['net'])
    assert (with_bias, without) == (e.params_file, 518_938) == (520_282, 518_938)
    assert qzoo.count_params(ext._build(e)) == e.params == 516_698 < without
    assert 'selected on the test split' in e.notes.lower() or 'Selected on the TEST split' in e.notes
    assert 'saves the checkpoint whenever test accuracy exceeds the best so far' in e.notes
    assert 'original CIFAR-10' in e.notes and e.dataset == 'cifar10'
    assert (e.mean, e.std) == QL_MEAN_STD
    assert e.file_name == 'qresnet14-6240c2db.pth' and e.url.endswith('/image_classification/checkpoint/qresnet14.pth')
    assert e.sha256 == '6240c2db698dda5b5512a1bd4af878847c2b40d1956f280449a918a2e4212afc'


def _ql_file(tmp_path, **kw):
    """A QuadraLib-format file and the registry entry naming it (its own SHA-256)."""
    path = tmp_path / 'qresnet14.pth'
    torch.save(_quadralib_checkpoint(**kw), path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    entry = dataclasses.replace(EXTERNAL[QL], url=path.resolve().as_uri(), file_name=f'qresnet14-{sha[:8]}.pth',
                                sha256_prefix=sha[:8], sha256=sha)
    return path, entry


def test_quadralib_end_to_end_through_the_hub_cache(hub, tmp_path):
    path, entry = _ql_file(tmp_path, seed=2, dtype=torch.float32)
    shutil.copyfile(path, hub / entry.file_name)    # the cached name carries the hash prefix
    model = load_external(entry, download=False)
    assert cache_path(entry) == hub / entry.file_name
    cfg = model.pretrained_cfg
    assert (cfg['mean'], cfg['std']) == QL_MEAN_STD and cfg['dataset'] == 'cifar10' and cfg['license'] == 'mit'
    assert cfg['checkpoint_meta'] == {'acc': 93.23, 'epoch': 199} and cfg['params_file'] == 520_282
    assert cfg['architecture'] == 'qresnet14' and cfg['model_args']['stem'] == 'conventional'
    assert cfg['first_conv'] == 'conv1' and cfg['label_names'][0] == 'airplane'
    assert qzoo.count_params(model) == 516_698 and model.neuron == 'quadralib' and not model.training
    raw = torch.load(path, weights_only=True)['net']
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = _quadralib_forward({k: v.double() for k, v in raw.items()}, x.double()).float()
        torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_quadralib_download_renames_to_the_hashed_cache_name_and_checks_all_digits(hub, tmp_path, monkeypatch):
    path, entry = _ql_file(tmp_path, seed=3, conv_bias=False, dtype=torch.float32)
    assert entry.url.endswith('/qresnet14.pth')              # the published name has no hash ...
    model = load_external(entry, download=True)             # ... torch.hub stores it under file_name=
    assert [p.name for p in hub.iterdir()] == [entry.file_name] and qzoo.count_params(model) == 516_698
    # a cached file whose prefix matches but whose full SHA-256 does not: refused
    wrong = dataclasses.replace(entry, sha256=entry.sha256[:8] + '0' * 56)
    with pytest.raises(ExternalHashError) as ei:
        load_external(wrong)
    msg = str(ei.value)
    assert wrong.sha256 in msg and entry.sha256 in msg and f'rm {hub / entry.file_name}' in msg


def test_quadralib_bad_batchnorm_statistics_are_a_layout_error(hub, tmp_path):
    ckpt = _quadralib_checkpoint(seed=4, dtype=torch.float32)
    ckpt['net']['layer1.1.conv2.bn3.running_var'][3] = -2.0
    path = tmp_path / 'qresnet14.pth'
    torch.save(ckpt, path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    entry = dataclasses.replace(EXTERNAL[QL], url=path.as_uri(), file_name=f'qresnet14-{sha[:8]}.pth',
                                sha256_prefix=sha[:8], sha256=sha)
    shutil.copyfile(path, hub / entry.file_name)
    with pytest.raises(ExternalLayoutError, match=r'layer1\.1\.conv2\.bn3\.running_var \+ eps is not positive'):
        load_external(entry)


def test_quadralib_missing_offline_names_the_hashed_file(hub):
    e = EXTERNAL[QL]
    with pytest.raises(ExternalNotCachedError) as ei:
        load_external(QL, download=False)
    msg = str(ei.value)
    assert str(hub / 'qresnet14-6240c2db.pth') in msg and 'published file is qresnet14.pth' in msg and e.url in msg


def _script(name):
    """eval/<name> imported as a module (its main() and helpers run in this process)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f'qzoo_eval_{name[:-3]}', ROOT / 'eval' / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.filterwarnings('ignore::DeprecationWarning')   # torchvision.io's JPEG decoder
def test_validate_script_on_quadralib_entry(hub, tmp_path, monkeypatch):
    """eval/validate.py --data cifar10-jpeg75 --weights quadralib/qresnet14 with the file in the hub cache
    (a QuadraLib-format file with random weights, registered under its own hash) and a tiny
    cifar10-jpeg75 file as the data."""
    import csv
    from test_data import _jpeg_pack
    from qzoo.data import load_dataset
    path, entry = _ql_file(tmp_path, seed=5, dtype=torch.float32)
    shutil.copyfile(path, hub / entry.file_name)
    monkeypatch.setitem(EXTERNAL, QL, entry)
    data = tmp_path / 'data'
    data.mkdir()
    _jpeg_pack(data / 'cifar10-jpeg75.npz', n_train=20, n_test=12)
    monkeypatch.setenv('QZOO_CACHE', str(tmp_path / 'cache'))
    script = _script('validate.py')
    out = tmp_path / 'val.csv'
    assert script.main(['--data', 'cifar10-jpeg75', '--data-arg', f'root={data}', '--weights', QL,
                        '--results-file', str(out), '--device', 'cpu']) == 0
    with open(out) as f:
        row = next(csv.DictReader(f))
    assert row['model'] == 'qresnet14' and row['neuron'] == 'quadralib' and int(row['param_count']) == 516_698
    assert row['sha256'] == entry.sha256 and row['dataset'] == 'cifar10-jpeg75'
    # the score is that of QuadraLib's network on the images normalised with QuadraLib's statistics
    test = load_dataset('cifar10-jpeg75', root=data, splits=('test',)).test
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in QL_MEAN_STD)
    raw = torch.load(path, weights_only=True)['net']
    with torch.no_grad():
        logits = _quadralib_forward(raw, (test.x.float() / 255 - mean) / std)
    assert float(row['top1']) == pytest.approx(100 * (logits.argmax(1) == test.y).float().mean().item(), abs=1e-3)


def test_efficiency_skips_external_files_not_available_offline(hub, tmp_path):
    """make eval (qzoo.efficiency) with an empty hub cache and an empty mirror: every external
    entry, QuadraLib's included, is skipped with the 'not available offline' message; no job is
    planned for it."""
    from qzoo.efficiency import plan
    ten_class = sorted(n for n, e in EXTERNAL.items() if e.num_classes == 10)
    assert QL in ten_class
    lines = []
    jobs = plan({}, ['cifar10-jpeg75'], [tmp_path / 'no-mirror'], lines.append)
    assert jobs == []
    assert any(line.startswith(f'{QL}: not available offline') and str(hub) in line for line in lines)
    assert len(lines) == len(ten_class)


def test_cifar_resnet_conventional_stem_option():
    m = qzoo.create_model('qresnet14', neuron='quadralib', stem='conventional')
    assert type(m.conv1) is torch.nn.Conv2d and m.conv1.bias is None and m.stem_type == 'conventional'
    assert type(m.layer1[0].conv1) is not torch.nn.Conv2d      # the block convolutions stay quadratic
    default = qzoo.create_model('qresnet14', neuron='quadralib')
    assert default.stem_type == 'neuron' and type(default.conv1) is not torch.nn.Conv2d
    # the stem is the only difference: a plain 3x3 conv (432 weights) instead of a quadratic one
    assert qzoo.count_params(default) - qzoo.count_params(m) == qzoo.count_params(default.conv1) - 432
    assert qzoo.count_params(qzoo.create_model('qresnet20')) == 809_930      # default unchanged
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="stem must be 'neuron' .* or 'conventional'"):
        qzoo.create_model('resnet20', stem='plain')
