#!/usr/bin/env bash
# `make bench`: distill vs the PyTorch reference, same model/batch/optimizer, in one run.
# Writes runs/bench/results.jsonl (one JSON object per measurement) and prints a Markdown table.
#   BENCH_STEPS=500 BENCH_ONLY="fashion_mnist fashion_mnist_student" benchmarks/bench.sh
# BENCH_ONLY: the groups (cifar10, fashion_mnist, fashion_mnist_student, cli) or rows
#   (cifar10/torch-eager, ...: the names below) to run [default: all; ~40 minutes]
# BENCH_STEPS: distill's real-loop steps (and bare steps) [default: one period of the recipe's
#   eval/checkpoint cadence]; BENCH_TORCH_STEPS: PyTorch's timed steps [default: 60]
# BENCH_OUT: the folder for results.jsonl [default: runs/bench]
# torch (the CPU wheel) is installed into .venv only when a PyTorch row runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
out=${BENCH_OUT:-runs/bench}
# The real loop runs one period of each recipe's eval/checkpoint cadence unless BENCH_STEPS is set.
steps=(${BENCH_STEPS:+--steps "$BENCH_STEPS"})
torch_steps=${BENCH_TORCH_STEPS:-60}
mkdir -p "$out"
: > "$out/results.jsonl"
# BENCH_ONLY="fashion_mnist cifar10/torch-eager ..." runs only those groups or rows.
only=" ${BENCH_ONLY:-} "
wanted() { # name: whether BENCH_ONLY (empty: every row) picks it
  [ -z "${BENCH_ONLY:-}" ] || [[ $only == *" ${1%%/*} "* || $only == *" $1 "* ]]
}
needs_torch=false
for setting in cifar10 fashion_mnist fashion_mnist_student; do
  for variant in torch-eager torch-compile; do
    if wanted "$setting/$variant"; then needs_torch=true; fi
  done
done
if $needs_torch && ! $bin/python -c "import torch" 2>/dev/null; then
  # The CPU wheel; kept out of distill's own dependencies.
  $bin/pip install --quiet torch==2.13.0
fi
# Every process timed here, PyTorch's included, runs with the allocator setting the `distill`
# command starts itself with (huge pages for XLA's scratch buffers: distill/launcher.py).
tunables=$($bin/python -c "from distill import launcher; e = launcher.huge_page_environment(); print((e or {}).get('GLIBC_TUNABLES', ''))")
if [ -n "$tunables" ]; then export GLIBC_TUNABLES=$tunables; fi
# The CPU goes beside every figure: speeds differ between CPU types and generations.
cpu=$($bin/python -c "from distill import backend; print(backend.cpu_description())")
record() { # name, then the command printing one JSON line
  local name=$1; shift
  if ! wanted "$name"; then
    return
  fi
  echo ">> $name: $*" >&2
  "$@" | tail -1 | $bin/python -c "import json,sys; d=json.load(sys.stdin); d['name']='$name'; d['command']=sys.argv[1]; d['cpu']=sys.argv[2]; print(json.dumps(d))" "$*" "$cpu" >> "$out/results.jsonl"
}

# The seed's CIFAR-10 teacher: ViT patch 8, width 64, depth 4, batch 256, crop 24 -> 32 + flip.
cifar_torch=(--image-shape 32x32x3 --num-examples 50000 --patch 8 --width 64 --depth 4 --heads 4
             --mlp-ratio 4 --batch 256 --crop resize --crop-size 24 --steps "$torch_steps")
record cifar10/distill $bin/distill bench --recipe cifar10 --synthetic 32x32x3:50000:10 "${steps[@]}" --json -q
record cifar10/distill-bf16 $bin/distill bench --recipe cifar10 --synthetic 32x32x3:50000:10 "${steps[@]}" --json -q --set teacher.compute_dtype=bfloat16
record cifar10/torch-eager $bin/python benchmarks/torch_reference.py "${cifar_torch[@]}"
record cifar10/torch-compile $bin/python benchmarks/torch_reference.py "${cifar_torch[@]}" --compile

# The default Fashion-MNIST teacher (recipes/fashion_mnist.toml): the 9-token hybrid ViT.
fmnist_torch=(--image-shape 28x28x1 --num-examples 55000 --stem cnn --stem-channels 32,64,128
              --patch 1 --width 128 --depth 4 --heads 4 --mlp-ratio 2 --batch 128 --crop pad --pad 2
              --steps "$torch_steps")
record fashion_mnist/distill $bin/distill bench --recipe fashion_mnist "${steps[@]}" --json -q
record fashion_mnist/distill-bf16 $bin/distill bench --recipe fashion_mnist "${steps[@]}" --json -q --set teacher.compute_dtype=bfloat16
record fashion_mnist/torch-eager $bin/python benchmarks/torch_reference.py "${fmnist_torch[@]}"
record fashion_mnist/torch-compile $bin/python benchmarks/torch_reference.py "${fmnist_torch[@]}" --compile

# The default student (recipes/fashion_mnist.toml [student]): the CNN on soft targets, no
# augmentation; its convolutions are the slowest thing a CPU user waits for.
cnn_torch=(--image-shape 28x28x1 --num-examples 55000 --model cnn --channels 32,64,96 --batch 128
           --crop none --no-flip --soft-targets --lr 2e-3 --weight-decay 0.01 --steps "$torch_steps")
record fashion_mnist_student/distill $bin/distill bench --recipe fashion_mnist --role student "${steps[@]}" --json -q
record fashion_mnist_student/torch-eager $bin/python benchmarks/torch_reference.py "${cnn_torch[@]}"
record fashion_mnist_student/torch-compile $bin/python benchmarks/torch_reference.py "${cnn_torch[@]}" --compile

# CLI start-up: distill --help, best of 5.
record cli/help $bin/python -c "
import subprocess, time, json
best = min((lambda t: (subprocess.run(['$bin/distill', '--help'], capture_output=True), time.perf_counter() - t)[1])(time.perf_counter()) for _ in range(5))
print(json.dumps({'help_seconds': round(best, 3)}))"

$bin/python benchmarks/bench_table.py "$out/results.jsonl"
