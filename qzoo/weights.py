"""Published weights: one typed record per checkpoint, read once from the manifest.

A :class:`Weights` record says everything about a published checkpoint: the registered
architecture it holds (and the arguments beyond the architecture's own, e.g. the class
count), the training its tag names (dataset, recipe, seed), the file and its SHA-256, its
metrics and whether it is its architecture's default. Each folder's ``config.json`` and
``README.md`` card and the zoo's ``MODEL_CARDS.md`` are generated from these records
(:mod:`qzoo.publish`); a test checks every published ``config.json`` against its record.

Names follow timm: ``<architecture>.<tag>``, e.g. ``qcnn_w8.cwru-clean-s1``. The
architecture is a registered model name (``qcnn_w8`` is QCNN at width 8): a tag never
encodes the architecture, and nothing parses it. A tag is ``<experiment>-s<seed>``; the
seeds of one experiment share ``group`` (``qcnn_w8.cwru-clean``).

Where the files live: ``$QZOO_CHECKPOINTS`` when set (a folder with the same layout:
``manifest.json`` and one folder per checkpoint), else the package's own
``qzoo/checkpoints/`` — in a checkout and in an installed wheel alike.

:class:`WeightsRecord` holds the fields every weights record has, ours and the external
ones of :mod:`qzoo.external`.
"""
from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .errors import CheckpointError
from .serialization import valid_sha256

__all__ = ['WeightsRecord', 'Weights', 'checkpoints_dir', 'manifest_path', 'load_manifest', 'all_weights',
           'get_weights', 'weights_for', 'default_weights', 'clear_cache', 'WEIGHTS_NAME', 'CONFIG_NAME',
           'CHECKPOINTS_ENV', 'TAG_PATTERN']

WEIGHTS_NAME = 'model.safetensors'
CONFIG_NAME = 'config.json'
CHECKPOINTS_ENV = 'QZOO_CHECKPOINTS'
PACKAGE_CHECKPOINTS = Path(__file__).resolve().parent / 'checkpoints'
#: experiments and tags: letters, digits, '.', '_' and '-', starting with a letter or digit
TAG_PATTERN = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]*$')


@dataclass(frozen=True, kw_only=True)
class WeightsRecord:
    """What every weights record states: the qzoo architecture the weights load into (and
    its arguments), the dataset its metrics are on, the class count, the parameter count,
    the license and, for classifiers, the class names in output order."""
    architecture: str
    model_args: Mapping[str, Any] = field(default_factory=dict)
    dataset: str
    num_classes: int
    params: int
    license: str = 'apache-2.0'
    label_names: Optional[Tuple[str, ...]] = None


@dataclass(frozen=True, kw_only=True)
class Weights(WeightsRecord):
    """One published qzoo checkpoint (see the module doc)."""
    experiment: str                   #: the tag without its seed, e.g. 'cwru-clean'
    seed: int
    task: str                         #: classification | segmentation | regression
    data_spec: Mapping[str, Any]      #: {'name', 'args'}: the qzoo.data settings the metrics were measured with
    input_size: Tuple[int, ...]
    neuron: str
    macs: int                         #: quadratic-aware multiply-accumulates for one sample of input_size
    primary_metric: str
    val: Mapping[str, float]
    test: Mapping[str, float]
    sha256: str                       #: full SHA-256 of model.safetensors
    weights_dtype: str                #: float16 | float32 (storage)
    training: Mapping[str, Any]       #: recipe, recipe_sha256, overrides, epochs, selection, device, wall time, ...
    default: bool = False             #: the architecture's pretrained=True weights
    default_reason: str = ''
    hf_hub_id: Optional[str] = None   #: set once the folder is uploaded to the Hugging Face Hub

    def __post_init__(self):
        problems = []
        if not TAG_PATTERN.match(self.experiment or ''):
            problems.append(f'experiment {self.experiment!r} is not a valid tag part')
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            problems.append(f'seed {self.seed!r} is not an integer >= 0')
        if not valid_sha256(self.sha256):
            problems.append(f'sha256 {self.sha256!r} is not a 64-digit hex digest')
        if self.primary_metric not in (self.test or {}):
            problems.append(f'primary metric {self.primary_metric!r} is not among the test metrics')
        if problems:
            raise CheckpointError(f'weights record {self.architecture}.{self.experiment}-s{self.seed}: '
                                  + '; '.join(problems))
        object.__setattr__(self, 'input_size', tuple(self.input_size))
        if self.label_names is not None:
            object.__setattr__(self, 'label_names', tuple(self.label_names))

    @property
    def tag(self) -> str:
        return f'{self.experiment}-s{self.seed}'

    @property
    def name(self) -> str:
        """``<architecture>.<tag>``: what timm.create_model and qzoo.create_model take."""
        return f'{self.architecture}.{self.tag}'

    @property
    def group(self) -> str:
        """The experiment across seeds: ``<architecture>.<experiment>``."""
        return f'{self.architecture}.{self.experiment}'

    @property
    def folder(self) -> Path:
        return checkpoints_dir() / self.name

    @property
    def file(self) -> Path:
        return self.folder / WEIGHTS_NAME

    @property
    def metric(self) -> float:
        """The primary test metric (top1 %, iou %, or mse)."""
        return float(self.test[self.primary_metric])

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d['input_size'] = list(self.input_size)
        d['label_names'] = list(self.label_names) if self.label_names is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = 'a weights record') -> 'Weights':
        if not isinstance(d, Mapping):
            raise CheckpointError(f'{source} is a {type(d).__name__}, expected a JSON object')
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        missing = sorted(required - set(d))
        unknown = sorted(set(d) - names)
        if missing or unknown:
            raise CheckpointError(f'{source}: ' + '; '.join(p for p in (
                f'missing field(s) {", ".join(missing)}' if missing else '',
                f'unknown field(s) {", ".join(unknown)}' if unknown else '') if p) +
                '. Fix: restore the file from git, or regenerate it with qzoo.publish')
        try:
            return cls(**dict(d))
        except (CheckpointError, TypeError) as e:
            raise CheckpointError(f'{source}: {e}. Fix: restore the file from git, or regenerate it with '
                                  f'qzoo.publish') from None


