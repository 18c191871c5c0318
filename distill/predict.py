"""Classifying images with a finished run or an exported model file (`distill predict`).

`predict` classifies image files with a run directory (restores the model from
what its summary records: no data needed, except for runs from before
summaries recorded their inputs) or an exported file (needs only the file and
its sidecar, not the recipe, the data or the training code). Restoring a run
and running an exported file are distill.model_export's.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distill import rundir
from distill.data.checks import (
    channels_first,
    channels_first_advice,
    checked_labels,
    uint8_hint,
)
from distill.data.formats import class_names_from_array
from distill.errors import UserError, first_few, one_line
from distill.io import read_json
from distill.model_export import (
    EXPORT_FORMATS,
    PREDICT_BATCH,
    deserialize_stablehlo,
    finished_summary,
    onnx_session,
    restore,
    run_onnx,
    run_stablehlo,
    sidecar_path,
)

_IMAGE_SUFFIXES_ARRAY = (".npz", ".npy")


def predict(source: Path, image_paths: Sequence[Path], *, top_k: int = 3) -> dict[str, Any]:
  """The `top_k` classes and probabilities of each image, by a run or an exported model.

  Args:
    source: a finished run directory, or an exported model file (with its
      sidecar `sidecar_path(source)`; nothing else is read).
    image_paths: PNG/JPEG files (Pillow; turned upright by their EXIF
      orientation, converted to the model's channels, grayscale or RGB, and
      scaled to cover its H x W and center-cropped, as an image folder's
      training images are: `distill.data.stream.decode_image`), or
      `.npy` / `.npz` files of uint8 images shaped [N, H, W, C] or [H, W, C]
      ([N, H, W] or [H, W] for one channel), used as they are. An `.npz`'s
      images are its `images` (labels: `labels`), else an npz data set's
      held-out `x_test` (`y_test`), else its `x` (`y`) or keras' `x_train`
      (`y_train`), else its only array; labels must be class indices of the
      model (and its `class_names`, if it has them, the model's). A folder
      holds pictures, or class folders named by the model's classes
      (`<class>/<images>`, as an image folder trains), which label them.
    top_k: classes per image (at most the number of classes).

  Returns:
    {"source", "format" (run, stablehlo or onnx), "model", "role",
     "predictions": [{"image", "top": [{"class", "index", "probability"}],
                      "label": {"class", "index"} (labelled images only)}],
     "inputs": [{"file", "images", "labels", "not_read"}] (the keys read per .npz),
     "accuracy": {"top1", "correct", "labelled", "unlabelled"}, or None without labels}.
  """
  if top_k < 1:
    raise UserError(f"--top-k must be at least 1, got {top_k}")
  if not image_paths:
    raise UserError("no images given; pass --images FILE...")
  source = Path(source)
  _check_model_first(source, [Path(path) for path in image_paths])
  # Missing images fail before a model is loaded (restoring a run takes seconds).
  for path in image_paths:
    _check_image_file(Path(path))
  if source.is_dir():
    classify, meta = _run_classifier(source)
  elif source.is_file():
    classify, meta = _exported_classifier(source)
  else:
    raise UserError(f"{source} is not found; give a finished run's folder or an exported model "
                    "file")
  class_names = meta["class_names"]
  read = read_images(image_paths, tuple(meta["image_shape"]), class_names)
  logits = classify(read.images)
  probabilities = _softmax(logits)
  k = min(top_k, len(class_names))
  predictions = []
  for name, probs, label in zip(read.names, probabilities, read.labels, strict=True):
    order = np.argsort(-probs, kind="stable")[:k]
    prediction = {"image": name, "top": [
        {"class": class_names[i], "index": int(i), "probability": float(probs[i])}
        for i in order]}
    if label >= 0:
      prediction["label"] = {"class": class_names[label], "index": int(label)}
    predictions.append(prediction)
  return {"source": str(source), "format": meta["format"], "model": meta["model"],
          "role": meta["role"], "predictions": predictions,
          "inputs": [{key: value for key, value in entry.items() if key != "class_names"}
                     for entry in read.inputs],
          "accuracy": _accuracy(logits, read.labels)}


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> dict[str, Any] | None:
  """Top-1 accuracy on the labelled images (label -1: none), or None where none are."""
  from distill.metrics import accuracy  # noqa: PLC0415

  labelled = labels >= 0
  if not labelled.any():
    return None
  correct = int(accuracy(np.asarray(logits)[labelled], labels[labelled], reduction="sum"))
  count = int(labelled.sum())
  return {"top1": correct / count, "correct": correct, "labelled": count,
          "unlabelled": int(len(labels) - count)}


def _is_model(path: Path) -> bool:
  """Whether `path` is something `predict` classifies with: a run folder or an exported file."""
  if path.is_dir():
    return rundir.folder_kind(path) in rundir.FINISHED_RUNS
  return path.is_file() and sidecar_path(path).is_file()


def _check_model_first(source: Path, image_paths: list[Path]) -> None:
  """Refuses a model given among the images (`--images A B MODEL`) in place of the source.

  The command line takes one value per --images and the rest as positional
  arguments, so `--images A B MODEL` arrives as source B and images [A, MODEL].
  """
  if _is_model(source):
    return
  models = [path for path in image_paths if _is_model(path)]
  if not models:
    return
  images = [path for path in image_paths if path != models[0]]
  images = [*images[:1], source, *images[1:]]
  raise UserError(f"{source} is no model but {models[0]} is; give the model first: distill "
                  f"predict {models[0]} --images {' '.join(map(str, images))}")


def predict_logits(source: Path, images: np.ndarray) -> np.ndarray:
  """Float32 logits [N, C] of uint8 images [N, H, W, C] by a run folder or an exported file.

  The images must already have the model's shape (see `load_images` for
  files of other sizes); one image [H, W, C], or grey ones without their
  channel axis, are taken too. Other dtypes, shapes or channels-first arrays
  are refused as `predict` refuses them in a file, with the numpy call that
  fixes them: 0..1 floats cast to uint8 would be all but black.
  """
  source = Path(source)
  classify, meta = _run_classifier(source) if source.is_dir() else _exported_classifier(source)
  images = _shaped(np.asarray(images), "images", tuple(meta["image_shape"]))
  if not len(images):
    return np.zeros((0, len(meta["class_names"])), np.float32)
  return np.asarray(classify(images), np.float32)


def format_predictions(result: dict[str, Any]) -> str:
  """`predict`'s result as text: one line per image, its top classes with probabilities,
  e.g. 'digit.png: 0 17.14%, 8 14.51%' (`--json` keeps every digit); then the accuracy
  where the files held labels, e.g. 'accuracy 91.50% (183 of 200) on test.npz's y_test'."""
  lines = []
  for prediction in result["predictions"]:
    # A percentage, so that a class named by a number (digits' "0") does not read as a score.
    top = ", ".join(f"{entry['class']} {100 * entry['probability']:.2f}%"
                    for entry in prediction["top"])
    lines.append(f"{prediction['image']}: {top}")
  score = result.get("accuracy")
  if score:
    labels = ", ".join(f"{entry['file']}'s {entry['labels']}" for entry in result["inputs"]
                       if entry["labels"])
    unlabelled = (f"; {score['unlabelled']} image(s) without labels not counted"
                  if score["unlabelled"] else "")
    lines.append(f"accuracy {100 * score['top1']:.2f}% ({score['correct']} of "
                 f"{score['labelled']}) on {labels}{unlabelled}")
  return "\n".join(lines)


