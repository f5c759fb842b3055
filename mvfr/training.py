"""Training infrastructure every trained stage shares (implicit function, regulariser, mesoscopic).

* Checkpoints are plain dicts ``{format, step, epoch, model, optimizer, options}`` (tensors,
  numbers, strings, lists, dicts only) so they load with ``torch.load(weights_only=True)`` and
  ``load_state_dict(strict=True)``. A run writes ``step_<00000123>.pt`` files into its checkpoint
  folder (atomically) and keeps the last ``keep``; :func:`resume` picks up the newest one.
* Training metrics go to a JSON-lines log (one object per line) and a PNG loss curve (matplotlib Agg).
* :func:`photometric_augment` is the image augmentation of the image-based stages.
"""

from __future__ import annotations

import functools

import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from mvfr import distributed
from mvfr.atomic_io import atomic_path, remove_stale_temporaries

log = logging.getLogger(__name__)

_CKPT = re.compile(r"^step_(\d+)\.pt$")


# ---------------------------------------------------------------------------------------- device


def move_to(obj: Any, device: str | torch.device) -> Any:
    """Tensors inside (nested) lists, tuples and dicts moved to ``device``; other values unchanged."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: move_to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to(v, device) for v in obj)
    return obj


def plain_options(options: Any) -> dict[str, Any]:
    """An argparse Namespace or mapping as a dict of JSON-like values (what a checkpoint stores)."""
    d = dict(vars(options)) if not isinstance(options, Mapping) else dict(options)
    return json.loads(json.dumps(d, default=str))


# ----------------------------------------------------------------------------------- checkpoints


def checkpoint_path(folder: str | os.PathLike, step: int) -> Path:
    return Path(folder) / f"step_{int(step):08d}.pt"


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Checkpoints of a run folder, oldest step first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CKPT.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    step: int,
    epoch: int,
    options: Any,
    fmt: str,
) -> Path:
    """Write a plain-dict checkpoint atomically; returns the path."""
    path = Path(path)
    state = {
        "format": str(fmt),
        "step": int(step),
        "epoch": int(epoch),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": move_to(optimizer.state_dict(), "cpu") if optimizer is not None else None,
        "options": plain_options(options),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, of another stage, or does not fit the network; names the file."""


def cached_per_checkpoint(maxsize: int = 4):
    """Decorator: cache ``fn(checkpoint_path, *args)`` per process, per file version of the checkpoint
    (resolved path and modification time) and ``args``, so a stage run again in the same process (run_pipeline's
    in-process mode, a service) reuses its model, and a rewritten checkpoint is read again."""

    def wrap(fn):
        @functools.lru_cache(maxsize=maxsize)
        def cached(path: str, resolved: str, stamp: int, *args):
            return fn(path, *args)  # the path as given: errors name it so

        @functools.wraps(fn)
        def call(checkpoint, *args):
            p = Path(checkpoint)
            stamp = p.stat().st_mtime_ns if p.is_file() else 0  # a missing file: read_checkpoint says so
            return cached(str(checkpoint), str(p.resolve()), stamp, *args)

        call.cache_clear = cached.cache_clear
        return call

    return wrap


def warn_if_trained_otherwise(checkpoint: str | os.PathLike, trained: dict[str, Any], opt: Any,
                              keys: tuple[str, ...] = ("d_size", "interval_scale")) -> list[str]:
    """Log a warning for every option of ``keys`` whose value in ``opt`` differs from the one the
    checkpoint was trained with (``trained``, its stored options); returns those keys."""
    differ = [k for k in keys if k in trained and trained[k] != getattr(opt, k)]
    for k in differ:
        log.warning("%s was trained with --%s %s; running with %s", checkpoint, k, trained[k], getattr(opt, k))
    return differ


def read_checkpoint(path: str | os.PathLike, fmt: str | None = None) -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True`` (on CPU); ``fmt`` checks its ``format``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; train first or pass the right path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or not a plain-dict checkpoint
        raise CheckpointError(f"checkpoint {path} could not be loaded with weights_only=True: {exc}") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"checkpoint {path} is not a plain-dict checkpoint (no 'model' key)")
    if fmt is not None and ckpt.get("format") != fmt:
        raise CheckpointError(
            f"checkpoint {path} has format {ckpt.get('format')!r}, expected {fmt!r}: it belongs to another stage; "
            "pass this stage's checkpoint (see --help for the option and its default)"
        )
    return ckpt


