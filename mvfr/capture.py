"""A processed capture of one face: its selected views' images and cameras from DATA_FOLDER."""

from __future__ import annotations

import dataclasses

import numpy as np

from mvfr.atomic_io import load_image
from mvfr.camera import Camera, read_params
from mvfr.datafolder import DataError, DataFolder


@dataclasses.dataclass
class Capture:
    face_id: str
    views: list[str]  # view names, e.g. ["0", "3", ...]
    images: list[np.ndarray]  # RGB uint8 [H, W, 3] per view
    cameras: list[Camera]  # undistorted cameras of the processed images
    mm_per_unit: float  # millimetres per capture unit

    def stacked_cameras(self) -> tuple[np.ndarray, np.ndarray]:
        """``K [V, 3, 3]``, ``Rt [V, 3, 4]``."""
        return np.stack([c.K for c in self.cameras]), np.stack([c.Rt for c in self.cameras])

    def mm_to_units(self, mm: float) -> float:
        return mm / self.mm_per_unit


def load_capture(folder: DataFolder, fid: str, max_views: int | None = None, with_images: bool = True,
                 mm_per_unit: float | None = None) -> Capture:
    """Read the processed views of ``fid`` (those present in its ``params.json``, in select_dict order).

    Errors name the file: a missing or corrupt image, a params.json without a key, an image whose
    size disagrees with its camera.
    """
    params_path = folder.params(fid)
    cams = read_params(params_path, where=f"params.json of {fid} ({params_path})")
    try:
        order = [v for v in folder.selected_views(fid) if v in cams]
    except DataError:
        order = list(cams)
    views = [v for v in order if cams[v].valid]
    if max_views is not None:
        views = views[:max_views]
    if len(views) < 2:
        raise DataError(f"face {fid} has {len(views)} usable views in {params_path}; at least 2 are needed")
    images = []
    if with_images:
        for v in views:
            img = load_image(folder.image(fid, v))
            cam = cams[v]
            if img.shape[0] != cam.height or img.shape[1] != cam.width:
                raise DataError(
                    f"image {folder.image(fid, v)} is {img.shape[1]}x{img.shape[0]} but params.json says "
                    f"{cam.width}x{cam.height}; rerun preprocess_images.py"
                )
            images.append(img)
    mm = folder.mm_per_unit(fid) if mm_per_unit is None else float(mm_per_unit)  # an override: gen_maps estimating it
    return Capture(fid, views, images, [cams[v] for v in views], mm)
