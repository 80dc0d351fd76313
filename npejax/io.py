"""Files written whole or not at all: the one way npejax writes a file.

Every file npejax writes (datasets' manifests, catalogs, banks, metrics, reports, figures, configs) goes
through :func:`atomic_write`: the content is written to a temporary file in the destination's directory,
flushed to disk (fsync), given the permissions a plain ``open`` would give (mode 0666 less the umask; a
temporary file is created 0600), and renamed over the destination. A reader never sees a half-written
file, a failed write leaves the old file (if any) as it was, and the temporary file is removed on any
failure, including KeyboardInterrupt.

:func:`sha256_file` is the one file digest (checkpoint checksums, pretrained network files).

The guards every writing command calls before any work (each raises one line naming the flag and the paths):
:func:`check_output_dir` and :func:`check_output_file` (a path that can be written), :func:`check_not_input`
(an output that is the same file as one of the command's inputs: ``npejax.predict --out`` equal to its
``--input``), :func:`check_not_under` (an output inside a folder it must stay out of: ``npejax.survey merge
--out`` in the survey's ``catalogs/``) and :func:`check_plain_name` (a name that becomes a file name in the
output folder: ``npejax.evaluate``'s method names, ``predictions/NAME.fits``).

A write that fails on the way (disk full, quota, I/O error) inside :func:`write_errors` is one
:class:`WriteError` naming the output and the OS's reason: a command prints it as one ``error:`` line (exit 2,
as training's checkpoint that cannot be saved), and the atomic write has left no partial file.

Temporary files are named ``.NAME.tmp-XXXXXXXX[.EXT]``: hidden, next to the destination, with its
extension kept (libraries such as astropy and matplotlib choose the format by extension).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import re
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping

TMP_MARKER = ".tmp-"


def umask() -> int:
    """The process's file-creation mask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path):
    """Context manager giving a temporary path beside ``path``; on success it replaces ``path``.

    For writers that need a file name (``table.write(tmp)``, ``fig.savefig(tmp)``, ``np.savez(tmp)``)::

        with atomic_path("catalog.fits") as tmp:
            table.write(tmp, format="fits")

    The directory of ``path`` is created if needed. On an exception the temporary file is removed and
    ``path`` is left untouched.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    name = os.path.basename(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}{TMP_MARKER}", suffix=os.path.splitext(name)[1])
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # the writer may have replaced the file: sync what is there now
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


class WriteError(ValueError):
    """An output could not be written (disk full, quota exceeded, I/O error); nothing partial was left."""


@contextlib.contextmanager
def write_errors(what: str, path):
    """Turns an OSError raised inside into one :class:`WriteError` line: ``WHAT PATH: cannot write it: [Errno N]
    reason; nothing was written there`` (``what``: the flag, e.g. ``--out``)."""
    try:
        yield
    except OSError as exc:
        reason = f"[Errno {exc.errno}] {exc.strerror}" if exc.errno and exc.strerror else str(exc) or type(exc).__name__
        raise WriteError(f"{what} {os.fspath(path)}: cannot write it: {reason}; nothing was written there") from exc


def atomic_write(path, data: str | bytes | Callable[[object], None]) -> str:
    """Writes ``data`` to ``path`` atomically (see the module doc); returns ``path``.

    ``data`` is text (written as UTF-8), bytes, or a function that writes to a binary file object.
    """
    path = os.fspath(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            if isinstance(data, str):
                f.write(data.encode("utf-8"))
            elif isinstance(data, (bytes, bytearray, memoryview)):
                f.write(data)
            else:
                data(f)
    return path


def write_json(path, obj, indent: int = 2, allow_nan: bool = True) -> str:
    """``obj`` as JSON (sorted as given, a trailing newline), atomically."""
    return atomic_write(path, json.dumps(obj, indent=indent, allow_nan=allow_nan) + "\n")


def write_csv(path, rows: Iterable[Mapping], fieldnames: list[str] | None = None) -> str:
    """Rows (dicts with the same keys) as CSV with a header, atomically; non-finite floats become empty
    cells. With no rows and no ``fieldnames`` the file is empty."""
    rows = list(rows)
    fieldnames = fieldnames if fieldnames is not None else (list(rows[0]) if rows else None)
    buf = io.StringIO()
    if fieldnames:
        writer = csv.DictWriter(buf, fieldnames=fieldnames, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()})
    return atomic_write(path, buf.getvalue())


def sha256_file(path) -> str:
    """The SHA-256 of the file at ``path`` (hex digest), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_temporary(name: str) -> bool:
    """Whether a file name is one of :func:`atomic_path`'s temporaries (left only by a killed process)."""
    return os.path.basename(name).startswith(".") and TMP_MARKER in name


