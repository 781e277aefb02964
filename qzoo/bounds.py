"""Bounds on the inputs that describe what qzoo reads, expands or builds, checked before anything is read,
expanded or built.

A recipe, a ``config.json``, a split file, a ``results.json`` or a value on the command line comes from
a user; a bad one must fail at once, with an error naming it and the fix, instead of hanging or
exhausting memory:

* :func:`read_bounded`: the bytes of a *regular* file of at most ``limit`` bytes. A FIFO blocks until
  someone writes to it, ``/dev/zero`` never ends, a folder is not a file: each is refused before it is
  opened. (Symbolic links are followed: what counts is what they point at.)
* :func:`load_yaml`: YAML (``yaml.safe_load``) after checking the size its aliases expand to. A few
  lines of anchors and aliases (``&a [*b, *b, ...]``) expand to billions of values for whatever walks
  the result (JSON, a digest, a deep copy); at most :data:`MAX_YAML_NODES` are accepted, and a
  self-referencing alias is refused.
* :func:`as_number` / :func:`whole_number`: numbers from YAML or JSON values (numeric strings such as
  ``'1e-4'`` included, booleans not); a whole number must be whole (``1.9`` samples is an error,
  never 1).
* :func:`device_of`: a device qzoo computes on: ``cpu``, or ``cuda[:index]`` on a machine that has
  that GPU (``'auto'``: CUDA when available). ``meta`` holds no data, and a missing GPU is named
  before anything is built.

The limits are module constants, far above what the zoo's own files need (its recipes are under
2 KB, its largest config.json under 64 KB). The caller passes the error type (``RecipeError``,
``DataError``, ``CheckpointError``, ``ValueError``: see :mod:`qzoo.errors`) so that every refusal is
one of the documented types.
"""
from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Type, Union

__all__ = ['read_bounded', 'load_yaml', 'as_number', 'whole_number', 'device_of', 'MAX_YAML_BYTES',
           'MAX_JSON_BYTES', 'MAX_YAML_NODES']

#: the largest YAML file (a recipe) read whole
MAX_YAML_BYTES = 1 << 20
#: the largest JSON file (config.json, results.json, a split file) read whole
MAX_JSON_BYTES = 16 << 20
#: the most nodes a YAML document may hold once its aliases are expanded
MAX_YAML_NODES = 100_000

_KINDS = {stat.S_IFDIR: 'a folder', stat.S_IFIFO: 'a FIFO (named pipe)', stat.S_IFCHR: 'a character device',
          stat.S_IFBLK: 'a block device', stat.S_IFSOCK: 'a socket'}


def _size(n: int) -> str:
    return f'{n / 2 ** 20:.1f} MiB' if n >= 2 ** 20 else f'{n:,} bytes'


def read_bounded(path: Union[str, os.PathLike], limit: int, what: str, error: Type[Exception] = ValueError,
                 fix: str = '') -> bytes:
    """The bytes of regular file ``path`` (``what`` names it in errors). ``error`` when it is not a regular
    file or holds more than ``limit`` bytes, or cannot be read; FileNotFoundError when it is missing."""
    path = Path(path)
    fix = f' Fix: {fix}' if fix else ''
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise error(f'{what} {path} cannot be read ({e.strerror or e}).{fix}') from None
    if not stat.S_ISREG(st.st_mode):
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), 'not a regular file')
        raise error(f'{what} {path} is {kind}, not a regular file: qzoo reads {what}s only from regular files (a '
                    f'FIFO or a device can block or never end).{fix}')
    if st.st_size > limit:
        raise error(f'{what} {path} holds {_size(st.st_size)}, more than a {what} may ({_size(limit)}); it is not '
                    f'the file it should be.{fix}')
    try:
        with open(path, 'rb') as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise error(f'{what} {path} cannot be read ({e.strerror or e}).{fix}') from None
    if len(data) > limit:
        raise error(f'{what} {path} grew past {_size(limit)} while it was read.{fix}')
    return data


def _children(node) -> list:
    import yaml
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _expanded_size(root, limit: int) -> Optional[int]:
    """How many nodes the document ``root`` holds with every alias expanded (counting stops just past
    ``limit``); None when an alias refers to a node that contains it (an infinite document)."""
    size: Dict[int, int] = {}
    open_: set = set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            open_.discard(key)
            size[key] = min(1 + sum(size[id(c)] for c in _children(node)), limit + 1)
            continue
        if key in size:
            continue
        if key in open_:
            return None
        open_.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)
    return size.get(id(root), 0)


