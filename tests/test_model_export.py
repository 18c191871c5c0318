"""Exporting a trained student (StableHLO, ONNX) and its check against JAX; the TensorBoard event
files of the runs it exports."""

import hashlib
import json
import math
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_FLAGS, run_cli

from distill import model_export, rundir
from distill.run_recipe import read_run_recipe
from distill.workflow import load_data

TOLERANCE = 1e-4
FIXTURES = Path(__file__).parent / "fixtures"


def jax_test_logits(run):
  """The JAX logits of the test set, as the run computed them at the end of training."""
  with np.load(run / rundir.PREDICTIONS_FILE) as predictions:
    return predictions["test_logits"]


def _exported_logits(fmt, path, batch):
  if fmt == "stablehlo":
    import jax  # noqa: PLC0415

    return np.asarray(jax.export.deserialize(bytearray(path.read_bytes())).call(batch))
  import onnxruntime  # noqa: PLC0415

  session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
  return session.run(None, {"images": batch})[0]


@pytest.mark.parametrize("fmt", ["stablehlo", "onnx"])
def test_export_reproduces_jax_logits_for_any_batch_size(fmt, exported, runs, dataset):
  path = exported[fmt]
  expected = jax_test_logits(runs / "student")
  logits = _exported_logits(fmt, path, np.asarray(dataset.x_test))
  assert logits.dtype == np.float32 and logits.shape == expected.shape
  assert np.max(np.abs(logits - expected)) <= TOLERANCE
  assert np.array_equal(logits.argmax(-1), expected.argmax(-1))
  for batch in (1, 7):  # The batch dimension is symbolic: any size, one file.
    part = _exported_logits(fmt, path, np.asarray(dataset.x_test[:batch]))
    assert part.shape == (batch, dataset.num_classes)
    np.testing.assert_allclose(part, expected[:batch], atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("fmt", ["stablehlo", "onnx"])
def test_sidecar_describes_the_export(fmt, exported, runs, dataset):
  path = exported[fmt]
  meta = json.loads(model_export.sidecar_path(path).read_text())
  summary = json.loads((runs / "student" / "summary.json").read_text())
  assert model_export.sidecar_path(path).name == path.name + ".json"
  assert meta["format"] == fmt
  assert meta["file_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
  assert meta["class_names"] == list(dataset.class_names)
  assert meta["input"]["shape"] == ["batch", 8, 8, 1] and meta["input"]["dtype"] == "uint8"
  assert meta["output"]["shape"] == ["batch", 10] and meta["output"]["dtype"] == "float32"
  assert meta["dataset"] == "digits"
  assert meta["dataset_fingerprint"] == summary["dataset_fingerprint"]
  assert meta["params_sha256"] == summary["params_sha256"]
  assert (meta["model"], meta["role"]) == ("cnn", "student")
  assert meta["distill_version"] and meta["jax_version"] == summary["jax_version"]
  check = meta["check"]
  assert check["images"] > 0 and check["argmax_agreement"] == 1.0
  assert check["max_abs_logit_difference"] <= TOLERANCE
  if fmt == "onnx":
    assert check["tolerance"] == TOLERANCE and meta["opset"] == model_export.ONNX_OPSET
  else:
    assert "cpu" in meta["platforms"]


def one_line_error(result, *words):
  stderr = result.stderr.strip()
  assert result.exit_code == 2, result.output
  assert stderr.startswith("error:") and len(stderr.splitlines()) == 1, stderr
  assert "Traceback" not in result.output
  for word in words:
    assert word in stderr, stderr


def test_onnx_failures_are_one_line_and_write_nothing(runs, exported, monkeypatch, tmp_path):
  jax2onnx = pytest.importorskip("jax2onnx")
  out = tmp_path / "model.onnx"

  def unconvertible(*args, **kwargs):
    raise NotImplementedError("[jaxpr] No plugins registered for primitive 'frobnicate'")

  with monkeypatch.context() as patch:
    patch.setattr(jax2onnx, "to_onnx", unconvertible)
    with pytest.raises(model_export.UserError, match="onnx conversion failed.*'frobnicate'"):
      model_export.export_model(runs / "student", "onnx", out)
  with monkeypatch.context() as patch:  # onnxruntime disagreeing with JAX is caught.
    patch.setattr(model_export, "run_onnx", lambda session, images: np.zeros((len(images), 10)))
    with pytest.raises(model_export.UserError, match="differs from JAX.*nothing written"):
      model_export.export_model(runs / "student", "onnx", out)
  with monkeypatch.context() as patch:  # The extra is not installed.
    patch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(model_export.UserError, match=r"pip install 'distill\[onnx\]'"):
      model_export.export_model(runs / "student", "onnx", out)
  with monkeypatch.context() as patch:
    patch.setitem(sys.modules, "jax2onnx", None)
    with pytest.raises(model_export.UserError,
                       match=r"ONNX export needs jax2onnx: pip install 'distill\[onnx\]'"):
      model_export.export_model(runs / "student", "onnx", out)
  assert not out.exists() and not model_export.sidecar_path(out).exists()
  assert not list(tmp_path.iterdir())  # No temporary left behind either.


def test_running_an_onnx_file_asks_for_onnxruntime_alone(monkeypatch):
  # Predicting with a .onnx file needs no converter: the message names what it does need.
  monkeypatch.setitem(sys.modules, "jax2onnx", None)
  monkeypatch.setitem(sys.modules, "onnxruntime", None)
  with pytest.raises(model_export.UserError,
                     match=r"^ONNX files run with onnxruntime: pip install 'distill\[onnx\]'$"):
    model_export.onnx_session(b"", Path("student.onnx"))


def test_the_format_follows_the_out_extension_and_may_not_contradict_it(runs, tmp_path):
  assert model_export.export_format(None, Path("m.onnx")) == "onnx"
  assert model_export.export_format(None, Path("m.StableHLO")) == "stablehlo"
  assert model_export.export_format("onnx", Path("model.bin")) == "onnx"
  with pytest.raises(model_export.UserError, match="cannot tell the export format.*--format"):
    model_export.export_format(None, Path("model.bin"))
  one_line_error(run_cli("export-model", runs / "student", "--format", "stablehlo", "--out",
                          tmp_path / "weird.onnx"),
                  "--format stablehlo but --out weird.onnx ends in .onnx",
                  "name the file weird.stablehlo or pass --format onnx")
  one_line_error(run_cli("export-model", runs / "student", "--out", tmp_path / "model"),
                  "cannot tell the export format from --out model", "--format stablehlo")
  assert not list(tmp_path.iterdir())


def test_onnx_exports_a_model_that_resizes_its_inputs(tmp_path):
  """A ViT fine-tuned on 8x8 digits from a 32x32 checkpoint resizes inside the model;
  jax2onnx's own jax.image.resize cannot take the symbolic batch, JAX's ops for it can."""
  pytest.importorskip("jax2onnx")
  result = run_cli("teacher", "-r", "digits", "-w", tmp_path / "vit", "-q",
                   "--init-from", FIXTURES / "vit_timm", *TINY_FLAGS,
                   "--set", "teacher.steps=10", "--set", "teacher.eval_every=5")
  assert result.exit_code == 0, result.output
  result = run_cli("export-model", tmp_path / "vit", "--out", tmp_path / "vit.onnx")
  assert result.exit_code == 0, result.output
  meta = json.loads(model_export.sidecar_path(tmp_path / "vit.onnx").read_text())
  assert meta["input"]["shape"] == ["batch", 8, 8, 1] and meta["model"] == "vit"
  assert meta["check"]["max_abs_logit_difference"] <= TOLERANCE
  expected = jax_test_logits(tmp_path / "vit")
  digits = load_data(read_run_recipe(tmp_path / "vit")).x_test
  for batch in (1, 5):  # Any batch size, one file.
    logits = _exported_logits("onnx", tmp_path / "vit.onnx", np.asarray(digits[:batch]))
    np.testing.assert_allclose(logits, expected[:batch], atol=TOLERANCE, rtol=0)


# --------------------------------------------------------------------------
# TensorBoard.


def _records(path):
  """The records of a TFRecord file (the event file format), CRCs unchecked."""
  data = path.read_bytes()
  position = 0
  while position < len(data):
    (length,) = struct.unpack("<Q", data[position:position + 8])
    yield data[position + 12:position + 12 + length]
    position += 12 + length + 4


def _events(folder):
  """Every event of every event file in `folder`, file by file (oldest first)."""
  from tensorboardX.proto import event_pb2  # noqa: PLC0415

  files = sorted(folder.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns)
  assert files, f"no event files in {folder}"
  return [[event_pb2.Event.FromString(record) for record in _records(path)] for path in files]


def _scalars(events):
  """{tag: {step: value}} of a list of events."""
  found = {}
  for event in events:
    for value in event.summary.value:
      found.setdefault(value.tag, {})[event.step] = value.simple_value
  return found


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_training_writes_tensorboard_scalars(role, runs):
  files = _events(runs / role / rundir.TENSORBOARD_DIR)
  assert len(files) == 1
  scalars = _scalars(files[0])
  expected_tags = {"train/loss", "train/accuracy", "train/learning_rate", "train/grad_norm",
                   "val/loss", "val/accuracy", "init/loss", "init/loss_expected"}
  if role == "student":  # Taught by exported targets: agreement with the teacher is logged.
    expected_tags.add("train/teacher_agreement")
  assert expected_tags <= set(scalars), sorted(scalars)
  assert scalars["init/loss_expected"][0] == pytest.approx(math.log(10), rel=1e-5)
  assert scalars["init/loss"][0] == pytest.approx(math.log(10), abs=0.05)
  metrics = rundir.read_metrics(runs / role)
  assert sorted(scalars["train/loss"]) == [r["step"] for r in metrics] == [10, 20]
  for record in metrics:
    assert scalars["train/loss"][record["step"]] == pytest.approx(record["loss"], rel=1e-6)
    assert scalars["val/accuracy"][record["step"]] == pytest.approx(record["val_accuracy"])


def test_a_resumed_run_appends_an_event_file_that_purges_past_its_checkpoint(tmp_path):
  log = rundir.TensorBoardLog(tmp_path / "tb")
  log.start(after_step=None)
  log.init_loss(2.3, 2.302)
  for step in (10, 20):
    log.append({"step": step, "loss": 1.0 / step, "val_accuracy": 0.5})
  log.close()
  log.start(after_step=10)  # Resumed from the checkpoint at step 10.
  log.append({"step": 20, "loss": 0.25})
  log.close()
  first, second = _events(tmp_path / "tb")
  assert _scalars(first)["train/loss"] == {10: pytest.approx(0.1), 20: pytest.approx(0.05)}
  assert _scalars(first)["val/accuracy"] == {10: 0.5, 20: 0.5}
  purges = [e.step for e in second if e.HasField("session_log") and e.session_log.status == 1]
  assert purges == [11]  # TensorBoard hides the first file's step 20: the resumed run redid it.
  assert _scalars(second) == {"train/loss": {20: 0.25}}
  log.start(after_step=None)  # A new run starts over.
  log.close()
  assert len(_events(tmp_path / "tb")) == 1


def test_event_files_are_written_without_importing_torch(tmp_path):
  """tensorboardX imports torch when it can; a run's log must not pay for that (seconds)."""
  marker = tmp_path / "torch-was-imported"
  fake = tmp_path / "site" / "torch"
  fake.mkdir(parents=True)
  (fake / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
  code = textwrap.dedent(f"""
      import sys
      from pathlib import Path
      from distill import rundir
      log = rundir.TensorBoardLog(Path({str(tmp_path / 'tb')!r}))
      log.start(after_step=None)
      log.append({{"step": 1, "loss": 0.5}})
      log.close()
      assert "torch" not in sys.modules
      import torch  # still importable afterwards
  """)
  env = {**os.environ, "PYTHONPATH": str(fake.parent)}
  result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert _scalars(_events(tmp_path / "tb")[0]) == {"train/loss": {1: 0.5}}
  assert marker.exists()  # only from the explicit import at the end


def test_stablehlo_without_flatbuffers_says_so_rather_than_blaming_the_file(
    runs, exported, monkeypatch, tmp_path):
  # jax reads and writes the file with flatbuffers, which it imports only then.
  data = exported["stablehlo"].read_bytes()
  with pytest.raises(model_export.UserError, match="is not a stablehlo export distill can read"):
    model_export.deserialize_stablehlo(data[: len(data) // 2], Path("cut.stablehlo"))
  monkeypatch.setitem(sys.modules, "flatbuffers", None)
  monkeypatch.delitem(sys.modules, "jax._src.export.serialization", raising=False)
  needs = "^StableHLO files are read and written with flatbuffers: pip install flatbuffers$"
  with pytest.raises(model_export.UserError, match=needs):
    model_export.deserialize_stablehlo(data, Path("model.stablehlo"))
  with pytest.raises(model_export.UserError, match=needs):
    model_export.export_model(runs / "student", "stablehlo", tmp_path / "model.stablehlo")
  assert not list(tmp_path.iterdir())
