"""Bad input: every case gets a clear error naming the file and the fix; the other faces go on; the
exit status is non-zero with a summary; nothing already written is damaged.

One tiny synthetic RAW set (3 faces, 4 views, 256 px) is made once; each case copies it, breaks
one face and runs the stage script's ``main``.
"""

import json
import shutil

import numpy as np
import pytest

from mvfr.datafolder import DataFolder, RawFolder
from mvfr.synthesis import capture

FIDS = ("001_01", "002_01", "003_01")


@pytest.fixture(scope="module")
def tiny_raw(tmp_path_factory):
    raw = RawFolder(tmp_path_factory.mktemp("bad") / "raw")
    opt = capture.SynthOptions(num_views=4, image_long_side=256, dpmap_size=128, albedo_size=256, seed=5,
                               num_invalid_views=0, distorted_fraction=0.5)
    select, rts = {}, {}
    for pid in (1, 2, 3):
        cap = capture.synthesize_capture(pid, 1, opt)
        capture.write_capture(raw, cap)
        select.setdefault(str(pid), {})["1"] = capture.select_views(cap)
        rts.setdefault(str(pid), {})["1"] = cap.rt_scale
    capture.write_metadata(raw, select, rts, [(1, 1), (2, 1), (3, 1)], {3})
    return raw


@pytest.fixture
def raw(tiny_raw, tmp_path):
    shutil.copytree(tiny_raw.root, tmp_path / "raw")
    return RawFolder(tmp_path / "raw")


def preprocess(raw, data, *extra):
    import preprocess_images

    return preprocess_images.main(["--facescape_dataroot", str(raw.root), "--dataroot", str(data.root), *extra])


def edit_params(raw, fid, change):
    params = json.loads(raw.params(fid).read_text())
    change(params)
    raw.params(fid).write_text(json.dumps(params))


def first_view(raw, fid):
    return raw.selected_views(fid)[0]


def rotation_scaled(p, v):
    p[f"{v}_Rt"] = (np.asarray(p[f"{v}_Rt"]) * [[1.2], [1.0], [1.0]]).tolist()


CASES = {
    "corrupt JPEG": (lambda raw, v: raw.image("002_01", v).write_bytes(b"this is no JPEG" * 100), "could not be decoded"),
    "truncated JPEG": (
        lambda raw, v: raw.image("002_01", v).write_bytes(raw.image("002_01", v).read_bytes()[:3000]),
        "truncated JPEG",
    ),
    "missing view file": (lambda raw, v: raw.image("002_01", v).unlink(), "does not exist"),
    "params.json missing a key": (lambda raw, v: edit_params(raw, "002_01", lambda p: p.pop(f"{v}_K")), "has no key"),
    "NaN in K": (
        lambda raw, v: edit_params(raw, "002_01", lambda p: p.__setitem__(f"{v}_K", [[float("nan"), 0, 1], [0, 1, 1], [0, 0, 1]])),
        "NaN",
    ),
    "singular K": (
        lambda raw, v: edit_params(raw, "002_01", lambda p: p.__setitem__(f"{v}_K", [[0, 0, 0], [0, 0, 0], [0, 0, 1]])),
        "singular",
    ),
    "Rt not a rotation": (lambda raw, v: edit_params(raw, "002_01", lambda p: rotation_scaled(p, v)), "not a rotation"),
    "all views invalid": (
        lambda raw, v: edit_params(raw, "002_01", lambda p: p.update({k: False for k in p if k.endswith("_valid")})),
        "none of the selected views",
    ),
    "id missing from select_dict": (
        lambda raw, v: raw.select_dict_json.write_text(
            json.dumps({k: val for k, val in json.loads(raw.select_dict_json.read_text()).items() if k != "2"})
        ),
        "no entry",
    ),
    "image size disagrees with params.json": (
        lambda raw, v: edit_params(raw, "002_01", lambda p: p.__setitem__(f"{v}_width", p[f"{v}_width"] + 8)),
        "_width=",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_preprocess_bad_input(raw, tmp_path, capsys, case):
    data = DataFolder(tmp_path / "data")
    # A first, clean run writes every face; the broken rerun must not damage what is there.
    assert preprocess(raw, data) == 0
    before = {p: p.read_bytes() for p in data.image_dir("002_01").iterdir()}
    capsys.readouterr()
    breaker, message = CASES[case]
    breaker(raw, first_view(raw, "002_01"))
    assert preprocess(raw, data, "--overwrite") != 0
    err = capsys.readouterr().err
    assert "FAILED 002_01" in err and message in err, err
    assert "1 failed" in err and "2 done" in err  # the other faces went on
    # the failed face's earlier outputs are intact, and no temporary file is left behind
    assert {p: p.read_bytes() for p in data.image_dir("002_01").iterdir()} == before
    assert not list(data.root.rglob("*.tmp*"))


def test_preprocess_names_the_file(raw, tmp_path, capsys):
    v = first_view(raw, "002_01")
    raw.image("002_01", v).unlink()
    assert preprocess(raw, DataFolder(tmp_path / "data")) != 0
    assert str(raw.image("002_01", v)) in capsys.readouterr().err


def test_unwritable_dataroot_is_a_clear_error(raw, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as exc:
        preprocess(raw, DataFolder(blocker / "data"))
    assert "cannot write" in str(exc.value) and "--dataroot" in str(exc.value)


def test_face_the_detector_cannot_find(raw, tmp_path, capsys):
    import gen_maps

    from mvfr.atomic_io import load_image, save_image

    data = DataFolder(tmp_path / "data")
    assert preprocess(raw, data) == 0
    for img in data.image_dir("002_01").glob("*.jpg"):
        save_image(img, np.full_like(load_image(img), 128))  # a blank grey view: no face to find
    capsys.readouterr()
    rc = gen_maps.main(["--dataroot", str(data.root), "--facescape_dataroot", str(raw.root), "--split", "train",
                        "--ids", "002_01", "--uv_size", "64"])
    err = capsys.readouterr().err
    assert rc != 0 and "FAILED 002_01" in err and "no face found" in err and str(data.image_dir("002_01")) in err


def test_checkpoint_of_the_wrong_architecture_or_stage(tmp_path):
    import torch

    from mvfr.training import CheckpointError, load_checkpoint, save_checkpoint

    small, big = torch.nn.Linear(3, 4), torch.nn.Linear(3, 5)
    path = save_checkpoint(tmp_path / "ck.pt", small, None, 1, 0, {}, "fmt-a")
    with pytest.raises(CheckpointError, match=r"ck\.pt does not fit the network .*retrain"):
        load_checkpoint(path, big, fmt="fmt-a")
    with pytest.raises(CheckpointError, match="belongs to another stage"):
        load_checkpoint(path, small, fmt="fmt-b")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"bad\.pt could not be loaded"):
        load_checkpoint(tmp_path / "bad.pt", small)


def test_stage_script_with_another_stages_checkpoint_exits_cleanly(tmp_path, capsys, monkeypatch):
    import eval_reg

    from conftest import ROOT
    from mvfr.atomic_io import save_json
    from mvfr.runtime import run_main

    data = DataFolder(tmp_path / "data")
    save_json(data.id_json, {"train": [], "eval": ["001_01"]})
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr("sys.argv", ["eval_reg.py", "--dataroot", str(data.root), "--split", "eval",
                                     "--reg_checkpoint", "predefine_data/checkpoint_if.pt"])
    assert run_main(eval_reg.main) == 2
    err = capsys.readouterr().err
    assert "error: checkpoint predefine_data/checkpoint_if.pt" in err and "belongs to another stage" in err
