"""Tiled regularisation against whole-volume inference, with the shipped checkpoint.

Usage: python benchmarks/bench_reg_tiling.py [--size 256] [--tile 64] [--overlap 16] [--threads 2]
A synthetic IF-like score volume (D = 201, the facial search region at S = --size) goes through
``predict_steps`` whole and tile by tile; prints ``RESULT max_diff_steps=<x> pct_over_0.01=<p>
whole_s=<s> tiled_s=<s>``. Not a test (the test is tests/test_regularisation.py at 64 / 16).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from models.reg_net import build_reg_net  # noqa: E402
from mvfr.mvs.face_inputs import search_region  # noqa: E402
from mvfr.regularisation import predict_steps, synthetic_score_volume  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=256, help="UV size S, in texels")
    p.add_argument("--tile", type=int, default=64, help="tile side, in texels")
    p.add_argument("--overlap", type=int, default=16, help="requested overlap, in texels")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--checkpoint", default="predefine_data/checkpoint_reg.pt", help="regulariser checkpoint")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    ckpt = torch.load(a.checkpoint, map_location="cpu", weights_only=True)
    model = build_reg_net(ckpt["options"])
    model.load_state_dict(ckpt["model"], strict=True)
    S = a.size
    mask = search_region(S)
    yy, xx = np.mgrid[0:S, 0:S] / S
    vol = synthetic_score_volume(20 * np.sin(3 * xx) * np.cos(2 * yy), mask, np.random.default_rng(0))
    t0 = time.perf_counter()
    whole = predict_steps(model, vol, mask, tile=S, overlap=0)
    t1 = time.perf_counter()
    tiled = predict_steps(model, vol, mask, tile=a.tile, overlap=a.overlap)
    t2 = time.perf_counter()
    d = np.abs(tiled - whole)[mask]
    print(f"S={S} D={vol.shape[0]} tile {a.tile} overlap {a.overlap}: {mask.sum()} texels")
    print(f"RESULT max_diff_steps={d.max():.3e} pct_over_0.01={100 * np.mean(d > 0.01):.2f} "
          f"whole_s={t1 - t0:.1f} tiled_s={t2 - t1:.1f}")


if __name__ == "__main__":
    main()
