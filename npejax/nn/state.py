"""The training state: parameters, batch-norm statistics and Adam with the paper's step schedule.

``TrainState`` is Flax's train state plus ``batch_stats`` (the batch-norm running means and variances of
:class:`npejax.nn.model.CatalogNet`). The optimizer is Adam at ``train.learning_rate``, multiplied by
``train.lr_decay`` once ``train.lr_decay_epoch`` epochs of ``steps_per_epoch`` steps are done (paper
Section 6: 1e-3, x0.1 after epoch 32). Parameters are initialized from ``jax.random.key`` on a
[1, image_size, image_size, channels] input of zeros, channels from ``model.variant``.

With ``train.ema_decay`` = d > 0 the state (:class:`AveragedTrainState`) also holds ``ema_params`` and
``ema_batch_stats``, exponential moving averages of the parameters and of the batch-norm statistics, updated after
every step with the decay min(d, (1 + n) / (10 + n)) at step n (the warm-up of TensorFlow's
``ExponentialMovingAverage``: the first steps' random parameters fade at once). Validation, the best checkpoint and
prediction use them (:func:`eval_variables`); training goes on from ``params`` (beyond the paper, which does not
average; measured on the CPU recipes in benchmarks/RESULTS.md, "Averaging the parameters": it does not remove their
multi-epoch excursions of the validation NLL). The statistics are averaged with the parameters because the averaged
parameters with the live statistics (an average over the last ~33 steps, momentum 0.97) are a mismatched network
(measured in the same section). With d = 0 (the default) the state is a plain :class:`TrainState`, as in the paper and
every earlier checkpoint.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state

from npejax.nn import inputs as inputs_lib


class TrainState(train_state.TrainState):
    batch_stats: Any = None


class AveragedTrainState(TrainState):
    """A :class:`TrainState` that also keeps ``ema_params`` and ``ema_batch_stats``, the moving averages of
    ``params`` and ``batch_stats`` (``train.ema_decay`` > 0). A separate class, so that a state without the
    averages has the pytree, and so the checkpoint layout, of every earlier checkpoint."""

    ema_params: Any = None
    ema_batch_stats: Any = None
    ema_decay: float = struct.field(pytree_node=False, default=0.0)

    def apply_gradients(self, *, grads, **kwargs):
        """Flax's step, then the moving averages of the new parameters and batch-norm statistics with the
        warmed-up decay."""
        new = super().apply_gradients(grads=grads, **kwargs)
        n = jnp.asarray(self.step, jnp.float32)  # an int before the first jitted step
        decay = jnp.minimum(self.ema_decay, (1.0 + n) / (10.0 + n))

        def average(old, now):
            return jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, old, now)

        return new.replace(
            ema_params=average(self.ema_params, new.params),
            ema_batch_stats=average(self.ema_batch_stats, new.batch_stats),
        )


def eval_variables(state: TrainState) -> dict:
    """The variables validation and prediction use: {"params", "batch_stats"}, the moving averages where the
    state keeps them (:class:`AveragedTrainState`)."""
    if isinstance(state, AveragedTrainState):
        return {"params": state.ema_params, "batch_stats": state.ema_batch_stats}
    return {"params": state.params, "batch_stats": state.batch_stats}


def num_parameters(params) -> int:
    """Number of scalars in a parameter tree (``state.params`` or ``variables["params"]``)."""
    return sum(int(leaf.size) for leaf in jax.tree_util.tree_leaves(params))


def learning_rate_schedule(config, steps_per_epoch: int):
    """Step -> learning rate: ``train.learning_rate``, times ``train.lr_decay`` from epoch ``train.lr_decay_epoch``."""
    boundary = int(config.train.lr_decay_epoch) * steps_per_epoch
    return optax.piecewise_constant_schedule(config.train.learning_rate, {boundary: config.train.lr_decay})


@functools.lru_cache(maxsize=8)
def _init_fn(net, shape: tuple[int, ...]):
    """``net.init`` on zeros of ``shape``, jit-compiled once per (network, input shape) in a process: the
    compilation of the initializers takes longer than a small network's epoch on a CPU."""
    return jax.jit(lambda k: net.init(k, jnp.zeros(shape, jnp.float32), train=False))


def create_state(config, net, steps_per_epoch: int, key) -> TrainState:
    """A fresh state for ``net`` (:func:`npejax.nn.model.from_config`), initialized from ``key``."""
    channels = inputs_lib.num_channels(config.model.variant, bool(config.model.get("mask_channel", False)))
    shape = (1, int(config.image_size), int(config.image_size), channels)
    variables = _init_fn(net, shape)(key)
    tx = optax.adam(learning_rate_schedule(config, steps_per_epoch))
    decay = float(config.train.ema_decay)
    if decay > 0:
        return AveragedTrainState.create(
            apply_fn=net.apply,
            params=variables["params"],
            tx=tx,
            batch_stats=variables["batch_stats"],
            ema_decay=decay,
            ema_params=jax.tree_util.tree_map(jnp.copy, variables["params"]),
            ema_batch_stats=jax.tree_util.tree_map(jnp.copy, variables["batch_stats"]),
        )
    return TrainState.create(
        apply_fn=net.apply, params=variables["params"], tx=tx, batch_stats=variables["batch_stats"]
    )


def abstract_state(config, net) -> TrainState:
    """The shapes and dtypes of :func:`create_state` (no computation), for restoring a checkpoint.

    The schedule's boundary does not change the state's structure, so any ``steps_per_epoch`` gives the
    same tree; 1 is used.
    """
    return jax.eval_shape(lambda: create_state(config, net, 1, jax.random.key(0)))
