"""Tests for distill.data: every format is written here into tmp_path."""

import gzip
import os
import pickle
import re
import sys
import types

import numpy as np
import pytest

from distill import data
from distill.data import checks, datasets, load_dataset
from distill.errors import UserError

_IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _keras_refusing_downloads():
  """A stand-in keras module whose loaders fail the test if ever called."""
  def refuse():
    raise AssertionError("a keras download was attempted")
  return types.SimpleNamespace(datasets=types.SimpleNamespace(**{
      name: types.SimpleNamespace(load_data=refuse)
      for name in ("mnist", "fashion_mnist", "cifar10")}))


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path, monkeypatch):
  """Keeps every test away from real caches, system data and the network."""
  monkeypatch.delenv("DISTILL_DATA", raising=False)
  monkeypatch.delenv("DISTILL_OFFLINE", raising=False)
  monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
  monkeypatch.setattr(datasets, "DEBIAN_DATASETS_DIR", str(tmp_path / "no_debian"))
  monkeypatch.setitem(sys.modules, "keras", _keras_refusing_downloads())


def _idx_bytes(array):
  magic = 0x00000800 | array.ndim
  header = magic.to_bytes(4, "big") + b"".join(
      dim.to_bytes(4, "big") for dim in array.shape)
  return header + array.astype(np.uint8).tobytes()


def _write_idx(path, array, compress):
  payload = _idx_bytes(array)
  if compress:
    with gzip.open(str(path) + ".gz", "wb") as stream:
      stream.write(payload)
    return str(path) + ".gz"
  path.write_bytes(payload)
  return str(path)


def _tiny_split(rng, count, height=5, width=4, num_classes=3):
  images = rng.integers(0, 256, (count, height, width), dtype=np.uint8)
  labels = rng.integers(0, num_classes, count).astype(np.uint8)
  return images, labels


def _write_idx_folder(folder, compress=True, num_train=12, num_test=5):
  rng = np.random.default_rng(7)
  arrays = {}
  arrays["x_train"], arrays["y_train"] = _tiny_split(rng, num_train)
  arrays["x_test"], arrays["y_test"] = _tiny_split(rng, num_test)
  folder.mkdir(parents=True, exist_ok=True)
  for role, array in arrays.items():
    _write_idx(folder / _IDX_NAMES[role], array, compress)
  return arrays


def _identifiable_npz(path, count=50):
  """An npz whose image i carries i in pixel (0, 0), to track examples."""
  x = np.zeros((count, 3, 3), np.uint8)
  x[:, 0, 0] = np.arange(count)
  y = np.arange(count) % 4
  np.savez(path, x=x, y=y)
  return str(path)


# --- IDX ---------------------------------------------------------------------


def test_idx_files_are_read_once_until_they_change(tmp_path):
  arrays = _write_idx_folder(tmp_path / "fm", compress=True)
  path = str(tmp_path / "fm" / (_IDX_NAMES["y_test"] + ".gz"))
  first, again = data.read_idx(path), data.read_idx(path)
  assert np.shares_memory(first, again)  # not gunzipped a second time
  np.testing.assert_array_equal(again, arrays["y_test"])
  # Rewritten (another size or time), the file is read afresh.
  _write_idx_folder(tmp_path / "fm", compress=True, num_test=arrays["y_test"].size + 3)
  changed = data.read_idx(path)
  assert changed.size == arrays["y_test"].size + 3 and not np.shares_memory(first, changed)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, compress):
  arrays = _write_idx_folder(tmp_path / "fm", compress=compress)
  suffix = ".gz" if compress else ""
  read = data.read_idx(str(tmp_path / "fm" / (_IDX_NAMES["x_test"] + suffix)),
                       0x00000803)
  np.testing.assert_array_equal(read, arrays["x_test"])

  dataset = load_dataset("fashion_mnist", data_dir=tmp_path / "fm",
                         val_size=0)
  np.testing.assert_array_equal(dataset.x_test[..., 0], arrays["x_test"])
  np.testing.assert_array_equal(dataset.y_test, arrays["y_test"])
  permutation = np.random.default_rng(0).permutation(12)
  np.testing.assert_array_equal(dataset.x_train[..., 0],
                                arrays["x_train"][permutation])
  assert dataset.image_shape == (5, 4, 1)
  assert dataset.x_train.dtype == np.uint8
  assert dataset.y_train.dtype == np.int32
  assert dataset.class_names[0] == "T-shirt/top"
  assert dataset.num_classes == 10


def test_idx_subfolder_of_data_dir_is_found(tmp_path):
  _write_idx_folder(tmp_path / "root" / "fashion-mnist")
  dataset = load_dataset("fashion_mnist", data_dir=tmp_path / "root")
  assert len(dataset.x_train) + len(dataset.x_val) == 12


@pytest.mark.parametrize("compress", [True, False])
def test_truncated_idx_names_the_file(tmp_path, compress):
  folder = tmp_path / "fm"
  _write_idx_folder(folder, compress=compress)
  name = _IDX_NAMES["x_train"] + (".gz" if compress else "")
  path = folder / name
  path.write_bytes(path.read_bytes()[:-10])
  with pytest.raises(UserError, match=name):
    load_dataset("fashion_mnist", data_dir=folder)


def test_idx_with_wrong_magic_is_rejected(tmp_path):
  folder = tmp_path / "fm"
  arrays = _write_idx_folder(folder, compress=False)
  # Labels where images belong: a valid IDX file, but the wrong kind.
  _write_idx(folder / _IDX_NAMES["x_train"], arrays["y_train"], compress=False)
  with pytest.raises(UserError, match="magic 0x00000801"):
    load_dataset("fashion_mnist", data_dir=folder)


def test_incomplete_idx_folder_says_what_is_missing(tmp_path):
  folder = tmp_path / "fm"
  _write_idx_folder(folder)
  os.remove(folder / (_IDX_NAMES["y_test"] + ".gz"))
  with pytest.raises(UserError, match="missing t10k-labels-idx1-ubyte"):
    load_dataset("fashion_mnist", data_dir=folder)


