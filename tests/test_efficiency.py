"""qzoo.curves and qzoo.efficiency: tables with bootstrap intervals and verdicts, by parameters and by MACs,
plots, the README block, the CLI."""
import math
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import ROOT
from qzoo import curves, efficiency as eff
from qzoo.evaluation import Evaluation, Scores, efficiency_rows, load_split

DATA_ARGS = {'kind': 'circles', 'n_test': 200}
N = 200


def _labels():
    ds, _ = load_split('synthetic', DATA_ARGS)
    return ds.test.y.numpy()


def _correct(rate, seed):
    """A 0/1 vector with exactly round(rate * N) ones at seeded positions."""
    out = np.zeros(N, np.uint8)
    out[np.random.default_rng(seed).permutation(N)[:int(round(rate * N))]] = 1
    return out


def _job(arch, neuron, params, correct, seed=0, experiment='circles', macs=None):
    y = _labels()
    scores = Scores('classification', 2, dict(label=y, pred=np.where(correct == 1, y, 1 - y),
                                              correct=correct.astype(np.uint8)))
    scores.metrics = {m: float(scores.metric(m)[0]) for m in ('top1', 'macro_f1')}
    macs = params if macs is None else macs
    rec = SimpleNamespace(group=f'{arch}.{experiment}', seed=seed, neuron=neuron, macs=macs, primary_metric='top1',
                          test=dict(scores.metrics), training=None)
    row = dict(param_count=params, macs=macs, neuron=neuron, model=arch)
    return curves.Job(f'{arch}.{experiment}-s{seed}', 'synthetic-circles-d2', 'synthetic', dict(DATA_ARGS), 'main', rec,
                   1, Evaluation(row, scores))


def _table(jobs, reps=400):
    return curves.table_for('synthetic-circles-d2', jobs, reps, 0)


def _rows(t):
    return {r['model']: r for r in t['rows']}


def test_saving_of_a_model_that_matches_a_larger_one_is_exact_but_one_seed_establishes_nothing():
    b = _correct(0.9, 1)
    t = _table([_job('small', 'linear', 100, _correct(0.7, 0)), _job('big', 'linear', 10_000, b),
                _job('quad', 'fan', 1000, b.copy())])
    q = _rows(t)['quad']
    assert q['params_saved'] == pytest.approx(0.9) and q['conv_params_at_equal_metric'] == pytest.approx(10_000)
    # paired: the quadratic model and 'big' score the same examples in every replicate -> p_C = 10,000 always
    assert q['params_saved_lo'] == pytest.approx(0.9) and q['params_saved_hi'] == pytest.approx(0.9)
    # the interval excludes 0, but with one seed per group training variation is not measured
    assert not q['_saved'].established and q['params_saved_verdict'] == curves.ONE_SEED
    assert any('+90.0% [+90.0%, +90.0%] **not established** (one seed: training variation not measured)' in line
               for line in eff.table_markdown(t))
    assert q['metric_gain_at_equal_params'] == pytest.approx(10.0)          # 90 - (70 + 90) / 2 at log-midpoint
    assert q['gain_lo'] > 0 and not q['_gain'].established
    assert 'not established: one seed' in eff.summary_sentence(t)
    # the point estimates are the plain computation (efficiency_rows on the plain means)
    plain = {g['group']: g for g in efficiency_rows(
        [dict(group=r['group'], params=r['params'], mean=r['mean'], quadratic=r['family'] == 'quadratic')
         for r in t['rows']], 'top1')}
    assert plain['quad.circles']['params_saved'] == q['params_saved']
    assert _rows(t)['big']['mean'] == 90.0 and _rows(t)['big']['mean_lo'] < 90.0 < _rows(t)['big']['mean_hi']


def test_a_verdict_on_groups_of_several_seeds_is_plainly_established():
    b = _correct(0.9, 1)
    jobs = [_job(a, n, p, v, seed=s) for a, n, p, v in (('small', 'linear', 100, _correct(0.7, 0)),
                                                         ('big', 'linear', 10_000, b), ('quad', 'fan', 1000, b))
            for s in (0, 1)]
    q = _rows(_table(jobs))['quad']
    assert q['n_seeds'] == 2 and q['params_saved_verdict'] == 'established' and q['params_saved_lo'] == pytest.approx(0.9)


