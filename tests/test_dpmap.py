"""Tests of the mesoscopic stage: Loop subdivision, displacement encoding, dpmap2mesh, network, training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import trimesh

from dpmap_pred.dpmap2mesh import auto_subdiv_levels, displace_mesh, sample_bilinear
from dpmap_pred.encoding import PNG_TEXT_KEY, decode_mm, encode_mm, read_dpmap, sidecar_path, write_dpmap
from dpmap_pred.networks import DisplacementNet, GlobalGenerator, PatchDiscriminator, count_parameters, uv_grid
from mvfr.atomic_io import save_json
from mvfr.mesh_io import Mesh, read_obj, write_obj
from mvfr.metrics import point_to_mesh
from mvfr.subdivision import loop_subdivision


def uv_grid_mesh(n: int = 24, lo: float = 0.2, hi: float = 0.8, surface: str = "sphere", radius: float = 40.0) -> Mesh:
    """A UV-grid mesh like eval_reg's: vertex (i, j) has uv on a regular grid over [lo, hi]^2.

    ``surface="plane"``: the point (10 u, 10 v, 0); ``"sphere"``: a patch of a sphere of ``radius``
    around +z (outward normals, faces counter-clockwise seen from outside).
    """
    t = np.linspace(lo, hi, n + 1)
    u, v = np.meshgrid(t, t, indexing="xy")
    uv = np.stack([u.ravel(), v.ravel()], 1)
    if surface == "plane":
        verts = np.stack([10 * uv[:, 0], 10 * uv[:, 1], np.zeros(len(uv))], 1)
    else:
        th, ph = (uv[:, 0] - 0.5) * 1.2, (uv[:, 1] - 0.5) * 1.2
        verts = radius * np.stack([np.sin(th) * np.cos(ph), np.sin(ph), np.cos(th) * np.cos(ph)], 1)
    idx = np.arange(len(uv)).reshape(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, 1:].ravel(), idx[1:, :-1].ravel()
    faces = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    return Mesh(verts, faces, uv, faces.copy())


# -------------------------------------------------------------------------------- subdivision
# dpmap2mesh relies on mvfr.subdivision.loop_subdivision (tested with the base-mesh fit); here only the
# properties the displacement needs: smooth (Loop, not linear), orientation kept, uv grid kept.


def test_subdivision_is_loop_not_linear_and_keeps_orientation_and_uv_grid():
    sphere = trimesh.creation.icosphere(2)
    sub = loop_subdivision(Mesh(sphere.vertices, sphere.faces), 1)
    ref_v, ref_f = trimesh.remesh.subdivide_loop(sphere.vertices, sphere.faces, 1)
    d, _ = trimesh.proximity.ProximityQuery(trimesh.Trimesh(ref_v, ref_f, process=False)).vertex(sub.vertices)
    assert d.max() < 1e-12  # the same point set as trimesh's Loop (linear midpoints would differ)

    mesh = uv_grid_mesh(6, surface="plane")
    sub = loop_subdivision(mesh, 2)
    assert len(sub.faces) == 16 * len(mesh.faces)
    # Planar regular grid: Loop reproduces affine functions, so position = 10 * uv exactly away
    # from the two grid corners that have two triangles (the boundary rule rounds those a little).
    uv = sub.vertex_uvs()
    far = np.minimum(np.abs(uv - 0.2), np.abs(uv - 0.8)).max(axis=1) > 0.1 + 1e-9
    np.testing.assert_allclose(sub.vertices[far, :2], 10 * uv[far], atol=1e-12)
    np.testing.assert_allclose(sub.vertices[:, 2], 0.0, atol=1e-12)
    tri = sub.vertices[sub.faces]
    assert (np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])[:, 2] > 0).all()


# ---------------------------------------------------------------------------------- encoding


def test_encoding_round_trip_and_metadata(tmp_path):
    rng = np.random.default_rng(0)
    dp = rng.normal(0, 0.5, (32, 48)).astype(np.float32)
    path = tmp_path / "dp_map_001_01.png"
    info = write_dpmap(path, dp, face_id="001_01")
    back, info2 = read_dpmap(path)
    assert back.dtype == np.float32 and back.shape == (32, 48)
    assert np.abs(back - dp).max() <= 0.5 * info["mm_per_code"] + 1e-7
    assert info2["face_id"] == "001_01" and info2["unit"] == "mm"
    # The encoding is in the PNG itself (tEXt) and in the sidecar.
    from PIL import Image

    with Image.open(path) as im:
        assert json.loads(im.text[PNG_TEXT_KEY])["zero_code"] == 32768
        assert np.array(im).dtype == np.uint16
    assert json.loads(sidecar_path(path).read_text())["mm_per_code"] == info["mm_per_code"]


def test_encoding_known_codes_and_clipping():
    code = encode_mm(np.array([[0.0, 0.1, -0.1, 100.0]]), mm_per_code=1e-3, zero_code=1000)
    np.testing.assert_array_equal(code, [[1000, 1100, 900, 65535]])
    np.testing.assert_allclose(decode_mm(code, 1e-3, 1000)[0, :3], [0.0, 0.1, -0.1], atol=1e-7)


def test_encoding_bad_input(tmp_path):
    with pytest.raises(ValueError, match="NaN"):
        encode_mm(np.array([[np.nan]]))
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        encode_mm(np.zeros((2, 2, 2)))
    # A bare 16-bit PNG without metadata or sidecar is ambiguous.
    from PIL import Image

    bare = tmp_path / "bare.png"
    Image.fromarray(np.full((4, 4), 32768, np.uint16)).save(bare)
    with pytest.raises(ValueError, match="carries no encoding"):
        read_dpmap(bare)
    dp, _ = read_dpmap(bare, assume_default=True)
    np.testing.assert_array_equal(dp, 0.0)
    with pytest.raises(ValueError, match="does not exist"):
        read_dpmap(tmp_path / "missing.png")


# -------------------------------------------------------------------------------- dpmap2mesh


def test_sample_bilinear_known_answers():
    m = np.array([[0.0, 1.0], [2.0, 3.0]])  # row 0 is the top (v near 1)
    uv = np.array([[0.25, 0.75], [0.75, 0.75], [0.25, 0.25], [0.5, 0.5], [0.0, 1.0], [1.0, 0.0], [0.5, 0.75]])
    np.testing.assert_allclose(sample_bilinear(m, uv), [0, 1, 2, 1.5, 0, 3, 0.5])
    with pytest.raises(ValueError):
        sample_bilinear(m, np.zeros((3, 3)))


@pytest.mark.parametrize("mm_per_unit", [1.0, 2.5])
def test_constant_map_moves_every_vertex_along_its_normal(mm_per_unit):
    mesh = uv_grid_mesh(16, surface="sphere", radius=40.0)
    dp = np.full((64, 64), 0.1)
    meso, sub = displace_mesh(mesh, dp, mm_per_unit, levels=2)
    assert len(meso.vertices) == len(sub.vertices) == (4 * 16 + 1) ** 2
    move = meso.vertices - sub.vertices
    # 0.1 mm, in mm, for every vertex ...
    np.testing.assert_allclose(np.linalg.norm(move, axis=1) * mm_per_unit, 0.1, rtol=0, atol=1e-9)
    # ... along its unit normal ...
    np.testing.assert_allclose(move, sub.normals * (0.1 / mm_per_unit), atol=1e-12)
    # ... which is the outward normal of the smooth surface (radial on a sphere).
    radial = sub.vertices / np.linalg.norm(sub.vertices, axis=1, keepdims=True)
    cos = np.einsum("ij,ij->i", sub.normals, radial)
    inner = np.abs(sub.vertex_uvs() - 0.5).max(axis=1) < 0.25  # boundary normals are one-sided
    assert cos.min() > np.cos(np.radians(2.5)) and cos[inner].min() > np.cos(np.radians(0.5))
    assert meso.uvs is not None and meso.normals is not None


def test_zero_map_leaves_the_subdivided_surface_on_the_reg_surface():
    # Plane: exactly on it.
    plane = uv_grid_mesh(8, surface="plane")
    meso, sub = displace_mesh(plane, np.zeros((32, 32)), 1.0, levels=2)
    np.testing.assert_array_equal(meso.vertices, sub.vertices)
    np.testing.assert_allclose(meso.vertices[:, 2], 0.0, atol=1e-12)
    # Curved reg surface (radius 100 mm, edges of 1.4 mm like eval_reg's grid): the Loop surface
    # stays within 0.01 mm of it, and the gap shrinks like edge^2 (Loop's smoothing of a sampled
    # smooth surface, not an offset).
    mm_per_unit, gaps = 2.5, []
    for n in (24, 48):
        sphere = uv_grid_mesh(n, surface="sphere", radius=40.0)
        meso, sub = displace_mesh(sphere, np.zeros((128, 128)), mm_per_unit, levels=2)
        np.testing.assert_array_equal(meso.vertices, sub.vertices)
        dist, _, _ = point_to_mesh(meso.vertices, sphere.vertices, sphere.faces)
        gaps.append(dist.max() * mm_per_unit)
    edge_mm = np.linalg.norm(sphere.vertices[1] - sphere.vertices[0]) * mm_per_unit
    assert 1.2 < edge_mm < 1.6
    assert gaps[1] < 0.01 and gaps[1] < 0.3 * gaps[0]
    # Linear midpoints would leave the coarse facets (sub-triangles coplanar, the whole coarse dihedral
    # angle across the old edges); Loop spreads the bend: its largest angle between neighbouring triangles
    # is a quarter of the coarse mesh's after two levels (measured 0.25; linear subdivision: 1.0).
    bend = lambda v, f: trimesh.Trimesh(v, f, process=False).face_adjacency_angles.max()  # noqa: E731
    assert bend(sub.vertices, sub.faces) < 0.4 * bend(sphere.vertices, sphere.faces)


def test_taubin_smoothing_removes_noise_without_shrinking():
    from dpmap_pred.dpmap2mesh import taubin_smooth

    plane = uv_grid_mesh(8, surface="plane")
    np.testing.assert_allclose(taubin_smooth(plane.vertices, plane.faces, 30), plane.vertices, atol=1e-12)  # fixed point
    sphere = uv_grid_mesh(32, surface="sphere", radius=40.0)
    r0 = np.linalg.norm(sphere.vertices, axis=1)
    noisy = sphere.vertices * (1 + 0.002 * np.random.default_rng(0).standard_normal(len(r0)))[:, None]
    smooth = taubin_smooth(noisy, sphere.faces, 30)
    err = lambda v: np.abs(np.linalg.norm(v, axis=1) - r0)  # noqa: E731
    assert err(smooth).mean() < 0.5 * err(noisy).mean()  # the noise is gone ...
    assert abs(np.linalg.norm(smooth, axis=1).mean() / r0.mean() - 1) < 1e-3  # ... and the sphere did not shrink
    np.testing.assert_array_equal(taubin_smooth(noisy, sphere.faces, 0), noisy)
    # displace_mesh smooths before it subdivides: its surface is the Loop surface of the smoothed mesh ...
    mesh = Mesh(noisy, sphere.faces, sphere.uvs, sphere.face_uvs)
    _, sub = displace_mesh(mesh, np.zeros((64, 64)), 1.0, 1, smooth_iters=30)
    ref = loop_subdivision(Mesh(taubin_smooth(noisy, sphere.faces, 30), sphere.faces, sphere.uvs, sphere.face_uvs), 1)
    np.testing.assert_allclose(sub.vertices, ref.vertices, rtol=0, atol=1e-12)
    # ... which halves the noise Loop subdivision alone leaves (it averages some away too): measured
    # 0.022 mm with 30 iterations against 0.042 mm without (the noisy input: 0.062 mm)
    _, loop_only = displace_mesh(mesh, np.zeros((64, 64)), 1.0, 1, smooth_iters=0)
    assert err(sub.vertices[: len(r0)]).mean() < 0.7 * err(loop_only.vertices[: len(r0)]).mean()


def test_displacement_follows_the_map_and_the_unit_conversion():
    plane = uv_grid_mesh(8, lo=0.0, hi=1.0, surface="plane")
    size = 64
    j = (np.arange(size) + 0.5) / size
    dp = np.tile(0.3 * j, (size, 1))  # dp(u) = 0.3 u mm, linear: bilinear sampling is exact inside
    meso, sub = displace_mesh(plane, dp, 0.5, levels=1)
    u = sub.vertex_uvs()[:, 0]
    inside = (u >= j[0]) & (u <= j[-1])
    np.testing.assert_allclose(meso.vertices[inside, 2] * 0.5, 0.3 * u[inside], atol=1e-9)


def test_dpmap2mesh_bad_input_and_levels():
    mesh = uv_grid_mesh(8, surface="plane")
    with pytest.raises(ValueError, match="no uvs"):
        displace_mesh(Mesh(mesh.vertices, mesh.faces), np.zeros((4, 4)), 1.0)
    with pytest.raises(ValueError, match="mm_per_unit"):
        displace_mesh(mesh, np.zeros((4, 4)), 0.0)
    with pytest.raises(ValueError, match="levels"):
        displace_mesh(mesh, np.zeros((4, 4)), 1.0, levels=-1)
    # uv edge 0.6 / 8 = 0.075: one texel of a 256 map is 1/256 -> 19.2 texels per edge -> 5 levels, capped at 3.
    assert auto_subdiv_levels(mesh, 256) == 3
    assert auto_subdiv_levels(mesh, 27) == 2  # 2.03 texels per edge
    assert auto_subdiv_levels(mesh, 10) == 0


def test_dpmap2mesh_script_writes_textured_mesh(tmp_path):
    from dpmap_pred import dpmap2mesh

    mesh_path, dp_path, out = tmp_path / "reg.obj", tmp_path / "dp.png", tmp_path / "meso.obj"
    write_obj(mesh_path, uv_grid_mesh(4, surface="sphere"))
    write_dpmap(dp_path, np.full((16, 16), 0.2))
    assert dpmap2mesh.main(["--dp_mesh", str(mesh_path), "--dp_map", str(dp_path), "--output", str(out),
                            "--dp_mm_per_unit", "2.0", "--dp_subdiv_levels", "1", "--dp_smooth_iters", "0"]) == 0
    meso = read_obj(out)
    assert len(meso.faces) == 4 * 32 and meso.uvs is not None and meso.normals is not None
    r = np.linalg.norm(meso.vertices, axis=1)
    sub = loop_subdivision(read_obj(mesh_path), 1)
    np.testing.assert_allclose(r - np.linalg.norm(sub.vertices, axis=1), 0.1, atol=2e-3)  # 0.2 mm / 2 mm per unit


# ----------------------------------------------------------------------------------- network


def test_generator_shapes_range_and_size():
    net = DisplacementNet(ngf=4, n_downsample=2, n_blocks=1, max_mm=0.5)
    x = torch.randn(2, 3, 32, 40)
    y = net(x)
    assert y.shape == (2, 1, 32, 40) and y.abs().max() <= 0.5
    with pytest.raises(ValueError, match="multiples of 4"):
        net(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        net(torch.randn(1, 4, 32, 32))
    # Default size stays small enough to ship (< 25 MB of float32).
    assert count_parameters(DisplacementNet()) * 4 < 25e6
    # The paper's generator size: ngf 64, 4 downsamplings, 9 blocks: 182M parameters, counted on the meta
    # device (no memory) and against pix2pixHD's layer list worked out by hand (convolution weights and biases;
    # instance norm without affine parameters)
    def by_hand(cin, cout, ngf, n_down, n_blocks):
        conv = lambda k, a, b: k * k * a * b + b  # noqa: E731
        ch = [ngf * 2**i for i in range(n_down + 1)]
        down = sum(conv(3, ch[i], ch[i + 1]) for i in range(n_down))
        up = sum(conv(3, ch[i + 1], ch[i]) for i in range(n_down))  # transposed: the same count
        return conv(7, cin, ngf) + down + n_blocks * 2 * conv(3, ch[-1], ch[-1]) + up + conv(7, ngf, cout)

    assert count_parameters(GlobalGenerator(3, 1, ngf=2, n_downsample=1, n_blocks=1)) == by_hand(3, 1, 2, 1, 1)
    with torch.device("meta"):
        paper = GlobalGenerator(3, 1, ngf=64, n_downsample=4, n_blocks=9)
    assert count_parameters(paper) == by_hand(3, 1, 64, 4, 9) == 182_436_993


def test_generator_with_uv_input_and_gradients():
    net = DisplacementNet(ngf=4, n_downsample=1, n_blocks=1, use_uv=True)
    uv = uv_grid(8, 8, size=16).unsqueeze(0)
    assert uv.shape == (1, 2, 8, 8)  # top-left quarter of a 16 x 16 map: u < 0.5, v > 0.5
    assert -1 < float(uv[0, 0].min()) and float(uv[0, 0].max()) < 0 < float(uv[0, 1].min()) and float(uv[0, 1].max()) < 1
    assert float(uv[0, 0, 0, 0]) == pytest.approx(2 * 0.5 / 16 - 1) and float(uv[0, 1, 0, 0]) == pytest.approx(1 - 2 * 0.5 / 16)
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    net(x, uv).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="use_uv"):
        net(torch.randn(1, 3, 8, 8))
    d = PatchDiscriminator(4, ndf=8, n_layers=2)
    assert d(torch.randn(1, 4, 64, 64)).shape[1] == 1


# ------------------------------------------------------------------------- training end to end


def _tiny_dataset(tmp_path, size: int = 64):
    """DATA + RAW with 2 training faces and 1 eval face: GT displacement (mm) and a texture shaded by it."""
    from mvfr.atomic_io import save_image
    from mvfr.datafolder import DataFolder, RawFolder

    data, raw = DataFolder(tmp_path / "data"), RawFolder(tmp_path / "raw")
    ids = {"train": ["001_01", "001_02"], "eval": ["002_01"]}
    for root in (data.root, raw.root):
        save_json(root / "id.json", ids)
    rng = np.random.default_rng(0)
    for fid in ids["train"] + ids["eval"]:
        import scipy.ndimage as ndi

        dp = ndi.gaussian_filter(rng.normal(size=(size, size)), 2.0)
        dp = (0.2 * dp / dp.std()).astype(np.float32)
        gy, gx = np.gradient(dp)
        shade = np.clip(0.6 + 2.0 * (gx + gy), 0, 1)
        save_image(data.texture(fid), (255 * np.stack([shade * 0.9, shade * 0.7, shade * 0.6], -1)).astype(np.uint8))
        raw.meso_dpmap(fid).parent.mkdir(parents=True, exist_ok=True)
        np.save(raw.meso_dpmap(fid), dp)
    return data, raw


def test_train_resume_predict_and_mesh_end_to_end(tmp_path):
    from dpmap_pred import main as dp_main, train
    from dpmap_pred.inference import load_generator
    from mvfr.training import list_checkpoints, read_jsonl

    data, raw = _tiny_dataset(tmp_path)
    common = ["--dataroot", str(data.root), "--facescape_dataroot", str(raw.root), "--device", "cpu", "--dp_target", "as_is"]
    small = ["--dp_size", "32", "--dp_crop", "16", "--dp_ngf", "4", "--dp_n_downsample", "2", "--dp_n_blocks", "1",
             "--dp_batch_size", "2", "--dp_save_every", "2", "--dp_log_every", "1"]
    assert train.main(common + small + ["--dp_steps", "4"]) == 0
    ckpts = list_checkpoints(data.checkpoint_dir("dpmap"))
    assert [int(p.stem.split("_")[1]) for p in ckpts] == [2, 4]
    # Resume: a second run continues at step 4 and stops at 6; with the GAN term it would not load.
    assert train.main(common + small + ["--dp_steps", "6"]) == 0
    steps = [r["step"] for r in read_jsonl(data.log_dir("dpmap") / "train_dpmap.jsonl")]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert (data.log_dir("dpmap") / "loss.png").is_file()
    assert any("val_pearson_002_01" in r for r in read_jsonl(data.log_dir("dpmap") / "train_dpmap.jsonl"))
    final = data.checkpoint_dir("dpmap") / "checkpoint_dpmap.pt"
    ck = torch.load(final, weights_only=True)
    assert ck["format"] == "mvfr-dpmap-v1" and ck["step"] == 6 and ck["optimizer"] is None
    net, opts = load_generator(final)
    assert opts["dp_ngf"] == 4 and not net.training
    # The training checkpoint (generator + optimizer) loads as a generator too.
    load_generator(ckpts[-1])

    # Plain inference on the eval split never reads RAW/dpmap (here: unreadable) and scores nothing ...
    gt_path = raw.meso_dpmap("002_01")
    gt_bytes = gt_path.read_bytes()
    gt_path.write_bytes(b"not a numpy file")
    assert dp_main.main(common + ["--split", "eval", "--dp_checkpoint", str(final)]) == 0
    dp, info = read_dpmap(data.dp_map("002_01"))
    assert dp.shape == (32, 32) and info["face_id"] == "002_01" and info["dp_size"] == 32
    assert not (data.log_dir("dpmap") / "scores_eval.json").exists()
    # ... --score does, on the maps already written (the face itself is skipped: its output exists).
    gt_path.write_bytes(gt_bytes)
    assert dp_main.main(common + ["--split", "eval", "--dp_checkpoint", str(final), "--score"]) == 0
    scores = json.loads((data.log_dir("dpmap") / "scores_eval.json").read_text())["faces"]["002_01"]
    # the same figures worked out here: RAW/dpmap (64 texels) area-averaged to the map's 32, inside the facial mask
    from mvfr.uv_rasterizer import load_facial_mask

    truth = np.load(raw.meso_dpmap("002_01")).reshape(32, 2, 32, 2).mean(axis=(1, 3))
    inside = load_facial_mask(32)
    assert scores["pearson"] == pytest.approx(np.corrcoef(dp[inside], truth[inside])[0, 1], abs=1e-5)
    assert scores["mae_mm"] == pytest.approx(np.abs(dp - truth)[inside].mean(), abs=1e-6)
    # The original interface: --input DIR --output DIR.
    out_dir = tmp_path / "out"
    assert dp_main.main(["--input", str(data.texture("001_01").parent), "--output", str(out_dir),
                         "--dp_checkpoint", str(final), "--device", "cpu"]) == 0
    assert (out_dir / "texture_001_01.png").is_file() and (out_dir / "texture_001_01.json").is_file()

    # dpmap2mesh over the data folder: reg mesh (UV grid, capture units) -> textured meso mesh.
    check_dpmap2mesh_over_the_data_folder(data, common, dp)


def check_dpmap2mesh_over_the_data_folder(data, common: list[str], dp: np.ndarray) -> None:
    """dpmap2mesh.py --dataroot on a noisy reg mesh and the face's written map ``dp [32, 32]`` (mm): its meso
    mesh is the one worked out here."""
    from scipy.ndimage import map_coordinates

    from dpmap_pred import dpmap2mesh
    from dpmap_pred.dpmap2mesh import taubin_smooth
    from mvfr.mesh_io import vertex_normals

    mm_per_unit = 2.0
    save_json(data.rt_scale_json, {"2": {"1": [mm_per_unit, np.eye(3, 4).tolist()]}})
    reg = uv_grid_mesh(6, surface="sphere")
    reg.vertices *= (1 + 0.01 * np.random.default_rng(2).standard_normal(len(reg.vertices)))[:, None]  # texel noise
    write_obj(data.reg_mesh("002_01"), reg)
    from options import read_by

    # default: the map's own application surface (30 Taubin rounds for this checkpoint)
    assert dpmap2mesh.main(read_by("dpmap2mesh", common) + ["--split", "eval", "--dp_subdiv_levels", "1"]) == 0
    meso = read_obj(data.meso_mesh("002_01"))
    assert len(meso.faces) == 4 * 72 and meso.uvs is not None
    assert (data.meso_mesh("002_01").parent / "002_01.mtl").is_file()
    # worked out here: the Loop surface of the smoothed reg mesh, moved along its unit normals by the map
    # (bilinear at each vertex's uv, texel centres at (j + 0.5) / S) in mm, divided by mm per unit
    reg = read_obj(data.reg_mesh("002_01"))
    sub = loop_subdivision(Mesh(taubin_smooth(reg.vertices, reg.faces, 30), reg.faces, reg.uvs, reg.face_uvs), 1)
    uv = sub.vertex_uvs()
    want_mm = map_coordinates(dp.astype(np.float64), [(1 - uv[:, 1]) * 32 - 0.5, uv[:, 0] * 32 - 0.5], order=1, mode="nearest")
    assert np.abs(want_mm).max() > 0.01  # the network's map moves the surface
    moved_mm = np.einsum("ij,ij->i", meso.vertices - sub.vertices, vertex_normals(sub.vertices, sub.faces)) * mm_per_unit
    np.testing.assert_allclose(moved_mm, want_mm, rtol=0, atol=1e-5)
    np.testing.assert_allclose(meso.vertices, sub.vertices + vertex_normals(sub.vertices, sub.faces) * want_mm[:, None] / mm_per_unit,
                               rtol=0, atol=2e-6)


def test_pearson_feather_and_missing_checkpoint(tmp_path):
    from dpmap_pred import main as dp_main
    from dpmap_pred.inference import feather_weights, pearson

    x = np.linspace(-1, 1, 50).reshape(5, 10)
    assert pearson(2 * x + 3, x) == pytest.approx(1.0)
    assert pearson(-x, x) == pytest.approx(-1.0)
    mask = np.zeros_like(x, bool)
    mask[:, :5] = True
    noisy = x.copy()
    noisy[:, 5:] = 0  # only texels outside the mask are wrong
    assert pearson(noisy, x, mask) == pytest.approx(1.0) and pearson(noisy, x) < 0.99
    with pytest.raises(ValueError, match="same shape"):
        pearson(x, x[:, :3])
    m = np.zeros((9, 9), bool)
    m[:, :4] = True
    w = feather_weights(m, 2.0)
    np.testing.assert_allclose(w[0, :7], [1, 1, 1, 1, 0.5, 0, 0], atol=1e-6)  # 1 inside, linear fade over 2 texels
    np.testing.assert_array_equal(feather_weights(m, 0), m)
    np.testing.assert_array_equal(feather_weights(m, -1), 1.0)
    # A missing checkpoint is a clear error, not a traceback.
    assert dp_main.main(["--dataroot", str(tmp_path), "--dp_checkpoint", str(tmp_path / "none.pt"), "--device", "cpu"]) == 2


def test_registered_target_reads_the_ground_truth_where_the_texel_lies_on_the_scan(tmp_path, monkeypatch):
    """A toy world (flat scan whose uv is its position, identity template correspondence): a surface
    sliding 3 texels along x reads RAW/dpmap 3 texels over; points off the scan are NaN."""
    import scipy.ndimage as ndi
    from scipy.spatial import cKDTree

    from dpmap_pred import targets
    from mvfr.datafolder import RawFolder

    S, fine = 64, 256
    raw = RawFolder(tmp_path / "raw")
    gt = ndi.gaussian_filter(np.random.default_rng(1).normal(size=(S, S)), 2.0).astype(np.float32)
    raw.meso_dpmap("001_01").parent.mkdir(parents=True)
    np.save(raw.meso_dpmap("001_01"), gt)
    # ICT uv (u, v) = (col, row) fractions of the map; the scan is the plane z = 0 with x, y = S * (u, v) mm
    g = (np.stack(np.meshgrid(np.arange(fine), np.arange(fine), indexing="ij"), -1).reshape(-1, 2) + 0.5) / fine
    monkeypatch.setattr(targets, "_template_index", lambda: (cKDTree(g[:, ::-1]), g))
    monkeypatch.setattr(targets, "INDEX_SIZE", fine)
    monkeypatch.setattr(targets, "scan_uv_points", lambda raw_, fid: (np.c_[S * g[:, ::-1], np.zeros(len(g))], g[:, ::-1]))

    rows, cols = np.meshgrid(np.arange(S) + 0.5, np.arange(S) + 0.5, indexing="ij")
    surface = np.stack([cols + 3.0, rows, np.zeros_like(rows)], -1)
    surface[:8, :8, 2] = 5.0  # 5 mm off the scan
    out = targets.registered_dpmap(raw, "001_01", surface, np.ones((S, S), bool), S)
    assert np.isnan(out[:8, :8]).all() and np.isfinite(out[10:-10, 10:-10]).all()
    np.testing.assert_allclose(out[10:-10, 10:-10], gt[10:-10, 13:-7], atol=0.02 * np.abs(gt).max())
    assert not np.allclose(out[10:-10, 10:-10], gt[10:-10, 10:-10], atol=0.1 * np.abs(gt).max())
    # at twice the resolution the same registration: RAW/dpmap bilinearly up, read 6 texels over
    from dpmap_pred.inference import resize_image

    out2 = targets.registered_dpmap(raw, "001_01", surface, np.ones((S, S), bool), 2 * S)
    assert out2.shape == (2 * S, 2 * S) and np.isnan(out2[:14, :14]).all()
    up = resize_image(gt, 2 * S)
    np.testing.assert_allclose(out2[20:-20, 20:-20], up[20:-20, 26:-14], atol=0.02 * np.abs(gt).max())
    assert not np.allclose(out2[20:-20, 20:-20], up[20:-20, 23:-17], atol=0.1 * np.abs(gt).max())  # not 3 (S's texels)


@pytest.mark.parametrize("mode, function, surface", [("registered", "_registered_target", "reg_map"),
                                                      ("residual", "face_residual", "reg_mesh")])
def test_target_cache_is_remade_when_the_surface_changes(tmp_path, monkeypatch, mode, function, surface):
    import os

    from dpmap_pred import targets
    from mvfr.datafolder import DataFolder, RawFolder

    folder, raw = DataFolder(tmp_path / "data"), RawFolder(tmp_path / "raw")
    source = getattr(folder, surface)("002_01")
    for path in (raw.meso_dpmap("002_01"), raw.scan("002_01"), raw.region("002_01"), source):
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.zeros((4, 4, 3), np.float32)) if path.suffix == ".npy" else path.write_bytes(b"ply")
    calls = []

    def fake(folder_, raw_, split, fid, size, *rest):
        calls.append(fid)
        return np.full((size, size), float(len(calls)), np.float32)

    monkeypatch.setattr(targets, function, fake)
    first = targets.dp_target(folder, raw, "eval", "002_01", 8, mode)
    again = targets.dp_target(folder, raw, "eval", "002_01", 8, mode)
    assert len(calls) == 1 and np.array_equal(first, again)  # read from the cache
    later = os.stat(source).st_mtime + 10
    os.utime(source, (later, later))  # eval_reg.py --overwrite wrote a new surface
    assert float(targets.dp_target(folder, raw, "eval", "002_01", 8, mode)[0, 0]) == 2.0 and len(calls) == 2
