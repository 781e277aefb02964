"""The README cannot rot: its Python blocks run in order (offline, on the CPU, in a temporary
directory), every `qzoo` command line of its shell blocks names a real command and only options
that command has, and every relative link points at a file of the checkout."""
import contextlib
import io
import re
import shlex

import pytest

import qzoo_cli
from conftest import ROOT

README = (ROOT / 'README.md').read_text()


def _blocks(lang):
    return re.findall(rf'^```{lang}\n(.*?)^```', README, flags=re.S | re.M)


def test_the_readme_has_the_blocks_a_user_needs():
    assert len(_blocks('python')) >= 4 and len(_blocks('bash')) >= 2
    first_screen = '\n'.join(README.splitlines()[:40])   # a pretrained prediction before any scrolling
    assert 'pip install .' in first_screen and "pretrained=True" in first_screen and 'print(' in first_screen


def test_every_python_block_runs_in_order(tmp_path, monkeypatch):
    """The blocks share one namespace, as if typed into one session, in a fresh directory that holds
    only a link to the checkout's hubconf.py (what `torch.hub.load('.', ..., source='local')` reads)."""
    pytest.importorskip('onnxruntime', reason="the Deploy block needs onnxruntime: pip install '.[export]'")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('QZOO_CACHE', str(tmp_path / 'cache'))
    (tmp_path / 'hubconf.py').symlink_to(ROOT / 'hubconf.py')
    namespace = {'__name__': '__readme__'}
    for i, code in enumerate(_blocks('python')):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f'README.md python block {i + 1}', 'exec'), namespace)
        printed = out.getvalue()
        if 'print(' in code:
            assert printed.strip(), f'block {i + 1} printed nothing'
        if 'predicted' in code:  # the quickstart's predictions are right on these examples
            m = re.search(r'predicted (\S+) \(\d+%\); true (\S+)', printed)
            assert m and m.group(1) == m.group(2), printed
    assert (tmp_path / 'my-qresnet' / 'model.safetensors').is_file() and (tmp_path / 'qcnn.onnx').is_file()


def _qzoo_lines():
    for block in _blocks('bash'):
        for line in block.splitlines():
            line = line.split('  #')[0].strip()
            if line.startswith('qzoo '):
                yield line


def test_every_qzoo_command_line_uses_real_commands_and_options(capsys):
    lines = list(_qzoo_lines())
    assert len(lines) >= 5
    helps = {}
    for line in lines:
        words = shlex.split(line.replace('<', '').replace('>', ''))
        command = words[1]
        assert command in qzoo_cli.COMMANDS, line
        if command not in helps:
            with pytest.raises(SystemExit) as e:
                qzoo_cli.run(command, ['--help'])
            assert e.value.code == 0
            helps[command] = capsys.readouterr().out
        for option in (w.split('=')[0] for w in words[2:] if w.startswith('--')):
            assert re.search(rf'{re.escape(option)}\b', helps[command]), f'{line}: qzoo {command} has no {option}'


def test_every_relative_link_points_at_a_file():
    links = re.findall(r'\]\(([^)#:]+)\)', README)
    assert links
    for link in links:
        assert (ROOT / link).exists(), link


def test_the_layout_section_names_every_module_of_the_package():
    layout = README[README.index('## Layout'):]
    layout = layout[:layout.index('\n## ', 1)]
    modules = sorted(p.stem for p in (ROOT / 'qzoo').glob('*.py') if p.stem != '__init__')
    modules += sorted(p.name + '/' for p in (ROOT / 'qzoo').iterdir()
                      if p.is_dir() and (p / '__init__.py').is_file())
    missing = [m for m in modules if not re.search(rf'\b{re.escape(m)}(\.py\b|(?<=/))', layout)]
    assert not missing, f'README Layout does not name: {missing}'
