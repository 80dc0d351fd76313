"""Training: ``train_and_evaluate(config, workdir)``.

Adam with the paper's schedule (:mod:`npejax.nn.state`); the jit-compiled train step of
:mod:`npejax.nn.steps`, its batch sharded over a mesh of all devices (data parallel; parameters replicated;
with several processes, JAX's multi-process runtime, every process's devices: :mod:`npejax.nn.distributed` says
which rows each process reads and what process 0 alone writes); batch-norm statistics; random 90-degree
rotations and flips with the tile catalog transformed consistently (``train.augment``); validation NLL on a
fixed set every epoch; early stopping (``train.patience`` epochs without improvement, never before an epoch at
the decayed learning rate:
:func:`stops_early`); Orbax checkpoints of the latest epoch and of the best validation loss in
``workdir/checkpoints/{latest,best}`` (:mod:`npejax.nn.checkpoints`), each written before the next epoch
starts and its files' SHA-256 recorded. Run again in the same workdir, training resumes after the last
saved epoch -- with the same config: a config that differs from the checkpoint's in anything but the
training length (:data:`npejax.nn.checkpoints.RESUMABLE_KEYS`) is refused, the differences listed.

The data and how they reach the train step are :mod:`npejax.nn.input_pipeline`'s: the on-the-fly simulator
(an epoch of ``train.images_per_epoch // train.batch_size`` steps, the simulator's batches continuing where the
last epoch stopped) or cached datasets written by ``npejax.simulate`` (``data.train_dir`` / ``data.val_dir``; an
epoch is one shuffled pass over the training set), held on the devices with ``data.on_device``, K steps per
jitted call with ``train.steps_per_dispatch`` (:func:`npejax.nn.input_pipeline.training_feed` decides the feed,
:meth:`~npejax.nn.input_pipeline.Feed.step_function` compiles the call that takes it); the validation set and
the input normalizer's images. This module keeps the loop.

Before any work (:func:`validate_config`, :func:`~npejax.nn.input_pipeline.setup_data`, :func:`check_resume`;
nothing is written until they pass) the config is checked: variant, dtype, the network's stride against
``tile_size``, sizes and counts (batch sizes positive multiples of the devices (every process's), an epoch of at
least one batch, a validation set of at least one ``eval_batch_size`` batch, ``num_epochs``, ``patience`` and
``steps_per_dispatch`` >= 1, ``data.on_device`` only with a cached training set that takes at most 80% of a
device's memory: :func:`~npejax.nn.input_pipeline.check_device_memory`), and the cached datasets against the
config: ``data.train_dir`` must be a 'train' split and ``data.val_dir`` a 'val' split, simulated at the config's
image and tile size from the config's prior, renderer, field prior and field bank. Once they pass, training
prints (and logs) the devices, the mesh and the batch per device (:func:`describe_devices`).

Files in ``workdir``: ``config.json`` (the config), ``metrics.csv`` (one row per epoch: ``epoch``,
``step``, ``train_nll``, ``val_nll`` (mean per image), ``learning_rate``, ``images_per_s``, ``seconds``;
rewritten from the checkpoint's history, so a killed run never leaves a duplicate row), ``checkpoints/``,
and ``tensorboard/`` (TensorBoard event files, tensorboardX; global step = epoch): ``nll/train``,
``nll/val``, ``learning_rate`` and ``images_per_s`` every epoch (the metrics.csv values) and, every
``train.figure_every`` epochs, ``validation/image`` (the first validation image, asinh stretch, with the
true tile-catalog sources (circles) and the network's detections (crosses)). A resumed run purges events
after its checkpoint (TensorBoard's ``purge_step``). The pieces of the loop:
:func:`~npejax.nn.input_pipeline.setup_data`, :func:`restore_or_init`, :func:`run_epoch`, :func:`record_epoch`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterator

import jax
import ml_collections
import numpy as np
import tensorboardX
from absl import logging
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm import tqdm

from npejax import io, schema
from npejax.nn import checkpoints, distributed, input_pipeline
from npejax.nn import inputs as inputs_lib
from npejax.nn import model as model_lib
from npejax.nn import state as state_lib
from npejax.nn import steps as steps_lib
from npejax.nn.posterior import TilePosterior, tiles_to_sources

TENSORBOARD_DIR = "tensorboard"


def say(*args, **kwargs) -> None:
    """``print`` in process 0 only (:mod:`npejax.nn.distributed`: stdout is written once)."""
    if distributed.is_main():
        print(*args, **kwargs)


# --- the config ------------------------------------------------------------------------------------


def validate_config(config, num_devices: int | None = None) -> None:
    """Refuses nonsense values before any work: ValueError naming the key, its value and what would be
    right. ``num_devices`` defaults to all devices, every process's (the batch sizes must be multiples of it). The
    datasets are checked by :func:`setup_data`."""
    num_devices = len(jax.devices()) if num_devices is None else int(num_devices)  # every process's
    inputs_lib.check_variant(config.model.variant)
    if config.fields.prior not in schema.FIELD_PRIORS:
        raise ValueError(f"fields.prior must be one of {schema.FIELD_PRIORS}, got {config.fields.prior!r}")
    if int(config.tile_size) < 1 or int(config.image_size) % int(config.tile_size):
        raise ValueError(f"image_size={config.image_size} must be a positive multiple of tile_size={config.tile_size}")
    model_lib.from_config(config)  # model.dtype, and the network's stride against tile_size
    train = config.train
    for key in ("batch_size", "eval_batch_size"):
        value = int(train[key])
        if value < 1:
            raise ValueError(f"train.{key}={value}: must be >= 1 (a multiple of the {num_devices} device(s))")
        if value % num_devices:
            lower = value - value % num_devices
            hint = f"{lower} or {lower + num_devices}" if lower else f"{num_devices}"
            raise ValueError(f"train.{key}={value} must be a multiple of the {num_devices} devices (e.g. {hint})")
    for key in ("num_epochs", "patience", "normalizer_images"):
        if int(train[key]) < 1:
            what = {
                "num_epochs": "0 epochs: nothing to train",
                "patience": "training would stop after its first epoch",
                "normalizer_images": "no images to fit the input normalizer on",
            }[key]
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
    check_input_path(config)
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


def check_input_path(config) -> None:
    """ValueError naming the key unless ``train.steps_per_dispatch`` >= 1 and ``data.on_device`` has a cached
    training set to hold (``data.train_dir`` or ``data.simulate_first``)."""
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


def config_dict(config: ml_collections.ConfigDict) -> dict:
    """The config as plain JSON values (saved as config.json and in every checkpoint)."""
    return json.loads(config.to_json_best_effort())


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


def write_metrics(workdir: str, history: list[dict]) -> None:
    """``workdir/metrics.csv``: one row per epoch of ``history``; removed while it is empty (a fresh start
    after a run killed before its first checkpoint keeps no row of that run)."""
    path = os.path.join(workdir, checkpoints.METRICS_FILE)
    if not distributed.is_main():  # written once, by process 0
        return
    if history:
        io.write_csv(path, history)
    elif os.path.exists(path):
        os.remove(path)


def check_resume(config, workdir: str) -> tuple[int, dict] | None:
    """(epoch, meta) of the latest checkpoint in ``workdir`` (its checksums verified), or None for a fresh
    start; CheckpointError listing the differences (checkpoint -> now, dotted keys) when the config differs
    from the checkpoint's in anything but :data:`npejax.nn.checkpoints.RESUMABLE_KEYS`. Writes nothing."""
    found = checkpoints.read_meta(workdir, "latest")
    if found is None:
        return None
    step, meta = found
    differences = checkpoints.config_differences(
        checkpoints.upgrade_config(meta.get("config") or {}), config_dict(config)
    )
    if differences:
        allowed = ", ".join(checkpoints.RESUMABLE_KEYS[:3])
        raise checkpoints.CheckpointError(
            f"workdir {os.path.abspath(workdir)} holds a run (epoch {step}) trained with another config; "
            f"differences (checkpoint -> now): {'; '.join(differences[:8])}"
            f"{f' (and {len(differences) - 8} more)' if len(differences) > 8 else ''}. Only {allowed} may "
            "change when resuming: use another --workdir, or the workdir's config.json"
        )
    return step, meta


