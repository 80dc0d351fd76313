"""Training that stops on time and resumes exactly (issue 20): SIGTERM, SIGUSR1 and ``train.time_limit_minutes``
stop a run at a step boundary, mid-epoch too; it saves that step (``checkpoints/interrupted``) and exits with
status 3; the same command resumes there.

A run stopped mid-epoch (twice) and resumed must give the uninterrupted run's metrics.csv (but its timing columns)
and parameters, to the bit: cached data (the epoch's permutation, its rest from the next batch), on-the-fly data
with two steps per jitted call (the simulator's batch i depends only on the seed and i), and the cached set held on
the device with two steps per call (the epoch order's rest of index rows). The stop is requested at a
given train step by wrapping :meth:`StopRequest.poll` (what a signal handler does, at a known boundary). One end to
end test sends SIGTERM to a real ``python -m npejax.main`` and its simulator worker (Slurm signals every process of
a job step), and resumes it.
"""

import csv
import os
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import psutil
import pytest

from npejax import datasets as data
from npejax.nn import checkpoints, distributed, preemption, train
from npejax.sim import pipeline

TIMING = ("images_per_s", "seconds")  # the metrics.csv columns a stop and resume change


# --- the request: signals, time limit, agreement ----------------------------------------------------


def test_signals_request_a_stop_and_the_handlers_are_restored():
    before = {sig: signal.getsignal(sig) for sig in preemption.SIGNALS}
    stop = preemption.StopRequest()
    assert not stop.poll(0) and stop.reason is None
    with stop.signal_handlers():
        os.kill(os.getpid(), signal.SIGUSR1)  # the handler runs at the next bytecode: the process goes on
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.poll(5) and stop.reason == "SIGUSR1"  # the first request is the reason
    assert {sig: signal.getsignal(sig) for sig in preemption.SIGNALS} == before


def test_the_time_limit_requests_a_stop_once_passed():
    now = [100.0]
    stop = preemption.StopRequest(time_limit_minutes=2.0, clock=lambda: now[0])
    now[0] += 119.0
    assert not stop.poll(3)
    now[0] += 1.0
    assert stop.poll(4) and stop.reason == "train.time_limit_minutes=2 reached"
    assert not preemption.StopRequest(time_limit_minutes=0.0, clock=lambda: 1e12).poll(0)  # 0: no limit


def test_any_process_is_the_flag_in_one_process():
    assert distributed.any_process(True)() is True and distributed.any_process(False)() is False


def test_the_exit_status_is_its_own():
    assert preemption.EXIT_PREEMPTED not in (0, 1, 2, 130) and preemption.Stopped.exit_code == 3


# --- stopped mid-epoch and resumed = never stopped ---------------------------------------------------


@pytest.fixture
def stop_at(monkeypatch):
    """``stop_at(*steps)``: the following runs are asked to stop (as a signal handler asks) at the boundaries
    where these many train steps are done, each once."""
    wanted = set()
    poll = preemption.StopRequest.poll

    def poll_and_stop(self, step):
        if step in wanted:
            wanted.discard(step)
            self.request("test")
        return poll(self, step)

    monkeypatch.setattr(preemption.StopRequest, "poll", poll_and_stop)

    def set_steps(*steps):
        wanted.clear()
        wanted.update(steps)

    return set_steps


def _rows(workdir):
    with open(workdir / checkpoints.METRICS_FILE) as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def _steps(workdir, which):
    directory = workdir / "checkpoints" / which
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if directory.is_dir() else []


