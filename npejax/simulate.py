"""Simulates a cached dataset split and its true catalog.

    python -m npejax.simulate --config configs/psf_aware.py --split val --out runs/val \
        [--num-images N] [--num-workers K] [--shard-size S] [--catalog truth.csv] [--config.KEY=VALUE ...]

Writes DIR/manifest.json and DIR/shard-NNNNN/ (see npejax.data), and the true catalog of every source
as DIR/truth.fits (plus --catalog, FITS or CSV by extension). Defaults: --num-images from
config.data.num_<split>, --num-workers from config.simulator.num_workers, --shard-size from
config.data.shard_size. The seed of the split is npejax.data.split_seed(config.seed, split). Running
the same command again resumes an interrupted run (only missing shards are rendered).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from npejax import cli

FLAGS = flags.FLAGS
SPLITS = ("train", "val", "test")  # npejax.data.SPLITS; the heavy modules load after flag parsing
config_flags.DEFINE_config_file("config", None, "Experiment config file (e.g. configs/psf_aware.py).",
                                lock_config=True)
flags.DEFINE_enum("split", None, list(SPLITS), "Which split to simulate (its seed differs per split).")
flags.DEFINE_string("out", None, "Output dataset directory (created; an existing one is resumed).")
flags.DEFINE_integer("num-images", None, "Number of images (default: config.data.num_<split>).")
flags.DEFINE_integer("num-workers", None, "Worker processes (default: config.simulator.num_workers; "
                     "0 renders in this process).")
flags.DEFINE_integer("shard-size", None, "Images per shard (default: config.data.shard_size).")
flags.DEFINE_string("catalog", None, "Also write the true catalog here (.fits or .csv).")
flags.DEFINE_boolean("progress", True, "Show a progress bar.")
for _name in ("num-images", "num-workers", "shard-size"):
    flags.DEFINE_alias(_name.replace("-", "_"), _name)
flags.mark_flags_as_required(["config", "split", "out"])

TRUTH_FILE = "truth.fits"


def _setting(flag: str, config, section: str, key: str) -> int:
    value = FLAGS[flag].value
    if value is None:
        try:
            value = config[section][key]
        except (KeyError, AttributeError):
            raise app.UsageError(f"--{flag} not given and the config has no {section}.{key}") from None
    return int(value)


def main(argv):
    """Runs :func:`simulate`; a usage error prints one line (not the whole flag listing) and exits 1."""
    try:
        simulate(argv)
    except app.UsageError as exc:
        sys.stderr.write(f"FATAL: {exc}\nPass --helpshort or --helpfull to see help on flags.\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted; run the same command again to resume (finished shards are kept)\n")
        return 130
    return 0


def simulate(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    t0 = time.perf_counter()
    try:
        config = FLAGS.config
        config.seed  # a config file that failed to load raises here
    except (OSError, AttributeError, KeyError) as exc:
        raise app.UsageError(f"cannot load the config: {exc}") from None
    split = FLAGS.split
    num_images = _setting("num-images", config, "data", f"num_{split}")
    num_workers = _setting("num-workers", config, "simulator", "num_workers")
    shard_size = _setting("shard-size", config, "data", "shard_size")
    if num_images < 1:
        raise app.UsageError(f"the number of images must be >= 1, got {num_images}")
    if num_workers < 0:
        raise app.UsageError(f"the number of workers must be >= 0, got {num_workers}")
    if shard_size < 1:
        raise app.UsageError(f"the shard size must be >= 1, got {shard_size}")
    from npejax import catalog as catalog_lib

    extra_catalog = FLAGS.catalog
    if extra_catalog is not None:
        try:
            catalog_lib.table_format(extra_catalog)
        except ValueError as exc:
            raise app.UsageError(f"--catalog: {exc}") from None
    from npejax import data as data_lib  # GalSim and friends: after the cheap checks
    from npejax import pipeline

    try:
        seed = data_lib.split_seed(config.seed, split)
        spec = pipeline.SimulationSpec.from_config(config, seed=seed, batch_size=shard_size)
    except (ValueError, KeyError, AttributeError, TypeError, FileNotFoundError) as exc:
        raise app.UsageError(f"invalid config: {exc}") from None

    bank = spec.bank
    print(f"simulating {num_images} {split} images (seed {seed}, fields prior {spec.field_prior!r}, "
          f"{len(bank)} {'SYNTHETIC ' if bank.synthetic else ''}fields) into {FLAGS.out} "
          f"with {num_workers} worker(s), {shard_size} images per shard", flush=True)
    try:
        report = data_lib.write_dataset(spec, FLAGS.out, num_images, split, config=config,
                                        num_workers=num_workers, shard_size=shard_size,
                                        progress=FLAGS.progress)
    except data_lib.DatasetError as exc:
        raise app.UsageError(str(exc)) from None
    dataset = data_lib.load(FLAGS.out)
    table, n_sources, n_dropped = catalog_lib.dataset_truth_table(dataset)
    written = [catalog_lib.write_table(table, os.path.join(FLAGS.out, TRUTH_FILE))]
    if extra_catalog is not None:
        written.append(catalog_lib.write_table(table, extra_catalog))
    elapsed = time.perf_counter() - t0

    resumed = report.num_shards - len(report.rendered_shards)
    print(f"dataset: {FLAGS.out}: {len(dataset)} images in {report.num_shards} shard{'s' * (report.num_shards != 1)}"
          + (f" ({resumed} already present, {len(report.rendered_shards)} rendered now)" if resumed else ""))
    print(f"sources: {n_sources} ({n_sources / len(dataset):.3f} per image); dropped by the one-per-tile rule: "
          f"{n_dropped} ({100.0 * n_dropped / max(n_sources, 1):.2f}% of sources)")
    print(f"truth catalog: {', '.join(written)} ({len(table)} rows)")
    rate = report.rendered_images / report.seconds if report.seconds > 0 else float("nan")
    print(f"time: {elapsed:.1f} s; rendered {report.rendered_images} images at {rate:.1f} images/s")


def _parse_flags(argv):
    """absl parsing with a clear message for an unknown --config.KEY override."""
    try:
        return FLAGS(argv)
    except flags.Error as exc:
        sys.stderr.write(f"FATAL Flags parsing error: {exc}\nPass --helpshort or --helpfull to see help on flags.\n")
        sys.exit(1)
    except (AttributeError, KeyError) as exc:
        overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
        inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else exc
        message = str(inner.args[0]) if inner.args else str(inner)
        what = f"unknown config key in {' '.join(overrides)}" if overrides else "cannot load the config"
        sys.stderr.write(f"FATAL Flags parsing error: {what}: {message}\n")
        sys.exit(1)


if __name__ == "__main__":
    cli.add_config_root_to_path(sys.argv)
    app.run(main, flags_parser=_parse_flags)
