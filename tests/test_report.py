"""The report draws a face's figures once, and again only when one of their inputs changes (issue #26)."""

import os

import numpy as np

from mvfr import report
from mvfr.atomic_io import save_image, save_json
from mvfr.datafolder import DataFolder, RawFolder
from mvfr.mesh_io import Mesh, write_obj


def test_figures_are_drawn_once_per_face_until_an_input_changes(tmp_path, monkeypatch):
    data, raw = DataFolder(tmp_path / "data"), RawFolder(tmp_path / "raw")
    save_json(data.id_json, {"train": [], "eval": ["001_01", "002_01"]})
    for fid in ("001_01", "002_01"):
        write_obj(data.reg_mesh(fid), Mesh(np.eye(3), np.array([[0, 1, 2]])))
    drawn = []

    def fake_draw(folder, raw_folder, fid, out):
        drawn.append(fid)
        save_image(out / f"{fid}_surfaces.png", np.zeros((4, 4, 3), np.uint8))
        return ["surfaces"]

    monkeypatch.setattr(report, "draw_figures", fake_draw)
    monkeypatch.setattr(report, "colorbar_png", lambda path: None)
    ids = ["001_01", "002_01"]
    page = report.write_report(data, raw, ids).read_text()
    assert drawn == ids and 'src="001_01_surfaces.png"' in page and "Surfaces, same viewpoint" in page
    assert report.write_report(data, raw, ids).read_text() == page and drawn == ids  # nothing drawn again
    stamp = data.report_dir / "002_01_figures.json"
    past = stamp.stat().st_mtime_ns - 10 * 10**9
    os.utime(stamp, ns=(past, past))  # the figures were drawn 10 s ago ...
    write_obj(data.reg_mesh("002_01"), Mesh(2 * np.eye(3), np.array([[0, 1, 2]])))  # ... and the mesh changed since
    report.write_report(data, raw, ids)
    assert drawn == ids + ["002_01"]
    (data.report_dir / "001_01_surfaces.png").unlink()  # a figure gone: drawn again
    report.write_report(data, raw, ids)
    assert drawn == ids + ["002_01", "001_01"]
    report.write_report(data, raw, ids, overwrite=True)
    assert drawn[-2:] == ids
