"""Cataloging a survey (the command npejax.survey, the library npejax.cataloging.runner): a source on a chunk seam
is reported once (a chunked 1489 x 2048 frame gives the whole-frame catalog), one catalog per frame, reruns
skip finished frames, a failing frame is reported while the others finish, --shard and Slurm job arrays split
the list, and merge writes one table.

The network is the tiny test config with random weights written as a checkpoint (:func:`write_random_workdir`:
no training, no init compile), so that tile outputs vary from tile to tile and a misplaced chunk would show.
One Predictor per workdir is kept for the module (:func:`one_predictor_per_workdir`): each command call would
otherwise compile the network again.
"""

import bz2
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import test_sdss as sdss_files  # the SDSS data-model fixture writers
from astropy.io import fits
from conftest import assert_one_error, make_tiny_config, without_field_warnings

import npejax
from npejax import catalogs as catalog
from npejax import configuration, io, schema, survey
from npejax.cataloging import images
from npejax.cataloging import runner as runner_lib
from npejax.nn import checkpoints, predictor
from npejax.nn import inputs as inputs_lib
from npejax.nn import model as model_lib
from npejax.nn import state as state_lib
from npejax.sim import fields, render
from npejax.surveys import sdss

SMALL = (96, 128)  # rows, columns of the small frames (one compiled shape)
PSF = "1.2,3.5,1.5,3.0,0.1,0.08"
PSF_ARRAY = np.array([1.2, 3.5, 1.5, 3.0, 0.1, 0.08], np.float32)


# --- fixtures: a network, frames ---------------------------------------------------------------------------


def random_state(config, seed: int = 0) -> state_lib.TrainState:
    """A TrainState of ``config``'s network with random weights drawn in numpy (kernels N(0, 1 / fan_in),
    batch-norm scales 1 + N(0, 0.1^2), biases N(0, 0.1^2), running statistics 0 and 1, optimizer zeros)."""
    abstract = state_lib.abstract_state(config, model_lib.from_config(config))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        keys = [str(getattr(p, "key", getattr(p, "name", ""))) for p in path]
        name, shape, dtype = keys[-1], leaf.shape, leaf.dtype
        if "params" not in keys and "batch_stats" not in keys:  # step, optimizer moments
            return np.zeros(shape, dtype)
        if name == "kernel":  # variance 1 / fan-in: larger weights give infinite fluxes on bright stars
            return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))).astype(dtype)
        if name == "var":
            return np.ones(shape, dtype)
        if name == "scale":
            return (1.0 + 0.1 * rng.standard_normal(shape)).astype(dtype)
        if name == "mean":
            return np.zeros(shape, dtype)
        return (0.1 * rng.standard_normal(shape)).astype(dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def write_random_workdir(config, workdir, sample, seed: int = 0) -> str:
    """A training directory (config.json, checkpoints/{best,latest}/1) holding a random network of
    ``config`` (:func:`random_state`) and the input normalizer fitted to ``sample`` (images, background,
    psf_params); loads with :meth:`Predictor.from_workdir` like a trained one. Also used for the survey's
    throughput figures (the work per frame does not depend on the weights)."""
    workdir = os.fspath(workdir)
    state = random_state(config, seed)
    normalizer = inputs_lib.Normalizer.fit(*sample)
    config_json = configuration.to_json(config)
    os.makedirs(workdir, exist_ok=True)
    io.write_json(os.path.join(workdir, checkpoints.CONFIG_FILE), config_json)
    meta = dict(
        epoch=1,
        best_val=0.0,
        bad_epochs=0,
        history=[],
        normalizer=normalizer.to_dict(),
        variant=config.model.variant,
        config=config_json,
        val_nll=0.0,
    )
    with checkpoints.managers(workdir) as managers:
        checkpoints.save([managers.latest, managers.best], 1, state, meta)
    return workdir


def noise_image(shape, seed: int = 0, sources: int = 12) -> np.ndarray:
    """Sky-subtracted Gaussian noise (0.028 nmgy: the photon noise of a 0.5-0.9 nmgy sky, which the tests give as
    the background; npejax.cataloging.checks) with ``sources`` bright round blobs, float32 [H, W]."""
    rng = np.random.default_rng(seed)
    h, w = shape
    image = rng.normal(0.0, 0.028, (h, w)).astype(np.float32)
    yy, xx = np.mgrid[:h, :w]
    for y, x in rng.uniform(0, 1, (sources, 2)) * (h, w):
        image += (3.0 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.5**2))).astype(np.float32)
    return image


def render_frame(config, stars_xy, fluxes, seed: int = 0, shape=fields.SDSS_FRAME_SHAPE):
    """(image, background, psf_params, field name): stars at ``stars_xy`` (pixels, x = column) rendered by
    :class:`npejax.sim.render.Renderer` on the embedded bank's reference field (its spatially varying sky,
    Gaussian noise), nmgy."""
    bank = fields.load_bank(None)
    n = len(stars_xy)
    catalog_ = dict(
        n_sources=np.array([n]),
        x=np.asarray(stars_xy, float)[None, :, 0],
        y=np.asarray(stars_xy, float)[None, :, 1],
        flux=np.asarray(fluxes, float)[None],
        is_galaxy=np.zeros((1, n), bool),
    )
    for key in ("disk_frac", "angle", "disk_q", "bulge_q", "disk_a", "bulge_a"):
        catalog_[key] = np.zeros((1, n))
    renderer = render.Renderer(bank, shape, render.RenderConfig.from_config(config.render))
    ref = bank.reference
    images, background = renderer.render(catalog_, np.array([ref]), np.zeros((1, 2), int), np.random.default_rng(seed))
    return images[0], background[0], bank.psf_params[ref].astype(np.float32), str(bank.names[ref])


