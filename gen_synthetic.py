"""Write a synthetic FaceScape-layout dataset with exact ground truth (the project's default data).

    python gen_synthetic.py --out RAW --num_ids 4 --num_exps 3 --num_views 10 --image_long_side 1296 --seed 0

RAW/imgs/<pid>/<k>_<exp>/<view>.jpg + params.json, RAW/mesh/<pid>/<k>_<exp>.ply (scan, capture units,
template uvs on the face), RAW/dpmap/... (mesoscopic displacement, mm, template UV),
RAW/landmarks/... (468 3D landmarks, capture units), RAW/select_dict.json, id.json, Rt_scale_dict.json.
Deterministic for a seed. See mvfr/synthesis/ for what is generated and its units.
"""

import sys

from tqdm import tqdm

from mvfr.datafolder import RawFolder, face_id
from mvfr.runtime import setup_logging
from mvfr.synthesis.capture import SynthOptions, select_views, synthesize_capture, write_capture, write_metadata
from options import parse_options


def main(argv=None) -> int:
    opt = parse_options("gen_synthetic", argv)
    setup_logging()
    raw = RawFolder(opt.out)
    sopt = SynthOptions(
        num_views=opt.num_views, image_long_side=opt.image_long_side, num_invalid_views=opt.num_invalid_views,
        distorted_fraction=opt.distorted_fraction, dpmap_size=opt.dpmap_size, albedo_size=opt.albedo_size, seed=opt.seed,
    )
    pids = list(range(opt.first_id, opt.first_id + opt.num_ids))
    ids = [(p, e) for p in pids for e in range(1, opt.num_exps + 1)]
    select, rt_scale = {}, {}
    for pid, eid in tqdm(ids, desc="gen_synthetic", unit="face", file=sys.stderr):
        cap = synthesize_capture(pid, eid, sopt)  # cheap to redo for the metadata; images are only rewritten on demand
        if opt.overwrite or not raw.params(face_id(pid, eid)).is_file():
            write_capture(raw, cap)
        select.setdefault(str(pid), {})[str(eid)] = select_views(cap)
        rt_scale.setdefault(str(pid), {})[str(eid)] = cap.rt_scale
    eval_pids = set(pids[len(pids) - min(opt.num_eval_ids, len(pids)):]) if opt.num_eval_ids > 0 else set()
    write_metadata(raw, select, rt_scale, ids, eval_pids)
    print(f"wrote {len(ids)} captures ({opt.num_ids} identities x {opt.num_exps} expressions, {opt.num_views} views) to {raw.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
