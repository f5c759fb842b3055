"""Camera importers: other tools' calibration formats -> the project's :class:`mvfr.camera.Camera`.

One module per format; each exposes pure parsing functions (text, bytes or already-parsed
dicts in, ``{image name: ImportedCamera}`` out) so the stage script ``import_capture.py`` only
reads and writes files:

- :mod:`mvfr.importers.colmap`      COLMAP sparse model, text (``cameras.txt``/``images.txt``) or binary
- :mod:`mvfr.importers.metashape`   Agisoft Metashape camera XML
- :mod:`mvfr.importers.transforms`  NeRF / nerfstudio ``transforms.json``
- :mod:`mvfr.importers.opencv`      OpenCV YAML/JSON per camera (``K``, ``D``, ``R``, ``T``), or a rig's
  EasyMocap / ZJU-MoCap ``intri.yml`` + ``extri.yml``

Every returned camera follows DESIGN §3: ``x_pix = K (R X + t)``, ``Rt`` world -> camera, pixel
(0, 0) is the *centre* of the top-left pixel, distortion ``[k1 k2 p1 p2 k3]`` (OpenCV). A fisheye
model is never read as a pinhole one: every importer refuses it (:func:`fisheye_error`).

View names (:func:`match_images`): the image file's stem; images in sub-folders whose stems collide
(``cam01/0001.jpg``, ``cam02/0001.jpg``) are named by folder and stem (``cam01_0001``), so the RAW
capture folder stays FaceScape's flat ``<view>.jpg`` + ``params.json``. A format that names its
cameras (EasyMocap) gives the view name itself.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import PurePosixPath

import numpy as np

from mvfr.camera import Camera, CameraError, validate_extrinsics, validate_intrinsics

log = logging.getLogger(__name__)


class CaptureImportError(CameraError):
    """A calibration file cannot be imported; the message names the file and the fix."""


@dataclasses.dataclass
class ImportedCamera:
    """One camera of an imported calibration: ``image`` is the image path the tool recorded
    (relative to the image folder, as written in the file), ``camera`` the converted camera;
    ``view``: the view name when the format names its cameras (default: from the image path);
    ``alternatives``: further paths to try when ``image`` matches no file or several."""

    image: str
    camera: Camera
    view: str | None = None
    alternatives: tuple[str, ...] = ()


def view_name(image: str) -> str:
    """RAW view name of an image path: its file stem (``"cams/IMG_0001.JPG" -> "IMG_0001"``)."""
    return PurePosixPath(image.replace("\\", "/")).stem


def unique_view_names(images: list[str]) -> list[str]:
    """View names of image paths (relative, ``/``-separated), one per path: the stem where it is unique,
    else the stem prefixed by as many parent folders as make it unique, joined by ``_``
    (``["cam01/0001.jpg", "cam02/0001.jpg", "x/a.jpg"]`` -> ``["cam01_0001", "cam02_0001", "a"]``)."""
    parts = [PurePosixPath(p.replace("\\", "/")) for p in images]
    names = [p.stem for p in parts]
    depth = [0] * len(parts)
    while True:
        groups: dict[str, list[int]] = {}
        for i, n in enumerate(names):
            groups.setdefault(n, []).append(i)
        clash = [i for idx in groups.values() if len(idx) > 1 for i in idx
                 if depth[i] < len(parts[i].parts) - 1]
        if not clash:
            return names
        for i in clash:
            depth[i] += 1
            folders = parts[i].parts[:-1][len(parts[i].parts) - 1 - depth[i]:]
            names[i] = "_".join([*folders, parts[i].stem])


def fisheye_error(where: str, model: str, fix: str) -> "CaptureImportError":
    """The one refusal of every fisheye model (never read as a pinhole camera): names the file and the model."""
    return CaptureImportError(f"{where}: {model} is a fisheye camera model, which this project does not support (its "
                              f"coefficients mean something else in the pinhole model every stage uses); {fix}")


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


def _file_index(files: list[str]) -> tuple[set[str], dict[str, list[str]], dict[str, list[str]], set[str]]:
    by_name: dict[str, list[str]] = {}
    by_stem: dict[str, list[str]] = {}
    for f in files:
        by_name.setdefault(PurePosixPath(f).name, []).append(f)
        by_stem.setdefault(PurePosixPath(f).stem, []).append(f)
    return set(files), by_name, by_stem, {PurePosixPath(f).suffix for f in files}


def _resolve(recorded: str, index) -> str | None:
    """The one file a recorded image path names (see :func:`match_images`), or None."""
    paths, by_name, by_stem, suffixes = index
    rec = recorded.replace("\\", "/")
    while rec.startswith("./"):
        rec = rec[2:]
    p = PurePosixPath(rec)
    if rec in paths:
        return rec
    no_suffix = p.suffix.lower() not in IMAGE_SUFFIXES
    if no_suffix:
        hits = [rec + s for s in suffixes if rec + s in paths]
        if len(hits) == 1:
            return hits[0]
    named = by_name.get(p.name, [])
    if len(named) == 1:
        return named[0]
    tails = [f for f in named if p.parts[-len(PurePosixPath(f).parts):] == PurePosixPath(f).parts]
    if tails:  # a longer recorded path (a full path) ending in a file's relative path: the longest such file
        longest = max(len(PurePosixPath(f).parts) for f in tails)
        best = [f for f in tails if len(PurePosixPath(f).parts) == longest]
        if len(best) == 1:
            return best[0]
    if no_suffix and len(by_stem.get(p.name, [])) == 1:
        return by_stem[p.name][0]
    return None


def resolve_image(recorded: str, image_files: list[str]) -> str | None:
    """The file of ``image_files`` (relative, ``/``-separated) that a recorded image path names, or None."""
    files = [f.replace("\\", "/") for f in image_files if f.lower().endswith(IMAGE_SUFFIXES)]
    return _resolve(recorded, _file_index(files))


def match_images(cameras: list[ImportedCamera], image_files: list[str], where: str, image_dir: str,
                 skipped: tuple[str, ...] | list[str] = ()) -> dict[str, str]:
    """Pair each camera with one file of the image folder -> ``{view name: image file}`` in camera order
    (files relative to the folder, ``/``-separated).

    A camera's recorded image path matches a file with the same relative path (or that path plus an
    image suffix, when it has none: NeRF ``file_path``, Metashape labels), else the only file with the
    same name, else the file with that name whose relative path ends the recorded one (a full path),
    else (no suffix) the only file with that stem; then its ``alternatives`` in turn. Never a guess:
    a name that fits several files matches none. View
    names: :class:`ImportedCamera` ``view`` when given, else :func:`unique_view_names` of the files.
    ``skipped``: recorded paths of cameras left out (e.g. not aligned): their images are ignored, and so
    are images in folders that hold no camera's image (a NeRF scene's other splits, masks, ...).
    Raises :class:`CaptureImportError` for a camera without an image, an image without a camera beside
    the cameras' images, or two cameras with the same view name.
    """
    files = [f.replace("\\", "/") for f in image_files if f.lower().endswith(IMAGE_SUFFIXES)]
    index = _file_index(files)
    hits, missing = [], []
    for c in cameras:
        hit = next((h for rec in (c.image, *c.alternatives) if (h := _resolve(rec, index)) is not None), None)
        if hit is None:
            missing.append(c.image)
        hits.append(hit)
    if missing:
        raise CaptureImportError(f"{where}: no image in {image_dir} for camera(s) {missing[:5]}"
                                 f"{' ...' if len(missing) > 5 else ''}; put the images there or pass the right --images")
    auto = unique_view_names(hits)
    out: dict[str, str] = {}
    for c, hit, name in zip(cameras, hits, auto):
        v = c.view if c.view is not None else name
        if v in out:
            raise CaptureImportError(f"{where}: images {out[v]} and {hit} both give the view name {v!r}; rename one of them")
        out[v] = hit
    ignored = {h for rec in skipped if (h := _resolve(rec, index)) is not None}
    folders = {PurePosixPath(f).parent for f in out.values()}
    rest = sorted(set(files) - set(out.values()) - ignored)
    unused = [f for f in rest if PurePosixPath(f).parent in folders]
    elsewhere = [f for f in rest if PurePosixPath(f).parent not in folders]
    if elsewhere:
        log.warning("%s: %d image(s) in folders that hold no camera's image are ignored: %s%s", image_dir,
                    len(elsewhere), ", ".join(elsewhere[:5]), " ..." if len(elsewhere) > 5 else "")
    if unused:
        raise CaptureImportError(f"{image_dir}: image(s) {unused[:5]}{' ...' if len(unused) > 5 else ''} have no camera in "
                                 f"{where} (not registered/aligned?); remove them from the folder or calibrate them")
    return out
