"""The training engine behind ``qzoo train`` (:func:`main`; ``recipes/train.py`` in a checkout): one loop for
every zoo model.

:func:`train` runs a :class:`~qzoo.recipe.Recipe` into a run folder: it trains with ReLinear
parameter groups, selects the published weights on the *validation* split (or takes the last
epoch), evaluates the test split once, and writes a folder ready to publish::

    model.safetensors  config.json  README.md   (qzoo.hub.save_pretrained)
    results.json       recipe.yaml  log.jsonl   last.ckpt (resume state)  best.safetensors  train.lock

Read top to bottom: set-up (:func:`_build`), one epoch (:func:`_train_epoch`), the end of an
epoch (:func:`_end_epoch`: validation, log, checkpoint, best weights), selection and the finish
(:func:`_finish`).

Guarantees: data order and augmentation depend only on (seed, epoch) and the RNG state is
checkpointed, so 2 epochs straight == 1 + ``resume`` + 1 (same weights). The run folder is locked
(``train.lock``, never opened through a symbolic link) while a run uses it. A new run refuses a folder
that holds a run unless ``force`` (which deletes that run's files first, so a failed run never leaves
a mix of two runs). Every file is written atomically (:mod:`qzoo.fileio`), and an I/O failure raises
:class:`~qzoo.errors.RunDirError` / :class:`~qzoo.errors.CheckpointWriteError` naming the path and
the fix; a non-finite loss raises :class:`~qzoo.errors.TrainingDiverged` and keeps the last good
checkpoint; a checkpoint that cannot be resumed raises :class:`~qzoo.errors.CheckpointError`.
On resume the log is cut back to the checkpoint's epoch.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import pickle
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import timm
import torch
from torch import nn

try:
    import fcntl
except ImportError:  # not POSIX: run folders are not locked
    fcntl = None

from . import __version__
from .bounds import MAX_JSON_BYTES, device_of, read_bounded, whole_number
from .checkout import code_identity
from .divergence import Divergence, detect
from .errors import (CheckpointError, CheckpointWriteError, DataError, DivergenceWarning, NotARegularFileError,
                     RecipeError, RunDirError, TrainingDiverged)
from .fileio import atomic_open, atomic_write_json, atomic_write_text, check_target, open_lock
from .measure import count_macs, count_params
from .metrics import Metrics, autocast, evaluate, loss_fn
from .monitor import StepMonitor
from .recipe import Recipe, load_recipe, override_tag, recipe_help
from .relinear import param_groups

__all__ = ['train', 'warm_start', 'default_out', 'read_results', 'check_results', 'load_recipe', 'Recipe', 'RunDir',
           'TrainingDiverged', 'CheckpointWriteError', 'CheckpointError', 'RecipeError', 'RunDirError']

CKPT, BEST, LOG, LOCK, MONITOR = 'last.ckpt', 'best.safetensors', 'log.jsonl', 'train.lock', 'monitor.jsonl'
#: every file a run writes in its folder (train.lock aside); a new run removes the previous run's first
RUN_FILES = ('model.safetensors', 'config.json', 'README.md', 'results.json', 'recipe.yaml', LOG, MONITOR, CKPT, BEST)
#: the files that hold a run's training: a folder with one of them holds a run that a new run would overwrite
TRAINED = ('results.json', 'model.safetensors', CKPT, BEST)
#: the torch.compile mode of ``compile: auto`` on CUDA, the mode ``qzoo bench --suite gpu`` is to measure fastest
#: (docs/speed.md). Chosen before any GPU measurement of it: the H200 profile of the eager step shows the GPU idle
#: for more than half of each step (kernel launches), which CUDA graphs remove
CUDA_COMPILE_MODE = 'reduce-overhead'
#: the torch.compile modes that replay CUDA graphs (each training step then marks its start for them)
CUDAGRAPH_MODES = ('reduce-overhead', 'max-autotune')
CKPT_KEYS = ('model', 'optimizer', 'scheduler', 'epoch', 'best', 'best_epoch', 'rng', 'recipe_sha256', 'wall_time_s')


# ---- the run folder -------------------------------------------------------------------------
class RunDir:
    """A run's output folder: created if needed, locked against a second run (``fcntl.flock`` on
    ``train.lock``, which holds the owner's pid), every write atomic, every I/O error raised as
    RunDirError / CheckpointWriteError naming the path and the fix. ``lock=False`` (DDP ranks
    other than 0) neither creates nor locks the folder."""

    def __init__(self, path, lock: bool = True):
        self.path = Path(path)
        self._fd: Optional[int] = None
        self._logs: Dict[str, List[str]] = {}
        if lock:
            self._create()
            self._lock()

    def _create(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f'the run folder {self.path} is a file; give --out a folder path (or move the file away)')
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f'cannot create the run folder {self.path}: {e.strerror or e}. Fix: choose an --out '
                              'in a writable place') from None

    def _lock(self) -> None:
        lock = self.path / LOCK
        try:
            fd = open_lock(lock)  # never through a symbolic link: truncating it would truncate its target
        except NotARegularFileError as e:
            raise RunDirError(f'cannot lock the run folder {self.path}: {e}') from None
        except OSError as e:
            raise RunDirError(f'cannot write in the run folder {self.path} ({lock}: {e.strerror or e}). Fix: make it '
                              'writable or choose another --out') from None
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors='replace').strip() or 'unknown'
            os.close(fd)
            raise RunDirError(f'the run folder {self.path} is in use by another training run (pid {holder}, lock '
                              f'{lock}). Fix: wait for that run to end or stop it, or give this run another --out'
                              ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f'{os.getpid()}\n'.encode(), 0)
        except OSError as e:
            os.close(fd)
            raise RunDirError(f'cannot write in the run folder {self.path} ({lock}: {e.strerror or e}). Fix: free disk '
                              'space, make it writable or choose another --out') from None
        self._fd = fd

    def close(self) -> None:
        """Release the lock (the lock file stays: removing it would race with a waiting run)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> 'RunDir':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def file(self, name: str) -> Path:
        return self.path / name

    def write_text(self, name: str, text: str) -> None:
        try:
            atomic_write_text(self.path / name, text)
        except OSError as e:
            raise self.write_error(name, e) from e

    def write_json(self, name: str, obj: Any) -> None:
        try:
            atomic_write_json(self.path / name, obj)
        except OSError as e:
            raise self.write_error(name, e) from e

    def write_error(self, name: str, e: OSError, what: str = '') -> CheckpointWriteError:
        path = self.path / name
        return CheckpointWriteError(f'could not write {what or path.name} {path} ({e.strerror or e}); the previous '
                                    f'version of the file, if any, is intact. Fix: free disk space or fix the '
                                    f'permissions of {self.path}, then run again with --resume')

    def start_log(self, upto_epoch: Optional[int], name: str = LOG) -> None:
        """An empty log ``name`` (a new run), or the existing one without records after ``upto_epoch`` (a resume: a
        run stopped after logging an epoch whose checkpoint was not written repeats that epoch)."""
        kept: List[str] = []
        path = self.file(name)
        try:
            old = path.read_text() if upto_epoch is not None and path.is_file() else ''
        except (OSError, UnicodeDecodeError) as e:
            raise RunDirError(f'cannot read {path} to resume it ({e}). Fix: make it readable, or delete it '
                              '(the resumed run then logs only its own epochs)') from None
        for line in old.splitlines(keepends=True):
            try:
                if json.loads(line)['epoch'] > upto_epoch:
                    break
            except (ValueError, KeyError, TypeError):
                break  # a line cut by a crash, or not ours: drop it and what follows
            kept.append(line if line.endswith('\n') else line + '\n')
        self._logs[name] = kept
        self.write_text(name, ''.join(kept))

    def records(self, name: str = LOG) -> List[Dict[str, Any]]:
        """The records of log ``name`` written so far (this session's and, on a resume, the kept earlier ones)."""
        return [json.loads(line) for line in self._logs.get(name, [])]

    def log(self, record: Dict[str, Any], name: str = LOG) -> None:
        """Append one epoch's record to log.jsonl (the whole file is replaced atomically)."""
        self.log_many([record], name)

    def log_many(self, records: List[Dict[str, Any]], name: str = LOG) -> None:
        """Append ``records`` to log ``name`` (the whole file is replaced atomically)."""
        lines = self._logs.setdefault(name, [])
        lines += [json.dumps(r) + '\n' for r in records]
        try:
            atomic_write_text(self.file(name), ''.join(lines))
        except OSError as e:
            del lines[len(lines) - len(records):]
            epoch = records[0].get('epoch') if records else None
            raise CheckpointWriteError(
                f'could not append epoch {epoch} to {self.file(name)} ({e.strerror or e}); the log up to '
                f'the previous epoch is intact. Fix: free disk space or fix the permissions of {self.path}, then run '
                'again with --resume') from e


