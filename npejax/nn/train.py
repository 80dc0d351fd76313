"""Training: ``train_and_evaluate(config, workdir)``.

Adam with the paper's schedule (:mod:`npejax.nn.state`); the jit-compiled train step of
:mod:`npejax.nn.steps`, its batch sharded over a mesh of all local devices (data parallel; parameters
replicated); batch-norm statistics; random 90-degree rotations and flips with the tile catalog transformed
consistently (``train.augment``); validation NLL on a fixed set every epoch; early stopping
(``train.patience`` epochs); Orbax checkpoints of the latest epoch and of the best validation loss in
``workdir/checkpoints/{latest,best}`` (:mod:`npejax.nn.checkpoints`). Run again in the same workdir,
training resumes after the last saved epoch.

Data come from the on-the-fly simulator -- an epoch is then ``train.images_per_epoch // train.batch_size``
steps, the simulator's batches continuing where the last epoch stopped -- or from cached datasets written
by ``npejax.simulate`` (``data.train_dir`` / ``data.val_dir``; an epoch is then one shuffled pass over the
training set, ``len(train set) // train.batch_size`` steps). The validation set is ``data.val_dir`` or
``data.num_val`` simulated images (whole batches of ``train.eval_batch_size``).

Files in ``workdir``: ``config.json`` (the config), ``metrics.csv`` (one row per epoch: ``epoch``,
``step``, ``train_nll``, ``val_nll`` (mean per image), ``learning_rate``, ``images_per_s``, ``seconds``),
``checkpoints/``. The pieces of the loop: :func:`setup_data`, :func:`restore_or_init`,
:func:`run_epoch`, :func:`record_epoch`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from typing import Callable, Iterator

import jax
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from npejax import datasets as data_lib
from npejax import io
from npejax.nn import checkpoints
from npejax.nn import inputs as inputs_lib
from npejax.nn import model as model_lib
from npejax.nn import state as state_lib
from npejax.nn import steps as steps_lib
from npejax.sim import pipeline

# --- data ------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TrainingData:
    """Where training and validation batches come from, and the epoch length in steps."""

    batch_size: int
    steps_per_epoch: int
    train_spec: pipeline.SimulationSpec  # on-the-fly training batches (also the normalizer's images)
    val_spec: pipeline.SimulationSpec  # simulated validation batches (batch size train.eval_batch_size)
    train_ds: data_lib.Dataset | None  # cached training set, or None: simulate
    val_ds: data_lib.Dataset | None


def steps_per_epoch(config, train_ds: data_lib.Dataset | None = None) -> int:
    """Steps of one epoch: ``len(train_ds) // train.batch_size`` for a cached training set, else
    ``train.images_per_epoch // train.batch_size``. ValueError when that is 0."""
    batch_size = int(config.train.batch_size)
    if train_ds is not None:  # one epoch = one shuffled pass over the cached training set
        steps = len(train_ds) // batch_size
        if steps == 0:
            raise ValueError(f"data.train_dir {config.data.train_dir} holds {len(train_ds)} images, "
                             f"fewer than train.batch_size={batch_size}")
        return steps
    steps = int(config.train.images_per_epoch) // batch_size
    if steps == 0:
        raise ValueError(f"train.images_per_epoch={config.train.images_per_epoch} is smaller than "
                         f"train.batch_size={batch_size}")
    return steps


def setup_data(config, num_devices: int) -> TrainingData:
    """Opens the cached datasets (if any) and sets the simulation specs of the train and val splits."""
    batch_size = int(config.train.batch_size)
    if batch_size % num_devices:
        raise ValueError(f"train.batch_size={batch_size} must be a multiple of the {num_devices} local devices")
    train_ds = data_lib.load(config.data.train_dir) if config.data.train_dir else None
    val_ds = data_lib.load(config.data.val_dir) if config.data.val_dir else None
    train_spec = pipeline.SimulationSpec.from_config(config, seed=data_lib.split_seed(config.seed, "train"),
                                                     batch_size=batch_size)
    val_spec = dataclasses.replace(train_spec, seed=data_lib.split_seed(config.seed, "val"),
                                   batch_size=int(config.train.eval_batch_size))
    return TrainingData(batch_size, steps_per_epoch(config, train_ds), train_spec, val_spec, train_ds, val_ds)


def fit_normalizer(spec: pipeline.SimulationSpec, num_images: int) -> inputs_lib.Normalizer:
    """Statistics of ``num_images`` training-prior images (batch 2**40 of the training seed, never trained on)."""
    batch = pipeline.simulate_batch(dataclasses.replace(spec, batch_size=num_images), 2**40)
    return inputs_lib.Normalizer.fit(batch["images"], batch["background"], batch["psf_params"])


