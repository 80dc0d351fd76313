"""What an evaluation reports and what it calls things: shared by :mod:`~npejax.evaluation.evaluate`
(which computes and writes) and :mod:`~npejax.evaluation.report` (which draws and tabulates).

- :data:`PROB_THRESHOLD`: a prediction is a detection when ``prob_source`` exceeds it (SPEC.md "Evaluation").
- :data:`BASELINE`: the method name of the Source Extractor baseline (:mod:`npejax.evaluation.baseline`).
- :data:`SUBSETS`: the magnitude subsets of the calibration, ROC and coverage figures (name -> closed r
  range), :data:`SUBSET_LABELS` their labels.
- :data:`HEADLINE`: the paper's headline numbers (PSF-aware network, many-field test set; SPEC.md), one
  tuple per metric: ``(key, label, metric, cut-off, paper)`` -- ``key`` in ``metrics.json``
  ``methods.NAME.headline`` and ``headline.csv``; ``metric`` the :func:`~npejax.evaluation.metrics.binned_metrics`
  metric computed below the r ``cut-off`` (None: computed otherwise, see ``evaluate_catalog``); ``paper``
  the paper's value as text.
- :data:`LABELS`: display names of the paper's three networks and the baseline (other names show as given).

Metric labels (precision, recall, accuracy, MAPE) are :data:`npejax.schema.METRIC_LABELS`.
"""

from __future__ import annotations

from npejax.evaluation import metrics

PROB_THRESHOLD = 0.5
BASELINE = "sep"
SUBSETS = metrics.CALIBRATION_SUBSETS  # all, brightest (r < 17.777), faintest (21.746 <= r <= 22)
SUBSET_LABELS = {"all": "all sources", "brightest": "r < 17.78", "faintest": "21.75 < r < 22"}
HEADLINE = (  # key, label, metric, cut-off, paper
    ("precision", "precision (est. r < 21.5)", "precision", 21.5, "> 0.95"),
    ("recall", "recall (r < 21.2)", "recall", 21.2, "> 0.9"),
    ("accuracy", "star/galaxy accuracy (r < 22)", "accuracy", 22.0, "> 0.96"),
    ("mape", "flux MAPE % (r < 22)", "mape", 22.0, "-"),
    ("coverage95", "95% flux interval coverage", None, None, "about 0.96"),
    ("auc", "star/galaxy AUC (all)", None, None, "-"),
)
LABELS = {"single": "single-field", "unaware": "PSF-unaware", "aware": "PSF-aware", BASELINE: "Source Extractor (sep)"}
