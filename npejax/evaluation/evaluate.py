r"""The paper's evaluation (Section 7, Appendix A) of trained networks and a Source Extractor baseline.

The library behind ``python -m npejax.evaluate`` (:mod:`npejax.evaluate`, the command and its flags)::

    python -m npejax.evaluate --workdir single=W1 --workdir unaware=W2 --workdir aware=W3 \
        --prior many|one --num-images N --out REPORT_DIR        # simulate N test images (cached)
    python -m npejax.evaluate --workdir aware=W3 --test-dir DATASET --out REPORT_DIR   # a fixed test set

Each network (best checkpoint, or a pretrained network shipped with the package) catalogs every test image; the
baseline is Source Extractor (``sep``) on the same sky-subtracted images with the known background
(``npejax.evaluation.baseline``). Metrics follow SPEC.md "Evaluation" (definitions in
:mod:`npejax.evaluation.metrics`): Jonker-Volgenant matching within 1 pixel; precision by estimated magnitude, recall,
star/galaxy accuracy and flux MAPE by true magnitude, in equal-count bins and in the reference cut-offs, with 1-sigma
bootstrap bands over images and the mean over bins; detection calibration; star/galaxy ROC and AUC; flux
credible-interval coverage; and recall, accuracy and MAPE by SNR (Appendix A). The headline metrics, detection
threshold and method names are in :mod:`npejax.evaluation.headline`: each headline value is the mean over the paper's
reference bins below its cut-off, with the pooled figure beside it (``KEY_pooled``). Beside the methods, the r-band
ceiling (:mod:`npejax.evaluation.ceiling`; ``eval.ceiling_galaxies = 0`` skips it): the accuracy of an ideal
star/galaxy test per bin of every binning, computed once per test set from its own galaxies (at most
``eval.ceiling_galaxies`` per bin), so the report says how far each network is from what r-band pixels allow.

What is evaluated, and how, is an :class:`npejax.evaluation.settings.EvalSettings` (the config's ``eval`` section
and the command line), checked when it is built. The report -- ``metrics.json``, CSV tables, PNG figures,
``gallery.png`` (a dozen test images with the true sources and each method's detections, the worst-scored
images first: :func:`gallery_images`), ``predictions/NAME.fits`` (detections, prob_source > 0.5) and
``report.md`` -- is written to ``REPORT_DIR`` by :func:`npejax.evaluation.report.write_report` (its files and
their columns are listed there). The test set is ``--test-dir`` (simulated there with ``--num-images`` if
absent; resumable), by default ``REPORT_DIR/test-PRIOR``; it must be a ``test`` split. It is streamed:
networks, the baseline and the SNR read :data:`CHUNK_IMAGES` images at a time (memory-mapped), so memory holds
the catalogs and the truth, never the images of the whole set.

Refused before any work (one line naming the file, column, row or value): the settings' own checks
(:mod:`npejax.evaluation.settings`: an ``--out`` that is a file or not writable, ...), a ``--test-dir`` whose
manifest split is not ``test``, and a catalog (``--catalog`` file or a network's) that lacks ``image``, ``x``,
``y`` or ``flux``, holds text or non-finite values in them, an image index outside the test set, or a
``prob_source`` / ``prob_galaxy`` outside [0, 1] or NaN (:func:`check_catalog`).

A catalog given with ``--catalog NAME=FILE`` is evaluated as it is: precision, recall, accuracy, MAPE,
ROC and coverage need only its detections, but the detection calibration sums ``prob_source`` over
every row, so write it with ``npejax.predict --min-prob 0`` (every tile) for that figure to mean what
it says; a catalog without ``prob_source`` (another pipeline's) gets no calibration.
"""

from __future__ import annotations

import dataclasses
import os
import time

import ml_collections
import numpy as np
from astropy import table as table_lib

