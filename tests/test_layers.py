"""Quadratic layers: fused path == plain per-term reference == hand-written torch calls,
forward and backward; ReLinear equivalence; quadratize; shapes and errors."""
import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qzoo import (QuadraticConv1d, QuadraticConv2d, QuadraticConvTranspose1d, QuadraticConvTranspose2d,
                  QuadraticLinear, quadratize)
from qzoo.neurons import NEURONS

FAMILIES = list(NEURONS) + ['lowrank(rank=2)']

CASES = {
    'linear': (QuadraticLinear, (6, 8), {}, (3, 6)),
    'conv1d': (QuadraticConv1d, (4, 6, 3), dict(stride=2, padding=1, dilation=2), (2, 4, 11)),
    'conv2d': (QuadraticConv2d, (4, 6, 3), dict(stride=2, padding=1), (2, 4, 9, 9)),
    'conv2d_groups': (QuadraticConv2d, (4, 6, 3), dict(padding=1, groups=2), (2, 4, 6, 6)),
    'conv2d_reflect': (QuadraticConv2d, (4, 6, 3), dict(padding=1, padding_mode='reflect'), (2, 4, 6, 6)),
    'convT1d': (QuadraticConvTranspose1d, (4, 6, 3), dict(stride=2, padding=1, output_padding=1), (2, 4, 7)),
    'convT2d': (QuadraticConvTranspose2d, (4, 6, 2), dict(stride=2), (2, 4, 5, 5)),
    'convT2d_groups': (QuadraticConvTranspose2d, (4, 6, 3), dict(stride=2, padding=1, groups=2), (2, 4, 5, 5)),
}


def _randomize(layer):
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.3)
    return layer


def _make(case, family, **extra):
    cls, args, kw, xshape = CASES[case]
    layer = _randomize(cls(*args, neuron=family, init='default', **kw, **extra)).double()
    x = torch.randn(xshape, dtype=torch.float64, requires_grad=True)
    return layer, x


def _torch_term(layer, case, name, x):
    """One term through the plain torch functional call (no qzoo code)."""
    m = layer.terms[name]
    if case == 'linear':
        return F.linear(x, m.weight, m.bias)
    return m(x)  # nn.ConvNd / nn.ConvTransposeNd forward


