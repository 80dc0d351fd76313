"""Outputs that would destroy an input or leave their folder, and two trainings in one workdir: refused.

A corpus of command lines run through the real commands in-process (each command's ``main(argv)``): for every
case exit status 2, one ``error:`` line naming the flag and the paths, no traceback, and nothing under the
case's folder created, changed or removed (every file's size, mtime and SHA-256 compared before and after). The
guards are :func:`npejax.io.check_not_input`, :func:`npejax.io.check_not_under` and
:func:`npejax.io.check_plain_name` (npejax.predict, npejax.survey, npejax.evaluate through
:class:`npejax.evaluation.settings.EvalSettings`), and :func:`npejax.nn.checkpoints.workdir_lock` and
:func:`npejax.nn.checkpoints.check_resumable` (npejax.main).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io as io_lib
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits
from conftest import make_tiny_config, one_error_line

from npejax import io
from npejax.nn import checkpoints

PSF = "1.3,3.9,1.2,3.0,0.03,0.13"
FRAME = "frame-r-000094-1-0012.fits"


def snapshot(root) -> dict:
    """Path (relative to ``root``) -> (size, mtime, SHA-256) of every file under ``root``, and every folder."""
    found = {}
    for directory, folders, names in os.walk(root):
        for folder in folders:
            found[os.path.relpath(os.path.join(directory, folder), root)] = "folder"
        for name in names:
            path = os.path.join(directory, name)
            if os.path.islink(path):
                found[os.path.relpath(path, root)] = ("link", os.readlink(path))
                continue
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            stat = os.stat(path)
            found[os.path.relpath(path, root)] = (stat.st_size, stat.st_mtime_ns, digest)
    return found


def run_command(command: str, argv: list[str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``npejax.COMMAND``'s ``main`` run in-process."""
    module = importlib.import_module(f"npejax.{command}")
    out, err = io_lib.StringIO(), io_lib.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = module.main([command, *argv])
    return status, out.getvalue(), err.getvalue()


@pytest.fixture
def files(tmp_path):
    """A folder of inputs: a FITS image, a background, an SDSS frame and psField (bytes only: the guards refuse
    before reading them), a field bank, a catalog, a survey folder with two frame catalogs, a frame list."""
    d = tmp_path / "in"
    d.mkdir()
    p = {"root": str(tmp_path), "d": str(d)}
    for key, name in (
        ("image", "image.fits"),
        ("sky", "sky.fits"),
        ("frame", FRAME),
        ("psfield", "psField-000094-1-0012.fits"),
        ("bank", "bank.fits"),
        ("png_input", "image.png"),
        ("catalog", "catalog.fits"),
    ):
        p[key] = str(d / name)
        with open(p[key], "wb") as f:
            f.write(f"{key} bytes\n".encode())
    os.link(p["image"], d / "hardlink.fits")
    os.symlink(p["image"], d / "symlink.fits")
    survey = tmp_path / "survey"
    (survey / "catalogs").mkdir(parents=True)
    for name in ("f1", "f2"):
        (survey / "catalogs" / f"{name}.fits").write_bytes(b"catalog\n")
    os.symlink(survey / "catalogs", survey / "alias")
    p["survey"] = str(survey)
    p["frames"] = str(d / "frames.csv")  # a frame list named like a table
    with open(p["frames"], "w") as f:
        f.write(f"image.fits background=0.7 psf-params={PSF}\n")
    p["inside"] = str(tmp_path / "inside.txt")  # a frame list whose frame lies in the survey's catalogs/
    with open(p["inside"], "w") as f:
        f.write(f"{survey / 'catalogs' / 'f1.fits'} background=0.7 psf-params={PSF}\n")
    report = tmp_path / "report" / "predictions"
    report.mkdir(parents=True)
    (report / "mine.fits").write_bytes(b"an earlier report's detections\n")
    p["report"] = str(tmp_path / "report")
    return p