from npejax import catalogs as catalog_lib
from npejax import datasets as data_lib
from npejax.evaluation import baseline as baseline_lib
from npejax.evaluation import ceiling as ceiling_lib
from npejax.evaluation import metrics, report
from npejax.evaluation import snr as snr_lib
from npejax.evaluation.headline import BASELINE, HEADLINE, POOLED, PROB_THRESHOLD, SUBSETS
from npejax.evaluation.settings import CHUNK_IMAGES, EvalSettings, EvaluationError
from npejax.nn import pretrained as pretrained_lib
from npejax.nn.posterior import tiles_to_sources
from npejax.nn.predictor import Predictor
from npejax.schema import CATALOG_KEYS, FIELD_PRIORS
from npejax.sim import fields as fields_lib
from npejax.sim import pipeline

__all__ = [
    "BASELINE",
    "HEADLINE",
    "PROB_THRESHOLD",
    "SUBSETS",
    "CHUNK_IMAGES",
    "GALLERY_IMAGES",
    "EvalSettings",
    "EvaluationError",
    "TestSet",
    "load_test_set",
    "check_test_split",
    "check_catalog",
    "read_catalog",
    "network_catalog",
    "baseline_catalog",
    "truth_snr",
    "evaluate_catalog",
    "at_baseline",
    "gallery_images",
    "evaluate",
]

GALLERY_IMAGES = 12  # panels of gallery.png
GALLERY_WORST = 6  # of which the worst-scored images (the rest spread over the test set)
GALLERY_BRIGHT_MAG = 21.2  # "bright" true sources of the gallery's score: the recall headline cut
REQUIRED_COLUMNS = ("image", "x", "y", "flux")
PROBABILITY_COLUMNS = ("prob_source", "prob_galaxy")


@dataclasses.dataclass
class TestSet:
    """A cached test set, read in chunks (:meth:`chunks`), never whole: ``dataset`` is the memory-mapped
    :class:`npejax.datasets.Dataset`, ``truth`` one row per true source (astropy Table)."""

    directory: str
    dataset: object  # npejax.datasets.Dataset
    truth: object  # astropy Table
    manifest: dict
    num_dropped: int

    @property
    def num_images(self) -> int:
        return len(self.dataset)

    def chunks(self, keys, size: int = CHUNK_IMAGES):
        """``(first image index, {key: array of at most size images})`` over the whole set, in order."""
        size = max(1, int(size))
        for start in range(0, self.num_images, size):
            yield start, self.dataset.read(slice(start, start + size), keys)

    def read(self, index, keys) -> dict:
        """``keys`` of the images ``index`` (a slice or an index array)."""
        return self.dataset.read(index, keys)


# --- test set ----------------------------------------------------------------------------------------


def check_test_split(test_dir: str) -> None:
    """Refuses a dataset whose manifest split is not ``test`` (a training or validation set evaluated as a
    test set would report optimistic numbers); a directory without a manifest passes (nothing to check)."""
    if not os.path.isfile(os.path.join(test_dir, data_lib.MANIFEST)):
        return
    split = data_lib.read_manifest(test_dir)["split"]
    if split != "test":
        raise EvaluationError(
            f"--test-dir {test_dir} holds the {split!r} split (manifest.json split={split!r}), "
            "not a test set: give a dataset written with python -m npejax.simulate --split test"
        )


