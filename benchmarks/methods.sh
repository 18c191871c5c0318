#!/usr/bin/env bash
# The methods table: every distillation method against plain KD and hard labels, paired by seed.
#
#   benchmarks/methods.sh [TEACHER_DIR] [OUT_DIR]     # defaults: runs/teacher-hybrid-deep runs/methods
#
# The teacher is the strongest the project has a recipe for (fashion_mnist_hybrid, 93.5%); the
# students are the two student recipes at their own budgets, 3 seeds each:
#   - fashion_mnist_vit_student (ViT, 12,000 steps, T = 2) x {hard, kd, dkd, dist, token, hint}
#   - fashion_mnist_cnn_student (CNN, 6,000 steps, T = 2, alpha 0.5) x {hard, kd, dkd, dist, hint}
# kd, dkd, dist and token learn from exported targets; hint runs online (it matches the
# teacher's inner layer) and is paired with kd on targets. Each sweep writes OUT/<student>/sweep.md
# with mean +- std and the paired differences against hard labels and against kd.
#
# The teacher trains on every core. The two sweeps then run side by side, each pinned to half of
# the cores with taskset (small students use a second core poorly, so two at once finish sooner);
# SIDE_BY_SIDE=0 runs them one after the other on every core. Their train seconds are then
# per-half-machine figures.
#
# Everything resumes: a stopped teacher continues from its last checkpoint, and a sweep keeps the
# runs it finished and resumes the one it was in, so running the script again picks up where it
# stopped. On 2 CPU cores the teacher takes 1.2-2 hours and the students several more.
set -euo pipefail
cd "$(dirname "$0")/.."
distill=${DISTILL:-.venv/bin/distill}
teacher=${1:-runs/teacher-hybrid-deep}
out=${2:-runs/methods}
seeds=(--seed 0 --seed 1 --seed 2)

if [ ! -f "$teacher/summary.json" ]; then
  "$distill" teacher --recipe fashion_mnist_hybrid --workdir "$teacher"
fi
vit_sweep=("$distill" sweep --recipe fashion_mnist_vit_student --teacher "$teacher" --out "$out/vit"
  --model vit --mode hard --mode targets
  --method kd --method dkd --method dist --method token --method hint "${seeds[@]}")
cnn_sweep=("$distill" sweep --recipe fashion_mnist_cnn_student --teacher "$teacher" --out "$out/cnn"
  --model cnn --mode hard --mode targets
  --method kd --method dkd --method dist --method hint "${seeds[@]}")

cores=$(nproc)
if [ "${SIDE_BY_SIDE:-1}" = 1 ] && [ "$cores" -ge 2 ] && command -v taskset > /dev/null; then
  half=$((cores / 2))
  mkdir -p "$out"
  echo "the two sweeps side by side: ViT on cores 0-$((half - 1)), CNN on cores $half-$((cores - 1));" \
    "logs in $out/vit.log and $out/cnn.log"
  taskset -c "0-$((half - 1))" "${vit_sweep[@]}" > "$out/vit.log" 2>&1 &
  vit=$!
  taskset -c "$half-$((cores - 1))" "${cnn_sweep[@]}" > "$out/cnn.log" 2>&1 &
  cnn=$!
  # Both finish (or fail) before the script says how they went.
  status=0
  wait "$vit" || { status=$?; echo "the ViT sweep failed: see $out/vit.log"; }
  wait "$cnn" || { status=$?; echo "the CNN sweep failed: see $out/cnn.log"; }
  [ "$status" = 0 ] && cat "$out/vit/sweep.md" "$out/cnn/sweep.md"
  exit "$status"
fi
"${vit_sweep[@]}"
"${cnn_sweep[@]}"
