"""The MediaPipe landmark detector wrapper: mirror map, flip averaging, pixel convention."""

import numpy as np
import pytest
import skimage.data

from mvfr.landmarks import FaceLandmarkDetector, inter_ocular_distance, mirror_landmark_index
from mvfr.template import load_canonical_face


@pytest.fixture(scope="module")
def detector():
    with FaceLandmarkDetector() as det:
        yield det


def test_mirror_index_is_an_involution_pairing_known_landmarks():
    idx = mirror_landmark_index()
    assert (idx[idx] == np.arange(468)).all()
    assert idx[33] == 263 and idx[263] == 33  # outer eye corners
    assert idx[1] == 1 and idx[152] == 152  # nose tip and chin lie on the symmetry plane
    v = load_canonical_face().vertices
    np.testing.assert_allclose(v[idx] * [-1, 1, 1], v, atol=1e-9)


def test_flip_averaged_detection_is_mirror_consistent(detector):
    # With flip averaging the detector is equivariant to a left-right flip of the image (up to OpenCV's
    # 1/32-pixel interpolation tables in the refinement crops: a few thousandths of a pixel).
    img = skimage.data.astronaut()
    lm, score = detector.detect(img)
    assert lm is not None and lm.shape == (468, 2) and score > 0.9
    lm_f, _ = detector.detect(np.ascontiguousarray(img[:, ::-1]))
    back = lm_f[mirror_landmark_index()] * [-1, 1] + [img.shape[1] - 1, 0]
    np.testing.assert_allclose(back, lm, atol=1e-2)
    assert 40 < inter_ocular_distance(lm) < 120  # outer eye corners of the astronaut: about 60 px apart


def test_large_images_are_detected_on_a_copy_and_mapped_back(detector):
    img = skimage.data.astronaut()  # 512 x 512
    big = np.repeat(np.repeat(img, 3, 0), 3, 1)  # 1536 x 1536, above max_side
    lm, _ = detector.detect(img)
    lm_big, _ = detector.detect(big)
    # pixel centres: x_big = 3 x + 1
    err = np.linalg.norm(lm_big - (3 * lm + 1), axis=1)
    assert np.median(err) < 0.02 * inter_ocular_distance(3 * lm)


def test_no_face_and_bad_input(detector):
    assert detector.detect(np.zeros((128, 128, 3), np.uint8)) == (None, 0.0)
    with pytest.raises(ValueError, match="RGB uint8"):
        detector.detect(np.zeros((128, 128), np.uint8))


def test_crop_refinement_maps_back_to_the_image(detector):
    # Every refinement crop (shifted, scaled, rotated) must map its landmarks back onto the same face:
    # a wrong crop offset, scale or rotation sign would move them by tens of pixels.
    img = skimage.data.astronaut()
    with FaceLandmarkDetector(refine_passes=0) as plain:
        lm0, _ = plain.detect(img)
    iod = inter_ocular_distance(lm0)
    for jitter in [(0, 0, 1, 0), (0.08, -0.05, 1, 0), (0, 0, 0.8, 0), (0, 0, 1.25, 0), (0, 0, 1, 15), (0, 0, 1, -15)]:
        lm = detector._detect_crop(img, lm0, *jitter)
        assert lm is not None and lm.shape == (468, 2)
        assert np.median(np.linalg.norm(lm - lm0, axis=1)) < 0.02 * iod, jitter
    # the default detector (refinement on) agrees with the plain one on a real photograph
    lm, _ = detector.detect(img)
    assert np.median(np.linalg.norm(lm - lm0, axis=1)) < 0.02 * iod


def test_crop_outside_the_image_is_padded(detector):
    # A face at the image border: the refinement crop leaves the image and is padded; landmarks stay put.
    img = np.ascontiguousarray(skimage.data.astronaut()[:, 100:])  # the face now sits near the left edge
    with FaceLandmarkDetector(refine_passes=0) as plain:
        lm0, _ = plain.detect(img)
    lo, hi = lm0.min(0), lm0.max(0)
    ext = max(hi - lo)
    dx = -0.4
    assert 0.5 * (lo[0] + hi[0]) + dx * ext - 0.5 * ext * (1 + 2 * detector.crop_margin) < -10  # the crop leaves the image
    lm = detector._detect_crop(img, lm0, dx, 0.0, 1.0)
    assert lm is not None
    # the crop moved, the face did not: landmarks within a few percent of the inter-ocular distance
    assert np.median(np.linalg.norm(lm - lm0, axis=1)) < 0.03 * inter_ocular_distance(lm0)


def test_bad_refinement_options():
    with pytest.raises(ValueError, match="refine_passes"):
        FaceLandmarkDetector(refine_passes=-1)
    with pytest.raises(ValueError, match="crop_jitter"):
        FaceLandmarkDetector(crop_jitter=[(0, 0, 0.0, 0)])
