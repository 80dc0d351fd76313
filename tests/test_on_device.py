"""The accelerator input path (issue 9, item 3): ``train.steps_per_dispatch`` (K train steps per jitted call,
``lax.scan``) and ``data.on_device`` (the cached training set held on the devices, batches gathered there).

Both must train exactly what one step per call on host batches trains: the scanned steps against the single
step (the compiled functions the loop uses), a whole epoch through ``train_and_evaluate`` on the device-resident
set with K = 2 (3 steps: a call of 2 and one of 1) against the host cached path, and the permutation against
``Dataset.batches``. Tolerances are float32 rounding between differently fused XLA programs (measured below).
"""

import json

import jax
import numpy as np
import pytest

from npejax import configuration
from npejax import datasets as data
from npejax import main as train_main
from npejax.nn import input_pipeline, model, steps, train
from npejax.schema import NETWORK_KEYS
from npejax.sim import pipeline

# Measured on the 2-core CPU (tiny network, float32): a rolled 3-step scan vs single steps, largest parameter
# difference 4.0e-7, losses identical; a device-resident epoch (K = 2, straight-line as on a CPU) vs the host
# epoch 1.5e-8 (6.2e-7 as a rolled scan), losses equal to metrics.csv's 4 decimals. Required: parameters within
# 1e-5 (absolute), losses within 1e-5 (relative).
PARAM_ATOL, LOSS_RTOL = 1e-5, 1e-5


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """A tiny config (independent tiles: faster to compile; the input path does not depend on the posterior)
    with a cached training set of 24 images (3 steps of 8) and a validation set of 8."""
    from conftest import make_tiny_config

    config = make_tiny_config()
    config.posterior.context = "independent"
    root = tmp_path_factory.mktemp("cached")
    spec = pipeline.SimulationSpec.from_config(config, seed=1, batch_size=8)
    data.write_dataset(spec, root / "train", 24, "train", num_workers=0, progress=False)
    data.write_dataset(spec, root / "val", 8, "val", num_workers=0, progress=False)
    config.data.train_dir, config.data.val_dir = str(root / "train"), str(root / "val")
    config.train.num_epochs, config.train.figure_every = 1, 0
    return config, root


@pytest.fixture(scope="module")
def loop(cached):
    """The pieces train_and_evaluate builds, as it builds them: data, mesh, normalizer, the initial state (on the
    host: each run puts a copy, the steps donate theirs), the compiled single train step and eval step, the
    validation batches and the step key."""
    config, _ = cached
    mesh = steps.data_mesh()
    training = input_pipeline.setup_data(config, mesh.size)
    state, normalizer, _ = train.restore_or_init(config, model.from_config(config), training, mesh)
    single, evaluate = steps.jit_steps(normalizer, mesh, config.model.variant, config.train.augment)
    val = input_pipeline.validation_batches(config, training, steps.batch_sharding(mesh))
    return dict(
        config=config,
        mesh=mesh,
        data=training,
        normalizer=normalizer,
        initial=jax.device_get(state),
        single=single,
        evaluate=evaluate,
        val=val,
        key=jax.random.key(config.seed + 1),
    )


def _host_epoch(loop, epoch=0):
    """One epoch of the host cached path (one step per call), as train_epochs runs it: (state, row)."""
    state = jax.device_put(loop["initial"], steps.replicated(loop["mesh"]))
    with input_pipeline.training_feed(loop["config"], loop["data"], epoch, epoch + 1, loop["mesh"]) as feed:
        step = feed.step_function(loop["config"], loop["normalizer"], loop["mesh"], loop["single"])
        assert step is loop["single"]  # K = 1 from the host: the plain train step
        state, row, *_ = train.run_epoch(
            loop["config"],
            loop["data"],
            state,
            step,
            loop["evaluate"],
            feed.inputs(epoch),
            loop["val"],
            loop["key"],
            epoch,
        )
    return state, row


def _max_difference(a, b) -> float:
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


@pytest.mark.fast
def test_a_training_set_too_large_for_the_device_is_refused(cached):
    config, root = cached
    ds = data.load(root / "train")
    size = input_pipeline.resident_bytes(ds)  # 24 images of 80 x 80: images, background (float32), psf, tile targets
    assert size == 24 * (2 * 80 * 80 * 4 + 6 * 4 + 20 * 20 * (1 + 2 * 4 + 1 + 4))
    input_pipeline.check_device_memory(ds, bytes_limit=2 * size)  # fits in 80% of it
    with pytest.raises(
        ValueError,
        match=r"data\.on_device=True: the training set .* needs 0\.00 GiB on every "
        r"device, more than 80% of",
    ):
        input_pipeline.check_device_memory(ds, bytes_limit=size)
    input_pipeline.check_device_memory(ds)  # a CPU reports no limit: nothing to check


@pytest.mark.fast
def test_epoch_order_is_the_cached_path_batches(cached):
    config, root = cached
    ds = data.load(root / "train")
    order = input_pipeline.epoch_order(len(ds), 8, seed=5)
    assert order.shape == (3, 8) and order.dtype == np.int32 and len(set(order.ravel())) == 24
    host = list(ds.batches(8, shuffle=True, seed=5, drop_remainder=True))
    assert len(host) == 3
    for rows, batch in zip(order, host):
        for key in NETWORK_KEYS:
            np.testing.assert_array_equal(ds[rows][key], batch[key], err_msg=key)
    assert [len(g) for g in input_pipeline.groups(range(7), 3)] == [3, 3, 1]


