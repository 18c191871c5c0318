"""Keras 3 `model.fit` beside distill's student loop, interleaved round by round: images/s.

Keras is the peer a JAX user already has. For each student (`--model`; by default
the demo's MLP, 784 -> 256 GELU -> 10 with 203,530 parameters, and its linear
student, 7,850), every round times one after another on the same machine:

- Keras `model.fit` on the JAX backend: the same model, batch 128, AdamW with
  global-norm clipping 1.0 and soft-target cross-entropy on the Fashion-MNIST
  training split, inputs standardised inside the model (a Normalization layer)
  as distill does inside its step; one epoch for each `steps_per_execution`
  (1 and 32), compiled and warmed up before the first round; the best counts;
- the same student written by hand in JAX and optax (`HandWrittenStep`: a
  scan of the recipe's steps per dispatch over the split kept on the device,
  gradients by plain autodiff): what a JAX user writing the loop gets;
- distill's bare step (`bench.bare_step`: the compiled dispatch called back to
  back) and its real loop (`bench.real_loop`: `loop.fit` with logging,
  validation and checkpoints at the recipe's cadence), `--steps` steps each.

The rounds interleave so that the drift of a shared machine's speed over
minutes falls on all three alike; the medians of the per-round ratios are
what to quote.

    KERAS_BACKEND=jax python benchmarks/keras_fit.py --rounds 5 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402 (after choosing its backend)
import numpy as np  # noqa: E402
import optax  # noqa: E402

from distill import bench, config, workflow  # noqa: E402

_SPES = (1, 32)


def _model(name: str, hidden: list[int], mean: float, variance: float) -> keras.Model:
  """distill's `name` student ('mlp' or 'linear') as a Keras model."""
  inputs = keras.Input((28, 28, 1))
  x = keras.layers.Normalization(mean=mean, variance=variance)(inputs)
  x = keras.layers.Flatten()(x)
  for width in hidden if name == "mlp" else []:
    x = keras.layers.Dense(width, activation="gelu")(x)
  return keras.Model(inputs, keras.layers.Dense(10)(x))


class KerasFit:
  """One compiled Keras model per steps_per_execution, warmed up; `time_epoch` times one epoch."""

  def __init__(self, name: str, hidden: list[int], images: np.ndarray, targets: np.ndarray,
               batch_size: int, learning_rate: float, weight_decay: float):
    self.images, self.targets, self.batch_size = images, targets, batch_size
    self.models = {}
    for spe in _SPES:
      keras.utils.set_random_seed(0)
      model = _model(name, hidden, float(images.mean()), float(images.var()))
      model.compile(optimizer=keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay,
                                                     global_clipnorm=1.0),
                    loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                    steps_per_execution=spe, jit_compile=True)
      self._fit(model)  # compile and warm up
      self.models[spe] = model
    self.params = self.models[_SPES[0]].count_params()

  def _fit(self, model: keras.Model) -> None:
    model.fit(self.images, self.targets, batch_size=self.batch_size, epochs=1, verbose=0,
              shuffle=True)

  def time_epoch(self) -> dict[int, float]:
    """Images/s of one epoch per steps_per_execution."""
    rates = {}
    for spe, model in self.models.items():
      start = time.perf_counter()
      self._fit(model)
      rates[spe] = len(self.images) / (time.perf_counter() - start)
    return rates


