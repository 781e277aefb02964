"""qzoo compare / qzoo.compare: a model of one's own on the zoo's curves, with the numbers `make eval` computes,
by parameters and by MACs, a plot, and a clear error for every input that cannot be compared."""
import re
import shutil

import pytest

import qzoo
from qzoo import comparison, curves, hub, stats
from qzoo.curves import AXES
from qzoo.evaluation import DataMismatchError, EvalCache, data_settings, evaluate_spec
from qzoo.weights import all_weights

REPS = 300
CIRCLES = 'synthetic-circles-d2'
SPHERES = 'synthetic-spheres-d10'


@pytest.fixture(scope='module')
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp('qzoo-cache')


@pytest.fixture(autouse=True)
def cache(cache_root, monkeypatch):
    """One evaluation cache for the module's tests (the zoo's checkpoints are scored once), the command line's too
    ($QZOO_CACHE/eval); nothing is written to the user's cache."""
    monkeypatch.setenv('QZOO_CACHE', str(cache_root))
    return EvalCache(cache_root / 'eval')


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """A run folder of `qzoo train`: a quadratic MLP with two hidden neurons, a few epochs on the 10-D spheres."""
    from qzoo.engine import train
    out = tmp_path_factory.mktemp('runs') / 'my-qmlp'
    train(dict(name='my-qmlp', model='qmlp', model_args={'hidden': [2]}, data='synthetic',
               data_args={'kind': 'spheres', 'dim': 10}, epochs=3, batch_size=100, optimizer='adamw', lr=1e-2,
               quad_lr_scale=1.0), out, progress=False)
    return out


def _saved(tmp_path, name, results=None, **model_args):
    """A folder written by qzoo.hub.save_pretrained (untrained weights), with or without a training record."""
    model = qzoo.create_model(name, **model_args)
    return hub.save_pretrained(model, tmp_path / name, results=results)


def _intro(text):
    """The comparison's opening paragraph on one line (it is wrapped at 100 columns)."""
    return ' '.join(text.split('\n\n')[0].split())


def _cli(capsys, *args):
    code = comparison.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# ---- the numbers -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize('axis', list(AXES))
def test_a_published_checkpoint_gets_the_numbers_the_efficiency_table_computes_for_it(cache, axis):
    """make eval's table, computed here from the same records (the dataset's conventional checkpoints and this one
    checkpoint as a group of one seed), holds exactly the numbers qzoo compare prints for the checkpoint."""
    spec, group = 'qmlp_h4.synthetic-circles-d2-s1', 'qmlp_h4.synthetic-circles-d2'
    records = all_weights()
    jobs = [j for j in curves.plan(records, [CIRCLES], (), print) if j.role == 'main'
            and (j.record.neuron == 'linear' or j.spec == spec)]
    curves.run_jobs(jobs, 'cpu', cache, print, 1, progress=False).close()
    row = {r['group']: r for r in curves.table_for(CIRCLES, jobs, REPS, 0)['rows']}[group]
    c = qzoo.compare(spec, axis=axis, replicates=REPS, cache=cache, progress=False)
    m, ax = c.models[0], AXES[axis]
    assert (c.dataset, m.label, m.params, m.macs) == (CIRCLES, spec, row['params'], row['macs'])
    assert (m.metric.point, m.metric.lo, m.metric.hi) == (row['mean'], row['mean_lo'], row['mean_hi'])
    assert m.saved == stats.Interval(row[ax.saved], row[f'{ax.saved}_lo'], row[f'{ax.saved}_hi'],
                                     row[f'{ax.saved}_defined'])
    assert m.gain == stats.Interval(row[ax.gain], row[f'{ax.gain_ci}_lo'], row[f'{ax.gain_ci}_hi'],
                                    row[f'{ax.gain_ci}_defined'])
    assert (m.saved_verdict, m.gain_verdict) == (row[ax.verdicts[0]], row[ax.verdicts[1]])
    assert m.saved.point is not None and m.gain.point is not None and m.curve_at_equal_metric == row[ax.at_equal]
    # the table's cell, as results/efficiency.md prints it, is the line qzoo compare prints (without the bold)
    cell = curves._verdict_cell(row[ax.saved], row[f'{ax.saved}_lo'], row[f'{ax.saved}_hi'], curves._pct,
                                row[ax.verdicts[0]])
    assert f'{ax.short} saved at equal top-1 accuracy: {cell.replace("**", "")}' in c.text()
    assert {p.group for p in c.curve} == {j.record.group for j in jobs if j.record.neuron == 'linear'}


