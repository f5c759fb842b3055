"""The accuracy guard of the tests that run the chain on a synthetic capture (#27).

A chain test that only compares two runs (imported against native cameras, with against without
ground truth) passes when a change makes both equally worse. The guard asks more: the searched
surfaces (IF, reg) are closer to the scan than the base mesh they start from, by a margin in mm,
in accuracy (surface to scan) and completeness (scan to surface), evaluate.py's figures.

Each test keeps its margins beside its assert, as a named constant saying how they were measured;
run the test with ``-s`` to see the table this prints (base, stage, gain and required gain per
metric) when the base surface or a checkpoint changes and the margins must be measured again.
"""

from __future__ import annotations

import json
from pathlib import Path

GUARDED = ("accuracy_mean_mm", "completeness_mean_mm")


def read_mean_metrics(dataroot: Path) -> dict:
    """evaluate.py's ``DATA/eval/metrics.json`` -> its ``mean`` part, ``{stage: {metric: value}}``."""
    return json.loads((Path(dataroot) / "eval" / "metrics.json").read_text())["mean"]


def assert_closer_than_base(mean: dict, required_gain_mm: dict[str, dict[str, float]], label: str) -> None:
    """Every ``stage`` of ``required_gain_mm`` ({stage: {metric: mm}}) is at least that many mm below the base
    mesh in each metric; prints the measured gains (``label`` names the test's capture)."""
    rows, failed = [], []
    for stage, gains in required_gain_mm.items():
        for metric, need in gains.items():
            base, got = float(mean["base"][metric]), float(mean[stage][metric])
            rows.append(f"  {stage:5s} {metric:22s} base {base:7.3f}  {stage} {got:7.3f}  gain {base - got:6.3f}  "
                        f"required {need:5.3f} mm")
            if not base - got >= need:
                failed.append(rows[-1].strip())
    print(f"accuracy guard, {label}:\n" + "\n".join(rows))
    assert not failed, f"{label}: a searched surface is not closer to the scan than the base mesh by the margin:\n" + "\n".join(failed)
