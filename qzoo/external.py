"""External CIFAR checkpoints that qzoo's evaluation compares against.

The registry :data:`EXTERNAL` holds published checkpoints with their published metadata:
conventional He et al. (2016) CIFAR ResNets (akamaster, chenyaofo) and QuadraLib's quadratic
QResNet14 (the one other public quadratic CIFAR checkpoint). :func:`load_external` finds a
file in torch.hub's cache (an offline machine uses ``$TORCH_HOME/hub/checkpoints/<file>``) or
downloads it there, checks its SHA-256, reads it with ``weights_only=True``, converts its key
layout to qzoo's :class:`~qzoo.models.CifarResNet` and loads it strictly::

    from qzoo.external import load_external, list_external
    list_external('akamaster')            # ['akamaster/resnet20', ..., 'akamaster/resnet1202']
    model = load_external('akamaster/resnet20')
    model.pretrained_cfg['mean'], model.pretrained_cfg['std']   # normalise inputs with these

Every entry is a :class:`~qzoo.weights.WeightsRecord` (architecture, model_args, dataset,
num_classes, params, license, label_names) like qzoo's own published weights:
``qzoo.create_model(entry.architecture, **entry.model_args)`` is the model the file loads into.
Its ``reported_top1`` is the accuracy its authors report on the ORIGINAL test set named by
``dataset`` (``'cifar10'`` / ``'cifar100'``); numbers measured on another set (e.g. qzoo's
``cifar10-jpeg75``) are not comparable with it.

Cached file names follow torch.hub's convention ``<stem>-<first 8+ hex digits of the SHA-256>.<ext>``
(``load_state_dict_from_url(check_hash=True)`` checks the download against that prefix). Where
the published URL's file name carries no hash (QuadraLib's ``qresnet14.pth``), the entry's
``file_name`` adds it (``qresnet14-6240c2db.pth``, passed to torch.hub as ``file_name=``): that is
the name the file has in the cache, and the name to give a copy made by hand. Entries that know
the file's full SHA-256 (``sha256``) check all of it, on a cached file and after a download.

QuadraLib's quadratic neuron ``BN1(W1 x + c1) * BN2(W2 x + c2) + BN3(W3 x + c3)`` (three
convolutions, each followed by its own BatchNorm) is folded, with the BatchNorms' running
statistics, into qzoo's ``quadralib`` neuron ``(W_a x) * (W_b x) + W_c x + b``: with the
eval-mode maps ``BN_i(W_i x + c_i) = A_i x + a_i`` (``A_i = s_i W_i``, ``s_i = gamma_i /
sqrt(var_i + eps)``, ``a_i = s_i (c_i - mean_i) + beta_i``), ``W_a = A_1``, ``W_b = A_2``,
``W_c = A_3 + a_2 A_1 + a_1 A_2`` and ``b = a_1 a_2 + a_3``, per output channel. The folded
model computes QuadraLib's network in eval mode exactly (up to rounding); it has fewer
parameters than the file (the per-term BatchNorms are gone), and fine-tuning it trains the
folded neuron, not QuadraLib's per-term BatchNorms.

Offline use: copy the file (``EXTERNAL[name].url``) to :func:`cache_path` ``(name)``,
or set ``QZOO_OFFLINE=1`` / pass ``download=False`` to fail fast instead of trying the
network when it is missing.
"""
from __future__ import annotations

import difflib
import fnmatch
import importlib
import os
import pickle
import re
from dataclasses import asdict, dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union
from urllib.error import URLError

import torch
from torch import nn

from .fileio import sha256_file
from .serialization import valid_sha256
from .weights import WeightsRecord

__all__ = [
    'ExternalCheckpoint', 'EXTERNAL', 'load_external', 'list_external', 'get_external', 'cache_path',
    'verify_cached', 'convert_state_dict', 'fold_quadraour', 'file_params', 'ExternalCheckpointError',
    'UnknownExternalError', 'ExternalNotCachedError', 'ExternalHashError', 'ExternalLayoutError', 'OFFLINE_ENV',
    'CIFAR10_CLASSES', 'CIFAR100_CLASSES',
]

#: set to 1/true/yes to never try the network for a missing file (fail fast with the fix)
OFFLINE_ENV = 'QZOO_OFFLINE'

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# chenyaofo/pytorch-cifar-models trains and evaluates with these (the `data.mean` / `data.std`
# of the training logs of the released models, logs/cifar10|cifar100/resnet*/default.log)
CHENYAOFO_CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CHENYAOFO_CIFAR10_STD = (0.2023, 0.1994, 0.201)
CHENYAOFO_CIFAR100_MEAN = (0.507, 0.4865, 0.4409)
CHENYAOFO_CIFAR100_STD = (0.2673, 0.2564, 0.2761)
# QuadraLib: image_classification/utils.py, data_augmentation(): transforms.Normalize for cifar10
QUADRALIB_CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
QUADRALIB_CIFAR10_STD = (0.2023, 0.1994, 0.2010)
#: QuadraLib's BatchNorm2d layers use torch's default eps
QUADRALIB_BN_EPS = 1e-5

