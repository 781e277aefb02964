"""qzoo launch (qzoo.launch): side-by-side runs, the summary and packs, --fit-in's projection (on a fake clock),
process groups killed on every exit path, and the presets end to end with --smoke."""
import json
import os
import re
import shutil
import signal
import sys
import tarfile
import time
from pathlib import Path

import pytest

import procs
from conftest import ROOT, SHARED, need_shared

from qzoo import launch

CIRCLES, MOONS = str(ROOT / 'recipes/synthetic/circles-d2.yaml'), str(ROOT / 'recipes/synthetic/moons-d2.yaml')
T0 = 1_000_000.0  # the fake clock's start


def _write_log(out: Path, times):
    out.mkdir(parents=True, exist_ok=True)
    (out / 'log.jsonl').write_text(''.join(json.dumps(dict(epoch=i, time=t)) + '\n' for i, t in enumerate(times)))


def _runs(tmp_path, logs):
    runs = []
    for name, times in logs.items():
        _write_log(tmp_path / name, times)
        runs.append(dict(name=name, out=str(tmp_path / name)))
    return runs


def test_batch_time_models_runs_speeding_up_as_others_finish():
    ep = {'a': 2.0, 'b': 4.0}
    # both share the device until a's 18 epochs end (36 s, b has done 9 of 19); b alone then runs
    # (2 / 1) ** alpha times faster
    assert launch._batch_time({'a': 18, 'b': 19}, ep, alpha=0.5) == pytest.approx(36 + 10 * 4 / 2 ** 0.5)
    assert launch._batch_time({'a': 18, 'b': 19}, ep, alpha=0.0) == pytest.approx(19 * 4)  # no speed-up
    assert launch._batch_time({'a': 18, 'b': 19}, ep, alpha=1.0) == pytest.approx(36 + 10 * 4 / 2)
    assert launch._batch_time({'a': 0, 'b': 0}, ep) == 0


def test_fit_projection_keeps_epochs_when_the_batch_fits(tmp_path):
    # run a: started at T0, epoch 0 ends at +10 (start-up), then 2 s/epoch; run b: 4 s/epoch
    runs = _runs(tmp_path, {'a': [T0 + 10, T0 + 12, T0 + 14], 'b': [T0 + 12, T0 + 16]})
    fit = dict(budget_s=100, requested_epochs=20, refit=False)
    assert launch._check_fit(fit, runs, {'a': T0, 'b': T0}, T0, now=T0 + 30) is None
    # from now (T0 + 30): a has 17 epochs + the final evaluation left, b 18 + 1
    assert fit['projected_s'] == 30 + launch._batch_time({'a': 18, 'b': 19}, {'a': 2.0, 'b': 4.0})
    assert fit['epoch_s'] == {'a': 2.0, 'b': 4.0} and fit['startup_s'] == {'a': 8.0, 'b': 8.0}
    assert fit['epochs'] == 20 and not fit['refit']


def test_fit_projection_cuts_epochs_when_it_overruns(tmp_path):
    runs = _runs(tmp_path, {'a': [T0 + 10, T0 + 12, T0 + 14], 'b': [T0 + 12, T0 + 16]})
    fit = dict(budget_s=60, requested_epochs=20, refit=False)
    new = launch._check_fit(fit, runs, {'a': T0, 'b': T0}, T0, now=T0 + 15.5)
    # restart at 15.5 s with 8 s of start-up: 36.5 s left for n epochs + the final evaluation of both runs;
    # a (2 s/epoch) ends at 2(n + 1) s, b then runs sqrt(2) times faster: (n + 1) * (2 + 2 / sqrt(2)) s -> n = 9
    room = 60 - 15.5 - 8
    assert launch._batch_time({'a': new + 1, 'b': new + 1}, fit['epoch_s']) <= room
    assert launch._batch_time({'a': new + 2, 'b': new + 2}, fit['epoch_s']) > room
    assert new == 9 and fit['refit'] and fit['epochs'] == 9 and fit['projected_s'] > 60


