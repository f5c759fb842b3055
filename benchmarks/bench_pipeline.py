"""Seconds per face through every inference stage, at the paper's setting, as a service would run it.

    python benchmarks/bench_pipeline.py                     # synthesises its faces into --work
    python benchmarks/bench_pipeline.py --raw RAW --ids 601_01 602_03

The paper's setting (DESIGN §7): 10 views of 1296 px (long side), S = 256, D = 201. Without
``--raw`` the benchmark synthesises ``--faces`` + 1 held-out faces (gen_synthetic.py, 11 views with
one invalid, a fresh seed) into ``--work``. It then runs the inference chain (preprocess_images,
gen_maps, eval_if, eval_reg, gen_tex, dpmap_main, dpmap2mesh) with the shipped checkpoints:

1. in one process (run_pipeline.py's in-process mode: models and per-topology tables loaded once,
   arrays handed between stages in memory, every DATA_FOLDER file still written): one warm-up face
   first (imports, model loading, oneDNN kernel creation), then each measured face on its own;
2. with ``--alone``, each stage as its own script (``run_pipeline.py --mode subprocess``, what a
   user running the scripts by hand pays: interpreter, imports and model loading every time).

It prints the per-stage seconds of each and one line

    RESULT s_per_face=<mean in-process seconds> peak_mb=<peak resident memory of the process> alone_s=<...>
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import run_pipeline  # noqa: E402

INFERENCE = ("preprocess_images", "dpmap2mesh")  # first and last stage of the inference chain


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def synthesise(raw: Path, faces: int, long_side: int, seed: int) -> list[str]:
    """``faces`` held-out faces (one per identity) at the paper's setting, through gen_synthetic.py."""
    if not (raw / "id.json").is_file():
        cmd = [sys.executable, str(ROOT / "gen_synthetic.py"), "--out", str(raw), "--num_ids", str(faces), "--num_exps", "1",
               "--num_views", "11", "--image_long_side", str(long_side), "--num_eval_ids", str(faces),
               "--first_id", "801", "--seed", str(seed)]
        print("+", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
    from mvfr.datafolder import RawFolder

    return RawFolder(raw).face_ids("eval")


def chain(raw: Path, data: Path, fid: str, mode: str, long_side: int, device: str) -> dict[str, float]:
    """Run the inference chain on one face -> seconds per stage (a stage that fails raises)."""
    opt = run_pipeline.parse_args(["--dataroot", str(data), "--facescape_dataroot", str(raw), "--split", "eval",
                                   "--from", INFERENCE[0], "--to", INFERENCE[1], "--mode", mode, "--overwrite",
                                   "--ids", fid, "--image_long_side", str(long_side), "--device", device])
    results = run_pipeline.run_stages(opt, Path(tempfile.mkdtemp(prefix="bench_pipeline_")))
    failed = [(name, rc) for name, rc, _ in results if rc != 0]
    if failed:
        raise SystemExit(f"face {fid}: stages failed: {failed}")
    return {name: seconds for name, _, seconds in results}


def table(title: str, runs: dict[str, dict[str, float]]) -> None:
    stages = next(iter(runs.values())).keys()
    print(f"\n{title}")
    print(f"{'stage':18s}" + "".join(f"{fid:>10s}" for fid in runs))
    for st in stages:
        print(f"{st:18s}" + "".join(f"{r[st]:10.1f}" for r in runs.values()))
    print(f"{'total':18s}" + "".join(f"{sum(r.values()):10.1f}" for r in runs.values()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--raw", default=None, help="RAW FaceScape-layout tree (default: synthesise one into --work)")
    p.add_argument("--ids", nargs="*", default=None, help="faces to measure (default: all but the first, the warm-up)")
    p.add_argument("--warmup", default=None, help="warm-up face (default: the first face of RAW)")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "bench_pipeline"), help="where faces and outputs go")
    p.add_argument("--faces", type=int, default=2, help="measured faces to synthesise (plus one warm-up face)")
    p.add_argument("--seed", type=int, default=1607, help="synthesis seed")
    p.add_argument("--image_long_side", type=int, default=1296)
    p.add_argument("--device", default="cpu")
    p.add_argument("--alone", action="store_true", help="also time each stage as its own script")
    a = p.parse_args()

    work = Path(a.work)
    raw = Path(a.raw) if a.raw else work / "raw"
    ids = synthesise(raw, a.faces + 1, a.image_long_side, a.seed) if not a.raw else None
    from mvfr.datafolder import RawFolder

    all_ids = ids or RawFolder(raw).face_ids("eval")
    warm = a.warmup or all_ids[0]
    measured = a.ids or [f for f in all_ids if f != warm]
    data = work / "data"
    subprocess.run([sys.executable, str(ROOT / "mkdirs.py"), "--dataroot", str(data)], cwd=ROOT, check=True)

    t0 = time.perf_counter()
    chain(raw, data, warm, "inprocess", a.image_long_side, a.device)
    print(f"\nwarm-up face {warm}: {time.perf_counter() - t0:.1f} s (imports, model loading, first kernels)")
    inproc = {fid: chain(raw, data, fid, "inprocess", a.image_long_side, a.device) for fid in measured}
    peak = peak_mb()
    table("in one process (seconds)", inproc)
    s_face = sum(sum(r.values()) for r in inproc.values()) / len(inproc)
    result = f"RESULT s_per_face={s_face:.1f} peak_mb={peak:.0f}"
    if a.alone:
        alone = {fid: chain(raw, data, fid, "subprocess", a.image_long_side, a.device) for fid in measured}
        table("each stage as its own script (seconds)", alone)
        result += f" alone_s={sum(sum(r.values()) for r in alone.values()) / len(alone):.1f}"
    print("\n" + result + " " + " ".join(f"{st}={sum(r[st] for r in inproc.values()) / len(inproc):.2f}"
                                         for st in next(iter(inproc.values()))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
