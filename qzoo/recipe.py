"""Training recipes: the :class:`Recipe` dataclass, read from YAML and checked before anything is built.

A recipe file is a YAML mapping of the fields below; ``base: other.yaml`` (relative to the file)
inherits another file, whose values the file's own replace (mappings are merged key by key).
Recipe files and their bases are read only as regular files of at most 1 MiB, at most
:data:`MAX_BASES` bases deep, and their YAML (like an override's) may expand to at most
100,000 values through aliases (:mod:`qzoo.bounds`). :func:`load_recipe` layers, in order: the
defaults, the file (with its bases), keyword values, then ``key=value`` overrides with dotted
keys for nested values (``model_args.width=8``, ``smoke.epochs=2``); values are read as YAML.

Every field has a type, a range and a one-line doc (``python recipes/train.py --help`` lists
them). A value of the wrong type or out of range, an unknown key (with the nearest valid name),
an unknown model, dataset or dataset option, bad YAML or a ``base:`` cycle raise
:class:`~qzoo.errors.RecipeError` naming where the value came from (file and line, or the
override), and so does a warm-up longer than the run (``warmup_epochs`` > ``epochs``). Two YAML
details: numbers written without a dot (``1e-4``) are read as strings by YAML and accepted as
numbers here; booleans must be YAML booleans (``true``/``false``, unquoted), and ``amp: off``
(which YAML reads as false) means ``'off'``. ``model_args`` and ``data_args``
are free-form mappings passed to ``qzoo.create_model`` and ``qzoo.data.load_dataset``.

A run records the resolved recipe as YAML (:meth:`Recipe.to_yaml`, sorted keys) and its SHA-256
(:meth:`Recipe.sha256`); ``--resume`` refuses a checkpoint written under another recipe.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from .bounds import MAX_YAML_BYTES, as_number, device_of, load_yaml, read_bounded
from .errors import RecipeError
from .fileio import sha256_bytes

__all__ = ['Recipe', 'load_recipe', 'recipe_help', 'override_tag', 'RecipeError']


@dataclass(frozen=True)
class _Spec:
    """A field's type (``kind``), range and doc."""
    kind: str                   # str | int | float | bool | bool_or_auto | compile | choice | mapping | betas | device
                                # | smoke
    doc: str
    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False       # lo excluded
    hi_open: bool = False       # hi excluded
    nullable: bool = False
    choices: Tuple[str, ...] = ()
    #: left out of :meth:`Recipe.to_yaml` while at its default: a key added after runs were published, so that
    #: their recorded recipe.yaml and recipe_sha256 stay what they are
    omit_default: bool = False

    def want(self) -> str:
        """What a valid value looks like, in words."""
        base = {'int': 'a whole number', 'float': 'a number', 'bool': 'true or false (a YAML boolean, unquoted)',
                'bool_or_auto': "true, false or 'auto'", 'mapping': 'a mapping', 'str': 'a name',
                'compile': "true, false, 'auto' or a torch.compile mode (" + ', '.join(map(repr, COMPILE_MODES)) + ')',
                'device': "'auto' (cuda when available), 'cpu', 'cuda' or 'cuda:<index>'",
                'betas': 'two numbers in [0, 1)', 'smoke': 'a mapping'}.get(self.kind, '')
        if self.kind == 'choice':
            base = 'one of ' + ', '.join(repr(c) for c in self.choices)
        if self.lo is not None and self.hi is not None:
            base += f" in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            base += f" {'>' if self.lo_open else '>='} {_num(self.lo)}"
        return base + (' or null' if self.nullable else '')


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def _f(default, doc: str, kind: str, **range_):
    """A dataclass field with its spec (mutable defaults are copied per instance)."""
    meta = {'spec': _Spec(kind, doc, **range_)}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


#: the modes of ``torch.compile`` a recipe's ``compile`` may name ('reduce-overhead' and 'max-autotune' use CUDA graphs)
COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')

