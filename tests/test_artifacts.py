"""Artifacts of real frames (npejax.sim.artifacts): each against physics or an independent count, the batch keys,
byte-identical batches with everything off, determinism by (seed, i), datasets and configs."""

import dataclasses
import glob
import importlib
import json
import os

import numpy as np
import pytest
from scipy import ndimage, stats

from configs import default  # the repository root is on sys.path (conftest.py)
from npejax import configuration, schema
from npejax.datasets import Dataset, write_dataset
from npejax.sim import artifacts, fields, pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _spec_config(**sections):
    """configs/default.py's artifacts with the given sections' keys overridden (``{"satellite": {"rate": 1}}``)."""
    config = default.get_config()
    for name, values in sections.items():
        for key, value in values.items():
            config.artifacts[name][key] = value
    return config


@pytest.fixture(scope="module")
def bank():
    return fields.load_bank()


def _sim_spec(bank, config, batch_size=3, seed=5):
    return pipeline.SimulationSpec.from_config(config, seed=seed, batch_size=batch_size, bank=bank)


# --- each artifact alone ----------------------------------------------------------------------------------------


@pytest.mark.fast
def test_saturation_conserves_charge_clips_at_the_full_well_and_labels_exactly_what_changed():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:40] + 0.5
    counts = 600 + rng.normal(0, 25, (64, 40))
    counts += 2e7 * np.exp(-((yy - 31.0) ** 2 + (xx - 20.3) ** 2) / (2 * 1.5**2)) / (2 * np.pi * 1.5**2)
    full_well = 1.2e5
    out, label = artifacts.saturate(counts, full_well)
    assert counts.max() > 2 * full_well  # the test star saturates
    assert out.max() <= full_well
    np.testing.assert_allclose(out.sum(), counts.sum(), rtol=1e-12)  # the bleed stays inside the image here
    np.testing.assert_array_equal(label, out != counts)
    # the bleed runs along the columns: every labelled column holds a vertical run longer than the star's core
    rows = np.flatnonzero(label[:, 20])
    assert rows.size > 10 and np.all(np.diff(rows) == 1)
    assert label[:, :15].sum() == 0 and label[:, 26:].sum() == 0
    # charge that reaches the edge leaves the image: a star at the top edge loses some
    edge = counts.copy()
    edge[:3] += 5e6
    out_edge, _ = artifacts.saturate(edge, full_well)
    assert out_edge.sum() < edge.sum() and out_edge.max() <= full_well


