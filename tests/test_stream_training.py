"""Training from array shards on disk: the same run as from memory, on 1 and 2 devices."""

import json
import shutil

import numpy as np
import pytest
from conftest import LOGGED_EVERY_5, TINY, TINY_FLAGS, logged, run_cli, run_distill_process

from distill import bench, config, run_recipe, workflow
from distill import data as data_lib
from distill.data.shards import open_target_shards, write_array_shards
from distill.errors import UserError
from distill.targets import open_targets

SET = LOGGED_EVERY_5


def _losses(workdir):
  return [record["loss"] for record in logged(workdir)]


def _assert_same_logs(a, b, rtol):
  """Every logged number of two runs alike, step by step. Near the start a student's loss moves
  by less than this tolerance; its gradient's norm and its agreement with the teacher do not."""
  records_a, records_b = logged(a), logged(b)
  assert [r["step"] for r in records_a] == [r["step"] for r in records_b]
  for record_a, record_b in zip(records_a, records_b, strict=True):
    for key in ("loss", "grad_norm", "accuracy", "teacher_agreement", "val_loss",
                "val_accuracy"):
      assert (key in record_a) == (key in record_b), key
      if key in record_a:
        np.testing.assert_allclose(record_a[key], record_b[key], rtol=rtol, err_msg=key)


@pytest.fixture(scope="module")
def digits_shards(tmp_path_factory):
  """Digits written as small shards (several per split), in the loader's row order."""
  root = tmp_path_factory.mktemp("digits-shards")
  raw = data_lib.DATASETS["digits"](data_dir=None, allow_download=False)
  for split, images, labels in (("train", raw.x_train, raw.y_train),
                                ("test", raw.x_test, raw.y_test)):
    write_array_shards(root / split, (images, labels), class_names=raw.class_names,
                       shard_size=300)
  return root


@pytest.fixture(scope="module")
def streamed_teacher(digits_shards, tmp_path_factory):
  """A TINY teacher trained on `digits_shards`, logged every 5 steps as the in-memory
  `teacher_logged_every_5` it is compared with, with its target shards: trained once for
  every test here that needs a streamed teacher."""
  workdir = tmp_path_factory.mktemp("streamed-teacher") / "teacher"
  result = run_cli("teacher", "-r", "digits", "-w", workdir, "-q", *SET,
                   "--dataset", "stream", "--data-dir", digits_shards)
  assert result.exit_code == 0, result.output
  return workdir


def test_streamed_teacher_and_student_match_the_in_memory_runs(digits_shards, streamed_teacher,
                                                              tmp_path, teacher_logged_every_5):
  stream = ["--dataset", "stream", "--data-dir", digits_shards]
  memory = teacher_logged_every_5
  # Both teachers on one device, in this process; the streamed students below on two.
  # Same split, same order, same pixels: the same losses, read from disk instead of memory.
  np.testing.assert_allclose(_losses(streamed_teacher), _losses(memory), rtol=1e-5)
  shards = open_target_shards(streamed_teacher, verify_checksums=True)
  with np.load(memory / "targets.npz") as targets:
    assert shards.num_examples > len(targets["train_probs"])  # validation rows too
  summary = json.loads((streamed_teacher / "summary.json").read_text())
  memory_summary = json.loads((memory / "summary.json").read_text())
  assert summary["test_accuracy"] == pytest.approx(memory_summary["test_accuracy"], abs=2e-3)
  # One reader over both target formats: a split position's logits, whichever format holds them.
  stream_data = workflow.load_data(run_recipe.read_run_recipe(streamed_teacher))
  memory_data = workflow.load_data(run_recipe.read_run_recipe(memory))
  positions = np.arange(0, len(memory_data.x_train), 7)
  np.testing.assert_allclose(
      open_targets(streamed_teacher, stream_data).rows_for(stream_data)[positions],
      open_targets(memory, memory_data).rows_for(memory_data)[positions], rtol=1e-4, atol=1e-5)

  for teaching in ("targets", "online"):
    result = run_cli("student", "--teacher", memory, "-m", "mlp", "--teaching", teaching,
                     "-w", tmp_path / f"student-memory-{teaching}", "-q", *SET)
    assert result.exit_code == 0, result.output
    run_distill_process("student", "--teacher", streamed_teacher, "-m", "mlp",
                        "--teaching", teaching, "-w", tmp_path / f"student-stream-{teaching}",
                        "-q", *SET, *stream, devices=2)
    _assert_same_logs(tmp_path / f"student-stream-{teaching}",
                      tmp_path / f"student-memory-{teaching}", rtol=1e-4)


