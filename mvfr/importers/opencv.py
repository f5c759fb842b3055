"""OpenCV calibration files (YAML as written by ``cv2.FileStorage``, or JSON) -> cameras. Two layouts:

**One file per camera** ``<view>.yml|.yaml|.json`` holding ``K`` (3 x 3, pixels, pixel (0, 0) = centre
of the top-left pixel, as OpenCV's own), ``D`` (distortion k1 k2 p1 p2 [k3]; optional), ``R`` (3 x 3,
or a 3-vector Rodrigues rotation) and ``T`` (3): world -> camera, ``x_cam = R X + T``; optionally
``width``/``height`` (or ``image_width``/``image_height``; else the image's size is used). The view
is named after the file's stem and its image is ``<view>.<ext>`` in the image folder.
``camera_matrix`` / ``distortion_coefficients`` stand for ``K`` / ``D``. A file with those and no
``R``/``T`` is OpenCV's calibration sample output: one camera's intrinsics, no pose (its
``extrinsic_parameters`` are the board's poses, not the camera's); it is refused with that message.
A file that says ``fisheye_model: 1`` (or a fisheye ``camera_model``) is refused as fisheye.

**A rig in one pair** (EasyMocap, ZJU-MoCap): ``intri.yml`` with ``names`` (the camera names, a
list), ``K_<name>`` (3 x 3), ``dist_<name>`` (or ``D_<name>``; 1 x 5 or 5 x 1, k1 k2 p1 p2 k3; 4
values: k1 k2 p1 p2), optionally ``H_<name>``, ``W_<name>`` (image size; else the image's), and
``extri.yml`` with ``R_<name>`` (Rodrigues 3 x 1) or ``Rot_<name>`` (3 x 3) and ``T_<name>`` (3 x 1),
world -> camera as above (EasyMocap's T is in metres: ``--mm_per_unit 1000``). The view is the
camera's name; its image is ``<name>.<ext>`` in the image folder, or the one image in the sub-folder
``<name>/`` (EasyMocap's ``images/<name>/000000.jpg``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath

import numpy as np

from mvfr.importers import IMAGE_SUFFIXES, CaptureImportError, ImportedCamera, fisheye_error, make_camera

SUFFIXES = (".yml", ".yaml", ".json")
KEYS = ("K", "D", "R", "T", "width", "height", "image_width", "image_height")
ALIASES = {"camera_matrix": "K", "distortion_coefficients": "D"}
RIG_FILES = ("intri.yml", "extri.yml")


def read_yaml_nodes(path: str | os.PathLike) -> dict:
    """Every top-level node of an OpenCV YAML/XML file -> ``{key: array | list | number | str}`` (matrices as
    arrays, sequences as lists of str or float). IO helper of ``import_capture.py``."""
    import cv2

    try:
        fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    except cv2.error as exc:
        raise CaptureImportError(f"{path} is not a readable OpenCV YAML file ({exc.msg.strip()})") from None
    out = {}
    try:
        if not fs.isOpened():
            raise CaptureImportError(f"{path} is not a readable OpenCV YAML file")
        for k in fs.root().keys():
            node = fs.getNode(k)
            if node.isMap():
                out[k] = node.mat()
            elif node.isSeq():
                out[k] = [node.at(i).string() if node.at(i).isString() else node.at(i).real() for i in range(node.size())]
            elif node.isString():
                out[k] = node.string()
            elif node.isInt() or node.isReal():
                out[k] = node.real()
    finally:
        fs.release()
    return out


def read_opencv_file(path: str | os.PathLike) -> dict:
    """Read one per-camera calibration file -> ``{key: array or number}`` (``camera_matrix`` read as ``K``,
    ``distortion_coefficients`` as ``D``; the other keys as written). IO helper of ``import_capture.py``."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CaptureImportError(f"{path} is not valid JSON ({exc})") from None
        if not isinstance(d, dict):
            raise CaptureImportError(f"{path} must hold a JSON object with K, D, R, T")
    else:
        d = read_yaml_nodes(path)
    lower = {k.lower(): k for k in d}
    out = {k: d[k] for k in d if k in KEYS or k.lower() not in ALIASES}
    for alias, key in ALIASES.items():
        if alias in lower and key not in out:
            out[key] = d[lower[alias]]
    return out


def _rotation(R, where: str, key: str = "R") -> np.ndarray:
    import cv2

    R = np.asarray(R, dtype=np.float64)
    if R.size == 3:
        return cv2.Rodrigues(R.reshape(3, 1))[0]
    if R.size == 9:
        return R.reshape(3, 3)
    raise CaptureImportError(f"{where}: {key} has {R.size} values; expected 9 (3x3) or 3 (Rodrigues)")


