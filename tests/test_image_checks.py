"""The checks of an image a user catalogs (npejax.cataloging.checks): sky left in, wrong units, WCS scale and
matrix, PSF ranges; the PSF given as --fwhm or --psf-image (npejax.cataloging.images, npejax.sim.psf); a psField
known by its header (npejax.surveys.sdss.psfield_identity). The refusals' command lines are in tests/test_refusals.py
(``# --- own-image checks ---``)."""

import numpy as np
import pytest
from astropy.io import fits
from conftest import one_error_line, without_field_warnings
from test_refusals import run_command

from npejax.cataloging import checks, images
from npejax.sim import fields as fields_lib
from npejax.sim import psf as psf_lib
from npejax.surveys import sdss

BACKGROUND = 0.7  # nmgy per pixel
NOISE = float(np.sqrt(BACKGROUND / 956.0))  # the photon noise of the sky (956 electrons per nmgy: the bank's median)
PSF = (1.2, 3.0, 2.0, 3.5, 0.10, 0.02)


def own_image(size=160, seed=0, sources=((50.0, 40.0, 60.0), (8.0, 120.0, 100.0))):
    """A sky-subtracted image in nmgy: the sky's photon noise and Gaussian sources (flux nmgy, row, column)."""
    rng = np.random.default_rng(seed)
    image = rng.normal(0.0, NOISE, (size, size))
    rows, cols = np.indices((size, size))
    for flux, r, c in sources:
        image += flux * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * 1.5**2)) / (2 * np.pi * 1.5**2)
    return image.astype(np.float32)


def tan_header(scale=0.396, size=160, cd=None) -> fits.Header:
    """A TAN WCS header of ``scale`` arcsec per pixel (or the CD matrix ``cd``, degrees per pixel)."""
    cd = np.array([[-scale, 0.0], [0.0, scale]]) / 3600 if cd is None else np.asarray(cd)
    header = fits.Header()
    for key, value in dict(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRPIX1=size / 2, CRPIX2=size / 2).items():
        header[key] = value
    header["CRVAL1"], header["CRVAL2"] = 150.0, 2.0
    for i in range(2):
        for j in range(2):
            header[f"CD{i + 1}_{j + 1}"] = float(cd[i, j])
    return header


def psf_stamp(params, size=25, offset=(0.0, 0.0)) -> np.ndarray:
    """A PSF image drawn by GalSim from ``params`` (the pixel included, as a PSF image holds it)."""
    return psf_lib.galsim_psf(params).drawImage(nx=size, ny=size, scale=1.0, offset=offset).array


# --- the pixels -------------------------------------------------------------------------------------------------


@pytest.mark.fast
def test_a_clean_image_passes_without_a_word(capsys):
    for seed in range(5):
        stats = checks.check_pixels(own_image(seed=seed), np.full((160, 160), BACKGROUND), "clean.fits")
        assert abs(stats["median"]) < 0.2 * NOISE and stats["noise"] == pytest.approx(NOISE, rel=0.05)
    assert without_field_warnings(capsys.readouterr().err) == ""


@pytest.mark.fast
@pytest.mark.parametrize(
    "case, fragments",
    [
        ("sky", ["median pixel 0.7", "noise sigmas", "sky looks left in", "subtract the sky", "--skip-image-checks"]),
        ("twice", ["median pixel -0.7", "subtracted twice"]),
        ("x1e6", ["times above the expected", "DN, electrons or another unit"]),
        ("dn", ["times above the expected", "an SDSS frame in DN"]),
        ("quiet", ["times below the expected", "background too large"]),
    ],
)
def test_an_image_that_is_not_sky_subtracted_nmgy_is_refused(case, fragments, capsys):
    image = own_image()
    image = {
        "sky": image + BACKGROUND,
        "twice": image - BACKGROUND,
        "x1e6": image * 1e6,
        "dn": image / 0.005,  # nmgy -> DN (calibration 0.005 nmgy per DN)
        "quiet": image / 20,
    }[case]
    with pytest.raises(ValueError) as caught:
        checks.check_pixels(image, np.full(image.shape, BACKGROUND), "input FITS file x.fits")
    text = str(caught.value)
    assert text.startswith("input FITS file x.fits: ")
    for fragment in fragments:
        assert fragment in text, text
    assert without_field_warnings(capsys.readouterr().err) == ""


