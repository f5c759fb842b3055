"""Agisoft Metashape camera XML (File > Export > Cameras, "Agisoft XML") -> cameras.

What the file holds and how it maps to DESIGN §3:

- ``<sensor type="frame">`` with ``<calibration>``: ``f`` (pixels), ``cx``, ``cy``, ``b1``, ``b2``,
  ``k1``-``k3``, ``p1``, ``p2``. Metashape projects ``u = w/2 + cx + x' (f + b1) + y' b2``,
  ``v = h/2 + cy + y' f`` with (0, 0) at the *corner* of the top-left pixel, so our principal point is
  ``(w/2 + cx - 0.5, h/2 + cy - 0.5)``: its cx, cy are offsets from the image centre; b2 is the skew
  ``K[0, 1]``. Its tangential terms are swapped relative to OpenCV's: OpenCV ``p1 = P2``, ``p2 = P1``.
  Only frame sensors are supported (fisheye, spherical, cylindrical are errors), and k4 is an error
  (OpenCV's 5-coefficient model has no r^8 term).
- A sensor may hold two calibrations: ``class="initial"`` (the starting values, e.g. from EXIF) and
  ``class="adjusted"`` (what the alignment estimated). The adjusted one is used; a sensor with only an
  initial calibration is used with a warning (its cameras were not optimised).
- ``<camera><transform>``: 16 numbers, row-major 4 x 4 camera -> chunk (camera axes x right, y down,
  z forward, as OpenCV's). Cameras without a transform were not aligned; they are left out (listed
  in :attr:`MetashapeCameras.unaligned`; ``import_capture.py`` warns and ignores their images).
- Multi-camera rigs: a slave sensor (``master_id`` = its master sensor) may give its cameras no
  transform of their own; such a camera's pose is its master camera's (the camera named by its
  ``master_id``, else the only camera of the master sensor) composed with the sensor's offset: either a
  ``<transform>`` (4 x 4, slave camera -> master camera) or ``<rotation>`` (3 x 3, slave -> master) and
  ``<location>`` (the slave's optical centre in the master camera's frame, as Metashape's
  ``Sensor.location``, in the world's units: divided by the chunk scale).
- Chunk -> world: ``<transform>`` with ``rotation`` (9), ``translation`` (3), ``scale`` (1),
  ``X_world = scale R X_chunk + translation``, under ``<chunk>`` (older exports) or under the camera's
  ``<components><component>`` (Metashape 1.6 and later; a camera names it by ``component_id``). The
  cameras are returned in world coordinates (so a scale bar or markers set in Metashape carry over);
  without a transform, chunk coordinates.
"""

from __future__ import annotations

import dataclasses
import logging
import xml.etree.ElementTree as ET

import numpy as np

from mvfr.importers import CaptureImportError, ImportedCamera, make_camera, rt_from_camera_to_world

log = logging.getLogger(__name__)


@dataclasses.dataclass
class MetashapeCameras:
    cameras: list[ImportedCamera]  # aligned cameras, image = the camera label
    unaligned: list[str]  # labels of cameras without a transform


def _floats(el, where: str) -> np.ndarray:
    try:
        return np.array([float(x) for x in (el.text or "").split()])
    except ValueError:
        raise CaptureImportError(f"{where}: <{el.tag}> is not a list of numbers") from None


def choose_calibration(sensor, where: str):
    """The ``<calibration>`` of a sensor to use: ``class="adjusted"``, else one without a class, else
    ``class="initial"`` (with a warning); None when the sensor has none."""
    cals = sensor.findall("calibration")
    by_class = {c.get("class", ""): c for c in cals}
    for cls in ("adjusted", ""):
        if cls in by_class:
            return by_class[cls]
    if cals:
        log.warning("%s: sensor %s (%s) has only an initial calibration (class=%r), not an adjusted one: its "
                    "cameras were not optimised; using it", where, sensor.get("id"), sensor.get("label"),
                    cals[0].get("class"))
        return cals[0]
    return None


def _calibration(sensor, where: str) -> tuple[np.ndarray, np.ndarray, int, int]:
    sid = sensor.get("id")
    stype = sensor.get("type", "frame")
    if stype != "frame":
        raise CaptureImportError(f"{where}: sensor {sid} is of type {stype!r}; only 'frame' (pinhole) sensors are "
                                 "supported (a fisheye model is never read as a pinhole one): calibrate it as a frame "
                                 "camera in Metashape and export again")
    cal = choose_calibration(sensor, where)
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


def _similarity(tr, where: str) -> np.ndarray:
    """``<transform>`` of rotation / translation / scale -> 4 x 4 chunk -> world."""
    rot, trans, sc = tr.find("rotation"), tr.find("translation"), tr.find("scale")
    R = np.eye(3) if rot is None else _floats(rot, where).reshape(3, 3)
    t = np.zeros(3) if trans is None else _floats(trans, where).reshape(3)
    s = 1.0 if sc is None else float(sc.text)
    S = np.eye(4)
    S[:3, :3], S[:3, 3] = s * R, t
    return S


