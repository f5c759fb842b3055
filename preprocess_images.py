"""RAW FaceScape-layout captures -> DATA_FOLDER/images (undistort, keep selected valid views, resize, update K).

    python preprocess_images.py --facescape_dataroot RAW --dataroot DATA [--image_long_side 1296] [--if_view_num 10]

Processes every face of RAW/id.json (train and eval; or only --ids), copies select_dict.json,
id.json and Rt_scale_dict.json. A face with bad input (missing or corrupt image, params.json
without a key) is reported and skipped; the others go on; the exit status is then non-zero.
"""

import sys

from mvfr.datafolder import DataFolder, RawFolder
from mvfr.preprocess import all_face_ids, copy_metadata, preprocess_face
from mvfr.runtime import start_stage
from mvfr.stage import expand_ids, run_faces
from options import parse_options


def main(argv=None) -> int:
    opt = parse_options("preprocess_images", argv)
    raw, data = RawFolder(opt.facescape_dataroot), DataFolder(opt.dataroot)
    start_stage(opt, data.options_file("preprocess_images"))
    copy_metadata(raw, data)
    ids = expand_ids(opt.ids, raw) if opt.ids else all_face_ids(raw)
    summary = run_faces(
        ids,
        lambda fid: preprocess_face(raw, data, fid, opt.image_long_side, opt.if_view_num),
        done=lambda fid: data.params(fid).is_file(),
        overwrite=opt.overwrite,
        desc="preprocess_images",
    )
    return summary.exit_code()


if __name__ == "__main__":
    from mvfr.runtime import run_main

    sys.exit(run_main(main))
