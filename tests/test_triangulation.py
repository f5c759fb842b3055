"""Robust landmark triangulation: DLT known answers, Huber refinement, RANSAC with gross outliers,
visibility, and the landmark file round trip."""

import json

import numpy as np
import pytest

from mvfr.camera import project_points
from mvfr.template import load_canonical_face
from mvfr.triangulation import (
    dlt_triangulate,
    landmark_record,
    landmark_visibility,
    load_landmarks,
    refine_points,
    reprojection_errors,
    save_landmarks,
    triangulate_points,
)
from mvfr.visibility import RayCaster


def look_at(centre, target, up=(0.0, -1.0, 0.0)):
    """World->camera Rt [3, 4] of a camera at ``centre`` looking at ``target`` (OpenCV: y down)."""
    centre, target = np.asarray(centre, float), np.asarray(target, float)
    z = target - centre
    z /= np.linalg.norm(z)
    x = np.cross(up, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    return np.concatenate([R, (-R @ centre)[:, None]], 1)


def ring_cameras(n=10, radius=60.0, width=1296, height=864, f=1800.0, spread_deg=100.0):
    """n cameras on an arc (+z side) around the origin; K [n,3,3], Rt [n,3,4]."""
    K = np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1.0]])
    Rts = []
    for a in np.radians(np.linspace(-spread_deg / 2, spread_deg / 2, n)):
        elev = 0.15 * np.sin(3 * a)
        c = radius * np.array([np.sin(a) * np.cos(elev), np.sin(elev), np.cos(a) * np.cos(elev)])
        Rts.append(look_at(c, [0, 0, 0], up=(0, -1, 0)))
    return np.repeat(K[None], n, 0), np.stack(Rts)


def test_dlt_known_answer_two_views():
    K, Rt = ring_cameras(2)
    X = np.array([[0.0, 0.0, 0.0], [1.0, -2.0, 3.0]])
    pix, _ = project_points(X[None].repeat(2, 0), K, Rt)
    got = dlt_triangulate(pix, np.ones((2, 2)), K, Rt)
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got, X, atol=1e-8)


def test_dlt_needs_two_views_and_checks_shapes():
    K, Rt = ring_cameras(3)
    pix, _ = project_points(np.zeros((3, 1, 3)), K, Rt)
    w = np.array([[1.0], [0.0], [0.0]])
    assert np.isnan(dlt_triangulate(pix, w, K, Rt)).all()
    with pytest.raises(ValueError, match="pix must be"):
        dlt_triangulate(pix[0], w, K, Rt)
    with pytest.raises(ValueError, match="K must be"):
        dlt_triangulate(pix, w, K[:2], Rt)


def test_refine_reduces_reprojection_error_with_noise():
    rng = np.random.default_rng(1)
    K, Rt = ring_cameras(8)
    X = rng.normal(0, 5, (50, 3))
    pix, _ = project_points(X[None].repeat(8, 0), K, Rt)
    noisy = pix + rng.normal(0, 1.0, pix.shape)
    w = np.ones((8, 50))
    X0 = dlt_triangulate(noisy, w, K, Rt)
    X1 = refine_points(X0, noisy, w, K, Rt, huber_px=100.0)  # plain least squares
    e0 = np.nansum(reprojection_errors(X0, noisy, K, Rt) ** 2)
    e1 = np.nansum(reprojection_errors(X1, noisy, K, Rt) ** 2)
    assert e1 <= e0 + 1e-9
    assert np.abs(X1 - X).max() < 0.3  # 1 px noise, 8 views, f = 1800 at 60 units: ~0.03 units/px