# --- CIFAR-10 ----------------------------------------------------------------


def _write_cifar_folder(folder, per_batch=2, protocol=2):
  folder.mkdir(parents=True)
  rng = np.random.default_rng(3)
  for batch in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    pixels = np.zeros((per_batch, 3, 32, 32), np.uint8)
    if batch == "test_batch":
      pixels[1, 1, 2, 5] = 200  # Image 1, green channel, row 2, column 5.
    labels = rng.integers(0, 10, per_batch).tolist()
    with open(folder / batch, "wb") as stream:
      pickle.dump({b"batch_label": batch.encode(),
                   b"data": pixels.reshape(per_batch, 3072),
                   b"labels": labels}, stream, protocol=protocol)
  names = [f"class{i}".encode() for i in range(10)]
  with open(folder / "batches.meta", "wb") as stream:
    pickle.dump({b"label_names": names, b"num_cases_per_batch": per_batch},
                stream, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_batches_load_as_nhwc(tmp_path, protocol):
  folder = tmp_path / "cifar-10-batches-py"
  _write_cifar_folder(folder, protocol=protocol)
  dataset = load_dataset("cifar10", data_dir=folder, val_size=2)
  assert dataset.image_shape == (32, 32, 3)
  assert (len(dataset.x_train), len(dataset.x_val), len(dataset.x_test)) == (
      8, 2, 2)
  assert dataset.x_test[1, 2, 5].tolist() == [0, 200, 0]
  assert int(dataset.x_test.sum()) == 200
  assert dataset.class_names == tuple(f"class{i}" for i in range(10))


def test_cifar_parent_folder_and_keras_cache_are_found(tmp_path, monkeypatch):
  _write_cifar_folder(tmp_path / "parent" / "cifar-10-batches-py")
  assert load_dataset("cifar10", data_dir=tmp_path / "parent").num_classes == 10

  keras_home = tmp_path / "keras_home"
  _write_cifar_folder(keras_home / "datasets" / "cifar-10-batches-py-target" /
                      "cifar-10-batches-py")
  monkeypatch.setenv("DISTILL_OFFLINE", "1")
  assert len(load_dataset("cifar10").x_test) == 2


def test_cifar_missing_batch_is_named(tmp_path):
  folder = tmp_path / "cifar-10-batches-py"
  _write_cifar_folder(folder)
  os.remove(folder / "data_batch_3")
  with pytest.raises(UserError, match="data_batch_3 is missing"):
    load_dataset("cifar10", data_dir=folder)


def test_cifar_bad_pickle_is_a_user_error(tmp_path):
  folder = tmp_path / "cifar-10-batches-py"
  _write_cifar_folder(folder)
  (folder / "test_batch").write_bytes(b"not a pickle at all")
  with pytest.raises(UserError, match="test_batch"):
    load_dataset("cifar10", data_dir=folder)


def test_cifar_pickle_cannot_run_code(tmp_path):
  folder = tmp_path / "cifar-10-batches-py"
  _write_cifar_folder(folder)

  class RunsCode:
    def __reduce__(self):
      return (os.system, ("echo pwned",))

  with open(folder / "data_batch_1", "wb") as stream:
    pickle.dump({b"data": RunsCode(), b"labels": []}, stream)
  with pytest.raises(UserError, match="refusing to load"):
    load_dataset("cifar10", data_dir=folder)


# --- MNIST -------------------------------------------------------------------


def test_mnist_from_keras_cache_without_download(tmp_path, monkeypatch):
  cache = tmp_path / "keras_home" / "datasets"
  cache.mkdir(parents=True)
  rng = np.random.default_rng(1)
  x_train, y_train = _tiny_split(rng, 20, 28, 28, num_classes=10)
  x_test, y_test = _tiny_split(rng, 6, 28, 28, num_classes=10)
  np.savez(cache / "mnist.npz", x_train=x_train, y_train=y_train,
           x_test=x_test, y_test=y_test)
  monkeypatch.setenv("DISTILL_OFFLINE", "1")
  dataset = load_dataset("mnist", val_size=4)
  assert (len(dataset.x_train), len(dataset.x_val)) == (16, 4)
  np.testing.assert_array_equal(dataset.x_test[..., 0], x_test)
  assert dataset.class_names == tuple("0123456789")


def test_mnist_from_idx_folder(tmp_path):
  _write_idx_folder(tmp_path / "d" / "mnist")
  dataset = load_dataset("mnist", data_dir=tmp_path / "d")
  assert dataset.class_names[3] == "3"
  assert len(dataset.x_test) == 5


# --- npz ---------------------------------------------------------------------


def test_npz_good_file(tmp_path):
  rng = np.random.default_rng(2)
  x = rng.integers(0, 256, (30, 6, 6, 3), dtype=np.uint8)
  x_test = rng.integers(0, 256, (7, 6, 6, 3), dtype=np.uint8)
  np.savez(tmp_path / "mine.npz", x=x, y=np.arange(30) % 3, x_test=x_test,
           y_test=np.arange(7) % 3, class_names=np.array(["a", "b", "c"]))
  dataset = load_dataset("npz", data_dir=tmp_path / "mine.npz", val_size=5)
  assert dataset.class_names == ("a", "b", "c")
  assert dataset.image_shape == (6, 6, 3)
  assert (len(dataset.x_train), len(dataset.x_val)) == (25, 5)
  np.testing.assert_array_equal(dataset.x_test, x_test)


def test_npz_without_test_holds_out_fixed_fifth(tmp_path):
  path = _identifiable_npz(tmp_path / "mine.npz", count=50)
  first = load_dataset("npz", data_dir=path, val_size=0, split_seed=0)
  other_seed = load_dataset("npz", data_dir=path, val_size=0, split_seed=9)
  assert len(first.x_test) == 10 and len(first.x_train) == 40
  np.testing.assert_array_equal(first.x_test, other_seed.x_test)
  test_ids = set(first.x_test[:, 0, 0, 0].tolist())
  train_ids = set(first.x_train[:, 0, 0, 0].tolist())
  assert not test_ids & train_ids
  assert first.class_names == ("0", "1", "2", "3")


def test_npz_missing_y(tmp_path):
  np.savez(tmp_path / "mine.npz", x=np.zeros((4, 2, 2), np.uint8))
  with pytest.raises(UserError, match="no key 'y'"):
    load_dataset("npz", data_dir=tmp_path / "mine.npz")


def test_npz_mismatched_lengths(tmp_path):
  np.savez(tmp_path / "mine.npz", x=np.zeros((4, 2, 2), np.uint8),
           y=np.zeros(3, np.int64))
  with pytest.raises(UserError,
                     match=r"key 'y' has 3 labels but key 'x' has 4"):
    load_dataset("npz", data_dir=tmp_path / "mine.npz")


def test_npz_label_beyond_class_names(tmp_path):
  np.savez(tmp_path / "mine.npz", x=np.zeros((4, 2, 2), np.uint8),
           y=np.array([0, 1, 2, 1]), class_names=np.array(["cat", "dog"]))
  with pytest.raises(UserError, match="key 'y' has label 2 .* only 2 classes"):
    load_dataset("npz", data_dir=tmp_path / "mine.npz")


def test_npz_wrong_image_dtype(tmp_path):
  np.savez(tmp_path / "mine.npz", x=np.zeros((4, 2, 2), np.float32),
           y=np.arange(4) % 2)
  with pytest.raises(UserError, match="key 'x' must be uint8"):
    load_dataset("npz", data_dir=tmp_path / "mine.npz")


def _load_npz(path, warn=None, **arrays):
  """Saves `arrays` as an npz at `path` and loads it; notes go to `warn` (a list's append)."""
  np.savez(path, **arrays)
  return load_dataset("npz", data_dir=path, val_size=2, warn=warn)


_X = np.arange(40 * 6 * 6, dtype=np.uint32).reshape(40, 6, 6).astype(np.uint8)


def test_npz_of_one_class_is_refused_when_it_loads(tmp_path):
  # A classifier of one class crashed only after the model was built.
  path = tmp_path / "mine.npz"
  with pytest.raises(UserError, match=r"every image in key 'y' has label 0; a classifier needs "
                                      r"at least two classes"):
    _load_npz(path, x=_X, y=np.zeros(40, np.int64))
  with pytest.raises(UserError, match=r"has label 3; a classifier needs at least two"):
    _load_npz(path, x=_X, y=np.full(40, 3))
  with pytest.raises(UserError, match=r"has label 1 \(class 'dog'\)"):
    _load_npz(path, x=_X, y=np.ones(40, np.int64), class_names=np.array(["cat", "dog"]))
  # The other label only in the held-out test split: training would see one class.
  _, (lone,) = datasets._fixed_test_holdout(5)
  y = np.zeros(5, np.int64)
  y[lone] = 1
  with pytest.raises(UserError, match=r"mine.npz: without x_test and y_test, a fixed 20% of key "
                                      r"'x' is held out as the test split, and it took every "
                                      r"image of class '1', leaving one class to train on"):
    _load_npz(path, x=_X[:5], y=y)
  # Or the validation split and train_limit: the settings that did it are named.
  with pytest.raises(UserError, match=r"digits: data.val_size 0.1 held out 144 and "
                                      r"data.train_limit 1 kept 1 of its 1,438 training images, "
                                      r"and those left all have label \d; a classifier needs"):
    load_dataset("digits", val_size=0.1, train_limit=1)


def test_npz_labels_that_skip_classes_warn_and_name_them(tmp_path, capsys):
  path = tmp_path / "mine.npz"
  notes = []
  dataset = _load_npz(path, notes.append, x=_X, y=np.arange(40) % 10 + 1)
  assert dataset.num_classes == 11
  (note,) = notes
  assert "class 0 of the 11 has no training images" in note
  assert "labels are class indices 0..K-1" in note
  assert "np.unique(y, return_inverse=True)" in note

  notes.clear()
  assert _load_npz(path, notes.append, x=_X, y=np.arange(40) % 3 * 4 + (np.arange(40) % 3 == 2)
                   ).num_classes == 10  # labels 0, 4 and 9
  assert "7 of the 10 classes (1, 2, 3, 5, 6 and 2 more) have no training images" in notes[0]

  # Without `warn`, the console's warning, on stderr.
  _load_npz(path, x=_X, y=np.arange(40) % 3 * 4)
  assert "have no training images" in capsys.readouterr().err


@pytest.mark.parametrize("arrays, words", [
    # y_test counted from 1 (or 5) against y from 0 trained 11 classes to 2% and blamed 'y'.
    ({"y": np.arange(40) % 10, "y_test": np.arange(10) + 1},
     "key 'y_test' runs 1..10 but key 'y' runs 0..9: do they count from different numbers? save "
     "`y_test - 1`"),
    ({"y_train": np.arange(40) % 10, "y_test": np.arange(10) + 5},
     "key 'y_test' runs 5..14 but key 'y_train' runs 0..9: do they count from different "
     "numbers? save `y_test - 5`"),
    # Or the training labels, with class names too: the higher ones are shifted down.
    ({"y": np.arange(40) % 2 + 1, "y_test": np.arange(10) % 2,
      "class_names": np.array(["a", "b", "c"])},
     "key 'y' runs 1..2 but key 'y_test' runs 0..1: do they count from different numbers? save "
     "`y - 1`"),
    ({"y": np.arange(40) % 10, "y_test": np.full(10, 10, np.uint8)},
     "key 'y_test' is all 10 but key 'y' runs 0..9: do they count from different numbers? "
     "save `y_test - 1`"),
])
def test_npz_test_labels_counted_from_another_number_are_refused(tmp_path, arrays, words):
  images = {"x_train" if "y_train" in arrays else "x": _X, "x_test": _X[:10]}
  with pytest.raises(UserError, match=re.escape(words) + "$"):
    _load_npz(tmp_path / "mine.npz", **images, **arrays)


def test_npz_test_classes_without_training_images_are_noted(tmp_path):
  # No shift explains them: a warning that says the test images of those classes count wrong.
  notes = []
  dataset = _load_npz(tmp_path / "mine.npz", notes.append, x=_X, y=np.arange(40) % 5,
                      x_test=_X[:7], y_test=np.arange(7))
  assert dataset.num_classes == 7
  (note,) = notes
  assert ("2 of the 7 classes (5, 6) have no training images, but the test labels have images "
          "of them, which no model trained on these gets right") in note
  # A gap in y's classes that y_test also has: still the gap, no refusal.
  notes.clear()
  y = np.arange(40) % 10
  y[y == 7] = 8
  assert _load_npz(tmp_path / "mine.npz", notes.append, x=_X, y=y, x_test=_X[:10],
                   y_test=np.arange(10)).num_classes == 10
  assert "class 7 of the 10 has no training images, but the test labels have images of it" in (
      notes[0])
  # Named classes too: one only the test set has is a test nothing trained here passes.
  notes.clear()
  named = np.array(["cat", "dog", "ring"])
  _load_npz(tmp_path / "mine.npz", notes.append, x=_X, y=np.arange(40) % 2, x_test=_X[:9],
            y_test=np.arange(9) % 3, class_names=named)
  assert notes == [f"{tmp_path / 'mine.npz'}: key 'y' has no training images of class 'ring', "
                   "but key 'y_test' has 3 test images of them, which no model trained on these "
                   "gets right"]


def test_npz_images_of_four_channels_are_noted_as_perhaps_rgba(tmp_path):
  notes = []
  rgba = _X[..., np.newaxis].repeat(4, axis=3)
  assert _load_npz(tmp_path / "mine.npz", notes.append, x=rgba,
                   y=np.arange(40) % 2).image_shape == (6, 6, 4)
  assert notes == [f"{tmp_path / 'mine.npz'}: key 'x' has 4 channels; if the fourth is alpha "
                   "(RGBA pictures), save `x[..., :3]`: the model takes the channels it trained "
                   "on, and pictures given to `distill predict` read as RGB or gray"]


def test_a_split_leaving_one_class_suggests_only_what_would_help(tmp_path):
  path = tmp_path / "mine.npz"
  np.savez(path, x=_X[:4], y=np.array([0, 0, 0, 1]), x_test=_X[:2], y_test=np.array([0, 1]))
  # split_seed 2 holds out image 3, the only one of class 1: one image cannot be fewer.
  with pytest.raises(UserError, match=r"those left all have label 0; a classifier needs two "
                                      r"classes: pass another data.split_seed$"):
    load_dataset("npz", data_dir=path, val_size=1, split_seed=2)
  with pytest.raises(UserError, match=r"classes: hold out fewer or pass another data.split_seed$"):
    load_dataset("npz", data_dir=path, val_size=2, split_seed=2)


def test_npz_classes_empty_for_a_reason_are_no_numbering_mistake(tmp_path):
  path = tmp_path / "mine.npz"
  notes = []
  # Named classes are the user's: one without images is not a numbering mistake.
  _load_npz(path, notes.append, x=_X, y=np.arange(40) % 2 * 4,
            class_names=np.array(list("abcde")))
  assert notes == []
  # Classes emptied by data.labelled, train_limit or the validation split are not either, but
  # training never sees them labelled: that is said, with the settings that did it.
  np.savez(path, x=_X, y=np.arange(40) % 4)
  dataset = load_dataset("npz", data_dir=path, val_size=10, labelled=1, train_limit=3,
                         warn=notes.append)
  assert dataset.labelled_count == 1 and dataset.num_classes == 4
  (note,) = notes
  assert "labels are class indices" not in note
  kept = int(dataset.y_train[0])
  lost = ", ".join(f"'{label}'" for label in range(4) if label != kept)
  assert note == ("npz: data.val_size 10 held out 10 and data.train_limit 3 kept 3 of its 32 "
                  "training images, and data.labelled kept the labels of 1 of the 3, which left "
                  f"no labelled training image of class {lost}: training never sees them "
                  "labelled; raise data.labelled, or pass another data.split_seed")


def test_npz_classes_the_test_holdout_took_whole_are_named(tmp_path):
  lone = datasets._fixed_test_holdout(10)[1][0]
  y = np.arange(10) % 2
  y[lone] = 2
  notes = []
  dataset = _load_npz(tmp_path / "mine.npz", notes.append, x=_X[:10], y=y)
  assert 2 not in dataset.y_train and dataset.num_classes == 3
  assert notes == [f"{tmp_path / 'mine.npz'}: without x_test and y_test, a fixed 20% of key 'x' "
                   "is held out as the test split, and it took every image of class '2': the "
                   "model never learns it; add more images of it, or save your own x_test and "
                   "y_test"]


def test_npz_label_ids_that_would_make_absurd_class_counts_are_refused(tmp_path):
  path = tmp_path / "mine.npz"
  # One id of 10**9 would have built 10**9 class names and a head to match.
  with pytest.raises(UserError, match=r"labels up to 1,000,000,000, which makes "
                                      r"1,000,000,001 classes, but only 3 distinct labels occur "
                                      r"\(0, 1, 1000000000\).*np.unique.*more than 1,000 classes"):
    _load_npz(path, x=_X, y=np.r_[np.arange(39) % 2, 10**9])
  # Also when the id is only in the test split.
  with pytest.raises(UserError, match="1,000,000,001 classes"):
    _load_npz(path, x=_X, y=np.arange(40) % 2, x_test=_X[:2], y_test=np.array([0, 10**9]))
  # A stray 999 among ten labels: 1,000 classes are possible, and the note names the gap.
  notes = []
  assert _load_npz(path, notes.append, x=_X, y=np.r_[np.arange(39) % 10, 999]
                   ).num_classes == 1000
  assert "989 of the 1,000 classes (10, 11, 12, 13, 14 and 984 more)" in notes[0]


@pytest.mark.parametrize("shape, looks_channels_first", [
    ((2, 3, 32, 32), True), ((2, 1, 28, 28), True), ((2, 4, 9, 7), True),
    ((2, 32, 32, 3), False), ((2, 4, 4, 3), False), ((2, 3, 8, 3), False), ((2, 3, 4, 4), False),
    ((2, 1, 28, 1), False), ((2, 28, 28), False)])
def test_channels_first_rule_spares_real_nhwc_sets(shape, looks_channels_first):
  assert checks.channels_first(shape) is looks_channels_first


def test_npz_channels_first_images_are_refused_with_the_transpose(tmp_path):
  path = tmp_path / "mine.npz"
  x = np.zeros((40, 3, 8, 8), np.uint8)
  with pytest.raises(UserError, match=r"key 'x' has shape \(40, 3, 8, 8\), which looks "
                                      r"channels-first.*`x.transpose\(0, 2, 3, 1\)`"):
    _load_npz(path, x=x, y=np.arange(40) % 2)
  # With float pixels too, both fixes in one line.
  with pytest.raises(UserError, match=r"got float32; they look like 0..1 floats.*"
                                      r"it also has shape \(40, 3, 8, 8\)"):
    _load_npz(path, x=x.astype(np.float32), y=np.arange(40) % 2)
  assert _load_npz(path, x=_X[:, :4, :4, np.newaxis].repeat(3, axis=3),
                   y=np.arange(40) % 2).image_shape == (4, 4, 3)


@pytest.mark.parametrize("x, hint", [
    (np.full((4, 2, 2), 0.5, np.float32), "`(x * 255).round().astype(np.uint8)`"),
    (np.full((4, 2, 2), 200.0), "they lie in 0..255: convert with `x.round().astype(np.uint8)`"),
    (np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 2, 2),
     "they look like -1..1 floats (normalised): convert with "
     "`((x + 1) * 127.5).round().astype(np.uint8)`"),
    (np.linspace(-3, 5, 16).reshape(4, 2, 2),
     "they range over -3..5 (normalised?): convert with "
     "`((x - -3) * (255 / 8)).round().astype(np.uint8)`"),
    (np.full((4, 2, 2), -1.5, np.float32), "every value is -1.5: save the images themselves"),
    (np.arange(16, dtype=np.uint16).reshape(4, 2, 2) * 4000,
     "they look like 16-bit images: convert with `(x // 257).astype(np.uint8)`"),
    (np.full((4, 2, 2), 7, np.int64), "`x.astype(np.uint8)`"),
])
def test_npz_image_type_rejections_say_how_to_convert(tmp_path, x, hint):
  with pytest.raises(UserError, match=f"must be uint8 images .*{re.escape(hint)}"):
    _load_npz(tmp_path / "mine.npz", x=x, y=np.arange(4) % 2)
  # The call names the array it fixes.
  with pytest.raises(UserError, match=f"key 'x_test' must be uint8 images .*"
                                      f"{re.escape(hint.replace('x', 'x_test'))}"):
    _load_npz(tmp_path / "mine.npz", x=_X[:4, :2, :2], y=np.arange(4) % 2, x_test=x,
              y_test=np.arange(4) % 2)


