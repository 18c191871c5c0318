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
import functools
import os
import platform
import sys
import warnings
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class BackendChoices:
  """What distill does differently on one backend.

  Attributes:
    backend: the `jax.default_backend()` these choices are for.
    conv_stem: how a 3x3 conv over an image's few channels is computed (the
      ViT's conv stem, `vit.stem='conv'`, and the first layer of the conv
      stages of the CNN and of the hybrid ViT's stem): 'gathered'
      (`NeighbourhoodConv`, each pixel's neighbourhood gathered and multiplied
      by the kernel in one matmul) or 'conv' (`nnx.Conv`). Both have the same
      parameters, so checkpoints load either way.
    unroll_conv_scan: unroll the multi-step `lax.scan` for models with
      convolutions (see `distill.step.should_unroll`).
    export_batch_size: the forward-pass batch that suits this backend. Recipes
      pin `export.batch_size` (and `eval_batch_size`) themselves, since it is
      part of a run's recipe hash; this is the value `benchmarks/gpu.sh` sets.
    compute_dtype: the matmul dtype recipes default to ('float32').
    transpose_narrow_weight_gradients: compute a narrow dense layer's kernel
      gradient (a classifier head's) from a transposed copy of its output
      gradient, which XLA:CPU can hand to its fast dot kernels (see
      `distill.models.dense`).
    narrow_output_width: outputs narrower than this count as narrow for
      `transpose_narrow_weight_gradients` (a head over tens of classes, and on
      the CPU every layer at most 64 wide).
    compiler_options: XLA options (name, value) every jitted model function is
      compiled with (see `jit`); none on accelerators.
    min_steps_per_dispatch: the fewest optimizer steps one dispatch runs
      (`steps_per_dispatch`): a recipe's smaller `steps_per_dispatch` is raised to
      it. Recipes may pick few steps a dispatch for XLA:CPU, which unrolls them;
      an accelerator runs them in a scan, and pays its per-dispatch cost less often
      with more. Dispatches still end at every log, validation and checkpoint step.
    fused_qkv: compute a ViT block's query, key and value projections as one
      matmul over a joined kernel (`distill.models.vit.self_attention`), as
      PyTorch's and timm's attention do, instead of `nnx.MultiHeadAttention`'s
      three. The parameters are the same either way.
    measured: whether these values were measured on this backend.
  """

  backend: str
  conv_stem: str
  unroll_conv_scan: bool
  export_batch_size: int
  compute_dtype: str
  measured: bool
  transpose_narrow_weight_gradients: bool = False
  narrow_output_width: int = 32
  compiler_options: tuple[tuple[str, str], ...] = ()
  min_steps_per_dispatch: int = 1
  fused_qkv: bool = True

  def as_dict(self) -> dict[str, object]:
    """The choices as plain JSON-ready values (for bench output)."""
    return {**dataclasses.asdict(self), "compiler_options": dict(self.compiler_options)}


# Measured on XLA:CPU (2 cores):
# - conv_stem 'gathered': XLA:CPU runs a convolution inside a while-loop body about 13x slower
#   than in straight-line code; a conv-free ViT keeps the scanned dispatch, which compiled in
#   seconds instead of tens of seconds (see NeighbourhoodConv). As the conv stages' first layer
#   (1 channel in, 32 out, 128x28x28) its forward and kernel gradient took 3.0 ms against 5.3 as a
#   convolution, whose kernel gradient first lays the output gradient out batch-last.
# - unroll_conv_scan: a 17k-parameter CNN step took 967 ms in a scan, 61 ms unrolled.
# - export batch 64: the Fashion-MNIST teacher's stem activations stay in cache at 64 images;
#   its forward pass ran at 7,200 images/s at 64 and 4,900 at 256.
# - compiler_options: convolutions through XLA's own kernels, not YNNPACK's. jaxlib 0.10 hands
#   dots, reductions and convolutions to YNNPACK; on an Intel Xeon (2 cores) its convolution
#   kernel gradient took 28-37 ms for a 128x14x14x32 -> 64 layer against 8.7 ms through XLA's,
#   and the CNN student's step went from 1,535 to 2,351 images/s (the hybrid teacher's from 236
#   to 355). The list is YNNPACK's default without convolutions: matmul-only models (the ViTs)
#   compile to the same program either way.
# - transpose_narrow_weight_gradients: YNNPACK takes only dots with row-major operands in
#   canonical order. A 10-class head's kernel gradient [rows, in]^T @ [rows, 10] is not one,
#   and ran at 65-72 us through XLA's own dot (128 x 256 x 10) against 17-20 us as
#   (g^T @ x)^T from a copied g^T; the MLP student's step gained 5%, the linear one's 8%.
#   narrow_output_width 65 (layers up to 64 wide, where 32 took only the heads): the CIFAR-10
#   ViT's patch embedding (192 -> 64), attention output (64 -> 64) and second MLP layer
#   (256 -> 64) then take it too, and its step ran 1.05-1.07x faster in three A/Bs of 12-24
#   rounds on a Zen 4 EPYC; the demo teacher and the two ViT students within noise (0.98-1.02x).
#   On an Intel Xeon (model 207, jax 0.11.2) 65 ran at 1.01x, before the attention output was
#   a dense layer.
# - fused_qkv: on a Zen 4 EPYC the CIFAR-10 ViT's step ran at 1.02x (rounds 0.94-1.26x), the demo
#   teacher's at 1.00x (0.96-1.06x), the hybrid teacher's at 1.02x (0.81-1.11x); its traced ops
#   summed to 62.8 ms a step against 69.5. Kept for its fewer ops, which a GPU's launches favour.
_CPU = BackendChoices(
    backend="cpu", conv_stem="gathered", unroll_conv_scan=True, export_batch_size=64,
    compute_dtype="float32", measured=True, transpose_narrow_weight_gradients=True,
    narrow_output_width=65,
    compiler_options=(("xla_cpu_experimental_ynn_fusion_type",
                       "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"),))

