"""Source Extractor baseline (npejax.evaluation.baseline) and per-source SNR (npejax.evaluation.snr)."""

import dataclasses

import numpy as np
import pytest
import threadpoolctl
from astropy import table as table_lib
from scipy import optimize, special, stats

from configs import cpu_small, default
from npejax import catalogs as catalog
from npejax.evaluation import baseline, snr
from npejax.schema import CATALOG_KEYS
from npejax.sim import fields, pipeline, render

pytestmark = pytest.mark.fast  # the whole file is in the fast tier

COLUMNS = ["image", "x", "y", "flux", "mag", "flux_err", "flag"]


@pytest.fixture(scope="module")
def bank():
    return fields.load_bank()


@pytest.fixture(scope="module")
def render_config():
    """The default render settings (configs/default.py)."""
    return render.RenderConfig.from_config(default.get_config().render)


@pytest.fixture(scope="module")
def renderer(bank, render_config):
    """80 x 80 images of the embedded bank with the default render settings."""
    return render.Renderer(bank, (80, 80), render_config)


def _gaussian_image(xs, ys, fluxes, sigma=1.5, shape=(80, 80)):
    """Stars as pixel-integrated circular Gaussians at catalog positions (pixel (i, j) = [i, i+1) x [j, j+1))."""
    edges_r, edges_c = np.arange(shape[0] + 1.0), np.arange(shape[1] + 1.0)
    image = np.zeros(shape)
    for x, y, f in zip(xs, ys, fluxes):
        cdf_r = 0.5 * (1 + special.erf((edges_r - y) / (np.sqrt(2) * sigma)))
        cdf_c = 0.5 * (1 + special.erf((edges_c - x) / (np.sqrt(2) * sigma)))
        image += f * np.outer(np.diff(cdf_r), np.diff(cdf_c))
    return image


def _match(tx, ty, px, py, slack=1.0):
    """Indices (true, predicted) of the min-total-distance matching, pairs closer than ``slack`` only."""
    if len(tx) == 0 or len(px) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    d = np.hypot(np.subtract.outer(tx, px), np.subtract.outer(ty, py))
    rows, cols = optimize.linear_sum_assignment(np.where(d < slack, d, 1e6))
    keep = d[rows, cols] < slack
    return rows[keep], cols[keep]


# --- sep baseline ---------------------------------------------------------------------------------------


def test_gaussian_stars_positions_and_fluxes():
    """Isolated bright stars: positions within 0.2 pixel of the arrays' (sep's pixel centres are at integers,
    as the table's, the arrays' at half-integers: a wrong 0.5 would be off by 0.71 pixel) and flux within 5%."""
    xs = np.array([12.3, 40.0, 66.71, 25.5, 55.18])
    ys = np.array([15.8, 20.25, 13.0, 60.4, 64.93])
    fluxes = np.array([40.0, 80.0, 150.0, 300.0, 600.0])
    background = np.full((80, 80), 0.7)  # nmgy
    per_e = 0.005 / 4.7  # calibration / gain
    rng = np.random.default_rng(3)
    image = _gaussian_image(xs, ys, fluxes) + np.sqrt(background * per_e) * rng.standard_normal((80, 80))

    table = baseline.sep_catalog(image[None].astype(np.float32), background[None], per_e)
    assert table.colnames == COLUMNS
    assert len(table) == len(xs)
    rows, cols = _match(xs, ys, catalog.array_xy(table)[0], catalog.array_xy(table)[1])
    assert len(rows) == len(xs)
    dist = np.hypot(xs[rows] - catalog.array_xy(table)[0][cols], ys[rows] - catalog.array_xy(table)[1][cols])
    assert dist.max() < 0.2
    ratio = np.asarray(table["flux"])[cols] / fluxes[rows]
    assert np.all(np.abs(ratio - 1) < 0.05), ratio
    assert np.all(np.asarray(table["flux_err"]) > 0)
    np.testing.assert_allclose(table["mag"], catalog.flux_to_mag(table["flux"]), rtol=1e-6)
    # sep needs native byte order: a big-endian float32 copy gives the same catalog
    swapped = baseline.sep_catalog(image[None].astype(">f4"), background[None].astype(">f4"), per_e)
    np.testing.assert_allclose(swapped["flux"], table["flux"], rtol=1e-6)
    # isophotal positions obey the same convention
    iso = baseline.sep_catalog(image[None], background[None], per_e, centroid="isophotal")
    rows, cols = _match(xs, ys, catalog.array_xy(iso)[0], catalog.array_xy(iso)[1])
    assert len(rows) == len(xs)
    assert np.hypot(xs[rows] - catalog.array_xy(iso)[0][cols], ys[rows] - catalog.array_xy(iso)[1][cols]).max() < 0.2


