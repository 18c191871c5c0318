#!/usr/bin/env bash
# The prepared device check: throughput, MFU, an end-to-end demo and a profile on whatever
# accelerator JAX finds, written to $OUT/gpu.json and $OUT/gpu.md (see benchmarks/gpu_bench.py).
# Needs no install: python3 from PATH (or $PYTHON) with jax, flax, optax, orbax, click, numpy.
# The demo stage reads Fashion-MNIST from data/fashion-mnist (benchmarks/carry_data.sh fills it).
#   OUT=/tmp/gpu benchmarks/gpu.sh            # on the device, about 5-8 minutes
#   JAX_PLATFORMS=cpu OUT=/tmp/x benchmarks/gpu.sh --smoke   # the same path on CPU, ~1 minute
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder for gpu.json and gpu.md}"
# Prepended, not replaced: a caller's PYTHONPATH (e.g. a test's import blocker) still applies.
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" benchmarks/gpu_bench.py --out "$OUT" "$@"
