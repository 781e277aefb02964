"""Quadratic layers against a per-term reference written with torch.nn.functional (exact in
float64, forward and gradients; gradcheck), under channels_last, bf16 autocast and
torch.compile; traced by torch.fx, timm/torchvision feature extraction, torch.jit.trace and
torch.export; ReLinear equivalence; quadratize; shapes and errors."""
import copy
import warnings

import pytest
import timm.models._features_fx as timm_fx
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from qzoo import (QuadraticConv1d, QuadraticConv2d, QuadraticConvTranspose1d, QuadraticConvTranspose2d,
                  QuadraticLinear, quadratize)
from qzoo.layers import QuadraticLayer, recording_graph
from qzoo.neurons import NEURONS

FAMILIES = list(NEURONS) + ['lowrank(rank=2)']

CASES = {
    'linear': (QuadraticLinear, (6, 8), {}, (3, 6)),
    'linear_3d': (QuadraticLinear, (6, 8), {}, (2, 3, 6)),
    'conv1d': (QuadraticConv1d, (4, 6, 3), dict(stride=2, padding=1, dilation=2), (2, 4, 11)),
    'conv1d_replicate': (QuadraticConv1d, (4, 6, 3), dict(padding=2, padding_mode='replicate'), (2, 4, 7)),
    'conv2d': (QuadraticConv2d, (4, 6, 3), dict(stride=2, padding=1), (2, 4, 9, 9)),
    'conv2d_groups': (QuadraticConv2d, (4, 6, 3), dict(padding=1, groups=2), (2, 4, 6, 6)),
    'conv2d_reflect': (QuadraticConv2d, (4, 6, 3), dict(padding=1, padding_mode='reflect'), (2, 4, 6, 6)),
    'conv2d_circular': (QuadraticConv2d, (4, 6, 3), dict(padding=(1, 2), padding_mode='circular'), (2, 4, 5, 6)),
    'conv2d_same': (QuadraticConv2d, (4, 6, 4), dict(padding='same', dilation=2), (2, 4, 7, 7)),
    'convT1d': (QuadraticConvTranspose1d, (4, 6, 3), dict(stride=2, padding=1, output_padding=1), (2, 4, 7)),
    'convT2d': (QuadraticConvTranspose2d, (4, 6, 2), dict(stride=2), (2, 4, 5, 5)),
    'convT2d_groups': (QuadraticConvTranspose2d, (4, 6, 3), dict(stride=2, padding=1, groups=2), (2, 4, 5, 5)),
}


def _randomize(layer):
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.3)
    return layer


def _make(case, family, dtype=torch.float64):
    cls, args, kw, xshape = CASES[case]
    layer = _randomize(cls(*args, neuron=family, init='default', **kw)).to(dtype)
    x = torch.randn(xshape, dtype=dtype, requires_grad=True)
    return layer, x


# ---- the reference: one torch.nn.functional call per term, the formula by hand -----------
def _term(m, x):
    """One term module's map through torch.nn.functional (no qzoo code)."""
    if isinstance(m, nn.Linear):
        return F.linear(x, m.weight, m.bias)
    if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d)):
        fn = F.conv_transpose1d if isinstance(m, nn.ConvTranspose1d) else F.conv_transpose2d
        return fn(x, m.weight, m.bias, m.stride, m.padding, m.output_padding, m.groups, m.dilation)
    fn = F.conv1d if isinstance(m, nn.Conv1d) else F.conv2d
    padding = m.padding
    if m.padding_mode != 'zeros':
        x = F.pad(x, [p for size in reversed(m.padding) for p in (size, size)], mode=m.padding_mode)
        padding = 0
    return fn(x, m.weight, m.bias, m.stride, padding, m.dilation, m.groups)