def validation_batches(config, data: TrainingData, sharding) -> list[dict]:
    """The fixed validation set on the devices: whole batches of ``train.eval_batch_size``."""
    batch_size = data.val_spec.batch_size
    if data.val_ds is not None:
        batches = [steps_lib.to_device(b, sharding) for b in data.val_ds.batches(batch_size, drop_remainder=True)]
    else:
        count = max(1, int(config.data.num_val) // batch_size)
        batches = [steps_lib.to_device(pipeline.simulate_batch(data.val_spec, i), sharding) for i in range(count)]
    if not batches:
        raise ValueError(f"the validation set has fewer images than train.eval_batch_size={batch_size}")
    return batches


@contextlib.contextmanager
def training_batches(config, data: TrainingData, start_epoch: int, end_epoch: int,
                     sharding) -> Iterator[Callable[[int], Iterator[dict]] | None]:
    """Yields ``epoch -> iterator of device batches`` (None when no epoch is left to train).

    Simulated batches come from a :class:`npejax.sim.pipeline.Simulator` started at batch
    ``start_epoch * steps_per_epoch`` (stopped on exit); cached ones are reshuffled each epoch
    (seed ``config.seed + epoch``).
    """
    put = lambda batch: steps_lib.to_device(batch, sharding)
    if start_epoch >= end_epoch:  # nothing left to train: no simulator workers
        yield None
    elif data.train_ds is None:
        with pipeline.Simulator(data.train_spec, num_workers=int(config.simulator.num_workers),
                                prefetch=int(config.simulator.prefetch), start=start_epoch * data.steps_per_epoch,
                                transform=put) as simulator:
            yield lambda epoch: iter(simulator)
    else:
        yield lambda epoch: (put(b) for b in data.train_ds.batches(
            data.batch_size, shuffle=True, seed=config.seed + epoch, drop_remainder=True))


# --- restore or init -------------------------------------------------------------------------------

@dataclasses.dataclass
class Progress:
    """What the loop carries from epoch to epoch (and a checkpoint's ``meta`` saves)."""

    epoch: int = 0  # epochs completed
    best_val: float = float("inf")  # lowest validation NLL so far
    bad_epochs: int = 0  # epochs since it last improved
    history: list[dict] = dataclasses.field(default_factory=list)  # the metrics.csv rows

    def update(self, row: dict, val_loss: float) -> bool:
        """Records a finished epoch's row; returns whether ``val_loss`` improved on the best."""
        improved = val_loss < self.best_val
        self.best_val, self.bad_epochs = (val_loss, 0) if improved else (self.best_val, self.bad_epochs + 1)
        self.epoch = row["epoch"]
        self.history.append(row)
        return improved


def config_dict(config: ml_collections.ConfigDict) -> dict:
    """The config as plain JSON values (saved as config.json and in every checkpoint)."""
    return json.loads(config.to_json_best_effort())


def write_metrics(workdir: str, history: list[dict]) -> None:
    """``workdir/metrics.csv``: one row per epoch of ``history`` (nothing while it is empty)."""
    if history:
        io.write_csv(os.path.join(workdir, checkpoints.METRICS_FILE), history)


def restore_or_init(config, net, manager, data: TrainingData, mesh):
    """(state, normalizer, progress): restored from the latest checkpoint in ``manager``, or fresh (state
    from ``jax.random.key(config.seed)``, normalizer fitted on training-prior images); replicated on ``mesh``."""
    replicated = steps_lib.replicated(mesh)
    state = state_lib.create_state(config, net, data.steps_per_epoch, jax.random.key(config.seed))
    state = jax.device_put(state, replicated)
    if manager.latest_step() is None:
        return state, fit_normalizer(data.train_spec, int(config.train.normalizer_images)), Progress()
    state, meta = checkpoints.restore(manager, state)
    state = jax.device_put(state, replicated)
    progress = Progress(meta["epoch"], meta["best_val"], meta["bad_epochs"], meta["history"])
    logging.info("resuming after epoch %d", progress.epoch)
    print(f"Resuming after epoch {progress.epoch} (best validation NLL {progress.best_val:.2f})", flush=True)
    return state, inputs_lib.Normalizer.from_dict(meta["normalizer"]), progress


# --- one epoch -------------------------------------------------------------------------------------

def run_epoch(config, data: TrainingData, state, train_step, eval_step, batches: Iterator[dict],
              val_batches: list[dict], key, epoch: int):
    """Trains ``data.steps_per_epoch`` steps on ``batches`` and validates; returns (state, metrics row,
    mean training NLL, validation NLL per image)."""
    t0 = time.time()
    losses = []
    bar = tqdm(range(data.steps_per_epoch), desc=f"epoch {epoch + 1}/{config.train.num_epochs}", leave=False,
               disable=not config.train.progress)
    for _ in bar:
        state, loss = train_step(state, next(batches), key)
        losses.append(loss)
        if len(losses) % 10 == 0:
            bar.set_postfix(loss=f"{float(loss):.1f}",
                            img_s=f"{len(losses) * data.batch_size / (time.time() - t0):.0f}")
    train_loss = float(np.mean(jax.device_get(losses)))
    train_seconds = time.time() - t0
    num_val_images = sum(b["images"].shape[0] for b in val_batches)
    val_loss = float(sum(float(eval_step(state, b)) for b in val_batches) / num_val_images)
    learning_rate = state_lib.learning_rate_schedule(config, data.steps_per_epoch)(int(state.step))
    row = dict(epoch=epoch + 1, step=int(state.step), train_nll=round(train_loss, 4), val_nll=round(val_loss, 4),
               learning_rate=float(learning_rate),
               images_per_s=round(data.steps_per_epoch * data.batch_size / train_seconds, 1),
               seconds=round(time.time() - t0, 1))
    return state, row, train_loss, val_loss


def record_epoch(workdir: str, managers: checkpoints.Managers, config, progress: Progress, state,
                 normalizer: inputs_lib.Normalizer, row: dict, train_loss: float, val_loss: float) -> None:
    """Adds ``row`` to the history and metrics.csv, prints it, and checkpoints ``state`` as the latest
    (and as the best when ``val_loss`` improved), checkpoint step = epochs completed."""
    improved = progress.update(row, val_loss)
    write_metrics(workdir, progress.history)
    print(f"epoch {row['epoch']:3d}  train NLL {train_loss:9.2f}  val NLL {val_loss:9.2f}"
          f"{' *' if improved else '  '}  {row['images_per_s']:.0f} images/s", flush=True)
    meta = dict(epoch=progress.epoch, best_val=progress.best_val, bad_epochs=progress.bad_epochs,
                history=list(progress.history), normalizer=normalizer.to_dict(), variant=config.model.variant,
                config=config_dict(config), val_nll=val_loss)
    checkpoints.save(managers.latest, progress.epoch, state, meta)
    if improved:
        checkpoints.save(managers.best, progress.epoch, state, meta)


# --- the loop --------------------------------------------------------------------------------------

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains per ``config`` in ``workdir`` (resuming if it holds checkpoints).

    Returns a summary: epochs run, best validation NLL, whether it stopped early, the per-epoch history,
    the workdir, and the final ``state`` and ``normalizer``.
    """
    os.makedirs(workdir, exist_ok=True)
    inputs_lib.check_variant(config.model.variant)
    mesh = steps_lib.data_mesh()
    data = setup_data(config, mesh.size)
    net = model_lib.from_config(config)
    patience, end_epoch = int(config.train.patience), int(config.train.num_epochs)
    with checkpoints.managers(workdir) as managers:  # closed (pending saves finished) even on an error
        state, normalizer, progress = restore_or_init(config, net, managers.latest, data, mesh)
        write_metrics(workdir, progress.history)  # a resumed run drops rows of epochs not checkpointed
        io.write_json(os.path.join(workdir, checkpoints.CONFIG_FILE), config_dict(config))
        train_step, eval_step = steps_lib.jit_steps(normalizer, mesh, config.model.variant, config.train.augment)
        sharding = steps_lib.batch_sharding(mesh)
        val_batches = validation_batches(config, data, sharding)
        key = jax.random.key(config.seed + 1)
        if progress.bad_epochs >= patience:  # a resumed run that had already stopped early
            end_epoch = progress.epoch
            print(f"already stopped early after epoch {progress.epoch} (no improvement in {progress.bad_epochs} "
                  "epochs)", flush=True)
        with training_batches(config, data, progress.epoch, end_epoch, sharding) as epoch_batches:
            for epoch in range(progress.epoch, end_epoch):
                state, row, *losses = run_epoch(config, data, state, train_step, eval_step, epoch_batches(epoch),
                                                val_batches, key, epoch)
                record_epoch(workdir, managers, config, progress, state, normalizer, row, *losses)
                if progress.bad_epochs >= patience:
                    print(f"early stopping: no improvement in {progress.bad_epochs} epochs")
                    break
    summary = dict(epochs=len(progress.history), best_val_nll=progress.best_val,
                   stopped_early=progress.bad_epochs >= patience, history=progress.history,
                   workdir=os.path.abspath(workdir), state=state, normalizer=normalizer)
    if progress.history:
        first, last = progress.history[0]["val_nll"], progress.history[-1]["val_nll"]
        print(f"validation NLL: {first:.2f} (epoch 1) -> {last:.2f} (epoch {progress.history[-1]['epoch']}), "
              f"best {progress.best_val:.2f}; checkpoints in {summary['workdir']}/checkpoints")
    return summary
