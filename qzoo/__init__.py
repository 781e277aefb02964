"""qzoo: a model zoo for quadratic neural networks.

``import qzoo`` registers every qzoo model with timm, with its published weights::

    import qzoo, timm
    model = timm.create_model('qcnn', pretrained=True)      # or qzoo.create_model(...)
    qzoo.list_models(pretrained=True)                       # published weights, '<architecture>.<tag>'
    print(qzoo.compare('runs/my-run'))                      # your own weights on the zoo's curves
"""
__version__ = '0.1.0'

from . import neurons, layers, relinear, measure
from .neurons import get_neuron, list_neurons, NeuronFamily
from .layers import (QuadraticLinear, QuadraticConv1d, QuadraticConv2d, QuadraticConvTranspose1d,
                     QuadraticConvTranspose2d, QuadraticLayer, quadratize)
from .measure import count_params, count_macs
from . import models
from .registry import list_models, register_all
from .errors import CheckpointError
from .hub import create_model, from_pretrained, save_pretrained
from .comparison import compare, Comparison

register_all()

__all__ = [
    'get_neuron', 'list_neurons', 'NeuronFamily', 'QuadraticLinear', 'QuadraticConv1d', 'QuadraticConv2d',
    'QuadraticConvTranspose1d', 'QuadraticConvTranspose2d', 'QuadraticLayer', 'quadratize',
    'count_params', 'count_macs', 'create_model', 'list_models', 'from_pretrained', 'save_pretrained',
    'CheckpointError', 'relinear', 'measure', 'models', 'compare', 'Comparison',
]
