"""SDSS files: FITS readers on files following the SDSS data model, bank building (npejax.surveys.sdss),
the downloader (npejax.surveys.download) and the command (npejax.sdss)."""

import bz2
import gzip
import io
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from astropy.io import fits
from scipy import ndimage

from npejax import sdss as sdss_command
from npejax.sim import fields as fields_lib
from npejax.sim import psf as psf_lib
from npejax.surveys import download, sdss

pytestmark = pytest.mark.fast  # the whole file is in the fast tier

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

H, W = 60, 80  # small frame (real SDSS: 1489 x 2048)
NY, NX = 8, 10  # ALLSKY grid (real SDSS: about 192 x 256)

# per field: r-band PSF, sky ramp (DN at row 0 col 0, DN per row, DN per column), calibvec level (nmgy/DN)
FIELDS = {
    (94, 1, 12): dict(psf=(1.2, 3.0, 2.0, 3.5, 0.10, 0.02), sky=(150.0, 0.30, -0.20), calib=0.0050),
    (94, 1, 13): dict(psf=(1.5, 3.5, 2.2, 3.2, 0.12, 0.03), sky=(200.0, -0.10, 0.25), calib=0.0052),
    (125, 2, 50): dict(psf=(1.9, 4.5, 2.8, 3.0, 0.08, 0.01), sky=(260.0, 0.20, 0.10), calib=0.0048),
}
GAINS = {(94, 1): {11: 4.5, 12: 4.7, 13: 4.9, 14: 5.1}, (125, 2): {49: 4.2, 50: 4.4}}


# --- writers following the SDSS data model -------------------------------------------------------


def per_band(value):
    """Five band values with the r-band (index 2) one equal to ``value`` and the others different."""
    return np.array([value * (1.0 + 0.1 * (k - 2)) for k in range(5)], dtype=np.float32)


def write_psfield(path, psf, drop=None):
    hdus = [fits.PrimaryHDU()]
    for band in "ugriz":  # HDUs 1-5: per-band KL PSF tables (contents irrelevant here)
        hdus.append(
            fits.BinTableHDU.from_columns(
                [fits.Column("RROWS", format="4E", array=np.zeros((1, 4)))], name=f"KL_{band}"
            )
        )
    cols = [
        fits.Column(name, format="5E", array=per_band(v)[None])
        for name, v in zip(psf_lib.PSF_PARAM_NAMES, psf)
        if name != drop
    ]
    cols.append(fits.Column("psf_width", format="5E", array=per_band(1.4)[None]))
    hdus.append(fits.BinTableHDU.from_columns(cols))
    fits.HDUList(hdus).writeto(path, overwrite=True)


def write_photofield(path, run, camcol, gains):
    nums = np.array(sorted(gains), dtype=np.int32)
    cols = [
        fits.Column("RUN", format="J", array=np.full(len(nums), run, dtype=np.int32)),
        fits.Column("CAMCOL", format="J", array=np.full(len(nums), camcol, dtype=np.int32)),
        fits.Column("FIELD", format="J", array=nums),
        fits.Column("GAIN", format="5E", array=np.stack([per_band(gains[f]) for f in nums])),
    ]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)]).writeto(path, overwrite=True)


def grid_coords(h, w, ny, nx):
    """(yinterp [h], xinterp [w]): grid coordinate of each full-resolution pixel center (node p at bin center)."""
    return (np.arange(h) + 0.5) * ny / h - 0.5, (np.arange(w) + 0.5) * nx / w - 0.5


def node_pixels(ny, nx, h, w):
    """Full-resolution (row, column) pixel index of each ALLSKY node."""
    return (np.arange(ny) + 0.5) * h / ny - 0.5, (np.arange(nx) + 0.5) * w / nx - 0.5


def ramp(sky, rows, cols):
    s0, sr, sc = sky
    return s0 + sr * np.asarray(rows)[:, None] + sc * np.asarray(cols)[None, :]


