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
    def from_params(cls, params: jax.Array) -> TilePosterior:
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
        return tfd.Independent(tfd.TruncatedNormal(loc=self.loc_mean, scale=self.loc_scale, low=0.0, high=1.0), 1)

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
        source_terms = (
            self.loc().log_prob(locs)
            + self.galaxy().log_prob(tiles["tile_is_galaxy"].astype(jnp.float32))
            + self.flux().log_prob(flux)
        )
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
    out = dict(
        image=image.astype(np.int64),
        x=(col + locs[:, 1]) * tile_size,
        y=(row + locs[:, 0]) * tile_size,
        flux=tiles["tile_flux"][image, row, col],
    )
    if "tile_is_galaxy" in tiles:
        out["is_galaxy"] = tiles["tile_is_galaxy"][image, row, col]
    for key in ("prob_source", "prob_galaxy", "flux_lo", "flux_hi"):
        if key in tiles:
            out[key] = tiles[key][image, row, col]
    if "loc_std" in tiles:
        std = tiles["loc_std"][image, row, col] * tile_size
        out["y_std"], out["x_std"] = std[:, 0], std[:, 1]
    return out


def merge_split_sources(tiles: dict, threshold: float = 0.5, max_passes: int = 4) -> dict[str, np.ndarray]:
    """Detections whose probability is split over the tiles around a tile corner (``posterior.decode =
    "group"``).

    A source on a tile boundary or corner can leave every tile it touches below probability 0.5 although
    the posterior says there is a source among them: the tiles' probabilities along the decoded path
    (conditionals for the checkerboard, in the order decided; marginals for independent tiles) give
    P(no source in a 2 x 2 window of tiles) = prod (1 - p) when all four are decoded empty. Where that is
    below ``1 - threshold`` the window's most probable tile is switched on (its location, type and flux are
    already its factors given the earlier, empty, tiles) and its ``prob_source`` becomes the window's
    1 - prod (1 - p). Overlapping windows: only a window whose P(none) is the smallest among the
    candidate windows sharing a tile with it is taken, in passes until none is left (``max_passes``); a
    taken window's four tiles then count as empty-for-sure (their probability is spent on its source).

    ``tiles``: numpy arrays [N, Th, Tw, ...] with ``tile_has_source`` and ``prob_source`` (Predictor
    output); returns a copy with those two keys changed.
    """
    out = dict(tiles)
    on = np.array(tiles["tile_has_source"], dtype=bool)
    prob = np.array(tiles["prob_source"], dtype=np.float64)
    _, th, tw = on.shape
    if th < 2 or tw < 2:
        return out
    log_off = np.log1p(-np.clip(prob, 0.0, 1.0 - 1e-12))
    order = np.arange((th - 1) * (tw - 1)).reshape(th - 1, tw - 1)  # row-major rank of each window: ties
    padded_order = np.pad(order, 1, constant_values=-1)
    for _ in range(max_passes):
        # windows [N, Th-1, Tw-1]: top-left tile (i, j)
        none = np.exp(log_off[:, :-1, :-1] + log_off[:, :-1, 1:] + log_off[:, 1:, :-1] + log_off[:, 1:, 1:])
        empty = ~(on[:, :-1, :-1] | on[:, :-1, 1:] | on[:, 1:, :-1] | on[:, 1:, 1:])
        score = np.where(empty & (none < 1.0 - threshold), none, np.inf)
        if not np.isfinite(score).any():
            break
        # a candidate wins if no window sharing a tile (within one window step) has a smaller P(none);
        # ties go to the first in row-major order
        padded = np.pad(score, ((0, 0), (1, 1), (1, 1)), constant_values=np.inf)
        wins = np.isfinite(score)
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                if di == 0 and dj == 0:
                    continue
                other = padded[:, 1 + di : 1 + di + score.shape[1], 1 + dj : 1 + dj + score.shape[2]]
                other_order = padded_order[1 + di : 1 + di + score.shape[1], 1 + dj : 1 + dj + score.shape[2]]
                wins &= (score < other) | ((score == other) & (order < other_order)[None])
        b, i, j = np.nonzero(wins)
        quad = np.stack([prob[b, i, j], prob[b, i, j + 1], prob[b, i + 1, j], prob[b, i + 1, j + 1]], axis=-1)
        pick = np.argmax(quad, axis=-1)
        ti, tj = i + pick // 2, j + pick % 2
        on[b, ti, tj] = True
        prob[b, ti, tj] = 1.0 - none[b, i, j]
        for di in (0, 1):  # the window's probability is spent: its tiles add nothing to other windows
            for dj in (0, 1):
                log_off[b, i + di, j + dj] = 0.0
    out["tile_has_source"] = on
    out["prob_source"] = prob.astype(np.asarray(tiles["prob_source"]).dtype)
    return out
