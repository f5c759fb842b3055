"""Texture blending: upsampling, view weights, depth-test visibility, hole filling, round trip."""

import numpy as np
import pytest

from mvfr.camera import Camera
from mvfr.mesh_io import Mesh
from mvfr.texture import (
    blend_texture,
    colour_difference,
    fill_holes,
    normal_map_from_mesh,
    render_textured_view,
    upsample_map,
    view_weights,
)
from mvfr.uv_mesh import uv_grid_mesh
from mvfr.visibility import RayCaster


def plane_maps(S: int, z: float = 0.0, half: float = 1.0):
    """Position map of the square [-half, half]^2 at height z facing +z (u -> +x, v up -> +y)."""
    c = (np.arange(S) + 0.5) / S
    u, v = np.meshgrid(c, 1.0 - c, indexing="xy")
    pos = np.stack([(2 * u - 1) * half, (2 * v - 1) * half, np.full_like(u, z)], -1).astype(np.float32)
    return pos


def camera_looking_down(center, f=100.0, size=64) -> Camera:
    """A camera at ``center`` looking along -z (x right, y up in the world -> y down in the image)."""
    R = np.diag([1.0, -1.0, -1.0])
    t = -R @ np.asarray(center, float)
    K = np.array([[f, 0, (size - 1) / 2], [0, f, (size - 1) / 2], [0, 0, 1]])
    return Camera(K, np.concatenate([R, t[:, None]], 1), size, size)


def test_upsample_map_linear_field_and_validity():
    S, T = 8, 32
    pos = plane_maps(S)
    valid = np.ones((S, S), bool)
    valid[:, :2] = False
    up, ok = upsample_map(pos, valid, T)
    assert up.shape == (T, T, 3) and ok.shape == (T, T)
    ref = plane_maps(T)
    # a linear field is reproduced exactly inside the valid quads
    np.testing.assert_allclose(up[ok], ref[ok], atol=1e-5)
    # texels left of the centre of valid column 2 have an invalid neighbour
    col_c = (2 + 0.5) / S
    cols = (np.arange(T) + 0.5) / T
    assert not ok[:, cols < col_c].any()
    assert ok[T // 2, (cols > col_c + 1e-6) & (cols < 1 - 0.5 / S)].all()
    with pytest.raises(ValueError):
        upsample_map(pos, valid[:4], T)


def test_view_weights_front_back_behind_and_off_image():
    pts = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 20.0], [5.0, 0.0, 0.0]])
    nrm = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    cam = camera_looking_down([0, 0, 10.0])
    w, pix = view_weights(pts, nrm, cam, None, power=2.0)
    assert w[0] == pytest.approx(1.0)  # frontal
    assert w[1] == 0.0  # back-facing
    assert w[2] == 0.0  # behind the camera
    assert w[3] == 0.0  # projects off the 64 x 64 image (x = 31.5 + 100 * 0.5 = 81.5)
    np.testing.assert_allclose(pix[0], [31.5, 31.5])


def test_view_weights_zero_where_occluded_by_more_than_one_edge():
    """A small plane at z = 1 hides the centre of a plane at z = 0 from a camera above, not its rim;
    a texel half an edge below its own plane (upsampling) is not hidden by it (margin: one mean edge)."""
    S = 9
    far = uv_grid_mesh(plane_maps(S, 0.0, 2.0), np.ones((S, S), bool))
    near = uv_grid_mesh(plane_maps(S, 1.0, 0.5), np.ones((S, S), bool))
    both = Mesh(np.concatenate([far.vertices, near.vertices]), np.concatenate([far.faces, near.faces + len(far.vertices)]))
    caster = RayCaster(both.vertices, both.faces)
    center = np.array([0.0, 0.0, 10.0])
    below = 0.5 * caster.mean_edge
    pts = np.array([[0.0, 0.0, 0.0], [1.8, 1.8, 0.0], [0.0, 0.0, 1.0], [1.8, 1.8, -below]])
    cam = camera_looking_down(center, f=10.0)
    # the occluded point gets zero weight although it faces the camera
    w, _ = view_weights(pts, np.tile([0.0, 0.0, 1.0], (4, 1)), cam, caster)
    assert w[0] == 0.0 and w[1] > 0 and w[2] == pytest.approx(1.0) and w[3] > 0


