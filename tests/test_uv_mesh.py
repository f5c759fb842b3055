import numpy as np
import pytest

from mvfr.mesh_io import face_normals, read_obj, write_obj
from mvfr.uv_mesh import uv_grid_mesh
from mvfr.uv_rasterizer import texel_centres_uv


def plane_map(S):
    """pos = (u, v, 0): the uv layout itself, seen from +z (the 'outside')."""
    uv = texel_centres_uv(S)
    return np.concatenate([uv, np.zeros((S, S, 1))], -1)


def test_full_grid_counts_and_uvs():
    S = 5
    m = uv_grid_mesh(plane_map(S), np.ones((S, S), bool))
    assert m.vertices.shape == (S * S, 3)
    assert m.faces.shape == (2 * (S - 1) ** 2, 3)
    np.testing.assert_allclose(m.uvs, texel_centres_uv(S).reshape(-1, 2))
    np.testing.assert_array_equal(m.face_uvs, m.faces)


def test_winding_is_outward_for_template_orientation():
    # The template's faces are counter-clockwise in uv and outward in 3D; a map whose position is
    # (u, v, 0) has its outside towards +z, so every triangle normal must be +z.
    S = 6
    m = uv_grid_mesh(plane_map(S), np.ones((S, S), bool))
    n = face_normals(m.vertices, m.faces)
    np.testing.assert_allclose(n, np.tile([0.0, 0.0, 1.0], (len(n), 1)), atol=1e-12)
    # vertex normals from the triangles agree too
    np.testing.assert_allclose(m.normals[:, 2], 1.0, atol=1e-12)


def test_winding_matches_norm_map_on_curved_surface():
    # Cylinder patch bulging towards +z: the normal map points outward; faces must agree with it.
    S = 16
    uv = texel_centres_uv(S)
    ang = (uv[..., 0] - 0.5) * 2.0
    pos = np.stack([np.sin(ang), uv[..., 1], np.cos(ang)], -1)
    nrm = np.stack([np.sin(ang), np.zeros_like(ang), np.cos(ang)], -1)
    valid = np.ones((S, S), bool)
    m = uv_grid_mesh(pos, valid, nrm)
    fn = face_normals(m.vertices, m.faces)
    vn = m.normals[m.faces].mean(1)
    assert (np.einsum("ij,ij->i", fn, vn) > 0.9).all()


def test_holes_remove_only_adjacent_quads():
    S = 6
    valid = np.ones((S, S), bool)
    valid[2, 3] = False
    m = uv_grid_mesh(plane_map(S), valid)
    assert len(m.vertices) == S * S - 1
    assert len(m.faces) == 2 * ((S - 1) ** 2 - 4)
    # the removed texel's position is nowhere in the mesh
    gone = plane_map(S)[2, 3]
    assert np.min(np.linalg.norm(m.vertices - gone, axis=1)) > 1e-9


def test_obj_round_trip(tmp_path):
    S = 4
    m = uv_grid_mesh(plane_map(S), np.ones((S, S), bool))
    write_obj(tmp_path / "g.obj", m)
    r = read_obj(tmp_path / "g.obj")
    np.testing.assert_allclose(r.vertices, m.vertices, atol=1e-6)
    np.testing.assert_array_equal(r.faces, m.faces)


def test_bad_input():
    with pytest.raises(ValueError):
        uv_grid_mesh(np.zeros((4, 4, 2)), np.ones((4, 4), bool))
    with pytest.raises(ValueError):
        uv_grid_mesh(np.zeros((4, 4, 3)), np.ones((4, 5), bool))
    bad = np.zeros((4, 4, 3))
    bad[1, 1] = np.nan
    with pytest.raises(ValueError):
        uv_grid_mesh(bad, np.ones((4, 4), bool))
