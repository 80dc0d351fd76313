"""SDSS six-parameter PSF model (psField form), as a formula and as a GalSim profile.

The psField r-band PSF, radius r in pixels, relative to its peak-normalized terms:

    PSF(r) ~ exp(-r^2 / (2 s1^2)) + b exp(-r^2 / (2 s2^2)) + p0 (1 + r^2 / (beta sP^2))^(-beta / 2)

Parameters are ordered ``(s1, s2, sP, beta, b, p0)`` (``PSF_PARAM_NAMES``); s1, s2, sP in pixels.
The power-law term is a Moffat profile with index beta/2 and scale radius sP * sqrt(beta), so the
PSF is two Gaussians plus a Moffat that GalSim draws analytically. The Moffat is truncated at
``trunc_pixels`` and the whole PSF is normalized to unit integral (each term keeps its relative peak
weight, as in the formula).
"""

from __future__ import annotations

import galsim
import numpy as np
from scipy import integrate, optimize, special

PSF_PARAM_NAMES = ("psf_sigma1", "psf_sigma2", "psf_sigmap", "psf_beta", "psf_b", "psf_p0")
DEFAULT_TRUNC_PIXELS = 25.0


def validate_psf_params(params, where: str = "PSF parameters") -> np.ndarray:
    """Returns params as float64 [..., 6]; raises ValueError naming ``where`` if any is invalid."""
    params = np.asarray(params, dtype=np.float64)
    if params.shape[-1:] != (6,):
        raise ValueError(f"{where}: expected 6 PSF parameters {PSF_PARAM_NAMES}, got shape {params.shape}")
    flat = params.reshape(-1, 6)
    for k, p in enumerate(flat):
        label = where if flat.shape[0] == 1 else f"{where}[{k}]"
        if not np.all(np.isfinite(p)):
            raise ValueError(f"{label}: PSF parameters must be finite, got {dict(zip(PSF_PARAM_NAMES, p))}")
        for name, value in zip(PSF_PARAM_NAMES[:3], p[:3]):
            if value <= 0:
                raise ValueError(f"{label}: {name} must be a positive width in pixels, got {value}")
        if p[3] <= 2:
            raise ValueError(f"{label}: psf_beta must be > 2 (finite Moffat flux), got {p[3]}")
        if p[4] < 0 or p[5] < 0:
            raise ValueError(f"{label}: psf_b and psf_p0 must be >= 0, got b={p[4]}, p0={p[5]}")
    return params


def term_fluxes(params, trunc_pixels: float = DEFAULT_TRUNC_PIXELS) -> np.ndarray:
    """Integrals of the three peak-normalized terms (Gaussian 1, Gaussian 2, truncated Moffat), unnormalized."""
    s1, s2, sp, beta, b, p0 = np.asarray(params, dtype=np.float64)
    n = beta / 2.0
    a = sp * np.sqrt(beta)
    moffat = p0 * np.pi * a**2 * (1.0 - (1.0 + trunc_pixels**2 / a**2) ** (1.0 - n)) / (n - 1.0)
    return np.array([2 * np.pi * s1**2, b * 2 * np.pi * s2**2, moffat])


def profile(r, params, trunc_pixels: float = DEFAULT_TRUNC_PIXELS) -> np.ndarray:
    """Unit-integral PSF surface density (per pixel^2) at radius ``r`` pixels; zero beyond the truncation."""
    s1, s2, sp, beta, b, p0 = np.asarray(params, dtype=np.float64)
    r2 = np.asarray(r, dtype=np.float64) ** 2
    moffat = np.where(r2 <= trunc_pixels**2, p0 * (1 + r2 / (beta * sp**2)) ** (-beta / 2), 0.0)
    value = np.exp(-r2 / (2 * s1**2)) + b * np.exp(-r2 / (2 * s2**2)) + moffat
    return value / term_fluxes(params, trunc_pixels).sum()


