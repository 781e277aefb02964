"""Quadratic layers built on the neuron families of :mod:`qzoo.neurons`.

Each layer mirrors its torch counterpart's signature plus ``neuron=`` and
holds one torch module per neuron term (``conv_r``, ``conv_g``, ``conv_b``
for ``fan``), so every tensor is a submodule's ``.weight`` / ``.bias``.

The forward squares the input once when a term needs ``x*x``, calls each term
module on its input, and hands the outputs to the family's ``combine``
(:meth:`qzoo.neurons.NeuronFamily.combine`; on CUDA, with :data:`STACK_X_TERMS_ON_CUDA`,
the terms that read ``x`` are one call on their stacked weights): plain torch calls under autograd,
so autocast, channels_last, ``torch.compile(fullgraph=True)``, ``torch.fx``
symbolic tracing, ``torch.jit.trace`` and ``torch.export`` all see ordinary
convolutions and elementwise ops. The input checks (type, dtype, shape) run in
eager mode and under ``torch.compile`` / ``torch.export``; they are skipped while
``torch.fx`` or ``torch.jit.trace`` records the graph, where the input's dtype,
device and shape are not concrete values.
"""
from __future__ import annotations

import fnmatch
import sys
import warnings
from typing import Dict, Iterable, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:  # true for fx.symbolic_trace only, not for torch.export / torch.compile
    from torch.fx._symbolic_trace import is_fx_symbolic_tracing as _fx_tracing
except ImportError:  # pragma: no cover - torch versions without it
    from torch.fx._symbolic_trace import is_fx_tracing as _fx_tracing

from .neurons import NeuronFamily, NeuronSpec, get_neuron

#: On CUDA, the terms that read ``x`` (fan's r and g) run as ONE convolution / matmul on their weights concatenated
#: along the output channels, whose output is then split (one launch reading ``x`` once, fuller tiles for narrow
#: layers); groups == 1, not transposed. Off until the GPU benchmark measures it faster (docs/speed.md). The CPU
#: always calls each term, so CPU results stay bit-identical to those of the published runs.
STACK_X_TERMS_ON_CUDA = False

__all__ = [
    'QuadraticLayer', 'QuadraticLinear', 'QuadraticConv1d', 'QuadraticConv2d',
    'QuadraticConvTranspose1d', 'QuadraticConvTranspose2d', 'quadratize', 'CONVENTIONAL_TO_QUADRATIC',
    'recording_graph', 'check_input_dtype',
]


def recording_graph() -> bool:
    """True while torch.fx symbolic tracing or torch.jit.trace records a forward: input checks that
    need concrete dtypes, devices or shapes skip themselves then (and run in eager mode and under
    torch.compile / torch.export, which trace with concrete or symbolic values)."""
    return _fx_tracing() or torch.jit.is_tracing()


def _check_fused_arg(owner: str, fused: Optional[bool]) -> None:
    """FutureWarning, pointing at the caller's line, for the deprecated ``fused=`` argument."""
    if fused is None:
        return
    level, frame = 2, sys._getframe(1)  # stacklevel 2 is our caller
    while frame is not None and frame.f_globals.get('__name__') == __name__:  # skip our own __init__s
        level, frame = level + 1, frame.f_back
    warnings.warn(f'{owner}(fused={fused!r}): the fused argument is deprecated and has no effect '
                  f'(quadratic layers have one forward path, one call per term); remove it',
                  FutureWarning, stacklevel=level)


