"""gen_synthetic.py and mvfr.synthesis (v2, ICT Face Model): loader, expressions, correspondence, ground truth, rig."""

import json

import numpy as np
import pytest

from mvfr.camera import read_params
from mvfr.datafolder import EXPRESSION_NAMES, RawFolder
from mvfr.mesh_io import read_ply
from mvfr.uv_rasterizer import template_to_ict_uv
from mvfr.synthesis import capture, correspondence, expressions, head, ict, meso, rig

TINY = ["--num_ids", "2", "--num_exps", "1", "--num_views", "3", "--image_long_side", "256", "--seed", "3",
        "--dpmap_size", "128", "--albedo_size", "256"]


@pytest.fixture(scope="module")
def tiny_raw(tmp_path_factory):
    import gen_synthetic

    out = tmp_path_factory.mktemp("raw")
    assert gen_synthetic.main(["--out", str(out)] + TINY) == 0
    return RawFolder(out)


@pytest.fixture(scope="module")
def model():
    return ict.load_model()


# ---------------------------------------------------------------------------------- ICT loader
def test_one_hot_identity_reproduces_that_mode(model):
    raw = np.load(ict.ICT_NPZ)
    for k in (0, 37, 99):
        w = np.zeros(100)
        w[k] = 1.0
        expect = (raw["neutral"].astype(np.float64) + raw["identity"][k]) * 10.0  # cm -> mm
        assert np.abs(model.head(w) - expect).max() < 1e-4
    e = np.zeros(53)
    e[model.expression_index("jawOpen")] = 1.0
    expect = (raw["neutral"].astype(np.float64) + raw["expression"][model.expression_index("jawOpen")]) * 10.0
    assert np.abs(model.head(None, e) - expect).max() < 1e-4
    with pytest.raises(ValueError, match="shape"):
        model.head(np.zeros(7))


def test_triangulation_keeps_quads_and_winding(model):
    quads = np.array([[0, 1, 2, 3], [4, 5, 6, -1]])
    tris, src = ict.triangulate_quads(quads)
    assert tris.tolist() == [[0, 1, 2], [0, 2, 3], [4, 5, 6]] and src.tolist() == [0, 0, 1]
    n_quads = int((model.quads[:, 3] >= 0).sum())
    assert len(model.faces) == len(model.quads) + n_quads
    # the face area's normals point out of the face (towards +z at the nose tip)
    v = model.head()
    n = head.fast_vertex_normals(v, model.faces[model.part_faces("face")])
    assert n[model.landmarks68[30], 2] > 0.8


def test_identity_sampling_deterministic_and_varied(model):
    a = ict.sample_identity_weights(np.random.default_rng(1))
    b = ict.sample_identity_weights(np.random.default_rng(1))
    c = ict.sample_identity_weights(np.random.default_rng(2))
    assert np.array_equal(a, b) and not np.allclose(a, c)
    d = np.linalg.norm(model.head(a) - model.head(c), axis=1)[:9409]
    assert np.sqrt((d**2).mean()) > 2.0  # mm: two people differ by millimetres over the face


# ------------------------------------------------------------------------------------ expressions
def test_every_facescape_expression_maps_to_shapes(model):
    assert set(expressions.EXPRESSION_MAP) == set(EXPRESSION_NAMES)
    for name in EXPRESSION_NAMES:
        w = expressions.expression_weights(name, model.expression_names)
        assert w.shape == (53,) and w.min() >= 0 and w.max() <= 1
        assert (w.sum() == 0) == (name == "neutral")
    assert len({tuple(expressions.expression_weights(n, model.expression_names)) for n in EXPRESSION_NAMES}) == 20
    with pytest.raises(KeyError, match="unknown FaceScape expression"):
        expressions.expression_weights("yawn", model.expression_names)


