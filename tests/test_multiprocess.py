"""Many hosts on JAX's multi-process runtime (issue 9): 2 CPU processes train as 1 does.

``tests/_multiprocess_worker.py`` runs three processes at once: a one-process reference run, and a run of two
processes on localhost (coordinator ``127.0.0.1:PORT`` on a free port, the config's ``distributed`` keys, gloo
collectives, one CPU device each: a mesh of 2 devices, 4 rows of the global batch of 8 per process). Both train
the tiny network (conftest's, 32 x 32 images) for 2 epochs of 2 steps from the same cached datasets (32 training,
16 validation images written here): each process of the two reads only its rows of every global batch, so both
runs train on the same global batches (:mod:`npejax.nn.distributed`).

Tolerances, measured on the 2-core development machine (XLA at optimization level 0, as tests/test_devices.py;
the same in repeated runs): metrics.csv's losses (rounded to 4 decimals by training) equal or one unit of the last
decimal apart (relative 2.8e-6; tolerance 1e-5); the final parameters (4 Adam steps) at most 6.2e-7 apart, batch-norm
statistics 3.6e-7: float32 sums of the global batch in another order (the all-reduce over two processes); tolerance
3e-6 absolute, as test_devices.py's 4-device comparison. Predictions of the two checkpoints restored in one process:
prob_source identical, fluxes at most 4.8e-7 apart (tolerance 1e-6 + 1e-6 relative). Batch-norm statistics of a
process's own 4 rows instead of the global batch would be far outside them (test_devices.py: 2e-3 after one step).
The other two input paths are checked on their first batch without training (on-the-fly simulation: each process
its own simulator batches; ``data.on_device``: the whole set in every process, its columns of the epoch order).
A stop asked of one process (:mod:`npejax.nn.preemption`) stops both at the same step, and the resumed pair
finishes as the uninterrupted one.

Every child is started in its own session and killed (SIGKILL to its process group) when the test fails or runs
past :data:`TIMEOUT_S`: a process whose peer died otherwise waits for JAX's heartbeat timeout (100 s) or longer.
"""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time

import _multiprocess_worker as worker
import numpy as np
import pytest

