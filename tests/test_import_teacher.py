"""Teachers trained elsewhere become teacher runs that students learn from (tiny digits)."""

import json
import os
import re
import shlex
import shutil
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY, TINY_FLAGS, copy_runs, run_cli

from distill import config, workflow
from distill.augment import augment_views
from distill.feeders import pixel_stats
from distill.imported import online_teacher
from distill.importers import open_teacher
from distill.inference import normalize
from distill.metrics import accuracy
from distill.targets import load_targets

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def digits():
  return workflow.load_data(config.load_recipe("digits", TINY))


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  """The two fixture ViTs imported once, as they are: runs "timm" (what its import printed on
  stderr kept in timm-notes.txt) and "hf". Tests that write into a run take a copy
  (`copy_runs`)."""
  root = tmp_path_factory.mktemp("imported")
  # Not quiet: the notes an import prints are checked on this same run.
  result = run_cli("import-teacher", FIXTURES / "vit_timm", "-r", "digits", "-w", root / "timm")
  assert result.exit_code == 0, result.output
  root.joinpath("timm-notes.txt").write_text(result.stderr)
  result = _import(FIXTURES / "vit_hf", root / "hf")
  assert result.exit_code == 0, result.output
  return root


def _logits(strategy, images):
  """A teacher's (`strategy.apply`'s) logits of `images`, compiled as one program: op by op,
  each of the imported ViT's operations compiles on first use (seconds)."""
  return jax.jit(strategy.apply)(strategy.params, images)


def _import(source, workdir, *args):
  result = run_cli("import-teacher", source, "-r", "digits", "-w", workdir, "-q", *args)
  return result


def _student(teacher_dir, workdir, *args):
  result = run_cli("student", "--teacher", teacher_dir, "-w", workdir, "-q",
                   "--strict-init-check", *TINY_FLAGS, *args)
  assert result.exit_code == 0, result.output
  return json.loads((workdir / "summary.json").read_text())


def _logits_file(path, digits, *, train_rows=None, classes=10, seed=0):
  rng = np.random.default_rng(seed)
  train_rows = digits.source_train_size if train_rows is None else train_rows
  np.savez(path, train_logits=rng.normal(size=(train_rows, classes)).astype(np.float32),
           test_logits=rng.normal(size=(len(digits.x_test), classes)).astype(np.float32))
  return path


def test_imported_vit_is_a_teacher_run_that_teaches_by_targets_and_online(tmp_path, digits,
                                                                          imported):
  copy_runs(imported, tmp_path, teacher="timm")
  summary = json.loads((tmp_path / "teacher" / "summary.json").read_text())
  assert summary["role"] == "teacher" and summary["model"] == "timm-vit"
  assert summary["imported_from"] == str((FIXTURES / "vit_timm").resolve())
  predictions = np.load(tmp_path / "teacher" / "predictions.npz")
  assert predictions["test_logits"].shape == (len(digits.x_test), 10)
  assert summary["test_accuracy"] == pytest.approx(
      float(accuracy(predictions["test_logits"], digits.y_test)))
  arrays, meta = load_targets(tmp_path / "teacher")
  assert arrays["train_logits"].shape == (len(digits.x_train), 10)
  assert meta["dataset_fingerprint"] == digits.fingerprint
  by_targets = _student(tmp_path / "teacher", tmp_path / "s1", "-m", "mlp")
  online = _student(tmp_path / "teacher", tmp_path / "s2", "-m", "mlp", "--teaching", "online")
  assert by_targets["teacher_test_accuracy"] == summary["test_accuracy"]
  assert online["teaching"] == "online"
  # compare reads an imported teacher like any other run.
  result = run_cli("compare", tmp_path / "teacher", tmp_path / "s1")
  assert result.exit_code == 0 and "timm-vit" in result.output


def test_online_teacher_sees_pixels_as_the_import_did(digits, imported):
  """The student's standardised images are mapped back to pixels for the imported teacher."""
  strategy = online_teacher(imported / "hf", digits, temperature=1.0, mixup=0.0,
                            form="logits", feature_layer=None)
  stats = [jnp.asarray(s) for s in pixel_stats(digits.x_train)]
  images = normalize(jnp.asarray(digits.x_test[:6]), *stats)
  direct = open_teacher(FIXTURES / "vit_hf")
  want = _logits(direct, jnp.asarray(digits.x_test[:6], jnp.float32))
  np.testing.assert_allclose(_logits(strategy, images), want, atol=1e-4)
  stored = np.load(imported / "hf" / "predictions.npz")["test_logits"][:6]
  np.testing.assert_allclose(stored, want, atol=1e-4)


