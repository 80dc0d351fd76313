"""Downloads SDSS psField, photoField and r-band frame files from the DR17 Science Archive Server.

:func:`download_fields` fetches the three files of each (run, camcol, field) (archive paths:
:func:`npejax.surveys.sdss.archive_paths`) into one flat folder that :func:`npejax.surveys.sdss.build_bank`
reads. Each file is downloaded into ``NAME.part`` and renamed to ``NAME`` when whole; an interrupted
``.part`` is resumed with an HTTP Range request (this resumable transfer is why the downloader writes its
own file instead of going through :mod:`npejax.io`). Connection errors, timeouts and HTTP 5xx / 429 are
retried with exponential backoff; a file that cannot be fetched raises :class:`DownloadError` naming its
URL. Command line: ``python -m npejax.sdss download --fields fields.txt --out DIR`` (:mod:`npejax.sdss`).
"""

from __future__ import annotations

import http.client
import os
import re
import time
import urllib.error
import urllib.request

from npejax.surveys import sdss

DEFAULT_BASE_URL = "https://data.sdss.org/sas/dr17"
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A file could not be fetched from the archive (unreachable host, HTTP error, incomplete transfer)."""


def _looks_complete(path: str) -> bool:
    """Cheap check of a file already in place: non-empty, FITS blocks of 2880 bytes or a bzip2 header."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError:
        return False
    if path.endswith(".bz2"):
        return size > 0 and head[:3] == b"BZh"
    return size > 0 and size % 2880 == 0 and head == b"SIMPLE"


def _unreachable(url: str, out_dir: str, reason) -> DownloadError:
    return DownloadError(
        f"cannot reach the SDSS archive (offline?) while fetching {url}: {reason}. Copy the psField, photoField "
        f"and frame-r files into {out_dir} (flat or in the archive layout) and run "
        f"`python -m npejax.sdss build-bank --dir {out_dir} --out bank.npz`."
    )


def _fetch_once(url: str, part: str, timeout: float) -> None:
    """One attempt: (re)starts or resumes ``part`` with a Range request; raises on any failure."""
    offset = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={"User-Agent": "npejax-sdss/0.1"})
    if offset > 0:
        request.add_header("Range", f"bytes={offset}-")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        status = response.status
        total = None
        if status == 206:
            match = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                os.remove(part)  # unusable partial answer: the next attempt restarts from scratch
                raise http.client.HTTPException(f"bad Content-Range {response.headers.get('Content-Range')!r}")
            total = int(match.group(3)) if match.group(3) != "*" else None
            mode = "ab"
        else:  # 200: the server ignored the Range header (or there was none): restart
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
            mode = "wb"
        with open(part, mode) as f:
            while True:
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
    size = os.path.getsize(part)
    if total is not None and size != total:
        raise http.client.IncompleteRead(b"", total - size)


def download_file(url: str, dest, retries: int = 3, timeout: float = 30, backoff: float = 1.0) -> bool:
    """Downloads ``url`` to ``dest`` atomically (``dest.part``, then rename); False if ``dest`` was already there.

    Resumes a partial ``dest.part`` with an HTTP Range request when the server supports it. Retries up to
    ``retries`` times (sleeping ``backoff * 2**k`` seconds) on connection errors, timeouts and HTTP 5xx/429.
    """
    dest = os.fspath(dest)
    if os.path.exists(dest) and _looks_complete(dest):
        return False
    out_dir = os.path.dirname(os.path.abspath(dest))
    os.makedirs(out_dir, exist_ok=True)
    part = dest + ".part"
    last = None
    for attempt in range(int(retries) + 1):
        if attempt:
            time.sleep(float(backoff) * 2 ** (attempt - 1))
        try:
            _fetch_once(url, part, timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise DownloadError(
                    f"HTTP 404 Not Found: {url} is not in the archive (check run, camcol, field and --base-url)"
                ) from exc
            if exc.code == 416:  # our partial file does not fit the remote one: start over
                if os.path.exists(part):
                    os.remove(part)
                last = exc
                continue
            if exc.code >= 500 or exc.code == 429:
                last = exc
                continue
            raise DownloadError(f"HTTP {exc.code} {exc.reason} for {url}") from exc
        except urllib.error.URLError as exc:
            last = exc
            continue
        except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
            last = exc
            continue
        os.replace(part, dest)
        return True
    if isinstance(last, urllib.error.URLError) and not isinstance(last, urllib.error.HTTPError):
        raise _unreachable(url, out_dir, last.reason) from last
    raise DownloadError(
        f"downloading {url} failed after {int(retries) + 1} attempts: {type(last).__name__}: {last}"
    ) from last


def download_fields(
    fields,
    out_dir,
    base_url: str = DEFAULT_BASE_URL,
    retries: int = 3,
    timeout: float = 30,
    backoff: float = 1.0,
    progress: bool = True,
) -> list[str]:
    """Fetches psField, photoField and r-band frame files of (run, camcol, field) triples into ``out_dir`` (flat).

    Files already present are skipped; partial ``.part`` files are resumed. Returns the local paths. Raises
    DownloadError (unreachable archive, HTTP 404, repeated failures) naming the URL.
    """
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    jobs: dict[str, str] = {}
    for run, camcol, field in (sdss.parse_field_id(f) for f in fields):
        for rel in sdss.archive_paths(run, camcol, field).values():
            jobs.setdefault(os.path.join(out_dir, rel.rsplit("/", 1)[1]), f"{base_url.rstrip('/')}/{rel}")
    paths = []
    for k, (dest, url) in enumerate(jobs.items(), start=1):
        fetched = download_file(url, dest, retries=retries, timeout=timeout, backoff=backoff)
        if progress:
            state = f"downloaded ({os.path.getsize(dest) / 1e6:.2f} MB)" if fetched else "already present"
            print(f"[{k}/{len(jobs)}] {os.path.basename(dest)}: {state}", flush=True)
        paths.append(dest)
    return paths
