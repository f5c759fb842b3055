"""How much can the mesoscopic stage gain on top of the reg surface? Displace it by the truth.

    python benchmarks/meso_ceiling.py --dataroot HO/d10_v10 --facescape_dataroot HO/raw --ids 602_03 [--dp_smooth_iters 30]

For each face, ``dpmap2mesh.py`` displaces the reg mesh (``pred/reg_mesh``) by four maps: zero
(subdivision and smoothing alone), the ground truth registered to the reg surface
(:func:`dpmap_pred.targets.dp_target`, a perfect prediction), its negative (a sign check) and the
prediction (``pred/dp_map``); each mesh is scored against the scan like ``evaluate.py`` (facial
region, 200k samples). Prints accuracy and normal error per map and a RESULT line with the
normal-error reduction over reg of the truth and of the prediction.
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dpmap_pred.encoding import read_dpmap, write_dpmap  # noqa: E402
from dpmap_pred.targets import dp_target  # noqa: E402
from mvfr.datafolder import DataFolder, RawFolder  # noqa: E402
from mvfr.evaluation import camera_centres, gt_region, oriented_scan  # noqa: E402
from mvfr.mesh_io import read_mesh  # noqa: E402
from mvfr.metrics import surface_metrics  # noqa: E402

SIZE = 512


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataroot", required=True)
    p.add_argument("--facescape_dataroot", required=True)
    p.add_argument("--split", default="eval")
    p.add_argument("--ids", nargs="+", required=True)
    p.add_argument("--dp_smooth_iters", type=int, default=30)
    a = p.parse_args()
    folder, raw = DataFolder(a.dataroot), RawFolder(a.facescape_dataroot)
    gains = {"truth": [], "pred": []}
    with tempfile.TemporaryDirectory() as tmp:
        for fid in a.ids:
            mm = folder.mm_per_unit(fid)
            truth = np.nan_to_num(dp_target(folder, raw, a.split, fid, SIZE))
            maps = {"zero": np.zeros_like(truth), "truth": truth, "-truth": -truth, "pred": read_dpmap(folder.dp_map(fid))[0]}
            scan = oriented_scan(read_mesh(raw.scan(fid)), camera_centres(folder, raw, fid), fid)
            region, _ = gt_region(scan, folder, raw, fid, mm, None)

            def score(path):
                r = surface_metrics(read_mesh(path), scan, region, mm, n_samples=200_000, seed=0)
                return r["accuracy_mean_mm"], r["normal_error_deg"]

            acc0, ne0 = score(folder.reg_mesh(fid))
            print(f"{fid} reg: accuracy {acc0:.3f} mm, normal error {ne0:.2f} deg")
            for name, m in maps.items():
                png, obj = Path(tmp) / f"{name}.png", Path(tmp) / f"{name}.obj"
                write_dpmap(png, m.astype(np.float32))
                subprocess.run([sys.executable, str(ROOT / "dpmap_pred" / "dpmap2mesh.py"), "--dp_mesh", str(folder.reg_mesh(fid)),
                                "--dp_map", str(png), "--output", str(obj), "--dp_mm_per_unit", str(mm),
                                "--dp_smooth_iters", str(a.dp_smooth_iters)], check=True, capture_output=True)
                acc, ne = score(obj)
                print(f"{fid} {name:>6}: accuracy {acc:.3f} mm, normal error {ne:.2f} deg ({100 * (1 - ne / ne0):+.1f} % vs reg)")
                if name in gains:
                    gains[name].append(1 - ne / ne0)
    print(f"RESULT faces={len(a.ids)} smooth_iters={a.dp_smooth_iters} normal_error_reduction_truth={100 * np.mean(gains['truth']):.1f}% "
          f"normal_error_reduction_pred={100 * np.mean(gains['pred']):.1f}%")


if __name__ == "__main__":
    main()
