"""Atomic file writes: every output goes to a temporary name in the same folder, then is renamed.

An interrupted stage therefore never leaves a half-written file under the final name, and a file
that already existed keeps its old content until the new one is complete.

Inside :func:`keep_in_memory` (run_pipeline's in-process mode) arrays written by :func:`save_npy`
and arrays and images read by :func:`load_npy` and :func:`load_image` are also kept in memory, so
the next stage gets them without reading or decoding the file again; every file is still written,
and an entry is used only while its file is unchanged (same modification time and size).
"""

from __future__ import annotations

import collections
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


# ------------------------------------------------------------------------------ in-memory cache


class _MemoryCache:
    """Arrays by resolved path, with the (mtime_ns, size) of the file they equal; least recently
    used entries go first once ``budget_bytes`` is exceeded."""

    def __init__(self, budget_bytes: int):
        self.budget = int(budget_bytes)
        self.entries: collections.OrderedDict[Path, tuple[tuple[int, int], np.ndarray]] = collections.OrderedDict()
        self.bytes = 0

    @staticmethod
    def _key(path) -> tuple[Path, tuple[int, int]] | None:
        try:
            p = Path(path).resolve()
            st = p.stat()
        except OSError:
            return None
        return p, (st.st_mtime_ns, st.st_size)

    def put(self, path, array: np.ndarray) -> None:
        key = self._key(path)
        if key is None or array.nbytes > self.budget:
            return
        self.drop(key[0])
        array = np.array(array, copy=True)
        array.flags.writeable = False
        self.entries[key[0]] = (key[1], array)
        self.bytes += array.nbytes
        while self.bytes > self.budget:
            self.drop(next(iter(self.entries)))

    def get(self, path) -> np.ndarray | None:
        key = self._key(path)
        hit = self.entries.get(key[0]) if key else None
        if hit is None or hit[0] != key[1]:
            return None
        self.entries.move_to_end(key[0])
        return hit[1]

    def drop(self, resolved: Path) -> None:
        old = self.entries.pop(resolved, None)
        if old is not None:
            self.bytes -= old[1].nbytes


_memory: _MemoryCache | None = None


@contextlib.contextmanager
def keep_in_memory(budget_mb: float = 1024.0) -> Iterator[None]:
    """Within this block, keep written and read arrays and decoded images in memory (at most
    ``budget_mb``, least recently used dropped first). Nested blocks share the outer cache."""
    global _memory
    if _memory is not None:
        yield
        return
    _memory = _MemoryCache(int(budget_mb * 2**20))
    try:
        yield
    finally:
        _memory = None


def _cached(path) -> np.ndarray | None:
    """A writable copy of the cached array of ``path`` (unchanged since cached), or None."""
    hit = _memory.get(path) if _memory is not None else None
    return None if hit is None else hit.copy()


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as a .npy file atomically (and keep it in memory inside :func:`keep_in_memory`)."""
    array = np.asarray(array)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)
    if _memory is not None:
        _memory.put(path, array)


def load_npy(path: str | os.PathLike) -> np.ndarray:
    """``np.load`` of a .npy file, from memory when :func:`keep_in_memory` holds it unchanged."""
    hit = _cached(path)
    if hit is not None:
        return hit
    array = np.load(path)
    if _memory is not None:
        _memory.put(path, array)
    return array


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


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock for ``path`` (``fcntl.flock`` on ``.<name>.lock`` beside it) while the block
    runs: a read-modify-write of a file that several processes update (torchrun ranks) loses no update."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def update_json(path: str | os.PathLike, update, what: str = "JSON file") -> Any:
    """Read ``path`` (``{}`` when missing), apply ``update(obj) -> obj`` and write the result atomically,
    under :func:`locked`; returns what was written."""
    path = Path(path)
    with locked(path):
        try:
            obj = json.loads(path.read_text()) if path.is_file() else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"{what} {path} is not valid JSON ({exc}); fix or delete it") from None
        obj = update(obj)
        save_json(path, obj)
    return obj


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


def load_image(path: str | os.PathLike, remember: bool = True) -> np.ndarray:
    """Read an image as RGB uint8 (H, W, 3), as stored (EXIF orientation ignored: calibrations refer to the
    stored pixels); a missing or corrupt file raises ``ValueError`` naming it. ``remember=False``: not
    kept by :func:`keep_in_memory` (an image no later stage reads, e.g. a RAW photograph)."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"image {path} does not exist; restore it, or mark its view invalid in params.json")
    hit = _cached(path)
    if hit is not None:
        return hit
    data = np.fromfile(path, dtype=np.uint8)
    fix = "replace the file, or mark its view invalid in params.json"
    if path.suffix.lower() in (".jpg", ".jpeg") and data[:2].tobytes() == b"\xff\xd8" and b"\xff\xd9" not in data[-1024:].tobytes():
        # OpenCV decodes a truncated JPEG without an error (grey rows at the bottom); refuse it.
        raise ValueError(f"image {path} is a truncated JPEG (no end-of-image marker); {fix}")
    # as stored: an EXIF orientation tag is ignored, so pixels match the calibration made from them
    image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise ValueError(f"image {path} could not be decoded (corrupt or not an image); {fix}")
    image = image[:, :, ::-1].copy()
    if _memory is not None and remember:
        _memory.put(path, image)
    return image
