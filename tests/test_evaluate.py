"""Evaluation and report: the experiment end to end on a tiny configuration, degenerate inputs, errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from astropy import table as table_lib

from npejax import catalog, evaluate, metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--config.network.model.width=4", "--config.network.model.stem_blocks=1",
    "--config.network.model.stages=((1,0,1),(1,0,2),(1,0,2))", "--config.network.train.batch_size=8",
    "--config.network.train.eval_batch_size=8", "--config.network.train.steps_per_epoch=2",
    "--config.network.train.num_epochs=1", "--config.network.train.normalizer_images=16",
    "--config.network.data.num_val=16", "--config.network.simulator.num_workers=0",
    "--config.network.train.progress=False", "--config.network.data.shard_size=32",
    "--config.num_test_images=48", "--config.num_bootstrap=20", "--config.num_bins=5",
]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    out = tmp_path_factory.mktemp("experiment")
    cmd = [sys.executable, "-m", "npejax.experiment", "--config", os.path.join(ROOT, "configs/experiment_cpu.py"),
           "--out", str(out), *TINY]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_experiment_runs_end_to_end(experiment):
    out = experiment
    index = (out / "report.md").read_text()
    assert "p_many" in index and "p_one" in index and "PSF-aware" in index
    for prior in ("many", "one"):
        report = out / f"report-{prior}"
        for name in ("report.md", "metrics.json", "bins_equal.csv", "bins_reference.csv", "calibration.csv",
                     "coverage.csv", "headline.csv", "detection.png", "calibration.png", "roc.png", "coverage.png",
                     "predictions/aware.fits", "predictions/sep.fits"):
            assert (report / name).is_file(), name
        for png in report.glob("*.png"):
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        m = json.loads((report / "metrics.json").read_text())
        assert m["test_set"]["num_images"] == 48 and m["test_set"]["prior"] == prior
        assert m["test_set"]["synthetic_bank"] is True
        assert set(m["methods"]) == {"single", "unaware", "aware", "sep"}
        for name, r in m["methods"].items():
            assert len(r["bins_equal"]["recall"]["value"]) == 5
            assert len(r["bins_reference"]["recall"]["value"]) == 10
            assert sum(r["bins_equal"]["recall"]["count"]) == sum(r["bins_reference"]["recall"]["count"])
            rec = r["headline"]["recall"]["value"]
            assert rec is None or 0.0 <= rec <= 1.0
        # the baseline has no probabilities: no calibration, but detection and flux metrics
        assert m["methods"]["sep"]["calibration"] == {}
        assert m["methods"]["sep"]["bins_equal"]["accuracy"]["available"] is False
        assert m["methods"]["sep"]["headline"]["recall"]["value"] > 0.3
        text = (report / "report.md").read_text()
        assert "SYNTHETIC" in text and "![detection](detection.png)" in text and "Source Extractor" in text
    # a run of the same command again reuses everything (resume): no retraining, same test set
    cmd = [sys.executable, "-m", "npejax.evaluate", "--workdir", f"aware={out / 'networks' / 'aware'}",
           "--test-dir", str(out / "test-many"), "--out", str(out / "again"), "--num-bootstrap", "20",
           "--num-bins", "5", "--no-snr"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((out / "again" / "metrics.json").read_text())
    first = json.loads((out / "report-many" / "metrics.json").read_text())
    assert again["methods"]["aware"]["headline"] == first["methods"]["aware"]["headline"]


def test_catalog_of_another_test_set_is_a_clear_error(experiment, tmp_path):
    bad = table_lib.Table(dict(image=[0, 60], x=[1.0, 2.0], y=[1.0, 2.0], flux=[5.0, 5.0]))
    catalog.write_table(bad, tmp_path / "bad.fits")
    cmd = [sys.executable, "-m", "npejax.evaluate", "--catalog", f"mine={tmp_path / 'bad.fits'}",
           "--test-dir", str(experiment / "test-many"), "--out", str(tmp_path / "r"), "--no-baseline"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "image 60" in proc.stderr and "48 images" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--workdir", "aware"], "NAME=PATH"),
    (["--workdir", "a=/nonexistent/run", "--num-images", "4"], "no such directory"),
    (["--no-baseline"], "nothing to evaluate"),
])
def test_bad_command_lines(tmp_path, args, message):
    proc = subprocess.run([sys.executable, "-m", "npejax.evaluate", "--out", str(tmp_path / "r"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_missing_test_set_without_num_images(tmp_path):
    with pytest.raises(evaluate.EvaluationError, match="no manifest.json"):
        evaluate.load_test_set(str(tmp_path / "nothing"))


def _truth(n_images):
    rng = np.random.default_rng(0)
    n = 3 * n_images
    flux = 10 ** rng.uniform(0, 2, n)
    return dict(image=np.repeat(np.arange(n_images), 3), x=rng.uniform(2, 78, n), y=rng.uniform(2, 78, n),
                flux=flux, mag=catalog.flux_to_mag(flux), is_galaxy=rng.random(n) < 0.5)


def _empty_pred():
    return {k: np.zeros(0) for k in ("image", "x", "y", "flux", "mag", "prob_source", "prob_galaxy", "flux_lo",
                                     "flux_hi")}


def test_degenerate_catalogs_give_defined_values():
    truth = _truth(10)
    cut = metrics.equal_count_edges(truth["mag"], 4)
    # a network that predicts nothing
    r = evaluate.evaluate_catalog(truth, _empty_pred(), 10, cut, num_bootstrap=10)
    assert np.all(r["bins_equal"]["recall"]["value"] == 0) and r["headline"]["recall"]["value"] == 0
    assert r["bins_equal"]["precision"]["num_defined"] == 0
    assert r["calibration"]["all"]["total_expected"] == 0
    json.dumps(metrics.to_jsonable(r), allow_nan=False)
    # an empty truth catalog (images without sources): recall undefined, precision 0 for any detection
    pred = dict(truth, prob_source=np.ones(30), prob_galaxy=np.full(30, 0.5), flux_lo=truth["flux"] / 2,
                flux_hi=truth["flux"] * 2)
    empty_truth = {k: v[:0] for k, v in truth.items()}
    r = evaluate.evaluate_catalog(empty_truth, pred, 10, cut, num_bootstrap=10)
    assert r["bins_equal"]["recall"]["num_defined"] == 0
    assert r["headline"]["precision"]["value"] == 0.0
    json.dumps(metrics.to_jsonable(r), allow_nan=False)
    # perfect predictions
    r = evaluate.evaluate_catalog(truth, dict(pred, prob_galaxy=truth["is_galaxy"].astype(float)), 10, cut,
                                  num_bootstrap=10)
    for key in ("precision", "recall", "accuracy"):
        assert r["headline"][key]["value"] == 1.0
    assert r["headline"]["mape"]["value"] == 0.0


def test_mismatched_image_counts_raise():
    truth = _truth(5)
    pred = dict(truth, image=truth["image"] + 3)  # refers to images 5..7 of a 5-image set
    with pytest.raises(ValueError, match="prediction"):
        evaluate.evaluate_catalog(truth, pred, 5, metrics.REFERENCE_CUTOFFS, num_bootstrap=5)
