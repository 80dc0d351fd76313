"""The images to catalog, read from files: datasets, .npz, FITS images with their WCS, SDSS frames.

Python API::

    inputs = open_inputs("image.fits", background=0.7, psf_params="1.2,3.5,1.5,3,0.1,0.08")   # Inputs
    inputs = open_sdss_frame("frame-r-000094-1-0012.fits.bz2", "psField-000094-1-0012.fit")
    table = catalog_inputs(Predictor.from_workdir("runs/aware"), inputs)   # astropy Table (+ ra, dec)
    images, background, psf_params = load_inputs("images.npz")             # arrays in memory

Inputs (:func:`open_inputs`): a dataset directory written by ``npejax.simulate`` (read batch by batch,
never whole); an ``.npz`` with ``images`` [N, H, W] (nmgy, sky-subtracted), ``background`` [N, H, W]
(nmgy) and ``psf_params`` [N, 6]; or a FITS image (the first 2-D image HDU, nmgy, sky-subtracted) with the
background given as a number or a FITS file (nmgy per pixel) and the PSF as ``s1,s2,sP,beta,b,p0``
(:func:`parse_psf_params`), as a field of the field bank, as a FWHM (:func:`psf_from_fwhm`) or as a PSF image
(:func:`psf_from_image`); or an SDSS r-band frame with its psField (:func:`open_sdss_frame`: the frame's own sky
as background, the psField's PSF). A FITS image and an SDSS frame are checked by :mod:`npejax.cataloging.checks`
(sky left in, wrong units, WCS scale and matrix, PSF ranges). Every input is checked before
any prediction (:func:`npejax.nn.predictor.check_inputs`: finite pixels, a background in (0,
:data:`~npejax.nn.predictor.MAX_BACKGROUND`] nmgy per pixel, valid PSF parameters); a truncated or corrupt
file is one ``ValueError`` naming it. In a FITS image, an .npz or an SDSS frame, NaN and infinite pixels are
masked pixels, not an error: the catalog sets them to 0, warns once per image and gives every detection its
``masked_frac`` (:meth:`npejax.nn.predictor.Predictor.catalog`); an image more than
:data:`~npejax.nn.predictor.MAX_MASKED_FRACTION` masked is refused when it is opened. A background map with a
NaN is refused (a sky level is needed at every pixel). A dataset (simulated) keeps every pixel finite: a NaN
there is refused.

The catalog (:func:`catalog_inputs`) is :meth:`npejax.nn.predictor.Predictor.catalog_batches` of the
inputs, read ``batch_size`` images at a time. When the input is a FITS image with a celestial WCS, it also
has ``ra`` and ``dec`` (ICRS, degrees; :func:`npejax.catalogs.add_sky_coordinates`) and keeps the WCS keywords in its
metadata (the FITS header of a ``.fits`` catalog).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import zipfile
from collections.abc import Callable, Iterator

import numpy as np
from astropy import wcs as wcs_lib
from astropy.io import fits

from npejax import catalogs as catalog_lib
from npejax import datasets as data_lib
from npejax import io
from npejax.cataloging import checks
from npejax.nn.predictor import CHUNK_SIZE, Predictor, check_inputs, masked_pixels
from npejax.schema import PREDICTION_COLUMNS
from npejax.sim import fields as fields_lib
from npejax.sim import psf as psf_lib
from npejax.surveys import sdss

INPUT_ARRAYS = ("images", "background", "psf_params")  # what an .npz input holds (npejax.schema batch keys)
ELECTRONS_ARRAY = "electrons_per_nmgy"  # and may hold: gain / calibration, [N] or one number
FITS_SUFFIXES = (".fits", ".fit", ".fts")  # an uncompressed FITS file
FITS_EXTENSIONS = (*FITS_SUFFIXES, ".fits.gz", ".fit.gz", ".fits.bz2")  # what a FITS input may be named
MAX_PSF_FIT_RESIDUAL = 0.1  # a --psf-image fitted worse than this (||model - image|| / ||image||) is refused


@dataclasses.dataclass
class Inputs:
    """Images to catalog (:func:`open_inputs`): ``name`` (for messages), ``num_images``, ``read(start, stop)``
    giving (images, background, psf_params) of images [start, stop) (checked with
    :func:`~npejax.nn.predictor.check_inputs`), ``wcs`` (the celestial WCS of a single FITS image, else
    None), ``notes`` (lines for the user: how a ``--fwhm`` or ``--psf-image`` became PSF parameters), and what the
    input knows of its gain / calibration (for the quality flag, :func:`add_quality`): ``electrons_per_nmgy(start,
    stop)`` giving it per image [stop - start] (None: not known, estimated from each image's noise) and
    ``electrons_source`` (where it comes from, in words)."""

    name: str
    num_images: int
    read: Callable[[int, int], tuple]
    wcs: wcs_lib.WCS | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    electrons_per_nmgy: Callable[[int, int], np.ndarray] | None = None
    electrons_source: str = ""

    @classmethod
    def from_arrays(
        cls,
        images,
        background,
        psf_params,
        name: str = "arrays",
        wcs=None,
        notes=(),
        electrons_per_nmgy=None,
        electrons_source: str = "given",
    ) -> Inputs:
        """Inputs held in memory; checked now (:func:`~npejax.nn.predictor.check_inputs`; NaN and infinite
        pixels are kept as masked pixels, an image mostly masked is refused). ``electrons_per_nmgy``: a number or
        one per image (positive finite), or None (not known)."""
        images = np.asarray(images, np.float32)
        try:
            masked_pixels(images[None] if images.ndim == 2 else images)  # the refusal names the file
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        images, background, psf_params = check_inputs(images, background, psf_params, allow_masked=True)
        known = None
        if electrons_per_nmgy is not None:
            try:
                values = np.broadcast_to(np.asarray(electrons_per_nmgy, np.float64), (len(images),)).copy()
            except ValueError:  # another length, or not numbers
                values = np.full(len(images), np.nan)
            if not np.all(np.isfinite(values) & (values > 0)):
                raise ValueError(
                    f"{name}: electrons_per_nmgy {np.ravel(electrons_per_nmgy)[:5].tolist()} (shape "
                    f"{np.shape(electrons_per_nmgy)}): expected positive finite numbers (gain / calibration, "
                    f"electrons per nmgy), one or one per image ({len(images)})"
                )
            known = lambda a, b: values[a:b]  # noqa: E731
        return cls(
            name,
            len(images),
            lambda a, b: (images[a:b], background[a:b], psf_params[a:b]),
            wcs,
            list(notes),
            known,
            electrons_source if known is not None else "",
        )

    @classmethod
    def from_dataset(cls, path: str) -> Inputs:
        """A dataset directory read ``batch_size`` images at a time (memory-mapped, checked on opening); its
        images' gain / calibration from the field bank its manifest records (:func:`dataset_electrons`)."""
        ds = data_lib.load(path)

        def read(start, stop):
            arrays = ds[start:stop]
            return tuple(check_inputs(*(arrays[k] for k in INPUT_ARRAYS), first_index=start))

        electrons, source = dataset_electrons(ds)
        return cls(os.fspath(path), len(ds), read, electrons_per_nmgy=electrons, electrons_source=source)

    def batches(self, batch_size: int) -> Iterator[tuple[int, tuple]]:
        """(index of the first image, (images, background, psf_params)) per batch of ``batch_size``."""
        for start in range(0, self.num_images, batch_size):
            yield start, self.read(start, min(start + batch_size, self.num_images))


def dataset_electrons(ds) -> tuple[Callable[[int, int], np.ndarray] | None, str]:
    """(images [start, stop) -> gain / calibration [stop - start], where it comes from) of a dataset: the field
    bank its manifest records (``bank.source``: an embedded bank's name or a file), checked against the manifest's
    ``bank.sha256``, read at each image's ``field_id`` (:meth:`npejax.sim.fields.FieldBank.to_electrons`); (None,
    why) when that bank cannot be read here or is another one (each image's noise is then measured instead)."""
    record = ds.manifest.get("bank") or {}
    source = record.get("source")
    try:
        bank = fields_lib.load_bank(source)
    except (OSError, ValueError, TypeError) as exc:
        return None, f"the dataset's field bank {source!r} cannot be read here ({type(exc).__name__})"
    if data_lib.bank_sha256(bank) != record.get("sha256"):
        return None, f"the field bank {source!r} is not the one the dataset was simulated with (SHA-256)"

    def electrons(start, stop):
        return np.asarray(bank.to_electrons(np.asarray(ds[start:stop]["field_id"], np.int64)), np.float64)

    return electrons, f"field bank {source} (gain / calibration of each image's field_id)"


def open_inputs(
    path: str,
    background=None,
    psf_params=None,
    field_id=None,
    bank=None,
    fwhm=None,
    psf_image=None,
    image_checks: bool = True,
    psf_flags=("--fwhm", "--psf-image"),
) -> Inputs:
    """:class:`Inputs` from a dataset directory, an .npz or a FITS image (see the module doc), checked
    before any prediction (a dataset's manifest and shard files when it is opened, its pixels batch by
    batch).

    For a FITS image, ``background`` is a number or a FITS file (nmgy per pixel) and the PSF is one of
    ``psf_params`` ("s1,s2,sP,beta,b,p0" or 6 numbers), the field ``field_id`` of the field bank ``bank``
    (a path, or None for the embedded synthetic bank), ``fwhm`` (arcsec, :func:`psf_from_fwhm`) or
    ``psf_image`` (a FITS file, :func:`psf_from_image`); these are refused for other inputs. A FITS image is
    checked by :mod:`npejax.cataloging.checks` (its pixels only when ``image_checks``). ``psf_flags`` name
    ``fwhm`` and ``psf_image`` in messages (a survey frame list's ``fwhm=`` and ``psf-image=``).
    """
    path = os.fspath(path)
    if os.path.isdir(path) or path.endswith(".npz"):
        given = [
            name
            for name, value in (
                ("background", background),
                ("psf_params", psf_params),
                ("field_id", field_id),
                ("fwhm", fwhm),
                ("psf_image", psf_image),
            )
            if value is not None
        ]
        if given:
            raise ValueError(
                f"{', '.join(given)}: only for a FITS image input; {path} holds its own background and PSF parameters"
            )
    if os.path.isdir(path):
        return Inputs.from_dataset(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"input {path} does not exist")
    if path.endswith(".npz"):
        *arrays, electrons = _read_npz(path)
        return Inputs.from_arrays(
            *arrays, name=path, electrons_per_nmgy=electrons, electrons_source=f"{path} electrons_per_nmgy"
        )
    if path.lower().endswith(FITS_EXTENSIONS):
        return _fits_inputs(path, background, psf_params, field_id, bank, fwhm, psf_image, image_checks, psf_flags)
    raise ValueError(
        f"unsupported input {path}: expected a dataset directory, an .npz or a FITS image "
        f"({', '.join(FITS_EXTENSIONS)})"
    )


def load_inputs(path: str, background=None, psf_params=None, field_id=None, bank=None):
    """(images, background, psf_params) of every image of :func:`open_inputs` as arrays in memory."""
    inputs = open_inputs(path, background, psf_params, field_id, bank)
    return inputs.read(0, inputs.num_images)


def _read_npz(path: str):
    try:
        with np.load(path) as f:
            missing = [k for k in INPUT_ARRAYS if k not in f.files]
            if missing:
                raise ValueError(f"{path} lacks arrays {missing}; expected images, background, psf_params")
            electrons = np.asarray(f[ELECTRONS_ARRAY]) if ELECTRONS_ARRAY in f.files else None
            return (*(np.asarray(f[k]) for k in INPUT_ARRAYS), electrons)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        if isinstance(exc, ValueError) and "lacks arrays" in str(exc):
            raise
        raise ValueError(
            f"{path} is not a readable .npz (truncated or corrupt?): {type(exc).__name__}: {exc}"
        ) from None


def read_fits_image(path: str, what: str = "FITS file") -> tuple[np.ndarray, fits.Header]:
    """(data as float32, header) of the first 2-D image HDU of ``path``, read whole; ValueError naming the
    file for a truncated, corrupt or image-less file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path} does not exist")
    found = None
    try:  # one thread at a time (io.caught_warnings): the survey reads frames in threads
        with io.caught_warnings("always", record=True) as caught:
            with fits.open(sdss.fits_source(path), memmap=False, lazy_load_hdus=False) as hdul:
                for hdu in hdul:
                    if hdu.is_image and hdu.header.get("NAXIS") == 2 and hdu.data is not None:
                        found = np.array(hdu.data, np.float32), hdu.header.copy()
                        break
    except Exception as exc:  # OSError, TypeError ("buffer is too small"), ValueError, EOFError, VerifyError
        raise ValueError(
            f"{what} {path} is not a readable FITS file (truncated or corrupt?): {type(exc).__name__}: {exc}"
        ) from None
    for w in caught:
        if "truncated" in str(w.message).lower():
            raise ValueError(f"{what} {path} is truncated: {w.message}")
    if found is None:
        raise ValueError(f"{what} {path} holds no 2-D image HDU")
    return found


def celestial_wcs(header: fits.Header, name: str) -> wcs_lib.WCS | None:
    """The celestial part of the WCS in ``header``, or None when it has none; ValueError naming ``name``
    for WCS keywords astropy cannot use."""
    try:
        with io.caught_warnings("ignore", wcs_lib.FITSFixedWarning):
            w = wcs_lib.WCS(header)
    except Exception as exc:  # astropy raises several types for bad WCS keywords
        raise ValueError(
            f"{name}: its WCS keywords cannot be used ({type(exc).__name__}: {exc}); fix or remove "
            "them (CTYPE, CRPIX, CRVAL, CD/PC)"
        ) from None
    return w.celestial if w.has_celestial else None


def _fits_inputs(
    path: str,
    background,
    psf_params=None,
    field_id=None,
    bank=None,
    fwhm=None,
    psf_image=None,
    image_checks=True,
    psf_flags=("--fwhm", "--psf-image"),
) -> Inputs:
    name = f"input FITS file {path}"
    image, header = read_fits_image(path, "input FITS file")
    if background is None:
        raise ValueError("a FITS input needs --background (nmgy per pixel, a number or a FITS file)")
    psfs = {"--psf-params": psf_params, "--field-id": field_id, "--fwhm": fwhm, "--psf-image": psf_image}
    if sum(v is not None for v in psfs.values()) != 1:
        raise ValueError(f"a FITS input needs exactly one of {', '.join(psfs)}")
    try:
        bg = np.full(image.shape, float(background), np.float32)
    except (TypeError, ValueError):  # not a number: a FITS file
        if not os.path.isfile(os.fspath(background)):
            raise ValueError(
                f"background {background!r}: expected a number (nmgy per pixel) or an existing FITS file"
            ) from None
        bg, _ = read_fits_image(background, "background FITS file")
        if bg.shape != image.shape:
            raise ValueError(
                f"background FITS file {background} has shape {bg.shape}, the image {path} "
                f"{image.shape}: expected the same shape"
            ) from None
    later = []  # warnings, printed once nothing is refused
    scale = checks.check_wcs(header, name, later)  # arcsec per pixel, None without a WCS
    wcs = celestial_wcs(header, name)
    if image_checks:
        checks.check_units(header, name)
        stats = checks.check_pixels(image, bg, name, what="--background", later=later)
    else:
        stats = checks.pixel_statistics(image, bg)
    notes = []
    if field_id is not None:
        bank = fields_lib.load_bank(bank)
        psf = checks.check_psf_params(bank.psf_params[bank.index(field_id)], f"--field-id {field_id}")
    elif fwhm is not None:
        psf, note = psf_from_fwhm(fwhm, scale or checks.PIXEL_SCALE, bank, psf_flags[0])
        notes.append(note)
    elif psf_image is not None:
        psf, note = psf_from_image(psf_image, psf_flags[1])
        notes.append(note)
    else:
        psf = parse_psf_params(psf_params)
    inputs = Inputs.from_arrays(image[None], bg[None], np.asarray(psf, np.float32)[None], path, wcs, notes)
    _noise_electrons(inputs, stats, "the image")
    for text in later:
        checks.warn(text)
    return inputs


def open_sdss_frame(frame: str, psfield: str, image_checks: bool = True) -> Inputs:
    """The r-band SDSS ``frame`` (image and background, nmgy; WCS) with the r-band PSF of ``psfield``,
    refusing a frame of another band, a psField of another field (by the RUN, CAMCOL and FIELD of its header
    or table, else its file name: :func:`npejax.surveys.sdss.psfield_identity`), a singular WCS and (when
    ``image_checks``) a frame not in nmgy or not sky-subtracted (:mod:`npejax.cataloging.checks`); errors name
    ``--sdss-frame`` and ``--psfield``, the options of ``python -m npejax.predict``."""
    for path, flag in ((frame, "--sdss-frame"), (psfield, "--psfield")):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{flag} {path} does not exist")
    image, background, header = sdss.read_frame_for_prediction(frame)
    named = sdss.frame_name_parts(frame)
    band = str(header.get("FILTER", named[0] if named else "r")).strip()
    if band != "r":
        raise ValueError(
            f"--sdss-frame {frame} is a {band}-band frame (FILTER); the network catalogs r-band "
            "images: give frame-r-..."
        )
    if all(k in header for k in ("RUN", "CAMCOL", "FIELD")):
        frame_field = tuple(int(header[k]) for k in ("RUN", "CAMCOL", "FIELD"))
    else:
        frame_field = named[1:] if named else None
    psf_field, source = sdss.psfield_identity(psfield)
    if frame_field and psf_field and tuple(frame_field) != psf_field:
        raise ValueError(
            f"--psfield {psfield} is field {sdss.field_id(*psf_field)} but --sdss-frame {frame} is "
            f"field {sdss.field_id(*frame_field)} (the psField's field read from its {source}): give the psField of "
            "the same run, camcol and field"
        )
    name, later = f"--sdss-frame {frame}", []  # warnings, printed once nothing is refused
    checks.check_wcs(header, name, later)
    if image_checks:
        checks.check_units(header, name)
        stats = checks.check_pixels(image, background, name, what="the frame's own sky", later=later)
    else:
        stats = checks.pixel_statistics(image, background)
    psf = checks.check_psf_params(sdss.read_psfield(psfield, band="r"), f"--psfield {psfield}")
    inputs = Inputs.from_arrays(image[None], background[None], psf[None], name=frame, wcs=celestial_wcs(header, name))
    _noise_electrons(inputs, stats, "the frame (its gain is in the photoField file, not read here)")
    for text in later:
        checks.warn(text)
    return inputs


def _noise_electrons(inputs: Inputs, stats: dict, what: str) -> None:
    """Gives ``inputs`` (one image) the gain / calibration its measured noise implies
    (:func:`npejax.cataloging.checks.noise_electrons_per_nmgy` of ``stats``), when it can be measured."""
    value = checks.noise_electrons_per_nmgy(stats)
    if np.isfinite(value):
        inputs.electrons_per_nmgy = lambda a, b: np.full(max(min(b, 1) - a, 0), value)
        inputs.electrons_source = (
            f"estimated from the pixel noise of {what}: median background {stats['background']:.4g} / noise "
            f"{stats['noise']:.4g}^2"
        )


def parse_psf_params(text) -> np.ndarray:
    """Six PSF parameters from ``"s1,s2,sP,beta,b,p0"`` (or a sequence), validated."""
    try:
        values = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except (TypeError, ValueError):
        values = []
    if len(values) != 6:
        raise ValueError(
            f"psf_params {text!r}: expected six comma-separated numbers s1,s2,sP,beta,b,p0 (widths in pixels)"
        )
    return checks.check_psf_params(np.array(values), where=f"psf_params {text!r}")


def psf_from_fwhm(
    fwhm, pixel_scale: float = checks.PIXEL_SCALE, bank=None, flag: str = "--fwhm"
) -> tuple[np.ndarray, str]:
    """(six PSF parameters, a line saying how) of a PSF of full width at half maximum ``fwhm`` arcsec on pixels
    of ``pixel_scale`` arcsec: the field of the field bank ``bank`` (a path, None: the embedded synthetic bank)
    whose PSF FWHM is nearest, its widths s1, s2, sP scaled to the FWHM (the shape, beta, b and p0, kept: a PSF
    of the family the network was trained on). ValueError naming ``flag`` for a FWHM that is not a number in
    0.1-10 arcsec."""
    try:
        value = float(fwhm)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.1 <= value <= 10:  # also NaN
        raise ValueError(f"{flag} {fwhm!r}: expected the PSF's FWHM in arcsec, 0.1 to 10 (SDSS r: about 1.0-1.8)")
    pixels = value / pixel_scale
    bank = fields_lib.load_bank(bank)
    widths = np.array([psf_lib.fwhm_pixels(p) for p in bank.psf_params])
    k = int(np.argmin(np.abs(widths - pixels)))
    params = np.array(bank.psf_params[k], np.float64)
    params[:3] *= pixels / widths[k]
    params = checks.check_psf_params(params, f"{flag} {fwhm}")
    note = (
        f"PSF of {flag} {value:g} arcsec: {pixels:.3g} pixels at {pixel_scale:.4g} arcsec/pixel, the shape of field "
        f"{bank.names[k]} of the bank (FWHM {widths[k]:.3g} pixels) scaled: psf params "
        + ",".join(f"{v:.4g}" for v in params)
    )
    return params, note


def psf_from_image(path, flag: str = "--psf-image") -> tuple[np.ndarray, str]:
    """(six PSF parameters, a line with them, the FWHM and the fit's residual) fitted to the PSF image ``path``
    (its first 2-D image HDU, at the image's pixel scale: :func:`npejax.sim.psf.fit_psf_image`); ValueError
    naming ``flag`` and the file for an image that is not a PSF or a fit worse than
    :data:`MAX_PSF_FIT_RESIDUAL`."""
    stamp, _ = read_fits_image(path, f"{flag} file")
    try:
        params, residual = psf_lib.fit_psf_image(stamp)
    except ValueError as exc:
        raise ValueError(f"{flag} {path}: {exc}") from None
    if residual > MAX_PSF_FIT_RESIDUAL:
        raise ValueError(
            f"{flag} {path}: the six-parameter PSF fits it badly (residual {residual:.3g} of the image, more than "
            f"{MAX_PSF_FIT_RESIDUAL}): give a centred, background-subtracted image of one PSF, or --fwhm"
        )
    params = checks.check_psf_params(params, f"{flag} {path}")
    note = (
        f"PSF fitted to {flag} {path}: psf params "
        + ",".join(f"{v:.4g}" for v in params)
        + f", FWHM {psf_lib.fwhm_pixels(params):.3g} pixels, residual {residual:.2g} of the image"
    )
    return params, note


# --- the catalog -----------------------------------------------------------------------------------


def catalog_inputs(
    net: Predictor,
    inputs: Inputs,
    min_prob: float = 0.5,
    batch_size: int = 256,
    chunk_size: int | None = CHUNK_SIZE,
    progress: bool = False,
    quality: bool = False,
    electrons_per_nmgy: float | None = None,
):
    """The catalog of ``inputs`` by ``net`` (:meth:`~npejax.nn.predictor.Predictor.catalog_batches`: read
    ``batch_size`` images at a time, a dataset is never loaded whole; ``progress``: its bars on a terminal); with
    ``ra``/``dec`` columns when the inputs have a celestial WCS (:func:`npejax.catalogs.add_sky_coordinates`),
    and each image's distance from the fields the network was trained on (:class:`FieldRange`: the
    ``field_distance`` column, the meta ``FIELDBNK`` and ``FIELDTHR``, and a warning line for an image beyond
    the threshold). With ``quality`` (the commands' default), the quality flag's columns too (:func:`add_quality`;
    ``electrons_per_nmgy``: the gain / calibration of every image, instead of what the inputs know)."""
    fields_range = FieldRange.of(net)
    table = net.catalog_batches(
        fields_range.measured(inputs.batches(batch_size)),
        min_prob,
        batch_size,
        chunk_size,
        progress=progress,
        num_images=inputs.num_images,
    )
    fields_range.annotate(table, inputs.name)
    if quality:
        add_quality(net, inputs, table, batch_size, electrons_per_nmgy)
    if inputs.wcs is not None:
        catalog_lib.add_sky_coordinates(table, inputs.wcs)
    return table


QUALITY_WARNINGS = 5  # images named one by one in the quality flag's warnings; the rest are counted


def warn_images(source: str, indices, line: Callable[[int], str], rest: str, limit: int = QUALITY_WARNINGS) -> None:
    """One warning line per image of ``indices`` -- ``SOURCE: image I: line(I)`` -- for the first ``limit``, then
    one line counting the others (``SOURCE: N more images REST``): a dataset of many images warns in a few lines."""
    for i in indices[:limit]:
        checks.warn(f"{source}: image {i}: {line(i)}")
    if len(indices) > limit:
        checks.warn(f"{source}: {len(indices) - limit} more images {rest}")


# The quality flag's thresholds were calibrated on catalogs at the default --min-prob: only rows above it are
# modelled and flagged (a catalog at --min-prob 0 holds a row per tile; fitting them all would fit the noise, and
# cost a fit of thousands of profiles per crop)
QUALITY_MIN_PROB = 0.5
# A crop whose modelled window (112 x 112 pixels, 784 tiles) holds more detections is not checked (NaN, a warning):
# a catalog with a detection in most tiles (an untrained network) would cost minutes of fitting per crop; the
# simulated 1000 x 1000 image of the cost measurement holds about 8 per window
QUALITY_MAX_DETECTIONS = 200


def add_quality(net: Predictor, inputs: Inputs, table, batch_size: int = 256, electrons_per_nmgy=None) -> dict:
    """Adds the quality flag's columns (:data:`npejax.schema.QUALITY_COLUMNS`) to ``table``, the catalog of
    ``inputs`` by ``net``: :func:`npejax.cataloging.quality.crop_quality` of each image (read again,
    ``batch_size`` at a time), in crops of the calibration's :data:`~npejax.cataloging.quality.CROP_SIZE` pixels
    (``image_quality_chi2`` and ``image_quality_flag`` are those of the crop around the detection; the whole image
    for images of that size or smaller), with the NaN and infinite pixels (masked by the catalog) left out.

    The gain / calibration (electrons per nmgy) of each image is ``electrons_per_nmgy`` when given, else what the
    inputs know (:attr:`Inputs.electrons_per_nmgy`: a dataset's field bank, an .npz's ``electrons_per_nmgy``, a FITS
    image's or SDSS frame's pixel noise), else measured from each image's noise
    (:func:`npejax.cataloging.checks.noise_electrons_per_nmgy`; :data:`~npejax.cataloging.checks.ELECTRONS_PER_NMGY`'s
    middle where it cannot be). The meta records it (``QEPNMGY``: the median over the images; ``QEPSRC``: where
    it comes from), the thresholds (``net.quality_thresholds``, a pretrained network's calibrated ones, else the
    package's; ``QTHR*``, ``QTHRSRC`` which) and crop (``QCROP``, ``QMARGIN``) and the counts over all images
    (``QNCROP`` crops, ``QNCRFLG`` of them flagged, ``QNDETFLG`` detections flagged; ``QFRCROP`` and ``QFRDET``
    the fractions; ``QNCRSKIP`` crops not checked: more than :data:`QUALITY_MAX_DETECTIONS` detections in their
    modelled window, NaN statistics, one warning line per image). Only rows with ``prob_source`` above
    :data:`QUALITY_MIN_PROB` (the calibration's catalogs) are modelled and flagged: those below (a ``min_prob``
    below it) get NaN statistics, no ``quality_flag``, and their crop's ``image_quality_*``. One warning line per
    image with a flagged crop or detection (the first :data:`QUALITY_WARNINGS`, then a count). Returns the counts
    per image (``crops``, ``crops_flagged``, ``crops_skipped``, ``detections``, ``detections_flagged``: arrays
    [num_images])."""
    from npejax.cataloging import quality as quality_lib  # deferred: GalSim loads only when the flag is asked

    if net.quality_thresholds is None:
        thresholds, threshold_source = quality_lib.THRESHOLDS, "package (calibrated for cpu)"
    else:
        thresholds, threshold_source = quality_lib.Thresholds(**net.quality_thresholds), "network"

    n = inputs.num_images
    image = np.asarray(table["image"], np.int64)
    det = dict(
        chi2=np.full(len(table), np.nan),
        maxres=np.full(len(table), np.nan),
        flux_ratio=np.full(len(table), np.nan),
        flag=np.zeros(len(table), bool),
    )
    crop_chi2, crop_flag = np.full(len(table), np.nan), np.zeros(len(table), bool)
    counts = {
        k: np.zeros(n, np.int64)
        for k in ("crops", "crops_flagged", "crops_skipped", "detections", "detections_flagged")
    }
    values, sources = [], set()
    claimed = np.asarray(table["prob_source"], np.float64) > QUALITY_MIN_PROB
    for start, (images, background, psf_params) in inputs.batches(batch_size):
        images = np.asarray(images)[None] if np.ndim(images) == 2 else np.asarray(images)
        stop = start + len(images)
        to_e, source = _electrons(inputs, start, stop, images, background, electrons_per_nmgy)
        values.append(to_e)
        sources.add(source)
        rows = np.flatnonzero((image >= start) & (image < stop) & claimed)
        masked = ~np.isfinite(images)
        found, crops = quality_lib.crop_quality(
            table[rows],
            images,
            background,
            psf_params,
            to_e,
            net.config,
            mask=masked if masked.any() else None,
            thresholds=thresholds,
            image_offset=start,
            max_detections=QUALITY_MAX_DETECTIONS,
        )
        for key in det:
            det[key][rows] = found[key]
        crop_chi2[rows], crop_flag[rows] = crops["chi2"][found["crop"]], crops["flag"][found["crop"]]
        rest = np.flatnonzero((image >= start) & (image < stop) & ~claimed)  # their crop's statistic
        if rest.size:
            x, y = catalog_lib.array_xy(table[rest])
            k = crop_lookup(crops, image[rest] - start, x, y)
            crop_chi2[rest], crop_flag[rest] = crops["chi2"][k], crops["flag"][k]
        where = start + crops["image"]
        np.add.at(counts["crops"], where, 1)
        np.add.at(counts["crops_flagged"], where, crops["flag"].astype(np.int64))
        np.add.at(counts["crops_skipped"], where, crops["skipped"].astype(np.int64))
    np.add.at(counts["detections"], image[claimed], 1)
    np.add.at(counts["detections_flagged"], image, det["flag"].astype(np.int64))
    quality_lib.set_quality_columns(table, det, crop_chi2, crop_flag, thresholds)
    crops_total, crops_flagged = int(counts["crops"].sum()), int(counts["crops_flagged"].sum())
    flagged = int(det["flag"].sum())
    table.meta.update(
        QCROP=quality_lib.CROP_SIZE,
        QMARGIN=quality_lib.CROP_MARGIN,
        QEPNMGY=round(float(np.median(np.concatenate(values))), 4) if values else float("nan"),
        QEPSRC="; ".join(sorted(sources)),
        QNCROP=crops_total,
        QNCRFLG=crops_flagged,
        QNCRSKIP=int(counts["crops_skipped"].sum()),
        QNDETFLG=flagged,
        QFRCROP=round(crops_flagged / max(crops_total, 1), 5),
        QFRDET=round(flagged / max(int(claimed.sum()), 1), 5),
        QMINPROB=QUALITY_MIN_PROB,
        QTHRSRC=threshold_source,
    )
    size = quality_lib.CROP_SIZE
    warn_images(
        inputs.name,
        np.flatnonzero((counts["crops_flagged"] > 0) | (counts["detections_flagged"] > 0)),
        lambda i: (
            f"{counts['detections_flagged'][i]} of {counts['detections'][i]} detections and "
            f"{counts['crops_flagged'][i]} of {counts['crops'][i]} {size}x{size} regions flagged by the quality check "
            "(quality_flag, image_quality_flag): artifacts or a wrong PSF?"
        ),
        "flagged by the quality check",
    )
    warn_images(
        inputs.name,
        np.flatnonzero(counts["crops_skipped"] > 0),
        lambda i: (
            f"{counts['crops_skipped'][i]} of {counts['crops'][i]} {size}x{size} regions not checked by the quality "
            f"check: more than {QUALITY_MAX_DETECTIONS} detections around each (a detection in most tiles: is the "
            "network trained?); NaN quality columns there"
        ),
        "with regions not checked",
    )
    return counts


def crop_lookup(crops: dict, image, x, y) -> np.ndarray:
    """The row of :func:`npejax.cataloging.quality.crop_quality`'s per-crop arrays whose core holds each point
    (``image`` index into its images, ``x``, ``y`` pixels from the edge): the crop of the nearest core centre."""
    from npejax.cataloging.quality import crop_of  # deferred: as add_quality

    keys = {(int(i), int(r), int(c)): k for k, (i, r, c) in enumerate(zip(crops["image"], crops["row"], crops["col"]))}
    out = np.zeros(len(x), np.int64)
    for i in np.unique(image):
        mine = crops["image"] == i
        row_starts, col_starts = np.unique(crops["row"][mine]), np.unique(crops["col"][mine])
        rows_side, cols_side = int(crops["rows"][mine][0]), int(crops["cols"][mine][0])
        sel = np.flatnonzero(image == i)
        a = row_starts[crop_of(y[sel], row_starts, rows_side)]
        b = col_starts[crop_of(x[sel], col_starts, cols_side)]
        out[sel] = [keys[(int(i), int(r), int(c))] for r, c in zip(a, b)]
    return out


def _electrons(inputs: Inputs, start: int, stop: int, images, background, given) -> tuple[np.ndarray, str]:
    """(gain / calibration of images [start, stop), where it comes from): :func:`add_quality`'s order."""
    if given is not None:
        return np.full(stop - start, float(given)), "given (--electrons-per-nmgy)"
    if inputs.electrons_per_nmgy is not None:
        return np.asarray(inputs.electrons_per_nmgy(start, stop), np.float64), inputs.electrons_source
    background = np.broadcast_to(np.asarray(background, np.float64), images.shape)
    values = np.array(
        [checks.noise_electrons_per_nmgy(checks.pixel_statistics(im, bg)) for im, bg in zip(images, background)]
    )
    source = "estimated from each image's pixel noise" + (
        f" ({inputs.electrons_source})" if inputs.electrons_source else ""
    )
    unmeasured = ~np.isfinite(values)
    if unmeasured.any():
        values[unmeasured] = float(np.mean(checks.ELECTRONS_PER_NMGY))
        source += f"; {float(np.mean(checks.ELECTRONS_PER_NMGY)):g} where the noise could not be measured"
    return values, source


FIELD_WARNINGS = 5  # images named one by one in warnings beyond the training fields; the rest are counted


@functools.lru_cache(maxsize=4)
def _bank_and_threshold(name: str) -> tuple[fields_lib.FieldBank, float]:
    """A network's training bank and its distance threshold, read once per process (a survey catalogs every
    frame with the same network); a bank that cannot be read raises each time (nothing cached)."""
    bank = fields_lib.load_bank(name)
    return bank, bank.distance_threshold()


@dataclasses.dataclass
class FieldRange:
    """How far images' field covariates (six PSF parameters, mean background) lie from the field bank a network
    was trained on (its config's ``fields.bank``): :meth:`npejax.sim.fields.FieldBank.distance`, a Mahalanobis
    distance, against the bank's own 99.9th percentile (:meth:`~npejax.sim.fields.FieldBank.distance_threshold`).
    Beyond it the network meets a PSF or sky it was not trained on, and its catalog deserves less trust (the
    default bank's PSFs are one family: a real psField row can lie far outside it; ``fields.bank = "survey"``
    spans SDSS). ``bank`` is None when the network's bank cannot be read here (a bank file of another machine):
    nothing is measured then, and one warning says so."""

    bank: fields_lib.FieldBank | None
    name: str
    threshold: float = float("nan")
    distances: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, net: Predictor) -> FieldRange:
        name = str(net.config.fields.bank)
        try:
            bank, threshold = _bank_and_threshold(name)
        except (OSError, ValueError) as exc:
            checks.warn(f"the network's field bank {name!r} cannot be read here ({exc}): no field_distance column")
            return cls(None, name)
        return cls(bank, name, threshold)

    def measured(self, batches: Iterator[tuple[int, tuple]]) -> Iterator[tuple[int, tuple]]:
        """``batches`` passed through unchanged, each image's distance recorded on the way."""
        for start, arrays in batches:
            if self.bank is not None:
                images, background, psf_params = arrays
                one = np.ndim(images) == 2  # one image: [H, W], psf [6]
                background = np.asarray(background, np.float64)[None] if one else background
                psf_params = np.asarray(psf_params)[None] if one else psf_params
                for i, d in enumerate(np.atleast_1d(self.bank.distance(psf_params, background))):
                    self.distances[start + i] = float(d)
            yield start, arrays

    def annotate(self, table, source: str) -> None:
        """Adds ``field_distance`` (per row, its image's) and the meta; warns on images beyond the threshold."""
        if self.bank is None:
            return
        table["field_distance"] = np.array([self.distances[int(i)] for i in table["image"]], np.float32)
        table["field_distance"].unit, table["field_distance"].description = PREDICTION_COLUMNS["field_distance"]
        table.meta["FIELDBNK"] = self.name
        table.meta["FIELDTHR"] = round(self.threshold, 4)
        warn_images(
            source,
            sorted(i for i, d in self.distances.items() if d > self.threshold),
            lambda i: (
                f"its PSF and background lie {self.distances[i]:.1f} from the network's training fields (bank "
                f"{self.name!r}; its own 99.9th percentile is {self.threshold:.1f}): the network has not seen such "
                "fields, trust its catalog less (field_distance column)"
            ),
            "beyond the training fields",
            FIELD_WARNINGS,
        )