#: class names in output order: torchvision's CIFAR10 / CIFAR100 (the ``fine_label_names``)
CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
CIFAR100_CLASSES = tuple(
    'apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can '
    'castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin '
    'elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster '
    'man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck '
    'pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk '
    'skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger '
    'tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm'.split())
_LABELS = {'cifar10': CIFAR10_CLASSES, 'cifar100': CIFAR100_CLASSES}


# ---- errors ----------------------------------------------------------------------------
class ExternalCheckpointError(RuntimeError):
    """Base class of the errors :func:`load_external` raises."""


class UnknownExternalError(ExternalCheckpointError, ValueError):
    """The name is not in :data:`EXTERNAL`."""


class ExternalNotCachedError(ExternalCheckpointError):
    """The file is not in torch.hub's cache and could not (or may not) be downloaded."""


class ExternalHashError(ExternalCheckpointError):
    """The file's SHA-256 does not match the entry (corrupt, truncated or another file)."""


class ExternalLayoutError(ExternalCheckpointError):
    """The file's state dict does not fit the architecture (missing/unexpected keys, shapes),
    or the file cannot be read as a weights-only checkpoint."""


#: per layout: the top-level key holding the state dict (if any), the prefix to strip,
#: renames of whole key components at a given depth (component index -> {old: new}), and
#: whether QuadraLib's Quadraour modules are folded into qzoo's quadralib neuron
_LAYOUTS: Dict[str, Dict[str, Any]] = {
    # akamaster: DataParallel ('module.'), classifier 'linear', option-A shortcut without tensors
    'akamaster': dict(wrapper='state_dict', prefix='module.', renames={0: {'linear': 'fc'}}),
    # chenyaofo: torchvision-style BasicBlock, 'layerX.Y.downsample.{0: conv1x1, 1: BN}'
    'chenyaofo': dict(wrapper='state_dict', prefix='module.', renames={2: {'downsample': 'shortcut'}}),
    # QuadraLib: {'net': state_dict, 'acc', 'epoch'}; 'layerX.Y.convK' are Quadraour modules
    # (conv1..3 + bn1..3), shortcuts 'shortcut.{0: conv1x1, 1: BN}', classifier 'linear'
    'quadralib': dict(wrapper='net', prefix='module.', renames={0: {'linear': 'fc'}}, fold=True),
}


