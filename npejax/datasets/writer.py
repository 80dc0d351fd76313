"""Writes a cached dataset: simulated shards and the manifest (format: :mod:`npejax.datasets.format`).

:func:`write_dataset` renders the missing shards of a dataset directory with
:class:`npejax.sim.pipeline.Simulator` and records what the data is in ``manifest.json`` (written with
:func:`npejax.io.write_json`). Each shard is rendered into a hidden temporary directory and renamed into
place when whole (a directory of files, not one file, so it does not go through :mod:`npejax.io`). One
writer at a time works in a directory (an advisory ``flock`` on ``.npejax-lock``); a rerun resumes an
interrupted one and refuses a different dataset, listing the differences.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import importlib.metadata
import importlib.resources
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator

import numpy as np
import tqdm

from npejax import configuration, io
from npejax.datasets.format import (
    FORMAT,
    FORMAT_VERSION,
    IDENTITY_KEYS,
    LOCK_FILE,
    MANIFEST,
    SHARD_FILE,
    TMP_PREFIX,
    DatasetError,
    check_shard,
    check_split,
    dataset_digest,
    lookup,
    read_manifest,
    shard_identity,
    shard_name,
)
from npejax.sim import fields as fields_lib
from npejax.sim import pipeline


@dataclasses.dataclass(frozen=True)
class WriteReport:
    """What :func:`write_dataset` did."""

    directory: str
    num_images: int
    num_shards: int
    rendered_shards: tuple[int, ...]  # shards rendered by this call (the others existed already)
    rendered_images: int
    seconds: float  # wall time of this call


def write_dataset(
    spec: pipeline.SimulationSpec,
    out_dir,
    num_images: int,
    split: str,
    config=None,
    num_workers: int = 2,
    shard_size: int | None = None,
    progress: bool = True,
    prefetch: int | None = None,
) -> WriteReport:
    """Simulates ``num_images`` images with ``spec`` into ``out_dir`` (layout: :mod:`npejax.datasets.format`);
    resumable.

    Args:
      spec: what to simulate; its seed is the dataset's seed (see :func:`npejax.datasets.split_seed`).
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
    check_split(split)
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
        manifest = _open_manifest(out_dir, _new_manifest(spec, int(num_images), split, config))
        manifest_path = os.path.join(out_dir, MANIFEST)
        num_shards = manifest["num_shards"]
        counts = [s["count"] for s in manifest["shards"]]
        missing = []
        for i in range(num_shards):
            if check_shard(out_dir, manifest, i) is not None:
                missing.append(i)
                _remove_path(os.path.join(out_dir, shard_name(i)))  # damaged or absent: render again
        rendered_images = sum(counts[i] for i in missing)

        if missing and manifest["complete"]:
            manifest = dict(manifest, complete=False, completed=None)
            io.write_json(manifest_path, manifest)
        bar = tqdm.tqdm(
            total=int(num_images),
            initial=int(num_images) - rendered_images,
            unit="img",
            desc=f"simulating {split}",
            disable=not progress,
            smoothing=0.1,
        )
        try:
            for start, length in _runs(missing):
                with pipeline.Simulator(
                    spec, num_workers=num_workers, start=start, num_batches=length, prefetch=prefetch or num_workers + 1
                ) as simulator:
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
            io.write_json(manifest_path, manifest)
    return WriteReport(
        directory=out_dir,
        num_images=int(num_images),
        num_shards=num_shards,
        rendered_shards=tuple(missing),
        rendered_images=rendered_images,
        seconds=time.perf_counter() - t0,
    )


