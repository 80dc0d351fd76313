"""Reads a cached dataset lazily: shards memory-mapped on demand (format: :mod:`npejax.datasets.format`).

:func:`load` returns a :class:`Dataset` that checks every shard file's header and size against the
manifest when it opens, memory-maps shards on demand (the data is never read as a whole) and serves
index / slice / index-array access and (shuffled) batches with the simulator's keys (:mod:`npejax.schema`:
IMAGE_KEYS, ``n_sources``, CATALOG_KEYS, TILE_KEYS; the per-image shapes and dtypes are the manifest's
``keys``).
"""

from __future__ import annotations

import collections
import mmap
import os
import resource
import threading
from collections.abc import Iterator

import numpy as np

from npejax.datasets.format import DatasetError, check_shard, read_manifest, shard_name


def _map_npy(path: str, offset: int, shape: tuple, dtype: np.dtype) -> np.ndarray:
    """Read-only memory map of a checked .npy file (cheaper than ``np.load(mmap_mode="r")``)."""
    count = int(np.prod(shape))
    if count == 0:
        return np.zeros(shape, dtype)
    with open(path, "rb") as f:
        buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return np.frombuffer(buffer, dtype=dtype, count=count, offset=offset).reshape(shape)


class Dataset:
    """A dataset written by :func:`write_dataset`, read lazily through memory maps.

    ``len(ds)`` images; ``ds[i]`` (one image: arrays without the batch axis), ``ds[a:b]``, ``ds[[i, j]]``
    or ``ds[bool_mask]`` return dicts of in-memory arrays with the simulator's keys; :meth:`batches`
    iterates over batches; :meth:`shard` gives one shard as read-only memory maps. At most
    ``max_open_shards`` shards are mapped at a time (default: as many as a quarter of the open-file limit
    allows). Opening checks every shard file's header and size against the manifest.
    """

    def __init__(self, directory, max_open_shards: int | None = None, read_chunk: int = 2048):
        self.directory = os.fspath(directory)
        self.manifest = read_manifest(self.directory)
        if not self.manifest["complete"]:
            raise DatasetError(
                f"dataset {self.directory} is incomplete (its writer was interrupted); run the same "
                "npejax.simulate command again to finish it"
            )
        self._offsets: list[dict[str, int]] = []
        for i in range(self.num_shards):
            offsets: dict[str, int] = {}
            problem = check_shard(self.directory, self.manifest, i, offsets)
            if problem:
                raise DatasetError(f"dataset {self.directory}: {problem}")
            self._offsets.append(offsets)
        self._keys = tuple(self.manifest["keys"])
        self._shard_size = int(self.manifest["shard_size"])
        if max_open_shards is None:
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            soft = 1024 if soft == resource.RLIM_INFINITY else soft
            max_open_shards = max(2, soft // 4 // max(1, len(self._keys)))
        self.max_open_shards = max(1, int(max_open_shards))
        self.read_chunk = max(1, int(read_chunk))
        self._cache: collections.OrderedDict[int, dict] = collections.OrderedDict()
        self._lock = threading.Lock()

    # pickling (e.g. to a worker process): reopen maps on the other side
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = collections.OrderedDict()
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return int(self.manifest["num_images"])

    def __repr__(self) -> str:
        return f"Dataset({self.directory!r}, split={self.split!r}, images={len(self)}, shards={self.num_shards})"

    @property
    def keys(self) -> tuple[str, ...]:
        return self._keys

    @property
    def split(self) -> str:
        return self.manifest["split"]

    @property
    def num_shards(self) -> int:
        return int(self.manifest["num_shards"])

    @property
    def shard_size(self) -> int:
        return self._shard_size

    def shard(self, i: int) -> dict[str, np.ndarray]:
        """Shard ``i`` as read-only memory-mapped arrays (nothing is read until used)."""
        i = int(i)
        if not 0 <= i < self.num_shards:
            raise IndexError(f"shard {i} out of range 0..{self.num_shards - 1}")
        with self._lock:
            arrays = self._cache.get(i)
            if arrays is not None:
                self._cache.move_to_end(i)
                return dict(arrays)
            shard_dir = os.path.join(self.directory, shard_name(i))
            count = self.manifest["shards"][i]["count"]
            info = self.manifest["keys"]
            arrays = {}
            for key in self._keys:
                path = os.path.join(shard_dir, f"{key}.npy")
                shape = (count, *info[key]["shape"])
                try:
                    arrays[key] = _map_npy(path, self._offsets[i][key], shape, np.dtype(info[key]["dtype"]))
                except (OSError, ValueError) as exc:
                    raise DatasetError(f"dataset {self.directory}: cannot read shard file {path} ({exc})") from exc
            self._cache[i] = arrays
            while len(self._cache) > self.max_open_shards:
                self._cache.popitem(last=False)
            return dict(arrays)

    def _indices(self, index) -> np.ndarray:
        n = len(self)
        if isinstance(index, slice):
            return np.arange(*index.indices(n), dtype=np.int64)
        idx = np.asarray(index)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise IndexError(f"boolean index has shape {idx.shape}, expected ({n},)")
            return np.flatnonzero(idx)
        if idx.size == 0:
            return np.zeros(0, dtype=np.int64)
        if not np.issubdtype(idx.dtype, np.integer) or idx.ndim != 1:
            raise IndexError(f"dataset index must be an int, a slice, or a 1-D int or bool array, got {index!r}")
        if idx.min() < -n or idx.max() >= n:
            bad = idx[(idx < -n) | (idx >= n)][0]
            raise IndexError(f"image index {bad} out of range for {n} images")
        return np.where(idx < 0, idx + n, idx).astype(np.int64)

    def __getitem__(self, index) -> dict[str, np.ndarray]:
        if isinstance(index, (int, np.integer)):
            i = int(index)
            n = len(self)
            if not -n <= i < n:
                raise IndexError(f"image index {i} out of range for {n} images")
            batch = self._gather(np.array([i % n]))
            return {key: value[0] for key, value in batch.items()}
        return self._gather(self._indices(index))

    def read(self, index, keys=None) -> dict[str, np.ndarray]:
        """``ds[index]`` (a slice or an index array) restricted to ``keys`` (default: every key): reads only
        those arrays, e.g. ``ds.read(slice(0, 256), ("images", "background"))``."""
        keys = self._keys if keys is None else tuple(keys)
        unknown = [k for k in keys if k not in self._keys]
        if unknown:
            raise KeyError(f"dataset {self.directory} has no key(s) {unknown}; it has {list(self._keys)}")
        return self._gather(self._indices(index), keys)

    def _gather(self, idx: np.ndarray, keys=None) -> dict[str, np.ndarray]:
        info = self.manifest["keys"]
        keys = self._keys if keys is None else keys
        out = {key: np.empty((len(idx), *info[key]["shape"]), dtype=info[key]["dtype"]) for key in keys}
        shard_of = idx // self._shard_size
        local = idx - shard_of * self._shard_size
        shards = np.unique(shard_of).tolist()
        with self._lock:  # mapped shards first: a cyclic sweep over more shards than the cache holds still hits
            shards.sort(key=lambda s: s not in self._cache)
        for s in shards:
            sel = np.flatnonzero(shard_of == s)
            rows = local[sel]
            order = np.argsort(rows, kind="stable")
            sel, rows = sel[order], rows[order]
            arrays = self.shard(s)
            if rows[-1] - rows[0] + 1 == len(rows):  # a contiguous run: read it as a slice
                rows = slice(int(rows[0]), int(rows[-1]) + 1)
            for key in keys:
                out[key][sel] = arrays[key][rows]
        return out

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_remainder: bool = False,
        rows: slice | None = None,
        start: int = 0,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Batches covering every image once, in order or shuffled (a uniform permutation from ``seed``).

        With ``drop_remainder`` the last incomplete batch is left out. Shuffled batches are read
        ``read_chunk`` images at a time so that each shard is mapped once per chunk. ``rows`` (a slice of
        ``range(batch_size)``, with ``drop_remainder``): only those rows of each of these batches are read and
        yielded (one process's share of a global batch, :func:`npejax.nn.distributed.local_rows`). ``start``:
        the batches from batch ``start`` on, the same as those of the whole pass (an epoch resumed where it
        stopped, :mod:`npejax.nn.input_pipeline`); the batches before it are not read.
        """
        batch_size, start = int(batch_size), int(start)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        n = len(self)
        stop = n - n % batch_size if drop_remainder else n
        if rows is not None:
            if not drop_remainder:
                raise ValueError("rows= needs drop_remainder=True (every batch whole)")
            order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
            order = order[:stop].reshape(-1, batch_size)[start:, rows]
            batch_size, stop = order.shape[1], order.size
            if not shuffle:  # contiguous rows of consecutive batches: slices, not gathers
                for first in order[:, 0]:
                    yield self[int(first) : int(first) + batch_size]
                return
            order = order.ravel()
        elif not shuffle:
            for first in range(start * batch_size, stop, batch_size):
                yield self[first : min(first + batch_size, stop)]
            return
        else:
            order = np.random.default_rng(seed).permutation(n)[start * batch_size : stop]
            stop = len(order)
        chunk = batch_size * max(1, self.read_chunk // batch_size)
        for c in range(0, stop, chunk):
            data = self._gather(order[c : c + chunk])
            for first in range(0, len(data[self._keys[0]]), batch_size):
                yield {key: value[first : first + batch_size] for key, value in data.items()}


def load(directory, **kwargs) -> Dataset:
    """Opens the dataset in ``directory`` (see :class:`Dataset`)."""
    return Dataset(directory, **kwargs)
