#!/usr/bin/env bash
# One short accelerator lease for the face models, as one command: time the training step, then fine-tune in
# the time left, writing everything under $OUT as it goes (a lease cut short still returns what exists).
#
# Prepared here, once (docs/fer.md, "A short GPU lease, step by step"):
#   python -m fer.train_gpu pack --run RUN --output gpu_data/fer2013 \
#       --weights ~/.cache/emotion-toolkit/faceres-deep.weights.h5    # train + val faces, float16 backbone
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl keras==3.15.1 namex optree
# There: `bash fer/gpu_lease.sh` with gpu_data/ and .whl/ carried (both git-ignored). The working tree that
# travels is capped (64 MiB with the tracked files), so the data may come in two calls: the first runs
# `bash fer/gpu_lease.sh stash` (keeps what it carried in $STASH on the machine), the second the lease.
# Back here, for each phase's weights:
#   python -m fer.train_gpu collect --weights OUT/faceres160.weights.h5 --run RUN --output runs/fer_gpu160
#
# Settings (environment): BUDGET seconds for fit's phases (default 360), PHASES (default faceres160,tiny_kd),
# KERAS_BACKEND (default torch: stop 23's lease compiled for 476 s on JAX), PROBE_ARGS (extra probe options),
# OUT (default gpu_out), STASH (default /tmp/emotion-lease).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
BUDGET=${BUDGET:-360}
PHASES=${PHASES:-faceres160,tiny_kd}
PROBE_ARGS=${PROBE_ARGS:---steps 10}
STASH=${STASH:-/tmp/emotion-lease}
DATA=gpu_data/fer2013

if [ "${1:-}" = "stash" ]; then  # first of two calls: keep the carried part for the second
  mkdir -p "$STASH" && cp -r gpu_data .whl "$STASH"/ 2>/dev/null
  du -sh "$STASH"/*; exit 0
fi
if [ -d "$STASH" ]; then  # what an earlier call kept; this call's own files win (-n: nothing overwritten)
  cp -rn "$STASH"/. . 2>/dev/null
fi
WEIGHTS=$DATA/backbone.f16.weights.h5
[ -f "$WEIGHTS" ] || WEIGHTS=gpu_data/faceres-deep.weights.h5
export KERAS_BACKEND=${KERAS_BACKEND:-torch}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"

for needed in "$DATA/manifest.json" "$WEIGHTS"; do
  [ -f "$needed" ] || { echo "error: $needed is missing (see the preparation steps at the top of $0)" >&2; exit 2; }
done
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "error: the carried wheels did not install" >&2; exit 2; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
# At most 8 files come back from a lease: the phases' weights, log.txt, results.json, probe/probe.json and the
# two logs below (the device's name heads probe.log).
(command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv) > "$OUT/probe.log" 2>&1

# The probe's rows are written one by one; a probe that overruns still leaves the settings it timed.
# shellcheck disable=SC2086
timeout 120 python3 -m fer.train_gpu probe --data "$DATA" --weights "$WEIGHTS" --output "$OUT/probe" $PROBE_ARGS \
  2>&1 | tee -a "$OUT/probe.log"
batch=()  # the probe's fastest batch size with the augmenter; each phase's own when the probe timed none
if size=$(python3 -c "import sys; from fer.train_gpu import fastest_batch_size as f; print(f(sys.argv[1]))" \
          "$OUT/probe/probe.json" 2>/dev/null); then
  batch=(--batch-size "$size")
  echo "batch size $size: the fastest in $OUT/probe/probe.json" | tee -a "$OUT/probe.log"
fi
python3 -m fer.train_gpu fit --data "$DATA" --weights "$WEIGHTS" --output "$OUT" --budget "$BUDGET" \
  --phases "$PHASES" "${batch[@]}" 2>&1 | tee "$OUT/fit.log"
