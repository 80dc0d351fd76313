"""Source Extractor baseline: detection and Kron photometry with ``sep`` on the images the network sees.

This is the catalog a user would otherwise make: classic Source Extractor (through ``sep``, its library
form) run on the same sky-subtracted 80 x 80 images, with the KNOWN background: nothing is estimated
from the image. The background enters only as the per-pixel noise level,

    variance (nmgy^2) = background (nmgy) * nmgy_per_electron,   nmgy_per_electron = calibration / gain,

the sky's Poisson variance in electrons (= sky electrons) converted to nmgy^2 (see :mod:`npejax.sim.render`:
electrons = nmgy * gain / calibration; the noise of the simulated images is N(lambda, lambda) electrons).

Steps per image (Source Extractor's defaults unless said otherwise):

* **Detection** (``sep.extract``): the image is convolved with the 3 x 3 pyramidal kernel
  ``[[1,2,1],[2,4,2],[1,2,1]]`` (SExtractor's ``default.conv``), and a source is a connected group of at
  least ``minarea`` = 5 pixels above ``thresh`` = 1.5 times the per-pixel background sigma
  (``DETECT_THRESH 1.5``, ``DETECT_MINAREA 5``). ``filter_type='conv'`` compares the convolved image with
  ``thresh`` times the unconvolved pixel sigma, as SExtractor does; sep's other mode, ``'matched'``,
  thresholds the matched-filter signal-to-noise instead, so the same ``thresh`` means a much lower cut
  (on pure-noise 80 x 80 images, about 8 false detections per image at 1.5 against none with ``'conv'``).
  Deblending: ``deblend_nthresh`` = 32 levels, ``deblend_cont`` = 0.005 (``DEBLEND_NTHRESH``,
  ``DEBLEND_MINCONT``); cleaning on with ``clean_param`` = 1.0.
* **Position**: ``centroid='windowed'`` (default) reports SExtractor's ``XWIN_IMAGE, YWIN_IMAGE``
  (``sep.winpos`` with Gaussian sigma = 2 FLUX_RADIUS(0.5) / 2.35, as SExtractor picks it), falling back
  to the isophotal barycenter where the windowed iteration fails or wanders more than ``max_shift``
  pixels; ``centroid='isophotal'`` reports the barycenter (``X_IMAGE``). sep puts pixel centres at integer
  coordinates; npejax's arrays put them at half-integers (pixel (i, j) covers [i, i+1) x [j, j+1)), so
  :func:`sep_extract` adds 0.5 to both coordinates, and :func:`sep_catalog`'s table, 0-based pixel centres
  as every npejax table (:mod:`npejax.catalogs`), holds sep's own.
* **Flux**: ``FLUX_AUTO``. The Kron radius r_K (``sep.kron_radius`` within 6 isophotal radii, in units of
  the isophotal ellipse a, b) sets an elliptical aperture with semi-axes ``f a``, ``f b``, where
  f = max(``kron_factor`` r_K, ``min_radius``) (``PHOT_AUTOPARAMS 2.5, 3.5``), summed by
  ``sep.sum_ellipse``. Pixels of other detected objects are excluded from both the Kron radius and the
  sum (sep's segmentation masking). Where the Kron radius is not usable (not finite or not positive, or
  a degenerate isophotal ellipse), the flux is the sum in a circle of ``fallback_radius`` pixels and
  flag bit ``FLAG_CIRCULAR`` is set. The error ``flux_err`` uses the known variance plus the source's
  own Poisson term (gain = electrons per nmgy). For point sources 2.5 r_K is about 3, so the 3.5 floor
  sets the aperture; it misses the far wings of the SDSS PSF: noiseless isolated stars of the synthetic
  bank measure 95-97% of their flux.

Most bright stars it misses sit on the image edge or against a brighter neighbour; its recall, precision and flux
ratio on simulated images and its cost (about 1 ms per image): benchmarks/RESULTS.md, "Measurements behind the code's
defaults".

:func:`sep_catalog` returns an astropy table in the column format of
:func:`npejax.catalogs.prediction_table` (``image``, ``x``, ``y``, ``flux`` in nmgy, ``mag``; no
probability columns) plus ``flux_err`` (nmgy) and ``flag`` (sep's extraction and aperture flags, OR-ed,
plus :data:`FLAG_CIRCULAR`).
"""

