"""Evaluation metrics: matching, magnitude bins, binned metrics with bootstrap bands, calibration."""

import itertools
import json
import time

import numpy as np
import pytest
from astropy.table import Table
from scipy import optimize, stats

from npejax.catalogs import flux_to_mag, mag_to_flux
from npejax.evaluation import metrics

pytestmark = pytest.mark.fast  # the whole file is in the fast tier

CUT = metrics.REFERENCE_CUTOFFS


def random_truth(rng, num_images, mean_sources=4.0, mag_range=(15.0, 22.5)):
    n = rng.poisson(mean_sources, num_images)
    total = int(n.sum())
    mag = rng.uniform(*mag_range, total)
    return dict(
        image=np.repeat(np.arange(num_images), n),
        x=rng.uniform(0, 80, total),
        y=rng.uniform(0, 80, total),
        flux=mag_to_flux(mag),
        mag=mag,
        is_galaxy=rng.random(total) < 0.5,
    )


def perfect_prediction(truth):
    pred = {k: np.array(v, copy=True) for k, v in truth.items() if k != "is_galaxy"}
    pred["prob_source"] = np.ones(len(truth["x"]))
    pred["prob_galaxy"] = np.asarray(truth["is_galaxy"], np.float64)
    pred["flux_lo"] = pred["flux"] / 1.2
    pred["flux_hi"] = pred["flux"] * 1.2
    return pred


def one_source(image=0, x=10.0, y=10.0, mag=19.0, **extra):
    cat = dict(
        image=np.array([image]),
        x=np.array([x]),
        y=np.array([y]),
        flux=np.array([mag_to_flux(mag)]),
        mag=np.array([mag]),
    )
    cat.update({k: np.array([v]) for k, v in extra.items()})
    return cat


def concat(*cats):
    return {k: np.concatenate([c[k] for c in cats]) for k in cats[0]}


# ------------------------------------------------------------------------------------------------ matching


def test_match_slack_pixels():
    truth = one_source(x=10.0, y=10.0)
    for dx, matched in ((0.9, True), (1.0, True), (1.5, False)):
        pred = one_source(x=10.0 + dx, y=10.0)
        t2p, p2t = metrics.match(truth, pred, num_images=1)
        assert (t2p[0] == 0) == matched and (p2t[0] == 0) == matched, dx
        assert t2p.dtype == np.int64
    # diagonal offset: Euclidean distance, 0.8 * sqrt(2) = 1.13 > 1
    t2p, _ = metrics.match(truth, one_source(x=10.8, y=10.8), 1)
    assert t2p[0] == -1
    t2p, _ = metrics.match(truth, one_source(x=10.8, y=10.8), 1, slack=1.2)
    assert t2p[0] == 0


def test_match_minimizes_total_distance_not_greedy():
    # Truth A at x=10, B at x=11; predictions P0 at 10.45 and P1 at 9.5 (same row).
    # Greedy nearest: A-P0 (0.45) first, then B-P1 (1.5 > slack): one match, total 1.95.
    # Optimal assignment: A-P1 (0.5) + B-P0 (0.55) = 1.05: both matched.
    truth = concat(one_source(x=10.0), one_source(x=11.0))
    pred = concat(one_source(x=10.45), one_source(x=9.5))
    t2p, p2t = metrics.match(truth, pred, num_images=1)
    np.testing.assert_array_equal(t2p, [1, 0])
    np.testing.assert_array_equal(p2t, [1, 0])


def test_match_maximizes_valid_matches_before_distance():
    # Truth A sits on prediction P1; its neighbour B reaches only P1 (0.854 px), A also reaches P0 (0.854).
    # Distances (rows A, B; columns P0, P1): [[0.854, 0.0], [1.208, 0.854]].
    # Raw assignment: A-P1 + B-P0 = 0 + 1.208 < 0.854 + 0.854, and B-P0 is beyond the 1-pixel slack:
    # one match. With far pairs at a prohibitive cost: A-P0 + B-P1, two matches.
    truth = concat(one_source(x=10.9, y=10.3), one_source(x=10.1, y=10.0))
    pred = concat(one_source(x=10.6, y=11.1), one_source(x=10.9, y=10.3))
    dist = np.hypot(truth["x"][:, None] - pred["x"][None, :], truth["y"][:, None] - pred["y"][None, :])
    np.testing.assert_allclose(dist, [[0.854, 0.0], [1.208, 0.854]], atol=1e-3)
    rows, cols = optimize.linear_sum_assignment(dist)  # what assigning on raw distances would do
    assert np.sum(dist[rows, cols] <= 1.0) == 1
    t2p, p2t = metrics.match(truth, pred, num_images=1)
    np.testing.assert_array_equal(t2p, [0, 1])
    np.testing.assert_array_equal(p2t, [0, 1])
    res = metrics.binned_metrics(truth, pred, 1, cutoffs=(22.0,), num_bootstrap=0)
    assert res["num_matched"] == 2 and res["recall"]["value"][0] == 1.0
    # among equally many valid matches the total distance still decides
    t2p, _ = metrics.match(
        concat(one_source(x=10.0), one_source(x=11.0)), concat(one_source(x=10.45), one_source(x=9.5)), num_images=1
    )
    np.testing.assert_array_equal(t2p, [1, 0])


