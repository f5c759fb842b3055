"""evaluate.py at dataset scale: seconds per face, the scan prepared once against once per stage, and
how many area samples keep every figure within 0.005 mm.

    python benchmarks/bench_evaluate.py --dataroot DATA --facescape_dataroot RAW [--ids ...] [--samples 50000 100000 200000] [--reference 800000]

Per face of the split (every stage output that exists, against the ground-truth scan):

- ``per_stage_s``: evaluate.py as it was before issue #26: the scan read with trimesh, prepared by
  every stage for itself (its own closest-point tree, vertex normals, open edge and region samples;
  the orientation computing the face areas per camera), independent samples;
- ``once_s``: :func:`mvfr.evaluation.evaluate_face` (numpy PLY reader, one
  :class:`~mvfr.metrics.ScanIndex` for the orientation and every stage, stratified samples);
- ``max_change_mm``: the largest difference of a millimetre figure (accuracy mean and median,
  completeness, chamfer; every stage) between the two;
- per ``--samples`` count n, stratified, and for 200000 independent samples (the former default):
  the seconds of the stages' metrics on the prepared scan, and the largest difference of a
  millimetre figure from the same figure with ``--reference`` stratified samples (the exact figure
  to about 0.001 mm).

Prints a table and writes ``benchmarks/results/evaluate.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from mvfr.atomic_io import save_json  # noqa: E402
from mvfr.datafolder import DataFolder, RawFolder  # noqa: E402
from mvfr.evaluation import camera_centres, evaluate_face, gt_region, oriented_scan, stage_outputs  # noqa: E402
from mvfr.mesh_io import Mesh, read_mesh  # noqa: E402
from mvfr.metrics import ScanIndex, face_areas, orient_towards_cameras, point_to_mesh, surface_metrics  # noqa: E402

MM_KEYS = ("accuracy_mean_mm", "accuracy_median_mm", "completeness_mean_mm", "chamfer_mm")
DEFAULT_SAMPLES = 200_000


class _TreePerCall(ScanIndex):
    """The former closest points: igl.point_mesh_squared_distance, a tree built for every call."""

    def closest(self, points):
        return point_to_mesh(points, self.vertices, self.faces)


def per_stage(folder: DataFolder, raw: RawFolder, fid: str, n: int) -> dict:
    """evaluate_face with every stage preparing the scan for itself (before #26)."""
    import trimesh

    tm = trimesh.load(raw.scan(fid), file_type="ply", process=False, force="mesh")
    v, f = np.asarray(tm.vertices), np.asarray(tm.faces)
    centres = camera_centres(folder, raw, fid)
    for _ in range(len(centres) - 1):  # the face areas computed again for every camera's rays
        face_areas(v, f)
    faces, _ = orient_towards_cameras(v, f, centres)
    gt = Mesh(v, faces)
    mm = folder.mm_per_unit(fid)
    region, _ = gt_region(gt, folder, raw, fid, mm)
    outputs = {s: p for s, p in stage_outputs(folder, fid).items() if p.is_file()}
    return {s: surface_metrics(read_mesh(p), _TreePerCall(v, faces), region, mm, n_samples=n, stratified=False)
            for s, p in outputs.items()}


def sample_sweep(folder: DataFolder, raw: RawFolder, fid: str, counts: list[int]) -> dict:
    """``{n: ({stage: metrics}, seconds)}`` on one prepared scan; a negative n: -n independent samples."""
    scan = oriented_scan(read_mesh(raw.scan(fid)), camera_centres(folder, raw, fid), fid)
    mm = folder.mm_per_unit(fid)
    region, _ = gt_region(Mesh(scan.vertices, scan.faces), folder, raw, fid, mm)
    preds = {s: read_mesh(p) for s, p in stage_outputs(folder, fid).items() if p.is_file()}
    out = {}
    for n in counts:
        t0 = time.perf_counter()
        figures = {s: surface_metrics(m, scan, region, mm, n_samples=abs(n), stratified=n > 0) for s, m in preds.items()}
        out[n] = (figures, time.perf_counter() - t0)
    return out


def label(n) -> str:
    n = int(n)
    return f"n = {abs(n):7d} {'stratified ' if n > 0 else 'independent'}"


def max_change(a: dict, b: dict) -> float:
    return max(abs(a[s][k] - b[s][k]) for s in a for k in MM_KEYS)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataroot", required=True, help="DATA_FOLDER with the stages' outputs")
    p.add_argument("--facescape_dataroot", required=True, help="RAW tree with the scans")
    p.add_argument("--split", default="eval", help="face ids of id.json")
    p.add_argument("--ids", nargs="*", default=None, help="only these faces")
    p.add_argument("--samples", type=int, nargs="*", default=[50_000, 100_000, DEFAULT_SAMPLES], help="sample counts to compare")
    p.add_argument("--reference", type=int, default=800_000, help="stratified sample count taken as the exact figure (0: no sweep)")
    opt = p.parse_args()
    folder, raw = DataFolder(opt.dataroot), RawFolder(opt.facescape_dataroot)
    rows = {}
    for fid in opt.ids or folder.face_ids(opt.split):
        t0 = time.perf_counter()
        before = per_stage(folder, raw, fid, DEFAULT_SAMPLES)
        t1 = time.perf_counter()
        after = evaluate_face(folder, raw, fid, n_samples=DEFAULT_SAMPLES)
        t2 = time.perf_counter()
        row = {"per_stage_s": t1 - t0, "once_s": t2 - t1, "max_change_mm": max_change(before, after)}
        if opt.reference:
            counts = sorted(set(opt.samples) | {opt.reference}) + [-DEFAULT_SAMPLES]
            sweep = sample_sweep(folder, raw, fid, counts)
            ref = sweep[opt.reference][0]
            row["samples"] = {str(n): {"metrics_s": s, "vs_reference_mm": max_change(m, ref)} for n, (m, s) in sweep.items()}
        rows[fid] = row
        print(f"{fid}: per stage {row['per_stage_s']:.1f} s, once per scan {row['once_s']:.1f} s, "
              f"largest change {row['max_change_mm']:.2e} mm", flush=True)
        for n, r in row.get("samples", {}).items():
            print(f"    {label(n)}: metrics of the stages {r['metrics_s']:5.1f} s, "
                  f"|change| <= {r['vs_reference_mm']:.4f} mm vs {opt.reference} stratified", flush=True)
    mean = {k: float(np.mean([r[k] for r in rows.values()])) for k in ("per_stage_s", "once_s")}
    print(f"mean seconds per face: per stage {mean['per_stage_s']:.1f}, once per scan {mean['once_s']:.1f}")
    if opt.reference:
        for n in rows[next(iter(rows))]["samples"]:
            worst = max(r["samples"][n]["vs_reference_mm"] for r in rows.values())
            secs = np.mean([r["samples"][n]["metrics_s"] for r in rows.values()])
            print(f"{label(n)}: {secs:5.1f} s per face for the stages' metrics; largest change of a mm figure vs "
                  f"{opt.reference} stratified samples over all faces: {worst:.4f} mm")
    save_json(Path(__file__).resolve().parent / "results" / "evaluate.json", {"faces": rows, "mean": mean})
    return 0


if __name__ == "__main__":
    sys.exit(main())