def _held_run(run: RunDir) -> str:
    """What run the folder holds, in words ('' when none; a finished --smoke run counts as none)."""
    held = [name for name in TRAINED if os.path.lexists(run.file(name))]
    if not held:
        return ''
    try:
        res = json.loads(run.file('results.json').read_text()) if 'results.json' in held else None
    except (OSError, UnicodeDecodeError, ValueError):
        res = None
    if isinstance(res, dict) and res.get('smoke') is True:
        return ''
    if isinstance(res, dict):
        return (f'a finished run ({res.get("model")} on {res.get("dataset")}, {res.get("epochs")} epochs, '
                f'results.json)')
    return f'a run ({", ".join(held)})'


def _claim(run: RunDir, resume: bool, force: bool) -> None:
    """Check the folder's output paths (regular files or nothing); for a new run (not ``resume``) refuse a folder
    that holds a run unless ``force``, then remove the previous run's files, so that a run that fails leaves only
    its own files and never a mix of two runs."""
    for name in RUN_FILES:
        try:
            check_target(run.file(name))
        except NotARegularFileError as e:
            raise RunDirError(f'the run folder {run.path} cannot be used: {e}') from None
    if resume:
        return
    held = _held_run(run)
    if held and not force:
        raise RunDirError(f'the run folder {run.path} holds {held}; a new run would overwrite it. Fix: --resume to '
                          'continue that run, another --out, or --force to replace it (its files are deleted)')
    for name in RUN_FILES:
        try:
            run.file(name).unlink(missing_ok=True)
        except OSError as e:
            raise RunDirError(f'cannot remove {run.file(name)} of the previous run in {run.path} '
                              f'({e.strerror or e}). Fix: remove it, or choose another --out') from None


# ---- distributed & device -------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # the process group was created by this run, which therefore destroys it

    @property
    def main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, lo: int, hi: Optional[int] = None, default: Optional[str] = None) -> int:
    """Environment variable ``name`` (set by torchrun) as a whole number in [lo, hi]; RunDirError naming it otherwise."""
    value = os.environ.get(name, default)
    fix = ('Fix: start distributed runs with torchrun (torchrun --nproc_per_node=N --no-python qzoo train ...), '
           'which sets WORLD_SIZE, RANK and LOCAL_RANK, or unset WORLD_SIZE for a single process')
    if value is None:
        raise RunDirError(f'WORLD_SIZE={os.environ.get("WORLD_SIZE")} asks for a distributed run, but {name} is not '
                          f'set. {fix}')
    try:
        return whole_number(value, f'the environment variable {name}', lo, hi, RunDirError)
    except RunDirError as e:
        raise RunDirError(f'{e}. {fix}') from None


def _setup_dist(device_pref: str) -> Dist:
    ws = _env_int('WORLD_SIZE', 1, default='1')
    if ws <= 1:
        return Dist()
    rank, local = _env_int('RANK', 0, ws - 1), _env_int('LOCAL_RANK', 0, default='0')
    use_cuda = torch.cuda.is_available() and device_pref in ('auto', 'cuda')
    if use_cuda:
        torch.cuda.set_device(local)
    owns = not torch.distributed.is_initialized()
    if owns:
        torch.distributed.init_process_group('nccl' if use_cuda else 'gloo')
    return Dist(rank, ws, local, owns)


