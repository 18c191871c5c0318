r"""The same training steps in PyTorch, as the reference `distill bench` is compared with.

Not part of the package: it needs `pip install torch==2.13.0` (CPU build). It mirrors
distill's teacher step: uint8 images gathered by random indices, standardised, augmented
(random crop with resize or pad-and-crop, horizontal flips), a pre-norm ViT, hard-label
cross-entropy, global-norm clipping and AdamW. `--model cnn --soft-targets` mirrors the
default student step instead: the CNN student (3x3 conv + GroupNorm + ReLU stages with 2x2
max-pools, a head on the flattened map), no augmentation, cross-entropy against a gathered row
of teacher probabilities. Prints one JSON line.

  python benchmarks/torch_reference.py --image-shape 32x32x3 --patch 8 --batch 256 \
    --crop resize --crop-size 24
  python benchmarks/torch_reference.py --image-shape 28x28x1 --stem cnn --stem-channels 32,64,128 \
    --patch 1 --width 128 --depth 4 --heads 4 --mlp-ratio 2 --batch 128 --crop pad --pad 2 --compile
  python benchmarks/torch_reference.py --image-shape 28x28x1 --model cnn --channels 32,64,96 \
    --batch 128 --crop none --no-flip --soft-targets --lr 2e-3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
  """Pre-norm transformer block, as distill.models.vit.EncoderBlock."""

  def __init__(self, width: int, heads: int, mlp_ratio: int):
    super().__init__()
    self.attention_norm = nn.LayerNorm(width, eps=1e-6)
    self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
    self.mlp_norm = nn.LayerNorm(width, eps=1e-6)
    self.mlp = nn.Sequential(nn.Linear(width, width * mlp_ratio), nn.GELU(approximate="tanh"),
                             nn.Linear(width * mlp_ratio, width))

  def forward(self, x):
    y = self.attention_norm(x)
    x = x + self.attention(y, y, y, need_weights=False)[0]
    return x + self.mlp(self.mlp_norm(x))


class ViT(nn.Module):
  """Patch embedding after an optional stem (a 3x3 conv, or conv stages as in distill's hybrid
  `stem='cnn'`), class token, positions, blocks, zero-init head."""

  def __init__(self, image_shape, num_classes, patch, width, depth, heads, mlp_ratio, stem,
               stem_channels=(32, 64), stem_blocks_per_stage=1):
    super().__init__()
    height, width_px, channels = image_shape
    self.patch = patch
    self.stem, self.cnn_stem = None, None
    if stem == "conv":
      self.stem = nn.Conv2d(channels, width // 2, 3, padding=1)
      channels = width // 2
    elif stem == "cnn":
      self.cnn_stem = conv_stages(channels, stem_channels, stem_blocks_per_stage)
      height, width_px = height >> len(stem_channels), width_px >> len(stem_channels)
      channels = stem_channels[-1]
    self.patch_embed = nn.Linear(patch * patch * channels, width)
    tokens = (height // patch) * (width_px // patch) + 1
    self.class_token = nn.Parameter(torch.zeros(1, 1, width))
    self.positions = nn.Parameter(torch.randn(1, tokens, width) * 0.02)
    self.blocks = nn.Sequential(*[Block(width, heads, mlp_ratio) for _ in range(depth)])
    self.final_norm = nn.LayerNorm(width, eps=1e-6)
    self.head = nn.Linear(width, num_classes)
    nn.init.zeros_(self.head.weight)
    nn.init.zeros_(self.head.bias)

  def forward(self, images_bchw):
    x = images_bchw
    if self.stem is not None:
      x = F.gelu(self.stem(x), approximate="tanh")
    if self.cnn_stem is not None:
      x = self.cnn_stem(x)
    b, c, h, w = x.shape
    p = self.patch
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(
        b, (h // p) * (w // p), p * p * c)
    tokens = torch.cat([self.class_token.expand(b, -1, -1), self.patch_embed(x)], dim=1)
    tokens = self.blocks(tokens + self.positions)
    return self.head(self.final_norm(tokens[:, 0]))


def conv_stages(in_channels, channels, blocks_per_stage):
  """distill.models.cnn.ConvStages: per stage, blocks of bias-free 3x3 conv + GroupNorm(min(8, C))
  + ReLU, then a 2x2 max-pool (flooring odd sizes, as distill's does)."""
  layers = []
  for out_channels in channels:
    for _ in range(blocks_per_stage):
      layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                 nn.GroupNorm(min(8, out_channels), out_channels), nn.ReLU()]
      in_channels = out_channels
    layers.append(nn.MaxPool2d(2))
  return nn.Sequential(*layers)


class CNN(nn.Module):
  """distill.models.cnn.CNN with pool='flatten': conv stages, then a zero-init head on the
  flattened map."""

  def __init__(self, image_shape, num_classes, channels, blocks_per_stage):
    super().__init__()
    height, width_px, in_channels = image_shape
    self.stages = conv_stages(in_channels, channels, blocks_per_stage)
    pooled = (height >> len(channels)) * (width_px >> len(channels))
    self.head = nn.Linear(pooled * channels[-1], num_classes)
    nn.init.zeros_(self.head.weight)
    nn.init.zeros_(self.head.bias)

  def forward(self, images_bchw):
    return self.head(self.stages(images_bchw).flatten(1))


