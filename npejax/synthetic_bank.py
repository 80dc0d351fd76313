"""Builds a bank of SYNTHETIC SDSS-like r-band fields (no real survey measurements) as a field bank .npz.

    python -m npejax.synthetic_bank --out npejax/assets/synthetic_sdss_r_bank.npz  # seed 0, 500 fields
    python -m npejax.synthetic_bank --out bank.npz [--num-fields N] [--seed S]

With the defaults it rebuilds the bank shipped in ``npejax/assets`` (about a minute per 500 fields on one
core); how the fields are drawn: :mod:`npejax.sim.synthetic_bank`. Prints the bank's PSF FWHM and sky
quartiles.
"""

from __future__ import annotations

from absl import flags

from npejax import cli


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("out", None, "Output .npz path.", flag_values=fv, required=True)
    flags.DEFINE_integer("num-fields", 500, "Number of fields.", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Random seed.", lower_bound=0, flag_values=fv)
    cli.define_underscore_aliases(fv)  # --num_fields


def run(fv: flags.FlagValues) -> None:
    from npejax.sim import synthetic_bank  # deferred: GalSim and SciPy load after the command line (fast --help)

    out = fv["out"].value
    bank = synthetic_bank.make_bank(fv["num-fields"].value, fv["seed"].value)
    bank.save(out)
    print(f"wrote {len(bank)} synthetic fields to {out}")
    for key, value in synthetic_bank.summary(bank).items():
        print(f"  {key}: {value}")


def main(argv=None) -> int:
    return cli.main(define_flags, run, argv, doc=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
