"""Per-face evaluation of every stage's output against the ground-truth scan (DESIGN §6).

The glue between the DATA_FOLDER / RAW trees and the pure functions of :mod:`mvfr.metrics`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mvfr.datafolder import DataFolder, RawFolder
from mvfr.mesh_io import Mesh, read_mesh
from mvfr.metrics import STAGE_ORDER, facial_region_from_base, facial_region_from_uv, surface_metrics
from mvfr.uv_rasterizer import load_facial_mask

log = logging.getLogger(__name__)

REGION_MASK_SIZE = 256
REGION_MAX_DIST_MM = 25.0


def stage_outputs(folder: DataFolder, fid: str) -> dict[str, Path]:
    """The mesh each stage writes for ``fid`` (existing or not), in pipeline order."""
    return {
        "base": folder.fit_mesh(fid),
        "if": folder.if_mesh(fid),
        "reg": folder.reg_mesh(fid),
        "meso": folder.meso_mesh(fid),
    }


def gt_region(gt: Mesh, base: Mesh | None, mm_per_unit: float):
    """Facial region of the GT scan: by its template uvs when it has them, else through the base mesh."""
    mask = load_facial_mask(REGION_MASK_SIZE)
    if gt.uvs is not None:
        return facial_region_from_uv(gt, mask)
    if base is None:
        raise ValueError("the GT scan has no template uvs and no base mesh exists to crop the facial region; run gen_maps.py first")
    return facial_region_from_base(gt, base, mask, REGION_MAX_DIST_MM / mm_per_unit)


def evaluate_face(
    folder: DataFolder,
    raw: RawFolder,
    fid: str,
    stages: tuple[str, ...] = STAGE_ORDER,
    n_samples: int = 200_000,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """``{stage: {metric: value}}`` for every stage of ``stages`` whose output exists for ``fid``."""
    scan_path = raw.scan(fid)
    gt = read_mesh(scan_path)
    mm = folder.mm_per_unit(fid)
    outputs = {s: p for s, p in stage_outputs(folder, fid).items() if s in stages and p.is_file()}
    if not outputs:
        raise ValueError(f"face {fid} has no stage output to evaluate in {folder.root}; run the pipeline first")
    base = read_mesh(outputs["base"]) if "base" in outputs else None
    region = gt_region(gt, base, mm)
    result = {}
    for stage, path in outputs.items():
        pred = base if stage == "base" else read_mesh(path)
        result[stage] = surface_metrics(pred, gt, region, mm, n_samples=n_samples, seed=seed)
        log.info("%s %s: chamfer %.3f mm", fid, stage, result[stage]["chamfer_mm"])
    return result
