"""Procedural skin, hair and eye appearance of an ICT head: albedo and specular textures, part colours.

Per identity, :func:`sample_skin` draws a :class:`SkinParams` (deterministic for a
``numpy.random.Generator``); the texture functions turn it into maps in the ICT model's UV tiles:

* :func:`face_albedo` / :func:`head_albedo`: ``uint8 [S, S, 3]`` sRGB of tile 0 (the face area: face,
  ears, front of the neck) and tile 1 (head and neck, shared with the mouth socket and eye sockets);
* :func:`face_specular` / :func:`head_specular`: ``float32 [S, S]`` specular weight in [0, 1];
* :func:`part_colors`: per-vertex linear RGB and specular weight of the non-skin parts (eyeballs with
  sclera, iris and pupil, teeth, gums and tongue, mouth socket, eye sockets, eyelashes);
* :func:`cavity_shade`: darkens a linear albedo where a displacement map is concave (pores, wrinkle
  valleys); a pure function of the two maps.

Colour model. Skin is a two-layer chromophore model in linear RGB,
``albedo_c = SURFACE + BASE_c * exp(-(M * K_MELANIN_c + H * K_HAEMOGLOBIN_c + C * K_CAROTENE_c))``:
``M`` epidermal melanin, ``H`` dermal blood, ``C`` carotene; ``SURFACE`` is the grey light returned
by the skin's surface layers (why very dark skin is less saturated than medium skin). The skin type is
drawn uniformly over Fitzpatrick I-VI and the melanin solved so that the base colour's individual
typology angle (ITA = atan((L* - 50) / b*), CIELAB, D65) falls in that type's band
(:data:`ITA_BANDS`: I > 55 deg ... VI < -30 deg). Regional colour changes the chromophores, so it
stays plausible for every tone: lips (less melanin, much more blood, a soft vermilion border), cheeks,
nose and ears (blood), under-eye (melanin and a violet shadow), freckles and moles (melanin), brows and
stubble (hair strokes in the hair colour), the hair cap above the hairline (strand-like noise).

Placement. Every region is a function of the 3D position of the model's *neutral* head, rasterised
into each tile (:func:`mvfr.synthesis.ict.uv_tile_map`), and every seam-crossing random field
(mottling, hairline, beard patches, specular oiliness) is a random Fourier field of that 3D position
drawn from ``SkinParams.seed``; so the face and head tiles agree across their seam whatever ``rng``
the texture functions are given. ``rng`` only drives texel-level noise (pore-scale albedo variation,
hair strands, freckle and mole placement).

Scales. Lengths are in mm. The face tile has about 0.14 mm per texel at S = 2048 (``mm_per_uv`` is
measured from the position map); noise is generated per octave at the resolution its size needs and
upsampled (cv2), and octaves finer than a texel are attenuated (what a texture of that resolution
would hold), so a 256 map is a blurred 4096 map. Pore-scale albedo variation spans 0.05-0.25 mm.

Texel convention (DESIGN section 3): row 0 is v near 1; texel (i, j) has its centre at
uv = ((j + 0.5) / S + tile, 1 - (i + 0.5) / S).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from mvfr.synthesis import ict

# chromophore model (linear RGB), see the module docstring
SURFACE = 0.03
BASE = np.array([0.80, 0.66, 0.57])
K_MELANIN = np.array([1.0, 1.35, 1.7])
K_HAEMOGLOBIN = np.array([0.04, 0.46, 0.44])
K_CAROTENE = np.array([0.0, 0.06, 0.40])
ITA_BANDS = {1: (55.0, 66.0), 2: (41.0, 55.0), 3: (28.0, 41.0), 4: (10.0, 28.0), 5: (-30.0, 10.0), 6: (-62.0, -30.0)}

REGION_RES = 256  # resolution of the smooth regional fields (distances to eyes, nose, lips ...)
BASE_RES = 1024  # most the chromophore composite is evaluated at (0.28 mm per texel on the face tile)
HAIR_RES = 2048  # most hair strokes (brows, stubble, scalp strands) are drawn at
HEAD_TILE_PARTS = ("head", "mouth_socket", "eye_socket_left", "eye_socket_right")

IRIS_COLORS = {  # linear RGB of the iris stroma (mid radius)
    "dark_brown": (0.045, 0.022, 0.011), "brown": (0.10, 0.048, 0.020), "amber": (0.20, 0.10, 0.030),
    "hazel": (0.12, 0.085, 0.036), "green": (0.075, 0.10, 0.05), "blue": (0.06, 0.10, 0.17),
    "grey": (0.10, 0.115, 0.13),
}
HAIR_COLORS = {  # linear RGB
    "black": (0.014, 0.011, 0.009), "dark_brown": (0.032, 0.020, 0.012), "brown": (0.075, 0.045, 0.024),
    "light_brown": (0.16, 0.10, 0.052), "blonde": (0.36, 0.26, 0.13), "auburn": (0.10, 0.036, 0.016),
    "grey": (0.28, 0.27, 0.26),
}


# ----------------------------------------------------------------------------- colour helpers

def srgb_to_linear(img: np.ndarray) -> np.ndarray:
    """sRGB (``uint8`` 0-255, or float in [0, 1]) -> linear ``float32``, same shape."""
    if np.asarray(img).dtype == np.uint8:
        c = np.arange(256, dtype=np.float64) / 255.0
        lut = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)
        return lut[img]
    c = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(lin: np.ndarray) -> np.ndarray:
    """Linear RGB -> sRGB float32 in [0, 1] (clipped)."""
    c = np.clip(np.asarray(lin, dtype=np.float32), 0.0, 1.0)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * np.power(c, 1 / 2.4) - 0.055).astype(np.float32)


def linear_to_lab(lin: np.ndarray) -> np.ndarray:
    """Linear RGB ``[..., 3]`` -> CIELAB ``[..., 3]`` (D65 white)."""
    M = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = np.asarray(lin, dtype=np.float64) @ M.T / (M @ np.ones(3))
    d = 6 / 29
    f = np.where(xyz > d**3, np.cbrt(np.maximum(xyz, 0)), xyz / (3 * d * d) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def ita_deg(lin: np.ndarray) -> np.ndarray:
    """Individual typology angle (deg) of linear RGB colours ``[..., 3]``: atan((L* - 50) / b*)."""
    lab = linear_to_lab(lin)
    return np.degrees(np.arctan2(lab[..., 0] - 50.0, lab[..., 2]))


def chromophore_albedo(melanin, haemoglobin, carotene=0.0) -> np.ndarray:
    """Linear RGB ``[..., 3]`` of the chromophore model for broadcastable concentrations."""
    m = np.asarray(melanin, dtype=np.float32)[..., None]
    h = np.asarray(haemoglobin, dtype=np.float32)[..., None]
    c = np.asarray(carotene, dtype=np.float32)[..., None]
    od = m * K_MELANIN.astype(np.float32) + h * K_HAEMOGLOBIN.astype(np.float32) + c * K_CAROTENE.astype(np.float32)
    return (SURFACE + BASE.astype(np.float32) * np.exp(-od)).astype(np.float32)


def _melanin_for_ita(ita: float, haemoglobin: float, carotene: float) -> float:
    grid = np.linspace(0.0, 4.0, 801)
    it = ita_deg(chromophore_albedo(grid, haemoglobin, carotene))  # decreasing in melanin
    return float(np.interp(-ita, -it, grid))


# ----------------------------------------------------------------------------- parameters

@dataclasses.dataclass(frozen=True)
class SkinParams:
    """One identity's appearance. Colours are linear RGB; lengths in mm; weights in [0, 1] unless noted."""

    seed: int  # drives every 3D (seam-consistent) random field of the textures
    fitzpatrick: int  # 1..6
    ita: float  # deg, of the base colour
    melanin: float  # epidermal melanin (optical density units of the model)
    haemoglobin: float
    carotene: float
    lip_melanin: float  # lip melanin as a fraction of the skin's
    lip_haemoglobin: float  # blood added in the lips
    cheek_redness: float  # blood added at the cheek centre
    nose_redness: float
    under_eye: float  # under-eye darkening
    mottling: float  # std of the low-frequency (5-60 mm) chromophore variation (log melanin)
    fine_variation: float  # std of the pore-scale (0.05-2 mm) albedo variation (fraction)
    brow_color: tuple  # linear RGB
    brow_density: float
    brow_thickness_mm: float  # at the brow's medial part
    beard: float  # stubble / beard shadow strength (0 = none)
    freckles: float  # freckles per cm^2 in the freckle zone (nose, cheeks)
    moles: int
    hair_color: tuple
    hair_name: str
    hairline_mm: float  # front hairline height above the brows (vertical)
    receding: float  # temple recession (0 none .. 1 strong)
    sideburn_mm: float  # how far the sideburns reach below the eyes' height
    oiliness: float  # T-zone specular level
    iris_color: tuple
    iris_name: str
    sclera_tint: tuple  # linear RGB of the sclera

    @property
    def base_rgb(self) -> np.ndarray:
        """Linear RGB of the base (unmodified) skin colour."""
        return chromophore_albedo(self.melanin, self.haemoglobin, self.carotene)

    @property
    def lip_rgb(self) -> np.ndarray:
        """Linear RGB of the lips' centre."""
        return chromophore_albedo(self.melanin * self.lip_melanin, self.haemoglobin + self.lip_haemoglobin, 0.0)