def restore_or_init(
    config, net, manager, data: input_pipeline.TrainingData, mesh, resume: tuple[int, dict] | None = None
):
    """(state, normalizer, progress): restored from the latest checkpoint in ``manager`` when ``resume``
    (:func:`check_resume`, which verified its checksums) is given, or fresh (state from
    ``jax.random.key(config.seed)``, normalizer from :func:`fit_normalizer`); replicated on ``mesh``."""
    replicated = steps_lib.replicated(mesh)
    state = state_lib.create_state(config, net, data.steps_per_epoch, jax.random.key(config.seed))
    state = distributed.put_replicated(state, replicated)
    if resume is None:
        return state, input_pipeline.fit_normalizer(config, data), Progress()
    state, meta = checkpoints.restore(manager, state, resume[0], verify=False)
    state = jax.device_put(state, replicated)
    progress = Progress(meta["epoch"], meta["best_val"], meta["bad_epochs"], meta["history"])
    logging.info("resuming after epoch %d", progress.epoch)
    say(f"Resuming after epoch {progress.epoch} (best validation NLL {progress.best_val:.2f})", flush=True)
    return state, inputs_lib.Normalizer.from_dict(meta["normalizer"]), progress


# --- TensorBoard -----------------------------------------------------------------------------------

SCALARS = {
    "nll/train": "train_nll",
    "nll/val": "val_nll",
    "learning_rate": "learning_rate",
    "images_per_s": "images_per_s",
}  # TensorBoard tag -> metrics.csv column


