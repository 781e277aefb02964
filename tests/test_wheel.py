"""The README's path through a built wheel. A copy of the checkout (the files a clone has) builds the wheel, which
is installed into a fresh virtualenv outside both (its dependencies taken from this environment, qzoo only from
the wheel). From another directory it loads pretrained weights offline, its ``qzoo --help`` and ``qzoo list
--pretrained`` work, and a command that needs a checkout says so. From the clone, the README's ``qzoo validate``
command and its Python blocks run offline with the installed package, and leave nothing behind in the clone but
the CSV that ``qzoo validate`` writes there by design."""
import json
import os
import shutil
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
import torch

import procs
from conftest import ROOT
from test_readme import _blocks, _qzoo_lines

#: what a clone does not have (.gitignore's build outputs, caches and run folders)
NOT_IN_A_CLONE = shutil.ignore_patterns('.git', '.venv', 'build', 'dist', 'runs', '*.egg-info', '__pycache__',
                                        '.pytest_cache', '.hypothesis', '.cache', '.data')


def _files(folder):
    return {p.relative_to(folder).as_posix() for p in Path(folder).rglob('*') if p.is_file()}


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    """(python, site-packages, clone, console script): the wheel built from a copy of the checkout and installed
    into a fresh virtualenv."""
    tmp = tmp_path_factory.mktemp('wheel')
    clone = tmp / 'clone'
    shutil.copytree(ROOT, clone, ignore=NOT_IN_A_CLONE, symlinks=True)
    dist = tmp / 'dist'
    p = procs.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(dist),
                   str(clone)], timeout=600)
    assert p.returncode == 0, p.stderr
    build_output = p.stdout + p.stderr
    for built in ('build', 'qzoo.egg-info'):  # the build's own outputs: a clone has none of them
        shutil.rmtree(clone / built, ignore_errors=True)
    wheel = next(dist.glob('qzoo-*.whl'))
    env_dir = tmp / 'venv'
    venv.create(env_dir, with_pip=False)
    py = env_dir / 'bin' / 'python'
    site = procs.run([str(py), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                     timeout=60).stdout.strip()
    # torch, timm, ... from this environment (a plain path: its .pth files, e.g. an editable qzoo, stay inactive)
    with open(os.path.join(site, 'deps.pth'), 'w') as f:
        f.write(sysconfig.get_paths()['purelib'] + '\n')
    p = procs.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--no-index', '--target', site,
                   str(wheel)], timeout=600)
    assert p.returncode == 0, p.stderr
    return dict(py=py, site=site, clone=clone, wheel=wheel, script=os.path.join(site, 'bin', 'qzoo'), tmp=tmp,
                build_output=build_output)


