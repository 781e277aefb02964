"""Multilayer perceptrons for the synthetic tasks: ``mlp`` (conventional) and
``qmlp`` (every layer quadratic, as in the seed's QMLP: 2->10->2 has 52 and
156 parameters)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch.fx
from torch import Tensor, nn

from ..neurons import NeuronSpec, get_neuron
from ._common import (HeadMixin, build, cfg, check_args, check_global_pool, check_input, flatten_vector, layer_owners,
                      make_layer, register_factory, set_traits, take_indices, tensor_owners)

__all__ = ['MLP']

_ACTS = {'relu': nn.ReLU, 'tanh': nn.Tanh, 'sigmoid': nn.Sigmoid, 'gelu': nn.GELU, 'identity': nn.Identity}


class MLP(HeadMixin, nn.Module):
    """``in_chans`` inputs -> ``hidden`` layers -> ``num_classes`` outputs (use
    ``num_classes=1`` for regression). All layers use ``neuron``.

    Takes ``(N, in_chans)`` vectors, or timm's image layout ``(N, in_chans, 1, 1)`` (what
    ``pretrained_cfg['input_size']`` = ``(in_chans, 1, 1)`` describes). Its features are vectors
    ``(N, hidden)``: ``global_pool`` can only be ``''`` (nothing to pool), and ``features_only`` /
    ``forward_intermediates`` return each hidden layer's output ``(N, width)`` (``reduction`` 1)."""

    def __init__(self, hidden: Sequence[int] = (10,), num_classes: int = 2, in_chans: int = 2,
                 neuron: NeuronSpec = 'linear', act: str = 'relu', drop_rate: float = 0.0, global_pool: str = '',
                 img_size: Optional[Sequence[int]] = None):
        super().__init__()
        if act not in _ACTS:
            raise ValueError(f"unknown activation {act!r}; valid: {', '.join(_ACTS)}")
        if img_size is not None and tuple(img_size) != (1, 1):
            raise ValueError(f'MLP: img_size must be (1, 1): its input_size is (features, 1, 1) and in_chans sets '
                             f'the feature count; got img_size={img_size!r}')
        hidden = list([hidden] if isinstance(hidden, int) else hidden)
        check_args('MLP', in_chans, num_classes, **{f'hidden[{i}]': h for i, h in enumerate(hidden)})
        self.global_pool = self._check_pool(global_pool, num_classes)
        fam = get_neuron(neuron)
        self.hidden, self.neuron, self.act = hidden, fam.spec, act
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        layers, prev, self.feature_info = [], in_chans, []
        for h in hidden:
            layers += [make_layer('linear', prev, h, neuron=fam), _ACTS[act]()]
            if drop_rate:
                layers.append(nn.Dropout(drop_rate))
            self.feature_info.append(dict(num_chs=h, reduction=1, module=f'features.{len(layers) - 1}'))
            prev = h
        self.features = nn.Sequential(*layers)
        self.num_features = self.head_hidden_size = prev
        self.head = self._make_head(num_classes)
        set_traits(self, tensor_owners('features.0', self.features[0]))

    @staticmethod
    def feature_levels(kwargs) -> int:
        """How many ``feature_info`` levels an MLP built with ``kwargs`` has: one per hidden layer."""
        hidden = kwargs.get('hidden', (10,))
        return 1 if isinstance(hidden, int) else len(hidden)

    def _check_pool(self, global_pool: str, num_classes: int) -> str:
        return check_global_pool('MLP', global_pool, ('',), num_classes,
                                 ' (its features are vectors (N, hidden): there is nothing to pool)',
                                 head_reads_maps=True)

    def _make_head(self, num_classes: int) -> nn.Module:
        return make_layer('linear', self.num_features, num_classes, neuron=self.neuron) if num_classes > 0 \
            else nn.Identity()

    def _check(self, x: Tensor) -> None:
        check_input(x, self, (self.in_chans,), (self.in_chans, 1, 1))

    def forward_features(self, x: Tensor) -> Tensor:
        self._check(x)
        return self.features(flatten_vector(x))

    def forward_intermediates(self, x: Tensor, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = 'NCHW', intermediates_only: bool = False):
        """timm's ``forward_intermediates``: the outputs ``(N, width)`` of the hidden layers ``indices`` picks
        (None = all, an int k = the last k, a list, negative from the end) and, unless ``intermediates_only``,
        the final features (``forward_features``'s; with ``stop_early``, the last layer computed).
        ``output_fmt``: 'NCHW' (channels first: vectors are (N, C)); ``norm`` has no effect (no final norm)."""
        ends = [int(f['module'].rsplit('.', 1)[1]) for f in self.feature_info]
        take, max_index = take_indices(self, len(ends), indices, output_fmt)
        self._check(x)
        x, intermediates = flatten_vector(x), []
        modules = self.features[:ends[max_index] + 1] if stop_early else self.features
        for j, module in enumerate(modules):
            x = module(x)
            if j in ends and ends.index(j) in take:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True):
        """Drop the hidden layers after the deepest one ``indices`` picks (and, with ``prune_head``, the
        classifier); returns the picked levels."""
        take, max_index = take_indices(self, len(self.feature_info), indices, 'NCHW')
        end = int(self.feature_info[max_index]['module'].rsplit('.', 1)[1])
        self.features = self.features[:end + 1]
        if prune_head:
            self.reset_classifier(0, '')
        return take


# the layout adapter runs at run time in torch.fx graphs (it branches on the input's rank)
torch.fx.wrap('flatten_vector')


def _mlp_cfg(quadratic: bool):
    return cfg(num_classes=2, input_size=(2, 1, 1), pool_size=None, fixed_input_size=True, mean=(0.0,), std=(1.0,),
               interpolation='', first_conv=layer_owners('features.0', 'linear', 'fan' if quadratic else 'linear'),
               classifier=layer_owners('head', 'linear', 'fan' if quadratic else 'linear'),
               paper_ids='arXiv:2303.06316',
               notes=('input_size is (features, 1, 1): the model takes (N, features) tensors, or (N, features, 1, 1) '
                      'as timm builds them from input_size',))


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
