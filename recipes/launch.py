#!/usr/bin/env python
"""Run several recipes side by side (one GPU or the CPU) and summarise them.

    python recipes/launch.py recipes/cifar10-jpeg75/resnet20.yaml recipes/cifar10-jpeg75/resnet32.yaml \\
        --parallel 7 --runs-dir runs/batch --pack $OUT/batch.tar.gz
    python recipes/launch.py recipes/cifar10-jpeg75/qresnet20-w16.yaml --set epochs=10 \\
        --grid quad_lr_scale=1e-4,1e-3,1e-2,1e-1 --runs-dir runs/sweep      # a validation sweep
    python recipes/launch.py recipes/cwru/[!_]*.yaml --grid seed=0,1,2 --parallel 2

Each run is `recipes/train.py --config C --out <runs-dir>/<name>[-<grid>]` in its own process
(stdout/stderr in <run>/train.out). summary.json lists every run's overrides, validation and
test metrics, params, MACs, wall time, mean img/s and exit status; with --pack, the run folders
(without resume checkpoints) and the summary are packed into one .tar.gz.

--fit-in S (all runs side by side, one shared epoch count): once every run has logged two epochs,
the batch's finish is projected from the measured epoch times under the real contention (runs
that finish early free the device for the rest: see _batch_time); if it
would end later than S seconds after the launch, every run is stopped and restarted with the
largest shared epoch count that fits (once; summary.json's "fit" says what was measured and done).
"""
import argparse
import itertools
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qzoo.engine import load_recipe  # noqa: E402


def _grid(items):
    keys, values = [], []
    for item in items:
        k, _, vs = item.partition('=')
        keys.append(k)
        values.append([v for v in vs.split(',') if v != ''])
    for combo in itertools.product(*values) if keys else [()]:
        yield [f'{k}={v}' for k, v in zip(keys, combo)]


def _tag(overrides):
    return '-'.join(o.split('=', 1)[0].split('.')[-1] + o.split('=', 1)[1] for o in overrides)


