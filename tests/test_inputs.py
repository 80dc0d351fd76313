"""Input normalization: channel formula by hand, variants, saved statistics, background scale floor."""

import numpy as np
import pytest

from npejax.nn import inputs

pytestmark = pytest.mark.fast  # the whole file is in the fast tier


def _data(bg_levels, n=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(0.0, 0.05, (n, 16, 16))
    images[:, 8, 8] += 5.0  # a bright source: the upper quantiles differ from the noise
    background = np.asarray(bg_levels, float)[:, None, None] * np.ones((n, 16, 16))
    psf = np.column_stack(
        [
            rng.uniform(1, 2, n),
            rng.uniform(3, 5, n),
            rng.uniform(1, 2, n),
            rng.uniform(2, 4, n),
            rng.uniform(0.05, 0.2, n),
            rng.uniform(0.05, 0.1, n),
        ]
    )
    return images, background, psf


def test_features_match_hand_computation():
    images, background, psf = _data(np.linspace(0.5, 1.0, 8))
    norm = inputs.Normalizer.fit(images, background, psf)
    q = np.quantile(images, inputs.ASINH_QUANTILES)
    np.testing.assert_allclose(norm.quantiles, q)
    assert norm.background_mean == pytest.approx(background.mean())
    assert norm.background_std == pytest.approx(background.std())  # spread above the floor: plain std
    f = norm.features(images.astype(np.float32), background.astype(np.float32), psf.astype(np.float32), "psf_aware")
    assert f.shape == (8, 16, 16, 21)
    k, i, j, b = 12, 3, 5, 2
    scale = max(abs(q[k]), norm.scale_floor) / 5.0
    assert f[b, i, j, k] == pytest.approx(np.arcsinh((images[b, i, j] - q[k]) / scale), rel=1e-5)
    assert f[b, i, j, 14] == pytest.approx((background[b, i, j] - background.mean()) / background.std(), rel=1e-5)
    expected_psf = (psf[b] - psf.mean(0)) / psf.std(0)
    np.testing.assert_allclose(f[b, 0, 0, 15:], expected_psf, rtol=1e-5)
    np.testing.assert_allclose(f[b, 7, 9, 15:], expected_psf, rtol=1e-5)  # constant channels
    for variant, channels in (("single_field", 15), ("psf_unaware", 15)):
        assert norm.features(images, background, psf, variant).shape[-1] == channels == inputs.num_channels(variant)
    assert inputs.Normalizer.from_dict(norm.to_dict()) == norm


def test_one_field_background_scale_is_floored():
    images, background, psf = _data(np.full(8, 0.7))
    background[:, :, 8:] *= 1.003  # a 0.3% gradient, as across one field
    norm = inputs.Normalizer.fit(images, background, psf)
    assert norm.background_std == pytest.approx(inputs.BACKGROUND_SCALE_FLOOR * background.mean())
    other_field = np.full((1, 16, 16), 0.7 * 1.3, np.float32)  # a 30% brighter sky
    f = norm.features(images[:1].astype(np.float32), other_field, psf[:1].astype(np.float32), "single_field")
    assert 2.5 < f[0, 0, 0, 14] < 3.5  # about 3 sigma, not ~100


def test_bad_inputs():
    images, background, psf = _data(np.linspace(0.5, 1.0, 8))
    images[2, 3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        inputs.Normalizer.fit(images, background, psf)
    with pytest.raises(ValueError, match="model.variant"):
        inputs.num_channels("psf_awre")