def input_notes(result: dict[str, Any]) -> list[str]:
  """One line per .npz whose images `predict` chose among a data set's keys: which it read."""
  notes = []
  for entry in result["inputs"]:
    if entry["images"] not in {images for images, _ in _NPZ_KEYS[1:]}:
      continue  # 'images', or the file's only array: nothing was chosen.
    labels = f"labels {entry['labels']!r}" if entry["labels"] else "no labels"
    why = ("the held-out test split, never trained on" if entry["images"] == "x_test" else
           "the file has no 'x_test'; a model trained on this file trained on most of them")
    also = "".join(f"; not {key!r}" for key in entry["not_read"])
    notes.append(f"{entry['file']}: predicting key {entry['images']!r} with {labels} "
                 f"({why}{also})")
  return notes


def _run_classifier(run_dir: Path) -> tuple[Callable, dict[str, Any]]:
  """A finished run's model as images -> logits, and what `predict` needs to know of it."""
  summary = finished_summary(run_dir)
  trained, _, dataset, recipe = restore(run_dir, summary)
  meta = {"format": "run", "image_shape": dataset.image_shape,
          "class_names": list(dataset.class_names),
          "model": summary.get("model", recipe[summary["role"]]["model"]),
          "role": summary["role"]}
  def classify(images):
    return trained.logits(images, PREDICT_BATCH)

  return classify, meta


