"""The r-band accuracy ceiling (npejax.evaluation.ceiling): the two-Gaussian Bayes error against a Monte
Carlo of the test, cases with known answers (a galaxy shaped like the PSF, a large bright galaxy, a star),
the per-bin ceiling by hand, a test set read in chunks, and a loose check of the prior's values."""

import math

import numpy as np
import pytest
from scipy import stats

from configs import default
from npejax.catalogs import mag_to_flux, truth_table
from npejax.evaluation import ceiling, metrics
from npejax.schema import CATALOG_KEYS
from npejax.sim import pipeline, render

pytestmark = pytest.mark.fast  # the whole file is in the fast tier

FIELD = 3


@pytest.fixture(scope="module")
def spec():
    return pipeline.SimulationSpec.from_config(default.get_config(), batch_size=8)


@pytest.fixture(scope="module")
def renderer(spec):
    return render.renderer_for(spec, (80, 80), "test")


def _galaxy(mag, a, x=40.2, y=39.6, q=0.7, disk_frac=0.5):
    return dict(
        n_sources=1,
        x=np.array([x]),
        y=np.array([y]),
        flux=np.array([mag_to_flux(mag)]),
        is_galaxy=np.array([True]),
        disk_frac=np.array([disk_frac]),
        angle=np.array([0.3]),
        disk_q=np.array([q]),
        bulge_q=np.array([q]),
        disk_a=np.array([a]),
        bulge_a=np.array([a / 2]),
    )


def _sky(spec):
    return spec.bank.background_electrons(FIELD, (100, 100), (80, 80))


# ----------------------------------------------------------------------------------------- Bayes error


def test_bayes_error_matches_a_monte_carlo_of_the_likelihood_ratio_test():
    # Two hypotheses over 3 pixels with the same diagonal noise; the Bayes rule at prior pi decides galaxy
    # iff log p(x|G) - log p(x|S) > ln((1 - pi) / pi). Errors counted by simulation against the formula.
    rng = np.random.default_rng(0)
    sigma = np.array([1.0, 2.0, 0.5])
    for scale, pi in ((0.4, 0.62), (1.0, 0.3), (1.7, 0.5), (0.05, 0.7)):
        g, s = np.array([1.0, 2.0, 0.3]) * scale, np.array([0.5, 0.4, 0.6]) * scale
        d = math.sqrt(np.sum((g - s) ** 2 / sigma**2))
        n = 200_000
        is_gal = rng.random(n) < pi
        x = np.where(is_gal[:, None], g, s) + sigma * rng.standard_normal((n, 3))
        llr = stats.norm.logpdf(x, g, sigma).sum(1) - stats.norm.logpdf(x, s, sigma).sum(1)
        said_gal = llr > math.log((1 - pi) / pi)
        total, given_g, given_s = ceiling.bayes_error(d, pi)
        for value, wrong, count in (
            (total, said_gal != is_gal, n),
            (given_g, ~said_gal[is_gal], is_gal.sum()),
            (given_s, said_gal[~is_gal], (~is_gal).sum()),
        ):
            mc = np.mean(wrong)  # binomial: 5 sigma
            assert abs(value - mc) < 5 * math.sqrt(mc * (1 - mc) / count) + 1e-4, (scale, pi, value, mc)
        np.testing.assert_allclose(total, pi * given_g + (1 - pi) * given_s)
    # the simulated errors above are Bayes-optimal: moving the threshold either way costs (sign check)
    assert ceiling.bayes_error(1.0, 0.62)[0] < 0.62 * stats.norm.cdf(-0.5) + 0.38 * stats.norm.cdf(-0.5)


