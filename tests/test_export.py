"""qzoo.export: torch.export of every architecture, ONNX files that onnx.checker accepts and
that onnxruntime runs at other batch sizes with PyTorch's outputs, and the README snippet.

ONNX parity tolerance: ``max |onnxruntime - PyTorch| <= ORT_RTOL * max(1, max |PyTorch|)``.
Both run float32, but onnxruntime's CPU kernels (MLAS) sum in another order than PyTorch's
(oneDNN), so outputs differ by rounding: measured at most 2e-7 of the output scale on these
models (e.g. 1.1e-5 on qresnet20 logits of magnitude ~58). ``ORT_RTOL = 2e-5`` (about 170
float32 ulps of the largest output) leaves a 100x margin for other CPUs and library versions,
while a wrong graph (a dropped quadratic term, a wrong product or bias) changes outputs by the
order of the output scale itself.
"""
import re
import sys
from pathlib import Path

import pytest
import torch

import procs
import qzoo
from qzoo.errors import NotARegularFileError
from qzoo.export import (example_input_shape, export_onnx, export_program, onnxruntime_max_abs_diff,
                         onnxruntime_session)

ROOT = Path(__file__).resolve().parents[1]
ORT_RTOL = 2e-5
#: exported at the default example batch (2); checked at other batch sizes
CHECK_BATCHES = (1, 5)
#: torch.export of these takes over ~5 s on one CPU thread
SLOW_ARCHS = {'qresnet18', 'qresnet50', 'qresnet56', 'qresnet110', 'resnet56', 'resnet110', 'unet', 'qunet'}


def _need_onnx():
    for mod in ('onnx', 'onnxscript', 'onnxruntime'):
        pytest.importorskip(mod, reason=f"{mod} is not installed (pip install 'qzoo[export]'; CI installs .[dev])")


# ---- torch.export ---------------------------------------------------------------------------
@pytest.mark.parametrize('arch', [pytest.param(a, marks=pytest.mark.slow) if a in SLOW_ARCHS else a
                                  for a in qzoo.list_models()])
def test_torch_export_every_architecture(arch):
    """torch.export.export at the default input size, dynamic batch: the exported program
    computes the eager model's outputs at batch sizes other than the traced one."""
    model = qzoo.create_model(arch).eval()
    program = export_program(model)
    exported = program.module()
    for n in CHECK_BATCHES:
        x = torch.randn(example_input_shape(model, n))
        with torch.no_grad():
            want = model(x)
            if not want.isfinite().all():
                # randomly initialised power neurons (W (x*x) + b) square the activations layer after
                # layer and overflow float32 on unit-variance inputs, in eager mode too
                x = 0.1 * x
                want = model(x)
            assert want.isfinite().all()
            torch.testing.assert_close(exported(x), want)


def test_export_program_fixed_batch_rejects_other_batches():
    model = qzoo.create_model('qmlp')
    program = export_program(model, input_shape=(4, 2), dynamic_batch=False)
    program.module()(torch.randn(4, 2))
    with pytest.raises(Exception, match=r'(?i)shape|size|expected'):
        program.module()(torch.randn(3, 2))


def test_example_input_shape_follows_the_cfg_convention():
    assert example_input_shape(qzoo.create_model('qmlp')) == (1, 2)
    assert example_input_shape(qzoo.create_model('qcnn'), 4) == (4, 1, 2048)
    assert example_input_shape(qzoo.create_model('resnet20'), 2) == (2, 3, 32, 32)
    assert example_input_shape(qzoo.create_model('qunet', base_width=4)) == (1, 3, 96, 96)
    with pytest.raises(ValueError, match='input_shape='):
        example_input_shape(torch.nn.Linear(2, 2))


def test_export_program_restores_train_mode():
    model = qzoo.create_model('qmlp').train()
    export_program(model)
    assert model.training


# ---- ONNX -----------------------------------------------------------------------------------
ONNX_MODELS = {'qresnet20': {}, 'qcnn': {}, 'qunet': dict(base_width=4), 'qmlp': {}}


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """Each model of ONNX_MODELS exported once (dynamic batch, default names)."""
    _need_onnx()
    out = tmp_path_factory.mktemp('onnx')
    torch.manual_seed(0)
    models = {name: qzoo.create_model(name, **kw).eval() for name, kw in ONNX_MODELS.items()}
    return {name: (m, export_onnx(m, out / f'{name}.onnx')) for name, m in models.items()}


def _dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize('name', list(ONNX_MODELS))
def test_onnx_file_is_valid_with_named_dynamic_batch(exported, name):
    import onnx
    model, path = exported[name]
    assert path.is_file() and path.suffix == '.onnx'
    onnx.checker.check_model(str(path), full_check=True)
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ['input'] and [o.name for o in graph.output] == ['output']
    sample = example_input_shape(model, 1)[1:]
    assert _dims(graph.input[0]) == ['batch', *sample]
    with torch.no_grad():
        out_sample = list(model(torch.randn(example_input_shape(model, 2))).shape[1:])
    assert _dims(graph.output[0]) == ['batch', *out_sample]