def _chunk_transforms(chunk, where: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The chunk's own transform (identity without one) and each component's, by component id."""
    tr = chunk.find("transform")
    S = np.eye(4) if tr is None else _similarity(tr, where)
    comps = {}
    for comp in chunk.iter("component"):
        ctr = comp.find("transform")
        if ctr is not None:
            comps[comp.get("id")] = _similarity(ctr, f"{where}: component {comp.get('id')}")
    return S, comps


def _pose(cam, where: str, label: str) -> np.ndarray | None:
    el = cam.find("transform")
    if el is None:
        return None
    T = _floats(el, where)
    if T.size != 16:
        raise CaptureImportError(f"{where}: camera {label} has a <transform> of {T.size} numbers, expected 16 (4x4)")
    return T.reshape(4, 4)


def _vector3(el, where: str) -> np.ndarray:
    if el.get("x") is not None:
        try:
            return np.array([float(el.get(k, 0.0)) for k in ("x", "y", "z")])
        except ValueError:
            raise CaptureImportError(f"{where}: <{el.tag}> x, y, z are not numbers") from None
    v = _floats(el, where)
    if v.size != 3:
        raise CaptureImportError(f"{where}: <{el.tag}> has {v.size} numbers, expected 3")
    return v


def slave_offset(sensor, scale: float, where: str) -> np.ndarray:
    """4 x 4 slave camera -> master camera (chunk units) of a slave sensor (see the module docstring)."""
    label = f"{where}: slave sensor {sensor.get('id')} ({sensor.get('label')})"
    el = sensor.find("transform")
    if el is not None:
        M = _floats(el, label)
        if M.size != 16:
            raise CaptureImportError(f"{label}: <transform> has {M.size} numbers, expected 16 (4x4)")
        return M.reshape(4, 4)
    rot, loc = sensor.find("rotation"), sensor.find("location")
    if rot is None and loc is None:
        raise CaptureImportError(f"{label} has no offset to its master (<rotation>, <location> or <transform>); set the "
                                 "slave offset in Metashape (Tools > Camera Calibration) and export again")
    M = np.eye(4)
    if rot is not None:
        R = _floats(rot, label)
        if R.size != 9:
            raise CaptureImportError(f"{label}: <rotation> has {R.size} numbers, expected 9 (3x3)")
        M[:3, :3] = R.reshape(3, 3)
    if loc is not None:
        M[:3, 3] = _vector3(loc, label) / scale
    return M


def _master_pose(cam, sensor, cams_by_id, cams_by_sensor, where: str, label: str) -> np.ndarray | None:
    """Camera -> chunk of a slave camera's master camera (None when that one is not aligned either)."""
    mid = cam.get("master_id")
    if mid is None:
        masters = cams_by_sensor.get(sensor.get("master_id"), [])
        if len(masters) != 1:
            raise CaptureImportError(f"{where}: camera {label} of slave sensor {sensor.get('id')} names no master camera "
                                     f"(master_id) and its master sensor has {len(masters)} cameras; export the rig again")
        master = masters[0]
    elif mid in cams_by_id:
        master = cams_by_id[mid]
    else:
        raise CaptureImportError(f"{where}: camera {label} names master camera {mid}, which the file does not hold")
    return _pose(master, where, master.get("label") or master.get("id"))


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
    S_chunk, components = _chunk_transforms(chunk, where)
    cams = list(chunk.iter("camera"))
    if not cams:
        raise CaptureImportError(f"{where} lists no <camera>; align the photos in Metashape and export again")
    group_of = {c: g.get("label") for g in chunk.iter("group") for c in g.iter("camera")}
    cams_by_id = {c.get("id"): c for c in cams}
    cams_by_sensor: dict[str, list] = {}
    for c in cams:
        cams_by_sensor.setdefault(c.get("sensor_id"), []).append(c)
    calib, out, unaligned = {}, [], []
    for cam in cams:
        label = cam.get("label") or cam.get("id")
        sid = cam.get("sensor_id")
        if sid not in sensors:
            raise CaptureImportError(f"{where}: camera {label} uses sensor {sid}, which the file does not define")
        sensor = sensors[sid]
        S = components.get(cam.get("component_id"), S_chunk)
        T = _pose(cam, where, label)
        if T is None and sensor.get("master_id") is not None:
            master = _master_pose(cam, sensor, cams_by_id, cams_by_sensor, where, label)
            if master is not None:
                scale = float(np.cbrt(np.linalg.det(S[:3, :3])))
                T = master @ slave_offset(sensor, scale, where)
        if T is None:
            unaligned.append(label)
            continue
        if sid not in calib:
            calib[sid] = _calibration(sensor, where)
        K, dist, w, h = calib[sid]
        Rt = rt_from_camera_to_world(S @ T, f"{where}: camera {label}")
        alts = tuple(f"{folder}/{label}" for folder in (group_of.get(cam), sensor.get("label")) if folder)
        out.append(ImportedCamera(label, make_camera(K, Rt, w, h, dist, f"{where}: camera {label}"), alternatives=alts))
    if not out:
        raise CaptureImportError(f"{where}: nothing is aligned: none of its {len(cams)} cameras has a <transform>; "
                                 "align the photos in Metashape (Workflow > Align Photos) and export the cameras again")
    return MetashapeCameras(out, unaligned)
