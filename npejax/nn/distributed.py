"""Many hosts: training on JAX's multi-process runtime (one process per GPU or per node).

Every process runs the same command (``python -m npejax.main --config ... --workdir ...``) on a workdir that all
of them see (a shared file system: Orbax writes each checkpoint there once). :func:`initialize` calls
``jax.distributed.initialize()`` when the config's ``distributed`` section or the environment asks for it:

* ``distributed.enabled``: ``"auto"`` (initialize when ``coordinator_address`` or ``num_processes`` > 1 is set,
  or the environment names a coordinator or a multi-process job: ``JAX_COORDINATOR_ADDRESS``; a Slurm step with
  ``SLURM_NTASKS`` > 1; Open MPI with ``OMPI_COMM_WORLD_SIZE`` > 1), ``"true"`` (always: JAX detects the cluster
  -- Slurm, Open MPI, Cloud TPU, Kubernetes -- for whatever is not given), ``"false"`` (never).
* ``distributed.coordinator_address`` (``"host:port"`` of process 0), ``distributed.num_processes``,
  ``distributed.process_id`` (empty / -1: detected), ``distributed.local_device_ids`` (``"0,1,2,3"``; empty:
  JAX's default, under Slurm one GPU per task), ``distributed.timeout_s`` (to wait for every process).

On CPUs the cross-process collectives are gloo's (``jax_cpu_collectives_implementation``, set to ``"gloo"``
when unset). In one process (nothing asks for more) every function here is what training did before.

The data split (:mod:`npejax.nn.train`). The mesh spans every process's devices (``jax.devices()``, axis
``"data"``); the global batch B is split in equal contiguous row blocks, process p holding rows
:func:`local_rows` (B / P of them, its devices' shards) and building the global [B, ...] arrays from them with
``jax.make_array_from_process_local_data`` (:func:`npejax.nn.steps.to_device`). Each process reads or renders
only its rows:

* a cached training set (``data.train_dir``): the epoch's permutation is the one-process one (``config.seed +
  epoch``), each process reads its rows of every batch (``Dataset.batches(..., rows=)``): a P-process run
  trains on exactly the batches of a one-process run, and no image is read twice;
* on-the-fly simulation: process p renders simulator batch ``i * P + p`` at batch size B / P (its own seed
  stream, :func:`simulator_indices`): global batch i is deterministic in (seed, i, P); with P = 1 it is
  simulator batch i as before; with P > 1 the images differ from a one-process run's (the same prior);
* the validation set: the one-process batches, each process reading (cached) or rendering (simulated, once per
  run) whole batches and keeping its rows; the eval step's sum is over the global batch, so the validation NLL
  is the one-process one. The input normalizer is fitted on the same images in every process.

What is written by which process: ``config.json``, ``metrics.csv``, ``tensorboard/`` (and its figures),
``WORKDIR/data`` (``data.simulate_first``) and stdout (progress, epoch lines) by process 0 only; checkpoints by
Orbax's multi-process save, which every process calls (Orbax writes each array once, process 0 the metadata),
their ``npejax-sha256.json`` by process 0 after the save, then a barrier (:func:`sync`). Every process restores
(resume) from the shared workdir. A stop asked of any process (a signal, a time limit: :mod:`npejax.nn.preemption`)
is agreed by all at the same step through :func:`any_process`, a maximum over the processes.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import distributed as _jax_distributed  # jax.distributed.is_initialized and barriers with a timeout
from jax.experimental import multihost_utils

ENABLED = ("auto", "true", "false")


def _enabled(value) -> str:
    text = str(value).strip().lower()
    text = {"1": "true", "yes": "true", "0": "false", "no": "false", "": "auto"}.get(text, text)
    if text not in ENABLED:
        raise ValueError(f"distributed.enabled={value!r}: must be 'auto', 'true' or 'false'")
    return text


def _env_int(name: str) -> int:
    try:
        return int(os.environ.get(name, "0"))
    except ValueError:
        return 0


def requested(config) -> bool:
    """Whether :func:`initialize` will start the multi-process runtime for ``config`` (module docstring)."""
    section = config.distributed
    enabled = _enabled(section.enabled)
    if enabled != "auto":
        return enabled == "true"
    if section.coordinator_address or int(section.num_processes) > 1:
        return True
    slurm = all(
        k in os.environ
        for k in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
    )
    return bool(
        os.environ.get("JAX_COORDINATOR_ADDRESS")
        or (slurm and _env_int("SLURM_NTASKS") > 1)
        or ("OMPI_MCA_orte_hnp_uri" in os.environ and _env_int("OMPI_COMM_WORLD_SIZE") > 1)
    )


def is_initialized() -> bool:
    return _jax_distributed.global_state.client is not None


def initialize(config) -> bool:
    """``jax.distributed.initialize()`` with the config's ``distributed`` keys when :func:`requested` (and not
    done already); returns whether this is a multi-process run. ValueError naming the key for a bad value;
    a coordinator that cannot be reached fails after ``distributed.timeout_s`` seconds (JAX's error)."""
    if is_initialized():
        return jax.process_count() > 1
    if not requested(config):
        return False
    section = config.distributed
    num, pid = int(section.num_processes), int(section.process_id)
    if num == 0 or num < -1:
        raise ValueError(f"distributed.num_processes={num}: must be >= 1 (or -1: detected)")
    if pid < -1 or (num > 0 and pid >= num):
        raise ValueError(f"distributed.process_id={pid}: must be in 0 .. num_processes - 1 (or -1: detected)")
    ids = str(section.local_device_ids).strip()
    try:
        device_ids = [int(v) for v in ids.split(",")] if ids else None
    except ValueError:
        raise ValueError(
            f"distributed.local_device_ids={ids!r}: must be comma-separated integers, e.g. '0,1'"
        ) from None
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=str(section.coordinator_address) or None,
        num_processes=None if num < 0 else num,
        process_id=None if pid < 0 else pid,
        local_device_ids=device_ids,
        initialization_timeout=int(section.timeout_s),
    )
    return jax.process_count() > 1