def test_robust_triangulation_recovers_points_with_20pct_gross_outliers():
    rng = np.random.default_rng(7)
    V, N = 10, 468
    K, Rt = ring_cameras(V)
    tpl = load_canonical_face()
    X = tpl.vertices * 0.9 + rng.normal(0, 0.05, (N, 3))
    pix, _ = project_points(X[None].repeat(V, 0), K, Rt)
    obs = pix + rng.normal(0, 1.0, pix.shape)
    bad = rng.random((V, N)) < 0.2
    obs[bad] += rng.uniform(40, 200, (bad.sum(), 2)) * rng.choice([-1, 1], (bad.sum(), 2))
    missing = rng.random((V, N)) < 0.05
    obs[missing] = np.nan
    tri = triangulate_points(obs, np.ones((V, N), bool), K, Rt, inlier_px=6.0)
    assert tri.ok.mean() > 0.99
    err3d = np.linalg.norm(tri.points[tri.ok] - X[tri.ok], axis=1)
    assert np.median(err3d) < 0.05 and err3d.max() < 0.3, (np.median(err3d), err3d.max())
    # the gross outliers are the rejected observations
    truly_bad = bad & ~missing
    assert (tri.outliers & truly_bad).sum() >= 0.97 * truly_bad.sum()
    assert (tri.outliers & ~truly_bad).sum() <= 0.02 * (~truly_bad).sum()
    assert np.median(tri.inlier_errors()) < 1.5
    # a plain DLT over all views is far worse: the test can fail
    naive = dlt_triangulate(np.nan_to_num(obs), (~missing).astype(float), K, Rt)
    assert np.median(np.linalg.norm(naive - X, axis=1)) > 3 * np.median(err3d)


def test_point_seen_by_one_view_fails_and_is_reported():
    K, Rt = ring_cameras(4)
    X = np.array([[0.0, 0.0, 0.0], [2.0, 1.0, 0.0]])
    pix, _ = project_points(X[None].repeat(4, 0), K, Rt)
    cand = np.ones((4, 2), bool)
    cand[1:, 1] = False
    tri = triangulate_points(pix, cand, K, Rt)
    assert tri.ok.tolist() == [True, False]
    assert np.isnan(tri.points[1]).all() and tri.confidence[1] == 0
    np.testing.assert_allclose(tri.points[0], X[0], atol=1e-6)


def test_visibility_normals_and_occlusion():
    import trimesh

    K, Rt = ring_cameras(2, spread_deg=0.0)  # both cameras at +z
    pts = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])
    nrm = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])
    vis = landmark_visibility(pts, nrm, Rt)
    assert vis[:, 0].all() and not vis[:, 1].any()
    # occlusion: a sphere of radius 1, a point on its back with a normal forced towards +z is hidden;
    # a point on its front is not hidden by its own triangle (margin: 1e-3 of the mesh's diagonal)
    sphere = trimesh.creation.icosphere(3)
    caster = RayCaster(sphere.vertices, sphere.faces)
    vis = landmark_visibility(np.array([[0, 0, -1.0]]), np.array([[0, 0, 1.0]]), Rt, caster=caster)
    assert not vis.any()
    vis = landmark_visibility(np.array([[0, 0, 1.0]]), np.array([[0, 0, 1.0]]), Rt, caster=caster)
    assert vis.all()


def test_landmark_file_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    K, Rt = ring_cameras(3)
    X = rng.normal(0, 3, (5, 3))
    pix, _ = project_points(X[None].repeat(3, 0), K, Rt)
    pix[2, 4] = [5000.0, 5000.0]  # an outlier of view 2 for point 4
    tri = triangulate_points(pix, np.ones((3, 5), bool), K, Rt)
    lm2d = [pix[0], pix[1], pix[2]]
    rec = landmark_record("001_02", ["0", "4", "7"], lm2d, [0.9, 0.8, 0.7], tri, image_sizes=[(1296, 864)] * 3)
    path = tmp_path / "001_02.json"
    save_landmarks(path, rec)
    json.loads(path.read_text())  # strict JSON (no NaN)
    back = load_landmarks(path)
    assert back["views"] == ["0", "4", "7"]
    np.testing.assert_allclose(back["landmarks2d"], pix, atol=1e-3)
    np.testing.assert_allclose(back["points3d"], tri.points, atol=1e-9)
    assert back["inliers"].tolist() == tri.inliers.tolist()
    assert "7" in rec["views_outlier"][4] and "7" not in rec["views_used"][4]
    assert rec["summary"]["num_outlier_observations"] == 1
