r"""Flux linearity of trained networks: isolated stars from r = 9 to 21, estimated against true magnitude.

    python benchmarks/flux_linearity.py --workdir main=runs/cpu_small [--per-mag 8] [--field-prior one] \
        [--json out.json]

Each image holds one star (nothing else), at a uniform position within 1 pixel of (38.3, 41.7), of the
config's PSF and sky: the reference field (``--field-prior one``) or a field drawn per image (``many``),
rendered and noised as in training. The network's estimate is the mode catalog's flux (the log-normal's
median) in the tile that holds the star. Per magnitude: the median estimated r, its difference from the
truth, prob_source, and the slope d(estimated r)/d(true r) between neighbouring magnitudes: 1 for an
unbiased estimator, below 1 where estimates are compressed. This separates a hard cap on bright fluxes
(estimated r flat below some magnitude) from a compressed response (slope between 0 and 1) and from
detections lost to blends (there are none here).
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from npejax import catalogs, cli, io  # noqa: E402
from npejax.nn import checkpoints, predictor  # noqa: E402
from npejax.schema import CATALOG_KEYS, FIELD_PRIORS  # noqa: E402
from npejax.sim import pipeline  # noqa: E402
from npejax.sim import render as render_lib

CENTRE = (38.3, 41.7)  # (y, x) pixels: inside tile (9, 10) of an 80 x 80 image with 4-pixel tiles


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_multi_string("workdir", [], "NAME=DIR: a training directory (repeatable).", flag_values=fv)
    flags.DEFINE_float("bright", 9.0, "Brightest r magnitude.", flag_values=fv)
    flags.DEFINE_float("faint", 21.0, "Faintest r magnitude.", flag_values=fv)
    flags.DEFINE_float("step", 0.5, "Magnitude step.", lower_bound=0.05, flag_values=fv)
    flags.DEFINE_integer("per-mag", 8, "Images per magnitude.", lower_bound=1, flag_values=fv)
    flags.DEFINE_enum("field-prior", "one", list(FIELD_PRIORS), "Fields of the images.", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Positions, fields and noise.", flag_values=fv)
    flags.DEFINE_string("json", None, "Also write the results here.", flag_values=fv)


def isolated_stars(config, mags, per_mag: int, field_prior: str, seed: int, centre=CENTRE, jitter: float = 1.0) -> dict:
    """Images [N, H, W], background, psf_params, the true magnitudes [N] and the star's tile (row, col): one
    star per image at ``centre`` (y, x pixels) plus a uniform offset of up to ``jitter`` pixels per axis."""
    spec = pipeline.SimulationSpec.from_config(config, seed=seed)
    renderer = render_lib.Renderer(spec.bank, spec.prior.image_shape, spec.render)
    rng = np.random.default_rng(seed)
    mag = np.repeat(np.asarray(mags, float), per_mag)
    n = len(mag)
    catalog = {key: np.zeros((n, 1)) for key in CATALOG_KEYS}
    catalog["n_sources"] = np.ones(n, np.int64)
    catalog["is_galaxy"] = np.zeros((n, 1), bool)
    catalog["flux"][:, 0] = catalogs.mag_to_flux(mag)
    catalog["y"][:, 0] = centre[0] + rng.uniform(-jitter, jitter, n)
    catalog["x"][:, 0] = centre[1] + rng.uniform(-jitter, jitter, n)
    field = spec.bank.sample_fields(rng, n, field_prior)
    origins = spec.bank.sample_crop_origins(rng, n, spec.prior.image_shape)
    images, background = renderer.render(catalog, field, origins, rng)
    tile = (int(centre[0]) // spec.tile_size, int(centre[1]) // spec.tile_size)
    return dict(
        images=images,
        background=background,
        psf_params=spec.bank.psf_params[field].astype(np.float32),
        mag=mag,
        tile=tile,
    )


def linearity(workdir: str, data: dict) -> list[dict]:
    """One row per true magnitude: median estimated r, bias, prob_source and the local slope."""
    tiles = predictor.Predictor.from_workdir(workdir).predict_tiles(
        data["images"], data["background"], data["psf_params"]
    )
    ty, tx = data["tile"]
    est = catalogs.flux_to_mag(tiles["tile_flux"][:, ty, tx])
    prob = tiles["prob_source"][:, ty, tx]
    rows = []
    for m in np.unique(data["mag"]):
        sel = data["mag"] == m
        rows.append(
            dict(
                mag=float(m),
                est_mag=float(np.median(est[sel])),
                bias=float(np.median(est[sel]) - m),
                spread=float(np.std(est[sel])),
                prob_source=float(np.median(prob[sel])),
            )
        )
    for a, b in zip(rows[:-1], rows[1:]):
        b["slope"] = (b["est_mag"] - a["est_mag"]) / (b["mag"] - a["mag"])
    rows[0]["slope"] = float("nan")
    return rows


def run(fv: flags.FlagValues) -> None:
    workdirs = cli.parse_pairs(fv.workdir, "--workdir")
    if not workdirs:
        raise cli.UsageError("give at least one --workdir NAME=DIR")
    if fv.bright >= fv.faint:
        raise cli.UsageError(f"--bright {fv.bright} must be brighter (smaller) than --faint {fv.faint}")
    mags = np.arange(fv.bright, fv.faint + 1e-9, fv.step)
    config = checkpoints.load_config(next(iter(workdirs.values())))
    data = isolated_stars(config, mags, fv["per-mag"].value, fv["field-prior"].value, fv.seed)
    results = {name: linearity(path, data) for name, path in workdirs.items()}
    for name, rows in results.items():
        print(f"{name}: isolated stars, {fv['per-mag'].value} per magnitude, field prior {fv['field-prior'].value}")
        print("  true r   est r    bias  spread  prob   slope")
        for r in rows:
            print(
                f"  {r['mag']:6.2f}  {r['est_mag']:6.2f}  {r['bias']:+6.2f}  {r['spread']:6.2f}  "
                f"{r['prob_source']:4.2f}  {r['slope']:6.2f}"
            )
    if fv.json:
        io.write_json(fv.json, dict(per_mag=fv["per-mag"].value, field_prior=fv["field-prior"].value, results=results))


if __name__ == "__main__":
    raise SystemExit(cli.main(define_flags, run, doc=__doc__))
