"""Evaluation report (npejax.evaluation.report): markdown tables on hand-built results, atomic figures."""

import math
import os

import numpy as np
import pytest

from npejax import catalogs as catalog
from npejax import io
from npejax.evaluation import ceiling, evaluate, metrics, report
from npejax.evaluation.headline import SUBSETS

pytestmark = pytest.mark.fast  # the whole file is in the fast tier

NAN = math.nan
HEADER = (
    "| method | precision, est. r < 21.5: [mean of ref. bins 1-8, to 21.495] "
    "| recall, r < 21.2: [mean of ref. bins 1-7, to 21.227] | star/galaxy accuracy, r < 22: [mean of ref. "
    "bins 1-10] | flux MAPE %, r < 22: [mean of ref. bins 1-10] | 95% flux interval coverage "
    "| star/galaxy AUC (all) |"
)
SEPARATOR = "| --- | --- | --- | --- | --- | --- | --- |"
PAPER = "| paper, PSF-aware (p_many, 42k images) | > 0.95 | > 0.9 | > 0.96 | - | about 0.96 | - |"


def _h(value, std=NAN, count=10, bins=None):
    return (
        dict(value=value, std=std, count=count) if bins is None else dict(value=value, std=std, count=count, bins=bins)
    )


def _binned(values, mean, counts, available=True):
    return dict(value=list(values), std=[0.0] * len(values), mean=mean, count=list(counts), available=available)


def _headline_results():
    return dict(
        methods={
            "aware": dict(
                headline=dict(
                    precision=_h(0.97123, 0.00456, bins=8),
                    precision_pooled=_h(0.955, 0.002),
                    recall=_h(0.9, bins=7),
                    recall_pooled=_h(NAN),
                    accuracy=_h(None, bins=10),
                    accuracy_pooled=_h(0.8),
                    mape=_h(12.345, 1.26, bins=10),
                    mape_pooled=_h(20.04, 1.0),
                    coverage95=_h(0.95, NAN),
                    auc=_h(0.98765, NAN),
                )
            ),
            "mine": dict(headline=dict(precision=_h(NAN, bins=8), recall=_h(1.0, 0.0, bins=7))),  # missing keys
            # metrics.json written before the bin means: its values pooled every source below the cut-off
            "old": dict(headline=dict(precision=_h(0.96, 0.01), recall=_h(0.91), coverage95=_h(0.9))),
        }
    )


def test_headline_table_cells():
    table = report.headline_table(_headline_results())
    assert table.split("\n") == [
        HEADER,
        SEPARATOR,
        "| PSF-aware | [0.971 ± 0.005] pooled 0.955 | [0.900] | pooled 0.800 | [12.3 ± 1.3] pooled 20.0 | 0.950 "
        "| 0.988 |",
        "| mine | n/a | [1.000 ± 0.000] | n/a | n/a | n/a | n/a |",
        "| old | pooled 0.960 | pooled 0.910 | n/a | n/a | 0.900 | n/a |",
        PAPER,
    ]
    assert report.headline_table(_headline_results(), with_paper=False).split("\n")[-1].startswith("| old |")


def test_headline_table_has_a_ceiling_row():
    r = _headline_results()
    r["ceiling"] = dict(headline=dict(value=0.95432, std=0.0021, pooled=0.9611, pooled_std=0.001, bins=10, count=1234))
    lines = report.headline_table(r).split("\n")
    assert lines[-2] == (
        "| r-band ceiling (ideal test), 1234 galaxies in the reference bins | - | - | [0.954 ± 0.002] pooled 0.961 "
        "| - | - | - |"
    )
    assert lines[-1] == PAPER


def _bins_results():
    aware = dict(
        bins_equal=dict(
            precision=_binned([0.91234, 0.5, NAN], 0.70617, [7, 2, 0]),
            recall=_binned([1.0, 0.5, NAN], 0.75, [4, 2, 0]),
            accuracy=_binned([1.0, 1.0, 1.0], 1.0, [4, 2, 0]),
            mape=_binned([3.14159, 20.0, NAN], 11.5708, [4, 2, 0]),
        )
    )
    sep = dict(
        bins_equal=dict(
            precision=_binned([1.0, 1.0, 1.0], 1.0, [1, 1, 1]),
            recall=_binned([0.25, 0.0, NAN], 0.125, [4, 2, 0]),
            accuracy=_binned([NAN] * 3, NAN, [4, 2, 0], available=False),  # no prob_galaxy: row left out
            mape=_binned([50.0, 60.04, NAN], 55.02, [4, 2, 0]),
        )
    )
    return dict(methods=dict(aware=aware, sep=sep))


