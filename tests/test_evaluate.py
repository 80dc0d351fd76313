"""Evaluation: the experiment and evaluate commands end to end on a tiny configuration (files checked
against the metrics they hold and against metrics recomputed from the written catalogs), a perfect
catalog through the command line, degenerate inputs, errors, and the experiment's network configs."""

import csv
import json
import math
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from astropy import table as table_lib

from configs import cpu, default, experiment_cpu, experiment_cpu30, psf_aware, psf_unaware, single_field
from npejax import catalogs as catalog
from npejax import configuration, datasets
from npejax import evaluate as evaluate_cmd
from npejax.evaluation import baseline, evaluate, metrics, snr
from npejax.evaluation import experiment as experiment_lib
from npejax.evaluation.settings import EvalSettings, EvaluationError
from npejax.nn.posterior import tiles_to_sources
from npejax.nn.predictor import Predictor
from npejax.schema import METRIC_LABELS
from npejax.sim import fields, pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--config.network.model.width=4",
    "--config.network.model.stem_blocks=1",
    "--config.network.model.stages=((1,0,1),(1,0,2),(1,0,2))",
    "--config.network.train.batch_size=8",
    "--config.network.train.eval_batch_size=8",
    "--config.network.train.images_per_epoch=16",
    "--config.network.train.num_epochs=1",
    "--config.network.train.normalizer_images=16",
    "--config.network.data.num_val=16",
    "--config.network.simulator.num_workers=0",
    "--config.network.train.progress=False",
    "--config.network.data.shard_size=32",
    "--config.network.data.num_test=48",
    "--config.network.eval.num_bootstrap=20",
    "--config.network.eval.num_bins=5",
]
NUM_BOOTSTRAP, NUM_BINS = 20, 5


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    out = tmp_path_factory.mktemp("experiment")
    cmd = [
        sys.executable,
        "-m",
        "npejax.experiment",
        "--config",
        os.path.join(ROOT, "configs/experiment_cpu.py"),
        "--out",
        str(out),
        *TINY,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


# --- helpers -----------------------------------------------------------------------------------------


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _cell(text):
    return math.nan if text == "" else float(text)


def _num(value):
    return math.nan if value is None else float(value)


def _bin_rows_of(methods: dict, key: str, cutoffs) -> list[tuple]:
    """Expected rows of bins_*.csv from binned-metrics dicts (name -> {metric: {value, std, count}})."""
    edges = [math.nan, *np.asarray(cutoffs, float)]  # the first bin's -inf is written as an empty cell
    return [
        (
            name,
            metric,
            k,
            edges[k],
            edges[k + 1],
            _num(r[metric]["value"][k]),
            _num(r[metric]["std"][k]),
            int(r[metric]["count"][k]),
        )
        for name, r in methods.items()
        for metric in METRIC_LABELS
        for k in range(len(cutoffs))
    ]


def _csv_bin_rows(path) -> list[tuple]:
    """Rows of bins_*.csv; empty cells (-inf lower edge of the first bin, undefined values) read as NaN."""
    return [
        (
            r["method"],
            r["metric"],
            int(r["bin"]),
            _cell(r["lo"]),
            _cell(r["hi"]),
            _cell(r["value"]),
            _cell(r["std"]),
            int(r["count"]),
        )
        for r in _rows(path)
    ]


def _assert_rows_equal(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g[:3] == e[:3] and g[7] == e[7], (g, e)
        np.testing.assert_array_equal(g[3:7], e[3:7], err_msg=str(e))  # NaN == NaN


def _assert_headline_csv_matches(report_dir, m):
    rows = _rows(report_dir / "headline.csv")
    expected = [(name, key) for name, r in m["methods"].items() for key in r["headline"]]
    if m.get("ceiling"):
        expected += [("ceiling", "accuracy"), ("ceiling", "accuracy_pooled")]
    assert [(r["method"], r["metric"]) for r in rows] == expected
    for r in rows:
        if r["method"] == "ceiling":
            c = m["ceiling"]["headline"]
            h = (
                dict(value=c["value"], std=c["std"], count=c["count"])
                if r["metric"] == "accuracy"
                else dict(value=c["pooled"], std=c["pooled_std"], count=c["count"])
            )
        else:
            h = m["methods"][r["method"]]["headline"][r["metric"]]
        np.testing.assert_array_equal([_cell(r["value"]), _cell(r["std"])], [_num(h["value"]), _num(h["std"])])
        assert int(r["count"]) == h["count"]


def _truth(test_dir):
    table, _, _ = catalog.dataset_truth_table(datasets.load(str(test_dir)))
    return table


# --- end to end --------------------------------------------------------------------------------------


def test_experiment_runs_end_to_end(experiment):
    out = experiment
    index = (out / "report.md").read_text()
    assert "p_many" in index and "p_one" in index and "PSF-aware" in index
    for prior in ("many", "one"):
        report = out / f"report-{prior}"
        for name in (
            "report.md",
            "metrics.json",
            "bins_equal.csv",
            "bins_reference.csv",
            "bins_snr.csv",
            "calibration.csv",
            "coverage.csv",
            "headline.csv",
            "detection.png",
            "calibration.png",
            "roc.png",
            "coverage.png",
            "snr.png",
            "gallery.png",
            "predictions/aware.fits",
            "predictions/sep.fits",
        ):
            assert (report / name).is_file(), name
        assert not [p for p in report.rglob("*") if ".tmp" in p.name]
        for png in report.glob("*.png"):
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        m = json.loads((report / "metrics.json").read_text())
        assert m["test_set"]["num_images"] == 48 and m["test_set"]["prior"] == prior
        assert m["test_set"]["synthetic_bank"] is True
        assert set(m["methods"]) == {"single", "unaware", "aware", "aware_cb", "sep"}

        # the files hold the metrics of metrics.json ...
        _assert_headline_csv_matches(report, m)
        _assert_rows_equal(
            _csv_bin_rows(report / "bins_equal.csv"),
            _bin_rows_of({k: r["bins_equal"] for k, r in m["methods"].items()}, "bins_equal", m["equal_cutoffs"]),
        )
        # ... and those are binned_metrics of the written detections against the test set's truth
        truth = _truth(out / f"test-{prior}")
        assert len(truth) == m["test_set"]["num_sources"]
        recomputed = {}
        for name in m["methods"]:
            pred = catalog.read_table(report / "predictions" / f"{name}.fits")
            if name != "sep":
                assert np.all(np.asarray(pred["prob_source"]) > 0.5)
            recomputed[name] = metrics.binned_metrics(
                truth, pred, 48, cutoffs=m["equal_cutoffs"], num_bootstrap=NUM_BOOTSTRAP, seed=0, prob_threshold=0.5
            )
            # headline: the mean over reference bins 1-7 (to r 21.227), and the pooled figure for r < 21.2
            head = m["methods"][name]["headline"]
            recall = metrics.binned_metrics(
                truth, pred, 48, cutoffs=(21.2,), num_bootstrap=NUM_BOOTSTRAP, seed=0, prob_threshold=0.5
            )["recall"]
            np.testing.assert_array_equal(_num(head["recall_pooled"]["value"]), recall["value"][0])
            ref = np.array([_num(v) for v in m["methods"][name]["bins_reference"]["recall"]["value"][:7]])
            np.testing.assert_allclose(_num(head["recall"]["value"]), np.nanmean(ref), rtol=1e-12)
            assert head["recall"]["bins"] == 7 and head["precision"]["bins"] == 8 and head["accuracy"]["bins"] == 10
            assert len(m["methods"][name]["bins_reference"]["recall"]["value"]) == 10
            assert (
                sum(m["methods"][name]["bins_equal"]["recall"]["count"])
                == sum(m["methods"][name]["bins_reference"]["recall"]["count"])
                == int(np.sum(truth["mag"] <= 22.0))
            )
        _assert_rows_equal(
            _csv_bin_rows(report / "bins_equal.csv"), _bin_rows_of(recomputed, "bins_equal", m["equal_cutoffs"])
        )

        # the baseline has no probabilities: no calibration, but detection and flux metrics
        assert m["methods"]["sep"]["calibration"] == {}
        assert m["methods"]["sep"]["bins_equal"]["accuracy"]["available"] is False
        assert m["methods"]["sep"]["headline"]["recall"]["value"] > 0.3
        text = (report / "report.md").read_text()
        assert "SYNTHETIC" in text and "![detection](detection.png)" in text and "Source Extractor" in text
        assert "![gallery](gallery.png)" in text and len(m["gallery"]["images"]) == 12

        # each network at sep's operating point: its fixed-threshold column is its own reference-bin precision and
        # recall, the reference is sep's, and the best precision at sep's recall is at least that at 0.5 wherever
        # the network's recall at 0.5 already reaches sep's
        assert "operating point" in text and (report / "operating_points.csv").is_file()
        sep_ref = m["methods"]["sep"]["bins_reference"]
        for name in ("single", "unaware", "aware", "aware_cb"):
            a = {
                k: np.array([_num(v) for v in vals])
                for k, vals in m["methods"][name]["at_baseline"].items()
                if isinstance(vals, list)
            }
            own = m["methods"][name]["bins_reference"]
            for ours, theirs in (
                (a["precision_at_threshold"], own["precision"]["value"]),
                (a["recall_at_threshold"], own["recall"]["value"]),
                (a["ref_precision"], sep_ref["precision"]["value"]),
                (a["ref_recall"], sep_ref["recall"]["value"]),
            ):
                np.testing.assert_array_equal(ours, np.array([_num(v) for v in theirs]))
            reach = a["recall_at_threshold"] >= a["ref_recall"]
            assert np.all(a["precision_at_ref_recall"][reach] >= a["precision_at_threshold"][reach] - 1e-12)


def test_evaluate_command_reproduces_the_experiment(experiment, tmp_path):
    # the same test set and network evaluated again by the command: no retraining, the same numbers
    out = experiment
    rc = evaluate_cmd.main(
        [
            "npejax.evaluate",
            "--workdir",
            str(out / "networks" / "aware"),  # a plain directory: the method is its base name, aware
            "--test-dir",
            str(out / "test-many"),
            "--out",
            str(tmp_path / "again"),
            "--num-bootstrap",
            str(NUM_BOOTSTRAP),
            "--num-bins",
            str(NUM_BINS),
            "--nosnr",
        ]
    )
    assert rc == 0
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    first = json.loads((out / "report-many" / "metrics.json").read_text())
    assert set(again["methods"]) == {"aware", "sep"}
    for name in ("aware", "sep"):
        assert again["methods"][name]["headline"] == first["methods"][name]["headline"]
        assert again["methods"][name]["bins_equal"] == first["methods"][name]["bins_equal"]
    assert "bins_snr" not in again["methods"]["aware"] and not (tmp_path / "again" / "bins_snr.csv").exists()


def test_streamed_evaluation_equals_the_whole_set_at_once(experiment):
    """The report's metrics (the test set streamed in chunks) are those of catalogs made from the whole
    test set in memory at once, as evaluate did before it streamed."""
    out = experiment
    test_dir = out / "test-many"
    whole = datasets.load(str(test_dir))[:]
    truth = _truth(test_dir)
    m = json.loads((out / "report-many" / "metrics.json").read_text())
    predictor = Predictor.from_workdir(str(out / "networks" / "aware"), "best")

    def whole_catalog(batch_size):
        tiles = predictor.predict_tiles(whole["images"], whole["background"], whole["psf_params"], batch_size)
        return catalog.prediction_table(tiles_to_sources(tiles, predictor.tile_size, min_prob=-1.0))

    preds = {
        "aware": whole_catalog(256),  # evaluate's batch size
        "sep": baseline.sep_catalog(
            whole["images"], whole["background"], field_id=whole["field_id"], bank=fields.load_bank()
        ),
    }
    manifest_config = datasets.load(str(test_dir)).manifest["config"]
    spec = pipeline.SimulationSpec.from_config(ml_collections.ConfigDict(manifest_config))
    snr_values = snr.source_snr(whole, spec)[np.asarray(truth["image"]), np.asarray(truth["source"])]
    equal_cutoffs = metrics.equal_count_edges(np.asarray(truth["mag"]), NUM_BINS)
    snr_cutoffs = metrics.equal_count_edges(snr_values, NUM_BINS, max_mag=np.inf)
    assert m["equal_cutoffs"] == metrics.to_jsonable(equal_cutoffs)
    assert m["snr_cutoffs"] == metrics.to_jsonable(snr_cutoffs)  # the last, inf, is null in JSON
    for name, pred in preds.items():
        r = metrics.to_jsonable(
            evaluate.evaluate_catalog(
                truth, pred, 48, equal_cutoffs, snr_values, snr_cutoffs, num_bootstrap=NUM_BOOTSTRAP, seed=0
            )
        )
        for key in ("headline", "bins_equal", "bins_reference", "bins_snr", "calibration", "coverage", "roc"):
            assert r[key] == m["methods"][name][key], (name, key)

    # a network reads at most a chunk of images at a time, and its catalog does not depend on the chunks
    test = evaluate.load_test_set(str(test_dir))
    reads = []
    real_read = test.dataset.read
    test.dataset.read = lambda index, keys=None: reads.append(index) or real_read(index, keys)
    streamed = evaluate.network_catalog(str(out / "networks" / "aware"), test, batch_size=16, chunk_images=16)
    assert [(r.start, r.stop) for r in reads] == [(0, 16), (16, 32), (32, 48)]
    expected = whole_catalog(16)
    assert streamed.colnames == expected.colnames and len(streamed) == 48 * 400  # every tile of every image
    for col in streamed.colnames:
        np.testing.assert_array_equal(streamed[col], expected[col], err_msg=col)


def test_perfect_catalog_through_the_command(experiment, tmp_path):
    """The truth itself as a prediction catalog: precision = recall = accuracy = 1, MAPE 0, coverage 1."""
    test_dir = experiment / "test-many"
    truth = _truth(test_dir)
    pred = table_lib.Table({k: truth[k] for k in ("image", "x", "y", "flux", "mag")})
    pred["prob_source"] = np.ones(len(truth))
    pred["prob_galaxy"] = np.asarray(truth["is_galaxy"], np.float64)
    pred["flux_lo"], pred["flux_hi"] = pred["flux"] / 1.2, pred["flux"] * 1.2
    catalog.write_table(pred, tmp_path / "perfect.fits")
    out = tmp_path / "report"
    rc = evaluate_cmd.main(
        [
            "npejax.evaluate",
            "--catalog",
            f"truth={tmp_path / 'perfect.fits'}",
            "--test-dir",
            str(test_dir),
            "--out",
            str(out),
            "--nobaseline",
            "--nosnr",
            "--num-bootstrap",
            "5",
            "--num-bins",
            "4",
        ]
    )
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert list(m["methods"]) == ["truth"] and m["options"]["num_bootstrap"] == 5
    head = m["methods"]["truth"]["headline"]
    for key in ("precision", "recall", "accuracy", "coverage95", "auc", "precision_pooled", "recall_pooled"):
        assert head[key]["value"] == 1.0, key
    assert head["mape_pooled"] == dict(value=0.0, std=0.0, count=int(np.sum(truth["mag"] <= 22.0)))
    assert head["mape"] == dict(value=0.0, std=0.0, count=int(np.sum(truth["mag"] <= 22.0)), bins=10, num_defined=10)
    assert head["recall_pooled"]["count"] == int(np.sum(truth["mag"] <= 21.2)) and head["recall"]["std"] == 0.0
    assert head["recall"]["count"] == int(np.sum(truth["mag"] < 21.227))
    # the r-band ceiling of this test set: at most 200 galaxies per bin, all of them here; a perfect catalog
    # beats it (it knows the types), but the ceiling is near 1 at the bright end and below 1 at the faint end
    ceil = m["ceiling"]
    assert ceil["options"]["max_per_bin"] == 200
    num_gal = sum(np.asarray(truth["is_galaxy"]) & (np.asarray(truth["mag"]) <= 22.0))
    assert sum(ceil["bins_reference"]["num_galaxies"]) == num_gal == ceil["headline"]["count"]
    values = np.array([_num(v) for v in ceil["bins_reference"]["value"]])
    assert np.nanmin(values) < 1.0 and np.all(values[np.isfinite(values)] <= 1.0)
    assert values[0] == 1.0 or ceil["bins_reference"]["galaxy_fraction"][0] > 0
    bins = m["methods"]["truth"]["bins_equal"]
    assert len(bins["recall"]["value"]) == 4 and bins["recall"]["value"] == [1.0] * 4
    assert bins["mape"]["value"] == [0.0] * 4 and bins["recall"]["mean"] == 1.0
    cal = m["methods"]["truth"]["calibration"]["all"]
    assert cal["total_expected"] == cal["total_true"] == len(truth)
    _assert_headline_csv_matches(out, m)
    _assert_rows_equal(
        _csv_bin_rows(out / "bins_equal.csv"), _bin_rows_of({"truth": bins}, "bins_equal", m["equal_cutoffs"])
    )
    with open(out / "headline.csv", newline="") as f:
        assert f.readline() == "method,metric,label,value,std,count\n"
    written = catalog.read_table(out / "predictions" / "truth.fits")
    assert len(written) == len(truth)
    assert sorted(os.listdir(out)) == sorted(
        [
            "metrics.json",
            "bins_equal.csv",
            "bins_reference.csv",
            "calibration.csv",
            "coverage.csv",
            "headline.csv",
            "ceiling.csv",
            "predictions",
            "detection.png",
            "calibration.png",
            "roc.png",
            "coverage.png",
            "gallery.png",
            "report.md",
        ]
    )
    rows = _rows(out / "ceiling.csv")
    assert {r["bins"] for r in rows} == {"equal", "reference"} and len(rows) == 4 + 10
    for r in rows[4:]:
        k = int(r["bin"])
        np.testing.assert_array_equal(_cell(r["value"]), _num(ceil["bins_reference"]["value"][k]))
        assert int(r["num_galaxies"]) == ceil["bins_reference"]["num_galaxies"][k]


def test_ceiling_can_be_turned_off_and_is_the_same_for_every_method(experiment, tmp_path):
    test_dir = experiment / "test-many"
    truth = _truth(test_dir)
    pred = table_lib.Table({k: truth[k] for k in ("image", "x", "y", "flux", "mag")})

    def settings(out, **eval_keys):
        return EvalSettings.create(
            str(tmp_path / out),
            default.get_config(),
            test_dir=str(test_dir),
            catalogs={"truth": pred},
            progress=False,
            baseline=False,
            num_bootstrap=5,
            num_bins=4,
            snr=False,
            **eval_keys,
        )

    m = evaluate.evaluate(settings("off", ceiling_galaxies=0))
    assert m["ceiling"] is None and not (tmp_path / "off" / "ceiling.csv").exists()
    assert "ceiling" not in (tmp_path / "off" / "report.md").read_text()
    first = json.loads((experiment / "report-many" / "metrics.json").read_text())["ceiling"]
    m = evaluate.evaluate(settings("on", ceiling_galaxies=2))
    assert max(m["ceiling"]["bins_reference"]["num_galaxies"]) <= 2 and m["options"]["ceiling_galaxies"] == 2
    # with the cap of the experiment (eval.ceiling_galaxies of configs/default.py, 200: every galaxy) the reference
    # bins are the experiment's
    m = evaluate.evaluate(settings("again"))
    assert m["options"]["ceiling_galaxies"] == default.get_config().eval.ceiling_galaxies == 200
    assert metrics.to_jsonable(m["ceiling"]["bins_reference"]) == first["bins_reference"]
    with pytest.raises(EvaluationError, match="ceiling"):
        EvalSettings.create(str(tmp_path / "x"), test_dir=str(test_dir), catalogs={"ceiling": pred})
    with pytest.raises(EvaluationError, match=r"eval.ceiling_galaxies must be >= 0 \(0: no r-band ceiling\), got -1"):
        settings("x", ceiling_galaxies=-1)
    assert not (tmp_path / "x").exists()


def test_catalog_of_another_test_set_is_a_clear_error(experiment, tmp_path, capsys):
    bad = table_lib.Table(dict(image=[0, 60], x=[1.0, 2.0], y=[1.0, 2.0], flux=[5.0, 5.0]))
    catalog.write_table(bad, tmp_path / "bad.fits")
    rc = evaluate_cmd.main(
        [
            "npejax.evaluate",
            "--catalog",
            f"mine={tmp_path / 'bad.fits'}",
            "--test-dir",
            str(experiment / "test-many"),
            "--out",
            str(tmp_path / "r"),
            "--nobaseline",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert "image 60" in err and "48 images" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workdir", "a="], "--workdir expects NAME=PATH or PATH, got 'a='"),
        (["--workdir", "runs/aware", "--num-images", "4"], "--workdir aware=runs/aware: no such directory"),
        (["--workdir", "/"], "--workdir /: its base name '' cannot name the method"),
        (["--workdir", "x/aware", "--workdir", "y/aware"], "--workdir name 'aware' given twice; give NAME=PATH"),
        (["--baseline", "--no-baseline"], "give --baseline or --nobaseline, not --no-baseline as well"),
        (["--catalog", "a=x.fits", "--catalog", "a=y.fits"], "--catalog name 'a' given twice"),
        (["--workdir", "a=/nonexistent/run", "--num-images", "4"], "--workdir a=/nonexistent/run: no such directory"),
        (["--nobaseline"], "nothing to evaluate"),
        (["--workdir", "sep={tmp}"], "not 'sep'"),
        (["--workdir", "a={tmp}"], "give --num-images N (simulate a test set) or --test-dir DATASET"),
        (["--workdir", "a={tmp}", "--num-images", "0"], "--num-images must be >= 1, got 0"),
        (["--catalog", "a=x.fits", "--test-dir", "{tmp}"], "has no manifest.json"),
        (["--prior", "few"], "--prior=few"),
        (["--num-bins", "many"], "--num-bins"),
    ],
)
@pytest.mark.fast
def test_bad_command_lines(tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    rc = evaluate_cmd.main(["npejax.evaluate", "--out", str(tmp_path / "r"), *args])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "r").exists()


@pytest.mark.fast
def test_earlier_spellings_still_work_with_a_warning(tmp_path, capsys):
    """--no-baseline, --no-snr, --no-ceiling: the --nobaseline, ... of before, one warning line each."""
    args = ["npejax.evaluate", "--out", str(tmp_path / "r"), "--catalog", "a=x.fits", "--test-dir", str(tmp_path)]
    rc = evaluate_cmd.main([*args, "--no-baseline", "--no-snr", "--no-ceiling", "--num_bins", "3"])
    lines = capsys.readouterr().err.splitlines()
    assert rc == 2 and lines[-1].startswith("error: ") and "has no manifest.json" in lines[-1]
    assert lines[:-1] == [f"warning: --no-{n} is deprecated; give --no{n}" for n in ("baseline", "snr", "ceiling")]
    assert evaluate_cmd.main(["npejax.evaluate", "--help"]) == 0
    flags_help = capsys.readouterr().out.split("flags:")[1]
    assert "--[no]baseline:" in flags_help and "--[no]snr:" in flags_help and "--no-baseline" not in flags_help
    assert "--num-bins (or --num_bins)" in flags_help and "--test-dir (or --test_dir)" in flags_help


@pytest.mark.fast
def test_out_is_required(capsys):
    assert evaluate_cmd.main(["npejax.evaluate", "--nobaseline"]) == 2
    assert capsys.readouterr().err.startswith("error: flag --out=None")


@pytest.mark.fast
def test_missing_test_set_without_num_images(tmp_path):
    with pytest.raises(evaluate.EvaluationError, match="no manifest.json"):
        evaluate.load_test_set(str(tmp_path / "nothing"))


# --- the experiment's networks -----------------------------------------------------------------------


@pytest.mark.fast
def test_network_configs_come_from_their_config_files():
    config = experiment_cpu.get_config()
    paper = {"single": ("single_field", "one"), "unaware": ("psf_unaware", "many"), "aware": ("psf_aware", "many")}
    for name, module in (("single", single_field), ("unaware", psf_unaware), ("aware", psf_aware)):
        net = experiment_lib.network_config(config, name)
        own = module.get_config()
        assert (net.model.variant, net.fields.prior) == (own.model.variant, own.fields.prior) == paper[name]
        assert net.model.width == config.network.model.width == 16  # the shared (cpu_small) settings
    assert config.network.model.variant == "psf_aware"  # the shared config is not modified
    with pytest.raises(ValueError, match="config.networks='single,big'"):
        experiment_lib._names("single,big", list(config.network_settings), "networks")


@pytest.mark.fast
def test_experiment_at_cpu_size_trains_configs_cpu_and_shares_the_test_sets():
    """configs/experiment_cpu30.py: its checkerboard network is configs/cpu.py exactly, and it differs from
    experiment_cpu.py only in the training images, so the two share test sets (the --out's test-{many,one})."""
    config = experiment_cpu30.get_config()
    network = configuration.to_json(experiment_lib.network_config(config, "aware_cb"))
    own = configuration.to_json(cpu.get_config())
    assert configuration.differences(own, network) == ["data.num_test: 512 -> 2000"]  # the experiment's test sets
    assert configuration.saved_differences(own, experiment_lib.network_config(config, "aware_cb")) == []
    small = experiment_cpu.get_config()
    differences = configuration.differences(small.to_dict(), config.to_dict())
    assert differences == ["network.train.images_per_epoch: 1280 -> 6656"]


# --- degenerate inputs -------------------------------------------------------------------------------


def _synthetic_truth(n_images):
    rng = np.random.default_rng(0)
    n = 3 * n_images
    flux = 10 ** rng.uniform(0, 2, n)
    return dict(
        image=np.repeat(np.arange(n_images), 3),
        x=rng.uniform(2, 78, n),
        y=rng.uniform(2, 78, n),
        flux=flux,
        mag=catalog.flux_to_mag(flux),
        is_galaxy=rng.random(n) < 0.5,
    )


def _empty_pred():
    return {
        k: np.zeros(0) for k in ("image", "x", "y", "flux", "mag", "prob_source", "prob_galaxy", "flux_lo", "flux_hi")
    }


@pytest.mark.fast
def test_degenerate_catalogs_give_defined_values():
    truth = _synthetic_truth(10)
    cut = metrics.equal_count_edges(truth["mag"], 4)
    # a network that predicts nothing
    r = evaluate.evaluate_catalog(truth, _empty_pred(), 10, cut, num_bootstrap=10)
    assert np.all(r["bins_equal"]["recall"]["value"] == 0) and r["headline"]["recall"]["value"] == 0
    assert r["bins_equal"]["precision"]["num_defined"] == 0
    assert r["calibration"]["all"]["total_expected"] == 0
    json.dumps(metrics.to_jsonable(r), allow_nan=False)
    # an empty truth catalog (images without sources): recall undefined, precision 0 for any detection
    pred = dict(
        truth,
        prob_source=np.ones(30),
        prob_galaxy=np.full(30, 0.5),
        flux_lo=truth["flux"] / 2,
        flux_hi=truth["flux"] * 2,
    )
    empty_truth = {k: v[:0] for k, v in truth.items()}
    r = evaluate.evaluate_catalog(empty_truth, pred, 10, cut, num_bootstrap=10)
    assert r["bins_equal"]["recall"]["num_defined"] == 0
    assert r["headline"]["precision"]["value"] == 0.0
    json.dumps(metrics.to_jsonable(r), allow_nan=False)
    # perfect predictions
    r = evaluate.evaluate_catalog(
        truth, dict(pred, prob_galaxy=truth["is_galaxy"].astype(float)), 10, cut, num_bootstrap=10
    )
    for key in ("precision", "recall", "accuracy"):
        assert r["headline"][key]["value"] == 1.0
    assert r["headline"]["mape"]["value"] == 0.0


@pytest.mark.fast
def test_mismatched_image_counts_raise():
    truth = _synthetic_truth(5)
    pred = dict(truth, image=truth["image"] + 3)  # refers to images 5..7 of a 5-image set
    with pytest.raises(ValueError, match="prediction"):
        evaluate.evaluate_catalog(truth, pred, 5, metrics.REFERENCE_CUTOFFS, num_bootstrap=5)
