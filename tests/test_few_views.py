"""Few views: view-subset sampling for training, the view-count aggregation, warm starts, and the
confidence fallback (a texel whose score says nothing stays on the base surface)."""

import numpy as np
import pytest
import torch

from models.implicit_function import ImplicitFunction, init_from
from mvfr import confidence
from mvfr.mvs.aggregation import view_count_feature
from mvfr.mvs.geometry import FaceHypotheses, subset_views
from mvfr.mvs.search import SearchPlan
from mvfr.mvs.training import sample_view_subset


def test_view_subset_counts_cover_two_to_all_and_only_seeing_views():
    seeing = np.array([1, 0, 1, 1, 1, 0, 1, 1, 1, 1], bool)  # 8 of 10 views see the patch
    rng = np.random.default_rng(0)
    counts = []
    for _ in range(2000):
        v = sample_view_subset(seeing, rng)
        assert np.all(seeing[v]), "a view that does not see the patch was drawn"
        assert len(np.unique(v)) == len(v) and np.all(np.diff(v) > 0)
        counts.append(len(v))
    counts = np.bincount(counts, minlength=9)
    assert counts[:2].sum() == 0 and counts[2:].min() > 150, counts  # every count 2..8 drawn, roughly uniformly
    assert counts[8] > 0 and counts[2] > 0


def test_view_subset_with_too_few_seeing_views_and_cap():
    rng = np.random.default_rng(1)
    assert list(sample_view_subset(np.array([0, 1, 0], bool), rng)) == [1]
    for _ in range(50):
        assert 2 <= len(sample_view_subset(np.ones(10, bool), rng, max_views=3)) <= 3


def test_subset_views_keeps_the_chosen_views():
    V, T = 4, 5
    setup = FaceHypotheses(torch.zeros(T, dtype=torch.long), torch.arange(V * T * 3.0).reshape(V, T, 3), torch.ones(V, T, 3),
                           torch.rand(V, T) > 0.5, 10, 10, 5, 1.0, 8)
    sub = subset_views(setup, [3, 1])
    assert torch.equal(sub.hp, setup.hp[[3, 1]]) and torch.equal(sub.view_ok, setup.view_ok[[3, 1]])
    assert sub.texels is setup.texels


def test_view_count_feature():
    vis = torch.tensor([[1, 1, 0, 1], [1, 1, 0, 0], [0, 1, 1, 0], [0, 1, 0, 0]], dtype=torch.bool)
    f = view_count_feature(vis)
    assert torch.allclose(f, torch.tensor([1.0, 0.5, 0.0, 0.0]))  # 2 views -> 1, 4 views -> 0.5, < 2 -> 0


def test_count_aggregation_sees_the_number_of_views():
    torch.manual_seed(0)
    net = ImplicitFunction(8, [18, 16, 1])
    assert net.use_mean and net.use_count
    samples = torch.randn(4, 6, 8)
    d = torch.zeros(6)
    few = torch.zeros(4, 6, dtype=torch.bool)
    few[:2] = True
    s_all, ok_all = net.score_samples(samples * 0 + 1, torch.ones(4, 6, dtype=torch.bool), d)
    s_few, ok_few = net.score_samples(samples * 0 + 1, few, d)  # same mean and variance, 2 views instead of 4
    assert ok_all.all() and ok_few.all()
    assert not torch.allclose(s_all, s_few)


def test_warm_start_from_variance_only_checkpoint_scores_the_same():
    torch.manual_seed(0)
    old = ImplicitFunction(8, [9, 16, 1]).eval()
    new = ImplicitFunction(8, [18, 16, 1]).eval()
    skipped = init_from(new, old.state_dict())
    assert skipped == []
    samples, vis = torch.randn(3, 7, 8), torch.rand(3, 7) > 0.2
    samples = samples * vis[..., None]
    d = torch.linspace(-1, 1, 7)
    with torch.no_grad():
        a, ok_a = old.score_samples(samples, vis, d)
        b, ok_b = new.score_samples(samples, vis, d)
    assert torch.equal(ok_a, ok_b) and ok_a.any()
    assert torch.allclose(a, b, atol=1e-6)
    for name, value in old.feature_net.state_dict().items():
        assert torch.equal(new.feature_net.state_dict()[name], value)


