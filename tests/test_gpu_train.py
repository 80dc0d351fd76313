"""benchmarks/gpu_train.sh end to end on the CPU at a tiny size (``--cpu-smoke``): a training split over two
"slots" -- the first stopped by its time limit, collected, the second resumed from what was collected -- ends
with the metrics and network of one uninterrupted slot."""

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
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_train.sh")
TIMING = ("images_per_s", "seconds")

pytestmark = pytest.mark.skipif(shutil.which("tar") is None or shutil.which("xz") is None, reason="needs tar, xz")


def _slot(repo, out, name, minutes):
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(out), JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        ["bash", SCRIPT, "train", "configs/cpu_small.py", name, "--minutes", str(minutes), "--cpu-smoke"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc


def _collect(repo, files_at, name):
    proc = subprocess.run(["bash", SCRIPT, "collect", str(files_at), name], cwd=repo, capture_output=True, text=True)
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
        ROOT, repo, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "gpu_*", ".whl", "__pycache__", "*.egg-info")
    )
    # one slot with no time limit: the reference
    whole = _slot(repo, tmp_path / "out_whole", "whole", 0)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    # slot 1: a limit of 0.6 s stops the run at its first step boundary; its state comes back packed
    first = _slot(repo, tmp_path / "out1", "split", 0.01)
    assert first.returncode == 3, first.stdout + first.stderr
    assert (tmp_path / "out1" / "split-latest.tar.xz").exists()
    # a fresh "machine": the slot's workdir is gone, only what was collected remains
    _collect(repo, tmp_path / "out1", "split")
    shutil.rmtree(repo / "runs" / "split")
    assert (repo / "gpu_runs" / "split" / "latest.tar.xz").exists()
    second = _slot(repo, tmp_path / "out2", "split", 10)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resuming split" in second.stdout
    _collect(repo, tmp_path / "out2", "split")
    assert _rows(repo / "runs" / "split") == _rows(repo / "runs" / "whole")
    # the collected workdir is complete: its best network equals the uninterrupted run's
    a = checkpoints.load_network(str(repo / "runs" / "split"))
    b = checkpoints.load_network(str(repo / "runs" / "whole"))
    for x, y in zip(jax.tree_util.tree_leaves(a[1]), jax.tree_util.tree_leaves(b[1]), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
