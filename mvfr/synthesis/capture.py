"""One synthetic capture (a person with an expression, seen by a rig) and the RAW dataset around it.

A person is an ICT Face Model identity (:mod:`.ict`, weights ``N(0, 1)`` per mode), a procedural
skin (:mod:`.skin`) and a mesoscopic detail layout (:mod:`.meso`); a capture adds one FaceScape
expression (:mod:`.expressions`, random intensity), a rig (:mod:`.rig`), lights and camera effects.

Ground truth written per face (paths from :class:`mvfr.datafolder.RawFolder`), in capture units:

* ``mesh/<pid>/<k>_<exp>.ply`` (``scan``): the detailed head in the ICT topology (skin Loop-subdivided
  :data:`.head.SCAN_LEVEL` times with the detail applied, eyeballs, teeth, gums and tongue), with
  the ICT uvs per vertex; like a real scan, it does not carry the template's uvs.
* ``region/<pid>/<k>_<exp>.npy``: ``[V_scan] bool``, the facial region every metric uses (the ICT
  narrow face area, forehead to chin: eyelids and lips included; ears, neck, inner mouth and eyeballs not).
* ``landmarks/<pid>/<k>_<exp>.npy``: ``[468, 3]`` float64, the template's landmarks on the scan
  surface, through the fixed template <-> ICT correspondence (:mod:`.correspondence`).
* ``dpmap/<pid>/<k>_<exp>.npy``: ``[S, S]`` float32 **mm**, the mesoscopic displacement along the
  smooth surface's normal, in the template UV (DESIGN §3 texel convention), through the same
  correspondence, filtered to the map's texel size.

Everything is deterministic for ``(seed, pid, eid)``.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from mvfr.camera import Camera
from mvfr.datafolder import EXPRESSION_NAMES, RawFolder, face_id
from mvfr.mesh_io import Mesh
from mvfr.synthesis import correspondence, expressions, head, ict, meso, rig, skin
from mvfr.synthesis.head_render import HeadMesh, HeadRenderer, HeadTextures


@dataclasses.dataclass
class SynthOptions:
    num_views: int = 10
    image_long_side: int = 1296
    num_invalid_views: int = 1
    distorted_fraction: float = 0.5
    dpmap_size: int = 1024
    albedo_size: int = 2048  # face-tile albedo and detail maps (the head tile is half of it)
    seed: int = 0
    keep_clean: bool = False  # also keep the undistorted renders (tests)
    layout: str | None = None  # rig layout (rig.LAYOUTS); None: drawn per capture
    mixed_sizes: bool = False  # image sizes drawn per camera between 0.5 and 12 MP
    identity_scale: float = 1.0  # std of the identity weights
    shape_noise_mm: float = 2.0  # RMS of each person's smooth shape field beyond the ICT span (head.shape_field)
    detail_gain: float = 1.0  # scales the mesoscopic detail (0: none)
    scan_level: int = head.SCAN_LEVEL  # Loop levels of the scan's skin (2 is quicker, for tests)


@dataclasses.dataclass
class SyntheticCapture:
    fid: str
    cameras: dict[str, Camera]  # capture units, with distortion and validity
    images: dict[str, np.ndarray]  # RGB uint8, distorted
    scan: Mesh  # capture units
    region: np.ndarray  # [V_scan] bool
    dpmap: np.ndarray  # [S, S] float32 mm
    landmarks3d: np.ndarray  # [468, 3] capture units
    rt_scale: list  # [mm_per_unit, Rt 3x4]
    yaw_pitch: dict[str, tuple[float, float]]  # degrees, head frame
    jpeg_quality: dict[str, int]
    expression_weights: np.ndarray  # [53] ICT blend-shape weights
    cameras_mm: dict[str, Camera] | None = None  # the renderer's cameras (head frame, mm), with distortion
    landmarks_mm: np.ndarray | None = None  # [468, 3] head frame, mm
    scan_mm: Mesh | None = None  # the scan in the head frame, mm
    clean: dict[str, np.ndarray] | None = None  # undistorted renders (same K), when keep_clean


@dataclasses.dataclass
class Person:
    identity_weights: np.ndarray  # [100]
    skin: object  # skin.SkinParams
    layout: object  # meso.DetailLayout
    age: float
    textures: dict  # face/head albedo (linear float32) and specular maps
    colors: np.ndarray  # [V, 3] linear RGB of the non-skin parts
    spec: np.ndarray  # [V]
    shape_offset: np.ndarray  # [V, 3] mm, the person's shape beyond the ICT span (head.shape_field)


@functools.lru_cache(maxsize=4)
def _person(seed: int, pid: int, albedo_size: int, identity_scale: float, shape_noise_mm: float = 0.0) -> Person:
    m = ict.load_model()
    rng = np.random.default_rng([seed, pid, 11])
    w = ict.sample_identity_weights(rng, len(m.identity), identity_scale)
    age = float(rng.uniform(0.0, 1.0))
    params = skin.sample_skin(np.random.default_rng([seed, pid, 12]))
    neutral = m.head(w)
    tex_rng = np.random.default_rng([seed, pid, 13])
    face_albedo = skin.srgb_to_linear(skin.face_albedo(m, params, albedo_size, tex_rng))
    head_albedo = skin.srgb_to_linear(skin.head_albedo(m, params, max(albedo_size // 2, 64), tex_rng))
    textures = {
        "face_albedo": face_albedo, "head_albedo": head_albedo,
        "face_spec": skin.face_specular(m, params, albedo_size, tex_rng),
        "head_spec": skin.head_specular(m, params, max(albedo_size // 2, 64), tex_rng),
    }
    colors, spec = skin.part_colors(m, params, np.random.default_rng([seed, pid, 14]), neutral)
    offset = head.shape_field(neutral, np.random.default_rng([seed, pid, 16]), shape_noise_mm)
    layout = meso.sample_layout(m, neutral + offset, np.random.default_rng([seed, pid, 15]), age)
    return Person(w, params, layout, age, textures, colors, spec, offset)


def _background(H: int, W: int, rng: np.random.Generator) -> np.ndarray:
    """A studio backdrop: a smooth gradient in a random grey or muted colour (linear RGB)."""
    import cv2

    base = rng.uniform(0.04, 0.35) * (1 + rng.uniform(-0.25, 0.25, 3))
    y = np.linspace(-0.5, 0.5, 32, dtype=np.float32)[:, None, None]
    x = np.linspace(-0.5, 0.5, 32, dtype=np.float32)[None, :, None]
    g = 1 + rng.uniform(-0.4, 0.4) * y + rng.uniform(-0.2, 0.2) * x - 0.5 * (x**2 + y**2)
    small = (base[None, None] * g).astype(np.float32)
    return cv2.resize(small, (W, H), interpolation=cv2.INTER_LINEAR)  # smooth: computed on 32 x 32


def _cavity_albedo(albedo_lin: np.ndarray, h: np.ndarray) -> np.ndarray:
    """The face albedo darkened in the detail's cavities (:func:`skin.cavity_shade`), with the local mean kept
    (the shading is divided by its own 2 mm blur), so the face keeps the colour it shares with the neck."""
    import cv2

    shade = skin.cavity_shade(np.ones(albedo_lin.shape, np.float32), h, 1.0)
    sigma = 2.0 / (287.0 / albedo_lin.shape[0])  # texels (the face tile holds about 287 mm)
    local = cv2.GaussianBlur(shade, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return (albedo_lin * np.clip(shade / np.maximum(local, 1e-3), 0.5, 1.2)).astype(np.float32)


def height_gradient(h: np.ndarray) -> np.ndarray:
    """``[S, S, 2]``: ``dh/du``, ``dh/dv`` of a face-tile map (mm per uv unit; row 0 is v near 1)."""
    S = h.shape[0]
    gy, gx = np.gradient(h.astype(np.float32))
    return np.stack([gx * S, -gy * S], -1).astype(np.float32)


@dataclasses.dataclass
class CameraResponse:
    """Per-view camera effects: exposure gain, white balance [3], defocus sigma (px), read and shot noise."""

    gain: float
    white_balance: np.ndarray
    defocus_px: float
    read_noise: float
    shot_noise: float

    @staticmethod
    def sample(rng: np.random.Generator) -> "CameraResponse":
        return CameraResponse(float(rng.uniform(0.8, 1.25)), (1 + rng.uniform(-0.06, 0.06, 3)).astype(np.float32),
                              float(rng.uniform(0.0, 0.9)), float(rng.uniform(0.6, 2.0) / 255), float(rng.uniform(0.006, 0.015)))

    def apply(self, img_lin: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """Linear RGB ``[H, W, 3]`` -> uint8: exposure, white balance, defocus, gamma 1/2.2, noise (skipped without ``rng``)."""
        import cv2

        img = np.ascontiguousarray(img_lin * (self.gain * self.white_balance), dtype=np.float32)
        if rng is not None and self.defocus_px > 0.25:
            img = cv2.GaussianBlur(img, (0, 0), self.defocus_px)
        disp = cv2.pow(np.clip(img, 0, 1), 1 / 2.2)
        if rng is not None:
            noise = rng.standard_normal(img.shape, dtype=np.float32)
            disp = disp + noise * (self.read_noise + self.shot_noise * cv2.sqrt(disp))
        return np.clip(disp * 255 + 0.5, 0, 255).astype(np.uint8)


def _render_view(r: HeadRenderer, cam_mm: Camera, lighting, rng: np.random.Generator, keep_clean: bool):
    """Render one view (mm camera with distortion): the distorted RGB uint8 image (and the clean one:
    undistorted, same exposure and white balance, no defocus or noise)."""
    import cv2

    W, H = cam_mm.width, cam_mm.height
    distorted = bool(np.any(cam_mm.dist))
    if distorted:
        mx, my = rig.distortion_maps(cam_mm)
        x0 = int(np.floor(min(mx.min(), 0))) - 2
        y0 = int(np.floor(min(my.min(), 0))) - 2
        x1 = int(np.ceil(max(mx.max(), W - 1))) + 2
        y1 = int(np.ceil(max(my.max(), H - 1))) + 2
    else:
        x0, y0, x1, y1 = 0, 0, W - 1, H - 1
    Kc = cam_mm.K.copy()
    Kc[0, 2] -= x0
    Kc[1, 2] -= y0
    cw, ch = x1 - x0 + 1, y1 - y0 + 1
    rgb, alpha = r.render(Kc, cam_mm.Rt, cw, ch, lighting)
    img = rgb + _background(ch, cw, rng) * (1 - alpha[..., None])
    response = CameraResponse.sample(rng)
    clean = response.apply(img[-y0 : -y0 + H, -x0 : -x0 + W], None) if keep_clean else None
    if distorted:
        img = cv2.remap(img, mx - x0, my - y0, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    else:
        img = img[:H, :W]
    return response.apply(img, rng), clean


def _render_mesh(geom: head.RenderGeometry, person: Person, coarse: np.ndarray) -> HeadMesh:
    ao = np.clip(head.spread_attribute(geom, head.ambient_occlusion(coarse)), 0.0, 1.0)
    sockets = np.isin(geom.part, [ict.PART_NAMES.index(p) for p in ("eye_socket_left", "eye_socket_right")])
    ao = np.where(sockets, np.maximum(ao, 0.45), ao)  # the lid margins are seen from outside, not from inside the socket
    face_i, head_i = ict.PART_NAMES.index("face"), ict.PART_NAMES.index("head")
    material = np.where(geom.part == face_i, 0, np.where(geom.part == head_i, 1, 2)).astype(np.float64)
    colors = head.spread_attribute(geom, person.colors)
    spec = np.where(material < 2, 1.0, head.spread_attribute(geom, person.spec))
    eye = np.isin(geom.part, [ict.PART_NAMES.index(p) for p in ("eyeball_left", "eyeball_right")])
    teeth = geom.part == ict.PART_NAMES.index("teeth")
    shininess = np.select([eye, teeth], [300.0, 60.0], 24.0)
    return HeadMesh(geom.vertices, geom.faces, geom.normals, geom.tangent_u, geom.tangent_v, geom.uvs, colors,
                    material, spec, shininess, ao)


@dataclasses.dataclass
class CapturePlan:
    """The random choices of one capture that do not need the geometry (cheap to redo)."""

    expression_weights: np.ndarray  # [53]
    views: list  # [rig.RigView]
    lighting: object
    transform: tuple  # (mm_per_unit, R_c, t_c)
    invalid: set
    rng: np.random.Generator  # continues with the per-view draws

    @property
    def rt_scale(self) -> list:
        return rig.rt_scale_entry(*self.transform)

    def select_views(self) -> list[int]:
        """select_dict entry: every view, frontal first (by |yaw|)."""
        return sorted(range(len(self.views)), key=lambda k: abs(self.views[k].yaw_deg))


def capture_plan(pid: int, eid: int, opt: SynthOptions) -> CapturePlan:
    """Expression weights, rig, lights, capture frame and invalid views of face ``PPP_EE``."""
    if not 1 <= eid <= len(EXPRESSION_NAMES):
        raise ValueError(f"expression id {eid} is outside 1..{len(EXPRESSION_NAMES)}")
    m = ict.load_model()
    rng = np.random.default_rng([opt.seed, pid, eid, 21])
    ew = expressions.sample_expression_weights(EXPRESSION_NAMES[eid - 1], m.expression_names, rng)
    views = rig.sample_rig(opt.num_views, opt.image_long_side, rng, opt.distorted_fraction, opt.layout, opt.mixed_sizes)
    lighting = rig.sample_lighting(rng)
    transform = rig.sample_capture_transform(rng)
    order = sorted(range(len(views)), key=lambda k: abs(views[k].yaw_deg))
    n_inv = min(opt.num_invalid_views, max(len(views) - 2, 0))
    invalid = set(rng.choice(order[1:], size=n_inv, replace=False).tolist()) if n_inv else set()
    return CapturePlan(ew, views, lighting, transform, invalid, rng)


def face_head(pid: int, eid: int, opt: SynthOptions) -> tuple[Person, CapturePlan, np.ndarray]:
    """The person, plan and coarse ICT vertices ``[V, 3]`` mm of ``PPP_EE`` (no detail map: cheap)."""
    plan = capture_plan(pid, eid, opt)  # validates eid
    person = _person(opt.seed, pid, opt.albedo_size, float(opt.identity_scale), float(opt.shape_noise_mm))
    coarse = ict.load_model().head(person.identity_weights, plan.expression_weights) + person.shape_offset
    return person, plan, coarse


def face_detail(pid: int, eid: int, opt: SynthOptions) -> tuple[Person, CapturePlan, np.ndarray, np.ndarray]:
    """:func:`face_head` and the face-tile detail map ``h [S, S]`` mm of ``PPP_EE``."""
    person, plan, coarse = face_head(pid, eid, opt)
    h = meso.displacement_map(person.layout, ict.load_model(), plan.expression_weights, opt.albedo_size,
                              np.random.default_rng([opt.seed, pid, eid, 22]))
    return person, plan, coarse, (h * opt.detail_gain).astype(np.float32)


def capture_dpmap(pid: int, eid: int, opt: SynthOptions) -> np.ndarray:
    """The ground-truth ``RAW/dpmap`` of ``PPP_EE``: ``[S, S]`` float32 mm in the *current* template UV.

    Exactly what :func:`synthesize_capture` stores (the same face-tile detail map from the seed,
    resampled by :func:`correspondence.template_dpmap`), without rendering; ``gen_synthetic.py
    --dpmap_only`` rewrites the dpmaps of an existing RAW tree with it after a template change.
    """
    _, _, _, h = face_detail(pid, eid, opt)
    return correspondence.template_dpmap(h, opt.dpmap_size).astype(np.float32)


def _scan(coarse: np.ndarray, h: np.ndarray, opt: SynthOptions) -> head.ScanGeometry:
    """The ground-truth scan (mm) of a head with coarse ICT vertices ``coarse`` and detail map ``h``."""
    return head.build_scan(coarse, lambda uv: meso.sample_at(h, uv), chin_y=head.chin_y(coarse), level=opt.scan_level)


def capture_scan(pid: int, eid: int, opt: SynthOptions) -> tuple[Mesh, np.ndarray]:
    """The ground-truth scan of ``PPP_EE`` in capture units and its facial-region vertices ``[N]`` bool:
    exactly what :func:`synthesize_capture` stores (``RAW/mesh``, ``RAW/region``), without rendering;
    ``gen_synthetic.py --scan_only`` rewrites them, e.g. at another ``--scan_level``."""
    _, plan, coarse, h = face_detail(pid, eid, opt)
    scan = _scan(coarse, h, opt)
    s, R, t = plan.transform
    return Mesh(rig.to_capture_units(scan.vertices, s, R, t), scan.faces, scan.uvs), scan.region


def synthesize_capture(pid: int, eid: int, opt: SynthOptions, renderer: HeadRenderer | None = None) -> SyntheticCapture:
    """Everything of face ``PPP_EE`` in memory (deterministic for ``opt.seed``, pid, eid)."""
    fid = face_id(pid, eid)
    person, plan, coarse, h = face_detail(pid, eid, opt)
    ew, rng = plan.expression_weights, plan.rng

    scan = _scan(coarse, h, opt)
    geom = head.build_render(coarse, lambda uv: meso.sample_at(h, uv))
    tex = person.textures
    albedo = _cavity_albedo(tex["face_albedo"], h)
    textures = HeadTextures(albedo, tex["face_spec"], height_gradient(h), tex["head_albedo"], tex["head_spec"])
    landmarks_mm = correspondence.landmarks_on_scan(scan, opt.scan_level)
    dpmap = correspondence.template_dpmap(h, opt.dpmap_size)

    views, lighting, (s, R, t), invalid = plan.views, plan.lighting, plan.transform, plan.invalid
    own = renderer is None
    r = renderer or HeadRenderer()
    images, clean, cams, yp, quality = {}, {}, {}, {}, {}
    try:
        r.set_mesh(_render_mesh(geom, person, coarse))
        r.set_textures(textures)
        for k, v in enumerate(views):
            name = str(k)
            img, cl = _render_view(r, v.camera_mm, lighting, rng, opt.keep_clean)
            images[name] = img
            if cl is not None:
                clean[name] = cl
            cam = rig.camera_to_capture_units(v.camera_mm, s, R, t)
            cams[name] = dataclasses.replace(cam, valid=k not in invalid)
            yp[name] = (v.yaw_deg, v.pitch_deg)
            quality[name] = int(rng.integers(82, 97))
    finally:
        if own:
            r.release()
    scan_mm = Mesh(scan.vertices, scan.faces, scan.uvs)
    return SyntheticCapture(
        fid=fid, cameras=cams, images=images,
        scan=Mesh(rig.to_capture_units(scan.vertices, s, R, t), scan.faces, scan.uvs), region=scan.region,
        dpmap=dpmap, landmarks3d=rig.to_capture_units(landmarks_mm, s, R, t), rt_scale=plan.rt_scale,
        yaw_pitch=yp, jpeg_quality=quality, expression_weights=ew,
        cameras_mm={str(k): v.camera_mm for k, v in enumerate(views)}, landmarks_mm=landmarks_mm, scan_mm=scan_mm,
        clean=clean if opt.keep_clean else None,
    )


def write_capture(raw: RawFolder, cap: SyntheticCapture) -> None:
    """Write the images, params.json and ground truth of one capture (atomically, file by file)."""
    from mvfr.atomic_io import save_image, save_npy
    from mvfr.camera import write_params
    from mvfr.mesh_io import write_ply

    for v, img in cap.images.items():
        save_image(raw.image(cap.fid, v), img, jpeg_quality=cap.jpeg_quality[v])
    write_ply(raw.scan(cap.fid), cap.scan)
    save_npy(raw.region(cap.fid), cap.region.astype(bool))
    save_npy(raw.meso_dpmap(cap.fid), cap.dpmap.astype(np.float32))
    save_npy(raw.landmarks3d(cap.fid), cap.landmarks3d.astype(np.float64))
    write_params(raw.params(cap.fid), cap.cameras)  # last: its presence marks the capture complete


def select_views(cap: SyntheticCapture) -> list[int]:
    """select_dict entry: every view, frontal first (by |yaw|)."""
    return [int(v) for v in sorted(cap.cameras, key=lambda v: abs(cap.yaw_pitch[v][0]))]


def write_metadata(raw: RawFolder, select: dict, rt_scale: dict, ids: list[tuple[int, int]], eval_pids: set[int]) -> None:
    """``select_dict.json``, ``Rt_scale_dict.json`` and ``id.json`` of the RAW tree."""
    from mvfr.atomic_io import save_json

    save_json(raw.select_dict_json, select)
    save_json(raw.rt_scale_json, rt_scale)
    save_json(raw.id_json, {
        "train": [face_id(p, e) for p, e in ids if p not in eval_pids],
        "eval": [face_id(p, e) for p, e in ids if p in eval_pids],
    })