def test_identical_models_give_a_zero_width_interval_at_zero_not_established():
    b = _correct(0.9, 1)
    t = _table([_job('small', 'linear', 100, _correct(0.7, 0)), _job('big', 'linear', 10_000, b),
                _job('quad', 'fan', 10_000, b.copy())])
    q = _rows(t)['quad']
    assert q['params_saved'] == 0.0 and q['params_saved_lo'] == 0.0 and q['params_saved_hi'] == 0.0
    assert not q['_saved'].established and q['params_saved_verdict'] == 'not established (the interval contains 0)'
    md = '\n'.join(eff.table_markdown(t))
    assert '+0.0% [+0.0%, +0.0%] **not established**' in md


def test_undefined_savings_are_not_established_and_say_why():
    t = _table([_job('small', 'linear', 100, _correct(0.7, 0)), _job('big', 'linear', 10_000, _correct(0.8, 1)),
                _job('quad', 'fan', 1000, _correct(1.0, 2))])
    q = _rows(t)['quad']
    assert q['params_saved'] is None and q['params_saved_defined'] == 0.0
    assert q['params_saved_verdict'] == 'not established (better than every conventional model in 100% of resamples)'
    assert q['_gain'].text == curves.ONE_SEED and q['metric_gain_at_equal_params'] == pytest.approx(25.0)
    sentence = eff.summary_sentence(t)
    assert sentence.startswith('**Synthetic circles, 2-D** (test top-1 accuracy, 200 test examples, 1 seed): ')
    assert ('parameters saved at equal top-1 accuracy — established for none of 1 (quad: better than every '
            'conventional model in 100% of resamples)') in sentence
    assert 'gain at equal parameters (points) — established for none of 1 (quad +25.00 [' in sentence
    assert sentence.endswith('] not established: one seed).')


def test_seeds_are_resampled_and_widen_the_interval():
    one = _table([_job('a', 'linear', 100, _correct(0.8, 0))])
    seeds = _table([_job('a', 'linear', 100, _correct(r, s), seed=s) for s, r in enumerate((0.6, 0.8, 1.0))])
    r1, r3 = _rows(one)['a'], _rows(seeds)['a']
    assert r3['n_seeds'] == 3 and r3['mean'] == pytest.approx(80.0) and r3['std'] == pytest.approx(20.0)
    assert (r3['mean_hi'] - r3['mean_lo']) > 3 * (r1['mean_hi'] - r1['mean_lo'])
    assert r3['checkpoints'] == 'a.circles-s0 a.circles-s1 a.circles-s2'


def test_tables_plots_and_summary_are_deterministic(tmp_path):
    jobs = [_job('small', 'linear', 100, _correct(0.7, 0)), _job('big', 'linear', 10_000, _correct(0.85, 1)),
            _job('quad', 'fan', 1000, _correct(0.84, 2))]
    t1, t2 = _table(jobs), _table(jobs)
    assert eff.markdown([t1], 400, 0) == eff.markdown([t2], 400, 0)
    assert eff.readme_block([t1], 400) == eff.readme_block([t2], 400)
    curves.plot(t1, tmp_path / 'a.png')
    curves.plot(t2, tmp_path / 'b.png')
    assert (tmp_path / 'a.png').read_bytes() == (tmp_path / 'b.png').read_bytes()
    eff.write_csv([t1], tmp_path / 'a.csv')
    eff.write_csv([t2], tmp_path / 'b.csv')
    assert (tmp_path / 'a.csv').read_text() == (tmp_path / 'b.csv').read_text()
    assert 'params_saved_lo' in (tmp_path / 'a.csv').read_text().splitlines()[0]


