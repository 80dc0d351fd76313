"""The rules of an npejax config, in one place. Its values -- every default, and what each key means -- are in
``configs/default.py`` alone (every config file builds on it); a trained network's config is read back from
its ``config.json`` (:func:`npejax.nn.checkpoints.load_config`).

What the code needs to know about a config beyond its values:

* **Valid values.** :func:`validate` checks a training config before any work and :func:`check_model` its
  ``model`` and ``posterior`` sections (also whenever a network is built: :func:`npejax.nn.model.from_config`);
  a bad value is a ValueError naming the key, the value and what would be right. The enumerated keys take the
  values of :data:`VARIANTS`, :data:`DTYPES`, :data:`CONTEXTS`, :data:`COLOURS` and :data:`DECODES`.
* **Saved configs.** :data:`KEYS` holds one :class:`KeyRule` per key (or section) that a saved config treats
  specially: ``resumable`` -- it may differ between a checkpoint and the config that resumes training or
  predicts with it (:data:`RESUMABLE_KEYS`: the training length, display, how batches reach the devices,
  prediction and evaluation settings; none changes what an epoch computes) -- and ``before``, its value in
  configs saved before the key existed, chosen to reproduce what such a config trained. :func:`upgrade` fills
  them into every saved config when it is read (config.json, a checkpoint's meta), so that no code reads a
  config with a fallback value.
* **Saving and comparing.** :func:`to_json` is the one conversion of a config to JSON values (config.json, a
  checkpoint's meta, a dataset's manifest); :func:`differences` lists the dotted keys whose values differ
  between two such dicts, and :func:`saved_differences` what resuming and loading refuse: a saved config
  (upgraded) against the current one, resumable keys left out.
* **Config files.** :func:`from_file` reads a config file (``configs/*.py`` or a user's own, any directory)
  into a ConfigDict as ``--config FILE`` does, overrides applied: ``configs/`` is the repository's folder of
  config files, not an installed module, so ``from configs import psf_aware`` works only where ``configs`` is
  on ``sys.path``; :func:`add_config_root` puts it there for a file given by path.
* **Derived values.** :func:`simulate_workers` (``data.simulate_workers``, -1: one per CPU) and
  :func:`eval_section` (a config's ``eval`` section; for no config, that of configs saved before the section
  existed).

It imports nothing from npejax but :mod:`npejax.schema`, so every part can use it (a dataset manifest records
the config it was simulated with).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import math
import os
import sys
from typing import Any

import ml_collections

from npejax.schema import FIELD_PRIORS

__all__ = [
    "VARIANTS",
    "DTYPES",
    "CONTEXTS",
    "COLOURS",
    "DECODES",
    "SIM_BACKENDS",
    "KeyRule",
    "KEYS",
    "RESUMABLE_KEYS",
    "check_variant",
    "check_model",
    "validate",
    "upgrade",
    "to_json",
    "differences",
    "saved_differences",
    "artifacts_enabled",
    "simulate_workers",
    "eval_section",
    "add_config_root",
    "from_file",
]

VARIANTS = ("single_field", "psf_unaware", "psf_aware")  # model.variant: the network's inputs (npejax.nn.inputs)
DTYPES = ("float32", "bfloat16")  # model.dtype: the activations' dtype (npejax.nn.model)
CONTEXTS = ("independent", "checkerboard")  # posterior.context (npejax.nn.model)
COLOURS = (2, 4)  # posterior.colours of a checkerboard
DECODES = ("tile", "group")  # posterior.decode: how a catalog is read (npejax.nn.posterior.merge_split_sources)
SIM_BACKENDS = ("galsim", "jax")  # simulator.backend: the renderer (npejax.sim.render, npejax.sim.jax_render)


# --- keys that saved configs treat specially -----------------------------------------------------------------

_ALWAYS = object()  # KeyRule.before of a key that every saved config has


@dataclasses.dataclass(frozen=True)
class KeyRule:
    """What a saved config does with a key (or with every key of a section): ``resumable``: it may differ between
    a checkpoint and the config that resumes or predicts with it; ``before``: its value in configs saved before
    it existed (filled in by :func:`upgrade`); ``why``: the reason, or where the key is explained."""

    resumable: bool = False
    before: Any = _ALWAYS
    why: str = ""


# The order of the first three is that of the resume error's "Only ... may change" (npejax.nn.train.check_resume).
KEYS = {
    "train.num_epochs": KeyRule(resumable=True, why="the training length"),
    "train.patience": KeyRule(resumable=True, why="the training length (early stopping)"),
    "train.progress": KeyRule(resumable=True, why="display"),
    "train.figure_every": KeyRule(resumable=True, why="display (TensorBoard figures)"),
    "simulator.num_workers": KeyRule(resumable=True, why="a simulated batch depends only on its index"),
    "simulator.prefetch": KeyRule(resumable=True, why="as simulator.num_workers"),
    "simulator.backend": KeyRule(before="galsim", why="GalSim, the only renderer before npejax.sim.jax_render"),
    "data.num_train": KeyRule(resumable=True, why="a dataset size (npejax.simulate, data.simulate_first)"),
    "data.num_test": KeyRule(resumable=True, why="the test set: npejax.simulate, npejax.experiment"),
    "data.shard_size": KeyRule(resumable=True, why="the layout of a cached dataset, not its images"),
    "data.on_device": KeyRule(resumable=True, why="the same batches and states, gathered on the devices"),
    "train.steps_per_dispatch": KeyRule(resumable=True, why="the same states and losses, K steps per jitted call"),
    "distributed": KeyRule(resumable=True, why="the processes that train (process_id differs between them)"),
    "posterior.decode": KeyRule(resumable=True, before="tile", why="prediction only; greedy per tile before"),
    "data.simulate_workers": KeyRule(resumable=True, why="the processes of data.simulate_first, not its images"),
    "train.time_limit_minutes": KeyRule(resumable=True, before=0.0, why="when a run stops to be resumed"),
    "eval": KeyRule(resumable=True, why="evaluation only (npejax.evaluation.settings)"),
    # the evaluation's settings before configs had an eval section (they were the commands' defaults)
    "eval.num_bootstrap": KeyRule(before=200),
    "eval.num_bins": KeyRule(before=10),
    "eval.ceiling_galaxies": KeyRule(before=200),
    "eval.baseline": KeyRule(before=True),
    "eval.snr": KeyRule(before=True),
    "eval.seed": KeyRule(before=0),
    # network keys, at the values of the networks trained before them
    "posterior.context": KeyRule(before="independent", why="the only posterior before the checkerboard"),
    "posterior.colours": KeyRule(before=2),
    "posterior.context_width": KeyRule(before=16),
    "model.stem_kernel": KeyRule(before=5, why="the 5 x 5 first stem block"),
    "model.aperture_flux": KeyRule(before=False, why="no aperture-flux term"),
    "model.mask_channel": KeyRule(before=False, why="no mask input channel"),
    "train.ema_decay": KeyRule(before=0.0, why="no moving average"),
}
RESUMABLE_KEYS = tuple(key for key, rule in KEYS.items() if rule.resumable)


def _before(section: str) -> dict:
    """``{key: value}`` of the keys of ``section`` in configs saved before they existed."""
    prefix = section + "."
    return {
        key[len(prefix) :]: copy.deepcopy(rule.before)
        for key, rule in KEYS.items()
        if key.startswith(prefix) and rule.before is not _ALWAYS
    }


def upgrade(saved: dict) -> dict:
    """A saved config (plain dict, e.g. config.json) with the keys it lacks filled in at their ``before`` values of
    :data:`KEYS` (a new dict; ``{}`` or ``None`` returned as given)."""
    if not saved or not isinstance(saved, dict):
        return saved
    saved = copy.deepcopy(saved)
    for dotted, rule in KEYS.items():
        if rule.before is _ALWAYS:
            continue
        *parents, leaf = dotted.split(".")
        node = saved
        for name in parents:
            node = node.setdefault(name, {})
        node.setdefault(leaf, copy.deepcopy(rule.before))
    return saved


# --- JSON and comparison -------------------------------------------------------------------------------------


def to_json(config) -> dict | None:
    """A config as plain JSON values (tuples as lists): a ``ConfigDict`` (``to_json_best_effort``), another mapping,
    or None (returned as is). What config.json, a checkpoint's meta and a dataset's manifest hold."""
    if config is None:
        return None
    if hasattr(config, "to_json_best_effort"):
        return json.loads(config.to_json_best_effort())
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    return json.loads(json.dumps(config, default=str))


def differences(old, new, ignore=(), path: str = "") -> list[str]:
    """``["key: old -> new", ...]`` for every dotted key whose value differs between two JSON dicts (``path`` the
    dotted key of the two; keys of ``ignore`` and those below them left out; a missing key shows as
    ``<absent>``), in sorted key order."""
    out = []

    def walk(a, b, path):
        if path in ignore:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key, "<absent>"), b.get(key, "<absent>"), f"{path}.{key}" if path else key)
        elif a != b:
            out.append(f"{path}: {a!r} -> {b!r}")

    walk(old, new, path)
    return out


def saved_differences(saved: dict | None, config) -> list[str]:
    """``["key: saved -> now", ...]``: how ``config`` differs from a saved config (upgraded first) in anything but
    :data:`RESUMABLE_KEYS` -- what resuming training and loading a checkpoint refuse."""
    saved, now = upgrade(saved or {}), to_json(config)
    if isinstance(now, dict) and "artifacts" not in saved and not artifacts_enabled(now.get("artifacts")):
        # configs saved before the artifacts section simulated none: the same as a section with every one off
        saved = dict(saved, artifacts=now.get("artifacts"))
    return differences(saved, now, ignore=RESUMABLE_KEYS)


def artifacts_enabled(section) -> list[str]:
    """The artifacts of real frames that a config's ``artifacts`` section (ConfigDict, dict or None) switches on."""
    if not section:
        return []
    return sorted(name for name, value in dict(section).items() if dict(value).get("enabled"))


