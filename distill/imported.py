"""An imported teacher's run directory: a teacher trained elsewhere, made a normal teacher run.

`import_teacher` reads SOURCE (see `distill.importers`), labels the recipe's
data set with it and writes what a trained teacher writes, so
`distill student --teacher DIR`, `compare` and `report` work unchanged:

  summary.json     role teacher, its source, test and validation accuracy, parameters
  predictions.npz  test and validation logits, in the test set's order like every run
  targets.npz      its logits for every training image, with the data fingerprints
  targets.json
  recipe.json      the data settings students start from
  imported.json    what it was imported from (kind, resolved source), instead of checkpoints/

A teacher that runs in JAX (a ViT, a Keras model, a JAX callable) can also
teach online (`online_teacher` reopens the source and wraps its forward pass)
and label augmented views like a trained teacher: `--set export.views=K` here,
or `distill export --teacher DIR --views K` later (`exporting_teacher`).
"""

from __future__ import annotations

import dataclasses
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from distill import backend, rundir
from distill.console import Console
from distill.data.formats import class_order
from distill.errors import UserError, first_few
from distill.importers.logits import LOG_OF_PROBABILITIES, nonfinite_values
from distill.io import read_json, write_json, write_npz


def is_imported(run_dir: Path) -> bool:
  """Whether `run_dir` holds an imported teacher (not one distill trained)."""
  return (Path(run_dir) / rundir.IMPORTED_FILE).exists()


def _resolved_source(source: str) -> str:
  """A file or folder as an absolute path (the run works from any directory later)."""
  path = Path(source).expanduser()
  return str(path.resolve()) if path.exists() else source


def _pixels(images_uint8, mean, std):
  """The inverse of the training loop's normalisation: standardised images -> 0..255 floats."""
  return (images_uint8 * std + mean) * 255.0


def teacher_logits(teacher, images: np.ndarray, batch_size: int,
                   progress: str | None = None) -> np.ndarray:
  """A runnable foreign teacher's float32 logits [N, C] of uint8 images [N, H, W, C]."""
  import jax.numpy as jnp  # noqa: PLC0415

  from distill.inference import predict_in_batches  # noqa: PLC0415

  if teacher.can_teach_online:
    apply = backend.jit(lambda params, chunk: teacher.apply(params, chunk.astype(jnp.float32))
                        .astype(jnp.float32))
  else:  # Plain Python on the host, batch by batch.
    def apply(params, chunk):
      return np.asarray(teacher.apply(params, np.asarray(chunk, np.float32)), np.float32)
  return predict_in_batches(apply, teacher.params, images, batch_size, progress=progress)


def _standardised_apply(teacher, stats):
  """The teacher's forward pass on images standardised by `stats` (the data set's pixel stats).

  Students and augmented views work on standardised images; they are turned
  back into 0..255 pixels for the teacher, whose own preprocessing runs inside
  its `apply`.
  """
  import jax.numpy as jnp  # noqa: PLC0415

  mean, std = (jnp.asarray(s, jnp.float32) for s in stats)
  return lambda params, images: teacher.apply(params, _pixels(images, mean, std))


def _check_makes_views(kind: str, can_teach_online: bool, who: str, asked: str, fix: str) -> None:
  """Refuses augmented views of a teacher that cannot run on them, in one line.

  Views are augmented on the device inside a jitted pass, so only a teacher
  whose forward pass is a JAX function can label them.
  """
  if can_teach_online:
    return
  what = ("only logits computed elsewhere" if kind == "logits"
          else "a function that runs only on the host, not under jax.jit")
  raise UserError(f"{who} cannot label augmented views ({asked}): it has no model to run on "
                  f"augmented images, {what}; {fix}")


def check_exportable(run_dir: Path, views: int) -> None:
  """Refuses `distill export` of an imported teacher that cannot run (or run on `views`)."""
  record = read_json(Path(run_dir) / rundir.IMPORTED_FILE, "imported teacher record")
  if views:
    _check_makes_views(record["kind"], record.get("can_teach_online", False),
                       f"--teacher {run_dir}", f"--views {views}",
                       "its targets.npz already teaches with --teaching targets")
  if record["kind"] == "logits":
    raise UserError(f"--teacher {run_dir} is an imported logits teacher: it has no model to "
                    "run, so there is nothing to export again; its targets.npz is already in "
                    "the folder for students, who re-temper it with their own --temperature")