def frame_bytes(sky, calib):
    calibvec = (calib * (1.0 + 0.02 * np.sin(np.arange(W) / 7.0))).astype(np.float32)
    yinterp, xinterp = grid_coords(H, W, NY, NX)
    allsky = ramp(sky, *node_pixels(NY, NX, H, W)).astype(np.float32)
    image = (
        np.random.default_rng(0).normal(0, 0.032, (H, W)).astype(np.float32)
    )  # sky-subtracted, nmgy: the sky's noise
    table = fits.BinTableHDU.from_columns(
        [
            fits.Column("ALLSKY", format=f"{NY * NX}E", dim=f"({NX},{NY})", array=allsky[None]),
            fits.Column("XINTERP", format=f"{W}E", array=xinterp[None].astype(np.float32)),
            fits.Column("YINTERP", format=f"{H}E", array=yinterp[None].astype(np.float32)),
        ]
    )
    hdul = fits.HDUList([fits.PrimaryHDU(image), fits.ImageHDU(calibvec), table])
    buf = io.BytesIO()
    hdul.writeto(buf)
    return buf.getvalue(), calibvec


def expected_sky_dn(sky):
    """Analytic sky at every pixel: the linear ramp at the pixel's grid coordinate clamped to the grid."""
    yinterp, xinterp = grid_coords(H, W, NY, NX)
    rows_eff = (np.clip(yinterp.astype(np.float32), 0, NY - 1) + 0.5) * H / NY - 0.5
    cols_eff = (np.clip(xinterp.astype(np.float32), 0, NX - 1) + 0.5) * W / NX - 0.5
    return ramp(sky, rows_eff, cols_eff)


def expected_grid(full, gh, gw):
    """Cell means by explicit loops: node (a, b) averages rows i with a*H/gh <= i < (a+1)*H/gh (same for b)."""
    h, w = full.shape
    out = np.zeros((gh, gw))
    for a in range(gh):
        rows = [i for i in range(h) if a * h / gh <= i < (a + 1) * h / gh]
        for b in range(gw):
            cols = [j for j in range(w) if b * w / gw <= j < (b + 1) * w / gw]
            out[a, b] = full[np.ix_(rows, cols)].mean()
    return out


def write_field_set(directory, layout="flat", bz2_frames=((94, 1, 12),)):
    """Writes psField, photoField and frame files of FIELDS; returns {kind/key: path}."""
    os.makedirs(directory, exist_ok=True)
    paths = {}

    def place(rel):
        path = os.path.join(directory, rel if layout == "archive" else os.path.basename(rel))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    for (run, camcol), gains in GAINS.items():
        path = place(sdss.archive_paths(run, camcol, min(gains))["photofield"])
        write_photofield(path, run, camcol, gains)
        paths[("photofield", run, camcol)] = path
    for key, spec in FIELDS.items():
        rel = sdss.archive_paths(*key)
        path = place(rel["psfield"])
        write_psfield(path, spec["psf"])
        paths[("psfield",) + key] = path
        data, _ = frame_bytes(spec["sky"], spec["calib"])
        path = place(rel["frame"])  # .fits.bz2
        if key in bz2_frames:
            with open(path, "wb") as f:
                f.write(bz2.compress(data))
        else:
            path = path[: -len(".bz2")]
            with open(path, "wb") as f:
                f.write(data)
        paths[("frame",) + key] = path
    return paths


@pytest.fixture
def sdss_dir(tmp_path):
    directory = tmp_path / "sdss"
    paths = write_field_set(str(directory))
    return directory, paths


# --- names ----------------------------------------------------------------------------------------


def test_file_names_and_archive_paths():
    assert sdss.psfield_name(94, 1, 12) == "psField-000094-1-0012.fit"
    assert sdss.photofield_name(94, 1) == "photoField-000094-1.fits"
    assert sdss.frame_name(94, 1, 12) == "frame-r-000094-1-0012.fits.bz2"
    assert sdss.archive_paths(94, 1, 12) == {
        "psfield": "eboss/photo/redux/301/94/objcs/1/psField-000094-1-0012.fit",
        "photofield": "eboss/photoObj/301/94/photoField-000094-1.fits",
        "frame": "eboss/photoObj/frames/301/94/1/frame-r-000094-1-0012.fits.bz2",
    }
    assert sdss.parse_field_id("94-1-12") == (94, 1, 12)
    with pytest.raises(ValueError, match="camcol"):
        sdss.parse_field_id("94-9-12")


