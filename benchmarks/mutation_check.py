"""Mutation check: break known lines of the code one at a time and see which tests notice.

Usage: python benchmarks/mutation_check.py [--only NAME ...] [--list] [--no-baseline]
                                           [--revision REV | --working_tree] [--keep]

Each mutation replaces one exact piece of one file (it must occur exactly once, else the mutation is
reported as stale: the code moved on and the list needs updating) and runs the tests named for it.
Everything happens in a copy of the repository in a temporary folder (``git archive`` of
``--revision``, default the last commit; ``--working_tree``: the files git tracks or would track as
they are now, uncommitted edits included), never in the working tree, so other people's edits are
safe, and an interrupted run (Ctrl-C) leaves nothing behind: the copy is removed on the way out.
First the tests of every mutation run once on the unmutated copy (a test that already fails would
"catch" everything). Prints one line per mutation with the tests that failed and
``RESULT mutations=<n> caught=<k> stale=<s> seconds=<t>``; the exit status is 0 only when every
mutation is caught by at least one test and none is stale. Tests run with OMP_NUM_THREADS=1 unless
it is set; about 5 minutes on a 2-core CPU (the chain mutations run the three chain tests).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
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


FEW_VIEWS = "tests/test_few_views.py"
DPMAP = "tests/test_dpmap.py"
DPMAP_E2E = DPMAP + "::test_train_resume_predict_and_mesh_end_to_end"
IF = "tests/test_implicit_function.py"
CHAIN = ("tests/test_demo_chain.py", "tests/test_import_capture.py::test_native_chain_is_closer_to_the_scan_than_the_base_mesh",
         "tests/test_gt_isolation.py::test_every_eval_stage_gives_identical_outputs_without_ground_truth")

MUTATIONS = [
    Mutation(
        "confidence-fallback", "eval_reg.py",
        "return confidence.continue_confident(steps, confidence.fallback_weight(conf, opt.conf_low, opt.conf_high), mask), conf",
        "return steps, conf",
        ("tests/test_few_views.py::test_flat_score_region_continues_the_confident_surface_in_eval_reg",),
        "eval_reg keeps the regulariser's displacement where the score volume has no evidence",
    ),
    Mutation(
        "if-confidence-fallback", "eval_if.py",
        "keep = np.where(scored, confidence.fallback_weight(conf_t, *conf_range), 0.0)", "keep = np.where(scored, 1.0, 0.0)",
        (FEW_VIEWS + "::test_flat_score_texel_stays_on_the_base_surface_in_eval_if",),
        "eval_if keeps the argmax of a score without evidence",
    ),
    Mutation(
        "taubin-call", "dpmap_pred/dpmap2mesh.py",
        "base = taubin_smooth(mesh.vertices, mesh.faces, smooth_iters) if smooth_iters > 0 else mesh.vertices",
        "base = mesh.vertices",
        (DPMAP + "::test_taubin_smoothing_removes_noise_without_shrinking", DPMAP_E2E),
        "dpmap2mesh displaces the noisy reg surface, not its smooth part",
    ),
    Mutation(
        "taubin-iters-option", "dpmap_pred/dpmap2mesh.py",
        "meso, _ = displace_mesh(mesh, dp, folder.mm_per_unit(fid), levels, smooth_iters)",
        "meso, _ = displace_mesh(mesh, dp, folder.mm_per_unit(fid), levels)",
        (DPMAP_E2E,),
        "dpmap2mesh over a data folder ignores the map's smoothing",
    ),
    Mutation(
        "dpmap-mm-per-unit", "dpmap_pred/dpmap2mesh.py",
        "normals * (disp_mm / float(mm_per_unit))[:, None]", "normals * (disp_mm * float(mm_per_unit))[:, None]",
        (DPMAP + "::test_constant_map_moves_every_vertex_along_its_normal",
         DPMAP + "::test_displacement_follows_the_map_and_the_unit_conversion", DPMAP_E2E),
        "the mesoscopic displacement multiplied by mm per unit instead of divided",
    ),
    Mutation(
        "dpmap-score-mask", "dpmap_pred/main.py",
        "valid = mask & np.isfinite(gt)", "valid = np.isfinite(gt)",
        (DPMAP_E2E,),
        "--score counts the texels outside the facial mask",
    ),
    Mutation(
        "registration-upsampling", "dpmap_pred/targets.py",
        "col, row = grid[..., 1] * size - 0.5, grid[..., 0] * size - 0.5",
        "col, row = grid[..., 1] * w - 0.5, grid[..., 0] * h - 0.5",
        (DPMAP + "::test_registered_target_reads_the_ground_truth_where_the_texel_lies_on_the_scan",),
        "the registered target at another size reads the map at the surface's texel scale",
    ),
    Mutation(
        "stride2-sampler", "mvfr/mvs/sampling.py",
        "ix = pix[..., 0] / s\n    iy = pix[..., 1] / s",
        "ix = (pix[..., 0] + 0.5) / s - 0.5\n    iy = (pix[..., 1] + 0.5) / s - 0.5",
        (IF + "::test_feature_sampling_follows_the_stride2_conv_centres",
         IF + "::test_sample_views_matches_grid_sample_reference"),
        "stride-2 features read as if sample i were centred on pixel 2i + 0.5 (the old rule)",
    ),
    Mutation(
        "c2f-window", "mvfr/mvs/search.py",
        "j = torch.arange(-((prev - 1) // s), (prev - 1) // s + 1, device=device) * s",
        "j = torch.arange(-((prev - 1) // s) + 1, (prev - 1) // s, device=device) * s",
        (IF + "::test_coarse_to_fine_equals_full_on_single_peak[9-strides2]",),
        "each finer search level looks one stride less far around the coarser peak (here only the D = 9 case)",
    ),
    Mutation(
        "generator-one-block-less", "dpmap_pred/networks.py",
        "layers += [ResnetBlock(ch) for _ in range(n_blocks)]", "layers += [ResnetBlock(ch) for _ in range(max(n_blocks - 1, 0))]",
        (DPMAP + "::test_generator_shapes_range_and_size",),
        "the mesoscopic generator one residual block short of its configuration (and of the paper's size)",
    ),
    Mutation(
        "photometric-shared-gain", "mvfr/training.py",
        "g = 1.0 + u(V, 3, 1, 1) * colour_gain", "g = 1.0 + u(1, 3, 1, 1) * colour_gain",
        (IF + "::test_photometric_augment_range_and_per_view",),
        "one colour gain for all views of a capture",
    ),
    Mutation(
        "occlusion-margin", "mvfr/visibility.py",
        "start = points[far] + to_cam[far] * (margin + 1e-7 * dist[far])[:, None]",
        "start = points[far] + to_cam[far] * (1e-7 * dist[far])[:, None]",
        ("tests/test_visibility.py",),
        "the occlusion rule ignores its margin",
    ),
    Mutation(
        "hypothesis-visibility-margin", "mvfr/visibility.py",
        "return vis & ~occluded(points, centers, RayCaster(vertices, faces), search_units)",
        "return vis & ~occluded(points, centers, RayCaster(vertices, faces), 0.0)",
        ("tests/test_visibility.py::test_texel_view_visibility_margin_is_the_search_half_range",),
        "a surface within the searched segment hides a texel's hypotheses",
    ),
    Mutation(
        "texture-visibility-margin", "mvfr/texture.py",
        "hidden = occluded(points[idx], center[None], caster, caster.mean_edge)[0]",
        "hidden = occluded(points[idx], center[None], caster, 0.0)[0]",
        ("tests/test_texture.py",),
        "texture blending hides texels behind their own refined triangles",
    ),
    Mutation(
        "reg-mm-per-unit", "mvfr/regularisation.py",
        "return float(interval_scale_mm) / float(mm_per_unit)", "return float(interval_scale_mm) * float(mm_per_unit)",
        (FEW_VIEWS + "::test_flat_score_region_continues_the_confident_surface_in_eval_reg",),
        "the regularised displacement converted to capture units with mm per unit the wrong way round",
    ),
    Mutation(
        "if-mm-per-unit", "mvfr/mvs/face_inputs.py",
        "step = interval_scale_mm / capture.mm_per_unit", "step = interval_scale_mm * capture.mm_per_unit",
        CHAIN,
        "the IF hypotheses spaced by interval * mm per unit instead of interval / mm per unit (capture units)",
    ),
    Mutation(
        "if-displacement-sign", "eval_if.py",
        "steps[face.mask.ravel()] = np.where(scored, step_offsets(D)[argmax], 0.0)",
        "steps[face.mask.ravel()] = np.where(scored, -step_offsets(D)[argmax], 0.0)",
        CHAIN,
        "the IF surface moved against the normal by the displacement it found (and the refined base of the later searches with it)",
    ),
    Mutation(
        "metrics-mm-per-unit", "mvfr/metrics.py",
        "acc_mm = d_acc[keep] * mm_per_unit", "acc_mm = d_acc[keep] / mm_per_unit",
        ("tests/test_metrics.py",),
        "accuracy reported in capture units divided by mm per unit",
    ),
]


def repository_files(root: Path) -> list[str]:
    """Files git tracks or would track (ignored ones left out), relative to ``root``, that exist now."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, check=True,
                         capture_output=True).stdout.decode()
    return sorted(f for f in out.split("\0") if f and (root / f).is_file())


def copy_repository(root: Path, dest: Path, revision: str | None) -> None:
    """The repository at ``revision`` (``git archive``), or with ``None`` the working tree as it is now."""
    if revision is not None:
        tar = subprocess.run(["git", "archive", "--format=tar", revision], cwd=root, check=True, capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
            archive.extractall(dest, filter="data")
        return
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
    p.add_argument("--revision", default="HEAD", help="git revision to check out into the copy (default: the last commit)")
    p.add_argument("--working_tree", action="store_true",
                   help="copy the working tree as it is instead, uncommitted edits included")
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
        copy_repository(ROOT, tmp, None if a.working_tree else a.revision)
        print(f"copy of the repository ({'working tree' if a.working_tree else a.revision}): {tmp}", flush=True)
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
