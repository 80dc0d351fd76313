"""The prediction command end to end: its catalogs equal the library's (dataset, .npz and FITS inputs of
any size, CSV/FITS out, flags), and bad input gives one ``error:`` line and exit status 2."""

import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

from npejax import catalogs as catalog
from npejax import datasets as data
from npejax import predict, schema
from npejax.nn import predictor, train
from npejax.sim import fields, pipeline


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_config):
    """A tiny network trained 2 epochs (best and latest may differ) and a cached test set of 6 images."""
    root = tmp_path_factory.mktemp("predict")
    config = tiny_config()
    train.train_and_evaluate(config, str(root / "run"))
    spec = pipeline.SimulationSpec.from_config(config, seed=5, batch_size=6)
    data.write_dataset(spec, root / "test", 6, "test", num_workers=0, progress=False)
    arrays = data.load(root / "test")[np.arange(6)]
    return root, predictor.Predictor.from_workdir(str(root / "run")), arrays


def _predict(capsys, *args):
    """``npejax.predict`` in this process: (exit status, stdout, stderr)."""
    code = predict.main(["npejax.predict", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_same_catalog(got, expected, allow_empty=False, csv=False):
    """Row for row: same columns, same images, positions and fluxes to float32 precision (``csv``: to the
    precision a CSV prints, catalog.CSV_FORMATS). The commands' catalogs also give each image's
    ``field_distance`` from the training fields (npejax.cataloging.images.FieldRange; tests/test_field_range.py)
    and, unless --noquality, the quality flag's columns (npejax.schema.QUALITY_COLUMNS; tests/test_quality.py),
    which ``Predictor.catalog`` (``expected``) does not."""
    if "field_distance" in got.colnames and "field_distance" not in expected.colnames:
        assert np.all(np.isfinite(np.asarray(got["field_distance"], float)))
        got = got[[name for name in got.colnames if name != "field_distance"]]
    if "quality_flag" in got.colnames and "quality_flag" not in expected.colnames:
        assert all(name in got.colnames for name in schema.QUALITY_COLUMNS)
        assert got["quality_flag"].dtype == bool and got["image_quality_flag"].dtype == bool
        got = got[[name for name in got.colnames if name not in schema.QUALITY_COLUMNS]]
    assert got.colnames == expected.colnames and len(got) == len(expected)
    assert allow_empty or len(got) > 0
    for name in got.colnames:
        want = np.asarray(expected[name], float)
        if csv and expected[name].dtype.kind == "f":
            want = np.array([float(catalog.CSV_FORMATS.get(name, "{:#.7g}").format(v)) for v in expected[name]])
        np.testing.assert_allclose(np.asarray(got[name], float), want, rtol=1e-5, atol=1e-5, err_msg=name)


def test_readme_command_writes_the_predictor_catalog(trained, root):
    """``python -m npejax.predict --workdir ... --input ... --out catalog.fits`` as the README writes it."""
    tmp, net, arrays = trained
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "npejax.predict",
            "--workdir",
            str(tmp / "run"),
            "--input",
            str(tmp / "test"),
            "--out",
            str(tmp / "catalog.fits"),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    expected = net.catalog(arrays["images"], arrays["background"], arrays["psf_params"])  # min_prob 0.5
    assert proc.stdout.strip() == f"{len(expected)} sources in 6 images -> {tmp / 'catalog.fits'}"
    got = catalog.read_table(tmp / "catalog.fits")
    assert_same_catalog(got, expected, allow_empty=True)  # the tiny network may find nothing above 0.5
    assert np.all(np.asarray(got["prob_source"]) > 0.5)


def test_dataset_and_npz_inputs_give_the_predictor_catalog(trained, capsys):
    tmp, net, arrays = trained
    expected = net.catalog(arrays["images"], arrays["background"], arrays["psf_params"], min_prob=0.0)
    assert len(expected) == 6 * 20 * 20 and set(expected["image"]) == set(range(6))
    # --noquality: min-prob 0 keeps every tile, which the quality flag rightly flags (tests/test_quality.py)
    code, out, err = _predict(
        capsys,
        "--workdir",
        tmp / "run",
        "--input",
        tmp / "test",
        "--out",
        tmp / "a.fits",
        "--min-prob",
        "0",
        "--noquality",
    )
    assert code == 0 and err == "", err
    assert out == f"{6 * 20 * 20} sources in 6 images -> {tmp / 'a.fits'}\n"
    assert_same_catalog(catalog.read_table(tmp / "a.fits"), expected)
    np.savez(tmp / "in.npz", images=arrays["images"], background=arrays["background"], psf_params=arrays["psf_params"])
    code, out, err = _predict(
        capsys,
        "--workdir",
        tmp / "run",
        "--input",
        tmp / "in.npz",
        "--out",
        tmp / "b.csv",
        "--min_prob",
        "0",
        "--batch-size",
        "4",
        "--noquality",
    )  # both spellings; batches of 4 and 2
    assert code == 0, err
    assert_same_catalog(catalog.read_table(tmp / "b.csv"), expected, csv=True)


def test_latest_checkpoint_and_min_prob(trained, capsys):
    tmp, _, arrays = trained
    latest = predictor.Predictor.from_workdir(str(tmp / "run"), "latest")
    probs = latest.predict_tiles(arrays["images"], arrays["background"], arrays["psf_params"])["prob_source"]
    min_prob = float(np.quantile(probs, 0.9))  # keeps about a tenth of the tiles
    expected = latest.catalog(arrays["images"], arrays["background"], arrays["psf_params"], min_prob=min_prob)
    assert len(expected) == np.sum(probs > min_prob) > 0
    code, _, err = _predict(
        capsys,
        "--workdir",
        tmp / "run",
        "--input",
        tmp / "test",
        "--out",
        tmp / "l.csv",
        "--checkpoint",
        "latest",
        "--min-prob",
        repr(min_prob),
    )
    assert code == 0, err
    got = catalog.read_table(tmp / "l.csv")
    assert_same_catalog(got, expected, csv=True)
    assert np.all(np.asarray(expected["prob_source"]) > min_prob)
    assert np.all(np.asarray(got["prob_source"]) >= min_prob - 5e-5)  # the CSV's 4 decimals


def test_fits_input_of_any_size(trained, capsys):
    tmp, net, arrays = trained
    image = np.asarray(arrays["images"][0, :77, :75])  # not multiples of the tile size
    fits.PrimaryHDU(image).writeto(tmp / "frame.fits", overwrite=True)
    bank = fields.load_bank("synthetic")
    code, _, err = _predict(
        capsys,
        "--workdir",
        tmp / "run",
        "--input",
        tmp / "frame.fits",
        "--out",
        tmp / "f.fits",
        "--background",
        "0.7",
        "--field-id",
        bank.names[3],
        "--min-prob",
        "0",
    )
    assert code == 0, err
    got = catalog.read_table(tmp / "f.fits")
    # the rows expected: the library on the same pixels, a 0.7 nmgy sky and field 3's PSF
    expected = net.catalog(image[None], np.full((1, 77, 75), 0.7, np.float32), bank.psf_params[3][None], min_prob=0.0)
    assert_same_catalog(got, expected)
    assert 0 < len(got) <= 20 * 19 and np.all(got["x"] < 75) and np.all(got["y"] < 77)
    assert set(got["image"]) == {0}

    psf = "1.2,3.5,1.5,3.0,0.1,0.08"
    code, _, err = _predict(
        capsys,
        "--workdir",
        tmp / "run",
        "--input",
        tmp / "frame.fits",
        "--out",
        tmp / "g.fits",
        "--background",
        "0.7",
        "--psf-params",
        psf,
    )
    assert code == 0, err
    expected = net.catalog(
        image[None], np.full((1, 77, 75), 0.7, np.float32), np.array([[1.2, 3.5, 1.5, 3.0, 0.1, 0.08]], np.float32)
    )  # min_prob 0.5
    assert_same_catalog(catalog.read_table(tmp / "g.fits"), expected, allow_empty=True)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_workdir", "does not exist"),
        ("missing_flag", "--out"),
        ("fits_without_background", "--background"),
        ("npz_missing_arrays", "lacks arrays"),
        ("bad_extension", "unsupported catalog file extension"),
        ("negative_psf_width", "psf_params"),
        ("unknown_field", "unknown field id 'no-such-field'"),
        ("bad_checkpoint", "checkpoint"),
    ],
)
def test_bad_input_gives_a_clear_error(trained, capsys, case, message):
    tmp, _, _ = trained
    fits.PrimaryHDU(np.zeros((8, 8), np.float32)).writeto(tmp / "small.fits", overwrite=True)
    np.savez(tmp / "partial.npz", images=np.zeros((1, 8, 8), np.float32))
    run, test, small, out = tmp / "run", tmp / "test", tmp / "small.fits", tmp / "x.fits"
    args = {
        "missing_workdir": ["--workdir", tmp / "nope", "--input", test, "--out", out],
        "missing_flag": ["--workdir", run, "--input", test],
        "fits_without_background": [
            "--workdir",
            run,
            "--input",
            small,
            "--out",
            out,
            "--psf-params",
            "1,3,1,3,0.1,0.1",
        ],
        "npz_missing_arrays": ["--workdir", run, "--input", tmp / "partial.npz", "--out", out],
        "bad_extension": ["--workdir", run, "--input", test, "--out", tmp / "x.txt"],
        "negative_psf_width": [
            "--workdir",
            run,
            "--input",
            small,
            "--out",
            out,
            "--background",
            "0.7",
            "--psf-params=-1,3,1,3,0.1,0.1",
        ],
        "unknown_field": [
            "--workdir",
            run,
            "--input",
            small,
            "--out",
            out,
            "--background",
            "0.7",
            "--field-id",
            "no-such-field",
        ],
        "bad_checkpoint": ["--workdir", run, "--input", test, "--out", out, "--checkpoint", "first"],
    }[case]
    code, stdout, err = _predict(capsys, *args)
    assert code == 2 and stdout == "", stdout
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists() and not (tmp / "x.txt").exists()