def test_imported_vit_exports_views_like_a_trained_teacher(tmp_path, digits):
  """import-teacher --set export.views=K and export --views K label the views students replay."""
  teacher = tmp_path / "teacher"
  assert _import(FIXTURES / "vit_hf", teacher, "--set", "export.views=2").exit_code == 0
  arrays, meta = load_targets(teacher)
  recipe = config.load_recipe("digits", [])
  assert arrays["view_logits"].shape == (len(digits.x_train), 2, 10)
  assert meta["views"] == {"count": 2, "seed": recipe["seed"], "augment": recipe["augment"]}
  # View v of image i is what the online teacher answers to the student's view v of image i.
  strategy = online_teacher(teacher, digits, temperature=1.0, mixup=0.0, form="logits",
                            feature_layer=None)
  stats = [jnp.asarray(s) for s in pixel_stats(digits.x_train)]
  rows = jnp.arange(8, dtype=jnp.int32)
  for view in range(2):
    # Jitted, as the export runs it: op by op the augmentation takes seconds.
    images = jax.jit(lambda x, rows, views: augment_views(x, rows, views, recipe["seed"],
                                                          recipe["augment"]))(
        normalize(jnp.asarray(digits.x_train[:8]), *stats), rows, jnp.full_like(rows, view))
    np.testing.assert_allclose(arrays["view_logits"][:8, view], _logits(strategy, images),
                               atol=1e-4)
  # Re-exported from the source imported.json names: the same views, at another temperature.
  result = run_cli("export", "--teacher", teacher, "--views", 2, "-T", 3, "--out",
                   tmp_path / "again", "-q")
  assert result.exit_code == 0, result.output
  again, again_meta = load_targets(tmp_path / "again")
  for name in ("train_logits", "test_logits", "view_logits"):
    np.testing.assert_allclose(again[name], arrays[name], atol=1e-5)
  assert again_meta["temperature"] == 3.0 and again_meta["views"] == meta["views"]
  assert again_meta["teacher"] == meta["teacher"]


def test_views_exported_for_an_imported_vit_teach_a_student(tmp_path, imported):
  """The README's order: import, then `distill export --views K` into the teacher's folder."""
  teacher = copy_runs(imported, tmp_path, teacher="timm") / "teacher"
  result = run_cli("student", "--teacher", teacher, "-w", tmp_path / "refused", "-q", "-m",
                   "mlp", "--teaching", "views", *TINY_FLAGS)
  assert result.exit_code == 2 and "holds no augmented views" in result.stderr
  result = run_cli("export", "--teacher", teacher, "--views", 2, "-q")
  assert result.exit_code == 0, result.output
  arrays, meta = load_targets(teacher)
  assert arrays["view_logits"].shape[1] == 2 and meta["teacher"]["model"] == "timm-vit"
  summary = _student(teacher, tmp_path / "s", "-m", "mlp", "--teaching", "views")
  assert summary["teaching"] == "views"


def test_a_logits_teacher_cannot_make_views(tmp_path, digits):
  """No model to run on augmented images: refused in one line, on import and on export."""
  source = _logits_file(tmp_path / "logits.npz", digits)
  result = _import(source, tmp_path / "refused", "--set", "export.views=2")
  assert result.exit_code == 2
  assert "cannot label augmented views (export.views=2): it has no model" in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1
  assert not (tmp_path / "refused").exists()
  teacher = tmp_path / "teacher"
  assert _import(source, teacher).exit_code == 0
  before = {path.name: path.read_bytes() for path in teacher.iterdir()}
  for args, message in [(("--views", 2), "cannot label augmented views (--views 2): it has "
                                         "no model to run on augmented images"),
                        (("-T", 2), "has no model to run, so there is nothing to export")]:
    result = run_cli("export", "--teacher", teacher, *args, "--out", tmp_path / "out", "-q")
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1
  assert {path.name: path.read_bytes() for path in teacher.iterdir()} == before
  assert not (tmp_path / "out").exists()


def test_a_host_only_function_exports_again_but_makes_no_views(tmp_path, digits, monkeypatch):
  """A function that does not trace runs on the host: plain targets yes, augmented views no."""
  monkeypatch.syspath_prepend(str(tmp_path))
  source = _callable_module(tmp_path, "np.asarray(images, np.float32).reshape(len(images), -1)"
                                      "[:, :10] + scores")
  result = _import(source, tmp_path / "refused", "--set", "export.views=2")
  assert result.exit_code == 2
  assert "a function that runs only on the host, not under jax.jit" in result.stderr
  assert not (tmp_path / "refused").exists()
  assert _import(source, tmp_path / "teacher").exit_code == 0
  result = run_cli("export", "--teacher", tmp_path / "teacher", "--views", 2, "-q")
  assert result.exit_code == 2 and "cannot label augmented views (--views 2)" in result.stderr
  result = run_cli("export", "--teacher", tmp_path / "teacher", "-T", 2, "--out",
                   tmp_path / "again", "-q")
  assert result.exit_code == 0, result.output
  np.testing.assert_array_equal(load_targets(tmp_path / "again")[0]["train_logits"],
                                load_targets(tmp_path / "teacher")[0]["train_logits"])
  sys.modules.pop("bad_teacher", None)


