"""Quadratic layers built on the neuron families of :mod:`qzoo.neurons`.

Each layer mirrors its torch counterpart's signature plus ``neuron=`` and
holds one torch module per neuron term (``conv_r``, ``conv_g``, ``conv_b``
for ``fan``), so every tensor is a submodule's ``.weight`` / ``.bias``.

Two forward paths compute the same function:

* fused: the terms that share an input (``x`` or ``x*x``) run as
  *one* call with their weights stacked along the output channels (per
  group, so ``groups > 1`` stays correct), then the neuron combines them.
  For the families whose combine is a product and/or sums of terms (``linear``,
  ``fan``, ``fan_rg``, ``fan_rb``, ``quadralib``, ``power``, ``lowrank``) the
  whole layer is one autograd Function (:class:`_QuadraticFunction`) with a
  hand-written backward: the gradient of the stacked output is written in place
  (no ``cat``), ``x*x`` is recomputed in backward instead of being saved, and
  the input gradient is one ``addcmul``. On CPU in channels_last the x terms run
  as separate calls inside the Function (measured faster there; ``_STACK_X_TERMS``
  forces either way). Other families (``qres``, user-defined ones) run the
  stacked calls under plain autograd;
* reference (``forward_reference``): one call per term, as the seed code does.

By default (``fused=None``) a layer takes the fused path on the CPU and the reference
path on CUDA: on an H100 (torch 2.11, bf16, channels_last, batch 512) qresnet20 trained
at 14.3k img/s fused vs 20.0k reference in eager mode, 22.8k vs 25.4k compiled
(eval/benchmark.py --cifar-train, 2026-11-27). :func:`set_fused` forces either path.
"""
from __future__ import annotations

import fnmatch
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .neurons import NEURONS, NeuronFamily, NeuronSpec, get_neuron

__all__ = [
    'QuadraticLayer', 'QuadraticLinear', 'QuadraticConv1d', 'QuadraticConv2d',
    'QuadraticConvTranspose1d', 'QuadraticConvTranspose2d', 'quadratize', 'set_fused', 'CONVENTIONAL_TO_QUADRATIC',
]

_aten = torch.ops.aten


# ---- the fused Function -----------------------------------------------------------
class _Rule(NamedTuple):
    """A combine rule as data: ``out = sum(add) [+ p*q] [+ sum_k sqsum_k**2]``.

    Mirrors ``NeuronFamily.combine`` of the families listed in ``_RULES`` (the tests
    check every family's fused output and gradients against ``forward_reference``,
    which calls ``combine``), and gives the backward that autograd would derive."""
    add: Tuple[str, ...] = ()
    prod: Optional[Tuple[str, str]] = None
    sqsum: Optional[str] = None  # lowrank's Q term: rank-K channels per output channel


_RULES: Dict[str, _Rule] = {
    'linear': _Rule(add=('r',)),
    'fan': _Rule(add=('b',), prod=('r', 'g')),
    'fan_rg': _Rule(prod=('r', 'g')),
    'fan_rb': _Rule(add=('r', 'b')),
    'quadralib': _Rule(add=('c',), prod=('a', 'b')),
    'power': _Rule(add=('p',)),
    'lowrank': _Rule(add=('w',), sqsum='q'),
}


class _Plan(NamedTuple):
    """Everything about one fused call that is not a tensor (constants for torch.compile)."""
    rule: _Rule
    #: ('linear',) or ('conv', stride, padding, dilation, transposed, output_padding, groups)
    op: tuple
    x_terms: Tuple[Tuple[str, ...], Tuple[int, ...]]   # names, channels per group (empty: no x terms)
    sq_terms: Tuple[Tuple[str, ...], Tuple[int, ...]]  # same for the terms on x*x
    rank: int = 1
    #: x terms as one call on stacked weights (True) or one call each (False, groups == 1 only)
    stack: bool = True
    #: term outputs that backward needs (the factors of products and squares); a plain field,
    #: not a property, so that every torch.compile version traces it as a constant
    saved_terms: Tuple[str, ...] = ()


def _saved_terms(rule: _Rule) -> Tuple[str, ...]:
    return (rule.prod or ()) + ((rule.sqsum,) if rule.sqsum else ())


#: x terms stacked into one call: None = automatic (stacked, except on CPU in channels_last,
#: where separate calls measured faster), True / False to force (for benchmarking)
_STACK_X_TERMS: Optional[bool] = None


