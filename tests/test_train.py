"""Training end to end on a tiny configuration: CLI, resume after a kill, checkpoint round trip, errors."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import cpu_small
from npejax import data, pipeline, predict, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--config.model.width=4", "--config.model.stem_blocks=1", "--config.model.stages=((1,0,1),(1,0,2),(1,0,2))",
    "--config.train.batch_size=8", "--config.train.eval_batch_size=8", "--config.train.steps_per_epoch=2",
    "--config.train.normalizer_images=16", "--config.data.num_val=16", "--config.simulator.num_workers=0",
    "--config.train.progress=False",
]


def tiny_config():
    config = cpu_small.get_config()
    config.model.width = 4
    config.model.stem_blocks = 1
    config.model.stages = ((1, 0, 1), (1, 0, 2), (1, 0, 2))
    config.train.batch_size = config.train.eval_batch_size = 8
    config.train.steps_per_epoch = 2
    config.train.num_epochs = 2
    config.train.normalizer_images = 16
    config.train.progress = False
    config.data.num_val = 16
    config.simulator.num_workers = 0
    return config


def _main(workdir, *extra, wait=True):
    cmd = [sys.executable, "-m", "npejax.main", "--config", os.path.join(ROOT, "configs/cpu_small.py"),
           "--workdir", str(workdir), *TINY, *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=600)
    return proc.returncode, out


def test_cli_trains_and_resumes_after_a_kill(tmp_path):
    workdir = tmp_path / "run"
    proc = _main(workdir, "--config.train.num_epochs=30", wait=False)
    latest = workdir / "checkpoints" / "latest"
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        done = [d for d in (os.listdir(latest) if latest.exists() else []) if d.isdigit()]
        if done and int(max(done, key=int)) >= 1:
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = max(int(d) for d in os.listdir(latest) if d.isdigit())
    assert not any(".orbax-checkpoint-tmp" in d for d in os.listdir(latest) if d.isdigit())

    code, out = _main(workdir, f"--config.train.num_epochs={saved + 2}")
    assert code == 0, out
    assert f"Resuming after epoch {saved}" in out
    rows = (workdir / "metrics.csv").read_text().strip().splitlines()
    epochs = [int(r.split(",")[0]) for r in rows[1:]]
    assert epochs[-2:] == [saved + 1, saved + 2]
    assert "validation NLL" in out and (workdir / "checkpoints" / "best").is_dir()


def test_unknown_config_key_is_rejected(tmp_path):
    code, out = _main(tmp_path / "bad", "--config.train.learning_rat=0.1")
    assert code != 0 and "learning_rat" in out


def test_checkpoint_round_trip_gives_identical_predictions(tmp_path):
    config = tiny_config()
    summary = train.train_and_evaluate(config, str(tmp_path))
    assert summary["epochs"] == 2 and np.isfinite(summary["best_val_nll"])
    state = summary["state"]
    in_memory = predict.Predictor(config, {"params": state.params, "batch_stats": state.batch_stats},
                                  summary["normalizer"])
    restored = predict.Predictor.from_workdir(str(tmp_path), "latest")
    spec = pipeline.SimulationSpec.from_config(config, seed=99, batch_size=4)
    b = pipeline.simulate_batch(spec, 0)
    a = in_memory.predict_tiles(b["images"], b["background"], b["psf_params"])
    c = restored.predict_tiles(b["images"], b["background"], b["psf_params"])
    for key in a:
        np.testing.assert_array_equal(a[key], c[key], err_msg=key)
    table = restored.catalog(b["images"], b["background"], b["psf_params"], min_prob=0.0)
    assert len(table) == 4 * 20 * 20 and {"x", "y", "flux", "prob_source", "flux_lo"} <= set(table.colnames)

    # bad input gives clear errors
    # sides that are not multiples of the tile size are padded; sources in the padding are dropped
    odd = restored.predict_tiles(b["images"][:, :78, :75], b["background"][:, :78, :75], b["psf_params"])
    assert odd["prob_source"].shape == (4, 20, 19)
    np.testing.assert_allclose(odd["prob_source"][:, :19, :18], a["prob_source"][:, :19, :18], atol=0.02)
    odd_table = restored.catalog(b["images"][:, :78, :75], b["background"][:, :78, :75], b["psf_params"],
                                 min_prob=0.0)
    assert 0 < len(odd_table) <= 4 * 20 * 19
    assert np.all(odd_table["x"] < 75) and np.all(odd_table["y"] < 78)
    with pytest.raises(ValueError, match="background of shape"):
        restored.predict_tiles(b["images"], b["background"][:, :, :60], b["psf_params"])
    with pytest.raises(ValueError, match="psf_params of shape"):
        restored.predict_tiles(b["images"], b["background"], b["psf_params"][:, :5])
    bad = b["images"].copy()
    bad[1, 5, 7] = np.nan
    with pytest.raises(ValueError, match="NaN.*image 1, row 5, column 7"):
        restored.predict_tiles(bad, b["background"], b["psf_params"])
    with pytest.raises(predict.CheckpointError, match="does not exist"):
        predict.Predictor.from_workdir(str(tmp_path / "missing"))
    with pytest.raises(predict.CheckpointError, match="not an npejax training directory"):
        predict.Predictor.from_workdir(str(tmp_path / "checkpoints"))

    # a finished run started again trains nothing and keeps its history
    rows = (tmp_path / "metrics.csv").read_text()
    again = train.train_and_evaluate(config, str(tmp_path))
    assert again["epochs"] == 2 and (tmp_path / "metrics.csv").read_text() == rows


def test_training_from_cached_datasets(tmp_path):
    config = tiny_config()
    spec = pipeline.SimulationSpec.from_config(config, seed=1, batch_size=8)
    data.write_dataset(spec, tmp_path / "train", 16, "train", num_workers=0, progress=False)
    data.write_dataset(spec, tmp_path / "val", 8, "val", num_workers=0, progress=False)
    config.data.train_dir = str(tmp_path / "train")
    config.data.val_dir = str(tmp_path / "val")
    config.train.num_epochs = 1
    summary = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert summary["history"][0]["step"] == 2  # 16 images / batch 8
