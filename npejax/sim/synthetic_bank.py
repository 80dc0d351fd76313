"""The embedded bank of SYNTHETIC SDSS-like r-band fields (no real survey measurements), and how it is built.

The shipped bank, ``npejax/assets/synthetic_sdss_r_bank.npz``, is ``make_bank(500, seed=0)``; the command
:mod:`npejax.synthetic_bank` writes it (``python -m npejax.synthetic_bank --out PATH``).

Per field, seeded and reproducible:

* PSF FWHM and sky brightness are stratified draws from split log-normal / split normal laws whose
  quartiles are the SDSS DR1 r-band quartiles (FWHM 1.30 / 1.43 / 1.58 arcsec; sky 20.70 / 20.86 /
  21.03 mag per arcsec^2).
* A physically motivated PSF, atmospheric turbulence (GalSim Kolmogorov) convolved with diffraction by
  the 2.5 m SDSS aperture with its central obscuration (Airy at 6166 A) and a small Gaussian for optics
  and guiding, scaled to the drawn FWHM, is fitted by the six-parameter psField form
  (:func:`npejax.sim.psf.fit_psf_params`) on its unpixelized radial profile (the renderer adds the pixel).
* The sky, converted to electrons with a typical gain (SDSS r-band gain of a random camcol) and
  calibration (about 0.005 nmgy/DN), gets a smooth gradient of a few percent across the frame plus a
  weak quadratic term, stored on a 6 x 8 node grid.

The reference field (single-field prior ``p_one``) is the one nearest the median FWHM and sky.
"""

from __future__ import annotations

import galsim
import numpy as np
from scipy import stats

from npejax.sim import fields
from npejax.sim import psf as psf_lib

PIXEL_SCALE_ARCSEC = 0.396
FWHM_QUARTILES_ARCSEC = (1.30, 1.43, 1.58)
SKY_QUARTILES_MAG_ARCSEC2 = (20.70, 20.86, 21.03)
SDSS_R_GAINS = (4.71, 4.6, 4.72, 4.76, 4.725, 4.895)  # e-/DN, camcols 1-6
GRID_SHAPE = (6, 8)
WAVELENGTH_NM = 616.6
APERTURE_M = 2.5
OBSCURATION = 0.27
_Q75 = stats.norm.ppf(0.75)


def _split_normal_ppf(u, quartiles):
    """Quantile function of a normal with different widths below and above the median."""
    lo, med, hi = quartiles
    z = stats.norm.ppf(u)
    return med + z * np.where(z < 0, (med - lo) / _Q75, (hi - med) / _Q75)


def _stratified(rng, n):
    """n uniforms, one in each of n equal strata, in random order."""
    return (rng.permutation(n) + rng.random(n)) / n


def physical_psf(fwhm_arcsec: float, optics_sigma_arcsec: float) -> galsim.GSObject:
    """Kolmogorov (x) obscured Airy (x) Gaussian with total FWHM close to ``fwhm_arcsec`` (arcsec units)."""
    airy = galsim.Airy(lam=WAVELENGTH_NM, diam=APERTURE_M, obscuration=OBSCURATION, scale_unit=galsim.arcsec)
    optics = galsim.Gaussian(sigma=optics_sigma_arcsec)
    atm_fwhm = np.sqrt(max(fwhm_arcsec**2 - (2.3548 * optics_sigma_arcsec) ** 2, 0.25 * fwhm_arcsec**2))
    return galsim.Convolve([galsim.Kolmogorov(fwhm=atm_fwhm), airy, optics])


def radial_profile(obj: galsim.GSObject, max_radius_pixels: float = 20.0, step_pixels: float = 0.25):
    """Unpixelized surface density per pixel^2 of a round profile along a ray; radii in pixels."""
    n = int(round(max_radius_pixels / step_pixels))
    scale = step_pixels * PIXEL_SCALE_ARCSEC
    image = obj.drawImage(nx=2 * n + 1, ny=2 * n + 1, scale=scale, method="no_pixel")
    row = image.array[n, n:].astype(np.float64)
    density = row / scale**2 * PIXEL_SCALE_ARCSEC**2
    return np.arange(n + 1) * step_pixels, density


def fit_field_psf(fwhm_arcsec: float, optics_sigma_arcsec: float, passes: int = 2) -> np.ndarray:
    """psField parameters of the physical PSF whose fitted FWHM is ``fwhm_arcsec`` (one rescaling pass)."""
    target = fwhm_arcsec
    for _ in range(passes):
        radius, density = radial_profile(physical_psf(target, optics_sigma_arcsec))
        weights = 1.0 / np.sqrt(density / density.max() + 1e-3)  # keep the wings in the fit
        params = psf_lib.fit_psf_params(radius, density, weights=weights)
        target *= fwhm_arcsec / (psf_lib.fwhm_pixels(params) * PIXEL_SCALE_ARCSEC)
    return params


