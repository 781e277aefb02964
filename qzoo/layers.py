"""Quadratic layers built on the neuron families of :mod:`qzoo.neurons`.

Each layer mirrors its torch counterpart's signature plus ``neuron=`` and
holds one torch module per neuron term (``conv_r``, ``conv_g``, ``conv_b``
for ``fan``), so every tensor is a submodule's ``.weight`` / ``.bias``.

Two forward paths compute the same function:

* fused (default): the terms that share an input (``x`` or ``x*x``) run as
  *one* call with their weights stacked along the output channels (per
  group, so ``groups > 1`` stays correct), then the neuron combines them;
* reference (``forward_reference``): one call per term, as the seed code does.
"""
from __future__ import annotations

import fnmatch
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .neurons import NeuronFamily, NeuronSpec, get_neuron

__all__ = [
    'QuadraticLayer', 'QuadraticLinear', 'QuadraticConv1d', 'QuadraticConv2d',
    'QuadraticConvTranspose1d', 'QuadraticConvTranspose2d', 'quadratize', 'CONVENTIONAL_TO_QUADRATIC',
]


class QuadraticLayer(nn.Module):
    """Common machinery; subclasses define the torch op of one term."""

    prefix = 'conv'
    #: torch module class of one term
    term_cls: type = nn.Module
    #: dimension of a term weight that indexes output channels (0, or 1 for transposed convs)
    _out_dim = 0
    #: number of spatial dims (0 for Linear)
    _nd = 0

    def __init__(self, neuron: NeuronSpec, make_term, out_channels: int, groups: int = 1,
                 bias: bool = True, init: str = 'relinear', fused: bool = True):
        super().__init__()
        self.neuron: NeuronFamily = get_neuron(neuron)
        for name, v in (('out_channels', out_channels), ('groups', groups)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f'{type(self).__name__}: {name} must be a positive integer, got {v!r}')
        self.out_channels = out_channels
        self.groups = groups
        self.fused = fused
        if out_channels % groups:
            raise ValueError(f'out_channels ({out_channels}) must be divisible by groups ({groups})')
        for t in self.neuron.terms:
            self.add_module(f'{self.prefix}_{t.name}', make_term(out_channels * t.mult, bias and t.bias))
        # terms grouped by input, in term order: ('x', (terms...)), ('sq', (terms...))
        self._by_input = tuple(
            (inp, tuple(t for t in self.neuron.terms if t.input == inp))
            for inp in ('x', 'sq') if any(t.input == inp for t in self.neuron.terms))
        self.reset_quadratic_(init)

    # ---- structure --------------------------------------------------------------
    @property
    def terms(self) -> Dict[str, nn.Module]:
        """Term name -> torch module holding that term's ``weight`` / ``bias``."""
        return {t.name: getattr(self, f'{self.prefix}_{t.name}') for t in self.neuron.terms}

    @property
    def linear(self) -> nn.Module:
        """The term that is the conventional layer in the linear special case."""
        if not self.neuron.has_linear_case:
            raise AttributeError(f"neuron '{self.neuron.name}' has no linear term")
        return self.terms[self.neuron.linear_term]

    def reset_quadratic_(self, init: str = 'relinear') -> None:
        """Re-initialise the quadratic-only terms (linear terms are left alone):
        torch's default init, then ``'relinear'`` (start at, or for ``lowrank`` just
        off, the linear special case), ``'linear'`` (exactly the linear special case)
        or ``'default'`` (nothing more)."""
        if init not in ('relinear', 'linear', 'default'):
            raise ValueError(f"init must be 'relinear', 'linear' or 'default', got {init!r}")
        for t in self.neuron.terms:
            if t.quadratic:
                self.terms[t.name].reset_parameters()
        if init == 'relinear':
            self.neuron.init_relinear_(self.terms)
        elif init == 'linear':
            self.neuron.init_linear_(self.terms)

    def extra_repr(self) -> str:
        return f"neuron={self.neuron.spec}, fused={self.fused}"

    # ---- ops (per layer kind) ---------------------------------------------------
    def _op(self, x: Tensor, weight: Tensor, bias: Optional[Tensor], output_size=None) -> Tensor:
        raise NotImplementedError

    def _check_input(self, x: Tensor) -> None:
        raise NotImplementedError

    def _check_dtype(self, x: Tensor) -> None:
        w = next(iter(self.terms.values())).weight
        if not isinstance(x, Tensor):
            raise TypeError(f'{type(self).__name__} expects a tensor, got {type(x).__name__}')
        if x.dtype != w.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f'{type(self).__name__} has {w.dtype} weights but got a {x.dtype} input; convert one '
                            f'(x.to({w.dtype}) or layer.to({x.dtype})) or run under torch.autocast')

    def _channel_dim(self, y: Tensor) -> int:
        """Channel dim of an output: last for Linear, before the spatial dims for convs."""
        return y.dim() - 1 - self._nd

    # ---- forward ----------------------------------------------------------------
    def forward(self, x: Tensor, output_size: Optional[List[int]] = None) -> Tensor:
        if not self.fused:
            return self.forward_reference(x, output_size)
        self._check_dtype(x)
        self._check_input(x)
        terms = self.terms
        out: Dict[str, Tensor] = {}
        for inp, group in self._by_input:
            xin = x * x if inp == 'sq' else x
            if len(group) == 1:
                m = terms[group[0].name]
                out[group[0].name] = self._op(xin, m.weight, m.bias, output_size)
                continue
            mods = [terms[t.name] for t in group]
            weight, bias, sizes = self._stack(mods)
            y = self._op(xin, weight, bias, output_size)
            for t, part in zip(group, self._split(y, sizes)):
                out[t.name] = part
        return self.neuron.combine(out, self._bias_of)

    def forward_reference(self, x: Tensor, output_size: Optional[List[int]] = None) -> Tensor:
        """One call per term, no stacking: the plain three-convolution reference."""
        self._check_dtype(x)
        self._check_input(x)
        out = {}
        for name, m in self.terms.items():
            xin = x * x if self.neuron.term(name).input == 'sq' else x
            out[name] = self._op(xin, m.weight, m.bias, output_size)
        return self.neuron.combine(out, self._bias_of)

    def _bias_of(self, name: str) -> Optional[Tensor]:
        """Term ``name``'s bias shaped to broadcast over an output."""
        b = self.terms[name].bias
        return None if b is None else b.view(-1, *([1] * self._nd))

    def _stack(self, mods: Sequence[nn.Module]) -> Tuple[Tensor, Optional[Tensor], List[int]]:
        """Stack term weights along output channels, group by group."""
        g, d = self.groups, self._out_dim
        ws = [m.weight for m in mods]
        # output channels per group (transposed convs store out/groups in dim 1)
        sizes = [w.shape[0] // g if d == 0 else w.shape[1] for w in ws]
        if g == 1 or d == 1:
            # transposed convs index (in, out/groups, ...): groups live in dim 0 already
            weight = torch.cat(ws, dim=d)
        else:
            weight = torch.cat([w.unflatten(0, (g, -1)) for w in ws], dim=1).flatten(0, 1)
        if all(m.bias is None for m in mods):
            bias = None
        else:
            bs = [m.bias if m.bias is not None else ws[i].new_zeros(sizes[i] * g)
                  for i, m in enumerate(mods)]
            bias = torch.cat(bs) if g == 1 else torch.cat([b.view(g, -1) for b in bs], 1).flatten()
        return weight, bias, sizes

    def _split(self, y: Tensor, sizes: List[int]) -> Tuple[Tensor, ...]:
        ch = self._channel_dim(y)
        if self.groups == 1:
            return y.split(sizes, dim=ch)
        parts = y.unflatten(ch, (self.groups, -1)).split(sizes, dim=ch + 1)
        return tuple(p.flatten(ch, ch + 1) for p in parts)


class QuadraticLinear(QuadraticLayer):
    """``nn.Linear(in_features, out_features, bias)`` with a quadratic neuron."""
    prefix = 'linear'
    term_cls = nn.Linear

    def __init__(self, in_features: int, out_features: int, bias: bool = True, neuron: NeuronSpec = 'fan',
                 device=None, dtype=None, init: str = 'relinear', fused: bool = True):
        self.in_features, self.out_features = in_features, out_features
        if not isinstance(in_features, int) or isinstance(in_features, bool) or in_features < 1:
            raise ValueError(f'QuadraticLinear: in_features must be a positive integer, got {in_features!r}')

        def make(out, b):
            return nn.Linear(in_features, out, bias=b, device=device, dtype=dtype)
        super().__init__(neuron, make, out_features, 1, bias, init, fused)

    def _check_input(self, x):
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f'{type(self).__name__} expects input (..., {self.in_features}), got shape '
                             f'{tuple(x.shape)}')

    def _op(self, x, weight, bias, output_size=None):
        return F.linear(x, weight, bias)


