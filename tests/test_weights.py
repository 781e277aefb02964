"""The weights registry and the trust boundary of loading: a damaged manifest, the caller's own file,
recorded hashes, architectures and arguments a checkpoint may name, deterministic files, dtypes."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import timm
import torch

import qzoo
from conftest import ROOT
from qzoo import hub, weights
from qzoo.errors import CheckpointError
from qzoo.serialization import safetensors_bytes, save_weights

CK = ROOT / 'qzoo' / 'checkpoints'


def _python(code, env=None, cwd=None):
    """Run ``code`` in a fresh interpreter (the checkout first on sys.path); returns the completed process."""
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1', **(env or {}))
    return subprocess.run([sys.executable, '-c', code], env=full_env, cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=600)



@pytest.mark.parametrize('damage', ['stray byte', 'entry without architecture', 'entry without sha256',
                                    'empty sha256'])
def test_a_damaged_manifest_never_breaks_import(ck_copy, damage):
    path = ck_copy / 'manifest.json'
    raw = json.loads(path.read_text())
    name = 'qcnn.cwru-snr-6db-s1'
    if damage == 'stray byte':
        path.write_text(path.read_text()[:100] + '\x00' + path.read_text()[100:])
    else:
        key = {'entry without architecture': 'architecture', 'entry without sha256': 'sha256'}.get(damage)
        if key:
            del raw[name][key]
        else:
            raw[name]['sha256'] = ''
        path.write_text(json.dumps(raw))
    code = ('import warnings; warnings.simplefilter("ignore"); import qzoo, timm\n'
            'm = qzoo.create_model("qcnn"); print("built", type(m).__name__)\n'
            'try:\n    timm.create_model("qcnn", pretrained=True)\nexcept qzoo.CheckpointError as e:\n'
            '    print("refused:", e)\n')
    p = _python(code, env={weights.CHECKPOINTS_ENV: str(ck_copy)})
    assert p.returncode == 0, p.stderr
    assert 'built BearingCNN' in p.stdout and 'refused:' in p.stdout and str(path) in p.stdout
    if damage != 'stray byte':
        assert name in p.stdout


def test_overlay_file_is_loaded_instead_of_the_published_weights(tmp_path):
    own = qzoo.create_model('qcnn').eval()
    folder = hub.save_pretrained(own, tmp_path / 'own')
    for create in (timm.create_model, qzoo.create_model):
        m = create('qcnn', pretrained=True, pretrained_cfg_overlay=dict(file=str(folder / 'model.safetensors')))
        assert all(torch.equal(m.state_dict()[k], v) for k, v in own.state_dict().items())
    pth = tmp_path / 'weights.pth'
    torch.save(own.state_dict(), pth)
    with pytest.raises(CheckpointError, match='not a .safetensors file'):
        qzoo.create_model('qcnn', pretrained=True, pretrained_cfg_overlay=dict(file=str(pth)))


def test_architecture_without_weights_says_so():
    with pytest.raises(CheckpointError, match="no published weights for 'qresnet18'"):
        qzoo.create_model('qresnet18', pretrained=True)
    with pytest.raises(CheckpointError, match='did you mean'):
        qzoo.create_model('qcnn.cwru-snr-6db-s9', pretrained=True)


def _folder_naming(tmp_path, architecture, model_args=None, source='qcnn'):
    """A saved folder whose config.json is edited to name ``architecture`` / ``model_args``."""
    folder = hub.save_pretrained(qzoo.create_model(source), tmp_path / 'ckpt')
    cfg = json.loads((folder / 'config.json').read_text())
    cfg['architecture'] = architecture
    if model_args is not None:
        cfg['model_args'] = model_args
    (folder / 'config.json').write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize('arch', ['local-dir:/tmp', 'hf-hub:org/x', 'vit_giant_patch14_224', 'resnet50', '../x'])
def test_a_checkpoint_cannot_name_an_architecture_outside_qzoo(tmp_path, arch):
    with pytest.raises(CheckpointError, match='not a qzoo model'):
        hub.from_pretrained(_folder_naming(tmp_path, arch))


@pytest.mark.parametrize('args', [{'checkpoint_path': '/etc/passwd'}, {'pretrained_cfg': {'file': '/x'}},
                                  {'pretrained_cfg_overlay': {}}, {'pretrained': True}])
def test_a_checkpoint_cannot_carry_loading_options(tmp_path, args):
    with pytest.raises(CheckpointError, match='loading options'):
        hub.from_pretrained(_folder_naming(tmp_path, 'qcnn', dict(args, num_classes=10, in_chans=1)))


@pytest.mark.parametrize('arch, args', [('mlp', {'hidden': [10 ** 8], 'in_chans': 2, 'num_classes': 2}),
                                        ('qmlp', {'hidden': [10], 'neuron': 'lowrank(rank=100000000)',
                                                  'in_chans': 2, 'num_classes': 2})])
def test_huge_model_args_are_refused_before_allocation(tmp_path, arch, args):
    """A tiny file naming a huge architecture is checked on the meta device: refused without allocating
    it. Measured in a fresh process as the growth of its peak resident memory during the call (the
    peak is reset first through /proc/self/clear_refs, so what importing torch took does not count)."""
    if not os.access('/proc/self/clear_refs', os.W_OK):
        pytest.skip('needs Linux /proc/self/clear_refs to reset the peak resident memory')
    folder = hub.save_pretrained(qzoo.create_model(arch), tmp_path / 'ckpt')
    cfg = json.loads((folder / 'config.json').read_text())
    cfg['model_args'] = args
    (folder / 'config.json').write_text(json.dumps(cfg))
    code = (f'import gc, qzoo\nfrom qzoo import hub\n'
            f'def kb(key):\n'
            f'    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key))\n'
            f'gc.collect()\nopen("/proc/self/clear_refs", "w").write("5")\nbase = kb("VmRSS:")\n'
            f'try:\n    hub.from_pretrained({str(folder)!r})\nexcept qzoo.CheckpointError as e:\n'
            f'    print("refused", "do not fit" in str(e))\n'
            f'print("grew_mb", (kb("VmHWM:") - base) // 1024)')
    p = _python(code)
    assert 'refused True' in p.stdout, p.stdout + p.stderr
    grew = int(p.stdout.split('grew_mb')[1])
    assert grew < 300, f'peak memory grew by {grew} MB during the call: the model was allocated (it needs > 1.5 GB)'


def test_int_and_bool_tensors_do_not_load_into_float_parameters(tmp_path):
    model = qzoo.create_model('mlp')
    folder = hub.save_pretrained(model, tmp_path / 'ckpt')
    sd = {k: (v.to(torch.int8) if k.endswith('weight') else v) for k, v in model.state_dict().items()}
    cfg = json.loads((folder / 'config.json').read_text())
    cfg['qzoo']['sha256'] = save_weights(sd, folder / 'model.safetensors')
    (folder / 'config.json').write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match='dtype mismatches: .*torch.int8'):
        hub.from_pretrained(folder)


def test_saved_files_are_deterministic(tmp_path):
    """The same tensors and metadata give the same bytes (safetensors alone orders its header by hash map)."""
    model = qzoo.create_model('qresnet8', width=4)
    meta = {f'key{i}': str(i) for i in range(30)}
    a = safetensors_bytes(model.state_dict(), meta)
    b = safetensors_bytes(model.state_dict(), dict(reversed(list(meta.items()))))
    assert a == b
    s1 = save_weights(model.state_dict(), tmp_path / 'a.safetensors', meta)
    s2 = save_weights(model.state_dict(), tmp_path / 'b.safetensors', meta)
    assert s1 == s2
    from safetensors.torch import load_file
    back = load_file(str(tmp_path / 'a.safetensors'))
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())
    assert hub.save_pretrained(model, tmp_path / 'f1') and hub.save_pretrained(model, tmp_path / 'f2')
    assert (tmp_path / 'f1/model.safetensors').read_bytes() == (tmp_path / 'f2/model.safetensors').read_bytes()


def test_weights_found_from_a_mirror_folder(tmp_path, monkeypatch):
    """$QZOO_CHECKPOINTS points at another copy of the checkpoints; the hash checks still apply."""
    mirror = tmp_path / 'mirror'
    mirror.mkdir()
    name = 'qcnn.cwru-snr-6db-s1'
    shutil.copytree(CK / name, mirror / name)
    raw = json.loads((CK / 'manifest.json').read_text())
    (mirror / 'manifest.json').write_text(json.dumps({name: raw[name]}))
    p = _python('import qzoo; m = qzoo.create_model("qcnn", pretrained=True); print(m.pretrained_cfg["file"]); '
                'print(qzoo.list_models(pretrained=True))', env={weights.CHECKPOINTS_ENV: str(mirror)},
                cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert str(mirror / name / 'model.safetensors') in p.stdout and f"['{name}']" in p.stdout
