"""The ``qzoo`` command (qzoo_cli + qzoo.cli): ``qzoo --help`` imports nothing heavy (no torch, timm, numpy or
qzoo package: the deterministic stand-in for "answers at once"), every subcommand answers --help with its own
options, list / info / export work on the real registry and published weights, unknown commands name the
nearest one, and the scripts under recipes/ and eval/ are thin wrappers of the same commands."""
import json
import re
import runpy
import sys
import tomllib

import pytest
import torch

import procs
import qzoo
import qzoo_cli
from conftest import ROOT
from qzoo import cli, weights
from qzoo.data import list_datasets

HEAVY = ('torch', 'timm', 'numpy', 'qzoo')


def _qzoo(capsys, *argv):
    """``qzoo argv`` in this process: (exit status, stdout, stderr); argparse's SystemExit becomes the status."""
    try:
        rc = qzoo_cli.main(list(argv))
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return rc, out, err


# ---- start-up ------------------------------------------------------------------------------
def test_top_level_help_version_and_usage_errors_import_nothing_heavy():
    code = ('import sys, qzoo_cli\n'
            'for argv in (["--help"], ["--version"], ["lst"], ["--bogus"], []):\n'
            '    try:\n'
            '        rc = qzoo_cli.main(argv)\n'
            '    except SystemExit as e:\n'
            '        rc = e.code\n'
            '    print("RC", argv, rc, file=sys.stderr)\n'
            f'loaded = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})\n'
            'print("LOADED", loaded, file=sys.stderr)\n')
    p = procs.run([procs.PYTHON, '-c', code], cwd=ROOT, env=procs.child_env(), timeout=120)
    assert p.returncode == 0, p.stderr
    assert re.findall(r'^RC (.*) (\S+)$', p.stderr, re.M) == [
        ("['--help']", '0'), ("['--version']", '0'), ("['lst']", '2'), ("['--bogus']", '2'), ('[]', '2')]
    assert 'LOADED []' in p.stderr  # the lists of the help text come from qzoo_cli alone
    assert 'usage: qzoo' in p.stdout and all(name in p.stdout for name in qzoo_cli.COMMANDS)
    assert f'qzoo {qzoo.__version__}' in p.stdout


def test_the_console_script_is_the_top_level_module():
    meta = tomllib.loads((ROOT / 'pyproject.toml').read_text())
    assert meta['project']['scripts'] == {'qzoo': 'qzoo_cli:main'}
    assert meta['tool']['setuptools']['py-modules'] == ['qzoo_cli']


# ---- dispatch ------------------------------------------------------------------------------
@pytest.mark.parametrize('command', list(qzoo_cli.COMMANDS))
def test_every_command_answers_help_with_its_own_options(command, capsys):
    rc, out, err = _qzoo(capsys, command, '--help')
    assert rc == 0, err
    assert out.startswith(f'usage: qzoo {command} ') and '--help' in out
    assert _qzoo(capsys, 'help', command)[1] == out  # `qzoo help <command>` is the same


def test_unknown_commands_name_the_nearest_and_exit_2(capsys):
    rc, out, err = _qzoo(capsys, 'lst')
    assert rc == 2 and out == '' and "unknown command 'lst'; did you mean 'list'?" in err
    rc, _, err = _qzoo(capsys, 'exprot', 'qcnn', 'x.onnx')
    assert rc == 2 and "did you mean 'export'?" in err
    rc, _, err = _qzoo(capsys, 'zzzzzz')
    assert rc == 2 and 'the commands are list, info' in err
    rc, _, err = _qzoo(capsys, '--pretrained')
    assert rc == 2 and "unknown option '--pretrained'" in err


