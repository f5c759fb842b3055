"""Build the extended face template ``predefine_data/face_template.obj`` (``python -m mvfr.template_extension``).

MediaPipe's canonical face (468 vertices, vertex i = landmark i) ends short of a scan's facial region
(forehead to the hairline, cheeks to the front of the ears, the jaw line). The extended template keeps
vertices 0..467 exactly and appends ``NUM_RINGS`` rings beyond the canonical face's outer boundary
loop, shaped by the ICT Face Model's neutral mean head:

1. the mean head is aligned to the canonical face (cm) by the similarity on the 468 correspondences
   (``predefine_data/ict_template_correspondence.npz``);
2. from each boundary vertex's point on the head, a path walks outwards over the scans' facial region
   (the narrow face area less the neck, :func:`_narrow_face_mesh`; it stops at the region's border), in steps of
   ``STEP_CM``, continuing the direction away from the face centre; its length is smoothed along the loop;
3. ring k of the extension sits at fraction k / NUM_RINGS of each path (snapped onto the surface), and
   remembers its ICT point (triangle, barycentrics);
4. uvs: the canonical uvs are mapped into a smaller box (``uv' = c + s (uv - c0)``, c = (0.5, 0.5),
   c0 the canonical chart's box centre) and ring k gets uv' of its boundary vertex moved outwards along
   the loop's smoothed outward normal in uv, proportionally to the path length (the same uv per cm as
   the scaled chart), clipped to a margin of ``UV_MARGIN`` from the square's border.

Outputs: the OBJ (cm, one uv per vertex) and :func:`build`'s arrays (``triangle``, ``bary`` of every
extension vertex's ICT point) for the correspondence file.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

NUM_RINGS = 3
STEP_CM = 0.1
UV_SCALE = 0.8
UV_MARGIN = 0.015
MAX_PATH_CM = 6.0


def boundary_loop(faces: np.ndarray) -> np.ndarray:
    """The ordered outer boundary loop [B] of a disc mesh, oriented like its faces (interior on the left)."""
    f = np.asarray(faces, dtype=np.int64)
    directed = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    keys = set(map(tuple, directed.tolist()))
    bnd = [(a, b) for a, b in directed.tolist() if (b, a) not in keys]
    nxt = dict(bnd)
    if len(nxt) != len(bnd):
        raise ValueError("the boundary is not a simple loop")
    start = bnd[0][0]
    loop = [start]
    while nxt[loop[-1]] != start:
        loop.append(nxt[loop[-1]])
        if len(loop) > len(bnd):
            raise ValueError("the mesh has more than one boundary loop")
    if len(loop) != len(bnd):
        raise ValueError("the mesh has more than one boundary loop")
    return np.asarray(loop, dtype=np.int64)


def _smooth_loop(x: np.ndarray, passes: int = 3) -> np.ndarray:
    for _ in range(passes):
        x = 0.25 * np.roll(x, 1, 0) + 0.5 * x + 0.25 * np.roll(x, -1, 0)
    return x


def _narrow_face_mesh():
    """ICT triangles of the scans' facial region on the mean head (the narrow face quads
    :data:`head.REGION_QUADS`, less the neck :data:`head.REGION_EXCLUDE_BELOW_CHIN_MM` below the chin)
    and their ids in the model's triangle list."""
    from mvfr.synthesis import head, ict

    m = ict.load_model()
    neutral = m.head()
    q = m.face_quad
    low = head.chin_y(neutral) - head.REGION_EXCLUDE_BELOW_CHIN_MM
    keep = (q >= head.REGION_QUADS[0]) & (q <= head.REGION_QUADS[1]) & (neutral[m.faces][:, :, 1] > low).all(1)
    ids = np.flatnonzero(keep)
    return m.faces[ids], ids


