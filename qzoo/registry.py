"""Register qzoo's models with timm, each with its published weights.

``import qzoo`` calls :func:`register_all`: every factory of :mod:`qzoo.models`
(``qzoo.models.MODEL_FACTORIES``) is registered with timm under its name, with one
pretrained cfg per published weights record (:mod:`qzoo.weights`); the record marked
default is what ``pretrained=True`` loads. A name timm already uses for one of its own
models is never overwritten: qzoo's is registered as ``qzoo_<name>`` (with a warning) and
``qzoo.create_model(<name>)`` still builds qzoo's.

``pretrained=True`` (through timm or qzoo) loads weights only after checking their SHA-256,
and only from safetensors: the published record's file, a ``pretrained_cfg_overlay``
``file`` / ``state_dict`` the caller gives, or the folder / hub repository of
``timm.create_model('local-dir:...' | 'hf-hub:...')``. Weights that load into a tagged
architecture also bring the arguments they were trained with (``num_classes``, ``in_chans``).

The weights manifest is read once, here. If it is damaged, ``import qzoo`` still works (with a
warning): models build, and ``pretrained=True`` raises :class:`~qzoo.errors.CheckpointError`
naming the file.
"""
from __future__ import annotations

import difflib
import fnmatch
import functools
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import timm
import torch
from timm.models import generate_default_cfgs, register_model
from timm.models._registry import _model_entrypoints

from .errors import CheckpointError
from .models import BASE_CFGS, MODEL_FACTORIES, RUNTIME_KWARGS
from .serialization import load_folder, load_hf_repo, load_weights
from .weights import Weights, all_weights, default_weights, get_weights

__all__ = ['register_all', 'create_model', 'list_models', 'timm_name', 'is_model', 'ALIAS_PREFIX',
           'pretrained_state_dict', 'tag_cfg', 'check_size', 'MAX_MODEL_SIZE']

ALIAS_PREFIX = 'qzoo_'
#: qzoo name -> the name it has in timm's registry
_TIMM_NAMES: Dict[str, str] = {}
#: timm reads the pretrained cfgs of the entry points registered from this module here
default_cfgs: Dict[str, Any] = {}
#: why the manifest could not be read at registration, if it could not
_MANIFEST_ERROR: Optional[CheckpointError] = None


# ---- weights --------------------------------------------------------------------------------
def _records() -> Dict[str, Weights]:
    global _MANIFEST_ERROR
    try:
        return all_weights()
    except CheckpointError as e:
        _MANIFEST_ERROR = e
        warnings.warn(f'qzoo: published weights are unavailable ({e}); models build, pretrained=True fails',
                      stacklevel=3)
        return {}


def _tag_of(pretrained_cfg) -> Optional[str]:
    if isinstance(pretrained_cfg, str):
        return pretrained_cfg or None
    return None


def _record_for(name: str, pretrained_cfg, pretrained: bool) -> Optional[Weights]:
    """The published record a factory call refers to: a tag (what timm passes for
    ``'<arch>.<tag>'``), else for ``pretrained=True`` without a cfg the architecture's default."""
    if _MANIFEST_ERROR is not None and (pretrained or _tag_of(pretrained_cfg)):
        raise _MANIFEST_ERROR
    tag = _tag_of(pretrained_cfg)
    if tag:
        return get_weights(f'{name}.{tag}')
    if pretrained and pretrained_cfg is None:
        w = default_weights(name)
        if w is None:
            raise CheckpointError(
                f'no published weights for {name!r} yet. Fix: use pretrained=False, pick published weights '
                f'(qzoo.list_models(pretrained=True)), or load your own with qzoo.hub.from_pretrained(<folder|file>)')
        return w
    return None