def test_a_command_whose_function_is_missing_fails_clearly(capsys, monkeypatch):
    monkeypatch.setitem(qzoo_cli.COMMANDS, 'validate', ('qzoo.cli', 'no_such_main', 'x'))
    rc, _, err = _qzoo(capsys, 'validate', '--weights', 'qcnn')
    assert rc == 1 and 'no qzoo.cli.no_such_main(argv)' in err and 'has no such function' in err
    monkeypatch.setitem(qzoo_cli.COMMANDS, 'validate', ('qzoo.no_such_module', 'main', 'x'))
    rc, _, err = _qzoo(capsys, 'validate')
    assert rc == 1 and 'qzoo.no_such_module is missing' in err


def test_the_wrapper_scripts_are_the_commands(monkeypatch, capsys):
    """recipes/*.py and eval/{benchmark,cards}.py only call the package's command function (``main``, as before)."""
    from qzoo import benchmark, engine, launch, publish
    wrappers = {'recipes/train.py': engine.main, 'recipes/launch.py': launch.main, 'recipes/publish.py': publish.main,
                'recipes/publish_all.py': publish.main, 'eval/benchmark.py': benchmark.cli,
                'eval/cards.py': cli.cards_main}
    for path, function in wrappers.items():
        text = (ROOT / path).read_text()
        assert 'def ' not in text and len(text.splitlines()) <= 15, path
        assert runpy.run_path(str(ROOT / path))['main'] is function, path
        monkeypatch.setattr(sys, 'argv', [str(ROOT / path), '--help'])
        with pytest.raises(SystemExit) as e:
            runpy.run_path(str(ROOT / path), run_name='__main__')
        assert e.value.code == 0 and capsys.readouterr().out.startswith(f'usage: {path.split("/")[1]} '), path


# ---- list ------------------------------------------------------------------------------------
def test_list_architectures_with_their_description(capsys):
    rc, out, _ = _qzoo(capsys, 'list')
    names = [line.split()[0] for line in out.splitlines()[2:]]
    assert rc == 0 and sorted(names) == sorted(qzoo.list_models())  # in the order the families define them
    line = next(line for line in out.splitlines() if line.startswith('qcnn '))
    assert line.split()[1] == str(len(weights.weights_for('qcnn'))) and '16,262 parameters' in line
    assert cli.describe(qzoo.models.MODEL_FACTORIES['qcnn']) in line


def test_list_pretrained_shows_params_dataset_metric_and_the_default(capsys):
    rc, out, _ = _qzoo(capsys, 'list', '--pretrained')
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert rc == 0 and list(rows) == qzoo.list_models(pretrained=True)
    w = weights.get_weights('qcnn.cwru-snr-6db-s1')
    assert w.default and rows[w.name].split() == [w.name, '*', f'{w.params:,}', w.dataset, 'top1', f'{w.metric:.2f}']
    other = weights.get_weights('qcnn.cwru-clean-s0')
    assert not other.default and rows[other.name].split()[1] == f'{other.params:,}'


def test_list_filters_sections_and_json(capsys):
    rc, out, _ = _qzoo(capsys, 'list', '--pretrained', 'QCNN_w8*')
    assert rc == 0 and [line.split()[0] for line in out.splitlines()[2:]] == qzoo.list_models('qcnn_w8*', True)
    rc, out, _ = _qzoo(capsys, 'list', '--neurons', '--datasets', '--json')
    found = json.loads(out)
    assert rc == 0 and list(found) == ['neurons', 'datasets']
    assert [r['name'] for r in found['neurons']] == qzoo.list_neurons()
    assert [r['name'] for r in found['datasets']] == list_datasets()
    assert next(r for r in found['neurons'] if r['name'] == 'fan')['formula'] == qzoo.get_neuron('fan').formula
    rc, out, err = _qzoo(capsys, 'list', 'no-such-thing')
    assert rc == 1 and 'nothing matches' in err


