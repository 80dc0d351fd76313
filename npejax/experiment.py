"""Runs the paper's experiment end to end: train three networks, simulate test sets, evaluate, report.

    python -m npejax.experiment --config configs/experiment_cpu.py --out runs/experiment [--config.KEY=VALUE]
    npejax-experiment --config configs/experiment_cpu.py --out runs/experiment

Layout of ``--out`` and what resumes: :mod:`npejax.evaluation.experiment`.
"""

from __future__ import annotations

from absl import flags

from npejax import cli


def define_flags(fv: flags.FlagValues) -> None:
    cli.define_config(fv, "Experiment config (configs/experiment*.py).")
    flags.DEFINE_string("out", None, "Output directory.", flag_values=fv, required=True)


def run(fv: flags.FlagValues) -> None:
    from npejax.evaluation import experiment  # deferred: JAX and GalSim load after the command line (fast --help)

    experiment.run_experiment(fv.config, fv.out)


def main(argv=None) -> int:
    return cli.main(define_flags, run, argv, doc=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
