"""The README's real-frame recipe, run as written: an SDSS frame and its psField downloaded, then catalogued with
the network for real frames (README, "A real SDSS frame").

The archive is a local HTTP server on 127.0.0.1 serving the SDSS data model's files as ``tests/test_sdss.py``
writes them (the SDSS archive cannot be reached here), the frame's pixels replaced by a sky-subtracted image in
nmgy with stars of known position and flux and a celestial WCS. The README's bash block is read from README.md
and its lines run one by one in a fresh folder (``--base-url`` added to the download), each as a user runs it
(``python -m ...`` in a subprocess). The catalog must hold the stars, at their RA/Dec, with the quality columns and
the field-bank distance, as the README says.
"""

import bz2
import functools
import io
import os
import re
import shlex
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import test_sdss as sdss_files  # the SDSS data-model fixture writers
from astropy.io import fits
from astropy.wcs import WCS

from npejax import catalogs
from npejax.sim import psf as psf_lib
from npejax.surveys import sdss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
KEY = (94, 1, 12)
STARS = [(20.0, 30.0, 17.0), (55.0, 18.5, 18.0)]  # (x, y, r mag): 0-based pixel centres of the 80 x 60 frame
NMGY_PER_ELECTRON_NOISE = 0.028  # the sky's noise in nmgy: sky 150 DN x 0.005 nmgy/DN, gain 4.7


def recipe_lines() -> list[str]:
    """The commands of the README's bash block that downloads a frame and catalogs it (continuations joined,
    comments dropped)."""
    with open(README, encoding="utf-8") as f:
        blocks = re.findall(r"^```bash\n(.*?)^```$", f.read(), re.DOTALL | re.MULTILINE)
    (block,) = [b for b in blocks if "npejax.sdss download" in b and "--sdss-frame" in b]
    lines, current = [], ""
    for raw in block.splitlines():
        line = raw.split("  #")[0].rstrip() if "  #" in raw else raw.rstrip()
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            lines.append(current.strip())
        current = ""
    return lines


def frame_with_stars(path: str) -> WCS:
    """Rewrites the fixture frame at ``path`` (.fits.bz2): HDU 0 becomes sky-subtracted noise plus STARS drawn
    with the field's psField PSF (nmgy), with a TAN WCS at 0.396"/pixel; the calibration and sky HDUs stay."""
    with fits.open(path) as hdul:
        hdus = [h.copy() for h in hdul]
    h, w = hdus[0].data.shape
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crpix = [w / 2 + 0.5, h / 2 + 0.5]
    wcs.wcs.crval = [150.1, 2.2]
    wcs.wcs.cd = np.array([[-0.396, 0.0], [0.0, 0.396]]) / 3600
    wcs.wcs.radesys = "ICRS"
    image = np.random.default_rng(3).normal(0.0, NMGY_PER_ELECTRON_NOISE, (h, w))
    profile = psf_lib.galsim_psf(sdss_files.FIELDS[KEY]["psf"])
    for x, y, mag in STARS:
        stamp = profile.withFlux(10 ** ((22.5 - mag) / 2.5)).drawImage(
            nx=w, ny=h, scale=1.0, offset=(x + 0.5 - w / 2, y + 0.5 - h / 2)
        )
        image += stamp.array
    header = wcs.to_header()
    header["BUNIT"] = "nanomaggy"
    hdus[0] = fits.PrimaryHDU(image.astype(np.float32), header=header)
    buf = io.BytesIO()
    fits.HDUList(hdus).writeto(buf)
    with open(path, "wb") as f:
        f.write(bz2.compress(buf.getvalue()))
    return wcs


@pytest.fixture
def archive(tmp_path):
    """A local SDSS archive (archive layout) serving the frame, psField and photoField of KEY; its base URL."""
    root = tmp_path / "sas" / "dr17"
    paths = sdss_files.write_field_set(str(root), layout="archive")
    wcs = frame_with_stars(paths[("frame",) + KEY])
    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/sas/dr17", wcs
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # no request lines on the test's stderr
        pass


def test_readme_recipe_block_is_there():
    lines = recipe_lines()
    assert any(line.startswith("python -m npejax.sdss download") for line in lines), lines
    (predict,) = [line for line in lines if line.startswith("python -m npejax.predict")]
    assert (
        "--pretrained cpu_real" in predict and sdss.frame_name(*KEY) in predict and sdss.psfield_name(*KEY) in predict
    )


def test_readme_real_frame_recipe_runs_as_written(archive, tmp_path):
    base_url, wcs = archive
    user = tmp_path / "user"
    user.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    stderr = {}
    for line in recipe_lines():
        if line.startswith("echo "):  # the fields list
            text, target = line[len("echo ") :].split(">")
            (user / target.strip()).write_text(shlex.split(text)[0] + "\n")
            continue
        args = shlex.split(line)
        assert args[:2] == ["python", "-m"], line
        if args[2] == "npejax.sdss":
            args += ["--base-url", base_url, "--retries", "0"]
        done = subprocess.run(
            [sys.executable, *args[1:]], cwd=user, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, f"{line}\n--- stderr:\n{done.stderr[-3000:]}"
        stderr[args[2]] = done.stderr
    out = [a for a in shlex.split(recipe_lines()[-1]) if a.endswith(".fits") and "frame-r" not in a]
    table = catalogs.read_table(str(user / out[-1]))
    for column in ("ra", "dec", "field_distance", "quality_chi2", "quality_flag", "image_quality_flag", "masked_frac"):
        assert column in table.colnames, (column, table.colnames)
    assert np.isfinite(np.asarray(table["field_distance"])).all()
    # every star found, within a pixel, at its RA/Dec
    for x, y, mag in STARS:
        d = np.hypot(np.asarray(table["x"]) - x, np.asarray(table["y"]) - y)
        i = int(np.argmin(d))
        assert d[i] < 1.0, (x, y, mag, table)
        sky = wcs.pixel_to_world(x, y)
        assert (
            abs(float(table["ra"][i]) - sky.ra.deg) * 3600 < 0.5
            and abs(float(table["dec"][i]) - sky.dec.deg) * 3600 < 0.5
        )
        assert abs(float(table["mag"][i]) - mag) < 0.3, (mag, table["mag"][i])
    assert "Traceback" not in "".join(stderr.values())
