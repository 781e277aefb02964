"""qzoo.publish: a real (tiny) run published into a temporary zoo ($QZOO_CHECKPOINTS): what is stored,
recorded and carded; atomic republishing; what is refused."""
import json
import re
import os
import shutil
import subprocess

import pytest
import torch

import procs
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


@pytest.fixture(scope='module')
def other_run(tmp_path_factory):
    """Another run of the same architecture and seed (2 epochs): published as 'tiny' it has run's name."""
    out = tmp_path_factory.mktemp('runs') / 'qmlp-circles-e2'
    train(load_recipe(ROOT / RECIPE, ['epochs=2', 'model=qmlp', 'model_args.hidden=[4]']), out, recipe_path=RECIPE,
          progress=False)
    return out


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    """An empty zoo at <a checkout-like folder>/qzoo/checkpoints (the index MODEL_CARDS.md is written there)."""
    (tmp_path / 'repo' / 'recipes').mkdir(parents=True)
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


# ---- what is published must be one complete run, true and finite -------------------------------------------------
def _copy(run, tmp_path, name='copy'):
    out = tmp_path / name
    shutil.copytree(run, out)
    return out


def _empty(zoo):
    return not zoo.exists() or not any(zoo.iterdir())


def test_a_folder_mixing_two_runs_or_an_incomplete_one_is_refused(zoo, run, tmp_path):
    """A second run that failed at once left the first run's weights and results.json beside its own recipe.yaml
    (another dataset, lr=1e30) and an empty log; publish accepted the mix."""
    mixed = _copy(run, tmp_path, 'mixed')
    (mixed / 'recipe.yaml').write_text(load_recipe(ROOT / 'recipes/synthetic/moons-d2.yaml', ['lr=1e30']).to_yaml())
    (mixed / 'log.jsonl').write_text('')
    with pytest.raises(RunDirError, match=f'{mixed / "recipe.yaml"} is not the recipe of the run in results.json.*'
                                          'mixes two runs'):
        pub.publish(mixed, 'tiny')
    log = (run / 'log.jsonl').read_text().splitlines(keepends=True)
    res = json.loads((run / 'results.json').read_text())
    for name, change, needle in (
            ('short-log', lambda f: (f / 'log.jsonl').write_text(''.join(log[:1])), r'holds epochs \[0\], not 0..2'),
            ('twice', lambda f: (f / 'log.jsonl').write_text(''.join(log + log[-1:])), r'holds epochs \[0, 1, 2, 2\]'),
            ('lacking', lambda f: (f / 'results.json').write_text(json.dumps({k: v for k, v in res.items()
                                                                             if k != 'selected_epoch'})),
             'lacks selected_epoch: not written by a finished run'),
            ('selected', lambda f: (f / 'results.json').write_text(json.dumps(dict(res, selected_epoch=7))),
             'the selected epoch 7 is not one of the logged epochs')):
        bad = _copy(run, tmp_path, name)
        change(bad)
        with pytest.raises(RunDirError, match=needle):
            pub.publish(bad, 'tiny')
    assert _empty(zoo)


@pytest.mark.parametrize('field, value', [('params', 1), ('macs', 1), ('neuron', 'linear'),
                                          ('dataset', 'synthetic-moons-d2'), ('task', 'regression'), ('seed', 3),
                                          ('data_spec', {'name': 'synthetic', 'args': {'kind': 'moons'}}),
                                          ('primary_metric', 'mse')])
def test_what_results_json_says_must_be_what_the_weights_and_recipe_give(zoo, run, tmp_path, field, value):
    """Published records showed 1 parameter (really 42), a linear MLP as quadratic, circles as moons."""
    bad = _copy(run, tmp_path)
    res = json.loads((bad / 'results.json').read_text())
    assert res[field] != value
    (bad / 'results.json').write_text(json.dumps(dict(res, **{field: value})))
    says = re.escape(f'results.json says {field} {value!r}')
    if field == 'primary_metric':  # the results have no value of the metric it names: refused on reading them
        says += '|' + re.escape('val has no finite mse (the primary metric): None')
    with pytest.raises(RunDirError, match=says):
        pub.publish(bad, 'tiny')
    assert _empty(zoo)


@pytest.mark.parametrize('name', ['log.jsonl', 'results.json', 'recipe.yaml', 'config.json', 'model.safetensors'])
def test_publish_follows_no_symbolic_link_out_of_the_run(zoo, run, tmp_path, name):
    """A log.jsonl linked to a private key was published inside log.jsonl.gz. (Here the link points at an identical
    copy of the run's own file: the link alone is refused.)"""
    linked = _copy(run, tmp_path, 'linked')
    elsewhere = tmp_path / 'elsewhere' / name
    elsewhere.parent.mkdir()
    os.replace(linked / name, elsewhere)
    (linked / name).symlink_to(elsewhere)
    with pytest.raises(RunDirError, match=f'{linked / name} is a symbolic link'):
        pub.publish(linked, 'tiny')
    assert _empty(zoo)


