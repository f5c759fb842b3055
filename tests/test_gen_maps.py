"""gen_maps.py end to end on a tiny made-up dataset, with a stand-in detector (projected landmarks + noise)."""

import json

import numpy as np
from mvfr.atomic_io import save_image, save_json
from mvfr.camera import Camera, write_params
from mvfr.datafolder import DataFolder, RawFolder
from mvfr.face_model import load_face_model
from mvfr.mesh_io import Mesh, read_mesh, read_obj, vertex_normals, write_ply
from tests.test_fitting import MM_PER_UNIT, R_TRUE, facial_vertices, true_face
from tests.test_triangulation import look_at

W, H, F = 432, 288, 600.0


class StandInDetector:
    """Reads the view index from pixel (0, 0) and returns that view's projected landmarks (+ noise)."""

    def __init__(self, per_view):
        self.per_view = per_view

    def detect(self, image):
        lm = self.per_view[int(image[0, 0, 0]) // 10]
        return (None, 0.0) if lm is None else (lm.copy(), 1.0)


def make_dataset(tmp_path, fids=("001_01", "002_01"), V=6, dead_views=None):
    rng = np.random.default_rng(0)
    data, raw = DataFolder(tmp_path / "data"), RawFolder(tmp_path / "raw")
    model = load_face_model()
    X = true_face()
    lm = model.landmarks(X)
    centre = lm.mean(0)
    K = np.array([[F, 0, (W - 1) / 2], [0, F, (H - 1) / 2], [0, 0, 1.0]])
    cams, per_view = {}, []
    for v, a in enumerate(np.radians(np.linspace(-50, 50, V))):
        c = centre + 250.0 * np.array([np.sin(a), 0.1 * np.cos(3 * a), np.cos(a)]) @ R_TRUE.T
        up = -(R_TRUE @ np.array([0, 1.0, 0]))
        cams[str(v)] = Camera(K, look_at(c, centre, up), W, H)
        pix, _ = cams[str(v)].project(lm)
        per_view.append(pix + rng.normal(0, 0.5, pix.shape))
    for fid in fids:
        write_params(data.params(fid), cams)
        for v in range(V):
            save_image(data.image(fid, str(v)), np.full((H, W, 3), 10 * v, np.uint8))
        # GT scan: the true face 1 mm outside along its normals
        gt = Mesh(X + vertex_normals(X, model.faces) / MM_PER_UNIT, model.faces)
        write_ply(raw.scan(fid), gt)
    pids = {fid.split("_")[0].lstrip("0") for fid in fids}
    save_json(data.select_dict_json, {p: {"1": [str(v) for v in range(V)]} for p in pids})
    save_json(data.id_json, {"train": list(fids), "eval": list(fids)})
    save_json(data.rt_scale_json, {p: {"1": [MM_PER_UNIT]} for p in pids})
    return data, raw, per_view


def test_gen_maps_train_end_to_end(tmp_path):
    import gen_maps
    from options import parse_options

    data, raw, per_view = make_dataset(tmp_path)
    opt = parse_options("gen_maps", ["--dataroot", str(data.root), "--facescape_dataroot", str(raw.root),
                                     "--split", "train", "--uv_size", "64", "--ids", "001_01"])
    maker = gen_maps.MapMaker(opt, detector=StandInDetector(per_view))
    summary = maker.process("001_01")
    assert maker.done("001_01")
    assert summary["num_ok"] == 468 and summary["reproj_median_px"] < 1.0
    mesh = read_obj(data.fit_mesh("001_01"))
    assert mesh.uvs is not None and len(mesh.vertices) == load_face_model().num_vertices
    err_mm = np.linalg.norm(mesh.vertices - true_face(), axis=1)[facial_vertices()] * MM_PER_UNIT
    assert np.median(err_mm) < 0.8, np.median(err_mm)
    pos = np.load(data.map("train", "pos_map", "001_01"))
    nrm = np.load(data.map("train", "norm_map", "001_01"))
    mv = np.load(data.map("train", "mv_map", "001_01"))
    valid = np.load(data.map("train", "valid_map", "001_01"))
    assert pos.shape == (64, 64, 3) and pos.dtype == np.float32 and nrm.dtype == np.float32
    assert mv.shape == (64, 64) and mv.dtype == np.float32 and valid.dtype == bool
    assert valid.sum() > 0.9 * maker.mask.sum() and not (valid & ~maker.mask).any()
    assert 0.5 < np.median(mv[valid]) * MM_PER_UNIT < 1.5  # the scan is 1 mm outside the truth, the base near it
    import igl

    gt = read_mesh(raw.scan("001_01"))
    hit = (pos + nrm * mv[..., None])[valid].astype(np.float64)
    d2, _, _ = igl.point_mesh_squared_distance(hit, gt.vertices, gt.faces)
    assert np.sqrt(d2).max() * MM_PER_UNIT < 0.01  # mv_map lands on the scan
    rec = json.loads(data.landmarks("001_01").read_text())
    assert rec["views"] == [str(v) for v in range(6)] and len(rec["points3d"]) == 468


def test_gen_maps_eval_never_reads_ground_truth_and_failed_face_is_reported(tmp_path, monkeypatch):
    import gen_maps
    from mvfr.stage import run_faces
    from options import parse_options

    data, raw, per_view = make_dataset(tmp_path)
    for fid in ("001_01", "002_01"):
        raw.scan(fid).unlink()  # eval must not need it
    opt = parse_options("gen_maps", ["--dataroot", str(data.root), "--facescape_dataroot", str(raw.root),
                                     "--split", "eval", "--uv_size", "32"])
    only_one = [per_view[0]] + [None] * (len(per_view) - 1)
    maker = gen_maps.MapMaker(opt, detector=StandInDetector(per_view))
    good = maker.process
    bad_maker = gen_maps.MapMaker(opt, detector=StandInDetector(only_one))

    def process(fid):
        return good(fid) if fid == "001_01" else bad_maker.process(fid)

    summary = run_faces(["001_01", "002_01"], process, done=maker.done, desc="gen_maps")
    assert summary.done == ["001_01"] and list(summary.failed) == ["002_01"]
    msg = summary.failed["002_01"]
    assert "002_01" in msg and "only 1 of 6 views" in msg and "['1', '2', '3', '4', '5']" in msg
    assert data.map("eval", "pos_map", "001_01").is_file()
    assert not data.map("eval", "mv_map", "001_01").exists()
