r"""The paper's evaluation (Section 7, Appendix A) of trained networks and a Source Extractor baseline.

The library behind ``python -m npejax.evaluate`` (:mod:`npejax.evaluate`, the command and its flags)::

    python -m npejax.evaluate --workdir single=W1 --workdir unaware=W2 --workdir aware=W3 \
        --prior many|one --num-images N --out REPORT_DIR        # simulate N test images (cached)
    python -m npejax.evaluate --workdir aware=W3 --test-dir DATASET --out REPORT_DIR   # a fixed test set

Each network (best checkpoint) catalogs every test image; the baseline is Source Extractor (``sep``)
on the same sky-subtracted images with the known background (``npejax.evaluation.baseline``). Metrics follow
SPEC.md "Evaluation" (definitions in :mod:`npejax.evaluation.metrics`): Jonker-Volgenant matching within 1 pixel;
precision by estimated magnitude, recall, star/galaxy accuracy and flux MAPE by true magnitude, in
equal-count bins and in the reference cut-offs, with 1-sigma bootstrap bands over images and the mean
over bins; detection calibration; star/galaxy ROC and AUC; flux credible-interval coverage; and recall,
accuracy and MAPE by SNR (Appendix A). The headline metrics, detection threshold and method names are
in :mod:`npejax.evaluation.headline`.

Writes to ``REPORT_DIR``: ``metrics.json``, CSV tables (``bins_equal.csv``, ``bins_reference.csv``,
``bins_snr.csv``, ``calibration.csv``, ``coverage.csv``, ``headline.csv``), PNG figures
(``detection.png``, ``calibration.png``, ``roc.png``, ``coverage.png``, ``snr.png``; :mod:`npejax.evaluation.report`),
``predictions/NAME.fits`` (detections, prob_source > 0.5) and ``report.md``. All files are written
atomically (:mod:`npejax.io`). The test set is ``--test-dir`` (simulated there with ``--num-images`` if absent;
resumable), by default ``REPORT_DIR/test-PRIOR``.

CSV tables (one row per method and entry; non-finite values are empty cells):

- ``bins_*.csv``: ``method, metric, bin, lo, hi, value, std, count`` -- metric in
  :data:`npejax.schema.METRIC_LABELS`, bin ``k`` covers ``lo <= x < hi`` (r magnitude or SNR; ``lo`` of the
  first bin is -inf, an empty cell), ``value`` and ``std`` (1-sigma bootstrap) as in ``metrics.json``
  ``methods.NAME.bins_*.METRIC``, ``count`` the bin's denominator.
- ``calibration.csv``: ``method, subset, true_count, num_images, mean_expected, std_expected``.
- ``coverage.csv``: ``method, subset, level, coverage, std, count``.
- ``headline.csv``: ``method, metric, label, value, std, count`` (``metrics.json`` ``methods.NAME.headline``).

A catalog given with ``--catalog NAME=FILE`` is evaluated as it is: precision, recall, accuracy, MAPE,
ROC and coverage need only its detections, but the detection calibration sums ``prob_source`` over
every row, so write it with ``npejax.predict --min-prob 0`` (every tile) for that figure to mean what
it says; a catalog without ``prob_source`` (another pipeline's) gets no calibration.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import ml_collections
import numpy as np

from npejax import catalogs as catalog_lib
from npejax import datasets as data_lib
from npejax import io
from npejax.evaluation import baseline as baseline_lib
from npejax.evaluation import metrics, report
from npejax.evaluation import snr as snr_lib
from npejax.evaluation.headline import BASELINE, HEADLINE, PROB_THRESHOLD, SUBSETS
from npejax.nn.posterior import tiles_to_sources
from npejax.nn.predictor import Predictor, load_config
from npejax.schema import FIELD_PRIORS, METRIC_LABELS
from npejax.sim import fields as fields_lib
from npejax.sim import pipeline

__all__ = ["BASELINE", "HEADLINE", "PROB_THRESHOLD", "SUBSETS", "EvaluationError", "TestSet", "load_test_set",
           "network_catalog", "baseline_catalog", "truth_snr", "evaluate_catalog", "evaluate", "write_report",
           "write_index"]


class EvaluationError(ValueError):
    """Inconsistent evaluation inputs (test set, catalogs, options)."""


@dataclasses.dataclass
class TestSet:
    """Test images and their truth: arrays [N, H, W] (nmgy), ``truth`` one row per true source."""

    directory: str
    images: np.ndarray
    background: np.ndarray
    psf_params: np.ndarray
    field_id: np.ndarray
    arrays: dict  # every dataset key (padded catalog arrays included), for the SNR
    truth: object  # astropy Table
    manifest: dict
    num_dropped: int

    @property
    def num_images(self) -> int:
        return len(self.images)


# --- test set ----------------------------------------------------------------------------------------

def load_test_set(test_dir: str, num_images: int | None = None, prior: str | None = None, sim_config=None,
                  num_workers: int = 2, progress: bool = True) -> TestSet:
    """Loads the dataset in ``test_dir``, first simulating ``num_images`` test images there (prior
    ``prior``, settings of ``sim_config``) when it is absent or incomplete."""
    manifest_path = os.path.join(test_dir, "manifest.json")
    if num_images is not None:
        if sim_config is None:
            raise EvaluationError("simulating a test set needs a config (that of the first network by default)")
        if prior not in FIELD_PRIORS:
            raise EvaluationError(f"--prior must be 'many' or 'one', got {prior!r}")
        config = sim_config.copy_and_resolve_references()
        with config.unlocked():
            config.fields.prior = prior
        spec = pipeline.SimulationSpec.from_config(config, seed=data_lib.split_seed(int(config.seed), "test"))
        data_lib.write_dataset(spec, test_dir, int(num_images), "test", config=config, num_workers=num_workers,
                               shard_size=int(config.data.shard_size), progress=progress)
    elif not os.path.isfile(manifest_path):
        raise EvaluationError(f"test set {test_dir} has no manifest.json: give --num-images to simulate one, "
                              "or a directory written by python -m npejax.simulate")
    dataset = data_lib.load(test_dir)
    if num_images is not None and len(dataset) != int(num_images):
        raise EvaluationError(f"test set {test_dir} holds {len(dataset)} images, not --num-images={num_images}")
    arrays = dataset[np.arange(len(dataset))]
    truth, _, dropped = catalog_lib.dataset_truth_table(dataset)
    with open(manifest_path) as f:
        manifest = json.load(f)
    return TestSet(directory=os.path.abspath(test_dir), images=arrays["images"], background=arrays["background"],
                   psf_params=arrays["psf_params"], field_id=arrays["field_id"], arrays=arrays, truth=truth,
                   manifest=manifest, num_dropped=int(dropped))


# --- catalogs ----------------------------------------------------------------------------------------

def network_catalog(workdir: str, test: TestSet, batch_size: int = 256):
    """Every tile of every test image as a prediction table (prob_source >= 0), from the best checkpoint."""
    predictor = Predictor.from_workdir(workdir, "best")
    tiles = predictor.predict_tiles(test.images, test.background, test.psf_params, batch_size)
    return catalog_lib.prediction_table(tiles_to_sources(tiles, predictor.tile_size, min_prob=-1.0))


def baseline_catalog(test: TestSet, bank=None):
    """Source Extractor (sep) catalog of the test images with the known background and noise."""
    bank = bank if bank is not None else fields_lib.load_bank(_bank_path(test.manifest))
    return baseline_lib.sep_catalog(test.images, test.background, field_id=test.field_id, bank=bank)


def _bank_path(manifest: dict) -> str:
    config = manifest.get("config") or {}
    return (config.get("fields") or {}).get("bank", "synthetic")


def truth_snr(test: TestSet) -> np.ndarray | None:
    """SNR (Appendix A) of each truth row, drawn with the test set's own bank and render settings (its
    manifest's config); None when the manifest holds no usable config (no SNR metrics then)."""
    try:
        spec = pipeline.SimulationSpec.from_config(ml_collections.ConfigDict(test.manifest["config"]))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    per_source = np.asarray(snr_lib.source_snr(test.arrays, spec))  # [N, max_sources], NaN for padding
    values = per_source[np.asarray(test.truth["image"]), np.asarray(test.truth["source"])]
    return values.astype(np.float64)


