"""Bilinear sampling of per-view feature maps at projected hypotheses.

A feature map computed with stride ``s`` (the feature CNN: ``s = 2``, a stride-2 5x5 convolution
with padding 2, so output sample ``i`` is centred on input pixel ``s * i``) holds, at its sample
``i``, the value at pixel ``x = s * i`` of the image. Pixel ``x`` is therefore read at feature
coordinate ``i = x / s`` (bilinear, zero outside the map) -- not at ``(x + 0.5) / s - 0.5`` (which
would assume output ``i`` is centred on ``s * i + (s - 1) / 2``, half a pixel off for ``s = 2``).
:func:`sample_image_reference` is the same rule through ``grid_sample(align_corners=False)``. The
fast path (:func:`sample_views`) gathers from a channels-last table with one ``embedding_bag``;
every view of a face is cropped to one common size W x H around the face
(:func:`mvfr.mvs.face_inputs.face_crops`), so one gather serves all views.
"""

from __future__ import annotations

import torch

from mvfr.camera import sample_image
from mvfr.mvs.geometry import FaceHypotheses, project_hypotheses


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
