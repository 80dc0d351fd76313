"""Catalog new images with a trained network (the library behind ``python -m npejax.predict``).

Python API::

    predictor = Predictor.from_workdir("runs/aware")          # best checkpoint: weights, normalizer, config
    tiles = predictor.predict_tiles(images, background, psf_params)   # per-tile posterior summaries
    table = predictor.catalog(images, background, psf_params)         # astropy Table, one row per source

Inputs (:func:`load_inputs`): a dataset directory written by ``npejax.simulate``; an ``.npz`` with
``images`` [N, H, W] (nmgy, sky-subtracted), ``background`` [N, H, W] (nmgy) and ``psf_params`` [N, 6];
or a FITS image (one 2-D HDU, nmgy, sky-subtracted) with the background given as a number or a FITS
file (nmgy per pixel) and the PSF as ``s1,s2,sP,beta,b,p0`` or as a field of the field bank. Images of
any size are accepted (an SDSS frame is 2048 x 1489): sides that are not multiples of the tile size are
padded for the network and sources in the padding dropped. The catalog holds one row per tile whose
source probability exceeds ``min_prob``, with the columns of :data:`npejax.schema.PREDICTION_COLUMNS`:
``image``, ``x``, ``y`` (pixels), ``flux`` (nmgy, posterior median), ``mag``, ``prob_source``,
``prob_galaxy``, ``x_std``, ``y_std``, ``flux_lo``, ``flux_hi`` (central 68% interval, nmgy).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from astropy.io import fits

from npejax import catalogs as catalog_lib
from npejax import datasets as data_lib
from npejax.nn import checkpoints
from npejax.nn import inputs as inputs_lib
from npejax.nn import model as model_lib
from npejax.nn.checkpoints import CheckpointError, load_config  # noqa: F401  (part of this module's API)
from npejax.nn.posterior import TilePosterior, tiles_to_sources
from npejax.sim import fields as fields_lib
from npejax.sim import psf as psf_lib

INPUT_ARRAYS = ("images", "background", "psf_params")  # what an .npz input holds (npejax.schema batch keys)


class Predictor:
    """A trained network with its normalizer and config; batched, jit-compiled prediction."""

    def __init__(self, config: ml_collections.ConfigDict, variables: dict, normalizer: inputs_lib.Normalizer):
        self.config = config
        self.variables = variables
        self.normalizer = normalizer
        self.variant = config.model.variant
        self.tile_size = int(config.tile_size)
        net = model_lib.from_config(config)

        def forward(variables, images, background, psf_params):
            feats = normalizer.features(images, background, psf_params, self.variant)
            q = TilePosterior.from_params(net.apply(variables, feats, train=False))
            return dict(q.mode(), **q.summary())

        self._forward = jax.jit(forward)

    @classmethod
    def from_workdir(cls, workdir: str, which: str = "best") -> "Predictor":
        """Loads ``workdir/checkpoints/{best,latest}`` (:func:`npejax.nn.checkpoints.load`: clear errors for
        a missing or foreign directory)."""
        return cls(*checkpoints.load(workdir, which))

    def _check(self, images, background, psf_params):
        """Validated float32 arrays, padded at the bottom and right to multiples of the tile size."""
        images = np.asarray(images, np.float32)
        if images.ndim == 2:
            images = images[None]
        if images.ndim != 3 or min(images.shape) == 0:
            raise ValueError(f"images must be [N, H, W] or [H, W] and non-empty, got shape {images.shape}")
        n, h, w = images.shape
        if not np.all(np.isfinite(images)):
            bad = np.argwhere(~np.isfinite(images))[0]
            raise ValueError(f"images contain NaN or infinite pixels (first at image {bad[0]}, row {bad[1]}, "
                             f"column {bad[2]})")
        try:
            background = np.broadcast_to(np.asarray(background, np.float32), images.shape)
        except ValueError:
            raise ValueError(f"background of shape {np.shape(background)} does not match images of shape "
                             f"{images.shape}: expected a number, [H, W] or [N, H, W] (nmgy)") from None
        if not np.all(np.isfinite(background)):
            raise ValueError("background contains NaN or infinite values")
        try:
            psf_params = np.broadcast_to(np.asarray(psf_params, np.float32), (n, 6))
        except ValueError:
            raise ValueError(f"psf_params of shape {np.shape(psf_params)}: expected [6] or [N, 6] "
                             "(s1, s2, sP, beta, b, p0)") from None
        psf_lib.validate_psf_params(psf_params, where="psf_params")
        pad_h, pad_w = (-h) % self.tile_size, (-w) % self.tile_size
        if pad_h or pad_w:  # zeros are the sky-subtracted sky; the background continues its edge
            images = np.pad(images, ((0, 0), (0, pad_h), (0, pad_w)))
            background = np.pad(background, ((0, 0), (0, pad_h), (0, pad_w)), mode="edge")
        return images, np.ascontiguousarray(background), np.ascontiguousarray(psf_params)

    def predict_tiles(self, images, background, psf_params, batch_size: int = 256) -> dict[str, np.ndarray]:
        """Per-tile mode and summaries ([N, ceil(H/t), ceil(W/t)] arrays) for images [N, H, W] (nmgy).

        Images whose sides are not multiples of the tile size t are padded at the bottom and right (image
        with zeros, background with its edge values); the last row/column of tiles then covers padding.
        """
        images, background, psf_params = self._check(images, background, psf_params)
        parts = []
        for start in range(0, len(images), batch_size):
            sl = slice(start, start + batch_size)
            out = self._forward(self.variables, jnp.asarray(images[sl]), jnp.asarray(background[sl]),
                                jnp.asarray(psf_params[sl]))
            parts.append(jax.device_get(out))
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def catalog(self, images, background, psf_params, min_prob: float = 0.5, batch_size: int = 256,
                image_offset: int = 0):
        """Probabilistic catalog (astropy Table) of tiles with ``prob_source > min_prob``; sources whose
        position falls in the padding of an image of any other size are dropped."""
        h, w = np.shape(images)[-2:]
        tiles = self.predict_tiles(images, background, psf_params, batch_size)
        sources = tiles_to_sources(tiles, self.tile_size, min_prob=min_prob)
        inside = (sources["x"] < w) & (sources["y"] < h)
        sources = {k: v[inside] for k, v in sources.items()}
        sources["image"] = sources["image"] + image_offset
        return catalog_lib.prediction_table(sources)


# --- inputs ----------------------------------------------------------------------------------------

def load_inputs(path: str, background=None, psf_params=None, field_id=None, bank=None):
    """(images, background, psf_params) from a dataset directory, an .npz or a FITS image (see module doc).

    For a FITS image, ``background`` is a number or a FITS file (nmgy per pixel) and the PSF is either
    ``psf_params`` ("s1,s2,sP,beta,b,p0") or the field ``field_id`` of the field bank ``bank`` (a path,
    or None for the embedded synthetic bank).
    """
    if os.path.isdir(path):
        ds = data_lib.load(path)
        arrays = ds[np.arange(len(ds))]
        return arrays["images"], arrays["background"], arrays["psf_params"]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"input {path} does not exist")
    if path.endswith(".npz"):
        with np.load(path) as f:
            missing = [k for k in INPUT_ARRAYS if k not in f.files]
            if missing:
                raise ValueError(f"{path} lacks arrays {missing}; expected images, background, psf_params")
            return f["images"], f["background"], f["psf_params"]
    if path.lower().endswith((".fits", ".fit", ".fits.gz")):
        return load_fits(path, background, psf_params, field_id, bank)
    raise ValueError(f"unsupported input {path}: expected a dataset directory, an .npz or a .fits file")


def load_fits(path: str, background, psf_params=None, field_id=None, bank=None):
    """(images [1, H, W], background [1, H, W], psf_params [1, 6]) of the first 2-D HDU of a FITS file;
    arguments as :func:`load_inputs`."""
    try:
        with fits.open(path) as hdul:
            image = next((h.data for h in hdul if h.data is not None and h.data.ndim == 2), None)
    except OSError as exc:
        raise ValueError(f"{path} is not a readable FITS file: {exc}") from exc
    if image is None:
        raise ValueError(f"{path} holds no 2-D image HDU")
    if background is None:
        raise ValueError("a FITS input needs --background (nmgy per pixel, a number or a FITS file)")
    try:
        bg = np.full(image.shape, float(background), np.float32)
    except ValueError:
        bg = np.asarray(fits.getdata(background), np.float32)
    if (psf_params is None) == (field_id is None):
        raise ValueError("a FITS input needs exactly one of --psf-params and --field-id")
    if field_id is not None:
        bank = fields_lib.load_bank(bank)
        psf = bank.psf_params[bank.index(field_id)]
    else:
        psf = np.array([float(v) for v in psf_params.split(",")])
    return np.asarray(image, np.float32)[None], bg[None], np.asarray(psf, np.float32)[None]
