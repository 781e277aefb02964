#!/usr/bin/env python
"""Speed of qzoo models and quadratic layers, on CPU and CUDA.

Three modes, each writing one CSV (``--results-file``):

* models (default): per model and path, inference throughput and step time, batch-1
  latency, training-step throughput (forward + cross-entropy + backward + SGD step),
  params, quadratic-aware MACs (``qzoo.count_macs``) and peak memory (CUDA only; CPU
  peak memory is not measured and left empty). The first columns are those of timm's
  ``benchmark.py`` CSV (``param_count`` in millions, ``infer_gmacs`` per sample), then
  qzoo's: ``device, torch, neuron, path, compiled, dtype, channels_last, date`` and more;
* ``--layer-bench``: ``QuadraticConv2d`` (forward + backward) against ``nn.Conv2d`` of the
  same shape on the CIFAR ResNet layer shapes, fused vs reference path (and the stacked
  calls under plain autograd, for comparison), as times and ratios to the convolution;
* ``--latency-bench``: batch-1 inference latency (eval mode, ``torch.inference_mode``) of
  the models and paths measured round by round in shuffled order, with the median per-round
  ratio to the first model (``infer_latency_ratio``), robust to a busy machine;
* ``--cifar-train``: training img/s of a CIFAR model with a device-resident pipeline:
  synthetic uint8 images of CIFAR's shape held on the device (``--cifar-size`` of them,
  sampled with replacement), random crop with 4-pixel zero padding + horizontal flip +
  normalisation done on the device in one gather, then the training step. It needs no
  dataset files and mirrors the zoo's on-device loader; it measures speed, not accuracy.

Timing: ``torch.utils.benchmark.Timer.blocked_autorange`` (CUDA-synchronised), the median
of ``--repeats`` measurements of at least ``--min-time`` seconds each, after ``--warmup``
untimed steps (which also absorb torch.compile's compilation). In the layer bench the
variants are measured in shuffled order round by round and each ratio is the median of
the per-round ratios, which is robust to a busy machine.

Examples::

    PYTHONPATH=. python eval/benchmark.py --models resnet20 qresnet20 --path both --device cpu
    PYTHONPATH=. python eval/benchmark.py --layer-bench --batch-size 128 --threads 1
    PYTHONPATH=. python eval/benchmark.py --cifar-train --device cuda --amp bf16 --batch-size 512 \\
        --channels-last --models resnet20 qresnet20 --path both --compile
"""
from __future__ import annotations

import argparse
import ast
import csv
import ctypes
import ctypes.util
import datetime as _dt
import os
import platform
import random
import statistics
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.benchmark import Timer  # noqa: E402

import qzoo  # noqa: E402
from qzoo.layers import QuadraticConv2d, QuadraticLayer, set_fused  # noqa: E402

TIMM_COLUMNS = ['model', 'infer_samples_per_sec', 'infer_step_time', 'infer_batch_size', 'infer_img_size',
                'infer_gmacs', 'param_count', 'train_samples_per_sec', 'train_step_time', 'train_batch_size',
                'train_img_size']
QZOO_COLUMNS = ['device', 'torch', 'neuron', 'path', 'compiled', 'dtype', 'channels_last', 'date']
EXTRA_COLUMNS = ['bench', 'infer_latency_ms', 'infer_latency_ratio', 'params', 'macs', 'infer_peak_mem_mb', 'train_peak_mem_mb',
                 'device_name', 'threads', 'malloc', 'stack', 'note']
MODEL_COLUMNS = TIMM_COLUMNS + QZOO_COLUMNS + EXTRA_COLUMNS

LAYER_COLUMNS = ['layer', 'in_channels', 'out_channels', 'img_size', 'stride', 'batch_size', 'input_grad',
                 'neuron', 'conv_ms', 'fused_ms', 'reference_ms', 'stacked_ms', 'fused_x', 'reference_x',
                 'stacked_x', 'rounds'] + QZOO_COLUMNS[:1] + ['torch', 'dtype', 'channels_last', 'date',
                                                              'device_name', 'threads', 'malloc', 'stack']

