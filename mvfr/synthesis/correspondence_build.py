"""Builds ``predefine_data/ict_template_correspondence.npz``: the recipe in :mod:`mvfr.synthesis.correspondence`.

    python -m mvfr.synthesis.correspondence_build [--num_identities 10] [--seed 4242] [--out FILE]

Kept apart from the correspondence itself, which the synthesiser imports: building it synthesises captures.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from mvfr.synthesis import ict
from mvfr.synthesis.correspondence import (
    CORRESPONDENCE_NPZ,
    MAX_YAW_DEG,
    N_LANDMARKS,
    face_area_mesh,
    snap_to_face,
    surface_points,
)


# ------------------------------------------------------------------------------------ building
def build(num_identities: int = 10, seed: int = 4242, long_side: int = 1296, verbose: bool = True,
          expression_ids: tuple[int, ...] = (1, 2, 3)) -> tuple[np.ndarray, np.ndarray, dict]:
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
    observations = []
    for k in range(num_identities * len(expression_ids)):
        # captures made exactly as the data is (lights, camera effects, rigs), no distortion; a surface
        # point (triangle, barycentrics) means the same under every expression, so expressions count too
        eid = expression_ids[k % len(expression_ids)]
        opt = capture.SynthOptions(num_views=14, image_long_side=long_side, num_invalid_views=0, distorted_fraction=0.0,
                                   dpmap_size=16, seed=seed + k // len(expression_ids))
        cap = capture.synthesize_capture(1, eid, opt)
        _, _, coarse = capture.face_head(1, eid, opt)
        cams, pix = [], []
        views = [v for v in cap.images if abs(cap.yaw_pitch[v][0]) <= MAX_YAW_DEG]
        for v in views:
            stats["views"] += 1
            lm, _ = det.detect(cap.images[v])
            if lm is None:
                continue
            stats["detected"] += 1
            cams.append(cap.cameras_mm[v])
            pix.append(lm)
        if len(cams) < 3:
            continue
        K = np.stack([c.K for c in cams])
        Rt = np.stack([c.Rt for c in cams])
        P = np.stack(pix)
        tr = triangulate_points(P, np.ones(P.shape[:2], dtype=bool), K, Rt)
        observations.append((coarse, K, Rt, P))
        ok = tr.ok
        t_i, b_i = snap_to_face(coarse, tr.points[ok])
        acc[ok] += surface_points(neutral, t_i, b_i)
        count[ok] += 1
        err = tr.inlier_errors()
        stats["rms_px"].append(float(np.sqrt(np.mean(err**2))))
        if verbose:
            print(f"capture {k} (expression {eid}): {len(cams)}/{len(views)} views detected, {ok.sum()} points, rms {stats['rms_px'][-1]:.2f} px",
                  file=sys.stderr)
    if (count == 0).any():
        raise RuntimeError(f"{int((count == 0).sum())} landmarks were never triangulated; use more identities or views")
    mean = acc / count[:, None]
    tri, bary = snap_to_face(neutral, mean)
    before = reprojection_cost(tri, bary, observations)
    tri, bary = refine_on_surface(tri, bary, observations)
    after = reprojection_cost(tri, bary, observations)
    stats["median_px_snapped"], stats["median_px_refined"] = float(np.median(before)), float(np.median(after))
    if verbose:
        print(f"median reprojection over identities and views: snapped {stats['median_px_snapped']:.2f} px, "
              f"refined on the surface {stats['median_px_refined']:.2f} px", file=sys.stderr)
    return tri, bary, stats


def _bary_grid(n: int) -> np.ndarray:
    """Barycentric points ``[(n+1)(n+2)/2, 3]`` on a regular grid of a triangle."""
    pts = [(i / n, j / n, 1 - (i + j) / n) for i in range(n + 1) for j in range(n + 1 - i)]
    return np.array(pts)


def _projection_errors(points_k: np.ndarray, K: np.ndarray, Rt: np.ndarray, pix: np.ndarray) -> np.ndarray:
    """Pixel distances ``[v, C]`` between the projections of candidate points ``[C, 3]`` and detections ``[v, 2]``."""
    cam = np.einsum("vij,cj->vci", Rt[:, :, :3], points_k) + Rt[:, None, :, 3]
    uv = np.einsum("vij,vcj->vci", K, cam)
    proj = uv[..., :2] / np.maximum(uv[..., 2:3], 1e-9)
    return np.linalg.norm(proj - pix[:, None, :], axis=-1)


def _huber(e: np.ndarray, delta: float = 3.0) -> np.ndarray:
    return np.where(e < delta, 0.5 * e**2, delta * (e - 0.5 * delta))


def reprojection_cost(tri: np.ndarray, bary: np.ndarray, observations) -> np.ndarray:
    """Per detection (identity, view, landmark): the pixel distance of the correspondence's projection."""
    out = []
    for coarse, K, Rt, pix in observations:
        P = surface_points(coarse, tri, bary)
        cam = np.einsum("vij,nj->vni", Rt[:, :, :3], P) + Rt[:, None, :, 3]
        uv = np.einsum("vij,vnj->vni", K, cam)
        out.append(np.linalg.norm(uv[..., :2] / uv[..., 2:3] - pix, axis=-1).ravel())
    return np.concatenate(out)


def refine_on_surface(tri: np.ndarray, bary: np.ndarray, observations, radius_mm: float = 6.0, grid: int = 6):
    """Move each landmark over the face area (within ``radius_mm`` of its snapped point on the mean head)
    to the surface point whose projections best fit the detections of every identity and view
    (Huber cost, 3 px): the triangulated point is off the surface where the detector's views disagree,
    and its closest surface point is not the surface point that projects where the detector looks."""
    m = ict.load_model()
    neutral = m.head()
    faces, ids = face_area_mesh()
    cent = neutral[faces].mean(1)
    g = _bary_grid(grid)
    new_tri, new_bary = tri.copy(), bary.copy()
    for i in range(len(tri)):
        anchor = surface_points(neutral, tri[i : i + 1], bary[i : i + 1])[0]
        cand = ids[np.linalg.norm(cent - anchor, axis=1) < radius_mm]
        if len(cand) == 0:
            continue
        ct = np.repeat(cand, len(g))
        cb = np.tile(g, (len(cand), 1))
        cost = np.zeros(len(ct))
        for coarse, K, Rt, pix in observations:
            P = surface_points(coarse, ct, cb)
            cost += _huber(_projection_errors(P, K, Rt, pix[:, i])).sum(0)
        # keep the snapped point unless a candidate is better
        cur = sum(_huber(_projection_errors(surface_points(c, tri[i : i + 1], bary[i : i + 1]), K, Rt, pix[:, i])).sum()
                  for c, K, Rt, pix in observations)
        j = int(np.argmin(cost))
        if cost[j] < cur:
            new_tri[i], new_bary[i] = ct[j], cb[j]
    return new_tri, new_bary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Rebuild predefine_data/ict_template_correspondence.npz (see the module docstring).")
    p.add_argument("--num_identities", type=int, default=10)
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
