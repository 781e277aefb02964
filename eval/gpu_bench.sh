#!/usr/bin/env bash
# Every GPU measurement of the README's "Speed" section in one go (about 5 minutes on an
# H100, most of it torch.compile). Run from the repository root:
#
#     PYTHONPATH=. bash eval/gpu_bench.sh            # CSVs and logs under $OUT (default results/gpu)
#
# Smoke test of the script itself on a CPU box (tiny models and settings, minutes):
#     DEVICE=cpu QUICK=1 OUT=/tmp/gpu_bench_smoke PYTHONPATH=. bash eval/gpu_bench.sh
#
# Each step writes its CSV as soon as it is done and a failed step does not stop the
# others (see $OUT/failures.txt). Steps, most important first:
#   1. CUDA correctness checks of the fused layers (tests/test_layers.py -k "cuda or compile")
#   2. CIFAR training img/s, bf16, batch 512, on-device pipeline, channels_last, eager:
#      resnet20, resnet56, qresnet20 (reference and fused paths)
#   3. the same, torch.compile
#   4. the same eager in NCHW (is channels_last worth it?)
#   5. QuadraticConv2d vs nn.Conv2d per CIFAR layer shape (bf16, batch 512, channels_last)
#   6. timm-style model table (inference, batch-1 latency, train step, peak memory), bf16
#   7. stacked vs separate x-term calls in the fused path (--stack always/never): layer table and
#      qresnet20 CIFAR training, to choose the CUDA default
#   8. if time is left: qresnet20 fused and resnet20 with torch.compile mode=reduce-overhead (CUDA graphs)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-results/gpu}"
PY="${PYTHON:-python}"
BUDGET_S="${BUDGET_S:-480}"   # step 7 only starts when less than this has been used
DEVICE="${DEVICE:-cuda}"
if [[ "${QUICK:-0}" == 1 ]]; then
  MODELS=(resnet8 qresnet8); BS=8; T=(--warmup 1 --min-time 0.01 --repeats 1); EXTRA=(--cifar-size 64 --threads 1)
  LAYER_T=(--warmup 1 --min-time 0.01 --rounds 1 --layers stem 64-64 --threads 1); MODEL_T=(--latency-calls 3)
else
  MODELS=(resnet20 resnet56 qresnet20); BS=512; T=(--warmup 10 --min-time 1 --repeats 3); EXTRA=()
  LAYER_T=(--min-time 0.2 --rounds 5); MODEL_T=(--min-time 0.5)
fi
mkdir -p "$OUT"
export PYTHONPATH="${PYTHONPATH:-.}"
: > "$OUT/failures.txt"

run() {  # run NAME CMD...: log to $OUT/NAME.log, note failures, keep going
  local name="$1"; shift
  echo "== $name ($(date +%T), ${SECONDS}s): $*" | tee -a "$OUT/steps.log"
  if ! "$@" > "$OUT/$name.log" 2>&1; then
    echo "$name failed (see $name.log)" | tee -a "$OUT/failures.txt"
  fi
  tail -n 8 "$OUT/$name.log"
}

{
  nvidia-smi || true
  "$PY" -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'timm', timm.__version__); print(torch.cuda.get_device_name())"
  git rev-parse HEAD 2>/dev/null || true
  date -u +%FT%TZ
} > "$OUT/env.txt" 2>&1

CIFAR=(eval/benchmark.py --cifar-train --device "$DEVICE" --amp bf16 --batch-size "$BS" "${T[@]}" ${EXTRA[@]+"${EXTRA[@]}"}
       --models "${MODELS[@]}" --path both)

run pytest_cuda "$PY" -m pytest -q tests/test_layers.py -k "cuda or compile" -p no:cacheprovider
run cifar_train_eager "$PY" "${CIFAR[@]}" --channels-last --results-file "$OUT/cifar_train_eager.csv"
run cifar_train_compiled "$PY" "${CIFAR[@]}" --channels-last --compile --results-file "$OUT/cifar_train_compiled.csv"
run cifar_train_eager_nchw "$PY" "${CIFAR[@]}" --results-file "$OUT/cifar_train_eager_nchw.csv"
run layers "$PY" eval/benchmark.py --layer-bench --device "$DEVICE" --amp bf16 --batch-size "$BS" --channels-last \
    "${LAYER_T[@]}" --results-file "$OUT/layers_${DEVICE}_bf16.csv"
run models "$PY" eval/benchmark.py --device "$DEVICE" --amp bf16 --channels-last --batch-size "$BS" "${T[@]}" \
    "${MODEL_T[@]}" ${EXTRA[@]+"${EXTRA[@]}"} --models "${MODELS[@]}" --path both --results-file "$OUT/models_${DEVICE}_bf16.csv"
for st in always never; do
  run "layers_stack_$st" "$PY" eval/benchmark.py --layer-bench --device "$DEVICE" --amp bf16 --batch-size "$BS" \
      --channels-last --stack "$st" "${LAYER_T[@]}" --results-file "$OUT/layers_${DEVICE}_bf16_stack_$st.csv"
  run "cifar_train_stack_$st" "$PY" eval/benchmark.py --cifar-train --device "$DEVICE" --amp bf16 --batch-size "$BS" \
      "${T[@]}" ${EXTRA[@]+"${EXTRA[@]}"} --channels-last --stack "$st" --models "${MODELS[-1]}" --path fused \
      --results-file "$OUT/cifar_train_stack_$st.csv"
done
if (( SECONDS < BUDGET_S )) && [[ "$DEVICE" == cuda* ]]; then
  run cifar_train_cudagraphs "$PY" eval/benchmark.py --cifar-train --device "$DEVICE" --amp bf16 --batch-size "$BS" \
      "${T[@]}" --channels-last --compile --compile-mode reduce-overhead \
      --models "${MODELS[0]}" "${MODELS[-1]}" --path fused --results-file "$OUT/cifar_train_cudagraphs.csv"
else
  echo "skipped cifar_train_cudagraphs (${SECONDS}s used, budget ${BUDGET_S}s)" | tee -a "$OUT/steps.log"
fi

echo "== done in ${SECONDS}s; CSVs in $OUT" | tee -a "$OUT/steps.log"
"$PY" - "$OUT" <<'EOF'
import csv, glob, os, sys
for f in sorted(glob.glob(os.path.join(sys.argv[1], 'cifar_train_*.csv'))):
    for r in csv.DictReader(open(f)):
        print(f"{os.path.basename(f):32s} {r['model']:10s} {r['path']:9s} compiled={r['compiled']:5s} "
              f"channels_last={r['channels_last']:5s} {float(r['train_samples_per_sec']):>10,.0f} img/s")
EOF
[ -s "$OUT/failures.txt" ] && { echo "failures:"; cat "$OUT/failures.txt"; exit 1; }
exit 0
