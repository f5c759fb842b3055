"""Per-stage geometric error figures in mm against a ground-truth scan (DESIGN §6).

Every function here is pure: arrays and :class:`~mvfr.mesh_io.Mesh` objects in, arrays and dicts
out. Geometry stays in the capture's units ("units"); :func:`surface_metrics` converts every
reported length to millimetres with ``mm_per_unit`` (FaceScape: ``Rt_scale_dict[pid][eid][0]``).

Errors are computed on points sampled uniformly by area over the surfaces, never on vertices, so
a dense mesh does not weigh more than a coarse one; the samples are stratified by area
(:func:`sample_surface`), so that 200 000 per direction hold every figure within about 0.002 mm of
its exact value (``benchmarks/bench_evaluate.py``). Closest points come from libigl (an AABB tree,
exact point-triangle distance), built once per scan for every stage (:class:`ScanIndex`).

The facial region is a boolean per **GT face** (``[F_gt] bool``). Per-face regions keep area
sampling exact and let the accuracy direction ask "does the closest GT point lie on a region
face?" directly. It comes from (see :mod:`mvfr.evaluation` for the order):

- a per-**vertex** region of the scan (``RAW/region`` or ``evaluate.py --scan_region``), through
  :func:`region_faces_from_vertices`: a face belongs when at least two of its three corners do
  (a majority, so the region's area matches the vertex set's on both sides of its border);
- or, without one, a surface fitted to the triangulated landmarks alone (the template deformed to
  them, template uvs): :func:`facial_region_from_surface` keeps the scan faces whose centroid lies
  near that surface and whose closest point on it falls inside the template's facial mask. Never the
  IF, reg or meso surface (it is stage 1's landmark fit, so the base stage is scored in a region drawn
  around nearly its own surface), never the scan's own uvs (a scan's uvs belong to its own layout).

A scan whose faces are wound inwards, wholly or in patches, would read about 180 degrees of normal
error: :func:`orient_towards_cameras` first makes every consistently wound patch face the cameras.

Metric keys (exact, in this order, see :data:`METRIC_KEYS`):

- ``accuracy_mean_mm``, ``accuracy_median_mm``: prediction -> GT distance of the prediction samples
  whose closest GT point lies on a region face (prediction parts outside the face do not count) and
  not on the scan's open edge (:func:`on_open_edge`: a scan that stops, cropped like FaceScape's or
  with a hole, holds no truth beyond its edge, so a prediction that reaches further is not scored
  there; a whole-head scan has no open edge in its face).
- ``completeness_mean_mm``: GT region samples -> whole prediction.
- ``chamfer_mm``: mean of ``accuracy_mean_mm`` and ``completeness_mean_mm``.
- ``pct_within_0.5mm``, ``pct_within_1mm``, ``pct_within_2mm``: percent (0..100) of the accuracy
  (prediction -> GT) distances that are <= the threshold.
- ``normal_error_deg``: mean angle, in degrees, between the prediction's normal at each accuracy
  sample and the GT normal at its closest point (both: barycentric interpolation of area-weighted
  vertex normals computed from the geometry, renormalised). Orientation matters: a flipped
  surface reads about 180 degrees.
"""

from __future__ import annotations

import math
import os
from typing import Mapping

import igl
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from mvfr.atomic_io import save_json
from mvfr.mesh_io import Mesh, face_normals, vertex_normals
from mvfr.uv_rasterizer import lookup_nearest
from mvfr.visibility import RayCaster

METRIC_KEYS = (
    "accuracy_mean_mm",
    "accuracy_median_mm",
    "completeness_mean_mm",
    "chamfer_mm",
    "pct_within_0.5mm",
    "pct_within_1mm",
    "pct_within_2mm",
    "normal_error_deg",
)
STAGE_ORDER = ("base", "if", "reg", "meso")
THRESHOLDS_MM = {"pct_within_0.5mm": 0.5, "pct_within_1mm": 1.0, "pct_within_2mm": 2.0}


