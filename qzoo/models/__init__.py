"""Model families on the quadratic layers. Each module writes out its factories (one function per
registered name, marked with ``@register_factory``); :mod:`qzoo.registry` registers them with timm.

Every family has timm's model interface: ``forward_features`` / ``forward_head(pre_logits=)``,
``reset_classifier(num_classes, global_pool)``, ``num_features`` (channels of the features before
the head) and ``head_hidden_size``, ``feature_info`` (timm's FeatureInfo: ``num_chs``,
``reduction``, ``module``), ``forward_intermediates`` / ``prune_intermediate_layers`` and
``features_only=True`` (through ``forward_intermediates``, or ``feature_cls='fx'``), default cfgs
with ``pool_size`` and ``fixed_input_size``, and a ``_traits['first_conv']`` naming the instance's
real first layer. Inputs are checked (type, dtype against the weights, shape and size) in eager
mode; the checks skip themselves while torch.fx or torch.jit.trace records a graph.

Input layouts: timm describes every input as ``input_size = (C, H, W)`` and builds
``(N, *input_size)`` batches. The 1-D nets declare ``(C, 1, L)`` and take ``(N, C, L)`` or
``(N, C, 1, L)``; the MLPs declare ``(F, 1, 1)`` and take ``(N, F)`` or ``(N, F, 1, 1)``. The maps
the 1-D nets return keep the input's layout; the MLPs' features are vectors ``(N, width)``.

Tracing and export: torch.fx (symbolic_trace, torchvision's and timm's feature extraction),
torch.jit.trace, torch.export and torch.compile are supported. TorchScript scripting
(``torch.jit.script``) is not: it is deprecated in PyTorch, and the quadratic layers and input
checks use Python that it cannot compile; trace or export instead."""
from ._common import BASE_CFGS, MODEL_FACTORIES, RUNTIME_KWARGS, make_layer
from .bearing import BearingCNN
from .cifar_resnet import CifarResNet
from .imagenet_resnet import QuadraticResNet
from .mlp import MLP
from .unet import UNet

__all__ = ['MODEL_FACTORIES', 'BASE_CFGS', 'RUNTIME_KWARGS', 'make_layer', 'BearingCNN', 'CifarResNet',
           'QuadraticResNet', 'MLP', 'UNet']
