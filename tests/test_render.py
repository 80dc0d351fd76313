"""Renderer: flux conservation, the six-parameter PSF profile, noise variance, edges, reference path, and the
brightest stars of the prior (real-space path)."""

import dataclasses

import numpy as np
import pytest

from configs import default  # the repository root is on sys.path (conftest.py)
from npejax import catalogs, schema
from npejax.sim import fields, prior, psf, render

pytestmark = pytest.mark.fast  # the whole file is in the fast tier


def _render_config(**changes):
    """The renderer settings of configs/default.py, with ``changes``."""
    return dataclasses.replace(render.RenderConfig.from_config(default.get_config().render), **changes)


@pytest.fixture(scope="module")
def bank():
    return fields.load_bank()


def _one_source(x, y, flux, galaxy=False, **shape):
    cat = {k: np.zeros((1, 2), bool if k == "is_galaxy" else np.float32) for k in schema.CATALOG_KEYS}
    cat["n_sources"] = np.array([1], np.int32)
    cat["x"][0, 0], cat["y"][0, 0], cat["flux"][0, 0], cat["is_galaxy"][0, 0] = x, y, flux, galaxy
    for key, value in shape.items():
        cat[key][0, 0] = value
    return cat


def _draw(bank, cat, field, noise="none", method="kspace", seed=0):
    r = render.Renderer(bank, (80, 80), _render_config(noise=noise, method=method))
    n = len(cat["n_sources"])
    return r.render(cat, np.full(n, field), np.tile([[300, 400]], (n, 1)), np.random.default_rng(seed))


@pytest.mark.parametrize("field", [0, 123, 499])
@pytest.mark.parametrize("offset", [(0.5, 0.5), (0.13, 0.91)])
def test_star_flux_is_conserved(bank, field, offset):
    images, _ = _draw(bank, _one_source(40 + offset[0], 38 + offset[1], 12.5), field)
    assert images.sum() == pytest.approx(12.5, rel=0.01)


def _pixel_integrated_formula(params, x, y, size=80, sub=10):
    """The six-parameter formula (unit integral) integrated over pixels by sub-sampling."""
    c0, r0 = int(x) - 12, int(y) - 12
    fine = (np.arange(25 * sub) + 0.5) / sub
    yy, xx = np.meshgrid(r0 + fine, c0 + fine, indexing="ij")
    density = psf.profile(np.hypot(xx - x, yy - y), params)
    out = np.zeros((size, size))
    out[r0 : r0 + 25, c0 : c0 + 25] = density.reshape(25, sub, 25, sub).mean(axis=(1, 3))
    return out


@pytest.mark.parametrize("field", [0, 250])
def test_star_matches_six_parameter_formula(bank, field):
    x, y = 41.3, 37.8
    images, _ = _draw(bank, _one_source(x, y, 1.0), field)
    expected = _pixel_integrated_formula(bank.psf_params[field], x, y)
    assert np.abs(images[0] - expected).max() < 0.01 * expected.max()


@pytest.mark.parametrize("noise", ["gaussian", "poisson"])
def test_empty_image_variance_matches_background(bank, noise):
    cat = _one_source(10, 10, 1.0)
    cat["n_sources"][:] = 0
    cat = {k: np.repeat(v, 20, axis=0) for k, v in cat.items()}
    field = 77
    images, background = _draw(bank, cat, field, noise=noise)
    to_nmgy = bank.calibration[field] / bank.gain[field]
    sky_e = bank.background_electrons(field, (300, 400), (80, 80))
    np.testing.assert_allclose(background[0], sky_e * to_nmgy, rtol=1e-5)
    predicted = sky_e * to_nmgy**2  # variance in nmgy^2: electrons times (nmgy per electron)^2
    ratio = images.var(axis=0, ddof=1) / predicted
    assert ratio.mean() == pytest.approx(1.0, abs=0.03)
    assert abs(images.mean()) < 3 * np.sqrt(predicted.mean() / images.size)


