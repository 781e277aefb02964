"""``qzoo bench``: speed of qzoo models and quadratic layers, on CPU and CUDA.

Modes, each writing one CSV (``--results-file``; default ``results/benchmark-<mode>-<device>.csv``
under the current directory, folders created as needed; nothing else is written):

* models (default): for every model and runtime (``--runtimes``: ``eager``, ``compiled`` =
  ``torch.compile``, ``onnxruntime`` = the model exported by :func:`qzoo.export.export_onnx`
  run on onnxruntime's CPUExecutionProvider), the measurements of ``--bench``: batch-1
  latency (``latency``), inference throughput at ``--batch-size`` (``infer``) and the
  training step (``train``: forward + loss + backward + SGD step on fixed random inputs).
  The first columns are those of timm's ``benchmark.py`` CSV (``param_count`` in millions,
  ``infer_gmacs`` per sample, from ``qzoo.count_macs``), then qzoo's. Ratios:
  ``infer_latency_ratio`` (to the first model, or the model ``--ratio-to`` names, under the
  same runtime; column ``ratio_to``),
  ``infer_latency_vs_eager`` / ``infer_throughput_vs_eager`` / ``train_throughput_vs_eager``
  (to the same model in eager mode). Peak memory is measured on CUDA only;
* ``--cifar-train``: training img/s of CIFAR models fed by the training pipeline itself:
  ``qzoo.data`` ``cifar10-jpeg75`` through ``BatchLoader`` with the dataset's augmentation
  (crop4-flip) and normalisation on the device, as recipes train, then the step the engine
  runs (channels_last input when asked, autocast, cross-entropy, SGD-nesterov over ReLinear
  parameter groups). ``--cifar-split train`` (default) falls back to the test split shipped
  in ``data/`` when the full data is absent (the CSV's ``note`` says which);
* ``--layer-bench``: ``QuadraticConv2d`` (forward + backward) against ``nn.Conv2d`` of the
  same shape on the CIFAR ResNet layer shapes, as times and the ratio;
* ``--profile``: ``torch.profiler`` time per kernel (CUDA kernels on a GPU, CPU operators on
  the CPU) of one ``--cifar-train`` step per model, the ``--top`` kernels as CSV rows;
* ``--train-loop``: training img/s of recipes (``--recipes``, default the CIFAR resnet20 and
  qresnet20 w16 recipes) in the engine's own loop (:mod:`qzoo.trainspeed`): the set-up
  ``qzoo train`` makes (data on the device, fused optimizer on CUDA, the recipe's autocast and
  channels_last), ``--runtimes eager`` (``compile: false``) or ``compiled`` (``compile:`` the
  ``--compile-mode``, torch's default mode without one), then whole epochs of its loop. The first
  epoch is reported apart (``startup_s``: compilation, CUDA-graph recording, cuDNN's search) from
  the steady ones (``train_samples_per_sec``); ``--set KEY=VALUE`` overrides the recipes,
  ``--loop-images N`` makes epochs of N images, ``--stack-x-terms`` turns on
  ``qzoo.layers.STACK_X_TERMS_ON_CUDA``;
* ``--share K``: total training img/s of K runs of the first recipe on one device: one run alone,
  K processes side by side (as ``qzoo launch`` runs a stage) and K models in one process;
* ``--suite gpu --budget-s S --results-dir DIR``: the GPU measurements in one command
  (see :data:`SUITE`: first the six recipe-loop speeds of resnet20 and qresnet20 eager, compiled
  and compiled with CUDA graphs, then what the budget leaves room for), within S seconds, one CSV
  per step under DIR plus ``suite.csv`` (each step's status, skipped steps by name),
  ``train_loop.csv`` (the recipe-loop rows together) and ``env.json``. It needs CUDA; ``--smoke``
  runs the same steps on the CPU with tiny sizes (a test of the suite, not a measurement).

Timing: every mode measures its variants round by round (``--rounds``) in a freshly shuffled
order each round, each measurement ``torch.utils.benchmark.Timer.blocked_autorange`` of at
least ``--min-time`` seconds (CUDA-synchronised) after ``--warmup`` untimed calls (which also
absorb compilation). Times are medians over rounds and each ratio is the median of the
per-round ratios, so load that comes and goes on a shared machine hits every variant alike
instead of whichever variant happens to run during a busy spell. The models and
``--cifar-train`` CSVs are rewritten after every round (a run cut short keeps the rounds it
finished, column ``rounds``), the layer and profile CSVs after every layer / model.
``--train-loop`` and ``--share`` time whole epochs of the recipes' loop, one variant after the
other (their CSV is rewritten after every epoch / arrangement).

Examples::

    qzoo bench --device cpu --threads 1 --models wdcnn qcnn resnet20 qresnet20 \\
        --ratio-to qcnn=wdcnn qresnet20=resnet20 --runtimes eager compiled onnxruntime \\
        --bench latency infer --batch-size 64 --rounds 9 --min-time 0.3
    qzoo bench --layer-bench --batch-size 128 --threads 1
    qzoo bench --cifar-train --device cuda --amp bf16 --channels-last \\
        --models resnet20 qresnet20 --runtimes eager compiled
    qzoo bench --train-loop --device cuda --runtimes eager compiled --compile-mode reduce-overhead
    qzoo bench --share 4 --recipes recipes/cifar10-jpeg75/qresnet20-w16.yaml --loop-images 10240
    qzoo bench --suite gpu --budget-s 120 --results-dir results/gpu
"""
from __future__ import annotations

import argparse
import ast
import csv
import ctypes
import ctypes.util
import datetime as _dt
import io
import math
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.benchmark import Timer

from .bounds import device_of
from .checkout import root as checkout_root
from .errors import NotARegularFileError
from .fileio import atomic_write_json, atomic_write_text, check_target
from .trainspeed import LOOP_RECIPES

TIMM_COLUMNS = ['model', 'infer_samples_per_sec', 'infer_step_time', 'infer_batch_size', 'infer_img_size',
                'infer_gmacs', 'param_count', 'train_samples_per_sec', 'train_step_time', 'train_batch_size',
                'train_img_size']
QZOO_COLUMNS = ['device', 'torch', 'neuron', 'runtime', 'compiled', 'dtype', 'channels_last', 'date']
EXTRA_COLUMNS = ['bench', 'infer_latency_ms', 'infer_latency_ratio', 'ratio_to', 'infer_latency_vs_eager',
                 'infer_throughput_vs_eager', 'train_throughput_vs_eager', 'rounds', 'params', 'macs',
                 'infer_peak_mem_mb', 'train_peak_mem_mb', 'device_name', 'threads', 'malloc', 'onnxruntime', 'note']
MODEL_COLUMNS = TIMM_COLUMNS + QZOO_COLUMNS + EXTRA_COLUMNS

LAYER_COLUMNS = ['layer', 'in_channels', 'out_channels', 'img_size', 'stride', 'batch_size', 'input_grad',
                 'neuron', 'conv_ms', 'quad_ms', 'quad_x', 'rounds', 'device', 'torch', 'dtype', 'channels_last',
                 'date', 'device_name', 'threads', 'malloc']

PROFILE_COLUMNS = ['model', 'rank', 'kernel', 'calls', 'self_time_us', 'share', 'step_kernel_time_us', 'activity',
                   'batch_size', 'device', 'device_name', 'torch', 'dtype', 'channels_last', 'date']

