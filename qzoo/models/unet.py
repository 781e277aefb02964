"""U-Nets for binary / multi-class segmentation.

* ``unet``: the common layout (Ronneberger et al. 2015, as in milesial/Pytorch-UNet without
  bilinear upsampling): ``depth`` max-pool downs, transposed-conv ups, two 3x3 conv-BN-ReLU per
  level, channels ``base_width * 2**i``; 31,037,698 parameters for 3->2 classes at base 64, depth 4.
* ``qunet``: the seed's quadratic U-Net: the same layout with depth 3, base 32 and every
  convolution (3x3, transposed and the 1x1 output) quadratic with biases; 5,779,619 parameters
  for 3->1 at base 32.

Outputs are logits (``num_classes`` channels, at the input resolution).
"""
from __future__ import annotations

from typing import List

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..neurons import NeuronSpec, get_neuron
from ._common import (HeadMixin, build, cfg, check_args, check_global_pool, check_input, layer_owners, make_layer,
                      register_factory, set_traits, take_indices, tensor_owners)

__all__ = ['UNet']


class DoubleConv(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int, neuron):
        quad = neuron.name != 'linear'
        super().__init__(
            make_layer('conv2d', in_ch, out_ch, 3, padding=1, bias=quad, neuron=neuron),
            nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
            make_layer('conv2d', out_ch, out_ch, 3, padding=1, bias=quad, neuron=neuron),
            nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class Up(nn.Module):
    """Transposed-conv x2 upsampling of the deeper map, pad to the skip's size, concat, DoubleConv."""

    def __init__(self, in_ch: int, out_ch: int, neuron):
        super().__init__()
        self.up = make_layer('convt2d', in_ch, in_ch // 2, 2, stride=2, bias=True, neuron=neuron)
        self.conv = DoubleConv(in_ch // 2 + out_ch, out_ch, neuron)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat([skip, pad_to(self.up(x), skip)], dim=1))


def pad_to(x: Tensor, skip: Tensor) -> Tensor:
    """``x`` zero-padded (evenly, extra on the far side) to the height and width of ``skip``. A torch.fx
    leaf (below): the sizes it compares are only known at run time."""
    dy, dx = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
    if torch.jit.is_tracing() or dy or dx:  # a jit trace records the pads from the sizes, for any input size
        x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
    return x


torch.fx.wrap('pad_to')


class UNet(HeadMixin, nn.Module):
    """U-Net of ``depth`` down/up levels, channels ``base_width * 2**i``. Takes ``(N, in_chans, H, W)``
    with H, W >= ``2**depth`` (any size: the decoder pads to each skip's size); returns per-pixel logits
    ``(N, num_classes, H, W)``. ``forward_features`` is the decoder's full-resolution map; ``feature_info``
    / ``forward_intermediates`` / ``features_only`` give the encoder levels (``inc`` and each ``downs[i]``).
    ``global_pool`` can only be ``''``: nothing is pooled."""

    def __init__(self, base_width: int = 64, depth: int = 4, num_classes: int = 1, in_chans: int = 3,
                 neuron: NeuronSpec = 'linear', global_pool: str = ''):
        super().__init__()
        check_args('UNet', in_chans, num_classes, base_width=base_width, depth=depth)
        self.global_pool = self._check_pool(global_pool, num_classes)
        fam = get_neuron(neuron)
        self.base_width, self.depth, self.neuron = base_width, depth, fam.spec
        self.num_classes, self.in_chans = num_classes, in_chans
        widths = [base_width * 2 ** i for i in range(depth + 1)]
        self.inc = DoubleConv(in_chans, widths[0], fam)
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), DoubleConv(widths[i], widths[i + 1], fam)) for i in range(depth))
        self.ups = nn.ModuleList(Up(widths[i + 1], widths[i], fam) for i in reversed(range(depth)))
        self.feature_info = [dict(num_chs=w, reduction=2 ** i, module='inc' if i == 0 else f'downs.{i - 1}')
                             for i, w in enumerate(widths)]
        self.decoder_pruned = False
        self.num_features = self.head_hidden_size = base_width
        self.head = self._make_head(num_classes)
        set_traits(self, tensor_owners('inc.0', self.inc[0]))

    @staticmethod
    def feature_levels(kwargs) -> int:
        """How many ``feature_info`` levels a UNet built with ``kwargs`` has: ``inc`` and ``depth`` downs."""
        return kwargs.get('depth', 4) + 1

    def _check_pool(self, global_pool: str, num_classes: int) -> str:
        return check_global_pool('UNet', global_pool, ('',), num_classes,
                                 ' (a U-Net predicts a map at the input resolution: its 1x1 head reads the '
                                 'unpooled (N, C, H, W) features)', head_reads_maps=True)

    def _make_head(self, num_classes: int) -> nn.Module:
        return make_layer('conv2d', self.base_width, num_classes, 1, bias=True, neuron=self.neuron) \
            if num_classes > 0 else nn.Identity()

    def _check(self, x: Tensor) -> None:
        check_input(x, self, (self.in_chans, 'H', 'W'), min_size=2 ** len(self.downs))

    def _encode(self, x: Tensor, levels: int) -> List[Tensor]:
        skips = [self.inc(x)]
        for down in self.downs[:levels]:
            skips.append(down(skips[-1]))
        return skips

    def _decode(self, skips: List[Tensor]) -> Tensor:
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return x

    def forward_features(self, x: Tensor) -> Tensor:
        """Decoder output at full resolution, ``base_width`` channels."""
        if self.decoder_pruned:
            raise ValueError('UNet: this U-Net was pruned to its encoder (prune_intermediate_layers, as timm\'s '
                             'features_only does); use forward_intermediates(x, intermediates_only=True)')
        self._check(x)
        return self._decode(self._encode(x, self.depth))

    def forward_intermediates(self, x: Tensor, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = 'NCHW', intermediates_only: bool = False):
        """timm's ``forward_intermediates`` over the encoder levels (0 = ``inc``, i = ``downs[i - 1]``; None =
        all, an int k = the last k) and, unless ``intermediates_only``, the final map: the decoder's output
        (``forward_features``'s), or with ``stop_early`` or a pruned decoder the deepest encoder map
        computed. ``norm`` has no effect (no final norm)."""
        take, max_index = take_indices(self, self.depth + 1, indices, output_fmt)
        self._check(x)
        levels = self._encode(x, max_index if stop_early else len(self.downs))
        intermediates = [levels[i] for i in take]
        if intermediates_only:
            return intermediates
        decode = not stop_early and not self.decoder_pruned
        return (self._decode(levels) if decode else levels[-1]), intermediates

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True):
        """Drop the encoder levels after the deepest one ``indices`` picks; with ``prune_head``, or when
        encoder levels go, also the decoder and the 1x1 head (``forward_features`` then refuses: use
        ``forward_intermediates``). Returns the picked levels."""
        take, max_index = take_indices(self, self.depth + 1, indices, 'NCHW')
        self.downs = self.downs[:max_index]
        if prune_head or max_index < self.depth:
            self.ups, self.decoder_pruned = nn.ModuleList(), True
            self.reset_classifier(0, '')
        return take


