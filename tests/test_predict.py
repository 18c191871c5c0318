"""Predicting image classes with a run folder or an exported model file (`distill predict`)."""

import json
import re
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_runs, run_cli
from PIL import Image
from test_model_export import jax_test_logits, one_line_error

from distill import rundir
from distill.errors import UserError
from distill.model_export import sidecar_path
from distill.predict import load_images, predict_logits, read_images


@pytest.fixture(scope="module")
def images(tmp_path_factory, dataset):
  """Test images as a PNG (resized up, so it must be resized back), a .npy and a .npz."""
  folder = tmp_path_factory.mktemp("images")
  Image.fromarray(dataset.x_test[0, :, :, 0]).resize((32, 32)).save(folder / "digit.png")
  np.save(folder / "three.npy", dataset.x_test[1:4])
  np.savez(folder / "one.npz", images=dataset.x_test[4])
  return [folder / "digit.png", folder / "three.npy", folder / "one.npz"]


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
  expected = jax_test_logits(runs / "student")[1:5].argmax(-1).tolist()
  for top in tops:
    assert top[1:] == expected and top == tops[0]


def test_predict_from_an_export_needs_only_the_file_and_its_sidecar(exported, images, tmp_path):
  alone = tmp_path / "elsewhere" / "model.stablehlo"
  alone.parent.mkdir()
  alone.write_bytes(exported["stablehlo"].read_bytes())
  sidecar_path(alone).write_text(sidecar_path(exported["stablehlo"]).read_text())
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
  one_line_error(run_cli("export-model", moved, "--format", "stablehlo", "--out",
                          tmp_path / "m.stablehlo"),
                  "gone.npz", "needs the data set it trained on to check the export against JAX",
                  "put the data back where its recipe.json says (`distill predict` needs no "
                  "data)")
  # A run from before summaries recorded its inputs predicts from its data set, or says why
  # it needs it.
  old = copy_runs(runs, tmp_path, old="student") / "old"
  summary = json.loads((old / "summary.json").read_text())
  del summary["inputs"]
  (old / "summary.json").write_text(json.dumps(summary))
  assert json.loads(_lines(run_cli("predict", old, *predict))[0])["predictions"] == here
  one_line_error(run_cli("predict", _data_moved(old, tmp_path / "gone.npz"), *predict),
                  "needs the data set it trained on for its pixel statistics")
  result = run_cli("export-model", old, "--format", "stablehlo", "--out", tmp_path / "o.stablehlo")
  one_line_error(result, "put the data back where its recipe.json says")
  assert "predict` needs no data" not in result.stderr  # it does, as the line above says


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
  one_line_error(run_cli("export-model", unfinished, "--out", out),
                  "an unfinished run (no summary.json)", "re-run its command")
  # The run is what is wrong, not an --out already there: said first, whatever --overwrite says.
  one_line_error(run_cli("export-model", unfinished, "--out", model),
                  "an unfinished run (no summary.json)")
  one_line_error(run_cli("export-model", short, "--format", "stablehlo", "--out", out),
                  "stopped at step 20 of 30")
  one_line_error(run_cli("export-model", plain, "--format", "stablehlo", "--out", out),
                  "an empty folder")
  one_line_error(run_cli("export-model", runs / "student", "--format", "tflite", "--out",
                          tmp_path / "model.bin"), "unknown export format", "stablehlo")
  one_line_error(run_cli("export-model", runs / "student", "--out", model),
                  "already exists", "--overwrite")
  one_line_error(run_cli("predict", model, "--images", tmp_path / "missing.png"),
                  "not found", "missing.png")
  one_line_error(run_cli("predict", model, "--images", not_an_image), "not an image")
  one_line_error(run_cli("predict", unfinished, "--images", images[0]), "an unfinished run")
  one_line_error(run_cli("predict", plain, "--images", images[0]), "an empty folder")
  one_line_error(run_cli("predict", model, "--images", images[0], "--top-k", "0"), "--top-k")
  assert not out.exists() and not sidecar_path(out).exists()
  assert not (plain / "checkpoints").exists()
  assert _snapshot(runs / "exports") == before


