"""Loop subdivision as sparse operators (topology only, so computed once per topology and cached).

One level splits every triangle into four with a new vertex per edge. Old vertices keep their
indices (vertex i stays vertex i) and the new vertex of unique edge e gets index ``N + e``; the
children of face f are faces ``4 f .. 4 f + 3``, so after L levels fine face k descends from coarse
face ``k // 4**L``.

Operators map coarse per-vertex values to fine ones: ``S`` applies Loop's masks (a smooth limit
surface for positions; boundary edges and vertices follow the curve rules), ``M`` interpolates
linearly (edge midpoints), and ``M_uv`` does the same on the uv topology, so uvs stay exactly
barycentric inside each coarse triangle.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import scipy.sparse as sp

from mvfr.mesh_io import Mesh


def mesh_edges(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique undirected edges ``[E, 2]`` (sorted pairs) and ``face_edges [F, 3]``: edge k of face f
    joins corners k and k+1 (mod 3)."""
    faces = np.asarray(faces, dtype=np.int64)
    he = np.stack([faces, np.roll(faces, -1, axis=1)], axis=-1).reshape(-1, 2)  # [3F, 2]
    lo, hi = he.min(axis=1), he.max(axis=1)
    n = int(hi.max()) + 1 if len(hi) else 1
    keys, inv = np.unique(lo * n + hi, return_inverse=True)  # 1-D keys: same (lexicographic) order, much faster
    return np.stack([keys // n, keys % n], axis=1), inv.reshape(-1, 3)


def _subdivide_once(faces: np.ndarray, n: int) -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray]:
    """One Loop step on a triangle mesh with ``n`` vertices.

    Returns ``S [n + E, n]`` (Loop masks: even vertices first, then one vertex per edge),
    ``M [n + E, n]`` (linear: identity and edge midpoints) and the new faces [4F, 3] (CCW kept).
    Boundary rules: boundary edge -> midpoint; boundary vertex -> 3/4 v + 1/8 (two boundary
    neighbours); a vertex on more than one boundary loop (non-manifold) stays where it is.
    """
    faces = np.asarray(faces, dtype=np.int64)
    F = len(faces)
    edges, fe = mesh_edges(faces)
    E = len(edges)
    count = np.bincount(fe.ravel(), minlength=E)
    boundary = count == 1

    # odd vertices -----------------------------------------------------------------------------
    rows, cols, vals = [], [], []
    er = n + np.arange(E)
    # endpoints: 3/8 interior, 1/2 boundary
    wend = np.where(boundary, 0.5, 0.375)
    rows += [er, er]
    cols += [edges[:, 0], edges[:, 1]]
    vals += [wend, wend]
    # opposite vertices: 1/8 each, interior edges only (every face adds its opposite corner)
    opp = faces[:, [2, 0, 1]]  # corner opposite edge k (edge k joins k, k+1)
    fe_flat, opp_flat = fe.ravel(), opp.ravel()
    interior = ~boundary[fe_flat]
    rows.append(n + fe_flat[interior])
    cols.append(opp_flat[interior])
    vals.append(np.full(interior.sum(), 0.125))
    # (edges with > 2 faces are non-manifold; their opposite weights then sum to > 1/4, normalise)

    # even vertices ----------------------------------------------------------------------------
    nbr_i = np.concatenate([edges[:, 0], edges[:, 1]])
    nbr_j = np.concatenate([edges[:, 1], edges[:, 0]])
    nbr_b = np.concatenate([boundary, boundary])
    valence = np.bincount(nbr_i, minlength=n)
    nb_count = np.bincount(nbr_i[nbr_b], minlength=n)
    is_bnd = nb_count > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        beta = np.where(
            valence > 3,
            (1.0 / np.maximum(valence, 1)) * (0.625 - (0.375 + 0.25 * np.cos(2 * np.pi / np.maximum(valence, 1))) ** 2),
            3.0 / 16.0,
        )
    beta = np.where(valence > 0, beta, 0.0)
    keep = is_bnd & (nb_count != 2)
    self_w = np.where(is_bnd, np.where(keep, 1.0, 0.75), 1.0 - valence * beta)
    rows.append(np.arange(n))
    cols.append(np.arange(n))
    vals.append(self_w)
    # interior vertices: beta to every neighbour
    m_int = ~is_bnd[nbr_i]
    rows.append(nbr_i[m_int])
    cols.append(nbr_j[m_int])
    vals.append(beta[nbr_i[m_int]])
    # boundary vertices with two boundary neighbours: 1/8 to each
    m_b = nbr_b & is_bnd[nbr_i] & ~keep[nbr_i]
    rows.append(nbr_i[m_b])
    cols.append(nbr_j[m_b])
    vals.append(np.full(m_b.sum(), 0.125))

    S = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n + E, n))
    rs = np.asarray(S.sum(1)).ravel()
    S = sp.diags(1.0 / rs) @ S  # exact partition of unity (also fixes non-manifold edges)

    M = sp.vstack(
        [
            sp.identity(n, format="csr"),
            sp.csr_matrix((np.full(2 * E, 0.5), (np.repeat(np.arange(E), 2), edges.ravel())), shape=(E, n)),
        ]
    ).tocsr()

    a, b, c = faces[:, 0], faces[:, 1], faces[:, 2]
    ab, bc, ca = n + fe[:, 0], n + fe[:, 1], n + fe[:, 2]
    new_faces = np.stack(  # children of face f are 4f .. 4f + 3
        [np.stack([a, ab, ca], 1), np.stack([ab, b, bc], 1), np.stack([ca, bc, c], 1), np.stack([ab, bc, ca], 1)], 1
    ).reshape(-1, 3)
    assert new_faces.shape == (4 * F, 3)
    return S.tocsr(), M, new_faces


