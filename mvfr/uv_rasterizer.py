"""Rasterisation in UV space: texel -> (face, barycentrics) tables and per-vertex attribute maps.

Convention (DESIGN §3): texel (row i, col j) of an S x S map has its centre at
``uv = ((j + 0.5) / S, 1 - (i + 0.5) / S)``; row 0 is the top of the image (v = 1).

A :class:`UVTable` says, for every texel centre, which face covers it and with which barycentrics;
it is built once per (mesh, S) by :func:`build_uv_table` (vectorised; :func:`template_uv_table`
caches the template's), and :func:`interpolate_attribute` turns any per-vertex attribute into an
S x S map with one gather. :func:`facial_mask` is the template's facial region (the base model's
facial triangles, closed over the eyes, mouth and nostrils); ``predefine_data/facial_mask.png`` holds
it at S = 256 and is regenerated with ``python -m mvfr.uv_rasterizer``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

import numpy as np


def texel_centres_uv(size: int) -> np.ndarray:
    """uv of every texel centre of an S x S map: [S, S, 2] float64, ``[i, j] = (u_j, v_i)``."""
    if size < 1:
        raise ValueError(f"UV map size must be positive, got {size}")
    c = (np.arange(size) + 0.5) / size
    u, v = np.meshgrid(c, 1.0 - c, indexing="xy")
    return np.stack([u, v], axis=-1)


def uv_to_texel(uv: np.ndarray, size: int) -> np.ndarray:
    """Continuous texel coordinates (col x, row y) of ``uv [..., 2]``: texel centres are integers."""
    uv = np.asarray(uv, dtype=np.float64)
    x = uv[..., 0] * size - 0.5
    y = (1.0 - uv[..., 1]) * size - 0.5
    return np.stack([x, y], axis=-1)


def lookup_nearest(map_: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Value of ``map_ [S, S, ...]`` at the texel nearest to each ``uv [N, 2]`` (uv outside [0, 1] is clamped)."""
    size = map_.shape[0]
    xy = np.rint(uv_to_texel(uv, size)).astype(np.int64)
    x = np.clip(xy[..., 0], 0, size - 1)
    y = np.clip(xy[..., 1], 0, size - 1)
    return map_[y, x]


# ------------------------------------------------------------------------------ texel -> face table


@dataclasses.dataclass(frozen=True, eq=False)
class UVTable:
    """Which face covers each texel centre of an S x S map, and where inside it.

    ``face_index [S, S]`` int64: the face (row of ``face_uvs``) covering the texel centre, -1 where none does.
    ``bary [S, S, 3]`` float64: barycentrics of the texel centre in that face (weights of the face's
    three corners, summing to 1; they may be as low as -1e-9 on an edge), zeros where uncovered.
    ``covered [S, S]`` bool: ``face_index >= 0``. ``size``: S.
    """

    size: int
    face_index: np.ndarray
    bary: np.ndarray
    covered: np.ndarray


# A texel centre on an edge shared by two faces (or exactly on a vertex) must be covered: it counts as
# inside a face when its smallest barycentric is >= -_INSIDE_EPS. Ties go to the larger smallest
# barycentric, then to the lower face index.
_INSIDE_EPS = 1e-9


def _check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ValueError(f"UV map size must be a positive integer, got {size!r}")
    if size < 1:
        raise ValueError(f"UV map size must be a positive integer, got {size}")
    return int(size)


def _check_uv_mesh(uvs, face_uvs) -> tuple[np.ndarray, np.ndarray]:
    uvs = np.asarray(uvs, dtype=np.float64)
    face_uvs = np.asarray(face_uvs)
    if uvs.ndim != 2 or uvs.shape[1] != 2:
        raise ValueError(f"uvs must have shape [T, 2], got {uvs.shape}")
    if not np.all(np.isfinite(uvs)):
        raise ValueError("uvs contain NaN or infinite values")
    if face_uvs.ndim != 2 or face_uvs.shape[1] != 3 or not np.issubdtype(face_uvs.dtype, np.integer):
        raise ValueError(f"face_uvs must be an integer array of shape [F, 3], got {face_uvs.dtype} {face_uvs.shape}")
    face_uvs = face_uvs.astype(np.int64)
    if face_uvs.size and (face_uvs.min() < 0 or face_uvs.max() >= len(uvs)):
        raise ValueError(
            f"face_uvs index uvs out of range: indices span [{face_uvs.min()}, {face_uvs.max()}] "
            f"but there are {len(uvs)} uvs"
        )
    return uvs, face_uvs


