"""Eval mode never needs ground truth (DESIGN §5): every eval-split stage -- gen_maps, eval_if, eval_reg,
gen_tex, dpmap_pred/main.py and dpmap2mesh.py, with the shipped checkpoints -- runs on a copy of a
dataset whose ground truth (RAW mesh/, region/, landmarks/, dpmap/, DATA mv_map/ and valid_map/) is
removed, and writes exactly what it writes with the ground truth present. The dataset is two synthetic
captures, so the chain also has to be accurate: its IF and reg surfaces closer to the scans than the base
meshes (tests/accuracy_guard.py). run_pipeline's in-process mode writes what the scripts write."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest

from accuracy_guard import assert_closer_than_base, read_mean_metrics
from mvfr.atomic_io import save_npy
from mvfr.datafolder import DataFolder, RawFolder
from tests.test_gen_maps import StandInDetector, make_dataset

S, D, INTERVAL = 32, 21, 0.5  # the stand-in dataset of the in-process test
FIDS = ("001_01", "002_01")
SYNTH_S, SYNTH_D, SYNTH_INTERVAL, SYNTH_LONG_SIDE = 64, 61, 0.2, 648  # the synthetic captures: +-6 mm searched

# Accuracy guard: on the two synthetic captures (seed 11, 4 views at 648 px, S = 64, D = 61) the IF, reg and meso
# surfaces are closer to the scans than the base meshes. Measured with pytest -s at commit 7266954 (whole-face base
# model, shipped v2 checkpoints) on the 2-core development CPU (bfloat16; float32 within 0.005 mm), mean of the two
# faces, mm: base accuracy 1.547, completeness 1.536; IF 0.976 / 0.927; reg 0.980 / 0.977; meso accuracy 1.063
# (gains 0.57 / 0.61, 0.57 / 0.56, 0.48; with the MediaPipe template, commit 991d428: 0.75 / 0.31, 0.75 / 0.24,
# 0.74). Required: about half of each gain. A new base surface or checkpoint changes every figure: measure again.
GT_ISOLATION_GAIN_MM = {"if": {"accuracy_mean_mm": 0.3, "completeness_mean_mm": 0.3},
                        "reg": {"accuracy_mean_mm": 0.3, "completeness_mean_mm": 0.3},
                        "meso": {"accuracy_mean_mm": 0.25}}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Two synthetic captures (the project's synthesiser, 4 views at 648 px, both in the eval split) in
    ``raw/``, preprocessed into ``data/``; returns the folder that holds both."""
    import preprocess_images
    from mvfr.synthesis import capture

    root = tmp_path_factory.mktemp("synthetic")
    raw = RawFolder(root / "raw")
    opt = capture.SynthOptions(num_views=4, image_long_side=SYNTH_LONG_SIDE, dpmap_size=128, albedo_size=256, seed=11,
                               num_invalid_views=0, scan_level=2)
    select, rt_scale, ids = {}, {}, []
    for fid in FIDS:
        pid, eid = (int(x) for x in fid.split("_"))
        cap = capture.synthesize_capture(pid, eid, opt)
        capture.write_capture(raw, cap)
        select[str(pid)] = {str(eid): capture.select_views(cap)}
        rt_scale[str(pid)] = {str(eid): cap.rt_scale}
        ids.append((pid, eid))
    capture.write_metadata(raw, select, rt_scale, ids, {pid for pid, _ in ids})
    assert preprocess_images.main(["--dataroot", str(root / "data"), "--facescape_dataroot", str(raw.root),
                                   "--image_long_side", str(SYNTH_LONG_SIDE)]) == 0
    return root


def add_ground_truth(data: DataFolder) -> None:
    """Ground truth a stage could peek at beyond the synthesiser's RAW mesh, region, landmarks and dpmap:
    DATA mv and valid maps of the eval split (made up)."""
    rng = np.random.default_rng(0)
    for fid in FIDS:
        save_npy(data.map("eval", "mv_map", fid), rng.normal(0, 0.1, (SYNTH_S, SYNTH_S)).astype(np.float32))
        save_npy(data.map("eval", "valid_map", fid), rng.random((SYNTH_S, SYNTH_S)) < 0.5)


