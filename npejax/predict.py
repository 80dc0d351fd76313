"""Catalogs images with a trained network.

    python -m npejax.predict --workdir runs/aware --input DATASET_DIR|images.npz|image.fits --out catalog.fits
    npejax-predict --workdir runs/aware --input image.fits --background 0.7 --field-id NAME --out catalog.csv

Loads the ``--checkpoint`` (best or latest) of a training directory (``python -m npejax.main``) and writes
one row per tile whose source probability exceeds ``--min-prob`` to ``--out`` (FITS or CSV by extension).
A FITS input needs ``--background`` and one of ``--psf-params`` and ``--field-id``. See
:mod:`npejax.nn.predictor` for the inputs and the catalog's columns.
"""

from __future__ import annotations

from absl import flags

from npejax import catalogs as catalog_lib
from npejax import cli
from npejax.nn import checkpoints, predictor


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("workdir", None, "Training directory (python -m npejax.main).", flag_values=fv,
                        required=True)
    flags.DEFINE_string("input", None, "Dataset directory, .npz (images, background, psf_params) or FITS image.",
                        flag_values=fv, required=True)
    flags.DEFINE_string("out", None, "Output catalog (.fits or .csv).", flag_values=fv, required=True)
    flags.DEFINE_enum("checkpoint", "best", list(checkpoints.WHICH), "Which checkpoint of --workdir.",
                      flag_values=fv)
    flags.DEFINE_float("min-prob", 0.5, "Keep tiles with prob_source above this.", flag_values=fv)
    flags.DEFINE_integer("batch-size", 256, "Images per network call.", lower_bound=1, flag_values=fv)
    flags.DEFINE_string("background", None, "FITS input: background in nmgy per pixel (a number or a FITS file).",
                        flag_values=fv)
    flags.DEFINE_string("psf-params", None, "FITS input: s1,s2,sP,beta,b,p0 (pixels).", flag_values=fv)
    flags.DEFINE_string("field-id", None, "FITS input: take the PSF from this field of --bank.", flag_values=fv)
    flags.DEFINE_string("bank", None, "Field bank for --field-id (default: the embedded synthetic bank).",
                        flag_values=fv)
    for name in ("min-prob", "batch-size", "psf-params", "field-id"):
        flags.DEFINE_alias(name.replace("-", "_"), name, flag_values=fv)


def run(fv: flags.FlagValues) -> None:
    catalog_lib.table_format(fv.out)  # a bad extension fails before the network loads
    net = predictor.Predictor.from_workdir(fv.workdir, fv.checkpoint)
    images, background, psf_params = predictor.load_inputs(fv.input, fv.background, fv["psf-params"].value,
                                                           fv["field-id"].value, fv.bank)
    table = net.catalog(images, background, psf_params, fv["min-prob"].value, fv["batch-size"].value)
    catalog_lib.write_table(table, fv.out)
    print(f"{len(table)} sources in {len(images)} images -> {fv.out}")


def main(argv=None) -> int:
    return cli.main(define_flags, run, argv, doc=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