def _barycentric(pu, pv, a, b, c):
    """Barycentrics (l0, l1, l2) of points (pu, pv) in triangles (a, b, c) [..., 2]; elementwise, broadcasting.

    Shared by the fast and the reference builder so that both make bit-identical inside/tie decisions.
    Degenerate triangles (zero uv area) give NaN, which is never inside.
    """
    abu, abv = b[..., 0] - a[..., 0], b[..., 1] - a[..., 1]
    acu, acv = c[..., 0] - a[..., 0], c[..., 1] - a[..., 1]
    apu, apv = pu - a[..., 0], pv - a[..., 1]
    den = abu * acv - abv * acu
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(den != 0.0, 1.0 / den, np.nan)
    l1 = (apu * acv - apv * acu) * inv
    l2 = (abu * apv - abv * apu) * inv
    l0 = 1.0 - l1 - l2
    return l0, l1, l2


def _texel_centre(row, col, size: int):
    """uv of texel (row, col), with exactly the arithmetic of :func:`texel_centres_uv`."""
    return (col + 0.5) / size, 1.0 - (row + 0.5) / size


def build_uv_table(uvs: np.ndarray, face_uvs: np.ndarray, size: int) -> UVTable:
    """Rasterise a uv mesh: the texel -> (face, barycentrics) table of an S x S map, vectorised.

    ``uvs [T, 2]`` (u, v in [0, 1], v up), ``face_uvs [F, 3]`` int indices into ``uvs``, ``size`` S.
    Every face's texel bounding box is expanded (repeat / cumsum, no Python loop) into candidate
    (face, texel) pairs, each gets its barycentrics, and a texel takes the covering face whose smallest
    barycentric is largest (ties: the lower face index). Texel centres exactly on an edge are covered.
    Winding does not matter. Raises ValueError on a bad size or out-of-range indices.
    """
    size = _check_size(size)
    uvs, face_uvs = _check_uv_mesh(uvs, face_uvs)
    face_index = np.full((size, size), -1, dtype=np.int64)
    bary = np.zeros((size, size, 3), dtype=np.float64)
    if len(face_uvs):
        tri = uvs[face_uvs]  # [F, 3, 2]
        # Texel bounding box of each face: col x = u S - 0.5, row y = (1 - v) S - 0.5 (centres are integers).
        x = tri[..., 0] * size - 0.5
        y = (1.0 - tri[..., 1]) * size - 0.5
        pad = 1e-6  # texels on the box edge stay candidates; the barycentric test decides
        c0 = np.clip(np.ceil(x.min(1) - pad), 0, size - 1).astype(np.int64)
        c1 = np.clip(np.floor(x.max(1) + pad), 0, size - 1).astype(np.int64)
        r0 = np.clip(np.ceil(y.min(1) - pad), 0, size - 1).astype(np.int64)
        r1 = np.clip(np.floor(y.max(1) + pad), 0, size - 1).astype(np.int64)
        nx = np.where((x.max(1) + pad >= 0) & (x.min(1) - pad <= size - 1), np.maximum(c1 - c0 + 1, 0), 0)
        ny = np.where((y.max(1) + pad >= 0) & (y.min(1) - pad <= size - 1), np.maximum(r1 - r0 + 1, 0), 0)
        count = nx * ny
        total = int(count.sum())
        face = np.repeat(np.arange(len(face_uvs), dtype=np.int64), count)
        start = np.cumsum(count) - count
        local = np.arange(total, dtype=np.int64) - np.repeat(start, count)
        nxf = nx[face]
        row = r0[face] + local // nxf
        col = c0[face] + local % nxf
        del local, nxf
        pu, pv = _texel_centre(row, col, size)
        t = tri[face]  # [K, 3, 2]
        l0, l1, l2 = _barycentric(pu, pv, t[:, 0], t[:, 1], t[:, 2])
        del t, pu, pv
        lmin = np.minimum(np.minimum(l0, l1), l2)
        inside = lmin >= -_INSIDE_EPS  # NaN (degenerate face) is False
        texel = (row * size + col)[inside]
        face, lmin = face[inside], lmin[inside]
        lam = np.stack([l0[inside], l1[inside], l2[inside]], axis=-1)
        # Texels inside one face only take it; the few inside several (shared edges and vertices) keep
        # the candidate with the largest smallest barycentric, then the lowest face index.
        shared = np.bincount(texel, minlength=size * size)[texel] > 1
        pick = np.flatnonzero(~shared)
        many = np.flatnonzero(shared)
        if len(many):
            order = many[np.lexsort((face[many], -lmin[many], texel[many]))]
            ts = texel[order]
            first = np.ones(len(ts), dtype=bool)
            first[1:] = ts[1:] != ts[:-1]
            pick = np.concatenate([pick, order[first]])
        face_index.reshape(-1)[texel[pick]] = face[pick]
        bary.reshape(-1, 3)[texel[pick]] = lam[pick]
    return UVTable(size=size, face_index=face_index, bary=bary, covered=face_index >= 0)


