"""`make demo` in small: gen_synthetic.py and run_pipeline.py (in-process, the shipped checkpoints, the processed
images at the IF checkpoint's training resolution, as --demo runs them) from preprocess_images to evaluate on one
held-out synthetic capture, at sizes a CI machine runs in well under a minute; and the result must be accurate,
not only written: the IF, reg and meso surfaces closer to the scan than the base mesh (tests/accuracy_guard.py)."""

from __future__ import annotations

import json

from accuracy_guard import assert_closer_than_base, read_mean_metrics

# --demo's synthetic set (run_pipeline.DEMO_SYNTHETIC: 3 identities, 11 views at 1296 px) cut to one identity
# and 7 views (6 valid), with smaller albedo, detail map and scan
SYNTHETIC = ["--num_ids", "1", "--num_exps", "1", "--num_views", "7", "--num_eval_ids", "1", "--first_id", "901",
             "--seed", "2026", "--image_long_side", "1296", "--albedo_size", "512", "--dpmap_size", "256", "--scan_level", "2"]
# the stages at S = 128 (the demo: 256) and D = 101 (+-10 mm; the demo: 201), small texture and meso mesh
HYPOTHESES = ["--d_size", "101"]  # S comes from the maps
STAGE_ARGS = {"gen_maps": ["--uv_size", "128"], "eval_if": HYPOTHESES, "eval_reg": HYPOTHESES,
              "gen_tex": ["--tex_uv_size", "256"], "dpmap2mesh": ["--dp_subdiv_levels", "1"],
              "evaluate": ["--n_samples", "20000"]}

# Accuracy guard: on capture 901_xx of seed 2026 (6 valid views at 1296 px, S = 128, D = 101) the IF, reg and meso
# surfaces are closer to the scan than the base mesh. Measured with pytest -s at commit 7266954 (whole-face base
# model, shipped v2 checkpoints) on the 2-core development CPU (bfloat16; float32 within 0.007 mm), mm: base
# accuracy 1.817, completeness 1.851; IF 0.782 / 0.491; reg 0.562 / 0.529; meso accuracy 0.574 (gains 1.04 / 1.36,
# 1.26 / 1.32, 1.24; with the MediaPipe template, commit 991d428: 0.95 / 0.71, 1.00 / 0.63, 0.99). Required: about
# half of each gain. A new base surface or checkpoint changes every figure: measure again.
DEMO_GAIN_MM = {"if": {"accuracy_mean_mm": 0.5, "completeness_mean_mm": 0.7},
                "reg": {"accuracy_mean_mm": 0.6, "completeness_mean_mm": 0.65},
                "meso": {"accuracy_mean_mm": 0.6}}


def test_demo_chain_in_small_is_accurate(tmp_path):
    import gen_synthetic
    import run_pipeline

    raw, data = tmp_path / "raw", tmp_path / "data"
    assert gen_synthetic.main(["--out", str(raw), *SYNTHETIC]) == 0
    stage_args = tmp_path / "stage_args.json"
    stage_args.write_text(json.dumps(STAGE_ARGS))
    assert run_pipeline.main(["--dataroot", str(data), "--facescape_dataroot", str(raw), "--device", "cpu",
                              "--to", "evaluate", "--stage_args", str(stage_args)]) == 0
    faces = json.loads((data / "eval" / "metrics.json").read_text())["faces"]
    assert sorted(faces) == json.loads((raw / "id.json").read_text())["eval"] and len(faces) == 1
    assert_closer_than_base(read_mean_metrics(data), DEMO_GAIN_MM, "test_demo_chain, one demo-like capture")
