"""SDSS r-band field covariates from psField, photoField and frame files, built into a field bank.

Per field (run, camcol, field) three files of the SDSS data model are read:

* ``psField-RUN6-CAMCOL-FIELD4.fit``: HDU 6 table, columns ``psf_sigma1 psf_sigma2 psf_sigmap psf_beta psf_b
  psf_p0`` (one value per band u, g, r, i, z); the six PSF parameters of :mod:`npejax.sim.psf` (widths in pixels);
* ``photoField-RUN6-CAMCOL.fits``: HDU 1 table, one row per field, columns ``FIELD`` and ``GAIN`` (electrons
  per DN, per band);
* ``frame-r-RUN6-CAMCOL-FIELD4.fits[.bz2]``: HDU 0 image [H, W] (nmgy), HDU 1 ``calibvec`` [W] (nmgy per DN),
  HDU 2 table with ``ALLSKY`` (coarse sky grid in DN), ``XINTERP`` [W] and ``YINTERP`` [H] (grid coordinates
  of each full-resolution column / row).

:func:`build_bank` turns a folder of such files (flat, or in the archive layout of :func:`archive_paths`)
into a :class:`npejax.sim.fields.FieldBank`: per field ``psf_params`` [6] (r band), ``sky_grid`` [gh, gw]
(ALLSKY interpolated to every pixel, times the gain: electrons per pixel, block-averaged to the grid),
``gain`` (e-/DN) and ``calibration`` (median calibvec, nmgy/DN). :mod:`npejax.surveys.download` fetches the
files from the SDSS DR17 Science Archive Server. Command line (:mod:`npejax.sdss`)::

    python -m npejax.sdss download --fields fields.txt --out DIR [--base-url URL]
    python -m npejax.sdss build-bank --dir DIR --out bank.npz [--grid 12x16] [--reference RUN-CAMCOL-FIELD]
"""

from __future__ import annotations

import bz2
import gzip
import io as std_io  # (npejax.io is the atomic writer)
import os
import re

import numpy as np
from astropy.io import fits

from npejax import io
from npejax.sim import fields as fields_lib
from npejax.sim import interp
from npejax.sim import psf as psf_lib

BANDS = "ugriz"
R_BAND = 2
DEFAULT_GRID = (12, 16)
PSFIELD_HDU = 6
PHOTOFIELD_HDU = 1

_FRAME_RE = re.compile(r"^frame-([ugriz])-(\d{6})-(\d)-(\d{4})\.fits(\.bz2)?$")
_PSFIELD_RE = re.compile(r"^psField-(\d{6})-(\d)-(\d{4})\.fits?$")


# --- file names and archive paths ----------------------------------------------------------------


def psfield_name(run: int, camcol: int, field: int) -> str:
    """``psField-RUN6-CAMCOL-FIELD4.fit``."""
    return f"psField-{int(run):06d}-{int(camcol)}-{int(field):04d}.fit"


def photofield_name(run: int, camcol: int) -> str:
    """``photoField-RUN6-CAMCOL.fits``."""
    return f"photoField-{int(run):06d}-{int(camcol)}.fits"


def frame_name(run: int, camcol: int, field: int, band: str = "r") -> str:
    """``frame-BAND-RUN6-CAMCOL-FIELD4.fits.bz2`` (the archive's compressed frame)."""
    return f"frame-{band}-{int(run):06d}-{int(camcol)}-{int(field):04d}.fits.bz2"


def field_id(run: int, camcol: int, field: int) -> str:
    """Bank name of a field: ``"RUN-CAMCOL-FIELD"`` without zero padding, e.g. ``"94-1-12"``."""
    return f"{int(run)}-{int(camcol)}-{int(field)}"


