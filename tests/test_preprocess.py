"""preprocess_images.py and mvfr.preprocess: undistortion, view selection, K update, bad input."""

import json
import shutil

import numpy as np
import pytest

from mvfr.camera import Camera, project_points, read_params, scale_camera
from mvfr.datafolder import DataFolder, RawFolder
from mvfr.preprocess import resized_size
from mvfr.synthesis import capture


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """2 faces, 4 views, 256 px, written by the synthesiser, with the in-memory captures kept."""
    root = tmp_path_factory.mktemp("pp")
    raw = RawFolder(root / "raw")
    opt = capture.SynthOptions(num_views=4, image_long_side=256, dpmap_size=256, albedo_size=256, seed=11,
                               distorted_fraction=1.0, keep_clean=True)
    caps = {}
    select, rts = {}, {}
    for pid in (1, 2):
        cap = capture.synthesize_capture(pid, 1, opt)
        capture.write_capture(raw, cap)
        caps[cap.fid] = cap
        select.setdefault(str(pid), {})["1"] = capture.select_views(cap)
        rts.setdefault(str(pid), {})["1"] = cap.rt_scale
    capture.write_metadata(raw, select, rts, [(1, 1), (2, 1)], {2})
    return root, raw, caps


def _run(raw_root, data_root, *extra):
    import preprocess_images

    return preprocess_images.main(["--facescape_dataroot", str(raw_root), "--dataroot", str(data_root), *extra])


def image_shift(img: np.ndarray, ref: np.ndarray, border: int = 12) -> np.ndarray:
    """Sub-pixel shift ``(dx, dy)`` of ``img`` against ``ref`` (grey ``[H, W]``; ``img(x) ~ ref(x - d)``) by
    linearised least squares on both images blurred by 1 px, ignoring ``border`` pixels (replicated after
    undistortion). Accurate to a few hundredths of a pixel for shifts under one pixel; phase correlation on
    images this small wanders by up to half a pixel."""
    import cv2

    a = cv2.GaussianBlur(img, (0, 0), 1.0)[border:-border, border:-border].astype(np.float64)
    b = cv2.GaussianBlur(ref, (0, 0), 1.0)[border:-border, border:-border].astype(np.float64)
    gy, gx = np.gradient(0.5 * (a + b))
    d, *_ = np.linalg.lstsq(np.stack([gx.ravel(), gy.ravel()], 1), (b - a).ravel(), rcond=None)
    return d


def test_processed_cameras_and_images_match_the_renderer(tiny):
    root, raw, caps = tiny
    data = DataFolder(root / "data")
    assert _run(raw.root, data.root, "--image_long_side", "200") == 0
    for fid, cap in caps.items():
        cams = read_params(data.params(fid))
        valid = [v for v in capture.select_views(cap) if cap.cameras[str(v)].valid]
        assert list(cams) == sorted(map(str, valid), key=int)  # invalid view skipped, names kept
        assert set(cams) == {v for v in cap.cameras if cap.cameras[v].valid}
        for v, cam in cams.items():
            assert not np.any(cam.dist) and max(cam.width, cam.height) == 200
            # the renderer's own camera (head frame, mm, no distortion), scaled to the processed size
            rc = cap.cameras_mm[v]
            ref = scale_camera(Camera(rc.K, rc.Rt, rc.width, rc.height), cam.width, cam.height)
            pix_ref, _ = project_points(cap.landmarks_mm, ref.K, ref.Rt)
            pix, _ = project_points(np.load(raw.landmarks3d(fid)), cam.K, cam.Rt)
            assert np.abs(pix - pix_ref).max() < 0.5
            # image content: the undistorted, resized image lines up with the clean render
            import cv2

            from mvfr.atomic_io import load_image

            img = load_image(data.image(fid, v)).astype(np.float32).mean(-1)
            ref_img = cv2.resize(cap.clean[v], (cam.width, cam.height), interpolation=cv2.INTER_AREA).astype(np.float32).mean(-1)
            d = image_shift(img, ref_img)
            assert np.hypot(*d) < 0.25, (fid, v, d)
            # the estimator sees a half-pixel misalignment: the check can fail
            half = cv2.warpAffine(ref_img, np.float32([[1, 0, 0.5], [0, 1, 0]]), (cam.width, cam.height),
                                  flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            assert abs(image_shift(half, ref_img)[0] - 0.5) < 0.15
    for name in ("select_dict.json", "id.json", "Rt_scale_dict.json"):
        assert (data.root / name).read_text() == (raw.root / name).read_text()


def test_view_number_limit_and_distortion_present(tiny):
    root, raw, caps = tiny
    assert all(np.any(c.dist) for cap in caps.values() for c in cap.cameras.values())
    data = DataFolder(root / "data_2views")
    assert _run(raw.root, data.root, "--if_view_num", "2", "--image_long_side", "128") == 0
    for fid, cap in caps.items():
        order = [str(v) for v in capture.select_views(cap) if cap.cameras[str(v)].valid][:2]
        assert sorted(read_params(data.params(fid))) == sorted(order)


def test_bad_input_names_file_and_key_and_skips_face(tiny, tmp_path, capsys):
    root, raw, caps = tiny
    bad = RawFolder(tmp_path / "raw")
    shutil.copytree(raw.root, bad.root)
    # face 001_01: a corrupt JPEG of a selected valid view
    cam1 = caps["001_01"].cameras
    v1 = next(v for v in cam1 if cam1[v].valid)
    bad.image("001_01", v1).write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    data = DataFolder(tmp_path / "data")
    assert _run(bad.root, data.root) != 0
    err = capsys.readouterr().err
    assert str(bad.image("001_01", v1)) in err and "FAILED 001_01" in err
    assert data.params("002_01").is_file() and not data.params("001_01").exists()
    # face 002_01: params.json without a key
    params = json.loads(bad.params("002_01").read_text())
    del params["3_K"]
    bad.params("002_01").write_text(json.dumps(params))
    data2 = DataFolder(tmp_path / "data2")
    assert _run(bad.root, data2.root) != 0
    err = capsys.readouterr().err
    assert "3_K" in err and "params.json of 002_01" in err


def test_resized_size():
    assert resized_size(864, 1296, 1296) == (864, 1296)
    assert resized_size(1296, 864, 648) == (648, 432)
    with pytest.raises(ValueError):
        resized_size(10, 10, 0)
