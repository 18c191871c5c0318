"""Teachers trained elsewhere become teacher runs that students learn from (tiny digits)."""

import json
import os
import sys
import textwrap
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY, TINY_FLAGS, run_cli

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


def test_imported_vit_is_a_teacher_run_that_teaches_by_targets_and_online(tmp_path, digits):
  result = _import(FIXTURES / "vit_timm", tmp_path / "teacher")
  assert result.exit_code == 0, result.output
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


def test_online_teacher_sees_pixels_as_the_import_did(tmp_path, digits):
  """The student's standardised images are mapped back to pixels for the imported teacher."""
  assert _import(FIXTURES / "vit_hf", tmp_path / "teacher").exit_code == 0
  strategy = online_teacher(tmp_path / "teacher", digits, temperature=1.0, mixup=0.0,
                            form="logits", feature_layer=None)
  stats = [jnp.asarray(s) for s in pixel_stats(digits.x_train)]
  images = normalize(jnp.asarray(digits.x_test[:6]), *stats)
  direct = open_teacher(FIXTURES / "vit_hf")
  want = direct.apply(direct.params, jnp.asarray(digits.x_test[:6], jnp.float32))
  np.testing.assert_allclose(strategy.apply(strategy.params, images), want, atol=1e-4)
  stored = np.load(tmp_path / "teacher" / "predictions.npz")["test_logits"][:6]
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
    images = augment_views(normalize(jnp.asarray(digits.x_train[:8]), *stats), rows,
                           jnp.full_like(rows, view), recipe["seed"], recipe["augment"])
    np.testing.assert_allclose(arrays["view_logits"][:8, view],
                               strategy.apply(strategy.params, images), atol=1e-4)
  # Re-exported from the source imported.json names: the same views, at another temperature.
  result = run_cli("export", "--teacher", teacher, "--views", 2, "-T", 3, "--out",
                   tmp_path / "again", "-q")
  assert result.exit_code == 0, result.output
  again, again_meta = load_targets(tmp_path / "again")
  for name in ("train_logits", "test_logits", "view_logits"):
    np.testing.assert_allclose(again[name], arrays[name], atol=1e-5)
  assert again_meta["temperature"] == 3.0 and again_meta["views"] == meta["views"]
  assert again_meta["teacher"] == meta["teacher"]


def test_views_exported_for_an_imported_vit_teach_a_student(tmp_path):
  """The README's order: import, then `distill export --views K` into the teacher's folder."""
  teacher = tmp_path / "teacher"
  assert _import(FIXTURES / "vit_timm", teacher).exit_code == 0
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
  result = run_cli("teacher", "-r", "digits", "-w", tmp_path / "teacher", "-q",
                   "--init-from", FIXTURES / "vit_timm", "--strict-init-check", *TINY_FLAGS)
  assert result.exit_code == 0, result.output
  summary = json.loads((tmp_path / "teacher" / "summary.json").read_text())
  recipe = json.loads((tmp_path / "teacher" / "recipe.json").read_text())
  assert recipe["teacher"]["init_from"] == str((FIXTURES / "vit_timm").resolve())
  assert summary["init_loss_expected"] is None  # its head starts trained, not uniform
  # The fine-tuned teacher restores, exports and teaches like any other.
  student = _student(tmp_path / "teacher", tmp_path / "s", "-m", "mlp", "--teaching", "online")
  assert student["teacher_test_accuracy"] == summary["test_accuracy"]


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


def _probabilities_file(path, digits):
  source = np.load(_logits_file(path, digits))

  def softmax(x):
    return np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)

  np.savez(path, train_logits=softmax(source["train_logits"]),
           test_logits=softmax(source["test_logits"]))
  return path


@pytest.mark.parametrize("make, message", [
    (lambda tmp, d: _logits_file(tmp / "l.npz", d, classes=5),
     "predicts 5 classes; digits has 10. Import a teacher trained on these classes\n"),
    (lambda tmp, d: _logits_file(tmp / "l.npz", d, train_rows=100), "train_logits has 100 rows"),
    (lambda tmp, d: (tmp / "empty").mkdir() or tmp / "empty", "config.json"),
    (lambda tmp, d: "no_such_module_here:fn", "no_such_module_here"),
    (lambda tmp, d: tmp / "missing.keras", "does not exist"),
    (lambda tmp, d: _callable_module(tmp, "np.where(np.arange(10) == 3, np.nan, scores)"),
     "bad_teacher:logits gives 1,288 logits that are NaN or infinite for the train images "
     "(the first in row 0)"),
    (lambda tmp, d: _callable_module(tmp, "np.exp(scores) / np.exp(scores).sum(1, keepdims=True)"),
     "bad_teacher:logits gives probabilities (every row is at least 0 and sums to 1), not logits"),
    (lambda tmp, d: _probabilities_file(tmp / "p.npz", d), "gives probabilities"),
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
