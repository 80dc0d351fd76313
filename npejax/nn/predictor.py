"""Catalog new images with a trained network (the library behind ``python -m npejax.predict``).

Python API::

    predictor = Predictor.from_workdir("runs/aware")          # best checkpoint: weights, normalizer, config
    tiles = predictor.predict_tiles(images, background, psf_params)   # per-tile posterior summaries
    table = predictor.catalog(images, background, psf_params)         # astropy Table, one row per source
    table = predictor.catalog_of(open_inputs("image.fits", background=0.7, psf_params="1.2,3.5,1.5,3,0.1,0.08"))

Inputs (:func:`open_inputs`): a dataset directory written by ``npejax.simulate`` (read batch by batch,
never whole); an ``.npz`` with ``images`` [N, H, W] (nmgy, sky-subtracted), ``background`` [N, H, W]
(nmgy) and ``psf_params`` [N, 6]; or a FITS image (the first 2-D image HDU, nmgy, sky-subtracted) with the
background given as a number or a FITS file (nmgy per pixel) and the PSF as ``s1,s2,sP,beta,b,p0`` or
as a field of the field bank; or an SDSS r-band frame with its psField (:func:`open_sdss_frame`: the frame's
own sky as background, the psField's PSF). Every input is checked before any prediction: finite pixels, a background
in (0, :data:`MAX_BACKGROUND`] nmgy per pixel, valid PSF parameters; a truncated or corrupt file is one
``ValueError`` naming it.

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
:data:`npejax.schema.PREDICTION_COLUMNS`: ``image``, ``x``, ``y`` (pixels), ``flux`` (nmgy, posterior
median), ``mag``, ``prob_source``, ``prob_galaxy``, ``x_std``, ``y_std``, ``flux_lo``, ``flux_hi``
(central 68% interval, nmgy). When the input is a FITS image with a celestial WCS, the catalog also has
``ra`` and ``dec`` (ICRS, degrees; :func:`add_sky_coordinates`) and keeps the WCS keywords in its metadata
(the FITS header of a ``.fits`` catalog). The network's outputs are checked to be finite before any row
is made (:class:`NonFiniteOutputError`, naming the image).
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
import zipfile
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from astropy import wcs as wcs_lib
from astropy.io import fits

from npejax import catalogs as catalog_lib
from npejax import cli, io
from npejax import datasets as data_lib
from npejax.nn import checkpoints
from npejax.nn import inputs as inputs_lib
from npejax.nn import model as model_lib
from npejax.nn.checkpoints import CheckpointError, load_config  # noqa: F401  (part of this module's API)
from npejax.nn.posterior import TilePosterior, merge_split_sources, tiles_to_sources
from npejax.sim import fields as fields_lib
from npejax.sim import psf as psf_lib
from npejax.surveys import sdss

INPUT_ARRAYS = ("images", "background", "psf_params")  # what an .npz input holds (npejax.schema batch keys)
FITS_EXTENSIONS = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fits.bz2")
# Largest background accepted, nmgy per pixel. SDSS r-band skies are about 0.3 nmgy per 0.396" pixel on a
# dark night (21 mag/arcsec^2) and about 25 on the brightest (moon, twilight: 17 mag/arcsec^2); 1e4 nmgy
# per pixel (10.5 mag/arcsec^2) is beyond any sky, i.e. a unit mistake (DN or electrons for nmgy).
MAX_BACKGROUND = 1e4
CHUNK_SIZE = 512  # pixels: images larger than this on a side are predicted in overlapping chunks
TILE_FLOAT_KEYS = ("tile_locs", "tile_flux", "prob_source", "prob_galaxy", "loc_std", "flux_lo", "flux_hi")


class NonFiniteOutputError(ValueError):
    """The network gave NaN or infinity for an image (a corrupt checkpoint, or an input far outside the
    training data): no catalog is made."""


# --- checks shared by the library and the command ---------------------------------------------------


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


def min_prob_flag(value) -> float:
    """The ``--min-prob`` flag of the commands: :func:`check_min_prob`, a usage error (one line) otherwise."""
    try:
        return check_min_prob(value)
    except ValueError:
        raise cli.UsageError(
            f"--min-prob {value}: expected a probability in [0, 1) (rows with prob_source above it are kept)"
        ) from None


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
    ):
        self.config = config
        self.variables = variables
        self.normalizer = normalizer
        self.source = source
        self.variant = config.model.variant
        self.tile_size = int(config.tile_size)
        net = model_lib.from_config(config)
        self.decode = str(config.posterior.decode)  # checked by model_lib.from_config
        self.margin = receptive_margin(net) + net.context_margin  # tiles

        def forward(variables, images, background, psf_params, origin):
            feats = normalizer.features(images, background, psf_params, self.variant)
            q = TilePosterior.from_params(net.apply(variables, feats, train=False, origin=origin))
            return dict(q.mode(), **q.summary())

        self._forward = jax.jit(forward)

    @classmethod
    def from_workdir(cls, workdir: str, which: str = "best") -> Predictor:
        """Loads ``workdir/checkpoints/{best,latest}`` (:func:`npejax.nn.checkpoints.load`: clear errors for
        a missing or foreign directory)."""
        source = f"checkpoint {os.path.join(workdir, 'checkpoints', which)}"
        return cls(*checkpoints.load(workdir, which), source=source)

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
    ):
        """Probabilistic catalog (astropy Table) of tiles with ``prob_source > min_prob``; sources whose
        position falls in the padding of an image of any other size are dropped."""
        min_prob = check_min_prob(min_prob)
        return catalog_lib.prediction_table(
            self._sources(images, background, psf_params, min_prob, batch_size, chunk_size, image_offset)
        )

    def catalog_of(
        self, inputs: Inputs, min_prob: float = 0.5, batch_size: int = 256, chunk_size: int | None = CHUNK_SIZE
    ):
        """:meth:`catalog` of :class:`Inputs`, read ``batch_size`` images at a time (a dataset is never
        loaded whole); with ``ra``/``dec`` columns when the inputs have a celestial WCS."""
        min_prob = check_min_prob(min_prob)
        batch_size = check_batch_size(batch_size)
        self.check_chunk_size(chunk_size)
        parts = [
            self._sources(*arrays, min_prob, batch_size, chunk_size, start)
            for start, arrays in inputs.batches(batch_size)
        ]
        table = catalog_lib.prediction_table({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
        if inputs.wcs is not None:
            add_sky_coordinates(table, inputs.wcs)
        return table


# --- inputs ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Inputs:
    """Images to catalog (:func:`open_inputs`): ``name`` (for messages), ``num_images``, ``read(start, stop)``
    giving (images, background, psf_params) of images [start, stop) (checked with :func:`check_inputs`),
    and ``wcs`` (the celestial WCS of a single FITS image, else None)."""

    name: str
    num_images: int
    read: Callable[[int, int], tuple]
    wcs: wcs_lib.WCS | None = None

    @classmethod
    def from_arrays(cls, images, background, psf_params, name: str = "arrays", wcs=None) -> Inputs:
        """Inputs held in memory; checked now (:func:`check_inputs`)."""
        images, background, psf_params = check_inputs(images, background, psf_params)
        return cls(name, len(images), lambda a, b: (images[a:b], background[a:b], psf_params[a:b]), wcs)

    @classmethod
    def from_dataset(cls, path: str) -> Inputs:
        """A dataset directory read ``batch_size`` images at a time (memory-mapped, checked on opening)."""
        ds = data_lib.load(path)

        def read(start, stop):
            arrays = ds[start:stop]
            return tuple(check_inputs(*(arrays[k] for k in INPUT_ARRAYS), first_index=start))

        return cls(os.fspath(path), len(ds), read)

    def batches(self, batch_size: int) -> Iterator[tuple[int, tuple]]:
        """(index of the first image, (images, background, psf_params)) per batch of ``batch_size``."""
        for start in range(0, self.num_images, batch_size):
            yield start, self.read(start, min(start + batch_size, self.num_images))


def open_inputs(path: str, background=None, psf_params=None, field_id=None, bank=None) -> Inputs:
    """:class:`Inputs` from a dataset directory, an .npz or a FITS image (see the module doc), checked
    before any prediction (a dataset's manifest and shard files when it is opened, its pixels batch by
    batch).

    For a FITS image, ``background`` is a number or a FITS file (nmgy per pixel) and the PSF is either
    ``psf_params`` ("s1,s2,sP,beta,b,p0" or 6 numbers) or the field ``field_id`` of the field bank ``bank``
    (a path, or None for the embedded synthetic bank); these are refused for other inputs.
    """
    path = os.fspath(path)
    if os.path.isdir(path) or path.endswith(".npz"):
        given = [
            name
            for name, value in (("background", background), ("psf_params", psf_params), ("field_id", field_id))
            if value is not None
        ]
        if given:
            raise ValueError(
                f"{', '.join(given)}: only for a FITS image input; {path} holds its own background and PSF parameters"
            )
    if os.path.isdir(path):
        return Inputs.from_dataset(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"input {path} does not exist")
    if path.endswith(".npz"):
        return Inputs.from_arrays(*_read_npz(path), name=path)
    if path.lower().endswith(FITS_EXTENSIONS):
        return _fits_inputs(path, background, psf_params, field_id, bank)
    raise ValueError(
        f"unsupported input {path}: expected a dataset directory, an .npz or a FITS image "
        f"({', '.join(FITS_EXTENSIONS)})"
    )


def load_inputs(path: str, background=None, psf_params=None, field_id=None, bank=None):
    """(images, background, psf_params) of every image of :func:`open_inputs` as arrays in memory."""
    inputs = open_inputs(path, background, psf_params, field_id, bank)
    return inputs.read(0, inputs.num_images)


def _read_npz(path: str):
    try:
        with np.load(path) as f:
            missing = [k for k in INPUT_ARRAYS if k not in f.files]
            if missing:
                raise ValueError(f"{path} lacks arrays {missing}; expected images, background, psf_params")
            return tuple(np.asarray(f[k]) for k in INPUT_ARRAYS)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        if isinstance(exc, ValueError) and "lacks arrays" in str(exc):
            raise
        raise ValueError(
            f"{path} is not a readable .npz (truncated or corrupt?): {type(exc).__name__}: {exc}"
        ) from None


def read_fits_image(path: str, what: str = "FITS file") -> tuple[np.ndarray, fits.Header]:
    """(data as float32, header) of the first 2-D image HDU of ``path``, read whole; ValueError naming the
    file for a truncated, corrupt or image-less file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path} does not exist")
    found = None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fits.open(sdss.fits_source(path), memmap=False, lazy_load_hdus=False) as hdul:
                for hdu in hdul:
                    if hdu.is_image and hdu.header.get("NAXIS") == 2 and hdu.data is not None:
                        found = np.array(hdu.data, np.float32), hdu.header.copy()
                        break
    except Exception as exc:  # OSError, TypeError ("buffer is too small"), ValueError, EOFError, VerifyError
        raise ValueError(
            f"{what} {path} is not a readable FITS file (truncated or corrupt?): {type(exc).__name__}: {exc}"
        ) from None
    for w in caught:
        if "truncated" in str(w.message).lower():
            raise ValueError(f"{what} {path} is truncated: {w.message}")
    if found is None:
        raise ValueError(f"{what} {path} holds no 2-D image HDU")
    return found


