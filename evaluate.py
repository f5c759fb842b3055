"""Per-stage metrics in mm against the ground-truth scans (DESIGN §6).

    python evaluate.py --dataroot DATA --facescape_dataroot RAW --split eval [--scan_region FILE]

Facial region of each scan: ``--scan_region`` (a [V_scan] bool .npy, or a folder of PPP_EE.npy),
else RAW/region/<pid>/<k>_<exp>.npy, else computed from the scan and the triangulated landmarks
(see mvfr/evaluation.py). The scan is wound to face the cameras before scoring.

Writes DATA/eval/metrics.json ({"faces": {id: {stage: {metric: value}}}, "mean": {...}}) and
prints the mean table. Stages without an output for a face are left out for that face.
"""

import sys

from mvfr.datafolder import DataFolder, RawFolder
from mvfr.evaluation import evaluate_face
from mvfr.metrics import STAGE_ORDER, format_table, metrics_document, write_metrics_json
from mvfr.runtime import start_stage
from mvfr.stage import run_faces, select_face_ids
from options import parse_options


def main(argv=None) -> int:
    opt = parse_options("evaluate", argv)
    folder, raw = DataFolder(opt.dataroot), RawFolder(opt.facescape_dataroot)
    start_stage(opt, folder.options_file("evaluate"))
    per_face: dict = {}

    def process(fid: str) -> None:
        per_face[fid] = evaluate_face(folder, raw, fid, tuple(opt.stages), opt.n_samples, opt.seed, opt.scan_region)

    summary = run_faces(select_face_ids(folder, opt, sharded=False), process, desc="evaluate")
    if not per_face:
        print("no face could be evaluated", file=sys.stderr)
        return 1
    doc = metrics_document(per_face)
    write_metrics_json(folder.metrics_json, per_face)
    print(format_table(doc["mean"]))
    print(f"per-face metrics: {folder.metrics_json}")
    return summary.exit_code()


if __name__ == "__main__":
    from mvfr.runtime import run_main

    sys.exit(run_main(main))
