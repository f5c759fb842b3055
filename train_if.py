"""Stage 2, training: the implicit function (feature CNN + MLP) on the training split.

    python train_if.py --dataroot DATA --split train [--if_training_epoch 20] [--device auto]

Each epoch visits every training face once (shuffled); a visit is one Adam step on ``--points_num``
hypotheses of one random UV patch of that face (a disc of radius S/8 texels around a random valid
texel; every view is cropped to the patch's projections plus a margin, so the CNN runs on a small
part of each image): texels drawn where ``valid_map`` is set, offsets 80% near the ground truth
(Gaussian, 2 mm) and 20% uniform over the range, label ``exp(-delta^2 / (2 sigma^2))`` (``--sigma``
mm). The offset d the MLP is given carries uniform noise of +-``--offset_jitter`` mm: without it the
network learns that the surface lies near the base mesh and pulls its answers toward d = 0. The images get a random photometric change (brightness, contrast, per-view colour gains).

Writes DATA/checkpoints/if/step_XXXXXXXX.pt (resumed from automatically; the last 3 are kept),
DATA/checkpoints/if/checkpoint_if.pt (weights only, what eval_if.py reads via --if_checkpoint),
DATA/logs/if/train_if.jsonl and loss.png, DATA/logs/options_train_if.json.
"""

from __future__ import annotations

import logging
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from models import build_implicit_function
from mvfr.datafolder import DataFolder
from mvfr.hypotheses import (
    NEAR_SIGMA_MM,
    cut_patches,
    images_to_tensor,
    load_face_inputs,
    patch_crop,
    sample_training_hypotheses,
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


def main() -> int:
    argv = sys.argv[1:]
    opt = parse_options("train_if", argv)
    if "--split" not in argv:
        opt.split = "train"  # training defaults to the training split
    folder = DataFolder(opt.dataroot)
    start_stage(opt, folder.options_file("train_if"))
    device = resolve_device(opt.device)
    ids = select_face_ids(folder, opt, sharded=False)

    faces = []
    for fid in tqdm(ids, desc="load faces", unit="face", file=sys.stderr):
        try:
            f = load_face_inputs(folder, opt.split, fid, opt.d_size, opt.interval_scale, with_gt=True)
        except FACE_ERRORS as exc:
            log.error("face %s skipped: %s", fid, exc)
            continue
        if len(f.train_texels) == 0:
            log.error("face %s skipped: no valid texel seen by 2 views", fid)
            continue
        faces.append(f)
    if not faces:
        print("no training face could be loaded", file=sys.stderr)
        return 1

    model = build_implicit_function(vars(opt)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=opt.if_learning_rate)
    ckpt_dir = folder.checkpoint_dir("if")
    step, epoch = resume(ckpt_dir, model, optimizer, fmt=FORMAT)
    logger = JsonlLogger(folder.log_dir("if") / "train_if.jsonl")
    rng = np.random.default_rng(opt.seed + 1000 * epoch + step)
    gen = torch.Generator().manual_seed(opt.seed + step)
    model.train()

    bar = tqdm(total=opt.if_training_epoch * len(faces), initial=epoch * len(faces), desc="train_if", unit="step", file=sys.stderr)
    while epoch < opt.if_training_epoch:
        for k in rng.permutation(len(faces)):
            f = faces[k]
            t0 = time.time()
            centre = int(rng.choice(f.train_texels))
            patch = texels_near(f.setup, centre, PATCH_RADIUS * f.setup.size)
            patch_train = np.intersect1d(patch, f.train_texels)
            setup, origins, W, H = patch_crop(f.setup, torch.as_tensor(patch), PATCH_MARGIN_PX)
            setup = setup.to(device)
            local = np.searchsorted(patch, patch_train)  # train texels as indices into the patch
            sigma_steps = opt.sigma / f.mm_per_unit / f.step
            near_steps = NEAR_SIGMA_MM / f.mm_per_unit / f.step
            gt_patch = f.gt_steps[patch]
            ti, steps = sample_training_hypotheses(local, gt_patch, opt.points_num, opt.d_size, near_steps, rng)
            ti_t = torch.as_tensor(ti, device=device)
            steps_t = torch.as_tensor(steps, dtype=torch.float32, device=device)
            target = score_target(steps_t, torch.as_tensor(gt_patch[ti], dtype=torch.float32, device=device), sigma_steps)
            images = photometric_augment(images_to_tensor(cut_patches(f.images, origins, W, H), device), gen)
            jitter = None
            if opt.offset_jitter > 0:
                j = opt.offset_jitter / f.mm_per_unit / f.step
                jitter = torch.as_tensor(rng.uniform(-j, j, len(steps)), dtype=torch.float32, device=device)
            score, ok = model(images, setup, ti_t, steps_t, jitter)
            loss = ((score - target) ** 2)[ok].mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            logger.log(step=step, epoch=epoch, face=f.face_id, loss=loss.item(), seconds=time.time() - t0)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", epoch=epoch)
            if step % SAVE_EVERY == 0:
                save_checkpoint(checkpoint_path(ckpt_dir, step), model, optimizer, step, epoch, opt, FORMAT)
                prune_checkpoints(ckpt_dir, keep=3)
                plot_loss_curve(read_jsonl(logger.path), folder.log_dir("if") / "loss.png", title="implicit function")
        epoch += 1
        save_checkpoint(checkpoint_path(ckpt_dir, step), model, optimizer, step, epoch, opt, FORMAT)
        prune_checkpoints(ckpt_dir, keep=3)
    bar.close()
    plot_loss_curve(read_jsonl(logger.path), folder.log_dir("if") / "loss.png", title="implicit function")
    final = ckpt_dir / "checkpoint_if.pt"
    save_checkpoint(final, model, None, step, epoch, opt, FORMAT)
    print(f"trained {step} steps ({epoch} epochs); weights: {final} (copy to predefine_data/checkpoint_if.pt to ship)")
    return 0


if __name__ == "__main__":
    from mvfr.runtime import run_main

    sys.exit(run_main(main))
