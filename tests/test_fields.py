"""Field bank: the embedded synthetic bank's statistics, background interpolation, sampling, errors."""

import os

import numpy as np
import pytest
from scipy import stats

from npejax.sim import fields, interp, psf, synthetic_bank

pytestmark = pytest.mark.fast  # the whole file is in the fast tier


@pytest.fixture(scope="module")
def bank():
    return fields.load_bank()


def test_embedded_bank_is_labelled_synthetic(bank):
    assert len(bank) == 500 and bank.synthetic
    assert "SYNTHETIC" in bank.description and bank.names[0].startswith("synthetic-")
    assert fields.load_bank("synthetic").names.tolist() == bank.names.tolist()


def test_embedded_bank_matches_sdss_quartiles(bank):
    s = synthetic_bank.summary(bank)
    np.testing.assert_allclose(s["fwhm_arcsec_quartiles"], (1.30, 1.43, 1.58), atol=0.03)
    np.testing.assert_allclose(s["sky_mag_arcsec2_quartiles"], (20.70, 20.86, 21.03), atol=0.03)
    spread = np.ptp(bank.sky_grid, axis=(1, 2)) / bank.sky_grid.mean(axis=(1, 2))
    assert spread.max() < 0.10 and np.median(spread) > 0.01
    ref_fwhm = psf.fwhm_pixels(bank.psf_params[bank.reference]) * 0.396
    assert 1.30 < ref_fwhm < 1.58


def test_synthetic_bank_is_reproducible():
    a, b = synthetic_bank.make_bank(num_fields=4, seed=3), synthetic_bank.make_bank(num_fields=4, seed=3)
    np.testing.assert_array_equal(a.psf_params, b.psf_params)
    np.testing.assert_array_equal(a.sky_grid, b.sky_grid)


@pytest.mark.skipif(os.environ.get("NPEJAX_SLOW") != "1", reason="about a minute; set NPEJAX_SLOW=1")
def test_shipped_bank_is_rebuilt_exactly(bank):
    rebuilt = synthetic_bank.make_bank(500, 0)
    np.testing.assert_allclose(rebuilt.psf_params, bank.psf_params, rtol=1e-6)
    np.testing.assert_allclose(rebuilt.sky_grid, bank.sky_grid, rtol=1e-6)


def _bank(**changes):
    k = 3
    base = dict(
        names=[f"f{i}" for i in range(k)],
        psf_params=np.tile([1.4, 3.0, 2.0, 3.5, 0.1, 0.02], (k, 1)),
        sky_grid=np.full((k, 4, 5), 500.0),
        gain=np.full(k, 4.7),
        calibration=np.full(k, 0.005),
        frame_shape=(400, 500),
        source="test-bank",
    )
    base.update(changes)
    return fields.FieldBank(**base)


def test_linear_sky_is_interpolated_exactly():
    rows, cols = (np.arange(4) + 0.5) * 400 / 4, (np.arange(5) + 0.5) * 500 / 5
    grid = 300 + 0.2 * rows[:, None] + 0.1 * cols[None, :]
    b = _bank(sky_grid=np.stack([grid] * 3))
    bg = b.background_electrons(1, (120, 200), (80, 80))
    r, c = np.meshgrid(np.arange(120, 200) + 0.5, np.arange(200, 280) + 0.5, indexing="ij")
    np.testing.assert_allclose(bg, 300 + 0.2 * r + 0.1 * c, rtol=1e-12)
    np.testing.assert_allclose(_bank().background_electrons(0, (0, 0), (80, 80)), 500.0)


def _np_interp_matrix(coords, nodes):
    """Independent reference: column j = np.interp of the j-th unit vector (clamped at the ends)."""
    coords = np.asarray(coords, np.float64)
    return np.stack([np.interp(coords, np.arange(nodes), np.eye(nodes)[j]) for j in range(nodes)], axis=1)