def parse_field_id(text) -> tuple[int, int, int]:
    """``"94-1-12"`` or ``(94, 1, 12)`` -> ``(94, 1, 12)``; raises ValueError otherwise."""
    if isinstance(text, str):
        parts = text.strip().split("-")
    else:
        parts = list(text)
    try:
        run, camcol, field = (int(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"field id {text!r}: expected RUN-CAMCOL-FIELD (three integers, e.g. 94-1-12)") from None
    if run < 0 or not 1 <= camcol <= 6 or field < 0:
        raise ValueError(f"field id {text!r}: need run >= 0, camcol in 1..6, field >= 0")
    return run, camcol, field


def read_fields_file(path) -> list[tuple[int, int, int]]:
    """(run, camcol, field) triples from a text file of lines ``run camcol field``; '#' starts a comment."""
    path = os.fspath(path)
    try:
        with open(path) as f:
            lines = f.readlines()
    except OSError as exc:
        raise ValueError(f"fields file {path} cannot be read: {exc}") from exc
    out = []
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].replace(",", " ").split()
        if not text:
            continue
        if len(text) != 3:
            raise ValueError(f"fields file {path} line {number}: expected 'run camcol field', got {line.strip()!r}")
        try:
            out.append(parse_field_id(text))
        except ValueError as exc:
            raise ValueError(f"fields file {path} line {number}: {exc}") from None
    if not out:
        raise ValueError(f"fields file {path} lists no fields (expected lines 'run camcol field')")
    return out


def archive_paths(run: int, camcol: int, field: int) -> dict[str, str]:
    """Paths relative to the archive root (e.g. DR17 SAS) of the psField, photoField and r-band frame files."""
    run, camcol, field = int(run), int(camcol), int(field)
    return {
        "psfield": f"eboss/photo/redux/301/{run}/objcs/{camcol}/{psfield_name(run, camcol, field)}",
        "photofield": f"eboss/photoObj/301/{run}/{photofield_name(run, camcol)}",
        "frame": f"eboss/photoObj/frames/301/{run}/{camcol}/{frame_name(run, camcol, field)}",
    }


def _band_index(band) -> int:
    if isinstance(band, str) and band in BANDS:
        return BANDS.index(band)
    if isinstance(band, (int, np.integer)) and 0 <= int(band) < len(BANDS):
        return int(band)
    raise ValueError(f"band must be one of {tuple(BANDS)} or an index 0..4, got {band!r}")


# --- FITS readers --------------------------------------------------------------------------------


# Stream compressions of a FITS file (SDSS frames are .fits.bz2), by their magic bytes, as astropy detects them.
_STREAM_COMPRESSIONS = ((b"BZh", bz2.open), (b"\x1f\x8b", gzip.open))


def fits_source(path: str):
    """What :func:`astropy.io.fits.open` reads for ``path``: the file itself, or, for a bz2 or gzip stream, its
    whole content decompressed into memory (a BytesIO). Astropy reading a compressed stream seeks backwards
    in it, and every backward seek restarts the decompression: a full-size SDSS frame (.fits.bz2, 12 MB
    decompressed) took 3-5 s that way, most of it decompressing; once into memory is several times faster.
    A truncated or corrupt stream raises here (EOFError, OSError)."""
    with open(path, "rb") as f:
        magic = f.read(3)
    for prefix, opener in _STREAM_COMPRESSIONS:
        if magic.startswith(prefix):
            with opener(path, "rb") as stream:
                return std_io.BytesIO(stream.read())
    return path


