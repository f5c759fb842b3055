"""Cameras: known answers, round trips, image edits, the grid_sample convention, bad input."""

import json

import numpy as np
import pytest
import torch

from mvfr.camera import (
    Camera,
    CameraError,
    backproject,
    camera_center,
    crop_camera,
    pixel_rays,
    pixel_to_grid,
    project_points,
    read_params,
    rotate_camera_90,
    sample_image,
    scale_camera,
    visibility_mask,
    write_params,
)


def rot_y(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def make_camera(yaw=0.3):
    K = np.array([[800.0, 0, 320.5], [0, 780.0, 240.25], [0, 0, 1]])
    Rt = np.c_[rot_y(yaw), [0.1, -0.2, 5.0]]
    return Camera(K, Rt, 640, 480)


def test_known_answer_principal_point_and_offsets():
    # A camera at the origin looking down +z projects (0, 0, 1) to the principal point,
    # and (1, 2, 4) to (cx + fx / 4, cy + 2 fy / 4), worked by hand.
    K = np.array([[100.0, 0, 50], [0, 200.0, 40], [0, 0, 1]])
    Rt = np.c_[np.eye(3), np.zeros(3)]
    pix, depth = project_points(np.array([[0.0, 0, 1], [1, 2, 4]]), K, Rt)
    np.testing.assert_allclose(pix, [[50, 40], [75, 140]])
    np.testing.assert_allclose(depth, [1, 4])


def test_shapes_batched_views_numpy_and_torch_agree():
    cams = [make_camera(a) for a in (-0.4, 0.0, 0.5)]
    K = np.stack([c.K for c in cams])
    Rt = np.stack([c.Rt for c in cams])
    pts = np.random.default_rng(0).normal(size=(7, 3))
    pix, depth = project_points(pts, K, Rt)
    assert pix.shape == (3, 7, 2) and depth.shape == (3, 7)
    pix_t, depth_t = project_points(torch.tensor(pts), torch.tensor(K), torch.tensor(Rt))
    np.testing.assert_allclose(pix_t.numpy(), pix, atol=1e-9)
    np.testing.assert_allclose(depth_t.numpy(), depth, atol=1e-12)


def test_project_backproject_round_trip_and_rays():
    cam = make_camera()
    pts = np.random.default_rng(1).normal(size=(50, 3))
    pix, depth = cam.project(pts)
    np.testing.assert_allclose(backproject(pix, depth, cam.K, cam.Rt), pts, atol=1e-9)
    origin, d = pixel_rays(pix, cam.K, cam.Rt)
    np.testing.assert_allclose(origin[0], camera_center(cam.Rt))
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0)
    dist = np.linalg.norm(pts - origin, axis=1)
    np.testing.assert_allclose(origin + d * dist[:, None], pts, atol=1e-9)


def test_visibility_behind_camera_and_off_image():
    cam = make_camera(0.0)
    C = camera_center(cam.Rt)
    pts = np.array([C + [0, 0, 3], C + [0, 0, -3], C + [100, 0, 3]])  # in front, behind, far off to the side
    pix, depth = cam.project(pts)
    vis = visibility_mask(pix, depth, cam.width, cam.height)
    assert vis.tolist() == [True, False, False]


def test_gradient_of_projection_float64():
    K = torch.tensor(make_camera().K)
    Rt = torch.tensor(make_camera().Rt)
    pts = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p: project_points(p, K, Rt)[0], (pts,))


