"""Cameras: FaceScape ``params.json`` reading and validation, projection, rays, image-space edits.

Convention (DESIGN §3), OpenCV pinhole:

    x_pix = K (R X + t),   Rt = [R | t] is world -> camera, 3 x 4

pixel (0, 0) is the *centre* of the top-left pixel, x to the right, y down. A point with camera
depth z <= 0 is behind the camera and invisible there.

The projection functions accept numpy arrays or torch tensors (and return the same kind, on the
same device), so the data-preparation stages (numpy) and the networks (torch) share one
implementation.

``grid_sample`` convention: :func:`pixel_to_grid` maps pixel coordinates of an image of size
W x H to the normalised coordinates of ``torch.nn.functional.grid_sample(..., align_corners=False)``:
``g = (2 x + 1) / W - 1``. Because it is defined with respect to the image extent, the same grid
samples a feature map of any resolution computed from that image (e.g. a stride-2 CNN feature map)
at the same physical location.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

ROTATION_TOL = 1e-4


class CameraError(ValueError):
    """A camera file or camera value is missing or invalid; the message names the file and the fix."""


@dataclasses.dataclass
class Camera:
    """One calibrated view. ``K [3,3]`` pixels, ``Rt [3,4]`` world->camera, ``dist [5]`` OpenCV (k1 k2 p1 p2 k3)."""

    K: np.ndarray
    Rt: np.ndarray
    width: int
    height: int
    dist: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(5))
    valid: bool = True

    @property
    def center(self) -> np.ndarray:
        """Camera centre in world coordinates [3]."""
        return camera_center(self.Rt)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``points [N,3]`` world -> ``pix [N,2]`` pixels, ``depth [N]`` (distortion ignored)."""
        return project_points(points, self.K, self.Rt)

    def to_params(self, view: str) -> dict[str, Any]:
        """The ``params.json`` entries of this view."""
        return {
            f"{view}_K": np.asarray(self.K).tolist(),
            f"{view}_Rt": np.asarray(self.Rt).tolist(),
            f"{view}_distortion": np.asarray(self.dist).ravel().tolist(),
            f"{view}_width": int(self.width),
            f"{view}_height": int(self.height),
            f"{view}_valid": bool(self.valid),
        }


# ------------------------------------------------------------------------------------ params.json

_KEY = re.compile(r"^(.+)_(K|Rt|distortion|width|height|valid)$")


def list_views(params: dict[str, Any]) -> list[str]:
    """View names present in a params dict (any key ``<v>_K`` or ``<v>_Rt``), sorted numerically when possible."""
    views = {m.group(1) for k in params if (m := _KEY.match(k)) and m.group(2) in ("K", "Rt")}
    return sorted(views, key=lambda v: (0, int(v), "") if v.isdigit() else (1, 0, v))


