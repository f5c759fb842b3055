"""Camera files as real tools write them (issue 25): Metashape's adjusted calibration, unaligned and rig
cameras; skew through undistortion; the original NeRF's transforms.json; fisheye refused; OpenCV's
single-camera sample output and EasyMocap / ZJU-MoCap intri.yml + extri.yml rigs; view names unique
across sub-folders; and the whole chain on a Metashape and an EasyMocap export of a synthetic capture.

Every file here is written by this test from the format's description (no third-party files)."""

import json
import logging
import shutil

import cv2
import numpy as np
import pytest

from mvfr.camera import Camera, distort_normalized, read_params, undistort_image, undistorted_K
from mvfr.datafolder import RawFolder
from mvfr.importers import (CaptureImportError, ImportedCamera, colmap, match_images, resolve_image,
                            rotation_to_quaternion, unique_view_names)
from mvfr.importers.metashape import cameras_from_metashape
from mvfr.importers.transforms import GL_TO_CV, cameras_from_transforms
from mvfr.preprocess import process_view
from test_import_capture import FID as FID_NATIVE
from test_import_capture import native, native_chain, run_chain  # noqa: F401  (module fixtures, reused)

FID = "003_02"


# ------------------------------------------------------------------------------ a tiny rig


def look_at(center, target=(0.0, 0.0, 0.0)) -> np.ndarray:
    """World -> camera Rt [3, 4] of a camera at ``center`` looking at ``target`` (OpenCV axes)."""
    center = np.asarray(center, dtype=np.float64)
    z = np.asarray(target, dtype=np.float64) - center
    z /= np.linalg.norm(z)
    x = np.cross([0.0, -1.0, 0.0], z)
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(z, x), z])
    return np.concatenate([R, (-R @ center)[:, None]], 1)


def tiny_rig(n=3, w=96, h=64, skew=0.0) -> dict[str, Camera]:
    cams = {}
    for i in range(n):
        a = np.radians(-40 + 80 * i / max(n - 1, 1))
        K = np.array([[110.0 + i, skew, w / 2 - 0.3 + i], [0.0, 105.0 + i, h / 2 + 0.2], [0.0, 0.0, 1.0]])
        dist = np.array([-0.04 * (i + 1), 0.01, 0.001, -0.0005, 0.002])
        cams[f"v{i}"] = Camera(K, look_at([5 * np.sin(a), 0.3 * i, -5 * np.cos(a)]), w, h, dist)
    return cams


def write_images(cams, folder, names=None, suffix=".jpg"):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (v, c) in enumerate(cams.items()):
        p = folder / ((names[i] if names else v) + suffix)
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), np.full((c.height, c.width, 3), 40 * i + 20, np.uint8))
        paths.append(p)
    return paths


def c2w(cam) -> np.ndarray:
    M = np.eye(4)
    M[:3, :3] = cam.Rt[:, :3].T
    M[:3, 3] = cam.center
    return M


def same_cameras(got: dict, want: dict, tol=1e-6):
    assert list(got) == list(want)
    for v in want:
        np.testing.assert_allclose(got[v].K, want[v].K, atol=tol, rtol=0, err_msg=v)
        np.testing.assert_allclose(got[v].Rt, want[v].Rt, atol=tol, rtol=0, err_msg=v)
        np.testing.assert_allclose(got[v].dist, want[v].dist, atol=tol, rtol=0, err_msg=v)
        assert (got[v].width, got[v].height) == (want[v].width, want[v].height)


def run_import(out, *args, face_id=FID):
    import import_capture

    return import_capture.main(["--out", str(out), "--face_id", face_id, *map(str, args)])


# ------------------------------------------------------------------------- Metashape writer


def _num(x) -> str:
    return repr(float(x))


