r"""Spurious detections on the artifacts of real frames: what a network does with them (issue 23, item 2).

    python benchmarks/artifact_spurious.py [--pretrained cpu | --workdir DIR] [--num-images 40] \
        [--artifacts cosmic_rays,satellite,...] [--radius 3] [--slack 1] [--seed 0] [--bank NAME] [--json out.json]

For each artifact of :mod:`npejax.sim.artifacts` alone, ``--num-images`` test images are simulated with the
network's config (image size, prior, field bank unless ``--bank`` names another, renderer; the ``test`` split's
seed, offset by ``--seed``) twice: with the artifact and without it (the same catalogs, fields, crops and, with the
config's Gaussian noise, the same noise draws: the artifacts draw from their own stream). The network catalogs both
(``prob_source`` > 0.5). A detection is *spurious near the artifact* when it matches no true source
(:func:`npejax.evaluation.metrics.match`, ``--slack`` pixels, every true source of the catalog however faint) and
its pixel lies within ``--radius`` pixels of a pixel the artifact touched (``artifact_bits``). The clean images are
counted in the same places (the artifact's pixels of their twin), so the difference is what the artifact causes. Per
image means are over the images the artifact touched.

Rates are raised over the realistic defaults of ``configs/default.py`` so that most images hold the artifact
(:data:`STRESS`): six cosmic-ray hits per image, one satellite trail, one bad column and one masked block per image
(Poisson means); for saturation and spikes every image gets one extra bright star (r uniform in :data:`BRIGHT_MAG`,
placed uniformly at least 8 pixels inside the image), in both twins. Masked blocks are filled with NaN, a frame's
missing data: the predictor sets them to 0 for every network (:meth:`npejax.nn.predictor.Predictor.catalog`) and
gives them as the mask channel to a network that has one (``model.mask_channel``), so a network without it reads
the zeros it read before (one ``warning:`` line per such image on stderr).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402
from scipy import ndimage  # noqa: E402

from npejax import catalogs, cli, io  # noqa: E402
from npejax.datasets import split_seed  # noqa: E402
from npejax.evaluation import metrics  # noqa: E402
from npejax.nn.predictor import Predictor  # noqa: E402
from npejax.sim import artifacts as artifacts_lib  # noqa: E402
from npejax.sim import pipeline  # noqa: E402
from npejax.sim import render as render_lib  # noqa: E402

BRIGHT_MAG = {"saturation": (11.0, 14.0), "spikes": (12.0, 16.0)}  # r of the injected star per image
BRIGHT_MARGIN = 8.0  # pixels between the injected star and the image's edge


def stress(name: str, image_shape) -> dict:
    """Config values (besides ``enabled``) that put artifact ``name`` in most images."""
    h, w = image_shape
    return {
        "cosmic_rays": dict(rate_per_mpix=6e6 / (h * w)),  # six hits per image
        "satellite": dict(rate=1.0),
        "bad_columns": dict(per_column=1.0 / w),
        "masked": dict(rate=1.0, fill="nan"),
        "saturation": {},
        "spikes": {},
    }[name]


STRESS = "six cosmic-ray hits, one trail, one bad column, one masked block per image (Poisson means)"


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("pretrained", None, "A shipped network (default cpu unless --workdir).", flag_values=fv)
    flags.DEFINE_string("workdir", None, "A training directory (its best checkpoint).", flag_values=fv)
    flags.DEFINE_integer("num-images", 40, "Images per artifact.", lower_bound=1, flag_values=fv)
    flags.DEFINE_list("artifacts", list(artifacts_lib.ARTIFACTS), "Artifacts, one at a time.", flag_values=fv)
    flags.DEFINE_float("radius", 3.0, "Pixels from an artifact's pixels.", lower_bound=0.0, flag_values=fv)
    flags.DEFINE_float("slack", 1.0, "Match radius to true sources, pixels.", lower_bound=0.0, flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Offset of the test split's seed.", lower_bound=0, flag_values=fv)
    flags.DEFINE_string(
        "bank",
        None,
        "Field bank of the test images (config.fields.bank: synthetic, survey or a .npz); default the network's, "
        "so that two networks trained on different banks can be measured on the same images.",
        flag_values=fv,
    )
    flags.DEFINE_string("json", None, "Also write the results here.", flag_values=fv)


def artifact_spec(config, name: str, image_shape) -> artifacts_lib.ArtifactSpec:
    """The config's artifacts with only ``name`` on, at its :func:`stress` rates."""
    base = artifacts_lib.ArtifactSpec.from_config(config.artifacts)
    sections = {
        key: dataclasses.replace(
            getattr(base, key), enabled=key == name, **(stress(key, image_shape) if key == name else {})
        )
        for key in artifacts_lib.ARTIFACTS
    }
    return artifacts_lib.ArtifactSpec(**sections)


