"""The contracts every part of npejax shares: catalogs, batches, splits and metric names.

This module is the one place where the dicts that travel between simulation, datasets, training,
prediction and evaluation are named, with their keys, shapes and units (SPEC.md "Catalog and coordinate
conventions"). It imports nothing from npejax, so every subpackage can use it.

Conventions: positions in arrays in pixels from the image edge, ``x`` = column and ``y`` = row, pixel (i, j)
covering [i, i+1) x [j, j+1) (tables: 0-based pixel centres, section 5); fluxes in nanomaggies (nmgy);
``mag`` = 22.5 - 2.5 log10(flux / nmgy) (SDSS r). B = images in a batch, M = ``max_sources``, H x W = image
size, t = ``tile_size``, Th = H / t, Tw = W / t.

1. **Full catalog** (:data:`CATALOG_KEYS`, drawn by :class:`npejax.sim.prior.CatalogPrior`), padded to M:

   ============  ==========  ==========  ===========================================================
   key           shape       dtype       meaning
   ============  ==========  ==========  ===========================================================
   n_sources     [B]         int32       sources in the image; entries at index >= n_sources are 0
   x, y          [B, M]      float32     position, pixels
   flux          [B, M]      float32     r-band flux, nmgy
   is_galaxy     [B, M]      bool
   disk_frac     [B, M]      float32     fraction of a galaxy's flux in its exponential disk (0: star)
   angle         [B, M]      float32     position angle, radians in [0, pi), counterclockwise from +x
   disk_q        [B, M]      float32     disk axis ratio b/a
   bulge_q       [B, M]      float32     bulge axis ratio b/a
   disk_a        [B, M]      float32     disk semi-major half-light radius, arcsec
   bulge_a       [B, M]      float32     bulge semi-major half-light radius, arcsec
   ============  ==========  ==========  ===========================================================

2. **Tile catalog** (:data:`TILE_KEYS`, :func:`npejax.sim.prior.tile_catalog`): at most one source per
   t x t tile, the brightest; the training target.

   ===============  ===============  ==========================================================
   tile_has_source  [B, Th, Tw]      bool
   tile_locs        [B, Th, Tw, 2]   (y, x) inside the tile in units of the tile side, [0, 1)
   tile_flux        [B, Th, Tw]      nmgy (0 where empty)
   tile_is_galaxy   [B, Th, Tw]      bool
   tile_source      [B, Th, Tw]      int32 index into the full catalog, -1 where empty
   n_dropped        [B]              int32 sources the one-per-tile rule discarded
   ===============  ===============  ==========================================================

   :data:`TARGET_KEYS` are the four the posterior's likelihood is evaluated on.

3. **Batch** (:data:`IMAGE_KEYS` + full catalog + tile catalog; :func:`npejax.sim.pipeline.simulate_batch`
   and :class:`npejax.datasets.Dataset` give the same keys): ``images`` [B, H, W] float32 nmgy,
   sky-subtracted; ``background`` [B, H, W] float32 nmgy; ``psf_params`` [B, 6] float32 (psField s1, s2,
   sP, beta, b, p0; widths in pixels); ``field_id`` [B] int32 (index into the field bank);
   ``crop_origin`` [B, 2] int32 (frame row, column of the image's top-left pixel).
   :data:`NETWORK_KEYS` are what the training step needs of a batch.

4. **Per-tile posterior summary** (:data:`TILE_SUMMARY_KEYS`, :class:`npejax.nn.posterior.TilePosterior`
   ``mode()`` and ``summary()``): the tile catalog's four target keys (mode: on and galaxy when the
   probability exceeds 0.5, location mode, median flux) plus ``prob_source``, ``prob_galaxy`` [B, Th, Tw],
   ``loc_std`` [B, Th, Tw, 2] (tile units) and ``flux_lo``, ``flux_hi`` (nmgy, central 68% interval).

5. **Tables** (astropy, one row per source; :mod:`npejax.catalogs`): :data:`TRUTH_COLUMNS` for the true
   catalog of a dataset, :data:`PREDICTION_COLUMNS` for a predicted one; name -> (unit, description).
   ``image`` is the global index of the image in its dataset.
   Tables, unlike the arrays above, give ``x``, ``y`` as 0-based pixel centres (the first pixel's centre is
   0.0, as numpy, astropy, photutils and sep; meta ``PIXCONV = 'CENTER0'``): table x = array x - 0.5,
   converted by :func:`npejax.catalogs.table_xy` and :func:`~npejax.catalogs.array_xy` alone.
   :data:`QUALITY_COLUMNS` are what the quality flag from the forward model adds to a predicted table,
   :data:`QUALITY_IMAGE_COLUMNS` its per-image table (:mod:`npejax.cataloging.quality`); in the commands'
   catalogs (and :func:`npejax.cataloging.quality.add_crop_quality_columns`) ``image_quality_chi2`` and
   ``image_quality_flag`` are those of the 80 x 80 crop around the detection (the whole image when it is no
   larger); thresholds calibrated for the shipped ``cpu`` network at 80 x 80 (meta ``QTHR*``).
"""

