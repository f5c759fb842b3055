"""Displace the refined (reg) mesh by a mesoscopic displacement map -> the detailed mesh.

    python dpmap_pred/dpmap2mesh.py --dataroot DATA --split eval
    python dpmap_pred/dpmap2mesh.py --dp_mesh reg.obj --dp_map dp.png --dp_mm_per_unit 1.0 --output meso.obj

For each face: read ``DATA/pred/reg_mesh/reg_PPP_EE.obj`` (capture units, vt in template UV) and
``DATA/pred/dp_map/dp_map_PPP_EE.png`` (mm, see :mod:`dpmap_pred.encoding`), build the application
surface (:func:`application_surface`: Taubin smoothing, Loop subdivision with boundary rules, unit
area-weighted vertex normals; uvs split linearly), sample the map bilinearly at every vertex's uv,
convert mm to capture units with ``Rt_scale_dict`` (``disp_units = disp_mm / mm_per_unit``) and move
every vertex along its normal. The smoothing and the Loop levels are those the map's checkpoint was
trained for (recorded in the map's JSON, ``application_surface``): its target is the distance from
exactly that surface to the scan (:mod:`dpmap_pred.targets`); ``--dp_smooth_iters`` and
``--dp_subdiv_levels`` override them with a warning. Levels -1 mean: enough for the median uv edge to
come down to about one texel of the map (:func:`auto_subdiv_levels`; at most 3). Writes
``DATA/pred/meso_mesh/PPP_EE.obj`` with vt, vn and, when ``DATA/pred/texture/texture_PPP_EE.png``
exists, an MTL and the texture.

Unlike the original release's script there are no hard-coded vertex ids, paths or scales.
In-process use: ``process_face(opt, folder, fid)`` per face.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: put the repository root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from mvfr.mesh_io import Mesh, vertex_normals
from mvfr.subdivision import loop_subdivision
from mvfr.uv_rasterizer import uv_to_texel

log = logging.getLogger(__name__)

MAX_AUTO_LEVELS = 3
#: Taubin rounds before the detail is added, for a map whose JSON does not record its application surface
DEFAULT_SMOOTH_ITERS = 30


def sample_bilinear(map_: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup of ``map_ [H, W]`` at ``uv [N, 2]`` (DESIGN §3 texel convention) -> ``[N]`` float64.

    Texel centres are exact; between centres the value is interpolated; beyond the outermost
    centres (and for uv outside [0, 1]) the border texel's value is kept (clamp-to-edge).
    """
    m = np.asarray(map_, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"map must be [H, W], got shape {m.shape}")
    h, w = m.shape
    uv = np.asarray(uv, dtype=np.float64)
    if uv.ndim != 2 or uv.shape[1] != 2:
        raise ValueError(f"uv must be [N, 2], got shape {uv.shape}")
    # uv_to_texel works on a square map; handle H != W by scaling each axis on its own.
    x = uv_to_texel(uv, w)[:, 0]
    y = uv_to_texel(uv, h)[:, 1]
    x = np.clip(x, 0.0, w - 1.0)
    y = np.clip(y, 0.0, h - 1.0)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 2) if w > 1 else np.zeros(len(x), np.int64)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 2) if h > 1 else np.zeros(len(y), np.int64)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = x - x0, y - y0
    top = m[y0, x0] * (1 - fx) + m[y0, x1] * fx
    bottom = m[y1, x0] * (1 - fx) + m[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def auto_subdiv_levels(mesh: Mesh, dp_size: int, max_levels: int = MAX_AUTO_LEVELS) -> int:
    """Loop levels that bring the median uv edge length down to about one texel of a ``dp_size`` map."""
    if mesh.uvs is None:
        raise ValueError("the mesh has no uvs; dpmap2mesh needs vt in template UV")
    uv = mesh.uvs[mesh.face_uvs]
    edge = np.linalg.norm(uv - np.roll(uv, -1, axis=1), axis=2)
    med = float(np.median(edge[edge > 0])) if (edge > 0).any() else 0.0
    if med <= 0:
        return 0
    return int(np.clip(math.ceil(math.log2(max(med * dp_size, 1.0)) - 0.01), 0, max_levels))  # 0.01: uvs written to 6 decimals


def taubin_smooth(vertices: np.ndarray, faces: np.ndarray, iters: int, lam: float = 0.5, mu: float = -0.53) -> np.ndarray:
    """Taubin's lambda/mu smoothing (umbrella Laplacian, boundary vertices fixed) -> new ``[N, 3]``.

    A low-pass filter that, unlike plain Laplacian smoothing, does not shrink the surface: each
    iteration is a shrinking step (``lam`` > 0) and an inflating one (``mu`` < -``lam``). A planar
    regular grid is a fixed point.
    """
    import scipy.sparse as sp

    from mvfr.subdivision import mesh_edges
    from mvfr.uv_rasterizer import boundary_edges

    v = np.asarray(vertices, dtype=np.float64).copy()
    if iters <= 0:
        return v
    edges, _ = mesh_edges(faces)
    boundary = np.zeros(len(v), bool)
    boundary[boundary_edges(faces).ravel()] = True
    n = len(v)
    i, j = np.concatenate([edges[:, 0], edges[:, 1]]), np.concatenate([edges[:, 1], edges[:, 0]])
    adj = sp.csr_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    deg = np.maximum(np.asarray(adj.sum(1)).ravel(), 1.0)
    free = (~boundary)[:, None]
    for _ in range(int(iters)):
        for w in (lam, mu):
            v = v + w * free * (adj @ v / deg[:, None] - v)
    return v


def application_surface(mesh: Mesh, levels: int = 1, smooth_iters: int = 0) -> Mesh:
    """The surface a displacement map is added to: ``mesh`` (with uvs) low-passed by ``smooth_iters``
    rounds of :func:`taubin_smooth`, Loop-subdivided ``levels`` times, with the unit area-weighted
    vertex normals the displacement goes along. :func:`displace_mesh` displaces it, and the training
    target (:func:`dpmap_pred.targets.residual_map`) is measured from it, so the two agree by construction."""
    if mesh.uvs is None:
        raise ValueError("the mesh has no uvs; dpmap2mesh needs vt in template UV")
    if levels < 0:
        raise ValueError(f"subdivision levels must be >= 0, got {levels}")
    base = taubin_smooth(mesh.vertices, mesh.faces, smooth_iters) if smooth_iters > 0 else mesh.vertices
    sub = loop_subdivision(Mesh(base, mesh.faces, mesh.uvs, mesh.face_uvs), int(levels))
    sub.normals = vertex_normals(sub.vertices, sub.faces)
    return sub


def displace_mesh(
    mesh: Mesh, dp_mm: np.ndarray, mm_per_unit: float, levels: int = 1, smooth_iters: int = 0
) -> tuple[Mesh, Mesh]:
    """Subdivide ``mesh`` (capture units, with uvs) and displace it by ``dp_mm [H, W]`` (mm, template UV).

    With ``smooth_iters`` > 0 the mesh is first low-passed (:func:`taubin_smooth`): the map is a
    displacement from a smooth surface, so it is added to the reg surface's smooth part rather than
    on top of the reg surface's own texel-scale noise.

    Returns ``(meso, subdivided)``: both share faces and uvs; ``subdivided.normals`` are the unit
    normals the displacement went along (area-weighted vertex normals of the Loop surface),
    ``meso.vertices = subdivided.vertices + normals * dp / mm_per_unit`` and ``meso.normals`` are
    the displaced surface's own vertex normals. A vertex with several uvs (on a seam) takes the
    displacement of the mean of its uvs' samples.
    """
    if mesh.uvs is None:
        raise ValueError("the mesh has no uvs; dpmap2mesh needs vt in template UV")
    if not (math.isfinite(mm_per_unit) and mm_per_unit > 0):
        raise ValueError(f"mm_per_unit must be > 0, got {mm_per_unit}")
    sub = application_surface(mesh, levels, smooth_iters)
    normals = sub.normals
    # Displacement per vertex: mean over the corners' uv samples (one per vertex away from seams).
    corner_dp = sample_bilinear(dp_mm, sub.uvs)[sub.face_uvs.ravel()]
    total = np.bincount(sub.faces.ravel(), weights=corner_dp, minlength=len(sub.vertices))
    count = np.bincount(sub.faces.ravel(), minlength=len(sub.vertices))
    disp_mm = total / np.maximum(count, 1)
    verts = sub.vertices + normals * (disp_mm / float(mm_per_unit))[:, None]
    meso = Mesh(verts, sub.faces.copy(), sub.uvs.copy(), sub.face_uvs.copy(), vertex_normals(verts, sub.faces))
    return meso, sub


# ----------------------------------------------------------------------------------------- script


def meshing_settings(opt, info: dict, mesh: Mesh, size: int) -> tuple[int, int]:
    """``(levels, smooth_iters)`` for displacing ``mesh`` by a map of side ``size`` whose JSON record is
    ``info``: the application surface the map's checkpoint was trained for (``info["application_surface"]``,
    written by ``main.py``), unless ``--dp_subdiv_levels``/``--dp_smooth_iters`` say otherwise (then with a
    warning: the map then lands off the surface it was made for); :data:`DEFAULT_SMOOTH_ITERS` and
    automatic levels for a map without a record."""
    trained = info.get("application_surface", {})
    chosen = {}
    for key, flag, default in (("smooth_iters", "dp_smooth_iters", DEFAULT_SMOOTH_ITERS), ("subdiv_levels", "dp_subdiv_levels", -1)):
        asked = getattr(opt, flag, None)
        chosen[key] = int(trained.get(key, default) if asked is None else asked)
        if asked is not None and key in trained and int(asked) != int(trained[key]):
            log.warning("--%s %d, but the displacement map was trained for %d: it is added to another surface than "
                        "the one it was made for", flag, asked, trained[key])
    levels = chosen["subdiv_levels"] if chosen["subdiv_levels"] >= 0 else auto_subdiv_levels(mesh, size)
    return levels, chosen["smooth_iters"]


def process_face(opt, folder, fid: str) -> None:
    """One face: ``pred/reg_mesh`` + ``pred/dp_map`` -> ``pred/meso_mesh/PPP_EE.obj`` (+ MTL and texture).

    The Loop operators are cached per topology (:func:`mvfr.subdivision.subdivision`), so faces
    that share the reg mesh's topology subdivide at the cost of one sparse product.
    """
    from dpmap_pred.encoding import read_dpmap
    from mvfr.atomic_io import load_image
    from mvfr.mesh_io import read_mesh, write_obj

    dp, info = read_dpmap(folder.dp_map(fid))
    mesh = read_mesh(folder.reg_mesh(fid))
    levels, smooth_iters = meshing_settings(opt, info, mesh, dp.shape[0])
    meso, _ = displace_mesh(mesh, dp, folder.mm_per_unit(fid), levels, smooth_iters)
    tex = load_image(folder.texture(fid)) if folder.texture(fid).is_file() else None
    write_obj(folder.meso_mesh(fid), meso, texture_image=tex)
    log.info("%s: %d -> %d vertices (%d Loop levels)", fid, len(mesh.vertices), len(meso.vertices), levels)


def is_current(folder, fid: str) -> bool:
    """The face's meso mesh exists and is newer than the reg mesh and the map it was made from."""
    out = folder.meso_mesh(fid)
    return out.is_file() and all(not p.is_file() or p.stat().st_mtime <= out.stat().st_mtime
                                 for p in (folder.reg_mesh(fid), folder.dp_map(fid)))


def main(argv=None) -> int:
    from dpmap_pred.encoding import read_dpmap
    from mvfr.datafolder import DataFolder
    from mvfr.mesh_io import read_mesh, write_obj
    from mvfr.runtime import start_stage
    from mvfr.stage import run_faces, select_face_ids
    from options import parse_options

    opt = parse_options("dpmap2mesh", argv)
    if opt.dp_mesh or opt.dp_map:
        if not (opt.dp_mesh and opt.dp_map and opt.output):
            raise SystemExit("single-file mode needs --dp_mesh MESH --dp_map PNG --output OBJ")
        start_stage(opt)
        dp, info = read_dpmap(opt.dp_map)
        mesh = read_mesh(opt.dp_mesh)
        levels, smooth_iters = meshing_settings(opt, info, mesh, dp.shape[0])
        meso, _ = displace_mesh(mesh, dp, opt.dp_mm_per_unit or 1.0, levels, smooth_iters)
        write_obj(opt.output, meso)
        print(f"wrote {opt.output}: {len(meso.vertices)} vertices, {levels} subdivision level(s)")
        return 0

    folder = DataFolder(opt.dataroot)
    start_stage(opt, folder.options_file("dpmap2mesh"))

    summary = run_faces(select_face_ids(folder, opt), functools.partial(process_face, opt, folder),
                        done=lambda fid: is_current(folder, fid), overwrite=opt.overwrite, desc="dpmap2mesh")
    return summary.exit_code()


if __name__ == "__main__":
    from mvfr.runtime import run_main

    sys.exit(run_main(main))
