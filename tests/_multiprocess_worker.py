"""Worker of tests/test_multiprocess.py: one process of a training run, on JAX's multi-process runtime or alone.

    JAX_PLATFORMS=cpu python tests/_multiprocess_worker.py OUT.npz WORKDIR TRAIN_DIR VAL_DIR [PORT NUM PID]

Trains :func:`config` (conftest's tiny network on 32 x 32 images, global batch 8, 2 epochs of 2 steps, from the
cached datasets TRAIN_DIR and VAL_DIR, a validation figure at epoch 2) with
:func:`npejax.nn.train.train_and_evaluate` in WORKDIR; with PORT NUM PID, as process PID of NUM whose coordinator
is 127.0.0.1:PORT (the config's ``distributed`` keys). Writes ``OUT.npz``: ``process_index``, ``process_count``,
``devices`` (the mesh's device count), ``local_rows`` (this process's rows of a global batch: start, stop),
``startup`` (the line process 0 prints), ``history`` (train_nll, val_nll per epoch, [2, 2]), ``param/<path>``,
``batch_stats/<path>`` (the final state: replicated, every process holds all of it), and the first batch of the two
other input paths (:func:`other_feeds`, no training: ``fly/*`` on-the-fly simulation, ``resident/*``
``data.on_device``).

With ``NPEJAX_TEST_STOP=PID:STEP`` in the environment, process PID is asked to stop (as a signal would ask,
:mod:`npejax.nn.preemption`) at the boundary where STEP train steps are done; a process that stops prints the
message and exits with status 3, writing no ``OUT.npz``.
"""

from __future__ import annotations

import os
import sys

import conftest  # tests/ is sys.path[0] when this file is run; conftest puts the repository root on it
import jax
import numpy as np

from npejax.nn import distributed, input_pipeline, preemption, train
from npejax.nn import steps as steps_lib

IMAGE_SIZE = 32


def config(train_dir: str = "", val_dir: str = ""):
    """The tiny config of the runs (also the datasets' spec: tests/test_multiprocess.py)."""
    cfg = conftest.make_tiny_config()
    cfg.image_size = IMAGE_SIZE
    cfg.prior.sources_per_pixel = 4e-3  # about 4 sources per 32 x 32 image
    cfg.train.figure_every = 2  # process 0 alone draws the figure of epoch 2 (a run in lockstep must not wait)
    cfg.data.train_dir, cfg.data.val_dir = train_dir, val_dir
    return cfg


def flat(tree, prefix: str) -> dict:
    return {
        prefix + jax.tree_util.keystr(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def main(out: str, workdir: str, train_dir: str, val_dir: str, port: str = "", num: str = "1", pid: str = "0") -> None:
    cfg = config(train_dir, val_dir)
    if port:
        cfg.distributed.coordinator_address = f"127.0.0.1:{port}"
        cfg.distributed.num_processes, cfg.distributed.process_id = int(num), int(pid)
    stop = os.environ.get("NPEJAX_TEST_STOP", "")
    if stop and int(stop.split(":")[0]) == int(pid):
        poll, at = preemption.StopRequest.poll, int(stop.split(":")[1])

        def poll_and_stop(self, step):
            if step == at:
                self.request("test")
            return poll(self, step)

        preemption.StopRequest.poll = poll_and_stop
    try:
        summary = train.train_and_evaluate(cfg, workdir)
    except preemption.Stopped as stopped:
        print(f"Stopped: {stopped}", flush=True)
        sys.exit(preemption.EXIT_PREEMPTED)
    mesh = steps_lib.data_mesh()
    rows = distributed.local_rows(steps_lib.batch_sharding(mesh), int(cfg.train.batch_size))
    state = summary["state"]
    np.savez(
        out,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        devices=mesh.size,
        local_rows=np.asarray([rows.start, rows.stop]),
        startup=train.describe_devices(mesh, 8),
        history=np.asarray([[r["train_nll"], r["val_nll"]] for r in summary["history"]]),
        **flat(state.params, "param/"),
        **flat(state.batch_stats, "batch_stats/"),
        **other_feeds(mesh),
    )


def local(array) -> np.ndarray:
    """This process's rows of a global array (its shards in order)."""
    shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
    return np.concatenate([np.asarray(s.data) for s in shards])


def other_feeds(mesh) -> dict:
    """The first global batch of the two other input paths, without training: on-the-fly simulation (``fly/images``:
    this process's rows, ``fly/shape``: the global array's) and the training set held on the devices
    (``resident/equal``: this process's copy is the whole set; ``resident/rows``: the first step's image indices)."""
    fly = config()
    with input_pipeline.training_feed(fly, input_pipeline.setup_data(fly, mesh.size), 0, 1, mesh) as feed:
        batch = next(iter(feed.inputs(0)))
    resident = config(sys.argv[3], sys.argv[4])
    resident.data.on_device = True
    data = input_pipeline.setup_data(resident, mesh.size)
    with input_pipeline.training_feed(resident, data, 0, 1, mesh) as feed:
        indices = next(iter(feed.inputs(0)))
        images = feed.resident["images"]
        equal = np.array_equal(np.asarray(images.addressable_data(0)), data.train_ds.read(slice(None))["images"])
        indices = np.asarray(indices.addressable_data(0))
    return {
        "fly/images": local(batch["images"]),
        "fly/shape": np.asarray(batch["images"].shape),
        "resident/equal": equal,
        "resident/shape": np.asarray(images.shape),
        "resident/rows": indices,
    }


if __name__ == "__main__":
    main(*sys.argv[1:])
