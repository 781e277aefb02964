"""ImageNet-style quadratic ResNets built from timm's own ``ResNet``: every
convolution of the residual branches and the stem made quadratic (downsample
shortcuts and the classifier stay conventional, as in the CIFAR family).
Architecture only: no pretrained weights yet."""
from __future__ import annotations

from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import Tensor

from ..layers import QuadraticLayer, quadratize
from ..neurons import get_neuron
from ._common import (build, check_args, check_input, layer_owners, register_factory, set_traits, take_indices,
                      tensor_owners)

__all__ = ['QuadraticResNet']


class QuadraticResNet(ResNet):
    """timm ``ResNet`` whose convolutions (not ``downsample`` shortcuts) use ``neuron``."""

    def __init__(self, block='basic', layers=(2, 2, 2, 2), neuron='fan', **kwargs):
        block_cls = {'basic': BasicBlock, 'bottleneck': Bottleneck}.get(block)
        if block_cls is None:
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {block!r}")
        check_args('QuadraticResNet', kwargs.get('in_chans', 3), kwargs.get('num_classes', 1000),
                   **{f'layers[{i}]': n for i, n in enumerate(layers)})
        try:
            super().__init__(block=block_cls, layers=list(layers), **kwargs)
        except AssertionError as e:  # timm's argument checks
            raise ValueError(f'QuadraticResNet: {e}') from None
        fam = get_neuron(neuron)
        self.neuron = fam.spec
        if fam.name != 'linear':
            quadratize(self, fam, exclude=('fc', '*downsample*'))
            for m in self.modules():  # ReLinear start for training from scratch
                if isinstance(m, QuadraticLayer):
                    m.reset_quadratic_('relinear')
        self.in_chans = kwargs.get('in_chans', 3)
        set_traits(self, tensor_owners('conv1', self.conv1))

    def forward_features(self, x: Tensor) -> Tensor:
        check_input(x, self, (self.in_chans, 'H', 'W'))
        return super().forward_features(x)

    def forward_intermediates(self, x: Tensor, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = 'NCHW', intermediates_only: bool = False):
        """timm ResNet's ``forward_intermediates``, after qzoo's checks of the arguments and the input
        (ValueError / TypeError instead of timm's AssertionError)."""
        take_indices(self, len(self.feature_info), indices, output_fmt)
        check_input(x, self, (self.in_chans, 'H', 'W'))
        return super().forward_intermediates(x, indices, norm, stop_early, output_fmt, intermediates_only)


def _cfg(first_conv):
    return dict(num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), fixed_input_size=False,
                crop_pct=0.875, interpolation='bilinear', mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                first_conv=first_conv, classifier='fc', license='apache-2.0',
                paper_ids=('arXiv:1512.03385', 'arXiv:2303.06316'))


_FAN_STEM = layer_owners('conv1', 'conv2d', 'fan')


@register_factory(_cfg(_FAN_STEM))
def qresnet18(pretrained: bool = False, **kwargs) -> QuadraticResNet:
    """ResNet-18 (timm's) with quadratic convolutions. kwargs: layers ([2, 2, 2, 2]), neuron ('fan'),
    num_classes, in_chans and timm ResNet's other options."""
    kwargs.setdefault('layers', (2, 2, 2, 2))
    return build(QuadraticResNet, 'qresnet18', pretrained, block='basic', **kwargs)


@register_factory(_cfg(_FAN_STEM))
def qresnet50(pretrained: bool = False, **kwargs) -> QuadraticResNet:
    """ResNet-50 (timm's) with quadratic convolutions. kwargs: layers ([3, 4, 6, 3]), neuron ('fan'), ..."""
    kwargs.setdefault('layers', (3, 4, 6, 3))
    return build(QuadraticResNet, 'qresnet50', pretrained, block='bottleneck', **kwargs)