def _op_forward(op: tuple, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    if op[0] == 'linear':
        return F.linear(x, weight, bias)
    _, stride, padding, dilation, transposed, output_padding, groups = op
    return torch.convolution(x, weight, bias, stride, padding, dilation, transposed, output_padding, groups)


def _op_backward(op: tuple, gy: Tensor, x: Tensor, weight: Tensor, mask: List[bool]):
    """(grad_input, grad_weight, grad_bias) of ``_op_forward``; None where ``mask`` is False."""
    if op[0] == 'linear':
        gy2, x2 = gy.reshape(-1, gy.shape[-1]), x.reshape(-1, x.shape[-1])
        return (gy.matmul(weight) if mask[0] else None, gy2.t().mm(x2) if mask[1] else None,
                gy2.sum(0) if mask[2] else None)
    _, stride, padding, dilation, transposed, output_padding, groups = op
    gx, gw, gb = _aten.convolution_backward.default(gy, x, weight, [gy.shape[1]], stride, padding, dilation, transposed,
                                            output_padding, groups, mask)
    return (gx if mask[0] else None), (gw if mask[1] else None), (gb if mask[2] else None)


def _channel_dim(op: tuple, y: Tensor) -> int:
    return y.dim() - 1 if op[0] == 'linear' else 1


def _groups(op: tuple) -> int:
    return 1 if op[0] == 'linear' else op[6]


def _split_terms(y: Tensor, spec, op: tuple) -> Dict[str, Tensor]:
    names, sizes = spec
    if len(names) == 1:
        return {names[0]: y}
    ch, g = _channel_dim(op, y), _groups(op)
    if g == 1:
        return dict(zip(names, y.split(list(sizes), dim=ch)))
    parts = y.unflatten(ch, (g, -1)).split(list(sizes), dim=ch + 1)
    return {n: p.flatten(ch, ch + 1) for n, p in zip(names, parts)}


def _combine(plan: _Plan, t: Dict[str, Tensor], ch: int) -> Tensor:
    rule = plan.rule
    out: Optional[Tensor] = None
    for name in rule.add:
        out = t[name] if out is None else out + t[name]
    if rule.prod is not None:
        p, q = t[rule.prod[0]], t[rule.prod[1]]
        out = p * q if out is None else torch.addcmul(out, p, q)
    if rule.sqsum is not None:
        q = t[rule.sqsum]
        sq = q.unflatten(ch, (q.shape[ch] // plan.rank, plan.rank)).square().sum(ch + 1)
        out = sq if out is None else out + sq
    return out


def _weight_parts(plan: _Plan, w: Tensor, b: Optional[Tensor], spec) -> List[Tuple[Tensor, Optional[Tensor]]]:
    """Per-term (weight, bias) views of stacked ones (groups == 1)."""
    sizes = list(spec[1])
    dim = 1 if plan.op[0] == 'conv' and plan.op[4] else 0  # transposed convs: out channels in dim 1
    bs = b.split(sizes) if b is not None else [None] * len(sizes)
    return list(zip(w.split(sizes, dim=dim), bs))


def _x_terms(plan: _Plan, x: Tensor, w_x: Tensor, b_x: Optional[Tensor]) -> Tuple[Dict[str, Tensor], Optional[Tensor]]:
    """Outputs of the x terms (and their stacked output when stacked)."""
    if plan.stack or len(plan.x_terms[0]) == 1:
        y_x = _op_forward(plan.op, x, w_x, b_x)
        return _split_terms(y_x, plan.x_terms, plan.op), y_x
    parts = _weight_parts(plan, w_x, b_x, plan.x_terms)
    return {n: _op_forward(plan.op, x, w, b) for n, (w, b) in zip(plan.x_terms[0], parts)}, None


def _qforward(x: Tensor, w_x: Optional[Tensor], b_x: Optional[Tensor], w_sq: Optional[Tensor],
              b_sq: Optional[Tensor], plan: _Plan) -> Tuple[Tensor, Tuple[Tensor, ...]]:
    """The fused forward: (output, the tensors backward needs besides inputs)."""
    t: Dict[str, Tensor] = {}
    y_x = None
    if w_x is not None:
        tx, y_x = _x_terms(plan, x, w_x, b_x)
        t.update(tx)
    if w_sq is not None:
        y_sq = _op_forward(plan.op, x * x, w_sq, b_sq)
        t.update(_split_terms(y_sq, plan.sq_terms, plan.op))
    some = next(iter(t.values()))
    out = _combine(plan, t, _channel_dim(plan.op, some))
    if not plan.saved_terms:
        return out, ()
    if y_x is not None:
        return out, (y_x,)
    return out, tuple(t[n] for n in plan.saved_terms)


def _term_grads(plan: _Plan, go: Tensor, t: Dict[str, Tensor], ch: int) -> Dict[str, tuple]:
    """d(loss)/d(term) as lazy expressions: ('id', go), ('mul', a, b) or ('sqsum', 2*go, q)."""
    rule = plan.rule
    g: Dict[str, tuple] = {name: ('id', go) for name in rule.add}
    if rule.prod is not None:
        p, q = rule.prod
        g[p], g[q] = ('mul', go, t[q]), ('mul', go, t[p])
    if rule.sqsum is not None:
        g[rule.sqsum] = ('sqsum', go * 2, t[rule.sqsum])
    return g


def _materialize(expr: tuple, ch: int, rank: int, out: Optional[Tensor] = None) -> Tensor:
    """Evaluate a lazy term gradient, into ``out`` (a view) when given."""
    kind = expr[0]
    if kind == 'id':
        return expr[1] if out is None else out.copy_(expr[1])
    if kind == 'mul':
        return expr[1] * expr[2] if out is None else torch.mul(expr[1], expr[2], out=out)
    go2, q = expr[1], expr[2]  # d/dq of sum_k q_k^2 is 2 q_k, broadcast over k
    qk = q.unflatten(ch, (q.shape[ch] // rank, rank))
    if out is None:
        return (qk * go2.unsqueeze(ch + 1)).flatten(ch, ch + 1)
    torch.mul(qk, go2.unsqueeze(ch + 1), out=out.unflatten(ch, (q.shape[ch] // rank, rank)))
    return out


def _stacked_grad(plan: _Plan, spec, grads: Dict[str, tuple], like: Optional[Tensor], ch: int) -> Tensor:
    """Gradient of one stacked output (the terms of ``spec``), without a ``cat`` where possible."""
    names, sizes = spec
    if len(names) == 1:
        return _materialize(grads[names[0]], ch, plan.rank)
    g = _groups(plan.op)
    if (g == 1 and like is not None and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling()):
        # eager, first-order: write each term's gradient into its slice of one buffer
        buf = torch.empty_like(like)
        off = 0
        for name, size in zip(names, sizes):
            _materialize(grads[name], ch, plan.rank, buf.narrow(ch, off, size))
            off += size
        return buf
    # torch.compile (no strided out=), double backward (out= is not differentiable), groups > 1
    parts = [_materialize(grads[n], ch, plan.rank) for n in names]
    if g == 1:
        return torch.cat(parts, dim=ch)
    return torch.cat([p.unflatten(ch, (g, -1)) for p in parts], dim=ch + 1).flatten(ch, ch + 1)


class _QuadraticFunction(torch.autograd.Function):
    """A whole quadratic layer: the x terms as one stacked call (or one call each), the x*x
    terms as another, the combine rule, and a backward that saves only ``x``, the weights
    and (for products and squares) the x-term outputs; ``x*x`` is recomputed."""

    @staticmethod
    def forward(ctx, x, w_x, b_x, w_sq, b_sq, plan: _Plan):
        out, saved = _qforward(x, w_x, b_x, w_sq, b_sq, plan)
        ctx.plan = plan
        ctx.has_bias = (b_x is not None, b_sq is not None)
        ctx.save_for_backward(x, w_x, b_x, w_sq, *saved)
        return out

    @staticmethod
    def backward(ctx, go):
        x, w_x, b_x, w_sq, *saved = ctx.saved_tensors
        plan: _Plan = ctx.plan
        need = ctx.needs_input_grad
        ch = _channel_dim(plan.op, go)
        stacked = plan.stack or len(plan.x_terms[0]) == 1
        y_x = None
        t: Dict[str, Tensor] = {}
        if saved:
            if torch.is_grad_enabled():
                # double backward: the saved term outputs were made without autograd, so
                # recompute them from the saved inputs to keep their dependence on x and weights
                t, y_x = _x_terms(plan, x, w_x, b_x)
            elif stacked:
                y_x = saved[0]
                t = _split_terms(y_x, plan.x_terms, plan.op)
            else:
                t = dict(zip(plan.saved_terms, saved))
        grads = _term_grads(plan, go, t, ch)
        gx = gw_x = gb_x = gw_sq = gb_sq = None
        if w_x is not None:
            mask = [need[0], need[1], need[2] and ctx.has_bias[0]]
            if stacked:
                gy = _stacked_grad(plan, plan.x_terms, grads, y_x, ch)
                gx, gw_x, gb_x = _op_backward(plan.op, gy, x, w_x, mask)
            else:  # one backward call per term, weight and bias gradients concatenated
                gws, gbs = [], []
                for name, (w, _) in zip(plan.x_terms[0], _weight_parts(plan, w_x, b_x, plan.x_terms)):
                    gxi, gwi, gbi = _op_backward(plan.op, _materialize(grads[name], ch, plan.rank), x, w, mask)
                    gws.append(gwi)
                    gbs.append(gbi)
                    if gxi is not None:
                        gx = gxi if gx is None else (gx + gxi if torch.is_grad_enabled() else gx.add_(gxi))
                dim = 1 if plan.op[0] == 'conv' and plan.op[4] else 0
                gw_x = torch.cat(gws, dim=dim) if mask[1] else None
                gb_x = torch.cat(gbs) if mask[2] else None
        if w_sq is not None:
            gy = _stacked_grad(plan, plan.sq_terms, grads, None, ch)
            gsq, gw_sq, gb_sq = _op_backward(plan.op, gy, x * x, w_sq, [need[0], need[3], need[4] and ctx.has_bias[1]])
            if need[0]:  # d(x*x)/dx = 2x
                if gx is None:
                    gx = (x * gsq).mul_(2)
                elif torch.is_grad_enabled():  # double backward: stay out of place
                    gx = torch.addcmul(gx, x, gsq, value=2)
                else:
                    gx = gx.addcmul_(x, gsq, value=2)  # gx is our own fresh buffer
        return gx, gw_x, gb_x, gw_sq, gb_sq, None


def set_fused(model: nn.Module, fused: Optional[bool] = True) -> nn.Module:
    """Switch every quadratic layer of ``model`` to the fused path (``True``), the per-term
    reference path (``False``) or back to the default (``None``: fused on CPU, reference on
    CUDA, where it measured faster). Returns ``model``."""
    for m in model.modules():
        if isinstance(m, QuadraticLayer):
            m.fused = None if fused is None else bool(fused)
    return model


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
                 bias: bool = True, init: str = 'relinear', fused: Optional[bool] = None):
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
        # the fused Function handles the built-in families whose combine is a _Rule
        fam = self.neuron
        self._rule = _RULES.get(fam.name) if type(fam) is NEURONS.get(fam.name) else None
        self._rank = getattr(fam, 'rank', 1)
        # per input ('x', 'sq'): (term names, submodule names, output channels per group), or None
        self._fn_groups = tuple(
            (tuple(t.name for t in grp), tuple(f'{self.prefix}_{t.name}' for t in grp),
             tuple(out_channels * t.mult // groups for t in grp)) if grp else None
            for grp in ([t for t in fam.terms if t.input == inp] for inp in ('x', 'sq')))
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
        return f"neuron={self.neuron.spec}, fused={'auto' if self.fused is None else self.fused}"

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
        if not (self.fused if self.fused is not None else x.device.type != 'cuda'):
            return self.forward_reference(x, output_size)
        self._check_dtype(x)
        self._check_input(x)
        if self._rule is None:
            return self._forward_stacked(x, output_size)
        return self._forward_function(x, output_size)

    def _forward_function(self, x: Tensor, output_size: Optional[List[int]] = None) -> Tensor:
        """The fused path through :class:`_QuadraticFunction` (families in ``_RULES``)."""
        x, op, unbatch = self._prepare(x, output_size)
        mods = self._modules
        stacks: List[Optional[Tensor]] = []
        specs = []
        for group in self._fn_groups:
            if group is None:
                stacks += [None, None]
                specs.append(((), ()))
                continue
            names, attrs, sizes = group
            ms = [mods[a] for a in attrs]
            if len(ms) == 1:
                stacks += [ms[0].weight, ms[0].bias]
            else:
                weight, bias, _ = self._stack(ms)
                stacks += [weight, bias]
            specs.append((names, sizes))
        stack = _STACK_X_TERMS
        if stack is None:  # separate calls measured faster on CPU in channels_last
            stack = not (x.device.type == 'cpu' and x.dim() == 4 and not x.is_contiguous()
                         and x.is_contiguous(memory_format=torch.channels_last))
        plan = _Plan(self._rule, op, specs[0], specs[1], self._rank, bool(stack) or self.groups > 1,
                     _saved_terms(self._rule))
        dev = x.device.type
        if torch.is_autocast_enabled(dev):
            # run in the autocast dtype with autocast off, so that forward and the
            # hand-written backward see the same dtypes (x*x is squared after the cast)
            dt = torch.get_autocast_dtype(dev)
            x = x.to(dt)
            stacks = [None if s is None else s.to(dt) for s in stacks]
            with torch.autocast(dev, enabled=False):
                out = self._run_fused(x, stacks, plan)
        else:
            out = self._run_fused(x, stacks, plan)
        return out.squeeze(0) if unbatch else out

    @staticmethod
    def _run_fused(x: Tensor, stacks: List[Optional[Tensor]], plan: _Plan) -> Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or any(s is not None and s.requires_grad for s in stacks)):
            return _QuadraticFunction.apply(x, *stacks, plan)
        return _qforward(x, *stacks, plan)[0]  # inference: no autograd Function overhead

    def _prepare(self, x: Tensor, output_size) -> Tuple[Tensor, tuple, bool]:
        """(batched input, op constants for ``_op_forward``, whether the input was unbatched)."""
        raise NotImplementedError

    def _forward_stacked(self, x: Tensor, output_size: Optional[List[int]] = None) -> Tensor:
        """The fused path under plain autograd (families without a ``_Rule``, e.g. ``qres``)."""
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
                 device=None, dtype=None, init: str = 'relinear', fused: Optional[bool] = None):
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

    def _prepare(self, x, output_size=None):
        return x, ('linear',), False


class _QuadraticConvNd(QuadraticLayer):
    _nd = 2
    _transposed = False

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode='zeros', neuron: NeuronSpec = 'fan', device=None, dtype=None,
                 init: str = 'relinear', fused: Optional[bool] = None, output_padding=0):
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
        return self._modules[f'{self.prefix}_{self.neuron.terms[0].name}']


class _ConvMixin:
    def _op(self, x, weight, bias, output_size=None):
        return self._ref._conv_forward(x, weight, bias)

    def _prepare(self, x, output_size=None):
        m = self._ref
        unbatch = x.dim() == self._nd + 1
        if unbatch:
            x = x.unsqueeze(0)
        padding = m.padding
        if m.padding_mode != 'zeros' or padding == 'same':
            # pad first: squaring commutes with zero/reflect/replicate/circular padding
            mode = 'constant' if m.padding_mode == 'zeros' else m.padding_mode
            x = F.pad(x, m._reversed_padding_repeated_twice, mode=mode)
            padding = (0,) * self._nd
        elif padding == 'valid':
            padding = (0,) * self._nd
        return x, ('conv', tuple(m.stride), tuple(padding), tuple(m.dilation), False, (0,) * self._nd,
                   m.groups), unbatch


class _ConvTransposeMixin:
    _out_dim = 1

    def _op(self, x, weight, bias, output_size=None):
        m = self._ref
        out_pad = m._output_padding(x, output_size, m.stride, m.padding, m.kernel_size, self._nd, m.dilation)
        fn = F.conv_transpose1d if self._nd == 1 else F.conv_transpose2d
        return fn(x, weight, bias, m.stride, m.padding, out_pad, m.groups, m.dilation)

    def _prepare(self, x, output_size=None):
        m = self._ref
        out_pad = m._output_padding(x, output_size, m.stride, m.padding, m.kernel_size, self._nd, m.dilation)
        unbatch = x.dim() == self._nd + 1
        if unbatch:
            x = x.unsqueeze(0)
        return x, ('conv', tuple(m.stride), tuple(m.padding), tuple(m.dilation), True, tuple(out_pad),
                   m.groups), unbatch


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
                 init: str = 'relinear', fused: Optional[bool] = None):
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