def _calibration(c, cls, f_scale=1.0) -> str:
    K, d = c.K, c.dist
    f = K[1, 1] * f_scale
    return (f'<calibration type="frame" class="{cls}"><resolution width="{c.width}" height="{c.height}"/>'
            f"<f>{_num(f)}</f><cx>{_num(K[0, 2] + 0.5 - c.width / 2)}</cx><cy>{_num(K[1, 2] + 0.5 - c.height / 2)}</cy>"
            f"<b1>{_num(K[0, 0] - K[1, 1])}</b1><b2>{_num(K[0, 1])}</b2><k1>{_num(d[0])}</k1><k2>{_num(d[1])}</k2>"
            f"<k3>{_num(d[4])}</k3><p1>{_num(d[3])}</p1><p2>{_num(d[2])}</p2></calibration>")


SIM = (np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) @ cv2.Rodrigues(np.array([0.3, -0.2, 0.1]))[0],
       np.array([3.0, -1.0, 0.5]), 2.5)


def chunk_pose(cam, sim=SIM) -> np.ndarray:
    """Camera -> chunk 4 x 4 of a world camera, for the chunk -> world similarity ``sim``."""
    R0, t0, s = sim
    M = c2w(cam)
    T = np.eye(4)
    T[:3, :3] = R0.T @ M[:3, :3]
    T[:3, 3] = R0.T @ (M[:3, 3] - t0) / s
    return T


def metashape_xml(cams, *, calibrations=("adjusted",), unaligned=(), component=True, sim=SIM,
                  sensors_extra="", cameras_extra="") -> str:
    """Agisoft XML as Metashape 2 writes it: one sensor per view (``calibrations`` in that order; an
    ``initial`` one carries a focal length 22 % off), a component transform (or the older chunk one),
    cameras in a folder group; ``unaligned``: extra labels with a camera but no transform."""
    R0, t0, s = sim
    sensors, cameras = [], []
    for i, (v, c) in enumerate(cams.items()):
        cal = "".join(_calibration(c, cls, 0.78 if cls == "initial" else 1.0) for cls in calibrations)
        sensors.append(f'<sensor id="{i}" label="s{i}" type="frame"><resolution width="{c.width}" height="{c.height}"/>'
                       f'<property name="layer_index" value="0"/>{cal}</sensor>')
        T = chunk_pose(c, sim)
        cameras.append(f'<camera id="{i}" sensor_id="{i}" component_id="0" label="{v}"><transform>'
                       f"{' '.join(_num(x) for x in T.ravel())}</transform><orientation>1</orientation></camera>")
    for j, label in enumerate(unaligned):
        cameras.append(f'<camera id="{100 + j}" sensor_id="0" component_id="0" label="{label}"/>')
    tf = (f'<transform><rotation locked="true">{" ".join(_num(x) for x in R0.ravel())}</rotation>'
          f'<translation locked="true">{" ".join(_num(x) for x in t0)}</translation><scale locked="true">{_num(s)}</scale>'
          "</transform>")
    comps = f'<components next_id="1" active_id="0"><component id="0" label="Component 1">{tf}</component></components>'
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<document version="2.0.0"><chunk label="Chunk 1" enabled="true">'
            f'<sensors next_id="{len(cams)}">{"".join(sensors)}{sensors_extra}</sensors>{comps if component else ""}'
            f'<cameras next_id="{len(cams)}" next_group_id="1"><group id="0" label="Group 1" type="folder">'
            f'{"".join(cameras)}{cameras_extra}</group></cameras>{"" if component else tf}</chunk></document>')


# ---------------------------------------------------- 1. Metashape: adjusted, not initial


def test_metashape_uses_the_adjusted_calibration_not_the_initial_one(caplog):
    cams = tiny_rig()
    res = cameras_from_metashape(metashape_xml(cams, calibrations=("initial", "adjusted")), "both.xml")
    same_cameras({c.image: c.camera for c in res.cameras}, cams)
    # older exports: chunk-level transform, adjusted first
    res = cameras_from_metashape(metashape_xml(cams, calibrations=("adjusted", "initial"), component=False))
    same_cameras({c.image: c.camera for c in res.cameras}, cams)
    with caplog.at_level(logging.WARNING):
        res = cameras_from_metashape(metashape_xml(cams, calibrations=("initial",)), "initial_only.xml")
    assert res.cameras[0].camera.K[1, 1] == pytest.approx(0.78 * cams["v0"].K[1, 1])
    assert "initial_only.xml" in caplog.text and "only an initial calibration" in caplog.text


