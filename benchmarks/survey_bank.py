"""The field bank that spans the survey against the facts it is drawn from, and the default bank beside it.

    python benchmarks/survey_bank.py --out runs/survey_bank          # survey_bank.png and survey_bank.md
    python benchmarks/survey_bank.py --out runs/survey_bank --bank path/to/bank.npz   # another bank

Twelve panels, the survey bank (``config.fields.bank = "survey"``, :mod:`npejax.sim.survey_bank`) in colour, the
default bank (``"synthetic"``) in grey: the cumulative distributions of the effective PSF width (psField
``psf_width``), the FWHM and the sky brightness with the SDSS DR1 r-band quartiles as points; histograms of the
PSF shape quantities with the rows of the two real psField files as ticks; the sky gradient across a frame; and
each bank's distances of its own fields (:meth:`npejax.sim.fields.FieldBank.distance`) with its 99.9th-percentile
threshold and the real r-band rows' distances. The caption names the sources. ``OUT/survey_bank.md`` is the
table of quartiles and ranges (the one in benchmarks/RESULTS.md). Both banks are SYNTHETIC.
"""

from __future__ import annotations

import os
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from npejax import cli, io  # noqa: E402
from npejax.sim import fields, psf, survey_bank  # noqa: E402

CAPTION = (
    "Both banks are SYNTHETIC. Sources: DR1 r-band quartiles of psf_width and sky (red points): "
    "sdss.org/DR7/products/general/seeing.html. Real psField rows (red ticks, r band taller): psField-000094-1-0012 "
    "and psField-002583-2-0136, HDU 6, bands ugriz, without the failed z fit of 94-1-12, from the prob-ml/bliss "
    "git history (commits 6728848a, ced7d71e). Shaded: the survey bank's stated range, widened from the real rows "
    "(an assumption; npejax/sim/survey_bank.py FACTS). Grey: the default bank (one PSF family: p0 = 0.05, "
    "s2 = 1.5 s1). Sky gradient: the ramp's range is shaded, the quadratic term adds to it."
)


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("out", None, "Output folder (survey_bank.png, survey_bank.md).", flag_values=fv, required=True)
    flags.DEFINE_string("bank", "survey", 'The bank to plot: "survey" or a .npz path.', flag_values=fv)


def quantities(bank: fields.FieldBank) -> dict:
    """Per field: the quantities plotted, by name."""
    p = bank.psf_params
    fluxes = np.stack([psf.term_fluxes(r) for r in p])
    return {
        "psf_width_arcsec": survey_bank.effective_width_arcsec(p),
        "fwhm_arcsec": np.array([psf.fwhm_pixels(r) for r in p]) * survey_bank.PIXEL_SCALE_ARCSEC,
        "sky_mag_arcsec2": survey_bank.sky_mag_arcsec2(bank),
        "sigma2_over_sigma1": p[:, 1] / p[:, 0],
        "outer_gaussian_flux_ratio": p[:, 4] * (p[:, 1] / p[:, 0]) ** 2,
        "wing_flux_fraction": fluxes[:, 2] / fluxes.sum(axis=1),
        "psf_beta": p[:, 3],
        "psf_sigmap": p[:, 2],
        "psf_b": p[:, 4],
        "psf_p0": p[:, 5],
        "sky_gradient_percent": 100 * np.ptp(bank.sky_grid, axis=(1, 2)) / bank.sky_grid.mean(axis=(1, 2)),
    }


def real_rows() -> tuple[dict, np.ndarray]:
    """The same quantities for the real psField rows (no sky), and which of them are r band."""
    rows, widths, r_band = [], [], []
    for field in survey_bank.REAL_PSFIELD_ROWS.values():
        for band, (params, width) in enumerate(field):
            if params[3] < 10:  # the failed z fit of 94-1-12
                rows.append(params), widths.append(width), r_band.append(band == survey_bank.R_BAND)
    p = np.array(rows)
    fluxes = np.stack([psf.term_fluxes(r) for r in p])
    out = {
        "psf_width_arcsec": np.array(widths),
        "fwhm_arcsec": np.array([psf.fwhm_pixels(r) for r in p]) * survey_bank.PIXEL_SCALE_ARCSEC,
        "sigma2_over_sigma1": p[:, 1] / p[:, 0],
        "outer_gaussian_flux_ratio": p[:, 4] * (p[:, 1] / p[:, 0]) ** 2,
        "wing_flux_fraction": fluxes[:, 2] / fluxes.sum(axis=1),
        "psf_beta": p[:, 3],
        "psf_sigmap": p[:, 2],
        "psf_b": p[:, 4],
        "psf_p0": p[:, 5],
        "params": p,
    }
    return out, np.array(r_band)


