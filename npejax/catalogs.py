"""Catalog tables for users: one row per source, written as FITS or CSV.

Columns and units are those of :mod:`npejax.schema` (:data:`~npejax.schema.TRUTH_COLUMNS`,
:data:`~npejax.schema.PREDICTION_COLUMNS`): fluxes in nanomaggies (nmgy); ``mag`` = 22.5 - 2.5 log10(flux /
nmgy) (SDSS r). ``image`` is the global index of the image in the dataset (or the batch).

**Pixel convention of tables.** ``x`` (column) and ``y`` (row) of every table npejax makes, writes or returns
are 0-based pixel centres, the convention of numpy, astropy (``pixel_to_world``), photutils and sep: the
centre of the first pixel is 0.0, pixel (i, j) covers [i - 0.5, i + 0.5) x [j - 0.5, j + 0.5); the FITS (and
SExtractor ``X_IMAGE``) 1-based pixel is x + 1. The table's meta says so: ``PIXCONV = 'CENTER0'``
(:data:`CENTER0`). npejax's arrays (datasets, the network, the renderer, evaluation) keep SPEC's convention,
pixels from the image edge (pixel (i, j) covering [i, i+1) x [j, j+1), :data:`EDGE`), and the one pair
:func:`table_xy` (arrays -> table: x - 0.5) and :func:`array_xy` (table -> arrays: x + 0.5, by the table's
``PIXCONV``) converts between the two; the sums are exact in float64, so a round trip returns the same arrays.
A table without ``PIXCONV``: a FITS table npejax wrote before ``PIXCONV`` existed (meta ``FLUXUNIT = 'nmgy'``) is
:data:`EDGE`; another one is what the reader says (:func:`read_table` ``unmarked``).

:func:`truth_table` turns a batch's true catalog (the padded arrays of :mod:`npejax.sim.prior`) into a table;
:func:`add_sky_coordinates` gives a catalog of one image ``ra`` and ``dec`` through the image's WCS;
:func:`write_table` / :func:`read_table` store and read any table (truth or predictions) by extension: FITS
with full precision and each column's unit (TUNITn); CSV with a precision per column (:data:`CSV_FORMATS`)
and two ``#`` comment lines above the header, the convention and each column's unit, which
``astropy.io.ascii.read(path)`` and ``pandas.read_csv(path, comment="#")`` read.
"""

from __future__ import annotations

import os
import re

import numpy as np
from astropy import table as table_lib
from astropy.io import ascii as ascii_lib

from npejax import io
from npejax.schema import PREDICTION_COLUMNS, SHAPE_KEYS, TRUTH_COLUMNS

_FORMATS = {".fits": "fits", ".fit": "fits", ".csv": "ascii.csv"}

PIXCONV = "PIXCONV"  # the table meta (FITS header) keyword that names the convention of x, y
CENTER0 = "CENTER0"  # 0-based pixel centres: the first pixel's centre is 0.0 (numpy, astropy, photutils, sep)
EDGE = "EDGE"  # pixels from the image edge: the first pixel covers [0, 1) (npejax's arrays; its tables before PIXCONV)
CONVENTIONS = (CENTER0, EDGE)
_CENTER0_TEXT = "x, y: 0-based pixel centres (PIXCONV = CENTER0; FITS and SExtractor pixel = x + 1, y + 1)"