def _teardown_dist(dist: Dist) -> None:
    """Destroy the process group the run created: a rank that exits with its gloo group alive can abort at
    interpreter exit ('terminate called without an active exception', seen once in a CI-like run)."""
    if dist.owns_group and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _device(pref: str, dist: Dist) -> torch.device:
    """The run's device; a CUDA device this machine lacks is a RecipeError before anything is built."""
    if pref == 'auto':
        return torch.device(f'cuda:{dist.local_rank}' if torch.cuda.is_available() else 'cpu')
    return device_of(pref, 'recipe key device', RecipeError)


def _device_name(device: torch.device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)'


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


# ---- set-up ---------------------------------------------------------------------------------
@dataclass
class _Setup:
    """Everything a run builds before its first step."""
    recipe: Recipe
    dist: Dist
    device: torch.device
    ds: Any
    train_loader: Any
    val_loader: Any
    test_loader: Any
    model: nn.Module
    net: nn.Module                   # the model as trained: DDP- and/or compile-wrapped
    opt: torch.optim.Optimizer
    sched: Any
    loss: Any
    amp_dtype: Optional[torch.dtype]
    channels_last: bool
    params: int
    macs: int
    sample_shape: Tuple[int, ...]
    monitor: Optional[StepMonitor] = None  # recipe.monitor_every: per-step diagnostics into monitor.jsonl
    compile_mode: Optional[str] = None     # the torch.compile mode ``net`` runs in (None: not compiled)

    def evaluate(self, loader) -> Dict[str, float]:
        return evaluate(self.model, loader, self.ds.task, self.ds.num_classes, self.device, self.amp_dtype)


def _smoke_slice(split, n: Optional[int]):
    """A seeded random subset of ``n`` samples (splits may be stored sorted by class)."""
    if split is None or n is None:
        return split
    idx = torch.randperm(len(split.x), generator=torch.Generator().manual_seed(0))[:n]
    return type(split)(split.x[idx], split.y[idx])


def _data(r: Recipe, dist: Dist, device: torch.device, smoke: bool, data=None):
    """The dataset (a smoke slice of it with ``smoke``) and its train / val / test loaders. ``data``: the recipe's
    dataset loaded already (it is not changed)."""
    from .data import BatchLoader, load_dataset
    ds = load_dataset(r.data, **r.data_args) if data is None else copy.copy(data)
    ds.require_samples(('train', 'val', 'test'), 'a run trains on train, selects its published epoch on val and '
                                                 'scores it once on test')
    if smoke:
        ds.train, ds.val, ds.test = (_smoke_slice(getattr(ds, k), r.smoke[k]) for k in ('train', 'val', 'test'))
    train_loader = BatchLoader(ds.train, max(1, r.batch_size // dist.world_size), shuffle=True, seed=r.seed,
                               device=device, augment=ds.augment, normalize=ds.normalize,
                               drop_last=len(ds.train.x) >= r.batch_size, rank=dist.rank, world_size=dist.world_size)
    eval_kw = dict(shuffle=False, device=device, normalize=ds.normalize)  # every rank sees the whole split
    return ds, train_loader, BatchLoader(ds.val, r.eval_batch_size, **eval_kw), BatchLoader(ds.test, r.eval_batch_size,
                                                                                            **eval_kw)


def _lr_lambda(r: Recipe, steps_per_epoch: int):
    total = max(1, r.epochs * steps_per_epoch)
    warm = int(round(r.warmup_epochs * steps_per_epoch))
    floor = r.min_lr_ratio

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if r.schedule == 'constant':
            return 1.0
        t = (step - warm) / max(1, total - warm)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return f


def _optimizer(r: Recipe, model: nn.Module, steps_per_epoch: int):
    """SGD or AdamW over the ReLinear groups (torch's fused kernels when the model is on CUDA; the CPU keeps torch's
    default implementation) and the learning-rate schedule."""
    groups = param_groups(model, r.lr, r.weight_decay, r.quad_lr_scale, r.quad_weight_decay)
    impl = {'fused': True} if next(model.parameters()).is_cuda else {}
    if r.optimizer == 'sgd':
        opt = torch.optim.SGD(groups, lr=r.lr, momentum=r.momentum, nesterov=r.nesterov, **impl)
    else:
        opt = torch.optim.AdamW(groups, lr=r.lr, betas=tuple(r.betas), **impl)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(r, steps_per_epoch))


def _compile_mode(r: Recipe, device: torch.device) -> Optional[str]:
    """The torch.compile mode a run of ``r`` trains in on ``device`` (None: not compiled)."""
    if r.compile is False or (r.compile == 'auto' and device.type != 'cuda'):
        return None
    return CUDA_COMPILE_MODE if r.compile == 'auto' else 'default' if r.compile is True else r.compile


def _build(r: Recipe, dist: Dist, device: torch.device, smoke: bool, compile_backend: str = 'inductor',
           data=None) -> _Setup:
    """Seed, backends, data, model, optimiser and schedule, in the order that fixes the RNG stream. The model is
    compiled with static shapes (the training batches have one shape); ``compile_backend`` other than inductor
    (tests, the benchmark's CPU smoke run) ignores the mode. ``data``: the recipe's dataset, loaded already (the
    benchmark sets up many runs of one dataset)."""
    import qzoo
    if r.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
    elif device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(r.seed)
    ds, train_loader, val_loader, test_loader = _data(r, dist, device, smoke, data)
    model = qzoo.create_model(r.model, num_classes=ds.num_classes, in_chans=ds.in_shape[0], **r.model_args)
    sample_shape = (1, *ds.in_shape)
    params, macs = count_params(model), count_macs(model, sample_shape)
    model.to(device)
    cl = r.channels_last is True or (r.channels_last == 'auto' and device.type == 'cuda' and len(ds.in_shape) == 3)
    if cl:
        model.to(memory_format=torch.channels_last)
    opt, sched = _optimizer(r, model, len(train_loader))
    net = model
    if dist.world_size > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda' else None)
    mode = _compile_mode(r, device)
    if mode is not None:
        kw = dict(mode=None if mode == 'default' else mode) if compile_backend == 'inductor' else {}
        net = torch.compile(net, dynamic=False, backend=compile_backend, **kw)
    amp_dtype = torch.bfloat16 if (r.amp == 'bf16' or (r.amp == 'auto' and device.type == 'cuda')) else None
    monitor = StepMonitor(model, r.monitor_every) if r.monitor_every and dist.main else None
    return _Setup(r, dist, device, ds, train_loader, val_loader, test_loader, model, net, opt, sched,
                  loss_fn(ds.task, r.label_smoothing), amp_dtype, cl, params, macs, sample_shape, monitor, mode)