# (id, command, argv with {placeholders} of ``files``, fragments the error line names)
CASES = [
    # --- npejax.predict: --out or --png is an input ---
    (
        "predict-out-is-input",
        "predict",
        "--pretrained cpu --input {image} --background 0.7 --psf-params {psf} --out {image}",
        ["--out", "--input", "{image}"],
    ),
    (
        "predict-out-is-input-hard-link",
        "predict",
        "--pretrained cpu --input {image} --background 0.7 --psf-params {psf} --out {d}/hardlink.fits",
        ["--out", "{d}/hardlink.fits", "--input", "{image}"],
    ),
    (
        "predict-out-is-input-symlink",
        "predict",
        "--pretrained cpu --input {d}/symlink.fits --background 0.7 --psf-params {psf} --out {image}",
        ["--out", "--input", "{d}/symlink.fits"],
    ),
    (
        "predict-out-is-input-other-spelling",
        "predict",
        "--pretrained cpu --input {image} --background 0.7 --psf-params {psf} --out {d}/../in/./image.fits",
        ["--out", "--input", "{image}"],
    ),
    (
        "predict-out-is-background",
        "predict",
        "--pretrained cpu --input {image} --background {sky} --psf-params {psf} --out {sky}",
        ["--out", "--background", "{sky}"],
    ),
    (
        "predict-out-is-sdss-frame",
        "predict",
        "--pretrained cpu --sdss-frame {frame} --psfield {psfield} --out {frame}",
        ["--out", "--sdss-frame", "{frame}"],
    ),
    (
        "predict-out-is-psfield",
        "predict",
        "--pretrained cpu --sdss-frame {frame} --psfield {psfield} --out {psfield}",
        ["--out", "--psfield", "{psfield}"],
    ),
    (
        "predict-out-is-bank",
        "predict",
        "--pretrained cpu --input {image} --background 0.7 --field-id f --bank {bank} --out {bank}",
        ["--out", "--bank", "{bank}"],
    ),
    (
        "predict-png-is-input",
        "predict",
        "--pretrained cpu --input {png_input} --background 0.7 --psf-params {psf} "
        "--out {root}/new.fits --png {png_input}",
        ["--png", "--input", "{png_input}"],
    ),
    # --- npejax.evaluate: a method name becomes OUT/predictions/NAME.fits ---
    (
        "evaluate-catalog-name-parent",
        "evaluate",
        "--catalog ../evil={catalog} --test-dir {d} --out {root}/r",
        ["--catalog", "'../evil'"],
    ),
    (
        "evaluate-catalog-name-slash",
        "evaluate",
        "--catalog a/b={catalog} --test-dir {d} --out {root}/r",
        ["--catalog", "'a/b'"],
    ),
    (
        "evaluate-catalog-name-absolute",
        "evaluate",
        "--catalog {root}/abs={catalog} --test-dir {d} --out {root}/r",
        ["--catalog", "'{root}/abs'"],
    ),
    (
        "evaluate-catalog-name-dots",
        "evaluate",
        "--catalog ..={catalog} --test-dir {d} --out {root}/r",
        ["--catalog", "'..'"],
    ),
    (
        "evaluate-catalog-name-hidden",
        "evaluate",
        "--catalog .x={catalog} --test-dir {d} --out {root}/r",
        ["--catalog", "'.x'"],
    ),
    (
        "evaluate-workdir-name-parent",
        "evaluate",
        "--workdir ../w={d} --test-dir {d} --out {root}/r",
        ["--workdir", "'../w'"],
    ),
    (
        "evaluate-pretrained-name-path",
        "evaluate",
        "--pretrained ../cpu --test-dir {d} --out {root}/r",
        ["--pretrained", "'../cpu'"],
    ),
    (
        "evaluate-catalog-in-predictions",
        "evaluate",
        "--catalog mine={report}/predictions/mine.fits --test-dir {d} --out {report}",
        ["--catalog mine", "{report}/predictions/mine.fits", "{report}/predictions"],
    ),
    # --- npejax.survey: merge --table among the catalogs or the inputs; a frame among the catalogs ---
    (
        "survey-merge-table-in-catalogs",
        "survey",
        "merge --out {survey} --table {survey}/catalogs/all.fits",
        ["--table", "{survey}/catalogs/all.fits", "{survey}/catalogs"],
    ),
    (
        "survey-merge-table-is-a-catalog",
        "survey",
        "merge --out {survey} --table {survey}/catalogs/f1.fits",
        ["--table", "{survey}/catalogs/f1.fits", "{survey}/catalogs"],
    ),
    (
        "survey-merge-table-in-catalogs-by-link",
        "survey",
        "merge --out {survey} --table {survey}/alias/all.csv",
        ["--table", "{survey}/alias/all.csv", "{survey}/catalogs"],
    ),
    (
        "survey-merge-table-is-frame-list",
        "survey",
        "merge --out {survey} --table {frames} --frames {frames}",
        ["--table", "--frames", "{frames}"],
    ),
    (
        "survey-merge-table-is-a-frame",
        "survey",
        "merge --out {survey} --table {image} --frames {frames}",
        ["--table", "frame image", "{image}"],
    ),
    (
        "survey-catalog-frame-in-catalogs",
        "survey",
        "catalog --pretrained cpu --frames {inside} --out {survey}",
        ["frame f1's catalog", "{survey}/catalogs/f1.fits"],
    ),
]


