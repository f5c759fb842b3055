"""UV maps of a fitted base mesh, and the ground-truth displacement along its normals.

Maps (S x S, texel convention of DESIGN §3, template uv chart):

- ``pos_map [S, S, 3]`` float32: base-surface position, capture units, 0 where no face covers the texel.
- ``norm_map [S, S, 3]`` float32: unit outward normal, 0 where not covered. Interpolated vertex
  normals, smoothed with :func:`smooth_normal_map` (a coverage-normalised 3 x 3 box filter,
  ``iters`` passes) and renormalised.
- ``mv_map [S, S]`` float32: signed distance, capture units, from ``pos_map`` along the +-normal line
  to the nearest ground-truth surface hit (+ = the GT lies outside, along +normal); 0 where invalid.
- ``valid_map [S, S]`` bool: the normal line hits the GT within the search range AND the texel is
  covered AND inside the facial mask.

Ray casting uses :class:`mvfr.visibility.RayCaster` (embree through trimesh). :func:`surface_texels`
is the one rule for which texels of a map carry a surface.
"""

from __future__ import annotations

import numpy as np

from mvfr.mesh_io import Mesh, vertex_normals
from mvfr.uv_rasterizer import UVTable, interpolate_attribute
from mvfr.visibility import RayCaster


# ------------------------------------------------------------------------------------------- maps


def surface_texels(pos_map: np.ndarray, norm_map: np.ndarray) -> np.ndarray:
    """Which texels carry a surface: ``[S, S]`` bool, a finite position and a unit normal.

    ``pos_map [S, S, 3]``, ``norm_map [S, S, 3]`` as :func:`base_maps` writes them (unit normals on
    covered texels, 0 elsewhere, so ``|n| > 0.5`` tells the two apart). Every texel mask of the
    pipeline starts from this one (:func:`mvfr.mvs.face_inputs.search_mask`, :func:`displacement_map`).
    """
    pos_map = np.asarray(pos_map)
    norm_map = np.asarray(norm_map)
    if pos_map.ndim != 3 or pos_map.shape[-1] != 3 or norm_map.shape != pos_map.shape:
        raise ValueError(f"pos_map and norm_map must both be [S, S, 3], got {pos_map.shape} and {norm_map.shape}")
    finite = np.isfinite(pos_map).all(-1) & np.isfinite(norm_map).all(-1)
    return finite & (np.linalg.norm(np.nan_to_num(norm_map), axis=-1) > 0.5)


