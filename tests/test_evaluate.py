"""evaluate.py end to end on a synthetic ICT-head scan: the ground truth itself scores 0 mm, the ground
truth pushed 1 mm out scores 1 mm; the facial region comes from --scan_region, RAW/region or the
triangulated landmarks (never the base mesh, never the scan's own uvs); a flipped scan scores alike."""

import dataclasses
import json

import numpy as np
import pytest

from mvfr.atomic_io import save_json, save_npy
from mvfr.datafolder import DataFolder, RawFolder
from mvfr.mesh_io import Mesh, read_mesh, vertex_normals, write_obj, write_ply
from mvfr.synthesis import capture


@pytest.fixture(scope="module")
def scan_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    raw, data = RawFolder(root / "raw"), DataFolder(root / "data")
    opt = capture.SynthOptions(num_views=2, image_long_side=128, dpmap_size=64, albedo_size=128, seed=3)
    if "scan_level" in {f.name for f in dataclasses.fields(opt)}:
        opt = dataclasses.replace(opt, scan_level=1)  # a lighter scan: the metrics' cost is the scan's size
    cap = capture.synthesize_capture(4, 1, opt)
    capture.write_capture(raw, cap)
    save_json(data.id_json, {"train": [], "eval": [cap.fid]})
    save_json(data.rt_scale_json, {"4": {"1": cap.rt_scale}})
    mm_per_unit = float(cap.rt_scale[0])
    fid = cap.fid
    gt = read_mesh(raw.scan(fid))
    # "reg" = the scan itself; "meso" = the scan pushed 1 mm outwards along its vertex normals
    write_obj(data.reg_mesh(fid), Mesh(gt.vertices, gt.faces))
    moved = gt.vertices + vertex_normals(gt.vertices, gt.faces) * (1.0 / mm_per_unit)
    write_obj(data.meso_mesh(fid), Mesh(moved, gt.faces))
    # the triangulated landmarks gen_maps would write: the true ones + 1 mm noise
    lm = cap.landmarks3d + np.random.default_rng(0).normal(0, 1.0 / mm_per_unit, cap.landmarks3d.shape)
    save_json(data.landmarks(fid), {"format": "x", "points3d": lm.tolist(), "ok": [True] * len(lm),
                                    "confidence": [1.0] * len(lm)})
    return raw, data, fid, mm_per_unit


def run(raw, data, *extra, stages=("reg", "meso")):
    import evaluate

    rc = evaluate.main(["--dataroot", str(data.root), "--facescape_dataroot", str(raw.root), "--split", "eval",
                        "--n_samples", "20000", "--stages", *stages, *extra])
    assert rc == 0
    return json.loads(data.metrics_json.read_text())


def test_ground_truth_scores_zero_and_a_1mm_offset_scores_1mm(scan_folders, capsys):
    raw, data, fid, _ = scan_folders
    assert raw.region(fid).is_file()  # the synthesiser's region is what the metrics use
    doc = run(raw, data)
    reg, meso = doc["faces"][fid]["reg"], doc["faces"][fid]["meso"]
    assert reg["chamfer_mm"] < 1e-6 and reg["pct_within_0.5mm"] == 100.0 and reg["normal_error_deg"] < 1e-3
    assert meso["chamfer_mm"] == pytest.approx(1.0, rel=0.02)
    assert meso["accuracy_median_mm"] == pytest.approx(1.0, rel=0.02)
    assert doc["mean"]["meso"]["chamfer_mm"] == meso["chamfer_mm"]
    assert "chamfer_mm" in capsys.readouterr().out  # the table is printed


def test_region_sources_scan_region_raw_region_and_landmarks(scan_folders, tmp_path):
    from mvfr.evaluation import gt_region
    from mvfr.metrics import region_faces_from_vertices

    raw, data, fid, mm = scan_folders
    gt = read_mesh(raw.scan(fid))
    vr = np.load(raw.region(fid))
    # RAW/region, per vertex -> per face by majority
    region, source = gt_region(gt, data, raw, fid, mm)
    assert source == str(raw.region(fid))
    np.testing.assert_array_equal(region, region_faces_from_vertices(gt.faces, vr))
    # --scan_region wins over RAW/region; a file of the wrong length is a clear error
    half = vr & (gt.vertices[:, 0] < np.median(gt.vertices[vr, 0]))
    save_npy(tmp_path / "half.npy", half)
    region_half, source = gt_region(gt, data, raw, fid, mm, str(tmp_path / "half.npy"))
    assert source.endswith("half.npy") and 0.3 < region_half.sum() / region.sum() < 0.7
    save_npy(tmp_path / "short.npy", half[:-1])
    with pytest.raises(ValueError, match="one entry per scan vertex"):
        gt_region(gt, data, raw, fid, mm, str(tmp_path / "short.npy"))
    # without a region file: from the scan and the triangulated landmarks only
    moved = raw.region(fid).with_suffix(".bak")
    raw.region(fid).rename(moved)
    try:
        computed, source = gt_region(gt, data, raw, fid, mm)
        assert source.startswith("landmarks")
        tri = gt.vertices[gt.faces]
        area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1) * mm * mm
        assert area[computed].sum() > 20000  # mm^2: a whole face (the template's facial mask)
        assert area[computed & region].sum() > 0.85 * area[computed].sum()  # inside the true facial region
        # never from the scan's own uvs, never from the base mesh: neither changes it
        scrambled = Mesh(gt.vertices, gt.faces, uvs=np.random.default_rng(1).random((len(gt.vertices), 2)))
        np.testing.assert_array_equal(gt_region(scrambled, data, raw, fid, mm)[0], computed)
        t = read_mesh(data.reg_mesh(fid))
        write_obj(data.fit_mesh(fid), Mesh(t.vertices + 50.0 / mm, t.faces))  # a base mesh 50 mm off
        try:
            np.testing.assert_array_equal(gt_region(gt, data, raw, fid, mm)[0], computed)
        finally:
            data.fit_mesh(fid).unlink()
        doc = run(raw, data)
        assert doc["faces"][fid]["reg"]["chamfer_mm"] < 1e-6
        assert doc["faces"][fid]["meso"]["chamfer_mm"] == pytest.approx(1.0, rel=0.04)
    finally:
        moved.rename(raw.region(fid))


