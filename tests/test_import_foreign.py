"""Teachers trained elsewhere: Keras .keras files, .npz logits, Python callables.

conftest.py sets KERAS_BACKEND=jax before keras is imported here.
"""

import sys
import textwrap

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

from distill.errors import UserError
from distill.importers import ForeignTeacher, open_teacher
from distill.importers.callable import open_callable
from distill.importers.logits import check_logits_fit


def _pixels(shape=(5, 28, 28, 1), seed=0):
  """Float32 pixels in 0..255 as the data set gives them (uint8 cast to float)."""
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8).astype(np.float32)


def _dense(units, **kwargs):
  """A Dense layer with fixed initial weights (no global seeding, which other tests share)."""
  return keras.layers.Dense(units, kernel_initializer=keras.initializers.GlorotUniform(seed=1),
                            bias_initializer=keras.initializers.RandomNormal(seed=2), **kwargs)


def _cnn(input_shape, head):
  """Rescaling + Conv + pooling + `head` layers, with fixed weights."""
  conv = keras.layers.Conv2D(4, 3, activation="relu",
                             kernel_initializer=keras.initializers.GlorotUniform(seed=0))
  return keras.Sequential([keras.Input(input_shape), keras.layers.Rescaling(1 / 255), conv,
                           keras.layers.GlobalAveragePooling2D(), *head])


def _save(model, tmp_path, name):
  path = tmp_path / f"{name}.keras"
  model.save(path)
  return path


# --- Keras --------------------------------------------------------------------


def test_keras_logits_match_the_model_also_under_jit_and_grad(tmp_path):
  model = _cnn((28, 28, 1), [_dense(10)])
  teacher = open_teacher(_save(model, tmp_path, "cnn"))
  assert isinstance(teacher, ForeignTeacher)
  assert (teacher.kind, teacher.num_classes, teacher.can_teach_online) == ("keras", 10, True)
  assert teacher.num_params == model.count_params() == 4 * 9 + 4 + 4 * 10 + 10
  assert teacher.details["input_shape"] == [28, 28, 1]
  assert teacher.details["output_activation"] == "linear"
  assert teacher.details["layers"] == 4 and teacher.details["keras_version"] == keras.__version__

  x = _pixels()
  expected = np.asarray(model(x, training=False))
  np.testing.assert_allclose(teacher.apply(teacher.params, x), expected, atol=1e-4)
  np.testing.assert_allclose(jax.jit(teacher.apply)(teacher.params, x), expected, atol=1e-4)
  grad = jax.jit(jax.grad(lambda p: teacher.apply(teacher.params, p).sum()))(x)
  assert grad.shape == x.shape and bool(jnp.all(jnp.isfinite(grad)))
  assert float(jnp.abs(grad).sum()) > 0


_SOFTMAX_HEADS = {
    "dense-softmax": lambda: [_dense(10, activation="softmax")],
    "activation-layer": lambda: [_dense(10), keras.layers.Activation("softmax")],
    "softmax-layer": lambda: [_dense(10), keras.layers.Softmax()],
}


@pytest.mark.parametrize("head", sorted(_SOFTMAX_HEADS))
def test_keras_softmax_output_becomes_log_probabilities(tmp_path, head):
  model = _cnn((28, 28, 1), _SOFTMAX_HEADS[head]())
  teacher = open_teacher(_save(model, tmp_path, "softmax"))
  assert teacher.details["output_activation"] == "softmax"
  assert "log-probabilities" in teacher.details["outputs"]
  x = _pixels()
  probs = np.asarray(model(x, training=False))
  logits = jax.jit(teacher.apply)(teacher.params, x)
  np.testing.assert_allclose(logits, np.log(probs), atol=1e-4)
  np.testing.assert_allclose(jax.nn.softmax(logits), probs, atol=1e-6)
  np.testing.assert_allclose(jax.nn.softmax(logits / 4), jax.nn.softmax(np.log(probs) / 4),
                             atol=1e-6)


