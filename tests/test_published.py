"""The published checkpoints: loadable with pretrained=True through timm, qzoo and torch.hub
(offline, from checkpoints/ in this checkout), SHA-256 checked, cards fresh."""
import json
import shutil

import pytest
import timm
import torch

import qzoo
from conftest import ROOT
from qzoo import hub
from qzoo.cards import zoo_cards
from qzoo.hub import CheckpointError

PUBLISHED = hub.published()
DEFAULTS = sorted({e['architecture'] for e in PUBLISHED.values() if e.get('default')})


def test_something_is_published_and_fits_the_budget():
    assert PUBLISHED, 'checkpoints/manifest.json lists no checkpoint'
    total = sum(f.stat().st_size for f in (ROOT / 'checkpoints').rglob('*') if f.is_file())
    assert total <= 32 * 2 ** 20, f'checkpoints/ holds {total / 2 ** 20:.1f} MiB (budget 32 MiB)'


@pytest.mark.parametrize('name', sorted(PUBLISHED))
def test_manifest_entry_matches_files(name):
    e = PUBLISHED[name]
    folder = ROOT / 'checkpoints' / e['folder']
    assert hub.sha256_file(folder / 'model.safetensors') == e['sha256']
    cfg = json.loads((folder / 'config.json').read_text())
    assert cfg['architecture'] == e['architecture'] and cfg['qzoo']['sha256'] == e['sha256']
    res = json.loads((folder / 'results.json').read_text())
    assert res['test'] == e['test'] and res['dataset'] == e['dataset'] and not res['smoke']
    assert res['selection'].startswith('best validation') or res['selection'] == 'last epoch'
    for f in ('recipe.yaml', 'log.jsonl', 'README.md'):
        assert (folder / f).is_file()


@pytest.mark.parametrize('name', sorted(PUBLISHED))
def test_pretrained_tag_through_timm_and_qzoo(name):
    e = PUBLISHED[name]
    m1 = timm.create_model(name, pretrained=True).eval()
    m2 = qzoo.create_model(name, pretrained=True).eval()
    ref = hub.from_pretrained(ROOT / 'checkpoints' / e['folder'])
    sd1, sd2, sdr = m1.state_dict(), m2.state_dict(), ref.state_dict()
    assert all(torch.equal(sd1[k], sdr[k]) and torch.equal(sd2[k], sdr[k]) for k in sdr)
    assert qzoo.count_params(m1) == e['params']


@pytest.mark.parametrize('arch', DEFAULTS)
def test_pretrained_default_through_torch_hub_local(arch):
    m = torch.hub.load(str(ROOT), arch, source='local', pretrained=True)
    default = next(n for n, e in PUBLISHED.items() if e['architecture'] == arch and e.get('default'))
    ref = hub.from_pretrained(ROOT / 'checkpoints' / PUBLISHED[default]['folder'])
    assert all(torch.equal(m.state_dict()[k], v) for k, v in ref.state_dict().items())


def test_pretrained_with_new_head_adapts():
    name = sorted(PUBLISHED)[0]
    m = timm.create_model(name, pretrained=True, num_classes=3)
    assert m.get_classifier().out_features == 3 if hasattr(m.get_classifier(), 'out_features') else True


@pytest.fixture
def repo_copy(tmp_path, monkeypatch):
    """checkpoints/ copied so files can be damaged without touching the checkout."""
    ck = tmp_path / 'checkpoints'
    shutil.copytree(ROOT / 'checkpoints', ck)
    monkeypatch.setattr(hub, 'CHECKPOINTS_DIR', ck)
    monkeypatch.setattr(hub, 'MANIFEST', ck / 'manifest.json')
    return ck


def test_damaged_published_file_is_refused(repo_copy):
    name = sorted(PUBLISHED)[0]
    f = repo_copy / PUBLISHED[name]['folder'] / 'model.safetensors'
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as e:
        qzoo.create_model(name, pretrained=True)
    assert 'checksum mismatch' in str(e.value) and str(f) in str(e.value) and PUBLISHED[name]['sha256'] in str(e.value)


def test_missing_published_file_offline_is_clear(repo_copy, monkeypatch, tmp_path):
    import huggingface_hub
    name = sorted(PUBLISHED)[0]
    (repo_copy / PUBLISHED[name]['folder'] / 'model.safetensors').unlink()
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(tmp_path / 'empty-hf'))
    with pytest.raises(CheckpointError, match='not in the Hugging Face cache'):
        qzoo.create_model(name, pretrained=True)


def test_published_through_hf_cache(tmp_path, monkeypatch):
    """The hf_hub_id path: the published folder laid out as a Hugging Face cache, loaded offline."""
    import huggingface_hub
    name = sorted(PUBLISHED)[0]
    e = PUBLISHED[name]
    repo = tmp_path / ('models--' + e['hf_hub_id'].replace('/', '--'))
    snap = repo / 'snapshots' / ('0' * 40)
    shutil.copytree(ROOT / 'checkpoints' / e['folder'], snap)
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text('0' * 40)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(tmp_path))
    m = timm.create_model(f"hf-hub:{e['hf_hub_id']}", pretrained=True)
    ref = hub.from_pretrained(ROOT / 'checkpoints' / e['folder'])
    assert all(torch.equal(m.state_dict()[k], v) for k, v in ref.state_dict().items())


def test_model_cards_are_fresh():
    want = zoo_cards(PUBLISHED, ROOT / 'checkpoints')
    have = (ROOT / 'MODEL_CARDS.md').read_text()
    assert have == want, 'MODEL_CARDS.md is stale: run `make cards`'


def test_torch_hub_tagged_checkpoint_as_the_cards_show():
    name = next(n for n, e in sorted(PUBLISHED.items()) if not e.get('default') and e['model_args'])
    arch, tag = name.split('.', 1)
    m = torch.hub.load(str(ROOT), arch, source='local', pretrained=True, pretrained_cfg=tag)
    ref = hub.from_pretrained(ROOT / 'checkpoints' / PUBLISHED[name]['folder'])
    assert all(torch.equal(m.state_dict()[k], v) for k, v in ref.state_dict().items())
