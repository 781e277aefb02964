"""qzoo.publish: a real (tiny) run published into a temporary zoo: what is stored, recorded and carded."""
import json

import pytest
import torch

from conftest import ROOT
from qzoo import hub
from qzoo import publish as pub
from qzoo.engine import load_recipe, train
from qzoo.evaluation import evaluate_on

RECIPE = 'recipes/synthetic/circles-d2.yaml'


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp('runs') / 'qmlp-circles'
    cfg = load_recipe(ROOT / RECIPE, ['epochs=3', 'model=qmlp', 'model_args.hidden=[4]'])
    train(cfg, out, recipe_path=RECIPE, progress=False)
    return out


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    ck = tmp_path / 'checkpoints'
    for mod in (hub, pub):
        monkeypatch.setattr(mod, 'CHECKPOINTS_DIR', ck)
        monkeypatch.setattr(mod, 'MANIFEST', ck / 'manifest.json')
    monkeypatch.setattr(pub, 'CARDS', tmp_path / 'MODEL_CARDS.md')
    return ck


def _evaluate(folder):
    model = hub.from_pretrained(folder).eval()
    return {s: evaluate_on(model, 'synthetic', s, {'kind': 'circles'})[0] for s in ('val', 'test')}


def test_published_numbers_are_those_of_the_stored_weights(zoo, run):
    e = pub.publish(run, 'h4-tiny-s0')
    folder = zoo / 'qmlp.h4-tiny-s0'
    res = json.loads((folder / 'results.json').read_text())
    again = _evaluate(folder)
    assert again['test'] == res['test'] == e['test'] and again['val'] == res['val'] == e['val']
    trained = json.loads((run / 'results.json').read_text())
    if res.get('at_training'):  # stored as float16 and it moved a metric
        assert res['at_training']['test'] == trained['test'] and res['weights_dtype'] == 'float16'
    else:
        assert (res['val'], res['test']) == (trained['val'], trained['test'])
    assert '## qmlp.h4-tiny-s0' in pub.CARDS.read_text()  # the zoo's cards were regenerated
    assert json.loads((zoo / 'manifest.json').read_text())['qmlp.h4-tiny-s0']['sha256'] == hub.sha256_file(
        folder / 'model.safetensors')


def test_overrides_are_recorded_and_carded(zoo, run):
    pub.publish(run, 'h4-tiny-s0')
    folder = zoo / 'qmlp.h4-tiny-s0'
    res = json.loads((folder / 'results.json').read_text())
    assert res['recipe_overrides'] == ['epochs=3', 'model="qmlp"', 'model_args={"hidden":[4]}']
    card = (folder / 'README.md').read_text()
    assert f'`{RECIPE}` with `epochs=3 model="qmlp" model_args={{"hidden":[4]}}`' in card


@pytest.mark.parametrize('tolerance, dtype', [(-1.0, torch.float32), (100.0, torch.float16)])
def test_float16_storage_follows_the_tolerance(zoo, run, monkeypatch, tolerance, dtype):
    monkeypatch.setattr(pub, 'FP16_TOLERANCE', tolerance)
    pub.publish(run, 'h4-tiny-s0')
    folder = zoo / 'qmlp.h4-tiny-s0'
    sd, _ = hub.load_weights(folder / 'model.safetensors')
    assert {t.dtype for t in sd.values() if t.is_floating_point()} == {dtype}
    res = json.loads((folder / 'results.json').read_text())
    check = res['fp16_check']
    assert res['weights_dtype'] == str(dtype).replace('torch.', '') and check['tolerance'] == tolerance
    assert _evaluate(folder)['test'] == res['test']
    card = (folder / 'README.md').read_text()
    assert f"stored as {res['weights_dtype']}" in card


def test_smoke_runs_and_bad_tags_are_refused(zoo, run, tmp_path):
    with pytest.raises(ValueError, match='tag'):
        pub.publish(run, 'bad tag!')
    smoke = tmp_path / 'smoke'
    train(load_recipe(ROOT / RECIPE), smoke, smoke=True, progress=False)
    with pytest.raises(ValueError, match='smoke'):
        pub.publish(smoke, 'x')
    assert not zoo.exists() or not any(zoo.iterdir())


def test_defaults_survive_republishing(zoo, run):
    pub.publish(run, 'h4-a-s0')
    pub.publish(run, 'h4-b-s0')
    defaults = lambda: {n for n, e in hub.published().items() if e['default']}  # noqa: E731
    assert defaults() == {'qmlp.h4-a-s0'}  # the first of an architecture becomes its default
    pub.publish(run, 'h4-a-s0')  # republished: stays the default
    assert defaults() == {'qmlp.h4-a-s0'}
    pub.publish(run, 'h4-b-s0', default=True)
    assert defaults() == {'qmlp.h4-b-s0'}
    pub.set_default('qmlp.h4-a-s0')
    assert defaults() == {'qmlp.h4-a-s0'}