class _QuadraticConvNd(QuadraticLayer):
    _nd = 2
    _transposed = False

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode='zeros', neuron: NeuronSpec = 'fan', device=None, dtype=None,
                 init: str = 'relinear', fused: bool = True, output_padding=0):
        self.in_channels = in_channels
        ks = (kernel_size,) * self._nd if isinstance(kernel_size, int) else tuple(kernel_size)
        for name, v in (('in_channels', in_channels), *((f'kernel_size[{i}]', k) for i, k in enumerate(ks))):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f'{type(self).__name__}: {name} must be a positive integer, got {v!r}')
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f'{type(self).__name__}: groups must be a positive integer, got {groups!r}')
        if in_channels % groups:
            raise ValueError(f'in_channels ({in_channels}) must be divisible by groups ({groups})')
        kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                  padding_mode=padding_mode, device=device, dtype=dtype)
        if self._transposed:
            kw['output_padding'] = output_padding

        def make(out, b):
            return self.term_cls(in_channels, out, kernel_size, bias=b, **kw)
        super().__init__(neuron, make, out_channels, groups, bias, init, fused)

    def _check_input(self, x):
        if x.dim() not in (self._nd + 1, self._nd + 2) or x.shape[-self._nd - 1] != self.in_channels:
            spatial = 'L' if self._nd == 1 else 'H, W'
            raise ValueError(f'{type(self).__name__} expects input (N, {self.in_channels}, {spatial}) or '
                             f'({self.in_channels}, {spatial}), got shape {tuple(x.shape)}')
        m = self._ref
        pad = m.padding if isinstance(m.padding, tuple) else (0,) * self._nd
        for i, size in enumerate(x.shape[-self._nd:]):
            need = m.dilation[i] * (m.kernel_size[i] - 1) + 1
            have = size if self._transposed else size + 2 * pad[i]
            if have < (1 if self._transposed else need):
                raise ValueError(f'{type(self).__name__}: spatial size {tuple(x.shape[-self._nd:])} is too small '
                                 f'for kernel {m.kernel_size} (padding {m.padding}, dilation {m.dilation}); '
                                 f'use a larger input or more padding')

    @property
    def _ref(self) -> nn.Module:
        return self.terms[self.neuron.terms[0].name]


