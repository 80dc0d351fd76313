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
pixel, valid PSF parameters; the first bad value is one ``ValueError`` naming it. Reading images from files
(datasets, .npz, FITS with a WCS, SDSS frames), the commands' flag values and the catalog's picture are one
layer up, in :mod:`npejax.cataloging`.

Images of any size are accepted (an SDSS frame is 2048 x 1489): sides that are not multiples of the tile
size are padded for the network and sources in the padding dropped. Images larger than ``chunk_size``
pixels on a side are predicted in overlapping square chunks (:data:`CHUNK_SIZE`), so memory stays bounded;
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
(central 68% interval, nmgy); :meth:`Predictor.catalog_batches` makes it batch by batch. An image's celestial
WCS adds ``ra`` and ``dec`` (``Predictor.catalog(..., wcs=...)``; a FITS input's own WCS:
:func:`npejax.cataloging.images.catalog_inputs`). The network's outputs are checked to be finite before any row
is made (:class:`NonFiniteOutputError`, naming the image).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

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


def check_inputs(images, background, psf_params, first_index: int = 0):
    """(images [N, H, W], background [N, H, W], psf_params [N, 6]) as float32 after checking them: non-empty
    images of finite pixels (nmgy), a background (a number, [H, W] or [N, H, W]) in (0,
    :data:`MAX_BACKGROUND`] nmgy per pixel, valid PSF parameters ([6] or [N, 6]). ValueError naming the
    first bad value (images are numbered from ``first_index``)."""
    images = np.asarray(images, np.float32)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3 or min(images.shape) == 0:
        raise ValueError(f"images must be [N, H, W] or [H, W] and non-empty, got shape {images.shape}")
    n, h, w = images.shape
    if not np.all(np.isfinite(images)):
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
    ):
        """``variables`` must be those of ``config``'s network (:func:`check_variables`); ``source`` names the
        network in messages; ``identity``: what identifies it (:meth:`network_identity`; from_workdir and
        pretrained give it)."""
        self.config = config
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

        def forward(variables, images, background, psf_params, origin):
            feats = normalizer.features(images, background, psf_params, self.variant)
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

    def check_chunk_size(self, chunk_size) -> int | None:
        """Chunk side in tiles for ``chunk_size`` pixels (None or 0: whole images); ValueError when a chunk
        would have no tiles beyond the receptive-field margins."""
        if chunk_size is None or chunk_size == 0:
            return None
        least = (2 * self.margin + 1) * self.tile_size
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < least:
            raise ValueError(
                f"chunk_size {chunk_size!r}: expected 0 (whole images) or at least {least} pixels "
                f"(this network sees {self.margin * self.tile_size} pixels beyond each tile)"
            )
        return int(chunk_size) // self.tile_size

    def _check(self, images, background, psf_params, first_index: int = 0):
        """Validated float32 arrays (:func:`check_inputs`), padded at the bottom and right to multiples of the
        tile size."""
        images, background, psf_params = check_inputs(images, background, psf_params, first_index)
        h, w = images.shape[1:]
        pad_h, pad_w = (-h) % self.tile_size, (-w) % self.tile_size
        if pad_h or pad_w:  # zeros are the sky-subtracted sky; the background continues its edge
            images = np.pad(images, ((0, 0), (0, pad_h), (0, pad_w)))
            background = np.pad(background, ((0, 0), (0, pad_h), (0, pad_w)), mode="edge")
        return images, np.ascontiguousarray(background), np.ascontiguousarray(psf_params)

    def _run(self, images, background, psf_params, first_index: int, row0: int = 0, col0: int = 0) -> dict:
        """One network call on host arrays; outputs checked to be finite (``row0``/``col0``: the tile
        offset of a chunk, for the message)."""
        out = jax.device_get(
            self._forward(
                self.variables,
                jnp.asarray(images),
                jnp.asarray(background),
                jnp.asarray(psf_params),
                jnp.asarray([row0, col0], jnp.int32),
            )
        )
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

    def _chunked(self, image, background, psf_params, index: int, chunk: int) -> dict:
        """Tiles of one padded image [Hp, Wp] predicted chunk by chunk (see the module doc)."""
        t = self.tile_size
        th, tw = image.shape[0] // t, image.shape[1] // t
        ch, cw = min(chunk, th), min(chunk, tw)
        out = None
        for a, b, s in _chunk_plan(th, chunk, self.margin):
            for a2, b2, s2 in _chunk_plan(tw, chunk, self.margin):
                rows, cols = slice(s * t, (s + ch) * t), slice(s2 * t, (s2 + cw) * t)
                piece = self._run(image[None, rows, cols], background[None, rows, cols], psf_params[None], index, s, s2)
                if out is None:
                    out = {k: np.empty((1, th, tw) + v.shape[3:], v.dtype) for k, v in piece.items()}
                for k, v in piece.items():
                    out[k][0, a:b, a2:b2] = v[0, a - s : b - s, a2 - s2 : b2 - s2]
        return out

    def predict_tiles(
        self,
        images,
        background,
        psf_params,
        batch_size: int = 256,
        chunk_size: int | None = CHUNK_SIZE,
        image_offset: int = 0,
    ) -> dict[str, np.ndarray]:
        """Per-tile mode and summaries ([N, ceil(H/t), ceil(W/t)] arrays) for images [N, H, W] (nmgy).

        Images whose sides are not multiples of the tile size t are padded at the bottom and right (image
        with zeros, background with its edge values); the last row/column of tiles then covers padding.
        Images with a side above ``chunk_size`` pixels are predicted in overlapping chunks (None or 0:
        whole). ``image_offset``: the index of the first image, for messages. NonFiniteOutputError if an
        output is NaN or infinite.
        """
        batch_size = check_batch_size(batch_size)
        chunk = self.check_chunk_size(chunk_size)
        images, background, psf_params = self._check(images, background, psf_params, image_offset)
        th, tw = images.shape[1] // self.tile_size, images.shape[2] // self.tile_size
        parts = []
        if chunk is None or (th <= chunk and tw <= chunk):
            for start in range(0, len(images), batch_size):
                sl = slice(start, start + batch_size)
                parts.append(self._run(images[sl], background[sl], psf_params[sl], image_offset + start))
        else:
            for i in range(len(images)):
                parts.append(self._chunked(images[i], background[i], psf_params[i], image_offset + i, chunk))
        return self.read_tiles({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})

    def read_tiles(self, tiles: dict) -> dict[str, np.ndarray]:
        """The network's per-tile mode and summaries (numpy, whole images) read as ``posterior.decode`` says:
        as they are (``"tile"``) or with split sources merged (``"group"``, :func:`merge_split_sources`)."""
        return merge_split_sources(tiles) if self.decode == "group" else tiles

    def _sources(self, images, background, psf_params, min_prob, batch_size, chunk_size, image_offset) -> dict:
        h, w = np.shape(images)[-2:]
        tiles = self.predict_tiles(images, background, psf_params, batch_size, chunk_size, image_offset)
        sources = tiles_to_sources(tiles, self.tile_size, min_prob=min_prob)
        inside = (sources["x"] < w) & (sources["y"] < h)
        sources = {k: v[inside] for k, v in sources.items()}
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
    ):
        """:meth:`catalog` of images given batch by batch, so that a dataset is never held whole: ``batches``
        yields (index of the first image, (images, background, psf_params)) per batch of at most ``batch_size``
        images (:meth:`npejax.cataloging.images.Inputs.batches`). ``min_prob``, ``batch_size`` and
        ``chunk_size`` are checked before ``batches`` is iterated."""
        min_prob = check_min_prob(min_prob)
        batch_size = check_batch_size(batch_size)
        self.check_chunk_size(chunk_size)
        parts = [self._sources(*arrays, min_prob, batch_size, chunk_size, start) for start, arrays in batches]
        return catalog_lib.prediction_table({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
