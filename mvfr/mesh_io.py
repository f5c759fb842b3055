"""Mesh reading and writing: OBJ (v, vt, vn, f with MTL + texture image) and PLY (through trimesh).

A mesh is a :class:`Mesh`: ``vertices [N, 3]`` float64 in the capture's units, ``faces [F, 3]``
int64 (counter-clockwise seen from outside), optional ``uvs [T, 2]`` with ``face_uvs [F, 3]``
indexing them (OBJ allows a vertex to carry several uvs), optional ``normals [N, 3]`` per vertex.
Writers are atomic (see :mod:`mvfr.atomic_io`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from mvfr.atomic_io import atomic_path


@dataclasses.dataclass
class Mesh:
    vertices: np.ndarray  # [N, 3] float64, capture units
    faces: np.ndarray  # [F, 3] int64
    uvs: np.ndarray | None = None  # [T, 2] float64, (u, v) with v up
    face_uvs: np.ndarray | None = None  # [F, 3] int64 into uvs
    normals: np.ndarray | None = None  # [N, 3] float64 unit vertex normals

    def __post_init__(self) -> None:
        self.vertices = np.asarray(self.vertices, dtype=np.float64).reshape(-1, 3)
        self.faces = np.asarray(self.faces, dtype=np.int64).reshape(-1, 3)
        if self.uvs is not None:
            self.uvs = np.asarray(self.uvs, dtype=np.float64).reshape(-1, 2)
            if self.face_uvs is None:
                if len(self.uvs) != len(self.vertices):
                    raise ValueError("uvs without face_uvs must have one uv per vertex")
                self.face_uvs = self.faces.copy()
            self.face_uvs = np.asarray(self.face_uvs, dtype=np.int64).reshape(-1, 3)
        if self.normals is not None:
            self.normals = np.asarray(self.normals, dtype=np.float64).reshape(-1, 3)

    def vertex_uvs(self) -> np.ndarray:
        """Per-vertex uvs [N, 2] (the last uv seen wins where a vertex has several)."""
        if self.uvs is None:
            raise ValueError("mesh has no uvs")
        out = np.zeros((len(self.vertices), 2))
        out[self.faces.ravel()] = self.uvs[self.face_uvs.ravel()]
        return out

    def to_trimesh(self):
        import trimesh

        return trimesh.Trimesh(self.vertices, self.faces, process=False)


def face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit face normals [F, 3] of ``vertices [N, 3]``, ``faces [F, 3]`` (counter-clockwise = outward)."""
    tri = vertices[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-30)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals [N, 3]; isolated vertices get (0, 0, 0)."""
    tri = vertices[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # length = 2 * area
    out = np.zeros_like(vertices, dtype=np.float64)
    for k in range(3):
        np.add.at(out, faces[:, k], n)
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return np.where(norm > 0, out / np.maximum(norm, 1e-30), 0.0)


# --------------------------------------------------------------------------------------------- OBJ


def read_obj(path: str | os.PathLike) -> Mesh:
    """Read a triangle/polygon OBJ (polygons are fan-triangulated); errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"mesh {path} does not exist")
    v, vt, vn, f, ft = [], [], [], [], []
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                key = parts[0]
                if key == "v":
                    v.append([float(x) for x in parts[1:4]])
                elif key == "vt":
                    vt.append([float(x) for x in parts[1:3]])
                elif key == "vn":
                    vn.append([float(x) for x in parts[1:4]])
                elif key == "f":
                    idx = [p.split("/") for p in parts[1:]]
                    vi = [int(p[0]) for p in idx]
                    ti = [int(p[1]) if len(p) > 1 and p[1] else 0 for p in idx]
                    for k in range(1, len(vi) - 1):
                        f.append([vi[0], vi[k], vi[k + 1]])
                        ft.append([ti[0], ti[k], ti[k + 1]])
            except (ValueError, IndexError) as exc:
                raise ValueError(f"{path}:{lineno}: cannot parse OBJ line {line.strip()!r}") from exc
    vertices = np.asarray(v, dtype=np.float64).reshape(-1, 3)
    faces = np.asarray(f, dtype=np.int64).reshape(-1, 3)
    faces = np.where(faces < 0, faces + len(vertices), faces - 1)  # OBJ: 1-based, negative = relative
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ValueError(f"{path}: a face refers to a vertex that does not exist")
    uvs = face_uvs = None
    ft_arr = np.asarray(ft, dtype=np.int64).reshape(-1, 3)
    if vt and ft_arr.size and (ft_arr != 0).all():
        uvs = np.asarray(vt, dtype=np.float64).reshape(-1, 2)
        face_uvs = np.where(ft_arr < 0, ft_arr + len(uvs), ft_arr - 1)
    normals = np.asarray(vn, dtype=np.float64).reshape(-1, 3) if len(vn) == len(vertices) and vn else None
    return Mesh(vertices, faces, uvs, face_uvs, normals)


