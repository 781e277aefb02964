"""Pieces shared by the model families: layer choice by neuron, input checks,
timm-style cfgs, and the builder every registered factory goes through."""
from __future__ import annotations

from typing import Any, Callable, Dict, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..layers import (QuadraticConv1d, QuadraticConv2d, QuadraticConvTranspose1d, QuadraticConvTranspose2d,
                      QuadraticLayer, QuadraticLinear)
from ..neurons import NeuronFamily, NeuronSpec, get_neuron

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
LICENSE = 'apache-2.0'

_KINDS = {
    'linear': (nn.Linear, QuadraticLinear),
    'conv1d': (nn.Conv1d, QuadraticConv1d),
    'conv2d': (nn.Conv2d, QuadraticConv2d),
    'convt1d': (nn.ConvTranspose1d, QuadraticConvTranspose1d),
    'convt2d': (nn.ConvTranspose2d, QuadraticConvTranspose2d),
}


def make_layer(kind: str, *args, neuron: NeuronSpec = 'linear', **kwargs) -> nn.Module:
    """The torch layer when ``neuron`` is ``'linear'``, else its quadratic counterpart."""
    fam = get_neuron(neuron)
    conventional, quadratic = _KINDS[kind]
    if fam.name == 'linear':
        return conventional(*args, **kwargs)
    return quadratic(*args, neuron=fam, **kwargs)


def tensor_owners(name: str, module: nn.Module) -> Union[str, Tuple[str, ...]]:
    """Names of the submodules holding ``module``'s ``.weight``/``.bias`` (for timm's
    ``first_conv`` / ``classifier`` adaptation)."""
    if isinstance(module, QuadraticLayer):
        return tuple(f'{name}.{module.prefix}_{t}' for t in module.terms)
    return name


def check_input(x: Tensor, model: nn.Module, shape: Sequence[Union[int, str]]) -> None:
    """Raise a ValueError naming the expected shape when ``x`` does not fit.

    ``shape`` lists the expected dims after the batch; ints must match exactly, strings
    (e.g. ``'H'``) are free."""
    name = getattr(model, 'pretrained_cfg', {}).get('architecture') or type(model).__name__
    want = '(N, ' + ', '.join(str(s) for s in shape) + ')'
    if not isinstance(x, Tensor):
        raise TypeError(f'{name} expects a tensor {want}, got {type(x).__name__}')
    if x.dim() != len(shape) + 1:
        raise ValueError(f'{name} expects input of shape {want} ({len(shape) + 1}-D), got {tuple(x.shape)}')
    for i, s in enumerate(shape):
        if isinstance(s, int) and x.shape[i + 1] != s:
            raise ValueError(f'{name} expects input of shape {want}, got {tuple(x.shape)} '
                             f'(dim {i + 1} is {x.shape[i + 1]}, expected {s})')


def check_args(model: str, in_chans: int, num_classes: int, **sizes: int) -> None:
    """ValueError for impossible sizes: ``in_chans`` >= 1, ``num_classes`` >= 0 (0 = no classifier,
    as in timm), every other size >= 1."""
    for k, v in dict(in_chans=in_chans, **sizes).items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f'{model}: {k} must be a positive integer, got {v!r}')
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
        raise ValueError(f'{model}: num_classes must be an integer >= 0 (0 removes the classifier), '
                         f'got {num_classes!r}')


def cfg(**kwargs) -> Dict[str, Any]:
    """A pretrained cfg with qzoo's defaults (CIFAR-sized classification)."""
    base = dict(num_classes=10, input_size=(3, 32, 32), pool_size=None, crop_pct=1.0, interpolation='bilinear',
                mean=CIFAR_MEAN, std=CIFAR_STD, first_conv='conv1', classifier='fc', license=LICENSE)
    base.update(kwargs)
    return base


def kaiming_init_(model: nn.Module) -> None:
    """Kaiming-normal init for every conv/linear weight (conventional layers and the terms of
    quadratic ones), then each quadratic layer's ReLinear init of its quadratic-only terms."""
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear, nn.ConvTranspose1d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight)
    for m in model.modules():
        if isinstance(m, QuadraticLayer):
            m.reset_quadratic_('relinear')


class HeadMixin:
    """timm's classifier interface over ``self.head``, built by ``self._make_head(num_classes)``."""

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool=None) -> None:
        self.num_classes = num_classes
        self.head = self._make_head(num_classes)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def set_traits(model: nn.Module, first_conv) -> None:
    """Declare the model's current first conv (depends on its neuron) for timm's input adaptation."""
    model._traits = dict(getattr(model, '_traits', {}), first_conv=first_conv)


# ---- factories ------------------------------------------------------------------------
#: every qzoo model factory by name, in definition order (filled by :func:`register_factory`;
#: :mod:`qzoo.registry` registers them with timm, with their published weights)
MODEL_FACTORIES: Dict[str, Callable[..., nn.Module]] = {}
#: each factory's timm pretrained cfg: the architecture's input size, normalisation, first conv, classifier
BASE_CFGS: Dict[str, Dict[str, Any]] = {}

#: factory kwargs that do not describe the architecture (timm's loading options)
RUNTIME_KWARGS = ('pretrained_cfg', 'pretrained_cfg_overlay', 'cache_dir', 'pretrained_model_args', 'device', 'dtype',
                  'checkpoint_path', 'pretrained', 'pretrained_strict')


def register_factory(base_cfg: Dict[str, Any]):
    """Decorator: record a model factory (named as the model) and its architecture cfg."""
    def deco(fn):
        if fn.__name__ in MODEL_FACTORIES:
            raise ValueError(f'two qzoo factories are named {fn.__name__!r}')
        MODEL_FACTORIES[fn.__name__] = fn
        BASE_CFGS[fn.__name__] = dict(base_cfg)
        return fn
    return deco


def build(model_cls, variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """Build ``variant`` through timm's ``build_model_with_cfg``. Pretrained weights come in as
    ``pretrained_cfg_overlay['state_dict']``, resolved and SHA-256 checked by :mod:`qzoo.registry`
    (timm then adapts them to a changed ``num_classes`` / ``in_chans`` and loads them strictly)."""
    from timm.models import build_model_with_cfg
    if pretrained and not (kwargs.get('pretrained_cfg_overlay') or {}).get('state_dict'):
        raise ValueError(f'{variant}: load pretrained weights through qzoo.create_model or timm.create_model '
                         f'(after import qzoo), which resolve and verify them')
    return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
