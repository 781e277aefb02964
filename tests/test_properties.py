"""Property-based tests (hypothesis) over the public entry points: whatever the input, they
either work or raise one of the documented exceptions with a message that says what to do.

Documented exceptions: ValueError (bad name, size, shape, option; RecipeError is one),
TypeError (wrong type or dtype), FileNotFoundError (missing file), qzoo.hub.CheckpointError and
qzoo.external.ExternalCheckpointError (bad weights; RuntimeError subclasses).
"""
import io
import zipfile

import numpy as np
import pytest
import scipy.io
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qzoo
from qzoo import data as qdata
from qzoo.hub import CheckpointError

DOCUMENTED = (ValueError, TypeError, FileNotFoundError, CheckpointError)
N = 60  # examples per property (README "Guarantees" quotes these counts)
SETTINGS = dict(max_examples=N, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def _actionable(e: Exception) -> None:
    assert type(e) in DOCUMENTED or isinstance(e, DOCUMENTED), f'undocumented {type(e).__name__}: {e}'
    assert len(str(e)) > 15, f'message too short to act on: {e!r}'


@settings(**SETTINGS)
@given(name=st.one_of(st.sampled_from(qzoo.list_models()), st.text(max_size=12)),
       kw=st.fixed_dictionaries({}, optional={
           'width': st.integers(-2, 5), 'num_classes': st.integers(-2, 4), 'in_chans': st.integers(-1, 3),
           'neuron': st.one_of(st.sampled_from(qzoo.list_neurons() + ['lowrank(rank=2)']), st.text(max_size=8)),
           'depth': st.integers(-1, 3), 'base_width': st.integers(-1, 3), 'shortcut': st.sampled_from(['A', 'B', 'C']),
           'hidden': st.lists(st.integers(-1, 4), max_size=3), 'layers': st.lists(st.integers(0, 1), max_size=4)}))
def test_create_model_names_and_kwargs(name, kw):
    if name in ('qresnet18', 'qresnet50', 'unet') and 'layers' not in kw and 'base_width' not in kw:
        kw['base_width' if name == 'unet' else 'layers'] = 2 if name == 'unet' else [1, 1, 1, 1]
    try:
        model = qzoo.create_model(name, **kw)
    except Exception as e:  # noqa: BLE001 - the property is about which exceptions escape
        _actionable(e)
        return
    assert qzoo.count_params(model) > 0


@settings(**SETTINGS)
@given(spec=st.one_of(st.sampled_from(qzoo.list_neurons()), st.text(max_size=16),
                      st.builds(lambda r: f'lowrank(rank={r})', st.integers(-2, 3))))
def test_neuron_names(spec):
    try:
        fam = qzoo.get_neuron(spec)
    except Exception as e:  # noqa: BLE001
        _actionable(e)
        return
    assert qzoo.get_neuron(fam.spec) == fam


LAYERS = [qzoo.QuadraticLinear, qzoo.QuadraticConv1d, qzoo.QuadraticConv2d, qzoo.QuadraticConvTranspose1d,
          qzoo.QuadraticConvTranspose2d]


@settings(**SETTINGS)
@given(cls=st.sampled_from(LAYERS), cin=st.integers(0, 5), cout=st.integers(0, 5), k=st.integers(0, 3),
       groups=st.integers(1, 3), neuron=st.sampled_from(qzoo.list_neurons() + ['lowrank(rank=2)']),
       shape=st.lists(st.integers(0, 6), min_size=1, max_size=5),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64,
                              torch.bool]))
def test_layer_shapes_and_dtypes(cls, cin, cout, k, groups, neuron, shape, dtype):
    """A quadratic layer either gives the output shape of its torch counterpart or raises a documented
    error; a dtype error names the input's dtype and suggests only floating dtypes."""
    try:
        if cls is qzoo.QuadraticLinear:
            layer = cls(cin, cout, neuron=neuron)
        else:
            layer = cls(cin, cout, k, groups=groups, neuron=neuron)
        x = (torch.randn(shape) * 3).to(dtype)
        y = layer(x)
    except Exception as e:  # noqa: BLE001
        _actionable(e)
        if isinstance(e, TypeError) and 'x' in locals():
            assert str(dtype) in str(e), e
            for bad in (torch.int64, torch.bool):
                assert f'.to({bad})' not in str(e), e
        return
    assert dtype == torch.float32
    # the term with the layer's channel count (the linear term; power's only term) is a plain torch layer
    conventional = layer.terms[layer.neuron.linear_term or layer.neuron.terms[0].name]
    assert y.shape == conventional(x).shape and y.dtype == dtype


# ---- data loaders on malformed files ----------------------------------------------------
def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@settings(**SETTINGS)
@given(cut=st.floats(0.0, 0.99), junk=st.binary(max_size=64))
def test_truncated_or_garbage_cifar_npz(tmp_path_factory, cut, junk):
    root = tmp_path_factory.mktemp('cifar')
    good = _npz_bytes(header=np.zeros(4, np.uint8), train_scans=np.zeros(8, np.uint8),
                      train_offsets=np.array([0, 8]), train_labels=np.zeros(1, np.uint8),
                      test_scans=np.zeros(8, np.uint8), test_offsets=np.array([0, 8]),
                      test_labels=np.zeros(1, np.uint8), classes=np.array(['a'] * 10))
    (root / 'cifar10-jpeg75.npz').write_bytes(good[:int(len(good) * cut)] + junk)
    with pytest.raises(DOCUMENTED) as e:
        qdata.load_dataset('cifar10-jpeg75', root=root)
    _actionable(e.value)
    assert 'cifar10-jpeg75' in str(e.value)


@settings(**SETTINGS)
@given(keys=st.lists(st.sampled_from(['X097_DE_time', 'X097_FE_time', 'DE', 'X097RPM', 'data']), max_size=3,
                     unique=True), length=st.integers(0, 3000))
def test_cwru_mat_with_wrong_keys_or_too_short(tmp_path_factory, keys, length):
    root = tmp_path_factory.mktemp('cwru')
    folder = root / 'cwru-12k-drive-end-0hp'
    folder.mkdir()
    scipy.io.savemat(folder / 'normal_0_97.mat', {k: np.zeros((length, 1)) for k in keys})
    with pytest.raises(DOCUMENTED) as e:
        qdata.load_dataset('cwru', root=root)
    _actionable(e.value)


@settings(**SETTINGS)
@given(n_missing=st.integers(1, 5), corrupt=st.booleans())
def test_dsb2018_missing_or_corrupt_images(tmp_path_factory, n_missing, corrupt):
    root = tmp_path_factory.mktemp('dsb')
    (root / 'dsb2018_96' / 'images').mkdir(parents=True)
    (root / 'dsb2018_96' / 'masks' / '0').mkdir(parents=True)
    if corrupt:
        (root / 'dsb2018_96' / 'images' / 'x.png').write_bytes(b'not a png')
    with pytest.raises(DOCUMENTED) as e:
        qdata.load_dataset('dsb2018-96', root=root)
    _actionable(e.value)


@settings(**SETTINGS)
@given(name=st.text(max_size=12), opt=st.text(min_size=1, max_size=8))
def test_dataset_names_and_options(name, opt):
    try:
        qdata.load_dataset(name, **{opt: 1})
    except Exception as e:  # noqa: BLE001
        _actionable(e)
