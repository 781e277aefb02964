"""qzoo bench (qzoo.benchmark): every mode runs on the CPU on tiny settings and writes its documented
CSV columns and rows; variants are measured interleaved; the CIFAR training mode is fed by
qzoo.data.BatchLoader itself; the GPU suite (--smoke on the CPU) writes one CSV per step and
refuses to run without CUDA otherwise. No test depends on how fast anything is."""
import csv
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch

import procs
import qzoo
import qzoo.benchmark as bench
from conftest import need_shared

ROOT = Path(__file__).resolve().parents[1]
TINY = ['--device', 'cpu', '--threads', '1', '--batch-size', '2', '--min-time', '0.005', '--rounds', '2',
        '--warmup', '1']
CIFAR_TINY = ['--cifar-split', 'test', '--cifar-size', '16', '--batch-size', '8']


def _read(path):
    with open(path, newline='') as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def _has(mod):
    return importlib.util.find_spec(mod) is not None


def test_models_mode_rows_runtimes_and_ratios(tmp_path):
    runtimes = ['eager', 'compiled'] + (['onnxruntime'] if _has('onnxruntime') and _has('onnxscript') else [])
    out = tmp_path / 'models.csv'
    assert bench.main(TINY + ['--models', 'resnet8', 'qmlp', '--runtimes', *runtimes, '--compile-backend', 'eager',
                              '--results-file', str(out)]) == 0
    header, rows = _read(out)
    assert header == bench.MODEL_COLUMNS and header[:11] == bench.TIMM_COLUMNS
    assert [(r['model'], r['runtime']) for r in rows] == [(m, rt) for m in ('resnet8', 'qmlp') for rt in runtimes]
    for r in rows:
        model = qzoo.create_model(r['model'])
        shape = (1, 3, 32, 32) if r['model'] == 'resnet8' else (1, 2)  # qmlp takes (N, features)
        assert int(r['params']) == qzoo.count_params(model) and int(r['macs']) == qzoo.count_macs(model, shape)
        assert r['neuron'] == ('linear' if r['model'] == 'resnet8' else 'fan')
        assert r['rounds'] == '2' and r['device'] == 'cpu' and r['dtype'] == 'float32' and r['threads'] == '1'
        assert r['compiled'] == str(r['runtime'] == 'compiled') and r['infer_peak_mem_mb'] == ''
        for col in ['infer_latency_ms', 'infer_samples_per_sec', 'infer_step_time', 'infer_latency_ratio',
                    'infer_latency_vs_eager', 'infer_throughput_vs_eager']:
            assert float(r[col]) > 0, (col, r)
        assert int(r['infer_batch_size']) == 2
        if r['runtime'] == 'eager':
            assert float(r['infer_latency_vs_eager']) == 1.0 and float(r['train_throughput_vs_eager']) == 1.0
        if r['model'] == 'resnet8':
            assert float(r['infer_latency_ratio']) == 1.0  # the first model is each runtime's reference
        if r['runtime'] == 'onnxruntime':
            assert r['train_samples_per_sec'] == '' and 'no training step' in r['note'] and r['onnxruntime']
        else:
            assert float(r['train_samples_per_sec']) > 0 and int(r['train_batch_size']) == 2


def test_interleaved_shuffles_every_round_and_times_every_variant():
    calls, rounds_seen = [], []
    fns = {k: (lambda k=k: calls.append((len(rounds_seen), k))) for k in 'abcd'}
    times = bench.interleaved(fns, rounds=6, min_time=1e-4, seed=0, device=torch.device('cpu'),
                              on_round=lambda t: rounds_seen.append({k: len(v) for k, v in t.items()}))
    assert rounds_seen == [{k: i for k in 'abcd'} for i in range(1, 7)]
    assert all(len(v) == 6 and all(s > 0 for s in v) for v in times.values())
    per_round = [[k for j, (r, k) in enumerate(calls) if r == i and (j == 0 or calls[j - 1] != (r, k))]
                 for i in range(6)]
    assert all(sorted(r) == list('abcd') for r in per_round), per_round  # each variant once, in one block
    assert len({tuple(r) for r in per_round}) > 1  # the order changes between rounds


def test_ratio_is_the_median_of_per_round_ratios():
    # a load spike in rounds 2 and 3 hits both variants of that round: the ratio stays 2
    fast, slow = [1.0, 9.0, 5.0, 1.0, 1.1], [2.0, 18.0, 10.0, 2.0, 2.2]
    assert bench.median_ratio(slow, fast) == pytest.approx(2.0)


