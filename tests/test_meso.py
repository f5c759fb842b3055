"""Mesoscopic detail on the ICT face tile (mvfr.synthesis.meso): layout per identity, displacement per
expression, and the real-scale targets (std 0.05-0.2 mm, >= 4 deg of normal perturbation at 0.3 mm)."""

import dataclasses

import numpy as np
import pytest

from mvfr.synthesis import ict, meso

SIZE = 1024


@pytest.fixture(scope="module")
def model():
    return ict.load_model()


def _weights(model, **shapes):
    e = np.zeros(len(model.expression_names))
    for name, w in shapes.items():
        e[model.expression_index(name)] = w
    return e


@pytest.fixture(scope="module")
def expressions(model):
    return {
        "neutral": np.zeros(len(model.expression_names)),
        "smile": _weights(model, mouthSmile_L=0.85, mouthSmile_R=0.85, cheekSquint_L=0.6, cheekSquint_R=0.6,
                          eyeSquint_L=0.25, eyeSquint_R=0.25, jawOpen=0.12),
        "brow": _weights(model, browInnerUp_L=1.0, browInnerUp_R=1.0, browOuterUp_L=1.0, browOuterUp_R=1.0),
    }


@pytest.fixture(scope="module")
def identities(model):
    """Three identities (young, middle-aged, old): vertices, layout, mm per texel and coverage at SIZE."""
    out = []
    for k, age in enumerate((0.2, 0.55, 0.9)):
        rng = np.random.default_rng([7, k])
        v = model.head(ict.sample_identity_weights(rng))
        layout = meso.sample_layout(model, v, np.random.default_rng([8, k]), age)
        spacing, cov = meso.tile_mm_per_texel(model, v, SIZE)
        out.append({"vertices": v, "layout": layout, "spacing": spacing, "covered": cov, "age": age})
    return out


@pytest.fixture(scope="module")
def maps(model, identities, expressions):
    return [{name: meso.displacement_map(ident["layout"], model, e, SIZE) for name, e in expressions.items()}
            for ident in identities]


def test_map_shape_dtype_finite(maps):
    for per_id in maps:
        for h in per_id.values():
            assert h.shape == (SIZE, SIZE) and h.dtype == np.float32
            assert np.isfinite(h).all()
            assert h.min() < -0.1 and h.max() > 0.0


def test_zero_outside_coverage(model, identities, maps):
    for ident, per_id in zip(identities, maps):
        for h in per_id.values():
            assert np.all(h[~ident["covered"]] == 0.0)
    # and at a small size, where the eye slits are thinner than a texel
    ident = identities[0]
    _, cov = ict.uv_tile_map(model, ident["vertices"], 256)
    h = meso.displacement_map(ident["layout"], model, np.zeros(len(model.expression_names)), 256)
    assert np.all(h[~cov] == 0.0) and np.abs(h[cov]).max() > 0.05


def test_determinism(model, identities):
    ident = identities[1]
    again = meso.sample_layout(model, ident["vertices"], np.random.default_rng([8, 1]), ident["age"])
    for f in dataclasses.fields(meso.DetailLayout):
        a, b = getattr(ident["layout"], f.name), getattr(again, f.name)
        if isinstance(a, dict):
            assert all(np.array_equal(a[k], b[k]) for k in a)
        else:
            assert np.array_equal(a, b), f.name
    e = _weights(model, mouthSmile_L=0.7)
    h1 = meso.displacement_map(ident["layout"], model, e, 256)
    h2 = meso.displacement_map(again, model, e, 256)
    assert np.array_equal(h1, h2)
    # the optional rng jitters the activation, deterministically
    j1 = meso.displacement_map(ident["layout"], model, e, 256, rng=np.random.default_rng(3))
    j2 = meso.displacement_map(ident["layout"], model, e, 256, rng=np.random.default_rng(3))
    assert np.array_equal(j1, j2) and not np.array_equal(j1, h1)


def test_identities_have_different_layouts(identities, maps):
    cov = meso.tile_coverage(SIZE)
    for name in ("neutral", "smile"):
        for a, b in ((0, 1), (0, 2), (1, 2)):
            r = np.corrcoef(maps[a][name][cov], maps[b][name][cov])[0, 1]
            assert r < 0.3, (name, a, b, r)
    # wrinkles sit at identity-dependent places too: the forehead lines of two identities differ
    fa = [ident["layout"].uv[ident["layout"].family == meso.FAMILY_NAMES.index("forehead")] for ident in identities]
    assert not np.allclose(np.median(fa[0], 0), np.median(fa[1], 0), atol=1e-3) or len(fa[0]) != len(fa[1])


