"""A Keras 3 model (`.keras` file) as a teacher, run on the JAX backend.

The model's own preprocessing layers (Rescaling, Normalization, Resizing)
travel with it; `apply` adds only what the saved model cannot know: resizing
the data set's images to the size it expects, and grey -> RGB.
"""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from distill.errors import UserError, one_line
from distill.importers import ForeignTeacher

# The smallest positive normal float32: log() of a probability floored here is finite (-87.3).
_TINY = float(np.finfo(np.float32).tiny)


def _keras():
  """The keras module on the JAX backend (imported here: it is slow, and picks its backend once)."""
  keras = sys.modules.get("keras")
  if keras is None:
    # distill computes with JAX only; the backend must be chosen before keras is first imported.
    os.environ["KERAS_BACKEND"] = "jax"
    import keras  # noqa: PLC0415
  backend_of = getattr(getattr(keras, "config", None), "backend", None)
  backend = backend_of() if backend_of else "unknown"
  if backend != "jax":
    raise UserError(f"keras was already imported with the {backend} backend; set "
                    "KERAS_BACKEND=jax before starting Python to import a Keras teacher")
  return keras


def _load(path: Path, keras) -> Any:
  """The model in the .keras file at `path`, or a UserError saying why it cannot be read."""
  if not path.is_file():
    raise UserError(f"{path} does not exist")
  # Keras reports a damaged archive as "File not found"; say what is really wrong.
  if not zipfile.is_zipfile(path):
    raise UserError(f"{path} is not a Keras 3 .keras file (not a zip archive: damaged, "
                    "or saved in another format such as HDF5)")
  try:
    return keras.saving.load_model(path, compile=False)
  # A damaged or foreign archive fails in many ways (zip, JSON, h5, unknown layer classes).
  except Exception as error:  # pylint: disable=broad-exception-caught
    raise UserError(f"{path} could not be loaded as a Keras model "
                    f"({type(error).__name__}: {one_line(error)})") from None


def _input_shape(model, path: Path) -> tuple[int | None, ...] | None:
  """The shape of the model's one input, batch dimension included; None when it is not known."""
  try:
    inputs = model.inputs
  # A subclassed model may not know its inputs: it then gets the images as they are.
  except (AttributeError, ValueError):
    return None
  if inputs is None:
    return None
  if len(inputs) != 1:
    raise UserError(f"{path} has {len(inputs)} inputs; a teacher takes one input, the images")
  return tuple(inputs[0].shape)


def _output_activation(layer) -> str:
  """The name of the function the model's last layer ends in ('linear' when none)."""
  inner = getattr(layer, "layers", None)
  if inner:  # A nested model ends in its own last layer.
    return _output_activation(inner[-1])
  if type(layer).__name__ == "Softmax":
    return "softmax"
  activation = getattr(layer, "activation", None)
  return getattr(activation, "__name__", "linear") if activation is not None else "linear"


def _fit_images(x, expected: tuple[int | None, ...] | None, path: Path):
  """Pixels [B, H, W, C] shaped the way the model's input expects them."""
  if expected is None:
    return x
  batch, height, width, channels = x.shape
  if len(expected) == 2:  # A flat input, e.g. an MLP trained on 784 pixels.
    if expected[1] not in (None, height * width * channels):
      raise UserError(f"{path} expects {expected[1]} input values per image; the images have "
                      f"{height}x{width}x{channels} = {height * width * channels}")
    return x.reshape(batch, -1)
  if len(expected) == 3:  # [H, W] greyscale without a channel axis.
    want_h, want_w, want_c = expected[1], expected[2], 1
  elif len(expected) == 4:
    want_h, want_w, want_c = expected[1:]
    if expected[1] in (1, 3) and want_c not in (None, 1, 3):  # [C, H, W]: torch's layout
      raise UserError(
          f"{path} takes channels-first images {list(expected[1:])}; distill gives "
          f"[height, width, channels]: wrap it with inputs = keras.Input(({want_w}, {want_c}, "
          f"{expected[1]})); keras.Model(inputs, model(keras.layers.Permute((3, 1, 2))(inputs)))"
          ".save(...), or import its logits as a .npz")
  else:
    raise UserError(f"{path} expects inputs of shape {list(expected)[1:]}; images are "
                    "[height, width, channels]")
  if (want_h or height, want_w or width) != (height, width):
    # Resize on one channel before repeating it: a third of the work for grey images.
    x = jax.image.resize(x, (batch, want_h or height, want_w or width, channels), "bilinear")
  if want_c not in (None, channels):
    if channels != 1 or want_c != 3:
      raise UserError(f"{path} expects {want_c}-channel images; the data set's have {channels} "
                      "(only grey -> RGB is converted)")
    x = jnp.repeat(x, 3, axis=-1)
  return x[..., 0] if len(expected) == 3 else x


