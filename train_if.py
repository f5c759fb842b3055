"""Stage 2, training: the implicit function (feature CNN + MLP) on the training split.

    python train_if.py --dataroot DATA --split train [--if_training_epoch 20] [--device auto]

Each epoch visits every training face once (shuffled); a step takes ``--if_faces_per_step`` faces
(default one) and, for each, ``--points_num`` hypotheses of one random UV patch of that face (a
disc of radius S/8 texels around a random valid texel; every view is cropped to the patch's
projections plus a margin, so the CNN runs on a small part of each image), seen by a random number
(2 to all) of the views that see the patch's centre, a random subset of them (``--if_view_subsets``,
on by default: the network must score from two views as well as from ten): texels drawn where
``valid_map`` is set, offsets 80% near the ground truth (Gaussian, 2 mm) and 20% uniform over the
range, label ``exp(-delta^2 / (2 sigma^2))`` (``--sigma`` mm); the loss is the mean squared error,
averaged over the step's faces. The offset d the MLP is given carries uniform noise of
+-``--offset_jitter`` mm: without it the network learns that the surface lies near the base mesh
and pulls its answers toward d = 0. The images get a random photometric change (brightness,
contrast, per-view colour gains).

Writes DATA/checkpoints/if/step_XXXXXXXX.pt (resumed from automatically; the last 3 are kept),
DATA/checkpoints/if/checkpoint_if.pt (weights only, what eval_if.py reads via --if_checkpoint),
DATA/logs/if/train_if.jsonl and loss.png, DATA/logs/options_train_if.json.

Under ``torchrun --nproc_per_node N`` (DistributedDataParallel, gloo on CPU / nccl on GPU) each step
takes ``--if_faces_per_step`` faces (default: N, one per process), split over the processes; the
loss is the mean over the step's faces, each face's patch drawn from the seed, the step and its
place in the batch alone, so N processes compute the same step as one process with the same
``--if_faces_per_step``. Rank 0 logs and writes.
"""

from __future__ import annotations

import logging
import math
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from models import build_implicit_function
from models.implicit_function import init_from
from mvfr import distributed
from mvfr.datafolder import DataFolder
from mvfr.mvs.face_inputs import FaceInputs, images_to_tensor, load_face_inputs
from mvfr.mvs.geometry import subset_views
from mvfr.mvs.training import (
    NEAR_SIGMA_MM,
    cut_patches,
    patch_crop,
    sample_training_hypotheses,
    sample_view_subset,
    score_target,
    texels_near,
)
from mvfr.runtime import resolve_device, start_stage
from mvfr.stage import FACE_ERRORS, select_face_ids
from mvfr.training import (
    JsonlLogger,
    checkpoint_path,
    photometric_augment,
    plot_loss_curve,
    prune_checkpoints,
    read_checkpoint,
    read_jsonl,
    resume,
    save_checkpoint,
)
from options import parse_options

log = logging.getLogger("train_if")
FORMAT = "mvfr-implicit-function-v1"
SAVE_EVERY = 50  # steps between checkpoints
PATCH_RADIUS = 1.0 / 8.0  # training patch radius, as a fraction of S
PATCH_MARGIN_PX = 16  # crop margin around a patch, pixels (covers the CNN receptive field)


def faces_per_step(opt) -> int:
    """The global batch in faces: ``--if_faces_per_step``, or one face per process when it is 0."""
    return opt.if_faces_per_step if opt.if_faces_per_step > 0 else distributed.world_size()


def steps_per_epoch(num_faces: int, per_step: int) -> int:
    return math.ceil(num_faces / per_step)


def step_faces(num_faces: int, per_step: int, step: int, seed: int) -> list[int]:
    """Indices of the ``per_step`` faces of step ``step``'s global batch. Epoch ``e`` visits the faces
    in the order of a permutation drawn from ``(seed, e)``, ``per_step`` at a time (the last step of
    an epoch wraps around to its first faces): a function of the step, so a resumed run goes on
    exactly where the interrupted one was."""
    epoch, k = divmod(step, steps_per_epoch(num_faces, per_step))
    order = np.random.default_rng([seed, epoch]).permutation(num_faces)
    return [int(order[(k * per_step + j) % num_faces]) for j in range(per_step)]


