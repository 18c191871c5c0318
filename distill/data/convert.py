"""Image folders to array shards: decoded once, trained from many times (`distill make-shards`).

An image folder in the ImageNet layout (`<class>/<image files>`) cannot be
trained from directly: decoding and resizing every image every epoch would
starve the step, and no training option takes an image size. This converts
it once, keeping its layout: a root that holds `train/` (and `test/`) gives
shards with `train/` (and `test/`), which `--dataset stream --data-dir OUT`
reads; a single image folder gives one shard folder.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from distill.console import Console, progress
from distill.data.shards import write_array_shards
from distill.data.stream import (
  SHARDS_FILE,
  ImageFolderSource,
  StreamSource,
  check_no_loose_images,
  class_mismatch,
  open_source,
  split_folders,
  test_shards_hint,
)
from distill.errors import UserError
from distill.io import check_directory_target

# Images decoded per chunk: one chunk is in memory at a time (1024 RGB 224x224 images: 150 MB).
CHUNK_SIZE = 1024


def _splits(source: Path, out: Path) -> dict[str, tuple[Path, Path]]:
  """{split name: (image folder, shard folder)} of a root with train/ (and test/), or of one
  image folder (named "images")."""
  if (source / "train").is_dir():
    # Images beside train/ (and test/) belong to no split: refused, not skipped.
    check_no_loose_images(source, beside=split_folders(source))
    return {split: (source / split, out / split) for split in ("train", "test")
            if (source / split).is_dir()}
  return {"images": (source, out)}


def _chunks(folder: StreamSource, chunk_size: int, *, desc: str,
            quiet: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(images, labels) of `folder` in its order, `chunk_size` at a time, with a progress bar."""
  bar = progress(total=len(folder), desc=desc, unit="img", quiet=quiet)
  try:
    for start in range(0, len(folder), chunk_size):
      images, labels = folder.read(np.arange(start, min(start + chunk_size, len(folder))))
      bar.update(len(images))
      yield images, labels
  finally:
    bar.close()


def image_folders_to_shards(source: str | os.PathLike, out: str | os.PathLike, *,
                            image_size: int | Sequence[int], grayscale: bool = False,
                            overwrite: bool = False, quiet: bool = False,
                            chunk_size: int = CHUNK_SIZE) -> dict[str, Path]:
  """Converts image folders to array shards, decoding each image once.

  Images are read as `distill.data.stream.open_source` reads them (turned
  upright, converted to RGB or grayscale, scaled to cover the size and
  center-cropped). Every folder is opened, and its files and classes checked,
  before anything is written; each shard folder appears only when complete.
  Notes say when --image-size looks turned the other way from most images,
  and when the shards lack the test/ split streamed training needs.

  Args:
    source: a folder holding `train/` and optionally `test/` image folders, or
      one image folder.
    out: where the shards go, in the same layout.
    image_size: (height, width), or one int for square images.
    grayscale: one channel instead of RGB.
    overwrite: replace shard folders already in `out`.
    quiet: no progress bars or notes.
    chunk_size: images decoded at a time.

  Returns:
    {split: shard folder written}.
  """
  source, out = Path(source), Path(out)
  if not source.is_dir():
    raise UserError(f"image folder {source} does not exist or is not a folder")
  if (source / SHARDS_FILE).is_file() or (source / "train" / SHARDS_FILE).is_file():
    raise UserError(f"{source} holds array shards already: train from it with --dataset stream "
                    f"--data-dir {source}")
  if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
    raise UserError(f"--out {out} is inside the image folder {source}, where the shards would "
                    f"read as a class of images; give a folder beside it, e.g. "
                    f"{source.parent / (source.name + '-shards')}")
  splits = _splits(source, out)
  for _, shards in splits.values():  # before hours of decoding, not after
    check_directory_target(shards, overwrite,
                           how_to_replace="pass --overwrite to replace it, or give another --out")
  folders = {split: open_source(images, image_size=image_size, grayscale=grayscale)
             for split, (images, _) in splits.items()}
  if "test" in folders and folders["test"].class_names != folders["train"].class_names:
    raise UserError(class_mismatch(folders["train"], folders["test"]))
  first = next(iter(folders.values()))
  height, width, channels = first.image_shape
  console = Console(quiet)
  if isinstance(first, ImageFolderSource):
    # Before hours of decoding: height and width swapped by mistake crop most of every image.
    turned = _orientation_note(first, (height, width))
    if turned:
      console.info(turned)
  created = not out.exists()
  try:
    written = _write_splits(splits, folders, (height, width, channels), grayscale=grayscale,
                            overwrite=overwrite, quiet=quiet, chunk_size=chunk_size)
  except BaseException:
    if created and out.is_dir() and not any(out.iterdir()):
      out.rmdir()  # a damaged image stopped it: leave no empty folder behind
    raise
  if "test" not in written:
    console.info(_no_test_note(source, out, first.image_shape, single="images" in written))
  return written


