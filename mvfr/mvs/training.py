"""Training samples of the implicit function: view subsets, patches, hypotheses and score labels."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from mvfr.mvs.aggregation import MIN_VIEWS
from mvfr.mvs.geometry import FaceHypotheses, half_range

NEAR_FRACTION = 0.8  # training: share of hypotheses drawn near the ground truth
NEAR_SIGMA_MM = 2.0  # training: std of the near-ground-truth proposal, in mm


def sample_view_subset(seeing: np.ndarray, rng: np.random.Generator, min_views: int = MIN_VIEWS, max_views: int | None = None) -> np.ndarray:
    """Training views for one patch: ``seeing [V]`` bool (views that see the patch centre) -> sorted
    indices into all V views: a count drawn uniformly from ``min_views .. n`` (n = number of views
    that see it, capped by ``max_views``) and that many of the seeing views at random; all seeing
    views when fewer than ``min_views`` see it (the patch then adds no loss). Views that do not see
    the centre are left out: they would only add invisible samples."""
    seeing_idx = np.flatnonzero(np.asarray(seeing, bool))
    n = len(seeing_idx) if max_views is None else min(len(seeing_idx), int(max_views))
    if n < min_views:
        return seeing_idx
    k = int(rng.integers(min_views, n + 1))
    return np.sort(rng.choice(seeing_idx, size=k, replace=False))


def patch_crop(setup: FaceHypotheses, texel_index: torch.Tensor, margin_px: int = 16):
    """Crop every view to the hypotheses of a subset of texels (training on patches).

    ``texel_index [K]`` into ``setup.texels`` -> ``(sub_setup, origins [V, 2] int, width, height)``:
    one common even size at even origins (the feature CNN's stride-2 grid stays the full extent's)
    covering the projections of the subset's hypotheses at both ends of the range (plus
    ``margin_px``, which keeps sampled points away from the zero-padded crop border where features
    would differ from full-image ones), clipped to the setup's extent; ``sub_setup``
    has the subset's texels and pixel coordinates relative to each view's crop.
    """
    half = setup.half_range
    hp, hn = setup.hp[:, texel_index], setup.hn[:, texel_index]  # [V, K, 3]
    ends = torch.cat([hp - half * hn, hp + half * hn], 1)
    z = ends[..., 2]
    front = z > 1e-9
    pix = ends[..., :2] / torch.where(front, z, torch.ones_like(z))[..., None]
    big = torch.tensor(float("inf"), device=pix.device)
    lo = torch.where(front[..., None], pix, big).amin(1) - margin_px  # [V, 2]
    hi = torch.where(front[..., None], pix, -big).amax(1) + margin_px
    ext = torch.tensor([setup.width - 1.0, setup.height - 1.0], device=pix.device)
    lo = torch.minimum(torch.maximum(lo, torch.zeros_like(lo)), ext)
    hi = torch.minimum(torch.maximum(hi, torch.zeros_like(hi)), ext)
    size = (hi - lo + 1).amax(0)
    W = min(setup.width, int(np.ceil(float(size[0]) / 2.0)) * 2)
    H = min(setup.height, int(np.ceil(float(size[1]) / 2.0)) * 2)
    centre = 0.5 * (lo + hi)
    # even origins: the feature CNN's stride-2 grid of a patch is the full extent's (FeatureNet.stride)
    ox = (centre[:, 0] - W / 2.0).round().clamp(0, setup.width - W).long().div(2, rounding_mode="floor") * 2
    oy = (centre[:, 1] - H / 2.0).round().clamp(0, setup.height - H).long().div(2, rounding_mode="floor") * 2
    shift = torch.stack([ox, oy], 1).to(hp.dtype)  # [V, 2]

    def move(h):
        return torch.cat([h[..., :2] - shift[:, None, :] * h[..., 2:3], h[..., 2:3]], -1)

    sub = dataclasses.replace(
        setup, texels=setup.texels[texel_index], hp=move(hp), hn=move(hn), view_ok=setup.view_ok[:, texel_index], width=W, height=H
    )
    return sub, torch.stack([ox, oy], 1), W, H


def cut_patches(images: np.ndarray, origins: torch.Tensor, width: int, height: int) -> np.ndarray:
    """``images [V, H0, W0, 3]`` -> ``[V, height, width, 3]`` crops at ``origins [V, 2]`` (x0, y0)."""
    o = origins.cpu().numpy()
    return np.stack([img[y : y + height, x : x + width] for img, (x, y) in zip(images, o)])


def texels_near(setup: FaceHypotheses, centre: int, radius: float) -> np.ndarray:
    """Indices (into ``setup.texels``) of texels within ``radius`` texels (UV grid) of texel ``centre``."""
    t = setup.texels.cpu().numpy()
    r, c = t // setup.size, t % setup.size
    return np.flatnonzero((r - r[centre]) ** 2 + (c - c[centre]) ** 2 <= radius**2)


# ----------------------------------------------------------------------------------- training


def sample_training_hypotheses(
    valid_texels: np.ndarray,
    gt_steps: np.ndarray,
    num: int,
    d_size: int,
    near_sigma_steps: float,
    rng: np.random.Generator,
    near_fraction: float = NEAR_FRACTION,
) -> tuple[np.ndarray, np.ndarray]:
    """Training hypotheses: ``num`` (texel, offset) pairs.

    ``valid_texels [T]`` indices (into the setup's texel list) that may be drawn; ``gt_steps [T_all]``
    the ground-truth offset of every setup texel in steps. ``near_fraction`` of the offsets are
    ``gt + N(0, near_sigma_steps)``, the rest uniform over the range; all are clipped to the range.
    Returns ``texel_index [num]`` int64, ``steps [num]`` float64.
    """
    if len(valid_texels) == 0:
        raise ValueError("no valid texel to train on (valid_map is empty where the base mesh is searched)")
    half = half_range(d_size)
    ti = rng.choice(valid_texels, size=num, replace=True)
    near = rng.random(num) < near_fraction
    steps = np.where(near, gt_steps[ti] + rng.normal(0.0, near_sigma_steps, num), rng.uniform(-half, half, num))
    return ti.astype(np.int64), np.clip(steps, -half, half)


def score_target(steps, gt_steps, sigma_steps: float):
    """Matching-score label ``exp(-delta^2 / (2 sigma^2))`` with delta, sigma in steps (numpy or torch)."""
    delta = steps - gt_steps
    if isinstance(delta, torch.Tensor):
        return torch.exp(-(delta**2) / (2.0 * sigma_steps**2))
    return np.exp(-(delta**2) / (2.0 * sigma_steps**2))