# Measured on one NVIDIA H200 (jax 0.11.2, benchmarks/gpu.sh and gpu_choices.sh; BENCHMARKS.md,
# "On a GPU"), each against the others in one process (benchmarks/ab_step.py, medians of 4 rounds):
# - conv_stem 'gathered': the CNN student's step ran at 242,865 images/s against 187,268 with
#   nnx.Conv (0.77x), the hybrid Fashion-MNIST teacher's at 26,790 against 25,624 (0.96x).
# - unroll_conv_scan False: unrolled, the CNN student ran at 0.36x and the hybrid teacher at 0.74x
#   (a while-loop body costs nothing special on a GPU, and a scan compiles one step's program).
# - min_steps_per_dispatch 10: the hybrid teacher at the 2 steps a dispatch its recipe picks for
#   XLA:CPU ran at 42,784 images/s, at 10 at 107,372 (2.6x), at 50 no faster (1.00x); the CIFAR-10
#   ViT gained 1.03x from 10 to 50.
# - compute_dtype float32: bfloat16 ran the loops 1.09x (hybrid teacher, 10 steps a dispatch)
#   to 1.14x (CIFAR-10 ViT) faster: too little for a recipe's results to depend on the machine,
#   with bfloat16's accuracy on them unmeasured (these models are small: MFU < 1%).
# - export_batch_size 1024, fused_qkv and no XLA options: taken, not compared.
_GPU = BackendChoices(backend="gpu", conv_stem="gathered", unroll_conv_scan=False,
                      export_batch_size=1024, compute_dtype="float32", measured=True,
                      min_steps_per_dispatch=10)

# Other accelerators (TPU): the GPU's choices, unmeasured until a run on one.
_ACCELERATOR = dataclasses.replace(_GPU, backend="", measured=False)

# The backends whose choices were measured (`benchmarks/ab_step.py` replaces an entry while it
# times a variant).
_MEASURED = {"cpu": _CPU, "gpu": _GPU}


def choices(backend: str | None = None) -> BackendChoices:
  """The choices for `backend` (default: `jax.default_backend()`).

  'cpu' and 'gpu' get their measured choices; any other backend the GPU's,
  labelled with its name and as unmeasured.
  """
  if backend is None:
    import jax  # noqa: PLC0415 (only a call without a backend needs JAX)

    backend = jax.default_backend()
  if backend in _MEASURED:
    return _MEASURED[backend]
  return dataclasses.replace(_ACCELERATOR, backend=backend)


def steps_per_dispatch(recipe_value: int, backend: str | None = None) -> int:
  """The optimizer steps one dispatch runs: the recipe's `steps_per_dispatch`, or the
  backend's `min_steps_per_dispatch` where that is more (see `BackendChoices`)."""
  return max(recipe_value, choices(backend).min_steps_per_dispatch)


def cpu_description(cpuinfo: str | None = None, cores: int | None = None) -> str:
  """This machine's CPU as `make bench` and run summaries record it beside a speed.

  e.g. 'AMD EPYC (family 25, model 17), 2 cores' ('1 core' for a sweep's
  one-core worker). Cloud VMs often report a
  model name shared by several CPU generations ('AMD EPYC'), whose speeds
  differ, so the vendor's family and model numbers go with it. `cpuinfo` is
  /proc/cpuinfo's text (read here when None; off Linux, `platform` names the
  processor), `cores` the cores this process may run on.
  """
  if cpuinfo is None:
    try:
      cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
      cpuinfo = ""
  if cores is None:
    from distill.workers import available_cores  # noqa: PLC0415

    cores = len(available_cores())
  fields = {}
  for line in cpuinfo.splitlines():
    key, sep, value = line.partition(":")
    if not sep:
      if fields:
        break  # the first processor's block is enough
      continue
    fields.setdefault(key.strip(), value.strip())
  name = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
  if fields.get("cpu family") and fields.get("model"):
    name += f" (family {fields['cpu family']}, model {fields['model']})"
  return f"{name}, {cores} core{'' if cores == 1 else 's'}"


