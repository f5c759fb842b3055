"""Post-regularisation: soft-argmax, the 3D U-Net, tiled inference, refined surface, UV-grid mesh."""

import numpy as np
import pytest
import torch

from models.reg_net import RegNet3D, build_reg_net
from mvfr.mesh_io import face_normals
from mvfr.mvs.geometry import step_offsets
from mvfr.regularisation import (
    argmax_steps,
    gt_steps,
    load_volume,
    predict_steps,
    random_crops,
    refine_pos_map,
    reg_loss,
    soft_argmax,
    step_units,
)
from mvfr.uv_mesh import uv_grid_mesh


def gaussian_volume(steps_map: np.ndarray, d_size: int, sigma: float = 2.0) -> np.ndarray:
    """Score volume [D, S, S] with a Gaussian peak at ``steps_map`` (in steps) for every texel."""
    off = step_offsets(d_size)[:, None, None]
    return np.exp(-((off - steps_map[None]) ** 2) / (2 * sigma**2)).astype(np.float32)


# -------------------------------------------------------------------------------- soft-argmax


def test_soft_argmax_shape_and_known_answer():
    D = 41
    target = torch.tensor([[[-7.3, 0.0], [3.25, 12.0]]], dtype=torch.float64)  # [1, 2, 2] steps
    off = torch.arange(D, dtype=torch.float64) - (D - 1) / 2
    logits = -((off[None, :, None, None] - target[:, None]) ** 2) / (2 * 1.5**2)
    out = soft_argmax(logits, dim=1)
    assert out.shape == (1, 2, 2)
    torch.testing.assert_close(out, target, atol=1e-6, rtol=0)


def test_soft_argmax_gradcheck_float64():
    logits = torch.randn(2, 9, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: soft_argmax(x, 1), (logits,))


def test_flat_plane_known_offset_gives_known_displacement():
    """A plane z = 0 with normals +z and a volume peaked at +1.4 mm: the untrained regulariser's
    soft-argmax and the refined surface recover z = 1.4 mm (in capture units)."""
    S, D, interval_mm, mm_per_unit = 16, 61, 0.2, 2.0
    step = step_units(interval_mm, mm_per_unit)
    disp_mm = 1.4
    steps = np.full((S, S), disp_mm / interval_mm, dtype=np.float32)  # 7 steps
    vol = gaussian_volume(steps, D, sigma=1.0)
    mask = np.ones((S, S), bool)
    model = RegNet3D(base_channels=2, levels=2, init_temperature=40.0)
    pred = predict_steps(model, vol, mask, tile=8, overlap=4)
    np.testing.assert_allclose(pred, 7.0, atol=1e-3)
    u, v = np.meshgrid(np.arange(S, dtype=np.float32), np.arange(S, dtype=np.float32))
    pos = np.stack([u, v, np.zeros_like(u)], -1)
    nrm = np.broadcast_to(np.array([0, 0, 1], np.float32), pos.shape).copy()
    refined = refine_pos_map(pos, nrm, pred * step, mask)
    np.testing.assert_allclose(refined[..., 2], disp_mm / mm_per_unit, atol=1e-3)
    np.testing.assert_allclose(refined[..., :2], pos[..., :2])


def test_argmax_steps_and_gt_steps():
    steps = np.array([[-3.0, 5.0]], dtype=np.float32)
    assert np.array_equal(argmax_steps(gaussian_volume(steps, 21)), steps)
    out = gt_steps(np.array([[0.3, -5.0]]), step=0.1, d_size=21)  # 3 steps, -50 clipped to -10
    np.testing.assert_allclose(out, [[3.0, -10.0]])


def test_step_units_rejects_bad_scale():
    assert step_units(0.2, 0.5) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="positive"):
        step_units(0.2, 0.0)


# ---------------------------------------------------------------------------------- network


def test_reg_net_shapes_odd_sizes_and_zero_init_residual():
    model = RegNet3D(base_channels=2, levels=3, init_temperature=5.0)
    vol = torch.rand(2, 21, 13, 11)
    mask = torch.rand(2, 13, 11) > 0.3
    out = model(vol, mask)
    assert out.shape == vol.shape
    # untrained: logits are temperature * masked score (the head starts at zero)
    torch.testing.assert_close(out, 5.0 * vol * mask[:, None].float())


def test_reg_net_rejects_bad_shapes():
    with pytest.raises(ValueError, match="expected volume"):
        RegNet3D(2)(torch.rand(1, 5, 4, 4), torch.ones(1, 4, 5))


def test_build_reg_net_from_options():
    net = build_reg_net({"reg_channels": 3, "reg_levels": 2})
    assert net.base_channels == 3 and net.levels == 2


