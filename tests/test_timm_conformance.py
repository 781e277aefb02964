"""timm's generic model checks, adapted for qzoo: every registered architecture (at a small width and,
where the name allows, fewer layers, so the file stays quick on one CPU thread) through what timm's own
tests/test_models.py asks of its models (forward/backward, default cfgs, features_only,
forward_intermediates, torch.fx forward/backward and feature extraction, jit.trace, classifier
reset, num_classes/in_chans) plus qzoo's input checks. Written for qzoo after reading timm's tests.

Where qzoo departs from timm's image-classifier assumptions, the check is adapted, not dropped:

* the 1-D nets (wdcnn, qcnn) take ``(N, C, L)`` windows and, as timm builds them from
  ``input_size = (C, 1, L)``, ``(N, C, 1, L)``; every map they return keeps the input's layout, so
  timm's (H, W) checks run on them with H = 1;
* the MLPs take ``(N, F)`` or ``(N, F, 1, 1)`` and their features are vectors: they get timm's
  "non-standard" (vector feature) checks, as timm gives its MLP-like models;
* the U-Nets predict maps: nothing is pooled, so the pooled-output checks do not apply to them;
* the forward check runs, as timm's does, on a fresh model in eval mode with BatchNorm's initial
  statistics (the ``power`` family's initialisation keeps its squared activations finite there: see
  :class:`qzoo.neurons.Power`); the other eval-mode checks first set the BatchNorm statistics from the
  test batch (:func:`test_models.calibrate_bn`).
"""
import copy
import math
import re
import warnings

import pytest
import timm
import torch
from timm.models import (FeatureGraphNet, FeatureInfo, get_model_input_config, get_notrace_functions,
                         get_notrace_modules)

import qzoo
from qzoo.models import MLP, BearingCNN, UNet
from test_models import SMALL_KW, calibrate_bn

ALL = qzoo.list_models()
TARGET = 32     # largest side of the inputs of models without a fixed input size (timm: 96-384)


def _small(name):
    if 'unet' in name:
        return dict(base_width=4)
    if 'cnn' in name:
        return dict(width=4)
    if name in ('qresnet18', 'qresnet50'):
        return dict(layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), stem_width=8)
    return dict(SMALL_KW.get(name, {}))


def _create(name, **kw):
    return timm.create_model(name, **{**_small(name), **kw})


def _size(cfg, target=TARGET):
    """timm's test input size: the cfg's when the input size is fixed, else each side capped at target."""
    size = tuple(cfg['input_size'])
    return size if cfg.get('fixed_input_size') else (size[0],) + tuple(min(s, target) for s in size[1:])


def _x(model, batch=1, target=TARGET, chans=None):
    size = _size(model.pretrained_cfg, target)
    return torch.randn(batch, chans or size[0], *size[1:])


def _pool_at(cfg, size):
    """pool_size scaled to an input of spatial ``size`` (the cfg states it at input_size)."""
    scaled = [p * s / i for p, s, i in zip(cfg['pool_size'], size, cfg['input_size'][1:])]
    assert all(v == int(v) for v in scaled), (cfg['pool_size'], size)
    return tuple(int(v) for v in scaled)


def _names(spec):
    return (spec,) if isinstance(spec, str) else tuple(spec)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='.*torch.jit.trace.* is deprecated', category=FutureWarning)
        yield


# ---- forward / backward (timm: test_model_forward, test_model_backward) ----------------
@pytest.mark.parametrize('name', ALL)
def test_forward(name):
    model = _create(name).eval()
    y = model(_x(model))
    assert y.shape[:2] == (1, model.num_classes) and y.isfinite().all()


@pytest.mark.parametrize('name', ALL)
def test_backward(name):
    model = _create(name, num_classes=42).train()
    y = model(_x(model, batch=2))
    y.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f'no gradient for {missing}'
    assert y.shape[1] == 42 and not y.isnan().any()


# ---- default cfgs (timm: test_model_default_cfgs[_non_std]) ---------------------------------------
CFG_KEYS = ('num_classes', 'input_size', 'pool_size', 'fixed_input_size', 'crop_pct', 'interpolation', 'mean',
            'std', 'first_conv', 'classifier', 'license', 'paper_ids')


