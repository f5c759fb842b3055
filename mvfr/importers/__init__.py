"""Camera importers: other tools' calibration formats -> the project's :class:`mvfr.camera.Camera`.

One module per format; each exposes pure parsing functions (text, bytes or already-parsed
dicts in, ``{image name: ImportedCamera}`` out) so the stage script ``import_capture.py`` only
reads and writes files:

- :mod:`mvfr.importers.colmap`      COLMAP sparse model, text (``cameras.txt``/``images.txt``) or binary
- :mod:`mvfr.importers.metashape`   Agisoft Metashape camera XML
- :mod:`mvfr.importers.transforms`  NeRF / nerfstudio ``transforms.json``
- :mod:`mvfr.importers.opencv`      OpenCV YAML/JSON per camera (``K``, ``D``, ``R``, ``T``)

Every returned camera follows DESIGN §3: ``x_pix = K (R X + t)``, ``Rt`` world -> camera, pixel
(0, 0) is the *centre* of the top-left pixel, distortion ``[k1 k2 p1 p2 k3]`` (OpenCV).
"""

from __future__ import annotations

import dataclasses
from pathlib import PurePosixPath

import numpy as np

from mvfr.camera import Camera, CameraError, validate_extrinsics, validate_intrinsics


class CaptureImportError(CameraError):
    """A calibration file cannot be imported; the message names the file and the fix."""


@dataclasses.dataclass
class ImportedCamera:
    """One camera of an imported calibration: ``image`` is the image path the tool recorded
    (relative to the image folder, as written in the file), ``camera`` the converted camera."""

    image: str
    camera: Camera


def view_name(image: str) -> str:
    """RAW view name of an image path: its file stem (``"cams/IMG_0001.JPG" -> "IMG_0001"``)."""
    return PurePosixPath(image.replace("\\", "/")).stem


def make_camera(K: np.ndarray, Rt: np.ndarray, width: int, height: int, dist=None, where: str = "camera") -> Camera:
    """Validated :class:`Camera` (errors name ``where``)."""
    K = np.asarray(K, dtype=np.float64)
    Rt = np.asarray(Rt, dtype=np.float64)
    validate_intrinsics(K, where)
    validate_extrinsics(Rt, where)
    d = np.zeros(5)
    if dist is not None:
        dist = np.asarray(dist, dtype=np.float64).ravel()
        if dist.size > 5 and np.any(dist[5:]):
            raise CaptureImportError(f"{where}: distortion has {dist.size} non-zero coefficients; only OpenCV's "
                                     "k1 k2 p1 p2 k3 are supported: recalibrate with the 5-parameter model")
        d[: min(5, dist.size)] = dist[:5]
    if int(width) <= 0 or int(height) <= 0:
        raise CaptureImportError(f"{where}: image size {width}x{height} is not positive; fix the calibration file")
    return Camera(K, Rt, int(width), int(height), d, True)


def rt_from_camera_to_world(c2w: np.ndarray, where: str = "camera") -> np.ndarray:
    """World -> camera ``Rt [3, 4]`` from a camera -> world ``[3|4, 4]`` (OpenCV camera axes) whose
    3 x 3 block may carry a uniform scale (removed: Rt stays a rotation)."""
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.shape not in ((4, 4), (3, 4)) or not np.isfinite(c2w).all():
        raise CaptureImportError(f"{where}: a camera-to-world transform must be a finite 3x4 or 4x4 matrix")
    M = c2w[:3, :3]
    s = np.cbrt(np.linalg.det(M))
    if not s > 0:
        raise CaptureImportError(f"{where}: the camera-to-world rotation has determinant {s ** 3:.3g} <= 0 "
                                 "(a mirrored frame); fix the calibration")
    R_c2w = M / s
    R = R_c2w.T
    t = -R @ c2w[:3, 3]
    return np.concatenate([R, t[:, None]], 1)


def quaternion_to_rotation(qw: float, qx: float, qy: float, qz: float) -> np.ndarray:
    """Unit quaternion (Hamilton, w first, as COLMAP writes it) -> rotation [3, 3]; normalised first."""
    q = np.array([qw, qx, qy, qz], dtype=np.float64)
    n = np.linalg.norm(q)
    if not n > 0:
        raise ValueError("zero quaternion")
    w, x, y, z = q / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def rotation_to_quaternion(R: np.ndarray) -> np.ndarray:
    """Rotation [3, 3] -> unit quaternion ``[w, x, y, z]`` with w >= 0 (inverse of :func:`quaternion_to_rotation`)."""
    R = np.asarray(R, dtype=np.float64)
    K = np.array([
        [R[0, 0] - R[1, 1] - R[2, 2], R[1, 0] + R[0, 1], R[2, 0] + R[0, 2], R[2, 1] - R[1, 2]],
        [R[1, 0] + R[0, 1], R[1, 1] - R[0, 0] - R[2, 2], R[2, 1] + R[1, 2], R[0, 2] - R[2, 0]],
        [R[2, 0] + R[0, 2], R[2, 1] + R[1, 2], R[2, 2] - R[0, 0] - R[1, 1], R[1, 0] - R[0, 1]],
        [R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1], R[0, 0] + R[1, 1] + R[2, 2]],
    ]) / 3.0
    w, v = np.linalg.eigh(K)
    x, y, z, qw = v[:, np.argmax(w)]
    q = np.array([qw, x, y, z])
    return q if q[0] >= 0 else -q


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


def match_images(cameras: list[ImportedCamera], image_files: list[str], where: str, image_dir: str) -> dict[str, str]:
    """Pair each camera with one file of the image folder -> ``{view name: image file}`` (files relative
    to the folder, ``/``-separated).

    A camera's recorded image path matches a file with the same relative path, else the same file
    name, else (when it has no suffix, as Metashape labels and NeRF ``file_path`` often do) the same
    stem with an image suffix. Raises :class:`CaptureImportError` for a camera without an image, an
    image without a camera, or two cameras with the same view name.
    """
    files = [f.replace("\\", "/") for f in image_files if f.lower().endswith(IMAGE_SUFFIXES)]
    by_path = {f: f for f in files}
    by_name: dict[str, list[str]] = {}
    by_stem: dict[str, list[str]] = {}
    for f in files:
        by_name.setdefault(PurePosixPath(f).name, []).append(f)
        by_stem.setdefault(PurePosixPath(f).stem, []).append(f)
    out: dict[str, str] = {}
    missing = []
    for c in cameras:
        rec = c.image.replace("\\", "/")
        while rec.startswith("./"):
            rec = rec[2:]
        p = PurePosixPath(rec)
        if rec in by_path:
            hit = rec
        elif len(by_name.get(p.name, [])) == 1:
            hit = by_name[p.name][0]
        elif p.suffix.lower() not in IMAGE_SUFFIXES and len(by_stem.get(p.name, [])) == 1:
            hit = by_stem[p.name][0]
        else:
            missing.append(c.image)
            continue
        v = view_name(hit)
        if v in out:
            raise CaptureImportError(f"{where}: images {out[v]} and {hit} both give the view name {v!r}; rename one of them")
        out[v] = hit
    if missing:
        raise CaptureImportError(f"{where}: no image in {image_dir} for camera(s) {missing[:5]}"
                                 f"{' ...' if len(missing) > 5 else ''}; put the images there or pass the right --images")
    unused = sorted(set(files) - set(out.values()))
    if unused:
        raise CaptureImportError(f"{image_dir}: image(s) {unused[:5]}{' ...' if len(unused) > 5 else ''} have no camera in "
                                 f"{where} (not registered/aligned?); remove them from the folder or calibrate them")
    return out
