"""Stage 2, inference: score volumes, IF displacement maps and IF meshes.

    python eval_if.py --dataroot DATA --split eval [--if_checkpoint predefine_data/checkpoint_if.pt] [--search c2f|full]

Per face: features of every view are computed once, then every searched texel (covered by the base
mesh, inside the facial mask and a thin rim around it) is searched over its D hypotheses:
``--search c2f`` (default, D = 201) scores every 12th hypothesis, then every 3rd within +-12 of each
texel's peak, then every one within +-3, then ``--c2f_rounds`` rounds of propagation (each texel
also scores +-1 around its 8 UV neighbours' best); ``--search full`` scores all D. Points go through the network in chunks of ``--num_sample``.
With ``--refine_passes 1`` (the default) the face is searched twice: the base mesh is first moved
smoothly onto the confident part of the first search (:func:`mvfr.fitting.fit_to_surface`: a thin
plate that carries the surface's slope into the parts without evidence), and the second search,
whose outputs are kept, runs along the normals of that refined base (same views, crops and features).
A base that the landmarks leave a centimetre off, as under the chin, is then found.

Writes, per face (atomically; skipped when they exist unless --overwrite):
  DATA/volume/<split>/ori_volume_PPP_EE.npy   [D, S, S] float16 scores (unscored hypotheses of the
                                              c2f search interpolated along d; 0 outside the
                                              searched texels)
  DATA/pred/if_map/disp_map_PPP_EE.npy        [S, S] float32 argmax displacement along the normal, units;
                                              where the confidence is low, the smooth continuation of the
                                              confident texels' displacement (fading to the base surface)
  DATA/pred/if_map/conf_PPP_EE.npy            [S, S] float32 confidence in [0, 1]: peak score minus the best
                                              score beyond 3 sigma (mvfr.confidence); a texel at or below
                                              --conf_low takes the continuation, from --conf_high the argmax
                                              in full
  DATA/pred/if_mesh/if_PPP_EE.obj             UV-grid mesh of pos_map + n * disp over the searched texels
  DATA/volume/<split>/search_pos_map_PPP_EE.npy, search_norm_map_PPP_EE.npy
                                              [S, S, 3] float32 the base surface the volume and the maps are
                                              relative to (the refined base; gen_maps' with --refine_passes 0)
"""

from __future__ import annotations

import functools
import logging
import sys
import time

import numpy as np
import torch

from models import build_implicit_function
from mvfr import confidence
from mvfr.atomic_io import save_npy
from mvfr.base_maps import base_maps
from mvfr.datafolder import DataError, DataFolder
from mvfr.fitting import fit_to_surface
from mvfr.mvs.face_inputs import FaceInputs, images_to_tensor, load_face_inputs, rebase_face_inputs
from mvfr.mvs.geometry import step_offsets
from mvfr.mvs.search import SearchPlan, search_face
from mvfr.mesh_io import Mesh, read_obj, write_obj
from mvfr.runtime import resolve_device, start_stage
from mvfr.stage import run_faces, select_face_ids
from mvfr.training import cached_per_checkpoint, read_checkpoint, warn_if_trained_otherwise
from mvfr.uv_mesh import uv_grid_mesh
from mvfr.uv_rasterizer import build_uv_table
from options import parse_options

log = logging.getLogger("eval_if")
FORMAT = "mvfr-implicit-function-v1"
RESOLUTION_TOLERANCE = 1.5  # warn when the processed images' long side differs from the training one by more than this factor


def resolution_warning(train_options: dict, long_side: int, fid: str) -> str | None:
    """A warning when ``long_side`` (pixels, the processed images of ``fid``) differs from the
    checkpoint's training resolution (``train_options["image_long_side"]``, what train_if.py
    measured on its data) by more than :data:`RESOLUTION_TOLERANCE` either way; else None.
    The features are learnt at one scale: a face at twice the pixels per mm looks different to them."""
    trained = train_options.get("image_long_side")
    if not trained or not long_side:
        return None
    ratio = float(long_side) / float(trained)
    if max(ratio, 1.0 / ratio) <= RESOLUTION_TOLERANCE:
        return None
    return (
        f"face {fid}: processed images are {long_side} px (long side) but the implicit function was trained on "
        f"{trained} px images ({ratio:.2f}x); rerun preprocess_images.py --image_long_side {trained} for the "
        f"checkpoint's accuracy"
    )


