"""Catalog prior (paper Table 1) and the tile catalog used as the training target.

:class:`CatalogPrior` draws a batch of *full catalogs* (:data:`npejax.schema.CATALOG_KEYS` plus
``n_sources``, padded to ``max_sources`` M); :func:`tile_catalog` keeps at most one source per
``tile_size`` x ``tile_size`` tile, the brightest (:data:`npejax.schema.TILE_KEYS`). Keys, shapes and units
of both are in :mod:`npejax.schema`; in short: ``x``, ``y`` [B, M] pixels from the image edge (x = column,
y = row), ``flux`` [B, M] nmgy, galaxy shape zero for stars (``disk_a``, ``bulge_a`` semi-major half-light
radii in arcsec; the drawn profile has circularized half-light radius a * sqrt(q)); ``tile_locs``
[B, Th, Tw, 2] (y, x) inside the tile in units of the tile side, ``tile_source`` the index into the full
catalog (-1 if empty), ``n_dropped`` [B] the sources the one-per-tile rule discarded.

The prior's parameters have no defaults here: the paper's values are ``config.prior`` in
``configs/default.py`` (build the prior with :meth:`CatalogPrior.from_config`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import stats

from npejax import schema
from npejax.sim import settings


@dataclasses.dataclass(frozen=True)
class CatalogPrior:
    """Independent source properties of paper Table 1; all parameters in the units shown.

    The values (``config.prior`` of ``configs/default.py``) are the ones behind the paper's experiments,
    which differ from its Table 1 in two places (SPEC.md, "Catalog prior"):

    * Star flux truncation c = 613314, not the 1000 printed in the table: the authors' base configuration
      used 613314, and only that value reproduces the paper's equal-count r cut-offs (17.777, 19.101, ...,
      21.746 for stars + galaxies with r < 22; c = 1000 is up to 0.42 mag off, ``tests/test_prior.py``
      checks 0.05). Star fluxes then reach (c * scale + loc) = 7.3e5 nmgy, r 7.85; the renderer has no
      saturation, as in the paper.
    * Galaxy flux scale 3.925 nmgy (the reference configuration; lower bound 0.631 nmgy = r 23.0), not the
      3.29 printed in the table, which would put the lower bound at 0 nmgy.

    Axis ratios are U(min_axis_ratio, 1) to keep profiles away from q = 0.
    """

    image_shape: tuple[int, int]  # (H, W) pixels
    sources_per_pixel: float  # Poisson rate of sources per pixel
    max_sources: int  # padding M of the full catalog
    prob_galaxy: float
    star_flux: tuple[float, float, float, float]  # truncpareto b, c, loc, scale (nmgy)
    galaxy_flux: tuple[float, float, float, float]
    disk_a: tuple[float, float, float]  # gamma shape, loc, scale (arcsec)
    bulge_a: tuple[float, float, float]
    min_axis_ratio: float

    @classmethod
    def from_config(cls, config, image_shape) -> CatalogPrior:
        """Builds the prior from the ``config.prior`` ConfigDict (one key per dataclass field but
        ``image_shape``) and ``image_shape`` (H, W)."""
        return settings.from_config(cls, "prior", config, image_shape=tuple(image_shape))

    def __post_init__(self):
        if self.sources_per_pixel < 0 or self.max_sources < 1:
            raise ValueError("prior: sources_per_pixel must be >= 0 and max_sources >= 1")
        if not 0 <= self.prob_galaxy <= 1:
            raise ValueError(f"prior: prob_galaxy must be in [0, 1], got {self.prob_galaxy}")
        if not 0 <= self.min_axis_ratio < 1:
            raise ValueError(f"prior: min_axis_ratio must be in [0, 1), got {self.min_axis_ratio}")

    @property
    def mean_sources(self) -> float:
        return self.sources_per_pixel * self.image_shape[0] * self.image_shape[1]

    def star_flux_dist(self):
        b, c, loc, scale = self.star_flux
        return stats.truncpareto(b=b, c=c, loc=loc, scale=scale)

    def galaxy_flux_dist(self):
        b, c, loc, scale = self.galaxy_flux
        return stats.truncpareto(b=b, c=c, loc=loc, scale=scale)

    def sample(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
        """Draws ``batch_size`` full catalogs: ``n_sources`` [B] and :data:`npejax.schema.CATALOG_KEYS` [B, M]."""
        b, m = batch_size, self.max_sources
        h, w = self.image_shape
        n = rng.poisson(self.mean_sources, size=b)
        if n.max(initial=0) > m:
            raise ValueError(
                f"prior: drew {n.max()} sources in one image, more than max_sources={m}; raise config.prior.max_sources"
            )
        valid = np.arange(m)[None, :] < n[:, None]
        is_galaxy = rng.random((b, m)) < self.prob_galaxy
        u_flux = rng.random((b, m))
        flux = np.where(is_galaxy, self.galaxy_flux_dist().ppf(u_flux), self.star_flux_dist().ppf(u_flux))
        cat = dict(
            x=rng.random((b, m)) * w,
            y=rng.random((b, m)) * h,
            flux=flux,
            is_galaxy=is_galaxy,
            disk_frac=rng.random((b, m)),
            angle=rng.random((b, m)) * np.pi,
            disk_q=rng.uniform(self.min_axis_ratio, 1.0, (b, m)),
            bulge_q=rng.uniform(self.min_axis_ratio, 1.0, (b, m)),
            disk_a=self.disk_a[1] + rng.gamma(self.disk_a[0], self.disk_a[2], (b, m)),
            bulge_a=self.bulge_a[1] + rng.gamma(self.bulge_a[0], self.bulge_a[2], (b, m)),
        )
        out = {"n_sources": n.astype(np.int32)}
        for key, value in cat.items():
            mask = valid & is_galaxy if key in schema.SHAPE_KEYS else valid
            value = np.where(mask, value, 0)
            out[key] = value.astype(bool if key == "is_galaxy" else np.float32)
        return out


def tile_catalog(catalog: dict[str, np.ndarray], image_shape, tile_size: int = 4) -> dict[str, np.ndarray]:
    """One source per tile, the brightest; returns the :data:`npejax.schema.TILE_KEYS` arrays."""
    h, w = image_shape
    if h % tile_size or w % tile_size:
        raise ValueError(f"image shape {image_shape} is not a multiple of tile_size={tile_size}")
    th, tw = h // tile_size, w // tile_size
    n = catalog["n_sources"]
    b, m = catalog["x"].shape
    valid = np.arange(m)[None, :] < n[:, None]
    x, y, flux = catalog["x"], catalog["y"], catalog["flux"]
    row = np.clip(np.floor(y / tile_size).astype(np.int64), 0, th - 1)
    col = np.clip(np.floor(x / tile_size).astype(np.int64), 0, tw - 1)
    batch_idx, src_idx = np.nonzero(valid)
    tile = (batch_idx * th + row[valid]) * tw + col[valid]
    order = np.lexsort((-flux[valid], tile))  # by tile, brightest first
    _, first = np.unique(tile[order], return_index=True)
    keep = order[first]

    out_source = np.full(b * th * tw, -1, dtype=np.int32)
    out_source[tile[keep]] = src_idx[keep]
    out_source = out_source.reshape(b, th, tw)
    has = out_source >= 0
    safe = np.where(has, out_source, 0)
    gather = lambda a: np.take_along_axis(a, safe.reshape(b, -1), axis=1).reshape(b, th, tw)
    tile_row = np.arange(th)[None, :, None]
    tile_col = np.arange(tw)[None, None, :]
    loc_y = np.where(has, gather(y) / tile_size - tile_row, 0.0)
    loc_x = np.where(has, gather(x) / tile_size - tile_col, 0.0)
    kept_per_image = has.reshape(b, -1).sum(axis=1)
    return dict(
        tile_has_source=has,
        tile_locs=np.clip(np.stack([loc_y, loc_x], axis=-1), 0.0, np.nextafter(1.0, 0.0)).astype(np.float32),
        tile_flux=np.where(has, gather(flux), 0.0).astype(np.float32),
        tile_is_galaxy=has & gather(catalog["is_galaxy"]),
        tile_source=out_source,
        n_dropped=(n - kept_per_image).astype(np.int32),
    )
