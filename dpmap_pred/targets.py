"""Ground-truth mesoscopic displacement registered to where the pipeline's UV of a face lands on the scan.

``RAW/dpmap`` (synthetic data) holds the detail height ``h`` in template UV through the fixed map
from the template's triangles to the ICT triangles they are made of
(:func:`mvfr.uv_rasterizer.template_to_ict_uv`): texel t is ``h(phi(t))``. The pipeline's
texel t, though, lies where this face's fitted base mesh (and, for the training textures, the
ground-truth ray along its normal) puts it on the scan, a few mm from ``phi(t)``; the blended texture
at t shows the skin *there*. Training on ``RAW/dpmap`` as it is
asks the network to predict detail from the photograph of skin millimetres away (on the v2
training set the high-passed texture and ``RAW/dpmap`` correlate at about 0.01).

:func:`registered_dpmap` therefore looks up, for every texel, the scan point the texel's surface
point lies on (inverse-distance weights over the nearest facial-region scan vertices), reads the
ICT uv the scan stores there (PLY ``s, t``), carries it back to template UV through that fixed map,
and samples ``RAW/dpmap`` at that template position: ``h`` at the texel's own
skin. Training (``dpmap_pred/train.py``) uses it on the ground-truth surface (base ``pos_map`` +
``norm_map * mv_map``); scoring (``dpmap_pred/main.py --score``) on the surface the prediction is
applied to (``pred/reg_map``). Both are cached under ``DATA/maps/<split>/dp_target``.
"""

from __future__ import annotations

import functools
import logging

import numpy as np

from mvfr.atomic_io import save_npy
from mvfr.datafolder import DataError, DataFolder, RawFolder

log = logging.getLogger(__name__)

#: template-UV grid of the inverse correspondence (ICT uv -> template position)
INDEX_SIZE = 1024
#: a texel whose surface point is farther than this from the scan's facial region is left out (mm)
MAX_SCAN_DISTANCE_MM = 1.5
#: neighbours of the inverse-distance weights (scan vertices, template texels)
K_NEAREST = 4
#: the training maps the ground-truth surface is made of (:func:`mvfr.base_maps.truth_surface`'s order)
TRUTH_MAPS = ("pos_map", "norm_map", "mv_map", "valid_map")


@functools.lru_cache(maxsize=1)
def _template_index():
    """KD-tree over the ICT uv of every covered template texel at :data:`INDEX_SIZE`, and the texels'
    template positions ``[N, 2]`` (row, col) as fractions of the map side (texel centres)."""
    from scipy.spatial import cKDTree

    from mvfr.uv_rasterizer import template_to_ict_uv

    uv, cov = template_to_ict_uv(INDEX_SIZE)
    rows, cols = np.nonzero(cov)
    position = (np.stack([rows, cols], axis=1) + 0.5) / INDEX_SIZE
    return cKDTree(uv[cov]), position


