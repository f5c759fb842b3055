"""Where a predicted surface misses the scan: each facial-region vertex of the scan coloured by its distance
to the prediction, seen from the front, and the prediction coloured by its distance to the scan.

    python benchmarks/coverage.py --dataroot DATA --facescape_dataroot RAW [--split eval] [--stage reg]
        [--ids 701_02 702_17] [--out docs/coverage_reg.png]

Row 1 (completeness): the scan's region (``RAW/region``, or ``evaluate.py``'s fallback) with every vertex
grey when the predicted surface passes within 0.5 mm of it, yellow within 2 mm, red beyond; the caption
gives the share of region vertices beyond 2 mm. Row 2 (accuracy): the prediction, each vertex coloured the
same way by its distance to the scan (vertices whose closest scan point lies outside the region are
drawn light blue: they do not count). The camera looks along the region's mean normal, the landmarks'
chin-to-forehead direction up. Prints one ``RESULT`` line: the mean share beyond 2 mm and its worst face.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mvfr.atomic_io import save_image  # noqa: E402
from mvfr.camera import Camera  # noqa: E402
from mvfr.datafolder import DataFolder, RawFolder  # noqa: E402
from mvfr.evaluation import gt_region, landmark_points, oriented_scan, camera_centres, stage_outputs  # noqa: E402
from mvfr.mesh_io import read_mesh, vertex_normals  # noqa: E402
from mvfr.metrics import point_to_mesh  # noqa: E402
from mvfr.report import crop_to_content, hstack, label, render_mesh  # noqa: E402

GREY, YELLOW, RED, BLUE = [(np.array(c) / 255.0) ** 2.2 for c in ((150, 150, 150), (230, 190, 40), (220, 40, 40), (170, 200, 240))]
SIZE = 640


def band_colors(dist_mm: np.ndarray) -> np.ndarray:
    """Per-vertex linear RGB ``[N, 3]``: grey < 0.5 mm, yellow < 2 mm, red beyond."""
    return np.where((dist_mm < 0.5)[:, None], GREY, np.where((dist_mm < 2.0)[:, None], YELLOW, RED))


def front_camera(points: np.ndarray, normals: np.ndarray, up: np.ndarray) -> Camera:
    """A camera looking at ``points [N, 3]`` against their mean normal, ``up`` towards the image top."""
    c = points.mean(0)
    n = normals.mean(0)
    n /= np.linalg.norm(n)
    up = up - (up @ n) * n
    up /= np.linalg.norm(up)
    extent = np.linalg.norm(points - c, axis=1).max()
    dist = 4.0 * extent
    z = -n  # camera looks along -n
    y = -up  # image rows grow downwards
    x = np.cross(y, z)
    R = np.stack([x, y, z])
    t = -R @ (c + n * dist)
    f = SIZE / 2 / (1.15 * extent / dist)
    K = np.array([[f, 0, (SIZE - 1) / 2], [0, f, (SIZE - 1) / 2], [0, 0, 1.0]])
    return Camera(K, np.c_[R, t], SIZE, SIZE)


def face_panels(folder: DataFolder, raw: RawFolder, fid: str, stage: str) -> tuple[np.ndarray, np.ndarray, float]:
    """(completeness picture, accuracy picture, share of region vertices beyond 2 mm) of one face."""
    mm = folder.mm_per_unit(fid)
    scan = oriented_scan(read_mesh(raw.scan(fid)), camera_centres(folder, raw, fid), fid)
    region_faces, _ = gt_region(scan, folder, raw, fid, mm)
    pred = read_mesh(stage_outputs(folder, fid)[stage])
    keep = np.unique(scan.faces[region_faces])
    dist, _, _ = point_to_mesh(scan.vertices[keep], pred.vertices, pred.faces)
    dist_mm = np.full(len(scan.vertices), np.nan)
    dist_mm[keep] = dist * mm
    lm, w = landmark_points(folder, fid)
    up = lm[10] - lm[152]  # MediaPipe: forehead centre minus chin
    normals = vertex_normals(scan.vertices, scan.faces)
    cam = front_camera(scan.vertices[keep], normals[keep], up)
    colors = band_colors(np.nan_to_num(dist_mm))
    comp = render_mesh(scan.vertices, scan.faces[region_faces], cam.K, cam.Rt, cam.width, cam.height, colors)
    pd, _, pf = point_to_mesh(pred.vertices, scan.vertices, scan.faces)
    pc = np.where(region_faces[pf][:, None], band_colors(pd * mm), BLUE)
    acc = render_mesh(pred.vertices, pred.faces, cam.K, cam.Rt, cam.width, cam.height, pc)
    return comp, acc, float(np.mean(dist_mm[keep] > 2.0))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataroot", required=True)
    p.add_argument("--facescape_dataroot", required=True)
    p.add_argument("--split", default="eval")
    p.add_argument("--stage", default="reg", choices=("base", "if", "reg", "meso"))
    p.add_argument("--ids", nargs="*", default=None, help="face ids (default: every face of the split with an output)")
    p.add_argument("--out", default=None, help="PNG to write (default DATA/eval/coverage_<stage>.png)")
    a = p.parse_args(argv)
    folder, raw = DataFolder(a.dataroot), RawFolder(a.facescape_dataroot)
    ids = a.ids or [f for f in folder.face_ids(a.split) if stage_outputs(folder, f)[a.stage].is_file()]
    tops, bottoms, shares = [], [], []
    for fid in ids:
        comp, acc, share = face_panels(folder, raw, fid, a.stage)
        comp, acc = crop_to_content([comp, acc])
        tops.append(label(comp, f"{fid} {a.stage}: {100 * share:.1f} % > 2 mm"))
        bottoms.append(label(acc, f"{fid} {a.stage} surface, distance to scan"))
        shares.append(share)
        print(f"{fid}: {100 * share:.2f} % of the region's vertices farther than 2 mm from the {a.stage} surface")
    top, bottom = hstack(tops), hstack(bottoms)
    width = max(top.shape[1], bottom.shape[1])
    pad = [np.pad(im, ((0, 0), (0, width - im.shape[1]), (0, 0)), constant_values=255) for im in (top, bottom)]
    out = Path(a.out) if a.out else folder.root / "eval" / f"coverage_{a.stage}.png"
    save_image(out, np.concatenate(pad, 0))
    worst = int(np.argmax(shares))
    print(f"RESULT stage={a.stage} pct_beyond_2mm_mean={100 * np.mean(shares):.2f} worst={ids[worst]}:{100 * shares[worst]:.2f} "
          f"faces={len(ids)} out={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