def remove_ground_truth(data: DataFolder, raw: RawFolder) -> None:
    for sub in ("mesh", "region", "landmarks", "dpmap"):
        shutil.rmtree(raw.root / sub)
    for name in ("mv_map", "valid_map"):
        shutil.rmtree(data.root / "maps" / "eval" / name)


def run_eval_chain(data: DataFolder, raw: RawFolder, detector, monkeypatch, size: int, hyp: list[str]) -> None:
    """gen_maps (``detector``: None for the MediaPipe landmarker) and the eval stages after it, at ``size``
    texels with the hypotheses ``hyp``, from the repository root (where the default checkpoints are)."""
    import eval_if
    import eval_reg
    import gen_maps
    import gen_tex
    from conftest import ROOT
    from dpmap_pred import dpmap2mesh
    from dpmap_pred import main as dp_main
    from options import parse_options, read_by

    monkeypatch.chdir(ROOT)
    common = ["--dataroot", str(data.root), "--facescape_dataroot", str(raw.root), "--split", "eval", "--device", "cpu"]
    opt = parse_options("gen_maps", read_by("gen_maps", common) + ["--uv_size", str(size)])
    maker = gen_maps.MapMaker(opt, detector=detector) if detector is not None else gen_maps.MapMaker(opt)
    for fid in FIDS:
        maker.process(fid)
    for module, extra in ((eval_if, hyp + ["--c2f_rounds", "1"]), (eval_reg, hyp), (gen_tex, ["--tex_uv_size", "128"])):
        monkeypatch.setattr(sys, "argv", [module.__name__ + ".py"] + read_by(module.__name__, common) + extra)
        assert module.main() == 0, module.__name__
    assert dp_main.main(read_by("dpmap_main", common)) == 0
    assert dpmap2mesh.main(read_by("dpmap2mesh", common) + ["--dp_subdiv_levels", "1"]) == 0
    import torch

    assert torch.is_grad_enabled()  # no stage switches autograd off for the rest of the process


def outputs(data: DataFolder) -> dict[str, bytes]:
    """Every stage output of the eval faces, by path relative to DATA (logs and options excluded)."""
    paths = []
    for fid in FIDS:
        paths += [data.fit_mesh(fid), data.if_map(fid), data.if_mesh(fid), data.volume("eval", fid), data.reg_map(fid),
                  data.reg_mesh(fid), data.texture(fid), data.textured_mesh(fid), data.dp_map(fid), data.meso_mesh(fid)]
        paths += [data.map("eval", name, fid) for name in ("pos_map", "norm_map")]
    missing = [str(p) for p in paths if not p.is_file()]
    assert not missing, missing
    return {str(p.relative_to(data.root)): p.read_bytes() for p in paths}


