"""Cached datasets: simulated batches written once as memory-mappable shards, read back lazily.

On-disk layout of a dataset directory::

    DIR/manifest.json          what the dataset is (see below); "complete": true once every shard is written
    DIR/shard-00000/images.npy one .npy per batch key, first axis = images of the shard (np.save, uncompressed)
    DIR/shard-00000/...        (the same keys and dtypes as :func:`npejax.pipeline.simulate_batch`)
    DIR/shard-00001/...
    DIR/.npejax-lock           held (flock) while a writer works in DIR
    DIR/truth.fits             the true catalog, one row per source (written by ``npejax.simulate``)

Shard ``i`` holds images ``i * shard_size ...``: it is exactly ``simulate_batch(spec, i)`` for the spec with
``batch_size = shard_size`` (the last shard truncated to ``num_images``). A shard is rendered into a hidden
temporary directory that is renamed into place when complete, so a shard directory that exists is whole;
an interrupted run (Ctrl-C, crash, SIGKILL) is resumed by running the same command again, which renders
only the missing shards. Running it with a different seed, prior, renderer, field bank, split, shard size or
number of images in the same directory is refused with the differences listed.

``manifest.json`` holds: ``format``/``format_version``, ``complete``, ``split``, ``seed``, ``num_images``,
``shard_size``, ``num_shards``, ``shards`` (name and image count of each), ``image_shape``, ``tile_size``,
``keys`` (per-image shape and dtype of each array), ``spec`` (prior, renderer and field prior: everything
the data depends on besides the bank and seed), ``bank`` (source path or "synthetic", number of fields,
synthetic flag, description, reference field name, SHA-256 of its arrays), ``config`` (the experiment
config, for the record), ``npejax_version``, ``created`` and ``completed`` (UTC, ISO 8601).

:func:`load` returns a :class:`Dataset` that memory-maps shards on demand (the data is never read as a
whole) and serves index / slice / index-array access and (shuffled) batches with the simulator's keys.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import importlib.metadata
import importlib.resources
import json
import mmap
import os
import resource
import shutil
import tempfile
import threading
import time
from typing import Iterator

import numpy as np
import tqdm

from npejax import fields as fields_lib
from npejax import pipeline

FORMAT = "npejax-dataset"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
_TMP_PREFIX = ".npejax-tmp-"
_LOCK = ".npejax-lock"
# Manifest entries that determine the data; a rerun must match them to resume.
_IDENTITY = ("format_version", "split", "seed", "num_images", "shard_size", "image_shape", "tile_size",
             "keys", "spec", "bank.num_fields", "bank.sha256")


class DatasetError(ValueError):
    """A dataset directory is invalid, incomplete, or holds a different dataset than requested."""


def split_seed(seed: int, split: str) -> int:
    """Distinct deterministic seeds for the splits: ``SeedSequence([seed, index of split]).generate_state(1)[0]``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return int(np.random.SeedSequence([int(seed), SPLITS.index(split)]).generate_state(1)[0])


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


# --- writing ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WriteReport:
    """What :func:`write_dataset` did."""

    directory: str
    num_images: int
    num_shards: int
    rendered_shards: tuple[int, ...]  # shards rendered by this call (the others existed already)
    rendered_images: int
    seconds: float  # wall time of this call


