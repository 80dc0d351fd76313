"""Simulates a cached dataset split and its true catalog.

    python -m npejax.simulate --config configs/psf_aware.py --split val --out runs/val \
        [--num-images N] [--num-workers K] [--shard-size S] [--backend galsim|jax] [--catalog truth.csv]
        [--fits image.fits]
        [--config.KEY=VALUE ...]

Writes DIR/manifest.json and DIR/shard-NNNNN/ (see npejax.datasets.format), and the true catalog of every source
as DIR/truth.fits (plus --catalog, FITS or CSV by extension). ``--fits image.fits`` also writes the first image as
a FITS image and its background as ``image-sky.fits`` (:func:`write_fits_image`), and prints the
``npejax.predict`` command that catalogs it; existing FITS files are refused unless ``--overwrite`` is given.
Defaults: --num-images from
config.data.num_<split>, --num-workers from config.simulator.num_workers, --shard-size from
config.data.shard_size, --backend from config.simulator.backend (``jax``: npejax.sim.jax_render on JAX's default
device, in this process; --num-workers does not apply). The seed of the split is
npejax.datasets.split_seed(config.seed, split). Running the same command again resumes an interrupted run (only
missing shards are rendered).
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import flags

from npejax import cli, io, schema


def define_flags(fv: flags.FlagValues) -> None:
    cli.define_config(fv, "Experiment config file (e.g. configs/psf_aware.py).")
    flags.DEFINE_enum(
        "split",
        None,
        list(schema.SPLITS),
        "Which split to simulate (its seed differs per split).",
        flag_values=fv,
        required=True,
    )
    flags.DEFINE_string(
        "out", None, "Output dataset directory (created; an existing one is resumed).", flag_values=fv, required=True
    )
    flags.DEFINE_integer("num-images", None, "Number of images (default: config.data.num_<split>).", flag_values=fv)
    flags.DEFINE_integer(
        "num-workers",
        None,
        "Worker processes (default: config.simulator.num_workers; 0 renders in this process).",
        flag_values=fv,
    )
    flags.DEFINE_integer("shard-size", None, "Images per shard (default: config.data.shard_size).", flag_values=fv)
    flags.DEFINE_enum(
        "backend",
        None,
        ["galsim", "jax"],
        "Renderer (default: config.simulator.backend): galsim, or jax (npejax.sim.jax_render on JAX's default "
        "device, in this process; --num-workers does not apply).",
        flag_values=fv,
    )
    flags.DEFINE_string("catalog", None, "Also write the true catalog here (.fits or .csv).", flag_values=fv)
    flags.DEFINE_string(
        "fits",
        None,
        "Also write the first image here as a FITS image (nmgy, sky-subtracted) and its background beside it "
        "(NAME-sky.fits), for npejax.predict --input.",
        flag_values=fv,
    )
    flags.DEFINE_boolean("progress", True, "Show a progress bar.", flag_values=fv)
    cli.define_overwrite(fv, "the --fits image and its -sky.fits")
    cli.define_underscore_aliases(fv)  # --num_images, --num_workers, --shard_size


TRUTH_FILE = "truth.fits"


def _setting(fv, flag: str, config, section: str, key: str) -> int:
    value = fv[flag].value
    if value is None:
        try:
            value = config[section][key]
        except (KeyError, AttributeError):
            raise cli.UsageError(f"--{flag} not given and the config has no {section}.{key}") from None
    return int(value)


def _jax_device() -> str:
    import jax  # deferred: only the jax backend needs it here

    return str(jax.devices()[0])


def run(fv: flags.FlagValues) -> None:
    t0 = time.perf_counter()
    try:
        config = fv.config
        _ = config.seed  # a config file that failed to load raises here
    except (OSError, AttributeError, KeyError) as exc:
        raise cli.UsageError(f"cannot load the config: {exc}") from None
    split = fv.split
    num_images = _setting(fv, "num-images", config, "data", f"num_{split}")
    num_workers = _setting(fv, "num-workers", config, "simulator", "num_workers")
    shard_size = _setting(fv, "shard-size", config, "data", "shard_size")
    if num_images < 1:
        raise cli.UsageError(f"the number of images must be >= 1, got {num_images}")
    if num_workers < 0:
        raise cli.UsageError(f"the number of workers must be >= 0, got {num_workers}")
    if shard_size < 1:
        raise cli.UsageError(f"the shard size must be >= 1, got {shard_size}")
    io.check_output_dir(fv.out, "--out")  # before any rendering
    from npejax import catalogs as catalog_lib  # deferred: astropy loads after the flags are checked

    extra_catalog = fv.catalog
    if extra_catalog is not None:
        try:
            catalog_lib.table_format(extra_catalog)
        except ValueError as exc:
            raise cli.UsageError(f"--catalog: {exc}") from None
        io.check_output_file(extra_catalog, "--catalog")
    if fv.fits is not None:
        if not fv.fits.lower().endswith(".fits"):
            raise cli.UsageError(f"--fits {fv.fits}: expected a file name ending in .fits")
        io.check_output_file(fv.fits, "--fits")
        for path in (fv.fits, fits_sky_path(fv.fits)):
            cli.check_new_file(path, "--fits", fv.overwrite)
    if fv.backend is not None:
        config.simulator.backend = fv.backend  # recorded in the manifest's config
    from npejax import datasets  # deferred: GalSim (seconds) loads after the cheap checks
    from npejax.sim import pipeline  # deferred: as datasets

    try:
        seed = datasets.split_seed(config.seed, split)
        spec = pipeline.SimulationSpec.from_config(config, seed=seed, batch_size=shard_size)
    except (ValueError, KeyError, AttributeError, TypeError, FileNotFoundError) as exc:
        raise cli.UsageError(f"invalid config: {exc}") from None

    bank = spec.bank
    print(
        f"simulating {num_images} {split} images (seed {seed}, fields prior {spec.field_prior!r}, "
        f"{len(bank)} {'SYNTHETIC ' if bank.synthetic else ''}fields) into {fv.out} "
        + (f"with {num_workers} worker(s)" if spec.backend == "galsim" else f"with the JAX renderer on {_jax_device()}")
        + f", {shard_size} images per shard",
        flush=True,
    )
    try:
        report = datasets.write_dataset(
            spec,
            fv.out,
            num_images,
            split,
            config=config,
            num_workers=num_workers,
            shard_size=shard_size,
            progress=fv.progress,
        )
    except datasets.DatasetError as exc:
        raise cli.UsageError(str(exc)) from None
    dataset = datasets.load(fv.out)
    table, n_sources, n_dropped = catalog_lib.dataset_truth_table(dataset)
    written = [catalog_lib.write_table(table, os.path.join(fv.out, TRUTH_FILE))]
    if extra_catalog is not None:
        written.append(catalog_lib.write_table(table, extra_catalog))
    elapsed = time.perf_counter() - t0

    resumed = report.num_shards - len(report.rendered_shards)
    print(
        f"dataset: {fv.out}: {len(dataset)} images in {report.num_shards} shard{'s' * (report.num_shards != 1)}"
        + (f" ({resumed} already present, {len(report.rendered_shards)} rendered now)" if resumed else "")
    )
    print(
        f"sources: {n_sources} ({n_sources / len(dataset):.3f} per image); dropped by the one-per-tile rule: "
        f"{n_dropped} ({100.0 * n_dropped / max(n_sources, 1):.2f}% of sources)"
    )
    print(f"truth catalog: {', '.join(written)} ({len(table)} rows)")
    if fv.fits is not None:
        sky, field = write_fits_image(dataset, 0, fv.fits, bank)
        bank_flag = "" if bank.synthetic else f" --bank {bank.source}"
        print(
            f"FITS image: {fv.fits} (image 0, {int((table['image'] == 0).sum())} true sources, field {field}), its "
            f"background {sky}; catalog it with: python -m npejax.predict --pretrained NAME --input {fv.fits} "
            f"--background {sky} --field-id {field}{bank_flag} --out catalog.fits"
        )
    rate = report.rendered_images / report.seconds if report.seconds > 0 else float("nan")
    print(f"time: {elapsed:.1f} s; rendered {report.rendered_images} images at {rate:.1f} images/s")


def fits_sky_path(path: str) -> str:
    """The background file written beside ``--fits`` ``path`` (``STEM.fits`` -> ``STEM-sky.fits``)."""
    return path[: -len(".fits")] + "-sky.fits"


def write_fits_image(dataset, index: int, path: str, bank) -> tuple[str, str]:
    """Writes image ``index`` of ``dataset`` to ``path`` (a FITS primary image, nmgy, sky-subtracted) and its
    background to ``STEM-sky.fits`` beside it (nmgy per pixel), atomically; the image's header names its field
    (``FIELDID``, a name of ``bank``) and PSF parameters (``PSF_S1``, ``PSF_S2``, ``PSF_SP``, ``PSF_BETA``,
    ``PSF_B``, ``PSF_P0``; widths in pixels). Returns (the background's path, the field's name)."""
    from astropy.io import fits  # deferred: as catalogs

    item = dataset[index]
    field = str(bank.names[int(item["field_id"])])
    sky_path = fits_sky_path(path)
    header = fits.Header()
    header["BUNIT"] = ("nmgy", "sky-subtracted r-band flux per pixel")
    header["FIELDID"] = (field, "field of the field bank: sky and PSF")
    for key, value in zip(("S1", "S2", "SP", "BETA", "B", "P0"), item["psf_params"]):
        header[f"PSF_{key}"] = (float(value), "PSF parameter (s1, s2, sP, beta, b, p0; pixels)")
    header["COMMENT"] = f"SYNTHETIC image {index} simulated by npejax; background in {os.path.basename(sky_path)}"
    for out, array, head in ((path, item["images"], header), (sky_path, item["background"], None)):
        with io.atomic_path(out) as tmp:
            fits.PrimaryHDU(np.asarray(array, np.float32), header=head).writeto(tmp, overwrite=True)
    return sky_path, field


def main(argv=None) -> int:
    return cli.main(define_flags, run, argv, doc=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
