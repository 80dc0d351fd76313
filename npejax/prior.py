"""Catalog prior (paper Table 1) and the tile catalog used as the training target.

A *catalog* is a dict of numpy arrays for a batch of B images, padded to ``max_sources`` M:

* ``n_sources`` [B] int32: number of sources; entries at index >= n_sources are zero.
* ``x``, ``y`` [B, M] float32: position in pixels from the image edge (x = column, y = row); pixel
  (i, j) covers [i, i+1) x [j, j+1).
* ``flux`` [B, M] float32: r-band flux in nmgy. ``is_galaxy`` [B, M] bool.
* Galaxy shape (zero for stars): ``disk_frac`` (flux fraction in the exponential disk), ``angle``
  (radians in [0, pi), counterclockwise from the +x axis), ``disk_q``, ``bulge_q`` (axis ratios) and
  ``disk_a``, ``bulge_a`` (semi-major half-light radii in arcsec; the drawn profile has circularized
  half-light radius a * sqrt(q)).

The *tile catalog* keeps at most one source per ``tile_size`` x ``tile_size`` tile, the brightest:
``tile_has_source`` [B, Th, Tw] bool, ``tile_locs`` [B, Th, Tw, 2] (y, x) inside the tile in units of
the tile side ([0, 1)), ``tile_flux`` nmgy, ``tile_is_galaxy``, ``tile_source`` (index into the full
catalog, -1 if empty), and ``n_dropped`` [B]: sources the one-per-tile rule discarded.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import stats

CATALOG_KEYS = ("x", "y", "flux", "is_galaxy", "disk_frac", "angle", "disk_q", "bulge_q", "disk_a", "bulge_a")
TILE_KEYS = ("tile_has_source", "tile_locs", "tile_flux", "tile_is_galaxy", "tile_source", "n_dropped")


@dataclasses.dataclass(frozen=True)
class CatalogPrior:
    """Independent source properties of paper Table 1; all parameters in the units shown.

    Galaxy flux uses scale 3.925 nmgy (the reference configuration; lower bound 0.631 nmgy = r 23.0),
    not the 3.29 printed in the paper's table, which would put the lower bound at 0 nmgy.
    Axis ratios are U(min_axis_ratio, 1) to keep profiles away from q = 0.
    """

    image_shape: tuple[int, int] = (80, 80)
    sources_per_pixel: float = 6.25e-4
    max_sources: int = 32
    prob_galaxy: float = 0.514
    star_flux: tuple[float, float, float, float] = (0.469, 1000.0, -0.553, 1.185)  # truncpareto b, c, loc, scale
    galaxy_flux: tuple[float, float, float, float] = (1.561, 1000.0, -3.29, 3.925)
    disk_a: tuple[float, float, float] = (0.393, 0.837, 4.432)  # gamma shape, loc, scale (arcsec)
    bulge_a: tuple[float, float, float] = (0.393, 0.419, 2.216)
    min_axis_ratio: float = 0.01

    @classmethod
    def from_config(cls, config, image_shape) -> "CatalogPrior":
        """Builds the prior from the ``config.prior`` ConfigDict (keys as the dataclass fields)."""
        known = {f.name for f in dataclasses.fields(cls)} - {"image_shape"}
        values = dict(config)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"config.prior: unknown keys {unknown}; expected some of {sorted(known)}")
        values = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in values.items()}
        return cls(image_shape=tuple(image_shape), **values)

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
        """Draws ``batch_size`` catalogs (see module docstring for the keys and units)."""
        b, m = batch_size, self.max_sources
        h, w = self.image_shape
        n = rng.poisson(self.mean_sources, size=b)
        if n.max(initial=0) > m:
            raise ValueError(f"prior: drew {n.max()} sources in one image, more than max_sources={m}; "
                             "raise config.prior.max_sources")
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
        galaxy_only = ("disk_frac", "angle", "disk_q", "bulge_q", "disk_a", "bulge_a")
        out = {"n_sources": n.astype(np.int32)}
        for key, value in cat.items():
            mask = valid & is_galaxy if key in galaxy_only else valid
            value = np.where(mask, value, 0)
            out[key] = value.astype(bool if key == "is_galaxy" else np.float32)
        return out


def tile_catalog(catalog: dict[str, np.ndarray], image_shape, tile_size: int = 4) -> dict[str, np.ndarray]:
    """One source per tile, the brightest; returns the ``TILE_KEYS`` arrays (see module docstring)."""
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