SMOKE_SPEC: Dict[str, _Spec] = {
    'train': _Spec('int', 'training samples kept (a seeded random subset; null: all)', lo=1, nullable=True),
    'val': _Spec('int', 'validation samples kept (null: all)', lo=1, nullable=True),
    'test': _Spec('int', 'test samples kept (null: all)', lo=1, nullable=True),
    'epochs': _Spec('int', 'epochs of a smoke run', lo=1),
    'batch_size': _Spec('int', 'largest batch of a smoke run', lo=1),
}
SMOKE_DEFAULT = {'train': 64, 'val': 32, 'test': 32, 'epochs': 1, 'batch_size': 16}


@dataclass(frozen=True)
class Recipe:
    """A checked training recipe (see the module doc). Build it with :func:`load_recipe`; ``Recipe(**values)``
    and :meth:`replace` check it the same way."""
    name: Optional[str] = _f(None, "run name, a folder name: letters, digits, . _ + = - (default '<model>-<data>')",
                             'str', nullable=True)
    model: Optional[str] = _f(None, 'qzoo model name (qzoo.list_models()); required', 'str')
    model_args: Dict[str, Any] = _f({}, 'keyword arguments of qzoo.create_model (free-form)', 'mapping')
    data: Optional[str] = _f(None, 'dataset name (qzoo.data.list_datasets()); required', 'str')
    data_args: Dict[str, Any] = _f({}, "options of qzoo.data.load_dataset (the dataset's options)", 'mapping')
    epochs: int = _f(10, 'training epochs', 'int', lo=1)
    batch_size: int = _f(128, 'global training batch (split across DDP ranks)', 'int', lo=1)
    eval_batch_size: int = _f(1024, 'evaluation batch', 'int', lo=1)
    optimizer: str = _f('sgd', 'SGD (momentum, nesterov) or AdamW (betas)', 'choice', choices=('sgd', 'adamw'))
    lr: float = _f(0.1, 'peak learning rate', 'float', lo=0, lo_open=True)
    momentum: float = _f(0.9, 'SGD momentum', 'float', lo=0, hi=1, hi_open=True)
    nesterov: bool = _f(True, 'SGD with Nesterov momentum', 'bool')
    betas: List[float] = _f([0.9, 0.999], 'AdamW betas', 'betas')
    weight_decay: float = _f(5.0e-4, 'weight decay (norms and biases get none)', 'float', lo=0)
    quad_lr_scale: float = _f(1.0, 'ReLinear: learning-rate scale of the quadratic-only terms', 'float', lo=0)
    quad_weight_decay: Optional[float] = _f(None, 'ReLinear: their weight decay (null: weight_decay)', 'float',
                                            lo=0, nullable=True)
    schedule: str = _f('cosine', 'learning-rate schedule after warm-up', 'choice', choices=('cosine', 'constant'))
    warmup_epochs: float = _f(0.0, 'linear warm-up, in epochs (fractions allowed)', 'float', lo=0)
    min_lr_ratio: float = _f(0.0, 'floor of the cosine schedule, as a fraction of lr', 'float', lo=0, hi=1)
    label_smoothing: float = _f(0.0, 'label smoothing of the classification loss', 'float', lo=0, hi=1, hi_open=True)
    grad_clip: Optional[float] = _f(None, 'max gradient norm (null: no clipping)', 'float', lo=0, lo_open=True,
                                    nullable=True)
    select: str = _f('best_val', 'published weights: best validation epoch or the last', 'choice',
                     choices=('best_val', 'last'))
    amp: str = _f('auto', 'autocast: auto (bf16 on CUDA, off on the CPU), bf16 or off', 'choice',
                  choices=('auto', 'bf16', 'off'))
    channels_last: Any = _f('auto', 'channels_last memory format (auto: on CUDA, for images)', 'bool_or_auto')
    compile: Any = _f(False, "torch.compile the model: true (every device, torch's default mode), a mode name (every "
                             "device, that mode), 'auto' (on CUDA only, in the mode qzoo measured fastest: "
                             'qzoo.engine.CUDA_COMPILE_MODE) or false', 'compile')
    seed: int = _f(0, 'seed of initialisation, data order and augmentation', 'int', lo=0, hi=2 ** 64 - 1)
    deterministic: bool = _f(False, 'deterministic algorithms (slower on CUDA)', 'bool')
    device: str = _f('auto', 'device (auto: cuda when available)', 'device')
    nan_check_every: int = _f(50, 'steps between (synchronising) non-finite loss checks', 'int', lo=1)
    monitor_every: Optional[int] = _f(None, 'steps between per-step diagnostics in monitor.jsonl (gradient norms '
                                             'per layer, quadratic-term outputs; qzoo.monitor); null: off', 'int',
                                      lo=1, nullable=True, omit_default=True)
    smoke: Dict[str, Any] = _f(SMOKE_DEFAULT, 'what --smoke keeps: ' + ', '.join(SMOKE_SPEC), 'smoke')

    def __post_init__(self):
        values = _check({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, {})
        for k, v in values.items():
            object.__setattr__(self, k, v)

    def to_dict(self) -> Dict[str, Any]:
        """Every field, as plain YAML-able values (a deep copy)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_yaml(self) -> str:
        """The resolved recipe as runs record it (``recipe.yaml``): every field, keys sorted; a key added after the
        first runs were published (``omit_default``) only when it is not at its default."""
        d, specs, defaults = self.to_dict(), self.specs(), self.defaults()
        return yaml.safe_dump({k: v for k, v in d.items() if not (specs[k].omit_default and v == defaults[k])},
                              sort_keys=True)

    def sha256(self) -> str:
        """SHA-256 of :meth:`to_yaml` (``recipe_sha256`` in results.json and checkpoints)."""
        return sha256_bytes(self.to_yaml())

    def replace(self, **changes) -> 'Recipe':
        """A checked copy with ``changes``."""
        return Recipe(**{**self.to_dict(), **changes})

    def for_smoke(self) -> 'Recipe':
        """The ``--smoke`` variant: ``smoke.epochs`` epochs, batches of at most ``smoke.batch_size``
        (evaluation at most 64), a warm-up no longer than the run, on the CPU, no compilation, no autocast."""
        sm = self.smoke
        return self.replace(epochs=sm['epochs'], warmup_epochs=min(self.warmup_epochs, sm['epochs']),
                            batch_size=min(self.batch_size, sm['batch_size']),
                            eval_batch_size=min(self.eval_batch_size, 64), device='cpu', compile=False, amp='off')

    @classmethod
    def specs(cls) -> Dict[str, _Spec]:
        return {f.name: f.metadata['spec'] for f in dataclasses.fields(cls)}

    @classmethod
    def defaults(cls) -> Dict[str, Any]:
        return {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                for f in dataclasses.fields(cls)}


# ---- checking values ------------------------------------------------------------------------
_NAME = re.compile(r'[A-Za-z0-9][\w.+=-]*')  # a run name is a folder name
_REMOVED = {'fault': 'fault injection is not a recipe key: tests inject faults by monkeypatching the engine'}


def _unknown_key(key: str, valid: Sequence[str], where: str, prefix: str = '') -> RecipeError:
    if key in _REMOVED and not prefix:
        return RecipeError(f'{where}: {key!r} is not a recipe key ({_REMOVED[key]})')
    close = difflib.get_close_matches(str(key), list(valid), n=1, cutoff=0.6)
    hint = f'; did you mean {prefix + close[0]!r}?' if close else ''
    under = f' under {prefix[:-1]}' if prefix else ''
    return RecipeError(f'{where}: unknown recipe key {prefix + str(key)!r}{hint} Valid keys{under}: '
                       + ', '.join(valid))


def _bad(key: str, spec: _Spec, value, where: str) -> RecipeError:
    got = f'{value!r}' + (' (a string)' if isinstance(value, str) and spec.kind in ('bool', 'bool_or_auto', 'compile')
                          else '')
    return RecipeError(f'{where}: {key} must be {spec.want()}, got {got} ({key}: {spec.doc})')


def _in_range(spec: _Spec, v) -> bool:
    if spec.lo is not None and (v < spec.lo or (spec.lo_open and v == spec.lo)):
        return False
    return spec.hi is None or (v < spec.hi if spec.hi_open else v <= spec.hi)


def _check_number(key: str, spec: _Spec, value, where: str):
    v = as_number(value, spec.kind == 'int')
    if v is None or not _in_range(spec, v):
        raise _bad(key, spec, value, where)
    return v


def _check_value(key: str, spec: _Spec, value, where: str):
    """``value`` checked against ``spec`` and normalised (numeric strings, ``amp: off``); else RecipeError."""
    if value is None and spec.nullable:
        return None
    kind = spec.kind
    if kind in ('int', 'float'):
        return _check_number(key, spec, value, where)
    if kind == 'bool':
        if isinstance(value, bool):
            return value
    elif kind == 'bool_or_auto':
        if isinstance(value, bool) or value == 'auto':
            return value
    elif kind == 'compile':
        if isinstance(value, bool) or value == 'auto' or value in COMPILE_MODES:
            return value
    elif kind == 'choice':
        if key == 'amp' and value is False:  # YAML 1.1 reads an unquoted `off` as false
            return 'off'
        if isinstance(value, str) and value in spec.choices:
            return value
    elif kind == 'str':
        if isinstance(value, str) and (_NAME.fullmatch(value) or key != 'name' and value.strip()):
            return value
    elif kind == 'mapping':
        if value is None:
            return {}
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return copy.deepcopy(value)
    elif kind == 'betas':
        if isinstance(value, (list, tuple)) and len(value) == 2:
            nums = [as_number(b, False) for b in value]
            if all(b is not None and 0 <= b < 1 for b in nums):
                return nums
    elif kind == 'device':
        return _check_device(key, spec, value, where)
    elif kind == 'smoke':
        return _check_smoke(value, where)
    raise _bad(key, spec, value, where)


def _check_device(key: str, spec: _Spec, value, where: str) -> str:
    """A device qzoo computes on (:func:`qzoo.bounds.device_of`); whether this machine has it is checked when a
    run starts, so that a GPU recipe still loads elsewhere."""
    try:
        if isinstance(value, str):
            device_of(value, key, ValueError, available=False)
            return value
    except ValueError:
        pass
    raise _bad(key, spec, value, where)


def _check_smoke(value, where: str) -> Dict[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise RecipeError(f'{where}: smoke must be a mapping of {", ".join(SMOKE_SPEC)}, got {value!r}')
    out = dict(SMOKE_DEFAULT)
    for k, v in value.items():
        if k not in SMOKE_SPEC:
            raise _unknown_key(k, list(SMOKE_SPEC), where, prefix='smoke.')
        out[k] = _check_value(f'smoke.{k}', SMOKE_SPEC[k], v, where)
    return out


def _check(values: Dict[str, Any], sources: Dict[str, str]) -> Dict[str, Any]:
    """Every field of ``values`` checked and normalised; ``sources`` says where each came from."""
    specs = Recipe.specs()
    for k in values:
        if k not in specs:
            raise _unknown_key(k, list(specs), sources.get(k, 'recipe'))
    for key in ('model', 'data'):
        if values.get(key) is None:
            raise RecipeError(f'the recipe needs {key!r} ({specs[key].doc}); none of the recipe file, its bases '
                              'and the overrides gives it')
    out = {k: _check_value(k, specs[k], v, sources.get(k, 'recipe')) for k, v in values.items()}
    _check_names(out, sources)
    if out['warmup_epochs'] > out['epochs']:
        raise RecipeError(f"{sources.get('warmup_epochs', 'recipe')}: warmup_epochs {out['warmup_epochs']:g} is longer "
                          f"than the run (epochs {out['epochs']}, from {sources.get('epochs', 'recipe')}): the learning "
                          f"rate would never reach lr. Fix: warmup_epochs of at most {out['epochs']}")
    if out.get('monitor_every') and out.get('compile'):
        raise RecipeError(f"{sources.get('monitor_every', 'recipe')}: monitor_every records through module hooks, "
                          'which a compiled model does not run; set compile: false for a monitored run')
    if not out.get('name'):
        out['name'] = f"{out['model']}-{out['data']}"
    return out


def _check_names(values: Dict[str, Any], sources: Dict[str, str]) -> None:
    """The model and dataset exist, and ``data_args`` holds only the dataset's options."""
    import qzoo
    from qzoo import data as qdata
    for key, valid in (('model', qzoo.list_models()), ('data', qdata.list_datasets())):
        if values[key] not in valid:
            close = difflib.get_close_matches(values[key], valid, n=1, cutoff=0.6)
            hint = f'; did you mean {close[0]!r}?' if close else ''
            raise RecipeError(f'{sources.get(key, "recipe")}: unknown {key} {values[key]!r}{hint} Valid: '
                              + ', '.join(valid))
    options = qdata.options(values['data'])
    for k in values['data_args']:
        if k not in options:
            close = difflib.get_close_matches(k, list(options), n=1, cutoff=0.6)
            hint = f'; did you mean data_args.{close[0]}?' if close else ''
            raise RecipeError(f'{sources.get("data_args", "recipe")}: {values["data"]!r} has no option {k!r}{hint} '
                              f'Its options: ' + ', '.join(f'{o}={d!r}' for o, d in options.items()))


# ---- reading YAML ---------------------------------------------------------------------------
def _yaml_mapping(path: Path) -> Tuple[Dict[str, Any], Dict[str, int]]:
    """The mapping in YAML file ``path`` and the line of each top-level key."""
    try:
        text = read_bounded(path, MAX_YAML_BYTES, 'recipe', RecipeError,
                            'give the path of a recipe file (recipes/<task>/<model>.yaml)').decode('utf-8')
    except FileNotFoundError:
        raise RecipeError(f'recipe {path} not found (recipes live in recipes/<task>/<model>.yaml)') from None
    except UnicodeDecodeError as e:
        raise RecipeError(f'recipe {path} cannot be read: {e}') from None
    try:
        data, node = load_yaml(text, f'recipe {path}', RecipeError)
    except yaml.YAMLError as e:
        mark = getattr(e, 'problem_mark', None)
        at = f' at line {mark.line + 1}, column {mark.column + 1}' if mark is not None else ''
        problem = getattr(e, 'problem', None) or str(e).splitlines()[0]
        raise RecipeError(f'recipe {path} is not valid YAML{at}: {problem}. Fix the file (a recipe is a YAML '
                          'mapping of key: value lines)') from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise RecipeError(f'recipe {path} must be a YAML mapping of key: value lines, got a {type(data).__name__}')
    lines: Dict[str, int] = {}
    for k, _ in node.value if isinstance(node, yaml.MappingNode) else ():
        if k.value in lines:
            raise RecipeError(f'recipe {path}: key {k.value!r} is given twice (lines {lines[k.value]} and '
                              f'{k.start_mark.line + 1}); keep one')
        lines[k.value] = k.start_mark.line + 1
    return data, lines


#: the longest ``base:`` chain a recipe may have (the zoo's recipes have one base)
MAX_BASES = 16


def _read_yaml(path: Path, chain: Tuple[Path, ...] = ()) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """File ``path`` merged over its ``base:`` chain, and the file and line each top-level key came from."""
    path = path.resolve()
    if path in chain:
        cycle = ' -> '.join(str(p) for p in chain + (path,))
        raise RecipeError(f'recipe {chain[0]}: its base: chain forms a cycle ({cycle}); remove the base: that '
                          'points back')
    if len(chain) > MAX_BASES:
        raise RecipeError(f'recipe {chain[0]}: its base: chain is longer than {MAX_BASES} files ({chain[1]} -> ... '
                          f'-> {path}); merge some of them')
    data, lines = _yaml_mapping(path)
    sources = {k: f'recipe {path} (line {lines.get(k, "?")})' for k in data}
    base = data.pop('base', None)
    if base is None:
        return data, sources
    if not isinstance(base, str) or not base:
        raise RecipeError(f'{sources["base"]}: base must be the path of another recipe file, got {base!r}')
    parent, parent_src = _read_yaml(path.parent / base, chain + (path,))
    for k, v in data.items():
        parent[k] = {**parent[k], **v} if isinstance(v, dict) and isinstance(parent.get(k), dict) else v
        parent_src[k] = sources[k]
    return parent, parent_src


def _parse_override(item: str) -> Tuple[str, Any]:
    if not isinstance(item, str) or '=' not in item:
        raise RecipeError(f'override {item!r} must be key=value (dotted keys for nested values, e.g. '
                          'model_args.width=8)')
    key, value = item.split('=', 1)
    try:
        return key.strip(), load_yaml(value, f'override {item!r}', RecipeError)[0]
    except yaml.YAMLError as e:
        raise RecipeError(f'override {item!r}: the value is not valid YAML ({getattr(e, "problem", e)})') from None


def _set_dotted(cfg: Dict[str, Any], key: str, value, where: str) -> None:
    """``cfg[a][b]... = value`` for ``key`` 'a.b...'; only the mapping fields have nested keys."""
    parts = key.split('.')
    if not all(parts) or parts[0] not in cfg:
        raise _unknown_key(parts[0], list(cfg), where)
    if len(parts) > 1 and Recipe.specs()[parts[0]].kind not in ('mapping', 'smoke'):
        raise RecipeError(f'{where}: {parts[0]} is not a mapping; set it as {parts[0]}=<value>')
    if len(parts) > 1 and parts[0] == 'smoke' and parts[1] not in SMOKE_SPEC:
        raise _unknown_key(parts[1], list(SMOKE_SPEC), where, prefix='smoke.')
    d = cfg
    for i, p in enumerate(parts[:-1]):
        if d.get(p) is None:
            d[p] = {}
        d = d[p]
        if not isinstance(d, dict):
            raise RecipeError(f'{where}: cannot set {key}: {".".join(parts[:i + 1])} is not a mapping')
    d[parts[-1]] = value


def _merge(cfg: Dict[str, Any], sources: Dict[str, str], layer: Dict[str, Any], where) -> None:
    """Layer ``layer`` over ``cfg``: mappings merge key by key, except ``model_args`` (replaced whole)."""
    for k, v in layer.items():
        src = where(k) if callable(where) else where
        if k not in cfg:
            raise _unknown_key(k, list(cfg), src)
        merge = isinstance(v, dict) and isinstance(cfg[k], dict) and k != 'model_args'
        cfg[k] = {**cfg[k], **v} if merge else v
        sources[k] = src


def load_recipe(path=None, overrides: Sequence[str] = (), **values) -> Recipe:
    """Defaults <- YAML file ``path`` (with ``base:`` inheritance) <- ``values`` <- ``key=value`` ``overrides``,
    checked (:class:`~qzoo.errors.RecipeError` on any bad key or value)."""
    if isinstance(overrides, str):
        overrides = [overrides]
    cfg, sources = Recipe.defaults(), {k: 'the defaults' for k in Recipe.specs()}
    if path is not None:
        data, file_src = _read_yaml(Path(path))
        _merge(cfg, sources, data, file_src.get)
    _merge(cfg, sources, values, lambda k: f'load_recipe({k}=...)')
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(cfg, key, value, f'override {item!r}')
        sources[key.split('.')[0]] = f'override {item!r}'
    return Recipe(**_check(cfg, sources))


#: characters a run folder's tag keeps (others become '_'); a longer tag is cut and ends in a hash
_TAG_DROP = re.compile(r'(?:[^A-Za-z0-9.+_-]|\.\.+)+')
TAG_MAX = 48


def _tag_part(text: str) -> str:
    return re.sub('_+', '_', _TAG_DROP.sub('_', text.strip())).strip('_')


def override_tag(overrides: Sequence[str]) -> str:
    """A readable folder-name tag for ``key=value`` overrides: each key's last part followed by its value
    (``model_args.hidden=[2]`` -> ``hidden2``, ``lr=0.1`` -> ``lr0.1``), joined by '-', with every run of characters
    other than letters, digits and ``. + _ -`` (and of two or more dots) replaced by '_'. A tag over
    :data:`TAG_MAX` characters is cut and ended by 8 hex digits of the overrides' SHA-256, so that long override
    lists stay distinct."""
    parts = []
    for item in overrides:
        key, _, value = str(item).partition('=')
        parts.append(_tag_part(key.split('.')[-1]) + _tag_part(value))
    tag = '-'.join(parts)
    if len(tag) > TAG_MAX:
        tag = tag[:TAG_MAX - 9].rstrip('-_.') + '-' + sha256_bytes('\n'.join(map(str, overrides)))[:8]
    return tag


def recipe_help() -> str:
    """Every recipe key with its default, what it takes and its doc (for ``--help``)."""
    rows = []
    for k, spec in Recipe.specs().items():
        default = Recipe.defaults()[k]
        rows.append(f'  {k:18s} {spec.doc}; {spec.want()} (default {default!r})')
    return '\n'.join(rows)