@pytest.mark.parametrize(
    "start, length, frame_length, nodes",
    [(0, 80, 1489, 6), (1409, 80, 1489, 6), (300, 80, 2048, 8), (0, 60, 60, 8), (5, 7, 400, 1), (0, 3, 3, 2)],
)
def test_interpolation_weights_match_numpy(start, length, frame_length, nodes):
    """Both former call sites (sky grid of a crop at pixel centres; SDSS ALLSKY at XINTERP/YINTERP) give
    np.interp's weights."""
    new = interp.cell_center_weights(start, length, frame_length, nodes)
    centers = (np.arange(start, start + length) + 0.5) * nodes / frame_length - 0.5
    np.testing.assert_allclose(new, _np_interp_matrix(centers, nodes), rtol=0, atol=1e-12)
    coords = np.random.default_rng(start + nodes).uniform(-2.0, nodes + 1.0, 50).astype(np.float32)
    np.testing.assert_allclose(interp.linear_weights(coords, nodes), _np_interp_matrix(coords, nodes), atol=1e-12)
    np.testing.assert_allclose(new.sum(axis=1), 1.0, rtol=1e-12)
    assert new.shape == (length, nodes) and new.min() >= 0


def test_linear_weights_interpolate_and_clamp():
    w = interp.linear_weights([-1.0, 0.0, 0.25, 1.5, 2.0, 7.0], 3)
    np.testing.assert_allclose(w @ np.array([10.0, 20.0, 40.0]), [10.0, 10.0, 12.5, 30.0, 40.0, 40.0])
    np.testing.assert_array_equal(interp.linear_weights([0.3, 5.0], 1), [[1.0], [1.0]])


def test_field_sampling(bank):
    rng = np.random.default_rng(0)
    assert np.all(bank.sample_fields(rng, 100, "one") == bank.reference)
    many = bank.sample_fields(rng, 50_000, "many")
    assert stats.chisquare(np.bincount(many, minlength=500)).pvalue > 1e-3
    origins = bank.sample_crop_origins(rng, 1000, (80, 80))
    assert origins.min() >= 0 and np.all(origins.max(0) <= np.array(bank.frame_shape) - 80)
    with pytest.raises(ValueError, match="'many' or 'one'"):
        bank.sample_fields(rng, 1, "few")


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(psf_params=np.tile([1.4, np.nan, 2.0, 3.5, 0.1, 0.02], (3, 1))), "field 'f0'.*finite"),
        (
            dict(psf_params=np.tile([-1.0, 3.0, 2.0, 3.5, 0.1, 0.02], (3, 1))),
            "field 'f0'.*psf_sigma1 must be a positive",
        ),
        (
            dict(sky_grid=np.where(np.arange(3)[:, None, None] == 2, np.nan, np.full((3, 4, 5), 500.0))),
            "field 'f2'.*sky_grid contains NaN",
        ),
        (dict(gain=np.array([4.7, 0.0, 4.7])), "field 'f1'.*gain must be a positive"),
    ],
)
def test_bad_bank_values_are_named(changes, match):
    with pytest.raises(ValueError, match=match) as info:
        _bank(**changes)
    assert "test-bank" in str(info.value)


def test_unknown_field_id_and_index(bank):
    with pytest.raises(KeyError, match="unknown field id '94-1-12'"):
        bank.index("94-1-12")
    with pytest.raises(IndexError, match="unknown field index 500"):
        bank.check_index([3, 500])


def test_save_load_round_trip_and_bad_files(tmp_path, bank):
    path = tmp_path / "bank.npz"
    small = bank.subset([5, bank.reference, 9])
    small.save(path)
    loaded = fields.load_bank(path)
    assert loaded.names.tolist() == small.names.tolist() and loaded.reference == 1 and loaded.synthetic
    np.testing.assert_allclose(loaded.sky_grid, small.sky_grid, rtol=1e-6)
    np.testing.assert_array_equal(loaded.psf_params, small.psf_params)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank.npz"]  # written atomically, no temporary left
    assert (path.stat().st_mode & 0o777) == 0o666 & ~_umask()

    text = tmp_path / "bank.txt"
    text.write_text("not a bank")
    with pytest.raises(ValueError, match="bank.txt is not a readable .npz"):
        fields.load_bank(text)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.npz"):
        fields.load_bank(truncated)
    partial = tmp_path / "partial.npz"
    np.savez(partial, names=small.names, psf_params=small.psf_params)
    with pytest.raises(ValueError, match=r"partial.npz lacks arrays \['sky_grid'"):
        fields.load_bank(partial)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        fields.load_bank(tmp_path / "missing.npz")


def _umask():
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_failed_save_keeps_the_old_bank(tmp_path, bank, monkeypatch):
    path = tmp_path / "bank.npz"
    bank.subset([1, 2]).save(path)
    before = path.read_bytes()

    def broken(f, **arrays):
        f.write(b"half a bank")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", broken)
    with pytest.raises(OSError, match="disk full"):
        bank.subset([3, 4, 5]).save(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["bank.npz"]