def test_match_is_the_lexicographic_optimum_of_a_brute_force_search():
    # most pairs within the slack, then the least summed distance of those pairs: every assignment of small
    # random crowds tried (the authors' 1e20 cost misses the second criterion in about 10% of them)
    rng = np.random.default_rng(3)
    for _ in range(300):
        nt, npred = (int(v) for v in rng.integers(1, 5, 2))
        truth = dict(image=np.zeros(nt, int), x=rng.uniform(0, 3, nt), y=rng.uniform(0, 3, nt))
        pred = dict(image=np.zeros(npred, int), x=rng.uniform(0, 3, npred), y=rng.uniform(0, 3, npred))
        dist = np.hypot(truth["x"][:, None] - pred["x"][None], truth["y"][:, None] - pred["y"][None])
        candidates = []
        for perm in itertools.permutations(range(max(nt, npred)), min(nt, npred)):
            rows, cols = (np.arange(nt), np.array(perm)) if nt <= npred else (np.array(perm), np.arange(npred))
            ok = dist[rows, cols] <= 1.0
            candidates.append((-int(ok.sum()), float(dist[rows, cols][ok].sum())))
        best = min(candidates)
        t2p, _ = metrics.match(truth, pred, num_images=1)
        ok = t2p >= 0
        got = (-int(ok.sum()), float(dist[np.nonzero(ok)[0], t2p[ok]].sum()))
        assert got[0] == best[0] and got[1] == pytest.approx(best[1], abs=1e-12), (got, best)


def test_match_is_per_image_and_respects_prob_threshold():
    truth = concat(one_source(image=0), one_source(image=2, x=40.0))
    # a prediction at the same spot in another image never matches
    pred = concat(
        one_source(image=1, prob_source=0.9),
        one_source(image=2, x=40.2, prob_source=0.3),
        one_source(image=0, x=10.1, prob_source=0.9),
    )
    t2p, p2t = metrics.match(truth, pred, num_images=3)
    np.testing.assert_array_equal(t2p, [2, 1])  # without a threshold everyone takes part
    t2p, p2t = metrics.match(truth, pred, num_images=3, prob_threshold=0.5)
    np.testing.assert_array_equal(t2p, [2, -1])
    np.testing.assert_array_equal(p2t, [-1, -1, 0])


def test_match_accepts_tables_and_is_fast_on_42k_images():
    rng = np.random.default_rng(0)
    truth = random_truth(rng, 42_000)
    pred = perfect_prediction(truth)
    order = rng.permutation(len(pred["x"]))  # predictions in another row order
    pred = {k: v[order] for k, v in pred.items()}
    pred["x"] = pred["x"] + rng.normal(0, 0.2, len(order))
    start = time.perf_counter()
    t2p, p2t = metrics.match(Table(truth), Table(pred), num_images=42_000)
    elapsed = time.perf_counter() - start
    assert elapsed < 15.0, elapsed
    ok = t2p >= 0
    assert ok.mean() > 0.99
    # pairs are consistent both ways; all but a handful (close pairs swapped by the jitter) are the
    # sources the predictions were copied from
    np.testing.assert_array_equal(p2t[t2p[ok]], np.nonzero(ok)[0])
    assert np.mean(order[t2p[ok]] == np.nonzero(ok)[0]) > 0.999


# ---------------------------------------------------------------------------------------------------- bins


def test_assign_bins_edges():
    values = [10.0, 17.7769, 17.777, 19.1, 19.101, 21.7459, 21.746, 21.9999, 22.0, 22.0001, np.nan, np.inf]
    expected = [0, 0, 1, 1, 2, 8, 9, 9, 9, -1, -1, -1]
    np.testing.assert_array_equal(metrics.assign_bins(values, CUT), expected)
    # float32 magnitudes (catalog tables) bin the same way; 22.0 is exact in float32
    assert metrics.assign_bins(np.float32([22.0]), CUT)[0] == 9
    with pytest.raises(ValueError, match="non-decreasing"):
        metrics.assign_bins([1.0], [2.0, 1.0])