@contextlib.contextmanager
def tensorboard(workdir: str, start_epoch: int, end_epoch: int):
    """A tensorboardX writer of ``workdir/tensorboard`` (None when no epoch is left to train), closed on
    exit. Events of epochs after ``start_epoch`` left by a killed run are purged (``purge_step``)."""
    if start_epoch >= end_epoch or not distributed.is_main():  # written by process 0 only
        yield None
        return
    writer = tensorboardX.SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR), purge_step=start_epoch + 1)
    try:
        yield writer
    finally:
        writer.close()


def validation_figure(config, net, normalizer: inputs_lib.Normalizer, val_batch: dict) -> Callable:
    """``(state, epoch) -> RGB array [h, w, 3]``: the first image of ``val_batch`` (asinh stretch) with its
    true tile-catalog sources (circles) and the network's detections (crosses, probability > 0.5)."""
    first = {k: distributed.first_rows(val_batch[k], 1) for k in steps_lib.NETWORK_KEYS}
    tile = int(config.tile_size)
    truth = tiles_to_sources({k: first[k] for k in schema.TARGET_KEYS}, tile)
    feats = steps_lib.features(first, normalizer, config.model.variant)

    mode = jax.jit(lambda variables: TilePosterior.from_params(net.apply(variables, feats, train=False)).mode())

    def draw(state, epoch: int) -> np.ndarray:
        variables = distributed.local_copy(state_lib.eval_variables(state))
        predicted = tiles_to_sources(jax.device_get(mode(variables)), tile)
        image = first["images"][0]
        scale = max(float(np.quantile(np.abs(image), 0.5)), 1e-6)
        fig = Figure(figsize=(4.0, 4.3), dpi=100)
        canvas = FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.imshow(np.arcsinh(image / scale), cmap="gray_r", origin="upper", interpolation="nearest")
        # positions are from the image edge (pixel i covers [i, i+1)); imshow centres pixel i at i
        ax.scatter(
            truth["x"] - 0.5,
            truth["y"] - 0.5,
            s=60,
            facecolors="none",
            edgecolors="tab:blue",
            label=f"true ({len(truth['x'])})",
        )
        ax.scatter(
            predicted["x"] - 0.5,
            predicted["y"] - 0.5,
            s=40,
            marker="x",
            c="tab:red",
            label=f"detected ({len(predicted['x'])})",
        )
        ax.set_title(f"validation image 0, epoch {epoch}", fontsize=9)
        ax.legend(loc="upper right", fontsize=7, framealpha=0.6)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.tight_layout()
        canvas.draw()
        return np.asarray(canvas.buffer_rgba())[..., :3].copy()

    return draw


def log_epoch(writer, row: dict, figure=None) -> None:
    """Writes an epoch's metrics.csv values (and the figure, an RGB array, if any) at step = epoch."""
    if writer is None:
        return
    for tag, column in SCALARS.items():
        writer.add_scalar(tag, row[column], row["epoch"])
    if figure is not None:
        writer.add_image("validation/image", figure, row["epoch"], dataformats="HWC")
    writer.flush()


# --- one epoch -------------------------------------------------------------------------------------