def test_confidence_sharp_flat_and_ambiguous():
    D = 101
    d = np.arange(D)[:, None]
    sharp = 0.9 * np.exp(-((d - 40) ** 2) / (2 * 5.0**2)) + 0.02
    flat = np.full((D, 1), 0.4)
    twin = 0.8 * np.exp(-((d - 20) ** 2) / 50.0) + 0.78 * np.exp(-((d - 80) ** 2) / 50.0)
    conf = confidence.score_confidence(np.concatenate([sharp, flat, twin, np.zeros((D, 1))], 1), exclusion_steps=15)
    assert conf[0] > 0.85 and conf[1] == 0.0 and conf[2] < 0.05 and conf[3] == 0.0


def test_fallback_weight_ramp():
    w = confidence.fallback_weight(np.array([0.0, 0.05, 0.125, 0.2, 0.9]), 0.05, 0.2)
    assert np.allclose(w, [0, 0, 0.5, 1, 1])
    with pytest.raises(ValueError):
        confidence.fallback_weight(np.zeros(2), 0.3, 0.2)
    assert np.all(confidence.fallback_weight(np.zeros(3), 0.05, 0.0) == 1)  # --conf_high 0: no fallback


def test_continuation_keeps_confident_values_and_carries_them_smoothly_into_the_rest():
    """Known answers of the fallback's continuation: confident texels keep their value exactly; with no
    confident texel everything stays 0 (the base surface); a constant confident half carries into the
    other half, fading with distance over about the reach, and a zero reach keeps it at the border."""
    S = 64
    mask = np.ones((S, S), bool)
    mask[:, 60:] = False
    v = np.full((S, S), 4.0, np.float32)
    w = np.zeros((S, S), np.float32)
    w[:, :20] = 1.0
    out = confidence.continue_confident(v, w, mask, reach_texels=10.0)
    np.testing.assert_array_equal(out[:, :20], 4.0)
    assert np.all(out[:, 60:] == 0)
    row = out[32, 20:60]
    assert np.all(np.diff(row) < 0) and 2.5 < row[0] < 4.0 and row[-1] < 0.2, row[[0, 10, 39]]
    assert np.all(confidence.continue_confident(v, np.zeros_like(w), mask) == 0)
    half = confidence.continue_confident(v, np.where(mask, 0.5, 0.0), mask, reach_texels=10.0)
    assert np.all(half[mask] > 2.0) and np.all(half[mask] < 4.0)  # half the value, plus half its continuation


def test_flat_score_texel_stays_on_the_base_surface_in_eval_if():
    """eval_if.run_face: a texel whose every hypothesis scores the same keeps displacement 0."""
    import eval_if
    from mvfr.mvs.face_inputs import FaceInputs

    class Flat(torch.nn.Module):  # a model whose score depends on d only for texel 0
        feature_channels = 1

        def view_features(self, images, dtype=None):
            from mvfr.mvs.sampling import ViewFeatures

            return ViewFeatures(torch.zeros(images.shape[0], 1, 4, 4), None, stride=2)

        def score_samples(self, samples, vis, d_norm):
            return torch.full_like(d_norm, 0.5), torch.ones_like(d_norm, dtype=torch.bool)

    S, D = 4, 21
    mask = np.zeros((S, S), bool)
    mask[1:3, 1:3] = True
    T = int(mask.sum())
    setup = FaceHypotheses(torch.as_tensor(np.flatnonzero(mask)), torch.ones(2, T, 3), torch.zeros(2, T, 3),
                           torch.ones(2, T, dtype=torch.bool), 8, 8, D, 0.1, S)
    pos = np.zeros((S, S, 3), np.float32)
    nrm = np.zeros((S, S, 3), np.float32)
    nrm[..., 2] = 1
    face = FaceInputs("001_01", np.zeros((2, 8, 8, 3), np.uint8), setup, mask, pos, nrm, 1.0, 0.1)
    out = eval_if.run_face(Flat(), face, SearchPlan("full"), 1000, "cpu", low_precision=False, exclusion=3)
    assert np.all(out["conf"] == 0) and np.all(out["disp"] == 0)
    assert out["scored"][mask].all()  # scored, but without evidence


