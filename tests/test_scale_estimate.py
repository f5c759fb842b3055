"""Scale: without a recorded mm per unit gen_maps estimates it from the template fit, logs it and
records it (noted as estimated) in DATA's Rt_scale_dict.json; a given scale is kept, and one that
disagrees with the estimate by more than 30 % is warned about."""

import json
import logging

import numpy as np
import pytest

from mvfr.datafolder import DataFolder, RawFolder
from mvfr.synthesis import capture

FID = "001_01"


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    import preprocess_images

    root = tmp_path_factory.mktemp("scale")
    raw = RawFolder(root / "raw")
    opt = capture.SynthOptions(num_views=4, image_long_side=256, dpmap_size=128, albedo_size=256, seed=5,
                               num_invalid_views=0, distorted_fraction=0.0)
    cap = capture.synthesize_capture(1, 1, opt)
    capture.write_capture(raw, cap)
    capture.write_metadata(raw, {"1": {"1": capture.select_views(cap)}}, {"1": {"1": cap.rt_scale}}, [(1, 1)], {1})
    data = DataFolder(root / "data")
    assert preprocess_images.main(["--facescape_dataroot", str(raw.root), "--dataroot", str(data.root),
                                   "--image_long_side", "256"]) == 0
    return raw, data, float(cap.rt_scale[0])


def run_gen_maps(raw, data):
    import gen_maps

    return gen_maps.main(["--dataroot", str(data.root), "--facescape_dataroot", str(raw.root), "--split", "eval",
                          "--uv_size", "64", "--overwrite"])


def test_scale_estimated_logged_and_recorded_without_one(processed, caplog):
    raw, data, true_mm = processed
    data.rt_scale_json.unlink(missing_ok=True)
    with caplog.at_level(logging.WARNING, logger="gen_maps"):
        assert run_gen_maps(raw, data) == 0
    d = json.loads(data.rt_scale_json.read_text())
    est = d["1"]["1"][0]
    assert "estimated" in d["estimated"][FID]
    assert data.mm_per_unit(FID) == est
    assert any("ESTIMATED" in r.getMessage() for r in caplog.records)
    print(f"estimated {est:.4f} mm/unit, true {true_mm:.4f} ({100 * (est / true_mm - 1):+.1f} %)")
    assert abs(est / true_mm - 1) < 0.3  # the template is an average face: close, not exact
    assert abs(est - 1.0) > 0.05 or abs(true_mm - 1.0) < 0.05  # not silently 1 mm per unit


def test_given_scale_is_kept_and_a_disagreeing_one_warned(processed, caplog):
    raw, data, true_mm = processed
    data.rt_scale_json.write_text(json.dumps({"1": {"1": [true_mm, np.eye(3, 4).tolist()]}}))
    with caplog.at_level(logging.WARNING, logger="gen_maps"):
        assert run_gen_maps(raw, data) == 0
    assert data.mm_per_unit(FID) == true_mm and "estimated" not in json.loads(data.rt_scale_json.read_text())
    assert not any("disagrees" in r.getMessage() for r in caplog.records)
    caplog.clear()
    data.rt_scale_json.write_text(json.dumps({"1": {"1": [2.0 * true_mm, np.eye(3, 4).tolist()]}}))
    with caplog.at_level(logging.WARNING, logger="gen_maps"):
        assert run_gen_maps(raw, data) == 0
    assert data.mm_per_unit(FID) == 2.0 * true_mm  # kept, only warned
    assert any("disagrees" in r.getMessage() for r in caplog.records)


def test_preprocessing_again_keeps_the_estimated_scales(tmp_path):
    from mvfr.atomic_io import save_json
    from mvfr.preprocess import copy_metadata

    raw, data = RawFolder(tmp_path / "raw"), DataFolder(tmp_path / "data")
    for folder in (raw, data):
        save_json(folder.id_json, {"train": [], "eval": ["001_01", "002_01"]})
        save_json(folder.select_dict_json, {"1": {"1": ["0"]}, "2": {"1": ["0"]}})
    eye = np.eye(3, 4).tolist()
    save_json(raw.rt_scale_json, {"1": {"1": [0.5, eye]}})  # 002_01 has no calibrated scale
    save_json(data.rt_scale_json, {"1": {"1": [0.7, eye]}, "2": {"1": [0.9, eye]},
                                   "estimated": {"001_01": "estimated", "002_01": "estimated"}})
    copy_metadata(raw, data)
    d = json.loads(data.rt_scale_json.read_text())
    assert data.mm_per_unit("002_01") == 0.9 and d["estimated"] == {"002_01": "estimated"}  # kept
    assert data.mm_per_unit("001_01") == 0.5  # RAW's calibrated scale wins over an estimate


def _record_many(args):
    import gen_maps

    root, first = args
    folder = DataFolder(root)
    for k in range(first, first + 100):
        gen_maps.record_estimated_scale(folder, f"{k:03d}_01", 1.0 + k / 100)


def test_concurrent_scale_estimates_are_all_recorded(tmp_path):
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(2) as pool:  # two gen_maps ranks writing at once
        pool.map(_record_many, [(str(tmp_path), 1), (str(tmp_path), 201)])
    folder = DataFolder(tmp_path)
    ids = [f"{k:03d}_01" for k in (*range(1, 101), *range(201, 301))]
    assert sorted(json.loads(folder.rt_scale_json.read_text())["estimated"]) == ids
    assert [folder.mm_per_unit(fid) for fid in ids] == [1.0 + int(fid[:3]) / 100 for fid in ids]