def make_bank(num_fields: int = 500, seed: int = 0) -> fields.FieldBank:
    rng = np.random.default_rng(seed)
    fwhm_log = _split_normal_ppf(_stratified(rng, num_fields), np.log(FWHM_QUARTILES_ARCSEC))
    fwhm = np.exp(fwhm_log)
    sky_mag = _split_normal_ppf(_stratified(rng, num_fields), SKY_QUARTILES_MAG_ARCSEC2)
    optics_sigma = rng.uniform(0.1, 0.25, num_fields)
    camcol = rng.integers(0, 6, num_fields)
    gain = np.asarray(SDSS_R_GAINS)[camcol]
    calibration = 0.005 * np.exp(rng.normal(0.0, 0.06, num_fields))
    gradient = rng.uniform(0.01, 0.06, num_fields)  # total relative change across the frame
    direction = rng.uniform(0.0, 2 * np.pi, num_fields)
    curvature = rng.normal(0.0, 0.01, num_fields)

    sky_nmgy_per_pixel = 10 ** ((22.5 - sky_mag) / 2.5) * PIXEL_SCALE_ARCSEC**2
    sky_electrons = sky_nmgy_per_pixel * gain / calibration
    gh, gw = GRID_SHAPE
    v = (np.arange(gh) + 0.5) / gh - 0.5  # node positions across the frame, in frame units
    u = (np.arange(gw) + 0.5) / gw - 0.5
    vv, uu = np.meshgrid(v, u, indexing="ij")
    sky_grid = np.empty((num_fields, gh, gw))
    psf_params = np.empty((num_fields, 6))
    for k in range(num_fields):
        ramp = np.cos(direction[k]) * uu + np.sin(direction[k]) * vv
        bowl = uu**2 + vv**2 - np.mean(uu**2 + vv**2)
        sky_grid[k] = sky_electrons[k] * (1.0 + gradient[k] * ramp + curvature[k] * bowl)
        psf_params[k] = fit_field_psf(fwhm[k], optics_sigma[k])

    fitted_fwhm = np.array([psf_lib.fwhm_pixels(p) for p in psf_params]) * PIXEL_SCALE_ARCSEC
    z_fwhm = (np.log(fitted_fwhm) - np.median(np.log(fitted_fwhm))) / np.std(np.log(fitted_fwhm))
    z_sky = (sky_mag - np.median(sky_mag)) / np.std(sky_mag)
    reference = int(np.argmin(z_fwhm**2 + z_sky**2))
    description = (
        f"SYNTHETIC SDSS-like r-band field bank (npejax.synthetic_bank, seed {seed}, {num_fields} fields): "
        "PSFs are six-parameter psField fits to Kolmogorov x Airy x Gaussian profiles with FWHM and sky "
        "brightness matched to SDSS DR1 r-band quartiles; not real survey measurements."
    )
    return fields.FieldBank(
        names=np.array([f"synthetic-{k:04d}" for k in range(num_fields)]),
        psf_params=psf_params,
        sky_grid=sky_grid,
        gain=gain,
        calibration=calibration,
        frame_shape=fields.SDSS_FRAME_SHAPE,
        reference=reference,
        synthetic=True,
        description=description,
    )


def summary(bank: fields.FieldBank) -> dict:
    """Quartiles of PSF FWHM (arcsec) and sky brightness (mag/arcsec^2) of a bank."""
    fwhm = np.array([psf_lib.fwhm_pixels(p) for p in bank.psf_params]) * PIXEL_SCALE_ARCSEC
    sky_nmgy = bank.sky_grid.mean(axis=(1, 2)) * bank.calibration / bank.gain / PIXEL_SCALE_ARCSEC**2
    sky_mag = 22.5 - 2.5 * np.log10(sky_nmgy)
    q = lambda a: np.round(np.percentile(a, [25, 50, 75]), 3).tolist()
    relative_range = np.ptp(bank.sky_grid, axis=(1, 2)) / bank.sky_grid.mean(axis=(1, 2))
    return dict(
        fwhm_arcsec_quartiles=q(fwhm),
        sky_mag_arcsec2_quartiles=q(sky_mag),
        sky_gradient_percent_quartiles=q(100 * relative_range),
        reference=str(bank.names[bank.reference]),
        reference_psf=bank.psf_params[bank.reference].round(4).tolist(),
    )