def test_equal_count_edges():
    rng = np.random.default_rng(1)
    mags = np.r_[rng.uniform(15, 23, 10_003), np.nan]
    edges = metrics.equal_count_edges(mags, 10)
    assert edges.shape == (10,) and edges[-1] == 22.0 and np.all(np.diff(edges) > 0)
    bins = metrics.assign_bins(mags, edges)
    counts = np.bincount(bins[bins >= 0], minlength=10)
    assert counts.sum() == np.sum(mags <= 22.0)
    assert counts.max() - counts.min() <= 1
    snr_edges = metrics.equal_count_edges(rng.exponential(10, 1000), 4, max_mag=np.inf)
    assert snr_edges[-1] == np.inf
    with pytest.raises(ValueError, match="no finite values"):
        metrics.equal_count_edges([23.0, 24.0], 3)


# ------------------------------------------------------------------------------------------ binned metrics


def test_perfect_predictions_score_perfectly():
    rng = np.random.default_rng(2)
    truth = random_truth(rng, 300)
    res = metrics.binned_metrics(Table(truth), perfect_prediction(truth), 300, num_bootstrap=50)
    for name in ("precision", "recall", "accuracy"):
        m = res[name]
        assert m["available"] and np.all(m["count"] > 0), name
        np.testing.assert_array_equal(m["value"], 1.0)
        np.testing.assert_array_equal(m["std"], 0.0)
        assert m["mean"] == m["overall"] == 1.0 and m["num_defined"] == 10
    np.testing.assert_array_equal(res["mape"]["value"], 0.0)
    assert res["mape"]["mean"] == 0.0
    in_range = np.sum(truth["mag"] <= 22.0)
    assert res["recall"]["overall_count"] == res["recall"]["count"].sum() == in_range
    assert res["num_matched"] == res["num_truth"] == len(truth["x"])
    json.dumps(metrics.to_jsonable(res), allow_nan=False)


