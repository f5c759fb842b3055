"""Images are decoded as stored (EXIF orientation ignored, so they match their calibration), and a view
rolled by 90 or 180 degrees against the rig is detected turned upright, its landmarks mapped back."""

import dataclasses

import numpy as np
import pytest

from mvfr.atomic_io import load_image
from mvfr.camera import rotate_camera_90
from mvfr.landmarks import detect_upright, rotated_to_original, upright_quarter_turns


def test_jpeg_with_exif_orientation_is_read_as_stored(tmp_path):
    from PIL import Image

    img = np.zeros((40, 60, 3), np.uint8)
    img[:10, :20] = (255, 0, 0)  # a red block top-left, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(img).save(tmp_path / "o.jpg", quality=95, exif=exif.tobytes())
    with Image.open(tmp_path / "o.jpg") as im:
        assert im.getexif()[0x0112] == 6
    out = load_image(tmp_path / "o.jpg")
    assert out.shape == (40, 60, 3)  # not turned to 60 x 40
    assert out[:10, :20, 0].mean() > 200 and out[30:, 40:, 0].mean() < 50


def test_rotated_to_original_round_trip():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (5, 7))
    for k in range(4):
        rot = np.rot90(img, k)
        ys, xs = np.mgrid[: rot.shape[0], : rot.shape[1]]
        pix = np.stack([xs.ravel(), ys.ravel()], 1).astype(float)
        back = rotated_to_original(pix, k, 7, 5).round().astype(int)
        np.testing.assert_array_equal(img[back[:, 1], back[:, 0]], rot.ravel())


def _rig(n=5):
    from mvfr.camera import Camera

    cams = []
    for a in np.linspace(-60, 60, n):
        t = np.radians(a)
        R = np.array([[np.cos(t), 0, -np.sin(t)], [0, 1, 0], [np.sin(t), 0, np.cos(t)]])  # y down = world down
        cams.append(Camera(np.array([[100.0, 0, 31.5], [0, 100, 23.5], [0, 0, 1]]), np.concatenate([R, [[0], [0], [5]]], 1), 64, 48))
    return cams


def test_upright_quarter_turns_finds_rolled_views():
    cams = _rig()
    assert upright_quarter_turns(cams) == [0] * 5
    cams[1] = rotate_camera_90(cams[1], clockwise=True)  # image turned cw: ccw once makes it upright
    cams[3] = rotate_camera_90(rotate_camera_90(cams[3]), clockwise=True)
    assert upright_quarter_turns(cams) == [0, 1, 0, 2, 0]


@pytest.fixture(scope="module")
def synthetic_views():
    from mvfr.synthesis import capture

    opt = capture.SynthOptions(num_views=4, image_long_side=256, dpmap_size=128, albedo_size=256, seed=5,
                               num_invalid_views=0, distorted_fraction=0.0)
    cap = capture.synthesize_capture(1, 1, opt)
    views = sorted(cap.cameras)
    return [cap.images[v] for v in views], [cap.cameras[v] for v in views]


def test_rotated_view_gives_the_unrotated_landmarks(synthetic_views):
    from mvfr.landmarks import FaceLandmarkDetector

    images, cams = synthetic_views
    det = FaceLandmarkDetector()
    ref = [det.detect(im)[0] for im in images]
    # turn view 1 (image and camera) by 90 degrees clockwise, as a portrait shot in a landscape rig
    H, W = images[1].shape[:2]
    rot_images = list(images)
    rot_images[1] = np.ascontiguousarray(np.rot90(images[1], -1))
    rot_cams = list(cams)
    rot_cams[1] = rotate_camera_90(cams[1], clockwise=True)
    turns = upright_quarter_turns(rot_cams)
    assert turns == [0, 1, 0, 0]
    lm, score = detect_upright(det, rot_images[1], turns[1])
    # the reference landmarks in the rotated frame: clockwise (x', y') = (H - 1 - y, x)
    expect = np.stack([H - 1 - ref[1][:, 1], ref[1][:, 0]], 1)
    assert score > 0.9
    np.testing.assert_allclose(lm, expect, atol=1e-6)
    # for the record: the detector alone on the turned image
    naive, _ = det.detect(rot_images[1])
    err_naive = np.inf if naive is None else np.abs(naive - expect).max()
    print(f"rotated view: upright detection max error {np.abs(lm - expect).max():.2e} px, naive {err_naive:.1f} px")