def test_std_and_normal_perturbation_targets(identities, maps):
    """Inside the facial area, smiling and raised brows: std 0.05-0.2 mm; >= 4 deg mean normal perturbation
    on a 0.3 mm grid."""
    for ident, per_id in zip(identities, maps):
        area = meso.region_mask(ident["layout"], "facial_area", SIZE)
        assert area.sum() > 0.1 * SIZE * SIZE
        for name in ("smile", "brow"):
            h = per_id[name]
            std = float(h[area].std())
            ang = float(meso.normal_perturbation_deg(h, ident["spacing"], grid_mm=0.3)[area].mean())
            assert 0.05 <= std <= 0.2, (ident["age"], name, std)
            assert ang >= 4.0, (ident["age"], name, ang)


def test_wrinkles_follow_the_expression(model, identities, maps):
    for ident, per_id in zip(identities, maps):
        fore = meso.region_mask(ident["layout"], "forehead", SIZE)
        assert fore.sum() > 1000
        assert per_id["brow"][fore].std() > 2.0 * per_id["neutral"][fore].std()
        # a smile deepens the nasolabial folds and crow's feet: the smile's extra detail is below the
        # surface (grooves) and lies mostly outside the forehead
        d = per_id["smile"] - per_id["neutral"]
        area = meso.region_mask(ident["layout"], "facial_area", SIZE)
        assert d[area].min() < -0.2 and np.abs(d[fore]).max() < 0.05
    # one-sided smile: the subject's left (+x) side changes more than the right
    ident = identities[1]
    pos, cov = ict.uv_tile_map(model, ident["vertices"], SIZE)
    left = meso.displacement_map(ident["layout"], model, _weights(model, mouthSmile_L=1.0), SIZE)
    d = np.abs(left - maps[1]["neutral"])
    area = meso.region_mask(ident["layout"], "facial_area", SIZE)
    assert d[area & (pos[..., 0] > 10)].sum() > 5 * d[area & (pos[..., 0] < -10)].sum()


def test_resolution_free(model, identities):
    """One layout at two sizes: the finer map, area-averaged to the coarser size, is the coarser map."""
    import cv2

    lay = identities[1]["layout"]
    e = _weights(model, mouthSmile_L=0.8, browInnerUp_R=0.6)
    fine = meso.displacement_map(lay, model, e, 512)
    coarse = meso.displacement_map(lay, model, e, 256)
    cov = meso.tile_coverage(256)
    down = cv2.resize(fine, (256, 256), interpolation=cv2.INTER_AREA)
    assert np.corrcoef(down[cov], coarse[cov])[0, 1] > 0.98
    assert abs(down[cov].std() / coarse[cov].std() - 1) < 0.1
    odd = meso.displacement_map(lay, model, e, 300)
    assert odd.shape == (300, 300) and np.isfinite(odd).all()


def test_layout_sizes_are_real(model, identities):
    for ident in identities:
        lay = ident["layout"]
        pores = (lay.ds_uv == 0) & (lay.family == 0)
        assert pores.sum() > 10000
        assert lay.depth_mm[pores].min() >= -0.08 - 1e-6 and lay.depth_mm[pores].max() <= -0.02 + 1e-6
        # pore diameters (2.5 sigma) in mm, with the identity's local mm per uv
        surf_scale = meso.sample_at(np.sqrt(np.prod(ident["spacing"], -1)) * SIZE, lay.uv[pores])
        diam = 2.5 * lay.sigma_uv[pores] * surf_scale
        ok = surf_scale > 0
        assert np.percentile(diam[ok], 5) >= 0.04 and np.percentile(diam[ok], 95) <= 0.27
        for name in ("forehead", "crows_feet", "nasolabial", "glabella", "neck"):
            fam = lay.family == meso.FAMILY_NAMES.index(name)
            assert fam.any(), name
            assert -1.0 - 1e-6 <= lay.depth_mm[fam].min() <= -0.15, name
        assert np.all((lay.residual >= 0) & (lay.residual <= 1))
    # older skin: more fine lines
    n_fine = [((l["layout"].ds_uv > 0) & (l["layout"].family == 0)).sum() for l in identities]
    assert n_fine[0] < n_fine[2]