def test_one_seed_is_stated_and_establishes_nothing(cache):
    """qmlp_h2 (seed 0) is better than the conventional curve at equal parameters by an interval that excludes 0,
    but a model brought here is one seed: the verdict says so, and so does the text."""
    c = qzoo.compare('qmlp_h2.synthetic-circles-d2-s0', replicates=REPS, cache=cache, progress=False)
    m = c.models[0]
    assert m.seeds == 1 and m.gain.lo > 0 and not m.gain_verdict.established
    assert m.gain_verdict.text == curves.ONE_SEED
    assert 'Each model here is one seed: its interval covers test-set sampling only' in _intro(c.text())
    assert re.search(r'^qmlp_h2.synthetic-circles-d2-s0: qmlp_h2, quadratic \(fan\), 36 params, [\d,]+ MACs, one seed\n'
                     r'  scored on: +synthetic \{"kind": "circles"\} \(the record\'s data_spec\)\n', c.text(), re.M)


# ---- the command -----------------------------------------------------------------------------------------------
def test_a_run_folder_is_compared_on_its_own_dataset_with_a_plot(run, cache, capsys, tmp_path):
    png = tmp_path / 'plots' / 'mine.png'
    code, out, err = _cli(capsys, run, '--dataset', SPHERES, '--plot', png, '--bootstrap', REPS)
    assert code == 0, err
    assert _intro(out).startswith(f"Synthetic concentric spheres, 10-D (`{SPHERES}`): test top-1 accuracy on 1,000 "
                                  "examples, against the zoo's conventional frontier of top-1 accuracy against "
                                  'log-parameters (5 published groups, 28–418 params, 5 seeds each).')
    assert "my-qmlp: qmlp, quadratic (fan), 84 params, 88 MACs, one seed\n" in out
    assert "  scored on:  " in out and "synthetic {\"dim\": 10, \"kind\": \"spheres\"} (its config.json's data_spec)" in out
    for what in ('test top-1 accuracy:', 'params saved at equal top-1 accuracy:', 'gain at equal params:'):
        line = next(x for x in out.splitlines() if x.strip().startswith(what))
        assert ('[' in line or 'not established (' in line) and ('established' in line or what.startswith('test'))
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert 'my-qmlp' in err and f'bootstrap {SPHERES}' in err and '%|' in err     # the progress line
    code, out, _ = _cli(capsys, run, '--axis', 'macs', '--bootstrap', REPS)
    assert code == 0 and 'against log-MACs per example (5 published groups, 24–384 MACs' in _intro(out)
    assert 'MACs saved at equal top-1 accuracy:' in out and 'gain at equal MACs:' in out