def test_rendered_sdss_stars(bank, renderer):
    """Stars drawn by npejax's renderer (SDSS PSF with extended wings), with noise, via bank lookup.

    FLUX_AUTO (Kron factor 2.5) misses the far PSF wings: measured 95-97% of the flux without noise."""
    field = 42
    r = renderer
    xs, ys = np.array([20.3, 60.7, 20.5, 59.9]), np.array([20.6, 19.2, 61.1, 60.4])
    fluxes = np.array([50.0, 100.0, 200.0, 400.0])
    cat = dict(n_sources=4, x=xs, y=ys, flux=fluxes, is_galaxy=np.zeros(4, bool))
    to_e = float(bank.to_electrons(field))
    sky = bank.background_electrons(field, (300, 400), (80, 80))
    expected = r.source_electrons(cat, field) + sky
    counts = expected + np.sqrt(expected) * np.random.default_rng(0).standard_normal(expected.shape)
    images, background = ((counts - sky) / to_e)[None], (sky / to_e)[None]

    table = baseline.sep_catalog(images, background, field_id=[field], bank=bank, image_offset=7)
    same = baseline.sep_catalog(images, background, 1.0 / to_e, image_offset=7)
    np.testing.assert_array_equal(table["flux"], same["flux"])
    assert np.all(table["image"] == 7)
    rows, cols = _match(xs, ys, catalog.array_xy(table)[0], catalog.array_xy(table)[1])
    assert len(table) == 4 and len(rows) == 4
    dist = np.hypot(xs[rows] - catalog.array_xy(table)[0][cols], ys[rows] - catalog.array_xy(table)[1][cols])
    assert dist.max() < 0.2
    ratio = np.asarray(table["flux"])[cols] / fluxes[rows]
    assert np.all((ratio > 0.93) & (ratio < 1.01)), ratio


def test_pure_noise_and_zero_images():
    rng = np.random.default_rng(11)
    background = np.full((6, 80, 80), 0.7)
    per_e = 0.001
    noise = np.sqrt(background * per_e) * rng.standard_normal(background.shape)
    table = baseline.sep_catalog(noise, background, per_e)
    assert len(table) <= 1  # about 0 false detections per pure-noise image at 1.5 sigma, minarea 5
    assert table.colnames == COLUMNS

    zero = baseline.sep_catalog(np.zeros((3, 80, 80), np.float32), background[:3], per_e)
    assert len(zero) == 0 and zero.colnames == COLUMNS
    assert zero["image"].dtype == np.int64 and zero["flux"].dtype == np.float32
    # zero variance too (all pixels masked) and a single 2-D image
    assert len(baseline.sep_catalog(np.zeros((80, 80)), np.zeros((80, 80)), per_e)) == 0
    # the empty table stacks with a non-empty one
    bright = baseline.sep_catalog(_gaussian_image([40.2], [40.7], [100.0])[None], background[:1], per_e)
    assert len(table_lib.vstack([zero, bright])) == 1
    with pytest.raises(ValueError):
        baseline.sep_catalog(noise, background, None)


@pytest.fixture(scope="module")
def sim_batches(bank):
    spec = pipeline.SimulationSpec.from_config(cpu_small.get_config(), seed=2024, batch_size=32, bank=bank)
    with threadpoolctl.threadpool_limits(1):  # the renderer's small matrix products hate thread contention
        batches = [pipeline.simulate_batch(spec, i) for i in range(6)]
    return spec, batches


def test_recall_on_simulated_images(sim_batches):
    """Sanity: bright stars are found (recall > 0.9 for r < 19, match within 1 pixel) and most detections
    are real. Stars centred within 1.5 pixels of the edge are left out: half their light is outside the
    image, which pulls any centroid inward by about a pixel."""
    spec, batches = sim_batches
    found, bright, real, detected = 0, 0, 0, 0
    for k, batch in enumerate(batches):
        table = baseline.sep_catalog_batch(batch, spec.bank, image_offset=32 * k)
        assert np.all(np.diff(table["image"]) >= 0)
        for i, n in enumerate(batch["n_sources"]):
            sel = np.asarray(table["image"]) == 32 * k + i
            px, py = (v[sel] for v in catalog.array_xy(table))  # the table's 0-based centres as the arrays'
            pmag = np.asarray(table["mag"])[sel]
            tx, ty = batch["x"][i, :n], batch["y"][i, :n]
            rows, cols = _match(tx, ty, px, py)
            matched = np.isin(np.arange(n), rows)
            inside = (np.minimum(tx, ty) > 1.5) & (np.maximum(tx, ty) < 80 - 1.5)
            star19 = ~batch["is_galaxy"][i, :n] & (catalog.flux_to_mag(batch["flux"][i, :n]) < 19) & inside
            found += int(matched[star19].sum())
            bright += int(star19.sum())
            bright_est = np.nan_to_num(pmag, nan=99.0) < 21
            real += int(np.isin(np.arange(len(px)), cols)[bright_est].sum())
            detected += int(bright_est.sum())
    assert bright >= 15
    print(f"sep recall r<19 stars {found}/{bright}, purity est r<21 {real}/{detected}")
    assert found / bright > 0.9, (found, bright)
    assert real / detected > 0.85, (real, detected)


# --- SNR ------------------------------------------------------------------------------------------------