def build():
    """-> dict with ``vertices [N, 3]`` cm, ``faces [F, 3]``, ``uvs [N, 2]``, ``triangle [N - 468]``,
    ``bary [N - 468, 3]`` (the ICT point of each extension vertex), ``uv_scale``."""
    import igl

    from mvfr.fitting import apply_similarity, umeyama
    from mvfr.synthesis import correspondence, ict
    from mvfr.template import load_canonical_face

    t = load_canonical_face()
    V, F, UV = t.vertices.astype(np.float64), t.faces.astype(np.int64), t.uvs.astype(np.float64)
    n0 = len(V)
    m = ict.load_model()
    neutral = m.head()
    tri, bary = correspondence.load_correspondence()
    anchors = correspondence.surface_points(neutral, tri[:n0], bary[:n0])
    s, R, tr = umeyama(anchors, V)
    head = apply_similarity(neutral, s, R, tr)  # ICT mean head in the canonical face's frame, cm
    nf, nf_ids = _narrow_face_mesh()
    Hc = np.ascontiguousarray(head)

    def snap(p):
        d2, fi, C = igl.point_mesh_squared_distance(np.ascontiguousarray(p), Hc, nf)
        return C, fi, np.sqrt(d2)

    tn = np.cross(Hc[nf[:, 1]] - Hc[nf[:, 0]], Hc[nf[:, 2]] - Hc[nf[:, 0]])
    tn /= np.maximum(np.linalg.norm(tn, axis=1, keepdims=True), 1e-30)

    def tangent(p, d):
        """``d`` projected onto the surface's tangent plane at ``p`` (unit)."""
        _, fi, _ = snap(p)
        n = tn[fi]
        d = d - (d * n).sum(1, keepdims=True) * n
        return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)

    loop = boundary_loop(F)
    B = len(loop)
    centre = V.mean(0)
    a_loop = apply_similarity(anchors[loop], s, R, tr)  # the boundary vertices' points on the aligned head
    offset = V[loop] - a_loop  # canonical face minus ICT there: carried along each path
    p = a_loop.copy()
    # first direction: away from the face centre, within the local tangent plane of the loop
    tang = np.roll(p, -1, 0) - np.roll(p, 1, 0)
    out = p - centre
    out -= (out * tang).sum(1, keepdims=True) / (tang * tang).sum(1, keepdims=True) * tang
    out = tangent(p, out)
    length = np.zeros(B)
    alive = np.ones(B, dtype=bool)
    for _ in range(int(MAX_PATH_CM / STEP_CM)):
        q = p + STEP_CM * out
        c, _, d = snap(q)
        # stepping off the area's border: the snap pulls back much more than the surface's curvature would
        stop = alive & (d > 0.5 * STEP_CM)
        alive &= ~stop
        step = np.linalg.norm(c - p, axis=1)
        new_out = tangent(c, c - p)
        p = np.where(alive[:, None], c, p)
        out = np.where(alive[:, None], new_out, out)
        length += np.where(alive, step, 0.0)
        if not alive.any():
            break
    length = _smooth_loop(length, 4)
    # rings: walk again, each boundary vertex to the fractions k / NUM_RINGS of its smoothed length
    ring_pos = np.zeros((NUM_RINGS, B, 3))
    ring_fi = np.zeros((NUM_RINGS, B), dtype=np.int64)
    p = a_loop.copy()
    out = a_loop - centre
    out -= (out * tang).sum(1, keepdims=True) / (tang * tang).sum(1, keepdims=True) * tang
    out = tangent(p, out)
    done = np.zeros(B)
    for k in range(1, NUM_RINGS + 1):
        goal = length * k / NUM_RINGS
        for _ in range(int(MAX_PATH_CM / STEP_CM) + 1):
            need = goal - done
            if (need <= 1e-9).all():
                break
            h = np.clip(need, 0.0, STEP_CM)
            c, fi, _ = snap(p + h[:, None] * out)
            mv = np.linalg.norm(c - p, axis=1)
            new_out = tangent(c, c - p)
            go = h > 1e-9
            out = np.where(go[:, None] & (mv > 1e-9)[:, None], new_out, out)
            p = np.where(go[:, None], c, p)
            done += np.where(go, np.maximum(mv, h * 0.999), 0.0)
        c, fi, _ = snap(p)
        ring_pos[k - 1], ring_fi[k - 1] = c, fi
    ext_ict = ring_pos.reshape(-1, 3)
    ext_tri = nf_ids[ring_fi.reshape(-1)]
    ext_bary = correspondence._barycentric(ext_ict, head[m.faces[ext_tri]])
    # the extension continues the canonical face: the ICT path, shifted by the boundary's offset,
    # fading out along the path (the ICT surface itself at the outer ring)
    fade = 1.0 - np.repeat(np.arange(1, NUM_RINGS + 1) / NUM_RINGS, B) * 0.5
    ext = ext_ict + fade[:, None] * np.tile(offset, (NUM_RINGS, 1))
    # faces: quads between consecutive rings, oriented like the canonical faces (loop runs with the
    # interior on its left, so (a, b, b', a') with a' outside keeps the orientation)
    rings = [loop] + [n0 + k * B + np.arange(B) for k in range(NUM_RINGS)]
    new_faces = []
    for k in range(NUM_RINGS):
        a, b = rings[k], np.roll(rings[k], -1)
        a2, b2 = rings[k + 1], np.roll(rings[k + 1], -1)
        new_faces += [np.stack([b, a, a2], 1), np.stack([b, a2, b2], 1)]
    faces = np.concatenate([F] + new_faces)
    # uvs
    lo, hi = UV.min(0), UV.max(0)
    c0 = 0.5 * (lo + hi)
    uv_in = 0.5 + UV_SCALE * (UV - c0)
    cm_to_uv = UV_SCALE * float(np.median(
        np.linalg.norm(UV[F[:, 0]] - UV[F[:, 1]], axis=1) / np.linalg.norm(V[F[:, 0]] - V[F[:, 1]], axis=1)))
    ub = uv_in[loop]
    ut = np.roll(ub, -1, 0) - np.roll(ub, 1, 0)
    nrm = np.stack([ut[:, 1], -ut[:, 0]], 1)  # right of the loop direction = outside (interior on the left)
    nrm = _smooth_loop(nrm / np.linalg.norm(nrm, axis=1, keepdims=True), 3)
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    reach = length * cm_to_uv
    # clip the reach so that the outermost ring stays inside [UV_MARGIN, 1 - UV_MARGIN]^2
    with np.errstate(divide="ignore", invalid="ignore"):
        lim = np.where(nrm > 0, (1 - UV_MARGIN - ub) / nrm, np.where(nrm < 0, (UV_MARGIN - ub) / nrm, np.inf)).min(1)
    reach = np.minimum(reach, np.maximum(lim, 0.0))
    reach = np.minimum(reach, _smooth_loop(reach, 2))
    ext_uv = np.concatenate([ub + (reach * k / NUM_RINGS)[:, None] * nrm for k in range(1, NUM_RINGS + 1)])
    return dict(vertices=np.concatenate([V, ext]), faces=faces, uvs=np.concatenate([uv_in, ext_uv]),
                triangle=ext_tri.astype(np.int64), bary=ext_bary, uv_scale=UV_SCALE, path_cm=length)