class _ConvMixin:
    def _op(self, x, weight, bias, output_size=None):
        return self._ref._conv_forward(x, weight, bias)


class _ConvTransposeMixin:
    _out_dim = 1

    def _op(self, x, weight, bias, output_size=None):
        m = self._ref
        out_pad = m._output_padding(x, output_size, m.stride, m.padding, m.kernel_size, self._nd, m.dilation)
        fn = F.conv_transpose1d if self._nd == 1 else F.conv_transpose2d
        return fn(x, weight, bias, m.stride, m.padding, out_pad, m.groups, m.dilation)


class QuadraticConv1d(_ConvMixin, _QuadraticConvNd):
    """``nn.Conv1d`` with a quadratic neuron."""
    _nd = 1
    term_cls = nn.Conv1d


class QuadraticConv2d(_ConvMixin, _QuadraticConvNd):
    """``nn.Conv2d`` with a quadratic neuron."""
    _nd = 2
    term_cls = nn.Conv2d


class QuadraticConvTranspose1d(_ConvTransposeMixin, _QuadraticConvNd):
    """``nn.ConvTranspose1d`` with a quadratic neuron."""
    _nd = 1
    _transposed = True
    term_cls = nn.ConvTranspose1d

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, padding_mode='zeros', neuron: NeuronSpec = 'fan', device=None, dtype=None,
                 init: str = 'relinear', fused: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, neuron, device, dtype, init, fused, output_padding)


