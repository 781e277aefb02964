"""Pieces shared by the model families: layer choice by neuron, input checks (dtype, shape, size),
timm-style cfgs, helpers for timm's interface (global pools, feature-level indices, the 1-D nets' and
MLPs' input layouts), and the builder every registered factory goes through."""
from __future__ import annotations

from typing import Any, Callable, Dict, Sequence, Tuple, Union

from torch import Tensor, nn

from ..layers import (QuadraticConv1d, QuadraticConv2d, QuadraticConvTranspose1d, QuadraticConvTranspose2d,
                      QuadraticLayer, QuadraticLinear, check_input_dtype, recording_graph)
from ..neurons import NeuronSpec, get_neuron

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
LICENSE = 'apache-2.0'

_KINDS = {
    'linear': (nn.Linear, QuadraticLinear),
    'conv1d': (nn.Conv1d, QuadraticConv1d),
    'conv2d': (nn.Conv2d, QuadraticConv2d),
    'convt1d': (nn.ConvTranspose1d, QuadraticConvTranspose1d),
    'convt2d': (nn.ConvTranspose2d, QuadraticConvTranspose2d),
}


def make_layer(kind: str, *args, neuron: NeuronSpec = 'linear', **kwargs) -> nn.Module:
    """The torch layer when ``neuron`` is ``'linear'``, else its quadratic counterpart."""
    fam = get_neuron(neuron)
    conventional, quadratic = _KINDS[kind]
    if fam.name == 'linear':
        return conventional(*args, **kwargs)
    return quadratic(*args, neuron=fam, **kwargs)


def tensor_owners(name: str, module: nn.Module) -> Union[str, Tuple[str, ...]]:
    """Names of the submodules holding ``module``'s ``.weight``/``.bias`` (for timm's
    ``first_conv`` / ``classifier`` adaptation)."""
    if isinstance(module, QuadraticLayer):
        return tuple(f'{name}.{module.prefix}_{t}' for t in module.terms)
    return name


def layer_owners(name: str, kind: str, neuron: NeuronSpec) -> Union[str, Tuple[str, ...]]:
    """What :func:`tensor_owners` says of the layer ``make_layer(kind, ..., neuron=neuron)`` at ``name``,
    without building it (for the cfgs' ``first_conv`` / ``classifier``)."""
    fam = get_neuron(neuron)
    if fam.name == 'linear':
        return name
    return tuple(f'{name}.{_KINDS[kind][1].prefix}_{t.name}' for t in fam.terms)


def _model_name(model: nn.Module) -> str:
    return (getattr(model, 'pretrained_cfg', None) or {}).get('architecture') or type(model).__name__


def check_dtype(x: Tensor, model: nn.Module) -> None:
    """TypeError naming the expected and found dtype and the fix unless ``x`` is floating point with the
    dtype of the model's weights (see :func:`qzoo.layers.check_input_dtype`)."""
    w = next(iter(model.parameters()), None)
    if w is not None:
        check_input_dtype(x, w.dtype, _model_name(model), 'model')


def check_input(x: Tensor, model: nn.Module, *shapes: Sequence[Union[int, str]], min_size: int = 1) -> None:
    """Raise a TypeError (not a tensor, wrong dtype: see :func:`check_dtype`) or a ValueError naming the
    expected shape(s) when ``x`` does not fit.

    Each of ``shapes`` is one accepted layout of the dims after the batch: ints must match exactly,
    strings (e.g. ``'H'``) are free sizes >= ``min_size``. Skipped while torch.fx or torch.jit.trace
    records a graph (:func:`qzoo.layers.recording_graph`), where sizes and dtypes are not concrete."""
    if recording_graph():
        return
    name = _model_name(model)
    want = ' or '.join('(N, ' + ', '.join(str(s) for s in shape) + ')' for shape in shapes)
    if not isinstance(x, Tensor):
        raise TypeError(f'{name} expects a tensor {want}, got {type(x).__name__}')
    check_dtype(x, model)
    shape = next((s for s in shapes if len(s) + 1 == x.dim()), None)
    if shape is None:
        ranks = ' or '.join(sorted({f'{len(s) + 1}-D' for s in shapes}))
        raise ValueError(f'{name} expects input of shape {want} ({ranks}), got {tuple(x.shape)}')
    for i, s in enumerate(shape):
        n = x.shape[i + 1]
        if isinstance(s, int) and n != s:
            raise ValueError(f'{name} expects input of shape {want}, got {tuple(x.shape)} '
                             f'(dim {i + 1} is {n}, expected {s})')
        if not isinstance(s, int) and n < min_size:
            raise ValueError(f'{name} expects input of shape {want} with {s} >= {min_size}, got {tuple(x.shape)} '
                             f'({s} = {n}); give it a larger input')


