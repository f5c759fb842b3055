"""UV-grid meshes: a position map becomes a triangle mesh with one vertex per valid texel.

Used for the implicit-function surface (``pred/if_mesh``) and the regularised surface
(``pred/reg_mesh``). Texel (row i, col j) has uv ``((j + 0.5) / S, 1 - (i + 0.5) / S)``
(:func:`mvfr.uv_rasterizer.texel_centres_uv`). Every 2 x 2 block of valid texels gives two
triangles; they are counter-clockwise in uv (u right, v up), which is counter-clockwise seen from
outside because the template's uv layout is (every template face is counter-clockwise in uv).
"""

from __future__ import annotations

import numpy as np

from mvfr.mesh_io import Mesh, vertex_normals
from mvfr.uv_rasterizer import texel_centres_uv


def uv_grid_mesh(pos_map: np.ndarray, valid: np.ndarray, norm_map: np.ndarray | None = None) -> Mesh:
    """``pos_map [S, S, 3]`` (units), ``valid [S, S]`` bool -> :class:`Mesh` with uvs and vertex normals.

    Vertices are the valid texels in row-major order; triangles ``(a, b, c)``, ``(a, c, d)`` per full
    quad with a = (i, j), b = (i + 1, j), c = (i + 1, j + 1), d = (i, j + 1). Normals come from
    ``norm_map [S, S, 3]`` when given (renormalised), else from the triangles (area-weighted).
    """
    pos_map = np.asarray(pos_map)
    valid = np.asarray(valid, dtype=bool)
    if pos_map.ndim != 3 or pos_map.shape[2] != 3 or pos_map.shape[:2] != valid.shape or valid.shape[0] != valid.shape[1]:
        raise ValueError(f"pos_map must be [S, S, 3] and valid [S, S]; got {pos_map.shape} and {valid.shape}")
    if not np.isfinite(pos_map[valid]).all():
        raise ValueError("pos_map has NaN or infinite values on valid texels")
    S = valid.shape[0]
    index = np.full((S, S), -1, dtype=np.int64)
    index[valid] = np.arange(int(valid.sum()))
    a, b, c, d = index[:-1, :-1], index[1:, :-1], index[1:, 1:], index[:-1, 1:]
    full = (a >= 0) & (b >= 0) & (c >= 0) & (d >= 0)
    a, b, c, d = a[full], b[full], c[full], d[full]
    faces = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)]).reshape(-1, 3)
    # interleave so each quad's two triangles are adjacent
    q = len(a)
    order = np.stack([np.arange(q), np.arange(q) + q], 1).ravel()
    faces = faces[order]
    vertices = pos_map[valid].astype(np.float64)
    uvs = texel_centres_uv(S)[valid]
    if norm_map is not None:
        n = np.asarray(norm_map, dtype=np.float64)[valid]
        norm = np.linalg.norm(n, axis=1, keepdims=True)
        normals = np.where(norm > 0, n / np.maximum(norm, 1e-30), 0.0)
    else:
        normals = vertex_normals(vertices, faces) if len(faces) else np.zeros_like(vertices)
    return Mesh(vertices, faces, uvs, faces.copy(), normals)
