"""Training end to end on a tiny configuration: CLI, resume after a kill, checkpoint round trip, errors."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from npejax import datasets as data
from npejax import io
from npejax import main as train_main
from npejax.nn import checkpoints, predictor, train
from npejax.sim import pipeline


@pytest.fixture
def run_main(root, config_path, tiny_flags):
    """``run_main(workdir, *flags, wait=True)``: ``python -m npejax.main`` on the tiny cpu_small config;
    (returncode, output), or the process when ``wait`` is False."""

    def run(workdir, *extra, wait=True):
        cmd = [
            sys.executable,
            "-m",
            "npejax.main",
            "--config",
            config_path("cpu_small"),
            "--workdir",
            str(workdir),
            *tiny_flags(),
            *extra,
        ]
        proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if not wait:
            return proc
        out, _ = proc.communicate(timeout=600)
        return proc.returncode, out

    return run


def test_cli_trains_and_resumes_after_a_kill(tmp_path, run_main):
    workdir = tmp_path / "run"
    proc = run_main(workdir, "--config.train.num_epochs=30", wait=False)
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

    code, out = run_main(workdir, f"--config.train.num_epochs={saved + 2}")
    assert code == 0, out
    assert f"Resuming after epoch {saved}" in out
    rows = (workdir / "metrics.csv").read_text().strip().splitlines()
    epochs = [int(r.split(",")[0]) for r in rows[1:]]
    assert epochs[-2:] == [saved + 1, saved + 2]
    assert "validation NLL" in out and (workdir / "checkpoints" / "best").is_dir()
    saved_config = json.loads((workdir / "config.json").read_text())
    assert saved_config["train"]["num_epochs"] == saved + 2 and saved_config["train"]["images_per_epoch"] == 16
    assert len(os.listdir(workdir / "tensorboard")) == 2  # one event file per run
    assert not [name for name in os.listdir(workdir) if io.is_temporary(name)]


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--config.train.learning_rat=0.1", "learning_rat"),
        ("--config.model.dtype=float16", "model.dtype must be 'float32' or 'bfloat16', got 'float16'"),
        ("--config.train.images_per_epoch=4", "train.images_per_epoch=4 is smaller than train.batch_size=8"),
    ],
)
@pytest.mark.fast
def test_bad_config_is_one_error_line(tmp_path, config_path, tiny_flags, capsys, flag, message):
    code = train_main.main(
        ["npejax-train", "--config", config_path("cpu_small"), "--workdir", str(tmp_path / "bad"), *tiny_flags(), flag]
    )  # in-process: the same code path
    out, err = capsys.readouterr()
    assert code == 2 and err.startswith("error:") and len(err.splitlines()) == 1 and message in err, err
    assert out == "" and not (tmp_path / "bad").exists()


def test_checkpoint_round_trip_gives_identical_predictions(tmp_path, tiny_config):
    config = tiny_config()
    summary = train.train_and_evaluate(config, str(tmp_path))
    assert summary["epochs"] == 2 and np.isfinite(summary["best_val_nll"])
    assert [row["step"] for row in summary["history"]] == [2, 4]  # images_per_epoch 16 / batch 8
    state = summary["state"]
    in_memory = predictor.Predictor(
        config, {"params": state.params, "batch_stats": state.batch_stats}, summary["normalizer"]
    )
    restored = predictor.Predictor.from_workdir(str(tmp_path), "latest")
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
    odd_table = restored.catalog(b["images"][:, :78, :75], b["background"][:, :78, :75], b["psf_params"], min_prob=0.0)
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
    with pytest.raises(checkpoints.CheckpointError, match="does not exist"):
        predictor.Predictor.from_workdir(str(tmp_path / "missing"))
    with pytest.raises(checkpoints.CheckpointError, match="not an npejax training directory"):
        predictor.Predictor.from_workdir(str(tmp_path / "checkpoints"))

    # a finished run started again trains nothing and keeps its history
    rows = (tmp_path / "metrics.csv").read_text()
    again = train.train_and_evaluate(config, str(tmp_path))
    assert again["epochs"] == 2 and (tmp_path / "metrics.csv").read_text() == rows


def _stored_state_keys(workdir) -> list:
    with checkpoints._existing_manager(str(workdir / "checkpoints" / "latest")) as manager:
        return sorted(manager.item_metadata(manager.latest_step())["state"].keys())


def test_checkpoint_layout_without_the_average_is_the_earlier_one(tmp_path, tiny_config):
    """Without train.ema_decay the state's checkpoint holds exactly the four items every earlier checkpoint
    holds, so that those keep loading (an added state field, even None, breaks their restore)."""
    config = tiny_config()
    config.train.num_epochs = 1
    train.train_and_evaluate(config, str(tmp_path))
    assert _stored_state_keys(tmp_path) == ["batch_stats", "opt_state", "params", "step"]


def test_moving_average_is_what_the_checkpoint_serves(tmp_path, tiny_config):
    """train.ema_decay: the checkpoint keeps params and their average; prediction loads the average, and a
    resume with another decay is refused (the key is not resumable)."""
    config = tiny_config()
    config.train.num_epochs = 1
    config.train.ema_decay = 0.5
    summary = train.train_and_evaluate(config, str(tmp_path))
    state = summary["state"]
    assert _stored_state_keys(tmp_path) == [
        "batch_stats",
        "ema_batch_stats",
        "ema_params",
        "opt_state",
        "params",
        "step",
    ]
    _, variables, _ = checkpoints.load_network(str(tmp_path), "latest")
    for a, b in zip(
        jax.tree_util.tree_leaves(variables),
        jax.tree_util.tree_leaves({"params": state.ema_params, "batch_stats": state.ema_batch_stats}),
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(
        bool(np.any(np.asarray(a) != np.asarray(b)))
        for a, b in zip(jax.tree_util.tree_leaves(variables["params"]), jax.tree_util.tree_leaves(state.params))
    )
    config.train.ema_decay = 0.9
    with pytest.raises(ValueError, match="train.ema_decay: 0.5 -> 0.9"):
        train.train_and_evaluate(config, str(tmp_path))


def test_training_from_cached_datasets(tmp_path, tiny_config):
    config = tiny_config()
    spec = pipeline.SimulationSpec.from_config(config, seed=1, batch_size=8)
    data.write_dataset(spec, tmp_path / "train", 16, "train", num_workers=0, progress=False)
    data.write_dataset(spec, tmp_path / "val", 8, "val", num_workers=0, progress=False)
    config.data.train_dir = str(tmp_path / "train")
    config.data.val_dir = str(tmp_path / "val")
    config.train.num_epochs = 1
    summary = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert summary["history"][0]["step"] == 2  # 16 images / batch 8


def test_simulate_first_renders_then_trains_and_a_rerun_reuses_the_data(tmp_path, tiny_config, capsys):
    """data.simulate_first: WORKDIR/data/{train,val} written first (split seeds of npejax.simulate), trained
    from; a rerun with more epochs finds them complete and renders nothing."""
    config = tiny_config()
    config.data.simulate_first, config.data.simulate_workers = True, 1
    config.data.num_train, config.data.num_val, config.data.shard_size = 24, 8, 8
    config.train.num_epochs = 1
    workdir = tmp_path / "run"
    summary = train.train_and_evaluate(config, str(workdir))
    assert "simulated 24 train images" in capsys.readouterr().out
    train_ds, val_ds = data.load(workdir / "data" / "train"), data.load(workdir / "data" / "val")
    assert (len(train_ds), len(val_ds)) == (24, 8)
    assert summary["history"][0]["step"] == 3  # one pass over the 24 cached images, batch 8
    expected = pipeline.simulate_batch(
        pipeline.SimulationSpec.from_config(config, seed=data.split_seed(config.seed, "val"), batch_size=8), 0
    )
    np.testing.assert_array_equal(val_ds[0:8]["images"], expected["images"])
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["data"]["train_dir"] == str(workdir / "data" / "train")
    config.train.num_epochs = 2
    summary = train.train_and_evaluate(config, str(workdir))  # resumes: same config once the dirs are set
    assert "simulated" not in capsys.readouterr().out and len(summary["history"]) == 2


def test_checkpoint_managers_are_closed_when_the_loop_raises(tmp_path, tiny_config, monkeypatch):
    closed = []
    close = checkpoints.ocp.CheckpointManager.close
    monkeypatch.setattr(
        checkpoints.ocp.CheckpointManager,
        "close",
        lambda self: closed.append(os.path.basename(self.directory)) or close(self),
    )

    def broken_epoch(*args, **kwargs):
        raise RuntimeError("simulated failure in the loop")

    monkeypatch.setattr(train, "run_epoch", broken_epoch)
    with pytest.raises(RuntimeError, match="simulated failure"):
        train.train_and_evaluate(tiny_config(), str(tmp_path))
    assert sorted(closed) == ["best", "latest"]
    assert not (tmp_path / "metrics.csv").exists()


def test_checkpoint_written_on_four_devices_predicts_on_one(tmp_path, root, config_path, tiny_flags):
    """A run on 4 devices (XLA's forced host devices: the batch sharded 4 ways) restores on 1 device and
    predicts the same tiles as on 4 (issue 9: "Topology mismatch" before the restore target's sharding)."""
    workdir = tmp_path / "run4"
    # LLVM at optimization level 0 in all three processes (as tests/test_devices.py): half the compile time; the
    # shardings, the restore and the 1-vs-4 comparison are decided before it
    fast = "--xla_backend_optimization_level=0"
    env4 = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count=4 {fast}")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "npejax.main",
            "--config",
            config_path("cpu_small"),
            "--workdir",
            str(workdir),
            *tiny_flags(),
            "--config.train.num_epochs=1",
        ],
        cwd=root,
        env=env4,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "devices: 4 x cpu" in proc.stdout and "mesh: data=4" in proc.stdout, proc.stdout[-2000:]
    script = (
        "import sys, json, jax, numpy as np; from npejax.nn import predictor; from npejax.sim import pipeline\n"
        "p = predictor.Predictor.from_workdir(sys.argv[1])\n"
        "spec = pipeline.SimulationSpec.from_config(p.config, seed=5, batch_size=4)\n"
        "b = pipeline.simulate_batch(spec, 0)\n"
        "t = p.predict_tiles(b['images'], b['background'], b['psf_params'])\n"
        "print(json.dumps(dict(devices=len(jax.devices()), prob=t['prob_source'].tolist())))\n"
    )
    outs = {}
    for name, env in (("one", dict(os.environ, XLA_FLAGS=fast)), ("four", env4)):
        run = subprocess.run(
            [sys.executable, "-c", script, str(workdir)], cwd=root, env=env, capture_output=True, text=True, timeout=300
        )
        assert run.returncode == 0, run.stderr[-2000:]
        outs[name] = json.loads(run.stdout.strip().splitlines()[-1])
    assert (outs["one"]["devices"], outs["four"]["devices"]) == (1, 4)
    np.testing.assert_allclose(outs["one"]["prob"], outs["four"]["prob"], rtol=1e-5, atol=1e-6)
