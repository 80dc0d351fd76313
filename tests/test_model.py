"""Network shapes for the three variants, block count, construction from the config, and augmentation
consistency."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cpu_small, default
from npejax.nn import inputs, model, steps


def test_full_size_network_has_48_blocks():
    config = default.get_config()
    assert model.num_conv_blocks(config.model.stem_blocks, config.model.stages) == 48
    net = model.from_config(config)
    variables = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 80, 80, 21)), train=False))
    batch_norms = [p for p in jax.tree_util.tree_leaves_with_path(variables["batch_stats"]) if "mean" in str(p[0])]
    assert len(batch_norms) == 48


@pytest.mark.parametrize("variant", inputs.VARIANTS)
def test_variant_shapes(variant):
    config = cpu_small.get_config()
    with config.unlocked():
        config.model.variant = variant
    net = model.from_config(config)
    c = inputs.num_channels(variant)
    assert c == 15 + (6 if variant == "psf_aware" else 0)
    x = jnp.zeros((2, 80, 80, c))
    variables = net.init(jax.random.key(0), x, train=False)
    assert net.apply(variables, x).shape == (2, 20, 20, 8)
    assert net.apply(variables, jnp.zeros((1, 24, 40, c))).shape == (1, 6, 10, 8)
    with pytest.raises(ValueError, match="multiples of 4"):
        net.apply(variables, jnp.zeros((1, 30, 40, c)))


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
def test_the_first_stem_block_has_the_configured_kernel(kernel):
    config = cpu_small.get_config()
    config.model.stem_kernel = kernel
    net = model.from_config(config)
    c = inputs.num_channels(config.model.variant)
    params = net.init(jax.random.key(0), jnp.zeros((1, 16, 16, c)), train=False)["params"]
    assert params["ConvBlock_0"]["Conv_0"]["kernel"].shape == (kernel, kernel, c, config.model.width)
    assert params["ConvBlock_1"]["Conv_0"]["kernel"].shape == (3, 3, config.model.width, config.model.width)


def test_unknown_variant():
    with pytest.raises(ValueError, match="model.variant"):
        inputs.num_channels("psf_magic")


def test_augmentation_moves_catalog_with_image():
    h = 80
    y, x = 13.3, 61.7
    images = np.zeros((1, h, h), np.float32)
    images[0, int(y), int(x)] = 10.0
    tiles = dict(tile_has_source=np.zeros((1, 20, 20), bool), tile_locs=np.zeros((1, 20, 20, 2), np.float32),
                 tile_is_galaxy=np.zeros((1, 20, 20), bool), tile_flux=np.zeros((1, 20, 20), np.float32))
    r, c = int(y // 4), int(x // 4)
    tiles["tile_has_source"][0, r, c] = True
    tiles["tile_locs"][0, r, c] = (y / 4 - r, x / 4 - c)
    example = dict(images=images[0], background=images[0], **{k: v[0] for k, v in tiles.items()})
    seen = set()
    for k in range(8):
        out = steps.dihedral({key: jnp.asarray(v) for key, v in example.items()}, jnp.array(k))
        iy, ix = np.unravel_index(np.argmax(np.asarray(out["images"])), (h, h))
        (tr, tc), = np.argwhere(np.asarray(out["tile_has_source"]))
        ly, lx = np.asarray(out["tile_locs"])[tr, tc]
        py, px = (tr + ly) * 4, (tc + lx) * 4
        assert int(py) == iy and int(px) == ix, (k, (py, px), (iy, ix))
        seen.add((iy, ix))
    assert len(seen) == 8  # all eight symmetries are distinct
