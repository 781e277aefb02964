"""Quadratic layers: fused path == plain per-term reference == hand-written torch calls,
forward and backward; ReLinear equivalence; quadratize; shapes and errors."""
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
