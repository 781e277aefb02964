#!/usr/bin/env python
"""``qzoo launch``: run several recipes side by side (one GPU or the CPU), summarise and pack them; the GPU presets.

    qzoo launch recipes/synthetic/circles-d2.yaml recipes/synthetic/moons-d2.yaml \\
        --parallel 2 --runs-dir runs/batch --pack runs/batch.tar.gz
    qzoo launch recipes/synthetic/circles-d2.yaml --set model=qmlp --set epochs=20 \\
        --grid quad_lr_scale=1e-2,1e-1,1 --parallel 3 --runs-dir runs/sweep          # a validation sweep
    qzoo launch recipes/cwru/qcnn-w16.yaml recipes/cwru/wdcnn-w16.yaml --grid seed=0,1,2 --parallel 2
    qzoo launch recipes/synthetic/circles-d2.yaml recipes/synthetic/moons-d2.yaml --parallel 2 \\
        --fit-in 60                                                       # cut the epochs to end within 60 s
    qzoo launch --preset quadratic-auto --smoke              # every stage on the CPU, seconds a run
    qzoo launch --preset quadratic-auto --deadline-s 560 --out "$OUT"     # one whole device call

(``python recipes/launch.py ...`` in a checkout is the same command.) Each run is ``qzoo train --config C
--out <runs-dir>/<name>[-<grid>]`` (run as ``python -m qzoo_cli train``, with the launcher's Python) in
its own process and process group (output in <run>/train.out). Every group is killed when the
launcher exits early (an error, Ctrl-C, SIGTERM, ``--timeout``), and on Linux a run also dies with
the launcher. summary.json lists every run's overrides, validation and test metrics, params, MACs,
wall time, mean img/s and exit status; with ``--pack`` the run folders (without resume state) and
the summary are packed into one .tar.gz. Recipe paths inside the checkout are recorded relative to
it, and the runs start in it; outside a checkout (an installed wheel) they start in the current
directory.

``--fit-in S`` (all runs side by side, one shared epoch count): once every run has logged two epochs,
the batch's end is projected from the measured epoch times under the real contention (runs that
finish early free the device for the rest: see ``_batch_time``); if it would end later than S
seconds after the launch, every run is stopped and restarted once with the largest shared epoch
count that fits (summary.json's "fit" says what was measured and done).

Presets (``--preset NAME``: the CIFAR batches of recipes/cifar10-jpeg75, so a checkout is needed;
all runs of a stage side by side; ``--smoke`` runs each recipe with ``--smoke`` on the CPU, under
runs/smoke/):

    conventional    resnet20/32/44/56 (width 16) and resnet20 at widths 8, 12, 24         7 runs
    search-1e-4, search-1e-3, search-1e-2
                    the 6 quadratic models of the CIFAR table at 40 epochs at that quad_lr_scale (one call each;
                    each architecture then takes the scale with its best validation top-1)   6 runs
    seeds-conventional-1, seeds-conventional-2
                    seed 1 (2) of resnet20 w8/w12/w24, resnet32/44/56, 40 epochs                6 runs
    seeds-quadratic-1, seeds-quadratic-2
                    seed 1 (2) of the 6 quadratic models with their recipe's (searched) scale   6 runs
    long            resnet20 and qresnet20 w16 for 200 epochs: trains until the deadline and packs the resume
                    state; the next call continues it with --resume (carry runs/long)          2 runs
    quad-sweep      qresnet20 w16 at quad_lr_scale 1e-4, 1e-3, 1e-2, 1e-1, 10 epochs      4 runs, packed without weights
    quadratic       qresnet20 w8/w12/w16, qresnet14, qresnet8, qresnet20 w9, 40 epochs   6 runs, cut from the end
    seeds           seeds 1, 2 of resnet20, qresnet20 w16, resnet20 w8, qresnet20 w9     8 runs, cut from the end
    neurons         the 8 neuron families at resnet20's parameter budget, 40 epochs       8 runs, cut from the end
    neurons-sweep   quad_lr_scale 1e-3, 1e-2, 1e-1 for the 6 families with ReLinear groups, 10 epochs
    quadratic-auto  quad-sweep, then quadratic with the sweep's quad_lr_scale (best validation top-1
                    among its finite runs, i.e. no NaN/inf outputs)
    speed           the GPU benchmark suite FIRST (--bench-s seconds), then qresnet20 w16 and resnet20 for
                    10 epochs with compile false and auto, seeds 0 and 1 (8 runs, packed without weights, cut
                    from the end); docs/speed.md
    neurons-auto    neurons-sweep, then neurons, each family with its own best scale (a family without
                    a finite sweep run, and linear / power, keep their recipe's)

A stage's runs go to <runs-dir>/<stage> (runs-dir default runs, or runs/smoke), its pack to
<out>/<stage>.tar.gz (--out default runs/device-out); the validation choices to <out>/choice.json.

A device call is ``--preset NAME --deadline-s S --out DIR``: S is the seconds the call may take and
DIR the folder whose files come back. The stages get ``--fit-in`` so that training ends ``--bench-s``
seconds (default 100) before the deadline (an -auto preset's sweep gets 30% of the time, its final
stage the rest). Then, when CUDA is available, the checkout's CUDA correctness tests run
(``python -m pytest -q tests/test_layers.py tests/test_data.py tests/test_engine.py -k cuda``, for at
most 120 s and half of the time left; their output goes into session.log, and a failure is reported
there and in the exit status while the call goes on); then, with time left, the GPU benchmark suite
runs as ``qzoo bench --suite gpu --budget-s <seconds left> --results-dir DIR/bench`` (with ``--smoke``,
the suite's own --smoke: the same steps on the CPU, tiny). The ``speed`` preset runs the suite first
instead, with ``--bench-s`` seconds, and keeps TESTS_AFTER_S seconds after training for the CUDA
tests. Finally everything in DIR but the stage packs (session.log,
choice.json, environment, benchmark results and log) is packed into DIR/logs.tar.gz: DIR ends with
at most 8 files. A failed benchmark is reported in session.log and the exit status; the training
packs are kept. The full CIFAR data must travel with the call: copy ../shared/data/cifar10-jpeg75.npz
into .data/ at the repository root (keep .data/ ignored by git) and name .data in the device tool's
``carry``; with QZOO_DATA unset a preset reads .data/ when the file is there. QZOO_CACHE sets where
the decoded data is cached (decoded once, before the runs start).
"""
import argparse
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .checkout import PACKAGE_PARENT
from .checkout import require as require_checkout
from .checkout import root as checkout_root