@pytest.mark.parametrize("key, x, words", [
    # What `(x / 255).astype(np.uint8)` leaves of 0..255 images: they trained to chance.
    ("x", (_X > 127).astype(np.uint8), "key 'x' holds only the values 0 and 1 in uint8 (0..255): "
                                       "images scaled to 0..1 and cast lose every gray level; "
                                       "save `(x * 255).round().astype(np.uint8)` of the 0..1 "
                                       "floats (of 0/1 masks: `x * 255`)"),
    ("x", np.zeros_like(_X), "key 'x' holds blank images: every pixel of every image is 0; save "
                             "the images themselves (was the array ever filled?)"),
    ("x_test", np.full((4, 6, 6), 255, np.uint8), "key 'x_test' holds blank images: every pixel "
                                                  "of every image is 255"),
])
def test_npz_images_without_a_picture_are_refused(tmp_path, key, x, words):
  arrays = {"x": _X, "y": np.arange(40) % 2, "x_test": _X[:4], "y_test": np.arange(4) % 2, key: x}
  with pytest.raises(UserError, match=re.escape(words)):
    _load_npz(tmp_path / "mine.npz", **arrays)


@pytest.mark.parametrize("y, hint", [
    (np.array(["cat", "dog"] * 20), "got <U3; for class names as labels, save `classes, y = "
                                    "np.unique(y, return_inverse=True)` and pass the names as "
                                    "`class_names=classes`"),
    (np.arange(40.0) % 2, "got float64; they are whole numbers: save `y.astype(np.int64)`"),
    (np.eye(2, dtype=np.int64)[np.arange(40) % 2], "for one-hot labels, save `y.argmax(axis=1)`"),
])
def test_npz_label_rejections_say_how_to_convert(tmp_path, y, hint):
  with pytest.raises(UserError, match=re.escape(hint)):
    _load_npz(tmp_path / "mine.npz", x=_X, y=y)


