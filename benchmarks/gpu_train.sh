#!/usr/bin/env bash
# One GPU slot's share of a long training, and its collection on the CPU machine afterwards: a full-size training
# (configs/psf_aware.py: 50 epochs of 210k images, about 0.3-0.6 h of train steps on one H100) done across short,
# separate GPU slots (about 15 minutes each, 10 per command, 64 MiB carried in, nothing kept between slots).
#
#   On the GPU machine (one call per slot, from the repository root; carry [".whl", "gpu_runs"]):
#     bash benchmarks/gpu_train.sh train CONFIG NAME [--minutes M] [--cpu-smoke] [-- --config.KEY=VALUE ...]
#   Back on the CPU machine, with the folder the slot's $OUT came back in:
#     bash benchmarks/gpu_train.sh collect FILES_AT NAME
#
# train:
#   1. installs the wheels of .whl/ (bash ../shared/device/wheels.sh, with EXTRA="tensorboardX protobuf") into
#      /tmp/site when the machine lacks galsim, tfp, ml_collections or astropy;
#   2. unpacks gpu_runs/NAME/latest.tar.xz (the state a previous slot left; none: a fresh start) into runs/NAME;
#   3. trains `python -m npejax.main --config CONFIG --workdir runs/NAME` with train.time_limit_minutes = M (default
#      7: a 10-minute command with the set-up and the packing around it) and, unless overridden after `--`, the
#      cached-set path: data.simulate_first (the 210k + 30k images rendered by every core into runs/NAME/data, the
#      same images in every slot: batch i depends only on (seed, i), so the set is rebuilt, never carried) held on
#      the device (data.on_device). The run stops at the time limit with its step saved (exit status 3) or ends
#      (0); the same command continues it in the next slot, mid-epoch included (npejax.nn.preemption);
#   4. packs into $OUT (default: gpu_out/): NAME-latest.tar.xz (config.json, metrics.csv, tensorboard/ and
#      checkpoints/latest and /interrupted: what resuming needs) and, when this slot wrote a new best epoch, NAME-best.tar.xz
#      (checkpoints/best), plus NAME-slot.json (exit status, epochs, sizes). The best checkpoint is not carried
#      back out: it only has to reach the CPU machine once, so what goes out with the next slot is the latest
#      state alone (a full-size one: 2.4M parameters and Adam's two moments, about 29 MB; the wheels 28 MB).
# collect: puts FILES_AT/NAME-latest.tar.xz at gpu_runs/NAME/latest.tar.xz (what the next slot carries) and unpacks
#   it and NAME-best.tar.xz (when there is one) into runs/NAME, a complete workdir to evaluate or catalog with.
#
# --cpu-smoke: the same steps at a tiny size on whatever JAX finds (a 4-channel network, 64 images per epoch,
#   3 epochs), for testing this script on a CPU (tests/test_gpu_train.py runs it in two slots).
# Exit status: train's (0 finished, 3 stopped on time: run the next slot; anything else: an error, see the log
#   NAME-train.log in $OUT); collect: 0, or 2 for a missing file.
# Environment: PYTHON (default python3), OUT.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}
EXIT_PREEMPTED=3  # npejax.nn.preemption.EXIT_PREEMPTED

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
die() { echo "gpu_train.sh: $*" >&2; exit 2; }
size_of() { stat -c %s "$1" 2>/dev/null || echo 0; }

collect() {
  local from=$1 name=$2
  [ -f "$from/$name-latest.tar.xz" ] || die "no $from/$name-latest.tar.xz: give the folder the slot's files came back in"
  mkdir -p "gpu_runs/$name" "runs"
  cp "$from/$name-latest.tar.xz" "gpu_runs/$name/latest.tar.xz.tmp" && mv "gpu_runs/$name/latest.tar.xz.tmp" "gpu_runs/$name/latest.tar.xz"
  rm -rf "runs/$name/checkpoints/latest"
  tar -C runs -xJf "$from/$name-latest.tar.xz" || die "cannot unpack $from/$name-latest.tar.xz"
  if [ -f "$from/$name-best.tar.xz" ]; then
    rm -rf "runs/$name/checkpoints/best"
    tar -C runs -xJf "$from/$name-best.tar.xz" || die "cannot unpack $from/$name-best.tar.xz"
  fi
  echo "collected $name: runs/$name (epochs: $(($(wc -l < "runs/$name/metrics.csv") - 1))); next slot carries gpu_runs/$name/latest.tar.xz ($(size_of "gpu_runs/$name/latest.tar.xz") bytes)"
}

[ $# -ge 1 ] || { usage; exit 2; }
case "$1" in
  -h|--help) usage; exit 0 ;;
  collect) [ $# -eq 3 ] || die "usage: gpu_train.sh collect FILES_AT NAME"; collect "$2" "$3"; exit 0 ;;
  train) shift ;;
  *) die "unknown action $1 (train or collect)" ;;