def test_images_of_the_wrong_shape_or_type_are_refused(tmp_path):
  np.save(tmp_path / "floats.npy", np.zeros((2, 8, 8, 1), np.float32))
  np.save(tmp_path / "wide.npy", np.zeros((2, 9, 8, 1), np.uint8))
  np.savez(tmp_path / "two.npz", a=np.zeros((8, 8), np.uint8), b=np.zeros((8, 8), np.uint8))
  shape = (8, 8, 1)
  for name, words in (("floats.npy", "uint8"), ("wide.npy", "shape"), ("two.npz", "'images'")):
    with pytest.raises(UserError, match=words):
      load_images([tmp_path / name], shape)
  np.save(tmp_path / "gray.npy", np.zeros((3, 8, 8), np.uint8))
  names, batch = load_images([tmp_path / "gray.npy"], shape)
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
  _, batch = load_images([tmp_path / "folder" / "only" / "sideways.png"], (8, 8, 1))
  picture = batch[0, :, :, 0]
  assert (picture[:4] == 255).all() and (picture[4:] == 0).all(), picture
  trained_on, _ = ImageFolderSource(tmp_path / "folder", 8, grayscale=True).read(np.arange(1))
  np.testing.assert_array_equal(trained_on[0], batch[0])


def _picture(path, value):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)


def test_class_folders_match_the_models_classes_in_nfd_and_nfc(tmp_path):
  # A folder copied from macOS names its class in NFD; the model's class was typed in NFC.
  nfc, nfd = (unicodedata.normalize(form, "café ☕ square") for form in ("NFC", "NFD"))
  _picture(tmp_path / "photos" / nfd / "a.png", 10)
  _picture(tmp_path / "photos" / nfc / "b.png", 20)
  _picture(tmp_path / "photos" / "red circle" / "c.png", 30)
  for model_classes in ([nfc, "red circle"], ["red circle", nfd]):  # either spelling, any order
    read = read_images([tmp_path / "photos"], (8, 8, 1), model_classes)
    cafe = model_classes.index(nfc if nfc in model_classes else nfd)
    assert read.labels.tolist() == [cafe, cafe, 1 - cafe]
    assert read.images[:, 0, 0, 0].tolist() == [10, 20, 30]
    assert [Path(name).parent.name for name in read.names] == [nfd, nfc, "red circle"]


def test_class_folders_name_classes_no_folder_can_be_named_by_sign_case_or_number(tmp_path):
  # No folder can be named 'T-shirt/top' (Fashion-MNIST's class 0): such photos were unscorable.
  model_classes = ["T-shirt/top", "Trouser", "Ankle boot"]
  _picture(tmp_path / "photos" / "t-shirt_top" / "a.png", 10)
  _picture(tmp_path / "photos" / "ANKLE BOOT" / "b.png", 20)
  _picture(tmp_path / "photos" / "1" / "c.png", 30)
  read = read_images([tmp_path / "photos"], (8, 8, 1), model_classes)
  by_value = dict(zip(read.images[:, 0, 0, 0].tolist(), read.labels.tolist(), strict=True))
  assert by_value == {10: 0, 20: 2, 30: 1}
  # Where the classes are numbers, a number is a name ('1' is the first class), not a position.
  read = read_images([tmp_path / "photos" / "1"], (8, 8, 1), ["1", "2"])
  assert read.labels.tolist() == [-1]  # a folder of pictures, unlabelled
  (tmp_path / "numbered" / "1").mkdir(parents=True)
  (tmp_path / "photos" / "1" / "c.png").rename(tmp_path / "numbered" / "1" / "c.png")
  assert read_images([tmp_path / "numbered"], (8, 8, 1), ["1", "2"]).labels.tolist() == [0]
  _picture(tmp_path / "photos" / "3" / "d.png", 40)
  with pytest.raises(UserError, match=r"holds folders '3', which are not the model's "
                                      r"classes .*number \(0 to 2\)"):
    read_images([tmp_path / "photos"], (8, 8, 1), model_classes)


