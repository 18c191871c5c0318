import jax
import jax.numpy as jnp
import numpy as np

from distill import augment


def _images():
  return jax.random.uniform(jax.random.key(0), (8, 12, 12, 3))


def test_shapes_and_determinism():
  images = _images()
  settings = {"crop": "resize", "crop_size": 9, "pad": 2, "flip": True}
  a = augment.augment(images, jax.random.key(1), settings)
  b = augment.augment(images, jax.random.key(1), settings)
  c = augment.augment(images, jax.random.key(2), settings)
  assert a.shape == images.shape
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_flip_mirrors_or_keeps_each_image():
  images = _images()
  flipped = augment.random_flip(images, jax.random.key(3))
  kept = [np.array_equal(out, original) for original, out in zip(images, flipped, strict=True)]
  mirrored = [np.array_equal(out, original[:, ::-1])
              for original, out in zip(images, flipped, strict=True)]
  assert all(k or m for k, m in zip(kept, mirrored, strict=True))
  # A flip that never (or always) fires passes the check above: this key's batch must have both.
  assert any(mirrored) and any(kept)


def test_pad_crop_is_a_shifted_window():
  images = _images()
  out = augment.random_pad_crop(images, jax.random.key(4), pad=2)
  padded = jnp.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  offsets = []
  for i in range(len(images)):
    found = [(y, x) for y in range(5) for x in range(5)
             if np.array_equal(out[i], padded[i, y:y + 12, x:x + 12])]
    assert len(found) == 1
    offsets.append(found[0])
  # Always the centred window (no shift at all), or any one fixed offset, passes the check above.
  assert len(set(offsets)) > 1


def test_full_size_crop_resize_is_identity():
  images = _images()
  out = augment.random_crop_resize(images, jax.random.key(5), crop_size=12)
  np.testing.assert_allclose(out, images, atol=1e-6)


def test_none_and_no_flip_is_identity():
  images = _images()
  out = augment.augment(images, jax.random.key(6), {"crop": "none", "crop_size": 0, "pad": 0,
                                                     "flip": False})
  np.testing.assert_array_equal(out, images)


def test_a_run_says_what_augmentation_it_trains_with_and_where_a_default_fits_badly():
  cifar = {"crop": "resize", "crop_size": 24, "pad": 4, "flip": True}
  assert augment.describe(cifar, (32, 32, 3)) == [
      "augment: a random 24x24 crop resized to 32x32, horizontal flips (augment.flip=false "
      "where a mirrored image is another class: arrows, text, digits)"]
  # The 32x32 recipes' crop on 64x64 pictures keeps 14% of each; on 8x8 ones, all of it.
  assert augment.describe(cifar, (64, 64, 3))[1] == (
      "note: augment.crop_size 24 keeps 14% of each 64x64 image before resizing it back; --set "
      "augment.crop_size=48 keeps about as much as 24 of 32 does, or augment.crop=pad shifts "
      "the image instead")
  assert augment.describe(cifar, (8, 8, 1))[1] == (
      "note: augment.crop_size 24 is not below the 8x8 images, so the crop changes nothing: "
      "--set augment.crop_size=6, or augment.crop=pad")
  shifts = {"crop": "pad", "crop_size": 24, "pad": 1, "flip": False}
  assert augment.describe(shifts, (8, 8, 1)) == ["augment: 1-pixel shifts (pad and crop)"]
  assert augment.describe({**shifts, "crop": "none"}, (8, 8, 1)) == ["augment: none"]