@pytest.mark.fast
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_output_that_would_destroy_an_input_is_refused(case, files):
    _, command, argv, fragments = case
    values = dict(files, psf=PSF)
    args = [a.format(**values) for a in argv.split()]
    before = snapshot(files["root"])
    status, out, err = run_command(command, args)
    assert status == 2, f"exit {status}; stderr: {err[-2000:]}"
    line = one_error_line(err)
    for fragment in fragments:
        assert fragment.format(**values) in line, f"{fragment!r} not named in: {line}"
    assert snapshot(files["root"]) == before, "a file was written, changed or removed"


@pytest.mark.fast
def test_corpus_is_large_enough():
    assert len(CASES) >= 20 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.fast
def test_guards_pass_outputs_that_are_not_inputs(tmp_path):
    """The guards refuse only what they should: a new file, a file beside the input, a folder beside catalogs/."""
    image = tmp_path / "image.fits"
    image.write_bytes(b"x")
    assert io.check_not_input(tmp_path / "out.fits", "--out", {"--input": str(image), "--background": 0.7}) == str(
        tmp_path / "out.fits"
    )
    assert io.check_not_input(image, "--out", {"--input": None}) == str(image)
    assert io.check_not_under(tmp_path / "catalogs-all.fits", "--table", tmp_path / "catalogs", "x")
    assert io.check_plain_name("aware-2.v1", "--workdir") == "aware-2.v1"
    with pytest.raises(io.OutputPathError, match="'a b'"):
        io.check_plain_name("a b", "--catalog")


# --- the training workdir: one training at a time, no resume over a stranded best checkpoint --------------------


def train_argv(workdir, config_path, tiny_flags) -> list[str]:
    return ["--config", config_path("cpu_small"), "--workdir", str(workdir), *tiny_flags()]


@pytest.mark.fast
def test_second_training_in_a_workdir_is_refused(tmp_path, config_path, tiny_flags):
    workdir = tmp_path / "run"
    with checkpoints.workdir_lock(str(workdir)) as lock:
        assert open(lock).read() == f"pid {os.getpid()} on {os.uname().nodename}\n"
        before = snapshot(tmp_path)
        status, out, err = run_command("main", train_argv(workdir, config_path, tiny_flags))
        assert status == 2, err[-2000:]
        line = one_error_line(err)
        assert f"workdir {workdir} is in use by another training (pid {os.getpid()} on" in line, line
        assert snapshot(tmp_path) == before, "the refused training wrote something"
    assert not os.path.exists(workdir), "the lock's workdir, created for it, is removed with it"


