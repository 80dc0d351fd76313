"""Network shapes for the three variants, block count, construction from the config, and augmentation
consistency."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cpu_small, default
from npejax import configuration
from npejax.nn import inputs, model, steps


@pytest.mark.fast
def test_full_size_network_has_48_blocks():
    config = default.get_config()
    assert model.num_conv_blocks(config.model.stem_blocks, config.model.stages) == 48
    net = model.from_config(config)
    variables = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 80, 80, 21)), train=False))
    batch_norms = [p for p in jax.tree_util.tree_leaves_with_path(variables["batch_stats"]) if "mean" in str(p[0])]
    assert len(batch_norms) == 48


@pytest.mark.parametrize("variant", configuration.VARIANTS)
@pytest.mark.fast
def test_variant_shapes(variant):
    config = cpu_small.get_config()
    with config.unlocked():
        config.model.variant = variant
    net = model.from_config(config)
    c = inputs.num_channels(variant)
    assert c == 15 + (6 if variant == "psf_aware" else 0)
    # shapes only: the network is traced (jax.eval_shape), not run, which is what its shapes and the side check
    # depend on (running it op by op took 25 s of compiles on the 2-core CPU)
    x = jax.ShapeDtypeStruct((2, 80, 80, c), jnp.float32)
    variables = jax.eval_shape(functools.partial(net.init, train=False), jax.random.key(0), x)
    assert jax.eval_shape(net.apply, variables, x).shape == (2, 20, 20, 8)
    small = jax.ShapeDtypeStruct((1, 24, 40, c), jnp.float32)
    assert jax.eval_shape(net.apply, variables, small).shape == (1, 6, 10, 8)
    with pytest.raises(ValueError, match="multiples of 4"):
        jax.eval_shape(net.apply, variables, jax.ShapeDtypeStruct((1, 30, 40, c), jnp.float32))


@pytest.mark.fast
def test_network_takes_its_settings_from_the_config():
    config = cpu_small.get_config()
    net = model.from_config(config)
    assert (net.width, net.stem_blocks, net.dtype) == (16, 2, jnp.float32)
    assert net.stages == ((2, 1, 2), (2, 1, 2)) and net.stride == config.tile_size
    assert (net.context, net.colours) == ("checkerboard", 4)
    with pytest.raises(TypeError):  # no defaults of its own: configs/default.py is the one place
        model.CatalogNet()
    config.model.dtype = "bfloat16"
    assert model.from_config(config).dtype == jnp.bfloat16
    config.model.dtype = "float16"
    with pytest.raises(ValueError, match="model.dtype must be 'float32' or 'bfloat16', got 'float16'"):
        model.from_config(config)
    config.model.dtype = "float32"
    config.model.stages = ((1, 1, 1), (2, 1, 2))
    with pytest.raises(ValueError, match="stride 2 must equal tile_size 4"):
        model.from_config(config)
    config.model.stages = ((2, 1, 2), (2, 1, 2))
    for bad in (0, 4):
        config.model.stem_kernel = bad
        with pytest.raises(ValueError, match=f"model.stem_kernel must be an odd number >= 1, got {bad}"):
            model.from_config(config)


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.fast
def test_the_first_stem_block_has_the_configured_kernel(kernel):
    config = cpu_small.get_config()
    config.model.stem_kernel = kernel
    net = model.from_config(config)
    c = inputs.num_channels(config.model.variant)
    params = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 16, 16, c)), train=False))["params"]
    assert params["ConvBlock_0"]["Conv_0"]["kernel"].shape == (kernel, kernel, c, config.model.width)
    assert params["ConvBlock_1"]["Conv_0"]["kernel"].shape == (3, 3, config.model.width, config.model.width)


def _aperture_setup(context="independent"):
    """A small aperture-flux network and a normalizer fitted on sky-noise images (sigma 0.2 nmgy)."""
    config = cpu_small.get_config()
    config.model.aperture_flux = True
    config.posterior.context = context
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.2, (8, 32, 32)).astype(np.float32)
    norm = inputs.Normalizer.fit(noise, np.full_like(noise, 1.0), np.ones((8, 6)))
    return config, model.from_config(config), norm


def _star(flux, y=13.5, x=18.5, size=32, sigma=1.5):
    yy, xx = np.mgrid[:size, :size]
    g = np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2))
    return (flux * g / g.sum()).astype(np.float32)


@pytest.mark.fast
def test_aperture_term_is_the_log_of_a_3x3_tile_pixel_sum():
    """Against numpy on the raw pixels: A = sum over the 12 x 12 px around each 4-px tile of (x - Q_0.5) / s
    (the median channel's own units), term = ln(softplus(A / f) / ln 2)."""
    _, _, norm = _aperture_setup()
    rng = np.random.default_rng(1)
    image = _star(500.0) + rng.normal(0, 0.2, (32, 32)).astype(np.float32)
    feats = norm.features(image[None], np.ones((1, 32, 32), np.float32), np.ones((1, 6)), "psf_aware")
    log_scale = 5.0
    got = np.asarray(model.aperture_term(jnp.asarray(feats), 4, log_scale))[0]
    q = norm.quantiles[inputs.ASINH_QUANTILES.index(0.5)]
    units = (image.astype(np.float64) - q) / (max(abs(q), norm.scale_floor) / 5.0)
    padded = np.pad(units, 4)
    expect = np.empty((8, 8))
    for i in range(8):
        for j in range(8):
            a = padded[4 * i : 4 * i + 12, 4 * j : 4 * j + 12].sum() / np.exp(log_scale)
            expect[i, j] = np.log(np.logaddexp(0.0, a) / np.log(2.0))
    np.testing.assert_allclose(got, expect, rtol=2e-4, atol=2e-4)
    assert got[3, 4] > 5 and abs(got[0, 0]) < 0.5  # the star's tile, an empty corner


@pytest.mark.parametrize("context", ["independent", "checkerboard"])
def test_aperture_flux_adds_the_term_to_the_flux_location_only(context):
    config, net, norm = _aperture_setup(context)
    image = _star(300.0)[None]
    feats = norm.features(image, np.ones_like(image), np.ones((1, 6)), "psf_aware")
    variables = net.init(jax.random.key(0), jnp.asarray(feats), train=False)
    params = dict(variables["params"])
    assert float(params["aperture_log_scale"]) == model.APERTURE_LOG_SCALE_INIT
    rng = jax.random.key(3)  # random weights: a term that went to another parameter would show
    leaves, tree = jax.tree.flatten(params)
    params = jax.tree.unflatten(
        tree, [v + 0.1 * jax.random.normal(k, jnp.shape(v)) for v, k in zip(leaves, jax.random.split(rng, len(leaves)))]
    )
    with_term = net.apply(dict(variables, params=params), jnp.asarray(feats))
    config.model.aperture_flux = False
    plain = model.from_config(config)
    without = {k: v for k, v in params.items() if k != "aperture_log_scale"}
    out = plain.apply(dict(variables, params=without), jnp.asarray(feats))
    term = model.aperture_term(jnp.asarray(feats), 4, params["aperture_log_scale"])
    if context == "independent":
        np.testing.assert_allclose(with_term[..., 6] - out[..., 6], term, atol=1e-4)
        others = [i for i in range(8) if i != 6]
        np.testing.assert_allclose(with_term[..., others], out[..., others], atol=1e-5)
    else:  # later colours see the decided fluxes: only the first colour's tiles are the same but for the term
        first = np.asarray(model.colour_map((8, 8), 4)) == 0
        np.testing.assert_allclose((with_term[..., 6] - out[..., 6])[:, first], term[:, first], atol=1e-4)


def test_aperture_flux_responds_to_bright_stars_with_slope_one():
    """At initialization (zero head kernel) the flux location is the bias plus the term: doubling a bright
    star's flux adds ln 2 to its tile's log flux, at r 12 as at r 16; without the term it does not move."""
    config, net, norm = _aperture_setup()
    variables = net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 21)), train=False)
    mu = []
    for flux in (400.0, 800.0, 16000.0, 32000.0):  # r 16.0, 15.2, 12.0, 11.2
        image = _star(flux)[None]
        feats = norm.features(image, np.ones_like(image), np.ones((1, 6)), "psf_aware")
        mu.append(float(net.apply(variables, jnp.asarray(feats))[0, 3, 4, 6]))
    assert mu[1] - mu[0] == pytest.approx(np.log(2), abs=0.01)
    assert mu[3] - mu[2] == pytest.approx(np.log(2), abs=1e-3)


