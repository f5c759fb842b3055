"""Capture rig, lighting and capture frame of the synthetic data.

Cameras are placed in the head frame (mm) around the face on one of several layouts
(:data:`LAYOUTS`: a ring at eye height, two rows, a tilted arc, or scattered), 2 to 16 of them,
yaw within +-70 degrees and pitch within +-25 degrees, each with its own distance (450-1100 mm),
focal length, principal point, image size (portrait or landscape; 0.5-12 MP when sizes are mixed)
and, for some, lens distortion. A capture is then expressed in SfM-like units:
``X_units = (R_c X_mm + t_c) / mm_per_unit`` with a random rigid transform ``(R_c, t_c)`` and a
random scale ``mm_per_unit`` in [0.3, 3]. ``Rt_scale_dict`` stores ``[mm_per_unit, Rt]`` with
``Rt`` the inverse transform, so that ``X_mm = mm_per_unit * (Rt[:, :3] X_units + Rt[:, 3])``
brings the capture back to the head frame.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mvfr.camera import Camera

FACE_TARGET_MM = np.array([0.0, -5.0, 75.0])  # where the cameras look, head frame (ICT model: mid-face, behind the nose)
HEAD_FRAME_HEIGHT_MM = 330.0  # vertical extent framed by a camera (chin to hair plus margin), at unit zoom
LAYOUTS = ("ring", "two_rows", "arc", "scatter")
MAX_YAW_DEG = 70.0
MAX_PITCH_DEG = 25.0


def look_at(center: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, 1.0, 0.0]), roll: float = 0.0) -> np.ndarray:
    """World->camera ``Rt [3, 4]`` (OpenCV: x right, y down, z forward) of a camera at ``center`` looking at ``target``."""
    z = target - center
    z = z / np.linalg.norm(z)
    x = np.cross(z, up)  # image right
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    if roll:
        c, s = np.cos(roll), np.sin(roll)
        R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ R
    return np.concatenate([R, (-R @ center)[:, None]], 1)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


@dataclasses.dataclass
class RigView:
    camera_mm: Camera  # camera in the head frame (mm), with its distortion
    yaw_deg: float
    pitch_deg: float


def view_angles(num_views: int, layout: str = "ring", rng: np.random.Generator | None = None) -> list[tuple[float, float]]:
    """(yaw, pitch) in degrees of ``num_views`` cameras on ``layout`` (yaw in +-70, pitch in +-25).

    ``ring``: one row near eye height; ``two_rows``: an upper and a lower row, staggered; ``arc``: a
    row tilted so that pitch changes with yaw; ``scatter``: random directions with a minimum spacing.
    The yaw span grows with the number of views (about +-20 deg for 2 views, up to +-70).
    """
    if not 1 <= num_views <= 32:
        raise ValueError(f"num_views must be in 1..32, got {num_views}")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown rig layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    rng = rng or np.random.default_rng(0)
    span = min(MAX_YAW_DEG, 12.0 + 7.0 * num_views) * rng.uniform(0.85, 1.0)
    if num_views == 1:
        return [(0.0, 0.0)]
    if layout == "ring":
        yaws = np.linspace(-span, span, num_views)
        pitches = rng.uniform(-4, 6) + rng.uniform(-3, 3, num_views)
    elif layout == "two_rows":
        yaws = np.linspace(-span, span, num_views)
        up, down = rng.uniform(12, MAX_PITCH_DEG - 2), -rng.uniform(8, 20)
        pitches = np.where(np.arange(num_views) % 2 == 0, up, down) + rng.uniform(-2, 2, num_views)
    elif layout == "arc":
        yaws = np.linspace(-span, span, num_views)
        tilt = rng.uniform(-0.3, 0.3)
        pitches = rng.uniform(-5, 10) + tilt * yaws + 6 * np.cos(np.deg2rad(yaws) * 1.5) + rng.uniform(-2, 2, num_views)
    else:
        out: list[tuple[float, float]] = []
        spacing = 0.8 * span * 2 / num_views
        for _ in range(2000):
            y, p = rng.uniform(-span, span), rng.uniform(-MAX_PITCH_DEG, MAX_PITCH_DEG)
            if all(np.hypot(y - a, (p - b) * 1.5) >= spacing for a, b in out):
                out.append((y, p))
                if len(out) == num_views:
                    break
        while len(out) < num_views:  # tight packing: fill in regardless of spacing
            out.append((rng.uniform(-span, span), rng.uniform(-MAX_PITCH_DEG, MAX_PITCH_DEG)))
        out.sort()
        yaws, pitches = np.array([o[0] for o in out]), np.array([o[1] for o in out])
    yaws = np.clip(yaws + rng.uniform(-2, 2, num_views), -MAX_YAW_DEG, MAX_YAW_DEG)
    pitches = np.clip(pitches, -MAX_PITCH_DEG, MAX_PITCH_DEG)
    return [(float(y), float(p)) for y, p in zip(yaws, pitches)]


def image_size(long_side: int, portrait: bool, rng: np.random.Generator, mixed_sizes: bool) -> tuple[int, int]:
    """(W, H) of one camera: 3:2 (or 4:3) at ``long_side`` with +-10 % jitter, or with ``mixed_sizes``
    a size drawn log-uniformly between 0.5 and 12 megapixels."""
    aspect = 1.5 if rng.uniform() < 0.8 else 4 / 3
    if mixed_sizes:
        mp = float(np.exp(rng.uniform(np.log(0.5e6), np.log(12e6))))
        L = int(round(np.sqrt(mp * aspect)))
    else:
        L = int(round(long_side * rng.uniform(0.9, 1.1)))
    L = max(L - L % 2, 16)
    S = max(int(round(L / aspect)) // 2 * 2, 8)
    return (S, L) if portrait else (L, S)


def sample_rig(
    num_views: int,
    long_side: int,
    rng: np.random.Generator,
    distorted_fraction: float = 0.5,
    layout: str | None = None,
    mixed_sizes: bool = False,
) -> list[RigView]:
    """Cameras of one capture in the head frame (mm); ``layout`` None draws one of :data:`LAYOUTS`."""
    layout = layout or str(rng.choice(LAYOUTS))
    views = []
    portrait_rig = rng.uniform() < 0.7
    for yaw, pitch in view_angles(num_views, layout, rng):
        dist = rng.uniform(450, 1100)
        ya, pa = np.deg2rad(yaw), np.deg2rad(pitch)
        direction = np.array([np.sin(ya) * np.cos(pa), np.sin(pa), np.cos(ya) * np.cos(pa)])
        target = FACE_TARGET_MM + rng.normal(0, 6, 3)
        center = target + dist * direction
        Rt = look_at(center, target, roll=np.deg2rad(rng.uniform(-4, 4)))
        portrait = portrait_rig if rng.uniform() < 0.85 else not portrait_rig
        W, H = image_size(long_side, portrait, rng, mixed_sizes)
        frame_px = H if portrait else min(W, H) * 1.15
        f = frame_px * dist / HEAD_FRAME_HEIGHT_MM * rng.uniform(0.85, 1.2)
        K = np.array([
            [f, 0.0, (W - 1) / 2 + rng.uniform(-0.02, 0.02) * W],
            [0.0, f * rng.uniform(0.998, 1.002), (H - 1) / 2 + rng.uniform(-0.02, 0.02) * H],
            [0.0, 0.0, 1.0],
        ])
        d = np.zeros(5)
        if rng.uniform() < distorted_fraction:
            d = np.array([rng.uniform(-0.25, 0.2), rng.uniform(-0.15, 0.15), rng.uniform(-1e-3, 1e-3), rng.uniform(-1e-3, 1e-3), 0.0])
        views.append(RigView(Camera(K, Rt, W, H, d, True), float(yaw), float(pitch)))
    return views


def sample_capture_transform(rng: np.random.Generator) -> tuple[float, np.ndarray, np.ndarray]:
    """``(mm_per_unit, R_c [3,3], t_c [3] mm)``: head frame -> capture units is ``(R_c X + t_c) / mm_per_unit``."""
    mm_per_unit = float(np.exp(rng.uniform(np.log(0.3), np.log(3.0))))
    return mm_per_unit, random_rotation(rng), rng.uniform(-800, 800, 3)


def to_capture_units(points_mm: np.ndarray, mm_per_unit: float, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    return (points_mm @ R.T + t) / mm_per_unit


def camera_to_capture_units(cam: Camera, mm_per_unit: float, R: np.ndarray, t: np.ndarray) -> Camera:
    """The same physical camera, for world points in capture units (projection unchanged)."""
    # X_mm = R^T (s X_u - t)  ->  cam = R_cam X_mm + t_cam = (R_cam R^T) s X_u + (t_cam - R_cam R^T t)
    # camera coordinates in units: divide by s
    Rc = cam.Rt[:, :3] @ R.T
    tc = (cam.Rt[:, 3] - Rc @ t) / mm_per_unit
    return dataclasses.replace(cam, Rt=np.concatenate([Rc, tc[:, None]], 1))


def rt_scale_entry(mm_per_unit: float, R: np.ndarray, t: np.ndarray) -> list:
    """``[mm_per_unit, Rt]`` with ``X_mm = mm_per_unit * (Rt[:, :3] X_units + Rt[:, 3])``."""
    Rt = np.concatenate([R.T, (-R.T @ t / mm_per_unit)[:, None]], 1)
    return [float(mm_per_unit), Rt.tolist()]


def _direction(az: float, el: float) -> np.ndarray:
    a, e = np.deg2rad(az), np.deg2rad(el)
    return np.array([np.sin(a) * np.cos(e), np.sin(e), np.cos(a) * np.cos(e)])


def sample_lighting(rng: np.random.Generator):
    """One capture's lights (head frame), linear RGB: soft (several broad lights, strong ambient, as
    a studio light-stage) or hard (one dominant key, weak fill), with a colour temperature."""
    from mvfr.synthesis.head_render import HeadLighting

    side = rng.choice([-1.0, 1.0])
    warm = rng.uniform(-1, 1)  # colour temperature: -1 cool .. +1 warm
    base = np.array([1.0 + 0.08 * warm, 1.0, 1.0 - 0.12 * warm])
    soft = rng.uniform() < 0.5
    if soft:
        n = int(rng.integers(3, 7))
        dirs = [_direction(rng.uniform(-80, 80), rng.uniform(-10, 50)) for _ in range(n)]
        power = rng.uniform(0.5, 1.0, n)
        colors = [p * base * (1 + rng.uniform(-0.04, 0.04, 3)) * 1.3 / n for p in power]
        sky = rng.uniform(0.25, 0.4)
        wrap = rng.uniform(0.3, 0.5)
    else:
        dirs = [_direction(side * rng.uniform(15, 60), rng.uniform(10, 50)),
                _direction(-side * rng.uniform(30, 80), rng.uniform(-10, 25))]
        colors = [rng.uniform(0.9, 1.2) * base, rng.uniform(0.08, 0.25) * base]
        if rng.uniform() < 0.5:  # rim light
            dirs.append(_direction(side * rng.uniform(110, 160), rng.uniform(20, 50)))
            colors.append(rng.uniform(0.2, 0.5) * np.ones(3))
        sky = rng.uniform(0.06, 0.15)
        wrap = rng.uniform(0.15, 0.35)
    return HeadLighting(
        directions=np.stack(dirs), colors=np.stack(colors),
        sky=tuple(sky * base), ground=tuple(sky * 0.35 * np.array([1.0, 0.95, 0.9])), wrap=float(wrap),
        spec_gain=float(rng.uniform(0.6, 1.2)),
    )


def distortion_maps(cam: Camera) -> tuple[np.ndarray, np.ndarray]:
    """For every pixel of the *distorted* image of ``cam``: where it comes from in the undistorted image.

    Returns ``map_x, map_y [H, W]`` float32 (pixels of the pinhole image with the same K), for
    ``cv2.remap(undistorted, map_x, map_y)``.
    """
    import cv2

    W, H = cam.width, cam.height
    from scipy.interpolate import RectBivariateSpline

    step = 8  # the map is smooth: solve on a coarse grid, interpolate (cubic splines) in between
    gx = np.arange(-2 * step, W + 3 * step, step, dtype=np.float64)
    gy = np.arange(-2 * step, H + 3 * step, step, dtype=np.float64)
    xs, ys = np.meshgrid(gx, gy)
    pts = np.stack([xs.ravel(), ys.ravel()], 1).reshape(-1, 1, 2)
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 1e-9)
    und = cv2.undistortPoints(pts, cam.K, cam.dist, R=None, P=cam.K, criteria=crit).reshape(len(gy), len(gx), 2)
    fx, fy = np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64)
    map_x = RectBivariateSpline(gy, gx, und[..., 0])(fy, fx)
    map_y = RectBivariateSpline(gy, gx, und[..., 1])(fy, fx)
    return map_x.astype(np.float32), map_y.astype(np.float32)
