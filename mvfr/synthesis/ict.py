"""The ICT Face Model (light): a linear morphable whole head, loaded from ``predefine_data``.

``predefine_data/ict_face_model.npz`` (MIT, USC ICT; see ``predefine_data/README.md``) holds a
neutral head, 100 identity modes and 53 ARKit-style expression shapes on one topology, in cm, with
y up and the face looking along +z. This module converts to **mm** on load and gives:

* :func:`load_model` -> :class:`ICTModel` (cached): triangulated faces (every quad split along its
  0-2 diagonal), per-triangle part labels, uvs;
* :meth:`ICTModel.head` -> vertices ``[V, 3]`` mm of ``neutral + sum w_i identity_i + sum e_j expression_j``;
* :func:`sample_identity_weights`: ``w ~ N(0, scale^2)`` per mode, as the toolkit's own sampler.

Head frame (the synthesiser's world, mm): the model's own frame, x towards the subject's left,
y up, z out of the face. uvs are in the model's tiles: the face area uses u in [0, 1], the head
and neck u in [1, 2] (shared with the mouth socket and eye sockets), gums/tongue [2, 3], teeth
[3, 4], eyeballs [0, 1] each (sclera and iris), eyelashes [6, 7].
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np

PREDEFINE = Path(__file__).resolve().parent.parent.parent / "predefine_data"
ICT_NPZ = PREDEFINE / "ict_face_model.npz"
ICT_INDICES = PREDEFINE / "vertex_indices.json"
CM_TO_MM = 10.0

# vertex and (quad) face ranges of the parts, 0-based inclusive (the toolkit's documentation)
PART_VERTICES = {
    "face": (0, 9408), "head": (9409, 11247), "mouth_socket": (11248, 13293),
    "eye_socket_left": (13294, 13677), "eye_socket_right": (13678, 14061), "gums_tongue": (14062, 17038),
    "teeth": (17039, 21450), "eyeball_left": (21451, 23020), "eyeball_right": (23021, 24590),
    "lacrimal_left": (24591, 24794), "lacrimal_right": (24795, 24998), "eye_blend_left": (24999, 25022),
    "eye_blend_right": (25023, 25046), "eye_occlusion_left": (25047, 25198), "eye_occlusion_right": (25199, 25350),
    "eyelashes_left": (25351, 26034), "eyelashes_right": (26035, 26718),
}
PART_FACES = {
    "face": (0, 9229), "head": (9230, 11143), "mouth_socket": (11144, 13225),
    "eye_socket_left": (13226, 13629), "eye_socket_right": (13630, 14033), "gums_tongue": (14034, 17005),
    "teeth": (17006, 21495), "eyeball_left": (21496, 23093), "eyeball_right": (23094, 24691),
    "lacrimal_left": (24692, 24854), "lacrimal_right": (24855, 25017), "eye_blend_left": (25018, 25032),
    "eye_blend_right": (25033, 25047), "eye_occlusion_left": (25048, 25175), "eye_occlusion_right": (25176, 25303),
    "eyelashes_left": (25304, 25843), "eyelashes_right": (25844, 26383),
}
PART_NAMES = tuple(PART_FACES)
IRIS_VERTICES = {"left": (22221, 23020), "right": (23791, 24590)}  # the rest of each eyeball is sclera


@dataclasses.dataclass(frozen=True)
class ICTModel:
    """The model in mm. Triangles are the quads split in two (triangles kept as they are)."""

    neutral: np.ndarray  # [V, 3] mm
    identity: np.ndarray  # [100, V, 3] mm offsets
    expression: np.ndarray  # [53, V, 3] mm offsets
    identity_names: tuple[str, ...]
    expression_names: tuple[str, ...]
    uv: np.ndarray  # [T, 2]
    quads: np.ndarray  # [Q, 4] vertex ids (4th = -1 for a triangle)
    faces: np.ndarray  # [F, 3] triangles
    faces_uv: np.ndarray  # [F, 3] uv ids
    face_quad: np.ndarray  # [F] source quad of each triangle
    face_part: np.ndarray  # [F] index into PART_NAMES
    landmarks68: np.ndarray  # [68] vertex ids (iBUG-68 order, the toolkit's list)

    @property
    def num_vertices(self) -> int:
        return len(self.neutral)

    def head(self, identity_weights: np.ndarray | None = None, expression_weights: np.ndarray | None = None) -> np.ndarray:
        """``[V, 3]`` mm: ``neutral + identity_weights @ identity + expression_weights @ expression``."""
        v = self.neutral.astype(np.float64)
        if identity_weights is not None:
            w = np.asarray(identity_weights, dtype=np.float64)
            if w.shape != (len(self.identity),):
                raise ValueError(f"identity_weights must have shape ({len(self.identity)},), got {w.shape}")
            v = v + np.tensordot(w, self.identity, axes=1)
        if expression_weights is not None:
            e = np.asarray(expression_weights, dtype=np.float64)
            if e.shape != (len(self.expression),):
                raise ValueError(f"expression_weights must have shape ({len(self.expression)},), got {e.shape}")
            nz = np.flatnonzero(e)
            if len(nz):
                v = v + np.tensordot(e[nz], self.expression[nz], axes=1)
        return v

    def part_faces(self, *parts: str) -> np.ndarray:
        """Bool ``[F]``: triangles of the named parts."""
        ids = [PART_NAMES.index(p) for p in parts]
        return np.isin(self.face_part, ids)

    def part_vertex_mask(self, *parts: str) -> np.ndarray:
        out = np.zeros(self.num_vertices, dtype=bool)
        for p in parts:
            a, b = PART_VERTICES[p]
            out[a : b + 1] = True
        return out

    def expression_index(self, name: str) -> int:
        try:
            return self.expression_names.index(name)
        except ValueError:
            raise KeyError(f"{name!r} is not an ICT expression shape; known: {', '.join(self.expression_names)}") from None


def triangulate_quads(quads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quads ``[Q, 4]`` (4th = -1 for a triangle) -> triangles ``[F, 3]`` and their quad ``[F]``.

    A quad (a, b, c, d) becomes (a, b, c) and (a, c, d): the winding is kept."""
    quads = np.asarray(quads)
    is_quad = quads[:, 3] >= 0
    q = np.flatnonzero(is_quad)
    first = quads[:, [0, 1, 2]]
    second = quads[q][:, [0, 2, 3]]
    tris = np.concatenate([first, second])
    src = np.concatenate([np.arange(len(quads)), q])
    order = np.argsort(src, kind="stable")  # the two halves of a quad stay neighbours
    return tris[order].astype(np.int64), src[order]


