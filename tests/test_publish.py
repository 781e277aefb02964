"""qzoo.publish: a real (tiny) run published into a temporary zoo ($QZOO_CHECKPOINTS): what is stored,
recorded and carded; atomic republishing; what is refused."""
import json
import os
import shutil

import pytest
import torch

from conftest import ROOT
from qzoo import hub, weights
from qzoo import publish as pub
from qzoo.errors import CheckpointError, RunDirError
from qzoo.evaluation import evaluate_on
from qzoo.fileio import sha256_file
from qzoo.recipe import load_recipe
from qzoo.engine import train

RECIPE = 'recipes/synthetic/circles-d2.yaml'


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp('runs') / 'qmlp-circles'
    cfg = load_recipe(ROOT / RECIPE, ['epochs=3', 'model=qmlp', 'model_args.hidden=[4]'])
    train(cfg, out, recipe_path=RECIPE, progress=False)
    return out


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    """An empty zoo in a checkout-like folder (the index MODEL_CARDS.md is written beside pyproject.toml)."""
    (tmp_path / 'repo').mkdir()
    (tmp_path / 'repo' / 'pyproject.toml').write_text('')
    ck = tmp_path / 'repo' / 'qzoo' / 'checkpoints'
    monkeypatch.setenv(weights.CHECKPOINTS_ENV, str(ck))
    monkeypatch.chdir(ROOT)
    weights.clear_cache()
    yield ck
    # $QZOO_CHECKPOINTS must be unset before the registry is rebuilt: otherwise timm's cfgs and the
    # records cache would keep this temporary zoo for every later test
    monkeypatch.undo()
    weights.clear_cache()
    from qzoo.registry import register_all
    register_all()


def _evaluate(folder):
    model = hub.from_pretrained(folder).eval()
    return {s: evaluate_on(model, 'synthetic', s, {'kind': 'circles'})[0] for s in ('val', 'test')}


def test_published_numbers_are_those_of_the_stored_weights(zoo, run):
    w = pub.publish(run, 'tiny')
    assert w.name == 'qmlp_h4.tiny-s0' and w.architecture == 'qmlp_h4'  # the registered variant, seed from the run
    folder = zoo / w.name
    again = _evaluate(folder)
    assert again['test'] == dict(w.test) and again['val'] == dict(w.val)
    trained = json.loads((run / 'results.json').read_text())
    if w.training.get('at_training'):  # stored as float16 and it moved a metric
        assert w.training['at_training']['test'] == trained['test'] and w.weights_dtype == 'float16'
    else:
        assert (dict(w.val), dict(w.test)) == (trained['val'], trained['test'])
    assert '[qmlp_h4.tiny-s0](' in (zoo.parent.parent / 'MODEL_CARDS.md').read_text()
    assert json.loads((zoo / 'manifest.json').read_text())[w.name]['sha256'] == sha256_file(folder / 'model.safetensors')
    assert w.label_names == ('inner', 'outer') and w.input_size == (2, 1, 1)
    assert w.default and 'only seed' in w.default_reason
    import qzoo
    m = qzoo.create_model('qmlp_h4', pretrained=True)  # the new default loads at once
    assert m.pretrained_cfg['tag'] == 'tiny-s0'


def test_overrides_are_recorded_and_carded(zoo, run):
    w = pub.publish(run, 'tiny')
    assert w.training['recipe_overrides'] == ['epochs=3', 'model="qmlp"', 'model_args={"hidden":[4]}']
    card = (zoo / w.name / 'README.md').read_text()
    assert f'`{RECIPE}` with `epochs=3 model="qmlp" model_args={{"hidden":[4]}}`' in card


@pytest.mark.parametrize('tolerance, dtype', [(-1.0, torch.float32), (100.0, torch.float16)])
def test_float16_storage_follows_the_tolerance(zoo, run, monkeypatch, tolerance, dtype):
    monkeypatch.setattr(pub, 'FP16_TOLERANCE', tolerance)
    w = pub.publish(run, 'tiny')
    folder = zoo / w.name
    sd, _ = hub.load_weights(folder / 'model.safetensors')
    assert {t.dtype for t in sd.values() if t.is_floating_point()} == {dtype}
    assert w.weights_dtype == str(dtype).replace('torch.', '') and w.training['fp16_check']['tolerance'] == tolerance
    assert _evaluate(folder)['test'] == dict(w.test)
    assert f'stored as {w.weights_dtype}' in (folder / 'README.md').read_text()


