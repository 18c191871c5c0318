"""Exporting a trained student (StableHLO, ONNX), predicting from files, TensorBoard event files."""

import hashlib
import json
import math
import os
import re
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_FLAGS, copy_runs, run_cli
from PIL import Image

from distill import rundir, serving
from distill.run_recipe import read_run_recipe
from distill.workflow import load_data

TOLERANCE = 1e-4
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_digits_runs):
  """Copies of the shared TINY digits teacher and student (CNN) runs."""
  return copy_runs(tiny_digits_runs, tmp_path_factory.mktemp("serving"), teacher="teacher",
                   student="student")


@pytest.fixture(scope="module")
def dataset(runs):
  """The digits data set the runs were trained on."""
  return load_data(read_run_recipe(runs / "student"))


@pytest.fixture(scope="module")
def exported(runs):
  """The student exported to both formats through the CLI: {format: model path}."""
  paths = {}
  for fmt, name in (("stablehlo", "student.stablehlo"), ("onnx", "student.onnx")):
    if fmt == "onnx":
      pytest.importorskip("jax2onnx")
      pytest.importorskip("onnxruntime")
    out = runs / "exports" / name
    # No --format: the extension names it.
    result = run_cli("export-model", runs / "student", "--out", out)
    assert result.exit_code == 0, result.output
    assert f"({fmt}, cnn student)" in result.stdout
    paths[fmt] = out
  return paths


@pytest.fixture(scope="module")
def images(tmp_path_factory, dataset):
  """Test images as a PNG (resized up, so it must be resized back), a .npy and a .npz."""
  folder = tmp_path_factory.mktemp("images")
  Image.fromarray(dataset.x_test[0, :, :, 0]).resize((32, 32)).save(folder / "digit.png")
  np.save(folder / "three.npy", dataset.x_test[1:4])
  np.savez(folder / "one.npz", images=dataset.x_test[4])
  return [folder / "digit.png", folder / "three.npy", folder / "one.npz"]


def _jax_test_logits(run):
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
  expected = _jax_test_logits(runs / "student")
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
  meta = json.loads(serving.sidecar_path(path).read_text())
  summary = json.loads((runs / "student" / "summary.json").read_text())
  assert serving.sidecar_path(path).name == path.name + ".json"
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
    assert check["tolerance"] == TOLERANCE and meta["opset"] == serving.ONNX_OPSET
  else:
    assert "cpu" in meta["platforms"]


def _lines(result):
  assert result.exit_code == 0, result.output
  return result.stdout.strip().splitlines()


def test_predict_prints_top_k_from_the_run_and_both_exports(runs, exported, images, dataset):
  sources = [runs / "student", *exported.values()]
  tops = []
  for source in sources:
    lines = _lines(run_cli("predict", source, "--images", *images, "--top-k", "3"))
    assert len(lines) == 5, lines  # One PNG, three from the .npy, one from the .npz.
    assert lines[0].startswith(f"{images[0]}: ") and lines[1].startswith(f"{images[1]}[0]: ")
    for line in lines:
      entries = line.rsplit(": ", 1)[1].split(", ")
      assert len(entries) == 3
      assert all(entry.rsplit(" ", 1)[0] in dataset.class_names for entry in entries)
      assert all(re.fullmatch(r"\d{1,3}\.\d\d%", entry.rsplit(" ", 1)[1]) for entry in entries)
    result = json.loads(_lines(run_cli("predict", source, "--images", *images, "-k", "2",
                                       "--json"))[0])
    assert len(result["predictions"]) == 5
    tops.append([p["top"][0]["index"] for p in result["predictions"]])
    for prediction in result["predictions"]:
      probabilities = [entry["probability"] for entry in prediction["top"]]
      assert len(probabilities) == 2 and probabilities == sorted(probabilities, reverse=True)
  # The .npy/.npz images are used as they are: every source agrees with the run's test logits.
  expected = _jax_test_logits(runs / "student")[1:5].argmax(-1).tolist()
  for top in tops:
    assert top[1:] == expected and top == tops[0]


def test_predict_from_an_export_needs_only_the_file_and_its_sidecar(exported, images, tmp_path):
  alone = tmp_path / "elsewhere" / "model.stablehlo"
  alone.parent.mkdir()
  alone.write_bytes(exported["stablehlo"].read_bytes())
  serving.sidecar_path(alone).write_text(serving.sidecar_path(exported["stablehlo"]).read_text())
  assert len(_lines(run_cli("predict", alone, "--images", images[1]))) == 3


