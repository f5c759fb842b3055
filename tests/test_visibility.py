"""Visibility: the ray caster, the occlusion rule, the facing test, the hypotheses' view test."""

import numpy as np
import pytest
import trimesh

from mvfr.visibility import RayCaster, facing, occluded, texel_view_visibility, view_cosines


def square(z: float, half: float) -> tuple[np.ndarray, np.ndarray]:
    """Two triangles covering [-half, half]^2 at height z, normal +z."""
    v = np.array([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]])
    return v, np.array([[0, 1, 2], [0, 2, 3]])


def caster_of(*parts) -> RayCaster:
    """One caster for several (vertices, faces) parts."""
    vs, fs, n = [], [], 0
    for v, f in parts:
        vs.append(v)
        fs.append(f + n)
        n += len(v)
    return RayCaster(np.concatenate(vs), np.concatenate(fs))


def look_down_Rt(center) -> np.ndarray:
    """``Rt [3, 4]`` of a camera at ``center`` looking along -z."""
    R = np.diag([1.0, -1.0, -1.0])
    return np.concatenate([R, (-R @ np.asarray(center, float))[:, None]], 1)


# ---------------------------------------------------------------------------------- ray caster


def test_hit_distance_known_answer_miss_and_empty():
    box = trimesh.creation.box(extents=(2, 2, 2))
    caster = RayCaster(box.vertices, box.faces)
    d = caster.hit_distance(np.array([[0, 0, -5.0], [5, 5, 5.0]]), np.array([[0, 0, 1.0], [0, 0, 1.0]]))
    assert d[0] == pytest.approx(4.0, abs=1e-5) and np.isinf(d[1])
    ray, tri, loc = caster.first_hit(np.array([[0, 0, -5.0]]), np.array([[0, 0, 1.0]]))
    assert ray.tolist() == [0] and len(tri) == 1
    np.testing.assert_allclose(loc, [[0, 0, -1.0]], atol=1e-6)
    assert caster.hit_distance(np.zeros((0, 3)), np.zeros((0, 3))).shape == (0,)
    assert [len(x) for x in caster.first_hit(np.zeros((0, 3)), np.zeros((0, 3)))] == [0, 0, 0]


def test_caster_size_figures_and_bad_input():
    v, f = square(0.0, 1.0)
    caster = RayCaster(v, f)
    assert caster.extent == pytest.approx(np.sqrt(8.0))  # diagonal of the 2 x 2 x 0 box
    assert caster.mean_edge == pytest.approx((4 * 2.0 + 2 * np.sqrt(8.0)) / 6)
    # an unreferenced far vertex does not count in the extent
    assert RayCaster(np.concatenate([v, [[100.0, 0, 0]]]), f).extent == pytest.approx(np.sqrt(8.0))
    with pytest.raises(ValueError, match="vertices"):
        RayCaster(v[:, :2], f)


# ------------------------------------------------------------------------------- occlusion rule


def test_occluder_in_front_hides_the_centre_not_the_rim():
    """A small square at z = 1 hides the centre of a large one at z = 0 from a camera above."""
    caster = caster_of(square(0.0, 2.0), square(1.0, 0.5))
    pts = np.array([[0.0, 0.0, 0.0], [1.8, 1.8, 0.0], [0.0, 0.0, 1.0]])
    occ = occluded(pts, np.array([[0.0, 0.0, 10.0]]), caster, margin=1e-3)
    assert occ.shape == (1, 3) and occ[0].tolist() == [True, False, False]  # a point on the occluder is seen


def test_point_behind_a_sphere_is_occluded_from_the_far_side_only():
    sphere = trimesh.creation.icosphere(3, radius=1.0)
    caster = RayCaster(sphere.vertices, sphere.faces)
    p = np.array([[0.0, 0.0, 1.0], [0.3, 0.1, np.sqrt(1 - 0.1)]])
    occ = occluded(p, np.array([[0.0, 0.0, 5.0], [0.0, 0.0, -5.0]]), caster, margin=0.2)
    assert not occ[0].any() and occ[1].all()


