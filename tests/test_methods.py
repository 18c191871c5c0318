"""Distillation methods end to end: DKD, DIST, the distillation token and feature hints.

Every run passes `--strict-init-check`, so each method's step-0 expectation
(derived for a uniform student, see `distill.teaching`) is checked against
the real first batch, not only in the loss unit tests.
"""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_FLAGS, run_cli
from flax import nnx

from distill import compare, config, losses, run_recipe, teaching, workflow
from distill.errors import UserError
from distill.inference import normalize


def _student(teacher_dir, workdir, *args):
  result = run_cli("student", "--teacher", teacher_dir, "-w", workdir, "-q",
                   "--strict-init-check", *TINY_FLAGS, *args)
  assert result.exit_code == 0, result.output
  return json.loads((workdir / "summary.json").read_text())


@pytest.fixture(scope="module")
def students(tmp_path_factory, tiny_digits_runs):
  """Students of the shared TINY teacher, each trained once for the module: `students(*args)`
  gives (its summary, its run folder). Tests that look into a run the method test trained
  (the token's heads, the hint's checkpoint) take it from here rather than train it again;
  none of them writes into it."""
  root, trained = tmp_path_factory.mktemp("students"), {}

  def student(*args):
    if args not in trained:
      workdir = root / f"s{len(trained)}"
      trained[args] = _student(tiny_digits_runs / "teacher", workdir, *args), workdir
    return trained[args]

  return student


@pytest.mark.parametrize("args, method", [
    (("-m", "mlp", "--method", "dkd", "-T", "4"), "dkd"),
    (("-m", "mlp", "--method", "dkd", "--teaching", "online"), "dkd"),
    # The step-0 check hands the ramp a Python int, the jitted step a traced one.
    (("-m", "mlp", "--method", "dkd", "--set", "student.dkd.warmup_steps=10"), "dkd"),
    (("-m", "cnn", "--method", "dist", "-T", "2"), "dist"),
    (("-m", "vit", "--method", "token"), "token"),
    (("-m", "vit", "--method", "token", "--set", "student.token.variant=soft", "-T", "2"),
     "token"),
    (("-m", "mlp", "--method", "hint", "--teaching", "online"), "hint"),
    (("-m", "vit", "--method", "hint", "--teaching", "online", "--set",
      "student.hint.kind=cosine", "--set", "student.vit.width=16"), "hint"),
])
def test_every_method_trains_from_the_cli_and_passes_its_strict_step0_check(students, args,
                                                                           method):
  summary, workdir = students(*args)
  assert summary["method"] == method
  # Only kd and hint read student.alpha: the others record none, and their lines show none.
  reads_alpha = method == "hint"
  assert (summary["alpha"] is not None) == reads_alpha
  # Nor a soft loss but kd's and hint's, nor a temperature a hard token.
  assert (summary["soft_loss"] is not None) == (method == "hint")
  assert (summary["temperature"] is None) == (
      method == "token" and summary["method_options"]["variant"] == "hard")
  assert (", T=" in workflow.result_line(summary, workdir)) == (
      summary["temperature"] is not None)
  assert compare.row_value(summary, "soft_loss") == summary["soft_loss"]  # None: no soft_ce
  assert ("alpha=" in workflow.result_line(summary, workdir)) == reads_alpha
  assert ("alpha=" in compare.run_label(summary)) == reads_alpha
  assert np.isfinite(summary["final_train_loss"])
  assert summary["init_loss"] == pytest.approx(summary["init_loss_expected"], abs=0.05)
  assert 0.0 <= summary["test_accuracy"] <= 1.0


def test_hint_student_restores_and_exports_from_its_checkpoint(students):
  """The projection is checkpointed beside the student and read back with it."""
  summary, workdir = students("-m", "mlp", "--method", "hint", "--teaching", "online")
  recipe = run_recipe.read_run_recipe(workdir)
  dataset = workflow.load_data(recipe)
  model, step = workflow.restore_trained(workdir, recipe, "student", dataset)
  assert step == summary["steps"]
  assert model.params_sha256() == summary["params_sha256"]


