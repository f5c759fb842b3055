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


def test_fitting_an_exact_extended_template_target_reproduces_it(ext):
    """Landmarks = the template's first 468 vertices under a similarity: the fit (extension vertices
    following ARAP alone) reproduces the whole template, extension included."""
    from mvfr.fitting import apply_similarity, fit_template
    from mvfr.subdivision import subdivision

    R = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    target = apply_similarity(ext.vertices, 7.0, R, np.array([1.0, 2.0, 3.0]))
    fit = fit_template(target[:NUM_LANDMARKS], np.ones(NUM_LANDMARKS), ext, subdiv_levels=1)
    n = len(ext.vertices)
    np.testing.assert_allclose(fit.mesh.vertices[:n], target, atol=1e-6 * 7.0 * 20)
    assert fit.landmark_residuals.shape == (NUM_LANDMARKS,)
    sub = subdivision(ext.faces, n, 1, ext.face_uvs, n)
    assert len(fit.mesh.vertices) == sub.S.shape[0]
