"""Catalog prior marginals against scipy, the paper's equal-count r cut-offs, padding, and the
one-source-per-tile catalog."""

import dataclasses

import numpy as np
import pytest
from scipy import optimize, stats

from configs import default  # the repository root is on sys.path (conftest.py)
from npejax import schema
from npejax.sim import prior

pytestmark = pytest.mark.fast  # the whole file is in the fast tier

P_MIN = 1e-3


def _default_prior(**changes):
    """The paper's prior (configs/default.py) on 80 x 80 images, with ``changes``."""
    return dataclasses.replace(prior.CatalogPrior.from_config(default.get_config().prior, (80, 80)), **changes)


@pytest.fixture(scope="module")
def draws():
    p = _default_prior()
    cat = p.sample(np.random.default_rng(0), 6000)  # ~24k sources
    valid = np.arange(p.max_sources)[None, :] < cat["n_sources"][:, None]
    return p, cat, valid


def test_source_count_is_poisson_mean_4(draws):
    p, cat, _ = draws
    n = cat["n_sources"]
    assert p.mean_sources == pytest.approx(4.0)
    assert n.mean() == pytest.approx(4.0, abs=0.08) and n.var() == pytest.approx(4.0, abs=0.25)
    counts = np.bincount(n, minlength=13)[:12]
    expected = stats.poisson(4.0).pmf(np.arange(12)) * len(n)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert stats.chi2(11).sf(chi2) > P_MIN


def test_marginals_pass_ks_against_scipy(draws):
    p, cat, valid = draws
    gal = valid & cat["is_galaxy"]
    star = valid & ~cat["is_galaxy"]
    checks = {
        "star flux": (cat["flux"][star], stats.truncpareto(b=0.469, c=613314, loc=-0.553, scale=1.185).cdf),
        "galaxy flux": (cat["flux"][gal], stats.truncpareto(b=1.561, c=1000, loc=-3.29, scale=3.925).cdf),
        "disk a": (cat["disk_a"][gal], stats.gamma(0.393, loc=0.837, scale=4.432).cdf),
        "bulge a": (cat["bulge_a"][gal], stats.gamma(0.393, loc=0.419, scale=2.216).cdf),
        "angle": (cat["angle"][gal], stats.uniform(0, np.pi).cdf),
        "disk frac": (cat["disk_frac"][gal], stats.uniform(0, 1).cdf),
        "disk q": (cat["disk_q"][gal], stats.uniform(0.01, 0.99).cdf),
        "bulge q": (cat["bulge_q"][gal], stats.uniform(0.01, 0.99).cdf),
        "x": (cat["x"][valid], stats.uniform(0, 80).cdf),
        "y": (cat["y"][valid], stats.uniform(0, 80).cdf),
    }
    for name, (sample, cdf) in checks.items():
        assert stats.kstest(sample.astype(np.float64), cdf).pvalue > P_MIN, name
    # both flux priors start at r = 23.0 (0.631 nmgy); the paper's printed galaxy scale 3.29 would give 0
    assert cat["flux"][gal].min() >= 0.631 and cat["flux"][star].min() >= 0.631
    # star fluxes run past r 14.8, the end of the c = 1000 prior printed in the paper's Table 1
    assert cat["flux"][star].max() > 1184.5
    frac = gal.sum() / valid.sum()
    assert stats.binomtest(int(gal.sum()), int(valid.sum()), 0.514).pvalue > P_MIN, frac


# The paper's equal-count bin edges of r (stars + galaxies with r < 22, deciles; last edge 22), Section 5
PAPER_CUTOFFS = np.array([17.777, 19.101, 19.781, 20.258, 20.625, 20.940, 21.227, 21.495, 21.746])
DECILES = np.arange(1, 10) / 10


def _r_cdf(p):
    """P(r < m) as a function of m for one source of prior ``p``, from the prior's own flux distributions."""

    def cdf(m):
        flux = 10.0 ** ((22.5 - m) / 2.5)
        return p.prob_galaxy * p.galaxy_flux_dist().sf(flux) + (1 - p.prob_galaxy) * p.star_flux_dist().sf(flux)

    return cdf


def _exact_cutoffs(p):
    """Deciles of r among sources with r < 22 (root finding on :func:`_r_cdf`) and the density there."""
    cdf = _r_cdf(p)
    total = cdf(22.0)
    cut = np.array([optimize.brentq(lambda m: cdf(m) / total - q, 5.0, 22.0, xtol=1e-6) for q in DECILES])
    density = (cdf(cut + 1e-4) - cdf(cut - 1e-4)) / 2e-4 / total
    return cut, density


def test_star_flux_truncation_reproduces_the_paper_cutoffs():
    """c = 613314 (the experiments' value) gives the paper's cut-offs; c = 1000 (its Table 1) does not."""
    p = _default_prior()
    assert p.star_flux[1] == 613314.0
    cut, _ = _exact_cutoffs(p)
    assert np.abs(cut - PAPER_CUTOFFS).max() < 0.05, cut - PAPER_CUTOFFS  # 0.042, at the first decile
    table1 = _default_prior(star_flux=(0.469, 1000.0, -0.553, 1.185))
    cut_1000, _ = _exact_cutoffs(table1)
    assert cut_1000[0] - PAPER_CUTOFFS[0] > 0.4  # 18.19: too faint by 0.41 mag


