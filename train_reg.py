"""Train the post-regulariser (stage 3) on the implicit function's training score volumes.

    python eval_if.py  --dataroot DATA --split train          # writes DATA/volume/train/ori_volume_*.npy
    python train_reg.py --dataroot DATA --reg_channels 8 --reg_training_epoch 20

Inputs per training face: ``volume/train/ori_volume_PPP_EE.npy [D, S, S]``, ``maps/train/{pos_map,
norm_map, mv_map, valid_map}``. Each step draws ``--reg_batch_size`` random ``D x crop x crop``
patches; the loss is a smooth-L1 between the soft-argmax displacement and ``mv_map / step`` (both in
steps) on ``valid_map`` texels only. Checkpoints (plain dicts, ``DATA/checkpoints/reg/step_*.pt``,
resumed automatically), a JSON-lines log and a PNG loss curve (``DATA/logs/reg/``). The last
weights are also written to ``DATA/checkpoints/reg/final.pt`` (no optimizer state): copy it to
``predefine_data/checkpoint_reg.pt`` to ship it. Under ``torchrun`` every rank trains on its own
random patches (DistributedDataParallel, gloo on CPU / nccl on GPU); rank 0 writes.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from models.reg_net import RegNet3D
from mvfr.datafolder import DataFolder, face_id, parse_face_id
from mvfr.regularisation import (
    gt_steps,
    load_volume,
    random_crops,
    reg_loss,
    soft_argmax,
    step_units,
    texel_mask,
)
from mvfr.runtime import resolve_device, start_stage
from mvfr.training import (
    JsonlLogger,
    checkpoint_path,
    load_checkpoint,
    plot_loss_curve,
    prune_checkpoints,
    read_checkpoint,
    read_jsonl,
    resume,
    save_checkpoint,
)
from options import parse_options

log = logging.getLogger("train_reg")
CKPT_FORMAT = "mvfr-reg-v1"


def load_training_face(folder: DataFolder, fid: str, d_size: int, interval_mm: float) -> dict:
    """Volume (float16 in memory), GT steps, loss mask and network mask of one training face."""
    pos = np.load(folder.map("train", "pos_map", fid))
    nrm = np.load(folder.map("train", "norm_map", fid))
    mv = np.load(folder.map("train", "mv_map", fid))
    valid = np.load(folder.map("train", "valid_map", fid)).astype(bool)
    vol = load_volume(folder.volume("train", fid), d_size=d_size, size=pos.shape[0])
    step = step_units(interval_mm, folder.mm_per_unit(fid))
    half = (d_size - 1) / 2.0
    target = gt_steps(mv, step, d_size)
    loss_mask = valid & (np.abs(mv / step) <= half) & (vol.max(0) > 0)
    return {"volume": vol.astype(np.float16), "target": target, "valid": loss_mask, "mask": texel_mask(pos, nrm)}


def main() -> int:
    opt = parse_options("train_reg")
    folder = DataFolder(opt.dataroot)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = resolve_device(opt.device)
    if world > 1:
        torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    start_stage(opt, folder.options_file("train_reg") if rank == 0 else None)
    torch.manual_seed(opt.seed)  # same initial weights on every rank
    rng = np.random.default_rng(opt.seed + 1000 * rank)

    ids = [face_id(*parse_face_id(f)) for f in opt.ids] if opt.ids else folder.face_ids("train")
    faces = []
    for fid in tqdm(ids, desc="load volumes", unit="face", file=sys.stderr, disable=rank != 0):
        if not folder.volume("train", fid).is_file():
            log.warning("face %s has no training volume %s; run eval_if.py --split train (skipped)", fid, folder.volume("train", fid))
            continue
        faces.append(load_training_face(folder, fid, opt.d_size, opt.interval_scale))
    if not faces:
        print(f"no training volume found under {folder.root / 'volume' / 'train'}; run eval_if.py --split train first", file=sys.stderr)
        return 1
    log.info("training on %d faces, %d valid texels", len(faces), sum(int(f["valid"].sum()) for f in faces))

    model = RegNet3D(opt.reg_channels, opt.reg_levels).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=opt.reg_learning_rate)
    ckpt_dir = folder.checkpoint_dir("reg")
    step, epoch = 0, 0
    if opt.reg_resume == "auto":
        step, epoch = resume(ckpt_dir, model, optimizer, CKPT_FORMAT)
    elif opt.reg_resume != "none":
        ck = load_checkpoint(opt.reg_resume, model, optimizer, CKPT_FORMAT)
        step, epoch = int(ck["step"]), int(ck["epoch"])
    if step == 0 and opt.reg_init:
        init = read_checkpoint(opt.reg_init, CKPT_FORMAT)
        model.load_state_dict(init["model"], strict=True)
        log.info("initial weights from %s (trained %d steps)", opt.reg_init, init["step"])
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    total = opt.reg_training_epoch * opt.reg_steps_per_epoch
    logger = JsonlLogger(folder.log_dir("reg") / "train_log.jsonl") if rank == 0 else None
    vols, targets = [f["volume"] for f in faces], [f["target"] for f in faces]
    valids, masks = [f["valid"] for f in faces], [f["mask"] for f in faces]
    start = time.time()
    bar = tqdm(total=total, initial=step, desc="train_reg", unit="step", file=sys.stderr, disable=rank != 0)
    stopped_early = False
    while step < total:
        net.train()
        v, t, valid, m = random_crops(vols, targets, valids, opt.reg_crop_size, opt.reg_batch_size, rng, masks=masks)
        v, t, valid, m = v.to(device), t.to(device), valid.to(device), m.to(device)
        for g in optimizer.param_groups:  # cosine decay to 5 % over the whole run (resumable: a function of step)
            g["lr"] = opt.reg_learning_rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(step / max(total, 1), 1.0))))
        pred = soft_argmax(net(v, m), dim=1)
        loss = reg_loss(pred, t, valid)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        bar.update(1)
        if rank == 0:
            with torch.no_grad():
                init = soft_argmax(model.temperature.detach() * v * m[:, None], dim=1)  # the untrained network's answer
                err = (pred - t).abs()[valid].mean().item() * opt.interval_scale
                err0 = (init - t).abs()[valid].mean().item() * opt.interval_scale
            logger.log(step=step, epoch=step // opt.reg_steps_per_epoch, loss=loss.item(), mae_mm=err, mae_if_softargmax_mm=err0,
                       temperature=model.temperature.item(), lr=optimizer.param_groups[0]["lr"])
            bar.set_postfix(loss=f"{loss.item():.3f}", mae_mm=f"{err:.3f}")
        out_of_time = opt.reg_max_minutes > 0 and time.time() - start > 60 * opt.reg_max_minutes
        if rank == 0 and (step % opt.reg_steps_per_epoch == 0 or step == total or out_of_time):
            save_checkpoint(checkpoint_path(ckpt_dir, step), model, optimizer, step, step // opt.reg_steps_per_epoch, opt, CKPT_FORMAT)
            prune_checkpoints(ckpt_dir, keep=3)
            plot_loss_curve(read_jsonl(folder.log_dir("reg") / "train_log.jsonl"), folder.log_dir("reg") / "loss_curve.png",
                            keys=("loss", "mae_mm", "mae_if_softargmax_mm"), title="regulariser")
        if out_of_time:
            log.warning("stopping after --reg_max_minutes %.1f at step %d of %d", opt.reg_max_minutes, step, total)
            stopped_early = True
            break
    bar.close()
    if rank == 0:
        final = ckpt_dir / "final.pt"
        save_checkpoint(final, model, None, step, step // opt.reg_steps_per_epoch, opt, CKPT_FORMAT)
        print(f"trained {step} steps{' (time limit)' if stopped_early else ''}; weights: {final}", file=sys.stderr)
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    from mvfr.runtime import run_main

    sys.exit(run_main(main))