def test_pictures_beside_class_folders_are_refused_in_one_line(tmp_path):
  _picture(tmp_path / "photos" / "red circle" / "c.png", 30)
  _picture(tmp_path / "photos" / "Photo 1.JPG", 40)
  with pytest.raises(UserError) as refused:
    read_images([tmp_path / "photos"], (8, 8, 1), ["red circle", "blue square"])
  assert str(refused.value) == (f"{tmp_path / 'photos'} holds image files beside its class "
                                f"folders (Photo 1.JPG): move each into its class folder, or "
                                f"out of {tmp_path / 'photos'}")


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
    _, batch = load_images([tmp_path / n for n in ("g8.png", "g16.png", "g32.tif")],
                                   shape)
    for image in batch:
      np.testing.assert_array_equal(image, np.repeat(pixels[..., None], shape[-1], -1))
  Image.fromarray(np.full((8, 8), 70000, np.int32)).save(tmp_path / "wide.tif")
  with pytest.raises(UserError, match="wide.tif.*beyond 16 bits"):
    load_images([tmp_path / "wide.tif"], (8, 8, 1))


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
    one_line_error(run_cli("predict", "--images", images[0], images[1], source),
                    f"{images[1]} is no model but {source} is; give the model first: "
                    f"distill predict {source} --images {images[0]} {images[1]}")
  one_line_error(run_cli("predict", "--images", images[0], images[1], images[2], model),
                  f"distill predict {model} --images {images[0]} {images[1]} {images[2]}")


def test_near_misses_for_the_model_say_what_to_give(runs, exported, images, tmp_path):
  model = exported["onnx" if "onnx" in exported else "stablehlo"]
  one_line_error(run_cli("predict", sidecar_path(model), "--images", images[0]),
                  f"is the sidecar of {model}; give the model file {model}")
  one_line_error(run_cli("predict", runs, "--images", images[0]),
                  f"RUN {runs} is a folder of runs", "student, teacher",
                  f"(e.g. {runs / 'student'})")
  one_line_error(run_cli("predict", runs / "student" / "checkpoints", "--images", images[0]),
                  f"is inside the run folder {runs / 'student'}; give that folder")
  imported = copy_runs(runs, tmp_path, imported="teacher") / "imported"
  (imported / rundir.IMPORTED_FILE).write_text(json.dumps(
      {"kind": "keras", "source": "/models/net.keras"}))
  for command in (["predict", imported, "--images", images[0]],
                  ["export-model", imported, "--out", tmp_path / "m.stablehlo"]):
    one_line_error(run_cli(*command), "is an imported teacher",
                    "where it came from (/models/net.keras), which distill runs to teach but "
                    "does not export; run it there",
                    "give a student it taught (students predict and export)")


def test_array_files_get_the_numpy_fix_an_npz_data_set_gets(tmp_path):
  np.save(tmp_path / "unit.npy", np.full((2, 8, 8, 1), 0.5, np.float32))
  np.save(tmp_path / "nchw.npy", np.zeros((2, 3, 32, 32), np.uint8))
  np.save(tmp_path / "nchw_floats.npy", np.zeros((2, 3, 32, 32), np.float32))
  for name, shape, words in (
      ("unit.npy", (8, 8, 1), "(x * 255).round().astype(np.uint8)"),
      ("nchw.npy", (32, 32, 3), "x.transpose(0, 2, 3, 1)"),
      ("nchw_floats.npy", (32, 32, 3), "x.transpose(0, 2, 3, 1)")):
    with pytest.raises(UserError, match=None) as error:
      load_images([tmp_path / name], shape)
    assert words in str(error.value) and name in str(error.value), error.value


def _expected_accuracy(runs, dataset):
  correct = int((jax_test_logits(runs / "student").argmax(-1) == dataset.y_test).sum())
  return correct, len(dataset.y_test)