def plan(configs, sets, grid, runs_dir):
    runs = []
    for cfg_path in configs:
        for g in _grid(grid):
            overrides = list(sets) + g
            cfg = load_recipe(cfg_path, overrides)  # validates now, before anything starts
            name = cfg['name'] + (f'-s{cfg["seed"]}') + (f'-{_tag(g)}' if g and not all(
                o.startswith('seed=') for o in g) else '')
            runs.append(dict(config=str(cfg_path), overrides=overrides, out=str(Path(runs_dir) / name), name=name))
    names = [r['name'] for r in runs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise SystemExit(f'two runs would write the same folder: {sorted(dup)}; give them distinct names')
    return runs


def _summarise(run):
    out = Path(run['out'])
    res_file = out / 'results.json'
    rec = dict(run)
    if res_file.exists():
        res = json.loads(res_file.read_text())
        rec.update({k: res.get(k) for k in ('model', 'model_args', 'dataset', 'params', 'macs', 'val', 'test',
                                            'selected_epoch', 'epochs', 'wall_time_s', 'device')})
    lines = _read_log(run)
    if lines:
        steady = lines[1:] or lines  # epoch 0 includes start-up
        rec['mean_img_s'] = sum(l['img_s'] for l in steady) / len(steady)
        rec['mean_epoch_s'] = sum(l['epoch_time_s'] for l in steady) / len(steady)
    return rec


def _read_log(run):
    """The run's log.jsonl records so far (a line still being written is left out)."""
    try:
        text = (Path(run['out']) / 'log.jsonl').read_text()
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            break
    return records


SHARE_ALPHA = 0.5  # see _batch_time


def _batch_time(remaining, epoch_s, alpha=SHARE_ALPHA):
    """Seconds until every run has done its ``remaining`` epochs, given each run's epoch time
    ``epoch_s`` measured while all of them shared the device. As runs finish, the others speed up
    by (N / n) ** alpha with n runs left of N: alpha = 1 is perfect sharing of a saturated device,
    0 no speed-up at all. Seven CIFAR ResNets on one H100 (2026-11-27, runs/conventional) ran as
    alpha ~ 0.8; 0.5 keeps a margin."""
    rem = {k: float(v) for k, v in remaining.items() if v > 0}
    N, t = len(epoch_s), 0.0
    while rem:
        speed = (N / len(rem)) ** alpha
        dt = min(rem[k] * epoch_s[k] / speed for k in rem)
        t += dt
        for k in list(rem):
            rem[k] -= dt * speed / epoch_s[k]
            if rem[k] <= 1e-9:
                del rem[k]
    return t


def _check_fit(fit, active, started, t0):
    """Once every active run has logged two epochs: project the batch's end from the runs' epoch times.
    Returns the epoch count to restart with when it would overrun fit['budget_s'], else None."""
    times = {r['name']: [l['time'] for l in _read_log(r)] for r, _, _ in active}  # when each epoch ended
    if any(len(t) < 2 for t in times.values()):
        return None  # not measured yet
    now, E = time.time(), fit['requested_epochs']
    per_epoch, overhead = {}, {}
    for name, t in times.items():
        per_epoch[name] = (t[-1] - t[0]) / (len(t) - 1)  # epoch 0 excluded: start-up, cudnn autotuning
        overhead[name] = max(0.0, t[0] - started[name] - per_epoch[name])
    # the remaining epochs, plus one epoch's time for the final test evaluation and saving
    left = _batch_time({k: E - len(t) + 1 for k, t in times.items()}, per_epoch)
    fit.update(measured_at_s=now - t0, epoch_s={k: round(v, 3) for k, v in per_epoch.items()},
               startup_s={k: round(v, 2) for k, v in overhead.items()}, share_alpha=SHARE_ALPHA,
               projected_s=now - t0 + left)
    if fit['projected_s'] <= fit['budget_s']:
        fit['epochs'] = E
        return None
    # a restart pays the start-up again (overhead: what epoch 0 took beyond an epoch), then n epochs and the
    # final evaluation: the largest n that fits
    room = t0 + fit['budget_s'] - now - max(overhead.values())
    new = 0
    while new < E and _batch_time({k: new + 2 for k in per_epoch}, per_epoch) <= room:
        new += 1  # new + 1 epochs (+ the final evaluation) fit
    if new < 1:
        raise SystemExit(f'--fit-in: even one epoch of every run does not fit in {fit["budget_s"]:.0f}s '
                         f'(slowest epoch {max(per_epoch.values()):.1f}s); run fewer models side by side')
    if new >= E:  # the overrun is within the projection's slack: carry on
        fit['epochs'] = E
        return None
    fit.update(refit=True, epochs=new)
    return new


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('configs', nargs='+')
    ap.add_argument('--set', action='append', default=[], metavar='KEY=VALUE', help='override for every run')
    ap.add_argument('--grid', action='append', default=[], metavar='KEY=V1,V2', help='one run per value')
    ap.add_argument('--parallel', type=int, default=1)
    ap.add_argument('--runs-dir', default='runs/launch')
    ap.add_argument('--pack', help='write the runs + summary into this .tar.gz')
    ap.add_argument('--pack-without-weights', action='store_true',
                    help='leave model.safetensors out of the pack (sweeps: only their metrics are wanted)')
    ap.add_argument('--smoke', action='store_true', help='pass --smoke to every run')
    ap.add_argument('--timeout', type=float, default=None, help='seconds before unfinished runs are stopped')
    ap.add_argument('--fit-in', type=float, default=None, metavar='S',
                    help='measure, then cut the shared epoch count so that the batch ends within S seconds')
    a = ap.parse_args(argv)
    runs = plan(a.configs, a.set, a.grid, a.runs_dir)
    fit = None
    if a.fit_in:
        epochs = {load_recipe(r['config'], r['overrides'])['epochs'] for r in runs}
        if len(epochs) != 1 or a.parallel < len(runs):
            raise SystemExit('--fit-in needs every run side by side (--parallel >= number of runs) and one shared '
                             f'epoch count (got epochs {sorted(epochs)}, {len(runs)} runs, --parallel {a.parallel})')
        fit = dict(budget_s=a.fit_in, requested_epochs=epochs.pop(), refit=False)
    Path(a.runs_dir).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')])))
    if a.parallel > 1:
        env.setdefault('OMP_NUM_THREADS', str(max(1, (os.cpu_count() or 1) // a.parallel)))
    t0 = time.time()
    pending, active = list(runs), []
    started = {}  # run name -> wall-clock start of its process
    while pending or active:
        while pending and len(active) < a.parallel:
            r = pending.pop(0)
            Path(r['out']).mkdir(parents=True, exist_ok=True)
            started[r['name']] = time.time()
            cmd = [sys.executable, str(ROOT / 'recipes' / 'train.py'), '--config', r['config'], '--out', r['out'],
                   '--no-progress'] + (['--smoke'] if a.smoke else []) + r['overrides']
            fh = open(Path(r['out']) / 'train.out', 'w')
            active.append((r, subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env), fh))
            print(f'[{time.time() - t0:7.1f}s] start {r["name"]}', flush=True)
        time.sleep(0.5)
        if fit is not None and 'projected_s' not in fit and not pending:  # measured once
            new_epochs = _check_fit(fit, active, started, t0)
            if new_epochs is not None:
                for r, p, fh in active:
                    p.kill()
                    p.wait()
                    fh.close()
                    for f in ('log.jsonl', 'last.ckpt', 'best.safetensors'):
                        (Path(r['out']) / f).unlink(missing_ok=True)
                    r['overrides'] = r['overrides'] + [f'epochs={new_epochs}']
                    pending.append(r)
                active = []
                print(f'[{time.time() - t0:7.1f}s] --fit-in: restarting every run with epochs={new_epochs} '
                      f'(projected {fit["projected_s"]:.0f}s for {fit["requested_epochs"]} epochs > '
                      f'{fit["budget_s"]:.0f}s)', flush=True)
                continue
        for item in list(active):
            r, p, fh = item
            if a.timeout and time.time() - t0 > a.timeout and p.poll() is None:
                p.kill()
            if p.poll() is not None:
                fh.close()
                r['returncode'] = p.returncode
                active.remove(item)
                print(f'[{time.time() - t0:7.1f}s] done  {r["name"]} (exit {p.returncode})', flush=True)
    summary = dict(total_wall_s=time.time() - t0, parallel=a.parallel, runs=[_summarise(r) for r in runs])
    if fit is not None:
        summary['fit'] = fit
    (Path(a.runs_dir) / 'summary.json').write_text(json.dumps(summary, indent=2))
    for r in summary['runs']:
        v, t = r.get('val') or {}, r.get('test') or {}
        print(f"{r['name']:45s} exit {r.get('returncode')}  val {json.dumps(v)}  test {json.dumps(t)}  "
              f"{r.get('mean_img_s', 0):.0f} img/s")
    if a.pack:
        Path(a.pack).parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(a.pack, 'w:gz') as tar:
            tar.add(Path(a.runs_dir) / 'summary.json', arcname='summary.json')
            for r in runs:
                for f in Path(r['out']).iterdir():
                    skip = {'best.safetensors'} | ({'model.safetensors'} if a.pack_without_weights else set())
                    if f.is_file() and f.suffix not in ('.ckpt', '.tmp') and f.name not in skip:
                        tar.add(f, arcname=f'{r["name"]}/{f.name}')
    return 0 if all(r.get('returncode') == 0 for r in summary['runs']) else 1


if __name__ == '__main__':
    sys.exit(main())