def face_loss(net: torch.nn.Module, f: FaceInputs, rng: np.random.Generator, gen: torch.Generator, opt, device: str) -> torch.Tensor:
    """Mean squared score error on ``--points_num`` hypotheses of one random UV patch of face ``f``
    (``rng`` draws the patch, hypotheses and offset jitter; ``gen`` the photometric change); 0 when
    no hypothesis is seen by 2 views (a patch outside the photographs)."""
    centre = int(rng.choice(f.train_texels))
    patch = texels_near(f.setup, centre, PATCH_RADIUS * f.setup.size)
    patch_train = np.intersect1d(patch, f.train_texels)
    views = np.arange(f.images.shape[0])
    if opt.if_view_subsets:
        views = sample_view_subset(f.setup.view_ok[:, centre].numpy(), rng)
    setup, origins, W, H = patch_crop(subset_views(f.setup, views), torch.as_tensor(patch), PATCH_MARGIN_PX)
    setup = setup.to(device)
    local = np.searchsorted(patch, patch_train)  # train texels as indices into the patch
    sigma_steps = opt.sigma / f.mm_per_unit / f.step
    near_steps = NEAR_SIGMA_MM / f.mm_per_unit / f.step
    gt_patch = f.gt_steps[patch]
    ti, steps = sample_training_hypotheses(local, gt_patch, opt.points_num, opt.d_size, near_steps, rng)
    ti_t = torch.as_tensor(ti, device=device)
    steps_t = torch.as_tensor(steps, dtype=torch.float32, device=device)
    target = score_target(steps_t, torch.as_tensor(gt_patch[ti], dtype=torch.float32, device=device), sigma_steps)
    images = photometric_augment(images_to_tensor(cut_patches(f.images[views], origins, W, H), device), gen)
    jitter = None
    if opt.offset_jitter > 0:
        j = opt.offset_jitter / f.mm_per_unit / f.step
        jitter = torch.as_tensor(rng.uniform(-j, j, len(steps)), dtype=torch.float32, device=device)
    score, ok = net(images, setup, ti_t, steps_t, jitter)
    if not ok.any():  # no hypothesis of the patch is seen by 2 views: no loss (not NaN), the graph kept for DDP
        log.warning("face %s: no hypothesis around texel %d is seen by 2 views; the patch adds no loss", f.face_id, centre)
        return score.sum() * 0.0
    return ((score - target) ** 2)[ok].mean()


def train_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, faces: list[FaceInputs], step: int, opt, device: str) -> dict:
    """One Adam step on this rank's share of step ``step``'s global batch of :func:`faces_per_step`
    faces (:mod:`mvfr.distributed`): the loss is the mean of the faces' :func:`face_loss`, face ``i``
    drawn with the generator of ``(seed, step, i)``. ``net`` is the model or its DDP wrapper.
    Returns the global batch's ``loss`` and its ``face`` ids (comma-separated), the same on every rank."""
    world, per_step = distributed.world_size(), faces_per_step(opt)
    batch = step_faces(len(faces), per_step, step, opt.seed)
    items = distributed.shard_indices(per_step)
    net.train()
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=device)
    for n, i in enumerate(items):
        rng = distributed.item_rng(opt.seed, step, i)
        with distributed.no_sync(net, skip=n < len(items) - 1):  # gradients are all-reduced with the last face
            loss = face_loss(net, faces[batch[i]], rng, distributed.torch_generator(rng), opt, device)
            (loss * (world / per_step)).backward()  # DDP averages over ranks: the gradient of the global mean
        total += loss.detach()
    optimizer.step()
    return {"loss": (distributed.all_reduce_sum(total) / per_step).item(), "face": ",".join(faces[k].face_id for k in batch)}


