import contextlib
import dataclasses
import json
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from distill import backend, config, loop, losses, parallel, step, workflow
from distill.checkpoint import Checkpointer
from distill.data import load_dataset
from distill.errors import UserError
from distill.feeders import DataOrder, pixel_stats
from distill.inference import DeviceValidation, make_predict, predict_in_batches
from distill.loop import fit
from distill.metrics import accuracy
from distill.models import create_model
from distill.step import make_schedule
from distill.teaching import make_objective


def test_data_order_is_a_pure_function_of_seed_and_step():
  order = DataOrder(100, 8, seed=1)
  full = order.indices(0, 30)
  # Asking again from the middle (as a resumed run does) gives the same batches.
  again = DataOrder(100, 8, seed=1).indices(17, 13)
  np.testing.assert_array_equal(full[17:], again)
  # Many steps at once (crossing epochs at steps 12 and 24) give what step by step gives.
  one_by_one = DataOrder(100, 8, seed=1)
  np.testing.assert_array_equal(full, np.concatenate([one_by_one.indices(s, 1) for s in range(30)]))
  # Within an epoch (12 steps of 8 out of 100) no example repeats.
  assert len(set(full[:12].ravel())) == 96
  assert not np.array_equal(full, DataOrder(100, 8, seed=2).indices(0, 30))


def test_batch_larger_than_data_is_refused():
  with pytest.raises(UserError, match="batch size 64 is larger than the 10"):
    DataOrder(10, 64, seed=0)


def test_pixel_stats_match_numpy():
  images = np.random.default_rng(0).integers(0, 256, (20, 4, 4, 3), dtype=np.uint8)
  mean, std = pixel_stats(images)
  np.testing.assert_allclose(mean, (images / 255.0).mean(axis=(0, 1, 2)), rtol=1e-9)
  np.testing.assert_allclose(std, (images / 255.0).std(axis=(0, 1, 2)), rtol=1e-6)


def _fit(tmp_path, overrides, **kwargs):
  recipe = config.load_recipe("digits", overrides)
  dataset = workflow.load_data(recipe)
  _, model, _ = workflow._build_model(recipe, "teacher", dataset)
  defaults = dict(
      model=model, images=dataset.x_train, labels=dataset.y_train,
      val_images=dataset.x_val, val_labels=dataset.y_val, objective=make_objective("hard"),
      settings=config.TrainSettings.of(recipe, "teacher"), augment_settings=recipe["augment"],
      workdir=tmp_path,
      seed=recipe["seed"], checkpoint_meta={"recipe_hash": config.recipe_hash(recipe, "teacher")},
      quiet=True)
  defaults.update(kwargs)
  return fit(**defaults)


def test_fit_learns_and_logs(tmp_path, tiny_overrides, capsys, monkeypatch):
  from distill import console  # noqa: PLC0415

  said = []
  bar = console.progress

  def progress(*args, **kwargs):
    said.append("the bar")
    return bar(*args, **kwargs)

  monkeypatch.setattr(console, "progress", progress)
  _, result = _fit(tmp_path, [*tiny_overrides, "teacher.steps=60", "teacher.model=mlp",
                                   "teacher.mlp.hidden=[64]", "teacher.learning_rate=3e-3"],
                   quiet=False, echo=said.append)
  # The step-0 check is said before the bar starts: on a terminal, the bar would take its line.
  assert said[-1] == "the bar" and said[-2].startswith("init loss ")
  assert result.init_loss == pytest.approx(np.log(10), abs=1e-5)
  assert result.final_train_loss < result.init_loss - 0.3
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == 6  # every 10 of 60 steps
  assert '"val_accuracy"' in lines[-1]
  # The progress's last line shows the last step's numbers, not an earlier log line's, and
  # each line names the step its numbers are from.
  last = json.loads(lines[-1])
  bar = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train:")]
  assert bar[-1] == (f"train: 100% (60 of 60 steps); at step 60: loss={last['loss']:.4f}, "
                     f"accuracy={last['accuracy']:.4f}, val_accuracy={last['val_accuracy']:.4f}")
  assert all("; at step " in line for line in bar if "loss=" in line)


