"""Simulation throughput: images/s on one core and per worker count, and the cost per star and galaxy.

    python benchmarks/simulate_throughput.py                 # default prior, 1..cpu_count workers
    python benchmarks/simulate_throughput.py --max-workers 2 --images 640 --json out.json

The prior, renderer settings and field bank are those of ``configs/default.py``. All figures come from one
run so that their ratios are comparable on a shared, noisy machine:

* ``render``: ``Renderer.render`` in this process (one core, warm caches) for the k-space renderer and
  for the per-source GalSim ``drawImage`` reference;
* ``per_source``: seconds per star and per galaxy (images of stars only / galaxies only, minus the cost
  of empty images with the same noise and background);
* ``pipeline``: steady-state images/s of :class:`npejax.sim.pipeline.Simulator` with 1..N worker processes
  (after a warm-up of ``--warmup`` batches), and the speed-up over one worker.
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
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()

    config = default.get_config()
    bank = fields.load_bank(config.fields.bank)
    results = dict(
        machine=f"{platform.node()} ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        render=bench_render(config, bank, args.images),
    )
    r = results["render"]
    print(f"one core, default prior ({r['mean_sources_per_image']:.2f} sources/image):")
    for method in ("kspace", "drawimage"):
        print(f"  {method:10s} {r[method]['images_per_s']:7.1f} images/s ({r[method]['ms_per_image']:.2f} ms/image)")
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
    if args.json:
        io.write_json(args.json, results)


if __name__ == "__main__":
    main()