def camera_from_opencv(d: dict, image_size: tuple[int, int] | None, where: str) -> "Camera":  # noqa: F821
    """One parsed calibration dict (+ the image's ``(width, height)`` when the file has none) -> Camera."""
    model = str(d.get("camera_model", d.get("model", "")))
    if d.get("fisheye_model") or "fisheye" in model.lower():
        raise fisheye_error(where, f"fisheye_model {d.get('fisheye_model')}" if d.get("fisheye_model") else model,
                            "undistort the images with cv2.fisheye and give the pinhole K with zero distortion")
    if "K" in d and ("R" not in d or "T" not in d):
        raise CaptureImportError(
            f"{where} holds one camera's intrinsics (camera_matrix/K, distortion) but no camera pose (R, T): it is "
            "a single-camera calibration such as OpenCV's calibration sample writes (its extrinsic_parameters, if "
            "any, are the board's poses, not the camera's). Import a multi-view calibration instead: one file per "
            "view with K, D, R, T, an EasyMocap intri.yml + extri.yml pair, COLMAP or Metashape")
    for k in ("K", "R", "T"):
        if k not in d or d[k] is None:
            raise CaptureImportError(f"{where} has no {k}; it needs K (3x3), R (3x3 or Rodrigues 3), T (3) and optionally D")
    K = np.asarray(d["K"], dtype=np.float64).reshape(3, 3)
    R = _rotation(d["R"], where)
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


def is_rig_folder(folder: str | os.PathLike) -> bool:
    """Whether a folder holds an EasyMocap / ZJU-MoCap ``intri.yml`` + ``extri.yml`` pair."""
    return all((Path(folder) / f).is_file() for f in RIG_FILES)


def rig_image(name: str, image_files: list[str], where: str) -> str:
    """The image of rig camera ``name`` among ``image_files`` (relative, ``/``-separated): ``<name>.<ext>`` at
    the top, else the one image in the folder ``<name>/`` (see the module docstring)."""
    images = [f for f in image_files if f.lower().endswith(IMAGE_SUFFIXES)]
    top = [f for f in images if "/" not in f and PurePosixPath(f).stem == name]
    if len(top) == 1:
        return top[0]
    inside = [f for f in images if f.startswith(f"{name}/")]
    if len(inside) == 1:
        return inside[0]
    if len(inside) > 1:
        raise CaptureImportError(f"{where}: camera {name} has {len(inside)} images in the folder {name}/ "
                                 f"({', '.join(inside[:3])} ...); keep only the frame of this capture there")
    raise CaptureImportError(f"{where}: no image for camera {name}: expected {name}.jpg (or .png, .tif) or one image in "
                             f"the folder {name}/ of --images")


def _rig_entry(table: dict, keys: tuple[str, ...], name: str, where: str, fix: str):
    for k in keys:
        if table.get(f"{k}_{name}") is not None:
            return np.asarray(table[f"{k}_{name}"], dtype=np.float64)
    raise CaptureImportError(f"{where} has no {' or '.join(f'{k}_{name}' for k in keys)} for camera {name}; {fix}")


def rig_names(intri: dict, where: str) -> list[str]:
    """Camera names of an ``intri.yml`` (numbers written unquoted become their integer text)."""
    names = intri.get("names")
    if not isinstance(names, list) or not names:
        raise CaptureImportError(f"{where} has no 'names' list of cameras; is it an EasyMocap intri.yml?")
    return [n if isinstance(n, str) else str(int(n)) if float(n).is_integer() else str(n) for n in names]


def cameras_from_rig(intri: dict, extri: dict, images: dict[str, str], image_size, where_intri: str,
                     where_extri: str) -> list[ImportedCamera]:
    """Parsed ``intri.yml`` and ``extri.yml`` -> one :class:`ImportedCamera` per name (view = the name).

    ``images``: ``{name: image file}`` (:func:`rig_image`); ``image_size(file) -> (width, height)`` for
    cameras without ``W_<name>``/``H_<name>``."""
    out = []
    for name in rig_names(intri, where_intri):
        K = _rig_entry(intri, ("K",), name, where_intri, "add the camera's 3x3 K")
        D = intri.get(f"dist_{name}", intri.get(f"D_{name}"))
        if D is not None and np.asarray(D).size not in (4, 5, 8, 12, 14):
            raise CaptureImportError(f"{where_intri}: dist_{name} has {np.asarray(D).size} values; expected k1 k2 p1 p2 [k3]")
        fix = "export the rig's extrinsics again (R_<name> Rodrigues or Rot_<name> 3x3, and T_<name>)"
        R = _rig_entry(extri, ("R", "Rot"), name, where_extri, fix)
        if R.size not in (3, 9):
            R = _rig_entry(extri, ("Rot",), name, where_extri, fix)
        T = _rig_entry(extri, ("T",), name, where_extri, fix).ravel()
        if T.size != 3:
            raise CaptureImportError(f"{where_extri}: T_{name} has {T.size} values; expected 3")
        w, h = intri.get(f"W_{name}"), intri.get(f"H_{name}")
        if w is None or h is None or w <= 0 or h <= 0:
            w, h = image_size(images[name])
        here = f"{where_intri} + {where_extri}: camera {name}"
        Rt = np.concatenate([_rotation(R, here, f"R_{name}"), T[:, None]], 1)
        out.append(ImportedCamera(images[name], make_camera(K.reshape(3, 3), Rt, int(w), int(h), D, here), view=name))
    return out
