import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import qzoo
from qzoo import QuadraticConv2d, count_macs, count_params


def _flops(model, x):
    with FlopCounterMode(display=False) as fc:
        model(x)
    return fc.get_total_flops()


def test_quadratic_conv_macs_by_hand():
    # fan conv 3->4, k3, pad 1 on a 1x3x5x5 input: output 1x4x5x5 = 100 elements
    layer = QuadraticConv2d(3, 4, 3, padding=1, neuron='fan')
    per_conv = 100 * 3 * 9                      # 2700 MACs per term
    want = 3 * per_conv + 1 * 3 * 5 * 5 + 100   # three terms + x*x (75) + r*g (100)
    assert count_macs(nn.Sequential(layer), (1, 3, 5, 5)) == want == 8275


def test_lowrank_and_transpose_macs_by_hand():
    layer = qzoo.QuadraticConvTranspose2d(2, 3, 2, stride=2, neuron='lowrank(rank=2)')
    # input 1x2x4x4 (32 el), output 1x3x8x8 (192 el); a transposed conv does in_el * out/g * k*k MACs
    want = 32 * (6 * 4) + 32 * (3 * 4) + 2 * 192   # Q (6 channels), W, two squares per output
    assert count_macs(nn.Sequential(layer), (1, 2, 4, 4)) == want


@pytest.mark.parametrize('name,kw,shape', [('resnet20', {}, (2, 3, 32, 32)), ('wdcnn', {}, (2, 1, 2048)),
                                           ('mlp', {'hidden': [7, 5]}, (4, 2)),
                                           ('unet', {'base_width': 4, 'depth': 2}, (1, 3, 16, 16))])
def test_conventional_macs_match_torch_flop_counter(name, kw, shape):
    model = qzoo.create_model(name, **kw).eval()
    x = torch.randn(shape)
    assert 2 * count_macs(model, x) == _flops(model, x)


def test_quadratic_macs_cover_flop_counter_convs():
    """The flop counter sees each term's conv; qzoo adds x*x and r*g."""
    model = qzoo.create_model('qresnet8', width=4).eval()
    x = torch.randn(1, 3, 32, 32)
    extras = 0
    for m in model.modules():
        if isinstance(m, QuadraticConv2d):
            out = {}
            h = m.register_forward_hook(lambda mod, a, o: out.update(i=a[0].numel(), o=o.numel()))
            model(x)
            h.remove()
            extras += out['i'] + out['o']
    assert 2 * (count_macs(model, x) - extras) == _flops(model, x)


def test_count_params_counts_shared_once():
    lin = nn.Linear(3, 3)
    assert count_params(nn.Sequential(lin, lin)) == 12