def _reference(layer, x):
    """The layer's function: every term on x or x*x, combined by the family's formula by hand."""
    mods = {name: getattr(layer, f'{layer.prefix}_{name}') for name in (t.name for t in layer.neuron.terms)}
    sq = x * x
    t = {name: _term(m, sq if layer.neuron.term(name).input == 'sq' else x) for name, m in mods.items()}
    ch = -1 if isinstance(layer, QuadraticLinear) else -(layer._nd + 1)
    name = layer.neuron.name
    if name in ('linear', 'fan_rg', 'fan', 'fan_rb', 'power'):
        return {'linear': lambda: t['r'], 'fan_rg': lambda: t['r'] * t['g'], 'fan_rb': lambda: t['r'] + t['b'],
                'fan': lambda: torch.addcmul(t['b'], t['r'], t['g']), 'power': lambda: t['p']}[name]()
    if name == 'quadralib':
        return torch.addcmul(t['c'], t['a'], t['b'])
    if name == 'qres':  # (W_1 x) * (W_2 x) + W_1 x + b, term '1' carrying b
        b = mods['1'].bias
        w1x = t['1'] if b is None else t['1'] - b.view(-1, *[1] * (-ch - 1)).to(t['1'].dtype)
        return torch.addcmul(t['1'], w1x, t['2'])
    assert name == 'lowrank'
    return t['w'] + t['q'].unflatten(ch, (-1, layer.neuron.rank)).square().sum(ch)


def _grads(y, x, layer, g):
    return torch.autograd.grad(y, [x, *layer.parameters()], g)


@pytest.mark.parametrize('family', FAMILIES)
@pytest.mark.parametrize('case', list(CASES))
def test_forward_and_gradients_equal_reference_exactly_float64(case, family):
    layer, x = _make(case, family)
    y, y_ref = layer(x), _reference(layer, x)
    assert torch.equal(y, y_ref)
    g = torch.randn_like(y)
    for a, b in zip(_grads(y, x, layer, g), _grads(y_ref, x, layer, g)):
        assert torch.equal(a, b)


@pytest.mark.parametrize('family', FAMILIES)
@pytest.mark.parametrize('case', list(CASES))
def test_gradcheck_float64(case, family):
    layer, x = _make(case, family)
    names = [n for n, _ in layer.named_parameters()]

    def f(x, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (x,))
    params = tuple(p.detach().requires_grad_() for p in layer.parameters())
    assert torch.autograd.gradcheck(f, (x, *params), fast_mode=True)


@pytest.mark.parametrize('case, family', [('conv2d', 'fan'), ('convT1d', 'lowrank(rank=2)'), ('linear', 'qres')])
def test_double_backward(case, family):
    layer, x = _make(case, family)
    assert torch.autograd.gradgradcheck(lambda x: layer(x), (x[:1].detach().requires_grad_(),), fast_mode=True)


@pytest.mark.parametrize('family', ['fan', 'qres', 'lowrank(rank=2)'])
@pytest.mark.parametrize('case', [c for c in CASES if 'linear' not in c])
def test_float32_close_to_reference(case, family):
    layer, x = _make(case, family, torch.float32)
    torch.testing.assert_close(layer(x), _reference(layer, x), rtol=1e-6, atol=1e-6)


def test_lowrank_linear_on_3d_input_keeps_channels_apart():
    """The rank-K squares sum over the last (feature) dim of a (N, L, C) input, as on (N*L, C)."""
    layer, _ = _make('linear', 'lowrank(rank=3)')
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(layer(x), layer(x.reshape(10, 6)).view(2, 5, 8), rtol=0, atol=0)


def test_unbatched_conv_input():
    for case in ('conv2d_groups', 'conv1d_replicate', 'convT2d'):
        layer, x = _make(case, 'lowrank(rank=2)')
        torch.testing.assert_close(layer(x[0]), layer(x[:1])[0], rtol=0, atol=0)


def test_conv_transpose_output_size():
    layer = QuadraticConvTranspose2d(4, 6, 3, stride=2, padding=1)
    x = torch.randn(1, 4, 5, 5)
    y = layer(x, output_size=[10, 10])
    assert y.shape[-2:] == (10, 10)
    want = torch.addcmul(layer.conv_b(x * x, [10, 10]), layer.conv_r(x, [10, 10]), layer.conv_g(x, [10, 10]))
    torch.testing.assert_close(y, want, rtol=0, atol=0)


