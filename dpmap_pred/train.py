"""Stage 5, training: UV texture -> mesoscopic displacement map (pix2pixHD-style generator).

    python dpmap_pred/train.py --dataroot DATA --facescape_dataroot RAW [--dp_steps 1500] [--device auto]
    python -m dpmap_pred.train ...                                       (the same)

Pairs, one per training face (``--split train`` of id.json, or ``--ids``):
input  ``DATA/pred/texture/texture_PPP_EE.png`` (gen_tex.py's blended UV texture, RGB, template UV),
target ``RAW/dpmap/<pid>/<k>_<exp>.npy`` (gen_synthetic.py's ground-truth mesoscopic displacement,
float32 mm along the normal, template UV), both resized to ``--dp_size``; the loss counts only
texels of the facial mask where the target is finite.

Each step draws ``--dp_batch_size`` random ``--dp_crop`` crops (centred on mask texels) from random
faces, changes their colours at random (brightness, contrast, colour gains) and minimises

    L1(pred, gt) + dp_lambda_grad * L1(d/dx, d/dy of pred and gt)   [mm, masked]

averaged over ``--dp_loss_levels`` scales of a masked 2x2-average pyramid
    (+ dp_lambda_gan * LSGAN term of a PatchGAN discriminator, when dp_lambda_gan > 0)

with Adam (learning rate decaying linearly to 0 over the second half). Writes
``DATA/checkpoints/dpmap/step_XXXXXXXX.pt`` (resumed from automatically; the last 3 kept),
``DATA/checkpoints/dpmap/checkpoint_dpmap.pt`` (generator only, what main.py reads with
``--dp_checkpoint``; copy it to ``predefine_data/`` to ship), ``DATA/logs/dpmap/train_dpmap.jsonl``,
``loss.png`` and ``DATA/logs/options_dpmap_train.json``. With ground truth for the eval split, the
log also records the Pearson correlation of full-map predictions on up to 2 eval faces.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: put the repository root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from dpmap_pred.inference import FORMAT, build_generator, dpmap_scores, predict_dpmap, resize_image
from dpmap_pred.networks import PatchDiscriminator, count_parameters, uv_grid
from mvfr.atomic_io import load_image
from mvfr.datafolder import DataError, DataFolder, RawFolder
from mvfr.uv_rasterizer import load_facial_mask

log = logging.getLogger("dpmap_train")


@dataclasses.dataclass
class Pair:
    face_id: str
    texture: np.ndarray  # [S, S, 3] float32 in [0, 1]
    target: np.ndarray  # [S, S] float32 mm (0 where invalid)
    valid: np.ndarray  # [S, S] bool: facial mask & finite target
    centres: np.ndarray  # [K, 2] int (row, col) of valid texels, crop centres


def load_pair(folder: DataFolder, raw: RawFolder, fid: str, size: int) -> Pair:
    """The (texture, ground-truth displacement) pair of a face at ``size`` x ``size``."""
    gt_path = raw.meso_dpmap(fid)
    if not gt_path.is_file():
        raise DataError(f"ground-truth displacement map {gt_path} of face {fid} does not exist; "
                        "training needs synthetic data from gen_synthetic.py (--facescape_dataroot)")
    gt = np.load(gt_path).astype(np.float32)
    if gt.ndim != 2 or gt.shape[0] != gt.shape[1]:
        raise DataError(f"{gt_path} must be a square [S, S] map in mm, got shape {gt.shape}")
    texture = load_image(folder.texture(fid))
    finite = np.isfinite(gt)
    gt = resize_image(np.where(finite, gt, 0.0), size)
    finite = resize_image(finite.astype(np.float32), size) > 0.999
    valid = finite & load_facial_mask(size)
    if not valid.any():
        raise DataError(f"face {fid}: no valid ground-truth texel inside the facial mask")
    tex = resize_image(texture, size) / 255.0
    return Pair(fid, tex.astype(np.float32), np.where(valid, gt, 0.0).astype(np.float32), valid, np.argwhere(valid))


def sample_batch(pairs: list[Pair], batch: int, crop: int, rng: np.random.Generator, use_uv: bool):
    """``batch`` random crops -> textures [B, 3, c, c] in [0, 1], targets [B, 1, c, c] mm,
    valid [B, 1, c, c] bool, uv [B, 2, c, c] (or None)."""
    size = pairs[0].texture.shape[0]
    crop = min(crop, size)
    tex, tgt, val, uvs = [], [], [], []
    for _ in range(batch):
        p = pairs[rng.integers(len(pairs))]
        r, c = p.centres[rng.integers(len(p.centres))]
        top = int(np.clip(r - crop // 2, 0, size - crop))
        left = int(np.clip(c - crop // 2, 0, size - crop))
        sl = (slice(top, top + crop), slice(left, left + crop))
        tex.append(torch.from_numpy(np.ascontiguousarray(p.texture[sl].transpose(2, 0, 1))))
        tgt.append(torch.from_numpy(p.target[sl])[None])
        val.append(torch.from_numpy(p.valid[sl])[None])
        if use_uv:
            uvs.append(uv_grid(crop, crop, top, left, size))
    return torch.stack(tex), torch.stack(tgt), torch.stack(val), (torch.stack(uvs) if use_uv else None)


def colour_jitter(images: torch.Tensor, gen: torch.Generator, brightness=0.1, contrast=0.2, gain=0.1) -> torch.Tensor:
    """Per-crop random brightness, contrast and colour gains of ``images [B, 3, H, W]`` in [0, 1]."""
    B = images.shape[0]

    def u(*shape):
        return torch.rand(*shape, generator=gen) * 2 - 1

    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    out = ((images - mean) * (1 + contrast * u(B, 1, 1, 1)) + mean + brightness * u(B, 1, 1, 1)) * (1 + gain * u(B, 3, 1, 1))
    return out.clamp(0.0, 1.0)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean |pred - target| over valid texels (``[B, 1, H, W]`` each)."""
    v = valid.to(pred.dtype)
    return ((pred - target).abs() * v).sum() / v.sum().clamp_min(1.0)