def test_bins_table_cells():
    results = _bins_results()
    head = "| r | < 18.00 | 18.00–20.00 | 20.00–22.00 | mean |"
    sep = "| --- | --- | --- | --- | --- |"
    assert report.bins_table(results, "bins_equal", (18.0, 20.0, 22.0), "recall").split("\n") == [
        head,
        sep,
        "| PSF-aware | 1.000 | 0.500 | n/a | [0.750] |",
        "| Source Extractor (sep) | 0.250 | 0.000 | n/a | [0.125] |",
        "| sources (truth) | 4 | 2 | 0 | |",
    ]
    # MAPE has one decimal; precision (by estimated magnitude) has no truth-count row
    assert report.bins_table(results, "bins_equal", (18.0, 20.0, 22.0), "mape").split("\n")[2:] == [
        "| PSF-aware | 3.1 | 20.0 | n/a | [11.6] |",
        "| Source Extractor (sep) | 50.0 | 60.0 | n/a | [55.0] |",
        "| sources (truth) | 4 | 2 | 0 | |",
    ]
    assert report.bins_table(results, "bins_equal", (18.0, 20.0, 22.0), "precision").split("\n")[2:] == [
        "| PSF-aware | 0.912 | 0.500 | n/a | [0.706] |",
        "| Source Extractor (sep) | 1.000 | 1.000 | 1.000 | [1.000] |",
    ]
    # an unavailable metric leaves its method out; SNR bins end open (> last finite cut-off)
    snr = report.bins_table(
        {"methods": {"sep": {"bins_snr": results["methods"]["sep"]["bins_equal"]}}},
        "bins_snr",
        (5.0, 10.0, np.inf),
        "accuracy",
        "SNR",
    )
    assert snr.split("\n") == [
        "| SNR | < 5.00 | 5.00–10.00 | > 10.0 | mean |",
        sep,
        "| sources (truth) | 4 | 2 | 0 | |",
    ]


def test_bins_table_has_a_ceiling_row_for_accuracy_only():
    results = _bins_results()
    results["ceiling"] = dict(bins_equal=dict(value=[1.0, 0.95123, NAN], std=[0.0, 0.01, NAN], mean=0.975615))
    lines = report.bins_table(results, "bins_equal", (18.0, 20.0, 22.0), "accuracy").split("\n")
    assert lines[2:] == [
        "| PSF-aware | 1.000 | 1.000 | 1.000 | [1.000] |",
        "| r-band ceiling (ideal test) | 1.000 | 0.951 | n/a | [0.976] |",
        "| sources (truth) | 4 | 2 | 0 | |",
    ]
    assert "ceiling" not in report.bins_table(results, "bins_equal", (18.0, 20.0, 22.0), "recall")
    assert "ceiling" not in report.bins_table(results, "bins_reference", (18.0, 20.0, 22.0), "accuracy")


def test_index_markdown():
    r = _headline_results()
    r["test_set"] = dict(num_images=12)
    text = report.index_markdown({"many": "report-many"}, {"many": r}, "npejax experiment", elapsed_s=90.0)
    assert text == "\n".join(
        [
            "# npejax experiment",
            "",
            "Run time: 1.5 min.",
            "",
            "## Test set p_many (12 images) — [full report](report-many/report.md)",
            "",
            report.headline_table(r),
            "",
            "![detection](report-many/detection.png)",
            "",
        ]
    )
    assert "Run time" not in report.index_markdown({"many": "r"}, {"many": r}, "t")


# ---------------------------------------------------------------------------------- full results