@functools.lru_cache(maxsize=2)
def load_model(path: str | None = None) -> ICTModel:
    """The ICT Face Model in mm (cached per path)."""
    p = Path(path) if path else ICT_NPZ
    if not p.is_file():
        raise FileNotFoundError(f"ICT Face Model not found at {p}; it ships in predefine_data/ (see predefine_data/README.md)")
    d = np.load(p)
    quads = d["faces"].astype(np.int64)
    faces, src = triangulate_quads(quads)
    faces_uv, _ = triangulate_quads(d["faces_uv"].astype(np.int64))
    starts = np.array([PART_FACES[k][0] for k in PART_NAMES])
    part = np.searchsorted(starts, src, side="right") - 1
    lm = np.zeros(68, dtype=np.int64)
    if ICT_INDICES.is_file():
        lm = np.asarray(json.loads(ICT_INDICES.read_text())["idx_to_landmark_verts"], dtype=np.int64)
    arrs = {k: d[k] for k in ("neutral", "identity", "expression")}
    for a in arrs.values():
        a.setflags(write=False)
    return ICTModel(
        neutral=arrs["neutral"] * np.float32(CM_TO_MM), identity=arrs["identity"] * np.float32(CM_TO_MM),
        expression=arrs["expression"] * np.float32(CM_TO_MM),
        identity_names=tuple(str(s) for s in d["identity_names"]), expression_names=tuple(str(s) for s in d["expression_names"]),
        uv=d["uv"].astype(np.float64), quads=quads, faces=faces, faces_uv=faces_uv, face_quad=src, face_part=part,
        landmarks68=lm,
    )


def sample_identity_weights(rng: np.random.Generator, num_modes: int = 100, scale: float = 1.0) -> np.ndarray:
    """Identity weights ``[num_modes]``: ``N(0, scale^2)`` per mode (the toolkit's sampler has scale 1)."""
    return rng.normal(0.0, scale, num_modes)


def uv_tile_map(model: ICTModel, values: np.ndarray, size: int, parts: tuple[str, ...] = ("face",), tile: int = 0,
                renderer=None) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise per-vertex ``values [V, C<=3]`` of the named parts into UV tile ``tile`` (u in [tile, tile+1]).

    Returns ``map [S, S, C]`` float32 (linear inside each triangle) and ``covered [S, S]`` bool, in the
    project's texel convention (row 0 is v near 1; texel (i, j) centre at
    uv = ((j + 0.5) / S + tile, 1 - (i + 0.5) / S)). E.g. ``uv_tile_map(m, m.head(w), 2048)`` is the
    face area's position map in mm.
    """
    from mvfr.render import Renderer

    sel = model.part_faces(*parts)
    tri_uv = model.faces_uv[sel]
    tri_v = model.faces[sel]
    # one rasteriser vertex per (triangle corner): uvs and vertex ids need not share indices
    uv = model.uv[tri_uv.ravel()] - np.array([tile, 0.0])
    vals = np.asarray(values, dtype=np.float64)
    vals = vals[:, None] if vals.ndim == 1 else vals
    attr = vals[tri_v.ravel()]
    own = renderer is None
    r = renderer or Renderer(samples=0)
    try:
        out, covered = r.render_uv(uv, np.arange(len(uv)).reshape(-1, 3), attr, size)
    finally:
        if own:
            r.release()
    return out, covered
