"""Synthetic face and head geometry, in millimetres, in the *head frame* (the template's frame).

Head frame: x towards the subject's left, y up, z out of the face (the template looks along +z),
origin at the template's origin (about the middle of the face, behind the nose).

A face = template face (468 vertices, cm -> mm) deformed by an identity (global proportions plus
smooth local modes: nose, jaw, chin, cheeks, brow, lips, eyes, forehead, random warps) and an
expression (jaw rotation, mouth corners, cheeks, brows, lids; FaceScape's 20 expressions as
combinations of these actions), then closed by a head built outwards from the face's boundary
loop (a star-shaped skull ellipsoid with occiput, ears and hair volume, smoothly joined to a neck).
The combined coarse mesh is closed and is Loop-subdivided (:mod:`.subdivision`); fine face
vertices keep barycentrically interpolated template uvs.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from mvfr.template import CANONICAL_MM_PER_UNIT, load_canonical_face
from mvfr.subdivision import Subdivision, subdivision

N_FACE = 468
HEAD_RINGS = 20  # rings of head vertices between the face boundary and the back pole

# MediaPipe landmark groups (indices of template vertices)
LIPS_INNER_UPPER = [191, 80, 81, 82, 13, 312, 311, 310, 415]
LIPS_INNER_LOWER = [95, 88, 178, 87, 14, 317, 402, 318, 324]
LIPS_INNER_CORNERS = [78, 308]
RIGHT_EYE = [33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246]
LEFT_EYE = [263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466]
EYELID_PAIRS = [(161, 163), (160, 144), (159, 145), (158, 153), (157, 154), (246, 7), (173, 155),
                (388, 390), (387, 373), (386, 374), (385, 380), (384, 381), (466, 249), (398, 382)]


@dataclasses.dataclass
class HeadParams:
    center: np.ndarray  # [3] mm, skull ellipsoid centre
    axes: np.ndarray  # [3] mm, semi-axes (x, y, z)
    neck_radius: float
    neck_length: float
    ear_size: float  # mm the ears stand out
    ear_height: float  # elevation of the ears, radians
    hair_thickness: float  # mm of hair volume on the skull
    hairline: float  # elevation offset of the hairline, radians
    occiput: float  # mm bulge at the back


@dataclasses.dataclass
class Identity:
    """A synthetic person: face shape modes, head, and appearance parameters (appearance lives in .appearance)."""

    pid: int
    face_offsets: np.ndarray  # [468, 3] mm, identity deformation of the template face
    scale: np.ndarray  # [3] global proportions (x, y, z)
    head: HeadParams
    age: float  # 0 (young, faint wrinkles) .. 1 (deep wrinkles)
    expression_gain: float  # per-person expression intensity
    seed: int  # seeds the appearance and detail of this person


@functools.lru_cache(maxsize=1)
def template_mm() -> np.ndarray:
    """Template vertices [468, 3] in mm (head frame)."""
    return load_canonical_face().vertices * CANONICAL_MM_PER_UNIT


@functools.lru_cache(maxsize=1)
def boundary_loop() -> np.ndarray:
    """The template's outer boundary loop [36], ordered along the face triangles' half-edges."""
    faces = load_canonical_face().faces
    he = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    s = set(map(tuple, he))
    border = [(a, b) for a, b in he if (b, a) not in s]
    nxt = dict(border)
    loop = [border[0][0]]
    while True:
        n = nxt[loop[-1]]
        if n == loop[0]:
            break
        loop.append(n)
    if len(loop) != len(border):
        raise ValueError("the template has more than one boundary loop")
    return np.asarray(loop)


def _gauss(points: np.ndarray, center: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(-((points - center) ** 2).sum(-1) / (2 * sigma**2))


def _sym_field(points: np.ndarray, landmark: int, sigma: float, disp: tuple[float, float, float]) -> np.ndarray:
    """Displacement [N, 3] of a symmetric pair of bumps at ``landmark`` and its mirror; ``disp`` for the x<0 side
    has its x component negated (so disp x > 0 means 'outwards' on both sides)."""
    T = template_mm()
    c = T[landmark].copy()
    if abs(c[0]) < 1e-6:
        return _gauss(points, c, sigma)[:, None] * np.asarray(disp)
    out = np.zeros_like(points)
    for sign in (-1.0, 1.0):
        cc = c.copy()
        cc[0] = sign * abs(c[0])
        d = np.asarray(disp, dtype=np.float64).copy()
        d[0] *= sign
        out += _gauss(points, cc, sigma)[:, None] * d
    return out


# (landmark, sigma mm, unit displacement (x outwards), std of the coefficient in mm)
IDENTITY_MODES = [
    (1, 14.0, (0, 0, 1), 3.0),  # nose protrusion
    (1, 12.0, (0, -1, 0), 2.0),  # nose tip droop / length
    (48, 9.0, (1, 0, 0), 1.8),  # nose (alar) width
    (6, 10.0, (0, 0, 1), 2.0),  # nose bridge height
    (168, 10.0, (0, 0, 1), 1.5),  # glabella
    (152, 18.0, (0, 0, 1), 3.5),  # chin protrusion
    (152, 16.0, (0, -1, 0), 3.5),  # chin length
    (172, 22.0, (1, 0, 0), 4.0),  # jaw width
    (172, 18.0, (0, 1, 0), 2.5),  # jaw angle height
    (50, 18.0, (0.4, 0, 1), 2.5),  # cheek fullness
    (116, 14.0, (1, 0, 0.3), 2.5),  # cheekbones
    (105, 14.0, (0, 0, 1), 2.2),  # brow ridge
    (105, 12.0, (0, 1, 0), 2.0),  # brow height
    (10, 28.0, (0, 0, 1), 4.0),  # forehead slope
    (159, 9.0, (0, 0, -1), 1.8),  # eye depth
    (133, 10.0, (1, 0, 0), 1.8),  # eye spacing
    (0, 8.0, (0, 0, 1), 1.5),  # upper lip fullness
    (17, 8.0, (0, 0, 1), 1.8),  # lower lip fullness
    (61, 9.0, (1, 0, 0), 2.5),  # mouth width
    (2, 10.0, (0, 1, 0), 2.0),  # philtrum length
    (234, 20.0, (1, 0, 0), 3.0),  # temple / face width at the ears
]


def sample_identity(pid: int, rng: np.random.Generator) -> Identity:
    """Draw one person: shape offsets of the template face, proportions, head, age."""
    T = template_mm()
    offsets = np.zeros_like(T)
    for lm, sigma, disp, std in IDENTITY_MODES:
        coef = float(np.clip(rng.normal(), -2.2, 2.2)) * std
        offsets += coef * _sym_field(T, lm, sigma, disp)
    # a few random smooth asymmetric warps (no face is perfectly symmetric)
    for _ in range(4):
        c = T[rng.integers(N_FACE)] + rng.normal(0, 5, 3)
        offsets += _gauss(T, c, rng.uniform(15, 35))[:, None] * rng.normal(0, 1.2, 3)
    scale = np.clip(1 + rng.normal(0, [0.04, 0.04, 0.05]), 0.88, 1.12)
    head = HeadParams(
        center=np.array([0.0, rng.uniform(8, 20), rng.uniform(-52, -42)]),
        axes=np.array([rng.uniform(74, 82), rng.uniform(102, 114), rng.uniform(96, 106)]),
        neck_radius=rng.uniform(50, 60),
        neck_length=rng.uniform(180, 210),
        ear_size=rng.uniform(15, 22),
        ear_height=rng.uniform(-0.12, 0.0),
        hair_thickness=rng.uniform(3, 16),
        hairline=rng.uniform(-0.08, 0.12),
        occiput=rng.uniform(4, 12),
    )
    return Identity(
        pid=pid, face_offsets=offsets, scale=scale, head=head, age=float(rng.uniform(0.15, 1.0)),
        expression_gain=float(rng.uniform(0.85, 1.15)), seed=int(rng.integers(2**31)),
    )


# ------------------------------------------------------------------------------------ expressions

EXPRESSION_ACTIONS: dict[str, dict[str, float]] = {
    "neutral": {},
    "smile": {"smile": 1.0, "jaw_open": 2.0},
    "mouth_stretch": {"jaw_open": 15.0, "stretch": 1.0},
    "anger": {"brow_lower": 1.0, "lip_press": 1.0},
    "jaw_left": {"jaw_side": 7.0, "jaw_open": 2.0},
    "jaw_right": {"jaw_side": -7.0, "jaw_open": 2.0},
    "jaw_forward": {"jaw_fwd": 6.0, "jaw_open": 3.0},
    "mouth_left": {"mouth_shift": 8.0},
    "mouth_right": {"mouth_shift": -8.0},
    "dimpler": {"dimple": 1.0},
    "chin_raiser": {"chin_raise": 1.0},
    "lip_puckerer": {"pucker": 1.0},
    "lip_funneler": {"pucker": 0.8, "jaw_open": 5.0},
    "sadness": {"sad": 1.0},
    "lip_roll": {"lip_roll": 1.0},
    "grin": {"smile": 1.3, "jaw_open": 7.0},
    "cheek_blowing": {"cheek_blow": 1.0},
    "eye_closed": {"eye_close": 1.0},
    "brow_raiser": {"brow_raise": 1.0},
    "brow_lower": {"brow_lower": 1.0},
}  # keys are the FaceScape expression names (mvfr.datafolder.EXPRESSION_NAMES)


@functools.lru_cache(maxsize=1)
def jaw_weight() -> np.ndarray:
    """[468] in [0, 1]: how much each template vertex follows the lower jaw."""
    T = template_mm()
    x, y = T[:, 0], T[:, 1]
    y_mouth = 0.5 * (T[13, 1] + T[14, 1])
    y_pivot = 2.0
    rise = np.clip((np.abs(x) - 22.0) / 50.0, 0, None) ** 2 * (y_pivot - y_mouth)
    band = 3.0 + 14.0 * np.clip((np.abs(x) - 22.0) / 50.0, 0, 1)
    t = np.clip((y_mouth + rise - y) / band + 0.5, 0, 1)
    w = t * t * (3 - 2 * t)
    w[LIPS_INNER_LOWER] = 1.0
    w[LIPS_INNER_UPPER] = 0.0
    w[LIPS_INNER_CORNERS] = 0.5
    return w


def expression_offsets(name: str, face: np.ndarray, gain: float = 1.0) -> np.ndarray:
    """Displacement [468, 3] mm of expression ``name`` applied to ``face [468, 3]`` (identity already applied)."""
    if name not in EXPRESSION_ACTIONS:
        raise ValueError(f"unknown expression {name!r}; one of {sorted(EXPRESSION_ACTIONS)}")
    T = template_mm()
    acts = {k: v * gain for k, v in EXPRESSION_ACTIONS[name].items()}
    d = np.zeros_like(face)

    def f(lm, sigma, disp, amount):
        return amount * _sym_field(T, lm, sigma, disp)

    a = acts.get
    if a("smile"):
        s = a("smile")
        d += f(61, 10.0, (5.0, 4.0, -3.0), s) + f(50, 15.0, (1.5, 3.0, 2.0), s) + f(205, 12.0, (1.0, 2.5, 2.5), s)
        d += f(0, 7.0, (0, 1.0, 0), s)
    if a("stretch"):
        d += f(61, 9.0, (3.0, -1.0, -1.0), a("stretch"))
    if a("brow_raise"):
        d += f(105, 14.0, (0, 5.0, 0.5), a("brow_raise")) + f(107, 10.0, (0, 3.0, 0), a("brow_raise"))
    if a("brow_lower"):
        d += f(107, 10.0, (-2.0, -3.0, 1.0), a("brow_lower")) + f(105, 12.0, (0, -2.0, 0), a("brow_lower"))
    if a("lip_press"):
        d += f(0, 8.0, (0, -1.0, -2.0), a("lip_press")) + f(17, 8.0, (0, 1.0, -2.0), a("lip_press"))
    if a("pucker"):
        d += f(61, 10.0, (-6.0, 0, 2.0), a("pucker")) + f(13, 11.0, (0, 0, 6.0), a("pucker"))
    if a("sad"):
        d += f(61, 9.0, (0, -3.5, 0), a("sad")) + f(107, 9.0, (0, 3.0, 0), a("sad"))
    if a("cheek_blow"):
        d += f(50, 20.0, (6.0, 0, 4.0), a("cheek_blow")) + f(205, 16.0, (5.0, 0, 3.0), a("cheek_blow"))
        d += f(13, 8.0, (0, 0, 2.0), a("cheek_blow"))
    if a("chin_raise"):
        d += f(152, 15.0, (0, 4.0, 2.0), a("chin_raise")) + f(17, 8.0, (0, 2.0, 2.0), a("chin_raise"))
    if a("dimple"):
        d += f(61, 9.0, (2.0, 0, -3.0), a("dimple"))
    if a("lip_roll"):
        d += f(0, 7.0, (0, -1.0, -4.0), a("lip_roll")) + f(17, 7.0, (0, 1.0, -4.0), a("lip_roll"))
    if a("mouth_shift"):
        d += _gauss(T, T[13], 16.0)[:, None] * np.array([a("mouth_shift"), 0, 0])
    if a("eye_close"):
        for up, low in EYELID_PAIRS:
            d[up] += a("eye_close") * 0.9 * (face[low] - face[up])
    # jaw last: it moves the already deformed lower face rigidly
    w = jaw_weight()[:, None]
    if a("jaw_side"):
        d += w * np.array([a("jaw_side"), 0, 0])
    if a("jaw_fwd"):
        d += w * np.array([0, 0, a("jaw_fwd")])
    if a("jaw_open"):
        ang = np.deg2rad(a("jaw_open"))
        pivot = np.array([0.0, 2.0, -30.0])
        R = np.array([[1, 0, 0], [0, np.cos(ang), -np.sin(ang)], [0, np.sin(ang), np.cos(ang)]])
        p = face + d
        d += w * (((p - pivot) @ R.T + pivot) - p)
    return d


# ------------------------------------------------------------------------------------------ head


def head_radius(dirs: np.ndarray, h: HeadParams) -> np.ndarray:
    """Distance [N] from the head centre to the skull/neck/ears/hair surface along unit ``dirs [N, 3]``."""
    ax = h.axes
    r_skull = 1.0 / np.sqrt(((dirs / ax) ** 2).sum(-1))
    # occiput: the back of the skull bulges out and up
    back = np.array([0.0, 0.25, -1.0]) / np.linalg.norm([0.0, 0.25, -1.0])
    r_skull += h.occiput * np.exp(-(1 - dirs @ back) / 0.15)
    # neck: a capped cylinder down and slightly forward, smooth union with the skull
    axis = np.array([0.0, -1.0, 0.12]) / np.linalg.norm([0.0, -1.0, 0.12])
    cos_a = dirs @ axis
    sin_a = np.sqrt(np.clip(1 - cos_a**2, 1e-9, None))
    r_neck = np.where(cos_a > 1e-3, np.minimum(h.neck_radius / sin_a, h.neck_length / np.maximum(cos_a, 1e-3)), 0.0)
    p = 8.0
    r = (r_skull**p + r_neck**p) ** (1 / p)
    # ears: flattened bumps on both sides, slightly behind the centre
    elev = np.arcsin(np.clip(dirs[:, 1], -1, 1))
    azim = np.arctan2(dirs[:, 0], dirs[:, 2])  # 0 = front, +-pi/2 = sides
    for side in (-1.0, 1.0):
        da = np.angle(np.exp(1j * (azim - side * np.deg2rad(100))))
        de = elev - h.ear_height
        r += h.ear_size * np.exp(-0.5 * ((da / 0.13) ** 2 + (de / 0.24) ** 2))
    r += h.hair_thickness * hair_weight(dirs, h)
    return r


def hair_weight(dirs: np.ndarray, h: HeadParams) -> np.ndarray:
    """[N] in [0, 1]: hair coverage of head directions (top and back of the skull, above the ears)."""
    elev = np.arcsin(np.clip(dirs[:, 1], -1, 1))
    azim = np.abs(np.arctan2(dirs[:, 0], dirs[:, 2]))  # 0 front .. pi back
    # hairline elevation: high at the front (forehead), above the ears at the sides, low at the nape
    line = np.interp(azim, [0, 0.9, 1.45, 1.85, 2.4, np.pi], [0.62, 0.42, 0.30, 0.22, -0.15, -0.35]) + h.hairline
    t = np.clip((elev - line) / 0.08 + 0.5, 0, 1)
    return t * t * (3 - 2 * t)


@functools.lru_cache(maxsize=1)
def head_topology() -> tuple[np.ndarray, int]:
    """Faces [F, 3] of the closed coarse mesh (template face + head rings + back pole) and its vertex count."""
    B = boundary_loop()
    nb = len(B)
    faces = [load_canonical_face().faces]
    ring = [B]
    n = N_FACE
    for _ in range(HEAD_RINGS):
        ring.append(np.arange(n, n + nb))
        n += nb
    pole = n
    n += 1
    for j in range(HEAD_RINGS):
        a, r = ring[j], ring[j + 1]
        a1, r1 = np.roll(a, -1), np.roll(r, -1)
        faces.append(np.stack([a1, a, r], 1))
        faces.append(np.stack([a1, r, r1], 1))
    r = ring[-1]
    faces.append(np.stack([np.roll(r, -1), r, np.full(nb, pole)], 1))
    return np.concatenate(faces).astype(np.int64), n


def head_vertices(face: np.ndarray, h: HeadParams) -> np.ndarray:
    """Coarse head vertices [HEAD_RINGS * 36 + 1, 3] mm around ``face [468, 3]`` (ring by ring, then the pole)."""
    B = face[boundary_loop()]
    c = h.center
    v = B - c
    rad0 = np.linalg.norm(v, axis=1)
    u = v / rad0[:, None]
    theta0 = np.arccos(np.clip(u[:, 2], -1, 1))  # angle from +z (the face direction)
    phi = np.arctan2(u[:, 1], u[:, 0])  # azimuth around z
    off0 = rad0 - head_radius(u, h)
    out = []
    for j in range(1, HEAD_RINGS + 1):
        s = j / (HEAD_RINGS + 1)
        th = theta0 + (np.pi - theta0) * s
        d = np.stack([np.sin(th) * np.cos(phi), np.sin(th) * np.sin(phi), np.cos(th)], 1)
        r = head_radius(d, h) + off0 * np.exp(-j / 1.5)
        out.append(c + d * r[:, None])
    back = np.array([[0.0, 0.0, -1.0]])
    out.append(c + back * head_radius(back, h)[:, None])
    return np.concatenate(out)


# ---------------------------------------------------------------------------------- subdivision


@functools.lru_cache(maxsize=2)
def fine_topology(levels: int) -> Subdivision:
    faces, n = head_topology()
    return subdivision(faces, n, levels)


def coarse_face_of_fine(levels: int) -> np.ndarray:
    """[F_fine] index of the coarse face each fine face descends from."""
    sub = fine_topology(levels)
    return np.arange(len(sub.faces)) // (4**levels)


@dataclasses.dataclass
class FaceGeometry:
    """Coarse and fine geometry of one face (mm, head frame)."""

    coarse: np.ndarray  # [Nc, 3] coarse closed mesh vertices (face 0..467, then head)
    fine: np.ndarray  # [Nf, 3] Loop-subdivided, before mesoscopic detail
    face_mask: np.ndarray  # [Ff] bool, fine faces that descend from template faces
    uvs: np.ndarray  # [Nf, 2] template uvs (meaningful on face vertices)
    levels: int


def build_face(identity: Identity, expression: str, levels: int = 4) -> FaceGeometry:
    """Coarse face + expression + head, Loop-subdivided ``levels`` times."""
    T = template_mm()
    face = T + identity.face_offsets
    face = face + expression_offsets(expression, face, identity.expression_gain)
    head = head_vertices(face, identity.head)
    coarse = np.concatenate([face, head]) * identity.scale
    sub = fine_topology(levels)
    fine = sub.S @ coarse
    uv0 = np.zeros((len(coarse), 2))
    uv0[:N_FACE] = load_canonical_face().uvs
    uvs = sub.M @ uv0
    n_face_coarse = len(load_canonical_face().faces)
    face_mask = coarse_face_of_fine(levels) < n_face_coarse
    return FaceGeometry(coarse, fine, face_mask, uvs, levels)
