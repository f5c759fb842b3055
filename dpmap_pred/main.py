"""Stage 5, inference: UV textures -> mesoscopic displacement maps (16-bit PNG, mm).

    python dpmap_pred/main.py --dataroot DATA --split eval [--dp_checkpoint predefine_data/checkpoint_dpmap.pt]
    python dpmap_pred/main.py --input TEXTURE_DIR --output DPMAP_DIR          (the original release's interface)
    python -m dpmap_pred.main ...                                              (the same)

Reads ``DATA/pred/texture/texture_PPP_EE.png`` (gen_tex.py) and writes
``DATA/pred/dp_map/dp_map_PPP_EE.png``: a single-channel 16-bit PNG in template UV at the
checkpoint's ``--dp_size``, ``mm = (code - 32768) * 0.0002`` along the outward normal; the encoding is
stored in the PNG (tEXt ``mvfr_dpmap``) and in ``dp_map_PPP_EE.json`` beside it (see
:mod:`dpmap_pred.encoding`). Outside the facial mask the prediction fades to 0 over
``--dp_mask_feather`` texels. With ``--input/--output`` every ``*.png``/``*.jpg`` texture of the
folder gets ``<name>.png`` (+ ``.json``) in the output folder.

With ``--score`` (and ``--facescape_dataroot RAW`` holding ``RAW/dpmap``, synthetic data), the
predicted maps of the selected faces are compared with the ground truth registered to the surface
they are applied to (``pred/reg_map``, :mod:`dpmap_pred.targets`; the scan is read): the Pearson
correlation, MAE and RMSE inside the facial mask are printed and written to ``DATA/logs/dpmap/scores_<split>.json``.
Plain inference never reads RAW. In-process use: ``state = load_state(checkpoint, device, feather)`` once,
then ``process_face(folder, state, device, fid)`` per face.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: put the repository root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from dpmap_pred.encoding import read_dpmap, write_dpmap
from dpmap_pred.inference import dpmap_scores, feather_weights, load_generator, predict_dpmap, resize_image
from dpmap_pred.targets import Target, dp_target
from mvfr.atomic_io import load_image, save_json
from mvfr.datafolder import DataFolder, RawFolder
from mvfr.stage import FACE_ERRORS
from mvfr.training import cached_per_checkpoint
from mvfr.uv_rasterizer import load_facial_mask

log = logging.getLogger("dpmap_main")


def predict_masked(net, texture: np.ndarray, size: int, weights: np.ndarray, device) -> np.ndarray:
    """Displacement [size, size] mm of one texture, faded to 0 outside the facial mask."""
    return predict_dpmap(net, texture, size, device) * weights


@cached_per_checkpoint()
def load_state(checkpoint: str, device, mask_feather: float) -> tuple:
    """Everything per-face inference needs, loaded once per process: ``(net, size, weights, meta)``:
    the generator of ``checkpoint`` on ``device``, its ``dp_size``, the feathered facial-mask
    weights ``[size, size]`` and the encoding metadata written beside every map."""
    net, train_opt = load_generator(checkpoint, device)
    size = int(train_opt["dp_size"])  # the resolution the network was trained at
    weights = feather_weights(load_facial_mask(size), mask_feather)
    meta = {"checkpoint": str(checkpoint), "dp_size": size, "mask_feather_texels": mask_feather,
            "application_surface": Target.from_options(train_opt).record()}
    return net, size, weights, meta


def process_face(folder: DataFolder, state: tuple, device, fid: str) -> None:
    """One face: ``pred/texture/texture_PPP_EE.png`` -> ``pred/dp_map/dp_map_PPP_EE.png`` (+ .json); ``state`` from :func:`load_state`."""
    net, size, weights, meta = state
    dp = predict_masked(net, load_image(folder.texture(fid)), size, weights, device)
    write_dpmap(folder.dp_map(fid), dp, face_id=fid, **meta)


def score_faces(folder: DataFolder, raw: RawFolder, ids: list[str], size: int, split: str, target: Target | str = "residual") -> dict:
    """``--score``: the written maps of ``ids`` against the ground truth the checkpoint was trained for
    (``target``, :func:`dpmap_pred.targets.dp_target`; by default the residual from the surface they are
    applied to, each face's own ``pred/reg_mesh``, to its scan) inside the facial mask -> per-face and
    mean Pearson, MAE, RMSE, standard deviations (printed, and saved as ``DATA/logs/dpmap/scores_<split>.json``)."""
    mask = load_facial_mask(size)
    scores: dict[str, dict[str, float]] = {}
    for fid in ids:
        try:
            gt = dp_target(folder, raw, split, fid, size, target)
        except FACE_ERRORS as exc:  # no RAW/dpmap, scan or reg surface: named in the message
            log.warning("%s: --score, but no ground truth (%s); not scored", fid, exc)
            continue
        dp, _ = read_dpmap(folder.dp_map(fid))
        if dp.shape != (size, size):
            dp = resize_image(dp, size)
        valid = mask & np.isfinite(gt)
        gt = np.where(valid, gt, 0.0)
        scores[fid] = dpmap_scores(dp, gt, valid)
        log.info("%s: Pearson %.3f, MAE %.4f mm", fid, scores[fid]["pearson"], scores[fid]["mae_mm"])
    if not scores:
        print("--score: no face has a ground-truth displacement map in RAW/dpmap", file=sys.stderr)
        return {}
    mean = {k: float(np.mean([s[k] for s in scores.values()])) for k in next(iter(scores.values()))}
    doc = {"faces": scores, "mean": mean}
    save_json(folder.log_dir("dpmap") / f"scores_{split}.json", doc)
    print("displacement vs ground truth inside the facial mask (mean over faces): "
          + ", ".join(f"{k} {v:.4f}" for k, v in mean.items()))
    return doc


def is_current(folder: DataFolder, checkpoint: str, fid: str) -> bool:
    """The face's map exists and is newer than its texture and the checkpoint (a retrained or newly
    shipped checkpoint makes every map again without ``--overwrite``)."""
    out = folder.dp_map(fid)
    if not out.is_file():
        return False
    sources = [Path(checkpoint), folder.texture(fid)]
    return all(not p.is_file() or p.stat().st_mtime <= out.stat().st_mtime for p in sources)


def trained_target(opt, meta: dict) -> Target:
    """The ground truth of ``--score``: the checkpoint's target and application surface (``meta`` from
    :func:`load_state`); ``--dp_target``, ``--dp_smooth_iters``, ``--dp_subdiv_levels`` given on the command line win."""
    return Target.from_record(meta["application_surface"], opt)


def main(argv=None) -> int:
    from mvfr.runtime import resolve_device, start_stage
    from mvfr.stage import run_faces, select_face_ids
    from options import parse_options

    opt = parse_options("dpmap_main", argv)
    device = resolve_device(opt.device)
    try:
        state = load_state(opt.dp_checkpoint, device, opt.dp_mask_feather)
    except (FileNotFoundError, ValueError) as exc:
        print(f"dpmap_main: {exc}", file=sys.stderr)
        return 2
    net, size, weights, meta = state

    if opt.input or opt.output:
        if not (opt.input and opt.output):
            raise SystemExit("--input DIR needs --output DIR (and the other way round)")
        start_stage(opt)
        inputs = sorted(p for p in Path(opt.input).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if not inputs:
            raise SystemExit(f"--input {opt.input} holds no .png/.jpg texture")
        out_dir = Path(opt.output)
        for p in inputs:
            dp = predict_masked(net, load_image(p), size, weights, device)
            write_dpmap(out_dir / f"{p.stem}.png", dp, source=str(p), **meta)
        print(f"wrote {len(inputs)} displacement maps to {out_dir}")
        return 0

    folder, raw = DataFolder(opt.dataroot), RawFolder(opt.facescape_dataroot)
    start_stage(opt, folder.options_file("dpmap_main"))
    ids = select_face_ids(folder, opt)
    summary = run_faces(ids, functools.partial(process_face, folder, state, device), done=functools.partial(is_current, folder, opt.dp_checkpoint), overwrite=opt.overwrite, desc="dpmap_main")
    if opt.score:
        score_faces(folder, raw, [f for f in ids if folder.dp_map(f).is_file()], size, opt.split, trained_target(opt, meta))
    return summary.exit_code()


if __name__ == "__main__":
    from mvfr.runtime import run_main

    sys.exit(run_main(main))
