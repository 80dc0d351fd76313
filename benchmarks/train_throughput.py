r"""Training-step throughput: images/s of the jit-compiled, sharded train step alone, on in-memory batches,
and how close it runs to the hardware.

    python benchmarks/train_throughput.py --config configs/psf_aware.py --dtypes float32,bfloat16 \
        [--batch-size 64] [--steps 50] [--warmup 5] [--peak_tflops 989] [--config.KEY=VALUE ...] [--json out.json]

Simulation is excluded: a few batches are rendered once, put on the devices, and cycled. Each dtype gets
its own compile (``lower().compile()``, timed separately as ``compile_s``) and ``--warmup`` untimed steps;
the timed loop blocks on the last loss. The step is :func:`npejax.nn.steps.train_step` as
:func:`npejax.nn.steps.jit_steps` compiles it for training.

Reported per dtype (also the ``--json`` fields):

* ``images_per_s``, ``ms_per_step``, ``compile_s``, ``parameters``, ``devices``;
* ``gflop_per_image``: floating-point operations of one train step (forward, backward, Adam; augmentation
  and input features included) from XLA's cost analysis of the compiled step (:func:`xla_flops`: the
  per-device figure of the SPMD-partitioned program times the number of devices), divided by the global
  batch size, in GFLOP (1e9). XLA counts the elementwise work too, and leaves out products with SAME
  padding's zeros;
* ``conv_gflop_per_image`` (the figure to use on a GPU: XLA's GPU cost analysis leaves out the convolutions
  it hands to cuDNN as custom calls, measured on an H100: 0.19 GFLOP/image from XLA against 12.19 counted):
  the convolutions' and matrix products' share alone, counted from the step's
  jaxpr (:func:`matmul_flops`: 2 x multiply-adds, independent of XLA), the figure MFU is usually quoted for;
* ``tflops``: achieved TFLOP/s = XLA flops per step x steps/s / 1e12 (all devices together);
* ``mfu`` (with ``--peak_tflops``, the dense peak of ONE device for the dtype that runs): ``tflops /
  (peak_tflops x devices)``; ``conv_mfu`` the same from the conv/matmul flops;
* ``paper_protocol_hours``: 210,000 images x 50 epochs = 10.5M image-steps (paper Section 6) at this
  images/s, in hours (steps only: no simulation, validation or checkpoints).
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

PAPER_IMAGE_STEPS = 210_000 * 50  # paper Section 6: 210k training images, 50 epochs


def define_flags(fv: flags.FlagValues) -> None:
    config_flags.DEFINE_config_file(
        "config", os.path.join(ROOT, "configs", "psf_aware.py"), "Experiment config.", flag_values=fv, lock_config=True
    )
    flags.DEFINE_string("dtypes", "float32,bfloat16", "Comma-separated model.dtype values to measure.", flag_values=fv)
    flags.DEFINE_integer(
        "batch-size", None, "Global batch size (default: config.train.batch_size).", lower_bound=1, flag_values=fv
    )
    flags.DEFINE_integer("steps", 50, "Timed steps per dtype.", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("warmup", 5, "Untimed steps after compiling.", lower_bound=0, flag_values=fv)
    flags.DEFINE_integer(
        "distinct-batches", 4, "Distinct simulated batches cycled through.", lower_bound=1, flag_values=fv
    )
    flags.DEFINE_string(
        "peak_tflops",
        None,
        "Dense peak TFLOP/s of one device: one number for every dtype, or "
        "per dtype as 'float32=494.7,bfloat16=989' (H100 SXM: TF32 and bf16 dense). Reports the "
        "fraction of peak (MFU).",
        flag_values=fv,
    )
    flags.DEFINE_string("json", None, "Also write the results here.", flag_values=fv)
    for name in ("batch-size", "distinct-batches"):
        flags.DEFINE_alias(name.replace("-", "_"), name, flag_values=fv)


def xla_flops(compiled, num_devices: int = 1) -> float | None:
    """Floating-point operations of one call of ``compiled`` (a ``jax.stages.Compiled``) from XLA's cost
    analysis, over all ``num_devices`` devices; None where the backend gives none.

    ``cost_analysis()`` returns a dict in recent JAX and a list of one dict per program in older ones; its
    ``'flops'`` is that of the SPMD-partitioned program, i.e. one device's share of a data-parallel step
    (checked: with 2 CPU devices it halves), hence the factor ``num_devices``.
    """
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # noqa: BLE001  (some backends do not implement it)
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    if not analysis or analysis.get("flops") is None or analysis["flops"] <= 0:
        return None
    return float(analysis["flops"]) * num_devices


def _sub_jaxprs(params: dict):
    """The jaxprs among an equation's parameters (pjit, custom_jvp/vjp, cond branches, scan, while ...)."""
    for value in params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if hasattr(v, "eqns") or hasattr(getattr(v, "jaxpr", None), "eqns"):
                yield v