def _read_hdus(path, kind: str) -> list[tuple[fits.Header, object]]:
    """All HDUs of ``path`` (FITS, or FITS compressed with bz2 or gzip) as (header, data) with data fully
    read; ValueError naming the file otherwise."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{kind} file {path} does not exist")
    try:
        with io.caught_warnings("always", record=True) as caught:  # one thread at a time: the survey's readers
            with fits.open(fits_source(path), memmap=False, lazy_load_hdus=False) as hdul:
                hdus = []
                for hdu in hdul:
                    data = hdu.data
                    if data is not None:
                        data = data.copy()
                    hdus.append((hdu.header.copy(), data))
    except Exception as exc:  # OSError, ValueError, EOFError (bz2), astropy VerifyError, ...
        raise ValueError(
            f"{kind} file {path} is not a readable FITS file (truncated or corrupt?): {type(exc).__name__}: {exc}"
        ) from exc
    for w in caught:
        if "truncated" in str(w.message).lower():
            raise ValueError(f"{kind} file {path} is truncated: {w.message}")
    if not hdus:
        raise ValueError(f"{kind} file {path} holds no HDUs (not a FITS file?)")
    return hdus


def _table(hdus, index: int, path, kind: str, expected: str):
    if len(hdus) <= index:
        raise ValueError(
            f"{kind} file {path} has {len(hdus)} HDUs (0..{len(hdus) - 1}); expected {expected} "
            f"in HDU {index} (truncated or wrong file?)"
        )
    data = hdus[index][1]
    if not isinstance(data, fits.FITS_rec) or len(data) == 0:
        raise ValueError(f"{kind} file {path}: HDU {index} is not a non-empty binary table; expected {expected}")
    return data


def _column(table, name: str, path, kind: str, index: int) -> np.ndarray:
    names = list(table.columns.names)
    for candidate in names:
        if candidate.lower() == name.lower():
            return np.asarray(table[candidate])
    raise ValueError(f"{kind} file {path}: HDU {index} table has no column {name!r} (columns: {', '.join(names)})")


def read_psfield(path, band=R_BAND) -> np.ndarray:
    """PSF parameters (s1, s2, sP [pixels], beta, b, p0) [6] of ``band`` from a psField file's HDU 6 table."""
    path = os.fspath(path)
    b = _band_index(band)
    table = _table(_read_hdus(path, "psField"), PSFIELD_HDU, path, "psField", "the PSF parameter table")
    params = []
    for name in psf_lib.PSF_PARAM_NAMES:
        col = _column(table, name, path, "psField", PSFIELD_HDU)
        row = np.atleast_1d(col[0])
        if row.shape != (len(BANDS),):
            raise ValueError(
                f"psField file {path}: column {name!r} in HDU {PSFIELD_HDU} has shape {row.shape} per "
                f"row, expected one value per band ({len(BANDS)},)"
            )
        params.append(float(row[b]))
    return psf_lib.validate_psf_params(np.array(params), where=f"psField file {path}, band {BANDS[b]}")


def read_photofield(path, field: int, band=R_BAND) -> float:
    """Gain (electrons per DN) of ``field`` in ``band`` from a photoField file (HDU 1: FIELD, GAIN columns)."""
    path = os.fspath(path)
    b = _band_index(band)
    table = _table(_read_hdus(path, "photoField"), PHOTOFIELD_HDU, path, "photoField", "the per-field table")
    field_col = _column(table, "FIELD", path, "photoField", PHOTOFIELD_HDU).astype(np.int64).ravel()
    gain_col = _column(table, "GAIN", path, "photoField", PHOTOFIELD_HDU)
    rows = np.flatnonzero(field_col == int(field))
    if rows.size == 0:
        shown = f"{field_col.min()}..{field_col.max()}" if field_col.size else "none"
        raise ValueError(f"photoField file {path}: field {int(field)} not present in column FIELD (fields {shown})")
    gain_row = np.atleast_1d(gain_col[rows[0]])
    if gain_row.shape != (len(BANDS),):
        raise ValueError(
            f"photoField file {path}: column 'GAIN' has shape {gain_row.shape} per row, expected one "
            f"value per band ({len(BANDS)},)"
        )
    gain = float(gain_row[b])
    if not (np.isfinite(gain) and gain > 0):
        raise ValueError(
            f"photoField file {path}: GAIN of field {int(field)} band {BANDS[b]} must be a positive "
            f"number of electrons per DN, got {gain}"
        )
    return gain


def read_frame(path) -> tuple[np.ndarray, np.ndarray]:
    """Sky [H, W] in DN per pixel (ALLSKY bilinearly interpolated at (YINTERP, XINTERP)) and calibvec [W] (nmgy/DN).

    Same result as the SDSS recipe ``map_coordinates(allsky, meshgrid(yinterp, xinterp), order=1,
    mode='nearest')`` (IDL ``interpolate(allsky, xinterp, yinterp, /grid)``). Accepts ``.fits`` or ``.fits.bz2``.
    """
    path = os.fspath(path)
    return _frame_sky(_read_hdus(path, "frame"), path)


