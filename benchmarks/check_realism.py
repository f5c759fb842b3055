"""Realism check of the synthetic data: does the project's landmark detector see the faces, and where?

    python benchmarks/check_realism.py [--seed 2024] [--num_ids 10] [--num_exps 2] [--figure docs/synthetic_landmarks.jpg]

Generates a fresh dataset (10 views, 1296 px), preprocesses it, runs the MediaPipe FaceLandmarker
(:class:`mvfr.landmarks.FaceLandmarkDetector`) on every valid processed view and compares its 468
landmarks with the ground-truth 3D landmarks projected by the processed cameras. Targets (issue [I]):
detection in >= 98% of views with |yaw| <= 45 deg; median landmark error <= 2% of the inter-ocular distance
(outer eye corners, in the image). Prints a RESULT line; writes a figure of two views with the
detected (green) and ground-truth (red) landmarks.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mvfr.atomic_io import load_image, save_image  # noqa: E402
from mvfr.camera import camera_center, project_points, read_params  # noqa: E402
from mvfr.datafolder import DataFolder, RawFolder  # noqa: E402
from mvfr.landmarks import FaceLandmarkDetector, inter_ocular_distance  # noqa: E402
from mvfr.synthesis.rig import FACE_TARGET_MM  # noqa: E402


def yaw_of(cam, mm_per_unit: float, Rt_scale: np.ndarray) -> float:
    """Yaw (deg) of a camera around the head, from the capture's Rt_scale (head frame: face along +z)."""
    c = mm_per_unit * (Rt_scale[:, :3] @ camera_center(cam.Rt) + Rt_scale[:, 3]) - FACE_TARGET_MM
    return float(np.degrees(np.arctan2(c[0], c[2])))


def draw(img: np.ndarray, det: np.ndarray | None, gt: np.ndarray) -> np.ndarray:
    import cv2

    out = img.copy()
    r = max(1, round(max(img.shape) / 500))
    for x, y in gt:
        cv2.circle(out, (round(x), round(y)), r, (255, 40, 40), -1, cv2.LINE_AA)
    if det is not None:
        for x, y in det:
            cv2.circle(out, (round(x), round(y)), r, (40, 255, 40), -1, cv2.LINE_AA)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--num_ids", type=int, default=10)
    p.add_argument("--num_exps", type=int, default=2)
    p.add_argument("--num_views", type=int, default=10)
    p.add_argument("--image_long_side", type=int, default=1296)
    p.add_argument("--max_yaw", type=float, default=45.0)
    p.add_argument("--work", type=str, default=None, help="folder for RAW and DATA (default: a temporary one)")
    p.add_argument("--figure", type=str, default="docs/synthetic_landmarks.jpg")
    a = p.parse_args()

    import gen_synthetic
    import preprocess_images

    tmp = tempfile.TemporaryDirectory() if a.work is None else None
    work = Path(a.work or tmp.name)
    raw, data = RawFolder(work / "raw"), DataFolder(work / "data")
    t0 = time.perf_counter()
    gen_synthetic.main(["--out", str(raw.root), "--num_ids", str(a.num_ids), "--num_exps", str(a.num_exps),
                        "--num_views", str(a.num_views), "--image_long_side", str(a.image_long_side), "--seed", str(a.seed)])
    preprocess_images.main(["--facescape_dataroot", str(raw.root), "--dataroot", str(data.root),
                            "--image_long_side", str(a.image_long_side), "--log_level", "WARNING"])
    print(f"generated and preprocessed in {time.perf_counter() - t0:.1f} s")

    rts = json.loads(raw.rt_scale_json.read_text())
    ids = data.face_ids("train") + data.face_ids("eval")
    rows = []
    examples = []
    with FaceLandmarkDetector() as det:
        for fid in ids:
            pid, eid = int(fid[:3]), int(fid[4:])
            s, Rt_s = rts[str(pid)][str(eid)]
            Rt_s = np.asarray(Rt_s)
            gt3 = np.load(raw.landmarks3d(fid))
            for v, cam in read_params(data.params(fid)).items():
                img = load_image(data.image(fid, v))
                lm, score = det.detect(img)
                gt, _ = project_points(gt3, cam.K, cam.Rt)
                iod = inter_ocular_distance(gt)
                err = None if lm is None else np.linalg.norm(lm - gt, axis=1) / iod
                yaw = yaw_of(cam, s, Rt_s)
                rows.append({"fid": fid, "view": v, "yaw": yaw, "found": lm is not None,
                             "median_err_iod": None if err is None else float(np.median(err)),
                             "bias_px": None if lm is None else (lm - gt).mean(0).tolist()})
                if lm is not None and len(examples) < 2 and (
                        (not examples and abs(yaw) < 15) or (examples and 25 < abs(yaw) <= a.max_yaw and examples[0][0] != fid)):
                    examples.append((fid, draw(img, lm, gt)))
    near = [r for r in rows if abs(r["yaw"]) <= a.max_yaw]
    rate = np.mean([r["found"] for r in near])
    errs = [r["median_err_iod"] for r in near if r["found"]]
    med = float(np.median(errs)) if errs else float("nan")
    rate_all = np.mean([r["found"] for r in rows])
    errs_all = [r["median_err_iod"] for r in rows if r["found"]]
    for r in rows:
        e = "   --" if r["median_err_iod"] is None else f"{100 * r['median_err_iod']:5.2f}%"
        print(f"{r['fid']} view {r['view']:>2} yaw {r['yaw']:+6.1f}  found {int(r['found'])}  median err {e}")
    bias = np.mean([r["bias_px"] for r in near if r["found"]], axis=0)
    print(f"mean landmark offset (detected - ground truth), |yaw|<={a.max_yaw:g}: {bias.round(2).tolist()} px")
    if examples:
        import cv2

        h = min(e[1].shape[0] for e in examples)
        tiles = [cv2.resize(e[1], (round(e[1].shape[1] * h / e[1].shape[0]), h), interpolation=cv2.INTER_AREA) for e in examples]
        fig = np.concatenate(tiles, 1)
        scale = 900 / fig.shape[0]
        fig = cv2.resize(fig, (round(fig.shape[1] * scale), 900), interpolation=cv2.INTER_AREA)
        save_image(a.figure, fig)
        print(f"figure: {a.figure} ({', '.join(e[0] for e in examples)})")
    ok = rate >= 0.98 and med <= 0.02
    print(f"RESULT check_realism seed={a.seed} faces={len(ids)} views_yaw<={a.max_yaw:g}={len(near)} "
          f"detection_rate={rate:.3f} median_err_iod={med:.4f} all_views={len(rows)} detection_rate_all={rate_all:.3f} "
          f"median_err_iod_all={float(np.median(errs_all)) if errs_all else float('nan'):.4f} {'PASS' if ok else 'FAIL'}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