# CSV text of each column (FITS keeps full precision): positions 1/1000 pixel, ra/dec 1e-7 deg (4 mas),
# fluxes 5 significant digits, magnitudes 1/1000, probabilities, fractions and shape parameters 4 decimals,
# distances from the training fields 1/100.
CSV_FORMATS = {
    "x": "{:.3f}",
    "y": "{:.3f}",
    "x_std": "{:.4f}",
    "y_std": "{:.4f}",
    "ra": "{:.7f}",
    "dec": "{:.7f}",
    "flux": "{:#.5g}",
    "flux_lo": "{:#.5g}",
    "flux_hi": "{:#.5g}",
    "flux_err": "{:#.5g}",
    "mag": "{:.3f}",
    "prob_source": "{:.4f}",
    "prob_galaxy": "{:.4f}",
    "disk_frac": "{:.4f}",
    "angle": "{:.4f}",
    "disk_q": "{:.4f}",
    "bulge_q": "{:.4f}",
    "disk_a": "{:.4f}",
    "bulge_a": "{:.4f}",
    "masked_frac": "{:.4f}",
    "field_distance": "{:.2f}",
}
_CSV_FLOAT = "{:#.7g}"  # another float column: float32's precision ("#": a float also when whole)
_CSV_UNITS = "units:"  # the second comment line: "units: image [], x [pix], ..."
_FLUX_COLUMNS = ("flux", "flux_lo", "flux_hi", "flux_err")  # nmgy where the meta says FLUXUNIT = 'nmgy'


def flux_to_mag(flux) -> np.ndarray:
    """r magnitude of a flux in nmgy; NaN where the flux is not positive."""
    flux = np.asarray(flux, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux > 0, 22.5 - 2.5 * np.log10(flux), np.nan)


def mag_to_flux(mag) -> np.ndarray:
    """Flux in nmgy of an r magnitude."""
    return 10.0 ** ((22.5 - np.asarray(mag, dtype=np.float64)) / 2.5)


def table_xy(x, y) -> tuple[np.ndarray, np.ndarray]:
    """Arrays -> table: ``x``, ``y`` in pixels from the image edge (npejax's arrays, :data:`EDGE`) as the
    0-based pixel centres of a table (:data:`CENTER0`), float64: x - 0.5, exact (the inverse of
    :func:`array_xy`)."""
    return np.asarray(x, np.float64) - 0.5, np.asarray(y, np.float64) - 0.5


def pixel_convention(table, unmarked: str = CENTER0) -> str:
    """The convention of ``table``'s ``x``, ``y`` (:data:`CENTER0` or :data:`EDGE`): its meta ``PIXCONV``;
    without it, :data:`EDGE` for a table npejax wrote before ``PIXCONV`` existed (meta ``FLUXUNIT =
    'nmgy'``), else ``unmarked`` (a mapping of columns has no meta: ``unmarked``). ValueError for another
    ``PIXCONV`` value."""
    meta = getattr(table, "meta", None) or {}
    value = meta.get(PIXCONV)
    if value is None:
        return EDGE if meta.get("FLUXUNIT") == "nmgy" else unmarked
    value = str(value).strip().upper()
    if value not in CONVENTIONS:
        raise ValueError(f"catalog meta {PIXCONV} = {meta.get(PIXCONV)!r}: expected one of {list(CONVENTIONS)}")
    return value


def array_xy(table, unmarked: str = CENTER0) -> tuple[np.ndarray, np.ndarray]:
    """Table -> arrays: the ``x``, ``y`` columns of ``table`` (astropy Table or mapping of columns) in pixels
    from the image edge (:data:`EDGE`, what npejax's arrays hold), float64: x + 0.5 for a :data:`CENTER0`
    table, as they are for an :data:`EDGE` one (:func:`pixel_convention` decides, ``unmarked`` for a table
    without a convention). The inverse of :func:`table_xy`."""
    shift = 0.5 if pixel_convention(table, unmarked) == CENTER0 else 0.0
    return np.asarray(table["x"], np.float64) + shift, np.asarray(table["y"], np.float64) + shift


def _described(t: table_lib.Table, columns: dict) -> table_lib.Table:
    """Sets each column's unit and description from ``columns`` (name -> (unit, description)); fluxes are
    in nmgy, which FITS cannot name as a unit: the table meta ``FLUXUNIT`` says so; ``PIXCONV`` names the
    convention of x, y (:data:`CENTER0`)."""
    for name in t.colnames:
        t[name].unit, t[name].description = columns[name]
    t.meta["FLUXUNIT"] = "nmgy"
    t.meta[PIXCONV] = CENTER0
    return t


