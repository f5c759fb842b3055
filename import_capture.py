"""Add one capture calibrated by another tool to a RAW folder (FaceScape multi-view layout, DESIGN §4).

    python import_capture.py --out RAW --face_id PPP_EE --images IMG_DIR \\
        (--colmap SPARSE_DIR | --metashape CAMERAS.xml | --transforms transforms.json | --opencv_yaml DIR) \\
        [--mm_per_unit X] [--scan SCAN.ply] [--split eval|train]

Writes RAW/imgs/<pid>/<k>_<expname>/<view>.jpg (PNG/TIFF converted to JPEG, pixels as stored: EXIF
orientation ignored), params.json ("<v>_K", "<v>_Rt", "<v>_distortion" [k1 k2 p1 p2 k3], "<v>_width",
"<v>_height", "<v>_valid"), RAW/mesh/<pid>/<k>_<expname>.ply (with --scan) and merges the capture into
select_dict.json, id.json and (with --mm_per_unit) Rt_scale_dict.json. Repeated calls add captures to
the same RAW. Without --mm_per_unit no scale is recorded and gen_maps.py estimates it from the
template fit. View names are the image file stems; where stems repeat across sub-folders
(cam01/0001.jpg, cam02/0001.jpg) folder and stem (cam01_0001), so the capture folder stays flat;
an EasyMocap rig names its views. Cameras a tool left unaligned (Metashape) are skipped with their
images, with a warning. The formats and their conventions: mvfr/importers/.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path, PurePosixPath

import numpy as np

from mvfr.atomic_io import atomic_path, load_image, save_image, save_json
from mvfr.camera import write_params
from mvfr.datafolder import DataError, RawFolder, face_id, parse_face_id, read_json
from mvfr.importers import CaptureImportError, ImportedCamera, match_images, resolve_image
from options import parse_options

log = logging.getLogger("import_capture")
JPEG_QUALITY = 95


def _need(path: Path, what: str, fix: str) -> Path:
    if not path.exists():
        raise CaptureImportError(f"{what} {path} does not exist; {fix}")
    return path


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image as stored (EXIF orientation ignored), read from its header."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError) as exc:
        raise CaptureImportError(f"image {path} could not be read ({exc}); replace it") from None


def _colmap(opt) -> tuple[list[ImportedCamera], str]:
    from mvfr.importers import colmap

    d = _need(Path(opt.colmap), "COLMAP model folder", "pass the sparse model folder (e.g. sparse/0)")
    for ext, binary in ((".bin", True), (".txt", False)):
        cams, imgs = d / f"cameras{ext}", d / f"images{ext}"
        if cams.is_file() and imgs.is_file():
            if binary:
                c = colmap.parse_cameras_binary(cams.read_bytes(), str(cams))
                i = colmap.parse_images_binary(imgs.read_bytes(), str(imgs))
            else:
                c = colmap.parse_cameras_text(cams.read_text(), str(cams))
                i = colmap.parse_images_text(imgs.read_text(), str(imgs))
            return colmap.cameras_from_colmap(c, i, str(d), cameras_where=str(cams)), str(d)
    raise CaptureImportError(f"{d} holds neither cameras.bin + images.bin nor cameras.txt + images.txt; "
                             "pass the sparse model folder (e.g. sparse/0)")


def _metashape(opt) -> tuple[list[ImportedCamera], str, list[str]]:
    from mvfr.importers.metashape import cameras_from_metashape

    p = _need(Path(opt.metashape), "Metashape XML", "export it with File > Export > Cameras (Agisoft XML)")
    res = cameras_from_metashape(p.read_text(), str(p))
    if len(res.cameras) < 2:
        raise CaptureImportError(f"{p}: only {len(res.cameras)} of {len(res.cameras) + len(res.unaligned)} cameras are "
                                 "aligned (have a <transform>); at least 2 views are needed: align more photos in "
                                 "Metashape and export the cameras again")
    return res.cameras, str(p), res.unaligned


def _transforms(opt, img_dir: Path, files: list[str]) -> tuple[list[ImportedCamera], str]:
    import json

    from mvfr.importers.transforms import cameras_from_transforms

    p = _need(Path(opt.transforms), "transforms.json", "pass the file nerfstudio/instant-ngp wrote")
    try:
        meta = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise CaptureImportError(f"{p} is not valid JSON ({exc})") from None

    def size_of(file_path: str):
        hit = resolve_image(file_path, files)
        return None if hit is None else image_size(img_dir / hit)

    return cameras_from_transforms(meta, str(p), image_size=size_of), str(p)


def _opencv(opt, img_dir: Path, files: list[str]) -> tuple[list[ImportedCamera], str]:
    from mvfr.importers import opencv

    d = _need(Path(opt.opencv_yaml), "OpenCV calibration folder",
              "pass the folder of <view>.yml files or of intri.yml + extri.yml")
    if d.is_file():
        d = d.parent if d.name in opencv.RIG_FILES else d
    half = [f for f in opencv.RIG_FILES if d.is_dir() and (d / f).is_file()]
    if len(half) == 1:
        other = next(f for f in opencv.RIG_FILES if f not in half)
        raise CaptureImportError(f"{d / half[0]} has no {other} beside it; an EasyMocap rig needs both intri.yml "
                                 "(K, dist) and extri.yml (R or Rot, T) in one folder")
    if d.is_dir() and opencv.is_rig_folder(d):
        intri_path, extri_path = (d / f for f in opencv.RIG_FILES)
        intri, extri = opencv.read_yaml_nodes(intri_path), opencv.read_yaml_nodes(extri_path)
        names = opencv.rig_names(intri, str(intri_path))
        images = {n: opencv.rig_image(n, files, str(intri_path)) for n in names}
        cams = opencv.cameras_from_rig(intri, extri, images, lambda f: image_size(img_dir / f),
                                       str(intri_path), str(extri_path))
        return cams, f"{intri_path} + {extri_path.name}"
    cal = [d] if d.is_file() else opencv.calibration_files(d)
    if not cal:
        raise CaptureImportError(f"{d} holds no <view>.yml, .yaml or .json calibration file and no intri.yml + extri.yml")
    out = []
    for f in cal:
        img = _image_for_stem(img_dir, f.stem)
        size = None if img is None else image_size(img)
        out.append(ImportedCamera(f.stem, opencv.camera_from_opencv(opencv.read_opencv_file(f), size, str(f))))
    return out, str(d)


def read_calibration(opt, img_dir: Path, files: list[str]) -> tuple[list[ImportedCamera], str, list[str]]:
    """Read the calibration named by the options -> (cameras, how errors name the source, recorded images of
    cameras left out, e.g. not aligned). ``files``: the image folder's files, relative to it."""
    if opt.colmap:
        return (*_colmap(opt), [])
    if opt.metashape:
        return _metashape(opt)
    if opt.transforms:
        return (*_transforms(opt, img_dir, files), [])
    return (*_opencv(opt, img_dir, files), [])