def test_a_teachers_wall_time_covers_its_export(tmp_path, tiny_overrides, monkeypatch):
  export, exported = workflow.export_targets, []

  def slow_export(*args, **kwargs):  # a second longer, so a wall time without it falls short
    time.sleep(1.0)
    path = export(*args, **kwargs)
    exported.append(time.perf_counter())
    return path

  monkeypatch.setattr(workflow, "export_targets", slow_export)
  recipe = config.load_recipe("digits", tiny_overrides)
  called = time.perf_counter()
  summary = workflow.train_teacher(recipe, tmp_path / "t", quiet=True)
  # From the call to the export's end, less what precedes the run's own clock (milliseconds).
  assert summary["wall_seconds"] >= exported[0] - called - 0.5
  assert json.loads((tmp_path / "t" / "summary.json").read_text()) == summary


def test_every_validation_is_logged_when_its_cadence_is_not_the_logs(tmp_path, tiny_overrides):
  # Validations were written only on log lines: eval_every=10 beside log_every=4 validated at
  # 20 alone (their common multiple), nothing said.
  overrides = [*tiny_overrides, "teacher.steps=30", "teacher.model=mlp",
               "teacher.mlp.hidden=[32]", "teacher.log_every=4", "teacher.eval_every=10"]
  _fit(tmp_path / "t", overrides)
  records = [json.loads(line)
             for line in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [4, 8, 10, 12, 16, 20, 24, 28, 30]
  assert [r["step"] for r in records if "val_accuracy" in r] == [10, 20, 30]


def test_deferred_log_lines_are_whole_in_order_and_the_same_whatever_the_lag(
    tmp_path, tiny_overrides, monkeypatch):
  # Log lines that save nothing are written a few dispatches late, validations included (their
  # program starts at their own step); they must come out whole, in order, with the learning
  # rate and validation of their own step, whatever the lag, and match a run whose validations
  # are written at once (every one of its validation steps saves a checkpoint).
  overrides = [*tiny_overrides, "teacher.steps=30", "teacher.model=mlp",
               "teacher.mlp.hidden=[32]", "teacher.log_every=2", "teacher.steps_per_dispatch=1",
               "teacher.eval_every=10"]
  schedule = make_schedule(config.TrainSettings.of(config.load_recipe("digits", overrides),
                                                   "teacher"), 30)
  written = {}
  for lag, checkpoint_every in ((1, 30), (3, 30), (3, 10)):
    monkeypatch.setattr(loop, "_LOG_LAG_DISPATCHES", lag)
    workdir = tmp_path / f"lag{lag}-checkpoint{checkpoint_every}"
    _, result = _fit(workdir, [*overrides, f"teacher.checkpoint_every={checkpoint_every}"])
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(2, 31, 2))
    assert [r["step"] for r in records if "val_accuracy" in r] == [10, 20, 30]
    for record in records:
      assert record["learning_rate"] == pytest.approx(float(schedule(record["step"])), rel=1e-5)
    assert result.final_train_loss == records[-1]["loss"]
    written[lag, checkpoint_every] = [{k: v for k, v in r.items() if k != "elapsed_seconds"}
                                      for r in records]
  assert written[1, 30] == written[3, 30] == written[3, 10]
  # The validations moved with training: a stale or later state would repeat or skip one.
  assert len({r["val_loss"] for r in written[3, 30] if "val_loss" in r}) == 3


def test_strict_init_check_raises_for_a_badly_scaled_head(tmp_path, tiny_overrides):
  with pytest.raises(UserError, match="init loss .* far from expected"):
    _fit(tmp_path, [*tiny_overrides, "teacher.vit.head_init_scale=10.0"], strict_init_check=True)


def test_init_check_warns_loudly_without_strict(tmp_path, tiny_overrides):
  warnings = []
  _fit(tmp_path, [*tiny_overrides, "teacher.vit.head_init_scale=10.0", "teacher.steps=5",
                  "teacher.log_every=5"], warn=warnings.append)
  assert len(warnings) == 1 and "WARNING" in warnings[0]