# ----------------------------------------------- 2. Metashape: unaligned cameras, rigs


def test_metashape_unaligned_cameras_are_skipped_with_their_images(tmp_path, caplog):
    cams = tiny_rig(3)
    xml = tmp_path / "cameras.xml"
    xml.write_text(metashape_xml(cams, calibrations=("initial", "adjusted"), unaligned=("IMG_9001",)))
    images = tmp_path / "photos"
    write_images(cams, images)
    write_images({"IMG_9001": cams["v0"]}, images)  # its photo is in the folder too
    with caplog.at_level(logging.WARNING):
        assert run_import(tmp_path / "raw", "--metashape", xml, "--images", images) == 0
    raw = RawFolder(tmp_path / "raw")
    same_cameras(read_params(raw.params(FID)), cams)
    assert not raw.image(FID, "IMG_9001").exists()
    assert "IMG_9001" in caplog.text and "not aligned" in caplog.text


def test_metashape_nothing_aligned_and_too_few_aligned_say_so(tmp_path):
    cams = tiny_rig(3)
    # no camera aligned and sensors without a calibration (as an export made before alignment)
    xml = ('<document><chunk><sensors><sensor id="0" type="frame"><resolution width="96" height="64"/></sensor>'
           '<sensor id="2" type="frame"><resolution width="96" height="64"/></sensor></sensors><cameras>'
           '<camera id="0" sensor_id="0" label="a"/><camera id="1" sensor_id="2" label="b"/></cameras></chunk></document>')
    with pytest.raises(CaptureImportError, match="nothing is aligned"):
        cameras_from_metashape(xml, "none.xml")
    one = tmp_path / "one.xml"
    one.write_text(metashape_xml({"v0": cams["v0"]}, unaligned=("v1", "v2")))
    images = tmp_path / "photos"
    write_images(cams, images)
    from mvfr.runtime import run_main

    assert run_main(lambda: run_import(tmp_path / "raw", "--metashape", one, "--images", images)) == 2
    assert not (tmp_path / "raw").exists()


def rig_xml(cams, offset_tags, camera_master=True) -> str:
    """A two-camera rig: v0 on the master sensor 0 (aligned), v1 on slave sensor 1 (``master_id="0"``)
    with the sensor offset written by ``offset_tags`` and no transform of its own."""
    v0, v1 = cams["v0"], cams["v1"]
    xml = metashape_xml({"v0": v0})
    slave = (f'<sensor id="1" label="cam2" type="frame" master_id="0"><resolution width="{v1.width}" height="{v1.height}"/>'
             f'{_calibration(v1, "adjusted")}{offset_tags}</sensor>')
    master = ' master_id="0"' if camera_master else ""
    cam = f'<camera id="1" sensor_id="1" component_id="0" label="v1"{master}/>'
    return xml.replace("</sensors>", slave + "</sensors>").replace("</group>", cam + "</group>")


def test_metashape_rig_slave_camera_is_composed_from_its_master():
    cams = tiny_rig(2)
    off = np.linalg.inv(chunk_pose(cams["v0"])) @ chunk_pose(cams["v1"])  # slave camera -> master camera, chunk units
    R, loc = off[:3, :3], off[:3, 3] * SIM[2]  # Sensor.location in world units
    tags = [f"<rotation>{' '.join(_num(x) for x in R.ravel())}</rotation><location>{' '.join(_num(x) for x in loc)}</location>",
            f'<rotation>{" ".join(_num(x) for x in R.ravel())}</rotation><location x="{_num(loc[0])}" y="{_num(loc[1])}" z="{_num(loc[2])}"/>',
            f"<transform>{' '.join(_num(x) for x in off.ravel())}</transform>"]
    for t, camera_master in zip(tags, (True, False, True)):
        res = cameras_from_metashape(rig_xml(cams, t, camera_master), "rig.xml")
        assert res.unaligned == []
        same_cameras({c.image: c.camera for c in res.cameras}, cams)
    with pytest.raises(CaptureImportError, match="slave sensor 1.*no offset"):
        cameras_from_metashape(rig_xml(cams, ""), "rig.xml")


