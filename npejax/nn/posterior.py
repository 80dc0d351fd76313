"""Tile-factorized variational posterior q(catalog | image), built with TFP on JAX (paper Section 5).

The network gives 8 numbers per tile (:data:`NUM_PARAMS`), in this order:

====  ==================  =====================================================================
0     ``on_logit``        has-source Bernoulli logit
1-2   ``loc_logit``       (y, x) location of the truncated normals, sigmoid -> [0, 1] tile units
3-4   ``loc_log_scale``   (y, x) log scale of the truncated normals (tile units)
5     ``galaxy_logit``    is-galaxy Bernoulli logit
6     ``log_flux_mean``   LogNormal location, log nmgy
7     ``log_flux_scale``  LogNormal log scale
====  ==================  =====================================================================

Position is a truncated normal on the unit tile per axis (independent axes); flux is log-normal in nmgy.
The loss is the negative log-likelihood of the true tile catalog, summed over tiles and averaged over
images; the position, type and flux terms count only in tiles that hold a source.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_probability.substrates.jax as tfp

tfd = tfp.distributions

NUM_PARAMS = 8
MIN_LOC_SCALE = 1e-3  # tile units; keeps the truncated normal away from a degenerate spike
MIN_FLUX_SCALE = 1e-3  # log nmgy
# Output bias at initialization: about 1 source in 100 tiles (4 per 400-tile image), locations at the
# tile centre with scale ~0.3, even odds of a galaxy, fluxes ~ e^1 nmgy with a log-scale of ~1.
INITIAL_BIAS = (-4.6, 0.0, 0.0, -0.9, -0.9, 0.0, 1.0, 0.55)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TilePosterior:
    """Per-tile factors for a batch; every field is [B, Th, Tw] (``loc_*`` [B, Th, Tw, 2])."""

    on_logit: jax.Array
    loc_mean: jax.Array  # in [0, 1], tile units, (y, x)
    loc_scale: jax.Array
    galaxy_logit: jax.Array
    log_flux_mean: jax.Array
    log_flux_scale: jax.Array

    @classmethod
    def from_params(cls, params: jax.Array) -> "TilePosterior":
        """Maps network outputs [..., 8] to distribution parameters (computed in float32)."""
        if params.shape[-1] != NUM_PARAMS:
            raise ValueError(f"expected {NUM_PARAMS} parameters per tile, got shape {params.shape}")
        params = params.astype(jnp.float32)
        return cls(
            on_logit=params[..., 0],
            loc_mean=jax.nn.sigmoid(params[..., 1:3]),
            loc_scale=MIN_LOC_SCALE + jax.nn.softplus(params[..., 3:5]),
            galaxy_logit=params[..., 5],
            log_flux_mean=params[..., 6],
            log_flux_scale=MIN_FLUX_SCALE + jax.nn.softplus(params[..., 7]),
        )

    # factors
    def on(self) -> tfd.Distribution:
        return tfd.Bernoulli(logits=self.on_logit)

    def loc(self) -> tfd.Distribution:
        """Truncated normal on [0, 1] per axis; event shape [2] (y, x)."""
        return tfd.Independent(
            tfd.TruncatedNormal(loc=self.loc_mean, scale=self.loc_scale, low=0.0, high=1.0), 1)

    def galaxy(self) -> tfd.Distribution:
        return tfd.Bernoulli(logits=self.galaxy_logit)

    def flux(self) -> tfd.Distribution:
        return tfd.LogNormal(loc=self.log_flux_mean, scale=self.log_flux_scale)

    def tile_nll(self, tiles: dict) -> jax.Array:
        """Negative log-likelihood per tile [B, Th, Tw] of a tile catalog (``tile_*`` keys, see prior)."""
        has = tiles["tile_has_source"].astype(jnp.float32)
        nll = -self.on().log_prob(has)
        # empty tiles carry a placeholder inside the support so that masked terms stay finite
        locs = jnp.where(has[..., None] > 0, tiles["tile_locs"], 0.5)
        flux = jnp.where(has > 0, tiles["tile_flux"], 1.0)
        source_terms = (self.loc().log_prob(locs)
                        + self.galaxy().log_prob(tiles["tile_is_galaxy"].astype(jnp.float32))
                        + self.flux().log_prob(flux))
        return nll - has * source_terms

    def nll(self, tiles: dict) -> jax.Array:
        """Loss: NLL summed over tiles, averaged over images (scalar)."""
        return jnp.mean(jnp.sum(self.tile_nll(tiles), axis=(-2, -1)))

    # point estimates and samples, as tile catalogs
    def mode(self) -> dict[str, jax.Array]:
        """Most probable catalog: on and galaxy when probability > 0.5, location mode, median flux."""
        return dict(
            tile_has_source=self.on_logit > 0,
            tile_locs=self.loc_mean,  # the truncated normal's mode: its location, inside [0, 1]
            tile_is_galaxy=self.galaxy_logit > 0,
            tile_flux=jnp.exp(self.log_flux_mean),
        )

    def sample(self, key: jax.Array, num_samples: int) -> dict[str, jax.Array]:
        """``num_samples`` tile catalogs drawn from q; arrays get a leading sample axis."""
        k_on, k_loc, k_gal, k_flux = jax.random.split(key, 4)
        return dict(
            tile_has_source=self.on().sample(num_samples, seed=k_on).astype(bool),
            tile_locs=self.loc().sample(num_samples, seed=k_loc),
            tile_is_galaxy=self.galaxy().sample(num_samples, seed=k_gal).astype(bool),
            tile_flux=self.flux().sample(num_samples, seed=k_flux),
        )

    def summary(self) -> dict[str, jax.Array]:
        """Per-tile probabilities, location std (tile units) and the flux's central 68% interval (nmgy)."""
        flux = self.flux()
        return dict(
            prob_source=jax.nn.sigmoid(self.on_logit),
            prob_galaxy=jax.nn.sigmoid(self.galaxy_logit),
            loc_std=tfd.TruncatedNormal(self.loc_mean, self.loc_scale, 0.0, 1.0).stddev(),
            flux_lo=flux.quantile(0.15865525393145707),
            flux_hi=flux.quantile(0.8413447460685429),
        )