def _check_writable_ancestor(path: str, what: str) -> None:
    """The nearest existing ancestor of ``path`` (itself included) must be a directory this process can write
    in: probed with a directory made and removed at once, which also catches read-only and virtual file
    systems such as /proc. One-line errors begin with ``what``."""
    parent = os.path.abspath(path)
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise NotADirectoryError(
            f"{what}: {parent} is a file, so no directory can be made under it; give a path in a directory"
        )
    try:
        os.rmdir(tempfile.mkdtemp(dir=parent, prefix=".npejax-probe-"))
    except OSError as exc:
        raise PermissionError(
            f"{what}: cannot write in {parent} ({exc.strerror}); give a path in a writable directory"
        ) from None


def check_output_dir(path, what: str = "--out") -> str:
    """Raises a one-line error (naming ``what`` and ``path``) unless ``path`` is a directory, or can be
    created as one, that this process can write in; returns ``path``. Creates nothing: commands call it
    before any work, so that an unusable output path is reported before hours of computing."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(
            f"{what} {path} is an existing file, not a directory: give a directory (new or existing)"
        )
    _check_writable_ancestor(path, f"{what} {path}")
    return path


def check_output_file(path, what: str = "--out") -> str:
    """Raises a one-line error (naming ``what`` and ``path``) unless ``path`` names a file that can be written:
    not a directory, its directory existing or creatable, in a writable place; returns ``path``. Creates
    nothing."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} {path} is a directory; give a file name")
    _check_writable_ancestor(os.path.dirname(os.path.abspath(path)), f"{what} {path}")
    return path


# --- outputs that must not overwrite inputs -------------------------------------------------------------

PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a name that becomes a file name: no '/', no '..'


class OutputPathError(ValueError):
    """An output path that would overwrite one of the command's inputs or leave its output directory."""


def same_file(a, b) -> bool:
    """Whether ``a`` and ``b`` name one file: the same inode when both exist (hard and symbolic links
    included), else the same real path."""
    a, b = os.fspath(a), os.fspath(b)
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def is_under(path, directory) -> bool:
    """Whether ``path`` is ``directory`` or lies below it (real paths: symbolic links followed)."""
    path, directory = os.path.realpath(os.fspath(path)), os.path.realpath(os.fspath(directory))
    return os.path.commonpath([path, directory]) == directory


def check_not_input(path, what: str, inputs: Mapping[str, object]) -> str:
    """Raises :class:`OutputPathError` (one line naming ``what``, ``path``, the input's flag and path) when the
    output ``path`` is the same file as one of ``inputs`` (flag -> path; None and non-paths skipped: e.g. a
    ``--background`` given as a number); returns ``path``. Creates nothing: commands call it before any work,
    so an output named like an input is refused before the input is read, let alone overwritten."""
    path = os.fspath(path)
    for flag, other in inputs.items():
        if isinstance(other, (str, os.PathLike)) and same_file(path, other):
            raise OutputPathError(
                f"{what} {path} is the same file as {flag} {os.fspath(other)}: writing it would destroy that "
                "input; give another file"
            )
    return path


def check_not_under(path, what: str, directory, role: str) -> str:
    """Raises :class:`OutputPathError` (one line naming ``what``, ``path``, ``directory`` and its ``role``) when
    ``path`` lies in ``directory`` (a folder of inputs, or of another writer's files); returns ``path``."""
    path = os.fspath(path)
    if is_under(path, directory):
        raise OutputPathError(
            f"{what} {path} is inside {os.fspath(directory)} ({role}): give a path outside that folder"
        )
    return path


def check_plain_name(name, what: str) -> str:
    """Raises :class:`OutputPathError` unless ``name`` can be a file name inside an output directory as it is:
    letters, digits, ``_``, ``.`` and ``-``, starting with a letter or digit (no ``/``, no ``..``, not
    absolute); returns ``name``."""
    if not isinstance(name, str) or not PLAIN_NAME.match(name):
        raise OutputPathError(
            f"{what} name {name!r}: expected letters, digits, '_', '.' and '-', starting with a letter or digit "
            "(it becomes a file name in the output folder)"
        )
    return name


# warnings.catch_warnings swaps the process's warning state (filters, showwarning): two threads inside it at once
# (the survey reads frames in reader threads) record each other's warnings or restore each other's filters, so a
# frame was blamed for another frame's "file may have been truncated". Every such region holds this lock.
_WARNINGS_LOCK = threading.RLock()


@contextlib.contextmanager
def caught_warnings(action: str = "always", category: type[Warning] = Warning, record: bool = False):
    """``warnings.catch_warnings(record=record)`` with ``warnings.simplefilter(action, category)``, one thread
    at a time (:data:`_WARNINGS_LOCK`); yields the list of recorded warnings (None unless ``record``)."""
    with _WARNINGS_LOCK, warnings.catch_warnings(record=record) as caught:
        warnings.simplefilter(action, category)
        yield caught
