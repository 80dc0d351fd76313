"""What the prediction command accepts and refuses (issue 11): finite network outputs, nonsense values and
bad files refused before any prediction, RA/Dec from a FITS WCS, SDSS frames in, chunked prediction of large
images and streamed datasets, and the PNG of the detections."""

import bz2
import errno
import io as std_io
import os
import struct

import jax
import matplotlib.figure
import matplotlib.image
import numpy as np
import pytest
import test_sdss as sdss_files  # the SDSS data-model fixture writers
from astropy.io import fits
from astropy.wcs import WCS
from conftest import assert_one_error, one_error_line, without_field_warnings

from npejax import catalogs as catalog
from npejax import datasets as data
from npejax import predict
from npejax.cataloging import images
from npejax.nn import predictor, train
from npejax.sim import pipeline
from npejax.surveys import sdss

PSF = "1.2,3.5,1.5,3.0,0.1,0.08"
PSF_ARRAY = np.array([1.2, 3.5, 1.5, 3.0, 0.1, 0.08], np.float32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_config):
    """A tiny network trained 1 epoch, its Predictor, and a cached test set of 5 images in shards of 2."""
    root = tmp_path_factory.mktemp("predict_inputs")
    config = tiny_config()
    config.train.num_epochs = 1
    train.train_and_evaluate(config, str(root / "run"))
    spec = pipeline.SimulationSpec.from_config(config, seed=7, batch_size=5)
    data.write_dataset(spec, root / "test", 5, "test", num_workers=0, shard_size=2, progress=False)
    return root, predictor.Predictor.from_workdir(str(root / "run"))


def _predict(capsys, *args):
    """(exit status, stdout, stderr without the training-fields warnings: conftest.without_field_warnings)."""
    code = predict.main(["npejax.predict", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, without_field_warnings(out.err)


@pytest.fixture
def no_network_run(monkeypatch):
    """Makes any network call fail the test: an error must come before prediction."""

    def refuse(*args, **kwargs):
        raise AssertionError("the network ran before the error was found")

    monkeypatch.setattr(predictor.Predictor, "_run", refuse)


def _noise_image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.normal(0.0, 0.028, (h, w)).astype(np.float32)  # the photon noise of a 0.7 nmgy sky
    yy, xx = np.mgrid[:h, :w]
    for y, x in rng.uniform(0, 1, (12, 2)) * (h, w):  # a dozen bright round sources
        image += (3.0 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.5**2))).astype(np.float32)
    return image


def _tan_header(crpix=(30.5, 40.5), crval=(150.1, 2.2)):
    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRPIX1"], h["CRPIX2"] = crpix
    h["CRVAL1"], h["CRVAL2"] = crval
    h["CD1_1"], h["CD1_2"], h["CD2_1"], h["CD2_2"] = -1.1e-4, 1.5e-6, 2.0e-6, 1.1e-4  # 0.396"/pixel, rotated
    h["RADESYS"] = "ICRS"
    return h


# --- item 2: non-finite network outputs -------------------------------------------------------------


def test_nan_weights_give_one_error_naming_the_image(trained):
    root, net = trained
    broken = predictor.Predictor(
        net.config, jax.tree.map(lambda v: v * np.nan, net.variables), net.normalizer, source="checkpoint X"
    )
    image = _noise_image(40, 40)
    with pytest.raises(predictor.NonFiniteOutputError, match=r"output for image 0 is not finite .*checkpoint X"):
        broken.catalog(image, 0.7, PSF_ARRAY)


def test_non_finite_output_in_one_image_stops_the_command(trained, capsys, monkeypatch):
    """Image 3 of 5 (batches of 2) gets an infinite flux: exit 2 naming image 3, no catalog written."""
    root, _ = trained
    load = predictor.Predictor.from_workdir

    def corrupt(workdir, which="best"):
        net = load(workdir, which)
        forward, seen = net._forward, [0]

        def bad_forward(variables, images, background, psf_params, origin):
            out = dict(forward(variables, images, background, psf_params, origin))
            if seen[0] <= 3 < seen[0] + len(images):
                out["tile_flux"] = out["tile_flux"].at[3 - seen[0], 1, 2].set(np.inf)
            seen[0] += len(images)
            return out

        net._forward = bad_forward
        return net

    monkeypatch.setattr(predictor.Predictor, "from_workdir", staticmethod(corrupt))
    out = root / "nan.fits"
    code, stdout, err = _predict(
        capsys, "--workdir", root / "run", "--input", root / "test", "--out", out, "--batch-size", "2"
    )
    assert_one_error(code, stdout, err, "output for image 3 is not finite (tile_flux = inf at tile row 1, column 2)")
    assert not out.exists()


