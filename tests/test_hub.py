"""Weights I/O through the real huggingface_hub / torch.hub / timm code paths with local caches."""
import json
import shutil

import huggingface_hub
import pytest
import timm
import torch

import qzoo
from qzoo import hub
from qzoo.hub import CheckpointError


@pytest.fixture
def saved(tmp_path):
    model = qzoo.create_model('qresnet8', width=4, num_classes=7).eval()
    folder = hub.save_pretrained(model, tmp_path / 'ckpt', results={'dataset': 'cifar10-jpeg75', 'task': 'classification',
                                                                     'test': {'top1': 12.5}})
    return model, folder


def _same(a, b):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def test_save_pretrained_folder(saved):
    model, folder = saved
    assert sorted(p.name for p in folder.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    cfg = json.loads((folder / 'config.json').read_text())
    assert cfg['architecture'] == 'qresnet8' and cfg['num_classes'] == 7 and cfg['model_args']['width'] == 4
    assert cfg['qzoo']['sha256'] == hub.sha256_file(folder / 'model.safetensors')
    assert cfg['qzoo']['params'] == qzoo.count_params(model) and cfg['qzoo']['neuron'] == 'fan'
    _, meta = hub.load_weights(folder / 'model.safetensors')
    assert meta['architecture'] == 'qresnet8' and json.loads(meta['model_args'])['width'] == 4
    card = (folder / 'README.md').read_text()
    assert card.startswith('---\nlibrary_name: timm\n') and 'cifar10-jpeg75' in card


def test_from_pretrained_folder_and_file(saved):
    model, folder = saved
    assert _same(model, hub.from_pretrained(folder))
    assert _same(model, hub.from_pretrained(folder / 'model.safetensors'))  # metadata names the architecture


def test_timm_local_dir(saved):
    model, folder = saved
    assert _same(model, timm.create_model(f'local-dir:{folder}', pretrained=True))
    adapted = timm.create_model(f'local-dir:{folder}', pretrained=True, num_classes=3)
    assert adapted.fc.out_features == 3


def _seed_hf_cache(cache, repo_id, folder, revision='0' * 40):
    """Lay the folder out as huggingface_hub's cache does (refs/main -> snapshots/<commit>/files)."""
    repo = cache / ('models--' + repo_id.replace('/', '--'))
    snap = repo / 'snapshots' / revision
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        shutil.copy(f, snap / f.name)
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(revision)


@pytest.fixture
def hf_offline(tmp_path, monkeypatch):
    cache = tmp_path / 'hf-cache'
    cache.mkdir()
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HUB_CACHE', str(cache))
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(cache))
    return cache


def test_hf_hub_offline_from_cache(saved, hf_offline):
    model, folder = saved
    _seed_hf_cache(hf_offline, 'someone/qresnet8-test', folder)
    assert _same(model, hub.from_pretrained('hf-hub:someone/qresnet8-test'))
    assert _same(model, timm.create_model('hf-hub:someone/qresnet8-test', pretrained=True))


def test_hf_hub_missing_offline_is_clear(hf_offline):
    with pytest.raises(CheckpointError, match='not in the Hugging Face cache'):
        hub.from_pretrained('hf-hub:someone/absent')


def test_url_spec_through_torch_hub_cache(saved, tmp_path, monkeypatch):
    model, folder = saved
    sha = hub.sha256_file(folder / 'model.safetensors')
    served = tmp_path / 'served' / f'qresnet8-{sha[:8]}.safetensors'
    served.parent.mkdir()
    shutil.copy(folder / 'model.safetensors', served)
    monkeypatch.setattr(torch.hub, '_hub_dir', str(tmp_path / 'torch-hub'))
    assert _same(model, hub.from_pretrained(served.as_uri()))            # downloaded into the hub cache
    assert (tmp_path / 'torch-hub' / 'checkpoints' / served.name).is_file()
    served.unlink()
    assert _same(model, hub.from_pretrained(served.as_uri()))            # now from the cache, offline


def test_hash_mismatch_is_clear(saved):
    _, folder = saved
    cfg = json.loads((folder / 'config.json').read_text())
    cfg['qzoo']['sha256'] = 'f' * 64
    (folder / 'config.json').write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as e:
        hub.from_pretrained(folder)
    msg = str(e.value)
    assert 'checksum mismatch' in msg and str(folder / 'model.safetensors') in msg and 'f' * 64 in msg and 'Fix' in msg


def test_hash_in_file_name_is_checked(saved, tmp_path):
    _, folder = saved
    bad = tmp_path / 'qresnet8-deadbeef.safetensors'
    shutil.copy(folder / 'model.safetensors', bad)
    with pytest.raises(CheckpointError, match='expected SHA-256 deadbeef'):
        hub.from_pretrained(bad)


def test_truncated_file_is_clear(saved):
    _, folder = saved
    f = folder / 'model.safetensors'
    f.write_bytes(f.read_bytes()[:1000])
    cfg = json.loads((folder / 'config.json').read_text())
    cfg['qzoo'].pop('sha256')
    (folder / 'config.json').write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match='corrupt or truncated'):
        hub.from_pretrained(folder)


def test_architecture_mismatch_names_file_and_keys(saved):
    _, folder = saved
    with pytest.raises(CheckpointError) as e:
        hub.from_pretrained(folder, width=8)
    assert 'do not fit qresnet8' in str(e.value) and 'shape mismatches' in str(e.value)
    cfg = json.loads((folder / 'config.json').read_text())
    cfg['architecture'] = 'resnet8'
    cfg['qzoo'].pop('sha256')
    (folder / 'config.json').write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match='missing .* keys|unexpected .* keys'):
        hub.from_pretrained(folder)


def test_pickles_are_refused(tmp_path):
    f = tmp_path / 'model.pth'
    torch.save({'a': torch.zeros(1)}, f)
    with pytest.raises(CheckpointError, match='only as safetensors'):
        hub.load_weights(f)


def test_push_to_hub_uploads_the_saved_folder(saved, monkeypatch, tmp_path):
    """push_to_hub calls huggingface_hub's real HfApi methods; the network is replaced at the
    HTTP boundary only by recording what would be uploaded (the folder's files)."""
    model, _ = saved
    uploaded = {}

    def upload_folder(self, *, repo_id, folder_path, commit_message=None, **kw):
        uploaded.update(repo_id=repo_id, files=sorted(p.name for p in __import__('pathlib').Path(folder_path).iterdir()),
                        config=json.loads((__import__('pathlib').Path(folder_path) / 'config.json').read_text()))
        return 'https://huggingface.co/x/y/commit/0'

    monkeypatch.setattr(huggingface_hub.HfApi, 'create_repo', lambda self, *a, **k: None)
    monkeypatch.setattr(huggingface_hub.HfApi, 'upload_folder', upload_folder)
    url = hub.push_to_hub(model, 'someone/qresnet8-test')
    assert url.endswith('/commit/0') and uploaded['repo_id'] == 'someone/qresnet8-test'
    assert uploaded['files'] == ['README.md', 'config.json', 'model.safetensors']
    assert uploaded['config']['architecture'] == 'qresnet8'


def test_unresolvable_spec():
    with pytest.raises(CheckpointError, match='cannot resolve weights'):
        hub.from_pretrained('no-such-thing')


def test_pretrained_without_weights_is_clear():
    with pytest.raises(CheckpointError, match='no published weights for .qresnet110.'):
        qzoo.create_model('qresnet110', pretrained=True)