@dataclasses.dataclass(frozen=True, eq=False)
class RunnableTeacher:
  """An imported teacher that runs, with the passes `distill.export` makes of a trained one.

  `logits` is the pass the import labelled the data set with; `view_logits`
  is `TrainedModel.view_logits` itself, run on this teacher's forward pass, so
  its views are augmented exactly like a trained teacher's (and the student's
  replayed ones).

  Attributes:
    teacher: the `ForeignTeacher` (its `apply` is not None).
    dataset: the data set it labels; its pixel statistics standardise the views.
    run_dir: the imported teacher's run directory (named in its identity).
  """

  teacher: Any
  dataset: Any
  run_dir: Path

  @property
  def params(self) -> Any:
    """The teacher's parameters (None for a function that holds its own)."""
    return self.teacher.params

  def logits(self, images, batch_size: int, progress: str | None = None) -> np.ndarray:
    """Float32 logits [N, C] of uint8 images [N, ...] (see `teacher_logits`)."""
    return teacher_logits(self.teacher, images, batch_size, progress=progress)

  def view_logits(self, images, batch_size: int, *, num_views: int, seed: int,
                  augment_settings: dict[str, Any], progress: str | None = None) -> np.ndarray:
    """Logits [N, K, C] of K augmented views of each image (see `TrainedModel.view_logits`)."""
    from flax import nnx  # noqa: PLC0415

    from distill.feeders import pixel_stats  # noqa: PLC0415
    from distill.inference import TrainedModel  # noqa: PLC0415

    stats = pixel_stats(self.dataset.x_train)
    apply = _standardised_apply(self.teacher, stats)

    class ForeignModel(nnx.Module):
      """The teacher as the NNX model `TrainedModel` merges: its parameters one `nnx.Param`."""

      def __init__(self, params):
        self.weights = nnx.Param(params)

      def __call__(self, images):
        return apply(self.weights.get_value(), images)

    graphdef, params, rest = nnx.split(ForeignModel(self.teacher.params), nnx.Param, ...)
    return TrainedModel(graphdef, rest, params, stats).view_logits(
        images, batch_size, num_views=num_views, seed=seed, augment_settings=augment_settings,
        progress=progress)

  def identity(self, train_logits: np.ndarray) -> dict[str, Any]:
    """Which teacher made a set of targets (see `_identity`)."""
    return _identity(self.run_dir, self.teacher, train_logits)


def exporting_teacher(run_dir: Path, dataset) -> RunnableTeacher:
  """The imported teacher in `run_dir` reopened from its source, for `distill export`."""
  record = read_json(Path(run_dir) / rundir.IMPORTED_FILE, "imported teacher record")
  return RunnableTeacher(_reopen(run_dir, record, dataset), dataset, Path(run_dir))


def _reopen(run_dir: Path, record: dict[str, Any], dataset):
  """The source an imported teacher was made from, opened again (a `ForeignTeacher`).

  The user named the run, not the source: a source moved since the import is
  said in those terms, not as a bad SOURCE argument of import-teacher. One
  whose weights changed since (a model saved over the file) is refused: the
  run's summary and targets describe the model imported.
  """
  from distill.importers import open_teacher  # noqa: PLC0415

  source = record["source"]
  if record["kind"] != "callable" and not Path(source).exists():
    raise UserError(f"{run_dir} was imported from {source}, which is gone: put it back there, "
                    f"or import it again from where it is now with `distill import-teacher "
                    f"SOURCE -w {run_dir} --overwrite`; students taught by its targets "
                    "(--teaching targets) need only this folder")
  teacher = in_data_set_order(open_teacher(source, image_shape=dataset.image_shape), dataset)
  recorded = record.get("params_sha256")
  if recorded and teacher.params is not None:
    from distill.inference import params_sha256  # noqa: PLC0415

    if params_sha256(teacher.params) != recorded:
      raise UserError(f"{run_dir} was imported from {source}, whose weights have changed since: "
                      "its summary and targets are the old model's. Put the old file back, or "
                      f"import the new one with `distill import-teacher {source} -w {run_dir} "
                      "--overwrite`")
  return teacher


