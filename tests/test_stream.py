"""Streamed data sets: shards and image folders on disk, read ahead by HostFeeder, target shards."""

import json
import re
import threading
import unicodedata
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from distill import parallel
from distill.data import stream
from distill.data.shards import open_target_shards, write_array_shards, write_target_shards
from distill.errors import UserError
from distill.feeders import DataOrder, HostFeeder
from distill.targets import check_targets_match

CLASSES = ("ant", "bee", "cat")
META = {"dataset": "tiny", "dataset_fingerprint": "f" * 64, "train_fingerprint": "t" * 64,
        "temperature": 2.0, "teacher": {"model": "vit", "params_sha256": "p" * 64},
        "class_names": list(CLASSES)}


def _arrays(n=23, shape=(4, 5, 3), seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
  labels = rng.integers(0, len(CLASSES), size=n).astype(np.int32)
  return images, labels


def _chunks(images, labels, size):
  for start in range(0, len(images), size):
    yield images[start:start + size], labels[start:start + size]


@pytest.fixture
def shards(tmp_path):
  """23 examples in shards of 5 (the last holds 3), written from chunks of 7."""
  images, labels = _arrays()
  path = write_array_shards(tmp_path / "shards", _chunks(images, labels, 7),
                            class_names=CLASSES, shard_size=5, meta={"source": "test"})
  return path, images, labels


def _image_folder(root, sizes=((12, 9), (7, 20), (16, 16), (5, 6), (30, 11))):
  """3 classes x 5 PNGs of different sizes; returns (root, colours in global index order)."""
  colours = []
  for label, name in enumerate(CLASSES):
    (root / name).mkdir(parents=True)
    for number, (width, height) in enumerate(sizes):
      colour = (40 * label + 10 * number, 200 - 30 * number, 17 * label)
      Image.new("RGB", (width, height), colour).save(root / name / f"img{number}.png")
      colours.append(colour)
  return root, colours


def test_shards_read_rows_in_asked_order_across_shards(shards):
  path, images, labels = shards
  source = stream.ArrayShardSource(path)
  assert (source.num_examples, source.image_shape, source.class_names) == (23, (4, 5, 3), CLASSES)
  assert (source.num_shards == 5
          and len(json.loads((path / "shards.json").read_text())["shards"]) == 5)
  indices = np.array([22, 0, 4, 5, 13, 4, 21, 9])
  got_images, got_labels = source.read(indices)
  np.testing.assert_array_equal(got_images, images[indices])
  np.testing.assert_array_equal(got_labels, labels[indices])
  assert got_images.dtype == np.uint8 and got_labels.dtype == np.int32
  assert not list(path.parent.glob(".*"))  # the staging folder is gone
  with pytest.raises(IndexError):
    source.read(np.array([23]))


def test_shards_are_memory_mapped(shards):
  path, _, _ = shards
  source = stream.ArrayShardSource(path)
  source.read(np.array([0, 12]))
  shard_images, shard_labels = source.shard_arrays(2)
  assert isinstance(shard_images, np.memmap) and isinstance(shard_labels, np.memmap)
  assert not shard_images.flags.writeable


def test_one_pair_of_arrays_and_overwrite(tmp_path):
  images, labels = _arrays(n=12, shape=(3, 3))  # [n, H, W] gains a channel axis
  path = write_array_shards(tmp_path / "s", (images, labels), class_names=CLASSES,
                            shard_size=4)
  source = stream.open_source(path)
  assert source.image_shape == (3, 3, 1) and source.num_shards == 3
  np.testing.assert_array_equal(source.read(np.arange(12))[0][..., 0], images)
  first = source.fingerprint
  with pytest.raises(UserError, match="overwrite"):
    write_array_shards(path, (images, labels), class_names=CLASSES)
  write_array_shards(path, (images[:6], labels[:6]), class_names=CLASSES, overwrite=True)
  again = stream.open_source(path)
  assert again.num_examples == 6 and again.fingerprint != first
  assert stream.open_source(path).fingerprint == again.fingerprint


def test_bad_chunks_are_user_errors(tmp_path):
  images, labels = _arrays(n=4)
  for chunk, match in [((images.astype(np.float32), labels), "uint8"),
                       ((images, labels[:3]), "has 3 labels but chunk 0 \\(images\\) has 4"),
                       ((images, labels + 3), "outside"),
                       # One check of labels serves npz files and shards: the same advice.
                       ((images, np.eye(3, dtype=np.int64)[labels]), r"y.argmax\(axis=1\)"),
                       ((images[:0], labels[:0]), "no examples")]:
    with pytest.raises(UserError, match=match):
      write_array_shards(tmp_path / "bad", [chunk], class_names=CLASSES)
    assert not (tmp_path / "bad").exists() and not list(tmp_path.iterdir())
  with pytest.raises(UserError, match="earlier chunks"):
    write_array_shards(tmp_path / "bad", [(images, labels), (images[:, :2], labels)],
                       class_names=CLASSES)


def test_damaged_shards_are_user_errors(shards):
  path, _, _ = shards
  data = (path / "images-00001.npy").read_bytes()
  (path / "images-00001.npy").write_bytes(data[:-7])
  with pytest.raises(UserError, match="truncated"):
    stream.ArrayShardSource(path)
  (path / "images-00001.npy").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
  source = stream.ArrayShardSource(path)  # same size: only the checksum sees it
  changed = "images-00001.npy changed since its manifest was written"
  with pytest.raises(UserError, match=changed):
    source.verify_checksums()
  source.read(np.arange(3))  # the first shard is intact
  with pytest.raises(UserError, match=changed + r".*write the shards again$"):
    source.read(np.arange(len(source)))  # reading the changed one hashes it first
  (path / "labels-00002.npy").unlink()
  with pytest.raises(UserError, match="missing"):
    stream.ArrayShardSource(path)


def test_image_folder_resizes_and_labels_by_sorted_class(tmp_path):
  root, colours = _image_folder(tmp_path / "folder")
  source = stream.open_source(root, image_size=(6, 8))
  assert source.class_names == CLASSES and source.num_examples == 15
  assert source.image_shape == (6, 8, 3)
  indices = np.array([14, 0, 7, 7, 3])
  images, labels = source.read(indices)
  assert images.shape == (5, 6, 8, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(labels, indices // 5)
  for image, index in zip(images, indices, strict=True):
    np.testing.assert_array_equal(image, np.broadcast_to(colours[index], (6, 8, 3)))
  gray = stream.ImageFolderSource(root, 4, grayscale=True)
  gray_images, _ = gray.read(np.array([1]))
  assert gray_images.shape == (1, 4, 4, 1)
  expected = Image.new("RGB", (1, 1), colours[1]).convert("L").getpixel((0, 0))
  assert int(gray_images[0, 0, 0, 0]) == expected
  # The fingerprint follows names and sizes (and the decoding), not pixel reads.
  assert stream.open_source(root, image_size=(6, 8)).fingerprint == source.fingerprint
  assert gray.fingerprint != source.fingerprint
  (root / "bee" / "img9.png").write_bytes((root / "bee" / "img0.png").read_bytes())
  assert stream.open_source(root, image_size=(6, 8)).fingerprint != source.fingerprint


def test_image_folder_mistakes_are_clear(tmp_path):
  root, _ = _image_folder(tmp_path / "folder")
  with pytest.raises(UserError, match="give open_source the size .* e.g. image_size=64 .*"
                                      f"`distill make-shards {root} {root}-shards --image-size "
                                      "64`"):
    stream.open_source(root)
  (root / "cat" / "notes.txt").write_text("not an image")
  (root / "bee" / "Thumbs.db").write_bytes(b"")
  (root / "bee" / ".DS_Store").write_bytes(b"")  # hidden: passed over
  with pytest.raises(UserError) as refused:
    stream.open_source(root, image_size=4)
  assert str(refused.value).startswith(f"2 file(s) in {root} are not images (expected .")
  assert str(refused.value).endswith(f": {root / 'bee' / 'Thumbs.db'}, {root / 'cat' / 'notes.txt'}"
                                     "; move them out of the image folder")  # all in one line
  (root / "cat" / "notes.txt").unlink()
  (root / "bee" / "Thumbs.db").unlink()
  (root / "dog").mkdir()
  with pytest.raises(UserError, match="dog has no images"):
    stream.open_source(root, image_size=4)
  (root / "dog").rmdir()
  (root / "cat" / "img0.png").write_bytes(b"not a png at all")
  source = stream.open_source(root, image_size=4)
  with pytest.raises(UserError, match="cannot read image .*img0.png"):
    source.read(np.array([10]))
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserError, match="no class folders"):
    stream.open_source(tmp_path / "empty", image_size=4)


def _picture(path, colour=(10, 20, 30)):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new("RGB", (6, 6), colour).save(path)


def test_class_folders_named_in_nfd_and_nfc_are_one_class(tmp_path):
  # macOS writes names in NFD: a class copied from it is 'café' in other bytes than one typed.
  nfc, nfd = (unicodedata.normalize(form, "café ☕") for form in ("NFC", "NFD"))
  assert nfc != nfd
  _picture(tmp_path / "photos" / "train" / nfd / "a.png", (200, 0, 0))
  _picture(tmp_path / "photos" / "train" / nfd / "b.png", (200, 0, 0))
  _picture(tmp_path / "photos" / "train" / nfc / "c.png", (200, 0, 0))  # both on Linux
  _picture(tmp_path / "photos" / "train" / "tea" / "d.png", (0, 0, 200))
  _picture(tmp_path / "photos" / "test" / nfc / "e.png", (200, 0, 0))
  _picture(tmp_path / "photos" / "test" / "tea" / "f.png", (0, 0, 200))
  source = stream.open_source(tmp_path / "photos" / "train", image_size=4)
  assert source.class_names == (nfc, "tea") and source.num_examples == 4
  images, labels = source.read(np.arange(4))
  assert labels.tolist() == [0, 0, 0, 1] and images[:3, 0, 0, 0].tolist() == [200] * 3
  # Each file is still opened by its own path.
  assert {path.parent.name for path in source.files} == {nfc, nfd, "tea"}
  assert all(path.is_file() for path in source.files)
  data = stream.open_stream_dataset(tmp_path / "photos", image_size=4, val_size=1)
  assert data.class_names == data.test.class_names == (nfc, "tea")
  out = tmp_path / "shards"
  result = run_cli("make-shards", tmp_path / "photos", out, "--image-size", "4", "-q")
  assert result.exit_code == 0, result.output
  assert stream.open_source(out / "train").class_names == (nfc, "tea")
  assert len(stream.open_source(out / "train")) == 4


def test_images_beside_the_class_folders_are_refused_in_one_line(tmp_path):
  root, _ = _image_folder(tmp_path / "photos" / "train")
  _picture(root / "loose.png")
  _picture(root / "Photo 1.JPG")
  (root / "README.txt").write_text("about these photos")  # not an image: not a stray one
  (root / ".hidden.png").write_bytes(b"")
  message = (f"{root} holds image files beside its class folders (Photo 1.JPG, loose.png): "
             f"move each into its class folder, or out of {root}")
  with pytest.raises(UserError) as refused:
    stream.open_source(root, image_size=4)
  assert str(refused.value) == message
  result = run_cli("make-shards", tmp_path / "photos", tmp_path / "out", "--image-size", "4")
  assert result.exit_code == 2 and result.stderr.strip() == f"error: {message}", result.output
  assert not (tmp_path / "out").exists()
  (root / "loose.png").unlink()
  (root / "Photo 1.JPG").unlink()
  assert len(stream.open_source(root, image_size=4)) == 15


def test_split_layout_and_validation_carve(tmp_path, shards):
  _, images, labels = shards
  root = tmp_path / "data"
  write_array_shards(root / "train", (images, labels), class_names=CLASSES, shard_size=8)
  write_array_shards(root / "test", (images[:5], labels[:5]), class_names=CLASSES)
  data = stream.open_stream_dataset(root, val_size=5, split_seed=3)
  assert isinstance(data.train, stream.ArrayShardSource) and len(data.test) == 5
  assert len(data.train_indices) == 18 and len(data.val_indices) == 5
  assert data.train_indices.dtype == np.int32
  np.testing.assert_array_equal(np.sort(np.concatenate([data.train_indices, data.val_indices])),
                                np.arange(23))
  order = np.random.default_rng(3).permutation(23)  # distill.data's rule
  np.testing.assert_array_equal(data.val_indices, order[:5])
  again = stream.open_stream_dataset(root, val_size=5, split_seed=3)
  assert again.fingerprint == data.fingerprint
  assert again.split_fingerprint("train") == data.split_fingerprint("train")
  other = stream.open_stream_dataset(root, val_size=5, split_seed=4)
  assert other.split_fingerprint("train") != data.split_fingerprint("train")
  assert stream.open_stream_dataset(root, val_size=0.2, train_limit=10).train_indices.shape == (10,)
  with pytest.raises(UserError, match="leaving none"):
    stream.open_stream_dataset(root, val_size=23)

  folders = tmp_path / "folders"
  _image_folder(folders / "train")
  _image_folder(folders / "test", sizes=((8, 8),))
  data = stream.open_stream_dataset(folders, image_size=5, val_size=0.2)
  assert (len(data.train_indices), len(data.val_indices), len(data.test)) == (12, 3, 3)
  assert data.image_shape == (5, 5, 3) and data.class_names == CLASSES
  (folders / "test" / "ant").rename(folders / "test" / "aardvark")
  # Both lists began alike, so their first names hid the difference: name it.
  with pytest.raises(UserError, match="have different classes: test lacks 'ant'; test has "
                                      "'aardvark', which train lacks"):
    stream.open_stream_dataset(folders, image_size=5)
  with pytest.raises(UserError, match="not resized"):
    stream.open_stream_dataset(root, image_size=7)


def test_classes_in_another_order_are_named(tmp_path, shards):
  _, images, labels = shards
  write_array_shards(tmp_path / "data" / "train", (images, labels), class_names=CLASSES)
  write_array_shards(tmp_path / "data" / "test", (images, labels), class_names=CLASSES[::-1])
  with pytest.raises(UserError, match="the same classes in another order"):
    stream.open_stream_dataset(tmp_path / "data")


def test_one_class_is_refused_when_the_stream_opens(tmp_path):
  images, _ = _arrays(n=6)
  write_array_shards(tmp_path / "one" / "train", (images, np.zeros(6, int)), class_names=["ant"])
  with pytest.raises(UserError, match="train has one class, 'ant'; a classifier needs at least "
                                      "two classes"):
    stream.open_stream_dataset(tmp_path / "one")
  # Two names, but every training image has the same label.
  for split in ("train", "test"):
    write_array_shards(tmp_path / "same" / split, (images, np.ones(6, int)),
                       class_names=["ant", "bee"])
  with pytest.raises(UserError, match=r"every image of .*train has label 1 \(class 'bee'\); "
                                      "a classifier needs at least two classes"):
    stream.open_training_stream(tmp_path / "same", val_size=1, split_seed=0, train_limit=None)


def test_training_from_an_image_folder_says_how_to_convert_it(tmp_path):
  photos = tmp_path / "photos"
  _image_folder(photos / "train")
  _image_folder(photos / "test", sizes=((8, 8),))
  # No option takes an image size for training: the way out is converting the folder.
  with pytest.raises(UserError, match=r"photos/train has no shards.json: --dataset stream trains "
                                      r"from array shards.*once, `distill make-shards "
                                      f"{photos} {photos}-shards --image-size 64`, and pass the "
                                      f"shards as --data-dir \\({photos}-shards\\)$") as error:
    stream.open_training_stream(photos, val_size=1, split_seed=0, train_limit=None)
  assert "image_size=224" not in str(error.value)


def _readme_block_after(marker):
  """The first ```python block after `marker` in the README."""
  text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
  start = text.index("```python\n", text.index(marker)) + len("```python\n")
  return text[start:text.index("```", start)]


def test_readme_conversion_snippet_makes_shards_training_opens(tmp_path, monkeypatch):
  # The snippet every message about image folders points at must keep working.
  monkeypatch.chdir(tmp_path)
  _image_folder(tmp_path / "photos" / "train")
  _image_folder(tmp_path / "photos" / "test", sizes=((8, 8), (9, 5)))
  exec(_readme_block_after("Convert an image folder to shards once"), {})  # noqa: S102
  data = stream.open_training_stream("data/photos-64", val_size=3, split_seed=0, train_limit=None)
  assert data.image_shape == (64, 64, 3) and data.class_names == CLASSES
  assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (12, 3, 6)


def test_readme_says_how_the_conversion_keeps_shape_and_grayscale(tmp_path, monkeypatch):
  # image_size=64 silently made non-square grayscale photos 64x64 RGB; the options the README
  # names beside the snippet must keep both.
  monkeypatch.chdir(tmp_path)
  snippet = _readme_block_after("Convert an image folder to shards once")
  readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
  after = readme.split(snippet, 1)[1]
  options = re.search(r"e\.g\. `(image_size=\(\d+, \d+\),\s+grayscale=True)`", after)
  assert options and "image_size=64" in snippet, "no options named beside the snippet's size"
  _image_folder(tmp_path / "photos" / "train")
  _image_folder(tmp_path / "photos" / "test", sizes=((8, 8),))
  exec(snippet.replace("image_size=64", " ".join(options[1].split())), {})  # noqa: S102
  data = stream.open_training_stream("data/photos-64", val_size=3, split_seed=0, train_limit=None)
  assert data.image_shape == (20, 28, 1)


def test_shard_chunks_say_how_to_fix_their_images(tmp_path):
  labels = np.arange(4) % 3
  with pytest.raises(UserError, match=r"\(images\) has shape \(4, 3, 8, 8\), which looks "
                                      r"channels-first.*x.transpose\(0, 2, 3, 1\)"):
    write_array_shards(tmp_path / "a", (np.zeros((4, 3, 8, 8), np.uint8), labels),
                       class_names=CLASSES)
  with pytest.raises(UserError, match=r"got float64; they look like 0..1 floats: convert with "
                                      r"`\(x \* 255\).round\(\).astype\(np.uint8\)`"):
    write_array_shards(tmp_path / "b", (np.full((4, 8, 8), 0.5), labels), class_names=CLASSES)


def _feeder(source, labels, order, rows=None, **options):
  """A HostFeeder over `source` (rows `rows`, default all in order) on this process's devices."""
  rows = np.arange(source.num_examples) if rows is None else rows
  return HostFeeder(stream.Rows(source, rows), labels[rows], {}, order, parallel.make_mesh(),
                    **options)


def _host(dispatch):
  return {name: np.asarray(value) for name, value in dispatch.items()}


def test_host_feeder_reads_the_asked_batches_in_order(shards):
  path, images, labels = shards
  source = stream.ArrayShardSource(path)
  rows = np.random.default_rng(5).permutation(source.num_examples)  # positions -> global rows
  # Steps 2..9 cross three epochs (3 steps each), so the threads ask DataOrder
  # for different epochs at once; dispatches of 1 to 3 steps.
  plan = [(2, 1), (3, 2), (5, 1), (6, 3), (9, 1)]
  feeder = _feeder(source, labels, DataOrder(source.num_examples, batch_size=6, seed=1), rows,
                   threads=3, buffer=3)
  dispatches = [_host(dispatch) for dispatch in feeder.dispatches(plan)]
  assert len(dispatches) == len(plan)
  expected_order = DataOrder(source.num_examples, batch_size=6, seed=1)
  for dispatch, (first, count) in zip(dispatches, plan, strict=True):
    positions = expected_order.indices(first, count)
    assert set(dispatch) == {"images", "labels", "index"}
    assert dispatch["index"].dtype == np.int32 and dispatch["labels"].dtype == np.int32
    np.testing.assert_array_equal(dispatch["index"], positions)
    direct_images, direct_labels = source.read(rows[positions.reshape(-1)])
    np.testing.assert_array_equal(dispatch["images"], direct_images.reshape(count, 6, 4, 5, 3))
    np.testing.assert_array_equal(dispatch["labels"], direct_labels.reshape(count, 6))
    np.testing.assert_array_equal(dispatch["images"], images[rows[positions]])
  again = _feeder(source, labels, DataOrder(source.num_examples, batch_size=6, seed=1), rows,
                  threads=2, buffer=1)
  for first, second in zip(dispatches, again.dispatches(plan), strict=True):
    for key in first:
      np.testing.assert_array_equal(first[key], np.asarray(second[key]))
  assert list(feeder.dispatches([])) == []


def test_host_feeder_reads_image_folders_and_stops_early(tmp_path):
  root, colours = _image_folder(tmp_path / "folder")
  source = stream.open_source(root, image_size=3)
  labels = np.arange(15) // 5
  feeder = _feeder(source, labels, DataOrder(15, batch_size=2, seed=0))
  threads_before = set(threading.enumerate())
  dispatches = feeder.dispatches([(step, 1) for step in range(7)])
  first = _host(next(dispatches))
  positions = DataOrder(15, batch_size=2, seed=0).indices(0, 1)
  for image, position in zip(first["images"][0], positions[0], strict=True):
    np.testing.assert_array_equal(image, np.broadcast_to(colours[position], (3, 3, 3)))
  np.testing.assert_array_equal(first["labels"], positions // 5)
  readers = set(threading.enumerate()) - threads_before
  assert readers, "Grain reads ahead in threads of its own"
  dispatches.close()  # Stops Grain's threads and drops what they read ahead.
  for thread in readers:
    thread.join(timeout=10)
  assert not [thread.name for thread in readers if thread.is_alive()]


def test_host_feeder_passes_read_errors_on(tmp_path):
  root, _ = _image_folder(tmp_path / "folder")
  (root / "bee" / "img2.png").write_bytes(b"broken")
  source = stream.open_source(root, image_size=3)
  feeder = _feeder(source, np.arange(15) // 5, DataOrder(15, batch_size=3, seed=0))
  with pytest.raises(UserError, match="img2.png"):
    list(feeder.dispatches([(0, 2), (2, 3)]))  # one epoch: every image, img2.png too


def test_process_shares_concatenate_to_the_global_batch(monkeypatch):
  order = DataOrder(40, batch_size=12, seed=0)
  batches = order.indices(3, 2)  # [2 steps, 12]
  np.testing.assert_array_equal(order.local_indices(3, 2), batches)  # one process: all of it

  def shares(count):
    monkeypatch.setattr(jax, "process_count", lambda: count)
    found = []
    for index in range(count):
      monkeypatch.setattr(jax, "process_index", lambda index=index: index)
      found.append(order.local_indices(3, 2))
    return found

  halves = shares(2)
  np.testing.assert_array_equal(halves[0], batches[:, :6])
  np.testing.assert_array_equal(np.concatenate(halves, axis=1), batches)
  thirds = shares(3)
  np.testing.assert_array_equal(thirds[1], batches[:, 4:8])
  np.testing.assert_array_equal(np.concatenate(thirds, axis=1), batches)


def _targets(n=23, c=3, seed=0):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(n, c)).astype(np.float32)
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  return probs, logits


def test_target_shards_round_trip(tmp_path):
  probs, logits = _targets()
  path = write_target_shards(tmp_path, _chunks(probs, logits, 6), meta=META,
                             num_examples=23, shard_size=10)
  assert path == tmp_path / "targets-shards"
  targets = open_target_shards(tmp_path, num_examples=23, num_classes=3,
                               verify_checksums=True)
  indices = np.array([22, 0, 10, 9, 15])
  np.testing.assert_array_equal(targets.read(indices), probs[indices])
  np.testing.assert_array_equal(targets.read_logits(indices), logits[indices])
  assert targets.meta["teacher"] == META["teacher"] and targets.meta["temperature"] == 2.0
  assert targets.meta["num_examples"] == 23 and len(targets.meta["shards"]) == 3
  check_targets_match(targets.meta, dataset_name="tiny", fingerprint="f" * 64,
                      train_fingerprint="t" * 64, num_examples=23, num_classes=3)
  with pytest.raises(UserError, match="made for other data"):
    open_target_shards(path, num_examples=24)
  with pytest.raises(UserError, match="row-aligned"):
    write_target_shards(tmp_path / "other", (probs, logits), meta=META, num_examples=30)
  with pytest.raises(UserError, match="temperature"):
    write_target_shards(tmp_path / "other", (probs, logits),
                        meta={k: v for k, v in META.items() if k != "temperature"})
  with pytest.raises(UserError, match="not all finite"):
    write_target_shards(tmp_path / "other", (probs * np.nan, logits), meta=META)


def test_corrupted_target_shard_fails_its_checksum(tmp_path):
  probs, logits = _targets()
  path = write_target_shards(tmp_path, (probs, logits), meta=META, shard_size=10)
  shard = path / "probs-00001.npy"
  data = bytearray(shard.read_bytes())
  data[-5] ^= 0xFF
  shard.write_bytes(bytes(data))
  targets = open_target_shards(tmp_path)  # opening checks only shapes and sizes
  changed = "probs-00001.npy changed since its manifest was written"
  with pytest.raises(UserError, match=changed):
    targets.verify_checksums()
  with pytest.raises(UserError, match=changed):
    open_target_shards(tmp_path, verify_checksums=True)
  with pytest.raises(UserError, match=changed):
    open_target_shards(tmp_path).read(np.arange(10, 20))  # the first read of the shard
  manifest = json.loads((path / "manifest.json").read_text())
  manifest["num_classes"] = 4
  manifest["class_names"].append("dog")
  (path / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(UserError, match="manifest says"):
    open_target_shards(tmp_path)
  with pytest.raises(UserError, match="no target shards"):
    open_target_shards(tmp_path / "nowhere")


def test_make_shards_converts_train_and_test_folders_as_open_source_reads_them(tmp_path):
  for split in ("train", "test"):
    _image_folder(tmp_path / "photos" / split)
  out = tmp_path / "data" / "photos-6x8"
  result = run_cli("make-shards", tmp_path / "photos", out, "--image-size", "6x8", "-q")
  assert result.exit_code == 0, result.output
  assert result.stdout.strip() == f"shards: {out / 'train'}, {out / 'test'}"
  for split in ("train", "test"):
    folder = stream.open_source(tmp_path / "photos" / split, image_size=(6, 8))
    shards = stream.open_source(out / split)
    assert shards.class_names == folder.class_names == CLASSES
    everything = np.arange(len(folder))
    for got, expected in zip(shards.read(everything), folder.read(everything), strict=True):
      np.testing.assert_array_equal(got, expected)
  data = stream.open_stream_dataset(out, val_size=3)  # what --dataset stream opens
  assert (len(data.train_indices), len(data.test)) == (12, 15)
  # Again: refused without --overwrite, before decoding anything; then replaced.
  again = run_cli("make-shards", tmp_path / "photos", out, "--image-size", "6x8", "-q")
  assert again.exit_code == 2
  assert again.stderr.strip() == (f"error: {out / 'train'} already exists and is not empty; pass "
                                  "--overwrite to replace it, or give another --out")
  assert run_cli("make-shards", tmp_path / "photos", out, "--image-size", "6x8", "-q",
                 "--overwrite").exit_code == 0


def test_make_shards_mistakes_are_one_line_and_write_nothing(tmp_path):
  photos, _ = _image_folder(tmp_path / "photos")
  for args, message in [
      (["--image-size", "big"], "--image-size 'big' is not a size: give 64, or HxW such as 48x64"),
      (["--image-size", "0"], "image size must be positive, got 0"),
  ]:
    result = run_cli("make-shards", photos, tmp_path / "out", *args)
    assert result.exit_code == 2 and result.stderr.strip() == f"error: {message}", result.output
  (tmp_path / "taken").write_text("a file where the shard folder would go")
  taken = run_cli("make-shards", photos, tmp_path / "taken", "--image-size", "8")
  assert taken.exit_code == 2
  assert taken.stderr.strip() == f"error: {tmp_path / 'taken'} exists and is not a folder"
  inside = run_cli("make-shards", photos, photos / "shards", "--image-size", "8")
  assert (f"error: --out {photos / 'shards'} is inside the image folder {photos}, where the "
          "shards would read as a class of images") in inside.stderr
  (photos / "cat" / "notes.txt").write_text("mine")
  stray = run_cli("make-shards", photos, tmp_path / "out", "--image-size", "8")
  assert "are not images" in stray.stderr and stray.exit_code == 2
  assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".*"))
  (photos / "cat" / "notes.txt").unlink()
  broken = photos / "cat" / "broken.jpg"
  Image.new("RGB", (40, 30), (200, 10, 10)).save(broken)
  broken.write_bytes(broken.read_bytes()[:200])  # a copy cut short
  damaged = run_cli("make-shards", photos, tmp_path / "out", "--image-size", "8", "-q")
  assert damaged.exit_code == 2 and damaged.stderr.startswith(f"error: cannot read image {broken}")
  assert damaged.stderr.strip().endswith("the file looks damaged: replace it, or leave it out")
  assert not (tmp_path / "out").exists()  # not even an empty folder
  broken.unlink()
  one = run_cli("make-shards", photos, tmp_path / "out", "--image-size", "8", "-q")
  assert one.exit_code == 0 and stream.open_source(tmp_path / "out").class_names == CLASSES
  shards_again = run_cli("make-shards", tmp_path / "out", tmp_path / "other", "--image-size", "8")
  assert "holds array shards already: train from it with --dataset stream" in shards_again.stderr


def test_an_image_folder_given_as_npz_data_is_told_to_convert(tmp_path):
  photos, _ = _image_folder(tmp_path / "photos")
  result = run_cli("teacher", "--recipe", "digits", "--dataset", "npz", "--data-dir", photos)
  assert result.exit_code == 2
  assert result.stderr.strip() == (
      f"error: dataset npz needs a .npz file, but {photos} is a folder of images in class "
      f"sub-folders: convert it to array shards once (`distill make-shards {photos} "
      f"{photos}-shards --image-size 64`) and pass those with --dataset stream")


def test_make_shards_of_one_folder_names_its_progress_once_and_says_it_needs_a_test_split(
    tmp_path):
  photos, _ = _image_folder(tmp_path / "photos")
  out = tmp_path / "out"
  result = run_cli("make-shards", photos, out, "--image-size", "8")
  assert result.exit_code == 0, result.output
  assert "images images" not in result.stderr and "images: 100%" in result.stderr
  assert f"\n15 images of 3 classes (8x8x3) -> {out}\n" in result.stderr
  assert result.stderr.strip().endswith(
      f"note: {out} is one shard folder, and streamed training (--dataset stream) needs it as "
      "train/ beside a test/ split: move it to DATA/train, write held-out images as shards in "
      "DATA/test (`distill make-shards TEST_IMAGES DATA/test --image-size 8`), then pass "
      "--data-dir DATA")
  with pytest.raises(UserError) as refused:
    stream.open_training_stream(out, val_size=1, split_seed=0, train_limit=None)
  assert str(refused.value) == (
      f"{out} has no test/ split, which streamed training evaluates on: it is one shard folder; "
      "move it to DATA/train, write the held-out images as shards in DATA/test (`distill "
      "make-shards TEST_IMAGES DATA/test --image-size 8`), then pass --data-dir DATA")
  # Quiet: no notes.
  quiet = run_cli("make-shards", photos, tmp_path / "quiet", "--image-size", "8", "-q")
  assert quiet.exit_code == 0 and quiet.stderr == ""


def test_shards_of_train_without_test_say_how_to_write_the_test_split(tmp_path):
  """make-shards succeeded and training refused its output; given SHARDS/train instead, the
  refusal pointed back at SHARDS, the folder that had just failed."""
  _image_folder(tmp_path / "photos" / "train")
  out = tmp_path / "shards"
  result = run_cli("make-shards", tmp_path / "photos", out, "--image-size", "6x8", "--grayscale")
  assert result.exit_code == 0, result.output
  make = f"`distill make-shards TEST_IMAGES {out / 'test'} --image-size 6x8 --grayscale`"
  assert result.stderr.strip().endswith(
      f"note: {tmp_path / 'photos'} has train/ but no test/, so these shards have no test/ "
      "split, which streamed training (--dataset stream) evaluates on: write held-out images as "
      f"shards in {out / 'test'} ({make}), then pass --data-dir {out}")
  with pytest.raises(UserError) as refused:
    stream.open_training_stream(out, val_size=1, split_seed=0, train_limit=None)
  assert str(refused.value) == (
      f"{out} has no test/ split, which streamed training evaluates on: write the held-out "
      f"images as shards in {out / 'test'}: {make} (TEST_IMAGES: a folder of the class folders "
      "train/ has)")
  with pytest.raises(UserError) as refused:
    stream.open_training_stream(out / "train", val_size=1, split_seed=0, train_limit=None)
  assert str(refused.value) == (
      f"{out / 'train'} has no test/ split, which streamed training evaluates on, and {out}, "
      f"whose train/ it is, has none either: write the held-out images as shards in "
      f"{out / 'test'}: {make}, then pass --data-dir {out}")
  # The command the messages give makes the split training opens.
  _image_folder(tmp_path / "held-out", sizes=((8, 8),))
  result = run_cli("make-shards", tmp_path / "held-out", out / "test", "--image-size", "6x8",
                   "--grayscale", "-q")
  assert result.exit_code == 0, result.output
  data = stream.open_training_stream(out, val_size=1, split_seed=0, train_limit=None)
  assert len(data.x_test) == 3 and data.image_shape == (6, 8, 1)
  _image_folder(tmp_path / "photos" / "test", sizes=((8, 8),))
  both = run_cli("make-shards", tmp_path / "photos", tmp_path / "both", "--image-size", "6x8")
  assert both.exit_code == 0 and "note:" not in both.stderr


def test_images_beside_train_and_test_are_refused_in_one_line(tmp_path):
  for split in ("train", "test"):
    _image_folder(tmp_path / "photos" / split, sizes=((8, 8),))
  _picture(tmp_path / "photos" / "cover.jpg")
  (tmp_path / "photos" / "README.md").write_text("not an image: left alone")
  photos = tmp_path / "photos"
  message = (f"{photos} holds image files beside train/ and test/ (cover.jpg): move each into a "
             f"class folder of train/ or test/, or out of {photos}")
  result = run_cli("make-shards", photos, tmp_path / "out", "--image-size", "4")
  assert result.exit_code == 2 and result.stderr.strip() == f"error: {message}", result.output
  assert not (tmp_path / "out").exists()
  with pytest.raises(UserError) as refused:
    stream.open_stream_dataset(photos, image_size=4)
  assert str(refused.value) == message
  (photos / "cover.jpg").unlink()
  assert run_cli("make-shards", photos, tmp_path / "out", "--image-size", "4",
                 "-q").exit_code == 0
  _picture(tmp_path / "out" / "preview.png")  # beside shards, images are no data
  assert len(stream.open_stream_dataset(tmp_path / "out").test) == 3


def test_an_image_size_turned_the_other_way_is_noted(tmp_path):
  """40x24 asked of images 24 high and 40 wide: every crop kept a third of its image."""
  for name in ("ant", "bee"):
    (tmp_path / "wide" / name).mkdir(parents=True)
    for number in range(3):
      Image.new("RGB", (40, 24)).save(tmp_path / "wide" / name / f"{number}.png")  # W, H
  result = run_cli("make-shards", tmp_path / "wide", tmp_path / "out", "--image-size", "40x24")
  assert result.exit_code == 0, result.output
  assert result.stderr.startswith(
      "note: the images are 24x40 (HxW) and --image-size 40x24 is HxW too: scaling each to cover "
      "40x24 and center-cropping keeps 36% of it; did you mean --image-size 24x40?\n")
  result = run_cli("make-shards", tmp_path / "wide", tmp_path / "right", "--image-size", "24x40")
  assert result.exit_code == 0 and "did you mean" not in result.stderr
  # Most of them, in several sizes: the commonest is named.
  Image.new("RGB", (60, 30)).save(tmp_path / "wide" / "bee" / "0.png")
  Image.new("RGB", (20, 30)).save(tmp_path / "wide" / "bee" / "1.png")
  result = run_cli("make-shards", tmp_path / "wide", tmp_path / "mixed", "--image-size", "40x24")
  assert result.exit_code == 0, result.output
  assert result.stderr.startswith(
      "note: most images are landscape (such as 24x40, HxW) and --image-size 40x24 is HxW too: "
      "scaling a 24x40 image to cover 40x24 and center-cropping keeps 36% of it; did you mean "
      "--image-size 24x40?\n")
