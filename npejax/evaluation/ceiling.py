r"""What r-band pixels allow: the accuracy ceiling of star/galaxy classification (SPEC.md "Evaluation").

A network classifies a source from its pixels only. An *ideal* test that is told everything else -- the
galaxy's position, flux and shape, every neighbour, the sky and the PSF -- still errs where a galaxy looks
like a star under the image noise. Its error is a property of the test set, not of any network, so the
report shows ``1 - that error`` beside every network's accuracy: how far each is from what is possible.

**Per galaxy** (a true galaxy of the test set; electrons, the renderer's units, electrons = nmgy * gain /
calibration):

* g: the noiseless galaxy alone, drawn by the renderer that made the images
  (:meth:`npejax.sim.render.Renderer.source_electrons`, its PSF and pixel; parts beyond the image edge do not
  count), [H, W].
* v: the pixel noise variance of the image, v = sky + all its sources' expected electrons (the noise of the
  simulated images is N(lambda, lambda) or Poisson(lambda) around lambda = sky + sources; the ideal test knows
  the neighbours, so their light cancels but their noise stays).
* s: the best-fitting star, s = f p(x, y) with p the unit-flux PSF (x pixel) drawn at (x, y): minimizes
  chi2 = sum (g - s)^2 / v. For fixed (x, y) the flux is closed form, f = max(0, A / B) with
  A = sum g p / v and B = sum p^2 / v, so chi2(x, y) = sum g^2 / v - A^2 / B (computed as the residual
  sum, which does not cancel for bright sources); (x, y) is found by
  Nelder-Mead from the galaxy's centre (for a point-symmetric galaxy on a flat sky the centre is a
  stationary point; the search only moves it where neighbours or the image edge break the symmetry).
* d^2 = min chi2: the squared Mahalanobis distance between the two hypotheses.

**Bayes error of two Gaussians.** With x = the image minus everything known, H_G: x ~ N(g, V) and
H_S: x ~ N(s, V) with the same diagonal covariance V = diag(v) (an approximation: under H_S the variance
would hold s instead of g; for the faint galaxies where errors happen the sky dominates v). The log
likelihood ratio is

    L = log p(x | G) / p(x | S) = (g - s)^T V^-1 (x - (g + s) / 2),

Gaussian with variance d^2 and mean +d^2 / 2 under H_G, -d^2 / 2 under H_S. At prior galaxy fraction pi the
Bayes rule says galaxy iff L > ln t, t = (1 - pi) / pi, so

    P(error | G) = P(L < ln t | G) = Phi((ln t - d^2/2) / d) = Phi(-d/2 + ln(t)/d),
    P(error | S) = P(L > ln t | S) = Phi((-ln t - d^2/2) / d) = Phi(-d/2 - ln(t)/d),
    P_err(d, pi) = pi Phi(-d/2 + ln(t)/d) + (1 - pi) Phi(-d/2 - ln(t)/d)         (:func:`bayes_error`).

Limits: d -> 0 gives min(pi, 1 - pi) (the test can only follow the prior); d -> inf gives 0; pi = 1/2
gives Phi(-d/2). ``tests/test_ceiling.py`` checks the formula and its sign against a Monte Carlo of the test.

**Per bin** (of true magnitude, or of any value of the truth rows, e.g. SNR): pi_k = galaxies / true
sources in bin k (all of the test set's sources there), and

    ceiling_k = 1 - mean over the bin's galaxies i of P_err(d_i, pi_k).

The approximation: the bin's real problem (a star from the star prior or a galaxy from the galaxy prior,
nothing known but the pixels) is replaced by one two-point problem per galaxy: that galaxy, or the star
that fits it best, at prior pi_k. P_err keeps both terms of each pair (the galaxy called a star, weight
pi_k; its look-alike star called a galaxy, weight 1 - pi_k), and the bin's error is their mean over the
galaxies, i.e. the stars' error is counted as if each star were the look-alike of a galaxy drawn from the
bin. The ideal test knows each galaxy's shape, position and flux, the neighbours and the noise, and faces a
single alternative instead of the whole other prior, so it is easier than the network's problem: the ceiling
is an upper bound on a network's accuracy in the same bin. It is not a rigorous one: the pairing stands for
the mixture over all star/galaxy look-alikes (a star is really confused with the compact galaxies near its
own flux, weighted by their prior share), and V is taken equal under both hypotheses; ``std`` (std of P_err
/ sqrt(n) in the bin) is the Monte Carlo error of the galaxies drawn. Blends make the real problem harder
still, which the bound ignores.

**Cost**: tens of star draws per galaxy, tens of milliseconds a galaxy with the k-space renderer. The evaluation caps
the galaxies per bin (``max_per_bin``: the config's ``eval.ceiling_galaxies``); the galaxies of a bin are drawn at
random (``seed``) among the test set's.

The ceiling of the prior itself (:func:`prior_ceiling`), per reference bin, its cost and its Monte Carlo error:
benchmarks/RESULTS.md, "Measurements behind the code's defaults". Reproduce with::

    python -c "from configs import default; from npejax.evaluation import ceiling; \
    print(ceiling.prior_ceiling(default.get_config(), seed=0)['value'].round(3))"
"""