@pytest.mark.fast
def test_lock_of_a_killed_training_blocks_nothing(tmp_path):
    """A process holding the lock is killed (SIGKILL: no cleanup); its file stays, the lock goes with it."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    path = workdir / checkpoints.LOCK_FILE
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import fcntl,sys; f=open({str(path)!r},'w'); fcntl.flock(f, fcntl.LOCK_EX); "
         "f.write('pid x on y'); f.flush(); print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(checkpoints.WorkdirLockedError, match="in use by another training \\(pid x on y"):
            with checkpoints.workdir_lock(str(workdir)):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert path.exists()  # left behind by the killed process
    with checkpoints.workdir_lock(str(workdir)):
        assert path.read_text().startswith(f"pid {os.getpid()} ")
    assert not path.exists() and workdir.is_dir()  # released and removed; the workdir existed before: kept


@pytest.mark.fast
def test_best_checkpoint_without_latest_is_refused(tmp_path, config_path, tiny_flags):
    from test_survey import write_random_workdir  # noqa: PLC0415  (a checkpointed workdir without training)

    workdir = tmp_path / "run"
    rng = np.random.default_rng(0)
    sample = (
        rng.normal(0, 1, (4, 16, 16)),
        np.full((4, 16, 16), 0.7),
        np.tile([[1.3, 3.9, 1.2, 3.0, 0.03, 0.13]], (4, 1)),
    )
    write_random_workdir(make_tiny_config(), workdir, sample)
    shutil.rmtree(workdir / "checkpoints" / "latest")
    assert checkpoints.saved_step(str(workdir), "best") == 1
    before = snapshot(tmp_path)
    status, out, err = run_command("main", train_argv(workdir, config_path, tiny_flags))
    assert status == 2, err[-2000:]
    assert one_error_line(err) == (
        f"error: workdir {workdir}: checkpoints/best holds epoch 1 but checkpoints/latest is missing: resume is "
        "impossible; move the workdir aside or remove checkpoints/best"
    )
    assert snapshot(tmp_path) == before, "the refused training wrote something"


# --- own-image checks ---------------------------------------------------------------------------------------------
# An image a user catalogs that the network would catalog wrong (npejax.cataloging.checks): refused with one error
# line naming the file or flag and the measured value, before the network runs, nothing written.


@pytest.fixture
def own_files(tmp_path):
    """Real inputs for the own-image checks: a clean FITS image and images that fail them (sky left in, x1e6, a zero
    CD matrix, BUNIT DN), an SDSS frame in DN with its psField, a frame with a renamed psField of another field, a PSF
    image that is noise, a frame list."""
    import test_image_checks as own  # noqa: PLC0415  (its image makers; it imports this module's run_command)
    import test_sdss as sdss_files  # noqa: PLC0415  (the SDSS data-model fixture writers)

    d = tmp_path / "own"
    d.mkdir()
    image = own.own_image()
    fits.PrimaryHDU(image, header=own.tan_header()).writeto(d / "clean.fits")
    fits.PrimaryHDU(image + own.BACKGROUND, header=own.tan_header()).writeto(d / "skyin.fits")
    fits.PrimaryHDU(image * 1e6, header=own.tan_header()).writeto(d / "x1e6.fits")
    fits.PrimaryHDU(image, header=own.tan_header(cd=np.zeros((2, 2)))).writeto(d / "zerocd.fits")
    fits.PrimaryHDU(image, header=fits.Header({"BUNIT": "DN"})).writeto(d / "bunit.fits")
    fits.PrimaryHDU(np.random.default_rng(0).random((25, 25))).writeto(d / "badpsf.fits")
    key = (94, 1, 12)
    spec = sdss_files.FIELDS[key]
    for folder in ("dn", "renamed"):
        (d / folder).mkdir()
        data, calibvec = sdss_files.frame_bytes(spec["sky"], spec["calib"])
        with fits.open(io_lib.BytesIO(data)) as hdul:
            if folder == "dn":  # the frame's nmgy turned back into DN, as a user might hand it over
                hdul[0].data = (hdul[0].data / calibvec[None, :]).astype(np.float32)
            hdul.writeto(d / folder / FRAME)
        psfield = d / folder / "psField-000094-1-0012.fit"
        sdss_files.write_psfield(psfield, spec["psf"])
        if folder == "renamed":  # field 13's psField renamed as field 12's
            with fits.open(psfield, mode="update") as hdul:
                hdul[0].header.update(RUN=94, CAMCOL=1, FIELD=13)
    (d / "frames.txt").write_text("skyin.fits\n", encoding="utf-8")
    return {"root": str(tmp_path), "d": str(d)}


PREDICT_OWN = "--pretrained cpu --background 0.7 --out {d}/c.fits"
OWN_IMAGE_CASES = [
    (
        "predict-sky-left-in",
        f"{PREDICT_OWN} --input {{d}}/skyin.fits --psf-params {{psf}}",
        ["{d}/skyin.fits", "median pixel 0.7", "sky looks left in", "subtract the sky", "--skip-image-checks"],
    ),
    (
        "predict-image-x1e6",
        f"{PREDICT_OWN} --input {{d}}/x1e6.fits --psf-params {{psf}}",
        ["{d}/x1e6.fits", "pixel noise 2.", "times above the expected", "nanomaggies"],
    ),
    (
        "predict-bunit-dn",
        f"{PREDICT_OWN} --input {{d}}/bunit.fits --psf-params {{psf}}",
        ["{d}/bunit.fits", "BUNIT = 'DN'", "nanomaggies"],
    ),
    (
        "predict-sdss-frame-in-dn",
        "--pretrained cpu --sdss-frame {d}/dn/"
        + FRAME
        + " --psfield {d}/dn/psField-000094-1-0012.fit --out {d}/c.fits",
        ["--sdss-frame {d}/dn/" + FRAME, "times above the expected", "the frame's own sky", "SDSS frame in DN"],
    ),
    (
        "predict-zero-cd-matrix",
        f"{PREDICT_OWN} --input {{d}}/zerocd.fits --psf-params {{psf}}",
        ["{d}/zerocd.fits", "WCS matrix (CD, or PC x CDELT) is singular", "RA/Dec would be meaningless"],
    ),
    (
        "predict-psfield-of-another-field-renamed",
        "--pretrained cpu --sdss-frame {d}/renamed/"
        + FRAME
        + " --psfield {d}/renamed/psField-000094-1-0012.fit --out {d}/c.fits",
        ["--psfield {d}/renamed/psField-000094-1-0012.fit is field 94-1-13", "is field 94-1-12", "HDU 0"],
    ),
    (
        "predict-psf-sigma-1e6",
        f"{PREDICT_OWN} --input {{d}}/skyin.fits --psf-params 1e6,3.9,1.2,3.0,0.03,0.13",
        ["--psf-params", "psf_sigma1 = 1e+06 pixels", "expected 0.1 to 25"],
    ),
    (
        "predict-bad-psf-image",
        f"{PREDICT_OWN} --input {{d}}/clean.fits --psf-image {{d}}/badpsf.fits",
        ["--psf-image {d}/badpsf.fits", "fits it badly", "residual 0."],
    ),
    (
        "predict-fwhm-zero",
        f"{PREDICT_OWN} --input {{d}}/skyin.fits --fwhm 0",
        ["--fwhm 0", "FWHM in arcsec"],
    ),
    (
        "predict-two-psfs",
        f"{PREDICT_OWN} --input {{d}}/skyin.fits --fwhm 1.4 --psf-params {{psf}}",
        ["--psf-params, --fwhm", "give one PSF"],
    ),
    (
        "survey-psf-sigma-1e6",
        "survey:catalog --pretrained cpu --frames {d}/frames.txt --out {d}/s --background 0.7 "
        "--psf-params 1.3,1e6,1.2,3.0,0.03,0.13",
        ["--psf-params", "psf_sigma2 = 1e+06 pixels"],
    ),
]


@pytest.mark.fast
@pytest.mark.parametrize("case", OWN_IMAGE_CASES, ids=[c[0] for c in OWN_IMAGE_CASES])
def test_own_image_that_would_be_cataloged_wrong_is_refused(case, own_files):
    _, argv, fragments = case
    command = "predict"
    if argv.startswith("survey:"):
        command, argv = "survey", argv[len("survey:") :]
    values = dict(own_files, psf=PSF)
    args = [a.format(**values) for a in argv.split()]
    before = snapshot(own_files["root"])
    status, out, err = run_command(command, args)
    assert status == 2, f"exit {status}; stderr: {err[-2000:]}"
    line = one_error_line(err)
    for fragment in fragments:
        assert fragment.format(**values) in line, f"{fragment!r} not named in: {line}"
    assert out == "" and snapshot(own_files["root"]) == before, "a file was written, changed or removed"
