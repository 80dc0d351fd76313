#!/usr/bin/env bash
# The whole benchmark suite on a GPU in one command (about 5-8 minutes on an H100, compiles included), then a
# dated section appended to benchmarks/RESULTS.md.
#
#   bash benchmarks/gpu.sh [OUTDIR] [--cpu-smoke]        # from the repository root
#
# OUTDIR (default: $OUT if set) receives one JSON file per run, suite.log (every run's output) and section.md
# (what was appended): at most 7 files, so all of them come back from a lent machine's $OUT. Runs:
#   train_full_b64, train_full_b256   benchmarks/train_throughput.py, configs/psf_aware.py (the full-size
#                                     network), float32 and bfloat16, batch 64 / 256, 30 timed steps, with the
#                                     fraction of an H100 SXM's dense peak: bfloat16 989 TFLOP/s; float32 against
#                                     the TF32 dense peak 494.7 TFLOP/s (XLA's default for float32 convolutions
#                                     on this GPU), override with PEAK_TFLOPS='float32=...,bfloat16=...'
#   predict_full_float32, predict_small, predict_full_bfloat16
#                                     benchmarks/predict_throughput.py: 80 x 80 images/s at batch 256, SDSS
#                                     frames (1489 x 2048) in 512-pixel chunks and whole, peak memory
# then benchmarks/gpu_report.py appends "## GPU (date, device, jax version)" with the tables to $RESULTS
# (default benchmarks/RESULTS.md). A run that fails or passes its time limit (STEP_TIMEOUT seconds, default
# 180) is named in the section and the others go on. The runs together stop at SUITE_LIMIT seconds (default
# 480): each run's limit is cut to what is left, and a run with under 30 s left is skipped and named so.
# The exit status is then 1.
#
# On a lent machine only $OUT comes back: append its section.md to RESULTS.md here afterwards,
#   (echo; cat OUTDIR/section.md) >> benchmarks/RESULTS.md
# or rebuild it from the JSON files: python benchmarks/gpu_report.py OUTDIR/*.json --results benchmarks/RESULTS.md
#
# Environment: PYTHON (default python3; the machine needs jax with CUDA, flax, optax, galsim, astropy,
# ml_collections, tfp: checked first), RESULTS, STEP_TIMEOUT, SUITE_LIMIT, PEAK_TFLOPS.
# --simulate-jax: instead of the suite, the JAX renderer's throughput only (npejax.sim.jax_render, issue 22):
#   python benchmarks/simulate_throughput.py --backend jax --jax-batch-sizes 256 1024 4096
# images/s at batch 256, 1024 and 4096 on the GPU (goal: 100,000 on one H100), into OUTDIR/simulate_jax.json and
# OUTDIR/simulate_jax.log (about 2-4 minutes, compiles included); nothing is appended to RESULTS.md. With
# --cpu-smoke: batch 4 on whatever JAX finds (about 30 s on a 2-core CPU).
# --cpu-smoke: for testing this script (about a minute on a 2-core CPU): one train run (float32) and one
# predict run of a 4-channel network at tiny sizes, on whatever JAX finds, titled "CPU smoke"; its section
# goes to OUTDIR/RESULTS.md unless RESULTS is set.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}
SMOKE=0
SIMULATE_JAX=0
OUTDIR=""
for arg in "$@"; do
  case "$arg" in
    --cpu-smoke) SMOKE=1 ;;
    --simulate-jax) SIMULATE_JAX=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    -*) echo "error: unknown option $arg (usage: bash benchmarks/gpu.sh [OUTDIR] [--cpu-smoke] [--simulate-jax])" >&2; exit 2 ;;
    *) OUTDIR=$arg ;;
  esac
done
OUTDIR=${OUTDIR:-${OUT:-}}
if [ -z "$OUTDIR" ]; then
  echo "error: no output directory: give one (bash benchmarks/gpu.sh OUTDIR) or set OUT" >&2
  exit 2