SUITE_COLUMNS = ['step', 'status', 'seconds', 'timeout_s', 'results_file', 'detail']

LOOP_COLUMNS = ['model', 'run', 'recipe', 'runtime', 'compile_mode', 'train_samples_per_sec', 'epoch_s', 'epochs',
                'images_per_epoch', 'first_epoch_s', 'startup_s', 'build_s', 'batch_size', 'amp', 'channels_last',
                'optimizer', 'stacked_x_terms', 'params', 'device', 'device_name', 'torch', 'date', 'note']
SHARE_COLUMNS = ['arrangement', 'runs', 'total_img_s', 'per_run_img_s', 'vs_alone', 'window_s', 'model', 'run',
                 'recipe', 'runtime', 'compile_mode', 'images_per_epoch', 'batch_size', 'amp', 'channels_last',
                 'optimizer', 'stacked_x_terms', 'device', 'device_name', 'torch', 'date', 'note']

#: the 3x3 (padding 1) convolutions of the CIFAR ResNets: name, in, out, input size, stride
CIFAR_LAYERS = [('stem', 3, 16, 32, 1), ('16-16', 16, 16, 32, 1), ('16-32/2', 16, 32, 32, 2),
                ('32-32', 32, 32, 16, 1), ('32-64/2', 32, 64, 16, 2), ('64-64', 64, 64, 8, 1)]
RUNTIMES = ('eager', 'compiled', 'onnxruntime')
KINDS = ('latency', 'infer', 'train')


# ---- environment ------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def disable_malloc_trim() -> bool:
    """Keep freed memory in glibc's heap (no trimming, no per-allocation mmap), so that
    large CPU tensors do not page-fault on every allocation. Returns whether it worked."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c'))
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError, TypeError):
        return False


def onnxruntime_version() -> str:
    try:
        import onnxruntime
        return onnxruntime.__version__
    except ImportError:
        return ''


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def autocast(device: torch.device, amp: Optional[str]):
    if not amp:
        return nullcontext()
    return torch.autocast(device.type, dtype={'bf16': torch.bfloat16, 'fp16': torch.float16}[amp])


def common_row(args, device: torch.device) -> Dict[str, object]:
    return dict(device=device.type, torch=torch.__version__, dtype=f'{args.amp}-amp' if args.amp else 'float32',
                channels_last=bool(args.channels_last), date=_dt.datetime.now().isoformat(timespec='minutes'),
                device_name=device_name(device), threads=torch.get_num_threads() if device.type == 'cpu' else '',
                malloc='no-trim' if args.no_malloc_trim else 'default')


# ---- timing -----------------------------------------------------------------------------
def time_call(fn: Callable[[], object], min_time: float) -> float:
    """Median seconds per call of ``fn`` over one ``blocked_autorange`` of ``min_time`` seconds."""
    return Timer('fn()', globals={'fn': fn}).blocked_autorange(min_run_time=min_time).median


def interleaved(fns: Dict[Any, Callable[[], object]], rounds: int, min_time: float, seed: int,
                device: torch.device, on_round: Optional[Callable[[Dict[Any, List[float]]], None]] = None
                ) -> Dict[Any, List[float]]:
    """Time every function once per round, in a new shuffled order each round; returns the
    per-round times by key. ``on_round(times)`` is called after each round."""
    times: Dict[Any, List[float]] = {k: [] for k in fns}
    keys = list(fns)
    rng = random.Random(seed)
    sync(device)
    for _ in range(max(1, rounds)):
        rng.shuffle(keys)
        for k in keys:
            times[k].append(time_call(fns[k], min_time))
        if on_round is not None:
            on_round(times)
    return times


def median_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median of the per-round ratios ``num[i] / den[i]``."""
    return statistics.median(a / b for a, b in zip(num, den))


def peak_mem_mb(device: torch.device, fn: Callable[[], object]) -> Optional[float]:
    if device.type != 'cuda':
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)


# ---- models -----------------------------------------------------------------------------
def parse_model_args(items: Sequence[str]) -> Dict[str, object]:
    out: Dict[str, object] = {}
    for item in items or ():
        if '=' not in item:
            raise SystemExit(f'--model-args takes key=value, got {item!r}')
        k, v = item.split('=', 1)
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k] = v  # a plain string, e.g. neuron=fan
    return out


def build(name: str, args, device: torch.device) -> nn.Module:
    import qzoo
    model = qzoo.create_model(name, **parse_model_args(args.model_args)).to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def batch_shape(model: nn.Module, name: str, batch: int, img_size: Optional[int]) -> tuple:
    """``(batch, *sample)`` of the model's default input; ``img_size`` resizes image inputs."""
    from qzoo.export import example_input_shape
    shape = example_input_shape(model, batch)
    if img_size:
        if len(shape) != 4:
            raise SystemExit(f'--img-size applies to image models; {name} takes inputs of shape (N, '
                             f'{", ".join(map(str, shape[1:]))})')
        shape = shape[:2] + (img_size, img_size)
    return shape


