"""evaluate.py end to end: the ground truth itself scores 0 mm; the ground truth pushed 1 mm out scores 1 mm."""

import json

import numpy as np
import pytest

from mvfr.atomic_io import save_json
from mvfr.datafolder import DataFolder, RawFolder
from mvfr.mesh_io import Mesh, read_mesh, vertex_normals, write_obj
from mvfr.synthesis import capture


@pytest.fixture(scope="module")
def scan_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    raw, data = RawFolder(root / "raw"), DataFolder(root / "data")
    opt = capture.SynthOptions(num_views=2, image_long_side=128, dpmap_size=64, albedo_size=128, seed=3)
    cap = capture.synthesize_capture(4, 1, opt)
    capture.write_capture(raw, cap)
    save_json(data.id_json, {"train": [], "eval": [cap.fid]})
    save_json(data.rt_scale_json, {"4": {"1": cap.rt_scale}})
    return raw, data, cap.fid, float(cap.rt_scale[0])


def test_ground_truth_scores_zero_and_a_1mm_offset_scores_1mm(scan_folders, capsys):
    import evaluate

    raw, data, fid, mm_per_unit = scan_folders
    gt = read_mesh(raw.scan(fid))
    # "reg" = the scan itself; "meso" = the scan pushed 1 mm outwards along its vertex normals
    write_obj(data.reg_mesh(fid), Mesh(gt.vertices, gt.faces))
    moved = gt.vertices + vertex_normals(gt.vertices, gt.faces) * (1.0 / mm_per_unit)
    write_obj(data.meso_mesh(fid), Mesh(moved, gt.faces))
    rc = evaluate.main(["--dataroot", str(data.root), "--facescape_dataroot", str(raw.root), "--split", "eval",
                        "--n_samples", "50000"])
    assert rc == 0
    doc = json.loads(data.metrics_json.read_text())
    reg, meso = doc["faces"][fid]["reg"], doc["faces"][fid]["meso"]
    assert reg["chamfer_mm"] < 1e-6 and reg["pct_within_0.5mm"] == 100.0 and reg["normal_error_deg"] < 1e-3
    assert meso["chamfer_mm"] == pytest.approx(1.0, rel=0.02)
    assert meso["accuracy_median_mm"] == pytest.approx(1.0, rel=0.02)
    assert doc["mean"]["meso"]["chamfer_mm"] == meso["chamfer_mm"]
    assert "chamfer_mm" in capsys.readouterr().out  # the table is printed