@pytest.mark.fast
def test_default_full_well_saturates_a_star_near_r14_in_median_seeing(bank):
    """The full well's justification (npejax.sim.artifacts): stars saturate from r 14.05 in the bank's median field."""
    full_well_dn = default.get_config().artifacts.saturation.full_well_dn
    field = int(np.argsort(bank.psf_params[:, 0])[len(bank) // 2])
    renderer = pipeline.render_lib.Renderer(bank, (41, 41), _sim_spec(bank, default.get_config()).render)

    def peak_dn(mag):
        one = lambda v: np.array([v])  # noqa: E731
        star = dict(n_sources=1, x=one(20.5), y=one(20.5), flux=one(10 ** ((22.5 - mag) / 2.5)), is_galaxy=one(False))
        star.update({k: one(0.0) for k in schema.SHAPE_KEYS})
        return (renderer.source_electrons(star, field).max() + bank.sky_grid[field].mean()) / bank.gain[field]

    assert peak_dn(14.0) > full_well_dn > peak_dn(14.1)


@pytest.mark.fast
def test_bad_columns_are_the_linear_interpolation_of_their_neighbours():
    spec = artifacts.BadColumns(enabled=True, per_column=0.1)
    counts = np.random.default_rng(1).normal(600, 25, (30, 50))
    out, label = artifacts.bad_columns(np.random.default_rng(7), counts, spec)
    bad = label.any(axis=0)
    assert bad.any() and label[:, bad].all()
    np.testing.assert_array_equal(label, out != counts)
    good = np.flatnonzero(~bad)
    for c in np.flatnonzero(bad):
        left, right = good[good < c], good[good > c]
        if left.size and right.size:
            a, b = left[-1], right[0]
            np.testing.assert_allclose(out[:, c], counts[:, a] + (c - a) / (b - a) * (counts[:, b] - counts[:, a]))
    # the draw: each column bad with per_column's probability
    draws = [artifacts.bad_columns(np.random.default_rng(s), counts, spec)[1].any(axis=0).sum() for s in range(300)]
    assert stats.binomtest(int(np.sum(draws)), 300 * 50, 0.1).pvalue > 1e-3


@pytest.mark.fast
def test_cosmic_ray_hits_per_image_follow_the_configured_poisson_rate():
    spec = artifacts.CosmicRays(enabled=True, rate_per_mpix=300.0, length=(1.0, 1.0), electrons=(500, 500), flagged=1)
    mean = 300.0 * 100 * 100 / 1e6  # 3 hits per 100 x 100 image
    counts = []
    rng = np.random.default_rng(3)
    for _ in range(600):
        added, hit, flagged = artifacts.cosmic_rays(rng, (100, 100), spec)
        np.testing.assert_array_equal(hit, added > 0)  # the label is exactly the charged pixels
        np.testing.assert_array_equal(flagged, hit)  # flagged = 1: the pipeline finds every one
        counts.append(ndimage.label(hit, structure=np.ones((3, 3)))[1])  # a 1-pixel track touches <= 2 pixels
    counts = np.array(counts)
    observed = np.bincount(counts, minlength=9)[:9]
    expected = stats.poisson.pmf(np.arange(9), mean) * len(counts)
    observed = np.r_[observed[:8], len(counts) - observed[:8].sum()]
    expected = np.r_[expected[:8], len(counts) - expected[:8].sum()]
    # touching tracks merge into one component (~0.5% of pairs): a small bias below the test's power
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    assert abs(counts.mean() - mean) < 0.15


@pytest.mark.fast
def test_spikes_are_symmetric_oriented_and_carry_their_flux_fraction():
    spec = artifacts.Spikes(enabled=True, max_mag=17.0, flux_fraction=0.01, angle_deg=0.0, core_radius=3.0)
    shape, sky = (128, 128), np.full((128, 128), 600.0)
    added, label = artifacts.spikes(np.array([[64.0, 64.0]]), np.array([1e8]), spec, 1.4, shape, sky)
    np.testing.assert_allclose(added, np.rot90(added), rtol=1e-12, atol=1e-9)  # four-fold about the star
    np.testing.assert_allclose(added, added[::-1], rtol=1e-12, atol=1e-9)
    # along the star's row and column, nothing on the diagonal
    assert added[63:65, 90].min() > 100 * added[90, 90] and added[90, 63:65].min() > 100 * added[90, 90]
    # an unbounded image would hold flux_fraction of the flux; this one holds all but the tails beyond ~64 pixels
    expected = 1e8 * 0.01 * (1 - 3.0 / 64)
    np.testing.assert_allclose(added.sum(), expected, rtol=0.03)
    assert label[64, 100] and not label[100, 100]
    assert np.all(added[label] > np.sqrt(600.0))  # labelled where above one sigma of the sky's noise
    # rotated by 45 degrees, the spikes lie on the diagonals
    diag, _ = artifacts.spikes(
        np.array([[64.0, 64.0]]), np.array([1e8]), dataclasses.replace(spec, angle_deg=45.0), 1.4, shape, sky
    )
    assert diag[90, 90] > 100 * diag[63, 90]


@pytest.mark.fast
def test_satellite_trail_is_a_line_of_the_configured_flux_per_pixel():
    spec = artifacts.Satellite(enabled=True, rate=50.0, nmgy_per_pixel=(2.0, 2.0))
    sky = np.full((200, 200), 600.0)
    rng = np.random.default_rng(4)
    one = dataclasses.replace(spec, rate=1e-9)
    assert artifacts.satellite_trail(rng, (200, 200), one, 1000.0, 1.4, sky)[0].sum() == 0  # no trail
    added, label = artifacts.satellite_trail(np.random.default_rng(5), (200, 200), spec, 1000.0, 1.4, sky)
    assert label.any() and np.all(added[label] > np.sqrt(600.0))
    np.testing.assert_array_equal(label, added > np.sqrt(600.0))
    # one trail: its light is the flux per pixel of length times its chord through the image
    trail = artifacts.Satellite(enabled=True, rate=1.0, nmgy_per_pixel=(2.0, 2.0))
    checked = 0
    for seed in range(20):
        r = np.random.default_rng(seed)  # the function's draws: the number of trails, then y0, x0, angle
        if r.poisson(1.0) != 1:
            continue
        checked += 1
        y0, x0, theta = r.uniform(0, 200), r.uniform(0, 200), r.uniform(0, np.pi)
        added, _ = artifacts.satellite_trail(np.random.default_rng(seed), (200, 200), trail, 1000.0, 1.4, sky)
        # chord length of the line through (x0, y0) at theta inside the 200 x 200 square
        t = np.linspace(-400, 400, 160001)
        xs, ys = x0 + t * np.cos(theta), y0 + t * np.sin(theta)
        chord = ((xs >= 0) & (xs < 200) & (ys >= 0) & (ys < 200)).sum() * (t[1] - t[0])
        np.testing.assert_allclose(added.sum(), 2000.0 * chord, rtol=0.03, atol=2000.0 * 4)
    assert checked >= 3


@pytest.mark.fast
def test_masked_blocks_and_the_mask_cover_exactly_the_filled_pixels(bank):
    config = _spec_config(masked=dict(enabled=True, rate=3.0, fill="nan"))
    batch = pipeline.simulate_batch(_sim_spec(bank, config, batch_size=4), 0)
    masked = (batch["artifact_bits"] & artifacts.BITS["masked"]) > 0
    assert masked.any()
    np.testing.assert_array_equal(np.isnan(batch["images"]), masked)
    np.testing.assert_array_equal(batch["mask"], masked)
    # the other pixels are the clean batch's, bit for bit (same catalog, crops and noise draws)
    clean = pipeline.simulate_batch(_sim_spec(bank, default.get_config(), batch_size=4), 0)
    np.testing.assert_array_equal(batch["images"][~masked], clean["images"][~masked])
    for key in (*schema.CATALOG_KEYS, "field_id", "crop_origin", "background"):
        np.testing.assert_array_equal(batch[key], clean[key], err_msg=key)


# --- the batch -------------------------------------------------------------------------------------------------


@pytest.mark.fast
def test_everything_off_gives_the_same_bytes_and_keys(bank):
    config = default.get_config()
    assert configuration.artifacts_enabled(config.artifacts) == []
    spec = _sim_spec(bank, config)
    assert spec.artifacts is None
    without_section = default.get_config()
    del without_section["artifacts"]
    bare = _sim_spec(bank, without_section)
    a, b = pipeline.simulate_batch(spec, 2), pipeline.simulate_batch(bare, 2)
    assert set(a) == set(b) == {*schema.IMAGE_KEYS, "n_sources", *schema.CATALOG_KEYS, *schema.TILE_KEYS}
    for key in a:
        assert a[key].tobytes() == b[key].tobytes(), key
    # the renderer's plain path and the artifacts path with nothing switched on draw the same image
    off = artifacts.ArtifactSpec.from_config(config.artifacts)
    renderer = pipeline.render_lib.Renderer(bank, spec.prior.image_shape, spec.render)
    rng = pipeline.batch_rng(5, 2)
    catalog = spec.prior.sample(rng, 3)
    field_id = bank.sample_fields(rng, 3, "many")
    origins = bank.sample_crop_origins(rng, 3, spec.prior.image_shape)
    images, _, mask, bits = renderer.render_artifacts(
        catalog, field_id, origins, rng, off, artifacts.artifact_rng(5, 2)
    )
    assert images.tobytes() == a["images"].tobytes() and not mask.any() and not bits.any()


@pytest.mark.fast
def test_every_shipped_config_has_every_artifact_off():
    names = [os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))]
    names = [n for n in names if n != "__init__"]
    assert "default" in names and len(names) > 5
    for name in names:
        config = importlib.import_module(f"configs.{name}").get_config()
        if name in ("cpu_artifacts", "cpu_real"):  # networks for real frames: every artifact on, with the mask channel
            assert sorted(configuration.artifacts_enabled(config.artifacts)) == sorted(artifacts.ARTIFACTS), name
            assert config.model.mask_channel, name
            continue
        assert configuration.artifacts_enabled(config.get("artifacts")) == [], name