@cached_per_checkpoint(maxsize=2)
def load_model(path: str, device: str):
    """The implicit function of a checkpoint (architecture from its stored options), in eval mode;
    loaded once per process and checkpoint version."""
    ckpt = read_checkpoint(path, FORMAT)
    model = build_implicit_function(ckpt["options"])
    model.load_state_dict(ckpt["model"], strict=True)
    return model.to(device).eval(), ckpt


def chunk_size(num_sample: int, device: str) -> int:
    """Points per network call: ``--num_sample``, or for 0 4096 on a CPU (the per-view samples of a
    chunk, V x 4096 x C floats, stay in the caches and the allocator's heap; 65536 was 1.5x slower)
    and 65536 on a GPU."""
    if num_sample > 0:
        return int(num_sample)
    return 65536 if str(device).startswith("cuda") else 4096


def low_precision_ok(device: str) -> bool:
    """bfloat16 features and MLP at inference: on CUDA, and on CPUs with native bfloat16 (AVX512-BF16/AMX)."""
    if str(device).startswith("cuda"):
        return True
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def run_face(
    model,
    face: FaceInputs,
    plan: SearchPlan,
    chunk: int,
    device: str,
    low_precision: bool | None = None,
    exclusion: float | None = None,
    conf_range: tuple[float, float] = (0.05, 0.2),
    features=None,
) -> dict:
    """Search one face -> ``{"volume": [D, S, S] float32, "disp": [S, S] float32 units, "scored": [S, S] bool,
    "conf": [S, S] float32}`` plus seconds ``features_s``, ``search_s`` and the search's ``timings``
    (sampling, mlp, points). ``plan``: how d is searched (:class:`mvfr.mvs.search.SearchPlan`). ``disp``
    is the argmax displacement where the confidence is high and its smooth continuation where it is low
    (:func:`mvfr.confidence.continue_confident` with :func:`mvfr.confidence.fallback_weight`; ``conf_range``
    = low, high; ``exclusion`` the rival-peak radius in steps, default 3 sigma of 1 mm). ``features``: the
    views' features of an earlier search of the same crops (``out["features"]``), computed when None."""
    setup = face.setup.to(device)
    S, D = setup.size, setup.d_size
    low = low_precision_ok(device) if low_precision is None else low_precision
    timings: dict = {}
    with torch.inference_mode():
        t0 = time.perf_counter()
        if features is None:
            features = model.view_features(images_to_tensor(face.images, device), torch.bfloat16 if low else None)
        t1 = time.perf_counter()
        argmax, vol = search_face(model, features, setup, plan, chunk, timings)
        t2 = time.perf_counter()
    vol = vol.cpu().numpy()
    argmax = argmax.cpu().numpy()
    scored = vol.max(1) > 0  # texels with at least one hypothesis seen by 2 views
    if exclusion is None:
        exclusion = confidence.exclusion_steps(1.0, 0.2)
    conf_t = confidence.score_confidence(vol.T, exclusion)
    keep = np.where(scored, confidence.fallback_weight(conf_t, *conf_range), 0.0)
    volume = np.zeros((D, S * S), np.float32)
    volume[:, face.mask.ravel()] = vol.T
    steps, weight = np.zeros(S * S, np.float32), np.zeros(S * S, np.float32)
    steps[face.mask.ravel()] = np.where(scored, step_offsets(D)[argmax], 0.0)
    weight[face.mask.ravel()] = keep
    disp = confidence.continue_confident(steps.reshape(S, S), weight.reshape(S, S), face.mask) * setup.step
    sc = np.zeros(S * S, bool)
    sc[face.mask.ravel()] = scored
    conf = np.zeros(S * S, np.float32)
    conf[face.mask.ravel()] = conf_t
    return {
        "volume": volume.reshape(D, S, S),
        "disp": disp.astype(np.float32),
        "scored": sc.reshape(S, S),
        "conf": conf.reshape(S, S),
        "features": features,
        "features_s": t1 - t0,
        "search_s": t2 - t1,
        "timings": timings,
    }


