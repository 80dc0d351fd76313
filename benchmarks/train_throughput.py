"""Training-step throughput: images/s of the jit-compiled, sharded train step alone, on in-memory batches.

    python benchmarks/train_throughput.py --config configs/psf_aware.py --dtypes float32,bfloat16 \
        [--batch-size 64] [--steps 50] [--warmup 5] [--config.KEY=VALUE ...] [--json out.json]

Simulation is excluded: a few batches are rendered once, put on the devices, and cycled. Each dtype gets
its own compile (timed separately) and ``--warmup`` untimed steps; the timed loop blocks on the last
loss. Reports images/s, ms/step, compile seconds, parameter count and the devices used.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from npejax import cli  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/psf_aware.py", "Experiment config.", lock_config=False)
flags.DEFINE_string("dtypes", "float32,bfloat16", "Comma-separated model.dtype values to measure.")
flags.DEFINE_integer("batch_size", None, "Global batch size (default: config.train.batch_size).")
flags.DEFINE_integer("steps", 50, "Timed steps per dtype.")
flags.DEFINE_integer("warmup", 5, "Untimed steps after compiling.")
flags.DEFINE_integer("distinct_batches", 4, "Distinct simulated batches cycled through.")
flags.DEFINE_string("json", None, "Also write the results here.")


def measure(config, batches, steps: int, warmup: int) -> dict:
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P

    from npejax import inputs as inputs_lib
    from npejax import train

    devices = jax.devices()
    mesh = jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    net = train.create_model(config)
    state = train.create_state(config, net, 1000, jax.random.key(0))
    state = jax.device_put(state, NamedSharding(mesh, P()))
    normalizer = inputs_lib.Normalizer.fit(batches[0]["images"], batches[0]["background"], batches[0]["psf_params"])
    train_step, _ = train.make_steps(config, net, normalizer, mesh)
    on_device = [train._to_device(b, NamedSharding(mesh, P("data"))) for b in batches]
    key = jax.random.key(1)
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(state.params))

    t0 = time.perf_counter()
    state, loss = train_step(state, on_device[0], key)
    jax.block_until_ready(loss)
    compile_s = time.perf_counter() - t0
    for i in range(warmup):
        state, loss = train_step(state, on_device[i % len(on_device)], key)
    jax.block_until_ready(loss)
    t0 = time.perf_counter()
    for i in range(steps):
        state, loss = train_step(state, on_device[i % len(on_device)], key)
    jax.block_until_ready(loss)
    seconds = time.perf_counter() - t0
    batch_size = batches[0]["images"].shape[0]
    return dict(dtype=config.model.dtype, batch_size=batch_size, steps=steps, seconds=seconds,
                images_per_s=steps * batch_size / seconds, ms_per_step=1e3 * seconds / steps,
                compile_s=compile_s, final_loss=float(loss), parameters=n_params,
                devices=[str(d) for d in devices])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    import jax

    from npejax import pipeline

    config = FLAGS.config
    batch_size = FLAGS.batch_size or int(config.train.batch_size)
    config.train.batch_size = batch_size
    spec = pipeline.SimulationSpec.from_config(config, seed=123, batch_size=batch_size)
    batches = [pipeline.simulate_batch(spec, i) for i in range(FLAGS.distinct_batches)]
    results = []
    for dtype in FLAGS.dtypes.split(","):
        config.model.dtype = dtype
        r = measure(config, batches, FLAGS.steps, FLAGS.warmup)
        results.append(r)
        print(f"{dtype:9s} batch {batch_size:4d}: {r['images_per_s']:9.1f} images/s  {r['ms_per_step']:8.2f} ms/step  "
              f"compile {r['compile_s']:.1f} s  ({r['parameters']:,} parameters, {len(r['devices'])} x "
              f"{jax.devices()[0].device_kind})", flush=True)
    if len(results) > 1:
        print(f"{results[1]['dtype']} / {results[0]['dtype']}: {results[1]['images_per_s'] / results[0]['images_per_s']:.2f}x")
    if FLAGS.json:
        tmp = FLAGS.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(dict(jax=jax.__version__, device_kind=jax.devices()[0].device_kind,
                           variant=config.model.variant, results=results), f, indent=2)
        os.replace(tmp, FLAGS.json)


if __name__ == "__main__":
    cli.add_config_root_to_path(sys.argv)
    app.run(main)