def in_data_set_order(teacher, dataset):
  """The teacher with its outputs in the data set's class order, where its class names are the
  data set's in another order (a model trained on class folders sorted alphabetically, say);
  else the teacher as it is. Names match as `class_key` does ('T-shirt/top' = 't-shirt_top')."""
  order = class_order(teacher.class_names, dataset.class_names) if teacher.class_names else None
  if order is None or order == sorted(order):
    return teacher
  columns = np.asarray(order)
  apply = teacher.apply
  return dataclasses.replace(
      teacher, class_names=list(dataset.class_names),
      apply=None if apply is None else lambda params, pixels: apply(params, pixels)[..., columns],
      logits=None if teacher.logits is None else {
          split: np.asarray(values)[:, columns] for split, values in teacher.logits.items()},
      details={**teacher.details, "class_order": order})


def _reorder_note(teacher, dataset) -> str | None:
  """What `in_data_set_order` did, for the user to hear; None where it changed nothing."""
  order = teacher.details.get("class_order")
  if not order:
    return None
  moved = [f"{dataset.class_names[ours]!r} from its output {theirs}"
           for ours, theirs in enumerate(order) if ours != theirs]
  return (f"note: the teacher's classes are {dataset.name}'s in another order; its outputs are "
          f"put in the data set's order ({first_few(moved, 3)})")


def _order_warning(train_logits: np.ndarray, dataset, *, named: bool = False) -> str | None:
  """A warning when the teacher's classes look like the data set's in another order: matching
  its predicted classes to the labels one to one fits the training labels far better than
  taking its class i as the data set's class i. Names cannot tell this where the teacher has
  none; a trained model is best matched by its own order. `named`: the teacher gave class
  names, which are not the data set's (else it would be in order already)."""
  from scipy.optimize import linear_sum_assignment  # noqa: PLC0415

  labelled = dataset.y_train >= 0
  labels, predicted = dataset.y_train[labelled], train_logits[labelled].argmax(axis=-1)
  if not len(labels):
    return None
  classes = dataset.num_classes
  counts = np.zeros((classes, classes), np.int64)  # [teacher's class, data set's class]
  np.add.at(counts, (predicted, labels), 1)
  theirs, ours = linear_sum_assignment(counts, maximize=True)
  as_given = np.trace(counts) / len(labels)
  matched = counts[theirs, ours].sum() / len(labels)
  if matched - as_given < _REORDER_GAIN or matched < _REORDERED_AT_LEAST:
    return None
  order = [int(column) for column in theirs[np.argsort(ours)]]
  names = ("name its classes as the data set does" if named else "give its class names")
  shown = (str(order) if classes <= 100 else  # the order to apply, whole where it fits
           f"[{first_few(order, 10)}]")
  return (f"the teacher's classes look like {dataset.name}'s in another order: it agrees with "
          f"the training labels on {as_given:.1%} as given, but on {matched:.1%} with its "
          f"outputs reordered as logits[:, {shown}] (for each class of the data set, the "
          f"teacher's output that matches it). If its outputs are in another order, reorder "
          f"them so, or {names} (class_names in a .npz of logits, id2label in a ViT's "
          "config.json) and distill puts them in order. Students would learn from these labels")


