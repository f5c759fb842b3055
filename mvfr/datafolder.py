"""Every path of the RAW (FaceScape multi-view layout) and DATA_FOLDER trees (DESIGN §4).

No other code joins path strings: stage scripts ask :class:`DataFolder` or :class:`RawFolder`.

A face id is ``PPP_EE`` (person, 3 digits; expression, 2 digits). RAW keeps FaceScape's names
(``imgs/<pid>/<k>_<expname>/``, pid without padding); DATA_FOLDER keeps the original release's
names (``images/PPP/EE/``, ``maps/<split>/pos_map/pos_map_PPP_EE.npy``, ...).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

EXPRESSION_NAMES = [
    "neutral", "smile", "mouth_stretch", "anger", "jaw_left", "jaw_right", "jaw_forward",
    "mouth_left", "mouth_right", "dimpler", "chin_raiser", "lip_puckerer", "lip_funneler",
    "sadness", "lip_roll", "grin", "cheek_blowing", "eye_closed", "brow_raiser", "brow_lower",
]  # FaceScape's 20 expressions; expression k (1-based) is EXPRESSION_NAMES[k - 1]

SPLITS = ("train", "eval")
MAP_NAMES = ("pos_map", "norm_map", "mv_map", "valid_map")

_FACE_ID = re.compile(r"^(\d{1,3})_(\d{1,2})$")


class DataError(ValueError):
    """Missing or inconsistent dataset metadata; the message names the file and the fix."""


def face_id(pid: int | str, eid: int | str) -> str:
    """``(12, 3) -> "012_03"``."""
    return f"{int(pid):03d}_{int(eid):02d}"


def parse_face_id(fid: str) -> tuple[int, int]:
    """``"012_03" -> (12, 3)``; anything else raises :class:`DataError`."""
    m = _FACE_ID.match(str(fid))
    if not m:
        raise DataError(f"face id {fid!r} is not of the form PPP_EE (e.g. 012_03)")
    return int(m.group(1)), int(m.group(2))


def expression_dirname(eid: int) -> str:
    """FaceScape folder name of expression ``eid`` (1-based), e.g. ``3 -> "3_mouth_stretch"``."""
    if not 1 <= int(eid) <= len(EXPRESSION_NAMES):
        raise DataError(f"expression id {eid} is outside 1..{len(EXPRESSION_NAMES)}")
    return f"{int(eid)}_{EXPRESSION_NAMES[int(eid) - 1]}"


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{what} {path} is not valid JSON ({exc})") from exc


class _Meta:
    """The three metadata files shared by RAW and DATA_FOLDER."""

    root: Path

    @property
    def select_dict_json(self) -> Path:
        return self.root / "select_dict.json"

    @property
    def id_json(self) -> Path:
        return self.root / "id.json"

    @property
    def rt_scale_json(self) -> Path:
        return self.root / "Rt_scale_dict.json"

    def face_ids(self, split: str) -> list[str]:
        """Face ids of ``split`` from ``id.json`` (``{"train": [...], "eval": [...]}``)."""
        ids = read_json(self.id_json, "id.json")
        if split not in ids:
            raise DataError(f"{self.id_json} has no key {split!r}; it should map 'train' and 'eval' to face ids")
        return [face_id(*parse_face_id(f)) for f in ids[split]]

    def selected_views(self, fid: str) -> list[str]:
        """View names chosen for a face in ``select_dict.json`` (``select_dict[str(pid)][str(eid)]``)."""
        pid, eid = parse_face_id(fid)
        sel = read_json(self.select_dict_json, "select_dict.json")
        try:
            return [str(v) for v in sel[str(pid)][str(eid)]]
        except KeyError:
            raise DataError(
                f"{self.select_dict_json} has no entry [{pid!r}][{eid!r}] for face {fid}; add its view list"
            ) from None

    def recorded_mm_per_unit(self, fid: str) -> float | None:
        """The face's scale from ``Rt_scale_dict.json``, or None when the file or its entry is missing."""
        if not self.rt_scale_json.is_file():
            return None
        pid, eid = parse_face_id(fid)
        entry = read_json(self.rt_scale_json, "Rt_scale_dict.json").get(str(pid), {}).get(str(eid))
        return None if entry is None else self.mm_per_unit(fid)

    def mm_per_unit(self, fid: str) -> float:
        """Millimetres per capture unit, ``Rt_scale_dict[str(pid)][str(eid)][0]``; 1.0 without the file."""
        if not self.rt_scale_json.is_file():
            return 1.0
        pid, eid = parse_face_id(fid)
        d = read_json(self.rt_scale_json, "Rt_scale_dict.json")
        try:
            scale = float(d[str(pid)][str(eid)][0])
        except (KeyError, IndexError, TypeError, ValueError):
            raise DataError(f"{self.rt_scale_json} has no scale for face {fid} (expected [{pid!r}][{eid!r}][0])") from None
        if not scale > 0:
            raise DataError(f"{self.rt_scale_json}: scale of face {fid} must be positive, got {scale}")
        return scale


