"""Time the vectorised UV rasteriser on the template: texel -> (face, barycentrics) tables from scratch.

Usage: python benchmarks/bench_uv_rasterizer.py [--repeats 5]
Prints one line per size (first call, best of the repeats, reference loop where cheap) and a final
``RESULT s256=<s> s1024=<s>`` line with the best times in seconds. Not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from mvfr import uv_rasterizer as R  # noqa: E402
from mvfr.template import load_template  # noqa: E402


def _time(fn, repeats: int) -> tuple[float, float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times[0], min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed builds per size (the cache is not used)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024], help="UV map sizes S, in texels")
    args = parser.parse_args()
    t = load_template()
    best = {}
    for size in args.sizes:
        first, fastest, table = _time(lambda: R.build_uv_table(t.uvs, t.face_uvs, size), args.repeats)
        interp = _time(lambda: R.interpolate_attribute(table, t.faces, t.vertices), args.repeats)[1]
        mask = _time(lambda: R.build_facial_mask(table, t.uvs, t.face_uvs), args.repeats)[1]
        line = (
            f"S={size}: build_uv_table first {first:.3f} s, best {fastest:.3f} s; "
            f"interpolate [468,3] {interp:.3f} s; facial mask {mask:.3f} s; covered {table.covered.mean():.3f}"
        )
        if size <= 256:
            ref_time, _, ref = _time(lambda: R.build_uv_table_reference(t.uvs, t.face_uvs, size), 1)
            same = bool(np.array_equal(ref.face_index, table.face_index))
            line += f"; reference loop {ref_time:.3f} s (same faces: {same})"
        print(line, flush=True)
        best[size] = fastest
    print("RESULT " + " ".join(f"s{s}={v:.4f}" for s, v in best.items()))


if __name__ == "__main__":
    main()
