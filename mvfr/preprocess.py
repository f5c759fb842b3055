"""RAW FaceScape-layout capture -> DATA_FOLDER images (undistort, resize, K update); see preprocess_images.py.

Per face: read ``params.json`` (every listed view must be a valid camera record; errors name the
file and the key), take the views of ``select_dict.json`` in order, skip those marked
``"<v>_valid": false``, keep the first ``view_num``, undistort each image with its K and distortion,
resize it so that its long side is ``long_side`` pixels, and write ``images/PPP/EE/<view>.jpg``
plus a ``params.json`` without distortion. Views keep their RAW names (a skipped view never renames
the others). Everything of a face is read and checked before anything is written, and its
``params.json`` is written last, so a failed face leaves no half-finished output.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from mvfr.atomic_io import load_image, save_image, save_text, update_json
from mvfr.camera import Camera, CameraError, read_params, scale_camera, undistort_image, write_params
from mvfr.datafolder import DataError, DataFolder, RawFolder, parse_face_id, read_json

log = logging.getLogger(__name__)

JPEG_QUALITY = 95


def resized_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """``(W, H)`` scaled so that ``max(W, H) == long_side`` (aspect ratio kept, rounded)."""
    if long_side <= 0:
        raise ValueError(f"image_long_side must be positive, got {long_side}")
    s = long_side / max(width, height)
    return max(1, round(width * s)), max(1, round(height * s))


def process_view(image: np.ndarray, cam: Camera, long_side: int) -> tuple[np.ndarray, Camera]:
    """Undistort ``image [H, W, 3]`` with ``cam`` and resize its long side to ``long_side`` -> (image, camera).

    The returned camera has zero distortion and K scaled with pixel centres kept (:func:`scale_camera`).
    """
    import cv2

    und, ucam = undistort_image(image, cam)
    W, H = resized_size(cam.width, cam.height, long_side)
    if (W, H) == (cam.width, cam.height):
        return und, ucam
    interp = cv2.INTER_AREA if W < cam.width else cv2.INTER_CUBIC
    out = cv2.resize(und, (W, H), interpolation=interp)
    return out, scale_camera(ucam, W, H)


def choose_views(cams: dict[str, Camera], selected: list[str], view_num: int, where: str) -> list[str]:
    """The first ``view_num`` views of ``selected`` that exist in ``cams`` and are valid."""
    missing = [v for v in selected if v not in cams]
    if missing:
        raise CameraError(f"{where} has no camera for views {missing} listed in select_dict.json (no key {missing[0]}_K)")
    views = [v for v in selected if cams[v].valid][:view_num]
    if not views:
        raise DataError(f"{where}: none of the selected views {selected} is valid; "
                        "set <view>_valid: true for the usable views, or drop the face from id.json")
    return views


def preprocess_face(raw: RawFolder, data: DataFolder, fid: str, long_side: int = 1296, view_num: int = 10) -> list[str]:
    """Process one face (see the module docstring); returns the view names written."""
    params_path = raw.params(fid)
    where = f"params.json of {fid} ({params_path})"
    cams = read_params(params_path, where=where)
    views = choose_views(cams, raw.selected_views(fid), view_num, where)
    out_images, out_cams = {}, {}
    for v in views:
        img = load_image(raw.image(fid, v), remember=False)  # only its processed copy is read later
        cam = cams[v]
        if img.shape[:2] != (cam.height, cam.width):
            raise CameraError(
                f"image {raw.image(fid, v)} is {img.shape[1]}x{img.shape[0]} but {where} says "
                f"{v}_width={cam.width}, {v}_height={cam.height}; fix the calibration or the image"
            )
        out_images[v], out_cams[v] = process_view(img, cam, long_side)
    for v in views:
        save_image(data.image(fid, v), out_images[v], jpeg_quality=JPEG_QUALITY)
    write_params(data.params(fid), out_cams)
    log.info("%s: %d views (%s)", fid, len(views), ", ".join(views))
    return views


def copy_metadata(raw: RawFolder, data: DataFolder) -> None:
    """Copy ``select_dict.json`` and ``id.json`` from RAW to DATA_FOLDER, and merge RAW's ``Rt_scale_dict.json``
    (when present) into DATA's (:func:`merged_scales`: the scales gen_maps.py estimated are kept)."""
    for src, dst in ((raw.select_dict_json, data.select_dict_json), (raw.id_json, data.id_json)):
        if not src.is_file():
            raise DataError(f"{src} does not exist; the RAW folder needs select_dict.json and id.json")
        save_text(dst, src.read_text())
    if raw.rt_scale_json.is_file():
        given = read_json(raw.rt_scale_json, "Rt_scale_dict.json")
        update_json(data.rt_scale_json, lambda recorded: merged_scales(given, recorded), "Rt_scale_dict.json")


def merged_scales(given: dict, recorded: dict) -> dict:
    """RAW's ``Rt_scale_dict`` (``given``) plus the scales gen_maps.py estimated into DATA's (``recorded``, listed
    under ``"estimated"``) for faces RAW has no scale for; a face RAW has a scale for takes RAW's."""
    out = json.loads(json.dumps(given))
    for fid, note in recorded.get("estimated", {}).items():
        pid, eid = (str(x) for x in parse_face_id(fid))
        entry = recorded.get(pid, {}).get(eid)
        if entry is None or eid in given.get(pid, {}):
            continue
        out.setdefault(pid, {})[eid] = entry
        out.setdefault("estimated", {})[fid] = note
    return out


def all_face_ids(raw: RawFolder) -> list[str]:
    """Every face id of ``id.json`` (train, then eval)."""
    ids = []
    for split in ("train", "eval"):
        try:
            ids += raw.face_ids(split)
        except DataError:
            if not raw.id_json.is_file():
                raise
    return ids
