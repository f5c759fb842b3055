"""Mesoscopic detail: a displacement map in the template UV (forehead lines, frown lines, crow's feet,
under-eye lines, nasolabial folds, pores).

The map is ``[S, S]`` float32 in **millimetres**, positive outwards, along the normal of the smooth
(Loop-subdivided) face surface; texel (row i, col j) has uv = ((j + .5) / S, 1 - (i + .5) / S)
(DESIGN §3). It fades to exactly zero at the face boundary, so the face joins the head smoothly.
Amplitudes: pores about 0.02-0.06 mm, wrinkles 0.05-0.5 mm (grow with the person's age and with
expressions that fold the skin: smiles deepen crow's feet and nasolabial folds, raised brows deepen
forehead lines, lowered brows the frown lines).
"""

from __future__ import annotations

import functools

import numpy as np

from mvfr.synthesis.v1.shape import LEFT_EYE, RIGHT_EYE
from mvfr.template import load_canonical_face

UV_MM = 150.0  # about how many mm one unit of template uv spans on a face
LIPS_OUTER = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185]

# expression -> gains of (forehead, frown, crow's feet, nasolabial)
EXPRESSION_DETAIL = {
    "neutral": (1.0, 1.0, 1.0, 1.0), "smile": (1.0, 0.8, 1.7, 1.7), "grin": (1.0, 0.8, 1.9, 1.9),
    "mouth_stretch": (1.1, 1.0, 1.2, 1.4), "brow_raiser": (2.2, 0.5, 1.0, 1.0), "brow_lower": (0.4, 2.5, 1.2, 1.0),
    "anger": (0.5, 2.5, 1.2, 1.1), "eye_closed": (0.8, 1.2, 1.6, 1.0), "sadness": (1.5, 1.5, 1.0, 0.9),
    "cheek_blowing": (1.0, 1.0, 1.0, 0.4),
}


def uv_to_pix(uv: np.ndarray, size: int) -> np.ndarray:
    """uv [..., 2] -> continuous texel coordinates (x = col, y = row)."""
    uv = np.asarray(uv, dtype=np.float64)
    return np.stack([uv[..., 0] * size - 0.5, (1 - uv[..., 1]) * size - 0.5], -1)


@functools.lru_cache(maxsize=4)
def face_regions(size: int) -> dict[str, np.ndarray]:
    """UV masks of the template at ``size``: ``cover`` (any triangle), ``eyes``, ``lips``, and ``inside``:
    a weight [0, 1] that is 0 at the face boundary and 1 from about 12 mm inside it."""
    import cv2

    t = load_canonical_face()
    pix = uv_to_pix(t.uvs, size)
    cover = np.zeros((size, size), np.uint8)
    tri = np.round(pix[t.faces] * 16).astype(np.int32)
    cv2.fillPoly(cover, list(tri), 1, lineType=cv2.LINE_8, shift=4)
    eyes = np.zeros_like(cover)
    for idx in (RIGHT_EYE, LEFT_EYE):
        cv2.fillPoly(eyes, [np.round(pix[idx] * 16).astype(np.int32)], 1, shift=4)
    lips = np.zeros_like(cover)
    cv2.fillPoly(lips, [np.round(pix[LIPS_OUTER] * 16).astype(np.int32)], 1, shift=4)
    dist = cv2.distanceTransform(cover, cv2.DIST_L2, 5) / size * UV_MM  # mm to the boundary
    x = np.clip(dist / 12.0, 0, 1)
    inside = x * x * (3 - 2 * x)
    return {"cover": cover.astype(bool), "eyes": eyes.astype(bool), "lips": lips.astype(bool), "inside": inside}


def _blurred(mask: np.ndarray, sigma_px: float) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma_px)


def _bandpass_noise(rng: np.random.Generator, size: int, lo_px: float, hi_px: float) -> np.ndarray:
    import cv2

    n = rng.standard_normal((size, size)).astype(np.float32)
    b = cv2.GaussianBlur(n, (0, 0), lo_px) - cv2.GaussianBlur(n, (0, 0), hi_px)
    return b / max(float(b.std()), 1e-8)


