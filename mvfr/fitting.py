"""Fit the face template to triangulated 3D landmarks: similarity, robust ARAP deformation, Loop subdivision.

The template (:mod:`mvfr.template`) has one vertex per MediaPipe landmark, so the fit is:

1. :func:`robust_similarity` -- weighted Umeyama alignment of the template (cm) to the landmarks
   (capture units), iteratively reweighted (Cauchy) so that gross outliers do not tilt it.
2. :func:`arap_fit` -- a regularised non-rigid deformation: as-rigid-as-possible (cotangent
   weights, per-vertex rotations) plus a data term pulling the *subdivided* surface's vertex i
   onto landmark i, weighted by each landmark's triangulation confidence and reweighted (Cauchy)
   by its residual, so a bad landmark cannot crumple the surface.
3. :func:`loop_subdivision` -- Loop subdivision (``levels`` times) for a smooth base surface;
   positions use Loop's masks (with boundary rules), uvs are interpolated linearly (edge
   midpoints) so the subdivided mesh covers exactly the template's uv chart.

:func:`reconstruct_base_mesh` chains triangulation and fitting for one face, with the visibility
iteration: a first fit from the views where the detector is confident, then per-landmark
visibility from the fitted surface, re-triangulation from the visible views, and a final fit.

Units: the template is in cm, everything returned is in capture units.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Sequence

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from mvfr.mesh_io import Mesh, vertex_normals
from mvfr.subdivision import Subdivision, loop_subdivision, mesh_edges, subdivision  # noqa: F401 (re-exported)
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


# ---------------------------------------------------------------------------------- subdivision


# ------------------------------------------------------------------------------------------ ARAP


def cotangent_weights(vertices: np.ndarray, faces: np.ndarray, edges: np.ndarray, face_edges: np.ndarray,
                      floor: float = 0.05) -> np.ndarray:
    """Per-edge weights [E] = (cot alpha + cot beta) / 2, floored at ``floor`` x their mean (keeps
    the energy positive definite on obtuse triangles)."""
    tri = vertices[faces]
    w = np.zeros(len(edges))
    for k in range(3):  # edge k joins corners k, k+1; the opposite corner is k+2
        o = tri[:, (k + 2) % 3]
        a, b = tri[:, k] - o, tri[:, (k + 1) % 3] - o
        cot = (a * b).sum(1) / np.maximum(np.linalg.norm(np.cross(a, b), axis=1), 1e-30)
        np.add.at(w, face_edges[:, k], 0.5 * cot)
    return np.maximum(w, floor * max(float(np.mean(np.abs(w))), 1e-12))


def _laplacian(edges: np.ndarray, w: np.ndarray, n: int) -> sp.csr_matrix:
    """Graph Laplacian ``L = D - W`` [n, n] (positive semi-definite) of weighted edges."""
    i, j = edges[:, 0], edges[:, 1]
    Wm = sp.csr_matrix((np.concatenate([w, w]), (np.concatenate([i, j]), np.concatenate([j, i]))), shape=(n, n))
    return (sp.diags(np.asarray(Wm.sum(1)).ravel()) - Wm).tocsr()


def _best_rotations(cov: np.ndarray) -> np.ndarray:
    """Closest rotations [N, 3, 3] to ``cov [N, 3, 3]`` (= sum c (v_i - v_j)(r_i - r_j)^T), det +1."""
    U, _, Vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(U @ Vt))
    d = np.where(d == 0, 1.0, d)
    U = U.copy()
    U[:, :, 2] *= d[:, None]
    return U @ Vt


@dataclasses.dataclass
class ArapResult:
    control: np.ndarray  # [N, 3] deformed control vertices, units
    weights: np.ndarray  # [N] final data weights (isotropic size of the confidence x robust factor)
    residuals: np.ndarray  # [N] |fitted - target| in units (NaN where no target)


def arap_fit(
    rest: np.ndarray,
    faces: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    smoothness: float = 1.0,
    robust_scale: float | None = None,
    data_operator: sp.spmatrix | None = None,
    iters: int = 6,
) -> ArapResult:
    """As-rigid-as-possible deformation of ``rest [N, 3]`` towards ``targets [N, 3]`` (soft constraints).

    Minimises  sum_i w_i |(B v)_i - p_i|^2 + smoothness * sum_edges c_ij |(v_i - v_j) - R_ij (r_i - r_j)|^2
    over v, alternating per-vertex rotations (local) and a sparse linear solve (global).
    ``B = data_operator`` [N, N] maps control vertices to the points that must meet the targets
    (default identity; :func:`fit_template` passes the control rows of the Loop operator, so the
    *smooth* surface passes through the landmarks). weights [N] >= 0 (0 or NaN target = unused), or
    [N, 3, 3] symmetric PSD matrices (anisotropic: e.g. a triangulated point's information matrix,
    strong across the viewing rays, weak along them), the data term then being (Bv - p)^T W_i (Bv - p);
    robust_scale (units): when given, weights are multiplied by the Cauchy factor
    1 / (1 + (residual / robust_scale)^2) after every solve, so wild targets lose their pull.
    """
    rest = np.asarray(rest, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    n = len(rest)
    p = np.asarray(targets, dtype=np.float64)
    finite = np.isfinite(p).all(1)
    W0 = np.nan_to_num(np.asarray(weights, dtype=np.float64))
    if W0.ndim == 1:
        W0 = W0[:, None, None] * np.eye(3)[None]
    if W0.shape != (n, 3, 3):
        raise ValueError(f"weights must be [N] or [N, 3, 3] with N = {n}, got {np.shape(weights)}")
    W0 = W0 * finite[:, None, None]
    strength = np.trace(W0, axis1=1, axis2=2) / 3.0  # [N] isotropic size of each target's weight
    if (strength > 0).sum() < 3:
        raise ValueError(f"non-rigid fit needs at least 3 weighted targets, got {(strength > 0).sum()}")
    p = np.nan_to_num(p)
    B = sp.identity(n, format="csr") if data_operator is None else sp.csr_matrix(data_operator)
    B3 = sp.kron(B, sp.identity(3), format="csr")
    edges, fe = mesh_edges(faces)
    c = cotangent_weights(rest, faces, edges, fe)
    L3 = sp.kron(_laplacian(edges, c, n), sp.identity(3), format="csr")
    e_rest = rest[edges[:, 0]] - rest[edges[:, 1]]  # [E, 3]
    # scale the data term so that ``smoothness`` means the same for any mesh resolution / weighting
    w_scale = float(np.mean(c) * 2 * len(edges) / n) / max(float(np.mean(strength[strength > 0])), 1e-12)
    rows = (3 * np.arange(n)[:, None, None] + np.arange(3)[None, :, None]).repeat(3, 2)
    cols = rows.transpose(0, 2, 1)
    v = rest.copy()
    robust = np.ones(n)
    res = np.zeros(n)
    for it in range(iters):
        # local step: rotation per vertex from its one-ring
        e_cur = v[edges[:, 0]] - v[edges[:, 1]]
        outer = c[:, None, None] * e_cur[:, :, None] * e_rest[:, None, :]
        cov = np.zeros((n, 3, 3))
        np.add.at(cov, edges[:, 0], outer)
        np.add.at(cov, edges[:, 1], outer)
        Rv = _best_rotations(cov)
        Re = 0.5 * (Rv[edges[:, 0]] + Rv[edges[:, 1]])
        be = c[:, None] * np.einsum("eij,ej->ei", Re, e_rest)  # [E, 3]
        b = np.zeros((n, 3))
        np.add.at(b, edges[:, 0], be)
        np.add.at(b, edges[:, 1], -be)
        # global step (3N unknowns: anisotropic weights couple x, y, z of a vertex)
        Wb = W0 * (robust * w_scale)[:, None, None]
        Wd = sp.csr_matrix((Wb.ravel(), (rows.ravel(), cols.ravel())), shape=(3 * n, 3 * n))
        A = (B3.T @ Wd @ B3 + smoothness * L3).tocsc()
        rhs = B3.T @ (Wd @ p.ravel()) + smoothness * b.ravel()
        v = spla.splu(A, permc_spec="MMD_AT_PLUS_A").solve(rhs).reshape(n, 3)
        res = np.linalg.norm(B @ v - p, axis=1)
        if robust_scale is not None:
            robust = 1.0 / (1.0 + (res / robust_scale) ** 2)
    w = strength * robust
    return ArapResult(v, w, np.where(strength > 0, res, np.nan))


# ------------------------------------------------------------------------------------- template fit


def _inflated_control(vertices: np.ndarray, sub: Subdivision) -> np.ndarray:
    """Control vertices [N, 3] whose subdivided vertex i lands on ``vertices[i]`` (solves ``S[:N] c = v``;
    the Loop even-vertex operator is well conditioned: eigenvalues in [1/4, 1])."""
    n = len(vertices)
    return np.asarray(spla.splu(sub.S[:n].tocsc()).solve(np.asarray(vertices, dtype=np.float64)))


@dataclasses.dataclass
class TemplateFit:
    """Result of :func:`fit_template`.

    mesh: the subdivided base mesh (capture units, Loop positions, template uvs interpolated
    linearly); control [N, 3] the fitted template vertices (units); similarity (s, R, t) template
    cm -> units; landmark_residuals [N] distance (units) between subdivided vertex i and landmark i;
    weights [N] final data weights.
    """

    mesh: Mesh
    control: np.ndarray
    similarity: tuple[float, np.ndarray, np.ndarray]
    landmark_residuals: np.ndarray
    weights: np.ndarray


def fit_template(
    landmarks3d: np.ndarray,
    weights: np.ndarray,
    template: Mesh,
    subdiv_levels: int = 2,
    smoothness: float = 1.0,
    robust_scale: float | None = None,
) -> TemplateFit:
    """Fit ``template`` (vertex i = landmark i, any unit) to ``landmarks3d [L, 3]`` (capture units).

    L may be less than the template's N vertices: vertices L..N-1 (the extension beyond the
    landmark mesh) have no target and follow the ARAP deformation (regularisation only).

    weights [N] >= 0 or [N, 3, 3] (see :func:`arap_fit` and :func:`landmark_weights`): triangulation
    confidence (0 / NaN landmark = ignored). robust_scale: Cauchy
    scale in capture units of the non-rigid data term (default: none). Returns :class:`TemplateFit`.
    """
    lm = np.asarray(landmarks3d, dtype=np.float64)
    n = len(template.vertices)
    n_lm = len(lm)
    if lm.ndim != 2 or lm.shape[1] != 3 or not 3 <= n_lm <= n:
        raise ValueError(f"landmarks3d must be [L, 3] with L <= {n} (landmark i = template vertex i), got {lm.shape}")
    w = np.nan_to_num(np.asarray(weights, dtype=np.float64))
    finite = np.isfinite(lm).all(1)
    w = w * (finite if w.ndim == 1 else finite[:, None, None])
    w_iso = w if w.ndim == 1 else np.trace(w, axis1=1, axis2=2) / 3.0
    s, R, t, _ = robust_similarity(template.vertices[:n_lm], lm, w_iso)
    if n_lm < n:  # vertices beyond the landmarks (the template's extension) follow the deformation only
        lm = np.concatenate([lm, np.full((n - n_lm, 3), np.nan)])
        w = np.concatenate([w, np.zeros((n - n_lm,) + w.shape[1:])])
    sub = subdivision(template.faces, n, subdiv_levels, template.face_uvs,
                      0 if template.uvs is None else len(template.uvs))
    B = sub.S[:n]
    # ARAP rest shape: the control mesh whose *subdivided* vertices are the template's, so an exact
    # template target costs nothing (Loop subdivision alone would shrink the face).
    rest = apply_similarity(_inflated_control(template.vertices, sub), s, R, t)
    fit = arap_fit(rest, template.faces, lm, w, smoothness=smoothness, robust_scale=robust_scale, data_operator=B)
    verts = sub.positions(fit.control)
    uvs = None if template.uvs is None else np.asarray(sub.M_uv @ template.uvs)
    mesh = Mesh(verts, sub.faces, uvs, sub.face_uvs)
    mesh.normals = vertex_normals(mesh.vertices, mesh.faces)
    return TemplateFit(mesh, fit.control, (s, R, t), fit.residuals[:n_lm], fit.weights[:n_lm])


# ------------------------------------------------------------------------- landmarks -> base mesh


@dataclasses.dataclass
class BaseMeshResult:
    """One face's base mesh reconstruction: the final triangulation, fit and landmark visibility [V, N]."""

    triangulation: Triangulation
    fit: TemplateFit
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
    template: Mesh,
    mm_per_unit: float = 1.0,
    min_score: float = 0.5,
    inlier_px: float = 8.0,
    huber_px: float = 2.0,
    robust_mm: float = 3.0,
    smoothness: float = 1.0,
    subdiv_levels: int = 2,
    visibility_cos: float = 0.15,
    rounds: int = 2,
) -> BaseMeshResult:
    """Landmarks in V views -> robust 3D landmarks -> fitted, subdivided template (capture units).

    landmarks2d [V, N, 2] pixels of the processed images (NaN rows: view found no face);
    scores [V] detector confidence; K [V, 3, 3]; Rt [V, 3, 4]; image_sizes [(width, height)] per view;
    mm_per_unit converts ``robust_mm`` (Cauchy scale of the non-rigid fit, mm) to capture units.

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
        fit = fit_template(tri.points, landmark_weights(tri), template, subdiv_levels=subdiv_levels,
                           smoothness=smoothness, robust_scale=robust_mm / mm_per_unit)
        if rnd == rounds - 1:
            break
        verts = fit.mesh.vertices[:N]
        normals = fit.mesh.normals[:N]
        caster = RayCaster(fit.mesh.vertices, fit.mesh.faces)
        vis = landmark_visibility(verts, normals, Rt, K, image_sizes, caster=caster, min_cos=visibility_cos)
        new = detected & vis
        # a landmark seen by fewer than 2 views keeps its previous candidates
        few = new.sum(0) < 2
        new[:, few] = cand[:, few] | (detected[:, few] & vis[:, few])
        cand = new
    return BaseMeshResult(tri, fit, vis, first.tolist())


# ------------------------------------------------------------------------------------- scale

TEMPLATE_MM_PER_UNIT = 10.0  # the template is in cm


def mm_per_unit_from_fit(fit: TemplateFit, template_mm_per_unit: float = TEMPLATE_MM_PER_UNIT) -> float:
    """Millimetres per capture unit implied by the similarity of a template fit (template unit -> capture
    units is ``s``): ``template_mm_per_unit / s``. The template is an average face, so this is as good as
    the subject's face is average-sized (about +-10 %); a calibrated scale is better when there is one."""
    s = float(fit.similarity[0])
    if not s > 0:
        raise ValueError(f"the template fit has a non-positive scale {s}")
    return template_mm_per_unit / s
