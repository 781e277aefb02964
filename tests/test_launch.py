"""recipes/launch.py: side-by-side runs, the summary, the pack, and --fit-in's projection."""
import json
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'recipes'))
import launch  # noqa: E402

CIRCLES, MOONS = str(ROOT / 'recipes/synthetic/circles-d2.yaml'), str(ROOT / 'recipes/synthetic/moons-d2.yaml')


def _write_log(out: Path, times):
    out.mkdir(parents=True, exist_ok=True)
    (out / 'log.jsonl').write_text(''.join(json.dumps(dict(epoch=i, time=t)) + '\n' for i, t in enumerate(times)))


def _active(tmp_path, logs):
    runs = []
    for name, times in logs.items():
        r = dict(name=name, out=str(tmp_path / name))
        _write_log(tmp_path / name, times)
        runs.append((r, None, None))
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
    t0 = time.time() - 30
    # run a: started at t0, epoch 0 ends at +10 (start-up), then 2 s/epoch; run b: 4 s/epoch
    active = _active(tmp_path, {'a': [t0 + 10, t0 + 12, t0 + 14], 'b': [t0 + 12, t0 + 16]})
    fit = dict(budget_s=100, requested_epochs=20, refit=False)
    assert launch._check_fit(fit, active, {'a': t0, 'b': t0}, t0) is None
    # from now (t0 + 30): a has 17 epochs + the final evaluation left, b 18 + 1
    assert fit['projected_s'] == pytest.approx(30 + launch._batch_time({'a': 18, 'b': 19}, fit['epoch_s']), abs=0.5)
    assert fit['epoch_s'] == {'a': 2.0, 'b': 4.0} and fit['startup_s'] == {'a': 8.0, 'b': 8.0}
    assert fit['epochs'] == 20 and not fit['refit']


def test_fit_projection_cuts_epochs_when_it_overruns(tmp_path):
    t0 = time.time() - 15.5  # "now" is t0 + 15.5 (+ the test's own few microseconds)
    active = _active(tmp_path, {'a': [t0 + 10, t0 + 12, t0 + 14], 'b': [t0 + 12, t0 + 16]})
    fit = dict(budget_s=60, requested_epochs=20, refit=False)
    new = launch._check_fit(fit, active, {'a': t0, 'b': t0}, t0)
    # restart at 15.5 s with 8 s of start-up: 36.5 s left for n epochs + the final evaluation of both runs;
    # a (2 s/epoch) ends at 2(n + 1) s, b then runs sqrt(2) times faster: (n + 1) * (2 + 2 / sqrt(2)) s -> n = 9
    room = 60 - 15.5 - 8
    assert launch._batch_time({'a': new + 1, 'b': new + 1}, fit['epoch_s']) <= room
    assert launch._batch_time({'a': new + 2, 'b': new + 2}, fit['epoch_s']) > room
    assert new == 9 and fit['refit'] and fit['epochs'] == 9
    assert fit['projected_s'] > 60


def test_fit_projection_waits_for_two_epochs_of_every_run(tmp_path):
    t0 = time.time()
    active = _active(tmp_path, {'a': [t0 + 1, t0 + 2, t0 + 3], 'b': [t0 + 2]})
    fit = dict(budget_s=1, requested_epochs=50, refit=False)
    assert launch._check_fit(fit, active, {'a': t0, 'b': t0}, t0) is None and 'projected_s' not in fit


def test_fit_in_needs_all_runs_side_by_side(tmp_path):
    with pytest.raises(SystemExit, match='--parallel'):
        launch.main([CIRCLES, MOONS, '--parallel', '1', '--fit-in', '60', '--runs-dir', str(tmp_path)])


@pytest.mark.parametrize('weights', [True, False])
def test_launch_runs_side_by_side_summarises_and_packs(tmp_path, monkeypatch, weights):
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    pack = tmp_path / 'out' / 'batch.tar.gz'
    rc = launch.main([CIRCLES, MOONS, '--set', 'epochs=3', '--parallel', '2', '--runs-dir', str(tmp_path / 'runs'),
                      '--pack', str(pack), '--fit-in', '600'] + ([] if weights else ['--pack-without-weights']))
    assert rc == 0
    s = json.loads((tmp_path / 'runs' / 'summary.json').read_text())
    assert [r['name'] for r in s['runs']] == ['synthetic-circles-d2-s0', 'synthetic-moons-d2-s0']
    for r in s['runs']:
        assert r['returncode'] == 0 and r['epochs'] == 3 and r['test']['top1'] > 50
        log = [json.loads(l) for l in (Path(r['out']) / 'log.jsonl').read_text().splitlines()]
        assert [l['epoch'] for l in log] == [0, 1, 2] and log[0]['time'] < log[1]['time'] < log[2]['time']
    assert s['fit']['epochs'] == 3 and not s['fit']['refit'] and s['fit']['projected_s'] <= 600
    with tarfile.open(pack) as tar:
        names = set(tar.getnames())
    assert 'summary.json' in names and 'synthetic-moons-d2-s0/results.json' in names
    assert ('synthetic-moons-d2-s0/model.safetensors' in names) == weights
    assert not any(n.endswith(('.ckpt', 'best.safetensors')) for n in names)


@pytest.mark.slow
def test_fit_in_restarts_every_run_with_the_epochs_that_fit(tmp_path, monkeypatch):
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    t0 = time.time()
    rc = launch.main([CIRCLES, MOONS, '--set', 'epochs=100000', '--parallel', '2', '--fit-in', '20',
                      '--runs-dir', str(tmp_path)])
    wall = time.time() - t0
    s = json.loads((tmp_path / 'summary.json').read_text())
    assert rc == 0 and s['fit']['refit'] and 1 <= s['fit']['epochs'] < 100000
    for r in s['runs']:
        assert r['epochs'] == s['fit']['epochs'] and r['overrides'][-1] == f"epochs={s['fit']['epochs']}"
        assert sum(1 for _ in open(Path(r['out']) / 'log.jsonl')) == s['fit']['epochs']
    assert wall < 40  # the projection keeps the batch near its budget
