"""Hypothesis geometry: ``D`` depth hypotheses along each texel's normal and their projection.

Stage 2 (DESIGN §1): every UV texel with base point ``p`` and unit normal ``n`` gets ``D``
hypotheses ``x_d = p + n * s_d * step`` where ``s_d = d - (D - 1) / 2`` is the signed offset in
steps (``d = 0 .. D-1``; D = 201 gives -100 .. +100) and ``step`` is ``interval_scale`` (mm)
converted to capture units (:func:`step_offsets` and :func:`half_range`, the one place this formula
lives, for every stage). The network input for the offset is ``s_d / ((D - 1) / 2)`` in [-1, 1]
(:func:`normalise_offset`).

A hypothesis is visible in view v when the view may see the texel at all (``view_ok``, computed
once per face at the base point by :func:`mvfr.visibility.texel_view_visibility`) and, per
hypothesis (:func:`project_hypotheses`), it lies in front of the camera and inside the feature extent.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from mvfr.visibility import texel_view_visibility


# ------------------------------------------------------------------------------------- offsets


def half_range(d_size: int) -> float:
    """Half-range of ``D`` hypotheses in steps, ``(D - 1) / 2``: offsets run over ``[-half, half]``."""
    if d_size < 2:
        raise ValueError(f"d_size must be at least 2, got {d_size}")
    return (d_size - 1) / 2.0


def step_offsets(d_size: int, like: torch.Tensor | None = None):
    """Signed offset of every hypothesis index in steps, ``d - (D - 1) / 2`` -> ``[D]``.

    numpy float64, or with a tensor ``like`` a tensor of its dtype on its device.
    """
    steps = np.arange(d_size, dtype=np.float64) - half_range(d_size)
    if like is None:
        return steps
    return torch.as_tensor(steps, dtype=like.dtype, device=like.device)


def normalise_offset(steps, d_size: int):
    """Offset in steps -> network input in [-1, 1] (``steps / ((D - 1) / 2)``); numpy or torch."""
    return steps / half_range(d_size)


def hypothesis_points(points: np.ndarray, normals: np.ndarray, steps: np.ndarray, step: float) -> np.ndarray:
    """``points [T, 3]``, unit ``normals [T, 3]`` (units), offsets ``steps [K]`` -> ``x [T, K, 3]`` = p + n * s * step."""
    points = np.asarray(points, dtype=np.float64)
    normals = np.asarray(normals, dtype=np.float64)
    if points.shape != normals.shape or points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points and normals must both be [T, 3], got {points.shape} and {normals.shape}")
    return points[:, None, :] + normals[:, None, :] * (np.asarray(steps, dtype=np.float64)[None, :, None] * step)


# --------------------------------------------------------------------------------- projection


@dataclasses.dataclass
class FaceHypotheses:
    """Everything the search needs about one face, computed once (torch, on the compute device).

    ``texels [T]`` flat indices (row * S + col) of the searched texels; ``hp [V, T, 3]`` = K (R p + t)
    and ``hn [V, T, 3]`` = K R n * step (homogeneous pixel coordinates of the base point and of one
    step along the normal, so hypothesis ``s`` is at ``hp + s * hn``); ``view_ok [V, T]`` from
    :func:`texel_view_visibility`; ``width``, ``height`` the common crop size in pixels (the
    extent the features cover); ``d_size``; ``step`` in units.
    """

    texels: torch.Tensor
    hp: torch.Tensor
    hn: torch.Tensor
    view_ok: torch.Tensor
    width: int
    height: int
    d_size: int
    step: float
    size: int  # S

    @property
    def half_range(self) -> float:
        """The search half-range in steps, :func:`half_range` of ``d_size``."""
        return half_range(self.d_size)

    @property
    def num_texels(self) -> int:
        return int(self.texels.numel())

    def to(self, device) -> "FaceHypotheses":
        return dataclasses.replace(
            self, texels=self.texels.to(device), hp=self.hp.to(device), hn=self.hn.to(device), view_ok=self.view_ok.to(device)
        )


def build_face_hypotheses(
    pos_map: np.ndarray,
    norm_map: np.ndarray,
    mask: np.ndarray,
    K: np.ndarray,
    Rt: np.ndarray,
    width: int,
    height: int,
    d_size: int,
    step: float,
    base_vertices: np.ndarray | None,
    base_faces: np.ndarray | None,
    device: str | torch.device = "cpu",
) -> FaceHypotheses:
    """Per-face hypothesis set-up. ``pos_map``/``norm_map [S, S, 3]`` (units, world), ``mask [S, S]``
    bool (texels to search), cameras ``K [V, 3, 3]``, ``Rt [V, 3, 4]`` of the (cropped) feature
    extent ``width`` x ``height`` pixels, ``step`` in units; the occlusion test uses the base mesh
    and the search half-range ``step * (D - 1) / 2``."""
    S = pos_map.shape[0]
    if pos_map.shape != (S, S, 3) or norm_map.shape != (S, S, 3) or mask.shape != (S, S):
        raise ValueError(f"pos_map, norm_map must be [S, S, 3] and mask [S, S]; got {pos_map.shape}, {norm_map.shape}, {mask.shape}")
    texels = np.flatnonzero(mask)
    p = pos_map.reshape(-1, 3)[texels].astype(np.float64)
    n = norm_map.reshape(-1, 3)[texels].astype(np.float64)
    K = np.asarray(K, dtype=np.float64)
    Rt = np.asarray(Rt, dtype=np.float64)
    search_units = step * half_range(d_size)
    view_ok = texel_view_visibility(p, n, Rt, base_vertices, base_faces, search_units)
    R, t = Rt[:, :, :3], Rt[:, :, 3]
    cam_p = np.einsum("vij,tj->vti", R, p) + t[:, None, :]
    cam_n = np.einsum("vij,tj->vti", R, n) * step
    hp = np.einsum("vij,vtj->vti", K, cam_p)
    hn = np.einsum("vij,vtj->vti", K, cam_n)
    f32 = dict(dtype=torch.float32, device=device)
    return FaceHypotheses(
        texels=torch.as_tensor(texels, dtype=torch.long, device=device),
        hp=torch.as_tensor(hp, **f32),
        hn=torch.as_tensor(hn, **f32),
        view_ok=torch.as_tensor(view_ok, dtype=torch.bool, device=device),
        width=int(width),
        height=int(height),
        d_size=int(d_size),
        step=float(step),
        size=int(S),
    )


def project_hypotheses(setup: FaceHypotheses, texel_index: torch.Tensor, steps: torch.Tensor):
    """Pixels and visibility of hypotheses: ``texel_index [M]`` (into ``setup.texels``), ``steps [M]``
    signed offsets in steps (float, need not be integers) -> ``pix [V, M, 2]`` pixels of the crop,
    ``vis [V, M]`` bool (view usable for the texel, depth > 0, inside the W x H extent)."""
    h = setup.hp[:, texel_index] + steps.to(setup.hp.dtype)[None, :, None] * setup.hn[:, texel_index]  # [V, M, 3]
    z = h[..., 2]
    pix = h[..., :2] / torch.where(z.abs() < 1e-12, torch.full_like(z, 1e-12), z)[..., None]
    x, y = pix[..., 0], pix[..., 1]
    inside = (x >= -0.5) & (x <= setup.width - 0.5) & (y >= -0.5) & (y <= setup.height - 0.5)
    vis = setup.view_ok[:, texel_index] & (z > 0) & inside
    return pix, vis


# ------------------------------------------------------------------------------- view subsets


def subset_views(setup: FaceHypotheses, views) -> FaceHypotheses:
    """The hypothesis set-up restricted to ``views`` (indices into the setup's views, in that order)."""
    idx = torch.as_tensor(np.asarray(views, dtype=np.int64), device=setup.hp.device)
    return dataclasses.replace(setup, hp=setup.hp[idx], hn=setup.hn[idx], view_ok=setup.view_ok[idx])
