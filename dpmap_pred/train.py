"""Stage 5, training: UV texture -> mesoscopic displacement map (pix2pixHD-style generator).

    python dpmap_pred/train.py --dataroot DATA --facescape_dataroot RAW [--dp_steps 1500] [--device auto]
    python -m dpmap_pred.train ...                                       (the same)

Pairs, one per training face (``--split train`` of id.json, or ``--ids``):
input  ``DATA/pred/texture/texture_PPP_EE.png`` (gen_tex.py's blended UV texture, RGB, template UV),
target :func:`dpmap_pred.targets.dp_target` at ``--dp_size`` (cached in ``DATA/maps/train/<tag>``): by
default (``--dp_target residual``) the signed distance from the surface the map will be added to (the
face's own ``pred/reg_mesh``, smoothed by ``--dp_smooth_iters`` and subdivided as ``dpmap2mesh.py``
does) along its normals to the scan; the loss counts only texels of the facial mask where the target is
finite. The target and its application surface are stored in the checkpoint's options: ``main.py``
records them in every map's JSON and ``dpmap2mesh.py`` displaces the same surface.

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

Under ``torchrun --nproc_per_node N`` (DistributedDataParallel, gloo on CPU / nccl on GPU) the
global batch of ``--dp_batch_size`` crops is split over the N processes: crop i of step s is drawn
from the seed, s and i alone, and rank r takes crops r, r + N, ...; the losses are normalised by
the global batch's counts, so N processes compute the same step as one. Rank 0 logs and writes.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Callable

if __package__ in (None, ""):  # run as a script: put the repository root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from dpmap_pred.inference import FORMAT, build_generator, dpmap_scores, predict_dpmap, resize_image
from dpmap_pred.networks import PatchDiscriminator, count_parameters, uv_grid
from dpmap_pred.targets import Target, dp_target
from mvfr import distributed
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


def load_pair(folder: DataFolder, raw: RawFolder, fid: str, size: int, split: str = "train", target: Target | str = "residual") -> Pair:
    """The (texture, ground-truth displacement) pair of a face at ``size`` x ``size``; the target is
    :func:`dpmap_pred.targets.dp_target` of ``target`` (by default the residual from the face's own
    application surface to its scan)."""
    gt = dp_target(folder, raw, split, fid, size, target)
    texture = load_image(folder.texture(fid))
    valid = np.isfinite(gt) & load_facial_mask(size)
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


def masked_l1_sum(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of |pred - target| over valid texels and their number (``[B, 1, H, W]`` each)."""
    v = valid.to(pred.dtype)
    return ((pred - target).abs() * v).sum(), v.sum()


