"""Very bright stars of the c = 613314 star-flux prior (r down to 7.85): render time, stamps, flux conservation.

    python benchmarks/bright_stars.py                        # 320 images per prior, 10 batches of 32
    python benchmarks/bright_stars.py --images 640 --json out.json
    python benchmarks/bright_stars.py --skip-single --kspace-stars   # every star in k-space, as before

The prior (``config.prior``), renderer settings and field bank are those of ``configs/default.py``; the
Table 1 prior differs only in the star-flux truncation c = 1000 (r >= 14.8). Parts:

* ``single``: one noiseless star (``method='kspace'``, which draws bright stars in real space) at r = 8 ... 20,
  in the image centre and 2 px from the left edge, for a few bank fields: the image sum over the flux expected
  inside the image (the pixel-integrated six-parameter PSF of :func:`npejax.sim.psf.profile`, truncated at
  ``psf_trunc_pixels``: midpoints, 20 and 40 per pixel side, Richardson-extrapolated), the largest pixel
  difference from that reference in units of the pixel noise (sqrt of sky + star electrons; "global" divides
  by the smallest sigma in the image, "local" by each pixel's own), the largest value beyond the truncation
  radius (ringing of the band-limited stamp) in the same units, which path drew the star (k-space stamp or
  real space) and the periodic stamp size of the k-space path. At r = 9 also the GalSim ``drawimage`` path.
* ``batches``: :func:`npejax.sim.pipeline.simulate_batch` (one core, as a worker runs it) for both priors with
  the same seed and batch indices, so the catalogs differ only in star fluxes; alternated batch by batch so
  that machine load hits both alike. Images/s (wall clock, and per CPU second of this process: steadier on a
  shared machine), the fraction of images holding a star brighter than r 15, the brightest star, the stamp
  sizes used (needed and capped at ``render.max_stamp_size``), the images holding a NaN pixel, and the r below
  which stars take the real-space path (over the bank's fields), with the one-time cost per field of the star
  stamp and that switch (done for every field before the timing, like the other caches).
* ``stamp_cap``: the first 64 images of the new prior drawn noiseless with ``max_stamp_size`` 256 and 1024:
  the largest pixel difference in pixel-noise sigmas (light that the capped periodic stamps wrap).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import math
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import threadpoolctl  # noqa: E402

from configs import default  # noqa: E402
from npejax import catalogs, io, schema  # noqa: E402
from npejax.sim import fields, pipeline, psf, render  # noqa: E402

MAGS = (8.0, 9.0, 12.0, 15.0, 20.0)
FIELDS = (0, 123, 250, 499)
POSITIONS = {"centre": (40.3, 39.7), "edge": (2.2, 40.6)}


def _one_star(x, y, flux):
    cat = {k: np.zeros((1, 1), bool if k == "is_galaxy" else np.float32) for k in schema.CATALOG_KEYS}
    cat["n_sources"] = np.array([1], np.int32)
    cat["x"][0, 0], cat["y"][0, 0], cat["flux"][0, 0] = x, y, flux
    return {k: v[0] for k, v in cat.items()}


def _midpoint(params, x, y, trunc, shape, sub):
    """Unit-flux star integrated over the pixels of ``shape`` by ``sub`` x ``sub`` midpoints per pixel, within
    ``trunc`` + 3 pixels of the star (the Gaussian terms are below 1e-20 beyond)."""
    h, w = shape
    r0, r1 = max(int(y - trunc) - 3, 0), min(int(y + trunc) + 4, h)
    c0, c1 = max(int(x - trunc) - 3, 0), min(int(x + trunc) + 4, w)
    fine = (np.arange(sub) + 0.5) / sub
    xs = (np.arange(c0, c1)[:, None] + fine[None, :]).ravel() - x
    out = np.zeros(shape)
    for row in range(r0, r1):
        density = psf.profile(np.hypot((row + fine - y)[:, None], xs[None, :]), params, trunc)
        out[row, c0:c1] = density.reshape(sub, c1 - c0, sub).mean(axis=(0, 2))
    return out


def _reference(params, x, y, trunc, shape):
    """Richardson extrapolation of 20 and 40 midpoints per pixel side (error about 1e-9 of the flux)."""
    return (4 * _midpoint(params, x, y, trunc, shape, 40) - _midpoint(params, x, y, trunc, shape, 20)) / 3


def single_stars(config, bank):
    shape = (config.image_size, config.image_size)
    rc = render.RenderConfig.from_config(config.render)
    renderers = {
        m: render.Renderer(bank, shape, dataclasses.replace(rc, noise="none", method=m))
        for m in ("kspace", "drawimage")
    }
    rows = []
    for field in FIELDS:
        to_e = float(bank.to_electrons(field))
        sky = bank.background_electrons(field, (300, 400), shape)
        limit = renderers["kspace"]._star_kspace_limit(field)  # electrons
        for where, (x, y) in POSITIONS.items():
            ref = _reference(bank.psf_params[field], x, y, rc.psf_trunc_pixels, shape)
            yy, xx = np.mgrid[: shape[0], : shape[1]] + 0.5
            outside = np.hypot(xx - x, yy - y) > rc.psf_trunc_pixels + 1.5  # wholly beyond the truncation
            for mag in MAGS:
                flux = float(catalogs.mag_to_flux(mag))
                star = _one_star(x, y, flux)
                image = renderers["kspace"].source_electrons(star, field) / to_e
                sigma = np.sqrt(sky + np.maximum(ref * flux * to_e, 0)) / to_e  # pixel noise, nmgy
                row = dict(
                    field=field,
                    where=where,
                    mag=mag,
                    flux=flux,
                    inside_fraction=float(ref.sum()),
                    sum_over_expected=float(image.sum() / (flux * ref.sum())),
                    max_error_sigma=float(np.abs(image - flux * ref).max() / sigma.min()),
                    max_error_sigma_local=float((np.abs(image - flux * ref) / sigma).max()),
                    beyond_trunc_sigma=float((np.abs(image) / sigma)[outside].max()),
                    path="real" if flux * to_e > limit else "kspace",
                    stamp=int(renderers["kspace"]._star_kimage(field)[3]),
                )
                if mag == 9.0:
                    ref_image = renderers["drawimage"].source_electrons(star, field) / to_e
                    row["drawimage_sum_over_expected"] = float(ref_image.sum() / (flux * ref.sum()))
                    row["drawimage_max_error_sigma_local"] = float((np.abs(ref_image - flux * ref) / sigma).max())
                rows.append(row)
    return rows


class _StampLog:
    """Wraps ``Renderer._stamp_size`` to record each call's needed and returned stamp size."""

    def __init__(self, renderer):
        self.original = renderer._stamp_size
        self.needed, self.used = [], []
        renderer._stamp_size = self

    def __call__(self, stepk):
        self.needed.append(2 * np.pi / stepk)
        size = self.original(stepk)
        self.used.append(size)
        return size