def load_test_set(
    test_dir: str,
    num_images: int | None = None,
    prior: str | None = None,
    sim_config=None,
    num_workers: int | None = None,
    progress: bool = True,
) -> TestSet:
    """Opens the test dataset in ``test_dir`` (a ``test`` split), first simulating ``num_images`` test images
    there (prior ``prior``, settings of ``sim_config``, ``num_workers`` processes -- default its
    ``simulator.num_workers``) when it is absent or incomplete."""
    manifest_path = os.path.join(test_dir, "manifest.json")
    check_test_split(test_dir)
    if num_images is not None:
        if sim_config is None:
            raise EvaluationError("simulating a test set needs a config (that of the first network by default)")
        if prior not in FIELD_PRIORS:
            raise EvaluationError(f"--prior must be 'many' or 'one', got {prior!r}")
        config = sim_config.copy_and_resolve_references()
        with config.unlocked():
            config.fields.prior = prior
        spec = pipeline.SimulationSpec.from_config(config, seed=data_lib.split_seed(int(config.seed), "test"))
        data_lib.write_dataset(
            spec,
            test_dir,
            int(num_images),
            "test",
            config=config,
            num_workers=int(config.simulator.num_workers if num_workers is None else num_workers),
            shard_size=int(config.data.shard_size),
            progress=progress,
        )
    elif not os.path.isfile(manifest_path):
        raise EvaluationError(
            f"test set {test_dir} has no manifest.json: give --num-images to simulate one, "
            "or a directory written by python -m npejax.simulate"
        )
    dataset = data_lib.load(test_dir)
    if num_images is not None and len(dataset) != int(num_images):
        raise EvaluationError(f"test set {test_dir} holds {len(dataset)} images, not --num-images={num_images}")
    truth, _, dropped = catalog_lib.dataset_truth_table(dataset)
    return TestSet(
        directory=os.path.abspath(test_dir),
        dataset=dataset,
        truth=truth,
        manifest=dataset.manifest,
        num_dropped=int(dropped),
    )


# --- catalogs ----------------------------------------------------------------------------------------


def _first_bad(values: np.ndarray, bad: np.ndarray) -> tuple[int, object]:
    row = int(np.flatnonzero(bad)[0])
    return row, values[row]


def check_catalog(table, where: str, num_images: int | None = None, test_dir: str | None = None) -> None:
    """Raises EvaluationError (one line naming ``where`` -- the catalog's file or method --, the column and
    the row, counted from 0) unless ``table`` has numeric ``image``, ``x``, ``y``, ``flux`` columns with
    finite values, integer image indices in [0, ``num_images``) and ``prob_source`` / ``prob_galaxy``
    (where present) in [0, 1]."""
    names = metrics.colnames(table)
    for col in REQUIRED_COLUMNS:
        if col not in names:
            raise EvaluationError(
                f"{where} lacks column {col!r} (it has {names}); a prediction catalog needs "
                f"{', '.join(REQUIRED_COLUMNS)}"
            )
    for col in (*REQUIRED_COLUMNS, *(c for c in PROBABILITY_COLUMNS if c in names)):
        column = table[col]
        raw = np.asarray(np.ma.getdata(column))
        mask = np.ma.getmaskarray(column) if isinstance(column, np.ma.MaskedArray) else np.zeros(raw.shape, bool)
        if raw.ndim != 1:
            raise EvaluationError(f"{where}: column {col!r} has shape {raw.shape}, expected one value per row")
        if not (np.issubdtype(raw.dtype, np.number) or raw.dtype == bool):
            row = next((i for i, v in enumerate(raw) if not _is_number(v)), 0)
            raise EvaluationError(
                f"{where}: column {col!r} holds text ({_text(raw[row])!r} in row {row}), expected numbers"
            )
        values = np.where(mask, np.nan, raw.astype(np.float64))
        if col in PROBABILITY_COLUMNS:
            bad = ~((values >= 0) & (values <= 1))  # NaN too
            if bad.any():
                row, v = _first_bad(values, bad)
                raise EvaluationError(
                    f"{where}: column {col!r} is {'NaN or empty' if mask[row] else v} in row {row}; "
                    "a probability must lie in [0, 1]"
                )
            continue
        bad = ~np.isfinite(values)
        if bad.any():
            row, v = _first_bad(values, bad)
            raise EvaluationError(
                f"{where}: column {col!r} is {'NaN or empty' if mask[row] else v} in row {row}; "
                "expected a finite number"
            )
        if col == "image":
            bad = values != np.round(values)
            if bad.any():
                row, v = _first_bad(values, bad)
                raise EvaluationError(f"{where}: column 'image' is {v} in row {row}; expected an integer image index")
            if num_images is not None and ((values < 0) | (values >= num_images)).any():
                row, v = _first_bad(values, (values < 0) | (values >= num_images))
                holds = f"the test set {test_dir} holds" if test_dir else "the test set holds"
                raise EvaluationError(
                    f"{where} refers to image {int(v)} (row {row}), but {holds} {num_images} "
                    f"images (0..{num_images - 1}): truth and predictions differ"
                )


