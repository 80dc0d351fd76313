"""Trains an npejax network.

    python -m npejax.main --config configs/psf_aware.py --workdir runs/aware [--config.KEY=VALUE ...]
    npejax-train --config configs/psf_aware.py --workdir runs/aware

Calls :func:`npejax.nn.train.train_and_evaluate` (as Flax's examples do); running the same command again
resumes after the last saved epoch.
"""

from __future__ import annotations

from absl import flags

from npejax import cli
from npejax.nn import train


def define_flags(fv: flags.FlagValues) -> None:
    cli.define_config(fv, "Experiment configuration file (configs/*.py).")
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the saved config "
                        "(default: runs/<model.variant>).", flag_values=fv)


def run(fv: flags.FlagValues) -> None:
    train.train_and_evaluate(fv.config, fv.workdir or f"runs/{fv.config.model.variant}")


def main(argv=None) -> int:
    return cli.main(define_flags, run, argv, doc=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