def test_margin_is_the_distance_an_occluder_must_lie_in_front():
    """An occluder 0.3 in front of the point hides it for margins below 0.3, not above."""
    caster = caster_of(square(0.0, 2.0), square(0.3, 0.5))
    p = np.array([[0.0, 0.0, 0.0]])
    c = np.array([[0.0, 0.0, 10.0]])
    assert occluded(p, c, caster, margin=0.0)[0, 0]
    assert occluded(p, c, caster, margin=0.29)[0, 0]
    assert not occluded(p, c, caster, margin=0.31)[0, 0]
    # the point's own surface never hides it, even with no margin; a point beyond it is hidden
    assert not occluded(np.array([[1.5, 1.5, 0.0]]), c, caster, margin=0.0)[0, 0]
    assert occluded(np.array([[1.5, 1.5, -0.01]]), c, caster, margin=0.0)[0, 0]
    with pytest.raises(ValueError, match="margin"):
        occluded(p, c, caster, margin=-1.0)


def test_occlusion_empty_input():
    caster = caster_of(square(0.0, 1.0))
    assert occluded(np.zeros((0, 3)), np.zeros((2, 3)), caster, 0.1).shape == (2, 0)
    assert occluded(np.zeros((3, 3)), np.zeros((0, 3)), caster, 0.1).shape == (0, 3)


# --------------------------------------------------------------------------------- facing test


def test_view_cosines_and_facing_known_answer():
    pts = np.zeros((3, 3))
    nrm = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])  # frontal, back-facing, edge-on
    c = np.array([[0.0, 0.0, 10.0], [10.0, 0.0, 10.0]])
    cos = view_cosines(pts, nrm, c)
    assert cos.shape == (2, 3)
    np.testing.assert_allclose(cos, [[1.0, -1.0, 0.0], [np.sqrt(0.5), -np.sqrt(0.5), np.sqrt(0.5)]], atol=1e-12)
    assert facing(pts, nrm, c).tolist() == [[True, False, False], [True, False, True]]
    assert facing(pts, nrm, c, min_cos=0.8).tolist() == [[True, False, False], [False, False, False]]
    assert facing(np.zeros((0, 3)), np.zeros((0, 3)), c).shape == (2, 0)


# ----------------------------------------------------------------------------------- hypotheses


def test_texel_view_visibility_facing_and_occlusion():
    """A camera behind a closed sphere is rejected by the occlusion test, behind an open cap by the facing test."""
    sphere = trimesh.creation.icosphere(3, radius=1.0)
    p = np.array([[0.0, 0.0, 1.0], [0.3, 0.1, np.sqrt(1 - 0.1)]])
    n = p / np.linalg.norm(p, axis=1, keepdims=True)
    front = look_down_Rt([0.0, 0.0, 5.0])
    back = np.concatenate([np.eye(3), np.array([[0.0], [0.0], [5.0]])], 1)  # at -z looking +z
    Rt = np.stack([front, back])
    # normals forced towards the back camera: only the occlusion test can reject it
    vis = texel_view_visibility(p, -n, Rt, sphere.vertices, sphere.faces, search_units=0.2)
    assert not vis.any()  # front camera: back-facing; back camera: behind the sphere
    vis = texel_view_visibility(p, n, Rt, sphere.vertices, sphere.faces, search_units=0.2)
    assert vis[0].all() and not vis[1].any()
    assert texel_view_visibility(p, n, Rt, None, None, 0.2).tolist() == [[True, True], [False, False]]


def test_texel_view_visibility_margin_is_the_search_half_range():
    """A surface within the searched segment in front of a texel is what stage 2 searches for, so it does
    not hide the texel's hypotheses; one farther out than the half-range does."""
    pts, nrm = np.zeros((1, 3)), np.array([[0.0, 0.0, 1.0]])
    v0, f0 = square(0.0, 2.0)
    v1, f1 = square(0.3, 0.5)  # 0.3 in front of the texel
    verts, faces = np.concatenate([v0, v1]), np.concatenate([f0, f1 + 4])
    Rt = look_down_Rt([0.0, 0.0, 10.0])[None]
    assert texel_view_visibility(pts, nrm, Rt, verts, faces, search_units=0.5).tolist() == [[True]]
    assert texel_view_visibility(pts, nrm, Rt, verts, faces, search_units=0.2).tolist() == [[False]]
    assert texel_view_visibility(pts, nrm, Rt, v0, f0, search_units=0.0).tolist() == [[True]]  # its own surface