def test_weights_with_non_finite_outputs_are_refused(zoo, run, tmp_path):
    nan = _copy(run, tmp_path, 'nan')
    model = hub.from_pretrained(nan)
    with torch.no_grad():
        next(model.parameters()).fill_(float('nan'))
    hub.save_pretrained(model, nan, results=json.loads((nan / 'results.json').read_text()))
    with pytest.raises(CheckpointError, match=r'non-finite \(NaN/inf\) outputs for \d+ of the val samples, \d+ of '
                                              'the test samples'):
        pub.publish(nan, 'tiny')
    assert _empty(zoo)


# ---- the zoo's records: another run's weights, the index, concurrent publishes ------------------------------------
def test_weights_of_another_run_are_replaced_only_with_force_and_kept(zoo, run, other_run, tmp_path, monkeypatch):
    """98.80 at 200 epochs became 51.60 at 1 epoch, with no --force and no backup."""
    monkeypatch.setenv('QZOO_CACHE', str(tmp_path / 'cache'))
    a = pub.publish(run, 'tiny')
    before = {p.name: p.read_bytes() for p in (zoo / a.name).iterdir()}
    manifest = (zoo / 'manifest.json').read_bytes()
    with pytest.raises(CheckpointError, match=r'qmlp_h4.tiny-s0 is already published from another run \(3 epochs.*'
                                              r'--force.*' + str(tmp_path / 'cache' / 'replaced')):
        pub.publish(other_run, 'tiny')
    assert {p.name: p.read_bytes() for p in (zoo / a.name).iterdir()} == before
    assert (zoo / 'manifest.json').read_bytes() == manifest
    said = []
    b = pub.publish(other_run, 'tiny', force=True, say=said.append)
    assert b.name == a.name and b.training['epochs'] == 2 and len(said) == 1
    backup = tmp_path / 'cache' / 'replaced' / said[0].split(' kept in ')[1].rsplit('/', 1)[1]
    assert said[0].endswith(str(backup)) and backup.is_dir()
    assert {p.name: p.read_bytes() for p in backup.iterdir() if p.name != 'record.json'} == before
    assert json.loads((backup / 'record.json').read_text()) == json.loads(json.dumps(a.to_dict()))
    again = pub.publish(other_run, 'tiny', say=said.append)  # the same run again: no --force needed, no backup
    assert again.sha256 == b.sha256 and len(said) == 1


def test_the_index_is_written_only_for_a_qzoo_checkout_s_own_zoo(zoo, run, tmp_path, monkeypatch):
    """With QZOO_CHECKPOINTS=myproject/models/zoo the user's own myproject/MODEL_CARDS.md was overwritten."""
    project = tmp_path / 'myproject'
    (project / 'models').mkdir(parents=True)
    (project / 'pyproject.toml').write_text('[project]\nname = "mine"\n')
    (project / 'MODEL_CARDS.md').write_text('my own cards\n')
    monkeypatch.setenv(weights.CHECKPOINTS_ENV, str(project / 'models' / 'zoo'))
    weights.clear_cache()
    assert pub.index_path() is None
    pub.publish(run, 'tiny')
    assert (project / 'MODEL_CARDS.md').read_text() == 'my own cards\n'
    for d in ('recipes', 'qzoo'):  # even a qzoo checkout's index belongs to its own qzoo/checkpoints only
        (project / d).mkdir()
    assert pub.index_path() is None
    monkeypatch.setenv(weights.CHECKPOINTS_ENV, str(project / 'qzoo' / 'checkpoints'))
    assert pub.index_path() == project.resolve() / 'MODEL_CARDS.md'


RACE = """
import sys, time
from pathlib import Path
from qzoo import publish as pub
run, experiment, me, other = sys.argv[1:]


def meet(mine, theirs, seconds):
    Path(mine).write_text('')
    end = time.monotonic() + seconds
    while not Path(theirs).exists() and time.monotonic() < end:
        time.sleep(0.05)


swap = pub._swap_in


def swap_once_both_are_here(*args, **kwargs):
    # both have read the records and are about to write them (with the manifest lock, the other one waits for it
    # instead, and this one goes on after the wait)
    meet(me + '.swap', other + '.swap', 10)
    return swap(*args, **kwargs)


pub._swap_in = swap_once_both_are_here
meet(me + '.start', other + '.start', 300)
pub.publish(run, experiment)
"""