# ------------------------------------------------------------------------------- 3. skew


def skewed_camera() -> Camera:
    K = np.array([[300.0, -35.0, 161.0], [0.0, 290.0, 118.0], [0.0, 0.0, 1.0]])
    return Camera(K, np.eye(3, 4), 320, 240, np.array([-0.15, 0.06, 0.001, -0.002, 0.01]))


def by_hand(cam, xn: np.ndarray) -> np.ndarray:
    """Pixel of normalised coordinates ``xn [N, 2]`` in the distorted, skewed image, worked by hand."""
    k1, k2, p1, p2, k3 = cam.dist
    x, y = xn[:, 0], xn[:, 1]
    r2 = x * x + y * y
    rad = 1 + k1 * r2 + k2 * r2**2 + k3 * r2**3
    xd = x * rad + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * rad + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    (fx, s, cx), (_, fy, cy) = cam.K[0], cam.K[1]
    return np.stack([fx * xd + s * yd + cx, fy * yd + cy], 1)


def distort_points(pix_undistorted: np.ndarray, cam: Camera, K_undistorted: np.ndarray | None = None) -> np.ndarray:
    """Where pixels ``[N, 2]`` of the undistorted image land in the distorted image of ``cam``.

    ``K_undistorted``: the undistorted image's K (default :func:`undistorted_K`, i.e. what
    :func:`undistort_image` writes). The distorted pixel is ``K distort(K_undistorted^-1 p)`` with the
    camera's full K, skew included.
    """
    Ku = undistorted_K(cam) if K_undistorted is None else np.asarray(K_undistorted, dtype=np.float64)
    pix = np.asarray(pix_undistorted, dtype=np.float64).reshape(-1, 2)
    h = np.concatenate([pix, np.ones((len(pix), 1))], 1) @ np.linalg.inv(Ku).T
    d = distort_normalized(h[:, :2] / h[:, 2:], cam.dist)
    return np.concatenate([d, np.ones((len(d), 1))], 1) @ np.asarray(cam.K, dtype=np.float64)[:2].T


def test_skew_is_carried_through_undistortion_and_point_distortion():
    cam = skewed_camera()
    Ku = cam.K.copy()
    Ku[0, 1] = 0.0  # the undistorted image's camera: the same focal lengths and principal point, no skew
    # points near the top and bottom rows, where the skew term s * y moves pixels most
    pts = np.array([[40.0, 12.0], [160.0, 10.0], [280.0, 20.0], [50.0, 225.0], [170.0, 228.0], [270.0, 220.0], [160.0, 120.0]])
    xn = (pts - Ku[:2, 2]) / np.diag(Ku)[:2]
    want = by_hand(cam, xn)
    np.testing.assert_allclose(distort_points(pts, cam), want, atol=1e-9)
    # an image of small bright dots at `want` (distorted, skewed pixels) undistorts to dots at `pts`
    v, u = np.mgrid[0:cam.height, 0:cam.width].astype(np.float64)
    img = np.zeros((cam.height, cam.width), np.float64)
    for q in want:
        img += np.exp(-((u - q[0]) ** 2 + (v - q[1]) ** 2) / (2 * 1.5**2))
    img8 = np.clip(np.round(img * 250), 0, 255).astype(np.uint8)[..., None].repeat(3, 2)
    out, ucam = undistort_image(img8, cam)
    np.testing.assert_array_equal(ucam.K, Ku)
    np.testing.assert_array_equal(undistorted_K(cam), Ku)
    assert not ucam.dist.any()
    g = out[..., 0].astype(np.float64)
    for p in pts:
        win = (np.abs(u - p[0]) <= 5) & (np.abs(v - p[1]) <= 5)
        c = np.array([(g * u)[win].sum(), (g * v)[win].sum()]) / g[win].sum()
        assert np.abs(c - p).max() < 0.1, (p, c)
    # preprocessing hands later stages a skew-free pinhole camera
    _, pcam = process_view(img8, cam, 160)
    assert pcam.K[0, 1] == 0 and not pcam.dist.any() and (pcam.width, pcam.height) == (160, 120)


