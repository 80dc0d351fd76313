"""YOLOv5-style fully convolutional inference network (Flax linen), image -> per-tile posterior parameters.

Building blocks as in YOLOv5: ``ConvBlock`` (conv without bias, batch norm, SiLU), ``Bottleneck``
(1x1 then 3x3 block, with a residual connection) and ``C3`` (two 1x1 branches, one through ``n``
bottlenecks, concatenated and fused by a 1x1 block; 3 + 2n blocks). The network is a stem, then stages
``(width multiplier, bottlenecks, stride)``; a stage with stride 2 starts with a strided 3x3 block. The
strides multiply to the tile size, so an H x W input (multiples of the tile size) gives an
H/tile x W/tile grid, and a final 1x1 convolution gives :data:`npejax.nn.posterior.NUM_PARAMS` per tile.
The full-size configuration (``configs/default.py``) has 48 conv-BN-SiLU blocks.

:func:`from_config` builds the network from the ``model`` section of a config (``model.width``,
``model.stem_blocks``, ``model.stages``, ``model.dtype``) and checks that its stride equals ``tile_size``;
:class:`CatalogNet` itself has no defaults: they live in ``configs/default.py`` only.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from npejax.nn.posterior import INITIAL_BIAS, NUM_PARAMS


class ConvBlock(nn.Module):
    features: int
    kernel: int = 3
    stride: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(self.features, (self.kernel, self.kernel), strides=(self.stride, self.stride),
                    padding="SAME", use_bias=False, dtype=self.dtype)(x)
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


class CatalogNet(nn.Module):
    """Image features [B, H, W, C] -> posterior parameters [B, H/t, W/t, 8] (float32).

    ``width``: channels of the stem; ``stem_blocks``: conv blocks before the stages; ``stages``:
    (width multiplier, bottlenecks, stride) per stage; ``dtype``: activation dtype (parameters float32).
    Build it with :func:`from_config` (the values of ``configs/default.py``).
    """

    width: int
    stem_blocks: int
    stages: Sequence[Sequence[int]]
    dtype: Any

    @property
    def stride(self) -> int:
        total = 1
        for _, _, s in self.stages:
            total *= s
        return total

    @nn.compact
    def __call__(self, x, train: bool = False):
        h, w = x.shape[1:3]
        if h % self.stride or w % self.stride:
            raise ValueError(f"input height and width must be multiples of {self.stride}, got {(h, w)}")
        x = x.astype(self.dtype)
        x = ConvBlock(self.width, 5, dtype=self.dtype)(x, train)
        for _ in range(self.stem_blocks - 1):
            x = ConvBlock(self.width, 3, dtype=self.dtype)(x, train)
        for mult, n, stride in self.stages:
            if stride > 1:
                x = ConvBlock(self.width * mult, 3, stride, dtype=self.dtype)(x, train)
            x = C3(self.width * mult, n, dtype=self.dtype)(x, train)
        bias = lambda key, shape, dtype=jnp.float32: jnp.asarray(INITIAL_BIAS, dtype)
        head = nn.Conv(NUM_PARAMS, (1, 1), dtype=jnp.float32, bias_init=bias,
                       kernel_init=nn.initializers.zeros)  # start at the prior-like bias: no extreme outputs
        return head(x.astype(jnp.float32))


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # model.dtype -> activation dtype


def from_config(config) -> CatalogNet:
    """The network of ``config.model``; ValueError for an unknown dtype or a stride other than ``tile_size``."""
    dtype = DTYPES.get(config.model.dtype)
    if dtype is None:
        raise ValueError(f"model.dtype must be 'float32' or 'bfloat16', got {config.model.dtype!r}")
    stages = tuple(tuple(int(v) for v in s) for s in config.model.stages)
    net = CatalogNet(width=int(config.model.width), stem_blocks=int(config.model.stem_blocks), stages=stages,
                     dtype=dtype)
    if net.stride != config.tile_size:
        raise ValueError(f"model stages stride {net.stride} must equal tile_size {config.tile_size}")
    return net


def num_conv_blocks(stem_blocks: int, stages) -> int:
    """Conv-BN-SiLU blocks of a CatalogNet configuration (the final 1x1 conv not counted)."""
    return stem_blocks + sum((1 if s > 1 else 0) + 3 + 2 * n for _, n, s in stages)
