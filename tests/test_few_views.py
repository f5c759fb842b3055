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


def test_flat_score_region_stays_on_the_base_surface_in_eval_reg(tmp_path):
    """The stage 3 fallback: where the IF volume is flat the regularised displacement is 0, where it has
    a sharp peak it is kept."""
    from models.reg_net import RegNet3D
    from mvfr.regularisation import predict_steps

    D, S = 41, 32
    vol = np.full((D, S, S), 0.3, np.float32)
    d = np.arange(D)[:, None, None]
    vol[:, :, : S // 2] = np.exp(-((d - 30) ** 2) / (2 * 2.0**2))  # left half: a sharp peak 10 steps out
    mask = np.ones((S, S), bool)
    torch.manual_seed(0)
    steps = predict_steps(RegNet3D(base_channels=2, levels=2), vol, mask, device="cpu")
    conf = confidence.smooth_confidence(confidence.score_confidence(vol, 6), mask)
    out = steps * confidence.fallback_weight(conf, 0.05, 0.2)
    assert np.abs(out[:, -8:]).max() == 0.0  # the flat half stays on the base surface
    assert np.abs(out[:, :8] - 10).max() < 1.0  # the peaked half keeps its displacement


def test_ids_patterns_expand_against_id_json(tmp_path):
    from mvfr.datafolder import DataError, DataFolder
    from mvfr.stage import expand_ids

    folder = DataFolder(tmp_path)
    (tmp_path / "id.json").write_text('{"train": ["001_01", "002_03", "010_01", "011_02"], "eval": ["021_04"]}')
    assert expand_ids(["00?_*"], folder) == ["001_01", "002_03"]
    assert expand_ids(["01?_*", "21_4", "010_01"], folder) == ["010_01", "011_02", "021_04"]
    with pytest.raises(DataError, match="matches no face id"):
        expand_ids(["3??_*"], folder)