# ------------------------------------------------------------- 4. the original NeRF's files


def test_original_nerf_transforms_take_the_size_from_the_image(tmp_path, caplog):
    cams = {v: Camera(c.K, c.Rt, 80, 80, np.zeros(5)) for v, c in tiny_rig(3, 80, 80).items()}
    angle = 0.6911112070083618  # camera_angle_x as Blender's NeRF scenes write it
    f = 0.5 * 80 / np.tan(0.5 * angle)
    frames = [{"file_path": f"./train/r_{i}", "rotation": 0.012566370614359171,
               "transform_matrix": (c2w(c) @ GL_TO_CV).tolist()} for i, c in enumerate(cams.values())]
    p = tmp_path / "transforms_train.json"
    p.write_text(json.dumps({"camera_angle_x": angle, "frames": frames}))
    write_images(cams, tmp_path / "scene", [f"train/r_{i}" for i in range(3)], ".png")
    write_images(cams, tmp_path / "scene", [f"test/r_{i}" for i in range(3)], ".png")  # another split: ignored
    with caplog.at_level(logging.WARNING):
        assert run_import(tmp_path / "raw", "--transforms", p, "--images", tmp_path / "scene") == 0
    assert "3 image(s) in folders that hold no camera's image are ignored: test/r_0.png" in caplog.text
    got = read_params(RawFolder(tmp_path / "raw").params(FID))
    assert sorted(got) == ["r_0", "r_1", "r_2"]
    for i, c in enumerate(cams.values()):
        np.testing.assert_allclose(got[f"r_{i}"].K, [[f, 0, 39.5], [0, f, 39.5], [0, 0, 1]], atol=1e-9)
        np.testing.assert_allclose(got[f"r_{i}"].Rt, c.Rt, atol=1e-9)
        assert (got[f"r_{i}"].width, got[f"r_{i}"].height) == (80, 80)
    # camera_angle_y gives fy; without an image the error names the frame and the fix
    meta = {"camera_angle_x": 1.0, "camera_angle_y": 0.8, "frames": frames[:1]}
    c = cameras_from_transforms(meta, "t.json", image_size=lambda name: (120, 90))[0].camera
    assert c.K[0, 0] == pytest.approx(60 / np.tan(0.5)) and c.K[1, 1] == pytest.approx(45 / np.tan(0.4))
    with pytest.raises(CaptureImportError, match=r"t.json: frame ./train/r_0 has no image size .*--images"):
        cameras_from_transforms(meta, "t.json", image_size=lambda name: None)


# ----------------------------------------------------------------------------- 5. fisheye


def test_fisheye_is_refused_everywhere_never_read_as_pinhole(tmp_path):
    c = tiny_rig(1)["v0"]
    frame = {"file_path": "images/v0.jpg", "transform_matrix": (c2w(c) @ GL_TO_CV).tolist()}
    ngp = {"camera_angle_x": 0.9, "fl_x": 100.0, "fl_y": 100.0, "cx": 48.0, "cy": 32.0, "w": 96, "h": 64, "k1": 0.02,
           "k2": 0.001, "p1": 0.0, "p2": 0.0, "is_fisheye": True, "aabb_scale": 16, "frames": [frame]}
    with pytest.raises(CaptureImportError, match=r"ngp.json: frame images/v0.jpg: \"is_fisheye\": true .* is a fisheye"):
        cameras_from_transforms(ngp, "ngp.json")
    ns = dict(ngp, camera_model="OPENCV_FISHEYE", k3=0.001, k4=0.0005)
    ns.pop("is_fisheye")
    with pytest.raises(CaptureImportError, match="camera_model OPENCV_FISHEYE is a fisheye camera model"):
        cameras_from_transforms(ns, "ns.json")
    for model, params in (("SIMPLE_RADIAL_FISHEYE", "100 48 32 0.02"), ("RADIAL_FISHEYE", "100 48 32 0.02 0.001"),
                          ("OPENCV_FISHEYE", "100 101 48 32 0.02 0.001 0.0001 0.00001")):
        cams = colmap.parse_cameras_text(f"1 {model} 96 64 {params}\n", "sparse/cameras.txt")
        imgs = colmap.parse_images_text("1 1 0 0 0 0 0 5 1 v0.jpg\n\n")
        with pytest.raises(CaptureImportError, match=f"sparse/cameras.txt: camera 1: camera model {model} is a fisheye "
                                                     "camera model.*image_undistorter"):
            colmap.cameras_from_colmap(cams, imgs, "sparse", cameras_where="sparse/cameras.txt")
    fs = cv2.FileStorage(str(tmp_path / "v0.yml"), cv2.FILE_STORAGE_WRITE)
    for k, val in (("K", c.K), ("D", c.dist[:4].reshape(1, 4)), ("R", c.Rt[:, :3]), ("T", c.Rt[:, 3:])):
        fs.write(k, val)
    fs.write("fisheye_model", 1)
    fs.release()
    write_images({"v0": c}, tmp_path / "img")
    from mvfr.runtime import run_main

    assert run_main(lambda: run_import(tmp_path / "raw", "--opencv_yaml", tmp_path, "--images", tmp_path / "img")) == 2
    assert not (tmp_path / "raw").exists()