# --- derived values ------------------------------------------------------------------------------------------


def simulate_workers(config) -> int:
    """The processes of ``data.simulate_first``: ``data.simulate_workers``, -1 meaning one per CPU (0, as for
    ``simulator.num_workers``: none, the images rendered in a background thread of the training process)."""
    workers = int(config.data.simulate_workers)
    return (os.cpu_count() or 1) if workers == -1 else workers


def eval_section(config) -> ml_collections.ConfigDict:
    """The ``eval`` section of ``config``; for None (an evaluation of catalogs alone, without a network or
    config), that of configs saved before the section existed (:data:`KEYS`: the values npejax used then)."""
    if config is None:
        return ml_collections.ConfigDict(_before("eval"))
    return config.eval


# --- valid values --------------------------------------------------------------------------------------------


def check_variant(variant: str) -> None:
    """ValueError unless ``variant`` is one of :data:`VARIANTS` (``model.variant``)."""
    if variant not in VARIANTS:
        raise ValueError(f"model.variant must be one of {VARIANTS}, got {variant!r}")


def check_model(config) -> None:
    """ValueError naming the key for a ``model`` or ``posterior`` value that builds no network: an unknown
    ``model.dtype``, ``posterior.context``, ``posterior.colours`` or ``posterior.decode``, a
    ``posterior.context_width`` < 1, an even ``model.stem_kernel``, or stages whose strides do not multiply to
    ``tile_size`` (the network's output grid is the tile grid)."""
    if config.model.dtype not in DTYPES:
        raise ValueError(f"model.dtype must be 'float32' or 'bfloat16', got {config.model.dtype!r}")
    stages = tuple(tuple(int(v) for v in s) for s in config.model.stages)
    post = config.posterior
    if post.context not in CONTEXTS:
        raise ValueError(f"posterior.context must be one of {CONTEXTS}, got {post.context!r}")
    if int(post.colours) not in COLOURS:
        raise ValueError(f"posterior.colours must be 2 (checkerboard) or 4 (2 x 2 blocks), got {post.colours!r}")
    if str(post.decode) not in DECODES:
        raise ValueError(f"posterior.decode must be one of {DECODES}, got {post.decode!r}")
    if int(post.context_width) < 1:
        raise ValueError(f"posterior.context_width must be >= 1, got {post.context_width!r}")
    if int(config.model.stem_kernel) < 1 or int(config.model.stem_kernel) % 2 == 0:
        raise ValueError(f"model.stem_kernel must be an odd number >= 1, got {config.model.stem_kernel!r}")
    stride = math.prod(s for _, _, s in stages)
    if stride != config.tile_size:
        raise ValueError(f"model stages stride {stride} must equal tile_size {config.tile_size}")


