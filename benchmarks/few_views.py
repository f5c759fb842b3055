"""Accuracy against the number of views: the whole eval chain on k adjacent valid views of each capture.

    python benchmarks/few_views.py --raw HO/raw --data HO/data --views 10 3 2 [--image_long_side 1296] [--ids ...]

For every k it builds the DATA tree ``<data>_v<k>`` (images preprocessed once, in ``<data>_v<max k>``,
and linked into the others), whose ``select_dict.json`` holds, per face, k adjacent valid views:
the most frontal valid view (optical axis closest to the mean axis of the capture's valid views)
and its k - 1 nearest valid views by camera centre. Then ``run_pipeline.py --from gen_maps`` (the
shipped checkpoints unless ``--pipeline_args`` says otherwise) and ``evaluate.py``. Prints, per k,
the per-face chamfer of every stage and ``RESULT views=k base=... if=... reg=... meso=...
reg_below_base_all=...``; the same figures go to ``<data>_v<k>/eval/metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mvfr.camera import camera_center, read_params  # noqa: E402
from mvfr.datafolder import DataFolder  # noqa: E402


def adjacent_views(params_json: Path, candidates: list[str], k: int) -> list[str]:
    """``k`` adjacent valid views among ``candidates`` (a capture's select_dict views, in order): the most
    frontal one and its k - 1 nearest by camera centre, in select_dict order."""
    cams = read_params(params_json, where=str(params_json))
    valid = [v for v in candidates if v in cams and cams[v].valid]
    if len(valid) < k:
        raise ValueError(f"{params_json}: {len(valid)} valid views, {k} asked for")
    centres = np.stack([camera_center(cams[v].Rt) for v in valid])
    axes = np.stack([cams[v].Rt[2, :3] for v in valid])  # optical axis in world coordinates (third row of R)
    mean_axis = axes.mean(0)
    mean_axis /= np.linalg.norm(mean_axis)
    front = int(np.argmax(axes @ mean_axis))
    order = np.argsort(np.linalg.norm(centres - centres[front], axis=1), kind="stable")[:k]
    chosen = {valid[i] for i in order}
    return [v for v in valid if v in chosen]


def run(argv: list[str]) -> None:
    print("$", " ".join(argv), flush=True)
    subprocess.run(argv, check=True, cwd=ROOT)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--raw", required=True, help="RAW tree of the held-out captures")
    p.add_argument("--data", required=True, help="prefix of the DATA trees: <data>_v<k>")
    p.add_argument("--views", type=int, nargs="+", default=[10, 3, 2], help="view counts to run")
    p.add_argument("--image_long_side", type=int, default=1296)
    p.add_argument("--ids", nargs="*", default=None)
    p.add_argument("--pipeline_args", nargs=argparse.REMAINDER, default=[],
                   help="passed to run_pipeline.py (last on the command line)")
    opt = p.parse_args()
    py = sys.executable
    views = sorted(set(opt.views), reverse=True)
    first = Path(f"{opt.data}_v{views[0]}")
    ids = ["--ids", *opt.ids] if opt.ids else []
    run([py, "mkdirs.py", "--dataroot", str(first)])
    run([py, "preprocess_images.py", "--facescape_dataroot", opt.raw, "--dataroot", str(first),
         "--image_long_side", str(opt.image_long_side), "--split", "eval", "--if_view_num", "16", *ids])
    select = json.loads((first / "select_dict.json").read_text())
    folder0 = DataFolder(first)
    results = {}
    for k in views:
        dk = Path(f"{opt.data}_v{k}")
        if dk != first:
            run([py, "mkdirs.py", "--dataroot", str(dk)])
            for name in ("id.json", "Rt_scale_dict.json"):
                shutil.copyfile(first / name, dk / name)
            if not (dk / "images").is_symlink():
                shutil.rmtree(dk / "images", ignore_errors=True)
                os.symlink(os.path.relpath(first / "images", dk), dk / "images")
        sel = {}
        for pid, exps in select.items():
            for eid, vs in exps.items():
                fid = f"{int(pid):03d}_{int(eid):02d}"
                if opt.ids and fid not in opt.ids:
                    continue
                sel.setdefault(pid, {})[eid] = adjacent_views(folder0.params(fid), [str(v) for v in vs], k)
        (dk / "select_dict.json").write_text(json.dumps(sel, indent=1))
        run([py, "run_pipeline.py", "--dataroot", str(dk), "--facescape_dataroot", opt.raw, "--split", "eval",
             "--from", "gen_maps", "--to", "evaluate", *ids, *opt.pipeline_args])
        results[k] = json.loads((dk / "eval" / "metrics.json").read_text())
    for k in views:
        faces = results[k]["faces"]
        print(f"\n{k} views: chamfer (mm) per face")
        stages = ("base", "if", "reg", "meso")
        print("face     " + "".join(f"{s:>9s}" for s in stages))
        below = []
        for fid, m in sorted(faces.items()):
            print(f"{fid:9s}" + "".join(f"{m[s]['chamfer_mm']:9.3f}" if s in m else f"{'-':>9s}" for s in stages))
            if "reg" in m and "base" in m:
                below.append(m["reg"]["chamfer_mm"] < m["base"]["chamfer_mm"])
        mean = results[k]["mean"]
        figs = " ".join(f"{s}={mean[s]['chamfer_mm']:.3f}" for s in stages if s in mean)
        print(f"RESULT views={k} {figs} reg_below_base_all={bool(below) and all(below)} faces={len(faces)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
