"""The picture of a catalog: an image with its detections drawn on it (``python -m npejax.predict --png``).

:func:`write_catalog_png` draws one image [H, W] (nmgy) and the rows of a catalog of it (the columns of
:data:`npejax.schema.PREDICTION_COLUMNS`: ``x``, ``y`` in pixels, ``mag``, ``prob_galaxy``, ``x_std``,
``y_std``) into a PNG written atomically (:mod:`npejax.io`). Matplotlib is imported at the first call.
"""

from __future__ import annotations

import numpy as np

from npejax import catalogs as catalog_lib
from npejax import io


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
    from matplotlib import collections as mcollections  # deferred: as above
    from matplotlib import colors as mcolors  # deferred: as above

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
        xy = np.column_stack(catalog_lib.array_xy(table))  # pixels from the edge, as the image's extent
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