def read_frame_for_prediction(path) -> tuple[np.ndarray, np.ndarray, fits.Header]:
    """A frame as a network input: (image [H, W], background [H, W], HDU 0 header).

    ``image`` is HDU 0 (nmgy, sky-subtracted); ``background`` is the sky of :func:`read_frame` (DN) times
    calibvec (nmgy per DN, per column), i.e. the frame's own sky in nmgy per pixel (the SDSS recipe
    ``img_dn = img / calibvec + sky``); the header carries the frame's WCS, FILTER, RUN, CAMCOL, FIELD.
    """
    path = os.fspath(path)
    hdus = _read_hdus(path, "frame")
    sky_dn, calibvec = _frame_sky(hdus, path)
    return np.asarray(hdus[0][1], np.float32), sky_dn * calibvec[None, :], hdus[0][0]


def frame_name_parts(path):
    """``(band, run, camcol, field)`` of a file named ``frame-BAND-RUN6-CAMCOL-FIELD4.fits[.bz2]``, else None."""
    match = _FRAME_RE.match(os.path.basename(os.fspath(path)))
    return None if match is None else (match.group(1), *(int(match.group(k)) for k in (2, 3, 4)))


def psfield_name_parts(path):
    """``(run, camcol, field)`` of a file named ``psField-RUN6-CAMCOL-FIELD4.fit``, else None."""
    match = _PSFIELD_RE.match(os.path.basename(os.fspath(path)))
    return None if match is None else tuple(int(match.group(k)) for k in (1, 2, 3))


def psfield_identity(path) -> tuple[tuple[int, int, int] | None, str]:
    """``((run, camcol, field), where it was read)`` of a psField file: the ``RUN``, ``CAMCOL`` and ``FIELD``
    keywords of its HDU 0 header, else those columns of its HDU 6 table, else its file name
    (:func:`psfield_name_parts`); ``(None, "")`` when none says. The header wins over the name: a renamed
    psField of another field is known by what it holds."""
    path = os.fspath(path)
    hdus = _read_hdus(path, "psField")
    keys = ("RUN", "CAMCOL", "FIELD")
    header = hdus[0][0]
    if all(k in header for k in keys):
        return tuple(int(header[k]) for k in keys), "HDU 0 RUN, CAMCOL, FIELD"
    if len(hdus) > PSFIELD_HDU and isinstance(hdus[PSFIELD_HDU][1], fits.FITS_rec):
        table = hdus[PSFIELD_HDU][1]
        names = {n.upper(): n for n in table.columns.names}
        if all(k in names for k in keys) and len(table):
            return tuple(int(np.ravel(table[names[k]])[0]) for k in keys), f"HDU {PSFIELD_HDU} RUN, CAMCOL, FIELD"
    named = psfield_name_parts(path)
    return (named, "file name") if named else (None, "")