def truth_table(batch: dict, image_offset: int = 0) -> table_lib.Table:
    """One row per real source of ``batch`` (a dict with ``n_sources`` and the padded catalog arrays).

    Columns: ``image`` (``image_offset`` + index in the batch), ``source``, ``x``, ``y``, ``flux``,
    ``mag``, ``is_galaxy``, the galaxy shape columns, and ``field_id`` / ``in_tile_catalog`` when the
    batch holds ``field_id`` / ``tile_source``. Rows are ordered by image, then source index.
    """
    missing = [key for key in ("n_sources", "x", "y", "flux", "is_galaxy") if key not in batch]
    if missing:
        raise KeyError(f"truth_table: the batch lacks {missing}")
    n = np.asarray(batch["n_sources"]).astype(np.int64)
    b, m = np.shape(batch["x"])
    if n.shape != (b,) or (n.size and (n.min() < 0 or n.max() > m)):
        raise ValueError(f"truth_table: n_sources {n.shape} does not fit catalog arrays of shape {(b, m)}")
    valid = np.arange(m)[None, :] < n[:, None]
    img, src = np.nonzero(valid)  # row-major: by image, then source

    t = table_lib.Table()
    t["image"] = (img + int(image_offset)).astype(np.int64)
    t["source"] = src.astype(np.int32)
    t["x"], t["y"] = table_xy(np.asarray(batch["x"])[img, src], np.asarray(batch["y"])[img, src])
    t["flux"] = np.asarray(batch["flux"])[img, src].astype(np.float32)
    t["mag"] = flux_to_mag(t["flux"]).astype(np.float32)
    t["is_galaxy"] = np.asarray(batch["is_galaxy"])[img, src].astype(bool)
    for key in SHAPE_KEYS:
        if key in batch:
            t[key] = np.asarray(batch[key])[img, src].astype(np.float32)
    if "field_id" in batch:
        t["field_id"] = np.asarray(batch["field_id"])[img].astype(np.int32)
    if "tile_source" in batch:
        ts = np.asarray(batch["tile_source"]).reshape(b, -1)
        kept = np.zeros((b, m), dtype=bool)
        rows, cols = np.nonzero(ts >= 0)
        kept[rows, ts[rows, cols]] = True
        t["in_tile_catalog"] = kept[img, src]
    return _described(t, TRUTH_COLUMNS)


def dataset_truth_table(dataset):
    """(table, number of sources, number dropped by the one-per-tile rule) of every image of a
    :class:`npejax.datasets.Dataset`; the table as :func:`truth_table`, ``image`` the global index."""
    tables, n_sources, n_dropped = [], 0, 0
    keys = ("n_sources", "field_id", "tile_source", "n_dropped", *TRUTH_COLUMNS)
    offset = 0
    for i in range(dataset.num_shards):
        shard = dataset.shard(i)
        batch = {key: np.asarray(shard[key]) for key in keys if key in shard}
        tables.append(truth_table(batch, image_offset=offset))
        n_sources += int(batch["n_sources"].sum())
        n_dropped += int(batch["n_dropped"].sum()) if "n_dropped" in batch else 0
        offset += len(batch["n_sources"])
    table = table_lib.vstack(tables, metadata_conflicts="silent") if len(tables) > 1 else tables[0]
    return table, n_sources, n_dropped


def prediction_table(sources: dict) -> table_lib.Table:
    """Table of predicted sources from :func:`npejax.nn.posterior.tiles_to_sources` output (numpy arrays)."""
    t = table_lib.Table()
    t["image"] = np.asarray(sources["image"], np.int64)
    t["x"], t["y"] = table_xy(np.asarray(sources["x"], np.float32), np.asarray(sources["y"], np.float32))
    t["flux"] = np.asarray(sources["flux"], np.float32)
    t["mag"] = flux_to_mag(t["flux"]).astype(np.float32)
    for key in ("prob_source", "prob_galaxy", "x_std", "y_std", "flux_lo", "flux_hi", "masked_frac"):
        if key in sources:
            t[key] = np.asarray(sources[key], np.float32)
    return _described(t, PREDICTION_COLUMNS)