def matmul_flops(jaxpr) -> float:
    """2 x multiply-adds of every convolution and matrix product in ``jaxpr`` (a ClosedJaxpr or Jaxpr from
    ``jax.make_jaxpr``), nested jaxprs included (a scan's body times its length; a cond's costliest branch; a
    while loop's body once: its trip count is not in the jaxpr).

    Convolution: ``2 * size(out) * size(kernel) / kernel_out_features / prod(lhs_dilation)`` (the zeros a
    strided convolution's input gradient inserts are not counted; SAME padding's are); dot_general:
    ``2 * size(out) * size(contracted dims)``. Shapes are global, so this counts all devices' work.
    """
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            out, rhs = eqn.outvars[0].aval.shape, eqn.invars[1].aval.shape
            out_dim = eqn.params["dimension_numbers"].rhs_spec[0]
            # the input gradient of a strided conv dilates its input with zeros: skip those products
            zeros = np.prod(eqn.params.get("lhs_dilation") or (1,), dtype=np.float64)
            total += 2.0 * np.prod(out, dtype=np.float64) * np.prod(rhs, dtype=np.float64) / rhs[out_dim] / zeros
        elif name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            contracted = np.prod([lhs[d] for d in lhs_contract], dtype=np.float64)
            total += 2.0 * np.prod(eqn.outvars[0].aval.shape, dtype=np.float64) * contracted
        subs = [matmul_flops(sub) for sub in _sub_jaxprs(eqn.params)]
        if not subs:
            continue
        if name == "cond":
            total += max(subs)
        elif name == "scan":
            total += eqn.params["length"] * sum(subs)
        else:
            total += sum(subs)
    return float(total)


def utilization(r: dict, flops: float | None, conv_flops: float, peak_tflops: float | None, num_devices: int) -> dict:
    """The hardware fields of a result ``r`` (images_per_s, batch_size): GFLOP/image, TFLOP/s, MFU, and the
    paper protocol's hours (module doc)."""
    steps_per_s = r["images_per_s"] / r["batch_size"]
    out = dict(
        gflop_per_image=None if flops is None else flops / r["batch_size"] / 1e9,
        conv_gflop_per_image=conv_flops / r["batch_size"] / 1e9,
        tflops=None if flops is None else flops * steps_per_s / 1e12,
        conv_tflops=conv_flops * steps_per_s / 1e12,
        peak_tflops=peak_tflops,
        mfu=None,
        conv_mfu=None,
        paper_protocol_hours=PAPER_IMAGE_STEPS / r["images_per_s"] / 3600.0,
    )
    if peak_tflops:
        total_peak = peak_tflops * num_devices
        out["mfu"] = None if flops is None else out["tflops"] / total_peak
        out["conv_mfu"] = out["conv_tflops"] / total_peak
    return out


def parse_peaks(text: str | None, dtypes) -> dict:
    """``--peak_tflops`` as {dtype: TFLOP/s or None}: '989' for all, or 'float32=494.7,bfloat16=989'."""
    if not text:
        return {d: None for d in dtypes}
    try:
        if "=" not in text:
            value = float(text)
            peaks = {d: value for d in dtypes}
        else:
            pairs = [item.split("=", 1) for item in text.split(",")]
            peaks = {k.strip(): float(v) for k, v in pairs}
    except ValueError:
        raise ValueError(
            f"--peak_tflops {text!r}: expected a number or dtype=number pairs, e.g. 'float32=494.7,bfloat16=989'"
        ) from None
    if any(not v > 0 for v in peaks.values()):
        raise ValueError(f"--peak_tflops {text!r}: peaks must be positive TFLOP/s")
    return {d: peaks.get(d) for d in dtypes}