def test_drop_policy_keeps_the_epochs_and_drops_runs_from_the_end(tmp_path):
    """Comparisons with the published baselines keep their epoch count: runs are dropped, last named first."""
    # three runs at 2, 3, 4 s/epoch side by side, 20 epochs each, measured at T0 + 20
    runs = _runs(tmp_path, {'a': [T0 + 10, T0 + 12], 'b': [T0 + 10, T0 + 13], 'c': [T0 + 10, T0 + 14]})
    fit = dict(budget_s=1000, requested_epochs=20, refit=False, policy='drop')
    assert launch._check_drop(fit, runs, {}, T0, now=T0 + 20) == []  # everything fits
    assert fit['epochs'] == 20 and fit['dropped'] == []
    fit = dict(budget_s=75, requested_epochs=20, refit=False, policy="drop")
    dropped = launch._check_drop(fit, runs, {}, T0, now=T0 + 20)
    assert dropped == ['c'] and fit['epochs'] == 20
    # a and b alone run (3 / 2) ** alpha faster than measured: exactly what the projection counts
    speed = 1.5 ** launch.SHARE_ALPHA
    assert fit['projected_s'] == pytest.approx(20 + launch._batch_time({'a': 19, 'b': 19},
                                                                       {'a': 2 / speed, 'b': 3 / speed}))
    fit = dict(budget_s=35, requested_epochs=20, refit=False, policy="drop")
    with pytest.raises(launch.FitError, match='even a alone'):
        launch._check_drop(fit, runs, {}, T0, now=T0 + 20)


def test_cifar_comparison_presets_keep_the_baselines_epochs():
    names = ['quadratic', 'neurons', 'seeds'] + [n for n in launch.PRESETS if n.startswith(('search-', 'seeds-'))]
    assert len(names) == 10
    for name in names:
        stage = launch.PRESETS[name].final
        assert stage.fit == 'drop' and 'epochs=40' in stage.sets, name
        assert len(stage.configs) <= 6 or name in ('neurons', 'seeds'), name  # one call's worth side by side
    assert launch.PRESETS['quadratic'].final.configs[-1].endswith('qresnet20-w9.yaml')  # the optional one last
    assert [launch.PRESETS[f'search-{v}'].final.sets[-1] for v in ('1e-4', '1e-3', '1e-2')] == [
        'quad_lr_scale=1e-4', 'quad_lr_scale=1e-3', 'quad_lr_scale=1e-2']
    assert launch.PRESETS['long'].final.fit == 'deadline' and 'epochs=200' in launch.PRESETS['long'].final.sets


def test_the_speed_preset_compares_the_cuda_defaults_eager_and_compiled_over_two_seeds(tmp_path):
    """docs/speed.md's call: the benchmark first, then 10 epochs of qresnet20 w16 and resnet20 with compile false and
    auto, seeds 0 and 1; the runs most needed first (a run that does not fit is dropped from the end)."""
    p = launch.PRESETS['speed']
    assert p.bench_first and p.sweep is None and p.final.fit == 'drop' and not p.final.weights
    runs = launch.plan(p.final.configs, list(p.final.sets), p.final.grid, tmp_path)
    picked = [(Path(r['config']).stem, o['seed'], o['compile']) for r in runs
              for o in [dict(x.split('=', 1) for x in r['overrides'])]]
    assert picked == [(m, s, c) for m in ('qresnet20-w16', 'resnet20') for s in '01' for c in ('false', 'auto')]
    assert all('epochs=10' in r['overrides'] for r in runs) and len({r['name'] for r in runs}) == 8


def test_fit_projection_waits_for_two_epochs_of_every_run_and_refuses_what_cannot_fit(tmp_path):
    runs = _runs(tmp_path, {'a': [T0 + 1, T0 + 2, T0 + 3], 'b': [T0 + 2]})
    fit = dict(budget_s=1, requested_epochs=50, refit=False)
    assert launch._check_fit(fit, runs, {'a': T0, 'b': T0}, T0, now=T0 + 3) is None and 'projected_s' not in fit
    _write_log(tmp_path / 'b', [T0 + 2, T0 + 3])
    with pytest.raises(launch.FitError, match='even one epoch of every run does not fit in 1s'):
        launch._check_fit(fit, runs, {'a': T0, 'b': T0}, T0, now=T0 + 3)


# ---- the scheduler on a fake clock ------------------------------------------------------------
class FakeClock:
    """Time that passes only in sleep(); the fake runs, like processes, write their logs as it passes."""

    def __init__(self):
        self.t, self.runs = T0, []

    def __call__(self):
        return self.t

    def sleep(self, dt):
        self.t += dt
        for run in self.runs:
            run.tick()


class FakeRun:
    """A run that logs epoch i at start + startup + (i + 1) * epoch_s and exits after its epochs and one more
    epoch's time (the final evaluation), writing results.json."""

    def __init__(self, run, clock, startup, epoch_s, log):
        self.run, self.clock, self.startup, self.epoch_s = run, clock, startup, epoch_s
        self.start = clock()
        self.epochs = int([o for o in run['overrides'] if o.startswith('epochs=')][-1].split('=')[1])
        self.stopped = False
        self.ends = [self.start + self.startup + (i + 1) * self.epoch_s for i in range(self.epochs)]
        log.append(self)
        clock.runs.append(self)

    def tick(self):
        if not self.stopped:
            _write_log(Path(self.run['out']), [t for t in self.ends if t <= self.clock()])

    def poll(self):
        if self.clock() < self.ends[-1] + self.epoch_s:
            return None
        (Path(self.run['out']) / 'results.json').write_text(json.dumps(dict(epochs=self.epochs, val={'top1': 1.0})))
        return 0

    def stop(self):
        self.stopped = True
        return -9