fi
mkdir -p "$OUTDIR" || { echo "error: cannot create output directory $OUTDIR" >&2; exit 2; }
OUTDIR=$(cd "$OUTDIR" && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1}

# Preflight: every module the benchmarks import, and a GPU unless --cpu-smoke.
if ! "$PYTHON" - <<'EOF'
import importlib, sys
missing = []
for name in ("jax", "flax", "optax", "orbax.checkpoint", "galsim", "astropy", "ml_collections", "absl",
             "tensorflow_probability.substrates.jax", "threadpoolctl", "scipy"):
    try:
        importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001
        missing.append(f"{name} ({type(exc).__name__}: {exc})")
if missing:
    sys.exit("error: the benchmarks need these Python modules, missing or broken here: " + "; ".join(missing)
             + f" (python: {sys.executable}; set PYTHON, or carry wheels onto PYTHONPATH)")
EOF
then exit 3; fi
if [ "$SMOKE" = 0 ]; then
  if ! "$PYTHON" -c '
import sys, jax
d = jax.devices()
if d[0].platform != "gpu":
    sys.exit(f"error: no GPU visible to JAX {jax.__version__} (jax.devices() = {d}): install the CUDA build of "
             "JAX (jax[cuda12] or jax[cuda13], matching the driver), or run bash benchmarks/gpu.sh OUTDIR --cpu-smoke")
print(f"{len(d)} x {d[0].device_kind}, jax {jax.__version__}")
'; then exit 4; fi
fi

if [ "$SIMULATE_JAX" = 1 ]; then  # with --cpu-smoke: batch 4, for testing this branch
  SIZES="256 1024 4096"
  [ "$SMOKE" = 1 ] && SIZES="4"
  # shellcheck disable=SC2086  # the sizes are meant to split
  timeout --kill-after=10 "${STEP_TIMEOUT:-480}" "$PYTHON" benchmarks/simulate_throughput.py --backend jax \
    --jax-batch-sizes $SIZES --json "$OUTDIR/simulate_jax.json" 2>&1 | tee "$OUTDIR/simulate_jax.log"
  exit "${PIPESTATUS[0]}"
fi

TRAIN="$PYTHON benchmarks/train_throughput.py"
PREDICT="$PYTHON benchmarks/predict_throughput.py"
PEAKS=${PEAK_TFLOPS:-float32=494.7,bfloat16=989}
if [ "$SMOKE" = 1 ]; then
  TITLE="CPU smoke"
  STEP_TIMEOUT=${STEP_TIMEOUT:-120}
  SUITE_LIMIT=${SUITE_LIMIT:-600}
  RESULTS=${RESULTS:-$OUTDIR/RESULTS.md}
  FULL="--config configs/cpu_small.py --config.model.width=4 --config.model.stem_blocks=1"
  FULL="$FULL --config.model.stages=((1,0,1),(1,0,2),(1,0,2)) --config.posterior.context=independent"
  SMALL=$FULL  # independent tiles: the tests compare with a hand count of the plain network
  FULL="$FULL --config.train.augment=False"  # its switch over 8 flips/turns doubles the CPU compile
  B1=4; B2=8; TRAIN_STEPS="--steps 2 --warmup 1 --distinct_batches 1"
  PRED_ARGS="--batch-size 4 --repeats 2 --warmup 1 --frame-shape 100,120 --chunk-size 48,0 --frames 1"
else
  TITLE="GPU"
  STEP_TIMEOUT=${STEP_TIMEOUT:-180}
  SUITE_LIMIT=${SUITE_LIMIT:-480}
  RESULTS=${RESULTS:-$ROOT/benchmarks/RESULTS.md}
  FULL="--config configs/psf_aware.py"
  SMALL="--config configs/cpu_small.py"
  B1=64; B2=256; TRAIN_STEPS="--steps 30 --warmup 3 --distinct_batches 4"
  PRED_ARGS="--batch-size 256 --repeats 20 --warmup 2 --frame-shape 1489,2048 --chunk-size 512,0 --frames 3"
