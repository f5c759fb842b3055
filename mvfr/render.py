"""Offscreen rendering with moderngl (EGL, headless; works on the CPU through Mesa llvmpipe).

Two uses:

* :meth:`Renderer.render` draws a shaded, textured mesh seen by an OpenCV camera (``K``, ``Rt``,
  DESIGN §3) into an RGB image; the synthetic data (``mvfr.synthesis``) and the report figures of
  later stages both use it (``render_shaded`` is the one-liner for a grey shaded mesh).
* :meth:`Renderer.render_uv` rasterises per-vertex attributes in UV space with the project's texel
  convention (texel (row i, col j) has its centre at uv = ((j + .5) / S, 1 - (i + .5) / S)).

Pixel convention: pixel (0, 0) is the centre of the top-left pixel; a point that projects to pixel
(x, y) with ``project_points`` is drawn at exactly that pixel. Rows are returned top to bottom.

The GL context is created once per process (:func:`get_context`) and reused.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

_VERT = """
#version 330
uniform mat4 mvp;
in vec3 in_pos; in vec3 in_nrm; in vec2 in_uv; in vec3 in_col; in float in_w; in float in_spec;
out vec3 v_pos; out vec3 v_nrm; out vec2 v_uv; out vec3 v_col; out float v_w; out float v_spec;
void main() {
    v_pos = in_pos; v_nrm = in_nrm; v_uv = in_uv; v_col = in_col; v_w = in_w; v_spec = in_spec;
    gl_Position = mvp * vec4(in_pos, 1.0);
}
"""

_FRAG = """
#version 330
uniform sampler2D albedo_tex;
uniform vec3 cam_pos;
uniform int n_lights;
uniform vec3 light_dir[4];
uniform vec3 light_col[4];
uniform vec3 ambient;
uniform float wrap;
uniform float spec_strength;
uniform float shininess;
uniform float gamma;
in vec3 v_pos; in vec3 v_nrm; in vec2 v_uv; in vec3 v_col; in float v_w; in float v_spec;
out vec4 f_color;
void main() {
    vec3 n = normalize(v_nrm);
    vec3 v = normalize(cam_pos - v_pos);
    if (dot(n, v) < 0.0) n = -n;
    vec3 tex = pow(texture(albedo_tex, v_uv).rgb, vec3(2.2));
    vec3 albedo = mix(v_col, tex, clamp(v_w, 0.0, 1.0));
    vec3 diff = ambient;
    vec3 spec = vec3(0.0);
    for (int i = 0; i < n_lights; ++i) {
        vec3 l = normalize(light_dir[i]);
        float ndl = dot(n, l);
        diff += light_col[i] * max((ndl + wrap) / (1.0 + wrap), 0.0);
        vec3 h = normalize(l + v);
        spec += light_col[i] * pow(max(dot(n, h), 0.0), shininess) * step(0.0, ndl);
    }
    vec3 c = albedo * diff + spec_strength * v_spec * spec;
    f_color = vec4(pow(clamp(c, 0.0, 1.0), vec3(1.0 / gamma)), 1.0);
}
"""

_UV_VERT = """
#version 330
in vec2 in_uv; in vec4 in_attr;
out vec4 v_attr;
void main() { v_attr = in_attr; gl_Position = vec4(2.0 * in_uv.x - 1.0, 1.0 - 2.0 * in_uv.y, 0.0, 1.0); }
"""

_UV_FRAG = """
#version 330
in vec4 v_attr;
out vec4 f_out;
void main() { f_out = v_attr; }
"""


@dataclasses.dataclass
class Lighting:
    """Directional lights in world coordinates (directions point *towards* the lights), linear RGB."""

    directions: np.ndarray = dataclasses.field(default_factory=lambda: np.array([[0.3, 0.4, 1.0], [-0.6, 0.1, 0.6]]))
    colors: np.ndarray = dataclasses.field(default_factory=lambda: np.array([[0.85, 0.85, 0.85], [0.25, 0.25, 0.25]]))
    ambient: tuple[float, float, float] = (0.18, 0.18, 0.18)
    wrap: float = 0.15  # wrap-around diffuse (soft terminator, a cheap stand-in for subsurface scattering)
    spec_strength: float = 0.12  # Blinn-Phong specular weight
    shininess: float = 30.0
    gamma: float = 2.2  # output encoding (linear shading -> display)


@dataclasses.dataclass
class RenderMesh:
    """What :meth:`Renderer.render` draws. Per-vertex arrays, ``N`` vertices, world units.

    ``albedo = mix(colors, texture(uv), tex_weight)``; ``spec`` scales the specular lobe per vertex.
    ``colors`` are linear RGB in [0, 1]; the texture is sRGB-like (gamma 2.2) uint8.
    """

    vertices: np.ndarray  # [N, 3]
    faces: np.ndarray  # [F, 3]
    normals: np.ndarray  # [N, 3] unit
    uvs: np.ndarray | None = None  # [N, 2]
    colors: np.ndarray | None = None  # [N, 3] linear RGB
    tex_weight: np.ndarray | None = None  # [N] in [0, 1]
    spec: np.ndarray | None = None  # [N]
    texture: np.ndarray | None = None  # [T, T, 3] uint8 RGB, row 0 = v near 1 (image convention)


@functools.lru_cache(maxsize=1)
def get_context():
    """The process-wide standalone moderngl context (EGL, headless)."""
    import moderngl

    try:
        return moderngl.create_standalone_context(backend="egl")
    except Exception as exc:  # pragma: no cover - depends on the system
        raise RuntimeError(
            f"could not create a headless OpenGL context (EGL): {exc}; install libegl1 libgl1 libgl1-mesa-dri "
            "(make system-deps)"
        ) from exc


def projection_matrix(K: np.ndarray, width: int, height: int, near: float, far: float) -> np.ndarray:
    """OpenCV intrinsics -> 4x4 GL projection of camera coordinates (x right, y down, z forward).

    NDC x = (2 x_pix + 1) / W - 1 and NDC y = (2 y_pix + 1) / H - 1 (framebuffer row 0 = image row 0),
    so pixel centres agree with :func:`mvfr.camera.project_points`.
    """
    fx, s, cx = K[0, 0], K[0, 1], K[0, 2]
    fy, cy = K[1, 1], K[1, 2]
    P = np.zeros((4, 4))
    P[0] = [2 * fx / width, 2 * s / width, (2 * cx + 1) / width - 1, 0]
    P[1] = [0, 2 * fy / height, (2 * cy + 1) / height - 1, 0]
    P[2] = [0, 0, (far + near) / (far - near), -2 * far * near / (far - near)]
    P[3] = [0, 0, 1, 0]
    return P


def view_projection(K: np.ndarray, Rt: np.ndarray, width: int, height: int, bbox: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The 4x4 GL matrix world -> clip of an OpenCV camera, near/far fitted to a bounding box ``(lo [3], hi [3])``
    (depth precision)."""
    lo, hi = bbox
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    zc = corners @ Rt[:, :3].T[:, 2] + Rt[2, 3]
    far = max(zc.max() * 1.05, 1e-6)
    near = max(zc.min() * 0.9, far * 1e-3)
    view = np.eye(4)
    view[:3] = Rt
    return projection_matrix(K, width, height, near, far) @ view


