"""Dense 2D face landmarks: MediaPipe FaceLandmarker (Tasks API) with ``predefine_data/face_landmarker_v2.task``.

The model predicts 478 points; the first 468 are the vertices of the template (vertex i = landmark
i), the other 10 are iris points and are dropped. Landmarks are returned in pixels of the image
passed in (pixel (0, 0) = centre of the top-left pixel, DESIGN §3).
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from mvfr.template import LANDMARK_MODEL, NUM_LANDMARKS

log = logging.getLogger(__name__)

os.environ.setdefault("GLOG_minloglevel", "2")

# Test-time augmentation of the refinement pass: (dx, dy, scale, angle_deg) of each crop (see
# FaceLandmarkDetector._detect_crop). Four crops at 0.9 / 1.1 x the face box, rotated by -6 / +6 degrees:
# on synthetic 1296 px captures this lowered the base-mesh chamfer by ~0.25 mm (2.63 -> 2.39 mm).
CROP_JITTER = ((0.0, 0.0, 0.9, -6.0), (0.0, 0.0, 1.1, -6.0), (0.0, 0.0, 0.9, 6.0), (0.0, 0.0, 1.1, 6.0))


class FaceLandmarkDetector:
    """A FaceLandmarker created once and reused for many images.

    ``detect(image)`` takes an RGB uint8 image ``[H, W, 3]`` and returns ``(landmarks, score)``:
    ``landmarks [468, 2]`` float64 pixels of that image, or ``None`` when no face is found, and
    ``score`` in [0, 1]. The Tasks API exposes no confidence, so ``score`` is the fraction of the
    468 landmarks that fall inside the image (0.0 when no face is found).

    Images whose long side exceeds ``max_side`` pixels are detected on a resized copy (the model
    works at 256 x 256 internally) and the landmarks are mapped back to the full image.

    With ``refine_passes`` >= 1 (default 1) the face is then detected again on square crops of the
    full-resolution image around the first landmarks (side: (1 + 2 ``crop_margin``) x the landmarks'
    extent, resampled to ``crop_size`` pixels), one per ``crop_jitter`` entry (dx, dy as fractions of
    the extent, scale, rotation in degrees), and the landmarks mapped back from the crops are averaged.
    The jittered crops decorrelate part of the detector's error (test-time augmentation).

    With ``flip_average`` (default) the image is also detected mirrored left-right; the mirrored
    landmarks are mapped back (x -> W - 1 - x, landmark i <-> its mirror partner on the symmetric
    template) and the two estimates are averaged. This test-time augmentation cancels the
    detector's left-right bias and halves part of its noise, at twice the detection time.
    """

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        max_side: int = 1024,
        min_detection_confidence: float = 0.5,
        min_presence_confidence: float = 0.5,
        flip_average: bool = True,
        refine_passes: int = 1,
        crop_size: int = 256,
        crop_margin: float = 0.6,
        crop_jitter: Sequence[Sequence[float]] = CROP_JITTER,
    ):
        from mediapipe.tasks.python import BaseOptions, vision

        if refine_passes < 0 or crop_size < 64 or crop_margin < 0 or not len(crop_jitter):
            raise ValueError(f"need refine_passes >= 0, crop_size >= 64, crop_margin >= 0 and at least one crop_jitter "
                             f"entry; got {refine_passes}, {crop_size}, {crop_margin}, {len(crop_jitter)}")
        if any(len(j) not in (3, 4) or j[2] <= 0 for j in crop_jitter):
            raise ValueError(f"crop_jitter entries are (dx, dy, scale > 0[, angle_deg]); got {list(crop_jitter)}")
        path = Path(model_path or LANDMARK_MODEL)
        if not path.is_file():
            raise FileNotFoundError(f"landmark model {path} does not exist; it ships in predefine_data/ (see README)")
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(path)),
            running_mode=vision.RunningMode.IMAGE,
            num_faces=1,
            min_face_detection_confidence=min_detection_confidence,
            min_face_presence_confidence=min_presence_confidence,
        )
        self._landmarker = vision.FaceLandmarker.create_from_options(options)
        self.max_side = int(max_side)
        self.flip_average = bool(flip_average)
        self.refine_passes = int(refine_passes)
        self.crop_size = int(crop_size)
        self.crop_margin = float(crop_margin)
        self.crop_jitter = [tuple(map(float, j)) for j in crop_jitter]
        atexit.register(self.close)

    def detect(self, image: np.ndarray) -> tuple[np.ndarray | None, float]:
        """``image [H, W, 3]`` RGB uint8 -> ``(landmarks [468, 2] pixels or None, score)``."""
        import cv2

        if self._landmarker is None:
            raise RuntimeError("FaceLandmarkDetector was closed")
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"detect expects an RGB uint8 image [H, W, 3], got {image.dtype} {image.shape}")
        H, W = image.shape[:2]
        small = image
        if max(H, W) > self.max_side:
            s = self.max_side / max(H, W)
            small = cv2.resize(image, (max(1, round(W * s)), max(1, round(H * s))), interpolation=cv2.INTER_AREA)
        norm = self._detect_flip_averaged(small)
        if norm is None:
            return None, 0.0
        # normalised coordinates span the image extent: 0 = left/top edge, 1 = right/bottom edge
        pix = norm * np.array([W, H]) - 0.5
        for _ in range(self.refine_passes):
            refined = [self._detect_crop(image, pix, *j) for j in self.crop_jitter]
            refined = [r for r in refined if r is not None]
            if not refined:
                break
            pix = np.mean(refined, axis=0)
        inside = (pix[:, 0] >= -0.5) & (pix[:, 0] <= W - 0.5) & (pix[:, 1] >= -0.5) & (pix[:, 1] <= H - 0.5)
        return pix, float(inside.mean())

    def _detect_flip_averaged(self, image: np.ndarray) -> np.ndarray | None:
        """[468, 2] normalised landmarks of ``image``, averaged with the mirrored detection when enabled."""
        norm = self._detect_normalised(image)
        if self.flip_average:
            flipped = self._detect_normalised(image[:, ::-1])
            if flipped is not None:
                flipped = flipped[mirror_landmark_index()] * [-1.0, 1.0] + [1.0, 0.0]  # x_n -> 1 - x_n
                norm = flipped if norm is None else 0.5 * (norm + flipped)
        return norm

    def _detect_crop(self, image: np.ndarray, pix: np.ndarray, dx: float = 0.0, dy: float = 0.0,
                     scale: float = 1.0, angle_deg: float = 0.0) -> np.ndarray | None:
        """Detect again on a square crop around landmarks ``pix [468, 2]`` (pixels of ``image``), resampled
        to ``crop_size`` pixels: the crop side is (1 + 2 margin) x the landmarks' larger extent times
        ``scale``, its centre is shifted by (dx, dy) x that extent and it is rotated by ``angle_deg``
        about its centre. Returns [468, 2] pixels of ``image`` or None."""
        import cv2

        H, W = image.shape[:2]
        lo, hi = pix.min(0), pix.max(0)
        ext = float(max(hi - lo))
        side = max(8.0, ext * (1.0 + 2.0 * self.crop_margin) * scale)
        c = 0.5 * (lo + hi) + np.array([dx, dy]) * ext
        a = self.crop_size / side
        src = image
        f = np.ones(2)
        if a < 0.8:  # area-average down to about the crop's scale first (warpAffine would alias)
            size = (max(1, round(W * a * 1.25)), max(1, round(H * a * 1.25)))
            src = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            f = np.array([size[0] / W, size[1] / H])
        # pixel centres: x_src = (x + 0.5) f - 0.5; crop u = a/f R (x_src - c_src) + (crop_size - 1) / 2
        c_src = (c + 0.5) * f - 0.5
        th = np.radians(angle_deg)
        R = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        A = R * (a / f)[None, :]
        M = np.concatenate([A, (np.full(2, (self.crop_size - 1) / 2) - A @ c_src)[:, None]], 1)
        crop = cv2.warpAffine(src, M, (self.crop_size, self.crop_size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
        norm = self._detect_flip_averaged(crop)
        if norm is None:
            return None
        u = norm * self.crop_size - 0.5  # crop pixels
        x_src = (u - M[:, 2]) @ np.linalg.inv(A).T
        return (x_src + 0.5) / f - 0.5

    def _detect_normalised(self, image: np.ndarray) -> np.ndarray | None:
        """[468, 2] landmarks in normalised image coordinates, or None when no face is found."""
        import mediapipe as mp

        result = self._landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image)))
        if not result.face_landmarks:
            return None
        return np.array([[p.x, p.y] for p in result.face_landmarks[0][:NUM_LANDMARKS]], dtype=np.float64)

    def close(self) -> None:
        if getattr(self, "_landmarker", None) is not None:
            try:
                self._landmarker.close()
            except RuntimeError:
                # At interpreter exit, concurrent.futures has already stopped MediaPipe's dispatcher
                # thread, so close() cannot run; drop the handle so __del__ does not try again.
                if hasattr(self._landmarker, "_handle"):
                    self._landmarker._handle = None
            self._landmarker = None

    def __enter__(self) -> "FaceLandmarkDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@functools.lru_cache(maxsize=1)
def mirror_landmark_index() -> np.ndarray:
    """``[468]`` int: landmark i's left-right mirror partner on the (exactly symmetric) template."""
    from scipy.spatial import cKDTree

    from mvfr.template import load_canonical_face

    v = load_canonical_face().vertices
    dist, idx = cKDTree(v).query(v * [-1.0, 1.0, 1.0])
    if dist.max() > 1e-6 or not (idx[idx] == np.arange(len(v))).all():
        raise RuntimeError("the template is not left-right symmetric; cannot mirror landmarks")
    return idx