def _fake_batch(tmp_path, fit_in=None, timeout=None):
    runs = launch.plan([CIRCLES, MOONS], ['epochs=1000'], (), tmp_path)
    clock, started = FakeClock(), []
    speed = {runs[0]['name']: 2.0, runs[1]['name']: 4.0}
    summary = launch.run_batch(runs, parallel=2, fit_in=fit_in, timeout=timeout, clock=clock, sleep=clock.sleep,
                               start=lambda r: FakeRun(r, clock, 8.0, speed[r['name']], started),
                               say=lambda text: None)
    return summary, started, clock


def test_fit_in_restarts_every_run_with_the_epochs_that_fit(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, 'SHARE_ALPHA', 0.0)  # the fake runs do not speed up when others finish
    summary, started, clock = _fake_batch(tmp_path, fit_in=60)
    fit = summary['fit']
    # b's second epoch ends at 8 + 2 * 4 = 16 s: measured then; restart with 8 s start-up -> 36 s of room
    assert fit['measured_at_s'] == 16.0 and fit['refit'] and fit['requested_epochs'] == 1000
    assert launch._batch_time({k: fit['epochs'] + 1 for k in fit['epoch_s']}, fit['epoch_s']) <= 60 - 16 - 8
    assert launch._batch_time({k: fit['epochs'] + 2 for k in fit['epoch_s']}, fit['epoch_s']) > 60 - 16 - 8
    assert [s.stopped for s in started] == [True, True, False, False]  # the first generation was stopped
    for r in summary['runs']:
        assert r['returncode'] == 0 and r['overrides'][-1] == f"epochs={fit['epochs']}" and r['epochs'] == fit['epochs']
        assert len(launch._read_log(r)) == fit['epochs']
    assert fit['epochs'] == 8 and fit['share_alpha'] == 0  # b: (8 + 1) * 4 s <= 60 - 16 - 8 s < (9 + 1) * 4 s
    assert 50 < summary['total_wall_s'] <= 60  # the batch ends within its budget (on the fake clock)


def test_timeout_stops_unfinished_runs(tmp_path):
    summary, started, clock = _fake_batch(tmp_path, timeout=20)
    assert all(s.stopped for s in started) and [r['returncode'] for r in summary['runs']] == [-9, -9]
    assert 20 < clock() - T0 <= 21


# ---- process groups: nothing is left behind ---------------------------------------------------
SLEEPER = '''import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])
open(sys.argv[1] + '.tmp', 'w').write(f'{os.getpid()} {child.pid}')
os.replace(sys.argv[1] + '.tmp', sys.argv[1])
time.sleep(600)
'''


def _alive(pid):
    try:
        state = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ('Z', 'X')


def _wait_dead(pids, seconds=20):
    deadline = time.monotonic() + seconds
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def _sleepers(tmp_path, n=2):
    runs = [dict(name=f'r{i}', out=str(tmp_path / f'r{i}'), overrides=[]) for i in range(n)]
    pidfiles = [tmp_path / f'r{i}.pids' for i in range(n)]

    def start(r):
        Path(r['out']).mkdir(parents=True, exist_ok=True)
        return launch.Child([sys.executable, '-c', SLEEPER, str(tmp_path / f'{r["name"]}.pids')],
                            Path(r['out']) / 'train.out')
    return runs, pidfiles, start


def _pids(pidfiles, seconds=60):
    deadline = time.monotonic() + seconds
    while not all(p.exists() for p in pidfiles):
        assert time.monotonic() < deadline, 'the sleepers did not start'
        time.sleep(0.05)
    return [int(x) for p in pidfiles for x in p.read_text().split()]


pytestmark_linux = pytest.mark.skipif(not Path('/proc/self/stat').exists(), reason='reads /proc (Linux)')