from __future__ import annotations

import math
import time

import ml_collections
import numpy as np
import threadpoolctl
from scipy import optimize, special

from npejax.evaluation import metrics
from npejax.schema import CATALOG_KEYS
from npejax.sim import pipeline
from npejax.sim import render as render_lib

__all__ = [
    "BATCH_KEYS",
    "bayes_error",
    "star_fit",
    "galaxy_distances",
    "select_rows",
    "binned_ceiling",
    "manifest_spec",
    "test_set_ceiling",
    "prior_ceiling",
]

_SEARCH_RADIUS = 3.0  # pixels: the star's position stays within this of the galaxy's centre
BATCH_KEYS = ("background", "field_id", "n_sources", *CATALOG_KEYS)  # what test_set_ceiling reads


# --------------------------------------------------------------------------------------------------
# The two-Gaussian test


def bayes_error(d, prior_galaxy):
    """Bayes error of N(g, V) against N(s, V) at squared Mahalanobis distance d^2 and prior P(galaxy) = pi.

    Returns ``(total, given_galaxy, given_star)`` (arrays broadcast from ``d`` and ``prior_galaxy``):
    ``given_galaxy`` = Phi(-d/2 + ln(t)/d), the probability that a galaxy is called a star, ``given_star`` =
    Phi(-d/2 - ln(t)/d), that a star is called a galaxy, t = (1 - pi) / pi, and ``total`` = pi given_galaxy
    + (1 - pi) given_star. At d = 0 the rule follows the prior (pi > 1/2: always galaxy; pi = 1/2: a tie,
    each error 1/2); at pi = 0 or 1 it never errs. NaN d gives NaN.
    """
    d = np.asarray(d, np.float64)
    pi = np.asarray(prior_galaxy, np.float64)
    d, pi = np.broadcast_arrays(d, pi)
    if np.any((pi < 0) | (pi > 1)):
        raise ValueError(f"prior_galaxy must lie in [0, 1], got {pi[(pi < 0) | (pi > 1)][0]}")
    if np.any(d < 0):
        raise ValueError(f"d must be >= 0 (a distance), got {d[d < 0][0]}")
    with np.errstate(divide="ignore", invalid="ignore"):
        log_t = np.log1p(-pi) - np.log(pi)  # +inf at pi = 0, -inf at pi = 1
        shift = np.where(np.isfinite(log_t), log_t, np.sign(log_t)) / d
        shift = np.where(log_t == 0, 0.0, shift)  # pi = 1/2: no shift, also at d = 0 (a tie: 1/2 each)
        # d = 0, pi != 1/2: shift = +-inf, ndtr gives 0 or 1: the prior decides
        given_galaxy = special.ndtr(-d / 2 + shift)
        given_star = special.ndtr(-d / 2 - shift)
    # pi = 0 or 1: one class only; the rule always says that class
    given_galaxy = np.where(pi == 1, 0.0, np.where(pi == 0, 1.0, given_galaxy))
    given_star = np.where(pi == 0, 0.0, np.where(pi == 1, 1.0, given_star))
    nan = np.isnan(d)
    given_galaxy = np.where(nan, np.nan, given_galaxy)
    given_star = np.where(nan, np.nan, given_star)
    total = pi * given_galaxy + (1 - pi) * given_star
    total = np.where((pi == 0) | (pi == 1), np.where(nan, np.nan, 0.0), total)
    return total, given_galaxy, given_star


