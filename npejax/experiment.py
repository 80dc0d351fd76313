"""The paper's experiment end to end: train three networks, simulate test sets, evaluate, report.

    python -m npejax.experiment --config configs/experiment_cpu.py --out runs/experiment [--config.KEY=VALUE]

Layout of ``--out``: ``networks/{single,unaware,aware}/`` (training workdirs), ``test-{many,one}/``
(cached test sets), ``report-{many,one}/`` (npejax.evaluate output) and ``report.md`` linking both.
Every stage resumes: run the same command again after an interruption and finished work is reused
(training resumes from its last checkpoint, test sets from their finished shards).
"""

from __future__ import annotations

import copy
import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

from npejax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config (configs/experiment*.py).", lock_config=True)
flags.DEFINE_string("out", None, "Output directory.")
flags.mark_flags_as_required(["config", "out"])

# network name -> (model.variant, training prior fields.prior), paper Section 6
NETWORKS = {"single": ("single_field", "one"), "unaware": ("psf_unaware", "many"), "aware": ("psf_aware", "many")}
PRIORS = ("many", "one")


def _names(value: str, allowed, what: str) -> list[str]:
    names = [v.strip() for v in str(value).split(",") if v.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise ValueError(f"config.{what}={value!r}: expected a comma-separated subset of {list(allowed)}")
    return names


def network_config(config, name: str):
    """The training config of network ``name``: ``config.network`` with its variant and training prior."""
    variant, prior = NETWORKS[name]
    net = copy.deepcopy(config.network)
    with net.unlocked():
        net.model.variant = variant
        net.fields.prior = prior
    return net


def run_experiment(config, out_dir: str) -> dict:
    """Trains, evaluates and reports per ``config`` into ``out_dir``; returns {prior: metrics}."""
    from npejax import evaluate, train

    networks = _names(config.networks, NETWORKS, "networks")
    priors = _names(config.priors, PRIORS, "priors")
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.time()
    workdirs = {}
    for name in networks:
        workdirs[name] = os.path.join(out_dir, "networks", name)
        print(f"== training {name} ({NETWORKS[name][0]}, trained on p_{NETWORKS[name][1]}) in {workdirs[name]}",
              flush=True)
        train.train_and_evaluate(network_config(config, name), workdirs[name])
    results = {}
    for prior in priors:
        print(f"== evaluating on p_{prior}", flush=True)
        results[prior] = evaluate.evaluate(
            workdirs, os.path.join(out_dir, f"report-{prior}"), prior=prior,
            num_images=int(config.num_test_images), test_dir=os.path.join(out_dir, f"test-{prior}"),
            baseline=bool(config.baseline), num_bootstrap=int(config.num_bootstrap), num_bins=int(config.num_bins),
            sim_config=config.network, num_workers=int(config.network.simulator.num_workers))
    evaluate.write_index(out_dir, {p: f"report-{p}" for p in priors}, results,
                         title="npejax experiment", elapsed_s=time.time() - t0)
    print(f"report: {os.path.join(out_dir, 'report.md')} ({(time.time() - t0) / 60:.1f} min)")
    return results


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint step at INFO
    try:
        run_experiment(FLAGS.config, FLAGS.out)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    cli.add_config_root_to_path(sys.argv)
    app.run(main)