@pytest.mark.parametrize('name', ALL)
def test_default_cfg_names_real_modules(name):
    model = _create(name)
    cfg, sd = model.pretrained_cfg, model.state_dict()
    assert all(k in cfg for k in CFG_KEYS), [k for k in CFG_KEYS if k not in cfg]
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    for c in _names(cfg['classifier']) + _names(cfg['first_conv']):
        assert c + '.weight' in sd, f'{c} (named by the cfg) is not a module of {name}'
    assert _names(model._traits['first_conv']) == _names(cfg['first_conv'])
    assert len(cfg['mean']) in (1, cfg['input_size'][0]) and len(cfg['std']) == len(cfg['mean'])
    # the instance names its own first layer when the neuron changes what it is made of
    other = _create(name, neuron='linear' if model.neuron != 'linear' else 'fan')
    for c in _names(other._traits['first_conv']):
        assert other.get_submodule(c).weight.shape[1] == other.in_chans


@pytest.mark.parametrize('name', ALL)
def test_default_cfg_shapes(name):
    """forward_features is unpooled at pool_size with num_features channels; pre-logits have
    head_hidden_size; reset_classifier(0) pools; global_pool='' (reset or create) leaves maps."""
    model = _create(name)
    cfg, x = model.pretrained_cfg, _x(model)
    calibrate_bn(model, x)
    feats = model.forward_features(x)
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape[1] == model.head_hidden_size
    if isinstance(model, MLP):
        return _check_vector_cfg(model, name, x, feats, pre)
    pool = _pool_at(cfg, x.shape[2:])
    assert feats.shape[1:] == (model.num_features, *pool)
    model.reset_classifier(0)
    assert model.num_classes == 0
    if not isinstance(model, UNet):  # a U-Net pools nothing: its output stays a map
        assert model(x).shape == pre.shape == (1, model.head_hidden_size)
    model.reset_classifier(0, '')
    assert model(x).shape == feats.shape
    model = _create(name, num_classes=0, global_pool='').eval()
    assert model(x).shape == feats.shape


@pytest.mark.parametrize('name', [n for n in ALL if n.startswith(('wdcnn', 'qcnn'))])
def test_bearing_cfg_states_the_real_feature_size(name):
    """A 1-D net's pool_size is its unpooled features' size: (1, L') in timm's layout (N, C, 1, L), which timm
    builds from input_size, and (L',) in the native one (N, C, L), for the registered 2048-sample windows and
    for a net built for another length (input_length= or img_size=), whose cfg then states its own sizes."""
    for kw, length in (({}, 2048), (dict(input_length=4096), 4096), (dict(img_size=(1, 1024)), 1024)):
        model = _create(name, **kw).eval()
        cfg = model.pretrained_cfg
        assert timm.data.resolve_data_config({}, model=model)['input_size'] == cfg['input_size'] == (1, 1, length)
        x = torch.randn(2, *cfg['input_size'])
        assert model.forward_features(x).shape == (2, model.num_features, *cfg['pool_size'])
        assert model.forward_features(x.flatten(2)).shape == (2, model.num_features, cfg['pool_size'][1])
    assert timm.create_model(name).pretrained_cfg['pool_size'] == (1, 3)


def _check_vector_cfg(model, name, x, feats, pre):
    assert feats.shape == pre.shape == (1, model.num_features)
    model.reset_classifier(0)
    assert model.num_classes == 0 and model(x).shape == (1, model.num_features)
    assert _create(name, num_classes=0).eval()(x).shape == (1, model.num_features)


@pytest.mark.parametrize('name', ALL)
def test_data_config_builds_accepted_inputs(name):
    """resolve_data_config's input_size is one the model takes (timm builds (N, *input_size)); the
    instance's input config follows in_chans and names the real first layer."""
    model = _create(name).eval()
    data = timm.data.resolve_data_config({}, model=model)
    assert data['input_size'] == model.pretrained_cfg['input_size']
    size = _size(dict(model.pretrained_cfg, input_size=data['input_size']))
    assert model(torch.randn(2, *size)).shape[0] == 2
    chans = size[0] + 1
    model = _create(name, in_chans=chans).eval()
    info = get_model_input_config(model)
    assert info['input_size'][0] == chans and info['fixed_input_size'] == model.pretrained_cfg['fixed_input_size']
    for c in _names(info['first_conv']):
        assert model.get_submodule(c).weight.shape[1] == chans
    assert model(torch.randn(2, chans, *size[1:])).shape[0] == 2