def radial_transfer(k, params, trunc_pixels: float = DEFAULT_TRUNC_PIXELS, num_radii: int = 251) -> np.ndarray:
    """Fourier transform of the unit-integral PSF at wavenumbers ``k`` [n] (radians per pixel).

    ``params`` [6] or [K, 6]; returns [n] or [K, n]. Gaussian terms analytically; the truncated Moffat
    by a Hankel transform (Simpson's rule on ``num_radii`` radii, one Bessel matrix shared by all
    fields). Agrees with GalSim's ``kValue`` of :func:`galsim_psf` to about 1e-5, and a whole bank costs
    milliseconds instead of GalSim's truncated-Moffat set-up (about 30 ms per field).
    """
    params = np.asarray(params, dtype=np.float64)
    flat = params.reshape(-1, 6)
    k = np.asarray(k, dtype=np.float64).ravel()
    s1, s2, sp, beta, b, p0 = (flat[:, i : i + 1] for i in range(6))
    fluxes = np.stack([term_fluxes(p, trunc_pixels) for p in flat])
    fluxes = fluxes / fluxes.sum(axis=1, keepdims=True)
    value = fluxes[:, :1] * np.exp(-0.5 * (k * s1) ** 2) + fluxes[:, 1:2] * np.exp(-0.5 * (k * s2) ** 2)
    r = np.linspace(0.0, trunc_pixels, num_radii)
    moffat = (1 + r**2 / (beta * sp**2)) ** (-beta / 2) * 2 * np.pi * r  # [K, num_radii]
    simpson = integrate.simpson(np.eye(num_radii), x=r, axis=1)  # quadrature weights
    bessel = special.j0(k[:, None] * r[None, :]) * simpson  # [n, num_radii]
    hankel = (moffat @ bessel.T) / (moffat @ simpson)[:, None]
    value = value + fluxes[:, 2:3] * hankel
    return value.reshape(params.shape[:-1] + k.shape)


def galsim_psf(params, trunc_pixels: float = DEFAULT_TRUNC_PIXELS, gsparams=None) -> galsim.GSObject:
    """The PSF as a unit-flux GalSim Sum of two Gaussians and a truncated Moffat (lengths in pixels)."""
    s1, s2, sp, beta, b, p0 = validate_psf_params(params)
    fluxes = term_fluxes((s1, s2, sp, beta, b, p0), trunc_pixels)
    fluxes = fluxes / fluxes.sum()
    terms = [galsim.Gaussian(sigma=s1, flux=fluxes[0], gsparams=gsparams)]
    if fluxes[1] > 0:
        terms.append(galsim.Gaussian(sigma=s2, flux=fluxes[1], gsparams=gsparams))
    if fluxes[2] > 0:
        terms.append(
            galsim.Moffat(
                beta=beta / 2, scale_radius=sp * np.sqrt(beta), trunc=trunc_pixels, flux=fluxes[2], gsparams=gsparams
            )
        )
    return galsim.Sum(terms, gsparams=gsparams) if len(terms) > 1 else terms[0]


def fwhm_pixels(params, trunc_pixels: float = DEFAULT_TRUNC_PIXELS) -> float:
    """Full width at half maximum of the (unpixelized) profile, in pixels."""
    peak = profile(0.0, params, trunc_pixels)
    half = optimize.brentq(lambda r: profile(r, params, trunc_pixels) - peak / 2, 1e-6, trunc_pixels)
    return 2.0 * half


def fit_psf_params(
    radius, density, weights=None, initial=(1.5, 3.5, 2.0, 3.5, 0.1, 0.005), max_p0: float = 0.05
) -> np.ndarray:
    """Least-squares fit of the six parameters to a radial PSF profile.

    ``radius`` in pixels; ``density`` a unit-integral surface density sampled at ``radius`` (e.g. a
    PSF image's radial profile). Bounded as psField fits are in practice (s2 >= 1.5 s1, 2.2 <= beta <= 8,
    0 <= b <= 1, 0 <= p0 <= ``max_p0``), so that the power law describes the wings, not the core.
    Returns ``(s1, s2, sP, beta, b, p0)``.
    """
    radius = np.asarray(radius, dtype=np.float64)
    density = np.asarray(density, dtype=np.float64)
    weights = np.ones_like(density) if weights is None else np.asarray(weights, dtype=np.float64)
    peak = density.max()

    def unpack(theta):
        s1, ratio, sp, beta, b, p0 = theta
        return np.array([s1, s1 * ratio, sp, beta, b, p0])

    def residual(theta):
        # untruncated model for the fit (the truncation at 25+ pixels changes nothing fitted)
        return weights * (profile(radius, unpack(theta), trunc_pixels=1e4) - density) / peak

    s1, s2, sp, beta, b, p0 = initial
    theta0 = np.array([s1, max(s2 / s1, 1.6), sp, beta, b, min(p0, max_p0 / 2)])
    lower = [0.1, 1.5, 0.1, 2.2, 0.0, 0.0]
    upper = [20.0, 10.0, 20.0, 8.0, 1.0, max_p0]
    result = optimize.least_squares(residual, theta0, bounds=(lower, upper), method="trf", x_scale="jac", max_nfev=5000)
    return unpack(result.x)