def run_epoch(
    config,
    data: input_pipeline.TrainingData,
    state,
    train_step,
    eval_step,
    batches: Iterator,
    val_batches: list[dict],
    key,
    epoch: int,
):
    """Trains on ``batches`` (an epoch's inputs, :meth:`npejax.nn.input_pipeline.Feed.inputs`,
    ``data.steps_per_epoch`` steps in all, each call of ``train_step``
    (:meth:`~npejax.nn.input_pipeline.Feed.step_function`) returning one loss or K) and validates; returns
    (state, metrics row, mean training NLL over the steps, validation NLL per image)."""
    t0 = time.time()
    losses, done = [], 0
    with tqdm(
        total=data.steps_per_epoch,
        desc=f"epoch {epoch + 1}/{config.train.num_epochs}",
        leave=False,
        disable=not (config.train.progress and distributed.is_main()),
    ) as bar:
        for inputs in batches:
            state, loss = train_step(state, inputs, key)
            losses.append(loss)
            done += loss.size
            bar.update(loss.size)
            if config.train.progress and len(losses) > 1 and done // 10 > (done - loss.size) // 10:
                # the previous call's loss: waiting for this one would leave the devices idle until the next
                bar.set_postfix(
                    loss=f"{float(np.ravel(losses[-2])[-1]):.1f}",
                    img_s=f"{done * data.batch_size / (time.time() - t0):.0f}",
                )
    if done != data.steps_per_epoch:
        raise RuntimeError(f"epoch {epoch + 1} ran {done} train steps, expected {data.steps_per_epoch}")
    train_loss = float(np.mean(np.concatenate([np.ravel(loss) for loss in jax.device_get(losses)])))
    train_seconds = time.time() - t0
    num_val_images = sum(b["images"].shape[0] for b in val_batches)
    val_loss = float(sum(float(eval_step(state, b)) for b in val_batches) / num_val_images)
    learning_rate = state_lib.learning_rate_schedule(config, data.steps_per_epoch)(int(state.step))
    row = dict(
        epoch=epoch + 1,
        step=int(state.step),
        train_nll=round(train_loss, 4),
        val_nll=round(val_loss, 4),
        learning_rate=float(learning_rate),
        images_per_s=round(data.steps_per_epoch * data.batch_size / train_seconds, 1),
        seconds=round(time.time() - t0, 1),
    )
    return state, row, train_loss, val_loss


def record_epoch(
    workdir: str,
    managers: checkpoints.Managers,
    config,
    progress: Progress,
    state,
    normalizer: inputs_lib.Normalizer,
    row: dict,
    train_loss: float,
    val_loss: float,
) -> None:
    """Adds ``row`` to the history and metrics.csv, prints it, and checkpoints ``state`` as the latest
    (and as the best when ``val_loss`` improved), checkpoint step = epochs completed; returns when the
    checkpoints are written (CheckpointSaveError, one line, when they cannot be)."""
    improved = progress.update(row, val_loss)
    write_metrics(workdir, progress.history)
    say(
        f"epoch {row['epoch']:3d}  train NLL {train_loss:9.2f}  val NLL {val_loss:9.2f}"
        f"{' *' if improved else '  '}  {row['images_per_s']:.0f} images/s",
        flush=True,
    )
    meta = dict(
        epoch=progress.epoch,
        best_val=progress.best_val,
        bad_epochs=progress.bad_epochs,
        history=list(progress.history),
        normalizer=normalizer.to_dict(),
        variant=config.model.variant,
        config=config_dict(config),
        val_nll=val_loss,
    )
    checkpoints.save([managers.latest, managers.best] if improved else [managers.latest], progress.epoch, state, meta)


# --- the loop --------------------------------------------------------------------------------------


def stops_early(config, progress: Progress) -> bool:
    """Early stopping: ``train.patience`` epochs without a better validation NLL, and never before an epoch
    at the decayed learning rate (``train.lr_decay_epoch``) is done: a noisy validation loss must not end a
    run before the decay, which is where the loss falls most (measured: issue 8)."""
    return progress.bad_epochs >= int(config.train.patience) and progress.epoch > int(config.train.lr_decay_epoch)


def train_epochs(
    config,
    workdir: str,
    data: input_pipeline.TrainingData,
    net,
    mesh,
    managers: checkpoints.Managers,
    state,
    normalizer: inputs_lib.Normalizer,
    progress: Progress,
    end_epoch: int,
):
    """Trains from epoch ``progress.epoch`` up to ``end_epoch`` (or early stopping): each epoch validated,
    logged (metrics.csv, TensorBoard) and checkpointed; returns the final state."""
    train_step, eval_step = steps_lib.jit_steps(normalizer, mesh, config.model.variant, config.train.augment)
    val_batches = input_pipeline.validation_batches(config, data, steps_lib.batch_sharding(mesh))
    key = jax.random.key(config.seed + 1)
    figure_every = int(config.train.figure_every)
    draw = (
        validation_figure(config, net, normalizer, val_batches[0]) if figure_every and distributed.is_main() else None
    )  # process 0 draws (and writes) the figures
    with (
        input_pipeline.training_feed(config, data, progress.epoch, end_epoch, mesh) as feed,
        tensorboard(workdir, progress.epoch, end_epoch) as writer,
    ):
        step = feed.step_function(config, normalizer, mesh, train_step)
        for epoch in range(progress.epoch, end_epoch):
            state, row, *losses = run_epoch(
                config, data, state, step, eval_step, feed.inputs(epoch), val_batches, key, epoch
            )
            figure = draw(state, row["epoch"]) if draw and row["epoch"] % figure_every == 0 else None
            log_epoch(writer, row, figure)  # before the checkpoint: a resume purges events after it
            record_epoch(workdir, managers, config, progress, state, normalizer, row, *losses)
            if stops_early(config, progress):
                say(f"early stopping: no improvement in {progress.bad_epochs} epochs")
                break
    return state