# --- item 4: nonsense values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--background", "0"], "--background 0: expected a sky level in nmgy per pixel, > 0 and <= 10000"),
        (["--background", "-0.5"], "--background -0.5: expected a sky level"),
        (["--background", "1e30"], "--background 1e30: expected a sky level"),
        (["--background", "nan"], "--background nan: expected a sky level"),
        (["--background", "sky.fits"], "--background 'sky.fits': expected a number (nmgy per pixel) or an existing"),
        (["--background", "0.7", "--min-prob", "nan"], "--min-prob nan: expected a probability in [0, 1)"),
        (["--background", "0.7", "--min-prob", "1"], "--min-prob 1.0: expected a probability in [0, 1)"),
        (["--background", "0.7", "--min-prob=-0.1"], "--min-prob -0.1: expected a probability in [0, 1)"),
        (["--background", "0.7", "--batch-size", "0"], "--batch-size=0: 0 is not a positive integer"),
        (["--background", "0.7", "--batch-size=-1"], "--batch-size=-1: -1 is not a positive integer"),
        (["--background", "0.7", "--psf-params", "1,2,3"], "psf_params '1,2,3': expected six comma-separated numbers"),
    ],
)
def test_nonsense_values_refused_before_any_work(trained, capsys, monkeypatch, flags, fragment):
    root, _ = trained
    fits.PrimaryHDU(_noise_image(40, 40)).writeto(root / "small.fits", overwrite=True)

    def refuse(*args, **kwargs):
        raise AssertionError("the network was loaded before the error was found")

    monkeypatch.setattr(predictor.Predictor, "from_workdir", refuse)
    psf = [] if "--psf-params" in flags else ["--psf-params", PSF]
    out = root / "nonsense.fits"
    code, stdout, err = _predict(
        capsys, "--workdir", root / "run", "--input", root / "small.fits", "--out", out, *psf, *flags
    )
    assert_one_error(code, stdout, err, fragment)
    assert not out.exists()


def test_nonsense_arrays_and_library_values(trained, capsys, no_network_run):
    root, net = trained
    images = np.stack([_noise_image(40, 40, s) for s in range(3)])
    background = np.full_like(images, 0.7)
    background[2, 5, 7] = 2e4  # counts, not nmgy
    np.savez(root / "bright.npz", images=images, background=background, psf_params=np.tile(PSF_ARRAY, (3, 1)))
    code, stdout, err = _predict(
        capsys, "--workdir", root / "run", "--input", root / "bright.npz", "--out", root / "bright.fits"
    )
    assert_one_error(code, stdout, err, "background 20000 at image 2, row 5, column 7: expected a sky level")
    with pytest.raises(ValueError, match=r"background 0 at image 0, row 0, column 0"):
        net.catalog(images, 0.0, PSF_ARRAY)
    with pytest.raises(ValueError, match=r"min_prob nan: expected a probability in \[0, 1\)"):
        net.catalog(images, 0.7, PSF_ARRAY, min_prob=float("nan"))
    with pytest.raises(ValueError, match="batch_size 0"):
        net.predict_tiles(images, 0.7, PSF_ARRAY, batch_size=0)
    code, stdout, err = _predict(
        capsys, "--workdir", root / "run", "--input", root / "test", "--out", root / "c.fits", "--chunk-size", "8"
    )
    assert_one_error(code, stdout, err, "--chunk-size 8: expected 0 (whole images) or at least")
    assert not (root / "bright.fits").exists() and not (root / "c.fits").exists()


# --- item 7: bad files and outputs found before predicting --------------------------------------------


