"""Multilayer perceptrons for the synthetic tasks: ``mlp`` (conventional) and
``qmlp`` (every layer quadratic, as in the seed's QMLP: 2->10->2 has 52 and
156 parameters)."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ..neurons import NeuronSpec, get_neuron
from ._common import HeadMixin, build, cfg, check_args, check_input, make_layer, register_factory, set_traits

__all__ = ['MLP']

_ACTS = {'relu': nn.ReLU, 'tanh': nn.Tanh, 'sigmoid': nn.Sigmoid, 'gelu': nn.GELU, 'identity': nn.Identity}


class MLP(HeadMixin, nn.Module):
    """``in_chans`` inputs -> ``hidden`` layers -> ``num_classes`` outputs (use
    ``num_classes=1`` for regression). All layers use ``neuron``."""

    def __init__(self, hidden: Sequence[int] = (10,), num_classes: int = 2, in_chans: int = 2,
                 neuron: NeuronSpec = 'linear', act: str = 'relu', drop_rate: float = 0.0):
        super().__init__()
        if act not in _ACTS:
            raise ValueError(f"unknown activation {act!r}; valid: {', '.join(_ACTS)}")
        hidden = list([hidden] if isinstance(hidden, int) else hidden)
        check_args('MLP', in_chans, num_classes, **{f'hidden[{i}]': h for i, h in enumerate(hidden)})
        fam = get_neuron(neuron)
        self.hidden, self.neuron, self.act = hidden, fam.spec, act
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        layers, prev = [], in_chans
        for h in hidden:
            layers += [make_layer('linear', prev, h, neuron=fam), _ACTS[act]()]
            if drop_rate:
                layers.append(nn.Dropout(drop_rate))
            prev = h
        self.features = nn.Sequential(*layers)
        self.num_features = self.head_hidden_size = prev
        self.head = self._make_head(num_classes)
        set_traits(self, None)  # no image stem to adapt

    def _make_head(self, num_classes: int) -> nn.Module:
        return make_layer('linear', self.num_features, num_classes, neuron=self.neuron) if num_classes > 0 \
            else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        check_input(x, self, (self.in_chans,))
        return self.features(x)



def _mlp_cfg(quadratic: bool):
    return cfg(num_classes=2, input_size=(2, 1, 1), mean=(0.0,), std=(1.0,), first_conv=None,
               classifier=('head.linear_r', 'head.linear_g', 'head.linear_b') if quadratic else 'head',
               paper_ids='arXiv:2303.06316',
               notes=('input_size is (features, 1, 1): the model takes (N, features) tensors',))


def _create(variant: str, quadratic: bool, pretrained: bool, kwargs, hidden=(10,)) -> MLP:
    """kwargs: hidden (layer widths), in_chans (input features, 2), num_classes (2), act ('relu'), neuron
    ('fan' for qmlp, 'linear' for mlp), drop_rate."""
    kwargs.setdefault('neuron', 'fan' if quadratic else 'linear')
    kwargs.setdefault('hidden', list(hidden))
    return build(MLP, variant, pretrained, **kwargs)


@register_factory(_mlp_cfg(False))
def mlp(pretrained: bool = False, **kwargs) -> MLP:
    """Conventional MLP, one hidden layer of 10 (2 -> 10 -> 2: 52 parameters)."""
    return _create('mlp', False, pretrained, kwargs)


@register_factory(_mlp_cfg(True))
def qmlp(pretrained: bool = False, **kwargs) -> MLP:
    """Quadratic MLP (every layer quadratic, neuron fan), one hidden layer of 10 (2 -> 10 -> 2: 156 parameters)."""
    return _create('qmlp', True, pretrained, kwargs)



@register_factory(_mlp_cfg(False))
def mlp_h2(pretrained: bool = False, **kwargs) -> MLP:
    """Conventional MLP, one hidden layer of 2."""
    return _create('mlp_h2', False, pretrained, kwargs, hidden=(2,))



@register_factory(_mlp_cfg(False))
def mlp_h4(pretrained: bool = False, **kwargs) -> MLP:
    """Conventional MLP, one hidden layer of 4."""
    return _create('mlp_h4', False, pretrained, kwargs, hidden=(4,))



@register_factory(_mlp_cfg(False))
def mlp_h8(pretrained: bool = False, **kwargs) -> MLP:
    """Conventional MLP, one hidden layer of 8."""
    return _create('mlp_h8', False, pretrained, kwargs, hidden=(8,))



@register_factory(_mlp_cfg(False))
def mlp_h16(pretrained: bool = False, **kwargs) -> MLP:
    """Conventional MLP, one hidden layer of 16."""
    return _create('mlp_h16', False, pretrained, kwargs, hidden=(16,))



@register_factory(_mlp_cfg(False))
def mlp_h32(pretrained: bool = False, **kwargs) -> MLP:
    """Conventional MLP, one hidden layer of 32."""
    return _create('mlp_h32', False, pretrained, kwargs, hidden=(32,))



@register_factory(_mlp_cfg(True))
def qmlp_h2(pretrained: bool = False, **kwargs) -> MLP:
    """Quadratic MLP, one hidden layer of 2."""
    return _create('qmlp_h2', True, pretrained, kwargs, hidden=(2,))



@register_factory(_mlp_cfg(True))
def qmlp_h4(pretrained: bool = False, **kwargs) -> MLP:
    """Quadratic MLP, one hidden layer of 4."""
    return _create('qmlp_h4', True, pretrained, kwargs, hidden=(4,))



@register_factory(_mlp_cfg(True))
def qmlp_h8(pretrained: bool = False, **kwargs) -> MLP:
    """Quadratic MLP, one hidden layer of 8."""
    return _create('qmlp_h8', True, pretrained, kwargs, hidden=(8,))



@register_factory(_mlp_cfg(True))
def qmlp_h16(pretrained: bool = False, **kwargs) -> MLP:
    """Quadratic MLP, one hidden layer of 16."""
    return _create('qmlp_h16', True, pretrained, kwargs, hidden=(16,))



@register_factory(_mlp_cfg(True))
def qmlp_h32(pretrained: bool = False, **kwargs) -> MLP:
    """Quadratic MLP, one hidden layer of 32."""
    return _create('qmlp_h32', True, pretrained, kwargs, hidden=(32,))
