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
from ._common import build, with_published, cfg, check_args, check_input, entrypoint, kaiming_init_, make_layer, set_traits, tensor_owners

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
               first_conv=('conv1.conv_r', 'conv1.conv_g', 'conv1.conv_b') if quadratic else 'conv1')


default_cfgs = with_published({f'{q}resnet{d}': _resnet_cfg(bool(q)) for d in _DEPTHS for q in ('', 'q')})


def _create(depth: int, quadratic: bool, pretrained: bool, kwargs) -> CifarResNet:
    kwargs.setdefault('neuron', 'fan' if quadratic else 'linear')
    return build(CifarResNet, f"{'q' if quadratic else ''}resnet{depth}", pretrained, depth=depth, **kwargs)


def _factory(depth: int, quadratic: bool):
    kind = 'quadratic (neuron fan by default)' if quadratic else 'conventional'

    def fn(pretrained: bool = False, **kwargs) -> CifarResNet:
        return _create(depth, quadratic, pretrained, kwargs)
    fn.__name__ = fn.__qualname__ = f"{'q' if quadratic else ''}resnet{depth}"
    fn.__module__ = __name__
    fn.__doc__ = (f'CIFAR ResNet-{depth}, {kind}. kwargs: width (16) or widths (3 stage widths), '
                  f'shortcut (\'B\'), neuron, num_classes (10), in_chans (3), drop_rate.')
    return fn


for _d in _DEPTHS:
    for _q in (False, True):
        _fn = _factory(_d, _q)
        globals()[_fn.__name__] = entrypoint(_fn)