def test_plot_has_a_human_title_interval_bars_and_no_overlapping_tick_labels():
    params = [68_786, 153_766, 272_474, 466_906, 611_074, 661_338, 855_770]    # the CIFAR ResNets
    jobs = [_job(f'r{i}', 'linear', p, _correct(0.7 + 0.02 * i, i)) for i, p in enumerate(params)]
    t = _table(jobs)
    fig = curves.figure(t)
    fig.canvas.draw()
    ax = fig.axes[0]
    assert ax.get_title().startswith('Synthetic circles, 2-D')
    for axis in (ax.xaxis, ax.yaxis):
        boxes = [lab.get_window_extent() for lab in axis.get_ticklabels(which='both')
                 if lab.get_visible() and lab.get_text()]
        assert len(boxes) >= 2
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                assert not boxes[i].overlaps(boxes[j]), [lab.get_text() for lab in axis.get_ticklabels()]
    assert [lab.get_text() for lab in ax.xaxis.get_ticklabels() if lab.get_text()] == ['50k', '100k', '200k', '500k',
                                                                                      '1M']
    assert len(ax.containers) == 1 and ax.containers[0].has_yerr                # interval bars
    renderer = fig.canvas.get_renderer()
    labels = [a.get_window_extent(renderer) for a in ax.texts]
    assert sorted(a.get_text() for a in ax.texts) == sorted(f'r{i}' for i in range(len(params)))
    assert not any(labels[i].overlaps(labels[j]) for i in range(len(labels)) for j in range(i + 1, len(labels)))
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_cwru_design_uses_blocks_of_overlapping_windows():
    ds, _ = load_split('cwru', {'snr_db': -6, 'train_stride': 256, 'eval_stride': 256})
    d = curves.design_for(ds)
    assert d.block == 8 and len(d.members) == 10 and d.n == len(ds.test) == 974
    starts = ds.test.meta['start'].numpy()
    for m in d.members:                                    # each segment: one class, windows in time order
        assert len(set(ds.test.y.numpy()[m])) == 1 and (np.diff(starts[m]) == 256).all()
    non, _ = load_split('cwru', {'snr_db': -6, 'train_stride': 256, 'eval_stride': 2048})
    assert curves.design_for(non).block == 1 and curves.design_for(non).n == len(non.test)
    assert curves.human_name(ds) == 'CWRU bearings, 0 HP, SNR −6 dB'
    assert curves.condition(ds) == 'test windows of 2048 samples at stride 256'


def test_replace_block_rewrites_only_between_the_markers():
    text = f'intro\n{eff.BEGIN}\nold\n{eff.END}\noutro\n'
    out = eff.replace_block(text, 'new line\n')
    assert out == f'intro\n{eff.BEGIN}\nnew line\n{eff.END}\noutro\n'
    assert eff.replace_block(out, 'new line\n') == out
    with pytest.raises(ValueError, match='exactly one'):
        eff.replace_block('no markers', 'x')


def _main_exit(*args):
    with pytest.raises(SystemExit) as e:
        eff.main(list(args))
    return e.value.code


def test_unknown_dataset_is_a_usage_error_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'efficiency.md').write_text('previous results')
    assert _main_exit('--dataset', 'cwur', '--out', str(out)) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'cwur'; did you mean cwru-0hp-clean-tr256-ev256, cwru-0hp-snr-6db-tr256-ev256?" in err
    assert sorted(p.name for p in out.iterdir()) == ['efficiency.md']
    assert (out / 'efficiency.md').read_text() == 'previous results'
    assert _main_exit('--dataset', 'synthetic*', '--readme', str(tmp_path / 'README.md'), '--out', str(out)) == 2
    assert '--readme summarises every dataset' in capsys.readouterr().err
    (tmp_path / 'README.md').write_text('no markers here')
    assert _main_exit('--readme', str(tmp_path / 'README.md'), '--out', str(out)) == 2
    assert 'must hold exactly one <!-- results:begin -->' in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ['efficiency.md']



