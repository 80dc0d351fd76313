"""The checkerboard posterior (config.posterior.context = "checkerboard"): the NLL against a hand computation
with scipy's distributions, no tile sees its own truth under teacher forcing, prediction decides colours in
turn from the earlier colours' mode, and chunked prediction keeps the whole image's colours."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from configs import cpu_small
from npejax.nn import inputs, model, posterior, predictor


def _net(colours=2, width=4):
    config = cpu_small.get_config()
    config.model.width = width
    config.model.stem_blocks = 1
    config.model.stages = ((1, 0, 1), (1, 0, 2), (1, 0, 2))
    config.posterior.context = "checkerboard"
    config.posterior.colours = colours
    config.posterior.context_width = 4
    config.model.aperture_flux = False  # the independent head is computed here by hand without the aperture term
    return config, model.from_config(config)


def _perturbed(variables, scale=0.3, seed=1):
    """Parameters with every leaf randomized, so that the head (zero-initialized) depends on its inputs."""
    leaves, tree = jax.tree_util.tree_flatten(variables["params"])
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
    return dict(variables, params=jax.tree_util.tree_unflatten(tree, leaves))


def _random_tiles(rng, shape, frac=0.3):
    has = rng.random(shape) < frac
    return dict(
        tile_has_source=jnp.asarray(has),
        tile_locs=jnp.asarray(rng.uniform(0.05, 0.95, shape + (2,))),
        tile_flux=jnp.asarray(np.where(has, rng.lognormal(2.0, 1.5, shape), 0.0)),
        tile_is_galaxy=jnp.asarray(has & (rng.random(shape) < 0.5)),
    )


def _setup(colours=2, grid=(3, 3), batch=2, seed=0):
    config, net = _net(colours)
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(batch, 4 * grid[0], 4 * grid[1], 21)), jnp.float32)
    variables = _perturbed(net.init(jax.random.key(0), x, train=False))
    return net, variables, x, _random_tiles(rng, (batch,) + grid)


def _scipy_tile_nll(p, has, loc, is_gal, flux):
    """-log q of one tile from its 8 raw parameters, with scipy's distributions (by hand)."""
    on_prob = 1 / (1 + np.exp(-p[0]))
    nll = -np.log(on_prob if has else 1 - on_prob)
    if not has:
        return nll
    mean = 1 / (1 + np.exp(-p[1:3]))
    scale = posterior.MIN_LOC_SCALE + np.log1p(np.exp(p[3:5]))
    for axis in range(2):
        a, b = (0 - mean[axis]) / scale[axis], (1 - mean[axis]) / scale[axis]
        nll -= stats.truncnorm.logpdf(loc[axis], a, b, loc=mean[axis], scale=scale[axis])
    gal_prob = 1 / (1 + np.exp(-p[5]))
    nll -= np.log(gal_prob if is_gal else 1 - gal_prob)
    sigma = posterior.MIN_FLUX_SCALE + np.log1p(np.exp(p[7]))
    nll -= stats.lognorm.logpdf(flux, s=sigma, scale=np.exp(p[6]))
    return nll