# ---- checkpoints ----------------------------------------------------------------------------
@dataclass
class _Progress:
    """What survives an epoch: the next epoch, the best validation score so far and its epoch, and the
    training wall time of earlier sessions of this run."""
    start_epoch: int = 0
    best: Optional[float] = None
    best_epoch: Optional[int] = None
    wall_before: float = 0.0
    session_start: float = 0.0       # time.time() when this session's first epoch began
    divergence: Optional[Divergence] = None  # the first divergence this session warned about

    def wall(self) -> float:
        """Training wall time of the run so far, earlier sessions included."""
        return self.wall_before + time.time() - self.session_start


def _rng_state(device) -> Dict[str, torch.Tensor]:
    s = {'cpu': torch.get_rng_state()}
    if device.type == 'cuda':
        s['cuda'] = torch.cuda.get_rng_state(device)
    return s


def _set_rng_state(s, device) -> None:
    torch.set_rng_state(s['cpu'])
    if device.type == 'cuda' and 'cuda' in s:
        torch.cuda.set_rng_state(s['cuda'], device)


def _save_checkpoint(run: RunDir, state: Dict[str, Any]) -> None:
    """Write the resume state atomically: a crash or a failed write leaves the previous checkpoint intact."""
    path = run.file(CKPT)
    try:
        with atomic_open(path, 'wb') as f:
            torch.save(state, f)
    except OSError as e:
        epoch = state['epoch']
        raise CheckpointWriteError(
            f'{path.parent.name}: could not write the epoch-{epoch} checkpoint {path} ({e}); '
            + (f'the previous checkpoint (epoch {epoch - 1}) is intact' if path.exists() else
               'no earlier checkpoint exists') + '. Fix: free disk space / fix permissions, then --resume') from e


def _first_words(e: Exception, lines: int = 1) -> str:
    """The start of an exception's message: its first line(s), cut at the first sentence over 200 characters."""
    text = ' '.join(l.strip() for l in str(e).strip().splitlines()[:lines] if l.strip())
    return text if len(text) <= 200 else text[:text.find('. ', 0, 200) + 1 or 200]


def _unreadable(path: Path, e: Exception) -> CheckpointError:
    """CheckpointError for a file torch.load refused; torch's advice to load it unsafely is left out."""
    text = str(e)
    if isinstance(e, pickle.UnpicklingError) and 'WeightsUnpickler error:' in text:
        detail = [l.strip() for l in text.split('WeightsUnpickler error:', 1)[1].splitlines() if l.strip()]
        why = ('the safe loader refused it: ' + (detail[0].split('. ')[0] if detail else 'unsupported content')
               + '; a training checkpoint holds only tensors, numbers and plain containers')
    else:
        first = _first_words(e)
        why = type(e).__name__ + (f': {first}' if first and 'weights' not in first.lower() else '')
    return CheckpointError(f'--resume: {path} cannot be read as a training checkpoint ({why}); it is corrupt, '
                           f'truncated or not written by qzoo. {_CKPT_FIX.format(path=path)}')


_CKPT_FIX = 'Fix: delete {path} and train from the start (without --resume), or restore the file from a backup'


def _load_checkpoint(path: Path) -> Dict[str, Any]:
    """The resume state in ``path``, with its structure checked."""
    if not path.is_file():
        raise FileNotFoundError(f'--resume: no checkpoint at {path}; start without --resume')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # torch.load raises many types for a damaged file
        raise _unreadable(path, e) from None
    missing = [k for k in CKPT_KEYS if k not in state] if isinstance(state, dict) else list(CKPT_KEYS)
    if missing:
        raise CheckpointError(f'--resume: {path} is not a training checkpoint (missing {", ".join(missing)}). '
                              + _CKPT_FIX.format(path=path))
    e = state['epoch']
    ok = (isinstance(e, int) and e >= 0 and isinstance(state['model'], dict) and isinstance(state['recipe_sha256'], str)
          and isinstance(state['rng'], dict) and 'cpu' in state['rng'])
    if not ok:
        raise CheckpointError(f'--resume: {path} holds an invalid state (epoch {e!r}, or malformed model / rng / '
                              'recipe_sha256 entries). ' + _CKPT_FIX.format(path=path))
    problem = _progress_problem(state)
    if problem:
        raise CheckpointError(f'--resume: {path} holds an invalid state ({problem}); it was not written by this run. '
                              + _CKPT_FIX.format(path=path))
    return state


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _progress_problem(state: Dict[str, Any]) -> str:
    """What is wrong with a checkpoint's progress entries (best score, best epoch, wall time), or ''."""
    best, best_epoch, wall = state['best'], state['best_epoch'], state['wall_time_s']
    if (best is None) != (best_epoch is None):
        return f'best {best!r} and best_epoch {best_epoch!r}: both or neither are set'
    if best is not None and not (_finite(best) or best in (math.inf, -math.inf)):  # inf: an epoch of NaN outputs
        return f'best validation score {best!r}, not a number'
    if best_epoch is not None and not (isinstance(best_epoch, int) and not isinstance(best_epoch, bool)
                                       and 0 <= best_epoch <= state['epoch']):
        return f'best_epoch {best_epoch!r}, not an epoch in [0, {state["epoch"]}]'
    if not _finite(wall) or wall < 0:
        return f'wall_time_s {wall!r}, not a finite number of seconds >= 0'
    return ''