def validate(config, num_devices: int) -> None:
    """Refuses a training config's nonsense values before any work: ValueError naming the key, its value and what
    would be right. ``num_devices``: every process's devices (the batch sizes must be multiples of it). The
    cached datasets are checked against the config when they are opened
    (:func:`npejax.nn.input_pipeline.setup_data`)."""
    num_devices = int(num_devices)
    check_variant(config.model.variant)
    if config.fields.prior not in FIELD_PRIORS:
        raise ValueError(f"fields.prior must be one of {FIELD_PRIORS}, got {config.fields.prior!r}")
    if config.simulator.backend not in SIM_BACKENDS:
        raise ValueError(f"simulator.backend must be one of {SIM_BACKENDS}, got {config.simulator.backend!r}")
    if config.simulator.backend == "jax" and artifacts_enabled(config.get("artifacts")):
        raise ValueError(
            f"simulator.backend = 'jax' with artifacts {artifacts_enabled(config.get('artifacts'))} on: the JAX "
            "renderer draws no artifacts of real frames; turn them off or use simulator.backend = 'galsim'"
        )
    if int(config.tile_size) < 1 or int(config.image_size) % int(config.tile_size):
        raise ValueError(f"image_size={config.image_size} must be a positive multiple of tile_size={config.tile_size}")
    check_model(config)
    train = config.train
    for key in ("batch_size", "eval_batch_size"):
        value = int(train[key])
        if value < 1:
            raise ValueError(f"train.{key}={value}: must be >= 1 (a multiple of the {num_devices} device(s))")
        if value % num_devices:
            lower = value - value % num_devices
            hint = f"{lower} or {lower + num_devices}" if lower else f"{num_devices}"
            raise ValueError(f"train.{key}={value} must be a multiple of the {num_devices} devices (e.g. {hint})")
    for key, what in (
        ("num_epochs", "0 epochs: nothing to train"),
        ("patience", "training would stop after its first epoch"),
        ("normalizer_images", "no images to fit the input normalizer on"),
    ):
        if int(train[key]) < 1:
            raise ValueError(f"train.{key}={train[key]}: must be >= 1 ({what})")
    if int(train.figure_every) < 0:
        raise ValueError(f"train.figure_every={train.figure_every}: must be >= 0 (0: no figures)")
    for key in ("learning_rate", "lr_decay"):
        if not (math.isfinite(float(train[key])) and float(train[key]) > 0):
            raise ValueError(f"train.{key}={train[key]}: must be a positive number")
    if int(train.lr_decay_epoch) < 0:
        raise ValueError(f"train.lr_decay_epoch={train.lr_decay_epoch}: must be >= 0")
    if not 0.0 <= float(train.ema_decay) < 1.0:
        raise ValueError(f"train.ema_decay={train.ema_decay}: must be in [0, 1) (0: no moving average)")
    if not (math.isfinite(float(train.time_limit_minutes)) and float(train.time_limit_minutes) >= 0):
        raise ValueError(f"train.time_limit_minutes={train.time_limit_minutes}: must be >= 0 (0: no time limit)")
    _check_mask_channel(config)
    _check_input_path(config)
    if not config.data.train_dir and int(train.images_per_epoch) < int(train.batch_size):
        raise ValueError(
            f"train.images_per_epoch={train.images_per_epoch} is smaller than train.batch_size="
            f"{train.batch_size}: an epoch must hold at least one batch"
        )
    if not config.data.val_dir and int(config.data.num_val) < int(train.eval_batch_size):
        raise ValueError(
            f"train.eval_batch_size={train.eval_batch_size} is larger than the validation set "
            f"(data.num_val={config.data.num_val}): give data.num_val >= train.eval_batch_size"
        )
    if int(config.data.simulate_workers) < -1:
        raise ValueError(
            f"data.simulate_workers={config.data.simulate_workers}: must be >= 0, or -1 (one process per CPU)"
        )