def test_nll_matches_a_hand_computation_colour_by_colour():
    """-log q(z | x) = sum over colour-0 tiles of their NLL with an empty context + sum over colour-1 tiles
    of their NLL given the true catalog on colour 0 (context map built here by hand); each tile's NLL from
    scipy's distributions."""
    net, variables, x, tiles = _setup(colours=2, grid=(3, 3))
    calls = []

    def interceptor(next_fun, args, kwargs, context):  # records what the head is given
        if isinstance(context.module, model.ContextHead) and context.method_name == "__call__":
            calls.append(tuple(np.asarray(a) for a in args))
        return next_fun(*args, **kwargs)

    with model.nn.intercept_methods(interceptor):
        out = net.apply(variables, x, tiles=tiles)
    loss = float(posterior.TilePosterior.from_params(out).nll(tiles))
    assert len(calls) == 2  # the head runs once per colour on the same image features
    feats = calls[0][0]
    np.testing.assert_array_equal(calls[1][0], feats)

    t = {k: np.asarray(v) for k, v in tiles.items()}
    colour = (np.arange(3)[:, None] + np.arange(3)[None, :]) % 2
    by_hand = np.zeros((x.shape[0], 3, 3, model.CONTEXT_CHANNELS), np.float32)
    on = t["tile_has_source"] & (colour == 0)
    by_hand[..., 0] = colour == 0
    by_hand[..., 1] = on
    by_hand[..., 2:4] = np.where(on[..., None], t["tile_locs"] - 0.5, 0.0)
    by_hand[..., 4] = np.where(on, (np.log(np.where(on, t["tile_flux"], 1.0)) - 2.0) / 4.0, 0.0)
    by_hand[..., 5] = on & t["tile_is_galaxy"]
    np.testing.assert_array_equal(calls[0][1], 0.0)
    np.testing.assert_allclose(calls[1][1], by_hand, atol=1e-6)

    head = model.ContextHead(feats.shape[-1], 4)
    head_vars = {"params": variables["params"]["ContextHead_0"]}
    kernel = np.asarray(variables["params"]["Conv_0"]["kernel"])[0, 0]  # the independent head (1x1 conv)
    independent = feats.astype(np.float64) @ kernel + np.asarray(variables["params"]["Conv_0"]["bias"])
    params = [
        independent + np.asarray(head.apply(head_vars, feats, ctx), np.float64)
        for ctx in (np.zeros_like(by_hand), by_hand)
    ]
    np.testing.assert_allclose(np.asarray(out)[:, colour == 1], params[1][:, colour == 1], atol=1e-5)
    total = 0.0
    for b in range(x.shape[0]):
        for h in range(3):
            for w in range(3):
                total += _scipy_tile_nll(
                    params[colour[h, w]][b, h, w],
                    t["tile_has_source"][b, h, w],
                    t["tile_locs"][b, h, w],
                    t["tile_is_galaxy"][b, h, w],
                    t["tile_flux"][b, h, w],
                )
    assert loss == pytest.approx(total / x.shape[0], rel=1e-4)
    # colour-0 tiles do not depend on the truth at all; colour-1 tiles do
    assert not np.allclose(params[0][:, colour == 1], params[1][:, colour == 1], atol=1e-4)


@pytest.mark.parametrize("colours", [2, 4])
def test_no_tile_sees_its_own_colour_or_later_ones(colours):
    """Changing the truth on colours >= k leaves every colour-k output unchanged (no leak of a tile's own
    target through teacher forcing); changing colours < k changes them."""
    net, variables, x, tiles = _setup(colours=colours, grid=(4, 4))
    colour = np.asarray(model.colour_map((4, 4), colours))
    base = np.asarray(net.apply(variables, x, tiles=tiles))
    other = _random_tiles(np.random.default_rng(7), (x.shape[0], 4, 4), frac=0.6)
    for k in range(colours):
        later = jnp.asarray(colour >= k)
        mixed = {
            key: jnp.where(later.reshape((1, 4, 4) + (1,) * (v.ndim - 3)), other[key], v) for key, v in tiles.items()
        }
        changed = np.asarray(net.apply(variables, x, tiles=mixed))
        assert np.allclose(changed[:, colour == k], base[:, colour == k], atol=1e-6), k
        if k > 0:
            earlier = jnp.asarray(colour < k)
            mixed = {
                key: jnp.where(earlier.reshape((1, 4, 4) + (1,) * (v.ndim - 3)), other[key], v)
                for key, v in tiles.items()
            }
            changed = np.asarray(net.apply(variables, x, tiles=mixed))
            assert not np.allclose(changed[:, colour == k], base[:, colour == k], atol=1e-4), k


@pytest.mark.parametrize("colours", [2, 4])
def test_prediction_decides_colours_in_turn_from_the_mode(colours):
    """Without a catalog the network decides colour 0, then each later colour given the earlier ones' mode:
    the same as teacher forcing with its own mode catalog as the truth."""
    net, variables, x, _ = _setup(colours=colours, grid=(5, 5))
    variables = dict(variables, params=jax.tree_util.tree_map(lambda p: p * 3.0, variables["params"]))
    out = net.apply(variables, x)
    decided = posterior.TilePosterior.from_params(out).mode()
    assert 0 < int(np.sum(decided["tile_has_source"])) < decided["tile_has_source"].size  # a real test
    again = net.apply(variables, x, tiles=decided)
    np.testing.assert_allclose(np.asarray(again), np.asarray(out), atol=1e-5)
    sampled = net.apply(variables, x, key=jax.random.key(3))  # a sample: colour 0 unchanged, later ones differ
    colour = np.asarray(model.colour_map((5, 5), colours))
    np.testing.assert_allclose(np.asarray(sampled)[:, colour == 0], np.asarray(out)[:, colour == 0], atol=1e-6)


