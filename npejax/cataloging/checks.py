"""Sanity checks of an image a user catalogs: is it what the network takes (sky-subtracted, nmgy, 0.396"/pixel)?

Shared by ``python -m npejax.predict`` and ``python -m npejax.survey catalog`` (through
:mod:`npejax.cataloging.images`). Each check raises ``ValueError`` naming the file, the measured value and the
expected one (one ``error:`` line, exit status 2 for ``npejax.predict``; a failed frame for the survey), or writes
one ``warning:`` line on stderr (:func:`warn`).

* :func:`check_pixels` -- the pixels against the given background (nmgy per pixel). The network was trained on
  sky-subtracted images in nanomaggies whose pixel noise is the sky's photon noise: ``sqrt(background /
  e)`` nmgy with ``e = gain / calibration`` electrons per nmgy (:meth:`npejax.sim.fields.FieldBank.to_electrons`;
  the embedded bank's fields span 770-1173, SDSS r-band frames about 800-1200), taken as
  :data:`ELECTRONS_PER_NMGY` when not known. Measured robustly (sources cover a small fraction of the pixels):
  the median pixel, and the noise as 1.4826 x the median absolute deviation of horizontal neighbour differences
  / sqrt(2) (a smooth sky or a galaxy cancels in the differences). Refused: a median further from 0 than
  :data:`MAX_MEDIAN_SIGMAS` noise sigmas (the sky left in, or subtracted twice), and a noise more than
  :data:`REFUSE_NOISE_FACTOR` times off the expected range (an image in DN is ~200 times, in electrons ~1000
  times, x1e6 a million times too noisy; a ``--background`` 25 or more times too large or too small gives a
  factor 5). Warned: a median beyond :data:`WARN_MEDIAN_SIGMAS` sigmas, a noise more than
  :data:`WARN_NOISE_FACTOR` times off. A ``BUNIT`` keyword that is not nanomaggies is refused too.

  Thresholds, measured on simulated images (``python -m npejax.simulate --config configs/psf_aware.py``, both
  field priors, 80 x 80 and 160 x 160 pixels, Gaussian and Poisson noise: 500 clean images): the median is
  within 0.57 sigmas of 0 (99%: 0.29) and the noise within a factor 1.14 of the expected range on every one
  (0 warnings, 0 refusals of 500); the same images with the sky left in are 18-37 sigmas off (500 of 500
  refused), in DN at least 158 times too noisy (500 of 500 refused), with a background 5 times too large or
  too small warned (998 of 1000).

  :func:`noise_electrons_per_nmgy` inverts the relation: the e-/nmgy an image's measured noise implies (the
  commands' quality flag takes it for an image that does not say its own).

* :func:`check_wcs` -- a celestial WCS whose CD (or PC x CDELT) matrix is singular or all zero (RA/Dec would be
  meaningless: astropy silently replaces a zero CD matrix by 1 degree per pixel) is refused; a pixel scale more
  than :data:`SCALE_TOLERANCE` from :data:`PIXEL_SCALE` (the network's, SDSS's 0.396"/pixel) is warned.
* :func:`check_psf_params` -- PSF parameters inside physical ranges (widths 0.1-25 pixels, the truncation
  radius of :mod:`npejax.sim.psf`; beta <= 20; b, p0 <= 10): a sigma of 1e6 pixels is refused before the
  network runs, naming the option that gave it.

``--skip-image-checks`` (both commands) skips :func:`check_pixels` (for users who know their image is right
though it looks otherwise, e.g. a deep coadd whose noise is far below the sky's photon noise); the WCS and PSF
checks always run.
"""

from __future__ import annotations

import sys

import numpy as np
from astropy import wcs as wcs_lib
from astropy.wcs import utils as wcs_utils

from npejax import io
from npejax.sim import psf as psf_lib

PIXEL_SCALE = 0.396  # arcsec per pixel: SDSS's, the network's (the simulator's images)
SCALE_TOLERANCE = 0.05  # relative difference of a WCS pixel scale from PIXEL_SCALE beyond which a warning is printed
ELECTRONS_PER_NMGY = (700.0, 1300.0)  # gain / calibration assumed when not known (bank: 770-1173)
MAX_MEDIAN_SIGMAS = 3.0  # |median| / noise above this: refused (sky left in, or subtracted twice)
WARN_MEDIAN_SIGMAS = 1.0  # |median| / noise above this: a warning
REFUSE_NOISE_FACTOR = 5.0  # noise this many times off the expected range: refused (wrong units)
WARN_NOISE_FACTOR = 1.5  # noise this many times off the expected range: a warning
NMGY_UNITS = ("nanomaggies", "nanomaggy", "nmgy", "nmaggies", "nmaggy")  # BUNIT values taken as nmgy
PSF_WIDTH_RANGE = (0.1, psf_lib.DEFAULT_TRUNC_PIXELS)  # s1, s2, sP in pixels
MAX_PSF_BETA = 20.0
MAX_PSF_WEIGHT = 10.0  # b and p0 (relative peak weights)
SKIP_FLAG = "--skip-image-checks"


