#!/usr/bin/env bash
# Training throughput on a lent GPU machine (the `device` tool): scripts/bench_train.py at a preset,
# tokens/s, step time and MFU against that machine's own measured matmul peak. Never needed by
# the tests. From the repository root on the device machine:
#
#   bash scripts/device/bench_train.sh [PRESET] [BATCH] [SEQ]      # default: 370m 16 2048
#
# The device image holds jax (CUDA), flax, optax, orbax and tqdm; what mmfree imports beyond them
# (grain and its array-record, portpicker) travels as wheels in .whl/, downloaded here first:
#   python3.12 -m pip download --only-binary=:all: --no-deps -d .whl grain array-record portpicker
# (.whl/ kept out of git with `echo /.whl/ >> .git/info/exclude`; the device tool carries it).
set -euo pipefail
preset=${1:-370m} batch=${2:-16} seq=${3:-2048}
venv=/tmp/mmfree-venv
python3 -m venv --system-site-packages "$venv"
if [ -d .whl ]; then
  "$venv/bin/pip" install --quiet --no-index --find-links .whl --no-deps .whl/*.whl
fi
"$venv/bin/pip" install --quiet --no-index --no-deps --no-build-isolation -e . \
  || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # no build backend there: the source tree
"$venv/bin/python" -c "import jax; print(jax.devices())"
out=${OUT:-/tmp}
"$venv/bin/python" scripts/bench_train.py --preset "$preset" \
  --batch "$batch" --seq "$seq" --steps 10 --compile-layers "" | tee "$out/bench_train_$preset.md"
