"""Close-up of the mesoscopic prediction against the ground truth, in template UV.

    python benchmarks/meso_closeup.py --dataroot HO/data --facescape_dataroot HO/raw --ids 601_01 602_03 \
        [--split eval] [--out docs/meso_vs_gt_closeup.jpg] [--box 0.55 0.30 0.25]

Two rows per face. In template UV: the blended texture, the predicted displacement
(``pred/dp_map``) and the ground truth the checkpoint was trained for, measured on this face
(:func:`dpmap_pred.targets.dp_target` with the application surface recorded in the map's JSON: by
default the residual from the smoothed, subdivided reg surface to the scan), all cropped to the same
box of the UV square (``--box top left side``, fractions; default: a cheek) at the map's size, the two
maps on one grey scale (+-3 ground-truth std). As meshes: the reg mesh, the meso mesh
(``pred/meso_mesh``) and the scan, seen from the camera that looks most squarely at the box's centre
under one raking light, cropped around it (``--mesh_crop_mm`` across) and on the scan's grey scale.
Prints each face's Pearson r inside the crop.
"""

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dpmap_pred.encoding import read_dpmap  # noqa: E402
from dpmap_pred.inference import resize_image  # noqa: E402
from dpmap_pred.targets import Target, dp_target  # noqa: E402
from mvfr.atomic_io import load_image  # noqa: E402
from mvfr.camera import scale_camera  # noqa: E402
from mvfr.capture import load_capture  # noqa: E402
from mvfr.datafolder import DataFolder, RawFolder  # noqa: E402
from mvfr.mesh_io import read_mesh  # noqa: E402
from mvfr.mesh_io import vertex_normals  # noqa: E402
from mvfr.render import Lighting, Renderer, RenderMesh  # noqa: E402

PANEL = 320


def grey(x: np.ndarray, scale: float) -> np.ndarray:
    out = np.clip(127.5 + 127.5 * np.nan_to_num(x) / scale, 0, 255).astype(np.uint8)
    return cv2.cvtColor(out, cv2.COLOR_GRAY2BGR)


def label(img: np.ndarray, text: str) -> np.ndarray:
    cv2.putText(img, text, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def render_raking(mesh, cam) -> np.ndarray:
    """Grey picture of ``mesh`` [H, W] float in [0, 1] under one light raking from the viewer's upper left."""
    R = cam.Rt[:, :3]
    key = -R[2] - 1.6 * R[0] - 1.0 * R[1]  # about 62 deg off the viewing direction
    light = Lighting(directions=(key / np.linalg.norm(key))[None], colors=np.array([[1.0, 1.0, 1.0]]), ambient=(0.05, 0.05, 0.05), wrap=0.0,
                     spec_strength=0.0)
    r = Renderer()
    try:
        r.set_mesh(RenderMesh(mesh.vertices, mesh.faces, vertex_normals(mesh.vertices, mesh.faces),
                              colors=np.full((len(mesh.vertices), 3), 0.7)))
        rgb, alpha = r.render(cam.K, cam.Rt, cam.width, cam.height, light)
    finally:
        r.release()
    return rgb.mean(-1) * alpha + (1 - alpha)


def mesh_closeups(folder: DataFolder, raw: RawFolder, fid: str, uv_centre: tuple[float, float], crop_mm: float) -> list[np.ndarray]:
    """Shaded close-ups of the reg mesh, the meso mesh and the scan around the surface point of the
    template-UV position ``uv_centre`` (row, col fractions), from the camera facing it best."""
    reg = np.load(folder.reg_map(fid))
    S = reg.shape[0]
    r, c = (min(S - 1, int(v * S)) for v in uv_centre)
    point = reg[r, c].astype(np.float64)
    n = np.cross(reg[r, min(c + 1, S - 1)] - reg[r, max(c - 1, 0)], reg[min(r + 1, S - 1), c] - reg[max(r - 1, 0), c]).astype(np.float64)
    cap = load_capture(folder, fid, with_images=False)
    cams = cap.cameras
    facing = [abs(float(np.dot(cam.Rt[2, :3], n))) / (np.linalg.norm(n) + 1e-12) for cam in cams]
    cam = cams[int(np.argmax(facing))]
    pix, depth = cam.project(point[None])
    px_per_mm = cam.K[0, 0] / (depth[0] * cap.mm_per_unit)  # pixels per mm at the point, native size
    s = PANEL / (crop_mm * px_per_mm)
    cam = scale_camera(cam, round(cam.width * s), round(cam.height * s))
    u, v = ((pix[0] + 0.5) * s - 0.5).round().astype(int)
    half = PANEL // 2
    crops = []
    for path in (folder.reg_mesh(fid), folder.meso_mesh(fid), raw.scan(fid)):
        img = np.pad(render_raking(read_mesh(path), cam), half, constant_values=1.0)
        crops.append(img[v : v + PANEL, u : u + PANEL])
    lo, hi = np.percentile(crops[2], [1, 99])  # one grey scale for all three: the scan's
    return [cv2.cvtColor((np.clip((c - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR) for c in crops]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataroot", required=True)
    p.add_argument("--facescape_dataroot", required=True)
    p.add_argument("--split", default="eval")
    p.add_argument("--ids", nargs="+", required=True)
    p.add_argument("--box", nargs=3, type=float, default=(0.42, 0.10, 0.22), metavar=("TOP", "LEFT", "SIDE"))
    p.add_argument("--mesh_crop_mm", type=float, default=30.0, help="width of the mesh close-ups on the face, mm")
    p.add_argument("--out", default="docs/meso_vs_gt_closeup.jpg")
    a = p.parse_args()
    folder, raw = DataFolder(a.dataroot), RawFolder(a.facescape_dataroot)
    rows = []
    for fid in a.ids:
        pred, info = read_dpmap(folder.dp_map(fid))
        size = pred.shape[0]
        top, left, side = (int(round(v * size)) for v in a.box)
        crop = (slice(top, top + side), slice(left, left + side))
        target = Target.from_record(info.get("application_surface", {}))
        tex = resize_image(load_image(folder.texture(fid)), size)[crop]
        pred = pred[crop]
        gt = dp_target(folder, raw, a.split, fid, size, target)[crop]
        ok = np.isfinite(gt)
        r = float(np.corrcoef(pred[ok], gt[ok])[0, 1])
        scale = 3.0 * float(np.nanstd(gt))
        print(f"{fid}: crop {side} texels at ({top}, {left}); Pearson r {r:.3f}; std pred {pred[ok].std():.4f} mm, truth {gt[ok].std():.4f} mm")
        panels = [cv2.cvtColor(np.clip(tex, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR), grey(pred, scale), grey(gt, scale)]
        panels = [cv2.resize(x, (PANEL, PANEL), interpolation=cv2.INTER_NEAREST) for x in panels]
        names = [f"{fid} texture", f"predicted (r = {r:.2f})", "ground truth"]
        rows.append(np.hstack([label(x, n) for x, n in zip(panels, names)]))
        centre = (a.box[0] + a.box[2] / 2, a.box[1] + a.box[2] / 2)
        meshes = mesh_closeups(folder, raw, fid, centre, a.mesh_crop_mm)
        rows.append(np.hstack([label(x, n) for x, n in zip(meshes, ["reg mesh", "meso mesh", "scan (ground truth)"])]))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(a.out, np.vstack(rows))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
