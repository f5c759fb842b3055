"""The visual report: ``eval/report/index.html`` with PNG figures beside it.

Per face: input views with the detected landmarks; the base, IF, reg and meso surfaces rendered
shaded from the same viewpoint; per-stage error heat maps on the surface (distance to the
ground-truth scan, in mm) with a colour bar. Then the metrics table and the training loss curves.
Pictures are rendered offscreen with :mod:`mvfr.render` (moderngl, EGL).
"""

from __future__ import annotations

import functools
import html
import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np

from mvfr.atomic_io import load_image, save_image, save_json, save_text
from mvfr.camera import scale_camera
from mvfr.capture import load_capture
from mvfr.datafolder import DataFolder, RawFolder
from mvfr.evaluation import stage_outputs
from mvfr.mesh_io import read_mesh, vertex_normals
from mvfr.metrics import METRIC_KEYS, STAGE_ORDER, ScanIndex
from mvfr.render import Lighting, Renderer, RenderMesh

log = logging.getLogger(__name__)

HEAT_MAX_MM = 1.0  # colour-bar range of the error heat maps, 0 .. HEAT_MAX_MM
STAGE_TITLES = {"base": "base mesh", "if": "implicit function", "reg": "regularised", "meso": "mesoscopic"}


def heat_colors(values_mm: np.ndarray, vmax: float = HEAT_MAX_MM) -> np.ndarray:
    """Per-vertex error in mm -> linear RGB [N, 3] in [0, 1] through matplotlib's 'inferno' map."""
    from matplotlib import colormaps

    rgb = colormaps["inferno"](np.clip(values_mm / vmax, 0, 1))[:, :3]
    return rgb**2.2  # the renderer shades in linear space and encodes with gamma 2.2


def render_mesh(vertices, faces, K, Rt, width, height, colors=None, renderer: Renderer | None = None) -> np.ndarray:
    """Shaded picture of a mesh, uint8 [H, W, 3] on white; ``colors`` linear RGB per vertex (grey without).
    ``renderer``: one to draw with (kept), else one is made for this picture and released."""
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces)
    if colors is None:
        colors = np.full((len(vertices), 3), 0.72**2.2)
    # Lights fixed to the camera (the capture's world frame is arbitrary): a key light from the
    # upper left of the viewer and a fill from the right, both in front of the face.
    R = np.asarray(Rt)[:, :3]
    to_camera = -R[2]
    key = to_camera - 0.45 * R[0] - 0.35 * R[1]
    fill = to_camera + 0.6 * R[0]
    light = Lighting(
        directions=np.stack([key / np.linalg.norm(key), fill / np.linalg.norm(fill)]),
        colors=np.array([[0.8, 0.8, 0.8], [0.3, 0.3, 0.3]]),
        ambient=(0.2, 0.2, 0.2),
        spec_strength=0.05,
    )
    r = Renderer() if renderer is None else renderer
    try:
        r.set_mesh(RenderMesh(vertices, faces, vertex_normals(vertices, faces), colors=colors))
        rgb, alpha = r.render(K, Rt, width, height, light)
    finally:
        if renderer is None:
            r.release()
    out = rgb + (1 - alpha[..., None])
    return np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8)


def crop_to_content(images: list[np.ndarray], pad: int = 8) -> list[np.ndarray]:
    """Crop every image to the union bounding box of their non-white pixels (same box for all)."""
    mask = np.zeros(images[0].shape[:2], bool)
    for im in images:
        mask |= (im < 250).any(-1)
    if not mask.any():
        return images
    ys, xs = np.nonzero(mask)
    y0, y1 = max(ys.min() - pad, 0), min(ys.max() + pad + 1, mask.shape[0])
    x0, x1 = max(xs.min() - pad, 0), min(xs.max() + pad + 1, mask.shape[1])
    return [im[y0:y1, x0:x1] for im in images]