def test_expressions_move_the_face_as_named(model):
    lm = model.landmarks68
    v0 = model.head()

    def face(name):
        return model.head(None, expressions.expression_weights(name, model.expression_names))

    smile, stretch, closed, brows = face("smile"), face("mouth_stretch"), face("eye_closed"), face("brow_raiser")
    assert smile[lm[48], 1] - v0[lm[48], 1] > 2.0  # mouth corners rise (mm)
    assert v0[lm[8], 1] - stretch[lm[8], 1] > 10.0  # the chin drops: open mouth
    gap0 = v0[lm[37], 1] - v0[lm[41], 1]
    assert closed[lm[37], 1] - closed[lm[41], 1] < 0.3 * gap0  # upper and lower lid meet
    assert brows[lm[19], 1] - v0[lm[19], 1] > 3.0  # brows go up
    for name in expressions.OPEN_MOUTH:
        w = expressions.expression_weights(name, model.expression_names)
        assert w[model.expression_index("jawOpen")] >= 0.25


# -------------------------------------------------------------------------------- correspondence
def test_correspondence_lands_where_the_landmarks_are(model):
    tri, bary = correspondence.load_correspondence()
    assert tri.shape == (468,) and bary.shape == (468, 3)
    assert np.allclose(bary.sum(1), 1) and bary.min() >= 0
    assert model.part_faces("face")[tri].all()
    v = model.head()
    p = correspondence.surface_points(v, tri, bary)
    lm = model.landmarks68
    # MediaPipe 1 (nose tip), 33 / 263 (outer eye corners), 61 / 291 (mouth corners), 152 (chin)
    # (the two annotation schemes place the nose tip and the chin a few mm apart)
    for mp, ibug, tol in ((1, 30, 9.0), (33, 36, 5.0), (263, 45, 5.0), (61, 48, 5.0), (291, 54, 5.0), (152, 8, 9.0)):
        assert np.linalg.norm(p[mp] - v[lm[ibug]]) < tol, (mp, ibug, np.linalg.norm(p[mp] - v[lm[ibug]]))


def test_landmarks_lie_on_the_scan_surface(model):
    import igl

    rng = np.random.default_rng(0)
    coarse = model.head(ict.sample_identity_weights(rng), expressions.expression_weights("smile", model.expression_names))

    def bumps(uv):
        return 0.3 * np.sin(uv[:, 0] * 400) * np.cos(uv[:, 1] * 300)

    scan = head.build_scan(coarse, bumps)
    lm = correspondence.landmarks_on_scan(scan)
    d, _, _ = igl.point_mesh_squared_distance(lm, scan.vertices, scan.faces)
    assert np.sqrt(d).max() < 1e-6
    # and they follow the detail: without it the landmarks move by the bumps' size, not more
    lm0 = correspondence.landmarks_on_scan(head.build_scan(coarse, None))
    shift = np.linalg.norm(lm - lm0, axis=1)
    assert 0.01 < shift.max() < 0.35


def test_template_dpmap_follows_the_face_tile(model):
    size = 64
    uv, cov = template_to_ict_uv(size)
    assert cov.mean() > 0.3 and (uv[cov] >= 0).all() and (uv[cov] <= 1).all()
    h = np.zeros((256, 256), np.float32)
    h[:, 128:] = 1.0  # the subject's left half of the face tile (u > 0.5) is raised by 1 mm
    dp = correspondence.template_dpmap(h, size)
    assert dp.shape == (size, size) and dp.dtype == np.float32
    assert np.all(dp[~cov] == 0)
    left = cov & (uv[..., 0] > 0.55)
    right = cov & (uv[..., 0] < 0.45)
    assert dp[left].mean() > 0.95 and dp[right].mean() < 0.05


def test_shape_field_leaves_the_ict_span_smoothly(model):
    """The person's shape field: the RMS asked for over the face, smooth (a few mm over tens of mm), rigid on
    the eyeballs, and out of the model's span (the best ICT fit of the warped face leaves most of it)."""
    rng = np.random.default_rng(5)
    neutral = model.head(ict.sample_identity_weights(rng))
    field = head.shape_field(neutral, np.random.default_rng(6), 2.0)
    face = np.unique(model.faces[model.part_faces("face")])
    assert np.sqrt((field[face] ** 2).sum(1).mean()) == pytest.approx(2.0, rel=1e-6)
    assert np.abs(head.shape_field(neutral, rng, 0.0)).max() == 0.0
    edges = model.faces[model.part_faces("face")][:, :2]
    grad = np.linalg.norm(field[edges[:, 0]] - field[edges[:, 1]], axis=1) / np.linalg.norm(
        neutral[edges[:, 0]] - neutral[edges[:, 1]], axis=1)
    assert np.percentile(grad, 99) < 0.3  # mm per mm: smooth
    a, b = ict.PART_VERTICES["eyeball_left"]
    assert np.ptp(field[a : b + 1], axis=0).max() < 1e-9  # the eyeball moves rigidly
    some = face[::3]
    basis = np.concatenate([model.identity, model.expression])[:, some].reshape(153, -1).astype(np.float64)
    coef, *_ = np.linalg.lstsq(basis.T, field[some].ravel(), rcond=None)
    left = field[some].ravel() - basis.T @ coef
    assert np.sqrt(np.mean(left**2) * 3) > 0.25 * 2.0  # even a free fit of all 153 modes leaves a quarter (0.59 mm)


