"""What a new user meets first (issue 21): ``Predictor.catalog(..., wcs=...)`` equal to the FITS path of the
command, ``--overwrite`` for the commands' output files, and ``--field-id`` given as the index that datasets
and truth catalogs store. The shipped ``cpu`` network stands in for a trained one (no training here)."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from conftest import assert_one_error

from npejax import catalogs as catalog
from npejax import predict, simulate, survey
from npejax.nn import predictor
from npejax.sim import fields

pytestmark = pytest.mark.fast  # the whole file: a few seconds each, no training

PSF = "1.2,3.5,1.5,3.0,0.1,0.08"
PSF_ARRAY = np.array([1.2, 3.5, 1.5, 3.0, 0.1, 0.08], np.float32)


def _run(capsys, main, *args):
    code = main(["npejax", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def _image(h=48, w=44, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.normal(0.0, 0.028, (h, w)).astype(np.float32)  # the photon noise of the 0.7 nmgy sky the tests give
    yy, xx = np.mgrid[:h, :w]
    for y, x in rng.uniform(0, 1, (6, 2)) * (h, w):  # a few bright round sources
        image += (3.0 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.5**2))).astype(np.float32)
    return image


def _tan_header():
    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRPIX1"], h["CRPIX2"], h["CRVAL1"], h["CRVAL2"] = 20.5, 25.5, 150.1, 2.2
    h["CD1_1"], h["CD1_2"], h["CD2_1"], h["CD2_2"] = -1.1e-4, 1.5e-6, 2.0e-6, 1.1e-4  # 0.396"/pixel, rotated
    h["RADESYS"] = "ICRS"
    return h


@pytest.fixture(scope="module")
def net():
    return predictor.Predictor.pretrained("cpu")


# --- Predictor.catalog(..., wcs=...) ----------------------------------------------------------------


def test_catalog_with_wcs_equals_the_fits_input_of_the_command(net, capsys, tmp_path):
    image, header = _image(), _tan_header()
    fits.PrimaryHDU(image, header=header).writeto(tmp_path / "sky.fits")
    args = ["--pretrained", "cpu", "--input", tmp_path / "sky.fits", "--background", "0.7", "--psf-params", PSF]
    code, _, err = _run(capsys, predict.main, *args, "--min-prob", "0", "--out", tmp_path / "cat.fits")
    assert code == 0, err
    command = catalog.read_table(tmp_path / "cat.fits")
    table = net.catalog(image, 0.7, PSF_ARRAY, min_prob=0.0, wcs=WCS(header).celestial)
    assert len(table) == len(command) > 50 and str(table["ra"].unit) == "deg"
    for key in ("x", "y", "ra", "dec"):
        np.testing.assert_array_equal(np.asarray(table[key]), np.asarray(command[key]), err_msg=key)
    assert table.meta["CTYPE1"] == command.meta["CTYPE1"] == "RA---TAN"
    assert table.meta["CRVAL1"] == pytest.approx(150.1)
    assert "ra" not in net.catalog(image, 0.7, PSF_ARRAY).colnames  # no wcs, no sky coordinates


def test_catalog_refuses_a_wcs_without_pixel_to_world_before_the_network_runs(net, monkeypatch):
    monkeypatch.setattr(predictor.Predictor, "_run", lambda *a, **k: pytest.fail("the network ran"))
    with pytest.raises(TypeError, match="wcs Header: expected a celestial WCS with pixel_to_world"):
        net.catalog(_image(), 0.7, PSF_ARRAY, wcs=_tan_header())


# --- --overwrite -------------------------------------------------------------------------------------


def test_predict_refuses_an_existing_out_or_png_unless_overwrite(capsys, tmp_path):
    fits.PrimaryHDU(_image()).writeto(tmp_path / "image.fits")
    args = ["--pretrained", "cpu", "--input", tmp_path / "image.fits", "--background", "0.7", "--psf-params", PSF]
    out, png = tmp_path / "cat.csv", tmp_path / "cat.png"
    out.write_text("old\n")
    code, stdout, err = _run(capsys, predict.main, *args, "--out", out)
    assert_one_error(code, stdout, err, f"--out {out} exists; give --overwrite to replace it")
    assert out.read_text() == "old\n"
    png.write_bytes(b"old")
    code, stdout, err = _run(capsys, predict.main, *args, "--out", tmp_path / "new.csv", "--png", png)
    assert_one_error(code, stdout, err, f"--png {png} exists; give --overwrite to replace it")
    assert not (tmp_path / "new.csv").exists()
    code, stdout, err = _run(capsys, predict.main, *args, "--out", out, "--png", png, "--overwrite")
    assert code == 0, err
    assert catalog.read_table(out).colnames[:3] == ["image", "x", "y"] and png.read_bytes()[:4] == b"\x89PNG"


def test_survey_merge_refuses_an_existing_table_unless_overwrite(capsys, tmp_path):
    (tmp_path / "out" / "catalogs").mkdir(parents=True)
    rows = dict(image=np.zeros(2, int), x=np.array([1.5, 9.0]), y=np.array([2.5, 3.0]), flux=np.ones(2))
    catalog.write_table(catalog.prediction_table(rows), tmp_path / "out" / "catalogs" / "f1.fits")
    table = tmp_path / "all.csv"
    table.write_text("old\n")
    args = ["merge", "--survey", tmp_path / "out", "--out", table]
    code, stdout, err = _run(capsys, survey.main, *args)
    assert_one_error(code, stdout, err, f"--out {table} exists; give --overwrite to replace it")
    assert table.read_text() == "old\n"
    code, _, err = _run(capsys, survey.main, *args, "--overwrite")
    assert code == 0, err
    assert list(catalog.read_table(table)["frame"]) == ["f1", "f1"]


def test_simulate_fits_refuses_existing_files_unless_overwrite(capsys, tmp_path, config_path):
    image, sky = tmp_path / "image.fits", tmp_path / "image-sky.fits"
    args = ["--config", config_path("cpu_small"), "--split", "test", "--num-images", "1", "--num-workers", "0"]
    args += ["--noprogress", "--fits", image]
    for existing in (image, sky):  # the image, or the sky beside it
        existing.write_bytes(b"old")
        code, stdout, err = _run(capsys, simulate.main, *args, "--out", tmp_path / "data")
        assert_one_error(code, stdout, err, f"--fits {existing} exists; give --overwrite to replace it")
        assert not (tmp_path / "data").exists()
        existing.unlink()
    image.write_bytes(b"old")
    sky.write_bytes(b"old")
    code, _, err = _run(capsys, simulate.main, *args, "--out", tmp_path / "data", "--overwrite")
    assert code == 0, err
    assert fits.getdata(image).shape == fits.getdata(sky).shape == (80, 80)


# --- --field-id: a name or the index that datasets store ---------------------------------------------


def test_field_index_accepts_names_and_the_stored_indices():
    bank = fields.load_bank(None)
    assert len(bank) == 500 and bank.names[493] == "synthetic-0493"
    assert bank.index("synthetic-0493") == bank.index("493") == bank.index(493) == bank.index(np.int64(493)) == 493
    assert bank.index(" 7") == bank.index("0007") == 7
    for bad in (500, "500", -1):
        with pytest.raises(
            KeyError, match=f"field index {int(bad)} outside field bank .* it holds 500 fields, 0 to 499"
        ):
            bank.index(bad)
    with pytest.raises(KeyError, match="unknown field id 'nope' in field bank"):
        bank.index("nope")
    with pytest.raises(KeyError, match="unknown field id '-1' in field bank"):
        bank.index("-1")


def test_predict_field_id_as_the_dataset_index(capsys, tmp_path):
    fits.PrimaryHDU(_image()).writeto(tmp_path / "image.fits")
    args = ["--pretrained", "cpu", "--input", tmp_path / "image.fits", "--background", "0.7", "--min-prob", "0"]
    code, _, err = _run(capsys, predict.main, *args, "--field-id", "synthetic-0493", "--out", tmp_path / "name.csv")
    assert code == 0, err
    code, _, err = _run(capsys, predict.main, *args, "--field-id", "493", "--out", tmp_path / "index.csv")
    assert code == 0, err
    by_name, by_index = catalog.read_table(tmp_path / "name.csv"), catalog.read_table(tmp_path / "index.csv")
    assert len(by_name) == len(by_index) > 0
    for key in by_name.colnames:
        np.testing.assert_array_equal(np.asarray(by_name[key]), np.asarray(by_index[key]), err_msg=key)
    code, stdout, err = _run(capsys, predict.main, *args, "--field-id", "500", "--out", tmp_path / "bad.csv")
    assert_one_error(code, stdout, err, "field index 500 outside field bank")
    assert "it holds 500 fields, 0 to 499" in err and not (tmp_path / "bad.csv").exists()
