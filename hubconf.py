"""torch.hub entry points for qzoo.

    import torch
    model = torch.hub.load('<owner>/qzoo', 'qresnet20', pretrained=True, trust_repo=True)
    model = torch.hub.load('/path/to/qzoo', 'qresnet20', source='local')   # a checkout

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

# name -> one-line description (tests check this list equals qzoo.list_models())
_MODELS = {
    'mlp': 'Conventional MLP for synthetic tasks (default 2->10->2, 52 params).',
    'qmlp': 'Quadratic MLP, every layer quadratic (default 2->10->2, 156 params).',
    'wdcnn': 'WDCNN 1-D CNN for bearing fault diagnosis, input (N, 1, 2048) (66,790 params).',
    'qcnn': 'Slim quadratic QCNN for bearing fault diagnosis, input (N, 1, 2048) (16,262 params).',
    'unet': 'U-Net, transposed-conv upsampling (base_width 64, depth 4).',
    'qunet': "The seed's quadratic U-Net (base_width 32, depth 3).",
    'qresnet18': "timm's ResNet-18 with quadratic convolutions (architecture only).",
    'qresnet50': "timm's ResNet-50 with quadratic convolutions (architecture only).",
}
for _d in (8, 14, 20, 32, 44, 56, 110):
    _MODELS[f'resnet{_d}'] = f'CIFAR ResNet-{_d}, conventional (width 16, shortcut B by default).'
    _MODELS[f'qresnet{_d}'] = f'CIFAR ResNet-{_d}, quadratic 3x3 convolutions (neuron fan by default).'


def _entry(name, doc):
    def entry(pretrained=False, **kwargs):
        import qzoo
        return qzoo.create_model(name, pretrained=pretrained, **kwargs)
    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (f'{doc}\n\n    pretrained: load the published weights (checked against their SHA-256).\n'
                     f'    kwargs: passed to qzoo.create_model({name!r}, ...), e.g. num_classes, in_chans, neuron.')
    return entry


for _n, _doc in _MODELS.items():
    globals()[_n] = _entry(_n, _doc)
del _n, _doc, _d
