"""The fixed correspondence between the MediaPipe template (468 landmarks, template UV) and the ICT topology.

``predefine_data/ict_template_correspondence.npz`` holds, for every template vertex i (= MediaPipe
landmark i), an ICT triangle ``triangle[i]`` (of :func:`mvfr.synthesis.ict.load_model`'s triangulated
faces, always in the face area) and barycentrics ``bary[i]`` (3, summing to 1). It is computed once
by ``python -m mvfr.synthesis.correspondence`` and shipped:

1. several random identities (neutral expression) are synthesised with the v2 appearance and seen
   by 18 cameras (yaw -40..40 deg in 10 deg steps, two pitches each between -15 and 13 deg, 1296 px,
   soft light, no distortion);
2. the project's landmark detector (MediaPipe FaceLandmarker, :mod:`mvfr.landmarks`) runs on every
   view and the project's robust triangulation (:mod:`mvfr.triangulation`) gives 468 points;
3. each point is snapped to the identity's ICT surface (closest point on the face area), expressed
   as (triangle, barycentrics), carried to the mean (neutral) head, averaged over the identities,
   and snapped again onto the mean head.

So landmark i is "where the detector puts landmark i on a well-lit ICT face", averaged over
identities, and then moves with the ICT surface through every identity and expression: on a scan it
lies exactly on the surface (:func:`landmarks_on_scan`).

The dense map from the template UV to the ICT face-area uv (:func:`template_to_ict_uv`) follows
from the same 468 points: a template texel's 3D point (barycentric in its template triangle, whose
corners sit at the corresponding points on the mean ICT head) is snapped to the mean head's face area.
"""

from __future__ import annotations

import argparse
import functools
import sys

import numpy as np

from mvfr.synthesis import head, ict

CORRESPONDENCE_NPZ = ict.PREDEFINE / "ict_template_correspondence.npz"
N_LANDMARKS = 468


@functools.lru_cache(maxsize=1)
def load_correspondence() -> tuple[np.ndarray, np.ndarray]:
    """``(triangle [468] int64, bary [468, 3] float64)`` from the shipped file."""
    if not CORRESPONDENCE_NPZ.is_file():
        raise FileNotFoundError(f"{CORRESPONDENCE_NPZ} is missing; rebuild it with `python -m mvfr.synthesis.correspondence`")
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
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    v0, v1, v2 = b - a, c - a, p - a
    d00 = (v0 * v0).sum(1)
    d01 = (v0 * v1).sum(1)
    d11 = (v1 * v1).sum(1)
    d20 = (v2 * v0).sum(1)
    d21 = (v2 * v1).sum(1)
    den = np.maximum(d00 * d11 - d01 * d01, 1e-30)
    v = (d11 * d20 - d01 * d21) / den
    w = (d00 * d21 - d01 * d20) / den
    out = np.stack([1 - v - w, v, w], 1)
    out = np.clip(out, 0, 1)
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
@functools.lru_cache(maxsize=4)
def template_to_ict_uv(size: int) -> tuple[np.ndarray, np.ndarray]:
    """For every texel of an S x S template-UV map: its ICT face-tile uv ``[S, S, 2]`` and ``covered [S, S]``."""
    from mvfr.template import load_template
    from mvfr.uv_rasterizer import build_uv_table

    m = ict.load_model()
    tmpl = load_template()
    table = build_uv_table(tmpl.uvs, tmpl.face_uvs, size)
    tri, bary = load_correspondence()
    neutral = m.head()
    anchors = surface_points(neutral, tri, bary)  # template vertex i on the mean head
    cov = table.covered
    fidx = table.face_index[cov]
    pts = np.einsum("nk,nkc->nc", table.bary[cov], anchors[tmpl.faces[fidx]])
    t2, b2 = snap_to_face(neutral, pts)
    uv = np.einsum("nk,nkc->nc", b2, m.uv[m.faces_uv[t2]])
    out = np.zeros((size, size, 2))
    out[cov] = uv
    return out, cov.copy()


def template_dpmap(h: np.ndarray, size: int) -> np.ndarray:
    """The face-tile height map ``h [S_h, S_h]`` (mm) resampled into the template UV ``[size, size]`` float32.

    ``h`` is first low-pass filtered to the template texel's footprint (so the map holds what a
    texel of that size can), then sampled bilinearly; texels outside the template are 0.
    """
    import cv2

    from mvfr.synthesis import meso

    uv, cov = template_to_ict_uv(size)
    ratio = h.shape[0] / size  # face-tile texels per template texel (the two tiles have similar mm per texel)
    hs = h
    if ratio > 1.0:
        hs = cv2.GaussianBlur(h.astype(np.float32), (0, 0), 0.45 * ratio)
    out = np.zeros((size, size), dtype=np.float32)
    out[cov] = meso.sample_at(hs, uv[cov])
    return out


