"""Training speed in the recipes' own loop (:mod:`qzoo.engine`): what ``qzoo bench --train-loop`` and
``qzoo bench --share`` measure.

* :func:`loop_speed`: a recipe set up as ``qzoo train`` sets it up (``engine._build``: the data on the device, the
  model, the optimiser, fused on CUDA, autocast, channels_last and torch.compile as the recipe says), then whole
  epochs of the engine's own loop (``engine._train_epoch``: BatchLoader's batches, the training step, the
  learning-rate schedule, the periodic non-finite check). The first epoch is timed apart from the steady ones: it
  holds compilation, CUDA-graph recording and cuDNN's algorithm search (``startup_s``: how much longer it took
  than a steady epoch).
* :func:`share_processes` and :func:`share_one_process`: K runs of one recipe on one device at once, as K processes
  side by side (how ``qzoo launch`` runs a stage: each process its own CUDA context, which the GPU time-slices)
  or as K models in one process, stepped in turn by one thread, each on its own CUDA stream (on the default
  stream in a CUDA-graph compile mode: those graphs share one memory pool and must run in order). Both report
  the images trained in a window that the K runs share.

Each process loads a data set once (:func:`dataset`), so that many set-ups cost no decoding or checking.
"""
from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch

from . import engine, layers
from .checkout import PACKAGE_PARENT
from .checkout import root as checkout_root
from .fileio import atomic_write_json
from .recipe import Recipe, load_recipe

#: the recipes of the GPU suite's models (paths in a checkout)
LOOP_RECIPES = {'resnet20': 'recipes/cifar10-jpeg75/resnet20.yaml',
                'qresnet20': 'recipes/cifar10-jpeg75/qresnet20-w16.yaml'}
POLL_S = 0.02
_DATA: Dict[str, Any] = {}


def recipe_path(path) -> Path:
    """``path`` if it is a file here, else the same path in the qzoo checkout."""
    p = Path(path)
    root = checkout_root()
    if not p.is_file() and not p.is_absolute() and root is not None and (root / p).is_file():
        return root / p
    if not p.is_file():
        raise FileNotFoundError(f'recipe {path} not found here or in a qzoo checkout; give the path of a recipe file '
                                '(the GPU suite trains the recipes of a checkout\'s recipes/)')
    return p


def loop_recipe(path, compile_value, device: torch.device, overrides: Sequence[str] = (),
                images: Optional[int] = None) -> Recipe:
    """The recipe at ``path`` with ``overrides``, ``compile`` set to ``compile_value``, on ``device``; ``images``:
    epochs of that many training images (a seeded subset, the engine's smoke slice) instead of the whole split."""
    ours = [f'compile={json.dumps(compile_value)}', f'device={device}'] + ([f'smoke.train={images}'] if images else [])
    return load_recipe(recipe_path(path), [*overrides, *ours])


def dataset(r: Recipe):
    """The recipe's data set, loaded once per process."""
    from .data import load_dataset
    key = json.dumps([r.data, r.data_args], sort_keys=True)
    if key not in _DATA:
        _DATA[key] = load_dataset(r.data, **r.data_args)
    return _DATA[key]


def setup(r: Recipe, images: Optional[int] = None, backend: str = 'inductor') -> 'engine._Setup':
    """What ``qzoo train`` builds for ``r`` before its first step (on ``r.device``)."""
    dist = engine.Dist()
    return engine._build(r, dist, engine._device(r.device, dist), smoke=images is not None, compile_backend=backend,
                         data=dataset(r))


def describe(s: 'engine._Setup') -> Dict[str, Any]:
    """How a set-up trains: what a speed measurement must report beside its numbers."""
    return dict(model=s.recipe.model, run=s.recipe.name, batch_size=s.train_loader.batch_size, params=s.params,
                amp=str(s.amp_dtype).replace('torch.', '') if s.amp_dtype is not None else 'off',
                channels_last=s.channels_last, compile_mode=s.compile_mode or '',
                optimizer=s.recipe.optimizer + (' (fused)' if s.opt.param_groups[0].get('fused') else ''),
                stacked_x_terms=layers.STACK_X_TERMS_ON_CUDA and s.device.type == 'cuda',
                images_per_epoch=len(s.train_loader) * s.train_loader.batch_size)


