"""UV maps of the base mesh and the ground-truth displacement: known answers on spheres and planes."""

import numpy as np
import pytest

from mvfr.base_maps import base_maps, displacement_map, ground_truth_maps, smooth_normal_map, surface_texels
from mvfr.mesh_io import Mesh
from mvfr.uv_rasterizer import build_uv_table, texel_centres_uv

MM_PER_UNIT = 0.5  # capture units are half-millimetres: 1 mm = 2 units
RADIUS = 60.0  # units (30 mm)
S = 128


def grid_patch(n=121, half=0.7, radius=RADIUS, hole=None):
    """A spherical cap z = sqrt(r^2 - x^2 - y^2) over the square |x|, |y| <= half * r (uv = the square).

    Faces are CCW seen from +z (outward). ``hole = (a, b, rho)`` removes the faces whose centre lies
    within rho (in square coordinates) of (a, b). Returns a Mesh with per-vertex uvs.
    """
    a = np.linspace(-half, half, n)
    A, Bm = np.meshgrid(a, a, indexing="xy")
    x, y = A.ravel() * radius, Bm.ravel() * radius
    v = np.stack([x, y, np.sqrt(radius**2 - x**2 - y**2)], 1)
    uv = np.stack([(A.ravel() + half) / (2 * half), (Bm.ravel() + half) / (2 * half)], 1)
    idx = np.arange(n * n).reshape(n, n)
    q00, q01, q10, q11 = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    faces = np.concatenate([np.stack([q00, q01, q11], 1), np.stack([q00, q11, q10], 1)])
    if hole is not None:
        c = np.stack([A.ravel(), Bm.ravel()], 1)[faces].mean(1)
        faces = faces[np.linalg.norm(c - np.asarray(hole[:2]), axis=1) > hole[2]]
    return Mesh(v, faces, uv, faces.copy())


def scaled(mesh, new_radius):
    """The mesh scaled radially about the sphere centre (the origin) to ``new_radius``."""
    return Mesh(mesh.vertices * (new_radius / RADIUS), mesh.faces, mesh.uvs, mesh.face_uvs)


@pytest.fixture(scope="module")
def sphere_maps():
    base = grid_patch()
    table = build_uv_table(base.uvs, base.face_uvs, S)
    return base, table, base_maps(table, base, smooth_iters=2)


def test_pos_and_norm_maps_on_sphere(sphere_maps):
    base, table, maps = sphere_maps
    pos, nrm, cov = maps["pos_map"], maps["norm_map"], maps["covered"]
    assert pos.shape == (S, S, 3) and pos.dtype == np.float32 and nrm.dtype == np.float32
    assert cov.mean() > 0.95
    r = np.linalg.norm(pos[cov], axis=1)
    assert np.abs(r - RADIUS).max() < 0.1  # on the sphere up to the tessellation sagitta (steep rim cells)
    np.testing.assert_allclose(np.linalg.norm(nrm[cov], axis=1), 1.0, atol=1e-5)  # renormalised
    radial = pos / np.maximum(np.linalg.norm(pos, axis=-1, keepdims=True), 1e-9)
    ang = np.degrees(np.arccos(np.clip((radial * nrm).sum(-1), -1, 1)))
    inner = np.zeros_like(cov)
    inner[4:-4, 4:-4] = True  # away from the rim, where the box filter is one-sided
    assert ang[cov & inner].max() < 0.5 and ang[cov].max() < 5.0  # outward, radial
    assert (pos[~cov] == 0).all() and (nrm[~cov] == 0).all()
    # texel (i, j) holds the surface point whose uv is the texel centre (DESIGN §3 convention)
    uv = texel_centres_uv(S)[cov]
    expect_xy = (uv * 1.4 - 0.7) * RADIUS
    np.testing.assert_allclose(pos[cov][:, :2], expect_xy, atol=1e-3 * RADIUS)


def test_sphere_one_mm_larger_gives_plus_one_mm_everywhere(sphere_maps):
    base, table, maps = sphere_maps
    gt = scaled(base, RADIUS + 1.0 / MM_PER_UNIT)
    mask = np.ones((S, S), bool)
    mv, valid = ground_truth_maps(maps["pos_map"], maps["norm_map"], maps["covered"], mask, gt, 20.0 / MM_PER_UNIT)
    assert mv.dtype == np.float32 and valid.dtype == bool and mv.shape == (S, S)
    assert valid.sum() > 0.97 * maps["covered"].sum()
    mm = mv[valid] * MM_PER_UNIT
    assert np.abs(mm - 1.0).max() <= 0.01, (mm.min(), mm.max())
    assert (mv[~valid] == 0).all()
    # a smaller GT gives a negative displacement
    mv2, valid2 = ground_truth_maps(maps["pos_map"], maps["norm_map"], maps["covered"], mask,
                                    scaled(base, RADIUS - 1.0 / MM_PER_UNIT), 20.0 / MM_PER_UNIT)
    assert valid2.sum() > 0.97 * maps["covered"].sum()
    assert np.abs(mv2[valid2] * MM_PER_UNIT + 1.0).max() <= 0.01


