"""Worker of tests/test_devices.py: three train steps, an eval step and prediction on the local devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu python tests/_devices_worker.py OUT.npz

Builds the tiny network of tests/conftest.py (:data:`conftest.TINY_OVERRIDES`, the checkerboard posterior of
configs/cpu_small.py) on 32 x 32 images, simulates fixed batches (seed 7; the same in every process), and on a
mesh over all local devices (:func:`npejax.nn.steps.data_mesh`: the batch sharded, the state replicated, as
training does) runs :func:`npejax.nn.steps.jit_steps`'s train step three times (augmentation on) and its eval
step once, then predicts 8 images with :class:`npejax.nn.predictor.Predictor`: on one device through
``predict_tiles`` (the reference), on several with its network call on the images sharded over the mesh (one
prediction compile per process). Writes ``OUT.npz``: ``devices`` (count), ``startup`` (the line training
prints, :func:`npejax.nn.train.describe_devices`), ``images`` (the data, to show both processes saw the same),
``losses`` [3], ``eval_nll``, ``param/<path>`` and ``batch_stats/<path>`` (after the 3 steps), and the per-tile
outputs [8, 8, 8]: ``predict/<key>`` (one device) or ``sharded/<key>`` with ``sharded_devices`` (how many
devices held the output).
"""

from __future__ import annotations

import sys

import conftest  # tests/ is sys.path[0] when this file is run; conftest puts the repository root on it
import jax
import numpy as np

from npejax.nn import inputs as inputs_lib
from npejax.nn import model as model_lib
from npejax.nn import predictor as predictor_lib
from npejax.nn import state as state_lib
from npejax.nn import steps as steps_lib
from npejax.nn import train
from npejax.sim import pipeline

BATCH = 8  # global batch: 2 images per device on 4 devices
IMAGE_SIZE = 32
SEED = 7


def tiny_config():
    config = conftest.make_tiny_config()
    config.image_size = IMAGE_SIZE
    config.prior.sources_per_pixel = 4e-3  # about 4 sources per 32 x 32 image (the default gives 0.6)
    return config


def initial_state(config, net) -> state_lib.TrainState:
    """:func:`npejax.nn.state.create_state`'s state (its optimizer and tree) with parameters drawn by NumPy
    (seed 7: kernels N(0, 1/fan_in), batch-norm scales and variances 1, the rest 0): the jitted Flax
    initializer takes longer to compile than the train step, and the test is not about it."""
    abstract = state_lib.abstract_state(config, net)
    rng = np.random.default_rng(SEED)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if name.endswith("['kernel']"):
            return rng.normal(0.0, 1.0 / np.sqrt(np.prod(leaf.shape[:-1])), leaf.shape).astype(leaf.dtype)
        return np.full(leaf.shape, name.endswith(("['scale']", "['var']")), leaf.dtype)

    params, batch_stats = (
        jax.tree_util.tree_map_with_path(draw, tree) for tree in (abstract.params, abstract.batch_stats)
    )
    return state_lib.TrainState.create(
        apply_fn=abstract.apply_fn, params=params, tx=abstract.tx, batch_stats=batch_stats
    )


def flat(tree, prefix: str) -> dict:
    return {
        prefix + jax.tree_util.keystr(path): np.asarray(jax.device_get(leaf))
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def main(out: str) -> None:
    config = tiny_config()
    mesh = steps_lib.data_mesh()
    spec = pipeline.SimulationSpec.from_config(config, seed=SEED, batch_size=BATCH)
    batches = [pipeline.simulate_batch(spec, i) for i in range(5)]  # 3 train, 1 eval, 1 predict
    normalizer = inputs_lib.Normalizer.fit(
        *(np.concatenate([b[k] for b in batches[:3]]) for k in ("images", "background", "psf_params"))
    )
    net = model_lib.from_config(config)
    state = jax.device_put(initial_state(config, net), steps_lib.replicated(mesh))
    train_step, eval_step = steps_lib.jit_steps(normalizer, mesh, config.model.variant, do_augment=True)
    sharding = steps_lib.batch_sharding(mesh)
    key = jax.random.key(1)
    losses = []
    for batch in batches[:3]:
        state, loss = train_step(state, steps_lib.to_device(batch, sharding), key)
        losses.append(float(loss))
    eval_nll = float(eval_step(state, steps_lib.to_device(batches[3], sharding)))

    variables = {"params": state.params, "batch_stats": state.batch_stats}
    predictor = predictor_lib.Predictor(config, variables, normalizer)
    b = batches[4]
    if mesh.size == 1:  # the reference: the public API (a 4-device process's predict_tiles: tests/test_train.py)
        tiles = predictor.predict_tiles(b["images"], b["background"], b["psf_params"])
        outputs = {f"predict/{k}": v for k, v in tiles.items()}
    else:  # the predictor's network call with the images split over the mesh, as the eval step's batch
        put = lambda a: jax.device_put(np.asarray(a, np.float32), sharding)
        sharded = predictor._forward(
            variables,
            put(b["images"]),
            put(b["background"]),
            put(b["psf_params"]),
            jax.numpy.asarray([0, 0], jax.numpy.int32),
        )
        devices = len(sharded["prob_source"].sharding.device_set)
        sharded = predictor.read_tiles({k: np.asarray(jax.device_get(v)) for k, v in sharded.items()})
        outputs = {f"sharded/{k}": v for k, v in sharded.items()}
        outputs["sharded_devices"] = devices

    np.savez(
        out,
        devices=mesh.size,
        startup=train.describe_devices(mesh, BATCH),
        images=np.stack([x["images"] for x in batches]),
        losses=np.asarray(losses),
        eval_nll=eval_nll,
        **flat(state.params, "param/"),
        **flat(state.batch_stats, "batch_stats/"),
        **outputs,
    )


if __name__ == "__main__":
    main(sys.argv[1])
