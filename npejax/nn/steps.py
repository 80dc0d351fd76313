"""The train and eval steps, the augmentation, and their jit-compiled, data-parallel versions.

A batch here holds :data:`npejax.schema.NETWORK_KEYS`: ``images`` and ``background`` [B, H, W] (nmgy),
``psf_params`` [B, 6] and the tile catalog's :data:`npejax.schema.TARGET_KEYS` ([B, H/t, W/t] and
``tile_locs`` [B, H/t, W/t, 2]). The loss is the tile posterior's negative log-likelihood of the tile
catalog (:meth:`npejax.nn.posterior.TilePosterior.nll`: summed over the tiles of an image, averaged over
images; paper Section 5). With a checkerboard posterior (``posterior.context``) the network is given the
true tile catalog (teacher forcing, :class:`npejax.nn.model.CatalogNet`), so the loss is still exactly
-log q(true catalog | image).

* :func:`train_step` -- one Adam step (batch-norm statistics updated), after a random rotation by a
  multiple of 90 degrees and flip per image when ``do_augment`` (:func:`augment`; the tile catalog is
  transformed with the image). The augmentation key is ``fold_in(key, state.step)``.
* :func:`eval_step` -- the NLL summed over images and tiles, batch-norm running statistics (or the
  moving averages of parameters and statistics where the state keeps them, :func:`npejax.nn.state.eval_variables`).
* :func:`train_steps` -- K train steps in one call (``jax.lax.scan`` of :func:`train_step`) on K batches
  stacked on a leading axis ([K, B, ...]); :func:`resident_train_steps` the same on batches gathered from a
  training set held on the devices (index rows [K, B]). Both give the state of K :func:`train_step` calls
  (the augmentation key of each step is still ``fold_in(key, state.step)``) and the K losses.
* :func:`jit_steps` -- both compiled with the batch sharded over a mesh of devices (axis ``"data"``) and
  the state replicated (data parallel); the train step donates its input state. :func:`jit_multi_step`
  compiles :func:`train_steps` or :func:`resident_train_steps` the same way.

All are pure functions of their arguments: a test can call them on a tiny network without a loop.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from npejax.nn import inputs as inputs_lib
from npejax.nn.posterior import TilePosterior
from npejax.nn.state import TrainState, eval_variables
from npejax.schema import NETWORK_KEYS, SPATIAL_KEYS

DATA_AXIS = "data"


# --- augmentation ----------------------------------------------------------------------------------


def _rot90(a):  # counterclockwise, on the two leading (spatial) axes
    return jnp.swapaxes(a[:, ::-1], 0, 1)


def _rot_locs(locs):  # (ly, lx) -> (1 - lx, ly) for a counterclockwise quarter turn
    return jnp.stack([1.0 - locs[..., 1], locs[..., 0]], axis=-1)


def _flip(a):  # left-right
    return a[:, ::-1]


def _flip_locs(locs):
    return jnp.stack([locs[..., 0], 1.0 - locs[..., 1]], axis=-1)


def dihedral(example: dict, k: jax.Array) -> dict:
    """Applies element ``k`` (0..7) of the square's symmetry group to one example (no batch axis):
    ``k % 4`` counterclockwise quarter turns, then a left-right flip if ``k >= 4``. Moves every key of
    :data:`npejax.schema.SPATIAL_KEYS` that ``example`` has (``mask`` and ``artifact_bits`` only in batches simulated
    with artifacts); ``tile_locs`` values are transformed with their tiles."""
    grids = tuple(key for key in SPATIAL_KEYS if key != "tile_locs" and key in example)

    def transform(turns, flip):
        def fn(ex):
            ex = dict(ex)
            for _ in range(turns):
                ex.update({key: _rot90(ex[key]) for key in grids})
                ex["tile_locs"] = _rot_locs(_rot90(ex["tile_locs"]))
            if flip:
                ex.update({key: _flip(ex[key]) for key in grids})
                ex["tile_locs"] = _flip_locs(_flip(ex["tile_locs"]))
            return ex

        return fn

    branches = [transform(t, f) for f in (False, True) for t in range(4)]
    return jax.lax.switch(k, branches, example)


def augment(batch: dict, key: jax.Array) -> dict:
    """Random rotation by a multiple of 90 degrees and random flip per image, catalog included."""
    ks = jax.random.randint(key, (batch["images"].shape[0],), 0, 8)
    out = jax.vmap(dihedral)({k: batch[k] for k in SPATIAL_KEYS if k in batch}, ks)
    return dict(batch, **out)


# --- steps -----------------------------------------------------------------------------------------


def features(batch: dict, normalizer: inputs_lib.Normalizer, variant: str) -> jax.Array:
    """Network input [B, H, W, C] of a batch (:meth:`npejax.nn.inputs.Normalizer.features`; with the mask channel,
    the batch's NaN pixels are its masked pixels)."""
    return normalizer.features(batch["images"], batch["background"], batch["psf_params"], variant)


def train_step(
    state: TrainState, batch: dict, key: jax.Array, normalizer: inputs_lib.Normalizer, variant: str, do_augment: bool
) -> tuple[TrainState, jax.Array]:
    """One optimizer step on ``batch``; returns the new state and the batch's mean NLL (before the step)."""
    if do_augment:
        batch = augment(batch, jax.random.fold_in(key, state.step))

    def loss_fn(params):
        out, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            features(batch, normalizer, variant),
            train=True,
            tiles=batch,
            mutable=["batch_stats"],
        )
        return TilePosterior.from_params(out).nll(batch), updates

    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"])
    return state, loss


