"""Distillation options on tiny digits: temperature, alpha, KL, the three teachings, ensembles."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY, TINY_FLAGS, compiled_forward, run_cli, set_flags
from flax import nnx

from distill import augment, compare, config, losses, metrics, run_recipe, step, teaching, workflow
from distill.cli import main
from distill.errors import UserError
from distill.inference import normalize
from distill.targets import load_targets


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
  """Two tiny teachers (seeds 0 and 1); the first also exports 3 augmented views.

  TINY as it is: the seed is an argument of the step, not a constant of its program, so both
  load the program the shared TINY teacher (conftest's `tiny_digits_runs`) compiled.
  """
  root = tmp_path_factory.mktemp("teachers")
  for seed in (0, 1):
    result = run_cli("teacher", "-r", "digits", "-w", root / f"t{seed}", "--seed", seed, "-q",
                     *TINY_FLAGS)
    assert result.exit_code == 0, result.output
  result = run_cli("export", "--teacher", root / "t0", "--views", 3, "-q")
  assert result.exit_code == 0, result.output
  return root


def _restored(result):
  """The model `workflow.restore_trained` returned, as a module."""
  return nnx.merge(result.graphdef, result.params, result.rest)


def _views(images, indices, view, meta):
  """`augment.augment_views` of `images` (rows `indices`, view `view` each), as `meta["views"]`
  says, compiled as one program like the export's (op by op it takes seconds)."""
  seed, settings = meta["views"]["seed"], meta["views"]["augment"]
  return jax.jit(lambda x, rows, views: augment.augment_views(x, rows, views, seed, settings))(
      images, jnp.asarray(indices), jnp.full(len(indices), view))


def _student(teacher_dir, workdir, *args):
  result = run_cli("student", "--teacher", teacher_dir, "-m", "mlp", "-w", workdir, "-q",
                "--strict-init-check", *TINY_FLAGS, *args)
  assert result.exit_code == 0, result.output
  return json.loads((workdir / "summary.json").read_text())


@pytest.mark.parametrize("args, teaching", [
    ((), "targets"),
    (("--teaching", "online"), "online"),
    (("--teaching", "online", "--mixup", "0.4"), "online"),
    (("--teaching", "views"), "views"),
    (("--soft-loss", "kl", "-T", "4", "--alpha", "0.5"), "targets"),
    (("--loss", "hard"), "hard"),
])
def test_every_teaching_trains_and_passes_the_strict_init_check(teachers, tmp_path, args,
                                                                 teaching):
  summary = _student(teachers / "t0", tmp_path / "s", *args)
  assert summary["teaching"] == teaching
  assert np.isfinite(summary["final_train_loss"])
  records = [json.loads(line)
             for line in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
  assert ("teacher_agreement" in records[-1]) == (teaching != "hard")


# Small models at a rate that learns: the shared tiny runs stay near chance, where a student
# that learned nothing from its targets would pass for one that did.
LEARNING = ["teacher.model=mlp", "teacher.mlp.hidden=[64]", "teacher.learning_rate=3e-3",
            "teacher.batch_size=32", "teacher.warmup_steps=2", "teacher.steps=150",
            "student.learning_rate=3e-3", "student.batch_size=32", "student.warmup_steps=2",
            "student.steps=150"]


@pytest.fixture(scope="module")
def learned_teacher(tmp_path_factory):
  """A digits teacher that knows something: an MLP at a rate that learns."""
  workdir = tmp_path_factory.mktemp("learned") / "teacher"
  result = run_cli("teacher", "-r", "digits", "-w", workdir, "-q", *set_flags(LEARNING))
  assert result.exit_code == 0, result.output
  return workdir


@pytest.mark.parametrize("teaching", ["targets", "online"])
def test_a_student_learns_what_its_teacher_knows(learned_teacher, tmp_path, teaching):
  """Soft labels alone (alpha 1) carry the teacher's answers: the student agrees with the
  teacher on most test images. Targets on the wrong rows, or an online teacher fed other
  images than the student's, would leave it near chance."""
  teacher_summary = json.loads((learned_teacher / "summary.json").read_text())
  assert teacher_summary["test_accuracy"] > 0.75
  summary = _student(learned_teacher, tmp_path / "student", "-m", "linear", "--teaching",
                     teaching, *set_flags(LEARNING))
  assert summary["alpha"] == 1 and summary["teaching"] == teaching
  assert summary["agreement_with_teacher"] > 0.8
  assert summary["test_accuracy"] > 0.7


def test_kl_starts_below_log_c_by_the_teachers_entropy(teachers, tmp_path):
  soft_ce = _student(teachers / "t0", tmp_path / "ce", "-T", "2")
  kl = _student(teachers / "t0", tmp_path / "kl", "-T", "2", "--soft-loss", "kl")
  assert soft_ce["init_loss_expected"] == pytest.approx(4 * np.log(10), rel=1e-6)
  assert kl["init_loss_expected"] < soft_ce["init_loss_expected"]
  assert kl["init_loss"] == pytest.approx(kl["init_loss_expected"], abs=1e-5)
  # Same gradient: soft CE and KL differ by the targets' entropy, a constant. So the two runs
  # take the same steps: equal gradient norms, and losses a constant apart.
  logs = [[json.loads(line) for line in (tmp_path / name / "metrics.jsonl").open()]
          for name in ("ce", "kl")]
  assert len(logs[0]) == len(logs[1]) >= 2
  gaps = [ce["loss"] - kl_record["loss"] for ce, kl_record in zip(*logs, strict=True)]
  np.testing.assert_allclose([r["grad_norm"] for r in logs[1]], [r["grad_norm"] for r in logs[0]],
                             rtol=1e-4)
  np.testing.assert_allclose(gaps, gaps[0], rtol=1e-4)
  assert gaps[0] > 0.1  # the targets' entropy, times T², over a nearly uniform student


def test_objective_is_the_library_distillation_loss():
  logits = jax.random.normal(jax.random.key(0), (8, 5))
  targets = jax.nn.softmax(jax.random.normal(jax.random.key(1), (8, 5)))
  labels = jnp.arange(8) % 5
  objective = teaching.make_objective("soft", temperature=3.0, alpha=0.3, soft_loss="kl",
                                   label_smoothing=0.1)
  got = objective.loss(logits, {"targets": targets, "labels": labels})
  want = (0.3 * 9 * losses.kl_divergence(logits, targets, temperature=3.0)
          + 0.7 * losses.hard_cross_entropy(logits, labels, label_smoothing=0.1))
  np.testing.assert_allclose(got, want, rtol=1e-5)


def _tiny_setup(strategy, **objective_settings):
  recipe = config.load_recipe("digits", TINY)
  dataset = workflow.load_data(recipe)
  _, model, _ = workflow._build_model(recipe, "student", dataset)
  setup = step.prepare_training(
      model=model, images=dataset.x_train, labels=dataset.y_train,
      objective=teaching.make_objective("soft", **objective_settings), teaching=strategy,
      settings=config.TrainSettings.of(recipe, "student"), augment_settings=recipe["augment"],
      seed=3)
  return recipe, dataset, setup


def test_online_teacher_labels_the_students_exact_augmented_batch(teachers):
  recipe = run_recipe.read_run_recipe(teachers / "t0")
  dataset = workflow.load_data(recipe)
  result, _ = workflow.restore_trained(teachers / "t0", recipe, "teacher", dataset)
  online = teaching.OnlineTeacher(apply=teaching.nnx_apply(result.graphdef, result.rest),
                                  params=result.params, temperature=2.0)
  _, _, setup = _tiny_setup(online, temperature=2.0)
  indices = jnp.asarray(setup.feeder.order.indices(7, 1)[0])
  # Jitted, as the training step runs it: op by op, each of the teacher's operations would
  # compile on first use (seconds).
  spec = setup.spec
  images, batch = jax.jit(lambda *inputs: step._batch(spec, *inputs))(
      *setup.step_inputs(), jnp.asarray(7), indices)
  # The batch is augmented (not the plain images) and the targets are the teacher's on it.
  plain = normalize(setup.feeder.data["images"][indices], *setup.stats)
  assert not np.allclose(images, plain)
  teacher_logits = compiled_forward(_restored(result), images)
  np.testing.assert_allclose(batch["targets"], jax.nn.softmax(teacher_logits / 2.0), atol=1e-5)


def test_views_replay_exactly_what_the_teacher_labelled(teachers):
  arrays, meta = load_targets(teachers / "t0")
  assert arrays["view_logits"].shape == (len(arrays["train_logits"]), 3, 10)
  assert meta["views"]["count"] == 3
  recipe = run_recipe.read_run_recipe(teachers / "t0")
  dataset = workflow.load_data(recipe)
  result, _ = workflow.restore_trained(teachers / "t0", recipe, "teacher", dataset)
  images = normalize(jnp.asarray(dataset.x_train), *map(jnp.asarray, result.stats))
  # Example 5, view 2, rebuilt inside two different batches: the same image, the stored logits.
  for indices in (np.array([5, 9, 11]), np.array([40, 5])):
    views = _views(images[indices], indices, 2, meta)
    row = int(np.where(indices == 5)[0][0])
    logits = result.predict(result.params, dataset.x_train[indices])  # plain, for contrast
    np.testing.assert_allclose(compiled_forward(_restored(result), views)[row],
                               arrays["view_logits"][5, 2], atol=1e-4)
    assert not np.allclose(logits[row], arrays["view_logits"][5, 2], atol=1e-4)
  # Distinct views differ.
  assert not np.allclose(arrays["view_logits"][:, 0], arrays["view_logits"][:, 1])


def test_ensemble_averages_probabilities_and_keeps_every_identity(teachers, tmp_path):
  result = run_cli("export", "--teacher", teachers / "t0", "--teacher", teachers / "t1",
                "--out", tmp_path / "ens")
  assert result.exit_code == 0, result.output
  ensemble, meta = load_targets(tmp_path / "ens")
  members = [load_targets(teachers / name)[0] for name in ("t0", "t1")]
  # No run of its own shows an ensemble's accuracy, so the export says it, beside its members'.
  y_test = workflow.load_data(run_recipe.read_run_recipe(teachers / "t0")).y_test
  accuracies = [float(metrics.accuracy(arrays["test_logits"], y_test))
                for arrays in (ensemble, *members)]
  assert (f"an ensemble of 2 teachers (test accuracy {accuracies[0]:.4f}; its teachers "
          f"{accuracies[1]:.4f}, {accuracies[2]:.4f})") in result.stderr
  want = np.mean([jax.nn.softmax(m["train_logits"]) for m in members], axis=0)
  np.testing.assert_allclose(ensemble["train_probs"], want, atol=1e-5)
  assert [t["dir"] for t in meta["teachers"]] == [
      str((teachers / name).resolve()) for name in ("t0", "t1")]
  summary = _student(tmp_path / "ens", tmp_path / "s")
  assert summary["teaching"] == "targets"
  # compare shows the ensemble as the teacher row its student is measured against.
  assert meta["test_accuracy"] == pytest.approx(accuracies[0])
  table = compare.compare_runs([tmp_path / "ens", tmp_path / "s"])
  (row,) = [line for line in table.splitlines() if line.startswith(str(tmp_path / "ens"))]
  assert "ensemble of 2" in row and f"{100 * accuracies[0]:.2f}%" in row
  # One exported before the accuracy was recorded: skipped, saying how to have its row.
  record = tmp_path / "ens" / "targets.json"
  record.write_text(json.dumps({k: v for k, v in meta.items() if k != "test_accuracy"}))
  rows, skipped = compare.collect_runs([tmp_path / "ens", tmp_path / "s"])
  assert [row["run"] for row in rows] == [str(tmp_path / "s")]
  assert skipped[0].endswith(
      "it was exported before an ensemble's test accuracy was recorded: export it again to "
      f"show it as its students' teacher (distill export --teacher {teachers / 't0'} --teacher "
      f"{teachers / 't1'} --out {tmp_path / 'ens'} -T 1)")


def test_mixup_blends_with_the_reversed_batch():
  images = jnp.arange(4.0).reshape(4, 1, 1, 1)
  mixed = augment.mixup(images, jax.random.key(0), 0.5)
  weight = (mixed[0] - images[3]) / (images[0] - images[3])
  # Strictly inside: weight 1 (mixup doing nothing) or 0 (only the reversed batch) fits the
  # formula below too, so it would prove no blending.
  assert 0.0 < float(weight[0, 0, 0]) < 1.0
  assert not np.allclose(mixed, images)
  np.testing.assert_allclose(mixed[:, 0, 0, 0],
                             weight[0, 0, 0] * images[:, 0, 0, 0]
                             + (1 - weight[0, 0, 0]) * images[::-1, 0, 0, 0], rtol=1e-6)


@pytest.mark.parametrize("args, message", [
    (("student", "--teaching", "bogus"), "Invalid value for '--teaching'"),
    (("student", "-T", "0"), "student.temperature must be a positive number"),
    (("student", "-T", "nan"), "student.temperature must be a positive number"),
    (("student", "--alpha", "1.5"), "student.alpha"),
    (("student", "--alpha", "-0.1"), "student.alpha"),
    (("student", "--mixup", "-1"), "student.mixup"),
    (("student", "--mixup", "0.2"), "needs teaching=online"),
    (("student", "--teaching", "online", "--mixup", "0.2", "--alpha", "0.5"), "alpha=1"),
    (("student", "--loss", "hard", "--teaching", "online"), "cannot be combined with loss=hard"),
    (("student", "--set", "student.soft_loss=mse"), "student.soft_loss must be one of"),
    (("student", "--teaching", "views", "--teacher-from", "t1"), "holds no augmented views"),
    (("export", "--views", "-1"), "--views must be 0"),
    (("export", "--second", "t1"), "needs --out"),
    (("export", "--second", "t0"), "named twice"),
])
def test_invalid_distillation_settings_are_one_line_errors(teachers, tmp_path, args, message):
  command, *rest = args
  if "--teacher-from" in rest:
    position = rest.index("--teacher-from")
    teacher = teachers / rest[position + 1]
    rest = rest[:position]
  else:
    teacher = teachers / "t0"
  if "--second" in rest:
    rest = ["--teacher", teachers / rest[1]]
  extra = ["-w", tmp_path / "s", *TINY_FLAGS] if command == "student" else []
  result = CliRunner().invoke(main, [command, "--teacher", str(teacher), *map(str, rest), *extra])
  assert result.exit_code == 2, result.output
  assert message in result.output
  assert "Traceback" not in result.output
  assert not (tmp_path / "s").exists()


def test_ensemble_members_label_the_same_views(teachers, tmp_path):
  result = run_cli("export", "--teacher", teachers / "t0", "--teacher", teachers / "t1",
                "--views", 2, "--out", tmp_path / "ens", "-q")
  assert result.exit_code == 0, result.output
  ensemble, meta = load_targets(tmp_path / "ens")
  probs = []
  for name in ("t0", "t1"):
    recipe = run_recipe.read_run_recipe(teachers / name)
    dataset = workflow.load_data(recipe)
    member, _ = workflow.restore_trained(teachers / name, recipe, "teacher", dataset)
    images = normalize(jnp.asarray(dataset.x_train[[5]]), *map(jnp.asarray, member.stats))
    view = _views(images, [5], 1, meta)
    probs.append(jax.nn.softmax(compiled_forward(_restored(member), view)[0]))
  np.testing.assert_allclose(jax.nn.softmax(ensemble["view_logits"][5, 1]), np.mean(probs, 0),
                             atol=1e-5)


def test_an_objective_setting_no_method_reads_is_a_typo_refused():
  """tempreature=5 trained at T=1, its step-0 check 'ok'; another method's setting is fine."""
  assert teaching.make_objective("kd", temperature=2.0, dkd_beta=8.0).reads
  with pytest.raises(UserError, match=r"make_objective: no method reads 'tempreature'; did you "
                                      r"mean 'temperature'\? the settings are alpha, .* "
                                      r"temperature, token_variant$"):
    teaching.make_objective("kd", tempreature=5.0)