def _is_number(value) -> bool:
    try:
        float(_text(value))
    except (TypeError, ValueError):
        return False
    return True


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def read_catalog(path: str, name: str):
    """The prediction catalog ``path`` (FITS or CSV) of ``--catalog NAME=PATH``; a file that cannot be read
    as a table is a one-line error naming it."""
    try:
        return catalog_lib.read_table(path, unmarked=catalog_lib.CENTER0)  # another tool's: sep, photutils
    except FileNotFoundError:
        raise EvaluationError(f"--catalog {name}={path}: no such file") from None
    except (OSError, ValueError, TypeError, IndexError, KeyError, UnicodeDecodeError) as exc:
        raise EvaluationError(
            f"--catalog {name}={path}: cannot read it as a catalog table "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
        ) from None


def network_catalog(workdir: str | Predictor, test: TestSet, batch_size: int = 256, chunk_images: int = CHUNK_IMAGES):
    """Every tile of every test image as a prediction table (prob_source >= 0), from the best checkpoint of
    ``workdir`` (or the :class:`~npejax.nn.predictor.Predictor` given); the test images are read
    ``chunk_images`` at a time (rounded to whole batches, so the network sees the same batches as it would
    the whole set)."""
    predictor = workdir if isinstance(workdir, Predictor) else Predictor.from_workdir(workdir, "best")
    chunk = batch_size * max(1, int(chunk_images) // batch_size)
    parts = []
    for start, batch in test.chunks(("images", "background", "psf_params"), chunk):
        tiles = predictor.predict_tiles(
            batch["images"], batch["background"], batch["psf_params"], batch_size, image_offset=start
        )  # errors name the test set's image index
        sources = tiles_to_sources(tiles, predictor.tile_size, min_prob=-1.0)
        sources["image"] = sources["image"] + start
        parts.append(sources)
    return catalog_lib.prediction_table({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})


def baseline_catalog(test: TestSet, bank=None, chunk_images: int = CHUNK_IMAGES):
    """Source Extractor (sep) catalog of the test images with the known background and noise (read
    ``chunk_images`` at a time)."""
    bank = bank if bank is not None else fields_lib.load_bank(_bank_path(test.manifest))
    tables = [
        baseline_lib.sep_catalog(b["images"], b["background"], field_id=b["field_id"], bank=bank, image_offset=start)
        for start, b in test.chunks(("images", "background", "field_id"), chunk_images)
    ]
    return tables[0] if len(tables) == 1 else table_lib.vstack(tables, metadata_conflicts="silent")


def _bank_path(manifest: dict) -> str:
    config = manifest.get("config") or {}
    return (config.get("fields") or {}).get("bank", "synthetic")


def truth_snr(test: TestSet, chunk_images: int = CHUNK_IMAGES) -> np.ndarray | None:
    """SNR (Appendix A) of each truth row, drawn with the test set's own bank and render settings (its
    manifest's config); None when the manifest holds no usable config (no SNR metrics then)."""
    try:
        spec = pipeline.SimulationSpec.from_config(ml_collections.ConfigDict(test.manifest["config"]))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    image, source = np.asarray(test.truth["image"]), np.asarray(test.truth["source"])
    values = np.full(len(image), np.nan)
    keys = ("background", "field_id", "n_sources", *(k for k in CATALOG_KEYS if k in test.dataset.keys))
    for start, batch in test.chunks(keys, chunk_images):
        per_source = np.asarray(snr_lib.source_snr(batch, spec))  # [chunk, max_sources], NaN for padding
        rows = (image >= start) & (image < start + len(batch["n_sources"]))
        values[rows] = per_source[image[rows] - start, source[rows]]
    return values.astype(np.float64)


# --- metrics -----------------------------------------------------------------------------------------


def _single(truth, pred, num_images, metric, cutoff, num_bootstrap, seed):
    m = metrics.binned_metrics(
        truth,
        pred,
        num_images,
        cutoffs=(cutoff,),
        num_bootstrap=num_bootstrap,
        seed=seed,
        prob_threshold=PROB_THRESHOLD,
    )[metric]
    return dict(value=float(m["value"][0]), std=float(m["std"][0]), count=int(m["count"][0]))


def evaluate_catalog(
    truth, pred, num_images: int, equal_cutoffs, snr=None, snr_cutoffs=None, *, num_bootstrap: int, seed: int = 0
) -> dict:
    """All metrics of one method's catalog against the truth (see module doc); JSON-ready after
    :func:`npejax.evaluation.metrics.to_jsonable`. ``pred`` holds every tile (for calibration) or only detections;
    ``num_bootstrap`` resamples (``eval.num_bootstrap``) with ``seed`` for the 1-sigma bands."""
    kw = dict(num_bootstrap=num_bootstrap, seed=seed, prob_threshold=PROB_THRESHOLD)
    out = dict(
        bins_equal=metrics.binned_metrics(truth, pred, num_images, cutoffs=equal_cutoffs, **kw),
        bins_reference=metrics.binned_metrics(truth, pred, num_images, cutoffs=metrics.REFERENCE_CUTOFFS, **kw),
    )
    if snr is not None:
        out["bins_snr"] = metrics.binned_metrics(truth, pred, num_images, cutoffs=snr_cutoffs, truth_strata=snr, **kw)
    headline = {}
    for key, _, metric, cutoff, bins, _ in HEADLINE:  # the mean over reference bins, then the pooled figure
        if metric is not None:
            ref = (
                out["bins_reference"]
                if bins == len(metrics.REFERENCE_CUTOFFS)
                else metrics.binned_metrics(truth, pred, num_images, cutoffs=metrics.REFERENCE_CUTOFFS[:bins], **kw)
            )
            r = ref[metric]
            headline[key] = dict(
                value=r["mean"],
                std=r["mean_std"],
                count=int(np.sum(r["count"][:bins])),
                bins=int(bins),
                num_defined=int(np.sum(np.isfinite(r["value"][:bins]))),
            )
            headline[key + POOLED] = _single(truth, pred, num_images, metric, cutoff, num_bootstrap, seed)
    matches = metrics.match(truth, pred, num_images, prob_threshold=PROB_THRESHOLD)
    has_probs = "prob_source" in metrics.colnames(pred)
    out["calibration"], out["roc"], out["coverage"] = {}, {}, {}
    for subset, mag_range in SUBSETS.items():
        if has_probs:
            out["calibration"][subset] = metrics.count_calibration(truth, pred, num_images, mag_range=mag_range)
        out["roc"][subset] = metrics.star_galaxy_roc(truth, pred, matches, mag_range=mag_range)
        out["coverage"][subset] = metrics.flux_coverage(
            truth, pred, matches, num_images, mag_range=mag_range, num_bootstrap=num_bootstrap, seed=seed
        )
    cov = out["coverage"]["all"]
    i95 = int(np.argmin(np.abs(np.asarray(cov["levels"]) - 0.95)))
    headline["coverage95"] = dict(
        value=float(cov["coverage"][i95]), std=float(cov["std"][i95]), count=int(cov["count"])
    )
    headline["auc"] = dict(
        value=float(out["roc"]["all"]["auc"]),
        std=float("nan"),
        count=int(out["roc"]["all"]["num_galaxies"] + out["roc"]["all"]["num_stars"]),
    )
    out["headline"] = headline
    return out


def at_baseline(truth, pred, num_images: int, ref_precision, ref_recall) -> dict:
    """A network at the baseline's operating point in each reference bin (:data:`metrics.REFERENCE_CUTOFFS`): its
    precision where its recall reaches the baseline's, and its recall where its precision does, over the detection
    thresholds 0.01-0.99 (:func:`npejax.evaluation.metrics.threshold_curves`,
    :func:`~npejax.evaluation.metrics.at_reference_operating_point`), beside its values at the fixed threshold."""
    curves = metrics.threshold_curves(truth, pred, num_images, cutoffs=metrics.REFERENCE_CUTOFFS)
    out = metrics.at_reference_operating_point(curves, ref_precision, ref_recall)
    fixed = int(np.argmin(np.abs(curves["thresholds"] - PROB_THRESHOLD)))
    out["precision_at_threshold"] = curves["precision"][fixed]
    out["recall_at_threshold"] = curves["recall"][fixed]
    out["threshold"] = float(curves["thresholds"][fixed])
    return out


def gallery_images(
    truth,
    preds: dict,
    num_images: int,
    num: int = GALLERY_IMAGES,
    num_worst: int = GALLERY_WORST,
    bright_mag: float = GALLERY_BRIGHT_MAG,
) -> dict:
    """The images of the report's gallery: up to ``num_worst`` worst-scored images (most true sources
    brighter than r = ``bright_mag`` missed, summed over the methods; ties: more false detections brighter
    than that), then images spread evenly over the rest of the test set, ``num`` in all (fewer when the
    set is smaller). Returns ``images`` (indices in display order), ``worst`` (how many of them lead),
    ``missed`` and ``false`` (per gallery image: method -> count) and ``bright_mag``."""
    num = min(int(num), int(num_images))
    truth_image = np.asarray(truth["image"], np.int64)
    bright = _mags(truth) < bright_mag
    missed_by, false_by = {}, {}
    score, ties = np.zeros(num_images), np.zeros(num_images)
    for name, pred in preds.items():
        t2p, p2t = metrics.match(truth, pred, num_images, prob_threshold=PROB_THRESHOLD)
        false = _detected(pred) & (p2t < 0) & (_mags(pred) < bright_mag)
        missed_by[name] = np.bincount(truth_image[bright & (t2p < 0)], minlength=num_images)
        false_by[name] = np.bincount(np.asarray(pred["image"], np.int64)[false], minlength=num_images)
        score += missed_by[name]
        ties += false_by[name]
    order = np.lexsort((np.arange(num_images), -ties, -score))  # worst first; the lower index on ties
    worst = [int(i) for i in order[: min(num_worst, num)] if score[i] > 0 or ties[i] > 0]
    rest = np.setdiff1d(np.arange(num_images), worst)
    spread = (
        rest[np.unique(np.linspace(0, len(rest) - 1, num - len(worst)).round().astype(int))]
        if num > len(worst)
        else rest[:0]
    )
    images = worst + sorted(int(i) for i in spread)
    return dict(
        images=images,
        worst=len(worst),
        bright_mag=float(bright_mag),
        missed=[{n: int(m[i]) for n, m in missed_by.items()} for i in images],
        false=[{n: int(f[i]) for n, f in false_by.items()} for i in images],
    )


def _mags(cat) -> np.ndarray:
    """The ``mag`` column of a catalog, or the magnitude of its ``flux``."""
    if "mag" in metrics.colnames(cat):
        return np.asarray(np.ma.filled(np.ma.asarray(cat["mag"], np.float64), np.nan))
    return catalog_lib.flux_to_mag(np.asarray(cat["flux"], np.float64))


def _detected(pred) -> np.ndarray:
    """Which rows of a prediction catalog are detections (prob_source > PROB_THRESHOLD; all without it)."""
    if "prob_source" in metrics.colnames(pred):
        return np.asarray(pred["prob_source"], np.float64) > PROB_THRESHOLD
    return np.ones(len(pred["image"]), bool)


def _gallery_panels(test: TestSet, preds: dict, gallery: dict) -> list[dict]:
    """What :func:`npejax.evaluation.report.write_gallery` draws: per gallery image its pixels, its true
    sources and each method's detections."""
    images = test.read(np.asarray(gallery["images"], np.int64), ("images",))["images"]
    truth_image = np.asarray(test.truth["image"])
    truth_x, truth_y = catalog_lib.array_xy(test.truth)
    columns = {}
    for name, pred in preds.items():
        image = np.asarray(pred["image"], np.int64)
        keep = _detected(pred)
        x, y = catalog_lib.array_xy(pred)  # the gallery draws in pixels from the image edge
        columns[name] = (image[keep], x[keep], y[keep])
    panels = []
    for k, i in enumerate(gallery["images"]):
        rows = truth_image == i
        missed = gallery["missed"][k]
        title = f"image {i}"
        if k < gallery["worst"]:
            title += f": r < {gallery['bright_mag']:g} missed " + ", ".join(f"{n} {c}" for n, c in missed.items())
        panels.append(
            dict(
                image=images[k],
                title=title,
                worst=k < gallery["worst"],
                truth=dict(
                    x=truth_x[rows],
                    y=truth_y[rows],
                    mag=np.asarray(test.truth["mag"])[rows],
                ),
                detections={n: dict(x=x[img == i], y=y[img == i]) for n, (img, x, y) in columns.items()},
            )
        )
    return panels


def evaluate(settings: EvalSettings) -> dict:
    """Evaluates the networks and prediction catalogs of ``settings`` (:class:`EvalSettings`, checked when built) on
    its test set, writes the report to ``settings.out_dir`` (:func:`npejax.evaluation.report.write_report`) and
    returns the metrics dict. The test set and the catalogs are checked before any simulation or prediction."""
    t0 = time.time()
    s = settings
    out_dir, test_dir, chunk = s.out_dir, s.test_path, s.chunk_images
    has_manifest = os.path.isfile(os.path.join(test_dir, data_lib.MANIFEST))
    if s.num_images is None and not has_manifest:
        raise EvaluationError(
            f"test set {test_dir} has no manifest.json: give --num-images to simulate one, "
            "or a directory written by python -m npejax.simulate"
        )
    check_test_split(test_dir)
    expected_images = s.num_images if s.num_images is not None else data_lib.read_manifest(test_dir)["num_images"]
    given = {}
    for name, c in s.catalogs.items():  # read and checked before any simulation or prediction
        if isinstance(c, (str, os.PathLike)):
            given[name] = read_catalog(os.fspath(c), name)
            check_catalog(given[name], f"catalog {os.fspath(c)}", expected_images, test_dir)
        else:
            c = c if hasattr(c, "colnames") else table_lib.Table(dict(c))  # a mapping of columns: CENTER0
            check_catalog(c, f"catalog {name!r}", expected_images, test_dir)
            given[name] = catalog_lib.centered(c)  # x, y as the truth's (an EDGE table converted)
    test = load_test_set(test_dir, s.num_images, s.prior, s.sim_config, s.num_workers, s.progress)
    truth, n = test.truth, test.num_images
    prior = ((test.manifest.get("config") or {}).get("fields") or {}).get("prior", s.prior)
    print(f"test set {test.directory}: {n} images, {len(truth)} sources (p_{prior})", flush=True)

    preds = {}
    for name, w in s.workdirs.items():
        t = time.time()
        preds[name] = network_catalog(w, test, chunk_images=chunk)
        check_catalog(preds[name], f"the catalog of network {name} ({w})", n, test.directory)
        print(f"  {name}: cataloged in {time.time() - t:.1f} s", flush=True)
    for name in s.pretrained:
        t = time.time()
        preds[name] = network_catalog(Predictor.pretrained(name), test, chunk_images=chunk)
        check_catalog(preds[name], f"the catalog of pretrained network {name}", n, test.directory)
        print(f"  {name} (pretrained): cataloged in {time.time() - t:.1f} s", flush=True)
    for name, c in given.items():
        check_catalog(
            c,
            f"catalog {s.catalogs[name]}" if isinstance(s.catalogs[name], (str, os.PathLike)) else f"catalog {name!r}",
            n,
            test.directory,
        )
        preds[name] = c
    if s.baseline:
        t = time.time()
        preds[BASELINE] = baseline_catalog(test, chunk_images=chunk)
        print(f"  {BASELINE}: cataloged in {time.time() - t:.1f} s", flush=True)

    equal_cutoffs = (
        metrics.equal_count_edges(np.asarray(truth["mag"]), s.num_bins)
        if len(truth)
        else np.asarray(metrics.REFERENCE_CUTOFFS)
    )
    snr_values, snr_cutoffs = None, None
    if s.snr and len(truth):
        snr_values = truth_snr(test, chunk)
        if snr_values is not None and np.isfinite(snr_values).sum() >= s.num_bins:
            snr_cutoffs = metrics.equal_count_edges(snr_values[np.isfinite(snr_values)], s.num_bins, max_mag=np.inf)
        else:
            snr_values = None
    ceiling_result = None
    readable = set(ceiling_lib.BATCH_KEYS) <= set(test.dataset.keys)
    spec = ceiling_lib.manifest_spec(test.manifest) if s.ceiling and len(truth) and readable else None
    if spec is not None:  # once per test set: it depends on the truth only
        t = time.time()
        mags = np.asarray(truth["mag"], np.float64)
        binnings = dict(
            bins_equal=(mags, equal_cutoffs),
            bins_reference=(mags, metrics.REFERENCE_CUTOFFS),
            bins_snr=None if snr_values is None else (snr_values, snr_cutoffs),
        )
        ceiling_result = ceiling_lib.test_set_ceiling(
            test.read, truth, spec, binnings, s.ceiling_galaxies, s.seed, chunk_images=chunk
        )
        print(
            f"  r-band ceiling: {ceiling_result['options']['num_galaxies']} galaxies in {time.time() - t:.1f} s",
            flush=True,
        )
    gallery = gallery_images(truth, preds, n)
    results = dict(
        test_set=dict(
            directory=test.directory,
            num_images=n,
            num_sources=len(truth),
            prior=prior,
            dropped_by_tile_rule=test.num_dropped,
            bank=_bank_path(test.manifest),
            synthetic_bank=_bank_path(test.manifest) in fields_lib.EMBEDDED_BANKS,  # both embedded banks are synthetic
            seed=test.manifest.get("seed"),
        ),
        options=dict(
            num_bootstrap=s.num_bootstrap,
            num_bins=s.num_bins,
            prob_threshold=PROB_THRESHOLD,
            slack_pixels=1.0,
            seed=s.seed,
            ceiling_galaxies=s.ceiling_galaxies if ceiling_result else None,
        ),
        equal_cutoffs=np.asarray(equal_cutoffs),
        snr_cutoffs=snr_cutoffs,
        bin_centers=dict(
            equal=_bin_centers(truth, equal_cutoffs),
            reference=_bin_centers(truth, metrics.REFERENCE_CUTOFFS),
            snr=None if snr_values is None else _bin_centers(truth, snr_cutoffs, snr_values),
        ),
        workdirs={k: os.path.abspath(v) for k, v in s.workdirs.items()},
        pretrained={name: {k: pretrained_lib.entry(name)[k] for k in ("file", "sha256")} for name in s.pretrained},
        methods={},
        ceiling=ceiling_result,
        gallery=gallery,
    )
    for name, p in preds.items():
        results["methods"][name] = evaluate_catalog(
            truth, p, n, equal_cutoffs, snr_values, snr_cutoffs, num_bootstrap=s.num_bootstrap, seed=s.seed
        )
    if BASELINE in results["methods"]:
        ref = results["methods"][BASELINE]["bins_reference"]
        for name, p in preds.items():
            if name != BASELINE and "prob_source" in metrics.colnames(p):
                results["methods"][name]["at_baseline"] = at_baseline(
                    truth, p, n, ref["precision"]["value"], ref["recall"]["value"]
                )
    results["seconds"] = time.time() - t0
    report.write_report(out_dir, results, preds, gallery_panels=_gallery_panels(test, preds, gallery))
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