@pytest.mark.parametrize('name', list(ONNX_MODELS))
def test_onnxruntime_matches_pytorch_at_other_batch_sizes(exported, name):
    model, path = exported[name]
    g = torch.Generator().manual_seed(1)
    inputs = [torch.randn(example_input_shape(model, n), generator=g) for n in CHECK_BATCHES]
    with torch.no_grad():
        scale = max(float(model(x).abs().max()) for x in inputs)
    diff = onnxruntime_max_abs_diff(model, path, inputs)
    print(f'{name}: max |onnxruntime - torch| = {diff:.3g} (output scale {scale:.3g})')
    assert diff <= ORT_RTOL * max(1.0, scale)
    session = onnxruntime_session(path, threads=1)
    for x in inputs:
        (y,) = session.run(None, {'input': x.numpy()})
        assert y.shape[0] == x.shape[0]


def test_onnx_parity_helper_detects_a_different_model(exported):
    """The parity helper measures real differences: another model's weights are far off."""
    model, path = exported['qmlp']
    other = qzoo.create_model('qmlp').eval()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.5)
    assert onnxruntime_max_abs_diff(other, path) > 1e-2


def test_onnx_fixed_batch_custom_names_and_mode_restored(tmp_path):
    _need_onnx()
    import onnx
    import onnxruntime as ort
    model = qzoo.create_model('qmlp').train()
    path = export_onnx(model, tmp_path / 'sub' / 'm.onnx', input_shape=(4, 2), dynamic_batch=False,
                       input_name='features', output_name='logits')
    assert model.training
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ['features'] and [o.name for o in graph.output] == ['logits']
    assert _dims(graph.input[0]) == [4, 2] and _dims(graph.output[0]) == [4, 2]
    session = onnxruntime_session(path)
    session.run(None, {'features': torch.randn(4, 2).numpy()})
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument):
        session.run(None, {'features': torch.randn(3, 2).numpy()})


def test_export_onnx_errors(tmp_path, monkeypatch):
    model = qzoo.create_model('qmlp')
    with pytest.raises(NotARegularFileError, match='is a folder.*pass a file path'):
        export_onnx(model, tmp_path)
    with pytest.raises(FileNotFoundError, match='export_onnx'):
        onnxruntime_session(tmp_path / 'missing.onnx')
    monkeypatch.setitem(sys.modules, 'onnx', None)  # as if onnx were not installed
    with pytest.raises(ImportError, match=re.escape("pip install 'qzoo[export]'")):
        export_onnx(model, tmp_path / 'm.onnx')
    assert not (tmp_path / 'm.onnx').exists()


def test_export_below_a_file_is_an_error_line(tmp_path, capsys):
    """Exporting to a path below a file ended in a NotADirectoryError traceback from mkdir."""
    from qzoo.export import main
    (tmp_path / 'file').write_text('mine')
    assert main(['qmlp', str(tmp_path / 'file' / 'sub' / 'm.onnx')]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'error: cannot write {tmp_path / "file" / "sub" / "m.onnx"}: '
                          f'{tmp_path / "file"} is a file, not a folder. Fix: ') and 'Traceback' not in err
    assert (tmp_path / 'file').read_text() == 'mine'


def test_qzoo_imports_without_the_optional_packages():
    code = ("import sys\nfor m in ('onnx', 'onnxruntime', 'onnxscript'): sys.modules[m] = None\n"
            "import qzoo, qzoo.export\nm = qzoo.create_model('qmlp')\n"
            "print(qzoo.export.example_input_shape(m), qzoo.export.export_program(m).module()(__import__('torch')"
            ".randn(3, 2)).shape)")
    proc = procs.run([sys.executable, '-c', code], cwd=ROOT)
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, err
    assert '(1, 2) torch.Size([3, 2])' in out


# ---- the README / docs/speed.md snippet -----------------------------------------------------
SNIPPET = """\
import numpy as np, onnxruntime as ort, qzoo
from qzoo.export import export_onnx
path = export_onnx(qzoo.create_model('qcnn', pretrained=True), 'qcnn.onnx')   # checked by onnx.checker
window = np.random.default_rng(0).standard_normal((1, 1, 2048), dtype=np.float32)  # one (1, 1, 2048) window
print(ort.InferenceSession(path).run(None, {'input': window})[0].argmax(1))      # predicted class index
"""


def test_docs_snippet_runs_and_predicts_like_pytorch(tmp_path, monkeypatch, capsys):
    """The ONNX example of docs/speed.md, executed as written, prints torch's prediction."""
    _need_onnx()
    assert SNIPPET in (ROOT / 'docs' / 'speed.md').read_text(), 'docs/speed.md must show SNIPPET verbatim'
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(SNIPPET, 'speed.md snippet', 'exec'), scope)
    printed = capsys.readouterr().out.strip()
    assert (tmp_path / 'qcnn.onnx').is_file()
    model = qzoo.create_model('qcnn', pretrained=True).eval()
    with torch.no_grad():
        want = int(model(torch.from_numpy(scope['window'])).argmax(1))
    assert printed == f'[{want}]'