def _restore(s: _Setup, run: RunDir, sha: str) -> _Progress:
    """Model, optimiser, schedule and RNG from ``last.ckpt``; the best weights checked against it."""
    path = run.file(CKPT)
    state = _load_checkpoint(path)
    if state['recipe_sha256'] != sha:
        raise RecipeError(f'--resume: {path} was written by a different recipe (sha256 '
                          f'{state["recipe_sha256"][:12]} vs {sha[:12]}); resume with the same recipe and overrides')
    if state['epoch'] >= s.recipe.epochs:
        raise CheckpointError(f'--resume: {path} is at epoch {state["epoch"]}, past the recipe\'s last epoch '
                              f'{s.recipe.epochs - 1}. ' + _CKPT_FIX.format(path=path))
    try:
        s.model.load_state_dict(state['model'])
        impl = [{k: g[k] for k in ('fused', 'foreach') if k in g} for g in s.opt.param_groups]
        s.opt.load_state_dict(state['optimizer'])
        for group, kept in zip(s.opt.param_groups, impl):  # this device's implementation, not the saving one's
            group.update(kept)
        s.sched.load_state_dict(state['scheduler'])
        _set_rng_state(state['rng'], s.device)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        raise CheckpointError(f'--resume: {path} does not fit this run ({type(e).__name__}: {_first_words(e, 2)}). '
                              + _CKPT_FIX.format(path=path)) from None
    if s.recipe.select == 'best_val' and state['best_epoch'] is not None and s.dist.main:
        _check_best(run, state)
    return _Progress(state['epoch'] + 1, state['best'], state['best_epoch'], float(state['wall_time_s']))


def _best_epoch_on_disk(run: RunDir) -> Optional[int]:
    from safetensors import safe_open
    try:
        with safe_open(str(run.file(BEST)), framework='pt') as f:
            return int((f.metadata() or {}).get('epoch', -1))
    except Exception:  # missing or unreadable: rewritten below when the checkpoint holds the weights
        return None


def _check_best(run: RunDir, state: Dict[str, Any]) -> None:
    """best.safetensors must hold the checkpoint's best epoch. It is written after the checkpoint, so a run
    stopped between the two is repaired from the checkpoint (whose weights are then the best)."""
    on_disk = _best_epoch_on_disk(run)
    if on_disk == state['best_epoch'] or on_disk == -1:  # -1: written before epochs were recorded
        return
    if state['best_epoch'] != state['epoch']:
        held = f'holds epoch {on_disk}' if on_disk is not None else 'is missing or unreadable'
        raise CheckpointError(
            f'--resume: {run.file(BEST)} {held}, but the checkpoint {run.file(CKPT)} says the best '
            f'validation epoch is {state["best_epoch"]}, whose weights are lost. Fix: delete the run folder '
            f'{run.path} and train from the start')
    _save_best(run, state['model'], state['epoch'])


def _save_best(run: RunDir, state_dict, epoch: int) -> None:
    """The best-so-far weights, with their epoch in the safetensors metadata (checked on resume and selection)."""
    from .hub import save_weights
    try:
        save_weights(state_dict, run.file(BEST), metadata={'format': 'pt', 'epoch': str(epoch)})
    except OSError as e:
        raise run.write_error(BEST, e, f'the epoch-{epoch} best weights') from e


# ---- one epoch ------------------------------------------------------------------------------
def _check_finite(s: _Setup, run: RunDir, loss_sum: torch.Tensor, epoch: int, step: int) -> None:
    bad = (~torch.isfinite(loss_sum)).float()
    if s.dist.world_size > 1:
        torch.distributed.all_reduce(bad)
    if bad.item() > 0:
        ckpt = run.file(CKPT)
        if epoch > 0 and ckpt.exists():
            good, then = (f'the last good checkpoint {ckpt} (end of epoch {epoch - 1}) is kept',
                          '--resume continues from the last good epoch')
        else:  # the first epoch of the run: nothing finished, nothing to continue from
            good, then = 'no epoch had finished, so no checkpoint was written', 'train again'
        raise TrainingDiverged(
            f'{s.recipe.name}: non-finite training loss in epoch {epoch} (by step {step}); stopped. {good}. '
            f'Fix: lower lr or quad_lr_scale, set grad_clip, or check the data; then {then}')


