"""Data sets: in memory (`datasets`) or streamed from disk (`stream`, `shards`).

* `datasets`: the registry of image-classification data sets small enough to
  hold in memory (fashion_mnist, mnist, cifar10, digits, npz), loaded,
  validated, fingerprinted and split by `load_dataset`;
* `formats`: the files those loaders read (IDX, .npz, CIFAR-10 pickles).
* `stream`: data sets larger than host memory, read by example index from
  array shards or image folders and split the same way.
* `shards`: writing and reading the shard folders: images and labels, and a
  teacher's targets.

The in-memory names are re-exported here, so `data.load_dataset(...)` works.
"""

from distill.data.datasets import (
    DATASETS,
    Dataset,
    RawData,
    dataset_names,
    load_dataset,
    register,
)
from distill.data.formats import read_idx

__all__ = ["DATASETS", "Dataset", "RawData", "dataset_names", "load_dataset", "read_idx",
           "register"]
