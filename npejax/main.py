"""Trains an npejax network.

    python -m npejax.main --config configs/psf_aware.py --workdir runs/aware [--config.KEY=VALUE ...]
    npejax-train --config configs/psf_aware.py --workdir runs/aware

Calls :func:`npejax.nn.train.train_and_evaluate` (as Flax's examples do); running the same command again
resumes after the last saved epoch, with the same config (only the training length -- train.num_epochs,
train.patience, train.progress -- may change). TensorBoard: ``tensorboard --logdir WORKDIR/tensorboard``.

Refused before anything is written (one ``error:`` line, exit 2; no workdir is created): an unknown config
key or a missing config file; a bad value (model.variant, model.dtype, fields.prior, a network whose stride
is not tile_size, batch sizes < 1 or not multiples of the devices, train.images_per_epoch smaller than
train.batch_size, train.eval_batch_size larger than the validation set, train.num_epochs or train.patience
< 1); a cached dataset of the wrong split, image or tile size, prior or field bank; a --workdir that is a
file or not writable; a workdir whose checkpoint was trained with another config (the differences listed)
or whose checkpoint files are damaged (SHA-256); a workdir whose ``checkpoints/best`` holds a network but
``checkpoints/latest`` nothing to resume from; a workdir another training is running in (its lock,
``WORKDIR/.npejax-train.lock``, held: the error names its pid and host). A checkpoint that cannot be saved
(disk full) stops training at that epoch with one line.

Stopped on time (SIGTERM, SIGUSR1 -- Slurm's warning before a time limit, ``--signal=USR1@120``, or a preemption
-- or ``train.time_limit_minutes``): the step reached is saved, mid-epoch too, and the command exits with status
3 (:data:`npejax.nn.preemption.EXIT_PREEMPTED`); the same command resumes at that step (:mod:`npejax.nn.preemption`).
"""

from __future__ import annotations

from absl import flags

from npejax import cli


def define_flags(fv: flags.FlagValues) -> None:
    cli.define_config(fv, "Experiment configuration file (configs/*.py).")
    flags.DEFINE_string(
        "workdir",
        None,
        "Directory for checkpoints, metrics, TensorBoard events and the saved config (default: runs/<model.variant>).",
        flag_values=fv,
    )


def run(fv: flags.FlagValues) -> int:
    from npejax.nn import preemption, train  # deferred: JAX and Flax load after the command line is read (fast --help)

    config = fv.config
    # train_and_evaluate checks the config, the datasets, the workdir and its checkpoint before writing
    return preemption.exit_status(
        lambda: train.train_and_evaluate(config, fv.workdir or f"runs/{config.model.variant}")
    )


def main(argv=None) -> int:
    return cli.main(define_flags, run, argv, doc=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
