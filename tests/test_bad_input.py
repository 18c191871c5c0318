"""A table of user mistakes: each exits 2 with one or two clear lines and touches nothing.

Every mistake aimed at a training command is run against the workdir of a
finished earlier run, with --overwrite, and that run's files must come out
byte-for-byte the same.
"""

import gzip
import hashlib
import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_FLAGS, copy_runs, run_cli


def _snapshot(directory):
  return {p.relative_to(directory): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_digits_runs):
  """A finished teacher run and a finished student run."""
  return copy_runs(tiny_digits_runs, tmp_path_factory.mktemp("finished"), teacher="teacher",
                   student="student")


def _write_idx(path, array):
  magic = 0x00000800 | {np.uint8: 0x08}[array.dtype.type] << 0
  magic = (0x08 << 8) | array.ndim
  header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.tobytes())


def _fashion_folder(path, truncate=False):
  path.mkdir()
  rng = np.random.default_rng(0)
  for prefix, n in (("train", 60), ("t10k", 20)):
    _write_idx(path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), np.uint8))
    _write_idx(path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n).astype(np.uint8))
  if truncate:
    file = path / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(file.read_bytes())
    file.write_bytes(gzip.compress(raw[: len(raw) // 2]))
  return path


def _npz(path, **arrays):
  np.savez(path, **arrays)
  return path


def _toml(path, text):
  path.write_text(text + "\n")
  return path


# Pictures of something: blank images are a mistake of their own.
IMAGES = np.arange(20 * 64).reshape(20, 8, 8).astype(np.uint8)
LABELS = np.arange(20) % 4


def _mistakes(tmp, finished):
  """(name, argv for a training command or other, words the message must hold)."""
  damaged_teacher = tmp / "damaged-teacher"
  shutil.copytree(finished / "teacher", damaged_teacher)
  targets = damaged_teacher / "targets.npz"
  targets.write_bytes(targets.read_bytes()[:1000])
  no_targets = tmp / "no-targets"
  shutil.copytree(finished / "teacher", no_targets)
  (no_targets / "targets.npz").unlink()
  bad_toml = tmp / "bad.toml"
  bad_toml.write_text("[teacher\nsteps = 3")
  damaged_summary = tmp / "damaged-summary"
  damaged_summary.mkdir()
  (damaged_summary / "summary.json").write_text("{not json")
  a_file = tmp / "a-file"
  a_file.write_text("")
  empty = tmp / "empty"
  empty.mkdir()
  missing = tmp / "nothing-here"
  unfinished = tmp / "unfinished"
  unfinished.mkdir()
  shutil.copy(finished / "teacher" / "recipe.json", unfinished)
  student = finished / "student"
  images = tmp / "images.npy"
  np.save(images, np.zeros((2, 8, 8, 1), np.uint8))
  teacher = ["teacher", "--recipe", "digits", *TINY_FLAGS]
  # The wrong kind of folder, wherever a command reads a run: one line saying what it is.
  not_teachers = [(student, ["a student run", "its teacher is --teacher /"]),
                  (unfinished, ["an unfinished run", "re-run its command"]),
                  (a_file, ["a file"]), (empty, ["an empty folder"]), (missing, ["not found"])]
  not_runs = [(a_file, "a file"), (empty, "an empty folder"), (missing, "not found")]
  wrong_folders = [
      *((f"student --teacher {kind}", ["student", "--teacher", folder], words)
        for folder, words in not_teachers for kind in [folder.name]),
      *((f"export --teacher {kind}", ["export", "--teacher", folder], words)
        for folder, words in not_teachers for kind in [folder.name]),
      *((f"compare {words}", ["compare", folder], [words, "distill teacher"])
        for folder, words in not_runs),
      *((f"report {words}", ["report", folder, "--out", tmp / "report"], [words])
        for folder, words in not_runs),
      *((f"export-model {words}", ["export-model", folder, "--format", "stablehlo", "--out",
                                   tmp / "model.bin"], [words, "finished run"])
        for folder, words in not_runs),
      ("predict a file", ["predict", a_file, "--images", images], ["a file", "export-model"]),
      ("predict an empty folder", ["predict", empty, "--images", images], ["an empty folder"]),
      ("predict a missing path", ["predict", missing, "--images", images], ["not found"]),
  ]
  # A recipe file's values are type-checked like --set's: the key, the file, the type.
  recipe_types = [
      (f"recipe file {text}", ["teacher", "--recipe", _toml(tmp / f"types-{i}.toml", text)],
       [key, f"types-{i}.toml", f"must be {kind}"])
      for i, (text, key, kind) in enumerate([
          ('[teacher]\nsteps = "ten"', "'teacher.steps'", "int"),
          ('[teacher]\nsteps = "10"', "'teacher.steps'", "int"),
          ('[teacher]\nlearning_rate = "fast"', "'teacher.learning_rate'", "float"),
          ("[augment]\nflip = 3", "'augment.flip'", "bool"),
          ('[augment]\nflip = "true"', "'augment.flip'", "bool"),
          ('[student.cnn]\nchannels = "a"', "'student.cnn.channels'", "list of int"),
          ("[data]\ndataset = 3", "'data.dataset'", "str"),
      ])]
  # A data set of one's own, too small for the recipe's sizes: every fix in one line.
  small = _npz(tmp / "small.npz", x=np.resize(IMAGES, (60, 8, 8)), y=np.arange(60) % 3)
  small_data = [
      ("small data: validation split and batch sizes",
       ["teacher", "--recipe", "digits", "--dataset", "npz", "--data-dir", small],
       ["data.val_size 150", "teacher.batch_size 64", "student.batch_size 64",
        "pass --set data.val_size=4 --batch-size 32 --set student.batch_size=32"]),
      ("small data: no validation images",
       ["teacher", "--recipe", "digits", "--dataset", "npz", "--data-dir", small, "--set",
        "data.val_size=0", "--batch-size", "8", "--set", "student.batch_size=8"],
       ["no validation images", "pass --set data.val_size=4"]),
  ]
  # Files that are no npz, or a damaged one: one line, not zipfile's or pickle's traceback;
  # test labels that count from another number than y's; images that hold no picture.
  whole = _npz(tmp / "whole.npz", x=IMAGES, y=LABELS).read_bytes()
  (tmp / "half.npz").write_bytes(whole[:len(whole) // 2])
  (tmp / "text.npz").write_text("hello\n")
  not_npz = [
      ("truncated npz", ["teacher", "--dataset", "npz", "--data-dir", tmp / "half.npz"],
       ["half.npz is damaged (not a complete .npz", "save it again"]),
      ("text file named .npz", ["teacher", "--dataset", "npz", "--data-dir", tmp / "text.npz"],
       ["text.npz is not an .npz file", "np.savez"]),
      ("y_test counted from 1", ["teacher", "--dataset", "npz", "--data-dir",
                                 _npz(tmp / "from1.npz", x=IMAGES, y=LABELS, x_test=IMAGES,
                                      y_test=LABELS + 1)],
       ["key 'y_test' runs 1..4 but key 'y' runs 0..3", "save `y_test - 1`"]),
      ("images cast from 0..1 floats", ["teacher", "--dataset", "npz", "--data-dir",
                                        _npz(tmp / "cast.npz", x=(IMAGES / 255).round().astype(
                                            np.uint8), y=LABELS)],
       ["key 'x' holds only the values 0 and 1", "`(x * 255).round().astype(np.uint8)`"]),
  ]
  # Options given on the wrong side of the command say where they go.
  misplaced = [
      ("command option before the command", ["--steps", "10", "teacher"],
       ["--steps is an option of `distill teacher`", "student", "`distill teacher --steps 10`"]),
      ("global option after the command", ["teacher", "--coordinator", "host:1234"],
       ["--coordinator goes before the command", "`distill --coordinator host:1234 teacher"]),
  ]
  return [
      ("missing data folder", ["teacher", "--data-dir", tmp / "nowhere"], ["nowhere"]),
      ("empty data folder", ["teacher", "--data-dir", empty], ["empty"]),
      ("truncated IDX file", ["teacher", "--data-dir", _fashion_folder(tmp / "trunc", True)],
       ["train-images-idx3-ubyte.gz"]),
      ("npz without x", ["teacher", "--dataset", "npz", "--data-dir",
                         _npz(tmp / "nox.npz", y=LABELS)],
       ["'x'"]),
      ("npz without y", ["teacher", "--dataset", "npz", "--data-dir",
                         _npz(tmp / "noy.npz", x=IMAGES)],
       ["'y'"]),
      ("npz lengths differ", ["teacher", "--dataset", "npz", "--data-dir",
                              _npz(tmp / "len.npz", x=IMAGES, y=LABELS[:7])], ["20", "7"]),
      ("labels out of range", ["teacher", "--dataset", "npz", "--data-dir",
                               _npz(tmp / "range.npz", x=IMAGES, y=LABELS,
                                    class_names=np.array(["a", "b"]))], ["label"]),
      ("unknown dataset", ["teacher", "--dataset", "imagenet"], ["unknown dataset", "digits"]),
      ("unknown model", [*teacher, "--set", "teacher.model=resnet"], ["unknown model", "vit"]),
      ("unknown recipe key", [*teacher, "--set", "teacher.epochs=3"],
       ["teacher.epochs", "teacher.steps"]),
      ("--set of the wrong type", [*teacher, "--set", "augment.flip=sometimes"], ["must be bool"]),
      ("broken recipe file", ["teacher", "--recipe", bad_toml], ["not valid TOML"]),
      # The recipe's own sizes, not TINY's: a flag and a --set of one key must agree.
      ("non-positive steps", [*teacher[:3], "--steps", "-5"], ["steps must be positive"]),
      ("non-positive batch size", [*teacher[:3], "--batch-size", "0"],
       ["batch_size must be positive"]),
      ("batch larger than the data", [*teacher[:3], "--batch-size", "100000"],
       ["larger than the"]),
      ("a flag against a --set", [*teacher, "--steps", "5"],
       ["--steps 5 and --set teacher.steps=20 disagree"]),
      ("teacher folder without targets", ["student", "--teacher", no_targets],
       ["no targets", "distill export"]),
      ("damaged targets file", ["student", "--teacher", damaged_teacher], ["damaged"]),
      ("targets from another data set", ["student", "--teacher", finished / "teacher",
                                         "--dataset", "npz", "--data-dir",
                                         _npz(tmp / "other.npz",
                                              x=np.resize(IMAGES, (400, 8, 8)),
                                              y=np.arange(400) % 10)],
       ["other data"]),
      ("targets from another split", ["student", "--teacher", finished / "teacher", "--set",
                                      "data.split_seed=7"], ["other data", "training split"]),
      ("workdir is a file", [*teacher, "--workdir", a_file], ["not a directory"]),
      ("workdir under a file", [*teacher, "--workdir", a_file / "run"], ["cannot"]),
      ("export at temperature 0", ["export", "--teacher", finished / "teacher", "-T", "0"],
       ["temperature"]),
      ("compare a damaged summary", ["compare", damaged_summary], ["damaged"]),
      ("student of a folder that is no teacher", ["student", "--teacher", empty],
       ["empty folder"]),
      *wrong_folders, *recipe_types, *small_data, *not_npz, *misplaced,
      *_import_mistakes(tmp, finished),
  ]


def _import_mistakes(tmp, finished):
  """Teachers from elsewhere that cannot be imported, each aimed at the finished teacher's
  folder with --overwrite: the refusal must leave that run as it was."""
  from safetensors.numpy import load_file, save_file  # noqa: PLC0415 (only these rows need it)

  fixture = Path(__file__).parent / "fixtures" / "vit_timm"
  missing_tensor = tmp / "vit-missing-tensor"
  shutil.copytree(fixture, missing_tensor)
  tensors = load_file(missing_tensor / "model.safetensors")
  tensors.pop("head.weight")
  save_file(tensors, missing_tensor / "model.safetensors")
  registers = tmp / "vit-registers"
  shutil.copytree(fixture, registers)
  config = json.loads((registers / "config.json").read_text())
  config.setdefault("model_args", {})["reg_tokens"] = 4
  (registers / "config.json").write_text(json.dumps(config))
  rng = np.random.default_rng(0)
  five_classes = tmp / "five-classes.npz"
  np.savez(five_classes, train_logits=rng.normal(size=(1437, 5)),
           test_logits=rng.normal(size=(360, 5)))
  few_rows = tmp / "few-rows.npz"
  np.savez(few_rows, train_logits=rng.normal(size=(100, 10)),
           test_logits=rng.normal(size=(360, 10)))
  out = ["-r", "digits", "-w", finished / "teacher", "--overwrite"]
  return [
      ("import a folder that is no ViT", ["import-teacher", tmp / "empty", *out], ["config.json"]),
      ("import a ViT missing a tensor", ["import-teacher", missing_tensor, *out], ["head.weight"]),
      ("import a ViT with registers", ["import-teacher", registers, *out], ["reg"]),
      ("import logits of other classes", ["import-teacher", five_classes, *out],
       ["5 classes"]),
      ("import logits of the wrong count", ["import-teacher", few_rows, *out], ["100 rows"]),
      ("import an unimportable callable", ["import-teacher", "no_such_module_x:fn", *out],
       ["no_such_module_x"]),
  ]


def test_at_least_fifteen_mistakes_each_clear_and_harmless(finished, tmp_path):
  before = {name: _snapshot(finished / name) for name in ("teacher", "student")}
  failures = []
  mistakes = _mistakes(tmp_path, finished)
  assert len(mistakes) >= 15
  for name, args, words in mistakes:
    command = args[0]
    target = {"teacher": finished / "teacher", "student": finished / "student"}.get(command)
    extra = []
    if target is not None and "--workdir" not in args:
      extra = ["--workdir", target, "--overwrite"]
    result = run_cli(*args, *extra)
    stderr = result.stderr.strip()
    problems = []
    if result.exit_code != 2:
      problems.append(f"exit {result.exit_code}")
    if "Traceback" in result.output:
      problems.append("traceback")
    if not stderr.startswith("error:") or len(stderr.splitlines()) > 2:
      problems.append(f"stderr not one clear line: {stderr!r}")
    problems += [f"missing {w!r} in {stderr!r}" for w in words if w not in stderr]
    if problems:
      failures.append(f"{name}: {'; '.join(problems)}")
  assert not failures, "\n".join(failures)
  for name in ("teacher", "student"):
    assert _snapshot(finished / name) == before[name], f"{name} run was modified"


def test_read_only_workdir(tmp_path, monkeypatch):
  read_only = tmp_path / "ro"
  read_only.mkdir()
  read_only.chmod(0o500)
  if os.geteuid() == 0:  # Root writes through permissions: give the answer others get.
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kwargs: (
        Path(path) != read_only and access(path, mode, **kwargs)))
  result = run_cli("teacher", "--recipe", "digits", "--workdir", read_only / "run", *TINY_FLAGS)
  assert result.exit_code == 2, result.output
  assert f"cannot write to workdir {read_only / 'run'}: {read_only} is read-only" in result.stderr
  assert not (read_only / "run").exists()


def test_a_workdir_that_refuses_writes_stops_before_training(tmp_path, monkeypatch):
  # Permissions can allow what the file system refuses (a full disk, a read-only mount): the
  # run writes a probe file first and reports the system's reason in one line.
  write_text = Path.write_text

  def refuse_the_probe(path, *args, **kwargs):
    if path.name == ".write-test":
      raise OSError(30, "Read-only file system")
    return write_text(path, *args, **kwargs)

  monkeypatch.setattr(Path, "write_text", refuse_the_probe)
  result = run_cli("teacher", "--recipe", "digits", "--workdir", tmp_path / "run", *TINY_FLAGS)
  assert result.exit_code == 2, result.output
  assert f"cannot write to workdir {tmp_path / 'run'}: Read-only file system" in result.stderr
  assert "Traceback" not in result.output
  assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_diverging_run_stops_with_the_step_and_exits_nonzero(tmp_path):
  result = run_cli("teacher", "--recipe", "digits", "--workdir", tmp_path / "t", *TINY_FLAGS,
                "--set", "teacher.learning_rate=1e30", "--set", "teacher.grad_clip=0.0")
  assert result.exit_code == 2, result.output
  assert "training diverged" in result.stderr and "by step" in result.stderr
  assert not (tmp_path / "t" / "summary.json").exists()