@pytestmark_linux
@pytest.mark.parametrize('how', ['KeyboardInterrupt', 'exception', 'SIGTERM'])
def test_every_exit_path_kills_the_runs_and_their_children(tmp_path, how):
    runs, pidfiles, start = _sleepers(tmp_path)
    seen = []

    def interrupt(dt):
        seen.extend(_pids(pidfiles))
        if how == 'SIGTERM':
            os.kill(os.getpid(), signal.SIGTERM)
        raise {'KeyboardInterrupt': KeyboardInterrupt, 'exception': RuntimeError}.get(how, AssertionError)('stop')

    expected = {'KeyboardInterrupt': KeyboardInterrupt, 'exception': RuntimeError, 'SIGTERM': SystemExit}[how]
    try:
        with launch._signals_raise(), pytest.raises(expected):
            launch.run_batch(runs, parallel=2, start=start, sleep=interrupt, say=lambda text: None)
        assert len(seen) == 4 and _wait_dead(seen) == []
        assert [r['returncode'] for r in runs] == [-signal.SIGKILL] * 2
    finally:
        for p in seen:  # if the test failed, leave nothing behind
            if _alive(p):
                os.kill(p, signal.SIGKILL)


@pytestmark_linux
def test_a_failing_start_stops_the_runs_already_started(tmp_path):
    runs, pidfiles, start = _sleepers(tmp_path)
    seen = []

    def start_then_fail(r):
        if r['name'] == 'r1':
            seen.extend(_pids(pidfiles[:1]))
            raise OSError('cannot start r1')
        return start(r)
    try:
        with pytest.raises(OSError, match='cannot start r1'):
            launch.run_batch(runs, parallel=2, start=start_then_fail, sleep=lambda dt: None, say=lambda text: None)
        assert len(seen) == 2 and _wait_dead(seen) == []
    finally:
        for p in seen:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


@pytestmark_linux
@pytest.mark.skipif(sys.platform != 'linux', reason='PR_SET_PDEATHSIG is Linux')
def test_runs_die_with_a_killed_launcher(tmp_path):
    pidfile = tmp_path / 'pids'
    run = 'import os, sys, time; open(sys.argv[1], "w").write(str(os.getpid())); time.sleep(600)'
    parent = ('import sys, time; sys.path.insert(0, sys.argv[1]); from qzoo import launch; from pathlib import Path; '
              f'launch.Child([sys.executable, "-c", {run!r}, sys.argv[2]], Path(sys.argv[3])); time.sleep(600)')
    seen = []
    try:
        with procs.group([procs.PYTHON, '-c', parent, str(ROOT), str(pidfile), str(tmp_path / 'out')],
                         env=procs.child_env()) as launcher:
            seen = _pids([pidfile])
            assert _alive(seen[0])
            os.kill(launcher.pid, signal.SIGKILL)  # no clean-up can run: the kernel kills the run
            launcher.wait(timeout=30)
            assert _wait_dead(seen) == []
    finally:
        for p in seen:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


# ---- real runs -----------------------------------------------------------------------------
@pytest.mark.parametrize('grid, bad', [('model_args.hidden=/../../outside/x', "'/../../outside/x'"),
                                       ('quad_lr_scale=1e-2,..', "'..'"), ('lr=0.1,a/b', "'a/b'"),
                                       ('../x=1', 'dotted recipe key'), ('seed=', 'dotted recipe key')])
def test_grid_values_that_cannot_name_a_folder_are_refused(tmp_path, capsys, grid, bad):
    """A grid value is part of its run's folder name: `hidden=/../../outside/x` wrote outside --runs-dir."""
    with pytest.raises(ValueError, match=re.escape(bad)):
        launch.plan([CIRCLES], ['model=qmlp'], [grid], tmp_path / 'runs')
    assert launch.main([CIRCLES, '--grid', grid, '--runs-dir', str(tmp_path / 'runs')]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'error: --grid {grid!r}') and 'Traceback' not in err
    assert list(tmp_path.iterdir()) == []  # nothing written, inside --runs-dir or outside


def test_grid_values_name_the_run_folders_inside_runs_dir(tmp_path):
    runs = launch.plan([CIRCLES], ['model=qmlp'], ['quad_lr_scale=1e-2,1e-1', 'model_args.hidden=[2],[4]'],
                       tmp_path / 'runs')
    assert [r['name'] for r in runs] == [f'synthetic-circles-d2-s0-quad_lr_scale{q}-hidden{h}'
                                         for q in ('1e-2', '1e-1') for h in (2, 4)]
    assert all(Path(r['out']).parent == (tmp_path / 'runs').resolve() for r in runs)


def test_fit_in_needs_all_runs_side_by_side(tmp_path, capsys):
    assert launch.main([CIRCLES, MOONS, '--parallel', '1', '--fit-in', '60', '--runs-dir', str(tmp_path)]) == 2
    assert '--parallel' in capsys.readouterr().err