def _assert_same_state(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(jax.device_get(a)), jax.tree_util.tree_leaves(jax.device_get(b))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _stopped(config, workdir, capsys):
    with pytest.raises(preemption.Stopped) as stopped:
        train.train_and_evaluate(config, str(workdir))
    return str(stopped.value), capsys.readouterr().out


@pytest.fixture(scope="module")
def cached_dirs(tmp_path_factory, tiny_config):
    """A cached training set of 24 images (3 steps of 8 per epoch) and a validation set of 8."""
    config = tiny_config()
    root = tmp_path_factory.mktemp("cached")
    spec = pipeline.SimulationSpec.from_config(config, seed=1, batch_size=8)
    data.write_dataset(spec, root / "train", 24, "train", num_workers=0, progress=False)
    data.write_dataset(spec, root / "val", 8, "val", num_workers=0, progress=False)
    return str(root / "train"), str(root / "val")


@pytest.mark.parametrize("path", ["cached", "on_the_fly_k2", "on_device_k2"])
def test_a_run_stopped_mid_epoch_resumes_exactly(tmp_path, tiny_config, cached_dirs, stop_at, capsys, path):
    """Two epochs of 3 steps. Cached (one step per call): stopped at step 1 (epoch 1, no checkpoint yet) and at
    step 4 (epoch 2, step 1), resumed twice. On the fly with two steps per call: stopped at step 2 (a call
    boundary of epoch 1), resumed. The cached set on the device, two steps per call: stopped at step 5 (epoch 2's
    call boundary), resumed. The same metrics.csv but its timing, parameters, batch statistics and Adam moments,
    to the bit, as one uninterrupted run; best/ too; interrupted/ gone at the end."""
    config = tiny_config()
    config.posterior.context = "independent"  # faster to compile; the input path does not depend on it
    config.train.num_epochs, config.train.figure_every = 2, 0
    if path == "cached":
        config.data.train_dir, config.data.val_dir = cached_dirs
        stops = [(1, "epoch 1, step 1 of 3"), (4, "epoch 2, step 1 of 3")]
    elif path == "on_the_fly_k2":
        config.train.images_per_epoch, config.data.num_val, config.train.steps_per_dispatch = 24, 8, 2
        stops = [(2, "epoch 1, step 2 of 3")]
    else:
        config.data.train_dir, config.data.val_dir = cached_dirs
        config.data.on_device, config.train.steps_per_dispatch = True, 2
        stops = [(5, "epoch 2, step 2 of 3")]
    reference = train.train_and_evaluate(config, str(tmp_path / "reference"))
    capsys.readouterr()
    workdir = tmp_path / "stopped"

    for step, where in stops:
        stop_at(step)
        message, out = _stopped(config, workdir, capsys)
        assert message == f"test: stopped at {where}" and f"stopped (test) at {where} (train step {step})" in out
        assert _steps(workdir, checkpoints.INTERRUPTED) == [step]  # one kept: the stop before is gone
        assert f"saved {workdir / 'checkpoints' / checkpoints.INTERRUPTED / str(step)}" in out
        done = step // 3  # epochs finished: their rows, and no row for the unfinished one
        assert _steps(workdir, "latest") == ([done] if done else [])
        assert (workdir / checkpoints.METRICS_FILE).exists() == bool(done)
        if done:
            assert _rows(workdir) == _rows(tmp_path / "reference")[:done]
        _, meta = checkpoints.read_meta(str(workdir), checkpoints.INTERRUPTED)
        assert meta["step_in_epoch"] == step % 3 and len(meta["epoch_losses"]) == step % 3
        assert meta["stopped"] == "test" and meta["epoch"] == done and "val_nll" not in meta

    stop_at()
    summary = train.train_and_evaluate(config, str(workdir))
    last = stops[-1][0]
    assert f"Resuming epoch {last // 3 + 1} at step {last % 3} of 3 (stopped: test;" in capsys.readouterr().out
    assert _rows(workdir) == _rows(tmp_path / "reference") and len(_rows(workdir)) == 2
    assert [r["epoch"] for r in summary["history"]] == [1, 2]
    _assert_same_state(summary["state"], reference["state"])
    assert _steps(workdir, "best") == _steps(tmp_path / "reference", "best")
    assert _steps(workdir, "latest") == [2] and not (workdir / "checkpoints" / checkpoints.INTERRUPTED).exists()


def test_a_stop_at_an_epoch_start_saves_nothing_new(tmp_path, tiny_config, stop_at, capsys):
    """Asked at the boundary after an epoch's checkpoint (step 2 of 2-step epochs): latest/ holds it, no
    interrupted/ is written; the resume is an ordinary one."""
    config = tiny_config()
    config.train.num_epochs, config.train.figure_every = 2, 0
    stop_at(2)
    message, out = _stopped(config, tmp_path, capsys)
    assert message == "test: stopped at epoch 2, step 0 of 2" and "nothing trained since" in out
    assert _steps(tmp_path, "latest") == [1] and not (tmp_path / "checkpoints" / checkpoints.INTERRUPTED).exists()
    assert len(_rows(tmp_path)) == 1


# --- the command: SIGTERM to a real run and its simulator worker -------------------------------------


def _children(pid):
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def test_sigterm_to_the_command_saves_exits_3_and_the_same_command_resumes(tmp_path, root, config_path, tiny_flags):
    """``python -m npejax.main`` on the fly with a simulator worker process, 100 steps per epoch; SIGTERM to its
    process group (the trainer and its worker, as Slurm signals a job step) during epoch 2: exit status 3, the
    step saved, no worker left, one line on stderr; the same command resumes at that step and finishes."""
    workdir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "npejax.main",
        "--config",
        config_path("cpu_small"),
        "--workdir",
        str(workdir),
        *tiny_flags(),
        "--config.train.images_per_epoch=800",
        "--config.simulator.num_workers=1",
        "--config.train.figure_every=0",
    ]
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.Popen(
        [*cmd, "--config.train.num_epochs=50"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a job step
    )
    lines, first_epoch = [], threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("epoch   1 "):
                first_epoch.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert first_epoch.wait(400), "".join(lines) + (proc.stderr.read() if proc.poll() is not None else "")
        children = _children(proc.pid)
        assert children, "no simulator worker"
        checksums = workdir / "checkpoints" / "latest" / "1" / checkpoints.CHECKSUM_FILE
        deadline = time.time() + 60
        while not checksums.exists() and time.time() < deadline:  # epoch 1 saved: epoch 2 starts
            time.sleep(0.1)
        time.sleep(1.0)  # into epoch 2
        os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=300)
        reader.join(10)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = "".join(lines)
    assert code == preemption.EXIT_PREEMPTED, out + err
    assert err.strip().startswith("stopped (SIGTERM: stopped at epoch 2, step ") and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    deadline = time.time() + 10
    while time.time() < deadline and any(
        psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in children
    ):
        time.sleep(0.2)
    assert not [p for p in children if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    step = int(err.split("step ")[1].split()[0])
    assert 0 < step < 100, err  # mid-epoch (a stop at the epoch's start would save nothing new)
    assert _steps(workdir, checkpoints.INTERRUPTED) == [100 + step] and _steps(workdir, "latest") == [1]
    assert len(_rows(workdir)) == 1

    done = subprocess.run(
        [*cmd, "--config.train.num_epochs=2"], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Resuming epoch 2 at step {step} of 100 (stopped: SIGTERM;" in done.stdout
    assert [r["epoch"] for r in _rows(workdir)] == ["1", "2"] and _rows(workdir)[1]["step"] == "200"
    assert not (workdir / "checkpoints" / checkpoints.INTERRUPTED).exists()