def _exported_classifier(path: Path) -> tuple[Callable, dict[str, Any]]:
  """An exported model file as images -> logits, from the file and its sidecar alone."""
  meta = read_exported_sidecar(path)
  data = path.read_bytes()
  if hashlib.sha256(data).hexdigest() != meta["file_sha256"]:
    raise UserError(f"{sidecar_path(path)} does not describe {path} (sha256 differs); "
                    "export the model again")
  if meta["format"] == "stablehlo":
    exported = deserialize_stablehlo(data, path)

    def classify(images):
      return run_stablehlo(exported, images)
  else:
    session = onnx_session(data, path)

    def classify(images):
      return run_onnx(session, images)
  shape = meta["input"]["shape"]
  return classify, {**meta, "image_shape": tuple(int(x) for x in shape[1:])}


def read_exported_sidecar(path: Path) -> dict[str, Any]:
  """The sidecar of an exported model, checked for the keys `predict` reads."""
  sidecar = sidecar_path(path)
  if not sidecar.exists():
    model = path.with_name(path.name.removesuffix(".json"))
    if path.name.endswith(".json") and model.is_file():
      raise UserError(f"{path} is the sidecar of {model}; give the model file {model}")
    raise UserError(f"{path} is a file but no model `distill export-model` wrote (no sidecar "
                    f"{sidecar.name} beside it); give a finished run's folder or an exported "
                    "model file")
  meta = read_json(sidecar, "export sidecar")
  missing = [key for key in ("format", "input", "class_names", "file_sha256", "model", "role")
             if not isinstance(meta, dict) or key not in meta]
  if missing:
    raise UserError(f"{sidecar} is not an export sidecar (missing {', '.join(missing)})")
  shape = meta["input"].get("shape") if isinstance(meta["input"], dict) else None
  if (meta["format"] not in EXPORT_FORMATS or not isinstance(shape, list) or len(shape) != 4
      or not meta["class_names"]):
    raise UserError(f"{sidecar} is not an export sidecar distill can read")
  return meta


def _check_image_file(path: Path) -> None:
  if not path.exists():
    raise UserError(f"image file not found: {path}")


def _class_of_folder(folder: str, class_names: Sequence[str]) -> int | None:
  """The model's class a folder of images holds: named as the class is (in NFC, see
  `class_name`: a folder copied from macOS names it too), else as `class_key` matches it
  (case, spaces and signs aside: no folder can be named 'T-shirt/top'), else by its number;
  None when it names none of them."""
  from distill.data.formats import class_key  # noqa: PLC0415
  from distill.data.stream import class_name  # noqa: PLC0415

  for key in (class_name, class_key):
    matches = [index for index, name in enumerate(class_names) if key(name) == key(folder)]
    if len(matches) == 1:
      return matches[0]
  numbered = folder.isdecimal() and int(folder) < len(class_names)
  # Where classes are named by numbers ('1' to '10'), a number is a name, not a position.
  if numbered and not any(class_key(name).isdecimal() for name in class_names):
    return int(folder)
  return None


def _read_folder(path: Path, image_shape: tuple[int, int, int], class_names: Sequence[str] | None
                 ) -> tuple[list[str], np.ndarray, np.ndarray]:
  """(names, images, labels) of a folder: of class folders named by the model's classes
  (`<class>/<images>`, as image folders train; each image labelled by its folder), else of
  image files (unlabelled, -1)."""
  from distill.data.stream import (  # noqa: PLC0415
    IMAGE_EXTENSIONS,
    ImageFolderSource,
    class_folders,
  )

  classes = sorted(class_folders(path))
  if classes:
    model_classes = {name: _class_of_folder(name, class_names or []) for name in classes}
    unknown = [name for name, index in model_classes.items() if index is None]
    if unknown and set(unknown) <= {"train", "test"} and (path / "test").is_dir():
      raise UserError(f"{path} holds the splits {first_few(unknown, quoted=True)}, not class "
                      f"folders: give one of them, e.g. --images {path / 'test'}")
    if unknown:
      raise UserError(f"{path} holds folders {first_few(unknown, quoted=True)}, which are not "
                      f"the model's classes ({first_few(class_names or [], quoted=True)}); give "
                      "a folder of <class>/<images>, each folder named by its class (case, "
                      "spaces and signs aside: 't-shirt_top' is 'T-shirt/top') or number "
                      f"(0 to {len(class_names or []) - 1}), or a folder of images")
    _check_takes_pictures(image_shape)
    folder = ImageFolderSource(path, image_shape[:2], grayscale=image_shape[-1] == 1)
    images, labels = folder.read(np.arange(len(folder)))
    to_model = np.array([model_classes[name] for name in folder.class_names])
    return [str(file) for file in folder.files], images, to_model[labels]
  files = sorted(child for child in path.iterdir()
                 if child.is_file() and not child.name.startswith("."))
  others = [file.name for file in files if file.suffix.lower() not in IMAGE_EXTENSIONS]
  if others or not files:
    found = f"files that are not images ({first_few(others)})" if others else "no image files"
    raise UserError(f"{path} holds {found}; give a folder of images, or of <class>/<images>")
  images = np.stack([_read_picture(file, image_shape) for file in files])
  return [str(file) for file in files], images, np.full(len(files), -1, np.int64)