def test_keras_teacher_imports_with_matching_logits_and_teaches_online(tmp_path, digits):
  os.environ.setdefault("KERAS_BACKEND", "jax")
  import keras  # noqa: PLC0415 (after choosing its backend)

  keras.utils.set_random_seed(0)
  inputs = keras.Input(digits.image_shape)
  x = keras.layers.Rescaling(1 / 255)(inputs)
  x = keras.layers.Flatten()(x)
  x = keras.layers.Dense(16, activation="relu")(x)
  model = keras.Model(inputs, keras.layers.Dense(10)(x))
  model.save(tmp_path / "teacher.keras")
  assert _import(tmp_path / "teacher.keras", tmp_path / "teacher").exit_code == 0
  stored = np.load(tmp_path / "teacher" / "predictions.npz")["test_logits"]
  np.testing.assert_allclose(stored, np.asarray(model(digits.x_test.astype(np.float32))),
                             atol=1e-4)
  summary = _student(tmp_path / "teacher", tmp_path / "s", "-m", "mlp", "--teaching", "online")
  assert summary["teaching"] == "online"


def test_logits_from_numpy_teach_a_student_end_to_end(tmp_path, digits):
  source = _logits_file(tmp_path / "logits.npz", digits)
  assert _import(source, tmp_path / "teacher").exit_code == 0
  arrays, _ = load_targets(tmp_path / "teacher")
  # Rows follow distill's split of the data set's own training order.
  full = np.load(source)["train_logits"]
  np.testing.assert_array_equal(arrays["train_logits"], full[digits.train_source_indices])
  # Logits tell nothing of the model's size: its summary says so, rather than 0 parameters.
  assert json.loads((tmp_path / "teacher" / "summary.json").read_text())["params"] is None
  summary = _student(tmp_path / "teacher", tmp_path / "s", "-m", "mlp")
  assert summary["teaching"] == "targets"
  result = run_cli("student", "--teacher", tmp_path / "teacher", "-w", tmp_path / "s2", "-m",
                   "mlp", "--teaching", "online", "-q", *TINY_FLAGS)
  assert result.exit_code == 2
  assert "teaches by targets only" in result.stderr


def test_a_python_callable_teaches(tmp_path, digits, monkeypatch):
  module = tmp_path / "my_teacher.py"
  module.write_text(textwrap.dedent("""
      import jax.numpy as jnp

      def logits(images):
          x = images.astype(jnp.float32).reshape(images.shape[0], -1) / 255.0
          return jnp.stack([x[:, i::10].mean(axis=1) for i in range(10)], axis=1)
  """))
  monkeypatch.syspath_prepend(str(tmp_path))
  assert _import("my_teacher:logits", tmp_path / "teacher").exit_code == 0
  summary = _student(tmp_path / "teacher", tmp_path / "s", "-m", "mlp", "--teaching", "online")
  assert summary["teaching"] == "online"
  sys.modules.pop("my_teacher", None)


def test_init_from_fine_tunes_an_imported_vit(tmp_path, digits):
  source = shutil.copytree(FIXTURES / "vit_timm", tmp_path / "vit_timm")
  result = run_cli("teacher", "-r", "digits", "-w", tmp_path / "teacher",
                   "--init-from", source, "--strict-init-check", *TINY_FLAGS)
  assert result.exit_code == 0, result.output
  assert f"fine-tuned from {source.resolve()} with its own head" in result.stderr
  summary = json.loads((tmp_path / "teacher" / "summary.json").read_text())
  recipe = json.loads((tmp_path / "teacher" / "recipe.json").read_text())
  assert recipe["teacher"]["init_from"] == str(source.resolve())
  assert summary["init_loss_expected"] is None  # its head starts trained, not uniform
  # The fine-tuned teacher restores, exports and teaches like any other.
  student = _student(tmp_path / "teacher", tmp_path / "s", "-m", "mlp", "--teaching", "online")
  assert student["teacher_test_accuracy"] == summary["test_accuracy"]
  # Its model is rebuilt from the folder it was fine-tuned from: once that is gone, the error
  # says so in terms of the run, not of an --init-from the user never typed here.
  source.rename(tmp_path / "moved")
  np.save(tmp_path / "images.npy", digits.x_test[:2])
  result = run_cli("predict", tmp_path / "teacher", "--images", tmp_path / "images.npy")
  assert result.exit_code == 2, result.output
  gone = (f"{tmp_path / 'teacher'} was fine-tuned from {source.resolve()} (teacher.init_from in "
          "its recipe.json), which is gone: put that ViT folder back there")
  assert gone in result.stderr
  # export-model loads the data set, and restores the run all the same: the run is named too.
  result = run_cli("export-model", tmp_path / "teacher", "--format", "stablehlo", "--out",
                   tmp_path / "t.stablehlo")
  assert result.exit_code == 2, result.output
  assert gone in result.stderr


