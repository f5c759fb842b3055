"""Rasterisation in UV space: texel -> (face, barycentrics) tables and per-vertex attribute maps.

Convention (DESIGN §3): texel (row i, col j) of an S x S map has its centre at
``uv = ((j + 0.5) / S, 1 - (i + 0.5) / S)``; row 0 is the top of the image (v = 1).

A :class:`UVTable` says, for every texel centre, which face covers it and with which barycentrics;
it is built once per (mesh, S) by :func:`build_uv_table` (vectorised; :func:`template_uv_table`
caches the template's), and :func:`interpolate_attribute` turns any per-vertex attribute into an
S x S map with one gather. :func:`facial_mask` is the template's facial region (eyes and mouth
cut out, borders eroded); ``predefine_data/facial_mask.png`` holds it at S = 256 and is regenerated with
``python -m mvfr.uv_rasterizer``.
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
    the template topology (``attr [468, C]``) go straight into :func:`interpolate_attribute`.
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


# ------------------------------------------------------------------------------------ facial mask

# Closed contours of the template's eye openings and inner lips (MediaPipe face-mesh landmark indices,
# from mediapipe.tasks.python.vision.FaceLandmarksConnections FACE_LANDMARKS_{RIGHT,LEFT}_EYE and the
# inner ring of FACE_LANDMARKS_LIPS), each as one loop. The canonical mesh closes each loop over with
# n - 2 triangles whose corners all lie on the loop; those triangles are the holes of the mask.
RIGHT_EYE_CONTOUR = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
LEFT_EYE_CONTOUR = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
INNER_LIP_CONTOUR = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191)
HOLE_CONTOURS = (RIGHT_EYE_CONTOUR, LEFT_EYE_CONTOUR, INNER_LIP_CONTOUR)
# Erosion from the outer rim and from the hole contours, in uv units: 2 texels at S = 256.
FACIAL_MASK_MARGIN_UV = 2.0 / 256
FACIAL_MASK_PNG_SIZE = 256


def hole_faces(face_uvs: np.ndarray, contours=HOLE_CONTOURS) -> np.ndarray:
    """Indices of the faces whose three corners (uv indices) all lie on one of ``contours``: [H] int64."""
    face_uvs = np.asarray(face_uvs, dtype=np.int64)
    hole = np.zeros(len(face_uvs), dtype=bool)
    for loop in contours:
        hole |= np.isin(face_uvs, np.asarray(loop)).all(axis=1)
    return np.flatnonzero(hole)


def boundary_edges(face_uvs: np.ndarray) -> np.ndarray:
    """Edges [B, 2] (uv indices) used by exactly one face: the rim of the uv mesh and of any hole."""
    f = np.asarray(face_uvs, dtype=np.int64)
    e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    edges, count = np.unique(e, axis=0, return_counts=True)
    return edges[count == 1]


def texels_near_segments(seg_a: np.ndarray, seg_b: np.ndarray, radius: float, size: int) -> np.ndarray:
    """[S, S] bool: texel centres closer than ``radius`` (uv units) to any segment ``seg_a -> seg_b [B, 2]`` (uv).

    Vectorised like :func:`build_uv_table`: each segment's bounding box, grown by ``radius``, is
    expanded into candidate texels whose exact point-to-segment distance is then tested.
    """
    size = _check_size(size)
    seg_a = np.asarray(seg_a, dtype=np.float64).reshape(-1, 2)
    seg_b = np.asarray(seg_b, dtype=np.float64).reshape(-1, 2)
    near = np.zeros(size * size, dtype=bool)
    if len(seg_a) == 0 or radius <= 0:
        return near.reshape(size, size)
    pts = np.stack([seg_a, seg_b], axis=1)  # [B, 2, 2]
    x = pts[..., 0] * size - 0.5
    y = (1.0 - pts[..., 1]) * size - 0.5
    r = radius * size + 1e-6
    c0 = np.clip(np.ceil(x.min(1) - r), 0, size).astype(np.int64)
    c1 = np.clip(np.floor(x.max(1) + r), -1, size - 1).astype(np.int64)
    r0 = np.clip(np.ceil(y.min(1) - r), 0, size).astype(np.int64)
    r1 = np.clip(np.floor(y.max(1) + r), -1, size - 1).astype(np.int64)
    nx = np.maximum(c1 - c0 + 1, 0)
    count = nx * np.maximum(r1 - r0 + 1, 0)
    seg = np.repeat(np.arange(len(seg_a), dtype=np.int64), count)
    local = np.arange(int(count.sum()), dtype=np.int64) - np.repeat(np.cumsum(count) - count, count)
    row = r0[seg] + local // nx[seg]
    col = c0[seg] + local % nx[seg]
    pu, pv = _texel_centre(row, col, size)
    a, d = seg_a[seg], (seg_b - seg_a)[seg]
    apu, apv = pu - a[:, 0], pv - a[:, 1]
    t = np.clip((apu * d[:, 0] + apv * d[:, 1]) / np.maximum((d * d).sum(-1), 1e-300), 0.0, 1.0)
    dist2 = (apu - t * d[:, 0]) ** 2 + (apv - t * d[:, 1]) ** 2
    near[(row * size + col)[dist2 < radius * radius]] = True
    return near.reshape(size, size)


def build_facial_mask(
    table: UVTable,
    uvs: np.ndarray,
    face_uvs: np.ndarray,
    contours=HOLE_CONTOURS,
    margin_uv: float = FACIAL_MASK_MARGIN_UV,
    hole_margin_uv: float = FACIAL_MASK_MARGIN_UV,
) -> np.ndarray:
    """Facial region ``[S, S]`` bool of a uv mesh (row 0 is v = 1).

    Covered texels, minus the faces closing ``contours`` (see :func:`hole_faces`), minus texels whose
    centre is closer than ``margin_uv`` (uv units) to the mesh's boundary edges (its outer rim) or
    closer than ``hole_margin_uv`` to a contour. The hole margin matters for the template's mouth: its
    lips are closed, so the inner-lip loop encloses a slit under one texel high at S = 256, which
    would hold no texel centre at all at S <= 128. ``table`` must be built from ``uvs``, ``face_uvs``.
    """
    uvs, face_uvs = _check_uv_mesh(uvs, face_uvs)
    if table.face_index.shape != (table.size, table.size):
        raise ValueError(f"table of size {table.size} has face_index of shape {table.face_index.shape}")
    mask = table.covered & ~np.isin(table.face_index, hole_faces(face_uvs, contours))
    edges = boundary_edges(face_uvs)
    mask &= ~texels_near_segments(uvs[edges[:, 0]], uvs[edges[:, 1]], margin_uv, table.size)
    for loop in contours:
        loop = np.asarray(loop, dtype=np.int64)
        mask &= ~texels_near_segments(uvs[loop], uvs[np.roll(loop, -1)], hole_margin_uv, table.size)
    return mask


@functools.lru_cache(maxsize=8)
def _template_facial_mask(size: int) -> np.ndarray:
    from mvfr.template import load_template

    t = load_template()
    return build_facial_mask(template_uv_table(size), t.uvs, t.face_uvs)


def facial_mask(size: int) -> np.ndarray:
    """The template's facial region at S = ``size``, computed: [S, S] bool (row 0 is v = 1).

    Covered texels minus the eye openings and the mouth opening, eroded by 2 / 256 in uv (2 texels at
    S = 256) from the outer rim and from the eye and inner-lip contours (see :func:`build_facial_mask`).
    Used for losses and metrics. A fresh copy (the computation is cached).
    """
    return _template_facial_mask(_check_size(size)).copy()


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
