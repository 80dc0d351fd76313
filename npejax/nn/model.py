"""YOLOv5-style fully convolutional inference network (Flax linen), image -> per-tile posterior parameters.

Building blocks as in YOLOv5: ``ConvBlock`` (conv without bias, batch norm, SiLU), ``Bottleneck``
(1x1 then 3x3 block, with a residual connection) and ``C3`` (two 1x1 branches, one through ``n``
bottlenecks, concatenated and fused by a 1x1 block; 3 + 2n blocks). The network is a stem, then stages
``(width multiplier, bottlenecks, stride)``; a stage with stride 2 starts with a strided 3x3 block. The
strides multiply to the tile size, so an H x W input (multiples of the tile size) gives an
H/tile x W/tile grid, and a final 1x1 convolution gives :data:`npejax.nn.posterior.NUM_PARAMS` per tile.
The full-size configuration (``configs/default.py``) has 48 conv-BN-SiLU blocks.

Two posterior heads (``config.posterior.context``):

* ``"independent"`` -- the paper's Table 2: one 1x1 convolution of the image features; every tile's factors
  depend on the image only.
* ``"checkerboard"`` -- tiles dependent on their neighbours (SPEC.md "Tile boundaries"; paper Section 5.1 names
  the limitation of independent tiles). The tile grid is split into ``posterior.colours`` interleaved colours:
  2 as a checkerboard, colour ``(h + w) % 2``; 4 over each 2 x 2 block of tiles, colour ``2 (h % 2) + w % 2``
  (h, w: tile row and column in the whole image). Two tiles of one colour meet at every corner of a two-colour
  checkerboard and decide together, so a source on a corner can be split between them and missed; with four
  colours a corner's four tiles decide in turn (measured: benchmarks/RESULTS.md, tests/test_trained.py).
  q(z) = prod_k q(z_k | x, z_<k): colour k's factors see the
  image features and a per-tile **context map** of the catalog already decided for colours < k
  (:func:`context_map`: decided, has-source, (y, x) offset from the tile centre, normalized log flux,
  is-galaxy; zero where undecided or empty): the parameters are the independent head's plus a correction
  from :class:`ContextHead` (two 3x3 convolutions (SiLU) of the map at tile resolution, concatenated with the
  image features, a 1x1 convolution (SiLU) and a zero-initialized 1x1 convolution to the 8 parameters), so
  a checkerboard network starts as the independent one and learns what the context adds (without the
  independent path, a cpu_small run on the c = 613314 prior never learned the y position: median error
  1.3 px). With ``tiles`` given (training, teacher forcing) the context of colour k is the true catalog on
  colours < k and the output holds, for each tile, the factors of its own
  colour: the sum over tiles of their NLL is exactly -log q(true catalog | x). Without ``tiles``
  (prediction) colours are decided in turn from the mode of the earlier ones (``key`` given: a sample).
  The image backbone runs once; the head runs once per colour.

**Aperture flux** (``model.aperture_flux``, off in the paper's network): the log-normal flux location of each
tile (parameter 6, ln nmgy) gets ``ln(softplus(A / f) / ln 2)`` added, where A is the sum of the sky-subtracted
pixels over the 3 x 3 tiles centred on the tile (recovered exactly from the median-quantile asinh input
channel, which is linear in the pixel value after ``sinh``, in that channel's units) and f > 0 a learned scale
(``aperture_log_scale``, initialized at e^6 ~ 400 units, about the noise of a 12 x 12 px sum). The term is 0 for
an empty aperture and ln A + const for a bright source, so the flux head only learns a correction that is
constant at the bright end and the response to bright sources keeps a slope of 1 beyond the fluxes seen in
training (without it the estimated magnitudes of the cpu_small networks are compressed: benchmarks/RESULTS.md).

:func:`from_config` builds the network from the ``model`` and ``posterior`` sections of a config
(``model.width``, ``model.stem_blocks``, ``model.stem_kernel``, ``model.aperture_flux``, ``model.stages``,
``model.dtype``, ``posterior.context``, ``posterior.colours``, ``posterior.context_width``), once
:func:`npejax.configuration.check_model` has checked them (their allowed values, and a stride equal to
``tile_size``); :class:`CatalogNet` itself has no defaults: they live in ``configs/default.py`` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from npejax import configuration
from npejax.nn.inputs import ASINH_QUANTILES
from npejax.nn.posterior import INITIAL_BIAS, NUM_PARAMS, TilePosterior

CONTEXT_CHANNELS = 6  # decided, has source, y and x offsets, log flux, is galaxy
LOG_FLUX_CENTER, LOG_FLUX_SCALE = 2.0, 4.0  # context map's log flux: (ln(flux / nmgy) - 2) / 4
CONTEXT_RADIUS = 2  # tiles: the context map's two 3x3 convolutions
MEDIAN_CHANNEL = ASINH_QUANTILES.index(0.5)  # input channel asinh((x - Q_0.5) / s): sinh of it is linear in x
FLUX_PARAM = 6  # log_flux_mean among the NUM_PARAMS (npejax.nn.posterior)
APERTURE_LOG_SCALE_INIT = 6.0  # ln f: e^6 ~ 400 units of the median channel, a 12 x 12 px sum's noise


def aperture_term(x, stride: int, log_scale) -> jax.Array:
    """[B, H/stride, W/stride]: ``ln(softplus(A / f) / ln 2)`` of each tile (module doc, "Aperture flux"), A the
    sum of ``sinh`` of the median channel of ``x`` [B, H, W, C] over the 3 x 3 tiles centred on the tile (zero
    padding at the edges), ``f = exp(log_scale)``."""
    u = jnp.sinh(x[..., MEDIAN_CHANNEL : MEDIAN_CHANNEL + 1].astype(jnp.float32))
    window = 3 * stride
    total = (
        nn.avg_pool(
            u,
            (window, window),
            strides=(stride, stride),
            padding=((stride, stride), (stride, stride)),
            count_include_pad=True,
        )[..., 0]
        * window**2
    )
    z = total / jnp.exp(log_scale)
    # below z = -30 softplus(z) ~ e^z underflows towards 0 (ln 0 = -inf): ln softplus(z) ~ z there
    return jnp.where(
        z > -30.0, jnp.log(jax.nn.softplus(jnp.maximum(z, -30.0)) / jnp.log(2.0)), z - jnp.log(jnp.log(2.0))
    )


class ConvBlock(nn.Module):
    features: int
    kernel: int = 3
    stride: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(
            self.features,
            (self.kernel, self.kernel),
            strides=(self.stride, self.stride),
            padding="SAME",
            use_bias=False,
            dtype=self.dtype,
        )(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.97, epsilon=1e-3, dtype=self.dtype)(x)
        return nn.silu(x)


class Bottleneck(nn.Module):
    features: int
    shortcut: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        y = ConvBlock(self.features, 1, dtype=self.dtype)(x, train)
        y = ConvBlock(self.features, 3, dtype=self.dtype)(y, train)
        return x + y if self.shortcut and x.shape[-1] == self.features else y


class C3(nn.Module):
    features: int
    num_bottlenecks: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        hidden = max(self.features // 2, 1)
        a = ConvBlock(hidden, 1, dtype=self.dtype)(x, train)
        for _ in range(self.num_bottlenecks):
            a = Bottleneck(hidden, dtype=self.dtype)(a, train)
        b = ConvBlock(hidden, 1, dtype=self.dtype)(x, train)
        return ConvBlock(self.features, 1, dtype=self.dtype)(jnp.concatenate([a, b], axis=-1), train)


def _bias(key, shape, dtype=jnp.float32):
    return jnp.asarray(INITIAL_BIAS, dtype)


def _head_conv():  # start at the prior-like bias: no extreme outputs
    return nn.Conv(NUM_PARAMS, (1, 1), dtype=jnp.float32, bias_init=_bias, kernel_init=nn.initializers.zeros)


def colour_map(grid_shape, colours: int, origin=(0, 0)) -> jax.Array:
    """Colour (0 .. colours-1) of each tile [Th, Tw] of a grid whose first tile is tile ``origin`` (row,
    column) of the whole image: ``(h + w) % 2`` for 2 colours, ``2 (h % 2) + w % 2`` for 4."""
    h = jnp.arange(grid_shape[0])[:, None] + origin[0]
    w = jnp.arange(grid_shape[1])[None, :] + origin[1]
    if colours == 2:
        return (h + w) % 2
    return 2 * (h % 2) + w % 2


def context_map(tiles: dict, decided: jax.Array) -> jax.Array:
    """Per-tile context [B, Th, Tw, 6] (float32) of a tile catalog (``tile_*`` keys) on the ``decided`` tiles
    ([Th, Tw] or [B, Th, Tw] bool): decided, has source, (y, x) offset from the tile centre (tile units),
    (ln flux - 2) / 4, is galaxy; the last five are zero on undecided or empty tiles."""
    has = tiles["tile_has_source"].astype(jnp.float32)
    decided = jnp.broadcast_to(decided, has.shape).astype(jnp.float32)
    on = has * decided
    flux = jnp.clip(jnp.where(on > 0, tiles["tile_flux"], 1.0), 1e-6, 1e30)  # an overflowing mode stays finite
    log_flux = jnp.where(on > 0, (jnp.log(flux) - LOG_FLUX_CENTER) / LOG_FLUX_SCALE, 0.0)
    offsets = jnp.where(on[..., None] > 0, tiles["tile_locs"].astype(jnp.float32) - 0.5, 0.0)
    parts = [
        decided,
        on,
        offsets[..., 0],
        offsets[..., 1],
        log_flux,
        jnp.where(on > 0, tiles["tile_is_galaxy"].astype(jnp.float32), 0.0),
    ]
    return jnp.stack(parts, axis=-1)


class ContextHead(nn.Module):
    """Image features [B, Th, Tw, F] and a context map [B, Th, Tw, 6] -> a correction [B, Th, Tw, 8] to the
    independent head's parameters (zero at initialization, so training starts from the independent
    posterior's conditioning)."""

    features: int
    context_width: int

    @nn.compact
    def __call__(self, feats, context):
        c = nn.silu(nn.Conv(self.context_width, (3, 3), padding="SAME")(context))
        c = nn.silu(nn.Conv(self.context_width, (3, 3), padding="SAME")(c))
        z = jnp.concatenate([feats.astype(jnp.float32), c], axis=-1)
        z = nn.silu(nn.Conv(self.features, (1, 1))(z))
        return nn.Conv(NUM_PARAMS, (1, 1), use_bias=False, kernel_init=nn.initializers.zeros)(z)


