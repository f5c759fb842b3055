"""Mesoscopic skin detail on the ICT Face Model: a per-identity random layout of pores, fine lines and
expression wrinkles, rendered as a displacement map in the face area's UV tile.

Two steps:

* :func:`sample_layout` (once per identity, cached by the caller): draws where every pore, fine line
  and wrinkle lies, from the identity's own 3D head (wrinkles are placed relative to its 3D
  landmarks: forehead lines follow its brow curve, crow's feet radiate from its outer eye corners,
  nasolabial folds run from its nose wings past its mouth corners ...). The layout is resolution
  free: positions are uvs, sizes are mm converted to uv with the identity's local mm per uv.
* :func:`displacement_map` (per capture): the height ``[S, S]`` float32 in **mm along the outward
  normal of the smooth surface** (negative = into the skin) for blend-shape ``expression_weights
  [53]``; exactly zero outside the tile's coverage and fading to zero over 2 mm at the tile's
  boundary (the seam with the head, the eye and mouth openings), so the detailed face joins the head.

The map is in the project's texel convention (DESIGN §3): texel (row i, col j) has its centre at
uv = ((j + .5) / S, 1 - (i + .5) / S) of the face tile (u in [0, 1], :func:`mvfr.synthesis.ict.uv_tile_map`).

Sizes (real skin): pores 0.05-0.25 mm across, 0.02-0.08 mm deep, dense and large on the nose and
cheeks, fine on the forehead, few on lips and eyelids; fine lines 0.05-0.15 mm deep, more with age;
expression wrinkles 0.2-1.0 mm deep at full activation (forehead lines with browInnerUp/browOuterUp,
glabella with browDown, crow's feet with eyeSquint/cheekSquint/mouthSmile, nasolabial folds with
mouthSmile/cheekSquint/noseSneer, under-eye lines with eyeSquint/cheekSquint, lip lines with
mouthPucker/mouthFunnel, neck lines with mouthStretch/mouthFrown/jawOpen, chin (mentalis) with
mouthShrugLower/mouthPucker), each with a per-identity depth (age) and a neutral residual. Under
all of it, a static skin relief: a fine furrow network (drawn at the output size), V-grooved cells
0.7-1.5 mm across and a mesoscale undulation, calibrated per identity so that a 0.3 mm grid sees the
detail tilt the normal by about 8.5-10.3 deg on average in the facial area (:data:`RELIEF_TILT_DEG`; the
ground-truth scan, with its 0.37 mm edges, sees 4-5 deg); the std of the whole detail there is
0.07-0.1 mm, more with expression wrinkles.

Rendering: every feature is a set of weighted samples (a pore is one 2D Gaussian pit, a line is a
row of samples along its curve); samples are splatted into images of a few width classes, each
blurred by its Gaussian (broad classes on coarser pyramid levels), and a second, broader blur
subtracted gives the valley slight raised shoulders. Features narrower than a texel are drawn at
the texel's size with their volume kept (what a scan of that resolution would see).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

LAYOUT_SIZE = 512  # resolution of the per-identity position map the layout is drawn on
RELIEF_SIZE = 2048  # resolution of the stored microrelief noise (about 0.14 mm per texel)
COARSE_SIZE = 1024  # resolution of the stored coarse relief (cells, undulation)
# Mean normal tilt of the static relief on a 0.3 mm grid inside the facial area (deg, plus 0.8 at age 1).
# A ground-truth scan (Loop level 3: 0.37 mm edges, vertex normals averaged over each 1-ring) sees
# about 0.65 of it, so this range gives the scan 4-5 deg (benchmarks/check_detail.py).
RELIEF_TILT_DEG = (8.5, 9.5)
FADE_MM = (0.4, 1.6)  # detail is 0 within FADE_MM[0] of the tile boundary, full from FADE_MM[0] + FADE_MM[1]
SHOULDER = 0.35  # weight of the broader blur (std 2.4 texels of its level) subtracted from a valley: raised shoulders

# family -> {driver shape (ARKit name without side): gain}; a driver with _L/_R shapes is read on the
# point's side of the face (subject's left = +x = _L)
FAMILIES: dict[str, dict[str, float]] = {
    "static": {},
    "forehead": {"browInnerUp": 0.65, "browOuterUp": 0.55},
    "glabella": {"browDown": 1.0, "noseSneer": 0.35},
    "crows_feet": {"eyeSquint": 0.6, "cheekSquint": 0.6, "mouthSmile": 0.55},
    "nasolabial": {"mouthSmile": 0.8, "cheekSquint": 0.5, "noseSneer": 0.5},
    "under_eye": {"eyeSquint": 0.6, "cheekSquint": 0.5, "mouthSmile": 0.3},
    "lip_lines": {"mouthPucker": 1.0, "mouthFunnel": 0.7},
    "neck": {"mouthStretch": 0.7, "mouthFrown": 0.6, "jawOpen": 0.3},
    "chin": {"mouthShrugLower": 1.0, "mouthPucker": 0.4},
}
FAMILY_NAMES = tuple(FAMILIES)
_FAMILY = {n: i for i, n in enumerate(FAMILY_NAMES)}


@dataclasses.dataclass(frozen=True)
class DetailLayout:
    """One identity's detail, resolution free. ``N`` samples (pores and points along lines).

    ``uv [N, 2]`` face-tile uv; ``sigma_uv [N]`` Gaussian width (std) in uv units; ``depth_mm [N]``
    signed height at full activation (negative = groove or pit); ``ds_uv [N]`` spacing of a line's
    samples in uv (0 = a 2D pore stamp); ``family [N]`` index into :data:`FAMILY_NAMES`; ``side [N]``
    in [0, 1], 1 = subject's left (which of a sided driver's shapes applies); ``residual [F]``: the
    fraction of a family's depth present in a neutral face. ``fade`` / ``regions`` are
    ``[LAYOUT_SIZE, LAYOUT_SIZE]`` float32 fields (boundary fade; ``facial_area``: inside the jaw outline,
    landmarks 0-16, closed 40 mm above the brows; ``forehead``: its part 8 mm above the brows);
    ``relief`` the static skin relief (microrelief furrow network, mesoscale undulation), see :func:`_skin_relief`.
    """

    uv: np.ndarray
    sigma_uv: np.ndarray
    depth_mm: np.ndarray
    ds_uv: np.ndarray
    family: np.ndarray
    side: np.ndarray
    residual: np.ndarray
    fade: np.ndarray
    regions: dict
    age: float
    relief: dict  # the static skin relief (microrelief furrows, mesoscale undulation), see _skin_relief

    def __len__(self) -> int:
        return len(self.uv)


# --------------------------------------------------------------------------------------------- helpers


def uv_to_texel(uv: np.ndarray, size: int) -> np.ndarray:
    """uv ``[..., 2]`` -> continuous texel coordinates ``[..., 2]`` (x = column, y = row; texel centres integer)."""
    uv = np.asarray(uv, dtype=np.float64)
    return np.stack([uv[..., 0] * size - 0.5, (1.0 - uv[..., 1]) * size - 0.5], -1)


def sample_at(map_: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup of ``map_ [S, S]`` (or ``[S, S, C]``) at face-tile ``uv [N, 2]`` -> ``[N]`` (``[N, C]``).

    Texel (i, j) is the value at uv = ((j + .5) / S, 1 - (i + .5) / S); outside the texel centres the
    border value is repeated."""
    import cv2

    map_ = np.asarray(map_)
    if map_.ndim not in (2, 3) or map_.shape[0] != map_.shape[1]:
        raise ValueError(f"map_ must be [S, S] or [S, S, C], got {map_.shape}")
    uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    n = len(uv)
    if n == 0:
        return np.zeros((0,) + map_.shape[2:], np.float32)
    cols = 1024  # cv2.remap wants maps under 32767 per side
    rows = -(-n // cols)
    pix = np.zeros((rows * cols, 2), np.float32)
    pix[:n] = uv_to_texel(uv, map_.shape[0])
    out = cv2.remap(np.ascontiguousarray(map_, dtype=np.float32), pix[:, 0].reshape(rows, cols),
                    pix[:, 1].reshape(rows, cols), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape((rows * cols,) + map_.shape[2:])[:n]


def mm_per_texel(pos_map: np.ndarray, covered: np.ndarray | None = None) -> np.ndarray:
    """Local texel spacing ``[S, S, 2]`` mm (along rows = down a column, along columns) of a position map
    ``[S, S, 3]`` mm, from its central differences (one-sided at the coverage boundary); 0 where uncovered."""
    p = np.asarray(pos_map, dtype=np.float32)
    cov = np.ones(p.shape[:2], bool) if covered is None else np.asarray(covered, bool)
    out = np.zeros(p.shape[:2] + (2,), np.float32)
    for ax in (0, 1):
        fwd = np.zeros(p.shape[:2], np.float32)
        bwd = np.zeros(p.shape[:2], np.float32)
        ok_f = np.zeros(p.shape[:2], bool)
        ok_b = np.zeros(p.shape[:2], bool)
        a = [slice(None)] * 2
        b = [slice(None)] * 2
        a[ax], b[ax] = slice(1, None), slice(None, -1)
        d = np.linalg.norm(p[tuple(a)] - p[tuple(b)], axis=-1)
        ok = cov[tuple(a)] & cov[tuple(b)]
        fwd[tuple(b)], ok_f[tuple(b)] = d, ok
        bwd[tuple(a)], ok_b[tuple(a)] = d, ok
        n = ok_f.astype(np.float32) + ok_b
        out[..., ax] = np.where(n > 0, (fwd * ok_f + bwd * ok_b) / np.maximum(n, 1), 0)
    out[~cov] = 0
    return out


def normal_perturbation_deg(map_: np.ndarray, mm_per_texel, grid_mm: float | None = None) -> np.ndarray:
    """Per-texel angle ``[S, S]`` degrees between the smooth normal and the normal of (surface + ``map_``
    along it): ``atan(|grad h|)`` with the gradient in mm per mm.

    ``mm_per_texel``: a number, ``[S, S]`` or ``[S, S, 2]`` (spacing along rows, along columns; see
    :func:`mm_per_texel`). With ``grid_mm``, ``map_`` is first low-passed to what a grid of that spacing
    resolves (the area average over a grid cell beyond the texel's own: a Gaussian of std
    sqrt(grid_mm^2 - texel^2) / sqrt(12)), so detail finer than a scan's resolution counts at its
    filtered size; a map whose texels are already that size is taken as it is. Texels with a spacing of
    0 give 0."""
    import cv2

    h = np.asarray(map_, dtype=np.float32)
    sp = np.asarray(mm_per_texel, dtype=np.float32)
    if sp.ndim == 0:
        sp = np.full(h.shape + (2,), float(sp), np.float32)
    elif sp.ndim == 2:
        sp = np.repeat(sp[..., None], 2, -1)
    if sp.shape != h.shape + (2,):
        raise ValueError(f"mm_per_texel must be a number, [S, S] or [S, S, 2] for a map {h.shape}, got {sp.shape}")
    if grid_mm:
        # area-average over a grid cell (a box of grid_mm, as a Gaussian of std box / sqrt(12)), beyond
        # the averaging the texels already do
        valid = sp[..., 0] > 0
        s = float(np.median(sp[valid].mean(-1))) if valid.any() else 1.0
        sigma = np.sqrt(max(grid_mm**2 - s**2, 0.0)) / np.sqrt(12.0) / s
        if sigma > 0.2:
            h = cv2.GaussianBlur(h, (0, 0), sigma)
    gy, gx = np.gradient(h)
    with np.errstate(divide="ignore", invalid="ignore"):
        gy = np.where(sp[..., 0] > 0, gy / sp[..., 0], 0)
        gx = np.where(sp[..., 1] > 0, gx / sp[..., 1], 0)
    return np.degrees(np.arctan(np.hypot(gx, gy))).astype(np.float32)


@functools.lru_cache(maxsize=6)
def tile_coverage(size: int) -> np.ndarray:
    """``[S, S]`` bool: texels inside the face area of the ICT uv layout and more than about a texel from
    its boundary (the seam with the head, the eye and mouth openings), so every one of them is covered
    by the GL rasteriser too (:func:`mvfr.synthesis.ict.uv_tile_map`). Identity independent, cached."""
    import cv2

    from mvfr.synthesis import ict

    m = ict.load_model()
    tri = m.faces_uv[m.part_faces("face")]
    pix = np.round(uv_to_texel(m.uv[tri], size) * 16).astype(np.int32)
    cov = np.zeros((size, size), np.uint8)
    cv2.fillPoly(cov, list(pix), 1, lineType=cv2.LINE_8, shift=4)
    # boundary edges (used by one triangle) and every texel within about a texel of them are removed
    # (uv vertices are merged by position first: the layout repeats some at one place)
    _, same = np.unique(np.round(m.uv * 1e6).astype(np.int64), axis=0, return_inverse=True)
    tri_pos = same.reshape(-1)[tri]
    first = np.zeros(same.max() + 1, np.int64)
    first[same.reshape(-1)[::-1]] = np.arange(len(m.uv))[::-1]  # one uv index per position
    e = np.sort(np.concatenate([tri_pos[:, [0, 1]], tri_pos[:, [1, 2]], tri_pos[:, [2, 0]]]), axis=1)
    uniq, count = np.unique(e, axis=0, return_counts=True)
    border = first[uniq[count == 1]]
    seg = np.round(uv_to_texel(m.uv[border], size) * 16).astype(np.int32)
    cv2.polylines(cov, list(seg), False, 0, thickness=3, lineType=cv2.LINE_8, shift=4)
    out = cov.astype(bool)
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=3)
def _coverage_f32(size: int) -> np.ndarray:
    out = tile_coverage(size).astype(np.float32)
    out.setflags(write=False)
    return out


class _Surface:
    """One identity's face tile at ``LAYOUT_SIZE``: position map, Jacobian d pos / d uv, 3D -> uv projection."""

    def __init__(self, model, vertices: np.ndarray):
        from scipy.spatial import cKDTree

        from mvfr.synthesis import ict

        S = LAYOUT_SIZE
        pos, cov = ict.uv_tile_map(model, vertices, S)
        self.pos = pos.astype(np.float32)
        self.cov = cov
        sp = mm_per_texel(pos, cov)  # mm per texel along rows (-v) and columns (+u)
        # Jacobian columns: d pos / du, d pos / dv (one-sided near the boundary via np.gradient on a filled map)
        filled = self.pos.copy()
        gi, gj = np.gradient(filled, axis=(0, 1))
        self.J = np.stack([gj * S, -gi * S], -1).astype(np.float32)  # [S, S, 3, 2] mm per uv
        self.mm_per_uv = (np.sqrt(np.maximum(sp[..., 0] * sp[..., 1], 0)) * S).astype(np.float32)
        # outside the coverage, every field takes its nearest covered texel's value (bilinear lookups
        # near the boundary then see no zeros)
        from scipy.ndimage import distance_transform_edt

        inner = cov & _interior(cov)
        _, (ni, nj) = distance_transform_edt(~inner, return_indices=True)
        self.pos = self.pos[ni, nj]
        self.J = self.J[ni, nj]
        self.mm_per_uv = self.mm_per_uv[ni, nj]
        ii, jj = np.nonzero(_interior(cov))
        self.tex_uv = np.stack([(jj + 0.5) / S, 1 - (ii + 0.5) / S], 1)
        self.tex_ij = (ii, jj)
        self.tree = cKDTree(self.pos[ii, jj])
        vt = np.full(model.num_vertices, -1)
        fsel = model.part_faces("face")
        vt[model.faces[fsel].ravel()] = model.faces_uv[fsel].ravel()
        self.vertex_uv = vt
        self._planes: dict = {}

    def lookup(self, field: np.ndarray, uv: np.ndarray) -> np.ndarray:
        """Bilinear lookup of a layout-grid field ``[S, S, ...]`` at ``uv [N, 2]`` -> ``[N, ...]``."""
        key = id(field)
        if key not in self._planes:  # channel planes made contiguous once per field
            f = np.asarray(field, np.float32)
            flat = f.reshape(f.shape[0], f.shape[1], -1)
            self._planes[key] = (field, f.shape[2:], [np.ascontiguousarray(flat[..., c]) for c in range(flat.shape[-1])])
        _, shape, planes = self._planes[key]
        out = np.stack([sample_at(p, uv) for p in planes], -1)
        return out.reshape((len(uv),) + shape)

    def to_uv(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """3D points ``[N, 3]`` mm near the surface -> uv ``[N, 2]`` of their closest surface point, distance ``[N]`` mm."""
        pts = np.asarray(points, np.float64).reshape(-1, 3)
        dist, k = self.tree.query(pts)
        uv = self.tex_uv[k].copy()
        for _ in range(2):  # Gauss-Newton on |pos(uv) - p|
            P = self.lookup(self.pos, uv).astype(np.float64)
            J = self.lookup(self.J, uv).astype(np.float64)
            JtJ = np.einsum("nki,nkj->nij", J, J) + 1e-6 * np.eye(2)
            Jtr = np.einsum("nki,nk->ni", J, pts - P)
            d = np.linalg.solve(JtJ, Jtr[..., None])[..., 0]
            lim = 2.0 / LAYOUT_SIZE
            uv = uv + np.clip(d, -lim, lim)
        P = self.lookup(self.pos, uv)
        return uv, np.linalg.norm(P - pts, axis=1)

    def march(self, uv: np.ndarray, dir3: np.ndarray, length_mm: np.ndarray, step_mm: float = 1.0) -> np.ndarray:
        """Walk from ``uv [N, 2]`` along the surface, heading along ``dir3 [3]`` or ``[N, 3]`` (projected onto
        the tangent plane at every step), for ``length_mm [N]`` mm -> end uvs ``[N, 2]``."""
        uv = np.asarray(uv, np.float64).copy()
        length = np.broadcast_to(np.asarray(length_mm, np.float64), (len(uv),))
        n = int(np.ceil(length.max() / step_mm)) if len(uv) else 0
        for k in range(n):
            step = np.clip(length - k * step_mm, 0, step_mm)
            d = self.tangent_step(uv, np.broadcast_to(dir3, (len(uv), 3)))
            J = self.lookup(self.J, uv).astype(np.float64)
            moved = np.linalg.norm(np.einsum("nki,ni->nk", J, d), axis=1)
            uv += d * (step / np.maximum(moved, 1e-9))[:, None]
        return uv

    def tangent_step(self, uv: np.ndarray, dirs3: np.ndarray) -> np.ndarray:
        """uv offsets ``[N, 2]`` that move by the 3D vectors ``dirs3 [N, 3]`` (mm) projected onto the tangent plane."""
        J = self.lookup(self.J, uv).astype(np.float64)
        JtJ = np.einsum("nki,nkj->nij", J, J) + 1e-6 * np.eye(2)
        return np.linalg.solve(JtJ, np.einsum("nki,nk->ni", J, dirs3)[..., None])[..., 0]


def _interior(cov: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.erode(cov.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _seg_dist(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = np.clip(((p - a) @ ab) / max(float(ab @ ab), 1e-12), 0, 1)
    return np.linalg.norm(p - (a + t[..., None] * ab), axis=-1)


def _polyline_dist(p: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return np.min([_seg_dist(p, pts[i], pts[i + 1]) for i in range(len(pts) - 1)], axis=0)


# --------------------------------------------------------------------------------------------- layout


class _Builder:
    """Collects samples: pores (2D stamps) and curves (rows of line samples)."""

    def __init__(self, surf: _Surface):
        self.surf = surf
        self.parts: list[tuple] = []

    def pores(self, uv, sigma_mm, depth_mm, family=0, side=None):
        uv = np.asarray(uv, np.float64)
        s = self.surf.lookup(self.surf.mm_per_uv, uv)
        ok = s > 1e-3
        side = _side_of(self.surf, uv) if side is None else np.broadcast_to(side, len(uv))
        self.parts.append((uv[ok], sigma_mm[ok] / s[ok], depth_mm[ok], np.zeros(ok.sum()),
                           np.full(ok.sum(), family), np.asarray(side)[ok]))

    def curve(self, uv_poly: np.ndarray, sigma_mm: float, depth_mm: float, family: int, taper: float = 0.25,
              offset_mm: float = 0.0):
        """A line along the uv polyline ``[P, 2]``: Gaussian width ``sigma_mm``, peak height ``depth_mm``
        (negative: groove), tapered over the first and last ``taper`` of its length; ``offset_mm`` shifts it
        sideways (to the left of its direction) in mm, for ridges beside a fold."""
        uv_poly = np.asarray(uv_poly, np.float64)
        if len(uv_poly) >= 2:
            self.curves(uv_poly[None], np.array([sigma_mm]), np.array([depth_mm]), family, taper, offset_mm)

    def curves(self, uv_polys: np.ndarray, sigma_mm: np.ndarray, depth_mm: np.ndarray, family: int,
               taper: float = 0.25, offset_mm: float = 0.0):
        """Many lines at once: ``uv_polys [K, P, 2]``, ``sigma_mm [K]``, ``depth_mm [K]`` (see :meth:`curve`)."""
        K, Pn = uv_polys.shape[:2]
        P3 = self.surf.lookup(self.surf.pos, uv_polys.reshape(-1, 2)).reshape(K, Pn, 3).astype(np.float64)
        seg = np.linalg.norm(np.diff(P3, axis=1), axis=2)
        cum = np.concatenate([np.zeros((K, 1)), np.cumsum(seg, axis=1)], 1)  # [K, P]
        L = cum[:, -1]
        ok = L > 0.3
        ds = np.maximum(0.6 * np.asarray(sigma_mm, np.float64), 0.04)
        n = np.where(ok, np.maximum(np.ceil(L / ds), 2), 0).astype(np.int64)
        if n.sum() == 0:
            return
        k = np.repeat(np.arange(K), n)
        start = np.cumsum(n) - n
        idx = np.arange(len(k)) - start[k]
        t = (idx + 0.5) / n[k]
        s_ = t * L[k]
        j = np.clip((cum[k, 1:-1] < s_[:, None]).sum(1), 0, Pn - 2)  # segment of each sample
        c0, c1 = cum[k, j], cum[k, j + 1]
        f = ((s_ - c0) / np.maximum(c1 - c0, 1e-9))[:, None]
        uv = uv_polys[k, j] * (1 - f) + uv_polys[k, j + 1] * f
        if offset_mm:
            tan = uv_polys[k, j + 1] - uv_polys[k, j]
            nrm = np.stack([-tan[:, 1], tan[:, 0]], 1)
            nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
            s_loc = self.surf.lookup(self.surf.mm_per_uv, uv)
            uv = uv + nrm * (offset_mm / np.maximum(s_loc, 1e-3))[:, None]
        w = _smoothstep(np.minimum(t, 1 - t) / max(taper, 1e-3)) if taper > 0 else np.ones_like(t)
        s_uv = self.surf.lookup(self.surf.mm_per_uv, uv)
        good = s_uv > 1e-3
        sig = np.asarray(sigma_mm, np.float64)[k] * (0.6 + 0.4 * w)
        self.parts.append((uv[good], sig[good] / s_uv[good], (np.asarray(depth_mm, np.float64)[k] * w)[good],
                           (L[k] / n[k])[good] / s_uv[good], np.full(good.sum(), family), _side_of(self.surf, uv[good])))

    def curve3d(self, points3: np.ndarray, sigma_mm, depth_mm, family, max_dist_mm=6.0, **kw):
        """A line along 3D points ``[P, 3]`` mm near the surface (see :meth:`curve`): each point goes to its
        closest surface point; the line is cut where it leaves the surface or jumps (its surface points
        much farther apart than the 3D points), and its longest piece is kept."""
        pts = np.asarray(points3, np.float64)
        uv, d = self.surf.to_uv(pts)
        keep = _continuous(self.surf, pts, uv) & (d < max_dist_mm)
        if keep.sum() >= 2:
            idx = np.flatnonzero(keep)
            runs = np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1)
            run = max(runs, key=len)
            self.curve(uv[run], sigma_mm, depth_mm, family, **kw)

    def arrays(self):
        cat = [np.concatenate([p[k] for p in self.parts]) if self.parts else np.zeros(0) for k in range(6)]
        uv, sig, dep, ds, fam, side = cat
        return (uv.reshape(-1, 2).astype(np.float32), sig.astype(np.float32), dep.astype(np.float32),
                ds.astype(np.float32), fam.astype(np.int16), side.astype(np.float32))


def _continuous(surf: _Surface, pts: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bool ``[P]`` (along the last-but-one axis): points whose surface point is no farther than 3x (+1 mm)
    the 3D step from the previous one's (the first point follows the second)."""
    P = surf.lookup(surf.pos, uv.reshape(-1, 2)).reshape(uv.shape[:-1] + (3,)).astype(np.float64)
    step3 = np.linalg.norm(np.diff(pts, axis=-2), axis=-1)
    steps = np.linalg.norm(np.diff(P, axis=-2), axis=-1)
    ok = steps <= 3 * step3 + 1.0
    first = ok[..., :1]
    return np.concatenate([first, ok], axis=-1)


def _side_of(surf: _Surface, uv: np.ndarray) -> np.ndarray:
    x = surf.lookup(surf.pos[..., 0], uv)
    return _smoothstep((x + 12.0) / 24.0).astype(np.float32)


def _bezier(p0, p1, p2, n=40):
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


_UP = np.array([0.0, 1.0, 0.0])


@dataclasses.dataclass
class _RegionFields:
    """Where one identity's face parts lie on the layout grid: weights in [0, 1] per texel (flattened
    ``[S * S]``, from 3D distances to its landmarks) and landmark features (mm, head frame)."""

    P: np.ndarray  # [S * S, 3] surface position of each texel
    w_nose: np.ndarray
    w_cheek: np.ndarray
    w_lid: np.ndarray
    w_fore: np.ndarray
    w_lip: np.ndarray
    w_neck: np.ndarray
    ear: np.ndarray  # bool
    facial: np.ndarray  # bool: inside the jaw outline closed over the forehead
    brow_y: float
    chin: np.ndarray  # [3]
    mouth_c: np.ndarray  # [3]


def sample_layout(model, identity_vertices: np.ndarray, rng: np.random.Generator, age: float) -> DetailLayout:
    """One identity's random detail layout.

    ``identity_vertices [V, 3]`` mm: the identity's neutral head (``model.head(identity_w)``), head frame.
    ``age`` in [0, 1] (0: young, faint lines; 1: old, deep wrinkles and many fine lines). The static
    detail (pores, fine lines), then each wrinkle family, then the skin relief are drawn in this order
    from ``rng``."""
    V = np.asarray(identity_vertices, dtype=np.float64)
    if V.shape != (model.num_vertices, 3):
        raise ValueError(f"identity_vertices must be [{model.num_vertices}, 3] mm, got {V.shape}")
    if not 0.0 <= float(age) <= 1.0:
        raise ValueError(f"age must be in [0, 1], got {age}")
    age = float(age)
    surf = _Surface(model, V)
    S = LAYOUT_SIZE
    lm = V[model.landmarks68]
    A = 0.7 + 0.3 * age  # expression wrinkle depth scale with age (the neutral residual grows faster)
    b = _Builder(surf)
    f = _region_fields(model, surf, lm)
    _add_pores(b, rng, surf, f, age)
    _add_fine_lines(b, rng, surf, f, lm, age)
    _add_forehead(b, rng, surf, lm, A)
    _add_glabella(b, rng, lm, A)
    _add_crows_feet(b, rng, lm, A)
    _add_under_eye(b, rng, lm, A)
    _add_nasolabial(b, rng, lm, A, age)
    _add_lip_creases(b, rng, surf, lm, f.mouth_c, age)
    _add_neck_lines(b, rng, surf, f.chin, A)
    _add_chin(b, rng, surf, lm, f.chin, A)
    uv, sig, dep, ds, fam_a, side = b.arrays()
    residual = _residual_depths(rng, age)
    grid = lambda w: w.reshape(S, S)  # noqa: E731
    relief = _skin_relief(rng, surf, age, w_lip=grid(f.w_lip), w_lid=grid(f.w_lid), w_nose=grid(f.w_nose),
                          w_fore=grid(f.w_fore), facial=grid(f.facial))
    fade, regions = _fade_and_regions(surf, f)
    return DetailLayout(uv=uv, sigma_uv=sig, depth_mm=dep, ds_uv=ds, family=fam_a, side=side, residual=residual,
                        fade=fade, regions=regions, age=age, relief=relief)


def _region_fields(model, surf: _Surface, lm: np.ndarray) -> _RegionFields:
    """The :class:`_RegionFields` of the identity whose 68 landmarks are ``lm [68, 3]`` mm."""
    import cv2

    S = LAYOUT_SIZE
    P = surf.pos.reshape(-1, 3).astype(np.float64)
    # distances to landmark features, on a half-resolution grid (the weights are smooth over mm)
    half = cv2.resize(surf.pos, (S // 2, S // 2), interpolation=cv2.INTER_AREA).reshape(-1, 3)

    def full(d):
        return cv2.resize(d.reshape(S // 2, S // 2).astype(np.float32), (S, S), interpolation=cv2.INTER_LINEAR).reshape(-1)

    nose = _polyline_dist(half, lm[[27, 28, 29, 30, 33]].astype(np.float32))
    nose = full(np.minimum(nose, np.minimum(np.linalg.norm(half - lm[31], axis=1), np.linalg.norm(half - lm[35], axis=1))))
    cheek_c = [0.5 * (lm[2] + lm[31]) + [0, 8, 0], 0.5 * (lm[14] + lm[35]) + [0, 8, 0]]
    cheek = full(np.min([np.linalg.norm(half - c, axis=1) for c in cheek_c], axis=0))
    eye_d = full(np.min([_polyline_dist(half, lm[list(r) + [r[0]]].astype(np.float32)) for r in (range(36, 42), range(42, 48))], axis=0))
    brow_y = lm[17:27, 1].max()
    chin = lm[8]
    lips_uv = surf.vertex_uv[model.landmarks68[48:60]]
    lips_px = uv_to_texel(model.uv[lips_uv], S)
    lips = np.zeros((S, S), np.uint8)
    cv2.fillPoly(lips, [np.round(lips_px * 16).astype(np.int32)], 1, shift=4)
    # facial area: inside the jaw outline (landmarks 0-16) closed over the forehead, 40 mm above the brows
    top, _ = surf.to_uv(lm[26:16:-1] + [0.0, 40.0, -8.0])
    outline = np.concatenate([model.uv[surf.vertex_uv[model.landmarks68[:17]]], top])
    facial = np.zeros((S, S), np.uint8)
    cv2.fillPoly(facial, [np.round(uv_to_texel(outline, S) * 16).astype(np.int32)], 1, shift=4)
    return _RegionFields(
        P=P,
        w_nose=np.exp(-((nose / 9.0) ** 2)),
        w_cheek=np.exp(-((cheek / 22.0) ** 2)),
        w_lid=np.exp(-((eye_d / 5.0) ** 2)),
        w_fore=_smoothstep((P[:, 1] - brow_y + 2.0) / 8.0),
        w_lip=cv2.GaussianBlur(lips.astype(np.float32), (0, 0), 2.0).reshape(-1),
        w_neck=_smoothstep((chin[1] - 6.0 - P[:, 1]) / 10.0),
        ear=np.abs(P[:, 0]) > np.abs(lm[[0, 16], 0]).mean() + 2.0,
        facial=surf.cov.reshape(-1) & facial.reshape(-1).astype(bool),
        brow_y=brow_y,
        chin=chin,
        mouth_c=lm[48:60].mean(0),
    )


def _add_pores(b: _Builder, rng: np.random.Generator, surf: _Surface, f: _RegionFields, age: float) -> None:
    """Pores: density (per mm^2) and size by region, sizes alike within a patch."""
    import cv2

    S = LAYOUT_SIZE
    cov = surf.cov.reshape(-1)
    dens = 0.55 + 3.0 * f.w_nose + 1.2 * f.w_cheek * (1 - f.w_nose) + 0.35 * f.w_fore
    dens = dens * (1 - 0.95 * np.maximum(f.w_lip, f.w_lid)) * np.where(f.ear, 0.3, 1) * (1 - 0.5 * f.w_neck)
    size_gain = (0.75 + 0.6 * f.w_nose + 0.3 * f.w_cheek * (1 - f.w_nose) - 0.25 * f.w_fore) * (1 - 0.4 * f.w_lid)
    dens = np.where(cov, dens, 0).reshape(S, S)
    size_gain = size_gain.reshape(S, S)
    area = surf.mm_per_uv ** 2 / S**2  # mm^2 per layout texel
    dens = dens * (0.8 + 0.4 * rng.random())
    lam = dens * area
    counts = rng.poisson(lam)
    ii, jj = np.nonzero(counts)
    rep = counts[ii, jj]
    ii, jj = np.repeat(ii, rep), np.repeat(jj, rep)
    uv = np.stack([(jj + rng.random(len(jj))) / S, 1 - (ii + rng.random(len(ii))) / S], 1)
    # clustered variation: pores of one patch look alike
    patch = cv2.GaussianBlur(rng.standard_normal((S, S)).astype(np.float32), (0, 0), 6.0)
    patch /= max(float(patch.std()), 1e-6)
    g = size_gain[ii, jj] * np.exp(0.25 * patch[ii, jj])
    diam = np.clip(rng.lognormal(np.log(0.12), 0.3, len(uv)) * g, 0.05, 0.25)
    depth = -np.clip(diam * rng.uniform(0.35, 0.55, len(uv)) * (0.9 + 0.3 * age), 0.02, 0.08)
    b.pores(uv, diam / 2.5, depth)


def _add_fine_lines(b: _Builder, rng: np.random.Generator, surf: _Surface, f: _RegionFields, lm: np.ndarray, age: float) -> None:
    """Fine lines: short random creases, more and deeper with age; radial around the outer eye corners,
    horizontal on forehead and neck."""
    S = LAYOUT_SIZE
    cov = surf.cov.reshape(-1)
    area = surf.mm_per_uv ** 2 / S**2
    n_fine = int((4000 + 4500 * age) * rng.uniform(0.85, 1.15))
    fdens = np.where(cov, (1 + 1.5 * f.w_fore + 0.8 * f.w_lid + 0.6 * f.w_cheek) * (1 - 0.7 * f.w_lip), 0).reshape(S, S)
    fdens = fdens * area
    pidx = rng.choice(S * S, size=n_fine, p=(fdens / fdens.sum()).ravel())
    fi, fj = np.divmod(pidx, S)
    cuv = np.stack([(fj + rng.random(n_fine)) / S, 1 - (fi + rng.random(n_fine)) / S], 1)
    Pc = surf.lookup(surf.pos, cuv).astype(np.float64)
    Jc = surf.lookup(surf.J, cuv).astype(np.float64)
    eu = Jc[:, :, 0] / np.maximum(np.linalg.norm(Jc[:, :, 0], axis=1, keepdims=True), 1e-9)
    nrm = np.cross(Jc[:, :, 0], Jc[:, :, 1])
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-9)
    ev = np.cross(nrm, eu)
    theta = rng.uniform(-np.pi, np.pi, n_fine)
    pref = rng.random(n_fine) < 0.6
    rad = []
    for c in (lm[36], lm[45]):
        d = Pc - c
        rad.append((np.linalg.norm(d, axis=1), np.arctan2(d @ np.array([0, 1.0, 0]), np.abs(d[:, 0]) * np.sign(c[0]))))
    near_eye = np.minimum(rad[0][0], rad[1][0]) < 25
    ang_eye = np.where(rad[0][0] < rad[1][0], rad[0][1], rad[1][1])
    theta = np.where(pref, np.where(near_eye, ang_eye, 0.0) + rng.normal(0, 0.35, n_fine), theta)
    dir3 = np.cos(theta)[:, None] * eu + np.sin(theta)[:, None] * ev
    perp3 = np.cross(nrm, dir3)
    length = rng.uniform(1.5, 6.0, n_fine) * (0.8 + 0.5 * age)
    bend = rng.normal(0, 0.12, n_fine) * length
    f_sigma = rng.uniform(0.03, 0.07, n_fine)
    f_depth = -rng.uniform(0.05, 0.15, n_fine) * (0.7 + 0.3 * age)
    t = np.linspace(-0.5, 0.5, 5)[None, :, None]
    pts = t * length[:, None, None] * dir3[:, None] + (1 - 4 * t**2) * bend[:, None, None] * perp3[:, None]
    duv = surf.tangent_step(np.repeat(cuv, 5, 0), pts.reshape(-1, 3)).reshape(n_fine, 5, 2)
    b.curves(cuv[:, None] + duv, f_sigma, f_depth, _FAMILY["static"], taper=0.4)


def _add_forehead(b: _Builder, rng: np.random.Generator, surf: _Surface, lm: np.ndarray, A: float) -> None:
    """Forehead: 3-6 lines following the brow curve, walked up the forehead's surface from the brows,
    flattening towards the hairline, some broken in two."""
    brow = lm[17:27].copy()
    bx = np.linspace(brow[0, 0] - 4, brow[-1, 0] + 4, 70)
    brow_pts = np.stack([np.interp(bx, brow[:, 0], brow[:, c]) for c in range(3)], 1)
    brow_uv, _ = surf.to_uv(brow_pts)
    n_fore = int(rng.integers(4, 8))
    gap = rng.uniform(5.0, 7.5)
    for k in range(n_fore):
        h = 10.0 + k * gap + rng.normal(0, 1.0)
        flat = min(0.3 + 0.12 * k, 0.85)
        rise = h + flat * (brow_pts[:, 1].max() - brow_pts[:, 1]) + 1.2 * np.sin(bx / rng.uniform(12, 25) + rng.uniform(0, 6))
        span = rng.uniform(0.5, 0.9)
        x0, x1 = rng.uniform(-1, -span) * 55, rng.uniform(span, 1) * 55
        sel = (bx >= x0) & (bx <= x1)
        uv_line = surf.march(brow_uv[sel], _UP, rise[sel])
        pieces = [uv_line] if rng.random() < 0.6 else [uv_line[: len(uv_line) // 2 - 2], uv_line[len(uv_line) // 2 + 2 :]]
        for c in pieces:
            if len(c) > 3:
                b.curve(c, rng.uniform(0.4, 0.65), -A * rng.uniform(0.5, 0.9), _FAMILY["forehead"])


def _add_glabella(b: _Builder, rng: np.random.Generator, lm: np.ndarray, A: float) -> None:
    """Glabella: 1-2 vertical lines each side of the midline between the brows, slightly converging down;
    sometimes a horizontal procerus line across the nose bridge."""
    for s in (-1, 1):
        for k in range(int(rng.integers(1, 3))):
            x = s * (lm[22, 0] - lm[21, 0]) * rng.uniform(0.15, 0.45)
            y0 = lm[27, 1] + rng.uniform(2, 6)
            L = rng.uniform(9, 16)
            p0 = np.array([x, y0, lm[21, 2] + 3])
            p2 = p0 + [s * rng.uniform(1, 4), L, 0]
            p1 = 0.5 * (p0 + p2) + [s * rng.uniform(-1.5, 1.5), 0, 0]
            b.curve3d(_bezier(p0, p1, p2, 25), rng.uniform(0.3, 0.45), -A * rng.uniform(0.25, 0.6), _FAMILY["glabella"],
                      max_dist_mm=12)
    if rng.random() < 0.6:
        p = lm[27] + [0, rng.uniform(-3, 2), 0]
        pts = p + np.linspace(-7, 7, 15)[:, None] * np.array([1.0, 0, 0])
        b.curve3d(pts, 0.35, -A * rng.uniform(0.15, 0.35), _FAMILY["glabella"], max_dist_mm=8)


def _add_crows_feet(b: _Builder, rng: np.random.Generator, lm: np.ndarray, A: float) -> None:
    """Crow's feet: 3-6 lines radiating from each outer eye corner."""
    for corner, s in ((lm[36], -1.0), (lm[45], 1.0)):
        lat = np.array([s, 0.0, -0.7])
        lat /= np.linalg.norm(lat)
        n_cf = int(rng.integers(3, 7))
        angs = np.sort(rng.uniform(-45, 40, n_cf)) + rng.normal(0, 3, n_cf)
        for ang in np.deg2rad(angs):
            d = np.cos(ang) * lat + np.sin(ang) * _UP
            r0, L = rng.uniform(4, 8), rng.uniform(8, 18)
            r = np.linspace(r0, r0 + L, 25)
            curv = rng.normal(0, 0.02)
            pts = corner + r[:, None] * d + (curv * (r - r0) ** 2)[:, None] * _UP
            b.curve3d(pts, rng.uniform(0.22, 0.38), -A * rng.uniform(0.3, 0.65), _FAMILY["crows_feet"], taper=0.35)


def _add_under_eye(b: _Builder, rng: np.random.Generator, lm: np.ndarray, A: float) -> None:
    """Under-eye lines: 1-3 arcs below each lower lid."""
    for idx in ((36, 41, 40, 39), (45, 46, 47, 42)):
        lid = lm[list(idx)]
        for k in range(int(rng.integers(1, 4))):
            off = rng.uniform(4, 11) + 3 * k
            t = np.linspace(-0.15, 1.1, 30)
            base = np.stack([np.interp(t, np.linspace(0, 1, 4), lid[:, c]) for c in range(3)], 1)
            pts = base + np.array([0, -off, 2.0])
            b.curve3d(pts, rng.uniform(0.25, 0.4), -A * rng.uniform(0.12, 0.35), _FAMILY["under_eye"], max_dist_mm=10)


def _add_nasolabial(b: _Builder, rng: np.random.Generator, lm: np.ndarray, A: float, age: float) -> None:
    """Nasolabial folds: from beside the nose wing, bowing out, past the mouth corner; a ridge on the cheek
    side, and with age sometimes a fainter parallel fold."""
    for wing, corner, s in ((lm[31], lm[48], -1.0), (lm[35], lm[54], 1.0)):
        p0 = wing + [s * rng.uniform(3, 6), rng.uniform(1, 4), -2]
        p2 = corner + [s * rng.uniform(5, 10), -rng.uniform(6, 14), -3]
        p1 = 0.5 * (p0 + p2) + [s * rng.uniform(4, 8), 0, 0]
        pts = _bezier(p0, p1, p2, 50)
        sig = rng.uniform(0.9, 1.4)
        dep = A * rng.uniform(0.65, 1.0)
        # orient so that "left of the direction" is the cheek (outer) side
        if s < 0:
            pts = pts[::-1]
        b.curve3d(pts, sig, -dep, _FAMILY["nasolabial"], taper=0.2, max_dist_mm=10)
        b.curve3d(pts, 1.6 * sig, 0.25 * dep, _FAMILY["nasolabial"], taper=0.3, max_dist_mm=10, offset_mm=-2.2 * sig)
        if rng.random() < 0.5 * age:
            b.curve3d(pts + [s * 5, -2, -2], 0.6 * sig, -0.35 * dep, _FAMILY["nasolabial"], taper=0.3, max_dist_mm=10)


def _add_lip_creases(b: _Builder, rng: np.random.Generator, surf: _Surface, lm: np.ndarray, mouth_c: np.ndarray,
                     age: float) -> None:
    """Lip lines (short vertical creases across the vermilion border, radiating from the mouth centre) and
    lip furrows (many fine vertical creases across the red of the lips, deeper when puckering)."""
    n_lip = int(rng.integers(4, 10) + 16 * age)
    outline = np.concatenate([lm[48:60], lm[48:49]])
    seg_len = np.linalg.norm(np.diff(outline, axis=0), axis=1)
    cum = np.concatenate([[0], np.cumsum(seg_len)])
    for k in range(n_lip):
        s_ = rng.uniform(0.06, 0.94) * cum[-1]
        p = np.stack([np.interp(s_, cum, outline[:, c]) for c in range(3)])
        r = p - mouth_c
        r[2] = 0
        r /= max(np.linalg.norm(r), 1e-6)
        if abs(r[0]) > 0.85:  # not at the corners
            continue
        a, L = rng.uniform(1, 3), rng.uniform(2, 7) * (0.6 + 0.6 * age)
        pts = p + np.linspace(-a, L, 12)[:, None] * r + [0, 0, 1.0]
        b.curve3d(pts, rng.uniform(0.08, 0.16), -(0.1 + 0.25 * age) * rng.uniform(0.5, 1.0), _FAMILY["lip_lines"],
                  taper=0.35, max_dist_mm=6)
    n_furrow = int(rng.integers(30, 60))
    s_f = rng.uniform(0.04, 0.96, n_furrow) * cum[-1]
    p_out = np.stack([np.interp(s_f, cum, outline[:, c]) for c in range(3)], 1)
    r = p_out - mouth_c
    r[:, 2] = 0
    dist_c = np.linalg.norm(r, axis=1)
    r /= np.maximum(dist_c, 1e-6)[:, None]
    l_in = rng.uniform(0.4, 0.8, n_furrow) * dist_c
    l_out = rng.uniform(-0.5, 1.0, n_furrow)
    start, fd = surf.to_uv(p_out + l_out[:, None] * r)
    steps = [start]
    for _ in range(7):  # walk inwards over the lip's surface
        steps.append(surf.march(steps[-1], -r, (l_in + l_out) / 7, step_mm=0.5))
    fuv = np.stack(steps, 1)
    ok = (fd < 5) & (np.abs(r[:, 0]) < 0.9) & (l_in + l_out > 1.0)
    b.curves(fuv[ok], rng.uniform(0.05, 0.1, ok.sum()), -rng.uniform(0.03, 0.08, ok.sum()) * (0.8 + 0.5 * age),
             _FAMILY["lip_lines"], taper=0.3)


def _add_neck_lines(b: _Builder, rng: np.random.Generator, surf: _Surface, chin: np.ndarray, A: float) -> None:
    """Neck lines: 2-3 horizontal bands around the front of the neck, walked sideways over its surface."""
    for k in range(int(rng.integers(2, 4))):
        y = chin[1] - rng.uniform(22, 30) - k * rng.uniform(10, 16)
        mid, _ = surf.to_uv(np.array([[0.0, y, chin[2] - 25]]))
        pts = [mid[0]]
        for sgn in (-1.0, 1.0):
            uvp = mid.copy()
            heading = np.array([[sgn, 0.0, 0.0]])
            side_pts = []
            for _ in range(int(rng.uniform(25, 45))):
                uvp = uvp + surf.tangent_step(uvp, heading * 1.5)
                heading = heading + [[0, rng.normal(0, 0.01), 0]]
                side_pts.append(uvp[0])
            pts = (side_pts[::-1] + pts) if sgn < 0 else (pts + side_pts)
        b.curve(np.array(pts), rng.uniform(0.5, 0.9), -A * rng.uniform(0.2, 0.55), _FAMILY["neck"], taper=0.3)


def _add_chin(b: _Builder, rng: np.random.Generator, surf: _Surface, lm: np.ndarray, chin: np.ndarray, A: float) -> None:
    """Chin: the mentolabial crease and mentalis dimpling."""
    p = 0.5 * (lm[57] + chin) + [0, rng.uniform(2, 5), 3]
    pts = p + np.linspace(-1, 1, 20)[:, None] * [rng.uniform(9, 14), 0, 0] + ((np.linspace(-1, 1, 20) ** 2) * 3)[:, None] * _UP
    b.curve3d(pts, rng.uniform(0.6, 1.0), -A * rng.uniform(0.2, 0.45), _FAMILY["chin"], max_dist_mm=10)
    n_dim = int(rng.integers(8, 25))
    dc = chin + [0, 9, 4] + rng.normal(0, 1, (n_dim, 3)) * [7, 4, 0]
    duv, dd = surf.to_uv(dc)
    ok = dd < 10
    sig = rng.uniform(0.5, 1.2, n_dim)[ok]
    b.pores(duv[ok], sig, -A * rng.uniform(0.05, 0.15, ok.sum()), family=_FAMILY["chin"])


def _residual_depths(rng: np.random.Generator, age: float) -> np.ndarray:
    """``[families]`` float32: the share of each wrinkle family left in the neutral face (static detail: 1)."""
    residual = np.array([1.0] + [0.0] * (len(FAMILY_NAMES) - 1), np.float32)
    for name in FAMILY_NAMES[1:]:
        residual[_FAMILY[name]] = np.clip(rng.uniform(0.05, 0.15) + 0.2 * age, 0, 0.6)
    residual[_FAMILY["nasolabial"]] = np.clip(rng.uniform(0.2, 0.35) + 0.25 * age, 0, 0.7)
    residual[_FAMILY["lip_lines"]] = np.clip(0.1 + 0.6 * age, 0, 0.8)
    return residual


def _fade_and_regions(surf: _Surface, f: _RegionFields) -> tuple[np.ndarray, dict]:
    """The fade of the detail towards the tile boundary (in mm on the layout grid) and the layout's regions."""
    import cv2

    S = LAYOUT_SIZE
    dist_px = cv2.distanceTransform(surf.cov.astype(np.uint8), cv2.DIST_L2, 5)
    mmpt = np.where(surf.cov, surf.mm_per_uv / S, np.median(surf.mm_per_uv[surf.cov]) / S)
    fade = _smoothstep((dist_px * mmpt - FADE_MM[0]) / FADE_MM[1]).astype(np.float32)
    regions = {"facial_area": f.facial.reshape(S, S).astype(np.float32),
               "forehead": (f.facial & (f.P[:, 1] > f.brow_y + 8.0) & (np.abs(f.P[:, 0]) < 45)).reshape(S, S).astype(np.float32)}
    return fade, regions


def _skin_relief(rng, surf: _Surface, age: float, w_lip, w_lid, w_nose, w_fore, facial) -> dict:
    """The skin's static relief, drawn in texels of a uniform ~0.14 mm (the face tile holds it to +-20 %):

    * microrelief: a network of furrows about 0.1 mm wide and 0.03-0.07 mm deep bounding plateaus
      0.4-1.2 mm across (the zero lines of two band-pass noises, one isotropic, one stretched along u);
      stored as the noises ``[2, RELIEF_SIZE, RELIEF_SIZE]`` float16 (the furrows are drawn from them
      at the output size, so they stay sharp at 4096) and their depth ``[LAYOUT_SIZE]^2`` mm;
    * cells: V-shaped grooves about 0.1 mm deep between domed plateaus 0.7-1.5 mm across (the coarser
      polygons of the skin's relief), and a mesoscale undulation (7-25 mm wavelengths, 0.06-0.08 mm
      std, less on forehead and nose), together ``coarse [COARSE_SIZE]^2`` mm.

    Cells and furrows are then scaled (by 0.5-2) so that on a 0.3 mm grid the relief tilts the normal
    by a per-identity :data:`RELIEF_TILT_DEG` (+0.8 deg at age 1) on average inside the facial area."""
    import cv2

    R, S = RELIEF_SIZE, LAYOUT_SIZE
    mmpt = float(np.median(surf.mm_per_uv[surf.cov])) / R

    def band(r, lo_mm, hi_mm, sx=1.0, sy=1.0):
        n = rng.standard_normal((r, r), dtype=np.float32)
        lo, hi = lo_mm / mmpt * r / R, hi_mm / mmpt * r / R  # in texels of the r x r raster
        b_ = cv2.GaussianBlur(n, (0, 0), sigmaX=lo * sx, sigmaY=lo * sy) - cv2.GaussianBlur(n, (0, 0), sigmaX=hi * sx, sigmaY=hi * sy)
        return b_ / max(float(b_.std()), 1e-8)

    cell = rng.uniform(0.8, 1.1) * (1 + 0.25 * age)
    noise = np.stack([band(R, 0.16 * cell, 0.3 * cell), band(R, 0.2 * cell, 0.4 * cell, sx=2.2, sy=0.7)]).astype(np.float16)
    calm = 1 - 0.7 * np.maximum(w_lip, 0.6 * w_lid)
    depth = rng.uniform(0.045, 0.06) * (0.9 + 0.4 * age) * calm * (1 - 0.7 * w_nose - 0.1 * w_fore)
    # the coarser cells: V-grooves between domed plateaus 1-2 mm across, at COARSE_SIZE
    C = COARSE_SIZE
    big = rng.uniform(0.9, 1.15) * (1 + 0.2 * age)
    v1 = np.maximum(1 - np.abs(band(C, 0.3 * big, 0.6 * big)) / 1.2, 0) ** 1.5
    v2 = np.maximum(1 - np.abs(band(C, 0.3 * big, 0.6 * big, sx=1.8, sy=0.6)) / 1.2, 0) ** 1.5
    up = lambda f: cv2.resize(np.asarray(f, np.float32), (C, C), interpolation=cv2.INTER_LINEAR)  # noqa: E731
    cell_depth = rng.uniform(0.06, 0.075) * (1.0 + 0.3 * age) * up(calm * (1 - 0.5 * w_nose) * (1 - 0.5 * w_fore))
    und = rng.uniform(0.06, 0.08) * calm * (1 - 0.7 * w_fore) * (1 - 0.5 * w_nose) * band(S, 1.2, 4.0)
    cells = (cell_depth * (v1 + 0.7 * v2)).astype(np.float32)
    und = cv2.resize(und.astype(np.float32), (C, C), interpolation=cv2.INTER_CUBIC)
    # calibrate cells and furrows so that, seen on a 0.3 mm grid, the whole relief tilts the normal by a
    # per-identity target inside the facial area (their slopes otherwise vary with the draw and the head
    # size); the undulation's and theirs add about in quadrature
    target = rng.uniform(*RELIEF_TILT_DEG) + 0.8 * age
    T = 1024
    mmpt = cv2.resize(surf.mm_per_uv, (T, T), interpolation=cv2.INTER_LINEAR) / T
    area = cv2.resize(facial.astype(np.uint8), (T, T), interpolation=cv2.INTER_NEAREST).astype(bool)
    gain = 1.0
    if area.any():
        def seen(rel):
            return float(normal_perturbation_deg(_relief_map(rel, T), mmpt, grid_mm=0.3)[area].mean())

        a_cf = seen({"noise": noise, "furrow_depth": depth.astype(np.float32), "coarse": -cells})
        a_und = seen({"noise": noise, "furrow_depth": np.zeros_like(depth, np.float32), "coarse": und})
        gain = float(np.clip(np.sqrt(max(target**2 - a_und**2, 0.0)) / max(a_cf, 1e-3), 0.5, 3.0))
    coarse = und - gain * cells
    return {"noise": noise, "furrow_depth": (gain * depth).astype(np.float32), "coarse": coarse.astype(np.float32)}


_FURROW_EPS = 0.5  # furrow = (1 - (n / eps)^2)^2 where |n| < eps: about 0.1 mm wide


def _relief_map(relief: dict, size: int) -> np.ndarray:
    """The static relief at ``size`` (``[size, size]`` float32 mm, before the boundary fade)."""
    import cv2

    noise = relief["noise"]
    R = noise.shape[1]
    S_r = max(size, R)
    f = np.zeros((S_r, S_r), np.float32)
    for k, gain in ((0, 1.0), (1, 0.8)):
        n = noise[k].astype(np.float32)
        if S_r != R:
            n = cv2.resize(n, (S_r, S_r), interpolation=cv2.INTER_CUBIC)
        t = cv2.multiply(n, n, scale=-1.0 / _FURROW_EPS**2)
        t = cv2.max(cv2.add(t, 1.0), 0.0)
        f = cv2.scaleAdd(cv2.multiply(t, t), gain, f)
    if S_r != size:
        f = cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA)
    depth = cv2.resize(relief["furrow_depth"], (size, size), interpolation=cv2.INTER_LINEAR)
    coarse = relief["coarse"]
    if coarse.shape[0] != size:
        coarse = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_AREA if size < coarse.shape[0] else cv2.INTER_CUBIC)
    return cv2.subtract(coarse, cv2.multiply(f, depth))


# --------------------------------------------------------------------------------------------- rendering


def family_gains(expression_weights: np.ndarray, expression_names: tuple[str, ...]) -> np.ndarray:
    """``[F, 2]`` activation in [0, 1] of each family on the subject's right (col 0) and left (col 1)."""
    w = np.asarray(expression_weights, dtype=np.float64)
    if w.shape != (len(expression_names),):
        raise ValueError(f"expression_weights must have shape ({len(expression_names)},), got {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("expression_weights contain NaN or inf")
    index = {n: i for i, n in enumerate(expression_names)}
    out = np.zeros((len(FAMILY_NAMES), 2))
    out[0] = 1.0
    for f, name in enumerate(FAMILY_NAMES[1:], start=1):
        for drv, gain in FAMILIES[name].items():
            for col, suffix in ((0, "_R"), (1, "_L")):
                i = index.get(drv + suffix, index.get(drv))
                if i is not None:
                    out[f, col] += gain * max(w[i], 0.0)
    out[1:] = 1.0 - np.exp(-1.6 * out[1:]) / 1.0  # saturating
    out[1:] /= 1.0 - np.exp(-1.6)
    return np.clip(out, 0.0, 1.0)


_SIGMA_MIN = 0.6  # texels: narrower features are drawn at this width, their volume kept
_BINS = np.array([0.6, 0.85, 1.2, 1.7])  # class edges inside a level (texels at that level)


def displacement_map(layout: DetailLayout, model, expression_weights: np.ndarray, size: int,
                     rng: np.random.Generator | None = None) -> np.ndarray:
    """Height ``[size, size]`` float32, mm along the smooth surface's outward normal (negative = into the skin).

    ``expression_weights [53]``: the capture's blend-shape weights (``model.expression_names`` order);
    wrinkle families deepen with their driver shapes. ``rng`` (optional) jitters each family's
    activation by a few percent (two takes of one expression). Zero outside :func:`tile_coverage`."""
    import cv2

    if size < 8:
        raise ValueError(f"size must be >= 8 texels, got {size}")
    g = family_gains(expression_weights, tuple(model.expression_names))
    if rng is not None:
        g[1:] = np.clip(g[1:] * rng.uniform(0.9, 1.1, (len(g) - 1, 1)), 0, 1)
    fam = layout.family.astype(np.intp)
    side = layout.side
    act = g[fam, 0].astype(np.float32) * (1 - side) + g[fam, 1].astype(np.float32) * side
    res = layout.residual[fam]
    depth = layout.depth_mm * (res + (1 - res) * act)
    keep = depth != 0
    f32 = np.float32
    u = layout.uv[keep]
    px = u[:, 0] * f32(size) - f32(0.5)
    py = (f32(1) - u[:, 1]) * f32(size) - f32(0.5)
    sig_t = layout.sigma_uv[keep] * f32(size)
    ds_t = layout.ds_uv[keep] * f32(size)
    depth = depth[keep]
    sig_e = np.maximum(sig_t, f32(_SIGMA_MIN))
    level = np.maximum(np.floor(np.log2(sig_e * f32(1 / _BINS[-1]))) + 1, 0).astype(np.int32)
    scale = np.ldexp(f32(1), -level).astype(np.float32)  # 2^-level
    sig_l = sig_e * scale
    cls = np.clip(np.searchsorted(_BINS.astype(np.float32), sig_l, side="right") - 1, 0, len(_BINS) - 2).astype(np.int32)
    centres = np.sqrt(_BINS[:-1] * _BINS[1:]).astype(np.float32)
    sw = np.minimum(sig_t * scale, centres[cls])  # true width, capped by the class: volume kept when filtered
    is_line = ds_t > 0
    w = np.where(is_line, depth * (ds_t * scale) * f32(np.sqrt(2 * np.pi)) * sw, depth * f32(2 * np.pi) * sw * sw)
    key = level * 4 + cls
    order = np.argsort(key, kind="stable")
    key_sorted = key[order]
    n_levels = int(level.max()) + 1 if len(level) else 1
    k_norm = 1.0 / (1.0 - SHOULDER / np.sqrt(5.0))
    acc = None
    for L in range(n_levels - 1, -1, -1):
        S_L = max(int(np.ceil(size / 2**L)), 1)
        a_sum = None
        for c in range(len(_BINS) - 1):
            lo, hi = np.searchsorted(key_sorted, [L * 4 + c, L * 4 + c + 1])
            if hi <= lo:
                continue
            idx = order[lo:hi]
            sc = f32(2.0**-L)
            img = _splat(S_L, (px[idx] + f32(0.5)) * sc - f32(0.5), (py[idx] + f32(0.5)) * sc - f32(0.5), w[idx])
            a_ = cv2.GaussianBlur(img, (0, 0), float(centres[c]))
            a_sum = a_ if a_sum is None else cv2.add(a_sum, a_)
        out_L = np.zeros((S_L, S_L), np.float32) if a_sum is None else a_sum
        if a_sum is not None:  # raised shoulders: minus a broader copy (one blur per level)
            out_L = cv2.addWeighted(a_sum, k_norm, cv2.GaussianBlur(a_sum, (0, 0), 2.0 * float(centres[1])), -k_norm * SHOULDER, 0)
        if acc is not None:
            out_L += cv2.resize(acc, (S_L, S_L), interpolation=cv2.INTER_CUBIC)
        acc = out_L
    if acc is None:
        acc = np.zeros((size, size), np.float32)
    if acc.shape[0] != size:
        acc = cv2.resize(acc, (size, size), interpolation=cv2.INTER_CUBIC)
    acc += _relief_map(layout.relief, size)
    fade = cv2.resize(layout.fade, (size, size), interpolation=cv2.INTER_LINEAR)
    return cv2.multiply(cv2.multiply(acc, fade), _coverage_f32(size))


def _splat(S: int, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Bilinear splat of weights ``w [N]`` at texel coordinates ``x, y [N]`` (column, row) into ``[S, S]`` float32."""
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx = x - x0
    fy = y - y0
    x0 = x0.astype(np.int32)
    y0 = y0.astype(np.int32)
    # a one-texel border (and everything beyond it, clamped there) is dropped at the end
    W = S + 3
    img = np.zeros(W * W, np.float32)
    base = (np.clip(y0, -1, S) + 1).astype(np.int64) * W + (np.clip(x0, -1, S) + 1)
    wy0 = w * (1 - fy)
    wy1 = w * fy
    np.add.at(img, base, wy0 * (1 - fx))
    np.add.at(img, base + 1, wy0 * fx)
    np.add.at(img, base + W, wy1 * (1 - fx))
    np.add.at(img, base + W + 1, wy1 * fx)
    return img.reshape(W, W)[1 : S + 1, 1 : S + 1].copy()


def region_mask(layout: DetailLayout, name: str, size: int) -> np.ndarray:
    """Bool ``[size, size]``: the layout's ``facial_area`` (inside the jaw outline, landmarks 0-16, closed
    40 mm above the brows; eye and mouth openings excluded) or ``forehead`` region, inside :func:`tile_coverage`."""
    import cv2

    if name not in layout.regions:
        raise KeyError(f"unknown region {name!r}; known: {', '.join(layout.regions)}")
    r = cv2.resize(layout.regions[name], (size, size), interpolation=cv2.INTER_LINEAR)
    return (r > 0.5) & tile_coverage(size)


def tile_mm_per_texel(model, identity_vertices: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``[size, size, 2]`` mm spacing (see :func:`mm_per_texel`) and coverage of the identity's face tile."""
    from mvfr.synthesis import ict

    pos, cov = ict.uv_tile_map(model, identity_vertices, size)
    return mm_per_texel(pos, cov), cov