def _weighted(values: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Inverse-distance average of ``values [N, K, C]`` with distances ``dist [N, K]``."""
    w = 1.0 / np.maximum(dist, 1e-9)
    w /= w.sum(axis=1, keepdims=True)
    return np.einsum("nk,nkc->nc", w, values)


def load_truth_surface(folder: DataFolder, split: str, fid: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`mvfr.base_maps.truth_surface` of the face's training maps."""
    from mvfr.base_maps import truth_surface

    return truth_surface(*(np.load(folder.map(split, n, fid)) for n in TRUTH_MAPS))


def scan_uv_points(raw: RawFolder, fid: str) -> tuple[np.ndarray, np.ndarray]:
    """The facial-region vertices of the scan ``[N, 3]`` (capture units) and their ICT uvs ``[N, 2]``."""
    from mvfr.evaluation import read_vertex_region
    from mvfr.mesh_io import read_mesh

    path = raw.scan(fid)
    if not path.is_file():
        raise DataError(f"scan {path} of face {fid} does not exist; the registered displacement target needs it")
    scan = read_mesh(path)
    if scan.uvs is None or len(scan.uvs) != len(scan.vertices):
        raise DataError(f"scan {path} has no per-vertex uv (PLY s, t); it is not a gen_synthetic.py scan")
    region = read_vertex_region(raw.region(fid), len(scan.vertices))
    return scan.vertices[region], scan.uvs[region]


def raw_dpmap(raw: RawFolder, fid: str, size: int) -> np.ndarray:
    """``RAW/dpmap`` of ``fid`` as it is, at ``size`` ``[size, size]`` float32 mm (NaN where unknown)."""
    from dpmap_pred.inference import resize_image

    gt_path = raw.meso_dpmap(fid)
    if not gt_path.is_file():
        raise DataError(f"ground-truth displacement map {gt_path} of face {fid} does not exist; "
                        "training needs synthetic data from gen_synthetic.py (--facescape_dataroot)")
    gt = np.load(gt_path).astype(np.float32)
    if gt.ndim != 2 or gt.shape[0] != gt.shape[1]:
        raise DataError(f"{gt_path} must be a square [S, S] map in mm, got shape {gt.shape}")
    finite = np.isfinite(gt)
    out = resize_image(np.where(finite, gt, 0.0), size)
    return np.where(resize_image(finite.astype(np.float32), size) > 0.999, out, np.nan).astype(np.float32)


def registered_dpmap(raw: RawFolder, fid: str, surface: np.ndarray, known: np.ndarray, size: int,
                     mm_per_unit: float = 1.0) -> np.ndarray:
    """``RAW/dpmap`` of ``fid`` registered to ``surface [H, W, 3]`` (capture units, template UV) ->
    ``[size, size]`` float32 mm, NaN where ``known`` is False or the surface point is off the scan's
    facial region (farther than :data:`MAX_SCAN_DISTANCE_MM`)."""
    import cv2
    from scipy.spatial import cKDTree

    from dpmap_pred.inference import resize_image

    gt = raw_dpmap(raw, fid, size)
    verts, uvs = scan_uv_points(raw, fid)
    known = known & np.isfinite(surface).all(axis=-1)
    pts = surface[known].astype(np.float64)
    dist, idx = cKDTree(verts).query(pts, k=K_NEAREST)
    ict_uv = _weighted(uvs[idx], dist)
    on_scan = dist[:, 0] * mm_per_unit <= MAX_SCAN_DISTANCE_MM
    tree, position = _template_index()
    tdist, tidx = tree.query(ict_uv, k=K_NEAREST)
    where = _weighted(position[tidx], tdist)
    on_template = tdist[:, 0] <= 2.0 / INDEX_SIZE  # the uv is inside the template's part of the face tile

    h, w = known.shape
    grid = np.zeros((h, w, 2), np.float32)
    ok = np.zeros((h, w), np.float32)
    good = on_scan & on_template
    rows, cols = np.nonzero(known)
    grid[rows[good], cols[good]] = where[good]
    ok[rows[good], cols[good]] = 1.0
    if (h, w) != (size, size):  # the template position is smooth over the map: bilinear up (or area down)
        grid, ok = resize_image(grid * ok[..., None], size), resize_image(ok, size)
        grid = grid / np.maximum(ok, 1e-6)[..., None]
    finite = np.isfinite(gt).astype(np.float32)
    gt = np.where(finite > 0, gt, 0.0).astype(np.float32)
    col, row = grid[..., 1] * size - 0.5, grid[..., 0] * size - 0.5
    out = cv2.remap(gt, col, row, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    fin = cv2.remap(finite, col, row, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    valid = (ok > 0.999) & (fin > 0.999)
    return np.where(valid, out, np.nan).astype(np.float32)


def dp_target(folder: DataFolder, raw: RawFolder, split: str, fid: str, size: int, mode: str = "registered") -> np.ndarray:
    """The ground truth of ``fid`` at ``size``: ``RAW/dpmap`` as it is (``mode="as_is"``) or registered
    (cached in ``DATA/maps/<split>/dp_target``) to the ground-truth surface for the train split and to
    ``pred/reg_map`` otherwise; the cache is remade when one of its sources is newer."""
    if mode == "as_is":
        return raw_dpmap(raw, fid, size)
    if mode != "registered":
        raise ValueError(f"unknown displacement target {mode!r}; registered or as_is")
    cache = folder.root / "maps" / split / "dp_target" / f"dp_target_{fid}.npy"
    sources = [raw.meso_dpmap(fid), raw.scan(fid), raw.region(fid)]
    sources += [folder.map(split, n, fid) for n in TRUTH_MAPS] if split == "train" else [folder.reg_map(fid)]
    if cache.is_file() and all(p.is_file() and p.stat().st_mtime <= cache.stat().st_mtime for p in sources):
        out = np.load(cache)
        if out.shape == (size, size):
            return out  # newer than everything it was made from
    if split == "train":
        surface, known = load_truth_surface(folder, split, fid)
    else:
        if not folder.reg_map(fid).is_file():
            raise DataError(f"face {fid} has no regularised surface {folder.reg_map(fid)} to register the "
                            "ground-truth displacement to; run eval_reg.py first")
        surface = np.load(folder.reg_map(fid))
        known = np.isfinite(surface).all(axis=-1)
    out = registered_dpmap(raw, fid, surface, known, size, folder.mm_per_unit(fid))
    save_npy(cache, out)
    return out