class CatalogNet(nn.Module):
    """Image features [B, H, W, C] -> posterior parameters [B, H/t, W/t, 8] (float32).

    ``width``: channels of the stem; ``stem_blocks``: conv blocks before the stages, the first with
    ``stem_kernel`` x ``stem_kernel`` kernels (the rest 3 x 3); ``stages``:
    (width multiplier, bottlenecks, stride) per stage; ``dtype``: activation dtype (parameters float32);
    ``context``: ``"independent"`` or ``"checkerboard"`` (module doc), with ``colours`` (2 or 4) and
    ``context_width`` (channels of the context map's convolutions) used by the latter.
    Build it with :func:`from_config` (the values of ``configs/default.py``).
    """

    width: int
    stem_blocks: int
    stem_kernel: int
    aperture_flux: bool
    stages: Sequence[Sequence[int]]
    dtype: Any
    context: str
    colours: int
    context_width: int

    @property
    def stride(self) -> int:
        total = 1
        for _, _, s in self.stages:
            total *= s
        return total

    @property
    def context_margin(self) -> int:
        """Tiles beyond the image backbone's receptive field that a tile's output depends on: the decisions
        of earlier colours within ``CONTEXT_RADIUS`` tiles, each of which depends on its own neighbours."""
        return 0 if self.context == "independent" else CONTEXT_RADIUS * (self.colours - 1)

    @nn.compact
    def __call__(self, x, train: bool = False, tiles: dict | None = None, origin=(0, 0), key=None):
        """``tiles``: the true tile catalog (teacher forcing; checkerboard only, ignored otherwise);
        ``origin``: (row, column) in the whole image of the first tile (chunked prediction keeps the colours
        of the whole image); ``key``: sample earlier colours' decisions instead of taking their mode."""
        h, w = x.shape[1:3]
        if h % self.stride or w % self.stride:
            raise ValueError(f"input height and width must be multiples of {self.stride}, got {(h, w)}")
        if self.aperture_flux:
            log_scale = self.param("aperture_log_scale", nn.initializers.constant(APERTURE_LOG_SCALE_INIT), ())
            aperture = aperture_term(x, self.stride, log_scale)
        x = x.astype(self.dtype)
        x = ConvBlock(self.width, self.stem_kernel, dtype=self.dtype)(x, train)
        for _ in range(self.stem_blocks - 1):
            x = ConvBlock(self.width, 3, dtype=self.dtype)(x, train)
        for mult, n, stride in self.stages:
            if stride > 1:
                x = ConvBlock(self.width * mult, 3, stride, dtype=self.dtype)(x, train)
            x = C3(self.width * mult, n, dtype=self.dtype)(x, train)
        independent = _head_conv()(x.astype(jnp.float32))
        if self.aperture_flux:
            independent = independent.at[..., FLUX_PARAM].add(aperture)
        if self.context == "independent":
            return independent
        head = ContextHead(x.shape[-1], self.context_width)
        colour = colour_map(x.shape[1:3], self.colours, origin)
        out = jnp.zeros(x.shape[:3] + (NUM_PARAMS,), jnp.float32)
        decided_tiles = tiles
        for k in range(self.colours):
            if tiles is None and k > 0:  # the catalog decided so far, from the earlier colours' factors
                q = TilePosterior.from_params(out)
                if key is None:
                    decided_tiles = q.mode()
                else:
                    decided_tiles = jax.tree_util.tree_map(lambda a: a[0], q.sample(jax.random.fold_in(key, k), 1))
            context = (
                jnp.zeros(x.shape[:3] + (CONTEXT_CHANNELS,), jnp.float32)
                if k == 0
                else context_map(decided_tiles, colour < k)
            )
            params = independent + head(x, context)
            out = jnp.where((colour == k)[None, :, :, None], params, out)
        return out


DTYPES = {name: getattr(jnp, name) for name in configuration.DTYPES}  # model.dtype -> activation dtype


def from_config(config) -> CatalogNet:
    """The network of ``config.model`` and ``config.posterior``; ValueError naming the key for a value that builds
    no network (:func:`npejax.configuration.check_model`: an unknown dtype, a stride other than ``tile_size``, ...)."""
    configuration.check_model(config)
    post = config.posterior
    return CatalogNet(
        width=int(config.model.width),
        stem_blocks=int(config.model.stem_blocks),
        stem_kernel=int(config.model.stem_kernel),
        aperture_flux=bool(config.model.aperture_flux),
        stages=tuple(tuple(int(v) for v in s) for s in config.model.stages),
        dtype=DTYPES[config.model.dtype],
        context=str(post.context),
        colours=int(post.colours),
        context_width=int(post.context_width),
    )


def num_conv_blocks(stem_blocks: int, stages) -> int:
    """Conv-BN-SiLU blocks of a CatalogNet configuration (the final 1x1 conv not counted)."""
    return stem_blocks + sum((1 if s > 1 else 0) + 3 + 2 * n for _, n, s in stages)
