"""Outputs that would destroy an input or leave their folder, and two trainings in one workdir: refused.

A corpus of command lines run through the real commands in-process (each command's ``main(argv)``): for every
case exit status 2, one ``error:`` line naming the flag and the paths, no traceback, and nothing under the
case's folder created, changed or removed (every file's size, mtime and SHA-256 compared before and after). The
guards are :func:`npejax.io.check_not_input`, :func:`npejax.io.check_not_under` and
:func:`npejax.io.check_plain_name` (npejax.predict, npejax.survey, npejax.evaluate through
:class:`npejax.evaluation.settings.EvalSettings`), and :func:`npejax.nn.checkpoints.workdir_lock` and
:func:`npejax.nn.checkpoints.check_resumable` (npejax.main). Own images the network would catalog wrong
(OWN_IMAGE_CASES: :mod:`npejax.cataloging.checks`). Inputs of another identity (IDENTITY_CASES): a survey
resume over catalogs of another network or setting (:func:`npejax.cataloging.runner.plan_resume`), a shard of
another split inside a dataset (:func:`npejax.datasets.format.check_shard_identity`), an experiment whose
evaluation would fail (:class:`npejax.evaluation.settings.EvalSettings`, checked before training).
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

PSF = "1.421,2.131,2.19,4.3,0.1848,0.05"  # the default bank's reference field: inside the training fields
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


def assert_refused(command: str, argv: str, fragments, values: dict, root) -> str:
    """Runs ``npejax.COMMAND`` with ``argv`` (a template of ``values``' keys, split on spaces) and asserts the
    refusal: exit 2, one ``error:`` line naming every fragment (templates too), nothing under ``root`` created,
    changed or removed. Returns the command's stdout."""
    args = [a.format(**values) for a in argv.split()]
    before = snapshot(root)
    status, out, err = run_command(command, args)
    assert status == 2, f"exit {status}; stderr: {err[-2000:]}"
    line = one_error_line(err)
    for fragment in fragments:
        assert fragment.format(**values) in line, f"{fragment!r} not named in: {line}"
    assert snapshot(root) == before, "a file was written, changed or removed"
    return out


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
    # --- npejax.survey: merge --out among the catalogs or the inputs; a frame among the catalogs ---
    (
        "survey-merge-table-in-catalogs",
        "survey",
        "merge --survey {survey} --out {survey}/catalogs/all.fits",
        ["--out", "{survey}/catalogs/all.fits", "{survey}/catalogs"],
    ),
    (
        "survey-merge-table-is-a-catalog",
        "survey",
        "merge --survey {survey} --out {survey}/catalogs/f1.fits",
        ["--out", "{survey}/catalogs/f1.fits", "{survey}/catalogs"],
    ),
    (
        "survey-merge-table-in-catalogs-by-link",
        "survey",
        "merge --survey {survey} --out {survey}/alias/all.csv",
        ["--out", "{survey}/alias/all.csv", "{survey}/catalogs"],
    ),
    (
        "survey-merge-table-is-frame-list",
        "survey",
        "merge --survey {survey} --out {frames} --frames {frames}",
        ["--out", "--frames", "{frames}"],
    ),
    (
        "survey-merge-table-is-a-frame",
        "survey",
        "merge --survey {survey} --out {image} --frames {frames}",
        ["--out", "frame image", "{image}"],
    ),
    (
        "survey-catalog-frame-in-catalogs",
        "survey",
        "catalog --pretrained cpu --frames {inside} --out {survey}",
        ["frame f1's catalog", "{survey}/catalogs/f1.fits"],
    ),
    # --- conventions ---
    (
        "evaluate-plain-workdir-not-a-plain-name",
        "evaluate",
        "--workdir {root}/run+1 --test-dir {d} --out {root}/r",
        ["--workdir {root}/run+1", "base name 'run+1'", "give --workdir NAME={root}/run+1"],
    ),
    (
        "evaluate-plain-workdirs-with-one-name",
        "evaluate",
        "--workdir {survey}/catalogs --workdir {d}/catalogs --test-dir {d} --out {root}/r",
        ["--workdir name 'catalogs' given twice", "give NAME=PATH"],
    ),
    (
        "evaluate-old-and-new-baseline-spelling",
        "evaluate",
        "--catalog mine={catalog} --baseline --no-baseline --test-dir {d} --out {root}/r",
        ["--baseline", "--nobaseline", "--no-baseline"],
    ),
    (
        "survey-merge-old-spelling",
        "survey",
        "merge --out {survey} --table {root}/all.fits",
        ["merge --table is gone", "merge --survey {survey} --out {root}/all.fits"],
    ),
    (
        "survey-merge-old-spelling-table-in-catalogs",
        "survey",
        "merge --out {survey} --table {survey}/catalogs/all.fits",
        ["merge --survey {survey} --out {survey}/catalogs/all.fits"],
    ),
    (
        "survey-merge-without-survey",
        "survey",
        "merge --out {root}/all.fits",
        ["merge needs --survey DIR"],
    ),
    (
        "survey-merge-survey-folder-missing",
        "survey",
        "merge --survey {root}/nowhere --out {root}/all.fits",
        ["--survey {root}/nowhere", "no such folder"],
    ),
]


