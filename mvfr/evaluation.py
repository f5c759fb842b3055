"""Per-face evaluation of every stage's output against the ground-truth scan (DESIGN §6).

The glue between the DATA_FOLDER / RAW trees and the pure functions of :mod:`mvfr.metrics`.

Facial region of the scan (the first that exists):

1. ``evaluate.py --scan_region FILE`` (``[V_scan] bool`` .npy, one entry per scan vertex; or a
   folder holding ``PPP_EE.npy`` per face);
2. ``RAW/region/<pid>/<k>_<exp>.npy`` (same content);
3. computed from the scan and the triangulated landmarks alone (``DATA/landmarks/PPP_EE.json``):
   the base model is fitted to the landmarks (:func:`landmark_surface`, the same fit as stage 1's,
   from the landmark file only) and the scan faces near it whose closest point falls in the
   template's facial mask form the region (:func:`mvfr.metrics.facial_region_from_surface`, within
   :data:`REGION_MAX_DIST_MM` and facing the same way within 60 deg, :data:`REGION_MIN_COS`).

Per-vertex regions become per-face ones by majority (:func:`mvfr.metrics.region_faces_from_vertices`).
Never the scan's own uvs, and never the IF, reg or meso surface. The fallback's reference surface is
the same landmark fit as stage 1's base fit (from the landmark file alone, without the visibility
iteration of :func:`mvfr.fitting.reconstruct_base_mesh`), so with a computed region the base stage is
scored inside a region drawn around (nearly) its own surface; RAW/region or ``--scan_region`` avoid that. The scan is re-wound so that
the cameras of the capture see its front sides (:func:`mvfr.metrics.orient_towards_cameras`): a
flipped or inconsistently wound scan scores like the correct one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mvfr.camera import camera_center, read_params
from mvfr.datafolder import DataError, DataFolder, RawFolder, read_json
from mvfr.face_model import load_face_model
from mvfr.fitting import fit_face_model
from mvfr.mesh_io import Mesh, read_mesh
from mvfr.metrics import (
    STAGE_ORDER,
    ScanIndex,
    facial_region_from_surface,
    orient_towards_cameras,
    region_faces_from_vertices,
    surface_metrics,
)
from mvfr.uv_rasterizer import load_facial_mask

log = logging.getLogger(__name__)

REGION_MASK_SIZE = 256
REGION_MAX_DIST_MM = 10.0  # fallback region: scan faces at most this far from the landmark surface
REGION_MIN_COS = 0.5  # fallback region: and facing the same way as it (within 60 deg)


def stage_outputs(folder: DataFolder, fid: str) -> dict[str, Path]:
    """The mesh each stage writes for ``fid`` (existing or not), in pipeline order."""
    return {
        "base": folder.fit_mesh(fid),
        "if": folder.if_mesh(fid),
        "reg": folder.reg_mesh(fid),
        "meso": folder.meso_mesh(fid),
    }


def read_vertex_region(path: str | Path, num_vertices: int) -> np.ndarray:
    """A per-vertex region file -> ``[V] bool``; errors name the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"scan region {path} does not exist")
    region = np.load(path, allow_pickle=False)
    if region.ndim != 1 or len(region) != num_vertices:
        raise DataError(f"scan region {path} has shape {region.shape}, expected [{num_vertices}] (one entry per scan vertex)")
    if region.dtype != bool:
        if not np.isin(region, (0, 1)).all():
            raise DataError(f"scan region {path} must be bool (or 0/1), got values of dtype {region.dtype}")
        region = region.astype(bool)
    return region


def landmark_points(folder: DataFolder, fid: str) -> tuple[np.ndarray, np.ndarray]:
    """Triangulated 3D landmarks of ``DATA/landmarks/PPP_EE.json`` -> ``points [N, 3]`` (NaN where
    triangulation failed), ``weights [N]`` (its confidence, 0 where failed)."""
    rec = read_json(folder.landmarks(fid), "landmark file")
    if "points3d" not in rec:
        raise DataError(f"{folder.landmarks(fid)} has no triangulated points3d; run gen_maps.py first")
    pts = np.asarray([[np.nan] * 3 if p is None else p for p in rec["points3d"]], dtype=np.float64)
    ok = np.isfinite(pts).all(axis=1) & np.asarray(rec.get("ok", [True] * len(pts)), dtype=bool)
    weights = np.asarray(rec.get("confidence", np.ones(len(pts))), dtype=np.float64)
    return pts, np.where(ok, np.nan_to_num(weights), 0.0)


def landmark_surface(points: np.ndarray, weights: np.ndarray) -> Mesh:
    """The base model fitted to triangulated landmarks alone (:func:`mvfr.fitting.fit_face_model`, the
    template's uvs): the reference surface of the fallback region (capture units)."""
    if (weights > 0).sum() < 10:
        raise DataError(f"only {(weights > 0).sum()} landmarks were triangulated; the facial region needs more")
    return fit_face_model(points, weights, load_face_model()).mesh