def celestial_wcs(header: fits.Header, name: str) -> wcs_lib.WCS | None:
    """The celestial part of the WCS in ``header``, or None when it has none; ValueError naming ``name``
    for WCS keywords astropy cannot use."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", wcs_lib.FITSFixedWarning)
            w = wcs_lib.WCS(header)
    except Exception as exc:  # astropy raises several types for bad WCS keywords
        raise ValueError(
            f"{name}: its WCS keywords cannot be used ({type(exc).__name__}: {exc}); fix or remove "
            "them (CTYPE, CRPIX, CRVAL, CD/PC)"
        ) from None
    return w.celestial if w.has_celestial else None


def add_sky_coordinates(table, wcs: wcs_lib.WCS):
    """Adds ``ra`` and ``dec`` (ICRS, degrees) to a catalog of one image with celestial WCS ``wcs``, and
    the WCS keywords to its metadata (a FITS catalog's header); returns the table.

    Pixel convention: npejax's ``x``, ``y`` are pixels from the image edge, pixel (i, j) covering [i, i+1)
    x [j, j+1), so a pixel's centre is at x = i + 0.5; astropy's 0-based pixel coordinates put pixel i's
    centre at i. The position is therefore ``wcs.pixel_to_world(x - 0.5, y - 0.5)`` (FITS 1-based pixel
    x + 0.5, y + 0.5).
    """
    x = np.asarray(table["x"], np.float64) - 0.5
    y = np.asarray(table["y"], np.float64) - 0.5
    if len(table):
        coords = wcs.pixel_to_world(x, y).icrs
        ra, dec = coords.ra.deg, coords.dec.deg
    else:
        ra = dec = np.zeros(0)
    table["ra"], table["dec"] = np.asarray(ra, np.float64), np.asarray(dec, np.float64)
    table["ra"].unit, table["ra"].description = "deg", "right ascension (ICRS) of x, y through the image WCS"
    table["dec"].unit, table["dec"].description = "deg", "declination (ICRS) of x, y through the image WCS"
    for card in wcs.to_header(relax=True).cards:
        table.meta[card.keyword] = card.value
    table.meta["comments"] = list(table.meta.get("comments", [])) + [
        "x, y: pixels from the image edge, pixel (i, j) covers [i, i+1) x [j, j+1); FITS pixel = x + 0.5, "
        "y + 0.5 in the WCS of this header; ra, dec: ICRS degrees"
    ]
    return table


def _fits_inputs(path: str, background, psf_params=None, field_id=None, bank=None) -> Inputs:
    image, header = read_fits_image(path, "input FITS file")
    if background is None:
        raise ValueError("a FITS input needs --background (nmgy per pixel, a number or a FITS file)")
    if (psf_params is None) == (field_id is None):
        raise ValueError("a FITS input needs exactly one of --psf-params and --field-id")
    try:
        bg = np.full(image.shape, float(background), np.float32)
    except (TypeError, ValueError):  # not a number: a FITS file
        if not os.path.isfile(os.fspath(background)):
            raise ValueError(
                f"background {background!r}: expected a number (nmgy per pixel) or an existing FITS file"
            ) from None
        bg, _ = read_fits_image(background, "background FITS file")
        if bg.shape != image.shape:
            raise ValueError(
                f"background FITS file {background} has shape {bg.shape}, the image {path} "
                f"{image.shape}: expected the same shape"
            ) from None
    if field_id is not None:
        bank = fields_lib.load_bank(bank)
        psf = bank.psf_params[bank.index(field_id)]
    else:
        psf = parse_psf_params(psf_params)
    return Inputs.from_arrays(
        image[None],
        bg[None],
        np.asarray(psf, np.float32)[None],
        name=path,
        wcs=celestial_wcs(header, f"input FITS file {path}"),
    )


def open_sdss_frame(frame: str, psfield: str) -> Inputs:
    """The r-band SDSS ``frame`` (image and background, nmgy; WCS) with the r-band PSF of ``psfield``,
    refusing a frame of another band or a psField of another field (errors name ``--sdss-frame`` and
    ``--psfield``, the options of ``python -m npejax.predict``)."""
    for path, flag in ((frame, "--sdss-frame"), (psfield, "--psfield")):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{flag} {path} does not exist")
    image, background, header = sdss.read_frame_for_prediction(frame)
    named = sdss.frame_name_parts(frame)
    band = str(header.get("FILTER", named[0] if named else "r")).strip()
    if band != "r":
        raise ValueError(
            f"--sdss-frame {frame} is a {band}-band frame (FILTER); the network catalogs r-band "
            "images: give frame-r-..."
        )
    if all(k in header for k in ("RUN", "CAMCOL", "FIELD")):
        frame_field = tuple(int(header[k]) for k in ("RUN", "CAMCOL", "FIELD"))
    else:
        frame_field = named[1:] if named else None
    psf_field = sdss.psfield_name_parts(psfield)
    if frame_field and psf_field and frame_field != psf_field:
        raise ValueError(
            f"--psfield {psfield} is field {sdss.field_id(*psf_field)} but --sdss-frame {frame} is "
            f"field {sdss.field_id(*frame_field)}: give the psField of the same run, camcol and field"
        )
    psf = sdss.read_psfield(psfield, band="r")
    return Inputs.from_arrays(
        image[None], background[None], psf[None], name=frame, wcs=celestial_wcs(header, f"--sdss-frame {frame}")
    )


def parse_background_arg(text: str | None):
    """A ``--background`` value: a float (checked against the accepted sky range) or the name of an existing
    file (checked when read); None stays None. Errors are :class:`npejax.cli.UsageError` naming the option."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        if not os.path.isfile(text):
            raise cli.UsageError(
                f"--background {text!r}: expected a number (nmgy per pixel) or an existing FITS file"
            ) from None
        return text
    if not 0 < value <= MAX_BACKGROUND:  # also refuses NaN
        raise cli.UsageError(
            f"--background {text}: expected a sky level in nmgy per pixel, > 0 and <= "
            f"{MAX_BACKGROUND:g} (SDSS r-band skies are about 0.3-25)"
        )
    return value


def parse_psf_params(text) -> np.ndarray:
    """Six PSF parameters from ``"s1,s2,sP,beta,b,p0"`` (or a sequence), validated."""
    try:
        values = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except (TypeError, ValueError):
        values = []
    if len(values) != 6:
        raise ValueError(
            f"psf_params {text!r}: expected six comma-separated numbers s1,s2,sP,beta,b,p0 (widths in pixels)"
        )
    return psf_lib.validate_psf_params(np.array(values), where=f"psf_params {text!r}")


# --- a picture of the catalog --------------------------------------------------------------------


def write_catalog_png(path, image, table, min_side: int = 512) -> tuple[int, int]:
    """Writes a PNG (atomically) of ``image`` [H, W] (nmgy) with the detections of ``table`` (rows of this
    image) drawn on it; returns its (width, height) in pixels.

    The image is shown with an asinh stretch (softening 3 x its robust noise), row 0 at the bottom, at an
    integer zoom making its longer side at least ``min_side`` pixels (the PNG is W x H times the zoom). Each
    detection is a circle whose radius grows with brightness (2 pixels at r = 23 mag, +0.8 per magnitude,
    1.5-10) coloured by ``prob_galaxy`` (cyan star 0 -> magenta galaxy 1), and its 1-sigma position ellipse
    (``x_std``, ``y_std``) in the same colour.
    """
    from matplotlib import cm, figure  # deferred: slow, only for --png
    from matplotlib import collections as mcollections
    from matplotlib import colors as mcolors

    image = np.asarray(image, np.float64)
    h, w = image.shape
    zoom = max(1, -(-min_side // max(h, w)))
    fig = figure.Figure(figsize=(w * zoom / 100, h * zoom / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    median = np.median(image)
    noise = max(1.4826 * np.median(np.abs(image - median)), 1e-6)
    stretched = np.arcsinh((image - median) / (3 * noise))
    lo, hi = np.percentile(stretched, [1, 99.8])
    ax.imshow(
        stretched,
        cmap="gray",
        origin="lower",
        extent=(0, w, 0, h),
        vmin=lo,
        vmax=max(hi, lo + 1e-6),
        interpolation="nearest",
    )
    if len(table):
        xy = np.column_stack([np.asarray(table["x"], float), np.asarray(table["y"], float)])
        colors = cm.cool(mcolors.Normalize(0, 1)(np.asarray(table["prob_galaxy"], float)))
        mag = np.nan_to_num(np.asarray(table["mag"], float), nan=30.0)
        radius = np.clip(2.0 + 0.8 * (23.0 - mag), 1.5, 10.0)
        lw = max(0.6, 0.5 * zoom) * 72 / 100
        ax.add_collection(
            mcollections.EllipseCollection(
                2 * radius,
                2 * radius,
                np.zeros(len(xy)),
                units="xy",
                offsets=xy,
                offset_transform=ax.transData,
                facecolors="none",
                edgecolors=colors,
                linewidths=lw,
            )
        )
        ax.add_collection(
            mcollections.EllipseCollection(
                2 * np.asarray(table["x_std"], float),
                2 * np.asarray(table["y_std"], float),
                np.zeros(len(xy)),
                units="xy",
                offsets=xy,
                offset_transform=ax.transData,
                facecolors="none",
                edgecolors=colors,
                linewidths=lw,
                linestyles="dotted",
            )
        )
    ax.set_xlim(0, w)
    ax.set_ylim(0, h)
    ax.text(
        0.01,
        0.99,
        f"{len(table)} detections; circle size: brightness; colour: P(galaxy) cyan 0 - magenta 1; "
        "dotted: 1-sigma position",
        transform=ax.transAxes,
        va="top",
        ha="left",
        color="yellow",
        fontsize=max(6, min(12, w * zoom / 90)),
    )
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return w * zoom, h * zoom
