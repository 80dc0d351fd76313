"""The field bank that spans the survey (npejax.sim.survey_bank) against its stated facts, its reproducibility,
that the renderer draws every kind of its PSFs with the flux conserved, the distance from a bank
(FieldBank.distance), and that the default bank is unchanged."""

import contextlib
import dataclasses
import io

import numpy as np
import pytest
from conftest import one_error_line
from scipy import stats

from configs import default  # the repository root is on sys.path (conftest.py)
from npejax import schema
from npejax import synthetic_bank as synthetic_bank_command
from npejax.datasets import writer
from npejax.sim import fields, pipeline, psf, render, survey_bank

pytestmark = pytest.mark.fast  # the whole file is in the fast tier

# bank_sha256 of the shipped default bank (npejax/assets/synthetic_sdss_r_bank.npz): it must not change
DEFAULT_BANK_SHA256 = "25e976386657bb1dd84525b316ad7de41b5740fd349daef7fc26689d8998efd5"
# bank_sha256 of make_survey_bank(5, seed=0): the generator's arrays, pinned bit for bit (float64, this platform)
SURVEY_5_SHA256 = "65d3b8ead645857cddb2f71ca6445c9e339e45929aad9e3d19b93dff52aaf46d"


@pytest.fixture(scope="module")
def bank():
    return fields.load_bank("survey")


@pytest.fixture(scope="module")
def summary(bank):
    return survey_bank.summary(bank)


def _real_rows(band=None):
    """The real psField rows the ranges come from, without the failed z fit of 94-1-12 (beta at its bound 10)."""
    rows = [p for field in survey_bank.REAL_PSFIELD_ROWS.values() for p, _ in field if p[3] < 10]
    if band is not None:
        rows = [field[band][0] for field in survey_bank.REAL_PSFIELD_ROWS.values()]
    return np.array(rows)


def test_survey_bank_is_embedded_and_labelled_synthetic(bank):
    assert len(bank) == 500 and bank.synthetic and "SYNTHETIC" in bank.description
    assert bank.names[0] == "survey-0000" and bank.source.endswith(fields.SURVEY_BANK_FILE)
    assert writer.bank_info(bank)["source"] == "survey"  # a dataset's manifest names it, like "synthetic"


def test_default_bank_is_unchanged():
    old = fields.load_bank()
    assert writer.bank_sha256(old) == DEFAULT_BANK_SHA256
    assert writer.bank_sha256(fields.load_bank("synthetic")) == DEFAULT_BANK_SHA256
    assert writer.bank_info(old)["source"] == "synthetic" and default.get_config().fields.bank == "synthetic"


def test_shipped_survey_bank_is_rebuilt_exactly(bank):
    rebuilt = survey_bank.make_survey_bank(500, seed=0)
    np.testing.assert_array_equal(rebuilt.psf_params, bank.psf_params)
    np.testing.assert_array_equal(rebuilt.sky_grid.astype(np.float32), bank.sky_grid)  # saved as float32
    np.testing.assert_array_equal(rebuilt.gain, bank.gain)
    np.testing.assert_array_equal(rebuilt.calibration, bank.calibration)
    assert rebuilt.reference == bank.reference and rebuilt.description == bank.description


def _command(*argv) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``python -m npejax.synthetic_bank ARGV``, run in-process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = synthetic_bank_command.main(["synthetic_bank", *argv])
    return status, out.getvalue(), err.getvalue()


def test_survey_bank_command_writes_the_same_bytes(tmp_path):
    assert writer.bank_sha256(survey_bank.make_survey_bank(5, seed=0)) == SURVEY_5_SHA256
    for name in ("a.npz", "b.npz"):
        status, out, _ = _command("--bank", "survey", "--num-fields", "5", "--out", str(tmp_path / name))
        assert status == 0 and "psf_width_arcsec" in out
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    loaded = fields.load_bank(tmp_path / "a.npz")
    np.testing.assert_array_equal(loaded.psf_params, survey_bank.make_survey_bank(5, seed=0).psf_params)
    status, _, err = _command("--bank", "real", "--num-fields", "5", "--out", str(tmp_path / "c.npz"))
    assert status == 2 and "--bank" in one_error_line(err) and not (tmp_path / "c.npz").exists()