def pixelized_profile(dx, dy, params, oversample: int = 4, trunc_pixels: float = 1e4) -> np.ndarray:
    """The unit-integral PSF integrated over unit pixels centred ``(dx, dy)`` pixels from its centre (the mean
    of ``oversample`` x ``oversample`` sub-pixel samples): what a PSF image holds, the pixel included."""
    offsets = (np.arange(oversample) + 0.5) / oversample - 0.5
    sx = np.asarray(dx, np.float64)[..., None, None] + offsets[:, None]
    sy = np.asarray(dy, np.float64)[..., None, None] + offsets[None, :]
    return profile(np.hypot(sx, sy), params, trunc_pixels).mean(axis=(-2, -1))


def fit_psf_image(image, oversample: int = 4, max_p0: float = 0.05) -> tuple[np.ndarray, float]:
    """The six parameters of a PSF image and the fit's relative residual.

    ``image`` [h, w]: a PSF image (a star's or a PSF model's, background-subtracted, any normalization) at the
    pixel scale of the image it describes, pixel-integrated as images are. The radial profile around the
    centroid gives a first fit (:func:`fit_psf_params`), then the six parameters, the centre and the flux are
    fitted to the pixels with the pixel-integrated model (:func:`pixelized_profile`), within
    :func:`fit_psf_params`'s bounds. Returns ``(params [6], residual)``, the residual being
    ``||model - image|| / ||image||`` over the pixels (about 1e-3 for an image drawn from the model). ValueError
    for an image that cannot be a PSF (not 2-D, smaller than 7 x 7, non-finite, no positive peak).
    """
    image = np.asarray(image, np.float64)
    if image.ndim != 2 or min(image.shape) < 7:
        raise ValueError(f"a PSF image must be 2-D and at least 7 x 7 pixels, got shape {image.shape}")
    if not np.all(np.isfinite(image)):
        raise ValueError("the PSF image has NaN or infinite pixels")
    total = image.sum()
    if not total > 0 or image.max() <= 0:
        raise ValueError(f"the PSF image has no positive flux (sum {total:g}, max {image.max():g})")
    data = image / total
    rows, cols = np.indices(data.shape, dtype=np.float64)
    peak = np.unravel_index(np.argmax(data), data.shape)
    window = (np.abs(rows - peak[0]) <= 2) & (np.abs(cols - peak[1]) <= 2)
    weights = np.where(window, np.clip(data, 0, None), 0.0)
    cy, cx = (weights * rows).sum() / weights.sum(), (weights * cols).sum() / weights.sum()
    radius = np.hypot(rows - cy, cols - cx).ravel()
    first = fit_psf_params(radius, data.ravel(), max_p0=max_p0)
    s1, s2, sp, beta, b, p0 = first

    def unpack(theta):
        return np.array([theta[0], theta[0] * theta[1], *theta[2:6]]), theta[6], theta[7], theta[8]

    def residual(theta):
        params, x0, y0, flux = unpack(theta)
        return (flux * pixelized_profile(cols - x0, rows - y0, params, oversample) - data).ravel()

    theta0 = np.array([s1, s2 / s1, sp, beta, b, p0, cx, cy, 1.0])
    lower = [0.1, 1.5, 0.1, 2.2, 0.0, 0.0, cx - 2, cy - 2, 0.5]
    upper = [20.0, 10.0, 20.0, 8.0, 1.0, max_p0, cx + 2, cy + 2, 2.0]
    theta0 = np.clip(theta0, np.array(lower) + 1e-9, np.array(upper) - 1e-9)
    result = optimize.least_squares(residual, theta0, bounds=(lower, upper), method="trf", x_scale="jac", max_nfev=500)
    params = unpack(result.x)[0]
    return params, float(np.linalg.norm(result.fun) / np.linalg.norm(data))