@pytest.mark.fast
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_output_that_would_destroy_an_input_is_refused(case, files):
    _, command, argv, fragments = case
    assert_refused(command, argv, fragments, dict(files, psf=PSF), files["root"])


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


# --- identity ---
# A resume over catalogs of another network or setting, a missing workdir with nothing left to do, a shard of
# another split inside a dataset, an experiment whose evaluation would fail: refused before any work.


@pytest.fixture(scope="module")
def split_datasets(tmp_path_factory):
    """A 'val' and a 'test' dataset of 2 one-image shards each (the default config's simulator), written once."""
    from configs import default  # noqa: PLC0415  (the repository root is on sys.path: conftest.py)
    from npejax import datasets  # noqa: PLC0415
    from npejax.sim import pipeline  # noqa: PLC0415

    root = tmp_path_factory.mktemp("split_datasets")
    for split in ("val", "test", "train"):
        seed = datasets.split_seed(0, split)
        spec = pipeline.SimulationSpec.from_config(default.get_config(), seed=seed, batch_size=1)
        datasets.write_dataset(spec, root / split, 2, split, num_workers=0, progress=False)
    return root


@pytest.fixture
def identity_files(tmp_path, split_datasets):
    """A survey folder whose one frame's catalog was made by the pretrained network at --min-prob 0.5, another
    whose catalog was made by another network, and a test and a training set holding a validation shard."""
    from astropy.table import Table  # noqa: PLC0415

    from npejax.cataloging import runner  # noqa: PLC0415  (JAX: only for these cases)
    from npejax.nn import pretrained  # noqa: PLC0415

    p = {"root": str(tmp_path), "psf": PSF}
    p["frames"] = str(tmp_path / "frames.txt")
    with open(p["frames"], "w") as f:
        f.write(f"image.fits background=0.7 psf-params={PSF}\n")
    (frame,) = runner.read_frame_list(p["frames"])
    network = pretrained.identity("cpu")
    for name, made_by in (
        ("survey", network),
        ("foreign", dict(network, network="workdir /x", network_sha256="0" * 64)),
    ):
        p[name] = str(tmp_path / name)
        path = runner.catalog_path(p[name], frame, "fits")
        os.makedirs(os.path.dirname(path))
        runner.write_catalog(Table({"x": [1.0]}), path, runner.frame_identity(made_by, frame, 0.5, 512))
    for split in ("test", "train"):  # shard 1 of the validation set copied in under the right name
        p[split] = str(tmp_path / split)
        shutil.copytree(split_datasets / split, p[split])
        shutil.rmtree(os.path.join(p[split], "shard-00001"))
        shutil.copytree(split_datasets / "val" / "shard-00001", os.path.join(p[split], "shard-00001"))
    p["val"] = str(tmp_path / "val")
    shutil.copytree(split_datasets / "val", p["val"])
    p["experiment_config"] = os.path.join(os.path.dirname(__file__), "..", "configs", "experiment_cpu.py")
    p["config"] = os.path.join(os.path.dirname(__file__), "..", "configs", "cpu_small.py")
    return p


FOREIGN = "{%s}/shard-00001/shard.json has split 'val', the manifest {%s}/manifest.json '%s'"
IDENTITY_CASES = [
    (
        "survey-resume-other-min-prob",
        "survey",
        "catalog --pretrained cpu --frames {frames} --out {survey} --min-prob 0.3",
        ["frame catalog {survey}/catalogs/image.fits", "min_prob 0.5 -> 0.3", "--redo-mismatched", "--out"],
    ),
    (
        "survey-resume-other-network",
        "survey",
        "catalog --pretrained cpu --frames {frames} --out {foreign}",
        ["frame catalog {foreign}/catalogs/image.fits", "network workdir /x (" + "0" * 64 + ") -> pretrained cpu ("],
    ),
    (
        "survey-resume-missing-workdir",
        "survey",
        "catalog --workdir {root}/gone --frames {frames} --out {survey}",
        ["--workdir {root}/gone: workdir {root}/gone does not exist"],
    ),
    (
        "evaluate-foreign-shard-in-test-set",
        "evaluate",
        "--pretrained cpu --test-dir {test} --out {root}/report",
        [FOREIGN % ("test", "test", "test")],
    ),
    (
        "predict-foreign-shard-in-test-set",
        "predict",
        "--pretrained cpu --input {test} --out {root}/catalog.fits",
        [FOREIGN % ("test", "test", "test")],
    ),
    (
        "main-foreign-shard-in-training-set",
        "main",
        "--config {config} --workdir {root}/run --config.data.train_dir={train} --config.data.val_dir={val}",
        [FOREIGN % ("train", "train", "train")],
    ),
    (
        "experiment-no-test-images",
        "experiment",
        "--config {experiment_config} --out {root}/experiment --config.network.data.num_test=0",
        ["config.network.data.num_test must be >= 1, got 0"],
    ),
]


