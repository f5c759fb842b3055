"""Geometry of a synthetic head from the ICT Face Model: the detailed scan and the render mesh.

A head is ``ict.ICTModel.head(identity_w, expression_w)`` (mm, head frame). Its *skin* (face area,
head and neck, mouth socket, eye sockets) is Loop-subdivided (:mod:`mvfr.subdivision`) and displaced
along the smooth normals by the mesoscopic height map ``h`` (mm, face uv tile; zero on the other tiles):

* the **scan** (ground truth, ``RAW/mesh``): skin at :data:`SCAN_LEVEL` (edges about 0.37 mm on the
  face) plus eyeballs, teeth, gums and tongue at one level, in the ICT topology (vertex ids of each
  part are its own; ``region`` marks the face area's vertices; no template uvs);
* the **render mesh**: skin at :data:`RENDER_LEVEL` with uv-split vertices (per-vertex tangents for
  the detail normal, see :mod:`.head_render`) and the same non-skin parts (the eyelash strips of the
  model are left out: drawn opaque they read as black bands; the lid margin's darkening stands for them).

Both displace with the same ``h`` sampled at their vertices, so the render is the scan filtered to
a coarser mesh; the shading normal restores the detail below the render mesh's triangles.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from mvfr.subdivision import subdivision
from mvfr.synthesis import ict

SKIN_PARTS = ("face", "head", "mouth_socket", "eye_socket_left", "eye_socket_right")
SOLID_PARTS = ("eyeball_left", "eyeball_right", "teeth", "gums_tongue")  # in the scan and the render
# The ICT eyeball has two layers: an outer shell with the corneal bulge (the first vertices of each
# eyeball part) and the inner eyeball whose front carries the iris (``ict.IRIS_VERTICES``). Only the
# inner one is used (rendered with sclera, iris and pupil, and in the scan), as if the cornea were clear.
# The eyelash parts are not rendered: opaque strips read as black bands, not lashes.
SCAN_LEVEL = 3
RENDER_LEVEL = 2
SOLID_LEVEL = 1
# The facial region of the metrics: the ICT *narrow* face area (its quads 0-6559: forehead to chin,
# cheek to cheek, eyelids and lips included; no ears, no neck, no inner mouth, no eyeballs), the part of
# the head a frontal face scan covers. (The full face area adds the ears and the front of the neck.)
REGION_QUADS = (0, 6559)
REGION_EXCLUDE_BELOW_CHIN_MM = 25.0  # the neck below the chin is not face
# The nostril interiors are not face either: no scanner sees them. They are the face-area triangles near the
# nose tip that no direction of a face scanner's cameras (yaw within +-NOSTRIL_YAW_DEG, pitch within
# NOSTRIL_PITCH_DEG) sees on the mean head (:func:`nostril_interior_triangles`).
NOSTRIL_RADIUS_MM = 30.0
NOSTRIL_YAW_DEG = 80.0
NOSTRIL_PITCH_DEG = (-25.0, 25.0)
NOSTRIL_MIN_VIEWS = 20  # of the 102 directions: under 2 cameras of a 10-view rig


def vertex_face_incidence(faces: np.ndarray, num_vertices: int):
    """Sparse ``[N, F]`` matrix with a 1 where vertex n is a corner of face f."""
    import scipy.sparse as sp

    F = len(faces)
    return sp.csr_matrix((np.ones(3 * F), (faces.ravel(), np.repeat(np.arange(F), 3))), shape=(num_vertices, F))


def fast_vertex_normals(vertices: np.ndarray, faces: np.ndarray, incidence=None) -> np.ndarray:
    """Area-weighted unit vertex normals ``[N, 3]``; ``incidence`` (:func:`vertex_face_incidence`) speeds up repeats."""
    v = np.asarray(vertices, dtype=np.float32)  # float32: twice as fast, and normals need no more
    e1 = v[faces[:, 1]] - v[faces[:, 0]]
    e2 = v[faces[:, 2]] - v[faces[:, 0]]
    fn = np.cross(e1, e2)
    A = incidence if incidence is not None else vertex_face_incidence(faces, len(vertices))
    out = np.asarray(A @ fn, dtype=np.float64)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-30)


@dataclasses.dataclass(frozen=True)
class PartSubdivision:
    """A group of parts, compacted and subdivided: fine vertices = ``S @ coarse[vertex_ids]``."""

    vertex_ids: np.ndarray  # [n] coarse (ICT) vertex ids of the group
    S: object  # sparse [N_fine, n] Loop operator
    M: object  # sparse [N_fine, n] linear operator (attributes)
    faces: np.ndarray  # [F_fine, 3] into the fine vertices
    face_uvs: np.ndarray  # [F_fine, 3] into uvs
    uvs: np.ndarray  # [T_fine, 2] in the model's tiles
    coarse_face: np.ndarray  # [F_fine] ICT triangle each fine face descends from

    @functools.cached_property
    def incidence(self):
        return vertex_face_incidence(self.faces, self.S.shape[0])

    @functools.cached_property
    def face_tile_uv(self) -> tuple[np.ndarray, np.ndarray]:
        """Per fine vertex: its face-tile uv ``[N, 2]`` and whether it has one ``[N] bool`` (u < 1 at some corner)."""
        n = self.S.shape[0]
        uv_c = self.uvs[self.face_uvs.ravel()]
        v_c = self.faces.ravel()
        on_face = uv_c[:, 0] < 1.0
        out = np.zeros((n, 2))
        has = np.zeros(n, dtype=bool)
        out[v_c[on_face]] = uv_c[on_face]
        has[v_c[on_face]] = True
        return out, has

    @functools.cached_property
    def vertex_uvs(self) -> np.ndarray:
        """One uv per fine vertex ``[N, 2]`` (at a uv seam, one of its uvs)."""
        out = np.zeros((self.S.shape[0], 2))
        out[self.faces.ravel()] = self.uvs[self.face_uvs.ravel()]
        return out


def part_face_selection(parts: tuple[str, ...]) -> np.ndarray:
    """ICT triangle ids of ``parts`` (eyeballs: the inner layer only, see :data:`SOLID_PARTS`)."""
    m = ict.load_model()
    sel = m.part_faces(*parts)
    for side in ("left", "right"):
        if f"eyeball_{side}" in parts:
            a, b = ict.PART_VERTICES[f"eyeball_{side}"]
            ia, _ = ict.IRIS_VERTICES[side]
            shell = ((m.faces >= a) & (m.faces < ia)).any(1)
            sel &= ~shell
    return np.flatnonzero(sel)


@functools.lru_cache(maxsize=8)
def part_subdivision(parts: tuple[str, ...], levels: int) -> PartSubdivision:
    m = ict.load_model()
    sel = part_face_selection(parts)
    faces = m.faces[sel]
    vids, inv = np.unique(faces, return_inverse=True)
    tids, tinv = np.unique(m.faces_uv[sel], return_inverse=True)
    sub = subdivision(inv.reshape(-1, 3), len(vids), levels, tinv.reshape(-1, 3), len(tids))
    uvs = np.asarray(sub.M_uv @ m.uv[tids])
    coarse_face = sel[np.arange(len(sub.faces)) // 4**levels]
    return PartSubdivision(vids, sub.S, sub.M, sub.faces, sub.face_uvs, uvs, coarse_face)


@functools.lru_cache(maxsize=1)
def nostril_interior_triangles() -> np.ndarray:
    """ICT triangle ids ``[K]`` of the face area inside the nostrils (see :data:`NOSTRIL_RADIUS_MM`).

    On the mean head, a face-area triangle within :data:`NOSTRIL_RADIUS_MM` of the nose tip (the face
    area's most forward vertex) is inside a nostril when, from its centroid, fewer than
    :data:`NOSTRIL_MIN_VIEWS` of 17 x 6 directions (yaw within +-:data:`NOSTRIL_YAW_DEG`, pitch within
    :data:`NOSTRIL_PITCH_DEG`: the synthetic rigs' range) both face its front side and reach the open air
    past the skin, eyes and teeth (embree rays): fewer than two cameras of a typical ten-view rig would see
    it. The set is then smoothed (notches closed) and the scraps of skin it encloses added. The same triangles for
    every head: the set belongs to the topology, like the rest of the region.
    """
    from mvfr.mesh_regions import close_notches, fill_enclosed
    from mvfr.visibility import RayCaster

    m = ict.load_model()
    neutral = m.head()
    face_ids = np.flatnonzero(m.part_faces("face"))
    face_vertices = np.unique(m.faces[face_ids])
    tip = neutral[face_vertices[np.argmax(neutral[face_vertices, 2])]]
    tri = neutral[m.faces[face_ids]]
    near = np.linalg.norm(tri.mean(1) - tip, axis=1) < NOSTRIL_RADIUS_MM
    cand, tri = face_ids[near], tri[near]
    c = tri.mean(1)
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-30)
    yaw = np.radians(np.linspace(-NOSTRIL_YAW_DEG, NOSTRIL_YAW_DEG, 17))
    pitch = np.radians(np.linspace(*NOSTRIL_PITCH_DEG, 6))
    yy, pp = np.meshgrid(yaw, pitch, indexing="ij")
    dirs = np.stack([np.sin(yy) * np.cos(pp), np.sin(pp), np.cos(yy) * np.cos(pp)], -1).reshape(-1, 3)
    occluders = m.faces[np.concatenate([part_face_selection(SKIN_PARTS), part_face_selection(SOLID_PARTS)])]
    caster = RayCaster(neutral, occluders)
    facing = n @ dirs.T > 0.05  # [K, D]
    k, d = np.nonzero(facing)
    origins = c[k] + 0.05 * n[k]
    free = ~caster.any_hit(origins, dirs[d])
    seen = np.bincount(k[free], minlength=len(cand))
    face = m.part_faces("face")
    inside = np.zeros(len(m.faces), dtype=bool)
    inside[cand[seen < NOSTRIL_MIN_VIEWS]] = True
    inside = fill_enclosed(close_notches(inside, m.faces, face), m.faces, face)
    return np.flatnonzero(inside)


SHAPE_BUMPS = 24
SHAPE_SIGMA_MM = (15.0, 40.0)


def shape_field(neutral: np.ndarray, rng: np.random.Generator, rms_mm: float) -> np.ndarray:
    """A smooth random displacement ``[V, 3]`` mm of a head, so that synthetic heads leave the ICT model's span.

    ``neutral [V, 3]`` mm: the identity without expression (the field belongs to the person: evaluated
    there, the same vertex offsets are added under every expression). :data:`SHAPE_BUMPS` Gaussian bumps
    centred on random face-area vertices, each of width (std) drawn in :data:`SHAPE_SIGMA_MM` and a normal
    amplitude ``N(0, 1)`` along its centre's normal, summed over the skin; the sum is scaled to an RMS of
    ``rms_mm`` over the face area (0: no field). The eyeballs, teeth, gums and tongue move rigidly by
    their part's mean offset, so the eyes stay round inside the lids.
    """
    out = np.zeros_like(neutral, dtype=np.float64)
    if rms_mm <= 0:
        return out
    m = ict.load_model()
    skin = part_face_selection(SKIN_PARTS)
    face = np.unique(m.faces[m.part_faces("face")])
    normals = fast_vertex_normals(neutral, m.faces[skin])
    centres = rng.choice(face, SHAPE_BUMPS, replace=False)
    sigma = rng.uniform(*SHAPE_SIGMA_MM, SHAPE_BUMPS)
    amp = rng.normal(0.0, 1.0, SHAPE_BUMPS)
    d2 = ((neutral[:, None, :] - neutral[centres][None]) ** 2).sum(-1)  # [V, K]
    g = np.exp(-0.5 * d2 / sigma**2) * amp
    out = g @ normals[centres]
    out *= rms_mm / max(float(np.sqrt((out[face] ** 2).sum(1).mean())), 1e-12)
    for part in SOLID_PARTS:
        a, b = ict.PART_VERTICES[part]
        out[a : b + 1] = out[a : b + 1].mean(0)
    return out


def chin_y(coarse: np.ndarray) -> float:
    """y (mm) of the chin (the model's iBUG-68 landmark 8) of coarse ICT vertices ``[V, 3]``."""
    return float(coarse[ict.load_model().landmarks68[8], 1])


@dataclasses.dataclass
class ScanGeometry:
    vertices: np.ndarray  # [N, 3] mm, head frame
    faces: np.ndarray  # [F, 3]
    uvs: np.ndarray  # [N, 2] ICT uvs (one per vertex; at uv seams one of them)
    region: np.ndarray  # [N] bool, facial region (narrow face area, eyelids and lips included; see REGION_QUADS)
    smooth_normals: np.ndarray  # [N, 3] normals of the surface before the detail


def _displace(ps: PartSubdivision, coarse: np.ndarray, height_fn) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fine positions (displaced), smooth normals, face-tile uv and its flag, for one subdivided group."""
    P = np.asarray(ps.S @ coarse[ps.vertex_ids])
    n = fast_vertex_normals(P, ps.faces, ps.incidence)
    fuv, has = ps.face_tile_uv
    if height_fn is not None and has.any():
        h = np.zeros(len(P))
        h[has] = height_fn(fuv[has])
        P = P + n * h[:, None]
    return P, n, fuv, has


def build_scan(coarse: np.ndarray, height_fn=None, chin_y: float | None = None, level: int = SCAN_LEVEL) -> ScanGeometry:
    """The ground-truth scan of a head with coarse ICT vertices ``coarse [V, 3]`` mm.

    ``height_fn(uv [K, 2]) -> [K]`` mm gives the detail at face-tile uvs (None: no detail).
    ``chin_y``: y (mm) of the chin; face-area vertices more than
    :data:`REGION_EXCLUDE_BELOW_CHIN_MM` below it (the neck) are left out of the region.
    ``level``: Loop levels of the skin (3: edges of about 0.37 mm on the face; 2 for quick tests).
    """
    m = ict.load_model()
    skin = part_subdivision(SKIN_PARTS, level)
    P, n, _, _ = _displace(skin, coarse, height_fn)
    verts, faces, uvs, region, normals = [P], [skin.faces], [], [], [n]
    uvs.append(skin.vertex_uvs)
    on_face = np.zeros(len(P), dtype=bool)
    quad = m.face_quad[skin.coarse_face]
    in_region = (quad >= REGION_QUADS[0]) & (quad <= REGION_QUADS[1])
    in_region &= ~np.isin(skin.coarse_face, nostril_interior_triangles())
    on_face[skin.faces[in_region].ravel()] = True
    if chin_y is not None:
        on_face &= P[:, 1] > chin_y - REGION_EXCLUDE_BELOW_CHIN_MM
    region.append(on_face)
    offset = len(P)
    solid = part_subdivision(SOLID_PARTS, SOLID_LEVEL)
    Q = np.asarray(solid.S @ coarse[solid.vertex_ids])
    verts.append(Q)
    faces.append(solid.faces + offset)
    uvs.append(solid.vertex_uvs)
    region.append(np.zeros(len(Q), dtype=bool))
    normals.append(fast_vertex_normals(Q, solid.faces, solid.incidence))
    return ScanGeometry(np.concatenate(verts), np.concatenate(faces), np.concatenate(uvs), np.concatenate(region),
                        np.concatenate(normals))


@functools.lru_cache(maxsize=4)
def render_split(parts: tuple[str, ...], levels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uv-split render topology of a subdivided group: render vertex -> (fine vertex, fine uv), faces."""
    ps = part_subdivision(parts, levels)
    key = ps.faces.ravel().astype(np.int64) * (len(ps.uvs) + 1) + ps.face_uvs.ravel()
    uniq, inv = np.unique(key, return_inverse=True)
    return uniq // (len(ps.uvs) + 1), uniq % (len(ps.uvs) + 1), inv.reshape(-1, 3)


def uv_tangents(P: np.ndarray, uv: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-vertex ``dP/du``, ``dP/dv`` ``[N, 3]`` (mm per uv unit), area-weighted over the faces."""
    p0, p1, p2 = P[faces[:, 0]], P[faces[:, 1]], P[faces[:, 2]]
    t0, t1, t2 = uv[faces[:, 0]], uv[faces[:, 1]], uv[faces[:, 2]]
    e1, e2 = p1 - p0, p2 - p0
    d1, d2 = t1 - t0, t2 - t0
    det = d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]
    ok = np.abs(det) > 1e-14
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    Tu = (e1 * d2[:, 1:2] - e2 * d1[:, 1:2]) * inv[:, None]
    Tv = (e2 * d1[:, 0:1] - e1 * d2[:, 0:1]) * inv[:, None]
    area = 0.5 * np.linalg.norm(np.cross(e1, e2), axis=1)
    out_u = np.zeros((len(P), 3))
    out_v = np.zeros((len(P), 3))
    w = area * ok
    for j in range(3):
        out_u[:, j] = sum(np.bincount(faces[:, k], weights=Tu[:, j] * w, minlength=len(P)) for k in range(3))
        out_v[:, j] = sum(np.bincount(faces[:, k], weights=Tv[:, j] * w, minlength=len(P)) for k in range(3))
    wsum = sum(np.bincount(faces[:, k], weights=w, minlength=len(P)) for k in range(3))
    return out_u / np.maximum(wsum, 1e-30)[:, None], out_v / np.maximum(wsum, 1e-30)[:, None]


@dataclasses.dataclass
class RenderGeometry:
    vertices: np.ndarray
    faces: np.ndarray
    normals: np.ndarray
    tangent_u: np.ndarray
    tangent_v: np.ndarray
    uvs: np.ndarray
    part: np.ndarray  # [N] ICT part index of each render vertex
    attr_op: list  # per group: (slice of render vertices, sparse M of the group, coarse vertex ids, fine ids)


def build_render(coarse: np.ndarray, height_fn=None) -> RenderGeometry:
    """The render mesh (see the module docstring) of coarse ICT vertices ``coarse [V, 3]`` mm."""
    m = ict.load_model()
    out_v, out_f, out_n, out_tu, out_tv, out_uv, out_part, ops = [], [], [], [], [], [], [], []
    offset = 0
    for parts, level, detail in ((SKIN_PARTS, RENDER_LEVEL, True), (SOLID_PARTS, SOLID_LEVEL, False)):
        ps = part_subdivision(parts, level)
        P, n, _, _ = _displace(ps, coarse, height_fn if detail else None)
        rv, rt, rf = render_split(parts, level)
        uv = ps.uvs[rt]
        V = P[rv]
        tu, tv = uv_tangents(V, uv, rf) if detail else (np.zeros((len(rv), 3)), np.zeros((len(rv), 3)))
        # the part of each render vertex, from any face that uses it
        fpart = m.face_part[ps.coarse_face]
        vpart = np.zeros(len(rv), dtype=np.int64)
        vpart[rf.ravel()] = np.repeat(fpart, 3)
        out_v.append(V)
        out_f.append(rf + offset)
        out_n.append(n[rv])  # smooth: the detail enters through the height gradient (shader)
        out_tu.append(tu)
        out_tv.append(tv)
        out_uv.append(uv)
        out_part.append(vpart)
        ops.append((slice(offset, offset + len(rv)), ps.M, ps.vertex_ids, rv))
        offset += len(rv)
    return RenderGeometry(np.concatenate(out_v), np.concatenate(out_f), np.concatenate(out_n), np.concatenate(out_tu),
                          np.concatenate(out_tv), np.concatenate(out_uv), np.concatenate(out_part), ops)


def spread_attribute(geom: RenderGeometry, per_coarse: np.ndarray) -> np.ndarray:
    """A per-coarse-vertex attribute ``[V, C]`` interpolated onto the render vertices ``[N, C]``."""
    a = np.asarray(per_coarse, dtype=np.float64)
    a2 = a[:, None] if a.ndim == 1 else a
    out = np.zeros((len(geom.vertices), a2.shape[1]))
    for sl, M, vids, rv in geom.attr_op:
        out[sl] = np.asarray(M @ a2[vids])[rv]
    return out[:, 0] if a.ndim == 1 else out


def ambient_occlusion(coarse: np.ndarray, rays: int = 24, max_dist_mm: float = 40.0, seed: int = 0) -> np.ndarray:
    """Per coarse vertex ``[V]`` in [0, 1]: the unoccluded fraction of a cosine-weighted hemisphere
    (embree rays against the skin, eyes and teeth; a hit farther than ``max_dist_mm`` counts half)."""
    import trimesh
    from trimesh.ray.ray_pyembree import RayMeshIntersector

    m = ict.load_model()
    faces = m.faces[np.concatenate([part_face_selection(SKIN_PARTS), part_face_selection(SOLID_PARTS)])]
    tm = trimesh.Trimesh(coarse, faces, process=False)
    caster = RayMeshIntersector(tm)
    n = fast_vertex_normals(coarse, faces)
    used = np.zeros(len(coarse), dtype=bool)
    used[faces.ravel()] = True
    idx = np.flatnonzero(used)
    rng = np.random.default_rng(seed)
    # cosine-weighted directions in a local frame, the same set for every vertex (rotated per vertex)
    u1, u2 = rng.uniform(size=rays), rng.uniform(size=rays)
    r, phi = np.sqrt(u1), 2 * np.pi * u2
    local = np.stack([r * np.cos(phi), r * np.sin(phi), np.sqrt(1 - u1)], 1)
    nn = n[idx]
    a = np.where(np.abs(nn[:, :1]) < 0.9, np.array([[1.0, 0, 0]]), np.array([[0, 1.0, 0]]))
    t1 = np.cross(nn, a)
    t1 /= np.linalg.norm(t1, axis=1, keepdims=True)
    t2 = np.cross(nn, t1)
    dirs = (local[None, :, 0:1] * t1[:, None] + local[None, :, 1:2] * t2[:, None] + local[None, :, 2:3] * nn[:, None]).reshape(-1, 3)
    origins = np.repeat(coarse[idx] + nn * 0.2, rays, axis=0)
    loc, ray_idx, _ = caster.intersects_location(origins, dirs, multiple_hits=False)
    occl = np.zeros(len(origins))
    d = np.linalg.norm(loc - origins[ray_idx], axis=1)
    occl[ray_idx] = np.where(d < max_dist_mm, 1.0, 0.5) * np.clip(1.2 - d / (2 * max_dist_mm), 0.3, 1.0)
    ao = np.ones(len(coarse))
    ao[idx] = 1.0 - occl.reshape(len(idx), rays).mean(1)
    return ao