from npejax import configuration
from npejax import datasets as data_lib
from npejax.nn import checkpoints, distributed, input_pipeline, train
from npejax.nn import predictor as predictor_lib
from npejax.sim import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "_multiprocess_worker.py")
TIMEOUT_S = 240
PARAM_ATOL, PREDICT_TOL, LOSS_RTOL = 3e-6, 1e-6, 1e-5
FAST_COMPILE = "--xla_backend_optimization_level=0"  # as tests/test_devices.py
CLUSTER_VARIABLES = (
    "JAX_COORDINATOR_ADDRESS",
    "SLURM_JOB_ID",
    "SLURM_NTASKS",
    "SLURM_STEP_NODELIST",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "OMPI_MCA_orte_hnp_uri",
    "OMPI_COMM_WORLD_SIZE",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_datasets(directory) -> tuple[str, str]:
    """32 training and 16 validation images of the worker's config (in this process, no workers)."""
    config = worker.config()
    dirs = []
    for split, count in (("train", 32), ("val", 16)):
        spec = pipeline.SimulationSpec.from_config(config, seed=data_lib.split_seed(config.seed, split), batch_size=16)
        out = os.path.join(directory, split)
        data_lib.write_dataset(
            spec, out, count, split, config=configuration.to_json(config), num_workers=0, shard_size=16, progress=False
        )
        dirs.append(out)
    return dirs[0], dirs[1]


def run_all(commands: dict, env: dict, timeout: float, ok: tuple = (0,)) -> dict:
    """Runs the commands at once ({name: argv}); {name: (returncode, output)}. Every child is killed (its
    process group) if one fails (an exit status not in ``ok``), or on the timeout, or on any error here."""
    procs = {}
    try:
        for name, argv in commands.items():
            procs[name] = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        deadline = time.time() + timeout
        while any(p.poll() is None for p in procs.values()):
            if time.time() > deadline or any(p.poll() not in (None, *ok) for p in procs.values()):
                break  # a failed process leaves its peer waiting: kill them all
            time.sleep(0.2)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    return {name: (proc.wait(), proc.stdout.read()) for name, proc in procs.items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{"one": (npz dict, workdir, output), "p0": ..., "p1": ...} of the reference run and the two processes."""
    tmp = tmp_path_factory.mktemp("multiprocess")
    train_dir, val_dir = make_datasets(str(tmp))
    env = {k: v for k, v in os.environ.items() if k not in CLUSTER_VARIABLES}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=FAST_COMPILE)
    port = str(free_port())
    common = [sys.executable, WORKER]
    commands = {
        "one": common + [str(tmp / "one.npz"), str(tmp / "one"), train_dir, val_dir],
        **{
            f"p{p}": common + [str(tmp / f"p{p}.npz"), str(tmp / "two"), train_dir, val_dir, port, "2", str(p)]
            for p in (0, 1)
        },
    }
    t0 = time.time()
    results = run_all(commands, env, TIMEOUT_S)
    seconds = time.time() - t0
    out = {}
    for name, (code, output) in results.items():
        assert code == 0, f"{name} exited with {code} after {seconds:.0f} s:\n" + "\n".join(
            f"--- {n}:\n{o[-2500:]}" for n, (c, o) in results.items()
        )
        with np.load(tmp / f"{name}.npz") as f:
            out[name] = ({k: f[k] for k in f.files}, tmp / ("one" if name == "one" else "two"), output)
    return out


def _group(run: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in run.items() if k.startswith(prefix)}


def _metrics(workdir) -> list[dict]:
    with open(workdir / checkpoints.METRICS_FILE) as f:
        return list(csv.DictReader(f))


def test_two_processes_share_one_mesh_and_split_the_batch(runs):
    one, p0, p1 = (runs[n][0] for n in ("one", "p0", "p1"))
    assert [int(r["process_count"]) for r in (one, p0, p1)] == [1, 2, 2]
    assert [int(r["process_index"]) for r in (p0, p1)] == [0, 1]
    assert [int(r["devices"]) for r in (one, p0, p1)] == [1, 2, 2]
    assert p0["local_rows"].tolist() == [0, 4] and p1["local_rows"].tolist() == [4, 8]
    assert str(p0["startup"]).startswith("devices: 2 x cpu (")
    assert "mesh: data=2 over 2 processes; global batch 8 = 4 per device" in str(p0["startup"])


def test_two_processes_train_as_one_with_the_same_global_batches(runs):
    one, p0, p1 = (runs[n][0] for n in ("one", "p0", "p1"))
    rows_one, rows_two = _metrics(runs["one"][1]), _metrics(runs["p0"][1])
    assert [r["epoch"] for r in rows_two] == ["1", "2"] and len(rows_one) == 2
    for key in ("train_nll", "val_nll"):
        a, b = (np.asarray([float(r[key]) for r in rows]) for rows in (rows_one, rows_two))
        assert np.all(np.isfinite(a)) and np.all(a > 0)
        np.testing.assert_allclose(b, a, rtol=LOSS_RTOL, atol=0, err_msg=key)
    np.testing.assert_array_equal(p0["history"], p1["history"])  # both processes computed the same losses
    for prefix in ("param/", "batch_stats/"):
        ones, zeros, firsts = _group(one, prefix), _group(p0, prefix), _group(p1, prefix)
        assert ones.keys() == zeros.keys() == firsts.keys() and len(ones) > 10
        for name in ones:
            np.testing.assert_array_equal(firsts[name], zeros[name], err_msg=prefix + name)  # replicated
            np.testing.assert_allclose(zeros[name], ones[name], rtol=0, atol=PARAM_ATOL, err_msg=prefix + name)
    moved = max(float(np.abs(v).max()) for k, v in _group(one, "param/").items() if k.endswith("['bias']"))
    assert moved > 1e-3  # four Adam steps moved the parameters: equal initial values would prove nothing


def test_metrics_and_checkpoints_written_once(runs):
    workdir = runs["p0"][1]
    out0, out1 = runs["p0"][2], runs["p1"][2]
    assert sorted(os.listdir(workdir)) == ["checkpoints", "config.json", "metrics.csv", "tensorboard"]
    events = os.listdir(workdir / train.TENSORBOARD_DIR)
    assert len(events) == 1 and events[0].startswith("events."), events  # one writer: process 0
    assert [line.split()[:2] for line in out0.splitlines() if line.startswith("epoch ")] == [
        ["epoch", "1"],
        ["epoch", "2"],
    ]
    assert "devices: 2 x cpu" in out0 and "validation NLL:" in out0
    assert not [line for line in out1.splitlines() if line.startswith(("epoch ", "devices:", "validation NLL"))]
    for which in checkpoints.WHICH:
        directory = workdir / "checkpoints" / which
        assert sorted(os.listdir(directory)) == ["2"], which  # one kept, no temporary left
        assert checkpoints.verify_checksums(str(directory / "2"))  # recorded (by process 0) and matching


def test_a_stop_asked_of_one_process_stops_both_at_one_step_and_they_resume(runs, tmp_path):
    """Process 1 alone is asked to stop after train step 2 (of 4 per epoch; as a signal to one process would ask):
    the processes agree one call later (:data:`npejax.nn.preemption.LAG`), both stop at epoch 1, step 3 with
    status 3, one checkpoint interrupted/3 written, no metrics row; the same commands resume and finish with the
    uninterrupted two-process run's metrics (but timing) and parameters."""
    train_dir, val_dir = (str(runs["p0"][1].parent / split) for split in ("train", "val"))
    env = {k: v for k, v in os.environ.items() if k not in CLUSTER_VARIABLES}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=FAST_COMPILE)
    workdir = tmp_path / "two"

    def commands(port):
        return {
            f"p{p}": [
                sys.executable,
                WORKER,
                str(tmp_path / f"p{p}.npz"),
                str(workdir),
                train_dir,
                val_dir,
                port,
                "2",
                str(p),
            ]
            for p in (0, 1)
        }

    stopped = run_all(commands(str(free_port())), dict(env, NPEJAX_TEST_STOP="1:2"), TIMEOUT_S, ok=(0, 3))
    for name, (code, output) in stopped.items():
        assert code == 3, f"{name} exited with {code}:\n{output[-2500:]}"
        assert "Stopped: " + ("test" if name == "p1" else "another process was asked to stop") in output, output
        assert ": stopped at epoch 1, step 3 of 4" in output, output
    assert sorted(os.listdir(workdir / "checkpoints" / checkpoints.INTERRUPTED)) == ["3"]
    assert checkpoints.verify_checksums(str(workdir / "checkpoints" / checkpoints.INTERRUPTED / "3"))
    assert not (workdir / checkpoints.METRICS_FILE).exists()

    resumed = run_all(commands(str(free_port())), env, TIMEOUT_S)
    for name, (code, output) in resumed.items():
        assert code == 0, f"{name} exited with {code}:\n{output[-2500:]}"
    assert "Resuming epoch 1 at step 3 of 4" in resumed["p0"][1]
    timing = ("images_per_s", "seconds")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]  # noqa: E731
    assert strip(_metrics(workdir)) == strip(_metrics(runs["p0"][1]))
    assert not (workdir / "checkpoints" / checkpoints.INTERRUPTED).exists()
    with np.load(tmp_path / "p0.npz") as f:
        for name, value in _group(runs["p0"][0], "param/").items():
            np.testing.assert_array_equal(f["param/" + name], value, err_msg=name)


