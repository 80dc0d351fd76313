"""The trained network as a function of arrays: images in, per-tile posterior summaries and catalogs out.

Python API::

    predictor = Predictor.from_workdir("runs/aware")          # best checkpoint: weights, normalizer, config
    predictor = Predictor.pretrained("cpu")                    # or a network shipped with the package
    tiles = predictor.predict_tiles(images, background, psf_params)   # per-tile posterior summaries
    table = predictor.catalog(images, background, psf_params)         # astropy Table, one row per source
    table = predictor.catalog(image, background, psf_params, wcs=WCS(header))  # + ra, dec (ICRS, degrees)

Arrays: ``images`` [N, H, W] (or one [H, W]; nmgy, sky-subtracted), ``background`` (a number, [H, W] or
[N, H, W]; nmgy per pixel) and ``psf_params`` ([6] or [N, 6]: s1, s2, sP, beta, b, p0). They are checked before
any prediction (:func:`check_inputs`): finite pixels, a background in (0, :data:`MAX_BACKGROUND`] nmgy per
pixel, valid PSF parameters; the first bad value is one ``ValueError`` naming it. A catalog
(:meth:`Predictor.catalog`) masks NaN and infinite pixels instead: they are set to 0, the sky-subtracted sky's
expectation, and a network with the mask channel (``model.mask_channel``, :mod:`npejax.nn.inputs`) is given them
as its masked pixels (one without it is not told); one ``warning:`` line per image names how many, and each
detection's ``masked_frac`` is the fraction of masked pixels within :data:`MASK_RADIUS` pixels of it; an image
more than :data:`MAX_MASKED_FRACTION` masked is refused. A background is never masked (NaN there: refused).
Reading images from files
(datasets, .npz, FITS with a WCS, SDSS frames), the commands' flag values and the catalog's picture are one
layer up, in :mod:`npejax.cataloging`.

Images of any size are accepted (an SDSS frame is 2048 x 1489): sides that are not multiples of the tile
size are padded for the network and sources in the padding dropped. Images larger than ``chunk_size``
pixels on a side are predicted in overlapping square chunks (:data:`CHUNK_SIZE`; the commands refuse chunks
below :meth:`Predictor.useful_chunk_size`, whose output would be a sliver of the chunk), so memory stays bounded;
the network is fully convolutional, and each tile is taken from a chunk in which its whole receptive field
(:func:`receptive_margin`, plus :attr:`~npejax.nn.model.CatalogNet.context_margin` for a checkerboard
posterior, whose colours follow the whole image's tile grid) lies inside the chunk, so the result equals the
whole-image prediction to float precision.

With ``posterior.decode = "group"`` (the default) a source whose probability is split over the tiles around
a tile corner, each below 1/2, is still detected once (:func:`npejax.nn.posterior.merge_split_sources`).

The catalog holds one row per tile whose source probability exceeds ``min_prob``, with the columns of
:data:`npejax.schema.PREDICTION_COLUMNS`: ``image``, ``x``, ``y`` (0-based pixel centres, as numpy and
astropy: ``image[i, round(y), round(x)]`` is the source's pixel), ``flux`` (nmgy, posterior
median), ``mag``, ``prob_source``, ``prob_galaxy``, ``x_std``, ``y_std``, ``flux_lo``, ``flux_hi``
(central 68% interval, nmgy), ``masked_frac`` (above); :meth:`Predictor.catalog_batches` makes it batch by
batch. An image's celestial
WCS adds ``ra`` and ``dec`` (``Predictor.catalog(..., wcs=...)``; a FITS input's own WCS:
:func:`npejax.cataloging.images.catalog_inputs`). The network's outputs are checked to be finite before any row
is made (:class:`NonFiniteOutputError`, naming the image).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from npejax import catalogs as catalog_lib
from npejax.nn import checkpoints
from npejax.nn import inputs as inputs_lib
from npejax.nn import model as model_lib
from npejax.nn import pretrained as pretrained_lib
from npejax.nn.checkpoints import CheckpointError, load_config  # noqa: F401  (part of this module's API)
from npejax.nn.posterior import TilePosterior, merge_split_sources, tiles_to_sources
from npejax.sim import psf as psf_lib

# Largest background accepted, nmgy per pixel. SDSS r-band skies are about 0.3 nmgy per 0.396" pixel on a
# dark night (21 mag/arcsec^2) and about 25 on the brightest (moon, twilight: 17 mag/arcsec^2); 1e4 nmgy
# per pixel (10.5 mag/arcsec^2) is beyond any sky, i.e. a unit mistake (DN or electrons for nmgy).
MAX_BACKGROUND = 1e4
CHUNK_SIZE = 512  # pixels: images larger than this on a side are predicted in overlapping chunks
# A useful chunk keeps at least this fraction of its side as output (the rest is the context its margins need):
# with 1/2 the chunks compute at most 4 times the image's pixels. Smaller chunks only multiply the network calls
# (76-pixel chunks of the CPU network keep one tile: 62,500 calls for a 1000 x 1000 image); the commands refuse
# them (:meth:`Predictor.check_chunk_size` with ``useful=True``).
USEFUL_CHUNK_FRACTION = 0.5
MAX_MASKED_FRACTION = 0.5  # an image with more masked (NaN or infinite) pixels than this is refused
MASK_RADIUS = 6  # pixels: ``masked_frac`` counts the masked pixels within this of a detection (a 13 x 13 box)
PROGRESS_DELAY = 2.0  # seconds: a prediction shows its progress bar (on a terminal) once it has run this long
TILE_FLOAT_KEYS = ("tile_locs", "tile_flux", "prob_source", "prob_galaxy", "loc_std", "flux_lo", "flux_hi")


class NonFiniteOutputError(ValueError):
    """The network gave NaN or infinity for an image (a corrupt checkpoint, or an input far outside the
    training data): no catalog is made."""


# --- checks ----------------------------------------------------------------------------------------


def check_min_prob(min_prob) -> float:
    """``min_prob`` as a float in [0, 1); ValueError naming the value otherwise."""
    try:
        value = float(min_prob)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 <= value < 1.0:  # also refuses NaN
        raise ValueError(
            f"min_prob {min_prob!r}: expected a probability in [0, 1) (rows with prob_source "
            "above it are kept; 0 keeps every tile)"
        )
    return value


def check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size {batch_size!r}: expected a positive number of images per network call")
    return int(batch_size)


def check_inputs(images, background, psf_params, first_index: int = 0, allow_masked: bool = False):
    """(images [N, H, W], background [N, H, W], psf_params [N, 6]) as float32 after checking them: non-empty
    images of finite pixels (nmgy), a background (a number, [H, W] or [N, H, W]) in (0,
    :data:`MAX_BACKGROUND`] nmgy per pixel, valid PSF parameters ([6] or [N, 6]). ValueError naming the
    first bad value (images are numbered from ``first_index``). With ``allow_masked`` NaN and infinite pixels are
    masked pixels, kept as they are (:meth:`Predictor.catalog` masks them), but an image with more than
    :data:`MAX_MASKED_FRACTION` of them is refused (:func:`masked_pixels`); a background is never masked."""
    images = np.asarray(images, np.float32)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3 or min(images.shape) == 0:
        raise ValueError(f"images must be [N, H, W] or [H, W] and non-empty, got shape {images.shape}")
    n, h, w = images.shape
    if allow_masked:
        masked_pixels(images, first_index)
    elif not np.all(np.isfinite(images)):
        bad = np.argwhere(~np.isfinite(images))[0]
        raise ValueError(
            f"images contain NaN or infinite pixels (first at image {first_index + bad[0]}, row "
            f"{bad[1]}, column {bad[2]})"
        )
    try:
        background = np.broadcast_to(np.asarray(background, np.float32), images.shape)
    except ValueError:
        raise ValueError(
            f"background of shape {np.shape(background)} does not match images of shape "
            f"{images.shape}: expected a number, [H, W] or [N, H, W] (nmgy)"
        ) from None
    bad = ~(np.isfinite(background) & (background > 0) & (background <= MAX_BACKGROUND))
    if np.any(bad):
        i, r, c = np.argwhere(bad)[0]
        raise ValueError(
            f"background {background[i, r, c]:g} at image {first_index + i}, row {r}, column {c}: "
            f"expected a sky level in nmgy per pixel, > 0 and <= {MAX_BACKGROUND:g} (SDSS r-band "
            "skies are about 0.3-25; DN or electrons must be converted)"
        )
    try:
        psf_params = np.broadcast_to(np.asarray(psf_params, np.float32), (n, 6))
    except ValueError:
        raise ValueError(
            f"psf_params of shape {np.shape(psf_params)}: expected [6] or [N, 6] (s1, s2, sP, beta, b, p0)"
        ) from None
    psf_lib.validate_psf_params(psf_params, where="psf_params")
    return images, background, psf_params


def masked_pixels(images, first_index: int = 0) -> np.ndarray:
    """The masked pixels of ``images`` [N, H, W]: bool [N, H, W], True where a pixel is NaN or +-inf. ValueError
    naming the first image (numbered from ``first_index``) with more than :data:`MAX_MASKED_FRACTION` of its
    pixels masked: too little of it is left to catalog."""
    masked = ~np.isfinite(np.asarray(images))
    if masked.ndim == 3 and masked.size:
        fraction = masked.reshape(len(masked), -1).mean(axis=1)
        over = np.nonzero(fraction > MAX_MASKED_FRACTION)[0]
        if over.size:
            i = int(over[0])
            raise ValueError(
                f"image {first_index + i}: {int(masked[i].sum())} of its {masked[i].size} pixels "
                f"({100 * fraction[i]:.1f}%) are NaN or infinite: expected at most {100 * MAX_MASKED_FRACTION:g}% "
                "masked pixels (too little of the image is left to catalog)"
            )
    return masked


def masked_fraction(masked, image, x, y, radius: int = MASK_RADIUS) -> np.ndarray:
    """For each detection (``image`` index into ``masked`` [N, H, W], ``x`` column and ``y`` row in pixels from
    the image edge), the fraction of masked pixels within ``radius`` pixels of its pixel: the box of (2 ``radius``
    + 1)^2 pixels centred on it, clipped at the image edge. float32, one per detection."""
    masked = np.asarray(masked, bool)
    image = np.asarray(image, np.int64)
    if image.size == 0 or not masked.any():
        return np.zeros(image.size, np.float32)
    n, h, w = masked.shape
    table = np.zeros((n, h + 1, w + 1), np.int64)  # summed-area table: table[i, r, c] = masked[i, :r, :c].sum()
    table[:, 1:, 1:] = masked.cumsum(axis=1).cumsum(axis=2)
    col = np.clip(np.floor(np.asarray(x, np.float64)).astype(np.int64), 0, w - 1)
    row = np.clip(np.floor(np.asarray(y, np.float64)).astype(np.int64), 0, h - 1)
    r0, r1 = np.maximum(row - radius, 0), np.minimum(row + radius + 1, h)
    c0, c1 = np.maximum(col - radius, 0), np.minimum(col + radius + 1, w)
    count = table[image, r1, c1] - table[image, r0, c1] - table[image, r1, c0] + table[image, r0, c0]
    return (count / ((r1 - r0) * (c1 - c0))).astype(np.float32)


def receptive_margin(net: model_lib.CatalogNet) -> int:
    """Tiles of context beyond its own pixels that one output tile of ``net`` depends on, on any side.

    Follows :class:`~npejax.nn.model.CatalogNet`'s layers: a ``stem_kernel`` stem block, ``stem_blocks - 1`` 3x3 blocks,
    then per stage a strided 3x3 block (stride > 1) and one 3x3 conv per bottleneck (1x1 convs add no
    context); SAME padding with sides that are multiples of the stride puts ``(k - s) // 2`` zeros before
    the input. Output tile t sees input pixels [t*T + lo, t*T + hi].
    """
    layers = [(int(net.stem_kernel), 1)] + [(3, 1)] * (int(net.stem_blocks) - 1)
    for _, bottlenecks, stride in net.stages:
        if stride > 1:
            layers.append((3, int(stride)))
        layers += [(3, 1)] * int(bottlenecks)
    lo = hi = 0
    for k, s in reversed(layers):
        pad = (k - s) // 2
        lo, hi = lo * s - pad, hi * s - pad + k - 1
    t = net.stride
    margin = -(-max(-lo, hi - (t - 1), 0) // t)
    return max(margin, 1) if net.aperture_flux else margin  # the aperture sums each tile's 3 x 3 tiles


def check_variables(config: ml_collections.ConfigDict, variables, source: str = "the variables") -> None:
    """ValueError unless ``variables`` hold exactly the arrays (names and shapes) of ``config``'s network
    (:func:`npejax.nn.pretrained.abstract_variables`): weights of another network would otherwise run silently
    (Flax ignores arrays the model does not use: a checkerboard network's under an independent-tiles config). A
    checkerboard's context head present or missing is named as ``posterior.context`` with both values; other
    differences name the first arrays. Architectures with the same arrays (``posterior.colours`` 2 or 4) are told
    apart only by the config saved with the weights, which :func:`npejax.nn.checkpoints.load_network` and
    :func:`npejax.nn.pretrained.read_network` compare."""
    have = {k: tuple(np.shape(v)) for k, v in pretrained_lib.flatten_variables(variables).items()}
    want = {k: tuple(v.shape) for k, v in pretrained_lib.flat_tree(pretrained_lib.abstract_variables(config)).items()}
    problems = checkpoints.array_mismatches(
        have, want, lambda k: have[k] != want[k], lambda k: f"{k} has shape {have[k]}, the model's {want[k]}", source
    )
    if not problems:
        return
    context = str(config.posterior.context)
    has_head = any(f"/{model_lib.ContextHead.__name__}_" in "/" + k for k in have)
    if has_head != (context == "checkerboard"):
        found = "checkerboard" if has_head else "independent"
        raise ValueError(
            f"posterior.context: {source} was trained with {found!r} ({'with' if has_head else 'without'} the "
            f"checkerboard's context head, {model_lib.ContextHead.__name__}), the config says {context!r}; "
            "load the network with the config it was trained with (config.json, Predictor.from_workdir)"
        )
    raise ValueError(f"{source}: the arrays are not those of the config's network (model.*, posterior.*): {problems}")


def _chunk_plan(num_tiles: int, chunk: int, margin: int) -> list[tuple[int, int, int]]:
    """Along one axis of ``num_tiles`` tiles: (core start, core stop, chunk start) per chunk of ``chunk``
    tiles; the cores partition the axis and each core lies at least ``margin`` tiles inside its chunk
    (or touches the image edge, where the chunk's edge is the image's)."""
    if num_tiles <= chunk:
        return [(0, num_tiles, 0)]
    core = chunk - 2 * margin
    return [
        (a, min(a + core, num_tiles), min(max(a - margin, 0), num_tiles - chunk)) for a in range(0, num_tiles, core)
    ]


class Predictor:
    """A trained network with its normalizer and config; batched, jit-compiled prediction."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        variables: dict,
        normalizer: inputs_lib.Normalizer,
        source: str = "the network",
        identity: dict | None = None,
        quality_thresholds: dict | None = None,
    ):
        """``variables`` must be those of ``config``'s network (:func:`check_variables`); ``source`` names the
        network in messages; ``identity``: what identifies it (:meth:`network_identity`; from_workdir and
        pretrained give it); ``quality_thresholds``: the quality flag's thresholds calibrated for this network
        (``{"detection", "image", "flux_ratio"}``; :meth:`pretrained` gives a registry entry's), None: the
        package's (:data:`npejax.cataloging.quality.THRESHOLDS`)."""
        self.config = config
        self.quality_thresholds = quality_thresholds
        self.variables = variables
        self.normalizer = normalizer
        self.source = source
        self.variant = config.model.variant
        self.tile_size = int(config.tile_size)
        net = model_lib.from_config(config)
        check_variables(config, variables, source)
        self.identity = identity
        self.decode = str(config.posterior.decode)  # checked by model_lib.from_config
        self.margin = receptive_margin(net) + net.context_margin  # tiles

        def forward(variables, images, background, psf_params, origin, mask=None):
            feats = normalizer.features(images, background, psf_params, self.variant, mask)
            q = TilePosterior.from_params(net.apply(variables, feats, train=False, origin=origin))
            return dict(q.mode(), **q.summary())

        self._forward = jax.jit(forward)

    @classmethod
    def from_workdir(cls, workdir: str, which: str = "best") -> Predictor:
        """Loads ``workdir/checkpoints/{best,latest}`` (:func:`npejax.nn.checkpoints.load_network`: clear errors for
        a missing or foreign directory)."""
        source = f"checkpoint {os.path.join(workdir, 'checkpoints', which)}"
        loaded = checkpoints.load_network(workdir, which)
        return cls(*loaded, source=source, identity=checkpoints.network_identity(workdir, which))

    @classmethod
    def pretrained(cls, name: str, directory: str | None = None) -> Predictor:
        """The pretrained network ``name`` shipped with the package (:mod:`npejax.nn.pretrained`; its file's
        SHA-256 checked against the registry; ``directory``: another registry's directory). PretrainedError
        listing the available names for an unknown one."""
        path = pretrained_lib.file_path(name, directory)
        return cls(
            *pretrained_lib.load(name, directory),
            source=f"pretrained network {name} ({path})",
            identity=pretrained_lib.identity(name, directory),
            quality_thresholds=pretrained_lib.quality_thresholds(name, directory),
        )

    def network_identity(self) -> dict:
        """What identifies this network (a survey catalog records it, :mod:`npejax.cataloging.runner`):
        ``network`` (for people), ``network_sha256`` and ``decode``. A checkpoint's or pretrained file's
        (:func:`npejax.nn.checkpoints.network_identity`, :func:`npejax.nn.pretrained.identity`); for a Predictor
        made from arrays, the SHA-256 of its variables (names, shapes, dtypes, values) and normalizer."""
        if self.identity is not None:
            return dict(self.identity)
        h = hashlib.sha256()
        for name, array in sorted(pretrained_lib.flatten_variables(self.variables).items()):
            array = np.ascontiguousarray(array)
            h.update(f"{name} {array.dtype.str} {array.shape}\n".encode())
            h.update(array.tobytes())
        h.update(json.dumps(self.normalizer.to_dict(), sort_keys=True).encode())
        return dict(network=self.source, network_sha256=h.hexdigest(), decode=self.decode)

    def useful_chunk_size(self) -> int:
        """The smallest chunk side (pixels) that keeps :data:`USEFUL_CHUNK_FRACTION` of its side as output beyond
        the receptive-field margins (and at least one tile)."""
        tiles = math.ceil(2 * self.margin / (1 - USEFUL_CHUNK_FRACTION))
        return max(tiles, 2 * self.margin + 1) * self.tile_size

    def network_calls(self, height: int, width: int, chunk_size) -> int:
        """Network calls that predict one ``height`` x ``width`` image in chunks of ``chunk_size`` pixels (1 for
        whole images)."""
        chunk = self.check_chunk_size(chunk_size)
        th, tw = -(-int(height) // self.tile_size), -(-int(width) // self.tile_size)
        if chunk is None or (th <= chunk and tw <= chunk):
            return 1
        return len(_chunk_plan(th, chunk, self.margin)) * len(_chunk_plan(tw, chunk, self.margin))

    def check_chunk_size(self, chunk_size, useful: bool = False) -> int | None:
        """Chunk side in tiles for ``chunk_size`` pixels (None or 0: whole images); ValueError when a chunk
        would have no tiles beyond the receptive-field margins, or with ``useful`` (the commands' --chunk-size)
        when it is smaller than :meth:`useful_chunk_size`: its output would be so small a part of it that the
        network calls multiply (the error says how many a 1000 x 1000 image would take)."""
        if chunk_size is None or chunk_size == 0:
            return None
        least = (2 * self.margin + 1) * self.tile_size
        context = f"this network sees {self.margin * self.tile_size} pixels beyond each tile"
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < least:
            raise ValueError(
                f"chunk_size {chunk_size!r}: expected 0 (whole images) or at least {least} pixels ({context})"
            )
        useful_least = self.useful_chunk_size()
        if useful and chunk_size < useful_least:
            kept = (int(chunk_size) // self.tile_size - 2 * self.margin) * self.tile_size
            calls = self.network_calls(1000, 1000, int(chunk_size))
            raise ValueError(
                f"chunk_size {chunk_size}: expected 0 (whole images) or at least {useful_least} pixels ({context}: a "
                f"chunk of {chunk_size} keeps {kept} pixels of its side as output, {calls:,} network calls for a "
                f"1000 x 1000 image, against {self.network_calls(1000, 1000, useful_least):,} at {useful_least})"
            )
        return int(chunk_size) // self.tile_size

    def _check(self, images, background, psf_params, first_index: int = 0, mask=None):
        """Validated float32 arrays (:func:`check_inputs`) and the masked pixels (bool; ``mask`` or none), padded at
        the bottom and right to multiples of the tile size."""
        images, background, psf_params = check_inputs(images, background, psf_params, first_index)
        if mask is None:
            mask = np.zeros(images.shape, bool)
        elif np.shape(mask) != images.shape:
            raise ValueError(f"mask of shape {np.shape(mask)}: expected the images' shape {images.shape} (bool)")
        h, w = images.shape[1:]
        pad_h, pad_w = (-h) % self.tile_size, (-w) % self.tile_size
        if pad_h or pad_w:  # zeros are the sky-subtracted sky (not masked); the background continues its edge
            images = np.pad(images, ((0, 0), (0, pad_h), (0, pad_w)))
            background = np.pad(background, ((0, 0), (0, pad_h), (0, pad_w)), mode="edge")
            mask = np.pad(mask, ((0, 0), (0, pad_h), (0, pad_w)))
        mask = np.ascontiguousarray(mask, bool)
        return images, np.ascontiguousarray(background), np.ascontiguousarray(psf_params), mask

    def _run(self, images, background, psf_params, mask, first_index: int, row0: int = 0, col0: int = 0) -> dict:
        """One network call on host arrays; outputs checked to be finite (``row0``/``col0``: the tile
        offset of a chunk, for the message)."""
        args = [self.variables, jnp.asarray(images), jnp.asarray(background), jnp.asarray(psf_params)]
        args.append(jnp.asarray([row0, col0], jnp.int32))
        if self.normalizer.mask_channel:  # a network without the channel is called as before it existed
            args.append(jnp.asarray(mask))
        out = jax.device_get(self._forward(*args))
        for key in TILE_FLOAT_KEYS:
            bad = ~np.isfinite(out[key])
            if np.any(bad):
                where = np.argwhere(bad)[0]
                i, r, c = where[:3]
                raise NonFiniteOutputError(
                    f"the network's output for image {first_index + i} is not finite ({key} = "
                    f"{out[key][tuple(where)]} at tile row {row0 + r}, column {col0 + c}): {self.source} may be "
                    "corrupt, or the image is far outside the training data; no catalog written"
                )
        return out

    def _chunked(self, image, background, psf_params, mask, index: int, chunk: int, progress: bool = False) -> dict:
        """Tiles of one padded image [Hp, Wp] predicted chunk by chunk (see the module doc); ``progress``: a bar
        of the chunks (:func:`progress_bar`)."""
        t = self.tile_size
        th, tw = image.shape[0] // t, image.shape[1] // t
        ch, cw = min(chunk, th), min(chunk, tw)
        out = None
        plan_h, plan_w = _chunk_plan(th, chunk, self.margin), _chunk_plan(tw, chunk, self.margin)
        with progress_bar(progress, len(plan_h) * len(plan_w), f"image {index}", "chunk", leave=False) as bar:
            for a, b, s in plan_h:
                for a2, b2, s2 in plan_w:
                    rows, cols = slice(s * t, (s + ch) * t), slice(s2 * t, (s2 + cw) * t)
                    piece = self._run(
                        image[None, rows, cols],
                        background[None, rows, cols],
                        psf_params[None],
                        mask[None, rows, cols],
                        index,
                        s,
                        s2,
                    )
                    if out is None:
                        out = {k: np.empty((1, th, tw) + v.shape[3:], v.dtype) for k, v in piece.items()}
                    for k, v in piece.items():
                        out[k][0, a:b, a2:b2] = v[0, a - s : b - s, a2 - s2 : b2 - s2]
                    bar.update(1)
        return out

    def predict_tiles(
        self,
        images,
        background,
        psf_params,
        batch_size: int = 256,
        chunk_size: int | None = CHUNK_SIZE,
        image_offset: int = 0,
        progress: bool = False,
        mask=None,
    ) -> dict[str, np.ndarray]:
        """Per-tile mode and summaries ([N, ceil(H/t), ceil(W/t)] arrays) for images [N, H, W] (nmgy).

        Images whose sides are not multiples of the tile size t are padded at the bottom and right (image
        with zeros, background with its edge values); the last row/column of tiles then covers padding.
        Images with a side above ``chunk_size`` pixels are predicted in overlapping chunks (None or 0:
        whole). ``image_offset``: the index of the first image, for messages. NonFiniteOutputError if an
        output is NaN or infinite. Every pixel must be finite here (:meth:`catalog` masks NaN pixels);
        ``progress``: a bar of each chunked image's chunks (:func:`progress_bar`). ``mask`` (bool [N, H, W],
        optional): pixels that carry no information, given to a network with the mask channel
        (``model.mask_channel``) and ignored by one without it (:meth:`catalog` passes the NaN pixels).
        """
        batch_size = check_batch_size(batch_size)
        chunk = self.check_chunk_size(chunk_size)
        images, background, psf_params, mask = self._check(images, background, psf_params, image_offset, mask)
        th, tw = images.shape[1] // self.tile_size, images.shape[2] // self.tile_size
        parts = []
        if chunk is None or (th <= chunk and tw <= chunk):
            for start in range(0, len(images), batch_size):
                sl = slice(start, start + batch_size)
                parts.append(self._run(images[sl], background[sl], psf_params[sl], mask[sl], image_offset + start))
        else:
            for i in range(len(images)):
                parts.append(
                    self._chunked(images[i], background[i], psf_params[i], mask[i], image_offset + i, chunk, progress)
                )
        return self.read_tiles({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})

    def read_tiles(self, tiles: dict) -> dict[str, np.ndarray]:
        """The network's per-tile mode and summaries (numpy, whole images) read as ``posterior.decode`` says:
        as they are (``"tile"``) or with split sources merged (``"group"``, :func:`merge_split_sources`)."""
        return merge_split_sources(tiles) if self.decode == "group" else tiles

    def _sources(
        self, images, background, psf_params, min_prob, batch_size, chunk_size, image_offset, progress=False
    ) -> dict:
        """Detections of images that may hold masked (NaN, +-inf) pixels: those are set to 0, the sky-subtracted
        sky's expectation, and given as the mask channel to a network that has one; one warning line per image
        says how many, and each detection gets ``masked_frac`` (:func:`masked_fraction`)."""
        images = np.asarray(images, np.float32)
        images = images[None] if images.ndim == 2 else images
        h, w = images.shape[-2:]
        masked = masked_pixels(images, image_offset) if images.ndim == 3 else np.zeros(images.shape, bool)
        if masked.any():
            for i in np.nonzero(masked.any(axis=(1, 2)))[0]:
                sys.stderr.write(
                    f"warning: image {image_offset + i}: {int(masked[i].sum())} NaN or infinite pixels "
                    f"({100 * masked[i].mean():.2f}%) masked (set to 0); detections within {MASK_RADIUS} pixels of "
                    "them have masked_frac > 0\n"
                )
            sys.stderr.flush()
            images = np.where(masked, np.float32(0), images)
        tiles = self.predict_tiles(
            images,
            background,
            psf_params,
            batch_size,
            chunk_size,
            image_offset,
            progress,
            masked if masked.any() else None,
        )
        sources = tiles_to_sources(tiles, self.tile_size, min_prob=min_prob)
        inside = (sources["x"] < w) & (sources["y"] < h)
        sources = {k: v[inside] for k, v in sources.items()}
        sources["masked_frac"] = masked_fraction(masked, sources["image"], sources["x"], sources["y"])
        sources["image"] = sources["image"] + image_offset
        return sources

    def catalog(
        self,
        images,
        background,
        psf_params,
        min_prob: float = 0.5,
        batch_size: int = 256,
        image_offset: int = 0,
        chunk_size: int | None = CHUNK_SIZE,
        wcs=None,
    ):
        """Probabilistic catalog (astropy Table) of tiles with ``prob_source > min_prob``; sources whose
        position falls in the padding of an image of any other size are dropped.

        NaN and infinite pixels are masked: set to 0 (the sky-subtracted sky) before the network sees them (and given
        as its mask channel to a network that has one, ``model.mask_channel``), one
        ``warning:`` line per image on stderr, and the column ``masked_frac`` (every catalog has it) gives each
        detection's fraction of masked pixels within :data:`MASK_RADIUS` pixels; an image with more than
        :data:`MAX_MASKED_FRACTION` masked is refused (ValueError).

        ``wcs``: the celestial WCS of the image (an :class:`astropy.wcs.WCS`, e.g. ``WCS(header).celestial``,
        or any WCS with ``pixel_to_world``) adds ``ra`` and ``dec`` (ICRS, degrees) and its keywords to the
        table's metadata, exactly as a FITS input of ``python -m npejax.predict`` does
        (:func:`npejax.catalogs.add_sky_coordinates`); every row goes through it, so give it for one image (or
        images that share it)."""
        min_prob = check_min_prob(min_prob)
        if wcs is not None:
            catalog_lib.check_wcs(wcs)  # before the network runs
        table = catalog_lib.prediction_table(
            self._sources(images, background, psf_params, min_prob, batch_size, chunk_size, image_offset)
        )
        return table if wcs is None else catalog_lib.add_sky_coordinates(table, wcs)

    def catalog_batches(
        self,
        batches: Iterable[tuple[int, tuple]],
        min_prob: float = 0.5,
        batch_size: int = 256,
        chunk_size: int | None = CHUNK_SIZE,
        progress: bool = False,
        num_images: int | None = None,
    ):
        """:meth:`catalog` of images given batch by batch, so that a dataset is never held whole: ``batches``
        yields (index of the first image, (images, background, psf_params)) per batch of at most ``batch_size``
        images (:meth:`npejax.cataloging.images.Inputs.batches`). ``min_prob``, ``batch_size`` and
        ``chunk_size`` are checked before ``batches`` is iterated. ``progress``: a bar of the images
        (``num_images`` of them) and of each chunked image's chunks, on a terminal once the prediction has run
        :data:`PROGRESS_DELAY` seconds (:func:`progress_bar`)."""
        min_prob = check_min_prob(min_prob)
        batch_size = check_batch_size(batch_size)
        self.check_chunk_size(chunk_size)
        parts = []
        with progress_bar(progress, num_images, "predicting", "img") as bar:
            for start, arrays in batches:
                parts.append(self._sources(*arrays, min_prob, batch_size, chunk_size, start, progress))
                bar.update(np.shape(arrays[0])[0] if np.ndim(arrays[0]) == 3 else 1)
        return catalog_lib.prediction_table({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})


def progress_bar(show: bool, total: int | None, desc: str, unit: str, leave: bool = True):
    """A tqdm bar on stderr when ``show``, only on a terminal (not in a log or a test's captured stderr), and only
    once it has run :data:`PROGRESS_DELAY` seconds: short predictions print nothing."""
    return tqdm.tqdm(
        total=total,
        desc=desc,
        unit=unit,
        leave=leave,
        delay=PROGRESS_DELAY,
        file=sys.stderr,
        disable=None if show else True,  # None: tqdm's own test, off unless stderr is a terminal
        dynamic_ncols=True,
    )
