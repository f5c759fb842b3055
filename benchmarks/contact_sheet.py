"""A contact sheet of synthetic captures: every view of each face in a grid, and the ground-truth detail.

    python benchmarks/contact_sheet.py --raw RAW --ids 001_02 001_03 --out docs/synthetic_v2_contact.jpg

One row per face: its views (valid and invalid, in select_dict order, all scaled to one height),
then the ground-truth mesoscopic displacement ``RAW/dpmap`` of that face (template UV) as a
shaded relief, with its range in mm, and a close-up of it at the outer corner of an eye. Works on any RAW tree in the FaceScape layout.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mvfr.atomic_io import load_image, save_image  # noqa: E402
from mvfr.camera import read_params  # noqa: E402
from mvfr.datafolder import RawFolder  # noqa: E402


def relief(dp: np.ndarray, texel_mm: float = 0.18) -> np.ndarray:
    """A Lambert-shaded picture (uint8 RGB) of a displacement map in mm (light from the upper left)."""
    gy, gx = np.gradient(dp.astype(np.float64) / texel_mm)
    n = np.stack([-gx, gy, np.ones_like(dp)], -1)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    light = np.array([-0.5, 0.5, 0.7])
    light /= np.linalg.norm(light)
    shade = np.clip(n @ light, 0, 1) * 0.85 + 0.1
    shade[dp == 0] = 0.15
    return np.repeat((shade * 255).astype(np.uint8)[..., None], 3, -1)


def main() -> None:
    import cv2

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--raw", required=True, help="RAW folder (FaceScape layout)")
    p.add_argument("--ids", nargs="+", required=True, help="face ids PPP_EE, one row each")
    p.add_argument("--out", required=True, help="output image (.jpg or .png)")
    p.add_argument("--height", type=int, default=260, help="height of one view in the sheet, pixels")
    p.add_argument("--columns", type=int, default=6, help="views per row before wrapping")
    p.add_argument("--title", type=str, default="")
    a = p.parse_args()
    raw = RawFolder(a.raw)
    rows = []
    for fid in a.ids:
        cams = read_params(raw.params(fid))
        views = [str(v) for v in raw.selected_views(fid)] if raw.select_dict_json.is_file() else sorted(cams, key=int)
        tiles = []
        for v in views:
            img = load_image(raw.image(fid, v))
            w = round(img.shape[1] * a.height / img.shape[0])
            t = cv2.resize(img, (w, a.height), interpolation=cv2.INTER_AREA)
            if not cams[v].valid:
                cv2.putText(t, "invalid", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 80, 80), 2, cv2.LINE_AA)
            tiles.append(t)
        dp_path = raw.meso_dpmap(fid)
        if dp_path.is_file():
            dp = np.load(dp_path)
            t = cv2.resize(relief(dp), (a.height, a.height), interpolation=cv2.INTER_AREA)
            cv2.putText(t, f"GT detail {dp.min():.2f}..{dp.max():.2f} mm", (6, a.height - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                        (255, 255, 120), 1, cv2.LINE_AA)
            tiles.append(t)
            # a close-up at the map's own resolution: the outer corner of an eye (crow's feet, pores)
            S = dp.shape[0]
            c = max(S // 5, 16)
            r0, c0 = int(0.42 * S) - c // 2, int(0.26 * S) - c // 2
            z = relief(dp[r0 : r0 + c, c0 : c0 + c], texel_mm=0.18 * 1024 / S)
            z = cv2.resize(z, (a.height, a.height), interpolation=cv2.INTER_CUBIC)
            cv2.putText(z, f"close-up, {c * 0.18 * 1024 / S:.0f} mm wide", (6, a.height - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                        (255, 255, 120), 1, cv2.LINE_AA)
            tiles.append(z)
        cv2.putText(tiles[0], fid, (8, a.height - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2, cv2.LINE_AA)
        for k in range(0, len(tiles), a.columns):
            chunk = tiles[k : k + a.columns]
            rows.append(np.concatenate(chunk, 1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    sheet = np.concatenate(rows, 0)
    if a.title:
        bar = np.full((36, width, 3), 255, np.uint8)
        cv2.putText(bar, a.title, (8, 26), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 2, cv2.LINE_AA)
        sheet = np.concatenate([bar, sheet], 0)
    save_image(a.out, sheet, jpeg_quality=88)
    print(f"wrote {a.out} ({sheet.shape[1]} x {sheet.shape[0]})")


if __name__ == "__main__":
    main()