def test_bayes_error_limits_and_sign():
    pi = np.array([0.2, 0.5, 0.6, 0.9])
    total, given_g, given_s = ceiling.bayes_error(0.0, pi)  # nothing to see: follow the prior
    np.testing.assert_allclose(total, np.minimum(pi, 1 - pi))
    np.testing.assert_allclose(given_g, [1.0, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(given_s, [0.0, 0.5, 1.0, 1.0])
    total, _, _ = ceiling.bayes_error(1e-9, pi)  # continuous at d -> 0
    np.testing.assert_allclose(total, np.minimum(pi, 1 - pi), atol=1e-6)
    np.testing.assert_allclose(ceiling.bayes_error(np.inf, pi)[0], 0.0)
    np.testing.assert_allclose(ceiling.bayes_error(40.0, pi)[0], 0.0, atol=1e-12)
    d = np.array([0.3, 1.0, 3.0])
    np.testing.assert_allclose(ceiling.bayes_error(d, 0.5)[0], stats.norm.cdf(-d / 2))
    # more galaxies than stars: the threshold moves towards the star, so a galaxy errs less than a star
    _, given_g, given_s = ceiling.bayes_error(1.5, 0.6)
    assert given_g < given_s
    np.testing.assert_allclose(given_g, stats.norm.cdf(-0.75 + math.log(0.4 / 0.6) / 1.5))
    # one class only: never wrong; NaN stays NaN
    assert ceiling.bayes_error(0.0, 1.0)[0] == 0.0 and ceiling.bayes_error(2.0, 0.0)[0] == 0.0
    assert np.isnan(ceiling.bayes_error(np.nan, 0.5)[0])
    with pytest.raises(ValueError, match="prior_galaxy"):
        ceiling.bayes_error(1.0, 1.5)
    with pytest.raises(ValueError, match="distance"):
        ceiling.bayes_error(-1.0, 0.5)


# ----------------------------------------------------------------------------------------- star fit


def test_star_fit_recovers_a_star(spec, renderer):
    truth_flux = mag_to_flux(20.0)
    star = ceiling._unit_star(renderer, FIELD, 40.3, 39.8) * truth_flux
    fit = ceiling.star_fit(star, _sky(spec) + star, renderer, FIELD, 40.0, 40.0)  # started 0.36 px away
    assert abs(fit["x"] - 40.3) < 0.02 and abs(fit["y"] - 39.8) < 0.02
    assert abs(fit["flux"] / truth_flux - 1) < 1e-3
    assert fit["d2"] < 0.01 * fit["d2_none"] and fit["d2"] < 0.05


def test_galaxy_shaped_like_the_psf_is_at_the_prior_and_a_large_bright_one_is_certain(spec, renderer):
    sky = _sky(spec)
    d = {}
    for name, mag, a in (("point", 20.0, 0.01), ("large", 17.0, 5.0), ("faint", 21.9, 0.84)):
        g = renderer.source_electrons(_galaxy(mag, a), FIELD)
        fit = ceiling.star_fit(g, sky + g, renderer, FIELD, 40.2, 39.6)
        d[name] = math.sqrt(fit["d2"])
        assert fit["d2"] <= fit["d2_none"]
        if name == "point":  # the best star is the galaxy itself
            assert abs(fit["flux"] / mag_to_flux(mag) - 1) < 0.01
            assert math.hypot(fit["x"] - 40.2, fit["y"] - 39.6) < 0.02
    assert d["point"] < 0.05 and d["large"] > 50 and 0.5 < d["faint"] < 5
    for pi in (0.3, 0.6):  # ceiling = 1 - P_err
        assert abs(1 - ceiling.bayes_error(d["point"], pi)[0] - max(pi, 1 - pi)) < 0.01
        assert 1 - ceiling.bayes_error(d["large"], pi)[0] == pytest.approx(1.0, abs=1e-12)


# ----------------------------------------------------------------------------------------- bins


def test_binned_ceiling_by_hand():
    mags = np.array([18.0, 18.5, 18.2, 20.5, 20.6, 20.7, 20.8, 21.5, 23.0])
    is_gal = np.array([False, False, False, True, True, False, True, True, True])
    d = np.array([np.nan, np.nan, np.nan, 1.0, 2.0, np.nan, 0.0, np.nan, 3.0])
    cut = (19.0, 21.0, 22.0)
    res = ceiling.binned_ceiling(mags, cut, is_gal, d)
    np.testing.assert_array_equal(res["count"], [3, 4, 1])
    np.testing.assert_array_equal(res["num_galaxies"], [0, 3, 0])
    np.testing.assert_allclose(res["galaxy_fraction"], [0.0, 0.75, 1.0])
    p = [ceiling.bayes_error(v, 0.75)[0] for v in (1.0, 2.0, 0.0)]
    assert res["value"][0] == 1.0  # stars only: nothing to confuse
    assert res["value"][1] == pytest.approx(1 - np.mean(p))
    assert res["std"][1] == pytest.approx(np.std(p, ddof=1) / math.sqrt(3))
    assert np.isnan(res["value"][2])  # a galaxy without a distance
    assert res["mean"] == pytest.approx((1.0 + res["value"][1]) / 2) and res["num_defined"] == 2
    assert res["overall"] == pytest.approx((3 * 1.0 + 4 * res["value"][1]) / 7)
    # the cap keeps the lowest-ranked galaxies of each bin
    capped = ceiling.binned_ceiling(mags, cut, is_gal, d, rank=np.arange(9)[::-1], max_per_bin=1)
    assert capped["num_galaxies"][1] == 1 and capped["value"][1] == pytest.approx(1 - p[2])


def test_select_rows_takes_at_most_the_cap_per_bin_of_every_binning():
    rng = np.random.default_rng(1)
    mags = rng.uniform(17, 22, 500)
    is_gal = rng.random(500) < 0.5
    snr = rng.uniform(1, 100, 500)
    rows, rank = ceiling.select_rows([(mags, metrics.REFERENCE_CUTOFFS), (snr, (10.0, 50.0, np.inf))], is_gal, 5, 0)
    assert np.all(is_gal[rows]) and len(rows) == len(set(rows.tolist()))
    for values, cut in ((mags, metrics.REFERENCE_CUTOFFS), (snr, (10.0, 50.0, np.inf))):
        bins = metrics.assign_bins(values, cut)
        for k in range(len(cut)):
            chosen = rows[bins[rows] == k]
            members = np.nonzero((bins == k) & is_gal)[0]
            lowest = members[np.argsort(rank[members])[:5]]
            assert set(lowest.tolist()) <= set(chosen.tolist())
    assert len(rows) <= 5 * (10 + 3)
    again, rank2 = ceiling.select_rows([(mags, metrics.REFERENCE_CUTOFFS)], is_gal, 5, 0)
    np.testing.assert_array_equal(rank, rank2)  # the same seed, the same draw


def test_test_set_ceiling_reads_in_chunks_and_agrees_with_galaxy_distances(spec):
    batch = pipeline.simulate_batch(spec, 0)
    truth = truth_table(batch)
    reads = []

    def read(index, keys):
        reads.append(np.asarray(index).tolist())
        return {k: np.asarray(batch[k])[np.asarray(index)] for k in keys}

    mags = np.asarray(truth["mag"], np.float64)
    res = ceiling.test_set_ceiling(
        read,
        truth,
        spec,
        dict(bins_reference=(mags, metrics.REFERENCE_CUTOFFS), bins_snr=None),
        max_per_bin=3,
        seed=0,
        chunk_images=3,
    )
    assert all(len(r) <= 3 for r in reads) and "bins_snr" not in res
    gal = np.nonzero(np.asarray(truth["is_galaxy"]))[0]
    direct = ceiling.galaxy_distances(batch, spec, np.stack([truth["image"][gal], truth["source"][gal]], 1))["d"]
    assert np.all(np.isfinite(direct))
    d = np.full(len(truth), np.nan)
    d[gal] = direct
    _, rank = ceiling.select_rows([(mags, metrics.REFERENCE_CUTOFFS)], truth["is_galaxy"], 3, 0)
    expected = ceiling.binned_ceiling(mags, metrics.REFERENCE_CUTOFFS, truth["is_galaxy"], d, rank, 3)
    for key in ("value", "num_galaxies", "count", "galaxy_fraction"):
        np.testing.assert_array_equal(res["bins_reference"][key], expected[key], err_msg=key)
    h = res["headline"]
    assert h["value"] == expected["mean"] and h["pooled"] == expected["overall"]
    assert h["count"] == int(expected["num_galaxies"].sum()) and res["options"]["max_per_bin"] == 3
    # padding entries, stars and sources with no flux get NaN
    rows = np.array([[0, int(batch["n_sources"][0])], [0, 0]])
    out = ceiling.galaxy_distances(batch, spec, rows)["d"]
    assert np.isnan(out[0]) and (np.isnan(out[1]) != bool(batch["is_galaxy"][0, 0]))
    assert set(CATALOG_KEYS) <= set(ceiling.BATCH_KEYS)


def test_prior_ceiling_is_near_the_measured_values():
    # SPEC.md: about 0.96, 0.92, 0.88, 0.83 in the faintest four reference bins and 1 at the bright end
    # (measured with 200 galaxies per bin); here 12 galaxies per bin, so a loose check.
    res = ceiling.prior_ceiling(
        default.get_config(), cutoffs=(19.0, 21.227, 21.746, 22.0), max_per_bin=12, num_images=400, seed=0
    )
    assert np.all(res["num_galaxies"] == 12)
    assert res["value"][0] > 0.99
    assert 0.85 < res["value"][2] < 0.97 and 0.7 < res["value"][3] < 0.92
    assert res["value"][3] < res["value"][1]