def test_aperture_term_is_finite_for_very_negative_sums():
    """ln(softplus(z) / ln 2) tends to z - ln ln 2 where softplus underflows (z = A / f < -30; a small learned f
    or a deeply negative sky-subtracted region): finite values and gradients, continuous at the switch, and
    the plain formula above it."""
    x = jnp.zeros((3, 12, 12, 21))  # 3 x 3 tiles: tile (1, 1) sums all 144 pixels
    x = x.at[0, ..., model.MEDIAN_CHANNEL].set(-8.0)  # sinh(-8) * 144 pixels: A = -2.1e5
    x = x.at[1, ..., model.MEDIAN_CHANNEL].set(0.5)
    for log_scale in (0.0, 6.0):
        term = model.aperture_term(x, 4, jnp.float32(log_scale))
        grad = jax.grad(lambda s: model.aperture_term(x, 4, s).sum())(jnp.float32(log_scale))
        assert np.all(np.isfinite(np.asarray(term))) and np.isfinite(float(grad))
    z = -np.sinh(8.0) * 144 / np.exp(0.0)
    assert float(model.aperture_term(x, 4, jnp.float32(0.0))[0, 1, 1]) == pytest.approx(
        z - np.log(np.log(2)), rel=1e-5
    )  # float32 sums
    a = float(np.sinh(0.5)) * 144 / np.exp(6.0)  # image 1: the plain formula
    assert float(model.aperture_term(x, 4, jnp.float32(6.0))[1, 1, 1]) == pytest.approx(
        np.log(np.log1p(np.exp(a)) / np.log(2)), rel=1e-5
    )
    # either side of z = -30 the two forms agree to e^-30
    near = np.array([-30.0 - 1e-3, -30.0 + 1e-3])
    assert np.allclose(np.log(np.log1p(np.exp(near)) / np.log(2)), near - np.log(np.log(2)), atol=1e-9)