def test_every_tensor_is_a_submodule_weight_or_bias():
    for family in FAMILIES:
        for case in CASES:
            layer, _ = _make(case, family)
            for name, _ in layer.named_parameters():
                owner, _, leaf = name.rpartition('.')
                assert leaf in ('weight', 'bias') and owner.split('_')[0] in ('conv', 'linear'), name
    keys = set(QuadraticConv2d(3, 4, 3).state_dict())
    assert keys == {f'conv_{t}.{p}' for t in 'rgb' for p in ('weight', 'bias')}


# ---- memory format, autocast, compile ----------------------------------------------------
@pytest.mark.parametrize('family', ['fan', 'lowrank(rank=2)', 'qres'])
def test_channels_last(family):
    layer = _randomize(QuadraticConv2d(4, 8, 3, padding=1, stride=2, neuron=family))
    x = torch.randn(2, 4, 9, 9)
    y_ref = _reference(layer, x)
    g = torch.randn_like(y_ref)
    x_ref = x.clone().requires_grad_()
    grads_ref = _grads(_reference(layer, x_ref), x_ref, layer, g)
    layer = layer.to(memory_format=torch.channels_last)
    x = x.to(memory_format=torch.channels_last).requires_grad_()
    y = layer(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(_grads(y, x, layer, g), grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('family', ['fan', 'lowrank(rank=2)', 'qres'])
@pytest.mark.parametrize('case', ['linear', 'conv2d', 'convT1d'])
def test_autocast_bf16(case, family):
    layer, x = _make(case, family, torch.float32)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y, y_ref = layer(x), _reference(layer, x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)  # the same ops under autocast
    torch.testing.assert_close(y.float(), _reference(layer, x), rtol=0.05, atol=0.1)  # and near float32
    g = torch.randn_like(y)
    for a in _grads(y, x, layer, g):
        assert a.dtype == torch.float32 and torch.isfinite(a).all()


def _compile_check(module, x):
    torch._dynamo.reset()
    compiled = torch.compile(module, backend='aot_eager', fullgraph=True)
    y = compiled(x)
    grads = torch.autograd.grad(y.square().sum(), list(module.parameters()))
    y_eager = module(x)
    grads_eager = torch.autograd.grad(y_eager.square().sum(), list(module.parameters()))
    torch.testing.assert_close(y, y_eager)
    for a, b in zip(grads, grads_eager):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize('case, family', [('linear', 'fan'), ('conv1d_replicate', 'qres'), ('conv2d', 'fan'),
                                          ('conv2d_groups', 'lowrank(rank=2)'), ('convT1d', 'quadralib'),
                                          ('convT2d', 'fan_rb')])
def test_compile_fullgraph(case, family):
    layer, x = _make(case, family, torch.float32)
    _compile_check(layer, x)


@pytest.mark.slow
def test_compile_fullgraph_qresnet():
    from qzoo import create_model
    _compile_check(create_model('qresnet8'), torch.randn(2, 3, 16, 16))


# ---- graph capture: torch.fx, feature extraction, torch.jit.trace, torch.export -------------
class _AllLayers(nn.Module):
    """Every quadratic layer type in one network: (N, 4, 8, 8) -> (N, 3)."""

    def __init__(self, neuron):
        super().__init__()
        kw = dict(neuron=neuron, init='default')
        self.conv2d = QuadraticConv2d(4, 6, 3, padding=1, padding_mode='reflect', **kw)
        self.up2d = QuadraticConvTranspose2d(6, 4, 2, stride=2, groups=2, **kw)
        self.conv1d = QuadraticConv1d(4, 4, 3, padding=1, groups=2, **kw)
        self.up1d = QuadraticConvTranspose1d(4, 4, 3, stride=2, padding=1, **kw)
        self.fc = QuadraticLinear(4, 3, **kw)

    def forward(self, x):
        x = torch.tanh(self.up2d(torch.tanh(self.conv2d(x))))
        x = self.up1d(torch.tanh(self.conv1d(x.flatten(2))))
        return self.fc(x.mean(-1))


def _all_layers(family):
    torch.manual_seed(0)
    return _randomize(_AllLayers(family)), torch.randn(3, 4, 8, 8)


@pytest.mark.parametrize('family', FAMILIES)
def test_fx_symbolic_trace(family):
    model, x = _all_layers(family)
    gm = torch.fx.symbolic_trace(model)
    torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)
    targets = {n.target for n in gm.graph.nodes if n.op == 'call_module'}
    assert {f'conv2d.conv_{t.name}' for t in model.conv2d.neuron.terms} <= targets
    # a trained graph module follows the parameters it shares with the model
    with torch.no_grad():
        model.fc.terms[model.fc.neuron.terms[0].name].weight.add_(1.0)
    torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)
    # the input checks are skipped while tracing, and still fire in eager mode afterwards
    with pytest.raises(ValueError, match='expects input'):
        model(torch.randn(3, 5, 8, 8))


