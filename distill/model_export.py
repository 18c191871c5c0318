"""Shipping a finished run's model: export it to StableHLO or ONNX, checked against JAX.

`export_model` writes one self-contained file that takes uint8 NHWC images
with a symbolic batch dimension, standardises them inside (with the training
split's pixel statistics) and returns float32 logits [B, num_classes]:

  stablehlo  `jax.export` serialised; load with `jax.export.deserialize`
             (lowered for cpu, cuda, rocm and tpu where JAX can, else for the
             platform it was exported on; the sidecar lists them).
  onnx       converted by jax2onnx, then checked with onnxruntime against JAX
             on test images before anything is written (`pip install 'distill[onnx]'`).

Beside it goes the sidecar `PATH.json` (see `sidecar_path`): class names,
input shape and dtype, the data set and its fingerprint, the model, role and
parameter hash of the run, the distill and JAX versions, the sha256 of the
exported file, and the measured difference from JAX on test images.

`distill predict` (distill.predict) shares from here the restoring of a
finished run's model (`finished_summary`, `restore`) and the running of an
exported file (`deserialize_stablehlo`, `run_stablehlo`, `onnx_session`, `run_onnx`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from distill import rundir
from distill.errors import UserError, first_few, one_line
from distill.io import read_json, write_bytes, write_json
from distill.rundir import CHECKPOINTS_DIR, SUMMARY_FILE

EXPORT_FORMATS = ("stablehlo", "onnx")
# ONNX must reproduce JAX's logits this closely (and every argmax) on test images.
ONNX_TOLERANCE = 1e-4
# Opset 21 (jax2onnx's default: 23) keeps the files readable by onnxruntime releases before 1.24
# and by other runtimes that lag behind.
ONNX_OPSET = 21
# Test images compared between the exported model and JAX.
CHECK_IMAGES = 256
# The exported function's input and output names (ONNX), and the symbolic batch's name.
INPUT_NAME, OUTPUT_NAME, BATCH_DIM = "images", "logits", "batch"
# Platforms a StableHLO export is lowered for, so a file made on a CPU runs on an accelerator.
STABLEHLO_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
# Images per call when predicting: the last chunk is padded, so one shape compiles.
PREDICT_BATCH = 256
_INSTALL_ONNX = "pip install 'distill[onnx]'"
# jax serialises an export with flatbuffers, a dependency of distill that jax does not declare.
_NEEDS_FLATBUFFERS = ("StableHLO files are read and written with flatbuffers: "
                      "pip install flatbuffers")
# What an --out file's extension says its format is (`export_format`).
FORMAT_OF_SUFFIX = {".onnx": "onnx", ".stablehlo": "stablehlo"}
# The finished runs whose model distill restores (an imported teacher has none).
_MODEL_RUNS = (rundir.FINISHED_TEACHER, rundir.STUDENT)


def sidecar_path(model_path: Path) -> Path:
  """The sidecar JSON of an exported model file: the same path with `.json` appended."""
  model_path = Path(model_path)
  return model_path.with_name(model_path.name + ".json")


def export_model(run_dir: Path, fmt: str | None, out: Path, *, overwrite: bool = False,
                 check_images: int = CHECK_IMAGES) -> dict[str, Any]:
  """Exports a finished run's model to `out` (StableHLO or ONNX) with its sidecar `out.json`.

  Nothing is written unless every check passes: the format is known, `out`
  and its sidecar do not exist (or `overwrite`), the run is finished (its
  summary.json and the checkpoint of its last step), the conversion works and
  (ONNX) onnxruntime reproduces JAX's logits within `ONNX_TOLERANCE` with the
  same argmax on `check_images` test images. Both files are written atomically.

  Args:
    run_dir: a finished teacher or student run directory.
    fmt: 'stablehlo' or 'onnx'; None: from `out`'s extension (`export_format`).
    out: the model file to write; the sidecar is `sidecar_path(out)`.
    overwrite: replace an existing `out` (and sidecar).
    check_images: how many test images to compare the export with JAX on.

  Returns:
    The sidecar's content.
  """
  out, run_dir = Path(out), Path(run_dir)
  fmt = export_format(fmt, out)
  # The run first: an unfinished one is no model to write, whatever --overwrite says.
  summary = finished_summary(run_dir)
  _check_out(out, overwrite)
  if fmt == "onnx":
    _onnx_modules()  # Fails before the slow restore when the extra is missing.
  from distill.workflow import RecordedInputs  # noqa: PLC0415

  # A run recorded before its pixel statistics were needs its data for `distill predict` too.
  predict_needs = ("" if RecordedInputs.of(summary) is None
                   else " (`distill predict` needs no data)")
  trained, step, dataset, recipe = restore(
      run_dir, summary, needs_data="to check the export against JAX on its test images: put "
      f"the data back where its recipe.json says{predict_needs}")
  forward = _forward(trained)
  height, width, channels = dataset.image_shape
  images = _test_images(dataset, check_images)
  # The model as training evaluates it: the reference every export must match.
  expected = trained.logits(images, PREDICT_BATCH)
  if fmt == "stablehlo":
    data, platforms = _export_stablehlo(forward, (height, width, channels))
    got = run_stablehlo(deserialize_stablehlo(data, out), images)
    extra: dict[str, Any] = {"platforms": list(platforms)}
  else:
    data, extra = _export_onnx(forward, (height, width, channels))
    got = run_onnx(onnx_session(data, out), images)
  difference, agreement = _compare(got, expected)
  if fmt == "onnx" and (not difference <= ONNX_TOLERANCE or agreement < 1.0):
    raise UserError(f"the onnx export differs from JAX on {len(images)} test images: max "
                    f"|logit difference| {difference:.3g} (tolerance {ONNX_TOLERANCE:g}), "
                    f"argmax agreement {agreement:.4f}; nothing written")
  meta = _sidecar(fmt, out, data, run_dir, summary, recipe, dataset, trained, step)
  meta.update(extra)
  meta["check"] = {"split": "test", "images": len(images), "max_abs_logit_difference": difference,
                   "argmax_agreement": agreement,
                   "tolerance": ONNX_TOLERANCE if fmt == "onnx" else None}
  # The model first, then its sidecar: the sidecar's file_sha256 tells a reader
  # whether a crash between the two left an old sidecar beside a new model.
  write_bytes(out, data)
  write_json(sidecar_path(out), meta)
  return meta


def export_format(fmt: str | None, out: Path) -> str:
  """The export format: `fmt`, or the one `out`'s extension names (.onnx, .stablehlo).

  Refuses an unknown `fmt`, a `fmt` that contradicts a known extension (a
  StableHLO file named .onnx misleads whoever loads it), and no `fmt` with an
  extension that names no format.
  """
  out = Path(out)
  suffix = out.suffix.lower()
  named = FORMAT_OF_SUFFIX.get(suffix)
  if fmt is None:
    if named is None:
      raise UserError(f"cannot tell the export format from --out {out.name}; pass --format "
                      "stablehlo or --format onnx, or name the file .stablehlo or .onnx")
    return named
  if fmt not in EXPORT_FORMATS:
    raise UserError(f"unknown export format {fmt!r}; choose one of: {', '.join(EXPORT_FORMATS)}")
  if named is not None and named != fmt:
    raise UserError(f"--format {fmt} but --out {out.name} ends in {suffix}, the extension of "
                    f"{named}; name the file {out.stem}.{fmt} or pass --format {named}")
  return fmt


def _check_out(out: Path, overwrite: bool) -> None:
  """Refuses an --out that is a folder, or that (or whose sidecar) exists without overwrite."""
  if out.is_dir():
    raise UserError(f"--out {out} is a folder; give a file path")
  sidecar = sidecar_path(out)
  for path in (out, sidecar):
    if path.exists() and not overwrite:
      raise UserError(f"{path} already exists; pass --overwrite to replace it")


def finished_summary(run_dir: Path, what: str = "RUN") -> dict[str, Any]:
  """A finished run's summary; refuses a folder that is not one, before anything is opened."""
  _check_model_run(run_dir, what)
  rundir.check_finished_run(run_dir, what, model=True)
  summary = read_json(run_dir / SUMMARY_FILE, "run summary")
  if not isinstance(summary, dict) or summary.get("role") not in ("teacher", "student"):
    raise UserError(f"{run_dir / SUMMARY_FILE} does not name the run's role (teacher or student)")
  # Checked here too: restoring would otherwise create an empty checkpoints/ folder.
  if not (run_dir / CHECKPOINTS_DIR).is_dir():
    raise UserError(f"{run_dir} has no {CHECKPOINTS_DIR}/ to restore the model from")
  return summary


