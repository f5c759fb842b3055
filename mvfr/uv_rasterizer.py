"""Rasterisation in UV space: texel -> (face, barycentrics) tables and per-vertex attribute maps.

Convention (DESIGN §3): texel (row i, col j) of an S x S map has its centre at
``uv = ((j + 0.5) / S, 1 - (i + 0.5) / S)``; row 0 is the top of the image (v = 1).
"""

from __future__ import annotations

import numpy as np


def texel_centres_uv(size: int) -> np.ndarray:
    """uv of every texel centre of an S x S map: [S, S, 2] float64, ``[i, j] = (u_j, v_i)``."""
    if size < 1:
        raise ValueError(f"UV map size must be positive, got {size}")
    c = (np.arange(size) + 0.5) / size
    u, v = np.meshgrid(c, 1.0 - c, indexing="xy")
    return np.stack([u, v], axis=-1)


def uv_to_texel(uv: np.ndarray, size: int) -> np.ndarray:
    """Continuous texel coordinates (col x, row y) of ``uv [..., 2]``: texel centres are integers."""
    uv = np.asarray(uv, dtype=np.float64)
    x = uv[..., 0] * size - 0.5
    y = (1.0 - uv[..., 1]) * size - 0.5
    return np.stack([x, y], axis=-1)


def lookup_nearest(map_: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Value of ``map_ [S, S, ...]`` at the texel nearest to each ``uv [N, 2]`` (uv outside [0, 1] is clamped)."""
    size = map_.shape[0]
    xy = np.rint(uv_to_texel(uv, size)).astype(np.int64)
    x = np.clip(xy[..., 0], 0, size - 1)
    y = np.clip(xy[..., 1], 0, size - 1)
    return map_[y, x]