def inter_ocular_distance(landmarks: np.ndarray) -> float:
    """Distance between the outer eye corners (landmarks 33 and 263) of ``landmarks [468, D]``."""
    return float(np.linalg.norm(np.asarray(landmarks)[33] - np.asarray(landmarks)[263]))


# ------------------------------------------------------------------------------- upright views


def _image_up_angles(cameras, up_world: np.ndarray) -> np.ndarray:
    """Angle (degrees, clockwise from the image's "up") at which ``up_world`` appears in each view."""
    out = []
    for cam in cameras:
        u = np.asarray(cam.Rt)[:, :3] @ up_world  # camera axes: x right, y down
        out.append(np.degrees(np.arctan2(u[0], -u[1])))
    return np.asarray(out)


def upright_quarter_turns(cameras) -> list[int]:
    """Counter-clockwise quarter turns ``k`` (0..3) that make each view upright: ``np.rot90(image, k)``.

    "Up" is the rig's consensus: the mean of the cameras' own up axes (``-R[1]`` in world
    coordinates), refined once with the turned views, so a camera rolled by about 90 or 180 degrees
    relative to the others (a portrait shot in a landscape rig, an upside-down mount) is turned back
    before landmark detection, which works on upright faces. A rig whose every camera shares one roll
    has no reference here; :func:`detect_upright` then falls back to trying every turn.
    """
    cams = list(cameras)
    if not cams:
        return []
    ups = np.stack([-np.asarray(c.Rt)[1, :3] for c in cams])
    turns = np.zeros(len(cams), dtype=int)
    for _ in range(2):
        # the up axis of each camera after its turn: rotating the image ccw by k turns its up by -k*90 deg
        turned = []
        for c, k, up in zip(cams, turns, ups):
            R = np.asarray(c.Rt)[:, :3]
            right = R[0]
            a = np.radians(90.0 * k)
            turned.append(np.cos(a) * up + np.sin(a) * right)
        mean = np.sum(turned, 0)
        if np.linalg.norm(mean) < 1e-9:
            return [0] * len(cams)
        mean /= np.linalg.norm(mean)
        turns = np.mod(np.round(_image_up_angles(cams, mean) / 90.0).astype(int), 4)
    return [int(k) for k in turns]