def build_uv_table_reference(uvs: np.ndarray, face_uvs: np.ndarray, size: int) -> UVTable:
    """Slow, obvious version of :func:`build_uv_table` (loop over faces, every texel tested); for tests.

    Same inputs, output and tie rule: faces are visited in index order and a texel changes hands only
    to a face whose smallest barycentric there is strictly larger.
    """
    size = _check_size(size)
    uvs, face_uvs = _check_uv_mesh(uvs, face_uvs)
    centres = texel_centres_uv(size)
    pu, pv = centres[..., 0], centres[..., 1]
    face_index = np.full((size, size), -1, dtype=np.int64)
    bary = np.zeros((size, size, 3), dtype=np.float64)
    best = np.full((size, size), -np.inf)
    for f, (ia, ib, ic) in enumerate(face_uvs):
        l0, l1, l2 = _barycentric(pu, pv, uvs[ia], uvs[ib], uvs[ic])
        lmin = np.minimum(np.minimum(l0, l1), l2)
        take = (lmin >= -_INSIDE_EPS) & (lmin > best)
        face_index[take] = f
        best[take] = lmin[take]
        bary[take] = np.stack([l0, l1, l2], axis=-1)[take]
    return UVTable(size=size, face_index=face_index, bary=bary, covered=face_index >= 0)


def _read_only(table: UVTable) -> UVTable:
    for a in (table.face_index, table.bary, table.covered):
        a.flags.writeable = False
    return table


@functools.lru_cache(maxsize=8)
def template_uv_table(size: int) -> UVTable:
    """The (cached, read-only) :class:`UVTable` of the shipped template at S = ``size``.

    Its faces are ``load_template().faces`` (== ``face_uvs``), so vertex attributes of any mesh with
    the template topology (``attr [N, C]``) go straight into :func:`interpolate_attribute`.
    """
    from mvfr.template import load_template

    t = load_template()
    return _read_only(build_uv_table(t.uvs, t.face_uvs, _check_size(size)))