def eval_step(state: TrainState, batch: dict, normalizer: inputs_lib.Normalizer, variant: str) -> jax.Array:
    """The NLL of ``batch`` summed over images and tiles (divide by the number of images for the mean)."""
    out = state.apply_fn(eval_variables(state), features(batch, normalizer, variant), train=False, tiles=batch)
    return jnp.sum(TilePosterior.from_params(out).tile_nll(batch))


def stack(batches) -> dict:
    """Batches (a sequence of dicts of [B, ...] arrays) stacked on a new leading axis: [K, B, ...]; a dict is
    taken as stacked already."""
    if isinstance(batches, dict):
        return batches
    return {k: jnp.stack([b[k] for b in batches]) for k in batches[0]}


def _loop(body, state, xs, unroll: int | bool):
    """``jax.lax.scan(body, state, xs, unroll=unroll)``; with ``unroll=True`` the K calls of ``body`` as
    straight-line code instead (no loop operation in the program: :func:`scan_unroll`)."""
    if unroll is not True:
        return jax.lax.scan(body, state, xs, unroll=unroll)
    outputs = []
    for k in range(jax.tree_util.tree_leaves(xs)[0].shape[0]):
        state, out = body(state, jax.tree_util.tree_map(lambda x: x[k], xs))
        outputs.append(out)
    return state, jnp.stack(outputs)


def train_steps(
    state: TrainState,
    batches,
    key: jax.Array,
    normalizer: inputs_lib.Normalizer,
    variant: str,
    do_augment: bool,
    unroll: int | bool = 1,
) -> tuple[TrainState, jax.Array]:
    """K optimizer steps in one ``jax.lax.scan`` of :func:`train_step`: step k on ``batches[k]`` (a dict of
    [K, B, ...] arrays, or a sequence of K batches, stacked here: on the devices when jitted). Returns the state
    after the K steps and their losses [K]: the same as K :func:`train_step` calls. ``unroll``: the scan's
    (True: K copies of the step in straight-line code, :func:`scan_unroll`)."""

    def body(state, batch):
        return train_step(state, batch, key, normalizer, variant, do_augment)

    return _loop(body, state, stack(batches), unroll)


def resident_train_steps(
    state: TrainState,
    data: dict,
    indices: jax.Array,
    key: jax.Array,
    normalizer: inputs_lib.Normalizer,
    variant: str,
    do_augment: bool,
    sharding=None,
    unroll: int | bool = 1,
) -> tuple[TrainState, jax.Array]:
    """:func:`train_steps` on batches gathered from ``data`` (a training set's :data:`NETWORK_KEYS`, [N, ...]
    arrays already on the devices): step k trains on images ``indices[k]`` ([K, B] int32, in that order).
    ``sharding`` (optional): the gathered batch's sharding (:func:`batch_sharding`)."""

    def body(state, rows):
        batch = {k: jnp.take(v, rows, axis=0) for k, v in data.items()}
        if sharding is not None:
            batch = jax.lax.with_sharding_constraint(batch, sharding)
        return train_step(state, batch, key, normalizer, variant, do_augment)

    return _loop(body, state, indices, unroll)