# ------------------------------------------- 6. OpenCV: sample output, EasyMocap / ZJU rigs


def easymocap_yaml(path, entries: list[tuple[str, object]], fmt="{:.17g}"):
    """Write YAML the way EasyMocap's FileStorage writer does (CRLF, quoted names, !!opencv-matrix)."""
    lines = ["%YAML:1.0", "---"]
    for key, val in entries:
        if isinstance(val, list):
            lines += [f"{key}:"] + [f'  - "{n}"' for n in val]
        elif isinstance(val, int):
            lines.append(f"{key}: {val}")
        else:
            m = np.atleast_2d(np.asarray(val, dtype=np.float64))
            lines += [f"{key}: !!opencv-matrix", f"  rows: {m.shape[0]}", f"  cols: {m.shape[1]}", "  dt: d",
                      f"  data: [{', '.join(fmt.format(x) for x in m.ravel())}]"]
    path.write_text("".join(ln + "\r\n" for ln in lines), newline="")


def write_easymocap(cams, folder, *, rotation=("R", "Rot"), sizes=True, fmt="{:.17g}"):
    folder.mkdir(parents=True, exist_ok=True)
    names = list(cams)
    intri, extri = [("names", names)], [("names", names)]
    for n, c in cams.items():
        intri += [(f"K_{n}", c.K), (f"dist_{n}", c.dist.reshape(1, 5))]
        if sizes:
            intri += [(f"H_{n}", c.height), (f"W_{n}", c.width)]
        if "R" in rotation:
            extri.append((f"R_{n}", cv2.Rodrigues(c.Rt[:, :3])[0]))
        if "Rot" in rotation:
            extri.append((f"Rot_{n}", c.Rt[:, :3]))
        extri.append((f"T_{n}", c.Rt[:, 3:]))
    easymocap_yaml(folder / "intri.yml", intri, fmt)
    easymocap_yaml(folder / "extri.yml", extri, fmt)


