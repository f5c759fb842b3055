"""COLMAP sparse models (``cameras.txt``/``images.txt`` or ``cameras.bin``/``images.bin``) -> cameras.

COLMAP stores world -> camera poses (quaternion ``qw qx qy qz`` and translation) with OpenCV
camera axes, so ``R, t`` carry over unchanged. Its image coordinates put (0, 0) at the *corner* of
the top-left pixel (the centre of that pixel is (0.5, 0.5)); ours put (0, 0) at its centre
(DESIGN §3), so the principal point moves by half a pixel: ``c_ours = c_colmap - 0.5``.

Supported camera models and how their parameters map to ``K`` and ``[k1 k2 p1 p2 k3]``:
SIMPLE_PINHOLE (f, cx, cy), PINHOLE (fx, fy, cx, cy), SIMPLE_RADIAL (f, cx, cy, k),
RADIAL (f, cx, cy, k1, k2), OPENCV (fx, fy, cx, cy, k1, k2, p1, p2). Any other model is an error
naming it and the file (undistort with ``colmap image_undistorter`` first, which writes PINHOLE
cameras); the fisheye models (SIMPLE_RADIAL_FISHEYE, RADIAL_FISHEYE, OPENCV_FISHEYE,
THIN_PRISM_FISHEYE, RAD_TAN_THIN_PRISM_FISHEYE, FOV) are refused as fisheye, never read as pinhole.
"""

from __future__ import annotations

import struct

import numpy as np

from mvfr.importers import CaptureImportError, ImportedCamera, fisheye_error, make_camera, quaternion_to_rotation

# model id -> (name, number of parameters), as in COLMAP's src/colmap/sensor/models.h
MODELS = {
    0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5), 4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5), 8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12), 11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
}
SUPPORTED = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
FISHEYE = ("SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE", "OPENCV_FISHEYE", "THIN_PRISM_FISHEYE", "RAD_TAN_THIN_PRISM_FISHEYE",
           "FOV")
UNDISTORT_FIX = ("run `colmap image_undistorter` (it writes undistorted images and PINHOLE cameras) and import "
                 "its sparse model and images")
NUM_PARAMS = {name: n for name, n in MODELS.values()}


def intrinsics_from_model(model: str, params, where: str) -> tuple[np.ndarray, np.ndarray]:
    """COLMAP ``model`` and its ``params`` -> ``K [3, 3]`` (our pixel-centre convention), ``dist [5]``."""
    if model in FISHEYE:
        raise fisheye_error(where, f"camera model {model}", UNDISTORT_FIX)
    if model not in SUPPORTED:
        raise CaptureImportError(f"{where}: camera model {model} is not supported (supported: {', '.join(SUPPORTED)}); "
                                 "run `colmap image_undistorter` to get PINHOLE cameras, or recalibrate with OPENCV")
    p = np.asarray(params, dtype=np.float64)
    if p.size != NUM_PARAMS[model]:
        raise CaptureImportError(f"{where}: a {model} camera has {NUM_PARAMS[model]} parameters, got {p.size}")
    d = np.zeros(5)
    if model == "SIMPLE_PINHOLE":
        fx = fy = p[0]
        cx, cy = p[1], p[2]
    elif model == "PINHOLE":
        fx, fy, cx, cy = p[:4]
    elif model == "SIMPLE_RADIAL":
        fx = fy = p[0]
        cx, cy = p[1], p[2]
        d[0] = p[3]
    elif model == "RADIAL":
        fx = fy = p[0]
        cx, cy = p[1], p[2]
        d[:2] = p[3:5]
    else:  # OPENCV
        fx, fy, cx, cy = p[:4]
        d[:4] = p[4:8]
    K = np.array([[fx, 0.0, cx - 0.5], [0.0, fy, cy - 0.5], [0.0, 0.0, 1.0]])
    return K, d


# ------------------------------------------------------------------------------------- text


def _data_lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if not ln.lstrip().startswith("#")]


def parse_cameras_text(text: str, where: str = "cameras.txt") -> dict[int, tuple[str, int, int, np.ndarray]]:
    """``cameras.txt`` -> ``{camera_id: (model, width, height, params)}``."""
    cams = {}
    for i, ln in enumerate(_data_lines(text)):
        if not ln:
            continue
        tok = ln.split()
        try:
            cid, model, w, h = int(tok[0]), tok[1], int(tok[2]), int(tok[3])
            params = np.array([float(x) for x in tok[4:]])
        except (IndexError, ValueError):
            raise CaptureImportError(f"{where}: line {ln!r} is not 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]'; "
                                     "export the model again with `colmap model_converter --output_type TXT`") from None
        cams[cid] = (model, w, h, params)
    return cams


