"""Model families. Each module defines timm-style factories marked with ``@entrypoint``."""
from ._common import ENTRYPOINTS, make_layer
from .bearing import BearingCNN
from .cifar_resnet import CifarResNet
from .imagenet_resnet import QuadraticResNet
from .mlp import MLP
from .unet import UNet

__all__ = ['ENTRYPOINTS', 'make_layer', 'BearingCNN', 'CifarResNet', 'QuadraticResNet', 'MLP', 'UNet']
