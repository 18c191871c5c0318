"""Teachers trained elsewhere: timm / Hugging Face ViTs, Keras models, logits, Python callables.

`open_teacher(source)` recognises what SOURCE is and returns a `ForeignTeacher`:

  a folder with config.json + model.safetensors   a timm or transformers ViT (`hf_vit`)
  FILE.keras                                      a Keras 3 model, run on the JAX backend
  FILE.npz                                        logits computed anywhere (targets only)
  package.module:function                         a callable on uint8 NHWC images

Every teacher that can run takes the same input: float32 pixel values in
[0, 255], NHWC, as the data set stores them (uint8 cast to float). The
teacher's own preprocessing (resize, grey -> RGB, its mean/std) happens
inside its `apply`, so it runs in the jitted forward, on the device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distill.errors import UserError

# (params, pixels float32 [B, H, W, C] in 0..255) -> logits [B, C]; traceable by jax.jit.
ApplyFn = Callable[[Any, Any], Any]


@dataclasses.dataclass(frozen=True, eq=False)
class ForeignTeacher:
  """A teacher the user already has, made ready to label a data set.

  Attributes:
    kind: 'timm-vit', 'hf-vit', 'keras', 'logits' or 'callable'.
    source: what the user named (a folder, a file, or module:function).
    num_classes: classes the teacher predicts.
    class_names: its own label names, when it has them (else None).
    apply: the jittable forward pass (see the module docstring), or None when
      the teacher is only logits.
    params: the pytree `apply` takes (an online teacher's device state); None
      for a teacher without parameters of its own.
    num_params: trainable scalars (0 when unknown).
    can_teach_online: whether `apply` is a JAX function that can run inside
      the student's jitted step.
    logits: for a logits teacher, {'train': [N, C], 'test': [M, C], and
      optionally 'val'} in the data set's own order; else None.
    details: what summary.json records about the source (architecture, input
      size, ...).
  """

  kind: str
  source: str
  num_classes: int
  class_names: list[str] | None = None
  apply: ApplyFn | None = None
  params: Any = None
  num_params: int = 0
  can_teach_online: bool = False
  logits: dict[str, Any] | None = None
  details: dict[str, Any] = dataclasses.field(default_factory=dict)


def source_kind(source: str) -> str:
  """Which importer reads `source`: 'vit', 'keras', 'logits' or 'callable'."""
  path = Path(source)
  if path.is_dir():
    _check_not_a_run(path)
    return "vit"
  if path.suffix == ".keras":
    return "keras"
  if path.suffix == ".npz":
    return "logits"
  if ":" in source and not path.exists():
    return "callable"
  # Files a user may hold their model in, and the step to one distill reads.
  hdf5 = "a Keras 2 (HDF5) model: load it with keras.models.load_model and save it as .keras"
  torch = "a PyTorch file: save its logits as a .npz (train_logits, test_logits)"
  resave = {".h5": hdf5, ".hdf5": hdf5, ".pt": torch, ".pth": torch,
            ".npy": "one array: save the logits as a .npz with train_logits and test_logits",
            ".safetensors": "a weights file: give the folder holding it with its config.json"}
  if path.exists() and path.suffix.lower() in resave:
    raise UserError(f"{source} is {resave[path.suffix.lower()]}")
  if path.exists():
    raise UserError(f"{source} is not a teacher distill can import: give a folder with "
                    "config.json and model.safetensors (timm or transformers ViT), a .keras "
                    "file, a .npz of logits, or package.module:function")
  raise UserError(f"{source} does not exist (a teacher to import is a folder, a .keras or .npz "
                  "file, or package.module:function)")


def _check_not_a_run(folder: Path) -> None:
  """Refuses a folder distill wrote (a run, exported targets), which is not a ViT to import."""
  from distill import rundir  # noqa: PLC0415

  if (folder / "config.json").is_file():
    return  # A ViT's folder, whatever else lies beside it.
  kind = rundir.folder_kind(folder)
  if kind in (rundir.FINISHED_TEACHER, rundir.IMPORTED_TEACHER, rundir.TARGETS_ONLY):
    what = ("already a distill teacher run" if kind == rundir.FINISHED_TEACHER
            else "already an imported teacher" if kind == rundir.IMPORTED_TEACHER
            else rundir.describe_folder(folder, kind))
    raise UserError(f"{folder} is {what}: students learn from it as it is, with "
                    f"`distill student --teacher {folder}`; there is nothing to import")
  if kind == rundir.STUDENT:
    raise UserError(f"{folder} is {rundir.describe_folder(folder, kind)}, not a teacher to "
                    "import (a folder to import holds a timm or transformers ViT: config.json "
                    "and model.safetensors)")


def _check_takes(teacher: ForeignTeacher, image_shape: tuple[int, int, int] | None
                 ) -> ForeignTeacher:
  """Refuses, as it opens, a teacher that cannot take the data set's images (channels it does
  not convert, a channels-first input): traced abstractly, in milliseconds, so the refusal
  comes before any note and before the data set is labelled."""
  if image_shape is not None:
    import jax  # noqa: PLC0415

    jax.eval_shape(teacher.apply, teacher.params,
                   jax.ShapeDtypeStruct((2, *image_shape), jax.numpy.float32))
  return teacher


def open_teacher(source: str | Path, *,
                 image_shape: tuple[int, int, int] | None = None) -> ForeignTeacher:
  """Reads the teacher at `source` (see the module docstring for what SOURCE may be).

  `image_shape`, the data set's (H, W, C), is what a runnable teacher is traced on once: a
  callable to learn its class count and whether it traces under jax.jit, a ViT or Keras model
  to refuse images it cannot take; a logits file ignores it.
  """
  source = str(source)
  kind = source_kind(source)
  if kind == "vit":
    from distill.importers.hf_vit import open_vit  # noqa: PLC0415

    return _check_takes(open_vit(source), image_shape)
  if kind == "keras":
    from distill.importers.keras_model import open_keras  # noqa: PLC0415

    return _check_takes(open_keras(source), image_shape)
  if kind == "logits":
    from distill.importers.logits import open_logits  # noqa: PLC0415

    return open_logits(source)
  from distill.importers.callable import open_callable  # noqa: PLC0415

  return open_callable(source, image_shape)