@functools.cache
def compiler_options() -> dict[str, str]:
  """The backend's `compiler_options` that this jaxlib accepts, as `jax.jit` takes them.

  XLA's option names change between releases: each option is tried once on a
  trivial function, and one that jaxlib rejects is left out with a warning, so
  a newer jaxlib compiles with its own defaults instead of failing.
  """
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  accepted = {}
  for name, value in choices().compiler_options:
    try:
      jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(jnp.zeros(1)).compile()
    except Exception as error:  # noqa: BLE001 (jaxlib raises its own runtime errors here)
      warnings.warn(f"XLA option {name}={value} not accepted by jax {jax.__version__}; "
                    f"compiling without it ({str(error).splitlines()[0]})", stacklevel=2)
      continue
    accepted[name] = value
  return accepted


def jit(fun, **kwargs):
  """`jax.jit(fun, **kwargs)`, compiled with the backend's `compiler_options`.

  Every jitted function that runs a model goes through here, so a choice of
  XLA kernels (see `BackendChoices.compiler_options`) holds for training,
  validation and export alike.
  """
  import jax  # noqa: PLC0415

  options = compiler_options()
  if options:
    kwargs = {**kwargs, "compiler_options": {**options, **kwargs.get("compiler_options", {})}}
  return jax.jit(fun, **kwargs)


# JAX's persistent compilation cache, for the `distill` command, in at most 1 GiB (the least
# recently used go first). A 20-step run of the default teacher: 54 s of compiling and 109 s
# wall the first time, 25 s and 80 s the next (what is left is tracing and lowering, which
# JAX redoes, and loading the cached executable: most of it when this teacher ran ten unrolled
# steps a dispatch, 48 of 57 s in a profile taken while the VM ran slowly).
COMPILATION_CACHE_ENV = "DISTILL_COMPILATION_CACHE"
_COMPILATION_CACHE_MAX_BYTES = 1 << 30
# Every program is kept, not only those that took a second to compile (JAX's default): a
# small student's step, validation and first-loss programs compile in under a second each,
# and a sweep compiled them again for every seed (demo's linear and MLP students, 12 runs:
# 14.5 s of compiling and 45 s wall, against 6.4 s and 36 s keeping them). Two demo teacher
# runs leave ~110 entries, 1.3 MB.
_COMPILATION_CACHE_MIN_SECONDS = 0.0


def compilation_cache_dir() -> Path | None:
  """The folder `enable_compilation_cache` uses, or None when it is off.

  $DISTILL_COMPILATION_CACHE names the folder, or turns the cache off with
  'off' (or 0, false, no); unset, it is $XDG_CACHE_HOME/distill/xla, by
  default ~/.cache/distill/xla.
  """
  setting = os.environ.get(COMPILATION_CACHE_ENV, "").strip()
  if setting.lower() in ("off", "0", "false", "no"):
    return None
  if setting:
    return Path(setting).expanduser()
  root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
  return Path(root) / "distill" / "xla"


def enable_compilation_cache() -> Path | None:
  """Keeps this process's compiled programs on disk for later runs; returns the folder.

  A resumed, repeated or sweep run then loads its training step instead of
  compiling it again; what it computes is the same, since the cache holds
  XLA's executables keyed by the program, the compiler options and the
  jaxlib version. A cache already configured for JAX
  ($JAX_COMPILATION_CACHE_DIR or `jax.config`) is left as it is and
  returned. A folder that cannot be written turns the cache off (None).
  Call it before the first compilation; the `distill` command does for every
  subcommand but `bench`, which times compilation.
  """
  jax = sys.modules.get("jax")
  configured = os.environ.get("JAX_COMPILATION_CACHE_DIR") or (
      jax.config.jax_compilation_cache_dir if jax is not None else None)
  if configured:
    return Path(configured)
  folder = compilation_cache_dir()
  if folder is None:
    return None
  try:
    folder.mkdir(parents=True, exist_ok=True)
  except OSError:
    return None  # e.g. a read-only home: compile every time, as without the cache
  if not os.access(folder, os.W_OK):
    return None
  if jax is None:
    # JAX reads these when it is first imported: a command that never compiles pays nothing.
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(folder)
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(_COMPILATION_CACHE_MAX_BYTES))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                          str(_COMPILATION_CACHE_MIN_SECONDS))
  else:
    jax.config.update("jax_compilation_cache_dir", str(folder))
    if jax.config.jax_compilation_cache_max_size == -1:
      jax.config.update("jax_compilation_cache_max_size", _COMPILATION_CACHE_MAX_BYTES)
    if jax.config.jax_persistent_cache_min_compile_time_secs == 1.0:  # JAX's default, unset
      jax.config.update("jax_persistent_cache_min_compile_time_secs",
                        _COMPILATION_CACHE_MIN_SECONDS)
  return folder
