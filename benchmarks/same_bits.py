"""Short fixed runs whose final parameter hashes must not move when code is reorganised.

Trains a digits teacher and its students (exported targets, online, views,
hard labels), a streamed teacher and student, and a 2-device teacher and
online student, each in a fresh `distill` process, and prints one Markdown
row per run: its final `params_sha256` and test accuracy. Run it before and
after a change that must not alter what is computed; the tables must match
bit for bit (on the same machine: float results may differ in the last bits
across CPU types).

    python benchmarks/same_bits.py --out runs/same-bits > before.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

# Short, but long enough that every optimizer, augmentation and teaching path
# moves the parameters many times.
SHORT = ["teacher.steps=60", "student.steps=60", "teacher.log_every=20", "student.log_every=20",
         "teacher.eval_every=30", "student.eval_every=30", "teacher.checkpoint_every=30",
         "student.checkpoint_every=30"]


def _flags(overrides: list[str]) -> list[str]:
  return [arg for override in overrides for arg in ("--set", override)]


def _distill(*args, devices: int = 1) -> None:
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": str(devices),
         "DISTILL_OFFLINE": "1"}
  command = [sys.executable, "-m", "distill.cli", *map(str, args)]
  result = subprocess.run(command, env=env, capture_output=True, text=True)
  if result.returncode != 0:
    sys.exit(f"failed: {' '.join(command)}\n{result.stderr[-2000:]}")


def _write_digits_shards(root: Path) -> None:
  # In-process on purpose: the shards are data, made the way the tests make them.
  from distill import data as data_lib  # noqa: PLC0415
  from distill.data.shards import write_array_shards  # noqa: PLC0415

  raw = data_lib.DATASETS["digits"](data_dir=None, allow_download=False)
  for split, images, labels in (("train", raw.x_train, raw.y_train),
                                ("test", raw.x_test, raw.y_test)):
    write_array_shards(root / split, (images, labels), class_names=raw.class_names,
                       shard_size=300)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=Path, default=Path("runs/same-bits"))
  out = parser.parse_args().out
  shutil.rmtree(out, ignore_errors=True)
  out.mkdir(parents=True)
  short = _flags(SHORT)
  teacher = out / "teacher"
  runs = {"teacher (digits ViT)": teacher}
  _distill("teacher", "-r", "digits", "-w", teacher, "-q", *short)
  _distill("export", "--teacher", teacher, "--views", "2", "--out", out / "views-targets", "-q")
  students = {
      "student cnn, targets": ["-m", "cnn"],
      "student mlp, online": ["-m", "mlp", "--teaching", "online", "-T", "2"],
      "student cnn, hard": ["-m", "cnn", "--loss", "hard"],
      "student vit, targets, alpha 0.5, kl": ["-m", "vit", "--alpha", "0.5", "--soft-loss", "kl"],
  }
  for name, args in students.items():
    runs[name] = out / name.replace(", ", "-").replace(" ", "_")
    _distill("student", "--teacher", teacher, *args, "-w", runs[name], "-q", *short)
  runs["student mlp, views"] = out / "student-views"
  _distill("student", "--teacher", out / "views-targets", "-m", "mlp", "--teaching", "views",
           "-w", runs["student mlp, views"], "-q", *short)

  shards = out / "digits-shards"
  _write_digits_shards(shards)
  stream = ["--dataset", "stream", "--data-dir", shards]
  runs["teacher, streamed"] = out / "stream-teacher"
  _distill("teacher", "-r", "digits", "-w", runs["teacher, streamed"], "-q", *short, *stream)
  runs["student mlp, targets, streamed, 2 devices"] = out / "stream-student"
  _distill("student", "--teacher", runs["teacher, streamed"], "-m", "mlp", "-w",
           runs["student mlp, targets, streamed, 2 devices"], "-q", *short, *stream, devices=2)

  runs["teacher, 2 devices"] = out / "teacher-2"
  _distill("teacher", "-r", "digits", "-w", runs["teacher, 2 devices"], "-q", *short, devices=2)
  runs["student mlp, online, 2 devices"] = out / "online-2"
  _distill("student", "--teacher", teacher, "-m", "mlp", "--teaching", "online", "-w",
           runs["student mlp, online, 2 devices"], "-q", *short, devices=2)

  print("| run | params_sha256 | test accuracy |")
  print("|---|---|---|")
  for name, workdir in runs.items():
    summary = json.loads((workdir / "summary.json").read_text())
    print(f"| {name} | `{summary['params_sha256'][:16]}` | {summary['test_accuracy']:.4f} |")


if __name__ == "__main__":
  main()