class QuadraticConvTranspose2d(QuadraticConvTranspose1d):
    """``nn.ConvTranspose2d`` with a quadratic neuron."""
    _nd = 2
    term_cls = nn.ConvTranspose2d


CONVENTIONAL_TO_QUADRATIC = {
    nn.Linear: QuadraticLinear,
    nn.Conv1d: QuadraticConv1d,
    nn.Conv2d: QuadraticConv2d,
    nn.ConvTranspose1d: QuadraticConvTranspose1d,
    nn.ConvTranspose2d: QuadraticConvTranspose2d,
}


def _quadratic_like(m: nn.Module, neuron: NeuronSpec) -> QuadraticLayer:
    """A quadratic layer of ``m``'s shape equal to ``m`` (exact linear special case)."""
    kind = CONVENTIONAL_TO_QUADRATIC[type(m)]
    dev, dt = m.weight.device, m.weight.dtype
    if kind is QuadraticLinear:
        q = QuadraticLinear(m.in_features, m.out_features, True, neuron, device=dev, dtype=dt, init='default')
    else:
        kw = dict(stride=m.stride, padding=m.padding, dilation=m.dilation, groups=m.groups, bias=True,
                  neuron=neuron, device=dev, dtype=dt, init='default')
        if m.transposed:
            kw['output_padding'] = m.output_padding
        else:
            kw['padding_mode'] = m.padding_mode
        q = kind(m.in_channels, m.out_channels, m.kernel_size, **kw)
        if m.transposed and m.padding_mode != 'zeros':
            raise ValueError('transposed convolutions only support zero padding')
    q.reset_quadratic_('linear')  # raises for families without a linear special case
    lin = q.linear
    with torch.no_grad():
        lin.weight.copy_(m.weight)
        if m.bias is not None:
            lin.bias.copy_(m.bias)
        else:
            lin.bias.zero_()
    return q


def quadratize(model: nn.Module, neuron: NeuronSpec = 'fan', exclude: Iterable[str] = ()) -> nn.Module:
    """Replace ``model``'s Linear / Conv1d / Conv2d / ConvTranspose1d / ConvTranspose2d
    layers (in place) by quadratic layers that compute the same function: the
    conventional weights go into the neuron's linear term and the quadratic
    terms start at the linear special case (ReLinear). Layers whose qualified
    name matches a glob in ``exclude`` (e.g. ``'fc'``, ``'*.downsample.*'``)
    stay conventional. Returns ``model``."""
    fam = get_neuron(neuron)
    patterns = list(exclude)
    if not fam.has_linear_case:
        fam.init_linear_({})  # raises the explanatory error
    inside_quadratic = [n + '.' for n, m in model.named_modules() if isinstance(m, QuadraticLayer)]
    replace = []
    for name, m in model.named_modules():
        if (type(m) in CONVENTIONAL_TO_QUADRATIC and not any(name.startswith(q) for q in inside_quadratic)
                and not any(fnmatch.fnmatchcase(name, p) for p in patterns)):
            replace.append((name, m))
    if not replace:
        raise ValueError('quadratize found no Linear/Conv layer to replace (check exclude patterns)')
    for name, m in replace:
        if not name:
            raise ValueError('quadratize replaces layers inside a model; wrap a bare layer in nn.Sequential')
        parent_name, _, child = name.rpartition('.')
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _quadratic_like(m, fam))
    return model