def test_ratio_references():
    parse = bench.get_parser().parse_args
    args = parse(['--models', 'wdcnn', 'qcnn', 'resnet20', 'qresnet20', 'mlp',
                  '--ratio-to', 'qcnn=wdcnn', 'qresnet20=resnet20'])
    assert bench.ratio_refs(args) == {'wdcnn': 'wdcnn', 'qcnn': 'wdcnn', 'resnet20': 'resnet20',
                                      'qresnet20': 'resnet20', 'mlp': 'wdcnn'}
    assert bench.ratio_refs(parse(['--models', 'a', 'b'])) == {'a': 'a', 'b': 'a'}
    with pytest.raises(SystemExit, match='MODEL=REFERENCE'):
        bench.ratio_refs(parse(['--models', 'a', 'b', '--ratio-to', 'b=c']))


def test_runtime_and_size_errors(tmp_path):
    with pytest.raises(SystemExit, match='drop --amp'):
        bench.main(TINY + ['--runtimes', 'onnxruntime', '--amp', 'bf16', '--results-file', str(tmp_path / 'x.csv')])
    with pytest.raises(SystemExit, match='--img-size applies to image models'):
        bench.main(TINY + ['--models', 'qcnn', '--img-size', '16', '--results-file', str(tmp_path / 'x.csv')])
    with pytest.raises(SystemExit, match='key=value'):
        bench.parse_model_args(['width'])
    assert bench.parse_model_args(['neuron=qres', 'width=12', 'widths=[8,16,32]']) == \
        {'neuron': 'qres', 'width': 12, 'widths': [8, 16, 32]}