def rotated_to_original(pix: np.ndarray, k: int, width: int, height: int) -> np.ndarray:
    """Pixels ``[N, 2]`` of ``np.rot90(image, k)`` (image ``width x height``) -> pixels of ``image``."""
    pix = np.array(pix, dtype=np.float64)
    W, H = width, height
    sizes = []
    for _ in range(k % 4):  # the sizes of the intermediate images, first turn first
        sizes.append((W, H))
        W, H = H, W
    for W0, _H0 in reversed(sizes):
        # one ccw turn of a W0-wide image: (x', y') = (y, W0 - 1 - x)  =>  x = W0 - 1 - y', y = x'
        pix = np.stack([W0 - 1 - pix[:, 1], pix[:, 0]], 1)
    return pix


def detect_upright(detector, image: np.ndarray, turns: int = 0, try_all: bool = True):
    """Detect on ``np.rot90(image, turns)`` and map the landmarks back -> ``(landmarks [468, 2] pixels of
    ``image`` or None, score)``. With ``try_all``, when nothing is found the other turns are tried and
    the best-scoring detection is kept."""
    H, W = image.shape[:2]
    order = [turns % 4] + ([k for k in range(4) if k != turns % 4] if try_all else [])
    best = (None, 0.0)
    for k in order:
        lm, score = detector.detect(np.ascontiguousarray(np.rot90(image, k)) if k else image)
        if lm is not None:
            lm = rotated_to_original(lm, k, W, H)
            if k == order[0]:
                return lm, score
            if score > best[1]:
                best = (lm, score)
    return best