def write_dataset(spec: pipeline.SimulationSpec, out_dir, num_images: int, split: str, config=None,
                  num_workers: int = 2, shard_size: int | None = None, progress: bool = True,
                  prefetch: int | None = None) -> WriteReport:
    """Simulates ``num_images`` images with ``spec`` into ``out_dir`` (layout: module docstring); resumable.

    Args:
      spec: what to simulate; its seed is the dataset's seed (see :func:`split_seed`).
      out_dir: dataset directory, created if needed; must be empty or hold the same dataset.
      num_images: number of images (>= 1).
      split: "train", "val" or "test" (recorded in the manifest).
      config: the experiment config (ConfigDict or dict), recorded in the manifest.
      num_workers: simulator worker processes (0: render in a background thread of this process).
      shard_size: images per shard (default ``spec.batch_size``); the spec is simulated with this batch size.
      progress: show a tqdm progress bar (images).
      prefetch: shards rendered ahead (default ``num_workers + 1``).
    """
    t0 = time.perf_counter()
    if int(num_images) < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    shard_size = int(shard_size if shard_size is not None else spec.batch_size)
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if shard_size != spec.batch_size:
        spec = dataclasses.replace(spec, batch_size=shard_size)
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise DatasetError(f"output path {out_dir} exists and is not a directory")
    os.makedirs(out_dir, exist_ok=True)

    with _DirectoryLock(out_dir):
        _remove_temporaries(out_dir)
        manifest = _new_manifest(spec, int(num_images), split, config)
        manifest_path = os.path.join(out_dir, MANIFEST)
        if os.path.exists(manifest_path):
            stored = _read_manifest(out_dir)
            differences = _identity_diff(stored, manifest)
            if differences:
                raise DatasetError(
                    f"dataset directory {out_dir} holds a different dataset; differences (stored -> requested): "
                    + "; ".join(differences) + ". Use another output directory, or delete this one.")
            manifest = stored  # keeps the original config and creation time
        else:
            others = sorted(os.listdir(out_dir))
            others = [name for name in others if name != _LOCK]
            if others:
                raise DatasetError(f"directory {out_dir} is not empty and holds no {MANIFEST} "
                                   f"(found {others[:5]}); refusing to write a dataset there")
            _write_json(manifest_path, manifest)

        num_shards = manifest["num_shards"]
        counts = [s["count"] for s in manifest["shards"]]
        missing = []
        for i in range(num_shards):
            problem = _check_shard(out_dir, manifest, i)
            if problem is not None:
                missing.append(i)
                _remove_path(os.path.join(out_dir, shard_name(i)))  # damaged or absent: render again
        rendered_images = sum(counts[i] for i in missing)

        if missing and manifest["complete"]:
            manifest = dict(manifest, complete=False, completed=None)
            _write_json(manifest_path, manifest)
        bar = tqdm.tqdm(total=int(num_images), initial=int(num_images) - rendered_images, unit="img",
                   desc=f"simulating {split}", disable=not progress, smoothing=0.1)
        try:
            for start, length in _runs(missing):
                with pipeline.Simulator(spec, num_workers=num_workers, start=start, num_batches=length,
                                        prefetch=prefetch or num_workers + 1) as simulator:
                    for i in range(start, start + length):
                        batch = next(simulator, None)
                        if batch is None:
                            raise RuntimeError(f"the simulator stopped before shard {i}")
                        _write_shard(out_dir, manifest, i, batch)
                        bar.update(counts[i])
        finally:
            bar.close()
        if not manifest["complete"]:
            manifest = dict(manifest, complete=True, completed=_now())
            _write_json(manifest_path, manifest)
    return WriteReport(directory=out_dir, num_images=int(num_images), num_shards=num_shards,
                       rendered_shards=tuple(missing), rendered_images=rendered_images,
                       seconds=time.perf_counter() - t0)


def _runs(indices: list[int]) -> Iterator[tuple[int, int]]:
    """Contiguous runs ``(start, length)`` of sorted ``indices``."""
    start = prev = None
    for i in indices:
        if start is not None and i == prev + 1:
            prev = i
            continue
        if start is not None:
            yield start, prev - start + 1
        start = prev = i
    if start is not None:
        yield start, prev - start + 1


def _write_shard(out_dir: str, manifest: dict, index: int, batch: dict) -> None:
    """Writes shard ``index`` into a temporary directory, then renames it into place."""
    count = manifest["shards"][index]["count"]
    keys = manifest["keys"]
    if set(batch) != set(keys):
        raise DatasetError(f"shard {index}: batch keys {sorted(batch)} differ from the manifest's {sorted(keys)}")
    tmp = tempfile.mkdtemp(dir=out_dir, prefix=f"{_TMP_PREFIX}{shard_name(index)}-")
    try:
        for key, info in keys.items():
            array = np.ascontiguousarray(batch[key][:count])
            expected = (count, *info["shape"])
            if array.shape != expected or array.dtype != np.dtype(info["dtype"]):
                raise DatasetError(f"shard {index}: {key} is {array.dtype}{list(array.shape)}, "
                                   f"expected {info['dtype']}{list(expected)}")
            _save_array(os.path.join(tmp, f"{key}.npy"), array)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
        os.replace(tmp, os.path.join(out_dir, shard_name(index)))
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)  # interrupted (or failed) before the rename


def _save_array(path: str, array: np.ndarray) -> None:
    np.save(path, array, allow_pickle=False)