from __future__ import annotations

CATALOG_KEYS = ("x", "y", "flux", "is_galaxy", "disk_frac", "angle", "disk_q", "bulge_q", "disk_a", "bulge_a")
SHAPE_KEYS = ("disk_frac", "angle", "disk_q", "bulge_q", "disk_a", "bulge_a")
TILE_KEYS = ("tile_has_source", "tile_locs", "tile_flux", "tile_is_galaxy", "tile_source", "n_dropped")
TARGET_KEYS = ("tile_has_source", "tile_locs", "tile_is_galaxy", "tile_flux")
IMAGE_KEYS = ("images", "background", "psf_params", "field_id", "crop_origin")
NETWORK_KEYS = ("images", "background", "psf_params") + TARGET_KEYS
# Only in batches simulated with an artifact of real frames on (npejax.sim.artifacts): ``mask`` [B, H, W] bool,
# the pixels a frame's mask flags (saturated, interpolated, cosmic ray, no data); ``artifact_bits`` [B, H, W]
# uint8, which artifacts touched each pixel (npejax.sim.artifacts.BITS).
ARTIFACT_KEYS = ("mask", "artifact_bits")
# Keys laid out on the image grid ([B, H, W] or [B, Th, Tw, ...]): what a rotation or flip moves (those of
# ARTIFACT_KEYS only where a batch has them).
SPATIAL_KEYS = ("images", "background", "tile_has_source", "tile_locs", "tile_is_galaxy", "tile_flux") + ARTIFACT_KEYS
TILE_SUMMARY_KEYS = TARGET_KEYS + ("prob_source", "prob_galaxy", "loc_std", "flux_lo", "flux_hi")

