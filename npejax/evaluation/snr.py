"""Signal-to-noise ratio of each true source (paper Appendix A).

The paper stratifies recall by the SNR of each true source,

    SNR = C / sqrt(C + B + P),

over the source's *footprint*, "the pixels whose fluxes appreciably change with the addition of the
object" (after Jones 2024). Exact definitions used here (all in electrons, the renderer's units,
electrons = nmgy * gain / calibration):

* The source is drawn alone and noiselessly with the same renderer that made the images
  (:meth:`npejax.sim.render.Renderer.source_electrons`, the k-space renderer by default), giving s_ij,
  its expected electrons per pixel inside the image (parts of a source beyond the image edge do not
  count).
* Footprint F = {pixels with s_ij > ``footprint_threshold`` x sigma_ij}, where sigma_ij = sqrt(b_ij) is the
  per-pixel sky noise and b_ij the sky in electrons (the batch's ``background`` times gain/calibration).
  Default threshold 0.1: the pixel changes by more than a tenth of its noise when the source is added.
* C = sum over F of s_ij (source electrons); B = sum over F of b_ij (sky electrons, the sky's Poisson
  variance).
* P = "the Poisson noise in the footprint" beyond the source's and the sky's own, i.e. detector noise
  (dark current, read noise). The simulated images have none (their variance is exactly sky + source
  electrons), so P = ``extra_variance`` x |F| with ``extra_variance`` = 0 electrons^2 per pixel by
  default. (The source's own Poisson variance is C, already in the denominator; counting it again as P
  would double it.)

A real source whose footprint is empty (it changes no pixel by the threshold) gets SNR 0; padding
entries (index >= ``n_sources``) and entries with flux <= 0 get NaN. Cost: one noiseless render per
source, about 1 ms per source on one CPU core once the renderer has seen the field (the first image
of each field costs some tens of ms more for its PSF tables; renderers are kept between calls).
"""

from __future__ import annotations

import numpy as np
import threadpoolctl

from npejax.schema import CATALOG_KEYS
from npejax.sim import render as render_lib


def footprint_counts(batch: dict, spec_or_renderer, *, footprint_threshold: float = 0.1) -> dict[str, np.ndarray]:
    """Per true source: ``C`` (source electrons in the footprint), ``B`` (sky electrons there) and
    ``npix`` (footprint size), each [B, max_sources]; NaN (``npix`` -1) for padding and flux <= 0.

    ``batch`` needs ``background`` [B, H, W] (nmgy), ``field_id`` [B], ``n_sources`` and the padded
    catalog (``x``, ``y``, ``flux``, ``is_galaxy`` and, for galaxies, the shape keys).
    ``spec_or_renderer``: the :class:`npejax.sim.pipeline.SimulationSpec` that made the batch (its bank and
    render settings are used) or a :class:`npejax.sim.render.Renderer` (its bank and settings).
    """
    if footprint_threshold < 0:
        raise ValueError(f"footprint_threshold must be >= 0, got {footprint_threshold}")
    background = np.asarray(batch["background"], dtype=np.float64)
    if background.ndim != 3:
        raise ValueError(f"source_snr: background must be [B, H, W], got {background.shape}")
    renderer = render_lib.renderer_for(spec_or_renderer, background.shape[1:], "source_snr")
    bank = renderer.bank
    field_id = bank.check_index(np.asarray(batch["field_id"]).reshape(-1))
    n_sources = np.asarray(batch["n_sources"]).astype(np.int64)
    flux = np.asarray(batch["flux"], dtype=np.float64)
    b, m = flux.shape
    if field_id.shape != (b,) or n_sources.shape != (b,) or background.shape[0] != b:
        raise ValueError("source_snr: field_id, n_sources, background and the catalog disagree on the batch size")
    keys = [key for key in CATALOG_KEYS if key in batch]
    catalog = {key: np.asarray(batch[key]) for key in keys}

    counts = {"C": np.full((b, m), np.nan), "B": np.full((b, m), np.nan), "npix": np.full((b, m), -1, np.int64)}
    # The renderer's small matrix products are 20x slower with multithreaded BLAS on a busy machine.
    with threadpoolctl.threadpool_limits(1):
        _fill_counts(counts, renderer, catalog, keys, background, field_id, n_sources, flux, footprint_threshold)
    return counts


def _fill_counts(counts, renderer, catalog, keys, background, field_id, n_sources, flux, footprint_threshold):
    bank = renderer.bank
    b, m = flux.shape
    for i in range(b):
        field = int(field_id[i])
        to_e = float(bank.to_electrons(field))
        sky = background[i] * to_e
        cut = footprint_threshold * np.sqrt(np.maximum(sky, 0.0))
        for s in range(min(int(n_sources[i]), m)):
            if not flux[i, s] > 0:
                continue
            single = {key: catalog[key][i, s : s + 1] for key in keys}
            single["n_sources"] = 1
            source = renderer.source_electrons(single, field)
            footprint = source > cut
            counts["C"][i, s] = source[footprint].sum()
            counts["B"][i, s] = sky[footprint].sum()
            counts["npix"][i, s] = int(footprint.sum())


def snr_from_counts(C, B, npix, extra_variance: float = 0.0) -> np.ndarray:
    """C / sqrt(C + B + P) with P = ``extra_variance`` x ``npix``; 0 where the footprint is empty, NaN
    where C is NaN."""
    C, B = np.asarray(C, np.float64), np.asarray(B, np.float64)
    P = float(extra_variance) * np.asarray(npix, np.float64)
    denom = C + B + P
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = np.where(denom > 0, C / np.sqrt(np.where(denom > 0, denom, 1.0)), 0.0)
    return np.where(np.isnan(C), np.nan, snr)


def source_snr(
    batch: dict, spec_or_renderer, *, footprint_threshold: float = 0.1, extra_variance: float = 0.0
) -> np.ndarray:
    """SNR = C / sqrt(C + B + P) of every true source of ``batch``: [B, max_sources] float64.

    NaN for padding entries and entries with flux <= 0; 0 for a source whose footprint is empty. See the
    module docstring for the footprint and the exact C, B, P, and :func:`footprint_counts` for the
    arguments. ``extra_variance``: detector noise variance per pixel in electrons^2 (P = it x footprint
    size); 0 for the simulated images.
    """
    counts = footprint_counts(batch, spec_or_renderer, footprint_threshold=footprint_threshold)
    return snr_from_counts(counts["C"], counts["B"], counts["npix"], extra_variance)
