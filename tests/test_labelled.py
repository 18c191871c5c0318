"""Few labels, many images (`data.labelled`): the teacher labels what nobody else did."""

import json

import numpy as np
import pytest
from conftest import TINY_FLAGS, run_cli

from distill.data import load_dataset
from distill.errors import UserError
from distill.teaching import make_objective
from distill.workflow import training_rows


@pytest.fixture(scope="module")
def digits_full():
  return load_dataset("digits", val_size=200)


@pytest.fixture(scope="module")
def digits_100():
  return load_dataset("digits", val_size=200, labelled=100)


def test_only_the_first_rows_keep_their_labels(digits_full, digits_100):
  np.testing.assert_array_equal(digits_100.x_train, digits_full.x_train)
  np.testing.assert_array_equal(digits_100.y_train[:100], digits_full.y_train[:100])
  assert (digits_100.y_train[100:] == -1).all()
  assert digits_100.labelled_count == 100 and digits_100.partly_labelled
  images, labels = digits_100.labelled_split()
  assert len(images) == len(labels) == 100 and labels.min() >= 0
  # Validation and test keep every label; the training split's fingerprint tells them apart.
  np.testing.assert_array_equal(digits_100.y_val, digits_full.y_val)
  assert digits_100.split_fingerprint("train") != digits_full.split_fingerprint("train")
  assert "(100 labelled)" in digits_100.describe()


def test_labelled_at_or_above_the_split_keeps_every_label(digits_full):
  every = load_dataset("digits", val_size=200, labelled=len(digits_full.x_train))
  assert not every.partly_labelled and every.num_labelled is None
  np.testing.assert_array_equal(every.y_train, digits_full.y_train)
  with pytest.raises(UserError, match="labelled must be a non-negative integer"):
    load_dataset("digits", labelled=-3)


def test_labels_of_an_unsigned_dtype_get_room_for_minus_one(tmp_path):
  rng = np.random.default_rng(0)
  path = tmp_path / "tiny.npz"
  np.savez(path, x=rng.integers(0, 255, (60, 4, 4), np.uint8),
           y=np.arange(60, dtype=np.uint8) % 3,
           x_test=rng.integers(0, 255, (10, 4, 4), np.uint8),
           y_test=np.arange(10, dtype=np.uint8) % 3)
  dataset = load_dataset("npz", data_dir=path, val_size=10, labelled=20)
  assert (dataset.y_train[20:] == -1).all() and (dataset.y_train[:20] < 3).all()


def test_what_each_objective_trains_on(digits_100, digits_full):
  hard_images, hard_labels = training_rows(digits_100, make_objective("hard"))
  assert len(hard_images) == 100 and hard_labels.min() >= 0
  images, labels = training_rows(digits_100, make_objective("kd", alpha=1.0))
  assert len(images) == len(digits_100.x_train)  # the teacher labels the rest
  assert len(training_rows(digits_full, make_objective("hard"))[0]) == len(digits_full.x_train)
  for name, settings in (("kd", {"alpha": 0.5}), ("dkd", {}), ("dist", {}), ("token", {})):
    with pytest.raises(UserError, match=rf"method {name} .* only 100 of the"):
      training_rows(digits_100, make_objective(name, **settings))


def test_teacher_and_students_with_few_labels(tmp_path):
  labelled = ["--set", "data.labelled=100"]
  # An MLP teacher: its step over the 100 labelled images is a program of its own, which an MLP
  # compiles in a fraction of the ViT's time; labels, targets and the normalisation a restored
  # teacher keeps are the same for every model.
  result = run_cli("teacher", "-r", "digits", "-w", tmp_path / "teacher", *TINY_FLAGS, *labelled,
                   "--set", "teacher.model=mlp")
  assert result.exit_code == 0, result.output
  assert "training on the 100 labelled images of" in result.output
  summary = json.loads((tmp_path / "teacher" / "summary.json").read_text())
  assert summary["labelled_images"] == 100
  # The targets cover every training image, the unlabelled ones too.
  meta = json.loads((tmp_path / "teacher" / "targets.json").read_text())
  assert meta["num_examples"] > 100 and meta["split"]["labelled"] == 100
  with np.load(tmp_path / "teacher" / "targets.npz") as targets:
    assert len(targets["train_probs"]) == meta["num_examples"]
    at_training = targets["train_logits"]
  # The teacher restored from its checkpoint normalises its inputs as it did in
  # training (by every training image, labelled or not): re-exporting gives the same.
  result = run_cli("export", "--teacher", tmp_path / "teacher", "--out", tmp_path / "again",
                   "-q")
  assert result.exit_code == 0, result.output
  with np.load(tmp_path / "again" / "targets.npz") as targets:
    np.testing.assert_array_equal(targets["train_logits"], at_training)
  for loss in ("soft", "hard"):
    result = run_cli("student", "--teacher", tmp_path / "teacher", "-w", tmp_path / loss,
                     "--model", "mlp", "--loss", loss, *TINY_FLAGS)
    assert result.exit_code == 0, result.output
    assert ("training on the 100 labelled images" in result.output) == (loss == "hard")
  # compare says how many labels each run learned from: the teacher's and the hard
  # student's, none for the student the teacher taught.
  table = run_cli("compare", tmp_path / "teacher", tmp_path / "soft", tmp_path / "hard").output
  header, _, *rows = table.splitlines()
  assert " labels " in header
  labels = {row.split()[0].rsplit("/", 1)[-1]: row.split()[header.split().index("labels")]
            for row in rows if row.strip()}
  assert labels == {"teacher": "100", "hard": "100", "soft": "none"}
  # A method that needs every label is refused before anything is written.
  result = run_cli("student", "--teacher", tmp_path / "teacher", "-w", tmp_path / "dkd",
                   "--model", "mlp", "--method", "dkd", *TINY_FLAGS)
  assert result.exit_code == 2
  assert "method dkd" in result.output and "only 100 of the" in result.output
  assert not (tmp_path / "dkd").exists()