def _train_losses(workdir):
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [row["loss"] for row in rows if "loss" in row]


def test_hint_runs_see_the_images_kd_on_targets_sees(tiny_digits_runs, tmp_path):
  """Hints run the teacher online for its inner layer, un-augmented unless asked.

  At hint weight 0 a hint run is kd with the teacher in the step: on the same
  un-augmented images in the same order as kd on exported targets, it follows
  that run's losses step by step. Augmented (student.augment=true), it follows
  online kd's instead. (The losses sit near log(10) after 20 steps, so they
  are compared to 1e-6: augmentation moves them by 1e-5 and more.)
  """
  teacher = tiny_digits_runs / "teacher"
  every_5 = ("--set", "student.log_every=5", "-m", "mlp")
  kd = _student(teacher, tmp_path / "kd", *every_5)
  hint_flags = (*every_5, "--method", "hint", "--teaching", "online",
                "--set", "student.hint.weight=0")
  hint = _student(teacher, tmp_path / "hint", *hint_flags)
  augmented = _student(teacher, tmp_path / "augmented", *hint_flags,
                       "--set", "student.augment=true")
  online_kd = _student(teacher, tmp_path / "online", *every_5, "--teaching", "online")
  assert (kd["augmented"], hint["augmented"], augmented["augmented"],
          online_kd["augmented"]) == (False, False, True, True)
  kd_losses = _train_losses(tmp_path / "kd")
  assert len(kd_losses) == 4
  np.testing.assert_allclose(_train_losses(tmp_path / "hint"), kd_losses, rtol=1e-6)
  augmented_losses = _train_losses(tmp_path / "augmented")
  np.testing.assert_allclose(augmented_losses, _train_losses(tmp_path / "online"), rtol=1e-6)
  assert np.max(np.abs(np.subtract(augmented_losses, kd_losses)) / kd_losses) > 1e-5


def test_token_student_predicts_the_mean_of_its_two_heads(students):
  _, workdir = students("-m", "vit", "--method", "token")
  recipe = run_recipe.read_run_recipe(workdir)
  dataset = workflow.load_data(recipe)
  model, _ = workflow.restore_trained(workdir, recipe, "student", dataset)
  graphdef = model.graphdef
  images = normalize(jnp.asarray(dataset.x_test[:8]), *map(jnp.asarray, model.stats))

  # jax.jit over the split model: op by op, each of the ViT's operations compiles on first use.
  @jax.jit
  def heads_and_prediction(params, rest, images):
    module = nnx.merge(graphdef, params, rest)
    return module.token_heads(images), module(images)

  (class_logits, distill_logits), logits = heads_and_prediction(model.params, model.rest, images)
  mean = (jax.nn.softmax(class_logits) + jax.nn.softmax(distill_logits)) / 2
  np.testing.assert_allclose(jax.nn.softmax(logits), mean, atol=1e-5)


@pytest.mark.parametrize("overrides, message", [
    (["student.method=token", "student.model=cnn"], "needs a ViT student"),
    (["student.method=hint", "student.teaching=targets"], "needs teaching=online"),
    (["student.method=hint", "student.teaching=online", "student.model=linear"],
     "inner layer"),
    (["student.method=nope"], "student.method must be one of kd, dkd, dist, token, hint"),
    (["student.method=token", "student.model=vit", "student.token.variant=both"],
     "student.token.variant"),
    (["student.method=hint", "student.teaching=online", "student.hint.kind=l1"],
     "student.hint.kind"),
    (["student.method=dkd", "student.dkd.beta=-1"], "student.dkd.beta"),
])
def test_invalid_method_combinations_are_one_line_errors(overrides, message):
  with pytest.raises(UserError, match=message):
    config.load_recipe("digits", overrides)


