"""Speed of the synthesiser: one face, 10 views, 1296 px, generated and written (target: <= 10 s).

    python benchmarks/bench_synthetic.py [--seed 777] [--views 10] [--long_side 1296]

Every face is a new identity (its skin textures and detail layout are made too). Prints the time
of a cold face (one-time work of the process included: the model, subdivision tables, GL context)
and of warm faces (what every further face of a dataset costs, the target), then a RESULT line.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mvfr.datafolder import RawFolder  # noqa: E402
from mvfr.synthesis.capture import SynthOptions, synthesize_capture, write_capture  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=777)
    p.add_argument("--views", type=int, default=10)
    p.add_argument("--long_side", type=int, default=1296)
    p.add_argument("--faces", type=int, default=3, help="faces timed (the first is cold)")
    a = p.parse_args()
    opt = SynthOptions(num_views=a.views, image_long_side=a.long_side, seed=a.seed)
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        raw = RawFolder(tmp)
        for k in range(a.faces):
            t0 = time.perf_counter()
            cap = synthesize_capture(100 + k, 1 + k % 3, opt)
            t1 = time.perf_counter()
            write_capture(raw, cap)
            t2 = time.perf_counter()
            times.append(t2 - t0)
            print(f"face {cap.fid}: synthesize {t1 - t0:.2f} s, write {t2 - t1:.2f} s, total {t2 - t0:.2f} s"
                  f"{' (cold)' if k == 0 else ''}")
    warm = sorted(times[1:])[len(times[1:]) // 2] if len(times) > 1 else times[0]
    print(f"RESULT bench_synthetic views={a.views} long_side={a.long_side} cold_s={times[0]:.2f} warm_median_s={warm:.2f} "
          f"target_s=10 {'PASS' if warm <= 10 else 'FAIL'}")


if __name__ == "__main__":
    main()