def pretrained_state_dict(name: str, record: Optional[Weights], pretrained_cfg, overlay) -> Tuple[Dict, str]:
    """``(state_dict, description of its source)`` for ``pretrained=True``: the caller's overlay
    ``state_dict`` / ``file`` first, then a ``local-dir:`` / ``hf-hub:`` cfg, then the record."""
    overlay = dict(overlay or {})
    if overlay.get('state_dict') is not None:
        return overlay['state_dict'], 'the state_dict passed in pretrained_cfg_overlay'
    if overlay.get('file'):
        sd, _ = load_weights(overlay['file'], fix='pass the path of a .safetensors file')
        return sd, str(overlay['file'])
    cfg = pretrained_cfg if isinstance(pretrained_cfg, dict) else {}
    if cfg.get('source') == 'local-dir':
        sd, _, file = load_folder(cfg['file'])
        return sd, str(file)
    if cfg.get('source') == 'hf-hub':
        sd, _, file = load_hf_repo(cfg['hf_hub_id'], cache_dir=overlay.get('cache_dir'))
        return sd, str(file)
    if record is None:
        raise CheckpointError(f'no weights to load for {name!r}: give a published tag, '
                              f'pretrained_cfg_overlay=dict(file=...), or use pretrained=False')
    sd, _ = load_weights(record.file, record.sha256,
                         fix=f'restore {record.folder.name}/ from git, or set $QZOO_CHECKPOINTS to a complete copy')
    return sd, str(record.file)


#: the most values (parameters and buffers) a model built with arguments may hold: 10**9, 4 GB as float32
MAX_MODEL_SIZE = 1_000_000_000


def check_size(name: str, fn: Callable, kwargs: Dict[str, Any]) -> None:
    """ValueError when factory ``fn`` of ``name`` would build a model of more than :data:`MAX_MODEL_SIZE` values
    with ``kwargs`` (arguments from a recipe, a config.json or a manifest: ``hidden=[3000000000]``); counted on
    PyTorch's ``meta`` device, so nothing is allocated. Builds without architecture arguments (the registered
    defaults, all small) and builds on ``meta`` are not probed."""
    args = {k: v for k, v in kwargs.items() if k not in RUNTIME_KWARGS}
    if not args or torch.get_default_device().type == 'meta':
        return
    with torch.device('meta'):
        probe = fn(pretrained=False, **args)
    n = sum(t.numel() for t in probe.state_dict().values())
    if n > MAX_MODEL_SIZE:
        raise ValueError(f'{name} with {args} would hold {n:,} parameters and buffers ({4 * n / 1e9:,.1f} GB as '
                         f'float32), more than qzoo builds ({MAX_MODEL_SIZE:,}); nothing was allocated. Fix: check '
                         f'the model arguments (widths, hidden sizes, num_classes, in_chans)')


def _entry(name: str, fn: Callable) -> Callable:
    """The callable timm registers for factory ``fn``: resolves weights, checks the size, then builds."""
    @functools.wraps(fn)
    def entry(pretrained: bool = False, **kwargs):
        record = _record_for(name, kwargs.get('pretrained_cfg'), pretrained)
        if record is not None:
            for k, v in record.model_args.items():
                kwargs.setdefault(k, v)
        check_size(name, fn, kwargs)
        if pretrained:
            sd, source = pretrained_state_dict(name, record, kwargs.get('pretrained_cfg'),
                                               kwargs.get('pretrained_cfg_overlay'))
            kwargs['pretrained_cfg_overlay'] = dict(kwargs.get('pretrained_cfg_overlay') or {}, state_dict=sd)
            kwargs['pretrained_cfg_overlay'].pop('file', None)
        try:
            model = fn(pretrained=pretrained, **kwargs)
        except RuntimeError as e:
            if not pretrained or 'Error(s) in loading state_dict' not in str(e):
                raise
            raise CheckpointError(f'the weights from {source} do not fit {name} with arguments '
                                  f'{ {k: v for k, v in kwargs.items() if k not in RUNTIME_KWARGS} }: '
                                  f'{str(e).splitlines()[1:3]}. Fix: use the architecture and arguments the weights '
                                  f'were saved with (their config.json), or change num_classes/in_chans only') from None
        if pretrained:
            model.pretrained_cfg.pop('state_dict', None)
            model.pretrained_cfg['file'] = source
        args = {k: v for k, v in kwargs.items() if k not in RUNTIME_KWARGS and v is not None}
        model._model_args = dict(getattr(model, '_model_args', {}), **args)
        return model
    entry.__module__ = __name__
    return entry


# ---- registration ---------------------------------------------------------------------------
def tag_cfg(w: Weights) -> Dict[str, Any]:
    """timm's pretrained cfg for published weights ``w``: the architecture's cfg with the record's
    class count, input size, class names, license, file and a description."""
    return dict(BASE_CFGS[w.architecture], num_classes=w.num_classes, input_size=tuple(w.input_size),
                label_names=w.label_names, license=w.license, file=str(w.file),
                description=f'{w.architecture} trained on {w.dataset} ({w.experiment}), seed {w.seed}: test '
                            f'{w.primary_metric} {w.metric:.2f}')


