"""Pretrained networks shipped inside the package: the flat file, the registry, loading and export.

A pretrained network is one file, ``npejax/pretrained/NAME.npz``: a standard NumPy ``.npz`` (a zip of
``.npy`` members, read with ``np.load(allow_pickle=False)``: it holds no pickle) with

- ``variables/params/...`` and ``variables/batch_stats/...``: every array of the variables that prediction
  uses (:func:`npejax.nn.state.eval_variables`: ``params`` and ``batch_stats``, their moving averages for a
  network trained with ``train.ema_decay`` > 0), float32, named by the path of the leaf in the Flax
  variables tree joined with ``/`` (``variables/params/ConvBlock_0/Conv_0/kernel``);
- ``meta``: a 0-d unicode array holding one JSON object: ``format`` (:data:`FILE_FORMAT`), ``version``
  (:data:`FILE_VERSION`), ``name``, ``config`` (the training config as
  :func:`npejax.nn.checkpoints.load_config` reads it from ``config.json``), ``normalizer``
  (:meth:`npejax.nn.inputs.Normalizer.to_dict`: pixel quantiles and background in nmgy, PSF parameters) and
  ``training`` (:func:`training_summary`).

:func:`write_network` writes it reproducibly -- members in sorted order, stored uncompressed, with a fixed
timestamp, so the same network always gives the same bytes and the same SHA-256 -- and atomically
(:mod:`npejax.io`). :func:`read_network` rebuilds the variables tree from the config's model
(:func:`npejax.nn.model.from_config`) and refuses a file whose arrays differ from it in name, shape or dtype,
so what it returns is exactly what the checkpoint restore returns (float32 in, float32 out: predictions are
bit-identical to the checkpoint's).

The registry, ``npejax/pretrained/registry.json`` (:data:`REGISTRY_FILE`), lists the shipped networks::

    {"format": "npejax-pretrained-registry", "version": 1,
     "networks": {"NAME": {"file": "NAME.npz", "sha256": HEX, "bytes": N, "card": "NAME.md",
                           "config": "configs/cpu.py", "variant": "psf_aware", "parameters": P,
                           "training": {...}, "quality_thresholds": {...}}}}

``quality_thresholds`` (optional): the quality flag's thresholds calibrated for this network (``{"detection": D,
"image": I, "flux_ratio": R}``, :class:`npejax.cataloging.quality.Thresholds`; ``python benchmarks/quality_flag.py
--pretrained NAME`` calibrates them), used by the commands' quality flag for its catalogs; without it the flag uses
the package's (calibrated for ``cpu``). ``card`` is the model card beside the file (config, training images and
budget, evaluation, intended use and limits). :func:`load` checks the file's SHA-256 against its entry on every
load: a file that differs (damaged, or replaced without re-registering it) is refused, naming the file and both
digests. :func:`export` (the library behind ``python -m npejax.export_pretrained``) writes the file of a training
directory's checkpoint and its registry entry. Every function takes the directory of the registry (``directory``;
default :func:`package_directory`, the package's own), so networks can be kept elsewhere.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import io as io_lib
import json
import os
import re
import zipfile
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np

from npejax import configuration, io
from npejax.nn import checkpoints
from npejax.nn import inputs as inputs_lib
from npejax.nn import model as model_lib
from npejax.nn import state as state_lib

FILE_FORMAT = "npejax-pretrained"
FILE_VERSION = 1
REGISTRY_FORMAT = "npejax-pretrained-registry"
REGISTRY_VERSION = 1
REGISTRY_FILE = "registry.json"
META = "meta"  # the member holding the JSON metadata
PREFIX = "variables/"  # the members holding arrays of the variables tree
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")  # a network's name is its file's stem
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the zip format's earliest date: reproducible bytes


class PretrainedError(ValueError):
    """A pretrained network that cannot be used: unknown name, missing or damaged file, a digest that differs
    from the registry's, a file of another format or network."""


# --- the registry -----------------------------------------------------------------------------------