# --- devices ---------------------------------------------------------------------------------------


def data_mesh(devices=None) -> jax.sharding.Mesh:
    """A one-axis mesh (``"data"``) over ``devices`` (default: all devices: the local ones in one process, every
    process's in a multi-process run, :mod:`npejax.nn.distributed`)."""
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def replicated(mesh) -> NamedSharding:
    """The sharding of the state: a full copy on every device."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
    """The sharding of a batch: split along its first (image) axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def stacked_sharding(mesh) -> NamedSharding:
    """The sharding of K stacked batches [K, B, ...] or index rows [K, B]: split along the image axis (1)."""
    return NamedSharding(mesh, P(None, DATA_AXIS))


def to_device(batch: dict, sharding) -> dict:
    """The :data:`npejax.schema.NETWORK_KEYS` of a host batch, put on the devices with ``sharding``. With a
    sharding over several processes' devices, ``batch`` is this process's rows of the global batch
    (``jax.make_array_from_process_local_data``: :func:`npejax.nn.distributed.local_rows`)."""
    if not sharding.is_fully_addressable:
        return {k: jax.make_array_from_process_local_data(sharding, np.asarray(batch[k])) for k in NETWORK_KEYS}
    return {k: jax.device_put(np.asarray(batch[k]), sharding) for k in NETWORK_KEYS}


def jit_steps(normalizer: inputs_lib.Normalizer, mesh, variant: str, do_augment: bool):
    """(train_step(state, batch, key), eval_step(state, batch)) compiled for ``mesh``: state replicated,
    batch sharded over ``"data"``, the train step's input state donated."""
    rep, data = replicated(mesh), batch_sharding(mesh)
    train = functools.partial(train_step, normalizer=normalizer, variant=variant, do_augment=bool(do_augment))
    evaluate = functools.partial(eval_step, normalizer=normalizer, variant=variant)
    train = jax.jit(train, in_shardings=(rep, data, rep), out_shardings=(rep, rep), donate_argnums=0)
    evaluate = jax.jit(evaluate, in_shardings=(rep, data), out_shardings=rep)
    return train, evaluate


def scan_unroll(mesh) -> int | bool:
    """How :func:`jit_multi_step` runs its K steps on ``mesh``'s platform: on a CPU as straight-line code (True:
    K copies of the step to compile), elsewhere as a rolled ``lax.scan`` (1: one copy however large K).

    XLA:CPU runs a train step inside a loop operation far slower than the same step outside one, even a loop of one
    trip (measured: benchmarks/RESULTS.md, "Measurements behind the code's defaults"). A loop on a GPU is XLA's usual
    while loop; ``benchmarks/input_paths.py`` measures it there."""
    return True if mesh.devices.flat[0].platform == "cpu" else 1


def jit_multi_step(
    normalizer: inputs_lib.Normalizer,
    mesh,
    variant: str,
    do_augment: bool,
    resident: bool = False,
    unroll: int | bool | None = None,
):
    """:func:`train_steps` compiled for ``mesh`` as ``step(state, batches, key)`` (a sequence of K batches, each
    sharded over ``"data"`` as :func:`jit_steps` takes them, or a dict of stacked [K, B, ...] arrays sharded with
    :func:`stacked_sharding`), or with ``resident`` :func:`resident_train_steps` as ``step(state, data, indices,
    key)`` (``data`` replicated: every device holds the whole training set and gathers its share of each batch
    locally; ``indices`` [K, B] sharded with :func:`stacked_sharding`). State replicated and donated; the losses
    [K] replicated. A new K (the last call of an epoch) compiles again. ``unroll``: the scan's (default
    :func:`scan_unroll`)."""
    rep, data = replicated(mesh), batch_sharding(mesh)
    kwargs = dict(
        normalizer=normalizer,
        variant=variant,
        do_augment=bool(do_augment),
        unroll=scan_unroll(mesh) if unroll is None else unroll,
    )
    if resident:
        fn = functools.partial(resident_train_steps, sharding=data, **kwargs)
        return jax.jit(
            fn, in_shardings=(rep, rep, stacked_sharding(mesh), rep), out_shardings=(rep, rep), donate_argnums=0
        )
    fn = functools.partial(train_steps, **kwargs)
    return jax.jit(fn, out_shardings=(rep, rep), donate_argnums=0)