def _data_moved(run, missing):
  """`run` as it reads on a machine without its data: the recipe names a file not there."""
  recipe = json.loads((run / "recipe.json").read_text())
  recipe["data"].update(dataset="npz", data_dir=str(missing))
  (run / "recipe.json").write_text(json.dumps(recipe))
  return run


def test_a_run_folder_predicts_without_the_data_it_trained_on(runs, images, tmp_path):
  """Its summary records what the model takes in (shape, classes, pixel statistics), so a run
  folder copied to another machine still predicts; export-model, which checks the export on
  the run's test images, says why it needs them."""
  predict = ["--images", *images, "--json"]
  here = json.loads(_lines(run_cli("predict", runs / "student", *predict))[0])["predictions"]
  moved = _data_moved(copy_runs(runs, tmp_path, moved="student") / "moved", tmp_path / "gone.npz")
  assert json.loads(_lines(run_cli("predict", moved, *predict))[0])["predictions"] == here
  _one_line_error(run_cli("export-model", moved, "--format", "stablehlo", "--out",
                          tmp_path / "m.stablehlo"),
                  "gone.npz", "needs the data set it trained on to check the export against JAX",
                  "put the data back where its recipe.json says")
  # A run from before summaries recorded its inputs predicts from its data set, or says why
  # it needs it.
  old = copy_runs(runs, tmp_path, old="student") / "old"
  summary = json.loads((old / "summary.json").read_text())
  del summary["inputs"]
  (old / "summary.json").write_text(json.dumps(summary))
  assert json.loads(_lines(run_cli("predict", old, *predict))[0])["predictions"] == here
  _one_line_error(run_cli("predict", _data_moved(old, tmp_path / "gone.npz"), *predict),
                  "needs the data set it trained on for its pixel statistics")


def _one_line_error(result, *words):
  stderr = result.stderr.strip()
  assert result.exit_code == 2, result.output
  assert stderr.startswith("error:") and len(stderr.splitlines()) == 1, stderr
  assert "Traceback" not in result.output
  for word in words:
    assert word in stderr, stderr


def _snapshot(folder):
  return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_bad_inputs_are_one_line_and_write_nothing(runs, exported, images, tmp_path):
  unfinished = copy_runs(runs, tmp_path, unfinished="student") / "unfinished"
  (unfinished / "summary.json").unlink()
  short = copy_runs(runs, tmp_path, short="student") / "short"
  recipe = json.loads((short / "recipe.json").read_text())
  recipe["student"]["steps"] = 30
  (short / "recipe.json").write_text(json.dumps(recipe))
  plain = tmp_path / "plain"
  plain.mkdir()
  not_an_image = tmp_path / "notes.png"
  not_an_image.write_text("not a picture")
  out = tmp_path / "model.stablehlo"
  before = _snapshot(runs / "exports")
  model = exported["stablehlo"]
  _one_line_error(run_cli("export-model", unfinished, "--out", out),
                  "an unfinished run (no summary.json)", "re-run its command")
  _one_line_error(run_cli("export-model", short, "--format", "stablehlo", "--out", out),
                  "stopped at step 20 of 30")
  _one_line_error(run_cli("export-model", plain, "--format", "stablehlo", "--out", out),
                  "an empty folder")
  _one_line_error(run_cli("export-model", runs / "student", "--format", "tflite", "--out",
                          tmp_path / "model.bin"), "unknown export format", "stablehlo")
  _one_line_error(run_cli("export-model", runs / "student", "--out", model),
                  "already exists", "--overwrite")
  _one_line_error(run_cli("predict", model, "--images", tmp_path / "missing.png"),
                  "not found", "missing.png")
  _one_line_error(run_cli("predict", model, "--images", not_an_image), "not an image")
  _one_line_error(run_cli("predict", unfinished, "--images", images[0]), "an unfinished run")
  _one_line_error(run_cli("predict", plain, "--images", images[0]), "an empty folder")
  _one_line_error(run_cli("predict", model, "--images", images[0], "--top-k", "0"), "--top-k")
  assert not out.exists() and not serving.sidecar_path(out).exists()
  assert not (plain / "checkpoints").exists()
  assert _snapshot(runs / "exports") == before


