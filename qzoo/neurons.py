"""Neuron families: the quadratic-neuron math lives here and nowhere else.

A neuron family is a set of *terms* and a *combine* rule. Each term is a
linear map (a Linear / Conv / ConvTranspose of the layer's shape) applied to
either the input ``x`` or its elementwise square ``x*x``; the combine rule
(:meth:`NeuronFamily.combine`) turns the term outputs into the neuron's output.
Layers (``qzoo.layers``) own one torch module per term, so every tensor is a
``.weight`` / ``.bias`` of a submodule named ``<prefix>_<term>`` (e.g.
``conv_r.weight``), run each term module once and hand the outputs to
``combine``; they know nothing about any family's formula.

A combine rule uses only tensor operations and Python values known when the
layer is built (the channel dimension, ranks), never properties of the input,
so a layer's forward traces with ``torch.fx``, ``torch.jit.trace``,
``torch.export`` and ``torch.compile(fullgraph=True)``.

Families are referred to by a *spec* string: a name, optionally with
keyword arguments, e.g. ``"fan"`` or ``"lowrank(rank=2)"``. A new family is a
subclass that sets ``name``, ``formula``, ``citation``, ``terms``,
``linear_term`` and implements ``combine`` (and ``init_linear_`` when its linear
special case needs more than zeroing the quadratic-only terms).
"""
from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = [
    'Term', 'NeuronFamily', 'get_neuron', 'list_neurons', 'NeuronSpec', 'NEURONS',
]


@dataclass(frozen=True)
class Term:
    """One linear map inside a neuron.

    name: suffix of the submodule holding it (``conv_<name>``).
    input: ``'x'`` (the input) or ``'sq'`` (the input squared elementwise).
    bias: whether the term carries a bias when the layer is built with ``bias=True``.
    quadratic: True for terms that vanish in the family's linear special case
        (ReLinear trains these with a scaled learning rate).
    mult: output-channel multiplier (``lowrank``'s Q has ``rank`` outputs per channel).
    """
    name: str
    input: str
    bias: bool
    quadratic: bool
    mult: int = 1


BiasOf = Callable[[str], Optional[Tensor]]


class NeuronFamily:
    """Base class: subclasses set the class attributes and implement ``combine``."""

    name: str = ''
    formula: str = ''
    citation: str = ''
    #: terms, in the order of the layer's submodules
    terms: Tuple[Term, ...] = ()
    #: name of the term that is the conventional layer in the linear special case
    linear_term: Optional[str] = None

    def __init__(self, **kwargs):
        if kwargs:
            raise ValueError(f"neuron '{self.name}' takes no arguments, got {sorted(kwargs)}")

    # ---- description -------------------------------------------------------------
    @property
    def spec(self) -> str:
        """Canonical spec string, parseable by :func:`get_neuron`."""
        args = self.spec_kwargs()
        if not args:
            return self.name
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in args.items())})"

    def spec_kwargs(self) -> Dict[str, object]:
        return {}

    @property
    def is_quadratic(self) -> bool:
        return any(t.input == 'sq' for t in self.terms) or len(self.terms) > 1

    @property
    def has_linear_case(self) -> bool:
        return self.linear_term is not None

    @property
    def param_multiplier(self) -> int:
        """Weight tensors per conventional weight tensor (biases counted separately)."""
        return sum(t.mult for t in self.terms)

    def term(self, name: str) -> Term:
        for t in self.terms:
            if t.name == name:
                return t
        raise KeyError(name)

    def __repr__(self) -> str:
        return f"NeuronFamily({self.spec}: {self.formula})"

    def __eq__(self, other) -> bool:
        return isinstance(other, NeuronFamily) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash(self.spec)

    # ---- math -------------------------------------------------------------------
    def combine(self, t: Mapping[str, Tensor], ch: int, bias_of: BiasOf) -> Tensor:
        """Neuron output from the term outputs ``t`` (each already includes its bias).

        ``ch`` is the channel dimension of every term output, counted from the end
        (``-1`` for Linear, ``-3`` for Conv2d), so batched and unbatched inputs look the
        same. ``bias_of(term)`` returns that term's bias broadcastable against its
        output (or None), for the families whose formula uses it on its own.
        """
        raise NotImplementedError

    def elementwise_macs(self, out_numel: int) -> int:
        """Multiplies done by ``combine`` per output tensor of ``out_numel`` elements."""
        return 0

    # ---- initialisation ---------------------------------------------------------
    def init_linear_(self, terms: Mapping[str, nn.Module]) -> None:
        """Set the quadratic-only terms so the neuron equals its linear term exactly."""
        if not self.has_linear_case:
            raise ValueError(
                f"neuron '{self.name}' ({self.formula}) has no linear special case, so it cannot be "
                f"initialised to equal a conventional layer; use a family with one "
                f"({', '.join(n for n, f in NEURONS.items() if f.linear_term)})")
        self._zero_quadratic_(terms)

    def init_relinear_(self, terms: Mapping[str, nn.Module]) -> None:
        """Training initialisation (ReLinear, Fan et al. arXiv 2110.06081): start at the
        linear special case. Families without one keep their default init (``power`` scales its
        weights down so that fresh stacks stay finite: see :class:`Power`)."""
        if self.has_linear_case:
            self.init_linear_(terms)

    def _zero_quadratic_(self, terms: Mapping[str, nn.Module]) -> None:
        with torch.no_grad():
            for t in self.terms:
                if t.quadratic:
                    m = terms[t.name]
                    m.weight.zero_()
                    if m.bias is not None:
                        m.bias.zero_()


