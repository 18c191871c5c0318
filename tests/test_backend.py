"""distill.backend: one switch for the per-backend choices, read by the step and the ViT."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_FLAGS, compiled_forward, copy_runs, run_cli
from flax import nnx

from distill import backend, loop, step
from distill.models import create_model


def test_cpu_keeps_the_measured_choices():
  """CPU: gathered stem, unrolled conv scans, export batch 64, float32 — all measured."""
  cpu = backend.choices("cpu")
  assert (cpu.conv_stem, cpu.unroll_conv_scan, cpu.export_batch_size, cpu.compute_dtype,
          cpu.measured) == ("gathered", True, 64, "float32", True)
  assert dict(cpu.compiler_options) == {
      "xla_cpu_experimental_ynn_fusion_type":
          "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
  assert cpu.as_dict()["compiler_options"] == dict(cpu.compiler_options)
  assert backend.choices() == backend.choices(jax.default_backend())


# Two processors of a 2-core cloud VM, as its /proc/cpuinfo reads (trimmed).
_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu avx512f

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
"""


def test_cpu_description_tells_generations_with_one_model_name_apart():
  """A VM's generic model name gets the family and model that tell Zen 4 from Zen 5."""
  assert backend.cpu_description(_CPUINFO, cores=2) == "AMD EPYC (family 25, model 17), 2 cores"
  zen5 = _CPUINFO.replace("cpu family\t: 25", "cpu family\t: 26")
  assert backend.cpu_description(zen5, cores=2).startswith("AMD EPYC (family 26, model 17)")
  # Without /proc/cpuinfo (macOS, Windows) the platform's own name stands in.
  assert backend.cpu_description("", cores=8).endswith(", 8 cores")
  assert backend.cpu_description().endswith((" cores", " 1 core"))
  assert backend.cpu_description("", cores=1).endswith(", 1 core")


def test_accelerators_keep_scans_and_only_the_gpu_is_measured():
  """GPU and TPU: scans stay scans, float32 default, 10 steps a dispatch at least; only the GPU's
  choices were measured (on an H200), a TPU takes them labelled unmeasured."""
  for name in ("gpu", "tpu"):
    choice = backend.choices(name)
    assert choice.backend == name and choice.measured == (name == "gpu")
    assert not choice.unroll_conv_scan and choice.compute_dtype == "float32"
    assert choice.conv_stem == "gathered" and choice.min_steps_per_dispatch == 10
    assert choice.as_dict()["backend"] == name
    assert choice.compiler_options == ()  # XLA:CPU's options never reach an accelerator


def test_a_dispatch_runs_the_recipes_steps_or_the_accelerators_minimum():
  """The CPU runs a recipe's steps_per_dispatch as it is (its values were picked there); a GPU
  raises a smaller one to 10 and keeps a larger one."""
  assert [backend.steps_per_dispatch(n, "cpu") for n in (1, 2, 10, 50)] == [1, 2, 10, 50]
  assert [backend.steps_per_dispatch(n, "gpu") for n in (1, 2, 10, 50)] == [10, 10, 10, 50]
  assert backend.steps_per_dispatch(2) == backend.steps_per_dispatch(2, jax.default_backend())


def _train_cnn_student(workdir, teacher):
  """A TINY digits CNN student on hard labels, 60 steps at a rate that learns: its test accuracy
  and what it printed on stderr."""
  result = run_cli("student", "--teacher", teacher, "--workdir", workdir, "--loss", "hard",
                   *TINY_FLAGS, "--set", "student.learning_rate=1e-2", "--set", "student.steps=60")
  assert result.exit_code == 0, result.output
  return json.loads((workdir / "summary.json").read_text())["test_accuracy"], result.stderr