def _image_for_stem(folder: Path, stem: str) -> Path | None:
    hits = [p for p in folder.glob(f"{stem}.*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".tif", ".tiff")]
    return hits[0] if len(hits) == 1 else None


def _report_views(where: str, views: dict[str, str], skipped: list[str]) -> None:
    """Log views not named after their file's stem, and cameras left out (with their images)."""
    renamed = {v: f for v, f in views.items() if PurePosixPath(f).stem != v}
    if renamed:
        log.info("%s: view names from folder and file name (the RAW capture folder is flat): %s", where,
                 ", ".join(f"{v} <- {f}" for v, f in list(renamed.items())[:10]) + (" ..." if len(renamed) > 10 else ""))
    if skipped:
        log.warning("%s: %d camera(s) left out with their images (not aligned): %s", where, len(skipped),
                    ", ".join(skipped[:10]) + (" ..." if len(skipped) > 10 else ""))


def _merge_json(path: Path, update) -> None:
    data = read_json(path, path.name) if path.is_file() else {}
    update(data)
    save_json(path, data)


def import_capture(opt) -> list[str]:
    """Import the capture the options describe into ``opt.out``; returns the view names written."""
    fid = face_id(*parse_face_id(opt.face_id))
    pid, eid = parse_face_id(fid)
    raw = RawFolder(opt.out)
    if raw.params(fid).is_file() and not opt.overwrite:
        raise DataError(f"{raw.params(fid)} exists: {fid} is already in {raw.root}; pass --overwrite to replace it")
    if opt.mm_per_unit is not None and not opt.mm_per_unit > 0:
        raise CaptureImportError(f"--mm_per_unit must be positive, got {opt.mm_per_unit}")
    img_dir = _need(Path(opt.images), "image folder", "pass the folder holding the capture's images")
    files = [p.relative_to(img_dir).as_posix() for p in sorted(img_dir.rglob("*")) if p.is_file()]
    cameras, where, skipped = read_calibration(opt, img_dir, files)
    views = match_images(cameras, files, where, str(img_dir), skipped=skipped)
    # match_images walks the cameras in order and pairs every one of them, so the two line up
    cams = {v: c.camera for v, c in zip(views, cameras)}
    _report_views(where, views, skipped)
    scan = None
    if opt.scan:
        scan = _need(Path(opt.scan), "scan", "pass the ground-truth scan (PLY)")
    images = {}
    for v, f in views.items():
        img = load_image(img_dir / f)
        cam = cams[v]
        if img.shape[:2] != (cam.height, cam.width):
            raise CaptureImportError(f"image {img_dir / f} is {img.shape[1]}x{img.shape[0]} but {where} says "
                                     f"{cam.width}x{cam.height}; pass the images the calibration was made from")
        images[v] = (img, img_dir / f)
    for v, (img, src) in images.items():
        dst = raw.image(fid, v)
        if src.suffix.lower() in (".jpg", ".jpeg"):
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)  # keep the original JPEG bytes (no second compression)
        else:
            save_image(dst, img, jpeg_quality=JPEG_QUALITY)
    if scan is not None:
        if scan.suffix.lower() == ".ply":
            with atomic_path(raw.scan(fid)) as tmp:
                shutil.copyfile(scan, tmp)
        else:
            from mvfr.mesh_io import read_mesh, write_ply

            write_ply(raw.scan(fid), read_mesh(scan))
    write_params(raw.params(fid), cams)
    order = list(cams)

    def sel(d):
        d.setdefault(str(pid), {})[str(eid)] = order

    def ids(d):
        for s in ("train", "eval"):
            d.setdefault(s, [])
            d[s] = [x for x in d[s] if face_id(*parse_face_id(x)) != fid]
        d[opt.split].append(fid)

    def scale(d):
        entry = d.setdefault(str(pid), {})
        if opt.mm_per_unit is None:
            entry.pop(str(eid), None)
            if not entry:
                d.pop(str(pid))
        else:
            entry[str(eid)] = [float(opt.mm_per_unit), np.eye(3, 4).tolist()]

    _merge_json(raw.select_dict_json, sel)
    _merge_json(raw.id_json, ids)
    if opt.mm_per_unit is not None or raw.rt_scale_json.is_file():
        _merge_json(raw.rt_scale_json, scale)
    log.info("%s: %d views from %s into %s%s", fid, len(cams), where, raw.capture_dir(fid),
             "" if opt.mm_per_unit else " (no scale given: gen_maps.py will estimate mm per unit)")
    return order


def main(argv=None) -> int:
    opt = parse_options("import_capture", argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    views = import_capture(opt)
    print(f"imported {opt.face_id}: {len(views)} views ({', '.join(views)}) into {opt.out}")
    return 0


if __name__ == "__main__":
    from mvfr.runtime import run_main

    sys.exit(run_main(main))
