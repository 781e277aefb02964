#!/usr/bin/env bash
# One device call per CIFAR batch: several trainings side by side on one GPU, results packed into $OUT.
#
#   PYTHONPATH=. bash recipes/cifar10-jpeg75/gpu_batch.sh <batch> [extra launch.py options]
#
# batches:
#   conventional   resnet20/32/44/56 (width 16) + resnet20 at widths 8, 12, 24      (7 runs)
#   quad-sweep     qresnet20 w16, quad_lr_scale 1e-4, 1e-3, 1e-2, 1e-1, 10 epochs     (4 short runs; choose on val)
#   quadratic      qresnet20 w8/w12/w16, qresnet8, qresnet14                           (5 runs)
#   neurons        the 8 neuron families at resnet20's parameter budget                (8 runs)
#   neurons-sweep  quad_lr_scale 1e-3 / 1e-2 / 1e-1 for the 6 families with ReLinear groups, 10 epochs
#   quadratic-auto quad-sweep, then quadratic with the sweep's best validation quad_lr_scale (one call)
#   neurons-auto   neurons-sweep, then neurons with each family's best validation quad_lr_scale (one call)
#
# The full cifar10-jpeg75.npz must travel with the call: copy ../shared/data/cifar10-jpeg75.npz into
# .data/ (listed in .git/info/exclude) and name .data in the device call's `carry`.
# SMOKE=1 runs every recipe with --smoke on the CPU (a few seconds each) to test this script.
set -euo pipefail
batch=${1:?usage: gpu_batch.sh conventional|quad-sweep|quadratic|neurons|neurons-sweep [launch options]}
shift
here=recipes/cifar10-jpeg75
export QZOO_DATA=${QZOO_DATA:-.data} QZOO_CACHE=${QZOO_CACHE:-/tmp/qzoo-cache} PYTHONUNBUFFERED=1
out=${OUT:-runs/device-out}
mkdir -p "$out"
extra=()
[ "${SMOKE:-0}" = 1 ] && extra+=(--smoke)
case $batch in
  conventional) cfgs=("$here"/resnet{20,32,44,56}.yaml "$here"/resnet20-w{8,12,24}.yaml); grid=() ;;
  quad-sweep)   cfgs=("$here"/qresnet20-w16.yaml); grid=(--grid quad_lr_scale=1e-4,1e-3,1e-2,1e-1 --set epochs=10) ;;
  quadratic)    cfgs=("$here"/qresnet20-w{8,12,16}.yaml "$here"/qresnet{8,14}.yaml); grid=() ;;
  neurons)      cfgs=("$here"/neurons/*.yaml); grid=() ;;
  neurons-sweep) cfgs=("$here"/neurons/{fan,fan_rg,fan_rb,quadralib,qres,lowrank}.yaml)
                grid=(--grid quad_lr_scale=1e-3,1e-2,1e-1 --set epochs=10) ;;
  quadratic-auto|neurons-auto)
    sweep=${batch%-auto}; sweep=${sweep/quadratic/quad}-sweep
    bash "$0" "$sweep" "$@"
    # best validation top-1 per recipe file among the sweep's runs -> one override per final run
    picks=$(python - "runs/$sweep/summary.json" <<'PY'
import json, sys
best = {}
for r in json.load(open(sys.argv[1]))['runs']:
    if r.get('returncode') == 0 and r.get('val'):
        scale = next(o.split('=', 1)[1] for o in r['overrides'] if o.startswith('quad_lr_scale='))
        if r['config'] not in best or r['val']['top1'] > best[r['config']][0]:
            best[r['config']] = (r['val']['top1'], scale)
print(' '.join(f'{c}={s}' for c, (_, s) in sorted(best.items())))
PY
)
    echo "chosen on validation: $picks" | tee "$out/$batch-choice.txt"
    final=${batch%-auto}
    if [ "$final" = quadratic ]; then
      scale=${picks##*=}
      exec bash "$0" quadratic --set quad_lr_scale="$scale" "$@"
    fi
    # neurons: one launch per family with its own scale, side by side in the background
    for pick in $picks; do
      cfg=${pick%=*}; scale=${pick##*=}
      python recipes/launch.py "$cfg" --set quad_lr_scale="$scale" --runs-dir runs/neurons "${extra[@]}" "$@" &
    done
    python recipes/launch.py "$here"/neurons/{linear,power}.yaml --parallel 2 --runs-dir runs/neurons "${extra[@]}" "$@" &
    wait
    tar czf "$out/neurons.tar.gz" -C runs neurons --exclude='*.ckpt' --exclude='best.safetensors'
    exit 0 ;;
  *) echo "unknown batch $batch" >&2; exit 2 ;;
esac
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>/dev/null | tee "$out/gpu-$batch.txt" || true
python -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())" \
  | tee -a "$out/gpu-$batch.txt"
python recipes/launch.py "${cfgs[@]}" "${grid[@]}" --parallel "${PARALLEL:-${#cfgs[@]}}" \
  --runs-dir "runs/$batch" --pack "$out/$batch.tar.gz" "${extra[@]}" "$@"
