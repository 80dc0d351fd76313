"""Truth tables: one row per source, magnitudes, units, FITS and CSV round trips, atomic writes."""

import os

import numpy as np
import pytest
from astropy import units as u
from astropy.table import Table

from configs import default
from npejax import catalogs
from npejax.sim import fields, pipeline

pytestmark = pytest.mark.fast  # the whole file is in the fast tier


@pytest.fixture(scope="module")
def batch():
    spec = pipeline.SimulationSpec.from_config(default.get_config(), seed=3, batch_size=6, bank=fields.load_bank())
    return pipeline.simulate_batch(spec, 0)


def test_truth_table_rows_and_values(batch):
    t = catalogs.truth_table(batch, image_offset=100)
    n = batch["n_sources"]
    assert len(t) == n.sum() > 0
    np.testing.assert_array_equal(np.bincount(t["image"] - 100, minlength=len(n)), n)
    for row in t:
        b, s = row["image"] - 100, row["source"]
        assert s < n[b]
        for key in ("x", "y", "flux", "disk_frac", "angle", "disk_q", "bulge_q", "disk_a", "bulge_a"):
            assert row[key] == batch[key][b, s], key
        assert row["is_galaxy"] == batch["is_galaxy"][b, s]
        assert row["field_id"] == batch["field_id"][b]
    np.testing.assert_allclose(t["mag"], 22.5 - 2.5 * np.log10(np.asarray(t["flux"], np.float64)), rtol=1e-6)
    stars = ~np.asarray(t["is_galaxy"])
    assert np.all(np.asarray(t["disk_a"])[stars] == 0)
    # the one-per-tile rule keeps n_sources - n_dropped sources per image
    kept = np.bincount(t["image"][t["in_tile_catalog"]] - 100, minlength=len(n))
    np.testing.assert_array_equal(kept, n - batch["n_dropped"])
    assert t["x"].unit == u.pix and t["mag"].unit == u.mag
    assert t["disk_a"].unit == u.arcsec and t["angle"].unit == u.rad
    assert "nmgy" in t["flux"].description and t.meta["FLUXUNIT"] == "nmgy"


def test_truth_table_minimal_and_empty():
    cat = dict(
        n_sources=np.array([0, 2], np.int32),
        x=np.array([[0, 0], [1.5, 2.5]], np.float32),
        y=np.array([[0, 0], [3.5, 4.5]], np.float32),
        flux=np.array([[0, 0], [1.0, 10.0]], np.float32),
        is_galaxy=np.array([[False, False], [True, False]]),
    )
    t = catalogs.truth_table(cat)
    assert t.colnames == ["image", "source", "x", "y", "flux", "mag", "is_galaxy"]
    assert list(t["image"]) == [1, 1] and list(t["mag"]) == [22.5, 20.0]
    empty = catalogs.truth_table({**cat, "n_sources": np.zeros(2, np.int32)})
    assert len(empty) == 0
    with pytest.raises(KeyError, match="flux"):
        catalogs.truth_table({k: v for k, v in cat.items() if k != "flux"})


def test_mag_flux_conversions():
    np.testing.assert_allclose(catalogs.flux_to_mag([1.0, 100.0]), [22.5, 17.5])
    np.testing.assert_allclose(catalogs.mag_to_flux(catalogs.flux_to_mag([0.7, 3.0])), [0.7, 3.0])
    assert np.isnan(catalogs.flux_to_mag(0.0)) and np.isnan(catalogs.flux_to_mag(-1.0))


@pytest.mark.parametrize("name", ["truth.fits", "truth.csv", "TRUTH.FITS"])
def test_write_read_round_trip(batch, tmp_path, name):
    t = catalogs.truth_table(batch)
    path = tmp_path / "sub" / name
    assert catalogs.write_table(t, path) == str(path)
    csv = name.lower().endswith(".csv")
    for back, plain in (
        (catalogs.read_table(path), False),
        (Table.read(path, format=catalogs.table_format(path)), True),
    ):
        assert back.colnames == t.colnames and len(back) == len(t)
        for key in t.colnames:
            if plain and csv and t[key].dtype == bool:  # plain astropy reads CSV True/False as text
                assert list(back[key]) == [str(v) for v in t[key]]
                continue
            np.testing.assert_array_equal(np.asarray(back[key]).astype(t[key].dtype), np.asarray(t[key]), key)
    back = catalogs.read_table(path)
    assert back["is_galaxy"].dtype == bool
    if name.lower().endswith(".fits"):
        assert back["disk_a"].unit == u.arcsec and back["angle"].unit == u.rad and back["x"].unit == u.pix
    # overwriting is atomic and leaves nothing else behind
    catalogs.write_table(t[:3], path)
    assert len(catalogs.read_table(path)) == 3
    assert os.listdir(path.parent) == [name]


def test_bad_extension(batch, tmp_path):
    with pytest.raises(ValueError, match=r"'\.txt'"):
        catalogs.write_table(catalogs.truth_table(batch), tmp_path / "truth.txt")
    assert os.listdir(tmp_path) == []
    with pytest.raises(FileNotFoundError):
        catalogs.read_table(tmp_path / "missing.fits")


def test_failed_write_leaves_no_temporary_file(batch, tmp_path, monkeypatch):
    t = catalogs.truth_table(batch)

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Table, "write", fail)
    with pytest.raises(KeyboardInterrupt):
        catalogs.write_table(t, tmp_path / "truth.fits")
    assert os.listdir(tmp_path) == []
