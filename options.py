"""One argparse module shared by every stage script; each stage accepts only the options it reads.

Precedence: built-in defaults < ``--config FILE.json`` < command line. Every length option is in
millimetres (converted to the capture's units with ``Rt_scale_dict``), every image size in pixels
of the processed images. Option names of the original release are kept (``uv_size``, ``d_size``,
``interval_scale``, ``if_view_num``, ``points_num``, ``sigma``, ``mlp_dim``, ...).

The options are defined once, in groups (``add_*_options``); :data:`STAGES` says which groups, or
which options of a group, each stage reads, so ``eval_if.py --help`` lists what eval_if reads and
nothing else. An option of another stage (on the command line or in a ``--config`` file) is an
error that names the stage that reads it (``eval_if does not read --uv_size; it is read by
gen_maps``). Options a checkpoint fixes (a network's architecture) are not options of the stage
that loads the checkpoint: it reads them from the checkpoint, and the error says so
(:data:`FROM_CHECKPOINT`).

Usage in a stage script::

    from options import parse_options
    opt = parse_options("gen_maps")
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from pathlib import Path
from typing import Callable, Sequence


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(",", "-").split("-") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by '-', got {text!r}") from None


# -------------------------------------------------------------------------------------- option groups


def add_common_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("common")
    g.add_argument("--config", type=str, default=None, help="JSON file of option values (defaults < file < command line)")
    g.add_argument("--dataroot", type=str, default="data", help="DATA_FOLDER: processed tree every stage reads and writes")
    g.add_argument("--facescape_dataroot", type=str, default="raw", help="RAW: FaceScape multi-view tree (images, params.json, scans)")
    g.add_argument("--split", choices=("train", "eval"), default="eval", help="which face ids of id.json to process")
    g.add_argument("--ids", type=str, nargs="*", default=None, help="process only these face ids (PPP_EE), or shell-style patterns matched against id.json "
                        "(quoted, e.g. '01?_*' = persons 010-019); default: all of --split")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="compute device; auto = cuda when available")
    g.add_argument("--overwrite", action="store_true", help="recompute faces whose outputs already exist")
    g.add_argument("--seed", type=int, default=0, help="random seed of this stage")
    g.add_argument("--log_level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="library logging level")


def add_preprocess_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("preprocess_images")
    g.add_argument("--image_long_side", type=int, default=1296, help="long side of processed images, in pixels")


def add_views_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("views")
    g.add_argument("--if_view_num", type=int, default=10, help="number of views kept per face (first valid ones of select_dict)")


def add_maps_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("base maps")
    g.add_argument("--uv_size", type=int, default=256, help="side S of the UV maps, in texels")
    g.add_argument("--search_range_mm", type=float, default=20.0, help="ground-truth displacement search range along the normal, +-mm")
    g.add_argument("--normal_smooth_iters", type=int, default=2, help="smoothing passes over the normal map before renormalising")


def add_hypotheses_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("hypotheses along the normal (stages 2-3; an evaluating stage warns when its checkpoint was trained otherwise)")
    g.add_argument("--d_size", type=int, default=201, help="number of hypotheses D along each normal")
    g.add_argument("--interval_scale", type=float, default=0.2, help="step between hypotheses, in mm")
    g.add_argument("--sigma", type=float, default=1.0, help="width of the Gaussian matching-score target, in mm")


def add_if_train_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("implicit function: training")
    g.add_argument("--points_num", type=int, default=4096, help="texels sampled per face and training step")
    g.add_argument(
        "--offset_jitter",
        type=float,
        default=4.0,
        help="training: uniform noise (+- mm) added to the offset d the MLP is given, so that the score "
        "comes from photo-consistency rather than a prior that the surface lies near the base mesh (0: off)",
    )
    g.add_argument("--mlp_dim", type=_int_list, default=[258, 1024, 512, 256, 128, 1],
                   help="MLP widths, '-' separated; the first is the aggregation: C + 1 variance, 2C + 1 mean and "
                        "variance, 2C + 2 mean, variance and view count (the default, C = --feature_channels)")
    g.add_argument("--if_view_subsets", action=argparse.BooleanOptionalAction, default=True,
                   help="training: each patch sees a random number (2 .. all) of the views that see it, a random subset, "
                        "so the network learns to score from few views too (--no-if_view_subsets: always every view)")
    g.add_argument("--if_init", type=str, default=None,
                   help="training: warm-start weights from this implicit-function checkpoint when there is no checkpoint "
                        "to resume (a narrower MLP input is widened with zero columns: models.implicit_function.init_from)")
    g.add_argument("--feature_channels", type=int, default=128, help="channels of the per-view CNN feature")
    g.add_argument("--if_learning_rate", type=float, default=1e-4, help="Adam learning rate of the implicit function")
    g.add_argument("--if_training_epoch", type=int, default=20, help="training epochs (passes over the training faces)")
    g.add_argument("--if_max_minutes", type=float, default=0.0,
                   help="stop training after this many minutes, with the final checkpoint written (0 = no limit)")
    g.add_argument("--if_faces_per_step", type=int, default=0,
                   help="training faces per optimiser step (the global batch, split over torchrun processes); 0 = one per process")


def add_confidence_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("confidence fallback")
    g.add_argument("--conf_low", type=float, default=0.05,
                   help="confidence (peak score minus the best score beyond 3 sigma) at or below which a texel stays on the base surface")
    g.add_argument("--conf_high", type=float, default=0.2,
                   help="confidence from which a texel takes its searched displacement in full (linear in between; "
                        "0: no fallback, every texel takes its searched displacement)")


def add_if_eval_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("implicit function: search")
    g.add_argument("--refine_passes", type=int, default=2,
                   help="eval_if: searches that refine the base before the last one: the base mesh is moved smoothly "
                        "onto the confident searched surface (mvfr.fitting.fit_to_surface) and searched again from there, "
                        "so a base a centimetre off (the underside of the chin) is found; 0 = one search from the "
                        "landmark base")
    g.add_argument("--if_checkpoint", type=str, default="predefine_data/checkpoint_if.pt",
                   help="checkpoint to evaluate (it fixes the network: --feature_channels, --mlp_dim)")
    g.add_argument("--num_sample", type=int, default=0,
                   help="points per inference chunk (bounds memory; 0 = 4096 on a CPU, where the temporaries then stay "
                        "in cache, 65536 on a GPU)")
    g.add_argument("--search", choices=("c2f", "full"), default="c2f", help="coarse-to-fine or exhaustive search over D")
    g.add_argument("--c2f_strides", type=int, nargs="+", default=None,
                   help="coarse-to-fine levels of the lattice texels: hypothesis strides, decreasing, ending with 1 "
                        "(default 24 6 2 1 for D = 201)")
    g.add_argument("--c2f_peaks", type=int, default=1,
                   help="coarse-to-fine: refine around this many of each texel's highest coarse local maxima")
    g.add_argument("--c2f_lattice", type=int, default=2,
                   help="coarse-to-fine: UV spacing of the texels searched coarse to fine (1 = every texel); the "
                        "others start from their lattice neighbours' best d")
    g.add_argument("--c2f_window", type=int, default=2,
                   help="coarse-to-fine: a texel off the lattice scores its lattice neighbours' best d +- this many steps")
    g.add_argument("--c2f_rounds", type=int, default=6,
                   help="coarse-to-fine: rounds of propagation (each texel also tries its 8 UV neighbours' best d "
                        "+- --c2f_radius)")
    g.add_argument("--c2f_radius", type=int, default=2, help="coarse-to-fine: propagation window, +- steps")


def add_reg_train_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("regulariser: training")
    g.add_argument("--reg_channels", type=int, default=8, help="base channels of the 3D U-Net")
    g.add_argument("--reg_levels", type=int, default=3, help="down-sampling levels of the 3D U-Net")
    g.add_argument("--reg_learning_rate", type=float, default=1e-3, help="Adam learning rate of the regulariser")
    g.add_argument("--reg_training_epoch", type=int, default=20, help="training epochs of the regulariser")
    g.add_argument("--reg_crop_size", type=int, default=32, help="training patches are D x crop x crop, in texels")
    g.add_argument("--reg_batch_size", type=int, default=4, help="patches per training step")
    g.add_argument("--reg_steps_per_epoch", type=int, default=100, help="training steps per epoch")
    g.add_argument("--reg_max_minutes", type=float, default=0.0, help="stop training after this many minutes (0 = no limit)")
    g.add_argument("--reg_resume", type=str, default="auto", help="auto = newest checkpoint in DATA/checkpoints/reg, none = start afresh, or a path")
    g.add_argument("--reg_init", type=str, default=None, help="start from these weights (step 0), e.g. a checkpoint pre-trained on synthetic volumes; ignored when resuming")


def add_reg_eval_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("regulariser: inference")
    g.add_argument("--reg_checkpoint", type=str, default="predefine_data/checkpoint_reg.pt",
                   help="checkpoint to evaluate (it fixes the network: --reg_channels, --reg_levels)")
    g.add_argument("--reg_tile", type=int, default=0,
                   help="inference tile side, in texels, to bound memory (0 = one window over the face: ~5x less work, "
                        "~2.2 GB at D 201, S 256)")
    g.add_argument("--reg_overlap", type=int, default=16, help="extra texels on each side of an inference tile (raised to the U-Net's receptive radius, so tiles equal whole-volume inference)")
    g.add_argument("--close_openings", action=argparse.BooleanOptionalAction, default=True,
                   help="eval_reg: over the base model's eye, mouth and nostril fills, the membrane the surrounding "
                        "surface spans instead of what the search found behind them (an eyeball, teeth or noise)")


def add_tex_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("texture")
    g.add_argument("--tex_uv_size", type=int, default=1024, help="side of the blended UV texture, in texels")
    g.add_argument("--tex_power", type=float, default=2.0, help="view weight = cos(normal, view ray) ** power")
    g.add_argument("--tex_min_cos", type=float, default=0.1, help="views seeing a point at a cosine below this get no weight")
    g.add_argument("--tex_surface", choices=("reg", "truth"), default="reg",
                   help="surface the views are blended on: the regularised one (pred/reg_map, inference) or, for the train "
                        "split only, the ground truth (base pos_map + norm_map * mv_map where valid_map): training textures "
                        "for stage 5 that do not depend on stages 2-3")
    g.add_argument("--tex_exclude_views", type=str, nargs="*", default=[], help="view names left out of blending (e.g. to test on them)")


def add_synthetic_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("gen_synthetic")
    g.add_argument("--out", type=str, default="raw", help="RAW folder to write (FaceScape multi-view layout)")
    g.add_argument("--num_ids", type=int, default=4, help="number of synthetic identities")
    g.add_argument("--num_exps", type=int, default=3, help="expressions per identity (FaceScape order: neutral, smile, mouth_stretch, ...)")
    g.add_argument("--random_exps", action="store_true",
                   help="draw each identity's --num_exps expressions at random from FaceScape's 20 (from --seed and the "
                        "person id) instead of the first --num_exps in FaceScape order")
    g.add_argument("--num_views", type=int, default=10, help="cameras per capture (2 to 16)")
    g.add_argument("--image_long_side", type=int, default=1296, help="long side of the rendered images, in pixels")
    g.add_argument("--num_eval_ids", type=int, default=1, help="identities put in the eval split of id.json")
    g.add_argument("--seed", type=int, default=0, help="random seed (the dataset is deterministic for a seed)")
    g.add_argument("--first_id", type=int, default=1, help="person id of the first identity (FaceScape ids start at 1)")
    g.add_argument("--num_invalid_views", type=int, default=1, help="views per capture marked '<v>_valid': false")
    g.add_argument("--distorted_fraction", type=float, default=0.5, help="fraction of cameras with lens distortion applied to the image")
    g.add_argument("--dpmap_size", type=int, default=1024, help="side of the ground-truth mesoscopic displacement map, in texels")
    g.add_argument("--albedo_size", type=int, default=None,
                   help="side of the per-person face-tile albedo and detail maps used for rendering, in texels "
                        "(default 2048: 0.14 mm per texel; v1: 1024, its template-UV albedo)")
    g.add_argument("--world", type=str, default="v2", choices=("v2", "v1"),
                   help="v2: ICT Face Model heads (the default); v1: the first synthesiser, kept only to reproduce "
                        "the data of the shipped checkpoints")
    g.add_argument("--layout", type=str, default=None, choices=("ring", "two_rows", "arc", "scatter"),
                   help="camera layout of every capture (default: drawn per capture)")
    g.add_argument("--mixed_sizes", action="store_true",
                   help="draw each camera's image size between 0.5 and 12 megapixels instead of --image_long_side +-10%%")
    g.add_argument("--identity_scale", type=float, default=1.0, help="std of the ICT identity weights (1: the model's own prior)")
    g.add_argument("--shape_noise_mm", type=float, default=2.0,
                   help="v2: RMS over the face, in mm, of each person's smooth random shape field (24 bumps of 15-40 mm "
                        "std along the normals) that takes the heads out of the ICT model's span, so a base model fitted "
                        "with ICT's own modes cannot be perfect; 0: plain ICT heads (the data before this option)")
    g.add_argument("--detail_gain", type=float, default=1.0, help="scale of the mesoscopic detail (0: none), unitless")
    g.add_argument("--scan_level", type=int, default=3, choices=(1, 2, 3),
                   help="Loop levels of the ground-truth scan's skin (3: edges of about 0.37 mm on the face; 2: 0.73 mm, quicker)")
    g.add_argument("--overwrite", action="store_true", help="regenerate captures whose params.json already exists")
    g.add_argument("--dpmap_only", action="store_true",
                   help="rewrite only RAW/dpmap/<pid>/<k>_<exp>.npy of the captures already in --out (v2 only), "
                        "recomputed from --seed without rendering (e.g. after a template UV change); the other "
                        "options must be the ones the tree was generated with (--seed, --dpmap_size, --albedo_size, "
                        "--detail_gain, --num_ids, --num_exps, ...); images, scans and metadata are left alone")
    g.add_argument("--scan_only", action="store_true",
                   help="rewrite only RAW/mesh and RAW/region of the captures already in --out (v2 only), recomputed "
                        "from --seed without rendering, at --scan_level (e.g. a --scan_level 2 training tree at level 3 "
                        "for stage 5's residual target); the other options must be the ones the tree was generated with")


def add_report_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("make_report")
    g.add_argument("--report_faces", type=int, default=4, help="faces shown in the report")


def add_evaluate_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluate")
    g.add_argument("--stages", nargs="+", default=["base", "if", "reg", "meso"], choices=("base", "if", "reg", "meso"),
                   help="stages to evaluate (those with an output)")
    g.add_argument("--n_samples", type=int, default=200_000, help="surface samples per mesh and direction")
    g.add_argument("--scan_region", type=str, default=None,
                   help="facial region of the scan: a [V_scan] bool .npy (one entry per scan vertex) or a folder of "
                        "PPP_EE.npy; default RAW/region, else computed from the scan and the triangulated landmarks")


def add_dpmap_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("mesoscopic detail (dpmap_pred/)")
    g.add_argument("--dp_ngf", type=int, default=16, help="generator channels after the stem (pix2pixHD ngf; paper: 64)")
    g.add_argument("--dp_n_downsample", type=int, default=3, help="stride-2 downsamplings of the generator (paper: 4)")
    g.add_argument("--dp_n_blocks", type=int, default=6, help="residual blocks of the generator (paper: 9)")
    g.add_argument("--dp_max_mm", type=float, default=1.0, help="output range of the network: +-mm (max_mm * tanh)")
    g.add_argument("--dp_use_uv", action=argparse.BooleanOptionalAction, default=True,
                   help="append the texel's template uv to the network input (wrinkles sit at typical places)")
    g.add_argument("--dp_size", type=int, default=1024, help="side of the displacement map and of the texture fed to the network, in texels (the blended texture's 1024: pores survive; two Loop levels of the reg mesh)")
    g.add_argument("--dp_crop", type=int, default=128, help="side of the random training crops, in texels of --dp_size")
    g.add_argument("--dp_batch_size", type=int, default=4, help="crops per training step")
    g.add_argument("--dp_learning_rate", type=float, default=5e-4, help="Adam learning rate of the generator (and discriminator)")
    g.add_argument("--dp_steps", type=int, default=1500, help="training steps (the learning rate decays linearly over the last half)")
    g.add_argument("--dp_lambda_grad", type=float, default=3.0, help="weight of the L1 loss on finite-difference gradients (per texel, mm)")
    g.add_argument("--dp_loss_levels", type=int, default=4, help="scales of the average pyramid the L1 and gradient losses are averaged over (1 = full resolution only)")
    g.add_argument("--dp_lambda_gan", type=float, default=0.0, help="weight of the LSGAN adversarial term (0 = off)")
    g.add_argument("--dp_ndf", type=int, default=32, help="channels of the PatchGAN discriminator (with --dp_lambda_gan > 0)")
    g.add_argument("--dp_target", choices=("residual", "registered", "as_is"), default=None,
                   help="ground truth of training and --score: residual = the signed distance along the normals from the surface "
                        "the map is added to (the reg mesh smoothed and subdivided as dpmap2mesh does) to the scan, which any "
                        "capture with scans provides; registered = RAW/dpmap at the scan point under each texel (synthetic scans "
                        "with uv); as_is = RAW/dpmap already in each face's own UV (see dpmap_pred/targets.py). Default: "
                        "residual for training, the checkpoint's for main.py --score")
    g.add_argument("--dp_target_surface", choices=("reg", "truth"), default="reg",
                   help="training, --dp_target residual: the surface of the training faces the residual is measured from: their "
                        "own pred/reg_mesh (what inference adds to; run eval_if/eval_reg on them first) or the ground-truth "
                        "surface of their maps, smoothed and subdivided the same way")
    g.add_argument("--dp_log_every", type=int, default=25, help="steps between log lines")
    g.add_argument("--dp_save_every", type=int, default=250, help="steps between checkpoints")
    g.add_argument("--dp_resume", type=str, default="auto", help="checkpoint to resume: auto = latest in DATA/checkpoints/dpmap, none = start afresh, or a path")
    g.add_argument("--dp_checkpoint", type=str, default="predefine_data/checkpoint_dpmap.pt", help="generator checkpoint used by main.py")
    g.add_argument("--dp_mask_feather", type=float, default=4.0, help="main.py: the prediction is faded to 0 outside the facial mask over this many texels (0 = no masking, negative = keep everything)")
    g.add_argument("--input", type=str, default=None, help="main.py: folder of UV textures (*.png/*.jpg) instead of --dataroot (original release's interface)")
    g.add_argument("--output", type=str, default=None, help="main.py: folder for the displacement maps of --input")
    g.add_argument("--score", action="store_true",
                   help="main.py: compare the maps with the ground truth RAW/dpmap (synthetic data); plain inference never reads RAW")
    g.add_argument("--dp_smooth_iters", type=int, default=None,
                   help="Taubin smoothing iterations of the reg mesh before the detail is added (0 = none). Training: "
                        "the application surface the residual target is measured from (default 30); main.py/dpmap2mesh: "
                        "default = what the checkpoint was trained with (recorded in each map's JSON); another value "
                        "is used with a warning")
    g.add_argument("--dp_subdiv_levels", type=int, default=None,
                   help="Loop subdivision levels of the reg mesh (-1 = enough for one vertex per displacement texel, at most 3); "
                        "training default -1, main.py/dpmap2mesh default = the checkpoint's, like --dp_smooth_iters")
    g.add_argument("--dp_mesh", type=str, default=None, help="dpmap2mesh: mesh to displace instead of DATA/pred/reg_mesh (with --dp_map and --output)")
    g.add_argument("--dp_map", type=str, default=None, help="dpmap2mesh: displacement PNG to apply to --dp_mesh")
    g.add_argument("--dp_mm_per_unit", type=float, default=None, help="dpmap2mesh: millimetres per mesh unit for --dp_mesh (default 1.0)")


def add_import_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("import_capture")
    g.add_argument("--out", type=str, required=True, help="RAW folder to add the capture to (created if missing)")
    g.add_argument("--face_id", type=str, required=True, help="id of the capture, PPP_EE (person 3 digits, expression 2 digits)")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--colmap", type=str, default=None, help="COLMAP sparse model folder (cameras/images .txt or .bin)")
    src.add_argument("--metashape", type=str, default=None, help="Agisoft Metashape camera XML")
    src.add_argument("--transforms", type=str, default=None, help="NeRF/nerfstudio transforms.json")
    src.add_argument("--opencv_yaml", type=str, default=None, help="folder of OpenCV <view>.yml|.yaml|.json (K, D, R, T), or an EasyMocap / ZJU-MoCap "
                          "intri.yml + extri.yml pair (their folder, or intri.yml itself; T in metres)")
    g.add_argument("--images", type=str, required=True, help="folder of the capture's images (JPEG, PNG or TIFF)")
    g.add_argument("--mm_per_unit", type=float, default=None,
                   help="millimetres per calibration unit (default: none recorded; gen_maps.py estimates it from the base-model fit)")
    g.add_argument("--scan", type=str, default=None, help="ground-truth scan (PLY, calibration units), copied to RAW/mesh")
    g.add_argument("--split", choices=("train", "eval"), default="eval", help="split of id.json the capture joins")
    g.add_argument("--overwrite", action="store_true", help="replace a capture of the same id already in --out")


# --------------------------------------------------------------------------- which stage reads what

Selection = Callable[[str], bool]  # option dest -> whether the stage reads it


def only(*dests: str) -> Selection:
    """The options ``dests`` of a group."""
    return frozenset(dests).__contains__


def all_but(*dests: str) -> Selection:
    """Every option of a group but ``dests``."""
    return lambda dest: dest not in dests


def every(dest: str) -> bool:
    """Every option of a group."""
    return True


RUN = ("config", "dataroot", "seed", "log_level")  # every stage that starts with mvfr.runtime.start_stage
FACES = ("split", "ids", "overwrite")  # the per-face loop (mvfr.stage.select_face_ids, run_faces)
# dpmap_pred/: main.py and dpmap2mesh.py read these; dpmap_pred/train.py every other option of the dp_* group
DP_MAIN = ("dp_checkpoint", "dp_mask_feather", "dp_target", "dp_smooth_iters", "dp_subdiv_levels", "input", "output", "score")
DP_TO_MESH = ("dp_smooth_iters", "dp_subdiv_levels", "dp_mesh", "dp_map", "dp_mm_per_unit", "output")
DP_INFERENCE_ONLY = ("dp_checkpoint", "dp_mask_feather", "input", "output", "score", "dp_mesh", "dp_map", "dp_mm_per_unit")

Groups = list[tuple[Callable[[argparse.ArgumentParser], None], Selection]]

# stage -> (description, [(group, the options of it the stage reads)])
STAGES: dict[str, tuple[str, Groups]] = {
    "mkdirs": ("Create the DATA_FOLDER tree.", [(add_common_options, only("config", "dataroot"))]),
    "preprocess_images": ("RAW capture -> DATA_FOLDER/images (undistort, resize, K update).", [
        (add_common_options, only(*RUN, "facescape_dataroot", "ids", "overwrite")),
        (add_preprocess_options, every), (add_views_options, every)]),
    "gen_maps": ("Landmarks, triangulation, base-mesh fit and UV maps.", [
        (add_common_options, only(*RUN, *FACES, "facescape_dataroot")), (add_views_options, every),
        (add_maps_options, every)]),
    "train_if": ("Train the implicit function.", [
        (add_common_options, only(*RUN, "split", "ids", "device")), (add_views_options, every),
        (add_hypotheses_options, every), (add_if_train_options, every)]),
    "eval_if": ("Run the implicit function: score volumes, IF maps and meshes.", [
        (add_common_options, only(*RUN, *FACES, "device")), (add_views_options, every),
        (add_maps_options, only("normal_smooth_iters")), (add_hypotheses_options, every),
        (add_confidence_options, every), (add_if_eval_options, every)]),
    "train_reg": ("Train the 3D-CNN regulariser.", [
        (add_common_options, only(*RUN, "ids", "device")), (add_hypotheses_options, only("d_size", "interval_scale")),
        (add_reg_train_options, every)]),
    "eval_reg": ("Run the regulariser: refined maps and meshes.", [
        (add_common_options, only(*RUN, *FACES, "device")), (add_hypotheses_options, every),
        (add_confidence_options, every), (add_reg_eval_options, every)]),
    "gen_tex": ("Blend the views into a UV texture.", [
        (add_common_options, only(*RUN, *FACES)), (add_views_options, every), (add_tex_options, every)]),
    "evaluate": ("Per-stage metrics in mm against the ground-truth scans.", [
        (add_common_options, only(*RUN, *FACES, "facescape_dataroot")), (add_evaluate_options, every)]),
    "make_report": ("Write the visual report eval/report/index.html.", [
        (add_common_options, only(*RUN, *FACES, "facescape_dataroot")), (add_report_options, every)]),
    "dpmap_train": ("Train the texture -> mesoscopic displacement network.", [
        (add_common_options, only(*RUN, "split", "ids", "facescape_dataroot", "device")),
        (add_dpmap_options, all_but(*DP_INFERENCE_ONLY))]),
    "dpmap_main": ("Predict mesoscopic displacement maps from UV textures.", [
        (add_common_options, only(*RUN, *FACES, "facescape_dataroot", "device")), (add_dpmap_options, only(*DP_MAIN))]),
    "dpmap2mesh": ("Subdivide the reg mesh and displace it by the predicted displacement map.", [
        (add_common_options, only(*RUN, *FACES)),
        (add_dpmap_options, only(*DP_TO_MESH))]),
    "gen_synthetic": ("Write a synthetic FaceScape-layout dataset with ground truth.", [
        (add_common_options, only("config")), (add_synthetic_options, every)]),
    "import_capture": ("Add one capture calibrated by COLMAP, Metashape, nerfstudio or OpenCV to a RAW folder.", [
        (add_common_options, only("config")), (add_import_options, every)]),
}

# stage -> (its checkpoint option, the options that checkpoint fixes: the stage reads them from it)
FROM_CHECKPOINT: dict[str, tuple[str, tuple[str, ...]]] = {
    "eval_if": ("--if_checkpoint", ("feature_channels", "mlp_dim")),
    "eval_reg": ("--reg_checkpoint", ("reg_channels", "reg_levels")),
    "dpmap_main": ("--dp_checkpoint", ("dp_ngf", "dp_n_downsample", "dp_n_blocks", "dp_max_mm", "dp_use_uv", "dp_size")),
}


# ------------------------------------------------------------------------------------ the machinery


@dataclasses.dataclass
class _Option:
    group: str | None  # title of its argument group
    exclusive: tuple[int, bool] | None  # (which, required) mutually exclusive group
    args: tuple
    kwargs: dict

    @property
    def dest(self) -> str:
        return self.kwargs.get("dest") or self.args[0].lstrip("-").replace("-", "_")


class _Recorder:
    """Stands in for a parser while an ``add_*_options`` function runs; records what it adds."""

    def __init__(self, options: list[_Option], group: str | None = None, exclusive: tuple[int, bool] | None = None):
        self.options, self.group, self.exclusive = options, group, exclusive

    def add_argument_group(self, title: str | None = None, description: str | None = None) -> "_Recorder":
        return _Recorder(self.options, title)

    def add_mutually_exclusive_group(self, required: bool = False) -> "_Recorder":
        return _Recorder(self.options, self.group, (len(self.options), required))

    def add_argument(self, *args, **kwargs) -> None:
        self.options.append(_Option(self.group, self.exclusive, args, kwargs))


@functools.lru_cache(maxsize=None)
def _recorded(adder: Callable[[argparse.ArgumentParser], None]) -> tuple[_Option, ...]:
    options: list[_Option] = []
    adder(_Recorder(options))
    return tuple(options)


def stage_options(stage: str) -> list[str]:
    """The dests of the options ``stage`` reads, in the order of its ``--help``."""
    _, groups = _stage(stage)
    return [o.dest for adder, keep in groups for o in _recorded(adder) if keep(o.dest)]


def accepts(stage: str, dest: str) -> bool:
    """Whether ``stage`` reads the option ``dest`` (e.g. ``accepts("eval_if", "device")``)."""
    return dest in stage_options(stage)


def readers(dest: str) -> list[str]:
    """The stages that read the option ``dest``."""
    return [s for s in STAGES if accepts(s, dest)]


def _stage(stage: str) -> tuple[str, Groups]:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; one of {sorted(STAGES)}")
    return STAGES[stage]


def build_parser(stage: str) -> argparse.ArgumentParser:
    """The parser of ``stage`` (a key of :data:`STAGES`): the options it reads, in their groups."""
    description, groups = _stage(stage)
    prog = {"dpmap_train": "dpmap_pred/train.py", "dpmap_main": "dpmap_pred/main.py",
            "dpmap2mesh": "dpmap_pred/dpmap2mesh.py"}.get(stage, f"{stage}.py")
    p = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    titled: dict[str | None, argparse._ActionsContainer] = {}
    exclusive: dict[tuple, argparse._ActionsContainer] = {}
    for adder, keep in groups:
        for o in _recorded(adder):
            if not keep(o.dest):
                continue
            if o.group not in titled:
                titled[o.group] = p.add_argument_group(o.group) if o.group else p
            target = titled[o.group]
            if o.exclusive is not None:
                key = (adder, o.exclusive)
                if key not in exclusive:
                    exclusive[key] = target.add_mutually_exclusive_group(required=o.exclusive[1])
                target = exclusive[key]
            target.add_argument(*o.args, **o.kwargs)
    return p


def foreign_option_message(stage: str, dest: str) -> str | None:
    """Why ``stage`` refuses the option ``dest`` that another stage reads; None when no stage reads it."""
    if stage in FROM_CHECKPOINT and dest in FROM_CHECKPOINT[stage][1]:
        checkpoint = FROM_CHECKPOINT[stage][0]
        return (f"{stage} does not take --{dest}: the network comes from its checkpoint ({checkpoint}), which "
                f"fixes --{dest}; it is read by {', '.join(readers(dest))} when training")
    stages = readers(dest)
    if not stages:
        return None
    return f"{stage} does not read --{dest}; it is read by {', '.join(stages)}"


def _option_dest(parser: argparse.ArgumentParser, token: str) -> str | None:
    """The dest of a command-line token ``--name`` or ``--name=value`` (``--no-x`` -> ``x``); None otherwise."""
    if not token.startswith("--") or token == "--":
        return None
    name = token.split("=", 1)[0]
    action = parser._option_string_actions.get(name)
    if action is not None:
        return action.dest
    name = name[2:]
    return name[3:] if name.startswith("no-") and not any(readers(name)) else name


def check_foreign(stage: str, parser: argparse.ArgumentParser, dests: Sequence[str], where: str) -> None:
    """Exit through ``parser.error`` when one of ``dests`` is an option of another stage (named)."""
    own = {a.dest for a in parser._actions}
    for dest in dests:
        if dest not in own:
            message = foreign_option_message(stage, dest)
            if message:
                parser.error(f"{message} ({where})")


def read_by(stage: str, argv: Sequence[str]) -> list[str]:
    """``argv`` without the options ``stage`` does not read (and their values): one set of arguments,
    e.g. ``--dataroot D --facescape_dataroot R --device cpu``, cut to what each stage of a chain takes."""
    own = build_parser(stage)
    known = {**{k: a for s in STAGES for k, a in build_parser(s)._option_string_actions.items()},
             **own._option_string_actions}
    out, keep, i = [], True, 0
    argv = list(argv)
    while i < len(argv):
        token = argv[i]
        name = token.split("=", 1)[0]
        action = known.get(name) if token.startswith("--") else None
        if action is None:
            if keep:
                out.append(token)
            i += 1
            continue
        keep = name in own._option_string_actions
        values = 0 if "=" in token or action.nargs == 0 else 1
        if action.nargs in ("*", "+"):
            values = next((k for k, t in enumerate(argv[i + 1:]) if t.startswith("--")), len(argv) - i - 1)
        elif isinstance(action.nargs, int):
            values = action.nargs
        if keep:
            out += argv[i : i + 1 + values]
        i += 1 + values
    return out


def parse_options(stage: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` (default: sys.argv) for ``stage``: defaults < ``--config`` file < command line.
    An option another stage reads is an error naming that stage, on the command line and in the file."""
    parser = build_parser(stage)
    argv = list(sys.argv[1:] if argv is None else argv)
    check_foreign(stage, parser, [d for d in map(functools.partial(_option_dest, parser), argv) if d], "command line")
    pre, _ = parser.parse_known_args(argv)
    if getattr(pre, "config", None):
        path = Path(pre.config)
        if not path.is_file():
            parser.error(f"--config {path} does not exist")
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            parser.error(f"--config {path} is not valid JSON: {exc}")
        check_foreign(stage, parser, list(values), f"--config {path}")
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            parser.error(f"--config {path} has unknown options {unknown}; see --help")
        parser.set_defaults(**values)
    opt = parser.parse_args(argv)
    opt.stage = stage
    return opt
