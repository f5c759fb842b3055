"""Skin albedo in the template UV, per person, and colours of the head (skin, ears, neck, hair).

Base: ``predefine_data/astronaut_albedo_uv.png``, the public-domain NASA portrait
``skimage.data.astronaut()`` (Eileen Collins) warped triangle by triangle into the template UV
through its 468 MediaPipe landmarks (:func:`make_astronaut_albedo` regenerates it). Each person
keeps only its *relative* detail (eyes, brows, lips, nostrils), re-toned to the person's skin colour,
with procedural blotches, freckles and pores added; the face blends to the plain skin tone at its
boundary so it joins the head.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from mvfr.synthesis.v1.detail import _bandpass_noise, _blurred, face_regions, uv_to_pix
from mvfr.synthesis.v1.shape import LIPS_INNER_CORNERS, LIPS_INNER_LOWER, LIPS_INNER_UPPER, HeadParams, hair_weight
from mvfr.template import PREDEFINE_DIR, load_canonical_face

ASTRONAUT_ALBEDO_PNG = PREDEFINE_DIR / "astronaut_albedo_uv.png"
ASTRONAUT_UV_SIZE = 512

# sRGB skin tones from light to dark; a person draws a point along this scale
SKIN_TONES = np.array([[236, 200, 178], [224, 172, 140], [198, 140, 105], [160, 108, 74], [110, 72, 48]]) / 255.0
HAIR_COLORS = np.array([[30, 22, 18], [60, 40, 28], [110, 75, 45], [180, 140, 90], [130, 125, 120], [20, 18, 18]]) / 255.0


def srgb_to_linear(c):
    return np.asarray(c, dtype=np.float64) ** 2.2


def make_astronaut_albedo(path: str | Path = ASTRONAUT_ALBEDO_PNG, size: int = ASTRONAUT_UV_SIZE) -> np.ndarray:
    """Warp ``skimage.data.astronaut()`` into the template UV through its detected landmarks; write ``path``.

    Returns the RGB uint8 ``[size, size, 3]`` map (outside the template: inpainted).
    """
    import cv2
    import skimage.data

    from mvfr.atomic_io import save_image
    from mvfr.landmarks import FaceLandmarkDetector
    from mvfr.render import Renderer

    photo = skimage.data.astronaut()
    with FaceLandmarkDetector() as det:
        lm, _ = det.detect(photo)
    if lm is None:
        raise RuntimeError("the landmark detector found no face in skimage.data.astronaut()")
    t = load_canonical_face()
    r = Renderer(samples=0)
    try:
        src, covered = r.render_uv(t.uvs, t.faces, lm, size)
    finally:
        r.release()
    out = cv2.remap(photo, src[..., 0].astype(np.float32), src[..., 1].astype(np.float32), cv2.INTER_CUBIC,
                    borderMode=cv2.BORDER_REPLICATE)
    out = cv2.inpaint(out, (~covered).astype(np.uint8), 5, cv2.INPAINT_TELEA)
    save_image(path, out)
    return out


@functools.lru_cache(maxsize=2)
def base_albedo(size: int) -> np.ndarray:
    """The astronaut UV albedo as linear RGB float32 ``[size, size, 3]`` (made on first use if missing)."""
    import cv2

    from mvfr.atomic_io import load_image

    img = load_image(ASTRONAUT_ALBEDO_PNG) if ASTRONAUT_ALBEDO_PNG.is_file() else make_astronaut_albedo()
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_CUBIC if size > img.shape[0] else cv2.INTER_AREA)
    return srgb_to_linear(img / 255.0).astype(np.float32)


@functools.lru_cache(maxsize=4)
def mouth_interior_mask(size: int) -> np.ndarray:
    """UV mask [S, S] bool of the triangles closing the mouth (between the inner lips)."""
    import cv2

    t = load_canonical_face()
    inner = set(LIPS_INNER_UPPER + LIPS_INNER_LOWER + LIPS_INNER_CORNERS)
    tri = [f for f in t.faces if all(int(v) in inner for v in f)]
    mask = np.zeros((size, size), np.uint8)
    pix = uv_to_pix(t.uvs, size)
    cv2.fillPoly(mask, [np.round(pix[f] * 16).astype(np.int32) for f in tri], 1, shift=4)
    return mask.astype(bool)


def sample_skin(rng: np.random.Generator) -> dict:
    """Appearance parameters of one person (linear RGB)."""
    x = rng.uniform(0, len(SKIN_TONES) - 1)
    i = min(int(x), len(SKIN_TONES) - 2)
    tone = SKIN_TONES[i] * (1 - (x - i)) + SKIN_TONES[i + 1] * (x - i)
    tone = tone * (1 + rng.uniform(-0.04, 0.04, 3))
    return {
        "tone": srgb_to_linear(np.clip(tone, 0, 1)),
        "hair": srgb_to_linear(HAIR_COLORS[rng.integers(len(HAIR_COLORS))] * rng.uniform(0.85, 1.15)),
        "freckles": float(rng.uniform(0, 1) ** 2 * (x < 2.5)),
        "redness": float(rng.uniform(0.0, 0.25)),
        "lip_tint": srgb_to_linear(np.clip(np.array([0.75, 0.42, 0.42]) * rng.uniform(0.8, 1.1, 3), 0, 1)),
        "contrast": float(rng.uniform(0.8, 1.1)),
    }


def face_albedo(skin: dict, size: int, rng: np.random.Generator) -> np.ndarray:
    """Per-person UV albedo ``[size, size, 3]`` uint8 sRGB."""
    import cv2

    base = base_albedo(size)
    reg = face_regions(size)
    cover = reg["cover"] & (reg["inside"] > 0.5)
    lum = base.mean(-1, keepdims=True)
    local = cv2.GaussianBlur(lum, (0, 0), size * 0.035)[..., None]
    chroma = base / np.maximum(lum, 1e-4)
    chroma = chroma / np.median(chroma[cover], axis=0)  # colour relative to the typical skin colour
    ratio = (lum / np.maximum(local, 1e-4)) ** skin["contrast"] * chroma**0.6
    ratio = np.clip(ratio, 0.02, 2.0)
    tone = np.asarray(skin["tone"], np.float32)
    alb = tone * ratio
    # lips: push the lip colour
    lips = _blurred(reg["lips"], size * 0.006)[..., None]
    alb = alb * (1 - 0.5 * lips) + 0.5 * lips * np.asarray(skin["lip_tint"], np.float32) * ratio
    # low-frequency tone variation and redness (cheeks, nose)
    blotch = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), size * 0.03)
    blotch /= max(float(blotch.std()), 1e-6)
    t = load_canonical_face()
    red = np.zeros((size, size), np.float32)
    for lm in (50, 280, 4):
        c = uv_to_pix(t.uvs[lm], size)
        yy, xx = np.mgrid[:size, :size]
        red += np.exp(-(((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / (2 * (size * 0.06) ** 2))).astype(np.float32)
    redden = 1 + skin["redness"] * red[..., None] * np.array([0.15, -0.12, -0.12], np.float32)
    alb = alb * (1 + 0.06 * blotch[..., None]) * redden
    # freckles: small dark brown dots, denser on nose and cheeks
    if skin["freckles"] > 0.05:
        n = int(skin["freckles"] * 1500)
        pts = rng.uniform(0, size, (n, 2))
        keep = red[np.clip(pts[:, 1].astype(int), 0, size - 1), np.clip(pts[:, 0].astype(int), 0, size - 1)] > rng.uniform(0.1, 1, n)
        fmap = np.zeros((size, size), np.float32)
        for x, y in pts[keep]:
            cv2.circle(fmap, (int(x), int(y)), max(1, int(size * rng.uniform(0.001, 0.0025))), float(rng.uniform(0.5, 1)), -1)
        fmap = cv2.GaussianBlur(fmap, (0, 0), size * 0.0008 + 0.3)
        alb = alb * (1 - 0.35 * fmap[..., None] * np.array([0.8, 1.0, 1.1], np.float32))
    # pores / fine texture
    pores = _bandpass_noise(rng, size, 0.6 * size / 1024, 2.0 * size / 1024)
    alb = alb * (1 + 0.05 * pores[..., None])
    # mouth interior (visible when the mouth opens): dark red
    mouth = _blurred(mouth_interior_mask(size), size * 0.002)[..., None]
    alb = alb * (1 - mouth) + mouth * np.array([0.08, 0.02, 0.02], np.float32)
    # fade to the plain tone at the face boundary
    v = 1 - (np.arange(size) + 0.5) / size  # uv v of each texel row
    top = np.clip((t.uvs[10, 1] - 0.02 - v) / 0.07, 0, 1)[:, None]  # the photo's hair above the forehead
    w = (reg["inside"] * top * top * (3 - 2 * top)).astype(np.float32)[..., None]
    alb = alb * w + tone * (1 - w)
    return np.clip(np.clip(alb, 0, 1) ** (1 / 2.2) * 255 + 0.5, 0, 255).astype(np.uint8)


def head_colors(dirs: np.ndarray, points: np.ndarray, skin: dict, head: HeadParams, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Linear RGB [N, 3] and specular weight [N] of head vertices (unit ``dirs`` from the head centre, ``points`` mm)."""
    tone = np.asarray(skin["tone"])
    hw = hair_weight(dirs, head)[:, None]
    # hair strands: sinusoids across the strand direction (strands run from the crown down and back)
    n = np.zeros(len(points))
    for _ in range(10):
        k = rng.normal(0, 1, 3)
        k /= np.linalg.norm(k)
        n += np.sin(points @ k * rng.uniform(0.8, 2.5) + rng.uniform(0, 6.3))
    n /= np.sqrt(10 / 2)
    hair = np.asarray(skin["hair"]) * (1 + 0.25 * np.tanh(n))[:, None]
    ear = np.exp(-0.5 * ((np.abs(np.arctan2(dirs[:, 0], dirs[:, 2])) - np.deg2rad(100)) / 0.25) ** 2)[:, None]
    skin_c = tone * (1 + ear * np.array([0.08, -0.05, -0.05]))
    colors = skin_c * (1 - hw) + hair * hw
    spec = (1 - hw[:, 0]) * 0.8 + hw[:, 0] * 0.35
    return colors, spec
