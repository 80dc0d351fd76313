"""The module-level train and eval steps on a tiny network, their compiled versions, and the epoch length."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from npejax import configuration
from npejax.nn import input_pipeline, inputs, model, posterior, steps
from npejax.nn import state as state_lib
from npejax.schema import NETWORK_KEYS
from npejax.sim import pipeline


@pytest.fixture(scope="module")
def tiny(load_config):
    """A tiny network's fresh state, one fixed simulated batch of 8 images, and its normalizer."""
    config = load_config(
        "cpu_small", {"model.width": 4, "model.stem_blocks": 1, "model.stages": ((1, 0, 1), (1, 0, 2), (1, 0, 2))}
    )
    net = model.from_config(config)
    state = state_lib.create_state(config, net, steps_per_epoch=100, key=jax.random.key(0))
    spec = pipeline.SimulationSpec.from_config(config, seed=3, batch_size=8)
    host = pipeline.simulate_batch(spec, 0)
    batch = {k: jnp.asarray(host[k]) for k in NETWORK_KEYS}
    normalizer = inputs.Normalizer.fit(host["images"], host["background"], host["psf_params"])
    return config, state, batch, normalizer


def test_loss_of_a_fixed_batch_falls_over_20_steps(tiny):
    config, state, batch, normalizer = tiny
    step = jax.jit(
        functools.partial(steps.train_step, normalizer=normalizer, variant=config.model.variant, do_augment=False)
    )
    losses = []
    for _ in range(20):
        state, loss = step(state, batch, jax.random.key(1))
        losses.append(float(loss))
    assert int(state.step) == 20
    # Measured: 35.1 -> 31.7 nats per image, falling at every step. Required: at least 2 nats (about 6%),
    # and every step after the first 5 below the start.
    assert losses[-1] < losses[0] - 2.0, losses
    assert all(loss < losses[0] for loss in losses[5:]), losses


def test_train_step_loss_is_the_posterior_nll_before_the_update(tiny):
    config, state, batch, normalizer = tiny
    feats = steps.features(batch, normalizer, config.model.variant)
    out, _ = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats},
        feats,
        train=True,
        tiles=batch,
        mutable=["batch_stats"],
    )  # the true catalog as the checkerboard's context
    expected = posterior.TilePosterior.from_params(out).nll(batch)
    step = jax.jit(
        functools.partial(steps.train_step, normalizer=normalizer, variant=config.model.variant, do_augment=False)
    )  # jit only for speed: the same function
    new_state, loss = step(state, batch, jax.random.key(1))
    np.testing.assert_allclose(float(loss), float(expected), rtol=2e-5)  # float32 sums, jit vs eager
    assert int(new_state.step) == int(state.step) + 1
    moved = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), new_state.params, state.params)
    assert any(jax.tree_util.tree_leaves(moved))


def test_eval_step_sums_the_nll_over_images_and_tiles(tiny):
    config, state, batch, normalizer = tiny
    total = steps.eval_step(state, batch, normalizer, config.model.variant)
    feats = steps.features(batch, normalizer, config.model.variant)
    out = model.from_config(config).apply(
        {"params": state.params, "batch_stats": state.batch_stats}, feats, train=False
    )
    q = posterior.TilePosterior.from_params(out)
    np.testing.assert_allclose(float(total), float(jnp.sum(q.tile_nll(batch))), rtol=1e-5)
    np.testing.assert_allclose(float(total) / 8, float(q.nll(batch)), rtol=1e-5)  # the training loss's mean