def load_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    fmt: str | None = None,
) -> dict[str, Any]:
    """Load weights (``strict=True``) and, when given, the optimizer state; returns the checkpoint dict."""
    ckpt = read_checkpoint(path, fmt)
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(
            f"checkpoint {path} does not fit the network built from the options ({first[1].strip() if len(first) > 1 else first[0]}); "
            "run with the options it was trained with (they are stored in it) or retrain"
        ) from None
    if optimizer is not None and ckpt.get("optimizer") is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    return ckpt


def resume(
    folder: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, fmt: str | None = None
) -> tuple[int, int]:
    """Load the newest checkpoint of ``folder`` if any -> ``(step, epoch)`` to continue from ((0, 0) if none).

    Temporaries of a checkpoint write that was killed midway are deleted first. Under torchrun rank 0
    chooses the checkpoint and every rank loads that one (the folder must be on a disk every node sees).
    """
    chosen = None
    if distributed.is_main():
        for p in remove_stale_temporaries(folder):
            log.warning("removed %s, left by a run killed while writing a checkpoint", p)
        ckpts = list_checkpoints(folder)
        chosen = str(ckpts[-1]) if ckpts else None
    chosen = distributed.broadcast_object(chosen)
    if chosen is None:
        return 0, 0
    ckpt = load_checkpoint(chosen, model, optimizer, fmt)
    log.info("resumed from %s (step %d, epoch %d)", chosen, ckpt["step"], ckpt["epoch"])
    return int(ckpt["step"]), int(ckpt["epoch"])


def prune_checkpoints(folder: str | os.PathLike, keep: int = 3) -> None:
    """Delete all but the newest ``keep`` checkpoints of a run folder."""
    for p in list_checkpoints(folder)[: max(0, len(list_checkpoints(folder)) - keep)]:
        p.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ logs


class JsonlLogger:
    """Append one JSON object per line (``{"step": ..., "loss": ..., "time": ...}``), flushed each time.

    A training run passes ``resume_step``, the step it starts from (0 for a fresh run): records of
    later steps (logged by a run killed before its next checkpoint) and a truncated last line are
    dropped, so the log holds each step once; temporaries a killed run left in the folder are deleted.
    """

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            remove_stale_temporaries(self.path.parent)
            if self.path.is_file():
                kept = [r for r in read_jsonl(self.path) if r.get("step", 0) <= resume_step]
                with atomic_path(self.path) as tmp:
                    tmp.write_text("".join(json.dumps(r, default=float) + "\n" for r in kept))

    def log(self, **record: Any) -> None:
        record.setdefault("time", time.time())
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=float) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a JSON-lines log (a truncated last line, from an interrupted run, is skipped)."""
    out = []
    path = Path(path)
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def plot_loss_curve(records: Iterable[Mapping[str, Any]], png_path: str | os.PathLike, keys: Iterable[str] = ("loss",), title: str = "") -> None:
    """PNG curve of ``keys`` against ``step`` (raw and a moving average), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = list(records)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for key in keys:
        pts = [(r["step"], r[key]) for r in records if key in r and "step" in r and r[key] is not None and math.isfinite(r[key])]
        if not pts:
            continue
        s, v = np.array(pts, dtype=np.float64).T
        ax.plot(s, v, alpha=0.3, lw=0.8)
        k = max(1, len(v) // 50)
        if k > 1:
            sm = np.convolve(v, np.ones(k) / k, mode="valid")
            ax.plot(s[k - 1 :], sm, lw=1.5, label=f"{key} (avg {k})")
        else:
            ax.plot(s, v, lw=1.5, label=key)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


# ---------------------------------------------------------------------------------- augmentation


def photometric_augment(
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    brightness: float = 0.1,
    contrast: float = 0.2,
    colour_gain: float = 0.1,
) -> torch.Tensor:
    """Random photometric change of ``images [V, 3, H, W]`` in [0, 1]: one brightness shift and one
    contrast factor for the capture, and per-view colour gains (``1 +- colour_gain`` per channel).
    Returns a new tensor clamped to [0, 1]."""
    V = images.shape[0]
    dev, dt = images.device, images.dtype

    def u(*shape):
        return (torch.rand(*shape, generator=generator) * 2 - 1).to(device=dev, dtype=dt)

    b = u(1) * brightness
    c = 1.0 + u(1) * contrast
    g = 1.0 + u(V, 3, 1, 1) * colour_gain
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    out = ((images - mean) * c + mean + b) * g
    return out.clamp_(0.0, 1.0)