# --------------------------------------------------------------------------------------------------
# The best-fitting star


def _unit_star(renderer: render_lib.Renderer, field: int, x: float, y: float) -> np.ndarray:
    """Electrons per pixel of a 1-nmgy star at (x, y) (edge-based pixels), [H, W]."""
    star = dict(n_sources=1, x=np.array([x]), y=np.array([y]), flux=np.array([1.0]), is_galaxy=np.array([False]))
    return renderer.source_electrons(star, field)


def star_fit(
    galaxy,
    variance,
    renderer: render_lib.Renderer,
    field: int,
    x0: float,
    y0: float,
    search_radius: float = _SEARCH_RADIUS,
) -> dict:
    """The star s = f p(x, y) closest to ``galaxy`` in chi2 = sum (galaxy - s)^2 / variance (module doc).

    ``galaxy`` and ``variance`` [H, W] in electrons (pixels with variance <= 0 or not finite are left out);
    the search starts at (``x0``, ``y0``) and stays within ``search_radius`` pixels of it. Returns a dict:
    ``x``, ``y`` (pixels), ``flux`` (nmgy), ``d2`` (chi2 at the best fit) and ``d2_none`` (sum galaxy^2 /
    variance: the distance to no source at all).
    """
    g = np.asarray(galaxy, np.float64)
    v = np.asarray(variance, np.float64)
    ok = np.isfinite(v) & (v > 0)
    w = np.where(ok, 1.0 / np.where(ok, v, 1.0), 0.0)
    gw = g * w
    c = float(np.sum(g * gw))

    def chi2_flux(xy):
        x, y = float(xy[0]), float(xy[1])
        if math.hypot(x - x0, y - y0) > search_radius:
            return c, 0.0
        p = _unit_star(renderer, field, x, y)  # electrons per nmgy
        a, b = float(np.sum(gw * p)), float(np.sum(p * p * w))
        if b <= 0 or a <= 0:
            return c, 0.0
        f = a / b  # nmgy
        return float(np.sum((g - f * p) ** 2 * w)), f  # not c - a^2 / b: that cancels badly for bright sources

    simplex = np.array([[x0, y0], [x0 + 0.5, y0], [x0, y0 + 0.5]])
    with threadpoolctl.threadpool_limits(1):  # the renderer's small matrix products (see npejax.evaluation.snr)
        res = optimize.minimize(
            lambda xy: chi2_flux(xy)[0],
            np.array([x0, y0]),
            method="Nelder-Mead",
            options=dict(initial_simplex=simplex, xatol=0.01, fatol=1e-4 * max(c, 1.0) + 1e-6, maxiter=200),
        )
        d2, flux = chi2_flux(res.x)
    return dict(x=float(res.x[0]), y=float(res.x[1]), flux=flux, d2=float(d2), d2_none=c)