# ---- where the files live ------------------------------------------------------------------
def checkpoints_dir() -> Path:
    """``$QZOO_CHECKPOINTS`` when set, else the package's ``qzoo/checkpoints``."""
    env = os.environ.get(CHECKPOINTS_ENV)
    return Path(env).expanduser() if env else PACKAGE_CHECKPOINTS


def manifest_path() -> Path:
    return checkpoints_dir() / 'manifest.json'


def load_manifest(path: Optional[Path] = None) -> Dict[str, Weights]:
    """Parse and check a manifest; raise :class:`CheckpointError` naming the file and the entry."""
    path = Path(path) if path is not None else manifest_path()
    fix = (f'restore it (git checkout -- {path.name} in {path.parent}), or point ${CHECKPOINTS_ENV} at a '
           f'complete checkpoints folder')
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f'the weights manifest {path} cannot be read ({type(e).__name__}: {e}). Fix: {fix}') from None
    if not isinstance(raw, dict):
        raise CheckpointError(f'the weights manifest {path} holds a {type(raw).__name__}, expected an object of '
                              f'records. Fix: {fix}')
    out: Dict[str, Weights] = {}
    for name, d in raw.items():
        w = Weights.from_dict(d, f'{path}, entry {name!r}')
        if w.name != name:
            raise CheckpointError(f'{path}: entry {name!r} describes {w.name!r}. Fix: {fix}')
        out[name] = w
    return out


_CACHE: Dict[Path, Dict[str, Weights]] = {}


def all_weights() -> Dict[str, Weights]:
    """Every published record by name, read once per manifest location (:func:`clear_cache`
    forgets it). A damaged manifest raises :class:`CheckpointError` naming the file."""
    path = manifest_path()
    if path not in _CACHE:
        _CACHE[path] = load_manifest(path)
    return _CACHE[path]


def clear_cache() -> None:
    _CACHE.clear()


def get_weights(name: str) -> Weights:
    """The record ``<architecture>.<tag>``; :class:`CheckpointError` with close names otherwise."""
    entries = all_weights()
    if name in entries:
        return entries[name]
    close = difflib.get_close_matches(name, list(entries), n=3, cutoff=0.6)
    arch = name.split('.')[0]
    same = [n for n in entries if n.split('.')[0] == arch]
    hint = (f'; did you mean {", ".join(repr(c) for c in close)}?' if close else
            f'; published for {arch}: {", ".join(sorted(same))}' if same else '')
    raise CheckpointError(f'no published qzoo weights named {name!r}{hint} (qzoo.list_models(pretrained=True) '
                          f'lists all {len(entries)})')


def weights_for(architecture: str) -> List[Weights]:
    """The records of one architecture, the default first, then by name."""
    return sorted((w for w in all_weights().values() if w.architecture == architecture),
                  key=lambda w: (not w.default, w.name))


def default_weights(architecture: str) -> Optional[Weights]:
    """The architecture's ``pretrained=True`` weights, or None when it has none."""
    return next((w for w in weights_for(architecture) if w.default), None)
