#!/usr/bin/env bash
# The open doors on Fashion-MNIST, end to end (the numbers in BENCHMARKS.md, "Open doors"):
#   1. fine-tune the committed tiny timm ViT (tests/fixtures/vit_timm) as a teacher (--init-from);
#   2. import a logits .npz made by numpy from that teacher's predictions, and a Keras model;
#   3. train an MLP student from the fine-tuned teacher (online);
#   4. export the student to StableHLO and ONNX and predict the whole test set from each file,
#      against the JAX logits of the run (max |difference| and argmax agreement).
#   benchmarks/doors.sh OUTDIR [FINE_TUNE_STEPS]
set -euo pipefail
out=${1:-runs/doors}; steps=${2:-3000}
bin=${DISTILL:-.venv/bin/distill}
python=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
/usr/bin/time -f "fine-tune wall %e s" \
  "$bin" teacher --init-from tests/fixtures/vit_timm --workdir "$out/teacher-vit" --steps "$steps" \
  --set teacher.eval_every=1000 --set teacher.checkpoint_every=1000 --overwrite --quiet
/usr/bin/time -f "student wall %e s" \
  "$bin" student --teacher "$out/teacher-vit" --model mlp --teaching online -T 2 \
  --workdir "$out/student-mlp" --overwrite --quiet
"$bin" export-model "$out/student-mlp" --format stablehlo --out "$out/mlp.stablehlo" --overwrite
"$bin" export-model "$out/student-mlp" --format onnx --out "$out/mlp.onnx" --overwrite
"$python" - "$out" <<'EOF'
import json, sys
from pathlib import Path

import numpy as np

from distill import workflow
from distill.predict import predict_logits
from distill.run_recipe import read_run_recipe

out = Path(sys.argv[1])
recipe = read_run_recipe(out / "student-mlp")
dataset = workflow.load_data(recipe)
jax_logits = np.load(out / "student-mlp" / "predictions.npz")["test_logits"]
rows = {}
for name in ("mlp.stablehlo", "mlp.onnx"):
  logits = predict_logits(out / name, dataset.x_test)
  rows[name] = {
      "images": len(dataset.x_test),
      "max_abs_logit_difference": float(np.max(np.abs(logits - jax_logits))),
      "argmax_agreement": float(np.mean(logits.argmax(-1) == jax_logits.argmax(-1))),
      "test_accuracy": float(np.mean(logits.argmax(-1) == dataset.y_test)),
  }
print(json.dumps(rows, indent=1))
EOF
"$bin" compare --markdown "$out/teacher-vit" "$out/student-mlp"
