"""What does the mesoscopic stage gain on top of the reg surface, and what could it gain? Displace by the truth.

    python benchmarks/meso_ceiling.py --dataroot HO/d_v10 --facescape_dataroot HO/raw --ids 991_10 992_03 [--dp_smooth_iters 0]

For each face the reg mesh (``pred/reg_mesh``) is smoothed, subdivided and displaced
(:func:`dpmap_pred.dpmap2mesh.displace_mesh`) by four maps: zero (smoothing and subdivision alone),
the ground truth the checkpoint was trained for (:func:`dpmap_pred.targets.dp_target` with the
application surface recorded in ``pred/dp_map``'s JSON: a perfect prediction), its negative (a sign
check) and the prediction (``pred/dp_map``). Each mesh is scored against the scan like ``evaluate.py``
(facial region, 200k samples). ``--dp_smooth_iters``/``--dp_subdiv_levels`` score another application
surface (the truth is then measured from that surface; the prediction, made for the recorded one, is
added to it as it is). Prints accuracy and normal error per map and a RESULT line with the mean
normal error and accuracy of reg, the truth and the prediction, and the prediction's Pearson r and
standard deviation against the truth's inside the facial mask.
"""

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dpmap_pred.dpmap2mesh import displace_mesh, meshing_settings  # noqa: E402
from dpmap_pred.encoding import read_dpmap  # noqa: E402
from dpmap_pred.inference import dpmap_scores  # noqa: E402
from dpmap_pred.targets import Target, dp_target  # noqa: E402
from mvfr.datafolder import DataFolder, RawFolder  # noqa: E402
from mvfr.evaluation import camera_centres, gt_region, oriented_scan  # noqa: E402
from mvfr.mesh_io import read_mesh  # noqa: E402
from mvfr.metrics import open_edges, surface_metrics  # noqa: E402
from mvfr.uv_rasterizer import load_facial_mask  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataroot", required=True)
    p.add_argument("--facescape_dataroot", required=True)
    p.add_argument("--split", default="eval")
    p.add_argument("--ids", nargs="+", required=True)
    p.add_argument("--dp_smooth_iters", type=int, default=None, help="default: the application surface the maps were made for")
    p.add_argument("--dp_subdiv_levels", type=int, default=None)
    a = p.parse_args()
    folder, raw = DataFolder(a.dataroot), RawFolder(a.facescape_dataroot)
    rows = {k: [] for k in ("reg_ne", "truth_ne", "pred_ne", "reg_acc", "truth_acc", "pred_acc", "r", "std_ratio")}
    for fid in a.ids:
        mm = folder.mm_per_unit(fid)
        pred, info = read_dpmap(folder.dp_map(fid))
        size = pred.shape[0]
        reg = read_mesh(folder.reg_mesh(fid))
        levels, smooth = meshing_settings(a, info, reg, size)
        target = dataclasses.replace(Target.from_record(info.get("application_surface", {})), smooth_iters=smooth, levels=levels)
        truth = dp_target(folder, raw, a.split, fid, size, target)
        mask = load_facial_mask(size) & np.isfinite(truth)
        s = dpmap_scores(pred, np.nan_to_num(truth), mask)
        scan = oriented_scan(read_mesh(raw.scan(fid)), camera_centres(folder, raw, fid), fid)
        region, _ = gt_region(scan, folder, raw, fid, mm, None)
        edges = open_edges(scan.faces)

        def score(mesh):
            r = surface_metrics(mesh, scan, region, mm, n_samples=200_000, seed=0, gt_open_edges=edges)
            return r["accuracy_mean_mm"], r["normal_error_deg"]

        acc0, ne0 = score(reg)
        print(f"{fid} reg: accuracy {acc0:.3f} mm, normal error {ne0:.2f} deg; prediction vs truth r {s['pearson']:.3f}, "
              f"std {s['pred_std_mm']:.4f} vs {s['gt_std_mm']:.4f} mm ({levels} Loop levels, {smooth} Taubin rounds)")
        rows["reg_ne"].append(ne0)
        rows["reg_acc"].append(acc0)
        rows["r"].append(s["pearson"])
        rows["std_ratio"].append(s["pred_std_mm"] / s["gt_std_mm"])
        truth = np.nan_to_num(truth)
        for name, m in {"zero": np.zeros_like(truth), "truth": truth, "-truth": -truth, "pred": pred}.items():
            meso, _ = displace_mesh(reg, m, mm, levels, smooth)
            acc, ne = score(meso)
            print(f"{fid} {name:>6}: accuracy {acc:.3f} mm, normal error {ne:.2f} deg ({ne / ne0:.3f} x reg)")
            if name in ("truth", "pred"):
                rows[f"{name}_ne"].append(ne)
                rows[f"{name}_acc"].append(acc)
    m = {k: float(np.mean(v)) for k, v in rows.items()}
    print(f"RESULT faces={len(a.ids)} reg_ne={m['reg_ne']:.2f} truth_ne={m['truth_ne']:.2f} pred_ne={m['pred_ne']:.2f} "
          f"pred_ne_ratio={m['pred_ne'] / m['reg_ne']:.3f} reg_acc={m['reg_acc']:.3f} truth_acc={m['truth_acc']:.3f} "
          f"pred_acc={m['pred_acc']:.3f} pearson={m['r']:.3f} std_ratio={m['std_ratio']:.2f}")


if __name__ == "__main__":
    main()