def batches(config, bank, num_batches, batch_size, seed):
    specs = {}
    for name, c in (("table1_c1000", 1000.0), ("default_c613314", 613314.0)):
        cfg = default.get_config()
        cfg.prior.star_flux = (cfg.prior.star_flux[0], c, *cfg.prior.star_flux[2:])
        specs[name] = pipeline.SimulationSpec.from_config(cfg, seed=seed, batch_size=batch_size, bank=bank)
    renderers = {name: render.Renderer(bank, spec.prior.image_shape, spec.render) for name, spec in specs.items()}
    logs = {name: _StampLog(r) for name, r in renderers.items()}
    setup = {}
    for name, spec in specs.items():  # warm the per-field tables and star caches of every field: timed apart
        pipeline.simulate_batch(spec, 10_000, renderers[name])
        with threadpoolctl.threadpool_limits(1):
            c = time.process_time()
            limits = [
                (renderers[name]._star_kimage(f), renderers[name]._star_kspace_limit(f))[1] for f in range(len(bank))
            ]
            setup[name] = (time.process_time() - c) / len(bank)
        logs[name].needed.clear(), logs[name].used.clear()
    seconds, cpu_seconds = collections.defaultdict(float), collections.defaultdict(float)
    stats = collections.defaultdict(list)
    nan_images = collections.defaultdict(int)
    for i in range(num_batches):
        for name, spec in specs.items():
            t, c = time.perf_counter(), time.process_time()
            batch = pipeline.simulate_batch(spec, i, renderers[name])
            seconds[name] += time.perf_counter() - t
            cpu_seconds[name] += time.process_time() - c
            valid = np.arange(batch["flux"].shape[1])[None, :] < batch["n_sources"][:, None]
            star_mag = np.where(valid & ~batch["is_galaxy"], catalogs.flux_to_mag(batch["flux"]), np.inf)
            stats[name].append(star_mag.min(axis=1))
            nan_images[name] += int(np.isnan(batch["images"]).any(axis=(1, 2)).sum())
    out = {}
    cap = specs["default_c613314"].render.max_stamp_size
    limits = np.array(limits) / bank.to_electrons(np.arange(len(bank)))
    percentiles = np.percentile(catalogs.flux_to_mag(limits), [0, 50, 100])
    out["kspace_limit_r"] = dict(zip(("min", "median", "max"), percentiles))
    out["kspace_limit_r"]["setup_ms_per_field"] = 1e3 * setup["default_c613314"]
    for name in specs:
        brightest = np.concatenate(stats[name])
        needed, used = np.array(logs[name].needed), np.array(logs[name].used)
        out[name] = dict(
            images=int(brightest.size),
            seconds=seconds[name],
            images_per_s=brightest.size / seconds[name],
            images_per_cpu_s=brightest.size / cpu_seconds[name],
            frac_images_star_brighter_r15=float((brightest < 15).mean()),
            frac_images_star_brighter_r12=float((brightest < 12).mean()),
            brightest_star_r=float(brightest.min()),
            images_with_nan=nan_images[name],
            largest_stamp=int(used.max()),
            largest_needed=float(needed.max()),
            stamps_capped=int((needed > cap).sum()),
            stamp_calls=int(needed.size),
        )
    return out