def _pick(rng, weights: dict) -> str:
    names = list(weights)
    p = np.array([weights[n] for n in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def sample_skin(rng: np.random.Generator) -> SkinParams:
    """Draw one identity's appearance (skin type uniform over Fitzpatrick I-VI)."""
    ftype = int(rng.integers(1, 7))
    lo, hi = ITA_BANDS[ftype]
    ita = float(rng.uniform(lo, hi))
    light = (6 - ftype) / 5.0  # 1 for type I, 0 for type VI
    hb = float(rng.uniform(0.25, 0.55) + 0.1 * light)
    car = float(rng.uniform(0.0, 0.35))
    mel = _melanin_for_ita(ita, hb, car)
    male = bool(rng.random() < 0.4)
    # hair: dark for dark skin, any colour for light skin
    hair_w = {"black": 0.2 + 0.8 * (1 - light), "dark_brown": 0.35, "brown": 0.3 * light + 0.05,
              "light_brown": 0.25 * light, "blonde": 0.2 * light**2, "auburn": 0.08 * light**2, "grey": 0.06}
    hair_name = _pick(rng, hair_w)
    hair = np.array(HAIR_COLORS[hair_name]) * rng.uniform(0.8, 1.2)
    brow = hair * rng.uniform(0.6, 0.95) if hair_name not in ("black",) else hair
    iris_w = {"dark_brown": 0.25 + 0.75 * (1 - light), "brown": 0.35, "amber": 0.04 + 0.04 * light,
              "hazel": 0.15 * light, "green": 0.12 * light**1.5, "blue": 0.35 * light**2, "grey": 0.08 * light**2}
    iris_name = _pick(rng, iris_w)
    iris = np.array(IRIS_COLORS[iris_name]) * rng.uniform(0.8, 1.2, 3) ** 0.5
    sclera = np.array([0.70, 0.64, 0.59]) * rng.uniform(0.85, 1.05) * rng.uniform(0.97, 1.03, 3)
    return SkinParams(
        seed=int(rng.integers(0, 2**31 - 1)), fitzpatrick=ftype, ita=ita, melanin=mel, haemoglobin=hb, carotene=car,
        lip_melanin=float(rng.uniform(0.45, 0.75) + 0.2 * (1 - light)),
        lip_haemoglobin=float(rng.uniform(0.85, 1.45)),
        cheek_redness=float(rng.uniform(0.05, 0.45) * (0.4 + 0.6 * light)),
        nose_redness=float(rng.uniform(0.05, 0.4) * (0.4 + 0.6 * light)),
        under_eye=float(rng.uniform(0.1, 0.6)), mottling=float(rng.uniform(0.03, 0.08)),
        fine_variation=float(rng.uniform(0.045, 0.08)),
        brow_color=tuple(float(c) for c in brow), brow_density=float(rng.uniform(0.55, 1.0) * (1.0 if male else 0.85)),
        brow_thickness_mm=float(rng.uniform(8.0, 12.0) if male else rng.uniform(6.0, 10.0)),
        beard=float(rng.uniform(0.25, 1.0)) if male else 0.0,
        freckles=float(rng.choice([0.0, rng.uniform(0.5, 8.0)], p=[1 - 0.6 * light**2, 0.6 * light**2])),
        moles=int(rng.poisson(1.0 + 3.0 * light)),
        hair_color=tuple(float(c) for c in hair), hair_name=hair_name,
        hairline_mm=float(rng.uniform(38.0, 50.0) + (rng.uniform(0, 18) if male and rng.random() < 0.35 else 0.0)),
        receding=float(rng.uniform(0.3, 1.0) if male else rng.uniform(0.0, 0.3)),
        sideburn_mm=float(rng.uniform(5.0, 25.0) if male else rng.uniform(-8.0, 5.0)),
        oiliness=float(rng.uniform(0.2, 1.0)), iris_color=tuple(float(c) for c in iris), iris_name=iris_name,
        sclera_tint=tuple(float(c) for c in sclera),
    )


# ----------------------------------------------------------------------------- geometry of the tiles

@dataclasses.dataclass
class _Tile:
    pos: np.ndarray  # [R, R, 3] neutral-head position (mm), nearest-filled outside coverage
    covered: np.ndarray  # [R, R] bool
    part: np.ndarray  # [R, R] int8, index into ict.PART_NAMES (filled)
    mm_per_uv: float
    lm: np.ndarray  # [68, 3] neutral landmarks
    lm_uv: np.ndarray  # [68, 2] uv of the landmark vertices (face tile)


_TILE_CACHE: dict = {}


def _fill_nearest(img: np.ndarray, covered: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    if covered.all() or not covered.any():
        return img
    idx = ndimage.distance_transform_edt(~covered, return_distances=False, return_indices=True)
    return img[idx[0], idx[1]]


def _vertex_uv(model, parts=("face",)) -> np.ndarray:
    sel = model.part_faces(*parts)
    out = np.full((model.num_vertices, 2), np.nan)
    out[model.faces[sel].ravel()] = model.uv[model.faces_uv[sel].ravel()]
    return out


def _tile(model, tile: int, res: int = REGION_RES) -> _Tile:
    key = (id(model), tile, res)
    if key in _TILE_CACHE:
        return _TILE_CACHE[key]
    parts = ("face",) if tile == 0 else HEAD_TILE_PARTS
    pos, cov = ict.uv_tile_map(model, model.neutral, res, parts=parts, tile=tile)
    part_v = np.zeros(model.num_vertices)
    for k, name in enumerate(ict.PART_NAMES):
        a, b = ict.PART_VERTICES[name]
        part_v[a : b + 1] = k
    part, _ = ict.uv_tile_map(model, part_v, res, parts=parts, tile=tile)
    part = np.rint(part[..., 0]).astype(np.int8)
    # mm per uv unit: median 3D step between horizontally adjacent covered texels
    both = cov[:, 1:] & cov[:, :-1]
    step = np.linalg.norm(pos[:, 1:] - pos[:, :-1], axis=-1)[both]
    same = (part[:, 1:] == part[:, :-1])[both]
    mm_per_uv = float(np.median(step[same & (step < 5.0 * np.median(step))])) * res
    pos = _fill_nearest(pos, cov).astype(np.float32)
    part = _fill_nearest(part, cov)
    lm_uv = _vertex_uv(model)[model.landmarks68]
    t = _Tile(pos, cov, part, mm_per_uv, model.neutral[model.landmarks68].astype(np.float64), lm_uv)
    _TILE_CACHE[key] = t
    return t


def _smoothstep(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _gauss(pos, centre, sigma) -> np.ndarray:
    """exp(-|((p - c) / sigma)|^2 / 2) with per-axis sigma."""
    d = (pos - np.asarray(centre, dtype=np.float32)) / np.asarray(sigma, dtype=np.float32)
    return np.exp(-0.5 * np.einsum("...k,...k->...", d, d)).astype(np.float32)


def _seg_gauss(pos, a, b, sigma) -> np.ndarray:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    ab = b - a
    t = np.clip(((pos - a) @ ab) / float(ab @ ab), 0, 1)
    d = pos - (a + t[..., None] * ab)
    return np.exp(-0.5 * np.einsum("...k,...k->...", d, d) / sigma**2).astype(np.float32)


HEAD_BOX_MM = (np.array([-135.0, -205.0, -105.0]), np.array([135.0, 160.0, 145.0]))  # holds every ICT head


def _noise3d(pos: np.ndarray, seed: int, tag: int, ell_mm: float) -> np.ndarray:
    """A smooth random field of 3D position (unit variance, correlation length about ``ell_mm``):
    a Gaussian-blurred random lattice of spacing ell / 2 over :data:`HEAD_BOX_MM`, trilinearly read.
    The same (seed, tag, ell) gives the same field on every tile."""
    from scipy import ndimage

    lo, hi = HEAD_BOX_MM
    g = ell_mm / 2.0
    shape = tuple(int(np.ceil(v)) + 3 for v in (hi - lo) / g)
    grid = np.random.default_rng([seed, tag]).standard_normal(shape, dtype=np.float32)
    grid = ndimage.gaussian_filter(grid, 1.0, mode="wrap")
    grid /= float(grid.std())
    c = ((pos.reshape(-1, 3) - lo.astype(np.float32)) / np.float32(g)).T
    out = ndimage.map_coordinates(grid, c, order=1, mode="nearest")
    return (out / np.float32(0.93)).reshape(pos.shape[:-1]).astype(np.float32)  # trilinear reading loses ~7 % std


class _Fields:
    """The regional fields of one tile at REGION_RES for one identity (values in [0, 1] unless noted)."""

    def __init__(self, model, skin: SkinParams, tile: int):
        t = _tile(model, tile)
        self.t = t
        P = t.pos
        L = t.lm
        x, y, z = P[..., 0], P[..., 1], P[..., 2]
        eye_r, eye_l = L[36:42].mean(0), L[42:48].mean(0)
        eye_y = 0.5 * (eye_r[1] + eye_l[1])
        brow_y = float(L[17:27, 1].mean())
        nose_tip, nose_base = L[30], L[33]
        mouth = L[48:60].mean(0)
        chin = L[8]
        self.is_face = (t.part == ict.PART_NAMES.index("face"))
        self.is_head = (t.part == ict.PART_NAMES.index("head"))
        near = cv2.dilate(t.covered.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0  # the islands and a margin
        self.is_mouth = (t.part == ict.PART_NAMES.index("mouth_socket")) & near
        self.is_eye_socket = np.isin(t.part, [ict.PART_NAMES.index("eye_socket_left"), ict.PART_NAMES.index("eye_socket_right")]) & near
        front = _smoothstep(-10.0, 25.0, z)  # the front half of the head
        # cheeks: centre below the eye and lateral, on the surface
        cheek = np.zeros_like(x)
        for e in (eye_r, eye_l):
            c = np.array([e[0] * 1.02, 0.55 * e[1] + 0.45 * nose_tip[1] - 6.0, e[2] - 6.0])
            cheek = np.maximum(cheek, _gauss(P, c, (16.0, 13.0, 14.0)))
        self.cheek = cheek
        self.nose = np.maximum(_gauss(P, nose_tip, (9.0, 8.0, 9.0)),
                               np.maximum(_gauss(P, L[31], (5.5, 5.0, 6.0)), _gauss(P, L[35], (5.5, 5.0, 6.0))))
        self.nose_bridge = _seg_gauss(P, L[27], L[30], 6.0)
        ue = np.zeros_like(x)
        lid = np.zeros_like(x)
        for e in (eye_r, eye_l):
            ue = np.maximum(ue, _gauss(P, e + np.array([0.0, -8.5, 1.0]), (11.0, 4.5, 8.0)))
            lid = np.maximum(lid, _gauss(P, e + np.array([0.0, 7.5, 0.0]), (11.0, 4.0, 8.0)))
        self.under_eye = ue
        self.lid = lid
        # brows: distance to the brow landmark polylines (2.5 mm below them, where the hair is densest)
        bd = np.full(x.shape, 1e9, np.float32)
        for ids in (list(range(17, 22)), list(range(22, 27))):
            pts = L[ids] + np.array([0.0, -2.5, 0.0])
            for a_, b_ in zip(pts[:-1], pts[1:]):
                a32, ab = a_.astype(np.float32), (b_ - a_).astype(np.float32)
                tt = np.clip(((P - a32) @ ab) / float(ab @ ab), 0, 1)
                dd = P - (a32 + tt[..., None] * ab)
                bd = np.minimum(bd, np.einsum("...k,...k->...", dd, dd))
        self.brow = (1 - _smoothstep(0.3, 1.0, np.sqrt(bd) / (0.5 * skin.brow_thickness_mm))).astype(np.float32)
        self.chin = _gauss(P, chin + np.array([0.0, 10.0, 0.0]), (16.0, 12.0, 12.0))
        self.forehead = _gauss(P, np.array([0.0, brow_y + 25.0, L[27][2] - 8.0]), (32.0, 22.0, 25.0))
        self.ear = _smoothstep(70.0, 78.0, np.abs(x)) * _smoothstep(-30.0, -18.0, y) * (1 - _smoothstep(45.0, 65.0, y)) \
            * (1 - _smoothstep(30.0, 48.0, z)) * _smoothstep(-40.0, -20.0, z)
        jaw_y = np.interp(np.abs(x), np.abs(L[0:9, 0])[::-1], L[0:9, 1][::-1])
        self.neck = _smoothstep(5.0, 30.0, jaw_y - y)
        # mottling and patchiness (3D, seam consistent)
        sd = skin.seed
        self.mottle_m = 0.75 * _noise3d(P, sd, 1, 36.0) + 0.66 * _noise3d(P, sd, 2, 12.0)
        self.mottle_h = _noise3d(P, sd, 3, 16.0)
        self.oil_noise = _noise3d(P, sd, 4, 10.0)
        edge = _noise3d(P, sd, 5, 6.0)
        patch = _noise3d(P, sd, 6, 10.0)
        # hairline: height as a function of the azimuth around a vertical axis through the ears
        phi = np.degrees(np.abs(np.arctan2(x, z - 15.0)))
        yF = brow_y + skin.hairline_mm
        rec = skin.receding
        keys = np.array([0.0, 20.0, 38.0, 52.0, 66.0, 76.0, 82.0, 87.0, 95.0, 108.0, 118.0, 135.0, 180.0])
        vals = np.array([yF, yF + 3 + 12 * rec, yF - 4 + 10 * rec, brow_y + 18 + 8 * rec, brow_y + 8, eye_y + 4,
                         eye_y - skin.sideburn_mm, eye_y + 8, eye_y + 12, eye_y + 12, eye_y - 5, eye_y - 40, eye_y - 78])
        y_hl = np.interp(phi, keys, vals) + 2.0 * edge
        self.hair = _smoothstep(-1.5, 3.5, y - y_hl).astype(np.float32)
        self.hair_y = (y - y_hl).astype(np.float32)
        # beard zone: below a line from the sideburn over the cheek to the nose base
        ax = np.abs(x)
        y_top = np.interp(ax, [0.0, 16.0, 24.0, 34.0, 48.0, 62.0, 72.0],
                          [nose_base[1] - 1.5, nose_base[1] - 1.0, mouth[1] + 4.0, mouth[1] + 9.0, mouth[1] + 15.0,
                           eye_y - 22.0, eye_y - 14.0])
        top = 1 - _smoothstep(-4.0, 3.0, y - y_top)
        bottom = _smoothstep(-8.0, 0.0, y - (np.minimum(jaw_y, chin[1]) - 42.0 + 20.0 * _smoothstep(30.0, 70.0, ax)))
        not_ear = np.maximum(1 - _smoothstep(68.0, 74.0, ax), _smoothstep(38.0, 46.0, z))
        self.beard_zone = (top * bottom * not_ear * _smoothstep(-15.0, 15.0, z)).astype(np.float32)
        self.beard_patch = _smoothstep(-2.2, 0.0, patch).astype(np.float32)
        self.freckle_zone = (np.maximum(_gauss(P, np.array([0.0, nose_tip[1] + 12.0, nose_tip[2] - 10.0]), (38.0, 22.0, 30.0)),
                                        0.4 * self.forehead) * front).astype(np.float32)
        self.eye_y, self.brow_y = eye_y, brow_y


def _up(a: np.ndarray, size: int, interp=cv2.INTER_LINEAR) -> np.ndarray:
    if a.shape[0] == size:
        return a
    return cv2.resize(a, (size, size), interpolation=interp if size > a.shape[0] else cv2.INTER_AREA)


# ----------------------------------------------------------------------------- noise

def _octave_noise(rng: np.random.Generator, size: int, mm_per_texel: float, octaves: list[tuple[float, float]]) -> np.ndarray:
    """Sum of band noises ``[size, size]`` float32; ``octaves``: (sigma_mm, std). Each octave is drawn
    on the coarsest grid where its sigma is 1-2 texels and upsampled (octaves on one grid share its white noise); an octave finer than half a
    texel is attenuated by sigma / (0.5 texel) (a map at this resolution cannot hold it)."""
    levels: dict[int, list[tuple[float, float]]] = {}
    for sig_mm, std in octaves:
        sig = sig_mm / mm_per_texel
        lev = 0
        while sig / 2 ** (lev + 1) >= 1.0 and size // 2 ** (lev + 1) >= 8:
            lev += 1
        levels.setdefault(lev, []).append((sig / 2**lev, std))
    out = None
    for lev in sorted(levels, reverse=True):
        n = max(size // 2**lev, 1)
        if out is not None:
            out = cv2.resize(out, (n, n), interpolation=cv2.INTER_LINEAR)
        else:
            out = np.zeros((n, n), np.float32)
        w = rng.random((n, n), dtype=np.float32)  # one white noise per level, blurred per octave
        w -= 0.5
        for sig, std in levels[lev]:
            amp = std * min(1.0, sig / 0.5)
            sig = max(sig, 0.5)
            b = cv2.GaussianBlur(w, (0, 0), sig, borderType=cv2.BORDER_REFLECT)
            # std of blurred uniform noise (var 1/12) with a Gaussian of sigma: 1 / sqrt(12 * 4 pi sigma^2)
            norm = np.sqrt(12.0 * 4.0 * np.pi * sig * sig) if sig > 0.8 else 1.0 / max(float(b[:: max(n // 64, 1), :: max(n // 64, 1)].std()), 1e-6)
            cv2.scaleAdd(b, float(amp * norm), out, dst=out)
    if out.shape[0] != size:
        out = cv2.resize(out, (size, size), interpolation=cv2.INTER_LINEAR)
    return out


FINE_OCTAVES = ((0.03, 0.45), (0.06, 0.55), (0.12, 0.5), (0.25, 0.35), (0.6, 0.2), (1.5, 0.12))  # (sigma mm, weight)


def _fine_octaves(std: float) -> list[tuple[float, float]]:
    w = np.array([o[1] for o in FINE_OCTAVES])
    return [(sg, std * wi / float(np.sqrt((w**2).sum()))) for sg, wi in FINE_OCTAVES]


# ----------------------------------------------------------------------------- hair strokes

def _draw_strokes(canvas: np.ndarray, pts: np.ndarray, value: int = 255) -> None:
    """Anti-aliased polylines ``pts [N, K, 2]`` (x, y in pixels) on a uint8 canvas (max, not sum)."""
    if len(pts) == 0:
        return
    layer = np.zeros_like(canvas)
    cv2.polylines(layer, list(np.round(pts * 16).astype(np.int32)), False, value, 1, cv2.LINE_AA, shift=4)
    np.maximum(canvas, layer, out=canvas)


def _brow_layer(t: _Tile, skin: SkinParams, rng, res: int, px_mm: float) -> np.ndarray:
    """Brow hair alpha ``[res, res]`` float32 on the face tile."""
    canvas = np.zeros((res, res), np.uint8)
    band = np.zeros((res, res), np.float32)
    hair_w = 0.09  # mm
    op = min(1.0, 1.6 * hair_w / px_mm)
    for ids in (list(range(21, 16, -1)), list(range(22, 27))):  # medial -> lateral
        uv = t.lm_uv[ids]
        pix = np.stack([uv[:, 0] * res - 0.5, (1 - uv[:, 1]) * res - 0.5], 1)
        # densify the spine
        tt = np.linspace(0, 1, 60)
        s = np.linspace(0, 1, len(pix))
        spine = np.stack([np.interp(tt, s, pix[:, 0]), np.interp(tt, s, pix[:, 1])], 1)
        tang = np.gradient(spine, axis=0)
        tang /= np.linalg.norm(tang, axis=1, keepdims=True) + 1e-9
        nrm = np.stack([tang[:, 1], -tang[:, 0]], 1)
        if nrm[len(nrm) // 2, 1] > 0:
            nrm = -nrm  # "up" in the image (towards row 0)
        thick = skin.brow_thickness_mm * (1.0 - 0.62 * tt**1.3) / px_mm  # pixels
        centre = spine - nrm * (0.22 * thick[:, None])  # landmarks sit on the brow's upper half
        poly = np.concatenate([centre + nrm * (0.5 * thick[:, None]), (centre - nrm * (0.5 * thick[:, None]))[::-1]])
        cv2.fillPoly(band, [np.round(poly * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift=4)
        area_mm2 = float(np.sum(thick * px_mm) * np.linalg.norm(np.diff(spine, axis=0), axis=1).sum() / len(tt) * px_mm)
        n = int(area_mm2 * 2.2 * skin.brow_density)
        u = rng.random(n) ** 1.15  # a little denser medially
        k = np.clip((u * (len(tt) - 1)).astype(int), 0, len(tt) - 1)
        across = rng.normal(0, 0.28, n).clip(-0.55, 0.55)
        root = centre[k] + nrm[k] * (across * thick[k])[:, None]
        # direction: medial hairs up, the body along the brow, converging towards the spine
        up_w = np.clip(1.0 - u / 0.2, 0, 1)[:, None]
        d = (1 - up_w) * (tang[k] - nrm[k] * (0.6 * across)[:, None]) + up_w * (nrm[k] + 0.4 * tang[k])
        ang = rng.normal(0, 0.25, n)
        c, s_ = np.cos(ang), np.sin(ang)
        d = np.stack([c * d[:, 0] - s_ * d[:, 1], s_ * d[:, 0] + c * d[:, 1]], 1)
        d /= np.linalg.norm(d, axis=1, keepdims=True) + 1e-9
        length = rng.uniform(3.0, 7.0, n) * (0.6 + 0.4 * (1 - up_w[:, 0])) / px_mm
        bend = (rng.normal(0, 0.12, n) * length)[:, None] * np.stack([-d[:, 1], d[:, 0]], 1)
        pts = np.stack([root, root + d * (0.5 * length)[:, None] + bend, root + d * length[:, None]], 1)
        _draw_strokes(canvas, pts, int(255 * op))
    band = cv2.GaussianBlur(band, (0, 0), max(1.2 / px_mm, 0.7))
    a = canvas.astype(np.float32) / 255.0
    a = np.maximum(a, band * skin.brow_density * (0.35 + 0.45 * (1 - op)))
    return np.clip(a * (0.75 + 0.25 * skin.brow_density), 0, 1)


def _stubble_layer(zone: np.ndarray, skin: SkinParams, rng, res: int, px_mm: float, tile_area_mm2: float) -> np.ndarray:
    """Stubble hair alpha ``[res, res]``: short strokes, about 1.1 hairs per mm^2 where ``zone`` is 1."""
    canvas = np.zeros((res, res), np.uint8)
    area = float(zone.mean()) * tile_area_mm2
    n = int(area * 1.1)
    if n == 0:
        return canvas.astype(np.float32)
    zr = zone.shape[0]
    flat = np.clip(zone.ravel().astype(np.float64), 0.0, None)
    idx = rng.choice(len(flat), size=n, p=flat / flat.sum())
    yy, xx = np.divmod(idx, zr)
    scale = res / zr
    root = np.stack([(xx + rng.random(n)) * scale, (yy + rng.random(n)) * scale], 1) - 0.5
    ang = rng.normal(np.pi / 2, 0.5, n)  # beard hair grows downward (rows increase)
    ln = rng.uniform(0.15, 0.3 + 0.5 * skin.beard, n) / px_mm
    d = np.stack([np.cos(ang), np.sin(ang)], 1)
    pts = np.stack([root, root + d * ln[:, None]], 1)
    op = min(1.0, 1.6 * 0.1 / px_mm)
    _draw_strokes(canvas, pts, int(255 * op))
    return canvas.astype(np.float32) / 255.0


def _strand_noise(rng, res: int, px_mm: float) -> np.ndarray:
    """Hair-strand-like noise ``[res, res]`` (std ~1): streaks along the rows' direction (v)."""
    w = rng.random((res, res), dtype=np.float32) - 0.5
    sx = max(0.06 / px_mm, 0.5)
    sy = max(2.5 / px_mm, 1.0)
    a = cv2.GaussianBlur(w, (0, 0), sigmaX=sx, sigmaY=sy)
    w2 = rng.random((max(res // 4, 8),) * 2, dtype=np.float32) - 0.5
    b = cv2.resize(cv2.GaussianBlur(w2, (0, 0), sigmaX=max(0.3 / px_mm / 4, 0.5), sigmaY=max(8 / px_mm / 4, 1.0)), (res, res))
    a = a / (float(a[::4, ::4].std()) + 1e-6) + 0.8 * b / (float(b[::4, ::4].std()) + 1e-6)
    return a / np.float32(1.28)


# ----------------------------------------------------------------------------- albedo

def _skin_linear(f: _Fields, skin: SkinParams, rng, size: int, tile: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear skin albedo at ``min(size, BASE_RES)`` (no hair), plus the region-res lip mask and the res."""
    r = min(size, BASE_RES if tile == 0 else BASE_RES // 2)  # the head tile (scalp, neck) needs less
    t = f.t
    mm_tex = t.mm_per_uv / r
    up = lambda a: _up(a.astype(np.float32), r)  # noqa: E731
    lm = np.log(skin.melanin + 1e-3) + skin.mottling * f.mottle_m
    M = np.exp(up(lm))
    H = up(skin.haemoglobin + 0.6 * skin.cheek_redness * f.cheek + skin.nose_redness * f.nose + 0.25 * f.ear
           + 0.08 * f.chin + 0.06 * f.lid - 0.06 * f.neck + 0.05 * f.mottle_h * (1 + 2 * f.cheek))
    M *= up(1.0 + 0.35 * skin.under_eye * f.under_eye + 0.10 * f.lid - 0.08 * f.neck)
    # mid-scale chromophore noise (0.3-3 mm), so the base carries chroma variation too
    mid = _octave_noise(rng, r, mm_tex, [(0.35, 0.03), (1.2, 0.025), (3.0, 0.02)])
    M *= np.exp(mid)
    H += _octave_noise(rng, r, mm_tex, [(0.5, 0.02), (2.0, 0.02)])
    lip = np.zeros((r, r), np.float32)
    if tile == 0:
        lip = _lip_mask(t, r, mm_tex)
        lip_in = cv2.GaussianBlur(lip, (0, 0), 1.2 / mm_tex)
        M = M * (1 - lip) + lip * M * skin.lip_melanin * (1.0 + 0.25 * (1 - lip_in))  # darker at the border
        # vertical lip lines (colour streaks along v) and a darker, browner border
        streak = rng.random((r, r), dtype=np.float32) - 0.5
        streak = cv2.GaussianBlur(streak, (0, 0), sigmaX=max(0.25 / mm_tex, 0.5), sigmaY=max(1.5 / mm_tex, 0.5))
        streak /= float(streak[::4, ::4].std()) + 1e-6
        H = H + lip * skin.lip_haemoglobin * (0.75 + 0.25 * lip_in + 0.06 * streak)
        _add_freckles_moles(M, f, skin, rng, r, mm_tex, lip)
    C = skin.carotene * up(1.0 + 0.3 * f.forehead) * (1 - lip)
    lin = chromophore_albedo(M, H, C)
    # under-eye violet shadow and beard shadow (hair under the skin)
    ue = up(skin.under_eye * f.under_eye)[..., None]
    lin *= 1 - 0.12 * ue * np.array([1.0, 1.0, 0.6], np.float32)
    beard = up(skin.beard * f.beard_zone * (0.7 + 0.3 * f.beard_patch))
    beard *= 1 - lip
    shadow = np.array(skin.hair_color, np.float32) / max(np.max(skin.hair_color), 1e-3)
    tint = 1 - 0.2 * beard[..., None] * (1 - 0.45 * shadow) * np.array([1.0, 0.92, 0.8], np.float32)
    lin *= tint
    return lin, lip, beard


def _lip_mask(t: _Tile, r: int, mm_tex: float) -> np.ndarray:
    """Soft vermilion mask ``[r, r]`` from the outer lip contour (landmarks 48-59), a closed spline in uv."""
    uv = t.lm_uv[48:60]
    p = np.stack([uv[:, 0] * r - 0.5, (1 - uv[:, 1]) * r - 0.5], 1)
    n = len(p)
    pts = []
    for i in range(n):  # Catmull-Rom through the contour
        p0, p1, p2, p3 = p[(i - 1) % n], p[i], p[(i + 1) % n], p[(i + 2) % n]
        for s in np.linspace(0, 1, 12, endpoint=False):
            s2, s3 = s * s, s * s * s
            pts.append(0.5 * (2 * p1 + (-p0 + p2) * s + (2 * p0 - 5 * p1 + 4 * p2 - p3) * s2 + (-p0 + 3 * p1 - 3 * p2 + p3) * s3))
    poly = np.array(pts)
    c = poly.mean(0)
    poly = c + (poly - c) * 1.02
    m = np.zeros((r, r), np.float32)
    cv2.fillPoly(m, [np.round(poly * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift=4)
    return cv2.GaussianBlur(m, (0, 0), max(0.45 / mm_tex, 0.5))


def _add_freckles_moles(M: np.ndarray, f: _Fields, skin: SkinParams, rng, r: int, mm_tex: float, lip: np.ndarray) -> None:
    zone = _up(f.freckle_zone * f.is_face, r) * (1 - lip)
    tile_mm2 = (f.t.mm_per_uv**2)
    zf = np.clip(zone.ravel().astype(np.float64), 0.0, None)
    zs = zf.sum()
    if skin.freckles > 0 and zs > 0:
        n = int(skin.freckles * float(zone.mean()) * tile_mm2 / 100.0)  # per cm^2 -> count
        n = min(n, 6000)
        idx = rng.choice(len(zf), size=n, p=zf / zs)
        cls = rng.integers(0, 3, n)
        for k, sig_mm in enumerate((0.3, 0.55, 0.9)):
            sp = np.zeros((r, r), np.float32)
            np.add.at(sp.ravel(), idx[cls == k], rng.uniform(0.3, 1.0, int((cls == k).sum())).astype(np.float32))
            sg = max(sig_mm / mm_tex, 0.6)
            g = cv2.GaussianBlur(sp, (0, 0), sg) * np.float32(2 * np.pi * sg * sg)
            M += g * np.float32(0.35 * skin.melanin + 0.18)
    if skin.moles > 0:
        face = (_up(f.is_face.astype(np.float32) * (1 - f.hair) * (0.3 + f.freckle_zone + f.neck), r) * (1 - lip)).ravel().astype(np.float64).clip(0, None)
        idx = rng.choice(len(face), size=skin.moles, p=face / face.sum())
        spots = np.zeros((r, r), np.float32)
        for i in idx:
            yy, xx = divmod(int(i), r)
            rad = rng.uniform(0.6, 2.2) / mm_tex
            cv2.circle(spots, (int(xx * 16), int(yy * 16)), int(max(rad, 0.5) * 16), float(rng.uniform(0.6, 1.0)), -1, cv2.LINE_AA, shift=4)
        spots = cv2.GaussianBlur(spots, (0, 0), max(0.25 / mm_tex, 0.5))
        M += spots * np.float32(1.2 + 0.6 * skin.melanin)


def _blend(img: np.ndarray, alpha: np.ndarray, color) -> None:
    """In place: ``img = img * (1 - alpha) + alpha * color`` inside the bounding box of ``alpha > 0``
    (``color``: an RGB triple or an image of ``img``'s shape)."""
    rows = np.flatnonzero(alpha.max(1) > 1e-3)
    if len(rows) == 0:
        return
    cols = np.flatnonzero(alpha[rows[0] : rows[-1] + 1].max(0) > 1e-3)
    sl = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    a = alpha[sl][..., None]
    c = color[sl] if isinstance(color, np.ndarray) and color.ndim == 3 else np.asarray(color, np.float32)
    d = c - img[sl]
    d *= a
    img[sl] += d


_FIELD_CACHE: dict = {}


def _fields(model, skin: SkinParams, tile: int) -> _Fields:
    key = (id(model), skin, tile)
    if key not in _FIELD_CACHE:
        if len(_FIELD_CACHE) >= 8:
            _FIELD_CACHE.pop(next(iter(_FIELD_CACHE)))
        _FIELD_CACHE[key] = _Fields(model, skin, tile)
    return _FIELD_CACHE[key]


def _albedo(model, skin: SkinParams, size: int, rng: np.random.Generator, tile: int) -> np.ndarray:
    if size < 8:
        raise ValueError(f"texture size must be >= 8, got {size}")
    f = _fields(model, skin, tile)
    t = f.t
    lin, lip, _ = _skin_linear(f, skin, rng, size, tile)
    rb = lin.shape[0]
    if tile == 1:  # mouth socket dark red, eye sockets dark pink
        ms = _up(f.is_mouth.astype(np.float32), rb)[..., None]
        es = _up(f.is_eye_socket.astype(np.float32), rb)[..., None]
        lin = lin * (1 - ms - es) + ms * np.array([0.10, 0.018, 0.018], np.float32) + es * (0.35 * lin + np.array([0.06, 0.02, 0.02], np.float32))
    # hair layers at min(size, HAIR_RES), composited in sRGB
    rh = min(size, HAIR_RES)
    px_mm = t.mm_per_uv / rh
    srgb = _up(linear_to_srgb(lin), rh)
    hair_s = linear_to_srgb(np.array(skin.hair_color, np.float32))
    if tile == 0:
        a = _brow_layer(t, skin, rng, rh, px_mm)
        _blend(srgb, a, linear_to_srgb(np.array(skin.brow_color, np.float32)))
    if skin.beard > 0:
        zone = skin.beard * f.beard_zone * f.beard_patch * (1 - _up(lip, REGION_RES)) * (1 - f.hair)
        _blend(srgb, _stubble_layer(zone, skin, rng, rh, px_mm, t.mm_per_uv**2) * np.float32(0.85), hair_s)
    # hair cap: density ramps up over ~10 mm behind the hairline, where single strands show
    ramp = _up(_smoothstep(-4.0, 6.0, f.hair_y) * (f.is_face | f.is_head), rh)
    if ramp.max() > 0:
        rows = np.flatnonzero(ramp.max(1) > 1e-3)
        sl = np.s_[rows[0] : rows[-1] + 1]
        strands = _strand_noise(rng, rh, px_mm)[sl]
        ramp = ramp[sl]
        alpha = np.clip(1.6 * ramp - 0.3 + 2.0 * strands * ramp * (1 - ramp), 0, 1) * (ramp > 1e-3)
        # strands in the colour (1 + 0.25 n in linear is about 1 + 0.11 n in sRGB; less for light hair)
        k = 0.11 * (1.0 - 0.5 * float(np.clip(hair_s.max() - 0.25, 0.0, 1.0)))
        hc = hair_s[None, None, :] * np.clip(1.0 + k * strands, 0.6, 1.4)[..., None]
        _blend(srgb[sl], alpha.astype(np.float32), hc)
    srgb = _up(srgb, size)
    # pore-scale albedo variation; a linear factor 1 + x is about 1 + x / 2.2 on sRGB values
    fine = _octave_noise(rng, size, t.mm_per_uv / size, _fine_octaves(skin.fine_variation / 2.2))
    fine += 1.0
    srgb *= fine[..., None]
    return cv2.convertScaleAbs(srgb, alpha=255.0)


def face_albedo(model, skin: SkinParams, size: int, rng: np.random.Generator) -> np.ndarray:
    """``uint8 [S, S, 3]`` sRGB albedo of the face tile (tile 0: face, ears, front of the neck)."""
    return _albedo(model, skin, int(size), rng, 0)


def head_albedo(model, skin: SkinParams, size: int, rng: np.random.Generator) -> np.ndarray:
    """``uint8 [S, S, 3]`` sRGB albedo of the head tile (tile 1: scalp and hair cap, back and sides of
    the neck; the mouth socket dark red and the eye sockets dark pink where they share the tile)."""
    return _albedo(model, skin, int(size), rng, 1)


# ----------------------------------------------------------------------------- specular

def _specular(model, skin: SkinParams, size: int, rng, tile: int) -> np.ndarray:
    if size < 8:
        raise ValueError(f"texture size must be >= 8, got {size}")
    f = _fields(model, skin, tile)
    oil = skin.oiliness
    tz = np.maximum(np.maximum(f.forehead, np.maximum(f.nose, f.nose_bridge)), 0.75 * f.chin)
    s = 0.16 + 0.06 * oil + (0.22 + 0.35 * oil) * tz - 0.06 * f.cheek
    s = s * (1 + 0.12 * f.oil_noise)
    if tile == 0:
        lip = _up(_lip_mask(f.t, REGION_RES, f.t.mm_per_uv / REGION_RES), REGION_RES)
        s = s * (1 - lip) + lip * (0.42 + 0.1 * oil)
    s = s * (1 - 0.8 * f.hair) * (1 - 0.7 * f.brow * skin.brow_density)  # hair is matte
    s = s * (1 - 0.5 * f.beard_zone * skin.beard)
    s = np.where(f.is_mouth, 0.35, np.where(f.is_eye_socket, 0.4, s))
    r = min(size, BASE_RES)
    out = _up(s.astype(np.float32), r)
    out *= 1 + _octave_noise(rng, r, f.t.mm_per_uv / r, [(0.15, 0.1), (0.5, 0.08), (1.5, 0.05)])
    return np.clip(_up(out, size), 0.0, 1.0).astype(np.float32)


def face_specular(model, skin: SkinParams, size: int, rng: np.random.Generator) -> np.ndarray:
    """``float32 [S, S]`` specular weight in [0, 1] of the face tile: oily T-zone (forehead, nose,
    chin) high, cheeks low, lips moderate, beard and hair low."""
    return _specular(model, skin, int(size), rng, 0)


def head_specular(model, skin: SkinParams, size: int, rng: np.random.Generator) -> np.ndarray:
    """``float32 [S, S]`` specular weight of the head tile (hair low, neck skin moderate)."""
    return _specular(model, skin, int(size), rng, 1)


# ----------------------------------------------------------------------------- part colours

def _eye_frame(V: np.ndarray, side: str):
    """Centre, axis (unit, outwards) and the iris and pupil radii (mm) of one inner eyeball."""
    a, b = ict.IRIS_VERTICES[side]
    P = V[a : b + 1].astype(np.float64)
    A = np.c_[2 * P, np.ones(len(P))]
    sol = np.linalg.lstsq(A, (P**2).sum(1), rcond=None)[0]
    c = sol[:3]
    # axis: towards the flat front disc (the iris), found as the mean direction of the most forward points
    d = P - c
    u = d / np.linalg.norm(d, axis=1, keepdims=True)
    ax = np.array([0.0, 0.0, 1.0])
    for _ in range(3):
        front = u @ ax > np.cos(np.radians(20))
        ax = d[front].mean(0)
        ax /= np.linalg.norm(ax)
    h = d @ ax
    r = np.linalg.norm(d - np.outer(h, ax), axis=1)
    top = np.percentile(h[r < 2.0], 90) if np.any(r < 2.0) else h.max()
    plateau = (h > top - 0.6) & (h > 0)
    r_iris = float(np.percentile(r[plateau], 97)) if plateau.sum() > 10 else 6.0
    r_iris = float(np.clip(r_iris, 4.5, 7.5))
    # pupil: the inner disc recessed from the iris plane (height step), else 0.4 of the iris
    inner = (r < 0.7 * r_iris) & (h > 0)
    r_pupil = 0.4 * r_iris
    if inner.sum() > 20:
        ri, hi = r[inner], h[inner]
        best = 0.0
        for cand in np.linspace(0.2, 0.55, 15) * r_iris:
            a_, b_ = hi[ri < cand], hi[ri >= cand]
            if len(a_) > 5 and len(b_) > 5:
                step = b_.mean() - a_.mean()
                if step > best:
                    best, r_pupil = step, cand
    return c, ax, r_iris, float(r_pupil), d, h, r


def part_colors(model, skin: SkinParams, rng: np.random.Generator, vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-vertex linear RGB ``[V, 3]`` float32 and specular weight ``[V]`` float32 of the non-skin parts.

    ``vertices [V, 3]`` mm (head frame) of this identity's head (the iris geometry is read from it).
    Skin parts (face, head) get the base skin colour (they are textured); eyeballs: sclera, iris with
    radial structure, dark pupil; teeth off-white; gums and tongue pink-red; mouth socket dark red;
    eye sockets, lacrimal, eye blend and occlusion skin-like dark; eyelashes near black / hair colour.
    """
    V = np.asarray(vertices, dtype=np.float64)
    if V.shape != (model.num_vertices, 3):
        raise ValueError(f"vertices must be [{model.num_vertices}, 3], got {V.shape}")
    col = np.zeros((len(V), 3))
    spec = np.zeros(len(V))
    base = skin.base_rgb.astype(np.float64)
    for name in ("face", "head"):
        col[_part(name)] = base
        spec[_part(name)] = 0.3
    mouth = V[model.landmarks68][48:68].mean(0)
    _mouth_colors(V, mouth, rng, col, spec)
    for side in ("left", "right"):
        _eyeball_colors(V, side, skin, rng, col, spec)
    _eye_surround_colors(skin, base, col, spec)
    return col.astype(np.float32), spec.astype(np.float32)


def _part(name: str) -> slice:
    """The vertices of an ICT part."""
    a, b = ict.PART_VERTICES[name]
    return slice(a, b + 1)


def _mouth_colors(V: np.ndarray, mouth: np.ndarray, rng: np.random.Generator, col: np.ndarray, spec: np.ndarray) -> None:
    """Mouth socket (dark red, darker deeper inside), gums near the teeth and tongue, and the teeth
    (off-white, yellower and darker at the back, per-tooth variation), written into ``col``, ``spec``."""
    from scipy.spatial import cKDTree

    sl = _part("mouth_socket")
    depth = np.clip((mouth[2] - V[sl, 2]) / 35.0, 0, 1)[:, None]
    col[sl] = (1 - depth) * np.array([0.20, 0.045, 0.04]) + depth * np.array([0.05, 0.008, 0.008])
    spec[sl] = 0.3
    sl = _part("gums_tongue")
    dist, _ = cKDTree(V[_part("teeth")]).query(V[sl], k=1)
    gum = (dist < 2.5)[:, None]
    tongue = np.array([0.42, 0.13, 0.12]) * rng.uniform(0.85, 1.1)
    gums = np.array([0.50, 0.17, 0.16]) * rng.uniform(0.85, 1.1)
    pts = V[sl]
    tex = 1 + 0.08 * np.sin(pts @ rng.normal(size=(3, 6)) * 1.5).mean(1, keepdims=True)
    d_in = np.clip((mouth[2] - pts[:, 2]) / 45.0, 0, 1)[:, None]
    col[sl] = np.where(gum, gums, tongue) * tex * (1 - 0.6 * d_in)
    spec[sl] = 0.55
    sl = _part("teeth")
    tooth = np.array([0.70, 0.60, 0.48]) * rng.uniform(0.8, 1.05) * np.array([1.0, 1.0, rng.uniform(0.85, 1.05)])
    pts = V[sl]
    d_in = np.clip((mouth[2] - pts[:, 2] - 5.0) / 30.0, 0, 1)[:, None]
    var = 1 + 0.06 * np.sin(pts[:, 0:1] * 0.9 + rng.uniform(0, 6.28)) + 0.03 * rng.normal(size=(len(pts), 1))
    col[sl] = tooth * var * (1 - 0.55 * d_in)
    spec[sl] = 0.6


def _eyeball_colors(V: np.ndarray, side: str, skin: SkinParams, rng: np.random.Generator, col: np.ndarray,
                    spec: np.ndarray) -> None:
    """One eyeball: sclera (slightly redder and darker away from the cornea), and on the iris vertices an
    iris with radial structure (limbal ring, collarette, streaks) around a dark pupil."""
    sclera = np.array(skin.sclera_tint)
    iris_rgb = np.array(skin.iris_color)
    sl = _part(f"eyeball_{side}")
    col[sl] = sclera
    spec[sl] = 0.9
    a, b = ict.IRIS_VERTICES[side]
    c, ax, r_iris, r_pupil, d, h, r = _eye_frame(V, side)
    ang = np.degrees(np.arccos(np.clip(h / np.linalg.norm(d, axis=1), -1, 1)))
    red = _smoothstep(30.0, 80.0, ang)[:, None]
    scl = sclera * (1 - 0.15 * red) * (1 + 0.12 * red * np.array([0.6, -0.3, -0.4]))
    e = np.cross(ax, [0.0, 1.0, 0.0])
    e /= np.linalg.norm(e)
    e2 = np.cross(ax, e)
    theta = np.arctan2(d @ e2, d @ e)
    q = r / r_iris
    k = np.arange(1, 25)
    phases = rng.uniform(0, 2 * np.pi, len(k))
    streak = (np.cos(np.outer(theta, k * 3) + phases) / np.sqrt(k)).sum(1) / 3.0
    ring = np.exp(-0.5 * ((q - 0.95) / 0.06) ** 2)  # limbal ring
    coll = np.exp(-0.5 * ((q - 0.5) / 0.1) ** 2)  # collarette
    inner_col = iris_rgb * np.array([1.25, 1.08, 0.85]) if skin.iris_name in ("green", "hazel", "blue", "grey") else iris_rgb * 1.15
    irc = iris_rgb[None] * (1 + 0.25 * streak[:, None])
    cw = 0.6 * coll[:, None]
    irc = irc * (1 - cw) + inner_col[None] * cw * (1 + 0.2 * streak[:, None])
    irc = irc * (1 - 0.65 * ring[:, None])
    in_iris = 1 - _smoothstep(r_iris - 0.3, r_iris + 0.2, r)
    in_iris = in_iris * (h > 0)
    pupil = (1 - _smoothstep(r_pupil - 0.25, r_pupil + 0.25, r)) * (h > 0)
    cc = scl * (1 - in_iris[:, None]) + irc * in_iris[:, None]
    cc = cc * (1 - pupil[:, None]) + np.array([0.008, 0.007, 0.007]) * pupil[:, None]
    col[a : b + 1] = cc
    spec[a : b + 1] = 0.9


def _eye_surround_colors(skin: SkinParams, base: np.ndarray, col: np.ndarray, spec: np.ndarray) -> None:
    """Eye sockets, lacrimal, eye blend and occlusion (skin-like, dark) and eyelashes (near black, or the
    hair colour darkened for fair hair)."""
    hair = np.array(skin.hair_color)
    lash = np.minimum(hair, np.array([0.03, 0.022, 0.016])) if skin.hair_name not in ("blonde", "grey") else hair * 0.35
    for side in ("left", "right"):
        sl = _part(f"eye_socket_{side}")
        col[sl] = base * np.array([0.55, 0.42, 0.42]) + np.array([0.03, 0.0, 0.0])
        spec[sl] = 0.5
        sl = _part(f"lacrimal_{side}")
        col[sl] = base * np.array([0.8, 0.55, 0.55]) + np.array([0.08, 0.02, 0.02])
        spec[sl] = 0.7
        for nm in (f"eye_blend_{side}", f"eye_occlusion_{side}"):
            sl = _part(nm)
            col[sl] = base * 0.3
            spec[sl] = 0.1
        sl = _part(f"eyelashes_{side}")
        col[sl] = lash
        spec[sl] = 0.15


# ----------------------------------------------------------------------------- cavities

def cavity_shade(albedo_lin: np.ndarray, height_mm: np.ndarray, strength: float = 1.0,
                 mm_per_texel: float | None = None) -> np.ndarray:
    """Darken a linear albedo ``[S, S, 3]`` where the displacement ``height_mm [S', S']`` (mm, + out of
    the skin) is concave: ``albedo * exp(-strength * max(blur(h) - h, 0) / 0.3 mm)``, floored at 0.7,
    slightly warmer (less darkening in red). ``blur`` is a Gaussian of 0.5 mm (``mm_per_texel``: default
    the face tile's, 287 mm / S); the height map is resized to the albedo's size if they differ.
    Returns a new ``float32`` array; a zero height map leaves the albedo unchanged."""
    a = np.asarray(albedo_lin, dtype=np.float32)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"albedo_lin must be [S, S, 3], got {a.shape}")
    h = np.asarray(height_mm, dtype=np.float32)
    if h.ndim != 2:
        raise ValueError(f"height_mm must be [S, S], got {h.shape}")
    if h.shape != a.shape[:2]:
        h = cv2.resize(h, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_LINEAR)
    mpt = mm_per_texel if mm_per_texel is not None else 287.0 / a.shape[0]
    blur = cv2.GaussianBlur(h, (0, 0), max(0.5 / mpt, 0.5), borderType=cv2.BORDER_REFLECT)
    c = np.maximum(blur - h, 0.0)
    k = np.float32(strength / 0.3)
    shade = np.maximum(np.exp(-k * c), 0.7)
    out = a * shade[..., None]
    out[..., 0] = a[..., 0] * np.maximum(np.exp(-0.75 * k * c), 0.7)
    return out