def test_an_npz_data_set_file_is_predicted_as_it_is_with_its_accuracy(runs, exported, dataset,
                                                                      tmp_path):
  """The files `--dataset npz` trains on (x, y, optional x_test, y_test, class_names; keras'
  x_train, y_train) are predicted without renaming: the held-out x_test where there is one,
  scored on its labels, and a line on stderr says which key was read."""
  x_test, y_test = dataset.x_test, dataset.y_test
  correct, count = _expected_accuracy(runs, dataset)
  files = {
      # Grayscale as [N, H, W], as the npz data set takes it.
      "xy.npz": ({"x": x_test[..., 0], "y": y_test}, "'x' with labels 'y'",
                 "no 'x_test'; a model trained on this file trained on most of them"),
      "split.npz": ({"x": dataset.x_train, "y": dataset.y_train, "x_test": x_test,
                     "y_test": y_test, "class_names": np.array(dataset.class_names)},
                    "'x_test' with labels 'y_test'", "held-out test split, never trained on; "
                    "not 'x'"),
      "keras.npz": ({"x_train": dataset.x_train, "y_train": dataset.y_train, "x_test": x_test,
                     "y_test": y_test}, "'x_test' with labels 'y_test'", "not 'x_train'"),
  }
  for name, (arrays, key, why) in files.items():
    np.savez(tmp_path / name, **arrays)
    for source in (runs / "student", exported["stablehlo"]):
      result = run_cli("predict", source, "--images", tmp_path / name, "-k", "1")
      lines = _lines(result)
      assert len(lines) == count + 1, lines[-3:]
      assert lines[-1] == (f"accuracy {100 * correct / count:.2f}% ({correct} of {count}) on "
                           f"{tmp_path / name}'s {key.rsplit(' ', 1)[1][1:-1]}"), lines[-1]
      note = result.stderr.strip()
      assert note.startswith(f"{tmp_path / name}: predicting key {key} (") and why in note
      assert len(note.splitlines()) == 1, note
  as_json = run_cli("predict", exported["stablehlo"], "--images", tmp_path / "split.npz", "--json")
  result = json.loads(_lines(as_json)[0])
  assert result["accuracy"] == {"top1": correct / count, "correct": correct, "labelled": count,
                                "unlabelled": 0}
  assert result["inputs"] == [{"file": str(tmp_path / "split.npz"), "images": "x_test",
                               "labels": "y_test", "not_read": ["x"]}]
  first = result["predictions"][0]
  assert first["label"] == {"class": dataset.class_names[y_test[0]], "index": int(y_test[0])}


def test_images_with_labels_beside_unlabelled_pictures_score_only_the_labelled(
    exported, images, dataset):
  labelled = images[2].with_name("labelled.npz")
  np.savez(labelled, images=dataset.x_test[:4], labels=dataset.y_test[:4])
  result = run_cli("predict", exported["stablehlo"], "--images", images[0], labelled)
  lines = _lines(result)
  assert len(lines) == 6 and result.stderr == ""  # 'images' is what it says: no note.
  assert lines[-1].startswith("accuracy ") and lines[-1].endswith(
      f"of 4) on {labelled}'s labels; 1 image(s) without labels not counted"), lines[-1]
  # Without labels, no accuracy line and none in the JSON.
  result = json.loads(_lines(run_cli("predict", exported["stablehlo"], "--images", *images,
                                     "--json"))[0])
  assert result["accuracy"] is None
  assert all("label" not in prediction for prediction in result["predictions"])


def test_labels_that_cannot_score_the_model_are_one_line_errors(exported, dataset, tmp_path):
  x, y = dataset.x_test[:3], dataset.y_test[:3]
  names = np.array(dataset.class_names)
  cases = {
      "short.npz": ({"images": x, "labels": y[:2]},
                    ("short.npz: key 'labels' has 2 labels but key 'images' has 3 images",)),
      "range.npz": ({"x_test": x, "y_test": np.array([0, 1, len(names)]), "x": x, "y": y},
                    ("range.npz: key 'y_test' has label 10", "outside [0, 10)")),
      "floats.npz": ({"x": x, "y": y.astype(np.float32)}, ("key 'y' must hold integer labels",)),
      "names.npz": ({"x": x, "y": y, "class_names": names[::-1]},
                    ("names.npz: key 'class_names' ('9', '8'", "are not the model's classes "
                     "('0', '1'", "labels 'y' cannot score it")),
      "other.npz": ({"a": x, "b": y}, ("holds arrays a, b", "'images'", "'x_test'")),
      "floaty.npz": ({"x_test": x.astype(np.float32), "y_test": y},
                     ("floaty.npz: key 'x_test' must hold uint8 images",)),
  }
  for name, (arrays, words) in cases.items():
    np.savez(tmp_path / name, **arrays)
    one_line_error(run_cli("predict", exported["stablehlo"], "--images", tmp_path / name),
                   *words)


