"""A SYNTHETIC SDSS r-band field bank that spans the survey: all six PSF parameters, the sky and its gradient vary.

The embedded default bank (:mod:`npejax.sim.synthetic_bank`) is a one-parameter PSF family: every field has
p0 = 0.05 and s2 = 1.5 s1 (its physical profile fitted with the fit at its bounds), and its PSFs are scaled to
the SDSS *FWHM* quartiles although SDSS quotes the *effective width* (below). This bank is drawn from the
published facts instead, independently where they are independent, and widened to the survey's edges. It is
still SYNTHETIC: no field is a real survey measurement. ``make_survey_bank(500, seed=0)`` is shipped as
``npejax/assets/synthetic_sdss_r_survey_bank.npz`` (``config.fields.bank = "survey"``); the command
``python -m npejax.synthetic_bank --bank survey --out PATH`` writes it (under a second).

Facts (``FACTS`` holds each number with its source; :func:`facts_table` prints them):

* PSF width: the SDSS DR1 r-band quartiles of the psField ``psf_width``, 1.30 / 1.43 / 1.58 arcsec
  (sdss.org/DR7/products/general/seeing.html). ``psf_width`` is an *effective* width, 0.664 x pixel scale x
  sqrt(n_eff), n_eff = 1 / integral(PSF^2), of the psField two-Gaussian fit: measured here on the 10 rows
  (5 bands x 2 fields) of the two real psField files kept in the authors' repository history
  (prob-ml/bliss, ``psField-000094-1-0012.fits`` at commit 6728848a and ``psField-002583-2-0136.fit`` at
  ced7d71e), where that formula reproduces ``psf_width`` to 1% and the FWHM of the six-parameter profile
  is 0.81-0.96 of it. The r-band FWHM of field 2583-2-136 is 0.85 arcsec (``psf_width`` 1.05 arcsec).
  This bank therefore draws the effective width (:func:`effective_width_arcsec`, the two Gaussian terms:
  within 3.2% of ``psf_width`` on those rows but the failed z fit of 94-1-12, 6.6% there) and scales s1,
  s2 to it.
* Sky brightness: the DR1 r-band quartiles 20.70 / 20.86 / 21.03 mag per arcsec^2 (same page).
* PSF shape: the ranges of the 10 real psField rows above, each widened by a margin (an assumption), for
  five independent quantities: s2/s1, the outer Gaussian's flux relative to the inner one, b (s2/s1)^2
  (0.095-0.50 in the real rows: b alone is not independent of s2/s1), the power-law wing's share of the flux
  (0.056-0.083), beta and sP; b and p0 follow from them. 2 of the 10 rows carry the pipeline's no-power-law
  values p0 = 1e-7, beta = 3, sP = 5 pixels (r band of 2583-2-136, u band of 94-1-12), so
  ``NO_WING_FRACTION`` = 0.2 of the fields do too.
* Gains: the SDSS r-band gain of each camcol (as the default bank); the two real r-band rows agree
  (camcol 1: 4.71, camcol 2: 4.60 e-/DN).

Assumptions (no survey-wide statistic found; stated in ``FACTS`` too): the shape parameters are independent
of each other and of the width (10 rows cannot measure a correlation); width and sky are independent; 10% of
the fields are spread log-uniformly over a widened range so that the edges of the survey are populated
(``COVER_FRACTION``; it moves the quartiles by under 0.03); the sky changes by 0-10% across a frame
(uniform), with a weak quadratic term, as the default bank's 1-6% widened (no survey statistic of
``ALLSKY`` gradients was found); calibration about 0.005 nmgy/DN as the default bank.

Every draw is stratified (one draw per equal-probability stratum, strata shuffled independently per
parameter: a Latin hypercube), so quantiles of the bank follow the stated laws closely at any size.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from npejax.sim import fields, synthetic_bank
from npejax.sim import psf as psf_lib

PIXEL_SCALE_ARCSEC = synthetic_bank.PIXEL_SCALE_ARCSEC
WIDTH_QUARTILES_ARCSEC = (1.30, 1.43, 1.58)  # psField psf_width (effective width), DR1 r band
SKY_QUARTILES_MAG_ARCSEC2 = (20.70, 20.86, 21.03)
WIDTH_RANGE_ARCSEC = (0.85, 2.6)
SKY_RANGE_MAG_ARCSEC2 = (19.5, 21.8)
COVER_FRACTION = 0.1
SIGMA_RATIO_RANGE = (1.5, 3.5)  # s2 / s1, log-uniform
OUTER_FLUX_RANGE = (0.07, 0.7)  # flux of the outer Gaussian over the inner one, b (s2/s1)^2, log-uniform
WING_FRACTION_RANGE = (0.03, 0.15)  # power-law share of the PSF's flux (inside the truncation), log-uniform
BETA_RANGE = (2.2, 4.0)  # uniform
SIGMAP_RANGE_PIXELS = (1.3, 6.0)  # log-uniform
NO_WING = dict(p0=1e-7, beta=3.0, sigmap=5.0)
NO_WING_FRACTION = 0.2
GRADIENT_RANGE = (0.0, 0.10)  # total relative sky change across the frame
CURVATURE_SIGMA = 0.02

_PSFIELD = (
    "prob-ml/bliss git history: psField-000094-1-0012.fits (commit 6728848a), psField-002583-2-0136.fit (ced7d71e)"
)
_DR1 = "http://www.sdss.org/DR7/products/general/seeing.html (DR1 r-band quartiles)"

# The 10 rows of the two real psField files (HDU 6; bands u g r i z), as read with astropy: (s1, s2, sP, beta, b, p0)
# in pixels, and psf_width in arcsec. Public SDSS data, kept here as the numbers this bank's ranges come from.
REAL_PSFIELD_ROWS = {
    "94-1-12": (
        ((1.6444, 3.5368, 5.0, 3.0, 0.05719, 1e-7), 1.781),
        ((1.6545, 3.1703, 2.9183, 3.2223, 0.05153, 0.010598), 1.735),
        ((1.4900, 2.9940, 2.8923, 3.2638, 0.04923, 0.010495), 1.592),
        ((1.5937, 3.3875, 4.1757, 2.4747, 0.03468, 0.0039978), 1.668),
        ((1.0628, 1.8700, 5.1949, 10.0, 3.3948, 0.042958), 1.781),
    ),
    "2583-2-136": (
        ((1.4197, 2.7289, 2.6377, 3.5126, 0.03947, 0.010329), 1.469),
        ((1.1545, 1.9855, 2.4982, 3.3236, 0.17002, 0.011207), 1.303),
        ((0.8802, 2.3084, 5.0, 3.0, 0.05885, 1e-7), 1.048),
        ((0.8861, 2.1307, 1.5580, 2.2803, 0.05741, 0.0098849), 0.999),
        ((1.1649, 3.4848, 2.2479, 3.1707, 0.01065, 0.010767), 1.149),
    ),
}
R_BAND = 2

FACTS = {
    "psf_width_quartiles_arcsec": (WIDTH_QUARTILES_ARCSEC, "fact", _DR1),
    "sky_quartiles_mag_arcsec2": (SKY_QUARTILES_MAG_ARCSEC2, "fact", _DR1),
    "psf_width_definition": (
        "0.664 * 0.396 * sqrt(n_eff) of the 2-Gaussian fit",
        "fact (measured: reproduces psf_width to 1% on 10 rows)",
        _PSFIELD,
    ),
    "psf_width_range_arcsec": (
        WIDTH_RANGE_ARCSEC,
        "assumption",
        "narrowest real row 0.999 (i) / 1.048 (r) arcsec, widened; DR1 upper quartile 1.58 (EDR: GOOD needs < 1.5)",
    ),
    "sky_range_mag_arcsec2": (SKY_RANGE_MAG_ARCSEC2, "assumption", "DR1 quartiles widened by about +-1 mag"),
    "sigma2_over_sigma1": (SIGMA_RATIO_RANGE, "fact-based range", "real rows 1.72-2.99, widened; " + _PSFIELD),
    "outer_gaussian_flux_ratio": (
        OUTER_FLUX_RANGE,
        "fact-based range",
        "b (s2/s1)^2 of the real rows 0.095-0.503 (one failed z fit: 10.5), widened; b follows (real 0.011-0.17)",
    ),
    "wing_flux_fraction": (
        WING_FRACTION_RANGE,
        "fact-based range",
        "real rows with a wing 0.056-0.083 (z: 0.10), widened; p0 follows (real 0.0040-0.0112)",
    ),
    "psf_beta": (BETA_RANGE, "fact-based range", "real rows 2.28-3.51 (z fit at its bound: 10), widened"),
    "psf_sigmap_pixels": (SIGMAP_RANGE_PIXELS, "fact-based range", "real rows 1.56-4.18 (no-wing rows 5.0), widened"),
    "no_wing_values": ((1e-7, 3.0, 5.0), "fact", "p0, beta, sP of 2 of the 10 real rows (r of 2583-2-136)"),
    "no_wing_fraction": (NO_WING_FRACTION, "assumption", "2 of 10 real rows"),
    "independence": ("shape parameters, width and sky independent", "assumption", "no survey-wide joint data found"),
    "cover_fraction": (COVER_FRACTION, "assumption", "log-uniform over the widened ranges, to populate the edges"),
    "sky_gradient_total": (GRADIENT_RANGE, "assumption", "default bank's 1-6% widened; no ALLSKY statistic found"),
    "r_gain_e_per_dn": (synthetic_bank.SDSS_R_GAINS, "fact", "SDSS camcol gains (default bank); real r rows agree"),
}


def effective_width_arcsec(params) -> np.ndarray:
    """psField ``psf_width`` convention: 0.664 x 0.396 x sqrt(n_eff) arcsec, n_eff = (int f)^2 / int f^2 of the
    two Gaussian terms ``f = exp(-r^2/2s1^2) + b exp(-r^2/2s2^2)`` (analytic). ``params`` [..., 6] -> [...]."""
    p = np.asarray(params, dtype=np.float64)
    s1, s2, b = p[..., 0], p[..., 1], p[..., 4]
    flux = 2 * np.pi * (s1**2 + b * s2**2)
    square = np.pi * s1**2 + 4 * np.pi * b * s1**2 * s2**2 / (s1**2 + s2**2) + np.pi * b**2 * s2**2
    return 0.664 * PIXEL_SCALE_ARCSEC * np.sqrt(flux**2 / square)


def _split_normal_cdf(x, quartiles):
    lo, med, hi = quartiles
    q75 = stats.norm.ppf(0.75)
    scale = np.where(x < med, (med - lo) / q75, (hi - med) / q75)
    return stats.norm.cdf((x - med) / scale)


def mixture_cdf(x, quartiles, bounds, log: bool):
    """CDF of the drawn law: (1 - COVER_FRACTION) x the split normal through ``quartiles`` truncated to
    ``bounds`` + COVER_FRACTION x uniform on ``bounds`` (all in log space when ``log``)."""
    t = np.log if log else np.asarray
    x, quartiles, (a, b) = t(np.asarray(x, np.float64)), t(np.asarray(quartiles, np.float64)), t(np.asarray(bounds))
    xc = np.clip(x, a, b)
    fa, fb = _split_normal_cdf(a, quartiles), _split_normal_cdf(b, quartiles)
    core = (_split_normal_cdf(xc, quartiles) - fa) / (fb - fa)
    return (1 - COVER_FRACTION) * core + COVER_FRACTION * (xc - a) / (b - a)


def _mixture_ppf(u, quartiles, bounds, log: bool):
    grid = np.exp(np.linspace(*np.log(bounds), 4001)) if log else np.linspace(*bounds, 4001)
    return np.interp(u, mixture_cdf(grid, quartiles, bounds, log), grid)


def _log_uniform(u, bounds):
    lo, hi = np.log(bounds)
    return np.exp(lo + u * (hi - lo))


def make_survey_bank(num_fields: int = 500, seed: int = 0) -> fields.FieldBank:
    """``num_fields`` SYNTHETIC fields drawn from the laws above; reproducible bit for bit for a seed."""
    rng = np.random.default_rng(seed)
    n = num_fields
    draw = lambda: synthetic_bank._stratified(rng, n)  # noqa: E731  (one Latin-hypercube column)
    width = _mixture_ppf(draw(), WIDTH_QUARTILES_ARCSEC, WIDTH_RANGE_ARCSEC, log=True)
    sky_mag = _mixture_ppf(draw(), SKY_QUARTILES_MAG_ARCSEC2, SKY_RANGE_MAG_ARCSEC2, log=False)
    ratio = _log_uniform(draw(), SIGMA_RATIO_RANGE)
    b = _log_uniform(draw(), OUTER_FLUX_RANGE) / ratio**2
    wing = _log_uniform(draw(), WING_FRACTION_RANGE)
    beta = BETA_RANGE[0] + draw() * (BETA_RANGE[1] - BETA_RANGE[0])
    sigmap = _log_uniform(draw(), SIGMAP_RANGE_PIXELS)
    no_wing = rng.permutation(n) < int(round(NO_WING_FRACTION * n))
    beta[no_wing], sigmap[no_wing] = NO_WING["beta"], NO_WING["sigmap"]
    unit = np.stack([np.ones(n), ratio, sigmap, beta, b, np.zeros(n)], axis=-1)
    s1 = width / effective_width_arcsec(unit)  # the effective width is linear in s1 at fixed s2/s1 and b
    psf_params = np.stack([s1, s1 * ratio, sigmap, beta, b, np.ones(n)], axis=-1)
    fluxes = np.stack([psf_lib.term_fluxes(p) for p in psf_params])  # Gaussians, and the wing at p0 = 1
    psf_params[:, 5] = np.where(no_wing, NO_WING["p0"], wing / (1 - wing) * fluxes[:, :2].sum(1) / fluxes[:, 2])

    camcol = rng.integers(0, 6, n)
    gain = np.asarray(synthetic_bank.SDSS_R_GAINS)[camcol]
    calibration = 0.005 * np.exp(rng.normal(0.0, 0.06, n))
    gradient = GRADIENT_RANGE[0] + draw() * (GRADIENT_RANGE[1] - GRADIENT_RANGE[0])
    direction = rng.uniform(0.0, 2 * np.pi, n)
    curvature = rng.normal(0.0, CURVATURE_SIGMA, n)
    sky_nmgy_per_pixel = 10 ** ((22.5 - sky_mag) / 2.5) * PIXEL_SCALE_ARCSEC**2
    sky_electrons = sky_nmgy_per_pixel * gain / calibration
    gh, gw = synthetic_bank.GRID_SHAPE
    vv, uu = np.meshgrid((np.arange(gh) + 0.5) / gh - 0.5, (np.arange(gw) + 0.5) / gw - 0.5, indexing="ij")
    ramp = np.cos(direction)[:, None, None] * uu + np.sin(direction)[:, None, None] * vv
    bowl = uu**2 + vv**2 - np.mean(uu**2 + vv**2)
    sky_grid = sky_electrons[:, None, None] * (1.0 + gradient[:, None, None] * ramp + curvature[:, None, None] * bowl)

    z_width = (np.log(width) - np.median(np.log(width))) / np.std(np.log(width))
    z_sky = (sky_mag - np.median(sky_mag)) / np.std(sky_mag)
    reference = int(np.argmin(z_width**2 + z_sky**2 + 10.0 * no_wing))  # a field with a wing
    description = (
        f"SYNTHETIC SDSS-like r-band field bank spanning the survey (npejax.sim.survey_bank, seed {seed}, "
        f"{n} fields): all six psField PSF parameters drawn independently from ranges of real psField rows, "
        "effective PSF width and sky brightness following the SDSS DR1 r-band quartiles, widened to the "
        "survey's edges; not real survey measurements."
    )
    return fields.FieldBank(
        names=np.array([f"survey-{k:04d}" for k in range(n)]),
        psf_params=psf_params,
        sky_grid=sky_grid,
        gain=gain,
        calibration=calibration,
        frame_shape=fields.SDSS_FRAME_SHAPE,
        reference=reference,
        synthetic=True,
        description=description,
    )


def sky_mag_arcsec2(bank: fields.FieldBank) -> np.ndarray:
    """Mean sky brightness of each field, mag per arcsec^2."""
    sky_nmgy = bank.sky_grid.mean(axis=(1, 2)) * bank.calibration / bank.gain / PIXEL_SCALE_ARCSEC**2
    return 22.5 - 2.5 * np.log10(sky_nmgy)


def summary(bank: fields.FieldBank) -> dict:
    """Quartiles and ranges (min, max) of a bank's effective PSF width, FWHM, sky and PSF shape parameters."""
    fwhm = np.array([psf_lib.fwhm_pixels(p) for p in bank.psf_params]) * PIXEL_SCALE_ARCSEC
    p = bank.psf_params
    columns = {
        "psf_width_arcsec": effective_width_arcsec(p),
        "fwhm_arcsec": fwhm,
        "sky_mag_arcsec2": sky_mag_arcsec2(bank),
        "sigma2_over_sigma1": p[:, 1] / p[:, 0],
        "psf_sigmap": p[:, 2],
        "psf_beta": p[:, 3],
        "psf_b": p[:, 4],
        "psf_p0": p[:, 5],
        "outer_gaussian_flux_ratio": p[:, 4] * (p[:, 1] / p[:, 0]) ** 2,
        "wing_flux_fraction": np.array([f[2] / f.sum() for f in map(psf_lib.term_fluxes, p)]),
        "sky_gradient_percent": 100 * np.ptp(bank.sky_grid, axis=(1, 2)) / bank.sky_grid.mean(axis=(1, 2)),
    }
    out = {}
    for key, values in columns.items():
        q = np.percentile(values, [25, 50, 75])
        out[key] = dict(quartiles=np.round(q, 4).tolist(), range=np.round([values.min(), values.max()], 4).tolist())
    out["reference"] = str(bank.names[bank.reference])
    return out


def facts_table() -> str:
    """The facts and assumptions behind the bank, one line each: name, value, kind, source."""
    return "\n".join(f"{key}: {value} [{kind}] {source}" for key, (value, kind, source) in FACTS.items())