# ---- registry --------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class ExternalCheckpoint(WeightsRecord):
    """One published checkpoint and its published metadata. ``architecture`` and
    ``model_args`` (which include ``shortcut`` and ``num_classes``) build the qzoo model the
    converted file loads into; ``params`` is that model's parameter count (computed with
    qzoo; tests recompute it)."""
    name: str                    #: registry key, '<source>/<model>'
    source: str                  #: the publishing project's repository URL
    url: str                     #: download URL of the file
    file_name: str               #: cached file name, '<stem>-<sha256 prefix>.<ext>' (torch.hub convention)
    sha256_prefix: str           #: first hex digits of the file's SHA-256 (the ones in its cached name)
    depth: int
    reported_top1: float         #: top-1 (%) its authors report on ``dataset``'s test set
    reported_top1_source: str    #: where that number is published
    params_reported: str         #: the count as the source publishes it ('0.27M')
    mean: Tuple[float, float, float]   #: the input normalisation the checkpoint was trained with
    std: Tuple[float, float, float]
    citation: str
    layout: str                  #: key layout of the file: a key of _LAYOUTS
    sha256: Optional[str] = None       #: the file's full SHA-256, where known (checked in full)
    params_file: Optional[int] = None  #: parameters the file itself holds, where they differ from ``params``
    size_bytes: Optional[int] = None   #: file size where known (helps say "truncated")
    #: dotted names of extra globals the file's pickle needs under weights_only=True
    safe_globals: Tuple[str, ...] = ()
    notes: str = ''
    paper_ids: Tuple[str, ...] = ('arXiv:1512.03385',)

    def __post_init__(self):
        problems = []
        published = self.url.rsplit('/', 1)[-1]
        if (f'-{self.sha256_prefix}.' not in self.file_name or
                published not in (self.file_name, self.file_name.replace(f'-{self.sha256_prefix}.', '.', 1))):
            problems.append(f'file name {self.file_name!r} / url {self.url!r} do not carry the hash prefix '
                            f'{self.sha256_prefix!r} (the cached name is the URL\'s, or the URL\'s with '
                            f'-<prefix> before the extension)')
        if self.sha256 is not None and not (valid_sha256(self.sha256) and self.sha256.startswith(self.sha256_prefix)):
            problems.append(f'sha256 {self.sha256!r} is not a 64-digit hex digest starting with {self.sha256_prefix!r}')
        if self.layout not in _LAYOUTS:
            problems.append(f'unknown layout {self.layout!r}')
        if self.model_args.get('num_classes', self.num_classes) != self.num_classes:
            problems.append(f"model_args num_classes {self.model_args['num_classes']} != num_classes "
                            f"{self.num_classes}")
        if self.label_names is not None and len(self.label_names) != self.num_classes:
            problems.append(f'{len(self.label_names)} label_names for {self.num_classes} classes')
        if problems:
            raise ValueError(f'external checkpoint entry {self.name}: ' + '; '.join(problems))
        object.__setattr__(self, 'model_args', dict(self.model_args, num_classes=self.num_classes))
        if self.label_names is not None:
            object.__setattr__(self, 'label_names', tuple(self.label_names))

    def __hash__(self) -> int:   # model_args is a dict; entries stay usable as set members / dict keys
        return hash((self.name, self.url, self.file_name, self.sha256_prefix, self.architecture))

    @property
    def arch(self) -> str:
        """The qzoo architecture name (alias of ``architecture``)."""
        return self.architecture

    @property
    def shortcut(self) -> str:
        """'A' (zero-pad) or 'B' (1x1 conv + BN), from ``model_args``."""
        return self.model_args.get('shortcut', 'B')

    @property
    def tag(self) -> str:
        """timm-style pretrained tag, e.g. ``'akamaster_cifar10'``."""
        return f"{self.name.split('/')[0]}_{self.dataset}"

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


AKAMASTER = 'https://github.com/akamaster/pytorch_resnet_cifar10'
CHENYAOFO = 'https://github.com/chenyaofo/pytorch-cifar-models'
QUADRALIB = 'https://github.com/zarekxu/QuadraLib'
_AKAMASTER_CITATION = ('Yerlan Idelbayev. Proper ResNet Implementation for CIFAR10/CIFAR100 in PyTorch. '
                       f'{AKAMASTER} (bibtex key Idelbayev18a). Architecture: He, Zhang, Ren, Sun. Deep '
                       'Residual Learning for Image Recognition. CVPR 2016 (arXiv:1512.03385).')
_CHENYAOFO_CITATION = (f'chenyaofo. PyTorch CIFAR Models. {CHENYAOFO}. Architecture: He, Zhang, Ren, Sun. '
                       'Deep Residual Learning for Image Recognition. CVPR 2016 (arXiv:1512.03385).')
_QUADRALIB_CITATION = ('Zirui Xu, Jinjun Xiong, Fuxun Yu, Xiang Chen. QuadraLib: A Performant Quadratic Neural '
                       'Network Library for Architecture Optimization and Design Exploration. MLSys 2022 '
                       f'(arXiv:2204.01701). {QUADRALIB}.')


def _akamaster(depth: int, sha: str, top1: float, params: int, reported: str, size: Optional[int] = None,
               notes: str = '') -> ExternalCheckpoint:
    file_name = f'resnet{depth}-{sha}.th'
    return ExternalCheckpoint(
        name=f'akamaster/resnet{depth}', source=AKAMASTER,
        url=f'{AKAMASTER}/raw/master/pretrained_models/{file_name}', file_name=file_name, sha256_prefix=sha,
        architecture=f'resnet{depth}', model_args=dict(shortcut='A', num_classes=10), depth=depth,
        num_classes=10, dataset='cifar10', label_names=CIFAR10_CLASSES, reported_top1=top1,
        reported_top1_source=f'{AKAMASTER}#readme (README table, "Test err (this impl.)"; top-1 = 100 - err)',
        params=params, params_reported=reported, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        license='bsd-2-clause', citation=_AKAMASTER_CITATION, layout='akamaster', size_bytes=size,
        notes=('Trained on all 50k training images without a validation split; the checkpoint is the '
               'best epoch on the test set (trainer.py keeps best_prec1). ' + notes).strip())


