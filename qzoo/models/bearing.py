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

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..neurons import NeuronSpec, get_neuron
from ._common import (build, cfg, check_args, check_global_pool, check_input, drop_height, layer_owners, like_input,
                      make_layer, register_factory, set_traits, take_indices, tensor_owners)

__all__ = ['BearingCNN']


class BearingCNN(nn.Module):
    """Six conv-BN-ReLU-maxpool stages (kernel 64/stride 8/pad 28, then 3/1/1 x4 and 3/1/0),
    flatten, FC ``hidden``, ReLU, dropout, FC ``num_classes``.

    Takes ``(N, in_chans, input_length)`` windows, or timm's image layout ``(N, in_chans, 1, input_length)``
    (what ``pretrained_cfg['input_size']`` = ``(in_chans, 1, input_length)`` describes); every map it returns
    (``forward_features``, ``forward_intermediates``, ``features_only``) keeps the input's layout.
    ``global_pool``: ``'flatten'`` (the design: the FC head reads the flattened final map) or ``''``
    (no head at all: ``forward`` returns the final map; needs ``num_classes=0``)."""

    def __init__(self, channels: Sequence[int] = (16, 32, 64, 64, 64, 64), hidden: int = 100,
                 num_classes: int = 10, in_chans: int = 1, input_length: Optional[int] = None,
                 neuron: NeuronSpec = 'linear', drop_rate: float = 0.5, global_pool: str = 'flatten',
                 img_size: Optional[Sequence[int]] = None):
        super().__init__()
        input_length = _input_length(input_length, img_size)
        channels = list(channels)
        if len(channels) != 6:
            raise ValueError(f'channels must list 6 widths, got {channels}')
        check_args('BearingCNN', in_chans, num_classes, hidden=hidden, input_length=input_length,
                   **{f'channels[{i}]': c for i, c in enumerate(channels)})
        self.global_pool = check_global_pool('BearingCNN', global_pool, _POOLS, num_classes, _POOL_WHY)
        fam = get_neuron(neuron)
        self.channels, self.hidden, self.neuron = channels, hidden, fam.spec
        self.num_classes, self.in_chans, self.input_length = num_classes, in_chans, input_length
        self.drop_rate = drop_rate
        stages, prev, reduction, self.feature_info = [], in_chans, 1, []
        length = _lengths(input_length)[-1]
        for i, (ch, (k, s, p)) in enumerate(zip(channels, _GEOMETRY)):
            reduction *= 2 * s
            stages.append(nn.Sequential(
                make_layer('conv1d', prev, ch, k, stride=s, padding=p, bias=True, neuron=fam),
                nn.BatchNorm1d(ch), nn.ReLU(inplace=True), nn.MaxPool1d(2, 2)))
            self.feature_info.append(dict(num_chs=ch, reduction=reduction, module=f'features.{i}'))
            prev = ch
        if length < 1:
            raise ValueError(f'input_length {input_length} is too short for this network (need >= 512)')
        self.features = nn.Sequential(*stages)
        #: timm's num_features: the final map's channels; fc1 reads the map flattened (flat_features values)
        self.num_features, self.final_length, self.flat_features = prev, length, prev * length
        self.fc1 = nn.Linear(self.flat_features, hidden) if self.global_pool else None
        self.head_hidden_size = hidden if self.global_pool else prev
        self.fc2 = nn.Linear(hidden, num_classes) if num_classes > 0 else nn.Identity()
        set_traits(self, tensor_owners('features.0.0', self.features[0][0]))

    @staticmethod
    def feature_levels(kwargs) -> int:
        """How many ``feature_info`` levels a BearingCNN has: its six conv stages."""
        return 6

    @staticmethod
    def cfg_overlay(kwargs) -> Dict[str, Any]:
        """What the model ``kwargs`` build changes in its timm cfg: for a window length other than the
        cfg's 2048, ``input_size`` (1, 1, length) and ``pool_size`` (1, final map length), the sizes that
        instance takes and returns (published weights fit 2048 only: fc1 reads the flattened final map)."""
        length = _input_length(kwargs.get('input_length'), kwargs.get('img_size'))
        final = _lengths(length)[-1]
        if length == _LENGTH or final < 1:  # the cfg's own; too short a window is refused by the constructor
            return {}
        return dict(input_size=(1, 1, length), pool_size=(1, final))

    @staticmethod
    def img_size_of(kwargs) -> Optional[Tuple[int, int]]:
        """timm's ``img_size`` for the model ``kwargs`` build: ``(1, input_length)`` when it is given."""
        return (1, kwargs['input_length']) if kwargs.get('input_length') is not None else None

    def get_classifier(self) -> nn.Module:
        return self.fc2

    def reset_classifier(self, num_classes: int, global_pool: str = None) -> None:
        """New ``fc2`` for ``num_classes`` (0: none). ``global_pool=''`` also drops ``fc1`` (``forward`` then
        returns the final map); ``'flatten'`` after ``''`` builds a new ``fc1``."""
        check_args('BearingCNN', 1, num_classes)
        pool = self.global_pool if global_pool is None else global_pool
        self.global_pool = check_global_pool('BearingCNN', pool, _POOLS, num_classes, _POOL_WHY)
        if not self.global_pool:
            self.fc1 = None
        elif self.fc1 is None:
            self.fc1 = nn.Linear(self.flat_features, self.hidden)
        self.head_hidden_size = self.hidden if self.global_pool else self.num_features
        self.num_classes = num_classes
        self.fc2 = nn.Linear(self.hidden, num_classes) if num_classes > 0 else nn.Identity()

    def _check(self, x: Tensor) -> None:
        check_input(x, self, (self.in_chans, self.input_length), (self.in_chans, 1, self.input_length))

    def forward_features(self, x: Tensor) -> Tensor:
        self._check(x)
        return like_input(self.features(drop_height(x)), x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if not self.global_pool:
            return x
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.fc2(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: Tensor, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = 'NCHW', intermediates_only: bool = False):
        """timm's ``forward_intermediates``: the outputs of the conv stages ``indices`` picks (None = all,
        an int k = the last k, a list of 0-5) in the input's layout and, unless ``intermediates_only``, the
        final map (``forward_features``'s; with ``stop_early``, the last map computed). ``output_fmt``:
        'NCHW' or 'NCL' (both channels first); ``norm`` has no effect (no final norm)."""
        take, max_index = take_indices(self, len(self.features), indices, output_fmt, ('NCHW', 'NCL'))
        self._check(x)
        h, intermediates = drop_height(x), []
        stages = self.features[:max_index + 1] if stop_early else self.features
        for i, stage in enumerate(stages):
            h = stage(h)
            if i in take:
                intermediates.append(like_input(h, x))
        return intermediates if intermediates_only else (like_input(h, x), intermediates)

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True):
        """Drop the stages after the deepest level ``indices`` picks (and, with ``prune_head``, the FC head:
        ``reset_classifier(0, '')``); returns the picked levels."""
        take, max_index = take_indices(self, len(self.features), indices, 'NCHW')
        self.features = self.features[:max_index + 1]
        if prune_head:
            self.reset_classifier(0, '')
        return take