def _full_results():
    """Results of evaluate_catalog on 12 synthetic images: a near-perfect network and a baseline."""
    rng = np.random.default_rng(0)
    n_images, per = 12, 4
    n = n_images * per
    flux = 10 ** rng.uniform(0.2, 2.5, n)
    truth = dict(
        image=np.repeat(np.arange(n_images), per),
        x=rng.uniform(2, 78, n),
        y=rng.uniform(2, 78, n),
        flux=flux,
        mag=catalog.flux_to_mag(flux),
        is_galaxy=rng.random(n) < 0.5,
    )
    net_flux = flux * rng.lognormal(0, 0.1, n)
    net = dict(
        image=truth["image"],
        x=truth["x"] + 0.2,
        y=truth["y"],
        flux=net_flux,
        mag=catalog.flux_to_mag(net_flux),
        prob_source=rng.uniform(0.3, 1.0, n),
        prob_galaxy=np.where(truth["is_galaxy"], 0.8, 0.2),
        flux_lo=net_flux / 1.1,
        flux_hi=net_flux * 1.1,
    )
    keep = rng.random(n) < 0.7
    sep = {k: truth[k][keep] for k in ("image", "x", "y", "flux", "mag")}
    cut = metrics.equal_count_edges(truth["mag"], 3)
    snr_values = truth["flux"] * 2.0
    snr_cut = metrics.equal_count_edges(snr_values, 3, max_mag=np.inf)
    methods = {
        name: evaluate.evaluate_catalog(truth, pred, n_images, cut, snr_values, snr_cut, num_bootstrap=10)
        for name, pred in (("aware", net), ("sep", sep))
    }
    d = np.where(truth["is_galaxy"], rng.uniform(0, 5, n), np.nan)  # distances to the best star, made up
    ceil = {
        key: ceiling.binned_ceiling(values, cutoffs, truth["is_galaxy"], d)
        for key, values, cutoffs in (
            ("bins_equal", truth["mag"], cut),
            ("bins_reference", truth["mag"], metrics.REFERENCE_CUTOFFS),
            ("bins_snr", snr_values, snr_cut),
        )
    }
    ceil["options"] = dict(max_per_bin=200, seed=0, num_galaxies=int(truth["is_galaxy"].sum()), seconds=1.0)
    ceil["headline"] = ceiling._headline(ceil["bins_reference"])
    return dict(
        ceiling=ceil,
        test_set=dict(
            directory="/data/test-many",
            num_images=n_images,
            num_sources=n,
            prior="many",
            dropped_by_tile_rule=3,
            bank="synthetic",
            synthetic_bank=True,
            seed=0,
        ),
        options=dict(num_bootstrap=10, num_bins=3, prob_threshold=0.5, slack_pixels=1.0, seed=0),
        equal_cutoffs=cut,
        snr_cutoffs=snr_cut,
        bin_centers=dict(
            equal=np.array([16.0, 18.0, 20.0]), reference=np.linspace(17, 22, 10), snr=np.array([10.0, 40.0, 150.0])
        ),
        workdirs={},
        methods=methods,
    )


def test_markdown_holds_the_tables():
    results = _full_results()
    text = report.markdown(results)
    assert text.startswith("# npejax evaluation: p_many test set\n")
    assert "12 test images of 80 x 80 pixels (48 true sources; 3 of them share a tile" in text
    assert "SYNTHETIC" in text and "Methods: PSF-aware, Source Extractor (sep)." in text
    assert "## Headline\n\n" + report.headline_table(results) + "\n" in text
    for key, cutoffs in (("bins_equal", results["equal_cutoffs"]), ("bins_reference", metrics.REFERENCE_CUTOFFS)):
        for metric in ("precision", "recall", "accuracy", "mape"):
            assert report.bins_table(results, key, cutoffs, metric) in text
    for metric in ("recall", "accuracy", "mape"):
        assert report.bins_table(results, "bins_snr", results["snr_cutoffs"], metric, "SNR") in text
    # the ceiling: explained, in the headline table and in every accuracy table, listed with the files
    assert text.count("| r-band ceiling (ideal test) |") == 3 and "| r-band ceiling (ideal test), " in text
    assert "**r-band ceiling (ideal test)**: the star/galaxy accuracy of an ideal test" in text
    assert "`ceiling.csv`" in text
    results["ceiling"] = None  # an evaluation without it
    text = report.markdown(results)
    assert "ceiling" not in text and "| paper, PSF-aware" in text
    # the baseline has no probabilities: no calibration row, but coverage rows only for the network
    cal = results["methods"]["aware"]["calibration"]["all"]
    assert f"| PSF-aware | {cal['total_expected']:.0f} / {cal['total_true']:.0f} |" in text
    assert "| Source Extractor (sep) | " not in text.split("## Calibration")[1].split("![roc]")[0]
    for name in ("detection", "calibration", "roc", "coverage", "snr"):
        assert f"![{name}]({name}.png)" in text


def test_write_figures_writes_pngs(tmp_path):
    names = report.write_figures(str(tmp_path), _full_results())
    assert names == ["detection.png", "snr.png", "calibration.png", "roc.png", "coverage.png"]
    assert sorted(os.listdir(tmp_path)) == sorted(names)
    for name in names:
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_write_figures_is_atomic_when_savefig_fails(tmp_path, monkeypatch):
    plt = report._pyplot()
    (tmp_path / "detection.png").write_bytes(b"old figure")
    calls = []

    def failing_savefig(self, fname, *args, **kwargs):
        calls.append(fname)
        with open(fname, "wb") as f:  # a partial file, then the failure
            f.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(plt.Figure, "savefig", failing_savefig)
    open_before = plt.get_fignums()
    with pytest.raises(OSError, match="disk full"):
        report.write_figures(str(tmp_path), _full_results())
    assert len(calls) == 1 and io.is_temporary(calls[0]) and calls[0].endswith(".png")
    assert os.path.dirname(calls[0]) == str(tmp_path)
    assert os.listdir(tmp_path) == ["detection.png"]  # no temporary left, the old file untouched
    assert (tmp_path / "detection.png").read_bytes() == b"old figure"
    assert plt.get_fignums() == open_before  # the figure was closed