@pytest.mark.parametrize('family', FAMILIES)
@pytest.mark.parametrize('case', list(CASES))
def test_fused_matches_reference_forward_backward(case, family):
    layer, x = _make(case, family)
    y_fused = layer(x)
    g = torch.randn_like(y_fused)
    grads_fused = torch.autograd.grad(y_fused, [x, *layer.parameters()], g)
    y_ref = layer.forward_reference(x)
    grads_ref = torch.autograd.grad(y_ref, [x, *layer.parameters()], g)
    torch.testing.assert_close(y_fused, y_ref)
    for a, b in zip(grads_fused, grads_ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize('case', list(CASES))
def test_fan_reference_is_three_plain_torch_calls(case):
    layer, x = _make(case, 'fan')
    want = _torch_term(layer, case, 'r', x) * _torch_term(layer, case, 'g', x) + _torch_term(layer, case, 'b', x * x)
    torch.testing.assert_close(layer(x), want)
    torch.testing.assert_close(layer.forward_reference(x), want)


@pytest.mark.parametrize('case', list(CASES))
def test_lowrank_conv_groups_keep_channels_apart(case):
    layer, x = _make(case, 'lowrank(rank=2)')
    q = _torch_term(layer, case, 'q', x)
    ch = q.dim() - 1 if case == 'linear' else 1
    sq = q.unflatten(ch, (-1, 2)).square().sum(ch + 1)
    torch.testing.assert_close(layer(x), sq + _torch_term(layer, case, 'w', x))


def test_unbatched_conv_input():
    layer, _ = _make('conv2d_groups', 'fan')
    x = torch.randn(4, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(layer(x), layer(x[None])[0])


def test_conv_transpose_output_size():
    layer = QuadraticConvTranspose2d(4, 6, 3, stride=2, padding=1)
    x = torch.randn(1, 4, 5, 5)
    assert layer(x, output_size=[10, 10]).shape[-2:] == (10, 10)
    assert layer.forward_reference(x, output_size=[10, 10]).shape[-2:] == (10, 10)


def test_every_tensor_is_a_submodule_weight_or_bias():
    for family in FAMILIES:
        for case in CASES:
            layer, _ = _make(case, family)
            for name, _ in layer.named_parameters():
                owner, _, leaf = name.rpartition('.')
                assert leaf in ('weight', 'bias') and owner.split('_')[0] in ('conv', 'linear'), name
    keys = set(QuadraticConv2d(3, 4, 3).state_dict())
    assert keys == {f'conv_{t}.{p}' for t in 'rgb' for p in ('weight', 'bias')}


@pytest.mark.parametrize('case', ['linear', 'conv2d', 'convT2d'])
def test_wrong_input_shape_names_expected_shape(case):
    layer, _ = _make(case, 'fan')
    with pytest.raises(ValueError, match=r'expects input'):
        layer(torch.randn(2, 5, 5, 5, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r'expects input'):
        layer(torch.randn(2, 3, 9, 9, dtype=torch.float64) if case != 'linear' else torch.randn(2, 3, dtype=torch.float64))


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


def test_bf16_and_channels_last():
    layer = QuadraticConv2d(4, 8, 3, padding=1)
    _randomize(layer)
    x = torch.randn(2, 4, 8, 8)
    ref = layer.forward_reference(x)
    y = layer.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        yb = layer(x)
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb.float(), ref, rtol=0.05, atol=0.1)


# ---- the fused Function (hand-written backward) ------------------------------------------
from torch.func import functional_call  # noqa: E402

from qzoo import create_model  # noqa: E402
from qzoo.layers import _RULES, QuadraticLayer, set_fused  # noqa: E402

FUNCTION_CASES = ['linear', 'conv1d', 'conv2d', 'conv2d_groups', 'conv2d_reflect', 'convT1d', 'convT2d_groups']


def _as_function_of_params(layer, x):
    names = [n for n, _ in layer.named_parameters()]
    params = tuple(p.detach().requires_grad_() for p in layer.parameters())

    def f(x, *ps):
        return functional_call(layer, dict(zip(names, ps)), (x,))
    return f, (x, *params)


GRADCHECK = sorted({(c, f) for c in ('linear', 'conv2d_groups') for f in FAMILIES}
                   | {(c, f) for c in FUNCTION_CASES for f in ('fan', 'lowrank(rank=2)')})


@pytest.mark.parametrize('case, family', GRADCHECK)
def test_fused_gradcheck_float64(case, family):
    layer, x = _make(case, family)
    f, inputs = _as_function_of_params(layer, x)
    assert torch.autograd.gradcheck(f, inputs, fast_mode=True)


@pytest.mark.parametrize('family', ['fan', 'lowrank(rank=2)'])
def test_fused_gradcheck_full_jacobian(family):
    layer = _randomize(QuadraticConv2d(2, 2, 2, stride=2, neuron=family, init='default')).double()
    f, inputs = _as_function_of_params(layer, torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize('case, family', [('linear', 'lowrank(rank=2)'), ('conv2d', 'fan'), ('convT1d', 'quadralib')])
def test_fused_double_backward(case, family):
    layer, x = _make(case, family)
    x = x[:1].detach().requires_grad_()
    f, inputs = _as_function_of_params(layer, x)
    assert torch.autograd.gradgradcheck(f, inputs, fast_mode=True)


@pytest.mark.parametrize('family', FAMILIES)
def test_rule_families_use_the_function(family):
    layer, x = _make('conv2d', family)
    name = type(layer(x).grad_fn).__name__
    assert (name == 'BackwardCFunction' or 'QuadraticFunction' in name) == (family.split('(')[0] in _RULES), name


@pytest.mark.parametrize('family', ['fan', 'lowrank(rank=2)', 'qres'])
@pytest.mark.parametrize('case', ['conv2d', 'convT2d', 'linear'])
def test_inference_path_and_input_without_grad(case, family):
    layer, x = _make(case, family)
    x = x.detach()  # e.g. the stem: only weight gradients
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer.forward_reference(x))
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), layer.forward_reference(x))
    y, y_ref = layer(x), layer.forward_reference(x)
    g = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, list(layer.parameters()), g),
                    torch.autograd.grad(y_ref, list(layer.parameters()), g)):
        torch.testing.assert_close(a, b)


