"""The evaluation report of :mod:`npejax.evaluation.evaluate`, written here alone: metrics.json, CSV tables, figures
(PNG, matplotlib), the methods' detections and markdown.

Figures in the spirit of the paper: ``detection.png`` (Figures 4/5: precision, recall, star/galaxy
accuracy, flux MAPE by magnitude, one line per method, shaded 1-sigma bootstrap bands, mean over bins
in brackets), ``calibration.png`` (Figure 6, but the images grouped by their expected count:
:func:`calibration_points`), ``roc.png`` (Figure 7), ``coverage.png`` (Figure 8) and
``snr.png`` (Figure 9), and ``gallery.png`` (:func:`write_gallery`: test images with the true sources and
each method's detections). Every figure is written atomically (:func:`npejax.io.atomic_path`).

The report's files (:func:`write_report`, into a report directory): ``metrics.json`` (the results dict below,
JSON-ready: :func:`npejax.evaluation.metrics.to_jsonable`), the CSV tables, the figures, ``gallery.png``,
``predictions/NAME.fits`` (each method's detections) and ``report.md``; :func:`write_index` writes the index
``report.md`` of several reports (the experiment's priors).

CSV tables (one row per method and entry; non-finite values are empty cells):

- ``bins_*.csv``: ``method, metric, bin, lo, hi, value, std, count`` -- metric in
  :data:`npejax.schema.METRIC_LABELS`, bin ``k`` covers ``lo <= x < hi`` (r magnitude or SNR; ``lo`` of the
  first bin is -inf, an empty cell), ``value`` and ``std`` (1-sigma bootstrap) as in ``metrics.json``
  ``methods.NAME.bins_*.METRIC``, ``count`` the bin's denominator.
- ``calibration.csv``: ``method, subset, true_count, num_images, mean_expected, std_expected``.
- ``coverage.csv``: ``method, subset, level, coverage, std, count``.
- ``headline.csv``: ``method, metric, label, value, std, count`` (``metrics.json`` ``methods.NAME.headline``),
  and the ceiling's ``accuracy`` / ``accuracy_pooled`` as method ``ceiling`` (``count``: galaxies used).
- ``ceiling.csv``: ``bins, bin, lo, hi, value, std, galaxy_fraction, galaxy_error, star_error, num_galaxies,
  count`` -- ``bins`` is ``equal``, ``reference`` or ``snr``; ``metrics.json`` ``ceiling.bins_*``
  (:func:`npejax.evaluation.ceiling.binned_ceiling`).
- ``operating_points.csv`` (with the baseline): ``method, bin, r_upper, baseline_precision, baseline_recall,
  precision_at_threshold, recall_at_threshold, precision_at_baseline_recall, threshold_at_baseline_recall,
  recall_at_baseline_precision, threshold_at_baseline_precision`` -- each network at the baseline's operating point
  per reference bin (``metrics.json`` ``methods.NAME.at_baseline``; :func:`npejax.evaluation.evaluate.at_baseline`).

The tables (:func:`headline_table`, :func:`bins_table`, :func:`markdown`, :func:`index_markdown`) read a
results dict as :func:`npejax.evaluation.evaluate.evaluate` returns it: ``test_set`` (``num_images``,
``num_sources``, ``prior``, ``dropped_by_tile_rule``, ``bank``, ``synthetic_bank``, ``directory``),
``options`` (``prob_threshold``, ``num_bootstrap``), ``equal_cutoffs``, ``snr_cutoffs`` (or None),
``bin_centers`` and ``methods``: name -> the dict of
:func:`~npejax.evaluation.evaluate.evaluate_catalog` (``headline``, ``bins_equal``, ``bins_reference``,
``bins_snr``, ``calibration``, ``roc``, ``coverage``) and ``ceiling`` (None, or the r-band accuracy ceiling of
:func:`npejax.evaluation.ceiling.test_set_ceiling`: ``bins_equal``, ``bins_reference``, ``bins_snr``,
``headline``), drawn as a line in the accuracy panels and a row of the accuracy and headline tables. Values
are floats (NaN or None: shown as n/a). Headline entries written before the bin means existed (no ``bins``
key: their value pooled every source below the cut-off) are shown as pooled figures.
"""

from __future__ import annotations

import os

import numpy as np

from npejax import catalogs as catalog_lib
from npejax import io
from npejax.evaluation import metrics
from npejax.evaluation.headline import (
    BASELINE,
    CEILING,
    HEADLINE,
    HEADLINE_ROWS,
    LABELS,
    POOLED,
    PROB_THRESHOLD,
    SUBSET_LABELS,
    SUBSETS,
)
from npejax.nn.display import CMAP, asinh_stretch  # noqa: F401  (asinh_stretch: part of this module's API)
from npejax.schema import METRIC_LABELS

# paper's colors/markers: single-field blue circles, PSF-unaware red squares, PSF-aware orange triangles
STYLES = {
    "single": ("tab:blue", "o"),
    "unaware": ("tab:red", "s"),
    "aware": ("tab:orange", "^"),
    BASELINE: ("0.35", "x"),
}
_EXTRA = [("tab:green", "D"), ("tab:purple", "v"), ("tab:brown", "P"), ("tab:pink", "*")]
DPI = 110
GALLERY_FILE = "gallery.png"
# the gallery's own colours where a method's would vanish on a grey image (Source Extractor's grey): yellow x
GALLERY_STYLES = {BASELINE: ("yellow", "x")}
GALLERY_COLUMNS = 4
GALLERY_PANEL_INCHES = (3.2, 3.4)  # width, height of one gallery panel (the figure has no tight bounding box)