# ---- features (timm: test_model_forward_features, test_model_forward_intermediates) ---------------
def _check_maps(maps, info, x):
    assert len(maps) == len(info.channels())
    for m, c, r in zip(maps, info.channels(), info.reduction()):
        assert m.shape[:2] == (x.shape[0], c) and not m.isnan().any()
        if m.dim() == 4:  # timm's bound: every side at most ceil(input side / reduction) + 1
            assert all(m.shape[i] <= math.ceil(x.shape[i] / r) + 1 for i in (2, 3)), (m.shape, x.shape, r)
        else:
            assert m.dim() == 2 and r == 1  # the MLPs' hidden layers: vectors


@pytest.mark.parametrize('name', ALL)
def test_features_only(name):
    """features_only=True gives every feature_info level (timm's FeatureInfo: num_chs, reduction, module)
    with maps of those channels and at most that stride; out_indices picks levels."""
    model = _create(name, features_only=True)
    assert len(model.feature_info.channels()) == len(_create(name).feature_info)
    x = _x(model)
    _check_maps(calibrate_bn(model, x)(x), model.feature_info, x)
    last = _create(name, features_only=True, out_indices=(-1,)).eval()
    assert last.feature_info.channels() == model.feature_info.channels()[-1:] and len(last(x)) == 1


@pytest.mark.parametrize('name', ALL)
def test_forward_intermediates(name):
    model = _create(name)
    x = _x(model)
    calibrate_bn(model, x)
    info = FeatureInfo(model.feature_info, len(model.feature_info))
    final, maps = model.forward_intermediates(x, output_fmt='NCHW')
    _check_maps(maps, info, x)
    assert torch.equal(final, model.forward_features(x))
    n = len(maps)
    only = model.forward_intermediates(x, indices=[0, n - 1], intermediates_only=True)
    assert len(only) == min(n, 2) and torch.equal(only[0], maps[0]) and torch.equal(only[-1], maps[-1])
    last = model.forward_intermediates(x, min(n, 2), intermediates_only=True)  # an int k: the last k
    assert len(last) == min(n, 2) and all(torch.equal(a, b) for a, b in zip(last, maps[-2:]))
    assert torch.equal(model.forward_intermediates(x, [-1], intermediates_only=True)[0], maps[-1])
    _, early = model.forward_intermediates(x, indices=[0], stop_early=True)
    assert torch.equal(early[0], maps[0])
    pruned = copy.deepcopy(model)
    assert pruned.prune_intermediate_layers([0]) == [0]
    assert torch.equal(pruned.forward_intermediates(x, [0], intermediates_only=True)[0], maps[0])
    if n > 1:
        assert qzoo.count_params(pruned) < qzoo.count_params(model)


@pytest.mark.parametrize('name', ALL)
def test_forward_intermediates_bad_arguments(name):
    model = _create(name).eval()
    x = _x(model)
    with pytest.raises(ValueError, match='output_fmt must be'):
        model.forward_intermediates(x, output_fmt='NHWC')
    with pytest.raises(ValueError, match='feature levels'):
        model.forward_intermediates(x, indices=[len(model.feature_info)])


# ---- torch.fx (timm: test_model_forward_fx, test_model_backward_fx, FeatureGraphNet) and jit.trace -------
TRACER = dict(leaf_modules=list(get_notrace_modules()), autowrap_functions=list(get_notrace_functions()))


@pytest.mark.parametrize('name', ALL)
def test_fx_forward_and_backward(name):
    """A torch.fx graph of the model (traced with timm's tracer settings; eval and train graphs traced
    apart, as torchvision's extractor does) gives the eager output exactly in eval mode, and gradients
    for every parameter in train mode."""
    model = _create(name, num_classes=42)
    x = _x(model, batch=2)
    calibrate_bn(model, x)
    with torch.inference_mode():
        y = model(x)
        assert torch.equal(_fx_graph(model)(x), y)
    graph = _fx_graph(model.train())
    y = graph(x)
    y.mean().backward()
    missing = [n for n, p in graph.named_parameters() if p.grad is None]
    assert not missing and y.shape[1] == 42 and not y.isnan().any()