def _curve_groove(out: np.ndarray, pts_uv: np.ndarray, depth: np.ndarray, width_mm: float, ridge: float = 0.0) -> None:
    """Add a groove along the polyline ``pts_uv [P, 2]`` (uv) with per-point ``depth [P]`` mm (in place).

    Gaussian profile of ``width_mm`` (std); ``ridge`` > 0 adds a raised shoulder on the left of the curve.
    """
    size = out.shape[0]
    pix = uv_to_pix(pts_uv, size)
    w = width_mm / UV_MM * size
    pad = int(4 * w + 3)
    x0, y0 = np.floor(pix.min(0)).astype(int) - pad
    x1, y1 = np.ceil(pix.max(0)).astype(int) + pad
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, size - 1), min(y1, size - 1)
    if x1 <= x0 or y1 <= y0:
        return
    from scipy.spatial import cKDTree

    ys, xs = np.mgrid[y0 : y1 + 1, x0 : x1 + 1]
    q = np.stack([xs, ys], -1).reshape(-1, 2).astype(np.float64)
    # densify the polyline (0.3 texel spacing); nearest dense point ~ nearest curve point
    seg = np.linalg.norm(np.diff(pix, axis=0), axis=1)
    s_cum = np.concatenate([[0], np.cumsum(seg)])
    s_new = np.linspace(0, s_cum[-1], max(int(s_cum[-1] / 0.3), 2))
    dense = np.stack([np.interp(s_new, s_cum, pix[:, 0]), np.interp(s_new, s_cum, pix[:, 1])], 1)
    dense_depth = np.interp(s_new, s_cum, depth)
    tangent = np.gradient(dense, axis=0)
    dist, k = cKDTree(dense).query(q)
    dep = dense_depth[k]
    rel = q - dense[k]
    side = np.sign(tangent[k, 0] * rel[:, 1] - tangent[k, 1] * rel[:, 0])
    g = -dep * np.exp(-0.5 * (dist / w) ** 2)
    if ridge:
        g += ridge * dep * np.exp(-0.5 * ((dist - 2.5 * w) / (1.5 * w)) ** 2) * (side > 0)
    out[y0 : y1 + 1, x0 : x1 + 1] += g.reshape(ys.shape).astype(np.float32)