def inject_bright_star(rng: np.random.Generator, catalog: dict, image_shape, mags) -> dict:
    """``catalog`` with one more star per image (r uniform in ``mags``), at least :data:`BRIGHT_MARGIN` inside."""
    catalog = {k: np.array(v) for k, v in catalog.items()}
    b, m = catalog["x"].shape
    n = catalog["n_sources"]
    if n.max() >= m:  # make room
        catalog = {k: (np.pad(v, ((0, 0), (0, 1))) if v.ndim == 2 else v) for k, v in catalog.items()}
    h, w = image_shape
    rows = np.arange(b)
    mag = rng.uniform(*mags, b)
    catalog["x"][rows, n] = rng.uniform(BRIGHT_MARGIN, w - BRIGHT_MARGIN, b)
    catalog["y"][rows, n] = rng.uniform(BRIGHT_MARGIN, h - BRIGHT_MARGIN, b)
    catalog["flux"][rows, n] = 10 ** ((22.5 - mag) / 2.5)
    catalog["is_galaxy"][rows, n] = False
    catalog["n_sources"] = (n + 1).astype(np.int32)
    return catalog


def twins(spec: pipeline.SimulationSpec, artifacts: artifacts_lib.ArtifactSpec, name: str, num_images: int):
    """(clean images, images with the artifact, background, psf_params, artifact_bits, truth dict)."""
    renderer = render_lib.Renderer(spec.bank, spec.prior.image_shape, spec.render)
    rng = pipeline.batch_rng(spec.seed, 0)
    catalog = spec.prior.sample(rng, num_images)
    field_id = spec.bank.sample_fields(rng, num_images, spec.field_prior)
    origins = spec.bank.sample_crop_origins(rng, num_images, spec.prior.image_shape)
    if name in BRIGHT_MAG:
        catalog = inject_bright_star(rng, catalog, spec.prior.image_shape, BRIGHT_MAG[name])
    state = rng.bit_generator.state
    clean, background = renderer.render(catalog, field_id, origins, rng)
    rng.bit_generator.state = state  # the same noise draws for the twin
    dirty, _, _, bits = renderer.render_artifacts(
        catalog, field_id, origins, rng, artifacts, artifacts_lib.artifact_rng(spec.seed, 0)
    )
    n = catalog["n_sources"]
    valid = np.arange(catalog["x"].shape[1])[None, :] < n[:, None]
    image_index = np.nonzero(valid)[0]
    truth = dict(image=image_index, x=catalog["x"][valid], y=catalog["y"][valid], flux=catalog["flux"][valid])
    psf = spec.bank.psf_params[field_id].astype(np.float32)
    return clean, dirty, background, psf, bits, truth


def predictor_sources(predictor: Predictor, images, background, psf) -> dict:
    """The network's catalog (``prob_source`` > 0.5) as columns ``image``, ``x``, ``y`` in the arrays' convention
    (pixels from the image edge, as the true catalog's; :func:`npejax.catalogs.array_xy` of the table's 0-based pixel
    centres)."""
    table = predictor.catalog(images, background, psf)
    x, y = catalogs.array_xy(table)
    return dict(image=np.asarray(table["image"]), x=x, y=y)


def spurious_near(pred, truth, near: np.ndarray, slack: float) -> np.ndarray:
    """Per image: detections of ``pred`` that match no true source and fall on a ``near`` pixel [B, H, W]."""
    num_images, h, w = near.shape
    counts = np.zeros(num_images, int)
    if len(pred["x"]) == 0:
        return counts
    _, p2t = metrics.match(truth, pred, num_images, slack=slack)
    image = np.asarray(pred["image"], int)
    row = np.clip(np.floor(np.asarray(pred["y"], float)).astype(int), 0, h - 1)
    col = np.clip(np.floor(np.asarray(pred["x"], float)).astype(int), 0, w - 1)
    hit = (p2t < 0) & near[image, row, col]
    np.add.at(counts, image[hit], 1)
    return counts


