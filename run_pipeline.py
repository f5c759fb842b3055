"""Every stage in order on one DATA_FOLDER.

    python run_pipeline.py --dataroot DATA --facescape_dataroot RAW --split eval [--from gen_maps] [--to eval_reg]
    python run_pipeline.py --demo            # what `make demo` runs

Each stage is its own script, called with exactly the arguments a user would type by hand. By
default (``--mode inprocess``) every stage runs in this one process: Python and torch are imported
once, and arrays written by one stage (maps, volumes, decoded images) are handed to the next from
memory (:func:`mvfr.atomic_io.keep_in_memory`) while every file of the DATA_FOLDER is still
written. ``--mode subprocess`` runs each stage as its own process instead. A rerun skips the faces
a stage has finished. At the end a summary lists, per stage, the faces done, skipped and failed
(with the reason). ``--demo`` synthesises a small held-out capture set, runs the eval pipeline with
the shipped checkpoints, evaluates, writes the report and prints the per-stage table.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent

# name -> (script, splits it runs for, extra arguments)
EVAL_STAGES = [
    ("preprocess_images", "preprocess_images.py", []),
    ("gen_maps", "gen_maps.py", []),
    ("eval_if", "eval_if.py", []),
    ("eval_reg", "eval_reg.py", []),
    ("gen_tex", "gen_tex.py", []),
    ("dpmap_main", "dpmap_pred/main.py", []),
    ("dpmap2mesh", "dpmap_pred/dpmap2mesh.py", []),
    ("evaluate", "evaluate.py", []),
    ("report", "make_report.py", []),
]
TRAIN_STAGES = [
    ("preprocess_images", "preprocess_images.py", []),
    ("gen_maps", "gen_maps.py", []),
    ("train_if", "train_if.py", []),
    ("eval_if", "eval_if.py", []),
    ("train_reg", "train_reg.py", []),
    ("eval_reg", "eval_reg.py", []),
    ("gen_tex", "gen_tex.py", []),
    ("dpmap_train", "dpmap_pred/train.py", []),
]
DEMO_SYNTHETIC = ["--num_ids", "3", "--num_exps", "1", "--num_views", "11", "--num_eval_ids", "3", "--first_id", "901",
                  "--seed", "2026"]  # rendered at the resolution the shipped IF checkpoint was trained at


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataroot", default="data", help="DATA_FOLDER")
    p.add_argument("--facescape_dataroot", default="raw", help="RAW FaceScape-layout tree")
    p.add_argument("--split", choices=("train", "eval"), default="eval", help="eval: inference chain; train: training chain")
    p.add_argument("--from", dest="start", default=None, help="first stage to run (a stage name)")
    p.add_argument("--to", dest="stop", default=None, help="last stage to run (a stage name)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="compute device of every stage")
    p.add_argument("--mode", choices=("inprocess", "subprocess"), default="inprocess",
                   help="inprocess: every stage in this process, arrays passed in memory; subprocess: a process per stage")
    p.add_argument("--image_long_side", type=int, default=None,
                   help="long side of the processed images, in pixels (default: the resolution the shipped IF "
                        "checkpoint was trained at, stored in it)")
    p.add_argument("--overwrite", action="store_true", help="recompute outputs that exist")
    p.add_argument("--ids", nargs="*", default=None, help="only these face ids (PPP_EE)")
    p.add_argument("--stage_args", default=None,
                   help="JSON file mapping stage names to extra arguments, e.g. {\"eval_if\": [\"--c2f_lattice\", \"1\"]}")
    p.add_argument("--demo", action="store_true", help="synthesise demo_data/raw, run the eval chain into demo_data/data")
    p.add_argument("--demo_dir", default="demo_data", help="where --demo writes")
    opt = p.parse_args(argv)
    opt.extra_args = read_stage_args(opt.stage_args)
    return opt


SHIPPED_IF_CHECKPOINT = ROOT / "predefine_data" / "checkpoint_if.pt"
FALLBACK_IMAGE_LONG_SIDE = 1296  # the paper's setting, when no checkpoint says otherwise


def checkpoint_image_long_side(path: Path = SHIPPED_IF_CHECKPOINT) -> int:
    """The processed-image long side (pixels) an IF checkpoint was trained at (its stored
    ``options["image_long_side"]``, measured by train_if.py); the paper's 1296 without one."""
    try:
        import torch

        return int(torch.load(path, map_location="cpu", weights_only=True)["options"]["image_long_side"])
    except (OSError, KeyError, TypeError, ValueError, RuntimeError):
        return FALLBACK_IMAGE_LONG_SIDE


def read_stage_args(path: str | None) -> dict[str, list[str]]:
    """``--stage_args`` FILE -> {stage name: [arguments]}; a bad file or unknown stage exits naming it."""
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"error: --stage_args {path} could not be read as JSON ({exc})") from None
    names = {s[0] for s in EVAL_STAGES + TRAIN_STAGES}
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise SystemExit(f"error: --stage_args {path} must map stage names to lists of arguments")
    unknown = sorted(set(data) - names)
    if unknown:
        raise SystemExit(f"error: --stage_args {path} names unknown stages {unknown}; the stages are {sorted(names)}")
    return data


OPTION_STAGE = {"report": "make_report"}  # pipeline stage name -> its name in options.STAGES