def check_wcs(wcs) -> None:
    """TypeError unless ``wcs`` has astropy's high-level ``pixel_to_world`` (what :func:`add_sky_coordinates`
    needs)."""
    if not callable(getattr(wcs, "pixel_to_world", None)):
        raise TypeError(
            f"wcs {type(wcs).__name__}: expected a celestial WCS with pixel_to_world (astropy.wcs.WCS, APE 14)"
        )


def add_sky_coordinates(table: table_lib.Table, wcs) -> table_lib.Table:
    """Adds ``ra`` and ``dec`` (ICRS, degrees) to a catalog of one image with celestial WCS ``wcs``, and
    the WCS keywords to its metadata (a FITS catalog's header); returns the table.

    ``wcs``: an astropy :class:`~astropy.wcs.WCS` or any WCS with astropy's high-level ``pixel_to_world``
    (APE 14; its keywords are kept when it has ``to_header``). The one implementation of both
    :meth:`npejax.nn.predictor.Predictor.catalog`'s ``wcs=`` and the FITS inputs of
    :func:`npejax.cataloging.images.catalog_inputs`.

    Pixel convention: ``x``, ``y`` of a table are 0-based pixel centres (:data:`CENTER0`), astropy's pixel
    coordinates, so the position is ``wcs.pixel_to_world(x, y)`` (FITS 1-based pixel x + 1, y + 1); a
    table in another convention is converted (:func:`array_xy`).
    """
    check_wcs(wcs)
    x, y = array_xy(table)
    x, y = table_xy(x, y)  # 0-based pixel centres whatever the table's convention
    if len(table):
        coords = wcs.pixel_to_world(x, y).icrs
        ra, dec = coords.ra.deg, coords.dec.deg
    else:
        ra = dec = np.zeros(0)
    table["ra"], table["dec"] = np.asarray(ra, np.float64), np.asarray(dec, np.float64)
    table["ra"].unit, table["ra"].description = "deg", "right ascension (ICRS) of x, y through the image WCS"
    table["dec"].unit, table["dec"].description = "deg", "declination (ICRS) of x, y through the image WCS"
    if callable(getattr(wcs, "to_header", None)):
        for card in wcs.to_header(relax=True).cards:
            table.meta[card.keyword] = card.value
    table.meta["comments"] = list(table.meta.get("comments", [])) + [
        "x, y: 0-based pixel centres, FITS pixel = x + 1, y + 1 in the WCS of this header; ra, dec: ICRS degrees"
    ]
    return table


