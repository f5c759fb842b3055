"""The fixed correspondence between the MediaPipe template (468 landmarks, template UV) and the ICT topology.

``predefine_data/ict_template_correspondence.npz`` holds, for every template vertex i (= MediaPipe
landmark i), an ICT triangle ``triangle[i]`` (of :func:`mvfr.synthesis.ict.load_model`'s triangulated
faces, always in the face area) and barycentrics ``bary[i]`` (3, summing to 1). It is computed once
by ``python -m mvfr.synthesis.correspondence_build`` (:mod:`mvfr.synthesis.correspondence_build`) and shipped:

1. 10 random identities (seeds 4242-4251, never used for evaluation) are synthesised with the first
   three expressions (neutral, smile, mouth_stretch) exactly as the data is
   (:func:`mvfr.synthesis.capture.synthesize_capture`: 14 views on a random rig, lights, camera
   effects; no lens distortion), and the views within 45 deg of yaw are kept;
2. the project's landmark detector (MediaPipe FaceLandmarker, :mod:`mvfr.landmarks`) runs on every
   view and the project's robust triangulation (:mod:`mvfr.triangulation`) gives 468 points;
3. each point is snapped to the identity's ICT surface (closest point on the face area), expressed
   as (triangle, barycentrics), carried to the mean (neutral) head, averaged over the captures,
   and snapped again onto the mean head;
4. each landmark then moves over the surface (within 6 mm) to the point whose projections best fit
   every capture's detections in every view (Huber cost,
   :func:`mvfr.synthesis.correspondence_build.refine_on_surface`).

So landmark i is "where the detector puts landmark i on a well-lit ICT face", averaged over
identities, and then moves with the ICT surface through every identity and expression: on a scan it
lies exactly on the surface (:func:`landmarks_on_scan`).

The dense map from the template UV to the ICT face-area uv (:func:`mvfr.uv_rasterizer.template_to_ict_uv`)
is exact: the template is the base model, made of the ICT face area's own triangles.
"""

from __future__ import annotations

import functools

import numpy as np

from mvfr.synthesis import head, ict

CORRESPONDENCE_NPZ = ict.PREDEFINE / "ict_template_correspondence.npz"
N_LANDMARKS = 468
MAX_YAW_DEG = 45.0  # views used to build the correspondence


@functools.lru_cache(maxsize=1)
def load_correspondence() -> tuple[np.ndarray, np.ndarray]:
    """``(triangle [468] int64, bary [468, 3] float64)`` from the shipped file."""
    if not CORRESPONDENCE_NPZ.is_file():
        raise FileNotFoundError(f"{CORRESPONDENCE_NPZ} is missing; rebuild it with `python -m mvfr.synthesis.correspondence_build`")
    d = np.load(CORRESPONDENCE_NPZ)
    return d["triangle"].astype(np.int64), d["bary"].astype(np.float64)