def _scratch() -> 'engine.RunDir':
    """A run folder that is never written (the loop names it only in a divergence error)."""
    return engine.RunDir(Path(tempfile.gettempdir()) / 'qzoo-speed', lock=False)


def _free(compiled: bool) -> None:
    """Give back what a finished measurement held on the device (compiled code and CUDA-graph pools too)."""
    if compiled:
        torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


@dataclass
class LoopTimes:
    """Seconds of one recipe's training loop: the set-up, the first epoch and each steady epoch after it."""
    build_s: float
    first_epoch_s: Optional[float] = None
    epoch_s: List[float] = field(default_factory=list)
    images: int = 0                        # training images per epoch
    info: Dict[str, Any] = field(default_factory=dict)  # describe() of the set-up

    @property
    def img_s(self) -> Optional[float]:
        return self.images / statistics.median(self.epoch_s) if self.epoch_s else None

    @property
    def startup_s(self) -> Optional[float]:
        return max(0.0, self.first_epoch_s - statistics.median(self.epoch_s)) if self.epoch_s else None


def loop_speed(r: Recipe, images: Optional[int], min_epochs: int, min_time: float, backend: str = 'inductor',
               on_epoch: Optional[Callable[[LoopTimes], None]] = None) -> LoopTimes:
    """Epochs of the engine's loop for ``r``: the first, then steady ones until there are ``min_epochs`` of them
    and they took ``min_time`` seconds; ``on_epoch(times)`` after each (a measurement cut short keeps them)."""
    t0 = time.perf_counter()
    s = setup(r, images, backend)
    out = LoopTimes(time.perf_counter() - t0, info=describe(s))
    run = _scratch()
    try:
        _, out.images, out.first_epoch_s, _ = engine._train_epoch(s, run, 0)
        if on_epoch is not None:
            on_epoch(out)
        while len(out.epoch_s) < max(1, min_epochs) or sum(out.epoch_s) < min_time:
            out.epoch_s.append(engine._train_epoch(s, run, len(out.epoch_s) + 1)[2])
            if on_epoch is not None:
                on_epoch(out)
    finally:
        compiled = s.compile_mode is not None
        del s
        _free(compiled)
    return out


# ---- several runs on one device -------------------------------------------------------------
def _batches(s: 'engine._Setup') -> Iterator[tuple]:
    """The set-up's training batches, epoch after epoch (from epoch 1: epoch 0 was the warm-up)."""
    epoch = 1
    while True:
        s.train_loader.set_epoch(epoch)
        yield from s.train_loader
        epoch += 1


def share_one_process(recipes: Sequence[Recipe], images: Optional[int], min_time: float,
                      backend: str = 'inductor') -> Dict[str, Any]:
    """The recipes' models in this process, each warmed up with one epoch of its loop, then stepped in turn (one
    step each per round, each on its own CUDA stream unless its compile mode replays CUDA graphs) until ``min_time``
    seconds have passed: ``{'images': trained in the window, 'seconds': the window, 'info': describe()}``."""
    setups = [setup(r, images, backend) for r in recipes]
    try:
        run, device = _scratch(), setups[0].device
        for s in setups:
            engine._train_epoch(s, run, 0)
        streams = [torch.cuda.Stream(device) if device.type == 'cuda' and s.compile_mode not in engine.CUDAGRAPH_MODES
                   else None for s in setups]
        feeds = [_batches(s) for s in setups]
        n = 0
        engine._sync(device)
        t0 = time.perf_counter()
        while n == 0 or time.perf_counter() - t0 < min_time:
            for s, stream, feed in zip(setups, streams, feeds):
                with torch.cuda.stream(stream) if stream is not None else nullcontext():
                    x, y = next(feed)
                    engine._forward_backward(s, x, y)
                    engine._update(s)
                n += len(x)
        engine._sync(device)
        return dict(images=n, seconds=time.perf_counter() - t0, info=describe(setups[0]))
    finally:
        compiled = setups[0].compile_mode is not None
        del setups
        _free(compiled)


