"""Write the visual report of a DATA_FOLDER: eval/report/index.html with PNGs beside it.

    python make_report.py --dataroot DATA --facescape_dataroot RAW --split eval

A face's figures are drawn once and again only when one of its inputs is newer (or with --overwrite).
Input views with detected landmarks, the stages' surfaces side by side, per-stage error heat maps
(when the ground-truth scans exist), the metrics table (run evaluate.py first) and loss curves.
"""

import sys

from mvfr.datafolder import DataFolder, RawFolder
from mvfr.report import write_report
from mvfr.runtime import start_stage
from mvfr.stage import select_face_ids
from options import parse_options


def main(argv=None) -> int:
    opt = parse_options("make_report", argv)
    folder, raw = DataFolder(opt.dataroot), RawFolder(opt.facescape_dataroot)
    start_stage(opt)
    path = write_report(folder, raw, select_face_ids(folder, opt, sharded=False), max_faces=opt.report_faces,
                        overwrite=opt.overwrite)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    from mvfr.runtime import run_main

    sys.exit(run_main(main))