def gradient_l1_sum(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of the L1 of the finite differences (mm per texel) along x and y where both texels are
    valid, and the number of such pairs."""
    v = valid.to(pred.dtype)
    loss, n = pred.new_zeros(()), pred.new_zeros(())
    for dim in (2, 3):
        dp = torch.diff(pred, dim=dim)
        dt = torch.diff(target, dim=dim)
        vv = v.narrow(dim, 1, v.shape[dim] - 1) * v.narrow(dim, 0, v.shape[dim] - 1)
        loss = loss + ((dp - dt).abs() * vv).sum()
        n = n + vv.sum()
    return loss, n


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


def pyramid_sums(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per scale of a masked average pyramid (up to ``levels``): ``sums [L, 2]`` of the L1 and the
    gradient L1 (mm) and their ``counts [L, 2]`` (valid texels, valid texel pairs)."""
    sums, counts = [], []
    for (p, v), (t, _) in zip(pyramid(pred, valid, levels), pyramid(target, valid, levels)):
        (a, n), (g, m) = masked_l1_sum(p, t, v), gradient_l1_sum(p, t, v)
        sums.append(torch.stack([a, g]))
        counts.append(torch.stack([n, m]))
    return torch.stack(sums), torch.stack(counts)


def pyramid_losses(
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    levels: int,
    reduce_counts: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L1, gradient L1) averaged over ``levels`` scales of a masked average pyramid.

    At the finest scales the target is dominated by pores too small to show in the texture, whose
    L1-optimal prediction is 0; the coarser scales keep the predictable part (wrinkles, folds,
    skin texture) in the loss. ``reduce_counts`` maps the batch's valid counts ``[L, 2]`` to the
    denominators: a process holding a share of a batch passes a sum over processes
    (:func:`mvfr.distributed.all_reduce_sum`) and gets its share of the whole batch's losses.
    """
    sums, counts = pyramid_sums(pred, target, valid, levels)
    if reduce_counts is not None:
        counts = reduce_counts(counts)
    l1, lg = (sums / counts.clamp_min(1.0)).mean(0)
    return l1, lg


def load_pairs(folder: DataFolder, raw: RawFolder, opt, target: Target, size: int, is_main: bool) -> tuple[list[Pair], list[Pair]]:
    """The training pairs of the selected faces (a face that cannot be loaded is skipped, with its
    reason) and, on rank 0 without ``--ids``, up to 2 eval faces whose Pearson r the log records."""
    from mvfr.stage import FACE_ERRORS, select_face_ids

    pairs = []
    for fid in tqdm(select_face_ids(folder, opt, sharded=False), desc="load pairs", unit="face", file=sys.stderr, disable=not is_main):
        try:
            pairs.append(load_pair(folder, raw, fid, size, opt.split, target))
        except FACE_ERRORS as exc:
            log.error("face %s skipped: %s", fid, exc)
    val_pairs = []
    if pairs and not opt.ids and is_main:
        try:
            eval_ids = folder.face_ids("eval")[:2]
        except DataError:
            eval_ids = []
        for fid in eval_ids:
            try:
                val_pairs.append(load_pair(folder, raw, fid, size, "eval", target))
            except FACE_ERRORS:
                pass  # no eval outputs or ground truth yet: nothing to record
    return pairs, val_pairs


def resume_from(resume: str, ckpt_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, int]:
    """``--dp_resume``: ``auto`` (the newest checkpoint in ``ckpt_dir``, if any), ``none`` or a path ->
    the ``(step, epoch)`` to continue from, with ``model`` and ``optimizer`` loaded."""
    from mvfr.training import load_checkpoint, resume as resume_latest

    if resume == "auto":
        return resume_latest(ckpt_dir, model, optimizer, fmt=FORMAT)
    if resume == "none":
        return 0, 0
    ck = load_checkpoint(resume, model, optimizer, fmt=FORMAT)
    return int(ck["step"]), int(ck["epoch"])


def build_training_modules(opt) -> nn.ModuleDict:
    """What training updates and checkpoints: ``generator`` (and ``discriminator`` when ``--dp_lambda_gan > 0``)."""
    modules = {"generator": build_generator(vars(opt))}
    if opt.dp_lambda_gan > 0:
        modules["discriminator"] = PatchDiscriminator(3 + 1, opt.dp_ndf)
    return nn.ModuleDict(modules)


def draw_batch(pairs: list[Pair], items: list[int], step: int, seed: int, crop: int, use_uv: bool):
    """Items ``items`` of the global batch of step ``step``: one random crop each, its colours changed
    at random, drawn with the generator of ``(seed, step, item)`` -> as :func:`sample_batch`."""
    parts = []
    for i in items:
        rng = distributed.item_rng(seed, step, i)
        tex, tgt, val, uv = sample_batch(pairs, 1, crop, rng, use_uv)
        parts.append((colour_jitter(tex, distributed.torch_generator(rng)), tgt, val, uv))
    tex, tgt, val = (torch.cat([p[k] for p in parts]) for k in range(3))
    return tex, tgt, val, (torch.cat([p[3] for p in parts]) if use_uv else None)


def learning_rate(opt, step: int) -> float:
    """``--dp_learning_rate``, decaying linearly to 0 over the second half of ``--dp_steps``."""
    half = opt.dp_steps / 2
    return opt.dp_learning_rate * (1.0 if step < half else max(0.0, (opt.dp_steps - step) / max(half, 1)))


def train_step(
    generator: nn.Module,
    discriminator: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    pairs: list[Pair],
    step: int,
    opt,
    crop: int,
    device: str,
) -> dict:
    """One step (generator, then discriminator when ``--dp_lambda_gan > 0``) on this rank's share of
    the global batch of ``--dp_batch_size`` crops (:mod:`mvfr.distributed`). ``generator`` and
    ``discriminator`` are the networks or their DDP wrappers; every loss is normalised by global
    counts, so N processes compute the same step as one. Returns the global batch's ``loss``,
    ``l1_mm``, ``grad_mm`` (and ``g_adv``, ``d_loss``) and ``lr``, the same on every rank."""
    world = distributed.world_size()
    lr = learning_rate(opt, step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    items = distributed.shard_indices(opt.dp_batch_size)
    tex, tgt, val, uv = draw_batch(pairs, items, step, opt.seed, crop, opt.dp_use_uv)
    tex, tgt, val = tex.to(device), tgt.to(device), val.to(device)
    uv = uv.to(device) if uv is not None else None
    x = tex * 2 - 1
    pred = generator(x, uv)
    l1, lg = pyramid_losses(pred, tgt, val, opt.dp_loss_levels, reduce_counts=distributed.all_reduce_sum)
    loss = l1 + opt.dp_lambda_grad * lg
    terms = [l1, lg]
    if opt.dp_lambda_gan > 0:
        disc = distributed.unwrap(discriminator)  # the generator step needs no discriminator gradient
        scale = distributed.unwrap(generator).max_mm
        for p in disc.parameters():
            p.requires_grad_(False)
        fake_logits = disc(torch.cat([x, pred / scale * val], 1))
        n_logits = fake_logits[0].numel() * opt.dp_batch_size  # patch logits of the global batch
        g_adv = ((fake_logits - 1) ** 2).sum() / n_logits
        loss = loss + opt.dp_lambda_gan * g_adv
        terms.append(g_adv)
    optimizer.zero_grad(set_to_none=True)
    (loss * world).backward()  # DDP averages over ranks: the gradient of the global batch's loss
    optimizer.step()
    if opt.dp_lambda_gan > 0:
        for p in disc.parameters():
            p.requires_grad_(True)
        optimizer.zero_grad(set_to_none=True)
        logits = discriminator(torch.cat([torch.cat([x, tgt / scale * val], 1), torch.cat([x, pred.detach() / scale * val], 1)]))
        real, fake = logits[: len(x)], logits[len(x) :]  # one forward pass per step (DDP)
        d_loss = 0.5 * (((real - 1) ** 2).sum() + (fake**2).sum()) / n_logits
        (d_loss * world).backward()
        optimizer.step()
        terms.append(d_loss)
    total = distributed.all_reduce_sum(torch.stack([t.detach() for t in terms])).tolist()
    record = {"l1_mm": total[0], "grad_mm": total[1], "loss": total[0] + opt.dp_lambda_grad * total[1], "lr": lr}
    if opt.dp_lambda_gan > 0:
        record.update(g_adv=total[2], d_loss=total[3], loss=record["loss"] + opt.dp_lambda_gan * total[2])
    return record


def main(argv=None) -> int:
    from mvfr.runtime import resolve_device, start_stage
    from mvfr.training import JsonlLogger, checkpoint_path, plot_loss_curve, prune_checkpoints, read_jsonl, save_checkpoint
    from options import parse_options

    argv = list(sys.argv[1:] if argv is None else argv)
    opt = parse_options("dpmap_train", argv)
    if "--split" not in argv:
        opt.split = "train"  # training defaults to the training split
    folder, raw = DataFolder(opt.dataroot), RawFolder(opt.facescape_dataroot)
    target = Target.from_options(opt)  # stored resolved in the checkpoint: main.py and dpmap2mesh follow it
    opt.dp_target, opt.dp_smooth_iters, opt.dp_subdiv_levels = target.mode, target.smooth_iters, target.levels
    device = distributed.init(resolve_device(opt.device))
    is_main = distributed.is_main()
    start_stage(opt, folder.options_file("dpmap_train") if is_main else None)  # same seed, same initial weights on every rank
    distributed.check_global_batch(opt.dp_batch_size, "--dp_batch_size")
    size = opt.dp_size
    multiple = 2**opt.dp_n_downsample
    crop = min(opt.dp_crop, size) // multiple * multiple
    if crop < multiple:
        raise SystemExit(f"--dp_crop {opt.dp_crop} must be at least {multiple} (2 ** --dp_n_downsample)")

    pairs, val_pairs = load_pairs(folder, raw, opt, target, size, is_main)
    if not pairs:
        print("no training pair could be loaded (need gen_tex.py textures, scans in RAW/mesh and, for the residual "
              "target, each face's pred/reg_mesh: see the messages above)", file=sys.stderr)
        distributed.cleanup()
        return 1

    model = build_training_modules(opt).to(device)
    net = model["generator"]
    optimizer = torch.optim.Adam(model.parameters(), lr=opt.dp_learning_rate, betas=(0.5, 0.999))
    ckpt_dir = folder.checkpoint_dir("dpmap")
    step, epoch = resume_from(opt.dp_resume, ckpt_dir, model, optimizer)
    log.info("generator: %.2fM parameters; %d training pairs at %d x %d, crops %d; device %s",
             count_parameters(net) / 1e6, len(pairs), size, size, crop, device)
    generator = distributed.wrap(net)
    discriminator = distributed.wrap(model["discriminator"]) if opt.dp_lambda_gan > 0 else None
    logger = JsonlLogger(folder.log_dir("dpmap") / "train_dpmap.jsonl", resume_step=step) if is_main else None
    curve = folder.log_dir("dpmap") / "loss.png"
    crops_per_epoch = max(1, len(pairs))  # an "epoch" = as many crops as training faces

    def save(path: Path, with_optimizer: bool = True) -> None:
        save_checkpoint(path, model if with_optimizer else net, optimizer if with_optimizer else None, step, epoch, opt, FORMAT)

    model.train()
    bar = tqdm(total=opt.dp_steps, initial=min(step, opt.dp_steps), desc="dpmap_train", unit="step", file=sys.stderr, disable=not is_main)
    while step < opt.dp_steps:
        t0 = time.time()
        record = train_step(generator, discriminator, optimizer, pairs, step, opt, crop, device)
        step += 1
        epoch = step * opt.dp_batch_size // crops_per_epoch
        record.update(step=step, epoch=epoch, seconds=time.time() - t0)
        bar.update(1)
        if not is_main:
            continue
        bar.set_postfix(l1=f"{record['l1_mm']:.4f}mm")
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
    if is_main:
        final = ckpt_dir / "checkpoint_dpmap.pt"
        save(final, with_optimizer=False)
        print(f"trained {step} steps; generator weights: {final} "
              f"({final.stat().st_size / 1e6:.1f} MB; copy to predefine_data/checkpoint_dpmap.pt to ship)")
    distributed.cleanup()
    return 0


if __name__ == "__main__":
    from mvfr.runtime import run_main

    sys.exit(run_main(main))