def _new_manifest(spec: pipeline.SimulationSpec, num_images: int, split: str, config) -> dict:
    shard_size = spec.batch_size
    num_shards = -(-num_images // shard_size)
    shards = [dict(name=shard_name(i), count=min(shard_size, num_images - i * shard_size))
              for i in range(num_shards)]
    probe = pipeline.simulate_batch(dataclasses.replace(spec, batch_size=1), 0)  # one image: keys and shapes
    keys = {key: dict(dtype=np.asarray(v).dtype.name, shape=list(np.shape(v)[1:])) for key, v in probe.items()}
    return dict(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        complete=False,
        split=split,
        seed=int(spec.seed),
        num_images=int(num_images),
        shard_size=int(shard_size),
        num_shards=num_shards,
        shards=shards,
        image_shape=list(spec.prior.image_shape),
        tile_size=int(spec.tile_size),
        keys=keys,
        spec=_jsonable(dict(field_prior=spec.field_prior, prior=dataclasses.asdict(spec.prior),
                            render=dataclasses.asdict(spec.render))),
        bank=bank_info(spec.bank),
        config=_config_dict(config),
        npejax_version=_version(),
        created=_now(),
        completed=None,
    )


def bank_info(bank: fields_lib.FieldBank) -> dict:
    """Manifest entry for a field bank: source ("synthetic" for the embedded bank), size, flags, checksum."""
    return dict(
        source=_bank_source(bank),
        num_fields=len(bank),
        synthetic=bool(bank.synthetic),
        description=bank.description,
        reference=str(bank.names[bank.reference]),
        sha256=bank_sha256(bank),
    )


def bank_sha256(bank: fields_lib.FieldBank) -> str:
    """Checksum of everything in a bank that the simulation reads."""
    h = hashlib.sha256()
    h.update("\0".join(bank.names.tolist()).encode())
    for array in (bank.psf_params, bank.sky_grid, bank.gain, bank.calibration):
        h.update(str(array.shape).encode())
        h.update(np.ascontiguousarray(array, dtype="<f8").tobytes())
    h.update(json.dumps([list(bank.frame_shape), bank.reference]).encode())
    return h.hexdigest()


def _bank_source(bank: fields_lib.FieldBank) -> str:
    try:
        embedded = importlib.resources.files("npejax") / "data" / fields_lib.SYNTHETIC_BANK_FILE
        if os.path.realpath(os.fspath(embedded)) == os.path.realpath(bank.source):
            return "synthetic"
    except (TypeError, OSError):
        pass
    return os.path.abspath(bank.source) if os.path.exists(bank.source) else bank.source


def _identity_diff(stored: dict, new: dict) -> list[str]:
    out = []
    for key in _IDENTITY:
        a, b = _lookup(stored, key), _lookup(new, key)
        out.extend(_diff(a, b, key))
    return out[:12]


def _lookup(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def _diff(a, b, path: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out.extend(_diff(a.get(key, "<absent>"), b.get(key, "<absent>"), f"{path}.{key}"))
        return out
    return [] if a == b else [f"{path}: {a!r} -> {b!r}"]


def _config_dict(config):
    if config is None:
        return None
    if hasattr(config, "to_json_best_effort"):
        return json.loads(config.to_json_best_effort())
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    return _jsonable(config)


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def _version() -> str:
    try:
        return importlib.metadata.version("npejax")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _write_json(path: str, obj: dict) -> None:
    """Writes JSON atomically (temporary file in the same directory, then rename)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=_TMP_PREFIX, suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _remove_temporaries(out_dir: str) -> None:
    """Removes temporary files left by a writer that was killed (we hold the directory lock)."""
    for name in os.listdir(out_dir):
        if name.startswith(_TMP_PREFIX):
            _remove_path(os.path.join(out_dir, name))


def _remove_path(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


class _DirectoryLock:
    """Exclusive advisory lock on a dataset directory: two writers never work in the same directory."""

    def __init__(self, directory: str):
        self.path = os.path.join(directory, _LOCK)
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise DatasetError(f"another process is writing the dataset in {os.path.dirname(self.path)}") from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


# --- reading ------------------------------------------------------------------------------------------


def _read_manifest(directory: str) -> dict:
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"dataset directory {directory} does not exist")
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
        raise FileNotFoundError(f"dataset directory {directory} has no {MANIFEST} (not written by npejax.data?)")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"manifest {path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatasetError(f"manifest {path} is not an {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DatasetError(f"manifest {path} has format version {manifest.get('format_version')}, "
                           f"this npejax reads version {FORMAT_VERSION}")
    required = ("complete", "split", "seed", "num_images", "shard_size", "num_shards", "shards", "keys",
                "image_shape", "tile_size")
    missing = [key for key in required if key not in manifest]
    if missing:
        raise DatasetError(f"manifest {path} lacks {missing}")
    n, size, shards = manifest["num_images"], manifest["shard_size"], manifest["shards"]
    counts_ok = (isinstance(shards, list) and len(shards) == manifest["num_shards"] and
                 all(isinstance(s, dict) and s.get("name") == shard_name(i) and
                     s.get("count") == min(size, n - i * size) for i, s in enumerate(shards)) and
                 sum(s["count"] for s in shards) == n and n >= 1)
    if not counts_ok:
        raise DatasetError(f"manifest {path}: the shard list does not match num_images={n}, shard_size={size}")
    return manifest


def _check_shard(directory: str, manifest: dict, index: int, offsets: dict | None = None) -> str | None:
    """None if shard ``index`` is complete and matches the manifest, else what is wrong (naming the file).

    ``offsets``, if given, receives the data offset of each key's file (``{key: bytes}``)."""
    shard_dir = os.path.join(directory, shard_name(index))
    if not os.path.isdir(shard_dir):
        return f"shard directory {shard_dir} is missing"
    count = manifest["shards"][index]["count"]
    for key, info in manifest["keys"].items():
        path = os.path.join(shard_dir, f"{key}.npy")
        problem, offset = _check_npy(path, (count, *info["shape"]), np.dtype(info["dtype"]))
        if problem:
            return problem
        if offsets is not None:
            offsets[key] = offset
    return None


def _check_npy(path: str, shape: tuple, dtype: np.dtype) -> tuple[str | None, int]:
    """(None, data offset) if ``path`` is a whole .npy file of ``shape`` and ``dtype``, else (problem, -1)."""
    if not os.path.isfile(path):
        return f"shard file {path} is missing", -1
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                got_shape, fortran, got_dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                got_shape, fortran, got_dtype = np.lib.format.read_array_header_2_0(f)
            else:
                return f"shard file {path} has unsupported .npy version {version}", -1
            offset = f.tell()
    except (ValueError, OSError, EOFError) as exc:
        return f"shard file {path} is not a readable .npy file ({exc})", -1
    if tuple(got_shape) != tuple(shape) or got_dtype != dtype or fortran:
        return f"shard file {path} holds {got_dtype}{list(got_shape)}, expected {dtype}{list(shape)}", -1
    expected_size = offset + int(np.prod(shape)) * dtype.itemsize
    size = os.path.getsize(path)
    if size != expected_size:
        return f"shard file {path} is truncated or damaged ({size} bytes, expected {expected_size})", -1
    return None, offset


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
        self.manifest = _read_manifest(self.directory)
        if not self.manifest["complete"]:
            raise DatasetError(f"dataset {self.directory} is incomplete (its writer was interrupted); run the same "
                               "npejax.simulate command again to finish it")
        self._offsets: list[dict[str, int]] = []
        for i in range(self.num_shards):
            offsets: dict[str, int] = {}
            problem = _check_shard(self.directory, self.manifest, i, offsets)
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
        return (f"Dataset({self.directory!r}, split={self.split!r}, images={len(self)}, "
                f"shards={self.num_shards})")

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

    def _gather(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        info = self.manifest["keys"]
        out = {key: np.empty((len(idx), *info[key]["shape"]), dtype=info[key]["dtype"]) for key in self._keys}
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
            for key in self._keys:
                out[key][sel] = arrays[key][rows]
        return out

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0,
                drop_remainder: bool = False) -> Iterator[dict[str, np.ndarray]]:
        """Batches covering every image once, in order or shuffled (a uniform permutation from ``seed``).

        With ``drop_remainder`` the last incomplete batch is left out. Shuffled batches are read
        ``read_chunk`` images at a time so that each shard is mapped once per chunk.
        """
        batch_size = int(batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(self)
        stop = n - n % batch_size if drop_remainder else n
        if not shuffle:
            for start in range(0, stop, batch_size):
                yield self[start:min(start + batch_size, stop)]
            return
        order = np.random.default_rng(seed).permutation(n)[:stop]
        chunk = batch_size * max(1, self.read_chunk // batch_size)
        for c in range(0, stop, chunk):
            data = self._gather(order[c:c + chunk])
            for start in range(0, len(data[self._keys[0]]), batch_size):
                yield {key: value[start:start + batch_size] for key, value in data.items()}


def load(directory, **kwargs) -> Dataset:
    """Opens the dataset in ``directory`` (see :class:`Dataset`)."""
    return Dataset(directory, **kwargs)
