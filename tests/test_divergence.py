"""Training divergence, defined once (qzoo.divergence): the rule on logs (the H200 runs' own loss curves
among them), a blow-up forced in a real run and followed through every place that reads it: the warning
at the moment it happens, results.json, the published record, its card, the default rule, the
efficiency table's note, the plot label. Also the per-step monitor and warm starts."""
import json
import math
import warnings

import pytest
import torch

from conftest import ROOT
from qzoo import divergence, weights
from qzoo import publish as pub
from qzoo.divergence import Divergence, detect, read_log
from qzoo.engine import train, warm_start
from qzoo.errors import DivergenceWarning, RecipeError
from qzoo.recipe import load_recipe
from qzoo.serialization import save_weights

# the training losses of the H200 run qresnet20-w8-cifar10-jpeg75-s0 (shared/gpu-runs, commit 7e66537), 2 warm-up epochs
W8_H200 = [2.28, 1.83, 1.50, 1.26, 1.12, 1.03, 0.93, 0.87, 0.81, 0.76, 0.72, 0.68, 0.66, 0.64, 0.62, 0.60, 0.58, 0.56,
           0.54, 0.53, 0.52, 0.50, 2.16, 2.06, 2.03, 2.02, 2.00, 1.98, 1.96, 1.95, 1.94, 1.94, 1.93, 1.92, 1.92, 1.91]
# qresnet20-w16 seed 0 of the same call: blew up at epoch 19, recovered
W16_H200 = [2.03, 1.40, 1.09, 0.93, 0.82, 0.74, 0.68, 0.64, 0.61, 0.58, 0.55, 0.52, 0.51, 0.48, 0.47, 0.45, 0.43, 0.41,
            0.40, 1.38, 1.67, 1.45, 1.16, 0.65, 0.53, 0.47, 0.44, 0.41, 0.38, 0.36, 0.34, 0.32]


def _log(losses, nonfinite=None):
    return [dict(epoch=i, train_loss=l, **({'val_nonfinite': nonfinite[i]} if nonfinite and i in nonfinite else {}))
            for i, l in enumerate(losses)]


def test_the_h200_blow_ups_are_found_where_they_happened():
    d = detect(_log(W8_H200), warmup_epochs=2)
    assert (d.epoch, d.trigger, d.loss_before, d.loss, d.recovered) == (22, 'loss', 0.50, 2.16, False)
    assert d.sentence(21) == ('Training diverged at epoch 22: the training loss rose from 0.5 to 2.16; it never '
                              'recovered (training loss up to 2.16). The weights are those of epoch 21, before it.')
    d = detect(_log(W16_H200), warmup_epochs=2)
    assert (d.epoch, d.recovered, d.recovered_epoch) == (19, True, 28)
    assert d.sentence(37).endswith('it recovered by epoch 28. The weights are those of epoch 37, after the recovery.')
    assert d.short() == 'diverged at epoch 19 (loss 0.4 → 1.38), recovered by epoch 28'


def test_noise_near_zero_and_smooth_runs_are_not_divergence():
    # a loss that doubles near zero (0.002 -> 0.005: CWRU's wdcnn did this) has given back nothing of the gain
    assert detect(_log([1.9, 0.5, 0.05, 0.002, 0.005, 0.001])) is None
    assert detect(_log([2.0, 1.5, 1.2, 1.0, 0.9, 0.8])) is None
    # during warm-up nothing counts; right after it, it does
    assert detect(_log([2.0, 0.5, 1.8, 0.4]), warmup_epochs=3) is None
    assert detect(_log([2.0, 0.5, 1.8, 0.4]), warmup_epochs=2).epoch == 2
    assert detect([]) is None and detect(_log([1.0])) is None


def test_nonfinite_validation_outputs():
    log = _log([2.0, 1.0, 0.9, 0.8], nonfinite={2: 600})
    d = detect(log, n_val=5000)
    assert (d.epoch, d.trigger, d.nonfinite) == (2, 'nonfinite', 600) and 'NaN or inf' in d.what()
    # fewer than a tenth of the validation examples: an instability, not a divergence
    assert detect(_log([2.0, 1.0, 0.9, 0.8], nonfinite={2: 1}), n_val=67) is None
    assert divergence.nonfinite_epochs(_log([2.0, 1.0, 0.9], nonfinite={1: 1, 2: 2})) == [[1, 1], [2, 2]]
    # a non-finite training loss counts as a loss blow-up
    assert detect(_log([2.0, 1.0, math.nan])).trigger == 'loss'


def test_read_log_names_the_bad_line():
    assert read_log(['{"epoch": 0, "train_loss": 1.0}', '', '{"epoch": 1, "train_loss": 0.5}']) == _log([1.0, 0.5])
    with pytest.raises(ValueError, match='line 2 is not JSON'):
        read_log(['{"epoch": 0}', 'not json'])
    with pytest.raises(ValueError, match='line 1 is a JSON list'):
        read_log(['[1, 2]'])
    assert Divergence.from_dict(None) is None and Divergence.from_dict(detect(_log(W8_H200), 2).to_dict()).epoch == 22