esac
[ $# -ge 2 ] || die "usage: gpu_train.sh train CONFIG NAME [--minutes M] [--cpu-smoke] [-- --config.KEY=VALUE ...]"
CONFIG=$1 NAME=$2
shift 2
[ -f "$CONFIG" ] || die "no config file $CONFIG"
[[ "$NAME" =~ ^[A-Za-z0-9_.-]+$ ]] || die "NAME must be letters, digits, '_', '.' or '-', got '$NAME'"
MINUTES=7 SMOKE=0 EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) [ $# -ge 2 ] || die "--minutes needs a value"; MINUTES=$2; shift 2 ;;
    --cpu-smoke) SMOKE=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown option $1" ;;
  esac
done
OUTDIR=${OUT:-gpu_out}
mkdir -p "$OUTDIR" runs || die "cannot create $OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1}

# 1. what the GPU image lacks
if ! "$PYTHON" -c "import galsim, tensorflow_probability, ml_collections, astropy, tensorboardX" 2>/dev/null; then
  ls .whl/*.whl >/dev/null 2>&1 \
    || die "missing packages and no .whl/: run EXTRA=\"tensorboardX protobuf\" bash ../shared/device/wheels.sh here first"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    || die "installing .whl/ failed"
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi

# 2. the state a previous slot left
WORKDIR=runs/$NAME
if [ -f "gpu_runs/$NAME/latest.tar.xz" ]; then
  rm -rf "$WORKDIR/checkpoints" && tar -C runs -xJf "gpu_runs/$NAME/latest.tar.xz" || die "cannot unpack gpu_runs/$NAME/latest.tar.xz"
  echo "resuming $NAME from gpu_runs/$NAME/latest.tar.xz"
fi
best_before=$(ls "$WORKDIR/checkpoints/best" 2>/dev/null | tr '\n' ' ')

# 3. train until the time limit
WORKERS=$(nproc)
ARGS=(--config "$CONFIG" --workdir "$WORKDIR" --config.train.time_limit_minutes="$MINUTES" --config.train.progress=False
      --config.data.simulate_first=True --config.data.simulate_workers="$WORKERS" --config.data.on_device=True)
if [ "$SMOKE" = 1 ]; then
  ARGS+=(--config.model.width=4 --config.model.stem_blocks=1 "--config.model.stages=((1, 0, 1), (1, 0, 2), (1, 0, 2))"
         --config.train.batch_size=8 --config.train.eval_batch_size=8 --config.train.num_epochs=3
         --config.train.normalizer_images=16 --config.train.steps_per_dispatch=1 --config.data.num_train=64
         --config.data.num_val=16 --config.data.shard_size=32 --config.data.simulate_workers=0 --config.data.on_device=False)
fi
echo "+ $PYTHON -m npejax.main ${ARGS[*]} ${EXTRA[*]}"
start=$(date +%s)
"$PYTHON" -m npejax.main "${ARGS[@]}" "${EXTRA[@]}" > "$OUTDIR/$NAME-train.log" 2>&1
rc=$?
tail -n 5 "$OUTDIR/$NAME-train.log"

# 4. pack what the next slot and the CPU machine need
if [ -d "$WORKDIR/checkpoints" ]; then  # latest/, and interrupted/ when it stopped mid-epoch
  tar -C runs -cJf "$OUTDIR/$NAME-latest.tar.xz" --exclude="$NAME/data" --exclude="$NAME/checkpoints/best" "$NAME" \
    || die "packing $WORKDIR failed"
fi
best_after=$(ls "$WORKDIR/checkpoints/best" 2>/dev/null | tr '\n' ' ')
rm -f "$OUTDIR/$NAME-best.tar.xz"
if [ -n "$best_after" ] && [ "$best_after" != "$best_before" ]; then
  tar -C runs -cJf "$OUTDIR/$NAME-best.tar.xz" "$NAME/checkpoints/best" || die "packing the best checkpoint failed"
fi
epochs=$(($(wc -l < "$WORKDIR/metrics.csv" 2>/dev/null || echo 1) - 1))
wheels=$(du -cb .whl/*.whl 2>/dev/null | tail -1 | cut -f1)
cat > "$OUTDIR/$NAME-slot.json" <<EOF
{"name": "$NAME", "config": "$CONFIG", "exit_status": $rc, "finished": $([ $rc = 0 ] && echo true || echo false),
 "stopped_on_time": $([ $rc = $EXIT_PREEMPTED ] && echo true || echo false), "epochs_done": $epochs,
 "seconds": $(($(date +%s) - start)), "latest_bytes": $(size_of "$OUTDIR/$NAME-latest.tar.xz"),
 "best_bytes": $(size_of "$OUTDIR/$NAME-best.tar.xz"), "wheels_bytes": ${wheels:-0}}
EOF
cat "$OUTDIR/$NAME-slot.json"
case $rc in
  0) echo "$NAME: training finished ($epochs epochs)" ;;
  "$EXIT_PREEMPTED") echo "$NAME: stopped on time after epoch $epochs (+ part of the next): collect, then run the next slot" ;;
  *) echo "$NAME: training failed with exit status $rc: see $OUTDIR/$NAME-train.log" >&2 ;;
esac
exit $rc