def test_launch_runs_side_by_side_summarises_and_packs(tmp_path, monkeypatch):
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    pack = tmp_path / 'out' / 'batch.tar.gz'
    rc = launch.main([CIRCLES, MOONS, '--set', 'epochs=3', '--parallel', '2', '--runs-dir', str(tmp_path / 'runs'),
                      '--pack', str(pack), '--fit-in', '1e7'])  # measured, never cut: no dependence on speed
    assert rc == 0
    s = json.loads((tmp_path / 'runs' / 'summary.json').read_text())
    assert [r['name'] for r in s['runs']] == ['synthetic-circles-d2-s0', 'synthetic-moons-d2-s0']
    for r in s['runs']:
        assert r['returncode'] == 0 and r['epochs'] == 3 and r['test']['top1'] > 50
        assert r['config'] == f"recipes/synthetic/{r['name'][10:-3]}.yaml"  # recorded relative to the repository
        log = [json.loads(l) for l in (Path(r['out']) / 'log.jsonl').read_text().splitlines()]
        assert [l['epoch'] for l in log] == [0, 1, 2] and log[0]['time'] < log[1]['time'] < log[2]['time']
    assert s['fit']['epochs'] == 3 and not s['fit']['refit'] and 0 < s['fit']['projected_s'] <= 1e7
    runs = launch.plan([CIRCLES, MOONS], ['epochs=3'], (), tmp_path / 'runs')
    launch.pack(tmp_path / 'runs', runs, tmp_path / 'light.tar.gz', weights=False)
    for path, weights in ((pack, True), (tmp_path / 'light.tar.gz', False)):
        with tarfile.open(path) as tar:
            names = set(tar.getnames())
        assert 'summary.json' in names and 'synthetic-moons-d2-s0/results.json' in names
        assert 'synthetic-moons-d2-s0/train.out' in names
        assert ('synthetic-moons-d2-s0/model.safetensors' in names) == weights
        assert not any(n.endswith(('.ckpt', 'best.safetensors', '.lock')) for n in names)


def _fake_benchmark(tmp_path, body):
    script = tmp_path / 'bench.py'
    script.write_text('import argparse, pathlib, sys, time\n'
                      'p = argparse.ArgumentParser(); p.add_argument("--suite")\n'
                      'p.add_argument("--budget-s", type=float)\n'
                      'p.add_argument("--results-dir"); p.add_argument("--smoke", action="store_true")\n'
                      'a = p.parse_args()\n' + body)
    return [str(script)]


def test_benchmark_results_are_packed_and_an_overrun_is_stopped(tmp_path, monkeypatch):
    out = tmp_path / 'out'
    out.mkdir()
    monkeypatch.setattr(launch, 'BENCHMARK', _fake_benchmark(tmp_path, (
        'd = pathlib.Path(a.results_dir); d.mkdir(parents=True)\n'
        '(d / "gpu.csv").write_text(f"suite,budget\\n{a.suite},{a.budget_s}\\n"); print("measured")\n')))
    said = []
    assert launch.run_benchmark(out, 42.7, said.append) == 0
    assert (out / 'bench' / 'gpu.csv').read_text() == 'suite,budget\ngpu,42.0\n' and 'exit 0' in said[-1]
    monkeypatch.setattr(launch, 'BENCHMARK', _fake_benchmark(tmp_path, 'time.sleep(600)\n'))
    monkeypatch.setattr(launch, 'BENCH_GRACE_S', 0.5)
    assert launch.run_benchmark(out, 0, said.append) == -signal.SIGKILL and 'FAILED' in said[-1]
    (out / 'x.tar.gz').write_bytes(b'')
    launch.pack_logs(out)
    assert sorted(p.name for p in out.iterdir()) == ['logs.tar.gz', 'x.tar.gz']
    with tarfile.open(out / 'logs.tar.gz') as tar:
        assert {'bench/gpu.csv', 'bench.log'} <= set(tar.getnames())


def test_cuda_tests_run_in_the_checkout_into_the_session_log(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, '_cuda_available', lambda: True)
    said = []
    monkeypatch.setattr(launch, 'CUDA_TESTS', ['-c', 'import os; print("in", os.getcwd()); print("2 passed")'])
    assert launch.run_cuda_tests(tmp_path, said.append, 60) == 0
    assert f'  | in {ROOT}' in said and '  | 2 passed' in said and said[-1].startswith('CUDA tests: exit 0')
    assert list(tmp_path.iterdir()) == []  # the output went into the log, no file is left
    monkeypatch.setattr(launch, 'CUDA_TESTS', ['-c', 'print("1 failed"); raise SystemExit(1)'])
    assert launch.run_cuda_tests(tmp_path, said.append, 60) == 1
    assert said[-2:] == ['  | 1 failed', said[-1]] and 'FAILED' in said[-1]
    monkeypatch.setattr(launch, 'CUDA_TESTS', ['-c', 'import time; time.sleep(600)'])
    assert launch.run_cuda_tests(tmp_path, said.append, 0.5) == -signal.SIGKILL  # stopped at its limit
    assert said[-1].startswith('CUDA tests: exit -9')


