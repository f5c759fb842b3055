"""Build the base model ``predefine_data/face_model.npz`` (``python -m mvfr.face_model_build``).

See :mod:`mvfr.face_model` for what the model is. The steps, on the ICT Face Model (mm):

1. **Triangles.** The facial region of the scans (:data:`mvfr.synthesis.head.REGION_QUADS`, less the
   neck :data:`~mvfr.synthesis.head.REGION_EXCLUDE_BELOW_CHIN_MM` below the chin, less the nostril
   interiors :func:`~mvfr.synthesis.head.nostril_interior_triangles`), grown by :data:`MARGIN_RINGS`
   rings of face-area triangles (the margin: the fitted surface reaches past the region's border,
   so a base mesh a few mm off still covers it). The selection has no uv seam.
2. **Fills.** Every hole of the selection (two eye openings, the mouth, two nostrils) is closed by a
   strip of rows between its two halves (:func:`fill_hole`): the rim splits at its two farthest
   vertices into an upper and a lower chain, each row is a blend of the two chains at equal arc
   length, so every fill vertex is a fixed linear combination of at most four rim vertices.
3. **Chart.** The closed disc is flattened with SLIM (symmetric Dirichlet, free boundary; libigl)
   starting from the ICT uvs, turned upright by the similarity onto the ICT uvs and scaled into
   ``[UV_MARGIN, 1 - UV_MARGIN]^2``. The shape it is flattened on is the mean head with the jaw
   slightly open (:data:`CHART_JAW_OPEN`), so the mouth fill gets some texels.
4. **Landmarks.** The 468 MediaPipe landmarks of the fixed correspondence
   (``predefine_data/ict_template_correspondence.npz``) are ICT triangles of the selection.

Writes ``face_model.npz`` (selection, fill operator, faces, uvs, landmarks, facial/fill flags),
``face_template.obj`` (the mean face in mm with its uvs, to look at) and ``facial_mask.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp

MARGIN_RINGS = 3
UV_MARGIN = 0.01
CHART_JAW_OPEN = 0.3
SLIM_ITERATIONS = 40
FILL_ROW_SPACING_MM = 2.5


# --------------------------------------------------------------------------------------- selection


def select_triangles(rings: int = MARGIN_RINGS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ICT triangle flags ``[F_ict]``: the model's triangles, the facial region among them, the nostril holes."""
    from mvfr.mesh_regions import grow
    from mvfr.synthesis import head, ict

    m = ict.load_model()
    neutral = m.head()
    face = m.part_faces("face")
    low = head.chin_y(neutral) - head.REGION_EXCLUDE_BELOW_CHIN_MM
    q = m.face_quad
    region = face & (q >= head.REGION_QUADS[0]) & (q <= head.REGION_QUADS[1]) & (neutral[m.faces][:, :, 1] > low).all(1)
    nostril = np.zeros(len(m.faces), dtype=bool)
    nostril[head.nostril_interior_triangles()] = True
    region &= ~nostril
    selected = grow(region, face & ~nostril, m.faces, rings)
    return selected, region, nostril


# ------------------------------------------------------------------------------------------- fills


def _arc_params(points: np.ndarray) -> np.ndarray:
    d = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))]
    return d / max(d[-1], 1e-12)