def test_precision_by_estimated_mag_recall_mape_accuracy_by_true_mag():
    # one matched pair: true r = 18.0 (bin 1), estimated r = 20.0 (bin 3); true galaxy, prob 0.5 -> star
    truth = one_source(mag=18.0, is_galaxy=True)
    pred = one_source(x=10.5, mag=20.0, prob_source=0.9, prob_galaxy=0.5)
    # an unmatched truth at r = 21.0 (bin 6) and a spurious detection at r = 21.3 (bin 7)
    truth = concat(truth, one_source(image=1, mag=21.0, is_galaxy=False))
    pred = concat(pred, one_source(image=1, x=50.0, mag=21.3, prob_source=0.8, prob_galaxy=0.1))
    res = metrics.binned_metrics(truth, pred, num_images=2, num_bootstrap=20)
    p, r, a, e = (res[k] for k in ("precision", "recall", "accuracy", "mape"))
    np.testing.assert_array_equal(p["count"], [0, 0, 0, 1, 0, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(p["value"][[3, 7]], [1.0, 0.0])
    assert p["num_defined"] == 2 and p["mean"] == 0.5 and p["overall"] == 0.5
    np.testing.assert_array_equal(r["count"], [0, 1, 0, 0, 0, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(r["value"][[1, 6]], [1.0, 0.0])
    assert np.isnan(r["value"][0]) and r["num_defined"] == 2 and r["mean"] == 0.5
    assert a["count"][1] == 1 and a["value"][1] == 0.0  # 0.5 is not > 0.5: called a star
    assert a["num_defined"] == 1 and a["mean"] == 0.0
    expected_mape = abs(mag_to_flux(18.0) - mag_to_flux(20.0)) / mag_to_flux(18.0) * 100
    assert e["value"][1] == pytest.approx(expected_mape) and e["mean"] == pytest.approx(expected_mape)
    assert e["num_defined"] == 1
    # a detection below the probability threshold is not a detection at all
    pred["prob_source"][1] = 0.4
    res = metrics.binned_metrics(truth, pred, num_images=2, num_bootstrap=0)
    assert res["precision"]["count"][7] == 0 and res["num_detections"] == 1
    assert res["precision"]["mean"] == 1.0 and np.all(np.isnan(res["precision"]["std"]))


def test_bootstrap_band_shrinks_like_one_over_sqrt_images():
    def recall_std(num_images, seed):
        rng = np.random.default_rng(seed)
        truth = random_truth(rng, num_images)
        pred = perfect_prediction(truth)
        miss = rng.random(len(pred["x"])) < 0.3  # 30% of predictions land 3 pixels away
        pred["x"] = pred["x"] + np.where(miss, 3.0, 0.0)
        res = metrics.binned_metrics(truth, pred, num_images, num_bootstrap=200, seed=seed)
        return res["recall"], len(truth["x"])

    small, _ = recall_std(50, 3)
    large, n_large = recall_std(2000, 4)
    ratio = small["overall_std"] / large["overall_std"]
    assert 4.0 < ratio < 10.0, ratio  # sqrt(2000 / 50) = 6.3
    # per bin (about 20 vs 800 sources per bin) and for the mean over bins as well
    assert np.median(small["std"] / large["std"]) > 3.0
    assert small["mean_std"] > 4.0 * large["mean_std"]
    # independent misses: the band is the binomial standard error
    n_in_range = large["overall_count"]
    p = large["overall"]
    assert large["overall_std"] == pytest.approx(np.sqrt(p * (1 - p) / n_in_range), rel=0.25)
    assert p == pytest.approx(0.7, abs=0.02)


def test_bootstrap_is_reproducible_with_seed():
    rng = np.random.default_rng(5)
    truth = random_truth(rng, 100)
    pred = perfect_prediction(truth)
    pred["flux"] = pred["flux"] * rng.lognormal(0, 0.1, len(pred["flux"]))
    a = metrics.binned_metrics(truth, pred, 100, num_bootstrap=30, seed=7)
    b = metrics.binned_metrics(truth, pred, 100, num_bootstrap=30, seed=7)
    c = metrics.binned_metrics(truth, pred, 100, num_bootstrap=30, seed=8)
    np.testing.assert_array_equal(a["mape"]["std"], b["mape"]["std"])
    assert not np.array_equal(a["mape"]["std"], c["mape"]["std"])
    assert np.all(a["mape"]["std"] > 0)


def test_truth_strata_replace_magnitude():
    rng = np.random.default_rng(6)
    truth = random_truth(rng, 40)
    snr = rng.uniform(1, 40, len(truth["x"]))
    pred = perfect_prediction(truth)
    pred["x"] = pred["x"] + np.where(snr > 10, 0.0, 5.0)  # only SNR > 10 sources are found
    pred["prob_galaxy"] = np.where(snr > 20, pred["prob_galaxy"], 1 - pred["prob_galaxy"])
    res = metrics.binned_metrics(truth, pred, 40, cutoffs=(5.0, 10.0, 20.0, np.inf), truth_strata=snr, num_bootstrap=10)
    assert res["stratified_by"] == "truth_strata"
    assert not res["precision"]["available"] and np.all(np.isnan(res["precision"]["value"]))
    assert np.isnan(res["precision"]["mean"]) and res["precision"]["num_defined"] == 0
    np.testing.assert_array_equal(res["recall"]["value"], [0.0, 0.0, 1.0, 1.0])
    np.testing.assert_array_equal(res["recall"]["count"], np.bincount(metrics.assign_bins(snr, (5, 10, 20, np.inf))))
    np.testing.assert_array_equal(res["accuracy"]["count"][:2], [0, 0])
    np.testing.assert_array_equal(res["accuracy"]["value"][2:], [0.0, 1.0])
    assert res["accuracy"]["num_defined"] == 2 and res["accuracy"]["mean"] == 0.5
    with pytest.raises(ValueError, match="truth_strata"):
        metrics.binned_metrics(truth, pred, 40, truth_strata=snr[:-1])


def _assert_means_clean(res):
    for name in ("precision", "recall", "accuracy", "mape"):
        m = res[name]
        defined = np.isfinite(m["value"])
        assert m["num_defined"] == defined.sum(), name
        assert np.all(m["count"][~defined] == 0) or not m["available"], name
        if m["num_defined"]:
            assert np.isfinite(m["mean"]), name
            assert m["mean"] == pytest.approx(m["value"][defined].mean()), name
        else:
            assert np.isnan(m["mean"]), name
    json.dumps(metrics.to_jsonable(res), allow_nan=False)


@pytest.mark.filterwarnings("error")
def test_empty_catalogs_and_silent_networks():
    rng = np.random.default_rng(7)
    truth = random_truth(rng, 20)
    truth["image"] = truth["image"] * 2  # odd images have no sources (num_images 40)
    pred = perfect_prediction(truth)
    empty_truth = {k: v[:0] for k, v in truth.items()}
    empty_pred = {k: v[:0] for k, v in pred.items()}
    silent = dict(pred, prob_source=np.full(len(pred["x"]), 0.1))  # predicts nothing above 0.5

    res = metrics.binned_metrics(truth, pred, 40, num_bootstrap=20)
    _assert_means_clean(res)
    assert res["recall"]["mean"] == 1.0

    for p in (empty_pred, silent):
        res = metrics.binned_metrics(truth, p, 40, num_bootstrap=20)
        _assert_means_clean(res)
        assert res["precision"]["num_defined"] == 0 and res["num_detections"] == 0
        assert res["recall"]["mean"] == 0.0 and res["recall"]["num_defined"] == 10
        assert res["accuracy"]["num_defined"] == 0 and res["mape"]["num_defined"] == 0
        assert np.all(res["accuracy"]["count"] == 0)

    res = metrics.binned_metrics(empty_truth, pred, 40, num_bootstrap=20)
    _assert_means_clean(res)
    assert res["precision"]["mean"] == 0.0 and res["precision"]["num_defined"] == 10
    assert res["recall"]["num_defined"] == 0 and np.all(res["recall"]["count"] == 0)

    res = metrics.binned_metrics(empty_truth, empty_pred, 40, num_bootstrap=20)
    _assert_means_clean(res)
    assert res["num_truth"] == res["num_detections"] == 0

    # the other metrics on empty inputs
    t2p, p2t = metrics.match(empty_truth, empty_pred, 40)
    assert t2p.shape == p2t.shape == (0,)
    cal = metrics.count_calibration(empty_truth, empty_pred, 3, mag_range=(21.746, 22.0))
    np.testing.assert_array_equal(cal["true_count"], [0, 0, 0])
    np.testing.assert_array_equal(cal["expected_count"], [0.0, 0.0, 0.0])
    cov = metrics.flux_coverage(empty_truth, empty_pred, t2p, 40, num_bootstrap=10)
    assert cov["count"] == 0 and np.all(np.isnan(cov["coverage"]))
    roc = metrics.star_galaxy_roc(empty_truth, empty_pred, (t2p, p2t))
    assert np.isnan(roc["auc"]) and roc["num_galaxies"] == roc["num_stars"] == 0
    # zero images
    res = metrics.binned_metrics(empty_truth, empty_pred, 0)
    _assert_means_clean(res)


def test_baseline_without_probabilities():
    rng = np.random.default_rng(8)
    truth = random_truth(rng, 60)
    pred = {k: v for k, v in perfect_prediction(truth).items() if k in ("image", "x", "y", "flux", "mag")}
    res = metrics.binned_metrics(truth, Table(pred), 60, num_bootstrap=10)
    assert res["precision"]["mean"] == res["recall"]["mean"] == 1.0
    assert not res["accuracy"]["available"] and np.all(np.isnan(res["accuracy"]["value"]))
    assert np.isnan(res["accuracy"]["mean"]) and res["accuracy"]["count"].sum() > 0
    matches = metrics.match(truth, pred, 60)
    assert not metrics.star_galaxy_roc(truth, pred, matches)["available"]
    cov = metrics.flux_coverage(truth, pred, matches, 60, num_bootstrap=5)
    assert not cov["available"] and np.all(np.isnan(cov["coverage"]))
    cal = metrics.count_calibration(truth, pred, 60)
    assert not cal["available"] and np.all(np.isnan(cal["expected_count"]))
    json.dumps(metrics.to_jsonable([res, cov, cal]), allow_nan=False)


def test_validation_errors():
    truth = concat(one_source(image=0), one_source(image=4))
    pred = concat(one_source(image=0), one_source(image=3))
    with pytest.raises(ValueError, match=r"truth catalog: image index 4 .*num_images=4"):
        metrics.binned_metrics(truth, pred, num_images=4)
    with pytest.raises(ValueError, match=r"prediction catalog: image index 3 .*num_images=3"):
        metrics.match(concat(one_source(image=0)), pred, num_images=3)
    with pytest.raises(ValueError, match=r"prediction catalog: image index -1"):
        metrics.count_calibration(truth, one_source(image=-1, prob_source=0.5), num_images=5)
    with pytest.raises(ValueError, match=r"lacks required column\(s\) \['x', 'flux'\]"):
        metrics.binned_metrics(truth, {k: pred[k] for k in ("image", "y", "mag")}, num_images=5)
    bad = dict(pred, y=np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="'y' holds a non-finite"):
        metrics.binned_metrics(truth, bad, num_images=5)
    with pytest.raises(ValueError, match="num_images"):
        metrics.match(truth, pred, num_images=-1)
    with pytest.raises(ValueError, match="matches"):
        metrics.flux_coverage(truth, pred, np.array([0]), num_images=5)
    # text where numbers belong: named, not a KeyError from deep inside the matching
    text = dict(pred, x=np.array(["1.0", "abc"]))
    with pytest.raises(ValueError, match=r"prediction catalog: column 'x' holds text \(e.g. '1.0'\), expected numbers"):
        metrics.match(truth, text, num_images=5)
    with pytest.raises(ValueError, match=r"truth catalog: column 'image' holds text"):
        metrics.binned_metrics(dict(truth, image=np.array(["0", "four"])), pred, num_images=5)


# -------------------------------------------------------------------------------------------- calibration


def test_count_calibration_by_hand():
    # tiles: image 0 has three, image 1 one, image 2 none
    tiles = dict(
        image=np.array([0, 0, 0, 1]),
        x=np.array([2.0, 6.0, 10.0, 2.0]),
        y=np.full(4, 2.0),
        flux=np.array([100.0, 2.0, 0.5, 10.0]),
        flux_hi=np.array([120.0, 3.0, 1.0, 15.0]),
        prob_source=np.array([0.9, 0.2, 0.05, 0.6]),
    )
    truth = dict(
        image=np.array([0, 0]),
        x=np.array([2.0, 6.0]),
        y=np.array([2.0, 2.0]),
        flux=mag_to_flux(np.array([17.0, 21.8])),
        mag=np.array([17.0, 21.8]),
    )
    cal = metrics.count_calibration(truth, tiles, num_images=3)
    np.testing.assert_array_equal(cal["true_count"], [2, 0, 0])
    np.testing.assert_allclose(cal["expected_count"], [1.15, 0.6, 0.0])
    np.testing.assert_array_equal(cal["summary"]["true_count"], [0, 2])
    np.testing.assert_array_equal(cal["summary"]["num_images"], [2, 1])
    np.testing.assert_allclose(cal["summary"]["mean_expected"], [0.3, 1.15])
    np.testing.assert_allclose(cal["summary"]["std_expected"], [0.3, 0.0])
    assert cal["total_true"] == 2 and cal["total_expected"] == pytest.approx(1.75)

    def lognorm(i):
        sigma = np.log(tiles["flux_hi"][i] / tiles["flux"][i])
        return stats.lognorm(s=sigma, scale=tiles["flux"][i])

    lo_flux, hi_flux = mag_to_flux(22.0), mag_to_flux(21.746)  # faint end is the low flux
    p_faint = [lognorm(i).cdf(hi_flux) - lognorm(i).cdf(lo_flux) for i in range(4)]
    cal = metrics.count_calibration(truth, tiles, 3, mag_range=metrics.CALIBRATION_SUBSETS["faintest"])
    np.testing.assert_array_equal(cal["true_count"], [1, 0, 0])
    prob = tiles["prob_source"]
    want = [sum(prob[i] * p_faint[i] for i in range(3)), prob[3] * p_faint[3], 0]
    np.testing.assert_allclose(cal["expected_count"], want, rtol=1e-10)
    assert 0 < cal["expected_count"][0] < 0.2  # a real fraction, not 0 or all

    p_bright = [lognorm(i).sf(mag_to_flux(17.777)) for i in range(4)]
    cal = metrics.count_calibration(truth, tiles, 3, mag_range=metrics.CALIBRATION_SUBSETS["brightest"])
    np.testing.assert_array_equal(cal["true_count"], [1, 0, 0])
    want = [sum(prob[i] * p_bright[i] for i in range(3)), prob[3] * p_bright[3], 0]
    np.testing.assert_allclose(cal["expected_count"], want, rtol=1e-8)
    assert 0.8 < cal["expected_count"][0] < 0.9 and 0 < cal["expected_count"][1] < 1e-6


def test_roc_and_auc_by_hand():
    labels = np.array([1, 1, 0, 0, 1, 0], bool)
    scores = np.array([0.9, 0.4, 0.35, 0.8, 0.7, 0.1])
    # positive/negative pairs won: 0.9 beats 3, 0.4 beats 2 (0.35, 0.1), 0.7 beats 2 -> 7 / 9
    assert metrics.auc(labels, scores) == pytest.approx(7 / 9)
    fpr, tpr, thr = metrics.roc_curve(labels, scores)
    np.testing.assert_allclose(fpr, [0, 0, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 1 / 3, 2 / 3, 1, 1, 1])
    assert thr[0] == np.inf and thr[-1] == 0.1
    # ties count half: pos {0.5, 0.8}, neg {0.5, 0.2} -> (0.5 + 1 + 1 + 1) / 4
    assert metrics.auc([1, 0, 1, 0], [0.5, 0.5, 0.8, 0.2]) == pytest.approx(0.875)
    assert np.isnan(metrics.auc([1, 1], [0.2, 0.3])) and np.isnan(metrics.auc([], []))


def test_auc_is_probability_of_correct_ordering_and_area_under_roc():
    rng = np.random.default_rng(9)
    labels = rng.random(300) < 0.4
    scores = np.round(rng.random(300) * 0.6 + 0.4 * labels, 1)  # many ties
    pos, neg = scores[labels], scores[~labels]
    brute = np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :]))
    value = metrics.auc(labels, scores)
    assert value == pytest.approx(brute, abs=1e-12)
    fpr, tpr, thr = metrics.roc_curve(labels, scores)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0) and np.all(np.diff(thr) < 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(value, abs=1e-12)


def test_star_galaxy_roc_on_matched_sources_in_mag_range():
    truth = concat(
        one_source(image=0, mag=17.0, is_galaxy=True),
        one_source(image=0, x=30.0, mag=17.5, is_galaxy=False),
        one_source(image=1, mag=21.9, is_galaxy=True),
        one_source(image=1, x=30.0, mag=21.8, is_galaxy=False),
        one_source(image=2, mag=21.8, is_galaxy=False),
    )
    pred = concat(
        one_source(image=0, prob_galaxy=0.9),
        one_source(image=0, x=30.0, prob_galaxy=0.2),
        one_source(image=1, prob_galaxy=0.3),
        one_source(image=1, x=30.0, prob_galaxy=0.6),
    )
    matches = metrics.match(truth, pred, 3)
    bright = metrics.star_galaxy_roc(truth, pred, matches, mag_range=metrics.CALIBRATION_SUBSETS["brightest"])
    assert bright["auc"] == 1.0 and (bright["num_galaxies"], bright["num_stars"]) == (1, 1)
    faint = metrics.star_galaxy_roc(truth, pred, matches[0], mag_range=(21.746, 22.0))
    assert faint["auc"] == 0.0 and faint["num_stars"] == 1  # unmatched star in image 2 left out
    everything = metrics.star_galaxy_roc(truth, pred, matches)
    assert everything["auc"] == pytest.approx(metrics.auc([1, 0, 1, 0], [0.9, 0.2, 0.3, 0.6]))


def _coverage_case(rng, n, sigma_scale=1.0):
    mu = rng.normal(np.log(5.0), 1.0, n)
    sigma = rng.uniform(0.05, 0.6, n)
    log_true = rng.normal(mu, sigma)
    num_images = n // 4
    image = rng.integers(0, num_images, n)
    truth = dict(image=image, x=np.zeros(n), y=np.zeros(n), flux=np.exp(log_true))
    pred = dict(image=image, x=np.zeros(n), y=np.zeros(n), flux=np.exp(mu), flux_hi=np.exp(mu + sigma * sigma_scale))
    return truth, pred, np.arange(n), num_images


def test_flux_coverage_of_correct_lognormal_posterior():
    rng = np.random.default_rng(10)
    truth, pred, matches, num_images = _coverage_case(rng, 20_000)
    cov = metrics.flux_coverage(truth, pred, matches, num_images, num_bootstrap=50)
    assert cov["available"] and cov["count"] == 20_000
    np.testing.assert_allclose(cov["levels"], np.round(np.arange(1, 20) * 0.05, 2))
    assert np.all(np.abs(cov["coverage"] - cov["levels"]) < 0.02), cov["coverage"] - cov["levels"]
    binomial = np.sqrt(cov["levels"] * (1 - cov["levels"]) / 20_000)
    np.testing.assert_allclose(cov["std"], binomial, rtol=0.35)
    # against scipy's own central intervals for a few sources
    i = np.arange(50)
    sigma = np.log(pred["flux_hi"][i] / pred["flux"][i])
    lo, hi = stats.lognorm(s=sigma, scale=pred["flux"][i]).interval(0.6)
    small = metrics.flux_coverage(
        {k: v[i] for k, v in truth.items()},
        {k: v[i] for k, v in pred.items()},
        np.arange(50),
        num_images,
        levels=[0.6],
        num_bootstrap=0,
    )
    inside = (truth["flux"][i] >= lo) & (truth["flux"][i] <= hi)
    assert small["num_inside"][0] == inside.sum()


def test_flux_coverage_detects_overconfidence_and_filters_mags():
    rng = np.random.default_rng(11)
    truth, pred, matches, num_images = _coverage_case(rng, 8_000, sigma_scale=0.5)
    cov = metrics.flux_coverage(truth, pred, matches, num_images, levels=[0.5, 0.95], num_bootstrap=10)
    assert cov["coverage"][1] < 0.8  # intervals half as wide as they should be: 1 - 2 Phi(-0.98) = 0.67
    mag = flux_to_mag(truth["flux"])
    faint = metrics.flux_coverage(
        truth, pred, matches, num_images, levels=[0.5], mag_range=(21.0, 22.0), num_bootstrap=0
    )
    assert faint["count"] == np.sum((mag >= 21.0) & (mag <= 22.0)) > 0


def _operating_point_catalogs():
    """One image, 4 true r 21 sources; 3 predictions on them (prob 0.9, 0.7, 0.3) and 2 far from any (0.8, 0.2)."""
    flux = float(mag_to_flux(21.0))
    truth = {"image": np.zeros(4, int), "x": [10.0, 20.0, 30.0, 40.0], "y": [10.0] * 4, "flux": [flux] * 4}
    pred = {
        "image": np.zeros(5, int),
        "x": [10.2, 20.1, 30.0, 60.0, 70.0],
        "y": [10.0, 10.1, 9.9, 60.0, 70.0],
        "flux": [flux] * 5,
        "prob_source": [0.9, 0.7, 0.3, 0.8, 0.2],
    }
    return truth, pred


def test_threshold_curves_by_hand_and_against_binned_metrics():
    truth, pred = _operating_point_catalogs()
    cutoffs = (20.0, 22.0)
    curves = metrics.threshold_curves(truth, pred, 1, cutoffs=cutoffs, thresholds=[0.1, 0.25, 0.5, 0.75, 0.85, 0.95])
    # bin 0 (r < 20) is empty: NaN; bin 1 by hand: detections above each threshold, matched ones, truths matched
    assert np.isnan(curves["precision"][:, 0]).all() and np.isnan(curves["recall"][:, 0]).all()
    np.testing.assert_allclose(curves["precision"][:, 1], [3 / 5, 3 / 4, 2 / 3, 1 / 2, 1.0, np.nan])
    np.testing.assert_allclose(curves["recall"][:, 1], [3 / 4, 3 / 4, 2 / 4, 1 / 4, 1 / 4, 0.0])
    np.testing.assert_array_equal(curves["num_detections"][:, 1], [5, 4, 3, 2, 1, 0])
    np.testing.assert_array_equal(curves["num_truth"], [0, 4])
    # the same numbers as binned_metrics at its fixed threshold
    for i, tau in enumerate(curves["thresholds"]):
        fixed = metrics.binned_metrics(truth, pred, 1, cutoffs=cutoffs, num_bootstrap=0, prob_threshold=tau)
        np.testing.assert_array_equal(curves["precision"][i], fixed["precision"]["value"])
        np.testing.assert_array_equal(curves["recall"][i], fixed["recall"]["value"])


def test_at_reference_operating_point_by_hand():
    truth, pred = _operating_point_catalogs()
    curves = metrics.threshold_curves(truth, pred, 1, cutoffs=(20.0, 22.0))  # thresholds 0.01 .. 0.99
    # reference: recall 0.5 and precision 0.7 in bin 1, undefined in bin 0
    out = metrics.at_reference_operating_point(curves, ref_precision=[np.nan, 0.7], ref_recall=[np.nan, 0.5])
    # recall >= 0.5 for tau < 0.7; the best precision there is 3/4 (tau in [0.2, 0.3): the 0.2 spurious one out)
    assert out["precision_at_ref_recall"][1] == pytest.approx(0.75)
    assert out["threshold_at_ref_recall"][1] == pytest.approx(0.29)
    # precision >= 0.7 at tau in [0.2, 0.3) (0.75, recall 3/4) and [0.8, 0.9) (1.0, recall 1/4): the best recall 3/4
    assert out["recall_at_ref_precision"][1] == pytest.approx(0.75)
    assert out["threshold_at_ref_precision"][1] == pytest.approx(0.29)
    assert np.isnan(out["precision_at_ref_recall"][0]) and np.isnan(out["threshold_at_ref_precision"][0])
    # a reference the network cannot reach at any threshold: NaN, not a made-up number
    unreachable = metrics.at_reference_operating_point(curves, ref_precision=[np.nan, 1.01], ref_recall=[np.nan, 0.9])
    assert np.isnan(unreachable["recall_at_ref_precision"][1]) and np.isnan(unreachable["precision_at_ref_recall"][1])
    with pytest.raises(ValueError, match="bins"):
        metrics.at_reference_operating_point(curves, ref_precision=[0.5], ref_recall=[0.5])
    del pred["prob_source"]
    with pytest.raises(ValueError, match="prob_source"):
        metrics.threshold_curves(truth, pred, 1)