def test_template_to_ict_uv_is_exact(model):
    """Known answer: a template texel's point on the base model's mean face and the mean ICT head's point
    at the texel's ICT uv (the face tile rasterised independently, :func:`ict.uv_tile_map`) coincide;
    the fills (eyes, mouth, nostrils) have no ICT uv."""
    from mvfr.face_model import load_face_model
    from mvfr.uv_rasterizer import interpolate_attribute, template_uv_table

    size = 128
    uv, cov = template_to_ict_uv(size)
    fm = load_face_model()
    table = template_uv_table(size)
    on_template = interpolate_attribute(table, fm.faces, fm.mean)[cov]
    tile, tile_cov = ict.uv_tile_map(model, model.head(), 1024)
    inside = meso.sample_at(tile_cov.astype(np.float32), uv[cov]) > 0.999
    on_ict = meso.sample_at(tile, uv[cov])
    err = np.linalg.norm(on_ict - on_template, axis=1)[inside]
    assert inside.mean() > 0.95 and np.median(err) < 0.05 and np.percentile(err, 99) < 0.5, (np.median(err), np.percentile(err, 99))
    fill = table.covered & fm.fill[np.where(table.covered, table.face_index, 0)]
    assert fill.sum() > 50 and not (cov & fill).any()


# ------------------------------------------------------------------------------------------- rig
@pytest.mark.parametrize("layout", rig.LAYOUTS)
def test_rig_layouts_stay_in_range(layout):
    for n in (2, 3, 6, 10, 16):
        views = rig.sample_rig(n, 640, np.random.default_rng(n), layout=layout)
        assert len(views) == n
        for v in views:
            assert abs(v.yaw_deg) <= rig.MAX_YAW_DEG and abs(v.pitch_deg) <= rig.MAX_PITCH_DEG
            c = v.camera_mm
            z = c.Rt[:, :3] @ rig.FACE_TARGET_MM + c.Rt[:, 3]
            assert 400 < z[2] < 1200  # mm in front of the camera
    yaws = sorted(v.yaw_deg for v in rig.sample_rig(10, 640, np.random.default_rng(0), layout=layout))
    assert yaws[-1] - yaws[0] > 60  # ten views spread around the face


def test_mixed_image_sizes_span_the_range():
    rng = np.random.default_rng(0)
    mp = [np.prod(rig.image_size(1296, bool(k % 2), rng, True)) / 1e6 for k in range(400)]
    assert 0.45 < min(mp) < 1.0 and 8 < max(mp) < 12.5
    W, H = rig.image_size(1296, True, rng, False)
    assert H > W and 1150 < H < 1440


