r"""Bright-source detection of trained networks (and sep) on fresh test images: the README's acceptance check.

    python benchmarks/bright_detection.py --workdir main=runs/cpu_small --num-images 500 \
        [--test-dir runs/test-many-500] [--max-mag 19] [--sep] [--json out.json]

Recall: matched true sources with r < ``--max-mag`` over all true sources with r < ``--max-mag``. Precision:
detections (prob_source > 0.5) with estimated r < ``--max-mag`` that match a true source (any magnitude),
over all such detections. Matching as in the evaluation (:func:`npejax.evaluation.metrics.match`: one
pixel, Jonker-Volgenant per image). The test set is simulated once with the first network's config and the
``test`` split's seed (images never seen in training) and cached in ``--test-dir`` (default
``/tmp/npejax-bright-test-PRIOR-N``); ``--prior`` picks p_many (default) or p_one.
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from npejax import catalogs, cli, io  # noqa: E402
from npejax.evaluation import evaluate, metrics  # noqa: E402
from npejax.nn import checkpoints  # noqa: E402
from npejax.schema import FIELD_PRIORS  # noqa: E402


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_multi_string("workdir", [], "NAME=DIR: a training directory (repeatable).", flag_values=fv)
    flags.DEFINE_integer("num-images", 500, "Test images.", lower_bound=1, flag_values=fv)
    flags.DEFINE_enum("prior", "many", list(FIELD_PRIORS), "Test-set field prior.", flag_values=fv)
    flags.DEFINE_string("test-dir", None, "Cached test set (default /tmp/npejax-bright-test-PRIOR-N).", flag_values=fv)
    flags.DEFINE_float("max-mag", 19.0, "r magnitude cut.", flag_values=fv)
    flags.DEFINE_boolean("sep", False, "Also Source Extractor (sep).", flag_values=fv)
    flags.DEFINE_string("json", None, "Also write the results here.", flag_values=fv)


def bright_metrics(truth, pred, num_images: int, max_mag: float, prob_threshold: float = 0.5) -> dict:
    """Recall (true r < max_mag), precision (estimated r < max_mag) and their counts."""
    t2p, p2t = metrics.match(truth, pred, num_images, prob_threshold=prob_threshold)
    true_mag = np.asarray(truth["mag"], float)
    pred_mag = catalogs.flux_to_mag(np.asarray(pred["flux"], float))
    prob = np.asarray(pred["prob_source"], float) if "prob_source" in pred.colnames else np.ones(len(pred))
    bright_true = true_mag < max_mag
    bright_pred = (pred_mag < max_mag) & (prob > prob_threshold)
    n_true, n_pred = int(bright_true.sum()), int(bright_pred.sum())
    found, right = int((t2p[bright_true] >= 0).sum()), int((p2t[bright_pred] >= 0).sum())
    return dict(
        recall=found / n_true if n_true else float("nan"),
        num_true=n_true,
        found=found,
        precision=right / n_pred if n_pred else float("nan"),
        num_detections=n_pred,
        correct=right,
    )


def run(fv: flags.FlagValues) -> None:
    workdirs = cli.parse_pairs(fv.workdir, "--workdir")
    if not workdirs and not fv.sep:
        raise cli.UsageError("give at least one --workdir NAME=DIR (or --sep)")
    n = fv["num-images"].value
    test_dir = fv["test-dir"].value or f"/tmp/npejax-bright-test-{fv.prior}-{n}"
    config = checkpoints.load_config(next(iter(workdirs.values()))) if workdirs else None
    test = (
        evaluate.load_test_set(test_dir, n, fv.prior, config, progress=False)
        if config is not None
        else evaluate.load_test_set(test_dir)
    )
    results = {}
    for name, workdir in workdirs.items():
        results[name] = bright_metrics(
            test.truth, evaluate.network_catalog(workdir, test), len(test.dataset), fv["max-mag"].value
        )
    if fv.sep:
        results["sep"] = bright_metrics(
            test.truth, evaluate.baseline_catalog(test), len(test.dataset), fv["max-mag"].value
        )
    for name, r in results.items():
        print(
            f"{name}: r < {fv['max-mag'].value:g} on {len(test.dataset)} test images ({test_dir}): "
            f"recall {r['recall']:.3f} ({r['found']}/{r['num_true']}), "
            f"precision {r['precision']:.3f} ({r['correct']}/{r['num_detections']})"
        )
    if fv.json:
        io.write_json(
            fv.json, dict(test_dir=test_dir, num_images=len(test.dataset), max_mag=fv["max-mag"].value, results=results)
        )


if __name__ == "__main__":
    raise SystemExit(cli.main(define_flags, run, doc=__doc__))