def test_galaxy_flux_is_conserved(bank):
    cat = _one_source(
        40.2, 39.6, 20.0, galaxy=True, disk_frac=0.7, angle=0.6, disk_q=0.5, bulge_q=0.8, disk_a=1.5, bulge_a=0.6
    )
    images, _ = _draw(bank, cat, 10)
    assert images.sum() == pytest.approx(20.0, rel=0.02)


def test_edge_source_is_partial_and_not_wrapped(bank):
    images, _ = _draw(bank, _one_source(0.2, 40.0, 50.0), 5)
    assert 0.45 * 50 < images.sum() < 0.75 * 50
    assert np.abs(images[0, :, -20:]).max() < 1e-4 * images.max()


def test_kspace_matches_galsim_drawimage(bank):
    p = prior.CatalogPrior.from_config(default.get_config().prior, (80, 80))
    rng = np.random.default_rng(3)
    cat = p.sample(rng, 12)
    fid = bank.sample_fields(rng, 12)
    org = bank.sample_crop_origins(rng, 12, (80, 80))
    outs = []
    for method in ("kspace", "drawimage"):
        r = render.Renderer(bank, (80, 80), _render_config(noise="none", method=method))
        outs.append(r.render(cat, fid, org, np.random.default_rng(0))[0])
    peak = np.maximum(np.abs(outs[1]).max(axis=(1, 2)), 1e-12)
    assert np.all(np.abs(outs[0] - outs[1]).max(axis=(1, 2)) < 0.005 * peak)