@pytest.mark.parametrize('argv, message', [
    (['--batch-size', '-4'], 'argument --batch-size: must be a whole number >= 1, got -4'),   # a torch traceback
    (['--batch-size', '0'], 'argument --batch-size: must be a whole number >= 1, got 0'),     # rows of 0.0/s
    (['--threads', '-3'], 'argument --threads: must be a whole number >= 1, got -3'),
    (['--min-time', 'nan'], 'argument --min-time: must be a finite number of seconds > 0, got nan'),   # hung
    (['--min-time', '0'], 'argument --min-time: must be a finite number of seconds > 0, got 0'),
    (['--rounds', '0'], 'argument --rounds: must be a whole number >= 1, got 0'),             # ran "1 rounds"
    (['--warmup', '-1'], 'argument --warmup: must be a whole number >= 0, got -1'),
    (['--budget-s', 'inf'], 'argument --budget-s: must be a finite number of seconds > 0, got inf'),
    (['--loop-images', '0'], 'argument --loop-images: must be a whole number >= 1, got 0'),   # measured the smoke slice
    (['--share', '0'], 'argument --share: must be a whole number >= 1, got 0'),
])
def test_impossible_numbers_are_usage_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        bench.cli(['--device', 'cpu', '--models', 'qmlp', '--results-file', str(tmp_path / 'x.csv')] + argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and f'error: {message}' in err and 'Traceback' not in err
    assert not (tmp_path / 'x.csv').exists()


@pytest.mark.parametrize('device, message', [
    ('meta', "--device: device 'meta': qzoo trains and evaluates on 'cpu', 'cuda' or 'cuda:<index>'"),
    ('gpu', "--device: device 'gpu' is not a torch device"),
] + ([] if torch.cuda.is_available() else [('cuda', "--device: device 'cuda', but this machine has no usable CUDA GPU")]))
def test_a_device_it_cannot_measure_on_is_an_error_line(tmp_path, capsys, device, message):
    """--device meta measured nothing (0.03 ms rows); --device cuda without a GPU exited with a bare message."""
    assert bench.cli(['--device', device, '--models', 'qmlp', '--bench', 'latency', '--results-file',
                      str(tmp_path / 'x.csv')]) == 2
    assert capsys.readouterr().err.startswith(f'error: {message}')
    assert not (tmp_path / 'x.csv').exists()


def test_cifar_train_rows_through_the_training_loader(tmp_path):
    out = tmp_path / 'cifar.csv'
    bench.main(TINY + CIFAR_TINY + ['--cifar-train', '--models', 'resnet8', 'qresnet8', '--amp', 'bf16',
                                    '--channels-last', '--results-file', str(out)])
    header, rows = _read(out)
    assert header == bench.MODEL_COLUMNS
    assert [(r['model'], r['bench'], r['runtime']) for r in rows] == [
        ('resnet8', 'cifar-train', 'eager'), ('qresnet8', 'cifar-train', 'eager')]
    for r in rows:
        assert float(r['train_samples_per_sec']) > 0 and r['infer_samples_per_sec'] == ''
        assert r['train_batch_size'] == '8' and r['dtype'] == 'bf16-amp' and r['channels_last'] == 'True'
        assert 'qzoo.data.BatchLoader' in r['note'] and 'crop4-flip' in r['note'] and 'test split (16' in r['note']


def test_cifar_train_falls_back_to_the_shipped_test_split(tmp_path, monkeypatch):
    monkeypatch.setenv('QZOO_DATA', str(tmp_path))  # no full cifar10-jpeg75 file there
    logged = []
    args = bench.get_parser().parse_args(['--cifar-split', 'train', '--cifar-size', '16', '--batch-size', '8'])
    make, note = bench.cifar_batches(args, torch.device('cpu'), logged.append)
    assert 'cifar10-jpeg75 test split (16 images)' in note and 'shipped test split' in logged[0]
    x, y = make(8)()
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (8,)


def test_cifar_batches_are_the_batchloaders(tmp_path):
    """The benchmark's batches are BatchLoader's, epoch after epoch (set_epoch on wrap-around)."""
    from qzoo.data import BatchLoader, Split, load_dataset
    args = bench.get_parser().parse_args(CIFAR_TINY + ['--seed', '3'])
    make, _ = bench.cifar_batches(args, torch.device('cpu'), print)
    next_batch = make(8)
    ds = load_dataset('cifar10-jpeg75', splits=('test',))
    split = Split(ds.test.x[:16], ds.test.y[:16])
    loader = BatchLoader(split, 8, shuffle=True, seed=3, augment='crop4-flip', normalize=ds.normalize, drop_last=True)
    want = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        want += list(loader)
    for x_want, y_want in want:
        x, y = next_batch()
        torch.testing.assert_close(x, x_want, rtol=0, atol=0)
        assert torch.equal(y, y_want)


def test_layer_bench_rows(tmp_path):
    out = tmp_path / 'layers.csv'
    bench.main(TINY + ['--layer-bench', '--layers', 'stem', '64-64', '--results-file', str(out)])
    header, rows = _read(out)
    assert header == bench.LAYER_COLUMNS
    assert [r['layer'] for r in rows] == ['stem', '64-64'] and [r['rounds'] for r in rows] == ['2', '2']
    assert rows[0]['input_grad'] == 'False' and rows[1]['input_grad'] == 'True'
    for r in rows:
        assert all(float(r[c]) > 0 for c in ('conv_ms', 'quad_ms', 'quad_x')) and r['neuron'] == 'fan'


def test_profile_rows(tmp_path):
    out = tmp_path / 'profile.csv'
    bench.main(TINY + CIFAR_TINY + ['--profile', '--models', 'resnet8', 'qresnet8', '--top', '5',
                                    '--results-file', str(out)])
    header, rows = _read(out)
    assert header == bench.PROFILE_COLUMNS
    for model in ('resnet8', 'qresnet8'):
        mine = [r for r in rows if r['model'] == model]
        assert [int(r['rank']) for r in mine] == [1, 2, 3, 4, 5]
        times = [float(r['self_time_us']) for r in mine]
        assert times == sorted(times, reverse=True) and times[-1] > 0
        assert sum(float(r['share']) for r in mine) <= 1.0001 and mine[0]['activity'] == 'cpu'
        assert any('conv' in r['kernel'] for r in mine)


def test_default_results_file_is_under_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bench.main(TINY + ['--layer-bench', '--layers', '64-64'])
    assert (tmp_path / 'results' / 'benchmark-layers-cpu.csv').is_file()


LOOP_STEPS = ['loop_resnet20_eager', 'loop_qresnet20_eager', 'loop_resnet20_compiled', 'loop_qresnet20_compiled',
              'loop_resnet20_cudagraphs', 'loop_qresnet20_cudagraphs']


@pytest.mark.slow
def test_gpu_suite_smoke_writes_every_step(tmp_path):
    need_shared('data', 'cifar10-jpeg75.npz')  # the recipe loop trains on the CIFAR training split
    out = tmp_path / 'suite'
    assert bench.main(['--suite', 'gpu', '--smoke', '--budget-s', '3000', '--results-dir', str(out)]) == 0
    _, steps = _read(out / 'suite.csv')
    assert [s['step'] for s in steps] == [name for name, _, _ in bench.SUITE]
    assert all(s['status'] == 'ok' for s in steps), steps
    for name, _, _ in bench.SUITE:
        header, rows = _read(out / f'{name}.csv')
        assert rows, name
        if name.startswith('loop_'):
            assert header == bench.LOOP_COLUMNS and len(rows) == 1 and float(rows[0]['train_samples_per_sec']) > 0
            assert rows[0]['model'] == ('qresnet8' if 'qresnet' in name else 'resnet8')
            assert rows[0]['runtime'] == ('eager' if 'eager' in name else 'compiled')
            assert rows[0]['compile_mode'] == {'eager': '', 'compiled': 'default', 'cudagraphs': 'reduce-overhead'}[
                name.split('_')[2]]
        if name.startswith('share_'):
            assert [r['arrangement'] for r in rows] == ['alone', 'processes', 'one-process']
            assert [r['runs'] for r in rows] == ['1', '2', '2'] and all(float(r['total_img_s']) > 0 for r in rows)
    _, loop = _read(out / 'train_loop.csv')
    assert [r['note'].split(':')[0] for r in loop] == [n for n, _, _ in bench.SUITE if n.startswith('loop_')]
    assert _read(out / 'profile_kernels.csv')[0] == bench.PROFILE_COLUMNS
    env = json.loads((out / 'env.json').read_text())
    assert env['smoke'] is True and env['torch'] == torch.__version__ and env['budget_s'] == 3000


def test_gpu_suite_full_arguments():
    """Without --smoke every step runs on CUDA; the recipe-loop steps train the recipes of the checkout."""
    from qzoo.trainspeed import LOOP_RECIPES
    parse = bench.get_parser().parse_args
    steps = {name: parse(bench.suite_argv(a, False, Path('x.csv'))) for name, _, a in bench.SUITE}
    assert list(steps)[:6] == LOOP_STEPS
    for name, args in steps.items():
        assert args.device == 'cuda' and args.amp == 'bf16' and args.results_file == 'x.csv', name
        assert (args.rounds, args.min_time) == ((2, 1.0) if name.startswith('loop_') else (3, args.min_time)), name
    for name in LOOP_STEPS:
        args = steps[name]
        assert args.train_loop and args.recipes == [LOOP_RECIPES[name.split('_')[1]]] and args.set == []
        assert args.runtimes == ['eager' if name.endswith('eager') else 'compiled']
        assert args.compile_mode == ('reduce-overhead' if name.endswith('cudagraphs') else None)
        assert not args.stack_x_terms and (ROOT / args.recipes[0]).is_file()
    assert steps['loop_qresnet20_cudagraphs_stacked'].stack_x_terms
    assert steps['share_eager'].share == 4 and steps['share_eager'].loop_images == 10240
    assert steps['share_cudagraphs'].compile_mode == 'reduce-overhead'
    assert steps['profile_kernels'].profile and steps['profile_kernels'].models == ['resnet20', 'qresnet20']
    assert steps['layers'].layer_bench and steps['layers'].batch_size == 512 and steps['models'].batch_size == 512
    smoke = parse(bench.suite_argv(dict((n, a) for n, _, a in bench.SUITE)['share_eager'], True, Path('x.csv')))
    assert smoke.share == 2 and smoke.set == ['model=qresnet8', 'batch_size=16'] and smoke.device == 'cpu'


def _fake_suite(tmp_path, budget, need):
    """run_suite on a clock that only its steps move: step NAME takes need(NAME) seconds, or stops at its timeout."""
    now, calls = [0.0], []

    def step(name, argv, timeout, out_dir, log):
        calls.append((name, now[0], timeout))
        now[0] += min(need(name), timeout)
        return ('ok', '') if need(name) <= timeout else ('timeout', 'ran past its time')
    args = bench.get_parser().parse_args(['--suite', 'gpu', '--smoke', '--budget-s', str(budget), '--results-dir',
                                          str(tmp_path)])
    assert bench.run_suite(args, lambda s: None, clock=lambda: now[0], step=step) == 0
    return calls, _read(tmp_path / 'suite.csv')[1], now[0]


def test_suite_measures_the_six_loop_speeds_first_and_skips_what_does_not_fit_by_name(tmp_path):
    order = [name for name, _, _ in bench.SUITE]
    # every step needs more than it may have: each stops at its timeout, in order, until the budget is spent
    calls, rows, end = _fake_suite(tmp_path / 'a', 120, lambda name: 1000.0)
    assert [r['step'] for r in rows] == order and [c[0] for c in calls] == LOOP_STEPS
    assert [r['status'] for r in rows] == ['timeout'] * 6 + ['skipped'] * (len(order) - 6)
    assert all(r['detail'] == '6 s of the budget left' for r in rows[6:])  # the reserve (5% of 120 s) is kept
    assert end == pytest.approx(114.0)
    shares = [share for _, share, _ in bench.SUITE]
    for (name, start, timeout), share in zip(calls, shares):
        assert timeout >= min(share * 120, 120 - 6 - start) - 1e-9  # its share, or all that is left
    # a realistic run (H200 eager and compile times): compiled qresnet20 overruns, the steps after it still run
    need = dict(loop_resnet20_eager=6, loop_qresnet20_eager=10, loop_resnet20_compiled=25,
                loop_qresnet20_compiled=60, loop_resnet20_cudagraphs=12, loop_qresnet20_cudagraphs=20)
    calls, rows, end = _fake_suite(tmp_path / 'b', 120, lambda name: need.get(name, 4.0))
    status = {r['step']: r['status'] for r in rows}
    assert [status[n] for n in LOOP_STEPS] == ['ok', 'ok', 'timeout', 'timeout', 'ok', 'ok']
    assert [c[0] for c in calls][:6] == LOOP_STEPS and end <= 114.0
    assert status['loop_qresnet20_eager_stacked'] == 'ok' and status['models'] == 'skipped'
    # time the six leave goes to the steps after them, in order
    calls, rows, end = _fake_suite(tmp_path / 'c', 600, lambda name: 20.0)
    assert [r['status'] for r in rows] == ['ok'] * len(order) and end == 20.0 * len(order)
    _, loop = _read(tmp_path / 'c' / 'train_loop.csv')  # no step wrote a CSV: the summary says so per step
    assert [r['note'] for r in loop] == [f'{n}: ok' for n in order if n.startswith('loop_')]


def test_step_timeout_keeps_the_later_steps_shares():
    shares = [share for _, share, _ in bench.SUITE]
    assert sum(shares) == pytest.approx(1.0)
    budget = 1000.0
    # on schedule: each step gets its own share
    assert bench.step_timeout(0, budget, budget, 0) == pytest.approx(shares[0] * budget)
    # time saved by earlier steps goes to the next step, the later steps keep theirs
    later = sum(shares[3:]) * budget
    assert bench.step_timeout(2, budget, 900.0, 10.0) == pytest.approx(900.0 - 10.0 - later)
    # never more than what is left
    assert bench.step_timeout(6, budget, 50.0, 10.0) == pytest.approx(40.0)


def test_deadline_interrupts_code_that_swallows_exceptions():
    with pytest.raises(bench.StepTimeout):
        with bench.deadline(0.05):
            while True:
                try:
                    sum(range(1000))
                except Exception:  # library code like this must not swallow the deadline
                    pass


def test_run_step_reports_timeout_and_failure(tmp_path, monkeypatch):
    def forever(argv, log=None):
        while True:
            pass
    monkeypatch.setattr(bench, 'main', forever)
    status, detail = bench.run_step('spin', [], 0.05, tmp_path, print)
    assert status == 'timeout' and 'kept' in detail

    def broken(argv, log=None):
        raise RuntimeError('boom')
    monkeypatch.setattr(bench, 'main', broken)
    status, detail = bench.run_step('bad', [], 5.0, tmp_path, print)
    assert status == 'failed' and 'boom' in detail and 'Traceback' in (tmp_path / 'bad.error.txt').read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the refusal on a machine without CUDA')
def test_gpu_suite_without_cuda_says_so_and_exits_nonzero(tmp_path):
    out = tmp_path / 'gpu'
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='', OMP_NUM_THREADS='1')
    proc = procs.run([sys.executable, str(ROOT / 'eval' / 'benchmark.py'), '--suite', 'gpu', '--budget-s', '60',
                      '--results-dir', str(out)], cwd=tmp_path, env=env)
    err = proc.stderr
    assert proc.returncode != 0
    assert 'needs CUDA' in err and '--smoke' in err
    assert not out.exists() and not (tmp_path / 'results').exists()


