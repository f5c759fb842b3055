"""Defect [K]: the common crop across views takes the smallest width and height over all views, so a
capture mixing portrait and landscape images (a user's own rig) silently loses the face's corners.

The crop (``mvfr/mvs/face_inputs.py``, ``face_crops``) now takes the largest face box and
``crop_views`` zero-pads a view where the crop runs past its border; this test failed before."""

import numpy as np

from mvfr.camera import Camera, project_points
from mvfr.mvs.face_inputs import face_crops


def _cameras():
    # both look down +z at a 0.6 x 2 patch at z = 1; the portrait one sees it tall, the landscape one wide
    K_p = np.array([[125.0, 0, 99.5], [0, 125.0, 149.5], [0, 0, 1]])
    K_l = np.array([[125.0, 0, 149.5], [0, 125.0, 99.5], [0, 0, 1]])
    Rz = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])  # roll by 90 degrees: the patch lies along x
    portrait = Camera(K_p, np.concatenate([np.eye(3), np.zeros((3, 1))], 1), 200, 300)
    landscape = Camera(K_l, np.concatenate([Rz, np.zeros((3, 1))], 1), 300, 200)
    return [portrait, landscape]


def test_mixed_portrait_landscape_crop_keeps_the_whole_face():
    S = 16
    ys, xs = np.mgrid[0:S, 0:S]
    pos = np.stack([(xs / (S - 1) - 0.5) * 0.6, (ys / (S - 1) - 0.5) * 2.0, np.ones_like(xs, float)], -1)
    nrm = np.broadcast_to([0.0, 0.0, -1.0], pos.shape).copy()
    mask = np.ones((S, S), bool)
    cams = _cameras()
    origins, W, H = face_crops(pos, nrm, mask, cams, search_units=0.0, margin_px=2)
    for cam, (ox, oy) in zip(cams, origins):
        pix, _ = project_points(pos[mask], cam.K, cam.Rt)
        assert (pix >= -0.5).all() and (pix[:, 0] <= cam.width - 0.5).all() and (pix[:, 1] <= cam.height - 0.5).all()
        inside = (pix[:, 0] >= ox - 0.5) & (pix[:, 0] <= ox + W - 0.5) & (pix[:, 1] >= oy - 0.5) & (pix[:, 1] <= oy + H - 0.5)
        assert inside.all(), f"crop {W}x{H} at {(ox, oy)} of a {cam.width}x{cam.height} view loses {(~inside).sum()} texels"


def test_crop_views_zero_pads_past_the_border():
    from mvfr.mvs.face_inputs import crop_views

    cams = _cameras()
    imgs = [np.full((c.height, c.width, 3), 200, np.uint8) for c in cams]
    out, K, _ = crop_views(imgs, cams, [(-10, 0), (0, -5)], 240, 240)
    assert out.shape == (2, 240, 240, 3)
    assert (out[0, :, :10] == 0).all() and (out[0, :240, 10:210] == 200).all() and (out[0, :, 210:] == 0).all()
    assert (out[1, :5] == 0).all() and (out[1, 5:205] == 200).all()
    assert np.isclose(K[0, 0, 2], cams[0].K[0, 2] + 10)
