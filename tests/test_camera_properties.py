"""Property-based tests (hypothesis) of the params.json reader and the camera functions."""

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from mvfr.camera import Camera, CameraError, backproject, project_points, read_params, rotate_camera_90, scale_camera

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


@st.composite
def cameras(draw):
    fx = draw(st.floats(50, 5000))
    fy = fx * draw(st.floats(0.8, 1.25))
    w = draw(st.integers(16, 4000))
    h = draw(st.integers(16, 4000))
    cx = draw(st.floats(0, w))
    cy = draw(st.floats(0, h))
    quat = draw(st.lists(st.floats(-1, 1), min_size=4, max_size=4).filter(lambda q: np.linalg.norm(q) > 0.1))
    R = Rotation.from_quat(quat).as_matrix()
    t = np.array(draw(st.lists(finite, min_size=3, max_size=3)))
    dist = draw(st.lists(st.floats(-0.3, 0.3), min_size=5, max_size=5))
    K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    return Camera(K, np.c_[R, t], w, h, np.array(dist), draw(st.booleans()))


@settings(max_examples=60, deadline=None)
@given(cameras(), st.lists(st.tuples(st.floats(-1, 1), st.floats(-1, 1), st.floats(0.5, 50)), min_size=1, max_size=8))
def test_project_backproject_round_trip(cam, cam_points):
    # Points given in camera coordinates (always in front), moved to world coordinates.
    pc = np.array(cam_points)
    R, t = cam.Rt[:, :3], cam.Rt[:, 3]
    world = (pc - t) @ R
    pix, depth = project_points(world, cam.K, cam.Rt)
    np.testing.assert_allclose(depth, pc[:, 2], rtol=1e-9, atol=1e-6)
    back = backproject(pix, depth, cam.K, cam.Rt)
    np.testing.assert_allclose(back, world, rtol=1e-7, atol=1e-6 * (1 + np.abs(world).max()))


@settings(max_examples=60, deadline=None)
@given(cameras(), st.integers(8, 3000), st.integers(8, 3000), st.booleans())
def test_image_edits_map_pixels_consistently(cam, w2, h2, clockwise):
    pts = np.array([[0.1, -0.2, 3.0], [0.0, 0.0, 1.0], [-0.3, 0.4, 7.0]])
    world = (pts - cam.Rt[:, 3]) @ cam.Rt[:, :3]
    pix, _ = cam.project(world)
    s = scale_camera(cam, w2, h2)
    ps, _ = s.project(world)
    np.testing.assert_allclose(ps, (pix + 0.5) * [w2 / cam.width, h2 / cam.height] - 0.5, rtol=1e-9, atol=1e-6)
    r = rotate_camera_90(cam, clockwise)
    pr, _ = r.project(world)
    expect = np.c_[cam.height - 1 - pix[:, 1], pix[:, 0]] if clockwise else np.c_[pix[:, 1], cam.width - 1 - pix[:, 0]]
    np.testing.assert_allclose(pr, expect, rtol=1e-9, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.lists(cameras(), min_size=1, max_size=4))
def test_params_json_round_trip(tmp_path_factory, cams):
    path = tmp_path_factory.mktemp("p") / "params.json"
    params = {}
    for i, c in enumerate(cams):
        params.update(c.to_params(str(i)))
    path.write_text(json.dumps(params))
    back = read_params(path)
    assert list(back) == [str(i) for i in range(len(cams))]
    for i, c in enumerate(cams):
        b = back[str(i)]
        np.testing.assert_allclose(b.K, c.K)
        np.testing.assert_allclose(b.Rt, c.Rt)
        np.testing.assert_allclose(b.dist, c.dist)
        assert (b.width, b.height, b.valid) == (c.width, c.height, c.valid)


@settings(max_examples=80, deadline=None)
@given(
    cameras(),
    st.sampled_from(["_K", "_Rt", "_width", "_height"]),
    st.one_of(st.none(), st.just("abc"), st.just([1, 2]), st.just([[float("nan")] * 3] * 3), st.just(-5)),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "null"]),
)
def test_params_reader_never_accepts_garbage_silently(tmp_path_factory, cam, key, value, non_finite):
    """``non_finite``: how the file spells the non-finite entries of the NaN matrix (Python's json
    writes ``NaN``; other writers give infinities or ``null``); every spelling must be refused."""
    path = tmp_path_factory.mktemp("p") / "params.json"
    params = cam.to_params("0")
    if value is None:
        del params["0" + key]
    else:
        params["0" + key] = value
    text = json.dumps(params)
    if isinstance(value, list) and value and isinstance(value[0], list):
        assert "NaN" in text
        text = text.replace("NaN", non_finite)
        assert non_finite in text
    path.write_text(text)
    try:
        read_params(path)
    except CameraError as exc:
        assert str(path) in str(exc), f"the error does not name the file {path}: {exc}"
    else:
        # Only a value that is still a valid camera may pass: e.g. -5 is never a valid K, Rt or size.
        raise AssertionError(f"{key}={value!r} was accepted")