def _forward_backward(s: _Setup, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The first half of a training step: the loss of batch (x, y) and its gradients. Neither half synchronises
    with the device (the non-finite check runs every ``nan_check_every`` steps), so that a CUDA step is queued
    while the previous one runs, and CUDA graphs (compile modes in CUDAGRAPH_MODES) replay without waiting."""
    if s.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if s.compile_mode in CUDAGRAPH_MODES:
        torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs are no longer read
    with autocast(s.device, s.amp_dtype):
        loss = s.loss(s.net(x), y)
    s.opt.zero_grad(set_to_none=True)
    loss.backward()
    return loss


def _update(s: _Setup) -> None:
    """The second half of a training step: clip, the optimiser's step and the schedule's."""
    if s.recipe.grad_clip:
        nn.utils.clip_grad_norm_(s.model.parameters(), s.recipe.grad_clip)
    s.opt.step()
    s.sched.step()


def _train_epoch(s: _Setup, run: RunDir, epoch: int) -> Tuple[float, int, float, List[Dict[str, Any]]]:
    """One epoch of training; returns (mean training loss, samples seen on this rank, seconds, the monitor's
    records)."""
    s.net.train()
    s.train_loader.set_epoch(epoch)
    steps = len(s.train_loader)
    step = epoch * steps
    loss_sum, n_seen, watched = torch.zeros((), device=s.device), 0, []
    _sync(s.device)
    t0 = time.time()
    for i, (x, y) in enumerate(s.train_loader):
        if s.monitor is not None:
            s.monitor.arm(step)
        loss = _forward_backward(s, x, y)
        if s.monitor is not None:
            watched += filter(None, [s.monitor.collect(epoch, step, loss, s.opt.param_groups[0]['lr'])])
        _update(s)
        loss_sum += loss.detach().float()
        n_seen += len(x)
        step += 1
        if i + 1 == steps or step % s.recipe.nan_check_every == 0:
            _check_finite(s, run, loss_sum, epoch, step)
    _sync(s.device)
    return (loss_sum / max(1, steps)).item(), n_seen, time.time() - t0, watched


def _warn_divergence(s: _Setup, run: RunDir, p: _Progress) -> None:
    """Warn (:class:`~qzoo.errors.DivergenceWarning`) the first time the log shows a divergence
    (:func:`qzoo.divergence.detect`); training goes on, and results.json records it."""
    d = detect(run.records(), s.recipe.warmup_epochs, len(s.ds.val.x))
    if d is None or p.divergence is not None:
        return
    p.divergence = d
    best = f'the best validation epoch so far is {p.best_epoch}' if p.best_epoch is not None else 'no best epoch yet'
    warnings.warn(f'{s.recipe.name}: training diverged at epoch {d.epoch}: {d.what()} ({best}; training goes on, and '
                  'results.json records it under "divergence"). Remedies: grad_clip, a lower lr or quad_lr_scale',
                  DivergenceWarning, stacklevel=2)


def _end_epoch(s: _Setup, run: RunDir, p: _Progress, epoch: int, loss: float, n_seen: int,
               secs: float, watched: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Validate, log, checkpoint, then keep the weights if they are the best so far."""
    primary, higher = Metrics.primary(s.ds.task)
    val = s.evaluate(s.val_loader)
    score = val[primary]
    if val.get('nonfinite'):  # NaN/inf outputs: never select this epoch
        score = -math.inf if higher else math.inf
    improved = p.best is None or (score > p.best if higher else score < p.best)
    if improved:
        p.best, p.best_epoch = score, epoch
    rec = dict(epoch=epoch, train_loss=loss, **{f'val_{k}': v for k, v in val.items()},
               lr=s.opt.param_groups[0]['lr'], img_s=n_seen * s.dist.world_size / max(secs, 1e-9), epoch_time_s=secs,
               time=time.time())  # wall clock at the end of the epoch (launch.py --fit-in reads it)
    if s.dist.main:
        run.log(rec)
        if s.monitor is not None:
            run.log_many(watched, MONITOR)
        _warn_divergence(s, run, p)
        _save_checkpoint(run, dict(model=s.model.state_dict(), optimizer=s.opt.state_dict(),
                                   scheduler=s.sched.state_dict(), epoch=epoch, best=p.best, best_epoch=p.best_epoch,
                                   rng=_rng_state(s.device), recipe_sha256=s.recipe.sha256(), wall_time_s=p.wall()))
        if improved and s.recipe.select == 'best_val':
            _save_best(run, s.model.state_dict(), epoch)
    return dict(rec, score=score)


# ---- selection and the finish ---------------------------------------------------------------
def _select(s: _Setup, run: RunDir, p: _Progress) -> int:
    """Load the weights to publish; returns their epoch."""
    from .hub import load_weights
    if s.recipe.select != 'best_val':
        return s.recipe.epochs - 1
    sd, meta = load_weights(run.file(BEST), fix=f'delete the run folder {run.path} and train from the start')
    if meta.get('epoch') not in (None, str(p.best_epoch)):
        raise CheckpointError(f'{run.file(BEST)} holds epoch {meta["epoch"]}, not the best validation epoch '
                              f'{p.best_epoch}. Fix: delete the run folder {run.path} and train from the start')
    s.model.load_state_dict(sd)
    return p.best_epoch


def _results(s: _Setup, selected_epoch: int, wall: float, smoke: bool, recipe_path: Optional[str],
             divergence: Optional[Divergence]) -> Dict[str, Any]:
    """The one test evaluation and results.json's record (its fields are what publishing reads)."""
    r, ds = s.recipe, s.ds
    primary = Metrics.primary(ds.task)[0]
    val, test = s.evaluate(s.val_loader), s.evaluate(s.test_loader)
    return dict(
        model=r.model, model_args=r.model_args, dataset=ds.name, task=ds.task,
        data_spec=dict(name=r.data, args=r.data_args),
        neuron=getattr(s.model, 'neuron', 'linear'), params=s.params, macs=s.macs, macs_input=list(s.sample_shape),
        val=val, test=test, primary_metric=primary, epochs=r.epochs, selected_epoch=selected_epoch,
        selection=('best validation ' + primary) if r.select == 'best_val' else 'last epoch',
        divergence=divergence.to_dict() if divergence is not None else None,
        seed=r.seed, wall_time_s=wall, device=_device_name(s.device), world_size=s.dist.world_size,
        torch=torch.__version__, timm=timm.__version__, qzoo=__version__, code=code_identity(),
        amp=str(s.amp_dtype).replace('torch.', '') if s.amp_dtype is not None else 'off', channels_last=s.channels_last,
        compile=s.compile_mode or 'off',
        recipe=recipe_path or '', recipe_sha256=r.sha256(),
        data=dict(splits={k: len(getattr(ds, k).x) for k in ('train', 'val', 'test')}), smoke=smoke,
    )


def _finish(s: _Setup, run: RunDir, p: _Progress, smoke: bool, recipe_path: Optional[str]) -> Dict:
    """Select, evaluate the test split once and write the publishable folder (rank 0 only)."""
    from .hub import save_pretrained
    if s.dist.world_size > 1:
        torch.distributed.barrier()  # every rank has trained its last epoch
        if not s.dist.main:
            torch.distributed.barrier()  # rank 0 has written the results: all ranks leave together
            return {}
    wall = p.wall()
    results = _results(s, _select(s, run, p), wall, smoke, recipe_path,
                       detect(run.records(), s.recipe.warmup_epochs, len(s.ds.val.x)))
    try:
        save_pretrained(s.model, run.path, results=results)
    except OSError as e:
        raise run.write_error('model.safetensors', e, 'the published weights, config.json or README.md in') from e
    run.write_json('results.json', results)
    if s.dist.world_size > 1:
        torch.distributed.barrier()
    return results


#: the fields of results.json that publishing and the tools read without a default, and their JSON types
RESULTS_FIELDS = {'model': str, 'dataset': str, 'task': str, 'data_spec': dict, 'primary_metric': str, 'val': dict,
                  'test': dict, 'seed': int, 'params': int, 'macs': int, 'neuron': str, 'epochs': int}


def read_results(path) -> Dict[str, Any]:
    """A run's ``results.json``, checked to be what :func:`train` writes: a JSON object with the fields of
    :data:`RESULTS_FIELDS` of their types, a ``data_spec`` naming a dataset (``name``) and its options (``args``),
    and the primary metric a finite number in ``val`` and ``test``; RunDirError naming the file and what is wrong
    otherwise (FileNotFoundError when it is missing)."""
    path = Path(path)
    fix = 'Fix: finish the run with --resume, or train it again; train writes this file'
    try:
        res = json.loads(read_bounded(path, MAX_JSON_BYTES, 'results file', RunDirError, fix))
    except (ValueError, UnicodeDecodeError) as e:
        raise RunDirError(f'{path} is not JSON ({e}). {fix}') from None
    return check_results(res, path)


def check_results(res: Any, path) -> Dict[str, Any]:
    """``res`` (parsed from ``path``) if it is what :func:`train` writes to ``results.json`` (see
    :func:`read_results`), else RunDirError naming the file and what is wrong."""
    fix = 'Fix: finish the run with --resume, or train it again; train writes this file'
    if not isinstance(res, dict):
        raise RunDirError(f'{path} holds a JSON {type(res).__name__}, not the object of fields train writes. {fix}')
    problems = [f'{k} is missing' for k in RESULTS_FIELDS if k not in res]
    problems += [f'{k} is a {type(res[k]).__name__}, not a {t.__name__}' for k, t in RESULTS_FIELDS.items()
                 if k in res and (not isinstance(res[k], t) or isinstance(res[k], bool))]
    spec, key = res.get('data_spec'), res.get('primary_metric')
    if isinstance(spec, dict) and not (isinstance(spec.get('name'), str) and isinstance(spec.get('args', {}), dict)):
        problems.append(f'data_spec {spec!r} does not name a dataset (name) and its options (args)')
    for split in ('val', 'test'):
        if isinstance(res.get(split), dict) and isinstance(key, str) and not _finite(res[split].get(key)):
            problems.append(f'{split} has no finite {key} (the primary metric): {res[split].get(key)!r}')
    if problems:
        raise RunDirError(f'{path} is not a results file train wrote: {"; ".join(problems)}. {fix}')
    return res


# ---- the run --------------------------------------------------------------------------------
def _progress_bar(r: Recipe, start_epoch: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=r.epochs, initial=start_epoch, desc=r.name, unit='epoch', leave=False)


def _as_recipe(recipe: Union[Recipe, Mapping[str, Any]]) -> Recipe:
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, Mapping):
        return load_recipe(None, **recipe)
    raise TypeError(f'train() needs a Recipe (qzoo.recipe.load_recipe) or a mapping of recipe keys, got '
                    f'{type(recipe).__name__}')