def test_cuda_tests_say_why_they_are_skipped(tmp_path, monkeypatch):
    said = []
    monkeypatch.setattr(launch, '_cuda_available', lambda: False)
    assert launch.run_cuda_tests(tmp_path, said.append) is None
    assert said == ['CUDA tests skipped: CUDA is not available']
    monkeypatch.setattr(launch, '_cuda_available', lambda: True)
    monkeypatch.setattr(launch, 'checkout_root', lambda: None)  # an installed wheel: no tests/ to run
    assert launch.run_cuda_tests(tmp_path, said.append) is None and 'checkout' in said[-1]
    assert list(tmp_path.iterdir()) == []


def test_the_default_cuda_tests_exist_and_are_the_cuda_ones():
    args = launch.CUDA_TESTS
    assert args[:2] == ['-m', 'pytest'] and args[args.index('-k') + 1] == 'cuda'
    files = [a for a in args if a.startswith('tests/')]
    assert 'tests/test_layers.py' in files and all((ROOT / f).is_file() for f in files)


def test_a_preset_outside_a_checkout_says_a_checkout_is_needed(tmp_path, monkeypatch, capsys):
    from qzoo import checkout
    monkeypatch.setattr(checkout, 'PACKAGE_PARENT', tmp_path)  # as if qzoo were installed from a wheel
    monkeypatch.chdir(tmp_path)
    assert launch.main(['--preset', 'quad-sweep', '--smoke', '--out', str(tmp_path / 'out')]) == 2
    err = capsys.readouterr().err
    assert 'needs a checkout of the qzoo repository' in err and 'recipes/cifar10-jpeg75' in err
    assert not (tmp_path / 'out').exists()


@pytest.mark.slow
def test_a_two_stage_preset_chooses_on_validation_and_packs_a_device_call(tmp_path, monkeypatch):
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    monkeypatch.setenv('QZOO_DATA', str(SHARED / 'data'))
    sweep = launch.Stage('sweep', (CIRCLES,), ('model=qmlp',), ('quad_lr_scale=0.1,1',), weights=False)
    final = launch.Stage('final', (CIRCLES, MOONS), ('model=qmlp',))
    monkeypatch.setitem(launch.PRESETS, 'tiny-auto', launch.Preset(final, sweep, choice_from=CIRCLES))
    monkeypatch.setattr(launch, 'BENCHMARK', _fake_benchmark(tmp_path, 'print("smoke", a.smoke); sys.exit(3)\n'))
    monkeypatch.setattr(launch, '_cuda_available', lambda: True)  # the CUDA tests' step, with a failing stand-in
    monkeypatch.setattr(launch, 'CUDA_TESTS', ['-c', 'print("1 failed, 1 passed (stand-in)"); raise SystemExit(1)'])
    out = tmp_path / 'out'
    rc = launch.main(['--preset', 'tiny-auto', '--smoke', '--deadline-s', '600', '--bench-s', '30', '--out', str(out),
                      '--runs-dir', str(tmp_path / 'runs')])
    assert rc == 1  # the benchmark failed; the training results are packed all the same
    assert sorted(p.name for p in out.iterdir()) == ['final.tar.gz', 'logs.tar.gz', 'sweep.tar.gz']
    with tarfile.open(out / 'logs.tar.gz') as tar:
        assert {'session.log', 'choice.json', 'environment.txt', 'bench.log'} <= set(tar.getnames())
        log = tar.extractfile('session.log').read().decode()
        choice = json.loads(tar.extractfile('choice.json').read())
    assert 'benchmark: exit 3' in log and 'FAILED' in log and 'smoke True' in log  # --smoke reaches the suite
    # the CUDA tests ran after training and before the benchmark; their failure is reported, the call went on
    assert log.index('stage final') < log.index('| 1 failed, 1 passed (stand-in)') < log.index('benchmark: ')
    assert 'CUDA tests: exit 1' in log and 'failed: CUDA tests' in log
    sweep_runs = json.loads((tmp_path / 'runs' / 'sweep' / 'summary.json').read_text())['runs']
    best = max(sweep_runs, key=lambda r: r['val']['top1'])  # the first of equals, as the launcher
    trials = [dict(quad_lr_scale=r['overrides'][-1].split('=')[1], epochs=r['epochs'], val=r['val']['top1'],
                   finite=not r['val'].get('nonfinite'), finished=True) for r in sweep_runs]
    assert choice == {'recipes/synthetic/circles-d2.yaml': dict(
        quad_lr_scale=best['overrides'][-1].split('=')[1], metric='top1', val=best['val']['top1'], run=best['name'],
        trials=trials)}
    final_runs = json.loads((tmp_path / 'runs' / 'final' / 'summary.json').read_text())['runs']
    picked = choice['recipes/synthetic/circles-d2.yaml']['quad_lr_scale']  # every final run takes circles' choice
    assert [r['overrides'] for r in final_runs] == [['model=qmlp', f'quad_lr_scale={picked}']] * 2
    assert all(r['returncode'] == 0 for r in sweep_runs + final_runs)
    with tarfile.open(out / 'sweep.tar.gz') as tar:
        assert not any(n.endswith('model.safetensors') for n in tar.getnames())