# --- readers ----------------------------------------------------------------------------------------


def test_read_psfield_r_band(sdss_dir):
    _, paths = sdss_dir
    params = sdss.read_psfield(paths[("psfield", 94, 1, 13)])
    np.testing.assert_allclose(params, FIELDS[(94, 1, 13)]["psf"], rtol=1e-6)
    g = sdss.read_psfield(paths[("psfield", 94, 1, 13)], band="g")
    np.testing.assert_allclose(g, np.array(FIELDS[(94, 1, 13)]["psf"]) * 0.9, rtol=1e-6)


def test_read_photofield_gain(sdss_dir):
    _, paths = sdss_dir
    path = paths[("photofield", 94, 1)]
    for field, gain in GAINS[(94, 1)].items():
        assert sdss.read_photofield(path, field) == pytest.approx(gain, rel=1e-6)
    with pytest.raises(ValueError, match=rf"{re.escape(path)}.*field 99 not present"):
        sdss.read_photofield(path, 99)


def test_read_frame_interpolates_allsky(sdss_dir):
    _, paths = sdss_dir
    spec = FIELDS[(94, 1, 13)]
    sky, calibvec = sdss.read_frame(paths[("frame", 94, 1, 13)])
    assert sky.shape == (H, W) and sky.dtype == np.float64 and calibvec.shape == (W,)
    np.testing.assert_allclose(sky, expected_sky_dn(spec["sky"]), rtol=0, atol=1e-3)
    # interior pixels (no clamping) equal the plain linear ramp
    yint, xint = grid_coords(H, W, NY, NX)
    inner = np.ix_((yint >= 0) & (yint <= NY - 1), (xint >= 0) & (xint <= NX - 1))
    np.testing.assert_allclose(sky[inner], ramp(spec["sky"], np.arange(H), np.arange(W))[inner], atol=1e-3)
    # the standard SDSS recipe gives the same
    with fits.open(paths[("frame", 94, 1, 13)]) as hdul:
        tab = hdul[2].data
        yy, xx = np.meshgrid(tab["YINTERP"][0], tab["XINTERP"][0], indexing="ij")
        recipe = ndimage.map_coordinates(tab["ALLSKY"][0].astype(np.float64), [yy, xx], order=1, mode="nearest")
    np.testing.assert_allclose(sky, recipe, atol=1e-4)
    _, calib_expected = frame_bytes(spec["sky"], spec["calib"])
    np.testing.assert_allclose(calibvec, calib_expected, rtol=1e-7)


def test_read_frame_bz2_matches_plain(sdss_dir, tmp_path):
    _, paths = sdss_dir
    plain = paths[("frame", 94, 1, 13)]
    packed = str(tmp_path / "frame-r-000094-1-0013.fits.bz2")
    with open(plain, "rb") as f, open(packed, "wb") as g:
        g.write(bz2.compress(f.read()))
    a, ca = sdss.read_frame(plain)
    b, cb = sdss.read_frame(packed)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ca, cb)


# --- reader errors --------------------------------------------------------------------------------