#: the checkout: recipe paths inside it are recorded relative to it, and the runs start in it (outside any
#: checkout, e.g. from an installed wheel: the current directory when this module was imported)
ROOT = checkout_root() or Path.cwd()

POLL_S = 0.5          # seconds between looks at the runs
SHARE_ALPHA = 0.5     # see _batch_time
SWEEP_SHARE = 0.3     # an -auto preset's validation sweep: this share of the time left
PACK_S = 15           # seconds of a device call kept for packing
BENCH_GRACE_S = 30    # the benchmark is stopped this long after its budget
MAX_OUT_FILES = 8     # a device call returns at most this many files
CUDA_TESTS_S = 120    # the CUDA correctness tests of a device call are stopped after this many seconds
#: what the launcher's Python runs: a training run (+ its arguments), the GPU benchmark suite, the CUDA tests
TRAIN = ['-m', 'qzoo_cli', 'train']
BENCHMARK = ['-m', 'qzoo_cli', 'bench']
CUDA_TESTS = ['-m', 'pytest', '-q', '-p', 'no:cacheprovider', 'tests/test_layers.py', 'tests/test_data.py',
              'tests/test_engine.py', '-k', 'cuda']
TESTS_AFTER_S = 60    # a benchmark-first preset keeps this long after training for the CUDA tests
NOT_PACKED = ('.ckpt', '.tmp', '.lock')


class FitError(RuntimeError):
    """--fit-in: not even one epoch of every run fits in the time."""


# ---- planning ------------------------------------------------------------------------------
#: what a --grid key and value may be: they become part of a run folder's name
GRID_KEY = re.compile(r'[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*')
GRID_VALUE = re.compile(r'[A-Za-z0-9.+_\[\]-]+')


def _grid_item(item: str) -> Tuple[str, List[str]]:
    """``KEY=V1,V2,...`` checked: a dotted recipe key and values of letters, digits and ``. + _ - [ ]`` without
    '..' (no path separators): each run's folder is named after them (ValueError otherwise)."""
    k, sep, vs = item.partition('=')
    values = [v for v in vs.split(',') if v != '']
    if not sep or not GRID_KEY.fullmatch(k) or not values:
        raise ValueError(f'--grid {item!r}: expected KEY=V1,V2,... with a dotted recipe key (e.g. '
                         f'quad_lr_scale=1e-2,1e-1 or model_args.width=8,16)')
    bad = [v for v in values if not GRID_VALUE.fullmatch(v) or '..' in v]
    if bad:
        raise ValueError(f'--grid {item!r}: value(s) {", ".join(map(repr, bad))} cannot name a run folder: grid '
                         f"values become part of <runs-dir>/<run>'s name, so they may hold only letters, digits "
                         f"and . + _ - [ ], without '..' or path separators. Fix: give such values, or one run per "
                         f'--set {k}=VALUE --runs-dir DIR')
    return k, values


def _grid(items):
    checked = [_grid_item(item) for item in items]
    for combo in itertools.product(*(vs for _, vs in checked)) if checked else [()]:
        yield [f'{k}={v}' for (k, _), v in zip(checked, combo)]


def _config_path(path) -> str:
    """A recipe path relative to the repository when it lies inside it (results.json records it)."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def plan(configs, sets=(), grid=(), runs_dir='runs/launch', extra: Optional[Dict[str, List[str]]] = None):
    """One run per recipe and grid point: ``overrides`` = sets + ``extra[config]`` + the grid point. Every recipe is
    loaded (checked) now, before anything starts."""
    from qzoo.recipe import load_recipe, override_tag
    runs = []
    grid_points = list(_grid(grid))  # checked before any recipe is read
    for cfg_path in map(_config_path, configs):
        for g in grid_points:
            overrides = list(sets) + list((extra or {}).get(cfg_path, [])) + g
            r = load_recipe(ROOT / cfg_path, overrides)
            name = f'{r.name}-s{r.seed}' + (f'-{override_tag(g)}' if g and not all(o.startswith('seed=') for o in g)
                                            else '')
            runs.append(dict(config=cfg_path, overrides=overrides, out=str(Path(runs_dir).resolve() / name),
                             name=name))
    names = [r['name'] for r in runs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f'two runs would write the same folder: {dup}; give them distinct names')
    return runs


# ---- reading runs --------------------------------------------------------------------------
def _read_log(run):
    """The run's log.jsonl records so far (a line still being written is left out)."""
    try:
        text = (Path(run['out']) / 'log.jsonl').read_text()
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            break
    return records


def _summarise(run):
    out = Path(run['out'])
    rec = dict(run)
    with contextlib.suppress(FileNotFoundError, ValueError):
        res = json.loads((out / 'results.json').read_text())
        if isinstance(res, dict):  # else not a file train wrote: the summary goes without it
            rec.update({k: res.get(k) for k in ('model', 'model_args', 'dataset', 'params', 'macs', 'val', 'test',
                                                'primary_metric', 'selected_epoch', 'epochs', 'wall_time_s', 'device')})
    lines = _read_log(run)
    if lines and all('img_s' in l for l in lines):
        steady = lines[1:] or lines  # epoch 0 includes start-up
        rec['mean_img_s'] = sum(l['img_s'] for l in steady) / len(steady)
        rec['mean_epoch_s'] = sum(l['epoch_time_s'] for l in steady) / len(steady)
    return rec


# ---- --fit-in ------------------------------------------------------------------------------
def _batch_time(remaining, epoch_s, alpha=None):
    """Seconds until every run has done its ``remaining`` epochs, given each run's epoch time
    ``epoch_s`` measured while all of them shared the device. As runs finish, the others speed up
    by (N / n) ** alpha with n runs left of N: alpha = 1 is perfect sharing of a saturated device,
    0 no speed-up at all. Seven CIFAR ResNets on one H100 (runs/conventional) ran as alpha ~ 0.8;
    0.5 keeps a margin (alpha None: SHARE_ALPHA)."""
    alpha = SHARE_ALPHA if alpha is None else alpha
    rem = {k: float(v) for k, v in remaining.items() if v > 0}
    N, t = len(epoch_s), 0.0
    while rem:
        speed = (N / len(rem)) ** alpha
        dt = min(rem[k] * epoch_s[k] / speed for k in rem)
        t += dt
        for k in list(rem):
            rem[k] -= dt * speed / epoch_s[k]
            if rem[k] <= 1e-9:
                del rem[k]
    return t