def surface_points(vertices: np.ndarray, triangle: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """Points ``[N, 3]`` at barycentrics ``bary [N, 3]`` of ICT triangles ``triangle [N]`` of ``vertices [V, 3]``."""
    m = ict.load_model()
    return np.einsum("nk,nkc->nc", bary, vertices[m.faces[triangle]])


def face_area_mesh() -> tuple[np.ndarray, np.ndarray]:
    """The ICT face-area triangles ``[F_face, 3]`` and their ids in the model's triangle list."""
    m = ict.load_model()
    ids = np.flatnonzero(m.part_faces("face"))
    return m.faces[ids], ids


def snap_to_face(vertices: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closest points on the face area of ``vertices``: ``(triangle [N], bary [N, 3])`` (libigl)."""
    import igl

    faces, ids = face_area_mesh()
    V = np.ascontiguousarray(vertices, dtype=np.float64)
    _, fi, C = igl.point_mesh_squared_distance(np.ascontiguousarray(points, dtype=np.float64), V, faces)
    tri = V[faces[fi]]
    bary = _barycentric(C, tri)
    return ids[fi], bary


def _barycentric(p: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """:func:`mvfr.metrics.barycentric`, clipped into the triangle (closest points lie on it)."""
    from mvfr.metrics import barycentric

    out = np.clip(barycentric(p, tri), 0, 1)
    return out / out.sum(1, keepdims=True)


# ------------------------------------------------------------------------------------ on a scan
@functools.lru_cache(maxsize=2)
def _scan_landmark_faces(level: int) -> tuple[np.ndarray, np.ndarray]:
    """For each landmark: the fine skin face of the scan holding it and the barycentrics there.

    The fine faces of ICT triangle k are its 4**level Loop children; their uvs are the linear
    midpoint subdivision of k's uv triangle, so the child containing the landmark's uv (and the
    barycentrics in it) is found in the uv plane, the same for every head.
    """
    m = ict.load_model()
    tri, bary = load_correspondence()
    ps = head.part_subdivision(head.SKIN_PARTS, level)
    uv_l = np.einsum("nk,nkc->nc", bary, m.uv[m.faces_uv[tri]])
    order = np.argsort(ps.coarse_face, kind="stable")
    starts = np.searchsorted(ps.coarse_face[order], tri)
    n_child = 4**level
    out_f = np.zeros(len(tri), dtype=np.int64)
    out_b = np.zeros((len(tri), 3))
    for i in range(len(tri)):
        cand = order[starts[i] : starts[i] + n_child]
        t = ps.uvs[ps.face_uvs[cand]]  # [c, 3, 2]
        b = _barycentric_2d(np.repeat(uv_l[i][None], len(cand), 0), t)
        best = int(np.argmax(b.min(1)))
        out_f[i] = cand[best]
        bb = np.clip(b[best], 0, None)
        out_b[i] = bb / bb.sum()
    return out_f, out_b


def _barycentric_2d(p: np.ndarray, tri: np.ndarray) -> np.ndarray:
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    den = (b[:, 1] - c[:, 1]) * (a[:, 0] - c[:, 0]) + (c[:, 0] - b[:, 0]) * (a[:, 1] - c[:, 1])
    den = np.where(np.abs(den) < 1e-20, 1e-20, den)
    l1 = ((b[:, 1] - c[:, 1]) * (p[:, 0] - c[:, 0]) + (c[:, 0] - b[:, 0]) * (p[:, 1] - c[:, 1])) / den
    l2 = ((c[:, 1] - a[:, 1]) * (p[:, 0] - c[:, 0]) + (a[:, 0] - c[:, 0]) * (p[:, 1] - c[:, 1])) / den
    return np.stack([l1, l2, 1 - l1 - l2], 1)


def landmarks_on_scan(scan: head.ScanGeometry, level: int = head.SCAN_LEVEL) -> np.ndarray:
    """The 468 ground-truth landmarks ``[468, 3]`` on ``scan`` (exactly on its surface)."""
    f, b = _scan_landmark_faces(level)
    return np.einsum("nk,nkc->nc", b, scan.vertices[scan.faces[f]])


# ---------------------------------------------------------------------------- template UV -> ICT
def template_dpmap(h: np.ndarray, size: int) -> np.ndarray:
    """The face-tile height map ``h [S_h, S_h]`` (mm) resampled into the template UV ``[size, size]`` float32.

    ``h`` is first low-pass filtered to the template texel's footprint (so the map holds what a
    texel of that size can), then sampled bilinearly; texels outside the template are 0.
    """
    import cv2

    from mvfr.synthesis import meso

    from mvfr.uv_rasterizer import template_to_ict_uv

    uv, cov = template_to_ict_uv(size)
    ratio = h.shape[0] / size  # face-tile texels per template texel (the two tiles have similar mm per texel)
    hs = h
    if ratio > 1.0:
        hs = cv2.GaussianBlur(h.astype(np.float32), (0, 0), 0.45 * ratio)
    out = np.zeros((size, size), dtype=np.float32)
    out[cov] = meso.sample_at(hs, uv[cov])
    return out