def make_input(shape: tuple, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = torch.randn(*shape, device=device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def compile_model(model: nn.Module, args) -> nn.Module:
    """``torch.compile`` with static shapes (batch 1 and batch N each get their own graph)."""
    kw = dict(dynamic=False, backend=args.compile_backend)
    if args.compile_mode and args.compile_backend == 'inductor':  # a mode is inductor's
        kw['mode'] = args.compile_mode
    return torch.compile(model, **kw)


def cudagraphs(args, runtime: str) -> bool:
    """Whether ``runtime`` replays CUDA graphs (compiled by inductor in such a mode)."""
    from qzoo.engine import CUDAGRAPH_MODES
    return runtime == 'compiled' and args.compile_backend == 'inductor' and args.compile_mode in CUDAGRAPH_MODES


def loss_of(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for class scores (N, classes), BCE with logits for dense outputs."""
    if out.dim() == 2:
        return F.cross_entropy(out, target)
    return F.binary_cross_entropy_with_logits(out.float(), target)


def random_target(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Targets shaped like the model's output: class indices, or a {0, 1} mask."""
    with torch.no_grad():
        was = model.training
        out = model.eval()(x[:1])
        model.train(was)
    if out.dim() == 2:
        return torch.randint(0, out.shape[1], (x.shape[0],), device=x.device)
    return torch.randint(0, 2, (x.shape[0], *out.shape[1:]), device=x.device).float()


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    """The CIFAR recipe's optimizer: SGD-nesterov over ReLinear parameter groups."""
    from qzoo.relinear import param_groups
    groups = param_groups(model, lr=0.2, weight_decay=5e-4, quad_lr_scale=1e-2, quad_weight_decay=5e-4)
    return torch.optim.SGD(groups, lr=0.2, momentum=0.9, nesterov=True)


def train_step_fn(net: nn.Module, model: nn.Module, next_batch: Callable[[], tuple], device: torch.device,
                  amp: Optional[str], channels_last: bool, cudagraphs: bool = False) -> Callable[[], None]:
    """One training step as the engine runs it; ``net`` may be the compiled ``model`` (``cudagraphs``: in a mode
    that replays CUDA graphs, whose steps are marked)."""
    opt = sgd(model)

    def step():
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        x, y = next_batch()
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            loss = loss_of(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def infer_fn(net: nn.Module, x: torch.Tensor, device: torch.device, amp: Optional[str]) -> Callable[[], object]:
    def infer():
        with torch.inference_mode(), autocast(device, amp):
            return net(x)
    return infer


class OnnxRuntimeModel:
    """``model`` exported with :func:`qzoo.export.export_onnx` (dynamic batch) into a temporary
    folder and loaded in onnxruntime (CPUExecutionProvider, the process's torch thread count)."""

    def __init__(self, model: nn.Module, input_shape: tuple):
        from qzoo.export import export_onnx, onnxruntime_session
        with tempfile.TemporaryDirectory(prefix='qzoo-bench-') as tmp:
            path = export_onnx(model, Path(tmp) / 'model.onnx', input_shape=input_shape)
            self.session = onnxruntime_session(path)
        self.input_name = self.session.get_inputs()[0].name

    def fn(self, x: torch.Tensor) -> Callable[[], object]:
        feed = {self.input_name: x.detach().cpu().float().contiguous().numpy()}
        return lambda: self.session.run(None, feed)


# ---- models mode: interleaved -----------------------------------------------------------
def model_info(name: str, args, device: torch.device) -> Dict[str, object]:
    """The row fields that do not depend on the runtime (params, MACs, neuron, sizes)."""
    import qzoo
    model = build(name, args, device)
    sample = batch_shape(model, name, 1, args.img_size)
    params, macs = qzoo.count_params(model), qzoo.count_macs(model, sample)
    return dict(model=name, neuron=getattr(model, 'neuron', 'linear'), params=params,
                param_count=round(params / 1e6, 4), macs=macs, infer_gmacs=round(macs / 1e9, 5),
                img_size=sample[-1])


def check_runtimes(args, device: torch.device) -> None:
    if 'onnxruntime' in args.runtimes:
        if device.type != 'cpu':
            raise SystemExit('--runtimes onnxruntime runs on the CPU (CPUExecutionProvider): use --device cpu')
        if args.amp:
            raise SystemExit('--runtimes onnxruntime measures the float32 export: drop --amp')
        if not onnxruntime_version():
            raise SystemExit("--runtimes onnxruntime needs onnxruntime: pip install 'qzoo[export]'")


def model_tasks(name: str, runtime: str, args, device: torch.device, kinds: Sequence[str],
                batch_source: Optional[Callable[[int], Callable[[], tuple]]] = None) -> Dict[str, Callable]:
    """The timed functions of one (model, runtime): kind -> fn (warmed up)."""
    eval_model = build(name, args, device).eval()
    bs = args.batch_size
    x1 = make_input(batch_shape(eval_model, name, 1, args.img_size), device, args.channels_last)
    xb = make_input(batch_shape(eval_model, name, bs, args.img_size), device, args.channels_last)
    fns: Dict[str, Callable] = {}
    if runtime == 'onnxruntime':
        ort_model = OnnxRuntimeModel(eval_model, tuple(x1.shape))
        fns.update(latency=ort_model.fn(x1), infer=ort_model.fn(xb))
    else:
        net = compile_model(eval_model, args) if runtime == 'compiled' else eval_model
        fns.update(latency=infer_fn(net, x1, device, args.amp), infer=infer_fn(net, xb, device, args.amp))
        if 'train' in kinds:
            train_model = build(name, args, device).train()
            tnet = compile_model(train_model, args) if runtime == 'compiled' else train_model
            if batch_source is None:
                y = random_target(train_model, xb)
                next_batch = lambda: (xb, y)  # noqa: E731
            else:
                next_batch = batch_source(bs)
            fns['train'] = train_step_fn(tnet, train_model, next_batch, device, args.amp, args.channels_last,
                                         cudagraphs(args, runtime))
    fns = {k: fn for k, fn in fns.items() if k in kinds}
    for fn in fns.values():
        for _ in range(max(1, args.warmup)):
            fn()
    return fns


def ratio_refs(args) -> Dict[str, str]:
    """The reference model of each model's ``infer_latency_ratio``: ``--ratio-to A=B`` pairs
    (a reference is its own), else the first model."""
    pairs = {}
    for item in args.ratio_to or ():
        a, sep, b = item.partition('=')
        if not sep or a not in args.models or b not in args.models:
            raise SystemExit(f'--ratio-to takes MODEL=REFERENCE with both in --models {args.models}, got {item!r}')
        pairs[a] = b
    refs = {m: m if m in pairs.values() else args.models[0] for m in args.models}
    refs.update(pairs)
    return refs


def model_rows(variants: List[tuple], infos: Dict[str, dict], times: Dict[tuple, List[float]], args,
               base: Dict[str, object], notes: Dict[tuple, str]) -> List[Dict[str, object]]:
    """One row per (model, runtime) from the per-round times so far."""
    bs, refs = args.batch_size, ratio_refs(args)
    rows = []
    for name, rt in variants:
        t = {k: times[(name, rt, k)] for k in KINDS if (name, rt, k) in times}
        row = dict(base, **infos[name], runtime=rt, compiled=rt == 'compiled', rounds=len(next(iter(t.values()))),
                   onnxruntime=onnxruntime_version() if rt == 'onnxruntime' else '', note=notes.get((name, rt), ''))
        eager = {k: times.get((name, 'eager', k)) for k in KINDS}
        if 'latency' in t or 'infer' in t:
            row['infer_img_size'] = row['img_size']
        if 'latency' in t and (refs[name], rt, 'latency') in times:
            row.update(infer_latency_ms=round(1e3 * statistics.median(t['latency']), 4), ratio_to=refs[name],
                       infer_latency_ratio=round(median_ratio(t['latency'], times[(refs[name], rt, 'latency')]), 3))
            if eager['latency']:
                row['infer_latency_vs_eager'] = round(median_ratio(t['latency'], eager['latency']), 3)
        if 'infer' in t:
            s = statistics.median(t['infer'])
            row.update(infer_samples_per_sec=round(bs / s, 2), infer_step_time=round(1e3 * s, 4), infer_batch_size=bs)
            if eager['infer']:
                row['infer_throughput_vs_eager'] = round(median_ratio(eager['infer'], t['infer']), 3)
        if 'train' in t:
            s = statistics.median(t['train'])
            row.update(train_samples_per_sec=round(bs / s, 2), train_step_time=round(1e3 * s, 4), train_batch_size=bs,
                       train_img_size=row['img_size'])
            if eager['train']:
                row['train_throughput_vs_eager'] = round(median_ratio(eager['train'], t['train']), 3)
        if 'latency' in t and 'infer' not in t:
            row['infer_batch_size'] = 1
        rows.append(row)
    return rows


def bench_models(args, device: torch.device, log, out: Path, columns: List[str], bench: str = 'model',
                 batch_source=None, note: str = '') -> List[Dict[str, object]]:
    """Every (model, runtime) of the run, measured interleaved; the CSV is rewritten per round."""
    kinds = [k for k in KINDS if k in args.bench]
    variants = [(m, rt) for m in args.models for rt in args.runtimes if not (rt == 'onnxruntime' and kinds == ['train'])]
    infos = {m: model_info(m, args, device) for m in args.models}
    fns, notes = {}, {}
    for name, rt in variants:
        t0 = time.perf_counter()
        kinds_rt = [k for k in kinds if not (rt == 'onnxruntime' and k == 'train')]
        for k, fn in model_tasks(name, rt, args, device, kinds_rt, batch_source).items():
            fns[(name, rt, k)] = fn
        notes[(name, rt)] = '; '.join(filter(None, [note, 'no training step in onnxruntime'
                                                    if rt == 'onnxruntime' and 'train' in kinds else '']))
        log(f'{name} [{rt}] ready ({time.perf_counter() - t0:.1f} s incl. warm-up/compile)')
    base = dict(common_row(args, device), bench=bench)
    rows: List[Dict[str, object]] = []

    def on_round(times):
        rows[:] = model_rows(variants, infos, times, args, base, notes)
        write_csv(out, rows, columns)
    interleaved(fns, args.rounds, args.min_time, args.seed, device, on_round)
    for r in rows:  # peak memory (CUDA): once per task, after the timed rounds
        for kind in ('infer', 'train'):
            fn = fns.get((r['model'], r['runtime'], kind))
            r[f'{kind}_peak_mem_mb'] = peak_mem_mb(device, fn) if fn is not None else None
    write_csv(out, rows, columns)
    log_model_rows(rows, log)
    return rows


def log_model_rows(rows: List[Dict[str, object]], log) -> None:
    for r in rows:
        parts = [f"{r['model']:10s} [{r['runtime']:11s}]"]
        if r.get('infer_latency_ms') is not None:
            vs = f", {r['infer_latency_vs_eager']}x eager" if r.get('infer_latency_vs_eager') is not None else ''
            parts.append(f"batch-1 {r['infer_latency_ms']:9.4f} ms ({r['infer_latency_ratio']}x {r['ratio_to']}{vs})")
        if r.get('infer_samples_per_sec') is not None:
            parts.append(f"infer {r['infer_samples_per_sec']:>10,.1f}/s")
        if r.get('train_samples_per_sec') is not None:
            parts.append(f"train {r['train_samples_per_sec']:>10,.1f}/s")
        log(' | '.join(parts) + f" ({r['rounds']} rounds)")


# ---- CIFAR training through the training pipeline ------------------------------------------
def _cifar_data(split: str, log) -> tuple:
    """``(DataSplits, split)`` of ``cifar10-jpeg75``; the train split falls back to the test split (shipped in a
    checkout's ``data/``) when the full data is absent."""
    from qzoo.data import load_dataset
    if split == 'train':
        try:
            return load_dataset('cifar10-jpeg75', splits=('train',)), 'train'
        except FileNotFoundError as e:
            log(f'cifar10-jpeg75 train split not found ({str(e).splitlines()[0]}); timing on the shipped test split')
    try:
        return load_dataset('cifar10-jpeg75', splits=('test',)), 'test'
    except FileNotFoundError as e:
        if checkout_root() is not None:
            raise
        raise FileNotFoundError(
            f'cifar10-jpeg75 is not here ({str(e).splitlines()[0]}). The CIFAR modes need the full file (set '
            f'QZOO_DATA to the folder holding cifar10-jpeg75.npz) or a checkout of the qzoo repository, whose '
            f'data/ ships the test split; qzoo runs from an installed package here') from None


def cifar_batches(args, device: torch.device, log) -> tuple:
    """``(make(batch_size) -> next_batch, note)``: batches of ``cifar10-jpeg75`` from
    ``qzoo.data.BatchLoader`` with the dataset's augmentation and normalisation on ``device``."""
    from qzoo.data import BatchLoader, Split
    ds, split = _cifar_data(args.cifar_split, log)
    data = getattr(ds, split)
    if args.cifar_size:
        data = Split(data.x[:args.cifar_size], data.y[:args.cifar_size])
    if len(data) < args.batch_size:
        raise SystemExit(f'--cifar-size {len(data)} is smaller than --batch-size {args.batch_size}')
    note = (f'{ds.name} {split} split ({len(data)} images) through qzoo.data.BatchLoader, '
            f'augment={ds.augment}, normalised, on {device.type}')

    def make(bs: int) -> Callable[[], tuple]:
        loader = BatchLoader(data, bs, shuffle=True, seed=args.seed, device=device, augment=ds.augment,
                             normalize=ds.normalize, drop_last=True)
        state = {'epoch': 0, 'it': iter(loader)}

        def next_batch():
            try:
                return next(state['it'])
            except StopIteration:
                state['epoch'] += 1
                loader.set_epoch(state['epoch'])
                state['it'] = iter(loader)
                return next(state['it'])
        return next_batch
    return make, note


def bench_cifar_train(args, device: torch.device, log, out: Path) -> List[Dict[str, object]]:
    make, note = cifar_batches(args, device, log)
    args.bench = ['train']
    return bench_models(args, device, log, out, MODEL_COLUMNS, bench='cifar-train', batch_source=make, note=note)


# ---- the recipes' own training loop ---------------------------------------------------------
def loop_compile(runtime: str, mode: Optional[str]):
    """The recipe's ``compile`` value of a runtime: eager is false, compiled is the torch.compile mode."""
    if runtime not in ('eager', 'compiled'):
        raise SystemExit(f'--train-loop and --share time the runtimes eager and compiled, got {runtime!r}')
    return False if runtime == 'eager' else (mode or 'default')


def _loop_base(args, device: torch.device, path: str, runtime: str, info: Dict[str, object]) -> Dict[str, object]:
    base = dict(common_row(args, device), recipe=path, runtime=runtime, **info)
    if runtime == 'compiled' and args.compile_backend != 'inductor':
        base['note'] = f'dynamo backend {args.compile_backend!r} (a check of the path, not a measurement)'
    return base


def loop_row(args, device: torch.device, path: str, runtime: str, t) -> Dict[str, object]:
    """The CSV row of one :class:`qzoo.trainspeed.LoopTimes`."""
    row = dict(_loop_base(args, device, path, runtime, t.info), build_s=round(t.build_s, 2), epochs=len(t.epoch_s),
               first_epoch_s=round(t.first_epoch_s, 3) if t.first_epoch_s is not None else None)
    if t.epoch_s:
        row.update(train_samples_per_sec=round(t.img_s, 1), epoch_s=round(statistics.median(t.epoch_s), 4),
                   startup_s=round(t.startup_s, 2))
    return row


def bench_train_loop(args, device: torch.device, log, out: Path) -> List[Dict[str, object]]:
    """Training img/s of each recipe (``--recipes``) and runtime in the engine's own loop, one after the other."""
    from qzoo import trainspeed
    rows: List[Dict[str, object]] = []
    for path in args.recipes:
        for rt in args.runtimes:
            r = trainspeed.loop_recipe(path, loop_compile(rt, args.compile_mode), device, args.set, args.loop_images)
            log(f'{r.name} [{rt}{" " + args.compile_mode if rt == "compiled" and args.compile_mode else ""}]: '
                f'set-up, 1 + {args.rounds} epochs (at least {args.min_time:g} s)')

            def on_epoch(t, path=path, rt=rt):
                write_csv(out, rows + [loop_row(args, device, path, rt, t)], LOOP_COLUMNS)
            t = trainspeed.loop_speed(r, args.loop_images, args.rounds, args.min_time, args.compile_backend, on_epoch)
            rows.append(loop_row(args, device, path, rt, t))
            write_csv(out, rows, LOOP_COLUMNS)
            log(f"{r.name} [{rt}]: {rows[-1]['train_samples_per_sec']:,.0f} img/s ({rows[-1]['epochs']} epochs of "
                f"{t.images} images, {rows[-1]['epoch_s']} s each); start-up {rows[-1]['startup_s']} s (first epoch "
                f"{rows[-1]['first_epoch_s']} s), set-up {rows[-1]['build_s']} s")
    return rows


def _worker_args(args, device: torch.device, path: str, runtime: str) -> Callable[[int, Path], List[str]]:
    """The command line of share worker i (``--share-worker``) for this measurement."""
    from qzoo.trainspeed import worker_command

    def argv(i: int, folder: Path) -> List[str]:
        a = ['--share-worker', str(folder), '--share-index', str(i), '--recipes', path, '--runtimes', runtime,
             '--device', str(device), '--min-time', str(args.min_time), '--compile-backend', args.compile_backend]
        for o in [*args.set, f'seed={i}']:
            a += ['--set', o]
        a += ['--compile-mode', args.compile_mode] if args.compile_mode else []
        a += ['--loop-images', str(args.loop_images)] if args.loop_images else []
        a += ['--stack-x-terms'] if args.stack_x_terms else []
        return worker_command(a + (['--threads', str(args.threads)] if args.threads else []))
    return argv


def share_row(base: Dict[str, object], arrangement: str, results: List[Dict], runs: int,
              alone: Optional[float]) -> Dict:
    """The CSV row of ``runs`` runs that trained side by side (``results``: one per process, or one for all)."""
    from qzoo.trainspeed import total_img_s
    total = total_img_s(results)
    return dict(base, **results[0]['info'], arrangement=arrangement, runs=runs, total_img_s=round(total, 1),
                per_run_img_s=round(total / runs, 1), vs_alone=round(total / (alone or total), 3),
                window_s=round(max(r['seconds'] for r in results), 2))


def bench_share(args, device: torch.device, log, out: Path) -> List[Dict[str, object]]:
    """``--share K``: total training img/s of K runs of the first recipe on one device, alone (one run), as K
    processes side by side, and as K models in one process (seeds 0..K-1)."""
    from qzoo import trainspeed
    path, rt, k = args.recipes[0], args.runtimes[0], args.share
    recipe = trainspeed.loop_recipe(path, loop_compile(rt, args.compile_mode), device, args.set, args.loop_images)
    base = _loop_base(args, device, path, rt, {})
    rows: List[Dict[str, object]] = []
    alone = None
    plan = [('alone', lambda: [trainspeed.share_one_process([recipe], args.loop_images, args.min_time,
                                                             args.compile_backend)]),
            ('processes', lambda: trainspeed.share_processes(k, _worker_args(args, device, path, rt))),
            ('one-process', lambda: [trainspeed.share_one_process([recipe.replace(seed=i) for i in range(k)],
                                                                   args.loop_images, args.min_time,
                                                                   args.compile_backend)])]
    for arrangement, measure in plan:
        log(f'{recipe.name} [{rt}]: {arrangement}' + ('' if arrangement == 'alone' else f', {k} runs'))
        rows.append(share_row(base, arrangement, measure(), 1 if arrangement == 'alone' else k, alone))
        alone = alone or rows[0]['total_img_s']
        write_csv(out, rows, SHARE_COLUMNS)
        log(f"  {rows[-1]['total_img_s']:,.0f} img/s in all ({rows[-1]['per_run_img_s']:,.0f} per run"
            + (f", {rows[-1]['vs_alone']}x alone)" if rows[-1]['vs_alone'] else ')'))
    return rows


def run_share_worker(args) -> int:
    """``--share-worker DIR --share-index I``: one run of a ``--share`` measurement (see qzoo.trainspeed)."""
    from qzoo import trainspeed
    device = setup(args, lambda s: None)
    r = trainspeed.loop_recipe(args.recipes[0], loop_compile(args.runtimes[0], args.compile_mode), device, args.set,
                               args.loop_images)
    with stacking(args.stack_x_terms):
        trainspeed.share_worker(r, args.loop_images, args.min_time, Path(args.share_worker), args.share_index,
                                args.compile_backend)
    return 0


@contextmanager
def stacking(on: bool):
    """``qzoo.layers.STACK_X_TERMS_ON_CUDA`` set to ``on`` for a measurement (``--stack-x-terms``), then restored:
    a suite's steps run in one process."""
    from qzoo import layers
    old = layers.STACK_X_TERMS_ON_CUDA
    layers.STACK_X_TERMS_ON_CUDA = bool(on) or old
    try:
        yield
    finally:
        layers.STACK_X_TERMS_ON_CUDA = old


# ---- the layer table -------------------------------------------------------------------
def layer_fns(cin: int, cout: int, hw: int, stride: int, args, device: torch.device) -> Dict[str, Callable]:
    """Forward + backward of ``nn.Conv2d`` and ``QuadraticConv2d`` of one shape."""
    import qzoo
    mf = torch.channels_last if args.channels_last else torch.contiguous_format
    x = torch.randn(args.batch_size, cin, hw, hw, device=device).contiguous(memory_format=mf)
    x.requires_grad_(cin != 3)  # the network input (the stem's) needs no gradient
    conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1).to(device, memory_format=mf)
    quad = qzoo.QuadraticConv2d(cin, cout, 3, stride=stride, padding=1, neuron=args.layer_neuron).to(
        device, memory_format=mf)
    with torch.no_grad():
        for p in quad.parameters():
            p.normal_(0, 0.1)
    with autocast(device, args.amp):
        go = torch.randn_like(conv(x))

    def fwd_bwd(module):
        inputs = ([x] if x.requires_grad else []) + list(module.parameters())

        def run():
            with autocast(device, args.amp):
                y = module(x)
            return torch.autograd.grad(y, inputs, go)
        return run
    fns = {'conv': fwd_bwd(conv), 'quad': fwd_bwd(quad)}
    for fn in fns.values():
        for _ in range(max(1, args.warmup)):
            fn()
    return fns


def bench_layers(args, device: torch.device, log, out: Path) -> List[Dict[str, object]]:
    rows = []
    for lname, cin, cout, hw, stride in [e for e in CIFAR_LAYERS if not args.layers or e[0] in args.layers]:
        times = interleaved(layer_fns(cin, cout, hw, stride, args, device), args.rounds, args.min_time,
                            args.seed, device)
        row = dict(common_row(args, device), layer=lname, in_channels=cin, out_channels=cout, img_size=hw,
                   stride=stride, batch_size=args.batch_size, input_grad=cin != 3, neuron=args.layer_neuron,
                   rounds=len(times['conv']), conv_ms=round(1e3 * statistics.median(times['conv']), 4),
                   quad_ms=round(1e3 * statistics.median(times['quad']), 4),
                   quad_x=round(median_ratio(times['quad'], times['conv']), 3))
        rows.append(row)
        write_csv(out, rows, LAYER_COLUMNS)
        log(f"{lname:8s} {cin:>2}->{cout:<2} @{hw:<2} s{stride}: conv {row['conv_ms']:8.3f} ms | "
            f"{args.layer_neuron} {row['quad_ms']:8.3f} ms = {row['quad_x']:.2f}x")
    return rows


# ---- kernel profile ---------------------------------------------------------------------
def kernel_rows(prof, device: torch.device, top: int) -> List[Dict[str, object]]:
    """The ``top`` kernels by self time: CUDA kernels (and copies) on a GPU, CPU operators otherwise. On a GPU the
    operators that launched the kernels are left out: the profiler gives them their kernels' time as their own
    "self" device time too, which would count every kernel twice."""
    from torch.autograd import DeviceType
    events = prof.key_averages()
    if device.type == 'cuda':
        timed = [(e.key, e.count, e.self_device_time_total) for e in events
                 if e.device_type != DeviceType.CPU and e.self_device_time_total > 0]
        activity = 'cuda'
    else:
        timed = [(e.key, e.count, e.self_cpu_time_total) for e in events if e.self_cpu_time_total > 0]
        activity = 'cpu'
    total = sum(t for _, _, t in timed) or 1.0
    timed.sort(key=lambda e: -e[2])
    return [dict(rank=i + 1, kernel=k, calls=n, self_time_us=round(t, 1), share=round(t / total, 4),
                 step_kernel_time_us=round(total, 1), activity=activity) for i, (k, n, t) in enumerate(timed[:top])]


def bench_profile(args, device: torch.device, log, out: Path) -> List[Dict[str, object]]:
    """``torch.profiler`` of one CIFAR training step per model (after ``--warmup`` steps)."""
    from torch.profiler import ProfilerActivity, profile
    make, _ = cifar_batches(args, device, log)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    rows: List[Dict[str, object]] = []
    for name in args.models:
        model = build(name, args, device).train()
        runtime = 'compiled' if 'compiled' in args.runtimes else 'eager'
        net = compile_model(model, args) if runtime == 'compiled' else model
        step = train_step_fn(net, model, make(args.batch_size), device, args.amp, args.channels_last,
                             cudagraphs(args, runtime))
        for _ in range(max(1, args.warmup)):
            step()
        sync(device)
        with profile(activities=activities) as prof:
            step()
            sync(device)
        base = dict(common_row(args, device), model=name, batch_size=args.batch_size)
        got = [dict(base, **r) for r in kernel_rows(prof, device, args.top)]
        rows += got
        write_csv(out, rows, PROFILE_COLUMNS)
        if got:
            log(f"{name}: {got[0]['step_kernel_time_us'] / 1e3:.2f} ms of {got[0]['activity']} kernel time in one "
                f"step; top: {got[0]['kernel'][:60]} ({got[0]['share']:.0%})")
    return rows


# ---- output -----------------------------------------------------------------------------
def write_csv(path: Path, rows: List[Dict[str, object]], columns: List[str]) -> None:
    """Write ``rows`` (missing values empty) atomically, creating the folder."""
    check_target(path, parents=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction='ignore', lineterminator='\n')
    w.writeheader()
    for r in rows:
        w.writerow({c: ('' if r.get(c) is None else r.get(c)) for c in columns})
    atomic_write_text(path, buf.getvalue())


# ---- the GPU suite ----------------------------------------------------------------------
class StepTimeout(BaseException):
    """A suite step ran past its share of the budget (a BaseException, so that library code's
    ``except Exception`` cannot swallow it)."""


@contextmanager
def deadline(seconds: Optional[float]):
    """Raise :class:`StepTimeout` in the main thread after ``seconds`` (again every 5 s if it is
    caught somewhere). Outside the main thread there is no deadline."""
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise StepTimeout(f'ran past its {seconds:.0f} s')
    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, max(float(seconds), 1e-3), 5.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


CIFAR_MODELS = ['resnet20', 'resnet56', 'qresnet20']
PROFILE_MODELS = ['resnet20', 'qresnet20']
#: --smoke: the tiny models standing in for the suite's (also in the recipes: ``--set model=...``)
SMOKE_MODELS = {'resnet20': 'resnet8', 'resnet56': 'resnet8', 'qresnet20': 'qresnet8'}
LOOP_ARGS = ['--rounds', '2', '--min-time', '1']
CUDAGRAPHS = ['--runtimes', 'compiled', '--compile-mode', 'reduce-overhead']
SHARE_ARGS = ['--share', '4', '{recipe:qresnet20}', '--loop-images', '10240', '--min-time', '6']
#: the GPU suite, most important first: (step, share of the budget, arguments). The six training speeds in the
#: recipes' own loop come first and share the whole budget; every step after them (share 0) gets the time they
#: leave. ``{recipe:NAME}`` stands for ``--recipes`` and the recipe of NAME (trainspeed.LOOP_RECIPES), ``{models}``
#: for CIFAR_MODELS, ``{pair}`` for PROFILE_MODELS (under --smoke: the SMOKE_MODELS).
SUITE = [
    ('loop_resnet20_eager', 0.07, ['--train-loop', '{recipe:resnet20}', '--runtimes', 'eager', *LOOP_ARGS]),
    ('loop_qresnet20_eager', 0.09, ['--train-loop', '{recipe:qresnet20}', '--runtimes', 'eager', *LOOP_ARGS]),
    ('loop_resnet20_compiled', 0.20, ['--train-loop', '{recipe:resnet20}', '--runtimes', 'compiled', *LOOP_ARGS]),
    ('loop_qresnet20_compiled', 0.30, ['--train-loop', '{recipe:qresnet20}', '--runtimes', 'compiled', *LOOP_ARGS]),
    ('loop_resnet20_cudagraphs', 0.13, ['--train-loop', '{recipe:resnet20}', *CUDAGRAPHS, *LOOP_ARGS]),
    ('loop_qresnet20_cudagraphs', 0.21, ['--train-loop', '{recipe:qresnet20}', *CUDAGRAPHS, *LOOP_ARGS]),
    ('loop_qresnet20_eager_stacked', 0.0, ['--train-loop', '{recipe:qresnet20}', '--runtimes', 'eager',
                                           '--stack-x-terms', *LOOP_ARGS]),
    ('loop_qresnet20_cudagraphs_stacked', 0.0, ['--train-loop', '{recipe:qresnet20}', *CUDAGRAPHS, '--stack-x-terms',
                                                *LOOP_ARGS]),
    ('share_eager', 0.0, [*SHARE_ARGS, '--runtimes', 'eager']),
    ('profile_kernels_cudagraphs', 0.0, ['--profile', '--channels-last', '--models', '{pair}', *CUDAGRAPHS]),
    ('share_cudagraphs', 0.0, [*SHARE_ARGS, *CUDAGRAPHS]),
    ('profile_kernels', 0.0, ['--profile', '--channels-last', '--models', '{pair}']),
    ('layers', 0.0, ['--layer-bench', '--channels-last', '--batch-size', '512', '--min-time', '0.2']),
    ('models', 0.0, ['--channels-last', '--models', '{models}', '--runtimes', 'eager', '--batch-size', '512',
                     '--min-time', '0.5']),
]
SUITE_FULL = ['--device', 'cuda', '--amp', 'bf16', '--warmup', '10', '--rounds', '3']
#: --smoke: the same steps on the CPU, tiny; dynamo's 'eager' backend stands in for inductor
SUITE_SMOKE = ['--device', 'cpu', '--threads', '1', '--warmup', '1', '--rounds', '1', '--min-time', '0.01',
               '--batch-size', '8', '--cifar-split', 'test', '--cifar-size', '32', '--layers', 'stem', '64-64',
               '--compile-backend', 'eager', '--top', '10', '--set', 'batch_size=16', '--loop-images', '32']


def suite_argv(args_: List[str], smoke: bool, results_file: Path) -> List[str]:
    """The ``qzoo bench`` arguments of a suite step (see SUITE)."""
    tiny = (lambda m: SMOKE_MODELS[m]) if smoke else (lambda m: m)
    out: List[str] = []
    for a in args_:
        if a.startswith('{recipe:'):
            name = a[len('{recipe:'):-1]
            out += ['--recipes', LOOP_RECIPES[name]] + (['--set', f'model={tiny(name)}'] if smoke else [])
        else:
            out += ([tiny(m) for m in CIFAR_MODELS] if a == '{models}' else [tiny(m) for m in PROFILE_MODELS]
                    if a == '{pair}' else [a])
    if smoke:  # tiny settings win: two runs side by side
        out = ['2' if i and out[i - 1] == '--share' else a for i, a in enumerate(out)]
        return out + SUITE_SMOKE + ['--results-file', str(results_file)]
    return SUITE_FULL + out + ['--results-file', str(results_file)]


def step_timeout(i: int, budget: float, remaining: float, reserve: float) -> float:
    """Step ``i`` may use its share of the budget, or more when earlier steps left time over,
    keeping the shares of the steps after it."""
    later = sum(share for _, share, _ in SUITE[i + 1:]) * budget
    return min(remaining - reserve, max(SUITE[i][1] * budget, remaining - reserve - later))


def suite_env(args) -> Dict[str, object]:
    def cmd(c: List[str], cwd: Optional[Path] = None) -> str:
        try:
            return subprocess.run(c, capture_output=True, text=True, timeout=15, cwd=cwd).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ''
    root = checkout_root()  # the commit of the checkout qzoo runs from ('' for an installed wheel)
    import timm
    import qzoo
    cuda = torch.cuda.is_available()
    return dict(date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds'), argv=sys.argv,
                budget_s=args.budget_s, smoke=bool(args.smoke), python=platform.python_version(),
                torch=torch.__version__, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if cuda else None,
                timm=timm.__version__, onnxruntime=onnxruntime_version(), qzoo=qzoo.__version__,
                device=device_name(torch.device('cuda' if cuda and not args.smoke else 'cpu')),
                git_commit=cmd(['git', 'rev-parse', 'HEAD'], root) if root else '', nvidia_smi=cmd(['nvidia-smi']))


def run_step(name: str, argv: List[str], timeout: float, out_dir: Path, log) -> tuple:
    """Run one suite step in this process under a deadline: ``(status, detail)``."""
    import traceback
    try:
        with deadline(timeout):
            main(argv, log=lambda s: log(f'  [{name}] {s}'))
        return 'ok', ''
    except StepTimeout as e:
        return 'timeout', f'{e}; the rows it finished are kept'
    except (Exception, SystemExit) as e:  # a failed step must not stop the others
        atomic_write_text(out_dir / f'{name}.error.txt', traceback.format_exc())
        return 'failed', f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""} (see {name}.error.txt)'
    finally:
        torch._dynamo.reset()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()


def _check_suite_args(args) -> None:
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit(f'--suite gpu needs CUDA, and torch.cuda.is_available() is False here (torch '
                         f'{torch.__version__}, CUDA build {torch.version.cuda}). Run it on a GPU machine, or add '
                         f'--smoke to run the same steps on the CPU with tiny sizes.')
    if not args.results_dir or not args.budget_s or args.budget_s <= 0:
        raise SystemExit('--suite gpu needs --budget-s SECONDS (> 0) and --results-dir DIR')


def run_suite(args, log, clock: Callable[[], float] = time.monotonic, step: Optional[Callable] = None) -> int:
    """``--suite gpu``: the SUITE steps in order within ``--budget-s`` (``clock``: seconds; ``step(name, argv,
    timeout, out_dir, log) -> (status, detail)`` runs one, :func:`run_step` by default); 1 if a step failed."""
    _check_suite_args(args)
    step = step or run_step
    t0, out_dir = clock(), Path(args.results_dir)
    check_target(out_dir / 'suite.csv', parents=True)
    atomic_write_json(out_dir / 'env.json', suite_env(args))
    budget, reserve = float(args.budget_s), min(10.0, 0.05 * float(args.budget_s))
    rows: List[Dict[str, object]] = []
    for i, (name, _, step_args) in enumerate(SUITE):
        remaining = budget - (clock() - t0)
        timeout = step_timeout(i, budget, remaining, reserve)
        csv_path = out_dir / f'{name}.csv'
        if timeout < (1.0 if args.smoke else 5.0):
            status, detail, secs = 'skipped', f'{max(remaining, 0):.0f} s of the budget left', 0.0
        else:
            log(f'== {name} (at {clock() - t0:.0f} s, up to {timeout:.0f} s)')
            ts = clock()
            status, detail = step(name, suite_argv(step_args, args.smoke, csv_path), timeout, out_dir, log)
            secs = clock() - ts
        rows.append(dict(step=name, status=status, seconds=round(secs, 1), timeout_s=round(max(timeout, 0), 1),
                         results_file=csv_path.name if csv_path.exists() else '', detail=detail))
        write_csv(out_dir / 'suite.csv', rows, SUITE_COLUMNS)
        log(f'== {name}: {status} ({secs:.0f} s){": " + detail if detail else ""}')
    loop_summary(out_dir, rows, log)
    log(f'== suite done in {clock() - t0:.0f} s of {budget:.0f}; CSVs in {out_dir}')
    return 1 if any(r['status'] == 'failed' for r in rows) else 0


def loop_summary(out_dir: Path, steps: List[Dict[str, object]], log) -> None:
    """The recipe-loop speeds of the suite's loop steps in one CSV (``train_loop.csv``, in SUITE order) and the log:
    what the suite is for, first."""
    rows = []
    for st in steps:
        if str(st['step']).startswith('loop_'):
            got = _read_rows(out_dir / f"{st['step']}.csv")
            rows += [dict(r, note=f"{st['step']}: {st['status']}" + (f"; {r['note']}" if r.get('note') else ''))
                     for r in got] or [dict(note=f"{st['step']}: {st['status']} {st['detail']}".strip())]
    if rows:
        write_csv(out_dir / 'train_loop.csv', rows, LOOP_COLUMNS)
        for r in rows:
            speed = f"{float(r['train_samples_per_sec']):>10,.0f} img/s" if r.get('train_samples_per_sec') else \
                f"{'-':>16}"
            log(f"   {r.get('model', ''):10s} {r.get('runtime', ''):8s} {r.get('compile_mode', ''):16s} {speed}  "
                f"start-up {r.get('startup_s') or '-'} s  ({r['note']})")


def _read_rows(path: Path) -> List[Dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


# ---- CLI --------------------------------------------------------------------------------
def _count(lo: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``lo``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'expected a whole number >= {lo}, got {text!r}') from None
        if value < lo:
            raise argparse.ArgumentTypeError(f'must be a whole number >= {lo}, got {value}')
        return value
    parse.__name__ = f'whole number >= {lo}'
    return parse


def _seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a number of seconds, got {text!r}') from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f'must be a finite number of seconds > 0, got {text}')
    return value


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument('--layer-bench', action='store_true', help='QuadraticConv2d vs nn.Conv2d on the CIFAR ResNet shapes')
    mode.add_argument('--cifar-train', action='store_true', help='training img/s through the CIFAR training pipeline')
    mode.add_argument('--profile', action='store_true', help='torch.profiler kernel times of one CIFAR training step')
    mode.add_argument('--train-loop', action='store_true',
                      help="training img/s in the recipes' own loop (qzoo.engine), eager or compiled")
    mode.add_argument('--share', type=_count(1), metavar='K',
                      help='total training img/s of K runs of one recipe on one device: K processes vs one process')
    mode.add_argument('--suite', choices=['gpu'], help='every GPU measurement within --budget-s into --results-dir')
    p.add_argument('--recipes', nargs='+', default=list(LOOP_RECIPES.values()),
                   help='--train-loop / --share (the first): recipe files (default: the CIFAR resnet20 and qresnet20 '
                        'w16 recipes of the checkout)')
    p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                   help='--train-loop / --share: a recipe override (repeatable)')
    p.add_argument('--loop-images', type=_count(1), default=None,
                   help='--train-loop / --share: epochs of this many training images (default: the whole split)')
    p.add_argument('--stack-x-terms', action='store_true',
                   help='run the quadratic terms that read x as one call on CUDA (qzoo.layers.STACK_X_TERMS_ON_CUDA)')
    p.add_argument('--share-worker', default=None, help=argparse.SUPPRESS)  # one run of a --share measurement
    p.add_argument('--share-index', type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument('--models', nargs='+', default=['resnet20', 'qresnet20'], help='qzoo/timm model names')
    p.add_argument('--model-args', nargs='*', default=[], metavar='KEY=VALUE', help='e.g. neuron=qres width=12')
    p.add_argument('--ratio-to', nargs='+', default=None, metavar='MODEL=REF',
                   help='models mode: latency ratio of MODEL to REF (default: to the first model)')
    p.add_argument('--bench', nargs='+', choices=KINDS, default=list(KINDS), help='models mode: what to measure')
    p.add_argument('--runtimes', nargs='+', choices=RUNTIMES, default=['eager'],
                   help='eager, compiled (torch.compile), onnxruntime (CPU, inference only)')
    p.add_argument('--batch-size', type=_count(1), default=None,
                   help='default: 256 (models), 128 (layer bench), 512 (cifar-train, profile)')
    p.add_argument('--img-size', type=_count(1), default=None, help="default: the model's cfg input size")
    p.add_argument('--device', default='auto', help="'cpu', 'cuda', 'cuda:1', or 'auto' (cuda when available)")
    p.add_argument('--amp', choices=['bf16', 'fp16'], default=None, help='autocast dtype (default: float32)')
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--compile-mode', default=None, help="torch.compile mode, e.g. 'reduce-overhead' (CUDA graphs)")
    p.add_argument('--compile-backend', default='inductor', help="torch.compile backend (default 'inductor')")
    p.add_argument('--layer-neuron', default='fan', help='neuron of the layer bench')
    p.add_argument('--layers', nargs='+', default=None, choices=[entry[0] for entry in CIFAR_LAYERS],
                   help='layer bench: only these shapes (default: all)')
    p.add_argument('--cifar-split', choices=['train', 'test'], default='train',
                   help='cifar10-jpeg75 split to train on (train falls back to the shipped test split)')
    p.add_argument('--cifar-size', type=_count(1), default=None, help='use only the first N images of the split')
    p.add_argument('--threads', type=_count(1), default=None, help='torch.set_num_threads (CPU; also onnxruntime)')
    p.add_argument('--no-malloc-trim', action='store_true',
                   help='CPU: keep freed memory in the glibc heap (avoids page faults on large tensors)')
    p.add_argument('--warmup', type=_count(0), default=5, help='untimed calls first (also absorbs compilation)')
    p.add_argument('--min-time', type=_seconds, default=None, help='seconds per measurement (default 1.0; 0.3 layers)')
    p.add_argument('--rounds', type=_count(1), default=5, help='interleaved rounds (medians over rounds)')
    p.add_argument('--top', type=_count(1), default=30, help='profile: kernels kept per model')
    p.add_argument('--results-file', default=None,
                   help='CSV path (default results/benchmark-<mode>-<device>.csv in the current directory)')
    p.add_argument('--results-dir', default=None, help='--suite: folder for its CSVs')
    p.add_argument('--budget-s', type=_seconds, default=None, help='--suite: seconds for the whole suite')
    p.add_argument('--smoke', action='store_true', help='--suite: same steps on the CPU with tiny sizes')
    p.add_argument('--seed', type=_count(0), default=0)
    return p


def main(argv: Optional[Sequence[str]] = None, log: Optional[Callable[[str], None]] = None) -> int:
    """Run the benchmark of ``argv``; returns the exit status."""
    args = get_parser().parse_args(argv)
    log = log or (lambda s: print(s, flush=True))
    if args.share_worker:
        return run_share_worker(args)
    if args.suite:
        return run_suite(args, log)
    run(args, log)
    return 0


def setup(args, log) -> torch.device:
    device = device_of(args.device, '--device')  # ValueError: not cpu/cuda, or a GPU this machine lacks
    args.device = str(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_malloc_trim and device.type == 'cpu' and not disable_malloc_trim():
        log('warning: --no-malloc-trim: mallopt is not available here; running with the default allocator')
        args.no_malloc_trim = False
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)
    return device


def run(args, log) -> List[Dict[str, object]]:
    device = setup(args, log)
    mode = ('layers' if args.layer_bench else 'cifar-train' if args.cifar_train else 'profile' if args.profile
            else 'train-loop' if args.train_loop else 'share' if args.share is not None else 'models')
    if args.batch_size is None:
        args.batch_size = {'layers': 128, 'cifar-train': 512, 'profile': 512, 'models': 256}.get(mode)
    if args.min_time is None:
        args.min_time = 0.3 if mode == 'layers' else 1.0
    check_runtimes(args, device)
    ratio_refs(args)  # a bad --ratio-to fails before anything is built
    batch = args.batch_size or "the recipe's"
    log(f'# {mode} on {device} ({device_name(device)}), torch {torch.__version__}, '
        f'threads {torch.get_num_threads() if device.type == "cpu" else "-"}, batch {batch}, '
        f'{args.amp or "float32"}, channels_last={args.channels_last}, runtimes {args.runtimes}, rounds {args.rounds}')
    out = Path(args.results_file) if args.results_file else Path.cwd() / 'results' / f'benchmark-{mode}-{device.type}.csv'
    check_target(out)  # an unusable CSV path is refused before anything is measured
    benches = {'layers': bench_layers, 'profile': bench_profile, 'cifar-train': bench_cifar_train,
               'train-loop': bench_train_loop, 'share': bench_share}
    try:
        with stacking(args.stack_x_terms):
            if mode == 'models':
                rows = bench_models(args, device, log, out, MODEL_COLUMNS)
            else:
                rows = benches[mode](args, device, log, out)
    finally:
        if 'compiled' in args.runtimes:
            torch._dynamo.reset()
    log(f'wrote {out}')
    return rows


def _watchdog(budget_s: float) -> None:
    """CLI only: end the process if a suite overruns its budget despite the step deadlines."""
    def fire():
        print(f'--suite: budget of {budget_s:.0f} s exhausted; exiting', file=sys.stderr, flush=True)
        os._exit(124)
    timer = threading.Timer(budget_s, fire)
    timer.daemon = True
    timer.start()


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """The ``qzoo bench`` command: :func:`main`, with a watchdog that ends the process when ``--suite`` overruns
    ``--budget-s`` (``main`` itself, which the suite calls for each step, never ends the process)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = get_parser().parse_args(argv)
    if pre.suite and pre.budget_s:
        _watchdog(pre.budget_s)
    try:
        return main(argv)
    except (FileNotFoundError, NotARegularFileError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(cli())