def test_width_and_sky_follow_the_dr1_quartiles(summary):
    np.testing.assert_allclose(summary["psf_width_arcsec"]["quartiles"], survey_bank.WIDTH_QUARTILES_ARCSEC, atol=0.02)
    np.testing.assert_allclose(
        summary["sky_mag_arcsec2"]["quartiles"], survey_bank.SKY_QUARTILES_MAG_ARCSEC2, atol=0.03
    )
    lo, hi = summary["psf_width_arcsec"]["range"]
    assert lo < 0.9 and hi > 2.4  # the widened range is populated at both ends
    assert summary["fwhm_arcsec"]["range"][0] < 0.85  # below the narrowest real r-band FWHM found (2583-2-136)
    assert summary["sky_mag_arcsec2"]["range"][0] < 19.6 and summary["sky_mag_arcsec2"]["range"][1] > 21.7


def test_width_is_the_psfield_effective_width():
    """On the real psField rows (but the failed z fit): the two-Gaussian effective width is within 3.2% of the
    recorded psf_width."""
    for field in survey_bank.REAL_PSFIELD_ROWS.values():
        for params, psf_width in (row for row in field if row[0][3] < 10):
            assert survey_bank.effective_width_arcsec(params) == pytest.approx(psf_width, rel=0.033)


def test_drawn_laws_match_their_cdfs(bank):
    """Each drawn quantity against the law the module states (Kolmogorov-Smirnov, strata make it tight)."""
    width = survey_bank.effective_width_arcsec(bank.psf_params)
    cdf = lambda x: survey_bank.mixture_cdf(  # noqa: E731
        x, survey_bank.WIDTH_QUARTILES_ARCSEC, survey_bank.WIDTH_RANGE_ARCSEC, log=True
    )
    assert stats.kstest(width, cdf).statistic < 0.01
    p = bank.psf_params
    lo, hi = np.log(survey_bank.SIGMA_RATIO_RANGE)
    assert stats.kstest(np.log(p[:, 1] / p[:, 0]), stats.uniform(lo, hi - lo).cdf).statistic < 0.01


def test_the_six_parameters_vary_and_span_the_real_rows(bank, summary):
    p = bank.psf_params
    no_wing = p[:, 5] < 1e-6
    assert no_wing.mean() == pytest.approx(survey_bank.NO_WING_FRACTION)
    np.testing.assert_array_equal(p[no_wing, 2:4], np.tile([5.0, 3.0], (no_wing.sum(), 1)))
    real = _real_rows()
    derived = {
        "sigma2_over_sigma1": real[:, 1] / real[:, 0],
        "outer_gaussian_flux_ratio": real[:, 4] * (real[:, 1] / real[:, 0]) ** 2,
        "psf_b": real[:, 4],
        "psf_beta": real[:, 3],
        "psf_sigmap": real[:, 2],
        "psf_p0": real[:, 5],
        "wing_flux_fraction": [psf.term_fluxes(r)[2] / psf.term_fluxes(r).sum() for r in real],
    }
    for key, values in derived.items():
        lo, hi = summary[key]["range"]
        assert lo <= np.min(values) and np.max(values) <= hi, f"{key}: real {values} outside the bank's {lo}..{hi}"
    # not a one-parameter family: the shape parameters spread at a fixed width
    assert np.ptp(p[:, 1] / p[:, 0]) > 1.5 and np.ptp(np.log(p[~no_wing, 5])) > 2 and np.ptp(p[:, 3]) > 1.5


def test_independent_quantities_are_uncorrelated(bank):
    p = bank.psf_params
    wing = ~(p[:, 5] < 1e-6)
    columns = {
        "width": survey_bank.effective_width_arcsec(p),
        "sky": survey_bank.sky_mag_arcsec2(bank),
        "ratio": p[:, 1] / p[:, 0],
        "outer flux": p[:, 4] * (p[:, 1] / p[:, 0]) ** 2,
        "beta": p[:, 3],
        "sigmap": p[:, 2],
        "gradient": np.ptp(bank.sky_grid, axis=(1, 2)) / bank.sky_grid.mean(axis=(1, 2)),
    }
    names = list(columns)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            rho = stats.spearmanr(columns[a][wing], columns[b][wing]).statistic
            assert abs(rho) < 0.15, f"{a} and {b} correlate: Spearman {rho:.3f}"


def _extreme_fields(bank) -> list[int]:
    """Fields at the edges of each quantity: the PSFs most likely to trouble the renderer."""
    p = bank.psf_params
    width = survey_bank.effective_width_arcsec(p)
    wing = [psf.term_fluxes(r)[2] / psf.term_fluxes(r).sum() for r in p]
    picks = [np.argmin(width), np.argmax(width), np.argmax(wing), np.argmin(p[:, 3]), np.argmax(p[:, 2])]
    picks += [np.argmax(p[:, 4]), np.argmax(p[:, 5]), int(np.flatnonzero(p[:, 5] < 1e-6)[0]), bank.reference]
    return sorted({int(i) for i in picks})