def _fx_graph(model):
    tracer = torch.fx.Tracer(autowrap_functions=TRACER['autowrap_functions'])
    leaves = tuple(TRACER['leaf_modules'])
    tracer.is_leaf_module = lambda m, qualname: isinstance(m, leaves) or torch.fx.Tracer.is_leaf_module(
        tracer, m, qualname)
    return torch.fx.GraphModule(model, tracer.trace(model))


@pytest.mark.parametrize('name', ALL)
def test_fx_feature_extraction(name):
    """timm's FX extractor (FeatureGraphNet: torchvision's create_feature_extractor on the feature_info
    modules) gives forward_intermediates' maps (the 1-D nets' in their own (N, C, L) layout)."""
    model = _create(name)
    x = _x(model)
    calibrate_bn(model, x)
    native = x.flatten(2) if isinstance(model, BearingCNN) else x  # (N, C, 1, L) -> (N, C, L)
    maps = model.forward_intermediates(native, intermediates_only=True)
    extractor = FeatureGraphNet(model, out_indices=tuple(range(len(model.feature_info))), return_dict=True)
    got = extractor(native)
    assert len(got) == len(maps) and all(torch.equal(a, b) for a, b in zip(got.values(), maps))


@pytest.mark.parametrize('name', ['resnet8', 'qresnet18', 'qcnn', 'qmlp', 'qunet'])
def test_features_only_fx_and_refused_extractors(name):
    """create_model(features_only=True, feature_cls='fx') builds the FX extractor; timm's extractors that
    re-run a model's children in order are refused with the reason (qzoo's families)."""
    model = _create(name, features_only=True, feature_cls='fx').eval()
    assert isinstance(model, FeatureGraphNet)
    assert [t.shape[1] for t in model(_x(model))] == model.feature_info.channels()
    if name != 'qresnet18':  # timm's own ResNet works with all of timm's extractors
        with pytest.raises(ValueError, match="feature_cls='getter'"):
            _create(name, features_only=True, feature_cls='hook')


@pytest.mark.parametrize('name', ALL)
def test_jit_trace(name):
    """torch.jit.trace with its sanity check (check_trace: the trace re-run matches the module).
    TorchScript scripting is deprecated in PyTorch and not supported (see qzoo.models)."""
    model = _create(name)
    x = _x(model, batch=2)
    calibrate_bn(model, x)
    with torch.jit.optimized_execution(False), warnings.catch_warnings():  # fusion passes are not under test
        warnings.simplefilter('error', torch.jit.TracerWarning)  # nothing baked in that depends on the input
        traced = torch.jit.trace(model, x)
        torch.testing.assert_close(traced(x), model(x))


# ---- classifier and pooling (timm: reset_classifier, num_classes / in_chans) ------------------------
@pytest.mark.parametrize('name', ALL)
def test_reset_classifier_and_global_pool(name):
    model = _create(name).eval()
    x = _x(model)
    model.reset_classifier(5)
    assert model.num_classes == 5 and model(x).shape[:2] == (1, 5)
    clf = model.get_classifier()
    assert all(model.get_submodule(c) in set(clf.modules()) for c in _names(model.pretrained_cfg['classifier']))
    if isinstance(model, qzoo.models.QuadraticResNet):
        return  # timm's ResNet: its own global_pool checks
    with pytest.raises(ValueError, match='global_pool must be'):
        model.reset_classifier(5, 'token')
    with pytest.raises(ValueError, match='global_pool must be'):
        _create(name, global_pool='token')
    if isinstance(model, (MLP, UNet)):  # the head reads the unpooled features: '' is the only pool
        fresh = _create(name, global_pool='').eval()
        assert model.global_pool == fresh.global_pool == '' and fresh(x).shape[1] == fresh.num_classes
    else:  # a Linear classifier cannot read maps
        with pytest.raises(ValueError, match="global_pool='' keeps the unpooled"):
            model.reset_classifier(5, '')


@pytest.mark.parametrize('pool', ['avg', 'max', 'avgmax'])
def test_cifar_resnet_pools(pool):
    model = _create('resnet20', global_pool=pool, num_classes=0).eval()
    x = torch.randn(2, 3, 32, 32)
    f = model.forward_features(x)
    want = {'avg': f.mean((2, 3)), 'max': f.amax((2, 3)), 'avgmax': 0.5 * (f.mean((2, 3)) + f.amax((2, 3)))}[pool]
    torch.testing.assert_close(model(x), want)


