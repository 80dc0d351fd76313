"""`python -m npejax.simulate` end to end: dataset, manifest, truth catalog, resume, and clear input errors."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import cpu_small  # the repository root is on sys.path (conftest.py)
from npejax import catalogs as catalog
from npejax import datasets, simulate
from npejax.sim import fields, pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join("configs", "cpu_small.py")


def _run(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "npejax.simulate", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def val_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cli") / "val")
    csv = os.path.join(os.path.dirname(out), "val_truth.csv")
    # one worker process: the -m entry point must survive spawned workers re-importing it
    result = _run(
        "--config",
        CONFIG,
        "--split",
        "val",
        "--num-images",
        "8",
        "--shard-size",
        "4",
        "--out",
        out,
        "--config.simulator.num_workers=1",
        "--catalog",
        csv,
        "--noprogress",
    )
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
    np.testing.assert_allclose(other["x"], truth["x"], rtol=0, atol=5e-4)  # CSV: x to 0.001 pixel
    assert truth.meta["PIXCONV"] == other.meta["PIXCONV"] == "CENTER0"

    assert "8 images in 2 shards" in result.stdout
    assert f"sources: {n_sources.sum()} ({n_sources.sum() / 8:.3f} per image)" in result.stdout
    assert "dropped by the one-per-tile rule" in result.stdout and "images/s" in result.stdout


def test_cli_rerun_resumes_and_mismatch_is_refused(val_run):
    out, _, _ = val_run
    again = _run(
        "--config",
        CONFIG,
        "--split",
        "val",
        "--num-images",
        "8",
        "--shard-size",
        "4",
        "--out",
        out,
        "--num-workers",
        "0",
        "--noprogress",
    )
    assert again.returncode == 0, again.stderr
    assert "2 already present, 0 rendered now" in again.stdout

    other = _run(
        "--config",
        CONFIG,
        "--split",
        "val",
        "--num-images",
        "12",
        "--shard-size",
        "4",
        "--out",
        out,
        "--num-workers",
        "0",
        "--noprogress",
    )
    assert other.returncode != 0
    assert out in other.stderr and "num_images: 8 -> 12" in other.stderr
    assert "Traceback" not in other.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--split", "bogus"], "--split=bogus"),
        (["--split", "val", "--num-images", "0"], "must be >= 1, got 0"),
        (["--split", "val", "--config.prior.no_such_key=1"], "no_such_key"),
        (["--split", "val", "--config.render.noise=loud"], "render.noise"),
        (["--split", "val", "--catalog", "truth.txt"], "'.txt'"),
        (["--split", "val", "--config", "configs/no_such_config.py"], "no_such_config.py"),
    ],
)
@pytest.mark.fast
def test_cli_bad_input(tmp_path, args, message):
    result = _run("--config", CONFIG, "--out", str(tmp_path / "d"), "--num-workers", "0", *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "d")


# --- output paths and banks refused before any rendering (in-process: the command's main) -------------


def _main(capsys, *args):
    rc = simulate.main(
        [
            "npejax.simulate",
            "--config",
            os.path.join(ROOT, CONFIG),
            "--split",
            "val",
            "--num-images",
            "2",
            "--num-workers",
            "0",
            "--noprogress",
            *[str(a) for a in args],
        ]
    )
    return rc, capsys.readouterr()


@pytest.mark.parametrize(
    "where, message",
    [
        ("file", "is an existing file, not a directory"),
        ("under-file", "is a file, so no directory can be made under it"),
        ("proc", "cannot write in /proc"),
    ],
)
@pytest.mark.fast
def test_unusable_out_is_refused_before_rendering(tmp_path, capsys, where, message):
    blocker = tmp_path / "afile"
    blocker.write_text("keep\n")
    out = {"file": blocker, "under-file": blocker / "d", "proc": "/proc/npejax-test-dataset"}[where]
    rc, captured = _main(capsys, "--out", out)
    assert rc == 2 and captured.err.startswith(f"error: --out {out}") and captured.err.count("\n") == 1, captured.err
    assert message in captured.err
    assert "simulating" not in captured.out and blocker.read_text() == "keep\n"
    assert sorted(os.listdir(tmp_path)) == ["afile"]


@pytest.mark.fast
def test_bank_with_frames_smaller_than_the_image_is_refused(tmp_path, capsys):
    bank_path = tmp_path / "small_frames.npz"
    dataclasses.replace(fields.load_bank().subset([0, 1]), frame_shape=(40, 60)).save(bank_path)
    out = tmp_path / "d"
    rc, captured = _main(capsys, "--out", out, f"--config.fields.bank={bank_path}")
    assert rc == 2 and captured.err.count("\n") == 1, captured.err
    assert f"field bank {bank_path}" in captured.err and "40 x 60" in captured.err and "80 x 80" in captured.err
    assert not out.exists()
    # the simulator's own check names the bank too
    with pytest.raises(
        ValueError,
        match=r"small_frames.npz: its frames are 40 x 60 pixels, smaller than the image "
        r"size 80 x 80",
    ):
        fields.load_bank(bank_path).sample_crop_origins(np.random.default_rng(0), 1, (80, 80))
