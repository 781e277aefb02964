"""Accuracy-per-parameter arithmetic and the validate/efficiency outputs."""
import csv
import json
import math
import re
import subprocess
import sys

import pytest

from conftest import ROOT, need_shared
from qzoo.evaluation import efficiency_rows, frontier, metric_at_params, params_at_metric


def test_frontier_keeps_only_improvements():
    pts = [(100, 80.0), (200, 79.0), (300, 85.0), (300, 86.0), (1000, 90.0)]
    assert frontier(pts) == [(100, 80.0), (300, 86.0), (1000, 90.0)]
    assert frontier([(10, 0.5), (20, 0.7), (40, 0.2)], higher=False) == [(10, 0.5), (40, 0.2)]


def test_interpolation_is_linear_in_log_params():
    curve = [(100, 80.0), (10_000, 90.0)]
    assert params_at_metric(curve, 85.0) == pytest.approx(1000.0)        # halfway in log10: 10^3
    assert metric_at_params(curve, 1000) == pytest.approx(85.0)
    assert params_at_metric(curve, 95.0) is None and params_at_metric(curve, 70.0) is None
    assert metric_at_params(curve, 50) is None and metric_at_params(curve, 20_000) is None
    assert metric_at_params(curve, 20_000, max_params=40_000) == 90.0   # larger models evaluated, none better
    assert params_at_metric([(10, 0.5), (1000, 0.1)], 0.3) == pytest.approx(100.0)  # lower-is-better curve


def _g(name, params, mean, quadratic=False, external=False):
    return dict(group=name, params=params, mean=mean, std=0.0, quadratic=quadratic, external=external)


def test_params_saved_and_gain():
    groups = [_g('c1', 100, 80.0), _g('c2', 10_000, 90.0), _g('ext', 500, 99.0, external=True),
              _g('q', 500, 85.0, quadratic=True), _g('qbig', 50_000, 95.0, quadratic=True)]
    rows = {r['group']: r for r in efficiency_rows(groups, 'top1')}
    q = rows['q']
    assert q['conv_params_at_equal_metric'] == pytest.approx(1000.0)      # external excluded from the curve
    assert q['params_saved'] == pytest.approx(0.5)
    assert q['metric_gain_at_equal_params'] == pytest.approx(85.0 - (80 + 10 * math.log(5) / math.log(100)))
    assert rows['qbig']['params_saved'] is None and 'better than every conventional model' in rows['qbig']['note']
    assert 'params_saved' not in rows['c1']


def test_validate_external_akamaster_through_url_and_hash_path(tmp_path):
    """The issue's acceptance figure: akamaster ResNet20 (from ../shared, through the real torch.hub
    cache + hash check) scores 81.03% top-1 on cifar10-jpeg75 test (full 10k images)."""
    src = need_shared('checkpoints', 'akamaster', 'resnet20-12fca82f.th')
    hub_dir = tmp_path / 'torch' / 'hub' / 'checkpoints'
    hub_dir.mkdir(parents=True)
    (hub_dir / src.name).write_bytes(src.read_bytes())
    out = tmp_path / 'val.csv'
    env = dict(__import__('os').environ, TORCH_HOME=str(tmp_path / 'torch'), QZOO_OFFLINE='1', PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, str(ROOT / 'eval' / 'validate.py'), '--data', 'cifar10-jpeg75',
                          '--weights', 'akamaster/resnet20', '--results-file', str(out)],
                         env=env, capture_output=True, text=True, check=True, timeout=600)
    row = json.loads(res.stdout.splitlines()[-1])
    assert row['top1'] == pytest.approx(81.03, abs=0.005) and row['param_count'] == 269_722
    assert row['dataset'] == 'cifar10-jpeg75' and row['split'] == 'test'
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:9] == ['model', 'top1', 'top1_err', 'top5', 'top5_err', 'param_count', 'img_size',
                                 'crop_pct', 'interpolation']
    assert {'dataset', 'split', 'neuron', 'macs', 'weights', 'sha256'} <= set(rows[0])
    assert rows[0]['sha256'].startswith('12fca82f')


# ---- per-example scores ----------------------------------------------------------------------------
from qzoo.errors import CheckpointError  # noqa: E402
from qzoo.evaluation import (DataMismatchError, EvalCache, Scores, data_settings, evaluate_spec,  # noqa: E402
                             load_split, score_split)
from qzoo.metrics import Metrics  # noqa: E402
from qzoo.weights import all_weights  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402