def _callable_module(folder, body):
  """A module `bad_teacher` in `folder` whose `logits(images)` returns `body`."""
  (folder / "bad_teacher.py").write_text(textwrap.dedent(f"""
      import numpy as np

      def logits(images):
          scores = np.random.default_rng(0).normal(size=(len(images), 10))
          return {body}
  """))
  sys.modules.pop("bad_teacher", None)
  return "bad_teacher:logits"


def _probabilities_file(path, digits, log_of_zeros=False):
  """Probabilities given as logits, or (`log_of_zeros`) their log where some rounded to 0."""
  source = np.load(_logits_file(path, digits))

  def softmax(x):
    probs = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    if log_of_zeros:
      probs[:, 0] = 0.0
      with np.errstate(divide="ignore"):
        return np.log(probs)
    return probs

  np.savez(path, train_logits=softmax(source["train_logits"]),
           test_logits=softmax(source["test_logits"]))
  return path


def _keras_softmax_then_identity(path, digits):
  """A Keras model whose softmax is followed by another layer, so distill cannot take it off."""
  os.environ.setdefault("KERAS_BACKEND", "jax")
  import keras  # noqa: PLC0415 (after choosing its backend)

  inputs = keras.Input(digits.image_shape)
  x = keras.layers.Dense(10)(keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs)))
  outputs = keras.layers.Identity()(keras.layers.Activation("softmax")(x))
  keras.Model(inputs, outputs).save(path)
  return path


@pytest.mark.parametrize("make, message", [
    (lambda tmp, d: _logits_file(tmp / "l.npz", d, classes=5),
     "predicts 5 classes; digits has 10. Import a teacher trained on these classes\n"),
    (lambda tmp, d: _logits_file(tmp / "l.npz", d, train_rows=100), "train_logits has 100 rows"),
    (lambda tmp, d: (tmp / "empty").mkdir() or tmp / "empty", "config.json"),
    (lambda tmp, d: "no_such_module_here:fn", "no_such_module_here"),
    (lambda tmp, d: tmp / "missing.keras", "does not exist"),
    (lambda tmp, d: (tmp / "old.h5").write_bytes(b"") or tmp / "old.h5",
     "old.h5 is a Keras 2 (HDF5) model: load it with keras.models.load_model and save it as "
     ".keras"),
    (lambda tmp, d: _callable_module(tmp, "np.where(np.arange(10) == 3, np.nan, scores)"),
     "bad_teacher:logits's logits of the train images hold 1,288 values that are NaN or "
     "infinite (the first in row 0); a teacher's logits must be finite"),
    (lambda tmp, d: _callable_module(tmp, "np.exp(scores) / np.exp(scores).sum(1, keepdims=True)"),
     "bad_teacher:logits gives probabilities (every row is at least 0 and sums to 1), not logits"),
    (lambda tmp, d: _probabilities_file(tmp / "p.npz", d),
     "gives probabilities (every row is at least 0 and sums to 1), not logits; give the scores "
     "before the softmax, or their log: np.log(np.maximum(probs, 1e-12))"),
    (lambda tmp, d: _probabilities_file(tmp / "p.npz", d, log_of_zeros=True),
     "p.npz holds 1,438 values that are NaN or infinite (the first in row 0); "
     "-inf is the log of a probability of 0: floor them first, "
     "np.log(np.maximum(probs, 1e-12))"),
    (lambda tmp, d: _keras_softmax_then_identity(tmp / "p.keras", d),
     "p.keras gives probabilities (every row is at least 0 and sums to 1), not logits; the model "
     "ends in a softmax that is not its last layer's activation (which distill takes off): save "
     "it without that softmax"),
])
def test_bad_sources_are_one_line_errors_that_write_nothing(tmp_path, digits, make, message,
                                                            monkeypatch):
  monkeypatch.syspath_prepend(str(tmp_path))
  source = make(tmp_path, digits)
  result = _import(source, tmp_path / "teacher")
  assert result.exit_code == 2, result.output
  assert message in result.stderr
  assert "--init-from" not in result.stderr  # only a ViT folder can be fine-tuned
  assert len(result.stderr.strip().splitlines()) == 1
  assert not (tmp_path / "teacher" / "summary.json").exists()


# --- rough edges a new user met ---------------------------------------------


