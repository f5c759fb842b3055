"""NeRF / nerfstudio / instant-ngp ``transforms.json`` -> cameras.

Intrinsics ``fl_x``, ``fl_y``, ``cx``, ``cy``, ``w``, ``h``, ``k1``, ``k2``, ``k3``, ``p1``, ``p2``
sit at the top level or per frame (a frame's value wins). The original NeRF's files (Blender scenes)
give only ``camera_angle_x`` (horizontal field of view, radians; ``camera_angle_y`` likewise for the
vertical one) and no image size: ``fl_x = 0.5 w / tan(camera_angle_x / 2)`` with ``w``, ``h`` read from
the frame's image (``image_size``), the principal point at the image centre. ``fl_x`` wins over
``camera_angle_x`` when both are there (instant-ngp writes both). nerfstudio's pixel coordinates put
(0, 0) at the corner of the top-left pixel (its rays pass through ``pixel + 0.5``), so our principal
point is ``c - 0.5``. ``camera_model`` must be ``OPENCV``, ``PINHOLE`` or ``SIMPLE_PINHOLE`` (default
``OPENCV``). Fisheye cameras are refused, never read as pinhole ones: nerfstudio's ``OPENCV_FISHEYE``
and ``FISHEYE624``, and instant-ngp's ``"is_fisheye": true`` (``colmap2nerf.py`` writes it, with no
``camera_model``, for COLMAP's fisheye models); so is ``EQUIRECTANGULAR``.

``frames[i].transform_matrix`` is camera -> world with OpenGL/Blender camera axes (x right, y up,
z backwards); ours are OpenCV's (x right, y down, z forwards): ``c2w_cv = c2w_gl diag(1, -1, -1, 1)``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from mvfr.importers import CaptureImportError, ImportedCamera, fisheye_error, make_camera, rt_from_camera_to_world

GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])
INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "k1", "k2", "k3", "k4", "p1", "p2", "camera_angle_x",
                  "camera_angle_y", "camera_model", "is_fisheye")
PINHOLE_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE")
FISHEYE_MODELS = ("OPENCV_FISHEYE", "FISHEYE624")
FISHEYE_FIX = ("undistort the images first (e.g. `colmap image_undistorter`, then colmap2nerf.py or "
               "ns-process-data on the undistorted PINHOLE model) and import that")


def _check_model(p: dict, here: str) -> str:
    model = str(p.get("camera_model", "OPENCV"))
    if model in FISHEYE_MODELS:
        raise fisheye_error(here, f"camera_model {model}", FISHEYE_FIX)
    if p.get("is_fisheye"):
        raise fisheye_error(here, '"is_fisheye": true (instant-ngp)', FISHEYE_FIX)
    if model not in PINHOLE_MODELS:
        raise CaptureImportError(f"{here}: camera_model {model} is not supported ({', '.join(PINHOLE_MODELS)}); "
                                 "undistort the images and write PINHOLE intrinsics")
    return model


def _size(p: dict, name: str, here: str, image_size) -> tuple[int, int]:
    if "w" in p and "h" in p:
        return int(p["w"]), int(p["h"])
    size = image_size(name) if image_size is not None else None
    if size is None:
        raise CaptureImportError(f"{here} has no image size 'w', 'h' and its image was not found to read it from; "
                                 "add 'w' and 'h' in pixels, or pass the folder its file_path is relative to as --images")
    return int(size[0]), int(size[1])


def _focal(p: dict, w: int, h: int, here: str) -> tuple[float, float]:
    fx = fy = None
    if "fl_x" in p:
        fx = float(p["fl_x"])
    elif "camera_angle_x" in p:
        fx = 0.5 * w / np.tan(0.5 * float(p["camera_angle_x"]))
    if "fl_y" in p:
        fy = float(p["fl_y"])
    elif "camera_angle_y" in p and "fl_x" not in p:
        fy = 0.5 * h / np.tan(0.5 * float(p["camera_angle_y"]))
    if fx is None and fy is None:
        raise CaptureImportError(f"{here} has no focal length; add 'fl_x' (and 'fl_y') in pixels or 'camera_angle_x' in radians")
    return (fy if fx is None else fx), (fx if fy is None else fy)


def cameras_from_transforms(meta: dict, where: str = "transforms.json",
                            image_size: Callable[[str], tuple[int, int] | None] | None = None) -> list[ImportedCamera]:
    """Parsed ``transforms.json`` -> one :class:`ImportedCamera` per frame (``image`` = its ``file_path``).

    ``image_size(file_path) -> (width, height)`` or None: the size of a frame's image, for files without
    ``w``/``h`` (the original NeRF's)."""
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
        raise CaptureImportError(f"{where} has no 'frames' list; is it a NeRF/nerfstudio transforms.json?")
    top = {k: meta[k] for k in INTRINSIC_KEYS if k in meta}
    out = []
    for i, fr in enumerate(meta["frames"]):
        name = fr.get("file_path")
        if not name:
            raise CaptureImportError(f"{where}: frame {i} has no 'file_path'")
        here = f"{where}: frame {name}"
        p = dict(top, **{k: fr[k] for k in INTRINSIC_KEYS if k in fr})
        model = _check_model(p, here)
        w, h = _size(p, str(name), here, image_size)
        fx, fy = _focal(p, w, h, here)
        cx, cy = float(p.get("cx", w / 2.0)), float(p.get("cy", h / 2.0))
        K = np.array([[fx, 0.0, cx - 0.5], [0.0, fy, cy - 0.5], [0.0, 0.0, 1.0]])
        if float(p.get("k4", 0.0)):
            raise CaptureImportError(f"{here}: k4 is set, which OpenCV's 5-parameter model lacks; recalibrate without it")
        dist = np.array([float(p.get(k, 0.0)) for k in ("k1", "k2", "p1", "p2", "k3")])
        if model != "OPENCV":
            dist[:] = 0.0
        M = np.asarray(fr.get("transform_matrix"), dtype=np.float64)
        if M.shape not in ((4, 4), (3, 4)):
            raise CaptureImportError(f"{here}: transform_matrix must be 4x4 (camera to world), got shape {M.shape}")
        if M.shape == (3, 4):
            M = np.concatenate([M, [[0, 0, 0, 1.0]]])
        Rt = rt_from_camera_to_world(M @ GL_TO_CV, here)
        out.append(ImportedCamera(str(name), make_camera(K, Rt, w, h, dist, here)))
    return out
