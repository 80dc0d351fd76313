r"""Evaluates npejax networks, prediction catalogs and a Source Extractor baseline on a test set.

    python -m npejax.evaluate --workdir single=W1 --workdir unaware=W2 --workdir aware=W3 \
        --prior many|one --num-images N --out REPORT_DIR        # simulate N test images (cached)
    python -m npejax.evaluate --workdir runs/aware --test-dir DATASET --out REPORT_DIR   # the method aware
    python -m npejax.evaluate --catalog mine=catalog.fits --test-dir DATASET --out REPORT_DIR
    python -m npejax.evaluate --pretrained cpu --prior many --num-images N --out REPORT_DIR   # a shipped network
    npejax-evaluate ...   (the same flags)

``--workdir NAME=DIR`` (a training directory; its best checkpoint catalogs the test set; ``--workdir DIR`` names
the method after the directory's base name, ``runs/cpu_small`` -> ``cpu_small``), ``--pretrained NAME`` (a network
shipped with the package, ``npejax/pretrained``: the method NAME) and ``--catalog NAME=FILE`` (a prediction catalog
of the test set, FITS or CSV) repeat and combine; the names label the methods in the report and must differ. The
test set is ``--test-dir`` (simulated there with ``--num-images`` and the config's simulator when absent;
resumable), by default ``REPORT_DIR/test-PRIOR``; a dataset of another split (train, val) is refused. The config is
``--config FILE`` (e.g. configs/default.py), else the first network's config.json (or the first pretrained
network's); the flags ``--num-bootstrap``, ``--num-bins``, ``--ceiling-galaxies``, ``--seed``, ``--[no]baseline``,
``--[no]snr`` and ``--[no]ceiling`` (the earlier ``--no-baseline``, ``--no-snr``, ``--no-ceiling`` still work, with
a warning) override the keys of its ``eval`` section (configs/default.py), which apply where they are not given
(catalogs alone and no ``--config``: the values of configs saved before that section existed;
:mod:`npejax.evaluation.settings`). What is computed and written (metrics, CSV tables, figures, a gallery of test
images with each method's detections, report.md), and what is refused before any work (an ``--out`` that is a file
or not writable, catalogs with missing columns, text, NaN, image indices outside the test set or probabilities
outside [0, 1]): :mod:`npejax.evaluation.evaluate`.
"""

from __future__ import annotations

import os

from absl import flags

from npejax import cli, io
from npejax.schema import FIELD_PRIORS

FROM_CONFIG = " (default: the config's eval.{})"
OLD = {
    "baseline": "no-baseline",
    "snr": "no-snr",
    "ceiling": "no-ceiling",
}  # the earlier spellings of --noX (deprecated)


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_multi_string(
        "workdir",
        [],
        "DIR or NAME=DIR: a training directory, the method NAME (default: the directory's base name; repeatable).",
        flag_values=fv,
    )
    flags.DEFINE_multi_string(
        "catalog", [], "NAME=FILE: a prediction catalog of the test set (FITS/CSV; repeatable).", flag_values=fv
    )
    flags.DEFINE_multi_string(
        "pretrained", [], "NAME: a network shipped with the package, the method NAME (repeatable).", flag_values=fv
    )
    cli.define_config(
        fv,
        "A config whose eval section (and, with --num-images, simulator) the evaluation uses (default: the first "
        "--workdir's config.json).",
        required=False,
    )
    flags.DEFINE_enum("prior", "many", list(FIELD_PRIORS), "Test-set field prior when simulating.", flag_values=fv)
    flags.DEFINE_integer("num-images", None, "Simulate this many test images (cached in --test-dir).", flag_values=fv)
    flags.DEFINE_string("test-dir", None, "Test dataset directory (default: OUT/test-PRIOR).", flag_values=fv)
    flags.DEFINE_string("out", None, "Report directory.", flag_values=fv, required=True)
    flags.DEFINE_integer(
        "num-bootstrap",
        None,
        "Bootstrap resamples of the test images (1-sigma bands)" + FROM_CONFIG.format("num_bootstrap"),
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "num-bins", None, "Equal-count magnitude (and SNR) bins" + FROM_CONFIG.format("num_bins"), flag_values=fv
    )
    flags.DEFINE_integer(
        "num-workers",
        None,
        "Simulation worker processes (default: the config's simulator.num_workers).",
        flag_values=fv,
    )
    cli.define_boolean(
        fv, "baseline", "Evaluate Source Extractor (sep) too" + FROM_CONFIG.format("baseline"), OLD["baseline"]
    )
    cli.define_boolean(fv, "snr", "Compute the SNR-stratified metrics" + FROM_CONFIG.format("snr"), OLD["snr"])
    cli.define_boolean(
        fv,
        "ceiling",
        "Compute the r-band star/galaxy accuracy ceiling (--noceiling: skip it; default: when the config's "
        "eval.ceiling_galaxies > 0)",
        OLD["ceiling"],
    )
    flags.DEFINE_integer(
        "ceiling-galaxies",
        None,
        "Galaxies per bin for the r-band ceiling" + FROM_CONFIG.format("ceiling_galaxies"),
        lower_bound=1,
        flag_values=fv,
    )
    flags.DEFINE_integer("seed", None, "Bootstrap seed" + FROM_CONFIG.format("seed"), flag_values=fv)
    cli.define_underscore_aliases(fv)


def run(fv: flags.FlagValues) -> None:
    from npejax.evaluation import evaluate  # deferred: JAX and GalSim load after the command line (fast --help)
    from npejax.evaluation.settings import EvalSettings  # deferred: as above

    for value in fv.workdir:  # a plain directory names the method by its base name: a file name in OUT
        name = os.path.basename(os.path.normpath(value))
        if "=" not in value and not io.PLAIN_NAME.match(name):
            raise cli.UsageError(
                f"--workdir {value}: its base name {name!r} cannot name the method (letters, digits, '_', '.' "
                f"and '-', starting with a letter or digit); give --workdir NAME={value}"
            )
    workdirs = cli.parse_pairs(fv.workdir, "--workdir", bare=True)
    baseline, snr, ceiling = (cli.boolean_value(fv, name, old) for name, old in OLD.items())
    settings = EvalSettings.create(
        fv.out,
        fv.config,
        workdirs=workdirs,
        catalogs=cli.parse_pairs(fv.catalog, "--catalog"),
        pretrained=fv.pretrained,
        prior=fv.prior,
        num_images=fv["num-images"].value,
        test_dir=fv["test-dir"].value,
        num_workers=fv["num-workers"].value,
        num_bootstrap=fv["num-bootstrap"].value,
        num_bins=fv["num-bins"].value,
        ceiling_galaxies=0 if ceiling is False else fv["ceiling-galaxies"].value,
        baseline=baseline,
        snr=snr,
        seed=fv.seed,
    )
    evaluate.evaluate(settings)


def main(argv=None) -> int:
    return cli.main(define_flags, run, argv, doc=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
