"""Exact parameter counts and quadratic-aware multiply-accumulate counts (MACs).

MAC convention (per forward pass of the given input):

* a Linear / Conv / ConvTranspose layer: one MAC per weight use, i.e.
  ``out_elements * in_channels/groups * prod(kernel)`` for convolutions and
  ``in_elements * out_channels/groups * prod(kernel)`` for transposed ones
  (the convention of ``torch.utils.flop_counter``, which reports 2 FLOPs per MAC);
* a quadratic layer: each of its term maps counted as above, plus one MAC per
  elementwise multiply: the square ``x*x`` (once per input element) and the
  neuron's products (``fan``: ``r*g``; ``lowrank``: one square per rank and output);
* norms, activations, pooling, bias adds and residual adds are not counted.
"""
from __future__ import annotations

import math
from typing import Tuple, Union

import torch
from torch import nn

from .layers import QuadraticLayer

__all__ = ['count_params', 'count_macs', 'layer_macs']

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONVT = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Exact number of parameters (shared tensors counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def layer_macs(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """MACs of one conventional Linear/Conv/ConvTranspose call with input ``x`` and output ``y``."""
    if isinstance(module, nn.Linear):
        return y.numel() * module.in_features
    if isinstance(module, _CONV):
        return y.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    if isinstance(module, _CONVT):
        return x.numel() * (module.out_channels // module.groups) * math.prod(module.kernel_size)
    raise TypeError(f'no MAC rule for {type(module).__name__}')


def _quadratic_macs(layer: QuadraticLayer, x: torch.Tensor, y: torch.Tensor) -> int:
    total = 0
    for t in layer.neuron.terms:
        m = layer.terms[t.name]
        # a term's output has t.mult times the layer's channels
        y_t = y.numel() * t.mult
        if isinstance(m, nn.Linear):
            total += y_t * m.in_features
        elif isinstance(m, _CONV):
            total += y_t * (m.in_channels // m.groups) * math.prod(m.kernel_size)
        else:
            total += x.numel() * (m.out_channels // m.groups) * math.prod(m.kernel_size)
    if any(t.input == 'sq' for t in layer.neuron.terms):
        total += x.numel()
    return total + layer.neuron.elementwise_macs(y.numel())


@torch.no_grad()
def count_macs(model: nn.Module, input: Union[torch.Tensor, Tuple[int, ...]]) -> int:
    """Quadratic-aware MACs of one forward pass of ``model`` on ``input`` (a
    tensor, or a shape for a zero tensor on the model's device and dtype)."""
    if not isinstance(input, torch.Tensor):
        p = next(model.parameters())
        input = torch.zeros(input, device=p.device, dtype=p.dtype)
    total = 0
    # a quadratic layer counts its own term modules (they run inside its forward)
    terms = {id(t) for m in model.modules() if isinstance(m, QuadraticLayer) for t in m.terms.values()}

    def hook(module, args, out):
        nonlocal total
        x = args[0]
        if isinstance(module, QuadraticLayer):
            total += _quadratic_macs(module, x, out)
        else:
            total += layer_macs(module, x, out)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if id(m) not in terms and isinstance(m, (QuadraticLayer, nn.Linear) + _CONV + _CONVT)]
    was_training = model.training
    try:
        model.eval()
        model(input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return int(total)
