"""Post-regularisation (stage 3): score volumes, soft-argmax, displacement -> refined surface.

Conventions (shared with the implicit-function stage, DESIGN §1 and §4):

- A score volume is ``[D, S, S]`` (float16 on disk) with scores in (0, 1); hypothesis ``d``
  (0 .. D-1) of texel (i, j) is the point ``pos_map[i, j] + norm_map[i, j] * (d - (D-1)/2) * step``
  (:func:`mvfr.mvs.geometry.step_offsets`).
- ``step`` in capture units is ``interval_scale_mm / mm_per_unit`` (:func:`step_units`).
- Displacements are handled in **steps** inside this module and the network (the loss compares
  steps with steps: the ground truth ``mv_map`` in capture units is divided by ``step``), and
  converted to capture units only to build the refined surface.

Functions are pure (arrays in, arrays out) except :func:`load_volume`, the one reader.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mvfr.atomic_io import load_npy
from mvfr.mvs.geometry import half_range, step_offsets

DEFAULT_TILE = 64  # inference tile side (interior), in texels
DEFAULT_OVERLAP = 16  # inference tile margin on each side, in texels (raised to the receptive radius)


# ------------------------------------------------------------------------------------ conversions


def step_units(interval_scale_mm: float, mm_per_unit: float) -> float:
    """Step between hypotheses in capture units: ``interval_scale_mm / mm_per_unit``."""
    if not interval_scale_mm > 0 or not mm_per_unit > 0:
        raise ValueError(f"interval_scale ({interval_scale_mm} mm) and mm_per_unit ({mm_per_unit}) must be positive")
    return float(interval_scale_mm) / float(mm_per_unit)


def gt_steps(mv_map: np.ndarray, step: float, d_size: int) -> np.ndarray:
    """Ground-truth displacement ``mv_map [S, S]`` (capture units) -> steps ``[S, S]`` float32,
    clipped to the hypothesis range ``+-(D - 1) / 2``."""
    half = half_range(d_size)
    return np.clip(np.asarray(mv_map, dtype=np.float64) / step, -half, half).astype(np.float32)


# ----------------------------------------------------------------------------------- soft-argmax


def soft_argmax(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Expected hypothesis offset, in steps, under ``softmax(logits)`` along ``dim`` (size D).

    ``logits [B, D, H, W]`` -> ``[B, H, W]``; hypothesis d contributes ``d - (D - 1) / 2``.
    Differentiable; follows the device and dtype of ``logits``.
    """
    D = logits.shape[dim]
    prob = torch.softmax(logits, dim=dim)
    shape = [1] * logits.dim()
    shape[dim] = D
    offsets = step_offsets(D, like=logits).view(shape)
    return (prob * offsets).sum(dim)


def argmax_steps(volume: np.ndarray) -> np.ndarray:
    """Hard argmax of a score volume ``[D, S, S]`` -> displacement in steps ``[S, S]`` float32
    (the implicit function's own answer, the baseline the regulariser must beat)."""
    volume = np.asarray(volume)
    return step_offsets(volume.shape[0])[np.argmax(volume, axis=0)].astype(np.float32)


# ---------------------------------------------------------------------------------------- volumes


