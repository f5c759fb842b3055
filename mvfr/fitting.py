"""Fit the base model to triangulated 3D landmarks: similarity, model weights, non-rigid refinement.

The base model (:mod:`mvfr.face_model`: a linear morphable face in mm, its 468 MediaPipe landmarks at
fixed barycentrics of its triangles) is fitted in three steps (:func:`fit_face_model`):

1. :func:`robust_similarity` -- weighted Umeyama alignment of the mean face's landmarks (mm) to the
   triangulated landmarks (capture units), iteratively reweighted (Cauchy) so that gross outliers do
   not tilt it;
2. :func:`solve_model_weights` -- identity and expression weights by bounded least squares with their
   priors, the residuals weighted by each landmark's information matrix (anisotropic: depth along the
   viewing rays is less certain than position across them), alternating with the similarity;
3. :func:`smooth_correction` -- a smooth non-rigid correction (the displacement of least bending)
   pulling the surface's landmark points onto the landmarks, reweighted (Cauchy) by residual, for the
   shape the model's span misses.

:func:`reconstruct_base_mesh` chains triangulation and fitting for one face, with the visibility
iteration: a first fit from the views where the detector is confident, then per-landmark
visibility from the fitted surface, re-triangulation from the visible views, and a final fit.

Units: the model is in mm, everything returned is in capture units.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from mvfr.face_model import FaceModel
from mvfr.mesh_io import Mesh, vertex_normals
from mvfr.subdivision import mesh_edges
from mvfr.triangulation import Triangulation, landmark_visibility, triangulate_points
from mvfr.visibility import RayCaster

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ similarity


def umeyama(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None, with_scale: bool = True):
    """Weighted least-squares similarity ``dst ~ s R src + t`` (Umeyama 1991).

    src, dst [N, 3]; weights [N] >= 0 (default 1) -> s float, R [3, 3] rotation (det +1), t [3].
    Needs at least 3 non-collinear points with positive weight.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3:
        raise ValueError(f"src and dst must both be [N, 3], got {src.shape} and {dst.shape}")
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = np.where(np.isfinite(dst).all(1) & np.isfinite(src).all(1), w, 0.0)
    if (w > 0).sum() < 3:
        raise ValueError(f"similarity alignment needs at least 3 valid points, got {(w > 0).sum()}")
    w = w / w.sum()
    src0, dst0 = np.nan_to_num(src), np.nan_to_num(dst)
    mu_s, mu_d = w @ src0, w @ dst0
    xs, xd = src0 - mu_s, dst0 - mu_d
    cov = (xd * w[:, None]).T @ xs
    U, D, Vt = np.linalg.svd(cov)
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1
    R = U @ S @ Vt
    var_s = (w * (xs**2).sum(1)).sum()
    s = float(np.trace(np.diag(D) @ S) / var_s) if with_scale else 1.0
    t = mu_d - s * R @ mu_s
    return s, R, t