def training_settings(opt, faces: list[FaceInputs]):
    """The options stored in the checkpoints: ``opt`` with the settings the training data really had.

    ``image_long_side`` is the long side of the processed training images (read from their
    params.json through :func:`load_face_inputs`, the median over faces), not the option's default:
    preprocess_images.py, not train_if.py, sets the resolution. ``if_view_num`` is the most views a
    face was trained with. eval_if.py warns when its images differ from ``image_long_side`` by more
    than :data:`eval_if.RESOLUTION_TOLERANCE`.
    """
    import argparse

    sides = sorted(int(f.image_long_side) for f in faces if f.image_long_side)
    values = dict(vars(opt))
    if sides:
        values["image_long_side"] = sides[len(sides) // 2]
        values["training_image_long_sides"] = [sides[0], sides[-1]]
    values["if_view_num"] = max((len(f.views) for f in faces), default=opt.if_view_num) or opt.if_view_num
    return argparse.Namespace(**values)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    opt = parse_options("train_if", argv)
    if "--split" not in argv:
        opt.split = "train"  # training defaults to the training split
    folder = DataFolder(opt.dataroot)
    device = distributed.init(resolve_device(opt.device))
    is_main = distributed.is_main()
    start_stage(opt, folder.options_file("train_if") if is_main else None)  # same seed, same initial weights on every rank
    per_step = faces_per_step(opt)
    distributed.check_global_batch(per_step, "--if_faces_per_step")
    ids = select_face_ids(folder, opt, sharded=False)

    faces = []
    for fid in tqdm(ids, desc="load faces", unit="face", file=sys.stderr, disable=not is_main):
        try:
            f = load_face_inputs(folder, opt.split, fid, opt.d_size, opt.interval_scale, with_gt=True,
                                 max_views=opt.if_view_num)
        except FACE_ERRORS as exc:
            log.error("face %s skipped: %s", fid, exc)
            continue
        if len(f.train_texels) == 0:
            log.error("face %s skipped: no valid texel seen by 2 views", fid)
            continue
        faces.append(f)
    if not faces:
        print("no training face could be loaded", file=sys.stderr)
        distributed.cleanup()
        return 1

    trained = training_settings(opt, faces)
    log.info("training data: processed images of %s px (long side), up to %s views", trained.image_long_side, trained.if_view_num)
    model = build_implicit_function(vars(opt)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=opt.if_learning_rate)
    ckpt_dir = folder.checkpoint_dir("if")
    step, _ = resume(ckpt_dir, model, optimizer, fmt=FORMAT)
    if step == 0 and opt.if_init:
        skipped = init_from(model, read_checkpoint(opt.if_init, FORMAT)["model"])
        log.info("warm start from %s%s", opt.if_init, f" (not copied: {', '.join(skipped)})" if skipped else "")
    net = distributed.wrap(model)
    spe = steps_per_epoch(len(faces), per_step)
    total = opt.if_training_epoch * spe
    log_path = folder.log_dir("if") / "train_if.jsonl"
    logger = JsonlLogger(log_path, resume_step=step) if is_main else None

    bar = tqdm(total=total, initial=min(step, total), desc="train_if", unit="step", file=sys.stderr, disable=not is_main)
    started = time.time()
    while step < total:
        if opt.if_max_minutes > 0 and distributed.broadcast_object(time.time() - started > 60 * opt.if_max_minutes):
            log.warning("stopping after --if_max_minutes %.1f at step %d of %d", opt.if_max_minutes, step, total)
            if is_main:
                save_checkpoint(checkpoint_path(ckpt_dir, step), model, optimizer, step, step // spe, trained, FORMAT)
                prune_checkpoints(ckpt_dir, keep=3)
            break
        t0 = time.time()
        record = train_step(net, optimizer, faces, step, opt, device)
        epoch = step // spe
        step += 1
        bar.update(1)
        if not is_main:
            continue
        logger.log(step=step, epoch=epoch, seconds=time.time() - t0, **record)
        bar.set_postfix(loss=f"{record['loss']:.4f}", epoch=epoch)
        if step % SAVE_EVERY == 0 or step % spe == 0:  # and at the end of every epoch
            save_checkpoint(checkpoint_path(ckpt_dir, step), model, optimizer, step, step // spe, trained, FORMAT)
            prune_checkpoints(ckpt_dir, keep=3)
        if step % SAVE_EVERY == 0:
            plot_loss_curve(read_jsonl(log_path), folder.log_dir("if") / "loss.png", title="implicit function")
    bar.close()
    if is_main:
        plot_loss_curve(read_jsonl(log_path), folder.log_dir("if") / "loss.png", title="implicit function")
        final = ckpt_dir / "checkpoint_if.pt"
        save_checkpoint(final, model, None, step, step // spe, trained, FORMAT)
        print(f"trained {step} steps ({step // spe} epochs); weights: {final} (copy to predefine_data/checkpoint_if.pt to ship)")
    distributed.cleanup()
    return 0


if __name__ == "__main__":
    from mvfr.runtime import run_main

    sys.exit(run_main(main))