def _chenyaofo(dataset: str, depth: int, sha: str, top1: float, params: int, reported: str) -> ExternalCheckpoint:
    file_name = f'{dataset}_resnet{depth}-{sha}.pt'
    c10 = dataset == 'cifar10'
    return ExternalCheckpoint(
        name=f'chenyaofo/{dataset}_resnet{depth}', source=CHENYAOFO,
        url=f'{CHENYAOFO}/releases/download/resnet/{file_name}', file_name=file_name, sha256_prefix=sha,
        architecture=f'resnet{depth}', model_args=dict(shortcut='B', num_classes=10 if c10 else 100), depth=depth,
        num_classes=10 if c10 else 100, dataset=dataset, label_names=_LABELS[dataset], reported_top1=top1,
        reported_top1_source=(f'{CHENYAOFO}#readme (Model Zoo, {"CIFAR-10" if c10 else "CIFAR-100"} table, '
                              f'"Top-1 Acc.(%)"; also the last line of logs/{dataset}/resnet{depth}/default.log)'),
        params=params, params_reported=reported,
        mean=CHENYAOFO_CIFAR10_MEAN if c10 else CHENYAOFO_CIFAR100_MEAN,
        std=CHENYAOFO_CIFAR10_STD if c10 else CHENYAOFO_CIFAR100_STD,
        license='bsd-3-clause', citation=_CHENYAOFO_CITATION, layout='chenyaofo',
        notes=('Trained 200 epochs (SGD nesterov, lr 0.1, wd 5e-4, cosine, batch 256); the reported number '
               'is the best epoch on the test set ("best val top1-acc" in the log).'))


def _quadralib_qresnet14() -> ExternalCheckpoint:
    sha = '6240c2db698dda5b5512a1bd4af878847c2b40d1956f280449a918a2e4212afc'
    return ExternalCheckpoint(
        name='quadralib/qresnet14', source=QUADRALIB,
        url=f'{QUADRALIB}/raw/main/image_classification/checkpoint/qresnet14.pth',
        file_name=f'qresnet14-{sha[:8]}.pth', sha256_prefix=sha[:8], sha256=sha,
        architecture='qresnet14', depth=14, num_classes=10, dataset='cifar10', label_names=CIFAR10_CLASSES,
        model_args=dict(neuron='quadralib', stem='conventional', shortcut='B', num_classes=10),
        reported_top1=93.23,
        reported_top1_source=(f'{QUADRALIB}/tree/main/image_classification#performance (README "Performance" '
                              f'table, QResNet14, "CIFAR-10 test acc (%)"); the file itself stores acc = 93.23 '
                              f'at epoch 199'),
        params=516_698, params_file=520_282, params_reported='0.39M',
        mean=QUADRALIB_CIFAR10_MEAN, std=QUADRALIB_CIFAR10_STD, license='mit', citation=_QUADRALIB_CITATION,
        layout='quadralib', paper_ids=('arXiv:2204.01701', 'arXiv:1512.03385'),
        notes=('Trained on the original CIFAR-10: all 50k training images, no validation split (README: 200 '
               'epochs, batch 256; train.py: SGD momentum 0.9, weight decay 5e-4, cosine schedule, gradient-norm '
               'clipping 0.5; random crop + horizontal flip). Selected on the TEST split: '
               'image_classification/train.py evaluates the 10k CIFAR-10 test images after every epoch and '
               'saves the checkpoint whenever test accuracy exceeds the best so far, so 93.23% is the best test '
               'accuracy over epochs (optimistic); the file stores acc = 93.23, epoch = 199. Architecture: '
               'models/resnet.py qresnet14: plain 3x3 stem conv, stages 16-32-64 of 2 BasicBlocks, shortcut '
               '1x1 conv + BN, every block conv a Quadraour = BN1(conv1 x) * BN2(conv2 x) + BN3(conv3 x). qzoo '
               'folds each Quadraour and its three BatchNorms into the quadralib neuron (exact in eval mode): '
               'the folded model has 516,698 parameters, the file 520,282 (per Quadraour, three conv biases and '
               'three BatchNorms become one bias: 8 per output channel, 448 output channels; 518,938 if the '
               "file's Quadraour convolutions carry no bias, which the conversion also accepts). QuadraLib's "
               'README lists 0.39M. The published file name carries no hash: the torch.hub cache holds it as '
               'qresnet14-6240c2db.pth.'))


