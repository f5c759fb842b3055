"""Texture accuracy on a photograph the blending has not seen (issue 6 acceptance).

    python benchmarks/bench_texture.py --dataroot DATA --split eval [--holdout_view 3] [--tex_uv_size 1024]

For every face (eval_reg.py must have run): blend the texture of the regularised surface from all
views but one (``--holdout_view``; default: the view closest to frontal, i.e. whose optical axis
is most anti-parallel to the mean surface normal), render the textured reg mesh into the held-out
camera by ray casting (unlit texture colours), and report the mean absolute colour difference
(0..255, averaged over R, G, B) to that photograph over the pixels the mesh covers, eroded by
2 pixels. Writes ``benchmarks/results/texture.json`` and, for the first face, a comparison image
(photograph | render | |difference| x 4) to ``--image`` (default docs/tex_holdout_comparison.png).
Also times the blending (seconds per face, 2-core CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mvfr.atomic_io import save_image, save_json  # noqa: E402
from mvfr.camera import camera_center  # noqa: E402
from mvfr.capture import load_capture  # noqa: E402
from mvfr.datafolder import DataFolder  # noqa: E402
from mvfr.mvs.face_inputs import search_mask  # noqa: E402
from mvfr.texture import colour_difference, render_textured_view, texture_from_surface  # noqa: E402


def frontal_view(cap, pos: np.ndarray, nrm: np.ndarray, mask: np.ndarray) -> int:
    """Index of the camera looking most directly at the face (largest cos to the mean normal)."""
    centre = pos[mask].mean(0)
    n = nrm[mask].mean(0)
    n /= np.linalg.norm(n)
    cos = []
    for cam in cap.cameras:
        d = camera_center(cam.Rt) - centre
        cos.append(float(d @ n / np.linalg.norm(d)))
    return int(np.argmax(cos))


def comparison_image(photo: np.ndarray, render: np.ndarray, covered: np.ndarray, margin: int = 10) -> np.ndarray:
    """Side-by-side crop around the face: photograph | render (black outside the mesh) | |diff| x 4."""
    import cv2

    ys, xs = np.nonzero(covered)
    y0, y1 = max(ys.min() - margin, 0), min(ys.max() + margin + 1, photo.shape[0])
    x0, x1 = max(xs.min() - margin, 0), min(xs.max() + margin + 1, photo.shape[1])
    p = photo[y0:y1, x0:x1].astype(np.float32)
    r = np.where(covered[y0:y1, x0:x1, None], render[y0:y1, x0:x1], 0.0)
    d = np.where(covered[y0:y1, x0:x1, None], np.abs(p - r) * 4, 0.0)
    panel = np.concatenate([p, r, d], 1)
    panel = np.clip(np.rint(panel), 0, 255).astype(np.uint8)
    scale = 360 / panel.shape[0] if panel.shape[0] < 360 else 1.0
    if scale != 1.0:
        panel = cv2.resize(panel, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    w = panel.shape[1] // 3
    for k, text in enumerate(("photograph (held out)", "textured reg mesh", "|difference| x 4")):
        cv2.putText(panel, text, (k * w + 6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return panel


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataroot", default="data", help="DATA_FOLDER with pred/reg_map (run eval_reg.py first)")
    p.add_argument("--split", default="eval", choices=("train", "eval"), help="face ids of id.json")
    p.add_argument("--ids", nargs="*", default=None, help="only these faces (PPP_EE)")
    p.add_argument("--holdout_view", default=None, help="view name left out of blending (default: the most frontal)")
    p.add_argument("--tex_uv_size", type=int, default=1024, help="texture side, in texels")
    p.add_argument("--tex_power", type=float, default=2.0, help="view weight = cos ** power")
    p.add_argument("--tex_min_cos", type=float, default=0.1, help="views below this cosine get no weight")
    p.add_argument("--image", default=str(ROOT / "docs" / "tex_holdout_comparison.png"), help="comparison image of the first face")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "texture.json"), help="results file")
    opt = p.parse_args()

    folder = DataFolder(opt.dataroot)
    ids = opt.ids or folder.face_ids(opt.split)
    results = {}
    for n, fid in enumerate(ids):
        refined = np.load(folder.reg_map(fid))
        pos = np.load(folder.map(opt.split, "pos_map", fid))
        nrm = np.load(folder.map(opt.split, "norm_map", fid))
        mask = search_mask(pos, nrm)
        cap = load_capture(folder, fid)
        k = cap.views.index(opt.holdout_view) if opt.holdout_view is not None else frontal_view(cap, pos, nrm, mask)
        keep = [i for i in range(len(cap.views)) if i != k]
        t0 = time.perf_counter()
        texture, weight, mesh = texture_from_surface(
            refined, mask, [cap.images[i] for i in keep], [cap.cameras[i] for i in keep], opt.tex_uv_size, opt.tex_power, opt.tex_min_cos
        )
        seconds = time.perf_counter() - t0
        render, covered = render_textured_view(mesh, texture, cap.cameras[k])
        mae = colour_difference(render, cap.images[k], covered, erode_px=2)
        results[fid] = {"holdout_view": cap.views[k], "blend_views": len(keep), "mae_0_255": mae, "blend_seconds": seconds,
                        "covered_pixels": int(covered.sum())}
        print(f"{fid}: held-out view {cap.views[k]}, mean |colour difference| {mae:.2f} (0-255), blending {seconds:.1f} s", flush=True)
        if n == 0 and opt.image:
            save_image(opt.image, comparison_image(cap.images[k], render, covered))
    mean = float(np.mean([r["mae_0_255"] for r in results.values()]))
    save_json(opt.json, {"faces": results, "mean_mae_0_255": mean, "options": vars(opt)})
    print(json.dumps({"mean_mae_0_255": round(mean, 3), "faces": len(results)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