class HandWrittenStep:
  """The student as a JAX user would write it: Dense layers, soft-target cross-entropy, AdamW.

  The split stays on the device as uint8 and each step gathers its batch,
  standardises it and updates the parameters; `steps_per_dispatch` steps run
  as one compiled scan with the state donated, as distill's step does, but
  without its metrics (accuracy, gradient norm, agreement).
  """

  def __init__(self, name: str, hidden: list[int], images: np.ndarray, targets: np.ndarray,
               settings, seed: int = 0):
    self.batch_size, self.per_dispatch = settings.batch_size, settings.steps_per_dispatch
    self.num_examples = len(images)
    widths = [int(np.prod(images.shape[1:])), *(hidden if name == "mlp" else []), 10]
    keys = jax.random.split(jax.random.key(seed), len(widths) - 1)
    params = [{"w": jax.random.normal(key, (fan_in, fan_out)) / np.sqrt(fan_in),
               "b": jnp.zeros(fan_out)}
              for key, fan_in, fan_out in zip(keys, widths[:-1], widths[1:], strict=True)]
    schedule = optax.warmup_cosine_decay_schedule(0.0, settings.learning_rate,
                                                  settings.warmup_steps, settings.steps)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                            optax.adamw(schedule, weight_decay=settings.weight_decay))
    pixels = jnp.asarray(images.astype(np.uint8))
    soft = jnp.asarray(targets)
    mean, std = float(images.mean()), float(images.std())

    def loss_fn(params, x, t):
      for layer in params[:-1]:
        x = jax.nn.gelu(x @ layer["w"] + layer["b"])
      logits = x @ params[-1]["w"] + params[-1]["b"]
      return -jnp.mean(jnp.sum(t * jax.nn.log_softmax(logits), axis=-1))

    def chunk(state, indices_KxB):
      def step(state, indices_B):
        params, opt_state = state
        x = (pixels[indices_B].reshape(len(indices_B), -1).astype(jnp.float32) - mean) / std
        loss, grads = jax.value_and_grad(loss_fn)(params, x, soft[indices_B])
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss
      return jax.lax.scan(step, state, indices_KxB)

    self._chunk = jax.jit(chunk, donate_argnums=0)
    self._state = (params, optimizer.init(params))
    self._rng = np.random.default_rng(seed)
    self.images_per_second(self.per_dispatch)  # compile and warm up

  def images_per_second(self, steps: int) -> float:
    """Times `steps` steps (whole dispatches), their indices made in advance."""
    dispatches = max(1, steps // self.per_dispatch)
    indices = [jnp.asarray(self._rng.integers(0, self.num_examples,
                                              (self.per_dispatch, self.batch_size),
                                              dtype=np.int32))
               for _ in range(dispatches)]
    start = time.perf_counter()
    for rows in indices:
      self._state, losses = self._chunk(self._state, rows)
    losses.block_until_ready()
    seconds = time.perf_counter() - start
    self.last_loss = float(losses[-1])  # after the clock stops: the training loss now
    return dispatches * self.per_dispatch * self.batch_size / seconds


def compare(name: str, rounds: int, steps: int, images: np.ndarray, targets: np.ndarray,
            echo=print) -> dict:
  """`rounds` interleaved rounds of Keras fit, distill's bare step and its loop for `name`."""
  recipe = config.load_recipe("demo", [f"student.model={name}"])
  settings = config.TrainSettings.of(recipe, "student")
  hidden = list(settings.model_options.get("hidden", []))
  keras_fit = KerasFit(name, hidden, images, targets, settings.batch_size,
                       settings.learning_rate, settings.weight_decay)
  by_hand = HandWrittenStep(name, hidden, images, targets, settings)
  rows = []
  for round_index in range(rounds):
    keras_rates = keras_fit.time_epoch()
    hand = by_hand.images_per_second(steps)
    bare = bench.bare_step(recipe, role="student", steps=steps)
    loop = bench.real_loop(recipe, role="student", steps=steps)
    row = {"model": name, "round": round_index + 1,
           "keras": {spe: round(rate) for spe, rate in keras_rates.items()},
           "keras_best": round(max(keras_rates.values())), "by_hand": round(hand),
           "bare": round(bare.images_per_second), "loop": round(loop.images_per_second)}
    row["loop_to_bare"] = round(row["loop"] / row["bare"], 3)
    row["loop_to_keras"] = round(row["loop"] / row["keras_best"], 3)
    row["bare_to_keras"] = round(row["bare"] / row["keras_best"], 3)
    row["bare_to_by_hand"] = round(row["bare"] / row["by_hand"], 3)
    echo(json.dumps(row))
    rows.append(row)
  median = {key: statistics.median(row[key] for row in rows)
            for key in ("keras_best", "by_hand", "bare", "loop", "loop_to_bare",
                        "loop_to_keras", "bare_to_keras", "bare_to_by_hand")}
  return {"model": name, "params": {"keras": keras_fit.params, "distill": bare.num_params},
          "steps": steps, "rounds": rows, "median": median}


def main() -> None:
  """Prints each round as it ends, then every model's medians."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", action="append", choices=("mlp", "linear"),
                      help="students to compare [default: mlp and linear]")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=6000,
                      help="distill's steps per timing (6,000: the demo cadence's 12 periods)")
  parser.add_argument("--json", action="store_true", help="the summary as one JSON line")
  args = parser.parse_args()
  dataset = workflow.load_data(config.load_recipe("demo", ["data.labelled=0"]))
  images = dataset.x_train.astype(np.float32)
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(len(images), 10)).astype(np.float32)
  targets = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  results = [compare(name, args.rounds, args.steps, images, targets)
             for name in args.model or ["mlp", "linear"]]
  summary = {"keras": keras.__version__, "backend": keras.backend.backend(), "results": results}
  if args.json:
    print(json.dumps(summary))
    return
  for result in results:
    median = result["median"]
    print(f"{result['model']}: Keras fit {median['keras_best']:,.0f}, by hand "
          f"{median['by_hand']:,.0f}, distill bare {median['bare']:,.0f}, loop "
          f"{median['loop']:,.0f} images/s (medians of {args.rounds} rounds); loop/bare "
          f"{median['loop_to_bare']:.2f}, loop/Keras {median['loop_to_keras']:.2f}, "
          f"bare/by hand {median['bare_to_by_hand']:.2f}")


if __name__ == "__main__":
  main()