def _truncate(src, dst, keep):
    data = open(src, "rb").read()
    with open(dst, "wb") as f:
        f.write(data[: keep if keep > 0 else len(data) + keep])


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("truncated_fits", "is not a readable FITS file (truncated or corrupt?)"),
        ("fits_cut_in_data", "truncated"),
        ("truncated_npz", "is not a readable .npz (truncated or corrupt?): BadZipFile"),
        ("out_under_a_file", "is a file, so no directory can be made under it"),
        ("out_is_a_directory", "is a directory; give a file name"),
        ("out_in_proc", "cannot write in /proc"),
        ("png_under_a_file", "--png"),
        ("png_extension", "--png"),
        ("input_and_frame", "give one of --input"),
        ("background_with_npz", "background: only for a FITS image input"),
    ],
)
def test_bad_files_and_outputs_refused_before_predicting(trained, capsys, no_network_run, case, fragment):
    root, _ = trained
    d = root / case
    d.mkdir(exist_ok=True)
    fits.PrimaryHDU(_noise_image(80, 80)).writeto(d / "good.fits", overwrite=True)
    np.savez(
        d / "good.npz",
        images=_noise_image(40, 40)[None],
        background=np.full((1, 40, 40), 0.7, np.float32),
        psf_params=PSF_ARRAY[None],
    )
    (d / "afile").write_text("not a directory\n")
    out = d / "cat.fits"
    fits_args = ["--background", "0.7", "--psf-params", PSF]
    if case == "truncated_fits":
        _truncate(d / "good.fits", d / "bad.fits", 4000)
        args = ["--input", d / "bad.fits", "--out", out, *fits_args]
    elif case == "fits_cut_in_data":
        _truncate(d / "good.fits", d / "bad.fits", -2000)
        args = ["--input", d / "bad.fits", "--out", out, *fits_args]
    elif case == "truncated_npz":
        _truncate(d / "good.npz", d / "bad.npz", 3000)
        args = ["--input", d / "bad.npz", "--out", out]
    elif case == "out_under_a_file":
        out = d / "afile" / "cat.fits"
        args = ["--input", d / "good.npz", "--out", out]
    elif case == "out_is_a_directory":
        out = d / "adir.fits"
        out.mkdir()
        args = ["--input", d / "good.npz", "--out", out]
    elif case == "out_in_proc":
        if not os.path.isdir("/proc/self"):
            pytest.skip("no /proc")
        out = "/proc/npejax-test/cat.fits"
        args = ["--input", d / "good.npz", "--out", out]
    elif case == "png_under_a_file":
        args = ["--input", d / "good.npz", "--out", out, "--png", d / "afile" / "x.png"]
    elif case == "png_extension":
        args = ["--input", d / "good.npz", "--out", out, "--png", d / "x.jpg"]
    elif case == "input_and_frame":
        args = ["--input", d / "good.npz", "--sdss-frame", d / "good.fits", "--out", out]
    else:
        args = ["--input", d / "good.npz", "--out", out, "--background", "0.7"]
    code, stdout, err = _predict(capsys, "--workdir", root / "run", *args)
    assert_one_error(code, stdout, err, fragment)
    assert not os.path.exists(out) or os.path.isdir(out)
    assert {p.name for p in d.iterdir()} <= {"good.fits", "good.npz", "afile", "bad.fits", "bad.npz", "adir.fits"}


def test_missing_output_directory_is_created(trained, capsys):
    root, net = trained
    image = _noise_image(40, 40)
    np.savez(
        root / "one.npz",
        images=image[None],
        background=np.full((1, 40, 40), 0.7, np.float32),
        psf_params=PSF_ARRAY[None],
    )
    out = root / "new" / "deeper" / "cat.csv"
    code, _, err = _predict(
        capsys, "--workdir", root / "run", "--input", root / "one.npz", "--out", out, "--min-prob", "0"
    )
    assert code == 0, err
    assert len(catalog.read_table(out)) == len(net.catalog(image, 0.7, PSF_ARRAY, min_prob=0.0)) == 100


# --- item 10: RA/Dec from a FITS WCS ---------------------------------------------------------------