LOOP_TINY = ['--device', 'cpu', '--threads', '1', '--set', 'batch_size=16', '--loop-images', '32', '--min-time', '0.01',
             '--compile-backend', 'eager']


def test_train_loop_times_the_engines_own_epochs(tmp_path, monkeypatch):
    """--train-loop sets a recipe up as qzoo train does and times whole epochs of engine._train_epoch: one for the
    start-up, then --rounds steady ones; compiled means the recipe's compile value (dynamo's eager backend here)."""
    need_shared('data', 'cifar10-jpeg75.npz')
    from qzoo import engine
    from qzoo.trainspeed import LOOP_RECIPES
    epochs = []
    real = engine._train_epoch
    monkeypatch.setattr(engine, '_train_epoch', lambda s, run, epoch: epochs.append((s.compile_mode, epoch)) or
                        real(s, run, epoch))
    out = tmp_path / 'loop.csv'
    assert bench.main(LOOP_TINY + ['--train-loop', '--recipes', LOOP_RECIPES['qresnet20'], '--set', 'model=qresnet8',
                                   '--runtimes', 'eager', 'compiled', '--rounds', '2', '--results-file', str(out)]) == 0
    assert epochs == [(None, 0), (None, 1), (None, 2), ('default', 0), ('default', 1), ('default', 2)]
    header, rows = _read(out)
    assert header == bench.LOOP_COLUMNS and [(r['runtime'], r['compile_mode']) for r in rows] == [
        ('eager', ''), ('compiled', 'default')]
    for r in rows:
        assert (r['model'], r['run'], r['recipe']) == ('qresnet8', 'qresnet20-w16-cifar10-jpeg75',
                                                        LOOP_RECIPES['qresnet20'])
        assert (r['epochs'], r['images_per_epoch'], r['batch_size']) == ('2', '32', '16')
        assert (r['amp'], r['channels_last'], r['optimizer'], r['stacked_x_terms']) == ('off', 'False', 'sgd', 'False')
        # the rate is written to 0.1 and the epoch time to 1e-4 s: allow both roundings (the second scales as 32 / t**2)
        t = float(r['epoch_s'])
        assert float(r['train_samples_per_sec']) == pytest.approx(32 / t, abs=0.05 + 32 * 0.5e-4 / (t - 0.5e-4) ** 2
                                                                   + 1e-9)
        assert float(r['startup_s']) >= 0 and float(r['first_epoch_s']) > 0 and float(r['build_s']) > 0
    assert 'not a measurement' in rows[1]['note']
    with pytest.raises(SystemExit, match='eager and compiled'):
        bench.main(LOOP_TINY + ['--train-loop', '--runtimes', 'onnxruntime', '--results-file', str(out)])


