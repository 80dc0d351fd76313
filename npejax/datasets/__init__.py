"""Cached datasets: simulated batches written once as memory-mappable shards, read back lazily.

* :mod:`~npejax.datasets.format`: the on-disk layout and manifest (read it first), split seeds, the
  checks shared by writer and reader.
* :mod:`~npejax.datasets.writer`: :func:`write_dataset` (resumable, one writer per directory).
* :mod:`~npejax.datasets.reader`: :func:`load` / :class:`Dataset` (memory maps, indexing, batches).

Use it as ``from npejax import datasets``; ``datasets.write_dataset(spec, dir, n, "val")``,
``datasets.load(dir)[i]``. A dataset's batches have the keys of :func:`npejax.sim.pipeline.simulate_batch`
(:mod:`npejax.schema`).
"""

from npejax.datasets.format import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    SPLITS,
    DatasetError,
    read_manifest,
    shard_name,
    split_seed,
)
from npejax.datasets.reader import Dataset, load
from npejax.datasets.writer import WriteReport, bank_info, bank_sha256, write_dataset

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "SPLITS",
    "DatasetError",
    "Dataset",
    "WriteReport",
    "bank_info",
    "bank_sha256",
    "load",
    "read_manifest",
    "shard_name",
    "split_seed",
    "write_dataset",
]