def _at(t: np.ndarray, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Segment index ``[K]`` and weight of its far end ``[K]`` of arc-length parameters ``t`` on a chain."""
    j = np.clip(np.searchsorted(params, t, side="right") - 1, 0, len(params) - 2)
    w = (t - params[j]) / np.maximum(params[j + 1] - params[j], 1e-12)
    return j, np.clip(w, 0.0, 1.0)


def strip(p_ids: np.ndarray, p_t: np.ndarray, q_ids: np.ndarray, q_t: np.ndarray) -> list[tuple[int, int, int]]:
    """Triangles between two polylines with parameters in [0, 1] that share their first and last vertex;
    each triangle is (p_i, p_i+1, q_j) or (p_i, q_j+1, q_j): one orientation throughout."""
    tris, i, j = [], 0, 0
    while i < len(p_ids) - 1 or j < len(q_ids) - 1:
        if j == len(q_ids) - 1 or (i < len(p_ids) - 1 and p_t[i + 1] <= q_t[j + 1]):
            tris.append((p_ids[i], p_ids[i + 1], q_ids[j]))
            i += 1
        else:
            tris.append((p_ids[i], q_ids[j + 1], q_ids[j]))
            j += 1
    return [t for t in tris if len(set(t)) == 3]


def fill_hole(loop: np.ndarray, vertices: np.ndarray, first_new: int, spacing: float):
    """Close the hole with rim ``loop [B]`` (vertex ids) of a mesh with ``vertices [N, 3]``.

    Returns ``weights`` (a list of ``{rim vertex: weight}``, one per new vertex, numbered from
    ``first_new``) and ``triangles [T, 3]`` (not yet oriented)."""
    P = vertices[loop]
    D = np.linalg.norm(P[:, None] - P[None], axis=-1)
    a, b = sorted(np.unravel_index(int(np.argmax(D)), D.shape))
    upper = loop[a : b + 1]
    lower = np.r_[loop[b:], loop[: a + 1]][::-1]
    tu, tl = _arc_params(vertices[upper]), _arc_params(vertices[lower])
    count = max(len(upper), len(lower)) - 2
    t = np.arange(1, count + 1) / (count + 1)
    ju, wu = _at(t, tu)
    jl, wl = _at(t, tl)
    gap = np.linalg.norm((1 - wu)[:, None] * vertices[upper[ju]] + wu[:, None] * vertices[upper[ju + 1]]
                         - (1 - wl)[:, None] * vertices[lower[jl]] - wl[:, None] * vertices[lower[jl + 1]], axis=1)
    rows = int(np.clip(round(gap.max() / spacing) - 1, 1, 8))
    weights, chains, nxt = [], [(upper, tu)], first_new
    for r in range(1, rows + 1):
        s = r / (rows + 1)
        for k in range(count):
            w = {}
            for v, x in ((upper[ju[k]], (1 - s) * (1 - wu[k])), (upper[ju[k] + 1], (1 - s) * wu[k]),
                         (lower[jl[k]], s * (1 - wl[k])), (lower[jl[k] + 1], s * wl[k])):
                w[int(v)] = w.get(int(v), 0.0) + x
            weights.append(w)
        chains.append((np.r_[upper[0], np.arange(nxt, nxt + count), upper[-1]], np.r_[0.0, t, 1.0]))
        nxt += count
    chains.append((lower, tl))
    tris = []
    for (p, pt), (q, qt) in zip(chains[:-1], chains[1:]):
        tris += strip(p, pt, q, qt)
    return weights, np.asarray(tris, dtype=np.int64)


def _orient_like(tris: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Flip ``tris`` when they run a shared edge the same way as ``faces`` (then both sides would disagree)."""
    directed = {(int(a), int(b)) for f in faces for a, b in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0]))}
    for f in tris:
        for a, b in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0])):
            if (int(a), int(b)) in directed:
                return tris[:, ::-1].copy()
            if (int(b), int(a)) in directed:
                return tris
    raise ValueError("a fill shares no edge with the mesh")