def _pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (figures are only written to files)."""
    import matplotlib  # deferred: the backend must be chosen before pyplot loads, and only when drawing

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: after matplotlib.use

    return plt


def _style(name: str, i: int):
    return STYLES.get(name, _EXTRA[i % len(_EXTRA)])


def _label(name: str) -> str:
    return LABELS.get(name, name)


def _legend(ax, **kwargs) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def _save(fig, path: str) -> None:
    """Writes ``fig`` to ``path`` atomically and closes it (also when writing fails)."""
    try:
        with io.atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=DPI, bbox_inches="tight")
    finally:
        _pyplot().close(fig)


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _binned_panels(
    results: dict, key: str, centers, panels, xlabel: str, path: str, title: str, logx: bool = False
) -> None:
    plt = _pyplot()
    cols = 2 if len(panels) == 4 else len(panels)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols, 3.7 * rows), squeeze=False)
    centers = np.asarray(centers, float)
    for ax, metric in zip(axes.ravel(), panels):
        for i, (name, m) in enumerate(results["methods"].items()):
            r = m.get(key, {}).get(metric)
            if r is None or not r.get("available", True):
                continue
            v, s = np.asarray(r["value"], float), np.asarray(r["std"], float)
            color, marker = _style(name, i)
            ls = "--" if name == BASELINE else "-"
            ax.plot(
                centers,
                v,
                ls,
                color=color,
                marker=marker,
                ms=5,
                label=f"{_label(name)} [{_fmt(r['mean'], 3 if metric != 'mape' else 1)}]",
            )
            ax.fill_between(centers, v - np.nan_to_num(s), v + np.nan_to_num(s), color=color, alpha=0.2, lw=0)
        ceiling = (results.get("ceiling") or {}).get(key) if metric == "accuracy" else None
        if ceiling:
            v, s = np.asarray(ceiling["value"], float), np.asarray(ceiling["std"], float)
            ax.plot(centers, v, ":", color="k", lw=1.6, label=f"{_label(CEILING)} [{_fmt(ceiling['mean'])}]")
            ax.fill_between(centers, v - np.nan_to_num(s), v + np.nan_to_num(s), color="k", alpha=0.12, lw=0)
        ax.set_xlabel(xlabel(metric) if callable(xlabel) else xlabel)
        ax.set_ylabel(METRIC_LABELS[metric])
        finite = centers[np.isfinite(centers)]
        if logx and finite.size and np.all(finite > 0):
            ax.set_xscale("log")
            ax.set_xlim(finite.min() / 1.3, finite.max() * 1.3)
        ax.grid(alpha=0.3)
        _legend(ax, fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def _subset_panels(results: dict, key: str, draw, xlabel: str, ylabel: str, title: str, path: str) -> None:
    """One panel per magnitude subset (all, brightest, faintest); ``draw(ax, name, i, entry)`` draws one
    method and returns the largest value it drew (for the diagonal)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12.6, 3.8))
    for ax, subset in zip(axes, SUBSETS):
        top = 1.0
        for i, (name, m) in enumerate(results["methods"].items()):
            entry = m[key].get(subset)
            if entry is not None and entry.get("available", True):
                top = max(top, draw(ax, name, i, entry))
        ax.plot([0, top], [0, top], "--", color="0.6", lw=1, label="ideal" if key == "calibration" else None)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(SUBSET_LABELS[subset], fontsize=9)
        ax.grid(alpha=0.3)
        _legend(ax, fontsize=7, loc="lower right" if key == "roc" else "best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def write_figures(out_dir: str, results: dict) -> list[str]:
    """Writes the report's PNG figures to ``out_dir``; returns their file names."""
    ts = results["test_set"]
    where = f"{ts['num_images']} test images, p_{ts['prior']}"
    names = []
    centers = results["bin_centers"]["equal"]
    _binned_panels(
        results,
        "bins_equal",
        centers,
        ("precision", "recall", "accuracy", "mape"),
        lambda metric: f"{'estimated' if metric == 'precision' else 'true'} r magnitude (bin median)",
        os.path.join(out_dir, "detection.png"),
        f"Detection, classification and flux by magnitude, equal-count bins ({where})",
    )
    names.append("detection.png")
    if results.get("snr_cutoffs") is not None:
        _binned_panels(
            results,
            "bins_snr",
            results["bin_centers"]["snr"],
            ("recall", "accuracy", "mape"),
            "SNR (bin median)",
            os.path.join(out_dir, "snr.png"),
            f"Performance by signal-to-noise ratio, equal-count bins ({where})",
            logx=True,
        )
        names.append("snr.png")

    def calibration(ax, name, i, c):
        p = calibration_points(c)
        x, y, e = (np.asarray(p[k], float) for k in ("mean_expected", "mean_true", "sem_true"))
        color, marker = _style(name, i)
        label = f"{_label(name)} ({c['total_expected']:.0f} expected / {c['total_true']:.0f} true)"
        ax.errorbar(x, y, yerr=e, color=color, marker=marker, ms=4, capsize=2, label=label)
        return max(np.nanmax(x) if x.size else 1, np.nanmax(y + e) if y.size else 1)

    def roc(ax, name, i, r):
        if np.isfinite(r["auc"]):
            ax.plot(r["fpr"], r["tpr"], color=_style(name, i)[0], label=f"{_label(name)} (AUC {r['auc']:.3f})")
        return 1.0

    def coverage(ax, name, i, c):
        lv, cv, sd = (np.asarray(c[k], float) for k in ("levels", "coverage", "std"))
        color, marker = _style(name, i)
        ax.plot(lv, cv, color=color, marker=marker, ms=4, label=f"{_label(name)} (n={c['count']})")
        ax.fill_between(lv, cv - np.nan_to_num(sd), cv + np.nan_to_num(sd), color=color, alpha=0.2, lw=0)
        return 1.0

    for key, draw, xlabel, ylabel, title in (
        (
            "calibration",
            calibration,
            "expected number in the image (sum of probabilities)",
            "mean true number",
            f"Detection calibration ({where}; images grouped by their rounded expected number; error bars: "
            "standard error of the mean)",
        ),
        (
            "roc",
            roc,
            "false positive rate (stars called galaxies)",
            "true positive rate (galaxies)",
            f"Star/galaxy ROC on matched sources ({where})",
        ),
        (
            "coverage",
            coverage,
            "nominal coverage of the central credible interval",
            "fraction of true fluxes inside",
            f"Flux credible-interval coverage on matched sources ({where})",
        ),
    ):
        _subset_panels(results, key, draw, xlabel, ylabel, title, os.path.join(out_dir, f"{key}.png"))
        names.append(f"{key}.png")
    return names


def calibration_points(entry: dict) -> dict:
    """The points of a calibration panel (``calibration.png``) for one method and subset, ``entry`` a
    :func:`npejax.evaluation.metrics.count_calibration` dict (from metrics.json too): the images grouped by their
    rounded expected count, x = the group's mean expected count, y = its mean true count ± the standard error
    (:func:`npejax.evaluation.metrics.calibration_by_expected`, whose doc says why not grouped by the true count)."""
    return metrics.calibration_by_expected(entry["true_count"], entry["expected_count"])


def gallery_pixels(num_panels: int) -> tuple[int, int]:
    """(width, height) in pixels of a gallery of ``num_panels`` panels (:data:`GALLERY_COLUMNS` a row)."""
    cols = min(GALLERY_COLUMNS, max(1, num_panels))
    rows = max(1, -(-num_panels // GALLERY_COLUMNS))
    return int(round(cols * GALLERY_PANEL_INCHES[0] * DPI)), int(round(rows * GALLERY_PANEL_INCHES[1] * DPI))


def write_gallery(path: str, panels: list[dict]) -> None:
    """A grid of test images (:data:`GALLERY_COLUMNS` a row, asinh stretch, grey), one panel per entry of
    ``panels``: ``image`` (2-D, nmgy), ``title``, ``truth`` (``x``, ``y``, ``mag`` of the true sources: open
    cyan circles, larger for brighter sources) and ``detections`` (method -> ``x``, ``y``: each method in
    its colour and marker, as in the other figures, but Source Extractor as a yellow x (:data:`GALLERY_STYLES`):
    hollow markers are drawn larger than the true-source circles' smallest and line markers (x, +) smaller and on
    top of them, so every method's detection of the same source stays visible); ``worst`` panels get a red frame.
    Pixel (i, j) covers [i, i+1) x [j, j+1) (catalog convention), so the image is drawn with that extent."""
    plt = _pyplot()
    n = len(panels)
    cols = min(GALLERY_COLUMNS, max(1, n))
    rows = max(1, -(-n // GALLERY_COLUMNS))
    fig, axes = plt.subplots(
        rows, cols, figsize=(cols * GALLERY_PANEL_INCHES[0], rows * GALLERY_PANEL_INCHES[1]), squeeze=False
    )
    handles = {}
    for ax, panel in zip(axes.ravel(), panels):
        image = np.asarray(panel["image"])
        h, w = image.shape
        shown, vmin, vmax = asinh_stretch(image)
        ax.imshow(shown, cmap=CMAP, origin="upper", vmin=vmin, vmax=vmax, extent=(0, w, h, 0), interpolation="nearest")
        truth = panel["truth"]
        mag = np.asarray(truth["mag"], float)
        size = np.clip(2.5 * (23.0 - np.nan_to_num(mag, nan=23.0)), 5.0, 22.0) ** 2
        handles["truth"] = ax.scatter(
            truth["x"],
            truth["y"],
            s=size,
            facecolors="none",
            edgecolors="cyan",
            linewidths=1.0,
            label="true source (size: brightness)",
            zorder=2,
        )
        for i, (name, det) in enumerate(panel["detections"].items()):
            color, marker = GALLERY_STYLES.get(name, _style(name, i))
            if marker in ("x", "+"):  # line markers: drawn small and on top, inside the hollow ones
                style = dict(c=color, s=26, linewidths=1.3, zorder=4)
            else:
                style = dict(facecolors="none", edgecolors=color, s=55, linewidths=1.0, zorder=3)
            handles[name] = ax.scatter(det["x"], det["y"], marker=marker, label=_label(name), **style)
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(panel["title"], fontsize=6.5)
        if panel.get("worst"):
            for spine in ax.spines.values():
                spine.set_edgecolor("tab:red")
                spine.set_linewidth(2.0)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.legend(
        list(handles.values()),
        [hd.get_label() for hd in handles.values()],
        loc="upper center",
        ncol=min(len(handles), 5),
        fontsize=7,
        frameon=False,
    )
    fig.subplots_adjust(
        left=0.02, right=0.98, bottom=0.02, top=1 - 0.45 / (rows * GALLERY_PANEL_INCHES[1]), wspace=0.05, hspace=0.25
    )
    try:
        with io.atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=DPI)
    finally:
        plt.close(fig)


def _value_std(h, digits: int) -> str | None:
    """'value ± std' of a headline entry (no ± without a finite std); None when it has no finite value."""
    if h is None or h.get("value") is None or not np.isfinite(h["value"]):
        return None
    std = h.get("std")
    return f"{h['value']:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None and np.isfinite(std) else "")


def _headline_cell(key: str, headline: dict, digits: int, binned: bool) -> str:
    """A headline cell: '[mean over bins ± std] pooled X' for a binned metric, 'value ± std' otherwise."""
    h = headline.get(key)
    if not binned:
        return _value_std(h, digits) or "n/a"
    pooled = headline.get(key + POOLED)
    if h is not None and "bins" not in h:  # metrics.json from before the bin means: the value was pooled
        h, pooled = None, h
    mean = _value_std(h, digits)
    pooled = _value_std(None if pooled is None else dict(pooled, std=None), digits)
    parts = ([f"[{mean}]"] if mean else []) + ([f"pooled {pooled}"] if pooled else [])
    return " ".join(parts) or "n/a"


def headline_table(results: dict, with_paper: bool = True) -> str:
    """Markdown table: one row per method, one column per headline metric. Binned metrics show the mean over
    the reference bins named in the column, bracketed, ± its 1-sigma bootstrap, then the pooled figure
    (every source below the paper's cut-off); the others show value ± 1-sigma bootstrap. With a ceiling
    (``results["ceiling"]``) a row gives the r-band accuracy ceiling, its ± the Monte Carlo error."""
    cols = [label for _, label, *_ in HEADLINE]
    lines = ["| method | " + " | ".join(cols) + " |", "| --- |" + " --- |" * len(cols)]
    for name, m in results["methods"].items():
        cells = [
            _headline_cell(key, m["headline"], 1 if key == "mape" else 3, metric is not None)
            for key, _, metric, *_ in HEADLINE
        ]
        lines.append(f"| {_label(name)} | " + " | ".join(cells) + " |")
    ceiling = (results.get("ceiling") or {}).get("headline")
    if ceiling:
        entries = {
            "accuracy": dict(value=ceiling["value"], std=ceiling["std"], bins=ceiling["bins"]),
            "accuracy" + POOLED: dict(value=ceiling["pooled"]),
        }
        cells = [_headline_cell(key, entries, 3, True) if key == "accuracy" else "-" for key, *_ in HEADLINE]
        label = f"{_label(CEILING)}, {ceiling['count']} galaxies in the reference bins"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if with_paper:
        lines.append("| paper, PSF-aware (p_many, 42k images) | " + " | ".join(p for *_, p in HEADLINE) + " |")
    return "\n".join(lines)


def bins_table(results: dict, key: str, cutoffs, metric: str, xname: str = "r") -> str:
    """Markdown table of one binned ``metric`` (results ``methods.NAME[key]``): one column per bin
    (headed by its range of ``xname``; ``cutoffs`` as in :func:`npejax.evaluation.metrics.assign_bins`)
    and the mean over bins; a last row with the true sources per bin, except for precision (binned by
    estimated magnitude)."""
    heads = _bin_heads(cutoffs)
    digits = 1 if metric == "mape" else 3
    lines = [f"| {xname} | " + " | ".join(heads) + " | mean |", "| --- |" + " --- |" * (len(heads) + 1)]
    for name, m in results["methods"].items():
        r = m.get(key, {}).get(metric)
        if r is None or not r.get("available", True):
            continue
        cells = [_fmt(v, digits) for v in r["value"]]
        lines.append(f"| {_label(name)} | " + " | ".join(cells) + f" | [{_fmt(r['mean'], digits)}] |")
    ceiling = (results.get("ceiling") or {}).get(key) if metric == "accuracy" else None
    if ceiling:
        cells = [_fmt(v) for v in ceiling["value"]]
        lines.append(f"| {_label(CEILING)} | " + " | ".join(cells) + f" | [{_fmt(ceiling['mean'])}] |")
    counts = None
    for m in results["methods"].values():
        if key in m:
            counts = m[key][metric]["count"]
            break
    if counts is not None and metric != "precision":
        lines.append("| sources (truth) | " + " | ".join(str(int(c)) for c in counts) + " | |")
    return "\n".join(lines)


def _bin_heads(cutoffs) -> list[str]:
    edges = [-np.inf, *np.asarray(cutoffs, float)]
    heads = []
    for k in range(len(cutoffs)):
        lo, hi = edges[k], edges[k + 1]
        heads.append(
            f"< {hi:.2f}" if not np.isfinite(lo) else f"{lo:.2f}–{hi:.2f}" if np.isfinite(hi) else f"> {lo:.1f}"
        )
    return heads


def ceiling_note(results: dict, key: str, cutoffs, xname: str = "r") -> str:
    """The sentence under an accuracy table (results ``methods.NAME[key]``) where a method's accuracy is above
    the r-band ceiling in a bin ('' where none is): the two are over different sources. A method's accuracy
    counts the true sources it detected (matched), which in a bin of low recall are its brighter, easier ones; the
    ceiling counts every true galaxy of the bin, at the bin's galaxy fraction. The sentence names each such bin
    with the accuracy, the ceiling and the method's recall there."""
    ceiling = (results.get("ceiling") or {}).get(key)
    if not ceiling:
        return ""
    heads = _bin_heads(cutoffs)
    top = np.asarray(ceiling["value"], float)
    found = []
    for name, m in results["methods"].items():
        acc = m.get(key, {}).get("accuracy")
        if acc is None or not acc.get("available", True):
            continue
        value = np.asarray(acc["value"], float)
        recall = m[key].get("recall", {}).get("value")
        for k in np.nonzero(np.isfinite(value) & np.isfinite(top) & (value > top))[0]:
            rec = f", recall {_fmt(recall[k])}" if recall is not None else ""
            found.append(f"{_label(name)} at {xname} {heads[k]} ({_fmt(value[k])} against {_fmt(top[k])}{rec})")
    if not found:
        return ""
    return (
        "Above the ceiling: "
        + "; ".join(found)
        + ". This is no contradiction: a method's accuracy counts only the true sources it detected (matched), "
        "and where recall is low those are the bin's brighter, easier ones, while the ceiling counts every true "
        "galaxy of the bin at the bin's galaxy fraction. Compare the two where recall is near 1; in the other "
        "bins the ceiling bounds the accuracy a method would reach if it detected every source."
    )


def markdown(results: dict, gallery: bool = False) -> str:
    """The report's markdown (figures referenced by relative path; the gallery section when ``gallery``)."""
    ts = results["test_set"]
    bank = (
        f"the embedded bank `{ts['bank']}` of **SYNTHETIC** SDSS-like fields"
        if ts["synthetic_bank"]
        else f"bank {ts['bank']}"
    )
    methods = ", ".join(_label(n) for n in results["methods"])
    out = [
        f"# npejax evaluation: p_{ts['prior']} test set",
        "",
        f"{ts['num_images']} test images of 80 x 80 pixels ({ts['num_sources']} true sources; "
        f"{ts['dropped_by_tile_rule']} of them share a tile with a brighter source and cannot be represented by "
        f"the one-source-per-tile posterior) drawn from the "
        f"{'many-field' if ts['prior'] == 'many' else 'single-field'} prior with {bank}. Methods: {methods}. "
        f"Test set: `{ts['directory']}`.",
        "",
        "Definitions (SPEC.md, paper Section 7): true and predicted sources are matched per image with the "
        "Jonker-Volgenant algorithm (minimum total distance) and a pair counts within 1 pixel; a prediction is a "
        f"detection when prob_source > {results['options']['prob_threshold']} (Source Extractor: every "
        "detection). Precision is binned by estimated magnitude, recall, star/galaxy accuracy (galaxy if "
        "prob_galaxy > 0.5) and flux MAPE (mean |true - predicted| / true x 100, posterior median flux) by true "
        f"magnitude. ± and shaded bands: 1-sigma bootstrap over images ({results['options']['num_bootstrap']} "
        "resamples). Bracketed values: mean over bins.",
        "",
        "## Headline",
        "",
        headline_table(results),
        "",
        "The paper reads its headline numbers off per-bin curves, so bracketed values compare like with like: "
        "the mean over the paper's reference bins (equal-count r bins with upper edges "
        + ", ".join(f"{c:g}" for c in metrics.REFERENCE_CUTOFFS)
        + ") up to the cut-off named in the column; "
        "'pooled' counts every source below the paper's cut-off together, so each bin weighs as much as the "
        "sources it counts (for accuracy and MAPE the matched ones: bins with low recall weigh less). "
        "The paper's numbers come from full-size networks trained on 210k images for 50 epochs; compare the "
        "ordering of the methods, not the values, when the networks here are small.",
        "",
        *(_ceiling_paragraph(results["ceiling"]) if results.get("ceiling") else []),
        "## By magnitude",
        "",
        "![detection](detection.png)",
        "",
    ]
    for key, cutoffs, title in (
        ("bins_equal", results["equal_cutoffs"], "equal-count bins"),
        ("bins_reference", metrics.REFERENCE_CUTOFFS, "the paper's reference cut-offs"),
    ):
        out += [f"### In {title}", ""]
        for metric in ("precision", "recall", "accuracy", "mape"):
            out += [
                f"**{METRIC_LABELS[metric]}**" + (" (by estimated magnitude)" if metric == "precision" else ""),
                "",
                bins_table(results, key, cutoffs, metric),
                "",
            ]
            note = ceiling_note(results, key, cutoffs) if metric == "accuracy" else ""
            out += [note, ""] if note else []
    if any("at_baseline" in m for m in results["methods"].values()):
        out += [
            f"### At {_label(BASELINE)}'s operating point",
            "",
            "A detection threshold is a choice: at prob_source > 0.5 a network may trade precision for recall "
            "differently from Source Extractor. Per reference bin, each network's precision where its recall "
            "first reaches the baseline's (the best over thresholds 0.01-0.99, each bin its own threshold, in "
            "brackets), and its recall where its precision reaches the baseline's; a network that is better at "
            "the baseline's own operating point beats it on both counts, whatever the threshold. Blank: no "
            "threshold reaches it (`operating_points.csv`).",
            "",
            _at_baseline_table(results),
            "",
        ]
    out += [
        "## Calibration",
        "",
        "Expected number of sources per image (sum over tiles of prob_source, times the posterior "
        "probability that the flux lies in the magnitude range) and the true number. The panels group the images "
        "by their expected number (rounded) and plot the group's mean true number against its mean expected "
        "number: a calibrated network is on the diagonal, and the points, weighted by their images, add up to the "
        "table's totals. (Grouped by the true number instead, as `calibration.csv` is, "
        "even a calibrated network would look under-predicting where most images hold 0 or 1 source, as in the "
        "faintest subset: the images with the most true sources are the ones whose sources were luckiest.)",
        "",
        "![calibration](calibration.png)",
        "",
        _calibration_table(results),
        "",
        "![roc](roc.png)",
        "",
        _auc_table(results),
        "",
        "![coverage](coverage.png)",
        "",
        _coverage_table(results),
        "",
    ]
    if results.get("snr_cutoffs") is not None:
        out += [
            "## By signal-to-noise ratio (Appendix A)",
            "",
            "SNR = C / sqrt(C + B) over the footprint (pixels where the noiseless source exceeds 0.1 of the "
            "sky noise), C and B the source and sky electrons there (`npejax.evaluation.snr`). Precision is omitted: "
            "unmatched detections have no SNR.",
            "",
            "![snr](snr.png)",
            "",
        ]
        for metric in ("recall", "accuracy", "mape"):
            out += [
                f"**{METRIC_LABELS[metric]}**",
                "",
                bins_table(results, "bins_snr", results["snr_cutoffs"], metric, "SNR"),
                "",
            ]
            note = ceiling_note(results, "bins_snr", results["snr_cutoffs"], "SNR") if metric == "accuracy" else ""
            out += [note, ""] if note else []
    if gallery and results.get("gallery"):
        g = results["gallery"]
        out += [
            "## Gallery",
            "",
            f"{len(g['images'])} test images (asinh stretch): true sources as cyan circles (larger for brighter "
            "sources), each network's detections as hollow markers in its colour, Source Extractor's as yellow "
            "crosses drawn on top (legend above the panels). "
            + (
                f"The first {g['worst']} (red frames) are the worst-scored: the most true sources brighter "
                f"than r = {g['bright_mag']:g} missed, summed over the methods; the others are spread over the "
                "test set. "
                if g["worst"]
                else ""
            )
            + f"Images: {', '.join(str(i) for i in g['images'])}.",
            "",
            f"![gallery]({GALLERY_FILE})",
            "",
        ]
    out += [
        "## Files",
        "",
        "`metrics.json` (everything above), `headline.csv`, `bins_equal.csv`, `bins_reference.csv`, "
        "`bins_snr.csv`, `calibration.csv`, `coverage.csv`, "
        + ("`ceiling.csv`, " if results.get("ceiling") else "")
        + ("`operating_points.csv`, " if any("at_baseline" in m for m in results["methods"].values()) else "")
        + "`predictions/*.fits` (detections)"
        + (f", `{GALLERY_FILE}`" if gallery and results.get("gallery") else "")
        + ".",
        "",
    ]
    return "\n".join(out)


def _at_baseline_table(results: dict) -> str:
    """Markdown table: per reference bin, the baseline's precision and recall and each network's at its operating
    point (:func:`npejax.evaluation.evaluate.at_baseline`)."""
    cut = metrics.REFERENCE_CUTOFFS
    ref = results["methods"][BASELINE]["bins_reference"]
    lines = [
        "| r < | "
        + f"{_label(BASELINE)} precision | {_label(BASELINE)} recall | "
        + " | ".join(
            f"{_label(n)} precision at 0.5 | {_label(n)} precision at the baseline's recall | "
            f"{_label(n)} recall at the baseline's precision"
            for n, m in results["methods"].items()
            if "at_baseline" in m
        )
        + " |"
    ]
    nets = [(n, m["at_baseline"]) for n, m in results["methods"].items() if "at_baseline" in m]
    lines.append("| --- " * (3 + 3 * len(nets)) + "|")
    for k, c in enumerate(cut):
        cells = [f"{c:g}", _fmt(ref["precision"]["value"][k]), _fmt(ref["recall"]["value"][k])]
        for _, a in nets:
            cells += [
                _fmt(a["precision_at_threshold"][k]),
                _with_threshold(a["precision_at_ref_recall"][k], a["threshold_at_ref_recall"][k]),
                _with_threshold(a["recall_at_ref_precision"][k], a["threshold_at_ref_precision"][k]),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _with_threshold(value, threshold) -> str:
    if value is None or not np.isfinite(value):
        return ""
    return f"{_fmt(value)} ({threshold:.2f})"


def _at_baseline_rows(results: dict) -> list[dict]:
    rows = []
    for name, m in results["methods"].items():
        a = m.get("at_baseline")
        if a is None:
            continue
        for k, c in enumerate(metrics.REFERENCE_CUTOFFS):
            rows.append(
                dict(
                    method=name,
                    bin=k,
                    r_upper=c,
                    baseline_precision=float(a["ref_precision"][k]),
                    baseline_recall=float(a["ref_recall"][k]),
                    precision_at_threshold=float(a["precision_at_threshold"][k]),
                    recall_at_threshold=float(a["recall_at_threshold"][k]),
                    precision_at_baseline_recall=float(a["precision_at_ref_recall"][k]),
                    threshold_at_baseline_recall=float(a["threshold_at_ref_recall"][k]),
                    recall_at_baseline_precision=float(a["recall_at_ref_precision"][k]),
                    threshold_at_baseline_precision=float(a["threshold_at_ref_precision"][k]),
                )
            )
    return rows


def _ceiling_paragraph(ceiling: dict) -> list[str]:
    """The report's explanation of the r-band ceiling row (``npejax.evaluation.ceiling``)."""
    opts = ceiling.get("options") or {}
    return [
        f"**{_label(CEILING)}**: the star/galaxy accuracy of an ideal test that knows each galaxy's position, "
        "flux and shape and compares it with its best-fitting star under the image's pixel noise (Bayes-optimal "
        "at the bin's galaxy fraction; `npejax.evaluation.ceiling`), from this test set's own galaxies "
        f"({opts.get('num_galaxies', 'n/a')} of them over all binnings, at most {opts.get('max_per_bin', 'n/a')} "
        "per bin of each; ± its "
        "Monte Carlo error). A network that sees only r-band pixels cannot beat it on the same sources, up to "
        "that error and the approximations stated in `npejax.evaluation.ceiling`; but a network's accuracy counts "
        "only the sources it detected, the easier ones where recall is low, so in the faintest bins it can "
        "exceed this row (the accuracy tables say where). It is the dotted line in the accuracy panels "
        "and a row of the accuracy tables. The gap between a network and this row is what better networks can "
        "gain; where this row is below the paper's > 0.96, that figure is not reachable "
        "from r-band pixels.",
        "",
    ]


def _calibration_table(results: dict) -> str:
    lines = [
        "| method | " + " | ".join(f"{SUBSET_LABELS[s]}: expected / true" for s in SUBSETS) + " |",
        "| --- |" + " --- |" * len(SUBSETS),
    ]
    for name, m in results["methods"].items():
        if not m["calibration"]:
            continue
        cells = []
        for s in SUBSETS:
            c = m["calibration"][s]
            cells.append(f"{c['total_expected']:.0f} / {c['total_true']:.0f}")
        lines.append(f"| {_label(name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _auc_table(results: dict) -> str:
    lines = [
        "| star/galaxy AUC | " + " | ".join(SUBSET_LABELS[s] for s in SUBSETS) + " |",
        "| --- |" + " --- |" * len(SUBSETS),
    ]
    for name, m in results["methods"].items():
        if not any(r.get("available", True) and np.isfinite(r["auc"]) for r in m["roc"].values()):
            continue
        lines.append(f"| {_label(name)} | " + " | ".join(_fmt(m["roc"][s]["auc"]) for s in SUBSETS) + " |")
    return "\n".join(lines)


def _coverage_table(results: dict) -> str:
    levels = (0.5, 0.68, 0.8, 0.9, 0.95)
    lines = [
        "| flux coverage | subset | " + " | ".join(f"{int(round(100 * lev))}%" for lev in levels) + " |",
        "| --- | --- |" + " --- |" * len(levels),
    ]
    for name, m in results["methods"].items():
        for s in SUBSETS:
            c = m["coverage"].get(s)
            if c is None or not c.get("available", True):
                continue
            lv = np.asarray(c["levels"], float)
            cells = []
            for lev in levels:
                i = int(np.argmin(np.abs(lv - lev)))
                cells.append(_fmt(c["coverage"][i]) if abs(lv[i] - lev) < 0.026 else "")
            lines.append(f"| {_label(name)} | {SUBSET_LABELS[s]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def index_markdown(reports: dict, results: dict, title: str, elapsed_s: float | None = None) -> str:
    """Top-level report of an experiment: each prior's headline table with a link to its report."""
    out = [f"# {title}", ""]
    if elapsed_s is not None:
        out += [f"Run time: {elapsed_s / 60:.1f} min.", ""]
    for prior, directory in reports.items():
        r = results[prior]
        out += [
            f"## Test set p_{prior} ({r['test_set']['num_images']} images) — [full report]({directory}/report.md)",
            "",
            headline_table(r),
            "",
            f"![detection]({directory}/detection.png)",
            "",
        ]
    return "\n".join(out)


# --- the report's files -------------------------------------------------------------------------------


def _bin_rows(results: dict, key: str, cutoffs) -> list[dict]:
    """Rows of ``bins_*.csv`` (module doc) for the binned metrics ``methods.NAME[key]``."""
    rows = []
    edges = [-np.inf, *np.asarray(cutoffs, float)]
    for name, m in results["methods"].items():
        if key not in m:
            continue
        for metric in METRIC_LABELS:
            r = m[key][metric]
            for k in range(len(cutoffs)):
                rows.append(
                    dict(
                        method=name,
                        metric=metric,
                        bin=k,
                        lo=float(edges[k]),
                        hi=float(edges[k + 1]),
                        value=float(r["value"][k]),
                        std=float(r["std"][k]),
                        count=int(r["count"][k]),
                    )
                )
    return rows


def _ceiling_rows(results: dict) -> list[dict]:
    """Rows of ``ceiling.csv`` (module doc)."""
    rows = []
    ceil = results["ceiling"]
    for key, cutoffs in (
        ("bins_equal", results["equal_cutoffs"]),
        ("bins_reference", metrics.REFERENCE_CUTOFFS),
        ("bins_snr", results.get("snr_cutoffs")),
    ):
        c = ceil.get(key)
        if not c or cutoffs is None:
            continue
        edges = [-np.inf, *np.asarray(cutoffs, float)]
        for k in range(len(cutoffs)):
            rows.append(
                dict(
                    bins=key[5:],
                    bin=k,
                    lo=float(edges[k]),
                    hi=float(edges[k + 1]),
                    **{
                        f: float(np.asarray(c[f], float)[k])
                        for f in ("value", "std", "galaxy_fraction", "galaxy_error", "star_error")
                    },
                    num_galaxies=int(c["num_galaxies"][k]),
                    count=int(c["count"][k]),
                )
            )
    return rows


def write_report(out_dir: str, results: dict, preds: dict | None = None, gallery_panels: list | None = None) -> None:
    """Writes the report of ``results`` (:func:`npejax.evaluation.evaluate.evaluate`) to ``out_dir``: metrics.json, the
    CSV tables (module doc), the figures (:func:`write_figures`; the gallery when ``gallery_panels`` are given:
    :func:`write_gallery`), ``predictions/NAME.fits`` (each catalog of ``preds``, its detections: prob_source >
    :data:`~npejax.evaluation.headline.PROB_THRESHOLD`) and report.md, every file atomically."""
    os.makedirs(out_dir, exist_ok=True)
    io.write_json(os.path.join(out_dir, "metrics.json"), metrics.to_jsonable(results), indent=1, allow_nan=False)
    io.write_csv(os.path.join(out_dir, "bins_equal.csv"), _bin_rows(results, "bins_equal", results["equal_cutoffs"]))
    io.write_csv(
        os.path.join(out_dir, "bins_reference.csv"), _bin_rows(results, "bins_reference", metrics.REFERENCE_CUTOFFS)
    )
    if results["snr_cutoffs"] is not None:
        io.write_csv(os.path.join(out_dir, "bins_snr.csv"), _bin_rows(results, "bins_snr", results["snr_cutoffs"]))
    cal, cov, head = [], [], []
    for name, m in results["methods"].items():
        for subset, c in m["calibration"].items():
            s = c["summary"]
            for i in range(len(s["true_count"])):
                cal.append(
                    dict(
                        method=name,
                        subset=subset,
                        true_count=int(s["true_count"][i]),
                        num_images=int(s["num_images"][i]),
                        mean_expected=float(s["mean_expected"][i]),
                        std_expected=float(s["std_expected"][i]),
                    )
                )
        for subset, c in m["coverage"].items():
            for i, level in enumerate(c["levels"]):
                cov.append(
                    dict(
                        method=name,
                        subset=subset,
                        level=float(level),
                        coverage=float(c["coverage"][i]),
                        std=float(c["std"][i]),
                        count=int(c["count"]),
                    )
                )
        for key, label in HEADLINE_ROWS:
            h = m["headline"].get(key)
            if h is not None:
                head.append(
                    dict(method=name, metric=key, label=label, value=h["value"], std=h["std"], count=h["count"])
                )
    ceil = results.get("ceiling")
    if ceil and ceil.get("headline"):
        h = ceil["headline"]
        for key, value, std in (
            ("accuracy", h["value"], h["std"]),
            ("accuracy" + POOLED, h["pooled"], h["pooled_std"]),
        ):
            head.append(
                dict(method=CEILING, metric=key, label=dict(HEADLINE_ROWS)[key], value=value, std=std, count=h["count"])
            )
    io.write_csv(os.path.join(out_dir, "calibration.csv"), cal)
    io.write_csv(os.path.join(out_dir, "coverage.csv"), cov)
    io.write_csv(os.path.join(out_dir, "headline.csv"), head)
    if ceil:
        io.write_csv(os.path.join(out_dir, "ceiling.csv"), _ceiling_rows(results))
    at_baseline = _at_baseline_rows(results)
    if at_baseline:
        io.write_csv(os.path.join(out_dir, "operating_points.csv"), at_baseline)
    if preds:
        os.makedirs(os.path.join(out_dir, "predictions"), exist_ok=True)
        for name, p in preds.items():
            if "prob_source" in metrics.colnames(p):
                p = p[np.asarray(p["prob_source"]) > PROB_THRESHOLD]
            catalog_lib.write_table(p, os.path.join(out_dir, "predictions", f"{name}.fits"))
    write_figures(out_dir, results)
    if gallery_panels:
        write_gallery(os.path.join(out_dir, GALLERY_FILE), gallery_panels)
    io.atomic_write(os.path.join(out_dir, "report.md"), markdown(results, gallery=bool(gallery_panels)))


def write_index(out_dir: str, reports: dict, results: dict, title: str, elapsed_s: float | None = None) -> None:
    """``out_dir/report.md``: the headline table of each report (prior -> directory) with links."""
    io.atomic_write(os.path.join(out_dir, "report.md"), index_markdown(reports, results, title, elapsed_s))
