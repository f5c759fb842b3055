"""The v2 head renderer and the head geometry: the detail normal agrees with the displaced geometry."""

import numpy as np
import pytest

from mvfr.synthesis import head, ict
from mvfr.synthesis.head_render import HeadLighting, HeadMesh, HeadRenderer, HeadTextures


def _plane(L=100.0, n=4):
    """A square of side L mm in z = 0, facing +z, uv = (x, y) / L + 0.5 (face tile)."""
    xs = np.linspace(-L / 2, L / 2, n)
    X, Y = np.meshgrid(xs, xs)
    V = np.stack([X.ravel(), Y.ravel(), np.zeros(n * n)], 1)
    uv = V[:, :2] / L + 0.5
    f = []
    for i in range(n - 1):
        for j in range(n - 1):
            a = i * n + j
            f += [[a, a + 1, a + n + 1], [a, a + n + 1, a + n]]
    F = np.array(f)
    N = len(V)
    tu, tv = head.uv_tangents(V, uv, F)
    return HeadMesh(V, F, np.tile([0, 0, 1.0], (N, 1)), tu, tv, uv, np.full((N, 3), 0.5), np.zeros(N),
                    np.zeros(N), np.full(N, 10.0), np.ones(N)), L


def _render(mesh, grad, light_dir, albedo=0.5):
    S = 8
    tex = HeadTextures(np.full((S, S, 3), albedo, np.float32), np.zeros((S, S), np.float32),
                       np.broadcast_to(np.asarray(grad, np.float32), (S, S, 2)).copy(),
                       np.zeros((S, S, 3), np.float32), np.zeros((S, S), np.float32))
    light = HeadLighting(directions=np.array([light_dir]), colors=np.array([[1.0, 1.0, 1.0]]), sky=(0, 0, 0), ground=(0, 0, 0),
                         wrap=0.0, spec_gain=0.0)
    K = np.array([[200.0, 0, 31.5], [0, 200.0, 31.5], [0, 0, 1]])
    Rt = np.array([[1.0, 0, 0, 0], [0, -1.0, 0, 0], [0, 0, -1.0, 500.0]])  # at z = 500 looking down -z
    r = HeadRenderer()
    try:
        r.set_mesh(mesh)
        r.set_textures(tex)
        rgb, alpha = r.render(K, Rt, 64, 64, light)
    finally:
        r.release()
    return rgb[24:40, 24:40].mean((0, 1)), alpha


def test_uv_tangents_of_a_plane():
    mesh, L = _plane()
    assert np.allclose(mesh.tangent_u, [L, 0, 0]) and np.allclose(mesh.tangent_v, [0, L, 0])


@pytest.mark.parametrize("slope", [0.0, 0.3, -0.6])
def test_detail_normal_is_the_normal_of_the_displaced_surface(slope):
    """h = slope * L * u, i.e. z = slope * x: the shaded normal must be (-slope, 0, 1) / |.|."""
    mesh, L = _plane()
    light = np.array([0.5, 0.2, 1.0])
    light /= np.linalg.norm(light)
    rgb, alpha = _render(mesh, (slope * L, 0.0), light)
    n = np.array([-slope, 0.0, 1.0]) / np.hypot(slope, 1.0)
    expect = 0.5 * max(float(n @ light), 0.0)  # albedo x Lambert (no wrap, ambient, occlusion or specular)
    assert alpha[32, 32] == 1.0
    assert np.allclose(rgb, expect, atol=0.01), (rgb, expect)


def test_render_geometry_of_the_ict_head_is_consistent():
    m = ict.load_model()
    v = m.head()
    geom = head.build_render(v, None)
    assert len(geom.vertices) == len(geom.normals) == len(geom.uvs) == len(geom.part)
    assert geom.faces.max() < len(geom.vertices)
    nn = np.linalg.norm(geom.normals, axis=1)
    assert np.allclose(nn, 1.0, atol=1e-6)
    # a per-coarse attribute spread onto the render vertices: exact at the coarse (even) vertices,
    # within the coarse range elsewhere
    f = v @ np.array([0.1, -0.2, 0.05])
    g = head.spread_attribute(geom, f)
    for sl, _, vids, rv in geom.attr_op:
        even = rv < len(vids)
        assert even.sum() > 100
        assert np.abs(g[sl][even] - f[vids[rv[even]]]).max() < 1e-9
    assert f.min() - 1e-9 <= g.min() and g.max() <= f.max() + 1e-9