def refined_face(face: FaceInputs, out: dict, base: Mesh, opt) -> FaceInputs:
    """``face`` searched again from its base moved onto the confident part of the search ``out``
    (:func:`mvfr.fitting.fit_to_surface`; ``base`` the mesh ``face`` was built from, the model topology)."""
    if base.uvs is None or base.face_uvs is None:
        raise DataError(f"face {face.face_id}: the base mesh has no uvs, so the search cannot refine it; make it with "
                        "gen_maps.py, or pass --refine_passes 0")
    table = build_uv_table(base.uvs, base.face_uvs, face.pos_map.shape[0])  # 0.01 s at S = 256: no cache needed
    points = face.pos_map + face.norm_map * out["disp"][..., None]
    weight = np.where(out["scored"], confidence.fallback_weight(out["conf"], opt.conf_low, opt.conf_high), 0.0)
    moved = fit_to_surface(base, table.face_index, table.bary, points, weight, face.mm_per_unit)
    maps = base_maps(table, moved, smooth_iters=opt.normal_smooth_iters)
    return rebase_face_inputs(face, maps["pos_map"], maps["norm_map"], moved.vertices, moved.faces)


@torch.no_grad()  # scoped, not torch.set_grad_enabled(False): main() also runs inside other programs (tests)
def main(argv=None) -> int:
    opt = parse_options("eval_if", argv)
    folder = DataFolder(opt.dataroot)
    start_stage(opt, folder.options_file("eval_if"))
    device = resolve_device(opt.device)
    model, ckpt = load_model(opt.if_checkpoint, device)
    log.info("checkpoint %s: step %s, mlp %s", opt.if_checkpoint, ckpt["step"], model.mlp_dim)
    train_opts = ckpt["options"]
    warn_if_trained_otherwise(opt.if_checkpoint, train_opts, opt, ("d_size", "interval_scale", "sigma"))

    plan = SearchPlan.from_options(opt)

    def process(fid: str) -> None:
        face = load_face_inputs(folder, opt.split, fid, opt.d_size, opt.interval_scale, with_gt=False,
                                max_views=opt.if_view_num)
        warning = resolution_warning(train_opts, face.image_long_side, fid)
        if warning:
            log.warning(warning)
        search = functools.partial(run_face, model, plan=plan, chunk=chunk_size(opt.num_sample, device), device=device,
                                   exclusion=confidence.exclusion_steps(opt.sigma, opt.interval_scale),
                                   conf_range=(opt.conf_low, opt.conf_high))
        out = search(face)
        seconds = [out["features_s"], out["search_s"]]
        base = read_obj(folder.fit_mesh(fid)) if opt.refine_passes else None
        for _ in range(opt.refine_passes):
            face = refined_face(face, out, base, opt)
            out = search(face, features=out["features"])
            seconds[1] += out["search_s"]
        save_npy(folder.search_map(opt.split, "pos_map", fid), face.pos_map)
        save_npy(folder.search_map(opt.split, "norm_map", fid), face.norm_map)
        save_npy(folder.volume(opt.split, fid), out["volume"].astype(np.float16))
        save_npy(folder.conf_map("if", fid), out["conf"])
        save_npy(folder.if_map(fid), out["disp"])
        pos = face.pos_map + face.norm_map * out["disp"][..., None]
        write_obj(folder.if_mesh(fid), uv_grid_mesh(pos, face.mask))
        log.info("%s: features %.1f s, search (%s, %d passes) %.1f s", fid, seconds[0], opt.search, opt.refine_passes + 1,
                 seconds[1])

    def done(fid: str) -> bool:
        outputs = (folder.if_mesh(fid), folder.volume(opt.split, fid), folder.if_map(fid), folder.conf_map("if", fid),
                   folder.search_map(opt.split, "pos_map", fid), folder.search_map(opt.split, "norm_map", fid))
        return all(p.exists() for p in outputs)

    summary = run_faces(select_face_ids(folder, opt), process, done=done, overwrite=opt.overwrite, desc="eval_if")
    return summary.exit_code()


if __name__ == "__main__":
    from mvfr.runtime import run_main

    sys.exit(run_main(main))
