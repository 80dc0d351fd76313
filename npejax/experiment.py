"""Runs the paper's experiment end to end: train three networks, simulate test sets, evaluate, report.

    python -m npejax.experiment --config configs/experiment_cpu.py --out runs/experiment [--config.KEY=VALUE]
    npejax-experiment --config configs/experiment_cpu.py --out runs/experiment

Layout of ``--out`` and what resumes: :mod:`npejax.evaluation.experiment`. A network's training stopped on time
(SIGTERM, SIGUSR1, ``train.time_limit_minutes``: :mod:`npejax.nn.preemption`) exits with status 3, its step
saved; the same command resumes it.
"""

from __future__ import annotations

from absl import flags

from npejax import cli


def define_flags(fv: flags.FlagValues) -> None:
    cli.define_config(fv, "Experiment config (configs/experiment*.py).")
    flags.DEFINE_string("out", None, "Output directory.", flag_values=fv, required=True)


def run(fv: flags.FlagValues) -> int:
    from npejax.evaluation import experiment  # deferred: JAX and GalSim load after the command line (fast --help)
    from npejax.nn import preemption  # deferred: as above

    # a network's training stopped on time is saved: the same command resumes the experiment
    return preemption.exit_status(lambda: experiment.run_experiment(fv.config, fv.out))


def main(argv=None) -> int:
    return cli.main(define_flags, run, argv, doc=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
