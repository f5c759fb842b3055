"""Mesoscopic ground truth of the synthetic data: is the detail as strong as real skin's?

    python benchmarks/check_detail.py [--seed 31] [--num_ids 5] [--num_exps 3]

For each face (identities x the first expressions), builds the ground-truth scan with and without
its mesoscopic detail (same identity, expression and subdivision) and measures, inside the facial
region (``RAW/region``: face area, eyelids and lips included): the std of the detail displacement
at the scan's vertices (mm) and the normal error of the scan without detail against the scan with
it (``mvfr.metrics.surface_metrics``, degrees) -- how much of the normal field the detail carries.
Targets (issue [I]): std between 0.05 and 0.2 mm, normal error >= 4 deg. Prints a RESULT line.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mvfr.datafolder import face_id  # noqa: E402
from mvfr.mesh_io import Mesh  # noqa: E402
from mvfr.metrics import surface_metrics  # noqa: E402
from mvfr.synthesis import capture, head, meso  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=31)
    p.add_argument("--num_ids", type=int, default=5)
    p.add_argument("--num_exps", type=int, default=3)
    p.add_argument("--albedo_size", type=int, default=2048, help="side of the face-tile detail map, texels")
    a = p.parse_args()
    opt = capture.SynthOptions(seed=a.seed, albedo_size=a.albedo_size)
    stds, angles = [], []
    for pid in range(1, a.num_ids + 1):
        for eid in range(1, a.num_exps + 1):
            _, _, coarse, h = capture.face_detail(pid, eid, opt)
            chin = head.chin_y(coarse)
            detailed = head.build_scan(coarse, lambda uv: meso.sample_at(h, uv), chin_y=chin)
            smooth = head.build_scan(coarse, None, chin_y=chin)
            disp = np.einsum("ij,ij->i", detailed.vertices - smooth.vertices, smooth.smooth_normals)
            region_faces = detailed.region[detailed.faces].all(1)
            met = surface_metrics(Mesh(smooth.vertices, smooth.faces), Mesh(detailed.vertices, detailed.faces),
                                  region_faces, 1.0, n_samples=100_000)
            stds.append(float(disp[detailed.region].std()))
            angles.append(met["normal_error_deg"])
            print(f"{face_id(pid, eid)}: detail std {stds[-1]:.3f} mm, normal error of the smooth scan {angles[-1]:.2f} deg, "
                  f"max |detail| {np.abs(disp[detailed.region]).max():.2f} mm")
    std, ang = float(np.mean(stds)), float(np.mean(angles))
    ok = 0.05 <= min(stds) and max(stds) <= 0.2 and min(angles) >= 4.0
    print(f"RESULT check_detail seed={a.seed} faces={len(stds)} detail_std_mm={std:.3f} (min {min(stds):.3f}, max {max(stds):.3f}) "
          f"normal_error_deg={ang:.2f} (min {min(angles):.2f}) {'PASS' if ok else 'FAIL'}")


if __name__ == "__main__":
    main()