@pytest.mark.fast
@pytest.mark.parametrize("factor, word", [(6.0, "below"), (1 / 6.0, "above")])
def test_a_background_several_times_off_is_a_warning(factor, word, capsys):
    checks.check_pixels(own_image(), np.full((160, 160), BACKGROUND * factor), "x.fits")
    lines = without_field_warnings(capsys.readouterr().err).splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: x.fits: pixel noise "), lines
    assert f"times {word} the expected" in lines[0] and "is --background right" in lines[0]


@pytest.mark.fast
def test_bunit_other_than_nanomaggies_is_refused():
    checks.check_units(fits.Header({"BUNIT": "nanomaggies"}), "f")
    checks.check_units(fits.Header(), "f")
    with pytest.raises(ValueError, match=r"f has BUNIT = 'DN'; the network takes images in nanomaggies"):
        checks.check_units(fits.Header({"BUNIT": "DN"}), "f")


@pytest.mark.fast
def test_skip_image_checks_lets_an_image_through(tmp_path):
    path = tmp_path / "sky.fits"
    fits.PrimaryHDU(own_image() + BACKGROUND).writeto(path)
    with pytest.raises(ValueError, match="sky looks left in"):
        images.open_inputs(str(path), background=BACKGROUND, psf_params=PSF)
    inputs = images.open_inputs(str(path), background=BACKGROUND, psf_params=PSF, image_checks=False)
    assert inputs.num_images == 1


# --- the WCS --------------------------------------------------------------------------------------------------------


@pytest.mark.fast
def test_wcs_pixel_scale_other_than_the_networks_is_a_warning(capsys):
    assert checks.check_wcs(tan_header(0.396), "a.fits") == pytest.approx(0.396)
    assert checks.check_wcs(tan_header(0.40), "a.fits") == pytest.approx(0.40)  # within 5%: quiet
    assert checks.check_wcs(fits.Header(), "a.fits") is None  # no WCS
    assert without_field_warnings(capsys.readouterr().err) == ""
    assert checks.check_wcs(tan_header(1.0), "b.fits") == pytest.approx(1.0)
    lines = without_field_warnings(capsys.readouterr().err).splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: b.fits: its WCS pixel scale is 1 arcsec/pixel"), lines
    assert "the network's 0.396" in lines[0]


@pytest.mark.fast
@pytest.mark.parametrize("matrix", ["zero-cd", "rank-1-cd", "zero-cdelt"])
def test_singular_wcs_matrix_is_refused(matrix):
    if matrix == "zero-cdelt":
        header = tan_header()
        for key in ("CD1_1", "CD1_2", "CD2_1", "CD2_2"):
            del header[key]
        header["CDELT1"] = header["CDELT2"] = 0.0
    else:
        header = tan_header(cd=np.zeros((2, 2)) if matrix == "zero-cd" else [[1e-4, 1e-4], [1e-4, 1e-4]])
    with pytest.raises(ValueError, match=r"^c.fits: its WCS matrix \(CD, or PC x CDELT\) is singular.*meaningless"):
        checks.check_wcs(header, "c.fits")


# --- the PSF --------------------------------------------------------------------------------------------------------


@pytest.mark.fast
@pytest.mark.parametrize(
    "params, fragment",
    [
        ((1e6, 3.0, 2.0, 3.5, 0.1, 0.02), "psf_sigma1 = 1e+06 pixels, expected 0.1 to 25"),
        ((1.2, 3.0, 0.01, 3.5, 0.1, 0.02), "psf_sigmap = 0.01 pixels"),
        ((1.2, 3.0, 2.0, 300, 0.1, 0.02), "psf_beta = 300"),
        ((1.2, 3.0, 2.0, 3.5, 50, 0.02), "psf_b = 50"),
    ],
)
def test_psf_params_outside_physical_ranges_are_refused(params, fragment):
    with pytest.raises(ValueError, match="^--psf-params: " + fragment.replace("+", r"\+")):
        checks.check_psf_params(params, "--psf-params")


