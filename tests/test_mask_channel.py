"""The mask input channel (``model.mask_channel``, npejax.nn.inputs "Mask channel"; issue 23, item 2): its contents,
the dihedral augmentation moving ``mask`` with the image, a tiny network trained with every artifact and the channel,
the predictor giving it a user's NaN pixels, and networks saved before the key loading unchanged."""

from __future__ import annotations

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

from npejax import configuration
from npejax.nn import inputs, steps
from npejax.nn.predictor import Predictor

ARTIFACTS = ("cosmic_rays", "saturation", "spikes", "bad_columns", "satellite", "masked")


def _normalizer(mask_channel: bool) -> inputs.Normalizer:
    rng = np.random.default_rng(0)
    images = rng.normal(0.0, 1.0, (4, 16, 16))
    return inputs.Normalizer.fit(images, np.full((4, 16, 16), 5.0), rng.uniform(1, 2, (4, 6)), mask_channel)


@pytest.mark.fast
def test_mask_channel_is_the_nan_or_given_pixels_and_they_read_as_zero():
    plain, masked = _normalizer(False), _normalizer(True)
    assert dataclasses.replace(masked, mask_channel=False) == plain  # the same statistics: only the channel differs
    rng = np.random.default_rng(1)
    images = rng.normal(0.0, 1.0, (2, 16, 16)).astype(np.float32)
    background, psf = np.full((2, 16, 16), 5.0, np.float32), np.ones((2, 6), np.float32)
    holes = np.zeros((2, 16, 16), bool)
    holes[0, 3:6, 4:9] = True
    flagged = np.zeros_like(holes)
    flagged[1, 10, :] = True
    with_nan = np.where(holes, np.float32(np.nan), images)

    f = masked.features(with_nan, background, psf, "psf_aware", flagged)
    assert f.shape == (2, 16, 16, inputs.num_channels("psf_aware", True)) == (2, 16, 16, 22)
    np.testing.assert_array_equal(f[..., -1], (holes | flagged).astype(np.float32))
    # every other channel is the plain network's input of the image with its masked pixels at 0
    zeroed = np.where(holes | flagged, np.float32(0), images)
    np.testing.assert_array_equal(f[..., :-1], plain.features(zeroed, background, psf, "psf_aware"))
    # no NaN, no mask: an all-zero mask channel (jax arrays as in training)
    g = masked.features(jnp.asarray(images), jnp.asarray(background), jnp.asarray(psf), "psf_aware")
    np.testing.assert_array_equal(np.asarray(g[..., -1]), 0.0)
    # without the channel the mask is ignored: the inputs of the networks trained before the key
    np.testing.assert_array_equal(
        plain.features(images, background, psf, "psf_aware", flagged),
        plain.features(images, background, psf, "psf_aware"),
    )
    assert plain.features(images, background, psf, "single_field").shape[-1] == inputs.num_channels("single_field")


@pytest.mark.fast
def test_normalizer_saves_the_channel_only_when_on_and_old_ones_load_without_it():
    plain, masked = _normalizer(False), _normalizer(True)
    assert "mask_channel" not in plain.to_dict()  # saved (and hashed) as before the key
    assert masked.to_dict()["mask_channel"] is True
    assert inputs.Normalizer.from_dict(json.loads(json.dumps(masked.to_dict()))) == masked
    assert inputs.Normalizer.from_dict(json.loads(json.dumps(plain.to_dict()))).mask_channel is False
    with pytest.raises(ValueError, match="NaN or infinite"):
        inputs.Normalizer.fit(np.full((1, 4, 4), np.nan), np.ones((1, 4, 4)), np.ones((1, 6)))


@pytest.mark.fast
def test_dihedral_moves_mask_and_artifact_bits_with_the_image_and_batches_without_them_still_work():
    rng = np.random.default_rng(2)
    n, size, tiles = 8, 16, 4
    batch = {
        "images": jnp.asarray(rng.normal(size=(n, size, size)), jnp.float32),
        "background": jnp.asarray(rng.uniform(1, 2, (n, size, size)), jnp.float32),
        "tile_has_source": jnp.asarray(rng.uniform(size=(n, tiles, tiles)) < 0.5),
        "tile_locs": jnp.asarray(rng.uniform(size=(n, tiles, tiles, 2)), jnp.float32),
        "tile_is_galaxy": jnp.zeros((n, tiles, tiles), bool),
        "tile_flux": jnp.ones((n, tiles, tiles), jnp.float32),
    }
    batch["mask"] = batch["images"] > 1.0
    batch["artifact_bits"] = jnp.where(batch["images"] < -1.0, 32, 0).astype(jnp.uint8)
    for k in range(8):
        out = steps.dihedral({key: v[0] for key, v in batch.items()}, jnp.asarray(k))
        assert not np.array_equal(out["images"], batch["images"][0]) or k == 0
        np.testing.assert_array_equal(out["mask"], out["images"] > 1.0)
        np.testing.assert_array_equal(out["artifact_bits"], np.where(out["images"] < -1.0, 32, 0))
    import jax  # noqa: PLC0415

    key = jax.random.key(3)
    with_mask = steps.augment(batch, key)
    np.testing.assert_array_equal(with_mask["mask"], with_mask["images"] > 1.0)
    without = steps.augment({k: v for k, v in batch.items() if k not in ("mask", "artifact_bits")}, key)
    assert set(without) == set(batch) - {"mask", "artifact_bits"}
    for k in without:  # the same draws: moving the mask changes nothing else
        np.testing.assert_array_equal(without[k], with_mask[k])


