#!/usr/bin/env bash
# Issue 25's measurements of a block-diffusion MoE shape in one go, on one GPU, each script under
# its own time limit (ITEM_S), its log and JSON in $OUT (default /tmp/out):
#   1. offline.py at batch 1, prompt 512, gen 64, for each of $QUANTS (bf16, fp8: every linear,
#      fp8-experts: the routed experts alone), with the official sampler's baseline in the bf16
#      run: tok/s, step ms, % of the roofline measured in the run, x official;
#   2. offline.py at batch 64 (the FLOP-roofline target), with its kernel profile;
#   3. prefix_cache.py (time to first update, a 2048-token shared prompt: hit / miss) for each of
#      $PREFIX_QUANTS;
#   4. timeline.py at batch 1 (GPU busy / idle per step) for each of $TIMELINE_QUANTS;
#   5. structured_overhead.py at batches 1 and 32 (a constrained step against a free one).
# A script that fails or runs out of time is reported and the rest still run; the exit status
# is 1 if any failed.
#
#   bash benchmarks/block_diffusion_gpu.sh                         # repo root, on the GPU
#   SHAPE=tiny-llada2 DEVICE=cpu SMOKE=--smoke bash benchmarks/block_diffusion_gpu.sh   # CPU check
#
# A/B of two builds in one device call: run it once per build with TAG naming it and BENCH the
# benchmark scripts of that build (an older build's package lacks what newer scripts import):
#   PYTHONPATH=/tmp/old:... BENCH=/tmp/oldtree/benchmarks TAG=_old QUANTS="bf16 fp8" \
#       PREFIX_QUANTS=bf16 TIMELINE_QUANTS=bf16 bash benchmarks/block_diffusion_gpu.sh
# Time on an H100 at LLaDA2.0-mini (benchmarks/RESULTS.md: building the random model ~20 s, the
# official baseline ~2 s an iteration, a batch-1 run ~10 s, batch 64 ~60 s): about 4 minutes in
# all with the defaults.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
PY=${PYTHON:-python3}
SHAPE=${SHAPE:-llada2-mini}
DEVICE=${DEVICE:-cuda}
QUANTS=${QUANTS:-bf16 fp8 fp8-experts}
PREFIX_QUANTS=${PREFIX_QUANTS:-bf16 fp8-experts}
TIMELINE_QUANTS=${TIMELINE_QUANTS:-bf16 fp8-experts}
SMOKE=${SMOKE:-}     # --smoke: every script at its tiny sizes
ITEM_S=${ITEM_S:-300}
TAG=${TAG:-}         # appended to every file name
BENCH=${BENCH:-$PWD/benchmarks}  # the benchmark scripts run
for q in $QUANTS $PREFIX_QUANTS $TIMELINE_QUANTS; do
  case $q in
    bf16 | fp8 | fp8-experts) ;;
    *) echo "QUANTS: bf16, fp8 or fp8-experts, got '$q'" >&2; exit 2 ;;
  esac
done
export PYTHONUNBUFFERED=1
# the installed package, not the checkout's dllmserve/ (see serving_gpu.sh); benchmarks/ on the
# path for the scripts' shared helpers
export PYTHONSAFEPATH=1
export PYTHONPATH=$BENCH${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT"

failed=()
run() {  # run NAME SCRIPT ARGS...: one script, its output in $OUT/NAME$TAG.log
  local name=$1$TAG
  shift
  echo "== $(date -u +%T) $name: $*"
  timeout "$ITEM_S" "$PY" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 20 "$OUT/$name.log"
  if [ "$rc" -ne 0 ]; then
    echo "!! $name: exit $rc$([ "$rc" -eq 124 ] && echo " (over ITEM_S=$ITEM_S s)")"
    failed+=("$name")
  fi
}
quantization() {  # the flag of a QUANTS entry (bf16: none)
  [ "$1" = bf16 ] || echo "--quantization $1"
}

common=(--device "$DEVICE" $SMOKE)
# (the official sampler's baseline runs with bf16 weights only: the official code has no FP8)
for q in $QUANTS; do
  # shellcheck disable=SC2046
  run "offline_b1_$q" "$BENCH/offline.py" --shapes "$SHAPE" "${common[@]}" --batches 1 \
    --prompts 512 --long-prompt-batches 1 --gen 64 --baseline-iters 2 $(quantization "$q") \
    --json "$OUT/offline_b1_$q$TAG.json"
done
run offline_b64 "$BENCH/offline.py" --shapes "$SHAPE" "${common[@]}" --batches 64 \
  --prompts 512 --long-prompt-batches 64 --gen 64 --baseline-iters 1 --profile \
  --json "$OUT/offline_b64$TAG.json"
for q in $PREFIX_QUANTS; do
  # shellcheck disable=SC2046
  run "prefix_cache_$q" "$BENCH/prefix_cache.py" --shape "$SHAPE" "${common[@]}" \
    $(quantization "$q") --json "$OUT/prefix_cache_$q$TAG.json"
done
for q in $TIMELINE_QUANTS; do
  # shellcheck disable=SC2046
  run "timeline_$q" "$BENCH/timeline.py" --shape "$SHAPE" "${common[@]}" --batches 1 \
    --prompt 512 --gen 64 $(quantization "$q") --json "$OUT/timeline_$q$TAG.json"
done
run structured "$BENCH/structured_overhead.py" --shape "$SHAPE" "${common[@]}" --batches 1 32

if [ ${#failed[@]} -gt 0 ]; then
  echo "== failed: ${failed[*]}"
  exit 1
fi
echo "== all ran; JSON and logs in $OUT"
