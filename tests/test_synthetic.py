"""gen_synthetic.py and mvfr.synthesis: layout, determinism, ground truth, geometry, rig."""

import json
import time

import numpy as np
import pytest

from mvfr.camera import read_params
from mvfr.datafolder import RawFolder
from mvfr.mesh_io import read_ply
from mvfr.synthesis import capture, shape
from mvfr.template import load_template

TINY = ["--num_ids", "2", "--num_exps", "1", "--num_views", "4", "--image_long_side", "256", "--seed", "3",
        "--dpmap_size", "256", "--albedo_size", "256"]


@pytest.fixture(scope="module")
def tiny_raw(tmp_path_factory):
    import gen_synthetic

    out = tmp_path_factory.mktemp("raw")
    t0 = time.perf_counter()
    assert gen_synthetic.main(["--out", str(out)] + TINY) == 0
    elapsed = time.perf_counter() - t0
    return RawFolder(out), elapsed


def test_tiny_dataset_layout_and_time(tiny_raw):
    raw, elapsed = tiny_raw
    assert elapsed < 30.0, f"tiny dataset took {elapsed:.1f} s"
    ids = json.loads(raw.id_json.read_text())
    assert ids == {"train": ["001_01"], "eval": ["002_01"]}
    sel = json.loads(raw.select_dict_json.read_text())
    rts = json.loads(raw.rt_scale_json.read_text())
    for fid, (p, e) in (("001_01", ("1", "1")), ("002_01", ("2", "1"))):
        assert raw.capture_dir(fid).name == "1_neutral"
        assert sorted(sel[p][e]) == [0, 1, 2, 3]
        s, Rt = rts[p][e]
        assert 0.3 <= s <= 3.0 and np.asarray(Rt).shape == (3, 4)
        cams = read_params(raw.params(fid))
        assert sorted(cams) == ["0", "1", "2", "3"]
        assert sum(not c.valid for c in cams.values()) == 1
        for v, c in cams.items():
            assert raw.image(fid, v).is_file()
            assert max(c.width, c.height) == 256
        assert raw.scan(fid).is_file() and raw.meso_dpmap(fid).is_file() and raw.landmarks3d(fid).is_file()
        dp = np.load(raw.meso_dpmap(fid))
        assert dp.dtype == np.float32 and dp.shape == (256, 256)
        assert np.load(raw.landmarks3d(fid)).shape == (468, 3)


def test_scan_carries_template_uvs_and_landmarks(tiny_raw):
    raw, _ = tiny_raw
    fid = "001_01"
    scan = read_ply(raw.scan(fid))
    uv = scan.vertex_uvs()
    face = (uv >= 0).all(1)
    assert face.sum() >= 100_000, "the face must have at least 100k vertices"
    assert np.allclose(uv[~face], -1.0)
    assert (uv[face] <= 1).all()
    # landmark i is the scan vertex with template uv i
    lm = np.load(raw.landmarks3d(fid))
    tuv = load_template().uvs
    from scipy.spatial import cKDTree

    d, k = cKDTree(uv).query(tuv)
    assert d.max() < 1e-5
    assert np.abs(scan.vertices[k] - lm).max() < 1e-4 * np.abs(lm).max()


def test_rt_scale_maps_capture_back_to_head_frame(tiny_raw):
    raw, _ = tiny_raw
    rts = json.loads(raw.rt_scale_json.read_text())
    s, Rt = rts["2"]["1"]
    Rt = np.asarray(Rt)
    lm_mm = s * (np.load(raw.landmarks3d("002_01")) @ Rt[:, :3].T + Rt[:, 3])
    T = shape.template_mm()
    # same frame as the template: facial proportions vary by centimetres at most, not by the random rigid motion
    assert np.median(np.linalg.norm(lm_mm - T, axis=1)) < 15.0
    assert np.linalg.norm(lm_mm[1] - T[1]) < 20.0  # nose tip


def test_deterministic_and_seed_dependent():
    opt = capture.SynthOptions(num_views=2, image_long_side=96, dpmap_size=128, albedo_size=128, seed=5)
    a = capture.synthesize_capture(1, 2, opt)
    b = capture.synthesize_capture(1, 2, opt)
    assert np.array_equal(a.scan.vertices, b.scan.vertices)
    assert all(np.array_equal(a.images[v], b.images[v]) for v in a.images)
    assert a.rt_scale == b.rt_scale
    c = capture.synthesize_capture(1, 2, capture.SynthOptions(num_views=2, image_long_side=96, dpmap_size=128, albedo_size=128, seed=6))
    assert not np.allclose(a.landmarks_mm, c.landmarks_mm)


def test_identities_and_expressions_differ():
    rng = np.random.default_rng(0)
    a, b = shape.sample_identity(1, rng), shape.sample_identity(2, rng)
    T = shape.template_mm()
    fa, fb = T + a.face_offsets, T + b.face_offsets
    assert np.sqrt(((fa * a.scale - fb * b.scale) ** 2).sum(1).mean()) > 2.0  # mm
    smile = shape.expression_offsets("smile", fa)
    stretch = shape.expression_offsets("mouth_stretch", fa)
    assert np.linalg.norm(smile[61]) > 3.0  # mouth corner moves
    assert stretch[152, 1] < -10.0  # the chin drops when the mouth opens
    assert np.abs(shape.expression_offsets("neutral", fa)).max() == 0


def test_closed_head_mesh():
    import trimesh

    faces, n = shape.head_topology()
    ident = shape.sample_identity(3, np.random.default_rng(1))
    g = shape.build_face(ident, "neutral", levels=1)
    tm = trimesh.Trimesh(g.coarse, faces, process=False)
    assert tm.is_watertight and tm.is_winding_consistent and tm.volume > 2e6  # mm^3: a head, outward normals


def test_detail_map_amplitudes():
    from mvfr.synthesis import detail

    m = detail.detail_map(512, 0.8, "smile", np.random.default_rng(0))
    reg = detail.face_regions(512)
    assert 0.05 < np.abs(m).max() < 0.8  # mm
    assert np.abs(m[~reg["cover"]]).max() < 1e-6  # zero outside the face
    pores = m[(reg["inside"] > 0.99)]
    assert 0.005 < np.median(np.abs(pores)) < 0.1


def test_unknown_expression_is_an_error():
    with pytest.raises(ValueError, match="unknown expression"):
        shape.expression_offsets("yawn", shape.template_mm())
    with pytest.raises(ValueError, match="outside"):
        capture.synthesize_capture(1, 21, capture.SynthOptions(num_views=1, image_long_side=64))