def _check_mask_channel(config) -> None:
    """Masked blocks (``artifacts.masked``) and the mask channel must agree: NaN-filled blocks need the channel
    (the input normalizer refuses NaN pixels without it), and zero-filled ones would never reach it."""
    masked = config.get("artifacts", {}).get("masked", {})
    if not masked.get("enabled", False):
        return
    fill, channel = str(masked.get("fill", "zero")), bool(config.model.get("mask_channel", False))
    if fill == "nan" and not channel:
        raise ValueError(
            'artifacts.masked.fill="nan" with model.mask_channel=False: the network would read NaN pixels; expected '
            'model.mask_channel=True (or fill "zero")'
        )
    if fill != "nan" and channel:
        raise ValueError(
            f"artifacts.masked.fill={fill!r} with model.mask_channel=True: the mask channel marks NaN pixels, so "
            'zero-filled blocks would never reach it; expected artifacts.masked.fill="nan"'
        )


def _check_input_path(config) -> None:
    """``train.steps_per_dispatch`` an integer >= 1, and ``data.on_device`` only with a cached training set to hold
    (``data.train_dir`` or ``data.simulate_first``)."""
    per_dispatch = config.train.steps_per_dispatch
    if isinstance(per_dispatch, bool) or int(per_dispatch) != per_dispatch or per_dispatch < 1:
        raise ValueError(
            f"train.steps_per_dispatch={per_dispatch!r}: must be an integer >= 1 (train steps per jitted call)"
        )
    if config.data.on_device and not (config.data.train_dir or config.data.simulate_first):
        raise ValueError(
            "data.on_device=True needs a cached training set to put on the devices: give "
            "data.train_dir or data.simulate_first=True (on-the-fly batches are made on the host)"
        )


