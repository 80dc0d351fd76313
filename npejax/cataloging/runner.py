"""The survey runner: a list of frames, one catalog file per frame, resumable, split into shards (the library
behind ``python -m npejax.survey``).

Python API::

    frames = read_frame_list("frames.txt", background=None, field_id=None, psf_params=None)   # [Frame]
    shard, num_shards, _ = resolve_shard("0/4")             # None: the Slurm job array's, else 0/1
    mine = shard_frames(frames, shard, num_shards)
    todo = pending_frames(mine, out, "fits")               # without a catalog yet; or, checking what made them:
    net = Predictor.from_workdir(workdir)
    todo = plan_resume(mine, out, "fits", {f.name: frame_identity(net.network_identity(), f, 0.5, 512)
                                           for f in mine}).todo   # IdentityMismatchError: made otherwise
    summary = catalog_frames(net, todo, out, "fits", FieldBankCache(None),
                             failures_file=failures_path(out, shard, num_shards))
    table, missing = merge_catalogs(out)                    # one table of every catalog, by frame name

**The frame list** is a text file, one frame per line, ``#`` comments, blank lines ignored::

    frame-r-000094-1-0012.fits.bz2 psfield=psField-000094-1-0012.fit    # an SDSS r-band frame
    images/f1.fits background=0.7 field-id=94-1-12                     # a FITS image (nmgy, sky-subtracted)
    images/f2.fits background=images/f2-sky.fits psf-params=1.2,3.5,1.5,3.0,0.1,0.08
    images/f3.fits                                                     # the command's --background, --field-id
    images/f4.fits background=0.7 fwhm=1.4                             # or psf-image=f4-psf.fits

Each line is a path and ``key=value`` words (:data:`LINE_KEYS`; shell quoting for paths with spaces; a path
that looks like ``word=...`` is written ``./word=...``). A line with ``psfield=`` is an SDSS frame read as
``python -m npejax.predict --sdss-frame F --psfield P`` reads it (:func:`npejax.cataloging.images.open_sdss_frame`:
image, its own sky as background, the r-band PSF of the psField). Any other line is a FITS image (its first
2-D image HDU, in nmgy, sky-subtracted) with ``background=`` (nmgy per pixel: a number or a FITS file of the
image's shape) and one of ``field-id=`` (a field of the field bank, default the embedded synthetic bank),
``psf-params=`` (s1,s2,sP,beta,b,p0, pixels), ``fwhm=`` (arcsec) or ``psf-image=`` (a FITS image of the PSF;
:data:`PSF_KEYS`); the ``background``, ``field_id``, ``psf_params`` and ``fwhm`` given to
:func:`read_frame_list` (the command's flags) are the defaults of lines that leave them out (a line's own PSF
key replaces the PSF defaults). Every frame is checked as ``npejax.predict`` checks its input
(:mod:`npejax.cataloging.checks`; its pixels unless ``image_checks`` is false). Relative paths are relative
to the folder of the list file. A frame's *name* (:func:`frame_stem`) is its file name without
``.fits``/``.fit``/``.fts`` and ``.gz``/``.bz2``/``.fz``; names must be unique in the list.

**Files** under the output folder ``out``: ``catalogs/NAME.fits`` (or ``.csv``; :func:`catalog_path`), one
per frame, written atomically, with the columns of :func:`npejax.cataloging.images.catalog_inputs` (``image``
is 0; ``ra``/``dec`` for frames with a celestial WCS) and ``FRAME`` (its name) in the metadata; and
``failures-I-of-N.csv`` (:func:`failures_path`; columns ``index, name, path, reason``), rewritten at each
failure of shard I of N and removed by a run of that shard with none (:func:`clear_failures`).
:func:`catalog_frames` predicts each frame in overlapping chunks of ``chunk_size`` pixels (bounded memory;
a tile is taken from exactly one chunk, so a source on a chunk seam is reported once and the catalog equals
the whole-frame one, see :mod:`npejax.nn.predictor`), while ``readers`` threads read the next frames (a
full-size .fits.bz2 frame takes a CPU core up to a second to read, mostly bz2 decompression: on an
accelerator, give as many readers as it takes to keep up). A frame that cannot be cataloged (missing,
truncated or corrupt file, a value out of range, a non-finite network output) is one line
``failed: frame K NAME (PATH): REASON`` on stderr and a row of the failures file; the other frames go on.
Frames whose catalog exists are skipped (:func:`pending_frames`), so rerunning the same command resumes.

**Identity**: each catalog records what made it (:func:`frame_identity`, written by :func:`write_catalog`: a
FITS catalog in its header keyword ``NPEJAXID``, a CSV one in ``out/identity/NAME.json`` with the CSV's
SHA-256): ``network`` (``pretrained NAME`` or ``workdir W checkpoint best (epoch N)``), ``network_sha256`` (the
pretrained file's, or that of the checkpoint's checksum record: :func:`npejax.nn.checkpoints.network_identity`),
``decode`` (``posterior.decode``), ``min_prob``, ``chunk_size`` (pixels, 0: whole), the frame's ``background``
and ``psf`` as its line gives them, ``quality`` (the quality flag's columns:
:func:`npejax.cataloging.images.add_quality`) and ``electrons_per_nmgy`` (its gain / calibration when given),
and ``npejax_version``. A resume (:func:`plan_resume`) compares :data:`COMPARED_KEYS` (the network, decode,
min_prob, quality, background, PSF, electrons_per_nmgy; not the chunk size, which leaves the catalog as it is,
nor the version; a key an older identity lacks reads as :data:`IDENTITY_DEFAULTS`: no quality columns) with the
run's: a catalog made otherwise is an :class:`IdentityMismatchError`
naming it and the keys with both values (or, with ``redo``, cataloged again), before anything is written; a
catalog that cannot be read (empty, truncated, corrupt; catalogs are written atomically, so only damage after
the write does this) is cataloged again with a warning naming it; a catalog that records nothing (written by
npejax before catalogs recorded their identity) is kept with a warning, as checkpoints without checksums are
loaded: refusing it would strand every survey begun before, and ``redo`` catalogs it again.

**Sharding**: frame K (0-based, counting the list's frames in order) belongs to shard K mod N
(:func:`shard_frames`). :func:`resolve_shard` takes ``I/N`` (0 <= I < N); without it, a Slurm job array's
``SLURM_ARRAY_TASK_ID`` and ``SLURM_ARRAY_TASK_COUNT`` give I = (task id - ``SLURM_ARRAY_TASK_MIN``) /
``SLURM_ARRAY_TASK_STEP`` (0 and 1 when unset) and N (:func:`shard_from_environment`); otherwise every frame
(0/1). Shards write different files: N jobs may share ``out``.

**Merging** (:func:`merge_catalogs`): one table of every catalog in ``out/catalogs`` (sorted by frame name),
or of the given names in that order: a ``frame`` column (the frame's name) followed by the catalog columns
less ``image`` (units kept, ``FLUXUNIT`` nmgy, ``NFRAMES``; NaN ``ra``/``dec`` for frames without a WCS among
frames with one), held in memory (about 150 bytes a row), and the names without a catalog. The catalogs
must record one network, min_prob and quality setting (:data:`RUN_KEYS`; two frames that differ are named in an
:class:`IdentityMismatchError`), which the merged table's meta records (``NPEJAXID``), with the quality flag's
thresholds and crop (:data:`QUALITY_META`).

**Exit semantics** of the command: a frame that failed (:attr:`Summary.failures`) or a name without a catalog
makes the exit status :data:`EXIT_FRAMES_FAILED` (1) at the end, after the other frames; a bad frame list
(syntax, a duplicate name, a FITS line with no background or PSF: ValueError naming the list and line), a
bad shard (:class:`npejax.cli.UsageError`) or a missing field bank is refused before any frame is read.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import os
import re
import resource
import shlex
import sys
import time
import traceback

import jax
import numpy as np
from astropy import table as table_lib
from astropy.io import fits

from npejax import catalogs as catalog_lib
from npejax import cli, io
from npejax.cataloging import images
from npejax.cli import __version__  # npejax.__version__ (the package is above the layers: tests/test_layout.py)
from npejax.nn.predictor import CHUNK_SIZE, Predictor
from npejax.sim import fields as fields_lib

EXIT_FRAMES_FAILED = 1
CATALOG_DIR = "catalogs"
FORMATS = {"fits": ".fits", "csv": ".csv"}
LINE_KEYS = ("background", "field-id", "psf-params", "fwhm", "psf-image", "psfield")
PSF_KEYS = ("field-id", "psf-params", "fwhm", "psf-image")  # a FITS line's PSF: one of them
FAILURE_COLUMNS = ["index", "name", "path", "reason"]
_COMPRESSION = (".gz", ".bz2", ".fz")
_SHARD_RE = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*=")  # a key=value word (a path like this: write ./x=y.fits)
SLURM_VARS = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_STEP")


# --- the frame list ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Frame:
    """One frame of the list: ``index`` (0-based among the list's frames), ``line`` (1-based line number),
    ``path`` (resolved), ``name`` (:func:`frame_stem`), and either ``psfield`` (an SDSS frame) or
    ``background`` (float or FITS path) with one of ``field_id``, ``psf_params``, ``fwhm`` (text) and
    ``psf_image`` (a FITS path)."""

    index: int
    line: int
    path: str
    name: str
    psfield: str | None = None
    background: float | str | None = None
    field_id: str | None = None
    psf_params: str | None = None
    fwhm: str | None = None
    psf_image: str | None = None

    @property
    def is_sdss(self) -> bool:
        return self.psfield is not None


def frame_stem(path: str) -> str:
    """The name of a frame file (its stem): its base name without a compression and a FITS extension
    (``frame-r-000094-1-0012.fits.bz2`` -> ``frame-r-000094-1-0012``)."""
    name = os.path.basename(os.fspath(path))
    for exts in (_COMPRESSION, images.FITS_SUFFIXES):
        for ext in exts:
            if name.lower().endswith(ext) and len(name) > len(ext):
                name = name[: -len(ext)]
                break
    return name


def _resolve(folder: str, path: str) -> str:
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(folder, path))


def read_frame_list(
    path: str,
    background=None,
    field_id: str | None = None,
    psf_params: str | None = None,
    require_inputs: bool = True,
    fwhm: str | None = None,
) -> list[Frame]:
    """The frames of the list file ``path`` (module doc), with the command's defaults filled in.

    Raises ValueError (``path line N: ...``) for a line that cannot be a frame: unknown or repeated keys,
    more than one path, an SDSS line with background or PSF keys, a FITS line with no background or PSF
    (after the defaults; unless ``require_inputs`` is false: for the names alone), two frames of the same
    name; FileNotFoundError for a missing list. Values (numbers, files, fields) are checked per frame when
    it is read, so that one bad frame does not stop the others."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--frames {path}: no such file (a list of frames, one per line)")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--frames {path}: cannot read it as a text file ({type(exc).__name__}: {exc})") from None
    folder = os.path.dirname(os.path.abspath(path))
    frames, names = [], {}
    for number, text in enumerate(lines, 1):
        where = f"--frames {path} line {number}"
        try:
            words = shlex.split(text, comments=True)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc} in {text.strip()!r}") from None
        if not words:
            continue
        keys, paths = {}, []
        for word in words:
            if "=" in word and word.split("=", 1)[0] in LINE_KEYS:
                key, value = word.split("=", 1)
                if key in keys:
                    raise ValueError(f"{where}: {key}= given twice")
                if not value:
                    raise ValueError(f"{where}: {key}= has no value")
                keys[key] = value
            elif _KEY_RE.match(word):
                raise ValueError(
                    f"{where}: unknown key {word.split('=', 1)[0]!r}; expected {', '.join(k + '=' for k in LINE_KEYS)}"
                )
            else:
                paths.append(word)
        if len(paths) != 1:
            raise ValueError(f"{where}: expected one frame file and key=value words, got {len(paths)} paths {paths}")
        file = _resolve(folder, paths[0])
        name = frame_stem(file)
        if name in names:
            raise ValueError(
                f"{where}: frame name {name!r} is also line {names[name]}'s; catalogs are named by "
                "frame, so names must be unique (rename or list one of them)"
            )
        names[name] = number
        if "psfield" in keys:
            extra = [k + "=" for k in ("background", *PSF_KEYS) if k in keys]
            if extra:
                raise ValueError(
                    f"{where}: {', '.join(extra)} with psfield=: an SDSS frame brings its own "
                    "background and the psField its PSF; leave them out"
                )
            frames.append(Frame(len(frames), number, file, name, psfield=_resolve(folder, keys["psfield"])))
            continue
        bg = keys.get("background", background)
        if bg is None and require_inputs:
            raise ValueError(
                f"{where}: {paths[0]} needs background= (nmgy per pixel: a number or a FITS file) "
                "or the command's --background"
            )
        if isinstance(bg, str):
            try:
                bg = float(bg)
            except ValueError:
                bg = _resolve(folder, bg) if "background" in keys else bg
        given = [k for k in PSF_KEYS if k in keys]
        if len(given) > 1:
            raise ValueError(f"{where}: give one of {', '.join(k + '=' for k in PSF_KEYS)} not {len(given)}")
        if given:
            fid, psf, width = keys.get("field-id"), keys.get("psf-params"), keys.get("fwhm")
            psf_image = _resolve(folder, keys["psf-image"]) if "psf-image" in keys else None
        else:
            fid, psf, width, psf_image = field_id, psf_params, fwhm, None
        if fid is None and psf is None and width is None and psf_image is None and require_inputs:
            raise ValueError(
                f"{where}: {paths[0]} needs field-id= or psf-params= (or fwhm=, psf-image=, or the command's "
                "--field-id, --psf-params or --fwhm)"
            )
        frames.append(
            Frame(
                len(frames),
                number,
                file,
                name,
                background=bg,
                field_id=fid,
                psf_params=psf,
                fwhm=width,
                psf_image=psf_image,
            )
        )
    return frames


