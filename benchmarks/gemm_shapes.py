"""The training step's matmul shapes alone: XLA:CPU (as distill compiles them) against PyTorch.

A dense layer's step runs two kinds of matmul: the forward pass and the input
gradient contract the feature axis ("NN": [rows, in] @ [in, out]), while the
weight gradient contracts the rows of the batch ("TN": [rows, in]ᵀ @ [rows,
out], a long contraction into a small output). This times both, and the weight
gradient as distill's dense layers compute it (`distill.models.dense.
kernel_gradient`), for the shapes of the seed CIFAR-10 ViT (4,352 token rows of
width 64 and 256) and the demo's MLP student (128 rows), best of 5 repeats:

    python benchmarks/gemm_shapes.py
    python benchmarks/gemm_shapes.py --shapes 4352x64x64 --repeats 2000

PyTorch's columns appear when torch is installed (2 threads, as the step's
reference in `benchmarks/torch_reference.py`).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

_DEFAULT_SHAPES = ("4352x64x64", "4352x64x256", "4352x256x64", "128x784x256", "128x256x10")


def _best_microseconds(function, operands, repeats: int) -> float:
  """The fastest of 5 timings of `repeats` calls of `function(*operands)`, per call."""
  warm_up = function(*operands)  # compiles a jitted function
  if hasattr(warm_up, "block_until_ready"):
    warm_up.block_until_ready()
  best = float("inf")
  for _ in range(5):
    start = time.perf_counter()
    for _ in range(repeats):
      result = function(*operands)
    if hasattr(result, "block_until_ready"):
      result.block_until_ready()
    best = min(best, (time.perf_counter() - start) / repeats)
  return best * 1e6


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shapes", nargs="+", default=list(_DEFAULT_SHAPES),
                      help="ROWSxINxOUT, e.g. 4352x64x64")
  parser.add_argument("--repeats", type=int, default=500)
  args = parser.parse_args()

  import jax  # noqa: PLC0415

  from distill import backend  # noqa: PLC0415

  try:
    import torch  # noqa: PLC0415

    torch.set_num_threads(2)
  except ImportError:
    torch = None
  from distill.models import dense  # noqa: PLC0415

  weight_gradient = backend.jit(lambda x, dy: x.T @ dy)  # TN: contracts the rows
  # The same sum as distill's dense layers compute it (a narrow output from a copied dyᵀ on CPU).
  distill_gradient = backend.jit(dense.kernel_gradient)
  forward = backend.jit(lambda x, w: x @ w)  # NN: contracts the features
  rng = np.random.default_rng(0)
  print(f"jax {jax.__version__} ({jax.default_backend()}), "
        f"torch {torch.__version__ if torch else 'not installed'}; µs per matmul, GFLOP/s")
  header = "| rows×in×out | XLA TN (weight grad) | distill's weight grad | XLA NN (forward) |"
  if torch:
    header += " torch TN | torch NN | XLA TN / torch TN | distill's / torch TN |"
  print(header)
  print("|" + "---|" * (header.count("|") - 1))
  for text in args.shapes:
    rows, width_in, width_out = (int(v) for v in text.split("x"))
    x = rng.standard_normal((rows, width_in), np.float32)
    dy = rng.standard_normal((rows, width_out), np.float32)
    w = rng.standard_normal((width_in, width_out), np.float32)
    flops = 2 * rows * width_in * width_out
    x_j, dy_j, w_j = (jax.device_put(a) for a in (x, dy, w))
    times = [_best_microseconds(weight_gradient, (x_j, dy_j), args.repeats),
             _best_microseconds(distill_gradient, (x_j, dy_j), args.repeats),
             _best_microseconds(forward, (x_j, w_j), args.repeats)]
    if torch:
      x_t, dy_t, w_t = (torch.from_numpy(a) for a in (x, dy, w))
      times += [_best_microseconds(lambda a, b: a.T @ b, (x_t, dy_t), args.repeats),
                _best_microseconds(lambda a, b: a @ b, (x_t, w_t), args.repeats)]
    cells = [f"{t:,.0f} ({flops / t / 1e3:,.0f})" for t in times]
    if torch:
      cells += [f"{times[0] / times[3]:.2f}", f"{times[1] / times[3]:.2f}"]
    print(f"| {text} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
