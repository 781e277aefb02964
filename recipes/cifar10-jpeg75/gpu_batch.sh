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
# QZOO_DEADLINE (unix seconds, set by gpu_call.sh): every launch gets --fit-in up to it; the validation sweep of
# an *-auto batch gets SWEEP_SHARE (default 0.3) of the time left, the final batch the rest.
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
runs=runs  # smoke runs go to runs/smoke/, away from real ones
[ "${SMOKE:-0}" = 1 ] && extra+=(--smoke) && runs=runs/smoke
fit=()  # --fit-in: this stage's share (1st argument, default 1) of the seconds left before QZOO_DEADLINE
fit_in() { fit=(); [ -n "${QZOO_DEADLINE:-}" ] && fit=(--fit-in "$(python -c "import sys, time; \
print(int(float(sys.argv[1]) * (float(sys.argv[2]) - time.time())))" "${1:-1}" "$QZOO_DEADLINE")"); true; }
case $batch in
  conventional) cfgs=("$here"/resnet{20,32,44,56}.yaml "$here"/resnet20-w{8,12,24}.yaml); grid=() ;;
  quad-sweep)   cfgs=("$here"/qresnet20-w16.yaml); grid=(--grid quad_lr_scale=1e-4,1e-3,1e-2,1e-1 --set epochs=10 --pack-without-weights) ;;
  quadratic)    cfgs=("$here"/qresnet20-w{8,12,16}.yaml "$here"/qresnet{8,14}.yaml); grid=() ;;
  neurons)      cfgs=("$here"/neurons/*.yaml); grid=() ;;
  neurons-sweep) cfgs=("$here"/neurons/{fan,fan_rg,fan_rb,quadralib,qres,lowrank}.yaml)
                grid=(--grid quad_lr_scale=1e-3,1e-2,1e-1 --set epochs=10 --pack-without-weights) ;;
  quadratic-auto|neurons-auto)
    sweep=${batch%-auto}; sweep=${sweep/quadratic/quad}-sweep
    FIT_SHARE=${SWEEP_SHARE:-0.3} bash "$0" "$sweep" "$@"
    # best validation top-1 per recipe file among the sweep's finite runs -> one override per final run
    picks=$(python - "$runs/$sweep/summary.json" <<'PY'
import json, sys
best = {}
for r in json.load(open(sys.argv[1]))['runs']:
    if r.get('returncode') == 0 and r.get('val') and not r['val'].get('nonfinite'):  # NaN/inf outputs: never chosen
        scale = next(o.split('=', 1)[1] for o in r['overrides'] if o.startswith('quad_lr_scale='))
        if r['config'] not in best or r['val']['top1'] > best[r['config']][0]:
            best[r['config']] = (r['val']['top1'], scale)
print(' '.join(f'{c}={s}' for c, (_, s) in sorted(best.items())))
PY
)
    echo "chosen on validation: $picks" | tee "$out/$batch-choice.txt"
    final=${batch%-auto}
    pick_for() {  # pick_for CFG -> "--set quad_lr_scale=S" if the sweep chose one for CFG (no finite run: the recipe's)
      local p; for p in $picks; do [ "${p%=*}" = "$1" ] && echo "--set quad_lr_scale=${p##*=}"; done; true; }
    if [ "$final" = quadratic ]; then
      # shellcheck disable=SC2046
      exec bash "$0" quadratic $(pick_for "$here/qresnet20-w16.yaml") "$@"
    fi
    # neurons: one launch per family (its own scale), all side by side, each in its own runs folder
    fit_in 1
    pids=()
    for cfg in "$here"/neurons/{fan,fan_rg,fan_rb,quadralib,qres,lowrank}.yaml; do
      # shellcheck disable=SC2046
      python recipes/launch.py "$cfg" $(pick_for "$cfg") --runs-dir "$runs/neurons/$(basename "$cfg" .yaml)" \
        "${extra[@]}" ${fit[@]+"${fit[@]}"} "$@" & pids+=($!)
    done
    python recipes/launch.py "$here"/neurons/{linear,power}.yaml --parallel 2 --runs-dir "$runs/neurons/linear-power" \
      "${extra[@]}" ${fit[@]+"${fit[@]}"} "$@" & pids+=($!)
    fail=0
    for p in "${pids[@]}"; do wait "$p" || fail=1; done
    tar czf "$out/neurons.tar.gz" --exclude='*.ckpt' --exclude='best.safetensors' -C "$runs" neurons || fail=1
    exit $fail ;;
  *) echo "unknown batch $batch" >&2; exit 2 ;;
esac
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>/dev/null | tee "$out/gpu-$batch.txt" || true
python -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())" \
  | tee -a "$out/gpu-$batch.txt"
fit_in "${FIT_SHARE:-1}"
python recipes/launch.py "${cfgs[@]}" ${grid[@]+"${grid[@]}"} --parallel "${PARALLEL:-64}" \
  --runs-dir "$runs/$batch" --pack "$out/$batch.tar.gz" "${extra[@]}" ${fit[@]+"${fit[@]}"} "$@"
