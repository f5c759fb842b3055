"""Robust multi-view triangulation of 2D face landmarks, landmark visibility, and the landmark file.

Pipeline for one face (all pure functions; :mod:`mvfr.fitting` chains them with the template fit):

1. :func:`dlt_triangulate` -- linear (DLT) triangulation in normalised image coordinates, batched
   over points, with per-(view, point) weights (weight 0 = view not used).
2. :func:`refine_points` -- Gauss-Newton on the pixel reprojection error with Huber IRLS weights.
3. :func:`triangulate_points` -- RANSAC over view pairs (every pair is a hypothesis; MSAC score),
   then Huber refinement on the inliers, then outlier rejection; a point needs >= ``min_views``
   inlier views or it is reported as failed (NaN).
4. :func:`landmark_visibility` -- which views see each landmark of a fitted surface (normal facing
   the camera and not occluded, embree ray casting).

Units: points in the capture's world units, pixels of the processed images. Cameras follow
DESIGN §3 (``x_pix = K (R X + t)``).

The landmark file ``landmarks/PPP_EE.json`` (:func:`landmark_record`, :func:`save_landmarks`,
:func:`load_landmarks`) holds, per view, the 2D landmarks and the detector score, and per landmark
the triangulated 3D point, the views used, the views rejected as outliers and the reprojection
error in every view that detected it.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
from typing import Any, Sequence

import numpy as np

from mvfr.atomic_io import save_json
from mvfr.camera import camera_center, project_points
from mvfr.visibility import RayCaster, facing, occluded

log = logging.getLogger(__name__)

LANDMARK_FORMAT = "mvfr-landmarks-1"


@dataclasses.dataclass
class Triangulation:
    """Result of :func:`triangulate_points` for N points seen by V views.

    points [N, 3] float64 world units (NaN where ``ok`` is False);
    candidates [V, N] bool: views offered for the point (detected and, when known, visible);
    inliers [V, N] bool: views used in the final estimate;
    reproj_error [V, N] float64 pixels between each detection and the projected point (NaN where
    the view has no detection or the point failed; inf when the point is behind the camera);
    ok [N] bool: the point has >= min_views inliers; confidence [N] in [0, 1] (0 where not ok);
    information [N, 3, 3] (pixels^2 / units^2): sum over inlier views of J^T J, the inverse covariance
    of the point for 1 px detection noise (large across the viewing rays, small along them).
    """

    points: np.ndarray
    candidates: np.ndarray
    inliers: np.ndarray
    reproj_error: np.ndarray
    ok: np.ndarray
    confidence: np.ndarray
    information: np.ndarray

    @property
    def outliers(self) -> np.ndarray:
        """[V, N] bool: candidate views rejected for a point."""
        return self.candidates & ~self.inliers

    def inlier_errors(self) -> np.ndarray:
        """Reprojection errors [K] in pixels of every (inlier view, ok point) pair."""
        sel = self.inliers & self.ok[None]
        return self.reproj_error[sel]


# ------------------------------------------------------------------------------------- basics


def _check_inputs(pix: np.ndarray, K: np.ndarray, Rt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pix = np.asarray(pix, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    Rt = np.asarray(Rt, dtype=np.float64)
    if pix.ndim != 3 or pix.shape[2] != 2:
        raise ValueError(f"pix must be [V, N, 2] pixels, got shape {pix.shape}")
    V = pix.shape[0]
    if K.shape != (V, 3, 3) or Rt.shape != (V, 3, 4):
        raise ValueError(f"K must be [V, 3, 3] and Rt [V, 3, 4] with V = {V}; got {K.shape} and {Rt.shape}")
    return pix, K, Rt


def reprojection_errors(points: np.ndarray, pix: np.ndarray, K: np.ndarray, Rt: np.ndarray) -> np.ndarray:
    """Pixel distance [V, N] between ``pix [V, N, 2]`` and the projection of ``points [N, 3]``.

    inf where the point is behind the camera; NaN where ``pix`` or the point is NaN.
    """
    proj, depth = project_points(points, K, Rt)
    err = np.linalg.norm(proj - pix, axis=-1)
    return np.where(depth > 0, err, np.where(np.isnan(err), np.nan, np.inf))


def dlt_triangulate(pix: np.ndarray, weights: np.ndarray, K: np.ndarray, Rt: np.ndarray) -> np.ndarray:
    """Linear triangulation (DLT) of N points, each from the views with a positive weight.

    pix [V, N, 2] pixels; weights [V, N] >= 0 (0 = view not used); K [V, 3, 3]; Rt [V, 3, 4]
    -> points [N, 3] world units (NaN where fewer than 2 views have positive weight).

    Works in normalised image coordinates (``K^-1 x``) so that the system is well conditioned;
    each view contributes the two rows ``w (x P_3 - P_1)``, ``w (y P_3 - P_2)``.
    """
    pix, K, Rt = _check_inputs(pix, K, Rt)
    w = np.asarray(weights, dtype=np.float64)
    V, N = w.shape
    xn = np.concatenate([pix, np.ones((V, N, 1))], -1) @ np.linalg.inv(K).transpose(0, 2, 1)
    xn = xn[..., :2] / xn[..., 2:3]
    use = (w > 0) & np.isfinite(xn).all(-1)
    w = np.where(use, w, 0.0)
    xn = np.where(use[..., None], xn, 0.0)
    P = Rt  # normalised cameras
    rows_x = xn[..., 0:1] * P[:, None, 2, :] - P[:, None, 0, :]  # [V, N, 4]
    rows_y = xn[..., 1:2] * P[:, None, 2, :] - P[:, None, 1, :]
    A = np.concatenate([rows_x * w[..., None], rows_y * w[..., None]], 0)  # [2V, N, 4]
    A = A.transpose(1, 0, 2)  # [N, 2V, 4]
    # Smallest right singular vector of A = smallest eigenvector of A^T A (4x4, batched, cheap).
    AtA = A.transpose(0, 2, 1) @ A
    _, vecs = np.linalg.eigh(AtA)
    Xh = vecs[:, :, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        X = Xh[:, :3] / Xh[:, 3:4]
    bad = (use.sum(0) < 2) | (np.abs(Xh[:, 3]) < 1e-12)
    X[bad] = np.nan
    return X


def refine_points(
    points: np.ndarray,
    pix: np.ndarray,
    weights: np.ndarray,
    K: np.ndarray,
    Rt: np.ndarray,
    huber_px: float = 2.0,
    iters: int = 8,
) -> np.ndarray:
    """Gauss-Newton refinement of ``points [N, 3]`` on the Huber-weighted pixel reprojection error.

    pix [V, N, 2] pixels; weights [V, N] >= 0 (0 = view not used); huber_px: residual (pixels) above
    which a view's influence decreases as 1 / r (iteratively reweighted least squares).
    Returns refined points [N, 3]; points with fewer than 2 used views, or NaN, are returned unchanged.
    """
    pix, K, Rt = _check_inputs(pix, K, Rt)
    X = np.array(points, dtype=np.float64)
    w0 = np.where(np.isfinite(pix).all(-1), np.asarray(weights, dtype=np.float64), 0.0)
    pix0 = np.nan_to_num(pix)
    A = K @ Rt[:, :, :3]  # [V, 3, 3]
    b = np.einsum("vij,vj->vi", K, Rt[:, :, 3])  # [V, 3]
    active = (w0 > 0).sum(0) >= 2
    active &= np.isfinite(X).all(1)
    for _ in range(iters):
        Xa = np.where(active[:, None], X, 0.0)
        h = Xa @ A.transpose(0, 2, 1) + b[:, None]  # [V, N, 3]
        z = h[..., 2]
        zs = np.where(np.abs(z) < 1e-12, 1e-12, z)
        proj = h[..., :2] / zs[..., None]
        r = proj - pix0  # [V, N, 2]
        rn = np.linalg.norm(r, axis=-1)
        hub = np.where(rn <= huber_px, 1.0, huber_px / np.maximum(rn, 1e-12))
        w = w0 * hub * (z > 0)
        # d proj / d X = (A[:2] - proj * A[2]) / z
        J = (A[:, None, :2, :] - proj[..., None] * A[:, None, 2:3, :]) / zs[..., None, None]  # [V, N, 2, 3]
        wJ = w[..., None, None] * J
        H = (wJ.transpose(0, 1, 3, 2) @ J).sum(0)  # [N, 3, 3]
        g = (wJ.transpose(0, 1, 3, 2) @ r[..., None])[..., 0].sum(0)  # [N, 3]
        H += np.eye(3)[None] * 1e-9 * np.trace(H, axis1=1, axis2=2)[:, None, None]
        ok = active & ((w > 0).sum(0) >= 2)
        if not ok.any():
            break
        step = np.zeros_like(X)
        step[ok] = np.linalg.solve(H[ok], g[ok][..., None])[..., 0]
        X = np.where(ok[:, None], X - step, X)
    return X


# --------------------------------------------------------------------------------- robust core


def triangulate_points(
    pix: np.ndarray,
    candidates: np.ndarray,
    K: np.ndarray,
    Rt: np.ndarray,
    inlier_px: float = 8.0,
    huber_px: float = 2.0,
    min_views: int = 2,
    view_weights: np.ndarray | None = None,
) -> Triangulation:
    """Robust triangulation of N points from V views: RANSAC over view pairs, Huber refinement.

    pix [V, N, 2] pixels (NaN = not detected); candidates [V, N] bool: views that may be used
    (e.g. detected and visible); K [V, 3, 3]; Rt [V, 3, 4]; inlier_px: reprojection error (pixels)
    above which a view is an outlier for a point; huber_px: Huber threshold of the refinement;
    view_weights [V] (e.g. detector scores) weight the refinement, default 1.

    Every pair of candidate views gives a DLT hypothesis; the hypothesis with the best MSAC score
    (sum over candidate views of min(err^2, inlier_px^2)) wins, its inliers are refined with
    :func:`refine_points`, inliers are recomputed (twice). Points with fewer than ``min_views``
    inliers fail (``ok`` False, point NaN).
    """
    pix, K, Rt = _check_inputs(pix, K, Rt)
    V, N = pix.shape[:2]
    if min_views < 2:
        raise ValueError("min_views must be at least 2 for triangulation")
    cand = np.asarray(candidates, dtype=bool) & np.isfinite(pix).all(-1)
    vw = np.ones(V) if view_weights is None else np.asarray(view_weights, dtype=np.float64)

    best_cost = np.full(N, np.inf)
    best_X = np.full((N, 3), np.nan)
    for a, b in itertools.combinations(range(V), 2):
        pair = cand[a] & cand[b]
        if not pair.any():
            continue
        w = np.zeros((V, N))
        w[a] = pair
        w[b] = pair
        X = dlt_triangulate(pix, w, K, Rt)
        err = reprojection_errors(X, pix, K, Rt)
        e2 = np.where(cand, np.minimum(np.nan_to_num(err, nan=inlier_px, posinf=inlier_px), inlier_px) ** 2, 0.0)
        cost = e2.sum(0)
        # a hypothesis must itself be consistent in its two views
        own = (np.nan_to_num(err[a], nan=np.inf) < inlier_px) & (np.nan_to_num(err[b], nan=np.inf) < inlier_px)
        better = pair & own & (cost < best_cost)
        best_cost = np.where(better, cost, best_cost)
        best_X[better] = X[better]

    X = best_X
    inl = np.zeros((V, N), dtype=bool)
    for _ in range(3):
        err = reprojection_errors(X, pix, K, Rt)
        inl = cand & (np.nan_to_num(err, nan=np.inf) < inlier_px)
        X = refine_points(X, pix, inl * vw[:, None], K, Rt, huber_px=huber_px)
    err = reprojection_errors(X, pix, K, Rt)
    inl = cand & (np.nan_to_num(err, nan=np.inf) < inlier_px)
    ok = (inl.sum(0) >= min_views) & np.isfinite(X).all(1)
    X = np.where(ok[:, None], X, np.nan)
    err = np.where(np.isfinite(pix).all(-1) & ok[None], err, np.nan)
    inl &= ok[None]

    # confidence: more inlier views and smaller residuals -> closer to 1
    n_in = inl.sum(0)
    rms = np.sqrt(np.where(inl, np.nan_to_num(err) ** 2, 0.0).sum(0) / np.maximum(n_in, 1))
    conf = (1.0 - 1.0 / np.maximum(n_in, 1)) * (1.0 / (1.0 + (rms / max(huber_px, 1e-6)) ** 2))
    conf = np.where(ok, conf, 0.0)
    return Triangulation(X, cand, inl, err, ok, conf, point_information(X, inl.astype(float), K, Rt))


def point_information(points: np.ndarray, weights: np.ndarray, K: np.ndarray, Rt: np.ndarray) -> np.ndarray:
    """Information matrices [N, 3, 3] (pixels^2 / units^2) of ``points [N, 3]`` observed in the views
    with ``weights [V, N]`` > 0: ``sum_v w J_v^T J_v`` with J_v = d pix / d X [2, 3]; 0 for NaN points."""
    X = np.nan_to_num(np.asarray(points, dtype=np.float64))
    A = K @ Rt[:, :, :3]
    h = X @ A.transpose(0, 2, 1) + np.einsum("vij,vj->vi", K, Rt[:, :, 3])[:, None]
    z = h[..., 2]
    zs = np.where(np.abs(z) < 1e-12, 1e-12, z)
    proj = h[..., :2] / zs[..., None]
    J = (A[:, None, :2, :] - proj[..., None] * A[:, None, 2:3, :]) / zs[..., None, None]
    w = np.where(np.isfinite(points).all(1)[None], np.asarray(weights, dtype=np.float64), 0.0)
    return ((w[..., None, None] * J).transpose(0, 1, 3, 2) @ J).sum(0)


# ------------------------------------------------------------------------------------ visibility


def landmark_visibility(
    points: np.ndarray,
    normals: np.ndarray,
    Rt: np.ndarray,
    K: np.ndarray | None = None,
    sizes: Sequence[tuple[int, int]] | None = None,
    caster: RayCaster | None = None,
    min_cos: float = 0.1,
    occlusion_eps: float = 1e-3,
) -> np.ndarray:
    """Which views see each surface point: [V, N] bool.

    points [N, 3] world units on a surface; normals [N, 3] unit outward normals there;
    Rt [V, 3, 4]; a point is visible from a view when it faces the camera
    (:func:`mvfr.visibility.facing` with ``min_cos``), is in front of the camera, inside the
    image (when ``K`` and ``sizes`` = [(width, height)] per view are given) and, when a ``caster``
    of the surface is given, not occluded by it: :func:`mvfr.visibility.occluded` of the point
    lifted off the surface along its normal by ``occlusion_eps`` x the mesh's bounding-box diagonal
    (``caster.extent``), with no further margin. (Lifting along the normal is the test the fit was
    tuned with; the same distance as a margin along the view ray would change about 0.5 % of the
    landmark-view decisions on held-out faces.)
    """
    points = np.asarray(points, dtype=np.float64)
    normals = np.asarray(normals, dtype=np.float64)
    Rt = np.asarray(Rt, dtype=np.float64)
    centres = camera_center(Rt)  # [V, 3]
    vis = facing(points, normals, centres, min_cos)
    depth = np.einsum("vk,nk->vn", Rt[:, 2, :3], points) + Rt[:, None, 2, 3]
    vis &= depth > 0
    if K is not None and sizes is not None:
        pix, _ = project_points(points, np.asarray(K, dtype=np.float64), Rt)
        for v, (w, h) in enumerate(sizes):
            x, y = pix[v, :, 0], pix[v, :, 1]
            vis[v] &= (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)
    if caster is not None and vis.any():
        lifted = points + normals * (occlusion_eps * caster.extent)
        vis &= ~occluded(lifted, centres, caster, margin=0.0)
    return vis


# ------------------------------------------------------------------------------- landmark file


def landmark_record(
    fid: str,
    views: Sequence[str],
    landmarks2d: Sequence[np.ndarray | None],
    scores: Sequence[float],
    tri: Triangulation | None,
    image_sizes: Sequence[tuple[int, int]] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The content of ``landmarks/PPP_EE.json`` as a JSON-ready dict.

    ``landmarks2d[v]`` is [468, 2] pixels of the processed image of view ``views[v]`` or None (no
    face found); ``scores[v]`` the detector's confidence. Per landmark: ``points3d`` [N, 3] capture
    units (null where triangulation failed), ``views_used`` / ``views_outlier`` (view names),
    ``reprojection_error_px`` [V][N] (null where not detected or failed).
    """

    def nanlist(a: np.ndarray) -> list:
        return [None if not np.all(np.isfinite(x)) else np.asarray(x).tolist() for x in a]

    rec: dict[str, Any] = {
        "format": LANDMARK_FORMAT,
        "face_id": fid,
        "views": list(map(str, views)),
        "detections": {
            str(v): {
                "score": float(s),
                "landmarks_px": None if lm is None else np.round(np.asarray(lm, dtype=np.float64), 3).tolist(),
                **({"image_size": list(map(int, image_sizes[i]))} if image_sizes is not None else {}),
            }
            for i, (v, lm, s) in enumerate(zip(views, landmarks2d, scores))
        },
    }
    if tri is not None:
        names = np.asarray(list(map(str, views)))
        err = np.round(tri.reproj_error, 4)
        rec.update(
            {
                "points3d": nanlist(tri.points),
                "ok": tri.ok.tolist(),
                "confidence": np.round(tri.confidence, 4).tolist(),
                "views_used": [names[tri.inliers[:, n]].tolist() for n in range(tri.points.shape[0])],
                "views_outlier": [names[tri.outliers[:, n]].tolist() for n in range(tri.points.shape[0])],
                "reprojection_error_px": [[None if not np.isfinite(e) else float(e) for e in row] for row in err],
                "summary": triangulation_summary(tri),
            }
        )
    if extra:
        rec.update(extra)
    return rec