def label(image: np.ndarray, text: str) -> np.ndarray:
    """The image with a caption strip above it."""
    strip = np.full((28, image.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, text, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (20, 20, 20), 1, cv2.LINE_AA)
    return np.concatenate([strip, image], 0)


def hstack(images: list[np.ndarray]) -> np.ndarray:
    h = max(im.shape[0] for im in images)
    padded = [np.pad(im, ((0, h - im.shape[0]), (0, 4), (0, 0)), constant_values=255) for im in images]
    return np.concatenate(padded, 1)


def colorbar_png(path: Path, vmax: float = HEAT_MAX_MM) -> None:
    """A horizontal colour bar for the heat maps, labelled in mm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import cm, colors

    fig, ax = plt.subplots(figsize=(5, 0.7), dpi=120)
    fig.subplots_adjust(bottom=0.55, top=0.95, left=0.05, right=0.95)
    sm = cm.ScalarMappable(norm=colors.Normalize(0, vmax), cmap="inferno")
    cb = fig.colorbar(sm, cax=ax, orientation="horizontal")
    cb.set_label(f"distance to the ground-truth scan (mm; >= {vmax:g} saturates)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def landmark_figure(folder: DataFolder, fid: str, max_views: int = 3, long_side: int = 480) -> np.ndarray | None:
    """Input views with their detected landmarks (green), side by side; None without landmarks."""
    path = folder.landmarks(fid)
    if not path.is_file():
        return None
    rec = json.loads(path.read_text())
    tiles = []
    for view in rec.get("views", [])[:max_views]:
        det = rec["detections"].get(view, {})
        img = load_image(folder.image(fid, view))
        s = long_side / max(img.shape[:2])
        small = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
        for x, y in det.get("landmarks_px") or []:
            cv2.circle(small, (int(round((x + 0.5) * s - 0.5)), int(round((y + 0.5) * s - 0.5))), 1, (0, 230, 0), -1)
        tiles.append(label(small, f"view {view}" + ("" if det.get("landmarks_px") else " (no face found)")))
    return hstack(tiles) if tiles else None


def surface_figures(folder: DataFolder, raw: RawFolder, fid: str, size: int = 900) -> tuple[np.ndarray, np.ndarray] | None:
    """(shaded surfaces, error heat maps) of every stage with an output, from the first view's camera. The scan
    is read and its closest-point tree built once for every stage; one renderer draws every picture."""
    outputs = {s: p for s, p in stage_outputs(folder, fid).items() if p.is_file()}
    if not outputs:
        return None
    cap = load_capture(folder, fid, with_images=False)
    cam = cap.cameras[0]
    s = size / max(cam.width, cam.height)
    cam = scale_camera(cam, round(cam.width * s), round(cam.height * s))
    gt = read_mesh(raw.scan(fid)) if raw.scan(fid).is_file() else None
    scan = None if gt is None else ScanIndex(gt.vertices, gt.faces)
    shaded, heat, titles = [], [], []
    renderer = Renderer()
    try:
        for stage in STAGE_ORDER:
            if stage not in outputs:
                continue
            mesh = read_mesh(outputs[stage])
            draw = functools.partial(render_mesh, mesh.vertices, mesh.faces, cam.K, cam.Rt, cam.width, cam.height,
                                     renderer=renderer)
            shaded.append(draw())
            if scan is not None:
                heat.append(draw(heat_colors(scan.closest(mesh.vertices)[0] * cap.mm_per_unit)))
            titles.append(STAGE_TITLES[stage])
    finally:
        renderer.release()
    shaded = crop_to_content(shaded)
    row1 = hstack([label(im, t) for im, t in zip(shaded, titles)])
    row2 = hstack([label(im, t + " error") for im, t in zip(crop_to_content(heat), titles)]) if heat else None
    return row1, row2


def confidence_figure(folder: DataFolder, fid: str, scale: int = 2) -> np.ndarray | None:
    """The IF and reg confidence maps of ``fid`` side by side in UV (``pred/*_map/conf_PPP_EE.npy``; dark = no
    evidence, the texel stays on the base surface), ``scale`` x enlarged; None when neither exists."""
    panels = []
    for stage in ("if", "reg"):
        path = folder.conf_map(stage, fid)
        if not path.is_file():
            continue
        conf = np.clip(np.load(path).astype(np.float32), 0.0, 1.0)
        rgb = cv2.applyColorMap((conf * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)[..., ::-1]
        rgb = np.ascontiguousarray(np.where((conf > 0)[..., None], rgb, 40).astype(np.uint8))
        rgb = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        panels.append(label(rgb, f"{stage} confidence"))
    return hstack(panels) if panels else None


def metrics_table_html(doc: dict) -> str:
    keys = list(METRIC_KEYS)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in ["face", "stage", *keys])
    rows = []
    for fid, stages in [("mean", doc.get("mean", {}))] + sorted(doc.get("faces", {}).items()):
        for stage in STAGE_ORDER:
            if stage in stages:
                cells = "".join(f"<td>{stages[stage].get(k, float('nan')):.3f}</td>" for k in keys)
                cls = ' class="mean"' if fid == "mean" else ""
                rows.append(f"<tr{cls}><td>{fid}</td><td>{stage}</td>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1800px; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f3f3f3; } tr.mean td { font-weight: bold; background: #fafae8; }
img { max-width: 100%; border: 1px solid #eee; margin: 4px 0; }
.note { color: #666; font-size: 0.9em; }
"""


FIGURE_NOTES = {
    "landmarks": "Input views and detected landmarks",
    "confidence": "Confidence in UV (peak score minus the best rival beyond 3 sigma; 0 = the base surface is kept; "
                  "reg: smoothed over a few texels)",
    "surfaces": "Surfaces, same viewpoint",
    "errors": "Distance of each vertex to the scan",
}


def figure_inputs(folder: DataFolder, raw: RawFolder, fid: str) -> list[Path]:
    """The files a face's figures are drawn from (those that exist)."""
    paths = [*stage_outputs(folder, fid).values(), raw.scan(fid), folder.landmarks(fid), folder.params(fid),
             folder.conf_map("if", fid), folder.conf_map("reg", fid)]
    return [p for p in paths if p.is_file()]


def draw_figures(folder: DataFolder, raw: RawFolder, fid: str, out: Path) -> list[str]:
    """Write the face's PNGs into ``out``; returns the names of the figures written (keys of :data:`FIGURE_NOTES`)."""
    figures = {"landmarks": landmark_figure(folder, fid), "confidence": confidence_figure(folder, fid)}
    surfaces = surface_figures(folder, raw, fid)
    if surfaces is not None:
        figures["surfaces"], figures["errors"] = surfaces
    written = []
    for name, image in figures.items():
        if image is not None:
            save_image(out / f"{fid}_{name}.png", image)
            written.append(name)
    return written


def face_section(folder: DataFolder, raw: RawFolder, fid: str, overwrite: bool = False) -> str:
    """The HTML of one face; its figures are drawn once (``eval/report/PPP_EE_figures.json`` lists them)
    and drawn again only when an input is newer, or with ``overwrite``."""
    out = folder.report_dir
    stamp = out / f"{fid}_figures.json"
    names = json.loads(stamp.read_text()).get("figures", []) if stamp.is_file() and not overwrite else None
    current = names is not None and all((out / f"{fid}_{n}.png").is_file() for n in names) and all(
        p.stat().st_mtime_ns < stamp.stat().st_mtime_ns for p in figure_inputs(folder, raw, fid))
    if not current:
        names = draw_figures(folder, raw, fid, out)
    if not current:
        save_json(stamp, {"figures": names})
    html_parts = [f'<p>{FIGURE_NOTES[n]}</p><img src="{fid}_{n}.png">' for n in names]
    if "errors" in names:
        html_parts.append('<br><img src="colorbar.png">')
    return "".join(html_parts)


def write_report(folder: DataFolder, raw: RawFolder, face_ids: list[str], max_faces: int = 4, overwrite: bool = False) -> Path:
    """Write ``eval/report/index.html`` and its PNGs; returns the HTML path. A face's figures are drawn once
    (:func:`face_section`); ``overwrite`` draws them again."""
    out = folder.report_dir
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"<h1>mvfr report: {html.escape(str(folder.root))}</h1>"]
    if folder.metrics_json.is_file():
        doc = json.loads(folder.metrics_json.read_text())
        parts.append("<h2>Metrics (mm; normal error in degrees)</h2>" + metrics_table_html(doc))
        parts.append('<p class="note">Facial region of the ground-truth scan; accuracy = prediction to scan, '
                     "completeness = scan to prediction, chamfer = their mean (DESIGN §6).</p>")
    colorbar_png(out / "colorbar.png")
    for fid in face_ids[:max_faces]:
        parts.append(f"<h2>Face {fid}</h2>" + face_section(folder, raw, fid, overwrite))
    curves = sorted(folder.root.glob("logs/*/*.png"))
    if curves:
        parts.append("<h2>Training curves</h2>")
        for c in curves:
            name = f"curve_{c.parent.name}_{c.name}"
            shutil.copyfile(c, out / name)
            parts.append(f'<p>{html.escape(c.parent.name)}</p><img src="{name}">')
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>mvfr report</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>"
    save_text(out / "index.html", page)
    return out / "index.html"