_ENTRIES = [
    _akamaster(20, '12fca82f', 91.73, 269_722, '0.27M', 1_099_231,
               notes='The file itself stores best_prec1 = 91.78.'),
    _akamaster(32, 'd509ac18', 92.63, 464_154, '0.46M'),
    _akamaster(44, '014dd654', 93.10, 658_586, '0.66M'),
    _akamaster(56, '4bfd9763', 93.39, 853_018, '0.85M', 3_471_733,
               notes='The file itself stores best_prec1 = 93.62.'),
    _akamaster(110, '1d1ed7c2', 93.68, 1_727_962, '1.7M'),
    _akamaster(1202, 'f3b1deed', 93.82, 19_421_274, '19.4M'),
    _chenyaofo('cifar10', 20, '4118986f', 92.60, 272_474, '0.27M'),
    _chenyaofo('cifar10', 32, 'ef93fc4d', 93.53, 466_906, '0.47M'),
    _chenyaofo('cifar10', 44, '2a3cabcb', 94.01, 661_338, '0.66M'),
    _chenyaofo('cifar10', 56, '187c023a', 94.37, 855_770, '0.86M'),
    _chenyaofo('cifar100', 20, '23dac2f1', 68.83, 278_324, '0.28M'),
    _chenyaofo('cifar100', 32, '84213ce6', 70.16, 472_756, '0.47M'),
    _chenyaofo('cifar100', 44, 'ffe32858', 71.63, 667_188, '0.67M'),
    _chenyaofo('cifar100', 56, 'f2eff4c8', 72.63, 861_620, '0.86M'),
    _quadralib_qresnet14(),
]

#: every external checkpoint, by name
EXTERNAL: Dict[str, ExternalCheckpoint] = {e.name: e for e in _ENTRIES}


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', s)]


def list_external(filter: str = '') -> List[str]:
    """Names in :data:`EXTERNAL`, naturally sorted. ``filter`` is a glob (``'*cifar100*'``)
    when it contains ``*?[``, else a substring (``'akamaster'``, ``'resnet56'``)."""
    names = sorted(EXTERNAL, key=_natural_key)
    if not filter:
        return names
    if any(c in filter for c in '*?['):
        return [n for n in names if fnmatch.fnmatchcase(n, filter)]
    return [n for n in names if filter in n]


def get_external(name: Union[str, ExternalCheckpoint]) -> ExternalCheckpoint:
    """The registry entry ``name`` (an :class:`ExternalCheckpoint` is returned as is); an
    :class:`UnknownExternalError` listing valid and close names otherwise."""
    if isinstance(name, ExternalCheckpoint):
        return name
    try:
        return EXTERNAL[name]
    except (KeyError, TypeError):
        pass
    names = list_external()
    close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.6)
    tail = str(name).rsplit('/', 1)[-1]
    close += [n for n in names if n.rsplit('/', 1)[-1].split('_')[-1] == tail and n not in close]
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ''
    raise UnknownExternalError(
        f'unknown external checkpoint {name!r}.{hint} Valid names (qzoo.external.list_external()): '
        f"{', '.join(names)}.")


def cache_path(name: Union[str, ExternalCheckpoint]) -> Path:
    """Where torch.hub keeps (and :func:`load_external` looks for) the file of ``name``:
    ``torch.hub.get_dir()/checkpoints/<file_name>``, i.e. ``$TORCH_HOME/hub/checkpoints/<file_name>``."""
    return Path(torch.hub.get_dir()) / 'checkpoints' / get_external(name).file_name


def verify_cached(name: Union[str, ExternalCheckpoint]) -> Path:
    """Check the cached file of ``name`` against its SHA-256 (in full where the entry records
    it, else the prefix in its name); returns its path. (torch.hub checks the hash only while
    downloading, never a file already in the cache.)"""
    entry = get_external(name)
    path = cache_path(entry)
    if not path.is_file():
        raise _not_cached(entry, path, None)
    digest = sha256_file(path)
    want = entry.sha256 or entry.sha256_prefix
    if not digest.startswith(want):
        size = path.stat().st_size
        if entry.size_bytes is not None and size != entry.size_bytes:
            what = (f'it is {size:,} bytes, the published file {entry.size_bytes:,} bytes '
                    f'({"truncated" if size < entry.size_bytes else "too long"})')
        else:
            what = f'it is {size:,} bytes; the content is corrupt or a different file'
        expected = (f'SHA-256 {entry.sha256}' if entry.sha256 else
                    f'a SHA-256 starting with {entry.sha256_prefix!r} (the prefix in its name)')
        raise ExternalHashError(
            f'{entry.name}: cached file {path} fails its hash check: expected {expected}, found '
            f'{digest if entry.sha256 else digest[:16] + "..."}; {what}. Fix: delete it (rm {path!s}) and call '
            f'load_external({entry.name!r}) again to download it, or copy a good copy of {entry.url} to that path.')
    return path


def _offline() -> bool:
    return os.environ.get(OFFLINE_ENV, '').strip().lower() in ('1', 'true', 'yes', 'on')