def _matrix(params: dict, key: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    if key not in params:
        raise CameraError(f"{where} has no key {key}; add it or mark the view invalid with {key.split('_')[0]}_valid: false")
    try:
        m = np.asarray(params[key], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CameraError(f"{where}: {key} is not numeric") from exc
    if m.size != int(np.prod(shape)):
        raise CameraError(f"{where}: {key} has {m.size} values, expected {'x'.join(map(str, shape))}")
    m = m.reshape(shape)
    if not np.isfinite(m).all():
        raise CameraError(f"{where}: {key} contains NaN or infinity; fix the calibration")
    return m


def validate_intrinsics(K: np.ndarray, where: str = "camera") -> None:
    """Raise :class:`CameraError` unless K is finite, upper-triangular with positive focal lengths."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.isfinite(K).all():
        raise CameraError(f"{where}: K must be a finite 3x3 matrix; fix the calibration")
    if K[0, 0] <= 0 or K[1, 1] <= 0 or abs(np.linalg.det(K)) < 1e-12:
        raise CameraError(f"{where}: K is singular or has non-positive focal lengths (fx={K[0, 0]}, fy={K[1, 1]}); "
                          "fix the calibration")
    if not np.allclose(K[2], [0, 0, 1], atol=1e-6) or abs(K[1, 0]) > 1e-9:
        raise CameraError(f"{where}: K must have last row [0, 0, 1] and K[1, 0] = 0")


def validate_extrinsics(Rt: np.ndarray, where: str = "camera") -> None:
    """Raise :class:`CameraError` unless Rt's left 3x3 block is a rotation (orthonormal, det +1)."""
    Rt = np.asarray(Rt, dtype=np.float64)
    if Rt.shape != (3, 4) or not np.isfinite(Rt).all():
        raise CameraError(f"{where}: Rt must be a finite 3x4 matrix; fix the calibration")
    R = Rt[:, :3]
    err = np.abs(R @ R.T - np.eye(3)).max()
    if err > ROTATION_TOL or np.linalg.det(R) < 0:
        raise CameraError(f"{where}: the left 3x3 block of Rt is not a rotation (|R R^T - I| = {err:.2e}, det = {np.linalg.det(R):.3f}); "
                          "fix the calibration (a scale belongs in Rt_scale_dict.json)")


def camera_from_params(params: dict[str, Any], view: str, where: str = "params.json") -> Camera:
    """Build and validate the :class:`Camera` of ``view``; ``where`` names the file in errors."""
    K = _matrix(params, f"{view}_K", (3, 3), where)
    Rt = _matrix(params, f"{view}_Rt", (3, 4), where)
    validate_intrinsics(K, f"{where}: view {view}")
    validate_extrinsics(Rt, f"{where}: view {view}")
    dist = np.zeros(5)
    if f"{view}_distortion" in params:
        d = np.asarray(params[f"{view}_distortion"], dtype=np.float64).ravel()
        if d.size > 5 or not np.isfinite(d).all():
            raise CameraError(f"{where}: {view}_distortion must be up to 5 finite numbers (k1 k2 p1 p2 k3)")
        dist[: d.size] = d
    for key in (f"{view}_width", f"{view}_height"):
        if key not in params:
            raise CameraError(f"{where} has no key {key}; add the image size in pixels")
    try:
        width, height = int(params[f"{view}_width"]), int(params[f"{view}_height"])
    except (TypeError, ValueError) as exc:
        raise CameraError(f"{where}: {view}_width and {view}_height must be integers") from exc
    if width <= 0 or height <= 0:
        raise CameraError(f"{where}: view {view} has a non-positive image size {width}x{height}")
    valid = bool(params.get(f"{view}_valid", True))
    return Camera(K, Rt, width, height, dist, valid)


def read_params(path: str | os.PathLike, where: str | None = None) -> dict[str, Camera]:
    """Read a FaceScape ``params.json`` -> ``{view: Camera}`` for every view it lists (valid or not).

    ``where`` (default: the path) is how errors name the file, e.g. ``"params.json of 012/03"``.
    """
    path = Path(path)
    where = where or str(path)
    if not path.is_file():
        raise CameraError(f"{where} does not exist")
    try:
        params = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CameraError(f"{where} is not valid JSON ({exc}); regenerate or repair it") from exc
    if not isinstance(params, dict):
        raise CameraError(f"{where} must hold a JSON object")
    views = list_views(params)
    if not views:
        raise CameraError(f"{where} lists no views (no <v>_K keys)")
    return {v: camera_from_params(params, v, where) for v in views}


def write_params(path: str | os.PathLike, cameras: dict[str, Camera]) -> None:
    """Write ``{view: Camera}`` as a FaceScape ``params.json`` (atomically)."""
    from mvfr.atomic_io import save_json

    params: dict[str, Any] = {}
    for v, cam in cameras.items():
        params.update(cam.to_params(v))
    save_json(path, params)


# ----------------------------------------------------------------------------------- projection


def _xp(x: Any):
    if isinstance(x, np.ndarray):
        return np
    import torch

    if isinstance(x, torch.Tensor):
        return torch
    return np


def camera_center(Rt):
    """Camera centre(s) in world coordinates: ``Rt [..., 3, 4] -> [..., 3]`` (C = -R^T t)."""
    R, t = Rt[..., :3], Rt[..., 3]
    return -(R.swapaxes(-1, -2) @ t[..., None])[..., 0]


def world_to_camera(points, Rt):
    """``points [..., N, 3]`` world -> camera coordinates ``[..., N, 3]`` for ``Rt [..., 3, 4]``."""
    return points @ Rt[..., :3].swapaxes(-1, -2) + Rt[..., None, :, 3]


def project_points(points, K, Rt, eps: float = 1e-12):
    """Pinhole projection (no distortion).

    points [N, 3] (or [V, N, 3]) world units; K [3, 3] or [V, 3, 3]; Rt [3, 4] or [V, 3, 4]
    -> pix [..., N, 2] pixels (pixel (0, 0) = centre of the top-left pixel), depth [..., N] camera z
    in world units. Points with depth <= 0 get finite but meaningless pixels; use :func:`visibility_mask`.
    """
    xp = _xp(points)
    cam = world_to_camera(points, Rt)
    z = cam[..., 2]
    zs = xp.where(xp.abs(z) < eps, eps, z)
    h = cam @ K.swapaxes(-1, -2)
    pix = h[..., :2] / zs[..., None]
    return pix, z


def in_image(pix, width: float, height: float):
    """``pix [..., 2]`` lies inside the image extent [-0.5, W - 0.5] x [-0.5, H - 0.5] -> bool [...]."""
    x, y = pix[..., 0], pix[..., 1]
    return (x >= -0.5) & (x <= width - 0.5) & (y >= -0.5) & (y <= height - 0.5)


def visibility_mask(pix, depth, width: float, height: float, min_depth: float = 0.0):
    """In front of the camera (depth > min_depth) and inside the image -> bool, shape of ``depth``."""
    return (depth > min_depth) & in_image(pix, width, height)


def backproject(pix, depth, K, Rt):
    """Inverse of :func:`project_points`: ``pix [N, 2]``, camera ``depth [N]`` -> world points [N, 3]."""
    xp = _xp(pix)
    ones = xp.ones_like(pix[..., :1])
    h = xp.concatenate([pix, ones], -1)
    Kinv = xp.linalg.inv(K)
    cam = (h @ Kinv.swapaxes(-1, -2)) * depth[..., None]
    R, t = Rt[..., :3], Rt[..., 3]
    return (cam - t[..., None, :]) @ R  # R^T (cam - t), row-vector form


def pixel_rays(pix, K, Rt):
    """Rays through pixels: ``pix [N, 2]`` -> origins [N, 3] (the camera centre), unit directions [N, 3] (world)."""
    xp = _xp(pix)
    far = backproject(pix, xp.ones_like(pix[..., 0]), K, Rt)
    c = camera_center(Rt)
    d = far - c[..., None, :]
    d = d / (d**2).sum(-1)[..., None] ** 0.5
    return xp.broadcast_to(c[..., None, :], d.shape), d


def pixel_to_grid(pix, width: float, height: float):
    """Pixel coordinates of a W x H image -> ``grid_sample`` coordinates (align_corners=False).

    ``g = (2 x + 1) / W - 1``: the centre of pixel 0 maps to -1 + 1/W, the image border to +-1.
    Valid for any feature-map resolution computed over the same image extent.
    """
    gx = (2.0 * pix[..., 0] + 1.0) / width - 1.0
    gy = (2.0 * pix[..., 1] + 1.0) / height - 1.0
    return _xp(pix).stack([gx, gy], -1)


def sample_image(images, pix, width: float, height: float):
    """Bilinearly sample ``images [V, C, H', W']`` (torch) at ``pix [V, N, 2]`` pixels of the W x H image.

    Returns [V, C, N]; outside the image the value is 0 (``padding_mode="zeros"``).
    """
    import torch.nn.functional as F

    grid = pixel_to_grid(pix, width, height)[:, :, None, :].to(images.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[..., 0]


# ------------------------------------------------------------------------------ image-space edits


def scale_camera(cam: Camera, new_width: int, new_height: int) -> Camera:
    """Camera of the image resized to ``new_width x new_height`` (pixel centres kept: x' = (x + .5) s - .5)."""
    sx, sy = new_width / cam.width, new_height / cam.height
    K = cam.K.copy()
    K[0, 0] *= sx
    K[0, 1] *= sx
    K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    K[1, 1] *= sy
    K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return dataclasses.replace(cam, K=K, width=int(new_width), height=int(new_height))


def crop_camera(cam: Camera, x0: int, y0: int, width: int, height: int) -> Camera:
    """Camera of the crop whose top-left pixel is (x0, y0) of the original, size ``width x height``."""
    K = cam.K.copy()
    K[0, 2] -= x0
    K[1, 2] -= y0
    return dataclasses.replace(cam, K=K, width=int(width), height=int(height))


def rotate_camera_90(cam: Camera, clockwise: bool = True) -> Camera:
    """Camera of the image rotated by 90 degrees (``np.rot90(img, -1)`` when clockwise).

    Rotating the image is a rotation of the camera about its optical axis, so Rt stays a rotation.
    Clockwise: new pixel (x', y') = (H - 1 - y, x).
    """
    K, Rt = cam.K, cam.Rt
    W, H = cam.width, cam.height
    if K[0, 1] != 0:
        raise CameraError("rotate_camera_90 needs zero skew")
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    if clockwise:
        # x' = H-1-y = -fy Y/Z + (H-1-cy);  y' = x = fx X/Z + cx.  Camera axes: X' = -Y, Y' = X.
        P = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        K2 = np.array([[fy, 0, H - 1 - cy], [0, fx, cx], [0, 0, 1.0]])
    else:
        # x' = y;  y' = W-1-x.  Camera axes: X' = Y, Y' = -X.
        P = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        K2 = np.array([[fy, 0, cy], [0, fx, W - 1 - cx], [0, 0, 1.0]])
    return dataclasses.replace(cam, K=K2, Rt=P @ Rt, width=H, height=W, dist=cam.dist.copy())


def distort_normalized(xy: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """OpenCV's lens model on normalised camera coordinates: ``xy [..., 2]`` (x = X/Z, y = Y/Z) ->
    distorted ``[..., 2]`` for ``dist [5]`` = k1 k2 p1 p2 k3 (radial 1 + k1 r^2 + k2 r^4 + k3 r^6, tangential p1, p2)."""
    k1, k2, p1, p2, k3 = (float(v) for v in np.asarray(dist, dtype=np.float64).ravel()[:5])
    x, y = xy[..., 0], xy[..., 1]
    r2 = x * x + y * y
    radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
    xd = x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
    yd = y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
    return np.stack([xd, yd], -1)


def undistorted_K(cam: Camera) -> np.ndarray:
    """K of :func:`undistort_image`'s output: the camera's K with its skew K[0, 1] set to 0 (the resampling
    removes skew along with distortion, so every later stage sees a plain pinhole camera)."""
    K = np.array(cam.K, dtype=np.float64)
    K[0, 1] = 0.0
    return K


def undistort_image(image: np.ndarray, cam: Camera) -> tuple[np.ndarray, Camera]:
    """Remove lens distortion and skew; the returned camera has K = :func:`undistorted_K` (the same focal
    lengths and principal point, zero skew) and zero distortion.

    ``image [H, W, C]`` (any dtype OpenCV remaps) -> resampled image of the same size (bilinear). Output
    pixel p is read at ``K distort(K_out^-1 p)`` of the input: the distortion acts on normalised
    coordinates and K, skew ``K[0, 1]`` included, maps them to pixels (OpenCV's and Metashape's model).
    ``cv2.initUndistortRectifyMap`` ignores the skew of the input K, so the map is built without it and
    the skew term ``K[0, 1] y_d`` (y_d = (v - cy) / fy, the distorted normalised row) is added to map_x.
    """
    import cv2

    if image.shape[0] != cam.height or image.shape[1] != cam.width:
        raise CameraError(
            f"image is {image.shape[1]}x{image.shape[0]} but the camera says {cam.width}x{cam.height}; "
            "fix <v>_width/<v>_height or the image"
        )
    K_out = undistorted_K(cam)
    out_cam = dataclasses.replace(cam, K=K_out, dist=np.zeros(5))
    skew = float(cam.K[0, 1])
    if not np.any(cam.dist) and skew == 0.0:
        return image.copy(), out_cam
    map_x, map_y = cv2.initUndistortRectifyMap(K_out, np.asarray(cam.dist, dtype=np.float64), None, K_out,
                                               (cam.width, cam.height), cv2.CV_32FC1)
    if skew:
        map_x = (map_x + skew * (map_y.astype(np.float64) - cam.K[1, 2]) / cam.K[1, 1]).astype(np.float32)
    out = cv2.remap(image, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out, out_cam
