"""What an evaluation reports and what it calls things: shared by :mod:`~npejax.evaluation.evaluate`
(which computes and writes) and :mod:`~npejax.evaluation.report` (which draws and tabulates).

- :data:`PROB_THRESHOLD`: a prediction is a detection when ``prob_source`` exceeds it (SPEC.md "Evaluation").
- :data:`BASELINE`: the method name of the Source Extractor baseline (:mod:`npejax.evaluation.baseline`).
- :data:`SUBSETS`: the magnitude subsets of the calibration, ROC and coverage figures (name -> closed r
  range), :data:`SUBSET_LABELS` their labels.
- :data:`HEADLINE`: the paper's headline numbers (PSF-aware network, many-field test set; SPEC.md), one
  tuple per metric: ``(key, label, metric, cut-off, bins, paper)`` -- ``key`` in ``metrics.json``
  ``methods.NAME.headline`` and ``headline.csv``; ``metric`` the :func:`~npejax.evaluation.metrics.binned_metrics`
  metric (None: computed otherwise, see ``evaluate_catalog``); ``paper`` the paper's value as text.
  The paper reads its numbers off per-bin curves, so the value under ``key`` compares like with like: the
  mean over the first ``bins`` reference bins (:data:`~npejax.evaluation.metrics.REFERENCE_CUTOFFS`, those
  up to the reference cut-off nearest the paper's ``cut-off``; bracketed in the tables), and the value under
  ``key + POOLED`` pools every source below ``cut-off`` (detections by estimated r for precision, true
  sources by true r otherwise). Exactly:

  ============  ==================  ============================================  ======================
  key           paper's cut-off     reference bins averaged                       pooled
  ============  ==================  ============================================  ======================
  precision     estimated r < 21.5  1-8: estimated r < 21.495                    estimated r <= 21.5
  recall        r < 21.2            1-7: r < 21.227                               r <= 21.2
  accuracy      r < 22              1-10: r <= 22.0 (all)                         r <= 22.0
  mape          r < 22              1-10: r <= 22.0 (all)                         r <= 22.0
  ============  ==================  ============================================  ======================

  A headline entry is ``value``, ``std`` (1-sigma bootstrap over images), ``count`` (sources counted) and,
  for the bin means, ``bins`` (how many reference bins) and ``num_defined`` (how many of them had sources).
- :data:`HEADLINE_ROWS`: ``(key, label)`` of every headline entry in the order ``metrics.json`` and
  ``headline.csv`` hold them (each bin mean followed by its pooled figure).
- :data:`CEILING`: the name of the r-band accuracy ceiling (:mod:`npejax.evaluation.ceiling`) in the tables
  and ``headline.csv``; not a method name.
- :data:`LABELS`: display names of the paper's three networks and the baseline (other names show as given).

Metric labels (precision, recall, accuracy, MAPE) are :data:`npejax.schema.METRIC_LABELS`.
"""

from __future__ import annotations

from npejax.evaluation import metrics

PROB_THRESHOLD = 0.5
BASELINE = "sep"
SUBSETS = metrics.CALIBRATION_SUBSETS  # all, brightest (r < 17.777), faintest (21.746 <= r <= 22)
SUBSET_LABELS = {"all": "all sources", "brightest": "r < 17.78", "faintest": "21.75 < r < 22"}
POOLED = "_pooled"  # suffix of a headline key's pooled figure
HEADLINE = (  # key, label, metric, cut-off, reference bins averaged, paper
    ("precision", "precision, est. r < 21.5: [mean of ref. bins 1-8, to 21.495]", "precision", 21.5, 8, "> 0.95"),
    ("recall", "recall, r < 21.2: [mean of ref. bins 1-7, to 21.227]", "recall", 21.2, 7, "> 0.9"),
    ("accuracy", "star/galaxy accuracy, r < 22: [mean of ref. bins 1-10]", "accuracy", 22.0, 10, "> 0.96"),
    ("mape", "flux MAPE %, r < 22: [mean of ref. bins 1-10]", "mape", 22.0, 10, "-"),
    ("coverage95", "95% flux interval coverage", None, None, None, "about 0.96"),
    ("auc", "star/galaxy AUC (all)", None, None, None, "-"),
)
HEADLINE_ROWS = tuple(
    row
    for key, label, metric, *_ in HEADLINE
    for row in ([(key, label)] if metric is None else [(key, label), (key + POOLED, label.split(":")[0] + ": pooled")])
)
CEILING = "ceiling"
LABELS = {
    "single": "single-field",
    "unaware": "PSF-unaware",
    "aware": "PSF-aware",
    "aware_cb": "PSF-aware, checkerboard",
    BASELINE: "Source Extractor (sep)",
    CEILING: "r-band ceiling (ideal test)",
}
