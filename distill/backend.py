"""Choices that depend on the accelerator, made in one place: `choices()`.

Several of distill's defaults were picked by measuring XLA:CPU on a 2-core
machine. They are not obviously right elsewhere, so the code that depends on
them asks `choices()` instead of testing the backend itself. The key is
`jax.default_backend()` ('cpu', 'gpu', 'tpu'), never a machine's name: the
same wheel must make the same choice on every machine of a kind.

`measured` says whether a backend's values come from measurements or are the
usual defaults taken on trust; `benchmarks/gpu.sh` records them beside its
numbers so a device run can confirm or overturn them.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class BackendChoices:
  """What distill does differently on one backend.

  Attributes:
    backend: the `jax.default_backend()` these choices are for.
    conv_stem: how the ViT's 3x3 conv stem (`vit.stem='conv'`) is computed:
      'gathered' (`NeighbourhoodConv`, each pixel's neighbourhood gathered and
      multiplied by the kernel in one matmul) or 'conv' (`nnx.Conv`). Both have
      the same parameters, so checkpoints load either way.
    unroll_conv_scan: unroll the multi-step `lax.scan` for models with
      convolutions (see `distill.step.should_unroll`).
    export_batch_size: the forward-pass batch that suits this backend. Recipes
      pin `export.batch_size` (and `eval_batch_size`) themselves, since it is
      part of a run's recipe hash; this is the value `benchmarks/gpu.sh` sets.
    compute_dtype: the matmul dtype recipes default to ('float32').
    measured: whether these values were measured on this backend.
  """

  backend: str
  conv_stem: str
  unroll_conv_scan: bool
  export_batch_size: int
  compute_dtype: str
  measured: bool

  def as_dict(self) -> dict[str, object]:
    """The choices as plain JSON-ready values (for bench output)."""
    return dataclasses.asdict(self)


# Measured on XLA:CPU (2 cores):
# - conv_stem 'gathered': XLA:CPU runs a convolution inside a while-loop body about 13x slower
#   than in straight-line code; a conv-free ViT keeps the scanned dispatch, which compiled in
#   seconds instead of tens of seconds (see NeighbourhoodConv).
# - unroll_conv_scan: a 17k-parameter CNN step took 967 ms in a scan, 61 ms unrolled.
# - export batch 64: the Fashion-MNIST teacher's stem activations stay in cache at 64 images;
#   its forward pass ran at 7,200 images/s at 64 and 4,900 at 256.
_CPU = BackendChoices(backend="cpu", conv_stem="gathered", unroll_conv_scan=True,
                      export_batch_size=64, compute_dtype="float32", measured=True)

# Accelerators: the usual defaults, unmeasured until a device run (benchmarks/gpu.sh).
# A while-loop body costs nothing special on GPU/TPU, so scans stay scans (fast compiles, one
# step's activations). The gathered stem is kept: it is one matmul, which accelerators do well,
# and keeping it leaves one code path to trust. Float32 stays the default compute; gpu.sh
# measures bfloat16 beside it. The export batch is larger so the device is not launch-bound.
_ACCELERATOR = BackendChoices(backend="", conv_stem="gathered", unroll_conv_scan=False,
                              export_batch_size=1024, compute_dtype="float32", measured=False)


def choices(backend: str | None = None) -> BackendChoices:
  """The choices for `backend` (default: `jax.default_backend()`).

  Any backend other than 'cpu' gets the accelerator defaults, labelled with its name.
  """
  if backend is None:
    import jax  # noqa: PLC0415 (only a call without a backend needs JAX)

    backend = jax.default_backend()
  if backend == "cpu":
    return _CPU
  return dataclasses.replace(_ACCELERATOR, backend=backend)
