"""Procedural appearance of the synthetic heads (mvfr.synthesis.skin)."""

import dataclasses

import cv2
import numpy as np
import pytest

from mvfr.synthesis import ict, skin

S = 256


@pytest.fixture(scope="module")
def model():
    return ict.load_model()


def _params(seed):
    return skin.sample_skin(np.random.default_rng(seed))


def _first_of_type(ftype, limit=500):
    for sd in range(limit):
        p = _params(sd)
        if p.fitzpatrick == ftype:
            return p
    raise AssertionError(f"no Fitzpatrick {ftype} in {limit} seeds")


def _texel(uv, size, tile=0):
    """(row, col) of the texel containing uv (DESIGN section 3 convention)."""
    u, v = float(uv[0]) - tile, float(uv[1])
    return int(np.clip((1 - v) * size, 0, size - 1)), int(np.clip(u * size, 0, size - 1))


def _patch_mean(img, rc, half=2):
    r, c = rc
    return img[r - half : r + half + 1, c - half : c + half + 1].reshape(-1, img.shape[-1] if img.ndim == 3 else 1).mean(0)


def _landmark_uv(model):
    return skin._vertex_uv(model)[model.landmarks68]


def _cheek_uv(model):
    lm = _landmark_uv(model)
    return 0.5 * (lm[2] + lm[31])  # between the jaw outline and the nose wing


def _upper_lip_uv(model):
    lm = _landmark_uv(model)
    return 0.5 * (lm[51] + lm[62])  # halfway between the upper lip's outer and inner contours