STATED = {  # the survey bank's stated range of each quantity (shaded)
    "psf_width_arcsec": survey_bank.WIDTH_RANGE_ARCSEC,
    "sky_mag_arcsec2": survey_bank.SKY_RANGE_MAG_ARCSEC2,
    "sigma2_over_sigma1": survey_bank.SIGMA_RATIO_RANGE,
    "outer_gaussian_flux_ratio": survey_bank.OUTER_FLUX_RANGE,
    "wing_flux_fraction": survey_bank.WING_FRACTION_RANGE,
    "psf_beta": survey_bank.BETA_RANGE,
    "psf_sigmap": survey_bank.SIGMAP_RANGE_PIXELS,
    "sky_gradient_percent": tuple(100 * np.array(survey_bank.GRADIENT_RANGE)),
}
LOG_AXES = {"outer_gaussian_flux_ratio", "wing_flux_fraction", "psf_b", "psf_p0", "psf_sigmap"}
QUARTILE_FACTS = {
    "psf_width_arcsec": survey_bank.WIDTH_QUARTILES_ARCSEC,
    "sky_mag_arcsec2": survey_bank.SKY_QUARTILES_MAG_ARCSEC2,
}


def table(bank_q: dict, default_q: dict) -> str:
    """Markdown: quartiles and range of each quantity in both banks, and the fact or stated range."""
    lines = [
        "| quantity | survey bank: quartiles | survey bank: range | fact / stated range | default bank: range |",
        "|---|---|---|---|---|",
    ]
    for key, values in bank_q.items():
        q = np.percentile(values, [25, 50, 75])
        fact = QUARTILE_FACTS.get(key)
        stated = f"quartiles {' / '.join(f'{v:g}' for v in fact)}; " if fact else ""
        stated += f"range {STATED[key][0]:g}-{STATED[key][1]:g}" if key in STATED else "(follows)"
        lo, hi = values.min(), values.max()
        dlo, dhi = default_q[key].min(), default_q[key].max()
        lines.append(
            f"| {key} | {q[0]:.3g} / {q[1]:.3g} / {q[2]:.3g} | {lo:.3g}-{hi:.3g} | {stated} | {dlo:.3g}-{dhi:.3g} |"
        )
    return "\n".join(lines) + "\n"


def plot(bank: fields.FieldBank, default: fields.FieldBank, path: str) -> None:
    q, d = quantities(bank), quantities(default)
    real, r_band = real_rows()
    fig, axes = plt.subplots(3, 4, figsize=(17, 11.5))
    for ax, key in zip(axes.ravel(), list(q)):
        if key in STATED:
            ax.axvspan(*STATED[key], color="C0", alpha=0.08)
        if key in ("psf_width_arcsec", "fwhm_arcsec", "sky_mag_arcsec2"):
            for values, style in ((q[key], dict(color="C0", label="survey bank")), (d[key], dict(color="0.5"))):
                ax.plot(np.sort(values), (np.arange(len(values)) + 0.5) / len(values), **style)
            if key in QUARTILE_FACTS:
                ax.plot(QUARTILE_FACTS[key], [0.25, 0.5, 0.75], "o", color="C3", label="SDSS DR1 quartiles")
            ax.set_ylabel("fraction of fields")
        else:
            log = key in LOG_AXES
            both = np.concatenate([q[key], d[key], real.get(key, [])])
            both = both[both > 0] if log else both
            lo, hi = both.min(), both.max()
            bins = np.geomspace(lo, hi, 40) if log else np.linspace(lo, hi, 40)
            ax.hist(q[key], bins=bins, color="C0", alpha=0.7, label="survey bank")
            ax.hist(d[key], bins=bins, histtype="step", color="0.4", label="default bank")
            if log:
                ax.set_xscale("log")
            ax.set_ylabel("fields")
        if key in real:
            top = ax.get_ylim()[1]
            for value, is_r in zip(real[key], r_band):
                ax.plot([value, value], [0, top * (0.25 if is_r else 0.12)], color="C3", lw=2.5 if is_r else 1)
        ax.set_xlabel(key)
    ax = axes.ravel()[-1]
    sky = float(np.median(bank.background_nmgy()))
    for b, color, name in ((bank, "C0", "survey bank"), (default, "0.5", "default bank")):
        own = np.sort(b.distance(b.psf_params, b.background_nmgy()))
        ax.plot(own, (np.arange(len(own)) + 0.5) / len(own), color=color, label=name)
        ax.axvline(b.distance_threshold(), color=color, ls="--")
        for value in b.distance(real["params"][r_band], sky):
            ax.plot(value, 0.5, "v", color=color, ms=9)
    ax.set_xscale("log")
    ax.set_xlabel("distance from the bank\n(dashed: 99.9th percentile; v: real r rows)")
    ax.set_ylabel("fraction of the bank's fields")
    axes[0, 0].legend(loc="lower right", fontsize=8)
    axes[0, 3].legend(loc="upper right", fontsize=8)
    fig.text(0.01, 0.005, "\n".join(textwrap.wrap(CAPTION, 190)), fontsize=8.5, va="bottom")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    io.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=90))
    plt.close(fig)


def run(fv: flags.FlagValues) -> None:
    bank, default = fields.load_bank(fv.bank), fields.load_bank("synthetic")
    os.makedirs(fv.out, exist_ok=True)
    plot(bank, default, os.path.join(fv.out, "survey_bank.png"))
    text = table(quantities(bank), quantities(default))
    io.atomic_write(os.path.join(fv.out, "survey_bank.md"), text)
    print(text + f"wrote {os.path.join(fv.out, 'survey_bank.png')} and survey_bank.md")


if __name__ == "__main__":
    raise SystemExit(cli.main(define_flags, run, doc=__doc__))