def check_args(model: str, in_chans: int, num_classes: int, **sizes: int) -> None:
    """ValueError for impossible sizes: ``in_chans`` >= 1, ``num_classes`` >= 0 (0 = no classifier,
    as in timm), every other size >= 1."""
    for k, v in dict(in_chans=in_chans, **sizes).items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f'{model}: {k} must be a positive integer, got {v!r}')
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
        raise ValueError(f'{model}: num_classes must be an integer >= 0 (0 removes the classifier), '
                         f'got {num_classes!r}')


def cfg(**kwargs) -> Dict[str, Any]:
    """A pretrained cfg with qzoo's defaults (CIFAR-sized classification: a CIFAR ResNet's 8x8 final map)."""
    base = dict(num_classes=10, input_size=(3, 32, 32), pool_size=(8, 8), fixed_input_size=False, crop_pct=1.0,
                interpolation='bilinear', mean=CIFAR_MEAN, std=CIFAR_STD, first_conv='conv1', classifier='fc',
                license=LICENSE)
    base.update(kwargs)
    return base


def kaiming_init_(model: nn.Module) -> None:
    """Kaiming-normal init for every conv/linear weight (conventional layers and the terms of
    quadratic ones), then each quadratic layer's ReLinear init of its quadratic-only terms."""
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear, nn.ConvTranspose1d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight)
    for m in model.modules():
        if isinstance(m, QuadraticLayer):
            m.reset_quadratic_('relinear')


# ---- timm interface helpers ------------------------------------------------------------
#: the global pools of the CIFAR ResNets (timm's names): '' keeps the (N, C, H, W) map
POOL_TYPES = ('avg', 'max', 'avgmax', '')


def global_pool_2d(x: Tensor, pool_type: str) -> Tensor:
    """timm's global pools over the last two dims: 'avg', 'max', 'avgmax' (their mean) give (N, C);
    '' returns ``x`` unchanged."""
    if pool_type == 'avg':
        return x.mean((2, 3))
    if pool_type == 'max':
        return x.amax((2, 3))
    if pool_type == 'avgmax':
        return 0.5 * (x.mean((2, 3)) + x.amax((2, 3)))
    return x


def check_global_pool(owner: str, global_pool: str, valid: Sequence[str], num_classes: int, why: str = '',
                      head_reads_maps: bool = False) -> str:
    """``global_pool`` if it is one of ``valid`` (else a ValueError listing them, and ``why``). ``''`` keeps
    the unpooled maps, so it needs ``num_classes=0`` unless the classifier reads maps (``head_reads_maps``)."""
    if global_pool not in valid:
        raise ValueError(f"{owner}: global_pool must be {' or '.join(repr(v) for v in valid)}{why}, "
                         f'got {global_pool!r}')
    if global_pool == '' and num_classes > 0 and not head_reads_maps:
        pools = ' or '.join(repr(v) for v in valid if v)
        raise ValueError(f"{owner}: global_pool='' keeps the unpooled feature maps, which its Linear classifier "
                         f"cannot read: use global_pool='' with num_classes=0, or global_pool={pools} with "
                         f"num_classes={num_classes}")
    return global_pool


def take_indices(model: nn.Module, n: int, indices, output_fmt, formats: Sequence[str] = ('NCHW',)):
    """timm's ``feature_take_indices`` over ``n`` feature levels (None: all; an int k: the last k; a list:
    those, negative from the end), with ValueErrors naming the valid choices; also checks ``output_fmt``."""
    from timm.models._features import feature_take_indices
    name = _model_name(model)
    if output_fmt not in formats:
        raise ValueError(f"{name}: output_fmt must be {' or '.join(repr(f) for f in formats)} (channels first), "
                         f'got {output_fmt!r}')
    try:
        return feature_take_indices(n, indices)
    except (AssertionError, RuntimeError, TypeError) as e:
        raise ValueError(f'{name}: indices={indices!r} do not select among its {n} feature levels (None = all, '
                         f'an int k = the last k, or a list of levels 0..{n - 1}, negative from the end): '
                         f'{e}') from None


def drop_height(x: Tensor) -> Tensor:
    """``(N, C, 1, L)`` -> ``(N, C, L)``; other ranks unchanged. The modules that call it mark it as a
    torch.fx leaf (``torch.fx.wrap``), so a traced graph keeps the rank test for run time."""
    return x.squeeze(2) if x.dim() == 4 else x


def like_input(y: Tensor, x: Tensor) -> Tensor:
    """``y`` (N, C, L) back in the layout of the input ``x``: ``(N, C, 1, L)`` when ``x`` is 4-D."""
    return y.unsqueeze(2) if x.dim() == 4 else y


