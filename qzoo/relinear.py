"""ReLinear training support (Fan et al., "Expressivity and trainability of
quadratic networks", arXiv 2110.06081): quadratic-only terms start at the
linear special case and train with a scaled learning rate and their own
weight decay.

Parameters are grouped by *module and role*: each :class:`QuadraticLayer`
knows which of its terms are quadratic-only (``Term.quadratic``); norm layers
and every bias are exempt from decay. Nothing here looks at parameter names.
"""
from __future__ import annotations

from typing import Dict, List, Optional

from torch import nn

from .layers import QuadraticLayer

__all__ = ['param_groups', 'NORM_TYPES']

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
try:  # torch >= 2.4
    NORM_TYPES = NORM_TYPES + (nn.RMSNorm,)
except AttributeError:  # pragma: no cover
    pass


def param_groups(model: nn.Module, lr: float, weight_decay: float = 0.0, quad_lr_scale: float = 1.0,
                 quad_weight_decay: Optional[float] = None) -> List[Dict]:
    """Optimizer parameter groups for ``model``.

    * ``decay``: weights of conventional layers and of linear terms: ``lr``, ``weight_decay``;
    * ``no_decay``: norm parameters and biases of conventional/linear terms: ``lr``, no decay;
    * ``quadratic``: weights of quadratic-only terms (for ``fan``: W_g, W_b):
      ``lr * quad_lr_scale``, ``quad_weight_decay`` (default ``weight_decay``);
    * ``quadratic_no_decay``: their biases (for ``fan``: b_g, c): ``lr * quad_lr_scale``, no decay.

    Empty groups are dropped. Each group carries a ``name`` (one of the four above) next to
    torch's ``params``, ``lr`` and ``weight_decay``; every trainable parameter appears once.
    """
    if quad_weight_decay is None:
        quad_weight_decay = weight_decay
    roles: Dict[int, str] = {}
    for module in model.modules():
        if isinstance(module, QuadraticLayer):
            for name, term_module in module.terms.items():
                quad = module.neuron.term(name).quadratic
                for pname, p in term_module.named_parameters(recurse=False):
                    is_bias = pname == 'bias'
                    roles[id(p)] = ('quadratic_no_decay' if is_bias else 'quadratic') if quad else \
                        ('no_decay' if is_bias else 'decay')
        elif isinstance(module, NORM_TYPES):
            for p in module.parameters(recurse=False):
                roles.setdefault(id(p), 'no_decay')
    settings = {
        'decay': (1.0, weight_decay),
        'no_decay': (1.0, 0.0),
        'quadratic': (quad_lr_scale, quad_weight_decay),
        'quadratic_no_decay': (quad_lr_scale, 0.0),
    }
    grouped: Dict[str, list] = {k: [] for k in settings}
    seen = set()
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            role = roles.get(id(p))
            if role is None:
                # conventional layer: biases and 1-D params (e.g. learned scales) do not decay
                role = 'no_decay' if (pname == 'bias' or p.ndim <= 1) else 'decay'
            grouped[role].append(p)
    return [dict(name=k, params=v, lr=lr * settings[k][0], weight_decay=settings[k][1])
            for k, v in grouped.items() if v]