def gradient_l1(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """L1 of the finite differences (mm per texel) along x and y, where both texels are valid."""
    v = valid.to(pred.dtype)
    loss, n = pred.new_zeros(()), pred.new_zeros(())
    for dim in (2, 3):
        dp = torch.diff(pred, dim=dim)
        dt = torch.diff(target, dim=dim)
        vv = v.narrow(dim, 1, v.shape[dim] - 1) * v.narrow(dim, 0, v.shape[dim] - 1)
        loss = loss + ((dp - dt).abs() * vv).sum()
        n = n + vv.sum()
    return loss / n.clamp_min(1.0)


def pyramid(x: torch.Tensor, valid: torch.Tensor, levels: int):
    """``levels`` scales of ``x [B, 1, H, W]`` (masked 2x2 averages) with their validity (fully valid cells)."""
    out = [(x, valid)]
    v = valid.to(x.dtype)
    for _ in range(levels - 1):
        if min(x.shape[-2:]) < 4:
            break
        den = F.avg_pool2d(v, 2)
        x = F.avg_pool2d(x * v, 2) / den.clamp_min(1e-6)
        v = (den > 0.999).to(x.dtype)
        out.append((x, v > 0))
    return out


def pyramid_losses(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(L1, gradient L1) averaged over ``levels`` scales of a masked average pyramid.

    At the finest scales the target is dominated by pores too small to show in the texture, whose
    L1-optimal prediction is 0; the coarser scales keep the predictable part (wrinkles, folds,
    skin texture) in the loss.
    """
    l1, lg = pred.new_zeros(()), pred.new_zeros(())
    pp, tp = pyramid(pred, valid, levels), pyramid(target, valid, levels)
    for (p, v), (t, _) in zip(pp, tp):
        l1 = l1 + masked_l1(p, t, v)
        lg = lg + gradient_l1(p, t, v)
    return l1 / len(pp), lg / len(pp)


def main(argv=None) -> int:
    from mvfr.runtime import resolve_device, start_stage
    from mvfr.stage import FACE_ERRORS, select_face_ids
    from mvfr.training import (
        JsonlLogger, checkpoint_path, load_checkpoint, plot_loss_curve, prune_checkpoints, read_jsonl, resume, save_checkpoint,
    )
    from options import parse_options

    argv = list(sys.argv[1:] if argv is None else argv)
    opt = parse_options("dpmap_train", argv)
    if "--split" not in argv:
        opt.split = "train"  # training defaults to the training split
    folder, raw = DataFolder(opt.dataroot), RawFolder(opt.facescape_dataroot)
    start_stage(opt, folder.options_file("dpmap_train"))
    device = resolve_device(opt.device)
    size = opt.dp_size
    multiple = 2**opt.dp_n_downsample
    crop = min(opt.dp_crop, size) // multiple * multiple
    if crop < multiple:
        raise SystemExit(f"--dp_crop {opt.dp_crop} must be at least {multiple} (2 ** --dp_n_downsample)")

    pairs = []
    for fid in tqdm(select_face_ids(folder, opt, sharded=False), desc="load pairs", unit="face", file=sys.stderr):
        try:
            pairs.append(load_pair(folder, raw, fid, size))
        except FACE_ERRORS as exc:
            log.error("face %s skipped: %s", fid, exc)
    if not pairs:
        print("no training pair could be loaded (need gen_tex.py textures and RAW/dpmap ground truth)", file=sys.stderr)
        return 1
    val_pairs = []
    if not opt.ids:
        try:
            for fid in folder.face_ids("eval")[:2]:
                try:
                    val_pairs.append(load_pair(folder, raw, fid, size))
                except FACE_ERRORS:
                    pass
        except DataError:
            pass

    net = build_generator(vars(opt))
    modules = {"generator": net}
    if opt.dp_lambda_gan > 0:
        modules["discriminator"] = PatchDiscriminator(3 + 1, opt.dp_ndf)
    model = nn.ModuleDict(modules).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=opt.dp_learning_rate, betas=(0.5, 0.999))
    ckpt_dir = folder.checkpoint_dir("dpmap")
    if opt.dp_resume == "auto":
        step, epoch = resume(ckpt_dir, model, optimizer, fmt=FORMAT)
    elif opt.dp_resume == "none":
        step, epoch = 0, 0
    else:
        ck = load_checkpoint(opt.dp_resume, model, optimizer, fmt=FORMAT)
        step, epoch = int(ck["step"]), int(ck["epoch"])
    log.info("generator: %.2fM parameters; %d training pairs at %d x %d, crops %d; device %s",
             count_parameters(net) / 1e6, len(pairs), size, size, crop, device)
    logger = JsonlLogger(folder.log_dir("dpmap") / "train_dpmap.jsonl")
    curve = folder.log_dir("dpmap") / "loss.png"
    rng = np.random.default_rng(opt.seed + 7919 * step)
    gen = torch.Generator().manual_seed(opt.seed + step)
    crops_per_epoch = max(1, len(pairs))  # an "epoch" = as many crops as training faces

    def lr_at(s: int) -> float:
        half = opt.dp_steps / 2
        return opt.dp_learning_rate * (1.0 if s < half else max(0.0, (opt.dp_steps - s) / max(half, 1)))

    def save(path: Path, with_optimizer: bool = True) -> None:
        save_checkpoint(path, model if with_optimizer else net, optimizer if with_optimizer else None, step, epoch, opt, FORMAT)

    model.train()
    bar = tqdm(total=opt.dp_steps, initial=min(step, opt.dp_steps), desc="dpmap_train", unit="step", file=sys.stderr)
    while step < opt.dp_steps:
        t0 = time.time()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        tex, tgt, val, uv = sample_batch(pairs, opt.dp_batch_size, crop, rng, opt.dp_use_uv)
        tex = colour_jitter(tex, gen)
        tex, tgt, val = tex.to(device), tgt.to(device), val.to(device)
        uv = uv.to(device) if uv is not None else None
        x = tex * 2 - 1
        pred = net(x, uv)
        l1, lg = pyramid_losses(pred, tgt, val, opt.dp_loss_levels)
        loss = l1 + opt.dp_lambda_grad * lg
        record = {"l1_mm": l1.item(), "grad_mm": lg.item()}
        if opt.dp_lambda_gan > 0:
            disc = model["discriminator"]
            scale = net.max_mm
            for p in disc.parameters():
                p.requires_grad_(False)
            fake_logits = disc(torch.cat([x, pred / scale * val], 1))
            g_adv = ((fake_logits - 1) ** 2).mean()
            loss = loss + opt.dp_lambda_gan * g_adv
            record["g_adv"] = g_adv.item()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if opt.dp_lambda_gan > 0:
            for p in disc.parameters():
                p.requires_grad_(True)
            optimizer.zero_grad(set_to_none=True)
            real = disc(torch.cat([x, tgt / scale * val], 1))
            fake = disc(torch.cat([x, pred.detach() / scale * val], 1))
            d_loss = 0.5 * (((real - 1) ** 2).mean() + (fake**2).mean())
            d_loss.backward()
            optimizer.step()
            record["d_loss"] = d_loss.item()
        step += 1
        epoch = step * opt.dp_batch_size // crops_per_epoch
        record.update(step=step, epoch=epoch, loss=loss.item(), lr=lr_at(step - 1), seconds=time.time() - t0)
        bar.update(1)
        bar.set_postfix(l1=f"{l1.item():.4f}mm")
        if step % opt.dp_save_every == 0 or step == opt.dp_steps:
            for vp in val_pairs:
                pred_map = predict_dpmap(net, (vp.texture * 255).astype(np.uint8), size, device)
                record[f"val_pearson_{vp.face_id}"] = dpmap_scores(pred_map, vp.target, vp.valid)["pearson"]
            save(checkpoint_path(ckpt_dir, step))
            prune_checkpoints(ckpt_dir, keep=3)
        if step % opt.dp_log_every == 0 or step == opt.dp_steps or any(k.startswith("val_") for k in record):
            logger.log(**record)
        if step % opt.dp_save_every == 0 or step == opt.dp_steps:
            plot_loss_curve(read_jsonl(logger.path), curve, keys=("loss", "l1_mm", "grad_mm"), title="mesoscopic displacement")
    bar.close()
    final = ckpt_dir / "checkpoint_dpmap.pt"
    save(final, with_optimizer=False)
    print(f"trained {step} steps; generator weights: {final} "
          f"({final.stat().st_size / 1e6:.1f} MB; copy to predefine_data/checkpoint_dpmap.pt to ship)")
    return 0


if __name__ == "__main__":
    from mvfr.runtime import run_main

    sys.exit(run_main(main))
