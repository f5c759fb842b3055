"""Per-stage metrics in mm against the ground-truth scans (DESIGN §6).

    python evaluate.py --dataroot DATA --facescape_dataroot RAW --split eval [--scan_region FILE]
    torchrun --nproc_per_node N evaluate.py ...      # faces sharded over N processes

Facial region of each scan: ``--scan_region`` (a [V_scan] bool .npy, or a folder of PPP_EE.npy),
else RAW/region/<pid>/<k>_<exp>.npy, else computed from the scan and the triangulated landmarks
(see mvfr/evaluation.py). The scan is wound to face the cameras before scoring. Each scan is read
and prepared once (its closest-point tree, normals and region samples) for every stage.

Writes, per face, DATA/eval/faces/metrics_PPP_EE.json ({stage: {metric: value}} and the settings
it was computed with; a face whose file is newer than its inputs, with the same settings, is not
computed again unless --overwrite), then DATA/eval/metrics.json ({"faces": {id: {stage: {metric:
value}}}, "mean": {...}}) over every selected face, and prints the mean table. Under torchrun each
process scores its share of the faces (rank r: faces r, r + N, ...) and rank 0 writes metrics.json
once all have finished. Stages without an output for a face are left out for that face.
"""

import os
import sys

from mvfr.atomic_io import save_json
from mvfr.datafolder import DataFolder, RawFolder, read_json
from mvfr.evaluation import evaluate_face, evaluation_inputs
from mvfr.metrics import format_table, write_metrics_json
from mvfr.runtime import start_stage
from mvfr.stage import run_faces, select_face_ids
from options import parse_options


def settings(opt, folder: DataFolder, fid: str) -> dict:
    """What a face's metrics depend on besides its input files."""
    return {"stages": list(opt.stages), "n_samples": opt.n_samples, "seed": opt.seed, "scan_region": opt.scan_region,
            "mm_per_unit": folder.mm_per_unit(fid)}


def is_current(opt, folder: DataFolder, raw: RawFolder, fid: str) -> bool:
    """Whether the face's metrics file holds this run's settings and is newer than every input."""
    path = folder.face_metrics(fid)
    if not path.is_file():
        return False
    try:
        if read_json(path, "metrics file").get("settings") != settings(opt, folder, fid):
            return False
    except ValueError:  # an unreadable file or scale: the face is scored (and its error reported) again
        return False
    stamp = path.stat().st_mtime_ns
    return all(p.stat().st_mtime_ns < stamp for p in evaluation_inputs(folder, raw, fid, opt.scan_region))


def collect(opt, folder: DataFolder, raw: RawFolder, ids: list[str]) -> dict:
    """``{fid: {stage: {metric: value}}}`` of the faces of ``ids`` whose metrics file is current (a face
    that failed this time is left out, not taken from an older run)."""
    return {fid: read_json(folder.face_metrics(fid), "metrics file")["metrics"] for fid in ids
            if is_current(opt, folder, raw, fid)}


def main(argv=None) -> int:
    opt = parse_options("evaluate", argv)
    folder, raw = DataFolder(opt.dataroot), RawFolder(opt.facescape_dataroot)
    sharded = int(os.environ.get("WORLD_SIZE", 1)) > 1
    if sharded:
        from mvfr import distributed  # torch only under torchrun

        distributed.init("cpu")
    start_stage(opt, folder.options_file("evaluate") if not sharded or distributed.is_main() else None)

    def process(fid: str) -> None:
        metrics = evaluate_face(folder, raw, fid, tuple(opt.stages), opt.n_samples, opt.seed, opt.scan_region)
        save_json(folder.face_metrics(fid), {"metrics": metrics, "settings": settings(opt, folder, fid)})

    summary = run_faces(select_face_ids(folder, opt), process, done=lambda fid: is_current(opt, folder, raw, fid),
                        overwrite=opt.overwrite, desc="evaluate")
    if sharded:
        distributed.barrier()
        if not distributed.is_main():
            distributed.cleanup()
            return summary.exit_code()
    per_face = collect(opt, folder, raw, select_face_ids(folder, opt, sharded=False))
    if sharded:
        distributed.cleanup()
    if not per_face:
        print("no face could be evaluated", file=sys.stderr)
        return 1
    doc = write_metrics_json(folder.metrics_json, per_face)
    print(format_table(doc["mean"]))
    print(f"per-face metrics: {folder.metrics_json}")
    return summary.exit_code()


if __name__ == "__main__":
    from mvfr.runtime import run_main

    sys.exit(run_main(main))
