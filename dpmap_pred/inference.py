"""What training and inference of the mesoscopic stage share: inputs, checkpoints, prediction, scores.

Shapes and units: a UV texture is ``[T, T, 3]`` uint8 RGB in template UV (``gen_tex.py``); a
displacement map is ``[S, S]`` float32 mm along the outward normal in the same UV (S = ``--dp_size``);
the facial mask is ``[S, S]`` bool (:func:`mvfr.uv_rasterizer.load_facial_mask`).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import numpy as np
import torch

from dpmap_pred.networks import DisplacementNet, pad_to_multiple, uv_grid

log = logging.getLogger(__name__)

FORMAT = "mvfr-dpmap-v1"  # checkpoint format of this stage (mvfr.training checkpoints)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize ``[H, W(, C)]`` to ``[size, size(, C)]``: area averaging down, bilinear up (float32 out)."""
    import cv2

    image = np.asarray(image)
    if image.shape[0] == size and image.shape[1] == size:
        return image.astype(np.float32)
    interp = cv2.INTER_AREA if size < image.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(image.astype(np.float32), (size, size), interpolation=interp)


def texture_to_tensor(texture: np.ndarray, size: int) -> torch.Tensor:
    """``texture [T, T, 3]`` uint8 RGB -> ``[3, size, size]`` float32 in [-1, 1]."""
    tex = np.asarray(texture)
    if tex.ndim != 3 or tex.shape[2] != 3:
        raise ValueError(f"a UV texture must be [T, T, 3] RGB, got shape {tex.shape}")
    if tex.shape[0] != tex.shape[1]:
        raise ValueError(f"a UV texture must be square (template UV), got {tex.shape[:2]}")
    scale = 65535.0 if tex.dtype == np.uint16 else 255.0
    t = resize_image(tex, size) / scale
    return torch.from_numpy(np.ascontiguousarray(t.transpose(2, 0, 1))) * 2.0 - 1.0


def build_generator(options: Mapping[str, Any]) -> DisplacementNet:
    """The generator described by the ``dp_*`` options (an options dict or a checkpoint's ``options``)."""
    return DisplacementNet(
        ngf=int(options["dp_ngf"]),
        n_downsample=int(options["dp_n_downsample"]),
        n_blocks=int(options["dp_n_blocks"]),
        max_mm=float(options["dp_max_mm"]),
        use_uv=bool(options.get("dp_use_uv", False)),
    )


def load_generator(path: str | os.PathLike, device: str = "cpu") -> tuple[DisplacementNet, dict[str, Any]]:
    """A trained generator from a plain-dict checkpoint (``weights_only=True``, ``strict=True``).

    Returns ``(net in eval mode on device, the options it was trained with)``; the network is rebuilt
    from those options, so a checkpoint of any size loads without extra flags.
    """
    from mvfr.training import read_checkpoint

    ckpt = read_checkpoint(path, FORMAT)
    options = ckpt["options"]
    net = build_generator(options)
    state = ckpt["model"]
    if any(k.startswith("generator.generator.") for k in state):  # a training checkpoint (G + optional D)
        state = {k[len("generator."):]: v for k, v in state.items() if k.startswith("generator.")}
    net.load_state_dict(state, strict=True)
    return net.to(device).eval(), options


@torch.no_grad()
def predict_dpmap(net: DisplacementNet, texture: np.ndarray, size: int, device: str | torch.device = "cpu") -> np.ndarray:
    """``texture [T, T, 3]`` uint8 -> displacement ``[size, size]`` float32 mm (whole map in one pass)."""
    x = texture_to_tensor(texture, size).unsqueeze(0).to(device)
    uv = uv_grid(size, size, device=device).unsqueeze(0) if net.use_uv else None
    x, (h, w) = pad_to_multiple(x, net.multiple)
    if uv is not None:
        uv, _ = pad_to_multiple(uv, net.multiple)
    was_training = net.training
    net.eval()
    out = net(x, uv)[0, 0, :h, :w]
    net.train(was_training)
    return out.float().cpu().numpy()


def feather_weights(mask: np.ndarray, feather_texels: float) -> np.ndarray:
    """``mask [S, S]`` bool -> ``[S, S]`` float32 in [0, 1]: 1 inside, fading linearly to 0 over
    ``feather_texels`` texels outside (0 -> a hard mask; negative -> all ones, no masking)."""
    mask = np.asarray(mask, dtype=bool)
    if feather_texels < 0:
        return np.ones(mask.shape, np.float32)
    if feather_texels == 0:
        return mask.astype(np.float32)
    import cv2

    dist = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 5)  # texels to the mask (0 inside)
    return np.clip(1.0 - dist / float(feather_texels), 0.0, 1.0).astype(np.float32)


def pearson(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Pearson correlation of ``pred`` and ``gt`` (same shape) over ``mask`` (all texels if None)."""
    p = np.asarray(pred, dtype=np.float64)
    g = np.asarray(gt, dtype=np.float64)
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have the same shape, got {p.shape} and {g.shape}")
    m = np.ones(p.shape, bool) if mask is None else np.asarray(mask, bool)
    m = m & np.isfinite(p) & np.isfinite(g)
    if m.sum() < 2:
        raise ValueError("fewer than 2 texels to correlate")
    p, g = p[m] - p[m].mean(), g[m] - g[m].mean()
    denom = np.sqrt((p * p).sum() * (g * g).sum())
    return float((p * g).sum() / denom) if denom > 0 else float("nan")


def dpmap_scores(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Predicted vs ground-truth displacement (mm) inside ``mask``: Pearson r, MAE, RMSE, GT std."""
    m = np.asarray(mask, bool) & np.isfinite(gt)
    d = (pred - gt)[m]
    return {
        "pearson": pearson(pred, gt, m),
        "mae_mm": float(np.abs(d).mean()),
        "rmse_mm": float(np.sqrt((d**2).mean())),
        "gt_std_mm": float(gt[m].std()),
        "pred_std_mm": float(pred[m].std()),
    }