@pytest.mark.slow
def test_a_benchmark_first_preset_measures_before_training_and_tests_after(tmp_path, monkeypatch):
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    final = launch.Stage('final', (CIRCLES,), ('model=qmlp',), weights=False)
    monkeypatch.setitem(launch.PRESETS, 'tiny-speed', launch.Preset(final, bench_first=True))
    monkeypatch.setattr(launch, 'BENCHMARK', _fake_benchmark(tmp_path, 'print("budget", a.budget_s, a.smoke)\n'))
    monkeypatch.setattr(launch, '_cuda_available', lambda: True)
    monkeypatch.setattr(launch, 'CUDA_TESTS', ['-c', 'print("3 passed (stand-in)")'])
    out = tmp_path / 'out'
    assert launch.main(['--preset', 'tiny-speed', '--smoke', '--deadline-s', '600', '--bench-s', '200', '--out',
                        str(out), '--runs-dir', str(tmp_path / 'runs')]) == 0
    with tarfile.open(out / 'logs.tar.gz') as tar:
        log = tar.extractfile('session.log').read().decode()
        bench_log = tar.extractfile('bench.log').read().decode()
    assert 'budget 200.0 True' in bench_log and log.count('benchmark: ') == 2  # its command and its exit, once
    assert log.index('benchmark: exit 0') < log.index('stage final') < log.index('| 3 passed (stand-in)')
    stage = log[log.index('stage final'):].splitlines()[0]  # training keeps TESTS_AFTER_S for the tests, not 200 s
    assert launch.TESTS_AFTER_S < 200 - 100
    assert float(stage.split('fitted to ')[1].rstrip('s')) > 600 - 200 - launch.PACK_S  # (100 s for what ran before)


def _tracked_copy_without_checkpoints(dest):
    """What a device call gets (docs/gpu.md): the tracked files of the checkout, without qzoo/checkpoints/."""
    import subprocess
    files = subprocess.run(['git', '-C', str(ROOT), 'ls-files', '-z'], capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split('\0')):
        if rel.startswith('qzoo/checkpoints/') or not (ROOT / rel).is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, dest / rel)
    return dest