# ---- a real blow-up, followed everywhere --------------------------------------------------------
RECIPE = 'recipes/synthetic/circles-d2.yaml'
# a linear MLP at lr 5 (constant after a 3-epoch warm-up) blows up at epoch 3 without reaching NaN
BLOW = ['model=mlp', 'model_args.hidden=[16]', 'epochs=6', 'lr=5', 'schedule=constant', 'warmup_epochs=3',
        'batch_size=32', 'data_args.n_train=256', 'data_args.n_val=64', 'data_args.n_test=64', 'optimizer=sgd',
        'weight_decay=1e-4']
CALM = BLOW[:3] + ['lr=0.05', 'seed=1'] + BLOW[4:]


@pytest.fixture(scope='module')
def blown(tmp_path_factory):
    out = tmp_path_factory.mktemp('runs') / 'mlp-blown'
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        res = train(load_recipe(ROOT / RECIPE, BLOW), out, recipe_path=RECIPE, progress=False)
    return out, res, [w for w in caught if issubclass(w.category, DivergenceWarning)]


def test_the_engine_warns_and_records_a_blow_up(blown):
    out, res, caught = blown
    assert len(caught) == 1 and 'training diverged at epoch 3' in str(caught[0].message)
    d = res['divergence']
    assert d['epoch'] == 3 and d['trigger'] == 'loss' and not d['recovered']
    assert json.loads((out / 'results.json').read_text())['divergence'] == d
    log = read_log((out / 'log.jsonl').read_text().splitlines())
    assert detect(log, 3, 64).to_dict() == d   # the same rule, from the log alone


def test_a_blow_up_is_on_the_card_the_default_rule_and_the_table(blown, tmp_path, monkeypatch):
    out, res, _ = blown
    calm = tmp_path / 'mlp-calm'
    train(load_recipe(ROOT / RECIPE, CALM), calm, recipe_path=RECIPE, progress=False)
    (tmp_path / 'repo').mkdir()
    monkeypatch.setenv(weights.CHECKPOINTS_ENV, str(tmp_path / 'repo' / 'zoo'))
    weights.clear_cache()
    try:
        w = pub.publish(out, 'synthetic-circles-d2-blowup')
        assert w.training['divergence'] == res['divergence']
        card = (w.folder / 'README.md').read_text()
        sel = w.training['selected_epoch']
        assert f'**training diverged**: Training diverged at epoch 3: the training loss rose' in card
        assert f'The weights are those of epoch {sel}, before it.' in card and sel < 3
        c = pub.publish(calm, 'synthetic-circles-d2-blowup')
        recs = weights.all_weights()
        # the median rule alone would take the lower-validation seed of the two; a diverged run is never the default
        assert recs[c.name].default and not recs[w.name].default
        assert 'diverged are not defaults' in recs[c.name].default_reason
        # the reason says what the choice was narrowed to, not 'its only seed' of an architecture with two
        assert recs[c.name].default_reason.endswith(f'Seed {recs[c.name].seed}: its only seed that did not diverge.')
        from qzoo.curves import Job, divergence_note, plot_label
        jobs = [Job(n, r.dataset, 'synthetic', {}, record=r) for n, r in sorted(recs.items())]
        n, note = divergence_note(jobs)
        assert n == 1 and note.startswith(f's0 diverged at epoch 3 (loss ') and f'weights of epoch {sel}' in note
        rows = [dict(model='mlp', group='mlp.a-e40', family='conventional', diverged=1),
                dict(model='mlp', group='mlp.a-e40-cpu', family='conventional', diverged=0)]
        assert [plot_label(r, rows) for r in rows] == ['mlp [a-e40] †', 'mlp [cpu]']
    finally:
        monkeypatch.undo()
        weights.clear_cache()
        from qzoo.registry import register_all
        register_all()


