"""A built wheel carries the published weights and the ``qzoo`` command: installed into a fresh virtualenv (its
dependencies taken from this environment, qzoo only from the wheel), it loads pretrained weights offline from
another directory, its ``qzoo --help`` and ``qzoo list --pretrained`` work there, and a command that needs a
checkout says so."""
import os
import subprocess
import sys
import sysconfig
import venv
import zipfile

import pytest
import torch

from conftest import ROOT


@pytest.mark.slow
def test_wheel_loads_pretrained_offline_outside_the_checkout(tmp_path):
    dist = tmp_path / 'dist'
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(dist),
                    str(ROOT)], check=True, capture_output=True, timeout=600)
    wheel = next(dist.glob('qzoo-*.whl'))
    names = zipfile.ZipFile(wheel).namelist()
    assert 'qzoo/checkpoints/manifest.json' in names
    assert 'qzoo/checkpoints/qcnn.cwru-snr-6db-s1/model.safetensors' in names
    assert 'qzoo_cli.py' in names  # the entry point, outside the package
    entry_points = next(n for n in names if n.endswith('.dist-info/entry_points.txt'))
    assert 'qzoo = qzoo_cli:main' in zipfile.ZipFile(wheel).read(entry_points).decode()

    env_dir = tmp_path / 'venv'
    venv.create(env_dir, with_pip=False)
    py = env_dir / 'bin' / 'python'
    site = subprocess.run([str(py), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                          capture_output=True, text=True, check=True).stdout.strip()
    # torch, timm, ... from this environment (a plain path: its .pth files, e.g. an editable qzoo, stay inactive)
    with open(os.path.join(site, 'deps.pth'), 'w') as f:
        f.write(sysconfig.get_paths()['purelib'] + '\n')
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--no-index', '--target', site,
                    str(wheel)], check=True, capture_output=True, timeout=600)
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    code = ('import qzoo, timm, torch\n'
            'm = timm.create_model("qcnn", pretrained=True)\n'
            'print(qzoo.__file__)\nprint(m.pretrained_cfg["file"])\n'
            'torch.save(m.state_dict(), "sd.pt")\n')
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'QZOO_CHECKPOINTS')}
    env.update(HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1')
    p = subprocess.run([str(py), '-c', code], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    qzoo_file, weights_file = p.stdout.split()[:2]
    assert qzoo_file.startswith(site) and weights_file.startswith(site)  # not the checkout's copy
    import qzoo
    ref = qzoo.create_model('qcnn', pretrained=True).state_dict()
    got = torch.load(elsewhere / 'sd.pt', weights_only=True)
    assert all(torch.equal(got[k], v) for k, v in ref.items())
    _check_the_qzoo_command(py, site, elsewhere, env)


def _check_the_qzoo_command(py, site, elsewhere, env):
    """The console script pip wrote for the wheel (run by the fresh environment's Python: pip --target gives it
    this environment's interpreter in its #! line) from a directory that is not a checkout."""
    script = os.path.join(site, 'bin', 'qzoo')
    assert 'from qzoo_cli import main' in open(script).read()

    def qzoo_command(*args):
        p = subprocess.run([str(py), script, *args], cwd=elsewhere, env=env, capture_output=True, text=True,
                           timeout=600)
        return p.returncode, p.stdout, p.stderr
    rc, out, err = qzoo_command('--help')
    assert rc == 0 and out.startswith('usage: qzoo') and 'list' in out, err
    rc, out, err = qzoo_command('list', '--pretrained')
    assert rc == 0, err
    import qzoo
    assert [line.split()[0] for line in out.splitlines()[2:]] == qzoo.list_models(pretrained=True)
    rc, out, err = qzoo_command('launch', '--preset', 'quad-sweep', '--smoke', '--out', 'device-out')
    assert rc == 2 and 'needs a checkout of the qzoo repository' in err and 'Traceback' not in err
    assert not (elsewhere / 'device-out').exists()