def interpolate_attribute(table: UVTable, faces: np.ndarray, attr: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Per-vertex ``attr [N, ...]`` (e.g. positions [N, 3] in capture units) -> UV map ``[S, S, ...]``.

    ``faces [F, 3]`` are the vertex indices of the faces the table was built from (the same rows as its
    ``face_uvs``). One gather and a barycentric sum per texel; uncovered texels get ``fill``.
    Float32 attributes stay float32; everything else comes back float64.
    """
    faces = np.asarray(faces)
    attr = np.asarray(attr)
    if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
        raise ValueError(f"faces must be an integer array of shape [F, 3], got {faces.dtype} {faces.shape}")
    if attr.ndim < 1:
        raise ValueError("attr must have one row per vertex, shape [N] or [N, C]")
    if faces.size and (faces.min() < 0 or faces.max() >= len(attr)):
        raise ValueError(
            f"faces index vertices out of range: indices span [{faces.min()}, {faces.max()}] "
            f"but attr has {len(attr)} rows"
        )
    if table.covered.any() and table.face_index.max() >= len(faces):
        raise ValueError(
            f"the UV table refers to face {table.face_index.max()} but faces has {len(faces)} rows; "
            "was the table built from another mesh?"
        )
    dtype = attr.dtype if attr.dtype == np.float32 else np.float64
    fi = np.where(table.covered, table.face_index, 0)
    w = table.bary.reshape(table.bary.shape + (1,) * (attr.ndim - 1)).astype(dtype, copy=False)
    out = (attr.astype(dtype, copy=False)[faces[fi]] * w).sum(axis=2)  # [S, S, 3, ...] -> [S, S, ...]
    out[~table.covered] = fill
    return out


@functools.lru_cache(maxsize=4)
def template_to_ict_uv(size: int) -> tuple[np.ndarray, np.ndarray]:
    """For every texel of an S x S template-UV map: its ICT face-tile uv ``[S, S, 2]`` and ``covered [S, S]``.

    Exact: the base model's skin triangles are ICT triangles, so a texel's ICT uv is the barycentric
    blend of its triangle's ICT uvs. Texels of the fills (eyes, mouth, nostrils: no ICT skin) are not
    covered. (For data laid out in the ICT face tile, such as the synthesiser's detail maps.)"""
    from mvfr.face_model import load_face_model

    fm = load_face_model()
    table = template_uv_table(size)
    cov = table.covered & ~fm.fill[np.where(table.covered, table.face_index, 0)]
    fidx = table.face_index[cov]
    uv = np.einsum("nk,nkc->nc", table.bary[cov], fm.ict_uv[fm.faces[fidx]])
    out = np.zeros((size, size, 2))
    out[cov] = uv
    return out, cov


# ------------------------------------------------------------------------------------ facial mask

FACIAL_MASK_PNG_SIZE = 256


def boundary_edges(face_uvs: np.ndarray) -> np.ndarray:
    """Edges [B, 2] (uv indices) used by exactly one face: the rim of the uv mesh and of any hole."""
    f = np.asarray(face_uvs, dtype=np.int64)
    e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    edges, count = np.unique(e, axis=0, return_counts=True)
    return edges[count == 1]


def build_facial_mask(table: UVTable, facial_faces: np.ndarray) -> np.ndarray:
    """``[S, S]`` bool: the texels whose face (in the table's mesh) is one of ``facial_faces [F] bool``."""
    facial_faces = np.asarray(facial_faces, dtype=bool)
    if table.covered.any() and table.face_index.max() >= len(facial_faces):
        raise ValueError(f"the UV table refers to face {table.face_index.max()} but facial_faces has {len(facial_faces)} rows")
    return table.covered & facial_faces[np.where(table.covered, table.face_index, 0)]


@functools.lru_cache(maxsize=16)
def _template_triangle_mask(size: int, which: str) -> np.ndarray:
    """The texels of the base model's triangles flagged by its ``which`` attribute (``facial``, ``fill``)."""
    from mvfr.face_model import load_face_model

    return build_facial_mask(template_uv_table(size), getattr(load_face_model(), which))


def fill_mask(size: int) -> np.ndarray:
    """The texels of the base model's fill patches (the closed eye openings, mouth and nostrils) at S =
    ``size``: [S, S] bool, a fresh copy. Not skin: what lies behind them is an eyeball, teeth or nothing."""
    return _template_triangle_mask(_check_size(size), "fill").copy()


def facial_mask(size: int) -> np.ndarray:
    """The template's facial region at S = ``size``, computed: [S, S] bool (row 0 is v = 1).

    The texels of the base model's facial triangles (:attr:`mvfr.face_model.FaceModel.facial`: the
    scans' facial region, forehead to the neck fold and ear to ear, with the eyes, the mouth and the
    nostrils closed by their fills): one region without holes; the model's margin lies around it.
    Used for losses and metrics. A fresh copy (the computation is cached).
    """
    return _template_triangle_mask(_check_size(size), "facial").copy()


def write_facial_mask_png(path: str | os.PathLike | None = None, size: int = FACIAL_MASK_PNG_SIZE) -> Path:
    """Write :func:`facial_mask` as a uint8 0/255 grey PNG (default ``predefine_data/facial_mask.png``)."""
    import cv2

    from mvfr.atomic_io import atomic_path
    from mvfr.template import FACIAL_MASK_PNG

    path = Path(path or FACIAL_MASK_PNG)
    image = facial_mask(size).astype(np.uint8) * 255
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), image):
            raise OSError(f"could not write {path}")
    return path


def load_facial_mask(size: int = FACIAL_MASK_PNG_SIZE) -> np.ndarray:
    """The facial mask [S, S] bool: the shipped PNG when ``size`` is 256 and it exists, else computed."""
    from mvfr.template import FACIAL_MASK_PNG

    size = _check_size(size)
    if size == FACIAL_MASK_PNG_SIZE and FACIAL_MASK_PNG.is_file():
        import cv2

        image = cv2.imread(str(FACIAL_MASK_PNG), cv2.IMREAD_GRAYSCALE)
        if image is None or image.shape != (size, size):
            raise ValueError(
                f"{FACIAL_MASK_PNG} is not a {size} x {size} grey image; "
                "regenerate it with `python -m mvfr.uv_rasterizer`"
            )
        return image > 127
    return facial_mask(size)


if __name__ == "__main__":
    written = write_facial_mask_png()
    m = load_facial_mask()
    print(f"wrote {written}: {m.shape[0]} x {m.shape[1]}, {int(m.sum())} facial texels")