def parse_images_text(text: str, where: str = "images.txt") -> dict[int, tuple[np.ndarray, np.ndarray, int, str]]:
    """``images.txt`` -> ``{image_id: (q [4] wxyz, t [3], camera_id, name)}``; every image takes two
    lines (pose, then its 2D points, possibly empty)."""
    lines = _data_lines(text)
    while lines and not lines[-1]:
        lines.pop()
    out = {}
    for k in range(0, len(lines), 2):
        tok = lines[k].split()
        try:
            iid = int(tok[0])
            q = np.array([float(x) for x in tok[1:5]])
            t = np.array([float(x) for x in tok[5:8]])
            cid = int(tok[8])
            name = " ".join(tok[9:])
            if not name:
                raise ValueError
        except (IndexError, ValueError):
            raise CaptureImportError(f"{where}: line {lines[k]!r} is not 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME' "
                                     "(each image takes two lines: the pose, then its 2D points)") from None
        out[iid] = (q, t, cid, name)
    return out


# ----------------------------------------------------------------------------------- binary


class _Reader:
    def __init__(self, data: bytes, where: str):
        self.data, self.pos, self.where = data, 0, where

    def read(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise CaptureImportError(f"{self.where} ends early (truncated or not a COLMAP binary model); export it again")
        vals = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return vals

    def cstring(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise CaptureImportError(f"{self.where} ends inside an image name (truncated); export it again")
        s = self.data[self.pos:end].decode("utf-8")
        self.pos = end + 1
        return s


def parse_cameras_binary(data: bytes, where: str = "cameras.bin") -> dict[int, tuple[str, int, int, np.ndarray]]:
    """``cameras.bin`` -> ``{camera_id: (model, width, height, params)}`` (little endian, as COLMAP writes)."""
    r = _Reader(data, where)
    (n,) = r.read("<Q")
    cams = {}
    for _ in range(n):
        cid, mid, w, h = r.read("<iiQQ")
        if mid not in MODELS:
            raise CaptureImportError(f"{where}: camera {cid} has unknown model id {mid}; is this a COLMAP cameras.bin?")
        model, npar = MODELS[mid]
        cams[cid] = (model, int(w), int(h), np.array(r.read(f"<{npar}d")))
    if r.pos != len(data):
        raise CaptureImportError(f"{where} has {len(data) - r.pos} trailing bytes; is this a COLMAP cameras.bin?")
    return cams


def parse_images_binary(data: bytes, where: str = "images.bin") -> dict[int, tuple[np.ndarray, np.ndarray, int, str]]:
    """``images.bin`` -> ``{image_id: (q [4] wxyz, t [3], camera_id, name)}`` (2D points skipped)."""
    r = _Reader(data, where)
    (n,) = r.read("<Q")
    out = {}
    for _ in range(n):
        (iid,) = r.read("<i")
        q = np.array(r.read("<4d"))
        t = np.array(r.read("<3d"))
        (cid,) = r.read("<i")
        name = r.cstring()
        (npts,) = r.read("<Q")
        r.read(f"<{24 * npts}x") if npts else None
        out[iid] = (q, t, cid, name)
    return out


# ------------------------------------------------------------------------------------ model


def cameras_from_colmap(cameras: dict, images: dict, where: str = "COLMAP model",
                        cameras_where: str | None = None) -> list[ImportedCamera]:
    """Parsed ``cameras`` and ``images`` (either format) -> one :class:`ImportedCamera` per image, by image id.
    ``cameras_where``: how errors about a camera model name the cameras file (default ``where``)."""
    if not images:
        raise CaptureImportError(f"{where} has no registered images; run the COLMAP mapper first")
    out = []
    for iid in sorted(images):
        q, t, cid, name = images[iid]
        if cid not in cameras:
            raise CaptureImportError(f"{where}: image {name} uses camera {cid}, which the cameras file does not define; "
                                     "export cameras and images from the same model")
        model, w, h, params = cameras[cid]
        K, d = intrinsics_from_model(model, params, f"{cameras_where or where}: camera {cid}")
        try:
            R = quaternion_to_rotation(*q)
        except ValueError:
            raise CaptureImportError(f"{where}: image {name} has a zero quaternion; fix the model") from None
        Rt = np.concatenate([R, np.asarray(t, dtype=np.float64)[:, None]], 1)
        out.append(ImportedCamera(name, make_camera(K, Rt, w, h, d, f"{where}: image {name}")))
    return out