def test_other_input_paths_feed_each_process_its_share(runs):
    """On the fly, process p renders simulator batch i * 2 + p of 4 images (its own seed stream: no image twice);
    with ``data.on_device`` every process holds the whole training set and puts its columns of the one-process
    epoch order."""
    config = worker.config()
    spec = pipeline.SimulationSpec.from_config(config, seed=data_lib.split_seed(config.seed, "train"), batch_size=4)
    for p in (0, 1):
        run = runs[f"p{p}"][0]
        assert run["fly/shape"].tolist() == [8, 32, 32]
        np.testing.assert_array_equal(run["fly/images"], pipeline.simulate_batch(spec, p)["images"])
        assert bool(run["resident/equal"]) and run["resident/shape"].tolist() == [32, 32, 32]
        order = input_pipeline.epoch_order(32, 8, config.seed)
        np.testing.assert_array_equal(run["resident/rows"], order[:1, 4 * p : 4 * p + 4])
    assert not np.array_equal(runs["p0"][0]["fly/images"], runs["p1"][0]["fly/images"])


def test_checkpoint_of_two_processes_restores_in_one_and_predicts_alike(runs):
    predictions = {}
    for name in ("one", "p0"):
        predictor = predictor_lib.Predictor.from_workdir(str(runs[name][1]), which="latest")
        ds = data_lib.load(predictor.config.data.val_dir)
        batch = ds[0:8]
        predictions[name] = predictor.predict_tiles(batch["images"], batch["background"], batch["psf_params"])
    assert predictions["one"]["prob_source"].shape == (8, 8, 8)
    for key, value in predictions["one"].items():
        np.testing.assert_allclose(predictions["p0"][key], value, rtol=PREDICT_TOL, atol=PREDICT_TOL, err_msg=key)


