"""The demo's MLP student trained by Keras 3 `model.fit` on the JAX backend: images/s.

The peer a JAX user already has. Same model as `distill`'s demo MLP student
(784 -> 256 GELU -> 10, 203,530 parameters), same batch (128), AdamW (lr
1e-3, weight decay 0.05, global-norm clipping 1.0) and soft-target
cross-entropy, on the Fashion-MNIST training split distill uses. The inputs
are standardised inside the model (a Normalization layer), as distill does
inside its step. Each `steps_per_execution` runs one warm-up epoch, then one
timed epoch; the best is reported.

    KERAS_BACKEND=jax python benchmarks/keras_fit.py --json

Compare with, in the same session:

    distill bench --recipe demo --role student --set student.model=mlp \\
        --steps 2000 --bare-steps 2000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402 (after choosing its backend)
import numpy as np  # noqa: E402

from distill import config, workflow  # noqa: E402


def _model(mean: float, variance: float) -> keras.Model:
  inputs = keras.Input((28, 28, 1))
  x = keras.layers.Normalization(mean=mean, variance=variance)(inputs)
  x = keras.layers.Flatten()(x)
  x = keras.layers.Dense(256, activation="gelu")(x)
  return keras.Model(inputs, keras.layers.Dense(10)(x))


def time_fit(steps_per_execution: int, images: np.ndarray, targets: np.ndarray,
             batch_size: int) -> float:
  """Images/s of one epoch of `model.fit`, after one warm-up epoch."""
  keras.utils.set_random_seed(0)
  model = _model(float(images.mean()), float(images.var()))
  model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.05, global_clipnorm=1.0),
                loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                steps_per_execution=steps_per_execution, jit_compile=True)
  model.fit(images, targets, batch_size=batch_size, epochs=1, verbose=0, shuffle=True)
  start = time.perf_counter()
  model.fit(images, targets, batch_size=batch_size, epochs=1, verbose=0, shuffle=True)
  return len(images) / (time.perf_counter() - start)


def main() -> None:
  """Prints images/s per steps_per_execution and the best."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args()
  dataset = workflow.load_data(config.load_recipe("demo"))
  images = dataset.x_train.astype(np.float32)
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(len(images), 10)).astype(np.float32)
  targets = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  rates = {k: round(time_fit(k, images, targets, args.batch_size), 1) for k in (1, 32)}
  result = {"keras": keras.__version__, "backend": keras.backend.backend(),
            "images_per_second": rates, "best": max(rates.values())}
  print(json.dumps(result) if args.json else
        "\n".join(f"steps_per_execution {k}: {v:,.0f} images/s" for k, v in rates.items()))


if __name__ == "__main__":
  main()