def test_publish_select_takes_the_best_validation_run_that_did_not_diverge_and_cards_every_trial(
        blown, tmp_path, monkeypatch, capsys):
    """A search over lr (0.05, 0.5 and the blow-up's 5, same architecture and seed): qzoo publish --select
    publishes one run, the best on validation among those that did not diverge, and its card lists all three."""
    out, res, _ = blown
    runs = [out]
    for lr in ('0.05', '0.5'):
        runs.append(tmp_path / f'mlp-lr{lr}')
        train(load_recipe(ROOT / RECIPE, BLOW[:3] + [f'lr={lr}'] + BLOW[4:]), runs[-1], recipe_path=RECIPE,
              progress=False)
    vals = {r: json.loads((r / 'results.json').read_text())['val']['top1'] for r in runs}
    best = max(runs[1:], key=vals.get)
    (tmp_path / 'repo').mkdir()
    monkeypatch.setenv(weights.CHECKPOINTS_ENV, str(tmp_path / 'repo' / 'zoo'))
    weights.clear_cache()
    try:
        assert pub.main([str(r) for r in runs] + ['--experiment', 'search', '--select']) == 0
        printed = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
        assert printed == [{'published': 'mlp_h16.search-s0', 'run': str(best)}]
        w = weights.all_weights()['mlp_h16.search-s0']
        assert w.val['top1'] == pytest.approx(vals[best], abs=0.21)   # stored weights, re-scored
        card = (w.folder / 'README.md').read_text()
        lr = best.name.removeprefix('mlp-lr')
        line = next(l for l in card.splitlines() if l.startswith('- **chosen on validation**'))
        assert line.startswith(f'- **chosen on validation**: lr={float(lr):g}, chosen on validation among 3 runs of '
                               f'this architecture and seed at 6 epochs')
        assert f"lr=5: top1 {vals[out]:.2f} (diverged at epoch 3: never chosen)" in line
        assert all(f'lr={float(v):g}: top1 {vals[tmp_path / f"mlp-lr{v}"]:.2f}' in line for v in ('0.05', '0.5'))
        # a search whose every run diverged chooses nothing, and says so
        assert pub.main([str(out), '--experiment', 'search2', '--select']) == 2
        assert 'every run diverged' in capsys.readouterr().err
    finally:
        monkeypatch.undo()
        weights.clear_cache()
        from qzoo.registry import register_all
        register_all()


def test_every_published_run_carries_what_its_log_shows():
    """The record of every published checkpoint holds the rule's verdict on its own log (computed again here)."""
    import gzip
    import yaml
    for name, w in weights.all_weights().items():
        log = read_log(gzip.decompress((w.folder / 'log.jsonl.gz').read_bytes()).decode().splitlines())
        ran = yaml.safe_load((w.folder / 'recipe.yaml').read_text())
        d = detect(log, ran.get('warmup_epochs') or 0, (w.training.get('splits') or {}).get('val'))
        assert w.training.get('divergence') == (d.to_dict() if d else None), name
        card = (w.folder / 'README.md').read_text()
        assert ('**training diverged**' in card) == (d is not None), name


# ---- the monitor and warm starts ----------------------------------------------------------------
QUAD = ['model=qmlp', 'model_args.hidden=[8]', 'epochs=3', 'batch_size=32', 'data_args.n_train=128',
        'data_args.n_val=32', 'data_args.n_test=32', 'optimizer=sgd', 'momentum=0', 'nesterov=false']


def test_the_monitor_records_gradients_and_term_outputs(tmp_path):
    train(load_recipe(ROOT / RECIPE, QUAD + ['monitor_every=2']), tmp_path, progress=False)
    recs = [json.loads(l) for l in (tmp_path / 'monitor.jsonl').read_text().splitlines()]
    assert [r['step'] for r in recs] == list(range(0, 12, 2))  # 4 steps an epoch, 3 epochs
    r = recs[-1]
    assert {'features.0.linear_r', 'features.0.linear_g', 'features.0.linear_b', 'head.linear_r'} <= set(r['grad'])
    assert r['grad_norm'] == pytest.approx(math.sqrt(sum(v * v for v in r['grad'].values())))
    assert {'features.0', 'features.0.r', 'features.0.g', 'features.0.b', 'head'} <= set(r['out'])
    rms, top = r['out']['features.0.r']
    assert 0 < rms <= top
    with pytest.raises(RecipeError, match='monitor_every records through module hooks'):
        load_recipe(ROOT / RECIPE, QUAD + ['monitor_every=2', 'compile=true'])


def test_warm_start_continues_the_schedule_and_data_of_that_epoch(tmp_path):
    """From the weights after epoch 0, a warm start at epoch 1 gives what the run itself did in epoch 1 (SGD without
    momentum has no optimizer state to lose)."""
    r = load_recipe(ROOT / RECIPE, QUAD)
    train(r, tmp_path / 'a', progress=False, until_epoch=1)
    assert not (tmp_path / 'a' / 'results.json').exists()
    state = torch.load(tmp_path / 'a' / 'last.ckpt', weights_only=True)['model']
    save_weights(state, tmp_path / 'w.safetensors', {'format': 'pt'})
    train(r, tmp_path / 'a', resume=True, progress=False, until_epoch=2)
    warm_start(r, tmp_path / 'w.safetensors', 1, tmp_path / 'b')
    train(r, tmp_path / 'b', resume=True, progress=False, until_epoch=2)
    la, lb = ([json.loads(l) for l in (tmp_path / k / 'log.jsonl').read_text().splitlines()] for k in 'ab')
    assert [l['epoch'] for l in lb] == [1] and lb[0]['lr'] == la[1]['lr'] and lb[0]['train_loss'] == la[1]['train_loss']
    wa, wb = (torch.load(tmp_path / k / 'last.ckpt', weights_only=True)['model'] for k in 'ab')
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(ValueError, match='epoch must be a whole number in'):
        warm_start(r, tmp_path / 'w.safetensors', 3, tmp_path / 'c')
