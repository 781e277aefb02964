"""Every registered model through timm, qzoo and torch.hub; exact parameter counts;
timm's model interface; error messages."""
import subprocess
import sys
import warnings

import pytest
import timm
import torch

import qzoo
from qzoo import count_params
from conftest import ROOT

ALL = qzoo.list_models()
BIG = {'qresnet50', 'qresnet18', 'unet', 'qunet'}
# small versions of each model for forward checks on CPU
SMALL_KW = {'unet': dict(base_width=4), 'qunet': dict(base_width=4), 'qresnet18': dict(layers=[1, 1, 1, 1]),
            'qresnet50': dict(layers=[1, 1, 1, 1])}
for _n in ALL:
    if 'resnet' in _n and _n not in SMALL_KW:
        SMALL_KW[_n] = dict(width=4)


def calibrate_bn(model, x):
    """Set every BatchNorm's running statistics to those of the batch ``x`` (one train-mode pass with a
    cumulative average; a batch of one gets a second random sample, as train-mode BatchNorm needs more
    than one value per channel), then switch to eval. Fresh nets of the ``power`` neuron (W x*x) square
    their activations at every layer: with BatchNorm's initial statistics (mean 0, var 1) their eval-mode
    activations overflow to inf within three blocks."""
    if x.shape[0] == 1:
        x = torch.cat([x, torch.randn_like(x)])
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()


def _input(model, batch=2):
    c, h, w = model.pretrained_cfg['input_size']
    if isinstance(model, qzoo.models.MLP):
        return torch.randn(batch, c)
    if isinstance(model, qzoo.models.BearingCNN):
        return torch.randn(batch, c, w)
    if isinstance(model, qzoo.models.QuadraticResNet):
        return torch.randn(batch, c, 64, 64)
    return torch.randn(batch, c, h, w)


def test_all_families_registered():
    expect = {f'{q}resnet{d}' for q in ('', 'q') for d in (8, 14, 20, 32, 44, 56, 110)}
    expect |= {'mlp', 'qmlp', 'wdcnn', 'qcnn', 'unet', 'qunet', 'qresnet18', 'qresnet50'}
    expect |= {'resnet20_w8', 'resnet20_w12', 'resnet20_w24', 'qresnet20_w8', 'qresnet20_w9', 'qresnet20_w12'}
    expect |= {f'qresnet20_{f}_budget' for f in ('fan', 'fan_rg', 'fan_rb', 'quadralib', 'qres', 'power', 'lowrank2')}
    expect |= {'wdcnn_w4', 'wdcnn_w8', 'qcnn_w8', 'qcnn_w32'}
    expect |= {f'{q}unet_b{b}' for q in ('', 'q') for b in (4, 8, 16)} | {'unet_b32'}
    expect |= {f'{q}mlp_h{h}' for q in ('', 'q') for h in (2, 4, 8, 16, 32)}
    assert set(ALL) == expect
    assert set(timm.list_models('q*')) >= {n for n in expect if n.startswith('q')}
    assert qzoo.list_models('qresnet*') == [n for n in ALL if n.startswith('qresnet')]


@pytest.mark.parametrize('name,kw,count', [
    ('resnet20', dict(shortcut='A'), 269_722), ('resnet56', dict(shortcut='A'), 853_018),
    ('resnet20', dict(shortcut='B'), 272_474), ('resnet20', {}, 272_474),
    ('qresnet20', {}, 809_930), ('qresnet20', dict(width=9), 257_644),
    ('mlp', {}, 52), ('qmlp', {}, 156), ('wdcnn', {}, 66_790), ('qcnn', {}, 16_262),
    ('unet', dict(num_classes=2), 31_037_698), ('qunet', dict(num_classes=1), 5_779_619),
])
def test_exact_parameter_counts(name, kw, count):
    assert count_params(qzoo.create_model(name, **kw)) == count


@pytest.mark.parametrize('name', ALL)
def test_timm_qzoo_and_interface(name):
    kw = SMALL_KW.get(name, {})
    m1 = timm.create_model(name, **kw).eval()
    m2 = qzoo.create_model(name, **kw).eval()
    assert type(m1) is type(m2) and count_params(m1) == count_params(m2)
    x = _input(m1)
    y = calibrate_bn(m1, x)(x)
    nc = m1.pretrained_cfg['num_classes']
    assert y.shape[:2] == (2, nc)
    feats = m1.forward_features(x)
    pre = m1.forward_head(feats, pre_logits=True)
    assert pre.shape[1] == m1.num_features or pre.shape[1] == getattr(m1, 'head_hidden_size', None)
    torch.testing.assert_close(m1.forward_head(feats), y)
    m1.reset_classifier(3)
    assert m1(x).shape[:2] == (2, 3)
    # timm adaptation: num_classes / in_chans kwargs
    m3 = timm.create_model(name, num_classes=5, **kw).eval()
    assert m3(x).shape[:2] == (2, 5)