@pytest.mark.slow
def test_a_cifar_preset_runs_from_the_tracked_files_without_the_published_weights(tmp_path):
    """The documented device call: ``PYTHONPATH=. python3 -m qzoo_cli launch ...`` in a copy of the tracked files
    without qzoo/checkpoints/ (training never reads the published weights)."""
    if not (ROOT / '.git').exists():
        pytest.skip('needs a git checkout (the copy is made from git ls-files)')
    data = need_shared('data', 'cifar10-jpeg75.npz')
    copy = _tracked_copy_without_checkpoints(tmp_path / 'call')
    assert not (copy / 'qzoo' / 'checkpoints').exists() and (copy / 'recipes').is_dir()
    out = tmp_path / 'out'
    env = dict(procs.child_env(QZOO_DATA=str(data.parent)), PYTHONPATH='.')
    res = procs.run([procs.PYTHON, '-m', 'qzoo_cli', 'launch', '--preset', 'quad-sweep', '--smoke', '--out', str(out),
                     '--runs-dir', str(tmp_path / 'runs')], timeout=900, cwd=copy, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ['logs.tar.gz', 'quad-sweep.tar.gz']
    s = json.loads((tmp_path / 'runs' / 'quad-sweep' / 'summary.json').read_text())
    assert all(str(copy) in r['out'] or r['out'].startswith(str(tmp_path)) for r in s['runs'])
    assert [r['overrides'][-1] for r in s['runs']] == [f'quad_lr_scale={v}' for v in ('1e-4', '1e-3', '1e-2', '1e-1')]
    assert all(r['returncode'] == 0 and r['dataset'] == 'cifar10-jpeg75' and r['epochs'] == 1 for r in s['runs'])


@pytest.mark.slow
def test_the_speed_call_runs_from_the_tracked_files_without_the_published_weights(tmp_path):
    """docs/gpu.md's speed call, with --smoke: the benchmark suite's CPU run, then the 8 runs on the CPU."""
    if not (ROOT / '.git').exists():
        pytest.skip('needs a git checkout (the copy is made from git ls-files)')
    data = need_shared('data', 'cifar10-jpeg75.npz')
    copy = _tracked_copy_without_checkpoints(tmp_path / 'call')
    out = tmp_path / 'out'
    env = dict(procs.child_env(QZOO_DATA=str(data.parent)), PYTHONPATH='.')
    res = procs.run([procs.PYTHON, '-m', 'qzoo_cli', 'launch', '--preset', 'speed', '--smoke', '--deadline-s', '3400',
                     '--bench-s', '3000', '--out', str(out), '--runs-dir', str(tmp_path / 'runs')], timeout=3500,
                    cwd=copy, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ['logs.tar.gz', 'speed.tar.gz']
    with tarfile.open(out / 'logs.tar.gz') as tar:
        suite = tar.extractfile('bench/suite.csv').read().decode()
    assert suite.count(',ok,') == len(suite.splitlines()) - 1  # every step of the suite ran
    s = json.loads((tmp_path / 'runs' / 'speed' / 'summary.json').read_text())
    assert len(s['runs']) == 8 and all(r['returncode'] == 0 and r['epochs'] == 1 for r in s['runs'])


def test_every_path_in_the_help_texts_exists():
    from qzoo import engine
    for name, text in (('qzoo train', engine.TRAIN_HELP), ('qzoo launch', launch.__doc__)):
        paths = set(re.findall(r'recipes/[\w./-]+\.yaml', text))
        assert paths and [p for p in paths if not (ROOT / p).is_file()] == [], name


@pytest.mark.slow
def test_a_deadline_stage_packs_its_resume_state_and_the_next_call_continues_it(tmp_path, monkeypatch):
    """The 'long' kind of stage: its runs train until the call's time is up, the pack keeps last.ckpt, and the next
    call with --resume continues each run from its last finished epoch (the log goes on without a gap)."""
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    monkeypatch.setenv('QZOO_DATA', str(SHARED / 'data'))
    stage = launch.Stage('tiny-long', (CIRCLES,), ('model=qmlp', 'smoke.epochs=100000'), fit='deadline')
    monkeypatch.setitem(launch.PRESETS, 'tiny-long', launch.Preset(stage))
    # the call's time is up once the run has logged `until[0]` epochs (a clock that stands still before: no test
    # depends on how fast this machine is)
    until = [3]

    def clock():
        logs = list((tmp_path / 'runs' / 'tiny-long').glob('*/log.jsonl'))
        done = logs and len(logs[0].read_text().splitlines()) >= until[0]
        return T0 + (1e9 if done else 0)
    real = launch.run_batch
    monkeypatch.setattr(launch, 'run_batch', lambda *a, **k: real(*a, clock=clock, **k))
    args = ['--preset', 'tiny-long', '--smoke', '--deadline-s', '900', '--bench-s', '0', '--runs-dir',
            str(tmp_path / 'runs')]
    assert launch.main(args + ['--out', str(tmp_path / 'out1')]) == 0  # stopped at the deadline: not a failure
    run = next((tmp_path / 'runs' / 'tiny-long').glob('*-s0'))
    first = [json.loads(l)['epoch'] for l in (run / 'log.jsonl').read_text().splitlines()]
    assert first and first == list(range(len(first))) and not (run / 'results.json').exists()
    with tarfile.open(tmp_path / 'out1' / 'tiny-long.tar.gz') as tar:
        assert f'{run.name}/last.ckpt' in tar.getnames() and f'{run.name}/best.safetensors' in tar.getnames()
    summary = json.loads((tmp_path / 'runs' / 'tiny-long' / 'summary.json').read_text())
    assert summary['runs'][0]['to_resume'] is True
    until[0] = len(first) + 3
    assert launch.main(args + ['--resume', '--out', str(tmp_path / 'out2')]) == 0
    both = [json.loads(l)['epoch'] for l in (run / 'log.jsonl').read_text().splitlines()]
    assert both[:len(first)] == first and both == list(range(len(both))) and len(both) > len(first)
    with tarfile.open(tmp_path / 'out2' / 'logs.tar.gz') as tar:
        assert '1 resumed' in tar.extractfile('session.log').read().decode()
