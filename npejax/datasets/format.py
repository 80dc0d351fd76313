"""The on-disk format of a cached dataset, and the checks that writer and reader share.

On-disk layout of a dataset directory::

    DIR/manifest.json          what the dataset is (see below); "complete": true once every shard is written
    DIR/shard-00000/images.npy one .npy per batch key, first axis = images of the shard (np.save, uncompressed)
    DIR/shard-00000/shard.json the shard's identity: which dataset, split, seed and index it belongs to
    DIR/shard-00000/...        (the same keys and dtypes as :func:`npejax.sim.pipeline.simulate_batch`,
                               listed in :mod:`npejax.schema`: IMAGE_KEYS, n_sources, CATALOG_KEYS, TILE_KEYS;
                               and ARTIFACT_KEYS, mask and artifact_bits, when simulated with artifacts)
    DIR/shard-00001/...
    DIR/.npejax-lock           held (flock) while a writer works in DIR
    DIR/truth.fits             the true catalog, one row per source (written by ``npejax.simulate``)

Shard ``i`` holds images ``i * shard_size ...``: it is exactly ``simulate_batch(spec, i)`` for the spec with
``batch_size = shard_size`` (the last shard truncated to ``num_images``). A shard is rendered into a hidden
temporary directory (``.npejax-tmp-shard-NNNNN-*``) that is renamed into place when complete, so a shard
directory that exists is whole; an interrupted run (Ctrl-C, crash, SIGKILL) is resumed by running the same
command again, which renders only the missing shards. Running it with a different seed, prior, renderer,
field bank, split, shard size or number of images in the same directory is refused with the differences
listed.

``manifest.json`` holds: ``format``/``format_version``, ``complete``, ``split``, ``seed``, ``num_images``,
``shard_size``, ``num_shards``, ``shards`` (name and image count of each), ``image_shape``, ``tile_size``,
``keys`` (per-image shape and dtype of each array), ``spec`` (prior, renderer and field prior: everything
the data depends on besides the bank and seed; ``spec.artifacts`` only when an artifact of real frames is
on), ``bank`` (source path or "synthetic", number of fields,
synthetic flag, description, reference field name, SHA-256 of its arrays), ``config`` (the experiment
config, for the record), ``identity`` (:func:`dataset_digest`), ``npejax_version``, ``created`` and
``completed`` (UTC, ISO 8601).

**Identity.** :data:`IDENTITY_KEYS` are the manifest entries that determine the data (a rerun must match them to
resume); :func:`dataset_digest` is the SHA-256 of their values. Each shard holds ``shard.json``
(:data:`SHARD_FILE`, :func:`shard_identity`): ``format``, ``split``, ``seed``, ``index`` (its number),
``count`` and ``dataset`` (the digest). Opening a dataset compares every shard's with its manifest
(:func:`check_shard`), so a shard of another dataset or split placed inside one (a validation shard copied into
a test set, whose images would be trained on) is refused naming the shard's file, the field, the shard's value
and the manifest's. Datasets written before shards held it (a manifest without ``identity``) still load; their
shards can be checked only by shape and size.

The seed of a split is :func:`split_seed` of the experiment seed (splits: :data:`npejax.schema.SPLITS`).
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from npejax import schema

FORMAT = "npejax-dataset"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK_FILE = ".npejax-lock"
TMP_PREFIX = ".npejax-tmp-"  # shard directories being rendered (and manifest temporaries of older writers)
SPLITS = schema.SPLITS
# Manifest entries that are required to read a dataset.
REQUIRED = (
    "complete",
    "split",
    "seed",
    "num_images",
    "shard_size",
    "num_shards",
    "shards",
    "keys",
    "image_shape",
    "tile_size",
)
SHARD_FILE = "shard.json"  # a shard's identity (module doc)
# Manifest entries that determine the data (dotted: a key of a section); a rerun must match them to resume.
IDENTITY_KEYS = (
    "format_version",
    "split",
    "seed",
    "num_images",
    "shard_size",
    "image_shape",
    "tile_size",
    "keys",
    "spec",
    "bank.num_fields",
    "bank.sha256",
)
SHARD_FIELDS = ("split", "seed", "index", "dataset")  # what check_shard compares, in this order


class DatasetError(ValueError):
    """A dataset directory is invalid, incomplete, or holds a different dataset than requested."""


def split_seed(seed: int, split: str) -> int:
    """Distinct deterministic seeds for the splits: ``SeedSequence([seed, index of split]).generate_state(1)[0]``."""
    check_split(split)
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return int(np.random.SeedSequence([int(seed), SPLITS.index(split)]).generate_state(1)[0])


def check_split(split: str) -> None:
    """Raises ValueError naming ``split`` unless it is one of :data:`SPLITS`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def shard_name(index: int) -> str:
    """Directory name of shard ``index``: ``shard-NNNNN``."""
    return f"shard-{index:05d}"


