"""Imported timm / transformers ViTs: parity with torch on committed fixtures, and refusals.

The fixtures (tests/fixtures/vit_*) come from tests/fixtures/make_vit_fixtures.py, run
once with torch; these tests never need torch.
"""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import compiled_forward
from flax import nnx
from safetensors.numpy import load_file, save_file

from distill.errors import UserError
from distill.importers import open_teacher
from distill.importers.hf_vit import build_vit, open_vit

FIXTURES = Path(__file__).parent / "fixtures"
FASHION_MNIST = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"]
FORMATS = [("timm", "timm-vit"), ("hf", "hf-vit")]


def images() -> np.ndarray:
  """The fixtures' grey uint8 images as the float pixels a teacher takes."""
  return np.load(FIXTURES / "vit_images.npy").astype(np.float32)


def torch_logits(name: str) -> np.ndarray:
  """What torch computed for fixture `name` on `images()`."""
  return np.load(FIXTURES / f"vit_{name}_logits.npy")


def broken_copy(tmp_path: Path, name: str, *, config=None, tensors=None) -> Path:
  """A copy of fixture `name` whose config / tensors dicts the given functions edit in place."""
  folder = tmp_path / name
  shutil.copytree(FIXTURES / f"vit_{name}", folder)
  if config is not None:
    data = json.loads((folder / "config.json").read_text())
    config(data)
    (folder / "config.json").write_text(json.dumps(data))
  if tensors is not None:
    data = load_file(folder / "model.safetensors")
    tensors(data)
    save_file(data, folder / "model.safetensors")
  return folder


@pytest.mark.parametrize("name, kind", FORMATS)
def test_logits_match_torch(name, kind):
  teacher = open_teacher(FIXTURES / f"vit_{name}")
  logits = np.asarray(jax.jit(teacher.apply)(teacher.params, images()))
  np.testing.assert_allclose(logits, torch_logits(name), atol=1e-4, rtol=0)
  assert teacher.kind == kind and teacher.can_teach_online
  assert teacher.num_classes == 10 and teacher.class_names == FASHION_MNIST
  assert teacher.num_params == sum(x.size for x in jax.tree.leaves(teacher.params))
  details = teacher.details
  assert details["input_size"] == [32, 32, 3]
  assert (details["patch"], details["width"], details["depth"], details["heads"]) == (8, 48, 2, 3)
  assert details["gelu"] == "exact"


@pytest.mark.parametrize("name", ["timm", "hf"])
def test_affine_input_map_for_standardised_images(name):
  # The training loop feeds (pixels / 255 - mean) / std; scale and shift undo that.
  mean, std = 0.3, 0.2
  model, info = build_vit(FIXTURES / f"vit_{name}", input_scale=255 * std,
                          input_shift=255 * mean)
  assert not info["new_head"] and info["class_names"] == FASHION_MNIST
  logits = compiled_forward(model, (images() / 255 - mean) / std)
  np.testing.assert_allclose(logits, torch_logits(name), atol=1e-4, rtol=0)


def test_new_head_starts_at_zero_and_keeps_the_encoder():
  folder = FIXTURES / "vit_timm"
  model, info = build_vit(folder, num_classes=4)
  assert info["new_head"] and info["num_classes"] == 4 and info["checkpoint_classes"] == 10
  assert info["class_names"] is None
  logits = compiled_forward(model, images())
  assert logits.shape == (6, 4) and not logits.any()
  loaded, _ = build_vit(folder)
  for new, old in zip(jax.tree.leaves(nnx.state(model.vit.blocks)),
                      jax.tree.leaves(nnx.state(loaded.vit.blocks)), strict=True):
    np.testing.assert_array_equal(new, old)
  np.testing.assert_array_equal(model.vit.positions[...], loaded.vit.positions[...])


def test_class_names_absent(tmp_path):
  folder = broken_copy(tmp_path, "timm", config=lambda c: c.pop("label_names"))
  assert open_vit(folder).class_names is None


def _set(key, value):
  return lambda data: data.__setitem__(key, value)


def _set_arg(key, value):
  return lambda data: data["model_args"].__setitem__(key, value)


