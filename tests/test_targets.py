import json

import numpy as np
import pytest
from conftest import copy_runs, run_cli

from distill.errors import UserError
from distill.targets import check_targets_match, load_targets, save_targets, stored_view_count

META = {"dataset": "digits", "dataset_fingerprint": "f" * 64, "train_fingerprint": "t" * 64,
        "temperature": 1.0, "teacher": {"params_sha256": "p"}}


def _arrays(n=6, c=3):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(n, c)).astype(np.float32)
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  return {"train_probs": probs, "train_logits": logits, "test_logits": logits[:2]}


def test_round_trip(tmp_path):
  arrays = _arrays()
  save_targets(tmp_path, arrays, META)
  loaded, meta = load_targets(tmp_path)
  for name, array in arrays.items():
    np.testing.assert_array_equal(loaded[name], array)
  assert meta["num_classes"] == 3 and meta["num_examples"] == 6
  assert (tmp_path / "targets.json").exists()
  assert not list(tmp_path.glob("*.tmp"))


def test_missing_targets_say_how_to_make_them(tmp_path):
  with pytest.raises(UserError, match="distill export --teacher"):
    load_targets(tmp_path)


def test_truncated_file_is_damaged(tmp_path):
  path = save_targets(tmp_path, _arrays(), META)
  path.write_bytes(path.read_bytes()[:200])
  with pytest.raises(UserError, match="damaged"):
    load_targets(tmp_path)


def test_changed_values_fail_the_checksum(tmp_path):
  arrays = _arrays()
  save_targets(tmp_path, arrays, META)
  loaded, meta = load_targets(tmp_path)
  tampered = dict(loaded, train_probs=loaded["train_probs"][::-1].copy())
  np.savez(tmp_path / "targets.npz", **tampered,
           meta_json=np.frombuffer(json.dumps(meta).encode(), np.uint8))
  with pytest.raises(UserError, match="checksum"):
    load_targets(tmp_path)


def test_mismatch_names_every_difference():
  meta = {**META, "num_examples": 6, "num_classes": 3}
  check_targets_match(meta, dataset_name="digits", fingerprint="f" * 64,
                      train_fingerprint="t" * 64, num_examples=6, num_classes=3)
  with pytest.raises(UserError) as error:
    check_targets_match(meta, dataset_name="fashion_mnist", fingerprint="a" * 64,
                        train_fingerprint="t" * 64, num_examples=6, num_classes=10)
  message = str(error.value)
  for word in ("dataset 'digits' vs 'fashion_mnist'", "fingerprint", "3 classes vs 10"):
    assert word in message


def test_mismatch_names_the_split_only_where_it_differs():
  split = {"val_size": 150, "split_seed": 0, "train_limit": 0, "labelled": 0}
  meta = {**META, "num_examples": 6, "num_classes": 3, "split": {"name": "train", **split}}

  def message(fingerprint, **ours):
    with pytest.raises(UserError) as error:
      check_targets_match(meta, dataset_name="digits", fingerprint=fingerprint,
                          train_fingerprint="u" * 64, num_examples=6, num_classes=3,
                          split={**split, **ours})
    return str(error.value).split("were made for other data: ")[1]

  # Other data with the same settings: its rows differ because the data does, not the split.
  assert message("a" * 64) == "dataset fingerprint ffffffffffff vs aaaaaaaaaaaa"
  # Settings that differ are named, with both values.
  assert message("a" * 64, split_seed=7) == ("dataset fingerprint ffffffffffff vs aaaaaaaaaaaa; "
                                             "training split (data.split_seed 0 vs 7)")
  assert message("f" * 64, val_size=0.1, labelled=20) == (
      "training split (data.val_size 150 vs 0.1, data.labelled 0 vs 20)")
  # The same data and settings but other rows: only the split can differ.
  assert message("f" * 64) == (
      "training split (val_size, split_seed, train_limit or labelled differ)")


def test_stored_view_count_reads_the_record_alone(tmp_path):
  assert stored_view_count(tmp_path) == 0  # no targets
  save_targets(tmp_path, _arrays(), {**META, "views": None})
  assert stored_view_count(tmp_path) == 0
  arrays = {**_arrays(), "view_logits": np.zeros((6, 4, 3), np.float32)}
  save_targets(tmp_path, arrays, {**META, "views": {"count": 4, "seed": 0, "augment": {}}})
  assert stored_view_count(tmp_path) == 4
  (tmp_path / "targets.json").write_text("{")
  assert stored_view_count(tmp_path) == 0


def test_exporting_again_without_views_says_it_drops_them(tiny_digits_runs, tmp_path):
  """Re-exported at another T, a teacher's views vanished in silence, and a student taught with
  views later found none."""
  teacher = copy_runs(tiny_digits_runs, tmp_path, teacher="teacher") / "teacher"
  result = run_cli("export", "--teacher", teacher, "--views", "2")
  assert result.exit_code == 0, result.output
  assert "note:" not in result.stderr
  result = run_cli("export", "--teacher", teacher, "-T", "2")
  assert result.exit_code == 0, result.output
  assert (f"note: the targets replaced in {teacher} held 2 augmented views per image and these "
          "hold none, which students taught with --teaching views need; export again with "
          "--views 2 to have them back") in " ".join(result.stderr.split())
  assert stored_view_count(teacher) == 0
  result = run_cli("export", "--teacher", teacher, "-T", "3")  # nothing more to lose
  assert result.exit_code == 0, result.output
  assert "note:" not in result.stderr


def test_a_student_given_for_targets_or_restored_as_a_teacher_is_named_a_student(
    tiny_digits_runs, tmp_path):
  """From Python: load_targets(student) advised `distill export --teacher STUDENT`, and
  restore_trained(student, ..., 'teacher') said the run stopped at step 40 of 1500."""
  from distill import workflow  # noqa: PLC0415
  from distill.run_recipe import read_run_recipe  # noqa: PLC0415

  student = tiny_digits_runs / "student"
  teacher = json.loads((student / "summary.json").read_text())["teacher_dir"]
  with pytest.raises(UserError, match=f"is a student run; give its teacher \\({teacher}\\)$"):
    load_targets(student)
  recipe = read_run_recipe(student)
  with pytest.raises(UserError, match=r"is a student run; restore it with role='student'$"):
    workflow.restore_trained(student, recipe, "teacher", workflow.load_data(recipe))
  # Unfinished too (no summary): its recipe.json names its teacher.
  unfinished = copy_runs(tiny_digits_runs, tmp_path, unfinished="student") / "unfinished"
  (unfinished / "summary.json").unlink()
  with pytest.raises(UserError, match=r"is a student run; restore it with role='student'$"):
    workflow.restore_trained(unfinished, recipe, "teacher", workflow.load_data(recipe))