def _no_test_note(source: Path, out: Path, image_shape: tuple[int, int, int], *,
                  single: bool) -> str:
  """The note after shards without a test/ split: `--dataset stream` refuses them until held-out
  images are written beside, and says so only when training starts."""
  if single:
    return (f"note: {out} is one shard folder, and streamed training (--dataset stream) needs "
            "it as train/ beside a test/ split: move it to DATA/train, write held-out images as "
            f"shards in DATA/test ({test_shards_hint('DATA/test', image_shape)}), then pass "
            "--data-dir DATA")
  return (f"note: {source} has train/ but no test/, so these shards have no test/ split, which "
          f"streamed training (--dataset stream) evaluates on: write held-out images as shards in "
          f"{out / 'test'} "
          f"({test_shards_hint(out / 'test', image_shape)}), then pass --data-dir {out}")


# Images whose sizes are read (headers only) to tell their orientation.
_ORIENTATION_SAMPLE = 64
# EXIF orientations that turn an image a quarter (decoding turns it upright, swapping H and W).
_QUARTER_TURNS = (5, 6, 7, 8)


def _orientation_note(folder: ImageFolderSource, size: tuple[int, int]) -> str | None:
  """A note when most images are landscape and `size` (H, W) portrait, or the reverse, and
  scaling to cover it then center-cropping keeps under 80% of each: --image-size's H and W
  swapped by mistake. None otherwise (square sizes, square images, a near miss)."""
  height, width = size
  if height == width:
    return None
  files = folder.files
  sizes = []
  for path in files[::max(1, len(files) // _ORIENTATION_SAMPLE)][:_ORIENTATION_SAMPLE]:
    try:
      with Image.open(path) as image:  # reads the header, not the pixels
        image_width, image_height = image.size
        if image.getexif().get(0x0112) in _QUARTER_TURNS:
          image_width, image_height = image_height, image_width
    except Exception:  # noqa: BLE001 (decoding names a damaged file; this only looks)
      continue
    sizes.append((image_height, image_width))
  opposite = [(h, w) for h, w in sizes if h != w and (h > w) != (height > width)]
  if not sizes or 2 * len(opposite) <= len(sizes):
    return None
  (image_height, image_width), _ = Counter(opposite).most_common(1)[0]
  # ImageOps.fit scales the image to cover HxW, then crops the rest away.
  scale = max(height / image_height, width / image_width)
  kept = height * width / (scale * scale * image_height * image_width)
  if kept >= 0.8:
    return None
  asked, swapped = f"{height}x{width}", f"{width}x{height}"
  if len(set(sizes)) == 1:
    return (f"note: the images are {image_height}x{image_width} (HxW) and --image-size {asked} "
            f"is HxW too: scaling each to cover {asked} and center-cropping keeps {kept:.0%} of "
            f"it; did you mean --image-size {swapped}?")
  shape = "landscape" if image_width > image_height else "portrait"
  return (f"note: most images are {shape} (such as {image_height}x{image_width}, HxW) and "
          f"--image-size {asked} is HxW too: scaling a {image_height}x{image_width} image to "
          f"cover {asked} and center-cropping keeps {kept:.0%} of it; did you mean "
          f"--image-size {swapped}?")


def _write_splits(splits: dict[str, tuple[Path, Path]], folders: dict[str, StreamSource],
                  shape: tuple[int, int, int], *, grayscale: bool, overwrite: bool, quiet: bool,
                  chunk_size: int) -> dict[str, Path]:
  """Writes each split's shards (see `image_folders_to_shards`); returns them by split."""
  height, width, channels = shape
  written = {}
  for split, (images, shards) in splits.items():
    folder = folders[split]
    meta = {"source": str(images.resolve()), "image_size": [height, width],
            "grayscale": grayscale}
    # One image folder is split "images": its label is not said twice.
    label = "images" if split == "images" else f"{split} images"
    written[split] = write_array_shards(
        shards, _chunks(folder, chunk_size, desc=label, quiet=quiet),
        class_names=folder.class_names, meta=meta, overwrite=overwrite)
    which = "" if split == "images" else f"{split}: "
    Console(quiet).info(f"{which}{len(folder):,} images of {len(folder.class_names)} classes "
                        f"({height}x{width}x{channels}) -> {written[split]}")
  return written