def galaxy_distances(batch: dict, spec_or_renderer, rows, *, search_radius: float = _SEARCH_RADIUS) -> dict:
    """d (Mahalanobis distance to the best-fitting star, module doc) of the galaxies ``rows`` of ``batch``.

    ``batch``: ``background`` [B, H, W] (nmgy), ``field_id`` [B], ``n_sources`` [B] and the padded catalog
    (:data:`npejax.schema.CATALOG_KEYS`, [B, M]). ``spec_or_renderer``: the
    :class:`npejax.sim.pipeline.SimulationSpec` that made the batch or a :class:`npejax.sim.render.Renderer`.
    ``rows``: (image index in the batch, source index) pairs, [N, 2]; an entry that is not a galaxy with
    flux > 0 gets NaN. Returns a dict of [N] arrays: ``d``, ``star_x``, ``star_y``, ``star_flux`` (nmgy).
    """
    background = np.asarray(batch["background"], np.float64)
    renderer = render_lib.renderer_for(spec_or_renderer, background.shape[1:], "galaxy_distances")
    bank = renderer.bank
    field_id = bank.check_index(np.asarray(batch["field_id"]).reshape(-1))
    n_sources = np.asarray(batch["n_sources"]).astype(np.int64)
    catalog = {key: np.asarray(batch[key]) for key in CATALOG_KEYS}
    rows = np.asarray(rows, np.int64).reshape(-1, 2)
    out = {key: np.full(len(rows), np.nan) for key in ("d", "star_x", "star_y", "star_flux")}
    order = np.argsort(rows[:, 0], kind="stable")
    with threadpoolctl.threadpool_limits(1):  # the renderer's small matrix products (see npejax.evaluation.snr)
        variance, current = None, -1
        for j in order:
            i, s = int(rows[j, 0]), int(rows[j, 1])
            if not (0 <= s < n_sources[i]) or not catalog["is_galaxy"][i, s] or not catalog["flux"][i, s] > 0:
                continue
            field = int(field_id[i])
            if i != current:  # the image's variance: sky + every source's expected electrons
                everything = {key: catalog[key][i] for key in CATALOG_KEYS}
                everything["n_sources"] = int(n_sources[i])
                to_e = float(bank.to_electrons(field))
                variance = background[i] * to_e + renderer.source_electrons(everything, field)
                current = i
            single = {key: catalog[key][i, s : s + 1] for key in CATALOG_KEYS}
            single["n_sources"] = 1
            galaxy = renderer.source_electrons(single, field)
            fit = star_fit(
                galaxy, variance, renderer, field, float(catalog["x"][i, s]), float(catalog["y"][i, s]), search_radius
            )
            out["d"][j] = math.sqrt(fit["d2"])
            out["star_x"][j], out["star_y"][j], out["star_flux"][j] = fit["x"], fit["y"], fit["flux"]
    return out


# --------------------------------------------------------------------------------------------------
# Bins


def _bin_members(values, cutoffs, is_galaxy, rank, max_per_bin: int):
    """(bins of every row, per bin the galaxy rows with the ``max_per_bin`` lowest ranks)."""
    bins = metrics.assign_bins(values, cutoffs)
    members = []
    for k in range(len(cutoffs)):
        rows = np.nonzero((bins == k) & is_galaxy)[0]
        members.append(rows[np.argsort(rank[rows], kind="stable")[:max_per_bin]])
    return bins, members


def select_rows(binnings, is_galaxy, max_per_bin: int, seed: int = 0):
    """Which truth rows need a distance: for each binning ``(values, cutoffs)`` of ``binnings`` (values: one
    per truth row, e.g. the true magnitude), the galaxies of each bin with the ``max_per_bin`` lowest ranks of
    a random permutation (``np.random.default_rng(seed)``). Returns ``(rows, rank)``: the sorted union of
    those rows, and every row's rank (what :func:`binned_ceiling` needs to pick the same galaxies)."""
    is_galaxy = np.asarray(is_galaxy, bool)
    rank = np.empty(is_galaxy.size, np.int64)
    rank[np.random.default_rng(seed).permutation(is_galaxy.size)] = np.arange(is_galaxy.size)
    chosen = [np.zeros(0, np.int64)]
    for values, cutoffs in binnings:
        chosen += _bin_members(values, cutoffs, is_galaxy, rank, int(max_per_bin))[1]
    return np.unique(np.concatenate(chosen)), rank