def apply_similarity(points: np.ndarray, s: float, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``s R p + t`` for ``points [N, 3]``."""
    return s * points @ R.T + t


def robust_similarity(
    src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None, iters: int = 6, min_scale: float = 0.0
):
    """Umeyama with Cauchy reweighting of the residuals -> (s, R, t, residuals [N] in dst units).

    The Cauchy scale is 2.5 x the weighted median residual of the previous iteration (at least
    ``min_scale``), so a few gross outliers get almost no weight.
    """
    w0 = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    w0 = np.where(np.isfinite(dst).all(1), w0, 0.0)
    w = w0.copy()
    for _ in range(iters):
        s, R, t = umeyama(src, dst, w)
        res = np.linalg.norm(apply_similarity(src, s, R, t) - np.nan_to_num(dst), axis=1)
        valid = w0 > 0
        c = max(2.5 * float(np.median(res[valid])), min_scale, 1e-12)
        w = w0 / (1.0 + (res / c) ** 2)
    s, R, t = umeyama(src, dst, w)
    res = np.linalg.norm(apply_similarity(src, s, R, t) - np.nan_to_num(dst), axis=1)
    return s, R, t, np.where(w0 > 0, res, np.nan)


# ----------------------------------------------------------------------------- smooth correction


def graph_laplacian(edges: np.ndarray, w: np.ndarray, n: int) -> sp.csr_matrix:
    """Graph Laplacian ``L = D - W`` [n, n] (positive semi-definite) of weighted edges."""
    i, j = edges[:, 0], edges[:, 1]
    Wm = sp.csr_matrix((np.concatenate([w, w]), (np.concatenate([i, j]), np.concatenate([j, i]))), shape=(n, n))
    return (sp.diags(np.asarray(Wm.sum(1)).ravel()) - Wm).tocsr()


def smooth_correction(
    vertices: np.ndarray,
    faces: np.ndarray,
    operator: sp.spmatrix,
    targets: np.ndarray,
    weights: np.ndarray,
    stiffness: float,
    robust_scale: float | None = None,
    iters: int = 2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The smoothest displacement of a mesh that moves its points ``operator @ vertices`` onto ``targets``.

    ``vertices [N, 3]`` (any unit), ``faces [F, 3]``, ``operator`` sparse ``[L, N]`` (e.g. the landmarks'
    barycentric rows), ``targets [L, 3]`` (NaN = none), ``weights [L] >= 0``. Minimises
    ``sum_l w_l |(B (V + D))_l - p_l|^2 + stiffness * |M D|^2`` over the displacement ``D [N, 3]``, with
    ``M = I - A / deg`` the normalised graph Laplacian (``|M D|^2`` penalises bending of the displacement,
    not the displacement itself: a thin plate through the targets). ``robust_scale`` (units): after each
    solve the weights are multiplied by ``1 / (1 + (residual / robust_scale)^2)``.
    Returns the new vertices ``[N, 3]``, the final weights ``[L]`` and residuals ``[L]`` (units).
    """
    V = np.asarray(vertices, dtype=np.float64)
    n = len(V)
    B = sp.csr_matrix(operator)
    edges, _ = mesh_edges(np.asarray(faces, dtype=np.int64))
    A = graph_laplacian(edges, np.ones(len(edges)), n)
    deg = np.maximum(A.diagonal(), 1.0)
    M = sp.diags(1.0 / deg) @ A
    MM = (M.T @ M).tocsc()
    p = np.asarray(targets, dtype=np.float64)
    w0 = np.where(np.isfinite(p).all(1), np.nan_to_num(np.asarray(weights, dtype=np.float64)), 0.0)
    r = np.nan_to_num(p - B @ V)
    robust = np.ones(len(w0))
    D = np.zeros_like(V)
    for _ in range(max(int(iters), 1)):
        w = w0 * robust
        K = (B.T @ sp.diags(w) @ B + stiffness * MM).tocsc()
        D = spla.splu(K).solve(np.asarray(B.T @ (w[:, None] * r)))
        res = np.linalg.norm(B @ D - r, axis=1)
        if robust_scale is None:
            break
        robust = 1.0 / (1.0 + (res / robust_scale) ** 2)
    return V + D, w0 * robust, res


# --------------------------------------------------------------------------------- base model fit

LANDMARK_SIGMA_MM = 2.0  # noise of a typical triangulated landmark (detector and triangulation), mm
CORRECTION_STIFFNESS = 200.0  # stiffness of the smooth correction (:func:`smooth_correction`)
EXPRESSION_SIGMA = 1.0  # prior std of an expression weight (weights are bounded to [0, 1])
IDENTITY_BOUND = 4.0  # identity weights stay within +-4 standard deviations


@dataclasses.dataclass
class BaseFit:
    """Result of :func:`fit_face_model`.

    mesh: the base mesh (capture units, the model's topology and uvs, vertex normals);
    similarity (s, R, t): model mm -> capture units; identity [Ki], expression [Ke]: the model weights;
    landmark_residuals [L] distance (units) between the mesh's landmark points and the targets;
    weights [L] final data weights of the non-rigid refinement.
    """

    mesh: Mesh
    similarity: tuple[float, np.ndarray, np.ndarray]
    identity: np.ndarray
    expression: np.ndarray
    landmark_residuals: np.ndarray
    weights: np.ndarray


def _square_roots(W: np.ndarray) -> np.ndarray:
    """``U [L, 3, 3]`` with ``U^T U = W`` for symmetric PSD ``W [L, 3, 3]``."""
    lam, Q = np.linalg.eigh(W)
    return np.sqrt(np.clip(lam, 0.0, None))[:, :, None] * np.transpose(Q, (0, 2, 1))


def bounded_quadratic(H: np.ndarray, g: np.ndarray, lo: np.ndarray, hi: np.ndarray, iters: int = 500) -> np.ndarray:
    """``argmin_x 0.5 x^T H x - g^T x`` subject to ``lo <= x <= hi`` (``H [K, K]`` symmetric positive
    definite): the primal active-set method. A working set of variables held at a bound; the others
    solve the reduced system; a step that would leave the box stops at the first bound met (which joins
    the set); at the reduced optimum the bound whose multiplier has the wrong sign leaves the set. Exact
    for this small convex problem (the normal equations of a fit of K model weights), and far quicker
    than a general solver."""
    x = np.clip(np.zeros_like(g), lo, hi)
    bound = np.zeros(len(g), dtype=bool)  # the working set
    for _ in range(iters):
        free = ~bound
        y = x.copy()
        if free.any():
            y[free] = np.linalg.solve(H[np.ix_(free, free)], g[free] - H[np.ix_(free, bound)] @ x[bound])
        d = y - x
        with np.errstate(divide="ignore", invalid="ignore"):
            room = np.where(d > 0, (hi - x) / d, np.where(d < 0, (lo - x) / d, np.inf))
        room[bound] = np.inf
        blocking = int(np.argmin(room))
        if room[blocking] < 1.0:  # the box stops the step: go to the bound, hold it there
            x = x + room[blocking] * d
            x[blocking] = hi[blocking] if d[blocking] > 0 else lo[blocking]
            bound[blocking] = True
            continue
        x = y
        grad = H @ x - g  # multipliers of the held bounds: >= 0 at lo, <= 0 at hi
        wrong = np.where(bound & (x <= lo), grad, np.where(bound & (x >= hi), -grad, 0.0))
        worst = int(np.argmin(wrong))
        if not bound.any() or wrong[worst] >= -1e-12 * max(1.0, float(np.abs(g).max())):
            return np.clip(x, lo, hi)
        bound[worst] = False
    return np.clip(x, lo, hi)


def solve_model_weights(model: FaceModel, targets_mm: np.ndarray, W: np.ndarray,
                        sigma_mm: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Identity ``[Ki]`` and expression ``[Ke]`` weights whose landmarks best meet ``targets_mm [L, 3]``
    (model frame, mm) under the information matrices ``W [L, 3, 3]`` (relative: 1 = a typical landmark,
    whose noise is ``sigma_mm``), with the priors N(0, 1) per identity weight (bounded to
    +-:data:`IDENTITY_BOUND`) and N(0, :data:`EXPRESSION_SIGMA`^2) per expression weight, bounded to [0, 1].
    ``sigma_mm`` default: :data:`LANDMARK_SIGMA_MM`."""
    sigma_mm = LANDMARK_SIGMA_MM if sigma_mm is None else sigma_mm
    mean_l, basis = model.landmark_basis  # [L, 3], [L, 3, K]
    ki, k = len(model.identity), basis.shape[-1]
    ok = np.isfinite(targets_mm).all(1)
    U = _square_roots(W[ok]) / sigma_mm
    A = np.einsum("lij,ljk->lik", U, basis[ok]).reshape(-1, k)
    b = np.einsum("lij,lj->li", U, targets_mm[ok] - mean_l[ok]).ravel()
    prior = np.r_[np.ones(ki), np.full(k - ki, 1.0 / EXPRESSION_SIGMA)]
    lo = np.r_[np.full(ki, -IDENTITY_BOUND), np.zeros(k - ki)]
    hi = np.r_[np.full(ki, IDENTITY_BOUND), np.ones(k - ki)]
    x = bounded_quadratic(A.T @ A + np.diag(prior**2), A.T @ b, lo, hi)
    return x[:ki], x[ki:]


def fit_face_model(
    landmarks3d: np.ndarray,
    weights: np.ndarray,
    model: FaceModel,
    rounds: int = 4,
    robust_mm: float | None = 3.0,
    stiffness: float | None = None,
    refine: bool = True,
) -> BaseFit:
    """Fit the base model (:mod:`mvfr.face_model`, mm) to ``landmarks3d [L, 3]`` (capture units, NaN = missing).

    1. similarity of the mean face's landmarks onto the targets (robust Umeyama);
    2. ``rounds`` times: identity and expression weights in the model frame (:func:`solve_model_weights`),
       the similarity again from the model's landmarks, Cauchy reweighting of landmarks whose residual
       exceeds ``robust_mm``;
    3. ``refine``: a smooth non-rigid correction of the fitted surface onto the landmarks
       (:func:`smooth_correction` with ``stiffness``), for the shapes the model's span misses.

    weights [L] >= 0 or [L, 3, 3] information matrices (:func:`landmark_weights`; 0 / NaN = ignored).
    ``stiffness`` default: :data:`CORRECTION_STIFFNESS`.
    The fit needs no scale: the similarity carries model mm -> capture units (:func:`mm_per_unit_from_fit`).
    """
    lm = np.asarray(landmarks3d, dtype=np.float64)
    L = model.num_landmarks
    if lm.shape != (L, 3):
        raise ValueError(f"landmarks3d must be [{L}, 3] (the model's landmarks), got {lm.shape}")
    W = np.nan_to_num(np.asarray(weights, dtype=np.float64))
    W = W[:, None, None] * np.eye(3) if W.ndim == 1 else W
    W = W * np.isfinite(lm).all(1)[:, None, None]
    w_iso = np.trace(W, axis1=1, axis2=2) / 3.0
    mean_l = model.landmarks(model.mean)
    s, R, t, _ = robust_similarity(mean_l, lm, w_iso)
    robust = np.ones(L)
    ident, expr = np.zeros(len(model.identity)), np.zeros(len(model.expression))
    for _ in range(rounds):
        q = (np.nan_to_num(lm) - t) @ R / s  # targets in the model frame, mm
        Wm = np.einsum("ai,lab,bj->lij", R, W, R)  # R^T W R: the information in the model frame
        ident, expr = solve_model_weights(model, np.where(np.isfinite(lm), q, np.nan), Wm * robust[:, None, None])
        x_l = model.landmarks(model.shape(ident, expr))
        s, R, t = umeyama(x_l, lm, w_iso * robust)
        if robust_mm is not None:
            res_mm = np.linalg.norm(apply_similarity(x_l, s, R, t) - np.nan_to_num(lm), axis=1) / s
            robust = 1.0 / (1.0 + (res_mm / robust_mm) ** 2)
    verts = apply_similarity(model.shape(ident, expr), s, R, t)
    w_final = w_iso * robust
    if refine:
        stiffness = CORRECTION_STIFFNESS if stiffness is None else stiffness
        verts, w_final, _ = smooth_correction(verts, model.faces, model.landmark_operator, lm, w_final, stiffness,
                                              None if robust_mm is None else robust_mm * s)
    res = np.linalg.norm(model.landmarks(verts) - np.nan_to_num(lm), axis=1)
    mesh = model.mesh(verts)
    mesh.normals = vertex_normals(mesh.vertices, mesh.faces)
    return BaseFit(mesh, (s, R, t), ident, expr, np.where(w_iso > 0, res, np.nan), w_final)


# ------------------------------------------------------------------------- landmarks -> base mesh


@dataclasses.dataclass
class BaseMeshResult:
    """One face's base mesh reconstruction: the final triangulation, fit and landmark visibility [V, N]."""

    triangulation: Triangulation
    fit: BaseFit
    visibility: np.ndarray
    first_pass_views: list[int]


def landmark_weights(tri: Triangulation) -> np.ndarray:
    """Data weights [N, 3, 3] of the template fit from a triangulation: each point's information
    matrix (anisotropic: depth along the viewing rays is less certain than position across them),
    normalised by the median over points of its largest eigenvalue, times the point's confidence.
    Failed points get 0."""
    info = np.where(tri.ok[:, None, None], tri.information, 0.0)
    if not tri.ok.any():
        return info
    lam = np.linalg.eigvalsh(info[tri.ok])[:, -1]
    ref = max(float(np.median(lam)), 1e-30)
    return info / ref * tri.confidence[:, None, None]


def reconstruct_base_mesh(
    landmarks2d: np.ndarray,
    scores: np.ndarray,
    K: np.ndarray,
    Rt: np.ndarray,
    image_sizes: Sequence[tuple[int, int]],
    model: FaceModel,
    min_score: float = 0.5,
    inlier_px: float = 8.0,
    huber_px: float = 2.0,
    robust_mm: float = 3.0,
    visibility_cos: float = 0.15,
    rounds: int = 2,
) -> BaseMeshResult:
    """Landmarks in V views -> robust 3D landmarks -> fitted base model (capture units).

    landmarks2d [V, N, 2] pixels of the processed images (NaN rows: view found no face);
    scores [V] detector confidence; K [V, 3, 3]; Rt [V, 3, 4]; image_sizes [(width, height)] per view;
    ``robust_mm``: Cauchy scale of the fit's data term, mm (:func:`fit_face_model`).

    Round 0 triangulates every landmark from the views whose score >= ``min_score`` (all views with
    a detection when fewer than 2 pass); each later round recomputes, from the surface fitted in the
    previous round, which views see each landmark (normal facing the camera by ``visibility_cos``,
    inside the image, not occluded), and re-triangulates from those views only.
    Raises ValueError when fewer than 2 views have landmarks or too few landmarks triangulate.
    """
    lm = np.asarray(landmarks2d, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    V, N = lm.shape[:2]
    detected = np.isfinite(lm).all(-1)  # [V, N]
    has = detected.any(1)
    if has.sum() < 2:
        raise ValueError(f"only {int(has.sum())} view(s) gave landmarks; at least 2 are needed")
    confident = has & (scores >= min_score)
    first = np.nonzero(confident if confident.sum() >= 2 else has)[0]
    cand = np.zeros((V, N), dtype=bool)
    cand[first] = detected[first]
    vw = np.clip(scores, 0.05, 1.0)
    vis = cand.copy()
    tri = fit = None
    for rnd in range(rounds):
        tri = triangulate_points(lm, cand, K, Rt, inlier_px=inlier_px, huber_px=huber_px, view_weights=vw)
        if tri.ok.sum() < max(10, N // 4):
            raise ValueError(
                f"only {int(tri.ok.sum())} of {N} landmarks could be triangulated from views "
                f"{np.nonzero(cand.any(1))[0].tolist()} (inlier threshold {inlier_px} px)"
            )
        fit = fit_face_model(tri.points, landmark_weights(tri), model, robust_mm=robust_mm)
        if rnd == rounds - 1:
            break
        verts = model.landmarks(fit.mesh.vertices)
        normals = model.landmarks(fit.mesh.normals)
        normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
        caster = RayCaster(fit.mesh.vertices, fit.mesh.faces)
        vis = landmark_visibility(verts, normals, Rt, K, image_sizes, caster=caster, min_cos=visibility_cos)
        new = detected & vis
        # a landmark seen by fewer than 2 views keeps its previous candidates
        few = new.sum(0) < 2
        new[:, few] = cand[:, few] | (detected[:, few] & vis[:, few])
        cand = new
    return BaseMeshResult(tri, fit, vis, first.tolist())


# ------------------------------------------------------------------------------------- scale


def mm_per_unit_from_fit(fit: BaseFit) -> float:
    """Millimetres per capture unit implied by the similarity of a base-model fit (model mm -> capture units
    is ``s``): ``1 / s``. The model's mean is an average face and its identity weights are held near it by
    their prior, so this is as good as the subject's face is average-sized (about +-10 %); a calibrated
    scale is better when there is one."""
    s = float(fit.similarity[0])
    if not s > 0:
        raise ValueError(f"the base-model fit has a non-positive scale {s}")
    return 1.0 / s


# ------------------------------------------------------------------- base refined onto a surface

SURFACE_STIFFNESS = 2000.0  # stiffness of the correction onto a searched surface (:func:`fit_to_surface`)
SURFACE_ROBUST_MM = 1.0  # residual scale of its Cauchy reweighting, mm
SURFACE_MIN_WEIGHT = 0.5  # texels below this weight do not pull


def fit_to_surface(mesh: Mesh, face_index: np.ndarray, bary: np.ndarray, points: np.ndarray, weights: np.ndarray,
                   mm_per_unit: float, stiffness: float | None = None) -> Mesh:
    """The base mesh moved smoothly onto a searched surface: :func:`smooth_correction` with one target per texel.

    ``mesh`` (capture units, the model topology); the UV table of its topology as ``face_index [S, S]`` (-1 =
    none) and ``bary [S, S, 3]``; ``points [S, S, 3]`` the searched surface (units) and ``weights [S, S]`` in
    [0, 1] its evidence (stage 2's :func:`mvfr.confidence.fallback_weight`; below
    :data:`SURFACE_MIN_WEIGHT` a texel does not pull). The correction is a thin plate (``stiffness``, default
    :data:`SURFACE_STIFFNESS`) with Cauchy reweighting at :data:`SURFACE_ROBUST_MM`: it follows the confident
    surface's shape at the scale of centimetres, not its noise, and carries its slope on into the parts
    without evidence (the underside of the chin, where the base can be a centimetre off). Returns a new mesh
    with vertex normals.
    """
    stiffness = SURFACE_STIFFNESS if stiffness is None else float(stiffness)
    w = np.nan_to_num(np.asarray(weights, dtype=np.float64)).ravel()
    fi = np.asarray(face_index).ravel()
    sel = np.flatnonzero((w >= SURFACE_MIN_WEIGHT) & (fi >= 0) & np.isfinite(points.reshape(-1, 3)).all(1))
    out = Mesh(np.asarray(mesh.vertices, dtype=np.float64).copy(), mesh.faces, uvs=mesh.uvs, face_uvs=mesh.face_uvs)
    if len(sel) >= 3:
        rows = np.repeat(np.arange(len(sel)), 3)
        cols = np.asarray(mesh.faces)[fi[sel]].ravel()
        B = sp.csr_matrix((np.asarray(bary).reshape(-1, 3)[sel].ravel(), (rows, cols)), shape=(len(sel), len(out.vertices)))
        out.vertices, _, _ = smooth_correction(out.vertices, mesh.faces, B, points.reshape(-1, 3)[sel], w[sel], stiffness,
                                               SURFACE_ROBUST_MM / mm_per_unit, iters=3)
    out.normals = vertex_normals(out.vertices, out.faces)
    return out