def test_flipped_scan_gives_the_same_normal_error(scan_folders, tmp_path):
    raw, data, fid, _ = scan_folders
    before = run(raw, data)["faces"][fid]
    scan = raw.scan(fid)
    original = scan.read_bytes()
    gt = read_mesh(scan)
    try:
        write_ply(scan, Mesh(gt.vertices, gt.faces[:, ::-1]))  # every face wound inwards
        after = run(raw, data)["faces"][fid]
    finally:
        scan.write_bytes(original)
    for stage in ("reg", "meso"):
        assert after[stage]["normal_error_deg"] == pytest.approx(before[stage]["normal_error_deg"], abs=1e-6)
        assert after[stage]["chamfer_mm"] == pytest.approx(before[stage]["chamfer_mm"], abs=1e-9)
    assert after["reg"]["normal_error_deg"] < 1e-3  # not 180


def test_a_face_is_scored_once_until_its_inputs_change(scan_folders, capsys):
    raw, data, fid, _ = scan_folders
    first = run(raw, data)
    capsys.readouterr()
    assert run(raw, data) == first  # from the per-face file
    assert "0 done, 1 skipped" in capsys.readouterr().err
    data.meso_mesh(fid).touch()  # a newer output: scored again
    assert run(raw, data) == first
    assert "1 done, 0 skipped" in capsys.readouterr().err
    run(raw, data, stages=("reg",))  # other settings: scored again, and only what was asked is in metrics.json
    assert "1 done" in capsys.readouterr().err
    assert set(json.loads(data.metrics_json.read_text())["faces"][fid]) == {"reg"}
    run(raw, data, "--overwrite", stages=("reg",))
    assert "1 done" in capsys.readouterr().err


def test_a_face_that_fails_is_not_taken_from_an_older_run(scan_folders, capsys):
    import evaluate

    raw, data, fid, _ = scan_folders
    run(raw, data)
    mesh = data.meso_mesh(fid)
    original = mesh.read_bytes()
    try:
        mesh.write_text("v 0 0 0\nf 1 2 3\n")  # newer and broken: the face fails now
        rc = evaluate.main(["--dataroot", str(data.root), "--facescape_dataroot", str(raw.root), "--split", "eval",
                            "--n_samples", "20000", "--stages", "reg", "meso"])
        err = capsys.readouterr().err
        assert rc == 1 and "FAILED" in err and "no face could be evaluated" in err  # not the metrics of the last run
    finally:
        mesh.write_bytes(original)


def test_torchrun_shards_the_faces_and_rank_0_writes_every_one(scan_folders, tmp_path):
    """Two ranks under torchrun: each scores one of two faces, rank 0 writes metrics.json with both."""
    import os
    import shutil
    import subprocess
    import sys

    from conftest import ROOT

    raw0, data0, fid, _ = scan_folders
    raw, data = RawFolder(tmp_path / "raw"), DataFolder(tmp_path / "data")
    shutil.copytree(raw0.root, raw.root)
    shutil.copytree(data0.root, data.root, ignore=shutil.ignore_patterns("eval"))
    twin = "004_02"  # the same capture under a second id
    for src, dst in ((raw0.scan(fid), raw.scan(twin)), (raw0.region(fid), raw.region(twin)),
                     (raw0.params(fid), raw.params(twin)), (data0.reg_mesh(fid), data.reg_mesh(twin))):
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    save_json(data.id_json, {"train": [], "eval": [fid, twin]})
    scales = json.loads(data.rt_scale_json.read_text())
    scales["4"]["2"] = scales["4"]["1"]
    save_json(data.rt_scale_json, scales)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "evaluate.py"), "--dataroot", str(data.root), "--facescape_dataroot", str(raw.root),
           "--n_samples", "5000", "--stages", "reg"]
    out = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stderr.count("evaluate: 1 done, 0 skipped") == 2  # one face per rank
    doc = json.loads(data.metrics_json.read_text())
    assert set(doc["faces"]) == {fid, twin} and doc["faces"][fid] == doc["faces"][twin]
    assert doc["faces"][fid]["reg"]["chamfer_mm"] < 1e-6