def train(recipe: Union[Recipe, Mapping[str, Any]], out_dir, resume: bool = False, smoke: bool = False,
          recipe_path: Optional[str] = None, progress: bool = True, until_epoch: Optional[int] = None,
          force: bool = False) -> Dict[str, Any]:
    """Run ``recipe`` into folder ``out_dir``; returns the results dict (also results.json; ``{}`` on DDP
    ranks other than 0). ``resume`` continues from ``out_dir/last.ckpt``; ``smoke`` runs
    :meth:`Recipe.for_smoke` on a slice of the data; ``recipe_path`` is recorded in results.json.
    A new run (not ``resume``) refuses a folder that holds a run (a finished --smoke run aside) with a
    :class:`~qzoo.errors.RunDirError`, unless ``force``: then the previous run's files are deleted first.
    ``until_epoch``: stop once the epochs before it are done, without the selection and test evaluation
    (returns ``{}``; ``resume`` continues): a long run in slices, or a look at a few epochs of it."""
    r = _as_recipe(recipe)
    if smoke:
        r = r.for_smoke()
    dist = _setup_dist(r.device)
    try:
        return _train(r, dist, out_dir, resume, smoke, recipe_path, progress, until_epoch, force)
    finally:
        _teardown_dist(dist)


def _train(r: Recipe, dist: Dist, out_dir, resume: bool, smoke: bool, recipe_path: Optional[str], progress: bool,
           until_epoch: Optional[int], force: bool) -> Dict[str, Any]:
    device = _device(r.device, dist)
    with RunDir(out_dir, lock=dist.main) as run:
        if dist.main:
            _claim(run, resume, force)
        s = _build(r, dist, device, smoke)
        p = _restore(s, run, r.sha256()) if resume else _Progress()
        if dist.main:
            run.start_log(p.start_epoch - 1 if resume else None)
            if s.monitor is not None:
                run.start_log(p.start_epoch - 1 if resume else None, MONITOR)
            run.write_text('recipe.yaml', r.to_yaml())
        bar = _progress_bar(r, p.start_epoch, progress and dist.main)
        p.session_start = time.time()
        for epoch in range(p.start_epoch, r.epochs if until_epoch is None else min(r.epochs, until_epoch)):
            loss, n_seen, secs, watched = _train_epoch(s, run, epoch)
            rec = _end_epoch(s, run, p, epoch, loss, n_seen, secs, watched)
            if bar is not None:
                bar.set_postfix({Metrics.primary(s.ds.task)[0]: f"{rec['score']:.3f}", 'loss': f'{loss:.3f}'})
                bar.update(1)
        if bar is not None:
            bar.close()
        if until_epoch is not None and until_epoch < r.epochs:
            return {}
        return _finish(s, run, p, smoke, recipe_path)