def select_stages(stages, start, stop):
    names = [s[0] for s in stages]
    for n in (start, stop):
        if n is not None and n not in names:
            raise SystemExit(f"unknown stage {n!r}; the stages are: {', '.join(names)}")
    i = names.index(start) if start else 0
    j = names.index(stop) + 1 if stop else len(names)
    return stages[i:j]


def stage_argv(name: str, script: str, extra: list[str], opt: argparse.Namespace) -> list[str]:
    """The stage's command-line arguments (without the interpreter and script)."""
    from options import read_by

    argv = ["--dataroot", opt.dataroot, "--facescape_dataroot", opt.facescape_dataroot, "--split", opt.split,
            "--device", opt.device, "--image_long_side", str(opt.image_long_side)]
    argv += ["--overwrite"] if opt.overwrite else []
    argv += ["--ids", *opt.ids] if opt.ids else []
    argv = read_by(OPTION_STAGE.get(name, name), argv)  # a stage is given only what it reads
    return argv + extra + [str(a) for a in opt.extra_args.get(name, [])]


def run_in_process(script: str, argv: list[str], summary_file: Path) -> int:
    """Run a stage script's ``main(argv)`` in this process -> its exit code (as the script would exit)."""
    from mvfr.runtime import run_main
    from mvfr.stage import SUMMARY_FILE_ENV

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    module = importlib.import_module(script[: -len(".py")].replace("/", "."))
    os.environ[SUMMARY_FILE_ENV] = str(summary_file)
    try:
        with contextlib.chdir(ROOT):  # where a subprocess stage runs: relative defaults (predefine_data/...) resolve alike
            return int(run_main(lambda: module.main(argv)) or 0)
    except SystemExit as exc:  # argparse errors and stage-level exits
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        os.environ.pop(SUMMARY_FILE_ENV, None)


def run_stages(opt: argparse.Namespace, summary_dir: Path) -> list[tuple[str, int | None, float]]:
    """Run the selected stages -> ``(name, exit code or None when not built, seconds)`` per stage;
    each stage's per-face summary goes to ``summary_dir/<name>.json``."""
    from mvfr.atomic_io import keep_in_memory

    stages = select_stages(EVAL_STAGES if opt.split == "eval" else TRAIN_STAGES, opt.start, opt.stop)
    results = []
    with keep_in_memory():
        for k, (name, script, extra) in enumerate(stages, 1):
            print(f"\n=== [{k}/{len(stages)}] {name} ===", flush=True)
            if not (ROOT / script).is_file():
                results.append((name, None, 0.0))
                print(f"{script} is not built yet; skipping", flush=True)
                continue
            t0 = time.perf_counter()
            argv = stage_argv(name, script, extra, opt)
            summary_file = summary_dir / f"{name}.json"
            if opt.mode == "inprocess":
                rc = run_in_process(script, argv, summary_file)
            else:
                env = dict(os.environ, MVFR_SUMMARY_FILE=str(summary_file))
                rc = subprocess.call([sys.executable, str(ROOT / script), *argv], cwd=ROOT, env=env)
            results.append((name, rc, time.perf_counter() - t0))
    return results


def run(opt: argparse.Namespace) -> int:
    summary_dir = Path(tempfile.mkdtemp(prefix="mvfr_summary_"))
    t_all = time.time()
    results = run_stages(opt, summary_dir)
    print(f"\n=== summary ({time.time() - t_all:.0f} s) ===")
    failed_any = False
    for name, rc, seconds in results:
        status = "not built" if rc is None else ("ok" if rc == 0 else f"exit {rc}")
        line = f"{name:18s} {status:10s} {seconds:7.1f} s"
        path = summary_dir / f"{name}.json"
        if path.is_file():
            data = json.loads(path.read_text())
            line += f"  done {len(data['done'])}, skipped {len(data['skipped'])}, failed {len(data['failed'])}"
            for fid, why in data["failed"].items():
                line += f"\n{'':20s}FAILED {fid}: {why}"
        print(line)
        failed_any |= rc not in (0, None)
    return 1 if failed_any else 0


def demo(opt: argparse.Namespace) -> int:
    demo_dir = Path(opt.demo_dir)
    opt.facescape_dataroot = str(demo_dir / "raw")
    opt.dataroot = str(demo_dir / "data")
    opt.split = "eval"
    if not (demo_dir / "raw" / "id.json").is_file():
        print("=== synthesising the demo capture set ===", flush=True)
        argv = [sys.executable, str(ROOT / "gen_synthetic.py"), "--out", opt.facescape_dataroot, *DEMO_SYNTHETIC,
                "--image_long_side", str(opt.image_long_side)]
        rc = subprocess.call(argv, cwd=ROOT)
        if rc:
            return rc
    return run(opt)


def main(argv=None) -> int:
    opt = parse_args(argv)
    # the stages run in the repository root: data paths given relative to where this was called go absolute
    opt.dataroot, opt.facescape_dataroot = (str(Path(p).resolve()) for p in (opt.dataroot, opt.facescape_dataroot))
    opt.demo_dir = str(Path(opt.demo_dir).resolve())
    if opt.image_long_side is None:
        opt.image_long_side = checkpoint_image_long_side()
    return demo(opt) if opt.demo else run(opt)


if __name__ == "__main__":
    sys.exit(main())
