"""External conventional CIFAR ResNet checkpoints that qzoo's evaluation compares against.

The registry :data:`EXTERNAL` holds published checkpoints of He et al. (2016) CIFAR
ResNets with their published metadata; :func:`load_external` downloads one through
torch.hub's cache (so an offline machine uses ``$TORCH_HOME/hub/checkpoints/<file>``),
checks its SHA-256 prefix, reads it with ``weights_only=True``, converts its key layout
to qzoo's :class:`~qzoo.models.CifarResNet` and loads it strictly::

    from qzoo.external import load_external, list_external
    list_external('akamaster')            # ['akamaster/resnet20', ..., 'akamaster/resnet1202']
    model = load_external('akamaster/resnet20')
    model.pretrained_cfg['mean'], model.pretrained_cfg['std']   # normalise inputs with these

Every entry's ``reported_top1`` is the accuracy its authors report on the ORIGINAL test
set named by ``dataset`` (``'cifar10'`` / ``'cifar100'``); numbers measured on another
set (e.g. qzoo's ``cifar10-jpeg75``) are not comparable with it.

Offline use: copy the file (``EXTERNAL[name].url``) to :func:`cache_path` ``(name)``,
or set ``QZOO_OFFLINE=1`` / pass ``download=False`` to fail fast instead of trying the
network when it is missing.
"""
from __future__ import annotations

import difflib
import fnmatch
import hashlib
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

