"""Run the post-regulariser (stage 3): refined position maps and UV-grid meshes.

    python eval_reg.py --dataroot DATA --split eval [--reg_checkpoint predefine_data/checkpoint_reg.pt]

Per face: ``volume/<split>/ori_volume_PPP_EE.npy`` and the base maps -> soft-argmax displacement
(steps, then capture units) -> ``pred/reg_map/pos_map_PPP_EE.npy`` ([S, S, 3] float32, capture
units: ``pos_map + norm_map * disp`` on the refined texels, the base ``pos_map`` elsewhere) and
``pred/reg_mesh/reg_PPP_EE.obj`` (one vertex per refined texel, two triangles per full 2 x 2 quad,
counter-clockwise seen from outside, with vt and vn). Refined texels: those eval_if searched (the
template's facial mask and a thin rim around its outline, where the base surface exists; no ground
truth needed). The network's width comes from the
checkpoint. In-process use: ``model, _ = load_model(ckpt, device)`` once, then
``process_face(opt, folder, model, device, fid)`` per face. Inference runs under ``torch.no_grad()``, tile by tile (``--reg_tile``, ``--reg_overlap``).

Where the score volume holds no evidence the texel stays on the base surface: the displacement is
scaled by :func:`mvfr.confidence.fallback_weight` of the volume's confidence smoothed over a few
texels (``--conf_low``, ``--conf_high``), written to ``pred/reg_map/conf_PPP_EE.npy`` ([S, S] float32).
Over the base model's openings (the eye, mouth and nostril fills) the surface is the membrane its
surroundings span (:func:`mvfr.regularisation.close_openings`; ``--no-close_openings``: what the search found).
The maps and the volume are relative to eval_if's refined base (``volume/<split>/search_*``).
"""

from __future__ import annotations

import functools
import sys

import numpy as np
import torch

from models.reg_net import build_reg_net
from mvfr import confidence
from mvfr.atomic_io import load_npy, save_npy
from mvfr.datafolder import DataFolder
from mvfr.mesh_io import write_obj
from mvfr.mvs.face_inputs import load_search_maps, search_mask
from mvfr.regularisation import close_openings, load_volume, predict_steps, refine_pos_map, step_units
from mvfr.runtime import resolve_device, start_stage
from mvfr.stage import run_faces, select_face_ids
from mvfr.training import cached_per_checkpoint, read_checkpoint, warn_if_trained_otherwise
from mvfr.uv_mesh import uv_grid_mesh
from mvfr.uv_rasterizer import fill_mask
from options import parse_options

CKPT_FORMAT = "mvfr-reg-v1"


@cached_per_checkpoint()
def load_model(checkpoint: str, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """The regulariser of ``checkpoint`` in eval mode on ``device`` and its training options (loaded once per
    process and checkpoint version)."""
    ckpt = read_checkpoint(checkpoint, CKPT_FORMAT)
    model = build_reg_net(ckpt["options"]).to(device)
    model.load_state_dict(ckpt["model"], strict=True)
    model.eval()
    return model, ckpt["options"]


def regularised_steps(opt, model: torch.nn.Module, vol: np.ndarray, mask: np.ndarray, device) -> tuple[np.ndarray, np.ndarray]:
    """The regulariser's displacement with the confidence fallback: ``vol [D, S, S]`` scores, ``mask [S, S]``
    -> ``steps [S, S]`` float32 (hypothesis steps, 0 outside ``mask``): the soft-argmax where ``conf`` is
    high, its smooth continuation where it is low (:func:`mvfr.confidence.continue_confident` with
    :func:`mvfr.confidence.fallback_weight`), and ``conf [S, S]`` float32: the volume's
    confidence smoothed over a few texels (``opt``: ``reg_tile``, ``reg_overlap``, ``sigma``,
    ``interval_scale``, ``conf_low``, ``conf_high``)."""
    with torch.no_grad():
        steps = predict_steps(model, vol, mask, opt.reg_tile, opt.reg_overlap, device)
    conf = confidence.smooth_confidence(
        confidence.score_confidence(vol, confidence.exclusion_steps(opt.sigma, opt.interval_scale)), mask)
    return confidence.continue_confident(steps, confidence.fallback_weight(conf, opt.conf_low, opt.conf_high), mask), conf


def process_face(opt, folder: DataFolder, model: torch.nn.Module, device, fid: str) -> None:
    """One face: volume + base maps -> ``pred/reg_map`` (pos_map, conf) and ``pred/reg_mesh`` (the stage's outputs)."""
    pos, nrm = load_search_maps(folder, opt.split, fid)  # the volume's frame (eval_if's refined base)
    vol = load_volume(folder.volume(opt.split, fid), d_size=opt.d_size, size=pos.shape[0])
    mask = search_mask(pos, nrm)
    steps, conf = regularised_steps(opt, model, vol, mask, device)
    save_npy(folder.conf_map("reg", fid), conf)
    disp = steps * step_units(opt.interval_scale, folder.mm_per_unit(fid))
    refined = refine_pos_map(pos, nrm, disp, mask)
    if opt.close_openings:
        refined = close_openings(refined, mask, fill_mask(pos.shape[0]))
    save_npy(folder.reg_map(fid), refined)
    write_obj(folder.reg_mesh(fid), uv_grid_mesh(refined, mask))


def main(argv=None) -> int:
    opt = parse_options("eval_reg", argv)
    folder = DataFolder(opt.dataroot)
    start_stage(opt, folder.options_file("eval_reg"))
    device = resolve_device(opt.device)
    model, trained = load_model(opt.reg_checkpoint, device)
    warn_if_trained_otherwise(opt.reg_checkpoint, trained, opt)

    ids = select_face_ids(folder, opt)
    def done(fid: str) -> bool:
        return all(p.is_file() for p in (folder.reg_mesh(fid), folder.reg_map(fid), folder.conf_map("reg", fid)))

    summary = run_faces(ids, functools.partial(process_face, opt, folder, model, device), done=done,
                        overwrite=opt.overwrite, desc="eval_reg")
    return summary.exit_code()


if __name__ == "__main__":
    from mvfr.runtime import run_main

    sys.exit(run_main(main))