def test_an_on_device_epoch_trains_what_the_host_cached_path_trains(cached, loop, capsys):
    """train_and_evaluate on the device-resident set with steps_per_dispatch 2 (3 steps: calls of 2 and 1)
    against the host cached path's epoch (one step per call, the loop's own functions), augmentation on."""
    config, root = cached
    host, row = _host_epoch(loop)
    assert row["step"] == 3
    config = config.copy_and_resolve_references()
    config.data.on_device, config.train.steps_per_dispatch = True, 2
    device = train.train_and_evaluate(config, str(root / "device"))
    assert "data.on_device: 24 training images on the devices" in capsys.readouterr().out
    (d,) = device["history"]
    assert d["step"] == 3 and int(device["state"].step) == 3
    np.testing.assert_allclose(d["train_nll"], row["train_nll"], rtol=LOSS_RTOL)
    np.testing.assert_allclose(d["val_nll"], row["val_nll"], rtol=LOSS_RTOL)
    b = device["state"]
    difference = _max_difference((host.params, host.batch_stats), (b.params, b.batch_stats))
    print(f"on-device vs host epoch: largest parameter difference {difference:.2e}")
    assert difference < PARAM_ATOL
    # the batches of another epoch (seed + 1) from the same start train other parameters: the check can fail
    other, _ = _host_epoch(loop, epoch=1)
    assert _max_difference(other.params, host.params) > 100 * PARAM_ATOL


def test_scanned_steps_equal_single_steps(loop):
    """K = 3 steps in one call (three device batches, stacked on the devices; a rolled scan) against three calls
    of the train step, augmentation on: the same parameters, batch statistics, step and losses."""
    config, mesh = loop["config"], loop["mesh"]
    ds = loop["data"].train_ds
    batches = [
        steps.to_device(ds[rows], steps.batch_sharding(mesh)) for rows in input_pipeline.epoch_order(24, 8, seed=2)
    ]
    state, losses = jax.device_put(loop["initial"], steps.replicated(mesh)), []
    for batch in batches:
        state, loss = loop["single"](state, batch, loop["key"])
        losses.append(float(loss))
    # a rolled scan (the program on a GPU; on a CPU training runs the K steps straight-line, as the on-device
    # epoch test does)
    multi = steps.jit_multi_step(loop["normalizer"], mesh, config.model.variant, config.train.augment, unroll=1)
    scanned, scanned_losses = multi(
        jax.device_put(loop["initial"], steps.replicated(mesh)), tuple(batches), loop["key"]
    )
    assert int(state.step) == int(scanned.step) == 3 and scanned_losses.shape == (3,)
    print(
        f"scanned vs single: loss rtol {np.max(np.abs(np.asarray(scanned_losses) / losses - 1)):.2e}, params "
        f"{_max_difference((scanned.params, scanned.batch_stats), (state.params, state.batch_stats)):.2e}"
    )
    np.testing.assert_allclose(np.asarray(scanned_losses), losses, rtol=LOSS_RTOL)
    assert _max_difference((scanned.params, scanned.batch_stats), (state.params, state.batch_stats)) < PARAM_ATOL
    # the steps moved the parameters by far more than the tolerance (the comparison can fail)
    assert _max_difference(state.params, loop["initial"].params) > 100 * PARAM_ATOL


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"data.on_device": True}, "data.on_device=True needs a cached training set"),
        ({"train.steps_per_dispatch": 0}, "train.steps_per_dispatch=0: must be an integer >= 1"),
        ({"train.steps_per_dispatch": -2}, "train.steps_per_dispatch=-2"),
    ],
)
@pytest.mark.fast
def test_bad_input_path_config_is_refused(tiny_config, overrides, message):
    config = tiny_config()
    for key, value in overrides.items():
        section, leaf = key.split(".")
        config[section][leaf] = value
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        configuration.validate(config, num_devices=1)


@pytest.mark.fast
def test_on_device_with_simulate_first_is_accepted_and_bad_values_are_one_error_line(
    tmp_path, tiny_config, config_path, tiny_flags, capsys
):
    config = tiny_config()
    config.data.on_device, config.data.simulate_first, config.train.steps_per_dispatch = True, True, 4
    configuration.validate(config, num_devices=1)
    code = train_main.main(
        [
            "npejax-train",
            "--config",
            config_path("cpu_small"),
            "--workdir",
            str(tmp_path / "bad"),
            *tiny_flags(),
            "--config.data.on_device=True",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 2 and err.startswith("error:") and len(err.splitlines()) == 1, err
    assert "data.on_device=True needs a cached training set" in err and not (tmp_path / "bad").exists()


@pytest.mark.fast
def test_workdirs_from_before_the_input_path_keys_resume(tiny_config):
    """A checkpoint's config without data.on_device and train.steps_per_dispatch (written before they existed)
    matches today's config: both keys change how the batches reach the step, not which."""
    new = configuration.to_json(tiny_config())
    old = json.loads(json.dumps(new))
    del old["data"]["on_device"], old["train"]["steps_per_dispatch"]
    assert configuration.differences(old, new, ignore=configuration.RESUMABLE_KEYS) == []
    old["train"]["batch_size"] = 4  # a key that does change the training is still a difference
    assert configuration.differences(old, new, ignore=configuration.RESUMABLE_KEYS)