@pytest.mark.parametrize('task', ['classification', 'segmentation', 'regression'])
def test_resampled_metrics_equal_the_weighted_metrics(task):
    """The bootstrap's gather/bincount computation gives Scores.metric's numbers for the same draws."""
    from qzoo import stats
    rng = np.random.default_rng(0)
    n = 120
    if task == 'classification':
        y, pred = rng.integers(0, 7, n), rng.integers(0, 9, n)        # classes 7, 8 predicted, never present
        s = Scores(task, 9, dict(label=y, pred=pred, correct=(y == pred).astype(np.uint8)))
        names = ['top1', 'macro_f1']
    elif task == 'segmentation':
        s = Scores(task, 1, dict(iou=rng.random(n), dice=rng.random(n)))
        names = ['iou', 'dice']
    else:
        s = Scores(task, 1, dict(sq_err=rng.random(n) ** 2))
        names = ['mse']
    idx = next(stats.index_chunks(stats.Design.iid(n), 50, 0, task))
    w = stats.counts_of(idx, n)
    for name in names:
        np.testing.assert_allclose(curves.resampled_metric(s, name, idx), s.metric(name, w), rtol=1e-12, atol=1e-12)
    whole = np.arange(n)[None]
    for name in names:
        assert curves.resampled_metric(s, name, whole)[0] == pytest.approx(s.metric(name)[0], rel=1e-12)


def test_headline_pairs_the_best_conventional_with_the_best_quadratic_of_at_most_its_size():
    big = _correct(0.9, 1)
    mid = big.copy()
    mid[np.flatnonzero(big)[:10]] = 0     # qsmall errs on everything 'big' errs on, and 10 more: 85%
    jobs = [_job(a, n, p, v, seed=s) for a, n, p, v in (
        ('small', 'linear', 100, _correct(0.7, 0)), ('big', 'linear', 10_000, big),
        ('qsmall', 'fan', 500, mid), ('qbig', 'fan', 20_000, _correct(1.0, 3))) for s in (0, 1)]
    t = _table(jobs)
    h = t['headline']
    # qbig is better but larger than 'big': the headline compares qsmall (500 <= 10,000 params)
    assert (h['conventional'], h['quadratic'], h['fits']) == ('big.circles', 'qsmall.circles', True)
    assert h['diff'] == pytest.approx(-5.0) and h['params_ratio'] == pytest.approx(0.05)
    assert h['lo'] <= -5.0 <= h['hi'] and h['hi'] < 0 and h['verdict'].established and h['verdict'].sign == -1
    row = eff.headline_row(t)
    assert '`big` (10,000 params, 2 seeds): 90.00 [' in row and '`qsmall` (500 params, 2 seeds): 85.00 [' in row
    assert '| 0.05× | −5.00 [' in row and '**quadratic worse**' in row
    # one seed per group: the same difference is not established
    one = _table([j for j in jobs if j.spec.endswith('-s0')])
    assert one['headline']['verdict'].text == curves.ONE_SEED and '**quadratic' not in eff.headline_row(one)


def test_headline_without_a_quadratic_model_shows_the_best_conventional_one():
    t = _table([_job('small', 'linear', 100, _correct(0.7, 0)), _job('big', 'linear', 10_000, _correct(0.9, 1))])
    assert t['headline'] is None
    row = eff.headline_row(t)
    assert '`big` (10,000 params, 1 seed): 90.00' in row and 'no quadratic model published yet' in row