def _check_model_run(path: Path, what: str) -> None:
  """Refuses, saying what to give instead, the folders near a run that people give for one.

  An imported teacher (no model of distill's to restore), a folder of runs
  (names the runs in it) and a folder inside a run (names the run). Other
  folders are left to `rundir.check_finished_run`.
  """
  kind = rundir.folder_kind(path)
  if kind == rundir.IMPORTED_TEACHER:
    record = read_json(path / rundir.IMPORTED_FILE, "imported teacher record")
    source = record.get("source") if isinstance(record, dict) else None
    came_from = f" ({source})" if source else ""
    raise UserError(f"{what} {path} is an imported teacher: its model stays where it came "
                    f"from{came_from}, which distill runs to teach but does not export; run it "
                    "there, or give a student it taught (students predict and export)")
  if kind != rundir.NOT_A_RUN:
    return
  runs = sorted(child.name for child in path.iterdir()
                if child.is_dir() and rundir.folder_kind(child) in _MODEL_RUNS)
  if len(runs) == 1:
    raise UserError(f"{what} {path} is a folder of runs, not a run; give the one in it: "
                    f"{path / runs[0]}")
  if runs:
    raise UserError(f"{what} {path} is a folder of runs, not a run; give one of them: "
                    f"{first_few(runs)} "
                    f"(e.g. {path / runs[0]})")
  for parent in Path(os.path.abspath(path)).parents[:3]:
    if rundir.folder_kind(parent) in (*_MODEL_RUNS, rundir.UNFINISHED):
      shown = parent if path.is_absolute() else os.path.relpath(parent)
      raise UserError(f"{what} {path} is inside the run folder {shown}; give that folder")