@pytest.mark.slow
def test_share_measures_one_run_k_processes_and_k_models_in_one_process(tmp_path):
    need_shared('data', 'cifar10-jpeg75.npz')
    out = tmp_path / 'share.csv'
    assert bench.main(LOOP_TINY + ['--share', '2', '--set', 'model=resnet8', '--runtimes', 'compiled',
                                   '--min-time', '0.3', '--results-file', str(out)]) == 0
    header, rows = _read(out)
    assert header == bench.SHARE_COLUMNS
    assert [(r['arrangement'], r['runs']) for r in rows] == [('alone', '1'), ('processes', '2'), ('one-process', '2')]
    for r in rows:
        total, per_run = float(r['total_img_s']), float(r['per_run_img_s'])
        # both rates are written to 0.1 img/s, vs_alone to 1e-3 from the unrounded total
        assert total > 0 and per_run == pytest.approx(total / int(r['runs']), abs=0.05 + 0.05 / int(r['runs']) + 1e-9)
        alone = float(rows[0]['total_img_s'])
        assert float(r['vs_alone']) == pytest.approx(total / alone, abs=5e-4 + 0.05 / alone + 1e-9)
        assert float(r['window_s']) >= 0.3 and r['model'] == 'resnet8' and r['compile_mode'] == 'default'


def test_share_processes_reports_a_worker_that_fails_and_leaves_none_behind(tmp_path):
    from qzoo import trainspeed
    pid_file = tmp_path / 'pid'
    sleeper = f'import os, time; open({str(pid_file)!r}, "w").write(str(os.getpid())); time.sleep(600)'
    failing = (f'import os, sys, time\nwhile not os.path.exists({str(pid_file)!r}): time.sleep(0.01)\n'
               'print("worker cannot start"); sys.exit(3)')
    with pytest.raises(RuntimeError, match=r'share worker 1 exited \(3\) while the workers were setting up: '
                                           r'worker cannot start'):
        trainspeed.share_processes(2, lambda i, folder: [sys.executable, '-c', failing if i else sleeper])
    with pytest.raises(ProcessLookupError):  # the sleeping worker was killed (and reaped)
        os.kill(int(pid_file.read_text()), 0)
