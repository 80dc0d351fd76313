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

Data come from the on-the-fly simulator -- an epoch is then ``train.images_per_epoch // train.batch_size``
steps, the simulator's batches continuing where the last epoch stopped -- or from cached datasets written
by ``npejax.simulate`` (``data.train_dir`` / ``data.val_dir``; an epoch is then one shuffled pass over the
training set, ``len(train set) // train.batch_size`` steps). With ``data.on_device`` the cached training set
is put on the devices once (replicated: every device holds all of it) and each batch is gathered there from
the epoch's permutation, the same batches in the same order as from the host (:func:`epoch_order`). With
``train.steps_per_dispatch`` K > 1, each jitted call runs K steps (``lax.scan``:
:func:`npejax.nn.steps.jit_multi_step`), the last call of an epoch the remaining ``steps % K``; the same
states and losses as one step per call (:func:`training_batches`, :func:`step_function`). The validation
set is ``data.val_dir`` or ``data.num_val`` simulated images (whole batches of ``train.eval_batch_size``).
The input normalizer is fitted on the first ``train.normalizer_images`` images of the cached training set, or
on as many freshly simulated training-prior images (a batch never trained on).

Before any work (:func:`npejax.configuration.validate`, :func:`setup_data`, :func:`check_resume`; nothing is written
until they pass) the config is checked: variant, dtype, the network's stride against ``tile_size``, sizes
and counts (batch sizes positive multiples of the devices (every process's), an epoch of at least one batch, a
validation set of at least one ``eval_batch_size`` batch, ``num_epochs``, ``patience`` and
``steps_per_dispatch`` >= 1, ``data.on_device`` only with a cached training set that takes at most 80% of a
device's memory: :func:`check_device_memory`), and the
cached datasets against the config: ``data.train_dir`` must be a 'train' split and ``data.val_dir`` a 'val'
split, simulated at the config's image and tile size from the config's prior, renderer, field prior and
field bank. Once they pass, training prints (and logs) the devices, the mesh and the batch per device
(:func:`describe_devices`).

Files in ``workdir``: ``config.json`` (the config), ``metrics.csv`` (one row per epoch: ``epoch``,
``step``, ``train_nll``, ``val_nll`` (mean per image), ``learning_rate``, ``images_per_s``, ``seconds``;
rewritten from the checkpoint's history, so a killed run never leaves a duplicate row), ``checkpoints/``,
and ``tensorboard/`` (TensorBoard event files, tensorboardX; global step = epoch): ``nll/train``,
``nll/val``, ``learning_rate`` and ``images_per_s`` every epoch (the metrics.csv values) and, every
``train.figure_every`` epochs, ``validation/image`` (the first validation image, asinh stretch, with the
true tile-catalog sources (circles) and the network's detections (crosses)). A resumed run purges events
after its checkpoint (TensorBoard's ``purge_step``). The pieces of the loop: :func:`setup_data`,
:func:`restore_or_init`, :func:`run_epoch`, :func:`record_epoch`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator

import jax
import ml_collections
import numpy as np
import tensorboardX
from absl import logging
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm import tqdm

from npejax import configuration, io, schema
from npejax import datasets as data_lib
from npejax.nn import checkpoints, distributed
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
            raise ValueError(
                f"data.train_dir {config.data.train_dir} holds {len(train_ds)} images, "
                f"fewer than train.batch_size={batch_size}"
            )
        return steps
    steps = int(config.train.images_per_epoch) // batch_size
    if steps == 0:
        raise ValueError(
            f"train.images_per_epoch={config.train.images_per_epoch} is smaller than train.batch_size={batch_size}"
        )
    return steps


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def check_dataset(ds: data_lib.Dataset, split: str, spec: pipeline.SimulationSpec, key: str) -> None:
    """DatasetError (one line naming ``data.<key>`` and each difference) unless the cached dataset ``ds`` is
    the ``split`` split simulated as ``spec`` says: image and tile size, catalog prior, renderer, field
    prior and field bank (its checksum)."""
    m = ds.manifest
    problems = []
    if m["split"] != split:
        problems.append(f"it is the {m['split']!r} split, expected the {split!r} split")
    h, w = spec.prior.image_shape
    if list(m["image_shape"]) != [h, w]:
        problems.append(
            f"its images are {m['image_shape'][0]} x {m['image_shape'][1]} pixels, the config's image_size is {h}"
        )
    if int(m["tile_size"]) != spec.tile_size:
        problems.append(f"its tile_size is {m['tile_size']}, the config's {spec.tile_size}")
    stored = m.get("spec") or {}
    if stored.get("field_prior") != spec.field_prior:
        problems.append(
            f"it was simulated with fields.prior={stored.get('field_prior')!r}, the config has {spec.field_prior!r}"
        )
    for section, settings in (("prior", spec.prior), ("render", spec.render)):
        if section in stored:
            ours = _jsonable(dataclasses.asdict(settings))
            theirs = stored[section]
            problems += [
                f"{section}.{k}: {theirs.get(k, '<absent>')!r} in the dataset, {ours.get(k)!r} in the config"
                for k in sorted(set(ours) | set(theirs))
                if k != "image_shape" and theirs.get(k, "<absent>") != ours.get(k, "<absent>")
            ]
    bank = m.get("bank") or {}
    if bank.get("sha256") and bank["sha256"] != data_lib.bank_sha256(spec.bank):
        problems.append(
            f"it was simulated from the field bank {bank.get('source')!r}, not the config's "
            f"fields.bank={spec.bank.source!r} (their contents differ)"
        )
    if problems:
        raise data_lib.DatasetError(f"data.{key} {ds.directory} does not fit the config: " + "; ".join(problems[:6]))


CACHE_DIR = "data"  # WORKDIR/data/{train,val}: the datasets of data.simulate_first


def simulate_first(config, workdir: str) -> ml_collections.ConfigDict:
    """With ``data.simulate_first`` (and no ``data.train_dir``/``data.val_dir``): simulates ``data.num_train``
    training and ``data.num_val`` validation images into ``WORKDIR/data/train`` and ``WORKDIR/data/val``
    (split seeds as :mod:`npejax.simulate`; resumable: a rerun finds them complete) with
    ``data.simulate_workers`` processes (-1: one per CPU), and returns a copy of ``config`` that trains from
    them. On a CPU the whole machine then renders first and trains afterwards, instead of the simulator and
    the train step sharing the cores every step; the images are reused over epochs (augmented)."""
    if not config.data.simulate_first or (config.data.train_dir and config.data.val_dir):
        return config
    config = config.copy_and_resolve_references()
    workers = configuration.simulate_workers(config)
    for split, key, count in (("train", "train_dir", "num_train"), ("val", "val_dir", "num_val")):
        if config.data[key]:
            continue
        out = os.path.join(os.path.abspath(workdir), CACHE_DIR, split)
        spec = pipeline.SimulationSpec.from_config(
            config, seed=data_lib.split_seed(config.seed, split), batch_size=int(config.data.shard_size)
        )
        if distributed.is_main():  # the other processes wait (train_and_evaluate) and read it
            report = data_lib.write_dataset(
                spec,
                out,
                int(config.data[count]),
                split,
                config=configuration.to_json(config),
                num_workers=workers,
                shard_size=int(config.data.shard_size),
                progress=bool(config.train.progress),
            )
        if distributed.is_main() and report.rendered_images:
            print(
                f"simulated {report.rendered_images} {split} images into {out} in {report.seconds:.0f} s "
                f"({workers} worker(s))",
                flush=True,
            )
        with config.unlocked():
            config.data[key] = out
    return config


def setup_data(config, num_devices: int) -> TrainingData:
    """Opens the cached datasets (if any), checks them against the config (:func:`check_dataset`) and the
    validation batch size, and sets the simulation specs of the train and val splits."""
    batch_size = int(config.train.batch_size)
    if batch_size % num_devices:
        raise ValueError(f"train.batch_size={batch_size} must be a multiple of the {num_devices} devices")
    train_spec = pipeline.SimulationSpec.from_config(
        config, seed=data_lib.split_seed(config.seed, "train"), batch_size=batch_size
    )
    val_spec = dataclasses.replace(
        train_spec, seed=data_lib.split_seed(config.seed, "val"), batch_size=int(config.train.eval_batch_size)
    )
    train_ds = data_lib.load(config.data.train_dir) if config.data.train_dir else None
    val_ds = data_lib.load(config.data.val_dir) if config.data.val_dir else None
    if train_ds is not None:
        check_dataset(train_ds, "train", train_spec, "train_dir")
        if config.data.on_device:
            check_device_memory(train_ds)
    if val_ds is not None:
        check_dataset(val_ds, "val", train_spec, "val_dir")
        if len(val_ds) < val_spec.batch_size:
            raise ValueError(
                f"train.eval_batch_size={val_spec.batch_size} is larger than the validation set "
                f"data.val_dir {config.data.val_dir} ({len(val_ds)} images)"
            )
    return TrainingData(batch_size, steps_per_epoch(config, train_ds), train_spec, val_spec, train_ds, val_ds)


def fit_normalizer(config, data: TrainingData) -> inputs_lib.Normalizer:
    """The input statistics of the data trained on: the first ``train.normalizer_images`` images of the
    cached training set (all of them if it is smaller), or as many simulated training-prior images (batch
    2**40 of the training seed, never trained on)."""
    num_images = int(config.train.normalizer_images)
    if data.train_ds is not None:
        batch = data.train_ds[0 : min(num_images, len(data.train_ds))]
    else:
        batch = pipeline.simulate_batch(dataclasses.replace(data.train_spec, batch_size=num_images), 2**40)
    return inputs_lib.Normalizer.fit(batch["images"], batch["background"], batch["psf_params"])


def validation_batches(config, data: TrainingData, sharding) -> list[dict]:
    """The fixed validation set on the devices: whole batches of ``train.eval_batch_size``."""
    batch_size = data.val_spec.batch_size
    # several processes: each puts its rows of every batch (the one-process batches, cut)
    rows = None if sharding.is_fully_addressable else distributed.local_rows(sharding, batch_size)
    if data.val_ds is not None:
        batches = [
            steps_lib.to_device(b, sharding) for b in data.val_ds.batches(batch_size, drop_remainder=True, rows=rows)
        ]
    else:
        count = int(config.data.num_val) // batch_size
        cut = (lambda b: b) if rows is None else (lambda b: {k: v[rows] for k, v in b.items()})
        batches = [steps_lib.to_device(cut(pipeline.simulate_batch(data.val_spec, i)), sharding) for i in range(count)]
    if not batches:
        raise ValueError(f"the validation set has fewer images than train.eval_batch_size={batch_size}")
    return batches


def epoch_order(num_images: int, batch_size: int, seed: int) -> np.ndarray:
    """[steps, batch_size] image indices of one shuffled epoch over a cached set of ``num_images``: row i is
    batch i of ``Dataset.batches(batch_size, shuffle=True, seed=seed, drop_remainder=True)`` (numpy's
    ``default_rng(seed).permutation``, cut to whole batches), as int32."""
    steps = num_images // batch_size
    order = np.random.default_rng(seed).permutation(num_images)[: steps * batch_size]
    return order.reshape(steps, batch_size).astype(np.int32)


def groups(items: Iterable, size: int) -> Iterator[tuple]:
    """``items`` in tuples of ``size`` (the last one shorter if they do not divide)."""
    items = iter(items)
    while group := tuple(itertools.islice(items, size)):
        yield group


def resident_bytes(ds: data_lib.Dataset) -> int:
    """Bytes that :func:`resident_training_set` puts on each device: the set's NETWORK_KEYS (its manifest)."""
    keys = ds.manifest["keys"]
    return sum(
        len(ds) * int(np.prod(keys[k]["shape"], dtype=np.int64)) * np.dtype(keys[k]["dtype"]).itemsize
        for k in steps_lib.NETWORK_KEYS
    )


def check_device_memory(ds: data_lib.Dataset, bytes_limit: int | None = None, fraction: float = 0.8) -> None:
    """ValueError naming ``data.on_device`` when the training set would take more than ``fraction`` of a device's
    memory (``bytes_limit``, default: the first local device's, where the backend reports it: GPUs do, CPUs
    not), leaving too little for the network."""
    if bytes_limit is None:
        bytes_limit = (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit")
    size = resident_bytes(ds)
    if bytes_limit and size > fraction * bytes_limit:
        raise ValueError(
            f"data.on_device=True: the training set {ds.directory} ({len(ds)} images) needs "
            f"{size / 2**30:.2f} GiB on every device, more than {fraction:.0%} of its "
            f"{bytes_limit / 2**30:.2f} GiB; train from the host (data.on_device=False) or on a "
            "smaller set"
        )


def resident_training_set(ds: data_lib.Dataset, mesh) -> dict:
    """The :data:`npejax.schema.NETWORK_KEYS` of the whole cached training set on every device of ``mesh``
    (replicated: [N, ...] arrays, read and put one key at a time); prints its size per device."""
    replicated = steps_lib.replicated(mesh)
    resident = {
        k: distributed.put_replicated(ds.read(slice(None), (k,))[k], replicated) for k in steps_lib.NETWORK_KEYS
    }
    size = sum(v.nbytes for v in resident.values())
    say(f"data.on_device: {len(ds)} training images on the devices, {size / 2**20:.1f} MiB per device", flush=True)
    return resident


@dataclasses.dataclass(frozen=True)
class Feed:
    """The training inputs: ``batches(epoch)`` iterates over what each jitted call of :func:`step_function` takes
    (one batch; K batches; or an index array [K, B] into ``resident``, the training set on the devices)."""

    batches: Callable[[int], Iterator]
    resident: dict | None = None


@contextlib.contextmanager
def training_batches(config, data: TrainingData, start_epoch: int, end_epoch: int, mesh) -> Iterator[Feed | None]:
    """Yields the :class:`Feed` of epochs ``start_epoch`` .. ``end_epoch`` (None when no epoch is left).

    Simulated batches come from a :class:`npejax.sim.pipeline.Simulator` started at batch
    ``start_epoch * steps_per_epoch`` (stopped on exit; an epoch takes ``steps_per_epoch`` of them); cached
    ones are reshuffled each epoch (seed ``config.seed + epoch``). Batches are put on the devices one at a time
    and grouped by ``train.steps_per_dispatch`` K (when K > 1). With ``data.on_device`` the training set is put
    on the devices here and an epoch is the rows of :func:`epoch_order`, K at a time, put on the devices at its
    start ([K, B] int32 each, :func:`npejax.nn.steps.stacked_sharding`).
    """
    put = lambda batch: steps_lib.to_device(batch, steps_lib.batch_sharding(mesh))
    # several processes: each reads its rows of every batch, or renders its own simulator batches (distributed)
    rows = None if jax.process_count() == 1 else distributed.local_rows(steps_lib.batch_sharding(mesh), data.batch_size)
    per_dispatch = int(config.train.steps_per_dispatch)
    group = (lambda batches: batches) if per_dispatch == 1 else (lambda batches: groups(batches, per_dispatch))
    if start_epoch >= end_epoch:  # nothing left to train: no simulator workers
        yield None
    elif data.train_ds is None:
        local_batch, stride, offset = distributed.simulator_indices(data.batch_size)
        spec = data.train_spec if rows is None else dataclasses.replace(data.train_spec, batch_size=local_batch)
        with pipeline.Simulator(
            spec,
            num_workers=int(config.simulator.num_workers),
            prefetch=int(config.simulator.prefetch),
            start=start_epoch * data.steps_per_epoch,
            transform=put,
            stride=stride,
            offset=offset,
        ) as simulator:
            yield Feed(lambda epoch: group(itertools.islice(simulator, data.steps_per_epoch)))
    elif config.data.on_device:
        resident = resident_training_set(data.train_ds, mesh)
        sharding = steps_lib.stacked_sharding(mesh)

        def rows(epoch):  # every call's index rows on the devices at the start of the epoch
            order = epoch_order(len(data.train_ds), data.batch_size, config.seed + epoch)
            return iter(
                [
                    distributed.put_replicated(order[i : i + per_dispatch], sharding)
                    for i in range(0, len(order), per_dispatch)
                ]
            )

        yield Feed(rows, resident)
    else:
        yield Feed(
            lambda epoch: group(
                put(b)
                for b in data.train_ds.batches(
                    data.batch_size, shuffle=True, seed=config.seed + epoch, drop_remainder=True, rows=rows
                )
            )
        )


def step_function(config, normalizer: inputs_lib.Normalizer, mesh, train_step, feed: Feed | None) -> Callable:
    """``step(state, inputs, key) -> (state, loss)``, the jitted call :func:`run_epoch` makes per input of
    ``feed``: ``train_step`` (:func:`npejax.nn.steps.jit_steps`, one batch, a scalar loss) when
    ``train.steps_per_dispatch`` is 1 and the data are not on the devices, else
    :func:`npejax.nn.steps.jit_multi_step` (K batches or index rows into ``feed.resident``; losses [K])."""
    if feed is None or (feed.resident is None and int(config.train.steps_per_dispatch) == 1):
        return train_step
    multi = steps_lib.jit_multi_step(
        normalizer, mesh, config.model.variant, config.train.augment, resident=feed.resident is not None
    )
    if feed.resident is None:
        return multi
    return lambda state, rows, key: multi(state, feed.resident, rows, key)


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
    from the checkpoint's in anything but :data:`npejax.configuration.RESUMABLE_KEYS`. Writes nothing."""
    found = checkpoints.read_meta(workdir, "latest")
    if found is None:
        return None
    step, meta = found
    differences = configuration.saved_differences(meta.get("config"), config)
    if differences:
        allowed = ", ".join(configuration.RESUMABLE_KEYS[:3])
        raise checkpoints.CheckpointError(
            f"workdir {os.path.abspath(workdir)} holds a run (epoch {step}) trained with another config; "
            f"differences (checkpoint -> now): {'; '.join(differences[:8])}"
            f"{f' (and {len(differences) - 8} more)' if len(differences) > 8 else ''}. Only {allowed} may "
            "change when resuming: use another --workdir, or the workdir's config.json"
        )
    return step, meta


def restore_or_init(config, net, manager, data: TrainingData, mesh, resume: tuple[int, dict] | None = None):
    """(state, normalizer, progress): restored from the latest checkpoint in ``manager`` when ``resume``
    (:func:`check_resume`, which verified its checksums) is given, or fresh (state from
    ``jax.random.key(config.seed)``, normalizer from :func:`fit_normalizer`); replicated on ``mesh``."""
    replicated = steps_lib.replicated(mesh)
    state = state_lib.create_state(config, net, data.steps_per_epoch, jax.random.key(config.seed))
    state = distributed.put_replicated(state, replicated)
    if resume is None:
        return state, fit_normalizer(config, data), Progress()
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
    data: TrainingData,
    state,
    train_step,
    eval_step,
    batches: Iterator,
    val_batches: list[dict],
    key,
    epoch: int,
):
    """Trains on ``batches`` (an epoch's inputs of :func:`training_batches`, ``data.steps_per_epoch`` steps in
    all, each call of ``train_step`` (:func:`step_function`) returning one loss or K) and validates; returns
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
        config=configuration.to_json(config),
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
    data: TrainingData,
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
    val_batches = validation_batches(config, data, steps_lib.batch_sharding(mesh))
    key = jax.random.key(config.seed + 1)
    figure_every = int(config.train.figure_every)
    draw = (
        validation_figure(config, net, normalizer, val_batches[0]) if figure_every and distributed.is_main() else None
    )  # process 0 draws (and writes) the figures
    with (
        training_batches(config, data, progress.epoch, end_epoch, mesh) as feed,
        tensorboard(workdir, progress.epoch, end_epoch) as writer,
    ):
        step = step_function(config, normalizer, mesh, train_step, feed)
        for epoch in range(progress.epoch, end_epoch):
            state, row, *losses = run_epoch(
                config, data, state, step, eval_step, feed.batches(epoch), val_batches, key, epoch
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
    configuration.validate(config, len(jax.devices()))  # every process's devices, before the mesh over them is built
    mesh = steps_lib.data_mesh()
    io.check_output_dir(workdir, "workdir")
    config = simulate_first(config, workdir)
    distributed.sync("npejax-simulate-first", timeout_s=7 * 86400)  # process 0 wrote WORKDIR/data (simulate_first)
    data = setup_data(config, mesh.size)
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