def package_directory() -> str:
    """The package's ``npejax/pretrained`` directory (its registry, files and model cards)."""
    return os.fspath(importlib.resources.files("npejax") / "pretrained")


def _directory(directory) -> str:
    return os.fspath(directory) if directory is not None else package_directory()


def read_registry(directory=None) -> dict:
    """``{name: entry}`` of the registry in ``directory`` (default: the package's); ``{}`` when it has no
    registry file. PretrainedError naming the file when it is not a registry."""
    path = os.path.join(_directory(directory), REGISTRY_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            registry = json.load(f)
        if registry.get("format") != REGISTRY_FORMAT or not isinstance(registry.get("networks"), dict):
            raise ValueError(f"expected format {REGISTRY_FORMAT!r} and a 'networks' object")
    except (OSError, ValueError, AttributeError) as exc:
        raise PretrainedError(f"pretrained registry {path} is not readable ({exc})") from None
    if registry.get("version") != REGISTRY_VERSION:
        raise PretrainedError(
            f"pretrained registry {path} has version {registry.get('version')!r}; this npejax reads version "
            f"{REGISTRY_VERSION}"
        )
    return dict(registry["networks"])


def available(directory=None) -> list[str]:
    """The names of the networks of the registry in ``directory`` (default: the package's), sorted."""
    return sorted(read_registry(directory))


def entry(name: str, directory=None) -> dict:
    """The registry entry of network ``name``; PretrainedError listing the available names when there is
    none."""
    networks = read_registry(directory)
    if name not in networks:
        where = os.path.join(_directory(directory), REGISTRY_FILE)
        names = ", ".join(sorted(networks)) if networks else "none"
        raise PretrainedError(f"no pretrained network named {name!r} in {where}; available: {names}")
    return dict(networks[name])


def file_path(name: str, directory=None) -> str:
    """The path of network ``name``'s file (which need not exist)."""
    return os.path.join(_directory(directory), entry(name, directory)["file"])


def load(name: str, directory=None):
    """(config, variables, normalizer) of the pretrained network ``name``, as
    :func:`npejax.nn.checkpoints.load_network` gives them for a checkpoint, after checking its file's SHA-256 against
    the registry. PretrainedError (naming the file) for an unknown name, a missing file, a digest that
    differs or a damaged file."""
    info = entry(name, directory)
    path = os.path.join(_directory(directory), info["file"])
    return read_network(path, sha256=info.get("sha256"))


def identity(name: str, directory=None) -> dict:
    """What identifies the pretrained network ``name``, read without loading its arrays: ``network``
    (``"pretrained NAME"``), ``network_sha256`` (its file's SHA-256 as the registry records it; :func:`load`
    refuses a file that differs) and ``decode`` (``posterior.decode`` of its config: how catalogs are read).
    PretrainedError for an unknown name or an unreadable file."""
    info = entry(name, directory)
    path = os.path.join(_directory(directory), info["file"])
    meta = read_meta(path)
    try:
        decode = str(checkpoints.config_from_dict(meta["config"]).posterior.decode)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PretrainedError(f"pretrained network {name}: its config is unusable ({exc})") from None
    sha256 = info.get("sha256") or io.sha256_file(path)
    return dict(network=f"pretrained {name}", network_sha256=str(sha256), decode=decode)


# --- the file ---------------------------------------------------------------------------------------


def _leaf_name(path) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def _flat(tree) -> dict:
    """``{"params/ConvBlock_0/Conv_0/kernel": leaf, ...}`` of a variables tree (arrays or shapes)."""
    return {_leaf_name(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def flat_tree(tree) -> dict:
    """``{"params/ConvBlock_0/Conv_0/kernel": leaf, ...}`` of a variables tree of arrays or shapes (the names of
    the file's members)."""
    return _flat(tree)


def flatten_variables(variables) -> dict[str, np.ndarray]:
    """``{"params/ConvBlock_0/Conv_0/kernel": array, ...}`` of a variables tree, as host NumPy arrays."""
    return {name: np.asarray(leaf) for name, leaf in _flat(jax.device_get(variables)).items()}


def abstract_variables(config: ml_collections.ConfigDict):
    """The shapes and dtypes of the variables prediction uses for ``config``'s network (no computation)."""
    return state_lib.eval_variables(state_lib.abstract_state(config, model_lib.from_config(config)))


def training_summary(config: ml_collections.ConfigDict, meta: dict, which: str) -> dict:
    """What trained the network of checkpoint ``which`` (its Orbax ``meta``): ``checkpoint``, ``epoch`` (epochs
    done), ``steps``, ``images`` (training images seen: steps x train.batch_size), ``data`` ("simulated on the
    fly" or the cached dataset's size), ``seconds`` (training time to that epoch, the sum of metrics.csv's
    ``seconds``), ``val_nll`` (its validation NLL per image), ``fields`` (bank and prior)."""
    history = list(meta.get("history") or [])
    steps = int(history[-1]["step"]) if history else None
    return dict(
        checkpoint=which,
        epoch=int(meta["epoch"]),
        steps=steps,
        images=None if steps is None else steps * int(config.train.batch_size),
        data=(
            f"cached training set ({config.data.num_train} images)"
            if config.data.get("train_dir")
            else "simulated on the fly"
        ),
        seconds=round(float(sum(float(row.get("seconds", 0.0)) for row in history)), 1),
        val_nll=None if meta.get("val_nll") is None else float(meta["val_nll"]),
        fields=dict(bank=str(config.fields.bank), prior=str(config.fields.prior)),
    )


def _npy(array: np.ndarray) -> bytes:
    buf = io_lib.BytesIO()
    np.lib.format.write_array(buf, np.asarray(array, order="C"), allow_pickle=False)  # keeps a 0-d array 0-d
    return buf.getvalue()


def write_network(
    path, name: str, config: ml_collections.ConfigDict, variables, normalizer: inputs_lib.Normalizer, training=None
) -> str:
    """Writes the flat file of a network (module doc) to ``path`` atomically; returns its SHA-256. ``variables``
    must be the float32 tree of ``config``'s network (ValueError otherwise)."""
    check_name(name)
    arrays = flatten_variables(variables)
    expected = _flat(abstract_variables(config))
    _check_arrays(arrays, expected, f"the variables of network {name}")
    meta = dict(
        format=FILE_FORMAT,
        version=FILE_VERSION,
        name=name,
        config=configuration.to_json(config),
        normalizer=normalizer.to_dict(),
        training=training,
    )
    members = {META: np.array(json.dumps(meta))}  # the config keeps its key order
    members.update({PREFIX + key: value for key, value in arrays.items()})

    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
            for key in sorted(members):
                info = zipfile.ZipInfo(key + ".npy", date_time=_ZIP_TIME)
                info.external_attr = 0o644 << 16
                z.writestr(info, _npy(members[key]))

    io.atomic_write(path, write)
    return io.sha256_file(path)


def _check_arrays(have: dict, want: dict, where: str) -> None:
    """PretrainedError (naming ``where`` and the first differences) unless ``have`` holds the arrays of
    ``want`` (name -> array or ShapeDtypeStruct) with their shapes and dtypes, and nothing else."""
    problems = checkpoints.array_mismatches(
        have,
        want,
        lambda k: tuple(have[k].shape) != tuple(want[k].shape) or have[k].dtype != np.dtype(want[k].dtype),
        lambda k: (
            f"{k} is {have[k].dtype}{list(have[k].shape)}, the model's {np.dtype(want[k].dtype)}{list(want[k].shape)}"
        ),
        "the file",
    )
    if problems:
        raise PretrainedError(f"{where} do not match the config's network: {problems}")


def check_name(name: str) -> str:
    """``name`` when it can name a network (letters, digits, ``_``, ``-``; not starting with ``_``/``-``);
    ValueError otherwise."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValueError(
            f"network name {name!r}: expected letters, digits, '_' and '-', starting with a letter or digit "
            "(it names the file NAME.npz)"
        )
    return name


@contextlib.contextmanager
def _open_npz(path: str) -> Iterator:
    """The open .npz ``path`` (np.load without pickles); PretrainedError naming it when it is not one."""
    try:
        f = np.load(path, allow_pickle=False)  # ValueError: neither a zip nor an .npy (it would need a pickle)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise PretrainedError(
            f"pretrained network file {path} is not a readable .npz (truncated or corrupt?): {type(exc).__name__}"
        ) from None
    if not hasattr(f, "files"):  # a lone .npy array
        raise PretrainedError(f"pretrained network file {path} is a single .npy array, not an .npz")
    with f:
        yield f


def read_meta(path) -> dict:
    """The ``meta`` JSON of a flat file (its SHA-256 not checked); PretrainedError naming the file for a file
    that is not an npejax pretrained network or of another version."""
    path = os.fspath(path)
    with _open_npz(path) as f:
        return _meta(f, path)


def _meta(f, path: str) -> dict:
    try:
        meta = json.loads(str(f[META][()]))
        if not isinstance(meta, dict):
            raise TypeError("not a JSON object")
    except (KeyError, ValueError, TypeError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise PretrainedError(
            f"{path} is not an npejax pretrained network: no readable {META!r} member ({type(exc).__name__})"
        ) from None
    if meta.get("format") != FILE_FORMAT:
        raise PretrainedError(f"{path} is not an npejax pretrained network (format {meta.get('format')!r})")
    if meta.get("version") != FILE_VERSION:
        raise PretrainedError(
            f"{path} is a pretrained network of version {meta.get('version')!r}; this npejax reads version "
            f"{FILE_VERSION} (a newer npejax wrote it?)"
        )
    return meta


def read_network(path, sha256: str | None = None):
    """(config, variables, normalizer) from the flat file ``path`` (module doc), ``variables`` on this
    process's first device. With ``sha256``, the file's digest is checked first: PretrainedError naming the
    file, the expected and the found digest when they differ. PretrainedError for a missing, damaged or
    foreign file, or arrays that do not match the config's network."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise PretrainedError(
            f"pretrained network file {path} does not exist (a package installed without its data files?)"
        )
    if sha256 is not None:
        found = io.sha256_file(path)
        if found != sha256:
            raise PretrainedError(
                f"pretrained network file {path} is damaged or not the registered one: SHA-256 {found}, the "
                f"registry expects {sha256}; reinstall npejax or export the network again"
            )
    with _open_npz(path) as f:
        meta = _meta(f, path)
        try:
            arrays = {k[len(PREFIX) :]: np.asarray(f[k]) for k in f.files if k.startswith(PREFIX)}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise PretrainedError(f"pretrained network file {path}: an array cannot be read ({exc})") from None
    try:
        if not isinstance(meta.get("config"), dict):
            raise ValueError("no config")
        config = checkpoints.config_from_dict(meta["config"])
        abstract = abstract_variables(config)
        normalizer = inputs_lib.Normalizer.from_dict(meta["normalizer"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PretrainedError(f"pretrained network file {path}: its config or normalizer is unusable ({exc})") from None
    _check_arrays(arrays, _flat(abstract), f"the arrays of {path}")
    device = jax.local_devices()[0]
    variables = jax.tree_util.tree_map_with_path(lambda p, _: jax.device_put(arrays[_leaf_name(p)], device), abstract)
    return config, variables, normalizer


# --- export -----------------------------------------------------------------------------------------


QUALITY_KEYS = ("detection", "image", "flux_ratio")  # npejax.cataloging.quality.Thresholds' fields


def check_quality_thresholds(values, where: str) -> dict[str, float]:
    """``values`` (a dict of :data:`QUALITY_KEYS` or a sequence in that order) as a dict of floats; ValueError
    naming ``where`` unless all three are finite and positive and ``flux_ratio`` is below 1."""
    given = values
    if isinstance(values, dict):
        values = [values[k] for k in QUALITY_KEYS] if sorted(values) == sorted(QUALITY_KEYS) else []
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != len(QUALITY_KEYS) or not all(np.isfinite(v) and v > 0 for v in numbers) or numbers[2] >= 1:
        raise ValueError(
            f"{where}: expected the quality flag's thresholds {', '.join(QUALITY_KEYS)} -- three positive numbers, "
            f"flux_ratio below 1 -- got {given!r}"
        )
    return dict(zip(QUALITY_KEYS, numbers))


def quality_thresholds(name: str, directory=None) -> dict[str, float] | None:
    """Network ``name``'s calibrated quality thresholds from its registry entry, or None when it has none;
    PretrainedError for a malformed entry."""
    value = entry(name, directory).get("quality_thresholds")
    if value is None:
        return None
    where = f"{os.path.join(_directory(directory), REGISTRY_FILE)}, network {name!r}, quality_thresholds"
    try:
        return check_quality_thresholds(value, where)
    except ValueError as exc:
        raise PretrainedError(str(exc)) from None


def make_entry(path, name: str, config_name: str | None = None, quality: dict | None = None) -> dict:
    """The registry entry of the flat file ``path`` (read back: its SHA-256, size and meta); ``quality``: its
    calibrated quality thresholds (:func:`check_quality_thresholds`), recorded when given."""
    path = os.fspath(path)
    meta = read_meta(path)
    config = checkpoints.config_from_dict(meta["config"])
    with _open_npz(path) as f:
        parameters = sum(int(np.prod(f[k].shape)) for k in f.files if k.startswith(PREFIX + "params/"))
    network_entry = dict(
        file=os.path.basename(path),
        sha256=io.sha256_file(path),
        bytes=os.path.getsize(path),
        card=f"{name}.md",
        config=config_name,
        variant=str(config.model.variant),
        parameters=parameters,
        training=meta.get("training"),
    )
    if quality is not None:
        network_entry["quality_thresholds"] = check_quality_thresholds(quality, "quality")
    return network_entry


def register(name: str, network_entry: dict, directory=None) -> str:
    """Adds (or replaces) ``name``'s entry in the registry of ``directory``, written atomically; returns its
    path."""
    check_name(name)
    networks = read_registry(directory)
    networks[name] = network_entry
    registry = dict(format=REGISTRY_FORMAT, version=REGISTRY_VERSION, networks=dict(sorted(networks.items())))
    return io.write_json(os.path.join(_directory(directory), REGISTRY_FILE), registry, allow_nan=False)


def export(
    workdir: str,
    name: str,
    which: str = "best",
    directory=None,
    config_name: str | None = None,
    quality: dict | None = None,
) -> dict:
    """Writes ``directory/NAME.npz`` (default: the package's directory) from checkpoint ``which`` of the
    training directory ``workdir`` (:func:`npejax.nn.checkpoints.load_network`: checksums and config verified) and
    registers it; returns the registry entry. ``config_name`` (e.g. ``configs/cpu.py``) is recorded in the
    entry: a config.json does not name its file; ``quality``: the network's calibrated quality thresholds
    (``quality_thresholds`` of the entry)."""
    check_name(name)
    directory = _directory(directory)
    config, variables, normalizer = checkpoints.load_network(workdir, which)
    found = checkpoints.read_meta(workdir, which)
    if found is None:  # load() just restored it: only a concurrent removal gets here
        raise checkpoints.CheckpointError(f"{workdir}: no {which} checkpoint")
    training = training_summary(config, found[1], which)
    path = os.path.join(directory, f"{name}.npz")
    write_network(path, name, config, variables, normalizer, training)
    read_network(path)  # the file just written loads back (names, shapes and dtypes of the config's network)
    network_entry = make_entry(path, name, config_name, quality)
    register(name, network_entry, directory)
    return network_entry
