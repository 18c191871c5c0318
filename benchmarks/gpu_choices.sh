#!/usr/bin/env bash
# The second device check, after benchmarks/gpu.sh: the backend choices (`distill/backend.py`)
# that models with convolutions depend on, and the ViT's fused attention projections, each timed
# against the accelerator's current default in one process (benchmarks/ab_step.py), and the
# CIFAR-10 recipe's whole 20,000-step loop. Writes $OUT/choices.txt. Needs no install and no
# data (synthetic images); about 5 minutes.
#   OUT=/tmp/c benchmarks/gpu_choices.sh                       # on the device
#   JAX_PLATFORMS=cpu OUT=/tmp/c benchmarks/gpu_choices.sh --smoke   # the same path on CPU
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder for choices.txt}"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
window=200 rounds=4 loop_steps=20000 bare_steps=200 tiny_teacher="" tiny_student="" tiny_vit=""
if [[ ${1:-} == --smoke ]]; then  # tiny models and windows: checks the path, measures nothing
  window=10 rounds=1 loop_steps=20 bare_steps=20
  tiny_teacher="teacher.vit.width=32; teacher.vit.depth=1; teacher.vit.heads=2; \
teacher.vit.stem_channels=[8, 8, 8]; "
  tiny_student="student.cnn.channels=[8, 8]; "
  tiny_vit="teacher.vit.depth=1; "
fi

conv_variants() {  # $1: overrides every variant shares
  printf '%s\0' --variant "default: $1" --variant "conv: $1 backend.conv_stem=conv" \
    --variant "unrolled: $1 backend.unroll_conv_scan=true" \
    --variant "conv unrolled: $1 backend.conv_stem=conv; backend.unroll_conv_scan=true"
}

{
  echo "## Fashion-MNIST teacher (hybrid ViT: conv stages, then patches)"
  mapfile -d '' variants < <(conv_variants "$tiny_teacher")
  "$py" benchmarks/ab_step.py --recipe fashion_mnist --synthetic 28x28x1:55000:10 \
    --window "$window" --rounds "$rounds" "${variants[@]}"
  echo
  echo "## The demo's CNN student"
  mapfile -d '' variants < <(conv_variants "student.model=cnn; $tiny_student")
  "$py" benchmarks/ab_step.py --recipe demo --role student --synthetic 28x28x1:55000:10 \
    --window "$window" --rounds "$rounds" "${variants[@]}"
  echo
  echo "## CIFAR-10 ViT: query, key and value as one product, or three"
  "$py" benchmarks/ab_step.py --recipe cifar10 --synthetic 32x32x3:50000:10 \
    --window "$window" --rounds "$rounds" --variant "fused: $tiny_vit" \
    --variant "split: $tiny_vit backend.fused_qkv=false"
  echo
  echo "## CIFAR-10 recipe: its whole loop ($loop_steps steps x 256, evaluations and checkpoints)"
  "$py" -m distill bench --recipe cifar10 \
    --synthetic 32x32x3:50000:10 --steps "$loop_steps" --bare-steps "$bare_steps" --json -q
} 2>&1 | tee "$OUT/choices.txt"
