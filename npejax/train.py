"""Training: ``train_and_evaluate(config, workdir)``.

Adam with the paper's schedule (``train.learning_rate``, times ``train.lr_decay`` after epoch
``train.lr_decay_epoch``); a ``jax.jit`` train step whose batch is sharded over a mesh of all local
devices (data parallel; parameters replicated); batch-norm statistics; random 90-degree rotations and
flips with the tile catalog transformed consistently; validation NLL on a fixed set every epoch; early
stopping (``train.patience`` epochs); Orbax checkpoints of the latest epoch and of the best validation
loss in ``workdir/checkpoints/{latest,best}`` (written to a temporary directory, then renamed). Run again
in the same workdir, training resumes after the last saved epoch. Data come from the on-the-fly simulator
or from cached datasets written by ``npejax.simulate`` (``data.train_dir`` / ``data.val_dir``; an epoch is
then one shuffled pass over the training set). Metrics go to ``workdir/metrics.csv``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax.training import train_state
from jax.sharding import NamedSharding, PartitionSpec as P

from npejax import data as data_lib
from npejax import inputs as inputs_lib
from npejax import model as model_lib
from npejax import pipeline
from npejax.posterior import TilePosterior

TILE_KEYS = ("tile_has_source", "tile_locs", "tile_is_galaxy", "tile_flux")
INPUT_KEYS = ("images", "background", "psf_params") + TILE_KEYS


class TrainState(train_state.TrainState):
    batch_stats: Any = None


# --- model and state -------------------------------------------------------------------------------

def create_model(config) -> model_lib.CatalogNet:
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}.get(config.model.dtype)
    if dtype is None:
        raise ValueError(f"model.dtype must be 'float32' or 'bfloat16', got {config.model.dtype!r}")
    stages = tuple(tuple(int(v) for v in s) for s in config.model.stages)
    net = model_lib.CatalogNet(width=config.model.width, stem_blocks=config.model.stem_blocks, stages=stages,
                               dtype=dtype)
    if net.stride != config.tile_size:
        raise ValueError(f"model stages stride {net.stride} must equal tile_size {config.tile_size}")
    return net


def learning_rate_schedule(config, steps_per_epoch: int):
    boundary = int(config.train.lr_decay_epoch) * steps_per_epoch
    return optax.piecewise_constant_schedule(config.train.learning_rate, {boundary: config.train.lr_decay})


def create_state(config, net, steps_per_epoch: int, key) -> TrainState:
    channels = inputs_lib.num_channels(config.model.variant)
    shape = (1, config.image_size, config.image_size, channels)
    variables = jax.jit(lambda k: net.init(k, jnp.zeros(shape, jnp.float32), train=False))(key)
    tx = optax.adam(learning_rate_schedule(config, steps_per_epoch))
    return TrainState.create(apply_fn=net.apply, params=variables["params"], tx=tx,
                             batch_stats=variables["batch_stats"])


# --- augmentation ----------------------------------------------------------------------------------

def _rot90(a):  # counterclockwise, on the two leading (spatial) axes
    return jnp.swapaxes(a[:, ::-1], 0, 1)


def _rot_locs(locs):  # (ly, lx) -> (1 - lx, ly) for a counterclockwise quarter turn
    return jnp.stack([1.0 - locs[..., 1], locs[..., 0]], axis=-1)


def _flip(a):  # left-right
    return a[:, ::-1]


def _flip_locs(locs):
    return jnp.stack([locs[..., 0], 1.0 - locs[..., 1]], axis=-1)


def _dihedral(example: dict, k: jax.Array) -> dict:
    """Applies element ``k`` (0..7) of the square's symmetry group to one example."""
    spatial = ("images", "background", "tile_has_source", "tile_is_galaxy", "tile_flux")

    def transform(turns, flip):
        def fn(ex):
            ex = dict(ex)
            for _ in range(turns):
                ex.update({key: _rot90(ex[key]) for key in spatial})
                ex["tile_locs"] = _rot_locs(_rot90(ex["tile_locs"]))
            if flip:
                ex.update({key: _flip(ex[key]) for key in spatial})
                ex["tile_locs"] = _flip_locs(_flip(ex["tile_locs"]))
            return ex
        return fn

    branches = [transform(t, f) for f in (False, True) for t in range(4)]
    return jax.lax.switch(k, branches, example)


def augment(batch: dict, key: jax.Array) -> dict:
    """Random rotation by a multiple of 90 degrees and random flip per image, catalog included."""
    ks = jax.random.randint(key, (batch["images"].shape[0],), 0, 8)
    keys = [k for k in INPUT_KEYS if k != "psf_params"]
    out = jax.vmap(_dihedral)({k: batch[k] for k in keys}, ks)
    return dict(batch, **out)


# --- steps -----------------------------------------------------------------------------------------