def test_recording_graph_only_while_fx_or_jit_trace_records():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(recording_graph())
            return x + 1

    x = torch.randn(2)
    Probe()(x)
    torch.fx.symbolic_trace(Probe())
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)
        torch.jit.trace(Probe(), x, check_trace=False)
    torch.export.export(Probe(), (x,))
    assert seen[:3] == [False, True, True] and len(seen) > 3 and not any(seen[3:])  # export: not recording
    assert not recording_graph()


@pytest.mark.parametrize('case', list(CASES))
def test_fx_symbolic_trace_each_layer(case):
    layer, x = _make(case, 'fan')
    gm = torch.fx.symbolic_trace(nn.Sequential(layer))
    x = x.detach()
    torch.testing.assert_close(gm(x), layer(x), rtol=0, atol=0)


def _features(model, x):
    """Outputs of the quadratic layers recorded by forward hooks (no tracing)."""
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, a, out, name=name: seen.__setitem__(name, out))
             for name, m in model.named_children()]
    model(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize('family', ['fan', 'qres', 'lowrank(rank=2)'])
def test_feature_extraction_timm_and_torchvision(family):
    model, x = _all_layers(family)
    want = _features(model, x)
    nodes = ['conv2d', 'up2d', 'conv1d', 'up1d']
    tv = create_feature_extractor(model, return_nodes=nodes)(x)
    assert list(tv) == nodes
    tm = timm_fx.GraphExtractNet(model, nodes, return_dict=True)(x)
    train_nodes, eval_nodes = timm_fx.get_graph_node_names(model)
    assert 'conv2d.conv_' + model.conv2d.neuron.terms[0].name in eval_nodes
    for name in nodes:
        torch.testing.assert_close(tv[name], want[name], rtol=0, atol=0)
        torch.testing.assert_close(tm[name], want[name], rtol=0, atol=0)


@pytest.mark.parametrize('family', FAMILIES)
def test_jit_trace_passes_its_sanity_check(family):
    model, x = _all_layers(family)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # torch.jit.trace itself is deprecated
        warnings.simplefilter('error', torch.jit.TracerWarning)  # no shape/dtype checks baked in
        traced = torch.jit.trace(model, x)  # check_trace=True: re-traces and compares the graphs
        traced_train = torch.jit.trace(model, x.clone().requires_grad_())
    torch.testing.assert_close(traced(x), model(x))
    x2 = torch.randn(5, 4, 8, 8)
    torch.testing.assert_close(traced(x2), model(x2))
    g = torch.autograd.grad(traced_train(x).sum(), list(model.parameters()))
    for a, b in zip(g, torch.autograd.grad(model(x).sum(), list(model.parameters()))):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize('case', list(CASES))
def test_jit_trace_each_layer(case):
    layer, x = _make(case, 'fan')
    x = x.detach()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)
        warnings.simplefilter('error', torch.jit.TracerWarning)
        traced = torch.jit.trace(layer, x)
    torch.testing.assert_close(traced(x), layer(x))