def _check_fit(fit, runs, started, t0, now):
    """Once every run in ``runs`` has logged two epochs: project the batch's end (``now`` and the logged epoch
    ends are wall-clock times). Returns the epoch count to restart with when it would overrun
    fit['budget_s'], else None; raises FitError when not even one epoch fits."""
    times = {r['name']: [l['time'] for l in _read_log(r)] for r in runs}  # when each epoch ended
    if any(len(t) < 2 for t in times.values()):
        return None  # not measured yet
    E = fit['requested_epochs']
    per_epoch = {k: (t[-1] - t[0]) / (len(t) - 1) for k, t in times.items()}  # epoch 0 excluded: start-up
    overhead = {k: max(0.0, t[0] - started[k] - per_epoch[k]) for k, t in times.items()}
    # the remaining epochs, plus one epoch's time for the final test evaluation and saving
    left = _batch_time({k: E - len(t) + 1 for k, t in times.items()}, per_epoch)
    fit.update(measured_at_s=now - t0, epoch_s={k: round(v, 3) for k, v in per_epoch.items()},
               startup_s={k: round(v, 2) for k, v in overhead.items()}, share_alpha=SHARE_ALPHA,
               projected_s=now - t0 + left)
    if fit['projected_s'] <= fit['budget_s']:
        fit['epochs'] = E
        return None
    # a restart pays the start-up again, then n epochs and the final evaluation: the largest n that fits
    room = t0 + fit['budget_s'] - now - max(overhead.values())
    new = 0
    while new < E and _batch_time({k: new + 2 for k in per_epoch}, per_epoch) <= room:
        new += 1  # new + 1 epochs (+ the final evaluation) fit
    if new < 1:
        raise FitError(f'--fit-in: even one epoch of every run does not fit in {fit["budget_s"]:.0f}s '
                       f'(slowest epoch {max(per_epoch.values()):.1f}s); run fewer models side by side')
    if new >= E:  # the overrun is within the projection's slack: carry on
        fit['epochs'] = E
        return None
    fit.update(refit=True, epochs=new)
    return new


def _check_drop(fit, runs, started, t0, now):
    """The ``drop`` policy: once every run has logged two epochs, keep the epoch count and, if the batch would
    overrun fit['budget_s'], drop runs from the END of the list (the last named is the least wanted) until the
    rest fits, counting the speed-up the others get. Returns the names to stop ([] when all fit); raises
    FitError when not even the first run fits."""
    times = {r['name']: [l['time'] for l in _read_log(r)] for r in runs}
    if any(len(t) < 2 for t in times.values()):
        return None  # not measured yet
    E = fit['requested_epochs']
    per_epoch = {k: (t[-1] - t[0]) / (len(t) - 1) for k, t in times.items()}
    order = [r['name'] for r in runs]
    n_all = len(order)
    for keep in range(n_all, 0, -1):
        kept = order[:keep]
        # measured while n_all shared the device: with fewer, each runs (n_all / keep) ** alpha faster
        speed = (n_all / keep) ** SHARE_ALPHA
        left = _batch_time({k: E - len(times[k]) + 1 for k in kept}, {k: per_epoch[k] / speed for k in kept})
        if now - t0 + left <= fit['budget_s']:
            fit.update(measured_at_s=now - t0, epoch_s={k: round(v, 3) for k, v in per_epoch.items()},
                       share_alpha=SHARE_ALPHA, projected_s=now - t0 + left, epochs=E, dropped=order[keep:])
            return order[keep:]
    raise FitError(f'--fit-in (drop): even {order[0]} alone does not finish {E} epochs in {fit["budget_s"]:.0f}s '
                   f'(its epoch takes {per_epoch[order[0]]:.1f}s side by side)')


# ---- child processes -----------------------------------------------------------------------
def _die_with_parent():
    """preexec_fn (Linux): the child gets SIGKILL when the launcher dies, even by SIGKILL."""
    if sys.platform != 'linux':
        return None
    import ctypes
    libc, parent = ctypes.CDLL(None, use_errno=True), os.getpid()

    def preexec():
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:     # the launcher died before prctl took effect
            os._exit(1)
    return preexec


def _exited(proc: subprocess.Popen) -> bool:
    """Whether ``proc`` has ended, without reaping it (its zombie keeps the group id reserved)."""
    if proc.returncode is not None:
        return True
    if not hasattr(os, 'waitid'):
        return proc.poll() is not None
    with contextlib.suppress(ChildProcessError):
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    return True


class Child:
    """A command in its own process group (session), output to ``log_file``. ``poll()`` returns None while it
    runs, else its exit status, after killing whatever it left in its group; ``stop()`` kills the group."""

    def __init__(self, cmd: Sequence[str], log_file: Path, env=None, cwd=ROOT):
        from qzoo.fileio import check_target
        self.out = open(check_target(log_file), 'w')  # a stream: not atomic, but never a FIFO, device or folder
        try:
            self.proc = subprocess.Popen(list(cmd), stdout=self.out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                         start_new_session=True, preexec_fn=_die_with_parent())
        except BaseException:
            self.out.close()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _kill_group(self) -> None:
        if self.proc.returncode is None:  # not reaped yet: the group id is still ours
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def poll(self) -> Optional[int]:
        if not _exited(self.proc):
            return None
        return self.stop()

    def stop(self) -> int:
        self._kill_group()
        rc = self.proc.wait()
        self.out.close()
        return rc


def _start_train(run, smoke: bool, env) -> Child:
    cmd = [sys.executable, *TRAIN, '--config', run['config'], '--out', run['out'], '--no-progress',
           *(['--smoke'] if smoke else []), *(['--resume'] if run.get('resume') else []), *run['overrides']]
    Path(run['out']).mkdir(parents=True, exist_ok=True)
    return Child(cmd, Path(run['out']) / 'train.out', env)