# --- prediction robustness ---


@pytest.fixture
def robustness_files(tmp_path):
    """Real FITS inputs: an 80 x 80 image, the same with 62.5% NaN rows, a background map with one NaN pixel."""
    from astropy.io import fits  # noqa: PLC0415  (only these cases read their inputs)

    sky_noise = 0.028  # nmgy: the photon noise of the 0.7 nmgy sky the cases give (npejax.cataloging.checks)
    image = np.random.default_rng(0).normal(0.0, sky_noise, (80, 80)).astype(np.float32)
    fits.PrimaryHDU(image).writeto(tmp_path / "fine.fits")
    mostly = image.copy()
    mostly[:50] = np.nan
    fits.PrimaryHDU(mostly).writeto(tmp_path / "mostly.fits")
    sky = np.full((80, 80), 0.7, np.float32)
    sky[3, 5] = np.nan
    fits.PrimaryHDU(sky).writeto(tmp_path / "nan-sky.fits")
    return {"d": str(tmp_path), "psf": PSF}


def _disk_full(monkeypatch):
    """Every catalog write fails as on a full disk, after part of the file is written."""
    import errno  # noqa: PLC0415

    from astropy.table import Table  # noqa: PLC0415

    def write(self, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"SIMPLE  =                    T")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Table, "write", write)


ROBUSTNESS_CASES = [
    pytest.param(
        "--input {d}/mostly.fits --background 0.7",
        None,
        ["{d}/mostly.fits: image 0", "4000 of its 6400 pixels (62.5%) are NaN or infinite", "at most 50%"],
        id="predict-mostly-nan-image",
        marks=pytest.mark.fast,
    ),
    pytest.param(
        "--input {d}/fine.fits --background {d}/nan-sky.fits",
        None,
        ["background nan at image 0, row 3, column 5", "expected a sky level"],
        id="predict-nan-background",
        marks=pytest.mark.fast,
    ),
    pytest.param(
        "--input {d}/fine.fits --background 0.7 --chunk-size 76",
        None,
        ["--chunk-size 76", "at least 144 pixels", "62,500 network calls for a 1000 x 1000 image"],
        id="predict-chunk-size-without-useful-output",
        marks=pytest.mark.fast,
    ),
    pytest.param(
        "--input {d}/fine.fits --background 0.7",
        _disk_full,
        ["--out {d}/c.fits: cannot write it: [Errno 28] No space left on device"],
        id="predict-full-disk",
    ),
]


@pytest.mark.fast
@pytest.mark.parametrize("case", IDENTITY_CASES, ids=[c[0] for c in IDENTITY_CASES])
def test_input_of_another_identity_is_refused(case, identity_files):
    _, command, argv, fragments = case
    assert_refused(command, argv, fragments, identity_files, identity_files["root"])


# --- artifacts of real frames ---


@pytest.mark.fast
@pytest.mark.parametrize(
    "override, fragment",
    [
        ("--config.artifacts.masked.fill=mean", "config.artifacts.masked.fill = 'mean': expected one of"),
        ("--config.artifacts.bad_columns.per_column=2.0", "config.artifacts.bad_columns.per_column = 2.0"),
        ("--config.artifacts.cosmic_rays.flagged=-1.0", "config.artifacts.cosmic_rays.flagged = -1.0"),
    ],
)
def test_simulate_refuses_a_bad_artifact_setting(tmp_path, config_path, override, fragment):
    before = snapshot(tmp_path)
    argv = ["--config", config_path("cpu"), override, "--split", "test", "--out", str(tmp_path / "ds")]
    status, out, err = run_command("simulate", [*argv, "--num-images", "2", "--num-workers", "0", "--noprogress"])
    assert status == 2, err[-2000:]
    assert fragment in one_error_line(err)
    assert snapshot(tmp_path) == before, "the refused simulation wrote something"


