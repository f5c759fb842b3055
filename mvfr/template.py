"""The pipeline's face template: the base model's mean face (:mod:`mvfr.face_model`), its topology and UV chart.

Every map, volume, texture and output mesh lives in this one layout. ``load_template()`` is the
base model's mean face (mm, ``predefine_data/face_template.obj`` holds the same mesh to look at);
``load_canonical_face()`` is MediaPipe's canonical face (468 vertices = the landmarks, cm), kept for
what needs the landmark mesh itself (the frozen v1 synthesiser, landmark mirror symmetry).
Licences: predefine_data/README.md.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from mvfr.mesh_io import Mesh, read_obj

PREDEFINE_DIR = Path(__file__).resolve().parent.parent / "predefine_data"
CANONICAL_FACE_OBJ = PREDEFINE_DIR / "canonical_face_model.obj"
TEMPLATE_OBJ = PREDEFINE_DIR / "face_template.obj"
LANDMARK_MODEL = PREDEFINE_DIR / "face_landmarker_v2.task"
FACIAL_MASK_PNG = PREDEFINE_DIR / "facial_mask.png"
NUM_LANDMARKS = 468
CANONICAL_MM_PER_UNIT = 10.0  # the canonical face is in cm


def load_template() -> Mesh:
    """The base model's mean face: ``vertices [N, 3]`` mm, ``faces [F, 3]``, one uv per vertex
    (``uvs[i]`` belongs to ``vertices[i]``, ``face_uvs == faces``); a fresh copy."""
    from mvfr.face_model import load_face_model

    return load_face_model().mesh()


@functools.lru_cache(maxsize=2)
def _load_obj(path: str) -> Mesh:
    mesh = read_obj(path)
    uv = mesh.vertex_uvs()  # one uv per vertex: re-index uvs by vertex so that faces index both
    return Mesh(mesh.vertices, mesh.faces, uv, mesh.faces.copy())


def load_canonical_face() -> Mesh:
    """MediaPipe's canonical face (468 vertices = the landmarks, 898 triangles, cm, its own uvs); a fresh copy."""
    m = _load_obj(str(CANONICAL_FACE_OBJ))
    return Mesh(m.vertices.copy(), m.faces.copy(), m.uvs.copy(), m.face_uvs.copy())