@pytest.mark.parametrize('family', ['fan', 'qres', 'lowrank(rank=2)', 'power'])
def test_torch_export(family):
    model, x = _all_layers(family)
    batch = torch.export.Dim('batch', min=2, max=64)
    ep = torch.export.export(model, (x,), dynamic_shapes={'x': {0: batch}})
    torch.testing.assert_close(ep.module()(x), model(x))
    x2 = torch.randn(7, 4, 8, 8)
    torch.testing.assert_close(ep.module()(x2), model(x2))


@pytest.mark.parametrize('case', list(CASES))
def test_torch_export_each_layer(case):
    layer, x = _make(case, 'fan', torch.float32)
    x = x.detach()
    ep = torch.export.export(layer, (x,))
    torch.testing.assert_close(ep.module()(x), layer(x))


# ---- errors --------------------------------------------------------------------------------
@pytest.mark.parametrize('case', ['linear', 'conv2d', 'convT2d'])
def test_wrong_input_shape_names_expected_shape(case):
    layer, _ = _make(case, 'fan')
    with pytest.raises(ValueError, match=r'expects input'):
        layer(torch.randn(2, 5, 5, 5, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r'expects input'):
        layer(torch.randn(2, 3, 9, 9, dtype=torch.float64) if case != 'linear' else torch.randn(2, 3, dtype=torch.float64))


def test_too_small_input_and_same_padding():
    layer = QuadraticConv2d(2, 2, 5)
    with pytest.raises(ValueError, match='too small'):
        layer(torch.randn(1, 2, 4, 9))
    same = QuadraticConv2d(2, 2, 5, padding='same')
    assert same(torch.randn(1, 2, 2, 2)).shape == (1, 2, 2, 2)


@pytest.mark.parametrize('dtype', [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64])
def test_integer_input_gets_a_floating_fix(dtype):
    layer = QuadraticConv2d(2, 3, 3)
    x = torch.ones(1, 2, 5, 5).to(dtype)
    with pytest.raises(TypeError) as e:
        layer(x)
    msg = str(e.value)
    assert str(dtype) in msg and 'x.to(torch.float32)' in msg and 'floating-point' in msg
    assert f'layer.to({dtype})' not in msg


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16, torch.float64])
def test_float_dtype_mismatch_names_both_dtypes_and_fixes(dtype):
    layer = QuadraticLinear(4, 2)
    with pytest.raises(TypeError) as e:
        layer(torch.randn(3, 4, dtype=dtype))
    msg = str(e.value)
    assert 'torch.float32 weights' in msg and f'a {dtype} input' in msg
    assert 'x.to(torch.float32)' in msg and f'layer.to({dtype})' in msg
    assert layer(torch.randn(3, 4).to(dtype).to(torch.float32)).dtype == torch.float32  # the suggested fixes work
    assert copy.deepcopy(layer).to(dtype)(torch.randn(3, 4, dtype=dtype)).dtype == dtype
    if dtype == torch.float64:  # autocast leaves float64 alone: not suggested, and still an error under it
        assert 'autocast' not in msg
        with torch.autocast('cpu', dtype=torch.bfloat16), pytest.raises(TypeError, match='float64 input'):
            layer(torch.randn(3, 4, dtype=dtype))
    else:
        assert f"torch.autocast('cpu', dtype={dtype})" in msg
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert layer(torch.randn(3, 4, dtype=dtype)).dtype == torch.bfloat16
            assert copy.deepcopy(layer).to(dtype)(torch.randn(3, 4)).dtype == torch.bfloat16  # half weights