# --- metrics -----------------------------------------------------------------------------------------

def _single(truth, pred, num_images, metric, cutoff, num_bootstrap, seed):
    m = metrics.binned_metrics(truth, pred, num_images, cutoffs=(cutoff,), num_bootstrap=num_bootstrap,
                               seed=seed, prob_threshold=PROB_THRESHOLD)[metric]
    return dict(value=float(m["value"][0]), std=float(m["std"][0]), count=int(m["count"][0]))


def evaluate_catalog(truth, pred, num_images: int, equal_cutoffs, snr=None, snr_cutoffs=None,
                     num_bootstrap: int = 200, seed: int = 0) -> dict:
    """All metrics of one method's catalog against the truth (see module doc); JSON-ready after
    :func:`npejax.evaluation.metrics.to_jsonable`. ``pred`` holds every tile (for calibration) or only detections."""
    kw = dict(num_bootstrap=num_bootstrap, seed=seed, prob_threshold=PROB_THRESHOLD)
    out = dict(
        bins_equal=metrics.binned_metrics(truth, pred, num_images, cutoffs=equal_cutoffs, **kw),
        bins_reference=metrics.binned_metrics(truth, pred, num_images, cutoffs=metrics.REFERENCE_CUTOFFS, **kw),
    )
    if snr is not None:
        out["bins_snr"] = metrics.binned_metrics(truth, pred, num_images, cutoffs=snr_cutoffs, truth_strata=snr, **kw)
    headline = {}
    for key, _, metric, cutoff, _ in HEADLINE:
        if metric is not None:
            headline[key] = _single(truth, pred, num_images, metric, cutoff, num_bootstrap, seed)
    matches = metrics.match(truth, pred, num_images, prob_threshold=PROB_THRESHOLD)
    has_probs = "prob_source" in metrics.colnames(pred)
    out["calibration"], out["roc"], out["coverage"] = {}, {}, {}
    for subset, mag_range in SUBSETS.items():
        if has_probs:
            out["calibration"][subset] = metrics.count_calibration(truth, pred, num_images, mag_range=mag_range)
        out["roc"][subset] = metrics.star_galaxy_roc(truth, pred, matches, mag_range=mag_range)
        out["coverage"][subset] = metrics.flux_coverage(truth, pred, matches, num_images, mag_range=mag_range,
                                                        num_bootstrap=num_bootstrap, seed=seed)
    cov = out["coverage"]["all"]
    i95 = int(np.argmin(np.abs(np.asarray(cov["levels"]) - 0.95)))
    headline["coverage95"] = dict(value=float(cov["coverage"][i95]), std=float(cov["std"][i95]),
                                  count=int(cov["count"]))
    headline["auc"] = dict(value=float(out["roc"]["all"]["auc"]), std=float("nan"),
                           count=int(out["roc"]["all"]["num_galaxies"] + out["roc"]["all"]["num_stars"]))
    out["headline"] = headline
    return out


