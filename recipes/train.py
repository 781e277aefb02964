#!/usr/bin/env python
"""Train a zoo model from a recipe.

    python recipes/train.py --config recipes/cwru/qcnn-w16.yaml [key=value ...]
    python recipes/train.py --config recipes/cwru/qcnn-w16.yaml --resume       # continue runs/<name>-s<seed> exactly
    python recipes/train.py --config recipes/cwru/qcnn-w16.yaml --smoke        # tiny slice, 1 epoch, CPU: seconds
    python recipes/train.py --config recipes/cifar10-jpeg75/qresnet20-w16.yaml epochs=5 model_args.width=8 seed=1
    torchrun --nproc_per_node=2 recipes/train.py --config recipes/synthetic/circles-d2.yaml   # DDP (gloo on CPU)

Overrides use dotted keys (``model_args.width=8 smoke.epochs=2``); values are YAML. Outputs
(see qzoo.engine): model.safetensors, config.json, README.md, results.json, recipe.yaml,
log.jsonl and the resume state last.ckpt in --out (default runs/<name>-s<seed>, or
runs/<name>-s<seed>-smoke). A bad recipe, a run folder in use or unwritable, a damaged
checkpoint or a diverged run print ``error: ...`` and exit with status 2; Ctrl-C exits with 130
(``--resume`` continues from the last finished epoch).
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from qzoo.engine import train  # noqa: E402
from qzoo.errors import (CheckpointError, CheckpointWriteError, DataError, RecipeError, RunDirError,  # noqa: E402
                         TrainingDiverged)
from qzoo.recipe import load_recipe, recipe_help  # noqa: E402

#: what a run reports as ``error: ...`` (exit 2) rather than a traceback: the documented types
ERRORS = (RecipeError, DataError, RunDirError, CheckpointWriteError, CheckpointError, TrainingDiverged,
          FileNotFoundError, ValueError, TypeError)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog='recipe keys:\n' + recipe_help())
    ap.add_argument('--config', required=True, help='recipe YAML (recipes/<task>/<model>.yaml)')
    ap.add_argument('--out', help='output folder (default runs/<name>-s<seed>)')
    ap.add_argument('--resume', action='store_true', help='continue from <out>/last.ckpt')
    ap.add_argument('--smoke', action='store_true', help='tiny slice, 1 epoch, on CPU')
    ap.add_argument('--no-progress', action='store_true')
    ap.add_argument('overrides', nargs='*', help='key=value recipe overrides')
    args = ap.parse_args(argv)
    try:
        recipe = load_recipe(args.config, args.overrides)
        out = args.out or f'runs/{recipe.name}-s{recipe.seed}' + ('-smoke' if args.smoke else '')
        res = train(recipe, out, resume=args.resume, smoke=args.smoke, recipe_path=args.config,
                    progress=not args.no_progress)
    except ERRORS as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('interrupted: --resume continues from the last finished epoch', file=sys.stderr)
        return 130
    if res:
        print(json.dumps({k: res[k] for k in ('model', 'dataset', 'params', 'macs', 'val', 'test', 'selected_epoch',
                                              'wall_time_s')}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