def measure(config, batches, steps: int, warmup: int, peak_tflops: float | None = None) -> dict:
    """Compiles the train step for ``config`` and times ``steps`` steps cycling through ``batches``."""
    devices = jax.devices()
    mesh = steps_lib.data_mesh(devices)
    state = state_lib.create_state(config, model_lib.from_config(config), 1000, jax.random.key(0))
    state = jax.device_put(state, steps_lib.replicated(mesh))
    normalizer = inputs_lib.Normalizer.fit(batches[0]["images"], batches[0]["background"], batches[0]["psf_params"])
    train_step, _ = steps_lib.jit_steps(normalizer, mesh, config.model.variant, config.train.augment)
    on_device = [steps_lib.to_device(b, steps_lib.batch_sharding(mesh)) for b in batches]
    key = jax.random.key(1)
    n_params = state_lib.num_parameters(state.params)

    conv_flops = matmul_flops(jax.make_jaxpr(train_step)(state, on_device[0], key))
    t0 = time.perf_counter()
    step = train_step.lower(state, on_device[0], key).compile()
    compile_s = time.perf_counter() - t0
    flops = xla_flops(step, len(devices))
    for i in range(warmup):
        state, loss = step(state, on_device[i % len(on_device)], key)
    if warmup:
        jax.block_until_ready(loss)
    t0 = time.perf_counter()
    for i in range(steps):
        state, loss = step(state, on_device[i % len(on_device)], key)
    jax.block_until_ready(loss)
    seconds = time.perf_counter() - t0
    batch_size = batches[0]["images"].shape[0]
    r = dict(
        dtype=config.model.dtype,
        batch_size=batch_size,
        steps=steps,
        seconds=seconds,
        images_per_s=steps * batch_size / seconds,
        ms_per_step=1e3 * seconds / steps,
        compile_s=compile_s,
        final_loss=float(loss),
        parameters=n_params,
        devices=[str(d) for d in devices],
    )
    r.update(utilization(r, flops, conv_flops, peak_tflops, len(devices)))
    return r


def describe(r: dict) -> str:
    """One line of a result: throughput, FLOPs, utilization, the paper protocol's time."""
    gflop = "n/a" if r["gflop_per_image"] is None else f"{r['gflop_per_image']:.3f}"
    tflops = "n/a" if r["tflops"] is None else f"{r['tflops']:.2f}"
    line = (
        f"{r['dtype']:9s} batch {r['batch_size']:4d}: {r['images_per_s']:9.1f} images/s  "
        f"{r['ms_per_step']:8.2f} ms/step  compile {r['compile_s']:.1f} s  {gflop} GFLOP/image (XLA; "
        f"conv/matmul {r['conv_gflop_per_image']:.3f})  {tflops} TFLOP/s"
    )
    if r["mfu"] is not None:
        line += f"  {100 * r['mfu']:.1f}% of {r['peak_tflops']:g} TFLOP/s peak (conv/matmul {100 * r['conv_mfu']:.1f}%)"
    return line + f"  paper protocol (10.5M image-steps): {r['paper_protocol_hours']:.2f} h"


def run(fv: flags.FlagValues) -> None:
    config = fv.config
    batch_size = fv["batch-size"].value or int(config.train.batch_size)
    config.train.batch_size = batch_size
    dtypes = fv.dtypes.split(",")
    peaks = parse_peaks(fv.peak_tflops, dtypes)  # checked before the simulation
    spec = pipeline.SimulationSpec.from_config(config, seed=123, batch_size=batch_size)
    batches = [pipeline.simulate_batch(spec, i) for i in range(fv["distinct-batches"].value)]
    results = []
    for dtype in dtypes:
        config.model.dtype = dtype
        r = measure(config, batches, fv.steps, fv.warmup, peaks[dtype])
        results.append(r)
        print(
            f"{describe(r)}  ({r['parameters']:,} parameters, {len(r['devices'])} x {jax.devices()[0].device_kind})",
            flush=True,
        )
    if len(results) > 1:
        print(
            f"{results[1]['dtype']} / {results[0]['dtype']}: "
            f"{results[1]['images_per_s'] / results[0]['images_per_s']:.2f}x"
        )
    if fv.json:
        io.write_json(
            fv.json,
            dict(
                benchmark="train",
                jax=jax.__version__,
                device_kind=jax.devices()[0].device_kind,
                platform=jax.devices()[0].platform,
                config_file=config_flags.get_config_filename(fv["config"]),
                variant=config.model.variant,
                width=int(config.model.width),
                conv_blocks=model_lib.num_conv_blocks(int(config.model.stem_blocks), config.model.stages),
                peak_tflops=peaks,
                paper_image_steps=PAPER_IMAGE_STEPS,
                results=results,
            ),
        )


def main(argv=None) -> int:
    return cli.main(define_flags, run, argv, doc=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