def _assert_matches_reference(layer, x):
    """The layer's forward == forward_reference, and so are the gradients w.r.t. x and every parameter."""
    y, y_ref = layer(x), layer.forward_reference(x)
    torch.testing.assert_close(y, y_ref)
    g = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, [x, *layer.parameters()], g),
                    torch.autograd.grad(y_ref, [x, *layer.parameters()], g)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize('padding', ['same', 'valid'])
@pytest.mark.parametrize('kernel', [3, 4])
def test_string_padding(padding, kernel):
    layer = _randomize(QuadraticConv2d(3, 4, kernel, padding=padding, dilation=2 if padding == 'same' else 1,
                                       init='default')).double()
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64, requires_grad=True)
    _assert_matches_reference(layer, x)


def test_fused_saves_less_for_backward():
    """The Function saves x, the weights and r|g; the reference also keeps x*x and more."""
    layer = QuadraticConv2d(8, 8, 3, padding=1)
    x = torch.randn(4, 8, 16, 16, requires_grad=True)

    def saved_bytes(fn):
        seen = {}

        def pack(t):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(x)
        return sum(seen.values())
    fused, ref = saved_bytes(layer), saved_bytes(layer.forward_reference)
    assert fused < ref, (fused, ref)


def test_set_fused_switches_every_layer():
    model = create_model('qresnet8').eval()
    x = torch.randn(2, 3, 32, 32)
    y = model(x)
    assert set_fused(model, False) is model
    layers = [m for m in model.modules() if isinstance(m, QuadraticLayer)]
    assert layers and all(not m.fused for m in layers)
    torch.testing.assert_close(model(x), y, rtol=1e-5, atol=1e-5)
    set_fused(model, True)
    assert all(m.fused for m in layers)
    assert 'set_fused' in __import__('qzoo.layers', fromlist=['__all__']).__all__


def test_default_path_is_auto_fused_on_cpu(monkeypatch):
    """fused=None (the default): the fused path on the CPU; the reference path on CUDA (measured faster on an
    H100, see qzoo.layers); set_fused(model, None) restores the default."""
    layer = _randomize(QuadraticConv2d(3, 4, 3))
    assert layer.fused is None and 'fused=auto' in repr(layer)
    calls = []
    ref = layer.forward_reference
    monkeypatch.setattr(layer, 'forward_reference', lambda *a, **k: calls.append(1) or ref(*a, **k))
    x = torch.randn(1, 3, 8, 8)
    y = layer(x)
    assert calls == []
    set_fused(layer, False)
    torch.testing.assert_close(layer(x), y)
    assert calls == [1] and layer.fused is False
    set_fused(layer, None)
    assert layer.fused is None
    layer(x)
    assert calls == [1]


def test_channels_last_fused_matches_reference():
    layer = _randomize(QuadraticConv2d(4, 8, 3, padding=1, stride=2)).to(memory_format=torch.channels_last)
    x = torch.randn(2, 4, 9, 9).to(memory_format=torch.channels_last).requires_grad_()
    y, y_ref = layer(x), layer.forward_reference(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, [x, *layer.parameters()], g),
                    torch.autograd.grad(y_ref, [x, *layer.parameters()], g)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_autocast_bf16_fused_matches_reference():
    layer = _randomize(QuadraticConv2d(4, 8, 3, padding=1))
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y, y_ref = layer(x), layer.forward_reference(x)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=0.05, atol=0.1)
    g = torch.randn_like(y)
    ga = torch.autograd.grad(y, [x, *layer.parameters()], g)
    gb = torch.autograd.grad(y_ref, [x, *layer.parameters()], g)
    for a, b in zip(ga, gb):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0.05, atol=0.05 * b.abs().max().item())


