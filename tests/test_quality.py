"""The quality flag from the forward model (npejax.cataloging.quality): residuals against known noise, the flags on
a missing source and on a detection where the image holds nothing, units, and the table columns."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import sys

import numpy as np
import pytest
from astropy.table import Table
from scipy import stats

from npejax import catalogs, schema
from npejax.cataloging import quality
from npejax.sim import fields as fields_lib
from npejax.sim import psf as psf_lib
from npejax.sim import render as render_lib

SHAPE = (40, 40)
FIELD = 7  # a field of the embedded bank


@pytest.fixture(scope="module")
def setup(load_config):
    """(config, bank, renderer (noiseless), sky nmgy [H, W], electrons per nmgy) of field FIELD."""
    config = load_config("cpu")
    config.render.noise = "none"
    bank = fields_lib.load_bank()
    renderer = render_lib.Renderer(bank, SHAPE, render_lib.RenderConfig.from_config(config.render))
    to_e = float(bank.to_electrons(FIELD))
    sky = bank.background_electrons(FIELD, (100, 200), SHAPE) / to_e
    return config, bank, renderer, sky, to_e


# two stars and a galaxy of the flag's own fixed shape (the only galaxy the model can match exactly)
SOURCES = dict(x=[10.3, 28.6, 20.1], y=[12.7, 25.2, 30.4], flux=[30.0, 6.0, 12.0], is_galaxy=[False, False, True])


def _scene(setup, rng, sources=SOURCES):
    """(image [1, H, W] nmgy with Gaussian noise of the Poisson variance, background [1, H, W], psf [1, 6])."""
    config, bank, renderer, sky, to_e = setup
    shape = quality.galaxy_shape(config.prior)
    n = len(sources["x"])
    catalog = {k: np.asarray(v) for k, v in sources.items()}
    catalog.update({k: np.full(n, v) for k, v in shape.items()}, n_sources=n)
    expected = renderer.source_electrons(catalog, FIELD) + sky * to_e  # electrons
    counts = expected + np.sqrt(expected) * rng.standard_normal(SHAPE)
    image = (counts - sky * to_e) / to_e
    return image[None], sky[None], bank.psf_params[FIELD][None]


def _table(sources=SOURCES, image=0):
    n = len(sources["x"])
    return catalogs.prediction_table(
        dict(
            image=np.full(n, image),
            x=np.asarray(sources["x"]),
            y=np.asarray(sources["y"]),
            flux=np.asarray(sources["flux"]),
            prob_source=np.ones(n),
            prob_galaxy=np.asarray(sources["is_galaxy"], float),
        )
    )


def _z(setup, images, background, psf, table, model_error=True):
    config, _, _, _, to_e = setup
    args = quality._check_arrays(images, background, psf, to_e, None)
    images, background, psf, to_e, _ = args
    stars, galaxies, ratio = quality.model_images(images, background, psf, to_e, table, config)
    if not model_error:
        return (images - stars - galaxies) / np.sqrt((stars + galaxies + background) / to_e[:, None, None]), ratio
    return quality.residuals(images, stars, galaxies, background, to_e), ratio


@pytest.mark.fast
def test_the_true_catalog_leaves_residuals_distributed_as_n01(setup):
    rng = np.random.default_rng(0)
    images, background, psf = _scene(setup, rng)
    z, ratio = _z(setup, images, background, psf, _table(), model_error=False)
    z = z.ravel()
    # Kolmogorov-Smirnov against N(0, 1), and the mean of z^2 inside chi^2's central 99.8% for the pixel count
    # (three fitted amplitudes and galaxy radii cost a few of 1600 degrees of freedom)
    assert stats.kstest(z, "norm").pvalue > 0.01
    lo, hi = stats.chi2.ppf([0.001, 0.999], z.size) / z.size
    assert lo < np.mean(z**2) < hi
    np.testing.assert_allclose(ratio, 1.0, atol=0.1)  # the fitted fluxes are the true ones
    # with the model-error terms (the flag's sigma) the residuals can only shrink
    z_flag, _ = _z(setup, images, background, psf, _table())
    assert np.mean(z_flag**2) <= np.mean(z**2) + 1e-12
    config, _, _, _, to_e = setup
    det, img = quality.quality(_table(), images, background, psf, to_e, config)
    assert not img["flag"][0] and not det["flag"].any()


@pytest.mark.fast
def test_units_nmgy_in_sigma_out(setup):
    """An empty catalog: z is the image over sqrt(background / electrons_per_nmgy); a 5-sigma excess is 5."""
    config, _, _, sky, to_e = setup
    sigma = np.sqrt(sky / to_e)  # nmgy
    images = np.zeros((1, *SHAPE))
    images[0, 3, 4] = 5 * sigma[3, 4]
    empty = _table(dict(x=[], y=[], flux=[], is_galaxy=[]))
    z, _ = _z(setup, images, sky[None], setup[1].psf_params[FIELD], empty)
    assert z[0, 3, 4] == pytest.approx(5.0)
    assert np.count_nonzero(z) == 1
    det, img = quality.quality(empty, images, sky[None], setup[1].psf_params[FIELD], to_e, config)
    assert img["chi2"][0] == pytest.approx(25.0 / z.size)
    # the same image in electrons-per-nmgy units ten times larger: the same flux is 10x more significant in counts
    _, img10 = quality.quality(empty, images, sky[None], setup[1].psf_params[FIELD], 100 * to_e, config)
    assert img10["chi2"][0] == pytest.approx(100 * img["chi2"][0])


@pytest.mark.fast
def test_a_missing_bright_source_flags_its_image(setup):
    config, _, _, _, to_e = setup
    images, background, psf = _scene(setup, np.random.default_rng(1))
    missing = {k: v[1:] for k, v in SOURCES.items()}  # the 30 nmgy star (r 18.8) not in the catalog
    _, full = quality.quality(_table(), images, background, psf, to_e, config)
    _, without = quality.quality(_table(missing), images, background, psf, to_e, config)
    assert not full["flag"][0]
    assert without["flag"][0] and without["chi2"][0] > 3 * quality.THRESHOLDS.image


@pytest.mark.fast
def test_a_detection_on_empty_sky_is_flagged(setup):
    config, _, _, _, to_e = setup
    images, background, psf = _scene(setup, np.random.default_rng(2))
    spurious = {k: [*v, w] for (k, v), w in zip(SOURCES.items(), (33.0, 5.0, 10.0, False))}
    det, img = quality.quality(_table(spurious), images, background, psf, to_e, config)
    assert det["flag"].tolist() == [False, False, False, True]
    assert det["flux_ratio"][3] < quality.THRESHOLDS.flux_ratio  # the fit finds no light there
    assert not img["flag"][0]  # the image itself is explained


@pytest.mark.fast
def test_an_unexplained_bump_flags_the_detection_on_it(setup):
    """A cosmic-ray-like spike of a few pixels under a detection: the star cannot fit it."""
    config, _, _, _, to_e = setup
    images, background, psf = _scene(setup, np.random.default_rng(3))
    images = images.copy()
    images[0, 5, 30:32] += 3.0  # nmgy in two pixels: sharper than any PSF
    rows = {k: [*v, w] for (k, v), w in zip(SOURCES.items(), (31.0, 5.5, 6.0, False))}
    det, img = quality.quality(_table(rows), images, background, psf, to_e, config)
    assert det["flag"][3] and det["chi2"][3] > quality.THRESHOLDS.detection
    assert img["flag"][0]
    # a frame mask over the spike's pixels leaves them out (of the fit too): the image is explained, and the
    # detection on the spike is still flagged, now because the unmasked pixels hold no light for it
    mask = np.zeros(images.shape, bool)
    mask[0, 5, 30:32] = True
    det, img = quality.quality(_table(rows), images, background, psf, to_e, config, mask)
    assert not img["flag"][0]
    assert det["flag"].tolist() == [False, False, False, True] and det["flux_ratio"][3] < 0.1


@pytest.mark.fast
def test_add_quality_columns_on_a_predicted_table(setup, tmp_path):
    config, _, _, _, to_e = setup
    first, background, psf = _scene(setup, np.random.default_rng(4))
    empty_image = background * 0.0
    images = np.concatenate([first, empty_image])
    table = _table()
    table["image"] += 10  # a batch's global indices
    table, per_image = quality.add_quality_columns(
        table,
        images,
        np.concatenate([background, background]),
        np.concatenate([psf, psf]),
        to_e,
        config,
        image_offset=10,
    )
    for name in schema.QUALITY_COLUMNS:
        assert table[name].description == schema.QUALITY_COLUMNS[name][1]
    assert table["quality_flag"].dtype == bool and len(table) == 3
    assert table.meta["QTHRIMG"] == quality.THRESHOLDS.image and table.meta["QTHRRAT"] == quality.THRESHOLDS.flux_ratio
    assert per_image.colnames == list(schema.QUALITY_IMAGE_COLUMNS)
    assert per_image["image"].tolist() == [10, 11] and per_image["n_detections"].tolist() == [3, 0]
    assert np.all(table["image_quality_chi2"] == per_image["quality_chi2"][0])
    path = tmp_path / "catalog.fits"  # written and read back as FITS: the columns and thresholds survive
    table.write(path)
    back = Table.read(path)
    assert back["quality_flag"].tolist() == table["quality_flag"].tolist()
    assert back.meta["QTHRDET"] == quality.THRESHOLDS.detection


@pytest.mark.fast
@pytest.mark.parametrize(
    "change, fragment",
    [
        (dict(electrons_per_nmgy=0.0), "electrons_per_nmgy"),
        (dict(background=-1.0), "background"),
        (dict(psf_params=np.ones(5)), "psf_params"),
        (dict(image_offset=3), "table column image"),
    ],
)
def test_bad_inputs_are_refused_naming_them(setup, change, fragment):
    config, bank, _, sky, to_e = setup
    args = dict(
        images=np.zeros((1, *SHAPE)),
        background=sky,
        psf_params=bank.psf_params[FIELD],
        electrons_per_nmgy=to_e,
        image_offset=0,
    )
    args.update(change)
    with pytest.raises(ValueError, match=fragment):
        quality.quality(_table(), config=config, **args)


@pytest.mark.fast
def test_thresholds_are_checked():
    with pytest.raises(ValueError, match="flux_ratio"):
        quality.Thresholds(detection=5.0, image=1.4, flux_ratio=math.nan)
    assert dataclasses.asdict(quality.THRESHOLDS).keys() == {"detection", "image", "flux_ratio"}


def test_the_benchmarks_mismatched_psf_is_the_same_profile_twenty_percent_wider(root):
    """Not in the fast tier: loading the benchmark imports the network (JAX)."""
    bench_dir = os.path.join(root, "benchmarks")
    spec = importlib.util.spec_from_file_location("bench_quality_flag", os.path.join(bench_dir, "quality_flag.py"))
    bench = importlib.util.module_from_spec(spec)
    sys.path.insert(0, bench_dir)
    try:
        spec.loader.exec_module(bench)
    finally:
        sys.path.remove(bench_dir)
    params = fields_lib.load_bank().psf_params[:3]
    wide = bench.scaled_psf(params, bench.FWHM_SCALE)
    for p, q in zip(params, wide):
        assert psf_lib.fwhm_pixels(q) == pytest.approx(1.2 * psf_lib.fwhm_pixels(p), rel=1e-6)
        r = np.linspace(0, 10, 11)
        np.testing.assert_allclose(psf_lib.profile(1.2 * r, q, 1.2 * 25) * 1.44, psf_lib.profile(r, p, 25), rtol=1e-9)


@pytest.mark.fast
def test_non_finite_pixels_are_left_out_like_masked_ones(setup):
    config, _, _, _, to_e = setup
    images, background, psf = _scene(setup, np.random.default_rng(5))
    holes = images.copy()
    holes[0, 0:6, 0:6] = np.nan  # a block without data (masked.fill = "nan")
    mask = np.zeros(images.shape, bool)
    mask[0, 0:6, 0:6] = True
    det_nan, img_nan = quality.quality(_table(), holes, background, psf, to_e, config)
    det_mask, img_mask = quality.quality(_table(), images, background, psf, to_e, config, mask)
    assert img_nan["pixels"][0] == img_mask["pixels"][0] == SHAPE[0] * SHAPE[1] - 36
    np.testing.assert_allclose(img_nan["chi2"], img_mask["chi2"])
    np.testing.assert_allclose(det_nan["flux_ratio"], det_mask["flux_ratio"])


@pytest.mark.fast
def test_detections_under_a_mask_have_no_statistics(setup):
    config, _, _, _, to_e = setup
    images, background, psf = _scene(setup, np.random.default_rng(6))
    det, img = quality.quality(_table(), images, background, psf, to_e, config, np.ones(images.shape, bool))
    assert np.isnan(det["chi2"]).all() and np.isnan(det["flux_ratio"]).all() and not det["flag"].any()
    assert img["pixels"][0] == 0 and np.isnan(img["chi2"][0]) and not img["flag"][0]


# --- images of any size: crops of the calibration size (the commands' quality flag) ---------------------------


@pytest.mark.fast
def test_an_image_of_the_calibration_size_or_smaller_is_one_crop_with_the_same_numbers(setup):
    """crop_quality / add_crop_quality_columns on an image <= 80 x 80 give exactly quality / add_quality_columns
    (one crop, no margin), for each of a batch of images, masked pixels included."""
    config, _, _, _, to_e = setup
    first, background, psf = _scene(setup, np.random.default_rng(7))
    second, _, _ = _scene(setup, np.random.default_rng(8))
    images = np.concatenate([first, second])
    images[1, 0:4, 0:5] = np.nan
    mask = ~np.isfinite(images)
    table = _table({k: [*v, *v] for k, v in SOURCES.items()})
    table["image"] = np.repeat([4, 5], 3)  # a batch's global indices
    args = (images, np.concatenate([background] * 2), np.concatenate([psf] * 2), to_e, config, mask)
    want, want_image = quality.add_quality_columns(table.copy(), *args, image_offset=4)
    got, crops = quality.add_crop_quality_columns(table.copy(), *args, image_offset=4)
    for name in schema.QUALITY_COLUMNS:
        np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(want[name]), err_msg=name)
    assert crops["image"].tolist() == [0, 1] and crops["n_detections"].tolist() == [3, 3]
    np.testing.assert_array_equal(crops["chi2"].astype(np.float32), want_image["quality_chi2"])
    assert crops["pixels"].tolist() == want_image["quality_pixels"].tolist() == [1600, 1580]
    assert got.meta["QCROP"] == quality.CROP_SIZE and got.meta["QTHRIMG"] == quality.THRESHOLDS.image


@pytest.mark.fast
def test_crops_cover_an_image_and_each_detection_is_in_exactly_one():
    for size in (1, 79, 80, 81, 160, 161, 1000, 1489, 2048):
        starts, side = quality.crop_starts(size)
        assert side == min(size, quality.CROP_SIZE) and starts[0] == 0 and starts[-1] + side == size
        assert np.all(np.diff(starts) <= side) and np.all(np.diff(starts) > 0)  # no gap, no repeat
        assert len(starts) == math.ceil(size / quality.CROP_SIZE)
        position = np.random.default_rng(size).uniform(0, size, 500)
        k = quality.crop_of(position, starts, side)
        assert np.all((starts[k] <= position) & (position < starts[k] + side))  # a core that holds it


def _large_scene(setup, shape, sources, rng):
    """(images [1, H, W], background, psf) of ``sources`` (stars and the flag's galaxy) on field FIELD."""
    config, bank, _, _, to_e = setup
    renderer = render_lib.Renderer(bank, shape, render_lib.RenderConfig.from_config(config.render))
    n = len(sources["x"])
    catalog = {k: np.asarray(v) for k, v in sources.items()}
    catalog.update({k: np.full(n, v) for k, v in quality.galaxy_shape(config.prior).items()}, n_sources=n)
    sky = bank.background_electrons(FIELD, (0, 0), shape) / to_e
    expected = renderer.source_electrons(catalog, FIELD) + sky * to_e
    image = (expected + np.sqrt(expected) * rng.standard_normal(shape) - sky * to_e) / to_e
    return image[None], sky[None], bank.psf_params[FIELD][None]


@pytest.mark.fast
def test_a_hot_streak_flags_its_crop_and_the_detections_on_it(setup):
    """A 200 x 170 image of 40 sources in 9 crops of 80 x 80: clean, no crop and (almost) no detection is flagged,
    every detection is counted in one crop, and the statistics agree with the whole image's; a cosmic-ray-like
    streak across one crop flags that crop and the detections it crosses, not the others."""
    config, _, _, _, to_e = setup
    rng = np.random.default_rng(9)
    shape = (200, 170)
    sources = dict(
        x=rng.uniform(2, shape[1] - 2, 40),
        y=rng.uniform(2, shape[0] - 2, 40),
        flux=rng.uniform(3, 40, 40),
        is_galaxy=rng.uniform(size=40) < 0.3,
    )
    images, background, psf = _large_scene(setup, shape, sources, rng)
    table = _table(sources)
    det, crops = quality.crop_quality(table, images, background, psf, to_e, config)
    assert len(crops["chi2"]) == 9 and crops["n_detections"].sum() == 40
    assert np.all((crops["row"][det["crop"]] <= sources["y"]) & (sources["y"] < crops["row"][det["crop"]] + 80))
    assert np.all((crops["col"][det["crop"]] <= sources["x"]) & (sources["x"] < crops["col"][det["crop"]] + 80))
    assert not crops["flag"].any() and det["flag"].sum() <= 1
    whole, _ = quality.quality(table, images, background, psf, to_e, config)  # the margin models the neighbours
    np.testing.assert_allclose(det["chi2"], whole["chi2"], rtol=0.02)
    np.testing.assert_allclose(det["flux_ratio"], whole["flux_ratio"], rtol=0.02)

    streaked = images.copy()
    rows = np.arange(100, 140)
    streaked[0, rows, (rows * 0.6).astype(int)] += 2.0  # 40 hot pixels along a line (~70 sigma each)
    hit = np.flatnonzero(
        np.min(np.hypot(sources["x"][:, None] - (rows * 0.6 + 0.5), sources["y"][:, None] - (rows + 0.5)), axis=1) < 3
    )
    det, crops = quality.crop_quality(table, streaked, background, psf, to_e, config)
    struck = (crops["row"] <= 139) & (crops["row"] + 80 > 100) & (crops["col"] <= 84) & (crops["col"] + 80 > 60)
    assert np.all(crops["flag"][struck]) and not crops["flag"][~struck].any()
    assert hit.size >= 1 and np.all(det["flag"][hit])


@pytest.mark.fast
def test_a_crop_crowded_beyond_max_detections_is_skipped(setup):
    """A crop whose modelled window holds more than max_detections rows is not fitted (an untrained network's row
    per tile would cost minutes): NaN statistics, no flag, marked skipped; at the limit it is checked as ever."""
    config, _, _, _, to_e = setup
    images, background, psf = _scene(setup, np.random.default_rng(10))
    at_limit, _ = quality.crop_quality(_table(), images, background, psf, to_e, config, max_detections=3)
    unlimited, crops = quality.crop_quality(_table(), images, background, psf, to_e, config)
    np.testing.assert_array_equal(at_limit["chi2"], unlimited["chi2"])
    assert not crops["skipped"].any()
    det, crops = quality.crop_quality(_table(), images, background, psf, to_e, config, max_detections=2)
    assert crops["skipped"].tolist() == [True] and np.isnan(crops["chi2"]).all() and not crops["flag"].any()
    assert np.isnan(det["chi2"]).all() and not det["flag"].any() and crops["n_detections"].tolist() == [3]