def _unet_cfg(quadratic: bool, depth: int = None):
    """The cfg of a U-Net family member (depth: 3 for the quadratic ones, 4 for the others)."""
    side = 2 ** (depth or (3 if quadratic else 4))
    return cfg(num_classes=1, input_size=(3, 96, 96), pool_size=(96, 96), min_input_size=(3, side, side),
               mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
               first_conv=layer_owners('inc.0', 'conv2d', 'fan' if quadratic else 'linear'),
               classifier=layer_owners('head', 'conv2d', 'fan' if quadratic else 'linear'),
               paper_ids=('arXiv:1505.04597', 'arXiv:2303.06316') if quadratic else 'arXiv:1505.04597')


def _create(variant: str, quadratic: bool, pretrained: bool, kwargs, base_width: int, depth: int) -> UNet:
    """kwargs: base_width, depth, num_classes (1), in_chans (3), neuron ('fan' for qunet, 'linear' for unet)."""
    kwargs.setdefault('neuron', 'fan' if quadratic else 'linear')
    kwargs.setdefault('base_width', base_width)
    kwargs.setdefault('depth', depth)
    return build(UNet, variant, pretrained, **kwargs)


@register_factory(_unet_cfg(False))
def unet(pretrained: bool = False, **kwargs) -> UNet:
    """U-Net (Ronneberger et al. 2015): base width 64, depth 4 (31,037,698 parameters for 3 -> 2 classes)."""
    return _create('unet', False, pretrained, kwargs, 64, 4)


@register_factory(_unet_cfg(True))
def qunet(pretrained: bool = False, **kwargs) -> UNet:
    """The paper's quadratic U-Net: base width 32, depth 3, every convolution quadratic (neuron fan)."""
    return _create('qunet', True, pretrained, kwargs, 32, 3)



@register_factory(_unet_cfg(False))
def unet_b4(pretrained: bool = False, **kwargs) -> UNet:
    """U-Net at base width 4, depth 4."""
    return _create('unet_b4', False, pretrained, kwargs, 4, 4)



@register_factory(_unet_cfg(False))
def unet_b8(pretrained: bool = False, **kwargs) -> UNet:
    """U-Net at base width 8, depth 4."""
    return _create('unet_b8', False, pretrained, kwargs, 8, 4)



@register_factory(_unet_cfg(False))
def unet_b16(pretrained: bool = False, **kwargs) -> UNet:
    """U-Net at base width 16, depth 4."""
    return _create('unet_b16', False, pretrained, kwargs, 16, 4)



@register_factory(_unet_cfg(True))
def qunet_b4(pretrained: bool = False, **kwargs) -> UNet:
    """Quadratic U-Net at base width 4, depth 3."""
    return _create('qunet_b4', True, pretrained, kwargs, 4, 3)



@register_factory(_unet_cfg(True))
def qunet_b8(pretrained: bool = False, **kwargs) -> UNet:
    """Quadratic U-Net at base width 8, depth 3."""
    return _create('qunet_b8', True, pretrained, kwargs, 8, 3)



@register_factory(_unet_cfg(True))
def qunet_b16(pretrained: bool = False, **kwargs) -> UNet:
    """Quadratic U-Net at base width 16, depth 3."""
    return _create('qunet_b16', True, pretrained, kwargs, 16, 3)


@register_factory(_unet_cfg(False))
def unet_b32(pretrained: bool = False, **kwargs) -> UNet:
    """U-Net at base width 32, depth 4."""
    return _create('unet_b32', False, pretrained, kwargs, 32, 4)