@pytest.mark.fast
def test_colours_follow_the_whole_image_grid():
    np.testing.assert_array_equal(model.colour_map((2, 3), 2), [[0, 1, 0], [1, 0, 1]])
    np.testing.assert_array_equal(model.colour_map((2, 3), 2, origin=(1, 0)), [[1, 0, 1], [0, 1, 0]])
    np.testing.assert_array_equal(model.colour_map((2, 2), 4), [[0, 1], [2, 3]])
    np.testing.assert_array_equal(model.colour_map((2, 2), 4, origin=(1, 1)), [[3, 2], [1, 0]])


@pytest.mark.parametrize("colours", [2, 4])
def test_chunked_prediction_equals_the_whole_image(colours):
    """A 96 x 136 image predicted in 56-pixel chunks (odd tile offsets included) gives the whole-image tiles:
    the margin covers the context's reach and the colours keep the whole image's pattern."""
    config, net = _net(colours)
    config.model.variant = "psf_aware"
    rng = np.random.default_rng(2)
    variables = _perturbed(net.init(jax.random.key(0), jnp.zeros((1, 80, 80, 21)), train=False), scale=0.2)
    head = dict(variables["params"]["Conv_0"], bias=variables["params"]["Conv_0"]["bias"].at[0].set(0.0))
    variables = dict(variables, params=dict(variables["params"], Conv_0=head))  # about even odds of a source
    normalizer = inputs.Normalizer(
        quantiles=tuple(np.linspace(-0.1, 2.0, 14)),
        scale_floor=0.01,
        background_mean=1.0,
        background_std=0.2,
        psf_mean=(1.0,) * 6,
        psf_std=(1.0,) * 6,
    )
    pred = predictor.Predictor(config, variables, normalizer)
    image = rng.normal(0, 0.05, (1, 96, 136)).astype(np.float32)
    image[0, 30:34, 40:44] += 5.0
    background = np.ones_like(image)
    psf = np.asarray([[1.2, 3.5, 1.5, 3.0, 0.1, 0.08]], np.float32)
    whole = pred.predict_tiles(image, background, psf, chunk_size=0)
    least = (2 * pred.margin + 1) * 4
    chunked = pred.predict_tiles(image, background, psf, chunk_size=least + 4)
    assert pred.margin == predictor.receptive_margin(net) + 2 * (colours - 1)
    assert 0 < np.sum(whole["prob_source"] > 0.5) < whole["prob_source"].size  # decisions that matter
    for key in ("prob_source", "tile_flux", "tile_locs"):
        np.testing.assert_allclose(chunked[key], whole[key], rtol=1e-4, atol=1e-5, err_msg=key)


@pytest.mark.fast
def test_predictor_refuses_weights_of_another_posterior():
    """Flax ignores arrays a model does not use: a checkerboard network's weights under an independent-tiles config
    ran as the independent head alone. The Predictor refuses them (and the reverse), naming posterior.context and
    both values, and names the first arrays of another architecture."""
    config, net = _net(2)
    config.model.variant = "psf_aware"
    variables = net.init(jax.random.key(0), jnp.zeros((1, 16, 16, 21)), train=False)
    normalizer = inputs.Normalizer(tuple(np.linspace(-0.1, 2.0, 14)), 0.01, 1.0, 0.2, (1.0,) * 6, (1.0,) * 6)
    predictor.Predictor(config, variables, normalizer)  # its own config: loads
    independent = config.copy_and_resolve_references()
    independent.posterior.context = "independent"
    with pytest.raises(
        ValueError, match=r"^posterior.context: X was trained with 'checkerboard' .* says 'independent'"
    ):
        predictor.Predictor(independent, variables, normalizer, source="X")
    params = {k: v for k, v in variables["params"].items() if not k.startswith("ContextHead")}
    with pytest.raises(ValueError, match=r"^posterior.context: .* trained with 'independent' .* says 'checkerboard'"):
        predictor.Predictor(config, dict(variables, params=params), normalizer)
    wider = config.copy_and_resolve_references()
    wider.model.width = 8
    with pytest.raises(
        ValueError, match=r"arrays are not those of the config's network .* has shape \(2,\), the model's \(4,\)"
    ):
        predictor.Predictor(wider, variables, normalizer)
