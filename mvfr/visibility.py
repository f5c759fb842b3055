"""Which views see which surface points: one ray-casting rule for every stage.

Per texel and view, at the base point (DESIGN §5): the view is *occluded* when the ray from the
camera centre to ``p`` hits the base mesh closer than ``|p - c| - search_range`` (one embree ray per
texel and view), and *back-facing* when ``n . (c - p) <= 0`` (the camera sees the back of the surface).
"""

from __future__ import annotations

import numpy as np

from mvfr.camera import camera_center


# ---------------------------------------------------------------------------------- visibility


def occlusion_mask(
    points: np.ndarray, centers: np.ndarray, vertices: np.ndarray, faces: np.ndarray, search_units: float
) -> np.ndarray:
    """Which base points are hidden from which camera by the base mesh.

    ``points [T, 3]`` base points (units), ``centers [V, 3]`` camera centres, base mesh
    ``vertices [N, 3]`` / ``faces [F, 3]``; ``search_units`` the search half-range (units).
    Returns ``occluded [V, T]`` bool: the ray from the centre to ``p`` hits the mesh closer than
    ``|p - c| - search_units``. One embree ray per texel and view.
    """
    import trimesh
    from trimesh.ray.ray_pyembree import RayMeshIntersector

    points = np.asarray(points, dtype=np.float64)
    centers = np.asarray(centers, dtype=np.float64).reshape(-1, 3)
    V, T = len(centers), len(points)
    occluded = np.zeros((V, T), dtype=bool)
    if T == 0:
        return occluded
    tm = trimesh.Trimesh(np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int64), process=False)
    caster = RayMeshIntersector(tm)
    for v in range(V):
        dirs = points - centers[v]
        dist = np.linalg.norm(dirs, axis=1)
        dirs = dirs / np.maximum(dist, 1e-30)[:, None]
        origins = np.broadcast_to(centers[v], dirs.shape)
        loc, ray_idx, _ = caster.intersects_location(origins, dirs, multiple_hits=False)
        if len(ray_idx):
            hit = np.linalg.norm(loc - centers[v], axis=1)
            occluded[v, ray_idx] = hit < dist[ray_idx] - search_units
    return occluded


def texel_view_visibility(
    points: np.ndarray,
    normals: np.ndarray,
    Rt: np.ndarray,
    vertices: np.ndarray | None,
    faces: np.ndarray | None,
    search_units: float,
) -> np.ndarray:
    """Views that may see a texel's hypotheses: front-facing and not occluded -> ``[V, T]`` bool.

    ``points [T, 3]``, ``normals [T, 3]`` (units, world), ``Rt [V, 3, 4]``; base mesh
    ``vertices``/``faces`` (None skips the occlusion test). Behind-camera and off-image are
    per hypothesis, see :func:`project_hypotheses`.
    """
    centers = camera_center(np.asarray(Rt, dtype=np.float64))  # [V, 3]
    facing = np.einsum("tc,vtc->vt", normals, centers[:, None, :] - points[None]) > 0
    if vertices is None or faces is None:
        return facing
    return facing & ~occlusion_mask(points, centers, vertices, faces, search_units)
