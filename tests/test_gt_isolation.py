"""Eval mode never needs ground truth (DESIGN §5): every eval-split stage -- gen_maps, eval_if, eval_reg,
gen_tex, dpmap_pred/main.py and dpmap2mesh.py, with the shipped checkpoints -- runs on a copy of a
dataset whose ground truth (RAW mesh/, region/, landmarks/, dpmap/, DATA mv_map/ and valid_map/) is
removed, and writes exactly what it writes with the ground truth present."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest

from mvfr.atomic_io import save_npy
from mvfr.datafolder import DataFolder, RawFolder
from tests.test_gen_maps import StandInDetector, make_dataset

S, D, INTERVAL = 32, 21, 0.5
FIDS = ("001_01", "002_01")


def add_ground_truth(data: DataFolder, raw: RawFolder) -> None:
    """Everything a stage could peek at: RAW region, landmarks and dp maps; DATA mv and valid maps."""
    rng = np.random.default_rng(0)
    for fid in FIDS:
        from mvfr.mesh_io import read_mesh

        n = len(read_mesh(raw.scan(fid)).vertices)
        save_npy(raw.region(fid), rng.random(n) < 0.8)
        save_npy(raw.landmarks3d(fid), rng.normal(size=(468, 3)))
        save_npy(raw.meso_dpmap(fid), rng.normal(0, 0.1, (64, 64)).astype(np.float32))
        save_npy(data.map("eval", "mv_map", fid), rng.normal(0, 0.1, (S, S)).astype(np.float32))
        save_npy(data.map("eval", "valid_map", fid), rng.random((S, S)) < 0.5)


def remove_ground_truth(data: DataFolder, raw: RawFolder) -> None:
    for sub in ("mesh", "region", "landmarks", "dpmap"):
        shutil.rmtree(raw.root / sub)
    for name in ("mv_map", "valid_map"):
        shutil.rmtree(data.root / "maps" / "eval" / name)


def run_eval_chain(data: DataFolder, raw: RawFolder, per_view, monkeypatch) -> None:
    import eval_if
    import eval_reg
    import gen_maps
    import gen_tex
    from dpmap_pred import dpmap2mesh
    from dpmap_pred import main as dp_main
    from options import parse_options

    common = ["--dataroot", str(data.root), "--facescape_dataroot", str(raw.root), "--split", "eval", "--device", "cpu"]
    opt = parse_options("gen_maps", common + ["--uv_size", str(S)])
    maker = gen_maps.MapMaker(opt, detector=StandInDetector(per_view))
    for fid in FIDS:
        maker.process(fid)
    hyp = ["--d_size", str(D), "--interval_scale", str(INTERVAL), "--conf_high", "0"]  # the chain must move the surface
    for module, extra in ((eval_if, hyp + ["--c2f_rounds", "1"]), (eval_reg, hyp), (gen_tex, ["--tex_uv_size", "128"])):
        monkeypatch.setattr(sys, "argv", [module.__name__ + ".py"] + common + extra)
        assert module.main() == 0, module.__name__
    assert dp_main.main(common) == 0
    assert dpmap2mesh.main(common + ["--dp_subdiv_levels", "1"]) == 0
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


def test_every_eval_stage_gives_identical_outputs_without_ground_truth(tmp_path, monkeypatch):
    data, raw, per_view = make_dataset(tmp_path / "with_gt", fids=FIDS)
    add_ground_truth(data, raw)
    shutil.copytree(tmp_path / "with_gt", tmp_path / "without_gt")
    data2, raw2 = DataFolder(tmp_path / "without_gt" / "data"), RawFolder(tmp_path / "without_gt" / "raw")
    remove_ground_truth(data2, raw2)
    assert not raw2.scan(FIDS[0]).exists() and raw.scan(FIDS[0]).is_file()

    run_eval_chain(data, raw, per_view, monkeypatch)
    run_eval_chain(data2, raw2, per_view, monkeypatch)
    with_gt, without_gt = outputs(data), outputs(data2)
    assert with_gt.keys() == without_gt.keys()
    differ = [k for k in with_gt if with_gt[k] != without_gt[k]]
    assert not differ, differ
    # and the chain did something: the regulariser moved the surface off the base mesh
    moved = np.load(data.reg_map(FIDS[0])) - np.load(data.map("eval", "pos_map", FIDS[0]))
    assert np.abs(moved).max() > 0


def test_run_pipeline_in_process_writes_what_the_scripts_write(tmp_path, monkeypatch):
    """run_pipeline's in-process mode (one process, arrays handed over in memory) writes byte for byte
    what the stage scripts write when run one by one; the per-face summaries say every face was done."""
    import json

    import run_pipeline

    data, raw, per_view = make_dataset(tmp_path / "scripts", fids=FIDS)
    run_eval_chain(data, raw, per_view, monkeypatch)
    shutil.copytree(tmp_path / "scripts", tmp_path / "inprocess")
    data2, raw2 = DataFolder(tmp_path / "inprocess" / "data"), RawFolder(tmp_path / "inprocess" / "raw")
    for sub in ("volume", "pred"):  # everything from eval_if on is made again
        shutil.rmtree(data2.root / sub)
    hyp = ["--d_size", str(D), "--interval_scale", str(INTERVAL), "--conf_high", "0"]
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
