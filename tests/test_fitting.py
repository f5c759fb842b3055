"""Template fitting: similarity, Loop subdivision with uvs, robust ARAP fit, landmarks -> base mesh."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from mvfr.camera import project_points
from mvfr.fitting import (
    apply_similarity,
    fit_template,
    loop_subdivision,
    reconstruct_base_mesh,
    robust_similarity,
    umeyama,
)
from mvfr.mesh_io import Mesh, vertex_normals
from mvfr.template import load_template
from tests.test_triangulation import ring_cameras

S_TRUE, R_TRUE, T_TRUE = 4.2, Rotation.from_euler("xyz", [10, -25, 5], degrees=True).as_matrix(), np.array([1.0, -3.0, 2.0])


def warped_template(amount=1.0):
    """The template (cm) bent smoothly (identity-like change), then moved by the true similarity."""
    v = load_template().vertices.copy()
    v[:, 2] += amount * 0.6 * np.sin(v[:, 0] / 4.0) + amount * 0.02 * v[:, 1] ** 2 / 4
    v[:, 0] *= 1.0 + 0.05 * amount
    return apply_similarity(v, S_TRUE, R_TRUE, T_TRUE)


def test_umeyama_known_answer_and_robust_version():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(40, 3))
    dst = apply_similarity(src, S_TRUE, R_TRUE, T_TRUE)
    s, R, t = umeyama(src, dst)
    assert s == pytest.approx(S_TRUE, rel=1e-10)
    np.testing.assert_allclose(R, R_TRUE, atol=1e-10)
    np.testing.assert_allclose(t, T_TRUE, atol=1e-9)
    bad = dst.copy()
    bad[:6] += rng.normal(0, 30, (6, 3))  # 15% gross outliers
    s2, R2, _, res = robust_similarity(src, bad)
    assert abs(s2 - S_TRUE) < 0.02 and np.abs(R2 - R_TRUE).max() < 0.01
    assert res[:6].min() > 10 * np.median(res[6:]) + 1e-6
    with pytest.raises(ValueError, match="at least 3"):
        umeyama(src[:2], dst[:2])


def test_loop_subdivision_counts_uvs_and_reference():
    tpl = load_template()
    one = loop_subdivision(tpl, 1)
    n_edges = len(np.unique(np.sort(np.concatenate([tpl.faces[:, [0, 1]], tpl.faces[:, [1, 2]], tpl.faces[:, [2, 0]]]), 1), axis=0))
    assert one.vertices.shape == (468 + n_edges, 3) and one.faces.shape == (4 * 898, 3)
    # uvs are linear: edge uvs are midpoints, old uvs unchanged, uv orientation kept (all CCW)
    np.testing.assert_allclose(one.uvs[:468], tpl.uvs)
    uv = one.uvs[one.face_uvs]
    e1, e2 = uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0]
    area = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    assert (area > 0).all()
    # the smooth surface has no crease: normals of neighbouring faces agree better than the template's
    two = loop_subdivision(tpl, 2)
    assert _max_dihedral_deg(two) < 0.6 * _max_dihedral_deg(tpl)
    # a flat mesh stays flat (boundary rules included) and the masks are a partition of unity
    flat = Mesh(np.c_[tpl.uvs, np.zeros(468)], tpl.faces, tpl.uvs, tpl.face_uvs)
    assert np.abs(loop_subdivision(flat, 2).vertices[:, 2]).max() < 1e-12
    # agrees with a slow, obvious per-vertex / per-edge implementation
    ref = _loop_reference(tpl.vertices, tpl.faces)
    assert np.abs(one.vertices[:468] - ref[0]).max() < 1e-12
    from mvfr.fitting import mesh_edges

    edges, _ = mesh_edges(tpl.faces)
    got = {tuple(e): one.vertices[468 + i] for i, e in enumerate(edges)}
    assert max(np.abs(got[e] - p).max() for e, p in ref[1].items()) < 1e-12


def _loop_reference(v, faces):
    """One Loop step with loops over vertices and edges: (even [N, 3], {edge (a, b): odd position})."""
    from collections import defaultdict

    edge_faces = defaultdict(list)
    for f in faces:
        for k in range(3):
            a, b = int(f[k]), int(f[(k + 1) % 3])
            edge_faces[(min(a, b), max(a, b))].append(int(f[(k + 2) % 3]))
    odd = {}
    nbrs, bnbrs = defaultdict(set), defaultdict(set)
    for (a, b), opp in edge_faces.items():
        nbrs[a].add(b)
        nbrs[b].add(a)
        if len(opp) == 1:
            odd[(a, b)] = 0.5 * (v[a] + v[b])
            bnbrs[a].add(b)
            bnbrs[b].add(a)
        else:
            odd[(a, b)] = 0.375 * (v[a] + v[b]) + 0.125 * (v[opp[0]] + v[opp[1]])
    even = v.copy()
    for i in range(len(v)):
        if bnbrs[i]:
            if len(bnbrs[i]) == 2:
                even[i] = 0.75 * v[i] + 0.125 * sum(v[j] for j in bnbrs[i])
        else:
            n = len(nbrs[i])
            beta = (0.625 - (0.375 + 0.25 * np.cos(2 * np.pi / n)) ** 2) / n if n > 3 else 3 / 16
            even[i] = (1 - n * beta) * v[i] + beta * sum(v[j] for j in nbrs[i])
    return even, odd


def _max_dihedral_deg(mesh):
    from mvfr.mesh_io import face_normals

    fn = face_normals(mesh.vertices, mesh.faces)
    he = np.sort(np.stack([mesh.faces, np.roll(mesh.faces, -1, 1)], -1).reshape(-1, 2), 1)
    _, inv, cnt = np.unique(he, axis=0, return_inverse=True, return_counts=True)
    inv = inv.ravel()
    face = np.repeat(np.arange(len(mesh.faces)), 3)
    order = np.argsort(inv, kind="stable")
    inv_s, face_s = inv[order], face[order]
    pair = inv_s[1:] == inv_s[:-1]
    a, b = face_s[:-1][pair], face_s[1:][pair]
    cos = np.clip((fn[a] * fn[b]).sum(1), -1, 1)
    return float(np.degrees(np.arccos(cos)).max())


def test_fit_exact_target_passes_through_landmarks():
    target = warped_template(0.0)
    fit = fit_template(target, np.ones(468), load_template())
    assert fit.similarity[0] == pytest.approx(S_TRUE, rel=1e-6)
    np.testing.assert_allclose(fit.mesh.vertices[:468], target, atol=1e-8)  # subdivided vertex i = landmark i
    assert fit.mesh.uvs is not None and fit.mesh.uvs.shape == (len(fit.mesh.vertices), 2)


def test_fit_follows_smooth_change_and_ignores_one_crazy_landmark():
    target = warped_template(1.0)
    tpl = load_template()
    n = vertex_normals(target, tpl.faces)
    crazy = target.copy()
    k = 4  # nose tip area
    crazy[k] += 5.0 * S_TRUE * n[k]  # 5 cm off the surface
    good = fit_template(target, np.ones(468), tpl, robust_scale=0.3 * S_TRUE)
    assert np.abs(good.mesh.vertices[:468] - target).max() < 0.05 * S_TRUE  # follows the warp (< 0.5 mm)
    robust = fit_template(crazy, np.ones(468), tpl, robust_scale=0.3 * S_TRUE)
    plain = fit_template(crazy, np.ones(468), tpl, robust_scale=None)
    err_r = np.linalg.norm(robust.mesh.vertices[:468] - target, axis=1)
    err_p = np.linalg.norm(plain.mesh.vertices[:468] - target, axis=1)
    assert err_r.max() < 0.1 * S_TRUE, err_r.max()  # < 1 mm everywhere, the crazy vertex included
    assert err_p.max() > 5 * err_r.max()  # the non-robust fit is crumpled: the test can fail
    assert robust.weights[k] < 0.01 * np.median(robust.weights)


def _synthetic_views(rng, X, V=10, noise_px=1.0, outlier_frac=0.05, hidden_px=25.0):
    """MediaPipe-like detections: noise, gross outliers, and wrong guesses for landmarks facing away."""
    K, Rt = ring_cameras(V, radius=60.0 * S_TRUE / 1.0, spread_deg=110.0)
    Rt = Rt.copy()
    centre = X.mean(0)
    Rt[:, :, 3] -= np.einsum("vij,j->vi", Rt[:, :, :3], centre)  # cameras look at the face
    pix, _ = project_points(X[None].repeat(V, 0), K, Rt)
    obs = pix + rng.normal(0, noise_px, pix.shape)
    n = vertex_normals(X, load_template().faces)
    C = -np.einsum("vji,vj->vi", Rt[:, :, :3], Rt[:, :, 3])
    facing = np.einsum("vnk,nk->vn", C[:, None] - X[None], n) > 0
    obs[~facing] += rng.normal(0, hidden_px, ((~facing).sum(), 2))
    out = rng.random((V, len(X))) < outlier_frac
    obs[out] += rng.uniform(30, 80, (out.sum(), 2))
    return obs, K, Rt


def test_reconstruct_base_mesh_from_noisy_views():
    rng = np.random.default_rng(3)
    X = warped_template(1.0)
    obs, K, Rt = _synthetic_views(rng, X)
    scores = np.full(len(K), 0.95)
    scores[0] = 0.1  # an unsure view is left out of the first round
    res = reconstruct_base_mesh(obs, scores, K, Rt, [(1296, 864)] * len(K), load_template(),
                                mm_per_unit=10.0 / S_TRUE)
    assert res.first_pass_views == list(range(1, len(K)))
    err = np.linalg.norm(res.fit.mesh.vertices[:468] - X, axis=1) * 10.0 / S_TRUE  # mm
    assert np.median(err) < 0.5 and err.max() < 3.0, (np.median(err), err.max())
    assert np.median(res.triangulation.inlier_errors()) < 1.5
    assert res.triangulation.outliers.sum() > 0  # outliers were found and reported


def test_reconstruct_needs_two_views():
    X = warped_template(0.0)
    obs, K, Rt = _synthetic_views(np.random.default_rng(0), X, V=3)
    obs[1:] = np.nan
    with pytest.raises(ValueError, match="only 1 view"):
        reconstruct_base_mesh(obs, np.ones(3), K, Rt, [(1296, 864)] * 3, load_template())