def test_fused_argument_is_deprecated_and_ignored():
    with pytest.warns(FutureWarning, match='fused') as record:
        old = QuadraticConv2d(3, 4, 3, fused=True)
    assert record[0].filename == __file__  # points at the caller's line
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        new = QuadraticConv2d(3, 4, 3)
    new.load_state_dict(old.state_dict())
    x = torch.randn(1, 3, 6, 6)
    torch.testing.assert_close(old(x), new(x), rtol=0, atol=0)
    for cls, args in ((QuadraticLinear, (3, 4)), (QuadraticConvTranspose1d, (3, 4, 3))):
        with pytest.warns(FutureWarning, match='no effect'):
            cls(*args, fused=False)


# ---- quadratize and ReLinear ---------------------------------------------------------------
class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.conv1d = nn.Conv1d(4, 4, 3, padding=1, groups=2)
        self.fc = nn.Linear(4 * 16, 5)

    def forward(self, x):
        x = self.up(torch.relu(self.bn(self.conv(x))))  # (N, 4, 16, 16)
        x = self.conv1d(x.flatten(2)).view(x.shape[0], 4, 16, 16)
        return self.fc(x.mean(-1).flatten(1))


@pytest.mark.parametrize('family', [n for n in FAMILIES if n != 'power'])
def test_quadratize_keeps_function(family):
    net = _Net().eval()
    x = torch.randn(2, 3, 8, 8)
    before = net(x)
    quadratize(net, neuron=family)
    assert isinstance(net.conv, QuadraticConv2d) and isinstance(net.fc, QuadraticLinear)
    assert isinstance(net.up, QuadraticConvTranspose2d) and isinstance(net.conv1d, QuadraticConv1d)
    torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-5)


def test_quadratize_exclude_and_power_error():
    net = _Net()
    quadratize(net, 'fan', exclude=['fc', 'up'])
    assert type(net.fc) is nn.Linear and type(net.up) is nn.ConvTranspose2d
    assert isinstance(net.conv, QuadraticConv2d)
    with pytest.raises(ValueError, match='no linear special case'):
        quadratize(_Net(), 'power')
    with pytest.raises(ValueError):
        quadratize(nn.Linear(3, 3), 'fan')


def test_relinear_layer_equals_conventional_at_init():
    conv = nn.Conv2d(3, 5, 3, padding=1)
    q = QuadraticConv2d(3, 5, 3, padding=1, neuron='fan')  # init='relinear'
    with torch.no_grad():
        q.conv_r.weight.copy_(conv.weight)
        q.conv_r.bias.copy_(conv.bias)
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(q(x), conv(x), rtol=1e-6, atol=1e-6)
    assert torch.count_nonzero(q.conv_g.weight) == 0 and torch.all(q.conv_g.bias == 1)
    assert torch.count_nonzero(q.conv_b.weight) == 0 and torch.count_nonzero(q.conv_b.bias) == 0


