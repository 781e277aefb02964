"""CIFAR ResNets (He et al. 2016, section 4.2): depth 6n+2, three stages of width
w, 2w, 4w, and their quadratic versions (every 3x3 convolution quadratic, with
biases as in the seed code; shortcuts and the classifier stay conventional).

Shortcut 'A' pads channels with zeros (akamaster/pytorch_resnet_cifar10);
'B' uses a 1x1 convolution + BN (chenyaofo/pytorch-cifar-models). The zoo's
default is 'B'.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from typing import Optional, Sequence

from ..neurons import NeuronSpec, get_neuron
from ._common import (POOL_TYPES, build, cfg, check_args, check_global_pool, check_input, global_pool_2d,
                      kaiming_init_, layer_owners, make_layer, register_factory, set_traits, take_indices,
                      tensor_owners)

__all__ = ['CifarResNet', 'BasicBlock']


class PadShortcut(nn.Module):
    """Option A: subsample by ``stride`` and zero-pad the new channels (half each side)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.stride = stride
        self.pad = (out_ch - in_ch) // 2, out_ch - in_ch - (out_ch - in_ch) // 2

    def forward(self, x):
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, *self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, shortcut: str, neuron: NeuronSpec):
        super().__init__()
        quad = get_neuron(neuron).name != 'linear'
        self.conv1 = make_layer('conv2d', in_ch, out_ch, 3, stride=stride, padding=1, bias=quad, neuron=neuron)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = make_layer('conv2d', out_ch, out_ch, 3, stride=1, padding=1, bias=quad, neuron=neuron)
        self.bn2 = nn.BatchNorm2d(out_ch)
        if stride == 1 and in_ch == out_ch:
            self.shortcut = nn.Identity()
        elif shortcut == 'A':
            self.shortcut = PadShortcut(in_ch, out_ch, stride)
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_ch))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet of ``depth`` = 6n+2 layers; stage widths ``(w, 2w, 4w)`` for ``width`` = w,
    or exactly ``widths`` (three ints, e.g. to match a parameter budget); ``neuron`` picks the
    neuron of the 3x3 convolutions ('linear' = conventional). ``stem``: ``'neuron'`` (default)
    builds the first 3x3 convolution with ``neuron`` like the others; ``'conventional'`` makes it
    a plain ``nn.Conv2d`` without bias whatever the neuron (QuadraLib's QResNet layout)."""

    def __init__(self, depth: int = 20, width: int = 16, num_classes: int = 10, in_chans: int = 3,
                 neuron: NeuronSpec = 'linear', shortcut: str = 'B', drop_rate: float = 0.0,
                 global_pool: str = 'avg', widths: Optional[Sequence[int]] = None, stem: str = 'neuron'):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f'CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...), '
                             f'got {depth}')
        if shortcut not in ('A', 'B'):
            raise ValueError(f"shortcut must be 'A' (zero-pad) or 'B' (1x1 conv + BN), got {shortcut!r}")
        if stem not in ('neuron', 'conventional'):
            raise ValueError(f"stem must be 'neuron' (first conv uses the neuron) or 'conventional' (plain "
                             f"nn.Conv2d), got {stem!r}")
        check_args('CifarResNet', in_chans, num_classes, width=width)
        global_pool = check_global_pool('CifarResNet', global_pool, POOL_TYPES, num_classes)
        widths = [width, 2 * width, 4 * width] if widths is None else list(widths)
        if len(widths) != 3:
            raise ValueError(f'widths must list 3 stage widths, got {widths}')
        check_args('CifarResNet', in_chans, num_classes, **{f'widths[{i}]': w for i, w in enumerate(widths)})
        n = (depth - 2) // 6
        fam = get_neuron(neuron)
        quad = fam.name != 'linear'
        self.depth, self.widths, self.shortcut_type, self.neuron = depth, widths, shortcut, fam.spec
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.global_pool = global_pool
        self.stem_type = stem
        self.conv1 = (make_layer('conv2d', in_chans, widths[0], 3, padding=1, bias=quad, neuron=fam)
                      if stem == 'neuron' else nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False))
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act1 = nn.ReLU()
        stages, in_ch = [], widths[0]
        for i, out_ch in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_ch, out_ch, 2 if (i > 0 and j == 0) else 1, shortcut, fam))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.feature_info = [dict(num_chs=widths[0], reduction=1, module='act1')] + [
            dict(num_chs=w, reduction=2 ** i, module=f'layer{i + 1}') for i, w in enumerate(widths)]
        self.num_features = self.head_hidden_size = widths[2]
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        kaiming_init_(self)
        set_traits(self, tensor_owners('conv1', self.conv1))

    # ---- timm model interface -------------------------------------------------------
    @staticmethod
    def feature_levels(kwargs) -> int:
        """How many ``feature_info`` levels a CifarResNet built with ``kwargs`` has: the stem and three stages."""
        return 4

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = None) -> None:
        check_args('CifarResNet', 1, num_classes)
        pool = self.global_pool if global_pool is None else global_pool
        self.global_pool = check_global_pool('CifarResNet', pool, POOL_TYPES, num_classes)
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _stem(self, x: Tensor) -> Tensor:
        return self.act1(self.bn1(self.conv1(x)))

    def forward_features(self, x: Tensor) -> Tensor:
        check_input(x, self, (self.in_chans, 'H', 'W'))
        return self.layer3(self.layer2(self.layer1(self._stem(x))))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = global_pool_2d(x, self.global_pool)
        if self.drop_rate:
            x = F.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: Tensor, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = 'NCHW', intermediates_only: bool = False):
        """timm's ``forward_intermediates``: the maps of the ``feature_info`` levels picked by ``indices``
        (0 = stem, 1-3 = layer1-3; None = all, an int k = the last k) and, unless ``intermediates_only``,
        the final map (``forward_features``'s; with ``stop_early``, the last map computed). ``norm`` has
        no effect: the network has no final norm."""
        take, max_index = take_indices(self, 4, indices, output_fmt)
        check_input(x, self, (self.in_chans, 'H', 'W'))
        stages = (self.layer1, self.layer2, self.layer3)
        x = self._stem(x)
        intermediates = [x] if 0 in take else []
        for i, stage in enumerate(stages[:max_index] if stop_early else stages, 1):
            x = stage(x)
            if i in take:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True):
        """Drop the stages after the deepest level ``indices`` picks (and, with ``prune_head``, the pool and
        classifier: ``reset_classifier(0, '')``); returns the picked levels."""
        take, max_index = take_indices(self, 4, indices, 'NCHW')
        for i in range(max_index + 1, 4):
            setattr(self, f'layer{i}', nn.Identity())
        if prune_head:
            self.reset_classifier(0, '')
        return take


