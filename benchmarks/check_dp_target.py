"""Does the mesoscopic ground truth line up with the texture the network sees?

    python benchmarks/check_dp_target.py --dataroot TR/data --facescape_dataroot TR/raw [--ids 001_01 005_02] [--split train]

For each face: the blended texture (gen_tex.py, on the ground-truth surface for the train split)
high-passed (Gaussian sigma 4 texels) against the ground-truth displacement at 512 texels, in the
facial mask, for ``RAW/dpmap`` as it is and registered (:mod:`dpmap_pred.targets`):
``r`` (Pearson of high-passed texture and high-passed height) and ``R`` (multiple correlation of
the high-passed texture with a linear model of height, its two slopes and its Laplacian: shading
follows slopes under unknown light), and for the registered map the shift (texels, up to +-3)
that maximises ``R``: 0 when the registration is right. Prints a RESULT line.
"""

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dpmap_pred.inference import resize_image  # noqa: E402
from dpmap_pred.targets import dp_target  # noqa: E402
from mvfr.atomic_io import load_image  # noqa: E402
from mvfr.datafolder import DataFolder, RawFolder  # noqa: E402
from mvfr.uv_rasterizer import load_facial_mask  # noqa: E402

SIZE = 512


def high_pass(x: np.ndarray, sigma: float = 4.0) -> np.ndarray:
    x = x.astype(np.float32)
    return x - cv2.GaussianBlur(x, (0, 0), sigma)


def shading_fit(lum_hp: np.ndarray, height: np.ndarray, mask: np.ndarray) -> float:
    """Multiple correlation of ``lum_hp`` with (height, d/dx, d/dy, Laplacian) of the smoothed height."""
    g = cv2.GaussianBlur(height.astype(np.float32), (0, 0), 1.0)
    feats = [high_pass(g), cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1), cv2.Laplacian(g, cv2.CV_32F, ksize=3)]
    X = np.c_[np.stack([f[mask] for f in feats], 1), np.ones(int(mask.sum()))]
    coef, *_ = np.linalg.lstsq(X, lum_hp[mask], rcond=None)
    return float(np.corrcoef(X @ coef, lum_hp[mask])[0, 1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataroot", required=True)
    p.add_argument("--facescape_dataroot", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--ids", nargs="*", default=None, help="face ids (default: the first 4 of the split)")
    a = p.parse_args()
    folder, raw = DataFolder(a.dataroot), RawFolder(a.facescape_dataroot)
    ids = a.ids or folder.face_ids(a.split)[:4]
    facial = load_facial_mask(SIZE)
    rows = []
    for fid in ids:
        lum = high_pass(resize_image(load_image(folder.texture(fid)), SIZE).mean(-1) / 255.0)
        maps = {mode: dp_target(folder, raw, a.split, fid, SIZE, mode) for mode in ("as_is", "registered")}
        mask = facial & np.isfinite(maps["as_is"]) & np.isfinite(maps["registered"])
        h = {k: np.where(mask, v, 0.0) for k, v in maps.items()}
        r = {k: float(np.corrcoef(lum[mask], high_pass(v)[mask])[0, 1]) for k, v in h.items()}
        R = {k: shading_fit(lum, v, mask) for k, v in h.items()}
        shifts = {(dy, dx): shading_fit(lum, np.roll(h["registered"], (dy, dx), (0, 1)), mask)
                  for dy in range(-3, 4) for dx in range(-3, 4)}
        best = max(shifts, key=shifts.get)
        rows.append((r["as_is"], r["registered"], R["as_is"], R["registered"], float(np.hypot(*best))))
        print(f"{fid}: r as_is {r['as_is']:+.3f} registered {r['registered']:+.3f}; "
              f"R as_is {R['as_is']:.3f} registered {R['registered']:.3f}; best shift {best} texels")
    m = np.mean(rows, axis=0)
    print(f"RESULT faces={len(rows)} r_as_is={m[0]:.3f} r_registered={m[1]:.3f} R_as_is={m[2]:.3f} "
          f"R_registered={m[3]:.3f} mean_best_shift_texels={m[4]:.2f}")


if __name__ == "__main__":
    main()