def _input_length(input_length: Optional[int], img_size) -> int:
    """The window length from ``input_length`` or timm's ``img_size`` = ``(1, length)`` (2048 if neither)."""
    if img_size is not None:
        size = tuple(img_size) if isinstance(img_size, (tuple, list)) else None
        if size is None or len(size) != 2 or size[0] != 1:
            raise ValueError(f'BearingCNN: img_size must be (1, length) (input_size is (channels, 1, length)), '
                             f'got {img_size!r}; or give input_length=')
        if input_length is not None and input_length != size[1]:
            raise ValueError(f'BearingCNN: input_length={input_length} and img_size={img_size!r} disagree; give one')
        return size[1]
    return _LENGTH if input_length is None else input_length


#: the window length of the registered cfgs (CWRU windows)
_LENGTH = 2048
#: (kernel, stride, padding) of the six conv stages; each is followed by a 2-to-1 max pool
_GEOMETRY = ((64, 8, 28),) + ((3, 1, 1),) * 4 + ((3, 1, 0),)


def _lengths(input_length: int) -> List[int]:
    """The length of the map after each stage for windows of ``input_length`` samples."""
    lengths, length = [], input_length
    for k, s, p in _GEOMETRY:
        length = ((length + 2 * p - k) // s + 1) // 2
        lengths.append(length)
    return lengths


_POOLS = ('flatten', '')
_POOL_WHY = (" ('flatten': the FC head reads the flattened final map, as designed; '': no head, forward returns "
             "the final map)")
# the layout adapters run at run time in torch.fx graphs (they branch on the input's rank)
torch.fx.wrap('drop_height')
torch.fx.wrap('like_input')


def _bearing_cfg(quadratic: bool):
    neuron = 'fan' if quadratic else 'linear'
    return cfg(num_classes=10, input_size=(1, 1, _LENGTH), pool_size=(1, _lengths(_LENGTH)[-1]),
               fixed_input_size=True, mean=(0.0,), std=(1.0,), interpolation='',
               first_conv=layer_owners('features.0.0', 'conv1d', neuron), classifier='fc2',
               paper_ids='arXiv:2303.06316',
               notes=('input_size is (channels, 1, length): the model takes (N, 1, 2048) vibration windows, or '
                      '(N, 1, 1, 2048) as timm builds them from input_size',))


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
