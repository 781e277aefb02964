"""qzoo: a model zoo for quadratic neural networks.

``import qzoo`` registers every qzoo model with timm::

    import qzoo, timm
    model = timm.create_model('qresnet20')          # or qzoo.create_model('qresnet20')
"""
__version__ = '0.1.0'

from . import neurons, layers, relinear, measure
from .neurons import get_neuron, list_neurons, NeuronFamily
from .layers import (QuadraticLinear, QuadraticConv1d, QuadraticConv2d, QuadraticConvTranspose1d,
                     QuadraticConvTranspose2d, QuadraticLayer, quadratize)
from .measure import count_params, count_macs
from . import models
from .registry import create_model, list_models, register_all

register_all()

__all__ = [
    'get_neuron', 'list_neurons', 'NeuronFamily', 'QuadraticLinear', 'QuadraticConv1d', 'QuadraticConv2d',
    'QuadraticConvTranspose1d', 'QuadraticConvTranspose2d', 'QuadraticLayer', 'quadratize',
    'count_params', 'count_macs', 'create_model', 'list_models', 'relinear', 'measure', 'models',
]