def _split_logits(teacher, dataset) -> dict[str, np.ndarray]:
  """A logits teacher's rows for distill's train / validation / test splits."""
  from distill.importers.logits import check_logits_fit  # noqa: PLC0415

  logits = teacher.logits
  train, test = np.asarray(logits["train"], np.float32), np.asarray(logits["test"], np.float32)
  rows = dataset.train_source_indices
  # The recipe may have chosen the data set by default: say how to choose another.
  named_as = (f"{dataset.name} (the recipe's data set; pass --recipe or --dataset for "
              "another)")
  in_split = check_logits_fit(
      teacher, num_train=len(dataset.x_train),
      num_val=None if rows is None else len(dataset.x_val), num_test=len(dataset.x_test),
      num_classes=dataset.num_classes, num_full=dataset.source_train_size,
      dataset_name=dataset.name, named_as=named_as)
  if in_split:  # Already in distill's split: training rows, then validation rows.
    return {"train": train, "val": np.asarray(logits["val"], np.float32), "test": test}
  if rows is None:
    return {"train": train, "val": train[:0], "test": test}
  return {"train": train[rows], "val": train[dataset.val_source_indices], "test": test}


def _run_on_splits(teacher, dataset, batch_size: int, console: Console) -> dict[str, np.ndarray]:
  """A runnable teacher's logits of distill's train / validation / test splits."""
  bar = None if console.quiet else "label the training set"
  return {"train": teacher_logits(teacher, dataset.x_train, batch_size, progress=bar),
          "val": teacher_logits(teacher, dataset.x_val, batch_size),
          "test": teacher_logits(teacher, dataset.x_test, batch_size)}


def _check_labels(logits: dict[str, np.ndarray], source: str, kind: str) -> None:
  """Refuses, before anything is written, labels no student should learn from.

  NaN or infinite logits would only surface later as a student's diverging
  loss. Probabilities given as logits would pass every shape check and teach
  the softmax of probabilities: nearly uniform targets, while the teacher's
  accuracy looks right.
  """
  for split in ("train", "val", "test"):
    bad = nonfinite_values(logits[split])
    if bad:
      raise UserError(f"{source}'s logits of the {split} images hold {bad}; a teacher's logits "
                      "must be finite")
  train = logits["train"]
  if (train >= 0).all() and np.allclose(train.sum(axis=-1), 1.0, atol=1e-3):
    fix = {"keras": "the model ends in a softmax that is not its last layer's activation (which "
                    "distill takes off): save it without that softmax, or export "
                    "np.log(model.predict(x)) as a .npz of logits",
           "callable": "return the scores before the softmax, or their log "
                       "(jnp.log(jnp.maximum(probs, 1e-12)))"}.get(
               kind, f"give the scores before the softmax, or their log: {LOG_OF_PROBABILITIES}")
    raise UserError(f"{source} gives probabilities (every row is at least 0 and sums to 1), "
                    f"not logits; {fix}")


def _check_rows_in_order(logits: dict[str, np.ndarray], dataset, source: str) -> None:
  """Refuses a logits file whose training or validation rows are not the data set's images.

  Rows in another order (shuffled, or distill's training and validation rows
  joined as if they were the data set's own order) fit every shape check,
  and the teacher's test accuracy looks right; but students would learn
  another image's label for each image. A teacher far better than chance on
  the test images is near as good on the images it labels for training.
  """
  from distill.metrics import accuracy  # noqa: PLC0415

  def agreement(split: str, labels: np.ndarray) -> float | None:
    labelled = labels >= 0  # data.labelled leaves rows without a label (-1)
    if not labelled.any():
      return None
    return float(accuracy(logits[split][labelled], labels[labelled]))

  test = agreement("test", dataset.y_test)
  if test is None:
    return
  if test <= _CHANCE_FACTOR / dataset.num_classes:
    # Near chance on the test images but far from it on the training ones: the test rows,
    # not the teacher, are at fault. Else a teacher near chance is warned about as such.
    train = agreement("train", dataset.y_train)
    if train is not None and train > _CHANCE_FACTOR / dataset.num_classes and train > 2 * test:
      raise UserError(
          f"{source}: the logits of the test images agree with their labels on {test:.1%} of "
          f"them, against {train:.1%} of the training images: its test rows are not the data "
          f"set's test images in order. test_logits holds the test set of {dataset.name} in "
          "its own order (README, 'Bring your own teacher')")
    return
  for split, name, labels in (("train", "training", dataset.y_train),
                              ("val", "validation", dataset.y_val)):
    found = agreement(split, labels)
    if found is not None and found < test / 2:
      raise UserError(
          f"{source}: the logits of the {name} images agree with their labels on "
          f"{found:.1%} of them, against {test:.1%} of the test images: its rows are not the "
          f"data set's images in order. train_logits holds the whole training set of "
          f"{dataset.name} in its own order (without val_logits), or distill's training "
          "rows with val_logits for its validation rows (README, 'Bring your own teacher')")


