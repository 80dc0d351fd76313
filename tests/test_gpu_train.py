"""benchmarks/gpu_train.sh end to end on the CPU at a tiny size (``--cpu-smoke``, 3 epochs): a training split over
three "slots" on fresh "machines" -- one epoch; a slot stopped by its time limit (exit 3); the rest -- each collected
and the next started from what was collected alone, ends with the metrics and network of one uninterrupted slot.
(That a stop in the middle of an epoch resumes bit for bit is tests/test_preemption.py's.)"""

import csv
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from npejax.nn import checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = ("images_per_s", "seconds")

pytestmark = pytest.mark.skipif(shutil.which("tar") is None or shutil.which("xz") is None, reason="needs tar, xz")


def _script(repo):
    return str(repo / "benchmarks" / "gpu_train.sh")


def _slot(repo, out, name, minutes, *overrides):
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(out), JAX_PLATFORMS="cpu", PYTHONPATH=str(repo))
    args = ["train", "configs/cpu_small.py", name, "--minutes", str(minutes), "--cpu-smoke", "--", *overrides]
    proc = subprocess.run(
        ["bash", _script(repo), *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc


def _collect(repo, files_at, name):
    proc = subprocess.run(
        ["bash", _script(repo), "collect", str(files_at), name], cwd=repo, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def _rows(workdir):
    with open(os.path.join(workdir, checkpoints.METRICS_FILE)) as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


@pytest.mark.slow
def test_two_slots_give_the_uninterrupted_training(tmp_path):
    # the script works from the repository it sits in: give it a copy of the tree (without runs/ or .venv)
    repo = tmp_path / "repo"
    shutil.copytree(
        ROOT,
        repo,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "runs", "gpu_out", "gpu_runs", ".whl", "__pycache__", "*.egg-info"
        ),
    )
    # one slot with no time limit: the reference
    whole = _slot(repo, tmp_path / "out_whole", "whole", 0)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    # slot 1 trains one epoch (the training length may change on resume), and its state comes back packed
    first = _slot(repo, tmp_path / "out1", "split", 0, "--config.train.num_epochs=1")
    assert first.returncode == 0, first.stdout + first.stderr
    assert (tmp_path / "out1" / "split-best.tar.xz").exists()  # epoch 1 is the best so far
    _collect(repo, tmp_path / "out1", "split")
    assert (repo / "gpu_runs" / "split" / "latest.tar.xz").exists()
    # slot 2 on a fresh machine (the slot's workdir gone, only what was collected goes out): its limit of 0.6 s
    # passes while the cached set is rebuilt, so it stops with exit 3 and packs what it has
    shutil.rmtree(repo / "runs" / "split")
    second = _slot(repo, tmp_path / "out2", "split", 0.01)
    assert second.returncode == 3, second.stdout + second.stderr
    assert "resuming split" in second.stdout and "stopped on time" in second.stdout
    assert not (tmp_path / "out2" / "split-best.tar.xz").exists()  # no new best: nothing to bring back
    _collect(repo, tmp_path / "out2", "split")
    # slot 3, on a fresh machine again, finishes
    shutil.rmtree(repo / "runs" / "split", ignore_errors=True)
    third = _slot(repo, tmp_path / "out3", "split", 10)
    assert third.returncode == 0, third.stdout + third.stderr
    _collect(repo, tmp_path / "out3", "split")
    assert _rows(repo / "runs" / "split") == _rows(repo / "runs" / "whole")
    # the collected workdir is complete: its best network equals the uninterrupted run's
    a = checkpoints.load_network(str(repo / "runs" / "split"))
    b = checkpoints.load_network(str(repo / "runs" / "whole"))
    for x, y in zip(jax.tree_util.tree_leaves(a[1]), jax.tree_util.tree_leaves(b[1]), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