@contextlib.contextmanager
def _signals_raise():
    """SIGTERM / SIGHUP raise SystemExit here, so that the launcher's clean-up (killing its runs) happens."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)
    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# ---- a batch -------------------------------------------------------------------------------
def _child_env(parallel: int):
    env = dict(os.environ, PYTHONUNBUFFERED='1',
               PYTHONPATH=os.pathsep.join(filter(None, [str(PACKAGE_PARENT), os.environ.get('PYTHONPATH')])))
    if parallel > 1:
        env.setdefault('OMP_NUM_THREADS', str(max(1, (os.cpu_count() or 1) // parallel)))
    return env


def _fit_plan(runs, parallel: int, fit_in: Optional[float], policy: str = 'epochs'):
    if not fit_in:
        return None
    if policy not in ('epochs', 'drop'):
        raise ValueError(f"fit policy must be 'epochs' (cut the shared epoch count) or 'drop' (drop runs from the "
                         f"end of the list), got {policy!r}")
    from qzoo.recipe import load_recipe
    epochs = {load_recipe(ROOT / r['config'], r['overrides']).epochs for r in runs}
    if len(epochs) != 1 or parallel < len(runs):
        raise ValueError('--fit-in needs every run side by side (--parallel >= number of runs) and one shared '
                         f'epoch count (got epochs {sorted(epochs)}, {len(runs)} runs, --parallel {parallel})')
    return dict(budget_s=fit_in, requested_epochs=epochs.pop(), refit=False, policy=policy)


class _Batch:
    """The scheduling state of one batch: runs waiting, runs active (with their Child) and when each started."""

    def __init__(self, runs, parallel, start: Callable, clock: Callable[[], float], say: Callable[[str], None]):
        self.pending, self.active, self.started = list(runs), [], {}
        self.parallel, self.start, self.clock, self.say = parallel, start, clock, say
        self.t0 = clock()

    def note(self, text: str) -> None:
        self.say(f'[{self.clock() - self.t0:7.1f}s] {text}')

    def start_pending(self) -> None:
        while self.pending and len(self.active) < self.parallel:
            r = self.pending.pop(0)
            self.started[r['name']] = self.clock()
            self.active.append((r, self.start(r)))
            self.note(f'start {r["name"]}')

    def refit(self, fit) -> bool:
        """Measured once, with every run started: restart them all with fewer epochs when the batch would overrun."""
        if fit is None or 'projected_s' in fit or self.pending:
            return False
        if fit.get('policy') == 'drop':
            return self._drop(fit)
        new = _check_fit(fit, [r for r, _ in self.active], self.started, self.t0, self.clock())
        if new is None:
            return False
        for r, child in self.active:
            child.stop()
            for f in ('log.jsonl', 'last.ckpt', 'best.safetensors'):
                (Path(r['out']) / f).unlink(missing_ok=True)
            r['overrides'] = r['overrides'] + [f'epochs={new}']
            self.pending.append(r)
        self.active = []
        self.note(f'--fit-in: restarting every run with epochs={new} (projected {fit["projected_s"]:.0f}s for '
                  f'{fit["requested_epochs"]} epochs > {fit["budget_s"]:.0f}s)')
        return True

    def _drop(self, fit) -> bool:
        names = _check_drop(fit, [r for r, _ in self.active], self.started, self.t0, self.clock())
        if not names:
            return False
        for item in [a for a in self.active if a[0]['name'] in names]:
            r, child = item
            child.stop()
            r.update(returncode=None, dropped=True)
            self.active.remove(item)
            self.note(f'--fit-in: dropped {r["name"]} (the batch would not end within {fit["budget_s"]:.0f}s)')
        return True

    def reap(self, timeout: Optional[float]) -> None:
        for item in list(self.active):
            r, child = item
            rc = child.poll()
            if rc is None and timeout and self.clock() - self.t0 > timeout:
                rc = child.stop()
                self.note(f'--timeout: stopped {r["name"]}')
            if rc is not None:
                r['returncode'] = rc
                self.active.remove(item)
                self.note(f'done  {r["name"]} (exit {rc})')

    def stop_all(self) -> None:
        for r, child in self.active:
            r['returncode'] = child.stop()
            self.note(f'stopped {r["name"]}')
        self.active = []


def run_batch(runs, parallel: int = 1, smoke: bool = False, timeout: Optional[float] = None,
              fit_in: Optional[float] = None, start: Optional[Callable] = None, clock: Callable[[], float] = time.time,
              sleep: Callable[[float], None] = time.sleep, say: Callable[[str], None] = print,
              fit_policy: str = 'epochs') -> Dict:
    """Run ``runs`` (from :func:`plan`), at most ``parallel`` at a time; returns the summary. ``start(run)`` starts
    a run (default: ``qzoo train`` in a :class:`Child`); every run still going when this returns or raises is
    stopped."""
    fit = _fit_plan(runs, parallel, fit_in, fit_policy)
    if start is None:
        env = _child_env(parallel)
        start = lambda r: _start_train(r, smoke, env)  # noqa: E731
    b = _Batch(runs, parallel, start, clock, say)
    try:
        while b.pending or b.active:
            b.start_pending()
            sleep(POLL_S)
            if not b.refit(fit):
                b.reap(timeout)
    finally:
        b.stop_all()
    summary = dict(total_wall_s=clock() - b.t0, parallel=parallel, runs=[_summarise(r) for r in runs])
    if fit is not None:
        summary['fit'] = fit
    return summary


def _mark_resumable(summary, say) -> None:
    """A 'deadline' stage: a run stopped when the call's time was up, with its resume state on disk, is to be
    continued by the next call (``--resume``), not a failure."""
    for r in summary['runs']:
        log = _read_log(r)
        if r.get('returncode') != 0 and (Path(r['out']) / 'last.ckpt').is_file():
            r['to_resume'] = True
            say(f"{r['name']}: stopped at the deadline after epoch {log[-1]['epoch'] if log else '?'} of "
                f"{r.get('epochs') or '?'}; the next call continues it with --resume (carry its runs folder)")


def _print_summary(summary, say=print) -> None:
    for r in summary['runs']:
        v, t = r.get('val') or {}, r.get('test') or {}
        say(f"{r['name']:45s} exit {r.get('returncode')}  val {json.dumps(v)}  test {json.dumps(t)}  "
            f"{r.get('mean_img_s', 0):.0f} img/s")


def pack(runs_dir, runs, path, weights: bool = True, resume_state: bool = False) -> None:
    """The summary and the run folders (without resume state and best-epoch copies unless ``resume_state``, without
    locks; without weights unless ``weights``) as one .tar.gz, written atomically."""
    from qzoo.fileio import atomic_open, check_target
    skip = (set() if resume_state else {'best.safetensors'}) | (set() if weights else {'model.safetensors'})
    keep = {'.ckpt'} if resume_state else set()
    check_target(path, parents=True)
    with atomic_open(path, 'wb') as f, tarfile.open(fileobj=f, mode='w:gz') as tar:
        tar.add(Path(runs_dir) / 'summary.json', arcname='summary.json')
        for r in runs:
            for file in sorted(Path(r['out']).iterdir()) if Path(r['out']).is_dir() else ():
                if file.is_file() and (file.suffix not in NOT_PACKED or file.suffix in keep) and file.name not in skip:
                    tar.add(file, arcname=f'{r["name"]}/{file.name}')


def _write_summary(runs_dir, summary) -> None:
    from qzoo.fileio import atomic_write_json
    Path(runs_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(runs_dir) / 'summary.json', summary)


# ---- presets -------------------------------------------------------------------------------
CIFAR = 'recipes/cifar10-jpeg75'
FAMILIES = ('fan', 'fan_rg', 'fan_rb', 'quadralib', 'qres', 'lowrank')  # the neurons with ReLinear groups


@dataclass(frozen=True)
class Stage:
    """One batch of a preset: its runs side by side in <runs-dir>/<name>, packed into <out>/<name>.tar.gz."""
    name: str
    configs: Tuple[str, ...]
    sets: Tuple[str, ...] = ()
    grid: Tuple[str, ...] = ()
    weights: bool = True      # pack model.safetensors (sweeps only need their metrics)
    fit: str = 'epochs'       # when it would overrun: 'epochs' cuts the shared epoch count, 'drop' drops runs from
                              # the end of ``configs`` (comparisons with the published baselines keep their epochs),
                              # 'deadline' trains until the call's time is up and packs the resume state: a schedule
                              # longer than one call, continued by the next call with --resume


@dataclass(frozen=True)
class Preset:
    final: Stage
    sweep: Optional[Stage] = None       # a quad_lr_scale validation sweep run first
    choice_from: Optional[str] = None   # the swept recipe whose choice every final run takes (None: each its own)
    bench_first: bool = False           # the benchmark suite (--bench-s) runs before training, not after it


def _cifar(*names) -> Tuple[str, ...]:
    return tuple(str(ROOT / CIFAR / f'{n}.yaml') for n in names)


#: the CIFAR table's models, in order of need (a 'drop' stage drops runs from the end)
QUADRATIC = ('qresnet20-w8', 'qresnet20-w12', 'qresnet20-w16', 'qresnet14', 'qresnet8', 'qresnet20-w9')
CONVENTIONAL_SEEDS = ('resnet20-w8', 'resnet20-w12', 'resnet20-w24', 'resnet32', 'resnet44', 'resnet56')
SEARCH_SCALES = ('1e-4', '1e-3', '1e-2')


def _search(scale: str) -> 'Stage':
    """One point of the per-architecture quad_lr_scale search: every quadratic model of the table at 40 epochs with
    the quadratic recipe (its remedy against blow-ups included) at this scale; each architecture then takes the
    scale with its best validation top-1 over the search's calls."""
    return Stage(f'search-{scale}', _cifar(*QUADRATIC), ('epochs=40', f'quad_lr_scale={scale}'), fit='drop')