def test_search_range_and_facial_mask_limit_validity(sphere_maps):
    base, table, maps = sphere_maps
    gt = scaled(base, RADIUS + 5.0 / MM_PER_UNIT)  # 5 mm outside
    mask = np.zeros((S, S), bool)
    mask[: S // 2] = True
    mv, valid = ground_truth_maps(maps["pos_map"], maps["norm_map"], maps["covered"], mask, gt, 3.0 / MM_PER_UNIT)
    assert not valid.any() and (mv == 0).all()  # beyond the 3 mm search range
    mv, valid = ground_truth_maps(maps["pos_map"], maps["norm_map"], maps["covered"], mask, gt, 6.0 / MM_PER_UNIT)
    assert not valid[S // 2 :].any() and valid[: S // 2].sum() > 0.9 * (maps["covered"] & mask).sum()
    assert np.abs(mv[valid] * MM_PER_UNIT - 5.0).max() < 0.02


def test_gt_with_a_hole_gives_invalid_texels_there(sphere_maps):
    base, table, maps = sphere_maps
    hole = (0.2, 0.1, 0.15)
    gt = scaled(grid_patch(hole=hole), RADIUS + 1.0 / MM_PER_UNIT)
    mv, valid = ground_truth_maps(maps["pos_map"], maps["norm_map"], maps["covered"], np.ones((S, S), bool), gt,
                                  20.0 / MM_PER_UNIT)
    sq = texel_centres_uv(S) * 1.4 - 0.7  # texel -> square coordinates
    d = np.linalg.norm(sq - np.array(hole[:2]), axis=-1)
    inside, outside = d < hole[2] - 0.02, d > hole[2] + 0.03
    assert inside.sum() > 100
    assert not valid[inside].any()  # every texel over the hole is invalid
    good = outside & maps["covered"]
    assert valid[good].mean() > 0.97
    assert np.abs(mv[valid] * MM_PER_UNIT - 1.0).max() <= 0.01


def test_nearest_hit_wins_between_two_layers():
    """GT = two parallel planes at +3 and -1 units from a flat base: the -1 plane is nearer."""
    base = grid_patch(n=11, half=0.5, radius=1e6)  # nearly flat at z = 1e6 ... recentre it
    base = Mesh(base.vertices - [0, 0, 1e6], base.faces, base.uvs, base.face_uvs)
    base.vertices[:, 2] = 0.0
    base.vertices[:, :2] /= 1e4  # a 100 x 100 unit plane
    table = build_uv_table(base.uvs, base.face_uvs, 32)
    maps = base_maps(table, base)
    np.testing.assert_allclose(maps["norm_map"][maps["covered"]], [[0, 0, 1]] * maps["covered"].sum(), atol=1e-6)
    big = Mesh(base.vertices * [3, 3, 1], base.faces)
    up = Mesh(big.vertices + [0, 0, 3.0], big.faces)
    down = Mesh(big.vertices + [0, 0, -1.0], big.faces[:, ::-1])
    gt = Mesh(np.concatenate([up.vertices, down.vertices]), np.concatenate([up.faces, down.faces + len(up.vertices)]))
    mv, hit = displacement_map(maps["pos_map"], maps["norm_map"], maps["covered"], gt, 10.0)
    assert hit[maps["covered"]].all()
    np.testing.assert_allclose(mv[maps["covered"]], -1.0, atol=1e-4)
    mv, hit = displacement_map(maps["pos_map"], maps["norm_map"], maps["covered"], up, 10.0)
    np.testing.assert_allclose(mv[maps["covered"]], 3.0, atol=1e-4)
    with pytest.raises(ValueError, match="search_range"):
        displacement_map(maps["pos_map"], maps["norm_map"], maps["covered"], gt, 0.0)


def test_surface_texels():
    pos = np.zeros((3, 3, 3), np.float32)
    nrm = np.zeros((3, 3, 3), np.float32)
    nrm[..., 2] = 1
    pos[0, 0] = np.nan  # no position
    nrm[1, 1] = 0  # not covered (base_maps writes 0)
    nrm[2, 2] = np.nan  # no normal
    nrm[0, 2] = [0.0, 0.6, 0.8]  # any unit normal
    m = surface_texels(pos, nrm)
    assert m.sum() == 6 and not m[0, 0] and not m[1, 1] and not m[2, 2] and m[0, 2]
    with pytest.raises(ValueError, match="S, S, 3"):
        surface_texels(pos, nrm[:2])


def test_normal_smoothing():
    # smoothing keeps unit length, ignores uncovered texels, and reduces noise
    rng = np.random.default_rng(0)
    n = np.zeros((16, 16, 3))
    n[..., 2] = 1.0
    noisy = n + rng.normal(0, 0.2, n.shape)
    cov = np.ones((16, 16), bool)
    cov[:, :3] = False
    sm = smooth_normal_map(noisy, cov, iters=2)
    np.testing.assert_allclose(np.linalg.norm(sm[cov], axis=1), 1.0, atol=1e-12)
    assert (sm[~cov] == 0).all()
    before = np.degrees(np.arccos(np.clip(noisy[cov][:, 2] / np.linalg.norm(noisy[cov], axis=1), -1, 1))).mean()
    after = np.degrees(np.arccos(np.clip(sm[cov][:, 2], -1, 1))).mean()
    assert after < 0.5 * before