def test_shapes_dtypes_no_nan(model):
    p = _params(3)
    fa = skin.face_albedo(model, p, S, np.random.default_rng(0))
    ha = skin.head_albedo(model, p, S // 2, np.random.default_rng(0))
    fs = skin.face_specular(model, p, S, np.random.default_rng(0))
    hs = skin.head_specular(model, p, S // 2, np.random.default_rng(0))
    col, spec = skin.part_colors(model, p, np.random.default_rng(0), model.neutral)
    assert fa.shape == (S, S, 3) and fa.dtype == np.uint8
    assert ha.shape == (S // 2, S // 2, 3) and ha.dtype == np.uint8
    for sm, n in ((fs, S), (hs, S // 2)):
        assert sm.shape == (n, n) and sm.dtype == np.float32
        assert np.isfinite(sm).all() and sm.min() >= 0 and sm.max() <= 1
    assert col.shape == (model.num_vertices, 3) and col.dtype == np.float32
    assert spec.shape == (model.num_vertices,) and spec.dtype == np.float32
    assert np.isfinite(col).all() and np.isfinite(spec).all()
    assert col.min() >= 0 and col.max() <= 1 and spec.min() >= 0 and spec.max() <= 1
    # the skin is neither black nor saturated anywhere it is covered
    pos, cov = ict.uv_tile_map(model, model.neutral, S, parts=("face",), tile=0)
    assert 15 < fa[cov].mean() < 240
    lin = skin.srgb_to_linear(fa)
    assert lin.dtype == np.float32 and lin.shape == fa.shape and np.isfinite(lin).all()


def test_bad_input(model):
    p = _params(0)
    with pytest.raises(ValueError):
        skin.face_albedo(model, p, 4, np.random.default_rng(0))
    with pytest.raises(ValueError):
        skin.part_colors(model, p, np.random.default_rng(0), model.neutral[:100])
    with pytest.raises(ValueError):
        skin.cavity_shade(np.zeros((8, 8)), np.zeros((8, 8)), 1.0)


def test_deterministic_for_a_seed(model):
    a, b = _params(11), _params(11)
    assert a == b
    fa1 = skin.face_albedo(model, a, 128, np.random.default_rng(5))
    fa2 = skin.face_albedo(model, b, 128, np.random.default_rng(5))
    np.testing.assert_array_equal(fa1, fa2)
    h1 = skin.head_albedo(model, a, 64, np.random.default_rng(5))
    h2 = skin.head_albedo(model, b, 64, np.random.default_rng(5))
    np.testing.assert_array_equal(h1, h2)
    np.testing.assert_array_equal(skin.face_specular(model, a, 64, np.random.default_rng(5)),
                                  skin.face_specular(model, b, 64, np.random.default_rng(5)))
    c1 = skin.part_colors(model, a, np.random.default_rng(5), model.neutral)
    c2 = skin.part_colors(model, b, np.random.default_rng(5), model.neutral)
    np.testing.assert_array_equal(c1[0], c2[0])
    np.testing.assert_array_equal(c1[1], c2[1])


def test_different_seeds_differ(model):
    ps = [_params(sd) for sd in range(6)]
    assert len({p.seed for p in ps}) == 6
    assert len({(round(p.melanin, 6), p.hair_name, p.iris_name) for p in ps}) == 6
    a = skin.face_albedo(model, ps[0], 128, np.random.default_rng(0)).astype(float)
    b = skin.face_albedo(model, ps[1], 128, np.random.default_rng(0)).astype(float)
    assert np.abs(a - b).mean() > 3.0


def test_tone_range_covers_fitzpatrick_i_to_vi():
    ps = [_params(sd) for sd in range(60)]
    lab = skin.linear_to_lab(np.array([p.base_rgb for p in ps]))
    ita = skin.ita_deg(np.array([p.base_rgb for p in ps]))
    assert lab[:, 0].min() < 36 and lab[:, 0].max() > 68  # very dark and very light skin
    assert ita.min() < -30 and ita.max() > 55
    assert set(p.fitzpatrick for p in ps) == {1, 2, 3, 4, 5, 6}
    for p, t in zip(ps, ita):  # each base colour is in its type's ITA band
        lo, hi = skin.ITA_BANDS[p.fitzpatrick]
        assert lo - 0.5 <= t <= hi + 0.5
    # skin hue: red > green > blue, and chroma of a real skin (a*, b* positive, moderate)
    rgb = np.array([p.base_rgb for p in ps])
    assert np.all(rgb[:, 0] > rgb[:, 1]) and np.all(rgb[:, 1] > rgb[:, 2])
    assert np.all((lab[:, 1] > 3) & (lab[:, 1] < 25) & (lab[:, 2] > 5) & (lab[:, 2] < 30))


def test_population_statistics():
    ps = [_params(sd) for sd in range(300)]
    bearded = np.mean([p.beard > 0 for p in ps])
    assert 0.3 < bearded < 0.5
    light = [p.freckles for p in ps if p.fitzpatrick <= 2]
    dark = [p.freckles for p in ps if p.fitzpatrick >= 5]
    assert np.mean(light) > 0.5 and np.mean(dark) < 0.1 * np.mean(light)
    # dark skin has brown eyes; blue or green eyes come with light skin
    assert all(p.iris_name in ("dark_brown", "brown", "amber") for p in ps if p.fitzpatrick == 6)
    assert any(p.iris_name in ("blue", "green", "grey") for p in ps if p.fitzpatrick <= 2)


def test_rendered_tone_follows_type(model):
    cheek = _texel(_cheek_uv(model), 128)
    Ls = []
    for ftype in (1, 6):
        p = _first_of_type(ftype)
        img = skin.srgb_to_linear(skin.face_albedo(model, p, 128, np.random.default_rng(0)))
        Ls.append(skin.linear_to_lab(_patch_mean(img, cheek, 3))[0])
    assert Ls[0] > 60 and Ls[1] < 42


def test_lips_redder_than_cheeks(model):
    lip, cheek = _texel(_upper_lip_uv(model), S), _texel(_cheek_uv(model), S)
    for ftype in (1, 3, 6):
        p = _first_of_type(ftype)
        img = skin.srgb_to_linear(skin.face_albedo(model, p, S, np.random.default_rng(1)))
        a_lip = skin.linear_to_lab(_patch_mean(img, lip, 1))[1]
        a_cheek = skin.linear_to_lab(_patch_mean(img, cheek, 3))[1]
        assert a_lip > a_cheek + 4.0, (ftype, a_lip, a_cheek)


def test_specular_nose_above_cheek(model):
    lm = _landmark_uv(model)
    nose = _texel(lm[30], S)
    cheek = _texel(_cheek_uv(model), S)
    for sd in range(4):
        sp = skin.face_specular(model, _params(sd), S, np.random.default_rng(sd))
        assert _patch_mean(sp, nose, 2)[0] > _patch_mean(sp, cheek, 3)[0] + 0.05


def test_hair_cap_on_the_scalp_matte(model):
    p = _params(2)
    ha = skin.srgb_to_linear(skin.head_albedo(model, p, 128, np.random.default_rng(0)))
    hs = skin.head_specular(model, p, 128, np.random.default_rng(0))
    pos, cov = ict.uv_tile_map(model, model.neutral, 128, parts=("head",), tile=1)
    crown = cov & (pos[..., 1] > 120)  # top of the head
    neck = cov & (pos[..., 1] < -80) & (pos[..., 2] > -30)  # side / front of the neck
    assert np.abs(ha[crown].mean(0) - np.array(p.hair_color)).max() < 0.6 * max(p.hair_color) + 0.02
    assert np.abs(ha[neck].mean(0) - p.base_rgb).max() < 0.5 * p.base_rgb.max()
    assert hs[crown].mean() < hs[neck].mean()


def test_seam_consistent_colour(model):
    """Texels of the face and head tiles at the same 3D point have similar (low-passed) colour."""
    from scipy.spatial import cKDTree

    p = _params(7)
    n = 256
    pf, cf = ict.uv_tile_map(model, model.neutral, n, parts=("face",), tile=0)
    ph, ch = ict.uv_tile_map(model, model.neutral, n, parts=("head",), tile=1)

    def lowpass(img, cov):  # blur inside the coverage only
        w = cv2.GaussianBlur(cov.astype(np.float32), (0, 0), 2.0)
        return cv2.GaussianBlur(img * cov[..., None], (0, 0), 2.0) / np.maximum(w, 1e-3)[..., None]

    fa = lowpass(skin.srgb_to_linear(skin.face_albedo(model, p, n, np.random.default_rng(0))), cf)
    ha = lowpass(skin.srgb_to_linear(skin.head_albedo(model, p, n, np.random.default_rng(1))), ch)
    d, j = cKDTree(ph[ch]).query(pf[cf], distance_upper_bound=2.0)
    ok = np.isfinite(d)
    assert ok.sum() > 50
    diff = np.abs(fa[cf][ok] - ha[ch][j[ok]]).mean()
    rng = np.random.default_rng(0)
    rand = np.abs(fa[cf][rng.integers(0, cf.sum(), 2000)] - ha[ch][rng.integers(0, ch.sum(), 2000)]).mean()
    assert diff < 0.5 * rand


def test_iris_darker_than_sclera_with_a_pupil(model):
    for sd in range(3):
        p = _params(sd)
        col, spec = skin.part_colors(model, p, np.random.default_rng(sd), model.neutral)
        lum = col @ np.array([0.2126, 0.7152, 0.0722])
        V = model.neutral
        for side in ("left", "right"):
            a, b = ict.IRIS_VERTICES[side]
            P = V[a : b + 1]
            c = P.mean(0)
            r = np.linalg.norm((P - c)[:, :2], axis=1)
            front = P[:, 2] > np.percentile(P[:, 2], 60)
            lm = lum[a : b + 1]
            iris = front & (r < 4.5)
            sclera = ~front | (r > 9.0)
            assert lm[iris].mean() < 0.6 * lm[sclera].mean()
            assert lm[iris & (r < 1.0)].mean() < 0.03  # pupil
            assert spec[a : b + 1].min() > 0.5  # shiny
    t0, t1 = ict.PART_VERTICES["teeth"]
    assert spec[t0 : t1 + 1].mean() > 0.4 and lum[t0 : t1 + 1].mean() > 0.2


def test_eye_frame_radii(model):
    c, ax, r_iris, r_pupil, *_ = skin._eye_frame(model.neutral, "left")
    assert ax[2] > 0.9  # looks forward
    assert 4.5 <= r_iris <= 7.5 and 0.15 * r_iris < r_pupil < 0.6 * r_iris


def test_fine_texture_for_stereo(model):
    """At 1024 (0.28 mm per texel) the skin still has texel-scale albedo variation."""
    p = _params(4)
    img = skin.face_albedo(model, p, 1024, np.random.default_rng(0)).astype(np.float32)
    g = img.mean(-1)
    hp = g - cv2.GaussianBlur(g, (0, 0), 2.0)
    r, c = _texel(_cheek_uv(model), 1024)
    patch = hp[r - 20 : r + 20, c - 20 : c + 20]
    assert patch.std() / g[r - 20 : r + 20, c - 20 : c + 20].mean() > 0.01


def test_cavity_shade():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.2, 0.6, (64, 64, 3)).astype(np.float32)
    keep = a.copy()
    np.testing.assert_allclose(skin.cavity_shade(a, np.zeros((64, 64), np.float32), 1.0), a, rtol=1e-6)
    h = np.zeros((64, 64), np.float32)
    h[32, 32] = -0.2  # a pit
    h = cv2.GaussianBlur(h, (0, 0), 1.0) * 1.5  # about 0.05 mm deep
    out = skin.cavity_shade(a, h, 1.0, mm_per_texel=0.14)
    np.testing.assert_array_equal(a, keep)  # pure
    assert out.dtype == np.float32 and out.shape == a.shape
    ratio = out / a
    assert ratio[32, 32].max() < 0.9 and np.all(ratio >= 0.7 - 1e-6) and np.all(ratio <= 1 + 1e-6)
    assert np.allclose(ratio[5, 5], 1.0)  # flat skin far away is unchanged
    # stronger is darker; a bump (convex) is not darkened at its top
    assert (skin.cavity_shade(a, h, 2.0, mm_per_texel=0.14)[32, 32] < out[32, 32]).all()
    assert np.allclose(skin.cavity_shade(a, -h, 1.0, mm_per_texel=0.14)[32, 32], a[32, 32])


def test_params_frozen():
    p = _params(0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.melanin = 1.0  # type: ignore[misc]


def test_contact_sheet_of_six_identities(model, tmp_path):
    """Writes ``contact_sheet.png`` (6 identities' face tiles, 256 px, nothing rendered) in the test's
    temporary folder (pytest keeps the last few, to look at), reads it back, and checks the identities'
    cheek colours differ and are skin-like (red > blue)."""
    tiles = [skin.face_albedo(model, _params(sd), S, np.random.default_rng(sd)) for sd in range(6)]
    sheet = np.concatenate([np.concatenate(tiles[:3], 1), np.concatenate(tiles[3:], 1)], 0)
    path = tmp_path / "contact_sheet.png"
    assert cv2.imwrite(str(path), sheet[..., ::-1])
    np.testing.assert_array_equal(cv2.imread(str(path))[..., ::-1], sheet)  # the sheet, whole (PNG is lossless)
    r, c = _texel(_cheek_uv(model), S)
    means = np.array([t[r - 3 : r + 4, c - 3 : c + 4].reshape(-1, 3).mean(0) for t in tiles])
    assert np.all(means[:, 0] > means[:, 2])  # skin is red > blue
    d = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert d[np.triu_indices(6, 1)].min() > 0.3 and d.max() > 40.0  # all differ; light and dark among them
