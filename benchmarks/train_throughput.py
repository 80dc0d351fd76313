r"""Training-step throughput: images/s of the jit-compiled, sharded train step alone, on in-memory batches.

    python benchmarks/train_throughput.py --config configs/psf_aware.py --dtypes float32,bfloat16 \
        [--batch-size 64] [--steps 50] [--warmup 5] [--config.KEY=VALUE ...] [--json out.json]

Simulation is excluded: a few batches are rendered once, put on the devices, and cycled. Each dtype gets
its own compile (timed separately) and ``--warmup`` untimed steps; the timed loop blocks on the last
loss. Reports images/s, ms/step, compile seconds, parameter count and the devices used. The step is
:func:`npejax.nn.steps.train_step` as :func:`npejax.nn.steps.jit_steps` compiles it for training.
"""

from __future__ import annotations

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from npejax import cli, io  # noqa: E402
from npejax.nn import inputs as inputs_lib  # noqa: E402
from npejax.nn import model as model_lib  # noqa: E402
from npejax.nn import state as state_lib  # noqa: E402
from npejax.nn import steps as steps_lib  # noqa: E402
from npejax.sim import pipeline  # noqa: E402


def define_flags(fv: flags.FlagValues) -> None:
    config_flags.DEFINE_config_file("config", os.path.join(ROOT, "configs", "psf_aware.py"), "Experiment config.",
                                    flag_values=fv, lock_config=True)
    flags.DEFINE_string("dtypes", "float32,bfloat16", "Comma-separated model.dtype values to measure.",
                        flag_values=fv)
    flags.DEFINE_integer("batch-size", None, "Global batch size (default: config.train.batch_size).",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("steps", 50, "Timed steps per dtype.", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("warmup", 5, "Untimed steps after compiling.", lower_bound=0, flag_values=fv)
    flags.DEFINE_integer("distinct-batches", 4, "Distinct simulated batches cycled through.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_string("json", None, "Also write the results here.", flag_values=fv)
    for name in ("batch-size", "distinct-batches"):
        flags.DEFINE_alias(name.replace("-", "_"), name, flag_values=fv)


def measure(config, batches, steps: int, warmup: int) -> dict:
    """Compiles the train step for ``config`` and times ``steps`` steps cycling through ``batches``."""
    devices = jax.devices()
    mesh = steps_lib.data_mesh(devices)
    state = state_lib.create_state(config, model_lib.from_config(config), 1000, jax.random.key(0))
    state = jax.device_put(state, steps_lib.replicated(mesh))
    normalizer = inputs_lib.Normalizer.fit(batches[0]["images"], batches[0]["background"], batches[0]["psf_params"])
    train_step, _ = steps_lib.jit_steps(normalizer, mesh, config.model.variant, config.train.augment)
    on_device = [steps_lib.to_device(b, steps_lib.batch_sharding(mesh)) for b in batches]
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


def run(fv: flags.FlagValues) -> None:
    config = fv.config
    batch_size = fv["batch-size"].value or int(config.train.batch_size)
    config.train.batch_size = batch_size
    spec = pipeline.SimulationSpec.from_config(config, seed=123, batch_size=batch_size)
    batches = [pipeline.simulate_batch(spec, i) for i in range(fv["distinct-batches"].value)]
    results = []
    for dtype in fv.dtypes.split(","):
        config.model.dtype = dtype
        r = measure(config, batches, fv.steps, fv.warmup)
        results.append(r)
        print(f"{dtype:9s} batch {batch_size:4d}: {r['images_per_s']:9.1f} images/s  {r['ms_per_step']:8.2f} ms/step  "
              f"compile {r['compile_s']:.1f} s  ({r['parameters']:,} parameters, {len(r['devices'])} x "
              f"{jax.devices()[0].device_kind})", flush=True)
    if len(results) > 1:
        print(f"{results[1]['dtype']} / {results[0]['dtype']}: {results[1]['images_per_s'] / results[0]['images_per_s']:.2f}x")
    if fv.json:
        io.write_json(fv.json, dict(jax=jax.__version__, device_kind=jax.devices()[0].device_kind,
                                    variant=config.model.variant, results=results))


def main(argv=None) -> int:
    return cli.main(define_flags, run, argv, doc=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
