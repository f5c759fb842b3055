"""UV rasteriser: vectorised texel -> (face, barycentrics) table, attribute maps and the facial mask."""

import numpy as np
import pytest

from mvfr import uv_rasterizer as R
from mvfr.template import FACIAL_MASK_PNG, load_template


@pytest.fixture(scope="module")
def template():
    return load_template()


# ------------------------------------------------------------------------------------------ table


def test_vectorised_table_equals_loop_reference_on_template(template):
    fast = R.build_uv_table(template.uvs, template.face_uvs, 64)
    ref = R.build_uv_table_reference(template.uvs, template.face_uvs, 64)
    assert fast.covered.sum() > 0.5 * 64 * 64  # the template covers most of the square
    np.testing.assert_array_equal(fast.face_index, ref.face_index)
    np.testing.assert_array_equal(fast.covered, ref.covered)
    np.testing.assert_allclose(fast.bary, ref.bary, atol=1e-6, rtol=0)


def test_vectorised_table_equals_reference_on_odd_size_and_random_mesh():
    rng = np.random.default_rng(0)
    uvs = rng.uniform(-0.1, 1.1, size=(40, 2))  # overlapping faces, some partly outside [0, 1]
    faces = rng.integers(0, 40, size=(60, 3))
    faces[0] = [1, 1, 2]  # a degenerate face covers nothing
    fast = R.build_uv_table(uvs, faces, 37)
    ref = R.build_uv_table_reference(uvs, faces, 37)
    np.testing.assert_array_equal(fast.face_index, ref.face_index)
    np.testing.assert_allclose(fast.bary, ref.bary, atol=1e-12, rtol=0)
    assert not (fast.face_index == 0).any()


def test_known_answer_single_triangle():
    # Triangle (0,0) (1,0) (0,1) at S = 2: centres (0.25, 0.75) and (0.75, 0.25) lie on its hypotenuse.
    uvs = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    t = R.build_uv_table(uvs, np.array([[0, 1, 2]]), 2)
    np.testing.assert_array_equal(t.covered, [[True, False], [True, True]])
    np.testing.assert_array_equal(t.face_index, [[0, -1], [0, 0]])
    np.testing.assert_allclose(t.bary[1, 0], [0.5, 0.25, 0.25], atol=1e-12)  # uv (0.25, 0.25)
    np.testing.assert_allclose(t.bary[0, 0], [0.0, 0.25, 0.75], atol=1e-12)  # uv (0.25, 0.75)
    np.testing.assert_array_equal(t.bary[0, 1], [0.0, 0.0, 0.0])


def test_texels_on_shared_edges_are_covered():
    # The unit square as two triangles (either diagonal, either winding): every texel centre is covered,
    # including those exactly on the diagonal.
    uvs = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    for faces in ([[0, 1, 2], [0, 2, 3]], [[0, 1, 3], [1, 2, 3]], [[0, 2, 1], [0, 3, 2]]):
        for size in (2, 4, 8, 64):
            t = R.build_uv_table(uvs, np.array(faces), size)
            assert t.covered.all(), (faces, size)
            np.testing.assert_allclose(t.bary.sum(-1), 1.0, atol=1e-12)
    # Exact ties (centres on the diagonal u = v have smallest barycentric 0 in both) go to the lower face.
    t = R.build_uv_table(uvs, np.array([[0, 1, 2], [0, 2, 3]]), 8)
    expected = np.where(np.add.outer(np.arange(8), np.arange(8)) >= 7, 0, 1)  # u >= v is face 0
    np.testing.assert_array_equal(t.face_index, expected)
    ref = R.build_uv_table_reference(uvs, np.array([[0, 1, 2], [0, 2, 3]]), 8)
    np.testing.assert_array_equal(ref.face_index, expected)


