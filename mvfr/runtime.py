"""What every stage script does once: choose the device, seed, log the environment, save its options."""

from __future__ import annotations

import argparse
import logging
import platform
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np

from mvfr.atomic_io import save_json

log = logging.getLogger("mvfr")


def setup_logging(level: str = "INFO") -> None:
    """Library logging to stderr (tqdm bars stay on their own line)."""
    logging.basicConfig(level=getattr(logging, level), format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def resolve_device(name: str = "auto") -> str:
    """``auto|cpu|cuda`` -> a torch device string; asking for cuda without one is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device; use --device cpu or auto")
    return name


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (call once per stage, never at import time)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a requirement
        pass


def environment() -> dict[str, Any]:
    """Versions and hardware, for the logs."""
    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(), "numpy": np.__version__}
    try:
        import torch

        env["torch"] = torch.__version__
        env["cuda"] = torch.cuda.get_device_name(torch.cuda.current_device()) if torch.cuda.is_available() else None
        env["threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        pass
    return env


def save_options(path: str | Path, opt: argparse.Namespace) -> None:
    """Write the options a stage ran with (and the environment) as JSON beside its outputs."""
    save_json(path, {"options": vars(opt), "environment": environment(), "argv": sys.argv})


def keep_freed_memory() -> bool:
    """Ask glibc's allocator to serve blocks up to 64 MB from its heap and keep freed heap memory
    mapped (``mallopt``: mmap threshold, trim threshold and top pad raised). The stages allocate and
    free tens of MB per network chunk; by default many such blocks are a fresh ``mmap`` whose pages
    fault in again, which cost a third of eval_if's CPU time in kernel page faults on a 2-core
    machine. Larger blocks (feature maps, regulariser activations) are still mapped and returned, so
    one stage's peak is not kept for the next. Returns whether it took effect (False off glibc, e.g. macOS)."""
    import ctypes
    import ctypes.util

    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
            _ALLOCATOR_TUNED = all(
                libc.mallopt(opt, value) == 1
                for opt, value in ((m_mmap_threshold, 64 * 2**20), (m_trim_threshold, 2**31 - 1), (m_top_pad, 64 * 2**20))
            )
        except (OSError, AttributeError):
            _ALLOCATOR_TUNED = False
    return _ALLOCATOR_TUNED


_ALLOCATOR_TUNED: bool | None = None


def start_stage(opt: argparse.Namespace, options_path: str | Path | None = None) -> None:
    """The first lines of every stage: logging, allocator, seed, environment log, options file."""
    setup_logging(getattr(opt, "log_level", "INFO"))
    keep_freed_memory()
    seed_everything(opt.seed)
    log.info("environment: %s", environment())
    if options_path is not None:
        check_writable(Path(options_path).parent)
        save_options(options_path, opt)


def check_writable(folder: str | Path) -> None:
    """Exit with a clear message unless ``folder`` can be created and written (tested by writing a file)."""
    import tempfile

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_test_"):
            pass
    except OSError as exc:
        raise SystemExit(
            f"error: cannot write to {folder} ({exc.strerror or exc}); choose a --dataroot on a writable disk"
        ) from None


def run_main(main) -> int:
    """Run a stage script's ``main``; a stage-level input error prints one clear line and exits with 2.

    Per-face errors are handled by :func:`mvfr.stage.run_faces`; this catches what stops a whole stage
    before any face (a bad or mismatched checkpoint, missing metadata, an unknown face id).
    """
    from mvfr.camera import CameraError
    from mvfr.datafolder import DataError
    from mvfr.training import CheckpointError

    try:
        return main()
    except (CheckpointError, DataError, CameraError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
