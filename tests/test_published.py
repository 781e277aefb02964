"""The published weights: every record matches its folder (config.json, card, file hash), loads with
pretrained=True through timm, qzoo and torch.hub (offline, from qzoo/checkpoints), and the generated
files are fresh."""
import gzip
import json
import shutil

import pytest
import timm
import torch

import qzoo
from conftest import ROOT
from qzoo import hub, weights
from qzoo.cards import model_card, zoo_index
from qzoo.errors import CheckpointError
from qzoo.fileio import sha256_file
from qzoo.registry import tag_cfg

RECORDS = weights.all_weights()
ARCHS = sorted({w.architecture for w in RECORDS.values()})
CK = ROOT / 'qzoo' / 'checkpoints'


CALL_LIMIT = 64 * 2 ** 20           # what a device call carries: the tracked files it needs plus the data
DATA_FOR_A_CALL = (17.6 + 12.0) * 2 ** 20  # ../shared/data/cifar10-jpeg75.npz and dsb2018_96/, both in one call


def test_something_is_published_and_fits_the_budget():
    """Device calls run from the tracked files without qzoo/checkpoints/ (docs/gpu.md): those and both data sets
    must fit in one call. The published weights ship in the wheel: they stay under a call's size too, so that a
    checkout with them can still be copied whole where a call needs the zoo (e.g. the CUDA tests of the weights)."""
    import subprocess
    assert RECORDS, 'qzoo/checkpoints/manifest.json lists no weights'
    total = sum(f.stat().st_size for f in CK.rglob('*') if f.is_file())
    assert total <= CALL_LIMIT, f'qzoo/checkpoints holds {total / 2 ** 20:.1f} MiB (budget 64 MiB)'
    assert weights.checkpoints_dir() == CK  # no QZOO_CHECKPOINTS in the test environment
    if not (ROOT / '.git').exists():
        pytest.skip('the rest of the budget is counted over git ls-files')
    files = subprocess.run(['git', '-C', str(ROOT), 'ls-files', '-z'], capture_output=True, check=True).stdout
    rest = sum((ROOT / f).stat().st_size for f in filter(None, files.decode().split('\0'))
               if not f.startswith('qzoo/checkpoints/') and (ROOT / f).is_file())
    assert rest + DATA_FOR_A_CALL <= CALL_LIMIT, (f'the tracked files without qzoo/checkpoints hold {rest / 2 ** 20:.1f} '
                                                  'MiB: with both data sets they no longer fit in one device call')


@pytest.mark.parametrize('name', sorted(RECORDS))
def test_config_json_describes_its_own_checkpoint(name):
    """config.json, the card and the file all say what the record says (the record is the one source)."""
    w = RECORDS[name]
    folder = CK / name
    assert w.folder == folder and sha256_file(folder / 'model.safetensors') == w.sha256
    cfg = json.loads((folder / 'config.json').read_text())
    pc = cfg['pretrained_cfg']
    assert cfg['architecture'] == w.architecture and pc['tag'] == w.tag
    assert pc['description'] == tag_cfg(w)['description'] and name.split('.')[0] in pc['description']
    assert f'seed {w.seed}' in pc['description'] and w.dataset in pc['description']
    assert cfg['num_classes'] == w.num_classes and tuple(pc['input_size']) == tuple(w.input_size)
    assert cfg.get('label_names') == (list(w.label_names) if w.label_names else None)
    assert cfg['qzoo']['sha256'] == w.sha256 and cfg['qzoo']['weights'] == w.to_dict()
    assert {k: cfg['model_args'][k] for k in w.model_args} == dict(w.model_args)
    assert (folder / 'README.md').read_text() == model_card(cfg)
    assert set(p.name for p in folder.iterdir()) == {'model.safetensors', 'config.json', 'README.md', 'recipe.yaml',
                                                     'log.jsonl.gz'}
    log = [json.loads(line) for line in gzip.decompress((folder / 'log.jsonl.gz').read_bytes()).splitlines()]
    assert log[-1]['epoch'] + 1 == w.training['epochs'] and w.training['selected_epoch'] in {r['epoch'] for r in log}
    assert w.training['selection'].startswith('best validation') or w.training['selection'] == 'last epoch'