# ----------------------------------------------------------------------------------- the dataset
def test_tiny_dataset_layout(tiny_raw):
    raw = tiny_raw
    ids = json.loads(raw.id_json.read_text())
    assert ids == {"train": ["001_01"], "eval": ["002_01"]}
    sel = json.loads(raw.select_dict_json.read_text())
    rts = json.loads(raw.rt_scale_json.read_text())
    for fid, (p, e) in (("001_01", ("1", "1")), ("002_01", ("2", "1"))):
        assert raw.capture_dir(fid).name == "1_neutral"
        assert sorted(sel[p][e]) == [0, 1, 2]
        s, Rt = rts[p][e]
        assert 0.3 <= s <= 3.0 and np.asarray(Rt).shape == (3, 4)
        cams = read_params(raw.params(fid))
        assert sorted(cams) == ["0", "1", "2"]
        assert sum(not c.valid for c in cams.values()) == 1
        for v, c in cams.items():
            assert raw.image(fid, v).is_file()
            assert 220 <= max(c.width, c.height) <= 290
        dp = np.load(raw.meso_dpmap(fid))
        assert dp.dtype == np.float32 and dp.shape == (128, 128)
        assert np.load(raw.landmarks3d(fid)).shape == (468, 3)
        scan = read_ply(raw.scan(fid))
        region = np.load(raw.region(fid))
        assert region.dtype == bool and region.shape == (len(scan.vertices),)
        assert 100_000 < region.sum() < len(region)


def test_region_is_the_face_without_eyeballs_and_mouth(tiny_raw, model):
    raw = tiny_raw
    scan = read_ply(raw.scan("001_01"))
    region = np.load(raw.region("001_01"))
    rts = json.loads(raw.rt_scale_json.read_text())
    s, Rt = rts["1"]["1"]
    Rt = np.asarray(Rt)
    v_mm = s * (scan.vertices @ Rt[:, :3].T + Rt[:, 3])  # back to the head frame
    lm = s * (np.load(raw.landmarks3d("001_01")) @ Rt[:, :3].T + Rt[:, 3])
    # the region reaches the eyelids and lips but no eyeball, tooth or tongue vertex
    skin_n = head.part_subdivision(head.SKIN_PARTS, head.SCAN_LEVEL).S.shape[0]
    assert not region[skin_n:].any()
    near_nose = np.linalg.norm(v_mm - lm[1], axis=1) < 6
    assert region[near_nose].all()
    # but not the nostril interiors (no scanner sees them): vertices only their faces use are out
    skin = head.part_subdivision(head.SKIN_PARTS, head.SCAN_LEVEL)
    inner = np.isin(skin.coarse_face, head.nostril_interior_triangles())
    used_outside = np.zeros(skin_n, dtype=bool)
    used_outside[skin.faces[~inner].ravel()] = True
    only_inner = ~used_outside
    only_inner[np.unique(skin.faces[~inner])] = False
    only_inner &= np.isin(np.arange(skin_n), skin.faces[inner])
    assert only_inner.sum() > 1000 and not region[:skin_n][only_inner].any()


def test_rt_scale_maps_capture_back_to_head_frame(tiny_raw, model):
    raw = tiny_raw
    rts = json.loads(raw.rt_scale_json.read_text())
    s, Rt = rts["2"]["1"]
    Rt = np.asarray(Rt)
    lm_mm = s * (np.load(raw.landmarks3d("002_01")) @ Rt[:, :3].T + Rt[:, 3])
    tri, bary = correspondence.load_correspondence()
    mean = correspondence.surface_points(model.head(), tri, bary)
    # same frame as the model: identities vary by millimetres, not by the random rigid motion
    assert np.median(np.linalg.norm(lm_mm - mean, axis=1)) < 12.0


def test_deterministic_and_seed_dependent():
    opt = capture.SynthOptions(num_views=2, image_long_side=96, dpmap_size=32, albedo_size=128, seed=5)
    a = capture.synthesize_capture(1, 2, opt)
    b = capture.synthesize_capture(1, 2, opt)
    assert np.array_equal(a.scan.vertices, b.scan.vertices)
    assert all(np.array_equal(a.images[v], b.images[v]) for v in a.images)
    assert a.rt_scale == b.rt_scale and np.array_equal(a.dpmap, b.dpmap)
    c = capture.synthesize_capture(1, 2, capture.SynthOptions(num_views=2, image_long_side=96, dpmap_size=32, albedo_size=128, seed=6))
    assert not np.allclose(a.landmarks_mm, c.landmarks_mm)
    plan = capture.capture_plan(1, 2, opt)
    assert plan.rt_scale == a.rt_scale and plan.select_views() == capture.select_views(a)


