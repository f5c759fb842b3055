"""Loop subdivision of a closed triangle mesh as sparse matrices (topology only, so computed once).

One level splits every triangle into four (a new vertex per edge); old vertices keep their indices,
the new vertex of unique edge e gets index ``N + e``, and the children of face f are faces
``4 f .. 4 f + 3``, so after L levels fine face ``k`` descends from coarse face ``k // 4**L``.

Two matrices map coarse per-vertex values to fine ones: ``loop`` (Loop's smoothing weights, a smooth
limit surface for positions) and ``linear`` (midpoint interpolation, for attributes such as uvs,
which stay exactly barycentric inside each coarse triangle).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp


@dataclasses.dataclass
class Subdivision:
    faces: np.ndarray  # [F_L, 3] fine faces
    loop: sp.csr_matrix  # [N_L, N_0]
    linear: sp.csr_matrix  # [N_L, N_0]
    num_vertices: list[int]  # vertices after each level, [N_0, N_1, ..., N_L]


def _one_level(faces: np.ndarray, n: int) -> tuple[np.ndarray, sp.csr_matrix, sp.csr_matrix]:
    F = len(faces)
    he = np.stack([faces, np.roll(faces, -1, axis=1)], axis=-1).reshape(-1, 2)  # half-edges (a, b), [3F, 2]
    opp = np.roll(faces, -2, axis=1).reshape(-1)  # vertex opposite each half-edge
    key = np.minimum(he[:, 0], he[:, 1]) * n + np.maximum(he[:, 0], he[:, 1])
    uniq, inv, counts = np.unique(key, return_inverse=True, return_counts=True)
    if (counts != 2).any():
        raise ValueError("Loop subdivision here needs a closed manifold mesh (every edge shared by two faces)")
    E = len(uniq)
    ea, eb = uniq // n, uniq % n
    # the two opposite vertices of each edge
    order = np.argsort(inv, kind="stable")
    opp_pairs = opp[order].reshape(E, 2)
    # odd (edge) vertices
    rows_o = np.repeat(np.arange(E) + n, 4)
    cols_o = np.stack([ea, eb, opp_pairs[:, 0], opp_pairs[:, 1]], 1).ravel()
    vals_o = np.tile([3 / 8, 3 / 8, 1 / 8, 1 / 8], E)
    # even (old) vertices: Loop's beta
    valence = np.bincount(np.concatenate([ea, eb]), minlength=n).astype(np.float64)
    beta = (5 / 8 - (3 / 8 + np.cos(2 * np.pi / np.maximum(valence, 1)) / 4) ** 2) / np.maximum(valence, 1)
    rows_e = np.concatenate([np.arange(n), ea, eb])
    cols_e = np.concatenate([np.arange(n), eb, ea])
    vals_e = np.concatenate([1 - valence * beta, beta[ea], beta[eb]])
    loop = sp.csr_matrix(
        (np.concatenate([vals_e, vals_o]), (np.concatenate([rows_e, rows_o]), np.concatenate([cols_e, cols_o]))),
        shape=(n + E, n),
    )
    lin = sp.csr_matrix(
        (np.concatenate([np.ones(n), np.full(2 * E, 0.5)]),
         (np.concatenate([np.arange(n), np.arange(E) + n, np.arange(E) + n]), np.concatenate([np.arange(n), ea, eb]))),
        shape=(n + E, n),
    )
    m = (inv + n).reshape(F, 3)  # midpoint of edges (a,b), (b,c), (c,a)
    a, b, c = faces[:, 0], faces[:, 1], faces[:, 2]
    mab, mbc, mca = m[:, 0], m[:, 1], m[:, 2]
    new = np.stack(
        [np.stack([a, mab, mca], 1), np.stack([b, mbc, mab], 1), np.stack([c, mca, mbc], 1), np.stack([mab, mbc, mca], 1)],
        axis=1,
    ).reshape(-1, 3)
    return new, loop, lin


def loop_subdivision(faces: np.ndarray, num_vertices: int, levels: int) -> Subdivision:
    """Composite Loop/linear subdivision matrices of ``levels`` levels for a closed mesh."""
    faces = np.asarray(faces, dtype=np.int64)
    loop = sp.identity(num_vertices, format="csr")
    lin = sp.identity(num_vertices, format="csr")
    counts = [num_vertices]
    n = num_vertices
    for _ in range(levels):
        faces, lo, li = _one_level(faces, n)
        loop = (lo @ loop).tocsr()
        lin = (li @ lin).tocsr()
        n = lo.shape[0]
        counts.append(n)
    return Subdivision(faces, loop, lin, counts)
