#!/usr/bin/env python
"""Run several recipes side by side (one GPU or the CPU) and summarise them.

    python recipes/launch.py recipes/cifar10-jpeg75/resnet20.yaml recipes/cifar10-jpeg75/resnet32.yaml \\
        --parallel 7 --runs-dir runs/batch --pack $OUT/batch.tar.gz
    python recipes/launch.py recipes/cifar10-jpeg75/qresnet20-w16.yaml --set epochs=10 \\
        --grid quad_lr_scale=1e-4,1e-3,1e-2,1e-1 --runs-dir runs/sweep      # a validation sweep
    python recipes/launch.py recipes/cwru/*.yaml --grid seed=0,1,2 --parallel 2

Each run is `recipes/train.py --config C --out <runs-dir>/<name>[-<grid>]` in its own process
(stdout/stderr in <run>/train.out). summary.json lists every run's overrides, validation and
test metrics, params, MACs, wall time, mean img/s and exit status; with --pack, the run folders
(without resume checkpoints) and the summary are packed into one .tar.gz.
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

import yaml

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
    log = out / 'log.jsonl'
    if log.exists():
        lines = [json.loads(l) for l in log.read_text().splitlines() if l.strip()]
        if lines:
            rec['mean_img_s'] = sum(l['img_s'] for l in lines[1:] or lines) / len(lines[1:] or lines)
            rec['mean_epoch_s'] = sum(l['epoch_time_s'] for l in lines[1:] or lines) / len(lines[1:] or lines)
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('configs', nargs='+')
    ap.add_argument('--set', action='append', default=[], metavar='KEY=VALUE', help='override for every run')
    ap.add_argument('--grid', action='append', default=[], metavar='KEY=V1,V2', help='one run per value')
    ap.add_argument('--parallel', type=int, default=1)
    ap.add_argument('--runs-dir', default='runs/launch')
    ap.add_argument('--pack', help='write the runs + summary into this .tar.gz')
    ap.add_argument('--smoke', action='store_true', help='pass --smoke to every run')
    ap.add_argument('--timeout', type=float, default=None, help='seconds before unfinished runs are stopped')
    a = ap.parse_args(argv)
    runs = plan(a.configs, a.set, a.grid, a.runs_dir)
    Path(a.runs_dir).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')])))
    if a.parallel > 1:
        env.setdefault('OMP_NUM_THREADS', str(max(1, (os.cpu_count() or 1) // a.parallel)))
    t0 = time.time()
    pending, active = list(runs), []
    while pending or active:
        while pending and len(active) < a.parallel:
            r = pending.pop(0)
            Path(r['out']).mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, str(ROOT / 'recipes' / 'train.py'), '--config', r['config'], '--out', r['out'],
                   '--no-progress'] + (['--smoke'] if a.smoke else []) + r['overrides']
            fh = open(Path(r['out']) / 'train.out', 'w')
            active.append((r, subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env), fh))
            print(f'[{time.time() - t0:7.1f}s] start {r["name"]}', flush=True)
        time.sleep(0.5)
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
                    if f.is_file() and f.suffix not in ('.ckpt', '.tmp') and f.name != 'best.safetensors':
                        tar.add(f, arcname=f'{r["name"]}/{f.name}')
    return 0 if all(r.get('returncode') == 0 for r in summary['runs']) else 1


if __name__ == '__main__':
    sys.exit(main())
