"""Multilayer perceptrons for the synthetic tasks: ``mlp`` (conventional) and
``qmlp`` (every layer quadratic, as in the seed's QMLP: 2->10->2 has 52 and
156 parameters)."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ..neurons import NeuronSpec, get_neuron
from ._common import HeadMixin, build, with_published, cfg, check_args, check_input, entrypoint, make_layer, set_traits, tensor_owners

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


default_cfgs = with_published({'mlp': _mlp_cfg(False), 'qmlp': _mlp_cfg(True)})


@entrypoint
def mlp(pretrained: bool = False, **kwargs) -> MLP:
    """Conventional MLP. kwargs: hidden ([10]), in_chans (2 features), num_classes (2), act, neuron."""
    kwargs.setdefault('neuron', 'linear')
    return build(MLP, 'mlp', pretrained, **kwargs)


@entrypoint
def qmlp(pretrained: bool = False, **kwargs) -> MLP:
    """Quadratic MLP (every layer quadratic, neuron fan by default). kwargs as ``mlp``."""
    kwargs.setdefault('neuron', 'fan')
    return build(MLP, 'qmlp', pretrained, **kwargs)