# ------------------------------------------------------------------------------------- validation


def _check_mesh(vertices: np.ndarray, faces: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous float64 ``[N, 3]`` / int64 ``[F, 3]`` copies, or a ValueError naming ``name``."""
    v = np.ascontiguousarray(vertices, dtype=np.float64)
    f = np.ascontiguousarray(faces, dtype=np.int64)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0:
        raise ValueError(f"{name}: vertices must be a non-empty [N, 3] array, got shape {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3 or len(f) == 0:
        raise ValueError(f"{name}: faces must be a non-empty [F, 3] array, got shape {f.shape}")
    if not np.isfinite(v).all():
        bad = int((~np.isfinite(v).all(axis=1)).sum())
        raise ValueError(f"{name}: {bad} vertices are NaN or infinite; fix or drop them before evaluation")
    if f.min() < 0 or f.max() >= len(v):
        raise ValueError(f"{name}: face indices must lie in [0, {len(v) - 1}], got [{f.min()}, {f.max()}]")
    return v, f


def _check_positive(value: float, name: str) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


# ------------------------------------------------------------------------------- geometry helpers


def point_to_mesh(
    points: np.ndarray, vertices: np.ndarray, faces: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closest points on a triangle mesh.

    ``points [P, 3]``, ``vertices [N, 3]``, ``faces [F, 3]``, all in capture units ->
    ``dist [P]`` float64 (units, unsquared), ``closest [P, 3]`` float64 (units), ``face_idx [P]``
    int64 (the face the closest point lies on). Unreferenced vertices are ignored.
    """
    v, f = _check_mesh(vertices, faces, "mesh")
    p = np.ascontiguousarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points must be [P, 3], got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("points contain NaN or infinite values")
    if len(p) == 0:
        return np.zeros(0), np.zeros((0, 3)), np.zeros(0, dtype=np.int64)
    sqr, idx, closest = igl.point_mesh_squared_distance(p, v, f)
    return np.sqrt(np.maximum(sqr, 0.0)), np.asarray(closest), np.asarray(idx, dtype=np.int64)


def barycentric(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Barycentric coordinates ``[P, 3]`` of ``points [P, 3]`` in ``triangles [P, 3, 3]``.

    The point is projected onto the triangle's plane first; for a point on the triangle the
    coordinates are >= 0 (up to rounding) and sum to 1. Degenerate triangles get (1, 0, 0).
    """
    a, b, c = triangles[:, 0], triangles[:, 1], triangles[:, 2]
    v0, v1, v2 = b - a, c - a, points - a
    d00 = np.einsum("ij,ij->i", v0, v0)
    d01 = np.einsum("ij,ij->i", v0, v1)
    d11 = np.einsum("ij,ij->i", v1, v1)
    d20 = np.einsum("ij,ij->i", v2, v0)
    d21 = np.einsum("ij,ij->i", v2, v1)
    denom = d00 * d11 - d01 * d01
    ok = denom > 1e-30 * np.maximum(d00 * d11, 1e-300)
    safe = np.where(ok, denom, 1.0)
    v = np.where(ok, (d11 * d20 - d01 * d21) / safe, 0.0)
    w = np.where(ok, (d00 * d21 - d01 * d20) / safe, 0.0)
    return np.stack([1.0 - v - w, v, w], axis=1)


def _interpolate(values: np.ndarray, faces: np.ndarray, face_idx: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """Per-vertex (or per-corner, via ``faces``) ``values [N, C]`` at (face, bary) -> ``[P, C]``."""
    corners = values[faces[face_idx]]  # [P, 3, C]
    return np.einsum("pk,pkc->pc", bary, corners)


def _normalise(n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows of ``n [P, 3]`` and a ``[P]`` bool of rows that had a usable length."""
    norm = np.linalg.norm(n, axis=1)
    ok = norm > 1e-12
    return n / np.where(ok, norm, 1.0)[:, None], ok


def sample_surface(
    vertices: np.ndarray, faces: np.ndarray, n: int, seed: int = 0, stratified: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` points uniformly distributed by area over a triangle mesh; deterministic for a seed.

    ``vertices [N, 3]`` units, ``faces [F, 3]`` -> ``points [n, 3]`` units, ``face_idx [n]`` int64,
    ``bary [n, 3]`` float64 (``points = sum_k bary[:, k] * vertices[faces[face_idx, k]]``).
    Zero-area faces are never sampled; a mesh with no area raises ValueError.

    ``stratified`` (the default): the faces' areas, laid end to end in face order, are cut into ``n``
    equal strata and each gets one sample at a uniformly random place (jittered sampling): still
    uniform by area, but every part of the surface gets its share, so a mean over the samples varies
    several times less from seed to seed than with independent samples (``stratified=False``), and the
    samples come in face order (meshes list nearby faces together: closest-point queries run in cache).
    """
    v, f = _check_mesh(vertices, faces, "mesh")
    return _sample_by_area(v, f, face_areas(v, f), n, seed, stratified)


def face_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area ``[F]`` of every triangle, in units squared."""
    tri = vertices[faces]
    return 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)


def _sample_by_area(v: np.ndarray, f: np.ndarray, area: np.ndarray, n: int, seed: int,
                    stratified: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`sample_surface` with the faces' ``area [F]`` given (computed once per scan by :class:`ScanIndex`)."""
    n = int(n)
    if n < 1:
        raise ValueError(f"number of samples must be >= 1, got {n}")
    cum = np.cumsum(area)
    total = cum[-1] if len(cum) else 0.0
    if not total > 0:
        raise ValueError("cannot sample a mesh whose total area is zero")
    rng = np.random.default_rng(seed)
    u = (np.arange(n) + rng.random(n)) / n if stratified else rng.random(n)
    face_idx = np.searchsorted(cum, u * total, side="right")
    face_idx = np.minimum(face_idx, len(f) - 1).astype(np.int64)
    r1 = np.sqrt(rng.random(n))
    r2 = rng.random(n)
    bary = np.stack([1.0 - r1, r1 * (1.0 - r2), r1 * r2], axis=1)
    points = np.einsum("pk,pkc->pc", bary, v[f[face_idx]])
    return points, face_idx, bary


class ScanIndex:
    """A ground-truth scan prepared once for every surface scored against it.

    ``vertices [N, 3]``, ``faces [F, 3]`` in capture units. Holds what every stage's
    :func:`surface_metrics` and the scan's orientation (:func:`orient_towards_cameras`) need of the
    scan, each computed once, on first use: the faces' areas, a libigl AABB tree for closest points,
    the area-weighted vertex normals, the open edge (:func:`open_edges`) and area samples of a region.
    On a 1.9 M-triangle scan building these took most of the time of every stage, once per stage.
    """

    def __init__(self, vertices: np.ndarray, faces: np.ndarray):
        self.vertices, self.faces = _check_mesh(vertices, faces, "ground truth")
        self.area = face_areas(self.vertices, self.faces)
        self._tree = None
        self._normals: np.ndarray | None = None
        self._edges: tuple[np.ndarray, np.ndarray] | None = None
        self._half_edges: tuple[np.ndarray, ...] | None = None
        self._samples: dict = {}

    def rewound(self, faces: np.ndarray) -> "ScanIndex":
        """The same scan with ``faces`` wound otherwise (the same triangles, corners reordered): areas
        and tree are kept; what depends on the corners' order (normals, edges, samples) is made again."""
        f = np.ascontiguousarray(faces, dtype=np.int64)
        if f.shape != self.faces.shape or not np.array_equal(np.sort(f, 1), np.sort(self.faces, 1)):
            raise ValueError("rewound() takes the scan's own triangles, wound otherwise")
        out = ScanIndex.__new__(ScanIndex)
        out.vertices, out.faces, out.area = self.vertices, f, self.area
        out._tree, out._normals, out._edges, out._half_edges, out._samples = self._tree, None, None, None, {}
        return out

    def closest(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:func:`point_to_mesh` against the scan with its tree built once: ``points [P, 3]`` ->
        ``dist [P]`` units, ``closest [P, 3]``, ``face_idx [P]``."""
        p = np.ascontiguousarray(points, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != 3 or not np.isfinite(p).all():
            raise ValueError(f"points must be a finite [P, 3] array, got shape {p.shape}")
        if len(p) == 0:
            return np.zeros(0), np.zeros((0, 3)), np.zeros(0, dtype=np.int64)
        if self._tree is None:
            self._tree = igl.AABB()
            self._tree.init(self.vertices, self.faces)
        sqr, idx, closest = self._tree.squared_distance(self.vertices, self.faces, p)
        return np.sqrt(np.maximum(sqr, 0.0)), np.asarray(closest), np.asarray(idx, dtype=np.int64)

    @property
    def vertex_normals(self) -> np.ndarray:
        """Area-weighted unit vertex normals ``[N, 3]`` (:func:`mvfr.mesh_io.vertex_normals`)."""
        if self._normals is None:
            self._normals = vertex_normals(self.vertices, self.faces)
        return self._normals

    @property
    def open_edges(self) -> tuple[np.ndarray, np.ndarray]:
        """:func:`open_edges` of the scan's faces."""
        if self._edges is None:
            self._edges = open_edges(self.faces, self.half_edges)
        return self._edges

    @property
    def half_edges(self) -> tuple[np.ndarray, ...]:
        """:func:`half_edges` of the scan's faces."""
        if self._half_edges is None:
            self._half_edges = half_edges(self.faces)
        return self._half_edges

    def sample(self, n: int, seed: int, region: np.ndarray | None = None,
               stratified: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:func:`sample_surface` of the scan, or of its faces where ``region [F] bool`` (``face_idx`` then
        indexes the region's faces); the same samples as that function's for the same seed. A region's
        samples are kept for the next stage."""
        if region is None:
            return _sample_by_area(self.vertices, self.faces, self.area, n, seed, stratified)
        key = (int(n), int(seed), bool(stratified), hash(np.asarray(region, dtype=bool).tobytes()))
        if key not in self._samples:
            idx = np.flatnonzero(region)
            self._samples[key] = _sample_by_area(self.vertices, self.faces[idx], self.area[idx], n, seed, stratified)
        return self._samples[key]


# -------------------------------------------------------------------------------- facial region


def open_edges(faces: np.ndarray, edges: tuple[np.ndarray, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The mesh's open edge: ``[F, 3]`` bool, edge k of a face (opposite corner k) belongs to that face
    only, and ``[V]`` bool, the vertices on such an edge. Computed once per scan (:func:`on_open_edge`).
    ``edges``: :func:`half_edges` of ``faces``, computed when None."""
    f = np.asarray(faces, dtype=np.int64)
    a, b, order, start, count = half_edges(f) if edges is None else edges
    single = order[start[count == 1]]  # half-edge 3 i + k: face i, from corner k to k + 1, opposite corner k + 2
    open_edge = np.zeros((len(f), 3), dtype=bool)
    open_edge[single // 3, (single % 3 + 2) % 3] = True
    open_vertex = np.zeros(int(f.max()) + 1 if len(f) else 0, dtype=bool)
    open_vertex[a[single]] = True
    open_vertex[b[single]] = True
    return open_edge, open_vertex


def on_open_edge(faces: np.ndarray, face_idx: np.ndarray, bary: np.ndarray, tol: float = 1e-6,
                 edges: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Which closest points lie on the mesh's open edge -> ``[P] bool``.

    ``faces [F, 3]``; a closest point given by its face ``face_idx [P]`` and barycentric coordinates
    ``bary [P, 3]``. It is on the open edge when a coordinate is within ``tol`` of 0 and the opposite
    edge belongs to one face only, or when it sits on a vertex (two coordinates within ``tol``) that
    lies on such an edge. A point beyond the edge of a surface always has its closest point there.
    ``edges``: :func:`open_edges` of ``faces``, computed when None.
    """
    f = np.asarray(faces, dtype=np.int64)
    open_edge, open_vertex = open_edges(f) if edges is None else edges
    zero = np.asarray(bary) <= tol  # [P, 3]
    fi = np.asarray(face_idx, dtype=np.int64)
    on_edge = (zero & open_edge[fi]).any(1)
    at_vertex = zero.sum(1) >= 2
    corner = np.argmin(zero, axis=1)  # the coordinate that is not 0 at a vertex
    on_vertex = at_vertex & open_vertex[f[fi, corner]]
    return on_edge | on_vertex


def _check_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.shape[0] != mask.shape[1]:
        raise ValueError(f"facial mask must be a square [S, S] array, got shape {mask.shape}")
    return mask.astype(bool)


def region_faces_from_vertices(faces: np.ndarray, vertex_region: np.ndarray) -> np.ndarray:
    """Per-vertex facial region -> per-face: ``faces [F, 3]``, ``vertex_region [V] bool`` -> ``[F] bool``.

    Rule: a face is in the region when at least two of its three vertices are (majority vote).
    """
    faces = np.asarray(faces, dtype=np.int64)
    vr = np.asarray(vertex_region)
    if vr.dtype != bool or vr.ndim != 1:
        raise ValueError(f"the vertex region must be a 1-D bool array, got dtype {vr.dtype} and shape {vr.shape}")
    if faces.size and faces.max() >= len(vr):
        raise ValueError(f"the vertex region has {len(vr)} entries but the faces index vertex {faces.max()}")
    return vr[faces].sum(axis=1) >= 2


def facial_region_from_surface(
    gt_mesh: Mesh, surface: Mesh, mask: np.ndarray, max_dist_units: float, min_cos: float | None = None
) -> np.ndarray:
    """Facial region of a GT scan through a reference surface with template uvs: ``[F_gt] bool``.

    ``surface``: the template fitted to the triangulated landmarks (never a predicted surface). A GT
    face is in the region when its centroid lies within ``max_dist_units`` (capture units) of
    ``surface`` and the uv of its closest surface point (barycentric interpolation of that face's
    uvs) falls on a set texel of ``mask [S, S] bool`` (template UV). The mask lies inside the
    template's outline, so scan parts beyond the surface's border (ears, neck, hair) stay out.
    With ``min_cos``, the GT face's normal must also agree with the surface's (area-weighted vertex
    normal at the closest point) to a cosine >= ``min_cos``: surfaces behind the face that turn
    away from it (inner mouth, eyeballs, the underside of the chin) stay out; the scan must be
    wound outwards first (:func:`orient_towards_cameras`).
    """
    mask = _check_mask(mask)
    max_dist_units = _check_positive(max_dist_units, "max_dist_units")
    if surface.uvs is None or surface.face_uvs is None:
        raise ValueError("the reference surface has no uvs; the region needs the template uvs on it")
    gv, gf = _check_mesh(gt_mesh.vertices, gt_mesh.faces, "GT mesh")
    bv, bf = _check_mesh(surface.vertices, surface.faces, "reference surface")
    centroids = gv[gf].mean(axis=1)
    dist, closest, fidx = point_to_mesh(centroids, bv, bf)
    bary = barycentric(closest, bv[bf[fidx]])
    uv = np.einsum("pk,pkc->pc", bary, surface.uvs[surface.face_uvs[fidx]])
    keep = (dist <= max_dist_units) & np.asarray(lookup_nearest(mask, uv), dtype=bool)
    if min_cos is not None:
        n_ref, _ = _normalise(_interpolate(vertex_normals(bv, bf), bf, fidx, bary))
        keep &= np.einsum("ij,ij->i", face_normals(gv, gf), n_ref) >= float(min_cos)
    return keep


# --------------------------------------------------------------------------------- orientation


def half_edges(faces: np.ndarray) -> tuple[np.ndarray, ...]:
    """The half-edges of ``faces [F, 3]`` grouped by edge: ``a, b [3F]`` (half-edge ``3 i + k`` runs from
    corner k of face i to corner k + 1), ``order [3F]`` (the half-edges sorted by undirected edge), ``start
    [E]`` and ``count [E]`` (each edge's run in ``order``). Shared by :func:`open_edges` and
    :func:`consistent_patches` (one sort of a scan's 5.6 M half-edges instead of two)."""
    f = np.asarray(faces, dtype=np.int64)
    a = f.reshape(-1)
    b = f[:, [1, 2, 0]].reshape(-1)
    key = np.minimum(a, b) * (int(f.max()) + 1 if len(f) else 1) + np.maximum(a, b)
    order = np.argsort(key, kind="stable")
    k = key[order]
    start = np.flatnonzero(np.r_[True, k[1:] != k[:-1]]) if len(k) else np.zeros(0, np.int64)
    count = np.diff(np.r_[start, len(k)])
    return a, b, order, start, count


def consistent_patches(faces: np.ndarray, edges: tuple[np.ndarray, ...] | None = None) -> np.ndarray:
    """Label ``[F]`` int64 of the consistently wound patch of every face.

    Two faces sharing an edge (an edge with exactly two faces) are in one patch when they traverse
    it in opposite directions (consistent winding); a patch's faces can all be flipped together.
    ``edges``: :func:`half_edges` of ``faces``, computed when None.
    """
    f = np.asarray(faces, dtype=np.int64)
    F = len(f)
    a, b, order, start, count = half_edges(f) if edges is None else edges
    owner = np.repeat(np.arange(F), 3)
    forward = a < b
    pair = start[count == 2]
    e0, e1 = order[pair], order[pair + 1]
    ok = forward[e0] != forward[e1]
    i, j = owner[e0[ok]], owner[e1[ok]]
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(F, F))
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)


def orient_towards_cameras(
    vertices: np.ndarray, faces: np.ndarray, centres: np.ndarray, rays_per_camera: int = 20000, seed: int = 0,
    scan: ScanIndex | None = None,
) -> tuple[np.ndarray, int]:
    """Wind every consistently wound patch of a scan so that the cameras see its front sides.

    ``vertices [N, 3]``, ``faces [F, 3]``, ``centres [V, 3]`` camera centres, all in capture units
    -> ``(faces [F, 3]`` with flipped patches reversed, number of faces flipped). Rays from each
    centre to ``rays_per_camera`` points sampled by area (embree, first hit): the face hit first is
    seen from that camera and votes +1 when its normal points towards the camera, -1 otherwise; a
    patch (:func:`consistent_patches`) with a negative sum is flipped. Patches no ray reaches keep
    their winding. A correctly wound scan comes back unchanged. ``scan``: the :class:`ScanIndex` of
    ``vertices``, ``faces`` when the caller has one (its face areas are reused).
    """
    v, f = _check_mesh(vertices, faces, "GT mesh")
    c = np.asarray(centres, dtype=np.float64).reshape(-1, 3)
    if len(c) == 0:
        return f, 0
    area = face_areas(v, f) if scan is None else scan.area
    labels = consistent_patches(f, None if scan is None else scan.half_edges)
    fn = face_normals(v, f)
    caster = RayCaster(v, f)
    votes = np.zeros(int(labels.max()) + 1)
    for k, centre in enumerate(c):
        pts, _, _ = _sample_by_area(v, f, area, rays_per_camera, seed + k)
        d = pts - centre
        d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-30)
        ray, tri, _ = caster.first_hit(np.repeat(centre[None], len(d), 0), d)
        if len(tri) == 0:
            continue
        towards = -np.einsum("ij,ij->i", fn[tri], d[ray])
        np.add.at(votes, labels[tri], np.sign(towards))
    flip = (votes < 0)[labels]
    out = f.copy()
    out[flip] = out[flip][:, ::-1]
    return out, int(flip.sum())


# ------------------------------------------------------------------------------------- metrics


def surface_metrics(
    pred: Mesh,
    gt: Mesh | ScanIndex,
    gt_region_faces: np.ndarray,
    mm_per_unit: float,
    n_samples: int = 200_000,
    seed: int = 0,
    gt_open_edges: tuple[np.ndarray, np.ndarray] | None = None,
    stratified: bool = True,
) -> dict[str, float]:
    """Errors of a predicted mesh against a GT scan inside the facial region, in mm (DESIGN §6).

    ``pred``, ``gt``: meshes in the same capture units; ``gt_region_faces [F_gt] bool`` (from
    :func:`region_faces_from_vertices` or :func:`facial_region_from_surface`); ``mm_per_unit`` > 0;
    ``n_samples`` points are drawn on the prediction (seed ``seed``) and on the GT region (seed
    ``seed + 1``), stratified unless ``stratified=False`` (:func:`sample_surface`); ``gt_open_edges``: :func:`open_edges` of ``gt.faces`` when several predictions are scored
    against one scan (computed when None); ``gt`` may be the scan's :class:`ScanIndex`, which keeps what every
    stage needs of the scan (tree, normals, region samples) for the next. Returns ``{key: float}`` with the keys of :data:`METRIC_KEYS` (see the module
    docstring for each definition). Raises ValueError on an empty region, a prediction that does
    not reach the region, NaN vertices or ``mm_per_unit <= 0``.
    """
    mm_per_unit = _check_positive(mm_per_unit, "mm_per_unit")
    pv, pf = _check_mesh(pred.vertices, pred.faces, "prediction")
    scan = gt if isinstance(gt, ScanIndex) else ScanIndex(gt.vertices, gt.faces)
    gv, gf = scan.vertices, scan.faces
    region = np.asarray(gt_region_faces)
    if region.dtype != bool or region.shape != (len(gf),):
        raise ValueError(
            f"gt_region_faces must be a bool array with one entry per GT face ({len(gf)}), "
            f"got dtype {region.dtype} and shape {region.shape}"
        )
    region_idx = np.flatnonzero(region)
    if len(region_idx) == 0:
        raise ValueError("the facial region is empty: no GT face is inside the mask; check the mask and uvs")

    # Accuracy: prediction samples -> whole GT, kept where the closest GT point is on a region face
    # and not on the scan's open edge.
    p_pts, p_face, p_bary = sample_surface(pv, pf, n_samples, seed, stratified)
    d_acc, g_closest, g_face = scan.closest(p_pts)
    g_bary_all = barycentric(g_closest, gv[gf[g_face]])
    keep = region[g_face] & ~on_open_edge(gf, g_face, g_bary_all, edges=gt_open_edges or scan.open_edges)
    if not keep.any():
        raise ValueError("no prediction sample is closest to the facial region (prediction misses the face)")
    acc_mm = d_acc[keep] * mm_per_unit

    # Completeness: GT region samples -> whole prediction.
    try:
        g_pts, _, _ = scan.sample(n_samples, seed + 1, region, stratified)
    except ValueError as exc:
        raise ValueError("the facial region of the GT scan has zero area") from exc
    d_comp, _, _ = point_to_mesh(g_pts, pv, pf)
    comp_mm = d_comp * mm_per_unit

    # Normals at the accuracy samples: interpolated vertex normals on both sides, renormalised.
    n_pred, ok_p = _normalise(_interpolate(vertex_normals(pv, pf), pf, p_face[keep], p_bary[keep]))
    g_face_k = g_face[keep]
    g_bary = g_bary_all[keep]
    n_gt, ok_g = _normalise(_interpolate(scan.vertex_normals, gf, g_face_k, g_bary))
    ok = ok_p & ok_g
    cross = np.linalg.norm(np.cross(n_pred[ok], n_gt[ok]), axis=1)
    dot = np.einsum("ij,ij->i", n_pred[ok], n_gt[ok])
    angle = np.degrees(np.arctan2(cross, dot))  # exact near 0 deg, unlike arccos

    acc_mean = float(acc_mm.mean())
    comp_mean = float(comp_mm.mean())
    out = {
        "accuracy_mean_mm": acc_mean,
        "accuracy_median_mm": float(np.median(acc_mm)),
        "completeness_mean_mm": comp_mean,
        "chamfer_mm": 0.5 * (acc_mean + comp_mean),
    }
    for key, thr in THRESHOLDS_MM.items():
        out[key] = float(100.0 * np.mean(acc_mm <= thr))
    out["normal_error_deg"] = float(angle.mean()) if len(angle) else float("nan")
    return out


# ----------------------------------------------------------------------------- aggregation, output


PerFace = Mapping[str, Mapping[str, Mapping[str, float]]]  # {face_id: {stage: {metric: value}}}


def aggregate(per_face: PerFace) -> dict[str, dict[str, float]]:
    """Mean over faces, per stage and metric: ``{face_id: {stage: {metric: v}}} -> {stage: {metric: mean}}``.

    A face without a stage (or a stage without a metric) is skipped for that mean; NaN values are
    skipped too. Stages come out in pipeline order (base, if, reg, meso, then others by name).
    """
    sums: dict[str, dict[str, list[float]]] = {}
    for face_id, stages in per_face.items():
        if not isinstance(stages, Mapping):
            raise ValueError(
                f"metrics of face {face_id} must be a dict stage -> metrics, got {type(stages).__name__}"
            )
        for stage, metrics in stages.items():
            if not isinstance(metrics, Mapping):
                raise ValueError(
                    f"metrics of face {face_id}, stage {stage} must be a dict, got {type(metrics).__name__}"
                )
            for key, value in metrics.items():
                value = float(value)
                if math.isfinite(value):
                    sums.setdefault(stage, {}).setdefault(key, []).append(value)
    out: dict[str, dict[str, float]] = {}
    for stage in _ordered_stages(sums):
        keys = [k for k in METRIC_KEYS if k in sums[stage]] + sorted(set(sums[stage]) - set(METRIC_KEYS))
        out[stage] = {k: float(np.mean(sums[stage][k])) for k in keys}
    return out


def _ordered_stages(stages) -> list[str]:
    stages = list(stages)
    return [s for s in STAGE_ORDER if s in stages] + sorted(s for s in stages if s not in STAGE_ORDER)


def metrics_document(per_face: PerFace) -> dict:
    """The ``eval/metrics.json`` document: ``{"faces": per_face, "mean": aggregate(per_face)}``.

    Faces are sorted by id; values are plain Python floats (JSON-ready).
    """
    faces = {
        str(fid): {stage: {k: float(v) for k, v in m.items()} for stage, m in per_face[fid].items()}
        for fid in sorted(per_face)
    }
    return {"faces": faces, "mean": aggregate(faces)}


def write_metrics_json(path: str | os.PathLike, per_face: PerFace) -> dict:
    """Write :func:`metrics_document` of ``per_face`` to ``path`` atomically; returns the document."""
    doc = metrics_document(per_face)
    save_json(path, doc)
    return doc


def format_table(mean: Mapping[str, Mapping[str, float]], precision: int = 3) -> str:
    """Plain-text table of ``mean`` (``{stage: {metric: value}}``): stages as rows, metrics as columns.

    Rows follow base, if, reg, meso (others after, by name); columns follow :data:`METRIC_KEYS`
    (others after, by name). A missing value prints as ``-``.
    """
    stages = _ordered_stages(mean)
    present = set().union(*(mean[s].keys() for s in stages)) if stages else set()
    cols = [k for k in METRIC_KEYS if k in present] + sorted(present - set(METRIC_KEYS))
    header = ["stage"] + cols
    rows = [
        [stage] + [f"{mean[stage][k]:.{precision}f}" if k in mean[stage] else "-" for k in cols]
        for stage in stages
    ]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in [header] + rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