def test_subsets_have_labels():
    assert set(report.SUBSET_LABELS) == set(SUBSETS) == {"all", "brightest", "faintest"}


def test_a_bin_where_accuracy_exceeds_the_ceiling_is_explained():
    results = _bins_results()  # PSF-aware: accuracy 1.0 in every bin, recall 1.0, 0.5, n/a
    results["ceiling"] = dict(bins_equal=dict(value=[1.0, 0.95123, NAN], std=[0.0, 0.01, NAN], mean=0.975615))
    note = report.ceiling_note(results, "bins_equal", (18.0, 20.0, 22.0))
    assert note.startswith("Above the ceiling: PSF-aware at r 18.00–20.00 (1.000 against 0.951, recall 0.500). ")
    assert "counts only the true sources it detected (matched)" in note
    results["ceiling"]["bins_equal"]["value"] = [1.0, 1.0, NAN]  # nowhere above: no sentence
    assert report.ceiling_note(results, "bins_equal", (18.0, 20.0, 22.0)) == ""
    assert report.ceiling_note(_bins_results(), "bins_equal", (18.0, 20.0, 22.0)) == ""  # no ceiling


def test_the_sentence_stands_under_the_accuracy_table_of_the_report():
    results = _full_results()
    results["ceiling"]["bins_reference"]["value"] = np.full(10, 0.5)  # below the near-perfect network
    text = report.markdown(results)
    table = report.bins_table(results, "bins_reference", metrics.REFERENCE_CUTOFFS, "accuracy")
    note = report.ceiling_note(results, "bins_reference", metrics.REFERENCE_CUTOFFS)
    assert note and table + "\n\n" + note + "\n" in text


def test_calibration_grouped_by_expected_is_on_the_diagonal_for_a_calibrated_network():
    # each image holds one source with probability p, and the network says p: calibrated by construction
    rng = np.random.default_rng(1)
    p = np.repeat([0.2, 0.7], 4000)
    true_count = (rng.random(p.size) < p).astype(int)
    g = metrics.calibration_by_expected(true_count, p)
    np.testing.assert_array_equal(g["group"], [0, 1])
    np.testing.assert_allclose(g["mean_true"], g["mean_expected"], atol=3 * g["sem_true"].max())
    assert np.all(g["sem_true"] > 0) and g["num_images"].tolist() == [4000, 4000]
    # grouped by the true count (the summary, calibration.csv), the same network looks under-predicting at 1
    truth = dict(image=np.nonzero(true_count)[0], x=np.ones(true_count.sum()), y=np.ones(true_count.sum()))
    truth["flux"] = np.ones(truth["x"].size)
    pred = dict(image=np.arange(p.size), x=np.ones(p.size), y=np.ones(p.size), flux=np.ones(p.size), prob_source=p)
    c = metrics.count_calibration(truth, pred, p.size)
    assert c["summary"]["mean_expected"][1] < 0.6  # at true count 1: expected about 0.56
    points = report.calibration_points(c)
    for key in ("group", "mean_true", "mean_expected"):
        np.testing.assert_array_equal(points[key], g[key])


def test_the_calibration_panels_plot_what_the_table_says(monkeypatch, tmp_path):
    results = _full_results()
    drawn = {}
    save = report._save

    def keep(fig, path):
        drawn[os.path.basename(path)] = [  # errorbar containers: the label and the data line
            [(c.get_label(), c.lines[0].get_xdata(), c.lines[0].get_ydata()) for c in ax.containers] for ax in fig.axes
        ]
        save(fig, path)

    monkeypatch.setattr(report, "_save", keep)
    report.write_figures(str(tmp_path), results)
    for subset, lines in zip(SUBSETS, drawn["calibration.png"]):
        c = results["methods"]["aware"]["calibration"][subset]
        label, x, y = next(line for line in lines if line[0].startswith("PSF-aware"))
        assert label == f"PSF-aware ({c['total_expected']:.0f} expected / {c['total_true']:.0f} true)"
        n = report.calibration_points(c)["num_images"]
        assert np.sum(n * np.asarray(y)) == pytest.approx(c["total_true"])  # the table's true total
        assert np.sum(n * np.asarray(x)) == pytest.approx(c["total_expected"])  # and its expected total


def test_images_are_shown_in_one_increasing_grey():
    from npejax.nn import display

    ramp = np.linspace(-1.0, 50.0, 64)[None, :] * np.ones((8, 1))
    shown, vmin, vmax = report.asinh_stretch(ramp)
    assert report.asinh_stretch is display.asinh_stretch and report.CMAP == display.CMAP == "gray"
    assert np.all(np.diff(shown, axis=1) > 0) and vmin < vmax  # brighter pixel, larger value, lighter grey
    assert np.isfinite(report.asinh_stretch(np.where(ramp > 40, np.nan, ramp))[0]).all()  # NaN shown as 0