def _snr_batch(field, sources, background_nmgy=0.7, max_sources=4):
    """One image of ``field`` with a flat background and the given sources (dicts of catalog values)."""
    batch = {key: np.zeros((1, max_sources), bool if key == "is_galaxy" else np.float32) for key in CATALOG_KEYS}
    for s, source in enumerate(sources):
        for key, value in source.items():
            batch[key][0, s] = value
    batch["n_sources"] = np.array([len(sources)], np.int32)
    batch["field_id"] = np.array([field], np.int32)
    batch["background"] = np.full((1, 80, 80), background_nmgy, np.float32)
    batch["images"] = np.zeros((1, 80, 80), np.float32)
    return batch


GALAXY = dict(is_galaxy=True, disk_frac=0.6, angle=0.7, disk_q=0.5, bulge_q=0.8, disk_a=1.5, bulge_a=0.8)


def test_brighter_copy_has_higher_snr(renderer):
    star, star4 = dict(x=20.3, y=20.7, flux=3.0), dict(x=60.1, y=60.6, flux=12.0)
    gal = dict(x=20.3, y=60.7, flux=3.0, **GALAXY)
    gal4 = dict(x=60.2, y=20.4, flux=12.0, **GALAXY)
    values = snr.source_snr(_snr_batch(5, [star, star4, gal, gal4]), renderer)
    assert values.shape == (1, 4)
    assert values[0, 1] > values[0, 0] > 0
    assert values[0, 3] > values[0, 2] > 0
    assert values[0, 0] > values[0, 2]  # same flux: the compact star beats the extended galaxy


def test_star_snr_matches_hand_computation(bank, renderer, render_config):
    field, flux, sky_nmgy, x, y = 17, 4.0, 0.7, 40.3, 39.6
    batch = _snr_batch(field, [dict(x=x, y=y, flux=flux)], background_nmgy=sky_nmgy)
    value = snr.source_snr(batch, renderer)[0, 0]

    to_e = float(bank.to_electrons(field))
    sky_e = np.float32(sky_nmgy) * to_e
    hand = {}
    for method in ("kspace", "drawimage"):  # the renderer's own path, and GalSim's drawImage
        config = dataclasses.replace(render_config, noise="none", method=method)
        source = dict(n_sources=1, x=[x], y=[y], flux=[flux], is_galaxy=[False])
        stamp = render.Renderer(bank, (80, 80), config).source_electrons(source, field)
        footprint = stamp > 0.1 * np.sqrt(sky_e)
        c, b = stamp[footprint].sum(), sky_e * footprint.sum()
        hand[method] = (c / np.sqrt(c + b), c, footprint.sum())
    assert value == pytest.approx(hand["kspace"][0], rel=1e-6)
    assert value == pytest.approx(hand["drawimage"][0], rel=0.02)
    counts = snr.footprint_counts(batch, renderer)
    assert counts["npix"][0, 0] == hand["kspace"][2]
    assert counts["C"][0, 0] == pytest.approx(hand["kspace"][1], rel=1e-6)
    # the footprint holds most of the star's electrons, and the sky makes the SNR smaller than sqrt(C)
    assert counts["C"][0, 0] > 0.9 * flux * to_e
    assert value < 0.9 * np.sqrt(counts["C"][0, 0])
    # a detector-noise term lowers the SNR; a higher footprint threshold shrinks the footprint
    assert snr.source_snr(batch, renderer, extra_variance=25.0)[0, 0] < value
    assert snr.footprint_counts(batch, renderer, footprint_threshold=1.0)["npix"][0, 0] < counts["npix"][0, 0]


def test_padding_and_zero_flux_give_nan(renderer):
    batch = _snr_batch(3, [dict(x=30.0, y=30.0, flux=5.0), dict(x=50.0, y=50.0, flux=0.0)])
    values = snr.source_snr(batch, renderer)
    assert np.isfinite(values[0, 0]) and values[0, 0] > 0
    assert np.all(np.isnan(values[0, 1:]))  # zero flux, then padding
    # a source far too faint to change any pixel by 0.1 sigma has an empty footprint: SNR 0
    faint = snr.source_snr(_snr_batch(3, [dict(x=30.0, y=30.0, flux=1e-4)]), renderer)
    assert faint[0, 0] == 0.0


def test_snr_on_simulated_batch(sim_batches):
    spec, batches = sim_batches
    batch = batches[0]
    values = snr.source_snr(batch, spec)
    valid = np.arange(values.shape[1])[None, :] < batch["n_sources"][:, None]
    assert np.all(np.isnan(values[~valid]))
    assert np.all(np.isfinite(values[valid]) & (values[valid] >= 0))
    # a renderer with the spec's bank and settings gives the same values; a bank alone has no settings
    np.testing.assert_allclose(
        snr.source_snr(batch, render.Renderer(spec.bank, (80, 80), spec.render)), values, rtol=1e-6
    )
    with pytest.raises(TypeError, match="SimulationSpec or a Renderer"):
        snr.source_snr(batch, spec.bank)
    # stars: SNR rises with flux (rank correlation; fields differ in sky and seeing)
    stars = valid & ~batch["is_galaxy"]

    assert stats.spearmanr(batch["flux"][stars], values[stars]).statistic > 0.9
