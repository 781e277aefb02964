"""Each neuron family against its formula written out by hand."""
import pytest
import torch
import torch.nn.functional as F

import qzoo
from qzoo import QuadraticLinear, get_neuron, list_neurons
from qzoo.neurons import NEURONS, NeuronFamily, Term


def _rand_layer(neuron, bias=True):
    layer = QuadraticLinear(5, 4, bias=bias, neuron=neuron, init='default')
    with torch.no_grad():  # every tensor random (no zero-initialised terms)
        for p in layer.parameters():
            p.normal_()
    return layer


def _W(layer, t):
    return layer.terms[t].weight


def _b(layer, t):
    return layer.terms[t].bias


HAND = {
    'linear': lambda L, x: x @ _W(L, 'r').T + _b(L, 'r'),
    'fan': lambda L, x: (x @ _W(L, 'r').T + _b(L, 'r')) * (x @ _W(L, 'g').T + _b(L, 'g'))
    + (x * x) @ _W(L, 'b').T + _b(L, 'b'),
    'fan_rg': lambda L, x: (x @ _W(L, 'r').T + _b(L, 'r')) * (x @ _W(L, 'g').T + _b(L, 'g')),
    'fan_rb': lambda L, x: x @ _W(L, 'r').T + _b(L, 'r') + (x * x) @ _W(L, 'b').T,
    'quadralib': lambda L, x: (x @ _W(L, 'a').T) * (x @ _W(L, 'b').T) + x @ _W(L, 'c').T + _b(L, 'c'),
    'qres': lambda L, x: (x @ _W(L, '1').T) * (x @ _W(L, '2').T) + x @ _W(L, '1').T + _b(L, '1'),
    'power': lambda L, x: (x * x) @ _W(L, 'p').T + _b(L, 'p'),
}


def _lowrank_hand(L, x, rank):
    Q = _W(L, 'q').view(4, rank, 5)  # rows ordered (out, k)
    quad = sum((x @ Q[:, k, :].T) ** 2 for k in range(rank))
    return quad + x @ _W(L, 'w').T + _b(L, 'w')