def test_the_plot_highlights_and_labels_the_models(run, cache):
    c = qzoo.compare([run, 'mlp_h8.synthetic-spheres-d10-s1'], replicates=REPS, cache=cache, progress=False)
    fig = curves.figure(c.table, 'macs')
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert 'my-qmlp' in texts and 'mlp_h8.synthetic-spheres-d10-s1' in texts
    assert any('your model, one seed (95% CI)' == t.get_text() for t in ax.get_legend().get_texts())
    stars = [cont for cont in ax.containers if cont.lines[0].get_marker() == '*']
    assert len(stars) == 1 and stars[0].has_yerr
    assert sorted(stars[0].lines[0].get_xdata()) == sorted(m.macs for m in c.models)
    assert ax.get_xlabel() == 'MACs per example (log scale)'
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_scoring_reports_its_progress_batch_by_batch(tmp_path):
    seen = []
    ev = evaluate_spec('qcnn_w8.cwru-clean-s1', cache=EvalCache(tmp_path), progress=seen.append, batch_size=300)
    assert seen == [300, 300, 300, 74] and sum(seen) == ev.scores.n
    again = []
    assert evaluate_spec('qcnn_w8.cwru-clean-s1', cache=EvalCache(tmp_path), progress=again.append,
                         batch_size=300).cached and again == []


def test_a_run_folder_records_its_data_settings(run):
    name, args, how = data_settings(str(run))
    assert (name, args, how) == ('synthetic', {'kind': 'spheres', 'dim': 10}, "its config.json's data_spec")


# ---- the errors ------------------------------------------------------------------------------------------------
def test_a_conventional_model_is_said_to_be_one_and_placed_on_the_same_curve(cache, capsys):
    code, out, _ = _cli(capsys, 'mlp_h8.synthetic-spheres-d10-s1', '--bootstrap', REPS)
    assert code == 0
    assert 'mlp_h8.synthetic-spheres-d10-s1: mlp_h8, conventional, 106 params, 96 MACs, one seed\n' in out
    assert ('  a conventional model: it is placed on the conventional curve, and "params saved" is its distance to '
            "the frontier (negative: the zoo's conventional models reach its top-1 accuracy with fewer parameters)\n"
            "  a seed of the curve's own group mlp_h8.synthetic-spheres-d10: the frontier it is read against includes "
            'it\n') in out


def test_a_model_of_another_task_is_refused(tmp_path, capsys):
    folder = _saved(tmp_path, 'mlp_h4', dict(task='regression', dataset='synthetic-interaction-d2',
                                             data_spec=dict(name='synthetic', args=dict(kind='interaction'))),
                    in_chans=2, num_classes=1)
    with pytest.raises(DataMismatchError) as e:
        qzoo.compare(folder, CIRCLES, progress=False)
    assert str(e.value).startswith(f'{folder} is a regression model (trained on synthetic-interaction-d2), but '
                                   f'{CIRCLES} is a classification dataset: the model cannot be placed on its curve. '
                                   'Fix: compare it on a regression dataset; datasets with a published conventional '
                                   'curve: cifar10-jpeg75, ')
    code, _, err = _cli(capsys, folder, '--dataset', CIRCLES)
    assert code == 2 and err == f'error: {e.value}\n'


def test_a_model_that_cannot_take_the_inputs_is_refused(tmp_path, cache):
    folder = _saved(tmp_path, 'mlp_h4', in_chans=3, num_classes=2)   # no training record: the zoo's settings
    with pytest.raises(DataMismatchError, match=f'{folder} \\(mlp_h4, input_size .*\\) cannot take the inputs of '
                                                f'{CIRCLES} \\(shape \\(2,\\)\\)'):
        qzoo.compare(folder, CIRCLES, cache=cache, progress=False)


def test_a_model_scored_on_another_test_set_is_refused_with_the_fix(run):
    with pytest.raises(DataMismatchError) as e:
        qzoo.compare(run, 'synthetic-spheres-d50', progress=False)
    msg = str(e.value)
    assert msg.startswith(f'{run} would be scored on the test set of {SPHERES} (1,000 examples; data settings '
                          'synthetic {"dim": 10, "kind": "spheres"}, from its config.json\'s data_spec), not on the '
                          "one the zoo's models of synthetic-spheres-d50 were scored on")
    assert msg.endswith(f'so they must share the test set. Fix: --dataset {SPHERES}')