class Renderer:
    """Offscreen renderer bound to one mesh at a time (upload once, draw from many cameras).

    >>> r = Renderer(); r.set_mesh(render_mesh)
    >>> rgb, alpha = r.render(K, Rt, width, height, lighting)
    """

    def __init__(self, samples: int = 4):
        self.ctx = get_context()
        self.samples = int(samples)
        self.prog = self.ctx.program(vertex_shader=_VERT, fragment_shader=_FRAG)
        self.uv_prog = self.ctx.program(vertex_shader=_UV_VERT, fragment_shader=_UV_FRAG)
        self._fbos: dict = {}
        self._vao = None
        self._vbo = None
        self._ibo = None
        self._tex = None
        self._bbox = None

    # ------------------------------------------------------------------------------- resources
    def _framebuffers(self, width: int, height: int):
        key = (width, height)
        if key not in self._fbos:
            if len(self._fbos) > 8:
                self._release_fbos()
            ctx = self.ctx
            ms = ctx.framebuffer(
                color_attachments=[ctx.renderbuffer((width, height), 4, samples=self.samples)],
                depth_attachment=ctx.depth_renderbuffer((width, height), samples=self.samples),
            )
            resolved = ctx.framebuffer(color_attachments=[ctx.renderbuffer((width, height), 4)]) if self.samples else ms
            self._fbos[key] = (ms, resolved)
        return self._fbos[key]

    def _release_fbos(self) -> None:
        for ms, res in self._fbos.values():
            for fb in ((ms, res) if res is not ms else (ms,)):
                for a in list(fb.color_attachments) + ([fb.depth_attachment] if fb.depth_attachment else []):
                    a.release()
                fb.release()
        self._fbos = {}

    def release(self) -> None:
        """Free the GPU objects of this renderer (the shared context stays)."""
        self._release_mesh()
        self._release_fbos()
        self.prog.release()
        self.uv_prog.release()

    def _release_mesh(self) -> None:
        for o in (self._vao, self._vbo, self._ibo, self._tex):
            if o is not None:
                o.release()
        self._vao = self._vbo = self._ibo = self._tex = None

    def set_mesh(self, mesh: RenderMesh) -> None:
        """Upload ``mesh`` (replaces the previous one)."""
        self._release_mesh()
        v = np.asarray(mesh.vertices, dtype=np.float64)
        n = len(v)
        if mesh.faces.size == 0 or n == 0:
            raise ValueError("cannot render an empty mesh")
        if np.asarray(mesh.faces).max() >= n or np.asarray(mesh.faces).min() < 0:
            raise ValueError("mesh faces index vertices that do not exist")
        uvs = np.zeros((n, 2)) if mesh.uvs is None else np.asarray(mesh.uvs)
        colors = np.full((n, 3), 0.7) if mesh.colors is None else np.asarray(mesh.colors)
        has_tex = mesh.texture is not None
        w = (np.ones(n) if has_tex else np.zeros(n)) if mesh.tex_weight is None else np.asarray(mesh.tex_weight)
        if not has_tex:
            w = np.zeros(n)
        spec = np.ones(n) if mesh.spec is None else np.asarray(mesh.spec)
        data = np.concatenate([v, mesh.normals, uvs, colors, w[:, None], spec[:, None]], 1).astype("f4")
        self._vbo = self.ctx.buffer(np.ascontiguousarray(data).tobytes())
        self._ibo = self.ctx.buffer(np.ascontiguousarray(mesh.faces, dtype="i4").tobytes())
        self._vao = self.ctx.vertex_array(
            self.prog,
            [(self._vbo, "3f 3f 2f 3f 1f 1f", "in_pos", "in_nrm", "in_uv", "in_col", "in_w", "in_spec")],
            index_buffer=self._ibo,
        )
        tex = mesh.texture if has_tex else np.full((2, 2, 3), 255, np.uint8)
        # GL texture row 0 is v = 0: flip the image rows so that uv follows the project's convention.
        tex = np.ascontiguousarray(np.asarray(tex, dtype=np.uint8)[::-1])
        self._tex = self.ctx.texture((tex.shape[1], tex.shape[0]), 3, tex.tobytes(), alignment=1)
        self._tex.build_mipmaps()
        self._tex.repeat_x = self._tex.repeat_y = False
        self._tex.anisotropy = 8.0
        self._bbox = (v.min(0), v.max(0))

    # -------------------------------------------------------------------------------- drawing
    def render(
        self,
        K: np.ndarray,
        Rt: np.ndarray,
        width: int,
        height: int,
        lighting: Lighting | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw the current mesh seen by camera ``K [3,3]``, ``Rt [3,4]`` (world -> camera).

        Returns ``rgb [H, W, 3]`` float32 in [0, 1] (display-encoded, gamma applied, *premultiplied*
        by the coverage) and ``alpha [H, W]`` float32 coverage (anti-aliased with MSAA); composite
        over a background with ``rgb + background * (1 - alpha)``.
        """
        if self._vao is None:
            raise RuntimeError("Renderer.render called before set_mesh")
        lighting = lighting or Lighting()
        K = np.asarray(K, dtype=np.float64)
        Rt = np.asarray(Rt, dtype=np.float64)
        mvp = view_projection(K, Rt, width, height, self._bbox)
        center = -Rt[:, :3].T @ Rt[:, 3]
        prog = self.prog
        prog["mvp"].write(mvp.T.astype("f4").tobytes())
        prog["cam_pos"].value = tuple(center.astype(float))
        dirs = np.asarray(lighting.directions, dtype=np.float64).reshape(-1, 3)[:4]
        cols = np.asarray(lighting.colors, dtype=np.float64).reshape(-1, 3)[:4]
        pad = 4 - len(dirs)
        dirs = np.concatenate([dirs, np.tile([[0, 0, 1.0]], (pad, 1))])
        cols = np.concatenate([cols, np.zeros((pad, 3))])
        prog["n_lights"].value = 4 - pad
        prog["light_dir"].write(dirs.astype("f4").tobytes())
        prog["light_col"].write(cols.astype("f4").tobytes())
        prog["ambient"].value = tuple(float(a) for a in lighting.ambient)
        prog["wrap"].value = float(lighting.wrap)
        prog["spec_strength"].value = float(lighting.spec_strength)
        prog["shininess"].value = float(lighting.shininess)
        prog["gamma"].value = float(lighting.gamma)
        prog["albedo_tex"].value = 0
        self._tex.use(0)
        ms, resolved = self._framebuffers(int(width), int(height))
        ms.use()
        ms.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        self.ctx.enable(self.ctx.DEPTH_TEST)
        self.ctx.disable(self.ctx.CULL_FACE)
        self._vao.render()
        if resolved is not ms:
            self.ctx.copy_framebuffer(resolved, ms)
        buf = np.frombuffer(resolved.read(components=4, alignment=1), dtype=np.uint8)
        img = buf.reshape(int(height), int(width), 4).astype(np.float32) / 255.0
        return img[..., :3].copy(), img[..., 3].copy()

    def render_uv(self, uvs: np.ndarray, faces: np.ndarray, attributes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Rasterise per-vertex ``attributes [N, C<=4]`` over ``uvs [N, 2]``, ``faces [F, 3]`` into an S x S map.

        Returns ``values [S, S, C]`` float32 (linear interpolation inside each triangle) and
        ``covered [S, S]`` bool (texel centre inside some triangle). Row 0 is v near 1.
        """
        attributes = np.asarray(attributes, dtype=np.float64)
        if attributes.ndim == 1:
            attributes = attributes[:, None]
        C = attributes.shape[1]
        if C > 3:
            raise ValueError("render_uv takes at most 3 attribute channels (the 4th marks coverage)")
        attr4 = np.concatenate([attributes, np.zeros((len(attributes), 3 - C)), np.ones((len(attributes), 1))], 1)
        data = np.concatenate([np.asarray(uvs, dtype=np.float64), attr4], 1).astype("f4")
        ctx = self.ctx
        vbo = ctx.buffer(np.ascontiguousarray(data).tobytes())
        ibo = ctx.buffer(np.ascontiguousarray(faces, dtype="i4").tobytes())
        vao = ctx.vertex_array(self.uv_prog, [(vbo, "2f 4f", "in_uv", "in_attr")], index_buffer=ibo)
        tex = ctx.texture((size, size), 4, dtype="f4")
        fbo = ctx.framebuffer(color_attachments=[tex])
        try:
            fbo.use()
            fbo.clear(0.0, 0.0, 0.0, 0.0)
            ctx.disable(ctx.DEPTH_TEST)
            ctx.disable(ctx.CULL_FACE)
            vao.render()
            out = np.frombuffer(fbo.read(components=4, dtype="f4", alignment=1), dtype=np.float32).reshape(size, size, 4)
        finally:
            for o in (vao, vbo, ibo, fbo, tex):
                o.release()
        return out[..., :C].copy(), out[..., 3] > 0.5


def render_shaded(
    vertices: np.ndarray,
    faces: np.ndarray,
    K: np.ndarray,
    Rt: np.ndarray,
    width: int,
    height: int,
    color: tuple[float, float, float] = (0.75, 0.75, 0.75),
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
    lighting: Lighting | None = None,
) -> np.ndarray:
    """A grey shaded picture of a mesh (for reports): ``uint8 [H, W, 3]`` seen by ``K``, ``Rt``."""
    from mvfr.mesh_io import vertex_normals

    vertices = np.asarray(vertices, dtype=np.float64)
    normals = vertex_normals(vertices, np.asarray(faces))
    r = Renderer()
    try:
        r.set_mesh(RenderMesh(vertices, np.asarray(faces), normals, colors=np.tile(np.asarray(color, float) ** 2.2, (len(vertices), 1))))
        lighting = lighting or Lighting(spec_strength=0.05)
        rgb, alpha = r.render(K, Rt, width, height, lighting)
    finally:
        r.release()
    bg = np.asarray(background, dtype=np.float32)
    out = rgb + bg * (1 - alpha[..., None])
    return np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8)