def tiles_to_sources(tiles: dict, tile_size: int = 4, min_prob: float | None = None) -> dict[str, np.ndarray]:
    """Flattens a tile catalog (mode or sample, optionally with :meth:`TilePosterior.summary` keys) to
    per-source numpy arrays with pixel coordinates: ``image``, ``x``, ``y`` (pixels), ``flux`` (nmgy) and
    whatever per-tile extras are present (``prob_source``, ``prob_galaxy``, ``x_std``, ``y_std``,
    ``flux_lo``, ``flux_hi``, ``is_galaxy``). Keeps tiles whose ``tile_has_source`` is true (or, if
    ``min_prob`` is given, whose ``prob_source`` exceeds it).
    """
    tiles = {k: np.asarray(v) for k, v in tiles.items()}
    has = tiles["tile_has_source"] if min_prob is None else tiles["prob_source"] > min_prob
    b, th, tw = has.shape
    image, row, col = np.nonzero(has)
    locs = tiles["tile_locs"][image, row, col]
    out = dict(image=image.astype(np.int64), x=(col + locs[:, 1]) * tile_size,
               y=(row + locs[:, 0]) * tile_size, flux=tiles["tile_flux"][image, row, col])
    if "tile_is_galaxy" in tiles:
        out["is_galaxy"] = tiles["tile_is_galaxy"][image, row, col]
    for key in ("prob_source", "prob_galaxy", "flux_lo", "flux_hi"):
        if key in tiles:
            out[key] = tiles[key][image, row, col]
    if "loc_std" in tiles:
        std = tiles["loc_std"][image, row, col] * tile_size
        out["y_std"], out["x_std"] = std[:, 0], std[:, 1]
    return out