def test_the_accelerator_choices_train_a_cnn_here_as_the_cpu_ones_do(monkeypatch, tmp_path,
                                                                      tiny_digits_runs):
  """What a GPU would run, run on this CPU first: the lent device's minutes are scarce.

  Under the accelerator's choices the CNN's steps run inside a `lax.scan`, the
  head's kernel gradient is one dot and no XLA:CPU option applies. The student
  trains, validates and evaluates end to end, as well as under the CPU's
  choices: each choice computes the same numbers up to rounding (see
  test_train's scan-against-unrolled test, test_dense and the convolution
  test above), which Adam's first steps can amplify, so the two students
  are compared by their accuracy (92.2% both, on an AMD EPYC).
  """
  copy_runs(tiny_digits_runs, tmp_path, teacher="teacher")
  cpu_accuracy, cpu_notes = _train_cnn_student(tmp_path / "cpu", tmp_path / "teacher")
  accelerator = backend.choices("gpu")
  monkeypatch.setattr(backend, "choices", lambda name=None: accelerator)
  unrolled = []
  should_unroll = step.should_unroll
  monkeypatch.setattr(step, "should_unroll",
                      lambda model: unrolled.append(should_unroll(model)) or unrolled[-1])
  plans = []
  dispatch_plan = loop.dispatch_plan
  monkeypatch.setattr(loop, "dispatch_plan",
                      lambda *args: plans.append(dispatch_plan(*args)) or plans[-1])
  backend.compiler_options.cache_clear()
  try:
    assert backend.compiler_options() == {}
    accuracy, notes = _train_cnn_student(tmp_path / "gpu", tmp_path / "teacher")
  finally:
    backend.compiler_options.cache_clear()
  assert unrolled and not any(unrolled), "the CNN's steps run in a scan"
  # TINY's 5 steps a dispatch are raised to the GPU's 10, which its logs every 10 steps allow.
  assert plans and {count for _, count in plans[0]} == {10}
  assert "10 steps a dispatch, not the recipe's 5: gpu runs them" in notes
  assert "steps a dispatch" not in cpu_notes
  assert cpu_accuracy > 0.8, "the student learns, so the comparison means something"
  assert abs(accuracy - cpu_accuracy) < 0.03


