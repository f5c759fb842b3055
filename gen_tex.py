"""Blend the views into a UV texture (stage 4) and write the textured mesh.

    python gen_tex.py --dataroot DATA --split eval [--tex_uv_size 1024]

Per face: the regularised surface ``pred/reg_map/pos_map_PPP_EE.npy`` (refined texels as in
eval_reg.py) is upsampled to ``--tex_uv_size`` and projected into every view; each view is weighted
by ``cos(normal, view ray) ** --tex_power`` and by visibility (an embree depth test against the
refined mesh itself, so self-occluded points, e.g. the cheek behind the nose, get no colour from
that view); colours are averaged, unobserved texels are filled (push-pull). Writes
``pred/texture/texture_PPP_EE.png`` (row 0 = v 1) and ``pred/texture/textured_PPP_EE.obj`` + ``.mtl``
that reference it (opens in MeshLab and Blender). ``--tex_surface truth`` (train split) blends on the
ground-truth surface instead: stage 5's training textures, independent of stages 2-3. ``--tex_exclude_views`` leaves views out (to test
the texture on a photograph it has not seen, see benchmarks/bench_texture.py).
In-process use: ``process_face(opt, folder, fid)`` per face (nothing to load beforehand).
"""

from __future__ import annotations

import functools
import sys

import numpy as np

from mvfr.atomic_io import load_npy
from mvfr.base_maps import truth_surface
from mvfr.capture import load_capture
from mvfr.datafolder import DataError, DataFolder
from mvfr.mesh_io import write_obj
from mvfr.mvs.face_inputs import search_mask
from mvfr.runtime import start_stage
from mvfr.stage import run_faces, select_face_ids
from mvfr.texture import texture_from_surface
from options import parse_options


def surface(opt, folder: DataFolder, fid: str, pos: np.ndarray, nrm: np.ndarray) -> np.ndarray:
    """The surface to blend on, ``[S, S, 3]`` capture units: ``pred/reg_map`` or (``--tex_surface truth``) the ground truth."""
    if opt.tex_surface == "truth":
        mv, valid = load_npy(folder.map(opt.split, "mv_map", fid)), load_npy(folder.map(opt.split, "valid_map", fid))
        return truth_surface(pos, nrm, mv, valid)[0]
    if not folder.reg_map(fid).is_file():
        raise DataError(f"face {fid} has no regularised surface {folder.reg_map(fid)}; run eval_reg.py first")
    return load_npy(folder.reg_map(fid))


def process_face(opt, folder: DataFolder, fid: str) -> None:
    """One face: surface + views -> ``pred/texture/texture_PPP_EE.png`` and the textured OBJ + MTL."""
    exclude = set(opt.tex_exclude_views or [])
    nrm = load_npy(folder.map(opt.split, "norm_map", fid))
    pos = load_npy(folder.map(opt.split, "pos_map", fid))
    refined = surface(opt, folder, fid, pos, nrm)
    mask = search_mask(pos, nrm)
    cap = load_capture(folder, fid, max_views=opt.if_view_num)
    keep = [k for k, v in enumerate(cap.views) if v not in exclude]
    if not keep:
        raise DataError(f"face {fid}: --tex_exclude_views leaves no view to blend")
    texture, _, mesh = texture_from_surface(
        refined, mask, [cap.images[k] for k in keep], [cap.cameras[k] for k in keep], opt.tex_uv_size, opt.tex_power, opt.tex_min_cos
    )
    write_obj(folder.textured_mesh(fid), mesh, texture_image=texture, texture_name=folder.texture(fid).name)


def main(argv=None) -> int:
    opt = parse_options("gen_tex", argv)
    folder = DataFolder(opt.dataroot)
    start_stage(opt, folder.options_file("gen_tex"))

    if opt.tex_surface == "truth" and opt.split != "train":
        print("gen_tex.py: --tex_surface truth needs --split train (the ground truth of the training maps)", file=sys.stderr)
        return 2

    ids = select_face_ids(folder, opt)
    summary = run_faces(
        ids, functools.partial(process_face, opt, folder),
        done=lambda f: folder.texture(f).is_file() and folder.textured_mesh(f).is_file(), overwrite=opt.overwrite, desc="gen_tex"
    )
    return summary.exit_code()


if __name__ == "__main__":
    from mvfr.runtime import run_main

    sys.exit(run_main(main))