@pytest.mark.fast
def test_pixel_convention_of_sky_coordinates():
    """Array x = 0.5 (pixels from the edge) is the centre of pixel 0: table x = 0.0, astropy's 0-based pixel,
    FITS pixel 1 (CRPIX = 1 -> CRVAL)."""
    table = catalog.prediction_table(
        dict(image=np.zeros(3, int), x=np.array([0.5, 1.5, 0.0]), y=np.array([0.5, 0.5, 0.0]), flux=np.ones(3))
    )
    wcs = WCS(_tan_header(crpix=(1.0, 1.0)))
    catalog.add_sky_coordinates(table, wcs)
    assert table["ra"][0] == pytest.approx(150.1, abs=1e-12) and table["dec"][0] == pytest.approx(2.2, abs=1e-12)
    step = np.hypot(table["ra"][1] - table["ra"][0], table["dec"][1] - table["dec"][0]) * 3600
    assert step == pytest.approx(0.396, abs=0.01)  # one pixel to the right
    corner = wcs.pixel_to_world(-0.5, -0.5)  # the image's outer corner, x = y = 0
    assert table["ra"][2] == pytest.approx(corner.ra.deg, abs=1e-12)
    assert list(table["x"]) == [0.0, 1.0, -0.5] and list(table["y"]) == [0.0, 0.0, -0.5]
    sky = wcs.pixel_to_world(np.asarray(table["x"]), np.asarray(table["y"]))  # astropy's convention, as it is
    np.testing.assert_allclose(table["ra"], sky.ra.deg, rtol=0, atol=1e-12)


def test_fits_with_wcs_gives_ra_dec_and_keeps_the_wcs(trained, capsys):
    root, _ = trained
    image = _noise_image(77, 75)
    header = _tan_header()
    fits.PrimaryHDU(image, header=header).writeto(root / "sky.fits", overwrite=True)
    fits.PrimaryHDU(image).writeto(root / "nowcs.fits", overwrite=True)
    code, _, err = _predict(
        capsys,
        "--workdir",
        root / "run",
        "--input",
        root / "sky.fits",
        "--out",
        root / "sky_cat.fits",
        "--background",
        "0.7",
        "--psf-params",
        PSF,
        "--min-prob",
        "0",
    )
    assert code == 0, err
    got = catalog.read_table(root / "sky_cat.fits")
    assert len(got) > 300 and str(got["ra"].unit) == "deg"
    expected = WCS(header).pixel_to_world(np.asarray(got["x"], float), np.asarray(got["y"], float))
    np.testing.assert_allclose(got["ra"], expected.ra.deg, rtol=0, atol=1e-9)
    np.testing.assert_allclose(got["dec"], expected.dec.deg, rtol=0, atol=1e-9)
    kept = WCS(fits.getheader(root / "sky_cat.fits", 1))  # the catalog's header holds the image's WCS
    again = kept.pixel_to_world(np.asarray(got["x"], float), np.asarray(got["y"], float))
    np.testing.assert_allclose(again.ra.deg, expected.ra.deg, atol=1e-9)
    code, _, err = _predict(
        capsys,
        "--workdir",
        root / "run",
        "--input",
        root / "nowcs.fits",
        "--out",
        root / "nowcs.csv",
        "--background",
        "0.7",
        "--psf-params",
        PSF,
    )
    assert code == 0, err
    assert "ra" not in catalog.read_table(root / "nowcs.csv").colnames


# --- item 11: SDSS frames ---------------------------------------------------------------------------


def _write_frame(path, key=(94, 1, 12), header=None):
    spec = sdss_files.FIELDS[key]
    data, calibvec = sdss_files.frame_bytes(spec["sky"], spec["calib"])
    with fits.open(std_io.BytesIO(data)) as hdul:
        if header is not None:
            hdul[0].header.update(header)
        buf = std_io.BytesIO()
        hdul.writeto(buf)
    data = buf.getvalue()
    with open(path, "wb") as f:
        f.write(bz2.compress(data) if str(path).endswith(".bz2") else data)
    return calibvec