def test_jitted_sharded_steps_match_the_plain_functions(tiny):
    config, state, batch, normalizer = tiny
    mesh = steps.data_mesh()
    train_step, eval_step = steps.jit_steps(normalizer, mesh, config.model.variant, do_augment=True)
    key = jax.random.key(7)
    plain_train = jax.jit(
        functools.partial(steps.train_step, normalizer=normalizer, variant=config.model.variant, do_augment=True)
    )  # no shardings, no donation
    expected_state, expected_loss = plain_train(state, batch, key)
    expected_eval = steps.eval_step(expected_state, batch, normalizer, config.model.variant)
    on_device = steps.to_device(batch, steps.batch_sharding(mesh))
    assert set(on_device) == set(NETWORK_KEYS)
    got_state, got_loss = train_step(jax.device_put(state, steps.replicated(mesh)), on_device, key)
    np.testing.assert_allclose(float(got_loss), float(expected_loss), rtol=1e-5)
    # the eval step compiled with shardings against the plain one, after a step of each: float32 rounding of two
    # programs (1.85e-5 relative on the 2-core CI machine of 2026-12, 4e-6 on the earlier one)
    np.testing.assert_allclose(float(eval_step(got_state, on_device)), float(expected_eval), rtol=1e-4)


def test_augment_moves_pixels_and_catalog_without_changing_them(tiny):
    """The augmented batch holds the same pixels and catalog entries per image, rearranged; the PSF stays."""
    _, _, batch, _ = tiny
    out = steps.augment(batch, jax.random.key(0))
    assert set(out) == set(batch)
    np.testing.assert_array_equal(np.asarray(out["psf_params"]), np.asarray(batch["psf_params"]))
    for key in ("images", "tile_flux"):
        np.testing.assert_allclose(
            np.sort(np.asarray(out[key]).reshape(8, -1), axis=1), np.sort(np.asarray(batch[key]).reshape(8, -1), axis=1)
        )
    assert np.asarray(out["tile_has_source"]).sum() == np.asarray(batch["tile_has_source"]).sum()


