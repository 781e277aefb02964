"""1-D CNNs for bearing fault diagnosis on raw vibration windows (1 x 2048).

* ``wdcnn``: WDCNN, Zhang et al., "A new deep learning model for fault diagnosis with good
  anti-noise and domain adaptation ability on raw vibration signals", Sensors 2017: a wide
  first kernel (64, stride 8) then five 3-tap convolutions, channels 16-32-64-64-64-64,
  FC 100 (66,790 parameters).
* ``qcnn``: QCNN, Liao et al., "Attention-embedded quadratic network (Qttention) for effective
  and interpretable bearing fault diagnosis", IEEE TIM 2023, in the seed's slim form: the same
  layout with every convolution quadratic, 16 channels throughout, FC 20 (16,262 parameters).

Both take ``width`` (channels of the first convolution; later ones keep the design's ratios)
and ``neuron`` (of the convolutions; fully connected layers stay conventional).
"""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..neurons import NeuronSpec, get_neuron
from ._common import build, cfg, check_args, check_input, make_layer, register_factory, set_traits, tensor_owners

__all__ = ['BearingCNN']


class BearingCNN(nn.Module):
    """Six conv-BN-ReLU-maxpool stages (kernel 64/stride 8/pad 28, then 3/1/1 x4 and 3/1/0),
    flatten, FC ``hidden``, ReLU, dropout, FC ``num_classes``."""

    def __init__(self, channels: Sequence[int] = (16, 32, 64, 64, 64, 64), hidden: int = 100,
                 num_classes: int = 10, in_chans: int = 1, input_length: int = 2048,
                 neuron: NeuronSpec = 'linear', drop_rate: float = 0.5):
        super().__init__()
        channels = list(channels)
        if len(channels) != 6:
            raise ValueError(f'channels must list 6 widths, got {channels}')
        check_args('BearingCNN', in_chans, num_classes, hidden=hidden, input_length=input_length,
                   **{f'channels[{i}]': c for i, c in enumerate(channels)})
        fam = get_neuron(neuron)
        self.channels, self.hidden, self.neuron = channels, hidden, fam.spec
        self.num_classes, self.in_chans, self.input_length, self.drop_rate = num_classes, in_chans, input_length, drop_rate
        stages, prev, length = [], in_chans, input_length
        for i, ch in enumerate(channels):
            k, s, p = (64, 8, 28) if i == 0 else (3, 1, 0 if i == 5 else 1)
            length = (length + 2 * p - k) // s + 1
            length //= 2
            stages.append(nn.Sequential(
                make_layer('conv1d', prev, ch, k, stride=s, padding=p, bias=True, neuron=fam),
                nn.BatchNorm1d(ch), nn.ReLU(inplace=True), nn.MaxPool1d(2, 2)))
            prev = ch
        if length < 1:
            raise ValueError(f'input_length {input_length} is too short for this network (need >= 512)')
        self.features = nn.Sequential(*stages)
        self.num_features = prev * length
        self.fc1 = nn.Linear(self.num_features, hidden)
        self.head_hidden_size = hidden
        self.fc2 = nn.Linear(hidden, num_classes) if num_classes > 0 else nn.Identity()
        set_traits(self, tensor_owners('features.0.0', self.features[0][0]))

    def get_classifier(self) -> nn.Module:
        return self.fc2

    def reset_classifier(self, num_classes: int, global_pool=None) -> None:
        self.num_classes = num_classes
        self.fc2 = nn.Linear(self.hidden, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        check_input(x, self, (self.in_chans, self.input_length))
        return self.features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.fc2(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _bearing_cfg(quadratic: bool):
    first = 'features.0.0'
    return cfg(num_classes=10, input_size=(1, 1, 2048), mean=(0.0,), std=(1.0,), interpolation='',
               first_conv=tuple(f'{first}.conv_{t}' for t in 'rgb') if quadratic else first, classifier='fc2',
               paper_ids='arXiv:2303.06316',
               notes=('input_size is (channels, 1, length): the model takes (N, 1, 2048) vibration windows',))


def _wdcnn(variant: str, pretrained: bool, kwargs, width: int = 16) -> BearingCNN:
    """kwargs: width (channels of the first convolution; later ones 2x, then 4x), hidden (100), neuron
    ('linear'), num_classes (10), in_chans (1), input_length (2048)."""
    width = kwargs.pop('width', width)
    kwargs.setdefault('neuron', 'linear')
    kwargs.setdefault('hidden', 100)
    check_args(variant, 1, 0, width=width)
    return build(BearingCNN, variant, pretrained, channels=[width, 2 * width] + [4 * width] * 4, **kwargs)


def _qcnn(variant: str, pretrained: bool, kwargs, width: int = 16) -> BearingCNN:
    """kwargs: width (channels of every convolution), hidden (20), neuron ('fan'), num_classes (10),
    in_chans (1), input_length (2048)."""
    width = kwargs.pop('width', width)
    kwargs.setdefault('neuron', 'fan')
    kwargs.setdefault('hidden', 20)
    check_args(variant, 1, 0, width=width)
    return build(BearingCNN, variant, pretrained, channels=[width] * 6, **kwargs)


@register_factory(_bearing_cfg(False))
def wdcnn(pretrained: bool = False, **kwargs) -> BearingCNN:
    """WDCNN (Zhang et al. 2017), channels 16-32-64-64-64-64, FC 100: 66,790 parameters."""
    return _wdcnn('wdcnn', pretrained, kwargs)


@register_factory(_bearing_cfg(False))
def wdcnn_w4(pretrained: bool = False, **kwargs) -> BearingCNN:
    """WDCNN at width 4 (channels 4-8-16-16-16-16, FC 100): 9,178 parameters."""
    return _wdcnn('wdcnn_w4', pretrained, kwargs, width=4)


@register_factory(_bearing_cfg(False))
def wdcnn_w8(pretrained: bool = False, **kwargs) -> BearingCNN:
    """WDCNN at width 8 (channels 8-16-32-32-32-32, FC 100): 22,814 parameters."""
    return _wdcnn('wdcnn_w8', pretrained, kwargs, width=8)


@register_factory(_bearing_cfg(True))
def qcnn(pretrained: bool = False, **kwargs) -> BearingCNN:
    """Slim quadratic QCNN (Liao et al. 2023, as in the paper's code): 16 channels throughout, FC 20: 16,262
    parameters."""
    return _qcnn('qcnn', pretrained, kwargs)


@register_factory(_bearing_cfg(True))
def qcnn_w8(pretrained: bool = False, **kwargs) -> BearingCNN:
    """QCNN at width 8 (8 channels throughout, FC 20): 5,366 parameters."""
    return _qcnn('qcnn_w8', pretrained, kwargs, width=8)


@register_factory(_bearing_cfg(True))
def qcnn_w32(pretrained: bool = False, **kwargs) -> BearingCNN:
    """QCNN at width 32 (32 channels throughout, FC 20): 55,334 parameters."""
    return _qcnn('qcnn_w32', pretrained, kwargs, width=32)