def binned_ceiling(values, cutoffs, is_galaxy, d, rank=None, max_per_bin: int | None = None) -> dict:
    """The accuracy ceiling per bin (module doc) from the distances ``d`` of the truth rows.

    ``values`` (one per truth row; binned by :func:`npejax.evaluation.metrics.assign_bins` with ``cutoffs``),
    ``is_galaxy`` and ``d`` (NaN where not computed) have one entry per truth row. With ``rank`` and
    ``max_per_bin`` (:func:`select_rows`) a bin uses its ``max_per_bin`` lowest-ranked galaxies, else every
    galaxy with a finite d.

    Returns a dict: ``value`` [K] (1 - mean P_err; 1 for a bin of stars only; NaN for an empty bin or one
    whose galaxies have no distance), ``std`` [K] (std of P_err / sqrt(n), NaN with n < 2), ``galaxy_error``
    and ``star_error`` [K] (mean P(error | galaxy), P(error | star) of the pairs), ``galaxy_fraction`` [K],
    ``count`` [K] (true sources in the bin), ``num_galaxies`` [K] (galaxies used), ``mean`` (over the defined
    bins), ``num_defined``, ``overall`` (mean of the bins weighted by ``count``: the pooled accuracy of a
    classifier at the ceiling in every bin) and ``available`` (True).
    """
    cutoffs = np.asarray(cutoffs, np.float64)
    is_galaxy = np.asarray(is_galaxy, bool)
    d = np.asarray(d, np.float64)
    if not (len(np.asarray(values)) == is_galaxy.size == d.size):
        raise ValueError(
            f"values, is_galaxy and d need one entry per truth row, got {len(np.asarray(values))}, "
            f"{is_galaxy.size}, {d.size}"
        )
    usable = is_galaxy & np.isfinite(d)
    rank = np.arange(d.size) if rank is None else np.asarray(rank)
    cap = d.size if max_per_bin is None else int(max_per_bin)
    bins, members = _bin_members(values, cutoffs, usable, rank, cap)
    k_bins = len(cutoffs)
    out = {key: np.full(k_bins, np.nan) for key in ("value", "std", "galaxy_error", "star_error", "galaxy_fraction")}
    out["count"] = np.bincount(bins[bins >= 0], minlength=k_bins).astype(np.int64)
    out["num_galaxies"] = np.array([len(m) for m in members], np.int64)
    for k in range(k_bins):
        n = out["count"][k]
        if n == 0:
            continue
        pi = float(np.sum(is_galaxy & (bins == k))) / n
        out["galaxy_fraction"][k] = pi
        if pi == 0:
            out["value"][k], out["std"][k], out["galaxy_error"][k], out["star_error"][k] = 1.0, 0.0, np.nan, np.nan
            continue
        if len(members[k]) == 0:
            continue
        total, given_g, given_s = bayes_error(d[members[k]], pi)
        out["value"][k] = 1.0 - total.mean()
        out["std"][k] = total.std(ddof=1) / math.sqrt(total.size) if total.size > 1 else np.nan
        out["galaxy_error"][k], out["star_error"][k] = given_g.mean(), given_s.mean()
    defined = np.isfinite(out["value"])
    out["mean"] = float(out["value"][defined].mean()) if defined.any() else np.nan
    out["num_defined"] = int(defined.sum())
    weights = out["count"] * defined
    out["overall"] = (
        float(np.sum(np.where(defined, out["value"], 0.0) * weights) / weights.sum()) if weights.sum() else np.nan
    )
    out["available"] = True
    return out


# --------------------------------------------------------------------------------------------------
# A test set, and the prior


def manifest_spec(manifest: dict):
    """The SimulationSpec of a dataset's manifest config, or None without a usable one."""
    try:
        return pipeline.SimulationSpec.from_config(ml_collections.ConfigDict(manifest["config"]))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _headline(c: dict) -> dict:
    """The mean over the defined bins and the count-weighted (pooled) mean, with their Monte Carlo errors."""
    defined = np.isfinite(c["value"])
    std = np.where(defined, np.nan_to_num(c["std"]), 0.0)
    weights = np.where(defined, c["count"], 0).astype(np.float64)
    n = int(defined.sum())
    return dict(
        value=c["mean"],
        std=float(np.sqrt(np.sum(std**2)) / n) if n else np.nan,
        pooled=c["overall"],
        pooled_std=float(np.sqrt(np.sum((weights * std) ** 2)) / weights.sum()) if weights.sum() else np.nan,
        bins=n,
        count=int(c["num_galaxies"].sum()),
    )


