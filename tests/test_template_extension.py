"""The extended face template (predefine_data/face_template.obj, mvfr.template_extension)."""

import numpy as np
import pytest

from mvfr import template_extension as te
from mvfr.template import NUM_LANDMARKS, PREDEFINE_DIR, load_canonical_face, load_template

EXTENDED = PREDEFINE_DIR / "face_template.obj"


@pytest.fixture(scope="module")
def ext():
    return load_template(EXTENDED)


def test_landmark_vertices_are_the_canonical_face(ext):
    c = load_canonical_face()
    assert len(ext.vertices) > NUM_LANDMARKS
    np.testing.assert_allclose(ext.vertices[:NUM_LANDMARKS], c.vertices, atol=1e-6)
    np.testing.assert_array_equal(ext.faces[: len(c.faces)], c.faces)


def test_uv_chart_has_no_fold_overs_and_keeps_a_margin(ext):
    area = te.uv_orientation(ext.uvs, ext.face_uvs)
    assert (area > 0).all(), f"{(area <= 0).sum()} faces fold over in uv"
    assert ext.uvs.min() >= 0.01 and ext.uvs.max() <= 0.99
    # the canonical part is a similarity of the canonical chart (same shape, scale UV_SCALE)
    c = load_canonical_face()
    e = np.linalg.norm(ext.uvs[c.faces[:, 0]] - ext.uvs[c.faces[:, 1]], axis=1)
    e0 = np.linalg.norm(c.uvs[c.faces[:, 0]] - c.uvs[c.faces[:, 1]], axis=1)
    np.testing.assert_allclose(e, te.UV_SCALE * e0, rtol=1e-4, atol=1e-5)


def test_the_extension_is_one_disc_around_the_canonical_face(ext):
    loop = te.boundary_loop(ext.faces)
    assert (loop >= NUM_LANDMARKS).all()  # the old rim is now interior
    with pytest.raises(ValueError):
        te.boundary_loop(np.array([[0, 1, 2], [3, 4, 5]]))


def test_extension_correspondence_lies_in_the_scan_region():
    from mvfr.synthesis import ict

    d = np.load(PREDEFINE_DIR / "ict_template_correspondence.npz")
    n = len(load_template(EXTENDED).vertices)
    assert d["template_triangle"].shape == (n,) and d["template_bary"].shape == (n, 3)
    np.testing.assert_array_equal(d["template_triangle"][:NUM_LANDMARKS], d["triangle"])
    _, ids = te._narrow_face_mesh()
    assert np.isin(d["template_triangle"][NUM_LANDMARKS:], ids).all()
    np.testing.assert_allclose(d["template_bary"].sum(1), 1.0, atol=1e-9)
    assert (d["template_bary"] >= -1e-9).all()
    assert ict.load_model().faces.shape[0] > d["template_triangle"].max()