def restore(run_dir: Path, summary: dict[str, Any], needs_data: str | None = None):
  """(TrainedModel, step, dataset, recipe) of a finished run; its data must be unchanged.

  needs_data: why the caller needs the run's data set (a clause for the error
  when it cannot be loaded); None: the inputs the summary records will do
  where it has them, and `dataset` is those `RecordedInputs`.
  """
  from distill.run_recipe import read_run_recipe  # noqa: PLC0415
  from distill.workflow import RecordedInputs, load_data, restore_trained  # noqa: PLC0415

  recipe = read_run_recipe(run_dir)
  recorded_inputs = RecordedInputs.of(summary)
  if needs_data is None and recorded_inputs is not None:
    trained, step = restore_trained(run_dir, recipe, summary["role"], recorded_inputs)
    _check_params(run_dir, summary, trained)
    return trained, step, recorded_inputs, recipe
  try:
    dataset = load_data(recipe)
  except UserError as e:
    why = needs_data or ("for its pixel statistics, which runs trained before they were "
                         "recorded lack: put the data back where its recipe.json says, or retrain")
    raise UserError(f"{e}: {run_dir} needs the data set it trained on {why}") from None
  recorded = summary.get("dataset_fingerprint")
  if recorded and recorded != dataset.fingerprint:
    raise UserError(f"the data set {dataset.name} has changed since {run_dir} was trained "
                    "(fingerprint differs); its pixel statistics would not be the run's")
  trained, step = restore_trained(run_dir, recipe, summary["role"], dataset)
  _check_params(run_dir, summary, trained)
  return trained, step, dataset, recipe


def _check_params(run_dir: Path, summary: dict[str, Any], trained) -> None:
  """Refuses a checkpoint whose parameters are not the ones the run's summary records."""
  recorded = summary.get("params_sha256")
  if recorded and recorded != trained.params_sha256():
    raise UserError(f"the checkpoint of {run_dir} does not hold the parameters its "
                    f"{SUMMARY_FILE} records (params_sha256 differs)")


