"""Many devices on the CPU (issue 9): the data-parallel steps and prediction on 4 devices equal 1 device.

XLA's forced host devices (``XLA_FLAGS=--xla_force_host_platform_device_count=4``, ``JAX_PLATFORMS=cpu``) stand in
for 4 accelerators. ``tests/_devices_worker.py`` runs in a subprocess on 1 and on 4 devices (both at once): the
tiny checkerboard network of conftest.py on 32 x 32 images, the same simulated batches, three train steps of
:func:`npejax.nn.steps.jit_steps` (global batch 8: 2 images per device on 4; batch-norm statistics over the
global batch, as GSPMD computes them), its eval step, and :class:`npejax.nn.predictor.Predictor` on 8 images:
``predict_tiles`` on 1 device, its network call with the images sharded over the mesh on 4.

Tolerances, a few times the largest differences measured on the 2-core development machine, with and without
:data:`FAST_COMPILE` (float32 sums in another order; the same in every run): training loss relative 4.3e-6
(tolerance 2e-5), eval NLL relative 7.1e-7 (3.0e-6 from Flax's initial parameters; tolerance 1e-5), parameters
after 3 Adam steps absolute 7.2e-7 and batch-norm statistics 1.8e-7 (3e-6; three steps at learning rate 1e-3
move a parameter by up to 3e-3), per-tile predictions absolute 2.7e-7 on values up to 2 (1e-6 + 1e-6
relative). Batch-norm statistics per device (2 images) instead of over the global batch would be far outside
them: the first loss 0.63 relative and the first Adam step 2e-3 apart (measured).

A checkpoint written on 4 devices restoring on 1: tests/test_train.py
(``test_checkpoint_written_on_four_devices_predicts_on_one``). Training's start-up line (the devices, the
mesh, the batch per device: :func:`npejax.nn.train.describe_devices`) is tested in-process here.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from npejax.nn import steps as steps_lib
from npejax.nn import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "_devices_worker.py")
LOSS_RTOL, EVAL_RTOL, PARAM_ATOL, PREDICT_TOL = 2e-5, 1e-5, 3e-6, 1e-6
# LLVM at optimization level 0: half the compile time (the train step: 21 -> 11 s of CPU); the partitioning over
# the devices and the collectives are decided on the HLO before, and the 1-vs-4 differences stay as small
FAST_COMPILE = "--xla_backend_optimization_level=0"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{1: outputs on 1 device, 4: on 4} (tests/_devices_worker.py's .npz as a dict)."""
    out = tmp_path_factory.mktemp("devices")
    procs = {}
    for n in (1, 4):
        env = dict(
            os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={n} {FAST_COMPILE}"
        )
        procs[n] = subprocess.Popen(
            [sys.executable, WORKER, str(out / f"{n}.npz")],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    outputs = {n: proc.communicate(timeout=600)[0] for n, proc in procs.items()}
    results = {}
    for n, proc in procs.items():
        assert proc.returncode == 0, f"{n} device(s):\n{outputs[n][-3000:]}"
        with np.load(out / f"{n}.npz") as f:
            results[n] = {k: f[k] for k in f.files}
    return results


def _group(run: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in run.items() if k.startswith(prefix)}


def test_workers_ran_on_one_and_four_devices_with_the_same_data(runs):
    one, four = runs[1], runs[4]
    assert (int(one["devices"]), int(four["devices"])) == (1, 4)
    assert str(one["startup"]) == "devices: 1 x cpu (cpu:0); mesh: data=1; global batch 8 = 8 per device"
    assert str(four["startup"]) == (
        "devices: 4 x cpu (cpu:0, cpu:1, cpu:2, cpu:3); mesh: data=4; global batch 8 = 2 per device"
    )
    np.testing.assert_array_equal(one["images"], four["images"])
    assert int(four["sharded_devices"]) == 4  # the sharded prediction really ran split over the 4 devices


def test_three_train_steps_on_four_devices_equal_one(runs):
    one, four = runs[1], runs[4]
    assert one["losses"].shape == (3,) and np.all(np.isfinite(one["losses"]))
    np.testing.assert_allclose(four["losses"], one["losses"], rtol=LOSS_RTOL, atol=0)
    for prefix in ("param/", "batch_stats/"):
        ones, fours = _group(one, prefix), _group(four, prefix)
        assert ones.keys() == fours.keys() and len(ones) > 10
        for name in ones:
            np.testing.assert_allclose(fours[name], ones[name], rtol=0, atol=PARAM_ATOL, err_msg=prefix + name)
    # the steps moved the parameters: an equality of untouched initial values would prove nothing
    moved = max(float(np.abs(v).max()) for k, v in _group(one, "param/").items() if k.endswith("['bias']"))
    assert moved > 1e-3


def test_eval_step_on_four_devices_equals_one(runs):
    one, four = float(runs[1]["eval_nll"]), float(runs[4]["eval_nll"])
    assert np.isfinite(one) and one > 0
    np.testing.assert_allclose(four, one, rtol=EVAL_RTOL, atol=0)


def test_prediction_sharded_over_four_devices_equals_one(runs):
    reference, sharded = _group(runs[1], "predict/"), _group(runs[4], "sharded/")
    assert "prob_source" in reference and reference["prob_source"].shape == (8, 8, 8)
    assert sharded.keys() == reference.keys()
    for key, value in reference.items():
        np.testing.assert_allclose(sharded[key], value, rtol=PREDICT_TOL, atol=PREDICT_TOL, err_msg=key)


@pytest.mark.fast
def test_training_prints_devices_and_mesh_at_start_up(tmp_path, tiny_config, capsys, monkeypatch):
    """train_and_evaluate says where it runs once every check has passed, before the state is built (the run
    is stopped there: the line is what is tested, not training)."""

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(train, "restore_or_init", stop)
    with pytest.raises(Stop):
        train.train_and_evaluate(tiny_config(), str(tmp_path / "run"))
    expected = train.describe_devices(steps_lib.data_mesh(), 8)
    assert expected.startswith("devices: ") and "mesh: data=" in expected and "global batch 8 = " in expected
    assert expected in capsys.readouterr().out.splitlines()