fi

FAILED=""
MADE=()
START=$SECONDS
step() {  # step NAME COMMAND...: runs it with a time limit, output to OUTDIR/NAME.log and the terminal
  local name=$1; shift
  local t0=$SECONDS
  local limit=$((SUITE_LIMIT - (SECONDS - START)))
  [ "$limit" -gt "$STEP_TIMEOUT" ] && limit=$STEP_TIMEOUT
  if [ "$limit" -lt 30 ]; then
    echo "!! $name: skipped, the suite is at its ${SUITE_LIMIT} s limit" | tee -a "$OUTDIR/suite.log"
    FAILED="$FAILED $name(skipped)"
    return
  fi
  echo "== $name: $*" | tee -a "$OUTDIR/suite.log"
  rm -f "$OUTDIR/$name.json"
  timeout --kill-after=10 "$limit" "$@" --json "$OUTDIR/$name.json" 2>&1 \
    | grep --line-buffered -v -e 'Warning: ' -e 'warnings.warn' | tee -a "$OUTDIR/suite.log"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" != 0 ]; then
    { [ "$rc" = 124 ] && echo "!! $name: timed out after ${limit} s" || echo "!! $name: exit status $rc"; } \
      | tee -a "$OUTDIR/suite.log"
    FAILED="$FAILED $name"
    rm -f "$OUTDIR/$name.json"
  else
    MADE+=("$OUTDIR/$name.json")
  fi
  echo "== $name: $((SECONDS - t0)) s" | tee -a "$OUTDIR/suite.log"
}
: > "$OUTDIR/suite.log"

if [ "$SMOKE" = 1 ]; then  # one run of each script: their compiles take ~25 s each on a 2-core CPU
  # shellcheck disable=SC2086  # the flag strings are meant to split
  step train_full_b$B1 $TRAIN $FULL --dtypes float32 --batch_size $B1 $TRAIN_STEPS --peak_tflops $PEAKS
  # shellcheck disable=SC2086
  step predict_small $PREDICT $SMALL $PRED_ARGS
else
  # shellcheck disable=SC2086
  step train_full_b$B1 $TRAIN $FULL --dtypes float32,bfloat16 --batch_size $B1 $TRAIN_STEPS --peak_tflops $PEAKS
  # shellcheck disable=SC2086
  step train_full_b$B2 $TRAIN $FULL --dtypes float32,bfloat16 --batch_size $B2 $TRAIN_STEPS --peak_tflops $PEAKS
  # shellcheck disable=SC2086
  step predict_full_float32 $PREDICT $FULL $PRED_ARGS
  # shellcheck disable=SC2086
  step predict_small $PREDICT $SMALL $PRED_ARGS
  # shellcheck disable=SC2086
  step predict_full_bfloat16 $PREDICT $FULL --config.model.dtype=bfloat16 $PRED_ARGS
fi
echo "== suite: $((SECONDS - START)) s" | tee -a "$OUTDIR/suite.log"

COMMAND="bash benchmarks/gpu.sh OUTDIR$([ "$SMOKE" = 1 ] && echo ' --cpu-smoke'), $((SECONDS - START)) s in all"
if [ ${#MADE[@]} = 0 ]; then
  echo "error: every run failed:$FAILED; no section written (see the logs in $OUTDIR)" >&2
  exit 1
fi
if ! "$PYTHON" benchmarks/gpu_report.py "${MADE[@]}" --results "$RESULTS" --title "$TITLE" --command "$COMMAND" \
    --failed "$FAILED" | tee "$OUTDIR/section.md"; then
  echo "error: no report written (see the logs in $OUTDIR)" >&2
  exit 1
fi
echo "section appended to $RESULTS (also $OUTDIR/section.md)"
[ -z "$FAILED" ] || { echo "failed:$FAILED" >&2; exit 1; }
