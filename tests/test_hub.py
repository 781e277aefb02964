"""Weights I/O through the real huggingface_hub / torch.hub / timm code paths with local caches."""
import json
import re
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


def _url_cache(hub_dir, url):
    from qzoo.fileio import sha256_bytes
    return hub_dir / 'checkpoints' / 'qzoo-url' / sha256_bytes(url)[:16] / url.rsplit('/', 1)[1]


def test_url_spec_through_torch_hub_cache_keyed_by_url(saved, tmp_path, monkeypatch):
    """Two sites' model.safetensors are two cache entries (the cache is keyed by the whole URL)."""
    model, folder = saved
    other = qzoo.create_model('qresnet8', width=4, num_classes=7).eval()
    other_folder = hub.save_pretrained(other, tmp_path / 'other')
    hub_dir = tmp_path / 'torch-hub'
    monkeypatch.setattr(torch.hub, '_hub_dir', str(hub_dir))
    a, b = 'https://site-a.example/x/model.safetensors', 'https://site-b.example/x/model.safetensors'
    for url, f in ((a, folder), (b, other_folder)):
        _url_cache(hub_dir, url).parent.mkdir(parents=True)
        shutil.copy(f / 'model.safetensors', _url_cache(hub_dir, url))  # as a download would leave it
    assert _same(model, hub.from_pretrained(a)) and _same(other, hub.from_pretrained(b))
    assert not _same(model, hub.from_pretrained(b))


@pytest.mark.parametrize('url', ['file:///etc/passwd', 'http://example.org/model.safetensors', 'ftp://x/y.safetensors'])
def test_only_https_urls_are_fetched(url, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, '_hub_dir', str(tmp_path / 'torch-hub'))
    with pytest.raises(CheckpointError, match='only https://'):
        hub.from_pretrained(url)
    assert not (tmp_path / 'torch-hub').exists()  # nothing copied into the cache


def test_torch_hub_hash_prefix_only_with_check_hash(saved, tmp_path, monkeypatch):
    model, folder = saved
    hub_dir = tmp_path / 'torch-hub'
    monkeypatch.setattr(torch.hub, '_hub_dir', str(hub_dir))
    url = 'https://site.example/w/qresnet8-deadbeef.safetensors'
    _url_cache(hub_dir, url).parent.mkdir(parents=True)
    shutil.copy(folder / 'model.safetensors', _url_cache(hub_dir, url))
    assert _same(model, hub.from_pretrained(url))                 # a name is not a hash unless asked
    with pytest.raises(CheckpointError, match='fails its hash check'):
        hub.from_pretrained(url, check_hash=True)


def test_hash_mismatch_is_clear(saved):
    _, folder = saved
    cfg = json.loads((folder / 'config.json').read_text())
    cfg['qzoo']['sha256'] = 'f' * 64
    (folder / 'config.json').write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as e:
        hub.from_pretrained(folder)
    msg = str(e.value)
    assert 'checksum mismatch' in msg and str(folder / 'model.safetensors') in msg and 'f' * 64 in msg and 'Fix' in msg


def test_hex_in_a_local_file_name_is_not_a_hash(saved, tmp_path):
    model, folder = saved
    f = tmp_path / 'mlp-20240501.safetensors'
    shutil.copy(folder / 'model.safetensors', f)
    assert _same(model, hub.from_pretrained(f))


@pytest.mark.parametrize('value', ['', 'abc', None, 'F' * 64])
def test_empty_or_malformed_recorded_hash_is_refused(saved, value):
    _, folder = saved
    cfg = json.loads((folder / 'config.json').read_text())
    cfg['qzoo']['sha256'] = value
    (folder / 'config.json').write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match='not a 64-digit hex digest'):
        hub.from_pretrained(folder)


def test_truncated_file_is_clear(saved):
    _, folder = saved
    f = folder / 'model.safetensors'
    f.write_bytes(f.read_bytes()[:1000])
    cfg = json.loads((folder / 'config.json').read_text())
    del cfg['qzoo']  # a folder not written by qzoo records no hash
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


# ---- one loader for every source -----------------------------------------------------------------------
@pytest.fixture
def timm_pickle_folder(tmp_path):
    """A local-dir folder as timm writes one for its own models: config.json naming timm's resnet10t and a pickled
    pytorch_model.bin (what qzoo's loader never builds or unpickles)."""
    folder = tmp_path / 'timm-folder'
    folder.mkdir()
    (folder / 'config.json').write_text(json.dumps({'architecture': 'resnet10t', 'num_classes': 10}))
    torch.save(timm.create_model('resnet10t', num_classes=10).state_dict(), folder / 'pytorch_model.bin')
    return folder


@pytest.mark.parametrize('pretrained', [True, False])
def test_create_model_loads_local_dir_through_the_checked_loader(timm_pickle_folder, pretrained):
    """qzoo.create_model('local-dir:...') went to timm, which built timm's resnet10t and unpickled its .bin."""
    with pytest.raises(CheckpointError, match=r"names architecture 'resnet10t', which is not a qzoo model"):
        qzoo.create_model(f'local-dir:{timm_pickle_folder}', pretrained=pretrained)


def test_create_model_local_dir_and_hf_hub_load_qzoo_folders_with_their_checks(saved, hf_offline):
    model, folder = saved
    assert _same(model, qzoo.create_model(f'local-dir:{folder}', pretrained=True))
    fresh = qzoo.create_model(f'local-dir:{folder}')          # the architecture, fresh weights
    assert type(fresh) is type(model) and fresh.num_classes == 7 and not _same(model, fresh)
    _seed_hf_cache(hf_offline, 'someone/qresnet8-test', folder)
    assert _same(model, qzoo.create_model('hf-hub:someone/qresnet8-test', pretrained=True))
    cfg = json.loads((folder / 'config.json').read_text())
    cfg['qzoo']['sha256'] = 'f' * 64                          # the recorded hash is checked on this path too
    (folder / 'config.json').write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match='checksum mismatch'):
        qzoo.create_model(f'local-dir:{folder}', pretrained=True)
    with pytest.raises(ValueError, match="qzoo.registry.create_model builds qzoo architectures by name"):
        qzoo.registry.create_model(f'local-dir:{folder}')


def test_export_of_a_local_dir_uses_the_checked_loader(timm_pickle_folder, tmp_path, capsys):
    from qzoo import export
    out = tmp_path / 'x.onnx'
    assert export.main([f'local-dir:{timm_pickle_folder}', str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "names architecture 'resnet10t', which is not a qzoo model" in err
    assert not out.exists()


@pytest.mark.parametrize('spec', ['hf-hub:../../etc', 'hf-hub:a/b/c', 'hf-hub:'])
def test_a_malformed_hf_hub_name_is_a_checkpoint_error(spec, hf_offline):
    """hf-hub:../../etc raised huggingface_hub's HFValidationError, an undocumented type."""
    with pytest.raises(CheckpointError, match=rf'{re.escape(spec)} does not name a Hugging Face repository .*Fix: '
                                              r'write hf-hub:<org>/<name>\[@<revision>\]'):
        hub.from_pretrained(spec)


def test_a_config_json_that_is_not_a_small_regular_file_is_refused(saved):
    _, folder = saved
    (folder / 'config.json').unlink()
    (folder / 'config.json').symlink_to('/dev/zero')
    with pytest.raises(CheckpointError, match=r'config file .*config.json is a character device, not a regular file'):
        hub.from_pretrained(folder)