def test_truncated_files_raise_naming_file(sdss_dir, tmp_path):
    _, paths = sdss_dir
    for key, reader in [
        (("psfield", 94, 1, 12), sdss.read_psfield),
        (("frame", 94, 1, 12), sdss.read_frame),
        (("frame", 94, 1, 13), sdss.read_frame),
    ]:
        src = paths[key]
        bad = str(tmp_path / ("half-" + os.path.basename(src)))
        with open(src, "rb") as f:
            data = f.read()
        with open(bad, "wb") as f:
            f.write(data[: len(data) // 2])
        with pytest.raises(ValueError, match=rf"{re.escape(bad)}.*truncated"):
            reader(bad)
    # a cut inside the data of the last HDU (astropy only warns there)
    src = paths[("frame", 94, 1, 13)]
    bad = str(tmp_path / "cut-frame.fits")
    with open(src, "rb") as f, open(bad, "wb") as g:
        g.write(f.read()[:-100])
    with pytest.raises(ValueError, match=rf"{re.escape(bad)}.*truncated"):
        sdss.read_frame(bad)


def test_non_fits_file(tmp_path):
    bad = tmp_path / "psField-000094-1-0012.fit"
    bad.write_text("<html>404 not found</html>\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(bad))} is not a readable FITS file"):
        sdss.read_psfield(bad)
    with pytest.raises(FileNotFoundError, match="nothere.fits"):
        sdss.read_frame(tmp_path / "nothere.fits")


def test_missing_column_and_hdu(tmp_path):
    path = str(tmp_path / "psField-000094-1-0012.fit")
    write_psfield(path, FIELDS[(94, 1, 12)]["psf"], drop="psf_beta")
    with pytest.raises(ValueError, match=rf"{re.escape(path)}: HDU 6 table has no column 'psf_beta'"):
        sdss.read_psfield(path)
    short = str(tmp_path / "short.fit")
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros(3))]).writeto(short)
    with pytest.raises(ValueError, match=rf"{re.escape(short)} has 2 HDUs.*HDU 6"):
        sdss.read_psfield(short)
    frame = str(tmp_path / "frame.fits")
    fits.HDUList(
        [
            fits.PrimaryHDU(np.zeros((4, 5), np.float32)),
            fits.ImageHDU(np.ones(5, np.float32)),
            fits.BinTableHDU.from_columns([fits.Column("XINTERP", format="5E", array=np.zeros((1, 5)))]),
        ]
    ).writeto(frame)
    with pytest.raises(ValueError, match=rf"{re.escape(frame)}: HDU 2 table has no column 'ALLSKY'"):
        sdss.read_frame(frame)


def test_non_positive_psf_width(tmp_path):
    path = str(tmp_path / "psField-000094-1-0012.fit")
    write_psfield(path, (0.0, 3.0, 2.0, 3.5, 0.1, 0.02))
    with pytest.raises(ValueError, match=rf"{re.escape(path)}.*psf_sigma1 must be a positive width"):
        sdss.read_psfield(path)


# --- fields and banks -----------------------------------------------------------------------------


def test_block_average_uneven_cells():
    image = np.random.default_rng(1).normal(size=(H, W))
    for grid in [(12, 16), (7, 9), (1, 1), (H, W)]:
        np.testing.assert_allclose(sdss.block_average(image, grid), expected_grid(image, *grid), atol=1e-12)
    with pytest.raises(ValueError, match="grid shape"):
        sdss.block_average(image, (H + 1, 2))


def test_field_from_files(sdss_dir):
    _, paths = sdss_dir
    key = (94, 1, 12)
    spec = FIELDS[key]
    rec = sdss.field_from_files(
        paths[("psfield",) + key], paths[("photofield", 94, 1)], paths[("frame",) + key], *key, grid_shape=(7, 9)
    )
    gain = GAINS[(94, 1)][12]
    assert rec["name"] == "94-1-12" and rec["frame_shape"] == (H, W)
    assert rec["gain"] == pytest.approx(gain, rel=1e-6)
    np.testing.assert_allclose(rec["psf_params"], spec["psf"], rtol=1e-6)
    _, calibvec = frame_bytes(spec["sky"], spec["calib"])
    assert rec["calibration"] == pytest.approx(float(np.median(calibvec)), rel=1e-7)
    expected = expected_grid(expected_sky_dn(spec["sky"]) * np.float32(gain), 7, 9)
    np.testing.assert_allclose(rec["sky_grid"], expected, rtol=1e-5)