def warn(text: str, later: list | None = None) -> None:
    """One ``warning: text`` line on stderr, or appended to ``later`` (to be given to :func:`warn` once every
    check that can refuse has passed: a refused input gets its one ``error:`` line alone)."""
    if later is not None:
        later.append(text)
        return
    sys.stderr.write(f"warning: {text}\n")
    sys.stderr.flush()


def pixel_statistics(image, background) -> dict:
    """Robust statistics of a sky-subtracted ``image`` [H, W] (nmgy) and its ``background`` [H, W] (nmgy per
    pixel): ``median`` and ``noise`` (nmgy; module doc) of the finite pixels, ``background`` (median, nmgy)."""
    image = np.asarray(image, np.float64)
    diffs = np.diff(image, axis=1).ravel()
    diffs = diffs[np.isfinite(diffs)]
    values = image[np.isfinite(image)]
    if values.size < 16 or diffs.size < 16:
        return dict(median=np.nan, noise=np.nan, background=float(np.median(background)))
    mad = np.median(np.abs(diffs - np.median(diffs)))
    return dict(
        median=float(np.median(values)),
        noise=float(1.4826 * mad / np.sqrt(2.0)),
        background=float(np.median(background)),
    )


def noise_electrons_per_nmgy(stats: dict) -> float:
    """The gain / calibration (electrons per nmgy) that an image's measured noise implies, when its pixel noise is
    the sky's photon noise (module doc): ``background / noise^2`` of :func:`pixel_statistics`' ``stats``; NaN
    where the noise could not be measured. Read noise and a flat field's variations make it an underestimate (a
    larger noise): the quality flag (:mod:`npejax.cataloging.quality`) is then the more lenient."""
    noise, sky = stats["noise"], stats["background"]
    if not (np.isfinite(noise) and noise > 0 and np.isfinite(sky) and sky > 0):
        return float("nan")
    return float(sky / noise**2)


def expected_noise(background: float, electrons_per_nmgy=ELECTRONS_PER_NMGY) -> tuple[float, float]:
    """(lowest, highest) pixel noise in nmgy of a sky of ``background`` nmgy per pixel for gain / calibration in
    ``electrons_per_nmgy`` (a number or a (low, high) range): ``sqrt(background / e)``."""
    low, high = np.broadcast_to(np.asarray(electrons_per_nmgy, np.float64), (2,))
    return float(np.sqrt(background / high)), float(np.sqrt(background / low))


def noise_factor(noise: float, expected: tuple[float, float]) -> float:
    """How many times ``noise`` lies outside the ``expected`` range: > 1 too noisy, < 1 too quiet, 1 inside."""
    low, high = expected
    return noise / high if noise > high else (noise / low if noise < low else 1.0)


def check_units(header, name: str) -> None:
    """A ``BUNIT`` in ``header`` that is not nanomaggies (DN, counts, electrons, ...): ValueError naming
    ``name``."""
    unit = header.get("BUNIT") if header is not None else None
    if unit is None or not str(unit).strip():
        return
    if str(unit).strip().lower() not in NMGY_UNITS:
        raise ValueError(
            f"{name} has BUNIT = {str(unit).strip()!r}; the network takes images in nanomaggies (an SDSS frame's "
            f"HDU 0 is): convert it (nmgy = DN x calibration), or give {SKIP_FLAG} if BUNIT is wrong"
        )