def _check_not_in_source(workdir: Path, source: str) -> None:
  """Refuses a workdir that is the teacher's own folder or inside it.

  The run's files (summary.json, targets.npz, ...) would land among the
  model's own, and `--overwrite` later deletes by those names.
  """
  folder = Path(source).expanduser()
  if folder.is_dir():
    rundir.check_apart_from_teacher(
        workdir, source, flag="--workdir", why=": the run's files would mix with the model's",
        whose="the run", instead=f"runs/{folder.resolve().name}-import", inside=True)


def _input_size(teacher) -> list | None:
  """The image shape a teacher takes, as its importer recorded it (a Keras model's
  input_shape, a ViT's input_size), without the batch axis; None where none is recorded."""
  return teacher.details.get("input_shape") or teacher.details.get("input_size")


def _fitting_note(teacher, image_shape: tuple[int, int, int]) -> str | None:
  """A note when the teacher resizes the data set's images or repeats their channel, else None.

  A model made for other images still runs (see `distill.importers`), but the
  user should hear that it sees the images changed.
  """
  shape = _input_size(teacher)
  if not shape or len(shape) < 2:
    return None  # A flat input (an MLP's), or a size the model leaves open.
  height, width, channels = image_shape
  want_h, want_w = shape[0] or height, shape[1] or width
  want_c = (shape[2] if len(shape) > 2 else 1) or channels
  changes = []
  if (want_h, want_w) != (height, width):
    # distill resizes bilinearly; a source trained with another resize sees slightly other
    # pixels (logits ~0.1 apart for a bicubic-trained ViT), which the user should know.
    recommended = teacher.details.get("source_interpolation")
    how = (f" (bilinearly; its config names {recommended})"
           if recommended and recommended != "bilinear" else "")
    changes.append(f"resized to {want_h}x{want_w}{how}")
  if want_c != channels and channels == 1:  # grey to RGB, the one conversion made
    changes.append(f"repeated to {want_c} channels")
  if not changes:
    return None
  return (f"note: the data set's {height}x{width}x{channels} images are "
          f"{' and '.join(changes)} to fit the teacher's input")


# Thresholds of the warnings about labels no student should quietly learn from.
# At or below 1.5x chance a teacher has learnt nothing usable of these classes: an untrained
# model sits at chance, and classes in another order fall below it.
_CHANCE_FACTOR = 1.5
# A teacher whose outputs, matched one to one to the labels, agree with this many more of the
# training labels than as given, is warned of as in another class order. A trained model in
# the right order is its own best match (a few confusable classes move it by a point or two).
_REORDER_GAIN = 0.10
# ... and reordered, is a teacher: a model at chance on a few images matches some labels by
# luck in any order.
_REORDERED_AT_LEAST = 0.5
# Targets whose median top probability stays above this at T=4 (a usual distillation
# temperature) are one-hot at every temperature students use. Trained models' logits differ by
# ~2-20 between the top two classes, which T=4 softens; a model fed inputs 255x too large
# (scaling done outside it) gives gaps in the hundreds, which no temperature softens. The
# median, not the mean: a few uncertain images pull the mean below any threshold.
_ONE_HOT_TOP_PROBABILITY = 0.999
_SOFTEST_TEMPERATURE = 4.0
# A test NLL this many times what the accuracy implies (see `_expected_nll`), and at least
# _NLL_FLOOR nats: trained models, even overconfident ones, come within ~2x of it.
_NLL_FACTOR = 5.0
_NLL_FLOOR = 1.0


def _top_probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
  """Each row's largest value of softmax(logits / temperature), the loss library's softmax."""
  from distill.losses import softmax  # noqa: PLC0415

  return np.asarray(softmax(logits, temperature=temperature)).max(axis=-1)