def test_easymocap_intri_extri_pair_imports_a_rig(tmp_path, capsys):
    cams = {f"{i + 1:02d}": c for i, c in enumerate(tiny_rig(3).values())}
    images = tmp_path / "images"
    write_images(cams, images, [f"{n}/000000" for n in cams])  # EasyMocap: one folder per camera
    # EasyMocap's own writer (6 decimals, R_ and Rot_, H_/W_), ZJU-MoCap's (Rot_ only, no size), full precision
    variants = ((("R", "Rot"), True, "{:.6f}", 2e-6), (("Rot",), False, "{:.17g}", 1e-9), (("R",), True, "{:.17g}", 1e-9))
    for k, (rotation, sizes, fmt, tol) in enumerate(variants):
        write_easymocap(cams, tmp_path / f"calib{k}", rotation=rotation, sizes=sizes, fmt=fmt)
        out = tmp_path / f"raw{k}"
        assert run_import(out, "--opencv_yaml", tmp_path / f"calib{k}", "--images", images, "--mm_per_unit", 1000) == 0
        raw = RawFolder(out)
        same_cameras(read_params(raw.params(FID)), cams, tol)
        assert raw.selected_views(FID) == ["01", "02", "03"] and raw.image(FID, "02").is_file()
    # the intri.yml path itself works too; a camera folder with two frames is an error naming it
    assert run_import(tmp_path / "raw_file", "--opencv_yaml", tmp_path / "calib0" / "intri.yml", "--images", images) == 0
    from mvfr.runtime import run_main

    (tmp_path / "calib1" / "extri.yml").unlink()
    assert run_main(lambda: run_import(tmp_path / "raw_bad", "--opencv_yaml", tmp_path / "calib1", "--images", images)) == 2
    assert "has no extri.yml beside it" in capsys.readouterr().err
    shutil.copyfile(images / "02" / "000000.jpg", images / "02" / "000001.jpg")
    assert run_main(lambda: run_import(tmp_path / "raw_bad", "--opencv_yaml", tmp_path / "calib0", "--images", images)) == 2
    assert "camera 02 has 2 images in the folder 02/" in capsys.readouterr().err
    assert not (tmp_path / "raw_bad").exists()


def test_opencv_single_camera_calibration_says_it_has_no_pose(tmp_path, capsys):
    c = tiny_rig(1)["v0"]
    calib = tmp_path / "calib"
    calib.mkdir()
    fs = cv2.FileStorage(str(calib / "out_camera_data.yml"), cv2.FILE_STORAGE_WRITE)
    fs.write("calibration_time", "Mon Jan  1 10:00:00 2024")
    for k, val in (("image_width", 96), ("image_height", 64), ("board_width", 9), ("board_height", 6)):
        fs.write(k, val)
    fs.write("square_size", 25.0)
    fs.write("flags", 0)
    fs.write("camera_matrix", c.K)
    fs.write("distortion_coefficients", c.dist.reshape(5, 1))
    fs.write("avg_reprojection_error", 0.31)
    fs.write("extrinsic_parameters", np.zeros((3, 6)))
    fs.release()
    write_images({"out_camera_data": c}, tmp_path / "img")
    from mvfr.runtime import run_main

    assert run_main(lambda: run_import(tmp_path / "raw", "--opencv_yaml", calib, "--images", tmp_path / "img")) == 2
    err = capsys.readouterr().err
    assert "out_camera_data.yml" in err and "no camera pose" in err and "intri.yml + extri.yml" in err


# ----------------------------------------------------------------- 7. view names across folders


def test_view_names_are_unique_across_sub_folders(tmp_path):
    cams = tiny_rig(3)
    names = [f"cam{i + 1:02d}/0001" for i in range(3)]
    write_images(cams, tmp_path / "images", names)
    lines, ilines = [], []
    for i, c in enumerate(cams.values(), 1):
        K, d = c.K, c.dist
        params = [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5, *d[:4]]
        lines.append(f"{i} OPENCV {c.width} {c.height} {' '.join(map(_num, params))}\n")
        q, t = rotation_to_quaternion(c.Rt[:, :3]), c.Rt[:, 3]
        ilines.append(f"{i} {' '.join(map(_num, q))} {' '.join(map(_num, t))} {i} {names[i - 1]}.jpg\n\n")
    sparse = tmp_path / "sparse"
    sparse.mkdir()
    (sparse / "cameras.txt").write_text("".join(lines))
    (sparse / "images.txt").write_text("".join(ilines))
    for c in cams.values():
        c.dist[4] = 0.0  # OPENCV has no k3
    assert run_import(tmp_path / "raw", "--colmap", sparse, "--images", tmp_path / "images") == 0
    raw = RawFolder(tmp_path / "raw")
    got = read_params(raw.params(FID))
    same_cameras(got, {f"cam{i + 1:02d}_0001": c for i, c in enumerate(cams.values())})
    assert sorted(p.name for p in raw.capture_dir(FID).iterdir()) == [
        "cam01_0001.jpg", "cam02_0001.jpg", "cam03_0001.jpg", "params.json"]  # flat, as FaceScape's
    assert unique_view_names(["cam01/0001.jpg", "cam02/0001.jpg", "x/a.png"]) == ["cam01_0001", "cam02_0001", "a"]
    assert unique_view_names(["100MEDIA/DJI_0001.JPG", "101MEDIA/DJI_0001.JPG", "a/b/c.jpg", "d/b/c.jpg"]) == [
        "100MEDIA_DJI_0001", "101MEDIA_DJI_0001", "a_b_c", "d_b_c"]


