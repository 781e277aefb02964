"""Seeded synthetic data, no files: the small problems quadratic neurons are tested on.

Classification (2 classes unless said): ``circles`` (2-D: inner circle radius 0.5 = class 0,
outer radius 1 = class 1, uniform angle), ``spheres`` (the same in ``dim`` dimensions: uniform
directions), ``moons`` (2-D: class 0 on (cos t, sin t), class 1 on (1 - cos t, 0.5 - sin t),
t ~ U[0, pi]), ``gaussians`` (``k`` classes, unit-covariance-times-``noise`` Gaussians in ``dim``
dimensions around means drawn once per ``seed`` as 3 * N(0, I)). Gaussian noise of std
``noise`` is added to every coordinate (for ``gaussians`` it is the component std).
Labels are balanced (n % classes spread over the first classes) and shuffled.

Regression (targets (N, 1)): ``interaction`` y = x1 * x2 + noise * N(0, 1) and ``norm2``
y = ||x||^2 + noise * N(0, 1), with x ~ U[-1, 1]^dim.

Each split is drawn from its own numpy PCG64 stream seeded by (seed, kind, split), so the test
set does not change when ``n_train`` does; ``gaussians``' means come from a (seed)-only stream.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ._common import Split, mix_seed
from .splits import DataSplits, add_size_info

KINDS = {  # kind: (task, default dim, fixed dim?, default noise)
    'circles': ('classification', 2, True, 0.1),
    'spheres': ('classification', 10, False, 0.1),
    'moons': ('classification', 2, True, 0.1),
    'gaussians': ('classification', 2, False, 1.0),
    'interaction': ('regression', 2, False, 0.05),
    'norm2': ('regression', 2, False, 0.05),
}
MEAN_SCALE = 3.0
#: the most values (samples x dim) one split may hold: 2**25, 256 MiB as float64 while it is drawn
MAX_VALUES = 1 << 25
#: the most classes of ``gaussians``
MAX_CLASSES = 10_000


def _rng(*parts) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(mix_seed('qzoo.synthetic', *parts)))


def _labels(rng, n: int, c: int) -> np.ndarray:
    return rng.permutation(np.arange(n) % c).astype(np.int64)


def _directions(rng, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim))
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def generate(kind: str, n: int, dim: int, noise: float, seed: int, split: str, k: int = 3):
    """(x float32 (n, dim), y) of one split."""
    rng = _rng(kind, seed, split)
    if kind in ('circles', 'spheres'):
        y = _labels(rng, n, 2)
        r = np.where(y == 0, 0.5, 1.0)[:, None]
        x = r * _directions(rng, n, dim)
        x = x + noise * rng.standard_normal(x.shape)
    elif kind == 'moons':
        y = _labels(rng, n, 2)
        t = rng.uniform(0.0, np.pi, n)
        x = np.where((y == 0)[:, None], np.stack([np.cos(t), np.sin(t)], 1),
                     np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], 1))
        x = x + noise * rng.standard_normal(x.shape)
    elif kind == 'gaussians':
        means = MEAN_SCALE * _rng(kind, seed, 'means', k, dim).standard_normal((k, dim))
        y = _labels(rng, n, k)
        x = means[y] + noise * rng.standard_normal((n, dim))
    else:
        x = rng.uniform(-1.0, 1.0, (n, dim))
        t = x[:, 0] * x[:, 1] if kind == 'interaction' else np.sum(x ** 2, axis=1)
        y = (t + noise * rng.standard_normal(n)).astype(np.float32)[:, None]
    return x.astype(np.float32), y


def load_synthetic(root=None, splits: Sequence[str] = ('train', 'val', 'test'), kind: str = 'circles',
                   n_train: int = 1000, n_val: int = 200, n_test: int = 1000, seed: int = 0,
                   noise: Optional[float] = None, dim: Optional[int] = None, k: int = 3) -> DataSplits:
    """Seeded synthetic classification / regression sets (``kind`` in :data:`KINDS`)."""
    if kind not in KINDS:
        raise ValueError(f'unknown synthetic kind {kind!r}; valid: {list(KINDS)}')
    task, ddim, fixed, dnoise = KINDS[kind]
    dim = ddim if dim is None else int(dim)
    if fixed and dim != ddim:
        raise ValueError(f'synthetic kind {kind!r} is {ddim}-D only (got dim={dim}); use "spheres" for D dimensions'
                         if kind == 'circles' else f'synthetic kind {kind!r} is {ddim}-D only (got dim={dim})')
    if dim < (2 if kind in ('interaction', 'spheres') else 1):
        raise ValueError(f'dim must be >= 2 for {kind!r}, got {dim}')
    noise = dnoise if noise is None else float(noise)
    if not 0 <= noise < float('inf'):
        raise ValueError(f'noise must be a finite number >= 0, got {noise}')
    sizes = dict(train=n_train, val=n_val, test=n_test)
    for s, v in sizes.items():
        if int(v) < 0:
            raise ValueError(f'n_{s} must be >= 0, got {v}')
    if kind == 'gaussians' and not 2 <= int(k) <= MAX_CLASSES:
        raise ValueError(f'gaussians needs k in [2, {MAX_CLASSES:,}] classes, got {k}')
    for s, v in sizes.items():
        if int(v) * dim > MAX_VALUES:
            raise ValueError(f'n_{s}={v} samples of dim={dim} are {int(v) * dim:,} values, more than a synthetic split '
                             f'may hold ({MAX_VALUES:,}); use fewer samples or dimensions')
    num_classes = int(k) if kind == 'gaussians' else (2 if task == 'classification' else 1)
    out = {s: Split(*(torch.from_numpy(a) for a in generate(kind, int(sizes[s]), dim, noise, seed, s, int(k))))
           for s in splits}
    name = f'synthetic-{kind}-d{dim}' + (f'-k{k}' if kind == 'gaussians' else '')
    name += (f'-noise{noise:g}' if noise != dnoise else '') + (f'-seed{seed}' if seed != 0 else '')
    classes = {'circles': ['inner', 'outer'], 'spheres': ['inner', 'outer'], 'moons': ['upper', 'lower']}.get(kind)
    if kind == 'gaussians':
        classes = [f'g{i}' for i in range(num_classes)]
    target = {'interaction': 'y = x1*x2 + noise*N(0,1)', 'norm2': 'y = ||x||^2 + noise*N(0,1)'}.get(kind)
    info = dict(generator=f'qzoo.data.synthetic.generate, numpy PCG64 per split seeded by mix_seed("qzoo.synthetic", '
                          f'kind, seed, split)', target=target,
                options=dict(kind=kind, n_train=int(n_train), n_val=int(n_val), n_test=int(n_test), seed=int(seed),
                             noise=noise, dim=dim, **({'k': int(k)} if kind == 'gaussians' else {})),
                split_rule='independent draws per split')
    ds = DataSplits(name=name, task=task, num_classes=num_classes, in_shape=(dim,), classes=classes,
                    normalize=None, augment=None, info=info, **out)
    return add_size_info(ds)
