r"""Does the input path starve the train step? End-to-end training images/s of each data path divided by the
step-only images/s of ``benchmarks/train_throughput.py`` (issue 9; goal on a GPU: >= 0.95).

    python benchmarks/input_paths.py [--config configs/cpu_small.py] [--steps 16] [--batch-size 32] \
        [--per-dispatch 4] [--paths simulate,cached,on_device,on_device_k] [--json out.json] [--config.KEY=VALUE ...]

* ``step_only``: the compiled train step alone on batches already on the devices, timed as
  ``benchmarks/train_throughput.py`` times it (:func:`train_throughput.measure`'s loop: ``--steps`` steps after
  compiling and ``--warmup`` steps, blocking on the last loss), no data path at all: the ceiling. On a shared
  machine its speed drifts with the load, so it is timed again after each path and each path's ratio is to
  the mean of the step-only figures just before and just after it (all printed).
* End to end, each path as ``npejax.nn.train`` runs it (:func:`npejax.nn.input_pipeline.training_feed`,
  :meth:`~npejax.nn.input_pipeline.Feed.step_function`, :func:`~npejax.nn.train.run_epoch`): an epoch of
  ``--steps`` steps run twice, the first to compile (and start the simulator), the second timed; the figure is
  that epoch's ``images_per_s`` of metrics.csv (train steps until the last loss is on the host; validation
  excluded):

  - ``simulate``: on the fly, :class:`npejax.sim.pipeline.Simulator` with ``simulator.num_workers`` processes
    (rendering shares the machine with the step; the ``simulator.prefetch`` batches rendered during the
    warm-up epoch start the timed one);
  - ``cached``: a cached training set of ``--steps`` x batch images (written first, ``npejax.simulate``'s
    format), shuffled and read on the host each epoch, one batch put on the devices per step;
  - ``on_device``: the same set held on the devices (``data.on_device``), batches gathered there, one step per
    call (``train.steps_per_dispatch`` = 1);
  - ``on_device_k``: the same with ``--per-dispatch`` steps per call (``lax.scan``).

Each path prints images/s and the ratio to its bracketing step-only figures. Compare ratios of one run only.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from npejax import cli, configuration, io  # noqa: E402
from npejax import datasets as data_lib  # noqa: E402
from npejax.nn import input_pipeline, train  # noqa: E402
from npejax.nn import inputs as inputs_lib  # noqa: E402
from npejax.nn import model as model_lib  # noqa: E402
from npejax.nn import state as state_lib  # noqa: E402
from npejax.nn import steps as steps_lib  # noqa: E402
from npejax.sim import pipeline  # noqa: E402

PATHS = ("simulate", "cached", "on_device", "on_device_k")


def define_flags(fv: flags.FlagValues) -> None:
    config_flags.DEFINE_config_file(
        "config", os.path.join(ROOT, "configs", "cpu_small.py"), "Experiment config.", flag_values=fv, lock_config=False
    )
    flags.DEFINE_integer(
        "steps", 16, "Train steps per epoch (timed: one epoch per path).", lower_bound=1, flag_values=fv
    )
    flags.DEFINE_integer("warmup", 2, "Untimed step-only steps after compiling.", lower_bound=0, flag_values=fv)
    flags.DEFINE_integer(
        "batch-size", None, "Global batch size (default: config.train.batch_size).", lower_bound=1, flag_values=fv
    )
    flags.DEFINE_integer(
        "per-dispatch", 4, "train.steps_per_dispatch of the on_device_k path.", lower_bound=1, flag_values=fv
    )
    flags.DEFINE_list("paths", list(PATHS), f"Data paths to measure, of {', '.join(PATHS)}.", flag_values=fv)
    flags.DEFINE_string("json", None, "Also write the results here.", flag_values=fv)
    for name in ("batch-size", "per-dispatch"):
        flags.DEFINE_alias(name.replace("-", "_"), name, flag_values=fv)


class StepOnly:
    """The train step alone (``benchmarks/train_throughput.py``'s :func:`measure` loop, its compiled step kept
    so that it can be timed again): :meth:`images_per_s` times ``steps`` steps cycling through ``batches``."""

    def __init__(self, config, batches, warmup: int):
        mesh = steps_lib.data_mesh()
        self.state = jax.device_put(
            state_lib.create_state(config, model_lib.from_config(config), 1000, jax.random.key(0)),
            steps_lib.replicated(mesh),
        )
        normalizer = inputs_lib.Normalizer.fit(batches[0]["images"], batches[0]["background"], batches[0]["psf_params"])
        train_step, _ = steps_lib.jit_steps(normalizer, mesh, config.model.variant, config.train.augment)
        self.batches = [steps_lib.to_device(b, steps_lib.batch_sharding(mesh)) for b in batches]
        self.key = jax.random.key(1)
        t0 = time.perf_counter()
        self.step = train_step.lower(self.state, self.batches[0], self.key).compile()
        self.compile_s = time.perf_counter() - t0
        if warmup:
            self.images_per_s(warmup)

    def images_per_s(self, steps: int) -> float:
        t0 = time.perf_counter()
        for i in range(steps):
            self.state, loss = self.step(self.state, self.batches[i % len(self.batches)], self.key)
        jax.block_until_ready(loss)
        return steps * self.batches[0]["images"].shape[0] / (time.perf_counter() - t0)


def path_config(config, path: str, train_dir: str, per_dispatch: int):
    """``config`` set up for one data path (a copy)."""
    config = config.copy_and_resolve_references()
    config.data.train_dir = "" if path == "simulate" else train_dir
    config.data.on_device = path.startswith("on_device")
    config.train.steps_per_dispatch = per_dispatch if path == "on_device_k" else 1
    return config


def end_to_end(config) -> dict:
    """Two epochs of ``config``'s training loop (the first compiles); the second's metrics row."""
    configuration.validate(config, len(jax.devices()))
    mesh = steps_lib.data_mesh()
    data = input_pipeline.setup_data(config, mesh.size)
    state, normalizer, _ = train.restore_or_init(config, model_lib.from_config(config), data, mesh)
    single, evaluate = steps_lib.jit_steps(normalizer, mesh, config.model.variant, config.train.augment)
    val_batches = input_pipeline.validation_batches(config, data, steps_lib.batch_sharding(mesh))
    key = jax.random.key(config.seed + 1)
    with input_pipeline.training_feed(config, data, 0, 2, mesh) as feed:
        step = feed.step_function(config, normalizer, mesh, single)
        for epoch in range(2):
            state, row, *_ = train.run_epoch(
                config, data, state, step, evaluate, feed.inputs(epoch), val_batches, key, epoch
            )
    return row


def run(fv: flags.FlagValues) -> None:
    unknown = [p for p in fv.paths if p not in PATHS]
    if unknown:
        raise cli.UsageError(f"--paths: unknown path(s) {unknown}; choose from {', '.join(PATHS)}")
    config = fv.config
    batch_size = fv["batch-size"].value or int(config.train.batch_size)
    config.train.batch_size = batch_size
    config.train.images_per_epoch = fv.steps * batch_size
    config.train.eval_batch_size = config.data.num_val = batch_size  # one validation batch (not timed)
    config.train.progress = False
    print(
        f"{jax.device_count()} x {jax.devices()[0].device_kind}; batch {batch_size}; {fv.steps} steps per epoch; "
        f"cpu count {os.cpu_count()}, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}",
        flush=True,
    )

    spec = pipeline.SimulationSpec.from_config(config, seed=123, batch_size=batch_size)
    step_only = StepOnly(config, [pipeline.simulate_batch(spec, i) for i in range(4)], fv.warmup)
    before = step_only.images_per_s(fv.steps)
    print(f"step_only     {before:8.1f} images/s  (compile {step_only.compile_s:.0f} s)", flush=True)
    results, ratios, bracket = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        if set(fv.paths) - {"simulate"}:
            train_spec = pipeline.SimulationSpec.from_config(
                config, seed=data_lib.split_seed(config.seed, "train"), batch_size=batch_size
            )
            data_lib.write_dataset(
                train_spec,
                os.path.join(tmp, "train"),
                fv.steps * batch_size,
                "train",
                num_workers=int(config.simulator.num_workers),
                shard_size=batch_size * 4,
                progress=False,
            )
        for path in fv.paths:
            row = end_to_end(path_config(config, path, os.path.join(tmp, "train"), fv["per-dispatch"].value))
            after = step_only.images_per_s(fv.steps)
            results[path], bracket[path] = row["images_per_s"], (before, after)
            ratios[path] = row["images_per_s"] / ((before + after) / 2)
            print(
                f"{path:13s} {row['images_per_s']:8.1f} images/s  end-to-end / step-only {ratios[path]:.2f}  "
                f"(step-only before {before:.1f}, after {after:.1f})",
                flush=True,
            )
            before = after
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if fv.json:
        io.write_json(
            fv.json,
            dict(
                benchmark="input_paths",
                device_kind=jax.devices()[0].device_kind,
                devices=jax.device_count(),
                batch_size=batch_size,
                steps=fv.steps,
                per_dispatch=fv["per-dispatch"].value,
                images_per_s=results,
                step_only_before_after=bracket,
                ratio=ratios,
            ),
        )


def main(argv=None) -> int:
    return cli.main(define_flags, run, argv, doc=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