def load_volume(path: str | os.PathLike, d_size: int | None = None, size: int | None = None) -> np.ndarray:
    """Read ``ori_volume_PPP_EE.npy`` -> ``[D, S, S]`` float32; errors name the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"score volume {path} does not exist; run eval_if.py for this face and split first")
    try:
        vol = load_npy(path)
    except (ValueError, OSError) as exc:
        raise ValueError(f"score volume {path} cannot be read ({exc}); rerun eval_if.py --overwrite") from exc
    if vol.ndim != 3 or vol.shape[1] != vol.shape[2]:
        raise ValueError(f"score volume {path} has shape {vol.shape}, expected [D, S, S]")
    if d_size is not None and vol.shape[0] != d_size:
        raise ValueError(f"score volume {path} has D = {vol.shape[0]} hypotheses but --d_size is {d_size}; use the same --d_size as eval_if.py")
    if size is not None and vol.shape[1] != size:
        raise ValueError(f"score volume {path} is {vol.shape[1]}x{vol.shape[2]} texels but the maps are {size}x{size}")
    vol = np.asarray(vol, dtype=np.float32)
    if not np.isfinite(vol).all():
        raise ValueError(f"score volume {path} contains NaN or infinity; rerun eval_if.py --overwrite")
    return vol


def random_crops(
    volumes: list[np.ndarray],
    targets: list[np.ndarray],
    valids: list[np.ndarray],
    crop: int,
    batch: int,
    rng: np.random.Generator,
    masks: list[np.ndarray] | None = None,
    min_valid: float = 0.25,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A training batch of random ``D x crop x crop`` patches from several faces.

    ``volumes[k] [D, S, S]``, ``targets[k] [S, S]`` steps, ``valids[k] [S, S]`` bool (loss texels),
    ``masks[k] [S, S]`` bool (the network's surface mask; default: ``valids``) ->
    ``volume [B, D, c, c]`` float32, ``target [B, c, c]``, ``valid [B, c, c]``, ``mask [B, c, c]``
    (torch, CPU; ``c = min(crop, S)``). Patches are drawn where at least ``min_valid`` of the
    texels are valid (20 tries, then any); half of them are mirrored left-right.
    """
    if not volumes:
        raise ValueError("random_crops needs at least one volume")
    masks = valids if masks is None else masks
    vb, tb, vab, mb = [], [], [], []
    for _ in range(batch):
        k = int(rng.integers(len(volumes)))
        vol, tgt, val, msk = volumes[k], targets[k], valids[k], masks[k]
        S = vol.shape[1]
        c = min(crop, S)
        for _try in range(20):
            i, j = (int(x) for x in rng.integers(0, S - c + 1, size=2))
            if val[i : i + c, j : j + c].mean() >= min_valid:
                break
        parts = [vol[:, i : i + c, j : j + c], tgt[i : i + c, j : j + c], val[i : i + c, j : j + c], msk[i : i + c, j : j + c]]
        if rng.random() < 0.5:  # mirror u: the network must not depend on the chart's handedness
            parts = [x[..., ::-1] for x in parts]
        for lst, x in zip((vb, tb, vab, mb), parts):
            lst.append(x)

    def to(xs, dt):
        return torch.from_numpy(np.ascontiguousarray(np.stack(xs))).to(dt)

    return to(vb, torch.float32), to(tb, torch.float32), to(vab, torch.bool), to(mb, torch.bool)


