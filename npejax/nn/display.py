"""How an image is shown in the figures of an evaluation report and in TensorBoard: one stretch, one grey map.

:func:`asinh_stretch` maps an image [H, W] (nmgy, sky-subtracted) to arcsinh(image / s), s its noise level
(1.4826 x the median absolute deviation of its finite pixels), shown from -2 sigma (``vmin``) to its 99.8th
percentile (``vmax``) with the colour map :data:`CMAP`: brighter pixels are lighter (no inverted map). It is used
by the report's gallery (:func:`npejax.evaluation.report.write_gallery`) and by training's validation image
(:func:`npejax.nn.train.validation_figure`), so a source looks the same in both. Numpy only; no plotting here.
"""

from __future__ import annotations

import numpy as np

CMAP = "gray"  # matplotlib colour map of every image figure: 0 black, 1 white (value-to-grey increasing)


def asinh_stretch(image) -> tuple[np.ndarray, float, float]:
    """(asinh-stretched image, vmin, vmax) for display: arcsinh(image / s) with s the noise level (1.4826
    x the median absolute deviation), shown from -2 sigma to the 99.8th percentile (non-finite pixels: 0)."""
    image = np.asarray(image, np.float64)
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return np.zeros_like(image), 0.0, 1.0
    sigma = 1.4826 * np.median(np.abs(finite - np.median(finite)))
    sigma = sigma if sigma > 0 else max(float(np.std(finite)), 1e-12)
    stretched = np.arcsinh(np.nan_to_num(image, nan=0.0, posinf=0.0, neginf=0.0) / sigma)
    vmin = float(np.arcsinh(-2.0))
    vmax = max(float(np.percentile(np.arcsinh(finite / sigma), 99.8)), vmin + 1.0)
    return stretched, vmin, vmax
