"""Trains an npejax network: ``python -m npejax.main --config configs/psf_aware.py --workdir runs/aware``."""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from npejax import cli, train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the saved config.")
config_flags.DEFINE_config_file("config", None, "Experiment configuration file (configs/*.py).", lock_config=True)
flags.mark_flags_as_required(["config"])


def main(argv):
    logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint step at INFO
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    workdir = FLAGS.workdir or f"runs/{FLAGS.config.model.variant}"
    train.train_and_evaluate(FLAGS.config, workdir)


if __name__ == "__main__":
    cli.add_config_root_to_path(sys.argv)
    app.run(main)
