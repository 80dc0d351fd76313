"""Catalog tables for users: one row per source, written as FITS or CSV.

Columns, units and conventions are those of :mod:`npejax.schema` (:data:`~npejax.schema.TRUTH_COLUMNS`,
:data:`~npejax.schema.PREDICTION_COLUMNS`; SPEC "Catalog and coordinate conventions"): positions are floats
in pixels from the image edge, ``x`` = column and ``y`` = row, pixel (i, j) covering [i, i+1) x [j, j+1);
fluxes in nanomaggies (nmgy); ``mag`` = 22.5 - 2.5 log10(flux / nmgy) (SDSS r). ``image`` is the global
index of the image in the dataset (or the batch).

:func:`truth_table` turns a batch's true catalog (the padded arrays of :mod:`npejax.sim.prior`) into a table;
:func:`add_sky_coordinates` gives a catalog of one image ``ra`` and ``dec`` through the image's WCS;
:func:`write_table` / :func:`read_table` store and read any table (truth or predictions) by extension.
"""

from __future__ import annotations

import os

import numpy as np
from astropy import table as table_lib
from astropy.io import ascii as ascii_lib

from npejax import io
from npejax.schema import PREDICTION_COLUMNS, SHAPE_KEYS, TRUTH_COLUMNS

_FORMATS = {".fits": "fits", ".fit": "fits", ".csv": "ascii.csv"}


def flux_to_mag(flux) -> np.ndarray:
    """r magnitude of a flux in nmgy; NaN where the flux is not positive."""
    flux = np.asarray(flux, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux > 0, 22.5 - 2.5 * np.log10(flux), np.nan)


def mag_to_flux(mag) -> np.ndarray:
    """Flux in nmgy of an r magnitude."""
    return 10.0 ** ((22.5 - np.asarray(mag, dtype=np.float64)) / 2.5)


def _described(t: table_lib.Table, columns: dict) -> table_lib.Table:
    """Sets each column's unit and description from ``columns`` (name -> (unit, description)); fluxes are
    in nmgy, which FITS cannot name as a unit: the table meta ``FLUXUNIT`` says so."""
    for name in t.colnames:
        t[name].unit, t[name].description = columns[name]
    t.meta["FLUXUNIT"] = "nmgy"
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
    for key in ("x", "y", "flux"):
        t[key] = np.asarray(batch[key])[img, src].astype(np.float32)
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
    for key in ("x", "y", "flux"):
        t[key] = np.asarray(sources[key], np.float32)
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

    Pixel convention: npejax's ``x``, ``y`` are pixels from the image edge, pixel (i, j) covering [i, i+1)
    x [j, j+1), so a pixel's centre is at x = i + 0.5; astropy's 0-based pixel coordinates put pixel i's
    centre at i. The position is therefore ``wcs.pixel_to_world(x - 0.5, y - 0.5)`` (FITS 1-based pixel
    x + 0.5, y + 0.5).
    """
    check_wcs(wcs)
    x = np.asarray(table["x"], np.float64) - 0.5
    y = np.asarray(table["y"], np.float64) - 0.5
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
        "x, y: pixels from the image edge, pixel (i, j) covers [i, i+1) x [j, j+1); FITS pixel = x + 0.5, "
        "y + 0.5 in the WCS of this header; ra, dec: ICRS degrees"
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


def write_table(table: table_lib.Table, path) -> str:
    """Writes ``table`` to ``path`` (FITS or CSV by extension) atomically (:func:`npejax.io.atomic_path`);
    returns the path."""
    path = os.fspath(path)
    fmt = table_format(path)
    with io.atomic_path(path) as tmp:
        table.write(tmp, format=fmt, overwrite=True)
    return path


def read_table(path) -> table_lib.Table:
    """Reads a table written by :func:`write_table`; CSV ``True``/``False`` columns come back as bool."""
    path = os.fspath(path)
    fmt = table_format(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"catalog file {path} does not exist")
    if fmt == "fits":
        return table_lib.Table.read(path, format="fits")
    converters = {"*": [ascii_lib.convert_numpy(t) for t in (int, float, bool, str)]}
    return table_lib.Table.read(path, format="ascii.csv", converters=converters)