def test_bench_times_a_streamed_data_set(digits_shards):
  # An MLP teacher: the bench's bare step and loop are programs of their own, which an MLP
  # compiles in a fraction of the ViT's time; the streamed reading timed is the same.
  recipe = config.load_recipe("digits", [*TINY, "data.dataset=stream",
                                         f"data.data_dir={digits_shards}", "teacher.model=mlp"])
  report = bench.run_benchmark(recipe, role="teacher", steps=10, bare_steps=10)
  assert report["bare_step_images_per_second"] > 0 and report["loop_images_per_second"] > 0


def test_overwriting_a_streamed_teacher_removes_its_old_target_shards(digits_shards,
                                                                     streamed_teacher, tmp_path):
  stream = ["--dataset", "stream", "--data-dir", digits_shards]
  # A copy of the module's streamed teacher, trained again with the same command.
  workdir = shutil.copytree(streamed_teacher, tmp_path / "teacher")
  assert (workdir / "targets-shards").is_dir()
  again = run_cli("teacher", "-r", "digits", "-w", workdir, "-q", *SET, *stream,
                  "--overwrite", "--no-export")
  assert again.exit_code == 0, again.output
  # Left behind, the old shards would teach students the replaced teacher's targets.
  assert not (workdir / "targets-shards").exists()


def _stream_data(data_dir):
  return workflow.load_data(config.load_recipe("digits", [
      *TINY, "data.dataset=stream", f"data.data_dir={data_dir}"]))


def test_target_shards_follow_their_data_to_another_folder(digits_shards, streamed_teacher,
                                                          tmp_path):
  moved = tmp_path / "moved"
  shutil.copytree(digits_shards, moved)
  # The same data under another folder's name: the targets still fit it.
  store = open_targets(streamed_teacher, _stream_data(moved))
  assert store.meta["dataset"] == digits_shards.name
  # Online teaching too: the teacher's recipe names the old folder, its fingerprint the data.
  result = run_cli("student", "--teacher", streamed_teacher, "--data-dir", moved, "--teaching",
                   "online", "-m", "mlp", "-w", tmp_path / "online", "-q", *TINY_FLAGS)
  assert result.exit_code == 0, result.output
  # Other data in that folder is still refused.
  raw = data_lib.DATASETS["digits"](data_dir=None, allow_download=False)
  images = raw.x_train.copy()
  images[0] = 255 - images[0]
  write_array_shards(moved / "train", (images, raw.y_train), class_names=raw.class_names,
                     shard_size=300, overwrite=True)
  with pytest.raises(UserError, match="made for other data: dataset fingerprint .* vs .* "
                                      r"\(folder '.*' vs 'moved'\)"):
    open_targets(streamed_teacher, _stream_data(moved))


def test_a_student_on_the_other_kind_of_data_than_its_teacher_is_told_which(
    digits_shards, streamed_teacher, tiny_digits_runs, tmp_path):
  # A streamed teacher's targets are shards: exporting again would write shards again.
  result = run_cli("student", "--teacher", streamed_teacher, "--dataset", "digits",
                   "-w", tmp_path / "memory-student", "-q", *TINY_FLAGS)
  assert result.exit_code != 0
  assert "trained on streamed data" in result.output
  assert f"--dataset stream --data-dir {digits_shards}" in result.output
  assert "distill export" not in result.output
  # And the reverse: an in-memory teacher's targets.npz for a streamed student.
  result = run_cli("student", "--teacher", tiny_digits_runs / "teacher", "--dataset", "stream",
                   "--data-dir", digits_shards, "-w", tmp_path / "stream-student", "-q",
                   *TINY_FLAGS)
  assert result.exit_code != 0
  assert "trained on digits in memory" in result.output
  assert "give the student the same data: --dataset digits " in result.output


def test_shards_without_a_test_split_are_told_where_it_goes(digits_shards, tmp_path):
  """Streamed training evaluates on test/: a folder without one says what to write, and one
  split's own folder given as the root says which folder to give instead."""

  alone = tmp_path / "no-test"
  shutil.copytree(digits_shards / "train", alone / "train")
  with pytest.raises(UserError, match=rf"{alone} has no test/ split, which streamed training "
                                      rf"evaluates on: write the held-out images as shards in "
                                      rf"{alone / 'test'}"):
    _stream_data(alone)
  with pytest.raises(UserError, match=r"pass the folder holding train/ and test/ as --data-dir: "
                                      rf"{digits_shards}$"):
    _stream_data(digits_shards / "train")
  # Said first, before a validation split that holds out every image is: fixing that first
  # only led to this.
  with pytest.raises(UserError, match=rf"{alone} has no test/ split"):
    workflow.load_data(config.load_recipe("digits", [
        *TINY, "data.dataset=stream", f"data.data_dir={alone}", "data.val_size=100000"]))