def _forward(trained) -> Callable:
  """uint8 images [B, H, W, C] -> float32 logits, the parameters and statistics as constants."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from distill import parallel  # noqa: PLC0415
  from distill.inference import normalize  # noqa: PLC0415

  # Host copies: the exported program must not depend on this process's devices or mesh.
  params = jax.tree.map(lambda x: np.asarray(parallel.fetch(x)), trained.params)
  rest = jax.tree.map(lambda x: np.asarray(parallel.fetch(x)), trained.rest)
  mean, std = (np.asarray(s, np.float32) for s in trained.stats)
  graphdef = trained.graphdef

  def forward(images_uint8):
    logits = nnx.merge(graphdef, params, rest)(normalize(images_uint8, mean, std))
    return logits.astype(jnp.float32)

  return forward


def _test_images(dataset, count: int) -> np.ndarray:
  """The first `count` test images (uint8 [n, H, W, C]), to check the export on."""
  n = min(count, len(dataset.x_test))
  if n == 0:
    raise UserError(f"data set {dataset.name} has no test images to check the export on")
  # Indexed with an array: a streamed data set's rows read that way too.
  return np.asarray(dataset.x_test[np.arange(n)], np.uint8)


def _input_spec(image_shape: tuple[int, int, int]):
  """uint8 [batch, H, W, C] with a symbolic batch dimension."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  (batch,) = jax.export.symbolic_shape(BATCH_DIM)
  return jax.ShapeDtypeStruct((batch, *image_shape), jnp.uint8)


def _export_stablehlo(forward: Callable, image_shape) -> tuple[bytes, tuple[str, ...]]:
  """The serialised `jax.export` of `forward` and the platforms it was lowered for."""
  import jax  # noqa: PLC0415

  spec = _input_spec(image_shape)
  try:
    exported = jax.export.export(jax.jit(forward), platforms=STABLEHLO_PLATFORMS)(spec)
  except Exception:  # An op without a lowering for some platform: export for this one only.
    try:
      exported = jax.export.export(jax.jit(forward))(spec)
    except Exception as e:  # JAX raises many types for what it cannot export.
      raise UserError(f"stablehlo export failed: {one_line(e)}") from None
  try:
    return bytes(exported.serialize()), tuple(exported.platforms)
  except ImportError:
    raise UserError(_NEEDS_FLATBUFFERS) from None


def deserialize_stablehlo(data: bytes, path: Path):
  """The `jax.export.Exported` in a stablehlo export's bytes; `path` names the file in errors."""
  import jax  # noqa: PLC0415

  try:
    return jax.export.deserialize(bytearray(data))
  except ImportError:
    raise UserError(_NEEDS_FLATBUFFERS) from None
  except Exception as e:  # A damaged file raises from deep in flatbuffers.
    raise UserError(f"{path} is not a stablehlo export distill can read: {one_line(e)}") from None


def run_stablehlo(exported, images: np.ndarray) -> np.ndarray:
  """Float32 logits of uint8 images [N, H, W, C] by a deserialised stablehlo export."""
  def call(chunk):
    try:
      return np.asarray(exported.call(chunk))
    except ValueError as e:  # jax.export's own check: lowered for other platforms than this.
      raise UserError(f"cannot run this stablehlo export here (lowered for "
                      f"{', '.join(exported.platforms)}): {one_line(e)}") from None

  return _in_batches(call, images)


def _onnxruntime():
  """onnxruntime, imported only when an ONNX file is checked or run (the onnx extra)."""
  try:
    import onnxruntime  # noqa: PLC0415
  except ImportError:
    raise UserError(f"ONNX files run with onnxruntime: {_INSTALL_ONNX}") from None
  return onnxruntime


def _onnx_modules():
  """(jax2onnx, onnxruntime): exporting converts with one and checks with the other."""
  try:
    import jax2onnx  # noqa: PLC0415
  except ImportError:
    raise UserError(f"ONNX export needs jax2onnx: {_INSTALL_ONNX}") from None
  return jax2onnx, _onnxruntime()


def _export_onnx(forward: Callable, image_shape) -> tuple[bytes, dict[str, Any]]:
  """The ONNX model of `forward` (jax2onnx) and what the sidecar records about it."""
  import importlib.metadata  # noqa: PLC0415

  jax2onnx, onnxruntime = _onnx_modules()
  spec = _input_spec(image_shape)

  def convert(function):
    with warnings.catch_warnings():
      # jax2onnx's plugins read Flax variables the deprecated way: not the user's to fix.
      warnings.simplefilter("ignore", DeprecationWarning)
      return jax2onnx.to_onnx(function, [spec], model_name="distill", opset=ONNX_OPSET,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])

  # onnx_ir warns about every shape constant it does not type; none of it is actionable.
  quiet = logging.getLogger("onnx_ir")
  level = quiet.level
  quiet.setLevel(logging.ERROR)
  try:
    try:
      model = convert(forward)
    except Exception as first:  # A primitive without a jax2onnx plugin raises many types.
      # jax2onnx replaces some calls by plugins of its own, and some of those need every
      # dimension constant: its jax.image.resize (an imported ViT resizing its inputs)
      # refuses the symbolic batch. JAX's own ops for the same calls take it: convert those.
      try:
        model = convert(_as_jax_ops(forward, spec))
      except Exception:
        raise UserError(f"onnx conversion failed: {one_line(first)}") from None
    data = model.SerializeToString()
  finally:
    quiet.setLevel(level)
  opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None)
  return data, {"opset": opset, "jax2onnx_version": importlib.metadata.version("jax2onnx"),
                "onnxruntime_version": onnxruntime.__version__}


