"""Evaluation metrics of the paper (Section 7 and Appendix A), in plain numpy/scipy (no JAX).

Catalogs are astropy Tables or any mapping of column name -> 1-D array, one row per source (SPEC
"Catalog and coordinate conventions"): positions ``x`` (column) and ``y`` (row) in pixels, ``flux`` in
nanomaggies (nmgy), ``mag`` the r magnitude 22.5 - 2.5 log10(flux / nmgy), ``image`` the integer image
index in [0, num_images). ``num_images`` is always explicit, since images without sources exist.

Columns read:

- truth: ``image``, ``x``, ``y``, ``flux`` (required); ``mag`` (computed from ``flux`` when absent);
  ``is_galaxy`` (needed for star/galaxy metrics).
- prediction: ``image``, ``x``, ``y``, ``flux`` (posterior median, nmgy) (required); ``mag`` (as above);
  ``prob_source`` (detection probability), ``prob_galaxy``, ``flux_hi`` (84.13th percentile of the
  LogNormal flux posterior, nmgy; with ``flux`` it gives mu = log(flux), sigma = log(flux_hi / flux)).

A baseline without probabilities (Source Extractor) is accepted everywhere: every prediction is then a
detection, and a metric that needs a missing column is NaN with ``available`` False.

Validation (ValueError): a missing or non-numeric (e.g. text) required column (named), an image index
outside [0, num_images)
(naming the catalog, 'truth' or 'prediction', and the offending value), a non-finite ``x``, ``y`` or
``flux``, or columns of different lengths.

Conventions shared by all functions:

- Matching (:func:`match`): per image, Jonker-Volgenant on the distances with pairs beyond the slack
  at a prohibitive cost, so the most pairs within the slack first, the least total distance second.
- Detections: a prediction counts as a detection only if its ``prob_source`` > ``prob_threshold``
  (0.5 by default); without ``prob_source`` every row is a detection.
- Magnitude bins (:func:`assign_bins`): ``cutoffs`` c_0 < ... < c_{K-1} give K bins; bin 0 is
  value < c_0, bin k is c_{k-1} <= value < c_k, the last bin is closed, c_{K-2} <= value <= c_{K-1};
  anything above c_{K-1} or NaN is -1 (excluded). The same format serves any stratification value
  (e.g. SNR, with c_{K-1} = inf).
- Magnitude ranges ``mag_range=(lo, hi)`` are closed, lo <= mag <= hi (use -inf / inf for open ends);
  ``None`` means every source.
- Bootstrap: images are resampled with replacement (weights from
  ``np.random.default_rng(seed).multinomial(num_images, [1/num_images] * num_images)``); a ratio metric
  of a replicate is (weighted sum of per-image numerators) / (weighted sum of per-image denominators);
  the reported ``std`` is the standard deviation (ddof 1) of the replicates where that ratio is defined,
  NaN with fewer than two such replicates.
- Undefined values (zero denominator) are NaN, and the denominators are always reported. Means over
  bins use only the defined bins and report how many (``num_defined``); they are NaN only when no bin is
  defined. :func:`to_jsonable` turns results into JSON-ready Python objects (NaN / inf -> None).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import optimize, special, stats

from npejax.catalogs import flux_to_mag

__all__ = [
    "REFERENCE_CUTOFFS",
    "CALIBRATION_SUBSETS",
    "DEFAULT_COVERAGE_LEVELS",
    "match",
    "assign_bins",
    "equal_count_edges",
    "binned_metrics",
    "threshold_curves",
    "at_reference_operating_point",
    "count_calibration",
    "calibration_by_expected",
    "roc_curve",
    "auc",
    "star_galaxy_roc",
    "flux_coverage",
    "to_jsonable",
]

# Reference equal-count r-magnitude cut-offs (SPEC "Evaluation"): 10 bins, the last one [21.746, 22.0].
REFERENCE_CUTOFFS = (17.777, 19.101, 19.781, 20.258, 20.625, 20.940, 21.227, 21.495, 21.746, 22.000)

# The paper's magnitude subsets for calibration (Figures 6-8); closed ranges (lo, hi) in r magnitudes.
CALIBRATION_SUBSETS = {
    "all": None,
    "brightest": (-np.inf, REFERENCE_CUTOFFS[0]),  # r < 17.777 (17.777 itself included: measure zero)
    "faintest": (REFERENCE_CUTOFFS[-2], REFERENCE_CUTOFFS[-1]),  # 21.746 <= r <= 22.0
}

DEFAULT_COVERAGE_LEVELS = np.round(np.linspace(0.05, 0.95, 19), 2)

_POSITION_COLUMNS = ("image", "x", "y")
_REQUIRED = ("image", "x", "y", "flux")
_BOOTSTRAP_CHUNK_ENTRIES = 4_000_000  # weights matrix entries per bootstrap chunk (memory bound)


# --------------------------------------------------------------------------------------------------
# Input handling


def colnames(cat) -> list[str]:
    """Column names of a catalog (astropy Table or mapping of column arrays)."""
    if hasattr(cat, "colnames"):
        return list(cat.colnames)
    if isinstance(cat, Mapping):
        return list(cat.keys())
    raise TypeError(f"a catalog must be an astropy Table or a mapping of column arrays, not {type(cat)}")


def _column(col, fill) -> np.ndarray:
    """A plain ndarray of a column; masked numeric entries (astropy MaskedColumn) become ``fill``."""
    if isinstance(col, np.ma.MaskedArray):
        data = np.array(np.ma.getdata(col))
        mask = np.ma.getmaskarray(col)
        if mask.any() and (np.issubdtype(data.dtype, np.number) or data.dtype == bool):
            data = data.astype(np.float64) if fill is np.nan else data
            data[mask] = fill
        return data
    return np.asarray(col)


def _load(cat, name: str, num_images: int | None, required=_REQUIRED, finite=("x", "y", "flux")) -> dict:
    """Validated float64 / int64 / bool columns of a catalog ('truth' or 'prediction'); image indices
    are checked against [0, num_images) unless ``num_images`` is None."""
    names = colnames(cat)
    missing = [c for c in required if c not in names]
    if missing:
        raise ValueError(f"{name} catalog lacks required column(s) {missing} (has {names})")
    out = {}
    for col in names:
        raw = _column(cat[col], False if col == "is_galaxy" else np.nan)
        if raw.ndim != 1:
            if col in required:
                raise ValueError(f"{name} catalog: column {col!r} must be 1-D, has shape {raw.shape}")
            continue
        if col in required and not (np.issubdtype(raw.dtype, np.number) or raw.dtype == bool):
            what = "text" if raw.dtype.kind in "USO" else f"{raw.dtype} values"
            example = f" (e.g. {str(raw[0])!r})" if raw.size else ""
            raise ValueError(f"{name} catalog: column {col!r} holds {what}{example}, expected numbers")
        if col == "image":
            img = raw.astype(np.float64)
            bad = ~np.isfinite(img) | (img != np.round(img))
            if bad.any():
                raise ValueError(f"{name} catalog: image index {img[bad][0]!r} is not an integer")
            out[col] = img.astype(np.int64)
        elif col == "is_galaxy":
            out[col] = raw.astype(bool)
        elif np.issubdtype(raw.dtype, np.number) or raw.dtype == bool:
            out[col] = raw.astype(np.float64)
    lengths = {col: len(v) for col, v in out.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{name} catalog columns have different lengths: {lengths}")
    for col in finite:
        if col in out and not np.isfinite(out[col]).all():
            bad = out[col][~np.isfinite(out[col])][0]
            raise ValueError(f"{name} catalog: column {col!r} holds a non-finite value ({bad})")
    img = out["image"]
    if num_images is not None and img.size:
        num_images = _check_num_images(num_images)
        outside = (img < 0) | (img >= num_images)
        if outside.any():
            raise ValueError(
                f"{name} catalog: image index {int(img[outside][0])} is outside "
                f"[0, num_images={num_images}); is num_images right?"
            )
    if "mag" not in out and "flux" in out:
        out["mag"] = flux_to_mag(out["flux"])
    return out


def _check_num_images(num_images) -> int:
    if isinstance(num_images, (bool, np.bool_)) or not isinstance(num_images, (int, np.integer)) or num_images < 0:
        raise ValueError(f"num_images must be a non-negative integer, got {num_images!r}")
    return int(num_images)


def _detections(p: dict, prob_threshold) -> np.ndarray:
    """Boolean mask of predictions that count as detections (prob_source > prob_threshold)."""
    n = len(p["image"])
    if prob_threshold is None or "prob_source" not in p:
        return np.ones(n, dtype=bool)
    return p["prob_source"] > prob_threshold


def _truth_to_pred(matches, num_truth: int, num_pred: int) -> np.ndarray:
    """The truth -> prediction index array from ``match`` output (the pair or its first element)."""
    if isinstance(matches, tuple):
        matches = matches[0]
    t2p = np.asarray(matches)
    if t2p.shape != (num_truth,) or not np.issubdtype(t2p.dtype, np.integer):
        raise ValueError(
            f"matches must be an int array of shape ({num_truth},) (truth_to_pred from "
            f"match), got {t2p.dtype} {t2p.shape}"
        )
    if t2p.size and (t2p.min() < -1 or t2p.max() >= num_pred):
        raise ValueError(f"matches index outside [-1, {num_pred}) (the prediction catalog's length)")
    return t2p


def _gather(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """values[index] where index >= 0, NaN elsewhere (works for an empty ``values``)."""
    out = np.full(index.shape, np.nan)
    ok = index >= 0
    out[ok] = values[index[ok]]
    return out


def _in_range(mag: np.ndarray, mag_range) -> np.ndarray:
    if mag_range is None:
        return np.ones(mag.shape, dtype=bool)
    lo, hi = (float(v) for v in mag_range)
    return (mag >= lo) & (mag <= hi)


# --------------------------------------------------------------------------------------------------
# Matching and binning


def match(truth, pred, num_images: int, slack: float = 1.0, prob_threshold: float | None = None):
    """Matches true and predicted sources image by image.

    In each image, ``scipy.optimize.linear_sum_assignment`` (Jonker-Volgenant) pairs true and predicted
    sources, regardless of magnitude, on the Euclidean distance (pixels) with every pair farther than
    ``slack`` given a prohibitive cost, as the authors' code does: the assignment first maximizes the number
    of pairs within ``slack``, then minimizes their summed distance. Only pairs within ``slack`` count as
    matches. (Assigning on raw distances and dropping far pairs afterwards can lose a valid match in a
    crowded image: truth A sits on prediction P, its neighbour B reaches only P, and A also reaches a second
    prediction Q; raw distances pair A-P and leave B-Q beyond the slack, the prohibitive cost pairs A-Q and
    B-P.) The cost is k * ``slack`` + 1 for k = min(true, predicted sources in the image), more than any k
    valid pairs can cost together, which orders assignments exactly so; the authors' 1e20 orders them the
    same way on paper, but in float64 1e20 + 0.8 == 1e20 + 0.2, so among assignments with the most valid
    pairs it does not reliably find the shortest (10% of random 2-5 source crowds, against brute force). If
    ``prob_threshold`` is given and ``pred`` has ``prob_source``, only predictions with
    ``prob_source`` > ``prob_threshold`` take part.

    Returns ``(truth_to_pred, pred_to_truth)``: int64 arrays of lengths len(truth) and len(pred)
    holding the row index of the matched source in the other catalog, -1 where unmatched.
    """
    t = _load(truth, "truth", num_images, required=_POSITION_COLUMNS, finite=("x", "y"))
    p = _load(pred, "prediction", num_images, required=_POSITION_COLUMNS, finite=("x", "y"))
    return _match(t, p, int(num_images), float(slack), _detections(p, prob_threshold))


def _match(t: dict, p: dict, num_images: int, slack: float, active: np.ndarray):
    t2p = np.full(len(t["image"]), -1, dtype=np.int64)
    p2t = np.full(len(p["image"]), -1, dtype=np.int64)
    p_rows = np.nonzero(active)[0]
    t_order = np.argsort(t["image"], kind="stable")
    p_order = p_rows[np.argsort(p["image"][p_rows], kind="stable")]
    bounds = np.arange(num_images + 1)
    tb = np.searchsorted(t["image"][t_order], bounds)
    pb = np.searchsorted(p["image"][p_order], bounds)
    tx, ty, px, py = t["x"], t["y"], p["x"], p["y"]
    for i in np.nonzero((np.diff(tb) > 0) & (np.diff(pb) > 0))[0]:
        ti = t_order[tb[i] : tb[i + 1]]
        pi = p_order[pb[i] : pb[i + 1]]
        dist = np.hypot(tx[ti, None] - px[None, pi], ty[ti, None] - py[None, pi])
        near = dist <= slack
        far_cost = slack * min(ti.size, pi.size) + 1.0  # above any sum of valid distances (see match)
        rows, cols = optimize.linear_sum_assignment(np.where(near, dist, far_cost))
        ok = near[rows, cols]
        t2p[ti[rows[ok]]] = pi[cols[ok]]
        p2t[pi[cols[ok]]] = ti[rows[ok]]
    return t2p, p2t


def assign_bins(values, cutoffs) -> np.ndarray:
    """Bin index (int64) of each value for cut-offs c_0 <= ... <= c_{K-1} (e.g. r magnitudes).

    Bin 0: value < c_0; bin k: c_{k-1} <= value < c_k; last bin closed: c_{K-2} <= value <= c_{K-1}.
    Values above c_{K-1} and NaN get -1. With :data:`REFERENCE_CUTOFFS`, 17.777 is in bin 1, 22.0 in
    bin 9 and 22.0001 in none.
    """
    cutoffs = np.asarray(cutoffs, dtype=np.float64)
    if cutoffs.ndim != 1 or cutoffs.size == 0 or np.isnan(cutoffs).any() or np.any(np.diff(cutoffs) < 0):
        raise ValueError(f"cutoffs must be a non-empty non-decreasing 1-D sequence, got {cutoffs}")
    values = np.asarray(values, dtype=np.float64)
    idx = np.searchsorted(cutoffs, values, side="right")
    last = cutoffs.size - 1
    idx = np.where(values == cutoffs[last], last, idx)
    return np.where(idx > last, -1, idx).astype(np.int64)


def equal_count_edges(mags, num_bins: int, max_mag: float = 22.0) -> np.ndarray:
    """Cut-offs (format of :func:`assign_bins`, last entry ``max_mag``) giving ``num_bins`` bins with
    equal counts, up to one source, of the finite values <= ``max_mag`` (ties aside). Interior cut-offs
    lie midway between consecutive sorted values. ``max_mag`` may be inf (e.g. for SNR strata).
    """
    if int(num_bins) < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    num_bins = int(num_bins)
    v = np.asarray(mags, dtype=np.float64).reshape(-1)
    s = np.sort(v[np.isfinite(v) & (v <= max_mag)])
    n = s.size
    if n == 0:
        raise ValueError(f"equal_count_edges: no finite values <= {max_mag}")
    edges = []
    for k in range(1, num_bins):
        j = (k * n + num_bins // 2) // num_bins
        edges.append(s[0] if j <= 0 else s[-1] if j >= n else 0.5 * (s[j - 1] + s[j]))
    edges.append(float(max_mag))
    return np.asarray(edges, dtype=np.float64)


# --------------------------------------------------------------------------------------------------
# Bootstrap helpers


def _per_image_bins(image, bins, weights, num_images: int, num_bins: int) -> np.ndarray:
    """[num_images, num_bins + 1] sums of ``weights`` per image and bin (last column: all bins)."""
    sel = bins >= 0
    idx = image[sel] * num_bins + bins[sel]
    w = np.asarray(weights, dtype=np.float64)
    w = np.broadcast_to(w, bins.shape)[sel]
    sums = np.bincount(idx, weights=w, minlength=num_images * num_bins).reshape(num_images, num_bins)
    return np.concatenate([sums, sums.sum(axis=1, keepdims=True)], axis=1)


def _bootstrap_sums(per_image: np.ndarray, num_bootstrap: int, seed: int) -> np.ndarray:
    """[num_bootstrap, M] column sums of ``per_image`` [num_images, M] over images resampled with
    replacement (multinomial weights from ``np.random.default_rng(seed)``)."""
    num_images, m = per_image.shape
    if num_images == 0 or num_bootstrap <= 0:
        return np.empty((0, m))
    rng = np.random.default_rng(seed)
    pvals = np.full(num_images, 1.0 / num_images)
    chunk = max(1, _BOOTSTRAP_CHUNK_ENTRIES // num_images)
    out = np.empty((num_bootstrap, m))
    for start in range(0, num_bootstrap, chunk):
        c = min(chunk, num_bootstrap - start)
        w = rng.multinomial(num_images, pvals, size=c).astype(np.float64)
        out[start : start + c] = w @ per_image
    return out


def _ratio(num, den) -> np.ndarray:
    num, den = np.broadcast_arrays(np.asarray(num, np.float64), np.asarray(den, np.float64))
    out = np.full(num.shape, np.nan)
    ok = den > 0
    out[ok] = num[ok] / den[ok]
    return out


def _std(reps: np.ndarray) -> np.ndarray:
    """Std (ddof 1) over axis 0 of the finite replicates; NaN with fewer than two."""
    reps = np.asarray(reps, dtype=np.float64)
    if reps.shape[0] == 0:
        return np.full(reps.shape[1:], np.nan)
    ok = np.isfinite(reps)
    n = ok.sum(axis=0)
    x = np.where(ok, reps, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = x.sum(axis=0) / n
        var = np.where(ok, (reps - mean) ** 2, 0.0).sum(axis=0) / (n - 1)
    return np.where(n >= 2, np.sqrt(var), np.nan)


def _mean_defined(values: np.ndarray, defined: np.ndarray) -> np.ndarray:
    """Mean over the last axis of the finite entries among ``defined`` columns; NaN when none."""
    ok = np.isfinite(values) & defined
    n = ok.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.where(ok, values, 0.0).sum(axis=-1) / n, np.nan)


def _ratio_metric(num, den, reps_num, reps_den, scale: float = 1.0, available: bool = True) -> dict:
    """Summary of a ratio metric from per-bin (+ overall last column) sums and bootstrap replicates;
    an unavailable metric keeps its counts and has NaN values."""
    if not available:
        num = np.full(np.shape(num), np.nan)
        reps_num = np.full(np.shape(reps_num), np.nan)
    value = _ratio(num, den) * scale
    reps = _ratio(reps_num, reps_den) * scale
    std = _std(reps)
    bins = value[:-1]
    defined = np.isfinite(bins)
    count = np.asarray(den, np.float64)
    return dict(
        value=bins,
        std=std[:-1],
        count=np.rint(count[:-1]).astype(np.int64),
        numerator=np.asarray(num, np.float64)[:-1],
        mean=float(_mean_defined(bins, defined)),
        num_defined=int(defined.sum()),
        mean_std=float(_std(_mean_defined(reps[:, :-1], defined[None, :])[:, None])[0]),
        overall=float(value[-1]),
        overall_std=float(std[-1]),
        overall_count=int(round(count[-1])),
        available=bool(available),
    )


# --------------------------------------------------------------------------------------------------
# Detection, classification and flux metrics by bin


def binned_metrics(
    truth,
    pred,
    num_images: int,
    cutoffs=REFERENCE_CUTOFFS,
    slack: float = 1.0,
    num_bootstrap: int = 200,
    seed: int = 0,
    prob_threshold: float = 0.5,
    truth_strata=None,
) -> dict:
    """Precision, recall, star/galaxy accuracy and flux MAPE per bin, with bootstrap bands.

    Detections are predictions with ``prob_source`` > ``prob_threshold`` (all rows without
    ``prob_source``); they are matched to the truth with :func:`match` (``slack`` in pixels) over all
    magnitudes, and binned afterwards with :func:`assign_bins` and ``cutoffs``:

    - ``precision``: detections binned by ESTIMATED magnitude; matched detections / detections.
    - ``recall``: truths binned by TRUE magnitude; matched truths / truths.
    - ``accuracy``: matched truths binned by true magnitude; fraction whose type is right, the
      prediction saying galaxy iff ``prob_galaxy`` > ``prob_threshold`` (needs truth ``is_galaxy`` and
      prediction ``prob_galaxy``, else NaN with ``available`` False).
    - ``mape``: matched truths (true flux > 0) binned by true magnitude; mean of
      |true flux - predicted flux| / true flux, in percent.

    ``truth_strata`` (one value per truth row, e.g. SNR; Appendix A) replaces the true magnitude for
    recall, accuracy and MAPE, and ``cutoffs`` then bin those values; precision is then unavailable
    (NaN), since unmatched detections have no such value.

    Returns a dict with ``cutoffs``, ``num_bins``, ``num_images``, ``num_truth``, ``num_detections``,
    ``num_matched``, ``slack``, ``prob_threshold``, ``num_bootstrap``, ``stratified_by`` ('mag' or
    'truth_strata') and, for each of ``precision``, ``recall``, ``accuracy``, ``mape``, a dict:
    ``value`` [K] (NaN where ``count`` is 0), ``std`` [K] (1-sigma bootstrap over images),
    ``count`` [K] (denominator: sources in the bin), ``numerator`` [K] (matched / correct counts, or the
    summed percentage errors), ``mean`` (the bracketed mean over the ``num_defined`` defined bins),
    ``mean_std`` (its bootstrap std), ``overall`` / ``overall_std`` / ``overall_count`` (pooled over all
    bins, i.e. over the cut-off range), ``available``.
    """
    num_images = _check_num_images(num_images)
    t = _load(truth, "truth", num_images)
    p = _load(pred, "prediction", num_images)
    cutoffs = np.asarray(cutoffs, dtype=np.float64)
    num_bins = cutoffs.size
    detected = _detections(p, prob_threshold)
    t2p, p2t = _match(t, p, num_images, float(slack), detected)
    matched_t = t2p >= 0

    stratified = truth_strata is not None
    if stratified:
        strata = np.asarray(truth_strata, dtype=np.float64).reshape(-1)
        if strata.size != t["image"].size:
            raise ValueError(f"truth_strata has {strata.size} values for {t['image'].size} truth rows")
        t_bin = assign_bins(strata, cutoffs)
    else:
        t_bin = assign_bins(t["mag"], cutoffs)

    def per_image(image, bins, weights):
        return _per_image_bins(image, bins, weights, num_images, num_bins)

    zeros = np.zeros((num_images, num_bins + 1))
    # precision
    if stratified:
        prec_num = prec_den = zeros
    else:
        p_bin = np.where(detected, assign_bins(p["mag"], cutoffs), -1)
        prec_den = per_image(p["image"], p_bin, 1.0)
        prec_num = per_image(p["image"], p_bin, p2t >= 0)
    # recall
    rec_den = per_image(t["image"], t_bin, 1.0)
    rec_num = per_image(t["image"], t_bin, matched_t)
    # accuracy
    m_bin = np.where(matched_t, t_bin, -1)
    has_types = "is_galaxy" in t and "prob_galaxy" in p
    acc_den = per_image(t["image"], m_bin, 1.0)
    if has_types:
        said_galaxy = _gather(p["prob_galaxy"], t2p) > prob_threshold
        acc_num = per_image(t["image"], m_bin, said_galaxy == t["is_galaxy"])
    else:
        acc_num = zeros
    # MAPE
    f_bin = np.where(t["flux"] > 0, m_bin, -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ape = np.where(f_bin >= 0, np.abs(t["flux"] - _gather(p["flux"], t2p)) / t["flux"], 0.0)
    mape_den = per_image(t["image"], f_bin, 1.0)
    mape_num = per_image(t["image"], f_bin, ape)

    blocks = [prec_num, prec_den, rec_num, rec_den, acc_num, acc_den, mape_num, mape_den]
    width = num_bins + 1
    reps = _bootstrap_sums(np.concatenate(blocks, axis=1), int(num_bootstrap), seed)
    sums = [b.sum(axis=0) for b in blocks]
    rep_blocks = [reps[:, i * width : (i + 1) * width] for i in range(len(blocks))]

    def metric(i, scale=1.0, available=True):
        return _ratio_metric(sums[2 * i], sums[2 * i + 1], rep_blocks[2 * i], rep_blocks[2 * i + 1], scale, available)

    return dict(
        cutoffs=cutoffs,
        num_bins=num_bins,
        num_images=num_images,
        num_truth=int(t["image"].size),
        num_detections=int(detected.sum()),
        num_matched=int(matched_t.sum()),
        slack=float(slack),
        prob_threshold=float(prob_threshold),
        num_bootstrap=int(num_bootstrap),
        stratified_by="truth_strata" if stratified else "mag",
        precision=metric(0, available=not stratified),
        recall=metric(1),
        accuracy=metric(2, available=has_types),
        mape=metric(3, scale=100.0),
    )


# --------------------------------------------------------------------------------------------------
# Operating points: the detection threshold as a choice, not a constant

DEFAULT_THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)  # prob_source thresholds swept by threshold_curves


def threshold_curves(truth, pred, num_images: int, cutoffs=REFERENCE_CUTOFFS, thresholds=None, slack: float = 1.0):
    """Per-bin precision and recall of a catalog with detection probabilities, at each threshold.

    For every threshold tau in ``thresholds`` (default 0.01, 0.02, ..., 0.99) the detections are the rows with
    ``prob_source`` > tau; they are matched to the truth anew (:func:`match`, ``slack`` pixels: a detection
    dropped at a higher threshold can free a true source for another one), and binned as in
    :func:`binned_metrics`: precision by estimated magnitude, recall by true magnitude.

    Returns a dict: ``thresholds`` [T]; ``precision``, ``recall`` [T, K] (NaN where the bin holds no
    detection / no true source); ``num_detections``, ``num_matched_detections`` [T, K] (estimated-magnitude
    bins), ``num_truth`` [K] and ``num_matched_truth`` [T, K] (true-magnitude bins); ``cutoffs``. ValueError when
    the prediction has no ``prob_source`` column (a catalog without probabilities has one operating point).
    """
    num_images = _check_num_images(num_images)
    t = _load(truth, "truth", num_images)
    p = _load(pred, "prediction", num_images)
    if "prob_source" not in p:
        raise ValueError("threshold_curves needs the prediction's prob_source column (detection probabilities)")
    cutoffs = np.asarray(cutoffs, dtype=np.float64)
    taus = DEFAULT_THRESHOLDS if thresholds is None else np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if taus.size == 0 or not np.isfinite(taus).all():
        raise ValueError(f"thresholds must be a non-empty list of finite numbers, got {thresholds!r}")
    k = cutoffs.size
    t_bin = assign_bins(t["mag"], cutoffs)
    p_bin_all = assign_bins(p["mag"], cutoffs)
    num_truth = np.bincount(t_bin[t_bin >= 0], minlength=k)

    def count(bins, mask):
        sel = mask & (bins >= 0)
        return np.bincount(bins[sel], minlength=k)

    shape = (taus.size, k)
    det, det_matched, truth_matched = np.zeros(shape, np.int64), np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    for i, tau in enumerate(taus):
        detected = p["prob_source"] > tau
        t2p, p2t = _match(t, p, num_images, float(slack), detected)
        det[i] = count(p_bin_all, detected)
        det_matched[i] = count(p_bin_all, detected & (p2t >= 0))
        truth_matched[i] = count(t_bin, t2p >= 0)
    return dict(
        cutoffs=cutoffs,
        thresholds=taus,
        precision=_ratio(det_matched, det),
        recall=_ratio(truth_matched, np.broadcast_to(num_truth, shape)),
        num_detections=det,
        num_matched_detections=det_matched,
        num_truth=num_truth,
        num_matched_truth=truth_matched,
    )


def at_reference_operating_point(curves: dict, ref_precision, ref_recall) -> dict:
    """The network at a reference method's operating point, bin by bin (a fair comparison with a method that
    has no probabilities, e.g. Source Extractor at its own threshold).

    ``curves`` from :func:`threshold_curves`; ``ref_precision`` and ``ref_recall`` [K] the reference's
    per-bin values (NaN: undefined). In each bin k:

    - ``precision_at_ref_recall`` [K]: the best precision over the thresholds whose recall is at least the
      reference's, and ``threshold_at_ref_recall`` [K] the threshold that gives it (the highest such, on ties);
    - ``recall_at_ref_precision`` [K]: the best recall over the thresholds whose precision is at least the
      reference's, and ``threshold_at_ref_precision`` [K];

    NaN (and threshold NaN) where the reference value is undefined or no threshold of the sweep reaches it.
    Each bin gets its own threshold: this answers "could the network match the reference's recall in this
    bin and still be more precise?", not what one global threshold would give.
    """
    prec = np.asarray(curves["precision"], np.float64)
    rec = np.asarray(curves["recall"], np.float64)
    taus = np.asarray(curves["thresholds"], np.float64)
    ref_p = np.asarray(ref_precision, np.float64).reshape(-1)
    ref_r = np.asarray(ref_recall, np.float64).reshape(-1)
    k = prec.shape[1]
    if ref_p.size != k or ref_r.size != k:
        raise ValueError(f"reference precision/recall have {ref_p.size}/{ref_r.size} bins, the curves {k}")

    def best(value, constraint, ref):
        out, at = np.full(k, np.nan), np.full(k, np.nan)
        for j in range(k):
            if not np.isfinite(ref[j]):
                continue
            ok = np.isfinite(value[:, j]) & np.isfinite(constraint[:, j]) & (constraint[:, j] >= ref[j] - 1e-12)
            if not ok.any():
                continue
            v = np.where(ok, value[:, j], -np.inf)
            i = np.flatnonzero(v == v.max())[-1]  # the highest threshold among the best
            out[j], at[j] = v[i], taus[i]
        return out, at

    p_at_r, tau_r = best(prec, rec, ref_r)
    r_at_p, tau_p = best(rec, prec, ref_p)
    return dict(
        precision_at_ref_recall=p_at_r,
        threshold_at_ref_recall=tau_r,
        recall_at_ref_precision=r_at_p,
        threshold_at_ref_precision=tau_p,
        ref_precision=ref_p,
        ref_recall=ref_r,
    )


# --------------------------------------------------------------------------------------------------
# Calibration


def _lognormal_params(p: dict):
    """mu = log(flux), sigma = log(flux_hi / flux) of the LogNormal flux posterior (NaN if invalid)."""
    flux, hi = p["flux"], p.get("flux_hi")
    if hi is None:
        nan = np.full(flux.shape, np.nan)
        return nan, nan
    with np.errstate(divide="ignore", invalid="ignore"):
        mu = np.where(flux > 0, np.log(flux), np.nan)
        sigma = np.where((flux > 0) & (hi > 0), np.log(hi / flux), np.nan)
    sigma = np.where(sigma >= 0, sigma, np.nan)
    return mu, sigma


def _prob_mag_in_range(mu, sigma, mag_range) -> np.ndarray:
    """P(lo <= mag <= hi) for log(flux) ~ N(mu, sigma) (sigma 0: a point mass at exp(mu))."""
    lo, hi = (float(v) for v in mag_range)
    log10 = np.log(10.0)
    log_f_lo = (22.5 - hi) / 2.5 * log10 if np.isfinite(hi) else -np.inf  # faint end -> low flux
    log_f_hi = (22.5 - lo) / 2.5 * log10 if np.isfinite(lo) else np.inf
    with np.errstate(divide="ignore", invalid="ignore"):
        prob = special.ndtr((log_f_hi - mu) / sigma) - special.ndtr((log_f_lo - mu) / sigma)
    point = ((mu >= log_f_lo) & (mu <= log_f_hi)).astype(np.float64)
    return np.where(sigma == 0, point, prob)


def count_calibration(truth, pred_tiles, num_images: int, mag_range=None) -> dict:
    """Detection calibration (paper Figure 6): true against expected number of sources per image.

    ``pred_tiles`` holds EVERY tile (no probability cut, e.g. ``tiles_to_sources(..., min_prob=0)``).
    Per image, ``true_count`` is the number of true sources with mag in the closed ``mag_range``
    (all sources when None) and ``expected_count`` = sum over the image's tiles of
    prob_source * P(mag in mag_range), the probability under the tile's LogNormal flux posterior
    (mu = log flux, sigma = log(flux_hi / flux)); P = 1 when ``mag_range`` is None. Without
    ``prob_source`` (or without ``flux_hi`` when ``mag_range`` is given) the expected counts are NaN and
    ``available`` is False. See :data:`CALIBRATION_SUBSETS` for the paper's ranges.

    Returns a dict: ``true_count`` int [num_images], ``expected_count`` float [num_images],
    ``mag_range``, ``available``, ``total_true``, ``total_expected``, and ``summary`` with, for each
    distinct true count, ``true_count`` [U], ``num_images`` [U], ``mean_expected`` [U] and
    ``std_expected`` [U] (ddof 0, over those images).
    """
    num_images = _check_num_images(num_images)
    t = _load(truth, "truth", num_images)
    p = _load(pred_tiles, "prediction", num_images)
    true_count = np.bincount(t["image"][_in_range(t["mag"], mag_range)], minlength=num_images).astype(np.int64)
    available = "prob_source" in p and (mag_range is None or "flux_hi" in p)
    if available:
        prob = p["prob_source"].copy()
        if mag_range is not None:
            prob = prob * _prob_mag_in_range(*_lognormal_params(p), mag_range)
        expected = np.bincount(p["image"], weights=prob, minlength=num_images).astype(np.float64)
    else:
        expected = np.full(num_images, np.nan)
    values, inverse = np.unique(true_count, return_inverse=True)
    n = np.bincount(inverse, minlength=values.size)
    mean = _ratio(np.bincount(inverse, weights=expected, minlength=values.size), n)
    var = _ratio(np.bincount(inverse, weights=(expected - mean[inverse]) ** 2, minlength=values.size), n)
    return dict(
        true_count=true_count,
        expected_count=expected,
        mag_range=None if mag_range is None else tuple(float(v) for v in mag_range),
        available=bool(available),
        total_true=int(true_count.sum()),
        total_expected=float(expected.sum()) if available else np.nan,
        summary=dict(
            true_count=values.astype(np.int64),
            num_images=n.astype(np.int64),
            mean_expected=mean,
            std_expected=np.sqrt(var),
        ),
    )


def calibration_by_expected(true_count, expected_count) -> dict:
    """The images of :func:`count_calibration` grouped by their EXPECTED count rounded to an integer (the
    report's calibration panels): for each group, ``group`` [G] (the rounded value), ``num_images`` [G],
    ``mean_expected`` [G], ``mean_true`` [G] and ``sem_true`` [G] (the standard error of the mean true count:
    std ddof 0 / sqrt(n); 0 for one image). Images with a NaN expected count are left out.

    A calibrated network puts these points on the diagonal: E[true | expected] = expected. Grouped by the TRUE
    count instead (``summary`` of :func:`count_calibration`), even a calibrated network looks under-predicting at
    high counts and over-predicting at 0 (regression to the mean: the images with the most true sources are the
    ones whose sources were luckiest); in a subset where most images hold 0 or 1 source (the faintest) every
    point then sits below the diagonal although the totals agree. Summed over groups, num_images x mean_true
    and num_images x mean_expected give ``total_true`` and ``total_expected`` (of the images with a finite
    expected count)."""
    true_count = np.asarray(true_count, np.float64).reshape(-1)
    expected = np.asarray(expected_count, np.float64).reshape(-1)
    if true_count.shape != expected.shape:
        raise ValueError(f"true_count {true_count.shape} and expected_count {expected.shape} differ in length")
    ok = np.isfinite(expected)
    groups, inverse = np.unique(np.rint(expected[ok]).astype(np.int64), return_inverse=True)
    n = np.bincount(inverse, minlength=groups.size).astype(np.float64)
    mean_true = _ratio(np.bincount(inverse, weights=true_count[ok], minlength=groups.size), n)
    var = _ratio(np.bincount(inverse, weights=(true_count[ok] - mean_true[inverse]) ** 2, minlength=groups.size), n)
    return dict(
        group=groups,
        num_images=n.astype(np.int64),
        mean_expected=_ratio(np.bincount(inverse, weights=expected[ok], minlength=groups.size), n),
        mean_true=mean_true,
        sem_true=np.sqrt(var / n) if n.size else np.zeros(0),
    )


def roc_curve(labels, scores):
    """ROC curve of ``scores`` (higher = more positive) for boolean ``labels``.

    Returns ``(fpr, tpr, thresholds)``: point j predicts positive when score >= thresholds[j];
    thresholds decrease from +inf (the (0, 0) point) through each distinct score, ending at (1, 1).
    A rate whose class is absent is NaN.
    """
    labels = np.asarray(labels, dtype=bool).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in length")
    if np.isnan(scores).any():
        raise ValueError("scores hold NaN")
    order = np.argsort(-scores, kind="stable")
    s, lab = scores[order], labels[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1] if s.size else np.empty(0, np.int64)
    tps = np.r_[0, np.cumsum(lab)[last]].astype(np.float64)
    fps = np.r_[0, last + 1 - tps[1:]].astype(np.float64)
    thresholds = np.r_[np.inf, s[last]]
    return _ratio(fps, fps[-1]), _ratio(tps, tps[-1]), thresholds


def auc(labels, scores) -> float:
    """Area under the ROC curve via the Mann-Whitney statistic: P(score_pos > score_neg) + 0.5
    P(tie), with tied scores given average ranks; NaN when only one class is present."""
    labels = np.asarray(labels, dtype=bool).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in length")
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(scores)
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def star_galaxy_roc(truth, pred, matches, mag_range=None) -> dict:
    """Star/galaxy ROC (galaxy = positive, score = ``prob_galaxy``) over matched true sources with true
    mag in the closed ``mag_range`` (all when None). ``matches``: :func:`match` output (the pair or
    ``truth_to_pred``) for these two catalogs.

    Returns a dict: ``fpr``, ``tpr``, ``thresholds`` (see :func:`roc_curve`), ``auc`` (NaN with one
    class), ``num_galaxies``, ``num_stars``, ``available`` (False, with empty curves and NaN AUC, when
    truth lacks ``is_galaxy`` or pred lacks ``prob_galaxy``).
    """
    t = _load(truth, "truth", None, required=("image", "flux"), finite=("flux",))
    p = _load(pred, "prediction", None, required=("image",), finite=())
    t2p = _truth_to_pred(matches, t["image"].size, p["image"].size)
    if "is_galaxy" not in t or "prob_galaxy" not in p:
        empty = np.empty(0)
        return dict(fpr=empty, tpr=empty, thresholds=empty, auc=np.nan, num_galaxies=0, num_stars=0, available=False)
    sel = (t2p >= 0) & _in_range(t["mag"], mag_range)
    labels = t["is_galaxy"][sel]
    scores = p["prob_galaxy"][t2p[sel]]
    fpr, tpr, thresholds = roc_curve(labels, scores)
    return dict(
        fpr=fpr,
        tpr=tpr,
        thresholds=thresholds,
        auc=auc(labels, scores),
        num_galaxies=int(labels.sum()),
        num_stars=int((~labels).sum()),
        available=True,
    )


def flux_coverage(
    truth,
    pred,
    matches,
    num_images: int,
    levels=DEFAULT_COVERAGE_LEVELS,
    mag_range=None,
    num_bootstrap: int = 200,
    seed: int = 0,
) -> dict:
    """Fraction of matched true fluxes inside the central credible interval of each nominal level.

    For each matched true source with true mag in the closed ``mag_range`` (all when None), the
    predicted posterior is LogNormal with mu = log(flux), sigma = log(flux_hi / flux) (nmgy); the true
    flux is inside the central ``level`` interval iff
    |log(true flux) - mu| <= sigma * Phi^-1((1 + level) / 2). Sources with a non-positive true flux or
    an invalid posterior (pred flux <= 0, flux_hi < flux) are left out. ``matches``: :func:`match` output.

    Returns a dict: ``levels`` [L], ``coverage`` [L] (NaN when ``count`` is 0), ``std`` [L] (1-sigma
    bootstrap over images), ``num_inside`` [L], ``count`` (sources used), ``mag_range``, ``available``
    (False, coverage NaN, when pred lacks ``flux_hi``).
    """
    num_images = _check_num_images(num_images)
    t = _load(truth, "truth", num_images)
    p = _load(pred, "prediction", num_images)
    t2p = _truth_to_pred(matches, t["image"].size, p["image"].size)
    levels = np.asarray(levels, dtype=np.float64).reshape(-1)
    if levels.size and ((levels <= 0).any() or (levels >= 1).any()):
        raise ValueError(f"levels must lie in (0, 1), got {levels}")
    available = "flux_hi" in p
    mu, sigma = _lognormal_params(p)
    rows = np.nonzero((t2p >= 0) & _in_range(t["mag"], mag_range) & (t["flux"] > 0))[0]
    rows = rows[np.isfinite(mu[t2p[rows]]) & np.isfinite(sigma[t2p[rows]])]
    dev = np.abs(np.log(t["flux"][rows]) - mu[t2p[rows]])
    half_width = sigma[t2p[rows]][:, None] * special.ndtri((1.0 + levels) / 2.0)[None, :]
    inside = (dev[:, None] <= half_width).astype(np.float64)  # [n, L]
    image = t["image"][rows]
    num = np.zeros((num_images, levels.size))
    np.add.at(num, image, inside)
    den = np.bincount(image, minlength=num_images).astype(np.float64)[:, None]
    per_image = np.concatenate([num, den], axis=1)
    reps = _bootstrap_sums(per_image, int(num_bootstrap), seed)
    count = float(den.sum())
    cover = _ratio(num.sum(axis=0), count)
    std = _std(_ratio(reps[:, :-1], reps[:, -1:]))
    if not available:
        cover, std = np.full(levels.size, np.nan), np.full(levels.size, np.nan)
    return dict(
        levels=levels,
        coverage=cover,
        std=std,
        num_inside=num.sum(axis=0).astype(np.int64),
        count=int(count),
        mag_range=None if mag_range is None else tuple(float(v) for v in mag_range),
        available=bool(available),
    )


# --------------------------------------------------------------------------------------------------


def to_jsonable(obj):
    """``obj`` (nested dicts / lists / tuples of numpy arrays and scalars) as plain Python objects that
    ``json.dumps(..., allow_nan=False)`` accepts: arrays -> lists, NaN and +-inf -> None."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