def _cfgs(name: str, records: List[Weights]) -> Dict[str, Any]:
    cfgs = {f'{w.name}*' if w.default else w.name: tag_cfg(w)
            for w in sorted(records, key=lambda w: (not w.default, w.name))}
    if not cfgs:  # an architecture without weights: its cfg, untagged
        cfgs[name] = dict(BASE_CFGS[name])
    return cfgs


def _register(name: str, fn: Callable, records: List[Weights]) -> str:
    existing = _model_entrypoints.get(name)
    if existing is not None and getattr(existing, '__module__', '').split('.')[0] != 'qzoo':
        alias = ALIAS_PREFIX + name
        warnings.warn(f"timm already has a model named {name!r}; qzoo's {name} is registered in timm as {alias!r} "
                      f"(qzoo.create_model({name!r}) builds qzoo's)", stacklevel=3)
        name_in_timm = alias
    else:
        name_in_timm = name
    entry = _entry(name, fn)
    entry.__name__ = entry.__qualname__ = name_in_timm
    cfgs = _cfgs(name, records)
    default_cfgs.update(generate_default_cfgs({k.replace(name, name_in_timm, 1): v for k, v in cfgs.items()}))
    globals()[name_in_timm] = entry
    with warnings.catch_warnings():  # re-registering our own entry (a reload) is expected
        warnings.simplefilter('ignore')
        register_model(entry)
    return name_in_timm


def register_all() -> None:
    """Register every qzoo factory with timm (idempotent)."""
    records = _records()
    by_arch: Dict[str, List[Weights]] = {}
    for w in records.values():
        by_arch.setdefault(w.architecture, []).append(w)
    unknown = sorted(set(by_arch) - set(MODEL_FACTORIES))
    if unknown:
        warnings.warn(f'qzoo: the weights manifest names architectures qzoo does not define: {unknown}', stacklevel=2)
    for name, fn in MODEL_FACTORIES.items():
        _TIMM_NAMES[name] = _register(name, fn, by_arch.get(name, []))


# ---- timm-like API --------------------------------------------------------------------------
def is_model(name: str) -> bool:
    return name.partition('.')[0] in MODEL_FACTORIES


def timm_name(name: str) -> str:
    """The name under which qzoo model ``name`` (optionally ``name.tag``) is registered in timm."""
    base, _, tag = name.partition('.')
    if base not in _TIMM_NAMES:
        raise ValueError(_unknown(base))
    return _TIMM_NAMES[base] + ('.' + tag if tag else '')


def _unknown(name: str) -> str:
    close = difflib.get_close_matches(name, list(MODEL_FACTORIES), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ''
    return (f"unknown qzoo model {name!r}{hint} (qzoo.list_models() lists all {len(MODEL_FACTORIES)}; "
            f"for timm's own models use timm.create_model)")


def create_model(model_name: str, pretrained: bool = False, **kwargs):
    """``timm.create_model`` for qzoo names (``'qresnet20'``, ``'qcnn_w8.cwru-clean-s1'``). Sources
    (``'local-dir:...'``, ``'hf-hub:...'``) are loaded by ``qzoo.create_model`` (:func:`qzoo.hub.create_model`),
    which checks their weights; here they are refused."""
    if ':' in str(model_name):
        raise ValueError(f'{model_name!r}: qzoo.registry.create_model builds qzoo architectures by name; load a '
                         f'local-dir:/hf-hub: source with qzoo.create_model or qzoo.from_pretrained, which check it')
    return timm.create_model(timm_name(model_name), pretrained=pretrained, **kwargs)


def list_models(filter: str = '', pretrained: bool = False) -> List[str]:
    """qzoo architecture names matching the glob ``filter``, naturally sorted; with
    ``pretrained=True`` the published weights instead, as ``<architecture>.<tag>``."""
    from timm.models._registry import _natural_key
    if pretrained:
        names = sorted(_records(), key=_natural_key)
    else:
        names = sorted(MODEL_FACTORIES, key=_natural_key)
    return [n for n in names if not filter or fnmatch.fnmatchcase(n, filter)]
