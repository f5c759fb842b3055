"""The face template: MediaPipe's canonical face mesh shipped in ``predefine_data/``.

468 vertices (vertex i is MediaPipe face landmark i), 898 triangles, one uv per vertex, units cm,
faces counter-clockwise seen from the front (+z). Licence: predefine_data/LICENSE_mediapipe_Apache-2.0.txt.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from mvfr.mesh_io import Mesh, read_obj

PREDEFINE_DIR = Path(__file__).resolve().parent.parent / "predefine_data"
CANONICAL_FACE_OBJ = PREDEFINE_DIR / "canonical_face_model.obj"
TEMPLATE_OBJ = CANONICAL_FACE_OBJ
LANDMARK_MODEL = PREDEFINE_DIR / "face_landmarker_v2.task"
FACIAL_MASK_PNG = PREDEFINE_DIR / "facial_mask.png"
NUM_LANDMARKS = 468
TEMPLATE_MM_PER_UNIT = 10.0  # the canonical face is in cm


@functools.lru_cache(maxsize=4)
def _load(path: str) -> Mesh:
    mesh = read_obj(path)
    # One uv per vertex: re-index uvs by vertex so that faces index both.
    uv = mesh.vertex_uvs()
    return Mesh(mesh.vertices, mesh.faces, uv, mesh.faces.copy())


def load_template(path: str | Path | None = None) -> Mesh:
    """The template mesh with per-vertex uvs (``uvs[i]`` belongs to ``vertices[i]``); a fresh copy."""
    m = _load(str(path or TEMPLATE_OBJ))
    return Mesh(m.vertices.copy(), m.faces.copy(), m.uvs.copy(), m.face_uvs.copy())


def load_canonical_face() -> Mesh:
    """MediaPipe's canonical face (468 vertices = the landmarks, 898 triangles, cm, its own uvs); a fresh copy.

    For what needs the landmark mesh itself, whatever :data:`TEMPLATE_OBJ` is: the frozen v1
    synthesiser (``mvfr/synthesis/v1``), landmark symmetry.
    """
    return load_template(CANONICAL_FACE_OBJ)
