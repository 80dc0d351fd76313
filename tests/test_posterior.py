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


@pytest.mark.fast
def test_tiles_to_sources_pixel_coordinates():
    tiles = dict(
        tile_has_source=np.zeros((2, 3, 3), bool),
        tile_locs=np.zeros((2, 3, 3, 2), np.float32),
        tile_flux=np.ones((2, 3, 3), np.float32),
        tile_is_galaxy=np.zeros((2, 3, 3), bool),
    )
    tiles["tile_has_source"][1, 2, 0] = True
    tiles["tile_locs"][1, 2, 0] = (0.25, 0.5)
    tiles["tile_flux"][1, 2, 0] = 7.0
    out = posterior.tiles_to_sources(tiles, tile_size=4)
    np.testing.assert_array_equal(out["image"], [1])
    np.testing.assert_allclose(out["y"], [9.0])  # (2 + 0.25) * 4
    np.testing.assert_allclose(out["x"], [2.0])  # (0 + 0.5) * 4
    np.testing.assert_allclose(out["flux"], [7.0])


@pytest.mark.fast
def test_wrong_parameter_count():
    with pytest.raises(ValueError, match="8 parameters"):
        posterior.TilePosterior.from_params(jnp.zeros((1, 2, 2, 7)))


# --- merge_split_sources (posterior.decode = "group") ---------------------------------------------------


def _tiles(prob, on=None):
    """Tile dict of probabilities [N, Th, Tw] (decoded on where given, else where prob > 0.5)."""
    prob = np.asarray(prob, np.float32)
    on = prob > 0.5 if on is None else np.asarray(on, bool)
    return dict(
        tile_has_source=on,
        prob_source=prob,
        tile_flux=np.full(prob.shape, 7.0, np.float32),
        tile_locs=np.full(prob.shape + (2,), 0.5, np.float32),
    )


@pytest.mark.fast
def test_merge_split_sources_detects_a_corner_source_once_with_the_windows_probability():
    prob = np.full((1, 4, 4), 0.01)
    prob[0, 1:3, 1:3] = [[0.30, 0.20], [0.35, 0.30]]  # a source on the corner between tiles 1 and 2
    tiles = _tiles(prob)
    assert not tiles["tile_has_source"].any()
    out = posterior.merge_split_sources(tiles)
    assert np.argwhere(out["tile_has_source"]).tolist() == [[0, 2, 1]]  # the most probable of the four
    assert out["prob_source"][0, 2, 1] == pytest.approx(1 - 0.70 * 0.80 * 0.65 * 0.70, rel=1e-6)
    # nothing else changed, and the argument is left as it was
    unchanged = np.ones((1, 4, 4), bool)
    unchanged[0, 2, 1] = False
    np.testing.assert_array_equal(out["prob_source"][unchanged], tiles["prob_source"][unchanged])
    assert out["tile_flux"] is tiles["tile_flux"] and not tiles["tile_has_source"].any()
    # the detection is kept by the catalog's probability cut
    sources = posterior.tiles_to_sources(out, 4, min_prob=0.5)
    assert len(sources["x"]) == 1 and sources["prob_source"][0] > 0.5


@pytest.mark.fast
def test_merge_split_sources_leaves_improbable_windows_and_decided_sources_alone():
    # every window's P(no source) = 0.9 ** 4 = 0.656 > 0.5: nothing to add
    tiles = _tiles(np.full((2, 5, 5), 0.1))
    out = posterior.merge_split_sources(tiles)
    assert not out["tile_has_source"].any()
    np.testing.assert_array_equal(out["prob_source"], tiles["prob_source"])
    # a source already decided, its neighbours at 0.2: windows holding it are skipped, the others have
    # P(none) >= 0.8 * 0.8 = 0.64
    prob = np.full((1, 5, 5), 0.0)
    prob[0, 1:4, 1:4] = 0.2
    prob[0, 2, 2] = 0.9
    out = posterior.merge_split_sources(_tiles(prob))
    assert np.argwhere(out["tile_has_source"]).tolist() == [[0, 2, 2]]
    # a 1-tile-wide grid has no window
    one_row = _tiles(np.full((1, 1, 6), 0.45))
    assert not posterior.merge_split_sources(one_row)["tile_has_source"].any()


@pytest.mark.fast
def test_merge_split_sources_takes_one_of_overlapping_windows_and_each_separate_one():
    prob = np.full((2, 6, 8), 0.01)
    prob[0, 1, 1:3] = 0.45  # a source on an edge: two windows hold both tiles, with equal P(none)
    prob[0, 4, 5:7] = 0.45  # a second one, far from the first
    prob[1, 3:5, 3:5] = 0.3  # another image: a corner source
    out = posterior.merge_split_sources(_tiles(prob))
    on = np.argwhere(out["tile_has_source"]).tolist()
    assert len(on) == 3, on
    assert sum(1 for b, i, j in on if b == 0 and i == 1 and j in (1, 2)) == 1
    assert sum(1 for b, i, j in on if b == 0 and i == 4 and j in (5, 6)) == 1
    assert sum(1 for b, i, j in on if b == 1 and 3 <= i <= 4 and 3 <= j <= 4) == 1
    # without spending a taken window's tiles, the window beside the corner source (two tiles at 0.3,
    # P(none) = 0.7 ** 2 * 0.99 ** 2 = 0.48) would have given it a second detection
    assert sum(1 for b, i, j in on if b == 1) == 1