def test_table_shapes_and_dtypes(template):
    t = R.build_uv_table(template.uvs, template.face_uvs, 32)
    assert t.size == 32
    assert t.face_index.shape == (32, 32) and t.face_index.dtype == np.int64
    assert t.bary.shape == (32, 32, 3) and t.bary.dtype == np.float64
    assert t.covered.shape == (32, 32) and t.covered.dtype == bool
    np.testing.assert_array_equal(t.covered, t.face_index >= 0)
    np.testing.assert_array_equal(t.bary[~t.covered], 0.0)
    np.testing.assert_allclose(t.bary[t.covered].sum(-1), 1.0, atol=1e-12)
    assert t.bary[t.covered].min() >= -1e-9


def test_template_table_is_cached_and_read_only(template):
    a = R.template_uv_table(64)
    assert R.template_uv_table(64) is a
    np.testing.assert_array_equal(a.face_index, R.build_uv_table(template.uvs, template.faces, 64).face_index)
    with pytest.raises(ValueError):
        a.face_index[0, 0] = 3


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_bad_size_raises(template, size):
    with pytest.raises(ValueError, match="size must be a positive integer"):
        R.build_uv_table(template.uvs, template.face_uvs, size)


def test_bad_mesh_raises(template):
    faces = template.face_uvs.copy()
    faces[5, 1] = len(template.uvs)
    with pytest.raises(ValueError, match="out of range"):
        R.build_uv_table(template.uvs, faces, 16)
    with pytest.raises(ValueError, match=r"\[T, 2\]"):
        R.build_uv_table(template.vertices, template.face_uvs, 16)
    with pytest.raises(ValueError, match="integer"):
        R.build_uv_table(template.uvs, template.face_uvs.astype(float), 16)


# -------------------------------------------------------------------------------- interpolation


def test_affine_attribute_is_reproduced_at_texel_centres(template):
    size = 96
    t = R.template_uv_table(size)
    u, v = template.uvs[:, 0], template.uvs[:, 1]
    uv = R.texel_centres_uv(size)[t.covered]
    # One channel, given as [N]: a u + b v + c.
    scalar = R.interpolate_attribute(t, template.faces, 3.0 * u - 2.0 * v + 0.5)
    assert scalar.shape == (size, size)
    np.testing.assert_allclose(scalar[t.covered], 3.0 * uv[:, 0] - 2.0 * uv[:, 1] + 0.5, atol=1e-6, rtol=0)
    # Two channels: (u, v) itself and another affine map.
    two = R.interpolate_attribute(t, template.faces, np.stack([u, -u + 4.0 * v - 1.0], axis=1))
    assert two.shape == (size, size, 2)
    np.testing.assert_allclose(two[t.covered, 0], uv[:, 0], atol=1e-6, rtol=0)
    np.testing.assert_allclose(two[t.covered, 1], -uv[:, 0] + 4.0 * uv[:, 1] - 1.0, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(two[~t.covered], 0.0)


def test_position_map_lies_on_template_surface(template):
    import igl

    t = R.template_uv_table(128)
    pos = R.interpolate_attribute(t, template.faces, template.vertices)
    assert pos.shape == (128, 128, 3) and pos.dtype == np.float64
    pts = pos[t.covered]
    d2, _, _ = igl.point_mesh_squared_distance(pts, template.vertices, template.faces)
    diag = np.linalg.norm(template.vertices.max(0) - template.vertices.min(0))
    assert np.sqrt(d2.max()) < 1e-6 * diag
    # And the points spread over the face, not collapsed onto a few vertices.
    assert np.ptp(pts, axis=0).min() > 0.3 * np.ptp(template.vertices, axis=0).min()


def test_interpolate_fill_value_and_dtype(template):
    t = R.template_uv_table(32)
    out = R.interpolate_attribute(t, template.faces, template.vertices.astype(np.float32), fill=-1.0)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[~t.covered], -1.0)
    assert (out[t.covered] != -1.0).any()