def share_worker(r: Recipe, images: Optional[int], min_time: float, folder: Path, index: int,
                 backend: str = 'inductor', wait_s: float = 900.0) -> None:
    """One of :func:`share_processes`' runs: set up and warm up (one epoch), write ``ready-<index>``, wait for
    ``go``, train whole epochs of the loop until ``min_time`` seconds have passed, write ``result-<index>.json``."""
    s = setup(r, images, backend)
    run = _scratch()
    engine._train_epoch(s, run, 0)
    (folder / f'ready-{index}').touch()
    t_wait = time.perf_counter()
    while not (folder / 'go').exists():
        if time.perf_counter() - t_wait > wait_s:
            raise TimeoutError(f'share worker {index}: no go signal in {folder} within {wait_s:.0f} s')
        time.sleep(POLL_S / 4)
    n, epoch, t0 = 0, 1, time.perf_counter()
    while n == 0 or time.perf_counter() - t0 < min_time:
        n += engine._train_epoch(s, run, epoch)[1]
        epoch += 1
    atomic_write_json(folder / f'result-{index}.json', dict(images=n, seconds=time.perf_counter() - t0,
                                                            info=describe(s)))


def _child_env() -> Dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED='1',
                PYTHONPATH=os.pathsep.join(filter(None, [str(PACKAGE_PARENT), os.environ.get('PYTHONPATH')])))


def _await(done: Callable[[], bool], procs: List[subprocess.Popen], logs: List[Path], what: str) -> None:
    """Poll until ``done()``; RuntimeError (with the worker's output) when a worker ends before."""
    while not done():
        for i, p in enumerate(procs):
            if p.poll() is not None and not done():
                tail = logs[i].read_text(errors='replace').strip().splitlines()[-5:]
                raise RuntimeError(f'share worker {i} exited ({p.returncode}) while the workers were {what}: '
                                   + ' | '.join(tail))
        time.sleep(POLL_S)


def share_processes(k: int, worker_argv: Callable[[int, Path], List[str]]) -> List[Dict[str, Any]]:
    """K worker processes (``worker_argv(i, folder)``: the command of worker i, which runs :func:`share_worker`),
    each in its own process group; once all are set up and warmed up they start together. Returns their results;
    every worker is killed when this returns or raises."""
    with tempfile.TemporaryDirectory(prefix='qzoo-share-') as tmp:
        folder, procs = Path(tmp), []
        logs = [folder / f'worker-{i}.log' for i in range(k)]
        try:
            for i in range(k):
                with open(logs[i], 'w') as out:
                    procs.append(subprocess.Popen(worker_argv(i, folder), stdout=out, stderr=subprocess.STDOUT,
                                                  env=_child_env(), start_new_session=True))
            _await(lambda: all((folder / f'ready-{i}').exists() for i in range(k)), procs, logs, 'setting up')
            (folder / 'go').touch()
            _await(lambda: all((folder / f'result-{i}.json').exists() for i in range(k)), procs, logs, 'measuring')
            return [json.loads((folder / f'result-{i}.json').read_text()) for i in range(k)]
        finally:
            for p in procs:  # the whole group: a worker's compile processes too
                with suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def total_img_s(results: Sequence[Dict[str, Any]]) -> float:
    """Images per second of runs that trained side by side: the sum of each one's rate over its window."""
    return sum(r['images'] / r['seconds'] for r in results)


def worker_command(args: Sequence[str]) -> List[str]:
    """The command line of a share worker: this Python running ``qzoo.benchmark`` with ``args``."""
    return [sys.executable, '-m', 'qzoo.benchmark', *args]
