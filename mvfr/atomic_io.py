"""Atomic file writes: every output goes to a temporary name in the same folder, then is renamed.

An interrupted stage therefore never leaves a half-written file under the final name, and a file
that already existed keeps its old content until the new one is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, else delete it.

    The temporary name keeps the final suffix, so writers that pick a format from the suffix
    (OpenCV, Pillow, trimesh) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode a plain open() would
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries :func:`atomic_path` left in ``folder`` when its process was killed
    mid-write (SIGKILL skips the clean-up); returns what was removed. Call it only where no other
    process is writing into ``folder`` (a training run's own checkpoint or log folder, at start)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.name.startswith(".") and ".tmp" in p.name and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as a .npy file atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(array))


def save_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    """Write ``obj`` as JSON atomically (numpy scalars and arrays are converted)."""

    def default(o: Any) -> Any:
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"cannot write {type(o).__name__} to JSON")

    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent, default=default)
            f.write("\n")


def save_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def save_image(path: str | os.PathLike, image: np.ndarray, jpeg_quality: int = 95) -> None:
    """Write an RGB (H, W, 3) or grey (H, W) uint8/uint16 image atomically (format from suffix)."""
    import cv2

    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 3:
        image = image[:, :, ::-1]  # RGB -> OpenCV's BGR
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if str(path).lower().endswith((".jpg", ".jpeg")) else []
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), np.ascontiguousarray(image), params):
            raise OSError(f"could not write image {path}")


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as RGB uint8 (H, W, 3), as stored (EXIF orientation ignored: calibrations refer to the
    stored pixels); a missing or corrupt file raises ``ValueError`` naming it."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"image {path} does not exist; restore it, or mark its view invalid in params.json")
    data = np.fromfile(path, dtype=np.uint8)
    fix = "replace the file, or mark its view invalid in params.json"
    if path.suffix.lower() in (".jpg", ".jpeg") and data[:2].tobytes() == b"\xff\xd8" and b"\xff\xd9" not in data[-1024:].tobytes():
        # OpenCV decodes a truncated JPEG without an error (grey rows at the bottom); refuse it.
        raise ValueError(f"image {path} is a truncated JPEG (no end-of-image marker); {fix}")
    # as stored: an EXIF orientation tag is ignored, so pixels match the calibration made from them
    image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise ValueError(f"image {path} could not be decoded (corrupt or not an image); {fix}")
    return image[:, :, ::-1].copy()