def flatten_vector(x: Tensor) -> Tensor:
    """``(N, F, 1, 1)`` -> ``(N, F)``; other ranks unchanged (a torch.fx leaf where it is called)."""
    return x.flatten(1) if x.dim() == 4 else x


class HeadMixin:
    """timm's classifier interface over ``self.head``, built by ``self._make_head(num_classes)``;
    ``global_pool`` values are checked by ``self._check_pool``."""

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str = None) -> None:
        check_args(type(self).__name__, 1, num_classes)
        if global_pool is not None:
            self.global_pool = self._check_pool(global_pool, num_classes)
        self.num_classes = num_classes
        self.head = self._make_head(num_classes)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def set_traits(model: nn.Module, first_conv) -> None:
    """Declare the model's current first conv (depends on its neuron) for timm's input adaptation."""
    model._traits = dict(getattr(model, '_traits', {}), first_conv=first_conv)


# ---- factories ------------------------------------------------------------------------
#: every qzoo model factory by name, in definition order (filled by :func:`register_factory`;
#: :mod:`qzoo.registry` registers them with timm, with their published weights)
MODEL_FACTORIES: Dict[str, Callable[..., nn.Module]] = {}
#: each factory's timm pretrained cfg: the architecture's input size, normalisation, first conv, classifier
BASE_CFGS: Dict[str, Dict[str, Any]] = {}

#: factory kwargs that do not describe the architecture (timm's loading options)
RUNTIME_KWARGS = ('pretrained_cfg', 'pretrained_cfg_overlay', 'cache_dir', 'pretrained_model_args', 'device', 'dtype',
                  'checkpoint_path', 'pretrained', 'pretrained_strict')


def register_factory(base_cfg: Dict[str, Any]):
    """Decorator: record a model factory (named as the model) and its architecture cfg."""
    def deco(fn):
        if fn.__name__ in MODEL_FACTORIES:
            raise ValueError(f'two qzoo factories are named {fn.__name__!r}')
        MODEL_FACTORIES[fn.__name__] = fn
        BASE_CFGS[fn.__name__] = dict(base_cfg)
        return fn
    return deco


def build(model_cls, variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """Build ``variant`` through timm's ``build_model_with_cfg``. Pretrained weights come in as
    ``pretrained_cfg_overlay['state_dict']``, resolved and SHA-256 checked by :mod:`qzoo.registry`
    (timm then adapts them to a changed ``num_classes`` / ``in_chans`` and loads them strictly)."""
    from timm.models import build_model_with_cfg
    if pretrained and not (kwargs.get('pretrained_cfg_overlay') or {}).get('state_dict'):
        raise ValueError(f'{variant}: load pretrained weights through qzoo.create_model or timm.create_model '
                         f'(after import qzoo), which resolve and verify them')
    img_size = getattr(model_cls, 'img_size_of', lambda kw: None)(kwargs)
    if img_size is not None:  # else timm passes the cfg's input_size[1:] as img_size to fixed-size models
        kwargs.setdefault('img_size', img_size)
    overlay = getattr(model_cls, 'cfg_overlay', lambda kw: {})(kwargs)
    if overlay:  # the cfg states the sizes of this instance (a 1-D net built for another window length)
        kwargs['pretrained_cfg_overlay'] = dict(kwargs.get('pretrained_cfg_overlay') or {}, **overlay)
    if kwargs.get('features_only') and hasattr(model_cls, 'feature_levels'):
        kwargs['feature_cfg'] = _feature_cfg(model_cls, variant, kwargs)
    return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)


#: timm feature extractors that fit qzoo's families: 'getter' (the default) wraps ``forward_intermediates``,
#: 'fx' extracts the ``feature_info`` modules' outputs from a torch.fx graph of ``forward``
FEATURE_CLS = ('getter', 'fx')


def _feature_cfg(model_cls, variant: str, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """timm's ``feature_cfg`` for ``features_only=True``: every feature level of the model, through
    ``forward_intermediates`` unless ``feature_cls`` says otherwise."""
    feature_cls = kwargs.get('feature_cls', 'getter')
    if isinstance(feature_cls, str) and feature_cls.lower() not in FEATURE_CLS:
        raise ValueError(f"{variant}: features_only=True supports feature_cls='getter' (the default; "
                         f"forward_intermediates) or 'fx' (a torch.fx graph of forward), got {feature_cls!r}: "
                         f"timm's 'list', 'dict' and 'hook' extractors re-run the model's child modules in order, "
                         f"which skips its functional steps (input layout, activations, skip connections)")
    feature_cfg = dict(feature_cls='getter', out_indices=tuple(range(model_cls.feature_levels(kwargs))))
    feature_cfg.update(kwargs.pop('feature_cfg', None) or {})
    return feature_cfg