def test_fill_holes_keeps_known_and_fills_everything():
    rng = np.random.default_rng(0)
    tex = rng.uniform(0, 255, (37, 37, 3)).astype(np.float32)
    known = np.zeros((37, 37), bool)
    known[10:20, 5:30] = True
    out = fill_holes(np.where(known[..., None], tex, 0), known)
    np.testing.assert_array_equal(out[known], tex[known])
    assert np.isfinite(out).all()
    assert out.min() >= tex[known].min() - 1e-3 and out.max() <= tex[known].max() + 1e-3
    const = fill_holes(np.full((16, 16, 3), 7.0, np.float32), known[:16, :16])
    np.testing.assert_allclose(const, 7.0, atol=1e-4)
    assert (fill_holes(tex, np.zeros((37, 37), bool)) == 0).all()


def test_render_then_blend_round_trip():
    """Render a textured plane into three views, blend them back: the texture comes back."""
    S, T = 17, 64
    pos = plane_maps(S, 0.0, 1.0)
    valid = np.ones((S, S), bool)
    mesh = uv_grid_mesh(pos, valid)
    yy, xx = np.mgrid[0:T, 0:T] / T
    truth = np.stack([127 + 100 * np.sin(6 * xx), 127 + 100 * np.cos(5 * yy), 60 + 150 * xx * yy], -1)
    truth = np.clip(np.rint(truth), 0, 255).astype(np.uint8)
    cams = [camera_looking_down(c, f=150.0, size=128) for c in ([0, 0, 4.0], [1.0, 0, 4.0], [0, -1.0, 4.0])]
    caster = RayCaster(mesh.vertices, mesh.faces)
    photos = []
    for cam in cams:
        img, cov = render_textured_view(mesh, truth, cam, caster)
        assert cov.mean() > 0.2
        photos.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
    normals = normal_map_from_mesh(mesh, valid)
    pts_t, ok = upsample_map(pos, valid, T)
    nrm_t, _ = upsample_map(normals, valid, T)
    nrm_t /= np.maximum(np.linalg.norm(nrm_t, axis=-1, keepdims=True), 1e-12)
    tex, weight = blend_texture(pts_t, nrm_t, ok, photos, cams, caster)
    seen = weight > 0
    assert seen.sum() > 0.8 * ok.sum()
    err = np.abs(tex[seen] - truth[seen].astype(np.float32)).mean()
    assert err < 6.0, err
    # and the view-left-out comparison figure of the benchmark agrees with itself
    img, cov = render_textured_view(mesh, np.clip(np.rint(fill_holes(tex, seen)), 0, 255).astype(np.uint8), cams[0], caster)
    assert colour_difference(img, photos[0], cov) < 6.0


def test_colour_difference_empty_region_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        colour_difference(np.zeros((4, 4, 3)), np.zeros((4, 4, 3)), np.zeros((4, 4), bool))


# ------------------------------------------------------------------- scripts on fabricated data


def look_at_camera(center, target, f: float, size: int) -> Camera:
    """OpenCV camera at ``center`` looking at ``target`` (world +y up -> image up)."""
    center, target = np.asarray(center, float), np.asarray(target, float)
    z = target - center
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 1.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    K = np.array([[f, 0, (size - 1) / 2], [0, f, (size - 1) / 2], [0, 0, 1]])
    return Camera(K, np.concatenate([R, (-R @ center)[:, None]], 1), size, size)


def procedural_texture(T: int) -> np.ndarray:
    yy, xx = np.mgrid[0:T, 0:T] / T
    tex = np.stack([150 + 80 * np.sin(9 * xx) * np.cos(4 * yy), 120 + 70 * np.cos(7 * yy), 90 + 100 * xx * (1 - yy)], -1)
    return np.clip(np.rint(tex), 0, 255).astype(np.uint8)


