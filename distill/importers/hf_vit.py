"""timm and Hugging Face transformers ViTs, as teachers or as starting points to fine-tune.

A folder holding config.json + model.safetensors in either layout:

  timm (`save_for_hf`)    config.json has `architecture` and `pretrained_cfg`
  transformers            config.json has `model_type: "vit"` (ViTForImageClassification);
                          the mean / std come from preprocessor_config.json when present

The weights are mapped onto distill's own `ViT` (distill/models/vit.py), so the
imported model is an ordinary NNX module: it can teach online inside the
student's jitted step, or be fine-tuned. Only plain ViTs map exactly (class
token pooling, learned positions, pre-norm blocks, GELU MLP); anything else is
refused with the reason rather than imported with silently different outputs.

The model's preprocessing runs inside `ImportedViT.__call__`: an affine map to
pixel values, bilinear resize to the model's input size, grey -> RGB, its
rescale and mean / std. torch is never needed: tensors are read with the
`safetensors` package.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from distill.errors import UserError, first_few, one_line
from distill.importers import ForeignTeacher
from distill.models import count_params
from distill.models.vit import ViT

# model_args a timm checkpoint may carry, with the values distill's ViT reproduces
# (None: any value). Anything else changes the computation in ways not mapped here.
_TIMM_ARGS: dict[str, tuple | None] = {
    "img_size": None, "patch_size": None, "in_chans": None, "num_classes": None,
    "embed_dim": None, "depth": None, "num_heads": None, "mlp_ratio": None, "qkv_bias": None,
    "weight_init": None, "dynamic_img_size": None,
    "global_pool": ("token",), "class_token": (True,), "reg_tokens": (0, None),
    "no_embed_class": (False,), "pre_norm": (False,), "fc_norm": (None, False),
    "qk_norm": (False,), "init_values": (None,), "dynamic_img_pad": (False,),
    "act_layer": (None, "gelu"), "norm_layer": (None, "layernorm"), "pos_embed": ("learn",),
    "proj_bias": (True,), "final_norm": (True,), "class_token_pos": (0,),
}
# Heads of timm's named sizes, for configs whose model_args do not say.
# (heads, width) of timm's named sizes: a config without model_args.num_heads has the heads
# its name gives, when its width is the name's too (else the model was built otherwise).
_TIMM_HEADS = {"vit_tiny_": (3, 192), "vit_small_": (6, 384), "vit_medium_": (8, 512),
               "vit_base_": (12, 768), "vit_large_": (16, 1024), "vit_huge_": (16, 1280),
               "deit_tiny_": (3, 192), "deit_small_": (6, 384), "deit_base_": (12, 768)}
# Tensor names that give away a variant this importer does not map.
_VARIANT_HINTS = (
    ("reg_token", "register tokens"), ("dist_token", "a distillation token"),
    ("head_dist", "a distillation head"), (".ls1.", "layer scale"), (".ls2.", "layer scale"),
    ("lambda_", "layer scale"), ("q_norm", "qk-norm"), ("k_norm", "qk-norm"),
    ("norm_pre", "a pre-norm"), ("fc_norm", "fc_norm (average pooling)"),
    ("attn_pool", "attention pooling"), ("patch_embed.backbone", "a hybrid CNN stem"),
    ("patch_embed.norm", "a patch-embedding norm"), ("mask_token", "a mask token"),
)
# HF activations: exact (erf) GELU, or its tanh approximation (nnx.gelu's default).
_HF_GELU = {"gelu": True, "gelu_new": False, "gelu_pytorch_tanh": False}


@dataclasses.dataclass(frozen=True)
class VitSpec:
  """What a checkpoint folder holds, in distill's terms.

  Attributes:
    kind: 'timm-vit' or 'hf-vit'.
    architecture: timm's architecture name or transformers' class name.
    num_classes: classes the checkpoint's head predicts.
    class_names: its label names, or None.
    input_size: (height, width, channels) the model takes.
    patch, width, depth, heads, mlp_width: the encoder's sizes.
    norm_eps: LayerNorm epsilon.
    exact_gelu: erf GELU (else the tanh approximation).
    qkv_bias: whether q, k, v have biases (zeros are loaded when not).
    mean, std, rescale: the model's normalisation, (pixels * rescale - mean) / std.
    interpolation: the resize the source recommends (distill always resizes bilinearly).
  """

  kind: str
  architecture: str
  num_classes: int
  class_names: list[str] | None
  input_size: tuple[int, int, int]
  patch: int
  width: int
  depth: int
  heads: int
  mlp_width: int
  norm_eps: float
  exact_gelu: bool
  qkv_bias: bool
  mean: tuple[float, ...]
  std: tuple[float, ...]
  rescale: float
  interpolation: str | None = None


class ImportedViT(nnx.Module):
  """An imported ViT with its own preprocessing in front.

  Input: images [B, H, W, C] (any size; C = 1 or the model's channels).
  `pixels = x * input_scale + input_shift` (per channel; scale 1, shift 0 when
  x already is pixel values in [0, 255]), then bilinear resize to the model's
  input size, grey -> RGB, `(pixels * rescale - mean) / std`, then the ViT.
  """

  def __init__(self, spec: VitSpec, *, num_classes: int, input_scale: Any = 1.0,
               input_shift: Any = 0.0, dtype=None, rngs: nnx.Rngs):
    self.input_size = tuple(spec.input_size)
    # Plain tuples of floats: constants of the graph, never trained or checkpointed.
    self.input_scale = _floats(input_scale, "input_scale")
    self.input_shift = _floats(input_shift, "input_shift")
    self.rescale = float(spec.rescale)
    self.mean = tuple(float(v) for v in spec.mean)
    self.std = tuple(float(v) for v in spec.std)
    self.vit = ViT(num_classes=num_classes, image_shape=self.input_size, patch=spec.patch,
                   width=spec.width, depth=spec.depth, heads=spec.heads,
                   mlp_ratio=spec.mlp_width // spec.width, norm_eps=spec.norm_eps,
                   exact_gelu=spec.exact_gelu, dtype=dtype, rngs=rngs)

  def preprocess(self, images_BxHxWxC: jax.Array) -> jax.Array:
    """Images as the data set feeds them -> the ViT's normalised input [B, h, w, c]."""
    x = jnp.asarray(images_BxHxWxC, jnp.float32)
    channels = x.shape[-1]
    for name, values in (("input_scale", self.input_scale), ("input_shift", self.input_shift)):
      if len(values) not in (1, channels):
        raise UserError(f"{name} has {len(values)} values but the images have {channels} "
                        "channels")
    x = x * jnp.asarray(self.input_scale) + jnp.asarray(self.input_shift)
    height, width, want = self.input_size
    if x.shape[1:3] != (height, width):
      # Half-pixel centres, no antialiasing: torch's F.interpolate(mode='bilinear',
      # align_corners=False), the resize the parity fixtures are made with.
      x = jax.image.resize(x, (x.shape[0], height, width, channels), method="bilinear",
                           antialias=False)
    if channels != want:
      if channels != 1:
        takes = f"{want} (or grey ones, repeated)" if want > 1 else f"{want} (grey)"
        raise UserError(f"the images have {channels} channels but the imported ViT takes "
                        f"{takes}: import it with a data set of such images")
      x = jnp.repeat(x, want, axis=-1)
    return (x * self.rescale - jnp.asarray(self.mean)) / jnp.asarray(self.std)

  def __call__(self, images_BxHxWxC: jax.Array) -> jax.Array:
    return self.vit(self.preprocess(images_BxHxWxC))

  def forward_features(self, images_BxHxWxC: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    """(logits, the tokens after each block): a fine-tuned import can give hints too."""
    return self.vit.forward_features(self.preprocess(images_BxHxWxC))


def open_vit(folder: str | Path) -> ForeignTeacher:
  """Reads a timm or transformers ViT folder as a teacher taking pixels in [0, 255], NHWC."""
  model, spec, _ = _build(folder, num_classes=None, input_scale=1.0, input_shift=0.0, seed=0)
  graphdef, params = nnx.split(model, nnx.Param)

  def apply(params, pixels):
    return nnx.merge(graphdef, params)(pixels)

  return ForeignTeacher(kind=spec.kind, source=str(folder), num_classes=spec.num_classes,
                        class_names=spec.class_names, apply=apply, params=params,
                        num_params=count_params(model), can_teach_online=True,
                        details=vit_details(spec))


def build_vit(folder: str | Path, *, num_classes: int | None = None, input_scale: Any = 1.0,
              input_shift: Any = 0.0, seed: int = 0) -> tuple[ImportedViT, dict[str, Any]]:
  """An `ImportedViT` with the checkpoint's weights, to fine-tune (`--init-from`).

  With `num_classes` unset or equal to the checkpoint's, every weight is
  loaded. Otherwise the head is new and starts at zero (uniform predictions,
  step-0 loss log(C)); the encoder is loaded. `input_scale` / `input_shift`
  (scalars or per channel) map the inputs the training loop feeds to pixel
  values: for images standardised by the data set's mean / std, scale = 255 * std
  and shift = 255 * mean. `seed` seeds whatever is initialised rather than loaded.

  Returns the model and an info dict: kind, source, num_classes,
  checkpoint_classes, new_head, class_names (None for a new head), details.
  """
  if num_classes is not None and (isinstance(num_classes, bool) or
                                  not isinstance(num_classes, int) or num_classes < 1):
    raise UserError(f"num_classes must be a positive integer, got {num_classes!r}")
  model, spec, new_head = _build(folder, num_classes=num_classes, input_scale=input_scale,
                                 input_shift=input_shift, seed=seed)
  info = {"kind": spec.kind, "source": str(folder),
          "num_classes": num_classes or spec.num_classes,
          "checkpoint_classes": spec.num_classes, "new_head": new_head,
          "class_names": None if new_head else spec.class_names,
          "details": vit_details(spec)}
  return model, info


def check_init_from(folder: str | Path) -> None:
  """Refuses, in one line, an --init-from that cannot be fine-tuned: missing, or not a ViT folder.

  Only a ViT folder is rebuilt as a model distill trains; a Keras model, a
  .npz of logits or a function teaches only as an import.
  """
  path = Path(folder)
  if not path.exists():
    raise UserError(f"--init-from {folder} not found (it takes a timm or transformers ViT "
                    "folder: config.json and model.safetensors)")
  if path.is_dir():
    if not (path / "config.json").is_file() and (path / "summary.json").is_file():
      raise UserError(f"--init-from {folder} is a distill run, not a ViT folder; a teacher "
                      f"run teaches as it is: `distill student --teacher {folder}`")
    return
  if path.suffix not in (".keras", ".npz"):
    raise UserError(f"--init-from {folder} is a file, not a folder; it takes a timm or "
                    "transformers ViT folder (config.json and model.safetensors)")
  what = "a Keras model" if path.suffix == ".keras" else "a .npz file of logits"
  raise UserError(f"--init-from {folder} is {what}: only a timm or transformers ViT folder can "
                  f"be fine-tuned, and {what} is import-only: `distill import-teacher {folder}`")


def read_spec(folder: str | Path) -> VitSpec:
  """Recognises the folder's layout and checks its tensors; raises UserError if it can't import."""
  return _read(folder)[0]


def vit_details(spec: VitSpec) -> dict[str, Any]:
  """What summary.json records about an imported ViT."""
  return {"format": "timm" if spec.kind == "timm-vit" else "transformers",
          "architecture": spec.architecture, "input_size": list(spec.input_size),
          "mean": list(spec.mean), "std": list(spec.std), "rescale": spec.rescale,
          "patch": spec.patch, "width": spec.width, "depth": spec.depth, "heads": spec.heads,
          "mlp_width": spec.mlp_width, "norm_eps": spec.norm_eps,
          "gelu": "exact" if spec.exact_gelu else "tanh", "resize": "bilinear",
          "source_interpolation": spec.interpolation}


# -- reading ---------------------------------------------------------------------------------


def _build(folder, *, num_classes, input_scale, input_shift, seed):
  spec, tensors = _read(folder)
  new_head = num_classes is not None and num_classes != spec.num_classes
  classes = num_classes or spec.num_classes
  # Shapes only: every parameter is then set from the checkpoint (or zeros), so
  # drawing random ones first would be wasted work on a large ViT.
  model = nnx.eval_shape(lambda: ImportedViT(spec, num_classes=classes, input_scale=input_scale,
                                             input_shift=input_shift, rngs=nnx.Rngs(seed)))
  _load(model.vit, spec, tensors, load_head=not new_head)
  return model, spec, new_head


def _read(folder) -> tuple[VitSpec, dict[str, np.ndarray]]:
  path = Path(folder)
  if not path.exists():
    raise UserError(f"{folder} does not exist (a ViT to import is a folder with config.json "
                    "and model.safetensors)")
  if not path.is_dir():
    raise UserError(f"{folder} is not a folder (a ViT to import is a folder with config.json "
                    "and model.safetensors)")
  config_file, weights_file = path / "config.json", path / "model.safetensors"
  if not config_file.is_file():
    raise UserError(f"{folder} has no config.json (a ViT to import is a folder with config.json "
                    "and model.safetensors, as timm's save_for_hf or transformers' "
                    "save_pretrained write it)")
  config = _read_json(config_file)
  if "architecture" in config and "pretrained_cfg" in config:
    kind = "timm-vit"
  elif config.get("model_type") == "vit":
    kind = "hf-vit"
  elif "model_type" in config:
    raise UserError(f"{config_file} describes a '{config['model_type']}' model, not a ViT "
                    "(distill imports transformers models with model_type 'vit')")
  else:
    raise UserError(f"{config_file} is neither a timm config (architecture + pretrained_cfg) "
                    "nor a transformers ViT config (model_type 'vit')")
  if not weights_file.is_file():
    hint = (" (pytorch_model.bin is not read: save with safetensors)"
            if (path / "pytorch_model.bin").exists() else "")
    raise UserError(f"{folder} has no model.safetensors{hint}")
  tensors = _read_tensors(weights_file)
  try:
    if kind == "timm-vit":
      spec, names = _timm_spec(path, config, tensors)
    else:
      spec, names = _hf_spec(path, config, tensors)
  except (TypeError, ValueError, AttributeError, IndexError) as e:
    # A hand-edited config with a list where a number belongs, say.
    raise UserError(f"{config_file} is malformed: {one_line(e)}") from None
  _check_tensors(weights_file, spec, names, tensors)
  return spec, {role: tensors[name] for role, name in names.items() if name in tensors}


def _read_json(file: Path) -> dict[str, Any]:
  try:
    data = json.loads(file.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserError(f"cannot read {file}: {one_line(e)}") from None
  if not isinstance(data, dict):
    raise UserError(f"{file} is not a JSON object")
  return data


def _read_tensors(file: Path) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file  # noqa: PLC0415

  try:
    tensors = load_file(file)
  except KeyError:
    # safetensors' numpy reader has no bfloat16; its flax reader has (via jax).
    from safetensors.flax import load_file as load_jax  # noqa: PLC0415

    try:
      tensors = load_jax(file)
    except Exception as e:
      raise UserError(f"cannot read {file}: {one_line(e)}") from None
  except Exception as e:
    raise UserError(f"cannot read {file}: {one_line(e)}") from None
  return {name: np.asarray(value, np.float32) for name, value in tensors.items()}


def _timm_spec(folder: Path, config: dict, tensors: dict) -> tuple[VitSpec, dict[str, str]]:
  arch = str(config.get("architecture", ""))
  base = arch.split(".")[0]
  where = f"{folder / 'config.json'}"
  if not base.startswith(("vit_", "deit_")):
    raise UserError(f"{where}: timm architecture '{arch}' is not a plain VisionTransformer "
                    "(distill imports vit_* and deit_* models)")
  if "distilled" in base:
    raise UserError(f"{where}: '{arch}' has a distillation token and two heads; distill "
                    "imports single-head ViTs only")
  if "quickgelu" in base:
    raise UserError(f"{where}: '{arch}' uses QuickGELU, which distill's ViT does not compute")
  args = config.get("model_args") or {}
  if not isinstance(args, dict):
    raise UserError(f"{where}: model_args is not a JSON object")
  for key, value in args.items():
    accepted = _TIMM_ARGS.get(key, ())
    if key.endswith("drop_rate") or accepted is None:
      continue
    if value not in accepted:
      raise UserError(f"{where}: model_args {key}={json.dumps(value)} is not supported "
                      "(distill imports plain ViTs: class-token pooling, learned positions, "
                      "no registers, layer scale or qk-norm)")
  pool = config.get("global_pool", args.get("global_pool", "token"))
  if pool != "token":
    raise UserError(f"{where}: global_pool '{pool}' is not supported (distill's ViT classifies "
                    "from the class token, global_pool 'token')")
  pcfg = config.get("pretrained_cfg")
  if not isinstance(pcfg, dict):
    raise UserError(f"{where}: pretrained_cfg is not a JSON object")

  patch_w = tensors.get("patch_embed.proj.weight")
  patch_shape = patch_w.shape if patch_w is not None and patch_w.ndim == 4 else None
  patch = args.get("patch_size") or (patch_shape[-1] if patch_shape else None) or _name_int(
      r"patch(\d+)", base)
  width = args.get("embed_dim") or (patch_shape[0] if patch_shape else None)
  channels = args.get("in_chans") or (pcfg.get("input_size") or [None])[0] or (
      patch_shape[1] if patch_shape else 3)
  blocks = {int(m.group(1)) for name in tensors if (m := re.match(r"blocks\.(\d+)\.", name))}
  depth = args.get("depth") or (max(blocks) + 1 if blocks else None)
  if not patch or not width or not depth:
    raise UserError(f"{folder / 'model.safetensors'} lacks tensors: patch_embed.proj.weight "
                    "or blocks.* (cannot tell the ViT's sizes)")
  height, width_px = _timm_image_size(where, args, pcfg, base)
  heads = args.get("num_heads")
  if not heads:
    named_heads, named_width = next((sizes for prefix, sizes in _TIMM_HEADS.items()
                                     if base.startswith(prefix)), (None, None))
    if named_width != width:  # a model built at another width: its heads are anyone's guess
      known = f", and its width {width} is not that name's {named_width}" if named_width else ""
      raise UserError(f"{where}: cannot tell the number of attention heads of '{arch}' (no "
                      f"model_args.num_heads{known}); add model_args.num_heads")
    heads = named_heads
  fc1 = tensors.get("blocks.0.mlp.fc1.weight")
  if "mlp_ratio" in args:
    mlp_width = int(round(args["mlp_ratio"] * width))
  else:
    mlp_width = fc1.shape[0] if fc1 is not None and fc1.ndim == 2 else 4 * width
  num_classes = config.get("num_classes", args.get("num_classes"))
  if num_classes is None:
    head = tensors.get("head.weight")
    num_classes = head.shape[0] if head is not None else 0
  if not num_classes:
    raise UserError(f"{where}: the model has no classifier head (num_classes 0)")
  mean, std = pcfg.get("mean"), pcfg.get("std")
  if mean is None or std is None:
    raise UserError(f"{where}: pretrained_cfg has no mean / std (the model's normalisation)")
  names = config.get("label_names", pcfg.get("label_names"))
  spec = VitSpec(
      kind="timm-vit", architecture=arch, num_classes=int(num_classes),
      class_names=_label_list(names, int(num_classes)),
      input_size=(int(height), int(width_px), int(channels)), patch=int(patch),
      width=int(width), depth=int(depth), heads=int(heads), mlp_width=int(mlp_width),
      norm_eps=1e-6, exact_gelu=True, qkv_bias=bool(args.get("qkv_bias", True)),
      mean=_channel_floats(where, "mean", mean, channels),
      std=_channel_floats(where, "std", std, channels), rescale=1 / 255,
      interpolation=pcfg.get("interpolation"))
  _check_sizes(where, spec)

  roles = {"cls": "cls_token", "pos": "pos_embed", "patch_w": "patch_embed.proj.weight",
           "patch_b": "patch_embed.proj.bias", "norm_w": "norm.weight", "norm_b": "norm.bias",
           "head_w": "head.weight", "head_b": "head.bias"}
  for i in range(spec.depth):
    b = f"blocks.{i}."
    roles.update({
        f"{i}.ln1_w": b + "norm1.weight", f"{i}.ln1_b": b + "norm1.bias",
        f"{i}.qkv_w": b + "attn.qkv.weight", f"{i}.o_w": b + "attn.proj.weight",
        f"{i}.o_b": b + "attn.proj.bias", f"{i}.ln2_w": b + "norm2.weight",
        f"{i}.ln2_b": b + "norm2.bias", f"{i}.fc1_w": b + "mlp.fc1.weight",
        f"{i}.fc1_b": b + "mlp.fc1.bias", f"{i}.fc2_w": b + "mlp.fc2.weight",
        f"{i}.fc2_b": b + "mlp.fc2.bias"})
    if spec.qkv_bias:
      roles[f"{i}.qkv_b"] = b + "attn.qkv.bias"
  return spec, roles


def _timm_image_size(where: str, args: dict, pcfg: dict, base: str) -> tuple[int, int]:
  size = args.get("img_size")
  input_size = pcfg.get("input_size")
  if size is None and isinstance(input_size, list | tuple) and len(input_size) == 3:
    size = list(input_size[1:])
  if size is None:
    size = _name_int(r"_(\d+)$", base)
  if size is None:
    raise UserError(f"{where}: cannot tell the input size (no model_args.img_size or "
                    "pretrained_cfg.input_size)")
  if isinstance(size, int):
    return size, size
  if len(size) != 2:
    raise UserError(f"{where}: input size {size} is not [height, width]")
  return int(size[0]), int(size[1])


def _hf_spec(folder: Path, config: dict, tensors: dict) -> tuple[VitSpec, dict[str, str]]:
  where = f"{folder / 'config.json'}"
  arches = config.get("architectures") or ["ViTForImageClassification"]
  if "ViTForImageClassification" not in arches:
    raise UserError(f"{where}: architecture {', '.join(map(str, arches))} is not "
                    "ViTForImageClassification (distill imports ViT image classifiers)")
  act = config.get("hidden_act", "gelu")
  if act not in _HF_GELU:
    raise UserError(f"{where}: hidden_act '{act}' is not supported (gelu, gelu_new or "
                    "gelu_pytorch_tanh)")
  size, patch = config.get("image_size", 224), config.get("patch_size", 16)
  height, width_px = (size, size) if isinstance(size, int) else tuple(size)
  if not isinstance(patch, int):
    if len(set(patch)) != 1:
      raise UserError(f"{where}: non-square patch_size {patch} is not supported")
    patch = patch[0]
  channels = config.get("num_channels", 3)
  id2label = config.get("id2label") or {}
  num_classes = len(id2label) or config.get("num_labels", 2)
  labels = {int(k): str(v) for k, v in id2label.items()} if id2label else {}
  mean, std, rescale = [0.5] * channels, [0.5] * channels, 1 / 255
  processor_file = folder / "preprocessor_config.json"
  interpolation = None
  if processor_file.is_file():
    processor = _read_json(processor_file)
    if processor.get("do_normalize", True):
      mean = processor.get("image_mean", mean)
      std = processor.get("image_std", std)
    else:
      mean, std = [0.0] * channels, [1.0] * channels
    rescale = processor.get("rescale_factor", rescale) if processor.get("do_rescale",
                                                                        True) else 1.0
    interpolation = {0: "nearest", 2: "bilinear", 3: "bicubic"}.get(processor.get("resample"))
  width = config.get("hidden_size", 768)
  spec = VitSpec(
      kind="hf-vit", architecture="ViTForImageClassification", num_classes=int(num_classes),
      class_names=_label_list([labels.get(i) for i in range(num_classes)], num_classes)
      if labels else None,
      input_size=(int(height), int(width_px), int(channels)), patch=int(patch),
      width=int(width), depth=int(config.get("num_hidden_layers", 12)),
      heads=int(config.get("num_attention_heads", 12)),
      mlp_width=int(config.get("intermediate_size", 4 * width)),
      norm_eps=float(config.get("layer_norm_eps", 1e-12)), exact_gelu=_HF_GELU[act],
      qkv_bias=bool(config.get("qkv_bias", True)),
      mean=_channel_floats(where, "image_mean", mean, channels),
      std=_channel_floats(where, "image_std", std, channels), rescale=float(rescale),
      interpolation=interpolation)
  _check_sizes(where, spec)
  if spec.class_names and all(n == f"LABEL_{i}" for i, n in enumerate(spec.class_names)):
    # transformers' placeholder names, not the data's.
    spec = dataclasses.replace(spec, class_names=None)

  e = "vit.embeddings."
  roles = {"cls": e + "cls_token", "pos": e + "position_embeddings",
           "patch_w": e + "patch_embeddings.projection.weight",
           "patch_b": e + "patch_embeddings.projection.bias", "norm_w": "vit.layernorm.weight",
           "norm_b": "vit.layernorm.bias", "head_w": "classifier.weight",
           "head_b": "classifier.bias"}
  for i in range(spec.depth):
    b = f"vit.encoder.layer.{i}."
    roles.update({
        f"{i}.ln1_w": b + "layernorm_before.weight", f"{i}.ln1_b": b + "layernorm_before.bias",
        f"{i}.q_w": b + "attention.attention.query.weight",
        f"{i}.k_w": b + "attention.attention.key.weight",
        f"{i}.v_w": b + "attention.attention.value.weight",
        f"{i}.o_w": b + "attention.output.dense.weight",
        f"{i}.o_b": b + "attention.output.dense.bias",
        f"{i}.ln2_w": b + "layernorm_after.weight", f"{i}.ln2_b": b + "layernorm_after.bias",
        f"{i}.fc1_w": b + "intermediate.dense.weight", f"{i}.fc1_b": b + "intermediate.dense.bias",
        f"{i}.fc2_w": b + "output.dense.weight", f"{i}.fc2_b": b + "output.dense.bias"})
    if spec.qkv_bias:
      roles.update({f"{i}.q_b": b + "attention.attention.query.bias",
                    f"{i}.k_b": b + "attention.attention.key.bias",
                    f"{i}.v_b": b + "attention.attention.value.bias"})
  return spec, roles


def _check_sizes(where: str, spec: VitSpec) -> None:
  height, width_px, _ = spec.input_size
  if height % spec.patch or width_px % spec.patch:
    raise UserError(f"{where}: patch {spec.patch} does not divide the input size "
                    f"{height}x{width_px}")
  if spec.width % spec.heads:
    raise UserError(f"{where}: width {spec.width} is not divisible by {spec.heads} heads")
  if spec.mlp_width % spec.width:
    raise UserError(f"{where}: MLP width {spec.mlp_width} is not a whole multiple of the width "
                    f"{spec.width}, which distill's ViT needs")


def _expected_shapes(spec: VitSpec) -> dict[str, tuple[int, ...]]:
  """Each tensor role's shape in torch's layout."""
  d, m, k, p = spec.width, spec.mlp_width, spec.num_classes, spec.patch
  height, width_px, channels = spec.input_size
  tokens = (height // p) * (width_px // p) + 1
  shapes = {"cls": (1, 1, d), "pos": (1, tokens, d), "patch_w": (d, channels, p, p),
            "patch_b": (d,), "norm_w": (d,), "norm_b": (d,), "head_w": (k, d), "head_b": (k,)}
  for i in range(spec.depth):
    shapes.update({f"{i}.{r}": (d,) for r in ("ln1_w", "ln1_b", "ln2_w", "ln2_b", "o_b",
                                                "fc2_b", "q_b", "k_b", "v_b")})
    shapes.update({f"{i}.qkv_w": (3 * d, d), f"{i}.qkv_b": (3 * d,), f"{i}.o_w": (d, d),
                   f"{i}.q_w": (d, d), f"{i}.k_w": (d, d), f"{i}.v_w": (d, d),
                   f"{i}.fc1_w": (m, d), f"{i}.fc1_b": (m,), f"{i}.fc2_w": (d, m)})
  return shapes


def _check_tensors(file: Path, spec: VitSpec, roles: dict[str, str], tensors: dict) -> None:
  missing = [name for name in roles.values() if name not in tensors]
  if missing:
    raise UserError(f"{file} lacks tensors: {first_few(missing, 4)}")
  expected = _expected_shapes(spec)
  for role, name in roles.items():
    if tuple(tensors[name].shape) != expected[role]:
      raise UserError(f"{file}: tensor {name} has shape {list(tensors[name].shape)}, expected "
                      f"{list(expected[role])} for this config")
  used = set(roles.values())
  # transformers' ViTModel pooler: kept in some checkpoints, unused by the classifier.
  extra = sorted(n for n in tensors if n not in used and not n.startswith("vit.pooler."))
  if extra:
    features = sorted({what for marker, what in _VARIANT_HINTS
                       if any(marker in name for name in extra)})
    kind = f"a ViT variant with {', '.join(features)}" if features else "tensors a plain ViT lacks"
    raise UserError(f"{file} holds {kind}, which distill does not import: "
                    f"{first_few(extra, 4)}")


# -- mapping ---------------------------------------------------------------------------------


def _load(vit: ViT, spec: VitSpec, tensors: dict[str, np.ndarray], *, load_head: bool) -> None:
  """Sets every parameter of (abstract) `vit` from torch-layout `tensors`."""
  d, heads = spec.width, spec.heads
  head_dim = d // heads

  def put(variable: nnx.Variable, value: np.ndarray) -> None:
    shape = tuple(variable.get_value().shape)
    if shape != value.shape:  # a mapping bug, not a user mistake
      raise AssertionError(f"import maps {value.shape} onto {shape}")
    variable.set_value(jnp.asarray(value, jnp.float32))

  def linear(layer: nnx.Linear, weight: np.ndarray, bias: np.ndarray) -> None:
    put(layer.kernel, weight.T)  # torch Linear: [out, in]
    put(layer.bias, bias)

  def norm(layer: nnx.LayerNorm, weight: np.ndarray, bias: np.ndarray) -> None:
    put(layer.scale, weight)
    put(layer.bias, bias)

  t = tensors
  # Conv2d [D, C, p, p] -> distill's patches flattened as (row, column, channel).
  put(vit.patch_embed.kernel, t["patch_w"].transpose(2, 3, 1, 0).reshape(-1, d))
  put(vit.patch_embed.bias, t["patch_b"])
  put(vit.class_token, t["cls"])
  put(vit.positions, t["pos"])
  zeros = np.zeros(d, np.float32)
  for i, block in enumerate(vit.blocks):
    norm(block.attention_norm, t[f"{i}.ln1_w"], t[f"{i}.ln1_b"])
    if f"{i}.qkv_w" in t:  # timm fuses q, k, v as rows [3 * D, D]
      qkv_w = np.split(t[f"{i}.qkv_w"], 3)
      qkv_b = np.split(t[f"{i}.qkv_b"], 3) if f"{i}.qkv_b" in t else [zeros] * 3
    else:
      qkv_w = [t[f"{i}.{r}_w"] for r in "qkv"]
      qkv_b = [t.get(f"{i}.{r}_b", zeros) for r in "qkv"]
    attention = block.attention
    # torch's output features are head-major (h * head_dim + j): [D, H, head_dim] kernels.
    for layer, weight, bias in zip((attention.query, attention.key, attention.value), qkv_w,
                                   qkv_b, strict=True):
      put(layer.kernel, weight.T.reshape(d, heads, head_dim))
      put(layer.bias, bias.reshape(heads, head_dim))
    put(attention.out.kernel, t[f"{i}.o_w"].T.reshape(heads, head_dim, d))
    put(attention.out.bias, t[f"{i}.o_b"])
    norm(block.mlp_norm, t[f"{i}.ln2_w"], t[f"{i}.ln2_b"])
    linear(block.mlp_in, t[f"{i}.fc1_w"], t[f"{i}.fc1_b"])
    linear(block.mlp_out, t[f"{i}.fc2_w"], t[f"{i}.fc2_b"])
  norm(vit.final_norm, t["norm_w"], t["norm_b"])
  if load_head:
    linear(vit.head, t["head_w"], t["head_b"])
  else:
    # A new head starts at zero, like distill's own (heads.classifier_head): step-0 loss log(C).
    put(vit.head.kernel, np.zeros(vit.head.kernel.get_value().shape, np.float32))
    put(vit.head.bias, np.zeros(vit.head.bias.get_value().shape, np.float32))
  unset = [jax.tree_util.keystr(path) for path, leaf in
           jax.tree_util.tree_leaves_with_path(nnx.state(vit))
           if isinstance(leaf, jax.ShapeDtypeStruct)]
  if unset:  # distill's ViT gained a parameter the import does not set
    raise AssertionError(f"import leaves ViT parameters unset: {', '.join(unset)}")


# -- small helpers ---------------------------------------------------------------------------


def _floats(value: Any, name: str) -> tuple[float, ...]:
  values = value if isinstance(value, Sequence | np.ndarray) else [value]
  try:
    out = tuple(float(v) for v in np.asarray(values, np.float64).reshape(-1))
  except (TypeError, ValueError):
    raise UserError(f"{name} must be a number or one number per channel, got {value!r}") from None
  if not out or not all(math.isfinite(v) for v in out):
    raise UserError(f"{name} must be finite numbers, got {value!r}")
  return out


def _channel_floats(where: str, name: str, value: Any, channels: int) -> tuple[float, ...]:
  values = _floats(value, name)
  if len(values) == 1:
    values = values * channels
  if len(values) != channels:
    raise UserError(f"{where}: {name} has {len(values)} values for {channels} channels")
  return values


def _label_list(names: Any, num_classes: int) -> list[str] | None:
  """Label names as a list by class index; None when absent or not one per class."""
  if isinstance(names, dict):
    try:
      names = [names.get(str(i), names.get(i)) for i in range(num_classes)]
    except AttributeError:
      return None
  if not isinstance(names, list | tuple) or len(names) != num_classes or None in names:
    return None
  return [str(n) for n in names]


def _name_int(pattern: str, name: str) -> int | None:
  match = re.search(pattern, name)
  return int(match.group(1)) if match else None