def test_sdss_frame_in(trained, capsys, monkeypatch):
    root, net = trained
    seen = []
    run = predictor.Predictor._run

    def spy(self, images, background, psf_params, *args):
        seen.append((images, background, psf_params))
        return run(self, images, background, psf_params, *args)

    monkeypatch.setattr(predictor.Predictor, "_run", spy)
    d = root / "sdss"
    d.mkdir()
    key = (94, 1, 12)
    frame, psfield = d / sdss.frame_name(*key), d / sdss.psfield_name(*key)  # .fits.bz2, as the archive serves
    calibvec = _write_frame(frame, key, _tan_header())
    sdss_files.write_psfield(psfield, sdss_files.FIELDS[key]["psf"])
    out = d / "cat.fits"
    code, stdout, err = _predict(
        capsys, "--workdir", root / "run", "--sdss-frame", frame, "--psfield", psfield, "--out", out, "--min-prob", "0"
    )
    assert code == 0, err
    assert stdout.startswith("300 sources in 1 images")  # 60 x 80 pixels: 15 x 20 tiles
    got = catalog.read_table(out)
    # what the command must have used: HDU 0 (nmgy), sky in DN x calibvec, the r-band psField parameters
    image = fits.getdata(frame, 0)
    sky_dn, _ = sdss.read_frame(frame)
    np.testing.assert_allclose(sky_dn, sdss_files.expected_sky_dn(sdss_files.FIELDS[key]["sky"]), atol=1e-3)
    background = sky_dn * calibvec[None, :]
    assert 0.6 < background.mean() < 0.9  # ~150 DN x 0.005 nmgy/DN
    psf = np.array(sdss_files.FIELDS[key]["psf"], np.float32)
    assert len(seen) == 1
    np.testing.assert_array_equal(seen[0][0], image[None])
    np.testing.assert_allclose(seen[0][1], background[None], rtol=1e-6)
    np.testing.assert_allclose(
        seen[0][1][0], sdss_files.expected_sky_dn(sdss_files.FIELDS[key]["sky"]) * calibvec, rtol=1e-5
    )
    np.testing.assert_array_equal(seen[0][2], psf[None])  # the r-band column of psField HDU 6
    monkeypatch.undo()
    expected = net.catalog(image, background, psf, min_prob=0.0)
    for name in expected.colnames:
        np.testing.assert_allclose(
            np.asarray(got[name], float), np.asarray(expected[name], float), rtol=1e-5, atol=1e-5, err_msg=name
        )
    sky = WCS(_tan_header()).pixel_to_world(np.asarray(got["x"], float), np.asarray(got["y"], float))
    np.testing.assert_allclose(got["ra"], sky.ra.deg, atol=1e-9)


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("g_band", "is a g-band frame (FILTER); the network catalogs r-band images"),
        ("other_field", "is field 94-1-13 but --sdss-frame"),
        ("no_psfield", "--sdss-frame needs --psfield"),
        ("with_background", "--background: an SDSS frame brings its own background"),
        ("truncated", "truncated"),
        ("missing", "does not exist"),
    ],
)
def test_sdss_frame_refusals(trained, capsys, no_network_run, case, fragment):
    root, _ = trained
    d = root / f"sdss_{case}"
    d.mkdir()
    key = (94, 1, 12)
    frame, psfield = d / sdss.frame_name(*key), d / sdss.psfield_name(*key)
    _write_frame(frame, key, {"FILTER": "g"} if case == "g_band" else None)
    sdss_files.write_psfield(psfield, sdss_files.FIELDS[key]["psf"])
    extra = []
    if case == "other_field":
        psfield = d / sdss.psfield_name(94, 1, 13)
        sdss_files.write_psfield(psfield, sdss_files.FIELDS[(94, 1, 13)]["psf"])
    elif case == "with_background":
        extra = ["--background", "0.7"]
    elif case == "truncated":
        _write_frame(d / "whole.fits", key)
        frame = d / "frame-r-000094-1-0012.fits"  # uncompressed, cut in the sky table
        _truncate(d / "whole.fits", frame, -500)
    elif case == "missing":
        frame = d / "frame-r-000094-1-0099.fits"
    args = ["--sdss-frame", frame, "--out", d / "cat.fits", *extra]
    if case != "no_psfield":
        args += ["--psfield", psfield]
    code, stdout, err = _predict(capsys, "--workdir", root / "run", *args)
    assert_one_error(code, stdout, err, fragment)
    assert not (d / "cat.fits").exists()


# --- item 13: bounded memory --------------------------------------------------------------------------