def test_onnx_failures_are_one_line_and_write_nothing(runs, exported, monkeypatch, tmp_path):
  jax2onnx = pytest.importorskip("jax2onnx")
  out = tmp_path / "model.onnx"

  def unconvertible(*args, **kwargs):
    raise NotImplementedError("[jaxpr] No plugins registered for primitive 'frobnicate'")

  with monkeypatch.context() as patch:
    patch.setattr(jax2onnx, "to_onnx", unconvertible)
    with pytest.raises(serving.UserError, match="onnx conversion failed.*'frobnicate'"):
      serving.export_model(runs / "student", "onnx", out)
  with monkeypatch.context() as patch:  # onnxruntime disagreeing with JAX is caught.
    patch.setattr(serving, "_run_onnx", lambda session, images: np.zeros((len(images), 10)))
    with pytest.raises(serving.UserError, match="differs from JAX.*nothing written"):
      serving.export_model(runs / "student", "onnx", out)
  with monkeypatch.context() as patch:  # The extra is not installed.
    patch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(serving.UserError, match=r"pip install 'distill\[onnx\]'"):
      serving.export_model(runs / "student", "onnx", out)
  assert not out.exists() and not serving.sidecar_path(out).exists()
  assert not list(tmp_path.iterdir())  # No temporary left behind either.


def test_images_of_the_wrong_shape_or_type_are_refused(tmp_path):
  np.save(tmp_path / "floats.npy", np.zeros((2, 8, 8, 1), np.float32))
  np.save(tmp_path / "wide.npy", np.zeros((2, 9, 8, 1), np.uint8))
  np.savez(tmp_path / "two.npz", a=np.zeros((8, 8), np.uint8), b=np.zeros((8, 8), np.uint8))
  shape = (8, 8, 1)
  for name, words in (("floats.npy", "uint8"), ("wide.npy", "shape"), ("two.npz", "'images'")):
    with pytest.raises(serving.UserError, match=words):
      serving.load_images([tmp_path / name], shape)
  np.save(tmp_path / "gray.npy", np.zeros((3, 8, 8), np.uint8))
  names, batch = serving.load_images([tmp_path / "gray.npy"], shape)
  assert batch.shape == (3, 8, 8, 1) and len(names) == 3


def _sideways_picture(path):
  """A 16-wide, 8-high PNG, white on its left half, stored turned a quarter: EXIF orientation 6
  (shown turned 90 degrees clockwise, so upright it is 8 wide and 16 high, white on top)."""
  pixels = np.zeros((8, 16), np.uint8)
  pixels[:, :8] = 255
  exif = Image.Exif()
  exif[0x0112] = 6  # Orientation
  Image.fromarray(pixels).save(path, exif=exif)


def test_pictures_are_predicted_as_an_image_folder_trains_on_them(tmp_path):
  """Upright by their EXIF orientation, then scaled to cover the model's size and
  center-cropped: not squashed, not sideways. Both readers give the same pixels."""
  from distill.data.stream import ImageFolderSource  # noqa: PLC0415

  (tmp_path / "folder" / "only").mkdir(parents=True)
  _sideways_picture(tmp_path / "folder" / "only" / "sideways.png")
  _, batch = serving.load_images([tmp_path / "folder" / "only" / "sideways.png"], (8, 8, 1))
  picture = batch[0, :, :, 0]
  assert (picture[:4] == 255).all() and (picture[4:] == 0).all(), picture
  trained_on, _ = ImageFolderSource(tmp_path / "folder", 8, grayscale=True).read(np.arange(1))
  np.testing.assert_array_equal(trained_on[0], batch[0])


def test_the_format_follows_the_out_extension_and_may_not_contradict_it(runs, tmp_path):
  assert serving.export_format(None, Path("m.onnx")) == "onnx"
  assert serving.export_format(None, Path("m.StableHLO")) == "stablehlo"
  assert serving.export_format("onnx", Path("model.bin")) == "onnx"
  with pytest.raises(serving.UserError, match="cannot tell the export format.*--format"):
    serving.export_format(None, Path("model.bin"))
  _one_line_error(run_cli("export-model", runs / "student", "--format", "stablehlo", "--out",
                          tmp_path / "weird.onnx"),
                  "--format stablehlo but --out weird.onnx ends in .onnx",
                  "name the file weird.stablehlo or pass --format onnx")
  _one_line_error(run_cli("export-model", runs / "student", "--out", tmp_path / "model"),
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
  meta = json.loads(serving.sidecar_path(tmp_path / "vit.onnx").read_text())
  assert meta["input"]["shape"] == ["batch", 8, 8, 1] and meta["model"] == "vit"
  assert meta["check"]["max_abs_logit_difference"] <= TOLERANCE
  expected = _jax_test_logits(tmp_path / "vit")
  digits = load_data(read_run_recipe(tmp_path / "vit")).x_test
  for batch in (1, 5):  # Any batch size, one file.
    logits = _exported_logits("onnx", tmp_path / "vit.onnx", np.asarray(digits[:batch]))
    np.testing.assert_allclose(logits, expected[:batch], atol=TOLERANCE, rtol=0)


def test_16_bit_pictures_are_scaled_to_8_bits_not_clipped(tmp_path):
  """Pillow's convert('L') clips 16-bit pixels at 255: a 16-bit digit would read all white."""
  pixels = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)
  Image.fromarray(pixels).save(tmp_path / "g8.png")
  Image.fromarray(pixels.astype(np.uint16) * 257).save(tmp_path / "g16.png")  # mode I;16
  Image.fromarray(pixels.astype(np.int32) * 257).save(tmp_path / "g32.tif")  # mode I
  for name, modes in (("g16.png", ("I;16", "I")), ("g32.tif", ("I",))):
    with Image.open(tmp_path / name) as image:  # Older Pillows open 16-bit PNGs as mode I.
      assert image.mode in modes, image.mode
  for shape in ((8, 8, 1), (8, 8, 3)):
    _, batch = serving.load_images([tmp_path / n for n in ("g8.png", "g16.png", "g32.tif")],
                                   shape)
    for image in batch:
      np.testing.assert_array_equal(image, np.repeat(pixels[..., None], shape[-1], -1))
  Image.fromarray(np.full((8, 8), 70000, np.int32)).save(tmp_path / "wide.tif")
  with pytest.raises(serving.UserError, match="wide.tif.*beyond 16 bits"):
    serving.load_images([tmp_path / "wide.tif"], (8, 8, 1))


