"""Train the post-regulariser (stage 3) on the implicit function's training score volumes.

    python eval_if.py  --dataroot DATA --split train          # writes DATA/volume/train/ori_volume_*.npy
    python train_reg.py --dataroot DATA --reg_channels 8 --reg_training_epoch 20

Inputs per training face: ``volume/train/ori_volume_PPP_EE.npy [D, S, S]``, ``maps/train/{pos_map,
norm_map, mv_map, valid_map}``. Each step draws ``--reg_batch_size`` random ``D x crop x crop``
patches; the loss is a smooth-L1 between the soft-argmax displacement and ``mv_map / step`` (both in
steps) on ``valid_map`` texels only. Checkpoints (plain dicts, ``DATA/checkpoints/reg/step_*.pt``,
resumed automatically), a JSON-lines log and a PNG loss curve (``DATA/logs/reg/``). The last
weights are also written to ``DATA/checkpoints/reg/final.pt`` (no optimizer state): copy it to
``predefine_data/checkpoint_reg.pt`` to ship it.

Under ``torchrun --nproc_per_node N`` (DistributedDataParallel, gloo on CPU / nccl on GPU) the
global batch of ``--reg_batch_size`` crops is split over the N processes: crop i of step s is drawn
from the seed, s and i alone, and rank r takes crops r, r + N, ...; the loss is normalised by the
global batch's valid texels, so N processes compute the same step as one. Rank 0 logs and writes.
"""

from __future__ import annotations

import logging
import math
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from models.reg_net import RegNet3D
from mvfr import distributed
from mvfr.stage import expand_ids
from mvfr.datafolder import DataFolder
from mvfr.mvs.face_inputs import load_search_maps, search_mask
from mvfr.mvs.geometry import half_range
from mvfr.regularisation import (
    gt_steps,
    load_volume,
    random_crops,
    reg_loss,
    soft_argmax,
    step_units,
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
    pos0 = np.load(folder.map("train", "pos_map", fid))
    nrm0 = np.load(folder.map("train", "norm_map", fid))
    mv = np.load(folder.map("train", "mv_map", fid))
    valid = np.load(folder.map("train", "valid_map", fid)).astype(bool)
    pos, nrm = load_search_maps(folder, "train", fid)  # the volume's frame: eval_if's refined base
    if not np.array_equal(pos, pos0):
        # the truth along the refined normals, approximately: the scan point found along the base normal,
        # projected on the refined normal (the two lines differ by the refinement's tilt)
        truth = pos0 + nrm0 * mv[..., None]
        mv = np.where(valid, np.einsum("ijc,ijc->ij", truth - pos, nrm), 0.0).astype(np.float32)
    vol = load_volume(folder.volume("train", fid), d_size=d_size, size=pos.shape[0])
    step = step_units(interval_mm, folder.mm_per_unit(fid))
    target = gt_steps(mv, step, d_size)
    loss_mask = valid & (np.abs(mv / step) <= half_range(d_size)) & (vol.max(0) > 0)
    return {"volume": vol.astype(np.float16), "target": target, "valid": loss_mask, "mask": search_mask(pos, nrm)}


def draw_crops(faces: list[dict], items: list[int], step: int, seed: int, crop: int) -> tuple[torch.Tensor, ...]:
    """Items ``items`` of the global batch of step ``step``: one random ``D x crop x crop`` patch each,
    drawn with the generator of ``(seed, step, item)`` -> ``volume [b, D, c, c]``, ``target [b, c, c]``
    steps, ``valid [b, c, c]``, ``mask [b, c, c]`` (CPU)."""
    vols, targets = [f["volume"] for f in faces], [f["target"] for f in faces]
    valids, masks = [f["valid"] for f in faces], [f["mask"] for f in faces]
    parts = [random_crops(vols, targets, valids, crop, 1, distributed.item_rng(seed, step, i), masks=masks) for i in items]
    return tuple(torch.cat(x) for x in zip(*parts))


def learning_rate(opt, step: int, total: int) -> float:
    """Cosine decay from ``--reg_learning_rate`` to 5 % of it over the whole run (a function of step: resumable)."""
    return opt.reg_learning_rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(step / max(total, 1), 1.0))))