def _conv_gradients(x, w):
  def loss(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC")).sum()
  return jax.grad(loss, argnums=(0, 1))(x, w)


def test_convolutions_compile_to_xla_kernels_with_the_same_gradients():
  """backend.jit keeps a CNN layer's gradients out of YNNPACK (4x faster on an Intel Xeon)."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(8, 14, 14, 32)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 32, 64)), jnp.float32)
  ours = backend.jit(_conv_gradients)
  assert "__ynn_fusion" not in ours.lower(x, w).compile().as_text()
  for a, b in zip(ours(x, w), jax.jit(_conv_gradients)(x, w), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


def test_an_option_jaxlib_rejects_is_dropped_with_a_warning(monkeypatch):
  """A renamed XLA option costs a warning, not a failed compile."""
  odd = dataclasses.replace(backend.choices("cpu"), compiler_options=(
      ("xla_cpu_experimental_ynn_fusion_type", "NOT_A_FUSION_TYPE"),))
  monkeypatch.setattr(backend, "choices", lambda name=None: odd)
  backend.compiler_options.cache_clear()
  try:
    with pytest.warns(UserWarning, match="NOT_A_FUSION_TYPE"):
      assert backend.compiler_options() == {}
    assert float(backend.jit(lambda v: v * 2)(jnp.ones(()))) == 2.0
  finally:
    backend.compiler_options.cache_clear()


_FEW_CHANNEL_CONV_MODELS = {
    "vit conv stem": dict(name="vit", patch=7, width=16, depth=1, heads=2, stem="conv",
                          head_init_scale=1.0),
    "cnn": dict(name="cnn", channels=[8, 16], blocks_per_stage=1, head_init_scale=1.0),
    "vit cnn stem": dict(name="vit", patch=1, width=16, depth=1, heads=2, stem="cnn",
                         stem_channels=[8, 16], stem_blocks_per_stage=1, head_init_scale=1.0),
}  # A non-zero head: logits that are all zero would compare equal whatever the stem computed.


def _build_with_conv_stem(monkeypatch, conv_stem: str, settings: dict):
  cpu = dataclasses.replace(backend.choices("cpu"), conv_stem=conv_stem)
  monkeypatch.setattr(backend, "choices", lambda name=None: cpu)
  settings = dict(settings)
  return create_model(settings.pop("name"), num_classes=10, image_shape=(28, 28, 1), seed=3,
                      **settings)


@pytest.mark.parametrize("model", list(_FEW_CHANNEL_CONV_MODELS))
def test_both_conv_stems_hold_the_same_weights_and_compute_the_same(monkeypatch, model):
  """nnx.Conv and the gathered matmul over the image: same parameters from a seed, same logits.

  The choice covers the ViT's conv stem and the conv stages' first layer (CNN
  student, hybrid ViT stem); deeper conv layers stay `nnx.Conv` either way.
  """
  from distill.models.cnn import NeighbourhoodConv  # noqa: PLC0415 (next to its use)

  gathered = _build_with_conv_stem(monkeypatch, "gathered", _FEW_CHANNEL_CONV_MODELS[model])
  plain = _build_with_conv_stem(monkeypatch, "conv", _FEW_CHANNEL_CONV_MODELS[model])

  def convs(module):
    return [type(m) for _, m in nnx.iter_modules(module)
            if isinstance(m, (nnx.Conv, NeighbourhoodConv))]

  assert convs(gathered)[0] is NeighbourhoodConv and set(convs(plain)) == {nnx.Conv}
  assert convs(gathered)[1:] == convs(plain)[1:]
  params_a, params_b = nnx.state(gathered, nnx.Param), nnx.state(plain, nnx.Param)
  assert jax.tree.structure(params_a) == jax.tree.structure(params_b)
  for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b), strict=True):
    np.testing.assert_array_equal(a, b)
  images = np.random.default_rng(0).normal(size=(4, 28, 28, 1)).astype(np.float32)
  logits = compiled_forward(gathered, images)
  assert float(jnp.abs(logits).max()) > 1e-3
  np.testing.assert_allclose(logits, compiled_forward(plain, images), rtol=1e-4, atol=1e-5)
  # A real convolution on a backend that unrolls conv scans is unrolled; a model whose only
  # convolution is gathered is not.
  assert step.should_unroll(plain)
  assert step.should_unroll(gathered) == (len(convs(gathered)) > 1)


def test_compilation_cache_folder_follows_the_environment(monkeypatch, tmp_path):
  monkeypatch.delenv(backend.COMPILATION_CACHE_ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert backend.compilation_cache_dir() == tmp_path / "distill" / "xla"
  monkeypatch.setenv(backend.COMPILATION_CACHE_ENV, str(tmp_path / "mine"))
  assert backend.compilation_cache_dir() == tmp_path / "mine"
  for off in ("off", "0", "FALSE", "no"):
    monkeypatch.setenv(backend.COMPILATION_CACHE_ENV, off)
    assert backend.compilation_cache_dir() is None


# Python, in a fresh process: enable the cache, then compile one program.
_COMPILE_ONCE = ("from distill import backend; print(backend.enable_compilation_cache()); "
                 "import jax; jax.jit(lambda x: x * 3)(2.0).block_until_ready()")


def _start_compile_once(tmp_path, **env):
  """Starts _COMPILE_ONCE with `env` added, and without the cache settings the tests set for
  JAX; `_compiled_once` waits for it. Each process has folders of its own, so several run at
  once (most of each one's time is importing JAX).

  The program compiles in milliseconds: distill keeps it all the same, where JAX
  alone keeps only programs that took a second.
  """
  environ = {key: value for key, value in os.environ.items()
             if key not in ("JAX_COMPILATION_CACHE_DIR", backend.COMPILATION_CACHE_ENV,
                            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
  environ.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), JAX_PLATFORMS="cpu")
  environ.update(env)
  return subprocess.Popen([sys.executable, "-c", _COMPILE_ONCE], env=environ,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _compiled_once(process):
  """What a `_start_compile_once` process printed (the cache folder it enabled), once done."""
  stdout, stderr = process.communicate(timeout=120)
  assert process.returncode == 0, stderr
  return stdout.strip()


def _entries(folder):
  """The compiled programs kept in `folder` (JAX names each `<program>-<key>-cache`)."""
  return sorted(p.name for p in folder.glob("*-cache")) if folder.is_dir() else []


def test_compiled_programs_are_kept_where_the_environment_says(tmp_path):
  default = tmp_path / "xdg" / "distill" / "xla"
  own = tmp_path / "own"
  blocker = tmp_path / "file"
  blocker.write_text("")
  # The four processes run side by side; each one's folders are its own.
  default_run = _start_compile_once(tmp_path)
  # A cache the user set for JAX wins, with JAX's settings ('off' keeps nothing anywhere).
  own_run = _start_compile_once(tmp_path / "2", JAX_COMPILATION_CACHE_DIR=str(own),
                                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  off_run = _start_compile_once(tmp_path / "3", DISTILL_COMPILATION_CACHE="off")
  # A folder that cannot be made turns the cache off instead of warning at every compile.
  blocked_run = _start_compile_once(tmp_path / "4", DISTILL_COMPILATION_CACHE=str(blocker / "x"))
  assert _compiled_once(default_run) == str(default)
  assert _entries(default), "the default folder holds the compiled program"
  assert _compiled_once(own_run) == str(own)
  assert _entries(own) and not _entries(tmp_path / "2" / "xdg" / "distill" / "xla")
  assert _compiled_once(off_run) == "None"
  assert not (tmp_path / "3" / "xdg").exists()
  assert _compiled_once(blocked_run) == "None"


def test_every_command_but_bench_enables_the_cache(monkeypatch, tmp_path):
  calls = []
  monkeypatch.setattr(backend, "enable_compilation_cache", lambda: calls.append(1))
  run_cli("compare", tmp_path)
  assert calls == [1]
  result = run_cli("bench", "--recipe", "digits", *TINY_FLAGS, "--steps", 10, "--bare-steps",
                   10, "--json", "-q")
  assert result.exit_code == 0, result.output
  assert calls == [1], "bench times compilation: it must not load compiled programs"
