"""Register qzoo's model factories with timm and mirror timm's create/list API.

``import qzoo`` calls :func:`register_all`. A qzoo name that timm already uses
for one of its own models is never overwritten: the qzoo model is registered
as ``qzoo_<name>`` instead (with a warning), and ``qzoo.create_model(<name>)``
still builds the qzoo model.
"""
from __future__ import annotations

import difflib
import fnmatch
import functools
import sys
import warnings
from typing import Dict, List

import timm
from timm.models import register_model
from timm.models._registry import _model_entrypoints

from .models import ENTRYPOINTS

__all__ = ['register_all', 'create_model', 'list_models', 'timm_name', 'ALIAS_PREFIX']

ALIAS_PREFIX = 'qzoo_'
#: qzoo name -> the name it has in timm's registry
_TIMM_NAMES: Dict[str, str] = {}


def _is_ours(fn) -> bool:
    return getattr(fn, '__module__', '').split('.')[0] == 'qzoo'


def _register(name: str, fn) -> str:
    existing = _model_entrypoints.get(name)
    if existing is None:
        register_model(fn)
        return name
    if _is_ours(existing):  # already registered by this qzoo (e.g. a module reload)
        return name
    alias = ALIAS_PREFIX + name
    warnings.warn(f"timm already has a model named {name!r}; qzoo's {name} is registered in timm as "
                  f"{alias!r} (qzoo.create_model({name!r}) builds qzoo's)", stacklevel=3)

    @functools.wraps(fn)
    def aliased(*args, **kwargs):
        return fn(*args, **kwargs)
    aliased.__name__ = aliased.__qualname__ = alias
    mod = sys.modules[fn.__module__]
    if name in getattr(mod, 'default_cfgs', {}):
        mod.default_cfgs[alias] = mod.default_cfgs[name]
    if alias not in _model_entrypoints:
        register_model(aliased)
    return alias


def register_all() -> None:
    for name, fn in ENTRYPOINTS.items():
        _TIMM_NAMES[name] = _register(name, fn)


def timm_name(name: str) -> str:
    """The name under which qzoo model ``name`` is registered in timm."""
    base, _, tag = name.partition('.')
    if base not in _TIMM_NAMES:
        raise ValueError(_unknown(base))
    return _TIMM_NAMES[base] + ('.' + tag if tag else '')


def _unknown(name: str) -> str:
    close = difflib.get_close_matches(name, list(ENTRYPOINTS), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ''
    return (f"unknown qzoo model {name!r}{hint} (qzoo.list_models() lists all {len(ENTRYPOINTS)}; "
            f"for timm's own models use timm.create_model)")


def create_model(model_name: str, pretrained: bool = False, **kwargs):
    """``timm.create_model`` for qzoo names (``'qresnet20'``, ``'qresnet20.<tag>'``); names with a
    source prefix (``'hf-hub:...'``, ``'local-dir:...'``) go to timm unchanged."""
    if ':' in model_name:
        return timm.create_model(model_name, pretrained=pretrained, **kwargs)
    return timm.create_model(timm_name(model_name), pretrained=pretrained, **kwargs)


def list_models(filter: str = '', pretrained: bool = False) -> List[str]:
    """qzoo model names matching the glob ``filter``; with ``pretrained=True`` the
    tagged names that have published weights."""
    if pretrained:
        names = [n for n in timm.list_pretrained() if n.split('.')[0] in _TIMM_NAMES.values()]
    else:
        names = sorted(ENTRYPOINTS, key=timm.models._registry._natural_key)
    return [n for n in names if not filter or fnmatch.fnmatchcase(n, filter)]
