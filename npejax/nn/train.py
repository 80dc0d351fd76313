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
training length (:data:`npejax.configuration.RESUMABLE_KEYS`) is refused, the differences listed.

Stopping on time (:mod:`npejax.nn.preemption`): SIGTERM, SIGUSR1 (Slurm's warning before a time limit or a
preemption) or ``train.time_limit_minutes`` make training stop at the next step boundary (between two jitted
calls), mid-epoch too: the state there is saved as a checkpoint of its own, ``checkpoints/interrupted/S`` (S =
train steps done; ``meta`` with the epoch's step and the losses of its steps so far: :func:`record_stop`),
metrics.csv gets no row for the unfinished epoch, and :func:`train_and_evaluate` raises
:class:`npejax.nn.preemption.Stopped`, on which ``python -m npejax.main`` exits with status **3**
(:data:`npejax.nn.preemption.EXIT_PREEMPTED`; 1 is a crash, 2 a user error, 130 Ctrl-C). The same command
resumes at that step (:func:`check_resume` takes the newer of latest/ and interrupted/): the rest of the epoch
is the batches the uninterrupted run would have trained (cached: the epoch's permutation from the next batch;
on the fly: the simulator's batch index continuing; K per call from there), and the epoch's metrics row is the
uninterrupted run's but for ``images_per_s`` and ``seconds`` (the training seconds of both runs, summed): on a CPU
the same numbers and parameters to the bit (tests/test_preemption.py).
Once that epoch is checkpointed, interrupted/ is removed; best/ is as without the stop.

The data and how they reach the train step are :mod:`npejax.nn.input_pipeline`'s: the on-the-fly simulator
(an epoch of ``train.images_per_epoch // train.batch_size`` steps, the simulator's batches continuing where the
last epoch stopped) or cached datasets written by ``npejax.simulate`` (``data.train_dir`` / ``data.val_dir``; an
epoch is one shuffled pass over the training set), held on the devices with ``data.on_device``, K steps per
jitted call with ``train.steps_per_dispatch`` (:func:`npejax.nn.input_pipeline.training_feed` decides the feed,
:meth:`~npejax.nn.input_pipeline.Feed.step_function` compiles the call that takes it); the validation set and
the input normalizer's images. This module keeps the loop.

Before any work (:func:`npejax.configuration.validate`, :func:`~npejax.nn.input_pipeline.setup_data`,
:func:`check_resume`; nothing is written until they pass) the config is checked: variant, dtype, the network's stride
against ``tile_size``, sizes and counts (batch sizes positive multiples of the devices (every process's), an epoch of
at least one batch, a validation set of at least one ``eval_batch_size`` batch, ``num_epochs``, ``patience`` and
``steps_per_dispatch`` >= 1, ``data.on_device`` only with a cached training set that takes at most 80% of a device's
memory: :func:`~npejax.nn.input_pipeline.check_device_memory`), and the cached datasets against the config:
``data.train_dir`` must be a 'train' split and ``data.val_dir`` a 'val' split, simulated at the config's image and
tile size from the config's prior, renderer, field prior and field bank. Once they pass, training prints (and logs)
the devices, the mesh and the batch per device (:func:`describe_devices`).

Files in ``workdir``: ``config.json`` (the config), ``metrics.csv`` (one row per epoch: ``epoch``,
``step``, ``train_nll``, ``val_nll`` (mean per image), ``learning_rate``, ``images_per_s``, ``seconds``;
rewritten from the checkpoint's history, so a killed run never leaves a duplicate row), ``checkpoints/``,
and ``tensorboard/`` (TensorBoard event files, tensorboardX; global step = epoch): ``nll/train``,
``nll/val``, ``learning_rate`` and ``images_per_s`` every epoch (the metrics.csv values) and, every
``train.figure_every`` epochs, ``validation/image`` (the first validation image, in the grey of every other figure,
brighter pixels lighter: :func:`npejax.nn.display.asinh_stretch`, with the
true tile-catalog sources (circles) and the network's detections (crosses)). A resumed run purges events
after its checkpoint (TensorBoard's ``purge_step``). The pieces of the loop:
:func:`~npejax.nn.input_pipeline.setup_data`, :func:`restore_or_init`, :func:`run_epoch`, :func:`record_epoch`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

import jax
import ml_collections
import numpy as np
import tensorboardX
from absl import logging
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm import tqdm

from npejax import configuration, io, schema
from npejax.nn import checkpoints, display, distributed, input_pipeline, preemption
from npejax.nn import inputs as inputs_lib
from npejax.nn import model as model_lib
from npejax.nn import state as state_lib
from npejax.nn import steps as steps_lib
from npejax.nn.posterior import TilePosterior, tiles_to_sources
from npejax.sim import pipeline

TENSORBOARD_DIR = "tensorboard"


def say(*args, **kwargs) -> None:
    """``print`` in process 0 only (:mod:`npejax.nn.distributed`: stdout is written once)."""
    if distributed.is_main():
        print(*args, **kwargs)


# --- restore or init -------------------------------------------------------------------------------


@dataclasses.dataclass
class EpochSteps:
    """The steps of the epoch in progress trained so far: how many, their training losses (per jitted call: a
    scalar or K values, on the devices until read; or the float32 values a checkpoint kept) and the seconds they
    took. A run stopped mid-epoch saves them (:meth:`to_meta`) and the resumed run goes on from them, so that the
    epoch's mean training loss is the uninterrupted run's, to the bit."""

    steps: int = 0
    losses: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def values(self) -> np.ndarray:
        """The losses of the steps, in order, as one float32 array (waits for the devices)."""
        host = [np.ravel(np.asarray(loss, np.float32)) for loss in jax.device_get(self.losses)]
        return np.concatenate(host) if host else np.zeros(0, np.float32)

    def to_meta(self) -> dict:
        """The checkpoint ``meta`` keys of a run stopped mid-epoch (:mod:`npejax.nn.checkpoints`)."""
        return dict(
            step_in_epoch=self.steps, epoch_losses=[float(v) for v in self.values()], epoch_seconds=self.seconds
        )

    @classmethod
    def from_meta(cls, meta: dict) -> EpochSteps:
        """The steps a checkpoint's ``meta`` records (none for a checkpoint of a finished epoch)."""
        losses = np.asarray(meta.get("epoch_losses") or [], np.float32)  # float32 -> JSON -> float32: exact
        steps = int(meta.get("step_in_epoch") or 0)
        if len(losses) != steps:
            raise checkpoints.CheckpointError(
                f"checkpoint meta: step_in_epoch={steps} but {len(losses)} epoch_losses: the checkpoint is damaged"
            )
        return cls(steps, [losses] if steps else [], float(meta.get("epoch_seconds") or 0.0))


@dataclasses.dataclass
class Progress:
    """What the loop carries from epoch to epoch (and a checkpoint's ``meta`` saves)."""

    epoch: int = 0  # epochs completed
    best_val: float = float("inf")  # lowest validation NLL so far
    bad_epochs: int = 0  # epochs since it last improved
    history: list[dict] = dataclasses.field(default_factory=list)  # the metrics.csv rows
    in_epoch: EpochSteps = dataclasses.field(default_factory=EpochSteps)  # of epoch + 1, trained so far

    def update(self, row: dict, val_loss: float) -> bool:
        """Records a finished epoch's row; returns whether ``val_loss`` improved on the best."""
        improved = val_loss < self.best_val
        self.best_val, self.bad_epochs = (val_loss, 0) if improved else (self.best_val, self.bad_epochs + 1)
        self.epoch = row["epoch"]
        self.history.append(row)
        self.in_epoch = EpochSteps()
        return improved

    def meta(self, config, normalizer: inputs_lib.Normalizer) -> dict:
        """A checkpoint's ``meta`` (:mod:`npejax.nn.checkpoints`) but ``val_nll`` and a stopped run's keys."""
        return dict(
            epoch=self.epoch,
            best_val=self.best_val,
            bad_epochs=self.bad_epochs,
            history=list(self.history),
            normalizer=normalizer.to_dict(),
            variant=config.model.variant,
            config=configuration.to_json(config),
        )


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


class Resume(NamedTuple):
    """Where a run resumes: checkpoint ``step`` of ``directory`` (``checkpoints/latest``, step = epochs done; or
    ``checkpoints/interrupted``, step = train steps done) and its ``meta``."""

    step: int
    meta: dict
    directory: str

    @property
    def position(self) -> str:
        """``epoch 3`` (after it), or ``epoch 4, step 17`` (in it)."""
        steps = int(self.meta.get("step_in_epoch") or 0)
        return f"epoch {self.meta['epoch'] + 1}, step {steps}" if steps else f"epoch {self.step}"


def check_resume(config, workdir: str) -> Resume | None:
    """Where the run in ``workdir`` resumes (its checkpoint's checksums verified): the latest epoch's checkpoint,
    or the one of a run stopped later, mid-epoch (``checkpoints/interrupted``, when its train step is past the
    latest epoch's); None for a fresh start. CheckpointError listing the differences (checkpoint -> now, dotted
    keys) when the config differs from the checkpoint's in anything but
    :data:`npejax.configuration.RESUMABLE_KEYS`. Writes nothing."""
    root = os.path.join(os.path.abspath(workdir), "checkpoints")
    found, which = checkpoints.read_meta(workdir, "latest"), "latest"
    stopped = checkpoints.interrupted_step(workdir)
    history = found[1].get("history") if found else None
    if stopped is not None and stopped > (int(history[-1]["step"]) if history else 0):
        found, which = checkpoints.read_meta(workdir, checkpoints.INTERRUPTED), checkpoints.INTERRUPTED
    if found is None:
        return None
    resume = Resume(*found, os.path.join(root, which))
    differences = configuration.saved_differences(resume.meta.get("config"), config)
    if differences:
        allowed = ", ".join(configuration.RESUMABLE_KEYS[:3])
        raise checkpoints.CheckpointError(
            f"workdir {os.path.abspath(workdir)} holds a run ({resume.position}) trained with another config; "
            f"differences (checkpoint -> now): {'; '.join(differences[:8])}"
            f"{f' (and {len(differences) - 8} more)' if len(differences) > 8 else ''}. Only {allowed} may "
            "change when resuming: use another --workdir, or the workdir's config.json"
        )
    return resume


def restore_or_init(config, net, data: input_pipeline.TrainingData, mesh, resume: Resume | None = None):
    """(state, normalizer, progress): restored from the checkpoint ``resume`` (:func:`check_resume`, which
    verified its checksums) names, or fresh (state from ``jax.random.key(config.seed)``, normalizer from
    :func:`~npejax.nn.input_pipeline.fit_normalizer`); replicated on ``mesh``. A run stopped mid-epoch goes on
    at the step it reached (``progress.in_epoch``)."""
    replicated = steps_lib.replicated(mesh)
    state = state_lib.create_state(config, net, data.steps_per_epoch, jax.random.key(config.seed))
    state = distributed.put_replicated(state, replicated)
    if resume is None:
        return state, input_pipeline.fit_normalizer(config, data), Progress()
    state, meta = checkpoints.restore_from(resume.directory, state, resume.step, verify=False)
    state = jax.device_put(state, replicated)
    in_epoch = EpochSteps.from_meta(meta)
    if in_epoch.steps >= data.steps_per_epoch:
        raise checkpoints.CheckpointError(
            f"checkpoint {os.path.join(resume.directory, str(resume.step))} stopped at step {in_epoch.steps} of "
            f"an epoch, which has {data.steps_per_epoch} steps now: the training set changed since"
        )
    progress = Progress(meta["epoch"], meta["best_val"], meta["bad_epochs"], meta["history"], in_epoch)
    if in_epoch.steps:
        logging.info("resuming epoch %d at step %d", progress.epoch + 1, in_epoch.steps)
        say(
            f"Resuming epoch {progress.epoch + 1} at step {in_epoch.steps} of {data.steps_per_epoch} "
            f"(stopped: {meta.get('stopped', 'asked to')}; best validation NLL {progress.best_val:.2f})",
            flush=True,
        )
    else:
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
        shown, vmin, vmax = display.asinh_stretch(first["images"][0])  # as the report's gallery shows images
        fig = Figure(figsize=(4.0, 4.3), dpi=100)
        canvas = FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.imshow(shown, cmap=display.CMAP, vmin=vmin, vmax=vmax, origin="upper", interpolation="nearest")
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
    done: EpochSteps | None = None,
    stop: preemption.StopRequest | None = None,
):
    """Trains on ``batches`` (an epoch's inputs, :meth:`npejax.nn.input_pipeline.Feed.inputs`,
    ``data.steps_per_epoch`` steps in all, each call of ``train_step``
    (:meth:`~npejax.nn.input_pipeline.Feed.step_function`) returning one loss or K) and validates; returns
    (state, metrics row, mean training NLL over the steps, validation NLL per image).

    ``done``: the epoch's steps trained before (a run resumed mid-epoch: ``batches`` are the rest), updated in
    place as the steps are trained. ``stop`` is polled before every call (:meth:`~npejax.nn.preemption.
    StopRequest.poll`): when it says stop, returns (state, None, None, None) at once, ``done`` holding the steps
    trained (the row's ``seconds`` and ``images_per_s`` then count the training time of every run of the epoch).
    """
    done = EpochSteps() if done is None else done
    steps, first = data.steps_per_epoch, done.steps
    t0 = time.time()
    inputs_of = iter(batches)
    with tqdm(
        total=steps,
        initial=done.steps,
        desc=f"epoch {epoch + 1}/{config.train.num_epochs}",
        leave=False,
        disable=not (config.train.progress and distributed.is_main()),
    ) as bar:
        while done.steps < steps:
            if stop is not None and stop.poll(epoch * steps + done.steps):
                done.seconds += time.time() - t0
                return state, None, None, None
            try:
                inputs = next(inputs_of, None)
            except pipeline.WorkerError:
                # a SIGTERM to every process of the job ended the simulator's workers too: stop here, as asked
                if stop is not None and jax.process_count() == 1 and stop.requested():
                    done.seconds += time.time() - t0
                    return state, None, None, None
                raise
            if inputs is None:
                break
            state, loss = train_step(state, inputs, key)
            done.losses.append(loss)
            done.steps += loss.size
            bar.update(loss.size)
            if config.train.progress and len(done.losses) > 1 and done.steps // 10 > (done.steps - loss.size) // 10:
                # the previous call's loss: waiting for this one would leave the devices idle until the next
                bar.set_postfix(
                    loss=f"{float(np.ravel(done.losses[-2])[-1]):.1f}",
                    img_s=f"{(done.steps - first) * data.batch_size / (time.time() - t0):.0f}",
                )
    if done.steps != steps:
        raise RuntimeError(f"epoch {epoch + 1} ran {done.steps} train steps, expected {steps}")
    train_loss = float(np.mean(done.values()))
    train_seconds = done.seconds + time.time() - t0
    num_val_images = sum(b["images"].shape[0] for b in val_batches)
    val_loss = float(sum(float(eval_step(state, b)) for b in val_batches) / num_val_images)
    learning_rate = state_lib.learning_rate_schedule(config, steps)(int(state.step))
    row = dict(
        epoch=epoch + 1,
        step=int(state.step),
        train_nll=round(train_loss, 4),
        val_nll=round(val_loss, 4),
        learning_rate=float(learning_rate),
        images_per_s=round(steps * data.batch_size / train_seconds, 1),
        seconds=round(done.seconds + time.time() - t0, 1),
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
    meta = dict(progress.meta(config, normalizer), val_nll=val_loss)
    checkpoints.save([managers.latest, managers.best] if improved else [managers.latest], progress.epoch, state, meta)


def record_stop(
    workdir: str, config, progress: Progress, state, normalizer: inputs_lib.Normalizer, reason: str, steps: int
) -> str | None:
    """Checkpoints ``state``, stopped mid-epoch at step ``progress.in_epoch.steps`` of epoch ``progress.epoch + 1``
    (``steps`` per epoch), in ``checkpoints/interrupted`` (:func:`npejax.nn.checkpoints.save_interrupted`, numbered
    by the train step); returns its directory, or None when the step is at an epoch's start (the latest epoch's
    checkpoint holds it, or nothing was trained). metrics.csv gets no row: the epoch is not done."""
    done = progress.in_epoch
    if done.steps == 0:
        return None
    meta = dict(progress.meta(config, normalizer), **done.to_meta(), stopped=reason)
    return checkpoints.save_interrupted(workdir, progress.epoch * steps + done.steps, state, meta)


# --- the loop --------------------------------------------------------------------------------------


def stops_early(config, progress: Progress) -> bool:
    """Early stopping: ``train.patience`` epochs without a better validation NLL, and never before an epoch
    at the decayed learning rate (``train.lr_decay_epoch``) is done: a noisy validation loss must not end a
    run before the decay, which is where the loss falls most (benchmarks/RESULTS.md, "Training on the CPU")."""
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
    stop: preemption.StopRequest | None = None,
    stale_interrupted: bool = False,
):
    """Trains from epoch ``progress.epoch`` (at step ``progress.in_epoch.steps`` of the next) up to ``end_epoch``
    (or early stopping): each epoch validated, logged (metrics.csv, TensorBoard) and checkpointed; returns the
    final state. When ``stop`` says so at a step boundary (:mod:`npejax.nn.preemption`), checkpoints the step
    reached (:func:`record_stop`) and raises :class:`npejax.nn.preemption.Stopped`. ``stale_interrupted``: the
    workdir holds a checkpoint of a run stopped mid-epoch, removed once the next epoch is checkpointed."""
    train_step, eval_step = steps_lib.jit_steps(normalizer, mesh, config.model.variant, config.train.augment)
    val_batches = input_pipeline.validation_batches(config, data, steps_lib.batch_sharding(mesh))
    key = jax.random.key(config.seed + 1)
    figure_every = int(config.train.figure_every)
    draw = (
        validation_figure(config, net, normalizer, val_batches[0]) if figure_every and distributed.is_main() else None
    )  # process 0 draws (and writes) the figures
    steps = data.steps_per_epoch
    restored_at = progress.epoch * steps + progress.in_epoch.steps  # train steps done, checkpointed
    with (
        input_pipeline.training_feed(
            config, data, progress.epoch, end_epoch, mesh, start_step=progress.in_epoch.steps
        ) as feed,
        tensorboard(workdir, progress.epoch, end_epoch) as writer,
    ):
        step = feed.step_function(config, normalizer, mesh, train_step)
        for epoch in range(progress.epoch, end_epoch):
            state, row, *losses = run_epoch(
                config,
                data,
                state,
                step,
                eval_step,
                feed.inputs(epoch),
                val_batches,
                key,
                epoch,
                progress.in_epoch,
                stop,
            )
            if row is None:  # asked to stop, at a step boundary of this epoch
                position = progress.epoch * steps + progress.in_epoch.steps
                saved = None
                if position > restored_at:  # else the checkpoint this run started from holds the step
                    saved = record_stop(workdir, config, progress, state, normalizer, stop.reason, steps)
                where = f"saved {saved}" if saved else "nothing trained since" if position else "nothing trained"
                say(
                    f"stopped ({stop.reason}) at epoch {epoch + 1}, step {progress.in_epoch.steps} of {steps} "
                    f"(train step {position}): {where}; run the same command again to resume",
                    flush=True,
                )
                raise preemption.Stopped(
                    f"{stop.reason}: stopped at epoch {epoch + 1}, step {progress.in_epoch.steps} of {steps}"
                )
            figure = draw(state, row["epoch"]) if draw and row["epoch"] % figure_every == 0 else None
            log_epoch(writer, row, figure)  # before the checkpoint: a resume purges events after it
            record_epoch(workdir, managers, config, progress, state, normalizer, row, *losses)
            if stale_interrupted:  # its epoch is checkpointed now
                checkpoints.remove_interrupted(workdir)
                stale_interrupted = False
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

    Validates the config, the datasets and the workdir (a resume: the checkpoint's config and checksums; a
    best checkpoint with no latest one: :func:`npejax.nn.checkpoints.check_resumable`) before writing anything,
    and holds the workdir's lock for the run (:func:`npejax.nn.checkpoints.workdir_lock`: a second training
    there is refused). Returns a summary: epochs run, best validation NLL, whether it stopped early,
    the per-epoch history, the workdir, and the final ``state`` and ``normalizer``. Asked to stop (SIGTERM,
    SIGUSR1 or ``train.time_limit_minutes``: :mod:`npejax.nn.preemption`), saves the step reached and raises
    :class:`npejax.nn.preemption.Stopped`.
    """
    distributed.initialize(config)  # several processes when the config or the environment asks for them
    configuration.validate(config, len(jax.devices()))  # every process's devices, before the mesh over them is built
    stop = preemption.StopRequest(float(config.train.time_limit_minutes))  # its clock starts now
    mesh = steps_lib.data_mesh()
    io.check_output_dir(workdir, "workdir")
    checkpoints.check_resumable(workdir)  # a best checkpoint with nothing to resume from
    with checkpoints.workdir_lock(workdir):  # a second training in this workdir is refused here
        return _train_in(config, workdir, mesh, stop)


def _train_in(config: ml_collections.ConfigDict, workdir: str, mesh, stop: preemption.StopRequest) -> dict:
    """:func:`train_and_evaluate` once the config and the workdir passed and its lock is held."""
    config = input_pipeline.simulate_first(config, workdir)
    distributed.sync("npejax-simulate-first", timeout_s=7 * 86400)  # process 0 wrote WORKDIR/data (simulate_first)
    data = input_pipeline.setup_data(config, mesh.size)
    net = model_lib.from_config(config)
    resume = check_resume(config, workdir)
    stale_interrupted = checkpoints.interrupted_step(workdir) is not None  # removed after the next epoch
    distributed.sync("npejax-resume-checked")  # every process read the checkpoints before anything is written
    devices = describe_devices(mesh, int(config.train.batch_size))  # every check passed: say where it runs
    logging.info("%s", devices)
    say(devices, flush=True)
    end_epoch = int(config.train.num_epochs)
    os.makedirs(workdir, exist_ok=True)
    with (
        checkpoints.managers(workdir) as managers,  # closed (pending saves finished) even on an error
        stop.signal_handlers(),  # SIGTERM, SIGUSR1: stop at the next step boundary, saved
    ):
        state, normalizer, progress = restore_or_init(config, net, data, mesh, resume)
        write_metrics(workdir, progress.history)  # a resumed run drops rows of epochs not checkpointed
        if distributed.is_main():
            io.write_json(os.path.join(workdir, checkpoints.CONFIG_FILE), configuration.to_json(config))
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
            state = train_epochs(
                config,
                workdir,
                data,
                net,
                mesh,
                managers,
                state,
                normalizer,
                progress,
                end_epoch,
                stop,
                stale_interrupted,
            )
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
        say(
            "(an epoch marked * improved the best validation NLL: checkpoints/best holds it)\n"
            f"next: evaluate it, python -m npejax.evaluate --workdir net={workdir} --num-images 500 --out "
            f"{workdir}/report; or catalog images, python -m npejax.predict --workdir {workdir} --input IMAGES "
            "--out catalog.fits (README: 'Cataloging images')"
        )
    return summary
