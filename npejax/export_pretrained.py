"""Exports a trained network as a pretrained network file of the package, and registers it.

    python -m npejax.export_pretrained --workdir runs/cpu --name cpu --config-name configs/cpu.py \
        [--quality-thresholds DETECTION,IMAGE,FLUX_RATIO]
    npejax-export-pretrained --workdir RUN --name NAME [--which best|latest] [--out DIR]

Reads checkpoint ``--which`` (default best) of the training directory ``--workdir`` (checksums and config
verified, as ``npejax.predict`` does), writes ``DIR/NAME.npz`` atomically (default DIR: the package's
``npejax/pretrained``; the format: :mod:`npejax.nn.pretrained`), adds or replaces NAME's entry in
``DIR/registry.json`` and prints the entry (SHA-256, size, parameters, training images and time). The model
card ``DIR/NAME.md`` the entry points to is written by hand (config, training, evaluation, intended use).
The same checkpoint always gives the same file, byte for byte. Then ``python -m npejax.predict --pretrained
NAME ...`` and ``Predictor.pretrained("NAME")`` use it.
"""

from __future__ import annotations

import json
import os

from absl import flags

from npejax import cli, io

# Flag values of the library, written here so that --help loads no JAX (tests/test_cli.py checks they agree):
CHECKPOINTS = ("best", "latest")  # npejax.nn.checkpoints.WHICH


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("workdir", None, "Training directory (python -m npejax.main).", flag_values=fv, required=True)
    flags.DEFINE_string(
        "name", None, "Network name: the file NAME.npz and --pretrained NAME.", flag_values=fv, required=True
    )
    flags.DEFINE_enum("which", "best", list(CHECKPOINTS), "Which checkpoint of --workdir.", flag_values=fv)
    flags.DEFINE_string(
        "out", None, "Directory of the file and registry (default: the package's npejax/pretrained).", flag_values=fv
    )
    flags.DEFINE_string(
        "config-name",
        None,
        "The config file it was trained with, recorded in the entry (configs/cpu.py).",
        flag_values=fv,
    )
    flags.DEFINE_list(
        "quality-thresholds",
        None,
        "DETECTION,IMAGE,FLUX_RATIO: the quality flag's thresholds calibrated for this network (python "
        "benchmarks/quality_flag.py --pretrained NAME), recorded in the entry; default: none (the package's).",
        flag_values=fv,
    )
    cli.define_underscore_aliases(fv)  # --config_name, --quality_thresholds


def run(fv: flags.FlagValues) -> None:
    from npejax.nn import pretrained as pretrained_lib  # deferred: JAX loads after the command line (fast --help)

    try:
        name = pretrained_lib.check_name(fv.name)
    except ValueError as exc:
        raise cli.UsageError(f"--name: {cli.message(exc)}") from None
    quality = fv["quality-thresholds"].value
    if quality is not None:
        try:
            quality = pretrained_lib.check_quality_thresholds(quality, "--quality-thresholds")
        except ValueError as exc:
            raise cli.UsageError(cli.message(exc)) from None
    directory = fv.out if fv.out is not None else pretrained_lib.package_directory()
    io.check_output_dir(directory, "--out")
    known = pretrained_lib.read_registry(directory)
    entry = pretrained_lib.export(fv.workdir, name, fv.which, directory, fv["config-name"].value, quality)
    path = os.path.join(directory, entry["file"])
    replaced = f" (replaces the entry of SHA-256 {known[name]['sha256']})" if name in known else ""
    print(f"{path}: {entry['bytes']} bytes, {entry['parameters']} parameters, sha256 {entry['sha256']}")
    print(f"registered as {name!r} in {os.path.join(directory, pretrained_lib.REGISTRY_FILE)}{replaced}:")
    print(json.dumps({name: entry}, indent=2))
    if not os.path.isfile(os.path.join(directory, entry["card"])):
        print(f"model card {os.path.join(directory, entry['card'])} does not exist yet: write it")


def main(argv=None) -> int:
    return cli.main(define_flags, run, argv, doc=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