@pytest.mark.parametrize('name', ['mlp_h8.synthetic-circles-d2-s0', 'qmlp_h4.synthetic-interaction-d2-s0',
                                  'qcnn_w8.cwru-snr-6db-s0', 'unet_b4.dsb2018-96-s0'])
def test_per_example_scores_average_to_the_published_metrics(name):
    """Classification (correct/incorrect), regression (squared error), CWRU windows and DSB per-image
    IoU/Dice: the mean of the per-example scores is the metric, and the metric is the card's."""
    w = all_weights()[name]
    ev = evaluate_spec(name)                                        # the record's data_spec, no cache
    s = ev.scores
    assert s.n == len(load_split(w.data_spec['name'], w.data_spec['args'])[0].test)
    for metric, value in w.test.items():
        assert ev.row[metric] == pytest.approx(value, abs=1e-3), metric
        assert s.metric(metric)[0] == pytest.approx(s.metrics[metric], rel=1e-12, abs=1e-12)
    plain = {'classification': lambda: 100 * s.arrays['correct'].mean(),
             'segmentation': lambda: 100 * s.arrays['iou'].mean(),
             'regression': lambda: s.arrays['sq_err'].mean()}[w.task]()
    assert plain == pytest.approx(s.metrics[w.primary_metric], rel=1e-12)


def test_macro_f1_from_per_example_scores_equals_the_aggregate_with_absent_classes():
    torch.manual_seed(0)
    out = torch.randn(300, 7)
    y = torch.randint(0, 5, (300,))                   # classes 5 and 6 never occur (but may be predicted)
    m = Metrics('classification', 7, 'cpu')
    m.update(out, y)
    agg = m.compute()
    pred = out.argmax(1).numpy()
    s = Scores('classification', 7, dict(label=y.numpy(), pred=pred, correct=(pred == y.numpy()).astype(np.uint8),
                                         top5=(out.topk(5, 1).indices == y[:, None]).any(1).numpy().astype(np.uint8)),
               agg)
    s.check()
    assert s.metric('macro_f1')[0] == pytest.approx(agg['macro_f1'], rel=1e-12)
    s.arrays['correct'][0] ^= 1                        # a per-example score that disagrees is caught
    with pytest.raises(RuntimeError, match='differs from the aggregate'):
        s.check()


# ---- data settings and fit checks -------------------------------------------------------------------
def test_published_checkpoints_default_to_their_records_data_settings():
    name, args, how = data_settings('qcnn.cwru-snr-6db-s1', 'cwru', {'snr_db': -6})
    assert (name, args['eval_stride'], args['train_stride'], args['snr_db']) == ('cwru', 256, 256, -6)
    assert "record's data_spec" in how
    assert data_settings('qcnn.cwru-snr-6db-s1', data_args={'eval_stride': 2048})[1]['eval_stride'] == 2048
    assert data_settings('qcnn.cwru-snr-6db-s1', 'cwru', {'snr_db': -6}, use_record=False)[1] == {'snr_db': -6}
    with pytest.raises(ValueError, match='not a published checkpoint'):
        data_settings('runs/some-folder')


def test_validate_scores_a_cwru_checkpoint_as_its_card_does():
    """`--data cwru --data-arg snr_db=-6` used to take the loader's default test stride (2048) and
    score 93.44; the card's number is at stride 256."""
    w = all_weights()['qcnn.cwru-snr-6db-s1']
    row = evaluate_spec('qcnn.cwru-snr-6db-s1', 'cwru', {'snr_db': -6}).row
    assert row['top1'] == pytest.approx(w.test['top1'], abs=1e-3) and row['dataset'] == w.dataset


def test_a_regression_checkpoint_on_a_classification_set_is_refused():
    with pytest.raises(DataMismatchError) as e:
        evaluate_spec('qmlp_h4.synthetic-interaction-d2-s0', 'synthetic', {'kind': 'circles'})
    msg = str(e.value)
    assert 'regression checkpoint' in msg and 'classification dataset' in msg and "record's data_spec" in msg
    assert isinstance(e.value, ValueError) and isinstance(e.value, CheckpointError)


def test_a_model_with_other_classes_or_inputs_is_refused(tmp_path):
    import qzoo
    from qzoo.hub import save_pretrained
    folder = save_pretrained(qzoo.create_model('mlp_h2', num_classes=10, in_chans=2), tmp_path / 'ten')
    with pytest.raises(DataMismatchError, match=r'the dataset has 2 classes \(expected 2 logits\)'):
        evaluate_spec(str(folder), 'synthetic', {'kind': 'circles'})
    with pytest.raises(DataMismatchError, match='cannot take the inputs of synthetic-spheres-d10'):
        evaluate_spec(str(folder), 'synthetic', {'kind': 'spheres', 'dim': 10})


