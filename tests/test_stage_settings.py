"""Settings that stages share or hand on: the views every stage uses (one rule, --if_view_num), the
training resolution an IF checkpoint stores (measured on its data) and the warning at inference."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from test_texture import fabricate_dataset, run_script, template_cm

D, INTERVAL = 21, 0.5


@pytest.fixture(scope="module")
def if_data(tmp_path_factory):
    """4-view fabricated faces at 64 px with the template as base mesh, and a tiny IF trained on them
    with the option default --image_long_side (1296) and --if_view_num 3."""
    import train_if
    from mvfr.datafolder import DataFolder
    from mvfr.mesh_io import Mesh, write_obj

    root = tmp_path_factory.mktemp("settings") / "data"
    fabricate_dataset(root, S=24, D=D, interval_mm=INTERVAL, views=4, image_size=64)
    folder, t = DataFolder(root), template_cm()
    for split in ("train", "eval"):
        for fid in folder.face_ids(split):
            write_obj(folder.fit_mesh(fid), Mesh(t.vertices, t.faces))
    mp = pytest.MonkeyPatch()
    try:
        rc = run_script(train_if, ["--dataroot", str(root), "--device", "cpu", "--d_size", str(D), "--interval_scale", str(INTERVAL),
                                   "--feature_channels", "8", "--mlp_dim", "9-16-1", "--points_num", "64",
                                   "--if_training_epoch", "1", "--if_view_num", "3"], mp)
    finally:
        mp.undo()
    assert rc == 0
    return folder, folder.checkpoint_dir("if") / "checkpoint_if.pt"


def test_train_if_stores_the_resolution_and_views_its_data_had(if_data):
    from mvfr.training import read_checkpoint

    folder, ckpt = if_data
    options = read_checkpoint(ckpt)["options"]
    assert options["image_long_side"] == 64  # the processed images, not the option default 1296
    assert options["training_image_long_sides"] == [64, 64]
    assert options["if_view_num"] == 3


def test_shipped_if_checkpoint_stores_its_real_training_resolution_and_run_pipeline_follows_it(tmp_path):
    import run_pipeline
    from mvfr.training import read_checkpoint

    from conftest import ROOT

    shipped = read_checkpoint(ROOT / "predefine_data" / "checkpoint_if.pt")
    assert shipped["options"]["image_long_side"] == 1296
    assert run_pipeline.checkpoint_image_long_side() == 1296
    shipped["options"]["image_long_side"] = 648  # a checkpoint trained at another resolution is followed
    torch.save(shipped, tmp_path / "if_648.pt")
    assert run_pipeline.checkpoint_image_long_side(tmp_path / "if_648.pt") == 648
    assert run_pipeline.checkpoint_image_long_side(run_pipeline.ROOT / "no_such.pt") == 1296


def test_resolution_warning_threshold():
    from eval_if import resolution_warning

    assert resolution_warning({"image_long_side": 648}, 648, "001_01") is None
    assert resolution_warning({"image_long_side": 648}, 960, "001_01") is None  # 1.48x
    assert resolution_warning({"image_long_side": 648}, 433, "001_01") is None  # 1 / 1.497
    assert resolution_warning({"image_long_side": 648}, 430, "001_01")  # 1 / 1.507
    msg = resolution_warning({"image_long_side": 648}, 1296, "001_01")
    assert msg and "1296" in msg and "648" in msg and "001_01" in msg
    assert resolution_warning({"image_long_side": 648}, 400, "001_01")
    assert resolution_warning({}, 1296, "001_01") is None


def test_eval_if_uses_the_views_of_gen_maps_and_gen_tex_and_warns_about_resolution(if_data, tmp_path, monkeypatch, caplog):
    import eval_if
    from mvfr.capture import load_capture
    from mvfr.training import read_checkpoint

    folder, ckpt = if_data
    fid = folder.face_ids("eval")[0]
    seen = {}
    original = eval_if.load_face_inputs

    def spy(*args, **kwargs):
        face = original(*args, **kwargs)
        seen[face.face_id] = face
        return face

    monkeypatch.setattr(eval_if, "load_face_inputs", spy)
    # a checkpoint that claims 1296 px training images: 64 px images are 20x off
    claims = read_checkpoint(ckpt)
    claims["options"]["image_long_side"] = 1296
    other = tmp_path / "claims_1296.pt"
    torch.save(claims, other)
    common = ["--dataroot", str(folder.root), "--device", "cpu", "--d_size", str(D), "--interval_scale", str(INTERVAL),
              "--split", "eval", "--overwrite", "--c2f_rounds", "0", "--refine_passes", "0"]  # the fabricated base has no uvs
    with caplog.at_level(logging.WARNING):
        assert run_script(eval_if, common + ["--if_checkpoint", str(other), "--if_view_num", "3"], monkeypatch) == 0
    face = seen[fid]
    # one rule: the first 3 valid views, as gen_maps and gen_tex get them from load_capture
    assert list(face.views) == load_capture(folder, fid, max_views=3).views == ["0", "1", "2"]
    assert face.setup.hp.shape[0] == 3 and len(face.images) == 3
    assert any("trained on 1296 px" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert run_script(eval_if, common + ["--if_checkpoint", str(ckpt)], monkeypatch) == 0
    assert len(seen[fid].views) == 4  # default --if_view_num 10: every valid view
    assert not any("trained on" in r.getMessage() for r in caplog.records)


def test_rebase_face_inputs_moves_the_hypothesis_lines_and_keeps_the_crops(if_data):
    """The second search of eval_if: the same crops searched from another base. The same base gives the same
    lines; a base moved k steps along its normals gives line origins k steps along (hp + k hn)."""
    from mvfr.mesh_io import read_obj
    from mvfr.mvs.face_inputs import load_face_inputs, rebase_face_inputs

    folder, _ = if_data
    fid = folder.face_ids("eval")[0]
    face = load_face_inputs(folder, "eval", fid, D, INTERVAL, with_gt=False)
    base = read_obj(folder.fit_mesh(fid))
    same = rebase_face_inputs(face, face.pos_map, face.norm_map, base.vertices, base.faces)
    for name in ("texels", "hp", "hn", "view_ok"):
        assert torch.equal(getattr(same.setup, name), getattr(face.setup, name)), name
    assert same.images is face.images and (same.setup.width, same.setup.height) == (face.setup.width, face.setup.height)
    k = 3.0
    moved = rebase_face_inputs(face, face.pos_map + k * face.step * face.norm_map, face.norm_map, base.vertices, base.faces)
    torch.testing.assert_close(moved.setup.hp, face.setup.hp + k * face.setup.hn, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(moved.setup.hn, face.setup.hn)
    assert not torch.equal(moved.setup.hp, face.setup.hp)