def _compile_check(module, x):
    torch._dynamo.reset()
    explain = torch._dynamo.explain(module)(x)
    assert explain.graph_break_count == 0, explain.break_reasons
    compiled = torch.compile(module, backend='aot_eager', fullgraph=True)
    y = compiled(x)
    grads = torch.autograd.grad(y.square().sum(), list(module.parameters()))
    y_eager = module(x)
    grads_eager = torch.autograd.grad(y_eager.square().sum(), list(module.parameters()))
    torch.testing.assert_close(y, y_eager)
    for a, b in zip(grads, grads_eager):
        torch.testing.assert_close(a, b)


def test_compile_fullgraph_layer():
    layer = _randomize(QuadraticConv2d(4, 8, 3, padding=1))
    _compile_check(layer, torch.randn(2, 4, 8, 8, requires_grad=True))


@pytest.mark.slow
def test_compile_fullgraph_qresnet():
    model = create_model('qresnet8')
    _compile_check(model, torch.randn(2, 3, 16, 16))


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_fused_bf16_and_cuda_graph():
    dev = 'cuda'
    layer = _randomize(QuadraticConv2d(16, 32, 3, padding=1)).to(dev)
    # captured below: a copy no eager forward has touched (H100, torch 2.11: a graph-building forward on the
    # default stream before the capture fails it, the reference path alike: cudaErrorStreamCaptureImplicit)
    captured = copy.deepcopy(layer)
    x = torch.randn(8, 16, 16, 16, device=dev, requires_grad=True)
    y, y_ref = layer(x), layer.forward_reference(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    with torch.autocast('cuda', dtype=torch.bfloat16):
        yb = layer(x)
    assert yb.dtype == torch.bfloat16
    # a forward+backward captured in a CUDA graph (no host syncs in the fused path)
    layer = captured
    static_x = x.detach().clone().requires_grad_()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            layer.zero_grad(set_to_none=False)
            layer(static_x).square().sum().backward()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    layer.zero_grad(set_to_none=False)
    with torch.cuda.graph(graph):
        layer(static_x).square().sum().backward()
    static_x.data.copy_(torch.randn_like(static_x))
    layer.zero_grad(set_to_none=False)
    graph.replay()
    want = torch.autograd.grad(layer.forward_reference(static_x).square().sum(), list(layer.parameters()))
    for p, w in zip(layer.parameters(), want):
        torch.testing.assert_close(p.grad, w, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize('family', FAMILIES)
@pytest.mark.parametrize('case', [c for c in FUNCTION_CASES if 'groups' not in c])
def test_unstacked_x_terms_match_reference(case, family, monkeypatch):
    """The x terms as separate calls (automatic on CPU in channels_last; forced here)."""
    from qzoo import layers
    monkeypatch.setattr(layers, '_STACK_X_TERMS', False)
    layer, x = _make(case, family)
    _assert_matches_reference(layer, x)
    if (case, family) in (('conv2d', 'fan'), ('convT1d', 'lowrank(rank=2)'), ('linear', 'quadralib')):
        f, inputs = _as_function_of_params(layer, x[:1].detach().requires_grad_())
        assert torch.autograd.gradcheck(f, inputs, fast_mode=True)
        assert torch.autograd.gradgradcheck(f, inputs, fast_mode=True)


def test_unstacked_compiles_fullgraph(monkeypatch):
    from qzoo import layers
    monkeypatch.setattr(layers, '_STACK_X_TERMS', False)
    layer = _randomize(QuadraticConv2d(4, 8, 3, padding=1))
    _compile_check(layer, torch.randn(2, 4, 8, 8, requires_grad=True))