# --- config files ------------------------------------------------------------------------------------------------


def add_config_root(path: str | os.PathLike) -> None:
    """Lets a config file import its siblings (``configs/cpu.py`` does ``from configs import psf_aware``) from
    any working directory: when the file's folder is a package (has ``__init__.py``), puts that folder's parent
    first on ``sys.path``. ``path`` may carry ml_collections' ``:ARG`` suffix."""
    directory = os.path.dirname(os.path.abspath(os.fspath(path).split(":", 1)[0]))
    if os.path.exists(os.path.join(directory, "__init__.py")):
        root = os.path.dirname(directory)
        if root not in sys.path:
            sys.path.insert(0, root)


def from_file(path: str | os.PathLike, overrides: dict | None = None) -> ml_collections.ConfigDict:
    """The config of a config file, as ``--config FILE`` gives it: the file's ``get_config()`` (``FILE:ARG``
    calls ``get_config(ARG)``, as ml_collections' config flags do), then ``overrides`` (``{"train.batch_size":
    16, ...}``, dotted keys) applied; the result is locked like the commands' (an unknown key is an error).

    Works from any working directory (:func:`add_config_root`). A missing file is FileNotFoundError and a file
    without ``get_config`` or an unknown override key ValueError, each naming the file.
    """
    text = os.fspath(path)
    file, _, arg = text.partition(":")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"config file {file!r}: no such file")
    add_config_root(file)
    name = "npejax_config_" + os.path.splitext(os.path.basename(file))[0]
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
        raise ValueError(f"config file {file!r}: defines no get_config()")
    config = module.get_config(arg) if arg else module.get_config()
    config.lock()
    for key, value in (overrides or {}).items():
        node, *parts = [config, *key.split(".")]
        try:
            for part in parts[:-1]:
                node = node[part]
            node[parts[-1]] = value
        except (KeyError, AttributeError) as e:
            raise ValueError(f"config file {file!r}: unknown key {key!r} in overrides") from e
    return config
