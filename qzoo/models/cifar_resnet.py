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
from ._common import build, cfg, check_args, check_input, kaiming_init_, make_layer, register_factory, set_traits, tensor_owners

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
    neuron of the 3x3 convolutions ('linear' = conventional)."""

    def __init__(self, depth: int = 20, width: int = 16, num_classes: int = 10, in_chans: int = 3,
                 neuron: NeuronSpec = 'linear', shortcut: str = 'B', drop_rate: float = 0.0,
                 global_pool: str = 'avg', widths: Optional[Sequence[int]] = None):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f'CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...), '
                             f'got {depth}')
        if shortcut not in ('A', 'B'):
            raise ValueError(f"shortcut must be 'A' (zero-pad) or 'B' (1x1 conv + BN), got {shortcut!r}")
        if global_pool != 'avg':
            raise ValueError(f"CIFAR ResNets support global_pool='avg' only, got {global_pool!r}")
        check_args('CifarResNet', in_chans, num_classes, width=width)
        widths = [width, 2 * width, 4 * width] if widths is None else list(widths)
        if len(widths) != 3:
            raise ValueError(f'widths must list 3 stage widths, got {widths}')
        check_args('CifarResNet', in_chans, num_classes, **{f'widths[{i}]': w for i, w in enumerate(widths)})
        n = (depth - 2) // 6
        fam = get_neuron(neuron)
        quad = fam.name != 'linear'
        self.depth, self.widths, self.shortcut_type, self.neuron = depth, widths, shortcut, fam.spec
        self.num_classes, self.in_chans, self.drop_rate, self.global_pool = num_classes, in_chans, drop_rate, 'avg'
        self.conv1 = make_layer('conv2d', in_chans, widths[0], 3, padding=1, bias=quad, neuron=fam)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, in_ch = [], widths[0]
        for i, out_ch in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_ch, out_ch, 2 if (i > 0 and j == 0) else 1, shortcut, fam))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.num_features = self.head_hidden_size = widths[2]
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        kaiming_init_(self)
        set_traits(self, tensor_owners('conv1', self.conv1))

    # ---- timm model interface -------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = None) -> None:
        if global_pool not in (None, 'avg'):
            raise ValueError(f"CIFAR ResNets support global_pool='avg' only, got {global_pool!r}")
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        check_input(x, self, (self.in_chans, 'H', 'W'))
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x.mean((2, 3))
        if self.drop_rate:
            x = F.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


_DEPTHS = (8, 14, 20, 32, 44, 56, 110)


def _resnet_cfg(quadratic: bool):
    return cfg(paper_ids=('arXiv:1512.03385', 'arXiv:2303.06316') if quadratic else 'arXiv:1512.03385',
               first_conv=('conv1.conv_r', 'conv1.conv_g', 'conv1.conv_b') if quadratic else 'conv1',
               pool_size=(8, 8))


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


@register_factory(_resnet_cfg(True))
def qresnet20_fan_rg_budget(pretrained: bool = False, **kwargs) -> CifarResNet:
    """Quadratic ResNet-20, neuron fan_rg, stages 11-22-46: resnet20's parameter budget."""
    return _create('qresnet20_fan_rg_budget', 20, True, pretrained, kwargs, widths=(11, 22, 46), neuron='fan_rg')


@register_factory(_resnet_cfg(True))
def qresnet20_fan_rb_budget(pretrained: bool = False, **kwargs) -> CifarResNet:
    """Quadratic ResNet-20, neuron fan_rb, stages 11-22-46: resnet20's parameter budget."""
    return _create('qresnet20_fan_rb_budget', 20, True, pretrained, kwargs, widths=(11, 22, 46), neuron='fan_rb')


@register_factory(_resnet_cfg(True))
def qresnet20_quadralib_budget(pretrained: bool = False, **kwargs) -> CifarResNet:
    """Quadratic ResNet-20, neuron quadralib, stages 9-18-37: resnet20's parameter budget."""
    return _create('qresnet20_quadralib_budget', 20, True, pretrained, kwargs, widths=(9, 18, 37),
                   neuron='quadralib')


@register_factory(_resnet_cfg(True))
def qresnet20_qres_budget(pretrained: bool = False, **kwargs) -> CifarResNet:
    """Quadratic ResNet-20, neuron qres, stages 11-22-46: resnet20's parameter budget."""
    return _create('qresnet20_qres_budget', 20, True, pretrained, kwargs, widths=(11, 22, 46), neuron='qres')


@register_factory(_resnet_cfg(True))
def qresnet20_power_budget(pretrained: bool = False, **kwargs) -> CifarResNet:
    """Quadratic ResNet-20, neuron power (W (x*x) + b), stages 16-32-64: resnet20's parameter budget."""
    return _create('qresnet20_power_budget', 20, True, pretrained, kwargs, widths=(16, 32, 64), neuron='power')


@register_factory(_resnet_cfg(True))
def qresnet20_lowrank2_budget(pretrained: bool = False, **kwargs) -> CifarResNet:
    """Quadratic ResNet-20, neuron lowrank(rank=2), stages 9-18-37: resnet20's parameter budget."""
    return _create('qresnet20_lowrank2_budget', 20, True, pretrained, kwargs, widths=(9, 18, 37),
                   neuron='lowrank(rank=2)')