def check_pixels(
    image, background, name: str, electrons_per_nmgy=ELECTRONS_PER_NMGY, what="--background", later=None
) -> dict:
    """Refuses (ValueError naming ``name``) or warns about (:func:`warn`, into ``later`` if given) an image that
    does not look sky-subtracted and in nmgy against its ``background`` (module doc); returns
    :func:`pixel_statistics`. ``what`` names where the background came from (for the messages)."""
    stats = pixel_statistics(image, background)
    median, noise, sky = stats["median"], stats["noise"], stats["background"]
    if not (np.isfinite(noise) and noise > 0):
        return stats  # a constant image or too few pixels: nothing to measure
    expected = expected_noise(sky, electrons_per_nmgy)
    factor = noise_factor(noise, expected)
    span = f"{expected[0]:.3g}-{expected[1]:.3g} nmgy, the photon noise of {what} {sky:.3g} nmgy/pixel"
    if factor >= REFUSE_NOISE_FACTOR or factor <= 1 / REFUSE_NOISE_FACTOR:
        cause = (
            "is the image in DN, electrons or another unit than nanomaggies (an SDSS frame in DN is ~200 times "
            "too noisy), or is the background too small?"
            if factor > 1
            else "is the image scaled down, a coadd, or the background too large?"
        )
        raise ValueError(
            f"{name}: pixel noise {noise:.3g} (read as nmgy) is {max(factor, 1 / factor):.3g} times "
            f"{'above' if factor > 1 else 'below'} the expected {span}: {cause} (or give {SKIP_FLAG})"
        )
    sigmas = median / noise
    if abs(sigmas) > MAX_MEDIAN_SIGMAS:
        raise ValueError(
            f"{name}: median pixel {median:.3g} nmgy is {sigmas:+.3g} noise sigmas ({noise:.3g} nmgy) from 0: "
            + (
                f"the sky looks left in (the network takes sky-subtracted images with the sky given as {what}, "
                f"here {sky:.3g}): subtract the sky"
                if sigmas > 0
                else "the sky looks subtracted twice (or the image is negated)"
            )
            + f" (or give {SKIP_FLAG})"
        )
    if factor >= WARN_NOISE_FACTOR or factor <= 1 / WARN_NOISE_FACTOR:
        warn(
            f"{name}: pixel noise {noise:.3g} nmgy is {max(factor, 1 / factor):.3g} times "
            f"{'above' if factor > 1 else 'below'} the expected {span}; is {what} right, the image in nmgy?",
            later,
        )
    elif abs(sigmas) > WARN_MEDIAN_SIGMAS:
        warn(
            f"{name}: median pixel {median:.3g} nmgy is {sigmas:+.3g} noise sigmas from 0; the network expects "
            "a sky-subtracted image (median about 0)",
            later,
        )
    return stats


def check_wcs(header, name: str, later: list | None = None) -> float | None:
    """The pixel scale (arcsec per pixel, the mean of the two axes) of the celestial WCS in ``header``, or None
    without one. A singular CD / PC x CDELT matrix is a ValueError naming ``name``; a scale more than
    :data:`SCALE_TOLERANCE` from :data:`PIXEL_SCALE` is one warning line (:func:`warn`, into ``later`` if
    given)."""
    try:
        with io.caught_warnings("ignore"):
            w = wcs_lib.WCS(header, fix=False)
    except wcs_lib.SingularMatrixError:
        w = None
    except Exception:  # noqa: BLE001  (unusable keywords: images.celestial_wcs names them)
        return None
    if w is not None and not w.has_celestial:
        return None
    matrix = None if w is None else np.asarray(w.celestial.pixel_scale_matrix, np.float64)
    if matrix is None or not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) <= 0:
        raise ValueError(
            f"{name}: its WCS matrix (CD, or PC x CDELT) is singular"
            + ("" if matrix is None else f" ({matrix.tolist()} degrees per pixel)")
            + ": RA/Dec would be meaningless; fix the WCS keywords or remove them (no ra/dec columns then)"
        )
    scales = wcs_utils.proj_plane_pixel_scales(w.celestial) * 3600.0
    if np.any(np.abs(scales / PIXEL_SCALE - 1) > SCALE_TOLERANCE):
        shown = "x".join(f"{s:.4g}" for s in scales) if not np.isclose(scales[0], scales[1]) else f"{scales[0]:.4g}"
        warn(
            f"{name}: its WCS pixel scale is {shown} arcsec/pixel, the network's {PIXEL_SCALE} (SDSS): sources "
            f"and PSF look {float(np.mean(scales)) / PIXEL_SCALE:.3g} times smaller to it than they are; resample "
            "the image to 0.396 arcsec/pixel for reliable fluxes and shapes",
            later,
        )
    return float(np.mean(scales))


def check_psf_params(params, where: str) -> np.ndarray:
    """``params`` [6] valid (:func:`npejax.sim.psf.validate_psf_params`) and inside physical ranges (module
    doc); ValueError naming ``where`` (the option or file that gave them) otherwise."""
    params = psf_lib.validate_psf_params(params, where=where)
    low, high = PSF_WIDTH_RANGE
    for name, value in zip(psf_lib.PSF_PARAM_NAMES[:3], params[:3]):
        if not low <= value <= high:
            raise ValueError(
                f"{where}: {name} = {value:g} pixels, expected {low:g} to {high:g} pixels (SDSS r-band PSF widths "
                "are 1-4 pixels; 25 is the PSF's truncation radius)"
            )
    if params[3] > MAX_PSF_BETA:
        raise ValueError(f"{where}: psf_beta = {params[3]:g}, expected 2 < beta <= {MAX_PSF_BETA:g} (SDSS: about 3)")
    for name, value in zip(psf_lib.PSF_PARAM_NAMES[4:], params[4:]):
        if value > MAX_PSF_WEIGHT:
            raise ValueError(
                f"{where}: {name} = {value:g}, expected 0 to {MAX_PSF_WEIGHT:g} (a weight relative to the core "
                "Gaussian's peak; SDSS: below 1)"
            )
    return params