@pytest.mark.parametrize("args, message", [
    (("--method", "dkd", "--alpha", "0.5"),
     "student.alpha=0.5 changes nothing for method dkd (DKD weighs its terms with "
     "student.dkd.alpha and student.dkd.beta): drop it"),
    (("--method", "dkd", "--soft-loss", "kl"),
     "student.soft_loss=kl changes nothing for method dkd (only kd and hint read it): drop it"),
    (("-m", "vit", "--method", "token", "-T", "5"),
     "student.temperature=5.0 changes nothing for method token (a token of variant hard "
     "learns the teacher's top class; student.token.variant=soft reads it): drop it"),
    (("--method", "kd", "--set", "student.dist.beta=2"),
     "student.dist.beta=2 changes nothing for method kd: it is a setting of method dist; "
     "drop it, or train with --method dist"),
    (("--loss", "hard", "--method", "dkd"),
     "student.method=dkd changes nothing for a student on hard labels (student.loss=hard learns "
     "from one-hot labels, not from its teacher): drop it, or train with the soft loss"),
    (("--teaching", "online", "--set", "student.augment=false"),
     "student.augment=false changes nothing for teaching=online: it augments by construction "
     "(the teacher labels the student's own augmented images); drop it, or train with "
     "--teaching targets"),
    # Accepted, recorded in recipe.json and shown by compare as differences of runs that
    # trained alike.
    (("--set", "augment.flip=true"),
     "augment.flip=true changes nothing for this student: it is not augmented (taught by "
     "exported targets, which belong to the images as they are, with student.augment=false); "
     "drop it, or add --set student.augment=true"),
    (("--loss", "hard", "--set", "augment.crop=resize"),
     "augment.crop=resize changes nothing for this student: it is not augmented (on hard "
     "labels, with student.augment=false); drop it, or add --set student.augment=true"),
    (("--set", "export.temperature=5"),
     "export.temperature=5 changes nothing for a student: it sets the temperature of the "
     "targets `distill export` writes; the student's own is -T"),
    (("--teaching", "views", "--set", "augment.flip=false"),
     "augment.flip=false changes nothing for teaching=views: the student replays the views its "
     "teacher exported, augmented as they were then (distill export --teacher DIR --views K "
     "with other augment settings exports others); drop it"),
])
def test_settings_the_method_would_not_read_are_refused(tiny_digits_runs, tmp_path, args,
                                                        message):
  _refused_in_one_line(tiny_digits_runs / "teacher", tmp_path / "s", args, message)


def _refused_in_one_line(teacher_dir, workdir, args, message):
  """`distill student ARGS` stops with `message` alone, exit status 2, before writing."""
  result = run_cli("student", "--teacher", teacher_dir, "-w", workdir, "-q", *TINY_FLAGS, *args)
  assert result.exit_code == 2, result.output
  assert result.stderr.strip() == f"error: {message}"
  assert not workdir.exists()


def test_cli_refuses_a_token_for_a_cnn_in_one_line(tiny_digits_runs, tmp_path):
  result = run_cli("student", "--teacher", tiny_digits_runs / "teacher", "-w", tmp_path / "s",
                   "-m", "cnn", "--method", "token", "-q", *TINY_FLAGS)
  assert result.exit_code == 2
  assert "needs a ViT student" in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (("-m", "cnn", "--set", "student.hint.student_layer=2"),
     "student.hint.student_layer=2 is out of range: the cnn student has 2 inner layers "
     "(0 to 1, or -2 to -1 from the last)"),
    (("-m", "mlp", "--set", "student.hint.student_layer=-2"),
     "student.hint.student_layer=-2 is out of range: the mlp student has 1 inner layer (0, or -1)"),
    (("-m", "cnn", "--set", "student.hint.teacher_layer=1"),  # TINY's teacher has one block
     "student.hint.teacher_layer=1 is out of range: the vit teacher has 1 inner layer (0, or -1)"),
])
def test_a_hint_layer_out_of_range_is_a_one_line_error_before_anything_runs(
    tiny_digits_runs, tmp_path, args, message):
  _refused_in_one_line(tiny_digits_runs / "teacher", tmp_path / "s",
                       ("--method", "hint", "--teaching", "online", *args), message)