_STAGES = {
    'conventional': Stage('conventional', _cifar('resnet20', 'resnet32', 'resnet44', 'resnet56', 'resnet20-w8',
                                                 'resnet20-w12', 'resnet20-w24')),
    **{f'search-{v}': _search(v) for v in SEARCH_SCALES},
    # seeds 1 and 2 of every model of the CIFAR table (resnet20's exist): each a call of 6 runs side by side; the
    # quadratic recipes' quad_lr_scale is each architecture's choice of the search (set in its recipe file)
    **{f'seeds-conventional-{s}': Stage(f'seeds-conventional-{s}', _cifar(*CONVENTIONAL_SEEDS), ('epochs=40', f'seed={s}'),
                                        fit='drop') for s in (1, 2)},
    **{f'seeds-quadratic-{s}': Stage(f'seeds-quadratic-{s}', _cifar(*QUADRATIC), ('epochs=40', f'seed={s}'), fit='drop')
       for s in (1, 2)},
    # does a quadratic network need longer training? 200 epochs of the headline pair, over as many calls as it takes
    'long': Stage('long', _cifar('resnet20', 'qresnet20-w16'), ('epochs=200',), fit='deadline'),
    'quad-sweep': Stage('quad-sweep', _cifar('qresnet20-w16'), ('epochs=10',), ('quad_lr_scale=1e-4,1e-3,1e-2,1e-1',),
                        weights=False),
    # at the published baselines' 40 epochs, in order of need: runs that do not fit are dropped from the end
    'quadratic': Stage('quadratic', _cifar('qresnet20-w8', 'qresnet20-w12', 'qresnet20-w16', 'qresnet14', 'qresnet8',
                                           'qresnet20-w9'), ('epochs=40',), fit='drop'),
    'neurons': Stage('neurons', _cifar(*(f'neurons/{n}' for n in FAMILIES + ('linear', 'power'))), ('epochs=40',),
                     fit='drop'),
    # seeds 1 and 2 of the headline pair (give the quadratic runs the scale chosen by quadratic-auto with --set)
    'seeds': Stage('seeds', _cifar('resnet20', 'qresnet20-w16', 'resnet20-w8', 'qresnet20-w9'), ('epochs=40',),
                   ('seed=1,2',), fit='drop'),
    'neurons-sweep': Stage('neurons-sweep', _cifar(*(f'neurons/{n}' for n in FAMILIES)), ('epochs=10',),
                           ('quad_lr_scale=1e-3,1e-2,1e-1',), weights=False),
    # docs/speed.md: the CUDA defaults (fused optimizer) eager and with compile: auto, 10 epochs, two seeds each
    'speed': Stage('speed', _cifar('qresnet20-w16', 'resnet20'), ('epochs=10',), ('seed=0,1', 'compile=false,auto'),
                   weights=False, fit='drop'),
}
PRESETS = {
    **{name: Preset(stage) for name, stage in _STAGES.items()},
    'quadratic-auto': Preset(_STAGES['quadratic'], _STAGES['quad-sweep'], choice_from=_cifar('qresnet20-w16')[0]),
    'neurons-auto': Preset(_STAGES['neurons'], _STAGES['neurons-sweep']),
    'speed': Preset(_STAGES['speed'], bench_first=True),
}


