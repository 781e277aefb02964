#!/usr/bin/env python
"""Continue a finished CIFAR run from its saved weights, a few epochs, with per-step diagnostics.

A run folder's ``model.safetensors`` holds the weights of its best validation epoch; when a run blew
up right after that epoch (``qzoo.divergence``), continuing from those weights on the CPU shows whether
the blow-up comes back, what grows first, and whether a remedy stops it, at the cost of one or two
epochs instead of a whole run::

    python recipes/cifar10-jpeg75/continue_run.py RUN --epoch 17 --until 19 --out runs/continue/w9 \\
        [--set grad_clip=5] [--set amp=bf16]

The run's resolved ``recipe.yaml`` is used with ``device=cpu``, ``monitor_every`` (default 1: every step,
into ``<out>/monitor.jsonl``) and the ``--set`` overrides; ``qzoo.engine.warm_start`` positions the
learning-rate schedule, the data order and the augmentation at epoch ``--epoch`` (the optimizer's
momentum starts empty). Prints one line per step around the largest gradient norm, and the epochs'
training losses.
"""
import argparse
import json
import sys
from pathlib import Path

import yaml


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('run', help='a finished run folder (model.safetensors, recipe.yaml)')
    ap.add_argument('--epoch', type=int, required=True, help='the epoch to continue at (its weights: epoch - 1)')
    ap.add_argument('--until', type=int, required=True, help='stop before this epoch')
    ap.add_argument('--out', required=True, help='a new folder for the continued run')
    ap.add_argument('--set', action='append', default=[], metavar='KEY=VALUE', help='recipe overrides')
    ap.add_argument('--monitor-every', type=int, default=1)
    ap.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch\'s)')
    a = ap.parse_args(argv)
    import torch
    from qzoo.engine import train, warm_start
    from qzoo.recipe import load_recipe
    if a.threads:
        torch.set_num_threads(a.threads)
    ran = yaml.safe_load((Path(a.run) / 'recipe.yaml').read_text())
    recipe = load_recipe(None, [f'monitor_every={a.monitor_every}', 'device=cpu', 'compile=false', *a.set], **ran)
    warm_start(recipe, Path(a.run) / 'model.safetensors', a.epoch, a.out)
    train(recipe, a.out, resume=True, progress=False, until_epoch=a.until)
    steps = [json.loads(l) for l in (Path(a.out) / 'monitor.jsonl').read_text().splitlines()]
    worst = max(range(len(steps)), key=lambda i: steps[i]['grad_norm'])
    for rec in steps[max(0, worst - 3):worst + 4]:
        top = max(rec['grad'], key=rec['grad'].get)
        big = max(rec['out'], key=lambda k: rec['out'][k][1])
        print(f"step {rec['step']:6d}  loss {rec['loss']:.3f}  grad norm {rec['grad_norm']:10.2f}  largest "
              f"{top} {rec['grad'][top]:.1f}  largest output |.| {big} {rec['out'][big][1]:.4g}")
    for rec in map(json.loads, (Path(a.out) / 'log.jsonl').read_text().splitlines()):
        print(f"epoch {rec['epoch']}: train loss {rec['train_loss']:.3f}, val top1 {rec.get('val_top1', float('nan')):.2f}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