def test_interpolate_bad_input_raises(template):
    t = R.template_uv_table(32)
    with pytest.raises(ValueError, match="out of range"):
        R.interpolate_attribute(t, template.faces, template.vertices[:100])
    with pytest.raises(ValueError, match="another mesh"):
        R.interpolate_attribute(t, template.faces[:10], template.vertices)
    with pytest.raises(ValueError, match=r"\[F, 3\]"):
        R.interpolate_attribute(t, template.faces[:, :2], template.vertices)


# ---------------------------------------------------------------------------------- facial mask


@pytest.mark.parametrize("size", [64, 256])
def test_facial_mask_is_one_region_without_holes(size):
    """The whole face, closed: the facial texels form one region with no hole (the eyes, the mouth and
    the nostrils are covered by the base model's fills), inside the covered texels, with the model's
    margin around it; the searched region (the mask and a rim) has no hole either."""
    from scipy import ndimage

    from mvfr.face_model import load_face_model
    from mvfr.mvs.face_inputs import search_region

    m = load_face_model()
    mask = R.facial_mask(size)
    covered = R.template_uv_table(size).covered
    assert mask.shape == (size, size) and mask.dtype == bool
    assert not (mask & ~covered).any()  # subset of the covered texels
    assert 0.7 * covered.sum() < mask.sum() < covered.sum()  # the margin is a thin ring around it
    labels, count = ndimage.label(mask)
    assert count == 1
    np.testing.assert_array_equal(ndimage.binary_fill_holes(mask), mask)
    searched = search_region(size)
    assert not (mask & ~searched).any()
    np.testing.assert_array_equal(ndimage.binary_fill_holes(searched), searched)
    # every fill vertex (eyes, mouth, nostrils) lies in the mask; so does the nose tip's landmark
    fill_uv = m.uvs[m.ict_vertex < 0]
    assert len(fill_uv) > 100 and R.lookup_nearest(mask, fill_uv).all()
    # the margin (covered, not facial) touches the chart's rim: it surrounds the region
    rim = covered & ~ndimage.binary_erosion(covered)
    assert (rim & ~mask).sum() > 0.9 * rim.sum()


def test_facial_mask_follows_the_facial_triangles():
    """Known answer: the texel at a facial triangle's uv centroid is in the mask, a margin triangle's is out
    (for triangles large enough to hold the texel centre)."""
    from mvfr.face_model import load_face_model

    m = load_face_model()
    size = 256
    mask = R.facial_mask(size)
    table = R.template_uv_table(size)
    centroid = m.uvs[m.faces].mean(1)
    col, row = np.floor(R.uv_to_texel(centroid, size) + 0.5).astype(int).T
    hit = table.face_index[row, col] == np.arange(len(m.faces))  # the texel centre lies in that triangle
    assert hit.sum() > 1000
    np.testing.assert_array_equal(mask[row[hit], col[hit]], m.facial[hit])
    with pytest.raises(ValueError, match="facial_faces"):
        R.build_facial_mask(table, m.facial[:10])


def test_shipped_png_equals_computed_mask():
    import cv2

    assert FACIAL_MASK_PNG.is_file(), "regenerate with `python -m mvfr.uv_rasterizer`"
    image = cv2.imread(str(FACIAL_MASK_PNG), cv2.IMREAD_UNCHANGED)
    assert image.dtype == np.uint8 and image.shape == (256, 256)
    assert set(np.unique(image)) == {0, 255}
    np.testing.assert_array_equal(image > 127, R.facial_mask(256))
    np.testing.assert_array_equal(R.load_facial_mask(256), R.facial_mask(256))
    np.testing.assert_array_equal(R.load_facial_mask(128), R.facial_mask(128))


def test_write_facial_mask_png_round_trip(tmp_path):
    import cv2

    path = R.write_facial_mask_png(tmp_path / "mask.png", size=64)
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(image > 127, R.facial_mask(64))
    with pytest.raises(ValueError, match="positive integer"):
        R.facial_mask(0)