@dataclasses.dataclass
class Subdivision:
    """Loop subdivision of a fixed topology, ``levels`` times, as sparse operators.

    positions [N_k, 3] = ``S @ control [N, 3]``; uvs [T_k, 2] = ``M_uv @ uvs [T, 2]``.
    The first N rows of ``S`` belong to the control vertices (vertex i stays vertex i).
    """

    levels: int
    S: sp.csr_matrix  # [N_k, N] Loop masks
    faces: np.ndarray  # [F_k, 3]
    M_uv: sp.csr_matrix | None  # [T_k, T]
    face_uvs: np.ndarray | None  # [F_k, 3]
    M: sp.csr_matrix  # [N_k, N] linear (midpoint) interpolation on the vertex topology
    num_vertices: tuple[int, ...]  # vertices after each level, (N, N_1, ..., N_k)

    def positions(self, control: np.ndarray) -> np.ndarray:
        return np.asarray(self.S @ control)


def _compose(faces: np.ndarray, n: int, levels: int):
    """Composite Loop and linear operators of ``levels`` levels, the fine faces and vertex counts."""
    S = sp.identity(n, format="csr")
    M = sp.identity(n, format="csr")
    f = faces
    counts = [n]
    for _ in range(levels):
        S1, M1, f = _subdivide_once(f, S.shape[0])
        S, M = (S1 @ S).tocsr(), (M1 @ M).tocsr()
        counts.append(S.shape[0])
    return S, M, f, tuple(counts)


@functools.lru_cache(maxsize=8)
def _subdivision_cached(faces_bytes: bytes, n: int, face_uvs_bytes: bytes | None, t: int, levels: int) -> Subdivision:
    faces = np.frombuffer(faces_bytes, dtype=np.int64).reshape(-1, 3)
    S, M, f, counts = _compose(faces, n, levels)
    M_uv = fu = None
    if face_uvs_bytes is not None:
        face_uvs = np.frombuffer(face_uvs_bytes, dtype=np.int64).reshape(-1, 3)
        _, M_uv, fu, _ = _compose(face_uvs, t, levels)
    return Subdivision(levels, S, f, M_uv, fu, M, counts)


def subdivision(faces: np.ndarray, num_vertices: int, levels: int, face_uvs: np.ndarray | None = None,
                num_uvs: int = 0) -> Subdivision:
    """The (cached) :class:`Subdivision` of a topology; ``face_uvs`` [F, 3] into ``num_uvs`` uvs."""
    if levels < 0:
        raise ValueError(f"subdivision levels must be >= 0, got {levels}")
    fb = np.ascontiguousarray(faces, dtype=np.int64).tobytes()
    ub = None if face_uvs is None else np.ascontiguousarray(face_uvs, dtype=np.int64).tobytes()
    return _subdivision_cached(fb, int(num_vertices), ub, int(num_uvs), int(levels))


def loop_subdivision(mesh: Mesh, levels: int = 1) -> Mesh:
    """Loop-subdivide ``mesh`` ``levels`` times: positions by Loop's masks, uvs linearly (midpoints).

    Vertex i of the input is vertex i of the output (moved by the even mask). Returns a new
    :class:`Mesh` with ``uvs``/``face_uvs`` when the input has them.
    """
    if mesh.uvs is not None:
        sub = subdivision(mesh.faces, len(mesh.vertices), levels, mesh.face_uvs, len(mesh.uvs))
        return Mesh(sub.positions(mesh.vertices), sub.faces, np.asarray(sub.M_uv @ mesh.uvs), sub.face_uvs)
    sub = subdivision(mesh.faces, len(mesh.vertices), levels)
    return Mesh(sub.positions(mesh.vertices), sub.faces)
