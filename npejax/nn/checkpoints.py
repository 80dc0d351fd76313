"""Orbax checkpoints of a training directory, and loading a trained network from one.

Layout of a workdir (written by :func:`npejax.nn.train.train_and_evaluate`)::

    config.json              the training config (ml_collections as JSON)
    metrics.csv              one row per epoch
    checkpoints/latest/N/    the state after epoch N, the last epoch done (one kept)
    checkpoints/best/N/      the state of the epoch with the lowest validation NLL (one kept)

Each checkpoint has two items: ``state`` (:class:`npejax.nn.state.TrainState`: step, parameters,
batch-norm statistics, Adam moments) and ``meta`` (JSON: ``epoch``, ``best_val``, ``bad_epochs``,
``history`` (the metrics rows so far), ``normalizer`` (:meth:`npejax.nn.inputs.Normalizer.to_dict`),
``variant``, ``config``, ``val_nll``). The checkpoint step is the number of epochs completed. Orbax writes
a checkpoint to a temporary directory and renames it when complete.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Iterator, NamedTuple

import ml_collections
import orbax.checkpoint as ocp

from npejax.nn import inputs as inputs_lib
from npejax.nn import model as model_lib
from npejax.nn import state as state_lib

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
WHICH = ("best", "latest")
ITEMS = ("state", "meta")


class CheckpointError(ValueError):
    """A workdir without a usable npejax checkpoint."""


class Managers(NamedTuple):
    latest: ocp.CheckpointManager
    best: ocp.CheckpointManager


@contextlib.contextmanager
def managers(workdir: str) -> Iterator[Managers]:
    """The Orbax managers of ``workdir/checkpoints/{latest,best}`` (one checkpoint kept in each), closed on
    exit -- after their pending saves finish -- also when the body raises."""
    root = os.path.join(os.path.abspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
    with contextlib.ExitStack() as stack:
        opened = {}
        for name in ("latest", "best"):
            manager = ocp.CheckpointManager(os.path.join(root, name), item_names=ITEMS, options=options)
            stack.callback(manager.close)  # close() waits for outstanding saves
            opened[name] = manager
        yield Managers(**opened)


def save(manager: ocp.CheckpointManager, epoch: int, state: state_lib.TrainState, meta: dict) -> None:
    """Saves (asynchronously) ``state`` and ``meta`` as checkpoint step ``epoch``."""
    manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                meta=ocp.args.JsonSave(meta)))


def restore(manager: ocp.CheckpointManager, abstract_state: state_lib.TrainState, step: int | None = None):
    """(state, meta) of ``step`` (default: the latest) from an Orbax manager."""
    step = manager.latest_step() if step is None else step
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                             meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The training config saved in ``workdir/config.json`` (CheckpointError if there is none)."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"{workdir} is not an npejax training directory: no config.json "
                              "(written by python -m npejax.main)")
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    with config.unlocked():  # JSON turned the stage tuples into lists
        config.model.stages = tuple(tuple(int(v) for v in s) for s in config.model.stages)
    return config


def load(workdir: str, which: str = "best"):
    """(config, variables, normalizer) of ``workdir``'s ``best`` or ``latest`` checkpoint, for prediction;
    ``variables`` = {"params", "batch_stats"}. CheckpointError for a missing or foreign directory or a
    checkpoint that does not match the saved config's model."""
    workdir = os.path.abspath(workdir)
    if not os.path.isdir(workdir):
        raise CheckpointError(f"workdir {workdir} does not exist")
    if which not in WHICH:
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    config_path = os.path.join(workdir, CONFIG_FILE)
    ckpt_dir = os.path.join(workdir, "checkpoints", which)
    if not os.path.isfile(config_path) or not os.path.isdir(ckpt_dir):
        raise CheckpointError(f"{workdir} is not an npejax training directory: expected config.json and "
                              f"checkpoints/{which}/ (written by python -m npejax.main)")
    config = load_config(workdir)
    abstract = state_lib.abstract_state(config, model_lib.from_config(config))
    with managers(workdir) as mgrs:
        manager = getattr(mgrs, which)
        if manager.latest_step() is None:
            raise CheckpointError(f"no checkpoint in {ckpt_dir}")
        try:
            state, meta = restore(manager, abstract)
        except Exception as exc:  # structure mismatch: a checkpoint of another model
            raise CheckpointError(f"checkpoint in {ckpt_dir} does not match the model in {config_path}: "
                                  f"{exc}") from exc
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return config, variables, inputs_lib.Normalizer.from_dict(meta["normalizer"])
