"""torch.hub entry points for qzoo.

    import torch
    model = torch.hub.load('/path/to/qzoo', 'qcnn', source='local', pretrained=True)   # a checkout
    model = torch.hub.load('<owner>/qzoo', 'qcnn', pretrained=True, trust_repo=True)   # from GitHub
    model = torch.hub.load('/path/to/qzoo', 'qcnn_w8', source='local', pretrained=True,
                           pretrained_cfg='cwru-clean-s1')                           # other published weights

Every qzoo model is an entry point; keyword arguments go to ``qzoo.create_model``
(``num_classes``, ``in_chans``, ``neuron``, ``width``, ...). ``torch.hub.help(repo, name)``
prints an entry point's doc.

Trust: loading from GitHub runs this repository's Python code on your machine.
torch.hub asks before it does so unless ``trust_repo=True`` (trust always),
``'check'`` (trust repos already in your trusted list) or ``False`` (always ask) is
given. Weights themselves are safetensors files and are checked against their
published SHA-256; no pickle from the network is ever unpickled.

Importing this file is cheap: it imports nothing beyond the standard library and
touches no network; qzoo (and timm) load when an entry point is called.
"""
dependencies = ['torch', 'timm', 'safetensors', 'huggingface_hub']

# name -> one-line description, one entry point each (tests check this list equals qzoo.list_models())
_MODELS = {
    'wdcnn': 'WDCNN (Zhang et al. 2017), channels 16-32-64-64-64-64, FC 100: 66,790 parameters.',
    'wdcnn_w4': 'WDCNN at width 4 (channels 4-8-16-16-16-16, FC 100): 9,178 parameters.',
    'wdcnn_w8': 'WDCNN at width 8 (channels 8-16-32-32-32-32, FC 100): 22,814 parameters.',
    'qcnn': "Slim quadratic QCNN (Liao et al. 2023, as in the paper's code): 16 channels throughout, FC 20: 16,262 parameters.",
    'qcnn_w8': 'QCNN at width 8 (8 channels throughout, FC 20): 5,366 parameters.',
    'qcnn_w32': 'QCNN at width 32 (32 channels throughout, FC 20): 55,334 parameters.',
    'resnet8': 'CIFAR ResNet-8, conventional (width 16, shortcut B).',
    'resnet14': 'CIFAR ResNet-14, conventional (width 16, shortcut B).',
    'resnet20': 'CIFAR ResNet-20, conventional (width 16, shortcut B).',
    'resnet32': 'CIFAR ResNet-32, conventional (width 16, shortcut B).',
    'resnet44': 'CIFAR ResNet-44, conventional (width 16, shortcut B).',
    'resnet56': 'CIFAR ResNet-56, conventional (width 16, shortcut B).',
    'resnet110': 'CIFAR ResNet-110, conventional (width 16, shortcut B).',
    'resnet20_w8': 'CIFAR ResNet-20 at width 8 (stages 8-16-32), conventional.',
    'resnet20_w12': 'CIFAR ResNet-20 at width 12 (stages 12-24-48), conventional.',
    'resnet20_w24': 'CIFAR ResNet-20 at width 24 (stages 24-48-96), conventional.',
    'qresnet8': 'CIFAR ResNet-8 with quadratic 3x3 convolutions (neuron fan, width 16, shortcut B).',
    'qresnet14': 'CIFAR ResNet-14 with quadratic 3x3 convolutions (neuron fan, width 16, shortcut B).',
    'qresnet20': 'CIFAR ResNet-20 with quadratic 3x3 convolutions (neuron fan, width 16, shortcut B).',
    'qresnet32': 'CIFAR ResNet-32 with quadratic 3x3 convolutions (neuron fan, width 16, shortcut B).',
    'qresnet44': 'CIFAR ResNet-44 with quadratic 3x3 convolutions (neuron fan, width 16, shortcut B).',
    'qresnet56': 'CIFAR ResNet-56 with quadratic 3x3 convolutions (neuron fan, width 16, shortcut B).',
    'qresnet110': 'CIFAR ResNet-110 with quadratic 3x3 convolutions (neuron fan, width 16, shortcut B).',
    'qresnet20_w8': 'Quadratic CIFAR ResNet-20 at width 8 (stages 8-16-32).',
    'qresnet20_w12': 'Quadratic CIFAR ResNet-20 at width 12 (stages 12-24-48).',
    'qresnet18': "ResNet-18 (timm's) with quadratic convolutions. Architecture only: no published weights.",
    'qresnet50': "ResNet-50 (timm's) with quadratic convolutions. Architecture only: no published weights.",
    'mlp': 'Conventional MLP, one hidden layer of 10 (2 -> 10 -> 2: 52 parameters).',
    'qmlp': 'Quadratic MLP (every layer quadratic, neuron fan), one hidden layer of 10 (2 -> 10 -> 2: 156 parameters).',
    'mlp_h2': 'Conventional MLP, one hidden layer of 2.',
    'mlp_h4': 'Conventional MLP, one hidden layer of 4.',
    'mlp_h8': 'Conventional MLP, one hidden layer of 8.',
    'mlp_h16': 'Conventional MLP, one hidden layer of 16.',
    'mlp_h32': 'Conventional MLP, one hidden layer of 32.',
    'qmlp_h2': 'Quadratic MLP, one hidden layer of 2.',
    'qmlp_h4': 'Quadratic MLP, one hidden layer of 4.',
    'qmlp_h8': 'Quadratic MLP, one hidden layer of 8.',
    'qmlp_h16': 'Quadratic MLP, one hidden layer of 16.',
    'qmlp_h32': 'Quadratic MLP, one hidden layer of 32.',
    'unet': 'U-Net (Ronneberger et al. 2015): base width 64, depth 4 (31,037,698 parameters for 3 -> 2 classes).',
    'qunet': "The paper's quadratic U-Net: base width 32, depth 3, every convolution quadratic (neuron fan).",
    'unet_b4': 'U-Net at base width 4, depth 4.',
    'unet_b8': 'U-Net at base width 8, depth 4.',
    'unet_b16': 'U-Net at base width 16, depth 4.',
    'qunet_b4': 'Quadratic U-Net at base width 4, depth 3.',
    'qunet_b8': 'Quadratic U-Net at base width 8, depth 3.',
    'qunet_b16': 'Quadratic U-Net at base width 16, depth 3.',
    'qresnet20_w9': "Quadratic CIFAR ResNet-20 at width 9 (stages 9-18-36): 257,644 parameters, the width nearest resnet20's 272,474.",
    'qresnet20_fan_budget': "Quadratic ResNet-20, neuron fan, stages 9-18-37: resnet20's parameter budget.",
    'qresnet20_fan_rg_budget': "Quadratic ResNet-20, neuron fan_rg, stages 11-22-46: resnet20's parameter budget.",
    'qresnet20_fan_rb_budget': "Quadratic ResNet-20, neuron fan_rb, stages 11-22-46: resnet20's parameter budget.",
    'qresnet20_quadralib_budget': "Quadratic ResNet-20, neuron quadralib, stages 9-18-37: resnet20's parameter budget.",
    'qresnet20_qres_budget': "Quadratic ResNet-20, neuron qres, stages 11-22-46: resnet20's parameter budget.",
    'qresnet20_power_budget': "Quadratic ResNet-20, neuron power (W (x*x) + b), stages 16-32-64: resnet20's parameter budget.",
    'qresnet20_lowrank2_budget': "Quadratic ResNet-20, neuron lowrank(rank=2), stages 9-18-37: resnet20's parameter budget.",
    'unet_b32': 'U-Net at base width 32, depth 4.',
}


def _entry(name, doc):
    def entry(pretrained=False, **kwargs):
        import qzoo
        return qzoo.create_model(name, pretrained=pretrained, **kwargs)
    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (f'{doc}\n\n    pretrained: load the default published weights (checked against their SHA-256);\n'
                     f'    pretrained_cfg=<tag> picks other published weights (qzoo.list_models(pretrained=True)).\n'
                     f'    kwargs: passed to qzoo.create_model({name!r}, ...), e.g. num_classes, in_chans, neuron.')
    return entry


for _n, _doc in _MODELS.items():
    globals()[_n] = _entry(_n, _doc)
del _n, _doc