def test_tiled_inference_matches_whole_volume_with_full_overlap():
    torch.manual_seed(0)
    model = RegNet3D(base_channels=2, levels=2)
    torch.nn.init.normal_(model.head.weight, std=0.2)  # a non-trivial residual
    vol = np.random.default_rng(0).random((17, 20, 20)).astype(np.float32)
    mask = np.ones((20, 20), bool)
    mask[:4, :4] = False
    whole = predict_steps(model, vol, mask, tile=20, overlap=0)
    tiled = predict_steps(model, vol, mask, tile=6, overlap=20)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    assert (whole[~mask] == 0).all()


def test_receptive_radius_bounds_the_impulse_response():
    """A change of one input texel moves outputs at most receptive_radius texels away (and that far)."""
    from mvfr.regularisation import receptive_radius

    torch.manual_seed(0)
    for levels in (1, 2, 3):
        model = RegNet3D(base_channels=2, levels=levels).double()
        torch.nn.init.normal_(model.head.weight, std=0.5)
        r = receptive_radius(model)
        assert r == 3 + 5 * (2**levels - 1)
        S = 2 * r + 24
        c = S // 2 + 1  # odd: the far side of the stride-2 grids
        vol = torch.rand(1, 9, S, S, dtype=torch.float64)
        mask = torch.ones(1, S, S, dtype=torch.float64)
        base = model(vol, mask)
        vol2 = vol.clone()
        vol2[0, :, c, c] += 1.0
        changed = (model(vol2, mask) - base).abs().amax(dim=(0, 1)) > 0  # [S, S]
        rows, cols = np.nonzero(changed.numpy())
        reach = max(np.abs(rows - c).max(), np.abs(cols - c).max())
        assert reach <= r
        assert reach >= r - 2 ** (levels - 1)  # the bound is tight up to the grid's alignment


def test_tiled_inference_equals_whole_volume_at_the_shipped_64_16_setting():
    """Shipped checkpoint, default tile 64 and overlap 16 (raised to the receptive radius, origins on
    the U-Net's 8-texel grid): identical to whole-volume inference. Before: 0.41 steps apart."""
    from mvfr.regularisation import DEFAULT_OVERLAP, DEFAULT_TILE, synthetic_score_volume
    from models.reg_net import build_reg_net

    assert (DEFAULT_TILE, DEFAULT_OVERLAP) == (64, 16)
    from conftest import ROOT

    ckpt = torch.load(ROOT / "predefine_data" / "checkpoint_reg.pt", weights_only=True)
    model = build_reg_net(ckpt["options"])
    model.load_state_dict(ckpt["model"], strict=True)
    S, D = 150, 41  # 3 x 3 tiles, the last ones cut; a short D keeps it fast (the network is local in D too)
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:S, 0:S] / S
    mask = (xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.2
    vol = synthetic_score_volume(8 * np.sin(3 * xx) * np.cos(2 * yy), mask, rng, sigma_steps=2.0, d_size=D)
    whole = predict_steps(model, vol, mask, tile=S, overlap=0)
    tiled = predict_steps(model, vol, mask)
    assert np.abs(whole[mask]).max() > 1.0  # a non-trivial answer
    assert np.abs(tiled - whole).max() < 1e-3


def test_training_steps_reduce_the_loss_on_noisy_volumes():
    """A few Adam steps on fabricated volumes (GT peak + a distractor peak + noise) lower the loss."""
    rng = np.random.default_rng(1)
    S, D = 16, 31
    y, x = np.mgrid[0:S, 0:S]
    gt = (4.0 * np.sin(x / 4.0) + 2.0 * np.cos(y / 5.0)).astype(np.float32)
    distractor = np.where(rng.random((S, S)) < 0.3, rng.uniform(-12, 12, (S, S)), 100.0)
    vol = gaussian_volume(gt, D, 2.0) * 0.8 + gaussian_volume(distractor.astype(np.float32), D, 1.0)
    vol = np.clip(vol + rng.normal(0, 0.05, vol.shape), 0, 1).astype(np.float32)
    valid = np.ones((S, S), bool)
    torch.manual_seed(0)
    model = RegNet3D(base_channels=2, levels=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        v, t, val, m = random_crops([vol], [gt], [valid], crop=8, batch=4, rng=rng)
        loss = reg_loss(soft_argmax(model(v, m), 1), t, val)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])


def test_random_crops_shapes_and_validity():
    rng = np.random.default_rng(0)
    vol = np.zeros((5, 12, 12), np.float32)
    valid = np.zeros((12, 12), bool)
    valid[4:, 4:] = True
    surf = np.ones((12, 12), bool)
    v, t, val, m = random_crops([vol], [np.zeros((12, 12), np.float32)], [valid], crop=6, batch=3, rng=rng, masks=[surf])
    assert v.shape == (3, 5, 6, 6) and t.shape == (3, 6, 6) and val.shape == (3, 6, 6) and val.dtype == torch.bool
    assert all(x.float().mean() >= 0.25 for x in val)
    assert m.all()