@pytest.mark.fast
@pytest.mark.parametrize("offset", [(0.0, 0.0), (0.3, -0.2)])
def test_psf_image_drawn_from_six_parameters_is_fitted_back(offset):
    truth = np.array(PSF)
    fitted, residual = psf_lib.fit_psf_image(psf_stamp(truth, offset=offset))
    assert residual < 1e-3
    assert psf_lib.fwhm_pixels(fitted) == pytest.approx(psf_lib.fwhm_pixels(truth), rel=0.005)
    np.testing.assert_allclose(fitted[:2], truth[:2], rtol=0.03)  # the two Gaussian widths
    r = np.linspace(0, 12, 49)  # the profile itself, to 1% of the peak
    assert np.max(np.abs(psf_lib.profile(r, fitted) - psf_lib.profile(r, truth))) < 0.01 * psf_lib.profile(0, truth)


@pytest.mark.fast
def test_psf_from_image_prints_the_fit_and_refuses_a_bad_one(tmp_path):
    bank = fields_lib.load_bank()
    truth = bank.psf_params[bank.reference]
    fits.PrimaryHDU(psf_stamp(truth)).writeto(tmp_path / "psf.fits")
    params, note = images.psf_from_image(str(tmp_path / "psf.fits"))
    assert psf_lib.fwhm_pixels(params) == pytest.approx(psf_lib.fwhm_pixels(truth), rel=0.005)
    assert note.startswith(f"PSF fitted to --psf-image {tmp_path / 'psf.fits'}: psf params ")
    assert f"FWHM {psf_lib.fwhm_pixels(params):.3g} pixels, residual " in note
    two = psf_stamp(truth) + np.roll(psf_stamp(truth), 8, axis=1)  # two stars (noise: tests/test_refusals.py)
    fits.PrimaryHDU(two).writeto(tmp_path / "two.fits")
    with pytest.raises(
        ValueError, match=r"--psf-image .*two.fits: the six-parameter PSF fits it badly \(residual 0\.\d+"
    ):
        images.psf_from_image(str(tmp_path / "two.fits"))
    fits.PrimaryHDU(np.zeros((25, 25))).writeto(tmp_path / "zero.fits")
    with pytest.raises(ValueError, match="zero.fits: the PSF image has no positive flux"):
        images.psf_from_image(str(tmp_path / "zero.fits"))


@pytest.mark.fast
@pytest.mark.parametrize("fwhm, scale", [(1.4, 0.396), (1.0, 0.396), (2.0, 0.5)])
def test_psf_from_fwhm_is_a_bank_psf_scaled_to_it(fwhm, scale):
    bank = fields_lib.load_bank()
    params, note = images.psf_from_fwhm(fwhm, scale)
    assert psf_lib.fwhm_pixels(params) * scale == pytest.approx(fwhm, rel=1e-4)
    shapes = bank.psf_params[:, 3:]  # beta, b, p0 of a bank field, its width ratios too
    k = int(np.argmin(np.abs(shapes - params[3:]).sum(axis=1)))
    np.testing.assert_allclose(params[3:], shapes[k])
    np.testing.assert_allclose(params[:3] / params[0], bank.psf_params[k, :3] / bank.psf_params[k, 0])
    assert note.startswith(f"PSF of --fwhm {fwhm:g} arcsec: {fwhm / scale:.3g} pixels at {scale:.4g} arcsec/pixel")
    with pytest.raises(ValueError, match="--fwhm '0': expected the PSF's FWHM in arcsec"):
        images.psf_from_fwhm("0")


@pytest.mark.fast
def test_psfield_is_known_by_its_header_before_its_name(tmp_path):
    import test_sdss as sdss_files  # noqa: PLC0415  (the SDSS data-model fixture writers)

    path = tmp_path / "psField-000094-1-0012.fit"
    sdss_files.write_psfield(path, PSF)
    assert sdss.psfield_identity(path) == ((94, 1, 12), "file name")
    with fits.open(path, mode="update") as hdul:
        hdul[0].header.update(RUN=94, CAMCOL=1, FIELD=13)
    assert sdss.psfield_identity(path) == ((94, 1, 13), "HDU 0 RUN, CAMCOL, FIELD")
    renamed = tmp_path / "mine.fit"
    sdss_files.write_psfield(renamed, PSF)
    assert sdss.psfield_identity(renamed) == (None, "")


