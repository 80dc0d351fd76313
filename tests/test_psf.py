"""Six-parameter PSF: normalization, GalSim profile, Hankel transform, fitting, validation."""

import numpy as np
import pytest

from npejax.sim import psf

pytestmark = pytest.mark.fast  # the whole file is in the fast tier

PARAMS = [
    (1.4, 3.5, 2.5, 3.5, 0.1, 0.02),
    (1.1, 2.2, 1.8, 4.4, 0.2, 0.05),
    (2.0, 4.0, 3.0, 2.6, 0.05, 0.01),
]


@pytest.mark.parametrize("params", PARAMS)
def test_profile_integrates_to_one(params):
    step = 0.05
    grid = np.arange(-30, 30, step) + step / 2
    xx, yy = np.meshgrid(grid, grid)
    assert psf.profile(np.hypot(xx, yy), params).sum() * step**2 == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("params", PARAMS)
def test_galsim_profile_and_transform_match_the_formula(params):
    obj = psf.galsim_psf(params)
    assert obj.flux == pytest.approx(1.0)
    for r in (0.0, 1.0, 3.0, 10.0):
        assert obj.xValue(r, 0.0) == pytest.approx(psf.profile(r, params), rel=1e-4)
    k = np.linspace(0, 3, 40)
    galsim_k = np.array([obj.kValue(v, 0.0).real for v in k])
    np.testing.assert_allclose(psf.radial_transfer(k, params), galsim_k, atol=1e-4)
    batched = psf.radial_transfer(k, np.array(PARAMS))
    assert batched.shape == (3, 40)
    np.testing.assert_allclose(batched[PARAMS.index(params)], psf.radial_transfer(k, params), atol=1e-12)


def test_fit_recovers_a_profile():
    truth = PARAMS[1]
    r = np.arange(0, 20, 0.25)
    fitted = psf.fit_psf_params(r, psf.profile(r, truth, trunc_pixels=1e4))
    peak = psf.profile(0.0, truth, 1e4)
    assert np.abs(psf.profile(r, fitted, 1e4) - psf.profile(r, truth, 1e4)).max() < 0.01 * peak


def test_fwhm_of_a_gaussian():
    assert psf.fwhm_pixels((1.7, 3.0, 2.0, 3.0, 0.0, 0.0)) == pytest.approx(2.35482 * 1.7, rel=1e-3)


@pytest.mark.parametrize(
    "bad, match",
    [
        ((0.0, 3.0, 2.0, 3.0, 0.1, 0.01), "psf_sigma1 must be a positive width"),
        ((1.0, -3.0, 2.0, 3.0, 0.1, 0.01), "psf_sigma2 must be a positive width"),
        ((1.0, 3.0, 2.0, 1.5, 0.1, 0.01), "psf_beta must be > 2"),
        ((1.0, np.nan, 2.0, 3.0, 0.1, 0.01), "must be finite"),
        ((1.0, 3.0, 2.0, 3.0, 0.1), "expected 6 PSF parameters"),
    ],
)
def test_validation_names_the_parameter(bad, match):
    with pytest.raises(ValueError, match=match):
        psf.validate_psf_params(bad, where="field X")