def check_input_dtype(x: Tensor, want: torch.dtype, name: str, holder: str) -> None:
    """TypeError naming both dtypes and the fix unless ``x`` is floating point with the dtype ``want``
    of the weights of ``name`` (a ``holder``: 'layer' or 'model'). Under ``torch.autocast``,
    float32/float16/bfloat16 may differ (autocast casts them; it leaves float64 alone)."""
    if not x.is_floating_point():
        raise TypeError(f'{name} expects a floating-point input (its weights are {want}), got a {x.dtype} '
                        f'tensor; convert it with x.to({want})')
    if x.dtype == want:
        return
    castable = {x.dtype, want} <= {torch.float32, torch.float16, torch.bfloat16}
    if castable and torch.is_autocast_enabled(x.device.type):
        return
    fix = f'convert the input (x.to({want})) or the {holder} ({holder}.to({x.dtype}))'
    if castable:
        half = x.dtype if x.dtype != torch.float32 else want
        fix += f", or run it under torch.autocast('{x.device.type}', dtype={half})"
    raise TypeError(f'{name} has {want} weights but got a {x.dtype} input; {fix}')


class QuadraticLayer(nn.Module):
    """Common machinery; subclasses name the torch module class of one term."""

    prefix = 'conv'
    #: torch module class of one term
    term_cls: type = nn.Module
    #: number of spatial dims (0 for Linear)
    _nd = 0

    def __init__(self, neuron: NeuronSpec, make_term, out_channels: int, groups: int = 1,
                 bias: bool = True, init: str = 'relinear', fused: Optional[bool] = None):
        super().__init__()
        _check_fused_arg(type(self).__name__, fused)
        self.neuron: NeuronFamily = get_neuron(neuron)
        for name, v in (('out_channels', out_channels), ('groups', groups)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f'{type(self).__name__}: {name} must be a positive integer, got {v!r}')
        if out_channels % groups:
            raise ValueError(f'out_channels ({out_channels}) must be divisible by groups ({groups})')
        self.out_channels = out_channels
        self.groups = groups
        for t in self.neuron.terms:
            self.add_module(f'{self.prefix}_{t.name}', make_term(out_channels * t.mult, bias and t.bias))
        #: (term name, submodule name, whether the term reads x*x), in term order
        self._calls = tuple((t.name, f'{self.prefix}_{t.name}', t.input == 'sq') for t in self.neuron.terms)
        self._squares = any(sq for _, _, sq in self._calls)
        x_terms = tuple(attr for _, attr, sq in self._calls if not sq)
        #: the x terms that STACK_X_TERMS_ON_CUDA runs as one call (empty: never stacked)
        self._stack = x_terms if len(x_terms) > 1 and groups == 1 and not getattr(self, '_transposed', False) else ()
        self.reset_quadratic_(init)

    # ---- structure --------------------------------------------------------------
    @property
    def terms(self) -> Dict[str, nn.Module]:
        """Term name -> torch module holding that term's ``weight`` / ``bias``."""
        return {name: self._modules[attr] for name, attr, _ in self._calls}

    @property
    def linear(self) -> nn.Module:
        """The term that is the conventional layer in the linear special case."""
        if not self.neuron.has_linear_case:
            raise AttributeError(f"neuron '{self.neuron.name}' has no linear term")
        return self.terms[self.neuron.linear_term]

    @property
    def _ref(self) -> nn.Module:
        """The first term module (every term shares its kernel, stride, padding, ...)."""
        return self._modules[self._calls[0][1]]

    def reset_quadratic_(self, init: str = 'relinear') -> None:
        """Re-initialise the quadratic-only terms (linear terms are left alone):
        torch's default init, then ``'relinear'`` (start at, or for ``lowrank`` just
        off, the linear special case; ``power``, which has none, starts at small weights),
        ``'linear'`` (exactly the linear special case) or ``'default'`` (nothing more)."""
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
        return f'neuron={self.neuron.spec}'

    # ---- checks -----------------------------------------------------------------
    def _check_input(self, x: Tensor) -> None:
        raise NotImplementedError

    def _check_dtype(self, x: Tensor) -> None:
        """TypeError naming both dtypes and the fix when ``x`` cannot meet the weights."""
        name = type(self).__name__
        if not isinstance(x, Tensor):
            raise TypeError(f'{name} expects a tensor, got {type(x).__name__}')
        check_input_dtype(x, self._ref.weight.dtype, name, 'layer')

    # ---- forward ----------------------------------------------------------------
    def _bias_of(self, name: str) -> Optional[Tensor]:
        """Term ``name``'s bias shaped to broadcast over an output (channels at ``-nd - 1``)."""
        b = self._modules[f'{self.prefix}_{name}'].bias
        return None if b is None else b.view(-1, *([1] * self._nd))

    def _call_term(self, m: nn.Module, x: Tensor, output_size: Optional[List[int]]) -> Tensor:
        return m(x)

    def _forward(self, x: Tensor, output_size: Optional[List[int]] = None) -> Tensor:
        """Each term module on ``x`` or ``x*x`` (squared once), then the family's combine."""
        if not recording_graph():
            self._check_dtype(x)
            self._check_input(x)
        sq = x * x if self._squares else None
        stacked = self._stack and STACK_X_TERMS_ON_CUDA and x.is_cuda and not recording_graph()
        out = self._stacked(x) if stacked else {}
        out.update({name: self._call_term(self._modules[attr], sq if on_sq else x, output_size)
                    for name, attr, on_sq in self._calls if name not in out})
        return self.neuron.combine(out, -self._nd - 1, self._bias_of)

    def _stacked(self, x: Tensor) -> Dict[str, Tensor]:
        """The outputs of the terms in ``_stack`` from one call on their stacked weights (see STACK_X_TERMS_ON_CUDA);
        a term without a bias contributes zeros to the stacked bias."""
        mods = [self._modules[attr] for attr in self._stack]
        w = torch.cat([m.weight for m in mods])
        b = None
        if any(m.bias is not None for m in mods):
            b = torch.cat([m.bias if m.bias is not None else m.weight.new_zeros(m.weight.shape[0]) for m in mods])
        y = F.linear(x, w, b) if isinstance(self._ref, nn.Linear) else self._ref._conv_forward(x, w, b)
        parts = y.split([m.weight.shape[0] for m in mods], dim=-self._nd - 1)
        return dict(zip((name for name, attr, _ in self._calls if attr in self._stack), parts))

    def forward(self, x: Tensor) -> Tensor:
        return self._forward(x)


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
        if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
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
        if self._transposed or m.padding == 'same':
            return  # any spatial size >= 1 gives an output
        pad = (0,) * self._nd if m.padding == 'valid' else m.padding
        for i, size in enumerate(x.shape[-self._nd:]):
            if size + 2 * pad[i] < m.dilation[i] * (m.kernel_size[i] - 1) + 1:
                raise ValueError(f'{type(self).__name__}: spatial size {tuple(x.shape[-self._nd:])} is too small '
                                 f'for kernel {m.kernel_size} (padding {m.padding}, dilation {m.dilation}); '
                                 f'use a larger input or more padding')


class QuadraticConv1d(_QuadraticConvNd):
    """``nn.Conv1d`` with a quadratic neuron."""
    _nd = 1
    term_cls = nn.Conv1d


class QuadraticConv2d(_QuadraticConvNd):
    """``nn.Conv2d`` with a quadratic neuron."""
    _nd = 2
    term_cls = nn.Conv2d


class QuadraticConvTranspose1d(_QuadraticConvNd):
    """``nn.ConvTranspose1d`` with a quadratic neuron (``forward(x, output_size=None)`` as torch's)."""
    _nd = 1
    _transposed = True
    term_cls = nn.ConvTranspose1d

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, padding_mode='zeros', neuron: NeuronSpec = 'fan', device=None, dtype=None,
                 init: str = 'relinear', fused: Optional[bool] = None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, neuron, device, dtype, init, fused, output_padding)

    def _call_term(self, m, x, output_size):
        return m(x, output_size)

    def forward(self, x: Tensor, output_size: Optional[List[int]] = None) -> Tensor:
        return self._forward(x, output_size)


class QuadraticConvTranspose2d(QuadraticConvTranspose1d):
    """``nn.ConvTranspose2d`` with a quadratic neuron (``forward(x, output_size=None)`` as torch's)."""
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
