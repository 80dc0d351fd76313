"""Evaluation (paper Section 7 and Appendix A): how good is a catalog, and the experiment end to end.

* :mod:`~npejax.evaluation.metrics` -- matching (Jonker-Volgenant within 1 pixel), binned metrics with
  bootstrap bands, calibration, ROC, flux coverage (plain numpy/scipy).
* :mod:`~npejax.evaluation.snr` -- the signal-to-noise ratio of each true source (Appendix A).
* :mod:`~npejax.evaluation.baseline` -- the Source Extractor (``sep``) baseline catalog.
* :mod:`~npejax.evaluation.ceiling` -- the r-band accuracy ceiling (the ideal star/galaxy test).
* :mod:`~npejax.evaluation.headline` -- the headline metrics, detection threshold, method and subset names.
* :mod:`~npejax.evaluation.report` -- the report's files: metrics.json, CSV tables, figures (PNG), markdown.
* :mod:`~npejax.evaluation.settings` -- what one evaluation does (:class:`EvalSettings`: the config's ``eval``
  section and the command line), checked once.
* :mod:`~npejax.evaluation.evaluate` -- test set, catalogs of every method, all metrics.
* :mod:`~npejax.evaluation.experiment` -- train the paper's three networks, evaluate them on both priors.

Uses :mod:`npejax.sim`, :mod:`npejax.datasets` and :mod:`npejax.nn`; nothing imports it but the commands
(:mod:`npejax.evaluate`, :mod:`npejax.experiment`). Within the package, imports run metrics -> headline ->
report, settings -> evaluate -> experiment (snr and baseline used by evaluate); report never imports evaluate.
"""