def load_images(paths: Sequence[Path],
                image_shape: tuple[int, int, int]) -> tuple[list[str], np.ndarray]:
  """Reads image files as the model's uint8 [N, H, W, C] batch; returns (names, images).

  See `predict` for what is accepted. An array file of N images is named
  `FILE[i]` per image.
  """
  read = read_images(paths, image_shape)
  return read.names, read.images


@dataclasses.dataclass(frozen=True)
class ReadImages:
  """Image files as the model's batch (`read_images`).

  names: one per image (`FILE[i]` for an array file of several).
  images: uint8 [N, H, W, C].
  labels: int64 [N], the class index each .npz's labels give, -1 where a file has none.
  inputs: per .npz, {"file", "images", "labels", "not_read"}: the keys read (labels None
    where it has none) and the image keys it also holds that were not; per folder of class
    folders, images "<class>/<images>" and labels "class folders".
  """
  names: list[str]
  images: np.ndarray
  labels: np.ndarray
  inputs: list[dict[str, Any]]


def read_images(paths: Sequence[Path], image_shape: tuple[int, int, int],
                class_names: Sequence[str] | None = None) -> ReadImages:
  """Reads image files, and the labels an .npz holds (checked against the model's
  `class_names`: the range of its labels, and its own class_names where it has them)."""
  names, batches, labels, inputs = [], [], [], []
  for path in map(Path, paths):
    _check_image_file(path)
    file_labels = None
    if path.is_dir():
      folder_names, images, file_labels = _read_folder(path, image_shape, class_names)
      names.extend(folder_names)
      if (file_labels >= 0).any():
        inputs.append({"file": str(path), "images": "<class>/<images>",
                       "labels": "class folders", "not_read": []})
    elif path.suffix.lower() in _IMAGE_SUFFIXES_ARRAY:
      images, file_labels, read = _read_array_images(path, image_shape)
      names.extend([str(path)] if len(images) == 1 else
                   [f"{path}[{i}]" for i in range(len(images))])
      if read is not None:
        inputs.append(read)
        if file_labels is not None:
          file_labels = _checked_labels(path, read, file_labels, len(images), class_names)
    else:
      images = _read_picture(path, image_shape)[None]
      names.append(str(path))
    batches.append(images)
    labels.append(np.full(len(images), -1, np.int64) if file_labels is None
                  else file_labels.astype(np.int64))
  images = np.concatenate(batches)
  if len(images) == 0:
    raise UserError("the image files hold no images")
  return ReadImages(names, images, np.concatenate(labels), inputs)


def _checked_labels(path: Path, read: dict[str, Any], labels: np.ndarray, num_images: int,
                    class_names: Sequence[str] | None) -> np.ndarray:
  """An .npz's labels as the data set loader checks them: one integer per image, each a
  class of the model; and its class_names (if any) the model's, so the scores mean something."""
  own = read.get("class_names")
  if own is not None and class_names is not None and list(own) != list(class_names):
    raise UserError(f"{path}: key 'class_names' ({first_few(own, quoted=True)}) are not the "
                    f"model's classes ({first_few(class_names, quoted=True)}), so its labels "
                    f"{read['labels']!r} cannot score it; give labels of the model's classes")
  return checked_labels(np.reshape(labels, -1) if np.ndim(labels) == 0 else labels,
                        f"{path}: key {read['labels']!r}", num_images,
                        f"key {read['images']!r}",
                        None if class_names is None else len(class_names))


