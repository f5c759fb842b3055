"""The ground truth of stage 5: what the surface a displacement map is added to lacks, in mm along its normals.

**Residual** (``--dp_target residual``, the default): ``dpmap2mesh.py`` smooths the reg mesh
(``--dp_smooth_iters`` Taubin rounds), Loop-subdivides it and moves every vertex along the unit normal
by the map (:func:`dpmap_pred.dpmap2mesh.application_surface`, :func:`~dpmap_pred.dpmap2mesh.displace_mesh`).
The one target that matches that operation is the signed distance, at every texel, from that very
surface along that very normal to the scan (:func:`residual_map`): a perfect prediction displaces the
surface onto the scan, nothing is added twice (the smooth part and the long wavelengths of the detail
are already in the surface) and nothing is missing (what smoothing took away is in the target). For
evaluation faces the surface is their own ``pred/reg_mesh``; for training faces their own reg output
(``--dp_target_surface reg``: what inference really adds to, so the target also holds the reg
surface's errors that the texture can show) or the ground-truth surface of their maps, smoothed and
subdivided the same way (``truth``). Any capture with a scan gives it; the scan's resolution bounds it.

**Registered** (``--dp_target registered``, synthetic data): ``RAW/dpmap`` (the detail height ``h`` the
synthesiser added, in template UV through the fixed map from the template's triangles to the ICT
triangles, :func:`mvfr.uv_rasterizer.template_to_ict_uv`) read at the scan point under each texel of
the face's own surface (:func:`registered_dpmap`: the nearest facial-region scan vertices' ICT uv,
carried back to template UV). ``as_is`` takes ``RAW/dpmap`` as already in the face's own UV.

:func:`dp_target` is the one entry point (training, ``main.py --score``, the benchmarks); targets are
cached under ``DATA/maps/<split>/<tag>`` (:meth:`Target.tag`) and remade when a source is newer.
"""

from __future__ import annotations

import dataclasses
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
#: how far on either side of the application surface the scan is looked for by :func:`residual_map` (mm)
RESIDUAL_REACH_MM = 2.0
#: the ground-truth search range along the base normals for a split without ``mv_map`` (gen_maps' default, mm)
TRUTH_SEARCH_RANGE_MM = 20.0
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


def signed_distance_along(caster, points: np.ndarray, directions: np.ndarray, reach: float) -> np.ndarray:
    """Signed distance from ``points [N, 3]`` along unit ``directions [N, 3]`` to the nearest crossing of
    ``caster``'s mesh within ``reach`` on either side -> ``[N]`` float64 (capture units, NaN where none).

    Two rays per point start off the surface, at ``p - reach d`` along ``+d`` and at ``p + reach d``
    along ``-d``, so a point lying exactly on the mesh gets 0 rather than a grazing miss; of the two
    crossings the one nearer to ``p`` wins."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    d = np.asarray(directions, dtype=np.float64).reshape(-1, 3)
    t = caster.hit_distance(np.concatenate([p - reach * d, p + reach * d]), np.concatenate([d, -d]))
    ahead, behind = t[: len(p)] - reach, reach - t[len(p):]
    out = np.where(np.abs(ahead) <= np.abs(behind), ahead, behind)
    return np.where(np.abs(out) <= reach, out, np.nan)


def surface_texels_of(surface, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Position ``[S, S, 3]``, unit normal ``[S, S, 3]`` and coverage ``[S, S]`` of a mesh with uvs and
    vertex normals (:func:`dpmap_pred.dpmap2mesh.application_surface`) at the texel centres of an
    ``S = size`` map, interpolated linearly inside its uv triangles."""
    from mvfr.uv_rasterizer import build_uv_table, interpolate_attribute

    table = build_uv_table(surface.uvs, surface.face_uvs, size)
    pos = interpolate_attribute(table, surface.faces, np.asarray(surface.vertices, dtype=np.float64))
    nrm = interpolate_attribute(table, surface.faces, np.asarray(surface.normals, dtype=np.float64))
    norm = np.linalg.norm(nrm, axis=-1)
    covered = table.covered & (norm > 1e-9)
    return pos, nrm / np.maximum(norm, 1e-30)[..., None], covered


