"""Network inputs: asinh image channels, background and (PSF-aware) PSF channels, with saved statistics.

For each quantile q of :data:`ASINH_QUANTILES` of training pixels (sky-subtracted image, nmgy), one channel
``asinh((x - Q_q) * 5 / max(|Q_q|, floor))``, as in the reference implementation; ``floor`` keeps the
quantiles near zero (the median of a sky-subtracted image) from dividing by ~0. Then the background
(standardized with the training mean and std, the std floored at 10% of the mean) and, for the PSF-aware variant,
the six PSF parameters, each standardized and broadcast to a constant channel. The statistics are computed from
training data (:meth:`Normalizer.fit`) and saved with the model (:meth:`Normalizer.to_dict`).

**Mask channel** (``model.mask_channel``, off in the paper's network and the shipped ones; the normalizer keeps it
as :attr:`Normalizer.mask_channel`): one more, last, channel, 1 where a pixel carries no information and 0
elsewhere, and those pixels' image values set to 0 (the sky-subtracted sky's expectation) before the asinh
channels. A pixel carries no information when it is NaN or infinite (missing data: a frame's no-data pixels, the
simulator's masked blocks with ``artifacts.masked.fill = "nan"``, a user's NaN pixels) or when the ``mask`` given
to :meth:`Normalizer.features` flags it (the predictor passes a user's NaN pixels that way). Training passes no
``mask``: a network reads the same definition in training and in prediction, where an SDSS frame (frame-*.fits)
carries interpolated and saturated pixels as values, without its fpM mask planes (so the batch's ``mask`` of
:mod:`npejax.sim.artifacts`, which also flags SATUR, INTERP and CR pixels, is not the channel). Without the key, the
inputs are those of the networks trained before it, bit for bit.
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


def num_channels(variant: str, mask_channel: bool = False) -> int:
    """Input channels of a ``variant`` network (``model.variant``), with the mask channel or not
    (``model.mask_channel``)."""
    check_variant(variant)
    return len(ASINH_QUANTILES) + 1 + (6 if variant == "psf_aware" else 0) + (1 if mask_channel else 0)


@dataclasses.dataclass(frozen=True)
class Normalizer:
    """Training-data statistics: pixel quantiles (nmgy), background mean/std (nmgy), PSF mean/std; and whether the
    inputs end with the mask channel (module doc; False in normalizers saved before it existed)."""

    quantiles: tuple[float, ...]
    scale_floor: float
    background_mean: float
    background_std: float
    psf_mean: tuple[float, ...]
    psf_std: tuple[float, ...]
    mask_channel: bool = False

    @classmethod
    def fit(cls, images, background, psf_params, mask_channel: bool = False) -> Normalizer:
        """Statistics of a sample of training batches (arrays [N, H, W], [N, H, W], [N, 6]). With ``mask_channel``
        NaN and infinite pixels are masked pixels, left out of the quantiles; without it they are refused."""
        images = np.asarray(images, np.float64)
        finite = np.isfinite(images)
        if mask_channel:
            images = images[finite]
            if not images.size:
                raise ValueError("training images have no finite pixels")
        elif not np.all(finite):
            raise ValueError("training images contain NaN or infinite pixels (model.mask_channel reads them as masked)")
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
            mask_channel=bool(mask_channel),
        )

    def to_dict(self) -> dict:
        """The fields as a dict; ``mask_channel`` only when True, so that a network without it saves the
        normalizer (and hashes, :meth:`npejax.nn.predictor.Predictor.network_identity`) as before the key."""
        d = dataclasses.asdict(self)
        if not self.mask_channel:
            del d["mask_channel"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Normalizer:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def features(self, images, background, psf_params, variant: str, mask=None):
        """Network input [B, H, W, C] from images/background [B, H, W] (nmgy) and psf_params [B, 6]. With
        :attr:`mask_channel`, the last channel is the masked pixels (module doc): NaN or infinite pixels of
        ``images``, and those ``mask`` (bool [B, H, W], optional) flags; ignored without it."""
        check_variant(variant)
        xp = jnp if not isinstance(images, np.ndarray) else np
        q = xp.asarray(self.quantiles, dtype=xp.float32)
        scale = xp.maximum(xp.abs(q), self.scale_floor) / 5.0
        if self.mask_channel:
            masked = ~xp.isfinite(images)
            if mask is not None:
                masked = masked | xp.asarray(mask, bool)
            images = xp.where(masked, xp.zeros((), images.dtype), images)
        x = images[..., None]
        channels = [xp.arcsinh((x - q) / scale)]
        channels.append(((background - self.background_mean) / self.background_std)[..., None])
        if variant == "psf_aware":
            psf = (psf_params - xp.asarray(self.psf_mean, xp.float32)) / xp.asarray(self.psf_std, xp.float32)
            channels.append(xp.broadcast_to(psf[:, None, None, :], images.shape + (6,)))
        if self.mask_channel:
            channels.append(masked[..., None].astype(xp.float32))
        return xp.concatenate(channels, axis=-1).astype(xp.float32)