@pytest.mark.fast
def test_batch_with_every_artifact_depends_only_on_seed_and_index(bank):
    config = _spec_config(
        cosmic_rays=dict(enabled=True, rate_per_mpix=2000.0),
        saturation=dict(enabled=True),
        spikes=dict(enabled=True),
        bad_columns=dict(enabled=True, per_column=0.05),
        satellite=dict(enabled=True, rate=1.0),
        masked=dict(enabled=True, rate=1.0),
    )
    spec = _sim_spec(bank, config)
    assert spec.artifacts.enabled == artifacts.ARTIFACTS
    a = pipeline.simulate_batch(spec, 4)
    assert set(a) == {*schema.IMAGE_KEYS, "n_sources", *schema.CATALOG_KEYS, *schema.TILE_KEYS, *schema.ARTIFACT_KEYS}
    assert a["mask"].shape == a["artifact_bits"].shape == a["images"].shape
    assert a["mask"].dtype == bool and a["artifact_bits"].dtype == np.uint8
    with pipeline.Simulator(spec, num_workers=0, start=3, num_batches=2) as sim:
        b = list(sim)[1]
    for key in a:
        assert a[key].tobytes() == b[key].tobytes(), key
    assert not np.array_equal(a["artifact_bits"], pipeline.simulate_batch(spec, 3)["artifact_bits"])
    # mask: the flagged kinds only (never a spike or satellite pixel alone)
    flagged = (a["artifact_bits"] & (artifacts.BITS["saturation"] | artifacts.BITS["bad_columns"])) > 0
    assert np.all(a["mask"][flagged])
    only_light = (a["artifact_bits"] & ~np.uint8(artifacts.BITS["spikes"] | artifacts.BITS["satellite"])) == 0
    assert not np.any(a["mask"][only_light])