@pytest.mark.fast
def test_unknown_variant():
    with pytest.raises(ValueError, match="model.variant"):
        inputs.num_channels("psf_magic")


@pytest.mark.fast
def test_augmentation_moves_catalog_with_image():
    h = 80
    y, x = 13.3, 61.7
    images = np.zeros((1, h, h), np.float32)
    images[0, int(y), int(x)] = 10.0
    tiles = dict(
        tile_has_source=np.zeros((1, 20, 20), bool),
        tile_locs=np.zeros((1, 20, 20, 2), np.float32),
        tile_is_galaxy=np.zeros((1, 20, 20), bool),
        tile_flux=np.zeros((1, 20, 20), np.float32),
    )
    r, c = int(y // 4), int(x // 4)
    tiles["tile_has_source"][0, r, c] = True
    tiles["tile_locs"][0, r, c] = (y / 4 - r, x / 4 - c)
    example = dict(images=images[0], background=images[0], **{k: v[0] for k, v in tiles.items()})
    seen = set()
    dihedral = jax.jit(steps.dihedral)  # one compile for the eight symmetries (op by op: 12 s on the 2-core CPU)
    for k in range(8):
        out = dihedral({key: jnp.asarray(v) for key, v in example.items()}, jnp.array(k))
        iy, ix = np.unravel_index(np.argmax(np.asarray(out["images"])), (h, h))
        ((tr, tc),) = np.argwhere(np.asarray(out["tile_has_source"]))
        ly, lx = np.asarray(out["tile_locs"])[tr, tc]
        py, px = (tr + ly) * 4, (tc + lx) * 4
        assert int(py) == iy and int(px) == ix, (k, (py, px), (iy, ix))
        seen.add((iy, ix))
    assert len(seen) == 8  # all eight symmetries are distinct
