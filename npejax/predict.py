"""Catalogs images with a trained network.

    python -m npejax.predict --workdir runs/aware --input DATASET_DIR|images.npz|image.fits --out catalog.fits
    python -m npejax.predict --pretrained cpu --input image.fits --background 0.7 --psf-params P --out catalog.fits
    npejax-predict --workdir runs/aware --input image.fits --background 0.7 --field-id NAME --out catalog.csv
    npejax-predict --workdir runs/aware --sdss-frame frame-r-000094-1-0012.fits.bz2 \\
        --psfield psField-000094-1-0012.fit --out catalog.fits --png catalog.png

Loads the ``--checkpoint`` (best or latest) of a training directory (``python -m npejax.main``), or with
``--pretrained NAME`` a network shipped with the package (:mod:`npejax.nn.pretrained`; its file's SHA-256
checked), and writes one row per tile whose source probability exceeds ``--min-prob`` to ``--out`` (FITS or
CSV by extension). A FITS ``--input`` (sky-subtracted, nmgy, 0.396"/pixel) needs ``--background`` and one PSF:
``--psf-params``, ``--field-id``, ``--fwhm`` (arcsec) or ``--psf-image`` (a PSF image, fitted; the fit is
printed). A FITS input and an SDSS frame are checked first (:mod:`npejax.cataloging.checks`): the sky left in
or the wrong units are refused, milder mismatches and a WCS pixel scale off 0.396" are one warning line;
``--skip-image-checks`` skips the pixel checks.
An SDSS frame (``--sdss-frame``, r band) brings its own image (HDU 0, nmgy), background (its sky grid
interpolated to every pixel times its calibration, nmgy) and, with ``--psfield``, its PSF parameters: nothing
to convert by hand. A FITS input with a celestial WCS (an SDSS frame has one) gives ``ra`` and ``dec`` columns
and a FITS catalog keeps the WCS in its header. ``--png`` draws the detections on the (first) image. See
:mod:`npejax.cataloging.images` for the inputs and :mod:`npejax.nn.predictor` for the catalog's columns. The
catalog has the quality flag from the forward model by default (``--noquality``: not; its columns, crops and
gain / calibration, which ``--electrons-per-nmgy`` gives: :func:`npejax.cataloging.images.add_quality`), and one
warning line per image with a flagged crop or detection.

Refused before any prediction, with one ``error:`` line and exit status 2, nothing written: a missing or
foreign workdir, both or neither of ``--workdir`` and ``--pretrained``, an unknown ``--pretrained`` name (the
error lists the shipped ones), a missing, truncated or corrupt input (FITS, .npz, dataset, SDSS frame or
psField), a frame of another band or a psField of another field (its header's RUN, CAMCOL, FIELD), a
background <= 0 or above 1e4 nmgy per
pixel (a background map with a NaN included), an image more than half of whose pixels are NaN or infinite
(fewer are masked: set to 0, a ``warning:`` line per image, and the catalog's ``masked_frac`` column says how
near each detection is to them), an image with the sky left in or not in nmgy
(:mod:`npejax.cataloging.checks`), a singular WCS matrix, invalid PSF parameters or ones outside physical
ranges, two PSFs, a ``--psf-image`` fitted badly, a ``--chunk-size`` below the network's smallest useful
one (half of each chunk's side output: the error names it; smaller ones multiply the network calls),
``--min-prob`` outside [0, 1), ``--batch-size`` < 1, an ``--electrons-per-nmgy`` that is not a positive
finite number or is given with ``--noquality``, an ``--out``
or ``--png`` that cannot be written (under a file, in a read-only directory, an existing directory), that is
one of the inputs (the same file as ``--input``, ``--background``, ``--sdss-frame``, ``--psfield`` or
``--bank``, links followed) or that exists (unless ``--overwrite``). A network
that gives NaN or infinite outputs (a corrupt checkpoint) is an error naming the image. A catalog or PNG that
cannot be written (a full disk) is one ``error:`` line, exit 2, and no partial file. Predictions of many images
or chunks show progress bars on a terminal (``--noprogress``: none).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from absl import flags

from npejax import cli, io

if TYPE_CHECKING:
    from npejax.cataloging import images

# Flag values of the library, written here so that --help loads no JAX (tests/test_cli.py checks they agree):
CHECKPOINTS = ("best", "latest")  # npejax.nn.checkpoints.WHICH
CHUNK_SIZE = 512  # npejax.nn.predictor.CHUNK_SIZE
PROGRESS_DELAY = 2.0  # npejax.nn.predictor.PROGRESS_DELAY
INPUT_FLAGS = (
    "input",
    "background",
    "sdss-frame",
    "psfield",
    "bank",
    "psf-image",
)  # files read: --out and --png must not be one


def define_network_flags(fv: flags.FlagValues) -> None:
    """``--workdir`` and ``--checkpoint``, or ``--pretrained`` (also the flags of ``npejax.survey catalog``;
    checked by :func:`npejax.cataloging.options.check_network_flags`)."""
    flags.DEFINE_string("workdir", None, "Training directory (python -m npejax.main).", flag_values=fv)
    flags.DEFINE_string(
        "pretrained",
        None,
        "A network shipped with the package (npejax/pretrained/registry.json) instead of --workdir.",
        flag_values=fv,
    )
    flags.DEFINE_enum("checkpoint", "best", list(CHECKPOINTS), "Which checkpoint of --workdir.", flag_values=fv)


def define_skip_checks(fv: flags.FlagValues) -> None:
    """``--skip-image-checks`` (also a flag of ``npejax.survey catalog``)."""
    flags.DEFINE_boolean(
        "skip-image-checks",
        False,
        "Catalog images that do not look sky-subtracted and in nanomaggies (median, noise against the "
        "background, BUNIT: npejax.cataloging.checks) instead of refusing them.",
        flag_values=fv,
    )


def define_quality_flags(fv: flags.FlagValues) -> None:
    """``--[no]quality`` and ``--electrons-per-nmgy`` (also flags of ``npejax.survey catalog``; checked by
    :func:`npejax.cataloging.options.electrons_per_nmgy_flag`)."""
    flags.DEFINE_boolean(
        "quality",
        True,
        "Add the quality flag from the forward model (quality_* and image_quality_* columns: the catalog "
        "re-rendered and compared with the image, in 80x80 crops; npejax.cataloging.quality).",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "electrons-per-nmgy",
        None,
        "The images' gain / calibration (electrons per nmgy) for the quality flag's pixel noise (default: the "
        "dataset's field bank, an .npz's electrons_per_nmgy, else measured from each image's pixel noise).",
        flag_values=fv,
    )


def define_flags(fv: flags.FlagValues) -> None:
    define_network_flags(fv)
    flags.DEFINE_string(
        "input", None, "Dataset directory, .npz (images, background, psf_params) or FITS image.", flag_values=fv
    )
    flags.DEFINE_string(
        "sdss-frame",
        None,
        "SDSS r-band frame file (frame-r-RUN6-CAMCOL-FIELD4.fits[.bz2]) instead of --input; needs --psfield.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "psfield",
        None,
        "The frame's psField file (psField-RUN6-CAMCOL-FIELD4.fit): its r-band PSF parameters.",
        flag_values=fv,
    )
    flags.DEFINE_string("out", None, "Output catalog (.fits or .csv).", flag_values=fv, required=True)
    flags.DEFINE_string(
        "png", None, "Also write a PNG of the (first) image with the detections drawn on it.", flag_values=fv
    )
    flags.DEFINE_float("min-prob", 0.5, "Keep tiles with prob_source above this, in [0, 1).", flag_values=fv)
    flags.DEFINE_integer("batch-size", 256, "Images per network call.", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer(
        "chunk-size",
        CHUNK_SIZE,
        "Images larger than this many pixels on a side are "
        "predicted in overlapping chunks of this size (bounded memory; 0: whole).",
        lower_bound=0,
        flag_values=fv,
    )
    flags.DEFINE_string(
        "background", None, "FITS input: background in nmgy per pixel (a number or a FITS file).", flag_values=fv
    )
    flags.DEFINE_string("psf-params", None, "FITS input: s1,s2,sP,beta,b,p0 (pixels).", flag_values=fv)
    flags.DEFINE_string(
        "field-id",
        None,
        "FITS input: take the PSF from this field of --bank, by name (synthetic-0493) or by the index that "
        "datasets and truth catalogs store (493).",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "fwhm",
        None,
        "FITS input: the PSF's FWHM in arcsec (a PSF of the field bank's family scaled to it; pixels from the "
        "image's WCS, else 0.396 arcsec).",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "psf-image",
        None,
        "FITS input: a FITS image of the PSF at the image's pixel scale, fitted with the six parameters.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "bank", None, "Field bank for --field-id and --fwhm (default: the embedded synthetic bank).", flag_values=fv
    )
    define_skip_checks(fv)
    define_quality_flags(fv)
    flags.DEFINE_boolean(
        "progress",
        True,
        f"Show progress bars (images, chunks) on a terminal once a prediction has run {PROGRESS_DELAY:g} s.",
        flag_values=fv,
    )
    cli.define_overwrite(fv, "--out and --png")
    cli.define_underscore_aliases(fv)  # --min_prob, --batch_size, --psf_image, ...


def open_inputs(fv: flags.FlagValues) -> images.Inputs:
    """The images named by --input or --sdss-frame/--psfield, read and checked."""
    from npejax.cataloging import images, options  # deferred: JAX loads after the command line (fast --help)

    frame, psfield, path = fv["sdss-frame"].value, fv.psfield, fv.input
    if (path is None) == (frame is None):
        raise cli.UsageError(
            "give one of --input (a dataset directory, .npz or FITS image) and --sdss-frame "
            "(with --psfield)" + (", not both" if path else "")
        )
    psfs = ("psf-params", "field-id", "fwhm", "psf-image")
    checks = not fv["skip-image-checks"].value
    if frame is not None:
        given = [f"--{n}" for n in ("background", *psfs, "bank") if fv[n].value is not None]
        if given:
            raise cli.UsageError(
                f"{', '.join(given)}: an SDSS frame brings its own background and --psfield its PSF; leave them out"
            )
        if psfield is None:
            raise cli.UsageError("--sdss-frame needs --psfield (the frame's psField file, for its PSF)")
        return images.open_sdss_frame(frame, psfield, checks)
    if psfield is not None:
        raise cli.UsageError(
            "--psfield goes with --sdss-frame; for --input give --psf-params, --field-id, --fwhm or --psf-image"
        )
    given = [f"--{n}" for n in psfs if fv[n].value is not None]
    if len(given) > 1:
        raise cli.UsageError(f"{', '.join(given)}: give one PSF, not {len(given)}")
    options.check_psf_flags(fv["psf-params"].value, fv.fwhm)
    return images.open_inputs(
        path,
        options.parse_background_arg(fv.background),
        fv["psf-params"].value,
        fv["field-id"].value,
        fv.bank,
        fv.fwhm,
        fv["psf-image"].value,
        checks,
    )


def run(fv: flags.FlagValues) -> None:
    # deferred: JAX, Flax and astropy load after the command line is read (fast --help)
    from npejax import catalogs as catalog_lib  # deferred: as above
    from npejax.cataloging import figures, images, options  # deferred: as above

    # everything a user can get wrong is checked before the network runs: flags, output paths, inputs
    options.check_network_flags(fv)
    min_prob = options.min_prob_flag(fv["min-prob"].value)
    electrons = options.electrons_per_nmgy_flag(fv["electrons-per-nmgy"].value, fv.quality)
    batch_size, chunk_size = fv["batch-size"].value, fv["chunk-size"].value
    if batch_size < 1:
        raise cli.UsageError(f"--batch-size {batch_size}: expected a positive number of images per network call")
    catalog_lib.table_format(fv.out)  # a bad extension fails before the network loads
    given = {f"--{name}": fv[name].value for name in INPUT_FLAGS}
    for flag, path in (("--out", fv.out), ("--png", fv.png)):
        if path is not None:
            io.check_not_input(path, flag, given)  # before any input is read, and before "it exists"
    io.check_output_file(fv.out, "--out")
    cli.check_new_file(fv.out, "--out", fv.overwrite)
    if fv.png is not None:
        if not fv.png.lower().endswith(".png"):
            raise cli.UsageError(f"--png {fv.png}: expected a file name ending in .png")
        if os.path.abspath(fv.png) == os.path.abspath(fv.out):
            raise cli.UsageError(f"--png {fv.png} is also --out; give two different files")
        io.check_output_file(fv.png, "--png")
        cli.check_new_file(fv.png, "--png", fv.overwrite)
    inputs = open_inputs(fv)
    for note in inputs.notes:
        print(note)
    net = options.load_network(fv)
    chunk_size = options.chunk_size_flag(net, chunk_size)

    table = images.catalog_inputs(
        net,
        inputs,
        min_prob,
        batch_size,
        chunk_size,
        progress=fv.progress,
        quality=fv.quality,
        electrons_per_nmgy=electrons,
    )
    with io.write_errors("--out", fv.out):  # a full disk: one line, no partial file (atomic write)
        catalog_lib.write_table(table, fv.out)
    print(f"{len(table)} sources in {inputs.num_images} images -> {fv.out}")
    if fv.png is not None:
        image = inputs.read(0, 1)[0][0]
        with io.write_errors("--png", fv.png):
            width, height = figures.write_catalog_png(fv.png, image, table[table["image"] == 0])
        print(f"image 0 with {int((table['image'] == 0).sum())} detections ({width} x {height} pixels) -> {fv.png}")


def main(argv=None) -> int:
    return cli.main(define_flags, run, argv, doc=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