def test_every_kind_of_psf_renders_with_its_flux(bank):
    """One noiseless star per extreme field, drawn by the default renderer: flux conserved, the shape the
    six-parameter formula's (the peak pixel's share of the flux within 2%)."""
    picks = _extreme_fields(bank)
    sub = bank.subset(picks)
    config = dataclasses.replace(render.RenderConfig.from_config(default.get_config().render), noise="none")
    renderer = render.Renderer(sub, (80, 80), config)
    n = len(picks)
    cat = {k: np.zeros((n, 1), bool if k == "is_galaxy" else np.float32) for k in schema.CATALOG_KEYS}
    cat["n_sources"] = np.ones(n, np.int32)
    cat["x"][:], cat["y"][:], cat["flux"][:] = 40.5, 40.5, 10.0
    images, _ = renderer.render(cat, np.arange(len(picks)), np.tile([[300, 400]], (n, 1)), np.random.default_rng(0))
    assert np.all(np.isfinite(images))
    np.testing.assert_allclose(images.sum(axis=(1, 2)), 10.0, rtol=0.01)
    for k, params in enumerate(sub.psf_params):
        fine = (np.arange(10) + 0.5) / 10 - 0.5
        yy, xx = np.meshgrid(fine, fine, indexing="ij")
        peak = psf.profile(np.hypot(xx, yy), params).mean() * 10.0
        assert images[k, 40, 40] == pytest.approx(peak, rel=0.02), f"field {sub.names[k]}"


# --- distance from the bank -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["synthetic", "survey"])
def test_bank_fields_are_near_their_own_bank(name):
    b = fields.load_bank(name)
    own = b.distance(b.psf_params, b.background_nmgy())
    assert own.shape == (len(b),) and np.median(own) < 3
    threshold = b.distance_threshold()
    assert threshold == pytest.approx(np.percentile(own, 99.9)) and np.sum(own > threshold) <= 1
    assert b.distance(b.psf_params[b.reference], b.background_nmgy()[b.reference]) < 2


@pytest.mark.parametrize("name", ["synthetic", "survey"])
def test_narrow_psf_and_bright_sky_are_far(name):
    b = fields.load_bank(name)
    ref, sky = b.psf_params[b.reference], float(np.median(b.background_nmgy()))
    narrow = ref.copy()
    narrow[:2] *= 0.5 / survey_bank.effective_width_arcsec(ref)  # an effective width of 0.5 arcsec
    threshold = b.distance_threshold()
    assert b.distance(narrow, sky) > 1.25 * threshold
    assert b.distance(ref, 10 * sky) > 1.25 * threshold
    assert b.distance(ref, sky) < threshold


def test_real_psfield_rows_are_outside_the_default_bank_and_inside_the_survey_bank(bank):
    """The r-band rows of the two real psFields: far from the one-parameter family, within the survey bank."""
    old = fields.load_bank()
    real = _real_rows(band=survey_bank.R_BAND)
    sky = float(np.median(bank.background_nmgy()))
    assert np.all(old.distance(real, sky) > 5 * old.distance_threshold())
    assert np.all(bank.distance(real, sky) < bank.distance_threshold())


def test_distance_shapes_and_refusals(bank):
    p = bank.psf_params[:3]
    images = np.broadcast_to(bank.background_nmgy()[:3, None, None], (3, 8, 8))
    np.testing.assert_allclose(bank.distance(p, images), bank.distance(p, bank.background_nmgy()[:3]))
    assert isinstance(bank.distance(p[0], 0.7), float) and bank.distance(p, 0.7).shape == (3,)
    with pytest.raises(ValueError, match="background must be positive"):
        bank.distance(p, -1.0)
    with pytest.raises(ValueError, match="distance: psf_params.*psf_beta"):
        bank.distance([1.0, 2.0, 2.0, 1.5, 0.1, 0.01], 0.7)


def test_config_names_the_survey_bank(tiny_config):
    """``--config.fields.bank=survey``: the simulator draws its fields from the survey bank, and a dataset's
    manifest records it by that name."""
    config = tiny_config()
    config.fields.bank = "survey"
    spec = pipeline.SimulationSpec.from_config(config, seed=1, batch_size=4)
    assert spec.bank.names[0] == "survey-0000" and writer.bank_info(spec.bank)["source"] == "survey"
    batch = pipeline.simulate_batch(spec, 0)
    assert np.all(np.isfinite(batch["images"])) and np.all(batch["background"] > 0)
    np.testing.assert_array_equal(batch["psf_params"], spec.bank.psf_params[batch["field_id"]].astype(np.float32))