# Units of tables (astropy unit names; FITS has no nanomaggy, so fluxes carry none and say nmgy in words).
_PIX, _MAG, _RAD, _ARCSEC = "pix", "mag", "rad", "arcsec"
TRUTH_COLUMNS = {
    "image": (None, "global image index in the dataset"),
    "source": (None, "index of the source in its image's catalog"),
    "x": (_PIX, "column, 0-based pixel centre (first pixel's centre = 0; FITS pixel = x + 1)"),
    "y": (_PIX, "row, 0-based pixel centre (first pixel's centre = 0; FITS pixel = y + 1)"),
    "flux": (None, "r-band flux in nanomaggies (nmgy)"),
    "mag": (_MAG, "r magnitude, 22.5 - 2.5 log10(flux / nmgy)"),
    "is_galaxy": (None, "true for galaxies, false for stars"),
    "disk_frac": (None, "fraction of the galaxy flux in the exponential disk (0 for stars)"),
    "angle": (_RAD, "galaxy position angle, counterclockwise from +x, [0, pi) (0 for stars)"),
    "disk_q": (None, "disk axis ratio b/a (0 for stars)"),
    "bulge_q": (None, "bulge axis ratio b/a (0 for stars)"),
    "disk_a": (_ARCSEC, "disk semi-major half-light radius (0 for stars)"),
    "bulge_a": (_ARCSEC, "bulge semi-major half-light radius (0 for stars)"),
    "field_id": (None, "index of the survey field in the field bank"),
    "in_tile_catalog": (None, "kept by the one-source-per-tile rule (the brightest in its tile)"),
}
PREDICTION_COLUMNS = {
    "image": (None, "global image index"),
    "x": (_PIX, "column, 0-based pixel centre (posterior mode; FITS pixel = x + 1)"),
    "y": (_PIX, "row, 0-based pixel centre (posterior mode; FITS pixel = y + 1)"),
    "flux": (None, "r-band flux in nanomaggies (nmgy), posterior median"),
    "mag": (_MAG, "r magnitude of flux"),
    "prob_source": (None, "posterior probability that the tile holds a source"),
    "prob_galaxy": (None, "posterior probability that the source is a galaxy"),
    "x_std": (_PIX, "posterior standard deviation of x"),
    "y_std": (_PIX, "posterior standard deviation of y"),
    "flux_lo": (None, "flux 15.9th percentile (nmgy): lower end of the central 68% interval"),
    "flux_hi": (None, "flux 84.1th percentile (nmgy): upper end of the central 68% interval"),
    "masked_frac": (None, "fraction of masked (NaN/inf input) pixels within 6 pixels of the detection"),
    "field_distance": (
        None,
        "Mahalanobis distance of the image's PSF parameters and mean background from the network's training "
        "field bank (npejax.sim.fields.FieldBank.distance; meta FIELDTHR: the bank's own 99.9th percentile)",
    ),
}
# The quality flag from the forward model (npejax.cataloging.quality): columns it adds to a predicted catalog, and
# its per-image table. chi^2 per pixel of z = (image - re-rendered catalog) / pixel noise (sigma units).
QUALITY_COLUMNS = {
    "quality_chi2": (None, "mean z^2 in the aperture (2 PSF FWHM) around the detection, z = residual / noise"),
    "quality_maxres": (None, "largest |z| in the aperture, in sigma of the pixel noise"),
    "quality_flag": (None, "quality_chi2 above QTHRDET or quality_flux_ratio below QTHRRAT (calibrated thresholds)"),
    "quality_flux_ratio": (None, "flux fitted to the image with the detection's profiles over the predicted flux"),
    "image_quality_chi2": (
        None,
        "mean z^2 over the unmasked pixels of the detection's image, or of the 80 x 80 crop around it (QCROP) "
        "in the commands' catalogs and images larger than that",
    ),
    "image_quality_flag": (None, "image_quality_chi2 above the calibrated threshold (QTHRIMG)"),
}
QUALITY_IMAGE_COLUMNS = {
    "image": (None, "global image index"),
    "n_detections": (None, "rows of the catalog in this image"),
    "quality_chi2": (None, "mean z^2 over the unmasked pixels, z = (image - re-rendered catalog) / noise"),
    "quality_frac5": (None, "fraction of the unmasked pixels with |z| > 5"),
    "quality_pixels": (None, "unmasked finite pixels the statistics are over"),
    "quality_flag": (None, "quality_chi2 above the calibrated threshold (QTHRIMG)"),
}

# Dataset splits; each has its own seed stream (npejax.datasets.split_seed).
SPLITS = ("train", "val", "test")
# Field priors (paper Section 4): a field drawn from the whole bank, or the bank's reference field.
FIELD_PRIORS = ("many", "one")

# Binned evaluation metrics (npejax.evaluation.metrics.binned_metrics) and their labels in tables/figures.
METRIC_LABELS = {
    "precision": "precision",
    "recall": "recall",
    "accuracy": "star/galaxy accuracy",
    "mape": "flux MAPE (%)",
}
