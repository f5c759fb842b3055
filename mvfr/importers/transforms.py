"""NeRF / nerfstudio / instant-ngp ``transforms.json`` -> cameras.

Intrinsics ``fl_x``, ``fl_y``, ``cx``, ``cy``, ``w``, ``h``, ``k1``, ``k2``, ``k3``, ``p1``, ``p2``
sit at the top level or per frame (a frame's value wins); the original NeRF's ``camera_angle_x``
(horizontal field of view, radians) stands in for ``fl_x`` (principal point then the image centre).
nerfstudio's pixel coordinates put (0, 0) at the corner of the top-left pixel (its rays pass
through ``pixel + 0.5``), so our principal point is ``c - 0.5``. ``camera_model`` must be
``OPENCV`` or ``PINHOLE`` (default ``OPENCV``); fisheye models are an error.

``frames[i].transform_matrix`` is camera -> world with OpenGL/Blender camera axes (x right, y up,
z backwards); ours are OpenCV's (x right, y down, z forwards): ``c2w_cv = c2w_gl diag(1, -1, -1, 1)``.
"""

from __future__ import annotations

import numpy as np

from mvfr.importers import CaptureImportError, ImportedCamera, make_camera, rt_from_camera_to_world

GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])
INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "k1", "k2", "k3", "k4", "p1", "p2", "camera_angle_x",
                  "camera_model")


def cameras_from_transforms(meta: dict, where: str = "transforms.json") -> list[ImportedCamera]:
    """Parsed ``transforms.json`` -> one :class:`ImportedCamera` per frame (``image`` = its ``file_path``)."""
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
        model = p.get("camera_model", "OPENCV")
        if model not in ("OPENCV", "PINHOLE"):
            raise CaptureImportError(f"{here}: camera_model {model} is not supported (OPENCV or PINHOLE); "
                                     "undistort the images and write PINHOLE intrinsics")
        for k in ("w", "h"):
            if k not in p:
                raise CaptureImportError(f"{here} has no image size '{k}' (top level or per frame); add 'w' and 'h' in pixels")
        w, h = int(p["w"]), int(p["h"])
        if "fl_x" in p:
            fx = float(p["fl_x"])
        elif "camera_angle_x" in p:
            fx = 0.5 * w / np.tan(0.5 * float(p["camera_angle_x"]))
        else:
            raise CaptureImportError(f"{here} has no focal length; add 'fl_x' (and 'fl_y') in pixels")
        fy = float(p.get("fl_y", fx))
        cx, cy = float(p.get("cx", w / 2.0)), float(p.get("cy", h / 2.0))
        K = np.array([[fx, 0.0, cx - 0.5], [0.0, fy, cy - 0.5], [0.0, 0.0, 1.0]])
        if float(p.get("k4", 0.0)):
            raise CaptureImportError(f"{here}: k4 is set, which OpenCV's 5-parameter model lacks; recalibrate without it")
        dist = np.array([float(p.get(k, 0.0)) for k in ("k1", "k2", "p1", "p2", "k3")])
        if model == "PINHOLE":
            dist[:] = 0.0
        M = np.asarray(fr.get("transform_matrix"), dtype=np.float64)
        if M.shape not in ((4, 4), (3, 4)):
            raise CaptureImportError(f"{here}: transform_matrix must be 4x4 (camera to world), got shape {M.shape}")
        if M.shape == (3, 4):
            M = np.concatenate([M, [[0, 0, 0, 1.0]]])
        Rt = rt_from_camera_to_world(M @ GL_TO_CV, here)
        out.append(ImportedCamera(str(name), make_camera(K, Rt, w, h, dist, here)))
    return out
