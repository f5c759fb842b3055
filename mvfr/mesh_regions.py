"""Sets of triangles of a mesh (``[F] bool`` flags): growing, smoothing and splitting them.

Pure functions of ``faces [F, 3]`` (vertex indices); used to cut the facial region, the nostrils and the
base model's margin out of the ICT topology (:mod:`mvfr.synthesis.head`, :mod:`mvfr.face_model_build`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from mvfr.subdivision import mesh_edges


def grow(selected: np.ndarray, allowed: np.ndarray, faces: np.ndarray, rings: int) -> np.ndarray:
    """``selected [F] bool`` grown ``rings`` times by the ``allowed`` triangles sharing a vertex with it."""
    out = np.asarray(selected, dtype=bool).copy()
    for _ in range(rings):
        used = np.zeros(int(faces.max()) + 1, dtype=bool)
        used[faces[out].ravel()] = True
        out |= allowed & used[faces].any(1)
    return out


def close_notches(selected: np.ndarray, faces: np.ndarray, candidates: np.ndarray, passes: int = 3) -> np.ndarray:
    """Add the ``candidates`` triangles with at least two edge neighbours in ``selected`` (smooths a ragged set)."""
    edges, fe = mesh_edges(faces)
    out = np.asarray(selected, dtype=bool).copy()
    for _ in range(passes):
        cnt = np.zeros(len(edges))
        np.add.at(cnt, fe[out].ravel(), 1)  # selected faces per edge
        nb = ((cnt[fe] - out[:, None]) > 0).sum(1)  # edge neighbours of each face in the set
        add = candidates & ~out & (nb >= 2)
        if not add.any():
            break
        out |= add
    return out


def components(selected: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Per triangle ``[F]`` int: the label of its vertex-connected piece of ``selected`` (-1 outside it)."""
    import scipy.sparse.csgraph as cg

    ids = np.flatnonzero(selected)
    out = np.full(len(faces), -1)
    if len(ids) == 0:
        return out
    f = faces[ids]
    n = int(faces.max()) + 1
    adj = sp.coo_matrix((np.ones(f.size), (f.ravel(), np.roll(f, 1, 1).ravel())), shape=(n, n))
    _, label = cg.connected_components(adj, directed=False)
    out[ids] = label[f[:, 0]]
    return out


def largest_component(selected: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """``selected [F] bool`` reduced to its largest vertex-connected piece."""
    lab = components(selected, faces)
    if (lab < 0).all():
        return np.zeros(len(faces), dtype=bool)
    return lab == np.bincount(lab[lab >= 0]).argmax()


def fill_enclosed(selected: np.ndarray, faces: np.ndarray, within: np.ndarray) -> np.ndarray:
    """``selected`` plus every piece of ``within & ~selected`` but the largest (islands it encloses)."""
    rest = within & ~selected
    return selected | (rest & ~largest_component(rest, faces))
