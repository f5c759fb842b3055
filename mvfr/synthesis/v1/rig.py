"""Capture rig, lighting and capture frame of the synthetic data.

Cameras are placed in the head frame (mm) on a dome around the face: yaw spread over about
+-60 degrees, pitch over about +-20 degrees, each with its own focal length, principal point,
image size (portrait or landscape) and, for some, lens distortion. A capture is then expressed in
SfM-like units: ``X_units = (R_c X_mm + t_c) / mm_per_unit`` with a random rigid transform
``(R_c, t_c)`` and a random scale ``mm_per_unit`` in [0.3, 3]. ``Rt_scale_dict`` stores
``[mm_per_unit, Rt]`` with ``Rt`` the inverse transform, so that ``X_mm = mm_per_unit * (Rt[:, :3] X_units + Rt[:, 3])``
brings the capture back to the head frame.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mvfr.camera import Camera
from mvfr.render import Lighting
# unchanged in v2: shared, not copied
from mvfr.synthesis.rig import (  # noqa: F401
    camera_to_capture_units, distortion_maps, look_at, random_rotation, rt_scale_entry, sample_capture_transform,
    to_capture_units,
)

FACE_TARGET_MM = np.array([0.0, 0.0, 20.0])  # where the cameras look, head frame
HEAD_FRAME_HEIGHT_MM = 300.0  # vertical extent framed by a camera (chin to hair plus margin)


@dataclasses.dataclass
class RigView:
    camera_mm: Camera  # camera in the head frame (mm), with its distortion
    yaw_deg: float
    pitch_deg: float


def view_angles(num_views: int) -> list[tuple[float, float]]:
    """(yaw, pitch) in degrees of ``num_views`` cameras: yaw over [-60, 60], pitch cycling 0, +18, -15."""
    if num_views < 1:
        raise ValueError("num_views must be >= 1")
    yaws = np.linspace(-60, 60, num_views) if num_views > 1 else np.zeros(1)
    pitches = [0.0, 18.0, -15.0]
    return [(float(y), pitches[k % 3]) for k, y in enumerate(yaws)]


def sample_rig(
    num_views: int,
    long_side: int,
    rng: np.random.Generator,
    distorted_fraction: float = 0.5,
) -> list[RigView]:
    """Cameras of one capture in the head frame (mm)."""
    views = []
    for k, (yaw, pitch) in enumerate(view_angles(num_views)):
        yaw += rng.uniform(-3, 3)
        pitch += rng.uniform(-3, 3)
        dist = rng.uniform(600, 800)
        ya, pa = np.deg2rad(yaw), np.deg2rad(pitch)
        direction = np.array([np.sin(ya) * np.cos(pa), np.sin(pa), np.cos(ya) * np.cos(pa)])
        target = FACE_TARGET_MM + rng.normal(0, 8, 3)
        center = target + dist * direction
        Rt = look_at(center, target, roll=np.deg2rad(rng.uniform(-3, 3)))
        portrait = rng.uniform() < 0.75
        W, H = (round(long_side * 2 / 3), long_side) if portrait else (long_side, round(long_side * 2 / 3))
        frame = min(W, H) if not portrait else H
        f = frame * dist / HEAD_FRAME_HEIGHT_MM * rng.uniform(0.9, 1.1)
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


def sample_lighting(rng: np.random.Generator) -> Lighting:
    """One capture's lights (head frame): a key light, a fill light, a rim light, ambient; Lambert + specular."""
    def direction(az, el):
        a, e = np.deg2rad(az), np.deg2rad(el)
        return np.array([np.sin(a) * np.cos(e), np.sin(e), np.cos(a) * np.cos(e)])

    side = rng.choice([-1.0, 1.0])
    key = direction(side * rng.uniform(10, 50), rng.uniform(10, 45))
    fill = direction(-side * rng.uniform(30, 70), rng.uniform(-10, 20))
    rim = direction(side * rng.uniform(120, 160), rng.uniform(20, 50))
    tint = 1 + rng.uniform(-0.05, 0.05, 3)
    k = rng.uniform(0.75, 1.0)
    colors = np.array([k * tint, rng.uniform(0.2, 0.4) * tint, rng.uniform(0.1, 0.3) * np.ones(3)])
    amb = rng.uniform(0.12, 0.22)
    return Lighting(
        directions=np.stack([key, fill, rim]), colors=colors, ambient=(amb, amb, amb * rng.uniform(0.95, 1.08)),
        wrap=rng.uniform(0.1, 0.3), spec_strength=rng.uniform(0.06, 0.16), shininess=rng.uniform(18, 45),
    )