def check_bank(bank, grid=(12, 16)):
    assert isinstance(bank, fields_lib.FieldBank) and not bank.synthetic
    assert bank.frame_shape == (H, W)
    assert sorted(bank.names.tolist()) == sorted(sdss.field_id(*k) for k in FIELDS)
    for key, spec in FIELDS.items():
        i = bank.index(sdss.field_id(*key))
        gain = GAINS[key[:2]][key[2]]
        assert bank.gain[i] == pytest.approx(gain, rel=1e-6)
        _, calibvec = frame_bytes(spec["sky"], spec["calib"])
        assert bank.calibration[i] == pytest.approx(float(np.median(calibvec)), rel=1e-7)
        np.testing.assert_allclose(bank.psf_params[i], spec["psf"], rtol=1e-6)
        expected = expected_grid(expected_sky_dn(spec["sky"]), *grid) * gain  # electrons per pixel
        np.testing.assert_allclose(bank.sky_grid[i], expected, rtol=1e-5)


def test_build_bank_flat_and_reference(sdss_dir, tmp_path):
    directory, _ = sdss_dir
    bank = sdss.build_bank(directory)
    check_bank(bank)
    assert "psField" in bank.description and "photoField" in bank.description and "frame" in bank.description
    # 94-1-13 has the median PSF FWHM and the median sky level
    fwhm = {k: psf_lib.fwhm_pixels(v["psf"]) for k, v in FIELDS.items()}
    assert fwhm[(94, 1, 12)] < fwhm[(94, 1, 13)] < fwhm[(125, 2, 50)]
    assert bank.names[bank.reference] == "94-1-13"
    explicit = sdss.build_bank(directory, fields=[(125, 2, 50), (94, 1, 12)], grid_shape=(3, 4), reference="94-1-12")
    assert explicit.names.tolist() == ["125-2-50", "94-1-12"] and explicit.reference == 1
    assert explicit.sky_grid.shape == (2, 3, 4)
    # save and load round trip (FieldBank.save stores the sky grid as float32)
    out = tmp_path / "bank.npz"
    bank.save(out)
    loaded = fields_lib.load_bank(out)
    np.testing.assert_array_equal(loaded.names, bank.names)
    np.testing.assert_allclose(loaded.sky_grid, bank.sky_grid, rtol=1e-6)
    for key in ("psf_params", "gain", "calibration"):
        np.testing.assert_array_equal(getattr(loaded, key), getattr(bank, key))
    assert (loaded.reference, loaded.frame_shape, loaded.synthetic) == (bank.reference, (H, W), False)
    assert loaded.description == bank.description


def test_build_bank_archive_layout(tmp_path):
    directory = tmp_path / "archive"
    write_field_set(str(directory), layout="archive", bz2_frames=tuple(FIELDS))
    assert os.path.exists(directory / "eboss/photoObj/frames/301/94/1/frame-r-000094-1-0012.fits.bz2")
    check_bank(sdss.build_bank(directory, grid_shape=(6, 8)), grid=(6, 8))


def test_build_bank_errors(sdss_dir, tmp_path):
    directory, paths = sdss_dir
    os.remove(paths[("psfield", 94, 1, 13)])
    with pytest.raises(FileNotFoundError, match="psField-000094-1-0013.fit not found"):
        sdss.build_bank(directory)
    os.remove(paths[("frame", 125, 2, 50)])
    with pytest.raises(FileNotFoundError, match="frame file frame-r-000125-2-0050.fits.bz2 not found"):
        sdss.build_bank(directory, fields=[(125, 2, 50)])
    with pytest.raises(ValueError, match="reference field 1-1-1"):
        sdss.build_bank(directory, fields=[(94, 1, 12)], reference=(1, 1, 1))
    with pytest.raises(FileNotFoundError, match="no r-band frame files"):
        sdss.build_bank(_empty(tmp_path))
    with pytest.raises(FileNotFoundError, match="missing-dir"):
        sdss.build_bank(tmp_path / "missing-dir")


def _empty(tmp_path):
    path = tmp_path / "empty"
    path.mkdir()
    return path


# --- downloader against a local HTTP server -------------------------------------------------------


class ServerState:
    def __init__(self):
        self.files = {}  # URL path -> bytes
        self.requests = []  # (path, Range header)
        self.fail = {}  # URL path -> number of 503 answers to give first
        self.ranges = True
        self.lock = threading.Lock()


