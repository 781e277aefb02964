#!/usr/bin/env python
"""Train a zoo model from a recipe.

    python recipes/train.py --config recipes/cifar10-jpeg75/qresnet20.yaml [key=value ...]
    python recipes/train.py --config ... --resume            # continue runs/<name>-s<seed> exactly
    python recipes/train.py --config ... --smoke             # tiny slice, 1 epoch, CPU: seconds
    torchrun --nproc_per_node=2 recipes/train.py --config ...  # DDP (nccl on GPUs, gloo on CPU)

Overrides use dotted keys: ``epochs=5 model_args.width=8 seed=1``.
Outputs (see qzoo.engine): model.safetensors, config.json, README.md, results.json,
recipe.yaml, log.jsonl in --out (default runs/<name>-s<seed>).
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from qzoo.engine import CheckpointWriteError, RecipeError, TrainingDiverged, load_recipe, train  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--config', required=True, help='recipe YAML (recipes/<task>/<model>.yaml)')
    ap.add_argument('--out', help='output folder (default runs/<name>-s<seed>)')
    ap.add_argument('--resume', action='store_true', help='continue from <out>/last.ckpt')
    ap.add_argument('--smoke', action='store_true', help='tiny slice, 1 epoch, on CPU')
    ap.add_argument('--no-progress', action='store_true')
    ap.add_argument('overrides', nargs='*', help='key=value recipe overrides')
    args = ap.parse_args(argv)
    try:
        cfg = load_recipe(args.config, args.overrides)
        out = args.out or f"runs/{cfg['name']}-s{cfg['seed']}" + ('-smoke' if args.smoke else '')
        res = train(cfg, out, resume=args.resume, smoke=args.smoke, recipe_path=args.config,
                    progress=not args.no_progress)
    except (RecipeError, TrainingDiverged, CheckpointWriteError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    if res:
        print(json.dumps({k: res[k] for k in ('model', 'dataset', 'params', 'macs', 'val', 'test', 'selected_epoch',
                                              'wall_time_s')}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
