"""Depth hypotheses along the normal, their projection and visibility, cross-view aggregation, search.

Stage 2 (DESIGN §1): every UV texel with base point ``p`` and unit normal ``n`` gets ``D``
hypotheses ``x_d = p + n * s_d * step`` where ``s_d = d - (D - 1) / 2`` is the signed offset in
steps (``d = 0 .. D-1``; D = 201 gives -100 .. +100) and ``step`` is ``interval_scale`` (mm)
converted to capture units. The network input for the offset is ``s_d / ((D - 1) / 2)`` in [-1, 1].

Visibility of a hypothesis in view v (DESIGN §5):

* per texel and view, computed once per face at the base point (:func:`texel_view_visibility`):
  the view is *occluded* when the ray from the camera centre to ``p`` hits the base mesh closer
  than ``|p - c| - search_range`` (one embree ray per texel and view), and *back-facing* when
  ``n . (c - p) <= 0`` (the camera sees the back of the surface);
* per hypothesis (:func:`project_hypotheses`): behind the camera (depth <= 0) or off the image
  (outside the feature extent) is invisible.

Only views that pass both count in the masked mean and variance (:func:`aggregate_views`); a
hypothesis with fewer than :data:`MIN_VIEWS` visible views has no score (it is 0 in the volume and
never contributes to a loss).

The search over d (:func:`coarse_to_fine_argmax`, :func:`full_search`) is written against a generic
``score_fn(texel_index [M], d_index [M]) -> scores [M]`` so it is tested against a synthetic score.

Feature sampling (:func:`sample_views`): a feature map computed with stride ``s`` (the feature CNN:
``s = 2``, a stride-2 5x5 convolution with padding 2, so output sample ``i`` is centred on input
pixel ``s * i``) holds, at its sample ``i``, the value at pixel ``x = s * i`` of the image. Pixel
``x`` is therefore read at feature coordinate ``i = x / s`` (bilinear, zero outside the map) -- not
at ``(x + 0.5) / s - 0.5`` (which would assume output ``i`` is centred on ``s * i + (s - 1) / 2``,
half a pixel off for ``s = 2``). :func:`sample_image_reference` is the same rule through
``grid_sample(align_corners=False)``. The fast path gathers from a channels-last table with one
``embedding_bag``; every view of a face is cropped to one common size W x H around the face
(:func:`face_crops`), so one gather serves all views.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Callable, Sequence

import numpy as np
import torch

from mvfr.camera import Camera, camera_center, crop_camera, sample_image

log = logging.getLogger(__name__)

MIN_VIEWS = 2  # a hypothesis needs at least this many visible views to be scored
NEAR_FRACTION = 0.8  # training: share of hypotheses drawn near the ground truth
NEAR_SIGMA_MM = 2.0  # training: std of the near-ground-truth proposal, in mm


# ------------------------------------------------------------------------------------- offsets


def step_offsets(d_size: int) -> np.ndarray:
    """Signed offset of every hypothesis index in steps: ``[D]`` float64, ``d - (D - 1) / 2``."""
    if d_size < 2:
        raise ValueError(f"d_size must be at least 2, got {d_size}")
    return np.arange(d_size, dtype=np.float64) - (d_size - 1) / 2.0


def normalise_offset(steps, d_size: int):
    """Offset in steps -> network input in [-1, 1] (``steps / ((D - 1) / 2)``); numpy or torch."""
    return steps / ((d_size - 1) / 2.0)


def hypothesis_points(points: np.ndarray, normals: np.ndarray, steps: np.ndarray, step: float) -> np.ndarray:
    """``points [T, 3]``, unit ``normals [T, 3]`` (units), offsets ``steps [K]`` -> ``x [T, K, 3]`` = p + n * s * step."""
    points = np.asarray(points, dtype=np.float64)
    normals = np.asarray(normals, dtype=np.float64)
    if points.shape != normals.shape or points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points and normals must both be [T, 3], got {points.shape} and {normals.shape}")
    return points[:, None, :] + normals[:, None, :] * (np.asarray(steps, dtype=np.float64)[None, :, None] * step)


# ---------------------------------------------------------------------------------- visibility


def occlusion_mask(
    points: np.ndarray, centers: np.ndarray, vertices: np.ndarray, faces: np.ndarray, search_units: float
) -> np.ndarray:
    """Which base points are hidden from which camera by the base mesh.

    ``points [T, 3]`` base points (units), ``centers [V, 3]`` camera centres, base mesh
    ``vertices [N, 3]`` / ``faces [F, 3]``; ``search_units`` the search half-range (units).
    Returns ``occluded [V, T]`` bool: the ray from the centre to ``p`` hits the mesh closer than
    ``|p - c| - search_units``. One embree ray per texel and view.
    """
    import trimesh
    from trimesh.ray.ray_pyembree import RayMeshIntersector

    points = np.asarray(points, dtype=np.float64)
    centers = np.asarray(centers, dtype=np.float64).reshape(-1, 3)
    V, T = len(centers), len(points)
    occluded = np.zeros((V, T), dtype=bool)
    if T == 0:
        return occluded
    tm = trimesh.Trimesh(np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int64), process=False)
    caster = RayMeshIntersector(tm)
    for v in range(V):
        dirs = points - centers[v]
        dist = np.linalg.norm(dirs, axis=1)
        dirs = dirs / np.maximum(dist, 1e-30)[:, None]
        origins = np.broadcast_to(centers[v], dirs.shape)
        loc, ray_idx, _ = caster.intersects_location(origins, dirs, multiple_hits=False)
        if len(ray_idx):
            hit = np.linalg.norm(loc - centers[v], axis=1)
            occluded[v, ray_idx] = hit < dist[ray_idx] - search_units
    return occluded


def texel_view_visibility(
    points: np.ndarray,
    normals: np.ndarray,
    Rt: np.ndarray,
    vertices: np.ndarray | None,
    faces: np.ndarray | None,
    search_units: float,
) -> np.ndarray:
    """Views that may see a texel's hypotheses: front-facing and not occluded -> ``[V, T]`` bool.

    ``points [T, 3]``, ``normals [T, 3]`` (units, world), ``Rt [V, 3, 4]``; base mesh
    ``vertices``/``faces`` (None skips the occlusion test). Behind-camera and off-image are
    per hypothesis, see :func:`project_hypotheses`.
    """
    centers = camera_center(np.asarray(Rt, dtype=np.float64))  # [V, 3]
    facing = np.einsum("tc,vtc->vt", normals, centers[:, None, :] - points[None]) > 0
    if vertices is None or faces is None:
        return facing
    return facing & ~occlusion_mask(points, centers, vertices, faces, search_units)


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
    search_units = step * (d_size - 1) / 2.0
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


# -------------------------------------------------------------------------------- aggregation


def aggregate_views(samples: torch.Tensor, vis: torch.Tensor, min_views: int = MIN_VIEWS, zeroed: bool = False):
    """Masked per-channel mean and variance over views.

    ``samples [V, M, C]`` features, ``vis [V, M]`` bool -> ``mean [M, C]``, ``var [M, C]`` (population
    variance over the visible views; 0 where fewer than ``min_views``), ``ok [M]`` bool (at least
    ``min_views`` visible views). ``zeroed=True`` promises that ``samples`` is already 0 where not
    visible (what :func:`sample_views` returns), which skips one masking pass.
    """
    if samples.ndim != 3 or vis.shape != samples.shape[:2]:
        raise ValueError(f"samples must be [V, M, C] and vis [V, M]; got {tuple(samples.shape)} and {tuple(vis.shape)}")
    acc = torch.float64 if samples.dtype == torch.float64 else torch.float32
    x = samples.to(acc)
    if not zeroed:
        x = x * vis.to(acc)[..., None]
    count = vis.sum(0).to(acc)  # [M]
    ok = count >= min_views
    inv = (ok.to(acc) / count.clamp(min=1.0))[:, None]
    mean = x.sum(0) * inv
    var = ((x * x).sum(0) * inv - mean * mean).clamp_(min=0.0)  # never in place: the caller's samples stay as they were
    return mean, var, ok


def view_count_feature(vis: torch.Tensor, min_views: int = MIN_VIEWS) -> torch.Tensor:
    """``vis [V, M]`` -> ``[M]`` float32 ``min_views / count`` (1 with the fewest views, towards 0 with
    many; 0 where fewer than ``min_views``): tells the MLP how much a variance of this many views means."""
    count = vis.sum(0).to(torch.float32)
    return torch.where(count >= min_views, min_views / count.clamp(min=1.0), torch.zeros_like(count))


# ------------------------------------------------------------------------------- view subsets


def subset_views(setup: FaceHypotheses, views) -> FaceHypotheses:
    """The hypothesis set-up restricted to ``views`` (indices into the setup's views, in that order)."""
    idx = torch.as_tensor(np.asarray(views, dtype=np.int64), device=setup.hp.device)
    return dataclasses.replace(setup, hp=setup.hp[idx], hn=setup.hn[idx], view_ok=setup.view_ok[idx])


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


def sample_image_reference(
    features: torch.Tensor, pix: torch.Tensor, vis: torch.Tensor, width: float, height: float, stride: int = 1
) -> torch.Tensor:
    """Slow, obvious reference of :func:`sample_views`: ``grid_sample`` per view -> ``[V, M, C]`` (0 where not visible).

    ``features [V, C, h, w]`` computed with ``stride`` from the ``width`` x ``height`` extent:
    pixel ``x`` is feature coordinate ``x / stride``, i.e. ``grid_sample`` (align_corners=False)
    coordinate ``(2 x / stride + 1) / w - 1``. With ``stride = 1`` and ``w = width`` this is
    :func:`mvfr.camera.sample_image`.
    """
    import torch.nn.functional as F

    h, w = features.shape[-2:]
    if stride == 1 and (w, h) == (width, height):
        out = sample_image(features, pix, width, height).permute(0, 2, 1)
    else:
        gx = (2.0 * pix[..., 0] / stride + 1.0) / w - 1.0
        gy = (2.0 * pix[..., 1] / stride + 1.0) / h - 1.0
        grid = torch.stack([gx, gy], -1)[:, :, None, :].to(features.dtype)
        out = F.grid_sample(features, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[..., 0]
        out = out.permute(0, 2, 1)
    return out * vis.to(out.dtype)[..., None]


class ViewFeatures:
    """Feature maps of the views of one face, stored channels-last for fast bilinear gathers.

    ``maps [V, C, h, w]`` computed with ``stride`` (pixels of the image per feature sample; map
    sample ``i`` is centred on pixel ``stride * i``) -> ``table [V*h*w, C]`` (``dtype``, default the
    maps' own; bfloat16 halves memory traffic at inference). Differentiable with respect to ``maps``.
    """

    def __init__(self, maps: torch.Tensor, dtype: torch.dtype | None = None, stride: int = 1):
        if maps.ndim != 4:
            raise ValueError(f"feature maps must be [V, C, h, w], got {tuple(maps.shape)}")
        if int(stride) < 1:
            raise ValueError(f"feature stride must be >= 1, got {stride}")
        self.stride = int(stride)
        self.V, self.C, self.h, self.w = (int(x) for x in maps.shape)
        self.table = maps.permute(0, 2, 3, 1).reshape(-1, self.C).to(dtype or maps.dtype).contiguous()
        self.device = maps.device


def sample_views(feats: ViewFeatures, pix: torch.Tensor, vis: torch.Tensor, width: float, height: float) -> torch.Tensor:
    """Bilinear samples of every view at ``pix [V, M, 2]`` (pixels of the ``width`` x ``height`` extent)
    -> ``[V, M, C]`` in the table's dtype, 0 where ``vis [V, M]`` is False.

    Pixel ``x`` is read at feature coordinate ``x / feats.stride`` (module docstring), the values of
    :func:`sample_image_reference` (tested against it), computed as one ``embedding_bag`` (4
    weighted rows of the channels-last table per sample), which reads each feature vector
    contiguously instead of channel plane by channel plane. ``width``, ``height`` (the extent the
    maps were computed from) are checked against the map size.
    """
    V, M = vis.shape
    h, w = feats.h, feats.w
    s = feats.stride
    if not (-(-int(width) // s) == w and -(-int(height) // s) == h):
        raise ValueError(
            f"feature maps of {w} x {h} samples at stride {s} do not cover a {width} x {height} extent "
            f"(expected {-(-int(width) // s)} x {-(-int(height) // s)})"
        )
    # feature-map coordinates: sample i is centred on pixel s * i
    ix = pix[..., 0] / s
    iy = pix[..., 1] / s
    x0f, y0f = ix.floor(), iy.floor()
    fx, fy = ix - x0f, iy - y0f
    x0, y0 = x0f.long(), y0f.long()
    x1, y1 = x0 + 1, y0 + 1
    vx0, vx1 = (x0 >= 0) & (x0 < w), (x1 >= 0) & (x1 < w)
    vy0, vy1 = (y0 >= 0) & (y0 < h), (y1 >= 0) & (y1 < h)
    x0c, x1c, y0c, y1c = x0.clamp(0, w - 1), x1.clamp(0, w - 1), y0.clamp(0, h - 1), y1.clamp(0, h - 1)
    base = (torch.arange(V, device=pix.device) * (h * w))[:, None]
    idx = torch.stack([base + y0c * w + x0c, base + y0c * w + x1c, base + y1c * w + x0c, base + y1c * w + x1c], -1)
    visf = vis.to(fx.dtype)
    gx, gy = 1.0 - fx, 1.0 - fy
    wts = torch.stack(
        [gx * gy * (vx0 & vy0), fx * gy * (vx1 & vy0), gx * fy * (vx0 & vy1), fx * fy * (vx1 & vy1)], -1
    ) * visf[..., None]
    out = torch.nn.functional.embedding_bag(
        idx.reshape(-1, 4), feats.table, per_sample_weights=wts.reshape(-1, 4).to(feats.table.dtype), mode="sum"
    )
    return out.view(V, M, feats.C)


def sample_hypothesis_features(feats: ViewFeatures, setup: FaceHypotheses, texel_index: torch.Tensor, steps: torch.Tensor):
    """Project and bilinearly sample hypotheses -> ``samples [V, M, C]`` (0 where not visible), ``vis [V, M]``."""
    pix, vis = project_hypotheses(setup, texel_index, steps)
    return sample_views(feats, pix, vis, setup.width, setup.height), vis


# --------------------------------------------------------------------------------------- crops


def face_crops(
    pos_map: np.ndarray,
    norm_map: np.ndarray,
    mask: np.ndarray,
    cameras: Sequence[Camera],
    search_units: float,
    margin_px: int = 16,
) -> tuple[list[tuple[int, int]], int, int]:
    """One common crop size around the face for every view, so features are computed only there.

    The crop of each view covers the projections of ``p +- n * search_units`` of every masked texel
    in front of the camera, plus ``margin_px``; width and height are even, the largest box's (so a crop
    may reach past a smaller view's border: :func:`crop_views` zero-pads it).
    Returns ``origins [(x0, y0)] per view``, ``width``, ``height`` (pixels).
    """
    p = pos_map[mask].astype(np.float64)
    n = norm_map[mask].astype(np.float64)
    ends = np.concatenate([p - n * search_units, p + n * search_units])
    boxes = []
    for cam in cameras:
        cp = ends @ cam.Rt[:, :3].T + cam.Rt[:, 3]
        front = cp[:, 2] > 1e-9
        if not front.any():
            boxes.append((0.0, 0.0, cam.width - 1.0, cam.height - 1.0))
            continue
        h = cp[front] @ cam.K.T
        pix = h[:, :2] / h[:, 2:3]
        lo = np.clip(pix.min(0) - margin_px, 0, [cam.width - 1, cam.height - 1])
        hi = np.clip(pix.max(0) + margin_px, 0, [cam.width - 1, cam.height - 1])
        boxes.append((lo[0], lo[1], hi[0], hi[1]))
    # one size for all views (the features are batched), from the largest face box: a view smaller than
    # the crop (a portrait view in a landscape rig) is zero-padded by crop_views, never cut
    width = int(np.ceil(max(b[2] - b[0] + 1 for b in boxes) / 2.0)) * 2
    height = int(np.ceil(max(b[3] - b[1] + 1 for b in boxes) / 2.0)) * 2
    origins = []
    for cam, (x0, y0, x1, y1) in zip(cameras, boxes):
        cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
        ox, oy = round(cx - width / 2.0), round(cy - height / 2.0)
        # inside the image where the crop fits; centred on the face box where it does not
        ox = int(np.clip(ox, 0, cam.width - width)) if width <= cam.width else int(ox)
        oy = int(np.clip(oy, 0, cam.height - height)) if height <= cam.height else int(oy)
        origins.append((ox, oy))
    return origins, width, height


def _mask_padding(setup: FaceHypotheses, cameras: Sequence[Camera], origins) -> None:
    """A crop can reach past a smaller view's border (:func:`face_crops`); a texel whose base point
    projects into that zero padding is not seen in the view (``view_ok`` False there)."""
    z = setup.hp[..., 2]
    pix = setup.hp[..., :2] / torch.where(z.abs() < 1e-12, torch.full_like(z, 1e-12), z)[..., None]
    for v, (cam, (ox, oy)) in enumerate(zip(cameras, origins)):
        x, y = pix[v, :, 0] + ox, pix[v, :, 1] + oy
        inside = (x >= -0.5) & (x <= cam.width - 0.5) & (y >= -0.5) & (y <= cam.height - 0.5)
        setup.view_ok[v] &= inside


def crop_views(
    images: Sequence[np.ndarray], cameras: Sequence[Camera], origins, width: int, height: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut the crops of :func:`face_crops`: -> ``images [V, H, W, 3]`` uint8, ``K [V, 3, 3]``, ``Rt [V, 3, 4]``."""
    out, Ks, Rts = [], [], []
    for img, cam, (ox, oy) in zip(images, cameras, origins):
        crop = np.zeros((height, width) + img.shape[2:], dtype=img.dtype)  # zero outside the image
        x0, y0 = max(ox, 0), max(oy, 0)
        x1, y1 = min(ox + width, img.shape[1]), min(oy + height, img.shape[0])
        if x1 > x0 and y1 > y0:
            crop[y0 - oy : y1 - oy, x0 - ox : x1 - ox] = img[y0:y1, x0:x1]
        out.append(crop)
        c = crop_camera(cam, ox, oy, width, height)
        Ks.append(c.K)
        Rts.append(c.Rt)
    return np.stack(out), np.stack(Ks), np.stack(Rts)


def images_to_tensor(images: np.ndarray, device="cpu") -> torch.Tensor:
    """``[V, H, W, 3]`` uint8 -> ``[V, 3, H, W]`` float32 in [0, 1]."""
    return torch.as_tensor(np.ascontiguousarray(images), device=device).permute(0, 3, 1, 2).float().div_(255.0)


def patch_crop(setup: FaceHypotheses, texel_index: torch.Tensor, margin_px: int = 16):
    """Crop every view to the hypotheses of a subset of texels (training on patches).

    ``texel_index [K]`` into ``setup.texels`` -> ``(sub_setup, origins [V, 2] int, width, height)``:
    one common even size at even origins (the feature CNN's stride-2 grid stays the full extent's)
    covering the projections of the subset's hypotheses at both ends of the range (plus
    ``margin_px``, which keeps sampled points away from the zero-padded crop border where features
    would differ from full-image ones), clipped to the setup's extent; ``sub_setup``
    has the subset's texels and pixel coordinates relative to each view's crop.
    """
    half = (setup.d_size - 1) / 2.0
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


def texel_neighbours(setup: FaceHypotheses) -> torch.Tensor:
    """``[T, 8]`` indices (into ``setup.texels``) of each searched texel's 8 UV-grid neighbours, -1
    where the neighbour is not searched (on the setup's device)."""
    S = setup.size
    t = setup.texels.cpu().numpy()
    lookup = np.full(S * S, -1, np.int64)
    lookup[t] = np.arange(len(t))
    r, c = t // S, t % S
    out = []
    for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (1, 1), (-1, 1), (1, -1)):
        rr, cc = r + dr, c + dc
        inside = (rr >= 0) & (rr < S) & (cc >= 0) & (cc < S)
        out.append(np.where(inside, lookup[np.clip(rr, 0, S - 1) * S + np.clip(cc, 0, S - 1)], -1))
    return torch.as_tensor(np.stack(out, 1), device=setup.texels.device)


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
    half = (d_size - 1) / 2.0
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


# -------------------------------------------------------------------------------------- search

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (texel_index [M], d_index [M]) -> [M]


def full_search(score_fn: ScoreFn, num_texels: int, d_size: int, device="cpu") -> torch.Tensor:
    """Evaluate every hypothesis: -> ``volume [T, D]`` float32."""
    t = torch.arange(num_texels, device=device).repeat_interleave(d_size)
    d = torch.arange(d_size, device=device).repeat(num_texels)
    return score_fn(t, d).float().reshape(num_texels, d_size)


def default_strides(d_size: int) -> tuple[int, ...]:
    """Search levels for ``d_size``: 12, 3, 1 for the paper's D = 201 (about 28 of 201 hypotheses
    before propagation); 8, 2, 1 for D <= 64; exhaustive for D <= 16."""
    if d_size <= 16:
        return (1,)
    if d_size <= 64:
        return (8, 2, 1)
    return (12, 3, 1)


def coarse_peaks(values: torch.Tensor, count: int) -> torch.Tensor:
    """Positions (columns) of the ``count`` highest local maxima of each row of ``values [T, N]``
    (NaN = unscored, never a peak) -> ``[T, count]`` int64, -1 where a row has fewer maxima."""
    v = torch.nan_to_num(values, nan=-float("inf"))
    pad = torch.full_like(v[:, :1], -float("inf"))
    left, right = torch.cat([pad, v[:, :-1]], 1), torch.cat([v[:, 1:], pad], 1)
    is_max = (v >= left) & (v >= right) & torch.isfinite(v)
    ranked = torch.where(is_max, v, torch.full_like(v, -float("inf")))
    top, pos = ranked.topk(min(count, v.shape[1]), dim=1)
    return torch.where(torch.isfinite(top), pos, torch.full_like(pos, -1))


def _score_candidates(score_fn: ScoreFn, vol: torch.Tensor, rows: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """Score, once each, the candidates ``cand [R, C]`` (d indices; out-of-range ones are skipped) of
    texels ``rows [R]`` that ``vol [T, D]`` has not scored yet; writes them into ``vol`` and returns
    the texels that got a new score."""
    d_size = vol.shape[1]
    tt = rows[:, None].expand_as(cand)
    ok = (cand >= 0) & (cand < d_size)
    cand_c = cand.clamp(0, d_size - 1)
    ok &= torch.isnan(vol[tt, cand_c])
    key = torch.unique(tt[ok] * d_size + cand_c[ok])  # overlapping windows: each hypothesis once
    t_sel, d_sel = key // d_size, key % d_size
    if t_sel.numel():
        vol[t_sel, d_sel] = score_fn(t_sel, d_sel).float()
    return torch.unique(t_sel)


def coarse_to_fine_argmax(
    score_fn: ScoreFn,
    num_texels: int,
    d_size: int,
    strides: Sequence[int] | None = None,
    device="cpu",
    peaks: int = 1,
    neighbours: torch.Tensor | None = None,
    rounds: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Coarse-to-fine search over d for every texel.

    Level 0 scores every ``strides[0]``-th hypothesis (and the last one). Level 1 scores every
    ``strides[1]``-th hypothesis strictly inside ``(p - strides[0], p + strides[0])`` around each of
    the texel's ``peaks`` highest coarse local maxima ``p`` (more than one guards against a
    multi-modal score whose best coarse sample sits on the wrong mode); each later level scores
    every ``strides[k]``-th hypothesis strictly inside ``(peak - strides[k-1], peak + strides[k-1])``
    around the texel's current best. For a score that is unimodal in d this finds the exact argmax
    (the true peak lies strictly between the coarse peak's neighbours). ``strides`` must decrease
    and end with 1.

    Then ``rounds`` rounds of propagation (as in PatchMatch stereo): with ``neighbours [T, K]``
    (indices of each texel's neighbours on the surface, -1 for none) every texel also scores the
    hypotheses within +-1 of each neighbour's current best. The surface is continuous, so a mode a
    texel's own coarse pass missed is usually found through a neighbour that did not miss it.

    Returns ``argmax [T]`` int64 and ``volume [T, D]`` float32 with NaN where nothing was scored.
    """
    strides = tuple(int(s) for s in (strides or default_strides(d_size)))
    if strides[-1] != 1 or any(a <= b for a, b in zip(strides[:-1], strides[1:])) or strides[0] < 1:
        raise ValueError(f"strides must be strictly decreasing and end with 1, got {strides}")
    if peaks < 1:
        raise ValueError(f"peaks must be >= 1, got {peaks}")
    vol = torch.full((num_texels, d_size), float("nan"), device=device)
    coarse = torch.unique(torch.cat([torch.arange(0, d_size, strides[0]), torch.tensor([d_size - 1])])).to(device)
    t = torch.arange(num_texels, device=device).repeat_interleave(len(coarse))
    d = coarse.repeat(num_texels)
    vol[t, d] = score_fn(t, d).float()
    for level, (prev, s) in enumerate(zip(strides[:-1], strides[1:])):
        if level == 0 and peaks > 1:
            pos = coarse_peaks(vol[:, coarse], peaks)  # [T, P] columns of the coarse grid
            centre = torch.where(pos >= 0, coarse[pos.clamp(min=0)], torch.full_like(pos, -(10 * d_size)))
        else:
            centre = torch.nan_to_num(vol, nan=-float("inf")).argmax(1)[:, None]  # [T, 1]
        j = torch.arange(-((prev - 1) // s), (prev - 1) // s + 1, device=device) * s
        j = j[j != 0]
        cand = (centre[:, :, None] + j[None, None, :]).reshape(num_texels, -1)  # [T, P * J]
        _score_candidates(score_fn, vol, torch.arange(num_texels, device=device), cand)
    if rounds > 0 and neighbours is None:
        raise ValueError("propagation rounds need the neighbours table")
    if rounds > 0:
        nb = neighbours.to(device)
        has = nb >= 0
        best = torch.nan_to_num(vol, nan=-float("inf")).argmax(1)
        changed = torch.ones(num_texels, dtype=torch.bool, device=device)
        for _ in range(rounds):
            # only texels with a neighbour whose best moved in the last round can gain a candidate
            active = torch.nonzero((changed[nb.clamp(min=0)] & has).any(1)).squeeze(1)
            if not active.numel():
                break
            nba = nb[active]
            centre = torch.where(nba >= 0, best[nba.clamp(min=0)], torch.full_like(nba, -(10 * d_size)))  # [A, K]
            cand = (centre[:, :, None] + torch.arange(-1, 2, device=device)).reshape(len(active), -1)
            rows = _score_candidates(score_fn, vol, active, cand)
            changed = torch.zeros_like(changed)
            if not rows.numel():
                break
            new_best = torch.nan_to_num(vol[rows], nan=-float("inf")).argmax(1)
            changed[rows] = new_best != best[rows]
            best[rows] = new_best
    argmax = torch.nan_to_num(vol, nan=-float("inf")).argmax(1)
    return argmax, vol


def fill_unscored(volume: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Linear interpolation along d of the NaN entries of ``volume [T, D]`` between scored neighbours
    (constant beyond the first/last scored one; 0 for a row with no score). Rows go ``chunk`` at a
    time (the temporaries stay in cache)."""
    T, D = volume.shape
    out = torch.empty_like(volume)
    idx_row = torch.arange(D, device=volume.device, dtype=torch.int32)
    big = D + 1
    for s in range(0, T, chunk):
        vol = volume[s : s + chunk]
        known = ~torch.isnan(vol)
        idx = idx_row.expand_as(vol)
        prev = torch.where(known, idx, -1).cummax(1).values
        nxt = torch.where(known, idx, big).flip(1).cummin(1).values.flip(1)
        v = torch.nan_to_num(vol, nan=0.0)
        has_prev, has_next = prev >= 0, nxt < big
        vp = torch.gather(v, 1, prev.clamp(min=0).long())
        vn = torch.gather(v, 1, nxt.clamp(max=D - 1).long())
        w = (idx - prev).float() / (nxt - prev).clamp(min=1).float()
        filled = torch.where(has_prev & has_next, vp + w * (vn - vp), torch.where(has_prev, vp, torch.where(has_next, vn, torch.zeros_like(v))))
        out[s : s + chunk] = torch.where(known, vol, filled)
    return out


# --------------------------------------------------------------------- per-face inputs (reads files)


@dataclasses.dataclass
class FaceInputs:
    """What stage 2 needs about one face (see :func:`load_face_inputs`).

    ``images [V, H, W, 3]`` uint8 crops around the face; ``setup`` (CPU tensors); ``mask [S, S]``
    searched texels; ``pos_map``/``norm_map [S, S, 3]`` units; ``step`` units per hypothesis step;
    training only: ``gt_steps [T]`` ground-truth offset in steps per searched texel and
    ``train_texels [T']`` indices (into the searched texels) whose ground truth is valid.
    """

    face_id: str
    images: np.ndarray
    setup: FaceHypotheses
    mask: np.ndarray
    pos_map: np.ndarray
    norm_map: np.ndarray
    mm_per_unit: float
    step: float
    gt_steps: np.ndarray | None = None
    train_texels: np.ndarray | None = None
    image_long_side: int = 0  # long side of the processed (uncropped) images, in pixels: max over the views used
    views: tuple[str, ...] = ()  # the views used (mvfr.capture.load_capture with max_views=--if_view_num)


SEARCH_RIM_TEXELS = 4  # at S = 256: how far the searched region reaches beyond the facial mask's outline


@functools.lru_cache(maxsize=4)
def search_region(size: int) -> np.ndarray:
    """``[S, S]`` bool: the facial mask plus a rim of ``SEARCH_RIM_TEXELS * S / 256`` texels around its
    outer outline (the eye and mouth holes are not grown). The base mesh's UV-to-surface map is not
    the scan's, so near the outline the facial region of the scan reaches past the surface searched
    inside the mask; the rim keeps the predicted surfaces covering the whole region. Metrics still
    use the facial mask alone (samples of a prediction whose closest scan point lies outside the
    region do not count)."""
    from scipy import ndimage

    from mvfr.uv_rasterizer import load_facial_mask

    facial = load_facial_mask(size)
    filled = ndimage.binary_fill_holes(facial)
    rim = max(1, round(SEARCH_RIM_TEXELS * size / 256))
    grown = ndimage.binary_dilation(filled, structure=ndimage.generate_binary_structure(2, 2), iterations=rim)
    return facial | (grown & ~filled)


def search_mask(pos_map: np.ndarray, norm_map: np.ndarray) -> np.ndarray:
    """Texels searched by stage 2: covered by the base mesh (unit normal) and inside
    :func:`search_region` (the facial mask and a thin rim around its outline)."""
    S = pos_map.shape[0]
    covered = np.linalg.norm(norm_map, axis=-1) > 0.5
    return covered & search_region(S)


def load_face_inputs(
    folder, split: str, fid: str, d_size: int, interval_scale_mm: float, with_gt: bool, margin_px: int = 16,
    max_views: int | None = None,
) -> FaceInputs:
    """Read maps, base mesh, processed images and cameras of ``fid`` and build its :class:`FaceInputs`.

    ``interval_scale_mm`` is the hypothesis step in mm (converted with the face's mm_per_unit);
    ``with_gt`` also reads ``mv_map``/``valid_map`` of ``split`` (training). ``max_views``
    (``--if_view_num``) caps the views with the rule every stage uses (:func:`mvfr.capture.load_capture`:
    the first valid views in select_dict order), so gen_maps, eval_if, train_if and gen_tex see the same views.
    """
    from mvfr.capture import load_capture
    from mvfr.datafolder import DataError
    from mvfr.mesh_io import read_obj

    def need(name: str) -> np.ndarray:
        path = folder.map(split, name, fid)
        if not path.is_file():
            raise DataError(f"{path} does not exist; run gen_maps.py --split {split} first")
        return np.load(path)

    pos_map = need("pos_map").astype(np.float32)
    norm_map = need("norm_map").astype(np.float32)
    mask = search_mask(pos_map, norm_map)
    if not mask.any():
        raise DataError(f"face {fid}: no texel of {folder.map(split, 'norm_map', fid)} is covered inside the facial mask")
    capture = load_capture(folder, fid, max_views=max_views)
    step = interval_scale_mm / capture.mm_per_unit
    search_units = step * (d_size - 1) / 2.0
    base = read_obj(folder.fit_mesh(fid))
    origins, W, H = face_crops(pos_map, norm_map, mask, capture.cameras, search_units, margin_px)
    images, K, Rt = crop_views(capture.images, capture.cameras, origins, W, H)
    setup = build_face_hypotheses(pos_map, norm_map, mask, K, Rt, W, H, d_size, step, base.vertices, base.faces)
    _mask_padding(setup, capture.cameras, origins)
    out = FaceInputs(fid, images, setup, mask, pos_map, norm_map, capture.mm_per_unit, step,
                     image_long_side=max(max(c.width, c.height) for c in capture.cameras), views=tuple(capture.views))
    if with_gt:
        mv = need("mv_map").astype(np.float64)
        valid = need("valid_map").astype(bool)
        half = (d_size - 1) / 2.0
        gt_steps = mv[mask] / step
        ok = valid[mask] & np.isfinite(gt_steps) & (np.abs(gt_steps) <= half)
        ok &= setup.view_ok.sum(0).numpy() >= MIN_VIEWS
        out.gt_steps = np.where(ok, gt_steps, 0.0)
        out.train_texels = np.flatnonzero(ok)
    return out


# -------------------------------------------------------------------------------- search glue


def model_score_fn(model, features: "ViewFeatures", setup: FaceHypotheses, chunk: int, timings: dict | None = None) -> ScoreFn:
    """A :data:`ScoreFn` over hypothesis indices that runs the model in chunks of ``chunk`` points
    (memory stays bounded). Returns float32 scores on the features' device. ``timings``, when given,
    accumulates seconds under ``"sampling"`` (projection + gather) and ``"mlp"`` (aggregation + MLP)
    and the number of scored points under ``"points"``."""
    import time

    half = (setup.d_size - 1) / 2.0

    def fn(texel_index: torch.Tensor, d_index: torch.Tensor) -> torch.Tensor:
        out = torch.empty(texel_index.numel(), dtype=torch.float32, device=features.device)
        for s in range(0, texel_index.numel(), chunk):
            t = texel_index[s : s + chunk]
            steps = d_index[s : s + chunk].to(torch.float32) - half
            t0 = time.perf_counter()
            samples, vis = sample_hypothesis_features(features, setup, t, steps)
            t1 = time.perf_counter()
            out[s : s + chunk] = model.score_samples(samples, vis, normalise_offset(steps, setup.d_size))[0]
            if timings is not None:
                if features.device.type == "cuda":
                    torch.cuda.synchronize()
                t2 = time.perf_counter()
                timings["sampling"] = timings.get("sampling", 0.0) + (t1 - t0)
                timings["mlp"] = timings.get("mlp", 0.0) + (t2 - t1)
                timings["points"] = timings.get("points", 0) + int(t.numel())
        return out

    return fn


def search_face(
    model,
    features: "ViewFeatures",
    setup: FaceHypotheses,
    mode: str = "c2f",
    chunk: int = 65536,
    strides: Sequence[int] | None = None,
    timings: dict | None = None,
    peaks: int = 1,
    rounds: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the search of one face -> ``argmax [T]`` int64 and ``volume [T, D]`` float32 (every entry
    filled: unscored ones interpolated from scored neighbours along d). ``mode`` is ``c2f`` or ``full``."""
    fn = model_score_fn(model, features, setup, chunk, timings)
    dev = features.device
    if mode == "full":
        vol = full_search(fn, setup.num_texels, setup.d_size, device=dev)
        return vol.argmax(1), vol
    if mode != "c2f":
        raise ValueError(f"search mode must be 'c2f' or 'full', got {mode!r}")
    neighbours = texel_neighbours(setup) if rounds > 0 else None
    argmax, vol = coarse_to_fine_argmax(fn, setup.num_texels, setup.d_size, strides, dev, peaks, neighbours, rounds)
    return argmax, fill_unscored(vol)
