"""Pieces shared by the model families: layer choice by neuron, input checks,
timm-style cfgs, and the builder every registered factory goes through."""
from __future__ import annotations

import functools
from typing import Any, Dict, Optional, Sequence, Tuple, Union

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


def neuron_spec(neuron: NeuronSpec) -> str:
    return get_neuron(neuron).spec


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


# ---- entrypoints ------------------------------------------------------------------
#: every qzoo model factory, by name (filled by @entrypoint; registered with timm by qzoo.registry)
ENTRYPOINTS: Dict[str, Any] = {}


#: factory kwargs that do not describe the architecture
RUNTIME_KWARGS = ('pretrained_cfg', 'pretrained_cfg_overlay', 'cache_dir', 'pretrained_model_args', 'device', 'dtype')


def entrypoint(fn):
    """Mark a model factory; ``qzoo.registry`` registers it with timm on ``import qzoo``. The model
    remembers the architecture kwargs it was built with (``_model_args``, as recent timm records
    them), so ``save_pretrained`` can write them whatever timm version built it."""
    @functools.wraps(fn)
    def factory(pretrained: bool = False, **kwargs):
        entry = _published_entry(fn.__name__, kwargs.get('pretrained_cfg'), pretrained)
        if entry:  # '<arch>.<tag>' (or pretrained=True's default) builds that checkpoint's architecture
            for k, v in entry['model_args'].items():
                kwargs.setdefault(k, v)
        model = fn(pretrained=pretrained, **kwargs)
        args = {k: v for k, v in kwargs.items() if k not in RUNTIME_KWARGS and v is not None}
        model._model_args = dict(getattr(model, '_model_args', {}), **args)
        return model
    ENTRYPOINTS[fn.__name__] = factory
    return factory


def with_published(base: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """timm default cfgs for ``base`` (architecture -> cfg) plus one tagged cfg per published
    checkpoint of each architecture (``checkpoints/manifest.json``); the manifest's default
    checkpoint becomes the architecture's default, so ``pretrained=True`` picks it."""
    from timm.models import generate_default_cfgs
    from ..hub import CHECKPOINTS_DIR, WEIGHTS_NAME, published
    cfgs: Dict[str, Any] = {}
    entries = published()
    for arch, c in base.items():
        for name, e in sorted(entries.items(), key=lambda kv: (not kv[1].get('default'), kv[0])):
            if e['architecture'] != arch:
                continue
            f = CHECKPOINTS_DIR / e['folder'] / WEIGHTS_NAME
            cfgs[name + ('*' if e.get('default') else '')] = dict(
                c, hf_hub_id=e.get('hf_hub_id'), file=str(f) if f.exists() else None,
                num_classes=e.get('num_classes', c.get('num_classes')),
                input_size=tuple(e.get('input_size', c.get('input_size'))),
                description=f"{e.get('dataset', '')} checkpoint; model args {e.get('model_args', {})}")
        cfgs[arch] = c
    return generate_default_cfgs(cfgs)


def _published_entry(arch: str, pretrained_cfg, pretrained: bool) -> Optional[Dict[str, Any]]:
    """The manifest entry a factory call refers to: ``pretrained_cfg`` given as a tag (what timm
    passes for ``'<arch>.<tag>'``), or, for ``pretrained=True`` without one, the default checkpoint."""
    from ..hub import published
    entries = published()
    if isinstance(pretrained_cfg, str) and pretrained_cfg:
        return entries.get(f'{arch}.{pretrained_cfg}')
    if pretrained and pretrained_cfg is None:
        return next((e for e in entries.values() if e['architecture'] == arch and e.get('default')), None)
    return None


def build(model_cls, variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """Build ``variant`` through timm's ``build_model_with_cfg``. With ``pretrained``, the
    weights are resolved and SHA-256 checked by :mod:`qzoo.hub`, then timm adapts them
    (``num_classes`` / ``in_chans`` changes) and loads them."""
    from timm.models import build_model_with_cfg
    if not pretrained:
        return build_model_with_cfg(model_cls, variant, False, **kwargs)
    from ..hub import build_pretrained

    def builder(**kw):
        return build_model_with_cfg(model_cls, variant, True, **kw)
    return build_pretrained(builder, variant, kwargs)