def stamp_cap(config, bank, num_images=64, seed=0):
    """Largest pixel difference (pixel-noise sigmas) between ``max_stamp_size`` 256 and 1024, noiseless."""
    spec = pipeline.SimulationSpec.from_config(config, seed=seed, batch_size=32, bank=bank)
    rc = dataclasses.replace(spec.render, noise="none")
    capped = render.Renderer(bank, spec.prior.image_shape, rc)
    wide = render.Renderer(bank, spec.prior.image_shape, dataclasses.replace(rc, max_stamp_size=1024))
    worst = 0.0
    with threadpoolctl.threadpool_limits(1):
        for b in range(num_images // 32):
            rng = pipeline.batch_rng(seed, b)
            cat = spec.prior.sample(rng, 32)
            field_id = bank.sample_fields(rng, 32)
            origins = bank.sample_crop_origins(rng, 32, spec.prior.image_shape)
            for i in range(32):
                one = {k: v[i] for k, v in cat.items()}
                a, b_ = capped.source_electrons(one, field_id[i]), wide.source_electrons(one, field_id[i])
                sky = bank.background_electrons(field_id[i], origins[i], spec.prior.image_shape)
                worst = max(worst, float((np.abs(a - b_) / np.sqrt(sky + np.maximum(b_, 0))).max()))
    return dict(images=num_images, max_difference_sigma=worst)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=320, help="images per prior (multiple of --batch-size)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--kspace-stars",
        action="store_true",
        help="draw every star with the k-space stamp (the renderer before its real-space path), for comparison",
    )
    parser.add_argument("--skip-single", action="store_true", help="only the batch timing")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.kspace_stars:
        render.Renderer._star_kspace_limit = lambda self, field: math.inf  # every star below the switch

    config = default.get_config()
    bank = fields.load_bank(config.fields.bank)
    results = dict(machine=f"{platform.node()} ({os.cpu_count()} cores)")
    if not args.skip_single:
        results["single"] = single_stars(config, bank)
        print(
            "single noiseless stars: sum / expected in image; max |error| / pixel noise (global; local); "
            "beyond the truncation / noise; path"
        )
        for row in results["single"]:
            line = (
                f"  field {row['field']:3d} {row['where']:6s} r {row['mag']:4.1f} in-image "
                f"{row['inside_fraction']:.4f} sum/exp {row['sum_over_expected']:.6f}  err "
                f"{row['max_error_sigma']:.3g} / {row['max_error_sigma_local']:.3g} sigma  beyond "
                f"{row['beyond_trunc_sigma']:.3g} sigma  {row['path']:6s} (k-space stamp {row['stamp']})"
            )
            if "drawimage_sum_over_expected" in row:
                line += (
                    f"  drawImage sum/exp {row['drawimage_sum_over_expected']:.6f} "
                    f"err {row['drawimage_max_error_sigma_local']:.2f} sigma"
                )
            print(line)
        results["stamp_cap"] = stamp_cap(config, bank)
        print(
            f"max_stamp_size 256 vs 1024, {results['stamp_cap']['images']} images: largest difference "
            f"{results['stamp_cap']['max_difference_sigma']:.2g} sigma"
        )
    results["batches"] = batches(config, bank, args.images // args.batch_size, args.batch_size, args.seed)
    print(f"simulate_batch, one core, {args.images} images per prior, seed {args.seed}:")
    lim = results["kspace_limit_r"] = results["batches"].pop("kspace_limit_r")
    if not np.isfinite(lim["max"]):
        print("  every star drawn with the k-space stamp (--kspace-stars)")
    else:
        print(
            f"  stars brighter than r {lim['min']:.2f} / {lim['median']:.2f} / {lim['max']:.2f} (min / median / "
            f"max over the bank's fields) are drawn in real space; per-field set-up "
            f"{lim['setup_ms_per_field']:.2f} CPU ms (star stamp and switch, once)"
        )
    for name, r in results["batches"].items():
        print(
            f"  {name:16s} {r['images_per_s']:7.1f} images/s ({r['images_per_cpu_s']:.1f} per CPU second); "
            f"star r<15 in {100 * r['frac_images_star_brighter_r15']:.1f}% (r<12 "
            f"{100 * r['frac_images_star_brighter_r12']:.1f}%) of images, brightest star r "
            f"{r['brightest_star_r']:.2f}; largest stamp {r['largest_stamp']} (needed "
            f"{r['largest_needed']:.0f}), capped {r['stamps_capped']} of {r['stamp_calls']}; "
            f"images with NaN {r['images_with_nan']}"
        )
    if args.json:
        io.write_json(args.json, results)


if __name__ == "__main__":
    main()