@pytest.mark.fast
def test_process_rows_of_cached_batches_make_the_global_batches(tmp_path):
    """``Dataset.batches(rows=)``: the processes' rows of every batch, put side by side, are the batches."""
    train_dir, _ = make_datasets(str(tmp_path))
    ds = data_lib.load(train_dir)
    for shuffle in (False, True):
        whole = list(ds.batches(8, shuffle=shuffle, seed=3, drop_remainder=True))
        parts = [
            list(ds.batches(8, shuffle=shuffle, seed=3, drop_remainder=True, rows=slice(a, a + 4))) for a in (0, 4)
        ]
        assert len(whole) == len(parts[0]) == len(parts[1]) == 4
        for batch, first, second in zip(whole, *parts):
            for key in batch:
                np.testing.assert_array_equal(np.concatenate([first[key], second[key]]), batch[key], err_msg=key)
    with pytest.raises(ValueError, match="drop_remainder"):
        next(ds.batches(8, rows=slice(0, 4)))


@pytest.mark.fast
def test_simulator_stride_and_offset_render_a_process_s_batches():
    """Process p of P renders simulator batches i * P + p (its own seed stream); P = 1 is batch i itself."""
    spec = pipeline.SimulationSpec.from_config(worker.config(), seed=11, batch_size=2)
    with pipeline.Simulator(spec, num_workers=0, start=1, num_batches=2, stride=2, offset=1) as sim:
        got = list(sim)
    for batch, index in zip(got, (3, 5)):
        np.testing.assert_array_equal(batch["images"], pipeline.simulate_batch(spec, index)["images"])
    assert distributed.simulator_indices(8) == (8, 1, 0)  # this test process: one process


@pytest.mark.fast
def test_distributed_initialized_only_when_asked(monkeypatch):
    config = worker.config()
    for name in CLUSTER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not distributed.requested(config)  # "auto", nothing set: one process, as before
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_STEP_NODELIST", "node[01-02]")
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_LOCALID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert not distributed.requested(config)  # a one-task Slurm job
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert distributed.requested(config)
    config.distributed.enabled = "false"
    assert not distributed.requested(config)
    for name in CLUSTER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    config.distributed.enabled = "auto"
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    assert distributed.requested(config)
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS")
    config.distributed.coordinator_address = "127.0.0.1:1234"
    assert distributed.requested(config)
    config.distributed.enabled = "maybe"
    with pytest.raises(ValueError, match="distributed.enabled='maybe'"):
        distributed.requested(config)