def load_yaml(text: str, where: str, error: Type[Exception] = ValueError) -> Tuple[Any, Any]:
    """``(value, composed node)`` of YAML ``text`` (safe types only), after checking that its aliases expand to
    at most :data:`MAX_YAML_NODES` nodes and refer to no node that contains them; ``error`` otherwise (naming
    ``where``). Malformed YAML raises ``yaml.YAMLError`` as ``yaml.safe_load`` does."""
    import yaml
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise error(f'{where}: the YAML nests too deeply for qzoo to read; a recipe or option is a few levels '
                    'deep at most') from None
    if node is None:
        return None, None
    n = _expanded_size(node, MAX_YAML_NODES)
    if n is None:
        raise error(f'{where}: a YAML alias refers to a value that contains it (an infinite value). Fix: write the '
                    'value out instead of the alias')
    if n > MAX_YAML_NODES:
        raise error(f'{where}: the YAML expands to more than {MAX_YAML_NODES:,} values once its aliases (*name) are '
                    'replaced by their anchors (&name); a recipe or option holds a few dozen. Fix: write the values '
                    'out without nested aliases')
    return yaml.safe_load(text), node


def as_number(value, integer: bool = False):
    """A finite int/float from a YAML or JSON value (numeric strings such as ``'1e-4'`` included), else None.
    Floats keep their type unless ``integer`` (then whole floats become ints, other values None); strings become
    floats. Booleans are not numbers."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, (int, float)):
        return None
    try:
        if not math.isfinite(value):
            return None
        if integer:
            return int(value) if float(value).is_integer() else None
    except OverflowError:  # an int too large for a float
        return None
    return value


def whole_number(value, what: str, lo: Optional[int] = None, hi: Optional[int] = None,
                 error: Type[Exception] = ValueError) -> int:
    """``value`` as an int when it is a whole number in ``[lo, hi]`` (whole floats and numeric strings
    included); ``error`` naming ``what`` otherwise."""
    v = as_number(value, integer=True)
    if v is None or (lo is not None and v < lo) or (hi is not None and v > hi):
        where = (f' in [{lo:,}, {hi:,}]' if lo is not None and hi is not None else f' >= {lo:,}' if lo is not None
                 else f' <= {hi:,}' if hi is not None else '')
        raise error(f'{what} must be a whole number{where}, got {value!r}')
    return v


def device_of(pref: Any, where: str, error: Type[Exception] = ValueError, available: bool = True):
    """The ``torch.device`` of ``pref`` (``'auto'``: ``cuda`` when available, else ``cpu``), checked to be ``cpu``
    or ``cuda[:index]``; with ``available``, a CUDA device must also exist on this machine. ``error`` naming
    ``where`` otherwise."""
    import torch
    want = "'cpu', 'cuda' or 'cuda:<index>' ('auto': cuda when available, else cpu)"
    if pref == 'auto':
        return torch.device('cuda' if available and torch.cuda.is_available() else 'cpu')
    try:
        dev = torch.device(pref)
    except (RuntimeError, ValueError, TypeError):
        raise error(f'{where}: device {pref!r} is not a torch device; give {want}') from None
    if dev.type not in ('cpu', 'cuda'):
        raise error(f'{where}: device {pref!r}: qzoo trains and evaluates on {want}; a {dev.type} device '
                    + ('holds no data, only shapes' if dev.type == 'meta' else 'is not supported'))
    if available and dev.type == 'cuda':
        if not torch.cuda.is_available():
            raise error(f'{where}: device {pref!r}, but this machine has no usable CUDA GPU (torch '
                        f'{torch.__version__}, CUDA build {torch.version.cuda or "none"}). Fix: use device auto or '
                        'cpu, or run it on a machine with a GPU')
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise error(f'{where}: device {pref!r}, but this machine has {torch.cuda.device_count()} CUDA GPU(s) '
                        f'(indices 0..{torch.cuda.device_count() - 1}). Fix: pick one of them, or device auto')
    return dev