class Linear(NeuronFamily):
    name = 'linear'
    formula = 'W x + b'
    citation = 'the conventional neuron'
    terms = (Term('r', 'x', bias=True, quadratic=False),)
    linear_term = 'r'

    @property
    def is_quadratic(self) -> bool:
        return False

    def combine(self, t, ch, bias_of):
        return t['r']


class Fan(NeuronFamily):
    name = 'fan'
    formula = '(W_r x + b_r) * (W_g x + b_g) + W_b (x*x) + c'
    citation = ('Fan, Cong & Wang, "A new type of neurons for machine learning", '
                'Int. J. Numer. Meth. Biomed. Engng. 2018 (arXiv:1704.08362)')
    terms = (Term('r', 'x', True, False), Term('g', 'x', True, True), Term('b', 'sq', True, True))
    linear_term = 'r'

    def combine(self, t, ch, bias_of):
        return torch.addcmul(t['b'], t['r'], t['g'])

    def elementwise_macs(self, out_numel):
        return out_numel

    def init_linear_(self, terms):
        # W_g = 0, b_g = 1, W_b = 0, c = 0
        self._zero_quadratic_(terms)
        g = terms['g']
        if g.bias is None:
            raise ValueError("neuron 'fan' built with bias=False has no linear special case "
                             "(it needs b_g = 1); build the layer with bias=True")
        with torch.no_grad():
            g.bias.fill_(1.0)


class FanRG(Fan):
    name = 'fan_rg'
    formula = '(W_r x + b_r) * (W_g x + b_g)'
    citation = Fan.citation + ' (product part only)'
    terms = (Term('r', 'x', True, False), Term('g', 'x', True, True))

    def combine(self, t, ch, bias_of):
        return t['r'] * t['g']


class FanRB(NeuronFamily):
    name = 'fan_rb'
    formula = 'W_r x + b_r + W_b (x*x)'
    citation = Fan.citation + ' (compact: linear plus power term)'
    terms = (Term('r', 'x', True, False), Term('b', 'sq', False, True))
    linear_term = 'r'

    def combine(self, t, ch, bias_of):
        return t['r'] + t['b']


class QuadraLib(NeuronFamily):
    name = 'quadralib'
    formula = '(W_a x) * (W_b x) + W_c x + b'
    citation = ('Xu et al., "QuadraLib: A performant quadratic neural network library for '
                'architecture optimization and design exploration", MLSys 2022')
    terms = (Term('a', 'x', False, True), Term('b', 'x', False, True), Term('c', 'x', True, False))
    linear_term = 'c'

    def combine(self, t, ch, bias_of):
        return torch.addcmul(t['c'], t['a'], t['b'])

    def elementwise_macs(self, out_numel):
        return out_numel

    def init_linear_(self, terms):
        # W_a = 0 makes the product vanish; W_b keeps its random init so that
        # dL/dW_a = delta * (W_b x) x^T is not zero and the product can grow.
        with torch.no_grad():
            terms['a'].weight.zero_()


class QRes(NeuronFamily):
    name = 'qres'
    formula = '(W_1 x) * (W_2 x) + W_1 x + b'
    citation = ('Bu & Karpatne, "Quadratic residual networks: a new class of neural networks for '
                'solving forward and inverse problems in physics involving PDEs", SDM 2021')
    # term '1' computes W_1 x + b (its bias is the neuron's output bias b)
    terms = (Term('1', 'x', True, False), Term('2', 'x', False, True))
    linear_term = '1'

    def combine(self, t, ch, bias_of):
        lin = t['1']
        b = bias_of('1')
        w1x = lin if b is None else lin - b.to(lin.dtype)  # in lin's dtype under autocast
        return torch.addcmul(lin, w1x, t['2'])

    def elementwise_macs(self, out_numel):
        return out_numel


