"""Options, DATA_FOLDER paths, atomic writes and mesh I/O."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mvfr.atomic_io import atomic_path, keep_in_memory, load_image, load_npy, save_image, save_json, save_npy
from mvfr.datafolder import DataError, DataFolder, RawFolder, expression_dirname, face_id, parse_face_id
from mvfr.mesh_io import Mesh, read_mesh, read_obj, vertex_normals, write_mesh, write_obj
from mvfr.template import load_template
from options import build_parser, parse_options

from conftest import ROOT


# ----------------------------------------------------------------------------------------- options


def test_options_precedence_defaults_config_cli(tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"normal_smooth_iters": 5, "d_size": 51}))
    opt = parse_options("eval_if", [])
    assert opt.normal_smooth_iters == 2 and opt.d_size == 201 and opt.interval_scale == 0.2
    opt = parse_options("eval_if", ["--config", str(cfg)])
    assert opt.normal_smooth_iters == 5 and opt.d_size == 51
    opt = parse_options("eval_if", ["--config", str(cfg), "--normal_smooth_iters", "0"])
    assert opt.normal_smooth_iters == 0 and opt.d_size == 51
    assert parse_options("train_if", []).mlp_dim == [258, 1024, 512, 256, 128, 1]


def test_options_unknown_config_key_is_an_error(tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"uv_sise": 128}))
    with pytest.raises(SystemExit):
        parse_options("gen_maps", ["--config", str(cfg)])
    assert "uv_sise" in capsys.readouterr().err


def test_every_length_option_says_mm():
    for stage in ("gen_maps", "train_if", "eval_reg", "gen_tex"):
        for action in build_parser(stage)._actions:
            if action.dest in ("interval_scale", "sigma", "search_range_mm"):
                assert "mm" in action.help, action.dest


def test_mkdirs_script_builds_tree(tmp_path):
    out = subprocess.run(
        [sys.executable, "mkdirs.py", "--dataroot", str(tmp_path / "DATA")], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    for d in DataFolder(tmp_path / "DATA").tree():
        assert d.is_dir(), d


# -------------------------------------------------------------------------------------- datafolder


def test_face_ids_and_paths(tmp_path):
    assert face_id(12, 3) == "012_03" and parse_face_id("012_03") == (12, 3)
    with pytest.raises(DataError, match="PPP_EE"):
        parse_face_id("12-3")
    assert expression_dirname(3) == "3_mouth_stretch"
    raw, data = RawFolder(tmp_path / "R"), DataFolder(tmp_path / "D")
    assert raw.image("012_03", "5") == tmp_path / "R/imgs/12/3_mouth_stretch/5.jpg"
    assert raw.scan("012_03") == tmp_path / "R/mesh/12/3_mouth_stretch.ply"
    assert data.image("012_03", "5") == tmp_path / "D/images/012/03/5.jpg"
    assert data.map("train", "pos_map", "012_03") == tmp_path / "D/maps/train/pos_map/pos_map_012_03.npy"
    assert data.volume("eval", "012_03") == tmp_path / "D/volume/eval/ori_volume_012_03.npy"
    with pytest.raises(ValueError, match="split"):
        data.map("test", "pos_map", "012_03")


def test_metadata_readers(tmp_path):
    data = DataFolder(tmp_path)
    save_json(data.id_json, {"train": ["1_1", "002_03"], "eval": ["3_1"]})
    save_json(data.select_dict_json, {"1": {"1": [0, 2, 5]}})
    save_json(data.rt_scale_json, {"1": {"1": [0.75, np.eye(3, 4).tolist()]}})
    assert data.face_ids("train") == ["001_01", "002_03"]
    assert data.selected_views("001_01") == ["0", "2", "5"]
    assert data.mm_per_unit("001_01") == 0.75
    with pytest.raises(DataError, match="no entry"):
        data.selected_views("002_03")
    with pytest.raises(DataError, match="no scale for face 002_03"):
        data.mm_per_unit("002_03")
    assert DataFolder(tmp_path / "none").mm_per_unit("001_01") == 1.0


# --------------------------------------------------------------------------------------- atomic io


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "a.npy"
    save_npy(target, np.arange(3))
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("killed")
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert sorted(os.listdir(tmp_path)) == ["a.npy"]


def test_keep_in_memory_serves_unchanged_files_only(tmp_path, monkeypatch):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = tmp_path / "a.npy"
    reads = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda p, *k, **kw: reads.append(p) or real_load(p, *k, **kw))
    with keep_in_memory():
        save_npy(path, a)
        got = load_npy(path)
        assert reads == [] and np.array_equal(got, a)  # served from memory, the file still written
        got[0, 0] = -1  # a writable copy: the cache is not changed through it
        assert load_npy(path)[0, 0] == 0
        np.save(path, a + 1)  # the file changes behind the cache's back (new mtime or size)
        os.utime(path, ns=(1, 1))
        assert np.array_equal(load_npy(path), a + 1) and len(reads) == 1
    assert np.array_equal(real_load(path), a + 1)
    with keep_in_memory(budget_mb=a.nbytes * 1.5 / 2**20):  # room for one array
        save_npy(tmp_path / "b.npy", a)
        save_npy(tmp_path / "c.npy", a)
        reads.clear()
        load_npy(tmp_path / "c.npy")
        load_npy(tmp_path / "b.npy")  # evicted when c came in
        assert len(reads) == 1
    reads.clear()
    load_npy(path)  # outside the block nothing is kept
    load_npy(path)
    assert len(reads) == 2


def test_image_round_trip_and_corrupt_image(tmp_path):
    img = (np.random.default_rng(0).random((8, 10, 3)) * 255).astype(np.uint8)
    save_image(tmp_path / "a.png", img)
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), img)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ValueError, match="bad.jpg"):
        load_image(tmp_path / "bad.jpg")
    with pytest.raises(ValueError, match="does not exist"):
        load_image(tmp_path / "missing.jpg")


# ----------------------------------------------------------------------------------------- mesh io


def test_template_loads_with_uvs():
    from mvfr.face_model import load_face_model

    t, m = load_template(), load_face_model()
    n_v = m.num_vertices
    assert t.vertices.shape == (n_v, 3) and t.faces.shape == m.faces.shape and t.uvs.shape == (n_v, 2)
    np.testing.assert_array_equal(t.face_uvs, t.faces)  # one uv per vertex
    # Faces are counter-clockwise seen from the front (+z): the mean normal points to +z.
    n = vertex_normals(t.vertices, t.faces).sum(0)
    assert n[2] / np.linalg.norm(n) > 0.8


def test_obj_round_trip_with_uvs_normals_and_texture(tmp_path):
    t = load_template()
    m = Mesh(t.vertices, t.faces, t.uvs, t.face_uvs, vertex_normals(t.vertices, t.faces))
    tex = np.zeros((4, 4, 3), np.uint8)
    write_obj(tmp_path / "m.obj", m, texture_image=tex)
    back = read_obj(tmp_path / "m.obj")
    np.testing.assert_allclose(back.vertices, m.vertices, atol=1e-6)
    np.testing.assert_array_equal(back.faces, m.faces)
    np.testing.assert_allclose(back.vertex_uvs(), m.uvs, atol=1e-6)
    np.testing.assert_allclose(back.normals, m.normals, atol=1e-6)
    assert "map_Kd m.png" in (tmp_path / "m.mtl").read_text() and (tmp_path / "m.png").is_file()


def test_ply_round_trip_keeps_uvs(tmp_path):
    t = load_template()
    write_mesh(tmp_path / "m.ply", t)
    back = read_mesh(tmp_path / "m.ply")
    np.testing.assert_allclose(back.vertices, t.vertices, atol=1e-5)
    np.testing.assert_allclose(back.vertex_uvs(), t.uvs, atol=1e-6)


def test_obj_polygons_are_triangulated_and_errors_name_the_line(tmp_path):
    (tmp_path / "q.obj").write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nf 1 2 3 4\n")
    assert read_obj(tmp_path / "q.obj").faces.tolist() == [[0, 1, 2], [0, 2, 3]]
    (tmp_path / "bad.obj").write_text("v 0 0 0\nv 1 x 0\n")
    with pytest.raises(ValueError, match=r"bad\.obj:2"):
        read_obj(tmp_path / "bad.obj")
    (tmp_path / "oob.obj").write_text("v 0 0 0\nf 1 2 3\n")
    with pytest.raises(ValueError, match="does not exist"):
        read_obj(tmp_path / "oob.obj")


def test_binary_ply_fast_path_reads_what_trimesh_reads(tmp_path):
    import trimesh

    from mvfr.mesh_io import _read_ply_binary, read_ply, write_ply

    rng = np.random.default_rng(0)
    v, f, uv = rng.normal(size=(50, 3)), rng.integers(0, 50, (80, 3)), rng.random((50, 2))
    write_ply(tmp_path / "m.ply", Mesh(v, f, uvs=uv, face_uvs=f))
    fast = _read_ply_binary(tmp_path / "m.ply")
    tm = trimesh.load(tmp_path / "m.ply", file_type="ply", process=False, force="mesh")
    assert fast is not None
    np.testing.assert_array_equal(fast.vertices, tm.vertices)
    np.testing.assert_array_equal(fast.faces, tm.faces)
    np.testing.assert_array_equal(fast.uvs, tm.visual.uv)
    # quads and ASCII files are not the fast path's: trimesh reads (and triangulates) them
    quad = "ply\nformat ascii 1.0\nelement vertex 4\nproperty float x\nproperty float y\nproperty float z\n" \
           "element face 1\nproperty list uchar int vertex_indices\nend_header\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 3\n"
    (tmp_path / "q.ply").write_text(quad)
    assert _read_ply_binary(tmp_path / "q.ply") is None and len(read_ply(tmp_path / "q.ply").faces) == 2