@pytest.mark.parametrize("name, config, message", [
    ("hf", _set("model_type", "bert"), "'bert' model, not a ViT"),
    ("timm", _set_arg("reg_tokens", 4), "reg_tokens=4"),
    ("timm", _set_arg("class_token", False), "class_token=false"),
    ("timm", _set_arg("init_values", 1e-5), "init_values"),
    ("timm", _set_arg("qk_norm", True), "qk_norm=true"),
    ("timm", _set("global_pool", "avg"), "global_pool 'avg'"),
    ("timm", _set("architecture", "deit_tiny_distilled_patch16_224"), "distillation token"),
    ("timm", _set("architecture", "eva02_tiny_patch14_224"), "not a plain VisionTransformer"),
    ("hf", _set("architectures", ["ViTForMaskedImageModeling"]), "ViTForMaskedImageModeling"),
    ("hf", _set("hidden_act", "relu"), "hidden_act 'relu'"),
    ("hf", _set("intermediate_size", 100), "MLP width 100"),
    # Built at width 48 under vit_tiny's name (192 wide, 3 heads): the heads were guessed as 3.
    ("timm", lambda data: data["model_args"].pop("num_heads"),
     r"cannot tell the number of attention heads of 'vit_tiny_patch16_224' \(no "
     r"model_args.num_heads, and its width 48 is not that name's 192\)"),
])
def test_unsupported_configs_are_refused(tmp_path, name, config, message):
  folder = broken_copy(tmp_path, name, config=config)
  with pytest.raises(UserError, match=message):
    open_vit(folder)


@pytest.mark.parametrize("name, tensors, message", [
    ("timm", lambda t: t.pop("blocks.1.attn.qkv.weight"),
     "lacks tensors: blocks.1.attn.qkv.weight"),
    ("hf", lambda t: t.pop("classifier.bias"), "lacks tensors: classifier.bias"),
    ("timm", lambda t: t.__setitem__("blocks.0.mlp.fc2.bias", np.zeros(40, np.float32)),
     r"blocks.0.mlp.fc2.bias has shape \[40\], expected \[48\]"),
    ("hf", lambda t: t.__setitem__("vit.embeddings.position_embeddings",
                                   np.zeros((1, 16, 48), np.float32)),
     r"position_embeddings has shape \[1, 16, 48\], expected \[1, 17, 48\]"),
    ("timm", lambda t: t.__setitem__("reg_token", np.zeros((1, 4, 48), np.float32)),
     "register tokens.*reg_token"),
    ("timm", lambda t: t.__setitem__("blocks.0.ls1.gamma", np.ones(48, np.float32)),
     "layer scale"),
    ("timm", lambda t: t.__setitem__("dist_token", np.zeros((1, 1, 48), np.float32)),
     "distillation token"),
])
def test_damaged_tensors_are_named(tmp_path, name, tensors, message):
  folder = broken_copy(tmp_path, name, tensors=tensors)
  with pytest.raises(UserError, match=message):
    open_vit(folder)


def test_missing_files_are_refused(tmp_path):
  with pytest.raises(UserError, match="no config.json"):
    open_teacher(tmp_path)
  shutil.copy(FIXTURES / "vit_hf" / "config.json", tmp_path / "config.json")
  with pytest.raises(UserError, match="no model.safetensors"):
    open_vit(tmp_path)
  (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
  with pytest.raises(UserError, match="cannot read"):
    open_vit(tmp_path)
  with pytest.raises(UserError, match="not a folder"):
    open_vit(tmp_path / "config.json")
  (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 48}))
  with pytest.raises(UserError, match="neither a timm config"):
    open_vit(tmp_path)


def test_bad_arguments_are_refused():
  folder = FIXTURES / "vit_hf"
  with pytest.raises(UserError, match="num_classes must be a positive integer"):
    build_vit(folder, num_classes=0)
  model, _ = build_vit(folder, input_scale=[1.0, 1.0])
  with pytest.raises(UserError, match="input_scale has 2 values but the images have 1"):
    model(images())
  with pytest.raises(UserError, match="images have 2 channels"):
    build_vit(folder)[0](np.zeros((1, 28, 28, 2), np.float32))


def test_malformed_config_is_one_line(tmp_path):
  folder = broken_copy(tmp_path, "hf", config=_set("image_size", [32, 32, 32]))
  with pytest.raises(UserError, match="config.json is malformed"):
    open_vit(folder)