def unmatched(pred, truth, num_images: int, slack: float) -> np.ndarray:
    """Per image: detections that match no true source, anywhere."""
    counts = np.zeros(num_images, int)
    if len(pred["x"]):
        _, p2t = metrics.match(truth, pred, num_images, slack=slack)
        np.add.at(counts, np.asarray(pred["image"], int)[p2t < 0], 1)
    return counts


def measure(predictor: Predictor, config, name: str, num_images: int, radius: float, slack: float, seed: int):
    image_shape = (int(config.image_size), int(config.image_size))
    spec = pipeline.SimulationSpec.from_config(config, seed=split_seed(int(config.seed), "test") + seed)
    artifacts = artifact_spec(config, name, image_shape)
    spec = dataclasses.replace(spec, artifacts=artifacts)
    clean, dirty, background, psf, bits, truth = twins(spec, artifacts, name, num_images)
    touched = (bits & artifacts_lib.BITS[name]) > 0
    # pixels within `radius` of a touched pixel (Euclidean, between pixel centres)
    near = np.stack([ndimage.distance_transform_edt(~t) <= radius if t.any() else t for t in touched])
    affected = touched.any(axis=(1, 2))
    out = dict(images=num_images, images_with_artifact=int(affected.sum()), pixels=int(touched.sum()))
    for label, images in (("clean", clean), ("artifact", dirty)):
        pred = predictor_sources(predictor, images, background, psf)
        near_counts = spurious_near(pred, truth, near, slack)
        out[label] = dict(
            spurious_near_per_image=float(near_counts[affected].mean()) if affected.any() else float("nan"),
            spurious_per_image=float(unmatched(pred, truth, num_images, slack).mean()),
            detections_per_image=len(pred["x"]) / num_images,
        )
    return out


def run(fv: flags.FlagValues) -> None:
    if fv.pretrained and fv.workdir:
        raise cli.UsageError(f"give --pretrained or --workdir, not both (got {fv.pretrained!r}, {fv.workdir!r})")
    unknown = [a for a in fv.artifacts if a not in artifacts_lib.ARTIFACTS]
    if unknown:
        raise cli.UsageError(f"--artifacts: unknown {unknown}; expected some of {list(artifacts_lib.ARTIFACTS)}")
    if fv.workdir:
        predictor, source = Predictor.from_workdir(fv.workdir), f"--workdir {fv.workdir}"
    else:
        name = fv.pretrained or "cpu"
        predictor, source = Predictor.pretrained(name), f"--pretrained {name}"
    config = predictor.config
    if "artifacts" not in config:  # a config saved before the section: the defaults' settings, all off
        from configs import default

        config = config.copy_and_resolve_references()
        config.artifacts = default.get_config().artifacts
    if fv.bank:
        config = config.copy_and_resolve_references()
        config.fields.bank = fv.bank
    results = {}
    for name in fv.artifacts:
        t0 = time.perf_counter()
        results[name] = measure(predictor, config, name, fv["num-images"].value, fv.radius, fv.slack, fv.seed)
        r = results[name]
        print(
            f"{name:12s} {r['images_with_artifact']:3d}/{r['images']} images: spurious within {fv.radius:g} px "
            f"per image {r['clean']['spurious_near_per_image']:.2f} clean -> "
            f"{r['artifact']['spurious_near_per_image']:.2f} with it; unmatched anywhere "
            f"{r['clean']['spurious_per_image']:.2f} -> {r['artifact']['spurious_per_image']:.2f} "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    if fv.json:
        io.write_json(
            fv.json,
            dict(
                network=source,
                num_images=fv["num-images"].value,
                radius=fv.radius,
                slack=fv.slack,
                seed=fv.seed,
                bank=str(config.fields.bank),
                stress=STRESS,
                bright_mag=BRIGHT_MAG,
                results=results,
            ),
        )


if __name__ == "__main__":
    raise SystemExit(cli.main(define_flags, run, doc=__doc__))
