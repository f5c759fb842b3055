"""The surfaces of every stage of one face beside its scan, shaded, from the front and from below.

    python benchmarks/face_figure.py --dataroot DATA --facescape_dataroot RAW --id 951_03 \
        [--split eval] [--out docs/whole_face_surfaces.jpg]

Columns: base mesh, implicit function, regularised, mesoscopic (those that exist) and the scan, the
scan cut to what the prediction covers (its faces within 3 mm of the regularised surface, eyeballs and
teeth included where they show through the openings). Row 1 looks along the face's mean normal; row 2
from below (50 degrees), where the chin and the nostrils show. Lights fixed to each camera.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.coverage import front_camera  # noqa: E402
from mvfr.atomic_io import save_image  # noqa: E402
from mvfr.datafolder import DataFolder, RawFolder  # noqa: E402
from mvfr.evaluation import landmark_points, stage_outputs  # noqa: E402
from mvfr.mesh_io import read_mesh, vertex_normals  # noqa: E402
from mvfr.metrics import point_to_mesh  # noqa: E402
from mvfr.report import STAGE_TITLES, crop_to_content, hstack, label, render_mesh  # noqa: E402

KEEP_MM = 3.0
BELOW_DEG = 50.0


def views(points: np.ndarray, normals: np.ndarray, up: np.ndarray):
    """The front camera and the one from below (turned about the face's left-right axis)."""
    n = normals.mean(0)
    n /= np.linalg.norm(n)
    up = up - (up @ n) * n
    up /= np.linalg.norm(up)
    a = np.radians(BELOW_DEG)
    below = np.cos(a) * n - np.sin(a) * up
    up_below = np.sin(a) * n + np.cos(a) * up
    return (front_camera(points, np.repeat(n[None], len(points), 0), up),
            front_camera(points, np.repeat(below[None], len(points), 0), up_below))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataroot", required=True)
    p.add_argument("--facescape_dataroot", required=True)
    p.add_argument("--id", required=True, help="face id PPP_EE")
    p.add_argument("--out", default=None, help="image to write (default DATA/eval/surfaces_<id>.jpg)")
    a = p.parse_args(argv)
    folder, raw = DataFolder(a.dataroot), RawFolder(a.facescape_dataroot)
    outputs = {s: path for s, path in stage_outputs(folder, a.id).items() if path.is_file()}
    if "reg" not in outputs:
        print(f"{a.id} has no regularised surface in {folder.root}; run the pipeline first", file=sys.stderr)
        return 2
    reg = read_mesh(outputs["reg"])
    scan = read_mesh(raw.scan(a.id))
    d, _, _ = point_to_mesh(scan.vertices, reg.vertices, reg.faces)
    near = d * folder.mm_per_unit(a.id) < KEEP_MM
    scan_faces = scan.faces[near[scan.faces].all(1)]
    lm, _ = landmark_points(folder, a.id)
    cams = views(reg.vertices, vertex_normals(reg.vertices, reg.faces), lm[10] - lm[152])
    meshes = [(STAGE_TITLES[s], read_mesh(outputs[s])) for s in outputs] + [("scan", None)]
    rows = []
    for cam in cams:
        tiles = []
        for _, mesh in meshes:
            v, f = (scan.vertices, scan_faces) if mesh is None else (mesh.vertices, mesh.faces)
            tiles.append(render_mesh(v, f, cam.K, cam.Rt, cam.width, cam.height))
        rows.append(crop_to_content(tiles))
    top = hstack([label(t, title) for t, (title, _) in zip(rows[0], meshes)])
    bottom = hstack([label(t, title + ", from below") for t, (title, _) in zip(rows[1], meshes)])
    width = max(top.shape[1], bottom.shape[1])
    pad = [np.pad(im, ((0, 0), (0, width - im.shape[1]), (0, 0)), constant_values=255) for im in (top, bottom)]
    out = Path(a.out) if a.out else folder.root / "eval" / f"surfaces_{a.id}.jpg"
    save_image(out, np.concatenate(pad, 0))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
