r"""Evaluates npejax networks, prediction catalogs and a Source Extractor baseline on a test set.

    python -m npejax.evaluate --workdir single=W1 --workdir unaware=W2 --workdir aware=W3 \
        --prior many|one --num-images N --out REPORT_DIR        # simulate N test images (cached)
    python -m npejax.evaluate --workdir aware=W3 --test-dir DATASET --out REPORT_DIR   # a fixed test set
    python -m npejax.evaluate --catalog mine=catalog.fits --test-dir DATASET --out REPORT_DIR
    python -m npejax.evaluate --pretrained cpu --prior many --num-images N --out REPORT_DIR
    npejax-evaluate ...   (the same flags)

``--workdir NAME=DIR`` (a training directory; its best checkpoint catalogs the test set), ``--pretrained
NAME`` (a network shipped with the package, ``npejax/pretrained``: the method NAME) and ``--catalog
NAME=FILE`` (a prediction catalog of the test set, FITS or CSV) repeat and combine; the names label the
methods in the report and must differ. The test set is ``--test-dir`` (simulated there with ``--num-images``
and the first network's config (or the first pretrained network's) when absent; resumable), by default
``REPORT_DIR/test-PRIOR``; a dataset of another split (train, val) is refused. What is computed and written
(metrics, CSV tables, figures, a gallery of test images with each method's detections, report.md), and what is
refused before any work (an ``--out`` that is a file or not writable, catalogs with missing columns, text,
NaN, image indices outside the test set or probabilities outside [0, 1]): :mod:`npejax.evaluation.evaluate`.
"""

from __future__ import annotations

from absl import flags

from npejax import cli
from npejax.schema import FIELD_PRIORS


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_multi_string("workdir", [], "NAME=DIR: a training directory (repeatable).", flag_values=fv)
    flags.DEFINE_multi_string(
        "pretrained", [], "NAME: a network shipped with the package, the method NAME (repeatable).", flag_values=fv
    )
    flags.DEFINE_multi_string(
        "catalog", [], "NAME=FILE: a prediction catalog of the test set (FITS/CSV; repeatable).", flag_values=fv
    )
    flags.DEFINE_enum("prior", "many", list(FIELD_PRIORS), "Test-set field prior when simulating.", flag_values=fv)
    flags.DEFINE_integer("num-images", None, "Simulate this many test images (cached in --test-dir).", flag_values=fv)
    flags.DEFINE_string("test-dir", None, "Test dataset directory (default: OUT/test-PRIOR).", flag_values=fv)
    flags.DEFINE_string("out", None, "Report directory.", flag_values=fv, required=True)
    flags.DEFINE_integer(
        "num-bootstrap", 200, "Bootstrap resamples of the test images (1-sigma bands).", flag_values=fv
    )
    flags.DEFINE_integer("num-bins", 10, "Equal-count magnitude (and SNR) bins.", flag_values=fv)
    flags.DEFINE_integer("num-workers", 2, "Simulation worker processes.", flag_values=fv)
    flags.DEFINE_boolean("no-baseline", False, "Skip Source Extractor.", flag_values=fv)
    flags.DEFINE_boolean("no-snr", False, "Skip the SNR-stratified metrics.", flag_values=fv)
    flags.DEFINE_boolean("no-ceiling", False, "Skip the r-band star/galaxy accuracy ceiling.", flag_values=fv)
    flags.DEFINE_integer(
        "ceiling-galaxies", 200, "Galaxies per bin for the r-band ceiling.", lower_bound=1, flag_values=fv
    )
    flags.DEFINE_integer("seed", 0, "Bootstrap seed.", flag_values=fv)


def run(fv: flags.FlagValues) -> None:
    from npejax.evaluation import evaluate  # deferred: JAX and GalSim load after the command line (fast --help)

    evaluate.evaluate(
        cli.parse_pairs(fv.workdir, "--workdir"),
        fv.out,
        prior=fv.prior,
        num_images=fv["num-images"].value,
        test_dir=fv["test-dir"].value,
        catalogs=cli.parse_pairs(fv.catalog, "--catalog"),
        baseline=not fv["no-baseline"].value,
        num_bootstrap=fv["num-bootstrap"].value,
        num_bins=fv["num-bins"].value,
        seed=fv.seed,
        num_workers=fv["num-workers"].value,
        snr=not fv["no-snr"].value,
        ceiling=not fv["no-ceiling"].value,
        ceiling_galaxies=fv["ceiling-galaxies"].value,
        pretrained=fv.pretrained,
    )


def main(argv=None) -> int:
    return cli.main(define_flags, run, argv, doc=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
