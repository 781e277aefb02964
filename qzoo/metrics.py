"""Task metrics, training losses and evaluation, shared by the engine and ``qzoo.evaluation``.

* :class:`Metrics` accumulates a task's metrics over batches on the device (one sync at the
  end): classification top-1 / macro-F1 (/ top-5 above 5 classes), segmentation mean per-image
  IoU / Dice at logit 0 (or argmax), regression MSE; samples with a NaN/inf output are counted.
* :func:`loss_fn` is the training loss of a task; :func:`evaluate` scores a model over a loader.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['Metrics', 'loss_fn', 'evaluate', 'autocast']


class Metrics:
    """Accumulates a task's metrics over batches (on the device; one sync at the end)."""

    PRIMARY = {'classification': ('top1', True), 'segmentation': ('iou', True), 'regression': ('mse', False)}

    def __init__(self, task: str, num_classes: int, device):
        self.task, self.num_classes = task, num_classes
        self.nonfinite = torch.zeros((), dtype=torch.long, device=device)
        if task == 'classification':
            self.conf = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
            self.top5 = torch.zeros((), dtype=torch.long, device=device)
        else:
            self.sums = torch.zeros(3, dtype=torch.float64, device=device)

    def update(self, out: torch.Tensor, y: torch.Tensor) -> None:
        out = out.float()
        self.nonfinite += (~torch.isfinite(out)).flatten(1).any(1).sum()
        if self.task == 'classification':
            self._update_classification(out, y)
        elif self.task == 'segmentation':
            self._update_segmentation(out, y)
        else:
            err = (out.view(len(out), -1) - y.view(len(y), -1).float()).pow(2).mean(1).double()
            self.sums += torch.stack([err.sum(), torch.zeros((), device=err.device, dtype=torch.float64),
                                      torch.tensor(float(len(err)), device=err.device, dtype=torch.float64)])

    def _update_classification(self, out: torch.Tensor, y: torch.Tensor) -> None:
        pred = out.argmax(1)
        self.conf += torch.bincount(y * self.num_classes + pred, minlength=self.num_classes ** 2
                                    ).view(self.num_classes, self.num_classes)
        if self.num_classes > 5:
            self.top5 += (out.topk(5, 1).indices == y[:, None]).any(1).sum()

    def _update_segmentation(self, out: torch.Tensor, y: torch.Tensor) -> None:
        pred = (out > 0) if out.shape[1] == 1 else out.argmax(1, keepdim=True).bool()
        t = y.bool()
        inter = (pred & t).flatten(1).sum(1).double()
        union = (pred | t).flatten(1).sum(1).double()
        size = (pred.flatten(1).sum(1) + t.flatten(1).sum(1)).double()
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
        dice = torch.where(size > 0, 2 * inter / size.clamp(min=1), torch.ones_like(size))
        self.sums += torch.stack([iou.sum(), dice.sum(), torch.tensor(float(len(iou)), device=iou.device,
                                                                      dtype=torch.float64)])

    def compute(self) -> Dict[str, float]:
        """The task's metrics; ``nonfinite`` (samples with a NaN/inf output) is added when not zero."""
        res = self._compute()
        bad = int(self.nonfinite.item())
        if bad:
            res['nonfinite'] = bad
        return res

    def _compute(self) -> Dict[str, float]:
        if self.task == 'classification':
            c = self.conf.double().cpu()
            tp = c.diag()
            acc = (tp.sum() / c.sum().clamp(min=1)).item()
            prec = tp / c.sum(0).clamp(min=1)
            rec = tp / c.sum(1).clamp(min=1)
            f1 = torch.where(prec + rec > 0, 2 * prec * rec / (prec + rec).clamp(min=1e-12), torch.zeros_like(tp))
            present = c.sum(1) > 0
            res = {'top1': 100 * acc, 'macro_f1': 100 * f1[present].mean().item() if present.any() else 0.0}
            if self.num_classes > 5:
                res['top5'] = 100 * self.top5.item() / max(1, c.sum().item())
            return res
        s = self.sums.cpu()
        n = max(s[2].item(), 1)
        if self.task == 'segmentation':
            return {'iou': 100 * s[0].item() / n, 'dice': 100 * s[1].item() / n}
        return {'mse': s[0].item() / n}

    @classmethod
    def primary(cls, task: str) -> Tuple[str, bool]:
        """The task's selection metric and whether higher is better."""
        return cls.PRIMARY[task]


def loss_fn(task: str, label_smoothing: float = 0.0) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss of ``task``: cross-entropy (classification), BCE on one logit or
    cross-entropy over classes (segmentation), MSE (regression)."""
    if task == 'classification':
        return lambda out, y: F.cross_entropy(out, y, label_smoothing=label_smoothing)
    if task == 'segmentation':
        def seg(out, y):
            if out.shape[1] == 1:
                return F.binary_cross_entropy_with_logits(out, y.to(out.dtype))
            return F.cross_entropy(out, y.squeeze(1).long())
        return seg
    return lambda out, y: F.mse_loss(out.view(len(out), -1), y.view(len(y), -1).to(out.dtype))


def autocast(device, dtype: Optional[torch.dtype]):
    """``torch.autocast`` to ``dtype`` on ``device``'s type, or a no-op for ``dtype=None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


@torch.no_grad()
def evaluate(model: nn.Module, loader, task: str, num_classes: int, device, amp_dtype=None) -> Dict[str, float]:
    """Metrics of ``model`` over ``loader`` (in eval mode; the model's mode is restored)."""
    was = model.training
    model.eval()
    m = Metrics(task, num_classes, device)
    for x, y in loader:
        with autocast(device, amp_dtype):
            out = model(x)
        m.update(out, y)
    model.train(was)
    return m.compute()