def _split_logits_file(path, digits, *, shift=0, scale=3.0):
  """Logits in distill's split that score each image's own label `scale` higher, classes
  rolled by `shift`: accuracy 1 unshifted, 0 shifted by one."""
  def logits(labels):
    return np.roll(scale * np.eye(10, dtype=np.float32)[labels], shift, axis=1)

  np.savez(path, train_logits=logits(digits.y_train), val_logits=logits(digits.y_val),
           test_logits=logits(digits.y_test))
  return path


def test_a_workdir_in_the_teachers_own_folder_is_refused(tmp_path):
  source = tmp_path / "vit_copy"
  shutil.copytree(FIXTURES / "vit_timm", source)
  before = sorted(path.name for path in source.rglob("*"))
  for workdir in (source, source / "runs" / "t"):
    result = _import(source, workdir)
    assert result.exit_code == 2, result.output
    assert (f"--workdir {workdir} is " in result.stderr
            and "give the run a folder of its own, e.g. --workdir runs/vit_copy-import"
            in result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1
  assert sorted(path.name for path in source.rglob("*")) == before


def test_a_teacher_at_chance_warns_loudly(tmp_path, digits):
  rotated = _split_logits_file(tmp_path / "rotated.npz", digits, shift=1)
  result = _import(rotated, tmp_path / "rotated")
  assert result.exit_code == 0, result.output
  assert ("test accuracy is 0.0000, at or near chance (0.1000 for 10 classes): are its classes "
          "in the same order as the data set's (digits), and its preprocessing right?"
          ) in result.stderr
  right = _split_logits_file(tmp_path / "right.npz", digits)
  result = _import(right, tmp_path / "right")
  assert result.exit_code == 0 and result.stderr == "", result.stderr


def _centroid_keras(digits, path, *, rescaling):
  """A linear Keras model made on pixels / 255 (nearest class mean), with or without the
  Rescaling layer that makes it take 0..255 pixels."""
  os.environ.setdefault("KERAS_BACKEND", "jax")
  import keras  # noqa: PLC0415 (after choosing its backend)

  x = digits.x_train.reshape(len(digits.x_train), -1).astype(np.float32) / 255
  means = np.stack([x[digits.y_train == c].mean(axis=0) for c in range(10)], axis=1)
  inputs = keras.Input(digits.image_shape)
  h = keras.layers.Rescaling(1 / 255)(inputs) if rescaling else inputs
  dense = keras.layers.Dense(10)
  outputs = dense(keras.layers.Flatten()(h))
  dense.set_weights([2 * means, -(means * means).sum(axis=0)])
  keras.Model(inputs, outputs).save(path)
  return path


def test_a_keras_teacher_scaled_outside_the_model_warns(tmp_path, digits):
  """Without its Rescaling layer the model still ranks classes right, but its targets are
  one-hot: distill feeds it 0..255 pixels."""
  result = _import(_centroid_keras(digits, tmp_path / "bare.keras", rescaling=False),
                   tmp_path / "bare")
  assert result.exit_code == 0, result.output
  summary = json.loads((tmp_path / "bare" / "summary.json").read_text())
  assert summary["test_accuracy"] > 0.8 and summary["test_nll"] > 10
  assert "its targets are one-hot" in result.stderr
  assert f"its test NLL {summary['test_nll']:.2f} is far above" in result.stderr
  assert "add a keras.layers.Rescaling(1/255) layer" in result.stderr
  result = _import(_centroid_keras(digits, tmp_path / "scaled.keras", rescaling=True),
                   tmp_path / "scaled")
  assert result.exit_code == 0 and result.stderr == "", result.stderr


def test_a_teacher_for_other_images_says_it_resizes_them(tmp_path, imported):
  assert ("note: the data set's 8x8x1 images are resized to 32x32 and repeated to 3 channels "
          "to fit the teacher's input") in (imported / "timm-notes.txt").read_text()
  # A source trained with another resize than distill's bilinear one is named with it.
  source = shutil.copytree(FIXTURES / "vit_timm", tmp_path / "bicubic")
  settings = json.loads((source / "config.json").read_text())
  settings["pretrained_cfg"]["interpolation"] = "bicubic"
  (source / "config.json").write_text(json.dumps(settings))
  result = run_cli("import-teacher", source, "-r", "digits", "-w", tmp_path / "t2")
  assert result.exit_code == 0, result.output
  assert ("images are resized to 32x32 (bilinearly; its config names bicubic) and repeated to 3 "
          "channels") in result.stderr


def test_the_readme_logits_example_runs_as_written(tmp_path, monkeypatch):
  readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
  section = readme[readme.index("### Bring your own teacher"):readme.index("### Ship your")]
  code, after = section.split("```python\n")[1].split("```", 1)
  command = next(line for line in after.splitlines()
                 if line.startswith("distill import-teacher logits.npz"))
  monkeypatch.chdir(tmp_path)
  # A stand-in for the user's model: scores from the pixels, any will do.
  exec(code, {"my_logits": lambda images: images.reshape(len(images), -1)[:, :10]  # noqa: S102
              .astype(np.float32)})
  args = shlex.split(command.partition("#")[0])[1:]
  result = run_cli(*args, "-q")
  assert result.exit_code == 0, result.output
  teacher = Path(args[args.index("-w") + 1])
  assert json.loads((teacher / "summary.json").read_text())["dataset"] == "digits"


def test_import_names_the_val_size_that_fits_like_the_teacher_does(tmp_path, digits):
  """The fashion_mnist recipe holds out 5,000 images: more than digits has."""
  source = _logits_file(tmp_path / "lr.npz", digits)
  result = run_cli("import-teacher", source, "--dataset", "digits", "-w", tmp_path / "z", "-q")
  assert result.exit_code == 2
  assert ("data.val_size 5000 holds out 5,000 of the 1,438 training images of digits, leaving "
          "none to train on: pass --set data.val_size=143") in result.stderr
  assert not (tmp_path / "z").exists()


def test_a_moved_source_is_named_as_the_runs_source(tmp_path, digits):
  source = tmp_path / "vit_digits"
  shutil.copytree(FIXTURES / "vit_hf", source)
  teacher = tmp_path / "vit-import"
  assert _import(source, teacher).exit_code == 0
  source.rename(tmp_path / "moved")
  gone = (f"{teacher} was imported from {source}, which is gone: put it back there, or import "
          "it again")
  result = run_cli("export", "--teacher", teacher, "-T", 2, "--out", tmp_path / "out", "-q")
  assert result.exit_code == 2 and gone in result.stderr, result.output
  assert "--teaching targets) need only this folder" in result.stderr
  result = run_cli("student", "--teacher", teacher, "-w", tmp_path / "s", "-q", "-m", "mlp",
                   "--teaching", "online", *TINY_FLAGS)
  assert result.exit_code == 2 and gone in result.stderr, result.output
  # Its targets still teach.
  assert _student(teacher, tmp_path / "s2", "-m", "mlp")["teaching"] == "targets"


def test_a_distill_run_or_a_keras_file_is_not_a_vit_to_import_or_fine_tune(tmp_path, digits):
  run = tmp_path / "teacher"
  run.mkdir()
  (run / "summary.json").write_text(json.dumps({"role": "teacher"}))
  result = _import(run, tmp_path / "again")
  assert result.exit_code == 2
  assert (f"{run} is already a distill teacher run: students learn from it as it is, with "
          f"`distill student --teacher {run}`") in result.stderr
  keras_file = _centroid_keras(digits, tmp_path / "digits.keras", rescaling=True)
  for init_from, message in [
      (tmp_path / "nowhere", f"teacher.init_from {tmp_path / 'nowhere'} not found: "
                             "--init-from takes a timm or transformers ViT folder"),
      (keras_file, f"--init-from {keras_file} is a Keras model: only a timm or transformers "
                   "ViT folder can be fine-tuned, and a Keras model is import-only: `distill "
                   f"import-teacher {keras_file}`"),
      (run, f"--init-from {run} is a distill run, not a ViT folder")]:
    result = run_cli("teacher", "-r", "digits", "-w", tmp_path / "ft", "-q", "--init-from",
                     init_from, *TINY_FLAGS)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def _good_logits(labels, seed):
  """Logits of a good teacher for `labels`: the right class ahead, by a margin, on most rows."""
  rng = np.random.default_rng(seed)
  return (4.0 * np.eye(10, dtype=np.float32)[labels]
          + rng.normal(size=(len(labels), 10)).astype(np.float32))


_TRAINING_ROWS_WRONG = (r"the logits of the (training|validation) images agree with their "
                        r"labels on [0-9.]+% of them, against 9[0-9.]+% of the test images: its "
                        r"rows are not the data set's images in order")


@pytest.mark.parametrize("mistake, message", [
    ("shuffled", _TRAINING_ROWS_WRONG),
    ("train and val joined", _TRAINING_ROWS_WRONG),
    # The test rows alone: the teacher looks at chance, and was asked about its class order.
    ("test rows shuffled", r"the logits of the test images agree with their labels on [0-9.]+% "
                           r"of them, against 9[0-9.]+% of the training images: its test rows "
                           r"are not the data set's test images in order"),
])
def test_logits_whose_rows_are_not_the_data_sets_order_are_refused(tmp_path, digits, mistake,
                                                                   message):
  """Rows out of order fit every shape and leave the test accuracy right; students would
  learn other images' labels."""
  source_labels = np.empty(digits.source_train_size, np.int64)
  source_labels[digits.train_source_indices] = digits.y_train
  source_labels[digits.val_source_indices] = digits.y_val
  train = _good_logits(source_labels, seed=0)
  test = _good_logits(digits.y_test, seed=1)
  np.savez(tmp_path / "good.npz", train_logits=train, test_logits=test)
  assert _import(tmp_path / "good.npz", tmp_path / "good").exit_code == 0
  shuffle = np.random.default_rng(2).permutation
  if mistake == "shuffled":
    train = train[shuffle(len(train))]
  elif mistake == "test rows shuffled":
    test = test[shuffle(len(test))]
  else:  # distill's training rows then its validation rows, without val_logits
    train = np.concatenate([train[digits.train_source_indices],
                            train[digits.val_source_indices]])
  np.savez(tmp_path / "bad.npz", train_logits=train, test_logits=test)
  result = _import(tmp_path / "bad.npz", tmp_path / "bad")
  assert result.exit_code == 2
  assert re.search(message, result.stderr), result.stderr
  assert not (tmp_path / "bad").exists()


def test_a_source_changed_since_the_import_is_refused_where_it_is_reopened(tmp_path):
  """Online teaching and `distill export` reopen the source: other weights there would teach
  while the run's summary and targets still describe the model imported."""
  from safetensors.numpy import load_file, save_file  # noqa: PLC0415

  source = shutil.copytree(FIXTURES / "vit_timm", tmp_path / "vit")
  teacher = tmp_path / "teacher"
  assert _import(source, teacher).exit_code == 0
  tensors = load_file(source / "model.safetensors")
  name = sorted(tensors)[0]
  tensors[name] = tensors[name] + np.float32(0.01)  # a retrained model saved over the file
  save_file(tensors, source / "model.safetensors")
  changed = rf"{teacher} was imported from {source}, whose weights have changed since"
  result = run_cli("student", "--teacher", teacher, "-w", tmp_path / "s", "-q", "-m", "mlp",
                   "--teaching", "online", *TINY_FLAGS)
  assert result.exit_code == 2 and re.search(changed, result.stderr), result.output
  result = run_cli("export", "--teacher", teacher, "-T", 2, "--out", tmp_path / "again", "-q")
  assert result.exit_code == 2 and re.search(changed, result.stderr), result.output
  # Students of its targets need only the folder.
  assert _student(teacher, tmp_path / "by-targets", "-m", "mlp")["teaching"] == "targets"


def test_a_teacher_made_for_images_of_another_size_is_asked_about_its_data_set(tmp_path):
  """An untrained-looking teacher of 16x16 inputs on digits' 8x8 images: the warning asks
  first whether it was trained on another data set."""
  os.environ.setdefault("KERAS_BACKEND", "jax")
  import keras  # noqa: PLC0415 (after choosing its backend)

  keras.utils.set_random_seed(0)
  inputs = keras.Input((16, 16, 1))
  x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
  keras.Model(inputs, keras.layers.Dense(10)(x)).save(tmp_path / "other.keras")
  result = run_cli("import-teacher", tmp_path / "other.keras", "-r", "digits", "-w",
                   tmp_path / "teacher")
  assert result.exit_code == 0, result.output
  assert ("at or near chance (0.1000 for 10 classes): it takes 16x16 images and those of digits "
          "are 8x8: was it trained on another data set? Pass that one's --recipe or --dataset. "
          "Else: are its classes") in " ".join(result.stderr.split())


# For each of the teacher's outputs, the data set's class it scores: two pairs swapped.
_SWAPPED = [0, 1, 5, 3, 4, 2, 6, 9, 8, 7]


def test_classes_named_in_another_order_are_put_in_the_data_sets_order(tmp_path, digits):
  """A teacher whose class names are the data set's in another order (a model trained on
  class folders sorted by name, say) scored its classes as the data set's same positions."""
  _split_logits_file(tmp_path / "good.npz", digits)
  arrays = {key: values[:, _SWAPPED] for key, values in np.load(tmp_path / "good.npz").items()}
  names = np.array([f" {digits.class_names[label]}" for label in _SWAPPED])  # spaces aside
  np.savez(tmp_path / "named.npz", **arrays, class_names=names)
  result = run_cli("import-teacher", tmp_path / "named.npz", "-r", "digits", "-w",
                   tmp_path / "named")
  assert result.exit_code == 0, result.output
  assert ("note: the teacher's classes are digits's in another order; its outputs are put in "
          "the data set's order ('2' from its output 5, '5' from its output 2, '7' from its "
          "output 9, '9' from its output 7)"
          ) in result.stderr
  assert "!!!" not in result.stderr  # nothing left to warn of
  assert json.loads((tmp_path / "named" / "summary.json").read_text())["test_accuracy"] == 1.0
  assert _import(tmp_path / "good.npz", tmp_path / "good").exit_code == 0
  for name in ("targets.npz", "predictions.npz"):
    with np.load(tmp_path / "good" / name) as good, np.load(tmp_path / "named" / name) as named:
      for key in ("train_probs", "test_logits"):
        if key in good:
          np.testing.assert_array_equal(named[key], good[key])


def test_classes_in_another_order_without_names_are_warned_of_with_the_order(tmp_path, digits):
  _split_logits_file(tmp_path / "good.npz", digits)
  arrays = {key: values[:, _SWAPPED] for key, values in np.load(tmp_path / "good.npz").items()}
  np.savez(tmp_path / "unnamed.npz", **arrays)
  result = _import(tmp_path / "unnamed.npz", tmp_path / "unnamed")
  assert result.exit_code == 0, result.output
  warning = " ".join(result.stderr.split())
  assert ("the teacher's classes look like digits's in another order: it agrees with the "
          "training labels on 59.6% as given, but on 100.0% with its outputs reordered"
          ) in warning, warning
  # The order it names, applied as it says, is the teacher in the data set's order.
  order = json.loads(re.search(r"reordered as logits\[:, (\[[0-9, ]+\])\]", warning).group(1))
  np.savez(tmp_path / "fixed.npz", **{key: values[:, order] for key, values in arrays.items()})
  result = _import(tmp_path / "fixed.npz", tmp_path / "fixed")
  assert result.exit_code == 0 and result.stderr == "", result.stderr


def test_a_vit_whose_labels_are_in_another_order_teaches_in_the_data_sets(tmp_path, digits):
  """Its id2label and head rows in another order: the import, the targets and the online
  teacher (which reopens the source) all score the data set's classes in its order."""
  from safetensors.numpy import load_file, save_file  # noqa: PLC0415

  for name, order in (("in_order", list(range(10))), ("swapped", _SWAPPED)):
    folder = shutil.copytree(FIXTURES / "vit_hf", tmp_path / name)
    config_file = folder / "config.json"
    settings = json.loads(config_file.read_text())
    settings["id2label"] = {str(i): digits.class_names[c] for i, c in enumerate(order)}
    settings["label2id"] = {label: int(i) for i, label in settings["id2label"].items()}
    config_file.write_text(json.dumps(settings))
    tensors = load_file(folder / "model.safetensors")
    for key in ("classifier.weight", "classifier.bias"):
      tensors[key] = np.ascontiguousarray(tensors[key][np.argsort(order)])
    save_file(tensors, folder / "model.safetensors")
    assert _import(folder, tmp_path / f"teacher-{name}").exit_code == 0
  stored = [np.load(tmp_path / f"teacher-{name}" / "predictions.npz")["test_logits"]
            for name in ("in_order", "swapped")]
  np.testing.assert_allclose(stored[1], stored[0], atol=1e-5)
  stats = [jnp.asarray(s) for s in pixel_stats(digits.x_train)]
  images = normalize(jnp.asarray(digits.x_test[:6]), *stats)
  online = [_logits(online_teacher(tmp_path / f"teacher-{name}", digits, temperature=1.0,
                                   mixup=0.0, form="logits", feature_layer=None), images)
            for name in ("in_order", "swapped")]
  np.testing.assert_allclose(online[1], online[0], atol=1e-5)
  np.testing.assert_allclose(online[0], stored[0][:6], atol=1e-4)


def test_a_channels_first_keras_model_is_refused_before_any_note(tmp_path, digits):
  os.environ.setdefault("KERAS_BACKEND", "jax")
  import keras  # noqa: PLC0415 (after choosing its backend)

  inputs = keras.Input((1, 8, 8))
  x = keras.layers.Conv2D(4, 3, data_format="channels_first")(inputs)
  keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(x))).save(
      tmp_path / "first.keras")
  result = run_cli("import-teacher", tmp_path / "first.keras", "-r", "digits", "-w",
                   tmp_path / "t")
  assert result.exit_code == 2
  assert result.stderr.startswith(
      f"error: {tmp_path / 'first.keras'} takes channels-first images [1, 8, 8]; distill gives "
      "[height, width, channels]: wrap it with inputs = keras.Input((8, 8, 1)); "
      "keras.Model(inputs, model(keras.layers.Permute((3, 1, 2))(inputs))).save(...)")
  assert len(result.stderr.strip().splitlines()) == 1


def test_a_finished_import_is_refused_before_the_data_set_is_labelled(tmp_path, monkeypatch,
                                                                     imported):
  from distill import imported as importing  # noqa: PLC0415

  copy_runs(imported, tmp_path, teacher="hf")
  monkeypatch.setattr(importing, "_run_on_splits", lambda *args: pytest.fail("labelled first"))
  result = _import(FIXTURES / "vit_hf", tmp_path / "teacher")
  assert result.exit_code == 2 and "already holds a finished run" in result.stderr