def test_every_eval_stage_gives_identical_outputs_without_ground_truth(synthetic, tmp_path, monkeypatch):
    import evaluate

    shutil.copytree(synthetic, tmp_path / "with_gt")
    data, raw = DataFolder(tmp_path / "with_gt" / "data"), RawFolder(tmp_path / "with_gt" / "raw")
    add_ground_truth(data)
    shutil.copytree(tmp_path / "with_gt", tmp_path / "without_gt")
    data2, raw2 = DataFolder(tmp_path / "without_gt" / "data"), RawFolder(tmp_path / "without_gt" / "raw")
    remove_ground_truth(data2, raw2)
    assert not raw2.scan(FIDS[0]).exists() and raw.scan(FIDS[0]).is_file()

    hyp = ["--d_size", str(SYNTH_D), "--interval_scale", str(SYNTH_INTERVAL)]  # S comes from the maps
    run_eval_chain(data, raw, None, monkeypatch, SYNTH_S, hyp)
    run_eval_chain(data2, raw2, None, monkeypatch, SYNTH_S, hyp)
    with_gt, without_gt = outputs(data), outputs(data2)
    assert with_gt.keys() == without_gt.keys()
    differ = [k for k in with_gt if with_gt[k] != without_gt[k]]
    assert not differ, differ
    # and the chain is accurate: the searched surfaces are closer to the scans than the base meshes
    assert evaluate.main(["--dataroot", str(data.root), "--facescape_dataroot", str(raw.root), "--split", "eval",
                          "--stages", "base", "if", "reg", "meso", "--n_samples", "5000"]) == 0
    assert_closer_than_base(read_mean_metrics(data.root), GT_ISOLATION_GAIN_MM, "test_gt_isolation, 2 synthetic captures")
    # one topology for every face (dense correspondence): the base, reg and meso meshes of the two
    # captures differ in their vertex positions only
    from mvfr.mesh_io import read_obj

    for path in (data.fit_mesh, data.reg_mesh, data.meso_mesh):
        a, b = (read_obj(path(fid)) for fid in FIDS)
        assert len(a.vertices) == len(b.vertices) and np.abs(a.vertices - b.vertices).max() > 0
        np.testing.assert_array_equal(a.faces, b.faces)
        np.testing.assert_array_equal(a.face_uvs, b.face_uvs)
        np.testing.assert_array_equal(a.uvs, b.uvs)


def test_run_pipeline_in_process_writes_what_the_scripts_write(tmp_path, monkeypatch):
    """run_pipeline's in-process mode (one process, arrays handed over in memory) writes byte for byte
    what the stage scripts write when run one by one; the per-face summaries say every face was done."""
    import json

    import run_pipeline

    data, raw, per_view = make_dataset(tmp_path / "scripts", fids=FIDS)
    hyp = ["--d_size", str(D), "--interval_scale", str(INTERVAL), "--conf_high", "0"]  # flat images: move the surface anyway
    run_eval_chain(data, raw, StandInDetector(per_view), monkeypatch, S, hyp)
    shutil.copytree(tmp_path / "scripts", tmp_path / "inprocess")
    data2, raw2 = DataFolder(tmp_path / "inprocess" / "data"), RawFolder(tmp_path / "inprocess" / "raw")
    for sub in ("volume", "pred"):  # everything from eval_if on is made again
        shutil.rmtree(data2.root / sub)
    stage_args = tmp_path / "stage_args.json"  # the arguments run_eval_chain gives each stage
    stage_args.write_text(json.dumps({"eval_if": hyp + ["--c2f_rounds", "1"], "eval_reg": hyp, "gen_tex": ["--tex_uv_size", "128"],
                                      "dpmap2mesh": ["--dp_subdiv_levels", "1"]}))
    opt = run_pipeline.parse_args(["--dataroot", str(data2.root), "--facescape_dataroot", str(raw2.root), "--device", "cpu",
                                   "--from", "eval_if", "--to", "dpmap2mesh", "--stage_args", str(stage_args)])
    summaries = tmp_path / "summaries"
    summaries.mkdir()
    results = run_pipeline.run_stages(opt, summaries)
    assert [(name, rc) for name, rc, _ in results] == [(n, 0) for n in ("eval_if", "eval_reg", "gen_tex", "dpmap_main", "dpmap2mesh")]
    for name, _, _ in results:
        assert sorted(json.loads((summaries / f"{name}.json").read_text())["done"]) == sorted(FIDS)
    scripts, inprocess = outputs(data), outputs(data2)
    differ = [k for k in scripts if scripts[k] != inprocess[k]]
    assert not differ, differ
    with pytest.raises(SystemExit, match="unknown stages"):
        stage_args.write_text(json.dumps({"eval_iff": []}))
        run_pipeline.read_stage_args(str(stage_args))