class RawFolder(_Meta):
    """A FaceScape multi-view tree (what ``gen_synthetic.py`` writes and ``preprocess_images.py`` reads)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def capture_dir(self, fid: str) -> Path:
        pid, eid = parse_face_id(fid)
        return self.root / "imgs" / str(pid) / expression_dirname(eid)

    def image(self, fid: str, view: str) -> Path:
        return self.capture_dir(fid) / f"{view}.jpg"

    def params(self, fid: str) -> Path:
        return self.capture_dir(fid) / "params.json"

    def scan(self, fid: str) -> Path:
        """Ground-truth scan (PLY, capture units, its own topology; its uvs, if any, are not the template's)."""
        pid, eid = parse_face_id(fid)
        return self.root / "mesh" / str(pid) / f"{expression_dirname(eid)}.ply"

    def meso_dpmap(self, fid: str) -> Path:
        """Ground-truth mesoscopic displacement in template UV (synthetic data only; see gen_synthetic.py)."""
        pid, eid = parse_face_id(fid)
        return self.root / "dpmap" / str(pid) / f"{expression_dirname(eid)}.npy"

    def region(self, fid: str) -> Path:
        """Optional facial region of the scan: ``[V_scan] bool``, one entry per scan vertex (DESIGN §4, §6)."""
        pid, eid = parse_face_id(fid)
        return self.root / "region" / str(pid) / f"{expression_dirname(eid)}.npy"

    def landmarks3d(self, fid: str) -> Path:
        """Ground-truth 3D landmark positions [468, 3] in capture units (synthetic data only)."""
        pid, eid = parse_face_id(fid)
        return self.root / "landmarks" / str(pid) / f"{expression_dirname(eid)}.npy"


class DataFolder(_Meta):
    """The processed DATA_FOLDER tree that every stage reads from and writes to."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # inputs
    def image_dir(self, fid: str) -> Path:
        pid, eid = parse_face_id(fid)
        return self.root / "images" / f"{pid:03d}" / f"{eid:02d}"

    def image(self, fid: str, view: str) -> Path:
        return self.image_dir(fid) / f"{view}.jpg"

    def params(self, fid: str) -> Path:
        return self.image_dir(fid) / "params.json"

    # stage 1: base mesh and maps
    def landmarks(self, fid: str) -> Path:
        return self.root / "landmarks" / f"{fid}.json"

    def fit_mesh(self, fid: str) -> Path:
        return self.root / "fit_mesh" / f"fit_mesh_{fid}.obj"

    def map(self, split: str, name: str, fid: str) -> Path:
        _check_split(split)
        if name not in MAP_NAMES:
            raise ValueError(f"unknown map {name!r}; one of {MAP_NAMES}")
        return self.root / "maps" / split / name / f"{name}_{fid}.npy"

    # stage 2: implicit function
    def volume(self, split: str, fid: str) -> Path:
        _check_split(split)
        return self.root / "volume" / split / f"ori_volume_{fid}.npy"

    def search_map(self, split: str, name: str, fid: str) -> Path:
        """``volume/<split>/search_<name>_PPP_EE.npy`` (``name``: ``pos_map`` or ``norm_map``): the base surface
        the volume beside it was searched from (eval_if's refined base; stage 3 reads the volume in its frame)."""
        _check_split(split)
        if name not in ("pos_map", "norm_map"):
            raise ValueError(f"search maps are pos_map and norm_map, not {name!r}")
        return self.root / "volume" / split / f"search_{name}_{fid}.npy"

    def if_map(self, fid: str) -> Path:
        return self.root / "pred" / "if_map" / f"disp_map_{fid}.npy"

    def conf_map(self, stage: str, fid: str) -> Path:
        """``pred/<stage>_map/conf_PPP_EE.npy``: the [S, S] float32 confidence beside stage ``if`` or ``reg``'s map."""
        if stage not in ("if", "reg"):
            raise ValueError(f"confidence maps exist for stages 'if' and 'reg', not {stage!r}")
        return self.root / "pred" / f"{stage}_map" / f"conf_{fid}.npy"

    def if_mesh(self, fid: str) -> Path:
        return self.root / "pred" / "if_mesh" / f"if_{fid}.obj"

    # stage 3: regularisation
    def reg_map(self, fid: str) -> Path:
        return self.root / "pred" / "reg_map" / f"pos_map_{fid}.npy"

    def reg_mesh(self, fid: str) -> Path:
        return self.root / "pred" / "reg_mesh" / f"reg_{fid}.obj"

    # stage 4: texture
    def texture(self, fid: str) -> Path:
        return self.root / "pred" / "texture" / f"texture_{fid}.png"

    def textured_mesh(self, fid: str) -> Path:
        return self.root / "pred" / "texture" / f"textured_{fid}.obj"

    # stage 5: mesoscopic detail
    def dp_map(self, fid: str) -> Path:
        return self.root / "pred" / "dp_map" / f"dp_map_{fid}.png"

    def meso_mesh(self, fid: str) -> Path:
        return self.root / "pred" / "meso_mesh" / f"{fid}.obj"

    # training and evaluation
    def checkpoint_dir(self, stage: str) -> Path:
        return self.root / "checkpoints" / stage

    def log_dir(self, stage: str) -> Path:
        return self.root / "logs" / stage

    def options_file(self, stage: str) -> Path:
        """Options a stage ran with, saved beside its outputs (``options_<stage>.json``)."""
        return self.root / "logs" / f"options_{stage}.json"

    @property
    def metrics_json(self) -> Path:
        return self.root / "eval" / "metrics.json"

    def face_metrics(self, fid: str) -> Path:
        """One face's metrics and the settings they were computed with (evaluate.py)."""
        return self.root / "eval" / "faces" / f"metrics_{fid}.json"

    @property
    def report_dir(self) -> Path:
        return self.root / "eval" / "report"

    def tree(self) -> list[Path]:
        """Every folder of the tree (what ``mkdirs.py`` creates)."""
        dirs = [self.root / d for d in ("images", "landmarks", "fit_mesh", "eval", "eval/report", "logs")]
        for split in SPLITS:
            dirs += [self.root / "maps" / split / m for m in MAP_NAMES]
            dirs.append(self.root / "volume" / split)
        dirs += [self.root / "pred" / p for p in ("if_map", "if_mesh", "reg_map", "reg_mesh", "texture", "dp_map", "meso_mesh")]
        dirs += [self.checkpoint_dir(s) for s in ("if", "reg", "dpmap")]
        return dirs

    def make_tree(self) -> None:
        for d in self.tree():
            d.mkdir(parents=True, exist_ok=True)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
