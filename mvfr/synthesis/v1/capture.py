"""One synthetic capture (a person with an expression, seen by a rig) and the RAW dataset around it.

Ground truth written per face (paths from :class:`mvfr.datafolder.RawFolder`):

* ``mesh/<pid>/<k>_<exp>.ply`` (``scan``): the surface the images were rendered from, in capture
  units. Face part: the template face Loop-subdivided 4 times (about 115k vertices), with the
  mesoscopic detail applied, carrying the template uvs (barycentric inside each template triangle).
  Head part (skull, ears, hair volume, neck; subdivided 3 times) carries uv = (-1, -1), outside
  the template UV square, so a facial-mask lookup never selects it. The two parts meet along the
  face boundary (vertices duplicated there; no hole, but two connected components).
* ``dpmap/<pid>/<k>_<exp>.npy`` (``meso_dpmap``): ``[S, S]`` float32, **mm**, the mesoscopic
  displacement along the normal of the smooth surface, in the template UV (DESIGN §3 texel convention).
* ``landmarks/<pid>/<k>_<exp>.npy`` (``landmarks3d``): ``[468, 3]`` float64, capture units: the scan
  point with the template uv of landmark i (the subdivided copy of template vertex i).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from mvfr.camera import Camera
from mvfr.datafolder import EXPRESSION_NAMES, RawFolder, face_id
from mvfr.mesh_io import Mesh
from mvfr.render import Renderer, RenderMesh
from mvfr.synthesis.capture import select_views, write_metadata  # noqa: F401  (unchanged in v2: shared)
from mvfr.synthesis.v1 import appearance, detail, rig, shape


FACE_LEVELS = 4  # Loop levels of the face (>= 100k vertices over the face)
HEAD_LEVELS = 3  # Loop levels of the head part of the scan


@dataclasses.dataclass
class SynthOptions:
    num_views: int = 10
    image_long_side: int = 1296
    num_invalid_views: int = 1
    distorted_fraction: float = 0.5
    dpmap_size: int = 1024
    albedo_size: int = 1024
    seed: int = 0
    keep_clean: bool = False  # also keep the undistorted renders (tests)


@dataclasses.dataclass
class SyntheticCapture:
    fid: str
    cameras: dict[str, Camera]  # capture units, with distortion and validity
    images: dict[str, np.ndarray]  # RGB uint8, distorted
    scan: Mesh  # capture units
    dpmap: np.ndarray  # [S, S] float32 mm
    landmarks3d: np.ndarray  # [468, 3] capture units
    rt_scale: list  # [mm_per_unit, Rt 3x4]
    yaw_pitch: dict[str, tuple[float, float]]  # degrees, head frame
    jpeg_quality: dict[str, int]
    cameras_mm: dict[str, Camera] | None = None  # the renderer's cameras (head frame, mm), with distortion
    landmarks_mm: np.ndarray | None = None  # [468, 3] head frame, mm
    clean: dict[str, np.ndarray] | None = None  # undistorted renders (same K), when keep_clean


def fast_vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals [N, 3] (bincount; fast on large meshes)."""
    tri = vertices[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    out = np.zeros_like(vertices)
    for j in range(3):
        for k in range(3):
            out[:, j] += np.bincount(faces[:, k], weights=fn[:, j], minlength=len(vertices))
    n = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(n, 1e-30)


@functools.lru_cache(maxsize=1)
def scan_topology() -> dict[str, np.ndarray]:
    """Index tables that cut the fine mesh into the scan (face at FACE_LEVELS, head at HEAD_LEVELS)."""
    fine = shape.fine_topology(FACE_LEVELS)
    coarse_faces_n = len(shape.load_canonical_face().faces)
    face_faces = fine.faces[shape.coarse_face_of_fine(FACE_LEVELS) < coarse_faces_n]
    head_sub = shape.subdivision(shape.head_topology()[0], shape.head_topology()[1], HEAD_LEVELS)
    head_faces = head_sub.faces[np.arange(len(head_sub.faces)) // 4**HEAD_LEVELS >= coarse_faces_n]
    # head vertices of level HEAD_LEVELS keep their index at level FACE_LEVELS (old vertices come first)
    fv = np.unique(face_faces)
    hv = np.unique(head_faces)
    remap_f = np.full(fine.num_vertices[-1], -1)
    remap_f[fv] = np.arange(len(fv))
    remap_h = np.full(fine.num_vertices[-1], -1)
    remap_h[hv] = np.arange(len(hv)) + len(fv)
    scan_faces = np.concatenate([remap_f[face_faces], remap_h[head_faces]])
    merged_faces = np.concatenate([face_faces, head_faces])  # on fine indices (T-junctions at the seam)
    return {"face_vertices": fv, "head_vertices": hv, "scan_faces": scan_faces, "merged_faces": merged_faces}


@functools.lru_cache(maxsize=8)
def _person(seed: int, pid: int, albedo_size: int):
    rng = np.random.default_rng([seed, pid, 11])
    identity = shape.sample_identity(pid, rng)
    skin = appearance.sample_skin(rng)
    albedo = appearance.face_albedo(skin, albedo_size, np.random.default_rng([seed, pid, 12]))
    return identity, skin, albedo


def _background(H: int, W: int, rng: np.random.Generator) -> np.ndarray:
    base = rng.uniform(0.2, 0.6) * (1 + rng.uniform(-0.08, 0.08, 3))
    y = np.linspace(-0.5, 0.5, H)[:, None, None]
    x = np.linspace(-0.5, 0.5, W)[None, :, None]
    g = 1 + rng.uniform(-0.25, 0.25) * y + rng.uniform(-0.1, 0.1) * x - 0.3 * (x**2 + y**2)
    return (base[None, None] * g).astype(np.float32)


def _render_view(r: Renderer, cam_mm: Camera, lighting, rng: np.random.Generator, keep_clean: bool):
    """Render one view (mm camera with distortion): returns the distorted RGB uint8 image (and the clean one)."""
    import cv2

    W, H = cam_mm.width, cam_mm.height
    K = cam_mm.K
    distorted = bool(np.any(cam_mm.dist))
    if distorted:
        mx, my = rig.distortion_maps(cam_mm)
        x0 = int(np.floor(min(mx.min(), 0))) - 2
        y0 = int(np.floor(min(my.min(), 0))) - 2
        x1 = int(np.ceil(max(mx.max(), W - 1))) + 2
        y1 = int(np.ceil(max(my.max(), H - 1))) + 2
    else:
        x0, y0, x1, y1 = 0, 0, W - 1, H - 1
    Kc = K.copy()
    Kc[0, 2] -= x0
    Kc[1, 2] -= y0
    cw, ch = x1 - x0 + 1, y1 - y0 + 1
    rgb, alpha = r.render(Kc, cam_mm.Rt, cw, ch, lighting)
    bg = _background(ch, cw, rng)
    img = rgb + bg * (1 - alpha[..., None])
    # camera response: exposure and white balance per camera
    img = img * rng.uniform(0.92, 1.08) * (1 + rng.uniform(-0.03, 0.03, 3)).astype(np.float32)
    clean = None
    if keep_clean:
        clean = np.clip(img[-y0 : -y0 + H, -x0 : -x0 + W] * 255 + 0.5, 0, 255).astype(np.uint8)
    if distorted:
        img = cv2.remap(img, mx - x0, my - y0, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    else:
        img = img[: H, : W]
    # sensor noise (read + shot), then 8 bits
    sigma = rng.uniform(1.0, 2.5) / 255
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * (sigma + 0.01 * np.sqrt(np.clip(img, 0, 1)))
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8), clean


def synthesize_capture(pid: int, eid: int, opt: SynthOptions, renderer: Renderer | None = None) -> SyntheticCapture:
    """Everything of face ``PPP_EE`` in memory (deterministic for ``opt.seed``, pid, eid)."""
    if not 1 <= eid <= len(EXPRESSION_NAMES):
        raise ValueError(f"expression id {eid} is outside 1..{len(EXPRESSION_NAMES)}")
    expr = EXPRESSION_NAMES[eid - 1]
    fid = face_id(pid, eid)
    identity, skin, albedo = _person(opt.seed, pid, opt.albedo_size)
    rng = np.random.default_rng([opt.seed, pid, eid, 21])

    # geometry (mm, head frame)
    geom = shape.build_face(identity, expr, FACE_LEVELS)
    topo = scan_topology()
    fv, hv = topo["face_vertices"], topo["head_vertices"]
    fine_faces = shape.fine_topology(FACE_LEVELS).faces
    n_smooth = fast_vertex_normals(geom.fine, fine_faces)
    dpmap = detail.detail_map(opt.dpmap_size, identity.age, expr, np.random.default_rng([opt.seed, pid, 13]))
    pts = geom.fine.copy()
    pts[fv] += n_smooth[fv] * detail.sample_map(dpmap, geom.uvs[fv])[:, None]
    normals = fast_vertex_normals(pts, topo["merged_faces"])
    verts_mm = np.concatenate([pts[fv], pts[hv]])
    vnorm = np.concatenate([normals[fv], normals[hv]])
    uvs = np.concatenate([geom.uvs[fv], np.full((len(hv), 2), -1.0)])
    center = identity.head.center * identity.scale
    dirs = (pts[hv] - center) / identity.scale
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    head_rgb, head_spec = appearance.head_colors(dirs, pts[hv], skin, identity.head, np.random.default_rng([opt.seed, pid, 14]))
    colors = np.concatenate([np.tile(skin["tone"], (len(fv), 1)), head_rgb])
    tex_w = np.concatenate([np.ones(len(fv)), np.zeros(len(hv))])
    spec = np.concatenate([np.ones(len(fv)), head_spec])
    landmarks_mm = pts[: shape.N_FACE]

    # rig, lights, capture frame
    views = rig.sample_rig(opt.num_views, opt.image_long_side, rng, opt.distorted_fraction)
    lighting = rig.sample_lighting(rng)
    s, R, t = rig.sample_capture_transform(rng)
    order = sorted(range(len(views)), key=lambda k: abs(views[k].yaw_deg))
    n_inv = min(opt.num_invalid_views, max(len(views) - 2, 0))
    invalid = set(rng.choice(order[1:], size=n_inv, replace=False).tolist()) if n_inv else set()

    own = renderer is None
    r = renderer or Renderer(samples=0)
    images, clean, cams, yp, quality = {}, {}, {}, {}, {}
    try:
        r.set_mesh(RenderMesh(verts_mm, topo["scan_faces"], vnorm, uvs=np.clip(uvs, 0, 1), colors=colors,
                              tex_weight=tex_w, spec=spec, texture=albedo))
        for k, v in enumerate(views):
            name = str(k)
            img, cl = _render_view(r, v.camera_mm, lighting, rng, opt.keep_clean)
            images[name] = img
            if cl is not None:
                clean[name] = cl
            cam = rig.camera_to_capture_units(v.camera_mm, s, R, t)
            cams[name] = dataclasses.replace(cam, valid=k not in invalid)
            yp[name] = (v.yaw_deg, v.pitch_deg)
            quality[name] = int(rng.integers(88, 96))
    finally:
        if own:
            r.release()
    scan = Mesh(rig.to_capture_units(verts_mm, s, R, t), topo["scan_faces"], uvs)
    return SyntheticCapture(
        fid=fid, cameras=cams, images=images, scan=scan, dpmap=dpmap,
        landmarks3d=rig.to_capture_units(landmarks_mm, s, R, t), rt_scale=rig.rt_scale_entry(s, R, t),
        yaw_pitch=yp, jpeg_quality=quality, cameras_mm={str(k): v.camera_mm for k, v in enumerate(views)},
        landmarks_mm=landmarks_mm, clean=clean if opt.keep_clean else None,
    )


def write_capture(raw: RawFolder, cap: SyntheticCapture) -> None:
    """Write the images, params.json and ground truth of one capture (atomically, file by file)."""
    from mvfr.atomic_io import save_image, save_npy
    from mvfr.camera import write_params
    from mvfr.mesh_io import write_ply

    for v, img in cap.images.items():
        save_image(raw.image(cap.fid, v), img, jpeg_quality=cap.jpeg_quality[v])
    write_ply(raw.scan(cap.fid), cap.scan)
    save_npy(raw.meso_dpmap(cap.fid), cap.dpmap.astype(np.float32))
    save_npy(raw.landmarks3d(cap.fid), cap.landmarks3d.astype(np.float64))
    write_params(raw.params(cap.fid), cap.cameras)  # last: its presence marks the capture complete