def _bezier(p0, p1, p2, n=40) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def detail_map(size: int, age: float, expression: str, rng: np.random.Generator) -> np.ndarray:
    """Mesoscopic displacement ``[size, size]`` float32 mm for a person of ``age`` (0..1) and ``expression``."""
    uv = load_canonical_face().uvs
    reg = face_regions(size)
    g_fore, g_frown, g_crow, g_naso = EXPRESSION_DETAIL.get(expression, (1.0, 1.0, 1.0, 1.0))
    out = np.zeros((size, size), np.float32)
    a = 0.35 + 0.65 * age

    # forehead lines: 3-5 horizontal grooves between the brows and the top of the forehead
    v_lo, v_hi = uv[105, 1] + 0.035, uv[10, 1] - 0.03
    n_lines = int(rng.integers(3, 6))
    for k in range(n_lines):
        v = v_lo + (v_hi - v_lo) * (k + 0.5 + rng.uniform(-0.2, 0.2)) / n_lines
        half = rng.uniform(0.12, 0.2)
        u = np.linspace(0.5 - half, 0.5 + half, 50) + rng.uniform(-0.02, 0.02)
        vv = v + rng.uniform(0.05, 0.25) * (u - 0.5) ** 2 + 0.004 * np.sin(u * rng.uniform(20, 40) + rng.uniform(0, 6))
        depth = a * g_fore * rng.uniform(0.08, 0.22) * np.sin(np.linspace(0, np.pi, 50)) ** 0.7
        _curve_groove(out, np.stack([u, vv], 1), depth, width_mm=rng.uniform(0.5, 0.8))
    # frown lines: two short vertical grooves between the brows
    for s in (-1, 1):
        u0 = 0.5 + s * rng.uniform(0.015, 0.03)
        pts = np.array([[u0, uv[168, 1] + 0.005], [u0 + s * 0.006, uv[168, 1] + 0.07]])
        pts = _bezier(pts[0], pts.mean(0) + [s * 0.004, 0], pts[1], 20)
        depth = a * g_frown * rng.uniform(0.04, 0.12) * np.sin(np.linspace(0.2, np.pi - 0.2, 20))
        _curve_groove(out, pts, depth, width_mm=0.5)
    # crow's feet: fans of grooves from the outer eye corners
    for lm, s in ((33, -1), (263, 1)):
        c = uv[lm]
        for ang in np.deg2rad(np.linspace(-40, 35, int(rng.integers(3, 6))) + rng.uniform(-6, 6)):
            d = np.array([s * np.cos(ang), np.sin(ang)])
            r0, r1 = rng.uniform(0.02, 0.03), rng.uniform(0.055, 0.08)
            pts = c + np.linspace(r0, r1, 20)[:, None] * d + 0.003 * np.sin(np.linspace(0, 3, 20))[:, None] * d[::-1]
            depth = a * g_crow * rng.uniform(0.05, 0.16) * np.sin(np.linspace(0, np.pi, 20)) ** 0.6
            _curve_groove(out, pts, depth, width_mm=0.45)
    # under-eye lines
    for lm, s in ((145, -1), (374, 1)):
        c = uv[lm] + np.array([s * 0.005, -0.035])
        u = np.linspace(-0.045, 0.045, 25)
        pts = c + np.stack([u, 0.6 * u**2 / 0.045 + 0.0 * u], 1) * np.array([1, 0.3])
        depth = a * rng.uniform(0.03, 0.1) * np.sin(np.linspace(0, np.pi, 25))
        _curve_groove(out, pts, depth, width_mm=0.6)
    # nasolabial folds: from beside the nose wing to beside the mouth corner, groove plus cheek ridge
    for wing, corner, s in ((48, 61, -1), (278, 291, 1)):
        p0 = uv[wing] + np.array([s * 0.02, 0.01])
        p2 = uv[corner] + np.array([s * 0.035, -0.035])
        p1 = 0.5 * (p0 + p2) + np.array([s * 0.03, 0.0])
        pts = _bezier(p0, p1, p2)
        depth = (0.1 + 0.25 * age) * g_naso * rng.uniform(0.6, 1.0) * np.sin(np.linspace(0.1, np.pi, len(pts))) ** 0.5
        if s > 0:  # orient the curve so that the ridge lands on the cheek side
            pts = pts[::-1].copy()
            depth = depth[::-1].copy()
        _curve_groove(out, pts, depth, width_mm=rng.uniform(1.0, 1.6), ridge=0.5)
    # pores and fine skin texture
    pores = _bandpass_noise(rng, size, 0.7 * size / 1024, 2.5 * size / 1024)
    pore_amp = rng.uniform(0.02, 0.045) * (0.8 + 0.4 * age)
    fine = _bandpass_noise(rng, size, 3 * size / 1024, 12 * size / 1024)
    out += (pore_amp * pores + 0.015 * fine).astype(np.float32)
    # keep detail off the eyes and lips, and fade to zero at the face boundary
    calm = 1 - np.clip(_blurred(reg["eyes"], 6 * size / 1024) * 1.5, 0, 1)
    calm *= 1 - 0.7 * np.clip(_blurred(reg["lips"], 4 * size / 1024) * 1.5, 0, 1)
    return (out * calm * reg["inside"]).astype(np.float32)


def sample_map(map_: np.ndarray, uvs: np.ndarray) -> np.ndarray:
    """Bilinear sample of ``map_ [S, S, ...]`` at ``uvs [N, 2]`` (border values outside) -> [N, ...]."""
    import cv2

    size = map_.shape[0]
    n = len(uvs)
    cols = 512  # cv2.remap needs maps smaller than 32767 in each dimension
    rows = max(1, -(-n // cols))
    pix = np.zeros((rows * cols, 2), np.float32)
    pix[:n] = uv_to_pix(uvs, size)
    m = np.ascontiguousarray(map_, dtype=np.float32)
    out = cv2.remap(m, pix[:, 0].reshape(rows, cols), pix[:, 1].reshape(rows, cols), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REPLICATE)
    return out.reshape((rows * cols,) + map_.shape[2:])[:n]