def choose_on_validation(summary) -> Dict[str, Dict]:
    """Per recipe, the sweep run with the best validation primary metric among the finished runs with finite
    outputs (a run whose validation outputs held NaN/inf is never chosen): its quad_lr_scale and score."""
    from qzoo.metrics import Metrics
    best: Dict[str, Dict] = {}
    for r in summary['runs']:
        val, metric = r.get('val') or {}, r.get('primary_metric') or 'top1'
        if r.get('returncode') != 0 or metric not in val or val.get('nonfinite'):
            continue
        higher = dict(Metrics.PRIMARY.values()).get(metric, True)
        scale = next((o.split('=', 1)[1] for o in reversed(r['overrides']) if o.startswith('quad_lr_scale=')), None)
        old = best.get(r['config'])
        if scale is not None and (old is None or (val[metric] > old['val'] if higher else val[metric] < old['val'])):
            best[r['config']] = dict(quad_lr_scale=scale, metric=metric, val=val[metric], run=r['name'])
    for cfg, pick in best.items():
        pick['trials'] = _trials(summary, cfg)
    return best


def _trials(summary, config: str) -> List[Dict]:
    """Every sweep run of ``config``: its quad_lr_scale, epochs, validation primary metric (None when it did not
    finish) and whether its validation outputs were finite (the tuning budget a card states)."""
    out = []
    for r in summary['runs']:
        if r['config'] != config:
            continue
        scale = next((o.split('=', 1)[1] for o in reversed(r['overrides']) if o.startswith('quad_lr_scale=')), None)
        val, metric = r.get('val') or {}, r.get('primary_metric') or 'top1'
        out.append(dict(quad_lr_scale=scale, epochs=r.get('epochs'), val=val.get(metric),
                        finite=not val.get('nonfinite'), finished=r.get('returncode') == 0))
    return out


class _Session:
    """A preset's session: where its runs and packs go, the training deadline, and the session log."""

    def __init__(self, out: Path, runs_base: Path, smoke: bool, parallel: Optional[int], sets: Sequence[str],
                 train_deadline: Optional[float], resume: bool = False):
        self.out, self.runs_base, self.smoke, self.parallel = out, runs_base, smoke, parallel
        self.sets, self.train_deadline, self.failed, self.resume = list(sets), train_deadline, [], resume
        from qzoo.fileio import check_target
        self.log_file = check_target(out / 'session.log', parents=True)  # appended to: never a FIFO or device

    def say(self, text: str) -> None:
        print(text, flush=True)
        with open(self.log_file, 'a') as f:
            f.write(f'{time.strftime("%H:%M:%S")} {text}\n')

    def fit_in(self, share: float) -> Optional[float]:
        return None if self.train_deadline is None else share * (self.train_deadline - time.time())

    def stage(self, stage: Stage, extra: Optional[Dict[str, List[str]]] = None, share: float = 1.0) -> Optional[Dict]:
        """Run, summarise and pack one stage; failures are recorded in ``failed`` and the session goes on."""
        runs_dir = self.runs_base / stage.name
        runs = plan(stage.configs, list(stage.sets), stage.grid, runs_dir,
                    extra={c: (extra or {}).get(c, []) + self.sets for c in map(_config_path, stage.configs)})
        fit_in, parallel = self.fit_in(share), self.parallel or len(runs)
        for r in runs:  # --resume: a run whose folder holds the resume state of an earlier call continues it
            r['resume'] = self.resume and (Path(r['out']) / 'last.ckpt').is_file()
        self.say(f'stage {stage.name}: {len(runs)} runs, {min(parallel, len(runs))} side by side'
                 + (f', fitted to {fit_in:.0f}s' if fit_in is not None else '')
                 + (f", {sum(r['resume'] for r in runs)} resumed" if self.resume else ''))
        try:
            if stage.fit == 'deadline':
                summary = run_batch(runs, parallel, self.smoke, timeout=fit_in, say=self.say)
            else:
                summary = run_batch(runs, parallel, self.smoke, fit_in=fit_in, say=self.say, fit_policy=stage.fit)
        except FitError as e:
            self.say(f'stage {stage.name}: {e}')
            self.failed.append(stage.name)
            return None
        if stage.fit == 'deadline':
            _mark_resumable(summary, self.say)
        _write_summary(runs_dir, summary)
        _print_summary(summary, self.say)
        pack(runs_dir, runs, self.out / f'{stage.name}.tar.gz', weights=stage.weights,
             resume_state=stage.fit == 'deadline')
        self.failed += [r['name'] for r in summary['runs']
                        if r.get('returncode') != 0 and not r.get('dropped') and not r.get('to_resume')]
        return summary


def run_preset(name: str, session: _Session) -> Dict:
    """The preset's sweep (if any), the choice on validation, then its final stage; returns the choices."""
    p = PRESETS[name]
    choices: Dict[str, Dict] = {}
    if p.sweep is not None:
        summary = session.stage(p.sweep, share=SWEEP_SHARE)
        choices = choose_on_validation(summary) if summary else {}
        from qzoo.fileio import atomic_write_json
        atomic_write_json(session.out / 'choice.json', choices)
        session.say('chosen on validation: ' + (', '.join(f'{c}: quad_lr_scale={v["quad_lr_scale"]} ({v["metric"]} '
                                                           f'{v["val"]:.2f})' for c, v in choices.items()) or
                                                 'nothing (no finite sweep run): the recipes\' values'))
    extra = {}
    for cfg in map(_config_path, p.final.configs):
        pick = choices.get(_config_path(p.choice_from) if p.choice_from else cfg)
        extra[cfg] = [f'quad_lr_scale={pick["quad_lr_scale"]}'] if pick else []
    session.stage(p.final, extra)
    return choices