# ---- the evaluation cache ---------------------------------------------------------------------------
def test_cache_hits_misses_and_invalidation(tmp_path, monkeypatch):
    import qzoo
    from qzoo import evaluation
    from qzoo.hub import save_pretrained
    cache = EvalCache(tmp_path / 'eval')
    folder = save_pretrained(qzoo.create_model('mlp_h2'), tmp_path / 'm')
    args = {'kind': 'circles', 'n_test': 300}
    first = evaluate_spec(str(folder), 'synthetic', args, cache=cache)
    second = evaluate_spec(str(folder), 'synthetic', args, cache=cache)
    assert (first.cached, second.cached, cache.hits, cache.misses) == (False, True, 1, 1)
    assert second.row == first.row
    assert all(np.array_equal(first.scores.arrays[k], second.scores.arrays[k]) for k in first.scores.arrays)
    assert not evaluate_spec(str(folder), 'synthetic', dict(args, n_test=301), cache=cache).cached   # other data
    torch.manual_seed(1)
    save_pretrained(qzoo.create_model('mlp_h2'), folder)                                             # other weights
    changed = evaluate_spec(str(folder), 'synthetic', args, cache=cache)
    assert not changed.cached and changed.row['sha256'] != first.row['sha256']
    with monkeypatch.context() as m:
        m.setattr(evaluation, 'code_digest', lambda: 'other scoring code')                          # other code
        assert not evaluate_spec(str(folder), 'synthetic', args, cache=cache).cached
        assert evaluate_spec(str(folder), 'synthetic', args, cache=cache).cached
    assert evaluate_spec(str(folder), 'synthetic', args, cache=cache).cached
    from qzoo.models.mlp import MLP
    forward = MLP.forward
    with monkeypatch.context() as m:                                        # the model's code computes otherwise
        m.setattr(MLP, 'forward', lambda self, x: forward(self, x).flip(1))
        before = cache.stale
        flipped = evaluate_spec(str(folder), 'synthetic', args, cache=cache)
        assert not flipped.cached and cache.stale == before + 1
        assert flipped.row['top1'] == pytest.approx(100 - changed.row['top1'])
        assert evaluate_spec(str(folder), 'synthetic', args, cache=cache).cached                # its entry rewritten
    for p in (tmp_path / 'eval').rglob('*.npz'):                                                     # damaged entry
        p.write_bytes(b'not an npz')
    assert not evaluate_spec(str(folder), 'synthetic', args, cache=cache).cached
    assert evaluate_spec(str(folder), 'synthetic', args, cache=cache).cached                         # rewritten
    assert not evaluate_spec(str(folder), 'synthetic', args, cache=EvalCache(tmp_path / 'eval', refresh=True)).cached


def test_load_split_digest_follows_the_data():
    _, a = load_split('synthetic', {'kind': 'circles', 'n_test': 50})
    _, b = load_split('synthetic', {'kind': 'circles', 'n_test': 50, 'seed': 1})
    _, c = load_split('synthetic', {'n_test': 50, 'kind': 'circles'})
    assert a != b and a == c