from __future__ import annotations

import numpy as np
import sep
from astropy import table as table_lib

from npejax import catalogs as catalog_lib

#: SExtractor's default detection kernel (``default.conv``), sep's default as well.
DEFAULT_KERNEL = np.array([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=np.float32)
#: Flag bit set where the flux came from the circular fallback aperture instead of the Kron ellipse.
FLAG_CIRCULAR = 1 << 15
_KRON_ISOPHOTAL_RADII = 6.0  # SExtractor integrates the Kron radius within 6 isophotal radii

_EXTRA_COLUMNS = {
    "flux_err": "1-sigma flux error (nmgy) from the known background variance and source Poisson noise",
    "flag": "sep extraction/aperture flags OR-ed; bit 15: circular fallback aperture",
}
_COLUMNS = ("image", "x", "y", "flux", "flux_err", "flag")


def nmgy_per_electron(bank, field_id) -> np.ndarray:
    """``calibration / gain`` (nmgy per electron) of bank field(s) ``field_id``."""
    return 1.0 / np.asarray(bank.to_electrons(bank.check_index(field_id)), dtype=np.float64)


_field_nmgy_per_electron = nmgy_per_electron  # sep_catalog's argument shadows the name


def noise_variance(background, nmgy_per_electron) -> np.ndarray:
    """Per-pixel sky noise variance (nmgy^2) of sky-subtracted images with sky ``background`` (nmgy).

    ``background`` [..., H, W]; ``nmgy_per_electron`` a scalar or one value per leading index (e.g. [B]).
    """
    background = np.asarray(background, dtype=np.float64)
    scale = np.asarray(nmgy_per_electron, dtype=np.float64)
    scale = scale.reshape(scale.shape + (1,) * (background.ndim - scale.ndim)) if scale.ndim else scale
    return background * scale


def _as_sep_array(a) -> np.ndarray:
    """C-contiguous native-byte-order float64 copy-if-needed (what sep requires)."""
    return np.ascontiguousarray(np.asarray(a), dtype=np.dtype("=f8"))


def _empty_sources() -> dict[str, np.ndarray]:
    return dict(x=np.zeros(0), y=np.zeros(0), flux=np.zeros(0), flux_err=np.zeros(0), flag=np.zeros(0, np.int32))


def sep_extract(
    image,
    variance,
    *,
    gain: float | None = None,
    thresh: float = 1.5,
    minarea: int = 5,
    deblend_nthresh: int = 32,
    deblend_cont: float = 0.005,
    filter_kernel=DEFAULT_KERNEL,
    filter_type: str = "conv",
    clean: bool = True,
    clean_param: float = 1.0,
    kron_factor: float = 2.5,
    min_radius: float = 3.5,
    fallback_radius: float = 3.5,
    centroid: str = "windowed",
    max_shift: float = 1.0,
) -> dict[str, np.ndarray]:
    """Sources of one sky-subtracted image [H, W] with known per-pixel noise ``variance`` [H, W] (or scalar).

    ``gain`` (data units -> Poisson counts, i.e. electrons per nmgy) adds the source's Poisson noise to
    ``flux_err``; None leaves it out. Pixels whose value is not finite or whose variance is not positive
    and finite are masked. Returns a dict of 1-D numpy arrays ``x``, ``y`` (catalog convention: pixel
    centres at half-integers), ``flux``, ``flux_err`` (data units) and ``flag``; empty when nothing is
    detected (an all-zero image gives nothing). See the module docstring for the method and defaults.
    """
    if centroid not in ("windowed", "isophotal"):
        raise ValueError(f"centroid must be 'windowed' or 'isophotal', got {centroid!r}")
    data = _as_sep_array(image)
    if data.ndim != 2:
        raise ValueError(f"sep_extract: expected one 2-D image, got shape {data.shape}")
    var = np.broadcast_to(_as_sep_array(variance), data.shape)
    mask = ~np.isfinite(data) | ~np.isfinite(var) | (var <= 0)
    if mask.all() or not np.any(data[~mask] > 0):
        return _empty_sources()  # nothing can be above a positive threshold
    data = np.where(mask, 0.0, data)
    var = np.ascontiguousarray(np.where(mask, 1.0, var))
    sep_mask = mask if mask.any() else None
    kernel = None if filter_kernel is None else np.ascontiguousarray(filter_kernel, dtype=np.float32)

    objects, segmap = sep.extract(
        data,
        thresh,
        var=var,
        mask=sep_mask,
        minarea=int(minarea),
        filter_kernel=kernel,
        filter_type=filter_type,
        deblend_nthresh=int(deblend_nthresh),
        deblend_cont=float(deblend_cont),
        clean=clean,
        clean_param=float(clean_param),
        segmentation_map=True,
    )
    n = len(objects)
    if n == 0:
        return _empty_sources()
    segmap = np.ascontiguousarray(segmap, dtype=np.int32)
    seg_id = np.arange(1, n + 1, dtype=np.int32)
    x0, y0 = objects["x"].astype(np.float64), objects["y"].astype(np.float64)
    a, b, theta = (objects[k].astype(np.float64) for k in ("a", "b", "theta"))
    flag = objects["flag"].astype(np.int32)

    ellipse_ok = np.isfinite(a) & np.isfinite(b) & np.isfinite(theta) & (b > 0) & (a >= b)
    ellipse_ok &= np.abs(theta) <= np.pi / 2
    safe_a, safe_b = np.where(ellipse_ok, a, 1.0), np.where(ellipse_ok, b, 1.0)
    safe_theta = np.where(ellipse_ok, theta, 0.0)
    kronrad, kflag = sep.kron_radius(
        data, x0, y0, safe_a, safe_b, safe_theta, _KRON_ISOPHOTAL_RADII, mask=sep_mask, seg_id=seg_id, segmap=segmap
    )
    use_ellipse = ellipse_ok & np.isfinite(kronrad) & (kronrad > 0)
    flag |= np.where(use_ellipse, kflag, 0).astype(np.int32)
    factor = np.maximum(kron_factor * np.where(use_ellipse, kronrad, 1.0), min_radius)

    flux, flux_err = np.zeros(n), np.zeros(n)
    kw = dict(var=var, mask=sep_mask, segmap=segmap, gain=gain, subpix=5)
    if use_ellipse.any():
        i = use_ellipse
        f, e, fl = sep.sum_ellipse(
            data, x0[i], y0[i], safe_a[i], safe_b[i], safe_theta[i], factor[i], seg_id=seg_id[i], **kw
        )
        flux[i], flux_err[i] = f, e
        flag[i] |= fl.astype(np.int32)
    if (~use_ellipse).any():
        i = ~use_ellipse
        f, e, fl = sep.sum_circle(data, x0[i], y0[i], float(fallback_radius), seg_id=seg_id[i], **kw)
        flux[i], flux_err[i] = f, e
        flag[i] |= fl.astype(np.int32) | FLAG_CIRCULAR

    x, y = x0, y0
    if centroid == "windowed":
        rmax = np.where(ellipse_ok, _KRON_ISOPHOTAL_RADII * safe_a, 3.0 * fallback_radius)
        hlr, rflag = sep.flux_radius(data, x0, y0, rmax, 0.5, mask=sep_mask, seg_id=seg_id, segmap=segmap, subpix=5)
        sig = 2.0 * np.where(np.isfinite(hlr) & (hlr > 0), hlr, 1.0) / 2.35
        xw, yw, wflag = sep.winpos(data, x0, y0, sig, mask=sep_mask)
        good = (wflag == 0) & np.isfinite(xw) & np.isfinite(yw) & (np.hypot(xw - x0, yw - y0) <= max_shift)
        x, y = np.where(good, xw, x0), np.where(good, yw, y0)
    return dict(x=x + 0.5, y=y + 0.5, flux=flux, flux_err=flux_err, flag=flag)


def sep_catalog(
    images, background, nmgy_per_electron=None, *, field_id=None, bank=None, image_offset: int = 0, **kwargs
) -> table_lib.Table:
    """Source Extractor catalog of a batch of sky-subtracted images, with the known background.

    Args:
      images: [B, H, W] (or [H, W]) sky-subtracted images in nmgy.
      background: same shape, the sky that was subtracted, in nmgy.
      nmgy_per_electron: calibration / gain, a scalar or [B]; or give ``field_id`` [B] and ``bank`` (a
        :class:`npejax.sim.fields.FieldBank`) and it is looked up there.
      image_offset: added to the batch index in the ``image`` column.
      **kwargs: detection and photometry settings of :func:`sep_extract` (``thresh=1.5``, ``minarea=5``,
        ``deblend_nthresh=32``, ``deblend_cont=0.005``, ``filter_type='conv'``, ``kron_factor=2.5``,
        ``min_radius=3.5``, ``fallback_radius=3.5``, ``centroid='windowed'``, ...).

    Returns:
      An astropy Table, one row per detection ordered by image: ``image``, ``x``, ``y`` (0-based pixel
      centres, x = column: sep's own), ``flux`` (nmgy), ``mag`` (NaN where flux <= 0) as in
      :func:`npejax.catalogs.prediction_table`, plus ``flux_err`` (nmgy) and ``flag``. Empty (zero rows,
      same columns) when nothing is detected.
    """
    images = np.asarray(images)
    background = np.asarray(background)
    if images.ndim == 2:
        images, background = images[None], np.broadcast_to(background, images.shape)[None]
        field_id = None if field_id is None else np.atleast_1d(field_id)
    if images.ndim != 3 or background.shape != images.shape:
        raise ValueError(f"sep_catalog: images {images.shape} and background {background.shape} must both be [B, H, W]")
    bsz = images.shape[0]
    if nmgy_per_electron is None:
        if field_id is None or bank is None:
            raise ValueError("sep_catalog: give nmgy_per_electron, or field_id and bank")
        nmgy_per_electron = _field_nmgy_per_electron(bank, np.asarray(field_id))
    scale = np.broadcast_to(np.asarray(nmgy_per_electron, dtype=np.float64), (bsz,))
    if not np.all(np.isfinite(scale) & (scale > 0)):
        raise ValueError("sep_catalog: nmgy_per_electron must be positive and finite")
    variance = noise_variance(background, scale)

    columns = {key: [] for key in _COLUMNS}
    for i in range(bsz):
        found = sep_extract(images[i], variance[i], gain=1.0 / scale[i], **kwargs)
        columns["image"].append(np.full(len(found["x"]), i + int(image_offset), np.int64))
        for key in _COLUMNS[1:]:
            columns[key].append(found[key])
    merged = {key: np.concatenate(value) if value else np.zeros(0) for key, value in columns.items()}
    table = catalog_lib.prediction_table(merged)
    table["flux_err"] = np.asarray(merged["flux_err"], np.float32)
    table["flag"] = np.asarray(merged["flag"], np.int32)
    for key, description in _EXTRA_COLUMNS.items():
        table[key].description = description
    table.meta["METHOD"] = "sep (Source Extractor) FLUX_AUTO, known background"
    return table


def sep_catalog_batch(batch: dict, bank, image_offset: int = 0, **kwargs) -> table_lib.Table:
    """:func:`sep_catalog` of a simulated batch (``images``, ``background``, ``field_id``) and its bank."""
    return sep_catalog(
        batch["images"], batch["background"], field_id=batch["field_id"], bank=bank, image_offset=image_offset, **kwargs
    )