class Power(NeuronFamily):
    name = 'power'
    formula = 'W (x*x) + b'
    citation = 'the pure power term of Fan et al. 2018; no linear special case'
    terms = (Term('p', 'sq', True, False),)
    linear_term = None
    #: RMS of a freshly initialised neuron's output for an input of unit RMS (Gaussian: E[x^4] = 3)
    INIT_GAIN = 0.25

    @property
    def is_quadratic(self) -> bool:
        return True

    def combine(self, t, ch, bias_of):
        return t['p']

    def init_relinear_(self, terms):
        # A power layer maps activations of RMS r to about r^2 times its weights' gain, so a stack of them
        # without normalisation (eval mode with BatchNorm's initial statistics) squares its way from O(10) to
        # inf within a few layers, and the next convolution's inf - inf is NaN. Training therefore starts with
        # W ~ N(0, INIT_GAIN^2 / (3 fan_in)): a unit-RMS Gaussian input gives outputs of RMS INIT_GAIN, so
        # r -> r^2 / 4 shrinks every r below 4 instead. The bias keeps its default init.
        w = terms['p'].weight
        fan_in = nn.init._calculate_fan_in_and_fan_out(w)[0]
        with torch.no_grad():
            w.normal_(0.0, self.INIT_GAIN / math.sqrt(3 * fan_in))


class LowRank(NeuronFamily):
    name = 'lowrank'
    formula = 'sum_k (Q_k x)^2 + W x + b  (x^T A x with A = Q^T Q of rank K)'
    citation = ('a rank-K quadratic form x^T A x plus a linear neuron; cf. the factorised '
                'quadratic neurons in Xu et al., QuadraLib, MLSys 2022')
    linear_term = 'w'

    def __init__(self, rank: int = 1):
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise ValueError(f"neuron 'lowrank' needs an integer rank >= 1, got {rank!r}")
        self.rank = rank
        # Q's output channels are ordered (out_channel, k) so that conv groups stay intact
        self.terms = (Term('q', 'x', False, True, mult=rank), Term('w', 'x', True, False))

    def spec_kwargs(self):
        return {'rank': self.rank}

    def combine(self, t, ch, bias_of):
        # Q's channels (C*K) -> (C, K): K lands at dimension ch, then sum its squares over it
        sq = t['q'].unflatten(ch, (-1, self.rank)).square().sum(ch)
        return t['w'] + sq

    def elementwise_macs(self, out_numel):
        return self.rank * out_numel

    def init_relinear_(self, terms):
        # Q = 0 is the linear special case but also a stationary point (dL/dQ = 2 delta (Qx) x^T = 0),
        # so training starts just off it: Q at 1e-2 of its default init.
        with torch.no_grad():
            terms['q'].weight.mul_(1e-2)


NEURONS: Dict[str, type] = {
    cls.name: cls for cls in (Linear, Fan, FanRG, FanRB, QuadraLib, QRes, Power, LowRank)
}
NeuronSpec = Union[str, NeuronFamily, Mapping[str, object]]

_SPEC_RE = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*$')


def _parse_spec(spec: str) -> Tuple[str, Dict[str, object]]:
    m = _SPEC_RE.match(spec)
    if not m:
        raise ValueError(f"cannot parse neuron spec {spec!r}: write a name such as 'fan' "
                         f"or 'lowrank(rank=2)'")
    name, args = m.group(1), m.group(2)
    kwargs: Dict[str, object] = {}
    if args and args.strip():
        for part in args.split(','):
            if '=' not in part:
                raise ValueError(f"neuron spec {spec!r}: arguments must be key=value")
            k, v = part.split('=', 1)
            try:
                kwargs[k.strip()] = ast.literal_eval(v.strip())
            except (ValueError, SyntaxError):
                raise ValueError(f"neuron spec {spec!r}: value {v.strip()!r} is not a literal") from None
    return name, kwargs


def list_neurons():
    return list(NEURONS)


def get_neuron(spec: NeuronSpec = 'fan', **kwargs) -> NeuronFamily:
    """Resolve a neuron family from a name/spec string, a dict ``{'name': ..., **kwargs}``
    or an instance. Unknown names raise ``ValueError`` listing the valid ones."""
    if isinstance(spec, NeuronFamily):
        if kwargs:
            raise ValueError('pass neuron kwargs with a name, not with a NeuronFamily instance')
        return spec
    if isinstance(spec, Mapping):
        spec = dict(spec)
        name = spec.pop('name', None)
        if not isinstance(name, str):
            raise ValueError(f"neuron dict needs a 'name' key, got {spec!r}")
        extra = spec
    elif isinstance(spec, str):
        name, extra = _parse_spec(spec)
    else:
        raise TypeError(f"neuron must be a name such as 'fan', got {type(spec).__name__}")
    cls = NEURONS.get(name.lower())
    if cls is None:
        raise ValueError(f"unknown neuron type {name!r}; valid neuron types: {', '.join(NEURONS)}")
    try:
        return cls(**{**extra, **kwargs})
    except TypeError as e:
        raise ValueError(f"bad arguments for neuron '{name}': {e}") from None
