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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..neurons import NeuronSpec, get_neuron
from ._common import HeadMixin, build, cfg, check_args, check_input, make_layer, register_factory, set_traits, tensor_owners

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
        x = self.up(x)
        dy, dx = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
        if dy or dx:
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(HeadMixin, nn.Module):
    def __init__(self, base_width: int = 64, depth: int = 4, num_classes: int = 1, in_chans: int = 3,
                 neuron: NeuronSpec = 'linear'):
        super().__init__()
        check_args('UNet', in_chans, num_classes, base_width=base_width, depth=depth)
        fam = get_neuron(neuron)
        self.base_width, self.depth, self.neuron = base_width, depth, fam.spec
        self.num_classes, self.in_chans = num_classes, in_chans
        widths = [base_width * 2 ** i for i in range(depth + 1)]
        self.inc = DoubleConv(in_chans, widths[0], fam)
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), DoubleConv(widths[i], widths[i + 1], fam)) for i in range(depth))
        self.ups = nn.ModuleList(Up(widths[i + 1], widths[i], fam) for i in reversed(range(depth)))
        self.num_features = self.head_hidden_size = base_width
        self.head = self._make_head(num_classes)
        set_traits(self, tensor_owners('inc.0', self.inc[0]))

    def _make_head(self, num_classes: int) -> nn.Module:
        return make_layer('conv2d', self.base_width, num_classes, 1, bias=True, neuron=self.neuron) \
            if num_classes > 0 else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        """Decoder output at full resolution, ``base_width`` channels."""
        check_input(x, self, (self.in_chans, 'H', 'W'))
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return x



def _unet_cfg(quadratic: bool):
    return cfg(num_classes=1, input_size=(3, 96, 96), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
               first_conv=tuple(f'inc.0.conv_{t}' for t in 'rgb') if quadratic else 'inc.0',
               classifier=tuple(f'head.conv_{t}' for t in 'rgb') if quadratic else 'head',
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