def open_keras(path: str | Path) -> ForeignTeacher:
  """Loads the Keras 3 model saved at `path` (a .keras file) as a teacher run on JAX.

  `apply((trainable, non_trainable), pixels)` runs the model statelessly in
  inference mode, so it traces inside jax.jit like any JAX function.
  """
  path = Path(path)
  keras = _keras()
  model = _load(path, keras)
  expected = _input_shape(model, path)
  outputs = getattr(model, "outputs", None)
  if outputs is not None and len(outputs) != 1:
    raise UserError(f"{path} has {len(outputs)} outputs; a teacher must output one tensor of "
                    "logits [batch, classes]")
  layers = list(getattr(model, "layers", []))
  activation = _output_activation(layers[-1]) if layers else "linear"
  # A model ending in softmax returns probabilities, but the distillation losses take logits
  # (they apply softmax(z / T) themselves). log p differs from the logits before the softmax by
  # one constant per row, so it gives the same softmax at every temperature; the floor keeps
  # log() finite where a probability underflowed to 0.
  to_log_probs = activation == "softmax"

  def apply(params, pixels):
    trainable, non_trainable = params
    x = _fit_images(jnp.asarray(pixels, jnp.float32), expected, path)
    outputs, _ = model.stateless_call(trainable, non_trainable, x, training=False)
    if not hasattr(outputs, "ndim") or outputs.ndim != 2 or outputs.shape[0] != x.shape[0]:
      shape = list(outputs.shape) if hasattr(outputs, "shape") else type(outputs).__name__
      raise UserError(f"{path} outputs {shape}; a teacher must output logits [batch, classes]")
    logits = outputs.astype(jnp.float32)
    return jnp.log(jnp.maximum(logits, _TINY)) if to_log_probs else logits

  params = ([jnp.asarray(v.value) for v in model.trainable_variables],
            [jnp.asarray(v.value) for v in model.non_trainable_variables])
  num_classes = _probe_classes(model, apply, params, expected, path)
  return ForeignTeacher(
      kind="keras", source=str(path), num_classes=num_classes, apply=apply, params=params,
      num_params=int(sum(np.prod(v.shape) for v in model.trainable_variables)),
      can_teach_online=True,
      details={
          "model_name": model.name,
          "input_shape": list(expected[1:]) if expected is not None else None,
          "output_activation": activation,
          "outputs": "log-probabilities (log of its softmax)" if to_log_probs else "logits",
          "layers": len(layers),
          "total_params": int(model.count_params()),
          "keras_version": keras.__version__,
      })


def _probe_classes(model, apply, params, expected, path: Path) -> int:
  """The number of classes, checking the output is [B, C] by tracing `apply` once.

  The trace is the one jax.jit makes, so a model that cannot run inside jit fails here, at
  import, rather than in the student's first step.
  """
  # Images [H, W, C] that `_fit_images` passes to the model unchanged.
  image = {4: expected[1:], 3: (*expected[1:], 1), 2: (*expected[1:], 1, 1)}.get(
      len(expected)) if expected is not None else None
  if image is not None and None not in image:
    probe = jax.ShapeDtypeStruct((2, *image), jnp.float32)
    try:
      out = jax.eval_shape(apply, params, probe)
    except UserError:
      raise
    except Exception as error:  # pylint: disable=broad-exception-caught
      raise UserError(f"{path} cannot run on JAX inside jax.jit "
                      f"({type(error).__name__}: {one_line(error)})") from None
    shape = tuple(out.shape)
  else:
    # The input size is open (e.g. the model resizes itself): read the output from the graph.
    outputs = getattr(model, "outputs", None)
    if not outputs:
      raise UserError(f"{path} records neither its input size nor its output shape; build it "
                      "on an input of known size (keras.Input) before saving")
    shape = tuple(outputs[0].shape)
  if len(shape) != 2:
    raise UserError(f"{path} outputs {list(shape)}; a teacher must output logits "
                    "[batch, classes]")
  if shape[-1] is None or shape[-1] < 2:
    raise UserError(f"{path} outputs {shape[-1]} class scores per image; a teacher must score "
                    "at least 2 classes")
  return int(shape[-1])