def _not_cached(entry: ExternalCheckpoint, path: Path, cause: Optional[BaseException]) -> ExternalNotCachedError:
    why = (f'downloading {entry.url} failed ({type(cause).__name__}: {cause})' if cause is not None else
           f'downloads are off (download=False or {OFFLINE_ENV}=1), so the network was not tried')
    published = entry.url.rsplit('/', 1)[-1]
    rename = (f' (renamed: the published file is {published}; torch.hub caches it under {entry.file_name}, the '
              f'first 8 hex digits of its SHA-256 added to the name)' if published != entry.file_name else '')
    return ExternalNotCachedError(
        f'{entry.name}: checkpoint file {entry.file_name} is not in the torch.hub cache and {why}. '
        f'Expected it at {path} (torch.hub.get_dir()/checkpoints/; torch.hub.get_dir() is '
        f'$TORCH_HOME/hub unless torch.hub.set_dir() was called; '
        f'TORCH_HOME={os.environ.get("TORCH_HOME", "<unset: ~/.cache/torch>")}). '
        f'Fix: on a machine with internet, download {entry.url} and copy it, unchanged and under '
        f'this exact name{rename}, to {path} (or point TORCH_HOME at a folder whose hub/checkpoints/ holds it).')


# ---- key conversion --------------------------------------------------------------------
_BN_BUFFERS = ('running_mean', 'running_var', 'num_batches_tracked')


def file_params(state_dict: Mapping[str, Any]) -> int:
    """Parameters a state dict holds: elements of its tensors that are not BatchNorm buffers
    (``running_mean``, ``running_var``, ``num_batches_tracked``)."""
    return sum(v.numel() for k, v in state_dict.items()
               if isinstance(v, torch.Tensor) and k.rsplit('.', 1)[-1] not in _BN_BUFFERS)


def fold_quadraour(sd: Mapping[str, torch.Tensor], prefix: str, eps: float = QUADRALIB_BN_EPS
                   ) -> Dict[str, torch.Tensor]:
    """qzoo ``quadralib`` tensors (``<prefix>.conv_a.weight``, ``conv_b.weight``, ``conv_c.weight``,
    ``conv_c.bias``) equal in eval mode to QuadraLib's Quadraour ``<prefix>`` =
    ``BN1(conv1 x) * BN2(conv2 x) + BN3(conv3 x)`` (conv biases optional), computed in float64
    and returned in the dtype of ``conv1.weight``. See the module doc for the algebra.
    Raises ``KeyError`` naming a missing key, ``ValueError`` for a BatchNorm whose
    ``running_var + eps`` is not positive and finite."""
    scaled, offset = [], []
    for i in (1, 2, 3):
        w = sd[f'{prefix}.conv{i}.weight'].double()
        c = sd.get(f'{prefix}.conv{i}.bias')
        bn = {k: sd[f'{prefix}.bn{i}.{k}'].double() for k in ('weight', 'bias', 'running_mean', 'running_var')}
        denom = bn['running_var'] + eps
        if not bool(torch.all(torch.isfinite(denom) & (denom > 0))):
            raise ValueError(f'{prefix}.bn{i}.running_var + eps is not positive and finite '
                             f'(min {float(denom.min()):.3g})')
        s = bn['weight'] / denom.sqrt()
        scaled.append(w * s.view(-1, 1, 1, 1))
        offset.append(s * ((c.double() if c is not None else 0.0) - bn['running_mean']) + bn['bias'])
    (a1, a2, a3), (o1, o2, o3) = scaled, offset
    dtype = sd[f'{prefix}.conv1.weight'].dtype
    col = (-1, 1, 1, 1)
    out = {'conv_a.weight': a1, 'conv_b.weight': a2, 'conv_c.weight': a3 + o2.view(col) * a1 + o1.view(col) * a2,
           'conv_c.bias': o1 * o2 + o3}
    return {f'{prefix}.{k}': v.to(dtype) for k, v in out.items()}


def _quadraour_prefixes(sd: Mapping[str, Any]) -> List[str]:
    """Module paths holding three same-shaped convolutions conv1..conv3 and BatchNorms bn1..bn3
    (QuadraLib's Quadraour; a bottleneck's conv1..conv3 differ in shape)."""
    out = []
    for key in sd:
        if not key.endswith('.conv3.weight'):
            continue
        p = key[:-len('.conv3.weight')]
        shapes = {tuple(getattr(sd.get(f'{p}.conv{i}.weight'), 'shape', (i,))) for i in (1, 2, 3)}
        if len(shapes) == 1 and all(f'{p}.bn{i}.weight' in sd for i in (1, 2, 3)):
            out.append(p)
    return sorted(out)