def template_cm():
    """The template (the base model's mean face, mm) in cm, centred at (0, 0, 2): the fabricated datasets'
    base surface, in capture units of 10 mm."""
    from mvfr.mesh_io import Mesh
    from mvfr.template import load_template

    t = load_template()
    v = t.vertices * 0.1
    lo, hi = v.min(0), v.max(0)
    v = v - 0.5 * (lo + hi) + np.array([0.0, 0.0, 2.0 - 0.5 * (hi[2] - lo[2])])
    return Mesh(v, t.faces, t.uvs, t.face_uvs)


def fabricate_dataset(root, S=32, D=31, interval_mm=0.5, views=5, image_size=128, noise=0.05, seed=0):
    """A DATA_FOLDER with the template as base surface (cm, mm_per_unit 10), a known smooth GT
    displacement, IF-like score volumes (GT Gaussian + distractor + noise), and photographs of the
    textured GT surface rendered by ray casting. Returns ``{fid: gt_mesh}`` and the GT texture."""
    from mvfr.atomic_io import save_image, save_json, save_npy
    from mvfr.camera import write_params
    from mvfr.datafolder import DataFolder, parse_face_id
    from mvfr.mvs.face_inputs import search_mask
    from mvfr.mesh_io import vertex_normals
    from mvfr.mvs.geometry import half_range, step_offsets
    from mvfr.uv_rasterizer import template_uv_table, interpolate_attribute

    folder = DataFolder(root)
    ids = {"train": ["001_01", "002_01"], "eval": ["003_01"]}
    save_json(folder.id_json, ids)
    rng = np.random.default_rng(seed)
    t = template_cm()
    table = template_uv_table(S)
    pos = interpolate_attribute(table, t.faces, t.vertices.astype(np.float32))
    nrm = interpolate_attribute(table, t.faces, vertex_normals(t.vertices, t.faces).astype(np.float32))
    nrm = (nrm / np.maximum(np.linalg.norm(nrm, axis=-1, keepdims=True), 1e-12)).astype(np.float32)
    nrm[~table.covered] = 0
    mask = search_mask(pos, nrm)
    texture = procedural_texture(4 * S)
    scale, sel, gts = {}, {}, {}
    names = [str(v) for v in range(views)]
    for split, fids in ids.items():
        for fid in fids:
            pid, eid = parse_face_id(fid)
            scale.setdefault(str(pid), {})[str(eid)] = [10.0, np.eye(3, 4).tolist()]
            sel.setdefault(str(pid), {})[str(eid)] = names
            yy, xx = np.mgrid[0:S, 0:S] / S
            ph = rng.uniform(0, 6, 2)
            mv_mm = 3.0 * np.sin(5 * xx + ph[0]) * np.cos(4 * yy + ph[1]) + 1.0
            mv = np.where(mask, mv_mm / 10.0, 0.0).astype(np.float32)
            steps = np.where(mask, mv_mm / interval_mm, 0.0)
            off = step_offsets(D)[:, None, None]
            vol = 0.9 * np.exp(-((off - steps) ** 2) / (2 * 2.0**2))
            wrong = rng.uniform(-half_range(D), half_range(D), (S, S))
            vol += np.where(rng.random((S, S)) < 0.2, 1.0, 0.0) * np.exp(-((off - wrong) ** 2) / 2.0)
            vol = np.clip(vol + rng.normal(0, noise, vol.shape), 0.001, 0.999) * mask
            for name, arr in (("pos_map", pos), ("norm_map", nrm), ("mv_map", mv), ("valid_map", mask)):
                save_npy(folder.map(split, name, fid), arr)
            save_npy(folder.volume(split, fid), vol.astype(np.float16))
            gt = uv_grid_mesh(pos + nrm * mv[..., None], mask)
            gts[fid] = gt
            cams = {}
            for k, name in enumerate(names):
                ang = np.radians(-40 + 80 * k / max(views - 1, 1))
                cam = look_at_camera([60 * np.sin(ang), 5.0, 60 * np.cos(ang)], [0, 0, 2.0], f=7.0 * image_size, size=image_size)
                img, _ = render_textured_view(gt, texture, cam)
                save_image(folder.image(fid, name), np.clip(np.rint(img), 0, 255).astype(np.uint8))
                cams[name] = cam
            write_params(folder.params(fid), cams)
    save_json(folder.rt_scale_json, scale)
    save_json(folder.select_dict_json, sel)
    return gts, texture