def describe_devices(mesh, batch_size: int) -> str:
    """One line naming the devices of ``mesh``, its axes and the batch each device gets, e.g. ``devices: 4 x cpu
    (cpu:0, cpu:1, cpu:2, cpu:3); mesh: data=4; global batch 32 = 8 per device`` (a GPU adds its kind:
    ``1 x gpu (NVIDIA H100 80GB HBM3: cuda:0)``; past 8 devices the middle names are elided); printed by
    :func:`train_and_evaluate` at start-up."""
    devices = list(mesh.devices.flat)
    names = [str(d) for d in devices]
    if len(names) > 8:
        names = names[:4] + ["..."] + names[-2:]
    kinds = sorted({d.device_kind for d in devices})
    platform = devices[0].platform
    kind = "" if kinds == [platform] else ", ".join(kinds) + ": "
    axes = ", ".join(f"{name}={size}" for name, size in mesh.shape.items())
    processes = len({d.process_index for d in devices})
    axes = axes if processes == 1 else f"{axes} over {processes} processes"
    return (
        f"devices: {len(devices)} x {platform} ({kind}{', '.join(names)}); mesh: {axes}; global batch "
        f"{batch_size} = {batch_size // len(devices)} per device"
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains per ``config`` in ``workdir`` (resuming if it holds checkpoints).

    Validates the config, the datasets and the workdir (a resume: the checkpoint's config and checksums)
    before writing anything. Returns a summary: epochs run, best validation NLL, whether it stopped early,
    the per-epoch history, the workdir, and the final ``state`` and ``normalizer``.
    """
    distributed.initialize(config)  # several processes when the config or the environment asks for them
    validate_config(config)  # against the devices (all processes'), before the mesh over them is built
    mesh = steps_lib.data_mesh()
    io.check_output_dir(workdir, "workdir")
    config = input_pipeline.simulate_first(config, workdir)
    distributed.sync("npejax-simulate-first", timeout_s=7 * 86400)  # process 0 wrote WORKDIR/data (simulate_first)
    data = input_pipeline.setup_data(config, mesh.size)
    net = model_lib.from_config(config)
    resume = check_resume(config, workdir)
    distributed.sync("npejax-resume-checked")  # every process read the checkpoints before anything is written
    devices = describe_devices(mesh, int(config.train.batch_size))  # every check passed: say where it runs
    logging.info("%s", devices)
    say(devices, flush=True)
    end_epoch = int(config.train.num_epochs)
    os.makedirs(workdir, exist_ok=True)
    with checkpoints.managers(workdir) as managers:  # closed (pending saves finished) even on an error
        state, normalizer, progress = restore_or_init(config, net, managers.latest, data, mesh, resume)
        write_metrics(workdir, progress.history)  # a resumed run drops rows of epochs not checkpointed
        if distributed.is_main():
            io.write_json(os.path.join(workdir, checkpoints.CONFIG_FILE), config_dict(config))
        if stops_early(config, progress):  # a resumed run that had already stopped early
            end_epoch = progress.epoch
            say(
                f"already stopped early after epoch {progress.epoch} (no improvement in {progress.bad_epochs} epochs)",
                flush=True,
            )
        elif progress.epoch >= end_epoch:
            say(
                f"nothing to train: {progress.epoch} epochs done, train.num_epochs={end_epoch} (raise it to train "
                "more)",
                flush=True,
            )
        if progress.epoch < end_epoch:
            state = train_epochs(config, workdir, data, net, mesh, managers, state, normalizer, progress, end_epoch)
    summary = dict(
        epochs=len(progress.history),
        best_val_nll=progress.best_val,
        stopped_early=stops_early(config, progress),
        history=progress.history,
        workdir=os.path.abspath(workdir),
        state=state,
        normalizer=normalizer,
    )
    if progress.history:
        first, last = progress.history[0]["val_nll"], progress.history[-1]["val_nll"]
        say(
            f"validation NLL: {first:.2f} (epoch 1) -> {last:.2f} (epoch {progress.history[-1]['epoch']}), "
            f"best {progress.best_val:.2f}; checkpoints in {summary['workdir']}/checkpoints"
        )
    return summary
