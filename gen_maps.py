"""Stage 1: landmarks -> robust triangulation -> base-model fit -> UV maps (and, for training, mv_map).

    python gen_maps.py --dataroot DATA --facescape_dataroot RAW --split train|eval

Per face ``PPP_EE`` it writes (DESIGN §4; lengths in capture units):
  landmarks/PPP_EE.json                 per-view 2D landmarks and scores, 3D landmarks, views used/outliers,
                                        reprojection errors (see mvfr.triangulation)
  fit_mesh/fit_mesh_PPP_EE.obj          base mesh: the base model (mvfr.face_model) fitted, with vt (template uv)
  maps/<split>/pos_map/pos_map_PPP_EE.npy     [S, S, 3] float32
  maps/<split>/norm_map/norm_map_PPP_EE.npy   [S, S, 3] float32 unit outward normals
  --split train only (reads the ground-truth scan RAW/mesh/...; --split eval never does):
  maps/train/mv_map/mv_map_PPP_EE.npy         [S, S] float32 signed distance to the scan along the normal
  maps/train/valid_map/valid_map_PPP_EE.npy   [S, S] bool (hit within --search_range_mm AND facial mask)
"""

from __future__ import annotations

import logging
import sys
import time

import numpy as np

from mvfr.atomic_io import save_npy, update_json
from mvfr.base_maps import base_maps, ground_truth_maps
from mvfr.capture import load_capture
from mvfr.datafolder import DataFolder, RawFolder, parse_face_id
from mvfr.fitting import mm_per_unit_from_fit, reconstruct_base_mesh
from mvfr.mesh_io import read_mesh, write_obj
from mvfr.runtime import start_stage
from mvfr.stage import run_faces, select_face_ids
from mvfr.face_model import load_face_model
from mvfr.triangulation import landmark_record, save_landmarks, triangulation_summary
from mvfr.landmarks import detect_upright, upright_quarter_turns
from mvfr.uv_rasterizer import build_uv_table, load_facial_mask

log = logging.getLogger("gen_maps")


SCALE_WARN_FRACTION = 0.3  # warn when a given scale and the base-model fit's estimate differ by more


def record_estimated_scale(folder: DataFolder, fid: str, mm_per_unit: float) -> None:
    """Write an estimated scale into DATA's Rt_scale_dict.json (merged, under a lock: torchrun ranks each
    add theirs), noted under ``"estimated"``."""
    pid, eid = parse_face_id(fid)

    def add(d: dict) -> dict:
        d.setdefault(str(pid), {})[str(eid)] = [float(mm_per_unit), np.eye(3, 4).tolist()]
        d.setdefault("estimated", {})[fid] = ("mm per unit estimated by gen_maps.py from the base-model fit "
                                              "(average face size, about +-10 %), not calibrated")
        return d

    update_json(folder.rt_scale_json, add, "Rt_scale_dict.json")