def _open_manifest(out_dir: str, manifest: dict) -> dict:
    """The manifest to continue with: the stored one if it describes the same dataset (keeping its config
    and creation time), else ``manifest`` written to an empty directory; DatasetError otherwise."""
    manifest_path = os.path.join(out_dir, MANIFEST)
    if os.path.exists(manifest_path):
        stored = read_manifest(out_dir)
        differences = _identity_diff(stored, manifest)
        if differences:
            raise DatasetError(
                f"dataset directory {out_dir} holds a different dataset; differences (stored -> requested): "
                + "; ".join(differences)
                + ". Use another output directory, or delete this one."
            )
        return stored
    others = [name for name in sorted(os.listdir(out_dir)) if name != LOCK_FILE]
    if others:
        raise DatasetError(
            f"directory {out_dir} is not empty and holds no {MANIFEST} "
            f"(found {others[:5]}); refusing to write a dataset there"
        )
    io.write_json(manifest_path, manifest)
    return manifest


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
    """Writes shard ``index`` into a temporary directory, then renames the directory into place."""
    count = manifest["shards"][index]["count"]
    keys = manifest["keys"]
    if set(batch) != set(keys):
        raise DatasetError(f"shard {index}: batch keys {sorted(batch)} differ from the manifest's {sorted(keys)}")
    tmp = tempfile.mkdtemp(dir=out_dir, prefix=f"{TMP_PREFIX}{shard_name(index)}-")
    try:
        for key, info in keys.items():
            array = np.ascontiguousarray(batch[key][:count])
            expected = (count, *info["shape"])
            if array.shape != expected or array.dtype != np.dtype(info["dtype"]):
                raise DatasetError(
                    f"shard {index}: {key} is {array.dtype}{list(array.shape)}, "
                    f"expected {info['dtype']}{list(expected)}"
                )
            _save_array(os.path.join(tmp, f"{key}.npy"), array)
        io.write_json(os.path.join(tmp, SHARD_FILE), shard_identity(manifest, index))  # which dataset it is of
        os.chmod(tmp, 0o777 & ~io.umask())  # mkdtemp creates 0700
        os.replace(tmp, os.path.join(out_dir, shard_name(index)))
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)  # interrupted (or failed) before the rename


def _save_array(path: str, array: np.ndarray) -> None:
    """One array of a shard (inside the shard's temporary directory, which is renamed when whole)."""
    np.save(path, array, allow_pickle=False)


def _new_manifest(spec: pipeline.SimulationSpec, num_images: int, split: str, config) -> dict:
    shard_size = spec.batch_size
    num_shards = -(-num_images // shard_size)
    shards = [dict(name=shard_name(i), count=min(shard_size, num_images - i * shard_size)) for i in range(num_shards)]
    probe = pipeline.simulate_batch(dataclasses.replace(spec, batch_size=1), 0)  # one image: keys and shapes
    keys = {key: dict(dtype=np.asarray(v).dtype.name, shape=list(np.shape(v)[1:])) for key, v in probe.items()}
    manifest = dict(
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
        spec=_jsonable(
            dict(
                field_prior=spec.field_prior,
                prior=dataclasses.asdict(spec.prior),
                render=dataclasses.asdict(spec.render),
                # only with an artifact on: a dataset without any keeps the manifest (and identity) it had
                **({} if spec.artifacts is None else {"artifacts": dataclasses.asdict(spec.artifacts)}),
                # the renderer, when not GalSim (manifests written before the JAX renderer stay the same)
                **({} if spec.backend == "galsim" else {"backend": spec.backend}),
            )
        ),
        bank=bank_info(spec.bank),
        config=configuration.to_json(config),
        identity=None,  # dataset_digest, below
        npejax_version=_version(),
        created=_now(),
        completed=None,
    )
    manifest["identity"] = dataset_digest(manifest)  # shards record it (npejax.datasets.format: Identity)
    return manifest


def bank_info(bank: fields_lib.FieldBank) -> dict:
    """Manifest entry for a field bank: source ("synthetic" or "survey" for an embedded bank), size, flags,
    checksum."""
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
    for name, filename in fields_lib.EMBEDDED_BANKS.items():
        try:
            embedded = importlib.resources.files("npejax") / "assets" / filename
            if os.path.realpath(os.fspath(embedded)) == os.path.realpath(bank.source):
                return name
        except (TypeError, OSError):
            pass
    return os.path.abspath(bank.source) if os.path.exists(bank.source) else bank.source


def _identity_diff(stored: dict, new: dict) -> list[str]:
    out = []
    for key in IDENTITY_KEYS:
        a, b = lookup(stored, key), lookup(new, key)
        out.extend(configuration.differences(a, b, path=key))
    return out[:12]


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def _version() -> str:
    try:
        return importlib.metadata.version("npejax")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _remove_temporaries(out_dir: str) -> None:
    """Removes what a killed writer left (we hold the directory lock): shard directories being rendered
    and :mod:`npejax.io` temporaries of the manifest."""
    for name in os.listdir(out_dir):
        if name.startswith(TMP_PREFIX) or io.is_temporary(name):
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
        self.path = os.path.join(directory, LOCK_FILE)
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