def evaluate(workdirs: dict, out_dir: str, prior: str = "many", num_images: int | None = None,
             test_dir: str | None = None, catalogs: dict | None = None, baseline: bool = True,
             num_bootstrap: int = 200, num_bins: int = 10, seed: int = 0, sim_config=None,
             num_workers: int = 2, snr: bool = True, progress: bool = True) -> dict:
    """Evaluates networks (``workdirs``: name -> training directory) and prediction ``catalogs`` (name ->
    table or file) on a test set, writes the report to ``out_dir`` and returns the metrics dict."""
    t0 = time.time()
    workdirs, catalogs = dict(workdirs or {}), dict(catalogs or {})
    names = list(workdirs) + list(catalogs)
    if not names and not baseline:
        raise EvaluationError("nothing to evaluate: give at least one --workdir NAME=DIR or --catalog NAME=FILE")
    if len(set(names)) != len(names) or BASELINE in names:
        raise EvaluationError(f"method names must be unique and not {BASELINE!r}: {names}")
    for name, w in workdirs.items():
        if not os.path.isdir(w):
            raise EvaluationError(f"--workdir {name}={w}: no such directory")
    if num_images is None and test_dir is None:
        raise EvaluationError("give --num-images N (simulate a test set) or --test-dir DATASET")
    if num_images is not None and int(num_images) < 1:
        raise EvaluationError(f"--num-images must be >= 1, got {num_images}")
    test_dir = test_dir or os.path.join(out_dir, f"test-{prior}")
    if sim_config is None and num_images is not None and workdirs:
        sim_config = load_config(next(iter(workdirs.values())))
    test = load_test_set(test_dir, num_images, prior, sim_config, num_workers, progress)
    truth, n = test.truth, test.num_images
    prior = ((test.manifest.get("config") or {}).get("fields") or {}).get("prior", prior)
    print(f"test set {test.directory}: {n} images, {len(truth)} sources (p_{prior})", flush=True)

    preds = {}
    for name, w in workdirs.items():
        t = time.time()
        preds[name] = network_catalog(w, test)
        print(f"  {name}: cataloged in {time.time() - t:.1f} s", flush=True)
    for name, c in catalogs.items():
        preds[name] = catalog_lib.read_table(c) if isinstance(c, (str, os.PathLike)) else c
    if baseline:
        t = time.time()
        preds[BASELINE] = baseline_catalog(test)
        print(f"  {BASELINE}: cataloged in {time.time() - t:.1f} s", flush=True)
    for name, p in preds.items():  # a clear error for catalogs of another test set
        image = np.asarray(p["image"])
        if image.size and (image.min() < 0 or image.max() >= n):
            raise EvaluationError(f"catalog {name!r} refers to image {int(image.max())}, but the test set "
                                  f"{test.directory} holds {n} images (0..{n - 1}): truth and predictions differ")

    equal_cutoffs = metrics.equal_count_edges(np.asarray(truth["mag"]), num_bins) if len(truth) else \
        np.asarray(metrics.REFERENCE_CUTOFFS)
    snr_values, snr_cutoffs = None, None
    if snr and len(truth):
        snr_values = truth_snr(test)
        if snr_values is not None and np.isfinite(snr_values).sum() >= num_bins:
            snr_cutoffs = metrics.equal_count_edges(snr_values[np.isfinite(snr_values)], num_bins, max_mag=np.inf)
        else:
            snr_values = None
    results = dict(
        test_set=dict(directory=test.directory, num_images=n, num_sources=len(truth), prior=prior,
                      dropped_by_tile_rule=test.num_dropped, bank=_bank_path(test.manifest),
                      synthetic_bank=_bank_path(test.manifest) == "synthetic", seed=test.manifest.get("seed")),
        options=dict(num_bootstrap=num_bootstrap, num_bins=num_bins, prob_threshold=PROB_THRESHOLD, slack_pixels=1.0,
                     seed=seed),
        equal_cutoffs=np.asarray(equal_cutoffs), snr_cutoffs=snr_cutoffs,
        bin_centers=dict(equal=_bin_centers(truth, equal_cutoffs),
                         reference=_bin_centers(truth, metrics.REFERENCE_CUTOFFS),
                         snr=None if snr_values is None else _bin_centers(truth, snr_cutoffs, snr_values)),
        workdirs={k: os.path.abspath(v) for k, v in workdirs.items()},
        methods={},
    )
    for name, p in preds.items():
        results["methods"][name] = evaluate_catalog(truth, p, n, equal_cutoffs, snr_values, snr_cutoffs,
                                                    num_bootstrap, seed)
    results["seconds"] = time.time() - t0
    write_report(out_dir, results, preds)
    print(f"report: {os.path.join(out_dir, 'report.md')} ({time.time() - t0:.0f} s)", flush=True)
    return results