@pytest.mark.fast
def test_artifact_config_refuses_unknown_keys_and_bad_values():
    config = default.get_config()
    config.artifacts.satellite.speed = 3.0
    with pytest.raises(ValueError, match=r"config.artifacts.satellite: keys .*speed"):
        artifacts.ArtifactSpec.from_config(config.artifacts)
    config = default.get_config()
    config.artifacts.masked.fill = "mean"
    with pytest.raises(ValueError, match=r"config.artifacts.masked.fill = 'mean': expected one of"):
        artifacts.ArtifactSpec.from_config(config.artifacts)
    config = default.get_config()
    config.artifacts.bad_columns.per_column = 1.5
    with pytest.raises(ValueError, match=r"bad_columns.per_column = 1.5"):
        artifacts.ArtifactSpec.from_config(config.artifacts)


@pytest.mark.fast
def test_a_config_saved_before_the_artifacts_section_loads_unchanged():
    saved = configuration.to_json(default.get_config())
    del saved["artifacts"]
    assert configuration.saved_differences(saved, default.get_config()) == []
    on = default.get_config()
    on.artifacts.satellite.enabled = True
    assert any(d.startswith("artifacts") for d in configuration.saved_differences(saved, on))


# --- datasets ---------------------------------------------------------------------------------------------------


@pytest.mark.fast
def test_dataset_stores_the_artifact_keys_and_an_old_dataset_is_unchanged(tmp_path, bank):
    on = _spec_config(satellite=dict(enabled=True, rate=2.0), masked=dict(enabled=True, rate=1.0))
    spec = _sim_spec(bank, on, batch_size=2, seed=9)
    write_dataset(spec, tmp_path / "on", 3, "test", config=on, num_workers=0, progress=False)
    ds = Dataset(str(tmp_path / "on"))
    assert set(schema.ARTIFACT_KEYS) <= set(ds.keys)
    whole = ds[0:3]
    np.testing.assert_array_equal(whole["artifact_bits"][2], pipeline.simulate_batch(spec, 1)["artifact_bits"][0])
    manifest = json.loads((tmp_path / "on" / "manifest.json").read_text())
    assert manifest["spec"]["artifacts"]["satellite"]["rate"] == 2.0
    off = _sim_spec(bank, default.get_config(), batch_size=2, seed=9)
    write_dataset(off, tmp_path / "off", 3, "test", num_workers=0, progress=False)
    manifest = json.loads((tmp_path / "off" / "manifest.json").read_text())
    assert "artifacts" not in manifest["spec"] and not set(schema.ARTIFACT_KEYS) & set(manifest["keys"])