# ---- info ------------------------------------------------------------------------------------
def test_info_of_an_architecture(capsys):
    rc, out, _ = _qzoo(capsys, 'info', 'qcnn')
    model = qzoo.create_model('qcnn')
    fields = dict(re.findall(r'^  (\S.*?)  +(.*)$', out, re.M))
    assert rc == 0 and out.startswith('qcnn: architecture')
    assert fields['params'] == f'{qzoo.count_params(model):,}'
    assert fields['MACs'].startswith(f'{qzoo.count_macs(model, (1, 1, 2048)):,} per input of shape (1, 1, 2048)')
    assert fields['input_size'] == '(1, 1, 2048)' and fields['neuron'] == 'fan'
    default = weights.default_weights('qcnn')
    assert fields['published weights'].startswith(f'{default.name} (default)')


def test_info_of_published_weights_is_their_record(capsys):
    w = weights.get_weights('qcnn.cwru-snr-6db-s1')
    rc, out, _ = _qzoo(capsys, 'info', w.name)
    fields = dict(re.findall(r'^  (\S.*?)  +(.*)$', out, re.M))
    assert rc == 0 and out.startswith(f'{w.name}: published weights (the default of qcnn)')
    assert fields['weights'] == f'{w.weights_dtype}, sha256 {w.sha256}' and fields['file'] == str(w.file)
    assert fields['test'].startswith(f'top1={w.metric:.2f}') and fields['dataset'] == w.dataset
    assert fields['training'].startswith(w.training['recipe']) and fields['default'] == f'yes: {w.default_reason}'
    rc, out, _ = _qzoo(capsys, 'info', w.name, '--json')
    got = json.loads(out)
    assert rc == 0 and got.pop('name') == w.name and got.pop('kind') == 'weights' and got.pop('file') == str(w.file)
    got.pop('card')
    assert weights.Weights.from_dict(got) == w


def test_info_of_neurons_and_datasets_and_unknown_names(capsys):
    rc, out, _ = _qzoo(capsys, 'info', 'lowrank(rank=3)')
    assert rc == 0 and f'{qzoo.get_neuron("lowrank(rank=3)").param_multiplier}' in out and 'sum_k' in out
    rc, out, _ = _qzoo(capsys, 'info', 'cwru')
    assert rc == 0 and 'snr_db=' in out and "load_dataset('cwru')" in out
    rc, out, err = _qzoo(capsys, 'info', 'qcn')
    assert rc == 2 and out == '' and "did you mean 'qcnn'" in err
    rc, _, err = _qzoo(capsys, 'info', 'qcnn.cwru-snr-6db-s9')
    assert rc == 2 and re.search(r"did you mean 'qcnn\.cwru-snr-6db-s\d'", err), err   # the published seeds


# ---- export ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_export_pretrained_writes_a_checked_onnx_file(tmp_path, monkeypatch, capsys):
    for mod in ('onnx', 'onnxruntime', 'onnxscript'):
        pytest.importorskip(mod, reason=f"{mod} is not installed (pip install 'qzoo[export]')")
    import onnx
    import onnxruntime as ort
    monkeypatch.chdir(tmp_path)
    rc, out, err = _qzoo(capsys, 'export', 'qcnn', 'out.onnx', '--pretrained', '--check')
    assert rc == 0, err
    assert 'wrote out.onnx (qcnn, pretrained' in out and re.search(r'max \|diff\| \S+ .*: ok$', out, re.M)
    onnx.checker.check_model(str(tmp_path / 'out.onnx'), full_check=True)
    x = torch.randn(2, 1, 2048, generator=torch.Generator().manual_seed(3))
    (got,) = ort.InferenceSession(str(tmp_path / 'out.onnx')).run(None, {'input': x.numpy()})
    with torch.no_grad():
        want = qzoo.create_model('qcnn', pretrained=True).eval()(x)
        random = qzoo.create_model('qcnn').eval()(x)
    assert torch.allclose(torch.from_numpy(got), want, atol=1e-4)  # the published weights, not random ones
    assert not torch.allclose(want, random, atol=1e-2)
    rc, _, err = _qzoo(capsys, 'export', 'qcnm', 'x.onnx')
    assert rc == 2 and "did you mean 'qcnn'" in err and not (tmp_path / 'x.onnx').exists()
