"""Rendering of a whole synthetic head (moderngl over EGL; Mesa llvmpipe on a CPU).

One draw of one vertex buffer; every vertex carries its material:

* ``mat`` 0: face skin, albedo / specular / detail from the face-tile textures (u in [0, 1]);
* ``mat`` 1: head skin and hair, albedo / specular from the head-tile textures (u in [1, 2]);
* ``mat`` 2: plain per-vertex colour (eyes, teeth, mouth, eyelashes, shoulders).

Mesoscopic detail is rendered in two consistent ways: the mesh is displaced at its vertices, and
the shading normal is the exact normal of the surface ``P + h n`` at texture resolution, from
the height gradient ``(dh/du, dh/dv)`` (mm per uv unit) and the per-vertex tangents
``T = dP/du``, ``B = dP/dv``: ``n' = normalize((T + h_u n) x (B + h_v n))``. Pores smaller than a
triangle thus shade correctly, and mipmapping filters them the way a lens and a sensor would.

Shading: up to 6 directional lights (wrap-around diffuse with a warm subsurface tint at the
terminator for skin), a sky/ground hemisphere ambient, baked per-vertex ambient occlusion, and
Blinn-Phong specular with Schlick's Fresnel, scaled per texel by the specular map. Output is
linear light; the caller applies exposure, white balance, the camera response and noise.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mvfr.render import get_context, view_projection

MAX_LIGHTS = 6

_VERT = """
#version 330
uniform mat4 mvp;
in vec3 in_pos; in vec3 in_nrm; in vec3 in_tu; in vec3 in_tv; in vec2 in_uv; in vec3 in_col; in vec4 in_mat;
out vec3 v_pos; out vec3 v_nrm; out vec3 v_tu; out vec3 v_tv; out vec2 v_uv; out vec3 v_col; out vec4 v_mat;
void main() {
    v_pos = in_pos; v_nrm = in_nrm; v_tu = in_tu; v_tv = in_tv; v_uv = in_uv; v_col = in_col; v_mat = in_mat;
    gl_Position = mvp * vec4(in_pos, 1.0);
}
"""

_FRAG = """
#version 330
uniform sampler2D face_albedo; uniform sampler2D face_spec; uniform sampler2D face_grad;
uniform sampler2D head_albedo; uniform sampler2D head_spec;
uniform vec3 cam_pos;
uniform int n_lights;
uniform vec3 light_dir[6];
uniform vec3 light_col[6];
uniform vec3 sky; uniform vec3 ground;
uniform float wrap; uniform float spec_gain; uniform float detail_gain;
in vec3 v_pos; in vec3 v_nrm; in vec3 v_tu; in vec3 v_tv; in vec2 v_uv; in vec3 v_col; in vec4 v_mat;
out vec4 f_color;
void main() {
    // v_mat: (material, specular weight, shininess, ambient occlusion)
    int mat = int(v_mat.x + 0.5);
    vec3 n = v_nrm / max(length(v_nrm), 1e-8);
    vec3 v = normalize(cam_pos - v_pos);
    vec3 albedo = v_col;
    float ks = v_mat.y;
    float skin = 0.0;
    if (mat == 0) {
        vec2 uv = vec2(v_uv.x, v_uv.y);
        albedo = texture(face_albedo, uv).rgb;
        ks *= texture(face_spec, uv).r;
        vec2 g = texture(face_grad, uv).rg * detail_gain;
        vec3 du = v_tu + g.x * n;
        vec3 dv = v_tv + g.y * n;
        vec3 nn = cross(du, dv);
        float s = dot(cross(v_tu, v_tv), n) < 0.0 ? -1.0 : 1.0;
        if (dot(nn, nn) > 1e-20) n = normalize(s * nn);
        skin = 1.0;
    } else if (mat == 1) {
        vec2 uv = vec2(v_uv.x - 1.0, v_uv.y);
        albedo = texture(head_albedo, uv).rgb;
        ks *= texture(head_spec, uv).r;
        skin = 1.0;
    }
    if (dot(n, v) < 0.0 && mat == 2) n = -n;
    float ao = v_mat.w;
    vec3 diff = mix(ground, sky, 0.5 + 0.5 * n.y) * ao;
    vec3 spec = vec3(0.0);
    float fres = 0.04 + 0.96 * pow(1.0 - max(dot(n, v), 0.0), 5.0);
    for (int i = 0; i < n_lights; ++i) {
        vec3 l = normalize(light_dir[i]);
        float ndl = dot(n, l);
        float w = wrap * skin;
        float d = max((ndl + w) / (1.0 + w), 0.0);
        // warm tint where wrap lighting reaches past the terminator (light scattered under the skin)
        vec3 tint = mix(vec3(1.0), vec3(1.0, 0.55, 0.45), skin * clamp((w - ndl) / (2.0 * w + 1e-4), 0.0, 1.0) * step(ndl, w));
        diff += light_col[i] * d * tint * mix(1.0, ao, 0.5);
        vec3 h = (l + v) / max(length(l + v), 1e-8);
        float sh = v_mat.z;
        spec += light_col[i] * pow(max(dot(n, h), 0.0), sh) * (sh + 8.0) / 25.0 * step(0.0, ndl) * max(ndl, 0.0);
    }
    vec3 c = albedo * diff + spec_gain * ks * (0.25 + 3.0 * fres) * spec * ao;
    f_color = vec4(c, 1.0);
}
"""


@dataclasses.dataclass
class HeadLighting:
    """Directional lights (directions point *towards* the lights, head frame), linear RGB."""

    directions: np.ndarray  # [L, 3]
    colors: np.ndarray  # [L, 3]
    sky: tuple[float, float, float] = (0.12, 0.12, 0.13)
    ground: tuple[float, float, float] = (0.05, 0.045, 0.04)
    wrap: float = 0.3
    spec_gain: float = 1.0


@dataclasses.dataclass
class HeadMesh:
    """Per-vertex arrays of the render mesh (``N`` vertices, mm, head frame)."""

    vertices: np.ndarray  # [N, 3]
    faces: np.ndarray  # [F, 3]
    normals: np.ndarray  # [N, 3] smooth, unit
    tangent_u: np.ndarray  # [N, 3] dP/du, mm per uv unit (zero where unused)
    tangent_v: np.ndarray  # [N, 3] dP/dv
    uvs: np.ndarray  # [N, 2] in the model's tiles
    colors: np.ndarray  # [N, 3] linear RGB (material 2)
    material: np.ndarray  # [N] 0 face tile, 1 head tile, 2 vertex colour
    spec: np.ndarray  # [N] specular weight
    shininess: np.ndarray  # [N]
    ao: np.ndarray  # [N] ambient occlusion in [0, 1]


@dataclasses.dataclass
class HeadTextures:
    face_albedo: np.ndarray  # [S, S, 3] float32 linear RGB
    face_spec: np.ndarray  # [S, S] float32
    face_grad: np.ndarray  # [S, S, 2] float32, dh/du and dh/dv, mm per uv unit
    head_albedo: np.ndarray  # [S2, S2, 3] float32 linear
    head_spec: np.ndarray  # [S2, S2] float32


class HeadRenderer:
    """Draws a :class:`HeadMesh` with :class:`HeadTextures` seen by OpenCV cameras (DESIGN §3)."""

    def __init__(self, samples: int = 0):
        self.ctx = get_context()
        self.samples = int(samples)
        self.prog = self.ctx.program(vertex_shader=_VERT, fragment_shader=_FRAG)
        self._objs: list = []
        self._tex: dict = {}
        self._fbos: dict = {}
        self._vao = None
        self._bbox = None

    def release(self) -> None:
        self._release_mesh()
        self._release_textures()
        for ms, res in self._fbos.values():
            for fb in {id(ms): ms, id(res): res}.values():
                for a in list(fb.color_attachments) + ([fb.depth_attachment] if fb.depth_attachment else []):
                    a.release()
                fb.release()
        self._fbos = {}
        self.prog.release()

    def _release_mesh(self) -> None:
        for o in self._objs:
            o.release()
        self._objs = []
        self._vao = None

    def _release_textures(self) -> None:
        for t in self._tex.values():
            t.release()
        self._tex = {}

    def set_mesh(self, mesh: HeadMesh) -> None:
        self._release_mesh()
        n = len(mesh.vertices)
        mat = np.stack([mesh.material, mesh.spec, mesh.shininess, mesh.ao], 1)
        data = np.concatenate([mesh.vertices, mesh.normals, mesh.tangent_u, mesh.tangent_v, mesh.uvs, mesh.colors, mat], 1)
        if data.shape != (n, 21):
            raise ValueError(f"HeadMesh arrays disagree in length or width: packed {data.shape}, expected ({n}, 21)")
        faces = np.asarray(mesh.faces)
        if faces.min() < 0 or faces.max() >= n:
            raise ValueError("HeadMesh faces index vertices that do not exist")
        vbo = self.ctx.buffer(np.ascontiguousarray(data, dtype="f4").tobytes())
        ibo = self.ctx.buffer(np.ascontiguousarray(faces, dtype="i4").tobytes())
        self._vao = self.ctx.vertex_array(
            self.prog, [(vbo, "3f 3f 3f 3f 2f 3f 4f", "in_pos", "in_nrm", "in_tu", "in_tv", "in_uv", "in_col", "in_mat")],
            index_buffer=ibo,
        )
        self._objs = [self._vao, vbo, ibo]
        v = np.asarray(mesh.vertices)
        self._bbox = (v.min(0), v.max(0))

    def _texture(self, img: np.ndarray, dtype: str):
        img = np.ascontiguousarray(np.asarray(img, dtype=np.float32)[::-1])  # GL row 0 is v = 0
        comps = 1 if img.ndim == 2 else img.shape[2]
        data = img.astype(np.float16) if dtype == "f2" else img
        t = self.ctx.texture((img.shape[1], img.shape[0]), comps, data.tobytes(), dtype=dtype, alignment=1)
        t.build_mipmaps()
        t.repeat_x = t.repeat_y = False
        t.anisotropy = 1.0  # llvmpipe: anisotropic filtering doubles the render time
        return t

    def set_textures(self, tex: HeadTextures) -> None:
        self._release_textures()
        self._tex = {
            "face_albedo": self._texture(tex.face_albedo, "f2"), "face_spec": self._texture(tex.face_spec, "f2"),
            "face_grad": self._texture(tex.face_grad, "f2"), "head_albedo": self._texture(tex.head_albedo, "f2"),
            "head_spec": self._texture(tex.head_spec, "f2"),
        }

    def _framebuffers(self, width: int, height: int):
        key = (width, height)
        if key not in self._fbos:
            ctx = self.ctx
            ms = ctx.framebuffer(
                color_attachments=[ctx.renderbuffer((width, height), 4, samples=self.samples, dtype="f4")],
                depth_attachment=ctx.depth_renderbuffer((width, height), samples=self.samples),
            )
            res = ctx.framebuffer(color_attachments=[ctx.renderbuffer((width, height), 4, dtype="f4")]) if self.samples else ms
            self._fbos[key] = (ms, res)
        return self._fbos[key]

    def render(self, K: np.ndarray, Rt: np.ndarray, width: int, height: int, lighting: HeadLighting,
               detail_gain: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Linear ``rgb [H, W, 3]`` float32 (premultiplied by coverage) and ``alpha [H, W]``."""
        if self._vao is None or not self._tex:
            raise RuntimeError("HeadRenderer.render needs set_mesh and set_textures first")
        K = np.asarray(K, dtype=np.float64)
        Rt = np.asarray(Rt, dtype=np.float64)
        p = self.prog
        p["mvp"].write(view_projection(K, Rt, width, height, self._bbox).T.astype("f4").tobytes())
        p["cam_pos"].value = tuple((-Rt[:, :3].T @ Rt[:, 3]).astype(float))
        dirs = np.asarray(lighting.directions, dtype=np.float64).reshape(-1, 3)[:MAX_LIGHTS]
        cols = np.asarray(lighting.colors, dtype=np.float64).reshape(-1, 3)[:MAX_LIGHTS]
        pad = MAX_LIGHTS - len(dirs)
        p["n_lights"].value = len(dirs)
        p["light_dir"].write(np.concatenate([dirs, np.tile([[0, 0, 1.0]], (pad, 1))]).astype("f4").tobytes())
        p["light_col"].write(np.concatenate([cols, np.zeros((pad, 3))]).astype("f4").tobytes())
        p["sky"].value = tuple(float(x) for x in lighting.sky)
        p["ground"].value = tuple(float(x) for x in lighting.ground)
        p["wrap"].value = float(lighting.wrap)
        p["spec_gain"].value = float(lighting.spec_gain)
        p["detail_gain"].value = float(detail_gain)
        for unit, name in enumerate(("face_albedo", "face_spec", "face_grad", "head_albedo", "head_spec")):
            p[name].value = unit
            self._tex[name].use(unit)
        ms, res = self._framebuffers(int(width), int(height))
        ms.use()
        ms.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        self.ctx.enable(self.ctx.DEPTH_TEST | self.ctx.CULL_FACE)
        # the ICT faces wind counter-clockwise seen from outside; projection_matrix maps image row 0 to
        # framebuffer row 0, which mirrors the winding on screen: front faces are clockwise there
        self.ctx.front_face = "cw"
        try:
            self._vao.render()
        finally:
            self.ctx.disable(self.ctx.CULL_FACE)
            self.ctx.front_face = "ccw"
        if res is not ms:
            self.ctx.copy_framebuffer(res, ms)
        buf = np.frombuffer(res.read(components=4, dtype="f4", alignment=1), dtype=np.float32)
        img = buf.reshape(int(height), int(width), 4)  # framebuffer row 0 = image row 0 (projection_matrix)
        img = np.nan_to_num(img, nan=0.0, posinf=0.0, neginf=0.0)  # a degenerate normal must not leave a black hole
        alpha = np.clip(img[..., 3], 0, 1)
        return np.ascontiguousarray(img[..., :3]), np.ascontiguousarray(alpha)
