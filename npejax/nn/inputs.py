"""Network inputs: asinh image channels, background and (PSF-aware) PSF channels, with saved statistics.

For each quantile q of :data:`ASINH_QUANTILES` of training pixels (sky-subtracted image, nmgy), one channel
``asinh((x - Q_q) * 5 / max(|Q_q|, floor))``, as in the reference implementation; ``floor`` keeps the
quantiles near zero (the median of a sky-subtracted image) from dividing by ~0. Then the background
(standardized with the training mean and std, the std floored at 10% of the mean) and, for the PSF-aware variant,
the six PSF parameters, each standardized and broadcast to a constant channel. The statistics are computed from
training data (:meth:`Normalizer.fit`) and saved with the model (:meth:`Normalizer.to_dict`).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from npejax.configuration import check_variant

ASINH_QUANTILES = (0.01, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99, 0.999, 0.9999, 0.99999)
# The background channel's scale is at least this fraction of the mean training background: a network
# trained on one field (whose sky varies by ~0.3% across an image) would otherwise see other fields'
# skies as 50-100 sigma inputs. Many-field training sets (std ~23% of the mean) are unaffected.
BACKGROUND_SCALE_FLOOR = 0.1


def num_channels(variant: str) -> int:
    check_variant(variant)
    return len(ASINH_QUANTILES) + 1 + (6 if variant == "psf_aware" else 0)


@dataclasses.dataclass(frozen=True)
class Normalizer:
    """Training-data statistics: pixel quantiles (nmgy), background mean/std (nmgy), PSF mean/std."""

    quantiles: tuple[float, ...]
    scale_floor: float
    background_mean: float
    background_std: float
    psf_mean: tuple[float, ...]
    psf_std: tuple[float, ...]

    @classmethod
    def fit(cls, images, background, psf_params) -> Normalizer:
        """Statistics of a sample of training batches (arrays [N, H, W], [N, H, W], [N, 6])."""
        images = np.asarray(images, np.float64)
        if not np.all(np.isfinite(images)):
            raise ValueError("training images contain NaN or infinite pixels")
        q = np.quantile(images, ASINH_QUANTILES)
        spread = float(np.quantile(images, 0.9) - np.quantile(images, 0.1))
        bg = np.asarray(background, np.float64)
        psf = np.asarray(psf_params, np.float64)
        psf_std = psf.std(axis=0)
        return cls(
            quantiles=tuple(float(v) for v in q),
            scale_floor=max(0.05 * spread, 1e-6),
            background_mean=float(bg.mean()),
            background_std=float(max(bg.std(), BACKGROUND_SCALE_FLOOR * abs(bg.mean()), 1e-6)),
            psf_mean=tuple(float(v) for v in psf.mean(axis=0)),
            psf_std=tuple(float(v) if v > 1e-8 else 1.0 for v in psf_std),  # one field: no spread
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Normalizer:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def features(self, images, background, psf_params, variant: str):
        """Network input [B, H, W, C] from images/background [B, H, W] (nmgy) and psf_params [B, 6]."""
        check_variant(variant)
        xp = jnp if not isinstance(images, np.ndarray) else np
        q = xp.asarray(self.quantiles, dtype=xp.float32)
        scale = xp.maximum(xp.abs(q), self.scale_floor) / 5.0
        x = images[..., None]
        channels = [xp.arcsinh((x - q) / scale)]
        channels.append(((background - self.background_mean) / self.background_std)[..., None])
        if variant == "psf_aware":
            psf = (psf_params - xp.asarray(self.psf_mean, xp.float32)) / xp.asarray(self.psf_std, xp.float32)
            channels.append(xp.broadcast_to(psf[:, None, None, :], images.shape + (6,)))
        return xp.concatenate(channels, axis=-1).astype(xp.float32)