# ---- the validate command ---------------------------------------------------------------------------
def test_validate_cli_keeps_the_good_rows_when_one_spec_fails(tmp_path):
    out = tmp_path / 'v.csv'
    env = dict(__import__('os').environ, PYTHONPATH=str(ROOT), QZOO_CACHE=str(tmp_path / 'cache'))
    res = subprocess.run([sys.executable, str(ROOT / 'eval' / 'validate.py'), '--weights',
                          'mlp_h8.synthetic-circles-d2-s0', 'qmlp_h4.synthetic-interaction-d2-s0', 'no-such-weights',
                          'qmlp_h2.synthetic-moons-d2-s0', '--data', 'synthetic', '--results-file', str(out)],
                         env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 1, res.stderr
    assert 'FAILED qmlp_h4.synthetic-interaction-d2-s0: DataMismatchError' not in res.stderr     # own data_spec
    assert 'FAILED no-such-weights: CheckpointError' in res.stderr and '1 of 4 failed' in res.stderr
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [r['weights'] for r in rows] == ['mlp_h8.synthetic-circles-d2-s0', 'qmlp_h4.synthetic-interaction-d2-s0',
                                            'qmlp_h2.synthetic-moons-d2-s0']
    assert rows[0]['dataset'] == 'synthetic-circles-d2' and rows[2]['dataset'] == 'synthetic-moons-d2'
    assert float(rows[2]['top1']) == pytest.approx(all_weights()['qmlp_h2.synthetic-moons-d2-s0'].test['top1'])
    assert "synthetic {\"kind\": \"moons\"} (the record's data_spec)" in res.stderr


def test_every_validate_help_example_names_published_weights_and_valid_options():
    """Each example in `validate --help` parses, names published (or external) weights, and resolves
    to data settings the dataset accepts (running them all is the slow check done by hand)."""
    import shlex
    from qzoo import external
    from qzoo.data import options
    from qzoo.evaluation import VALIDATE_HELP, _validate_parser
    examples = [line.strip()[len('{prog} '):] for line in VALIDATE_HELP.splitlines()
                if line.strip().startswith('{prog} ')]
    assert len(examples) >= 4
    ap = _validate_parser()
    for ex in examples:
        a = ap.parse_args(shlex.split(ex))
        over = {k: v for k, _, v in (item.partition('=') for item in a.data_arg)}
        for spec in a.weights:
            assert spec in all_weights() or spec in external.EXTERNAL, spec
            if spec in external.EXTERNAL:
                assert a.data, ex
                continue
            name, args, _ = data_settings(spec, a.data, over)
            assert set(args) <= set(options(name)), (ex, args)


# ---- the cache trusts nothing it reads ----------------------------------------------------------------
CIRCLES = 'mlp_h8.synthetic-circles-d2-s0'


def _entry(cache):
    return next(cache.root.rglob('*.npz'))


def test_a_truncated_cache_entry_is_a_miss_not_a_crash(tmp_path, capsys):
    """One truncated entry (BadZipFile) ended the whole `qzoo eval`, though an unreadable entry is a miss."""
    cache = EvalCache(tmp_path / 'eval')
    first = evaluate_spec(CIRCLES, cache=cache)
    p = _entry(cache)
    p.write_bytes(p.read_bytes()[:p.stat().st_size // 2])
    again = evaluate_spec(CIRCLES, cache=cache)
    assert not again.cached and cache.damaged == 1 and again.row == first.row
    assert f'evaluation cache: {p} is unreadable (BadZipFile' in capsys.readouterr().err
    assert evaluate_spec(CIRCLES, cache=cache).cached                  # rewritten


def _tamper(p, how):
    """Edit cache entry ``p`` as someone (or a bad disk) might: ``perfect`` makes every prediction right and the
    metrics 100 (probe kept); ``+digest`` also records a matching digest, so only the content checks remain."""
    from qzoo.evaluation import _entry_digest
    with np.load(p) as z:
        a = {k: z[k] for k in z.files}
    meta = json.loads(str(a['__meta__']))
    if how.startswith('perfect'):
        a['pred'], a['correct'] = a['label'].copy(), np.ones_like(a['correct'])
        meta['metrics'].update(top1=100.0, macro_f1=100.0)
    elif how == 'labels+digest':        # labels that are not the split's, consistent among themselves
        a['label'] = a['pred'].copy()
        a['correct'] = np.ones_like(a['correct'])
        meta['metrics'].update(top1=100.0, macro_f1=100.0)
    elif how == 'metric+digest':        # the stored metric disagrees with the stored per-example scores
        meta['metrics']['top1'] = 100.0
    a['__meta__'] = np.array(json.dumps(meta, sort_keys=True))
    if how.endswith('+digest'):
        arrays = {k: v for k, v in a.items() if not k.startswith('__')}
        a['__sha256__'] = np.array(_entry_digest(str(a['__meta__']), arrays, a['__probe__']))
    np.savez(p, **a)


@pytest.mark.parametrize('how, why', [
    ('perfect', 'does not match the SHA-256 recorded when it was written'),
    ('labels+digest', "its labels are not the split's"),
    ('metric+digest', 'its scores are inconsistent (RuntimeError: per-example top1'),
])
def test_an_edited_cache_entry_is_not_trusted(tmp_path, capsys, how, why):
    """An entry whose arrays were edited (the probe kept) reported 100.0 for 98.9: every hit is checked against the
    digest recorded with it, the split's labels and the metrics recomputed from its per-example scores."""
    cache = EvalCache(tmp_path / 'eval')
    first = evaluate_spec(CIRCLES, cache=cache)
    assert first.row['top1'] == pytest.approx(all_weights()[CIRCLES].test['top1'])
    _tamper(_entry(cache), how)
    again = evaluate_spec(CIRCLES, cache=cache)
    assert not again.cached and again.row['top1'] == first.row['top1'] and cache.damaged == 1
    assert why in capsys.readouterr().err
    assert evaluate_spec(CIRCLES, cache=cache).cached


def test_an_empty_split_is_refused_when_scored():
    """n_test=0 scored nothing and ended in StopIteration."""
    from qzoo.errors import DataError
    with pytest.raises(DataError, match=rf'synthetic-circles-d2: the test split holds no samples .*; {CIRCLES} is '
                                        r'scored on it\. Fix: set data_args.n_test to 1 or more'):
        evaluate_spec(CIRCLES, data_args={'n_test': 0})


# ---- which weights were scored ----------------------------------------------------------------------
def test_a_published_name_that_is_also_a_local_folder_warns_and_the_csv_says_which(tmp_path, monkeypatch):
    import warnings
    import qzoo
    from qzoo.evaluation import main
    from qzoo.hub import save_pretrained
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('QZOO_CACHE', str(tmp_path / 'cache'))
    save_pretrained(qzoo.create_model('mlp_h8'), tmp_path / CIRCLES)      # untrained, under the published name
    with pytest.warns(UserWarning, match=rf"'{CIRCLES}' names published weights and also the local folder "
                                         rf'{tmp_path / CIRCLES}: the published weights are loaded \(source '
                                         rf'published:{CIRCLES}\)\. Fix: to load the local folder, write '
                                         rf'local-dir:{CIRCLES}'):
        assert main(['--weights', CIRCLES, f'local-dir:{CIRCLES}', '--data', 'synthetic', '--data-arg',
                     'kind=circles', '--results-file', 'v.csv']) == 0
    with open(tmp_path / 'v.csv') as f:
        rows = list(csv.DictReader(f))
    assert [r['source'] for r in rows] == [f'published:{CIRCLES}', str(tmp_path / CIRCLES)]
    assert float(rows[0]['top1']) == pytest.approx(all_weights()[CIRCLES].test['top1'])
    assert rows[0]['sha256'] == all_weights()[CIRCLES].sha256 != rows[1]['sha256']
    with warnings.catch_warnings():
        warnings.simplefilter('error')                                    # an unambiguous name: no warning
        assert evaluate_spec(f'./{CIRCLES}', 'synthetic', {'kind': 'circles'}).row['source'] == str(tmp_path / CIRCLES)


def test_validate_refuses_a_device_it_cannot_compute_on(capsys):
    from qzoo.evaluation import main
    with pytest.raises(SystemExit) as e:
        main(['--weights', CIRCLES, '--device', 'meta'])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "error: --device: device 'meta'" in err and 'holds no data' in err
    from qzoo import efficiency
    with pytest.raises(SystemExit) as e:                       # qzoo eval: the same check
        efficiency.main(['--device', 'meta', '--dataset', 'synthetic-circles-d2'])
    assert e.value.code == 2 and "error: --device: device 'meta'" in capsys.readouterr().err


def test_torch_home_pointing_at_a_file_is_an_error_line(tmp_path, monkeypatch, capsys):
    """TORCH_HOME set to a file ended `qzoo eval` in a NotADirectoryError traceback (copying an external
    checkpoint from a mirror into torch.hub's cache)."""
    from qzoo import efficiency, external
    from qzoo.errors import CheckpointWriteError
    from qzoo.evaluation import external_available
    mirror = tmp_path / 'mirror' / 'akamaster'
    mirror.mkdir(parents=True)
    (mirror / external.EXTERNAL['akamaster/resnet20'].file_name).write_bytes(b'stand-in')
    (tmp_path / 'torch-home').write_text('a file')
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch-home'))
    with pytest.raises(CheckpointWriteError, match=rf"cannot put resnet20-12fca82f.th in torch.hub's cache "
                                                   rf".*TORCH_HOME={re.escape(str(tmp_path / 'torch-home'))}\)\. "
                                                   r'Fix: point TORCH_HOME at a writable folder'):
        external_available('akamaster/resnet20', [tmp_path / 'mirror'])
    rc = efficiency.main(['--dataset', 'cifar10-jpeg75', '--mirror', str(tmp_path / 'mirror'), '--out',
                          str(tmp_path / 'out')])
    err = capsys.readouterr().err
    assert rc == 2 and "error: cannot put resnet20-12fca82f.th in torch.hub's cache" in err and 'Traceback' not in err
    assert not (tmp_path / 'out').exists()
