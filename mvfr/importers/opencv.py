"""OpenCV calibration files, one per camera (YAML as written by ``cv2.FileStorage``, or JSON) -> cameras.

Each file ``<view>.yml|.yaml|.json`` holds ``K`` (3 x 3, pixels, pixel (0, 0) = centre of the
top-left pixel, as OpenCV's own), ``D`` (distortion k1 k2 p1 p2 [k3]; optional), ``R`` (3 x 3, or a
3-vector Rodrigues rotation) and ``T`` (3): world -> camera, ``x_cam = R X + T``; optionally
``width``/``height`` (or ``image_width``/``image_height``; else the image's size is used). The view
is named after the file's stem and its image is ``<view>.<ext>`` in the image folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from mvfr.importers import CaptureImportError, ImportedCamera, make_camera

SUFFIXES = (".yml", ".yaml", ".json")
KEYS = ("K", "D", "R", "T", "width", "height", "image_width", "image_height")


def read_opencv_file(path: str | os.PathLike) -> dict:
    """Read one calibration file -> ``{key: array or number}`` (IO helper of ``import_capture.py``)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CaptureImportError(f"{path} is not valid JSON ({exc})") from None
        return {k: d[k] for k in KEYS if k in d}
    import cv2

    try:
        fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    except cv2.error as exc:
        raise CaptureImportError(f"{path} is not a readable OpenCV YAML file ({exc.msg.strip()})") from None
    out = {}
    try:
        for k in KEYS:
            node = fs.getNode(k)
            if node.empty():
                continue
            m = node.mat()
            if m is not None:
                out[k] = m
            elif node.isSeq():
                out[k] = [node.at(i).real() for i in range(node.size())]
            else:
                out[k] = node.real()
    finally:
        fs.release()
    return out


def camera_from_opencv(d: dict, image_size: tuple[int, int] | None, where: str) -> "Camera":  # noqa: F821
    """One parsed calibration dict (+ the image's ``(width, height)`` when the file has none) -> Camera."""
    import cv2

    for k in ("K", "R", "T"):
        if k not in d or d[k] is None:
            raise CaptureImportError(f"{where} has no {k}; it needs K (3x3), R (3x3 or Rodrigues 3), T (3) and optionally D")
    K = np.asarray(d["K"], dtype=np.float64).reshape(3, 3)
    R = np.asarray(d["R"], dtype=np.float64)
    if R.size == 3:
        R = cv2.Rodrigues(R.reshape(3, 1))[0]
    elif R.size == 9:
        R = R.reshape(3, 3)
    else:
        raise CaptureImportError(f"{where}: R has {R.size} values; expected 9 (3x3) or 3 (Rodrigues)")
    T = np.asarray(d["T"], dtype=np.float64).ravel()
    if T.size != 3:
        raise CaptureImportError(f"{where}: T has {T.size} values; expected 3")
    D = None if d.get("D") is None else np.asarray(d["D"], dtype=np.float64).ravel()
    w = d.get("width", d.get("image_width"))
    h = d.get("height", d.get("image_height"))
    if w is None or h is None:
        if image_size is None:
            raise CaptureImportError(f"{where} has no width/height and no image was found to take them from")
        w, h = image_size
    return make_camera(K, np.concatenate([R, T[:, None]], 1), int(w), int(h), D, where)


def calibration_files(folder: str | os.PathLike) -> list[Path]:
    """The calibration files of a folder (``*.yml``, ``*.yaml``, ``*.json``), sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())


def imported(view: str, cam) -> ImportedCamera:
    return ImportedCamera(view, cam)
