"""Stage 2's inputs of one face, read from the DATA_FOLDER: crops, cameras, searched texels, ground truth."""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import numpy as np
import torch

from mvfr.atomic_io import load_npy
from mvfr.base_maps import surface_texels
from mvfr.camera import Camera, crop_camera
from mvfr.mvs.aggregation import MIN_VIEWS
from mvfr.mvs.geometry import FaceHypotheses, build_face_hypotheses, half_range


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
    crop: tuple | None = None  # (K [V, 3, 3], Rt [V, 3, 4] of the crops, origins [V, 2], cameras): for rebase_face_inputs


def rebase_face_inputs(face: FaceInputs, pos_map: np.ndarray, norm_map: np.ndarray, base_vertices: np.ndarray,
                       base_faces: np.ndarray) -> FaceInputs:
    """The same face, views and crops searched from another base surface (``pos_map``/``norm_map [S, S, 3]``
    units and its mesh, e.g. :func:`mvfr.fitting.fit_to_surface`'s): the same texels, new hypothesis lines and
    visibility. The crops stay: they reach the search half-range beyond the first base, which a refined base
    does not leave. Training ground truth is not carried over (it belongs to the first base)."""
    if face.crop is None:
        raise ValueError("rebase_face_inputs needs FaceInputs made by load_face_inputs (they carry the crops)")
    K, Rt, origins, cameras = face.crop
    pos_map, norm_map = pos_map.astype(np.float32), norm_map.astype(np.float32)
    setup = build_face_hypotheses(pos_map, norm_map, face.mask, K, Rt, face.setup.width, face.setup.height,
                                  face.setup.d_size, face.step, base_vertices, base_faces)
    _mask_padding(setup, cameras, origins)
    return dataclasses.replace(face, setup=setup, pos_map=pos_map, norm_map=norm_map, gt_steps=None, train_texels=None)


def load_search_maps(folder, split: str, fid: str) -> tuple[np.ndarray, np.ndarray]:
    """``pos_map``, ``norm_map`` of the surface ``fid``'s volume was searched from: eval_if's
    ``volume/<split>/search_*`` when both exist, else gen_maps' base maps (a volume made without them)."""
    from mvfr.datafolder import DataError

    paths = [folder.search_map(split, n, fid) for n in ("pos_map", "norm_map")]
    if not all(p.is_file() for p in paths):
        paths = [folder.map(split, n, fid) for n in ("pos_map", "norm_map")]
    for p in paths:
        if not p.is_file():
            raise DataError(f"{p} does not exist; run gen_maps.py --split {split} (and eval_if.py) first")
    return load_npy(paths[0]), load_npy(paths[1])


SEARCH_RIM_TEXELS = 4  # at S = 256: how far the searched region reaches beyond the facial mask's outline


@functools.lru_cache(maxsize=4)
def search_region(size: int) -> np.ndarray:
    """``[S, S]`` bool: the facial mask plus a rim of ``SEARCH_RIM_TEXELS * S / 256`` texels around its
    outer outline (the eye and mouth holes are not grown). The base mesh's UV-to-surface map is not
    the scan's, so near the outline the facial region of the scan reaches past the surface searched
    inside the mask; the rim keeps the predicted surfaces covering the whole region. The metrics do not
    use this UV region: they score against the scan's facial region (RAW/region, or the one computed from
    the scan and the landmarks, :mod:`mvfr.evaluation`), and a prediction sample whose closest scan point
    lies outside that region does not count."""
    from scipy import ndimage

    from mvfr.uv_rasterizer import load_facial_mask

    facial = load_facial_mask(size)
    filled = ndimage.binary_fill_holes(facial)
    rim = max(1, round(SEARCH_RIM_TEXELS * size / 256))
    grown = ndimage.binary_dilation(filled, structure=ndimage.generate_binary_structure(2, 2), iterations=rim)
    return facial | (grown & ~filled)


def search_mask(pos_map: np.ndarray, norm_map: np.ndarray) -> np.ndarray:
    """Texels searched by stage 2 and refined by stage 3 (and so the texels of every predicted mesh
    and texture): ``[S, S]`` bool, the texels that carry a base surface
    (:func:`mvfr.base_maps.surface_texels`: finite position, unit normal) inside
    :func:`search_region` (the facial mask and a thin rim around its outline).
    ``pos_map [S, S, 3]``, ``norm_map [S, S, 3]``."""
    return surface_texels(pos_map, norm_map) & search_region(np.asarray(pos_map).shape[0])


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
        return load_npy(path)

    pos_map = need("pos_map").astype(np.float32)
    norm_map = need("norm_map").astype(np.float32)
    mask = search_mask(pos_map, norm_map)
    if not mask.any():
        raise DataError(f"face {fid}: no texel of {folder.map(split, 'norm_map', fid)} is covered inside the facial mask")
    capture = load_capture(folder, fid, max_views=max_views)
    step = interval_scale_mm / capture.mm_per_unit
    search_units = step * half_range(d_size)
    base = read_obj(folder.fit_mesh(fid))
    origins, W, H = face_crops(pos_map, norm_map, mask, capture.cameras, search_units, margin_px)
    images, K, Rt = crop_views(capture.images, capture.cameras, origins, W, H)
    setup = build_face_hypotheses(pos_map, norm_map, mask, K, Rt, W, H, d_size, step, base.vertices, base.faces)
    _mask_padding(setup, capture.cameras, origins)
    out = FaceInputs(fid, images, setup, mask, pos_map, norm_map, capture.mm_per_unit, step,
                     image_long_side=max(max(c.width, c.height) for c in capture.cameras), views=tuple(capture.views),
                     crop=(K, Rt, origins, list(capture.cameras)))
    if with_gt:
        mv = need("mv_map").astype(np.float64)
        valid = need("valid_map").astype(bool)
        gt_steps = mv[mask] / step
        ok = valid[mask] & np.isfinite(gt_steps) & (np.abs(gt_steps) <= half_range(d_size))
        ok &= setup.view_ok.sum(0).numpy() >= MIN_VIEWS
        out.gt_steps = np.where(ok, gt_steps, 0.0)
        out.train_texels = np.flatnonzero(ok)
    return out