@pytest.mark.parametrize('name', ALL)
def test_num_classes_and_in_chans(name):
    cfg = _create(name).pretrained_cfg
    chans = cfg['input_size'][0] + 1
    model = _create(name, num_classes=5, in_chans=chans).eval()
    x = _x(model, batch=2, chans=chans)
    assert model(x).shape[:2] == (2, 5)
    for c in _names(model._traits['first_conv']):
        assert model.get_submodule(c).weight.shape[1] == chans


# ---- the input layouts of the 1-D nets and MLPs ------------------------------------------------------
@pytest.mark.parametrize('name', ALL)
def test_timm_layout_equals_native_layout(name):
    """(N, C, 1, L) and (N, C, L) give the same numbers; maps come back in the input's layout."""
    model = _create(name)
    if not isinstance(model, (BearingCNN, MLP)):
        pytest.skip('image models have one input layout, (N, C, H, W)')
    x = _x(model, batch=2)
    calibrate_bn(model, x)
    native = x.flatten(2) if isinstance(model, BearingCNN) else x.flatten(1)
    torch.testing.assert_close(model(x), model(native), rtol=0, atol=0)
    for a, b in zip(model.forward_intermediates(x, intermediates_only=True),
                    model.forward_intermediates(native, intermediates_only=True)):
        assert torch.equal(a.reshape(b.shape), b) and a.dim() == (4 if isinstance(model, BearingCNN) else 2)


# ---- input checks: dtype and size (Trust item 17) ----------------------------------------------------
NON_FLOAT_FIX = re.compile(r'\.to\(torch\.(u?int\d*|bool|long|short|uint8|complex\d*)\)')


@pytest.mark.parametrize('name', ALL)
def test_wrong_dtypes_raise_typeerror_with_float_fix(name):
    model = _create(name).eval()
    x = _x(model)
    for dtype in (torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.bool):
        with pytest.raises(TypeError) as e:
            model(x.to(dtype))
        msg = str(e.value)
        assert str(dtype) in msg and 'torch.float32' in msg and not NON_FLOAT_FIX.search(msg), msg
        if dtype in (torch.float16, torch.bfloat16):
            assert 'torch.autocast' in msg
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert model(x).shape[0] == 1
    with pytest.raises(TypeError, match='expects a tensor'):
        model(x.tolist())


@pytest.mark.parametrize('name', ALL)
def test_empty_or_wrong_sizes_raise_valueerror(name):
    model = _create(name).eval()
    x = _x(model)
    empty = x[..., :0] if x.shape[-1] > 1 else x[:, :0]  # a 0-wide image / window, or no features
    if isinstance(model, (UNet, qzoo.models.CifarResNet, qzoo.models.QuadraticResNet)):
        empty = x[:, :, :0, :0]
    with pytest.raises(ValueError, match=r'expects input of shape \(N, '):
        model(empty)
    with pytest.raises(ValueError, match=r'expects input of shape \(N, '):
        model(x[0, 0])


def test_unet_too_small_input_names_the_minimum():
    model = _create('unet').eval()
    with pytest.raises(ValueError, match='H >= 16'):
        model(torch.randn(1, 3, 8, 32))
    model(torch.randn(1, 3, 16, 17))


# ---- pretrained weights (timm: test_model_load_pretrained, test_model_features_pretrained) ----------
PUBLISHED = ['resnet20', 'wdcnn', 'qcnn', 'mlp_h2', 'qmlp_h2', 'unet_b4', 'qunet_b4']


@pytest.mark.parametrize('name', PUBLISHED)
def test_pretrained_adapts_and_extracts_features(name):
    ref = timm.create_model(name, pretrained=True).state_dict()
    model = timm.create_model(name, pretrained=True, in_chans=1, num_classes=5)
    same = [k for k, v in model.state_dict().items() if k in ref and v.shape == ref[k].shape]
    assert all(torch.equal(model.state_dict()[k], ref[k]) for k in same if not k.startswith(('head', 'fc')))
    assert timm.create_model(name, pretrained=True, in_chans=1, num_classes=0).num_classes == 0
    feats = timm.create_model(name, pretrained=True, features_only=True).eval()
    x = torch.randn(1, *_size(feats.pretrained_cfg))
    assert [t.shape[1] for t in feats(x)] == feats.feature_info.channels()
