"""Renderer: flux conservation, the six-parameter PSF profile, noise variance, edges, reference path."""

import dataclasses

import numpy as np
import pytest

from configs import default  # the repository root is on sys.path (conftest.py)
from npejax import schema
from npejax.sim import fields, prior, psf, render


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
    out[r0:r0 + 25, c0:c0 + 25] = density.reshape(25, sub, 25, sub).mean(axis=(1, 3))
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
    cat = _one_source(40.2, 39.6, 20.0, galaxy=True, disk_frac=0.7, angle=0.6, disk_q=0.5, bulge_q=0.8,
                      disk_a=1.5, bulge_a=0.6)
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
