"""Tests of mvfr.metrics: closest points, area sampling, facial region, per-stage metrics, aggregation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh

from mvfr import metrics
from mvfr.mesh_io import Mesh

N = 20_000  # samples per direction: enough for 2 % known answers, fast


def grid(x0: float, x1: float, y0: float, y1: float, nx: int, ny: int, z: float = 0.0) -> Mesh:
    """Flat grid mesh over [x0, x1] x [y0, y1] at height z, normals +z, uvs = (x, y)."""
    xs, ys = np.meshgrid(np.linspace(x0, x1, nx + 1), np.linspace(y0, y1, ny + 1), indexing="xy")
    v = np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, z)], axis=1)
    idx = np.arange(v.shape[0]).reshape(ny + 1, nx + 1)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, 1:].ravel(), idx[1:, :-1].ravel()
    f = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    return Mesh(v, f, uvs=v[:, :2].copy())


def concat(*meshes: Mesh) -> Mesh:
    vs, fs, off = [], [], 0
    for m in meshes:
        vs.append(m.vertices)
        fs.append(m.faces + off)
        off += len(m.vertices)
    return Mesh(np.concatenate(vs), np.concatenate(fs))


def sphere(radius: float = 1.0, subdivisions: int = 4, centre=(0.0, 0.0, 0.0)) -> Mesh:
    s = trimesh.creation.icosphere(subdivisions=subdivisions)
    return Mesh(s.vertices * radius + np.asarray(centre), s.faces)


def all_faces(mesh: Mesh) -> np.ndarray:
    return np.ones(len(mesh.faces), dtype=bool)


# ----------------------------------------------------------------------------- geometry helpers


def test_point_to_mesh_known_answer():
    v = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]])
    f = np.array([[0, 1, 2]])
    pts = np.array([[0.25, 0.25, 0.5], [-1.0, -1.0, 0.0], [0.5, 0.5, -2.0]])
    dist, closest, fidx = metrics.point_to_mesh(pts, v, f)
    assert dist.shape == (3,) and closest.shape == (3, 3) and fidx.shape == (3,)
    np.testing.assert_allclose(dist, [0.5, np.sqrt(2.0), 2.0], atol=1e-12)
    np.testing.assert_allclose(closest, [[0.25, 0.25, 0], [0, 0, 0], [0.5, 0.5, 0]], atol=1e-12)
    assert (fidx == 0).all()


def test_sample_surface_deterministic_uniform_and_on_surface():
    # Two triangles, areas 0.5 and 1.5: a quarter of the samples should land on the first.
    v = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [5, 0, 0], [8, 0, 0], [5, 1, 0]])
    f = np.array([[0, 1, 2], [3, 4, 5]])
    p1, f1, b1 = metrics.sample_surface(v, f, 40_000, seed=3)
    p2, f2, b2 = metrics.sample_surface(v, f, 40_000, seed=3)
    p3, _, _ = metrics.sample_surface(v, f, 40_000, seed=4)
    assert p1.shape == (40_000, 3) and f1.shape == (40_000,) and b1.shape == (40_000, 3)
    np.testing.assert_array_equal(p1, p2)
    assert not np.array_equal(p1, p3)
    assert abs((f1 == 0).mean() - 0.25) < 0.01
    assert (b1 >= 0).all()
    np.testing.assert_allclose(b1.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(np.einsum("pk,pkc->pc", b1, v[f[f1]]), p1, atol=1e-12)
    # Uniform inside a triangle: mean of the samples on the first triangle is its centroid.
    np.testing.assert_allclose(p1[f1 == 0].mean(0), [1 / 3, 1 / 3, 0], atol=0.01)
    # Barycentric round trip.
    np.testing.assert_allclose(metrics.barycentric(p1, v[f[f1]]), b1, atol=1e-9)


# --------------------------------------------------------------------------------- known answers


def test_sphere_scaled_gives_known_chamfer():
    pred = sphere(1.0)
    gt = sphere(1.001)
    m = metrics.surface_metrics(pred, gt, all_faces(gt), mm_per_unit=1.0, n_samples=N)
    assert set(m) == set(metrics.METRIC_KEYS)
    assert m["chamfer_mm"] == pytest.approx(0.001, rel=0.02)
    assert m["accuracy_mean_mm"] == pytest.approx(0.001, rel=0.02)
    assert m["completeness_mean_mm"] == pytest.approx(0.001, rel=0.02)
    m25 = metrics.surface_metrics(pred, gt, all_faces(gt), mm_per_unit=2.5, n_samples=N)
    assert m25["chamfer_mm"] == pytest.approx(0.0025, rel=0.02)
    assert m25["chamfer_mm"] == pytest.approx(2.5 * m["chamfer_mm"], rel=1e-9)
    # Threshold counts follow the distances: 1.001 vs 1 at 1000 mm per unit is 1 mm everywhere.
    m1000 = metrics.surface_metrics(pred, gt, all_faces(gt), mm_per_unit=1000.0, n_samples=N)
    assert m1000["pct_within_2mm"] == 100.0
    assert m1000["pct_within_0.5mm"] == 0.0
    assert m1000["accuracy_median_mm"] == pytest.approx(1.0, rel=0.02)


def test_identical_meshes_give_zero():
    mesh = sphere(1.0, subdivisions=3)
    m = metrics.surface_metrics(mesh, mesh, all_faces(mesh), mm_per_unit=2.5, n_samples=N)
    for key in ("accuracy_mean_mm", "accuracy_median_mm", "completeness_mean_mm", "chamfer_mm"):
        assert abs(m[key]) < 1e-9, key
    for key in ("pct_within_0.5mm", "pct_within_1mm", "pct_within_2mm"):
        assert m[key] == 100.0
    assert m["normal_error_deg"] < 1e-5


def test_tilted_plane_gives_normal_error_of_the_tilt():
    gt = grid(-1, 1, -1, 1, 8, 8)
    pred = grid(-1, 1, -1, 1, 5, 5)  # other tessellation on purpose
    a = np.radians(10.0)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])  # about y, centre 0
    pred = Mesh(pred.vertices @ rot.T, pred.faces)
    m = metrics.surface_metrics(pred, gt, all_faces(gt), mm_per_unit=1.0, n_samples=N)
    assert m["normal_error_deg"] == pytest.approx(10.0, abs=1e-6)
    # A point at signed distance s in [-1, 1] from the tilt axis (uniform by area) is |s| sin a from GT.
    assert m["accuracy_mean_mm"] == pytest.approx(0.5 * np.sin(a), rel=0.02)
    assert m["accuracy_median_mm"] == pytest.approx(0.5 * np.sin(a), rel=0.03)
    # At 5 mm per unit the distances are uniform in [0, 5 sin a] = [0, 0.868] mm.
    m5 = metrics.surface_metrics(pred, gt, all_faces(gt), mm_per_unit=5.0, n_samples=N)
    assert m5["pct_within_0.5mm"] == pytest.approx(100 * 0.5 / (5 * np.sin(a)), abs=1.5)
    assert m5["pct_within_1mm"] == 100.0
    # A flipped prediction reads 180 degrees: orientation counts.
    flipped = Mesh(gt.vertices, gt.faces[:, ::-1])
    assert metrics.surface_metrics(flipped, gt, all_faces(gt), 1.0, n_samples=2000)["normal_error_deg"] == (
        pytest.approx(180.0, abs=1e-6)
    )


# ---------------------------------------------------------------------------------------- region


def test_region_crops_both_directions():
    gt = grid(0, 2, 0, 1, 8, 4)  # region: the half x < 1 (cells split exactly at x = 1)
    region = gt.vertices[gt.faces].mean(1)[:, 0] < 1.0
    assert 0 < region.sum() < len(region)
    face = grid(0, 1, 0, 1, 6, 6, z=0.1)
    blob = sphere(0.2, subdivisions=2, centre=(1.8, 0.5, 5.0))  # closest GT point is outside the region
    plain = metrics.surface_metrics(face, gt, region, 1.0, n_samples=N)
    with_blob = metrics.surface_metrics(concat(face, blob), gt, region, 1.0, n_samples=N)
    assert plain["accuracy_mean_mm"] == pytest.approx(0.1, abs=1e-9)
    assert with_blob["accuracy_mean_mm"] == pytest.approx(0.1, abs=1e-9)
    assert with_blob["normal_error_deg"] == pytest.approx(0.0, abs=1e-6)
    # GT outside the region is not asked for: completeness is the 0.1 offset only ...
    assert plain["completeness_mean_mm"] == pytest.approx(0.1, abs=1e-9)
    # ... whereas counting the whole GT (half of it up to 1 unit from the prediction) raises it.
    whole = metrics.surface_metrics(face, gt, all_faces(gt), 1.0, n_samples=N)
    assert whole["completeness_mean_mm"] > 0.3


def test_accuracy_stops_at_the_scans_open_edge():
    # A scan that stops (a cropped 1 x 1 patch) holds no truth beyond its edge: a prediction 0.1 above it
    # that reaches 0.5 further on every side, corners included, scores 0.1, as the same prediction cut to
    # the scan does; before the rule its overhang read as error (mean well above 0.1).
    gt = grid(0, 1, 0, 1, 5, 5)
    wide = grid(-0.5, 1.5, -0.5, 1.5, 8, 8, z=0.1)
    m = metrics.surface_metrics(wide, gt, all_faces(gt), 1.0, n_samples=N)
    assert m["accuracy_mean_mm"] == pytest.approx(0.1, abs=1e-9)
    assert m["pct_within_0.5mm"] == 100.0
    # completeness is untouched: the scan is all within 0.1 of the prediction
    assert m["completeness_mean_mm"] == pytest.approx(0.1, abs=1e-9)
    # a scan with no open edge (a sphere) scores every sample, and an error inside the scan's face still counts
    s = sphere(1.0, subdivisions=3)
    bumped = Mesh(s.vertices * 1.05, s.faces)
    assert metrics.surface_metrics(bumped, s, all_faces(s), 1.0, n_samples=N)["accuracy_mean_mm"] > 0.04
    dent = grid(0.2, 0.8, 0.2, 0.8, 4, 4, z=0.3)
    both = metrics.surface_metrics(concat(grid(0, 1, 0, 1, 5, 5, z=0.1), dent), gt, all_faces(gt), 1.0, n_samples=N)
    assert both["accuracy_mean_mm"] > 0.13


def test_on_open_edge_edges_and_corners():
    gt = grid(0, 2, 0, 1, 2, 1)  # two cells, four triangles: the outline is open, the middle edges are not
    pts = np.array([[-1.0, 0.5, 0.3], [0.5, -1.0, 0.0], [-1.0, -1.0, 0.0], [1.0, 0.5, 0.2], [0.7, 0.4, 1.0]])
    _, closest, fidx = metrics.point_to_mesh(pts, gt.vertices, gt.faces)
    bary = metrics.barycentric(closest, gt.vertices[gt.faces[fidx]])
    np.testing.assert_array_equal(metrics.on_open_edge(gt.faces, fidx, bary), [True, True, True, False, False])


def test_region_faces_from_vertices_majority_rule():
    faces = np.array([[0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5]])
    vr = np.array([True, True, False, False, False, True])
    np.testing.assert_array_equal(metrics.region_faces_from_vertices(faces, vr), [True, False, False, False])
    vr2 = np.array([True, True, True, True, False, False])
    np.testing.assert_array_equal(metrics.region_faces_from_vertices(faces, vr2), [True, True, True, False])
    with pytest.raises(ValueError, match="bool"):
        metrics.region_faces_from_vertices(faces, vr.astype(int))
    with pytest.raises(ValueError, match="6 entries|5 entries"):
        metrics.region_faces_from_vertices(faces, vr[:5])


def test_facial_region_from_surface_known_answer():
    base = grid(0, 1, 0, 1, 1, 1)  # two triangles, uvs = xy
    near = grid(0, 1, 0, 1, 4, 4, z=0.01)
    far = grid(0, 1, 0, 1, 2, 2, z=5.0)  # projects into the mask but is beyond max_dist
    gt = concat(near, far)
    mask = np.zeros((8, 8), dtype=bool)
    mask[:, :4] = True
    region = metrics.facial_region_from_surface(gt, base, mask, max_dist_units=0.1)
    centroids = gt.vertices[gt.faces].mean(1)
    np.testing.assert_array_equal(region, (centroids[:, 0] < 0.5) & (centroids[:, 2] < 1.0))
    assert region[len(near.faces):].sum() == 0
    # a layer just behind the surface that faces the other way is dropped by the normal test
    back = grid(0, 1, 0, 1, 4, 4, z=-0.02)
    back = Mesh(back.vertices, back.faces[:, ::-1])
    gt2 = concat(near, back)
    both = metrics.facial_region_from_surface(gt2, base, mask, 0.1)
    facing = metrics.facial_region_from_surface(gt2, base, mask, 0.1, min_cos=0.5)
    assert both[len(near.faces):].any() and not facing[len(near.faces):].any()
    np.testing.assert_array_equal(facing[: len(near.faces)], both[: len(near.faces)])
    with pytest.raises(ValueError, match="max_dist_units"):
        metrics.facial_region_from_surface(gt, base, mask, max_dist_units=0.0)
    with pytest.raises(ValueError, match="no uvs"):
        metrics.facial_region_from_surface(gt, Mesh(base.vertices, base.faces), mask, 0.1)


def test_consistent_patches_split_where_the_winding_turns():
    g = grid(0, 2, 0, 1, 4, 2)
    assert len(np.unique(metrics.consistent_patches(g.faces))) == 1
    left = g.vertices[g.faces].mean(1)[:, 0] < 1.0
    f = g.faces.copy()
    f[left] = f[left][:, ::-1]
    labels = metrics.consistent_patches(f)
    assert len(np.unique(labels)) == 2
    assert len(np.unique(labels[left])) == 1 and len(np.unique(labels[~left])) == 1


def test_orient_towards_cameras_rewinds_flipped_and_patchy_scans():
    s = sphere(10.0, subdivisions=4)
    cams = np.array([[0.0, 0.0, 60.0], [30.0, 0.0, 50.0], [-30.0, 10.0, 50.0]])
    same, n = metrics.orient_towards_cameras(s.vertices, s.faces, cams, rays_per_camera=4000)
    assert n == 0 and np.array_equal(same, s.faces)  # a closed, outward surface: the back is not flipped
    flipped, n = metrics.orient_towards_cameras(s.vertices, s.faces[:, ::-1], cams, rays_per_camera=4000)
    assert n == len(s.faces) and np.array_equal(flipped, s.faces)
    # inconsistent: the half x > 0 wound inwards (the cameras see both halves)
    half = s.vertices[s.faces].mean(1)[:, 0] > 0
    patchy = s.faces.copy()
    patchy[half] = patchy[half][:, ::-1]
    fixed, n = metrics.orient_towards_cameras(s.vertices, patchy, cams, rays_per_camera=4000)
    assert n == half.sum() and np.array_equal(fixed, s.faces)
    # and the normal error of a scan against itself: 0, flipped or not, once re-wound
    err = metrics.surface_metrics(s, Mesh(s.vertices, flipped), all_faces(s), 1.0, n_samples=2000)["normal_error_deg"]
    assert err < 1e-6
    assert metrics.surface_metrics(s, Mesh(s.vertices, s.faces[:, ::-1]), all_faces(s), 1.0, n_samples=2000)["normal_error_deg"] > 179


# ---------------------------------------------------------------------------------- bad input


def test_bad_input_raises_clear_errors():
    gt = grid(0, 1, 0, 1, 2, 2)
    pred = grid(0, 1, 0, 1, 2, 2, z=0.1)
    with pytest.raises(ValueError, match="facial region is empty"):
        metrics.surface_metrics(pred, gt, np.zeros(len(gt.faces), dtype=bool), 1.0, n_samples=100)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="mm_per_unit"):
            metrics.surface_metrics(pred, gt, all_faces(gt), bad, n_samples=100)
    nan_pred = Mesh(pred.vertices.copy(), pred.faces)
    nan_pred.vertices[3, 1] = np.nan
    with pytest.raises(ValueError, match="prediction: 1 vertices are NaN"):
        metrics.surface_metrics(nan_pred, gt, all_faces(gt), 1.0, n_samples=100)
    with pytest.raises(ValueError, match="one entry per GT face"):
        metrics.surface_metrics(pred, gt, np.ones(3, dtype=bool), 1.0, n_samples=100)
    with pytest.raises(ValueError, match="total area is zero"):
        metrics.sample_surface(np.zeros((3, 3)), np.array([[0, 1, 2]]), 10)


# ------------------------------------------------------------------------------ aggregation, io

PER_FACE = {
    "001_02": {"base": {"chamfer_mm": 3.0, "normal_error_deg": 10.0}},
    "001_01": {
        "reg": {"chamfer_mm": 0.3, "normal_error_deg": 4.0},
        "base": {"chamfer_mm": 1.0, "normal_error_deg": 6.0},
        "meso": {"chamfer_mm": 0.25, "normal_error_deg": 3.0},
    },
}


def test_aggregate_and_document():
    mean = metrics.aggregate(PER_FACE)
    assert list(mean) == ["base", "reg", "meso"]
    assert mean["base"] == {"chamfer_mm": 2.0, "normal_error_deg": 8.0}
    assert mean["reg"] == {"chamfer_mm": 0.3, "normal_error_deg": 4.0}  # only face 001_01 has it
    doc = metrics.metrics_document(PER_FACE)
    assert set(doc) == {"faces", "mean"}
    assert list(doc["faces"]) == ["001_01", "001_02"]
    assert doc["faces"]["001_02"]["base"]["chamfer_mm"] == 3.0
    assert doc["mean"] == mean
    json.dumps(doc, allow_nan=False)  # plain floats, JSON-ready
    with pytest.raises(ValueError, match="face 001_03"):
        metrics.aggregate({"001_03": [1.0]})


def test_write_metrics_json_round_trip(tmp_path):
    path = tmp_path / "eval" / "metrics.json"
    path.parent.mkdir()
    doc = metrics.write_metrics_json(path, PER_FACE)
    assert json.loads(path.read_text()) == doc


def test_format_table_orders_stages_and_columns():
    text = metrics.format_table(metrics.aggregate(PER_FACE))
    lines = text.splitlines()
    assert lines[0].split() == ["stage", "chamfer_mm", "normal_error_deg"]
    assert [line.split()[0] for line in lines[2:]] == ["base", "reg", "meso"]
    assert lines[2].split()[1:] == ["2.000", "8.000"]


# ----------------------------------------------------------------------------- one scan, many stages


def test_scan_index_scores_like_the_plain_scan_and_builds_once():
    gt = concat(grid(-1, 1, -1, 1, 30, 30), sphere(0.3, 3, (0, 0, 1.0)))
    region = np.arange(len(gt.faces)) % 3 != 0
    preds = [sphere(0.31, 3, (0, 0, 1.02)), grid(-0.9, 0.9, -0.9, 0.9, 17, 17, z=0.05)]
    scan = metrics.ScanIndex(gt.vertices, gt.faces)
    for pred in preds:
        plain = metrics.surface_metrics(pred, gt, region, 2.0, n_samples=5000, seed=3)
        assert metrics.surface_metrics(pred, scan, region, 2.0, n_samples=5000, seed=3) == plain
    tree = scan._tree
    metrics.surface_metrics(preds[0], scan, region, 2.0, n_samples=5000, seed=4)
    assert tree is not None and scan._tree is tree and len(scan._samples) == 2  # built once; region samples per seed
    p = np.random.default_rng(0).normal(size=(500, 3))
    for a, b in zip(scan.closest(p), metrics.point_to_mesh(p, gt.vertices, gt.faces)):
        np.testing.assert_allclose(a, b, atol=1e-12)
    # the scan's samples are sample_surface's for the same seed
    for a, b in zip(scan.sample(300, 7), metrics.sample_surface(gt.vertices, gt.faces, 300, 7)):
        np.testing.assert_array_equal(a, b)


def test_a_rewound_scan_index_scores_like_a_fresh_one():
    gt = concat(grid(-1, 1, -1, 1, 12, 12), sphere(0.3, 2, (0, 0, 1.0)))
    flip = np.arange(len(gt.faces)) < 288  # the grid's faces, wound the other way
    faces = np.where(flip[:, None], gt.faces[:, ::-1], gt.faces)
    region = np.ones(len(faces), bool)
    pred = grid(-1.2, 1.2, -1.2, 1.2, 9, 9, z=0.02)  # reaches beyond the grid's open edge
    scan = metrics.ScanIndex(gt.vertices, gt.faces)
    scan.open_edges, scan.vertex_normals  # computed for the old winding
    rewound = scan.rewound(faces)
    fresh = metrics.surface_metrics(pred, Mesh(gt.vertices, faces), region, 1.0, n_samples=4000)
    assert metrics.surface_metrics(pred, rewound, region, 1.0, n_samples=4000) == fresh
    with pytest.raises(ValueError, match="own triangles"):
        scan.rewound(faces[::-1][:10])


def test_open_edges_against_counting_every_edge():
    mesh = grid(0, 1, 0, 1, 6, 5)
    keep = np.random.default_rng(1).random(len(mesh.faces)) > 0.3  # holes
    f = mesh.faces[keep]
    from collections import Counter

    uses = Counter(tuple(sorted((int(t[(k + 1) % 3]), int(t[(k + 2) % 3])))) for t in f for k in range(3))
    open_edge, open_vertex = metrics.open_edges(f)
    for i, t in enumerate(f):
        for k in range(3):
            assert open_edge[i, k] == (uses[tuple(sorted((int(t[(k + 1) % 3]), int(t[(k + 2) % 3]))))] == 1)
    on = {v for e, n in uses.items() if n == 1 for v in e}
    assert set(np.flatnonzero(open_vertex)) == on and 0 < len(on) < len(mesh.vertices)


def test_stratified_samples_give_every_face_its_share():
    mesh = grid(0, 1, 0, 1, 10, 10)  # 200 faces of equal area
    _, face_idx, bary = metrics.sample_surface(mesh.vertices, mesh.faces, 800, seed=3)
    assert (np.bincount(face_idx, minlength=200) == 4).all()  # exactly 4 per face (independent draws: not)
    _, iid, _ = metrics.sample_surface(mesh.vertices, mesh.faces, 800, seed=3, stratified=False)
    assert not (np.bincount(iid, minlength=200) == 4).all()
    assert (bary >= 0).all() and np.allclose(bary.sum(1), 1)
    # a mean over the samples varies less from seed to seed than with independent samples
    s = sphere(1.0, 3)
    spread = {}
    for strat in (True, False):
        z = [metrics.sample_surface(s.vertices, s.faces, 2000, seed=k, stratified=strat)[0][:, 2].mean() for k in range(20)]
        spread[strat] = np.std(z)
    assert spread[True] < 0.5 * spread[False]
