"""Cataloging images with a trained network: the application layer above :mod:`npejax.nn`.

* :mod:`~npejax.cataloging.images` -- the images to catalog read from files (dataset directories, .npz, FITS
  images with their WCS, SDSS frames with their psField), ``ra``/``dec`` from a WCS, and their catalog
  (:func:`~npejax.cataloging.images.catalog_inputs`).
* :mod:`~npejax.cataloging.options` -- the cataloging commands' flag values (``--min-prob``,
  ``--background``, ``--chunk-size``, the survey's FITS defaults) as usage errors.
* :mod:`~npejax.cataloging.figures` -- the PNG of an image with its detections (``--png``).
* :mod:`~npejax.cataloging.quality` -- a quality flag from the forward model: the catalog re-rendered with each
  image's PSF and background and compared with the image (Python API, ``add_quality_columns``).
* :mod:`~npejax.cataloging.runner` -- the survey runner: frame list, shards (Slurm job arrays), one catalog
  file per frame with reader threads, failures files, merge.

The network itself -- restoring a checkpoint, predicting tiles and catalogs from arrays -- is
:class:`npejax.nn.predictor.Predictor`. Uses :mod:`npejax.nn`, :mod:`npejax.datasets`, :mod:`npejax.surveys`,
:mod:`npejax.sim` and :mod:`npejax.cli`; nothing imports it but the commands (:mod:`npejax.predict`,
:mod:`npejax.survey`). Within the package, options and runner use images; figures and quality stand alone.
"""