def _fold_all(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out = dict(sd)
    for prefix in _quadraour_prefixes(sd):
        for k in [k for k in out if k.startswith(prefix + '.')]:
            del out[k]
        out.update(fold_quadraour(sd, prefix))
    return out


def convert_state_dict(obj: Mapping[str, Any], layout: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Convert a checkpoint in ``layout`` (a key of ``_LAYOUTS``) to qzoo's CifarResNet keys.

    Returns ``(state_dict, meta)``: ``meta`` holds the file's non-tensor top-level entries
    (akamaster's ``best_prec1``, QuadraLib's ``acc`` and ``epoch``). QuadraLib's Quadraour
    modules are folded into qzoo's ``quadralib`` neuron (:func:`fold_quadraour`). BatchNorm
    ``num_batches_tracked`` buffers missing from files saved before PyTorch 0.4.1 are filled
    with 0 (they only matter with momentum=None)."""
    spec = _LAYOUTS[layout]
    meta: Dict[str, Any] = {}
    sd = obj
    inner = obj.get(spec['wrapper']) if isinstance(obj, Mapping) else None
    if isinstance(inner, Mapping):
        meta = {k: v for k, v in obj.items() if k != spec['wrapper'] and not isinstance(v, torch.Tensor)}
        sd = inner
    out: Dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.startswith(spec['prefix']):
            key = key[len(spec['prefix']):]
        parts = key.split('.')
        for i, table in spec['renames'].items():
            if i < len(parts) and parts[i] in table:
                parts[i] = table[parts[i]]
        out['.'.join(parts)] = value
    if spec.get('fold'):
        out = _fold_all(out)
    for key in [k for k in out if k.endswith('.running_mean')]:
        nbt = key[:-len('running_mean')] + 'num_batches_tracked'
        if nbt not in out:
            out[nbt] = torch.tensor(0, dtype=torch.long)
    return out, meta


def _check_fits(entry: ExternalCheckpoint, path: Path, model: nn.Module, sd: Mapping[str, torch.Tensor]) -> None:
    from .errors import CheckpointError
    from .serialization import check_fits
    try:
        check_fits(model, sd, str(path), f'qzoo {entry.architecture} (model_args {dict(entry.model_args)}) after '
                                         f'converting the {entry.layout!r} key layout',
                   fix=f'if the file is not the published {entry.url}, delete it (rm {path!s}) and download again; '
                       f'otherwise the registry entry (architecture/model_args/layout) or the key conversion in '
                       f'qzoo/external.py is wrong')
    except CheckpointError as e:
        raise ExternalLayoutError(f'{entry.name}: {e}') from None


def _resolve(dotted: str):
    mod, _, attr = dotted.rpartition('.')
    return getattr(importlib.import_module(mod), attr)


def _build(entry: ExternalCheckpoint) -> nn.Module:
    """``qzoo.create_model(entry.architecture, **entry.model_args)``; for depths qzoo does not
    register (resnet1202), the same class with a cfg of the same form."""
    from .models import MODEL_FACTORIES, CifarResNet
    from .models._common import cfg
    if entry.architecture in MODEL_FACTORIES:
        from .registry import create_model
        return create_model(entry.architecture, **entry.model_args)
    model = CifarResNet(depth=entry.depth, **entry.model_args)
    model.pretrained_cfg = cfg(architecture=entry.architecture, paper_ids=entry.paper_ids[0])
    return model


# ---- loading ---------------------------------------------------------------------------
def _reread(entry: ExternalCheckpoint, path: Path, e: BaseException) -> ExternalLayoutError:
    return ExternalLayoutError(
        f'{entry.name}: {path} could not be read by torch.load ({type(e).__name__}: {e}). Fix: delete '
        f'it (rm {path!s}) and call load_external({entry.name!r}) again to download it.')


def _read(entry: ExternalCheckpoint, path: Path, downloading: bool, map_location: Any, progress: bool) -> Any:
    """The unpickled file (weights_only=True) through torch.hub, every failure mapped to an
    :class:`ExternalCheckpointError` naming the file and the fix."""
    try:
        extra = [_resolve(g) for g in entry.safe_globals]
        with torch.serialization.safe_globals(extra):
            return torch.hub.load_state_dict_from_url(
                entry.url, map_location=map_location, progress=progress, check_hash=True,
                weights_only=True, file_name=entry.file_name)
    except (URLError, HTTPException, OSError) as e:
        if downloading and not path.is_file():   # no connection, HTTP error, cut transfer (no partial file kept)
            raise _not_cached(entry, path, getattr(e, 'reason', e)) from e
        raise _reread(entry, path, e) from e
    except pickle.UnpicklingError as e:  # weights_only refused a global
        raise ExternalLayoutError(
            f'{entry.name}: {path} could not be read with torch.load(weights_only=True): {e}. Expected '
            f'a plain state dict (tensors, numbers, strings). Fix: if the file is not the published '
            f'{entry.url}, delete it (rm {path!s}); if it is, add exactly the global(s) named above to '
            f"this entry's safe_globals in qzoo/external.py (never load it with weights_only=False).") from e
    except RuntimeError as e:
        if 'invalid hash value' in str(e):
            raise ExternalHashError(
                f'{entry.name}: the file downloaded from {entry.url} fails its hash check: expected a '
                f'SHA-256 starting with {entry.sha256_prefix!r} (the prefix in {entry.file_name}); torch '
                f'says: {e}. Nothing was cached (torch deletes the partial file). Fix: retry (the download '
                f'may have been cut); if it persists, the published file changed: check {entry.source} and '
                f"update this entry's file name/URL in qzoo/external.py.") from e
        raise _reread(entry, path, e) from e
    except EOFError as e:
        raise _reread(entry, path, e) from e


def _convert(entry: ExternalCheckpoint, path: Path, obj: Any) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any], int]:
    """(qzoo state dict, file meta, parameters in the file) of an unpickled checkpoint."""
    if not isinstance(obj, Mapping):
        raise ExternalLayoutError(
            f'{entry.name}: {path} holds a {type(obj).__name__}, expected a state dict (a mapping of '
            f'parameter names to tensors). Fix: if the file is not the published {entry.url}, delete it '
            f'(rm {path!s}) and download again.')
    wrapped = obj.get(_LAYOUTS[entry.layout]['wrapper'])
    n_file = file_params(wrapped if isinstance(wrapped, Mapping) else obj)
    try:
        sd, meta = convert_state_dict(obj, entry.layout)
    except (KeyError, ValueError) as e:
        raise ExternalLayoutError(
            f'{entry.name}: the state dict in {path} cannot be converted from the {entry.layout!r} layout: '
            f'{e}. Fix: if the file is not the published {entry.url}, delete it (rm {path!s}) and download '
            f'again.') from e
    return sd, meta, n_file


def load_external(name: Union[str, ExternalCheckpoint], *, progress: bool = False, map_location: Any = 'cpu',
                  download: Optional[bool] = None) -> nn.Module:
    """Build ``qzoo.create_model(entry.architecture, **entry.model_args)`` with the weights of
    external checkpoint ``name``.

    The file comes from torch.hub's cache (``$TORCH_HOME/hub/checkpoints/<file_name>``) or is
    downloaded there by ``torch.hub.load_state_dict_from_url(check_hash=True,
    weights_only=True, file_name=entry.file_name)``; a cached file is checked against its
    SHA-256 (in full where the entry records it). ``download=False`` (or ``QZOO_OFFLINE=1``
    when ``download`` is None) never tries the network. The state dict is converted to qzoo's
    keys and loaded strictly; ``model.pretrained_cfg`` gets the checkpoint's own
    ``mean``/``std`` (normalise inputs with them), its label names and its provenance
    (``source``, ``url``, ``tag``, ``reported_top1``, ``dataset``, ``params_file``).
    Returns the model in eval mode. Raises a subclass of :class:`ExternalCheckpointError`
    that names the file, what was expected and found, and the fix."""
    entry = get_external(name)
    path = cache_path(entry)
    if download is None:
        download = not _offline()
    downloading = not path.is_file()
    if not downloading:
        verify_cached(entry)   # torch.hub itself never re-checks a cached file
    elif not download:
        raise _not_cached(entry, path, None)
    obj = _read(entry, path, downloading, map_location, progress)
    if downloading and entry.sha256:
        verify_cached(entry)   # torch.hub checked the prefix in the name; the entry knows all of it
    sd, meta, n_file = _convert(entry, path, obj)
    model = _build(entry)
    _check_fits(entry, path, model, sd)
    model.load_state_dict(sd, strict=True)
    first_conv = getattr(model, '_traits', {}).get('first_conv')
    model.pretrained_cfg = dict(
        getattr(model, 'pretrained_cfg', None) or {}, architecture=entry.architecture,
        model_args=dict(entry.model_args), tag=entry.tag, source='external', external_name=entry.name,
        origin=entry.source, url=entry.url, file=entry.file_name, hf_hub_id=None, num_classes=entry.num_classes,
        label_names=list(entry.label_names or ()), mean=tuple(entry.mean), std=tuple(entry.std),
        license=entry.license, dataset=entry.dataset, reported_top1=entry.reported_top1,
        reported_top1_source=entry.reported_top1_source, citation=entry.citation, params_file=n_file,
        checkpoint_meta=meta, **({'first_conv': first_conv} if first_conv else {}))
    model.default_cfg = model.pretrained_cfg
    return model.eval()
