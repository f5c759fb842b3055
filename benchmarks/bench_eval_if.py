"""Speed of the implicit-function search: coarse-to-fine versus exhaustive, same face, same run.

    python benchmarks/bench_eval_if.py                       # makes one synthetic face at the paper's setting
    python benchmarks/bench_eval_if.py --dataroot DATA --face 001_01 --split eval

The paper's setting (DESIGN §7): 10 views of 1296 x 864, S = 256, D = 201. Without ``--dataroot`` the
benchmark writes one synthetic face with the project's own scripts (gen_synthetic.py,
preprocess_images.py, gen_maps.py) into ``--work``. It loads the face once, computes the features
once per search, runs ``--search full`` and ``c2f`` (``--repeat`` times each, the fastest run counts),
and prints seconds per face for both, where the
time goes (features, sampling = projection + bilinear gather, mlp = aggregation + MLP), the argmax
agreement (|c2f - full| <= 1 step) over the searched texels, peak resident memory, and one line

    RESULT speedup=<x> agreement=<fraction> full_s=<s> c2f_s=<s> peak_mb=<MB>
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from eval_if import chunk_size, load_model, run_face  # noqa: E402
from mvfr.datafolder import DataFolder  # noqa: E402
from mvfr.mvs.face_inputs import load_face_inputs  # noqa: E402
from mvfr.mvs.search import SearchPlan  # noqa: E402
from mvfr.runtime import keep_freed_memory  # noqa: E402


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def make_face(work: Path, uv_size: int, long_side: int, views: int, seed: int) -> tuple[Path, str]:
    """One synthetic face at the requested setting, through the project's scripts."""
    raw, data = work / "raw", work / "data"
    py = sys.executable
    if not (data / "id.json").is_file() or not any((data / "maps").rglob("pos_map_*.npy")):
        steps = [
            [py, "gen_synthetic.py", "--out", str(raw), "--num_ids", "1", "--num_exps", "1", "--num_views", str(views),
             "--image_long_side", str(long_side), "--num_eval_ids", "1", "--seed", str(seed), "--num_invalid_views", "0"],
            [py, "mkdirs.py", "--dataroot", str(data)],
            [py, "preprocess_images.py", "--facescape_dataroot", str(raw), "--dataroot", str(data),
             "--image_long_side", str(long_side), "--if_view_num", str(views), "--split", "eval"],
            [py, "gen_maps.py", "--facescape_dataroot", str(raw), "--dataroot", str(data), "--uv_size", str(uv_size), "--split", "eval"],
        ]
        for cmd in steps:
            print("+", " ".join(cmd[1:]), flush=True)
            subprocess.run(cmd, cwd=ROOT, check=True)
    fid = DataFolder(data).face_ids("eval")[0]
    return data, fid


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataroot", default=None, help="existing DATA_FOLDER (default: make one synthetic face in --work)")
    p.add_argument("--face", default=None, help="face id PPP_EE (default: the first of --split)")
    p.add_argument("--split", default="eval", choices=("train", "eval"))
    p.add_argument("--work", default="/tmp/bench_eval_if", help="folder for the synthetic face")
    p.add_argument("--checkpoint", default=str(ROOT / "predefine_data" / "checkpoint_if.pt"))
    p.add_argument("--uv_size", type=int, default=256)
    p.add_argument("--image_long_side", type=int, default=1296)
    p.add_argument("--views", type=int, default=10)
    p.add_argument("--d_size", type=int, default=201)
    p.add_argument("--interval_scale", type=float, default=0.2, help="mm")
    p.add_argument("--num_sample", type=int, default=0, help="points per chunk (as eval_if.py: 0 = by device)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--c2f_strides", type=int, nargs="+", default=None, help="as eval_if.py (default 24 6 2 1)")
    p.add_argument("--c2f_peaks", type=int, default=1, help="as eval_if.py")
    p.add_argument("--c2f_lattice", type=int, default=2, help="as eval_if.py")
    p.add_argument("--c2f_window", type=int, default=2, help="as eval_if.py")
    p.add_argument("--c2f_rounds", type=int, default=6, help="as eval_if.py")
    p.add_argument("--c2f_radius", type=int, default=2, help="as eval_if.py")
    p.add_argument("--repeat", type=int, default=2, help="runs of each search; the fastest counts (timing noise)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    a = p.parse_args()
    keep_freed_memory()  # as every stage does (mvfr.runtime.start_stage)
    if a.threads > 0:
        torch.set_num_threads(a.threads)

    if a.dataroot:
        data, fid = Path(a.dataroot), a.face or DataFolder(a.dataroot).face_ids(a.split)[0]
    else:
        data, fid = make_face(Path(a.work), a.uv_size, a.image_long_side, a.views, a.seed)
        a.split = "eval"
    folder = DataFolder(data)
    t0 = time.perf_counter()
    face = load_face_inputs(folder, a.split, fid, a.d_size, a.interval_scale, with_gt=False)
    load_s = time.perf_counter() - t0
    V, H, W, _ = face.images.shape
    print(f"face {fid}: {V} views, crops {W} x {H} px, S = {face.setup.size}, D = {a.d_size}, "
          f"{face.setup.num_texels} searched texels; loading + visibility {load_s:.1f} s; threads {torch.get_num_threads()}")
    model, _ = load_model(a.checkpoint, a.device)
    low = None if a.precision == "auto" else a.precision == "bf16"

    res = {}
    for mode in ("full", "c2f"):
        a.search = mode
        runs = [run_face(model, face, SearchPlan.from_options(a), chunk_size(a.num_sample, a.device), a.device, low)
                for _ in range(a.repeat)]
        out = min(runs, key=lambda r: r["features_s"] + r["search_s"])  # the least disturbed of the repeats
        t = out["timings"]
        total = out["features_s"] + out["search_s"]
        other = out["search_s"] - t["sampling"] - t["mlp"]
        print(f"{mode:>4}: {total:7.1f} s/face = features {out['features_s']:.1f} + sampling {t['sampling']:.1f} "
              f"+ mlp {t['mlp']:.1f} + other {other:.1f};  {t['points'] / 1e6:.2f} M points "
              f"({t['points'] / face.setup.num_texels:.1f} per texel), peak RSS so far {peak_mb():.0f} MB", flush=True)
        res[mode] = (total, out)
    am_full = np.argmax(res["full"][1]["volume"][:, face.mask], 0)
    am_c2f = np.argmax(res["c2f"][1]["volume"][:, face.mask], 0)
    agreement = float(np.mean(np.abs(am_full - am_c2f) <= 1))
    exact = float(np.mean(am_full == am_c2f))
    speedup = res["full"][0] / res["c2f"][0]
    print(f"argmax agreement within 1 step: {agreement:.4f} (exact {exact:.4f}) over {face.mask.sum()} texels")
    print(f"RESULT speedup={speedup:.2f} agreement={agreement:.4f} full_s={res['full'][0]:.1f} "
          f"c2f_s={res['c2f'][0]:.1f} peak_mb={peak_mb():.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