def test_noise_is_reproducible_and_config_validated(bank):
    cat = _one_source(30, 30, 5.0)
    a, _ = _draw(bank, cat, 3, noise="gaussian", seed=4)
    b, _ = _draw(bank, cat, 3, noise="gaussian", seed=4)
    c, _ = _draw(bank, cat, 3, noise="gaussian", seed=5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    with pytest.raises(ValueError, match="render.noise"):
        _render_config(noise="uniform")
    with pytest.raises(ValueError, match="render.method"):
        _render_config(method="magic")
    with pytest.raises(ValueError, match="unknown keys.*bogus"):
        render.RenderConfig.from_config(dict(default.get_config().render, bogus=1))
    with pytest.raises(ValueError, match=r"missing keys \['noise'\]"):
        render.RenderConfig.from_config({k: v for k, v in default.get_config().render.items() if k != "noise"})
    with pytest.raises(IndexError, match="unknown field index 500"):
        _draw(bank, cat, 500)


def _midpoint_star(params, x, y, sub, size=80, trunc=25.0):
    """Unit star: the six-parameter formula averaged over ``sub`` x ``sub`` midpoints per pixel, [size, size]."""
    fine = (np.arange(sub) + 0.5) / sub
    r0, r1 = max(int(y - trunc) - 3, 0), min(int(y + trunc) + 4, size)
    c0, c1 = max(int(x - trunc) - 3, 0), min(int(x + trunc) + 4, size)
    xs = (np.arange(c0, c1)[:, None] + fine).ravel() - x
    out = np.zeros((size, size))
    for row in range(r0, r1):
        density = psf.profile(np.hypot((row + fine - y)[:, None], xs[None, :]), params, trunc)
        out[row, c0:c1] = density.reshape(sub, c1 - c0, sub).mean(axis=(0, 2))
    return out


def _accurate_star(params, x, y, trunc=25.0, edge_sub=128):
    """Unit star, pixel-integrated to about 1e-8 of the flux: Richardson extrapolation of 16 and 32 midpoints
    per pixel side, and in the pixels near the truncation circle (where the profile jumps and Richardson does
    not help) ``edge_sub`` x ``edge_sub`` midpoints."""
    out = (4 * _midpoint_star(params, x, y, 32) - _midpoint_star(params, x, y, 16)) / 3
    fine = (np.arange(edge_sub) + 0.5) / edge_sub
    rows, cols = np.nonzero(
        np.abs(np.hypot(np.arange(80)[None, :] + 0.5 - x, np.arange(80)[:, None] + 0.5 - y) - trunc) < 1.0
    )
    for row, col in zip(rows, cols):
        density = psf.profile(np.hypot((row + fine - y)[:, None], (col + fine - x)[None, :]), params, trunc)
        out[row, col] = density.mean()
    return out


def _pixel_noise(bank, field, expected_e):
    """Noise sigma in nmgy of each pixel of a noiseless image (electrons, sources only) over the crop's sky."""
    sky = bank.background_electrons(field, (300, 400), (80, 80))
    return np.sqrt(sky + np.maximum(expected_e, 0)) / bank.to_electrons(field)


BRIGHTEST = 0.469, 613314.0, -0.553, 1.185  # star prior truncpareto b, c, loc, scale: the brightest star


@pytest.mark.parametrize("field, x, y", [(0, 40.3, 39.7), (250, 2.2, 40.6), (499, 60.9, 77.5)])
def test_brightest_star_matches_formula_within_pixel_noise(bank, field, x, y):
    """r 7.85 (c * scale + loc = 7.3e5 nmgy): the k-space stamp would ring at 100+ sigma with negative
    counts; the real-space path matches the pixel-integrated formula within 0.1 sigma of every pixel's noise
    and keeps all of the flux that falls inside the image."""
    b, c, loc, scale = BRIGHTEST
    flux = c * scale + loc
    assert catalogs.flux_to_mag(flux) == pytest.approx(7.85, abs=0.01)
    assert default.get_config().prior.star_flux == BRIGHTEST
    images, _ = _draw(bank, _one_source(x, y, flux), field)
    expected = flux * _accurate_star(bank.psf_params[field], x, y)
    sigma = _pixel_noise(bank, field, expected * bank.to_electrons(field))
    assert (np.abs(images[0] - expected) / sigma).max() < 0.1
    assert images.min() >= 0.0  # no ringing: expected counts never below the sky
    assert images.sum() == pytest.approx(expected.sum(), rel=1e-6)
    if min(x, y, 80 - x, 80 - y) > 25.5:  # the truncated PSF lies inside the image: all of the flux
        assert images.sum() == pytest.approx(flux, rel=1e-6)


def test_brightest_stars_render_finite_noisy_images(bank):
    """Gaussian N(lambda, lambda) and Poisson noise need lambda >= 0: a batch of r 7.85 stars in many fields,
    in both render paths (field 250's sky is 365 electrons; its r 7.85 star rang to -1500 in both)."""
    b, c, loc, scale = BRIGHTEST
    for noise, method, fields_ in (
        ("gaussian", "kspace", np.r_[np.arange(0, 500, 50), 250]),
        ("poisson", "kspace", np.r_[np.arange(0, 500, 50), 250]),
        ("gaussian", "drawimage", np.array([250, 499])),
    ):  # GalSim: 70 ms a field
        cat = {k: np.repeat(v, len(fields_), axis=0) for k, v in _one_source(20.4, 61.7, c * scale + loc).items()}
        r = render.Renderer(bank, (80, 80), _render_config(noise=noise, method=method))
        images, _ = r.render(cat, fields_, np.tile([[300, 400]], (len(fields_), 1)), np.random.default_rng(0))
        assert np.isfinite(images).all(), (noise, method)


def test_kspace_stars_stay_within_tolerance_up_to_the_switch(bank):
    """Just below the per-field switch the k-space star errs by at most about STAR_KSPACE_TOLERANCE of the
    pixel noise; just above it the star is drawn in real space, far more accurately."""
    field, x, y = 123, 33.6, 47.2
    r = render.Renderer(bank, (80, 80), _render_config(noise="none"))
    to_e = float(bank.to_electrons(field))
    limit = r._star_kspace_limit(field) / to_e  # nmgy
    assert 15.0 < catalogs.flux_to_mag(limit) < 20.0
    reference = _accurate_star(bank.psf_params[field], x, y)
    errors = []
    for flux in (0.99 * limit, 1.01 * limit):
        image = r.source_electrons({k: v[0] for k, v in _one_source(x, y, flux).items()}, field) / to_e
        errors.append((np.abs(image - flux * reference) / _pixel_noise(bank, field, flux * reference * to_e)).max())
    assert errors[0] < 1.5 * render.STAR_KSPACE_TOLERANCE
    assert errors[1] < 0.1 * errors[0]