def read_manifest(directory: str) -> dict:
    """The manifest of ``directory``, checked for format, version, required keys and a consistent shard list.

    Raises FileNotFoundError (no directory, no manifest) or DatasetError naming the file."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"dataset directory {directory} does not exist")
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
        raise FileNotFoundError(f"dataset directory {directory} has no {MANIFEST} (not written by npejax.datasets?)")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"manifest {path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatasetError(f"manifest {path} is not an {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DatasetError(
            f"manifest {path} has format version {manifest.get('format_version')}, "
            f"this npejax reads version {FORMAT_VERSION}"
        )
    missing = [key for key in REQUIRED if key not in manifest]
    if missing:
        raise DatasetError(f"manifest {path} lacks {missing}")
    n, size, shards = manifest["num_images"], manifest["shard_size"], manifest["shards"]
    counts_ok = (
        isinstance(shards, list)
        and len(shards) == manifest["num_shards"]
        and all(
            isinstance(s, dict) and s.get("name") == shard_name(i) and s.get("count") == min(size, n - i * size)
            for i, s in enumerate(shards)
        )
        and sum(s["count"] for s in shards) == n
        and n >= 1
    )
    if not counts_ok:
        raise DatasetError(f"manifest {path}: the shard list does not match num_images={n}, shard_size={size}")
    return manifest


def check_shard(directory: str, manifest: dict, index: int, offsets: dict | None = None) -> str | None:
    """None if shard ``index`` is complete and matches the manifest (its arrays' headers and sizes, its
    :func:`check_shard_identity`), else what is wrong (naming the file).

    ``offsets``, if given, receives the data offset of each key's file (``{key: bytes}``)."""
    shard_dir = os.path.join(directory, shard_name(index))
    if not os.path.isdir(shard_dir):
        return f"shard directory {shard_dir} is missing"
    count = manifest["shards"][index]["count"]
    for key, info in manifest["keys"].items():
        path = os.path.join(shard_dir, f"{key}.npy")
        problem, offset = check_npy(path, (count, *info["shape"]), np.dtype(info["dtype"]))
        if problem:
            return problem
        if offsets is not None:
            offsets[key] = offset
    return check_shard_identity(directory, manifest, index)


def check_npy(path: str, shape: tuple, dtype: np.dtype) -> tuple[str | None, int]:
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


def lookup(manifest: dict, dotted: str):
    """The value of a dotted key (``bank.sha256``) of a manifest; None where it is absent."""
    for part in dotted.split("."):
        manifest = manifest.get(part) if isinstance(manifest, dict) else None
    return manifest


def dataset_digest(manifest: dict) -> str:
    """SHA-256 of the manifest's :data:`IDENTITY_KEYS` values (canonical JSON): what identifies the dataset."""
    values = {key: lookup(manifest, key) for key in IDENTITY_KEYS}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def shard_identity(manifest: dict, index: int) -> dict:
    """The content of shard ``index``'s :data:`SHARD_FILE`."""
    return dict(
        format=FORMAT,
        split=manifest["split"],
        seed=int(manifest["seed"]),
        index=int(index),
        count=int(manifest["shards"][index]["count"]),
        dataset=dataset_digest(manifest),
    )


def check_shard_identity(directory: str, manifest: dict, index: int) -> str | None:
    """None if shard ``index``'s :data:`SHARD_FILE` says it belongs to this dataset (or, for a dataset written
    before shards held one, when it has none), else what differs: the file, the field, the shard's value and
    the manifest's."""
    path = os.path.join(directory, shard_name(index), SHARD_FILE)
    if not os.path.exists(path):
        if manifest.get("identity") is None:
            return None  # written before shards held their identity
        return f"shard file {path} is missing (every shard of this dataset has one)"
    try:
        with open(path) as f:
            found = json.load(f)
        if not isinstance(found, dict):
            raise TypeError("not a JSON object")
    except (OSError, ValueError, TypeError) as exc:
        return f"shard file {path} is not a readable shard identity ({type(exc).__name__})"
    expected = shard_identity(manifest, index)
    for field in SHARD_FIELDS:
        if found.get(field) != expected[field]:
            return (
                f"shard file {path} has {field} {found.get(field)!r}, the manifest {os.path.join(directory, MANIFEST)} "
                f"{expected[field]!r}: a shard of another dataset (copied in?); remove the shard directory "
                "and run the npejax.simulate command again to render it"
            )
    return None
