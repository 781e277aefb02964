import pytest
import torch
from torch import nn

import qzoo
from qzoo.relinear import param_groups


def _by_name(groups):
    return {g['name']: g for g in groups}


def test_fan_groups_by_role():
    model = qzoo.create_model('qresnet8', width=4)
    groups = _by_name(param_groups(model, lr=0.1, weight_decay=5e-4, quad_lr_scale=1e-2, quad_weight_decay=1e-3))
    ids = {k: {id(p) for p in g['params']} for k, g in groups.items()}
    conv = model.layer1[0].conv1
    assert id(conv.conv_r.weight) in ids['decay'] and id(conv.conv_r.bias) in ids['no_decay']
    assert {id(conv.conv_g.weight), id(conv.conv_b.weight)} <= ids['quadratic']
    assert {id(conv.conv_g.bias), id(conv.conv_b.bias)} <= ids['quadratic_no_decay']
    assert id(model.bn1.weight) in ids['no_decay'] and id(model.bn1.bias) in ids['no_decay']
    assert id(model.fc.weight) in ids['decay'] and id(model.fc.bias) in ids['no_decay']
    assert groups['quadratic']['lr'] == pytest.approx(1e-3) and groups['quadratic']['weight_decay'] == 1e-3
    assert groups['quadratic_no_decay']['weight_decay'] == 0 and groups['no_decay']['weight_decay'] == 0
    assert groups['decay']['lr'] == 0.1 and groups['decay']['weight_decay'] == 5e-4
    # every trainable parameter exactly once
    all_ids = [id(p) for g in groups.values() for p in g['params']]
    assert len(all_ids) == len(set(all_ids)) == len(list(model.parameters()))
    torch.optim.SGD(list(groups.values()), lr=0.1)  # accepted by torch


@pytest.mark.parametrize('neuron,quad_terms', [('fan_rg', {'g'}), ('fan_rb', {'b'}), ('quadralib', {'a', 'b'}),
                                               ('qres', {'2'}), ('lowrank', {'q'}), ('power', set())])
def test_quadratic_terms_per_family(neuron, quad_terms):
    layer = qzoo.QuadraticConv2d(3, 4, 3, neuron=neuron)
    groups = _by_name(param_groups(nn.Sequential(layer), lr=1.0, quad_lr_scale=0.5))
    quad_ids = {id(p) for k in ('quadratic', 'quadratic_no_decay') for p in groups.get(k, {'params': []})['params']}
    want = {id(p) for t in quad_terms for p in layer.terms[t].parameters()}
    assert quad_ids == want


def test_conventional_model_has_no_quadratic_group():
    groups = _by_name(param_groups(qzoo.create_model('resnet8', width=4), lr=0.1, weight_decay=1e-4))
    assert set(groups) == {'decay', 'no_decay'}


def test_frozen_parameters_are_left_out():
    model = qzoo.create_model('qmlp')
    model.head.linear_g.weight.requires_grad_(False)
    ids = {id(p) for g in param_groups(model, lr=1.0) for p in g['params']}
    assert id(model.head.linear_g.weight) not in ids


def test_groups_hold_only_what_torch_and_the_engine_read():
    """Each group is torch's params/lr/weight_decay plus its role name; the scheduler (LambdaLR) scales
    each group's own initial lr, so nothing else is carried."""
    for g in param_groups(qzoo.create_model('qmlp'), lr=0.1, weight_decay=1e-4, quad_lr_scale=0.1):
        assert set(g) == {'name', 'params', 'lr', 'weight_decay'}