@pytest.mark.parametrize(
    "name, batch_size, expected",
    [
        ("default", 32, 210_000 // 32),  # the paper's 210k images per epoch
        ("default", 64, 210_000 // 64),  # a larger batch keeps the epoch's images, not its steps
        ("cpu_small", 32, 40),  # 1280 images, as before images_per_epoch
        ("cpu_small", 16, 80),  # cpu_small's own batch
    ],
)
@pytest.mark.fast
def test_steps_per_epoch_from_images_per_epoch(load_config, name, batch_size, expected):
    config = load_config(name, {"train.batch_size": batch_size})
    assert input_pipeline.steps_per_epoch(config) == expected


@pytest.mark.fast
def test_steps_per_epoch_errors_name_the_keys(load_config):
    config = load_config("cpu_small", {"train.images_per_epoch": 8})
    with pytest.raises(ValueError, match="train.images_per_epoch=8 is smaller than train.batch_size=16"):
        input_pipeline.steps_per_epoch(config)


@pytest.mark.fast
def test_learning_rate_decays_after_lr_decay_epoch(load_config):
    config = load_config("cpu_small")  # 3e-3, x0.1 after epoch 10
    schedule = state_lib.learning_rate_schedule(config, steps_per_epoch=40)
    assert float(schedule(0)) == pytest.approx(3e-3)
    assert float(schedule(10 * 40 - 1)) == pytest.approx(3e-3)
    assert float(schedule(10 * 40)) == pytest.approx(3e-4)


def test_bfloat16_trains_like_float32(tiny):
    """30 steps on the same batches from the same initial state in float32 and bfloat16 (activations; parameters
    and the loss float32): the losses agree to the tolerance measured here, and both fall. Measured on the
    2-core CPU: largest relative difference of the per-step losses 0.0037 (last step 0.0014); required 0.02."""
    config, _, batch, normalizer = tiny  # a fresh state: other tests donate the fixture's to their jitted steps
    spec = pipeline.SimulationSpec.from_config(config, seed=4, batch_size=8)
    batches = [
        {k: jnp.asarray(v) for k, v in pipeline.simulate_batch(spec, i).items() if k in NETWORK_KEYS} for i in range(3)
    ]
    losses = {}
    for dtype in ("float32", "bfloat16"):
        c = config.copy_and_resolve_references()
        c.model.dtype = dtype
        net = model.from_config(c)
        s = state_lib.create_state(c, net, steps_per_epoch=100, key=jax.random.key(0))  # same float32 parameters
        step = jax.jit(
            functools.partial(steps.train_step, normalizer=normalizer, variant=c.model.variant, do_augment=False)
        )
        losses[dtype] = []
        for i in range(30):
            s, loss = step(s, batches[i % 3], jax.random.key(1))
            losses[dtype].append(float(loss))
    f32, bf16 = np.asarray(losses["float32"]), np.asarray(losses["bfloat16"])
    assert np.all(np.isfinite(bf16))
    rel = np.abs(bf16 - f32) / np.abs(f32)
    assert rel.max() < 0.02, rel
    assert bf16[-3:].mean() < bf16[:3].mean() - 1.0 and f32[-3:].mean() < f32[:3].mean() - 1.0


def test_moving_average_of_the_parameters(tiny, load_config):
    """train.ema_decay: the parameters follow the same path as without the average; ema_params and
    ema_batch_stats are the recursion e <- d_n e + (1 - d_n) p_n with d_n = min(d, (1 + n) / (10 + n)) over
    that path, computed here by hand; the eval step scores the averages."""
    config, _, batch, normalizer = tiny
    net = model.from_config(config)  # fresh states: other tests donate the fixture's state to jitted steps
    state = state_lib.create_state(config, net, 100, jax.random.key(0))
    averaged = state_lib.create_state(_with(config, ema_decay=0.9), net, 100, jax.random.key(0))
    assert not hasattr(state, "ema_params") and state_lib.eval_variables(state)["params"] is state.params
    step = jax.jit(
        functools.partial(steps.train_step, normalizer=normalizer, variant=config.model.variant, do_augment=False)
    )
    as_numpy = functools.partial(jax.tree_util.tree_map, np.asarray)
    expected = as_numpy({"params": averaged.params, "batch_stats": averaged.batch_stats})
    plain = state
    for n in range(4):
        plain, _ = step(plain, batch, jax.random.key(1))
        averaged, _ = step(averaged, batch, jax.random.key(1))
        d = min(0.9, (1 + n) / (10 + n))  # 0.1, 0.18, 0.25, 0.31: the warm-up, not yet 0.9
        now = as_numpy({"params": averaged.params, "batch_stats": averaged.batch_stats})
        expected = jax.tree_util.tree_map(lambda e, p: d * e + (1 - d) * p, expected, now)
    leaves = jax.tree_util.tree_leaves
    for a, b in zip(leaves((plain.params, plain.batch_stats)), leaves((averaged.params, averaged.batch_stats))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the average does not steer training
    got = state_lib.eval_variables(averaged)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(expected)
    for a, b in zip(leaves(expected), leaves(got)):
        np.testing.assert_allclose(np.asarray(b), a, rtol=1e-5, atol=1e-7)
    assert any(bool(jnp.any(a != b)) for a, b in zip(leaves(averaged.params), leaves(got["params"])))
    assert any(bool(jnp.any(a != b)) for a, b in zip(leaves(averaged.batch_stats), leaves(got["batch_stats"])))
    # the eval step scores the averages, not the live parameters and statistics
    as_average = plain.replace(params=got["params"], batch_stats=got["batch_stats"])
    np.testing.assert_allclose(
        float(steps.eval_step(averaged, batch, normalizer, config.model.variant)),
        float(steps.eval_step(as_average, batch, normalizer, config.model.variant)),
        rtol=1e-6,
    )
    assert float(steps.eval_step(averaged, batch, normalizer, config.model.variant)) != pytest.approx(
        float(steps.eval_step(plain, batch, normalizer, config.model.variant)), rel=1e-6
    )


def _with(config, **train):
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.train.update(train)
    return config


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5])
@pytest.mark.fast
def test_ema_decay_outside_zero_one_is_refused(load_config, value):
    config = _with(load_config("cpu_small"), ema_decay=value)
    with pytest.raises(ValueError, match=r"train.ema_decay=.*must be in \[0, 1\)"):
        configuration.validate(config, num_devices=1)