def test_a_dataset_without_a_conventional_curve_names_those_with_one(tmp_path):
    with_curve = comparison.datasets_with_curves()
    assert 'cifar10-jpeg75' in with_curve and CIRCLES in with_curve
    with pytest.raises(ValueError) as e:
        qzoo.compare('qmlp_h2.synthetic-spheres-d10-s0', 'cifar10', progress=False)
    assert str(e.value).startswith("the zoo has no published conventional curve for dataset 'cifar10'; did you mean "
                                   'cifar10-jpeg75? Datasets with one: ' + ', '.join(with_curve) + '.')
    folder = _saved(tmp_path, 'mlp_h4', dict(task='classification', dataset='synthetic-gaussians-d2',
                                             data_spec=dict(name='synthetic', args=dict(kind='gaussians', k=2))),
                    in_chans=2, num_classes=2)
    with pytest.raises(ValueError) as e:
        qzoo.compare(folder, progress=False)
    assert str(e.value) == (f"{folder} was trained on synthetic-gaussians-d2-k2 (its config.json's data_spec), and the "
                            "zoo has no published conventional curve for dataset 'synthetic-gaussians-d2-k2'. Datasets "
                            f"with one: {', '.join(with_curve)}. Fix: --dataset NAME (one of those), or --data and "
                            '--data-arg for the data settings that give one of them')


def test_weights_that_fail_to_load_give_the_loaders_message(run, tmp_path, capsys):
    broken = tmp_path / 'broken'
    shutil.copytree(run, broken)
    data = bytearray((broken / 'model.safetensors').read_bytes())
    data[-1] ^= 0xFF
    (broken / 'model.safetensors').write_bytes(bytes(data))
    with pytest.raises(qzoo.CheckpointError) as loader:
        hub.from_pretrained(broken)
    code, out, err = _cli(capsys, broken, '--no-cache')
    assert code == 2 and out == '' and err.endswith(f'error: {loader.value}\n')


def test_weights_without_a_record_need_a_dataset_and_options_are_checked(tmp_path):
    folder = _saved(tmp_path, 'mlp_h4', in_chans=2, num_classes=2)
    with pytest.raises(ValueError, match=f'^{folder} does not record the data it was trained on .*: name the dataset '
                                         'to compare it on, --dataset NAME \\(datasets with a published conventional '
                                         'curve: cifar10-jpeg75, '):
        qzoo.compare(folder, progress=False)
    with pytest.raises(ValueError, match="axis must be one of params, macs"):
        qzoo.compare(folder, CIRCLES, axis='flops')
    with pytest.raises(ValueError, match="plot writes a PNG: give a file name ending in .png, got 'plot.pdf'"):
        qzoo.compare(folder, CIRCLES, plot='plot.pdf')
    with pytest.raises(qzoo.CheckpointError, match="cannot resolve weights 'no-such-run'"):
        qzoo.compare('no-such-run', CIRCLES, progress=False)


@pytest.mark.skipif(__import__('torch').cuda.is_available(), reason='checks the refusal on a machine without CUDA')
def test_a_device_this_machine_lacks_and_an_unusable_plot_path_are_error_lines_before_any_scoring(tmp_path, capsys):
    """--device cuda without a GPU ended in a torch traceback after loading; a --plot below a file failed only after
    the scoring."""
    with pytest.raises(SystemExit) as e:
        _cli(capsys, 'mlp_h4.synthetic-circles-d2-s0', '--device', 'cuda')
    err = capsys.readouterr().err
    assert e.value.code == 2 and "device 'cuda'" in err and 'Traceback' not in err
    (tmp_path / 'file').write_text('mine')
    code, out, err = _cli(capsys, 'mlp_h4.synthetic-circles-d2-s0', '--plot', tmp_path / 'file' / 'p.png')
    assert code == 2 and err.startswith(f"error: --plot {tmp_path / 'file' / 'p.png'}: ") and 'Traceback' not in err
    assert out == '' and 'scor' not in err and (tmp_path / 'file').read_text() == 'mine'