@pytest.mark.parametrize("arrays, fix", [
    # Counted from 1: the shift, for every key that needs it.
    ({"y": np.arange(40) % 2 + 1},
     "labels are class indices 0..1 and these run 1..2: save `y - 1`"),
    ({"y_train": np.arange(40) % 2 + 1, "x_test": _X[:2], "y_test": np.array([1, 2])},
     "these run 1..2: save `y_train - 1` and `y_test - 1`"),
    ({"y": np.arange(40) % 2 * 3}, "labels are class indices 0..1: give class_names a name for "
                                   "every label up to 3, or remap them with `classes, y = "
                                   "np.unique(y, return_inverse=True)`"),
])
def test_npz_labels_beyond_class_names_say_how_to_fix_them(tmp_path, arrays, fix):
  images = {"x_train" if "y_train" in arrays else "x": _X}
  with pytest.raises(UserError, match=r"has label \d but class_names lists only 2 classes; .*"
                                      + re.escape(fix)):
    _load_npz(tmp_path / "mine.npz", **images, **arrays, class_names=np.array(["cat", "dog"]))


@pytest.mark.parametrize("y, fix", [
    (np.arange(40) % 3 - 1, "has negative label -1; labels are class indices 0..K-1: remap them "
                            "with `classes, y = np.unique(y, return_inverse=True)` and save "
                            "`class_names=classes.astype(str)`; if -1 marks images without a "
                            "label, leave them out: `keep = y >= 0`, then save `x[keep]` and "
                            "`y[keep]`"),
    (np.arange(40) % 3 - 5, "has negative label -5; labels are class indices 0..K-1: remap them "
                            "with `classes, y = np.unique(y, return_inverse=True)` and save "
                            "`class_names=classes.astype(str)`"),
])
def test_npz_negative_labels_say_how_to_fix_them(tmp_path, y, fix):
  with pytest.raises(UserError, match=re.escape(fix) + "$"):
    _load_npz(tmp_path / "mine.npz", x=_X, y=y)