def test_republishing_identical_weights_keeps_the_hash(zoo, run):
    a = pub.publish(run, 'tiny')
    b = pub.publish(run, 'tiny')
    assert a.sha256 == b.sha256 == sha256_file(zoo / a.name / 'model.safetensors')
    mode = os.stat(zoo / a.name / 'model.safetensors').st_mode & 0o777
    assert mode == os.stat(zoo / a.name / 'config.json').st_mode & 0o777  # same permissions as the other files


def test_smoke_runs_and_bad_experiments_are_refused(zoo, run, tmp_path):
    for bad in ('bad tag!', 'tiny-s0', '../x', ''):
        with pytest.raises(ValueError, match='experiment'):
            pub.publish(run, bad)
    smoke = tmp_path / 'smoke'
    train(load_recipe(ROOT / RECIPE), smoke, smoke=True, progress=False)
    with pytest.raises(ValueError, match='smoke'):
        pub.publish(smoke, 'x')
    assert not zoo.exists() or not any(zoo.iterdir())


def test_a_run_naming_a_path_as_its_model_writes_nothing(zoo, run, tmp_path):
    """results.json is input: a model name like '../../victim' must not steer where files go."""
    evil = tmp_path / 'evil-run'
    shutil.copytree(run, evil)
    res = json.loads((evil / 'results.json').read_text())
    (evil / 'results.json').write_text(json.dumps(dict(res, model='../../victim')))
    victim = zoo.parent / 'victim'
    with pytest.raises(CheckpointError, match='not a qzoo architecture'):
        pub.publish(evil, 'x')
    assert not victim.exists() and (not zoo.exists() or not any(zoo.iterdir()))


def test_failed_republish_keeps_the_published_checkpoint(zoo, run, tmp_path):
    w = pub.publish(run, 'tiny')
    before = {p.name: p.read_bytes() for p in (zoo / w.name).iterdir()}
    manifest = (zoo / 'manifest.json').read_bytes()
    broken = tmp_path / 'broken-run'
    shutil.copytree(run, broken)
    (broken / 'log.jsonl').unlink()
    with pytest.raises(RunDirError, match='log.jsonl'):
        pub.publish(broken, 'tiny')
    assert {p.name: p.read_bytes() for p in (zoo / w.name).iterdir()} == before
    assert (zoo / 'manifest.json').read_bytes() == manifest
    assert not [p for p in zoo.iterdir() if p.name.startswith('.')]  # no temporary folder left


def test_defaults_follow_the_rule_and_can_be_pinned(zoo, run, tmp_path):
    a = pub.publish(run, 'exp-a')
    b = pub.publish(run, 'exp-b')
    defaults = lambda: {n for n, w in weights.all_weights().items() if w.default}  # noqa: E731
    assert defaults() == {a.name}  # no preferred experiment for synthetic 'exp-*': the first in name order
    pinned = pub.set_default(b.name, 'the b experiment is the one the README uses')
    assert defaults() == {b.name} and pinned.default_reason.startswith('Chosen by hand: the b experiment')
    pub.publish(run, 'exp-a')  # republishing keeps a pinned default
    assert defaults() == {b.name}
    with pytest.raises(ValueError, match='reason'):
        pub.set_default(a.name, '')


def test_choose_default_takes_the_median_validation_seed():
    base = weights.all_weights()['qcnn.cwru-snr-6db-s0'].to_dict()
    recs = [weights.Weights.from_dict(dict(base, seed=s, val=dict(base['val'], top1=v)))
            for s, v in ((0, 90.0), (1, 95.0), (2, 92.0), (3, 99.0), (4, 91.0))]
    clean = weights.Weights.from_dict(dict(base, experiment='cwru-clean', seed=0, val=dict(base['val'], top1=100.0)))
    pick, reason = pub.choose_default(recs + [clean])
    assert (pick.experiment, pick.seed) == ('cwru-snr-6db', 2)  # median of 90, 91, 92, 95, 99
    assert 'median validation top1 of its 5 seeds' in reason and 'SNR -6 dB' in reason