def table_format(path) -> str:
    """The astropy format for ``path`` by extension (.fits, .fit, .csv); ValueError for another."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in _FORMATS:
        raise ValueError(
            f"unsupported catalog file extension {ext!r} in {os.fspath(path)!r}; use one of {sorted(_FORMATS)}"
        )
    return _FORMATS[ext]


def _csv_text(table: table_lib.Table) -> table_lib.Table:
    """A copy of ``table`` for CSV: each float column printed with :data:`CSV_FORMATS` (integers and
    booleans as they are), its comments replaced by the convention line and the units line."""
    out = table.copy(copy_data=False)
    units = []
    for name in out.colnames:
        col = out[name]
        if col.dtype.kind == "f":
            col.format = CSV_FORMATS.get(name, _CSV_FLOAT)
        unit = "" if col.unit is None else str(col.unit)
        if not unit and out.meta.get("FLUXUNIT") == "nmgy" and name in _FLUX_COLUMNS:
            unit = "nmgy"  # no astropy (FITS) unit; in words in the FITS header (FLUXUNIT), by name here
        units.append(f"{name} [{unit}]")
    lines = [f"npejax catalog; {_CENTER0_TEXT}", f"{_CSV_UNITS} " + ", ".join(units)]
    out.meta = {"comments": lines}
    return out


def write_table(table: table_lib.Table, path) -> str:
    """Writes ``table`` (x, y in :data:`CENTER0`, as every table npejax makes; another is converted) to
    ``path`` atomically (:func:`npejax.io.atomic_path`); returns the path. FITS keeps full precision, the
    units (TUNITn) and the meta (``PIXCONV``, ``FLUXUNIT``, a WCS) in its header; CSV is :func:`_csv_text`."""
    path = os.fspath(path)
    fmt = table_format(path)
    table = centered(table)
    with io.atomic_path(path) as tmp:
        if fmt == "fits":
            table.write(tmp, format=fmt, overwrite=True)
        else:
            _csv_text(table).write(tmp, format=fmt, overwrite=True, comment="# ")
    return path


def _read_csv_comments(table: table_lib.Table) -> None:
    """Takes the convention and the units of a CSV written by :func:`write_table` from its comment lines
    into ``table``'s meta and columns."""
    comments = [str(c) for c in table.meta.pop("comments", [])]
    if any(f"{PIXCONV} = {CENTER0}" in c for c in comments):
        table.meta[PIXCONV] = CENTER0
    for line in comments:
        if line.startswith(_CSV_UNITS):
            for name, unit in re.findall(r"(\w+) \[([^\]]*)\]", line):
                if name in table.colnames and unit == "nmgy":  # as FITS: no astropy unit, FLUXUNIT in the meta
                    table.meta["FLUXUNIT"] = "nmgy"
                elif name in table.colnames and unit:
                    table[name].unit = unit
    if comments:
        table.meta["comments"] = comments


def read_table(path, unmarked: str = EDGE) -> table_lib.Table:
    """Reads a table written by :func:`write_table` (or another tool's FITS/CSV table); CSV ``True``/``False``
    columns come back as bool. The table comes back in :data:`CENTER0` (meta ``PIXCONV``): ``x``, ``y`` of
    a table in :data:`EDGE` are converted. A table without ``PIXCONV`` is :data:`EDGE` when it is a FITS
    table npejax wrote before ``PIXCONV`` existed (meta ``FLUXUNIT = 'nmgy'``), else ``unmarked``: EDGE (the
    default) for tables npejax wrote (an earlier CSV), :data:`CENTER0` for another tool's (sep,
    photutils: ``npejax.evaluate --catalog``)."""
    path = os.fspath(path)
    fmt = table_format(path)
    if unmarked not in CONVENTIONS:
        raise ValueError(f"read_table: unmarked {unmarked!r} is not one of {list(CONVENTIONS)}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"catalog file {path} does not exist")
    if fmt == "fits":
        table = table_lib.Table.read(path, format="fits")
    else:
        converters = {"*": [ascii_lib.convert_numpy(t) for t in (int, float, bool, str)]}
        table = table_lib.Table.read(path, format="ascii.csv", converters=converters, comment="#")
        _read_csv_comments(table)
    return centered(table, unmarked)


def centered(table: table_lib.Table, unmarked: str = CENTER0) -> table_lib.Table:
    """``table`` with ``x``, ``y`` in :data:`CENTER0` and meta ``PIXCONV`` saying so: ``table`` itself when its
    meta says so, else a copy (meta ``PIXCONV`` set) with the positions converted where they were
    :data:`EDGE` (:func:`pixel_convention` with ``unmarked`` decides); a table without ``x``, ``y`` as it is."""
    if "x" not in table.colnames or "y" not in table.colnames:
        return table
    convention = pixel_convention(table, unmarked)
    if convention == CENTER0 and table.meta.get(PIXCONV) == CENTER0:
        return table
    table = table.copy(copy_data=False)  # the caller's table keeps its columns and meta
    if convention != CENTER0:
        x, y = table_xy(*array_xy(table, convention))
        table["x"] = table_lib.Column(x, unit=table["x"].unit, description=table["x"].description)
        table["y"] = table_lib.Column(y, unit=table["y"].unit, description=table["y"].description)
    table.meta[PIXCONV] = CENTER0
    return table
