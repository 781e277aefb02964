"""Model families on the quadratic layers. Each module writes out its factories (one function per
registered name, marked with ``@register_factory``); :mod:`qzoo.registry` registers them with timm."""
from ._common import BASE_CFGS, MODEL_FACTORIES, RUNTIME_KWARGS, make_layer
from .bearing import BearingCNN
from .cifar_resnet import CifarResNet
from .imagenet_resnet import QuadraticResNet
from .mlp import MLP
from .unet import UNet

__all__ = ['MODEL_FACTORIES', 'BASE_CFGS', 'RUNTIME_KWARGS', 'make_layer', 'BearingCNN', 'CifarResNet',
           'QuadraticResNet', 'MLP', 'UNet']