def test_reg_loss_ignores_invalid_texels():
    pred = torch.zeros(1, 2, 2)
    target = torch.tensor([[[0.5, 1e6], [0.5, 1e6]]])
    valid = torch.tensor([[[True, False], [True, False]]])
    assert reg_loss(pred, target, valid).item() == pytest.approx(0.125)  # 0.5 * 0.5^2
    assert reg_loss(pred, target, torch.zeros_like(valid)).item() == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        reg_loss(pred, target[:, :1], valid)


# -------------------------------------------------------------------------------- volume files


def test_load_volume_reads_float16_and_checks_shape(tmp_path):
    p = tmp_path / "ori_volume_001_01.npy"
    np.save(p, np.full((7, 4, 4), 0.5, np.float16))
    vol = load_volume(p, d_size=7, size=4)
    assert vol.dtype == np.float32 and vol.shape == (7, 4, 4)
    with pytest.raises(ValueError, match="--d_size"):
        load_volume(p, d_size=9)
    with pytest.raises(ValueError, match="does not exist"):
        load_volume(tmp_path / "missing.npy")
    np.save(p, np.zeros((7, 4, 5), np.float16))
    with pytest.raises(ValueError, match="expected \\[D, S, S\\]"):
        load_volume(p)


# ------------------------------------------------------------------------------ UV-grid mesh


def test_uv_grid_mesh_3x3_block_has_9_vertices_8_outward_triangles():
    S = 5
    valid = np.zeros((S, S), bool)
    valid[1:4, 1:4] = True
    # a plane facing +z laid out like the template's uvs: u -> +x, v (up) -> +y
    uv = (np.stack(np.meshgrid(np.arange(S), np.arange(S), indexing="xy"), -1) + 0.5) / S
    pos = np.stack([uv[..., 0], 1.0 - uv[..., 1], np.zeros((S, S))], -1).astype(np.float32)
    mesh = uv_grid_mesh(pos, valid)
    assert len(mesh.vertices) == 9 and len(mesh.faces) == 8
    fn = face_normals(mesh.vertices, mesh.faces)
    np.testing.assert_allclose(fn, np.tile([0.0, 0.0, 1.0], (8, 1)), atol=1e-9)
    np.testing.assert_allclose(mesh.normals, np.tile([0.0, 0.0, 1.0], (9, 1)), atol=1e-9)
    assert mesh.uvs.shape == (9, 2)


def test_train_reg_targets_follow_the_volumes_frame(tmp_path):
    """train_reg reads the truth in the frame the volume was searched in: gen_maps' base without eval_if's
    search maps, the refined base with them (here the base moved 0.5 units along its normals: every
    target 0.5 units, 2.5 steps, less)."""
    import train_reg
    from mvfr.atomic_io import save_npy
    from mvfr.datafolder import DataFolder

    S, D, interval = 8, 21, 0.2  # mm per step; no Rt_scale_dict: 1 mm per unit
    folder = DataFolder(tmp_path / "data")
    folder.make_tree()
    fid = "001_01"
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    pos = np.stack([xx, yy, np.zeros_like(xx)], -1)
    nrm = np.zeros_like(pos)
    nrm[..., 2] = 1.0
    mv = np.full((S, S), 1.0, np.float32)
    for name, arr in (("pos_map", pos), ("norm_map", nrm), ("mv_map", mv), ("valid_map", np.ones((S, S), bool))):
        save_npy(folder.map("train", name, fid), arr)
    save_npy(folder.volume("train", fid), np.zeros((D, S, S), np.float16))
    plain = train_reg.load_training_face(folder, fid, D, interval)
    np.testing.assert_allclose(plain["target"], 5.0)
    save_npy(folder.search_map("train", "pos_map", fid), pos + 0.5 * nrm)
    save_npy(folder.search_map("train", "norm_map", fid), nrm)
    moved = train_reg.load_training_face(folder, fid, D, interval)
    np.testing.assert_allclose(moved["target"], 2.5, atol=1e-5)


def test_close_openings_spans_the_hole_with_the_surroundings_membrane():
    """Behind an opening the search finds an eyeball or teeth: the texels of the opening take the membrane
    their surroundings span (a plane stays a plane, to 1e-4), every other texel is left as it was; the
    shipped model's fills are where the openings are."""
    from mvfr.regularisation import close_openings
    from mvfr.uv_rasterizer import facial_mask, fill_mask

    S = 32
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    plane = np.stack([xx, yy, 0.3 * xx - 0.2 * yy + 5.0], -1)
    mask = np.ones((S, S), bool)
    mask[:, :2] = False
    hole = (np.abs(yy - 15) < 4) & (np.abs(xx - 12) < 7)
    found = plane.copy()
    found[hole, 2] -= 8.0  # an eyeball 8 units behind
    out = close_openings(found, mask, hole)
    np.testing.assert_allclose(out[hole], plane[hole], atol=1e-4)
    np.testing.assert_array_equal(out[~hole], found[~hole])
    fills = fill_mask(256)
    assert 0.01 < fills.sum() / facial_mask(256).sum() < 0.05 and not (fills & ~facial_mask(256)).any()
