"""The prediction CLI end to end: dataset, .npz and FITS inputs (any image size), CSV/FITS out, bad input."""

import os
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

from npejax import catalog, data, fields, pipeline, train
from test_train import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    config = tiny_config()
    config.train.num_epochs = 1
    train.train_and_evaluate(config, str(root / "run"))
    spec = pipeline.SimulationSpec.from_config(config, seed=5, batch_size=6)
    data.write_dataset(spec, root / "test", 6, "test", num_workers=0, progress=False)
    return root, config


def _predict(*args):
    proc = subprocess.run([sys.executable, "-m", "npejax.predict", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


def test_dataset_and_npz_inputs_give_the_same_catalog(trained):
    root, _ = trained
    code, out = _predict("--workdir", root / "run", "--input", root / "test", "--out", root / "a.fits",
                         "--min-prob", "0")
    assert code == 0, out
    a = catalog.read_table(root / "a.fits")
    assert len(a) == 6 * 20 * 20 and set(a["image"]) == set(range(6))
    ds = data.load(root / "test")
    arrays = ds[np.arange(6)]
    np.savez(root / "in.npz", images=arrays["images"], background=arrays["background"],
             psf_params=arrays["psf_params"])
    code, out = _predict("--workdir", root / "run", "--input", root / "in.npz", "--out", root / "b.csv",
                         "--min-prob", "0")
    assert code == 0, out
    b = catalog.read_table(root / "b.csv")
    np.testing.assert_allclose(np.asarray(b["flux"]), np.asarray(a["flux"]), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(b["x"]), np.asarray(a["x"]), atol=1e-4)


def test_fits_input_of_any_size(trained):
    root, _ = trained
    ds = data.load(root / "test")
    image = np.asarray(ds[np.arange(1)]["images"][0, :77, :75])  # not multiples of the tile size
    fits.PrimaryHDU(image).writeto(root / "frame.fits", overwrite=True)
    bank = fields.load_bank("synthetic")
    code, out = _predict("--workdir", root / "run", "--input", root / "frame.fits", "--out", root / "f.fits",
                         "--background", "0.7", "--field-id", bank.names[3], "--min-prob", "0")
    assert code == 0, out
    t = catalog.read_table(root / "f.fits")
    assert 0 < len(t) <= 20 * 19 and np.all(t["x"] < 75) and np.all(t["y"] < 77)
    code, out = _predict("--workdir", root / "run", "--input", root / "frame.fits", "--out", root / "g.fits",
                         "--background", "0.7", "--psf-params", "1.2,3.5,1.5,3.0,0.1,0.08")
    assert code == 0, out


@pytest.mark.parametrize("case, message", [
    ("missing_workdir", "does not exist"),
    ("fits_without_background", "--background"),
    ("npz_missing_arrays", "lacks arrays"),
    ("bad_extension", "unsupported catalog file extension"),
    ("negative_psf_width", "psf_params"),
    ("unknown_field", "unknown field id 'no-such-field'"),
])
def test_bad_input_gives_a_clear_error(trained, case, message):
    root, _ = trained
    fits.PrimaryHDU(np.zeros((8, 8), np.float32)).writeto(root / "small.fits", overwrite=True)
    np.savez(root / "partial.npz", images=np.zeros((1, 8, 8), np.float32))
    args = {
        "missing_workdir": ["--workdir", root / "nope", "--input", root / "test", "--out", root / "x.fits"],
        "fits_without_background": ["--workdir", root / "run", "--input", root / "small.fits", "--out",
                                    root / "x.fits", "--psf-params", "1,3,1,3,0.1,0.1"],
        "npz_missing_arrays": ["--workdir", root / "run", "--input", root / "partial.npz", "--out", root / "x.fits"],
        "bad_extension": ["--workdir", root / "run", "--input", root / "test", "--out", root / "x.txt"],
        "negative_psf_width": ["--workdir", root / "run", "--input", root / "small.fits", "--out", root / "x.fits",
                               "--background", "0.7", "--psf-params=-1,3,1,3,0.1,0.1"],
        "unknown_field": ["--workdir", root / "run", "--input", root / "small.fits", "--out", root / "x.fits",
                          "--background", "0.7", "--field-id", "no-such-field"],
    }[case]
    code, out = _predict(*args)
    assert code == 2 and message in out, out
    assert not (root / "x.fits").exists()
