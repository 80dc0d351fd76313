"""Truth tables: one row per source, magnitudes, units, FITS and CSV round trips, atomic writes."""

import os

import numpy as np
import pytest
from astropy import units as u
from astropy.io import ascii as ascii_lib
from astropy.table import Table

from configs import default
from npejax import catalogs
from npejax.sim import fields, pipeline, render

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
        for key in ("flux", "disk_frac", "angle", "disk_q", "bulge_q", "disk_a", "bulge_a"):
            assert row[key] == batch[key][b, s], key
        # 0-based pixel centres in the table, pixels from the edge in the arrays
        assert (row["x"], row["y"]) == (batch["x"][b, s] - 0.5, batch["y"][b, s] - 0.5)
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
    assert t.meta["PIXCONV"] == catalogs.CENTER0
    x, y = catalogs.array_xy(t)  # back to the arrays' convention, exactly
    np.testing.assert_array_equal(x.astype(np.float32), batch["x"][t["image"] - 100, t["source"]])
    np.testing.assert_array_equal(y.astype(np.float32), batch["y"][t["image"] - 100, t["source"]])


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
        (Table.read(path, **(dict(format="ascii.csv", comment="#") if csv else dict(format="fits"))), True),
    ):
        assert back.colnames == t.colnames and len(back) == len(t)
        for key in t.colnames:
            if plain and csv and t[key].dtype == bool:  # plain astropy reads CSV True/False as text
                assert list(back[key]) == [str(v) for v in t[key]]
                continue
            if csv and t[key].dtype.kind == "f":  # CSV: the printed precision (catalogs.CSV_FORMATS)
                text = [catalogs.CSV_FORMATS.get(key, "{:#.7g}").format(v) for v in np.asarray(t[key])]
                np.testing.assert_array_equal(np.asarray(back[key]), np.asarray(text, np.float64), key)
                continue
            np.testing.assert_array_equal(np.asarray(back[key]).astype(t[key].dtype), np.asarray(t[key]), key)
    back = catalogs.read_table(path)
    assert back["is_galaxy"].dtype == bool
    assert back["disk_a"].unit == u.arcsec and back["angle"].unit == u.rad and back["x"].unit == u.pix
    assert back.meta["PIXCONV"] == catalogs.CENTER0
    if not csv:  # FITS: full precision, the same edge-based arrays back
        for got, want in zip(catalogs.array_xy(back), catalogs.array_xy(t)):
            np.testing.assert_array_equal(got, want)
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


def test_table_positions_are_sep_centroids_of_rendered_stars():
    """Independent reference: sep's centroid (0-based pixel centres, as photutils and astropy) of a noiseless
    star the simulator draws at a known position is the truth table's x, y."""
    import sep

    spec = pipeline.SimulationSpec.from_config(default.get_config(), seed=0, batch_size=1, bank=fields.load_bank())
    renderer = render.renderer_for(spec, (48, 48), "test")
    xs, ys = np.array([12.0, 30.31, 20.77], np.float32), np.array([14.5, 9.9, 33.06], np.float32)
    cat = dict(
        n_sources=np.int32(3),
        x=xs,
        y=ys,
        flux=np.full(3, 50.0, np.float32),
        is_galaxy=np.zeros(3, bool),
        **{k: np.zeros(3, np.float32) for k in ("disk_frac", "angle", "disk_q", "bulge_q", "disk_a", "bulge_a")},
    )
    image = np.ascontiguousarray(renderer.source_electrons(cat, 0), np.float64)
    table = catalogs.truth_table({k: np.asarray(v)[None] for k, v in cat.items()})
    for x, y in zip(table["x"], table["y"]):
        cx, cy, _ = sep.winpos(image, [x], [y], [1.5])
        assert abs(cx[0] - x) < 0.02 and abs(cy[0] - y) < 0.02, (x, y, cx, cy)
    assert abs(table["x"][0] - 11.5) < 1e-6 and abs(table["y"][0] - 14.0) < 1e-6  # edge 12.0, 14.5


def test_tables_of_earlier_versions_and_other_tools(batch, tmp_path):
    """A FITS table written before PIXCONV (edge-based, FLUXUNIT only) is converted on reading; a table of
    another tool (no keyword) is taken as 0-based centres where the reader says so; a bad PIXCONV is refused."""
    t = catalogs.truth_table(batch)
    old = Table(t, copy=True)
    old["x"], old["y"] = catalogs.array_xy(t)
    del old.meta["PIXCONV"]
    old.write(tmp_path / "old.fits")
    back = catalogs.read_table(tmp_path / "old.fits")
    np.testing.assert_array_equal(back["x"], t["x"])
    assert back.meta["PIXCONV"] == catalogs.CENTER0
    other = Table({"image": [0], "x": [3.25], "y": [4.0], "flux": [2.0]})
    other.write(tmp_path / "sep.csv", format="ascii.csv")
    assert catalogs.read_table(tmp_path / "sep.csv", unmarked=catalogs.CENTER0)["x"][0] == 3.25
    assert catalogs.read_table(tmp_path / "sep.csv")["x"][0] == 2.75  # an npejax CSV of before: edge-based
    other.meta["PIXCONV"] = "ONE"
    with pytest.raises(ValueError, match="PIXCONV = 'ONE'"):
        catalogs.array_xy(other)
    # writing an edge-marked table converts it, and leaves the caller's table as it was
    edge = Table({"x": [1.0], "y": [2.0]}, meta={"PIXCONV": "EDGE"})
    catalogs.write_table(edge, tmp_path / "edge.fits")
    assert list(catalogs.read_table(tmp_path / "edge.fits")["x"]) == [0.5] and edge.meta["PIXCONV"] == "EDGE"


def test_csv_precision_units_and_other_readers(batch, tmp_path):
    """CSV: a precision per column, the convention and each column's unit in two comment lines that astropy
    and numpy read past; integers as integers."""
    import csv

    t = catalogs.truth_table(batch)
    path = catalogs.write_table(t, tmp_path / "truth.csv")
    lines = open(path).read().splitlines()
    assert lines[0].startswith("# npejax catalog; x, y: 0-based pixel centres (PIXCONV = CENTER0")
    assert lines[1].startswith("# units: image [], source [], x [pix], y [pix], flux [nmgy], mag [mag]")
    header, first = lines[2].split(","), lines[3].split(",")
    assert header == t.colnames
    row = dict(zip(header, first))
    assert row["image"] == str(t["image"][0]) and row["is_galaxy"] in ("True", "False")
    assert len(row["x"].split(".")[1]) == 3 and len(row["mag"].split(".")[1]) == 3
    plain = ascii_lib.read(path)  # astropy, no options: the comment lines go to meta
    np.testing.assert_allclose(plain["x"], t["x"], atol=5e-4)
    rows = list(csv.DictReader(line for line in open(path) if not line.startswith("#")))
    np.testing.assert_allclose([float(r["flux"]) for r in rows], t["flux"], rtol=1e-4)
    data = np.genfromtxt(path, delimiter=",", names=True, skip_header=2, dtype=None, encoding="utf-8")
    np.testing.assert_allclose(data["y"], t["y"], atol=5e-4)