def test_grid_sample_at_projected_pixel_returns_that_pixel_exactly():
    # With power-of-two sizes every step of the convention is exact in floating point: equality.
    W, H = 64, 32
    img = torch.arange(H * W, dtype=torch.float64).reshape(1, 1, H, W)
    pix = torch.tensor([[[0.0, 0.0], [17.0, 5.0], [63.0, 31.0], [30.0, 20.0]]], dtype=torch.float64)
    vals = sample_image(img, pix, W, H)[0, 0]
    expected = torch.tensor([img[0, 0, int(y), int(x)] for x, y in pix[0]])
    assert torch.equal(vals, expected)
    # Other sizes: exact up to float64 rounding of 1 / W.
    W, H = 60, 45
    img = torch.arange(H * W, dtype=torch.float64).reshape(1, 1, H, W)
    pix = torch.tensor([[[0.0, 0.0], [17.0, 5.0], [59.0, 44.0]]], dtype=torch.float64)
    vals = sample_image(img, pix, W, H)[0, 0]
    expected = torch.tensor([img[0, 0, int(y), int(x)] for x, y in pix[0]])
    torch.testing.assert_close(vals, expected, rtol=0, atol=1e-9)
    W, H = 64, 48
    img = torch.arange(H * W, dtype=torch.float64).reshape(1, 1, H, W)
    # A point projected by a camera lands on its pixel: sample there and get the value back.
    cam = Camera(np.array([[40.0, 0, 31.0], [0, 40.0, 23.0], [0, 0, 1]]), np.c_[np.eye(3), np.zeros(3)], W, H)
    X = backproject(np.array([[12.0, 9.0]]), np.array([2.0]), cam.K, cam.Rt)
    p, _ = cam.project(X)
    v = sample_image(img, torch.tensor(p)[None], W, H)[0, 0, 0]
    assert v.item() == pytest.approx(img[0, 0, 9, 12].item(), abs=1e-9)
    # Half resolution: pixel centres of a 2x2 block average to the half-res texel (block average image).
    half = img.reshape(1, 1, H // 2, 2, W // 2, 2).mean(dim=(3, 5))
    v = sample_image(half, torch.tensor([[[2.5, 6.5]]], dtype=torch.float64), W, H)[0, 0, 0]
    assert v.item() == pytest.approx(half[0, 0, 3, 1].item(), abs=1e-9)


def test_pixel_to_grid_corners():
    g = pixel_to_grid(np.array([[-0.5, -0.5], [99.5, 49.5]]), 100, 50)
    np.testing.assert_allclose(g, [[-1, -1], [1, 1]])


def test_scale_crop_rotate_keep_projection_consistent():
    cam = make_camera()
    pts = np.random.default_rng(2).normal(size=(20, 3)) * 0.3
    pix, _ = cam.project(pts)
    s = scale_camera(cam, 320, 240)
    ps, _ = s.project(pts)
    np.testing.assert_allclose(ps, (pix + 0.5) * 0.5 - 0.5, atol=1e-9)
    c = crop_camera(cam, 10, 20, 300, 200)
    pc, _ = c.project(pts)
    np.testing.assert_allclose(pc, pix - [10, 20], atol=1e-9)
    r = rotate_camera_90(cam, clockwise=True)
    pr, _ = r.project(pts)
    np.testing.assert_allclose(pr, np.c_[cam.height - 1 - pix[:, 1], pix[:, 0]], atol=1e-9)
    assert (r.width, r.height) == (cam.height, cam.width)
    np.testing.assert_allclose(r.Rt[:, :3] @ r.Rt[:, :3].T, np.eye(3), atol=1e-12)
    r2 = rotate_camera_90(cam, clockwise=False)
    pr2, _ = r2.project(pts)
    np.testing.assert_allclose(pr2, np.c_[pix[:, 1], cam.width - 1 - pix[:, 0]], atol=1e-9)


def test_params_round_trip(tmp_path):
    cams = {"0": make_camera(0.1), "3": make_camera(-0.2)}
    cams["3"].valid = False
    write_params(tmp_path / "params.json", cams)
    back = read_params(tmp_path / "params.json")
    assert list(back) == ["0", "3"]
    np.testing.assert_allclose(back["3"].K, cams["3"].K)
    assert back["3"].valid is False and back["0"].valid is True


def _write(tmp_path, params):
    p = tmp_path / "params.json"
    p.write_text(json.dumps(params))
    return p


def test_params_missing_K_names_file_and_key(tmp_path):
    params = make_camera().to_params("7")
    del params["7_K"]
    params.update(make_camera().to_params("8"))
    p = _write(tmp_path, params)
    with pytest.raises(CameraError, match=r"params\.json of 012/03 has no key 7_K"):
        read_params(p, where="params.json of 012/03")
    with pytest.raises(CameraError) as exc:
        read_params(p)
    assert str(p) in str(exc.value) and "7_K" in str(exc.value)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update({"0_K": [[0, 0, 0], [0, 0, 0], [0, 0, 1]]}), "singular"),
        (lambda d: d.update({"0_K": [[float("nan"), 0, 1], [0, 1, 1], [0, 0, 1]]}), "NaN"),
        (lambda d: d.update({"0_Rt": (np.c_[2 * np.eye(3), np.zeros(3)]).tolist()}), "not a rotation"),
        (lambda d: d.update({"0_Rt": [[1, 0, 0], [0, 1, 0]]}), "expected 3x4"),
        (lambda d: d.pop("0_width"), "0_width"),
    ],
)
def test_params_bad_values(tmp_path, edit, message):
    params = make_camera().to_params("0")
    edit(params)
    with pytest.raises(CameraError, match=message):
        read_params(_write(tmp_path, params))


def test_params_not_json(tmp_path):
    p = tmp_path / "params.json"
    p.write_text("{not json")
    with pytest.raises(CameraError, match="not valid JSON"):
        read_params(p)