# An .npz's images and their labels, in the order they are looked for: `images` (and
# `labels`), then an npz data set's keys (`distill teacher --dataset npz`). Its held-out
# split x_test comes before x: a model trained on the file never saw it.
_NPZ_KEYS = (("images", "labels"), ("x_test", "y_test"), ("x", "y"), ("x_train", "y_train"))


def _npz_arrays(path: Path, archive: np.lib.npyio.NpzFile) -> tuple[np.ndarray, Any, dict]:
  """The images of an .npz, their labels (None if it has none) and what was read."""
  keys = list(archive.files)
  for image_key, label_key in _NPZ_KEYS:
    if image_key in keys:
      label_key = label_key if label_key in keys else None
      break
  else:
    if len(keys) != 1:
      raise UserError(f"{path} holds arrays {', '.join(keys) or '(none)'}; name the images "
                      "'images' (and their labels 'labels'), or 'x_test' / 'x' as an npz data "
                      "set does")
    image_key, label_key = keys[0], None
  labels = None if label_key is None else archive[label_key]
  other = [key for key, _ in _NPZ_KEYS if key in keys and key != image_key]
  read = {"file": str(path), "images": image_key, "labels": label_key, "not_read": other}
  if labels is not None and "class_names" in keys:
    read["class_names"] = class_names_from_array(archive["class_names"], str(path))
  return archive[image_key], labels, read


def _read_array_images(path: Path, image_shape: tuple[int, int, int]
                       ) -> tuple[np.ndarray, Any, dict | None]:
  """uint8 images from a .npy or .npz, reshaped to [N, H, W, C] when the shape allows; the
  .npz's labels (None where it has none) and the keys read (None for a .npy)."""
  labels = read = None
  try:
    with open(path, "rb") as f:
      loaded = np.load(f, allow_pickle=False)
      if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
          array, labels, read = _npz_arrays(path, loaded)
      else:
        array = loaded
  except UserError:
    raise
  except Exception as e:  # numpy and zipfile raise many types.
    raise UserError(f"cannot read {path} as a {path.suffix} array: {one_line(e)}") from None
  if read is not None and read["images"] != "images":
    path = f"{path}: key {read['images']!r}"  # Messages name the key read.
  return _shaped(array, path, image_shape), labels, read


def _shaped(array: np.ndarray, path: Any, image_shape: tuple[int, int, int]) -> np.ndarray:
  """`array` (read from `path`) as the model's uint8 [N, H, W, C] images, or why not."""
  height, width, channels = image_shape
  shape = tuple(array.shape)
  # The advice an npz data set gets (`checked_images`), so a file fixed once fits both.
  wrong_way = channels_first(shape) and shape[1:] != (height, width, channels)
  if array.dtype != np.uint8:
    also = f"; it also has {channels_first_advice(shape)}" if wrong_way else ""
    raise UserError(f"{path} must hold uint8 images (0..255), got {array.dtype}"
                    f"{uint8_hint(array)}{also}")
  if wrong_way:
    raise UserError(f"{path} has {channels_first_advice(shape)}")
  if shape[1:] == (height, width, channels):
    return array
  if shape == (height, width, channels):
    return array[None]
  if channels == 1 and shape[1:] == (height, width):
    return array[..., None]
  if channels == 1 and shape == (height, width):
    return array[None, ..., None]
  raise UserError(f"{path} holds an array of shape {list(shape)}; the model takes uint8 "
                  f"[N, {height}, {width}, {channels}] images")


def _read_picture(path: Path, image_shape: tuple[int, int, int]) -> np.ndarray:
  """One PNG/JPEG (anything Pillow reads) as the model's uint8 [H, W, C], as it was trained."""
  from distill.data.stream import decode_image  # noqa: PLC0415

  _check_takes_pictures(image_shape)
  return decode_image(path, image_shape)


def _check_takes_pictures(image_shape: tuple[int, int, int]) -> None:
  """Refuses pictures for a model of other than 1 (grayscale) or 3 (RGB) channels."""
  if image_shape[-1] not in (1, 3):
    raise UserError(f"the model takes {image_shape[-1]}-channel images; give them as .npy/.npz "
                    "arrays")


def _softmax(logits: np.ndarray) -> np.ndarray:
  logits = np.asarray(logits, np.float64)
  shifted = np.exp(logits - logits.max(-1, keepdims=True))
  return shifted / shifted.sum(-1, keepdims=True)
