"""Which views see which surface points: one ray caster, one occlusion rule, one facing test.

Every stage that asks "does camera ``c`` see point ``p``" uses the same two tests:

- *facing* (:func:`facing`): the cosine between the outward normal ``n`` at ``p`` and the direction
  ``c - p`` exceeds ``min_cos`` (the camera sees the front of the surface);
- *occluded* (:func:`occluded`): the ray from the camera centre towards ``p`` hits the mesh closer
  than ``|p - c| - margin`` (one embree ray per point and view, :class:`RayCaster`).

The ``margin`` (capture units) is how far in front of ``p`` a surface must lie to hide it; each
caller picks it for what it tests:

- hypotheses (:func:`texel_view_visibility`, stage 2): the search half-range ``step * (D - 1) / 2``
  at the base point, since a surface within the searched segment is what is being searched for;
- texture blending (:func:`mvfr.texture.view_weights`, stage 4): one mean edge length of the refined
  mesh (``RayCaster.mean_edge``), since an upsampled texel may lie a little off its own triangle;
- landmarks (:func:`mvfr.triangulation.landmark_visibility`, stage 1): 0, for the landmark lifted
  off the fitted mesh along its normal by ``occlusion_eps`` (1e-3) x ``RayCaster.extent``.

Units: capture units throughout; ``centers`` are camera centres in world coordinates.
"""

from __future__ import annotations

import numpy as np

from mvfr.camera import camera_center


# ---------------------------------------------------------------------------------- ray caster