_RAGGED = np.empty(2, object)
_RAGGED[:] = [np.zeros((4, 4), np.uint8), np.zeros((5, 3), np.uint8)]


@pytest.mark.parametrize("key, arrays", [
    ("x", {"x": _RAGGED, "y": np.arange(2)}),
    ("x_train", {"x_train": _RAGGED, "y_train": np.arange(2)}),
    ("x_test", {"x": _X, "y": np.arange(40) % 2, "x_test": _RAGGED, "y_test": np.arange(2)}),
])
def test_npz_images_of_different_sizes_are_told_to_resize(tmp_path, key, arrays):
  # No dtype makes them one array (the advice for other object arrays): resizing does.
  with pytest.raises(UserError, match=rf"key '{key}' is an object array \(images of different "
                                      r"sizes\?\).*must share one height and width: resize "
                                      r"them first.*Image.fromarray\(image\).resize"):
    _load_npz(tmp_path / "mine.npz", **arrays)


def test_npz_object_labels_are_told_to_save_a_plain_array(tmp_path):
  with pytest.raises(UserError, match=r"key 'y' cannot be read without pickle; save it as a "
                                      r"plain array \(strings as dtype=str\)"):
    _load_npz(tmp_path / "mine.npz", x=_X, y=np.array(["cat", "dog"] * 20, object))