# ---- a device call -------------------------------------------------------------------------
def _use_repo_data(say) -> None:
    """With QZOO_DATA unset, read the data that travelled with the call in <repo>/.data (see the module doc)."""
    local = ROOT / '.data'
    if not os.environ.get('QZOO_DATA') and any(local.glob('*.npz')):
        os.environ['QZOO_DATA'] = str(local)
    say(f'data: {os.environ.get("QZOO_DATA") or "the default (../shared/data)"}; '
        f'cache: {os.environ.get("QZOO_CACHE") or "~/.cache/qzoo"}')


def _environment(out: Path, say) -> None:
    """GPU, torch and timm versions into <out>/environment.txt (and the session log)."""
    import timm
    import torch
    lines = [f'torch {torch.__version__}, timm {timm.__version__}, cuda available: {torch.cuda.is_available()}']
    if shutil.which('nvidia-smi'):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            lines.append(subprocess.run(['nvidia-smi', '--query-gpu=name,memory.used,memory.total', '--format=csv'],
                                        capture_output=True, text=True, timeout=30).stdout.strip())
    from qzoo.fileio import atomic_write_text
    atomic_write_text(out / 'environment.txt', '\n'.join(lines) + '\n')
    for line in lines:
        say(line)


def _decode_once(preset: Preset, say) -> None:
    """Load each dataset of the preset once, so that its decoded cache exists before the runs start together."""
    from qzoo.data import load_dataset
    from qzoo.recipe import load_recipe
    seen = set()
    for stage in filter(None, (preset.sweep, preset.final)):
        for cfg in stage.configs:
            r = load_recipe(ROOT / cfg)
            key = json.dumps([r.data, r.data_args], sort_keys=True)
            if key not in seen:
                seen.add(key)
                t = time.time()
                ds = load_dataset(r.data, **r.data_args)
                say(f'data {ds.name}: {len(ds.train.x)}/{len(ds.val.x)}/{len(ds.test.x)} in {time.time() - t:.1f}s')


def _run_child(cmd: Sequence[str], log_file: Path, limit_s: float, cwd: Path = ROOT) -> Tuple[int, float]:
    """Run ``cmd`` as a :class:`Child` (output in ``log_file``), stopped with its whole group after ``limit_s``
    seconds; returns its exit status (-9 when stopped) and the seconds it took."""
    t0 = time.time()
    child = Child(cmd, log_file, _child_env(1), cwd)
    try:
        while child.poll() is None and time.time() - t0 < limit_s:
            time.sleep(POLL_S)
    finally:
        rc = child.stop()
    return rc, time.time() - t0


def run_benchmark(out: Path, budget_s: float, say, smoke: bool = False) -> int:
    """``qzoo bench --suite gpu`` (with ``--smoke``: its CPU test run) with ``budget_s`` seconds, stopped (its whole
    group) if it overruns by BENCH_GRACE_S; output in <out>/bench.log, results in <out>/bench. Returns its exit
    status (-9 when stopped)."""
    cmd = [sys.executable, *BENCHMARK, '--suite', 'gpu', '--budget-s', str(int(budget_s)),
           '--results-dir', str(out / 'bench')] + (['--smoke'] if smoke else [])
    say('benchmark: ' + ' '.join(cmd[1:]))
    rc, secs = _run_child(cmd, out / 'bench.log', budget_s + BENCH_GRACE_S)
    tail = (out / 'bench.log').read_text(errors='replace').strip().splitlines()[-3:]
    say(f'benchmark: exit {rc} after {secs:.0f}s' + ('' if rc == 0 else ' (FAILED; see bench.log): '
                                                      + ' | '.join(tail)))
    return rc


def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def _why_no_cuda_tests() -> Optional[str]:
    """Why the CUDA tests cannot run here (None when they can)."""
    import importlib.util
    if not _cuda_available():
        return 'CUDA is not available'
    root = checkout_root()
    if root is None or not (root / 'tests').is_dir():
        return 'they are the tests/ of a checkout, and qzoo does not run from one'
    if importlib.util.find_spec('pytest') is None:
        return 'pytest is not installed'
    return None


def run_cuda_tests(out: Path, say, limit_s: float = CUDA_TESTS_S) -> Optional[int]:
    """The checkout's CUDA correctness tests (CUDA_TESTS, run in the checkout) for at most ``limit_s`` seconds, their
    output written into the session log through ``say``. Returns pytest's exit status (-9 when stopped), or None
    when they cannot run here (no CUDA, no checkout, no pytest: ``say`` tells which)."""
    why = _why_no_cuda_tests()
    if why:
        say(f'CUDA tests skipped: {why}')
        return None
    cmd = [sys.executable, *CUDA_TESTS]
    say('CUDA tests: ' + ' '.join(cmd[1:]))
    log = out / 'cuda_tests.log'
    rc, secs = _run_child(cmd, log, limit_s, cwd=checkout_root())
    for line in log.read_text(errors='replace').splitlines():
        say(f'  | {line}')
    log.unlink()
    say(f'CUDA tests: exit {rc} after {secs:.0f}s' + ('' if rc == 0 else ' (FAILED; the call goes on)'))
    return rc


def pack_logs(out: Path) -> Path:
    """Everything in ``out`` but the .tar.gz packs moved into <out>/logs.tar.gz."""
    from qzoo.fileio import atomic_open
    items = sorted(p for p in out.iterdir() if not p.name.endswith('.tar.gz'))
    dest = out / 'logs.tar.gz'
    with atomic_open(dest, 'wb') as f, tarfile.open(fileobj=f, mode='w:gz') as tar:
        for p in items:
            tar.add(p, arcname=p.name)
    for p in items:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return dest