def test_keras_model_for_32x32_rgb_takes_28x28_grey_images(tmp_path):
  model = _cnn((32, 32, 3), [_dense(7)])
  teacher = open_teacher(_save(model, tmp_path, "rgb32"))
  assert teacher.num_classes == 7
  x = _pixels()
  resized = jax.image.resize(x, (5, 32, 32, 1), "bilinear")
  expected = np.asarray(model(np.repeat(np.asarray(resized), 3, axis=-1), training=False))
  logits = jax.jit(teacher.apply)(teacher.params, x)
  assert logits.shape == (5, 7)
  np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_keras_damaged_or_missing_files(tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    open_teacher(tmp_path / "missing.keras")
  garbage = tmp_path / "garbage.keras"
  garbage.write_bytes(b"not a model at all")
  with pytest.raises(UserError, match="not a Keras 3 .keras file"):
    open_teacher(garbage)
  good = _save(_cnn((8, 8, 1), [_dense(3)]), tmp_path, "good")
  truncated = tmp_path / "truncated.keras"
  truncated.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
  with pytest.raises(UserError, match="truncated.keras") as caught:
    open_teacher(truncated)
  assert "\n" not in str(caught.value)


def test_keras_models_that_are_not_classifiers_of_one_image(tmp_path):
  image = keras.Input((8, 8, 1))
  conv = keras.layers.Conv2D(3, 3)(image)
  two_inputs = keras.Model([image, keras.Input((4,))], conv)
  with pytest.raises(UserError, match="has 2 inputs"):
    open_teacher(_save(two_inputs, tmp_path, "two_inputs"))
  pooled = keras.layers.GlobalAveragePooling2D()(conv)
  two_outputs = keras.Model(image, [_dense(3)(pooled), _dense(2)(pooled)])
  with pytest.raises(UserError, match="has 2 outputs"):
    open_teacher(_save(two_outputs, tmp_path, "two_outputs"))
  with pytest.raises(UserError, match=r"outputs \[2, 6, 6, 3\].*\[batch, classes\]"):
    open_teacher(_save(keras.Model(image, conv), tmp_path, "feature_map"))


def test_keras_imported_with_another_backend(tmp_path, monkeypatch):
  path = _save(_cnn((8, 8, 1), [_dense(3)]), tmp_path, "model")
  monkeypatch.setattr(keras.config, "backend", lambda: "tensorflow")
  with pytest.raises(UserError, match="tensorflow backend; set KERAS_BACKEND=jax"):
    open_teacher(path)


# --- logits .npz --------------------------------------------------------------


def _logit_arrays(train=60, test=20, val=10, classes=10):
  rng = np.random.default_rng(0)
  arrays = {"train_logits": rng.normal(size=(train, classes)).astype(np.float32),
            "test_logits": rng.normal(size=(test, classes))}
  if val:
    arrays["val_logits"] = rng.normal(size=(val, classes)).astype(np.float16)
  return arrays


def test_logits_file_loads(tmp_path):
  arrays = _logit_arrays()
  names = np.array([f"class {i}" for i in range(10)])
  np.savez(tmp_path / "t.npz", **arrays, class_names=names, train_labels=np.arange(60))
  teacher = open_teacher(tmp_path / "t.npz")
  assert (teacher.kind, teacher.num_classes, teacher.apply) == ("logits", 10, None)
  assert not teacher.can_teach_online
  assert sorted(teacher.logits) == ["test", "train", "val"]
  for split in ("train", "test", "val"):
    assert teacher.logits[split].dtype == np.float32
    np.testing.assert_allclose(teacher.logits[split], arrays[f"{split}_logits"], rtol=1e-6)
  assert teacher.class_names == names.tolist()
  assert teacher.details["ignored_arrays"] == ["train_labels"]
  assert check_logits_fit(teacher, num_train=60, num_test=20, num_classes=10, num_val=10)


def _with(**changes):
  arrays = _logit_arrays(val=0)
  for key, value in changes.items():
    if value is None:
      del arrays[key]
    else:
      arrays[key] = value
  return arrays


def _nan_at_row_3():
  array = np.zeros((60, 10), np.float32)
  array[3, 2] = np.nan
  return array


@pytest.mark.parametrize("arrays, message", [
    (_with(test_logits=None), r"has no test_logits \(it has train_logits; expected"),
    (_with(train_logits=np.zeros(60, np.float32)), r"train_logits .* has shape \[60\]; .* 2-D"),
    (_with(train_logits=_nan_at_row_3()), "train_logits .* 1 values that are NaN .* row 3"),
    (_with(test_logits=np.zeros((20, 10), np.int64)), "test_logits .* dtype int64"),
    (_with(test_logits=np.zeros((20, 9), np.float32)),
     "test_logits .* has 9 classes; train_logits has 10"),
    (_with(val_logits=np.zeros((5, 3), np.float32)), "val_logits .* has 3 classes"),
    (_with(class_names=np.array(["a", "b"])), "class_names .* has 2 names; .* 10 classes"),
    (_with(val_logit=np.zeros((5, 10), np.float32)), "array named 'val_logit'"),
    (_with(class_names=np.array(["a", 1], dtype=object)), "class_names .* Python objects"),
], ids=["missing-key", "1-d", "nan", "int", "classes", "val-classes", "names", "typo", "object"])
def test_malformed_logits_files(tmp_path, arrays, message):
  np.savez(tmp_path / "bad.npz", **arrays)
  with pytest.raises(UserError, match=message) as caught:
    open_teacher(tmp_path / "bad.npz")
  assert "\n" not in str(caught.value)


def test_unreadable_logits_file(tmp_path):
  (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 damaged")
  with pytest.raises(UserError, match="not a readable .npz file"):
    open_teacher(tmp_path / "bad.npz")


def _fit(tmp_path, arrays, **sizes):
  """check_logits_fit of a file of `arrays` against a data set of `sizes`; its error, or None."""
  np.savez(tmp_path / "t.npz", **arrays)
  try:
    return check_logits_fit(open_teacher(tmp_path / "t.npz"), **{"num_classes": 2, **sizes})
  except UserError as error:
    assert "\n" not in str(error)
    return str(error)


# digits as the digits recipe splits it: 1,438 training images = 1,288 training rows + 150.
_DIGITS = {"num_train": 1_288, "num_val": 150, "num_test": 359, "dataset_name": "digits"}
_BOTH_SHAPES = ("it takes train_logits of all 1,438 training images in its own order, or of "
                "distill's 1,288 training rows with val_logits of its 150 validation rows")


def test_logits_fit_in_either_shape(tmp_path):
  assert _fit(tmp_path, _logit_arrays(train=1_438, test=359, val=0, classes=2), **_DIGITS) is False
  assert _fit(tmp_path, _logit_arrays(train=1_288, test=359, val=150, classes=2), **_DIGITS)


def test_logits_of_the_wrong_row_count_state_both_shapes(tmp_path):
  # With val_logits, the training rows expected are distill's 1,288, not all 1,438.
  message = _fit(tmp_path, _logit_arrays(train=1_000, test=359, val=150, classes=2), **_DIGITS)
  assert "train_logits has 1,000 rows and val_logits 150; " + _BOTH_SHAPES in message
  message = _fit(tmp_path, _logit_arrays(train=1_000, test=359, val=0, classes=2), **_DIGITS)
  assert "train_logits has 1,000 rows; " + _BOTH_SHAPES in message
  # All training images and val_logits too: the validation rows are labelled twice.
  message = _fit(tmp_path, _logit_arrays(train=1_438, test=359, val=150, classes=2), **_DIGITS)
  assert ("train_logits has all 1,438 training images, which already cover the 150 validation "
          "rows; drop val_logits") in message
  assert "no validation split" not in message
  message = _fit(tmp_path, _logit_arrays(train=1_288, test=359, val=140, classes=2), **_DIGITS)
  assert "train_logits has 1,288 rows and val_logits 140; " + _BOTH_SHAPES in message
  message = _fit(tmp_path, _logit_arrays(train=1_438, test=358, val=0, classes=2), **_DIGITS)
  assert message.endswith("does not fit digits: test_logits has 358 rows; the data set's test "
                          "images number 359")
  message = _fit(tmp_path, _logit_arrays(train=1_438, test=359, val=0, classes=10), **_DIGITS)
  assert "the logits have 10 classes; the data set has 2" in message
  # A data set that comes unsplit (a stream) has no validation rows for val_logits.
  message = _fit(tmp_path, _logit_arrays(train=60, test=20, val=10, classes=2), num_train=60,
                 num_val=None, num_test=20)
  assert "val_logits has 10 rows, but the data set has no validation split" in message


def test_logits_made_for_another_packaged_data_set_name_it(tmp_path):
  sizes = {"num_train": 55_000, "num_val": 5_000, "num_test": 10_000,
           "dataset_name": "fashion_mnist", "named_as": "fashion_mnist (the recipe's data set)"}
  for val in (0, 150):
    message = _fit(tmp_path, _logit_arrays(train=1_438 - val, test=359, val=val, classes=2),
                   **sizes)
    assert message.startswith(f"{tmp_path / 't.npz'} does not fit fashion_mnist (the recipe's "
                              "data set): ")
    assert message.endswith("; the rows fit digits: pass --recipe digits")
  message = _fit(tmp_path, _logit_arrays(train=60_000, test=10_000, val=0, classes=2),
                 **_DIGITS)
  assert message.endswith("the rows fit fashion_mnist or mnist: pass --recipe fashion_mnist "
                          "or --dataset mnist")


def test_packaged_sizes_are_the_data_sets_own():
  from distill.data import load_dataset  # noqa: PLC0415
  from distill.importers.logits import _PACKAGED_SIZES  # noqa: PLC0415

  digits = load_dataset("digits", val_size=150)
  assert _PACKAGED_SIZES["digits"] == (digits.source_train_size, len(digits.x_test))


# --- callables ----------------------------------------------------------------

_MODULE = "distill_test_foreign_teachers"
_SOURCE = """
    import jax.numpy as jnp
    import numpy as np

    WEIGHTS = np.random.default_rng(0).normal(size=(28 * 28, 10)).astype(np.float32)
    NOT_CALLABLE = 3


    def jax_teacher(images):
      assert images.dtype == jnp.uint8
      return (images.reshape(images.shape[0], -1).astype(jnp.float32) / 255) @ WEIGHTS


    def numpy_teacher(images):
      images = np.asarray(images)
      assert images.dtype == np.uint8
      return (images.reshape(len(images), -1).astype(np.float32) / 255) @ WEIGHTS


    def list_teacher(images):
      return [[float(score) for score in row] for row in numpy_teacher(images)]


    class Model:
      def predict(self, images):
        return jax_teacher(images)[:, :4]


    model = Model()


    def flat(images):
      return jnp.zeros((images.shape[0],))


    def crashes(images):
      raise RuntimeError("out of cheese")
"""


@pytest.fixture
def teachers_module(tmp_path, monkeypatch):
  """A module of teacher functions, importable as _MODULE while the test runs."""
  (tmp_path / f"{_MODULE}.py").write_text(textwrap.dedent(_SOURCE))
  (tmp_path / "broken_teacher_module.py").write_text("import no_such_dependency_xyz\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  yield _MODULE
  for name in (_MODULE, "broken_teacher_module"):
    sys.modules.pop(name, None)


def _reference(pixels):
  """What the test module's teachers compute from float pixels (rounded, clipped to uint8)."""
  weights = np.random.default_rng(0).normal(size=(28 * 28, 10)).astype(np.float32)
  images = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
  return (images.reshape(len(images), -1).astype(np.float32) / 255) @ weights


def test_jax_callable_teaches_online(teachers_module):
  teacher = open_teacher(f"{teachers_module}:jax_teacher", image_shape=(28, 28, 1))
  assert (teacher.kind, teacher.num_classes, teacher.can_teach_online) == ("callable", 10, True)
  assert teacher.details["traceable"] is True
  pixels = _pixels(seed=1) + 0.4  # Fractions round; values above 255 clip.
  pixels[0, 0, 0, 0] = 300.0
  logits = jax.jit(teacher.apply)(teacher.params, pixels)
  np.testing.assert_allclose(logits, _reference(pixels), rtol=1e-5, atol=1e-5)


def test_numpy_callable_computes_logits_but_not_online(teachers_module):
  teacher = open_teacher(f"{teachers_module}:numpy_teacher", image_shape=(28, 28, 1))
  assert (teacher.num_classes, teacher.can_teach_online) == (10, False)
  assert "Tracer" in teacher.details["not_traceable_because"]
  pixels = _pixels(seed=2)
  logits = teacher.apply(teacher.params, pixels)
  assert isinstance(logits, np.ndarray) and logits.dtype == np.float32
  np.testing.assert_allclose(logits, _reference(pixels), rtol=1e-5, atol=1e-5)


def test_callable_returning_python_lists_runs_on_the_host(teachers_module):
  teacher = open_teacher(f"{teachers_module}:list_teacher", image_shape=(28, 28, 1))
  assert (teacher.num_classes, teacher.can_teach_online) == (10, False)
  pixels = _pixels(seed=3)
  logits = teacher.apply(teacher.params, pixels)
  assert isinstance(logits, np.ndarray) and logits.dtype == np.float32
  np.testing.assert_allclose(logits, _reference(pixels), rtol=1e-5, atol=1e-5)


def test_callable_method_of_an_object(teachers_module):
  teacher = open_callable(f"{teachers_module}:model.predict", (28, 28, 1))
  assert (teacher.num_classes, teacher.can_teach_online) == (4, True)


@pytest.mark.parametrize("spec, message", [
    ("no_colon", "not a callable teacher: write package.module:function"),
    ("a:b:c", "not a callable teacher"),
    (":f", "not a callable teacher"),
    (f"{_MODULE}:", "not a callable teacher"),
    ("1bad.module:f", "not a callable teacher"),
    ("no_such_module_xyz:f", "cannot import module no_such_module_xyz .*No module named"),
    ("broken_teacher_module:f",
     "cannot import module broken_teacher_module .*No module named 'no_such_dependency_xyz'"),
    (f"{_MODULE}:missing", f"{_MODULE} has no attribute 'missing'"),
    (f"{_MODULE}:model.missing", f"{_MODULE}.model has no attribute 'missing'"),
    (f"{_MODULE}:NOT_CALLABLE", "NOT_CALLABLE is not callable: it is an int, not a function"),
    (f"{_MODULE}:flat", r"returned \[2\] for 2 images; .* logits \[batch, classes\]"),
    (f"{_MODULE}:crashes", "failed on 2 black uint8 images .*RuntimeError: out of cheese"),
])
def test_bad_callable_specs(teachers_module, spec, message):
  with pytest.raises(UserError, match=message) as caught:
    open_callable(spec, (28, 28, 1))
  assert "\n" not in str(caught.value)


def test_a_callable_in_the_current_folder_imports(tmp_path, monkeypatch):
  """`distill import-teacher here:f` finds here.py in the folder it runs from, as `python -m`
  would, though the console script's folder is what Python put on sys.path."""
  (tmp_path / "teacher_in_this_folder.py").write_text(textwrap.dedent(_SOURCE))
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry not in ("", ".")])
  monkeypatch.delitem(sys.modules, "teacher_in_this_folder", raising=False)
  teacher = open_callable("teacher_in_this_folder:jax_teacher", (28, 28, 1))
  assert (teacher.num_classes, teacher.can_teach_online) == (10, True)
  assert sys.path[-1] == str(tmp_path)  # Last: an installed package is never hidden.


def test_open_teacher_passes_the_image_shape_to_callables(teachers_module):
  with pytest.raises(ValueError, match="image_shape"):
    open_teacher(f"{teachers_module}:jax_teacher")
