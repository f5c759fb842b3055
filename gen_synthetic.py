"""Write a synthetic FaceScape-layout dataset with exact ground truth (the project's default data).

    python gen_synthetic.py --out RAW --num_ids 4 --num_exps 3 --num_views 10 --image_long_side 1296 --seed 0

Heads from the ICT Face Model (random identities, FaceScape's expressions as blend shapes), procedural
skin and mesoscopic detail, varied rigs, lights and camera effects (see mvfr/synthesis/).
RAW/imgs/<pid>/<k>_<exp>/<view>.jpg + params.json, RAW/mesh/<pid>/<k>_<exp>.ply (the detailed head in
the ICT topology, capture units), RAW/region/... (bool per scan vertex: the facial region),
RAW/dpmap/... (mesoscopic displacement, mm, template UV), RAW/landmarks/... (468 3D landmarks on the
scan, capture units), RAW/select_dict.json, id.json, Rt_scale_dict.json. Deterministic for a seed.

After a template UV change, ``--dpmap_only`` (same options as the tree was made with) rewrites only
RAW/dpmap of the captures that exist, from the seed, without rendering:

    python gen_synthetic.py --out RAW <the tree's options> --dpmap_only
"""

import sys

import numpy as np
from tqdm import tqdm

from mvfr.datafolder import EXPRESSION_NAMES, RawFolder, face_id
from mvfr.runtime import setup_logging
from mvfr.synthesis.capture import SynthOptions, capture_dpmap, capture_plan, capture_scan, synthesize_capture, write_capture, write_metadata
from options import parse_options


def _v1_capture(pid: int, eid: int, opt):
    """The frozen first synthesiser (``--world v1``): its capture and the metadata entries."""
    from mvfr.synthesis.v1 import capture as v1

    sopt = v1.SynthOptions(num_views=opt.num_views, image_long_side=opt.image_long_side, num_invalid_views=opt.num_invalid_views,
                           distorted_fraction=opt.distorted_fraction, dpmap_size=opt.dpmap_size,
                           albedo_size=opt.albedo_size or 1024, seed=opt.seed)
    cap = v1.synthesize_capture(pid, eid, sopt)
    return cap, v1.write_capture, v1.select_views(cap), cap.rt_scale


def expression_ids(pid: int, opt) -> list[int]:
    """The expression ids (1..20) of person ``pid``: the first ``--num_exps``, or with ``--random_exps``
    ``--num_exps`` distinct ones drawn from ``(--seed, pid)``, in increasing order."""
    if not 1 <= opt.num_exps <= len(EXPRESSION_NAMES):
        raise ValueError(f"--num_exps must be between 1 and {len(EXPRESSION_NAMES)}, got {opt.num_exps}")
    if not opt.random_exps:
        return list(range(1, opt.num_exps + 1))
    rng = np.random.default_rng([int(opt.seed), int(pid), 0x455850])
    return sorted(int(e) + 1 for e in rng.choice(len(EXPRESSION_NAMES), opt.num_exps, replace=False))


def _rewrite_ground_truth(raw: RawFolder, ids, sopt, opt) -> int:
    """``--dpmap_only`` / ``--scan_only``: rewrite RAW/dpmap (template UV of today) or RAW/mesh and
    RAW/region (at ``--scan_level``) of every existing capture of ``ids``, from the seed, without rendering."""
    from mvfr.atomic_io import save_npy
    from mvfr.mesh_io import write_ply

    what = "--scan_only" if opt.scan_only else "--dpmap_only"
    if opt.world != "v2":
        print(f"gen_synthetic.py: {what} works for --world v2 only", file=sys.stderr)
        return 2
    done = 0
    for pid, eid in tqdm(ids, desc=f"gen_synthetic {what}", unit="face", file=sys.stderr):
        fid = face_id(pid, eid)
        if not raw.params(fid).is_file():
            continue  # not generated (yet): a later full run writes it as asked anyway
        if opt.scan_only:
            scan, region = capture_scan(pid, eid, sopt)
            write_ply(raw.scan(fid), scan)
            save_npy(raw.region(fid), region.astype(bool))
        else:
            save_npy(raw.meso_dpmap(fid), capture_dpmap(pid, eid, sopt))
        done += 1
    what_done = f"scans (level {sopt.scan_level})" if opt.scan_only else f"dpmaps ({sopt.dpmap_size} x {sopt.dpmap_size}, template UV)"
    print(f"rewrote {done} {what_done} in {raw.root}")
    return 0


def main(argv=None) -> int:
    opt = parse_options("gen_synthetic", argv)
    setup_logging()
    raw = RawFolder(opt.out)
    if not 2 <= opt.num_views <= 16:
        print(f"gen_synthetic.py: --num_views must be between 2 and 16, got {opt.num_views}", file=sys.stderr)
        return 2
    sopt = SynthOptions(
        num_views=opt.num_views, image_long_side=opt.image_long_side, num_invalid_views=opt.num_invalid_views,
        distorted_fraction=opt.distorted_fraction, dpmap_size=opt.dpmap_size, albedo_size=opt.albedo_size or 2048,
        seed=opt.seed, layout=opt.layout, mixed_sizes=opt.mixed_sizes, identity_scale=opt.identity_scale,
        detail_gain=opt.detail_gain, scan_level=opt.scan_level, shape_noise_mm=opt.shape_noise_mm,
    )
    pids = list(range(opt.first_id, opt.first_id + opt.num_ids))
    ids = [(p, e) for p in pids for e in expression_ids(p, opt)]
    if opt.dpmap_only or opt.scan_only:
        return _rewrite_ground_truth(raw, ids, sopt, opt)
    select, rt_scale = {}, {}
    for pid, eid in tqdm(ids, desc="gen_synthetic", unit="face", file=sys.stderr):
        exists = raw.params(face_id(pid, eid)).is_file() and not opt.overwrite
        if opt.world == "v1":
            cap, write, sel, rts = _v1_capture(pid, eid, opt)
            if not exists:
                write(raw, cap)
        else:
            if not exists:
                write_capture(raw, synthesize_capture(pid, eid, sopt))
            plan = capture_plan(pid, eid, sopt)  # the metadata, without rendering an existing capture again
            sel, rts = plan.select_views(), plan.rt_scale
        select.setdefault(str(pid), {})[str(eid)] = sel
        rt_scale.setdefault(str(pid), {})[str(eid)] = rts
    eval_pids = set(pids[len(pids) - min(opt.num_eval_ids, len(pids)):]) if opt.num_eval_ids > 0 else set()
    write_metadata(raw, select, rt_scale, ids, eval_pids)
    print(f"wrote {len(ids)} captures ({opt.num_ids} identities x {opt.num_exps} expressions, {opt.num_views} views, "
          f"synthesiser {opt.world}) to {raw.root}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
