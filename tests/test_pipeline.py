"""Simulator: determinism across worker counts, bounded prefetch, errors surfaced, no orphan workers."""

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import psutil
import pytest

from configs import default  # the repository root is on sys.path (conftest.py)
from npejax import schema
from npejax.sim import fields, pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def spec():
    return pipeline.SimulationSpec.from_config(default.get_config(), seed=11, batch_size=4, bank=fields.load_bank())


def _collect(spec, num_workers, **kwargs):
    with pipeline.Simulator(spec, num_workers=num_workers, prefetch=2, **kwargs) as sim:
        return list(sim)


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_same_seed_same_batches_for_any_worker_count(spec):
    inline = _collect(spec, 0, num_batches=3)
    _assert_batches_equal(inline, _collect(spec, 1, num_batches=3))
    _assert_batches_equal(inline, _collect(spec, 2, num_batches=3))
    _assert_batches_equal(inline, [pipeline.simulate_batch(spec, i) for i in range(3)])
    # batches differ from each other, and a start offset continues the same stream
    assert not np.array_equal(inline[0]["images"], inline[1]["images"])
    _assert_batches_equal(inline[2:], _collect(spec, 0, start=2, num_batches=1))


@pytest.mark.fast
def test_batch_contents(spec):
    batch = pipeline.simulate_batch(spec, 0)
    b = spec.batch_size
    assert batch["images"].shape == batch["background"].shape == (b, 80, 80)
    assert batch["images"].dtype == np.float32
    assert batch["psf_params"].shape == (b, 6)
    np.testing.assert_allclose(batch["psf_params"], spec.bank.psf_params[batch["field_id"]].astype(np.float32))
    assert batch["tile_has_source"].shape == (b, 20, 20)
    assert set(batch) == {*schema.IMAGE_KEYS, "n_sources", *schema.CATALOG_KEYS, *schema.TILE_KEYS}
    kept = batch["tile_has_source"].reshape(b, -1).sum(1)
    np.testing.assert_array_equal(kept + batch["n_dropped"], batch["n_sources"])
    assert np.all(batch["background"] > 0)


@pytest.mark.fast
def test_single_field_prior_uses_reference(spec):
    one = dataclasses.replace(spec, field_prior="one")
    batch = pipeline.simulate_batch(one, 0)
    assert np.all(batch["field_id"] == spec.bank.reference)


@pytest.mark.fast
def test_prefetch_is_bounded(spec):
    produced = []
    sim = pipeline.Simulator(spec, num_workers=0, prefetch=2, transform=lambda b: produced.append(1) or b)
    with sim:
        next(sim)
        time.sleep(2.0)
        # one consumed, `prefetch` waiting in the queue, at most one more blocked on put()
        assert len(produced) <= 1 + 2 + 1
    assert not sim._thread.is_alive()


def test_worker_exception_is_reraised_with_traceback(spec):
    bad = dataclasses.replace(spec, prior=dataclasses.replace(spec.prior, sources_per_pixel=0.01, max_sources=2))
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(pipeline.WorkerError, match="max_sources") as info:
        with pipeline.Simulator(bad, num_workers=2, prefetch=2) as sim:
            for _ in sim:
                pass
    assert "Worker traceback" in str(info.value) and "prior.py" in str(info.value)
    time.sleep(0.5)
    after = {p.pid for p in psutil.Process().children(recursive=True) if p.is_running() and p.status() != "zombie"}
    assert not (after - before), "worker processes left running after an error"


@pytest.mark.fast
def test_inline_exception_is_reraised(spec):
    bad = dataclasses.replace(spec, prior=dataclasses.replace(spec.prior, sources_per_pixel=0.01, max_sources=2))
    with pytest.raises(ValueError, match="max_sources"):
        with pipeline.Simulator(bad, num_workers=0) as sim:
            next(sim)


_SCRIPT = textwrap.dedent("""
    import signal, sys, time
    from configs import default
    from npejax.sim import fields, pipeline

    def main():
        # Ctrl-C as in a terminal, whatever this test was launched from: a background job of a non-interactive
        # shell (`nohup ... &`) inherits SIGINT ignored, and the interrupted run would then never stop
        signal.signal(signal.SIGINT, signal.default_int_handler)
        spec = pipeline.SimulationSpec.from_config(default.get_config(), seed=0, batch_size=2)
        with pipeline.Simulator(spec, num_workers=2, prefetch=2) as sim:
            next(sim)
            print("spec", sim._spec_path, flush=True)
            print("children", *[p.pid for p in sim._executor._processes.values()], flush=True)
            time.sleep(120)

    GUARD
""")


def _start(tmp_path, guard=True):
    body = _SCRIPT.replace("GUARD", "if __name__ == '__main__':\n    main()" if guard else "main()")
    path = tmp_path / "run_sim.py"
    path.write_text(body)
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.Popen(
        [sys.executable, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def _read_children(proc, timeout=120):
    result = {}

    def reader():
        for line in proc.stdout:
            if line.startswith("spec"):
                result["spec"] = line.split(maxsplit=1)[1].strip()
            if line.startswith("children"):
                result["pids"] = [int(v) for v in line.split()[1:]]
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(timeout)
    assert "pids" in result, f"simulator did not start: {proc.stderr.read() if proc.poll() is not None else ''}"
    return result["pids"], result.get("spec")


def _wait_gone(pids, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
        if not alive:
            return []
        time.sleep(0.2)
    return alive


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_no_orphan_workers_after_interrupt_or_kill(tmp_path, sig):
    proc = _start(tmp_path)
    try:
        pids, _ = _read_children(proc)
        assert len(pids) == 2
        proc.send_signal(sig)
        proc.wait(timeout=30)
        if sig == signal.SIGINT:
            assert "KeyboardInterrupt" in proc.stderr.read()
        assert _wait_gone(pids) == [], f"orphan workers after {sig.name}"
    finally:
        proc.kill()


def test_spec_file_of_a_killed_parent_is_removed_by_the_next_simulator(tmp_path, spec):
    proc = _start(tmp_path)
    try:
        _, spec_path = _read_children(proc)
        assert os.path.basename(spec_path).startswith(f"npejax-spec-{proc.pid}-") and os.path.isfile(spec_path)
        proc.kill()  # SIGKILL: close() never runs, the file stays behind
        proc.wait(timeout=30)
        assert os.path.isfile(spec_path)
    finally:
        proc.kill()
    # a file of a running process and a file of another name are left alone
    alive = os.path.join(os.path.dirname(spec_path), f"npejax-spec-{os.getpid()}-keepme00.pkl")
    other = os.path.join(os.path.dirname(spec_path), "npejax-spec-12345678.pkl.unrelated")
    for path in (alive, other):
        with open(path, "wb"):
            pass
    try:
        with pipeline.Simulator(spec, num_workers=1, num_batches=0) as sim:
            assert list(sim) == []
            own = sim._spec_path
            assert os.path.isfile(own) and os.path.basename(own).startswith(f"npejax-spec-{os.getpid()}-")
        assert not os.path.exists(spec_path), "the killed parent's spec file is still there"
        assert os.path.exists(alive) and os.path.exists(other) and not os.path.exists(own)
    finally:
        for path in (alive, other):
            os.unlink(path)


def test_unguarded_script_fails_clearly_instead_of_hanging(tmp_path):
    proc = _start(tmp_path, guard=False)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert "__main__" in err