def _frame_sky(hdus, path: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`read_frame` of HDUs already read."""
    image = hdus[0][1]
    if image is None or np.ndim(image) != 2:
        raise ValueError(
            f"frame file {path}: HDU 0 must be a 2-D image, got "
            f"{'no data' if image is None else f'shape {np.shape(image)}'}"
        )
    h, w = image.shape
    if len(hdus) < 3:
        raise ValueError(
            f"frame file {path} has {len(hdus)} HDUs; expected calibvec in HDU 1 and the sky table "
            f"(ALLSKY, XINTERP, YINTERP) in HDU 2 (truncated or wrong file?)"
        )
    calib = hdus[1][1]
    if calib is None or np.shape(calib) != (w,):
        raise ValueError(
            f"frame file {path}: HDU 1 calibvec has shape {np.shape(calib) if calib is not None else None}"
            f", expected ({w},) (one value per image column)"
        )
    calib = np.asarray(calib, dtype=np.float64)
    if not np.all(np.isfinite(calib)) or np.any(calib <= 0):
        raise ValueError(f"frame file {path}: HDU 1 calibvec must be positive finite nmgy per DN")
    table = _table(hdus, 2, path, "frame", "the sky table (ALLSKY, XINTERP, YINTERP)")
    allsky = np.asarray(_column(table, "ALLSKY", path, "frame", 2)[0], dtype=np.float64)
    xinterp = np.asarray(_column(table, "XINTERP", path, "frame", 2)[0], dtype=np.float64).ravel()
    yinterp = np.asarray(_column(table, "YINTERP", path, "frame", 2)[0], dtype=np.float64).ravel()
    if allsky.ndim != 2:
        raise ValueError(
            f"frame file {path}: HDU 2 column 'ALLSKY' has shape {allsky.shape}, expected a 2-D grid (TDIM missing?)"
        )
    if xinterp.shape != (w,) or yinterp.shape != (h,):
        raise ValueError(
            f"frame file {path}: HDU 2 XINTERP/YINTERP have lengths {xinterp.size}/{yinterp.size}, "
            f"expected {w}/{h} (image columns/rows)"
        )
    if not (np.all(np.isfinite(allsky)) and np.all(np.isfinite(xinterp)) and np.all(np.isfinite(yinterp))):
        raise ValueError(f"frame file {path}: HDU 2 ALLSKY/XINTERP/YINTERP contain NaN or infinite values")
    rows = interp.linear_weights(yinterp, allsky.shape[0])
    cols = interp.linear_weights(xinterp, allsky.shape[1])
    sky = rows @ allsky @ cols.T
    return sky, calib


# --- one field and a bank ------------------------------------------------------------------------


def block_average(image: np.ndarray, grid_shape) -> np.ndarray:
    """Mean of ``image`` [H, W] over cells: node (a, b) averages rows [a*H/gh, (a+1)*H/gh), cols [b*W/gw, ...)."""
    image = np.asarray(image, dtype=np.float64)
    h, w = image.shape
    gh, gw = (int(v) for v in grid_shape)
    if not (1 <= gh <= h and 1 <= gw <= w):
        raise ValueError(f"grid shape {(gh, gw)} must be between (1, 1) and the frame shape {(h, w)}")
    row_starts = (np.arange(gh) * h + gh - 1) // gh  # first row i with i * gh >= a * h
    col_starts = (np.arange(gw) * w + gw - 1) // gw
    sums = np.add.reduceat(np.add.reduceat(image, row_starts, axis=0), col_starts, axis=1)
    counts = np.outer(np.diff(np.append(row_starts, h)), np.diff(np.append(col_starts, w)))
    return sums / counts


def field_from_files(psfield, photofield, frame, run: int, camcol: int, field: int, grid_shape=DEFAULT_GRID) -> dict:
    """One r-band field: ``psf_params`` [6], ``sky_grid`` [gh, gw] (electrons per pixel), ``gain`` (e-/DN),
    ``calibration`` (median calibvec, nmgy/DN), ``name`` ("RUN-CAMCOL-FIELD"), ``frame_shape`` (H, W), ``files``."""
    psf_params = read_psfield(psfield, band=R_BAND)
    gain = read_photofield(photofield, field, band=R_BAND)
    sky_dn, calibvec = read_frame(frame)
    sky_grid = block_average(sky_dn * gain, grid_shape)
    if np.any(sky_grid <= 0):
        raise ValueError(
            f"frame file {os.fspath(frame)}: sky level (ALLSKY) must be positive, "
            f"got minimum {sky_grid.min()} electrons per pixel"
        )
    return dict(
        psf_params=psf_params,
        sky_grid=sky_grid,
        gain=gain,
        calibration=float(np.median(calibvec)),
        name=field_id(run, camcol, field),
        frame_shape=tuple(int(v) for v in sky_dn.shape),
        files=dict(psfield=os.fspath(psfield), photofield=os.fspath(photofield), frame=os.fspath(frame)),
    )


def _index_folder(directory: str) -> dict[str, str]:
    """Basename -> path of every file below ``directory`` (flat or archive layout); first in sorted order wins."""
    found: dict[str, str] = {}
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            found.setdefault(name, os.path.join(root, name))
    return found


def _find(index: dict[str, str], names, directory: str, kind: str, archive_path: str) -> str:
    for name in names:
        if name in index:
            return index[name]
    raise FileNotFoundError(
        f"{kind} file {names[0]} not found in {directory} (flat, or under the archive path {archive_path})"
    )


def discover_fields(directory) -> list[tuple[int, int, int]]:
    """(run, camcol, field) of every r-band frame file (``frame-r-*.fits`` or ``.fits.bz2``) below ``directory``."""
    directory = os.fspath(directory)
    found = set()
    for name in _index_folder(directory):
        match = _FRAME_RE.match(name)
        if match and match.group(1) == "r":
            found.add((int(match.group(2)), int(match.group(3)), int(match.group(4))))
    return sorted(found)


def _reference_index(psf_params: np.ndarray, sky_grid: np.ndarray) -> int:
    """Field nearest (relative distance) to the median PSF FWHM and median mean sky level."""
    fwhm = np.array([psf_lib.fwhm_pixels(p) for p in psf_params])
    sky = sky_grid.reshape(len(sky_grid), -1).mean(axis=1)
    dist = np.hypot(fwhm / np.median(fwhm) - 1.0, sky / np.median(sky) - 1.0)
    return int(np.argmin(dist))


def build_bank(directory, fields=None, grid_shape=DEFAULT_GRID, reference=None) -> fields_lib.FieldBank:
    """A FieldBank of r-band fields read from SDSS files in ``directory`` (flat or archive layout).

    ``fields``: list of (run, camcol, field), or None for every ``frame-r-*`` file found. ``reference``:
    (run, camcol, field) or "RUN-CAMCOL-FIELD"; None picks the field nearest the median PSF FWHM and sky.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"SDSS data directory {directory} does not exist or is not a directory")
    index = _index_folder(directory)
    if fields is None:
        fields = discover_fields(directory)
        if not fields:
            raise FileNotFoundError(
                f"no r-band frame files (frame-r-RUN6-CAMCOL-FIELD4.fits[.bz2]) found in {directory}"
            )
    fields = [parse_field_id(f) for f in fields]
    if len(set(fields)) != len(fields):
        raise ValueError(f"duplicate fields in the field list for {directory}")
    records = []
    for run, camcol, field in fields:
        arch = archive_paths(run, camcol, field)
        frame_fits = frame_name(run, camcol, field)
        psfield = _find(index, [psfield_name(run, camcol, field)], directory, "psField", arch["psfield"])
        photofield = _find(index, [photofield_name(run, camcol)], directory, "photoField", arch["photofield"])
        frame = _find(index, [frame_fits, frame_fits[: -len(".bz2")]], directory, "frame", arch["frame"])
        records.append(field_from_files(psfield, photofield, frame, run, camcol, field, grid_shape=grid_shape))
    shapes = {r["frame_shape"] for r in records}
    if len(shapes) != 1:
        raise ValueError(f"frames in {directory} have different shapes {sorted(shapes)}; a bank needs one frame shape")
    names = [r["name"] for r in records]
    psf_params = np.stack([r["psf_params"] for r in records])
    sky_grid = np.stack([r["sky_grid"] for r in records])
    if reference is None:
        ref = _reference_index(psf_params, sky_grid)
    else:
        ref_name = field_id(*parse_field_id(reference))
        if ref_name not in names:
            raise ValueError(f"reference field {ref_name} is not among the {len(names)} fields read from {directory}")
        ref = names.index(ref_name)
    description = (
        f"{len(names)} SDSS r-band fields from {directory}: PSF from psField HDU {PSFIELD_HDU}, gain from "
        f"photoField GAIN, sky from frame ALLSKY (interpolated with XINTERP/YINTERP) x gain in electrons "
        f"per pixel, block-averaged to a {sky_grid.shape[1]}x{sky_grid.shape[2]} grid, calibration = "
        f"median frame calibvec; reference field {names[ref]}"
    )
    return fields_lib.FieldBank(
        names=np.array(names),
        psf_params=psf_params,
        sky_grid=sky_grid,
        gain=np.array([r["gain"] for r in records]),
        calibration=np.array([r["calibration"] for r in records]),
        frame_shape=shapes.pop(),
        reference=ref,
        synthetic=False,
        description=description,
        source=directory,
    )