@pytest.mark.parametrize('name', [n for n in NEURONS if n != 'lowrank'])
def test_family_matches_hand_formula(name):
    layer = _rand_layer(name).double()
    x = torch.randn(7, 5, dtype=torch.float64)
    want = HAND[name](layer, x)
    torch.testing.assert_close(layer(x), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('rank', [1, 3])
def test_lowrank_matches_quadratic_form(rank):
    layer = _rand_layer(f'lowrank(rank={rank})').double()
    x = torch.randn(6, 5, dtype=torch.float64)
    want = _lowrank_hand(layer, x, rank)
    torch.testing.assert_close(layer(x), want)
    # and as x^T A x with A = sum_k q_k q_k^T for each output
    Q = layer.terms['q'].weight.view(4, rank, 5)
    A = torch.einsum('okI,okJ->oIJ', Q, Q)
    xax = torch.einsum('nI,oIJ,nJ->no', x, A, x)
    torch.testing.assert_close(layer(x), xax + x @ layer.terms['w'].weight.T + layer.terms['w'].bias)


def test_param_multipliers_and_counts():
    expect = {'linear': 1, 'fan': 3, 'fan_rg': 2, 'fan_rb': 2, 'quadralib': 3, 'qres': 2, 'power': 1}
    for name, mult in expect.items():
        assert get_neuron(name).param_multiplier == mult
        layer = QuadraticLinear(5, 4, neuron=name)
        n_bias = sum(4 for t in get_neuron(name).terms if t.bias)
        assert sum(p.numel() for p in layer.parameters()) == mult * 20 + n_bias
    assert get_neuron('lowrank(rank=3)').param_multiplier == 4


def test_every_family_has_name_formula_citation():
    for name in list_neurons():
        fam = get_neuron(name)
        assert fam.name == name and fam.formula and fam.citation


def test_unknown_neuron_lists_valid_names():
    with pytest.raises(ValueError) as e:
        get_neuron('cubic')
    for name in NEURONS:
        assert name in str(e.value)


@pytest.mark.parametrize('spec', ['lowrank(rank=0)', 'lowrank(rank=1.5)', 'fan(rank=2)', 'fan(', 'lowrank(2)'])
def test_bad_neuron_specs(spec):
    with pytest.raises(ValueError):
        get_neuron(spec)


def test_spec_round_trip():
    for spec in ['fan', 'lowrank(rank=4)', {'name': 'lowrank', 'rank': 2}]:
        fam = get_neuron(spec)
        assert get_neuron(fam.spec) == fam


@pytest.mark.parametrize('name', [n for n in NEURONS if get_neuron(n).has_linear_case])
def test_linear_init_equals_linear_term_exactly(name):
    layer = QuadraticLinear(5, 4, neuron=name, init='linear')
    x = torch.randn(3, 5)
    lin = layer.linear
    assert torch.equal(layer(x), F.linear(x, lin.weight, lin.bias))


def test_power_has_no_linear_case():
    with pytest.raises(ValueError, match='no linear special case'):
        QuadraticLinear(5, 4, neuron='power', init='linear')


def test_fan_without_bias_has_no_linear_case():
    with pytest.raises(ValueError, match='bias=True'):
        QuadraticLinear(5, 4, bias=False, neuron='fan', init='linear')


def test_lowrank_relinear_starts_off_the_stationary_point():
    layer = QuadraticLinear(5, 4, neuron='lowrank(rank=2)')  # default init='relinear'
    q = layer.terms['q'].weight
    assert q.abs().max() > 0
    assert q.abs().max() < 0.05 * layer.terms['w'].weight.abs().max()


class _Bilinear(NeuronFamily):
    """A family defined outside qzoo: (U x) * (V x*x) + W x + b."""
    name = 'bilinear_test'
    formula = '(U x) * (V (x*x)) + W x + b'
    citation = 'test only'
    terms = (Term('u', 'x', False, True), Term('v', 'sq', False, True), Term('w', 'x', True, False))
    linear_term = 'w'

    def combine(self, t, ch, bias_of):
        return torch.addcmul(t['w'], t['u'], t['v'])


def test_a_new_family_needs_nothing_in_the_layers():
    """The family's terms and combine are all a layer uses: a new family runs on every layer type,
    traces with torch.fx and has gradients, with no change to qzoo.layers."""
    fam = _Bilinear()
    conv = qzoo.QuadraticConv1d(3, 4, 3, padding=1, neuron=fam, init='default').double()
    with torch.no_grad():
        for p in conv.parameters():
            p.normal_()
    x = torch.randn(2, 3, 7, dtype=torch.float64, requires_grad=True)
    want = conv.conv_u(x) * conv.conv_v(x * x) + conv.conv_w(x)
    torch.testing.assert_close(conv(x), want, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(conv, (x,), fast_mode=True)
    gm = torch.fx.symbolic_trace(torch.nn.Sequential(conv))
    torch.testing.assert_close(gm(x), want, rtol=1e-12, atol=1e-12)
    assert set(QuadraticLinear(5, 4, neuron=fam).state_dict()) == {'linear_u.weight', 'linear_v.weight',
                                                                   'linear_w.weight', 'linear_w.bias'}
    assert QuadraticLinear(5, 4, neuron=fam, init='linear').linear_u.weight.abs().sum() == 0


def test_combine_takes_the_channel_dim_from_the_end():
    """lowrank sums its K squares per channel whatever the layout: (N, C*K), (N, L, C*K), (N, C*K, H, W)
    and unbatched (C*K, H, W) all give the same numbers."""
    fam = get_neuron('lowrank(rank=2)')
    q = torch.randn(3, 8, 5, 5)  # (N, C*K, H, W), C = 4
    w = torch.zeros(3, 4, 5, 5)
    conv = fam.combine({'q': q, 'w': w}, -3, lambda name: None)
    want = q.view(3, 4, 2, 5, 5).square().sum(2)
    assert torch.equal(conv, want)
    assert torch.equal(fam.combine({'q': q[0], 'w': w[0]}, -3, lambda name: None), want[0])
    last = fam.combine({'q': q.movedim(1, -1), 'w': w.movedim(1, -1)}, -1, lambda name: None)
    assert torch.equal(last, want.movedim(1, -1))
