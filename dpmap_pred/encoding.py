"""Mesoscopic displacement maps on disk: 16-bit PNG <-> millimetres, with the encoding stored twice.

A displacement map is ``[S, S]`` float, millimetres along the outward surface normal (positive =
outwards), in the template UV layout (DESIGN §3: texel (row i, col j) has
``uv = ((j + 0.5) / S, 1 - (i + 0.5) / S)``; row 0 is v = 1).

On disk (``DATA/pred/dp_map/dp_map_PPP_EE.png``) it is a single-channel **16-bit PNG**::

    mm = (code - zero_code) * mm_per_code          default: zero_code = 32768, mm_per_code = 0.0002

so one code is 0.2 micrometres and the representable range is [-6.5536, +6.5534] mm (values beyond
are clipped, with a warning). The encoding is written

- inside the PNG as a ``tEXt`` chunk with keyword ``mvfr_dpmap`` holding the JSON below, and
- in a sidecar JSON beside it (``dp_map_PPP_EE.json``)::

    {"format": "mvfr-dpmap-1", "unit": "mm", "zero_code": 32768, "mm_per_code": 0.0002,
     "formula": "mm = (code - zero_code) * mm_per_code", "size": S, ...}

:func:`read_dpmap` takes the encoding from the PNG's own metadata, else from the sidecar, else it
raises (a bare 16-bit PNG is ambiguous); ``assume_default=True`` falls back to the default encoding.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from mvfr.atomic_io import atomic_path, save_json

log = logging.getLogger(__name__)

FORMAT = "mvfr-dpmap-1"
PNG_TEXT_KEY = "mvfr_dpmap"
DEFAULT_ZERO_CODE = 32768
DEFAULT_MM_PER_CODE = 2e-4


def encoding_info(
    size: int | tuple[int, int], mm_per_code: float = DEFAULT_MM_PER_CODE, zero_code: int = DEFAULT_ZERO_CODE, **extra: Any
) -> dict[str, Any]:
    """The encoding record written in the PNG metadata and the sidecar JSON."""
    if not mm_per_code > 0:
        raise ValueError(f"mm_per_code must be > 0, got {mm_per_code}")
    if not 0 <= int(zero_code) <= 65535:
        raise ValueError(f"zero_code must lie in 0..65535, got {zero_code}")
    h, w = (size, size) if isinstance(size, int) else size
    info = {
        "format": FORMAT,
        "unit": "mm",
        "zero_code": int(zero_code),
        "mm_per_code": float(mm_per_code),
        "formula": "mm = (code - zero_code) * mm_per_code",
        "range_mm": [(0 - int(zero_code)) * float(mm_per_code), (65535 - int(zero_code)) * float(mm_per_code)],
        "meaning": "displacement along the outward surface normal (positive = outwards)",
        "uv_convention": "texel (row i, col j) of an S x S map has uv = ((j + 0.5) / S, 1 - (i + 0.5) / S)",
        "height": int(h),
        "width": int(w),
    }
    info.update(extra)
    return info


def encode_mm(dp_mm: np.ndarray, mm_per_code: float = DEFAULT_MM_PER_CODE, zero_code: int = DEFAULT_ZERO_CODE) -> np.ndarray:
    """``dp_mm [H, W]`` float (mm) -> ``[H, W]`` uint16 codes (rounded; out-of-range values clipped)."""
    dp = np.asarray(dp_mm, dtype=np.float64)
    if dp.ndim != 2:
        raise ValueError(f"a displacement map must be [H, W], got shape {dp.shape}")
    if not np.isfinite(dp).all():
        raise ValueError("displacement map contains NaN or infinite values")
    code = np.rint(dp / float(mm_per_code)) + int(zero_code)
    clipped = int(((code < 0) | (code > 65535)).sum())
    if clipped:
        log.warning("%d displacement values lie outside the 16-bit range of %.4g mm per code; clipped", clipped, mm_per_code)
    return np.clip(code, 0, 65535).astype(np.uint16)


def decode_mm(code: np.ndarray, mm_per_code: float = DEFAULT_MM_PER_CODE, zero_code: int = DEFAULT_ZERO_CODE) -> np.ndarray:
    """``code [H, W]`` uint16 -> ``[H, W]`` float32 millimetres."""
    return ((np.asarray(code).astype(np.float64) - int(zero_code)) * float(mm_per_code)).astype(np.float32)


def sidecar_path(png_path: str | os.PathLike) -> Path:
    """The sidecar JSON of a displacement PNG (same name, ``.json``)."""
    return Path(png_path).with_suffix(".json")


def write_dpmap(
    path: str | os.PathLike,
    dp_mm: np.ndarray,
    mm_per_code: float = DEFAULT_MM_PER_CODE,
    zero_code: int = DEFAULT_ZERO_CODE,
    sidecar: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """Write ``dp_mm [H, W]`` (mm) as a 16-bit PNG with the encoding in a tEXt chunk (+ sidecar JSON).

    ``extra`` items (e.g. ``face_id``, ``checkpoint``) are added to the record. Returns the record.
    """
    from PIL import Image, PngImagePlugin

    code = encode_mm(dp_mm, mm_per_code, zero_code)
    info = encoding_info(code.shape, mm_per_code, zero_code, **extra)
    meta = PngImagePlugin.PngInfo()
    meta.add_text(PNG_TEXT_KEY, json.dumps(info))
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"displacement maps are written as .png, got {path}")
    with atomic_path(path) as tmp:
        Image.fromarray(code).save(tmp, format="PNG", pnginfo=meta)
    if sidecar:
        save_json(sidecar_path(path), info)
    return info


def read_dpmap(path: str | os.PathLike, assume_default: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a displacement PNG -> ``(dp_mm [H, W] float32, encoding record)``.

    The encoding comes from the PNG's ``mvfr_dpmap`` text chunk, else from the sidecar JSON; with
    neither, ``assume_default=True`` uses the default encoding and ``False`` raises ValueError.
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"displacement map {path} does not exist; run dpmap_pred/main.py first")
    try:
        with Image.open(path) as im:
            text = dict(getattr(im, "text", {}) or {})
            code = np.array(im)
    except OSError as exc:
        raise ValueError(f"displacement map {path} could not be decoded ({exc}); delete it and rerun") from exc
    if code.ndim != 2 or code.dtype not in (np.uint16, np.int32, np.uint32, np.int64):
        raise ValueError(f"displacement map {path} must be a single-channel 16-bit PNG, got {code.dtype} {code.shape}")
    info = None
    if PNG_TEXT_KEY in text:
        info = json.loads(text[PNG_TEXT_KEY])
    elif sidecar_path(path).is_file():
        info = json.loads(sidecar_path(path).read_text())
    elif assume_default:
        info = encoding_info(code.shape)
    else:
        raise ValueError(
            f"displacement map {path} carries no encoding (no '{PNG_TEXT_KEY}' PNG text, no {sidecar_path(path).name}); "
            "pass assume_default=True to read it with the default encoding"
        )
    if info.get("format") != FORMAT:
        raise ValueError(f"displacement map {path}: unknown encoding format {info.get('format')!r} (expected {FORMAT})")
    return decode_mm(code, info["mm_per_code"], info["zero_code"]), info
