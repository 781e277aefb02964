"""Device-resident batching with seeded, resumable randomness.

A :class:`BatchLoader` moves a split to its device once (uint8 images stay uint8 there) and
builds each batch on the device: index, augmentation (on the uint8 pixels), then the pixel values
through a table of ``(v / 255 - mean) / std`` for the 256 values ``v`` of each channel. The table is
computed once on the CPU and copied to the device, so a batch holds the same float32 bits on every
device: CUDA computes a division by a scalar as a multiplication by its reciprocal, which can differ
in the last bit from the CPU's division (then ``v / 255 - mean`` is 3e-8 instead of 0 where they
cancel), and the table sidesteps every such kernel difference. Float inputs are augmented and
normalised as floats.

All randomness of an epoch (the order and every augmentation parameter) is drawn up front on
the CPU from ``torch.Generator().manual_seed(mix_seed(seed, epoch))`` and then moved to the
device, so the batches depend on ``(seed, epoch)`` only and are the same on CPU and CUDA: an
interrupted run that calls ``set_epoch(e)`` on resume sees exactly the batches it would have
seen. Augmentation parameters are drawn for every position of the padded epoch order before
sharding, so each sample's augmentation does not depend on ``world_size``.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import Split, mix_seed

__all__ = ['BatchLoader', 'AUGMENTATIONS', 'crop_flip', 'flip2d']

AUGMENTATIONS = ('crop4-flip', 'flip2d')


def crop_flip(x: Tensor, oy: Tensor, ox: Tensor, flip: Tensor, pad: int = 4) -> Tensor:
    """Batched random crop and horizontal flip: sample ``i`` is the H x W window at row ``oy[i]``,
    column ``ox[i]`` of ``x[i]`` zero-padded by ``pad`` on every side (offsets in [0, 2 * pad]),
    mirrored left-right where ``flip[i]``. No Python loop over images."""
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = oy.to(x.device).long()[:, None] + ar_h                       # (B, H)
    cols = ox.to(x.device).long()[:, None] + ar_w                       # (B, W)
    cols = torch.where(flip.to(x.device).bool()[:, None], cols.flip(1), cols)
    out = xp.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * pad))
    return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def flip2d(x: Tensor, y: Tensor, hflip: Tensor, vflip: Tensor) -> Tuple[Tensor, Tensor]:
    """Joint per-sample horizontal / vertical flips of images ``x`` and masks ``y`` (N, C, H, W)."""
    def one(t: Tensor) -> Tensor:
        h = hflip.to(t.device).bool().view(-1, *([1] * (t.dim() - 1)))
        v = vflip.to(t.device).bool().view(-1, *([1] * (t.dim() - 1)))
        t = torch.where(h, t.flip(-1), t)
        return torch.where(v, t.flip(-2), t)
    return one(x), one(y)


class BatchLoader:
    """Yields ``(x, y)`` batches of a :class:`Split` from its device.

    ``shuffle``: a fresh seeded permutation each epoch (``set_epoch``). ``augment``:
    ``'crop4-flip'`` (random crop with 4-pixel zero padding + horizontal flip, images) or
    ``'flip2d'`` (joint random horizontal / vertical flips of image and mask) or None.
    ``normalize``: ``(mean, std)`` per channel, applied after scaling uint8 to [0, 1]; float
    inputs are used as they are (then normalised if asked). ``y`` is returned with its stored
    dtype (labels int64, masks uint8 {0, 1}: call ``.float()`` for a BCE loss).

    Distributed: with ``world_size > 1`` the epoch order is padded (repeating its start) to a
    multiple of ``world_size`` and rank ``r`` takes positions ``r, r + world_size, ...``, as
    ``torch.utils.data.DistributedSampler`` does; every rank must use the same ``seed``.
    ``len(loader)`` is the number of batches per epoch on this rank. Call ``set_epoch(epoch)``
    before each epoch (without it every epoch repeats epoch 0's order and augmentation).
    """

    def __init__(self, split: Split, batch_size: int, *, shuffle: bool, seed: int = 0, device='cpu',
                 augment: Optional[str] = None, normalize: Optional[Tuple[Sequence[float], Sequence[float]]] = None,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1):
        if not hasattr(split, 'x') or not hasattr(split, 'y'):
            raise TypeError(f'BatchLoader needs a Split (with .x and .y), got {type(split).__name__}')
        if int(batch_size) < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}')
        if int(world_size) < 1 or not 0 <= int(rank) < int(world_size):
            raise ValueError(f'need 0 <= rank < world_size, got rank={rank}, world_size={world_size}')
        if augment is not None and augment not in AUGMENTATIONS:
            raise ValueError(f'unknown augment {augment!r}; valid: {list(AUGMENTATIONS)} or None')
        self.device = torch.device(device)
        self.x = split.x.to(self.device)
        self.y = split.y.to(self.device)
        if augment is not None and self.x.dim() != 4:
            raise ValueError(f'augment={augment!r} needs images (N, C, H, W), got x of shape {tuple(self.x.shape)}')
        if augment == 'flip2d' and self.y.dim() != 4:
            raise ValueError(f"augment='flip2d' flips masks too: y must be (N, 1, H, W), got {tuple(self.y.shape)}")
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), int(seed)
        self.augment, self.drop_last = augment, bool(drop_last)
        self.rank, self.world_size = int(rank), int(world_size)
        self.n = len(self.x)
        self.per_rank = math.ceil(self.n / self.world_size) if self.n else 0
        self.total = self.per_rank * self.world_size
        self.epoch = 0
        self.mean = self.std = None
        if normalize is not None:
            mean, std = (torch.as_tensor(v, dtype=torch.float32).reshape(-1) for v in normalize)
            c = self.x.shape[1] if self.x.dim() > 1 else 1
            if len(mean) not in (1, c) or len(std) not in (1, c):
                raise ValueError(f'normalize needs 1 or {c} values for mean and std, got {len(mean)} and {len(std)}')
            if (std <= 0).any():
                raise ValueError(f'normalize std must be > 0, got {std.tolist()}')
            shape = (1, -1) + (1,) * max(self.x.dim() - 2, 0)
            self.mean, self.std = mean.reshape(shape).to(self.device), std.reshape(shape).to(self.device)
        self._lut, self._lut_offset = self._pixel_table(normalize)

    def _pixel_table(self, normalize) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """For uint8 data: the float32 value of every (channel, pixel value), computed on the CPU as
        ``(v / 255 - mean) / std`` (``v / 255`` without ``normalize``), flattened, on the device; and the
        offset of each channel's row, shaped to broadcast over a batch."""
        if self.x.dtype != torch.uint8:
            return None, None
        v = torch.arange(256, dtype=torch.float32).div_(255)
        c = self.x.shape[1] if self.x.dim() > 2 else 1
        if normalize is None:
            table = v.expand(c, 256)
        else:
            mean, std = (torch.as_tensor(t, dtype=torch.float32).reshape(-1, 1) for t in normalize)
            table = (v[None, :] - mean) / std
            table = table.expand(c, 256) if len(table) == 1 else table
        offset = (torch.arange(c) * 256).reshape((1, -1) + (1,) * max(self.x.dim() - 2, 0))
        if self.x.dim() <= 2:
            offset = torch.zeros((), dtype=torch.int64)
        return table.contiguous().reshape(-1).to(self.device), offset.to(self.device)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.per_rank // self.batch_size if self.drop_last else math.ceil(self.per_rank / self.batch_size)

    def plan(self, epoch: Optional[int] = None):
        """This rank's sample indices for ``epoch`` (default: the current one) and the
        augmentation parameters aligned with them, all on the CPU."""
        epoch = self.epoch if epoch is None else int(epoch)
        g = torch.Generator().manual_seed(mix_seed('qzoo.BatchLoader', self.seed, epoch))
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        if self.total > self.n:
            reps = math.ceil(self.total / self.n)
            order = torch.cat([order] * reps)[:self.total]
        params = {}
        if self.augment == 'crop4-flip':
            params['oy'] = torch.randint(0, 9, (self.total,), generator=g)
            params['ox'] = torch.randint(0, 9, (self.total,), generator=g)
            params['flip'] = torch.randint(0, 2, (self.total,), generator=g).bool()
        elif self.augment == 'flip2d':
            params['hflip'] = torch.randint(0, 2, (self.total,), generator=g).bool()
            params['vflip'] = torch.randint(0, 2, (self.total,), generator=g).bool()
        sl = slice(self.rank, self.total, self.world_size)
        return order[sl], {k: v[sl] for k, v in params.items()}

    def __iter__(self) -> Iterator[Tuple[Tensor, Tensor]]:
        order, params = self.plan()
        order = order.to(self.device)
        params = {k: v.to(self.device) for k, v in params.items()}
        bs = self.batch_size
        for b in range(len(self)):
            sel = slice(b * bs, (b + 1) * bs)
            idx = order[sel]
            x, y = self.x[idx], self.y[idx]
            if self._lut is None:
                x = x.float()
            if self.augment == 'crop4-flip':
                x = crop_flip(x, params['oy'][sel], params['ox'][sel], params['flip'][sel], pad=4)
            elif self.augment == 'flip2d':
                x, y = flip2d(x, y, params['hflip'][sel], params['vflip'][sel])
            if self._lut is not None:  # uint8 pixels -> float32 through the table (normalised if asked)
                x = self._lut[x.long() + self._lut_offset]
            elif self.mean is not None:
                x = (x - self.mean) / self.std
            yield x, y

    def __repr__(self) -> str:
        return (f'BatchLoader(n={self.n}, batch_size={self.batch_size}, batches={len(self)}, shuffle={self.shuffle}, '
                f'seed={self.seed}, epoch={self.epoch}, device={self.device}, augment={self.augment!r}, '
                f'rank={self.rank}/{self.world_size})')