def _as_jax_ops(forward: Callable, spec) -> Callable:
  """`forward` as the primitives JAX traces it to, so jax2onnx sees no call it would replace."""
  import jax  # noqa: PLC0415

  # With jit disabled, the jitted functions inside (jax.image.resize is one) are traced
  # inline: no nested jit call is left, which jax2onnx's plugin for it cannot lower on JAX 0.12.
  with jax.disable_jit():
    traced = jax.make_jaxpr(forward)(spec)

  def forward_ops(images_uint8):
    return jax.core.eval_jaxpr(traced.jaxpr, traced.consts, images_uint8)[0]

  return forward_ops


def onnx_session(data: bytes, path: Path):
  """An onnxruntime CPU session of an ONNX export's bytes; `path` names the file in errors."""
  onnxruntime = _onnxruntime()
  options = onnxruntime.SessionOptions()
  options.log_severity_level = 3  # Errors only: it notes every unused initializer.
  try:
    return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
  except Exception as e:  # onnxruntime raises its own types.
    raise UserError(f"onnxruntime cannot load {path}: {one_line(e)}") from None


def run_onnx(session, images: np.ndarray) -> np.ndarray:
  """Float32 logits of uint8 images [N, H, W, C] by an onnxruntime session of an export."""
  name = session.get_inputs()[0].name
  return _in_batches(lambda chunk: session.run(None, {name: chunk})[0], images)


def _in_batches(call: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> np.ndarray:
  """call() over chunks of PREDICT_BATCH images, the last padded, so one shape compiles."""
  if len(images) <= PREDICT_BATCH:
    return np.asarray(call(images), np.float32)
  outputs = []
  for start in range(0, len(images), PREDICT_BATCH):
    chunk = images[start:start + PREDICT_BATCH]
    valid = len(chunk)
    if valid < PREDICT_BATCH:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], PREDICT_BATCH - valid, axis=0)])
    outputs.append(np.asarray(call(chunk), np.float32)[:valid])
  return np.concatenate(outputs)


def _compare(got: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
  """(max |difference|, share of equal argmax) of two logit arrays."""
  got, expected = np.asarray(got, np.float32), np.asarray(expected, np.float32)
  if got.shape != expected.shape:
    raise UserError(f"the export returned logits of shape {got.shape}, JAX {expected.shape}")
  difference = float(np.max(np.abs(got - expected)))
  agreement = float(np.mean(np.argmax(got, -1) == np.argmax(expected, -1)))
  return difference, agreement


def _sidecar(fmt: str, out: Path, data: bytes, run_dir: Path, summary: dict[str, Any],
             recipe: dict[str, Any], dataset, trained, step: int) -> dict[str, Any]:
  import jax  # noqa: PLC0415

  import distill  # noqa: PLC0415

  height, width, channels = dataset.image_shape
  return {
      "format": fmt,
      "file": out.name,
      "file_sha256": hashlib.sha256(data).hexdigest(),
      "input": {"name": INPUT_NAME, "shape": [BATCH_DIM, height, width, channels],
                "dtype": "uint8", "layout": "NHWC"},
      "output": {"name": OUTPUT_NAME, "shape": [BATCH_DIM, dataset.num_classes],
                 "dtype": "float32", "what": "logits"},
      "class_names": list(dataset.class_names),
      "pixel_mean": [float(x) for x in trained.stats[0]],
      "pixel_std": [float(x) for x in trained.stats[1]],
      "dataset": dataset.name,
      "dataset_fingerprint": dataset.fingerprint,
      "model": summary.get("model", recipe[summary["role"]]["model"]),
      "role": summary["role"],
      "params_sha256": trained.params_sha256(),
      "checkpoint_step": step,
      "run_dir": str(run_dir.resolve()),
      "distill_version": distill.__version__,
      "jax_version": jax.__version__,
  }