def make_steps(config, net, normalizer: inputs_lib.Normalizer, mesh):
    variant = config.model.variant
    replicated = NamedSharding(mesh, P())
    data = NamedSharding(mesh, P("data"))
    do_augment = bool(config.train.augment)

    def features(batch):
        return normalizer.features(batch["images"], batch["background"], batch["psf_params"], variant)

    def train_step(state: TrainState, batch: dict, key):
        if do_augment:
            batch = augment(batch, jax.random.fold_in(key, state.step))

        def loss_fn(params):
            out, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, features(batch),
                                          train=True, mutable=["batch_stats"])
            return TilePosterior.from_params(out).nll(batch), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        state = state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"])
        return state, loss

    def eval_step(state: TrainState, batch: dict):
        out = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, features(batch),
                             train=False)
        return jnp.sum(TilePosterior.from_params(out).tile_nll(batch))  # summed over images and tiles

    train_step = jax.jit(train_step, in_shardings=(replicated, data, replicated),
                         out_shardings=(replicated, replicated), donate_argnums=0)
    eval_step = jax.jit(eval_step, in_shardings=(replicated, data), out_shardings=replicated)
    return train_step, eval_step


# --- data ------------------------------------------------------------------------------------------

def _to_device(batch: dict, sharding) -> dict:
    return {k: jax.device_put(np.asarray(batch[k]), sharding) for k in INPUT_KEYS}


def fit_normalizer(spec: pipeline.SimulationSpec, num_images: int) -> inputs_lib.Normalizer:
    """Statistics of ``num_images`` training-prior images (batch 2**40 of the training seed, never trained on)."""
    batch = pipeline.simulate_batch(dataclasses.replace(spec, batch_size=num_images), 2**40)
    return inputs_lib.Normalizer.fit(batch["images"], batch["background"], batch["psf_params"])


# --- checkpoints -----------------------------------------------------------------------------------

def checkpoint_managers(workdir: str):
    root = os.path.join(os.path.abspath(workdir), "checkpoints")
    latest = ocp.CheckpointManager(os.path.join(root, "latest"), item_names=("state", "meta"),
                                   options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))
    best = ocp.CheckpointManager(os.path.join(root, "best"), item_names=("state", "meta"),
                                 options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))
    return latest, best


def _save(manager, epoch: int, state: TrainState, meta: dict) -> None:
    manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                meta=ocp.args.JsonSave(meta)))


def restore(manager, abstract_state: TrainState, step: int | None = None):
    """(state, meta) of ``step`` (default: the latest) from an Orbax manager."""
    step = manager.latest_step() if step is None else step
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                             meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]


# --- the loop --------------------------------------------------------------------------------------

def _append_metrics(path: str, row: dict) -> None:
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _rewrite_metrics(path: str, history: list[dict]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="") as f:
        if history:
            writer = csv.DictWriter(f, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)
    os.replace(tmp, path)


