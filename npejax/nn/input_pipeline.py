"""The input pipeline of training (as in Flax's examples, ``input_pipeline.py``): where the batches come from,
and what each jitted train call takes. :mod:`npejax.nn.train` keeps the loop (restore, epochs, validation,
checkpoints, metrics) and asks this module for its inputs.

The data (:func:`setup_data`, :class:`TrainingData`): the on-the-fly simulator, or the cached datasets written by
``npejax.simulate`` (``data.train_dir`` / ``data.val_dir``, checked against the config by :func:`check_dataset`;
``data.simulate_first`` writes them into ``WORKDIR/data`` first: :func:`simulate_first`). An epoch is
``train.images_per_epoch // train.batch_size`` steps of the simulator (its batches continuing where the last
epoch stopped) or one shuffled pass over the cached training set (``len(train set) // train.batch_size`` steps,
the permutation of ``config.seed + epoch``: :func:`epoch_order`). The validation set (:func:`validation_batches`)
is ``data.val_dir`` or ``data.num_val`` simulated images, whole batches of ``train.eval_batch_size``; the input
normalizer (:func:`fit_normalizer`) is fitted on the first ``train.normalizer_images`` training images.

The feed (:func:`training_feed`, the one place that decides it): per jitted call of the train step, one batch
(on the fly or cached, put on the devices from the host), a tuple of ``train.steps_per_dispatch`` K batches
(K > 1: :func:`npejax.nn.steps.jit_multi_step` runs them in one call, ``lax.scan``), or, with ``data.on_device``,
[K, B] int32 index rows into the cached training set held on every device (:func:`resident_training_set`;
the same batches in the same order as from the host). The last call of an epoch takes the remaining
``steps % K``. :meth:`Feed.step_function` compiles the call that takes them; every path trains the same
batches, states and losses as one step per call from the host. With several processes
(:mod:`npejax.nn.distributed`) each process reads or renders its rows of every global batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator

import jax
import ml_collections
import numpy as np

from npejax import configuration
from npejax import datasets as data_lib
from npejax.nn import distributed
from npejax.nn import inputs as inputs_lib
from npejax.nn import steps as steps_lib
from npejax.sim import pipeline

# --- the datasets ----------------------------------------------------------------------------------


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
    the ``split`` split simulated as ``spec`` says: image and tile size, catalog prior, renderer (settings and
    ``simulator.backend``), field prior and field bank (its checksum)."""
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
    if stored.get("backend", "galsim") != spec.backend:
        problems.append(
            f"it was rendered with simulator.backend={stored.get('backend', 'galsim')!r}, the config has "
            f"{spec.backend!r}"
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
    mask_channel = bool(config.model.get("mask_channel", False))
    return inputs_lib.Normalizer.fit(batch["images"], batch["background"], batch["psf_params"], mask_channel)


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


# --- the training feed -----------------------------------------------------------------------------


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
    if distributed.is_main():
        print(
            f"data.on_device: {len(ds)} training images on the devices, {size / 2**20:.1f} MiB per device", flush=True
        )
    return resident


@dataclasses.dataclass(frozen=True)
class Feed:
    """The training inputs, as :func:`training_feed` decided them: ``inputs(epoch)`` iterates over what each jitted
    call of the epoch takes -- one batch (``steps_per_call`` K = 1), a tuple of K batches, or an index array
    [K, B] into ``resident`` (the training set on the devices, ``data.on_device``) -- and :meth:`step_function`
    compiles the call that takes them."""

    inputs: Callable[[int], Iterator]
    steps_per_call: int = 1
    resident: dict | None = None

    def step_function(self, config, normalizer: inputs_lib.Normalizer, mesh, train_step: Callable) -> Callable:
        """``step(state, inputs, key) -> (state, loss)``, the jitted call per item of :meth:`inputs`: ``train_step``
        (:func:`npejax.nn.steps.jit_steps`, one batch, a scalar loss) for host batches one at a time, else
        :func:`npejax.nn.steps.jit_multi_step` (K batches, or index rows into ``resident``; losses [K])."""
        if self.resident is None and self.steps_per_call == 1:
            return train_step
        multi = steps_lib.jit_multi_step(
            normalizer, mesh, config.model.variant, config.train.augment, resident=self.resident is not None
        )
        if self.resident is None:
            return multi
        return lambda state, rows, key: multi(state, self.resident, rows, key)


@contextlib.contextmanager
def training_feed(
    config, data: TrainingData, start_epoch: int, end_epoch: int, mesh, start_step: int = 0
) -> Iterator[Feed | None]:
    """Yields the :class:`Feed` of epochs ``start_epoch`` .. ``end_epoch`` (None when no epoch is left), the first
    from its step ``start_step`` on (a run resumed where it stopped: the rest of the same epoch).

    Simulated batches come from a :class:`npejax.sim.pipeline.Simulator` started at batch
    ``start_epoch * steps_per_epoch + start_step`` (stopped on exit; an epoch takes ``steps_per_epoch`` of them,
    batch i depending only on the seed and i); cached ones are reshuffled each epoch (seed ``config.seed +
    epoch``; a resumed epoch is its permutation's batches from ``start_step`` on). Batches are put on the devices
    one at a time and grouped by ``train.steps_per_dispatch`` K (when K > 1). With ``data.on_device`` the training
    set is put on the devices here and an epoch is the rows of :func:`epoch_order`, K at a time, put on the
    devices at its start ([K, B] int32 each, :func:`npejax.nn.steps.stacked_sharding`).
    """
    put = lambda batch: steps_lib.to_device(batch, steps_lib.batch_sharding(mesh))
    # several processes: each reads its rows of every batch, or renders its own simulator batches (distributed)
    rows = None if jax.process_count() == 1 else distributed.local_rows(steps_lib.batch_sharding(mesh), data.batch_size)
    per_call = int(config.train.steps_per_dispatch)
    group = (lambda batches: batches) if per_call == 1 else (lambda batches: groups(batches, per_call))
    if not 0 <= start_step < data.steps_per_epoch:
        raise ValueError(f"start_step={start_step}: an epoch has steps 0 .. {data.steps_per_epoch - 1}")
    first = lambda epoch: start_step if epoch == start_epoch else 0  # the epoch's first step
    if start_epoch >= end_epoch:  # nothing left to train: no simulator workers
        yield None
    elif data.train_ds is None:
        local_batch, stride, offset = distributed.simulator_indices(data.batch_size)
        spec = data.train_spec if rows is None else dataclasses.replace(data.train_spec, batch_size=local_batch)
        with pipeline.Simulator(
            spec,
            num_workers=int(config.simulator.num_workers),
            prefetch=int(config.simulator.prefetch),
            start=start_epoch * data.steps_per_epoch + start_step,
            transform=put,
            stride=stride,
            offset=offset,
        ) as simulator:
            yield Feed(lambda epoch: group(itertools.islice(simulator, data.steps_per_epoch - first(epoch))), per_call)
    elif config.data.on_device:
        resident = resident_training_set(data.train_ds, mesh)
        sharding = steps_lib.stacked_sharding(mesh)

        def index_rows(epoch):  # every call's index rows on the devices at the start of the epoch
            order = epoch_order(len(data.train_ds), data.batch_size, config.seed + epoch)[first(epoch) :]
            return iter(
                [distributed.put_replicated(order[i : i + per_call], sharding) for i in range(0, len(order), per_call)]
            )

        yield Feed(index_rows, per_call, resident)
    else:
        yield Feed(
            lambda epoch: group(
                put(b)
                for b in data.train_ds.batches(
                    data.batch_size,
                    shuffle=True,
                    seed=config.seed + epoch,
                    drop_remainder=True,
                    rows=rows,
                    start=first(epoch),
                )
            ),
            per_call,
        )