def _expected_nll(accuracy: float, num_classes: int) -> float:
  """The NLL of a calibrated model of this accuracy that spreads its doubt evenly.

  It gives its top class probability `accuracy` and each other class
  (1 - accuracy) / (C - 1): a yardstick a trained model's test NLL comes near.
  """
  a = min(max(accuracy, 1e-6), 1 - 1e-6)
  return float(-(a * np.log(a) + (1 - a) * np.log((1 - a) / (num_classes - 1))))


def _label_warnings(teacher, dataset, train_logits: np.ndarray,
                    summary: dict[str, Any]) -> list[str]:
  """Loud warnings about labels that import but would teach students little or nothing.

  A teacher at chance (classes in another order, wrong preprocessing, not
  trained), or one whose targets are one-hot (inputs scaled outside the model),
  passes every shape check; students would then learn from it in silence.
  """
  accuracy, nll = summary["test_accuracy"], summary["test_nll"]
  classes = dataset.num_classes
  chance = 1.0 / classes
  inputs = {"keras": "distill feeds a Keras model raw 0..255 pixels, NHWC",
            "callable": "distill gives the function uint8 0..255 pixels, NHWC",
            "logits": "the logits must be of inputs preprocessed as in training"}.get(
                teacher.kind, "the ViT's mean and std come from its preprocessor_config.json "
                              "(transformers) or config.json (timm)")
  # A model made for images of another size was most likely trained on another data set.
  other_data = _other_size(teacher, dataset)
  if accuracy <= _CHANCE_FACTOR * chance:
    return [f"the imported teacher's test accuracy is {accuracy:.4f}, at or near chance "
            f"({chance:.4f} for {classes} classes): "
            + (f"{other_data}. Else: " if other_data else "")
            + f"are its classes in the same order as the data set's ({dataset.name}), and its "
            f"preprocessing right? ({inputs}) Students would learn from these labels"]
  soft_top = float(np.median(_top_probabilities(train_logits, _SOFTEST_TEMPERATURE)))
  expected = _expected_nll(accuracy, classes)
  one_hot = soft_top > _ONE_HOT_TOP_PROBABILITY
  overconfident = nll > max(_NLL_FACTOR * expected, _NLL_FLOOR)
  if not (one_hot or overconfident):
    return []
  facts = []
  if one_hot:
    top = float(np.mean(_top_probabilities(train_logits, 1.0)))
    facts.append(f"its targets are one-hot (mean top probability {top:.7f} over the training "
                 f"images; median {soft_top:.5f} even at T={_SOFTEST_TEMPERATURE:g})")
  if overconfident:
    facts.append(f"its test NLL {nll:.2f} is far above the ~{expected:.2f} its accuracy "
                 f"{accuracy:.4f} implies")
  cause = {"keras": "inputs scaled outside the model: distill gives it 0..255 pixels, so add "
                    "a keras.layers.Rescaling(1/255) layer (or whatever scaling it was trained "
                    "with) in front and save it again, or export its logits (.npz)",
           "callable": "inputs scaled outside the function: it gets uint8 0..255 pixels, so "
                       "scale them inside it as in training"}.get(
                           teacher.kind, "inputs not preprocessed as in training")
  if other_data:
    cause = f"{other_data}. Else: {cause}"
  return [f"the imported teacher is overconfident: {' and '.join(facts)}, so students learn "
          f"little beyond the hard labels. Likely cause: {cause}"]


def _other_size(teacher, dataset) -> str | None:
  """A question for the warnings when the teacher takes images of another size than the data
  set's (it was likely trained on another data set), else None."""
  shape = _input_size(teacher)
  height, width, _ = dataset.image_shape
  if not shape or len(shape) < 2 or None in shape[:2] or tuple(shape[:2]) == (height, width):
    return None
  return (f"it takes {shape[0]}x{shape[1]} images and those of {dataset.name} are "
          f"{height}x{width}: "
          "was it trained on another data set? Pass that one's --recipe or --dataset")