def tan_header():
    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRPIX1"], h["CRPIX2"] = 1024.5, 745.5
    h["CRVAL1"], h["CRVAL2"] = 150.1, 2.2
    h["CD1_1"], h["CD1_2"], h["CD2_1"], h["CD2_2"] = -1.1e-4, 1.5e-6, 2.0e-6, 1.1e-4
    h["RADESYS"] = "ICRS"
    return h


def write_sdss_frame(directory, key=(94, 1, 12)):
    """An SDSS frame (.fits.bz2, 60 x 80 pixels) and its psField following the data model (test_sdss)."""
    spec = sdss_files.FIELDS[key]
    data, _ = sdss_files.frame_bytes(spec["sky"], spec["calib"])
    frame, psfield = directory / sdss.frame_name(*key), directory / sdss.psfield_name(*key)
    frame.write_bytes(bz2.compress(data))
    sdss_files.write_psfield(psfield, spec["psf"])
    return frame, psfield


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("survey_net")
    images = np.stack([noise_image(SMALL, seed) for seed in range(4)])
    sample = (images, np.full(images.shape, 0.7, np.float32), np.tile(PSF_ARRAY, (4, 1)))
    return write_random_workdir(make_tiny_config(), root / "run", sample)


@pytest.fixture(scope="module", autouse=True)
def one_predictor_per_workdir():
    """Predictor.from_workdir loads each (workdir, checkpoint) once in this module; later calls get the same
    Predictor (and its compiled network)."""
    cache = {}
    load = predictor.Predictor.from_workdir.__func__

    def cached(cls, workdir, which="best"):
        key = (os.path.abspath(workdir), which)
        if key not in cache:
            cache[key] = load(cls, workdir, which)
        return cache[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(predictor.Predictor, "from_workdir", classmethod(cached))
        yield


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to load the network fails the test: the error must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("the network was loaded before the error was found")

    monkeypatch.setattr(predictor.Predictor, "from_workdir", refuse)


def _survey(capsys, *args):
    """``npejax.survey`` in this process: (exit status, stdout, stderr without the training-fields warnings and
    the quality flag's lines on the tiny network's catalogs: conftest.without_field_warnings)."""
    code = survey.main(["npejax.survey", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, without_field_warnings(out.err, quality=True)


def _write_small(path, seed):
    fits.PrimaryHDU(noise_image(SMALL, seed)).writeto(path, overwrite=True)


def _assert_same_table(got, expected, where="", csv=False):
    """Same columns and rows; values to float32 precision (``csv``: to the precision a CSV prints). A survey's
    ``field_distance`` (npejax.cataloging.images.FieldRange) and quality flag's columns (tests/test_quality.py),
    absent from ``Predictor.catalog``, are left out."""
    if "field_distance" in got.colnames and "field_distance" not in expected.colnames:
        got = got[[name for name in got.colnames if name != "field_distance"]]
    if "quality_flag" in got.colnames and "quality_flag" not in expected.colnames:
        got = got[[name for name in got.colnames if name not in schema.QUALITY_COLUMNS]]
    assert got.colnames == expected.colnames and len(got) == len(expected) > 0, where
    for name in got.colnames:
        want = np.asarray(expected[name], float)
        if csv and expected[name].dtype.kind == "f":
            want = np.array([float(catalog.CSV_FORMATS.get(name, "{:#.7g}").format(v)) for v in expected[name]])
        np.testing.assert_allclose(np.asarray(got[name], float), want, rtol=1e-5, atol=1e-5, err_msg=f"{where} {name}")


# --- seams: a chunked frame gives the whole-frame catalog, each tile once ----------------------------------


def test_sources_on_chunk_seams_reported_once_on_a_full_frame(workdir, tmp_path, capsys, network_call_shapes):
    net = predictor.Predictor.from_workdir(workdir)
    h, w = fields.SDSS_FRAME_SHAPE  # 1489 rows x 2048 columns
    t = net.tile_size
    chunk = predictor.CHUNK_SIZE // t  # the command's default --chunk-size, in tiles
    row_plan = predictor._chunk_plan(-(-h // t), chunk, net.margin)
    col_plan = predictor._chunk_plan(-(-w // t), chunk, net.margin)
    row_seams = [a * t for a, _, _ in row_plan[1:]]  # pixel edges between two chunks' cores
    col_seams = [a * t for a, _, _ in col_plan[1:]]
    assert len(row_seams) >= 3 and len(col_seams) >= 4, (row_seams, col_seams)
    # stars exactly on the seams (x on a column seam, y on a row seam, both at the crossings), and a
    # quarter-pixel either side of them
    stars = [(x + dx, 100.0 + 371 * k) for k, x in enumerate(col_seams) for dx in (-0.25, 0.0)]
    stars += [(150.0 + 397 * k, y + dy) for k, y in enumerate(row_seams) for dy in (0.0, 0.25)]
    stars += [(x, y) for x in col_seams for y in row_seams]
    image, background, psf, field = render_frame(make_tiny_config(), stars, np.geomspace(20, 2000, len(stars)))
    assert image.shape == (h, w) and np.ptp(background) > 0.005  # the field's sky varies over the frame
    fits.PrimaryHDU(image, header=tan_header()).writeto(tmp_path / "frame-seams.fits")
    fits.PrimaryHDU(background).writeto(tmp_path / "sky.fits")
    (tmp_path / "frames.txt").write_text(f"frame-seams.fits background=sky.fits field-id={field}\n")

    shapes = network_call_shapes
    # --noquality: the tiny network's thousands of detections on a full frame would make the quality flag's fits
    # the test's cost (tests/test_quality_commands.py tests the flag)
    common = ["catalog", "--workdir", workdir, "--frames", tmp_path / "frames.txt", "--min-prob", "0", "--noquality"]
    code, out, err = _survey(capsys, *common, "--out", tmp_path / "whole", "--chunk-size", "0")
    assert code == 0, err
    assert shapes == [(1, 1492, 2048)]  # one network call on the frame padded to whole tiles
    shapes.clear()
    code, out, err = _survey(capsys, *common, "--out", tmp_path / "chunked")  # default --chunk-size 512
    assert code == 0, err
    assert set(shapes) == {(1, 512, 512)} and len(shapes) == len(row_plan) * len(col_plan)
    assert "1 frames cataloged" in out and "frames/s" in out and "peak memory" in out, out

    whole = catalog.read_table(tmp_path / "whole" / "catalogs" / "frame-seams.fits")
    chunked = catalog.read_table(tmp_path / "chunked" / "catalogs" / "frame-seams.fits")
    assert {"ra", "dec"} <= set(chunked.colnames)
    _assert_same_table(chunked, whole, "chunked vs whole frame")  # row for row, float32 precision
    # every tile of the frame exactly once: each row lies in its own tile, no tile twice, none missing
    tiles = np.floor(np.column_stack([chunked["y"], chunked["x"]]) / t).astype(int)
    assert len(np.unique(tiles, axis=0)) == len(chunked)
    inside = tiles[:, 0] < h // t  # tile rows 0-371; row 372 (pixels 1488-1491) keeps sources above y 1489
    assert np.sum(inside) == (h // t) * (w // t) and np.all(np.asarray(chunked["y"])[~inside] < h)
    # the tiles on both sides of every seam star are there (once: above)
    present = {tuple(v) for v in tiles}
    for x, y in stars:
        for ty in (int(y // t) - 1, int(y // t)):
            for tx in (int(x // t) - 1, int(x // t)):
                assert (ty, tx) in present, (x, y, ty, tx)
    # outputs vary from tile to tile, so a misplaced chunk would show
    assert np.std(np.asarray(chunked["prob_source"])) > 1e-3


# --- one catalog per frame, reruns, failures ---------------------------------------------------------------


def test_catalog_per_frame_rerun_skips_and_failures_reported(workdir, tmp_path, capsys, monkeypatch):
    net = predictor.Predictor.from_workdir(workdir)
    bank = fields.load_bank(None)
    d = tmp_path / "frames"
    d.mkdir()
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        _write_small(d / f"{name}.fits", seed)
    sky = np.linspace(0.5, 0.9, SMALL[1], dtype=np.float32)[None].repeat(SMALL[0], 0)
    fits.PrimaryHDU(sky).writeto(d / "c-sky.fits")
    frame, psfield = write_sdss_frame(d)
    _write_small(tmp_path / "whole.fits", 4)
    data = (tmp_path / "whole.fits").read_bytes()
    (d / "cut.fits").write_bytes(data[: len(data) // 2])  # truncated in the pixels
    lines = [
        f"frames/a.fits background=0.7 field-id={bank.names[5]}",
        "frames/b.fits                       # the command's --background and --psf-params",
        "frames/gone.fits",
        f"frames/{frame.name} psfield=frames/{psfield.name}",
        "frames/cut.fits",
        "'frames/c.fits' background=frames/c-sky.fits psf-params=1.5,3.0,2.0,3.5,0.1,0.02",
        "frames/b.fits background=-1 psf-params=" + PSF,
    ]  # a duplicate name: refused (below)
    (tmp_path / "frames.txt").write_text("# a survey\n\n" + "\n".join(lines[:-1]) + "\n")
    out = tmp_path / "out"
    args = [
        "catalog",
        "--workdir",
        workdir,
        "--frames",
        tmp_path / "frames.txt",
        "--out",
        out,
        "--min-prob",
        "0",
        "--background",
        "0.6",
        "--psf-params",
        PSF,
        "--noquality",  # the tiny network's row per tile: the quality flag's fits would be the test's cost
    ]
    code, stdout, err = _survey(capsys, *args)
    assert code == 1, stdout + err
    failed = [line for line in err.splitlines() if line.startswith("failed:")]
    assert len(failed) == 2 and len(err.splitlines()) == 2, err  # one line each, no traceback
    assert failed[0].startswith("failed: frame 2 gone (") and "does not exist" in failed[0]
    assert failed[1].startswith("failed: frame 4 cut (") and "truncated" in failed[1]
    assert "shard 0/1 (all frames" in stdout and "6 frames; 0 skipped" in stdout
    assert "4 frames cataloged" in stdout and "2 failed" in stdout
    rows = catalog.read_table(out / "failures-0-of-1.csv")
    assert list(rows["index"]) == [2, 4] and list(rows["name"]) == ["gone", "cut"]
    assert str(rows["path"][0]) == str(d / "gone.fits") and "truncated" in str(rows["reason"][1])

    # each catalog is the library's catalog of that frame with the line's (or the defaults') inputs
    expected = {
        "a": (noise_image(SMALL, 1), 0.7, bank.psf_params[5]),
        "b": (noise_image(SMALL, 2), 0.6, PSF_ARRAY),
        "c": (noise_image(SMALL, 3), sky, np.array([1.5, 3.0, 2.0, 3.5, 0.1, 0.02], np.float32)),
    }
    for name, (image, background, psf) in expected.items():
        got = catalog.read_table(out / "catalogs" / f"{name}.fits")
        _assert_same_table(got, net.catalog(image, background, psf, min_prob=0.0), name)
        assert len(got) == (SMALL[0] // 4) * (SMALL[1] // 4)
    got = catalog.read_table(out / "catalogs" / "frame-r-000094-1-0012.fits")
    _assert_same_table(got, images.catalog_inputs(net, images.open_sdss_frame(str(frame), str(psfield)), 0.0), "sdss")
    assert sorted(os.listdir(out / "catalogs")) == ["a.fits", "b.fits", "c.fits", "frame-r-000094-1-0012.fits"]

    # a rerun reads only the frames without a catalog
    opened = []
    open_frame = runner_lib.open_frame
    monkeypatch.setattr(
        runner_lib, "open_frame", lambda f, b, *checks: (opened.append(f.name), open_frame(f, b, *checks))[1]
    )
    mtimes = {p: os.stat(out / "catalogs" / p).st_mtime_ns for p in os.listdir(out / "catalogs")}
    code, stdout, err = _survey(capsys, *args)
    assert code == 1 and sorted(opened) == ["cut", "gone"], (opened, err)  # read by 2 threads
    assert "4 skipped" in stdout and "2 to catalog" in stdout and err.count("failed:") == 2
    assert {p: os.stat(out / "catalogs" / p).st_mtime_ns for p in mtimes} == mtimes

    # the missing and the truncated frames repaired: the next rerun finishes and removes the failures file
    _write_small(d / "gone.fits", 5)
    _write_small(d / "cut.fits", 4)
    opened.clear()
    code, stdout, err = _survey(capsys, *args)
    assert code == 0 and err == "", err
    assert sorted(opened) == ["cut", "gone"] and "2 frames cataloged" in stdout and "0 failed" in stdout
    assert not (out / "failures-0-of-1.csv").exists()
    assert len(os.listdir(out / "catalogs")) == 6 and not any(io.is_temporary(p) for p in os.listdir(out / "catalogs"))
    code, stdout, err = _survey(capsys, *args)  # nothing left to do: the network is not even loaded
    assert code == 0 and "6 skipped" in stdout and "0 frames cataloged" in stdout and len(opened) == 2

    # a bad value in one line (a negative background) fails that frame alone
    (tmp_path / "bad.txt").write_text("frames/a.fits background=-1 psf-params=" + PSF + "\nframes/b.fits\n")
    code, stdout, err = _survey(
        capsys, *args[:4], tmp_path / "bad.txt", "--out", tmp_path / "out2", *args[7:], "--format", "csv"
    )
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith("failed: frame 0 a (") and "background -1 at image 0" in err, err
    assert os.listdir(tmp_path / "out2" / "catalogs") == ["b.csv"]
    _assert_same_table(
        catalog.read_table(tmp_path / "out2" / "catalogs" / "b.csv"),
        catalog.read_table(out / "catalogs" / "b.fits"),
        "csv",
        csv=True,
    )

    # the same name twice in a list is refused before any work (catalogs are named by frame)
    (tmp_path / "dup.txt").write_text("\n".join(lines[:2] + lines[-1:]) + "\n")
    code, stdout, err = _survey(capsys, *args[:4], tmp_path / "dup.txt", *args[5:])
    assert_one_error(code, stdout, err, "frame name 'b' is also line 2's")


# --- shards, Slurm job arrays, merge ------------------------------------------------------------------------

NUM_SHARD_FRAMES = 7


@pytest.fixture(scope="module")
def sharded(workdir, tmp_path_factory):
    """A list of 7 small frames cataloged by 3 shards (--shard 0/3, 1/3, 2/3) into one folder; (root, outputs
    of the three runs)."""
    root = tmp_path_factory.mktemp("shards")
    (root / "f").mkdir()
    for k in range(NUM_SHARD_FRAMES):
        _write_small(root / "f" / f"s{k}.fits", 10 + k)
    (root / "frames.txt").write_text("".join(f"f/s{k}.fits\n" for k in range(NUM_SHARD_FRAMES)))
    outputs = []
    for i in range(3):
        code = survey.main(
            [
                "npejax.survey",
                "catalog",
                "--workdir",
                workdir,
                "--frames",
                str(root / "frames.txt"),
                "--out",
                str(root / "out"),
                "--background",
                "0.7",
                "--psf-params",
                PSF,
                "--shard",
                f"{i}/3",
                "--min-prob",
                "0.5",
                "--readers",
                str(i + 1),
                "--noquality",  # (the tiny network's row per tile; tests/test_quality_commands.py tests the flag)
            ]
        )
        outputs.append(code)
    return root, outputs


def _catalog_names(folder):
    return sorted(os.path.splitext(p)[0] for p in os.listdir(folder / "catalogs"))


@pytest.mark.fast
def test_shards_are_disjoint_and_cover_the_list(sharded, workdir, capsys, monkeypatch):
    root, codes = sharded
    assert codes == [0, 0, 0]
    assert _catalog_names(root / "out") == [f"s{k}" for k in range(NUM_SHARD_FRAMES)]
    net = predictor.Predictor.from_workdir(workdir)
    for k in range(NUM_SHARD_FRAMES):  # each frame's own catalog, whatever the number of reader threads
        expected = net.catalog(noise_image(SMALL, 10 + k), 0.7, PSF_ARRAY, min_prob=0.5)
        _assert_same_table(catalog.read_table(root / "out" / "catalogs" / f"s{k}.fits"), expected, f"s{k}")
    # which shard wrote which: a new folder per shard
    seen = []
    for i in range(3):
        out = root / f"only{i}"
        code, stdout, err = _survey(
            capsys,
            "catalog",
            "--workdir",
            workdir,
            "--frames",
            root / "frames.txt",
            "--out",
            out,
            "--background",
            "0.7",
            "--psf-params",
            PSF,
            "--shard",
            f"{i}/3",
            "--noquality",
        )
        assert code == 0, err
        names = _catalog_names(out)
        assert names == [f"s{k}" for k in range(NUM_SHARD_FRAMES) if k % 3 == i]  # frame K -> shard K mod 3
        assert f"shard {i}/3 (--shard {i}/3; frame K goes to shard K mod 3): {len(names)} of 7 frames" in stdout
        seen += names
    assert sorted(seen) == sorted(set(seen)) and len(seen) == NUM_SHARD_FRAMES

    # a Slurm job array task (--array=10-12): task 11 is shard 1/3; --shard, when given, wins
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "11")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "10")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_STEP", "1")
    common = [
        "catalog",
        "--workdir",
        workdir,
        "--frames",
        root / "frames.txt",
        "--background",
        "0.7",
        "--psf-params",
        PSF,
        "--format",
        "csv",
        "--noquality",
    ]
    code, stdout, err = _survey(capsys, *common, "--out", root / "slurm")
    assert code == 0, err
    assert "shard 1/3 (SLURM_ARRAY_TASK_ID=11 of SLURM_ARRAY_TASK_COUNT=3" in stdout
    assert _catalog_names(root / "slurm") == ["s1", "s4"]
    code, stdout, err = _survey(capsys, *common, "--out", root / "slurm_given", "--shard", "2/3")
    assert code == 0 and _catalog_names(root / "slurm_given") == ["s2", "s5"], err


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, None),
        ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "4"}, (0, 4)),
        ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}, (3, 4)),
        (
            {
                "SLURM_ARRAY_TASK_ID": "7",
                "SLURM_ARRAY_TASK_COUNT": "4",
                "SLURM_ARRAY_TASK_MIN": "1",
                "SLURM_ARRAY_TASK_STEP": "2",
            },
            (3, 4),
        ),  # --array=1-7:2
        ({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4"}, "is not one of count evenly spaced"),
        (
            {
                "SLURM_ARRAY_TASK_ID": "2",
                "SLURM_ARRAY_TASK_COUNT": "4",
                "SLURM_ARRAY_TASK_STEP": "2",
                "SLURM_ARRAY_TASK_MIN": "1",
            },
            "is not one of count evenly spaced",
        ),
        ({"SLURM_ARRAY_TASK_ID": "2"}, "SLURM_ARRAY_TASK_COUNT=None"),
        ({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "4"}, "SLURM_ARRAY_TASK_ID='x'"),
    ],
)
@pytest.mark.fast
def test_shard_from_slurm_environment(env, expected):
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected):
            runner_lib.shard_from_environment(env)
    else:
        assert runner_lib.shard_from_environment(env) == expected
    frames = [runner_lib.Frame(k, k + 1, f"f{k}.fits", f"f{k}") for k in range(10)]
    parts = [[f.index for f in runner_lib.shard_frames(frames, i, 4)] for i in range(4)]
    assert parts == [[0, 4, 8], [1, 5, 9], [2, 6], [3, 7]]


@pytest.mark.fast
def test_merge_writes_one_table_with_a_frame_column(sharded, capsys, tmp_path):
    root, _ = sharded
    out = root / "out"
    per_frame = {n: catalog.read_table(out / "catalogs" / f"{n}.fits") for n in _catalog_names(out)}
    assert sum(len(t) for t in per_frame.values()) > 0
    code, stdout, err = _survey(capsys, "merge", "--survey", out, "--out", tmp_path / "all.fits")
    assert code == 0 and err == "", err
    merged = catalog.read_table(tmp_path / "all.fits")
    total = sum(len(t) for t in per_frame.values())
    assert stdout == f"{NUM_SHARD_FRAMES} frame catalogs, {total} rows -> {tmp_path / 'all.fits'}\n"
    assert len(merged) == total and merged.colnames[0] == "frame" and "image" not in merged.colnames
    assert merged.meta["FLUXUNIT"] == "nmgy" and merged["x"].unit == "pix"
    start = 0
    for name in sorted(per_frame):  # by frame name, each frame's rows in its own order
        t = per_frame[name]
        part = merged[start : start + len(t)]
        assert set(part["frame"]) <= {name} and len(part) == len(t)
        for col in t.colnames:
            if col != "image":
                np.testing.assert_array_equal(np.asarray(part[col]), np.asarray(t[col]), err_msg=col)
        start += len(t)
    # in the list's order, CSV; a listed frame without a catalog is named and the exit status is 1
    (tmp_path / "list.txt").write_text("f/s6.fits\nf/s0.fits\nf/none.fits\n")
    code, stdout, err = _survey(
        capsys, "merge", "--survey", out, "--out", tmp_path / "two.csv", "--frames", tmp_path / "list.txt"
    )
    assert code == 1 and "missing: 1 frames of" in err and "(none)" in err, err
    two = catalog.read_table(tmp_path / "two.csv")
    assert list(dict.fromkeys(two["frame"])) == [n for n in ("s6", "s0") if len(per_frame[n])]
    assert len(two) == len(per_frame["s6"]) + len(per_frame["s0"])


# --- bad command lines: one error line, exit 2, nothing done --------------------------------------------------


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("shard_high", "--shard 3/3: expected I/N with 0 <= I < N"),
        ("shard_zero", "--shard 0/0: expected I/N"),
        ("shard_text", "--shard a/b: expected I/N"),
        ("shard_negative", "--shard -1/2: expected I/N"),
        ("slurm_bad", "SLURM_ARRAY_TASK_COUNT=None"),
        ("unknown_key", "line 1: unknown key 'backgroud'"),
        ("two_paths", "line 2: expected one frame file and key=value words, got 2 paths"),
        ("no_background", "line 1: x.fits needs background="),
        ("no_psf", "line 1: x.fits needs field-id= or psf-params="),
        ("sdss_with_background", "background= with psfield=: an SDSS frame brings its own background"),
        ("empty_list", "lists no frame"),
        ("missing_list", "no such file (a list of frames"),
        ("min_prob", "--min-prob 1.5: expected a probability in [0, 1)"),
        ("both_psf", "give one of --field-id and --psf-params, not both"),
        ("bad_psf", "--psf-params: psf_params"),
        ("bad_field_id", "--field-id nope: unknown field id 'nope' in field bank"),
        ("bad_background", "--background 'abc': expected a number"),
        ("format", "--format"),
        ("out_is_file", "is an existing file, not a directory"),
        ("no_subcommand", "a subcommand is required: one of catalog, merge"),
        ("unknown_subcommand", "unknown subcommand 'catalogue'"),
        ("merge_extension", "unsupported catalog file extension '.txt'"),
        ("merge_no_survey", "--survey {tmp}/nowhere: no such folder"),
        ("merge_old_spelling", "merge --table is gone: the merged table is --out and the survey folder --survey"),
        ("merge_empty", "no catalogs in"),
    ],
)
@pytest.mark.fast
def test_bad_command_lines_give_one_error_line(case, fragment, tmp_path, capsys, monkeypatch, no_network):
    lists = {
        "unknown_key": "x.fits backgroud=0.7\n",
        "two_paths": "a.fits background=1\nx.fits y.fits\n",
        "no_background": "x.fits field-id=94-1-12\n",
        "no_psf": "x.fits background=1\n",
        "sdss_with_background": "frame.fits psfield=p.fit background=0.7\n",
        "empty_list": "# nothing\n\n",
    }
    (tmp_path / "frames.txt").write_text(lists.get(case, "x.fits background=0.7\n"))
    (tmp_path / "file").write_text("")
    out = tmp_path / ("file" if case == "out_is_file" else "out")
    args = ["catalog", "--workdir", tmp_path / "run", "--frames", tmp_path / "frames.txt", "--out", out]
    if case == "missing_list":
        args[4] = tmp_path / "nolist.txt"
    extra = {
        "shard_high": ["--shard", "3/3"],
        "shard_zero": ["--shard", "0/0"],
        "shard_text": ["--shard", "a/b"],
        "shard_negative": ["--shard", "-1/2"],
        "min_prob": ["--min-prob", "1.5"],
        "both_psf": ["--field-id", "94-1-12", "--psf-params", PSF],
        "bad_psf": ["--psf-params", "1,2,3"],
        "bad_field_id": ["--field-id", "nope"],
        "bad_background": ["--background", "abc"],
        "format": ["--format", "votable"],
    }
    if case not in ("no_psf", "both_psf", "bad_psf", "bad_field_id"):
        args += ["--psf-params", PSF]
    args += extra.get(case, [])
    if case == "slurm_bad":
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
        monkeypatch.delenv("SLURM_ARRAY_TASK_COUNT", raising=False)
    if case == "no_subcommand":
        args = []
    elif case == "unknown_subcommand":
        args[0] = "catalogue"
    elif case.startswith("merge"):
        (tmp_path / "out").mkdir()
        args = [
            "merge",
            "--survey",
            tmp_path / ("nowhere" if case == "merge_no_survey" else "out"),
            "--out",
            tmp_path / ("all.txt" if case == "merge_extension" else "all.fits"),
        ]
        if case == "merge_old_spelling":  # the spelling before --survey: refused, not taken for another meaning
            args = ["merge", "--out", tmp_path / "out", "--table", tmp_path / "all.fits"]
    code, stdout, err = _survey(capsys, *args)
    assert_one_error(code, stdout, err, fragment.replace("{tmp}", str(tmp_path)))
    assert not (tmp_path / "out" / "catalogs").exists() and not (tmp_path / "all.fits").exists()


def test_module_command_line(root, tmp_path, capsys):
    """``python -m npejax.survey`` as the README writes it (a bad --shard refused with one line), and --help."""
    assert survey.main(["npejax.survey", "--help"]) == 0
    assert "python -m npejax.survey merge" in capsys.readouterr().out
    assert survey.main(["npejax.survey", "catalog", "--help"]) == 0
    assert "--readers" in capsys.readouterr().out
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "npejax.survey",
            "catalog",
            "--workdir",
            "run",
            "--frames",
            "frames.txt",
            "--out",
            str(tmp_path / "out"),
            "--shard",
            "4/4",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: --shard 4/4: expected I/N with 0 <= I < N") and proc.stderr.count("\n") == 1


@pytest.mark.fast
def test_frame_list_format(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "list.txt").write_text(
        "# comment\n"
        "a.fits.gz background=0.5 field-id=94-1-12   # trailing comment\n"
        "\n"
        "'/abs/with space.fits' background=sky.fits psf-params=" + PSF + "\n"
        "frame-r-000094-1-0012.fits.bz2 psfield=../p/psField-000094-1-0012.fit\n"
        "c.fit\n"
    )
    frames = runner_lib.read_frame_list(tmp_path / "sub" / "list.txt", background="0.6", field_id="94-1-13")
    sub = str(tmp_path / "sub")
    assert [f.index for f in frames] == [0, 1, 2, 3] and [f.line for f in frames] == [2, 4, 5, 6]
    assert [f.name for f in frames] == ["a", "with space", "frame-r-000094-1-0012", "c"]
    assert frames[0] == runner_lib.Frame(0, 2, os.path.join(sub, "a.fits.gz"), "a", background=0.5, field_id="94-1-12")
    assert frames[1].path == "/abs/with space.fits" and frames[1].background == os.path.join(sub, "sky.fits")
    assert frames[1].psf_params == PSF and frames[1].field_id is None  # a line's PSF replaces the defaults
    assert frames[2].is_sdss and frames[2].psfield == str(tmp_path / "p" / "psField-000094-1-0012.fit")
    assert frames[3].background == 0.6 and frames[3].field_id == "94-1-13" and not frames[3].is_sdss


def test_frame_stem_is_the_file_name_without_extensions():
    """A frame's name (its catalog's file name) drops one compression and one FITS extension, any case; the
    SDSS archive's file name of a field (surveys.sdss.frame_name) comes back to the field's frame stem."""
    assert runner_lib.frame_stem(sdss.frame_name(94, 1, 12)) == "frame-r-000094-1-0012"
    assert runner_lib.frame_stem("/data/run 1/img.FITS.fz") == "img"
    assert runner_lib.frame_stem("img.fts") == "img" and runner_lib.frame_stem("a.b.fit.gz") == "a.b"
    assert runner_lib.frame_stem("img.png") == "img.png" and runner_lib.frame_stem(".fits") == ".fits"


# --- identity: what made a catalog, checked on resume ----------------------------------------------------------


def _snapshot(root) -> dict:
    """Path -> (size, mtime) of every file under ``root``."""
    return {
        os.path.join(d, n): (os.stat(os.path.join(d, n)).st_size, os.stat(os.path.join(d, n)).st_mtime_ns)
        for d, _, names in os.walk(root)
        for n in names
    }


def test_catalogs_record_what_made_them_and_a_resume_checks_it(workdir, tmp_path, capsys):
    """Each catalog records the network, min_prob and the frame's inputs; a rerun with another --min-prob or
    network is refused before any work (exit 2, one line naming the catalog, the keys and both values); a
    truncated or empty catalog is cataloged again with a warning naming it; a catalog that records nothing (an
    older npejax's) is kept with a warning; --redo-mismatched catalogs the others again."""
    for name, seed in (("a", 1), ("b", 2)):
        _write_small(tmp_path / f"{name}.fits", seed)
    (tmp_path / "frames.txt").write_text(f"a.fits psf-params={PSF}\nb.fits psf-params=1.20,3.5,1.5,3,0.1,0.08\n")
    out = tmp_path / "out"
    args = ["catalog", "--workdir", workdir, "--frames", tmp_path / "frames.txt", "--out", out, "--background", "0.7"]
    args.append("--noquality")  # (cost: the tiny network's row per tile; the default: test_quality_commands.py)
    code, stdout, err = _survey(capsys, *args)
    assert code == 0 and err == "", err
    identity = checkpoints.network_identity(workdir)
    table, stored = runner_lib.read_catalog(str(out / "catalogs" / "a.fits"))
    assert stored == dict(
        identity,
        min_prob=0.5,
        chunk_size=512,
        background=0.7,
        psf=f"psf-params={PSF.replace('3.0', '3')}",
        quality=False,
        electrons_per_nmgy=None,
        npejax_version=npejax.__version__,
    )
    assert (
        identity["network"] == f"workdir {workdir} checkpoint best (epoch 1)" and len(identity["network_sha256"]) == 64
    )
    assert runner_lib.read_catalog(str(out / "catalogs" / "b.fits"))[1]["psf"] == stored["psf"]  # however written

    sample = (np.ones((2, 8, 8)), np.ones((2, 8, 8)), np.tile(PSF_ARRAY, (2, 1)))
    other = write_random_workdir(make_tiny_config(), tmp_path / "other", sample, seed=1)  # another network
    empty = write_random_workdir(make_tiny_config(), tmp_path / "empty", sample)
    shutil.rmtree(os.path.join(empty, "checkpoints", "best"))  # a workdir without the checkpoint asked for
    before = _snapshot(tmp_path)
    code, stdout, err = _survey(capsys, *args, "--min-prob", "0.3")
    assert_one_error(code, stdout, err, f"frame catalog {out / 'catalogs' / 'a.fits'} was made with another network")
    assert "min_prob 0.5 -> 0.3 (and 1 more frame catalogs differ)" in err and "--redo-mismatched" in err, err
    code, stdout, err = _survey(capsys, *[other if a == workdir else a for a in args])
    old, new = identity["network_sha256"], checkpoints.network_identity(other)["network_sha256"]
    assert_one_error(code, stdout, err, f"network {identity['network']} ({old}) -> workdir {other} checkpoint best")
    assert old != new and new in err
    code, stdout, err = _survey(capsys, *[tmp_path / "gone" if a == workdir else a for a in args])
    assert_one_error(code, stdout, err, f"--workdir {tmp_path / 'gone'}: workdir {tmp_path / 'gone'} does not exist")
    code, stdout, err = _survey(capsys, *[empty if a == workdir else a for a in args])
    assert_one_error(code, stdout, err, f"--workdir {empty}: {empty} holds no checkpoint: no checkpoints/best/")
    assert _snapshot(tmp_path) == before, "a refused resume wrote something"

    # damaged catalogs are cataloged again, each named; one without an identity is kept, named
    data = (out / "catalogs" / "a.fits").read_bytes()
    (out / "catalogs" / "a.fits").write_bytes(data[: len(data) // 2])
    table.meta.pop(runner_lib.IDENTITY_KEY)
    table.write(out / "catalogs" / "b.fits", overwrite=True)
    code, stdout, err = _survey(capsys, *args)
    warnings = err.splitlines()
    assert code == 0 and len(warnings) == 2, err
    assert warnings[0].startswith(f"warning: catalog {out / 'catalogs' / 'a.fits'} is truncated or not a catalog (")
    assert warnings[0].endswith("cataloging frame a again"), warnings[0]
    assert (
        warnings[1].startswith("warning: 1 frame catalogs record no network or settings")
        and "kept unverified" in warnings[1]
    )
    assert "1 skipped" in stdout and "1 to catalog (1 again)" in stdout and "1 frames cataloged" in stdout
    assert runner_lib.read_catalog(str(out / "catalogs" / "a.fits"))[1] == stored
    (out / "catalogs" / "a.fits").write_bytes(b"")
    code, stdout, err = _survey(capsys, *args, "--redo-mismatched", "--min-prob", "0.3")
    assert code == 0 and "2 frames cataloged" in stdout, err
    assert err.count("warning:") == 2 and "cataloging them again" in err, err
    assert err.startswith(f"warning: catalog {out / 'catalogs' / 'a.fits'} cannot be read (OSError: "), err
    assert runner_lib.read_catalog(str(out / "catalogs" / "b.fits"))[1]["min_prob"] == 0.3

    # merge: one network per table, recorded in its meta; a mix is refused naming two frames
    code, stdout, err = _survey(capsys, "merge", "--survey", out, "--out", tmp_path / "all.fits")
    assert code == 0 and err == "", err
    merged = catalog.read_table(tmp_path / "all.fits")
    assert json.loads(merged.meta[runner_lib.IDENTITY_KEY]) == dict(
        network=identity["network"],
        network_sha256=identity["network_sha256"],
        decode="group",
        min_prob=0.3,
        quality=False,
    )
    code, stdout, err = _survey(
        capsys, "catalog", *args[1:], "--min-prob", "0.6", "--redo-mismatched", "--shard", "1/2"
    )
    assert code == 0, err
    code, stdout, err = _survey(capsys, "merge", "--survey", out, "--out", tmp_path / "mix.fits")
    assert_one_error(code, stdout, err, "frames a (")
    assert f"and b ({out / 'catalogs' / 'b.fits'}) were cataloged with different networks or settings" in err
    assert "min_prob 0.3 -> 0.6" in err and not (tmp_path / "mix.fits").exists()


def test_csv_catalogs_record_their_identity_beside_them(workdir, tmp_path, capsys):
    """Plain CSV has no metadata: a CSV catalog's identity is out/identity/NAME.json with the CSV's SHA-256; a
    CSV changed since is cataloged again."""
    _write_small(tmp_path / "a.fits", 1)
    (tmp_path / "frames.txt").write_text(f"a.fits background=0.7 psf-params={PSF}\n")
    out = tmp_path / "out"
    args = ["catalog", "--workdir", workdir, "--frames", tmp_path / "frames.txt", "--out", out, "--format", "csv"]
    args.append("--noquality")  # (cost: the tiny network's row per tile)
    assert _survey(capsys, *args)[0] == 0
    assert os.listdir(out / "catalogs") == ["a.csv"] and os.listdir(out / "identity") == ["a.json"]
    assert runner_lib.read_catalog(str(out / "catalogs" / "a.csv"))[1]["network"].startswith(f"workdir {workdir}")
    lines = (out / "catalogs" / "a.csv").read_text().splitlines()
    (out / "catalogs" / "a.csv").write_text("\n".join(lines[:3]) + "\n")  # cut at a row's end: still a table
    code, stdout, err = _survey(capsys, *args)
    assert code == 0 and "1 frames cataloged" in stdout, err
    assert err.startswith(f"warning: catalog {out / 'catalogs' / 'a.csv'} is not the one {out / 'identity' / 'a.json'}")
    assert len((out / "catalogs" / "a.csv").read_text().splitlines()) == len(lines)


@pytest.mark.fast
def test_merge_reads_frame_catalogs_of_earlier_versions(capsys, tmp_path):
    """A survey folder resumed across versions: frame catalogs written before PIXCONV (edge-based FITS with
    FLUXUNIT, a CSV without '#' lines) are converted, one written now is not; the merged table is CENTER0."""
    folder = tmp_path / "survey" / "catalogs"
    folder.mkdir(parents=True)
    rows = dict(image=np.zeros(2, int), x=np.array([10.5, 20.25]), y=np.array([5.5, 7.0]), flux=np.ones(2))
    now = catalog.prediction_table(rows)  # x = 10.0, 19.75: 0-based centres
    catalog.write_table(now, folder / "a.fits")
    old = now.copy()
    old["x"], old["y"] = catalog.array_xy(now)
    del old.meta["PIXCONV"]
    old.write(folder / "b.fits")  # as an earlier npejax wrote it: edge-based, FLUXUNIT only
    old.meta = {}
    old.write(folder / "c.csv", format="ascii.csv")  # an earlier CSV: no '#' lines
    code, _, err = _survey(capsys, "merge", "--survey", tmp_path / "survey", "--out", tmp_path / "all.fits")
    assert code == 0, err
    merged = catalog.read_table(tmp_path / "all.fits")
    assert merged.meta["PIXCONV"] == "CENTER0" and list(merged["frame"]) == ["a", "a", "b", "b", "c", "c"]
    np.testing.assert_array_equal(merged["x"], np.tile(now["x"], 3))
    np.testing.assert_array_equal(merged["y"], np.tile(now["y"], 3))


@pytest.mark.fast
def test_warnings_caught_in_one_reader_thread_are_not_another_threads():
    """The survey's reader threads read FITS files inside ``io.caught_warnings``: a warning raised in one thread
    must not land in the record of another thread that entered later (it blamed frame c for cut's "file may have
    been truncated"). Without the lock, c enters while cut waits and cut's warning goes to c's record."""
    import threading
    import warnings as warnings_lib

    from npejax import io

    cut_inside, c_inside, cut_warned = threading.Event(), threading.Event(), threading.Event()
    records = {}

    def cut():
        with io.caught_warnings("always", record=True) as caught:
            cut_inside.set()
            c_inside.wait(0.5)  # with the lock, c cannot enter meanwhile
            warnings_lib.warn("file may have been truncated", UserWarning, stacklevel=1)
            cut_warned.set()
            records["cut"] = list(caught)

    def c():
        cut_inside.wait(5)
        with io.caught_warnings("always", record=True) as caught:
            c_inside.set()
            cut_warned.wait(0.5)
            records["c"] = list(caught)

    threads = [threading.Thread(target=cut), threading.Thread(target=c)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert records["c"] == [] and [str(w.message) for w in records["cut"]] == ["file may have been truncated"]