def test_flat_score_region_continues_the_confident_surface_in_eval_reg(tmp_path):
    """eval_reg.process_face on a tiny data folder: where the IF volume has one sharp peak the surface
    moves by it (steps -> mm -> capture units with Rt_scale_dict); where it has two rival peaks or none
    the confident lift carries over smoothly and fades to the base surface within a few texels (the
    continuation's reach, 25 texels at S = 256, is 3 at S = 32), although the regulariser's soft-argmax
    alone lands between the rivals."""
    import eval_reg
    from models.reg_net import RegNet3D
    from mvfr.atomic_io import save_json
    from mvfr.datafolder import DataFolder
    from mvfr.mvs.face_inputs import search_mask
    from options import parse_options

    D, S, fid, mm_per_unit, interval = 41, 32, "001_01", 2.5, 0.5
    folder = DataFolder(tmp_path)
    opt = parse_options("eval_reg", ["--dataroot", str(tmp_path), "--split", "eval", "--d_size", str(D),
                                     "--interval_scale", str(interval)])
    assert (opt.conf_low, opt.conf_high, opt.sigma) == (0.05, 0.2, 1.0)  # exclusion: 3 sigma = 6 steps
    d = np.arange(D)[:, None, None] - D // 2  # hypothesis offset in steps
    peak = lambda at, h: h * np.exp(-((d - at) ** 2) / (2 * 2.0**2))  # noqa: E731
    vol = np.broadcast_to(np.full((D, 1, 1), 0.3, np.float32), (D, S, S)).copy()  # right third: flat
    vol[:, :, :11] = peak(10, 0.9)  # left third: one sharp peak 10 steps out (conf ~0.9)
    vol[:, :, 11:21] = peak(5, 0.8) + peak(15, 0.78)  # middle third: two rivals 10 steps apart (conf 0.02)
    rows, cols = np.mgrid[0:S, 0:S]
    pos = np.stack([cols, rows, np.zeros_like(rows)], -1).astype(np.float32)
    nrm = np.zeros((S, S, 3), np.float32)
    nrm[..., 2] = 1.0
    for name, arr in (("pos_map", pos), ("norm_map", nrm)):
        folder.map("eval", name, fid).parent.mkdir(parents=True, exist_ok=True)
        np.save(folder.map("eval", name, fid), arr)
    folder.volume("eval", fid).parent.mkdir(parents=True, exist_ok=True)
    np.save(folder.volume("eval", fid), vol.astype(np.float16))
    save_json(folder.rt_scale_json, {"1": {"1": [mm_per_unit, np.eye(3, 4).tolist()]}})
    torch.manual_seed(0)
    model = RegNet3D(base_channels=2, levels=2).eval()  # untrained: a sharpened soft-argmax of the score

    eval_reg.process_face(opt, folder, model, "cpu", fid)
    mask = search_mask(pos, nrm)
    lift_mm = (np.load(folder.reg_map(fid))[..., 2] - pos[..., 2]) * mm_per_unit
    sharp, rivals, flat = (mask & (cols >= a) & (cols <= b) for a, b in ((2, 8), (13, 18), (23, 29)))
    assert sharp.sum() > 20 and rivals.sum() > 20 and flat.sum() > 20
    np.testing.assert_allclose(lift_mm[sharp], 10 * interval, atol=0.05)  # 5 mm = 2 units out, in mm again
    assert np.abs(lift_mm[~mask]).max() == 0.0
    profile = np.array([lift_mm[mask & (cols == c)].mean() for c in range(11, 30)])
    assert np.all(np.diff(profile) <= 1e-6) and profile[0] > 1.0  # carried over, fading with distance
    assert profile[0] - profile[7] > 1.0  # it fades across the rivals' third, where a soft-argmax would hold level
    assert np.abs(lift_mm[flat]).max() < 0.03 * 10 * interval  # 4 reaches from any evidence: 3 % of the lift left
    conf = np.load(folder.conf_map("reg", fid))
    assert conf[sharp].min() > 0.85 and conf[rivals].max() < 0.05 and conf[flat].max() == 0.0
    # without the fallback (--conf_high 0) the rivals' texels would move: the fallback is what holds them
    off = parse_options("eval_reg", ["--dataroot", str(tmp_path), "--d_size", str(D), "--interval_scale", str(interval),
                                     "--conf_high", "0"])
    steps, _ = eval_reg.regularised_steps(off, model, vol, mask, "cpu")
    assert steps[rivals].min() > 5.0


def test_ids_patterns_expand_against_id_json(tmp_path):
    from mvfr.datafolder import DataError, DataFolder
    from mvfr.stage import expand_ids

    folder = DataFolder(tmp_path)
    (tmp_path / "id.json").write_text('{"train": ["001_01", "002_03", "010_01", "011_02"], "eval": ["021_04"]}')
    assert expand_ids(["00?_*"], folder) == ["001_01", "002_03"]
    assert expand_ids(["01?_*", "21_4", "010_01"], folder) == ["010_01", "011_02", "021_04"]
    with pytest.raises(DataError, match="matches no face id"):
        expand_ids(["3??_*"], folder)