@pytest.mark.parametrize('name', ['resnet20', 'qresnet20', 'unet', 'qunet', 'wdcnn', 'qcnn'])
def test_in_chans_and_first_conv(name):
    kw = dict(SMALL_KW.get(name, {}), in_chans=2)
    m = timm.create_model(name, **kw).eval()
    x = _input(m)
    x = torch.randn(x.shape[0], 2, *x.shape[2:])
    m(x)
    for owner in ([m._traits['first_conv']] if isinstance(m._traits['first_conv'], str) else m._traits['first_conv']):
        assert m.get_submodule(owner).weight.shape[1] == 2


@pytest.mark.parametrize('name', ['resnet20', 'qresnet20', 'qmlp', 'wdcnn', 'qunet'])
def test_input_errors_name_expected_shape(name):
    m = qzoo.create_model(name, **SMALL_KW.get(name, {}))
    x = _input(m)
    with pytest.raises(ValueError, match=r'expects input of shape \(N, '):
        m(x[:, :1] if x.shape[1] > 1 else torch.cat([x, x], 1))   # wrong channels
    with pytest.raises(ValueError, match=r'expects input of shape \(N, '):
        m(x[0])                                                     # wrong rank


def test_unknown_model_suggests_close_names():
    with pytest.raises(ValueError, match="did you mean .*'qresnet20'"):
        qzoo.create_model('qresnet2O')
    with pytest.raises(ValueError, match='unknown qzoo model'):
        qzoo.create_model('transformer')


def test_unknown_neuron_through_model():
    with pytest.raises(ValueError, match='valid neuron types'):
        qzoo.create_model('qresnet8', neuron='cubic')


@pytest.mark.parametrize('neuron', ['linear', 'fan', 'fan_rg', 'fan_rb', 'quadralib', 'qres', 'power',
                                    'lowrank(rank=2)'])
def test_every_neuron_in_a_model(neuron):
    m = qzoo.create_model('qresnet8', width=4, neuron=neuron)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert m.neuron == qzoo.get_neuron(neuron).spec


@pytest.mark.parametrize('neuron', qzoo.list_neurons())
def test_every_model_of_every_neuron_family_is_finite_fresh_in_eval_mode(neuron):
    """What timm's generic forward test asks of every model: a fresh one in eval mode (BatchNorm at its initial
    statistics) gives finite outputs for random input of its default size. Every registered model, built with
    each neuron family; a family without a linear special case is refused, saying so, by the models that
    quadratize timm's ResNet. (A fresh power network used to square its activations to inf, then NaN.)"""
    bad = []
    for name in ALL:
        torch.manual_seed(0)
        try:
            model = qzoo.create_model(name, neuron=neuron).eval()
        except ValueError as e:
            assert name in ('qresnet18', 'qresnet50') and 'no linear special case' in str(e), (name, e)
            continue
        cfg = model.pretrained_cfg  # sides above 96 capped (timm's tests cap flexible models' sizes too)
        size = cfg['input_size'] if cfg['fixed_input_size'] else [min(s, 96) for s in cfg['input_size']]
        with torch.inference_mode():
            y = model(torch.randn(2, *size))
        if not y.isfinite().all():
            bad.append(name)
    assert bad == KNOWN_NONFINITE.get(neuron, []), f'non-finite outputs of fresh {neuron} models in eval mode: {bad}'


#: Known and kept: a fresh 110-layer ResNet in eval mode (BatchNorm at its initial statistics, the identity)
#: doubles its activations' variance in every residual block: its linear part alone reaches |x| ~ 1e10 (measured,
#: fan at init, which is exactly linear). lowrank starts off its linear special case (Q at 1e-2 of its default
#: init, since Q = 0 is a stationary point), and once (Qx)^2 exceeds x the squares compound to inf, then NaN.
#: Trained networks (BatchNorm statistics of real data) are not affected; a zero-initialised last BatchNorm per
#: block would fix it but changes every ResNet's training. The list is compared exactly: a fix shows up here.
KNOWN_NONFINITE = {'lowrank': ['qresnet110', 'resnet110']}


def test_bad_architecture_args():
    with pytest.raises(ValueError, match='6n\\+2'):
        qzoo.models.CifarResNet(depth=21)
    with pytest.raises(ValueError, match="shortcut must be 'A'"):
        qzoo.create_model('resnet20', shortcut='C')


def test_name_clash_never_overwrites_timm():
    from qzoo.registry import _register
    timm_resnet18 = timm.models.model_entrypoint('resnet18')

    def resnet18(pretrained=False, **kwargs):
        return qzoo.create_model('resnet8', **kwargs)
    resnet18.__module__ = 'qzoo.models.cifar_resnet'
    qzoo.models.BASE_CFGS['resnet18'] = qzoo.models.BASE_CFGS['resnet8']
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        registered = _register('resnet18', resnet18, [])
    assert registered == 'qzoo_resnet18' and any('already has a model' in str(x.message) for x in w)
    assert timm.models.model_entrypoint('resnet18') is timm_resnet18
    assert isinstance(timm.create_model('qzoo_resnet18', width=4), qzoo.models.CifarResNet)
    del qzoo.models.BASE_CFGS['resnet18']