def run_script(module, argv, monkeypatch):
    monkeypatch.setattr("sys.argv", [module.__name__ + ".py"] + argv)
    return module.main()


def test_train_reg_eval_reg_gen_tex_end_to_end(tmp_path, monkeypatch):
    import eval_reg
    import gen_tex
    import train_reg
    from mvfr.datafolder import DataFolder
    from mvfr.mesh_io import read_obj

    root = tmp_path / "data"
    gts, _ = fabricate_dataset(root, S=32, D=31, views=4, image_size=96)
    folder = DataFolder(root)
    common = ["--dataroot", str(root), "--device", "cpu", "--d_size", "31", "--interval_scale", "0.5"]
    assert run_script(train_reg, common + ["--reg_channels", "2", "--reg_levels", "2", "--reg_training_epoch", "2",
                                           "--reg_steps_per_epoch", "3", "--reg_crop_size", "16", "--reg_batch_size", "2"], monkeypatch) == 0
    final = folder.checkpoint_dir("reg") / "final.pt"
    assert final.is_file() and (folder.log_dir("reg") / "loss_curve.png").is_file()
    # resume: a second run continues from step 6 and stops at the new total
    assert run_script(train_reg, common + ["--reg_channels", "2", "--reg_levels", "2", "--reg_training_epoch", "3",
                                           "--reg_steps_per_epoch", "3", "--reg_crop_size", "16", "--reg_batch_size", "2"], monkeypatch) == 0
    from mvfr.training import read_checkpoint, read_jsonl

    assert read_checkpoint(final)["step"] == 9
    assert [r["step"] for r in read_jsonl(folder.log_dir("reg") / "train_log.jsonl")] == list(range(1, 10))
    assert run_script(eval_reg, common + ["--split", "eval", "--reg_checkpoint", str(final), "--reg_tile", "12", "--reg_overlap", "6"], monkeypatch) == 0
    fid = "003_01"
    refined = np.load(folder.reg_map(fid))
    assert refined.shape == (32, 32, 3) and refined.dtype == np.float32
    mesh = read_obj(folder.reg_mesh(fid))
    gt = gts[fid]
    assert len(mesh.vertices) == len(gt.vertices) and mesh.uvs is not None and mesh.normals is not None
    err_mm = np.linalg.norm(mesh.vertices - gt.vertices, axis=1).mean() * 10
    base = np.load(folder.map("eval", "pos_map", fid))[np.load(folder.map("eval", "valid_map", fid))]
    base_mm = np.linalg.norm(base - gt.vertices, axis=1).mean() * 10
    assert err_mm < 0.5 * base_mm, (err_mm, base_mm)
    # outward winding: triangle normals agree with the base normals
    from mvfr.mesh_io import face_normals

    nrm = np.load(folder.map("eval", "norm_map", fid))[np.load(folder.map("eval", "valid_map", fid))]
    fn = face_normals(mesh.vertices, mesh.faces)
    assert (np.einsum("ij,ij->i", fn, nrm[mesh.faces[:, 0]]) > 0).mean() > 0.95
    # texture: one view left out, then rendered there and compared with its photograph
    assert run_script(gen_tex, common[:2] + ["--split", "eval", "--tex_uv_size", "128", "--tex_exclude_views", "1"], monkeypatch) == 0
    assert folder.texture(fid).is_file()
    mtl = folder.textured_mesh(fid).with_suffix(".mtl")
    assert f"map_Kd {folder.texture(fid).name}" in mtl.read_text()
    assert f"mtllib {mtl.name}" in folder.textured_mesh(fid).read_text()
    from mvfr.atomic_io import load_image
    from mvfr.capture import load_capture

    textured = read_obj(folder.textured_mesh(fid))
    cap = load_capture(folder, fid)
    img, cov = render_textured_view(textured, load_image(folder.texture(fid)), cap.cameras[1])
    assert colour_difference(img, cap.images[1], cov) < 12.0