def test_npz_damaged_or_no_npz_at_all_is_one_line_that_says_so(tmp_path):
  good = tmp_path / "good.npz"
  np.savez(good, x=_X, y=np.arange(40) % 2)
  whole = good.read_bytes()
  # Half a file (`head -c`) loses the zip's directory, at its end: a BadZipFile traceback.
  (tmp_path / "half.npz").write_bytes(whole[:len(whole) // 2])
  with pytest.raises(UserError, match=r"half.npz is damaged \(not a complete .npz: File is not a "
                                      r"zip file\): save it again$"):
    load_dataset("npz", data_dir=tmp_path / "half.npz")
  # A zeroed block inside an array fails its CRC as the array is read, stored or compressed.
  for save in (np.savez, np.savez_compressed):
    save(good, x=_X, y=np.arange(40) % 2)
    damaged = bytearray(good.read_bytes())
    damaged[200:400] = bytes(200)
    (tmp_path / "zeroed.npz").write_bytes(damaged)
    with pytest.raises(UserError, match=r"zeroed.npz is damaged \(key 'x': .*\): save it again$"):
      load_dataset("npz", data_dir=tmp_path / "zeroed.npz")
  # Not an npz at all: said so, not numpy's advice to unpickle it.
  for name, content, words in (("text.npz", b"hello\n", r"is not an .npz file .* it begins "
                                                        r"with b'hello\\n'"),
                               ("empty.npz", b"", r"is empty \(0 bytes\), not an .npz")):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError, match=words) as refused:
      load_dataset("npz", data_dir=tmp_path / name)
    assert "pickle" not in str(refused.value)
  np.save(tmp_path / "one.npy", _X)
  os.rename(tmp_path / "one.npy", tmp_path / "one.npz")
  with pytest.raises(UserError, match=r"one.npz is a single .npy array, not an .npz archive"):
    load_dataset("npz", data_dir=tmp_path / "one.npz")


@pytest.mark.parametrize("names, words", [
    (["cat", "cat", "dog"], "key 'class_names' names class 0 and class 1 both 'cat'; give every "
                            "class its own name"),
    (["cat", "", "dog"], "key 'class_names' has an empty name for class 1; give every class a "
                         "name"),
    ([b"cat", b" ", b""], "empty name for class 1 (and 1 more)"),
])
def test_npz_blank_or_repeated_class_names_are_refused(tmp_path, names, words):
  # They were taken: "10 classes (a, a, a, ...)", and reports that cannot tell classes apart.
  with pytest.raises(UserError, match=re.escape(words)):
    _load_npz(tmp_path / "mine.npz", x=_X, y=np.arange(40) % 3, class_names=np.array(names))


def test_npz_keys_it_does_not_read_are_named(tmp_path):
  # x_val and y_val were ignored without a word; the validation split comes from x.
  path = tmp_path / "mine.npz"
  notes = []
  dataset = _load_npz(path, notes.append, x_train=_X, y_train=np.arange(40) % 2, x_val=_X[:5],
                      y_val=np.arange(5) % 2)
  assert len(dataset.x_val) == 2 and len(dataset.x_train) + len(dataset.x_test) == 38
  assert notes == [f"{path}: keys 'x_val', 'y_val' are not read (an npz data set reads x, y, "
                   "x_test, y_test and class_names); validation images are held out of key "
                   "'x_train' by data.val_size: to train on yours, add them to x and y"]
  notes.clear()
  _load_npz(path, notes.append, x=_X, y=np.arange(40) % 2, ytest=np.arange(5) % 2)
  assert notes == [f"{path}: key 'ytest' is not read (an npz data set reads x, y, x_test, y_test "
                   "and class_names)"]


def test_npz_reads_keras_names(tmp_path):
  path = tmp_path / "keras.npz"
  dataset = _load_npz(path, x_train=_X, y_train=np.arange(40) % 2, x_test=_X[:6],
                      y_test=np.arange(6) % 2)
  assert (len(dataset.x_train) + len(dataset.x_val), len(dataset.x_test)) == (40, 6)
  with pytest.raises(UserError, match="key 'x_train' must be uint8"):
    _load_npz(path, x_train=_X.astype(np.float32), y_train=np.arange(40) % 2)
  with pytest.raises(UserError, match="has both 'x' and 'x_train'; keep one"):
    _load_npz(path, x=_X, x_train=_X, y=np.arange(40) % 2)
  with pytest.raises(UserError, match=r"no key 'y' \(or 'y_train'\) \(it has: x\)"):
    _load_npz(path, x=_X)


# --- digits ------------------------------------------------------------------


def test_digits():
  dataset = load_dataset("digits")
  assert dataset.num_classes == 10
  assert dataset.image_shape == (8, 8, 1)
  assert dataset.x_train.dtype == np.uint8
  assert dataset.x_train.max() == 255
  assert len(dataset.x_train) + len(dataset.x_val) + len(dataset.x_test) == 1797
  assert len(dataset.x_test) == 359
  np.testing.assert_array_equal(dataset.x_test, load_dataset("digits").x_test)


# --- Real Fashion-MNIST from the Debian package ------------------------------


def test_fashion_mnist_from_debian_package(monkeypatch):
  if not os.path.isdir("/usr/share/datasets/fashion-mnist"):
    pytest.skip("dataset-fashion-mnist is not installed")
  monkeypatch.setattr(datasets, "DEBIAN_DATASETS_DIR", "/usr/share/datasets")
  first = load_dataset("fashion_mnist", allow_download=False)
  second = load_dataset("fashion_mnist", allow_download=False)
  assert len(first.x_train) + len(first.x_val) == 60000
  assert len(first.x_val) == 6000
  assert first.x_test.shape == (10000, 28, 28, 1)
  assert first.fingerprint == second.fingerprint
  assert first.split_fingerprint("train") == second.split_fingerprint("train")


# --- Splitting ---------------------------------------------------------------


def test_split_is_seeded_disjoint_and_sized(tmp_path):
  path = _identifiable_npz(tmp_path / "mine.npz", count=50)  # 40 train+val.
  first = load_dataset("npz", data_dir=path, val_size=10, split_seed=1)
  again = load_dataset("npz", data_dir=path, val_size=10, split_seed=1)
  other = load_dataset("npz", data_dir=path, val_size=10, split_seed=2)
  np.testing.assert_array_equal(first.x_val, again.x_val)
  np.testing.assert_array_equal(first.x_train, again.x_train)
  assert not np.array_equal(first.x_val, other.x_val)
  train_ids = first.x_train[:, 0, 0, 0].tolist()
  val_ids = first.x_val[:, 0, 0, 0].tolist()
  assert (len(train_ids), len(val_ids)) == (30, 10)
  assert not set(train_ids) & set(val_ids)
  assert len(set(train_ids) | set(val_ids)) == 40
  # The whole-dataset fingerprint does not depend on how it was split.
  assert first.fingerprint == other.fingerprint


def test_val_size_fraction_and_limits(tmp_path):
  path = _identifiable_npz(tmp_path / "mine.npz", count=50)
  assert len(load_dataset("npz", data_dir=path, val_size=0.25).x_val) == 10
  with pytest.raises(UserError, match="leaving none to train on"):
    load_dataset("npz", data_dir=path, val_size=40)
  with pytest.raises(UserError, match=r"\[0, 1\)"):
    load_dataset("npz", data_dir=path, val_size=1.0)
  with pytest.raises(UserError, match="negative"):
    load_dataset("npz", data_dir=path, val_size=-1)


def test_train_limit_keeps_first_examples(tmp_path):
  path = _identifiable_npz(tmp_path / "mine.npz", count=50)
  full = load_dataset("npz", data_dir=path, val_size=10)
  limited = load_dataset("npz", data_dir=path, val_size=10, train_limit=7)
  assert len(limited.x_train) == 7
  np.testing.assert_array_equal(limited.x_train, full.x_train[:7])
  np.testing.assert_array_equal(limited.x_val, full.x_val)
  with pytest.raises(UserError, match="train_limit"):
    load_dataset("npz", data_dir=path, train_limit=-3)


# --- Finding data and reporting misses ---------------------------------------


def test_unknown_dataset_lists_valid_names():
  with pytest.raises(UserError) as caught:
    load_dataset("imagenet")
  for name in ("cifar10", "digits", "fashion_mnist", "mnist", "npz"):
    assert name in str(caught.value)
  assert data.dataset_names() == sorted(data.DATASETS)


def test_not_found_names_every_place_and_never_downloads(tmp_path,
                                                         monkeypatch):
  monkeypatch.setenv("DISTILL_DATA", str(tmp_path / "my_data"))
  monkeypatch.setenv("DISTILL_OFFLINE", "1")
  with pytest.raises(UserError) as caught:
    load_dataset("fashion_mnist")  # The stand-in keras raises if called.
  message = str(caught.value)
  assert "\n" not in message
  for place in (tmp_path / "my_data", tmp_path / "my_data" / "fashion-mnist",
                tmp_path / "no_debian" / "fashion-mnist",
                tmp_path / "keras_home" / "datasets" / "fashion-mnist"):
    assert str(place) in message
  assert "apt-get install dataset-fashion-mnist" in message
  assert "DISTILL_OFFLINE=1" in message


def test_allow_download_false_overrides_environment(tmp_path):
  with pytest.raises(UserError, match="mnist not found"):
    load_dataset("mnist", allow_download=False)


def test_download_through_keras_when_allowed(monkeypatch):
  rng = np.random.default_rng(4)
  x_train, y_train = _tiny_split(rng, 10, 28, 28, num_classes=10)
  x_test, y_test = _tiny_split(rng, 3, 28, 28, num_classes=10)
  calls = []

  def fake_load_data():
    calls.append(1)
    return (x_train, y_train[:, None]), (x_test, y_test[:, None])

  sys.modules["keras"].datasets.mnist.load_data = fake_load_data
  dataset = load_dataset("mnist", val_size=2)
  assert calls == [1]
  assert dataset.y_train.shape == (8,)


def test_failed_download_is_one_line(monkeypatch):
  def broken():
    raise OSError("URL fetch failure\nname resolution failed")

  sys.modules["keras"].datasets.cifar10.load_data = broken
  with pytest.raises(UserError,
                     match="downloading with keras failed") as caught:
    load_dataset("cifar10")
  assert "\n" not in str(caught.value)


def test_bad_data_dir_is_named(tmp_path):
  missing = tmp_path / "nope"
  with pytest.raises(UserError, match=f"{missing} does not exist"):
    load_dataset("fashion_mnist", data_dir=missing)
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserError, match="is empty"):
    load_dataset("cifar10", data_dir=tmp_path / "empty")
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "readme.txt").write_text("hi")
  with pytest.raises(UserError, match="not found in the given data dir"):
    load_dataset("fashion_mnist", data_dir=tmp_path / "other")


