"""Texture blending (stage 4): project the refined surface into every view and blend a UV texture.

For every texel of a ``T x T`` texture (``T = --tex_uv_size``) whose surface point exists:

1. the refined surface (a UV position map ``[S, S, 3]``) and its normals are upsampled to ``T``
   (:func:`upsample_map`; a texel is valid when all four of its bilinear neighbours are, i.e. it
   lies inside a full quad of the UV-grid mesh);
2. each view gets a weight ``max(cos, 0) ** power`` where ``cos`` is the cosine between the refined
   normal and the direction to the camera centre, set to zero below ``min_cos`` (grazing views),
   off the image, behind the camera, and where the point is **occluded** in that view
   (:func:`mvfr.visibility.occluded`: the embree ray from the camera centre hits the refined mesh
   more than one mean edge length in front of the point; this catches self-occlusion, e.g. the
   cheek behind the nose, not only back faces);
3. colours are sampled bilinearly (:func:`mvfr.camera.sample_image`) and averaged with the weights;
4. texels without any weight (outside the face, or seen by no view) are filled by push-pull
   interpolation (:func:`fill_holes`), so bilinear/mip-mapped lookups at the mesh border never
   pick up black.

:func:`render_textured_view` renders a textured mesh into a camera by embree ray casting (no GL),
which the texture benchmark uses to compare with a photograph that was left out of blending.

Units: positions in capture units; pixels of the processed images; colours RGB 0..255.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from mvfr.camera import Camera, camera_center, pixel_rays, project_points, sample_image, visibility_mask
from mvfr.mesh_io import Mesh, vertex_normals
from mvfr.visibility import RayCaster, occluded, view_cosines

log = logging.getLogger(__name__)

DEFAULT_POWER = 2.0
DEFAULT_MIN_COS = 0.1


# ------------------------------------------------------------------------------------- surfaces


def upsample_map(values: np.ndarray, valid: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear upsampling of a UV map with validity (texel-centre convention, DESIGN §3).

    ``values [S, S, C]``, ``valid [S, S]`` bool -> ``[T, T, C]`` float32, ``[T, T]`` bool with
    ``T = size``. An output texel is valid when every input texel it interpolates from is valid
    (it lies inside a full 2 x 2 quad of valid texel centres), so invalid values never leak in.
    """
    if values.ndim != 3 or values.shape[:2] != valid.shape or valid.shape[0] != valid.shape[1]:
        raise ValueError(f"values must be [S, S, C] and valid [S, S], got {values.shape} and {valid.shape}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    S = valid.shape[0]
    # output texel centre k sits at input texel coordinate x = (k + 0.5) S / T - 0.5
    x = (np.arange(size) + 0.5) * S / size - 0.5
    i0 = np.clip(np.floor(x).astype(np.int64), 0, max(S - 2, 0))
    f = x - i0
    inside = (x >= -1e-9) & (x <= S - 1 + 1e-9)  # beyond the outer texel centres there is no surface
    i1 = np.minimum(i0 + 1, S - 1)
    vals = np.where(valid[..., None], values, 0.0).astype(np.float64)
    # separable: rows first, then columns
    r = vals[i0] * (1 - f)[:, None, None] + vals[i1] * f[:, None, None]  # [T, S, C]
    out = r[:, i0] * (1 - f)[None, :, None] + r[:, i1] * f[None, :, None]  # [T, T, C]
    # valid where every corner with a non-zero weight is valid
    w0, w1 = (1 - f) > 1e-9, f > 1e-9
    vr = (valid[i0] | ~w0[:, None]) & (valid[i1] | ~w1[:, None])  # [T, S]
    ok = (vr[:, i0] | ~w0[None, :]) & (vr[:, i1] | ~w1[None, :])
    ok &= inside[:, None] & inside[None, :]
    return out.astype(np.float32), ok


def normal_map_from_mesh(mesh: Mesh, valid: np.ndarray) -> np.ndarray:
    """Per-texel unit normals ``[S, S, 3]`` of a UV-grid mesh whose vertex k is the k-th valid texel
    (row-major, ``np.flatnonzero(valid)`` order); zero at invalid texels."""
    n = vertex_normals(mesh.vertices, mesh.faces)
    out = np.zeros(valid.shape + (3,), dtype=np.float32)
    if len(n) != int(valid.sum()):
        raise ValueError(f"mesh has {len(n)} vertices but the valid map has {int(valid.sum())} texels")
    out[valid] = n
    return out


# ---------------------------------------------------------------------------------- view weights


def view_weights(
    points: np.ndarray,
    normals: np.ndarray,
    camera: Camera,
    caster: RayCaster | None,
    power: float = DEFAULT_POWER,
    min_cos: float = DEFAULT_MIN_COS,
) -> tuple[np.ndarray, np.ndarray]:
    """Blending weight of one view for ``points, normals [N, 3]`` -> ``weight [N]``, ``pix [N, 2]``.

    ``max(cos, 0) ** power``, zero where ``cos <= min_cos`` (the facing test of
    :func:`mvfr.visibility.facing`), behind the camera, off the image, or (with a ``caster`` of the
    refined mesh) occluded by it: :func:`mvfr.visibility.occluded` with a margin of one mean edge
    length, since a texel of the upsampled surface may lie a little off its own triangle.
    """
    center = camera_center(camera.Rt)
    cos = view_cosines(points, normals, center[None])[0]
    pix, depth = project_points(points, camera.K, camera.Rt)
    ok = visibility_mask(pix, depth, camera.width, camera.height) & (cos > min_cos)
    w = np.where(ok, np.clip(cos, 0.0, 1.0) ** power, 0.0)
    if caster is not None and ok.any():
        idx = np.flatnonzero(ok)
        hidden = occluded(points[idx], center[None], caster, caster.mean_edge)[0]
        w[idx[hidden]] = 0.0
    return w, pix


def sample_colours(image: np.ndarray, pix: np.ndarray) -> np.ndarray:
    """Bilinear colours of ``image [H, W, 3]`` uint8 at ``pix [N, 2]`` pixels -> ``[N, 3]`` float32 (0..255)."""
    H, W = image.shape[:2]
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    p = torch.from_numpy(np.asarray(pix, dtype=np.float32))[None]
    return sample_image(img, p, W, H)[0].T.numpy()


# -------------------------------------------------------------------------------------- blending


def blend_texture(
    points: np.ndarray,
    normals: np.ndarray,
    valid: np.ndarray,
    images: list[np.ndarray],
    cameras: list[Camera],
    caster: RayCaster | None,
    power: float = DEFAULT_POWER,
    min_cos: float = DEFAULT_MIN_COS,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted average of every view's colour at every valid texel.

    ``points, normals [T, T, 3]`` (capture units, unit normals), ``valid [T, T]`` bool, one RGB
    ``image [H, W, 3]`` uint8 per ``Camera`` -> ``texture [T, T, 3]`` float32 (0..255, zero where
    the weight is zero) and ``weight [T, T]`` float32 (sum of view weights).
    """
    if len(images) != len(cameras) or not images:
        raise ValueError(f"need one image per camera, got {len(images)} images and {len(cameras)} cameras")
    idx = np.flatnonzero(valid.ravel())
    pts = points.reshape(-1, 3)[idx].astype(np.float64)
    nrm = normals.reshape(-1, 3)[idx].astype(np.float64)
    acc = np.zeros((len(idx), 3), dtype=np.float64)
    wsum = np.zeros(len(idx), dtype=np.float64)
    for image, cam in zip(images, cameras):
        w, pix = view_weights(pts, nrm, cam, caster, power, min_cos)
        use = w > 0
        if not use.any():
            continue
        acc[use] += w[use, None] * sample_colours(image, pix[use])
        wsum[use] += w[use]
    T = valid.shape[0]
    tex = np.zeros((T * T, 3), dtype=np.float32)
    weight = np.zeros(T * T, dtype=np.float32)
    seen = wsum > 0
    tex[idx[seen]] = (acc[seen] / wsum[seen, None]).astype(np.float32)
    weight[idx] = wsum
    return tex.reshape(T, T, 3), weight.reshape(T, T)


def fill_holes(texture: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Push-pull hole filling: every unknown texel gets a smooth average of the nearest known ones.

    ``texture [T, T, C]`` float, ``known [T, T]`` bool -> ``[T, T, C]`` float32; known texels are
    unchanged. With no known texel at all the result is zero. Vectorised (one image pyramid).
    """
    tex = np.asarray(texture, dtype=np.float32)
    w = known.astype(np.float32)
    if not known.any():
        return np.zeros_like(tex)
    levels = [(tex * w[..., None], w)]
    while max(levels[-1][1].shape) > 1:
        c, m = levels[-1]
        H, W = m.shape
        H2, W2 = (H + 1) // 2, (W + 1) // 2
        c = np.pad(c, ((0, 2 * H2 - H), (0, 2 * W2 - W), (0, 0)))
        m = np.pad(m, ((0, 2 * H2 - H), (0, 2 * W2 - W)))
        c = c.reshape(H2, 2, W2, 2, -1).sum((1, 3))
        m = m.reshape(H2, 2, W2, 2).sum((1, 3))
        levels.append((c, m))
    c, m = levels[-1]
    filled = c / np.maximum(m, 1e-12)[..., None]
    for c, m in reversed(levels[:-1]):
        H, W = m.shape
        up = torch.from_numpy(np.ascontiguousarray(filled)).permute(2, 0, 1)[None]
        size_h, size_w = 2 * filled.shape[0], 2 * filled.shape[1]
        up = F.interpolate(up, size=(size_h, size_w), mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()[:H, :W]
        mean = c / np.maximum(m, 1e-12)[..., None]
        a = np.clip(m, 0.0, 1.0)[..., None]  # fully known at this level -> its own mean
        filled = a * mean + (1.0 - a) * up
    return np.where(known[..., None], tex, filled).astype(np.float32)


def to_uint8(texture: np.ndarray) -> np.ndarray:
    """Float colours 0..255 -> uint8 (rounded, clipped)."""
    return np.clip(np.rint(texture), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------ rendering


def render_textured_view(
    mesh: Mesh, texture: np.ndarray, camera: Camera, caster: RayCaster | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Render a textured mesh into ``camera`` by ray casting (unlit: the texture colour).

    ``mesh`` with ``uvs``/``face_uvs``, ``texture [T, T, 3]`` uint8 (row 0 = v 1) ->
    ``image [H, W, 3]`` float32 (0..255), ``covered [H, W]`` bool (a pixel whose centre ray hits
    the mesh). Only the bounding box of the projected vertices is cast.
    """
    import trimesh

    if mesh.uvs is None:
        raise ValueError("render_textured_view needs a mesh with uvs")
    caster = caster or RayCaster(mesh.vertices, mesh.faces)
    H, W = camera.height, camera.width
    pix, depth = project_points(mesh.vertices, camera.K, camera.Rt)
    front = depth > 0
    if not front.any():
        return np.zeros((H, W, 3), np.float32), np.zeros((H, W), bool)
    x0, y0 = np.floor(pix[front].min(0)).astype(int)
    x1, y1 = np.ceil(pix[front].max(0)).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W - 1), min(y1, H - 1)
    image = np.zeros((H, W, 3), np.float32)
    covered = np.zeros((H, W), bool)
    if x1 < x0 or y1 < y0:
        return image, covered
    ys, xs = np.mgrid[y0 : y1 + 1, x0 : x1 + 1]
    px = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
    origins, dirs = pixel_rays(px, camera.K, camera.Rt)
    ray, tri, loc = caster.first_hit(np.ascontiguousarray(origins), np.ascontiguousarray(dirs))
    if len(ray) == 0:
        return image, covered
    bary = trimesh.triangles.points_to_barycentric(mesh.vertices[mesh.faces[tri]], loc)
    uv = np.einsum("nk,nkc->nc", bary, mesh.uvs[mesh.face_uvs[tri]])
    T_h, T_w = texture.shape[:2]
    tpix = np.stack([uv[:, 0] * T_w - 0.5, (1.0 - uv[:, 1]) * T_h - 0.5], 1)
    col = sample_colours(texture, tpix)
    yy, xx = px[ray, 1].astype(int), px[ray, 0].astype(int)
    image[yy, xx] = col
    covered[yy, xx] = True
    return image, covered


def colour_difference(rendered: np.ndarray, photo: np.ndarray, region: np.ndarray, erode_px: int = 2) -> float:
    """Mean absolute colour difference (0..255, averaged over RGB) inside ``region [H, W]`` bool,
    eroded by ``erode_px`` pixels (silhouette pixels mix face and background)."""
    import cv2

    if erode_px > 0:
        k = np.ones((2 * erode_px + 1, 2 * erode_px + 1), np.uint8)
        region = cv2.erode(region.astype(np.uint8), k).astype(bool)
    if not region.any():
        raise ValueError("the comparison region is empty (the mesh is not seen by this camera)")
    diff = np.abs(rendered.astype(np.float64) - photo.astype(np.float64))
    return float(diff[region].mean())


# ------------------------------------------------------------------------------------ one call


def texture_from_surface(
    pos_map: np.ndarray,
    valid: np.ndarray,
    images: list[np.ndarray],
    cameras: list[Camera],
    size: int = 1024,
    power: float = DEFAULT_POWER,
    min_cos: float = DEFAULT_MIN_COS,
) -> tuple[np.ndarray, np.ndarray, Mesh]:
    """The whole stage for one face: refined surface -> blended, hole-filled UV texture.

    ``pos_map [S, S, 3]`` capture units (the regularised surface), ``valid [S, S]`` bool, RGB
    ``images`` and their ``cameras`` -> ``texture [T, T, 3]`` uint8 (``T = size``), ``weight
    [T, T]`` float32 (0 = filled, not observed), and the UV-grid ``mesh`` (vt = texel centres of
    the S-map, so the texture lines up with it) used for the depth test.
    """
    from mvfr.uv_mesh import uv_grid_mesh

    mesh = uv_grid_mesh(pos_map, valid)
    if len(mesh.faces) == 0:
        raise ValueError("the refined surface has no full 2 x 2 block of valid texels; nothing to texture")
    normals = normal_map_from_mesh(mesh, valid)
    pts_t, ok = upsample_map(pos_map, valid, size)
    nrm_t, _ = upsample_map(normals, valid, size)
    nrm_t /= np.maximum(np.linalg.norm(nrm_t, axis=-1, keepdims=True), 1e-12)
    caster = RayCaster(mesh.vertices, mesh.faces)
    tex, weight = blend_texture(pts_t, nrm_t, ok, images, cameras, caster, power, min_cos)
    seen = weight > 0
    log.info("texture: %d of %d surface texels seen by at least one view", int(seen.sum()), int(ok.sum()))
    return to_uint8(fill_holes(tex, seen)), weight, mesh