class MapMaker:
    """Everything loaded once per run (detector, base model, UV table of its topology)."""

    def __init__(self, opt, detector=None):
        self.opt = opt
        self.folder = DataFolder(opt.dataroot)
        self.raw = RawFolder(opt.facescape_dataroot)
        self.model = load_face_model()
        if detector is None:
            from mvfr.landmarks import FaceLandmarkDetector

            detector = FaceLandmarkDetector()
        self.detector = detector
        self.mask = load_facial_mask(opt.uv_size)
        self._table = None
        self.timings: dict[str, list[float]] = {}

    def table(self, mesh):
        """UV table of the base-mesh topology (the same for every face: built once)."""
        if self._table is None:
            self._table = build_uv_table(mesh.uvs, mesh.face_uvs, self.opt.uv_size)
        return self._table

    def outputs(self, fid: str) -> list:
        names = ["pos_map", "norm_map"] + (["mv_map", "valid_map"] if self.opt.split == "train" else [])
        return [self.folder.fit_mesh(fid), self.folder.landmarks(fid)] + [
            self.folder.map(self.opt.split, n, fid) for n in names
        ]

    def done(self, fid: str) -> bool:
        return all(p.is_file() for p in self.outputs(fid)) and self.folder.recorded_mm_per_unit(fid) is not None

    def _tick(self, key: str, t0: float) -> float:
        t = time.perf_counter()
        self.timings.setdefault(key, []).append(t - t0)
        return t

    def process(self, fid: str) -> dict:
        opt, folder = self.opt, self.folder
        t0 = time.perf_counter()
        recorded = folder.recorded_mm_per_unit(fid)
        cap = load_capture(folder, fid, max_views=opt.if_view_num, mm_per_unit=1.0 if recorded is None else recorded)
        t = self._tick("load", t0)
        lms, scores = [], []
        turns = upright_quarter_turns(cap.cameras)
        if any(turns):
            log.info("%s: views %s are rolled against the rig; detecting them turned upright",
                     fid, [v for v, k in zip(cap.views, turns) if k])
        for img, k in zip(cap.images, turns):
            lm, score = detect_upright(self.detector, img, k)
            lms.append(lm)
            scores.append(score)
        t = self._tick("detect", t)
        missing = [v for v, lm in zip(cap.views, lms) if lm is None]
        if len(cap.views) - len(missing) < 2:
            raise ValueError(
                f"face {fid}: only {len(cap.views) - len(missing)} of {len(cap.views)} views gave landmarks "
                f"(no face found in views {missing} of {folder.image_dir(fid)}); at least 2 are needed: "
                f"check that these photographs show the face, or mark the views invalid in params.json"
            )
        K, Rt = cap.stacked_cameras()
        sizes = [(c.width, c.height) for c in cap.cameras]
        n = self.model.num_landmarks
        lm2d = np.stack([np.full((n, 2), np.nan) if lm is None else lm for lm in lms])
        try:
            res = reconstruct_base_mesh(lm2d, np.asarray(scores), K, Rt, sizes, self.model)
            estimate = mm_per_unit_from_fit(res.fit)
            if recorded is None:
                log.warning("%s: no scale in %s: mm per unit ESTIMATED from the base-model fit (average face size, "
                            "about +-10 %%): %.6g; recorded there as estimated. Pass --mm_per_unit to "
                            "import_capture.py (or fill Rt_scale_dict.json) for a calibrated scale",
                            fid, folder.rt_scale_json, estimate)
                cap.mm_per_unit = estimate
                record_estimated_scale(folder, fid, estimate)
            elif abs(estimate / recorded - 1.0) > SCALE_WARN_FRACTION:
                log.warning("%s: the given scale %.6g mm per unit disagrees with the base-model fit's estimate %.6g "
                            "by %.0f %% (> %.0f %%); check Rt_scale_dict.json / --mm_per_unit", fid, recorded,
                            estimate, 100 * abs(estimate / recorded - 1.0), 100 * SCALE_WARN_FRACTION)
        except ValueError as exc:
            raise ValueError(f"face {fid}: {exc}") from None
        t = self._tick("fit", t)
        summary = triangulation_summary(res.triangulation)
        rec = landmark_record(fid, cap.views, lms, scores, res.triangulation, image_sizes=sizes,
                              extra={"first_pass_views": [cap.views[i] for i in res.first_pass_views],
                                     "fit_residual_mm": np.round(res.fit.landmark_residuals * cap.mm_per_unit, 4)
                                     .tolist()})
        rec["fit_residual_mm"] = [None if not np.isfinite(r) else r for r in rec["fit_residual_mm"]]
        save_landmarks(folder.landmarks(fid), rec)
        mesh = res.fit.mesh
        write_obj(folder.fit_mesh(fid), mesh)
        table = self.table(mesh)
        maps = base_maps(table, mesh, smooth_iters=opt.normal_smooth_iters)
        save_npy(folder.map(opt.split, "pos_map", fid), maps["pos_map"])
        save_npy(folder.map(opt.split, "norm_map", fid), maps["norm_map"])
        t = self._tick("maps", t)
        if opt.split == "train":
            gt = read_mesh(self.raw.scan(fid))
            mv, valid = ground_truth_maps(maps["pos_map"], maps["norm_map"], maps["covered"], self.mask, gt,
                                          opt.search_range_mm / cap.mm_per_unit)
            save_npy(folder.map(opt.split, "mv_map", fid), mv)
            save_npy(folder.map(opt.split, "valid_map", fid), valid)
            self._tick("gt", t)
            summary["valid_fraction_of_mask"] = float(valid.sum() / max(self.mask.sum(), 1))
        log.info("%s: %d/%d landmarks, %d outlier observations, reprojection median %.2f px",
                 fid, summary["num_ok"], summary["num_points"], summary["num_outlier_observations"],
                 summary["reproj_median_px"])
        return summary


def main(argv=None) -> int:
    from options import parse_options

    opt = parse_options("gen_maps", argv)
    folder = DataFolder(opt.dataroot)
    start_stage(opt, folder.options_file("gen_maps"))
    ids = select_face_ids(folder, opt)
    maker = MapMaker(opt)
    summary = run_faces(ids, maker.process, done=maker.done, overwrite=opt.overwrite, desc="gen_maps")
    return summary.exit_code()


if __name__ == "__main__":
    from mvfr.runtime import run_main

    sys.exit(run_main(main))