def test_layers_are_quadratic_layers_and_deepcopy():
    layer, x = _make('conv2d_groups', 'lowrank(rank=2)')
    assert isinstance(layer, QuadraticLayer) and 'neuron=lowrank(rank=2)' in repr(layer)
    twin = copy.deepcopy(layer)
    torch.testing.assert_close(twin(x), layer(x), rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_matches_cpu_bf16_and_cuda_graph():
    dev = 'cuda'
    layer = _randomize(QuadraticConv2d(16, 32, 3, padding=1))
    x = torch.randn(8, 16, 16, 16)
    want = layer(x)
    # captured below: a copy no eager forward has touched (a graph-building forward on the default stream
    # before the capture fails it: cudaErrorStreamCaptureImplicit)
    captured = copy.deepcopy(layer).to(dev)
    layer = layer.to(dev)
    xd = x.to(dev).requires_grad_()
    torch.testing.assert_close(layer(xd).cpu(), want, rtol=1e-4, atol=1e-4)
    with torch.autocast('cuda', dtype=torch.bfloat16):
        assert layer(xd).dtype == torch.bfloat16
    static_x = xd.detach().clone().requires_grad_()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            captured.zero_grad(set_to_none=False)
            captured(static_x).square().sum().backward()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    captured.zero_grad(set_to_none=False)
    with torch.cuda.graph(graph):
        captured(static_x).square().sum().backward()
    static_x.data.copy_(torch.randn_like(static_x))
    captured.zero_grad(set_to_none=False)
    graph.replay()
    want = torch.autograd.grad(_reference(captured, static_x).square().sum(), list(captured.parameters()))
    for p, w in zip(captured.parameters(), want):
        torch.testing.assert_close(p.grad, w, rtol=1e-3, atol=1e-3)


# ---- the x terms stacked into one call (CUDA only: layers.STACK_X_TERMS_ON_CUDA) ---------------------------------
@pytest.mark.parametrize('case', ['linear_3d', 'conv1d_replicate', 'conv2d', 'conv2d_same'])
@pytest.mark.parametrize('family', FAMILIES)
def test_stacked_x_terms_give_each_terms_output_and_gradients(case, family):
    """The math of the stacked call, checked on the CPU (which never uses it): one call on the weights concatenated
    along the output channels gives every x term's own output, and the same gradients."""
    layer, x = _make(case, family)
    x_terms = [t.name for t in layer.neuron.terms if t.input == 'x']
    if len(x_terms) < 2:
        assert layer._stack == ()
        return
    got = layer._stacked(x)
    assert list(got) == x_terms
    want = {name: layer.terms[name](x) for name in x_terms}
    for name in x_terms:
        torch.testing.assert_close(got[name], want[name], rtol=1e-12, atol=1e-12)
    g = [torch.randn_like(want[name]) for name in x_terms]
    inputs = [x] + [p for name in x_terms for p in layer.terms[name].parameters()]
    grads = [torch.autograd.grad(list(t.values()), inputs, g) for t in (got, want)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_stacking_needs_two_x_terms_one_group_and_a_forward_convolution():
    assert QuadraticConv2d(4, 6, 3, neuron='fan')._stack == ('conv_r', 'conv_g')
    assert QuadraticLinear(4, 6, neuron='quadralib')._stack == ('linear_a', 'linear_b', 'linear_c')
    assert QuadraticConv2d(4, 6, 3, groups=2, neuron='fan')._stack == ()
    assert QuadraticConvTranspose2d(4, 6, 3, neuron='fan')._stack == ()
    assert QuadraticConv2d(4, 6, 3, neuron='fan_rb')._stack == () == QuadraticConv2d(4, 6, 3, neuron='power')._stack


def test_the_cpu_never_stacks(monkeypatch):
    from qzoo import layers
    monkeypatch.setattr(layers, 'STACK_X_TERMS_ON_CUDA', True)

    def stacked(self, x):
        raise AssertionError('stacked on the CPU')
    monkeypatch.setattr(QuadraticLayer, '_stacked', stacked)
    layer, x = _make('conv2d', 'fan')
    torch.testing.assert_close(layer(x), _reference(layer, x), rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('family', ['fan', 'quadralib', 'qres', 'lowrank(rank=2)'])
def test_cuda_stacked_x_terms_match_one_call_per_term(family, monkeypatch):
    from qzoo import layers
    layer, x = _make('conv2d', family)  # float64: no TF32 in either path
    layer, x = layer.cuda(), x.detach().cuda().requires_grad_()
    g = torch.randn_like(layer(x))
    per_term = layer(x), _grads(layer(x), x, layer, g)
    monkeypatch.setattr(layers, 'STACK_X_TERMS_ON_CUDA', True)
    stacked = layer(x), _grads(layer(x), x, layer, g)
    torch.testing.assert_close(stacked[0], per_term[0], rtol=1e-10, atol=1e-10)
    for a, b in zip(stacked[1], per_term[1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    cl = layer.float().to(memory_format=torch.channels_last)
    with torch.autocast('cuda', dtype=torch.bfloat16):
        assert cl(x.float().contiguous(memory_format=torch.channels_last)).dtype == torch.bfloat16