def is_main() -> bool:
    """Whether this process writes the metrics, TensorBoard events, config.json and stdout (process 0)."""
    return jax.process_index() == 0


def sync(name: str, timeout_s: float | None = None) -> None:
    """A barrier of all processes (``multihost_utils.sync_global_devices``, a collective); with ``timeout_s``
    the coordination service's barrier instead (no device work; for a long wait, e.g. while process 0 simulates
    ``data.simulate_first``'s datasets). Nothing in one process."""
    if jax.process_count() == 1:
        return
    if timeout_s is not None:
        _jax_distributed.global_state.client.wait_at_barrier(name, timeout_in_ms=int(timeout_s * 1000))
        return
    multihost_utils.sync_global_devices(name)


def local_rows(sharding, batch_size: int) -> slice:
    """The rows of a global batch of ``batch_size`` (sharded with ``sharding`` along its first axis) that this
    process's devices hold: one contiguous block (all of them in one process)."""
    spans = sorted(
        {
            (index[0].start or 0, batch_size if index[0].stop is None else index[0].stop)
            for index in sharding.addressable_devices_indices_map((int(batch_size),)).values()
        }
    )
    start, stop = spans[0][0], spans[-1][1]
    if sum(b - a for a, b in spans) != stop - start:
        raise ValueError(f"this process's devices hold rows {spans} of the batch: not one contiguous block")
    return slice(start, stop)


def simulator_indices(batch_size: int) -> tuple[int, int, int]:
    """(images per simulator batch, stride, offset) of this process's on-the-fly training batches: global batch
    i is the processes' simulator batches ``i * stride + offset`` of ``batch_size / P`` images each (P = 1:
    ``(batch_size, 1, 0)``, batch i itself)."""
    count = jax.process_count()
    if batch_size % count:
        raise ValueError(f"train.batch_size={batch_size} must be a multiple of the {count} processes")
    return batch_size // count, count, jax.process_index()


def put_replicated(tree, sharding):
    """``jax.device_put(tree, sharding)`` for a value that every process holds whole (the initial state, the
    resident training set, index rows); in several processes built from each process's copy
    (``make_array_from_callback``: no transfer, no cross-process check)."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put(x):
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree_util.tree_map(put, tree)


@functools.cache
def _max_of_processes():
    """(sharding, jitted maximum): one int32 per device of every process, reduced to a replicated scalar."""
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("all",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("all"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return sharding, jax.jit(jnp.max, out_shardings=replicated)


def any_process(flag: bool) -> Callable[[], bool]:
    """Starts the maximum of ``flag`` over all processes (every process calls it, at the same point of the same
    sequence of device work: a collective of one integer per device) without waiting for it; returns a function
    that waits for and returns the result, the same in every process (:mod:`npejax.nn.preemption`)."""
    sharding, reduce = _max_of_processes()
    count = len(jax.devices())
    flags = jax.make_array_from_callback(
        (count,), sharding, lambda index: np.full(len(range(count)[index[0]]), int(bool(flag)), np.int32)
    )
    result = reduce(flags)
    return lambda: bool(np.asarray(result.addressable_data(0)))


def local_copy(tree):
    """The arrays of ``tree`` on this process's first device (a replicated array's full value), for work one
    process does alone (process 0's validation figure); ``tree`` itself in one process."""
    if jax.process_count() == 1:
        return tree
    return jax.tree_util.tree_map(lambda a: a.addressable_data(0) if isinstance(a, jax.Array) else a, tree)


def first_rows(array, n: int) -> np.ndarray:
    """Rows ``0 .. n-1`` of a batch-sharded array (or a host array) as numpy, from this process's shards (process
    0 holds them)."""
    if not isinstance(array, jax.Array) or array.is_fully_addressable:
        return np.asarray(jax.device_get(array))[:n]
    for shard in array.addressable_shards:
        if (shard.index[0].start or 0) == 0:
            return np.asarray(shard.data)[:n]
    raise ValueError("this process holds no shard with the batch's first rows")