@pytest.mark.fast
def test_chunk_plan_covers_each_tile_once_with_its_margin():
    for n, chunk, margin in [(75, 16, 2), (16, 16, 2), (17, 16, 2), (128, 20, 5), (373, 128, 12)]:
        plan = predictor._chunk_plan(n, chunk, margin)
        cores = np.concatenate([np.arange(a, b) for a, b, _ in plan])
        np.testing.assert_array_equal(cores, np.arange(n))
        for a, b, s in plan:
            size = min(chunk, n)
            assert 0 <= s and s + size <= n
            assert a - s >= margin or s == 0
            assert s + size - b >= margin or s + size == n


def test_chunked_prediction_equals_whole_image(trained, network_call_shapes):
    _, trained_net = trained
    # random weights: outputs that vary from tile to tile, so that a misplaced piece would show
    leaves, tree = jax.tree.flatten(trained_net.variables["params"])
    keys = jax.random.split(jax.random.key(0), len(leaves))
    params = jax.tree.unflatten(tree, [v + 0.5 * jax.random.normal(k, v.shape) for v, k in zip(leaves, keys)])
    net = predictor.Predictor(trained_net.config, dict(trained_net.variables, params=params), trained_net.normalizer)
    image = _noise_image(300, 260, seed=3)
    background = np.linspace(0.5, 0.9, 260, dtype=np.float32)[None, :].repeat(300, 0)
    whole = net.predict_tiles(image, background, PSF_ARRAY, chunk_size=None)
    for key in ("prob_source", "tile_locs", "tile_flux"):  # a tile's value is far from its neighbours'
        ratio = np.abs(np.diff(whole[key], axis=2)).mean() / np.abs(whole[key]).mean()
        assert ratio > 0.05, (key, ratio)
    shapes = network_call_shapes
    shapes.clear()  # the whole-image call above
    chunked = net.predict_tiles(image, background, PSF_ARRAY, chunk_size=64)
    assert len(shapes) > 20 and set(shapes) == {(1, 64, 64)}  # bounded pieces, one compiled shape
    assert whole.keys() == chunked.keys()
    for key in whole:
        assert whole[key].shape == chunked[key].shape == (1, 75, 65) + whole[key].shape[3:]
        if whole[key].dtype == bool:
            assert np.mean(whole[key] == chunked[key]) > 0.999, key  # a logit at 0 may flip
        else:
            np.testing.assert_allclose(chunked[key], whole[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_dataset_is_streamed_batch_by_batch(trained, capsys, monkeypatch):
    root, net = trained
    reads = []
    getitem = data.Dataset.__getitem__

    def spy(self, index):
        reads.append(index)
        return getitem(self, index)

    monkeypatch.setattr(data.Dataset, "__getitem__", spy)
    inputs = images.open_inputs(str(root / "test"))
    assert reads == []  # opening reads no image
    table = images.catalog_inputs(net, inputs, min_prob=0.0, batch_size=2)
    assert reads == [slice(0, 2), slice(2, 4), slice(4, 5)]
    monkeypatch.undo()
    whole = data.load(root / "test")[np.arange(5)]
    expected = net.catalog(whole["images"], whole["background"], whole["psf_params"], min_prob=0.0)
    assert len(table) == len(expected) == 5 * 400
    for name in expected.colnames:
        np.testing.assert_allclose(
            np.asarray(table[name], float), np.asarray(expected[name], float), rtol=1e-5, atol=1e-6, err_msg=name
        )


# --- item 14: the PNG ---------------------------------------------------------------------------------


@pytest.mark.fast
def test_png_of_the_detections(trained, capsys):
    root, _ = trained
    fits.PrimaryHDU(_noise_image(77, 75), header=_tan_header()).writeto(root / "png.fits", overwrite=True)
    d = root / "pictures"
    code, stdout, err = _predict(
        capsys,
        "--workdir",
        root / "run",
        "--input",
        root / "png.fits",
        "--out",
        d / "cat.fits",
        "--background",
        "0.7",
        "--psf-params",
        PSF,
        "--min-prob",
        "0",
        "--png",
        d / "cat.png",
    )
    assert code == 0, err
    with open(d / "cat.png", "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    zoom = -(-512 // 77)  # the longer side at least 512 pixels
    assert struct.unpack(">II", head[16:24]) == (75 * zoom, 77 * zoom)
    assert f"({75 * zoom} x {77 * zoom} pixels) -> {d / 'cat.png'}" in stdout
    pixels = matplotlib.image.imread(d / "cat.png")
    assert pixels.shape[:2] == (77 * zoom, 75 * zoom) and pixels[..., :3].std() > 0.05
    assert sorted(p.name for p in d.iterdir()) == ["cat.fits", "cat.png"]  # atomic: no temporary left
    n = len(catalog.read_table(d / "cat.fits"))
    assert 0 < n and f"image 0 with {n} detections" in stdout


# --- issue 21: masked pixels, useful chunk sizes, a full disk ----------------------------------------------


def test_nan_pixels_are_masked_and_detections_near_them_flagged(trained, capsys):
    root, net = trained
    image = _noise_image(96, 96, seed=4)
    holed = image.copy()
    holed[40:56, 40:56] = np.nan  # a 16 x 16 block
    holed[41, 41] = np.inf
    clean = net.catalog(image, 0.7, PSF_ARRAY, min_prob=0.0)
    assert capsys.readouterr().err == "" and np.all(clean["masked_frac"] == 0)
    masked = net.catalog(holed, 0.7, PSF_ARRAY, min_prob=0.0)
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "warning: image 0: 256 NaN or infinite pixels (2.78%) masked (set to 0); detections within 6 pixels of "
        "them have masked_frac > 0"
    ]
    reach = (net.margin + 1) * net.tile_size  # the network's receptive field, and a split source's neighbour tile

    def distance(t):  # pixels from the block, per row
        dx = np.maximum(np.maximum(40 - np.asarray(t["x"]), np.asarray(t["x"]) - 56), 0)
        dy = np.maximum(np.maximum(40 - np.asarray(t["y"]), np.asarray(t["y"]) - 56), 0)
        return np.hypot(dx, dy)

    far_clean, far_masked = clean[distance(clean) > reach + 2], masked[distance(masked) > reach + 2]
    assert len(far_masked) > 100 and len(far_masked) == len(far_clean)
    for name in clean.colnames:  # away from the block: the same detections
        np.testing.assert_allclose(
            np.asarray(far_masked[name], float), np.asarray(far_clean[name], float), rtol=1e-5, atol=1e-6, err_msg=name
        )
    frac = np.asarray(masked["masked_frac"])
    col, row = np.floor(np.asarray(masked["x"])), np.floor(np.asarray(masked["y"]))
    near = (np.abs(col - 47.5) <= 6 + 7.5) & (np.abs(row - 47.5) <= 6 + 7.5)  # the 13 x 13 box meets the block
    assert near.sum() > 10 and np.all((frac > 0) == near)  # flagged near the block, 0 away from it
    assert np.all(frac[distance(masked) == 0] > 0.25)  # on the block: at least a corner's 7 x 7 of 13 x 13
    # the command: a FITS image with the block is cataloged, one warning line, the column in the file
    fits.PrimaryHDU(holed).writeto(root / "holed.fits", overwrite=True)
    out = root / "masked" / "holed.fits"
    code, stdout, err = _predict(
        capsys, "--workdir", root / "run", "--input", root / "holed.fits", "--background", "0.7", "--psf-params", PSF,
        "--min-prob", "0", "--out", out, "--noquality",  # (the tiny network's catalog: the flag would warn too)
    )  # fmt: skip
    assert code == 0 and err.startswith("warning: image 0: 256 NaN or infinite pixels") and err.count("\n") == 1, err
    written = catalog.read_table(out)
    np.testing.assert_allclose(np.asarray(written["masked_frac"]), frac, atol=1e-6)
    assert "masked" in written["masked_frac"].description
    with pytest.raises(ValueError, match=r"NaN or infinite pixels \(first at image 0, row 40, column 40\)"):
        # the dataset/evaluation path (tiles, not a catalog) still refuses NaN
        net.predict_tiles(holed, 0.7, PSF_ARRAY)


def test_a_mostly_masked_image_is_refused_and_a_background_is_never_masked(trained, capsys, no_network_run):
    root, net = trained
    image = _noise_image(80, 80)
    image[:42] = np.nan  # 52.5% of the pixels
    with pytest.raises(ValueError, match=r"image 0: 3360 of its 6400 pixels \(52.5%\) are NaN or infinite"):
        net.catalog(image, 0.7, PSF_ARRAY)
    fits.PrimaryHDU(image).writeto(root / "mostly.fits", overwrite=True)
    code, stdout, err = _predict(
        capsys, "--workdir", root / "run", "--input", root / "mostly.fits", "--background", "0.7", "--psf-params",
        PSF, "--out", root / "mostly-cat.fits",
    )  # fmt: skip
    assert_one_error(code, stdout, err, f"{root / 'mostly.fits'}: image 0: 3360 of its 6400 pixels (52.5%)")
    sky = np.full((80, 80), 0.7, np.float32)
    sky[3, 5] = np.nan
    fits.PrimaryHDU(_noise_image(80, 80)).writeto(root / "fine.fits", overwrite=True)
    fits.PrimaryHDU(sky).writeto(root / "nan-sky.fits", overwrite=True)
    code, stdout, err = _predict(
        capsys, "--workdir", root / "run", "--input", root / "fine.fits", "--background", root / "nan-sky.fits",
        "--psf-params", PSF, "--out", root / "sky-cat.fits",
    )  # fmt: skip
    assert_one_error(code, stdout, err, "background nan at image 0, row 3, column 5: expected a sky level")
    assert not (root / "mostly-cat.fits").exists() and not (root / "sky-cat.fits").exists()


def test_chunk_sizes_that_only_multiply_network_calls_are_refused(trained, capsys):
    root, net = trained
    least, useful = (2 * net.margin + 1) * net.tile_size, net.useful_chunk_size()
    assert useful >= 2 * (useful - 2 * net.margin * net.tile_size)  # half of a useful chunk's side is output
    assert net.check_chunk_size(least) == least // net.tile_size  # the library still takes any working chunk
    with pytest.raises(ValueError, match=f"at least {useful} pixels"):
        net.check_chunk_size(useful - net.tile_size, useful=True)
    assert net.check_chunk_size(useful, useful=True) == useful // net.tile_size
    assert net.network_calls(1000, 1000, least) == 250**2  # one tile of output per chunk
    code, stdout, err = _predict(
        capsys, "--workdir", root / "run", "--input", root / "test", "--out", root / "c.fits", "--chunk-size", least
    )
    calls = net.network_calls(1000, 1000, least)
    assert_one_error(code, stdout, err, f"--chunk-size {least}: expected 0 (whole images) or at least {useful} pixels")
    assert f"{calls:,} network calls for a 1000 x 1000 image" in err and not (root / "c.fits").exists()


def test_a_full_disk_is_one_error_line_and_no_partial_file(trained, capsys, monkeypatch):
    root, _ = trained
    fits.PrimaryHDU(_noise_image(80, 80)).writeto(root / "disk.fits", overwrite=True)
    out = root / "full"
    out.mkdir()

    def disk_full(self, path, *args, **kwargs):
        with open(path, "wb") as f:  # part of the file, then the disk is full
            f.write(b"SIMPLE  =                    T")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(catalog.table_lib.Table, "write", disk_full)
    args = ["--workdir", root / "run", "--input", root / "disk.fits", "--background", "0.7", "--psf-params", PSF]
    args.append("--noquality")  # the tiny network finds none of the image's sources: the flag would warn
    code, stdout, err = _predict(capsys, *args, "--out", out / "cat.fits")
    assert_one_error(
        code, stdout, err, f"--out {out / 'cat.fits'}: cannot write it: [Errno 28] No space left on device"
    )
    assert os.listdir(out) == []  # no partial file, no temporary
    monkeypatch.undo()  # Table.write back (a descriptor: set back by undo, not by assignment)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, fname, **kw: disk_full(self, fname))
    code, stdout, err = _predict(capsys, *args, "--out", out / "cat.fits", "--png", out / "cat.png")
    assert code == 2 and one_error_line(err).endswith(
        f"--png {out / 'cat.png'}: cannot write it: [Errno 28] No space left on device; nothing was written there"
    )
    assert sorted(os.listdir(out)) == ["cat.fits"]  # the catalog, written before; no PNG, no temporary