def test_data_dir_of_another_kind_of_data_names_the_dataset_that_reads_it(tmp_path):
  mine = _identifiable_npz(tmp_path / "mine.npz")
  with pytest.raises(UserError, match=(
      rf"^--data-dir {re.escape(mine)} is an \.npz file, and the recipe's dataset is "
      "fashion_mnist: add --dataset npz$")):
    load_dataset("fashion_mnist", data_dir=mine)
  shards = tmp_path / "shards"
  for split in ("train", "test"):
    (shards / split).mkdir(parents=True)
    (shards / split / "shards.json").write_text("{}")  # only its name is looked at
  with pytest.raises(UserError, match="is a folder of array shards, .*: add --dataset stream$"):
    load_dataset("cifar10", data_dir=shards)
  photos = tmp_path / "photos"
  for name in ("cat", "dog"):
    (photos / "train" / name).mkdir(parents=True)
    (photos / "train" / name / "0.png").write_bytes(b"")
  for folder in (photos, photos / "train"):
    with pytest.raises(UserError, match="is a folder of images in class sub-folders, .*"
                                        f"`distill make-shards {folder} {folder}-shards "
                                        "--image-size 64`.*--dataset stream$"):
      load_dataset("mnist", data_dir=folder)


# --- Fingerprints and the Dataset object -------------------------------------


