"""Fast OBJ writing/reading and vertex normals (dpmap2mesh writes ~650k-vertex meshes) against
slow, obvious references: a Python ``format`` per number, a line-by-line parser, ``np.add.at``."""

import numpy as np
import pytest

from mvfr.mesh_io import Mesh, read_obj, vertex_normals, write_obj


def reference_obj_text(mesh: Mesh, precision: int = 6) -> str:
    """The writer as it was: one ``format`` call per number, lines joined by newlines."""
    fmt = f"{{:.{precision}f}}"
    lines = ["v " + " ".join(fmt.format(x) for x in row) for row in mesh.vertices]
    if mesh.uvs is not None:
        lines += ["vt {:.6f} {:.6f}".format(*row) for row in mesh.uvs]
    if mesh.normals is not None:
        lines += ["vn {:.6f} {:.6f} {:.6f}".format(*row) for row in mesh.normals]
    f = mesh.faces + 1
    if mesh.uvs is not None and mesh.normals is not None:
        ft = mesh.face_uvs + 1
        lines += [f"f {a}/{ta}/{a} {b}/{tb}/{b} {c}/{tc}/{c}" for (a, b, c), (ta, tb, tc) in zip(f, ft)]
    elif mesh.uvs is not None:
        ft = mesh.face_uvs + 1
        lines += [f"f {a}/{ta} {b}/{tb} {c}/{tc}" for (a, b, c), (ta, tb, tc) in zip(f, ft)]
    elif mesh.normals is not None:
        lines += [f"f {a}//{a} {b}//{b} {c}//{c}" for a, b, c in f]
    else:
        lines += [f"f {a} {b} {c}" for a, b, c in f]
    return "\n".join(lines) + "\n"


def random_mesh(rng, n=300, f=500, t=320) -> Mesh:
    v = rng.normal(0, 50, (n, 3))
    v[:4] = [[-0.0, 1e-9, -1e-9], [0.5e-6, -0.5e-6, 2.5e-6], [123456.7890125, -0.0000005, 1.0000005], [7, -7, 0]]  # ties, -0
    nrm = rng.normal(0, 1, (n, 3))
    return Mesh(v, rng.integers(0, n, (f, 3)), rng.random((t, 2)), rng.integers(0, t, (f, 3)), nrm / np.linalg.norm(nrm, axis=1, keepdims=True))


@pytest.mark.parametrize("layout", ["uv+normals", "uv", "normals", "plain"])
@pytest.mark.parametrize("precision", [6, 3])
def test_write_obj_matches_the_per_number_reference_byte_for_byte(tmp_path, layout, precision):
    m = random_mesh(np.random.default_rng(0))
    if "uv" not in layout:
        m.uvs = m.face_uvs = None
    if "normals" not in layout:
        m.normals = None
    write_obj(tmp_path / "m.obj", m, precision=precision)
    assert (tmp_path / "m.obj").read_text() == reference_obj_text(m, precision)


def reference_read(text: str):
    """Line-by-line parse of a triangle OBJ (no fan triangulation needed): v, vt, vn, f, ft (0-based)."""
    v, vt, vn, f, ft = [], [], [], [], []
    for line in text.splitlines():
        p = line.split()
        if not p:
            continue
        if p[0] == "v":
            v.append([float(x) for x in p[1:4]])
        elif p[0] == "vt":
            vt.append([float(x) for x in p[1:3]])
        elif p[0] == "vn":
            vn.append([float(x) for x in p[1:4]])
        elif p[0] == "f":
            c = [q.split("/") for q in p[1:]]
            f.append([int(q[0]) - 1 for q in c])
            ft.append([int(q[1]) - 1 if len(q) > 1 and q[1] else -1 for q in c])
    return np.array(v), np.array(vt), np.array(vn), np.array(f), np.array(ft)


@pytest.mark.parametrize("layout", ["uv+normals", "uv", "normals", "plain"])
def test_read_obj_fast_path_equals_a_line_by_line_parse(tmp_path, layout):
    m = random_mesh(np.random.default_rng(1))
    if "uv" not in layout:
        m.uvs = m.face_uvs = None
    if "normals" not in layout:
        m.normals = None
    write_obj(tmp_path / "m.obj", m, texture_image=np.zeros((4, 4, 3), np.uint8))  # mtllib / usemtl lines too
    v, vt, vn, f, ft = reference_read((tmp_path / "m.obj").read_text())
    r = read_obj(tmp_path / "m.obj")
    np.testing.assert_array_equal(r.vertices, v)
    np.testing.assert_array_equal(r.faces, f)
    if "uv" in layout:
        np.testing.assert_array_equal(r.uvs, vt)
        np.testing.assert_array_equal(r.face_uvs, ft)
    else:
        assert r.uvs is None
    if "normals" in layout:
        np.testing.assert_array_equal(r.normals, vn)
    else:
        assert r.normals is None


def test_read_obj_files_off_the_fast_path(tmp_path):
    """Quads (fan-triangulated), colours after v, tabs and negative indices still read as before."""
    text = "v 0 0 0 1 0 0\nv 1 0 0 0 1 0\n\tv 1 1 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\nf 1/1 2/2 3/3 4/4\nf -4/-4 -2/-2 -1/-1\n"
    (tmp_path / "q.obj").write_text(text)
    r = read_obj(tmp_path / "q.obj")
    np.testing.assert_array_equal(r.vertices, [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]])
    np.testing.assert_array_equal(r.faces, [[0, 1, 2], [0, 2, 3], [0, 2, 3]])
    np.testing.assert_array_equal(r.face_uvs, r.faces)
    (tmp_path / "bad.obj").write_text("v 0 0 0\nv 1 0\nf 1 2 1\n")
    with pytest.raises(ValueError):
        read_obj(tmp_path / "bad.obj")


def test_vertex_normals_equal_the_add_at_reference_bit_for_bit():
    m = random_mesh(np.random.default_rng(2), n=200, f=900)
    tri = m.vertices[m.faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    ref = np.zeros_like(m.vertices)
    for k in range(3):
        np.add.at(ref, m.faces[:, k], n)
    norm = np.linalg.norm(ref, axis=1, keepdims=True)
    ref = np.where(norm > 0, ref / np.maximum(norm, 1e-30), 0.0)
    m.vertices = np.vstack([m.vertices, [[9.0, 9.0, 9.0]]])  # an isolated vertex gets (0, 0, 0)
    out = vertex_normals(m.vertices, m.faces)
    assert np.array_equal(out[:-1], ref) and (out[-1] == 0).all()