def make_handler(state):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            rng = self.headers.get("Range")
            with state.lock:
                state.requests.append((self.path, rng))
                fails = state.fail.get(self.path, 0)
                if fails:
                    state.fail[self.path] = fails - 1
            if fails:
                self.send_error(503, "try again")
                return
            data = state.files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            if rng and state.ranges:
                start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = data[start:]
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                body = data
                self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


DOWNLOAD_FIELDS = [(94, 1, 12), (94, 1, 13)]


@pytest.fixture
def server(sdss_dir):
    _, paths = sdss_dir
    state = ServerState()
    for key in FIELDS:
        rel = sdss.archive_paths(*key)
        with open(paths[("psfield",) + key], "rb") as f:
            state.files["/sas/dr17/" + rel["psfield"]] = f.read()
        with open(paths[("photofield",) + key[:2]], "rb") as f:
            state.files["/sas/dr17/" + rel["photofield"]] = f.read()
        with open(paths[("frame",) + key], "rb") as f:
            data = f.read()
        state.files["/sas/dr17/" + rel["frame"]] = data if data[:3] == b"BZh" else bz2.compress(data)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    thread = threading.Thread(target=httpd.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
    thread.start()
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/sas/dr17"
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def served(state, name):
    (path,) = [p for p in state.files if p.endswith("/" + name)]
    return path, state.files[path]


def test_download_then_resume_skip(server, tmp_path, capsys):
    out = tmp_path / "dl"
    got = download.download_fields(DOWNLOAD_FIELDS, out, base_url=server.base_url, retries=1, timeout=5, backoff=0)
    names = sorted(os.path.basename(p) for p in got)
    assert names == sorted(
        [
            "psField-000094-1-0012.fit",
            "psField-000094-1-0013.fit",
            "photoField-000094-1.fits",
            "frame-r-000094-1-0012.fits.bz2",
            "frame-r-000094-1-0013.fits.bz2",
        ]
    )
    assert len(server.requests) == 5  # the shared photoField is fetched once
    for path in got:
        assert open(path, "rb").read() == served(server, os.path.basename(path))[1]
    assert not [n for n in os.listdir(out) if n.endswith(".part")]
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and all("downloaded" in line for line in lines)
    # a second run downloads nothing
    download.download_fields(DOWNLOAD_FIELDS, out, base_url=server.base_url, retries=1, timeout=5, backoff=0)
    assert len(server.requests) == 5
    assert all("already present" in line for line in capsys.readouterr().out.strip().splitlines())
    # and the downloaded folder builds a bank with the same content as the source folder
    bank = sdss.build_bank(out)
    assert bank.names.tolist() == ["94-1-12", "94-1-13"]


def test_download_retries_503(server, tmp_path):
    path, data = served(server, "psField-000094-1-0012.fit")
    server.fail[path] = 1
    download.download_fields(
        [(94, 1, 12)], tmp_path, base_url=server.base_url, retries=2, timeout=5, backoff=0, progress=False
    )
    assert [r for r in server.requests if r[0] == path] == [(path, None), (path, None)]
    assert (tmp_path / "psField-000094-1-0012.fit").read_bytes() == data
    server.fail[path] = 10
    os.remove(tmp_path / "psField-000094-1-0012.fit")
    with pytest.raises(download.DownloadError, match=rf"{re.escape(server.base_url)}.*psField.*after 3 attempts"):
        download.download_file(
            server.base_url + path[len("/sas/dr17") :],
            tmp_path / "psField-000094-1-0012.fit",
            retries=2,
            timeout=5,
            backoff=0,
        )


def test_download_resumes_part_with_range(server, tmp_path):
    path, data = served(server, "frame-r-000094-1-0013.fits.bz2")
    dest = tmp_path / "frame-r-000094-1-0013.fits.bz2"
    half = len(data) // 2
    (tmp_path / (dest.name + ".part")).write_bytes(data[:half])
    assert download.download_file(server.base_url + path[len("/sas/dr17") :], dest, retries=0, timeout=5)
    assert server.requests == [(path, f"bytes={half}-")]
    assert dest.read_bytes() == data
    assert not (tmp_path / (dest.name + ".part")).exists()


def test_download_restarts_when_range_ignored(server, tmp_path):
    server.ranges = False
    path, data = served(server, "frame-r-000094-1-0013.fits.bz2")
    dest = tmp_path / "frame-r-000094-1-0013.fits.bz2"
    (tmp_path / (dest.name + ".part")).write_bytes(b"garbage" + data[:100])
    assert download.download_file(server.base_url + path[len("/sas/dr17") :], dest, retries=0, timeout=5)
    assert dest.read_bytes() == data


def test_download_404_names_url(server, tmp_path):
    with pytest.raises(download.DownloadError, match=r"404.*/eboss/photo/redux/301/94/objcs/1/psField-000094-1-0099"):
        download.download_fields([(94, 1, 99)], tmp_path, base_url=server.base_url, retries=3, timeout=5, backoff=0)
    assert len(server.requests) == 1  # not retried


def test_download_unreachable_host(tmp_path):
    with pytest.raises(
        download.DownloadError,
        match=r"cannot reach the SDSS archive \(offline\?\).*127\.0\.0\.1:1/"
        r".*build-bank",
    ):
        download.download_fields(
            [(94, 1, 12)], tmp_path, base_url="http://127.0.0.1:1", retries=1, timeout=2, backoff=0
        )


# --- command line ---------------------------------------------------------------------------------


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "npejax.sdss", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_cli_build_bank(sdss_dir, tmp_path):
    directory, _ = sdss_dir
    out = tmp_path / "bank.npz"
    result = run_cli(
        "build-bank", "--dir", str(directory), "--out", str(out), "--grid", "6x8", "--reference", "125-2-50"
    )
    assert result.returncode == 0, result.stderr
    bank = fields_lib.load_bank(out)
    check_bank(bank, grid=(6, 8))
    assert bank.names[bank.reference] == "125-2-50"
    missing = tmp_path / "no-such-dir"
    result = run_cli("build-bank", "--dir", str(missing), "--out", str(tmp_path / "x.npz"))
    assert result.returncode == 2 and str(missing) in result.stderr
    assert not (tmp_path / "x.npz").exists()


def test_cli_in_process(server, tmp_path, capsys):
    fields_file = tmp_path / "fields.txt"
    fields_file.write_text("# run camcol field\n94 1 12\n\n94 1 13  # second\n")
    assert sdss.read_fields_file(fields_file) == [(94, 1, 12), (94, 1, 13)]
    out = tmp_path / "dl"
    assert (
        sdss_command.main(
            [
                "download",
                "--fields",
                str(fields_file),
                "--out",
                str(out),
                "--base-url",
                server.base_url,
                "--timeout",
                "5",
            ]
        )
        == 0
    )
    assert sdss_command.main(["build-bank", "--dir", str(out), "--out", str(tmp_path / "b.npz"), "--grid", "3x4"]) == 0
    assert fields_lib.load_bank(tmp_path / "b.npz").sky_grid.shape == (2, 3, 4)
    capsys.readouterr()
    bad = tmp_path / "bad.txt"
    bad.write_text("94 1\n")
    assert sdss_command.main(["download", "--fields", str(bad), "--out", str(out)]) == 2
    assert re.search(rf"{re.escape(str(bad))} line 1: expected 'run camcol field'", capsys.readouterr().err)
    # the archive cannot be reached: exit 1 (not a command-line mistake), one error line
    assert (
        sdss_command.main(
            [
                "download",
                "--fields",
                str(fields_file),
                "--out",
                str(tmp_path / "x"),
                "--base-url",
                "http://127.0.0.1:1",
                "--retries",
                "0",
                "--timeout",
                "2",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach the SDSS archive") and len(err.splitlines()) == 1
    assert sdss_command.main(["build-bank", "--dir", str(out), "--out", "b.npz", "--grid", "12by16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--grid=12by16" in err and "12x16" in err and len(err.splitlines()) == 1
    assert not os.path.exists("b.npz")


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "a subcommand is required: one of download, build-bank"),
        (["fetch", "--out", "x"], "unknown subcommand 'fetch'; expected one of download, build-bank"),
        (["download", "--out", "x"], "--fields"),
        (["build-bank", "--dir", "d", "--out", "b.npz", "--bogus"], "bogus"),
        (["download", "--fields", "f.txt", "--out", "x", "--retries", "-1"], "--retries=-1"),
    ],
)
def test_cli_usage_errors(args, message, capsys):
    assert sdss_command.main(["npejax-sdss", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1


def test_cli_help(capsys):
    assert sdss_command.main(["npejax-sdss", "--help"]) == 0
    out = capsys.readouterr().out
    assert "python -m npejax.sdss download" in out and "python -m npejax.sdss build-bank" in out
    assert sdss_command.main(["npejax-sdss", "build-bank", "--help"]) == 0
    listed = capsys.readouterr().out.split("flags:")[1]
    assert "--grid" in listed and "--reference" in listed and "--fields" not in listed


# --- compressed frames: decompressed into memory once -----------------------------------------------


def _compressed_copies(plain, tmp_path):
    with open(plain, "rb") as f:
        data = f.read()
    out = {}
    for ext, compress in ((".bz2", bz2.compress), (".gz", gzip.compress)):
        out[ext] = str(tmp_path / (os.path.basename(plain) + ext))
        with open(out[ext], "wb") as f:
            f.write(compress(data))
    return data, out


def test_compressed_frame_reads_as_plain_decompressing_once(sdss_dir, tmp_path, monkeypatch):
    """A .fits.bz2 / .fits.gz frame gives exactly the plain file's image, background and header, and its
    bz2 stream is decompressed once (astropy reading the stream itself seeks backwards, and every backward
    seek restarted the decompression: 3-5 s for a full-size frame)."""
    _, paths = sdss_dir
    plain = paths[("frame", 94, 1, 13)]
    _, packed = _compressed_copies(plain, tmp_path)
    decompressors = []
    real = bz2.BZ2Decompressor

    def counting(*args, **kwargs):
        decompressors.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(bz2, "BZ2Decompressor", counting)
    image, background, header = sdss.read_frame_for_prediction(plain)
    assert image.shape == (H, W) and not decompressors
    for ext, path in packed.items():
        decompressors.clear()
        got_image, got_background, got_header = sdss.read_frame_for_prediction(path)
        assert got_image.dtype == image.dtype and got_background.dtype == background.dtype
        np.testing.assert_array_equal(got_image, image)
        np.testing.assert_array_equal(got_background, background)
        assert got_header.tostring() == header.tostring()
        assert len(decompressors) == (1 if ext == ".bz2" else 0), ext


def test_truncated_or_corrupt_compressed_frames_name_the_file(sdss_dir, tmp_path):
    _, paths = sdss_dir
    data, packed = _compressed_copies(paths[("frame", 94, 1, 13)], tmp_path)
    for ext, path in packed.items():  # the compressed stream ends early
        with open(path, "rb") as f:
            stream = f.read()
        bad = str(tmp_path / f"half{ext}")
        with open(bad, "wb") as f:
            f.write(stream[: len(stream) // 2])
        with pytest.raises(
            ValueError,
            match=rf"frame file {re.escape(bad)} is not a readable FITS file "
            r"\(truncated or corrupt\?\): EOFError",
        ):
            sdss.read_frame(bad)
    bad = str(tmp_path / "garbage.fits.bz2")  # bz2 magic, then not a bz2 stream
    with open(bad, "wb") as f:
        f.write(b"BZh9" + bytes(1000))
    with pytest.raises(ValueError, match=rf"{re.escape(bad)} is not a readable FITS file.*OSError"):
        sdss.read_frame(bad)
    bad = str(tmp_path / "cut.fits.bz2")  # a whole bz2 stream of a FITS file cut inside its last HDU
    with open(bad, "wb") as f:
        f.write(bz2.compress(data[:-100]))
    with pytest.raises(ValueError, match=rf"frame file {re.escape(bad)} is truncated"):
        sdss.read_frame(bad)