def test_fingerprint_follows_pixels_and_splits(tmp_path):
  folder = tmp_path / "fm"
  arrays = _write_idx_folder(folder)
  before = load_dataset("fashion_mnist", data_dir=folder)
  arrays["x_test"][2, 1, 1] ^= 1
  _write_idx(folder / _IDX_NAMES["x_test"], arrays["x_test"], compress=True)
  after = load_dataset("fashion_mnist", data_dir=folder)
  assert before.fingerprint != after.fingerprint
  assert len(before.fingerprint) == 64

  per_split = {split: before.split_fingerprint(split)
               for split in ("train", "val", "test")}
  assert len(set(per_split.values())) == 3
  assert before.split_fingerprint("test") != after.split_fingerprint("test")
  assert before.split_fingerprint("train") == after.split_fingerprint("train")
  with pytest.raises(UserError, match="unknown split"):
    before.split_fingerprint("holdout")


def test_dataset_arrays_are_read_only_and_described(tmp_path):
  path = _identifiable_npz(tmp_path / "mine.npz")
  dataset = load_dataset("npz", data_dir=path, val_size=5)
  with pytest.raises(ValueError):
    dataset.x_train[0, 0, 0, 0] = 1
  line = dataset.describe()
  assert "\n" not in line
  assert line.startswith("npz: 35 train / 5 val / 10 test images of 3x3x1")
  assert "4 classes" in line


def test_digits_are_read_as_scikit_learn_loads_them():
  from sklearn.datasets import load_digits  # noqa: PLC0415 (the slow import the loader avoids)

  counts, labels = datasets._digits_arrays()
  bunch = load_digits()
  np.testing.assert_array_equal(counts, bunch.images)
  np.testing.assert_array_equal(labels, bunch.target)


def test_a_test_set_of_mostly_one_class_names_the_accuracy_to_beat():
  from distill.data.checks import majority_note  # noqa: PLC0415

  names = ("cat", "dog", "ring")
  assert majority_note(np.array([0] * 9 + [1]), names) == (
      "note: class 'cat' is 90.0% of the test images: a model that always answers it scores "
      "90.00%, the accuracy to beat")
  assert majority_note(np.array([0, 1, 2] * 3), names) is None  # even
  assert majority_note(np.array([0, 1] * 5), ("a", "b")) is None  # half of two is even
  assert majority_note(np.array([], np.int64), names) is None
