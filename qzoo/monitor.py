"""Per-step training diagnostics (the recipe key ``monitor_every``): what grows before a run blows up.

Every ``every`` optimizer steps, :class:`StepMonitor` records one line of ``monitor.jsonl`` in the run
folder::

    {"epoch": 21, "step": 1914, "lr": 0.0916, "loss": 0.98, "grad_norm": 589.6,
     "grad": {"layer1.0.conv1.conv_r": 2.1, ..., "layer1.0.bn1": 0.4, "fc": 0.3},
     "out":  {"layer1.0.conv1": [3.28, 35.4], "layer1.0.conv1.r": [2.81, 23.4], ...}}

* ``grad``: the L2 norm of the gradient of every module's own parameters (each term of a quadratic
  layer is its own module: ``conv_r``, ``conv_g``, ``conv_b``), before clipping; ``grad_norm`` is their
  total;
* ``out``: for every quadratic layer, ``[rms, max |.|]`` of its output and of each term's output
  (``<layer>.<term>``; for ``fan``, ``r`` = W_r x + b_r, ``g`` = W_g x + b_g, ``b`` = W_b (x*x) + c),
  measured on the step's training batch.

Recording synchronises with the device, so it is meant for diagnosis (every 10-50 steps), not for
every run. Hooks see the model's eager modules: it is not available with ``compile: true``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from .layers import QuadraticLayer

__all__ = ['StepMonitor']


class StepMonitor:
    """Forward hooks on the quadratic layers and their terms, armed one step in ``every``."""

    def __init__(self, model: nn.Module, every: int):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f'monitor_every must be a whole number of steps >= 1, got {every!r}')
        self.model, self.every = model, every
        self._armed = False
        self._out: Dict[str, List[float]] = {}
        self._hooks = []
        for name, m in model.named_modules():
            if isinstance(m, QuadraticLayer):
                self._hooks.append(m.register_forward_hook(self._hook(name)))
                for term, tm in m.terms.items():
                    self._hooks.append(tm.register_forward_hook(self._hook(f'{name}.{term}')))
        self._owners = [(n, [p for p in m.parameters(recurse=False) if p.requires_grad])
                        for n, m in model.named_modules()]
        self._owners = [(n or '<root>', ps) for n, ps in self._owners if ps]

    def _hook(self, name: str):
        def record(module, inputs, output):
            if self._armed and torch.is_tensor(output):
                o = output.detach().float()
                self._out[name] = [o.square().mean().sqrt().item(), o.abs().max().item()]
        return record

    def arm(self, step: int) -> bool:
        """Before the forward of global step ``step`` (counted from 0): record this step?"""
        self._armed = step % self.every == 0
        self._out = {}
        return self._armed

    def collect(self, epoch: int, step: int, loss: torch.Tensor, lr: float) -> Optional[Dict[str, Any]]:
        """After ``backward`` (gradients present, before clipping and the optimizer step): the step's record,
        or None when this step is not recorded."""
        if not self._armed:
            return None
        self._armed = False
        grads = {}
        for name, ps in self._owners:
            sq = [p.grad.detach().float().square().sum() for p in ps if p.grad is not None]
            if sq:
                grads[name] = torch.stack(sq).sum().sqrt().item()
        total = math.sqrt(sum(v * v for v in grads.values()))
        return dict(epoch=epoch, step=step, lr=lr, loss=float(loss.detach().float()), grad_norm=total, grad=grads,
                    out=self._out)

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