def test_prior_draws_reproduce_the_paper_cutoffs():
    """Equal-count deciles of r from 4M sources drawn by the sampler: within 0.05 mag of the paper's, and
    within 4 standard errors of the exact deciles (the first decile's is 6.0 / sqrt(n) = 0.0035 mag, so
    0.05 is 2.3 of them above the exact 0.042 offset). Images of 400 x 400 pixels (100 sources each, same
    rate per pixel) only cut the sampler's padding; the sources are the prior's."""
    p = _default_prior(image_shape=(400, 400), max_sources=160)
    rng = np.random.default_rng(1)
    mags = []
    for _ in range(4):
        cat = p.sample(rng, 10_000)
        valid = np.arange(p.max_sources)[None, :] < cat["n_sources"][:, None]
        r = 22.5 - 2.5 * np.log10(cat["flux"][valid].astype(np.float64))
        mags.append(r[r < 22.0])
    mags = np.concatenate(mags)
    assert mags.size > 2_800_000
    cut = np.quantile(mags, DECILES)
    assert np.abs(cut - PAPER_CUTOFFS).max() < 0.05, cut - PAPER_CUTOFFS
    exact, density = _exact_cutoffs(p)
    stderr = np.sqrt(DECILES * (1 - DECILES) / mags.size) / density
    assert np.all(np.abs(cut - exact) < 4 * stderr), (cut - exact) / stderr


def test_padding_and_star_fields_are_zero(draws):
    p, cat, valid = draws
    for key in schema.CATALOG_KEYS:
        assert not np.any(cat[key][~valid]), key
    star = valid & ~cat["is_galaxy"]
    for key in schema.SHAPE_KEYS:
        assert not np.any(cat[key][star]), key


def test_same_seed_same_catalog():
    p = _default_prior()
    a, b = p.sample(np.random.default_rng(5), 50), p.sample(np.random.default_rng(5), 50)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_bad_prior_settings():
    p = _default_prior(sources_per_pixel=0.01, max_sources=3)
    with pytest.raises(ValueError, match="max_sources"):
        p.sample(np.random.default_rng(0), 10)
    with pytest.raises(ValueError, match="unknown keys.*bogus"):
        prior.CatalogPrior.from_config({"bogus": 1}, (80, 80))
    with pytest.raises(ValueError, match="prob_galaxy"):
        _default_prior(prob_galaxy=1.5)
    partial = dict(default.get_config().prior)
    del partial["min_axis_ratio"]
    with pytest.raises(ValueError, match=r"missing keys \['min_axis_ratio'\]"):
        prior.CatalogPrior.from_config(partial, (80, 80))


def test_from_config_takes_every_value_from_the_config():
    config = default.get_config().prior
    p = prior.CatalogPrior.from_config(config, (40, 48))
    assert p.image_shape == (40, 48)
    for key, value in config.items():
        assert getattr(p, key) == (tuple(value) if isinstance(value, (list, tuple)) else value), key
    with pytest.raises(TypeError):
        prior.CatalogPrior()  # no defaults outside configs/default.py


def _catalog(sources, b=1, m=4):
    cat = {k: np.zeros((b, m), bool if k == "is_galaxy" else np.float32) for k in schema.CATALOG_KEYS}
    cat["n_sources"] = np.zeros(b, np.int32)
    for i, (x, y, flux) in enumerate(sources):
        cat["x"][0, i], cat["y"][0, i], cat["flux"][0, i] = x, y, flux
    cat["n_sources"][0] = len(sources)
    return cat


def test_tile_catalog_by_hand():
    tiles = prior.tile_catalog(_catalog([(5.5, 9.25, 3.0)]), (80, 80), 4)
    assert tiles["tile_has_source"].sum() == 1 and tiles["tile_has_source"][0, 2, 1]
    np.testing.assert_allclose(tiles["tile_locs"][0, 2, 1], (0.3125, 0.375))
    assert tiles["tile_flux"][0, 2, 1] == 3.0 and tiles["tile_source"][0, 2, 1] == 0
    assert tiles["n_dropped"][0] == 0


def test_two_sources_in_a_tile_keep_the_brightest():
    tiles = prior.tile_catalog(_catalog([(5.5, 9.25, 3.0), (6.5, 10.0, 8.0), (79.999, 79.999, 1.0)]), (80, 80), 4)
    assert tiles["tile_source"][0, 2, 1] == 1 and tiles["tile_flux"][0, 2, 1] == 8.0
    assert tiles["n_dropped"][0] == 1
    assert tiles["tile_has_source"][0, 19, 19]  # the far edge stays in the last tile
    assert np.all(tiles["tile_locs"] < 1.0)
    assert tiles["tile_has_source"].sum() == 2


def test_empty_image_has_no_tiles():
    tiles = prior.tile_catalog(_catalog([]), (80, 80), 4)
    assert not tiles["tile_has_source"].any() and np.all(tiles["tile_source"] == -1)
    assert tiles["n_dropped"][0] == 0


def test_tile_source_points_back_into_the_catalog(draws):
    p, cat, _ = draws
    sub = {k: v[:200] for k, v in cat.items()}
    tiles = prior.tile_catalog(sub, p.image_shape, 4)
    b, r, c = np.nonzero(tiles["tile_has_source"])
    s = tiles["tile_source"][b, r, c]
    np.testing.assert_allclose(tiles["tile_flux"][b, r, c], sub["flux"][b, s])
    np.testing.assert_allclose((c + tiles["tile_locs"][b, r, c, 1]) * 4, sub["x"][b, s], atol=1e-4)
    kept = tiles["tile_has_source"].reshape(200, -1).sum(1)
    np.testing.assert_array_equal(kept + tiles["n_dropped"], sub["n_sources"])