def test_wrinkle_cross_section_has_shoulders_and_tapered_ends(model, identities):
    """A single straight groove drawn by the renderer: depth at the centre, slight raised shoulders,
    fading ends."""
    base = identities[0]["layout"]
    n = 400
    u = np.linspace(0.30, 0.40, n)
    uv = np.stack([u, np.full(n, 0.45)], 1).astype(np.float32)
    sigma_uv = np.full(n, 3.0 / SIZE, np.float32)  # 3 texels at SIZE
    t = np.linspace(0, 1, n)
    taper = np.clip(np.minimum(t, 1 - t) / 0.2, 0, 1)
    lay = dataclasses.replace(
        base, uv=uv, sigma_uv=sigma_uv, depth_mm=(-0.5 * taper).astype(np.float32),
        ds_uv=np.full(n, u[1] - u[0], np.float32),
        family=np.zeros(n, np.int16), side=np.zeros(n, np.float32), fade=np.ones_like(base.fade),
        relief={k: np.zeros_like(a) for k, a in base.relief.items()})
    h = meso.displacement_map(lay, model, np.zeros(len(model.expression_names)), SIZE)
    col = int(0.35 * SIZE)
    row = int(round((1 - 0.45) * SIZE - 0.5))
    profile = h[row - 30 : row + 31, col]
    assert profile.argmin() == 30
    assert -0.55 < profile.min() < -0.45
    assert 0.0 < profile.max() < 0.1 * 0.5  # shoulders: raised, slightly
    ends = h[row, int(0.30 * SIZE)], h[row, int(0.40 * SIZE)]
    assert all(e > -0.1 for e in ends)


def test_sample_at_texel_convention():
    S = 8
    jj, ii = np.meshgrid(np.arange(S), np.arange(S))
    m = (10 * ii + jj).astype(np.float32)
    uv = np.array([[(2 + 0.5) / S, 1 - (3 + 0.5) / S], [(2 + 1.0) / S, 1 - (3 + 0.5) / S], [(0.5) / S, 1 - 0.5 / S]])
    np.testing.assert_allclose(meso.sample_at(m, uv), [32.0, 32.5, 0.0], atol=1e-5)
    three = np.stack([m, 2 * m, 3 * m], -1)
    assert meso.sample_at(three, uv).shape == (3, 3)
    with pytest.raises(ValueError):
        meso.sample_at(np.zeros((4, 5)), uv)


def test_normal_perturbation_known_answer():
    S = 64
    h = np.tile(np.arange(S, dtype=np.float32) * 0.02, (S, 1))  # 0.02 mm per texel along columns
    ang = meso.normal_perturbation_deg(h, 0.2)  # 0.2 mm per texel: slope 0.1
    np.testing.assert_allclose(ang[5:-5, 5:-5], np.degrees(np.arctan(0.1)), rtol=1e-4)
    sp = np.zeros((S, S, 2), np.float32)
    sp[..., 0], sp[..., 1] = 0.1, 0.2
    np.testing.assert_allclose(meso.normal_perturbation_deg(h.T, sp)[5:-5, 5:-5], np.degrees(np.arctan(0.2)), rtol=1e-4)
    with pytest.raises(ValueError):
        meso.normal_perturbation_deg(h, np.ones((3, 3)))


def test_mm_per_texel_known_answer():
    S = 16
    jj, ii = np.meshgrid(np.arange(S), np.arange(S))
    pos = np.stack([0.3 * jj, -0.1 * ii, np.zeros_like(ii)], -1).astype(np.float32)
    cov = np.ones((S, S), bool)
    cov[:, :4] = False
    sp = meso.mm_per_texel(pos, cov)
    np.testing.assert_allclose(sp[cov], np.tile([0.1, 0.3], (cov.sum(), 1)), rtol=1e-5)
    assert np.all(sp[~cov] == 0)


def test_family_gains(model):
    names = tuple(model.expression_names)
    g = meso.family_gains(np.zeros(len(names)), names)
    assert g.shape == (len(meso.FAMILY_NAMES), 2)
    assert np.all(g[0] == 1) and np.all(g[1:] == 0)
    g = meso.family_gains(_weights(model, browInnerUp_L=1.0), names)
    f = meso.FAMILY_NAMES.index("forehead")
    assert g[f, 1] > 0.5 and g[f, 0] == 0  # subject's left only
    g = meso.family_gains(_weights(model, mouthPucker=1.0), names)
    assert np.all(g[meso.FAMILY_NAMES.index("lip_lines")] > 0.5)
    assert np.all(g[meso.FAMILY_NAMES.index("crows_feet")] == 0)
    with pytest.raises(ValueError):
        meso.family_gains(np.zeros(3), names)


def test_bad_inputs(model, identities):
    with pytest.raises(ValueError):
        meso.sample_layout(model, np.zeros((10, 3)), np.random.default_rng(0), 0.5)
    with pytest.raises(ValueError):
        meso.sample_layout(model, identities[0]["vertices"], np.random.default_rng(0), 1.5)
    with pytest.raises(ValueError):
        meso.displacement_map(identities[0]["layout"], model, np.zeros(5), 256)