def position_map(table: UVTable, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """``vertices [N, 3]`` (capture units) of a mesh whose faces ``[F, 3]`` the table was built for
    -> pos_map [S, S, 3] float32, 0 where not covered."""
    return interpolate_attribute(table, faces, np.asarray(vertices, dtype=np.float64)).astype(np.float32)


def smooth_normal_map(normals: np.ndarray, covered: np.ndarray, iters: int = 2) -> np.ndarray:
    """Smooth a normal map with ``iters`` passes of a 3 x 3 box filter over covered texels, renormalise.

    normals [S, S, 3]; covered [S, S] bool -> [S, S, 3] float64 unit vectors (0 where not covered).
    Uncovered neighbours do not contribute (the filter is normalised by the covered count).
    """
    n = np.where(covered[..., None], np.asarray(normals, dtype=np.float64), 0.0)
    cov = covered.astype(np.float64)
    for _ in range(max(int(iters), 0)):
        acc = _box3(n)
        cnt = _box3(cov[..., None])
        n = np.where(covered[..., None], acc / np.maximum(cnt, 1e-12), 0.0)
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    ok = covered & (norm[..., 0] > 1e-12)
    return np.where(ok[..., None], n / np.maximum(norm, 1e-12), 0.0)


def _box3(a: np.ndarray) -> np.ndarray:
    """Sum over the 3 x 3 neighbourhood (zero padding) of ``a [S, S, C]``."""
    p = np.pad(a, ((1, 1), (1, 1), (0, 0)))
    H, W = a.shape[:2]
    out = np.zeros_like(a)
    for di in range(3):
        for dj in range(3):
            out += p[di : di + H, dj : dj + W]
    return out


def normal_map(table: UVTable, vertices: np.ndarray, faces: np.ndarray, smooth_iters: int = 2,
               normals: np.ndarray | None = None) -> np.ndarray:
    """Unit outward normal map [S, S, 3] float32 of a mesh (area-weighted vertex normals,
    barycentric interpolation, :func:`smooth_normal_map`, renormalised); 0 where not covered.
    ``normals [N, 3]`` overrides the vertex normals computed from the geometry."""
    vn = vertex_normals(np.asarray(vertices, dtype=np.float64), faces) if normals is None else normals
    n = interpolate_attribute(table, faces, vn)
    return smooth_normal_map(n, table.covered, smooth_iters).astype(np.float32)


def displacement_map(
    pos_map: np.ndarray,
    norm_map: np.ndarray,
    covered: np.ndarray,
    gt_mesh,
    search_range: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Signed distance along the normal line from the base surface to the GT surface.

    pos_map [S, S, 3], norm_map [S, S, 3] (unit, outward) capture units; covered [S, S] bool;
    gt_mesh: anything with ``vertices [N, 3]`` and ``faces [F, 3]`` (``trimesh.Trimesh``, :class:`Mesh`)
    in capture units; search_range > 0 in capture units.
    From every covered :func:`surface_texels` texel two rays are cast (+normal and -normal); the nearer hit wins and is
    signed + along +normal. Returns ``mv_map [S, S]`` float32 (0 where no hit) and
    ``hit [S, S]`` bool (a hit within ``search_range``).
    """
    if not search_range > 0:
        raise ValueError(f"search_range must be positive (capture units), got {search_range}")
    covered = np.asarray(covered, dtype=bool)
    n = np.asarray(norm_map, dtype=np.float64)
    ok = covered & surface_texels(pos_map, n)
    p = np.asarray(pos_map, dtype=np.float64)[ok]
    d = n[ok]
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    caster = RayCaster(gt_mesh.vertices, gt_mesh.faces)
    dist = caster.hit_distance(np.concatenate([p, p]), np.concatenate([d, -d]))
    k = len(p)
    t_pos, t_neg = dist[:k], dist[k:]
    signed = np.where(t_pos <= t_neg, t_pos, -t_neg)
    hit = np.minimum(t_pos, t_neg) <= search_range
    mv = np.zeros(covered.shape, dtype=np.float32)
    valid = np.zeros(covered.shape, dtype=bool)
    mv[ok] = np.where(hit, signed, 0.0)
    valid[ok] = hit
    return mv, valid


def base_maps(table: UVTable, mesh: Mesh, smooth_iters: int = 2) -> dict[str, np.ndarray]:
    """``pos_map`` [S, S, 3] and ``norm_map`` [S, S, 3] (float32) of a base mesh whose ``face_uvs``
    the table was built from (``faces`` index vertices, ``face_uvs`` rows match), plus ``covered``."""
    return {
        "pos_map": position_map(table, mesh.vertices, mesh.faces),
        "norm_map": normal_map(table, mesh.vertices, mesh.faces, smooth_iters),
        "covered": table.covered.copy(),
    }


def ground_truth_maps(
    pos_map: np.ndarray,
    norm_map: np.ndarray,
    covered: np.ndarray,
    facial_mask: np.ndarray,
    gt_mesh,
    search_range: float,
) -> tuple[np.ndarray, np.ndarray]:
    """``mv_map [S, S]`` float32 (capture units, 0 where invalid) and ``valid_map [S, S]`` bool
    (hit within ``search_range`` capture units AND covered AND in ``facial_mask [S, S]``)."""
    mv, hit = displacement_map(pos_map, norm_map, covered, gt_mesh, search_range)
    valid = hit & covered & np.asarray(facial_mask, dtype=bool)
    mv = np.where(valid, mv, 0.0).astype(np.float32)
    return mv, valid


def truth_surface(pos: np.ndarray, nrm: np.ndarray, mv: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ground-truth surface of the training maps: ``pos + nrm * mv`` ``[S, S, 3]`` float32 where it is
    known (``valid`` and a finite ``mv``, returned ``[S, S]`` bool), ``pos`` elsewhere."""
    ok = np.asarray(valid).astype(bool) & np.isfinite(mv)
    surface = np.where(ok[..., None], pos + nrm * np.where(ok, mv, 0.0)[..., None], pos)
    return surface.astype(np.float32), ok
