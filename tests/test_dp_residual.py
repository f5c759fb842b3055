"""The residual target of stage 5 (dpmap_pred/targets.py): what the application surface lacks."""

import numpy as np
import pytest

from dpmap_pred.dpmap2mesh import application_surface, displace_mesh
from dpmap_pred.targets import Target, residual_map, signed_distance_along
from mvfr.metrics import point_to_mesh
from mvfr.uv_mesh import uv_grid_mesh
from mvfr.visibility import RayCaster


def grid_surface(size: int, extent_mm: float, height) -> np.ndarray:
    """``[size, size, 3]`` positions of the height field ``z = height(x, y)`` over a square of
    ``extent_mm``, rows along -y like the UV layout (row 0 is v = 1)."""
    c = (np.arange(size) + 0.5) / size * extent_mm - extent_mm / 2
    x, y = np.meshgrid(c, -c)
    return np.stack([x, y, height(x, y)], axis=-1)


def bump(x, y, amplitude=0.3, sigma=1.5):
    return amplitude * np.exp(-(x**2 + y**2) / (2 * sigma**2))


def dome(x, y):
    return 0.02 * (x**2 + y**2)


def test_signed_distance_sign_and_reach():
    plane = uv_grid_mesh(grid_surface(8, 10.0, lambda x, y: 0 * x), np.ones((8, 8), bool))
    caster = RayCaster(plane.vertices, plane.faces)
    pts = np.array([[0.3, 0.2, 0.4], [0.1, -0.2, -0.25], [0.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    up = np.tile([0.0, 0.0, 1.0], (4, 1))
    d = signed_distance_along(caster, pts, up, reach=2.0)
    # the plane is 0.4 below the first point (negative: inwards), 0.25 above the second, at the third
    np.testing.assert_allclose(d[:3], [-0.4, 0.25, 0.0], atol=1e-9)
    assert np.isnan(d[3])  # farther than the reach


@pytest.mark.parametrize("levels, smooth", [(0, 0), (1, 0), (1, 10)])
def test_residual_of_a_surface_equal_to_the_scan_is_zero(levels, smooth):
    mesh = uv_grid_mesh(grid_surface(24, 24.0, dome), np.ones((24, 24), bool))
    surface = application_surface(mesh, levels, smooth)
    out = residual_map(surface, surface, 64, mm_per_unit=1.0)
    known = np.isfinite(out)
    assert known.mean() > 0.8  # the map covers the grid's uv square
    assert np.abs(out[known]).max() < 1e-6


def test_residual_recovers_a_bump_through_smoothing_and_subdivision():
    # the scan: a fine plane with a 0.3 mm bump; the "reg" surface: the same at 1 mm texels, whose
    # Taubin smoothing removes part of the bump; the residual map added back lands on the scan
    scan = uv_grid_mesh(grid_surface(256, 32.0, bump), np.ones((256, 256), bool))
    reg = uv_grid_mesh(grid_surface(32, 32.0, bump), np.ones((32, 32), bool))
    levels, smooth = 2, 30
    surface = application_surface(reg, levels, smooth)
    target = residual_map(surface, scan, 128, mm_per_unit=1.0)
    assert np.nanmax(target) > 0.05  # smoothing took a good part of the bump away
    zero, _ = displace_mesh(reg, np.zeros((128, 128)), 1.0, levels, smooth)
    meso, _ = displace_mesh(reg, np.nan_to_num(target), 1.0, levels, smooth)
    inner = np.abs(meso.vertices[:, :2]).max(axis=1) < 12.0  # away from the fixed boundary
    err_zero = point_to_mesh(zero.vertices[inner], scan.vertices, scan.faces)[0]
    err_meso = point_to_mesh(meso.vertices[inner], scan.vertices, scan.faces)[0]
    assert err_zero.max() > 0.05
    assert err_meso.max() < 0.01
    top = np.argmin(np.linalg.norm(meso.vertices[:, :2], axis=1))
    assert meso.vertices[top, 2] == pytest.approx(0.3, abs=0.01)


def test_target_options_are_resolved_and_recorded():
    t = Target.from_options({"dp_target": None, "dp_smooth_iters": None, "dp_subdiv_levels": 2, "dp_target_surface": "truth"})
    assert (t.mode, t.smooth_iters, t.levels, t.surface) == ("residual", 30, 2, "truth")
    assert t.record() == {"target": "residual", "smooth_iters": 30, "subdiv_levels": 2}
    assert t.tag("train").endswith("_truth") and t.tag("eval").endswith("_reg")  # evaluation: always the reg surface
    assert Target("registered").tag("train") == "dp_target"


def test_meshing_follows_the_map_record_unless_told_otherwise(caplog):
    import logging
    from types import SimpleNamespace

    from dpmap_pred.dpmap2mesh import DEFAULT_SMOOTH_ITERS, auto_subdiv_levels, meshing_settings

    mesh = uv_grid_mesh(grid_surface(16, 16.0, dome), np.ones((16, 16), bool))
    record = {"application_surface": {"target": "residual", "smooth_iters": 0, "subdiv_levels": 1}}
    unset = SimpleNamespace(dp_smooth_iters=None, dp_subdiv_levels=None)
    assert meshing_settings(unset, record, mesh, 64) == (1, 0)  # what the checkpoint was trained for
    assert meshing_settings(unset, {}, mesh, 64) == (auto_subdiv_levels(mesh, 64), DEFAULT_SMOOTH_ITERS)  # an old map
    with caplog.at_level(logging.WARNING):
        assert meshing_settings(SimpleNamespace(dp_smooth_iters=5, dp_subdiv_levels=None), record, mesh, 64) == (1, 5)
    assert "trained for 0" in caplog.text


def test_score_uses_the_checkpoints_target_unless_told_otherwise():
    from types import SimpleNamespace

    from dpmap_pred.main import trained_target

    meta = {"application_surface": {"target": "residual", "smooth_iters": 30, "subdiv_levels": -1}}
    unset = SimpleNamespace(dp_target=None, dp_smooth_iters=None, dp_subdiv_levels=None)
    assert trained_target(unset, meta) == Target("residual", 30, -1, "reg")
    assert trained_target(SimpleNamespace(dp_target=None, dp_smooth_iters=0, dp_subdiv_levels=None), meta).smooth_iters == 0
    assert trained_target(SimpleNamespace(dp_target="registered", dp_smooth_iters=None, dp_subdiv_levels=None), meta).mode == "registered"


def test_stage5_outputs_are_remade_when_their_sources_are_newer(tmp_path):
    import os

    from dpmap_pred import dpmap2mesh, main
    from mvfr.datafolder import DataFolder

    folder = DataFolder(tmp_path / "data")
    ckpt = tmp_path / "checkpoint_dpmap.pt"
    for p in (ckpt, folder.texture("002_01"), folder.reg_mesh("002_01"), folder.dp_map("002_01"), folder.meso_mesh("002_01")):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
        os.utime(p, (1000, 1000))
    assert main.is_current(folder, str(ckpt), "002_01") and dpmap2mesh.is_current(folder, "002_01")
    os.utime(ckpt, (2000, 2000))  # a newly shipped checkpoint
    assert not main.is_current(folder, str(ckpt), "002_01")
    os.utime(folder.dp_map("002_01"), (3000, 3000))  # its new map
    assert main.is_current(folder, str(ckpt), "002_01") and not dpmap2mesh.is_current(folder, "002_01")