def test_help_says_what_each_command_reads():
  predict_help = " ".join(run_cli("predict", "--help").stdout.split())
  assert "loads its data set" not in predict_help
  assert "summary.json records (no data)" in predict_help
  assert "Give the model first" in predict_help
  export_help = " ".join(run_cli("export-model", "--help").stdout.split())
  assert "must be where the run's recipe.json says" in export_help
  assert "Default: from OUT's extension" in export_help


def test_a_model_given_among_the_images_is_named_to_go_first(runs, exported, images):
  model = exported["stablehlo"]
  # Click takes one value per --images: the second image becomes the source.
  for source in (model, runs / "student"):
    _one_line_error(run_cli("predict", "--images", images[0], images[1], source),
                    f"{images[1]} is no model but {source} is; give the model first: "
                    f"distill predict {source} --images {images[0]} {images[1]}")
  _one_line_error(run_cli("predict", "--images", images[0], images[1], images[2], model),
                  f"distill predict {model} --images {images[0]} {images[1]} {images[2]}")


def test_near_misses_for_the_model_say_what_to_give(runs, exported, images, tmp_path):
  model = exported["onnx" if "onnx" in exported else "stablehlo"]
  _one_line_error(run_cli("predict", serving.sidecar_path(model), "--images", images[0]),
                  f"is the sidecar of {model}; give the model file {model}")
  _one_line_error(run_cli("predict", runs, "--images", images[0]),
                  f"RUN {runs} is a folder of runs", "student, teacher",
                  f"(e.g. {runs / 'student'})")
  _one_line_error(run_cli("predict", runs / "student" / "checkpoints", "--images", images[0]),
                  f"is inside the run folder {runs / 'student'}; give that folder")
  imported = copy_runs(runs, tmp_path, imported="teacher") / "imported"
  (imported / rundir.IMPORTED_FILE).write_text(json.dumps(
      {"kind": "keras", "source": "/models/net.keras"}))
  for command in (["predict", imported, "--images", images[0]],
                  ["export-model", imported, "--out", tmp_path / "m.stablehlo"]):
    _one_line_error(run_cli(*command), "is an imported teacher",
                    "run it where it came from (/models/net.keras)",
                    "give a student it taught (students predict and export)")


def test_array_files_get_the_numpy_fix_an_npz_data_set_gets(tmp_path):
  np.save(tmp_path / "unit.npy", np.full((2, 8, 8, 1), 0.5, np.float32))
  np.save(tmp_path / "nchw.npy", np.zeros((2, 3, 32, 32), np.uint8))
  np.save(tmp_path / "nchw_floats.npy", np.zeros((2, 3, 32, 32), np.float32))
  for name, shape, words in (
      ("unit.npy", (8, 8, 1), "(x * 255).round().astype(np.uint8)"),
      ("nchw.npy", (32, 32, 3), "x.transpose(0, 2, 3, 1)"),
      ("nchw_floats.npy", (32, 32, 3), "x.transpose(0, 2, 3, 1)")):
    with pytest.raises(serving.UserError, match=None) as error:
      serving.load_images([tmp_path / name], shape)
    assert words in str(error.value) and name in str(error.value), error.value


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