def test_bad_arguments_are_errors():
    import gen_synthetic

    with pytest.raises(ValueError, match="outside"):
        capture.synthesize_capture(1, 21, capture.SynthOptions(num_views=2, image_long_side=64))
    with pytest.raises(ValueError, match="layout"):
        rig.view_angles(4, "helix")
    assert gen_synthetic.main(["--out", "unused", "--num_views", "1"]) == 2


def test_v1_world_still_reproduces_its_data(tmp_path):
    """``--world v1`` (the shipped checkpoints' training data) still runs and is deterministic."""
    import gen_synthetic

    args = ["--world", "v1", "--num_ids", "1", "--num_exps", "1", "--num_views", "2", "--image_long_side", "96",
            "--dpmap_size", "64", "--albedo_size", "128", "--seed", "11"]
    assert gen_synthetic.main(["--out", str(tmp_path / "a")] + args) == 0
    assert gen_synthetic.main(["--out", str(tmp_path / "b")] + args) == 0
    a, b = RawFolder(tmp_path / "a"), RawFolder(tmp_path / "b")
    assert np.array_equal(read_ply(a.scan("001_01")).vertices, read_ply(b.scan("001_01")).vertices)
    assert read_ply(a.scan("001_01")).uvs is not None  # v1 scans carry the template's uvs
    assert not a.region("001_01").exists()


def test_dpmap_only_rewrite_equals_full_generation(tiny_raw, tmp_path):
    """``--dpmap_only`` rewrites RAW/dpmap from the seed alone: the same bytes a full run writes, nothing else touched."""
    import shutil

    import gen_synthetic

    copy = tmp_path / "raw"
    shutil.copytree(tiny_raw.root, copy)
    raw = RawFolder(copy)
    fids = json.loads(raw.id_json.read_text())["train"] + json.loads(raw.id_json.read_text())["eval"]
    full = {f: np.load(raw.meso_dpmap(f)) for f in fids}
    image = raw.image(fids[0], "0")
    stamp = image.stat().st_mtime_ns
    for f in fids:
        np.save(raw.meso_dpmap(f), np.zeros_like(full[f]))
    assert gen_synthetic.main(["--out", str(copy), "--dpmap_only"] + TINY) == 0
    for f in fids:
        again = np.load(raw.meso_dpmap(f))
        assert again.dtype == np.float32 and np.abs(again).max() > 0
        np.testing.assert_array_equal(again, full[f])
    assert image.stat().st_mtime_ns == stamp
    assert gen_synthetic.main(["--out", str(copy), "--dpmap_only", "--world", "v1"] + TINY) == 2


def test_scan_only_rewrites_the_scans_at_another_level(tiny_raw, tmp_path):
    """``--scan_only`` rewrites RAW/mesh and RAW/region from the seed alone: at the tree's level the same
    scan a full run writes; at another level another tessellation of the same head; images untouched."""
    import shutil

    import gen_synthetic
    from mvfr.metrics import point_to_mesh

    copy = tmp_path / "raw"
    shutil.copytree(tiny_raw.root, copy)
    raw = RawFolder(copy)
    fid = json.loads(raw.id_json.read_text())["train"][0]
    full, region = read_ply(raw.scan(fid)), np.load(raw.region(fid))
    image = raw.image(fid, "0")
    stamp = image.stat().st_mtime_ns
    raw.scan(fid).write_bytes(b"ply")  # broken: rewritten from the seed
    assert gen_synthetic.main(["--out", str(copy), "--scan_only"] + TINY) == 0
    again = read_ply(raw.scan(fid))
    assert np.array_equal(again.faces, full.faces) and np.array_equal(np.load(raw.region(fid)), region)
    np.testing.assert_allclose(again.vertices, full.vertices, atol=1e-4)
    assert gen_synthetic.main(["--out", str(copy), "--scan_only", "--scan_level", "2"] + TINY) == 0
    coarse, coarse_region = read_ply(raw.scan(fid)), np.load(raw.region(fid))
    assert len(coarse.vertices) < len(full.vertices) and len(coarse_region) == len(coarse.vertices)
    d, _, _ = point_to_mesh(coarse.vertices[coarse_region][::20], full.vertices, full.faces)
    assert np.median(d) < 2e-3 * np.linalg.norm(np.ptp(full.vertices, axis=0))  # the same head
    assert image.stat().st_mtime_ns == stamp