def warm_start(recipe: Union[Recipe, Mapping[str, Any]], weights, epoch: int, out_dir) -> Path:
    """Prepare run folder ``out_dir`` so that ``train(recipe, out_dir, resume=True)`` continues the recipe at epoch
    ``epoch`` from ``weights`` (a weights file, e.g. a run's model.safetensors saved at epoch ``epoch - 1``) with a
    fresh optimizer state (empty momentum buffers): the learning rate, data order and augmentation are those of
    epoch ``epoch`` of the recipe. For studying what a saved state does next (e.g. a blow-up that followed it);
    returns the checkpoint's path. The folder must not hold a run."""
    from .hub import load_weights
    r = _as_recipe(recipe)
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 < epoch < r.epochs:
        raise ValueError(f'warm_start: epoch must be a whole number in [1, {r.epochs - 1}] (the recipe has '
                         f'{r.epochs} epochs), got {epoch!r}')
    dist = Dist()
    device = _device(r.device, dist)
    with RunDir(out_dir) as run:
        _claim(run, resume=False, force=False)
        s = _build(r, dist, device, False)
        s.model.load_state_dict(load_weights(weights, fix='give a weights file of this recipe\'s model')[0])
        step = epoch * len(s.train_loader)
        for group, base, lam in zip(s.opt.param_groups, s.sched.base_lrs, s.sched.lr_lambdas):
            group['lr'] = base * lam(step)
        s.sched.last_epoch, s.sched._last_lr = step, [g['lr'] for g in s.opt.param_groups]
        _save_checkpoint(run, dict(model=s.model.state_dict(), optimizer=s.opt.state_dict(),
                                   scheduler=s.sched.state_dict(), epoch=epoch - 1, best=None, best_epoch=None,
                                   rng=_rng_state(device), recipe_sha256=r.sha256(), wall_time_s=0.0))
        run.write_text('recipe.yaml', r.to_yaml())
        run.write_text(LOG, '')
    return Path(out_dir) / CKPT


# ---- the command line ------------------------------------------------------------------------
TRAIN_HELP = """Train a zoo model from a recipe.

    qzoo train --config recipes/cwru/qcnn-w16.yaml [key=value ...]
    qzoo train --config recipes/cwru/qcnn-w16.yaml --resume       # continue runs/<name>-s<seed> exactly
    qzoo train --config recipes/cwru/qcnn-w16.yaml --smoke        # tiny slice, 1 epoch, CPU: seconds
    qzoo train --config recipes/cifar10-jpeg75/qresnet20-w16.yaml epochs=5 model_args.width=8 seed=1
    torchrun --nproc_per_node=2 --no-python qzoo train --config recipes/synthetic/circles-d2.yaml   # DDP (gloo on CPU)

(``python recipes/train.py ...`` in a checkout is the same command; ``torchrun ... recipes/train.py ...`` too.)
Overrides use dotted keys (``model_args.width=8 smoke.epochs=2``); values are YAML. Outputs
(see qzoo.engine): model.safetensors, config.json, README.md, results.json, recipe.yaml,
log.jsonl and the resume state last.ckpt in --out (default runs/<name>-s<seed>, followed by a tag
of the overrides other than seed, e.g. runs/<name>-s0-hidden2-lr0.1 for ``model_args.hidden=[2]
lr=0.1`` (cut and ended by a short hash when long), and -smoke for --smoke). A folder that holds a
run is not overwritten: --resume continues it, --force replaces it (its files are deleted first); a
finished --smoke run is replaced without --force. A bad recipe, a run folder in use, holding a run
or unwritable, a damaged checkpoint or a diverged run print ``error: ...`` and exit with status 2;
Ctrl-C exits with 130 (``--resume`` continues from the last finished epoch).
"""

#: what a run reports as ``error: ...`` (exit 2) rather than a traceback: the documented types
CLI_ERRORS = (RecipeError, DataError, RunDirError, CheckpointWriteError, CheckpointError, TrainingDiverged,
              FileNotFoundError, ValueError, TypeError)


def _train_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=TRAIN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog='recipe keys:\n' + recipe_help())
    ap.add_argument('--config', required=True, help='recipe YAML (recipes/<task>/<model>.yaml)')
    ap.add_argument('--out', help='output folder (default runs/<name>-s<seed>[-<overrides>])')
    ap.add_argument('--resume', action='store_true', help='continue from <out>/last.ckpt')
    ap.add_argument('--force', action='store_true',
                    help='replace the run that --out holds (its files are deleted first) instead of refusing')
    ap.add_argument('--smoke', action='store_true', help='tiny slice, 1 epoch, on CPU')
    ap.add_argument('--until-epoch', type=int, metavar='E',
                    help='stop after the epochs before E (no selection or test yet); --resume continues')
    ap.add_argument('--no-progress', action='store_true')
    ap.add_argument('overrides', nargs='*', help='key=value recipe overrides')
    return ap


def default_out(recipe: Recipe, overrides: Sequence[str] = (), smoke: bool = False) -> str:
    """``runs/<name>-s<seed>``, then the tag of the overrides other than ``seed`` (:func:`qzoo.recipe.override_tag`),
    then ``-smoke`` for a smoke run: runs with different overrides get different folders."""
    rest = [o for o in overrides if str(o).partition('=')[0].strip() != 'seed']
    return (f'runs/{recipe.name}-s{recipe.seed}' + (f'-{override_tag(rest)}' if rest else '')
            + ('-smoke' if smoke else ''))


def main(argv=None) -> int:
    """``qzoo train``: train the recipe of ``argv`` (see :data:`TRAIN_HELP`); returns the exit status and prints
    the run's summary as one JSON line."""
    args = _train_parser().parse_args(argv)
    try:
        recipe = load_recipe(args.config, args.overrides)
        if args.resume and args.force:
            raise ValueError('--resume continues the run in --out and --force replaces it: give one of them')
        out = args.out or default_out(recipe, args.overrides, args.smoke)
        res = train(recipe, out, resume=args.resume, smoke=args.smoke, recipe_path=args.config,
                    progress=not args.no_progress, until_epoch=args.until_epoch, force=args.force)
    except CLI_ERRORS as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('interrupted: --resume continues from the last finished epoch', file=sys.stderr)
        return 130
    if res:
        print(json.dumps({k: res[k] for k in ('model', 'dataset', 'params', 'macs', 'val', 'test', 'selected_epoch',
                                              'wall_time_s')}))
    elif args.until_epoch is not None:
        print(f'stopped before epoch {args.until_epoch}: --resume continues', file=sys.stderr)
    return 0
