#!/usr/bin/env bash
# Copies the four Fashion-MNIST IDX files into data/fashion-mnist (ignored by git, ~30 MB), so
# the device tool's `carry` can send them to a machine without them (benchmarks/gpu.sh).
#   benchmarks/carry_data.sh [SOURCE]   # default: Debian's /usr/share/datasets/fashion-mnist
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-/usr/share/datasets/fashion-mnist}
mkdir -p data/fashion-mnist
for name in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte \
            t10k-labels-idx1-ubyte; do
  cp "$src/$name.gz" data/fashion-mnist/
done
du -sh data/fashion-mnist