def _identity(workdir: Path, teacher, train_logits: np.ndarray) -> dict[str, Any]:
  """Which teacher made the targets: a hash of its parameters, or of its logits when it has none."""
  from distill.inference import params_sha256  # noqa: PLC0415
  from distill.io import array_sha256  # noqa: PLC0415

  digest = (params_sha256(teacher.params) if teacher.params is not None
            else array_sha256(train_logits))
  return {"dir": str(Path(workdir).resolve()), "model": teacher.kind, "checkpoint_step": None,
          "params_sha256": digest}


@rundir.releases_workdirs
def import_teacher(source: str, recipe: dict[str, Any], workdir: Path, *,
                   overwrite: bool = False, quiet: bool = False) -> dict[str, Any]:
  """Imports a teacher trained elsewhere as a teacher run in `workdir` (see the module docstring).

  Args:
    source: a timm / transformers ViT folder, a .keras file, a .npz of
      logits, or package.module:function (see `distill.importers`).
    recipe: a resolved recipe; its data settings choose the data set.
    workdir: the run directory to create.
    overwrite: replace a finished run in `workdir`.
    quiet: no progress bars or notes.

  Returns:
    The run's summary (also written to `workdir/summary.json`).
  """
  from distill.export import write_teacher_targets  # noqa: PLC0415
  from distill.importers import open_teacher  # noqa: PLC0415
  from distill.workflow import load_fitting_data  # noqa: PLC0415

  console = Console(quiet)
  workdir = Path(workdir)
  start = time.perf_counter()
  views = recipe["export"]["views"]
  _check_not_in_source(workdir, source)
  rundir.check_run_workdir(workdir, example="imported-teacher")
  rundir.check_not_finished(workdir, overwrite=overwrite)  # before the data set is labelled
  # The teacher path's check of data.val_size (and its note on the batch size students
  # inherit); the teacher's own batch size is set to 1, since an imported teacher never trains.
  dataset = load_fitting_data({**recipe, "teacher": {**recipe["teacher"], "batch_size": 1}},
                              "teacher", console)
  if getattr(dataset, "streaming", False):
    raise UserError("import-teacher labels a data set held in memory; a streamed data set "
                    "is not supported yet")
  # Every refusal comes before the first note: a mistake is answered in one line.
  teacher = in_data_set_order(open_teacher(source, image_shape=dataset.image_shape), dataset)
  if views:
    _check_makes_views(teacher.kind, teacher.can_teach_online, source, f"export.views={views}",
                       "import it with export.views=0 and teach with --teaching targets")
  if teacher.num_classes != dataset.num_classes:
    # Only a ViT folder can be fine-tuned on the data set's classes.
    fix = (" or fine-tune it with `distill teacher --init-from SOURCE`"
           if teacher.kind in ("timm-vit", "hf-vit") else "")
    raise UserError(f"{source} predicts {teacher.num_classes} classes; {dataset.name} has "
                    f"{dataset.num_classes}. Import a teacher trained on these classes{fix}")
  # A logits file is checked against the data set here; a runnable teacher after the notes.
  logits = None if teacher.logits is None else _split_logits(teacher, dataset)
  if logits is not None:
    _check_labels(logits, source, teacher.kind)
    _check_rows_in_order(logits, dataset, source)
  console.info(dataset.describe())
  console.info(f"teacher: {teacher.kind} from {source}"
               + (f", {teacher.num_params:,} parameters" if teacher.num_params else ""))
  for note in (_fitting_note(teacher, dataset.image_shape), _reorder_note(teacher, dataset)):
    if note:
      console.info(note)
  batch = recipe["export"]["batch_size"]
  if logits is None:
    logits = _run_on_splits(teacher, dataset, batch, console)
    _check_labels(logits, source, teacher.kind)
  # Labelled like a trained teacher's views (see `distill.export`), before anything is written.
  view_logits = None if not views else RunnableTeacher(teacher, dataset, workdir).view_logits(
      dataset.x_train, batch, num_views=views, seed=recipe["seed"],
      augment_settings=recipe["augment"],
      progress=None if console.quiet else f"label {views} views")
  rundir.prepare_workdir(workdir, restart=False, overwrite=overwrite)
  write_json(workdir / rundir.RECIPE_FILE, recipe)
  identity = _identity(workdir, teacher, logits["train"])
  write_json(workdir / rundir.IMPORTED_FILE, {
      "kind": teacher.kind, "source": _resolved_source(source),
      "can_teach_online": teacher.can_teach_online, "details": teacher.details,
      # What reopening the source must find again (`_reopen`); None for a function's own.
      "params_sha256": identity["params_sha256"] if teacher.params is not None else None})
  write_npz(workdir / rundir.PREDICTIONS_FILE,
            {"test_logits": logits["test"], "val_logits": logits["val"]})
  write_teacher_targets(workdir, recipe, dataset, train_logits=logits["train"],
                        test_logits=logits["test"], view_logits=view_logits,
                        identity=identity,
                        seconds=time.perf_counter() - start)
  summary = _summary(teacher, source, dataset, recipe, logits, time.perf_counter() - start)
  for warning in _label_warnings(teacher, dataset, logits["train"], summary):
    console.warn(warning)
  if teacher.class_names and class_order(teacher.class_names, dataset.class_names) is None:
    console.warn(f"the teacher's class names ({first_few(teacher.class_names, 4)}) differ from "
                 f"{dataset.name}'s; its class i is taken as the data set's class i")
  if (warning := _order_warning(logits["train"], dataset,
                                named=bool(teacher.class_names))) is not None:
    console.warn(warning)
  write_json(workdir / rundir.SUMMARY_FILE, summary)
  return summary