def train_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, faces: list[dict], step: int, total: int, opt, device: str) -> dict:
    """One Adam step (step ``step`` of ``total``) on this rank's share of the global batch of
    ``--reg_batch_size`` crops (:mod:`mvfr.distributed`). ``net`` is the network or its DDP wrapper.
    Returns the global batch's ``loss``, ``mae_mm``, ``mae_if_softargmax_mm`` (the untrained
    network's answer) and ``lr``, the same on every rank."""
    world = distributed.world_size()
    items = distributed.shard_indices(opt.reg_batch_size)
    v, t, valid, m = (x.to(device) for x in draw_crops(faces, items, step, opt.seed, opt.reg_crop_size))
    lr = learning_rate(opt, step, total)
    for g in optimizer.param_groups:
        g["lr"] = lr
    net.train()
    pred = soft_argmax(net(v, m), dim=1)
    count = distributed.all_reduce_sum(valid.sum().to(pred.dtype)).clamp_min(1.0)  # valid texels of the global batch
    loss_sum = reg_loss(pred, t, valid, reduction="sum")
    optimizer.zero_grad(set_to_none=True)
    (loss_sum * (world / count)).backward()  # DDP averages over ranks: the gradient of the global mean
    optimizer.step()
    with torch.no_grad():
        init = soft_argmax(distributed.unwrap(net).temperature * v * m[:, None], dim=1)
        sums = torch.stack([loss_sum.detach(), (pred - t).abs()[valid].sum(), (init - t).abs()[valid].sum()])
        loss, err, err0 = (distributed.all_reduce_sum(sums) / count).tolist()
    return {"loss": loss, "mae_mm": err * opt.interval_scale, "mae_if_softargmax_mm": err0 * opt.interval_scale, "lr": lr}


def main(argv=None) -> int:
    opt = parse_options("train_reg", argv)
    folder = DataFolder(opt.dataroot)
    device = distributed.init(resolve_device(opt.device))
    is_main = distributed.is_main()
    start_stage(opt, folder.options_file("train_reg") if is_main else None)  # same seed, same initial weights on every rank
    distributed.check_global_batch(opt.reg_batch_size, "--reg_batch_size")

    ids = expand_ids(opt.ids, folder) if opt.ids else folder.face_ids("train")
    faces = []
    for fid in tqdm(ids, desc="load volumes", unit="face", file=sys.stderr, disable=not is_main):
        if not folder.volume("train", fid).is_file():
            log.warning("face %s has no training volume %s; run eval_if.py --split train (skipped)", fid, folder.volume("train", fid))
            continue
        faces.append(load_training_face(folder, fid, opt.d_size, opt.interval_scale))
    if not faces:
        print(f"no training volume found under {folder.root / 'volume' / 'train'}; run eval_if.py --split train first", file=sys.stderr)
        distributed.cleanup()
        return 1
    log.info("training on %d faces, %d valid texels", len(faces), sum(int(f["valid"].sum()) for f in faces))

    model = RegNet3D(opt.reg_channels, opt.reg_levels).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=opt.reg_learning_rate)
    ckpt_dir = folder.checkpoint_dir("reg")
    step = 0
    if opt.reg_resume == "auto":
        step, _ = resume(ckpt_dir, model, optimizer, CKPT_FORMAT)
    elif opt.reg_resume != "none":
        step = int(load_checkpoint(opt.reg_resume, model, optimizer, CKPT_FORMAT)["step"])
    if step == 0 and opt.reg_init:
        init = read_checkpoint(opt.reg_init, CKPT_FORMAT)
        model.load_state_dict(init["model"], strict=True)
        log.info("initial weights from %s (trained %d steps)", opt.reg_init, init["step"])
    net = distributed.wrap(model)
    total = opt.reg_training_epoch * opt.reg_steps_per_epoch
    log_path = folder.log_dir("reg") / "train_log.jsonl"
    logger = JsonlLogger(log_path, resume_step=step) if is_main else None
    start = time.time()
    bar = tqdm(total=total, initial=step, desc="train_reg", unit="step", file=sys.stderr, disable=not is_main)
    stopped_early = False
    while step < total:
        record = train_step(net, optimizer, faces, step, total, opt, device)
        step += 1
        bar.update(1)
        out_of_time = opt.reg_max_minutes > 0 and time.time() - start > 60 * opt.reg_max_minutes
        if opt.reg_max_minutes > 0:
            out_of_time = distributed.broadcast_object(out_of_time)  # every rank stops at the same step
        if is_main:
            logger.log(step=step, epoch=step // opt.reg_steps_per_epoch, temperature=model.temperature.item(), **record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", mae_mm=f"{record['mae_mm']:.3f}")
            if step % opt.reg_steps_per_epoch == 0 or step == total or out_of_time:
                save_checkpoint(checkpoint_path(ckpt_dir, step), model, optimizer, step, step // opt.reg_steps_per_epoch, opt, CKPT_FORMAT)
                prune_checkpoints(ckpt_dir, keep=3)
                plot_loss_curve(read_jsonl(log_path), folder.log_dir("reg") / "loss_curve.png",
                                keys=("loss", "mae_mm", "mae_if_softargmax_mm"), title="regulariser")
        if out_of_time:
            log.warning("stopping after --reg_max_minutes %.1f at step %d of %d", opt.reg_max_minutes, step, total)
            stopped_early = True
            break
    bar.close()
    if is_main:
        final = ckpt_dir / "final.pt"
        save_checkpoint(final, model, None, step, step // opt.reg_steps_per_epoch, opt, CKPT_FORMAT)
        print(f"trained {step} steps{' (time limit)' if stopped_early else ''}; weights: {final}", file=sys.stderr)
    distributed.cleanup()
    return 0


if __name__ == "__main__":
    from mvfr.runtime import run_main

    sys.exit(run_main(main))