def test_two_publishes_at_once_keep_both_records(zoo, run, tmp_path):
    """Two `qzoo publish` at once both exited 0 and manifest.json listed one of the two (6 of 6 tries)."""
    a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
    kw = dict(env=procs.child_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with procs.group([procs.PYTHON, '-c', RACE, str(run), 'exp-a', a, b], **kw) as pa, \
            procs.group([procs.PYTHON, '-c', RACE, str(run), 'exp-b', b, a], **kw) as pb:
        errs = [p.communicate(timeout=600)[1] for p in (pa, pb)]
    assert pa.returncode == pb.returncode == 0, errs
    assert sorted(json.loads((zoo / 'manifest.json').read_text())) == ['qmlp_h4.exp-a-s0', 'qmlp_h4.exp-b-s0']
    weights.clear_cache()
    assert sorted(w.name for w in weights.all_weights().values() if w.default) == ['qmlp_h4.exp-a-s0']
    assert sorted(p.name for p in zoo.iterdir()) == ['manifest.json', 'manifest.lock', 'qmlp_h4.exp-a-s0',
                                                     'qmlp_h4.exp-b-s0']


def test_the_card_states_both_families_tuning_budget_of_the_experiment(zoo, run):
    """recipes/tuning.yaml's entry of the experiment goes into the record and onto the card, own family first."""
    import yaml
    w = pub.publish(run, 'synthetic-circles-d2')
    table = yaml.safe_load((ROOT / pub.TUNING_FILE).read_text())
    assert w.training['tuning'] == table['synthetic-circles-d2']
    card = (zoo / w.name / 'README.md').read_text()
    line = next(l for l in card.splitlines() if l.startswith('- **tuning budget**'))
    assert line == ('- **tuning budget** (before the published runs of this experiment): quadratic models, no validation '
                    'trials: the same recipe, every term at the same learning rate (quad_lr_scale 1). conventional '
                    'models, no validation trials: the shared recipe (AdamW 1e-2, cosine, 200 epochs) as written')
    assert 'tuning' not in pub.publish(run, 'tiny', force=True).training  # an experiment the file does not list


def test_refresh_restates_the_overrides_against_todays_recipe_file(zoo, run, tmp_path, monkeypatch):
    """A recipe file that changes a default after publishing (as grad_clip 5 did for the quadratic CIFAR recipes)
    moves what the published run had to override: refresh recomputes the overrides from the run's recipe.yaml,
    and the recipe file with them still resolves to the recorded hash."""
    w = pub.publish(run, 'tiny')
    assert 'epochs=3' in w.training['recipe_overrides']
    here = tmp_path / 'today'
    shutil.copytree(ROOT / 'recipes' / 'synthetic', here / 'recipes' / 'synthetic')
    base = here / 'recipes' / 'synthetic' / '_base.yaml'
    base.write_text(base.read_text().replace('epochs: 200', 'epochs: 3\ngrad_clip: 5.0'))
    monkeypatch.chdir(here)
    pub.refresh()
    weights.clear_cache()
    now = weights.all_weights()[w.name].training
    assert 'epochs=3' not in now['recipe_overrides'] and 'grad_clip=null' in now['recipe_overrides']
    assert load_recipe(here / RECIPE, now['recipe_overrides']).sha256() == w.training['recipe_sha256']
    assert '`' + ' '.join(now['recipe_overrides']) + '`' in (zoo / w.name / 'README.md').read_text()


def test_a_malformed_tuning_file_is_an_error_naming_it(zoo, run, monkeypatch, tmp_path):
    """recipes/tuning.yaml is read for every card: a family entry of the wrong form names the file and the entry."""
    from qzoo import checkout
    repo = tmp_path / 'checkout'
    for d in ('qzoo', 'recipes'):
        (repo / d).mkdir(parents=True)
    (repo / 'pyproject.toml').write_text('')
    (repo / pub.TUNING_FILE).write_text('tiny:\n  quadratic: 3\n')
    monkeypatch.setattr(checkout, 'PACKAGE_PARENT', repo)
    with pytest.raises(ValueError, match=r'tuning.yaml, experiment tiny: expected .*got .*Fix: write the entry'):
        pub.tuning_budget('tiny')
    (repo / pub.TUNING_FILE).write_text('tiny: [unclosed\n')
    with pytest.raises(ValueError, match=r'tuning.yaml is not valid YAML'):
        pub.tuning_budget('tiny')
    (repo / pub.TUNING_FILE).write_text('{}\n')
    assert pub.tuning_budget('tiny') is None   # an experiment the file does not list: no line


def test_a_results_file_larger_than_any_run_writes_is_refused_unread(zoo, run, tmp_path):
    from qzoo.bounds import MAX_JSON_BYTES
    bad = _copy(run, tmp_path)
    with open(bad / 'results.json', 'ab') as f:
        f.write(b' ' * MAX_JSON_BYTES)
    with pytest.raises(RunDirError, match=r'results.json .*holds more than 16,777,216 bytes'):
        pub.publish(bad, 'tiny')
    assert _empty(zoo)


def test_a_conventional_run_is_never_said_to_have_a_quadratic_scale_chosen_for_it():
    """The H200 launch's sweep chose quad_lr_scale; the resnet20 cards of that call said it was chosen for them."""
    assert pub._chosen({'model': 'resnet20', 'model_args': {}, 'quad_lr_scale': 0.01},
                       {'choices': {'x.yaml': {'quad_lr_scale': '1e-2', 'metric': 'top1', 'val': 80.0, 'run': 'r'}}}) == []
    assert pub._chosen({'model': 'qresnet20', 'model_args': {}, 'quad_lr_scale': 0.01},
                       {'choices': {'x.yaml': {'quad_lr_scale': '1e-2', 'metric': 'top1', 'val': 80.0, 'run': 'r'}}})
    for name, w in weights.all_weights().items():
        if w.neuron == 'linear':
            assert not (w.training.get('provenance') or {}).get('chosen'), name
