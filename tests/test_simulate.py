"""`python -m npejax.simulate` end to end: dataset, manifest, truth catalog, resume, and clear input errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import cpu_small  # the repository root is on sys.path (conftest.py)
from npejax import catalogs as catalog, datasets
from npejax.sim import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join("configs", "cpu_small.py")


def _run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "npejax.simulate", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def val_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cli") / "val")
    csv = os.path.join(os.path.dirname(out), "val_truth.csv")
    # one worker process: the -m entry point must survive spawned workers re-importing it
    result = _run("--config", CONFIG, "--split", "val", "--num-images", "8", "--shard-size", "4", "--out", out,
                  "--config.simulator.num_workers=1", "--catalog", csv, "--noprogress")
    assert result.returncode == 0, result.stderr
    return out, csv, result


def test_cli_writes_dataset_manifest_and_truth(val_run):
    out, csv, result = val_run
    config = cpu_small.get_config()
    with open(os.path.join(out, "manifest.json")) as f:
        m = json.load(f)
    seed = datasets.split_seed(config.seed, "val")
    assert (m["split"], m["seed"], m["num_images"], m["shard_size"], m["num_shards"]) == ("val", seed, 8, 4, 2)
    assert m["complete"] and m["config"]["simulator"]["num_workers"] == 1
    assert m["config"]["data"]["num_val"] == config.data.num_val

    ds = datasets.load(out)
    spec = pipeline.SimulationSpec.from_config(config, seed=seed, batch_size=4)
    expected = pipeline.simulate_batch(spec, 1)
    for key in ds.keys:
        np.testing.assert_array_equal(ds[4:8][key], expected[key], err_msg=key)

    truth = catalog.read_table(os.path.join(out, "truth.fits"))
    n_sources = ds[:]["n_sources"]
    assert len(truth) == n_sources.sum()
    np.testing.assert_array_equal(np.bincount(truth["image"], minlength=8), n_sources)
    np.testing.assert_allclose(truth["mag"], 22.5 - 2.5 * np.log10(np.asarray(truth["flux"], float)), rtol=1e-6)
    other = catalog.read_table(csv)
    assert other.colnames == truth.colnames and len(other) == len(truth)
    np.testing.assert_array_equal(np.asarray(other["x"], np.float32), truth["x"])

    assert "8 images in 2 shards" in result.stdout
    assert f"sources: {n_sources.sum()} ({n_sources.sum() / 8:.3f} per image)" in result.stdout
    assert "dropped by the one-per-tile rule" in result.stdout and "images/s" in result.stdout


def test_cli_rerun_resumes_and_mismatch_is_refused(val_run):
    out, _, _ = val_run
    again = _run("--config", CONFIG, "--split", "val", "--num-images", "8", "--shard-size", "4", "--out", out,
                 "--num-workers", "0", "--noprogress")
    assert again.returncode == 0, again.stderr
    assert "2 already present, 0 rendered now" in again.stdout

    other = _run("--config", CONFIG, "--split", "val", "--num-images", "12", "--shard-size", "4", "--out", out,
                 "--num-workers", "0", "--noprogress")
    assert other.returncode != 0
    assert out in other.stderr and "num_images: 8 -> 12" in other.stderr
    assert "Traceback" not in other.stderr


@pytest.mark.parametrize("args, message", [
    (["--split", "bogus"], "--split=bogus"),
    (["--split", "val", "--num-images", "0"], "must be >= 1, got 0"),
    (["--split", "val", "--config.prior.no_such_key=1"], "no_such_key"),
    (["--split", "val", "--config.render.noise=loud"], "render.noise"),
    (["--split", "val", "--catalog", "truth.txt"], "'.txt'"),
    (["--split", "val", "--config", "configs/no_such_config.py"], "no_such_config.py"),
])
def test_cli_bad_input(tmp_path, args, message):
    result = _run("--config", CONFIG, "--out", str(tmp_path / "d"), "--num-workers", "0", *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "d")