def _after_training(a, s: _Session, deadline: Optional[float], bench: bool = True) -> int:
    """The CUDA tests (at most half of the time left before the deadline), then, with a deadline, ``--bench-s`` and
    ``bench``, the benchmark suite with the rest; returns the benchmark's exit status (0 when it did not run). A
    failure of the tests is recorded in ``s.failed``."""
    def left() -> float:
        return deadline - time.time() - PACK_S
    limit = min(CUDA_TESTS_S, left() / 2) if deadline else CUDA_TESTS_S
    if limit < 5:
        s.say(f'CUDA tests skipped: {left():.0f}s left')
    elif run_cuda_tests(s.out, s.say, limit) not in (None, 0):
        s.failed.append('CUDA tests')
    if not deadline or a.bench_s <= 0 or not bench:
        return 0
    if left() < 10:
        s.say(f'benchmark skipped: {left():.0f}s left')
        return 0
    return run_benchmark(s.out, left(), s.say, a.smoke)


def device_call(a) -> int:
    """A preset as one device call (see the module doc); 0 when every run and the benchmark succeeded."""
    t_start = time.time()
    deadline = t_start + a.deadline_s if a.deadline_s else None
    first = PRESETS[a.preset].bench_first and a.bench_s > 0
    train_deadline = deadline - (TESTS_AFTER_S if first else a.bench_s) - PACK_S if deadline else None
    runs_base = Path(a.runs_dir or ('runs/smoke' if a.smoke else 'runs'))
    s = _Session(Path(a.out), runs_base, a.smoke, a.parallel, a.set, train_deadline, a.resume)
    s.say(f'preset {a.preset}' + (f', deadline in {a.deadline_s:.0f}s' if deadline else '') + (' (smoke)' if a.smoke
                                                                                               else ''))
    bench_rc = 0
    try:
        _use_repo_data(s.say)
        _environment(s.out, s.say)
        _decode_once(PRESETS[a.preset], s.say)
        if first:
            bench_rc = run_benchmark(s.out, a.bench_s, s.say, a.smoke)
        run_preset(a.preset, s)
        bench_rc = _after_training(a, s, deadline, bench=not first) or bench_rc
    except Exception as e:  # a device call packs what it has whatever happened; the error is in session.log
        s.say(f'error: {type(e).__name__}: {e}')
        s.failed.append(type(e).__name__)
    finally:
        s.say('failed: ' + ', '.join(s.failed) if s.failed else 'every run finished')
        pack_logs(s.out)
    files = sorted(p.name for p in s.out.iterdir())
    print(f'{s.out}: {", ".join(files)}' + (f' (more than {MAX_OUT_FILES} files: a device call returns at most '
                                            f'{MAX_OUT_FILES})' if len(files) > MAX_OUT_FILES else ''))
    return 0 if not s.failed and bench_rc == 0 else 1


# ---- command line --------------------------------------------------------------------------
def _parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('configs', nargs='*', help='recipe files (or --preset)')
    ap.add_argument('--preset', choices=list(PRESETS), help='a named CIFAR batch (see above)')
    ap.add_argument('--set', action='append', default=[], metavar='KEY=VALUE', help='override for every run')
    ap.add_argument('--grid', action='append', default=[], metavar='KEY=V1,V2', help='one run per value')
    ap.add_argument('--parallel', type=int, default=None, help='runs side by side (default 1; presets: all)')
    ap.add_argument('--runs-dir', default=None, help='where the run folders go (default runs/launch; presets: runs)')
    ap.add_argument('--pack', help='write the runs + summary into this .tar.gz')
    ap.add_argument('--pack-without-weights', action='store_true',
                    help='leave model.safetensors out of the pack (sweeps: only their metrics are wanted)')
    ap.add_argument('--smoke', action='store_true', help='pass --smoke to every run (CPU, seconds)')
    ap.add_argument('--timeout', type=float, default=None, help='seconds before unfinished runs are stopped')
    ap.add_argument('--fit-in', type=float, default=None, metavar='S',
                    help='measure, then cut the shared epoch count so that the batch ends within S seconds')
    ap.add_argument('--deadline-s', type=float, default=None, metavar='S', help='presets: seconds the call may take')
    ap.add_argument('--bench-s', type=float, default=100, metavar='S',
                    help='presets with --deadline-s: seconds kept after training for the CUDA tests and the GPU '
                         'benchmark suite (0: no benchmark)')
    ap.add_argument('--out', default='runs/device-out', help='presets: the folder for packs and logs')
    ap.add_argument('--resume', action='store_true',
                    help="presets: continue the runs whose folder holds an earlier call's resume state (a stage "
                         "that trains until the deadline; carry its runs folder into the call)")
    return ap


def _check_args(ap, a) -> None:
    if bool(a.preset) == bool(a.configs):
        ap.error('give recipe files or --preset NAME (not both)')
    if a.preset and (a.grid or a.pack or a.pack_without_weights or a.fit_in or a.timeout):
        ap.error('--grid, --pack, --pack-without-weights, --fit-in and --timeout are for recipe files; a preset '
                 'defines its stages and fits them with --deadline-s')
    if a.preset and a.deadline_s and a.parallel:
        ap.error('--deadline-s fits every stage with all its runs side by side: leave --parallel out')
    if not a.preset and a.deadline_s:
        ap.error('--deadline-s is for presets; give recipe files --fit-in S')
    if a.parallel is not None and a.parallel < 1:
        ap.error('--parallel must be >= 1')


def _launch(a) -> int:
    from qzoo.fileio import check_target
    runs_dir = a.runs_dir or 'runs/launch'
    runs = plan(a.configs, a.set, a.grid, runs_dir)
    check_target(Path(runs_dir) / 'summary.json')  # refused before anything runs
    if a.pack:
        check_target(a.pack)
    summary = run_batch(runs, a.parallel or 1, a.smoke, a.timeout, a.fit_in)
    _write_summary(runs_dir, summary)
    _print_summary(summary)
    if a.pack:
        pack(runs_dir, runs, a.pack, weights=not a.pack_without_weights)
    return 0 if all(r.get('returncode') == 0 for r in summary['runs']) else 1


def main(argv=None) -> int:
    from qzoo.errors import NotARegularFileError, RecipeError
    ap = _parser()
    a = ap.parse_args(argv)
    _check_args(ap, a)
    try:
        if a.preset:
            require_checkout(f'--preset {a.preset} (its recipes are in recipes/cifar10-jpeg75/)')
        with _signals_raise():
            return device_call(a) if a.preset else _launch(a)
    except (RecipeError, FitError, ValueError, FileNotFoundError, NotARegularFileError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('interrupted: every run was stopped', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