# --- the commands ---------------------------------------------------------------------------------------------------


def test_predict_with_a_psf_image_and_a_wcs_of_another_scale(tmp_path):
    """End to end: --psf-image gives the PSF (its fit printed), a 1"/pixel WCS is one warning line, exit 0."""
    fits.PrimaryHDU(own_image(), header=tan_header(1.0)).writeto(tmp_path / "image.fits")
    fits.PrimaryHDU(psf_stamp(PSF)).writeto(tmp_path / "psf.fits")
    argv = ["--pretrained", "cpu", "--input", str(tmp_path / "image.fits"), "--background", str(BACKGROUND)]
    status, out, err = run_command(
        "predict", [*argv, "--psf-image", str(tmp_path / "psf.fits"), "--out", str(tmp_path / "c.fits")]
    )
    assert status == 0, err
    assert out.splitlines()[0].startswith(f"PSF fitted to --psf-image {tmp_path / 'psf.fits'}: psf params "), out
    lines = without_field_warnings(err).strip().splitlines()
    assert len(lines) == 1 and "its WCS pixel scale is 1 arcsec/pixel, the network's 0.396" in lines[0], err
    status, out, err = run_command(
        "predict", [*argv, "--fwhm", "1.4", "--psf-params", ",".join(map(str, PSF)), "--out", str(tmp_path / "d.fits")]
    )
    assert status == 2 and "--psf-params, --fwhm: give one PSF, not 2" in err, err


def test_survey_frame_list_takes_fwhm_and_psf_image(tmp_path):
    for name, seed in (("a", 0), ("b", 1), ("c", 2)):
        fits.PrimaryHDU(own_image(seed=seed)).writeto(tmp_path / f"{name}.fits")
    fits.PrimaryHDU(psf_stamp(PSF)).writeto(tmp_path / "psf.fits")
    fits.PrimaryHDU(own_image(seed=3) * 1e6).writeto(tmp_path / "x1e6.fits")
    (tmp_path / "frames.txt").write_text(
        "a.fits fwhm=1.3\nb.fits psf-image=psf.fits\nc.fits\nx1e6.fits\n", encoding="utf-8"
    )
    argv = ["catalog", "--pretrained", "cpu", "--frames", str(tmp_path / "frames.txt"), "--out", str(tmp_path / "s")]
    status, out, err = run_command("survey", [*argv, "--background", str(BACKGROUND), "--fwhm", "1.5"])
    assert status == 1, err  # x1e6 failed, the others were cataloged
    assert sorted(p.name for p in (tmp_path / "s" / "catalogs").iterdir()) == ["a.fits", "b.fits", "c.fits"]
    failed = [line for line in err.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1 and "x1e6" in failed[0] and "times above the expected" in failed[0], err
    assert "frame 0 a: PSF of fwhm= 1.3 arcsec: " in out and "frame 2 c: PSF of fwhm= 1.5 arcsec: " in out, out
    assert f"frame 1 b: PSF fitted to psf-image= {tmp_path / 'psf.fits'}: psf params " in out, out


@pytest.mark.fast
def test_a_refused_input_gets_its_error_line_alone(tmp_path):
    """Warnings wait until every check that can refuse has passed: a refusal is one line, not a warning first."""
    fits.PrimaryHDU(own_image(), header=tan_header(1.0)).writeto(tmp_path / "image.fits")
    argv = ["--pretrained", "cpu", "--input", str(tmp_path / "image.fits"), "--background", str(BACKGROUND * 6)]
    status, out, err = run_command("predict", [*argv, "--field-id", "500", "--out", str(tmp_path / "c.fits")])
    assert status == 2 and out == "", err
    assert one_error_line(err).startswith("error: field index 500 outside field bank")
    assert not (tmp_path / "c.fits").exists()
