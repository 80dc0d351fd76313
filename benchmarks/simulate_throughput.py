"""Simulation throughput: images/s on one core and per worker count, and the cost per star and galaxy.

    python benchmarks/simulate_throughput.py                 # default prior, 1..cpu_count workers
    python benchmarks/simulate_throughput.py --max-workers 2 --images 640 --json out.json
    python benchmarks/simulate_throughput.py --backend both --images 256     # + the JAX renderer, ratio to k-space
    python benchmarks/simulate_throughput.py --backend jax --jax-batch-sizes 256 1024 4096   # on a GPU

The prior, renderer settings and field bank are those of ``configs/default.py``. All figures come from one
run so that their ratios are comparable on a shared, noisy machine:

* ``render``: ``Renderer.render`` in this process (one core, warm caches) for the k-space renderer and
  for the per-source GalSim ``drawImage`` reference;
* ``per_source``: seconds per star and per galaxy (images of stars only / galaxies only, minus the cost
  of empty images with the same noise and background);
* ``pipeline``: steady-state images/s of :class:`npejax.sim.pipeline.Simulator` with 1..N worker processes
  (after a warm-up of ``--warmup`` batches), and the speed-up over one worker.

``--backend jax`` or ``both`` adds ``jax``: images/s of :class:`npejax.sim.jax_render.JaxRenderer` (Gaussian
noise, default prior) on JAX's default device, per batch size of ``--jax-batch-sizes`` (after one compiling call
per size; best of ``--jax-repeats``), timed to the images on the device (``render_device`` + block; on a CPU, XLA
uses every core), and with ``both`` its ratios to the one-core k-space figure and to the Simulator's best
worker count of the same run (measured first: once JAX's CPU threads have run, GalSim in the same process
slows). ``--backend jax`` skips the GalSim figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from configs import default  # noqa: E402
from npejax import io  # noqa: E402
from npejax.sim import fields, pipeline, render  # noqa: E402
from npejax.sim import prior as prior_lib


def _time_render(renderer, catalog, field_id, origins, repeats=1):
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        renderer.render(catalog, field_id, origins, np.random.default_rng(0))
        best = min(best, time.perf_counter() - t)
    return best


def bench_render(config, bank, num_images, seed=0):
    rng = np.random.default_rng(seed)
    image_shape = (config.image_size, config.image_size)
    base = prior_lib.CatalogPrior.from_config(config.prior, image_shape)
    render_config = render.RenderConfig.from_config(config.render)
    catalog = base.sample(rng, num_images)
    field_id = bank.sample_fields(rng, num_images)
    origins = bank.sample_crop_origins(rng, num_images, base.image_shape)
    out = {}
    for method in ("kspace", "drawimage"):
        renderer = render.Renderer(bank, image_shape, dataclasses.replace(render_config, method=method))
        renderer.render(catalog, field_id, origins, rng)  # warm the per-field caches
        seconds = _time_render(renderer, catalog, field_id, origins)
        out[method] = dict(images_per_s=num_images / seconds, ms_per_image=1e3 * seconds / num_images)
    out["kspace_over_drawimage"] = out["kspace"]["images_per_s"] / out["drawimage"]["images_per_s"]
    out["mean_sources_per_image"] = float(catalog["n_sources"].mean())

    # per-source cost: same counts and fields, all stars / all galaxies / none
    renderer = render.Renderer(bank, image_shape, render_config)
    renderer.render(catalog, field_id, origins, rng)
    timings = {}
    for name, prob_galaxy in (("stars", 0.0), ("galaxies", 1.0)):
        kind = dataclasses.replace(base, prob_galaxy=prob_galaxy).sample(np.random.default_rng(seed), num_images)
        timings[name] = (_time_render(renderer, kind, field_id, origins, repeats=2), int(kind["n_sources"].sum()))
    empty = dict(catalog, n_sources=np.zeros_like(catalog["n_sources"]))
    t_empty = _time_render(renderer, empty, field_id, origins, repeats=2)
    out["per_source_ms"] = {name: 1e3 * (t - t_empty) / n for name, (t, n) in timings.items()}
    out["empty_image_ms"] = 1e3 * t_empty / num_images
    return out


def bench_jax(config, bank, batch_sizes, repeats=3, seed=0):
    """images/s of the JAX renderer per batch size: ``render_device`` to the images on the device."""
    import jax

    from npejax.sim import jax_render

    image_shape = (config.image_size, config.image_size)
    base = prior_lib.CatalogPrior.from_config(config.prior, image_shape)
    renderer = jax_render.JaxRenderer(bank, image_shape, render.RenderConfig.from_config(config.render))
    out = dict(device=str(jax.devices()[0]), canvas=list(renderer.canvas_shape), batch={})
    for b in batch_sizes:
        rng = np.random.default_rng(seed)
        catalog = base.sample(rng, b)
        field_id, origins = bank.sample_fields(rng, b), bank.sample_crop_origins(rng, b, image_shape)
        t = time.perf_counter()
        jax.block_until_ready(renderer.render_device(catalog, field_id, origins, jax_render.batch_key(seed, 0)))
        compile_s = time.perf_counter() - t
        best = np.inf
        for i in range(repeats):
            t = time.perf_counter()
            jax.block_until_ready(renderer.render_device(catalog, field_id, origins, jax_render.batch_key(seed, i + 1)))
            best = min(best, time.perf_counter() - t)
        out["batch"][str(b)] = dict(images_per_s=b / best, ms_per_image=1e3 * best / b, first_call_s=compile_s)
    return out


def bench_pipeline(config, bank, workers, batch_size, warmup, batches):
    spec = pipeline.SimulationSpec.from_config(config, seed=1, batch_size=batch_size, bank=bank)
    out = {}
    for n in workers:
        with pipeline.Simulator(spec, num_workers=n, prefetch=2 * max(n, 1)) as sim:
            for _ in range(warmup):
                next(sim)
            t = time.perf_counter()
            for _ in range(batches):
                next(sim)
            seconds = time.perf_counter() - t
        out[n] = batches * batch_size / seconds
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400, help="images for the one-core render timing")
    parser.add_argument("--max-workers", type=int, default=os.cpu_count())
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=16, help="batches before timing (workers warm caches)")
    parser.add_argument("--batches", type=int, default=40, help="timed batches per worker count")
    parser.add_argument("--backend", choices=("galsim", "jax", "both"), default="galsim")
    parser.add_argument("--jax-batch-sizes", type=int, nargs="+", default=[64], help="JAX renderer batch sizes")
    parser.add_argument("--jax-repeats", type=int, default=3, help="timed calls per batch size (best is kept)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    if min(args.jax_batch_sizes) < 1 or args.jax_repeats < 1:
        parser.error(
            f"--jax-batch-sizes and --jax-repeats must be >= 1, got {args.jax_batch_sizes}, {args.jax_repeats}"
        )

    config = default.get_config()
    bank = fields.load_bank(config.fields.bank)
    results = dict(
        machine=f"{platform.node()} ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
    )
    if args.backend in ("galsim", "both"):  # first: JAX's CPU threads, once started, slow GalSim in this process
        results["render"] = bench_render(config, bank, args.images)
        r = results["render"]
        print(f"one core, default prior ({r['mean_sources_per_image']:.2f} sources/image):")
        for method in ("kspace", "drawimage"):
            print(
                f"  {method:10s} {r[method]['images_per_s']:7.1f} images/s ({r[method]['ms_per_image']:.2f} ms/image)"
            )
        print(f"  kspace / drawimage: {r['kspace_over_drawimage']:.2f}x")
        print(
            f"  per star {r['per_source_ms']['stars']:.3f} ms, per galaxy {r['per_source_ms']['galaxies']:.3f} ms, "
            f"empty image {r['empty_image_ms']:.3f} ms"
        )
        pipe = bench_pipeline(config, bank, range(1, args.max_workers + 1), args.batch_size, args.warmup, args.batches)
        results["pipeline"] = {str(n): v for n, v in pipe.items()}
        print("Simulator (worker processes), steady state:")
        for n, v in pipe.items():
            print(f"  {n} workers: {v:7.1f} images/s ({v / pipe[1]:.2f}x one worker)")
    if args.backend in ("jax", "both"):
        j = results["jax"] = bench_jax(config, bank, args.jax_batch_sizes, args.jax_repeats)
        print(f"JAX renderer on {j['device']} (canvas {j['canvas'][0]} x {j['canvas'][1]}):")
        for b, v in j["batch"].items():
            print(
                f"  batch {b:>5s}: {v['images_per_s']:9.1f} images/s ({v['ms_per_image']:.3f} ms/image; "
                f"first call {v['first_call_s']:.1f} s)"
            )
    if args.backend == "both":
        best = max(v["images_per_s"] for v in results["jax"]["batch"].values())
        results["jax_over_kspace"] = best / results["render"]["kspace"]["images_per_s"]
        most = max(results["pipeline"].values())
        results["jax_over_simulator"] = best / most
        print(
            f"JAX renderer (best batch) / k-space on one core: {results['jax_over_kspace']:.2f}x; "
            f"/ Simulator at its best worker count: {results['jax_over_simulator']:.2f}x"
        )
    if args.json:
        io.write_json(args.json, results)


if __name__ == "__main__":
    main()