__all__ = [
    'ExternalCheckpoint', 'EXTERNAL', 'load_external', 'list_external', 'get_external', 'cache_path',
    'verify_cached', 'convert_state_dict', 'ExternalCheckpointError', 'UnknownExternalError',
    'ExternalNotCachedError', 'ExternalHashError', 'ExternalLayoutError', 'OFFLINE_ENV',
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


# ---- errors ----------------------------------------------------------------------------
class ExternalCheckpointError(RuntimeError):
    """Base class of the errors :func:`load_external` raises."""


class UnknownExternalError(ExternalCheckpointError, ValueError):
    """The name is not in :data:`EXTERNAL`."""


class ExternalNotCachedError(ExternalCheckpointError):
    """The file is not in torch.hub's cache and could not (or may not) be downloaded."""


class ExternalHashError(ExternalCheckpointError):
    """The file's SHA-256 does not start with the prefix in its name (corrupt or truncated)."""


class ExternalLayoutError(ExternalCheckpointError):
    """The file's state dict does not fit the architecture (missing/unexpected keys, shapes),
    or the file cannot be read as a weights-only checkpoint."""


#: per layout: the top-level key holding the state dict (if any), the prefix to strip, and
#: renames of whole key components at a given depth (component index -> {old: new})
_LAYOUTS: Dict[str, Dict[str, Any]] = {
    # akamaster: DataParallel ('module.'), classifier 'linear', option-A shortcut without tensors
    'akamaster': dict(wrapper='state_dict', prefix='module.', renames={0: {'linear': 'fc'}}),
    # chenyaofo: torchvision-style BasicBlock, 'layerX.Y.downsample.{0: conv1x1, 1: BN}'
    'chenyaofo': dict(wrapper='state_dict', prefix='module.', renames={2: {'downsample': 'shortcut'}}),
}


# ---- registry --------------------------------------------------------------------------
@dataclass(frozen=True)
class ExternalCheckpoint:
    """One published checkpoint and its published metadata."""
    name: str                    #: registry key, '<source>/<model>'
    source: str                  #: the publishing project's repository URL
    url: str                     #: download URL of the file
    file_name: str               #: file name, '<stem>-<sha256 prefix>.<ext>' (torch.hub convention)
    sha256_prefix: str           #: first hex digits of the file's SHA-256 (the ones in its name)
    arch: str                    #: qzoo architecture name ('resnet20', ...)
    depth: int
    shortcut: str                #: 'A' (zero-pad) or 'B' (1x1 conv + BN)
    num_classes: int
    dataset: str                 #: the ORIGINAL dataset the reported accuracy is on ('cifar10' / 'cifar100')
    reported_top1: float         #: top-1 (%) its authors report on ``dataset``'s test set
    reported_top1_source: str    #: where that number is published
    params: int                  #: parameter count, computed with qzoo (tests recompute it)
    params_reported: str         #: the count as the source publishes it ('0.27M')
    mean: Tuple[float, float, float]   #: the input normalisation the checkpoint was trained with
    std: Tuple[float, float, float]
    license: str                 #: the publishing project's license (SPDX id, lower case)
    citation: str
    layout: str                  #: key layout of the file: 'akamaster' or 'chenyaofo'
    size_bytes: Optional[int] = None   #: file size where known (helps say "truncated")
    #: dotted names of extra globals the file's pickle needs under weights_only=True
    safe_globals: Tuple[str, ...] = ()
    notes: str = ''
    paper_ids: Tuple[str, ...] = ('arXiv:1512.03385',)

    def __post_init__(self):
        if f'-{self.sha256_prefix}.' not in self.file_name or not self.url.endswith('/' + self.file_name):
            raise ValueError(f'{self.name}: file name {self.file_name!r} / url {self.url!r} do not carry '
                             f'the hash prefix {self.sha256_prefix!r}')
        if self.layout not in _LAYOUTS:
            raise ValueError(f'{self.name}: unknown layout {self.layout!r}')

    @property
    def tag(self) -> str:
        """timm-style pretrained tag, e.g. ``'akamaster_cifar10'``."""
        return f"{self.name.split('/')[0]}_{self.dataset}"

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


AKAMASTER = 'https://github.com/akamaster/pytorch_resnet_cifar10'
CHENYAOFO = 'https://github.com/chenyaofo/pytorch-cifar-models'
_AKAMASTER_CITATION = ('Yerlan Idelbayev. Proper ResNet Implementation for CIFAR10/CIFAR100 in PyTorch. '
                       f'{AKAMASTER} (bibtex key Idelbayev18a). Architecture: He, Zhang, Ren, Sun. Deep '
                       'Residual Learning for Image Recognition. CVPR 2016 (arXiv:1512.03385).')
_CHENYAOFO_CITATION = (f'chenyaofo. PyTorch CIFAR Models. {CHENYAOFO}. Architecture: He, Zhang, Ren, Sun. '
                       'Deep Residual Learning for Image Recognition. CVPR 2016 (arXiv:1512.03385).')


def _akamaster(depth: int, sha: str, top1: float, params: int, reported: str, size: Optional[int] = None,
               notes: str = '') -> ExternalCheckpoint:
    file_name = f'resnet{depth}-{sha}.th'
    return ExternalCheckpoint(
        name=f'akamaster/resnet{depth}', source=AKAMASTER,
        url=f'{AKAMASTER}/raw/master/pretrained_models/{file_name}', file_name=file_name, sha256_prefix=sha,
        arch=f'resnet{depth}', depth=depth, shortcut='A', num_classes=10, dataset='cifar10',
        reported_top1=top1,
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
        arch=f'resnet{depth}', depth=depth, shortcut='B', num_classes=10 if c10 else 100, dataset=dataset,
        reported_top1=top1,
        reported_top1_source=(f'{CHENYAOFO}#readme (Model Zoo, {"CIFAR-10" if c10 else "CIFAR-100"} table, '
                              f'"Top-1 Acc.(%)"; also the last line of logs/{dataset}/resnet{depth}/default.log)'),
        params=params, params_reported=reported,
        mean=CHENYAOFO_CIFAR10_MEAN if c10 else CHENYAOFO_CIFAR100_MEAN,
        std=CHENYAOFO_CIFAR10_STD if c10 else CHENYAOFO_CIFAR100_STD,
        license='bsd-3-clause', citation=_CHENYAOFO_CITATION, layout='chenyaofo',
        notes=('Trained 200 epochs (SGD nesterov, lr 0.1, wd 5e-4, cosine, batch 256); the reported number '
               'is the best epoch on the test set ("best val top1-acc" in the log).'))


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
    ``torch.hub.get_dir()/checkpoints/<file>``, i.e. ``$TORCH_HOME/hub/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / 'checkpoints' / get_external(name).file_name


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def verify_cached(name: Union[str, ExternalCheckpoint]) -> Path:
    """Check the cached file of ``name`` against the SHA-256 prefix in its name; returns its path.
    (torch.hub checks the hash only while downloading, never a file already in the cache.)"""
    entry = get_external(name)
    path = cache_path(entry)
    if not path.is_file():
        raise _not_cached(entry, path, None)
    digest = _sha256(path)
    if not digest.startswith(entry.sha256_prefix):
        size = path.stat().st_size
        if entry.size_bytes is not None and size != entry.size_bytes:
            what = (f'it is {size:,} bytes, the published file {entry.size_bytes:,} bytes '
                    f'({"truncated" if size < entry.size_bytes else "too long"})')
        else:
            what = f'it is {size:,} bytes; the content is corrupt or a different file'
        raise ExternalHashError(
            f'{entry.name}: cached file {path} fails its hash check: expected a SHA-256 starting with '
            f'{entry.sha256_prefix!r} (the prefix in its name), found {digest[:16]}...; {what}. '
            f'Fix: delete it (rm {path!s}) and call load_external({entry.name!r}) again to download it, '
            f'or copy a good copy of {entry.url} to that path.')
    return path


def _offline() -> bool:
    return os.environ.get(OFFLINE_ENV, '').strip().lower() in ('1', 'true', 'yes', 'on')


def _not_cached(entry: ExternalCheckpoint, path: Path, cause: Optional[BaseException]) -> ExternalNotCachedError:
    why = (f'downloading {entry.url} failed ({type(cause).__name__}: {cause})' if cause is not None else
           f'downloads are off (download=False or {OFFLINE_ENV}=1), so the network was not tried')
    return ExternalNotCachedError(
        f'{entry.name}: checkpoint file {entry.file_name} is not in the torch.hub cache and {why}. '
        f'Expected it at {path} (torch.hub.get_dir()/checkpoints/; torch.hub.get_dir() is '
        f'$TORCH_HOME/hub unless torch.hub.set_dir() was called; '
        f'TORCH_HOME={os.environ.get("TORCH_HOME", "<unset: ~/.cache/torch>")}). '
        f'Fix: on a machine with internet, download {entry.url} and copy it, unchanged and under '
        f'this exact name, to {path} (or point TORCH_HOME at a folder whose hub/checkpoints/ holds it).')


# ---- key conversion --------------------------------------------------------------------
def convert_state_dict(obj: Mapping[str, Any], layout: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Convert a checkpoint in ``layout`` ('akamaster' / 'chenyaofo') to qzoo's CifarResNet keys.

    Returns ``(state_dict, meta)``: ``meta`` holds the file's non-tensor top-level entries
    (akamaster's ``best_prec1``). BatchNorm ``num_batches_tracked`` buffers missing from
    files saved before PyTorch 0.4.1 are filled with 0 (they only matter with momentum=None)."""
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
    for key in [k for k in out if k.endswith('.running_mean')]:
        nbt = key[:-len('running_mean')] + 'num_batches_tracked'
        if nbt not in out:
            out[nbt] = torch.tensor(0, dtype=torch.long)
    return out, meta


def _check_fits(entry: ExternalCheckpoint, path: Path, model: nn.Module, sd: Mapping[str, torch.Tensor]) -> None:
    want = model.state_dict()
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    shapes = [f'{k}: file {tuple(sd[k].shape)}, model {tuple(want[k].shape)}' for k in want
              if k in sd and tuple(getattr(sd[k], 'shape', ())) != tuple(want[k].shape)]
    if not (missing or unexpected or shapes):
        return

    def show(xs):
        return ', '.join(xs[:8]) + (f', ... ({len(xs)} in all)' if len(xs) > 8 else '')
    found = '; '.join(f'{label} ({len(xs)}): {show(xs)}' for label, xs in
                      (('missing keys', missing), ('unexpected keys', unexpected), ('shape mismatches', shapes))
                      if xs)
    raise ExternalLayoutError(
        f'{entry.name}: the state dict in {path} does not fit qzoo {entry.arch} (shortcut {entry.shortcut!r}, '
        f'num_classes {entry.num_classes}) after converting the {entry.layout!r} key layout. Expected '
        f'{len(want)} state entries of that architecture; found {found}. Fix: if the file is not the published '
        f'{entry.url}, delete it (rm {path!s}) and download again; otherwise the registry entry '
        f'(arch/shortcut/num_classes/layout) or the key conversion in qzoo/external.py is wrong.')


def _resolve(dotted: str):
    mod, _, attr = dotted.rpartition('.')
    return getattr(importlib.import_module(mod), attr)


def _build(entry: ExternalCheckpoint) -> nn.Module:
    from .models import MODEL_FACTORIES, CifarResNet
    from .models._common import cfg
    if entry.arch in MODEL_FACTORIES:
        from .registry import create_model
        return create_model(entry.arch, shortcut=entry.shortcut, num_classes=entry.num_classes)
    # depths qzoo does not register (resnet1202): the same class, with a cfg of the same form
    model = CifarResNet(depth=entry.depth, shortcut=entry.shortcut, num_classes=entry.num_classes)
    model.pretrained_cfg = cfg(architecture=entry.arch, paper_ids='arXiv:1512.03385')
    return model


# ---- loading ---------------------------------------------------------------------------
def load_external(name: Union[str, ExternalCheckpoint], *, progress: bool = False, map_location: Any = 'cpu',
                  download: Optional[bool] = None) -> nn.Module:
    """Build qzoo's conventional CifarResNet with the weights of external checkpoint ``name``.

    The file comes from torch.hub's cache (``$TORCH_HOME/hub/checkpoints/<file>``) or is
    downloaded there by ``torch.hub.load_state_dict_from_url(check_hash=True,
    weights_only=True)``; a cached file is checked against the SHA-256 prefix in its name.
    ``download=False`` (or ``QZOO_OFFLINE=1`` when ``download`` is None) never tries the
    network. The state dict is converted to qzoo's keys and loaded strictly;
    ``model.pretrained_cfg`` gets the checkpoint's own ``mean``/``std`` (normalise inputs with
    them) and its provenance (``source``, ``url``, ``tag``, ``reported_top1``, ``dataset``).
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
    try:
        extra = [_resolve(g) for g in entry.safe_globals]
        with torch.serialization.safe_globals(extra):
            obj = torch.hub.load_state_dict_from_url(
                entry.url, map_location=map_location, progress=progress, check_hash=True,
                weights_only=True, file_name=entry.file_name)
    except (URLError, HTTPException, OSError) as e:
        if downloading and not path.is_file():   # no connection, HTTP error, cut transfer (no partial file kept)
            raise _not_cached(entry, path, getattr(e, 'reason', e)) from e
        raise ExternalLayoutError(
            f'{entry.name}: {path} could not be read by torch.load ({type(e).__name__}: {e}). Fix: delete '
            f'it (rm {path!s}) and call load_external({entry.name!r}) again to download it.') from e
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
        raise ExternalLayoutError(
            f'{entry.name}: {path} could not be read by torch.load: {e}. Fix: delete it (rm {path!s}) '
            f'and call load_external({entry.name!r}) again to download it.') from e
    except EOFError as e:
        raise ExternalLayoutError(
            f'{entry.name}: {path} could not be read by torch.load ({type(e).__name__}: {e}). Fix: delete '
            f'it (rm {path!s}) and call load_external({entry.name!r}) again to download it.') from e

    if not isinstance(obj, Mapping):
        raise ExternalLayoutError(
            f'{entry.name}: {path} holds a {type(obj).__name__}, expected a state dict (a mapping of '
            f'parameter names to tensors). Fix: if the file is not the published {entry.url}, delete it '
            f'(rm {path!s}) and download again.')
    sd, meta = convert_state_dict(obj, entry.layout)
    model = _build(entry)
    _check_fits(entry, path, model, sd)
    model.load_state_dict(sd, strict=True)
    model.pretrained_cfg = dict(
        getattr(model, 'pretrained_cfg', None) or {}, architecture=entry.arch, tag=entry.tag,
        source='external', external_name=entry.name, origin=entry.source, url=entry.url,
        file=entry.file_name, hf_hub_id=None, num_classes=entry.num_classes, mean=tuple(entry.mean),
        std=tuple(entry.std), license=entry.license, dataset=entry.dataset,
        reported_top1=entry.reported_top1, reported_top1_source=entry.reported_top1_source,
        citation=entry.citation, checkpoint_meta=meta)
    model.default_cfg = model.pretrained_cfg
    return model.eval()