# ------------------------------------------------------------------------------------ building
def build(num_identities: int = 8, seed: int = 4242, long_side: int = 1296, verbose: bool = True) -> tuple[np.ndarray, np.ndarray, dict]:
    """Compute the correspondence (see the module docstring); returns ``(triangle, bary, stats)``."""
    from mvfr.landmarks import FaceLandmarkDetector
    from mvfr.synthesis import capture
    from mvfr.triangulation import triangulate_points

    m = ict.load_model()
    neutral = m.head()
    det = FaceLandmarkDetector()
    acc = np.zeros((N_LANDMARKS, 3))
    count = np.zeros(N_LANDMARKS)
    stats = {"views": 0, "detected": 0, "rms_px": []}
    yaws = [y for y in range(-40, 41, 10) for _ in (0, 1)]
    pitches = [(-12, 10)[k % 2] + (3 if (k // 2) % 2 else -3) for k in range(len(yaws))]
    for k in range(num_identities):
        opt = capture.SynthOptions(num_views=1, image_long_side=long_side, num_invalid_views=0, distorted_fraction=0.0,
                                   dpmap_size=16, seed=seed + k, layout="ring")
        person = capture._person(opt.seed, 1, opt.albedo_size, 1.0)
        coarse = m.head(person.identity_weights)
        cams, pix = [], []
        imgs = _render_neutral(person, coarse, opt, yaws, pitches, long_side, np.random.default_rng(seed + k))
        for cam, img in imgs:
            stats["views"] += 1
            lm, _ = det.detect(img)
            if lm is None:
                continue
            stats["detected"] += 1
            cams.append(cam)
            pix.append(lm)
        if len(cams) < 3:
            continue
        K = np.stack([c.K for c in cams])
        Rt = np.stack([c.Rt for c in cams])
        P = np.stack(pix)
        tr = triangulate_points(P, np.ones(P.shape[:2], dtype=bool), K, Rt)
        ok = tr.ok
        t_i, b_i = snap_to_face(coarse, tr.points[ok])
        acc[ok] += surface_points(neutral, t_i, b_i)
        count[ok] += 1
        err = tr.inlier_errors()
        stats["rms_px"].append(float(np.sqrt(np.mean(err**2))))
        if verbose:
            print(f"identity {k}: {len(cams)}/{len(imgs)} views detected, {ok.sum()} points, rms {stats['rms_px'][-1]:.2f} px",
                  file=sys.stderr)
    if (count == 0).any():
        raise RuntimeError(f"{int((count == 0).sum())} landmarks were never triangulated; use more identities or views")
    mean = acc / count[:, None]
    tri, bary = snap_to_face(neutral, mean)
    return tri, bary, stats


def _render_neutral(person, coarse, opt, yaws, pitches, long_side, rng):
    """Clean frontal-ish renders (camera, RGB uint8) of one neutral head."""
    from mvfr.camera import Camera
    from mvfr.synthesis import capture, meso, rig
    from mvfr.synthesis.head_render import HeadRenderer, HeadTextures

    m = ict.load_model()
    h = meso.displacement_map(person.layout, m, np.zeros(len(m.expression_names)), opt.albedo_size, rng)
    geom = head.build_render(coarse, lambda uv: meso.sample_at(h, uv))
    tex = person.textures
    r = HeadRenderer()
    out = []
    try:
        r.set_mesh(capture._render_mesh(geom, person, coarse))
        r.set_textures(HeadTextures(tex["face_albedo"], tex["face_spec"], capture.height_gradient(h), tex["head_albedo"],
                                    tex["head_spec"]))
        from mvfr.synthesis.head_render import HeadLighting

        light = HeadLighting(directions=np.array([[0.3, 0.4, 1.0], [-0.5, 0.2, 0.8], [0.0, -0.3, 1.0]]),
                             colors=np.array([[0.6, 0.6, 0.6], [0.35, 0.35, 0.35], [0.15, 0.15, 0.15]]),
                             sky=(0.25, 0.25, 0.25), ground=(0.1, 0.1, 0.1), wrap=0.4, spec_gain=0.6)
        W, H = round(long_side * 2 / 3), long_side
        for yaw, pitch in zip(yaws, pitches):
            ya, pa = np.deg2rad(yaw), np.deg2rad(pitch)
            dist = 800.0
            d = np.array([np.sin(ya) * np.cos(pa), np.sin(pa), np.cos(ya) * np.cos(pa)])
            Rt = rig.look_at(rig.FACE_TARGET_MM + dist * d, rig.FACE_TARGET_MM)
            f = H * dist / 300.0
            K = np.array([[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1.0]])
            rgb, alpha = r.render(K, Rt, W, H, light)
            img = rgb + 0.2 * (1 - alpha[..., None])
            disp = np.where(img < 0.0031308, 12.92 * img, 1.055 * np.power(np.clip(img, 0, None), 1 / 2.4) - 0.055)
            out.append((Camera(K, Rt, W, H), np.clip(disp * 255 + 0.5, 0, 255).astype(np.uint8)))
    finally:
        r.release()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Rebuild predefine_data/ict_template_correspondence.npz (see the module docstring).")
    p.add_argument("--num_identities", type=int, default=8)
    p.add_argument("--seed", type=int, default=4242)
    p.add_argument("--out", type=str, default=str(CORRESPONDENCE_NPZ))
    a = p.parse_args(argv)
    tri, bary, stats = build(a.num_identities, a.seed)
    np.savez_compressed(a.out, triangle=tri.astype(np.int32), bary=bary.astype(np.float64))
    print(f"wrote {a.out}: {len(tri)} landmarks; {stats['detected']}/{stats['views']} views detected; "
          f"triangulation rms {np.mean(stats['rms_px']):.2f} px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
