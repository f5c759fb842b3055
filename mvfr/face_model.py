"""The base model of stage 1: a linear morphable face that covers the whole facial region, closed.

``predefine_data/face_model.npz`` (built by ``python -m mvfr.face_model_build``) selects the part of
the ICT Face Model (``predefine_data/ict_face_model.npz``, MIT) that a face scan covers: the narrow
face area (hairline to the neck fold under the chin, ear to ear, eyelids and lips included) and a
margin of three triangle rings beyond it; the eye openings and the mouth opening are closed by fill
patches whose vertices are fixed linear combinations of their hole's rim vertices, so the whole model
stays linear. Its UV chart is its own (a low-distortion flattening of the closed surface, about
1.1 mm per texel at S = 256), so every map, volume, texture and output mesh of the pipeline lives in
one layout with one topology.

Arrays (``N`` vertices, ``F`` triangles, mm, head frame of the ICT model: x to the subject's left,
y up, z out of the face):

* ``mean [N, 3]``, ``identity [Ki, N, 3]``, ``expression [Ke, N, 3]``: the shape is
  ``mean + w @ identity + e @ expression`` (identity weights ~ N(0, 1); expression weights in [0, 1],
  ARKit-style names in ``expression_names``);
* ``faces [F, 3]`` (counter-clockwise seen from outside), ``uvs [N, 2]`` (one uv per vertex, in
  [0, 1]^2, v up);
* ``landmark_face [L]``, ``landmark_bary [L, 3]``: MediaPipe landmark i lies at those barycentrics of
  that triangle (L = 468, the fixed landmark <-> ICT correspondence of
  ``predefine_data/ict_template_correspondence.npz``);
* ``facial [F]`` bool: the triangles of the facial region and the fills (the facial mask in UV);
  the others are the margin;
* ``fill [F]`` bool: the triangles closing the eyes and the mouth;
* ``ict_vertex [N]``: the ICT vertex of each model vertex (-1 for fill vertices), ``ict_uv [N, 2]``
  its uv in the ICT face tile (NaN for fill vertices); ``ict_operator`` (sparse ``[N, V_ict]``) takes
  any per-ICT-vertex array to the model's vertices (:meth:`FaceModel.from_ict`).

Loading needs only numpy (no synthesiser import): the bases are read from the ICT npz and restricted
to the model's vertices.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from mvfr.mesh_io import Mesh

PREDEFINE_DIR = Path(__file__).resolve().parent.parent / "predefine_data"
FACE_MODEL_NPZ = PREDEFINE_DIR / "face_model.npz"
ICT_NPZ = PREDEFINE_DIR / "ict_face_model.npz"
ICT_CM_TO_MM = 10.0


@dataclasses.dataclass(frozen=True)
class FaceModel:
    """See the module docstring; every length in mm."""

    mean: np.ndarray
    identity: np.ndarray
    expression: np.ndarray
    expression_names: tuple[str, ...]
    faces: np.ndarray
    uvs: np.ndarray
    landmark_face: np.ndarray
    landmark_bary: np.ndarray
    facial: np.ndarray
    fill: np.ndarray
    ict_vertex: np.ndarray
    ict_uv: np.ndarray
    ict_operator: sp.csr_matrix

    def from_ict(self, values: np.ndarray) -> np.ndarray:
        """A per-ICT-vertex array ``[V_ict, C]`` (e.g. an ICT head's vertices) on the model's vertices ``[N, C]``."""
        return np.asarray(self.ict_operator @ np.asarray(values, dtype=np.float64))

    @property
    def num_vertices(self) -> int:
        return len(self.mean)

    @property
    def num_landmarks(self) -> int:
        return len(self.landmark_face)

    def shape(self, identity_weights: np.ndarray | None = None, expression_weights: np.ndarray | None = None) -> np.ndarray:
        """Vertices ``[N, 3]`` mm of ``mean + identity_weights @ identity + expression_weights @ expression``."""
        v = self.mean.astype(np.float64)
        if identity_weights is not None:
            v = v + np.tensordot(np.asarray(identity_weights, dtype=np.float64), self.identity, axes=1)
        if expression_weights is not None:
            v = v + np.tensordot(np.asarray(expression_weights, dtype=np.float64), self.expression, axes=1)
        return v

    @functools.cached_property
    def landmark_operator(self) -> sp.csr_matrix:
        """Sparse ``[L, N]``: ``landmark_operator @ vertices`` gives the L landmarks on a model-topology mesh."""
        corners = self.faces[self.landmark_face]  # [L, 3]
        rows = np.repeat(np.arange(self.num_landmarks), 3)
        return sp.csr_matrix((self.landmark_bary.ravel(), (rows, corners.ravel())),
                             shape=(self.num_landmarks, self.num_vertices))

    @functools.cached_property
    def landmark_basis(self) -> tuple[np.ndarray, np.ndarray]:
        """The landmarks of the mean ``[L, 3]`` mm and of every mode ``[L, 3, Ki + Ke]`` (identity, then expression)."""
        modes = np.concatenate([self.identity, self.expression]).astype(np.float64)  # [K, N, 3]
        flat = np.moveaxis(modes, 0, -1).reshape(self.num_vertices, -1)  # [N, 3K]
        basis = np.asarray(self.landmark_operator @ flat).reshape(self.num_landmarks, 3, len(modes))
        return self.landmarks(self.mean), basis

    def landmarks(self, vertices: np.ndarray) -> np.ndarray:
        """The L landmarks ``[L, 3]`` of a mesh with the model's topology (``vertices [N, 3]``, any unit)."""
        return np.asarray(self.landmark_operator @ np.asarray(vertices, dtype=np.float64))

    def mesh(self, vertices: np.ndarray | None = None) -> Mesh:
        """A :class:`Mesh` of the model's topology with its uvs (``vertices`` default: the mean, mm)."""
        v = self.mean if vertices is None else vertices
        return Mesh(np.asarray(v, dtype=np.float64), self.faces.copy(), self.uvs.copy(), self.faces.copy())


def _fill_operator(d) -> sp.csr_matrix:
    """Sparse ``[N, N0]`` taking the ICT-vertex rows to every model vertex (identity on the first N0)."""
    n0 = len(d["ict_vertex_ids"])
    nf = int(d["num_fill"])
    top = sp.identity(n0, format="csr")
    W = sp.csr_matrix((d["fill_values"], (d["fill_rows"], d["fill_cols"])), shape=(nf, n0))
    return sp.vstack([top, W], format="csr")


@functools.lru_cache(maxsize=2)
def _load(model_path: str, ict_path: str) -> FaceModel:
    mp, ip = Path(model_path), Path(ict_path)
    for p, how in ((mp, "python -m mvfr.face_model_build"), (ip, "it ships in predefine_data/ (see predefine_data/README.md)")):
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing; {how}")
    d = np.load(mp)
    ict = np.load(ip)
    ids = d["ict_vertex_ids"].astype(np.int64)
    op = _fill_operator(d)

    def restrict(a: np.ndarray) -> np.ndarray:  # [..., V_ict, 3] cm -> [..., N, 3] mm
        sub = a[..., ids, :].astype(np.float32) * np.float32(ICT_CM_TO_MM)
        flat = np.moveaxis(sub, -2, 0).reshape(len(ids), -1)
        out = np.asarray(op @ flat, dtype=np.float32).reshape((op.shape[0],) + sub.shape[:-2] + (3,))
        return np.moveaxis(out, 0, -2)

    n = op.shape[0]
    select = sp.csr_matrix((np.ones(len(ids)), (np.arange(len(ids)), ids)), shape=(len(ids), ict["neutral"].shape[0]))
    ict_operator = (op @ select).tocsr()
    ict_vertex = np.concatenate([ids, np.full(n - len(ids), -1)])
    ict_uv = np.concatenate([d["ict_uv"], np.full((n - len(ids), 2), np.nan)])
    arrays = dict(mean=restrict(ict["neutral"]).astype(np.float64), identity=restrict(ict["identity"]),
                  expression=restrict(ict["expression"]), faces=d["faces"].astype(np.int64),
                  uvs=d["uvs"].astype(np.float64), landmark_face=d["landmark_face"].astype(np.int64),
                  landmark_bary=d["landmark_bary"].astype(np.float64), facial=d["facial"].astype(bool),
                  fill=d["fill"].astype(bool), ict_vertex=ict_vertex, ict_uv=ict_uv)
    for a in arrays.values():
        a.setflags(write=False)
    return FaceModel(expression_names=tuple(str(s) for s in ict["expression_names"]), ict_operator=ict_operator, **arrays)


def load_face_model(path: str | Path | None = None, ict_path: str | Path | None = None) -> FaceModel:
    """The shipped base model (cached; its arrays are read-only)."""
    return _load(str(path or FACE_MODEL_NPZ), str(ict_path or ICT_NPZ))
