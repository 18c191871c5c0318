"""Image augmentation that runs inside the jitted training step.

Everything here is a pure function of (images, key), so a step's augmented
batch is reproducible from the seed and the step number alone: that is what
makes resumed runs bit-identical to uninterrupted ones.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def random_crop_resize(images_BxHxWxC: jax.Array, key: jax.Array, crop_size: int) -> jax.Array:
  """Crops a random crop_size×crop_size window per image and resizes it back to H×W."""
  batch, height, width, channels = images_BxHxWxC.shape
  crop_h, crop_w = min(crop_size, height), min(crop_size, width)
  key_y, key_x = jax.random.split(key)
  ys = jax.random.randint(key_y, (batch,), 0, height - crop_h + 1)
  xs = jax.random.randint(key_x, (batch,), 0, width - crop_w + 1)

  def crop_one(image, y, x):
    window = jax.lax.dynamic_slice(image, (y, x, 0), (crop_h, crop_w, channels))
    return jax.image.resize(window, (height, width, channels), method="bilinear")

  return jax.vmap(crop_one)(images_BxHxWxC, ys, xs)


def random_pad_crop(images_BxHxWxC: jax.Array, key: jax.Array, pad: int) -> jax.Array:
  """Zero-pads each side by `pad` and crops a random H×W window (the CIFAR classic)."""
  batch, height, width, channels = images_BxHxWxC.shape
  padded = jnp.pad(images_BxHxWxC, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  key_y, key_x = jax.random.split(key)
  ys = jax.random.randint(key_y, (batch,), 0, 2 * pad + 1)
  xs = jax.random.randint(key_x, (batch,), 0, 2 * pad + 1)

  def crop_one(image, y, x):
    return jax.lax.dynamic_slice(image, (y, x, 0), (height, width, channels))

  return jax.vmap(crop_one)(padded, ys, xs)


def random_flip(images_BxHxWxC: jax.Array, key: jax.Array) -> jax.Array:
  """Mirrors each image left-right with probability 1/2."""
  flip = jax.random.bernoulli(key, 0.5, (images_BxHxWxC.shape[0], 1, 1, 1))
  return jnp.where(flip, images_BxHxWxC[:, :, ::-1, :], images_BxHxWxC)


def augment(images_BxHxWxC: jax.Array, key: jax.Array, settings: dict[str, Any]) -> jax.Array:
  """Applies the recipe's `augment` settings to float images.

  Args:
    images_BxHxWxC: float images.
    key: a PRNG key; the same key gives the same augmented batch.
    settings: the recipe's `augment` table (crop: resize|pad|none, crop_size,
      pad, flip).
  """
  crop_key, flip_key = jax.random.split(key)
  crop = settings["crop"]
  if crop == "resize":
    images_BxHxWxC = random_crop_resize(images_BxHxWxC, crop_key, settings["crop_size"])
  elif crop == "pad":
    images_BxHxWxC = random_pad_crop(images_BxHxWxC, crop_key, settings["pad"])
  if settings["flip"]:
    images_BxHxWxC = random_flip(images_BxHxWxC, flip_key)
  return images_BxHxWxC


def describe(settings: dict[str, Any], image_shape: tuple[int, ...]) -> list[str]:
  """What the recipe's `augment` settings do to images of `image_shape` (H, W, C), in words a
  run prints before it trains: its augmentation line, then a note where a default made for
  32x32 images fits these badly (a crop keeping little of a large image, or none of a small
  one). A flip is named with how to turn it off: it silently ruins classes that a mirror
  tells apart (arrows, text), which a user's own data may have."""
  height, width = image_shape[:2]
  crop, crop_size = settings["crop"], settings["crop_size"]
  crop_h, crop_w = min(crop_size, height), min(crop_size, width)
  parts, notes = [], []
  if crop == "resize":
    parts.append(f"a random {crop_h}x{crop_w} crop resized to {height}x{width}")
    kept = crop_h * crop_w / (height * width)
    suggested = max(1, round(0.75 * min(height, width)))  # 24 of 32, as the recipes crop
    if crop_h == height and crop_w == width:
      notes.append(f"note: augment.crop_size {crop_size} is not below the {height}x{width} "
                   f"images, so the crop changes nothing: --set augment.crop_size={suggested}, "
                   "or augment.crop=pad")
    elif kept < 0.4:
      notes.append(f"note: augment.crop_size {crop_size} keeps {kept:.0%} of each "
                   f"{height}x{width} image before resizing it back; --set "
                   f"augment.crop_size={suggested} keeps about as much as 24 of 32 does, or "
                   "augment.crop=pad shifts the image instead")
  elif crop == "pad":
    parts.append(f"{settings['pad']}-pixel shifts (pad and crop)")
  if settings["flip"]:
    parts.append("horizontal flips (augment.flip=false where a mirrored image is another "
                 "class: arrows, text, digits)")
  return ["augment: " + (", ".join(parts) if parts else "none"), *notes]


def augment_views(images_BxHxWxC: jax.Array, indices_B: jax.Array, views_B: jax.Array, seed: int,
                  settings: dict[str, Any]) -> jax.Array:
  """View `views_B[i]` of example `indices_B[i]`, each a pure function of (seed, index, view).

  `distill export --views K` and a student taught with `teaching=views` both
  call this, so the student replays exactly the views the teacher labelled,
  whatever the batch they land in.
  """
  base = jax.random.key(seed)
  keys = jax.vmap(lambda i, v: jax.random.fold_in(jax.random.fold_in(base, i), v))(
      indices_B, views_B)
  return jax.vmap(lambda image, key: augment(image[None], key, settings)[0])(images_BxHxWxC, keys)


def mixup(images_BxHxWxC: jax.Array, key: jax.Array, concentration: float) -> jax.Array:
  """Blends the batch with its reverse by one weight drawn from Beta(c, c).

  Only the images are mixed: under online teaching the teacher labels the
  blended images themselves, so no label needs mixing.
  """
  weight = jax.random.beta(key, concentration, concentration)
  return weight * images_BxHxWxC + (1.0 - weight) * images_BxHxWxC[::-1]