@pytest.mark.fast
def test_saved_configs_without_the_key_load_without_the_channel(load_config):
    saved = configuration.to_json(load_config("cpu"))
    del saved["model"]["mask_channel"]
    assert configuration.upgrade(saved)["model"]["mask_channel"] is False
    assert not configuration.saved_differences(configuration.upgrade(saved), load_config("cpu"))
    assert load_config("cpu_artifacts").model.mask_channel is True


@pytest.mark.fast
def test_masked_blocks_and_the_mask_channel_must_agree(load_config):
    config = load_config("cpu_artifacts")
    configuration.validate(config, 1)
    config.model.mask_channel = False
    with pytest.raises(ValueError, match='artifacts.masked.fill="nan" with model.mask_channel=False'):
        configuration.validate(config, 1)
    config.model.mask_channel, config.artifacts.masked.fill = True, "zero"
    with pytest.raises(ValueError, match="artifacts.masked.fill='zero' with model.mask_channel=True"):
        configuration.validate(config, 1)


@pytest.fixture(scope="module")
def masked_network(tmp_path_factory, tiny_config):
    """A tiny network trained one epoch with every artifact on (masked blocks in most images, NaN-filled) and the
    mask channel."""
    from npejax.nn import train  # noqa: PLC0415

    config = tiny_config()
    config.train.num_epochs = 1
    for name in ARTIFACTS:
        config.artifacts[name].enabled = True
    config.artifacts.masked.rate = 2.0
    config.artifacts.masked.fill = "nan"
    config.model.mask_channel = True
    workdir = tmp_path_factory.mktemp("masked")
    train.train_and_evaluate(config, str(workdir))
    return workdir


def test_a_network_trains_with_every_artifact_and_the_mask_channel(masked_network):
    predictor = Predictor.from_workdir(str(masked_network))
    assert predictor.normalizer.mask_channel and predictor.config.model.mask_channel
    reads = {np.shape(v)[2] for k, v in _flat(predictor.variables["params"]).items() if np.ndim(v) == 4}
    assert inputs.num_channels("psf_aware", True) in reads  # the first conv reads 22 channels
    assert inputs.num_channels("psf_aware") not in reads
    rows = [line for line in (masked_network / "metrics.csv").read_text().splitlines()[1:] if line]
    assert len(rows) == 1 and "nan" not in rows[0].lower()


def test_the_predictor_gives_a_users_nan_pixels_as_the_mask_channel(masked_network):
    predictor = Predictor.from_workdir(str(masked_network))
    rng = np.random.default_rng(4)
    images = rng.normal(0.0, 0.3, (2, 32, 32)).astype(np.float32)
    holes = np.zeros(images.shape, bool)
    holes[0, 4:20, 8:24] = True
    background, psf = 3.0, np.asarray([1.2, 3.0, 0.1, 3.0, 0.05, 0.9], np.float32)
    zeroed = np.where(holes, np.float32(0), images)
    told = predictor.predict_tiles(zeroed, background, psf, mask=holes)
    untold = predictor.predict_tiles(zeroed, background, psf)
    # the channel reaches the network (a one-epoch tiny network: small differences, but differences)
    assert not np.array_equal(told["prob_source"][0], untold["prob_source"][0])
    np.testing.assert_array_equal(told["prob_source"][1], untold["prob_source"][1])  # image 1 has no masked pixel
    table = predictor.catalog(np.where(holes, np.float32(np.nan), images), background, psf, min_prob=0.0)
    zero_filled = predictor.catalog(zeroed, background, psf, min_prob=0.0)  # the same pixels the network reads
    assert np.asarray(table["masked_frac"]).max() > 0

    def probs(t, i):
        return np.asarray(t["prob_source"])[np.asarray(t["image"]) == i]

    np.testing.assert_array_equal(probs(table, 1), probs(zero_filled, 1))
    a, b = probs(table, 0), probs(zero_filled, 0)
    assert a.shape != b.shape or not np.array_equal(a, b)  # only the NaN pixels' mask tells them apart


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out
