"""The quality flag from the forward model in the commands' catalogs (npejax.cataloging.images.add_quality):
``python -m npejax.predict`` and ``python -m npejax.survey catalog`` write the columns by default for every kind
of input, with the gain / calibration each input knows (or its measured noise, or --electrons-per-nmgy);
--noquality leaves them out; a hot streak in a clean image is flagged with one warning line; the setting is
part of a survey catalog's identity; merge keeps the columns."""

import bz2
import io as std_io

import numpy as np
import pytest
import test_sdss as sdss_files  # the SDSS data-model fixture writers
from astropy.io import fits
from conftest import assert_one_error, get_config, without_field_warnings

from npejax import catalogs as catalog
from npejax import datasets as data
from npejax import predict, schema, survey
from npejax.cataloging import quality
from npejax.cataloging import runner as runner_lib
from npejax.sim import fields, pipeline
from npejax.surveys import sdss

NETWORK = ("--pretrained", "cpu")  # the network the thresholds were calibrated for


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A dataset of 2 clean 80 x 80 images simulated with the cpu config (its field bank: the embedded
    synthetic one), its arrays, and its first image as a FITS file with its background beside it."""
    root = tmp_path_factory.mktemp("quality_commands")
    spec = pipeline.SimulationSpec.from_config(get_config("cpu"), seed=11, batch_size=2)
    data.write_dataset(spec, root / "test", 2, "test", num_workers=0, progress=False)
    arrays = data.load(root / "test")[np.arange(2)]
    fits.PrimaryHDU(arrays["images"][0]).writeto(root / "image.fits")
    fits.PrimaryHDU(arrays["background"][0]).writeto(root / "sky.fits")
    return root, arrays


def _predict(capsys, *args):
    """(exit status, stdout, stderr without the training-fields warnings)."""
    code = predict.main(["npejax.predict", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, without_field_warnings(out.err)


def _has_quality(table) -> bool:
    present = [name in table.colnames for name in schema.QUALITY_COLUMNS]
    assert all(present) or not any(present), table.colnames
    return all(present)


def test_predict_writes_the_quality_columns_for_every_input_kind(inputs, capsys):
    root, arrays = inputs
    bank = fields.load_bank()
    field = str(bank.names[int(arrays["field_id"][0])])
    # a dataset: each image's gain / calibration from the field bank the manifest names
    code, _, err = _predict(capsys, *NETWORK, "--input", root / "test", "--out", root / "d.fits")
    assert code == 0, err
    table = catalog.read_table(root / "d.fits")
    assert _has_quality(table) and len(table) > 0
    assert table.meta["QEPNMGY"] == pytest.approx(np.median(bank.to_electrons(arrays["field_id"])), rel=1e-4)
    assert table.meta["QEPSRC"].startswith("field bank synthetic")
    assert table.meta["QCROP"] == 80 and table.meta["QNCROP"] == 2 and table.meta["QTHRIMG"] == quality.THRESHOLDS.image
    assert table["quality_flag"].dtype == bool and np.all(np.isfinite(np.asarray(table["quality_chi2"])))
    # an .npz that records it
    np.savez(
        root / "in.npz",
        images=arrays["images"],
        background=arrays["background"],
        psf_params=arrays["psf_params"],
        electrons_per_nmgy=np.array([900.0, 1100.0]),
    )
    code, _, err = _predict(capsys, *NETWORK, "--input", root / "in.npz", "--out", root / "n.csv")
    assert code == 0, err
    table = catalog.read_table(root / "n.csv")
    assert _has_quality(table)  # (a CSV keeps no meta)
    # a FITS image: measured from its noise (within 10% of its field's; read noise would lower it), or given
    code, _, err = _predict(
        capsys, *NETWORK, "--input", root / "image.fits", "--background", root / "sky.fits", "--field-id", field,
        "--out", root / "f.fits",
    )  # fmt: skip
    assert code == 0, err
    table = catalog.read_table(root / "f.fits")
    assert _has_quality(table) and table.meta["QEPSRC"].startswith("estimated from the pixel noise of the image")
    assert table.meta["QEPNMGY"] == pytest.approx(bank.to_electrons(int(arrays["field_id"][0])), rel=0.1)
    code, _, err = _predict(
        capsys, *NETWORK, "--input", root / "image.fits", "--background", root / "sky.fits", "--field-id", field,
        "--out", root / "g.fits", "--electrons-per-nmgy", "900",
    )  # fmt: skip
    assert code == 0, err
    given = catalog.read_table(root / "g.fits")
    assert given.meta["QEPNMGY"] == 900 and given.meta["QEPSRC"] == "given (--electrons-per-nmgy)"
    assert np.all(np.asarray(given["quality_chi2"]) != np.asarray(table["quality_chi2"]))
    # --min-prob 0: the rows above 0.5 (the calibration's catalog) are modelled as at the default, the others not
    code, _, err = _predict(
        capsys, *NETWORK, "--input", root / "image.fits", "--background", root / "sky.fits", "--field-id", field,
        "--out", root / "all.fits", "--min-prob", "0",
    )  # fmt: skip
    assert code == 0, err
    every = catalog.read_table(root / "all.fits")
    above = np.asarray(every["prob_source"]) > 0.5
    assert len(every) == 400 and above.sum() == len(table) and every.meta["QMINPROB"] == 0.5
    for name in schema.QUALITY_COLUMNS:
        np.testing.assert_array_equal(np.asarray(every[name])[above], np.asarray(table[name]), err_msg=name)
    assert np.all(np.isnan(np.asarray(every["quality_chi2"])[~above])) and not np.any(every["quality_flag"][~above])
    assert np.all(np.asarray(every["image_quality_chi2"]) == table["image_quality_chi2"][0])  # one crop
    # --noquality: the catalog of before, without the columns or their meta
    code, _, err = _predict(
        capsys, *NETWORK, "--input", root / "image.fits", "--background", root / "sky.fits", "--field-id", field,
        "--out", root / "h.fits", "--noquality",
    )  # fmt: skip
    assert code == 0, err
    plain = catalog.read_table(root / "h.fits")
    assert not _has_quality(plain) and "QTHRIMG" not in plain.meta and len(plain) == len(table)
    # an SDSS frame and its psField (60 x 80 pixels: one crop), its NaN pixels left out
    key = (94, 1, 12)
    frame, psfield = root / sdss.frame_name(*key), root / sdss.psfield_name(*key)
    blob, _ = sdss_files.frame_bytes(sdss_files.FIELDS[key]["sky"], sdss_files.FIELDS[key]["calib"])
    with fits.open(std_io.BytesIO(blob)) as hdul:
        hdul[0].data[10:14, 20:30] = np.nan
        buf = std_io.BytesIO()
        hdul.writeto(buf)
    frame.write_bytes(bz2.compress(buf.getvalue()))
    sdss_files.write_psfield(psfield, sdss_files.FIELDS[key]["psf"])
    code, _, err = _predict(capsys, *NETWORK, "--sdss-frame", frame, "--psfield", psfield, "--out", root / "s.fits")
    assert code == 0, err
    table = catalog.read_table(root / "s.fits")
    assert _has_quality(table) and "pixel noise of the frame" in table.meta["QEPSRC"]
    assert table.meta["QNCROP"] == 1 and table.meta["QEPNMGY"] > 0


def test_a_hot_streak_is_flagged_with_one_warning_line(inputs, capsys):
    """The clean simulated image: no crop flagged, no warning; the same with a cosmic-ray-like streak of hot
    pixels across it: its crop flagged (image_quality_flag on every row) and one warning line for the image."""
    root, arrays = inputs
    psf = ",".join(f"{v:.9g}" for v in arrays["psf_params"][0])
    args = (*NETWORK, "--background", root / "sky.fits", "--psf-params", psf)
    code, _, err = _predict(capsys, *args, "--input", root / "image.fits", "--out", root / "clean.fits")
    clean = catalog.read_table(root / "clean.fits")
    assert code == 0 and "quality" not in err, err
    assert not np.any(clean["image_quality_flag"]) and clean.meta["QNCRFLG"] == 0
    streaked = np.array(arrays["images"][0])
    rows = np.arange(20, 60)
    streaked[rows, rows // 2 + 20] += 1.5  # 40 hot pixels (~50 sigma), sharper than any PSF
    fits.PrimaryHDU(streaked).writeto(root / "streak.fits")
    code, _, err = _predict(capsys, *args, "--input", root / "streak.fits", "--out", root / "streak-cat.fits")
    assert code == 0
    table = catalog.read_table(root / "streak-cat.fits")
    assert len(table) > 0 and np.all(table["image_quality_flag"]) and table.meta["QNCRFLG"] == 1
    assert err.splitlines() == [
        f"warning: {root / 'streak.fits'}: image 0: {int(np.sum(table['quality_flag']))} of "
        f"{len(table)} detections and 1 of 1 80x80 regions flagged by the quality check (quality_flag, "
        "image_quality_flag): artifacts or a wrong PSF?"
    ]


def test_the_quality_setting_is_part_of_a_survey_catalogs_identity(inputs, capsys, tmp_path):
    """A resume with --noquality over catalogs with the flag is refused (one error line naming the setting) and
    redone with --redo-mismatched; merge keeps the columns and the thresholds."""
    root, arrays = inputs
    lines = []
    for k, name in enumerate(("a", "b")):  # the dataset's two images as two frames
        fits.PrimaryHDU(arrays["images"][k]).writeto(tmp_path / f"{name}.fits")
        fits.PrimaryHDU(arrays["background"][k]).writeto(tmp_path / f"{name}-sky.fits")
        psf = ",".join(f"{v:.9g}" for v in arrays["psf_params"][k])
        lines.append(f"{name}.fits background={name}-sky.fits psf-params={psf}\n")
    (tmp_path / "frames.txt").write_text("".join(lines))
    out = tmp_path / "out"
    args = ["catalog", *NETWORK, "--frames", tmp_path / "frames.txt", "--out", out]

    def run(*argv):
        code = survey.main(["npejax.survey", *map(str, argv)])
        captured = capsys.readouterr()
        return code, captured.out, without_field_warnings(captured.err)

    code, stdout, err = run(*args)
    assert code == 0, err
    table, identity = runner_lib.read_catalog(str(out / "catalogs" / "a.fits"))
    assert _has_quality(table) and identity["quality"] is True and identity["electrons_per_nmgy"] is None
    code, stdout, err = run(*args, "--noquality")
    assert_one_error(code, stdout, err, "quality True -> False")
    code, stdout, err = run(*args, "--electrons-per-nmgy", "900")
    assert_one_error(code, stdout, err, "electrons_per_nmgy None -> 900.0")
    code, stdout, err = run(*args, "--noquality", "--redo-mismatched")
    assert code == 0 and "2 frames cataloged" in stdout, err
    table, identity = runner_lib.read_catalog(str(out / "catalogs" / "a.fits"))
    assert not _has_quality(table) and identity["quality"] is False
    code, stdout, err = run(*args, "--redo-mismatched")
    assert code == 0, err
    code, stdout, err = run("merge", "--survey", out, "--out", tmp_path / "all.fits")
    assert code == 0, err
    merged = catalog.read_table(tmp_path / "all.fits")
    assert _has_quality(merged) and merged.meta["QTHRDET"] == quality.THRESHOLDS.detection
    assert sorted(set(merged["frame"])) == ["a", "b"]


@pytest.mark.fast
def test_an_npz_with_a_bad_electrons_per_nmgy_is_refused(capsys, tmp_path):
    images = np.zeros((2, 16, 16), np.float32)
    psf = np.tile(np.array([1.2, 3.5, 1.5, 3.0, 0.1, 0.08], np.float32), (2, 1))
    for name, value in (("zero", [0.0, 1000.0]), ("length", [900.0, 1000.0, 1100.0])):
        path = tmp_path / f"{name}.npz"
        np.savez(path, images=images, background=images + 0.7, psf_params=psf, electrons_per_nmgy=value)
        code, stdout, err = _predict(capsys, *NETWORK, "--input", path, "--out", tmp_path / "c.fits")
        assert_one_error(code, stdout, err, f"{path}: electrons_per_nmgy {value} (shape ({len(value)},))")
        assert not (tmp_path / "c.fits").exists()