@pytest.mark.parametrize("argv, setup, fragments", ROBUSTNESS_CASES)
def test_prediction_robustness_refusals(argv, setup, fragments, robustness_files, monkeypatch):
    """Exit 2, one error line naming the value, nothing written (the full disk's partial file removed too)."""
    if setup is not None:
        setup(monkeypatch)
    argv = f"--pretrained cpu {argv} --psf-params {{psf}} --out {{d}}/c.fits"
    assert_refused("predict", argv, fragments, robustness_files, robustness_files["d"])


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
    assert assert_refused(command, argv, fragments, dict(own_files, psf=PSF), own_files["root"]) == ""


# --- mask channel ---
@pytest.mark.parametrize(
    "config, overrides, fragment",
    [
        (
            "cpu",
            ["--config.artifacts.masked.enabled=True", "--config.artifacts.masked.fill=nan"],
            'artifacts.masked.fill="nan" with model.mask_channel=False',
        ),
        (
            "cpu_artifacts",
            ["--config.artifacts.masked.fill=zero"],
            "artifacts.masked.fill='zero' with model.mask_channel",
        ),
    ],
)
def test_training_refuses_masked_blocks_the_mask_channel_would_not_read(
    tmp_path, config_path, config, overrides, fragment
):
    before = snapshot(tmp_path)
    status, out, err = run_command(
        "main", ["--config", config_path(config), *overrides, "--workdir", str(tmp_path / "w")]
    )
    assert status == 2, err[-2000:]
    assert fragment in one_error_line(err)
    assert snapshot(tmp_path) == before, "the refused training wrote something"


# --- quality ---
# The quality flag's gain / calibration (--electrons-per-nmgy, both commands): refused before any input is read;
# a survey resume with the other --[no]quality setting is refused like another --min-prob.

QUALITY_CASES = [
    (
        "predict-electrons-per-nmgy-zero",
        "predict",
        "--pretrained cpu --input {image} --background 0.7 --psf-params {psf} --out {d}/c.fits --electrons-per-nmgy 0",
        ["--electrons-per-nmgy 0", "expected a positive number of electrons per nmgy"],
    ),
    (
        "predict-electrons-per-nmgy-nan",
        "predict",
        "--pretrained cpu --input {image} --background 0.7 --psf-params {psf} --out {d}/c.fits "
        "--electrons-per-nmgy nan",
        ["--electrons-per-nmgy nan", "expected a positive number"],
    ),
    (
        "predict-electrons-per-nmgy-without-quality",
        "predict",
        "--pretrained cpu --input {image} --background 0.7 --psf-params {psf} --out {d}/c.fits "
        "--electrons-per-nmgy 900 --noquality",
        ["--electrons-per-nmgy 900", "--noquality"],
    ),
    (
        "survey-electrons-per-nmgy-negative",
        "survey",
        "catalog --pretrained cpu --frames {frames} --out {root}/out --electrons-per-nmgy -5",
        ["--electrons-per-nmgy -5", "expected a positive number"],
    ),
]


@pytest.mark.fast
@pytest.mark.parametrize("case", QUALITY_CASES, ids=[c[0] for c in QUALITY_CASES])
def test_a_bad_quality_setting_is_refused(case, files):
    _, command, argv, fragments = case
    assert_refused(command, argv, fragments, dict(files, psf=PSF), files["root"])


@pytest.mark.fast
def test_a_survey_resume_with_the_other_quality_setting_is_refused(identity_files):
    """The fixture's catalog was made without the flag (as every catalog before it): a resume with the default
    --quality is refused naming the setting, as is one with --noquality over a catalog made with it."""
    from npejax.cataloging import runner  # noqa: PLC0415
    from npejax.nn import pretrained  # noqa: PLC0415

    argv = f"catalog --pretrained cpu --frames {identity_files['frames']} --out {identity_files['survey']}"
    before = snapshot(identity_files["root"])
    status, out, err = run_command("survey", argv.split())
    assert status == 2 and "quality False -> True" in one_error_line(err), err
    assert snapshot(identity_files["root"]) == before, "a file was written, changed or removed"
    (frame,) = runner.read_frame_list(identity_files["frames"])
    path = runner.catalog_path(identity_files["survey"], frame, "fits")
    identity = runner.frame_identity(pretrained.identity("cpu"), frame, 0.5, 512, quality=True)
    os.unlink(path)
    from astropy.table import Table  # noqa: PLC0415

    runner.write_catalog(Table({"x": [1.0]}), path, identity)
    before = snapshot(identity_files["root"])
    status, out, err = run_command("survey", [*argv.split(), "--noquality"])
    assert status == 2 and "quality True -> False" in one_error_line(err), err
    assert snapshot(identity_files["root"]) == before, "a file was written, changed or removed"
