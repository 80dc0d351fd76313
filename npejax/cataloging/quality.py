"""A quality flag from the forward model: the predicted catalog re-rendered and compared with the image.

The network's catalog of an image is a claim about what the image holds. Rendering that claim with the image's
own PSF and background (:class:`npejax.sim.render.Renderer`, noiseless) and dividing the difference by the
pixel noise gives residuals in sigma units; where the catalog explains the image they are about N(0, 1), and
what the forward model never drew -- cosmic rays, satellite trails, bleed trails, a PSF other than the one the
network was told -- leaves a residual.

``python -m npejax.predict`` and ``python -m npejax.survey catalog`` add its columns to every catalog by default
(``--noquality``: not; :func:`npejax.cataloging.images.add_quality`, in crops: below). Python API::

    table = predictor.catalog(images, background, psf_params)
    table, per_image = add_quality_columns(table, images, background, psf_params, electrons_per_nmgy,
                                           predictor.config, mask=None)      # whole images (80 x 80)
    table, per_crop = add_crop_quality_columns(table, images, background, psf_params, electrons_per_nmgy,
                                               predictor.config, mask=None)  # any size, in 80 x 80 crops

Inputs: ``images`` [N, H, W] nmgy, sky-subtracted; ``background`` (a number, [H, W] or [N, H, W]) nmgy per
pixel; ``psf_params`` [6] or [N, 6] (s1, s2, sP, beta, b, p0; :mod:`npejax.sim.psf`); ``electrons_per_nmgy``
(a number or [N]; gain / calibration, e.g. :meth:`npejax.sim.fields.FieldBank.to_electrons`, for an SDSS frame its
gain over its nmgy-per-DN calibration); ``mask`` (optional, [N, H, W] bool: pixels a frame's mask flags, left
out of every statistic); the predicted catalog as a table of :data:`npejax.schema.PREDICTION_COLUMNS` (``image``,
``x``, ``y``, ``flux``, ``prob_galaxy``).

**The model image** (:func:`model_images`, nmgy): each detection is drawn at its posterior mode position -- as a
star (the PSF) and, since the network predicts no galaxy shapes (SPEC.md, "Variational family": position, type,
flux), as a galaxy of a fixed shape: a round bulge + disk holding half the flux each (the prior's median
``disk_frac``), each at the prior's median semi-major half-light radius circularized at the prior's median axis
ratio (:func:`galaxy_shape`; 1.03 and 0.52 arcsec with ``configs/default.py``'s prior), at 0.5, 1 and 2 times
that radius (:data:`GALAXY_RADIUS_SCALES`). A detection is offered the star below ``prob_galaxy`` 0.9 and the
galaxies above 0.1. The amplitudes of these profiles are then fitted to the image (non-negative weighted least squares,
:func:`scipy.optimize.nnls`, weights the inverse Poisson variance of the predicted catalog): the flag asks whether
the *detections* (where, star or galaxy) explain the image, not whether the network's fluxes are right -- a
network's flux error on a bright star or a galaxy's unknown size would otherwise dominate the clean images' tail.
The fitted flux over the predicted one is reported per detection (``quality_flux_ratio``). Measured on clean images
of the calibration set: without the fit (the predicted fluxes, one profile per detection, star or galaxy by
``prob_galaxy`` > 0.5) the 99th percentiles of the images' and the detections' chi^2 per pixel were 4.0 and 40 (100
images), against 1.40 and 5.6 with it (1000 images; the tail is heavy: the 99.5th percentiles are 1.90 and 7.6).

**Residuals** (:func:`residuals`): z = (image - model) / sigma per pixel, with

    sigma^2 = (model + background) / electrons_per_nmgy + (MODEL_ERROR_STAR * stars)^2 + (MODEL_ERROR_GALAXY *
    galaxies)^2        (nmgy^2)

the first term the Poisson variance of the expected counts (electrons) in nmgy, the others the model's own error
(star and galaxy parts of the model image, nmgy): the network's position errors and the PSF fit for stars, the
unmodelled ellipticity and profile for galaxies. Masked and non-finite pixels are NaN in z and left out (of the
fit too).

**Statistics and flags** (:func:`detection_statistics`, :func:`image_statistics`):

* per detection, in the aperture of radius ``APERTURE_FWHM`` x the PSF's FWHM around it: ``quality_chi2`` (mean
  z^2 over its unmasked pixels, chi^2 per pixel), ``quality_maxres`` (largest |z|, sigma); ``quality_flux_ratio``
  (fitted over predicted flux) and ``quality_flag`` (:func:`detection_flags`: ``quality_chi2`` above
  :attr:`Thresholds.detection`, or ``quality_flux_ratio`` below :attr:`Thresholds.flux_ratio` -- a detection
  where the image holds little light, which the fit sets to near zero and the residual alone would not show);
* per image: ``chi2`` (mean z^2 over its unmasked pixels), ``frac5`` (fraction of them with |z| > 5) and ``flag``
  (``chi2`` above :attr:`Thresholds.image`). The mean over the image did as well as or better than the largest
  local mean (over 5, 9 or 15 pixel windows) on every injected case at the same 1% clean rate (500 + 100 images
  each; so the simplest is kept).

The thresholds (:data:`THRESHOLDS`) are calibrated by ``benchmarks/quality_flag.py`` on 1000 clean simulated
images (the shipped ``cpu`` network, 80 x 80 images of its config, the ``val`` split's seed): the 99.5th
percentile of the images' chi2, the 99.75th of the detections' chi2 and the 0.25th of their flux ratio, so that
at most 1% of clean images and of clean detections are flagged with the calibration's sampling error (0.5% and
0.5% measured on another 1000, the ``test`` split's seed; at the 99th percentiles it was 1.2%:
benchmarks/RESULTS.md, "A quality flag from the forward model", which gives the recall at both). They hold for
images of that size and that network (a network trained by a user gets the same thresholds; its own errors
may flag more or fewer clean detections: rerun the benchmark to calibrate them); the per-image chi^2 is a mean
over the image, so over a whole frame a local artifact is diluted: hence the crops below. The model-error
fractions and the aperture are set by hand (not fitted); the thresholds absorb them.

**Images of any size** (:func:`crop_quality`, :func:`add_crop_quality_columns`; what the commands use): the
image is cut into cores of :data:`CROP_SIZE` (80) pixels a side, ``ceil(side / 80)`` per axis evenly spaced from
edge to edge (:func:`crop_starts`; neighbours overlap by less than a core); each core is modelled and fitted
with every detection within :data:`CROP_MARGIN` (16) pixels of it, so light from detections just outside is
drawn, and its statistic (``image_quality_chi2``) is over the core alone; each detection's statistics come from
the one crop whose core holds it (the nearest core centre: :func:`crop_of`). On a 240 x 240 simulated image
(39 sources) against the whole-image statistics, a 16-pixel margin changed the detections' ``quality_chi2`` by
at most 0.06% and no flag; without a margin, a crop beside a bright star outside it read chi2 10 (flagged). An
image of 80 x 80 or smaller is one crop without margin: the numbers of :func:`add_quality_columns`.

Table columns added (:data:`npejax.schema.QUALITY_COLUMNS`): ``quality_chi2``, ``quality_maxres``,
``quality_flag``, ``quality_flux_ratio`` per detection and ``image_quality_chi2``, ``image_quality_flag`` (its
image's). The per-image table (:data:`npejax.schema.QUALITY_IMAGE_COLUMNS`) holds every image, with or without
detections. The table's meta records the thresholds and settings (``QTHRDET``,
``QTHRIMG``, ``QTHRRAT``, ``QAPFWHM``, ``QERRSTAR``, ``QERRGAL``).

Cost: up to four renders per detection (k-space stars and galaxies, :mod:`npejax.sim.render`) and a small fit per
image; about 16 ms per 80 x 80 image (``benchmarks/quality_flag.py`` reports it). The profiles of an image are held
as dense [K, H, W] arrays, so :func:`quality` wants small images; :func:`crop_quality` holds one crop's (112 x
112 pixels with its margin) at a time: a 1000 x 1000 image (530 detections, 169 crops) took about 1.7 s of CPU
(``python -m npejax.predict --pretrained cpu``: 10.9 s of CPU with the flag, 9.2 s without).
"""