class RayCaster:
    """Embree ray casting (``trimesh.ray.ray_pyembree``) against one triangle mesh, built once.

    ``vertices [N, 3]`` (capture units), ``faces [F, 3]`` int. Keeps the mesh's size figures that
    callers derive their margins from: ``mean_edge`` (mean triangle edge length) and ``extent``
    (diagonal of the triangles' bounding box), both in the vertices' units.
    """

    def __init__(self, vertices: np.ndarray, faces: np.ndarray):
        import trimesh
        from trimesh.ray.ray_pyembree import RayMeshIntersector

        v = np.asarray(vertices, dtype=np.float64)
        f = np.asarray(faces, dtype=np.int64)
        if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
            raise ValueError(f"a ray caster needs vertices [N, 3] and faces [F, 3], got {v.shape} and {f.shape}")
        self.mesh = trimesh.Trimesh(v, f, process=False)
        self.intersector = RayMeshIntersector(self.mesh)
        edges = v[f[:, [1, 2, 0]]] - v[f]
        self.mean_edge = float(np.linalg.norm(edges, axis=-1).mean()) if len(f) else 0.0
        used = v[f.ravel()]
        self.extent = float(np.linalg.norm(used.max(0) - used.min(0))) if len(f) else 0.0

    def first_hit(self, origins: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """First hits of the rays ``origins, directions [R, 3]`` -> ``ray index [K]``, ``triangle
        index [K]``, ``location [K, 3]`` (only the ``K`` rays that hit; at most one hit per ray)."""
        origins = np.ascontiguousarray(origins, dtype=np.float64).reshape(-1, 3)
        directions = np.ascontiguousarray(directions, dtype=np.float64).reshape(-1, 3)
        if len(origins) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3))
        tri, ray, loc = self.intersector.intersects_id(origins, directions, multiple_hits=False, return_locations=True)
        return np.asarray(ray, dtype=np.int64), np.asarray(tri, dtype=np.int64), np.asarray(loc, dtype=np.float64)

    def any_hit(self, origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
        """``[R]`` bool: the ray ``origins, directions [R, 3]`` hits the mesh anywhere (embree's
        occlusion query: no hit point is computed, several times faster than :meth:`first_hit`)."""
        origins = np.ascontiguousarray(origins, dtype=np.float64).reshape(-1, 3)
        directions = np.ascontiguousarray(directions, dtype=np.float64).reshape(-1, 3)
        if len(origins) == 0:
            return np.zeros(0, dtype=bool)
        return np.asarray(self.intersector.intersects_any(origins, directions), dtype=bool)

    def hit_distance(self, origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
        """Distance along unit ``directions [R, 3]`` from ``origins [R, 3]`` to the first hit ->
        ``[R]`` float64, ``inf`` where the ray hits nothing. A hit at the origin counts (distance 0)."""
        origins = np.ascontiguousarray(origins, dtype=np.float64).reshape(-1, 3)
        directions = np.ascontiguousarray(directions, dtype=np.float64).reshape(-1, 3)
        out = np.full(len(origins), np.inf)
        ray, _, loc = self.first_hit(origins, directions)
        if len(ray):
            d = np.einsum("ij,ij->i", loc - origins[ray], directions[ray])
            np.minimum.at(out, ray, np.maximum(d, 0.0))
        return out


# ------------------------------------------------------------------------------------- the rules


def view_cosines(points: np.ndarray, normals: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Cosine between each unit normal and the direction from its point to each camera centre.

    ``points [N, 3]``, ``normals [N, 3]`` (unit), ``centers [V, 3]`` -> ``[V, N]`` float64.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    normals = np.asarray(normals, dtype=np.float64).reshape(-1, 3)
    centers = np.asarray(centers, dtype=np.float64).reshape(-1, 3)
    d = centers[:, None, :] - points[None]  # [V, N, 3]
    d = d / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-30)
    return np.einsum("nc,vnc->vn", normals, d)


def facing(points: np.ndarray, normals: np.ndarray, centers: np.ndarray, min_cos: float = 0.0) -> np.ndarray:
    """The facing test: ``[V, N]`` bool, :func:`view_cosines` ``> min_cos`` (``min_cos = 0``: the
    camera is on the front side of the surface's tangent plane; a larger value also rejects
    grazing views)."""
    return view_cosines(points, normals, centers) > min_cos


def occluded(points: np.ndarray, centers: np.ndarray, caster: RayCaster, margin: float) -> np.ndarray:
    """The occlusion rule: which points are hidden from which camera by the caster's mesh.

    ``points [N, 3]``, ``centers [V, 3]`` (capture units), ``margin`` >= 0 (capture units, see the
    module docstring for each caller's) -> ``[V, N]`` bool: the segment from the camera centre to
    the point, less its last ``margin``, crosses the mesh, i.e. the first hit from the centre towards
    the point is closer than ``|p - c| - margin``. A point within ``margin`` of its camera is never
    occluded. Computed as one embree occlusion (any-hit) query per point and view, cast from the
    point moved ``margin`` towards the camera: a surface beyond the camera (none, for a rig around a
    face) would count too.
    """
    if not margin >= 0:
        raise ValueError(f"margin must be non-negative (capture units), got {margin}")
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    centers = np.asarray(centers, dtype=np.float64).reshape(-1, 3)
    out = np.zeros((len(centers), len(points)), dtype=bool)
    if len(points) == 0:
        return out
    for v, c in enumerate(centers):
        to_cam = c - points
        dist = np.linalg.norm(to_cam, axis=1)
        to_cam = to_cam / np.maximum(dist, 1e-30)[:, None]
        far = dist > margin
        # leave the point's own surface: a hit exactly at the start is not in front of the point
        start = points[far] + to_cam[far] * (margin + 1e-7 * dist[far])[:, None]
        out[v, far] = caster.any_hit(start, to_cam[far])
    return out


# ---------------------------------------------------------------------------------- hypotheses


def texel_view_visibility(
    points: np.ndarray,
    normals: np.ndarray,
    Rt: np.ndarray,
    vertices: np.ndarray | None,
    faces: np.ndarray | None,
    search_units: float,
) -> np.ndarray:
    """Views that may see a texel's hypotheses: front-facing and not occluded -> ``[V, T]`` bool.

    ``points [T, 3]``, ``normals [T, 3]`` (units, world) base points and normals, ``Rt [V, 3, 4]``;
    base mesh ``vertices``/``faces`` (None skips the occlusion test); ``search_units`` the search
    half-range (units), the occlusion margin. Behind-camera and off-image are per hypothesis, see
    :func:`mvfr.mvs.geometry.project_hypotheses`.
    """
    centers = camera_center(np.asarray(Rt, dtype=np.float64))  # [V, 3]
    vis = facing(points, normals, centers)
    if vertices is None or faces is None:
        return vis
    return vis & ~occluded(points, centers, RayCaster(vertices, faces), search_units)
