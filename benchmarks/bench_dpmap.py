"""Accuracy of the mesoscopic stage on held-out synthetic faces (issue 7's acceptance figures).

    python benchmarks/bench_dpmap.py --dataroot DATA --facescape_dataroot RAW [--split eval]

Needs, for every face of the split: the reg mesh (eval_reg.py), the UV texture (gen_tex.py), the
predicted displacement map and meso mesh (dpmap_pred/main.py, dpmap_pred/dpmap2mesh.py) and the
ground truth (gen_synthetic.py: scan and RAW/dpmap). Prints and writes
``benchmarks/results/dpmap_<split>.json``:

- ``pearson``: predicted vs ground-truth displacement inside the facial mask (target >= 0.5);
- ``normal_error_deg`` and ``chamfer_mm`` of reg and meso (DESIGN §6 metrics), and the checks
  meso normal error <= 0.8 x reg's, meso chamfer <= reg's + 0.02 mm.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from dpmap_pred.encoding import read_dpmap  # noqa: E402
from dpmap_pred.inference import dpmap_scores, resize_image  # noqa: E402
from mvfr.atomic_io import save_json  # noqa: E402
from mvfr.datafolder import DataFolder, RawFolder  # noqa: E402
from mvfr.evaluation import evaluate_face  # noqa: E402
from mvfr.uv_rasterizer import load_facial_mask  # noqa: E402
from options import parse_options  # noqa: E402


def main() -> int:
    opt = parse_options("evaluate")
    folder, raw = DataFolder(opt.dataroot), RawFolder(opt.facescape_dataroot)
    rows = {}
    for fid in (opt.ids or folder.face_ids(opt.split)):
        dp, _ = read_dpmap(folder.dp_map(fid))
        size = dp.shape[0]
        gt = np.load(raw.meso_dpmap(fid)).astype(np.float32)
        finite = np.isfinite(gt)
        gt = resize_image(np.where(finite, gt, 0.0), size)
        valid = load_facial_mask(size) & (resize_image(finite.astype(np.float32), size) > 0.999)
        scores = dpmap_scores(dp, gt, valid)
        m = evaluate_face(folder, raw, fid, ("reg", "meso"), opt.n_samples, opt.seed)
        rows[fid] = {"pearson": scores["pearson"], "dp_mae_mm": scores["mae_mm"], "gt_std_mm": scores["gt_std_mm"],
                     "reg": m["reg"], "meso": m["meso"]}
        print(f"{fid}: pearson {scores['pearson']:.3f}  normal_error_deg reg {m['reg']['normal_error_deg']:.2f} "
              f"meso {m['meso']['normal_error_deg']:.2f}  chamfer_mm reg {m['reg']['chamfer_mm']:.4f} "
              f"meso {m['meso']['chamfer_mm']:.4f}")
    if not rows:
        print("no face evaluated", file=sys.stderr)
        return 1
    mean = {
        "pearson": float(np.mean([r["pearson"] for r in rows.values()])),
        **{f"{s}_{k}": float(np.mean([r[s][k] for r in rows.values()]))
           for s in ("reg", "meso") for k in ("normal_error_deg", "chamfer_mm")},
    }
    checks = {
        "pearson >= 0.5": mean["pearson"] >= 0.5,
        "meso normal error <= 0.8 x reg": mean["meso_normal_error_deg"] <= 0.8 * mean["reg_normal_error_deg"],
        "meso chamfer <= reg + 0.02 mm": mean["meso_chamfer_mm"] <= mean["reg_chamfer_mm"] + 0.02,
    }
    print("mean: " + ", ".join(f"{k} {v:.4f}" for k, v in mean.items()))
    for k, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {k}")
    out = Path(__file__).resolve().parent / "results" / f"dpmap_{opt.split}.json"
    save_json(out, {"faces": rows, "mean": mean, "checks": checks, "argv": sys.argv})
    print(f"wrote {out}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
