#!/usr/bin/env bash
# One whole device call: a CIFAR training batch fitted to the call's time, then the GPU speed
# measurements with what time is left. Everything lands in $OUT: the batch's run packs and logs.tar.gz
# (the session log, benchmark CSVs and logs, the CUDA test log).
#
#   PYTHONPATH=. bash recipes/cifar10-jpeg75/gpu_call.sh <batch> <seconds the call may take>
#
#   1. decode cifar10-jpeg75 once into the cache (the runs then share it)
#   2. gpu_batch.sh <batch> with QZOO_DEADLINE, so each launch gets --fit-in: every run side by side; after
#      two epochs the batch's end is projected and, if it would overrun, the shared epoch count is cut
#      (summary.json); an *-auto batch gives its validation sweep 30% of the time
#   3. CUDA correctness checks of the fused quadratic layers (pytest)
#   4. eval/benchmark.py --cifar-train, eager: resnet20, resnet56, qresnet20 (reference and fused)
#   5. the same compiled (resnet20, qresnet20, resnet56, in that order; each row saved as it is
#      measured), if at least COMPILE_S seconds are left; stopped 15 s before the budget
# SMOKE=1 DEVICE=cpu runs all of it on the CPU with tiny settings (tests this script).
set -uo pipefail
batch=${1:?usage: gpu_call.sh <batch> <seconds>}
budget=${2:?usage: gpu_call.sh <batch> <seconds>}
export PYTHONPATH=${PYTHONPATH:-.} QZOO_DATA=${QZOO_DATA:-.data} QZOO_CACHE=${QZOO_CACHE:-/tmp/qzoo-cache}
export PYTHONUNBUFFERED=1
OUT=${OUT:-runs/device-out}; export OUT
DEVICE=${DEVICE:-cuda}
RESERVE_S=${RESERVE_S:-100}   # kept for steps 3-4 and packing
COMPILE_S=${COMPILE_S:-150}
mkdir -p "$OUT"
log() { echo "[$(date +%T) ${SECONDS}s] $*" | tee -a "$OUT/session.log"; }

log "decode cifar10-jpeg75 into $QZOO_CACHE"
python -c "from qzoo.data import load_dataset; d = load_dataset('cifar10-jpeg75'); print(d.name, len(d.train.x), len(d.val.x), len(d.test.x))" \
  2>&1 | tee -a "$OUT/session.log"
QZOO_DEADLINE=$(( $(date +%s) + budget - RESERVE_S - SECONDS )); export QZOO_DEADLINE
log "training batch '$batch', fitted to end by $(date -d @"$QZOO_DEADLINE" +%T)"
bash recipes/cifar10-jpeg75/gpu_batch.sh "$batch" 2>&1 | tee -a "$OUT/session.log"
log "training done (exit ${PIPESTATUS[0]})"

if [ "${SMOKE:-0}" = 1 ]; then
  B=(--batch-size 8 --cifar-size 64 --threads 1 --warmup 1 --min-time 0.01 --repeats 1 --models resnet8 qresnet8)
else
  B=(--batch-size 512 --warmup 10 --min-time 1 --repeats 3 --models resnet20 resnet56 qresnet20)
fi
CIFAR=(eval/benchmark.py --cifar-train --device "$DEVICE" --amp bf16 --channels-last --path both "${B[@]}")
log "CUDA checks of the fused layers"
python -m pytest -q tests/test_layers.py -k "cuda" -p no:cacheprovider > "$OUT/pytest_cuda.log" 2>&1
log "pytest exit $? ($(tail -n 1 "$OUT/pytest_cuda.log"))"
log "cifar-train bench, eager"
python "${CIFAR[@]}" --results-file "$OUT/cifar_train_eager.csv" >> "$OUT/bench.log" 2>&1
log "exit $?"
if (( budget - SECONDS >= COMPILE_S )); then
  log "cifar-train bench, torch.compile"
  models=(resnet20 qresnet20 resnet56); [ "${SMOKE:-0}" = 1 ] && models=(resnet8 qresnet8)
  timeout $(( budget - SECONDS - 15 )) python "${CIFAR[@]}" --compile --models "${models[@]}" --results-file "$OUT/cifar_train_compiled.csv" \
    >> "$OUT/bench.log" 2>&1
  log "exit $?"
else
  log "skipped the compiled bench ($(( budget - SECONDS ))s left < ${COMPILE_S}s)"
fi
grep -h "img/s" "$OUT/bench.log" | tee -a "$OUT/session.log"
log "done; the logs and CSVs packed into logs.tar.gz (a device call returns at most 8 files)"
( cd "$OUT" && small=$(ls | grep -v '\.tar\.gz$') && tar czf logs.tar.gz $small && rm -f $small )