def test_a_sweep_refuses_a_hint_layer_out_of_range_before_its_first_run(tiny_digits_runs,
                                                                         tmp_path):
  result = run_cli("sweep", "--teacher", tiny_digits_runs / "teacher", "--model", "cnn",
                   "--mode", "hard", "--mode", "online", "--method", "hint", "--seed", "0",
                   "--steps", "5", "--set", "student.hint.student_layer=5", "--out",
                   tmp_path / "sweep", "-q")
  assert result.exit_code == 2, result.output
  assert "cnn-online-hint-s0: student.hint.student_layer=5 is out of range" in result.stderr
  assert not list((tmp_path / "sweep").glob("*/metrics.jsonl"))  # the hard run did not train


def test_plain_kd_keeps_the_recipe_hash_it_had_before_methods_existed():
  recipe = config.load_recipe("digits")
  with_dkd_settings = config.load_recipe("digits", ["student.dkd.beta=2"])
  assert config.recipe_hash(recipe, "student") == config.recipe_hash(with_dkd_settings, "student")
  dkd = config.load_recipe("digits", ["student.method=dkd"])
  assert config.recipe_hash(dkd, "student") != config.recipe_hash(recipe, "student")


@pytest.mark.parametrize("method, settings", [
    ("dkd", {"temperature": 4.0, "dkd_alpha": 1.0, "dkd_beta": 8.0}),
    ("dist", {"temperature": 2.0, "dist_beta": 2.0, "dist_gamma": 1.0}),
])
def test_objectives_are_the_label_loss_plus_the_library_loss(method, settings):
  logits = jax.random.normal(jax.random.key(0), (8, 5))
  teacher = 3 * jax.random.normal(jax.random.key(1), (8, 5))
  labels = jnp.arange(8) % 5
  objective = teaching.make_objective(method, **settings)
  assert objective.teacher_form == "logits"
  batch = {"teacher_logits": teacher, "labels": labels, "step": jnp.asarray(3)}
  got = objective.loss(logits, batch)
  if method == "dkd":
    extra = losses.dkd_loss(logits, teacher, labels, alpha=1.0, beta=8.0, temperature=4.0)
  else:
    extra = losses.dist_loss(logits, teacher, beta=2.0, gamma=1.0, temperature=2.0)
  np.testing.assert_allclose(got, losses.hard_cross_entropy(logits, labels) + extra, rtol=1e-5)
  zeros = jnp.zeros_like(logits)
  host = {k: np.asarray(v) for k, v in batch.items()}
  assert float(objective.loss(zeros, batch)) == pytest.approx(
      objective.expected_init_loss(5, host), rel=1e-5)


def test_dkd_warmup_ramps_its_term_from_zero():
  objective = teaching.make_objective("dkd", temperature=4.0, dkd_warmup_steps=10)
  logits = jax.random.normal(jax.random.key(0), (8, 5))
  teacher = jax.random.normal(jax.random.key(1), (8, 5))
  labels = jnp.arange(8) % 5
  at = {step: float(objective.loss(logits, {"teacher_logits": teacher, "labels": labels,
                                            "step": jnp.asarray(step)})) for step in (0, 5, 20)}
  ce = float(losses.hard_cross_entropy(logits, labels))
  assert at[0] == pytest.approx(ce, rel=1e-6)
  assert at[5] - ce == pytest.approx((at[20] - ce) / 2, rel=1e-5)


def test_a_finished_student_of_another_recipe_is_named_not_offered_to_overwrite(
    tiny_digits_runs, tmp_path):
  # Following "pass --overwrite" would have replaced the soft_ce student with the kl one.
  student = shutil.copytree(tiny_digits_runs / "student", tmp_path / "student")
  result = run_cli("student", "--teacher", tiny_digits_runs / "teacher", "-w", student, "-q",
                   *TINY_FLAGS, "--soft-loss", "kl")
  assert result.exit_code == 2
  assert result.stderr.strip() == (
      f"error: {student} holds a finished run of another recipe (student.soft_loss: "
      '"soft_ce" -> "kl"); give this one a --workdir of its own, or pass --overwrite to '
      "replace that run")
  same = run_cli("student", "--teacher", tiny_digits_runs / "teacher", "-w", student, "-q",
                 *TINY_FLAGS)
  assert "already holds a finished run; pass --overwrite" in same.stderr
