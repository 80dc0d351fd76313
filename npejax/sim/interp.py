"""Linear interpolation on a grid of nodes, as a weight matrix: the one helper behind every coarse grid.

Two grids are interpolated this way, separably along rows and columns (``rows @ grid @ cols.T`` is
bilinear interpolation):

* the field bank's sky grid at the pixels of an image crop (:meth:`npejax.sim.fields.FieldBank.background_electrons`,
  via :func:`cell_center_weights`: node ``a`` of ``nodes`` sits at the center of cell ``a`` of the frame);
* an SDSS frame's ``ALLSKY`` grid at the grid coordinates ``XINTERP`` / ``YINTERP`` of each pixel
  (:func:`npejax.surveys.sdss.read_frame`, via :func:`linear_weights`).

Coordinates are in grid-node units (node k at coordinate k) and are clamped to ``[0, nodes - 1]``, so
beyond the outermost nodes the value of the nearest node is used (``mode='nearest'`` of
``scipy.ndimage.map_coordinates``).
"""

from __future__ import annotations

import numpy as np


def linear_weights(coords, nodes: int) -> np.ndarray:
    """Linear-interpolation weights [len(coords), nodes] (float64) at fractional grid ``coords``.

    Row i has at most two non-zero entries, at the nodes on either side of ``coords[i]`` (clamped to the
    grid), summing to 1. With one node every weight is 1.
    """
    pos = np.clip(np.asarray(coords, dtype=np.float64), 0.0, nodes - 1.0)
    lo = np.minimum(np.floor(pos).astype(np.int64), max(nodes - 2, 0))
    frac = pos - lo
    weights = np.zeros((pos.size, nodes))
    weights[np.arange(pos.size), lo] = 1.0 - frac
    if nodes > 1:
        weights[np.arange(pos.size), lo + 1] += frac
    return weights


def cell_center_weights(start: int, length: int, frame_length: int, nodes: int) -> np.ndarray:
    """Weights [length, nodes] of pixels ``start .. start + length - 1`` of a frame of ``frame_length``
    pixels, on a grid of ``nodes`` nodes at the centers of equal cells spanning the frame.

    Pixel i's center is at ``i + 0.5`` (edge-based pixel coordinates), i.e. at grid coordinate
    ``(i + 0.5) * nodes / frame_length - 0.5``.
    """
    centers = np.arange(start, start + length) + 0.5
    return linear_weights(centers * nodes / frame_length - 0.5, nodes)