def triangulation_summary(tri: Triangulation) -> dict[str, float]:
    """Counts and reprojection-error figures (pixels) of a triangulation, for logs and the JSON."""
    e = tri.inlier_errors()
    e = e[np.isfinite(e)]
    return {
        "num_points": int(tri.points.shape[0]),
        "num_ok": int(tri.ok.sum()),
        "num_failed": int((~tri.ok).sum()),
        "num_outlier_observations": int(tri.outliers.sum()),
        "num_inlier_observations": int(tri.inliers.sum()),
        "reproj_median_px": float(np.median(e)) if e.size else float("nan"),
        "reproj_mean_px": float(np.mean(e)) if e.size else float("nan"),
        "reproj_p90_px": float(np.percentile(e, 90)) if e.size else float("nan"),
    }


def save_landmarks(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Write a :func:`landmark_record` atomically."""
    save_json(path, record, indent=None)


def load_landmarks(path: str | os.PathLike) -> dict[str, Any]:
    """Read ``landmarks/PPP_EE.json`` -> dict with numpy arrays:

    ``views`` list[str]; ``landmarks2d`` [V, N, 2] pixels (NaN where a view found no face);
    ``scores`` [V]; ``points3d`` [N, 3] (NaN where failed); ``inliers`` [V, N] bool;
    ``reproj_error`` [V, N] pixels (NaN where none); ``ok`` [N] bool; ``record``: the raw JSON.
    """
    from mvfr.datafolder import read_json

    rec = read_json(path, "landmark file")
    if rec.get("format") != LANDMARK_FORMAT:
        raise ValueError(f"landmark file {path} has format {rec.get('format')!r}, expected {LANDMARK_FORMAT!r}; rerun gen_maps.py")
    views = rec["views"]
    dets = [rec["detections"][v] for v in views]
    n = next((len(d["landmarks_px"]) for d in dets if d["landmarks_px"] is not None), 0)
    lm2d = np.full((len(views), n, 2), np.nan)
    for i, d in enumerate(dets):
        if d["landmarks_px"] is not None:
            lm2d[i] = np.asarray(d["landmarks_px"], dtype=np.float64)
    out: dict[str, Any] = {
        "views": views,
        "landmarks2d": lm2d,
        "scores": np.asarray([d["score"] for d in dets], dtype=np.float64),
        "record": rec,
    }
    if "points3d" in rec:
        out["points3d"] = np.asarray([[np.nan] * 3 if p is None else p for p in rec["points3d"]], dtype=np.float64)
        out["ok"] = np.asarray(rec["ok"], dtype=bool)
        idx = {v: i for i, v in enumerate(views)}
        inl = np.zeros((len(views), len(rec["views_used"])), dtype=bool)
        for n_, used in enumerate(rec["views_used"]):
            for v in used:
                inl[idx[v], n_] = True
        out["inliers"] = inl
        out["reproj_error"] = np.asarray(
            [[np.nan if e is None else e for e in row] for row in rec["reprojection_error_px"]], dtype=np.float64
        )
    return out