def test_the_macs_axis_reads_the_frontier_of_metric_against_log_macs():
    """A quadratic model matching the large conventional one with a tenth of its parameters but 3x its MACs per
    parameter saves 90% of the parameters and 70% of the MACs; a second table per dataset shows it by compute."""
    b = _correct(0.9, 1)
    jobs = [_job(a, n, p, v, seed=s, macs=m) for a, n, p, m, v in (
        ('small', 'linear', 100, 100, _correct(0.7, 0)), ('big', 'linear', 10_000, 10_000, b),
        ('quad', 'fan', 1000, 3000, b), ('qbig', 'fan', 2000, 40_000, _correct(0.8, 2))) for s in (0, 1)]
    t = _table(jobs)
    q, qbig = _rows(t)['quad'], _rows(t)['qbig']
    assert q['params_saved'] == pytest.approx(0.9) and q['macs_saved'] == pytest.approx(0.7)
    assert q['conv_macs_at_equal_metric'] == pytest.approx(10_000)
    assert q['macs_saved_lo'] == pytest.approx(0.7) and q['macs_saved_hi'] == pytest.approx(0.7)   # paired: exact
    assert q['macs_saved_verdict'] == 'established' and q['_macs_saved'].established
    # 3,000 MACs lie between the conventional points (100, 70%) and (10,000, 90%), linear in log-MACs
    expect = 90.0 - (70.0 + 20.0 * math.log(3000 / 100) / math.log(10_000 / 100))
    assert q['metric_gain_at_equal_macs'] == pytest.approx(expect)
    # 40,000 MACs is beyond every conventional model: no gain at equal MACs, and the note says why
    assert qbig['metric_gain_at_equal_macs'] is None and qbig['macs_gain_verdict'].startswith('not established (MACs')
    assert "40,000 MACs is outside the conventional models' range (100..10,000)" in qbig['macs_note']
    assert qbig['metric_gain_at_equal_params'] is not None      # 2,000 params is inside the parameter range
    md = eff.table_markdown(t)
    head = md.index('### Synthetic circles, 2-D by compute (`synthetic-circles-d2`, test top1 against MACs per example)')
    rows = [line for line in md[head:] if line.startswith('| ')]
    assert rows[0] == ('| model | family | params | MACs | MACs / param | top1 [95% CI] | MACs saved at equal top1 '
                       '[95% CI] | gain at equal MACs [95% CI] | note |')
    assert [r.split(' | ')[0] for r in rows[1:]] == ['| small.circles', '| big.circles', '| quad.circles',
                                                     '| qbig.circles']
    assert rows[3].startswith('| quad.circles | quadratic | 1,000 | 3,000 | 3.00 | 90.00 [') and \
        '| +70.0% [+70.0%, +70.0%] established |' in rows[3]
    # the curve's own verdict rule: one seed per group establishes nothing
    one = _table([j for j in jobs if j.spec.endswith('-s0')])
    assert _rows(one)['quad']['macs_saved_verdict'] == curves.ONE_SEED


def test_the_csv_has_the_macs_columns(tmp_path):
    t = _table([_job('small', 'linear', 100, _correct(0.7, 0)), _job('big', 'linear', 10_000, _correct(0.9, 1)),
                _job('quad', 'fan', 1000, _correct(0.9, 1), macs=3000)])
    eff.write_csv([t], tmp_path / 'e.csv')
    import csv
    rows = list(csv.DictReader((tmp_path / 'e.csv').open()))
    q = next(r for r in rows if r['model'] == 'quad')
    assert float(q['macs_saved']) == pytest.approx(0.7) and q['macs_saved_verdict'] == curves.ONE_SEED
    assert next(r for r in rows if r['model'] == 'big')['macs_saved'] == ''
    assert eff.macs_markdown(_table([_job('small', 'linear', 100, _correct(0.7, 0))])) == []


def test_plot_labels_of_a_model_shared_with_an_external_checkpoint():
    """akamaster/resnet20's architecture is also called resnet20: with it available offline, labelling the published
    resnet20 looked for an experiment in 'akamaster/resnet20' and raised IndexError (make eval died at its first
    plot). External checkpoints and compared models are labelled by their own names and tell no experiment apart."""
    rows = [dict(model='resnet20', group='resnet20.cifar10-jpeg75-e40', family='conventional'),
            dict(model='resnet20', group='akamaster/resnet20', family='external'),
            dict(model='resnet20', group='my-run', family='user'),
            dict(model='qresnet20_w8', group='qresnet20_w8.cifar10-jpeg75-e40-cpu', family='quadratic', diverged=1)]
    assert [curves.plot_label(r, rows) for r in rows] == ['resnet20', 'akamaster/resnet20', 'my-run', 'qresnet20_w8 †']