_DEPTHS = (8, 14, 20, 32, 44, 56, 110)


def _resnet_cfg(quadratic: bool, neuron: str = 'fan'):
    """The cfg of a CIFAR ResNet whose convolutions use ``neuron`` if ``quadratic`` (else conventional)."""
    return cfg(paper_ids=('arXiv:1512.03385', 'arXiv:2303.06316') if quadratic else 'arXiv:1512.03385',
               first_conv=layer_owners('conv1', 'conv2d', neuron if quadratic else 'linear'), pool_size=(8, 8))


def _create(variant: str, depth: int, quadratic: bool, pretrained: bool, kwargs, width: int = 16,
            widths=None, neuron: str = None) -> CifarResNet:
    """kwargs: width (or widths: three stage widths), shortcut ('B'), neuron ('fan' for the quadratic
    ones), num_classes (10), in_chans (3), drop_rate."""
    kwargs.setdefault('neuron', neuron or ('fan' if quadratic else 'linear'))
    if widths is not None and 'width' not in kwargs:
        kwargs.setdefault('widths', list(widths))
    kwargs.setdefault('width', width)
    return build(CifarResNet, variant, pretrained, depth=depth, **kwargs)


@register_factory(_resnet_cfg(False))
def resnet8(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-8, conventional (width 16, shortcut B)."""
    return _create('resnet8', 8, False, pretrained, kwargs)


@register_factory(_resnet_cfg(False))
def resnet14(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-14, conventional (width 16, shortcut B)."""
    return _create('resnet14', 14, False, pretrained, kwargs)


@register_factory(_resnet_cfg(False))
def resnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-20, conventional (width 16, shortcut B)."""
    return _create('resnet20', 20, False, pretrained, kwargs)


@register_factory(_resnet_cfg(False))
def resnet32(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-32, conventional (width 16, shortcut B)."""
    return _create('resnet32', 32, False, pretrained, kwargs)


@register_factory(_resnet_cfg(False))
def resnet44(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-44, conventional (width 16, shortcut B)."""
    return _create('resnet44', 44, False, pretrained, kwargs)


@register_factory(_resnet_cfg(False))
def resnet56(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-56, conventional (width 16, shortcut B)."""
    return _create('resnet56', 56, False, pretrained, kwargs)


@register_factory(_resnet_cfg(False))
def resnet110(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-110, conventional (width 16, shortcut B)."""
    return _create('resnet110', 110, False, pretrained, kwargs)


@register_factory(_resnet_cfg(False))
def resnet20_w8(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-20 at width 8 (stages 8-16-32), conventional."""
    return _create('resnet20_w8', 20, False, pretrained, kwargs, width=8)


@register_factory(_resnet_cfg(False))
def resnet20_w12(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-20 at width 12 (stages 12-24-48), conventional."""
    return _create('resnet20_w12', 20, False, pretrained, kwargs, width=12)


@register_factory(_resnet_cfg(False))
def resnet20_w24(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-20 at width 24 (stages 24-48-96), conventional."""
    return _create('resnet20_w24', 20, False, pretrained, kwargs, width=24)


@register_factory(_resnet_cfg(True))
def qresnet8(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-8 with quadratic 3x3 convolutions (neuron fan, width 16, shortcut B)."""
    return _create('qresnet8', 8, True, pretrained, kwargs)


@register_factory(_resnet_cfg(True))
def qresnet14(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-14 with quadratic 3x3 convolutions (neuron fan, width 16, shortcut B)."""
    return _create('qresnet14', 14, True, pretrained, kwargs)


@register_factory(_resnet_cfg(True))
def qresnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-20 with quadratic 3x3 convolutions (neuron fan, width 16, shortcut B)."""
    return _create('qresnet20', 20, True, pretrained, kwargs)


@register_factory(_resnet_cfg(True))
def qresnet32(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-32 with quadratic 3x3 convolutions (neuron fan, width 16, shortcut B)."""
    return _create('qresnet32', 32, True, pretrained, kwargs)


@register_factory(_resnet_cfg(True))
def qresnet44(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-44 with quadratic 3x3 convolutions (neuron fan, width 16, shortcut B)."""
    return _create('qresnet44', 44, True, pretrained, kwargs)


@register_factory(_resnet_cfg(True))
def qresnet56(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-56 with quadratic 3x3 convolutions (neuron fan, width 16, shortcut B)."""
    return _create('qresnet56', 56, True, pretrained, kwargs)


@register_factory(_resnet_cfg(True))
def qresnet110(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-110 with quadratic 3x3 convolutions (neuron fan, width 16, shortcut B)."""
    return _create('qresnet110', 110, True, pretrained, kwargs)


@register_factory(_resnet_cfg(True))
def qresnet20_w8(pretrained: bool = False, **kwargs) -> CifarResNet:
    """Quadratic CIFAR ResNet-20 at width 8 (stages 8-16-32)."""
    return _create('qresnet20_w8', 20, True, pretrained, kwargs, width=8)


@register_factory(_resnet_cfg(True))
def qresnet20_w12(pretrained: bool = False, **kwargs) -> CifarResNet:
    """Quadratic CIFAR ResNet-20 at width 12 (stages 12-24-48)."""
    return _create('qresnet20_w12', 20, True, pretrained, kwargs, width=12)


@register_factory(_resnet_cfg(True))
def qresnet20_w9(pretrained: bool = False, **kwargs) -> CifarResNet:
    """Quadratic CIFAR ResNet-20 at width 9 (stages 9-18-36): 257,644 parameters, the width nearest
    resnet20's 272,474."""
    return _create('qresnet20_w9', 20, True, pretrained, kwargs, width=9)


# ResNet-20 at resnet20's parameter budget (272,474, within 2%) for each neuron family
@register_factory(_resnet_cfg(True))
def qresnet20_fan_budget(pretrained: bool = False, **kwargs) -> CifarResNet:
    """Quadratic ResNet-20, neuron fan, stages 9-18-37: resnet20's parameter budget."""
    return _create('qresnet20_fan_budget', 20, True, pretrained, kwargs, widths=(9, 18, 37), neuron='fan')


@register_factory(_resnet_cfg(True, 'fan_rg'))
def qresnet20_fan_rg_budget(pretrained: bool = False, **kwargs) -> CifarResNet:
    """Quadratic ResNet-20, neuron fan_rg, stages 11-22-46: resnet20's parameter budget."""
    return _create('qresnet20_fan_rg_budget', 20, True, pretrained, kwargs, widths=(11, 22, 46), neuron='fan_rg')


@register_factory(_resnet_cfg(True, 'fan_rb'))
def qresnet20_fan_rb_budget(pretrained: bool = False, **kwargs) -> CifarResNet:
    """Quadratic ResNet-20, neuron fan_rb, stages 11-22-46: resnet20's parameter budget."""
    return _create('qresnet20_fan_rb_budget', 20, True, pretrained, kwargs, widths=(11, 22, 46), neuron='fan_rb')


@register_factory(_resnet_cfg(True, 'quadralib'))
def qresnet20_quadralib_budget(pretrained: bool = False, **kwargs) -> CifarResNet:
    """Quadratic ResNet-20, neuron quadralib, stages 9-18-37: resnet20's parameter budget."""
    return _create('qresnet20_quadralib_budget', 20, True, pretrained, kwargs, widths=(9, 18, 37),
                   neuron='quadralib')


@register_factory(_resnet_cfg(True, 'qres'))
def qresnet20_qres_budget(pretrained: bool = False, **kwargs) -> CifarResNet:
    """Quadratic ResNet-20, neuron qres, stages 11-22-46: resnet20's parameter budget."""
    return _create('qresnet20_qres_budget', 20, True, pretrained, kwargs, widths=(11, 22, 46), neuron='qres')


@register_factory(_resnet_cfg(True, 'power'))
def qresnet20_power_budget(pretrained: bool = False, **kwargs) -> CifarResNet:
    """Quadratic ResNet-20, neuron power (W (x*x) + b), stages 16-32-64: resnet20's parameter budget.
    Untrained, in eval mode, its activations overflow to inf (each layer squares them, and BatchNorm still
    has its initial statistics): train it, or set the BatchNorm statistics from data, before evaluating."""
    return _create('qresnet20_power_budget', 20, True, pretrained, kwargs, widths=(16, 32, 64), neuron='power')


@register_factory(_resnet_cfg(True, 'lowrank(rank=2)'))
def qresnet20_lowrank2_budget(pretrained: bool = False, **kwargs) -> CifarResNet:
    """Quadratic ResNet-20, neuron lowrank(rank=2), stages 9-18-37: resnet20's parameter budget."""
    return _create('qresnet20_lowrank2_budget', 20, True, pretrained, kwargs, widths=(9, 18, 37),
                   neuron='lowrank(rank=2)')