def write_obj(
    path: str | os.PathLike,
    mesh: Mesh,
    texture_image: np.ndarray | None = None,
    texture_name: str | None = None,
    precision: int = 6,
) -> None:
    """Write ``mesh`` as OBJ; with ``texture_image`` (RGB uint8) also an MTL and a PNG beside it.

    Normals, when present, are written per vertex and referenced with the vertex index
    (``f v/vt/v``), so MeshLab and Blender show the same shading.
    """
    path = Path(path)
    lines = []
    if texture_image is not None:
        texture_name = texture_name or f"{path.stem}.png"
        mtl_name = f"{path.stem}.mtl"
        lines.append(f"mtllib {mtl_name}")
    fmt = f"{{:.{precision}f}}"
    v = mesh.vertices
    lines.extend("v " + " ".join(fmt.format(x) for x in row) for row in v)
    if mesh.uvs is not None:
        lines.extend("vt {:.6f} {:.6f}".format(*row) for row in mesh.uvs)
    if mesh.normals is not None:
        lines.extend("vn {:.6f} {:.6f} {:.6f}".format(*row) for row in mesh.normals)
    if texture_image is not None:
        lines.append("usemtl material_0")
    f = mesh.faces + 1
    if mesh.uvs is not None and mesh.normals is not None:
        ft = mesh.face_uvs + 1
        lines.extend(f"f {a}/{ta}/{a} {b}/{tb}/{b} {c}/{tc}/{c}" for (a, b, c), (ta, tb, tc) in zip(f, ft))
    elif mesh.uvs is not None:
        ft = mesh.face_uvs + 1
        lines.extend(f"f {a}/{ta} {b}/{tb} {c}/{tc}" for (a, b, c), (ta, tb, tc) in zip(f, ft))
    elif mesh.normals is not None:
        lines.extend(f"f {a}//{a} {b}//{b} {c}//{c}" for a, b, c in f)
    else:
        lines.extend(f"f {a} {b} {c}" for a, b, c in f)
    if texture_image is not None:
        from mvfr.atomic_io import save_image, save_text

        save_image(path.parent / texture_name, texture_image)
        save_text(
            path.parent / mtl_name,
            "newmtl material_0\nKa 1.000 1.000 1.000\nKd 1.000 1.000 1.000\nKs 0.000 0.000 0.000\n"
            f"d 1.0\nillum 1\nmap_Kd {texture_name}\n",
        )
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------- PLY


def read_ply(path: str | os.PathLike) -> Mesh:
    """Read a PLY triangle mesh; per-vertex texture coordinates (s/t or u/v) become ``uvs``."""
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"mesh {path} does not exist")
    try:
        tm = trimesh.load(path, file_type="ply", process=False, force="mesh")
    except Exception as exc:  # trimesh raises many types for a corrupt file
        raise ValueError(f"mesh {path} could not be read as PLY: {exc}") from exc
    uv = getattr(tm.visual, "uv", None)
    return Mesh(np.asarray(tm.vertices), np.asarray(tm.faces), None if uv is None else np.asarray(uv))


def write_ply(path: str | os.PathLike, mesh: Mesh) -> None:
    """Write a binary PLY; per-vertex uvs (``mesh.vertex_uvs()``) are written as s/t when present."""
    import trimesh

    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    if mesh.uvs is not None:
        tm.visual = trimesh.visual.TextureVisuals(uv=mesh.vertex_uvs())
    data = trimesh.exchange.ply.export_ply(tm, encoding="binary")
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def read_mesh(path: str | os.PathLike) -> Mesh:
    """Read an OBJ or PLY by suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".obj":
        return read_obj(path)
    if suffix == ".ply":
        return read_ply(path)
    raise ValueError(f"mesh {path}: unsupported format {suffix!r} (use .obj or .ply)")


def write_mesh(path: str | os.PathLike, mesh: Mesh) -> None:
    """Write an OBJ or PLY by suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".obj":
        write_obj(path, mesh)
    elif suffix == ".ply":
        write_ply(path, mesh)
    else:
        raise ValueError(f"mesh {path}: unsupported format {suffix!r} (use .obj or .ply)")