def test_same_seed_same_result(tmp_path, tiny_overrides):
  a, _ = _fit(tmp_path / "a", tiny_overrides)
  b, _ = _fit(tmp_path / "b", tiny_overrides)
  assert a.params_sha256() == b.params_sha256()

  def records(run):
    return [{k: v for k, v in json.loads(line).items() if k != "elapsed_seconds"}
            for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

  assert records("a") == records("b") and len(records("a")) == 2


def test_the_final_checkpoint_is_written_while_the_caller_goes_on(tmp_path, tiny_overrides,
                                                                   monkeypatch):
  # With `final_write`, a finished run leaves the wait for its last save to the caller, and the
  # checkpoint is whole once the caller's stack closes; a run that stops early waits itself.
  waited = []
  close = Checkpointer.close
  monkeypatch.setattr(Checkpointer, "close", lambda self: (waited.append(self.directory),
                                                           close(self))[-1])
  finished = [*tiny_overrides, "teacher.steps=20", "teacher.model=mlp", "teacher.mlp.hidden=[16]"]
  with contextlib.ExitStack() as final_write:
    trained, _ = _fit(tmp_path / "finished", finished, final_write=final_write)
    assert waited == []
  assert waited == [tmp_path.resolve() / "finished" / "checkpoints"]
  restored, step_saved = workflow.restore_trained(
      tmp_path / "finished", config.load_recipe("digits", finished), "teacher",
      workflow.load_data(config.load_recipe("digits", finished)))
  assert step_saved == 20 and restored.params_sha256() == trained.params_sha256()

  waited.clear()
  with contextlib.ExitStack() as final_write:
    with pytest.raises(UserError, match="training diverged"):
      _fit(tmp_path / "diverged", [*finished, "teacher.learning_rate=1e30",
                                   "teacher.grad_clip=0.0"], final_write=final_write)
    assert waited == [tmp_path.resolve() / "diverged" / "checkpoints"]


def test_a_finished_runs_last_save_is_handed_to_orbax_off_the_callers_thread(
    tmp_path, tiny_overrides, monkeypatch):
  # Handing a state to Orbax costs ~10-20 ms of Python, a few percent of a small student's
  # run: with `final_write`, the last save runs in a thread of its own while the caller goes
  # on, and what it raises is raised where the caller waits for the write.
  caller = threading.current_thread()
  threads = {}
  save = Checkpointer.save

  def recording_save(self, step, state, meta):
    threads[step] = threading.current_thread()
    if meta.get("fail") and step == 20:  # only the handed-off save fails
      raise OSError("no space left on device")
    save(self, step, state, meta)

  monkeypatch.setattr(Checkpointer, "save", recording_save)
  run = [*tiny_overrides, "teacher.steps=20", "teacher.checkpoint_every=10",
         "teacher.model=mlp", "teacher.mlp.hidden=[16]"]
  with contextlib.ExitStack() as final_write:
    _fit(tmp_path / "handed", run, final_write=final_write)
  assert threads[10] is caller and threads[20] is not caller
  assert Checkpointer(tmp_path / "handed").latest_step() == 20

  threads.clear()
  _fit(tmp_path / "waited", run)  # without `final_write`, `fit` saves and waits itself
  assert threads[10] is caller and threads[20] is caller

  with pytest.raises(OSError, match="no space left"):
    with contextlib.ExitStack() as final_write:
      _fit(tmp_path / "failed", run, final_write=final_write,
           checkpoint_meta={"recipe_hash": "h", "fail": True})


def _prepared(overrides, role, *, seed, augment):
  """`step.prepare_training` for a fresh digits `role` model on hard labels."""
  recipe = config.load_recipe("digits", overrides)
  dataset = workflow.load_data(recipe)
  _, model, _ = workflow._build_model(recipe, role, dataset)
  return step.prepare_training(
      model=model, images=dataset.x_train, labels=dataset.y_train,
      objective=make_objective("hard"), teaching=None,
      settings=config.TrainSettings.of(recipe, role),
      augment_settings=recipe["augment"] if augment else None, seed=seed)


def test_runs_differing_only_in_seed_share_one_compiled_step(tiny_overrides):
  # The seed reaches the step as an argument, not as a constant of its program: a second
  # seed (an ensemble's next teacher, a sweep's next run) finds the first one's program in
  # the compilation cache. The seed still decides the augmentation.
  setups = [_prepared(tiny_overrides, "teacher", seed=seed, augment=True) for seed in (0, 1)]
  rows = next(setups[0].feeder.dispatches([(0, 5)]))
  programs = [setup.chunk_fn.lower(setup.state, *setup.step_inputs(),
                                   setup.feeder.rows_like(rows)).as_text()
              for setup in setups]
  assert programs[0] == programs[1]
  images = [step._batch(setup.spec, *setup.step_inputs(), jnp.asarray(3), rows[0])[0]
            for setup in setups]
  assert not np.allclose(images[0], images[1])


def test_an_unrolled_dispatch_of_any_length_has_no_loop(tiny_overrides):
  # A convolutional model on CPU runs its steps as straight-line code (`should_unroll`):
  # inside a while loop a convolution ran ~50x slower. `lax.scan(unroll=True)` over a
  # single step still emits one, and a dispatch plan may hold one-step dispatches.
  setup = _prepared([*tiny_overrides, "student.model=cnn"], "student", seed=0, augment=False)
  assert setup.spec.unroll == (jax.default_backend() == "cpu")
  for steps in (1, 2):
    rows = next(setup.feeder.dispatches([(0, steps)]))
    program = setup.chunk_fn.lower(setup.state, *setup.step_inputs(),
                                   setup.feeder.rows_like(rows)).as_text()
    assert ("stablehlo.while" in program) == (not setup.spec.unroll), steps


def test_a_cnn_dispatch_computes_the_same_scanned_as_unrolled(monkeypatch, tiny_overrides):
  # CPUs unroll a convolutional model's steps; accelerators keep the scan (`distill.backend`).
  # Both must compute the same steps: each step's batch, loss and gradient over two 5-step
  # dispatches. The rate is tiny because Adam's first steps move every parameter by about the
  # rate whatever its gradient's size: a gradient that rounds to the other sign in one program
  # would move its parameter the other way, and the two would part by a few per cent of what
  # training moved (the two programs round differently at the optimisation level the tests
  # compile with). The update itself is the same code in both; test_backend trains a CNN
  # student end to end under the accelerator's choices. The head starts non-zero: a zero head
  # passes no gradient back, and the convolutions' backward pass would go uncompared.
  overrides = [*tiny_overrides, "student.model=cnn", "student.learning_rate=1e-12",
               "student.cnn.head_init_scale=0.5"]
  runs = []
  for unroll in (True, False):
    chosen = dataclasses.replace(backend.choices("cpu"), unroll_conv_scan=unroll)
    monkeypatch.setattr(backend, "choices", lambda name=None, chosen=chosen: chosen)
    setup = _prepared(overrides, "student", seed=0, augment=False)
    assert setup.spec.unroll == unroll
    dispatches = list(setup.feeder.dispatches([(0, 5), (5, 5)]))
    compiled = setup.compile(setup.state, dispatches[0])  # both dispatches are 5 steps
    state, metrics = setup.state, []
    for rows in dispatches:
      state, dispatch_metrics = setup.run_chunk(compiled, state, rows)
      metrics.append(np.stack([dispatch_metrics["loss"], dispatch_metrics["grad_norm"]]))
    runs.append(np.concatenate(metrics, axis=1))
  unrolled, scanned = runs
  assert len(set(unrolled[1].round(5))) == 10, "each step sees its own batch"
  assert np.abs(unrolled[0] - np.log(10)).min() > 1e-3, "a head that is not zero"
  np.testing.assert_allclose(scanned, unrolled, rtol=1e-5)


@pytest.mark.parametrize("rows, batch_size", [(150, 64), (7, 256), (128, 32)])
def test_device_validation_scores_like_the_batched_forward_pass(rows, batch_size):
  # One compiled program over the padded, device-resident split gives what the
  # batch-by-batch forward pass and the metrics on its logits give.
  dataset = load_dataset("digits", val_size=rows)
  model = create_model("mlp", num_classes=10, image_shape=dataset.image_shape, seed=0,
                       hidden=[16], head_init_scale=1.0)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  stats = pixel_stats(dataset.x_train)
  mesh = parallel.make_mesh()
  loss, device_accuracy = DeviceValidation(graphdef, rest, stats, dataset.x_val,
                                           dataset.y_val, batch_size, mesh)(params)
  logits = predict_in_batches(make_predict(graphdef, rest, stats, mesh), params, dataset.x_val,
                              batch_size)
  assert float(loss) == pytest.approx(
      float(losses.hard_cross_entropy(jnp.asarray(logits), dataset.y_val)), rel=1e-6)
  assert float(device_accuracy) == pytest.approx(float(accuracy(logits, dataset.y_val)),
                                          abs=1e-7)
  assert float(loss) > 0.0
