"""Agisoft Metashape camera XML (File > Export > Cameras, "Agisoft XML") -> cameras.

What the file holds and how it maps to DESIGN §3:

- ``<sensor type="frame">`` with ``<calibration>``: ``f`` (pixels), ``cx``, ``cy``, ``b1``, ``b2``,
  ``k1``-``k3``, ``p1``, ``p2``. Metashape projects ``u = w/2 + cx + x' (f + b1) + y' b2``,
  ``v = h/2 + cy + y' f`` with (0, 0) at the *corner* of the top-left pixel, so our principal point is
  ``(w/2 + cx - 0.5, h/2 + cy - 0.5)``: its cx, cy are offsets from the image centre. Its tangential
  terms are swapped relative to OpenCV's: OpenCV ``p1 = P2``, ``p2 = P1``. Only frame sensors are
  supported (fisheye, spherical, cylindrical are errors).
- ``<camera><transform>``: 16 numbers, row-major 4 x 4 camera -> chunk (camera axes x right, y down,
  z forward, as OpenCV's). Cameras without a transform were not aligned; they are left out (listed
  in :attr:`MetashapeCameras.unaligned`).
- ``<chunk><transform>``: ``rotation`` (9), ``translation`` (3), ``scale`` (1): chunk -> world,
  ``X_world = scale R X_chunk + translation``. The cameras are returned in world coordinates (so a
  scale bar or markers set in Metashape carry over); without a chunk transform, chunk coordinates.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET

import numpy as np

from mvfr.importers import CaptureImportError, ImportedCamera, make_camera, rt_from_camera_to_world


@dataclasses.dataclass
class MetashapeCameras:
    cameras: list[ImportedCamera]  # aligned cameras, image = the camera label
    unaligned: list[str]  # labels of cameras without a transform


def _floats(el, where: str) -> np.ndarray:
    try:
        return np.array([float(x) for x in (el.text or "").split()])
    except ValueError:
        raise CaptureImportError(f"{where}: <{el.tag}> is not a list of numbers") from None


def _calibration(sensor, where: str) -> tuple[np.ndarray, np.ndarray, int, int]:
    sid = sensor.get("id")
    stype = sensor.get("type", "frame")
    if stype != "frame":
        raise CaptureImportError(f"{where}: sensor {sid} is of type {stype!r}; only 'frame' (pinhole) sensors are "
                                 "supported: calibrate it as a frame camera in Metashape and export again")
    cal = sensor.find("calibration")
    if cal is None:
        raise CaptureImportError(f"{where}: sensor {sid} has no <calibration>; optimise the cameras in Metashape and export again")
    if cal.get("type", "frame") != "frame":
        raise CaptureImportError(f"{where}: sensor {sid} has a {cal.get('type')!r} calibration; only 'frame' is supported")
    res = cal.find("resolution")
    if res is None:
        res = sensor.find("resolution")
    if res is None:
        raise CaptureImportError(f"{where}: sensor {sid} has no <resolution>")
    w, h = int(res.get("width")), int(res.get("height"))

    def value(tag: str, default: float | None = 0.0) -> float:
        el = cal.find(tag)
        if el is None:
            if default is None:
                raise CaptureImportError(f"{where}: sensor {sid} has no <{tag}> in its calibration")
            return default
        return float(el.text)

    f = value("f", None)
    b1, b2 = value("b1"), value("b2")
    K = np.array([[f + b1, b2, w / 2.0 + value("cx") - 0.5], [0.0, f, h / 2.0 + value("cy") - 0.5], [0.0, 0.0, 1.0]])
    P1, P2 = value("p1"), value("p2")
    dist = np.array([value("k1"), value("k2"), P2, P1, value("k3")])
    if value("k4"):
        raise CaptureImportError(f"{where}: sensor {sid} uses k4, which OpenCV's 5-parameter model lacks; "
                                 "disable k4 in Metashape's camera calibration and optimise again")
    return K, dist, w, h


def cameras_from_metashape(xml_text: str, where: str = "cameras.xml") -> MetashapeCameras:
    """Metashape camera XML text -> :class:`MetashapeCameras` (world coordinates, see the module docstring)."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise CaptureImportError(f"{where} is not valid XML ({exc}); export the cameras again as Agisoft XML") from None
    chunk = root.find("chunk") if root.tag != "chunk" else root
    if chunk is None:
        raise CaptureImportError(f"{where} has no <chunk>; is it a Metashape camera export (File > Export > Cameras)?")
    sensors = {s.get("id"): s for s in chunk.iter("sensor")}
    calib = {}
    S = np.eye(4)
    tr = chunk.find("transform")
    if tr is not None:
        rot, trans, sc = tr.find("rotation"), tr.find("translation"), tr.find("scale")
        R = np.eye(3) if rot is None else _floats(rot, where).reshape(3, 3)
        t = np.zeros(3) if trans is None else _floats(trans, where).reshape(3)
        s = 1.0 if sc is None else float(sc.text)
        S[:3, :3], S[:3, 3] = s * R, t
    out, unaligned = [], []
    cams = list(chunk.iter("camera"))
    if not cams:
        raise CaptureImportError(f"{where} lists no <camera>; align the photos in Metashape and export again")
    for cam in cams:
        label = cam.get("label") or cam.get("id")
        sid = cam.get("sensor_id")
        if sid not in sensors:
            raise CaptureImportError(f"{where}: camera {label} uses sensor {sid}, which the file does not define")
        if sid not in calib:
            calib[sid] = _calibration(sensors[sid], where)
        K, dist, w, h = calib[sid]
        el = cam.find("transform")
        if el is None:
            unaligned.append(label)
            continue
        T = _floats(el, where)
        if T.size != 16:
            raise CaptureImportError(f"{where}: camera {label} has a <transform> of {T.size} numbers, expected 16 (4x4)")
        c2w = S @ T.reshape(4, 4)
        Rt = rt_from_camera_to_world(c2w, f"{where}: camera {label}")
        out.append(ImportedCamera(label, make_camera(K, Rt, w, h, dist, f"{where}: camera {label}")))
    if not out:
        raise CaptureImportError(f"{where}: none of its {len(cams)} cameras is aligned (no <transform>); align them in Metashape")
    return MetashapeCameras(out, unaligned)
