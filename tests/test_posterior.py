"""Variational posterior: NLL against scipy by hand, gating, point estimates, tiles -> sources."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from npejax.nn import posterior


def _random_case(seed=0, shape=(2, 3, 4)):
    rng = np.random.default_rng(seed)
    params = rng.normal(size=shape + (8,)).astype(np.float32)
    tiles = dict(
        tile_has_source=rng.random(shape) < 0.5,
        tile_locs=rng.uniform(0.01, 0.99, shape + (2,)).astype(np.float32),
        tile_is_galaxy=rng.random(shape) < 0.5,
        tile_flux=rng.uniform(0.7, 50.0, shape).astype(np.float32),
    )
    return params, tiles


def _nll_by_hand(params, tiles):
    """The loss from scipy.stats, tile by tile, following the parameterization in the module docstring."""
    b, th, tw, _ = params.shape
    total = np.zeros(b)
    for i in range(b):
        for r in range(th):
            for c in range(tw):
                p = params[i, r, c].astype(np.float64)
                has = bool(tiles["tile_has_source"][i, r, c])
                prob_on = special.expit(p[0])
                nll = -np.log(prob_on if has else 1 - prob_on)
                if has:
                    for axis in range(2):
                        loc = special.expit(p[1 + axis])
                        scale = posterior.MIN_LOC_SCALE + np.log1p(np.exp(p[3 + axis]))
                        a, bb = (0 - loc) / scale, (1 - loc) / scale
                        nll -= stats.truncnorm(a, bb, loc=loc, scale=scale).logpdf(tiles["tile_locs"][i, r, c, axis])
                    prob_gal = special.expit(p[5])
                    nll -= np.log(prob_gal if tiles["tile_is_galaxy"][i, r, c] else 1 - prob_gal)
                    sigma = posterior.MIN_FLUX_SCALE + np.log1p(np.exp(p[7]))
                    nll -= stats.lognorm(s=sigma, scale=np.exp(p[6])).logpdf(tiles["tile_flux"][i, r, c])
                total[i] += nll
    return total.mean()


def test_nll_matches_scipy_hand_computation():
    params, tiles = _random_case()
    q = posterior.TilePosterior.from_params(jnp.asarray(params))
    got = float(q.nll({k: jnp.asarray(v) for k, v in tiles.items()}))
    np.testing.assert_allclose(got, _nll_by_hand(params, tiles), rtol=2e-5)
    jitted = jax.jit(lambda p, t: posterior.TilePosterior.from_params(p).nll(t))(params, tiles)
    np.testing.assert_allclose(float(jitted), got, rtol=1e-6)


def test_empty_tiles_ignore_position_type_and_flux():
    params, tiles = _random_case(1)
    empty = ~tiles["tile_has_source"]
    changed = dict(tiles)
    changed["tile_locs"] = np.where(empty[..., None], 0.0, tiles["tile_locs"])  # even at the boundary
    changed["tile_is_galaxy"] = np.where(empty, ~tiles["tile_is_galaxy"], tiles["tile_is_galaxy"])
    changed["tile_flux"] = np.where(empty, 0.0, tiles["tile_flux"])  # outside the log-normal's support
    q = posterior.TilePosterior.from_params(jnp.asarray(params))
    np.testing.assert_allclose(float(q.nll(changed)), float(q.nll(tiles)), rtol=1e-6)
    # ... while the same change in an occupied tile does change the loss
    changed["tile_flux"] = tiles["tile_flux"] * 2
    assert abs(float(q.nll(changed)) - float(q.nll(tiles))) > 1e-3
    # and the gradient of the loss with respect to empty tiles' non-detection params is exactly zero
    grad = jax.grad(lambda p: posterior.TilePosterior.from_params(p).nll(tiles))(jnp.asarray(params))
    assert np.all(np.asarray(grad)[empty][:, 1:] == 0)
    assert np.all(np.asarray(grad)[empty][:, 0] != 0)


def test_mode_sample_and_summary():
    params, _ = _random_case(2)
    q = posterior.TilePosterior.from_params(jnp.asarray(params))
    mode = q.mode()
    np.testing.assert_array_equal(np.asarray(mode["tile_has_source"]), params[..., 0] > 0)
    np.testing.assert_allclose(np.asarray(mode["tile_flux"]), np.exp(params[..., 6]), rtol=1e-6)
    samples = q.sample(jax.random.key(0), 2000)
    assert samples["tile_locs"].shape == (2000,) + params.shape[:3] + (2,)
    assert np.all((np.asarray(samples["tile_locs"]) >= 0) & (np.asarray(samples["tile_locs"]) <= 1))
    freq = np.asarray(samples["tile_has_source"]).mean(0)
    np.testing.assert_allclose(freq, special.expit(params[..., 0]), atol=0.05)
    summary = q.summary()
    lo, hi = np.asarray(summary["flux_lo"]), np.asarray(summary["flux_hi"])
    flux = np.asarray(samples["tile_flux"])
    inside = ((flux > lo) & (flux < hi)).mean(0)
    np.testing.assert_allclose(inside, 0.6827, atol=0.05)


def test_tiles_to_sources_pixel_coordinates():
    tiles = dict(
        tile_has_source=np.zeros((2, 3, 3), bool), tile_locs=np.zeros((2, 3, 3, 2), np.float32),
        tile_flux=np.ones((2, 3, 3), np.float32), tile_is_galaxy=np.zeros((2, 3, 3), bool),
    )
    tiles["tile_has_source"][1, 2, 0] = True
    tiles["tile_locs"][1, 2, 0] = (0.25, 0.5)
    tiles["tile_flux"][1, 2, 0] = 7.0
    out = posterior.tiles_to_sources(tiles, tile_size=4)
    np.testing.assert_array_equal(out["image"], [1])
    np.testing.assert_allclose(out["y"], [9.0])  # (2 + 0.25) * 4
    np.testing.assert_allclose(out["x"], [2.0])  # (0 + 0.5) * 4
    np.testing.assert_allclose(out["flux"], [7.0])


def test_wrong_parameter_count():
    with pytest.raises(ValueError, match="8 parameters"):
        posterior.TilePosterior.from_params(jnp.zeros((1, 2, 2, 7)))