def _summary(teacher, source: str, dataset, recipe: dict[str, Any],
             logits: dict[str, np.ndarray], wall_seconds: float) -> dict[str, Any]:
  from distill.config import recipe_hash  # noqa: PLC0415
  from distill.metrics import summary_metrics  # noqa: PLC0415

  def metrics(split, labels):
    if len(labels) == 0:
      return {"accuracy": float("nan"), "nll": float("nan"), "ece": float("nan")}
    return summary_metrics(logits[split], labels)

  val, test = metrics("val", dataset.y_val), metrics("test", dataset.y_test)
  return {
      "role": "teacher",
      "model": teacher.kind,
      "imported_from": _resolved_source(source),
      "source_details": teacher.details,
      "dataset": dataset.name,
      "dataset_fingerprint": dataset.fingerprint,
      # None when unknown (logits, a function): the tables then show "-", as for any run.
      "params": teacher.num_params or None,
      "steps": 0,
      "seed": recipe["seed"],
      "val_accuracy": val["accuracy"],
      "val_nll": val["nll"],
      "test_accuracy": test["accuracy"],
      "test_nll": test["nll"],
      "test_ece": test["ece"],
      "train_seconds": 0.0,
      "wall_seconds": round(wall_seconds, 3),
      "recipe_hash": recipe_hash(recipe, "teacher"),
      "host": platform.node(),
  }


def online_teacher(run_dir: Path, dataset, *, temperature: float, mixup: float, form: str,
                   feature_layer: int | None):
  """An imported teacher's `OnlineTeacher`: its forward pass on the student's batches.

  The student's images arrive standardised by the data set's pixel
  statistics (see `_standardised_apply`).
  """
  from distill.feeders import pixel_stats  # noqa: PLC0415
  from distill.teaching import OnlineTeacher  # noqa: PLC0415

  record = read_json(Path(run_dir) / rundir.IMPORTED_FILE, "imported teacher record")
  if not record.get("can_teach_online"):
    raise UserError(f"{run_dir} is an imported {record['kind']} teacher, which teaches by "
                    "targets only (it does not run inside the student's step); use "
                    "--teaching targets")
  if feature_layer is not None:
    raise UserError(f"{run_dir} is an imported {record['kind']} teacher; hints read a teacher's "
                    "inner layer, which only teachers trained by distill expose. Use another "
                    "--method")
  teacher = _reopen(run_dir, record, dataset)
  return OnlineTeacher(apply=_standardised_apply(teacher, pixel_stats(dataset.x_train)),
                       params=teacher.params, temperature=temperature, mixup=mixup, form=form)