#: the 3x3 (padding 1) convolutions of the CIFAR ResNets: name, in, out, input size, stride
CIFAR_LAYERS = [('stem', 3, 16, 32, 1), ('16-16', 16, 16, 32, 1), ('16-32/2', 16, 32, 32, 2),
                ('32-32', 32, 32, 16, 1), ('32-64/2', 32, 64, 16, 2), ('64-64', 64, 64, 8, 1)]
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


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


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], warmup: int, min_time: float, repeats: int,
            device: torch.device) -> float:
    """Median seconds per call of ``fn`` (after ``warmup`` untimed calls)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = [Timer('fn()', globals={'fn': fn}).blocked_autorange(min_run_time=min_time).median
             for _ in range(max(1, repeats))]
    return statistics.median(times)


def latency(fn: Callable[[], object], warmup: int, calls: int, device: torch.device) -> float:
    """Median seconds of single calls (each synchronised)."""
    import time
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(max(1, calls)):
        t = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def autocast(device: torch.device, amp: Optional[str]):
    if not amp:
        return nullcontext()
    return torch.autocast(device.type, dtype={'bf16': torch.bfloat16, 'fp16': torch.float16}[amp])


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


def neuron_of(model: nn.Module) -> str:
    q = [m for m in model.modules() if isinstance(m, QuadraticLayer)]
    if not q:
        return 'linear'
    specs = sorted({m.neuron.spec for m in q})
    return specs[0] if len(specs) == 1 else '+'.join(specs)


def paths_for(model: nn.Module, path: str) -> List[str]:
    if not any(isinstance(m, QuadraticLayer) for m in model.modules()):
        return ['-']
    return ['fused', 'reference'] if path == 'both' else [path]


def build(name: str, model_args: Dict[str, object], device: torch.device, channels_last: bool,
          path: str) -> nn.Module:
    model = qzoo.create_model(name, **model_args)
    if path in ('fused', 'reference'):
        set_fused(model, path == 'fused')
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def input_size(model: nn.Module, img_size: Optional[int]) -> tuple:
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    c, h, w = cfg.get('input_size', (3, 32, 32))
    if img_size:
        h = w = img_size
    return c, h, w


def make_input(batch: int, size: tuple, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = torch.randn(batch, *size, device=device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def maybe_compile(model: nn.Module, args) -> nn.Module:
    return torch.compile(model, mode=args.compile_mode) if args.compile else model


def train_step_fn(model: nn.Module, make_batch: Callable[[], tuple], device: torch.device, amp: Optional[str],
                  lr: float = 1e-4) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)

    def step():
        x, y = make_batch()
        with autocast(device, amp):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def peak_mem_mb(device: torch.device, fn: Callable[[], object]) -> Optional[float]:
    if device.type != 'cuda':
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)


def common_row(args, device: torch.device, dname: str) -> Dict[str, object]:
    return dict(device=device.type, torch=torch.__version__, compiled=bool(args.compile),
                dtype=f'{args.amp}-amp' if args.amp else 'float32', channels_last=bool(args.channels_last),
                date=_dt.datetime.now().isoformat(timespec='minutes'), device_name=dname,
                threads=torch.get_num_threads() if device.type == 'cpu' else '',
                malloc='no-trim' if args.no_malloc_trim else 'default', stack=args.stack)


def bench_model(name: str, path: str, args, device: torch.device, dname: str, log) -> Dict[str, object]:
    model_args = parse_model_args(args.model_args)
    model = build(name, model_args, device, args.channels_last, path)
    size = input_size(model, args.img_size)
    num_classes = getattr(model, 'num_classes', 10) or 10
    bs = args.batch_size
    row = dict(common_row(args, device, dname), bench='model', model=name, path=path, neuron=neuron_of(model),
               params=qzoo.count_params(model), param_count=round(qzoo.count_params(model) / 1e6, 4))
    macs = qzoo.count_macs(model, (1, *size))
    row.update(macs=macs, infer_gmacs=round(macs / 1e9, 5))
    w, t, r = args.warmup, args.min_time, args.repeats

    if args.bench in ('infer', 'both'):
        model.eval()
        fwd = maybe_compile(model, args)
        x = make_input(bs, size, device, args.channels_last)
        x1 = make_input(1, size, device, args.channels_last)

        def infer(inp=x):
            with torch.inference_mode(), autocast(device, args.amp):
                return fwd(inp)
        s = measure(infer, w, t, r, device)
        row.update(infer_samples_per_sec=round(bs / s, 2), infer_step_time=round(1e3 * s, 3), infer_batch_size=bs,
                   infer_img_size=size[-1], infer_peak_mem_mb=peak_mem_mb(device, infer))
        lat = latency(lambda: infer(x1), w, args.latency_calls, device)
        row['infer_latency_ms'] = round(1e3 * lat, 3)
        log(f"{name} [{path}] infer: {row['infer_samples_per_sec']:,.0f} samples/s "
            f"({row['infer_step_time']} ms/step, batch {bs}), batch-1 latency {row['infer_latency_ms']} ms")

    if args.bench in ('train', 'both'):
        model.train()
        fwd = maybe_compile(model, args)
        x = make_input(bs, size, device, args.channels_last)
        y = torch.randint(0, num_classes, (bs,), device=device)
        step = train_step_fn(fwd, lambda: (x, y), device, args.amp)
        s = measure(step, w, t, r, device)
        row.update(train_samples_per_sec=round(bs / s, 2), train_step_time=round(1e3 * s, 3), train_batch_size=bs,
                   train_img_size=size[-1], train_peak_mem_mb=peak_mem_mb(device, step))
        log(f"{name} [{path}] train: {row['train_samples_per_sec']:,.0f} samples/s ({row['train_step_time']} ms/step)")
    return row


# ---- CIFAR training with an on-device pipeline -------------------------------------------
class DeviceCifar:
    """Synthetic CIFAR-shaped uint8 images and labels on the device, with the training
    augmentation (random crop from 4-pixel zero padding, horizontal flip, normalisation)
    done on the device: one gather builds the whole batch; no host sync, no Python loop."""

    def __init__(self, n: int, device: torch.device, channels_last: bool, pad: int = 4, seed: int = 0):
        g = torch.Generator(device='cpu').manual_seed(seed)
        self.images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8).to(device)
        self.labels = torch.randint(0, 10, (n,), generator=g).to(device)
        self.pad, self.device, self.channels_last = pad, device, channels_last
        self.mean = torch.tensor(CIFAR_MEAN, device=device).view(1, 3, 1, 1) * 255
        self.inv_std = 1 / (torch.tensor(CIFAR_STD, device=device).view(1, 3, 1, 1) * 255)

    def batch(self, bs: int):
        dev, p = self.device, self.pad
        idx = torch.randint(0, self.images.shape[0], (bs,), device=dev)
        oy = torch.randint(0, 2 * p + 1, (bs,), device=dev)
        ox = torch.randint(0, 2 * p + 1, (bs,), device=dev)
        flip = torch.randint(0, 2, (bs,), device=dev, dtype=torch.bool)
        x = crop_flip(self.images[idx], oy, ox, flip, p)
        x = (x.float() - self.mean) * self.inv_std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.labels[idx]


def crop_flip(images: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, flip: torch.Tensor, pad: int) -> torch.Tensor:
    """Image i of the output is the HxW window at (oy[i], ox[i]) of image i zero-padded by
    ``pad``, mirrored left-right where flip[i]: one gather for the batch."""
    n, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    ar_h = torch.arange(h, device=images.device)
    ar_w = torch.arange(w, device=images.device)
    rows = oy.view(n, 1) + ar_h                                              # (N, H)
    cols = ox.view(n, 1) + torch.where(flip.view(n, 1), w - 1 - ar_w, ar_w)  # (N, W)
    b = torch.arange(n, device=images.device).view(n, 1, 1, 1)
    ch = torch.arange(c, device=images.device).view(1, c, 1, 1)
    return padded[b, ch, rows[:, None, :, None], cols[:, None, None, :]]


def bench_cifar_train(name: str, path: str, args, device: torch.device, dname: str, log) -> Dict[str, object]:
    model = build(name, parse_model_args(args.model_args), device, args.channels_last, path)
    bs = args.batch_size
    data = DeviceCifar(args.cifar_size, device, args.channels_last)
    model.train()
    step = train_step_fn(maybe_compile(model, args), lambda: data.batch(bs), device, args.amp, lr=0.05)
    s = measure(step, args.warmup, args.min_time, args.repeats, device)
    macs = qzoo.count_macs(model, (1, 3, 32, 32))
    row = dict(common_row(args, device, dname), bench='cifar-train', model=name, path=path, neuron=neuron_of(model),
               params=qzoo.count_params(model), param_count=round(qzoo.count_params(model) / 1e6, 4), macs=macs,
               infer_gmacs=round(macs / 1e9, 5), train_samples_per_sec=round(bs / s, 2),
               train_step_time=round(1e3 * s, 3), train_batch_size=bs, train_img_size=32,
               train_peak_mem_mb=peak_mem_mb(device, step),
               note=f'synthetic uint8 CIFAR ({args.cifar_size} images) on device; crop4+flip+normalise on device')
    log(f"{name} [{path}] cifar-train: {row['train_samples_per_sec']:,.0f} img/s ({row['train_step_time']} ms/step, "
        f"batch {bs}, {row['dtype']}, channels_last={row['channels_last']}, compiled={row['compiled']})")
    return row


# ---- batch-1 latency, interleaved ---------------------------------------------------------
def bench_latency(args, device: torch.device, dname: str, log) -> List[Dict[str, object]]:
    model_args = parse_model_args(args.model_args)
    entries = []
    for name in args.models:
        probe = qzoo.create_model(name, **model_args)
        for path in paths_for(probe, args.path):
            model = build(name, model_args, device, args.channels_last, path).eval()
            size = input_size(model, args.img_size)
            x = make_input(args.batch_size, size, device, args.channels_last)
            fwd = maybe_compile(model, args)

            def infer(fwd=fwd, x=x):
                with torch.inference_mode(), autocast(device, args.amp):
                    return fwd(x)
            for _ in range(max(1, args.warmup)):
                infer()
            macs = qzoo.count_macs(model, (1, *size))
            entries.append(dict(common_row(args, device, dname), bench='latency', model=name, path=path,
                                neuron=neuron_of(model), params=qzoo.count_params(model),
                                param_count=round(qzoo.count_params(model) / 1e6, 4), macs=macs,
                                infer_gmacs=round(macs / 1e9, 5), infer_batch_size=args.batch_size,
                                infer_img_size=size[-1], _fn=infer))
    sync(device)
    per: List[List[float]] = [[] for _ in entries]
    order = list(range(len(entries)))
    rng = random.Random(args.seed)
    for _ in range(max(1, args.rounds)):
        rng.shuffle(order)
        for i in order:
            per[i].append(Timer('fn()', globals={'fn': entries[i]['_fn']}).blocked_autorange(
                min_run_time=args.min_time).median)
    rows = []
    for e, times in zip(entries, per):
        e.pop('_fn')
        s = statistics.median(times)
        ratio = statistics.median([a / b for a, b in zip(times, per[0])])
        e.update(infer_step_time=round(1e3 * s, 3), infer_latency_ms=round(1e3 * s, 3),
                 infer_samples_per_sec=round(args.batch_size / s, 2), infer_latency_ratio=round(ratio, 3))
        rows.append(e)
        log(f"{e['model']:10s} [{e['path']}] batch-{args.batch_size} latency {e['infer_latency_ms']:8.3f} ms "
            f"({ratio:.2f}x {entries[0]['model']})")
    return rows


# ---- the layer table -------------------------------------------------------------------
def bench_layers(args, device: torch.device, dname: str, log) -> List[Dict[str, object]]:
    mf = torch.channels_last if args.channels_last else torch.contiguous_format
    rows = []
    rng = random.Random(0)
    layers = [entry for entry in CIFAR_LAYERS if not args.layers or entry[0] in args.layers]
    for lname, cin, cout, hw, stride in layers:
        stem = cin == 3  # the network input needs no gradient
        x = torch.randn(args.batch_size, cin, hw, hw, device=device).contiguous(memory_format=mf)
        x.requires_grad_(not stem)
        conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1).to(device, memory_format=mf)
        quad = QuadraticConv2d(cin, cout, 3, stride=stride, padding=1, neuron=args.layer_neuron,
                               init='default').to(device, memory_format=mf)
        with torch.no_grad():
            for p in quad.parameters():
                p.normal_(0, 0.1)
        with autocast(device, args.amp):
            go = torch.randn_like(conv(x))

        def fwd_bwd(fn, module):
            inputs = ([x] if x.requires_grad else []) + list(module.parameters())

            def run():
                with autocast(device, args.amp):
                    y = fn(x)
                return torch.autograd.grad(y, inputs, go)
            return run
        variants = {'conv': fwd_bwd(conv, conv), 'fused': fwd_bwd(quad, quad),
                    'reference': fwd_bwd(quad.forward_reference, quad),
                    'stacked': fwd_bwd(quad._forward_stacked, quad)}
        for fn in variants.values():
            for _ in range(max(1, args.warmup)):
                fn()
        sync(device)
        per = {k: [] for k in variants}
        names = list(variants)
        for _ in range(max(1, args.rounds)):
            rng.shuffle(names)
            for k in names:
                per[k].append(Timer('fn()', globals={'fn': variants[k]}).blocked_autorange(
                    min_run_time=args.min_time).median)
        med = {k: statistics.median(v) for k, v in per.items()}
        ratio = {k: statistics.median([a / b for a, b in zip(per[k], per['conv'])]) for k in per}
        row = dict(common_row(args, device, dname), layer=lname, in_channels=cin, out_channels=cout, img_size=hw,
                   stride=stride, batch_size=args.batch_size, input_grad=not stem, neuron=args.layer_neuron,
                   rounds=args.rounds, **{f'{k}_ms': round(1e3 * v, 3) for k, v in med.items()},
                   **{f'{k}_x': round(ratio[k], 3) for k in ('fused', 'reference', 'stacked')})
        rows.append(row)
        log(f"{lname:8s} {cin:>2}->{cout:<2} @{hw:<2} s{stride}: conv {row['conv_ms']:8.3f} ms | fused "
            f"{row['fused_x']:.2f}x  reference {row['reference_x']:.2f}x  stacked {row['stacked_x']:.2f}x")
    return rows


# ---- CLI --------------------------------------------------------------------------------
def write_csv(path: Path, rows: List[Dict[str, object]], columns: List[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction='ignore')
        w.writeheader()
        for r in rows:
            w.writerow({c: ('' if r.get(c) is None else r.get(c)) for c in columns})


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument('--layer-bench', action='store_true', help='QuadraticConv2d vs nn.Conv2d on the CIFAR ResNet shapes')
    mode.add_argument('--latency-bench', action='store_true',
                      help='batch-1 inference latency of the models, interleaved (ratios to the first model)')
    mode.add_argument('--cifar-train', action='store_true',
                      help='training img/s with synthetic CIFAR data and on-device augmentation')
    p.add_argument('--models', nargs='+', default=['resnet20', 'qresnet20'], help='qzoo/timm model names')
    p.add_argument('--model-args', nargs='*', default=[], metavar='KEY=VALUE', help='e.g. neuron=qres width=12')
    p.add_argument('--bench', choices=['infer', 'train', 'both'], default='both', help='model mode: what to measure')
    p.add_argument('--batch-size', type=int, default=None,
                   help='default: 256 (models), 128 (layer bench), 1 (latency bench), 512 (cifar-train)')
    p.add_argument('--img-size', type=int, default=None, help="default: the model's cfg input size")
    p.add_argument('--device', default='auto', help="'cpu', 'cuda', 'cuda:1', or 'auto' (cuda when available)")
    p.add_argument('--amp', choices=['bf16', 'fp16'], default=None, help='autocast dtype (default: float32)')
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--compile', action='store_true', help='torch.compile the model')
    p.add_argument('--compile-mode', default=None, help="torch.compile mode, e.g. 'max-autotune-no-cudagraphs'")
    p.add_argument('--path', choices=['fused', 'reference', 'both'], default='fused',
                   help='quadratic layer path (set_fused); conventional models have path "-"')
    p.add_argument('--stack', choices=['auto', 'always', 'never'], default='auto',
                   help='fused path: x terms as one call on stacked weights (always), one call each (never), '
                        'or automatic (stacked except on CPU in channels_last)')
    p.add_argument('--layer-neuron', default='fan', help='neuron of the layer bench')
    p.add_argument('--layers', nargs='+', default=None, choices=[entry[0] for entry in CIFAR_LAYERS],
                   help='layer bench: only these shapes (default: all)')
    p.add_argument('--cifar-size', type=int, default=50000, help='synthetic images held on the device')
    p.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (CPU)')
    p.add_argument('--no-malloc-trim', action='store_true',
                   help='CPU: keep freed memory in the glibc heap (avoids page faults on large tensors)')
    p.add_argument('--warmup', type=int, default=5, help='untimed steps first (also absorbs compilation)')
    p.add_argument('--min-time', type=float, default=None, help='seconds per measurement (default 1.0; 0.3 layers)')
    p.add_argument('--repeats', type=int, default=3, help='measurements per number (median)')
    p.add_argument('--rounds', type=int, default=5, help='layer/latency bench: interleaved rounds (median ratio)')
    p.add_argument('--latency-calls', type=int, default=50, help='batch-1 latency: timed single calls (median)')
    p.add_argument('--results-file', default=None, help='CSV path (default results/benchmark-<mode>-<device>.csv)')
    p.add_argument('--seed', type=int, default=0)
    return p


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, object]]:
    args = get_parser().parse_args(argv)
    before = qzoo.layers._STACK_X_TERMS
    try:
        return run(args)
    finally:
        qzoo.layers._STACK_X_TERMS = before


def run(args) -> List[Dict[str, object]]:
    log = lambda s: print(s, flush=True)  # noqa: E731
    if args.device == 'auto':
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda: CUDA is not available')
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_malloc_trim and device.type == 'cpu' and not disable_malloc_trim():
        log('warning: --no-malloc-trim: mallopt is not available here; running with the default allocator')
        args.no_malloc_trim = False
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    qzoo.layers._STACK_X_TERMS = {'auto': None, 'always': True, 'never': False}[args.stack]
    torch.manual_seed(args.seed)
    mode = ('layers' if args.layer_bench else 'latency' if args.latency_bench
            else 'cifar-train' if args.cifar_train else 'models')
    if args.batch_size is None:
        args.batch_size = {'layers': 128, 'latency': 1, 'cifar-train': 512, 'models': 256}[mode]
    if args.min_time is None:
        args.min_time = 0.3 if mode in ('layers', 'latency') else 1.0
    dname = device_name(device)
    log(f'# {mode} on {device} ({dname}), torch {torch.__version__}, '
        f'threads {torch.get_num_threads() if device.type == "cpu" else "-"}, batch {args.batch_size}, '
        f'{args.amp or "float32"}, channels_last={args.channels_last}, compile={args.compile}, stack={args.stack}')
    out = Path(args.results_file or ROOT / 'results' / f'benchmark-{mode}-{device.type}.csv')
    if mode == 'layers':
        rows, columns = bench_layers(args, device, dname, log), LAYER_COLUMNS
    elif mode == 'latency':
        rows, columns = bench_latency(args, device, dname, log), MODEL_COLUMNS
    else:
        rows, columns = [], MODEL_COLUMNS
        fn = bench_cifar_train if mode == 'cifar-train' else bench_model
        for name in args.models:
            probe = qzoo.create_model(name, **parse_model_args(args.model_args))
            for path in paths_for(probe, args.path):
                rows.append(fn(name, path, args, device, dname, log))
                write_csv(out, rows, columns)  # after every row: a run stopped early keeps what it measured
                if args.compile:
                    torch._dynamo.reset()
    write_csv(out, rows, columns)
    log(f'wrote {out}')
    return rows


if __name__ == '__main__':
    main()