@pytest.mark.parametrize('name', sorted(RECORDS))
def test_pretrained_tag_through_timm_and_qzoo(name):
    w = RECORDS[name]
    m1 = timm.create_model(name, pretrained=True).eval()
    m2 = qzoo.create_model(name, pretrained=True).eval()
    ref = hub.from_pretrained(CK / name)
    sd1, sd2, sdr = m1.state_dict(), m2.state_dict(), ref.state_dict()
    assert all(torch.equal(sd1[k], sdr[k]) and torch.equal(sd2[k], sdr[k]) for k in sdr)
    assert qzoo.count_params(m1) == w.params
    assert m1.pretrained_cfg['tag'] == w.tag and m1.pretrained_cfg.get('label_names') == w.label_names


def test_list_models_pretrained_is_arch_dot_tag():
    names = qzoo.list_models(pretrained=True)
    assert sorted(names) == sorted(RECORDS) and all('.' in n for n in names)
    assert set(qzoo.list_models('qcnn*', pretrained=True)) == {n for n in RECORDS if n.startswith('qcnn')}


@pytest.mark.parametrize('arch', ARCHS)
def test_every_architecture_has_one_stated_default(arch):
    defaults = [w for w in weights.weights_for(arch) if w.default]
    assert len(defaults) == 1 and defaults[0].default_reason, arch
    assert weights.default_weights(arch) is defaults[0]


@pytest.mark.parametrize('arch', ARCHS)
def test_pretrained_default_through_torch_hub_local(arch):
    m = torch.hub.load(str(ROOT), arch, source='local', pretrained=True)
    ref = hub.from_pretrained(weights.default_weights(arch).folder)
    assert all(torch.equal(m.state_dict()[k], v) for k, v in ref.state_dict().items())


def test_pretrained_with_new_head_adapts():
    m = timm.create_model('qcnn', pretrained=True, num_classes=3)
    assert m.get_classifier().out_features == 3
    ref = hub.from_pretrained(weights.default_weights('qcnn').folder)
    assert torch.equal(m.features[0][0].conv_r.weight, ref.features[0][0].conv_r.weight)



def test_damaged_published_file_is_refused(ck_copy):
    name = sorted(RECORDS)[0]
    f = ck_copy / name / 'model.safetensors'
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as e:
        qzoo.create_model(name, pretrained=True)
    assert 'checksum mismatch' in str(e.value) and str(f) in str(e.value) and RECORDS[name].sha256 in str(e.value)


def test_missing_published_file_is_clear(ck_copy):
    name = sorted(RECORDS)[0]
    (ck_copy / name / 'model.safetensors').unlink()
    with pytest.raises(CheckpointError, match='does not exist'):
        qzoo.create_model(name, pretrained=True)


def test_published_folder_through_hf_cache(tmp_path, monkeypatch):
    """A published folder uploaded as is to the Hugging Face Hub loads through timm's hf-hub: path (offline)."""
    import huggingface_hub
    name = 'qcnn_w8.cwru-clean-s1'
    repo = tmp_path / 'models--someone--qcnn_w8'
    snap = repo / 'snapshots' / ('0' * 40)
    shutil.copytree(CK / name, snap)
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text('0' * 40)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(tmp_path))
    m = timm.create_model('hf-hub:someone/qcnn_w8', pretrained=True)
    ref = hub.from_pretrained(CK / name)
    assert all(torch.equal(m.state_dict()[k], v) for k, v in ref.state_dict().items())
    assert m.pretrained_cfg['tag'] == 'cwru-clean-s1'


def test_model_cards_index_is_fresh():
    want = zoo_index([w.to_dict() for w in RECORDS.values()])
    assert (ROOT / 'MODEL_CARDS.md').read_text() == want, 'MODEL_CARDS.md is stale: run `make cards`'


def test_torch_hub_tagged_checkpoint_as_the_cards_show():
    name = next(n for n, w in sorted(RECORDS.items()) if not w.default)
    arch, tag = name.split('.', 1)
    m = torch.hub.load(str(ROOT), arch, source='local', pretrained=True, pretrained_cfg=tag)
    ref = hub.from_pretrained(CK / name)
    assert all(torch.equal(m.state_dict()[k], v) for k, v in ref.state_dict().items())