def _bin_centers(truth, cutoffs, values=None) -> np.ndarray:
    """Median of the stratification value (true magnitude by default) of the truth rows in each bin."""
    values = np.asarray(truth["mag"] if values is None else values, np.float64)
    bins = metrics.assign_bins(values, cutoffs)
    centers = np.full(len(cutoffs), np.nan)
    for k in range(len(cutoffs)):
        if np.any(bins == k):
            centers[k] = np.median(values[bins == k])
    return centers


# --- output ------------------------------------------------------------------------------------------

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
                rows.append(dict(method=name, metric=metric, bin=k, lo=float(edges[k]), hi=float(edges[k + 1]),
                                 value=float(r["value"][k]), std=float(r["std"][k]), count=int(r["count"][k])))
    return rows


def write_report(out_dir: str, results: dict, preds: dict | None = None) -> None:
    """Writes metrics.json, the CSV tables, the figures and report.md to ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    io.write_json(os.path.join(out_dir, "metrics.json"), metrics.to_jsonable(results), indent=1, allow_nan=False)
    io.write_csv(os.path.join(out_dir, "bins_equal.csv"), _bin_rows(results, "bins_equal", results["equal_cutoffs"]))
    io.write_csv(os.path.join(out_dir, "bins_reference.csv"),
                 _bin_rows(results, "bins_reference", metrics.REFERENCE_CUTOFFS))
    if results["snr_cutoffs"] is not None:
        io.write_csv(os.path.join(out_dir, "bins_snr.csv"), _bin_rows(results, "bins_snr", results["snr_cutoffs"]))
    cal, cov, head = [], [], []
    for name, m in results["methods"].items():
        for subset, c in m["calibration"].items():
            s = c["summary"]
            for i in range(len(s["true_count"])):
                cal.append(dict(method=name, subset=subset, true_count=int(s["true_count"][i]),
                                num_images=int(s["num_images"][i]), mean_expected=float(s["mean_expected"][i]),
                                std_expected=float(s["std_expected"][i])))
        for subset, c in m["coverage"].items():
            for i, level in enumerate(c["levels"]):
                cov.append(dict(method=name, subset=subset, level=float(level), coverage=float(c["coverage"][i]),
                                std=float(c["std"][i]), count=int(c["count"])))
        for key, label, *_ in HEADLINE:
            h = m["headline"].get(key)
            if h is not None:
                head.append(dict(method=name, metric=key, label=label, **h))
    io.write_csv(os.path.join(out_dir, "calibration.csv"), cal)
    io.write_csv(os.path.join(out_dir, "coverage.csv"), cov)
    io.write_csv(os.path.join(out_dir, "headline.csv"), head)
    if preds:
        os.makedirs(os.path.join(out_dir, "predictions"), exist_ok=True)
        for name, p in preds.items():
            if "prob_source" in metrics.colnames(p):
                p = p[np.asarray(p["prob_source"]) > PROB_THRESHOLD]
            catalog_lib.write_table(p, os.path.join(out_dir, "predictions", f"{name}.fits"))
    report.write_figures(out_dir, results)
    io.atomic_write(os.path.join(out_dir, "report.md"), report.markdown(results))


def write_index(out_dir: str, reports: dict, results: dict, title: str, elapsed_s: float | None = None) -> None:
    """``out_dir/report.md``: the headline table of each report (prior -> directory) with links."""
    io.atomic_write(os.path.join(out_dir, "report.md"), report.index_markdown(reports, results, title, elapsed_s))
