#!/usr/bin/env bash
# The prepared device check: throughput, MFU, an end-to-end demo and a profile on whatever
# accelerator JAX finds, written to $OUT/gpu.json and $OUT/gpu.md (see benchmarks/gpu_bench.py).
# Needs no install: python3 from PATH (or $PYTHON) with jax, flax, optax, orbax, click, numpy.
# The demo stage reads Fashion-MNIST from data/fashion-mnist (benchmarks/carry_data.sh fills it).
#   OUT=/tmp/gpu benchmarks/gpu.sh            # on the device, about 5-8 minutes
#   JAX_PLATFORMS=cpu OUT=/tmp/gpu-smoke PYTHON=.venv/bin/python benchmarks/gpu.sh --smoke
#                                             # the same path on CPU, a minute or two
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder for gpu.json and gpu.md}"
# Prepended, not replaced: a caller's PYTHONPATH (e.g. a test's import blocker) still applies.
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
# One line, not a traceback a stage, when the interpreter is the wrong one (a shell without the
# virtual environment: python3 from PATH then has no jax).
if ! "$py" -c "import jax" 2>/dev/null; then
  echo "gpu.sh: $py has no jax: set PYTHON=.venv/bin/python or activate .venv" \
       "(or PYTHON=any python with jax, flax, optax, orbax-checkpoint, click, numpy)" >&2
  exit 1
fi
exec "$py" benchmarks/gpu_bench.py --out "$OUT" "$@"
