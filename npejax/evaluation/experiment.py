"""The paper's experiment end to end: train three networks, simulate test sets, evaluate, report.

    python -m npejax.experiment --config configs/experiment_cpu.py --out runs/experiment [--config.KEY=VALUE]

Config keys (configs/experiment.py): ``network`` (the shared training and simulation settings),
``network_settings`` (name -> ``variant``, training ``prior`` and posterior ``context``, read from the
networks' own config files: single -> single_field on p_one, unaware -> psf_unaware on p_many, aware ->
psf_aware on p_many (paper Section 6), aware_cb -> psf_aware_checkerboard, PSF-aware with the
checkerboard posterior), ``networks`` (comma-separated names to train), ``priors`` (test-set priors). The test
set of each prior has ``network.data.num_test`` images, and the evaluation's settings are ``network.eval``
(:class:`npejax.evaluation.settings.EvalSettings`; keys documented in configs/default.py).

Layout of ``--out``: ``networks/{single,unaware,aware,aware_cb}/`` (training workdirs), ``test-{many,one}/``
(cached test sets), ``report-{many,one}/`` (npejax.evaluate output) and ``report.md`` linking both.
Every stage resumes: run the same command again after an interruption and finished work is reused
(training resumes from its last checkpoint, test sets from their finished shards).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time

from npejax.evaluation import evaluate, report
from npejax.evaluation.settings import EvalSettings
from npejax.nn import train
from npejax.schema import FIELD_PRIORS

PRIORS = FIELD_PRIORS  # test-set priors: many fields, one field


def _names(value: str, allowed, what: str) -> list[str]:
    names = [v.strip() for v in str(value).split(",") if v.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise ValueError(f"config.{what}={value!r}: expected a comma-separated subset of {list(allowed)}")
    return names


def network_config(config, name: str):
    """The training config of network ``name``: ``config.network`` with the ``model.variant``, training
    ``fields.prior`` and ``posterior.context`` of ``config.network_settings[name]``."""
    settings = config.network_settings[name]
    net = copy.deepcopy(config.network)
    with net.unlocked():
        net.model.variant = settings.variant
        net.fields.prior = settings.prior
        net.posterior.context = settings.context
    return net


def evaluation_settings(config, out_dir: str, workdirs: dict, prior: str) -> EvalSettings:
    """The evaluation on the ``prior`` test set (``network.data.num_test`` images in ``OUT/test-PRIOR``, the
    report in ``OUT/report-PRIOR``), checked as npejax.evaluate checks its own (:class:`EvalSettings`) with the
    networks still to train; EvaluationError naming the experiment config's key (``network.data.num_test``,
    ``network.eval.*``)."""
    return EvalSettings.create(
        os.path.join(out_dir, f"report-{prior}"),
        config.network,  # its eval section, and the simulator of the test set
        workdirs=workdirs,
        prior=prior,
        num_images=int(config.network.data.num_test),
        test_dir=os.path.join(out_dir, f"test-{prior}"),
        num_images_option="config.network.data.num_test",
        eval_prefix="config.network.eval.",
        trained_later=True,
    )


def run_experiment(config, out_dir: str) -> dict:
    """Trains, evaluates and reports per ``config`` into ``out_dir``; returns {prior: metrics}."""
    networks = _names(config.networks, list(config.network_settings), "networks")
    priors = _names(config.priors, PRIORS, "priors")
    workdirs = {name: os.path.join(out_dir, "networks", name) for name in networks}
    # the evaluations' settings are checked (EvalSettings: the same checks as npejax.evaluate's) before any training
    evaluations = {prior: evaluation_settings(config, out_dir, workdirs, prior) for prior in priors}
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.time()
    for name in networks:
        settings = config.network_settings[name]
        print(f"== training {name} ({settings.variant}, trained on p_{settings.prior}) in {workdirs[name]}", flush=True)
        train.train_and_evaluate(network_config(config, name), workdirs[name])
    results = {}
    for prior in priors:
        print(f"== evaluating on p_{prior}", flush=True)
        settings = dataclasses.replace(evaluations[prior], trained_later=False)  # checked again: the networks exist
        results[prior] = evaluate.evaluate(settings)
    report.write_index(
        out_dir, {p: f"report-{p}" for p in priors}, results, title="npejax experiment", elapsed_s=time.time() - t0
    )
    print(f"report: {os.path.join(out_dir, 'report.md')} ({(time.time() - t0) / 60:.1f} min)")
    return results
