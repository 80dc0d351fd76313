"""Builds a bank of SYNTHETIC SDSS-like r-band fields (no real survey measurements) as a field bank .npz.

    python -m npejax.synthetic_bank --out npejax/assets/synthetic_sdss_r_bank.npz  # seed 0, 500 fields
    python -m npejax.synthetic_bank --bank survey --out npejax/assets/synthetic_sdss_r_survey_bank.npz
    python -m npejax.synthetic_bank --out bank.npz [--bank synthetic|survey] [--num-fields N] [--seed S]

With the defaults it rebuilds the default bank shipped in ``npejax/assets`` (``config.fields.bank =
"synthetic"``, about a minute per 500 fields on one core; how the fields are drawn:
:mod:`npejax.sim.synthetic_bank`) and prints its PSF FWHM and sky quartiles. ``--bank survey`` writes the bank
that spans the survey instead (``config.fields.bank = "survey"``, under a second; :mod:`npejax.sim.survey_bank`)
and prints the quartiles and ranges of its effective PSF width, FWHM, sky and PSF shape parameters. Both are
SYNTHETIC; the same flags write the same arrays.
"""

from __future__ import annotations

from absl import flags

from npejax import cli


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("out", None, "Output .npz path.", flag_values=fv, required=True)
    flags.DEFINE_integer("num-fields", 500, "Number of fields.", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Random seed.", lower_bound=0, flag_values=fv)
    flags.DEFINE_enum(
        "bank",
        "synthetic",
        ["synthetic", "survey"],
        "Which bank: the default one-parameter PSF family, or the bank that spans the survey.",
        flag_values=fv,
    )
    cli.define_underscore_aliases(fv)  # --num_fields


def run(fv: flags.FlagValues) -> None:
    from npejax.sim import survey_bank, synthetic_bank  # deferred: GalSim and SciPy load after the command line

    out = fv["out"].value
    module = survey_bank if fv.bank == "survey" else synthetic_bank
    make = survey_bank.make_survey_bank if fv.bank == "survey" else synthetic_bank.make_bank
    bank = make(fv["num-fields"].value, fv["seed"].value)
    bank.save(out)
    print(f"wrote {len(bank)} synthetic fields ({fv.bank} bank) to {out}")
    for key, value in module.summary(bank).items():
        print(f"  {key}: {value}")


def main(argv=None) -> int:
    return cli.main(define_flags, run, argv, doc=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