def reg_loss(pred_steps: torch.Tensor, target_steps: torch.Tensor, valid: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Smooth-L1 (Huber, delta 1 step) between predicted and GT displacement in steps, on valid texels only.

    ``pred_steps, target_steps [B, H, W]``, ``valid [B, H, W]`` bool -> scalar: the mean over valid
    texels, or with ``reduction="sum"`` their sum (a share of a batch split over processes). Zero
    (with a gradient path) when no texel is valid.
    """
    if pred_steps.shape != target_steps.shape or pred_steps.shape != valid.shape:
        raise ValueError(f"shapes differ: pred {tuple(pred_steps.shape)}, target {tuple(target_steps.shape)}, valid {tuple(valid.shape)}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if not valid.any():
        return pred_steps.sum() * 0.0
    return F.smooth_l1_loss(pred_steps[valid], target_steps[valid], beta=1.0, reduction=reduction)


# -------------------------------------------------------------------------------------- inference


def receptive_radius(model: torch.nn.Module) -> int:
    """Texels on each side of an output texel that can influence it (H and W; exact upper bound).

    For :class:`models.reg_net.RegNet3D` with ``L`` levels: the stem's two 3x3 convolutions (2), per
    level down a stride-2 and a stride-1 convolution at spacing ``2^k`` (``3 * 2^k``), per level up a
    transposed convolution and a fusing convolution at spacing ``2^k`` (``2 * 2^k``), and the head
    (1): ``3 + 5 * (2^L - 1)`` (38 for L = 3). Tested against the impulse response.
    """
    levels = int(getattr(model, "levels", 0))
    if levels < 1:
        raise ValueError("receptive_radius needs a RegNet3D (an attribute 'levels' >= 1)")
    return 3 + 5 * (2**levels - 1)


def tiling_plan(size: int, tile: int, overlap: int, multiple: int, radius: int) -> tuple[int, int, list[int]]:
    """Tile side, halo and tile origins along one axis of ``size`` texels, for exact tiled inference.

    The tile side is rounded up to a multiple of ``multiple`` (the network's total down-sampling
    factor, ``2 ** levels``), so every tile origin is one too and each window's stride-2 grids
    coincide with the whole volume's; the halo is ``max(overlap, radius)`` rounded up to a multiple
    of ``multiple`` (a requested overlap below the receptive radius is raised: a smaller one changes
    the result). Returns ``(tile, halo, starts)``; the last tile may be cut off at ``size``.
    """
    if size < 1 or tile < 1 or overlap < 0 or multiple < 1 or radius < 0:
        raise ValueError(f"bad tiling request: size {size}, tile {tile}, overlap {overlap}, multiple {multiple}, radius {radius}")
    tile = -(-int(tile) // multiple) * multiple
    halo = -(-max(int(overlap), int(radius)) // multiple) * multiple
    return tile, halo, list(range(0, size, tile))


@torch.no_grad()
def predict_steps(
    model: torch.nn.Module,
    volume: np.ndarray,
    mask: np.ndarray,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Regularised displacement, in steps, of a whole score volume, tile by tile.

    ``volume [D, S, S]``, ``mask [S, S]`` bool -> ``[S, S]`` float32 steps (0 outside the mask).
    Each ``tile x tile`` block is predicted from a window with a halo of extra texels on every side
    (clamped at the volume's borders). The result equals whole-volume inference (to float rounding,
    tested at the default 64 / 16): the halo is at least the network's receptive radius
    (:func:`receptive_radius`, 38 texels for 3 levels; ``overlap`` below it is raised) and tile
    origins and halo are multiples of the U-Net's down-sampling factor ``2 ** levels``
    (:func:`tiling_plan`), so each window's pooling grid is the whole volume's. Peak memory ~ one
    window of ``D x (tile + 2 halo)^2`` voxels times the network width (201 x 144 x 144 at 64 / 16
    with 3 levels). ``tile <= 0``: one window, the mask's bounding box plus the halo (the same
    result to float rounding, ~5x faster on a 256 x 256 face, peak memory ~ the whole volume times
    the network width: ~2.2 GB at D 201, S 256, width 8).
    """
    D, S, S2 = volume.shape
    if S != S2 or mask.shape != (S, S):
        raise ValueError(f"volume {volume.shape} and mask {mask.shape} do not agree (expected [D, S, S] and [S, S])")
    model.eval()
    out = np.zeros((S, S), dtype=np.float32)
    levels = int(getattr(model, "levels", 0))
    if tile <= 0:  # one window over the mask's bounding box: no halo computed twice (~5x less work at 64 / 16)
        if mask.any():
            mult = 2**levels
            halo = -(-max(int(overlap), receptive_radius(model) if levels >= 1 else 0) // mult) * mult
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            a0, b0 = max(rows[0] // mult * mult - halo, 0), max(cols[0] // mult * mult - halo, 0)
            a1, b1 = min(rows[-1] + 1 + halo, S), min(cols[-1] + 1 + halo, S)
            out[a0:a1, b0:b1] = _window_steps(model, volume, mask, a0, a1, b0, b1, device)
        out[~mask] = 0.0
        return out
    if levels >= 1:
        tile, halo, starts = tiling_plan(S, min(tile, S), overlap, 2**levels, receptive_radius(model))
    else:  # any other local network: the caller's overlap, plain tiling
        tile, halo, starts = min(tile, S), int(overlap), list(range(0, S, min(tile, S)))
    for i0 in starts:
        for j0 in starts:
            i1, j1 = min(i0 + tile, S), min(j0 + tile, S)
            if not mask[i0:i1, j0:j1].any():
                continue
            a0, a1 = max(i0 - halo, 0), min(i1 + halo, S)
            b0, b1 = max(j0 - halo, 0), min(j1 + halo, S)
            steps = _window_steps(model, volume, mask, a0, a1, b0, b1, device)
            out[i0:i1, j0:j1] = steps[i0 - a0 : i1 - a0, j0 - b0 : j1 - b0]
    out[~mask] = 0.0
    return out


def _window_steps(model, volume: np.ndarray, mask: np.ndarray, a0: int, a1: int, b0: int, b1: int, device) -> np.ndarray:
    """Soft-argmax steps ``[a1 - a0, b1 - b0]`` of the window ``[:, a0:a1, b0:b1]`` of ``volume [D, S, S]``."""
    v = torch.from_numpy(np.ascontiguousarray(volume[:, a0:a1, b0:b1], dtype=np.float32))[None].to(device)
    m = torch.from_numpy(np.ascontiguousarray(mask[a0:a1, b0:b1]))[None].to(device)
    return soft_argmax(model(v, m), dim=1)[0].cpu().numpy()


def refine_pos_map(pos_map: np.ndarray, norm_map: np.ndarray, disp_units: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Refined surface: ``pos_map + norm_map * disp`` on valid texels, the base surface elsewhere.

    ``pos_map, norm_map [S, S, 3]`` capture units / unit normals, ``disp_units [S, S]`` capture
    units, ``valid [S, S]`` bool -> ``[S, S, 3]`` float32, capture units.
    """
    if pos_map.shape != norm_map.shape or pos_map.shape[:2] != disp_units.shape or valid.shape != disp_units.shape:
        raise ValueError(f"shapes differ: pos {pos_map.shape}, norm {norm_map.shape}, disp {disp_units.shape}, valid {valid.shape}")
    out = np.asarray(pos_map, dtype=np.float64).copy()
    out[valid] += norm_map[valid] * np.asarray(disp_units, dtype=np.float64)[valid, None]
    return out.astype(np.float32)


def close_openings(pos_map: np.ndarray, mask: np.ndarray, openings: np.ndarray) -> np.ndarray:
    """The surface over the openings (:func:`mvfr.uv_rasterizer.fill_mask`: the eyes, the mouth, the nostrils)
    replaced by the membrane its surroundings span: each coordinate harmonic in UV (4-neighbour Laplace) over
    the opening texels of ``mask``, equal to ``pos_map`` on the others, which stay as they are. What the search
    finds behind an opening is an eyeball, teeth or noise, not skin; the membrane closes it as the base
    model's fill does, on the rim the photographs gave. ``pos_map [S, S, 3]``, ``mask``/``openings [S, S]``
    bool -> ``[S, S, 3]`` float32 (an opening with no texel of ``mask`` around it is left alone)."""
    import scipy.sparse.linalg as spla
    from scipy import ndimage

    from mvfr.confidence import grid_laplacian

    mask = np.asarray(mask, dtype=bool)
    hole = np.asarray(openings, dtype=bool) & mask
    out = np.asarray(pos_map, dtype=np.float64).copy()
    labels, _ = ndimage.label(hole)
    touching = np.unique(labels[ndimage.binary_dilation(mask & ~hole) & hole])
    hole &= np.isin(labels, touching[touching > 0])
    if not hole.any():
        return out.astype(np.float32)
    L, _ = grid_laplacian(mask)
    unknown = hole[mask]  # rows of L
    known = ~unknown
    L = L.tocsc()
    rhs = -(L[unknown][:, known] @ out[mask][known])
    out[hole] = spla.splu(L[unknown][:, unknown].tocsc()).solve(rhs)
    return out.astype(np.float32)


# ------------------------------------------------------------------------------ synthetic volumes


def synthetic_score_volume(
    target_steps: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    sigma_steps: float = 5.0,
    bias_std: float = 1.5,
    jitter_std: float = 1.0,
    outlier_rate: float = 0.15,
    noise_std: float = 0.03,
    d_size: int = 201,
) -> np.ndarray:
    """An implicit-function-like score volume around a known displacement (tests and pre-training).

    ``target_steps [S, S]`` (the true displacement, steps), ``mask [S, S]`` bool -> ``[D, S, S]``
    float32 in [0, 1], 0 outside the mask. Per texel: a Gaussian peak of width ``sigma_steps`` x
    U(0.8, 1.5) and height U(0.5, 1) at the target plus a spatially smooth error (std ``bias_std``
    steps, a 5-texel blur) plus white jitter (``jitter_std``); with probability ``outlier_rate`` a
    second, random peak that may be higher than the true one; additive noise (``noise_std``).
    """
    import cv2

    S = target_steps.shape[0]
    smooth = cv2.GaussianBlur(rng.normal(0, 1, (S, S)).astype(np.float32), (0, 0), 5.0)
    smooth *= bias_std / max(float(smooth.std()), 1e-6)
    centre = target_steps + smooth + rng.normal(0, jitter_std, (S, S))
    width = sigma_steps * rng.uniform(0.8, 1.5, (S, S))
    height = rng.uniform(0.5, 1.0, (S, S))
    off = step_offsets(d_size).astype(np.float32)[:, None, None]
    vol = height * np.exp(-((off - centre) ** 2) / (2 * width**2))
    half = half_range(d_size)
    wrong = rng.uniform(-half, half, (S, S))
    has = (rng.random((S, S)) < outlier_rate) * rng.uniform(0.3, 1.0, (S, S))
    vol += has * np.exp(-((off - wrong) ** 2) / (2 * width**2))
    vol += rng.normal(0, noise_std, vol.shape).astype(np.float32)
    return (np.clip(vol, 0.0, 1.0) * mask).astype(np.float32)