def _env(tmp, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'QZOO_CHECKPOINTS', 'QZOO_DATA')}
    env.update(HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1', QZOO_CACHE=str(tmp / 'cache'), **extra)
    return env


@pytest.mark.slow
def test_wheel_loads_pretrained_offline_outside_the_checkout(installed, tmp_path):
    names = zipfile.ZipFile(installed['wheel']).namelist()
    assert 'qzoo/checkpoints/manifest.json' in names
    assert 'qzoo/checkpoints/qcnn.cwru-snr-6db-s1/model.safetensors' in names
    assert 'qzoo_cli.py' in names  # the entry point, outside the package
    entry_points = next(n for n in names if n.endswith('.dist-info/entry_points.txt'))
    assert 'qzoo = qzoo_cli:main' in zipfile.ZipFile(installed['wheel']).read(entry_points).decode()

    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    code = ('import qzoo, timm, torch\n'
            'm = timm.create_model("qcnn", pretrained=True)\n'
            'print(qzoo.__file__)\nprint(m.pretrained_cfg["file"])\n'
            'torch.save(m.state_dict(), "sd.pt")\n')
    env = _env(tmp_path)
    p = procs.run([str(installed['py']), '-c', code], cwd=elsewhere, env=env, timeout=600)
    assert p.returncode == 0, p.stderr
    qzoo_file, weights_file = p.stdout.split()[:2]
    site = installed['site']
    assert qzoo_file.startswith(site) and weights_file.startswith(site)  # not the checkout's copy
    import qzoo
    ref = qzoo.create_model('qcnn', pretrained=True).state_dict()
    got = torch.load(elsewhere / 'sd.pt', weights_only=True)
    assert all(torch.equal(got[k], v) for k, v in ref.items())
    _check_the_qzoo_command(installed, elsewhere, env)


def _qzoo_command(installed, cwd, env, *args):
    """The console script pip wrote for the wheel (run by the fresh environment's Python: pip --target gives it
    this environment's interpreter in its #! line)."""
    return procs.run([str(installed['py']), installed['script'], *args], cwd=cwd, env=env, timeout=600)


def _check_the_qzoo_command(installed, elsewhere, env):
    """From a directory that is not a checkout."""
    assert 'from qzoo_cli import main' in open(installed['script']).read()
    p = _qzoo_command(installed, elsewhere, env, '--help')
    assert p.returncode == 0 and p.stdout.startswith('usage: qzoo') and 'list' in p.stdout, p.stderr
    p = _qzoo_command(installed, elsewhere, env, 'list', '--pretrained')
    assert p.returncode == 0, p.stderr
    import qzoo
    assert [line.split()[0] for line in p.stdout.splitlines()[2:]] == qzoo.list_models(pretrained=True)
    p = _qzoo_command(installed, elsewhere, env, 'launch', '--preset', 'quad-sweep', '--smoke', '--out', 'device-out')
    assert p.returncode == 2 and 'needs a checkout of the qzoo repository' in p.stderr and 'Traceback' not in p.stderr
    assert not (elsewhere / 'device-out').exists()
    p = _qzoo_command(installed, elsewhere, env, 'validate', '--weights', 'qcnn.cwru-snr-6db-s1')
    assert p.returncode == 1 and 'needs a checkout of the qzoo repository' in p.stderr and 'clone' in p.stderr
    assert 'restore it with git' not in p.stderr and not (elsewhere / 'results').exists()


# what pip does for `pip install -e .`: the build backend's editable wheel, with every warning it emits (pip shows
# each as a BuildBackendWarning)
BUILD_EDITABLE = '''import sys, tempfile, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    import setuptools.build_meta as backend
    backend.build_editable(tempfile.mkdtemp())
for w in caught:
    print(f'warned {w.category.__name__}: {str(w.message).strip().splitlines()[0]}')
print('built')
'''


@pytest.mark.slow
def test_building_the_wheel_and_an_editable_install_prints_no_setuptools_warning(installed, tmp_path):
    """Neither `pip wheel` (`pip install .`) nor setuptools' editable build (`pip install -e .`, as make test
    does) warns: no deprecated license table, no package data outside the packages, no editable-finder notice."""
    assert 'warning' not in installed['build_output'].lower(), installed['build_output']
    clone = tmp_path / 'clone'
    shutil.copytree(installed['clone'], clone)
    p = procs.run([sys.executable, '-c', BUILD_EDITABLE], cwd=clone, env=_env(tmp_path), timeout=600)
    lines = p.stdout.splitlines()  # setuptools' own log lines, then what the build warned, then 'built'
    assert p.returncode == 0 and lines[-1:] == ['built'], p.stdout[-3000:] + p.stderr[-3000:]
    assert not [line for line in lines if line.startswith('warned ')], p.stdout


# the README's Python blocks, in order and in one namespace, as a user would paste them into one session
RUN_BLOCKS = '''import json, sys
namespace = {'__name__': '__readme__'}
for i, code in enumerate(json.load(open(sys.argv[1]))):
    print(f'--- block {i + 1}', flush=True)
    exec(compile(code, f'README.md python block {i + 1}', 'exec'), namespace)
import qzoo
print('--- qzoo', qzoo.__file__)
'''


@pytest.mark.slow
def test_the_readme_path_from_the_clone_with_the_installed_wheel(installed, tmp_path):
    """`pip install .`, then the README's `qzoo validate` command and Python blocks, run inside the clone
    (offline, the shipped test splits: no full data anywhere). The installed package finds the clone's data/."""
    clone, site = installed['clone'], installed['site']
    before = _files(clone)
    env = _env(tmp_path, QZOO_DATA=str(tmp_path / 'no-full-data'), TMPDIR=str(tmp_path))
    line = next(line for line in _qzoo_lines() if line.startswith('qzoo validate '))
    p = _qzoo_command(installed, clone, env, *line.split()[1:])
    assert p.returncode == 0, p.stderr
    rows = [json.loads(r) for r in p.stdout.splitlines()]
    import qzoo
    for row, name in zip(rows, line.split()[3:], strict=True):
        w = qzoo.weights.get_weights(name)
        assert row['weights'] == name and row['dataset'] == w.dataset and row['top1'] == pytest.approx(w.metric)
    blocks = tmp_path / 'blocks.json'
    blocks.write_text(json.dumps(_blocks('python')))
    runner = tmp_path / 'run_blocks.py'   # outside the clone: `import qzoo` finds the installed package
    runner.write_text(RUN_BLOCKS)
    p = procs.run([str(installed['py']), str(runner), str(blocks)], cwd=clone, env=env, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert p.stdout.splitlines()[-1] == f'--- qzoo {site}/qzoo/__init__.py'
    for predicted, true in _predictions(p.stdout):
        assert predicted == true, p.stdout
    assert _files(clone) - before == {'results/validate.csv'}   # what `qzoo validate` writes by design


def _predictions(out):
    import re
    found = re.findall(r'predicted (\S+) \(\d+%\); true (\S+)', out)
    assert len(found) >= 2, out
    return found