def _write_json_atomic(path: str, obj) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains per ``config`` in ``workdir`` (resuming if it holds checkpoints).

    Returns a summary: epochs run, best validation NLL, whether it stopped early, the per-epoch history,
    and the final ``state`` and ``normalizer``.
    """
    from tqdm import tqdm

    os.makedirs(workdir, exist_ok=True)
    inputs_lib.check_variant(config.model.variant)
    devices = jax.local_devices()
    mesh = jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)
    batch_size = int(config.train.batch_size)
    if batch_size % len(devices):
        raise ValueError(f"train.batch_size={batch_size} must be a multiple of the {len(devices)} local devices")
    data_sharding = NamedSharding(mesh, P("data"))
    train_ds = data_lib.load(config.data.train_dir) if config.data.train_dir else None
    val_ds = data_lib.load(config.data.val_dir) if config.data.val_dir else None
    if train_ds is not None:  # one epoch = one shuffled pass over the cached training set
        steps_per_epoch = len(train_ds) // batch_size
        if steps_per_epoch == 0:
            raise ValueError(f"data.train_dir {config.data.train_dir} holds {len(train_ds)} images, "
                             f"fewer than train.batch_size={batch_size}")
    else:
        steps_per_epoch = int(config.train.steps_per_epoch)

    train_spec = pipeline.SimulationSpec.from_config(config, seed=data_lib.split_seed(config.seed, "train"),
                                                     batch_size=batch_size)
    val_spec = dataclasses.replace(train_spec, seed=data_lib.split_seed(config.seed, "val"),
                                   batch_size=int(config.train.eval_batch_size))

    net = create_model(config)
    latest_mgr, best_mgr = checkpoint_managers(workdir)
    state = create_state(config, net, steps_per_epoch, jax.random.key(config.seed))
    replicated = NamedSharding(mesh, P())
    state = jax.device_put(state, replicated)

    if latest_mgr.latest_step() is not None:
        state, meta = restore(latest_mgr, state)
        state = jax.device_put(state, replicated)
        normalizer = inputs_lib.Normalizer.from_dict(meta["normalizer"])
        start_epoch, best_val, bad_epochs, history = meta["epoch"], meta["best_val"], meta["bad_epochs"], meta["history"]
        _rewrite_metrics(os.path.join(workdir, "metrics.csv"), history)  # drop rows of epochs not checkpointed
        logging.info("resuming after epoch %d in %s", start_epoch, workdir)
        print(f"Resuming after epoch {start_epoch} (best validation NLL {best_val:.2f})", flush=True)
    else:
        normalizer = fit_normalizer(train_spec, int(config.train.normalizer_images))
        start_epoch, best_val, bad_epochs, history = 0, float("inf"), 0, []
    _write_json_atomic(os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort()))

    train_step, eval_step = make_steps(config, net, normalizer, mesh)
    if val_ds is not None:
        val_batches = [_to_device(b, data_sharding) for b in val_ds.batches(val_spec.batch_size, drop_remainder=True)]
    else:
        num_val_batches = max(1, int(config.data.num_val) // val_spec.batch_size)
        val_batches = [_to_device(pipeline.simulate_batch(val_spec, i), data_sharding) for i in range(num_val_batches)]
    if not val_batches:
        raise ValueError(f"the validation set has fewer images than train.eval_batch_size={val_spec.batch_size}")
    num_val_images = len(val_batches) * val_spec.batch_size

    key = jax.random.key(config.seed + 1)
    stopped_early = False
    summary = {}
    end_epoch = int(config.train.num_epochs)
    if bad_epochs >= int(config.train.patience):  # a resumed run that had already stopped early
        stopped_early, end_epoch = True, start_epoch
        print(f"already stopped early after epoch {start_epoch} (no improvement in {bad_epochs} epochs)", flush=True)
    if start_epoch >= end_epoch:  # nothing left to train: no simulator workers
        source = contextlib.nullcontext()
        epoch_batches = None
    elif train_ds is None:
        source = pipeline.Simulator(train_spec, num_workers=int(config.simulator.num_workers),
                                    prefetch=int(config.simulator.prefetch), start=start_epoch * steps_per_epoch,
                                    transform=lambda b: _to_device(b, data_sharding))
        epoch_batches = lambda epoch: source
    else:
        source = contextlib.nullcontext()
        epoch_batches = lambda epoch: (_to_device(b, data_sharding) for b in train_ds.batches(
            batch_size, shuffle=True, seed=config.seed + epoch, drop_remainder=True))
    with source:
        for epoch in range(start_epoch, end_epoch):
            t0 = time.time()
            losses = []
            batches = iter(epoch_batches(epoch))
            bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.train.num_epochs}",
                       leave=False, disable=not config.train.progress)
            for _ in bar:
                state, loss = train_step(state, next(batches), key)
                losses.append(loss)
                if len(losses) % 10 == 0:
                    bar.set_postfix(loss=f"{float(loss):.1f}", img_s=f"{len(losses) * batch_size / (time.time() - t0):.0f}")
            train_loss = float(np.mean(jax.device_get(losses)))
            train_seconds = time.time() - t0
            val_loss = float(sum(float(eval_step(state, b)) for b in val_batches) / num_val_images)
            improved = val_loss < best_val
            best_val, bad_epochs = (val_loss, 0) if improved else (best_val, bad_epochs + 1)
            row = dict(epoch=epoch + 1, step=int(state.step), train_nll=round(train_loss, 4), val_nll=round(val_loss, 4),
                       learning_rate=float(learning_rate_schedule(config, steps_per_epoch)(int(state.step))),
                       images_per_s=round(steps_per_epoch * batch_size / train_seconds, 1),
                       seconds=round(time.time() - t0, 1))
            history.append(row)
            _append_metrics(os.path.join(workdir, "metrics.csv"), row)
            print(f"epoch {epoch + 1:3d}  train NLL {train_loss:9.2f}  val NLL {val_loss:9.2f}"
                  f"{' *' if improved else '  '}  {row['images_per_s']:.0f} images/s", flush=True)
            meta = dict(epoch=epoch + 1, best_val=best_val, bad_epochs=bad_epochs, history=history,
                        normalizer=normalizer.to_dict(), variant=config.model.variant,
                        config=json.loads(config.to_json_best_effort()), val_nll=val_loss)
            _save(latest_mgr, epoch + 1, state, meta)  # checkpoint step = epochs completed
            if improved:
                _save(best_mgr, epoch + 1, state, meta)
            if bad_epochs >= int(config.train.patience):
                stopped_early = True
                print(f"early stopping: no improvement in {bad_epochs} epochs")
                break
    latest_mgr.wait_until_finished()
    best_mgr.wait_until_finished()
    latest_mgr.close()
    best_mgr.close()
    summary = dict(epochs=len(history), best_val_nll=best_val, stopped_early=stopped_early, history=history,
                   workdir=os.path.abspath(workdir), state=state, normalizer=normalizer)
    if history:
        first, last = history[0]["val_nll"], history[-1]["val_nll"]
        print(f"validation NLL: {first:.2f} (epoch 1) -> {last:.2f} (epoch {history[-1]['epoch']}), "
              f"best {best_val:.2f}; checkpoints in {summary['workdir']}/checkpoints")
    return summary