def test_set_ceiling(
    read,
    truth,
    spec,
    binnings: dict,
    max_per_bin: int,
    seed: int = 0,
    chunk_images: int = 256,
    headline_key: str = "bins_reference",
) -> dict:
    """The ceiling of a test set for several binnings of its truth rows.

    ``read(index array, keys)`` returns those images' batch (``background``, ``field_id``, ``n_sources`` and
    the catalog; e.g. :meth:`npejax.evaluation.evaluate.TestSet.read`); ``truth``: the truth table (``image``,
    ``source`` -- the index in the image's padded catalog --, ``is_galaxy``); ``spec``: the test set's
    SimulationSpec (:func:`manifest_spec`); ``binnings``: name -> ``(values, cutoffs)`` (one value per truth
    row; None entries are skipped). Distances are computed once, for the union of every binning's selection
    (:func:`select_rows`), reading ``chunk_images`` images at a time.

    Returns ``options`` (``max_per_bin``, ``seed``, ``num_galaxies`` computed, ``seconds``), one
    :func:`binned_ceiling` dict per binning name, and ``headline``: ``value`` (the mean over the defined bins
    of ``headline_key``, the reference bins: r <= 22), ``pooled`` (its ``overall``), their Monte Carlo errors
    ``std`` and ``pooled_std`` (from the bins' ``std``), ``bins`` (bins averaged) and ``count`` (galaxies used
    there).
    """
    t0 = time.time()
    binnings = {k: v for k, v in binnings.items() if v is not None}
    is_galaxy = np.asarray(truth["is_galaxy"], bool)
    image = np.asarray(truth["image"], np.int64)
    source = np.asarray(truth["source"], np.int64)
    rows, rank = select_rows(list(binnings.values()), is_galaxy, max_per_bin, seed)
    d = np.full(is_galaxy.size, np.nan)
    images = np.unique(image[rows])
    for start in range(0, images.size, max(1, int(chunk_images))):
        chunk = images[start : start + max(1, int(chunk_images))]
        batch = read(chunk, BATCH_KEYS)
        these = rows[np.isin(image[rows], chunk)]
        local = np.searchsorted(chunk, image[these])
        d[these] = galaxy_distances(batch, spec, np.stack([local, source[these]], axis=1))["d"]
    out = dict(options=dict(max_per_bin=int(max_per_bin), seed=int(seed), num_galaxies=int(rows.size)))
    for name, (values, cutoffs) in binnings.items():
        out[name] = binned_ceiling(values, cutoffs, is_galaxy, d, rank, max_per_bin)
    if headline_key in out:
        out["headline"] = _headline(out[headline_key])
    out["options"]["seconds"] = time.time() - t0
    return out


def prior_ceiling(
    config,
    cutoffs=metrics.REFERENCE_CUTOFFS,
    max_per_bin: int | None = None,
    num_images: int = 20_000,
    seed: int = 0,
) -> dict:
    """The ceiling of galaxies drawn from the prior (no images rendered but the galaxies and their
    neighbours): ``num_images`` catalogs of the prior and field prior of ``config`` (a full npejax config, e.g.
    ``configs/default.py``), their fields and crops as the simulator draws them, binned by true magnitude with
    ``cutoffs`` (:func:`binned_ceiling`, ``max_per_bin`` galaxies a bin, default ``eval.ceiling_galaxies``)."""
    max_per_bin = int(config.eval.ceiling_galaxies if max_per_bin is None else max_per_bin)
    spec = pipeline.SimulationSpec.from_config(config, seed=seed)
    rng = np.random.default_rng(seed)
    catalog = spec.prior.sample(rng, int(num_images))
    field_id = spec.bank.sample_fields(rng, int(num_images), spec.field_prior)
    origins = spec.bank.sample_crop_origins(rng, int(num_images), spec.prior.image_shape)
    n = catalog["n_sources"]
    image, source = np.nonzero(np.arange(catalog["x"].shape[1])[None, :] < n[:, None])
    flux = catalog["flux"][image, source].astype(np.float64)
    mag = 22.5 - 2.5 * np.log10(flux)
    is_galaxy = catalog["is_galaxy"][image, source]
    rows, rank = select_rows([(mag, cutoffs)], is_galaxy, max_per_bin, seed)
    d = np.full(image.size, np.nan)
    used = np.unique(image[rows])
    background = np.stack(
        [
            spec.bank.background_electrons(field_id[i], origins[i], spec.prior.image_shape)
            / float(spec.bank.to_electrons(field_id[i]))
            for i in used
        ]
    )
    batch = dict(
        background=background,
        field_id=field_id[used],
        n_sources=n[used],
        **{key: catalog[key][used] for key in CATALOG_KEYS},
    )
    local = np.searchsorted(used, image[rows])
    d[rows] = galaxy_distances(batch, spec, np.stack([local, source[rows]], axis=1))["d"]
    out = binned_ceiling(mag, cutoffs, is_galaxy, d, rank, max_per_bin)
    out["cutoffs"] = np.asarray(cutoffs, np.float64)
    return out