def residual_map(surface, scan, size: int, mm_per_unit: float = 1.0, reach_mm: float = RESIDUAL_REACH_MM,
                 caster=None) -> np.ndarray:
    """The displacement that turns ``surface`` into ``scan``: at every texel of an ``S = size`` map, the
    signed distance (mm, + outwards) from the surface point of the texel along the surface normal to
    the scan -> ``[S, S]`` float32, NaN where the texel is off the surface or the scan is farther than
    ``reach_mm``.

    ``surface`` is the surface a displacement map is added to, exactly as :func:`dpmap2mesh.displace_mesh`
    builds it (:func:`dpmap_pred.dpmap2mesh.application_surface`: smoothing, Loop levels, normals), in
    capture units; ``scan`` anything with ``vertices`` and ``faces`` in the same units (or pass a built
    :class:`mvfr.visibility.RayCaster` as ``caster``). A perfect prediction of this map, displaced by
    ``displace_mesh``, lands on the scan up to the map's sampling; a surface equal to the scan gets 0."""
    from mvfr.visibility import RayCaster

    if not mm_per_unit > 0:
        raise ValueError(f"mm_per_unit must be > 0, got {mm_per_unit}")
    pos, nrm, covered = surface_texels_of(surface, size)
    caster = caster or RayCaster(scan.vertices, scan.faces)
    out = np.full(covered.shape, np.nan, np.float32)
    out[covered] = signed_distance_along(caster, pos[covered], nrm[covered], reach_mm / mm_per_unit) * mm_per_unit
    return out


@dataclasses.dataclass(frozen=True)
class Target:
    """Which ground truth stage 5 learns and is scored against (:func:`dp_target`).

    ``mode``: ``residual`` (what the application surface lacks, :func:`residual_map`), ``registered``
    (``RAW/dpmap`` at the scan point under each texel) or ``as_is``. For ``residual``: the application
    surface's ``smooth_iters`` (Taubin) and Loop ``levels`` (-1: :func:`dpmap2mesh.auto_subdiv_levels` for
    the map size), exactly as ``dpmap2mesh.py`` applies the map, and the surface of the training faces it
    is built from: ``reg`` (their own ``pred/reg_mesh``, what inference adds to) or ``truth`` (the
    ground-truth surface of the training maps, processed the same way). Evaluation faces always use
    ``pred/reg_mesh``: the surface the prediction is applied to.
    """

    mode: str = "residual"
    smooth_iters: int = 30
    levels: int = -1
    surface: str = "reg"

    @classmethod
    def from_options(cls, options) -> "Target":
        """From parsed options or a checkpoint's options dict (``dp_target``, ``dp_smooth_iters``,
        ``dp_subdiv_levels``, ``dp_target_surface``)."""
        def get(key, default):
            value = options.get(key) if isinstance(options, dict) else getattr(options, key, None)
            return default if value is None else value

        return cls(str(get("dp_target", cls.mode)), int(get("dp_smooth_iters", cls.smooth_iters)),
                   int(get("dp_subdiv_levels", cls.levels)), str(get("dp_target_surface", cls.surface)))

    @classmethod
    def from_record(cls, record: dict, options=None) -> "Target":
        """From a map's ``application_surface`` record (:meth:`record`; an empty one: the defaults),
        with ``--dp_target``/``--dp_smooth_iters``/``--dp_subdiv_levels`` of ``options`` winning where given."""
        keys = {"dp_target": "target", "dp_smooth_iters": "smooth_iters", "dp_subdiv_levels": "subdiv_levels"}
        merged = {flag: record.get(key) for flag, key in keys.items()}
        for flag in keys:
            given = getattr(options, flag, None) if options is not None else None
            merged[flag] = merged[flag] if given is None else given
        return cls.from_options(merged)

    def record(self) -> dict:
        """What a displacement map's JSON records of its application surface (``dpmap2mesh.py`` reads it)."""
        return {"target": self.mode, "smooth_iters": self.smooth_iters, "subdiv_levels": self.levels}

    def tag(self, split: str) -> str:
        """The cache folder name under ``DATA/maps/<split>``."""
        if self.mode != "residual":
            return "dp_target"
        surface = self.surface if split == "train" else "reg"
        return f"dp_residual_s{self.smooth_iters}_l{self.levels}_{surface}"