def test_pretrained_cfgs():
    for name in ALL:
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg.license and cfg.paper_ids and cfg.first_conv is not None or 'mlp' in name
    c = timm.create_model('resnet20').pretrained_cfg
    assert c['crop_pct'] == 1.0 and c['input_size'] == (3, 32, 32) and c['classifier'] == 'fc'


# ---- torch.hub --------------------------------------------------------------------------
@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A torch.hub cache holding this checkout as the GitHub repo 'qzoo/qzoo' at ref 'main',
    so torch.hub's GitHub code path runs offline."""
    import shutil
    hub_dir = tmp_path / 'hub'
    repo = hub_dir / 'qzoo_qzoo_main'
    shutil.copytree(ROOT, repo, ignore=shutil.ignore_patterns('.venv', '.git', 'runs', '__pycache__', '*.egg-info'))
    monkeypatch.setattr(torch.hub, '_hub_dir', str(hub_dir))
    return 'qzoo/qzoo:main'


def test_hub_list_and_load_through_github_path(hub_cache):
    names = torch.hub.list(hub_cache, trust_repo=True, skip_validation=True, verbose=False)
    assert sorted(names) == sorted(ALL)
    m = torch.hub.load(hub_cache, 'qresnet20', width=4, trust_repo=True, skip_validation=True, verbose=False)
    assert isinstance(m, qzoo.models.CifarResNet) and m.neuron == 'fan'
    assert 'qresnet20' in torch.hub.help(hub_cache, 'qresnet20', trust_repo=True, skip_validation=True)


def test_hubconf_import_is_light():
    code = ('import sys; sys.path.insert(0, %r); import hubconf; '
            'bad = [m for m in ("torch", "timm", "qzoo", "huggingface_hub", "urllib.request") if m in sys.modules]; '
            'assert not bad, bad' % str(ROOT))
    subprocess.run([sys.executable, '-c', code], check=True)


@pytest.mark.parametrize('name', ALL)
def test_torch_hub_load_local(name):
    kw = SMALL_KW.get(name, {})
    m = torch.hub.load(str(ROOT), name, source='local', **kw)
    assert type(m) is type(qzoo.create_model(name, **kw))


# ---- timm's meaning of num_features / global_pool / img_size for the 1-D nets, MLPs and U-Nets ----------
@pytest.mark.parametrize('name,channels,flat,hidden', [('wdcnn', 64, 192, 100), ('qcnn', 16, 48, 20)])
def test_bearing_num_features_are_the_final_channels(name, channels, flat, hidden):
    m = qzoo.create_model(name)
    assert (m.num_features, m.flat_features, m.head_hidden_size) == (channels, flat, hidden)
    assert m.fc1.in_features == flat and m.forward_features(torch.randn(1, 1, 2048)).shape == (1, channels, 3)


def test_bearing_global_pool_round_trip():
    m = qzoo.create_model('wdcnn_w4').eval()
    x = torch.randn(2, 1, 2048)
    m.reset_classifier(0, '')
    assert m.fc1 is None and m.head_hidden_size == 16 and torch.equal(m(x), m.forward_features(x))
    m.reset_classifier(3, 'flatten')
    assert m.fc1.in_features == 48 and m(x).shape == (2, 3)
    with pytest.raises(ValueError, match="global_pool must be 'flatten' or ''"):
        qzoo.create_model('wdcnn', global_pool='avg')


def test_bearing_input_length_is_timm_img_size():
    m = qzoo.create_model('qcnn', input_length=1024)
    assert m(torch.randn(2, 1, 1024)).shape == (2, 10) and m._traits['img_size'] == (1, 1024)
    assert timm.models.get_model_input_config(m)['input_size'] == (1, 1, 1024)
    with pytest.raises(ValueError, match='disagree'):
        qzoo.create_model('qcnn', input_length=1024, img_size=(1, 2048))
    with pytest.raises(ValueError, match=r'img_size must be \(1, length\)'):
        qzoo.create_model('qcnn', img_size=(32, 32))
    with pytest.raises(ValueError, match=r'img_size must be \(1, 1\)'):
        qzoo.create_model('mlp', img_size=(2, 2))


def test_vector_and_map_models_refuse_pooling_with_the_reason():
    with pytest.raises(ValueError, match='nothing to pool'):
        qzoo.create_model('qmlp', global_pool='avg')
    with pytest.raises(ValueError, match='predicts a map at the input resolution'):
        qzoo.create_model('unet_b4').reset_classifier(1, 'avg')


def test_unet_pruned_to_its_encoder():
    m = qzoo.create_model('unet_b4').eval()
    x = torch.randn(1, 3, 32, 32)
    maps = m.forward_intermediates(x, intermediates_only=True)
    assert m.prune_intermediate_layers(2) == [3, 4] and len(m.ups) == 0 and m.num_classes == 0
    got = m.forward_intermediates(x, indices=2, intermediates_only=True)
    assert all(torch.equal(a, b) for a, b in zip(got, maps[-2:]))
    with pytest.raises(ValueError, match='pruned to its encoder'):
        m(x)