# --- shards ----------------------------------------------------------------------------------------------


def parse_shard(text: str, what: str = "--shard") -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N; :class:`npejax.cli.UsageError` naming ``what`` otherwise."""
    match = _SHARD_RE.fullmatch(str(text))
    if not match or not int(match.group(1)) < int(match.group(2)):
        raise cli.UsageError(
            f"{what} {text}: expected I/N with 0 <= I < N (this job's shard and the number of "
            "shards; frame K goes to shard K mod N), e.g. 0/4"
        )
    return int(match.group(1)), int(match.group(2))


def shard_from_environment(environ=None) -> tuple[int, int] | None:
    """(I, N) of a Slurm job array task (module doc), or None outside one."""
    environ = os.environ if environ is None else environ
    if environ.get("SLURM_ARRAY_TASK_ID") is None:
        return None
    values = {}
    for name, default in zip(SLURM_VARS, (None, None, "0", "1")):
        text = environ.get(name, default)
        if text is None or not str(text).strip().lstrip("-").isdigit():
            raise cli.UsageError(
                f"{name}={text!r}: a Slurm job array task needs integer SLURM_ARRAY_TASK_ID and "
                "SLURM_ARRAY_TASK_COUNT; give --shard I/N instead"
            )
        values[name] = int(text)
    task, count, low, step = (values[n] for n in SLURM_VARS)
    index, rest = divmod(task - low, max(step, 1))
    if rest or not 0 <= index < count:
        raise cli.UsageError(
            f"SLURM_ARRAY_TASK_ID={task} (min {low}, step {step}, count {count}) is not one of "
            "count evenly spaced tasks (an array like --array=0-99 or 1-100:1 is); give --shard I/N"
        )
    return index, count


def resolve_shard(text: str | None, environ=None) -> tuple[int, int, str]:
    """(I, N, where they came from) of ``--shard`` ``text``, else of the Slurm job array, else (0, 1)."""
    if text is not None:
        return (*parse_shard(text), f"--shard {text}")
    environ = os.environ if environ is None else environ
    found = shard_from_environment(environ)
    if found is not None:
        return (
            *found,
            f"SLURM_ARRAY_TASK_ID={environ['SLURM_ARRAY_TASK_ID']} of "
            f"SLURM_ARRAY_TASK_COUNT={environ['SLURM_ARRAY_TASK_COUNT']}",
        )
    return 0, 1, "all frames"


def shard_frames(frames: list[Frame], shard: int, num_shards: int) -> list[Frame]:
    """The frames of shard ``shard`` of ``num_shards``: frame K goes to shard K mod N."""
    return [f for f in frames if f.index % num_shards == shard]


# --- files -----------------------------------------------------------------------------------------------


def catalog_path(out: str, frame: Frame | str, fmt: str) -> str:
    """``out/catalogs/NAME.fits`` (or ``.csv``: ``fmt`` is a key of :data:`FORMATS`)."""
    name = frame.name if isinstance(frame, Frame) else frame
    return os.path.join(out, CATALOG_DIR, name + FORMATS[fmt])


def failures_path(out: str, shard: int, num_shards: int) -> str:
    return os.path.join(out, f"failures-{shard}-of-{num_shards}.csv")


def failure_files(out: str) -> list[str]:
    """The failures files of every shard in ``out`` (sorted)."""
    return sorted(os.path.join(out, f) for f in os.listdir(out) if f.startswith("failures-") and f.endswith(".csv"))


def pending_frames(frames: list[Frame], out: str, fmt: str) -> list[Frame]:
    """The frames of ``frames`` whose catalog does not exist yet."""
    return [f for f in frames if not os.path.exists(catalog_path(out, f, fmt))]


def clear_failures(path: str, failures: list[dict]) -> None:
    """Removes the failures file ``path`` after a run of its shard with no failure."""
    if not failures and os.path.exists(path):
        os.unlink(path)


def peak_memory_text() -> str:
    """The process's peak resident memory (and the first device's peak, on an accelerator)."""
    text = f"peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB (host max RSS)"
    try:
        stats = jax.local_devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001  (not implemented on some backends)
        stats = {}
    if stats.get("peak_bytes_in_use"):
        text += f", {stats['peak_bytes_in_use'] / 2**20:.0f} MiB on {jax.local_devices()[0]}"
    return text


# --- one frame ---------------------------------------------------------------------------------------------


class FieldBankCache:
    """The field bank ``path`` (None: the embedded synthetic bank), loaded at its first use (once per run)."""

    def __init__(self, path):
        self.path, self._bank = path, None

    def load(self) -> fields_lib.FieldBank:
        if self._bank is None:
            try:
                self._bank = fields_lib.load_bank(self.path)
            except (OSError, ValueError) as exc:
                raise cli.UsageError(f"--bank {self.path}: {cli.message(exc)}") from None
        return self._bank

    def psf_params(self, field_id: str) -> np.ndarray:
        self.load()
        try:
            return self._bank.psf_params[self._bank.index(field_id)]
        except KeyError as exc:
            raise ValueError(f"field-id {field_id}: {cli.message(exc)}") from None

    def check_default(self, field_id: str | None) -> None:
        """The command's ``--field-id`` (None: nothing to check) is a field of the bank; a
        :class:`npejax.cli.UsageError` naming it otherwise (loads the bank)."""
        if field_id is None:
            return
        try:
            self.psf_params(field_id)
        except ValueError as exc:
            raise cli.UsageError(f"--field-id {field_id}: {cli.message(exc).split(': ', 1)[1]}") from None


def open_frame(frame: Frame, bank: FieldBankCache, image_checks: bool = True) -> images.Inputs:
    """The frame's image, background and PSF, read and checked (the readers and checks of ``npejax.predict``;
    the pixel checks of :mod:`npejax.cataloging.checks` only when ``image_checks``)."""
    if frame.is_sdss:
        return images.open_sdss_frame(frame.path, frame.psfield, image_checks)
    psf = bank.psf_params(frame.field_id) if frame.field_id is not None else frame.psf_params
    return images.open_inputs(
        frame.path,
        background=frame.background,
        psf_params=psf,
        bank=bank.path if frame.fwhm is not None else None,
        fwhm=frame.fwhm,
        psf_image=frame.psf_image,
        image_checks=image_checks,
        psf_flags=("fwhm=", "psf-image="),
    )


# A frame's own fault (a missing, truncated or corrupt file, a value out of range, a non-finite output): its
# message is the reason. Anything else is reported with its type and traceback, and the survey goes on.
_FRAME_ERRORS = cli.USER_ERRORS + (OSError, EOFError)


def _reason(exc: BaseException) -> str:
    text = cli.message(exc)
    return text if isinstance(exc, _FRAME_ERRORS) else f"{type(exc).__name__}: {text}"


# --- identity: what made a catalog --------------------------------------------------------------------------

IDENTITY_KEY = "NPEJAXID"  # the FITS header keyword (table meta) of a catalog's identity, as JSON
IDENTITY_DIR = "identity"  # out/identity/NAME.json: a CSV catalog's identity (plain CSV has no metadata)
# Keys of the identity that a resume compares (the others are the record: who, with which npejax, chunked how):
# the same for every frame of a run (and of a merged table):
RUN_KEYS = ("network_sha256", "decode", "min_prob", "quality")
# ... and the frame's own inputs, as the frame list gives them, and the quality flag's gain / calibration if given:
COMPARED_KEYS = RUN_KEYS + ("background", "psf", "electrons_per_nmgy")
# what an identity that lacks a key meant (written before the key existed): no quality columns, no gain given
IDENTITY_DEFAULTS = {"quality": False, "electrons_per_nmgy": None}


# the quality flag's thresholds and settings (npejax.cataloging.quality), kept in a merged table's meta
QUALITY_META = ("QTHRDET", "QTHRIMG", "QTHRRAT", "QTHRSRC", "QAPFWHM", "QERRSTAR", "QERRGAL", "QCROP", "QMARGIN")


class IdentityMismatchError(cli.UsageError):
    """A resume (or merge) over catalogs made by another network or with other settings (exit 2)."""


def frame_identity(
    network: dict,
    frame: Frame,
    min_prob: float,
    chunk_size: int | None,
    bank: str | None = None,
    quality: bool = False,
    electrons_per_nmgy: float | None = None,
) -> dict:
    """What makes the catalog of ``frame``, as its file records it: the ``network`` (the keys of
    :meth:`npejax.nn.predictor.Predictor.network_identity`: ``network``, ``network_sha256``, ``decode``),
    ``min_prob``, ``chunk_size`` (pixels, 0: whole; recorded only: chunked and whole predictions agree), the
    frame's ``background`` (nmgy per pixel, a FITS file's absolute path, or the SDSS frame's own sky) and
    ``psf`` (``psf-params=...``, ``field-id=F bank=B``, or ``psfield=P``) as the frame list gives them,
    ``quality`` (whether the catalog has the quality flag's columns) and ``electrons_per_nmgy`` (the gain /
    calibration given for it, None: the frame's own), and ``npejax_version``."""
    if frame.is_sdss:
        background, psf = "sdss frame sky", f"psfield={os.path.abspath(frame.psfield)}"
    else:
        background = frame.background
        if isinstance(background, str):
            background = os.path.abspath(background)
        elif background is not None:
            background = float(background)
        if frame.field_id is not None:
            psf = f"field-id={frame.field_id} bank={os.path.abspath(bank) if bank else 'synthetic'}"
        else:
            try:  # the same parameters however written (1.50 or 1.5); a bad value fails the frame later
                psf = "psf-params=" + ",".join(f"{float(v):g}" for v in str(frame.psf_params).split(","))
            except ValueError:
                psf = f"psf-params={frame.psf_params}"
    return dict(
        network=str(network.get("network")),
        network_sha256=network.get("network_sha256"),
        decode=network.get("decode"),
        min_prob=float(min_prob),
        chunk_size=int(chunk_size or 0),
        background=background,
        psf=psf,
        quality=bool(quality),
        electrons_per_nmgy=None if electrons_per_nmgy is None else float(electrons_per_nmgy),
        npejax_version=__version__,
    )


def identity_path(path: str) -> str:
    """Where the identity of catalog ``path`` (``out/catalogs/NAME.fits|csv``) is: ``path`` itself for FITS (header
    keyword :data:`IDENTITY_KEY`), ``out/identity/NAME.json`` (:data:`IDENTITY_DIR`) for CSV."""
    if catalog_lib.table_format(path) == "fits":
        return path
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(os.path.dirname(folder), IDENTITY_DIR, os.path.splitext(name)[0] + ".json")


def write_catalog(table: table_lib.Table, path: str, identity: dict) -> str:
    """Writes a frame's catalog with its ``identity`` (:func:`frame_identity`), atomically: in the FITS header
    (:data:`IDENTITY_KEY`), or for CSV in ``out/identity/NAME.json`` (:func:`identity_path`), written after the
    CSV with the CSV's SHA-256 (a CSV that differs from it, or one without the file, is not taken as
    identified)."""
    text = json.dumps(identity, sort_keys=True)
    if catalog_lib.table_format(path) == "fits":
        table.meta[IDENTITY_KEY] = text
        return catalog_lib.write_table(table, path)
    side = identity_path(path)
    if os.path.exists(side):  # a CSV written over an identified one: never beside the old identity
        os.unlink(side)
    catalog_lib.write_table(table, path)
    os.makedirs(os.path.dirname(side), exist_ok=True)
    io.write_json(side, dict(identity, csv_sha256=io.sha256_file(path)))
    return path


class DamagedCatalogError(ValueError):
    """A catalog file that cannot be read (empty, truncated, corrupt): its frame is cataloged again."""


def read_catalog(path: str) -> tuple[table_lib.Table, dict | None]:
    """(the catalog table, :func:`read_identity`) of a frame's catalog file; :class:`DamagedCatalogError` naming
    the file and why when it cannot be read."""
    try:
        with io.caught_warnings("ignore"):  # astropy's "file may have been truncated": the error below says it
            table = catalog_lib.read_table(path)
    except Exception as exc:  # noqa: BLE001  (astropy raises many types for a damaged file)
        raise DamagedCatalogError(f"catalog {path} cannot be read ({type(exc).__name__}: {cli.message(exc)})") from None
    return table, read_identity(path)


def read_identity(path: str) -> dict | None:
    """The identity a frame's catalog records (:func:`write_catalog`), or None when it records none (written by
    npejax before catalogs recorded it). Reads no rows where it can: a FITS catalog's headers, checked to span
    the whole file (a truncated file's do not); a CSV's identity file, whose SHA-256 must be the CSV's (a CSV
    without one is read whole). :class:`DamagedCatalogError` naming the file and why when it cannot be read."""
    try:
        if catalog_lib.table_format(path) == "fits":
            with io.caught_warnings("ignore"):  # "file may have been truncated": checked below
                with fits.open(path) as hdul:
                    last = len(hdul) - 1
                    end = hdul.fileinfo(last)["datLoc"] + hdul.fileinfo(last)["datSpan"]
                    text = hdul[last].header.get(IDENTITY_KEY) if last >= 1 else None
            size = os.path.getsize(path)
            if last < 1 or size < end:
                raise DamagedCatalogError(
                    f"catalog {path} is truncated or not a catalog ({size} bytes, "
                    + (f"its headers need {end})" if last >= 1 else "no table)")
                )
            identity = None if text is None else json.loads(text)
        else:
            side = identity_path(path)
            if not os.path.exists(side):
                catalog_lib.read_table(path)  # an older npejax's: readable at least
                return None
            with open(side) as f:
                identity = json.load(f)
            if not isinstance(identity, dict):
                raise TypeError("not a JSON object")
            if identity.pop("csv_sha256", None) != io.sha256_file(path):
                raise DamagedCatalogError(f"catalog {path} is not the one {side} describes (its SHA-256 differs)")
        if identity is not None and not isinstance(identity, dict):
            raise TypeError("not a JSON object")
    except DamagedCatalogError:
        raise
    except Exception as exc:  # noqa: BLE001  (astropy raises many types for a damaged file)
        raise DamagedCatalogError(f"catalog {path} cannot be read ({type(exc).__name__}: {cli.message(exc)})") from None
    return identity


def identity_differences(stored: dict, current: dict, keys=COMPARED_KEYS) -> list[str]:
    """``["key stored -> current", ...]`` of the ``keys`` whose values differ (``network_sha256`` named with
    the ``network`` of each side)."""
    out = []
    for key in keys:
        a, b = (side.get(key, IDENTITY_DEFAULTS.get(key)) for side in (stored, current))
        if a != b:
            if key == "network_sha256":
                out.append(f"network {stored.get('network')} ({a}) -> {current.get('network')} ({b})")
            else:
                out.append(f"{key} {a!r} -> {b!r}")
    return out


@dataclasses.dataclass
class ResumePlan:
    """What :func:`plan_resume` found in ``out/catalogs`` for the frames of a run: ``todo`` (the frames to
    catalog), ``skipped`` (frames whose catalog was made by this network and settings), ``damaged`` ((frame,
    reason) of unreadable catalogs, cataloged again), ``unrecorded`` (frames whose catalog records no identity:
    kept, or cataloged again with ``redo``) and ``mismatched`` ((frame, differences) of catalogs made otherwise,
    cataloged again with ``redo``)."""

    todo: list[Frame]
    skipped: list[Frame]
    damaged: list[tuple[Frame, str]]
    unrecorded: list[Frame]
    mismatched: list[tuple[Frame, list[str]]]

    def warnings(self, out: str, fmt: str) -> list[str]:
        """One warning line per damaged catalog, one for the unrecorded ones, one for the mismatched ones."""
        lines = [f"warning: {reason}: cataloging frame {frame.name} again" for frame, reason in self.damaged]
        if self.unrecorded:
            first = catalog_path(out, self.unrecorded[0], fmt)
            kept = any(f in self.skipped for f in self.unrecorded)
            lines.append(
                f"warning: {len(self.unrecorded)} frame catalogs record no network or settings (made by an npejax "
                f"before catalogs recorded them), first {first}: "
                + ("kept unverified; --redo-mismatched catalogs them again" if kept else "cataloging them again")
            )
        if self.mismatched:
            frame, differences = self.mismatched[0]
            lines.append(
                f"warning: {len(self.mismatched)} frame catalogs were made with another network or settings, first "
                f"{catalog_path(out, frame, fmt)} ({'; '.join(differences)}): cataloging them again (--redo-mismatched)"
            )
        return lines


def plan_resume(frames: list[Frame], out: str, fmt: str, identities: dict[str, dict], redo: bool = False) -> ResumePlan:
    """Which of ``frames`` to catalog (``identities``: frame name -> :func:`frame_identity` of this run): those
    without a catalog, those whose catalog cannot be read (:func:`read_identity`), and, with ``redo``, those
    whose catalog records another identity (:data:`COMPARED_KEYS`) or none. Without ``redo`` a catalog of
    another identity is an :class:`IdentityMismatchError` naming it, the keys that differ with both values
    and the ways on, raised before anything is written; catalogs that record none are kept (a warning)."""
    plan = ResumePlan([], [], [], [], [])
    for frame in frames:
        path = catalog_path(out, frame, fmt)
        if not os.path.exists(path):
            plan.todo.append(frame)
            continue
        try:
            stored = read_identity(path)
        except DamagedCatalogError as exc:
            plan.damaged.append((frame, cli.message(exc)))
            plan.todo.append(frame)
            continue
        if stored is None:
            plan.unrecorded.append(frame)
            (plan.todo if redo else plan.skipped).append(frame)
            continue
        differences = identity_differences(stored, identities[frame.name])
        if not differences:
            plan.skipped.append(frame)
            continue
        plan.mismatched.append((frame, differences))
        plan.todo.append(frame)
    if plan.mismatched and not redo:
        frame, differences = plan.mismatched[0]
        others = len(plan.mismatched) - 1
        raise IdentityMismatchError(
            f"frame catalog {catalog_path(out, frame, fmt)} was made with another network or settings (stored -> "
            "this run): "
            + "; ".join(differences)
            + (f" (and {others} more frame catalogs differ)" if others else "")
            + ": nothing cataloged; give a new --out for this run, or --redo-mismatched to catalog such frames "
            "again with this run's network and settings"
        )
    return plan


# --- catalog ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Summary:
    """What :func:`catalog_frames` did: ``done`` frames cataloged with ``sources`` rows in all, ``failures``
    (rows of the failures file), ``timings`` (seconds per cataloged frame, the first with the compilation)
    and ``wall`` (seconds of the whole loop: reading overlapped, writing, failures included)."""

    done: int = 0
    sources: int = 0
    failures: list[dict] = dataclasses.field(default_factory=list)
    timings: list[float] = dataclasses.field(default_factory=list)
    wall: float = 0.0

    def rate_text(self) -> str:
        """`` in W s (R frames/s; the first, with compilation, T s, the others R' frames/s)`` or ``""``."""
        if not self.timings:
            return ""
        text = f" in {self.wall:.1f} s ({self.done / self.wall:.3f} frames/s"
        if len(self.timings) > 1:
            text += (
                f"; the first, with compilation, {self.timings[0]:.1f} s, the others "
                f"{(self.done - 1) / max(self.wall - self.timings[0], 1e-9):.3f} frames/s"
            )
        return text + ")"


def catalog_frames(
    net: Predictor,
    frames: list[Frame],
    out: str,
    fmt: str,
    bank: FieldBankCache,
    min_prob: float = 0.5,
    chunk_size: int | None = CHUNK_SIZE,
    readers: int = 2,
    failures_file: str | None = None,
    image_checks: bool = True,
    quality: bool = False,
    electrons_per_nmgy: float | None = None,
) -> Summary:
    """Catalogs ``frames`` with ``net`` into ``out/catalogs`` (module doc), ``readers`` threads reading the
    next frames while one is predicted (frames held in memory: readers + 1); each catalog records its
    :func:`frame_identity` (:func:`write_catalog`). A frame that fails is a line on stderr and a row of
    ``failures_file`` (default ``failures-0-of-1.csv``); the others go on. Prints one line per cataloged frame
    (after the lines of a PSF from ``fwhm=`` or ``psf-image=``); returns the :class:`Summary`. ``image_checks``
    false skips the pixel checks of :mod:`npejax.cataloging.checks` (``--skip-image-checks``); ``quality`` adds the
    quality flag's columns (:func:`npejax.cataloging.images.add_quality`, ``electrons_per_nmgy`` its gain /
    calibration if given; the frame's warning lines name it)."""
    failures_file = failures_file or failures_path(out, 0, 1)
    network = net.network_identity()
    summary = Summary()
    os.makedirs(os.path.join(out, CATALOG_DIR), exist_ok=True)
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=readers) as pool:
        # frames k+1 .. k+readers are read (in threads) while frame k is predicted and written
        pending = collections.deque(pool.submit(open_frame, f, bank, image_checks) for f in frames[:readers])
        for k, frame in enumerate(frames):
            t0 = time.perf_counter()
            try:
                future = pending.popleft()
                if k + readers < len(frames):
                    pending.append(pool.submit(open_frame, frames[k + readers], bank, image_checks))
                inputs = future.result()
                for note in inputs.notes:  # how a fwhm= or psf-image= became PSF parameters
                    print(f"frame {frame.index} {frame.name}: {note}", flush=True)
                table = images.catalog_inputs(
                    net,
                    inputs,
                    min_prob,
                    batch_size=1,
                    chunk_size=chunk_size or None,
                    quality=quality,
                    electrons_per_nmgy=electrons_per_nmgy,
                )
                future = inputs = None  # the frame's arrays go
                table.meta["FRAME"] = frame.name
                identity = frame_identity(network, frame, min_prob, chunk_size, bank.path, quality, electrons_per_nmgy)
                path = write_catalog(table, catalog_path(out, frame, fmt), identity)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001  (one frame's failure must not stop the survey)
                reason = _reason(exc)
                if not isinstance(exc, _FRAME_ERRORS):
                    traceback.print_exc(file=sys.stderr)  # not a known bad input: keep the traceback
                sys.stderr.write(f"failed: frame {frame.index} {frame.name} ({frame.path}): {reason}\n")
                sys.stderr.flush()
                summary.failures.append(dict(index=frame.index, name=frame.name, path=frame.path, reason=reason))
                io.write_csv(failures_file, summary.failures, fieldnames=FAILURE_COLUMNS)
                continue
            seconds = time.perf_counter() - t0
            summary.timings.append(seconds)
            summary.done += 1
            summary.sources += len(table)
            print(
                f"[{k + 1}/{len(frames)}] frame {frame.index} {frame.name}: {len(table)} sources, "
                f"{seconds:.2f} s -> {path}",
                flush=True,
            )
    summary.wall = time.perf_counter() - start
    return summary


# --- merge -----------------------------------------------------------------------------------------------


def catalog_files(out: str) -> dict[str, str]:
    """Frame name -> catalog file in ``out/catalogs`` (ValueError for a frame with both a .fits and a .csv)."""
    folder = os.path.join(out, CATALOG_DIR)
    found: dict[str, str] = {}
    for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        stem, ext = os.path.splitext(entry)
        if ext not in FORMATS.values() or io.is_temporary(entry):
            continue
        if stem in found:
            raise ValueError(
                f"frame {stem} has two catalogs, {found[stem]} and {os.path.join(folder, entry)}: remove one"
            )
        found[stem] = os.path.join(folder, entry)
    return found


def merge_catalogs(out: str, names: list[str] | None = None) -> tuple[table_lib.Table, list[str]]:
    """(the merged table, names of ``names`` without a catalog) of the catalogs in ``out/catalogs`` (module
    doc): every catalog by name, or those of ``names`` in that order. The catalogs must be of one network and
    run settings (:data:`RUN_KEYS` of their identities; :class:`IdentityMismatchError` naming two frames that
    differ otherwise), which the table's meta records (:data:`IDENTITY_KEY`: ``network``, ``network_sha256``,
    ``decode``, ``min_prob``); catalogs that record none are merged with a warning line on stderr."""
    files = catalog_files(out)
    names = sorted(files) if names is None else list(names)
    missing = [n for n in names if n not in files]
    tables = []
    first, unrecorded = None, []  # (name, identity) of the first identified catalog; names of the others
    quality_meta = {}
    for name in names:
        if name not in files:
            continue
        try:
            t, identity = read_catalog(files[name])
        except DamagedCatalogError as exc:
            raise DamagedCatalogError(
                f"{cli.message(exc)}; run the catalog command again (it catalogs the frame again)"
            ) from None
        if identity is None:
            unrecorded.append(name)
        elif first is None:
            first = (name, identity)
        else:
            differences = identity_differences(first[1], identity, RUN_KEYS)
            if differences:
                raise IdentityMismatchError(
                    f"--out {out}: frames {first[0]} ({files[first[0]]}) and {name} ({files[name]}) were cataloged "
                    f"with different networks or settings ({first[0]} -> {name}): {'; '.join(differences)}; a "
                    "merged table holds one network's catalogs: give --frames the frames of one, or catalog them "
                    "again (python -m npejax.survey catalog --redo-mismatched)"
                )
        for key in QUALITY_META:  # the quality flag's thresholds and settings (those of every frame: one run's)
            if key in t.meta:
                quality_meta.setdefault(key, t.meta[key])
        if len(t) == 0:
            continue
        if "image" in t.colnames:
            t.remove_column("image")
        t.add_column(
            table_lib.Column(
                np.full(len(t), name), name="frame", description="frame name (file name without extensions)"
            ),
            index=0,
        )
        t.meta.clear()
        tables.append(t)
    if tables:
        merged = table_lib.vstack(tables, join_type="outer", metadata_conflicts="silent")
    else:
        merged = table_lib.Table({"frame": np.zeros(0, "U1")})
    for name in merged.colnames:  # a frame without a WCS has no ra/dec: NaN there, not a masked value
        col = merged[name]
        if isinstance(col, table_lib.MaskedColumn) and col.dtype.kind == "f":
            merged[name] = table_lib.Column(col.filled(np.nan), unit=col.unit, description=col.description)
    merged.meta["FLUXUNIT"] = "nmgy"
    merged.meta[catalog_lib.PIXCONV] = catalog_lib.CENTER0  # read_table gave every frame's in CENTER0
    merged.meta["NFRAMES"] = len(names) - len(missing)
    merged.meta.update(quality_meta)
    if first is not None:
        merged.meta[IDENTITY_KEY] = json.dumps({k: first[1].get(k) for k in ("network",) + RUN_KEYS}, sort_keys=True)
    if unrecorded:
        sys.stderr.write(
            f"warning: {len(unrecorded)} of the merged catalogs record no network or settings (made by an npejax "
            f"before catalogs recorded them), first {files[unrecorded[0]]}: merged unverified\n"
        )
    return merged, missing