def region_source(folder: DataFolder, raw: RawFolder, fid: str, scan_region: str | None = None) -> Path | None:
    """The per-vertex region file of ``fid`` (``--scan_region`` file or folder, else RAW/region), or None."""
    if scan_region:
        p = Path(scan_region)
        if p.is_dir():
            p = p / f"{fid}.npy"
        if not p.is_file():
            raise DataError(f"--scan_region {scan_region}: {p} does not exist")
        return p
    p = raw.region(fid)
    return p if p.is_file() else None


def gt_region(
    gt: Mesh, folder: DataFolder, raw: RawFolder, fid: str, mm_per_unit: float, scan_region: str | None = None
) -> tuple[np.ndarray, str]:
    """Facial region ``[F_gt] bool`` of the scan and where it came from (module docstring).
    ``gt`` must be wound outwards (:func:`oriented_scan`) for the fallback's normal test."""
    path = region_source(folder, raw, fid, scan_region)
    if path is not None:
        return region_faces_from_vertices(gt.faces, read_vertex_region(path, len(gt.vertices))), str(path)
    if not folder.landmarks(fid).is_file():
        raise DataError(
            f"face {fid}: no scan region ({raw.region(fid)} or --scan_region) and no triangulated landmarks "
            f"({folder.landmarks(fid)}); run gen_maps.py or give --scan_region"
        )
    surface = landmark_surface(*landmark_points(folder, fid))
    region = facial_region_from_surface(gt, surface, load_facial_mask(REGION_MASK_SIZE), REGION_MAX_DIST_MM / mm_per_unit,
                                        REGION_MIN_COS)
    return region, f"landmarks ({folder.landmarks(fid)})"


def camera_centres(folder: DataFolder, raw: RawFolder, fid: str) -> np.ndarray:
    """Centres ``[V, 3]`` (capture units) of the capture's valid cameras: the processed params.json,
    else RAW's; empty when neither exists."""
    for path in (folder.params(fid), raw.params(fid)):
        if path.is_file():
            cams = read_params(path, where=f"params.json of {fid} ({path})")
            centres = [camera_center(c.Rt) for c in cams.values() if c.valid]
            return np.asarray(centres, dtype=np.float64).reshape(-1, 3)
    return np.zeros((0, 3))


def oriented_scan(gt: Mesh | ScanIndex, centres: np.ndarray, fid: str) -> ScanIndex:
    """The scan wound to face the cameras (:func:`mvfr.metrics.orient_towards_cameras`), as the
    :class:`~mvfr.metrics.ScanIndex` every stage is scored against; logs flips."""
    scan = gt if isinstance(gt, ScanIndex) else ScanIndex(gt.vertices, gt.faces)
    if len(centres) == 0:
        log.warning("%s: no cameras found; the scan's winding is taken as it is", fid)
        return scan
    faces, flipped = orient_towards_cameras(scan.vertices, scan.faces, centres, scan=scan)
    if not flipped:
        return scan
    log.warning("%s: %d of %d scan faces were wound away from the cameras; re-wound before scoring", fid, flipped, len(faces))
    return scan.rewound(faces)


def evaluate_face(
    folder: DataFolder,
    raw: RawFolder,
    fid: str,
    stages: tuple[str, ...] = STAGE_ORDER,
    n_samples: int = 200_000,
    seed: int = 0,
    scan_region: str | None = None,
) -> dict[str, dict[str, float]]:
    """``{stage: {metric: value}}`` for every stage of ``stages`` whose output exists for ``fid``.

    The scan is read once and prepared once (:class:`~mvfr.metrics.ScanIndex`: its closest-point tree,
    normals, open edge and region samples) for every stage scored against it."""
    outputs = {s: p for s, p in stage_outputs(folder, fid).items() if s in stages and p.is_file()}
    if not outputs:
        raise ValueError(f"face {fid} has no stage output to evaluate in {folder.root}; run the pipeline first")
    gt = read_mesh(raw.scan(fid))
    mm = folder.mm_per_unit(fid)
    scan = oriented_scan(gt, camera_centres(folder, raw, fid), fid)
    region, source = gt_region(Mesh(scan.vertices, scan.faces), folder, raw, fid, mm, scan_region)
    log.info("%s: facial region %d of %d scan faces, from %s", fid, int(region.sum()), len(region), source)
    result = {}
    for stage, path in outputs.items():
        result[stage] = surface_metrics(read_mesh(path), scan, region, mm, n_samples=n_samples, seed=seed)
        log.info("%s %s: chamfer %.3f mm", fid, stage, result[stage]["chamfer_mm"])
    return result


def evaluation_inputs(folder: DataFolder, raw: RawFolder, fid: str, scan_region: str | None = None) -> list[Path]:
    """The files the metrics of ``fid`` are computed from: the stages' outputs that exist, the scan,
    its region file (a per-face result older than any of them is stale)."""
    paths = [p for p in stage_outputs(folder, fid).values() if p.is_file()] + [raw.scan(fid)]
    try:
        region = region_source(folder, raw, fid, scan_region)
    except DataError:
        region = None
    return [p for p in paths + ([region] if region else []) if p.is_file()]