from __future__ import annotations

import collections
import dataclasses
import math

import numpy as np
import threadpoolctl
from astropy import table as table_lib
from scipy import optimize, stats

from npejax import catalogs as catalog_lib
from npejax import schema
from npejax.sim import fields as fields_lib
from npejax.sim import psf as psf_lib
from npejax.sim import render as render_lib

MODEL_ERROR_STAR = 0.05  # model error of a star's pixels, fraction of the model (flux and position errors)
MODEL_ERROR_GALAXY = 0.3  # of a galaxy's pixels (its shape is not predicted: a fixed round profile is drawn)
APERTURE_FWHM = 2.0  # detection aperture radius, in FWHM of the image's PSF
STAR_MAX_PROB_GALAXY = 0.9  # a detection may be fitted as a star below this prob_galaxy
GALAXY_MIN_PROB_GALAXY = 0.1  # and as a galaxy above this one (between the two: both, the fit decides)
GALAXY_RADIUS_SCALES = (0.5, 1.0, 2.0)  # a galaxy is fitted as a mix of the fixed shape at these radius scales
OUTLIER_SIGMA = 5.0  # frac5: pixels beyond this many sigma


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Flag thresholds: ``detection`` on ``quality_chi2`` and ``image`` on an image's chi2 (chi^2 per pixel, flagged
    above), ``flux_ratio`` on ``quality_flux_ratio`` (flagged below: the image holds much less light there than the
    network claims)."""

    detection: float
    image: float
    flux_ratio: float

    def __post_init__(self):
        for name in ("detection", "image", "flux_ratio"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"Thresholds.{name} {value!r}: expected a positive number")


# Calibrated on 1000 clean 80 x 80 images (the val split's seed) with the shipped cpu network: the "thresholds" of
# python benchmarks/quality_flag.py (percentiles 99.5, 99.75 and 0.25: 1.902, 14.68, 0.283, rounded away)
THRESHOLDS = Thresholds(detection=14.7, image=1.91, flux_ratio=0.28)


def galaxy_shape(prior) -> dict[str, float]:
    """The fixed galaxy shape drawn for a detected galaxy, from ``prior`` (``config.prior``: ``disk_a``,
    ``bulge_a`` gamma (shape, loc, scale) in arcsec, ``min_axis_ratio``): half the flux in each of a round disk and
    bulge, each at the median semi-major half-light radius times sqrt(median axis ratio) (the prior draws
    ``disk_frac`` and the axis ratios uniformly). Keys of :data:`npejax.schema.SHAPE_KEYS`."""
    q = (float(prior.min_axis_ratio) + 1.0) / 2
    radius = {}
    for key in ("disk_a", "bulge_a"):
        shape, loc, scale = (float(v) for v in prior[key])
        radius[key] = float(stats.gamma(shape, loc=loc, scale=scale).median())
    return dict(
        disk_frac=0.5,
        angle=0.0,
        disk_q=1.0,
        bulge_q=1.0,
        disk_a=radius["disk_a"] * math.sqrt(q),
        bulge_a=radius["bulge_a"] * math.sqrt(q),
    )


def _check_arrays(images, background, psf_params, electrons_per_nmgy, mask):
    images = np.asarray(images, np.float64)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3 or min(images.shape) == 0:
        raise ValueError(f"images: expected [N, H, W] nmgy, got shape {images.shape}")
    n = images.shape[0]
    try:
        background = np.broadcast_to(np.asarray(background, np.float64), images.shape)
    except ValueError:
        raise ValueError(
            f"background of shape {np.shape(background)}: expected a number, [H, W] or [N, H, W] (nmgy) "
            f"for images {images.shape}"
        ) from None
    if not np.all(np.isfinite(background) & (background > 0)):
        raise ValueError(f"background: expected positive finite nmgy per pixel, min {np.nanmin(background):g}")
    try:
        psf_params = np.broadcast_to(np.asarray(psf_params, np.float64), (n, 6))
    except ValueError:
        raise ValueError(f"psf_params of shape {np.shape(psf_params)}: expected [6] or [N, 6]") from None
    psf_lib.validate_psf_params(psf_params, where="psf_params")
    to_e = np.broadcast_to(np.asarray(electrons_per_nmgy, np.float64), (n,))
    if not np.all(np.isfinite(to_e) & (to_e > 0)):
        raise ValueError(f"electrons_per_nmgy: expected positive finite numbers (gain / calibration), got {to_e}")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != images.shape or mask.dtype != bool:
            raise ValueError(f"mask: expected bool {images.shape}, got {mask.dtype} {mask.shape}")
    return images, background, psf_params, to_e, mask


def _render_config(config) -> render_lib.RenderConfig:
    """The renderer settings of ``config`` (the network's config: its ``render`` section)."""
    return render_lib.RenderConfig.from_config(config.render)


TABLE_COLUMNS = ("image", "x", "y", "flux", "prob_galaxy")  # what the re-render reads of a predicted catalog


def _check_columns(table) -> None:
    """ValueError naming the first of :data:`TABLE_COLUMNS` that ``table`` lacks."""
    for column in TABLE_COLUMNS:
        if column not in table.colnames:
            raise ValueError(
                f"table: no column {column!r}; expected a predicted catalog (npejax.schema.PREDICTION_COLUMNS)"
            )


def _image_index(table, n: int, image_offset: int) -> np.ndarray:
    """``table["image"] - image_offset``, checked to index the ``n`` images given."""
    index = np.asarray(table["image"], np.int64).reshape(-1) - image_offset
    if index.size and (index.min() < 0 or index.max() >= n):
        raise ValueError(
            f"table column image: values {index.min() + image_offset}..{index.max() + image_offset} outside the "
            f"{n} images given (image_offset {image_offset})"
        )
    return index


def _renderer(images_shape, psf_params, to_e, background, config):
    """(renderer, field of each image): a bank of one field per distinct (PSF, electrons per nmgy) of the images
    (the renderer caches its tables per field); its sky, which only sets where bright stars switch to the real-space
    drawing, is the lowest background of the images that share it."""
    n, h, w = images_shape
    keys = np.concatenate([psf_params, to_e[:, None]], axis=1)
    unique, field = np.unique(keys, axis=0, return_inverse=True)
    field = field.ravel()
    sky = np.array([(background[field == k] * to_e[field == k][:, None, None]).min() for k in range(len(unique))])
    bank = fields_lib.FieldBank(
        names=[f"image-field-{k}" for k in range(len(unique))],
        psf_params=unique[:, :6],
        sky_grid=sky[:, None, None],
        gain=unique[:, 6],
        calibration=np.ones(len(unique)),
        frame_shape=(h, w),
        source="npejax.cataloging.quality",
    )
    return render_lib.Renderer(bank, (h, w), _render_config(config)), field


def _profiles(renderer, field: int, to_e: float, x, y, flux, prob_galaxy, shape):
    """(columns [K, H, W] nmgy, owner [K], is_galaxy [K]): each detection drawn at its predicted flux -- as a star
    when ``prob_galaxy`` < :data:`STAR_MAX_PROB_GALAXY`, as a galaxy once per radius of
    :data:`GALAXY_RADIUS_SCALES` when it is > :data:`GALAXY_MIN_PROB_GALAXY` -- with the detection (0..len(x)-1)
    each column belongs to and whether it is a galaxy's."""
    columns, owner, kinds = [], [], []
    for d in range(len(x)):
        variants = [(False, 1.0)] if prob_galaxy[d] < STAR_MAX_PROB_GALAXY else []
        if prob_galaxy[d] > GALAXY_MIN_PROB_GALAXY:
            variants += [(True, scale) for scale in GALAXY_RADIUS_SCALES]
        for is_galaxy, scale in variants:
            catalog = dict(n_sources=1, x=x[d : d + 1], y=y[d : d + 1], flux=flux[d : d + 1], is_galaxy=[is_galaxy])
            for key, value in shape.items():
                catalog[key] = np.full(1, value * scale if key in ("disk_a", "bulge_a") else value)
            columns.append(renderer.source_electrons(catalog, field) / to_e)
            owner.append(d)
            kinds.append(is_galaxy)
    return np.asarray(columns).reshape(-1, *renderer.image_shape), np.asarray(owner, np.int64), np.asarray(kinds)


def _fit(image, columns, weight) -> np.ndarray | None:
    """Non-negative amplitudes a [K] minimizing sum(weight * (image - a . columns)^2) over the pixels the columns
    reach (scipy.optimize.nnls); weight 0 leaves a pixel out. None when no pixel is left."""
    reach = (np.abs(columns).sum(axis=0) > 0) & (weight > 0)
    if not reach.any():
        return None
    sw = np.sqrt(weight[reach])
    amplitude, _ = optimize.nnls(columns[:, reach].T * sw[:, None], image[reach] * sw)
    return amplitude


def model_images(images, background, psf_params, electrons_per_nmgy, table, config, mask=None, image_offset=0):
    """(stars, galaxies, flux_ratio): the model images [N, H, W] (nmgy) of ``table``'s detections, split into the
    light of the rows drawn as stars and as galaxies, and per row the fitted flux over the predicted one (see the
    module doc); ``config`` the network's config (its ``render`` and ``prior`` sections). ``table["image"] -
    image_offset`` indexes the images. Arrays as :func:`quality` checks them."""
    n, h, w = images.shape
    renderer, field = _renderer(images.shape, psf_params, electrons_per_nmgy, background, config)
    shape = galaxy_shape(config.prior)
    index = _image_index(table, n, image_offset)
    x, y = catalog_lib.array_xy(table)  # pixels from the image edge, as the renderer takes them
    flux = np.asarray(table["flux"], np.float64)
    prob_galaxy = np.asarray(table["prob_galaxy"], np.float64)
    stars, galaxies = np.zeros((n, h, w)), np.zeros((n, h, w))
    ratio = np.full(len(index), np.nan)
    with threadpoolctl.threadpool_limits(1):  # the renderer's small matrix products
        for i in range(n):
            rows = np.flatnonzero(index == i)
            stars[i], galaxies[i], ratio[rows] = _model_image(
                renderer,
                int(field[i]),
                float(electrons_per_nmgy[i]),
                images[i],
                background[i],
                None if mask is None else mask[i],
                x[rows],
                y[rows],
                flux[rows],
                prob_galaxy[rows],
                shape,
            )
    return stars, galaxies, ratio


def _model_image(renderer, field, to_e, image, background, mask, x, y, flux, prob_galaxy, shape):
    """(stars, galaxies, flux_ratio) of one image [H, W] (:func:`model_images`) and its detections (``x``, ``y``
    pixels from the image edge, ``flux``, ``prob_galaxy``; those of flux <= 0 are not drawn, ratio NaN)."""
    stars, galaxies = np.zeros(renderer.image_shape), np.zeros(renderer.image_shape)
    ratio = np.full(len(x), np.nan)
    rows = np.flatnonzero(flux > 0)
    if not rows.size:
        return stars, galaxies, ratio
    columns, owner, galaxy_column = _profiles(
        renderer, field, to_e, x[rows], y[rows], flux[rows], prob_galaxy[rows], shape
    )
    # weights: the inverse Poisson variance of the predicted catalog's expected counts (nmgy^-2)
    weight = to_e / np.maximum(columns.sum(axis=0) + background, 1e-12)
    usable = np.isfinite(image) if mask is None else np.isfinite(image) & ~mask
    amplitude = _fit(np.where(usable, image, 0.0), columns, np.where(usable, weight, 0.0))
    if amplitude is None:  # every pixel the detections reach is masked: nothing to compare (ratio NaN)
        return stars, galaxies, ratio
    fitted = amplitude[:, None, None] * columns
    stars = fitted[~galaxy_column].sum(axis=0)
    galaxies = fitted[galaxy_column].sum(axis=0)
    ratio[rows] = np.bincount(owner, weights=amplitude, minlength=rows.size)
    return stars, galaxies, ratio


def residuals(images, stars, galaxies, background, electrons_per_nmgy, mask=None) -> np.ndarray:
    """z = (image - model) / sigma [N, H, W] (sigma units; the module doc's sigma); NaN at masked or non-finite
    pixels. All inputs in nmgy."""
    to_e = np.broadcast_to(np.asarray(electrons_per_nmgy, np.float64), (len(images),))[:, None, None]
    model = stars + galaxies
    variance = np.maximum(model + background, 0.0) / to_e
    variance = variance + (MODEL_ERROR_STAR * stars) ** 2 + (MODEL_ERROR_GALAXY * galaxies) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (images - model) / np.sqrt(variance)
    bad = ~np.isfinite(z)
    if mask is not None:
        bad |= mask
    return np.where(bad, np.nan, z)


def image_statistics(z: np.ndarray, thresholds: Thresholds = THRESHOLDS) -> dict[str, np.ndarray]:
    """Per image of z [N, H, W]: ``chi2`` (mean z^2 over finite pixels), ``frac5`` (fraction beyond
    :data:`OUTLIER_SIGMA`), ``pixels`` (finite pixels) and ``flag`` (chi2 > ``thresholds.image``)."""
    finite = np.isfinite(z)
    pixels = finite.sum(axis=(1, 2))
    z2 = np.where(finite, z, 0.0) ** 2
    with np.errstate(invalid="ignore"):
        chi2 = z2.sum(axis=(1, 2)) / pixels
        frac5 = (z2 > OUTLIER_SIGMA**2).sum(axis=(1, 2)) / pixels
    return dict(chi2=chi2, frac5=frac5, pixels=pixels, flag=chi2 > thresholds.image)


def detection_statistics(z: np.ndarray, image, x, y, fwhm) -> dict[str, np.ndarray]:
    """Per detection (``image`` index into z, ``x``, ``y`` pixels from the image edge: a table's through
    :func:`npejax.catalogs.array_xy`): ``chi2`` (mean z^2) and ``maxres`` (max |z|)
    over the finite pixels whose centres lie within ``APERTURE_FWHM * fwhm[image]`` pixels; NaN where the aperture
    holds no finite pixel."""
    n, h, w = z.shape
    image, x, y = np.asarray(image, np.int64), np.asarray(x, np.float64), np.asarray(y, np.float64)
    chi2, maxres = np.full(image.size, np.nan), np.full(image.size, np.nan)
    radius = APERTURE_FWHM * np.asarray(fwhm, np.float64)[image]
    for d in range(image.size):
        r = radius[d]
        r0, r1 = max(int(math.floor(y[d] - r)), 0), min(int(math.ceil(y[d] + r)) + 1, h)
        c0, c1 = max(int(math.floor(x[d] - r)), 0), min(int(math.ceil(x[d] + r)) + 1, w)
        if r0 >= r1 or c0 >= c1:
            continue
        patch = z[image[d], r0:r1, c0:c1]
        dy = np.arange(r0, r1)[:, None] + 0.5 - y[d]
        dx = np.arange(c0, c1)[None, :] + 0.5 - x[d]
        values = patch[(dy**2 + dx**2 <= r * r) & np.isfinite(patch)]
        if values.size:
            chi2[d], maxres[d] = float(np.mean(values**2)), float(np.max(np.abs(values)))
    return dict(chi2=chi2, maxres=maxres)


def detection_flags(chi2, flux_ratio, thresholds: Thresholds = THRESHOLDS) -> np.ndarray:
    """``chi2 > thresholds.detection`` or ``flux_ratio < thresholds.flux_ratio`` (NaN compares false)."""
    chi2, flux_ratio = np.asarray(chi2, np.float64), np.asarray(flux_ratio, np.float64)
    with np.errstate(invalid="ignore"):
        return (chi2 > thresholds.detection) | (flux_ratio < thresholds.flux_ratio)


def psf_fwhm(psf_params, trunc_pixels: float) -> np.ndarray:
    """FWHM in pixels of each row of ``psf_params`` [N, 6] (:func:`npejax.sim.psf.fwhm_pixels`)."""
    psf_params = np.asarray(psf_params, np.float64).reshape(-1, 6)
    unique, inverse = np.unique(psf_params, axis=0, return_inverse=True)
    return np.array([psf_lib.fwhm_pixels(p, trunc_pixels) for p in unique])[inverse.ravel()]


def quality(
    table,
    images,
    background,
    psf_params,
    electrons_per_nmgy,
    config,
    mask=None,
    thresholds: Thresholds = THRESHOLDS,
    image_offset: int = 0,
) -> tuple[dict, dict]:
    """(per-detection statistics, per-image statistics) of ``table``'s rows against ``images`` (see the module
    doc; arrays in table row order and image order). ``image_offset``: the ``image`` value of ``images[0]``."""
    images, background, psf_params, to_e, mask = _check_arrays(images, background, psf_params, electrons_per_nmgy, mask)
    _check_columns(table)
    stars, galaxies, ratio = model_images(images, background, psf_params, to_e, table, config, mask, image_offset)
    z = residuals(images, stars, galaxies, background, to_e, mask)
    fwhm = psf_fwhm(psf_params, _render_config(config).psf_trunc_pixels)
    per_image = image_statistics(z, thresholds)
    index = _image_index(table, len(images), image_offset)
    per_detection = detection_statistics(z, index, *catalog_lib.array_xy(table), fwhm)
    per_detection["flux_ratio"] = ratio
    per_detection["flag"] = detection_flags(per_detection["chi2"], ratio, thresholds)
    return per_detection, per_image


def set_quality_columns(table, det: dict, image_chi2, image_flag, thresholds: Thresholds) -> None:
    """Sets the :data:`npejax.schema.QUALITY_COLUMNS` of ``table`` (per-detection statistics ``det``, each row's
    image or crop statistic) and the meta of the thresholds and settings."""
    values = {
        "quality_chi2": det["chi2"].astype(np.float32),
        "quality_maxres": det["maxres"].astype(np.float32),
        "quality_flag": np.asarray(det["flag"], bool),
        "quality_flux_ratio": det["flux_ratio"].astype(np.float32),
        "image_quality_chi2": np.asarray(image_chi2).astype(np.float32),
        "image_quality_flag": np.asarray(image_flag, bool),
    }
    for name, value in values.items():
        table[name] = value
        table[name].unit, table[name].description = schema.QUALITY_COLUMNS[name]
    table.meta.update(
        QTHRDET=thresholds.detection,
        QTHRIMG=thresholds.image,
        QTHRRAT=thresholds.flux_ratio,
        QAPFWHM=APERTURE_FWHM,
        QERRSTAR=MODEL_ERROR_STAR,
        QERRGAL=MODEL_ERROR_GALAXY,
    )


def add_quality_columns(
    table,
    images,
    background,
    psf_params,
    electrons_per_nmgy,
    config,
    mask=None,
    thresholds: Thresholds = THRESHOLDS,
    image_offset: int = 0,
):
    """(table with the quality columns added, per-image table): see the module doc. ``table`` is a predicted
    catalog of ``images`` (its ``image`` column minus ``image_offset`` indexes them); it is changed in place and
    returned. ``config``: the network's config (``Predictor.config``; its ``render`` and ``prior``)."""
    det, img = quality(
        table, images, background, psf_params, electrons_per_nmgy, config, mask, thresholds, image_offset
    )
    index = np.asarray(table["image"], np.int64) - image_offset
    set_quality_columns(table, det, img["chi2"][index], img["flag"][index], thresholds)
    n = len(img["chi2"])
    per_image = table_lib.Table()
    per_image["image"] = np.arange(n, dtype=np.int64) + image_offset
    per_image["n_detections"] = np.bincount(index, minlength=n).astype(np.int64)
    per_image["quality_chi2"] = img["chi2"].astype(np.float32)
    per_image["quality_frac5"] = img["frac5"].astype(np.float32)
    per_image["quality_pixels"] = img["pixels"].astype(np.int64)
    per_image["quality_flag"] = img["flag"]
    for name in per_image.colnames:
        per_image[name].unit, per_image[name].description = schema.QUALITY_IMAGE_COLUMNS[name]
    per_image.meta.update(QTHRIMG=thresholds.image)
    return table, per_image


# --- images of any size: the statistics in crops of the calibration size ------------------------------------

CROP_SIZE = 80  # pixels: the side of the calibration images (THRESHOLDS.image holds for a mean over so many)
CROP_MARGIN = 16  # pixels around a crop whose detections are modelled too (their light reaches the crop)


def crop_starts(size: int, crop: int = CROP_SIZE) -> tuple[np.ndarray, int]:
    """(first pixels of the crops' cores along an axis of ``size`` pixels, the cores' side): one core of the whole
    axis when ``size`` <= ``crop``, else ``ceil(size / crop)`` cores of ``crop`` pixels evenly spaced from 0 to
    ``size - crop`` (neighbours overlap by less than a core; their union is the axis)."""
    if size <= crop:
        return np.zeros(1, np.int64), int(size)
    n = math.ceil(size / crop)
    return np.round(np.linspace(0, size - crop, n)).astype(np.int64), int(crop)


def crop_of(position, starts: np.ndarray, side: int) -> np.ndarray:
    """Index of the core (of :func:`crop_starts`) whose centre is nearest to each ``position`` (pixels from the
    edge along that axis): a core that holds it, since neighbouring cores overlap or touch."""
    centres = starts + side / 2
    midpoints = (centres[1:] + centres[:-1]) / 2
    return np.searchsorted(midpoints, np.asarray(position, np.float64), side="right")


CROP_KEYS = ("image", "row", "col", "rows", "cols", "chi2", "frac5", "pixels", "flag")  # and n_detections, skipped


def crop_quality(
    table,
    images,
    background,
    psf_params,
    electrons_per_nmgy,
    config,
    mask=None,
    thresholds: Thresholds = THRESHOLDS,
    image_offset: int = 0,
    crop: int = CROP_SIZE,
    margin: int = CROP_MARGIN,
    max_detections: int | None = None,
) -> tuple[dict, dict]:
    """(per-detection statistics, per-crop statistics) of ``table``'s rows against ``images`` of any size, in crops
    whose cores are the calibration's ``crop`` x ``crop`` pixels (:func:`crop_starts`; arguments as
    :func:`quality`).

    Each crop is modelled over its core and ``margin`` pixels around it (:func:`model_images` of the detections
    there: light from detections just outside the core is drawn and fitted too); its statistics
    (:func:`image_statistics`) are over its core alone, and each detection's (:func:`detection_statistics`, the
    fitted flux ratio, the flag) are those of the crop whose core holds it (:func:`crop_of`): every detection is
    in exactly one. An image of ``crop`` x ``crop`` pixels or smaller is one crop with no margin: the numbers of
    :func:`quality`. Per detection: ``chi2``, ``maxres``, ``flux_ratio``, ``flag`` and ``crop`` (its crop's row in
    the per-crop arrays); per crop: ``image`` (index into ``images``), ``row``, ``col`` (its core's first pixel),
    ``rows``, ``cols`` (its core's size), ``chi2``, ``frac5``, ``pixels``, ``flag``, ``n_detections``,
    ``skipped``. Memory: the profiles of one crop at a time. ``max_detections``: a crop whose modelled window holds
    more detections is skipped (NaN statistics, no flag, ``skipped``): a catalog with a detection in most tiles
    (an untrained network) would cost a fit of thousands of profiles per crop."""
    images, background, psf_params, to_e, mask = _check_arrays(images, background, psf_params, electrons_per_nmgy, mask)
    _check_columns(table)
    n, h, w = images.shape
    index = _image_index(table, n, image_offset)
    x, y = catalog_lib.array_xy(table)
    flux = np.asarray(table["flux"], np.float64)
    prob_galaxy = np.asarray(table["prob_galaxy"], np.float64)
    fwhm = psf_fwhm(psf_params, _render_config(config).psf_trunc_pixels)
    shape = galaxy_shape(config.prior)
    row_starts, rows_side = crop_starts(h, crop)
    col_starts, cols_side = crop_starts(w, crop)
    crop_row = crop_of(y, row_starts, rows_side)
    crop_col = crop_of(x, col_starts, cols_side)
    det = dict(
        chi2=np.full(len(index), np.nan),
        maxres=np.full(len(index), np.nan),
        flux_ratio=np.full(len(index), np.nan),
        crop=np.zeros(len(index), np.int64),
    )
    crops = collections.defaultdict(list)
    with threadpoolctl.threadpool_limits(1):  # the renderer's small matrix products
        for i in range(n):
            renderers = {}  # one per crop shape; the sky that picks the bright-star drawing is the whole image's
            mine = index == i
            for a, r0 in enumerate(row_starts):
                for b, c0 in enumerate(col_starts):
                    r1, c1 = r0 + rows_side, c0 + cols_side
                    e0, e1 = max(r0 - margin, 0), min(r1 + margin, h)  # the modelled window
                    f0, f1 = max(c0 - margin, 0), min(c1 + margin, w)
                    key = (e1 - e0, f1 - f0)
                    if key not in renderers:
                        renderers[key] = _renderer(
                            (1, *key), psf_params[i : i + 1], to_e[i : i + 1], background[i : i + 1], config
                        )[0]
                    inside = np.flatnonzero(mine & (y >= e0) & (y < e1) & (x >= f0) & (x < f1))
                    held = (crop_row[inside] == a) & (crop_col[inside] == b)
                    if max_detections is not None and inside.size > max_detections:
                        det["crop"][inside[held]] = len(crops["image"])
                        for name, value in zip(CROP_KEYS, (i, r0, c0, rows_side, cols_side, np.nan, np.nan, 0, False)):
                            crops[name].append(value)
                        crops["n_detections"].append(int(held.sum()))
                        crops["skipped"].append(True)
                        continue
                    window = (slice(e0, e1), slice(f0, f1))
                    crop_mask = None if mask is None else mask[i][window]
                    stars, galaxies, ratio = _model_image(
                        renderers[key],
                        0,
                        float(to_e[i]),
                        images[i][window],
                        background[i][window],
                        crop_mask,
                        x[inside] - f0,
                        y[inside] - e0,
                        flux[inside],
                        prob_galaxy[inside],
                        shape,
                    )
                    z = residuals(
                        images[i][window][None],
                        stars[None],
                        galaxies[None],
                        background[i][window][None],
                        to_e[i : i + 1],
                        None if crop_mask is None else crop_mask[None],
                    )
                    core = np.full(z.shape, np.nan)
                    core[:, r0 - e0 : r1 - e0, c0 - f0 : c1 - f0] = z[:, r0 - e0 : r1 - e0, c0 - f0 : c1 - f0]
                    stats = image_statistics(core, thresholds)
                    own = inside[held]
                    found = detection_statistics(
                        z, np.zeros(own.size, np.int64), x[own] - f0, y[own] - e0, fwhm[i : i + 1]
                    )
                    det["chi2"][own], det["maxres"][own] = found["chi2"], found["maxres"]
                    det["flux_ratio"][own] = ratio[held]
                    det["crop"][own] = len(crops["image"])
                    values = (
                        i,
                        r0,
                        c0,
                        rows_side,
                        cols_side,
                        *(stats[k][0] for k in ("chi2", "frac5", "pixels", "flag")),
                    )
                    for name, value in zip(CROP_KEYS, values):
                        crops[name].append(value)
                    crops["n_detections"].append(own.size)
                    crops["skipped"].append(False)
    det["flag"] = detection_flags(det["chi2"], det["flux_ratio"], thresholds)
    per_crop = {name: np.asarray(values) for name, values in crops.items()}
    return det, per_crop


def add_crop_quality_columns(
    table,
    images,
    background,
    psf_params,
    electrons_per_nmgy,
    config,
    mask=None,
    thresholds: Thresholds = THRESHOLDS,
    image_offset: int = 0,
    crop: int = CROP_SIZE,
    margin: int = CROP_MARGIN,
):
    """(table with the quality columns added, per-crop statistics): :func:`add_quality_columns` for images of any
    size, by :func:`crop_quality` -- ``image_quality_chi2`` and ``image_quality_flag`` are those of the ``crop`` x
    ``crop`` crop whose core holds the detection (the whole image for images of that size or smaller, whose numbers
    are :func:`add_quality_columns`'). ``table`` is changed in place and returned; its meta gains ``QCROP`` and
    ``QMARGIN`` (pixels) besides the thresholds. The per-crop dict's ``image`` is an index into ``images``."""
    det, crops = crop_quality(
        table, images, background, psf_params, electrons_per_nmgy, config, mask, thresholds, image_offset, crop, margin
    )
    set_quality_columns(table, det, crops["chi2"][det["crop"]], crops["flag"][det["crop"]], thresholds)
    table.meta.update(QCROP=int(crop), QMARGIN=int(margin))
    return table, crops