def test_recorded_image_paths_as_tools_write_them_find_their_files():
    files = ["cam01/0001.JPG", "cam02/0001.JPG", "train/r_0.png", "test/r_0.png", "IMG_7.jpg"]
    c = tiny_rig(1)["v0"]
    cams = [ImportedCamera("/home/user/photos/IMG_7.jpg", c),  # Metashape label: the photo's full path
            ImportedCamera("./train/r_0", c),  # NeRF file_path without a suffix
            ImportedCamera("0001", c, alternatives=("Group 1/0001", "cam02/0001")),  # rig label, its sensor's folder
            ImportedCamera("C:\\rig\\cam01\\0001.JPG", c)]  # a Windows path
    views = match_images(cams, files, "x.xml", "images")
    assert views == {"IMG_7": "IMG_7.jpg", "r_0": "train/r_0.png", "cam02_0001": "cam02/0001.JPG",
                     "cam01_0001": "cam01/0001.JPG"}
    assert resolve_image("0001", files) is None  # two files: ambiguous, never a guess


# ------------------------------------------------------------------------ the whole chain


def test_metashape_and_easymocap_exports_run_the_chain_like_the_native_capture(native, native_chain, tmp_path,
                                                                              monkeypatch):
    """A synthetic capture exported as Metashape XML (initial and adjusted calibrations, one unaligned camera
    whose photo is in the folder) and as an EasyMocap intri/extri pair (one folder of images per camera)
    gives the native run's reg chamfer within 0.01 mm. The pair is written at full precision: EasyMocap's
    own 6 decimals move the cameras by ~4e-7 and the chain (landmark detection on resampled images) by
    ~5e-3 mm, which measures the chain's sensitivity, not the importer."""
    raw, cams, mm = native
    photos = tmp_path / "photos"
    photos.mkdir()
    for v in cams:
        shutil.copyfile(raw.image(FID_NATIVE, v), photos / f"{v}.jpg")
    shutil.copyfile(raw.image(FID_NATIVE, list(cams)[0]), photos / "IMG_unaligned.jpg")
    (tmp_path / "cameras.xml").write_text(metashape_xml(cams, calibrations=("initial", "adjusted"),
                                                        unaligned=("IMG_unaligned",)))
    per_camera = tmp_path / "easymocap_images"
    for v in cams:
        (per_camera / v).mkdir(parents=True)
        shutil.copyfile(raw.image(FID_NATIVE, v), per_camera / v / "000000.jpg")
    write_easymocap(cams, tmp_path / "easymocap")
    ref = native_chain["reg"]["chamfer_mm"]
    for fmt, args in (("metashape", ("--metashape", tmp_path / "cameras.xml", "--images", photos)),
                      ("easymocap", ("--opencv_yaml", tmp_path / "easymocap", "--images", per_camera))):
        out = RawFolder(tmp_path / f"raw_{fmt}")
        assert run_import(out.root, *args, "--mm_per_unit", mm, "--scan", raw.scan(FID_NATIVE), face_id=FID_NATIVE) == 0
        assert sorted(out.selected_views(FID_NATIVE)) == sorted(cams)
        out.region(FID_NATIVE).parent.mkdir(parents=True)
        shutil.copyfile(raw.region(FID_NATIVE), out.region(FID_NATIVE))
        got = run_chain(out.root, tmp_path / f"data_{fmt}", monkeypatch)["reg"]["chamfer_mm"]
        print(f"{fmt}: reg chamfer native {ref:.6f} mm, imported {got:.6f} mm, |difference| {abs(got - ref):.2e} mm")
        assert np.isfinite(ref) and abs(got - ref) <= 0.01

