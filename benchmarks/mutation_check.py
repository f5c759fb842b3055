"""Mutation check: break known lines of the code one at a time and see which tests notice.

Usage: python benchmarks/mutation_check.py [--only NAME ...] [--list] [--no-baseline] [--keep]

Each mutation replaces one exact piece of one file (it must occur exactly once, else the mutation is
reported as stale: the code moved on and the list needs updating) and runs the tests named for it.
Everything happens in a copy of the repository in a temporary folder (the files git tracks or would
track, as they are in the working tree now, uncommitted edits included), never in the working tree,
so other people's edits are safe, and an interrupted run (Ctrl-C) leaves nothing behind but that
folder, which is removed on the way out. First the tests of every mutation run once on the
unmutated copy (a test that already fails would "catch" everything). Prints one line per mutation
and ``RESULT mutations=<n> caught=<k> stale=<s> seconds=<t>``; the exit status is 0 only when every
mutation is caught by at least one test and none is stale.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # relative to the repository root
    old: str  # exact text, must occur once
    new: str
    tests: tuple[str, ...]  # pytest node ids or files, relative to the repository root
    why: str  # what the mutation breaks, in words


MUTATIONS = [
    Mutation(
        "confidence-fallback", "eval_reg.py",
        "return steps * confidence.fallback_weight(conf, opt.conf_low, opt.conf_high), conf",
        "return steps, conf",
        ("tests/test_few_views.py::test_flat_score_region_stays_on_the_base_surface_in_eval_reg",),
        "eval_reg keeps the regulariser's displacement where the score volume has no evidence",
    ),
]


def repository_files(root: Path) -> list[str]:
    """Files git tracks or would track (ignored ones left out), relative to ``root``, that exist now."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, check=True,
                         capture_output=True).stdout.decode()
    return sorted(f for f in out.split("\0") if f and (root / f).is_file())


def copy_repository(root: Path, dest: Path) -> None:
    for rel in repository_files(root):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)


def run_tests(copy: Path, tests: tuple[str, ...], python: str) -> tuple[int, list[str], float]:
    """pytest on ``tests`` in the copy -> (exit code, failing test ids, seconds)."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    t0 = time.perf_counter()
    proc = subprocess.run([python, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *tests], cwd=copy, env=env,
                          capture_output=True, text=True)
    failed = sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, flags=re.M)))
    return proc.returncode, failed, time.perf_counter() - t0


def apply(copy: Path, m: Mutation) -> str | None:
    """Apply ``m`` in the copy -> the file's original text, or None (stale: ``old`` not there exactly once)."""
    path = copy / m.path
    text = path.read_text()
    if text.count(m.old) != 1:
        return None
    path.write_text(text.replace(m.old, m.new))
    return text


def check(copy: Path, mutations: list[Mutation], python: str, baseline: bool) -> list[tuple[Mutation, str, list[str], float]]:
    """Run every mutation in ``copy`` -> (mutation, status, failing tests, seconds) per mutation."""
    if baseline:
        tests = tuple(dict.fromkeys(t for m in mutations for t in m.tests))
        code, failed, secs = run_tests(copy, tests, python)
        print(f"baseline: {len(tests)} test selections, exit {code}, {secs:.0f} s", flush=True)
        if code != 0:
            raise SystemExit(f"the unmutated tests fail already ({', '.join(failed) or 'see pytest'}); fix them first")
    results = []
    for m in mutations:
        original = apply(copy, m)
        if original is None:
            results.append((m, "STALE", [], 0.0))
            print(f"{m.name:28s} STALE: {m.path} does not hold the text to replace exactly once", flush=True)
            continue
        try:
            code, failed, secs = run_tests(copy, m.tests, python)
        finally:
            (copy / m.path).write_text(original)
        status = "caught" if code != 0 and failed else ("ERROR" if code not in (0, 1) else "NOT CAUGHT")
        results.append((m, status, failed, secs))
        print(f"{m.name:28s} {status:10s} {secs:6.0f} s  {m.path}: {m.why}", flush=True)
        for test in failed:
            print(f"{'':30s}failed: {test}", flush=True)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="*", default=None, help="names of the mutations to run (default: all)")
    p.add_argument("--list", action="store_true", help="list the mutations and exit")
    p.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the run on the unmutated copy")
    p.add_argument("--keep", action="store_true", help="keep the temporary copy (its path is printed)")
    p.add_argument("--python", default=sys.executable, help="interpreter that runs pytest")
    a = p.parse_args(argv)
    chosen = [m for m in MUTATIONS if a.only is None or m.name in a.only]
    if a.list or not chosen:
        for m in MUTATIONS:
            print(f"{m.name:28s} {m.path}: {m.why}\n{'':30s}tests: {' '.join(m.tests)}")
        return 0 if a.list else 2
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="mvfr_mutation_"))
    try:
        copy_repository(ROOT, tmp)
        print(f"copy of the repository: {tmp}", flush=True)
        results = check(tmp, chosen, a.python, a.baseline)
    finally:
        if a.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    caught = sum(s == "caught" for _, s, _, _ in results)
    stale = sum(s == "STALE" for _, s, _, _ in results)
    print(f"RESULT mutations={len(results)} caught={caught} stale={stale} seconds={time.perf_counter() - t0:.0f}")
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