def test_a_folder_of_class_folders_is_predicted_and_scored_by_its_folders(runs, exported,
                                                                         dataset, tmp_path):
  # A user's held-out photos in the training layout had to be packed into an .npz to be scored.
  chosen = {name: np.flatnonzero(dataset.y_test == index)[:3]
            for index, name in enumerate(dataset.class_names) if index in (3, 7)}
  for name, rows in chosen.items():
    (tmp_path / "photos" / name).mkdir(parents=True)
    for row in rows:
      # Named so that sorting by name keeps the rows' order.
      picture = tmp_path / "photos" / name / f"{row:05d}.png"
      Image.fromarray(dataset.x_test[row, :, :, 0]).save(picture)
  rows = np.concatenate(list(chosen.values()))
  np.savez(tmp_path / "same.npz", images=dataset.x_test[rows], labels=dataset.y_test[rows])
  for source in (runs / "student", exported["stablehlo"]):
    folder = json.loads(_lines(run_cli("predict", source, "--images", tmp_path / "photos",
                                       "--json"))[0])
    same = json.loads(_lines(run_cli("predict", source, "--images", tmp_path / "same.npz",
                                     "--json"))[0])
    assert [p["label"] for p in folder["predictions"]] == [p["label"] for p in same["predictions"]]
    assert [p["top"] for p in folder["predictions"]] == [p["top"] for p in same["predictions"]]
    assert folder["accuracy"] == same["accuracy"] and folder["accuracy"]["labelled"] == 6
    first = tmp_path / "photos" / "3" / f"{rows[0]:05d}.png"
    assert folder["predictions"][0]["image"] == str(first)
  text = _lines(run_cli("predict", runs / "student", "--images", tmp_path / "photos"))
  assert text[-1].endswith(f"on {tmp_path / 'photos'}'s class folders")
  # A folder of pictures alone: predicted, unlabelled.
  flat = _lines(run_cli("predict", runs / "student", "--images", tmp_path / "photos" / "7"))
  assert len(flat) == 3 and not flat[-1].startswith("accuracy")
  (tmp_path / "root" / "test").mkdir(parents=True)  # a data root: its splits hold the classes
  (tmp_path / "photos").rename(tmp_path / "root" / "train")
  one_line_error(run_cli("predict", runs / "student", "--images", tmp_path / "root"),
                 f"holds the splits 'test', 'train', not class folders: give one of them, e.g. "
                 f"--images {tmp_path / 'root' / 'test'}")
  (tmp_path / "root" / "train").rename(tmp_path / "photos")
  Image.fromarray(dataset.x_test[0, :, :, 0]).save(tmp_path / "photos" / "Photo 1.JPG")
  one_line_error(run_cli("predict", runs / "student", "--images", tmp_path / "photos"),
                 "holds image files beside its class folders (Photo 1.JPG): move each into its "
                 f"class folder, or out of {tmp_path / 'photos'}")
  (tmp_path / "photos" / "Photo 1.JPG").unlink()
  (tmp_path / "photos" / "cat").mkdir()
  one_line_error(run_cli("predict", runs / "student", "--images", tmp_path / "photos"),
                 "holds folders 'cat', which are not the model's classes ('0', '1', '2'")
  (tmp_path / "photos" / "7" / "notes.txt").write_text("mine")
  one_line_error(run_cli("predict", runs / "student", "--images", tmp_path / "photos" / "7"),
                 "holds files that are not images (notes.txt)")


def test_predict_logits_takes_images_as_predict_does_and_refuses_floats(runs, exported,
                                                                         dataset):
  """From Python, 0..1 floats were cast to uint8 (all but black) and scored 8% without a
  word, and an empty batch was a traceback from the run folder."""
  x = dataset.x_test[:5]
  for source in (runs / "student", *exported.values()):
    logits = predict_logits(source, x)
    assert logits.shape == (5, 10) and logits.dtype == np.float32
    np.testing.assert_allclose(predict_logits(source, x[0]), logits[:1], atol=1e-5)
    np.testing.assert_allclose(predict_logits(source, x[..., 0]), logits, atol=1e-5)
    with pytest.raises(UserError, match=r"images must hold uint8 images \(0..255\), got "
                                        r"float32; they look like 0..1 floats: convert with "):
      predict_logits(source, x.astype(np.float32) / 255)
    assert predict_logits(source, x[:0]).shape == (0, 10)