def close_holes(vertices: np.ndarray, faces: np.ndarray, spacing: float = FILL_ROW_SPACING_MM):
    """Fill every boundary loop of a disc-with-holes mesh but the longest (the outer rim).

    Returns ``fill_op`` (sparse ``[K, N]``: the K new vertices from the N old ones), the new
    triangles ``[T, 3]`` (indices into the N + K vertices) and the rim loops that were closed."""
    import igl

    loops = sorted((np.asarray(lp) for lp in igl.boundary_loop_all(np.ascontiguousarray(faces, dtype=np.int32))), key=len)
    n = len(vertices)
    weights, new_faces = [], []
    for loop in loops[:-1]:
        w, tris = fill_hole(loop, vertices, n + len(weights), spacing)
        weights += w
        new_faces.append(_orient_like(tris, faces))
    rows = np.repeat(np.arange(len(weights)), [len(w) for w in weights])
    cols = np.array([k for w in weights for k in w], dtype=np.int64)
    vals = np.array([x for w in weights for x in w.values()])
    op = sp.csr_matrix((vals, (rows, cols)), shape=(len(weights), n))
    return op, np.concatenate(new_faces), loops[:-1]


# ------------------------------------------------------------------------------------------- chart


def signed_uv_area(uvs: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Signed double area ``[F]`` of every face in uv (positive: counter-clockwise)."""
    t = np.asarray(uvs)[np.asarray(faces)]
    a, b = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
    return a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]


def tutte_embedding(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Fold-free uvs ``[N, 2]`` of a disc: the rim on the unit circle by arc length, every other vertex the
    mean of its neighbours (Tutte: a convex rim makes the embedding bijective)."""
    import igl
    import scipy.sparse.linalg as spla

    from mvfr.fitting import graph_laplacian
    from mvfr.subdivision import mesh_edges

    rim = np.asarray(igl.boundary_loop(np.ascontiguousarray(faces, dtype=np.int32)))
    t = 2 * np.pi * _arc_params(np.r_[vertices[rim], vertices[rim[:1]]])[:-1]
    edges, _ = mesh_edges(faces)
    L = graph_laplacian(edges, np.ones(len(edges)), len(vertices)).tocsr()
    inner = np.setdiff1d(np.arange(len(vertices)), rim)
    uv = np.zeros((len(vertices), 2))
    uv[rim] = np.c_[np.cos(t), np.sin(t)]
    rhs = -(L[inner][:, rim] @ uv[rim])
    uv[inner] = spla.splu(L[inner][:, inner].tocsc()).solve(rhs)
    return uv


def flatten(vertices: np.ndarray, faces: np.ndarray, upright_uv: np.ndarray, iterations: int = SLIM_ITERATIONS) -> np.ndarray:
    """Low-distortion uvs ``[N, 2]`` of a disc (SLIM, symmetric Dirichlet, free boundary, from its Tutte
    embedding), turned by the similarity onto ``upright_uv [N, 2]`` (the ICT uvs: face up, not mirrored)
    and scaled into ``[UV_MARGIN, 1 - UV_MARGIN]^2``."""
    import igl

    from mvfr.fitting import umeyama

    init = tutte_embedding(vertices, faces)
    if (signed_uv_area(init, faces) <= 0).any():
        init[:, 1] *= -1  # the rim loop ran clockwise
    data = igl.slim_precompute(np.asfortranarray(vertices, dtype=np.float64), np.asfortranarray(faces, dtype=np.int32),
                               np.asfortranarray(init), igl.MappingEnergyType.SYMMETRIC_DIRICHLET,
                               np.zeros(0, np.int32), np.zeros((0, 2)), 0.0)
    uv = np.asarray(igl.slim_solve(data, iterations))
    pad = np.zeros((len(uv), 1))
    s, R, t = umeyama(np.c_[uv, pad], np.c_[upright_uv, pad])
    uv = (np.c_[uv, pad] @ R.T)[:, :2]
    lo, hi = uv.min(0), uv.max(0)
    scale = (1.0 - 2 * UV_MARGIN) / (hi - lo).max()
    uv = (uv - 0.5 * (lo + hi)) * scale + 0.5
    if (signed_uv_area(uv, faces) <= 0).any():
        raise ValueError("the flattened chart folds over")
    return uv


# ------------------------------------------------------------------------------------------- build


def build() -> dict:
    """Every array of ``face_model.npz`` (see :mod:`mvfr.face_model`), plus ``mean`` (mm) for the OBJ."""
    from mvfr.synthesis import correspondence, ict

    m = ict.load_model()
    selected, region, _ = select_triangles()
    sel_ids = np.flatnonzero(selected)
    ids, inv = np.unique(m.faces[sel_ids], return_inverse=True)
    faces0 = inv.reshape(-1, 3)
    ict_uv = np.zeros((len(ids), 2))
    ict_uv[faces0.ravel()] = m.uv[m.faces_uv[sel_ids].ravel()]
    ew = np.zeros(len(m.expression_names))
    ew[m.expression_index("jawOpen")] = CHART_JAW_OPEN
    chart_shape = m.head(expression_weights=ew)[ids]
    fill_op, fill_faces, loops = close_holes(chart_shape, faces0)
    full = sp.vstack([sp.identity(len(ids), format="csr"), fill_op], format="csr")
    faces = np.concatenate([faces0, fill_faces])
    uvs = flatten(np.asarray(full @ chart_shape), faces, np.asarray(full @ ict_uv))
    tri, bary = correspondence.load_correspondence()
    where = np.full(len(m.faces), -1)
    where[sel_ids] = np.arange(len(sel_ids))
    if (where[tri] < 0).any():
        raise ValueError(f"{int((where[tri] < 0).sum())} landmarks lie outside the model's triangles")
    fill = np.r_[np.zeros(len(faces0), bool), np.ones(len(fill_faces), bool)]
    facial = np.r_[region[sel_ids], np.ones(len(fill_faces), bool)]
    coo = fill_op.tocoo()
    return dict(ict_vertex_ids=ids.astype(np.int32), num_fill=np.int64(fill_op.shape[0]),
                fill_rows=coo.row.astype(np.int32), fill_cols=coo.col.astype(np.int32), fill_values=coo.data,
                faces=faces.astype(np.int32), uvs=uvs, ict_uv=ict_uv, landmark_face=where[tri].astype(np.int32),
                landmark_bary=bary, facial=facial, fill=fill,
                mean=np.asarray(full @ m.head()[ids]), hole_sizes=np.array([len(lp) for lp in loops]))


def write_template_obj(path, vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray) -> None:
    """The mean face as an OBJ (mm, one uv per vertex) for MeshLab or Blender."""
    from mvfr.mesh_io import Mesh, write_obj

    write_obj(path, Mesh(vertices, faces, uvs, faces))


def main(argv=None) -> int:
    from mvfr.atomic_io import atomic_path
    from mvfr.face_model import FACE_MODEL_NPZ, PREDEFINE_DIR

    p = argparse.ArgumentParser(description="Write predefine_data/face_model.npz, face_template.obj and facial_mask.png "
                                            "(see the module docstring).")
    p.add_argument("--out_dir", type=str, default=str(PREDEFINE_DIR), help="folder the three files go to")
    a = p.parse_args(argv)
    r = build()
    out = Path(a.out_dir)
    keys = [k for k in r if k not in ("mean", "hole_sizes")]
    with atomic_path(out / FACE_MODEL_NPZ.name) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **{k: r[k] for k in keys})
    write_template_obj(out / "face_template.obj", r["mean"], r["faces"], r["uvs"])
    from mvfr.uv_rasterizer import write_facial_mask_png

    mask_path = write_facial_mask_png(out / "facial_mask.png") if out == PREDEFINE_DIR else None
    print(f"wrote {out / FACE_MODEL_NPZ.name}: {len(r['uvs'])} vertices ({len(r['ict_vertex_ids'])} ICT, {int(r['num_fill'])} fill), "
          f"{len(r['faces'])} triangles ({int(r['fill'].sum())} fill, {int(r['facial'].sum())} facial), holes closed "
          f"{r['hole_sizes'].tolist()}; face_template.obj; {mask_path or 'facial_mask.png not rewritten (not predefine_data)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