def truth_mesh(folder: DataFolder, raw: RawFolder, split: str, fid: str):
    """The ground-truth surface of ``fid`` as a UV-grid mesh at the maps' size (capture units): the
    training maps' ``pos + norm * mv`` where known; for a split without ``mv_map`` the displacement
    along the base normals is cast against the scan here (``--search_range_mm`` of gen_maps, 20 mm)."""
    from mvfr.base_maps import ground_truth_maps, surface_texels, truth_surface
    from mvfr.mesh_io import read_mesh
    from mvfr.uv_mesh import uv_grid_mesh
    from mvfr.uv_rasterizer import facial_mask

    if all(folder.map(split, n, fid).is_file() for n in TRUTH_MAPS):
        surface, known = load_truth_surface(folder, split, fid)
    else:
        pos, nrm = (np.load(folder.map(split, n, fid)) for n in ("pos_map", "norm_map"))
        mv, valid = ground_truth_maps(pos, nrm, surface_texels(pos, nrm), facial_mask(pos.shape[0]), read_mesh(raw.scan(fid)),
                                      TRUTH_SEARCH_RANGE_MM / folder.mm_per_unit(fid))
        surface, known = truth_surface(pos, nrm, mv, valid)
    return uv_grid_mesh(surface, known)


def face_residual(folder: DataFolder, raw: RawFolder, split: str, fid: str, size: int, target: Target) -> np.ndarray:
    """:func:`residual_map` of face ``fid`` at ``size``: from its application surface (``target``) to its scan."""
    from dpmap_pred.dpmap2mesh import application_surface, auto_subdiv_levels
    from mvfr.mesh_io import read_mesh

    if split == "train" and target.surface == "truth":
        mesh = truth_mesh(folder, raw, split, fid)
    elif folder.reg_mesh(fid).is_file():
        mesh = read_mesh(folder.reg_mesh(fid))
    else:
        raise DataError(f"face {fid} has no regularised surface {folder.reg_mesh(fid)} for the residual target; "
                        "run eval_if.py and eval_reg.py on it first")
    if not raw.scan(fid).is_file():
        raise DataError(f"scan {raw.scan(fid)} of face {fid} does not exist; the residual target needs it")
    levels = target.levels if target.levels >= 0 else auto_subdiv_levels(mesh, size)
    surface = application_surface(mesh, levels, target.smooth_iters)
    return residual_map(surface, read_mesh(raw.scan(fid)), size, folder.mm_per_unit(fid))


def dp_target(folder: DataFolder, raw: RawFolder, split: str, fid: str, size: int, target: Target | str = "residual") -> np.ndarray:
    """The ground truth of ``fid`` at ``size`` ``[size, size]`` float32 mm, NaN where unknown, by ``target``
    (:class:`Target`, or its mode alone with the defaults): the residual from the application surface to
    the scan (:func:`face_residual`), ``RAW/dpmap`` registered to the ground-truth surface (train split) or
    to ``pred/reg_map`` (otherwise), or ``RAW/dpmap`` as it is. Cached under ``DATA/maps/<split>/<tag>``;
    the cache is remade when one of its sources is newer. Training, ``--score`` and the benchmarks all call
    this one function."""
    target = Target(target) if isinstance(target, str) else target
    if target.mode == "as_is":
        return raw_dpmap(raw, fid, size)
    if target.mode not in ("registered", "residual"):
        raise ValueError(f"unknown displacement target {target.mode!r}; residual, registered or as_is")
    cache = folder.root / "maps" / split / target.tag(split) / f"dp_target_{fid}.npy"
    truth_source = split == "train" and (target.mode == "registered" or target.surface == "truth")
    sources = [raw.scan(fid)] + ([raw.meso_dpmap(fid), raw.region(fid)] if target.mode == "registered" else [])
    sources += [folder.map(split, n, fid) for n in TRUTH_MAPS] if truth_source else [
        folder.reg_mesh(fid) if target.mode == "residual" else folder.reg_map(fid)]
    if cache.is_file() and all(p.is_file() and p.stat().st_mtime <= cache.stat().st_mtime for p in sources):
        out = np.load(cache)
        if out.shape == (size, size):
            return out  # newer than everything it was made from
    if target.mode == "residual":
        out = face_residual(folder, raw, split, fid, size, target)
    else:
        out = _registered_target(folder, raw, split, fid, size)
    save_npy(cache, out)
    return out


def _registered_target(folder: DataFolder, raw: RawFolder, split: str, fid: str, size: int) -> np.ndarray:
    """``RAW/dpmap`` registered to the ground-truth surface (train split) or to ``pred/reg_map``."""
    if split == "train":
        surface, known = load_truth_surface(folder, split, fid)
    else:
        if not folder.reg_map(fid).is_file():
            raise DataError(f"face {fid} has no regularised surface {folder.reg_map(fid)} to register the "
                            "ground-truth displacement to; run eval_reg.py first")
        surface = np.load(folder.reg_map(fid))
        known = np.isfinite(surface).all(axis=-1)
    return registered_dpmap(raw, fid, surface, known, size, folder.mm_per_unit(fid))