def uv_orientation(uvs: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Signed double area [F] of every face in uv (positive: counter-clockwise)."""
    t = np.asarray(uvs)[np.asarray(faces)]
    a, b = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
    return a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]


def write_obj(path, vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray) -> None:
    from mvfr.atomic_io import atomic_path

    lines = ["# mvfr extended face template: MediaPipe canonical face (Apache-2.0) + ICT Face Model mean (MIT) rings",
             "# units cm; vertex i < 468 is MediaPipe landmark i; one uv per vertex"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices]
    lines += [f"vt {u:.6f} {v:.6f}" for u, v in uvs]
    lines += [f"f {a + 1}/{a + 1} {b + 1}/{b + 1} {c + 1}/{c + 1}" for a, b, c in faces]
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            fh.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    from mvfr.template import PREDEFINE_DIR

    p = argparse.ArgumentParser(description="Write predefine_data/face_template.obj (see the module docstring).")
    p.add_argument("--out", type=str, default=str(PREDEFINE_DIR / "face_template.obj"))
    p.add_argument("--correspondence", type=str, default=str(PREDEFINE_DIR / "ict_template_correspondence.npz"),
                   help="correspondence file to extend: keys template_triangle / template_bary get one row per "
                        "extended-template vertex (the first 468 = triangle / bary, the landmarks); '' to skip")
    a = p.parse_args(argv)
    r = build()
    area = uv_orientation(r["uvs"], r["faces"])
    write_obj(a.out, r["vertices"], r["faces"], r["uvs"])
    if a.correspondence:
        from mvfr.atomic_io import atomic_path

        d = dict(np.load(a.correspondence))
        d["template_triangle"] = np.concatenate([d["triangle"][:468], r["triangle"]]).astype(np.int32)
        d["template_bary"] = np.concatenate([d["bary"][:468], r["bary"]]).astype(np.float64)
        with atomic_path(a.correspondence) as tmp:
            np.savez_compressed(tmp, **d)
    print(f"wrote {a.out}: {len(r['vertices'])} vertices, {len(r['faces'])} faces, uv scale {r['uv_scale']}, "
          f"uv box {r['uvs'].min(0).round(3)} - {r['uvs'].max(0).round(3)}, folded faces {(area <= 0).sum()}, "
          f"path length {r['path_cm'].min():.2f}-{r['path_cm'].max():.2f} cm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
