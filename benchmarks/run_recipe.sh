#!/usr/bin/env bash
# Runs a recipe's whole workflow: the teacher, then each student with soft and hard labels,
# then the comparison as Markdown (for BENCHMARKS.md).
#   benchmarks/run_recipe.sh RECIPE OUTDIR [MODEL ...]     (default models: cnn mlp linear vit)
set -euo pipefail
recipe=$1; out=$2; shift 2
models=("${@:-cnn mlp linear vit}")
[ $# -eq 0 ] && models=(cnn mlp linear vit)
bin=${DISTILL:-.venv/bin/distill}
mkdir -p "$out"
/usr/bin/time -f "teacher wall %e s, peak RSS %M KB" \
  "$bin" teacher --recipe "$recipe" --workdir "$out/teacher" --overwrite --quiet
for model in "${models[@]}"; do
  for loss in soft hard; do
    suffix=$([ "$loss" = hard ] && echo "-hard" || true)
    /usr/bin/time -f "student $model $loss wall %e s, peak RSS %M KB" \
      "$bin" student --teacher "$out/teacher" --model "$model" --loss "$loss" \
      --workdir "$out/student-$model$suffix" --overwrite --quiet
  done
done
"$bin" compare --markdown "$out"/*