def augment(x, crop, crop_size, pad, flip):
  """Batch-wide random crop-resize or pad-crop via one affine grid, plus flips."""
  b, _, h, w = x.shape
  theta = torch.zeros(b, 2, 3)
  scale = crop_size / h if crop == "resize" else 1.0
  theta[:, 0, 0] = scale
  theta[:, 1, 1] = scale
  if crop == "resize":
    theta[:, :, 2] = (torch.rand(b, 2) * 2 - 1) * (1 - scale)
  elif crop == "pad":
    shift = torch.randint(-pad, pad + 1, (b, 2)).float()
    theta[:, 0, 2] = shift[:, 0] * 2 / w
    theta[:, 1, 2] = shift[:, 1] * 2 / h
  if flip:
    theta[:, 0, 0] *= torch.where(torch.rand(b) < 0.5, -1.0, 1.0)
  if crop != "none" or flip:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear" if crop == "resize" else "nearest",
                      padding_mode="zeros", align_corners=False)
  return x


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--image-shape", default="32x32x3")
  parser.add_argument("--num-examples", type=int, default=50000)
  parser.add_argument("--classes", type=int, default=10)
  parser.add_argument("--model", default="vit", choices=["vit", "cnn"])
  parser.add_argument("--channels", default="32,64", help="cnn: channels per stage")
  parser.add_argument("--blocks-per-stage", type=int, default=1, help="cnn: conv blocks per stage")
  parser.add_argument("--soft-targets", action="store_true",
                      help="learn from a row of stored probabilities per image (a student)")
  parser.add_argument("--patch", type=int, default=8)
  parser.add_argument("--width", type=int, default=64)
  parser.add_argument("--depth", type=int, default=4)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--mlp-ratio", type=int, default=4)
  parser.add_argument("--stem", default="patch", choices=["patch", "conv", "cnn"])
  parser.add_argument("--stem-channels", default="32,64", help="vit --stem cnn: channels per stage")
  parser.add_argument("--stem-blocks-per-stage", type=int, default=1,
                      help="vit --stem cnn: conv blocks per stage")
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--warmup", type=int, default=5)
  parser.add_argument("--crop", default="resize", choices=["resize", "pad", "none"])
  parser.add_argument("--crop-size", type=int, default=24)
  parser.add_argument("--pad", type=int, default=4)
  parser.add_argument("--no-flip", action="store_true")
  parser.add_argument("--lr", type=float, default=1e-3)
  parser.add_argument("--weight-decay", type=float, default=1e-2)
  parser.add_argument("--compile", action="store_true", help="torch.compile the step")
  args = parser.parse_args()

  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count())
  shape = tuple(int(v) for v in args.image_shape.split("x"))
  images = torch.randint(
      0, 256, (args.num_examples, shape[2], shape[0], shape[1]), dtype=torch.uint8)
  labels = torch.randint(0, args.classes, (args.num_examples,))
  if args.soft_targets:  # what a student reads instead of labels: a stored row per image
    labels = torch.softmax(torch.randn(args.num_examples, args.classes), dim=1)
  mean = images[:1000].float().div(255).mean(dim=(0, 2, 3), keepdim=True)
  std = images[:1000].float().div(255).std(dim=(0, 2, 3), keepdim=True)
  if args.model == "cnn":
    model = CNN(shape, args.classes, [int(c) for c in args.channels.split(",")],
                args.blocks_per_stage)
  else:
    model = ViT(shape, args.classes, args.patch, args.width, args.depth, args.heads,
                args.mlp_ratio, args.stem, [int(c) for c in args.stem_channels.split(",")],
                args.stem_blocks_per_stage)
  optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)

  def step(indices):
    x = (images[indices].float().div(255) - mean) / std
    x = augment(x, args.crop, args.crop_size, args.pad, not args.no_flip)
    loss = F.cross_entropy(model(x), labels[indices])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss

  run = torch.compile(step) if args.compile else step
  start = time.perf_counter()
  for _ in range(args.warmup):
    run(torch.randint(0, args.num_examples, (args.batch,)))
  warmup_seconds = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(args.steps):
    loss = run(torch.randint(0, args.num_examples, (args.batch,)))
  float(loss.detach())
  seconds = time.perf_counter() - start
  print(json.dumps({
      "framework": "torch.compile" if args.compile else "torch eager",
      "model": args.model,
      "torch_version": torch.__version__,
      "threads": torch.get_num_threads(),
      "params": sum(p.numel() for p in model.parameters()),
      "image_shape": list(shape),
      "batch_size": args.batch,
      "steps": args.steps,
      "images_per_second": round(args.steps * args.batch / seconds, 1),
      "warmup_seconds": round(warmup_seconds, 2),
      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
  }))


if __name__ == "__main__":
  main()
