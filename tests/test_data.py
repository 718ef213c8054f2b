"""The dataset layer: both forms read into the same records; bad input warned about, never fatal."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from yolo.datasets import (
    COCO_IDS,
    DataError,
    DataWarning,
    drop_crowd,
    label_path_for,
    load_dataset,
    read_image,
    write_darknet_dataset,
)
from yolo.loaders import EvalDataset, collate_eval


@pytest.fixture(scope="module")
def coco_info(coco128):
    return load_dataset(coco128 / "annotations" / "instances_val2017.json", coco128 / "val2017")


def _image(path: Path, h: int = 48, w: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), 100, np.uint8))
    return path


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- COCO form ---------------------------------------------------------------------------------
def test_coco_json_records(coco_info, coco128):
    info = coco_info
    assert len(info.records) == 128
    assert sum(len(r.labels) for r in info.records) == 939
    assert sum(int(r.crowd.sum()) for r in info.records) == 10
    assert info.category_ids == sorted(info.category_ids) == COCO_IDS
    assert info.names[0] == "person" and len(info.names) == 80
    assert not info.problems
    # annotation id 1774: image 74, category 18 (dog, class 16), bbox x y w h in pixels
    rec = next(r for r in info.records if r.image_id == 74)
    assert (rec.width, rec.height) == (640, 426)
    row = next(lab for lab in rec.labels if lab[0] == 16)
    x, y, w, h = 61.87, 276.25, 296.42, 103.18
    np.testing.assert_allclose(row[1:], [(x + w / 2) / 640, (y + h / 2) / 426, w / 640, h / 426], rtol=1e-5)
    assert rec.path == coco128 / "val2017" / "000000000074.jpg"


def test_coco_default_image_folder(coco128):
    # COCO layout: annotations/instances_val2017.json -> ../val2017
    info = load_dataset(coco128 / "annotations" / "instances_val2017.json")
    assert len(info.records) == 128 and info.records[0].path.parent == coco128 / "val2017"


def test_data_file_pointing_at_coco_json(tmp_path, coco128):
    data = _write(tmp_path / "coco.data", f"classes = 80\nvalid = {coco128 / 'annotations/instances_val2017.json'}\n"
                                          f"valid_images = {coco128 / 'val2017'}\n")
    info = load_dataset(data)
    assert len(info.records) == 128
    bad = _write(tmp_path / "bad.data", f"classes = 3\nvalid = {coco128 / 'annotations/instances_val2017.json'}\n")
    with pytest.raises(DataError, match=r"bad\.data:1: classes=3 .* 80 categories"):
        load_dataset(bad)


def test_coco_missing_image_skipped(tmp_path, coco128):
    data = json.loads((coco128 / "annotations" / "instances_val2017.json").read_text())
    data["images"][0]["file_name"] = "nope.jpg"
    ann = _write(tmp_path / "ann.json", json.dumps(data))
    with pytest.warns(DataWarning, match=r"ann\.json: image id 9: file not found: .*nope\.jpg"):
        info = load_dataset(ann, coco128 / "val2017")
    assert len(info.records) == 127 and info.problems.counts["missing image"] == 1


# --- Darknet form ------------------------------------------------------------------------------
def test_darknet_round_trip(tmp_path, coco_info):
    with pytest.warns(DataWarning, match="10 crowd box"):
        data = write_darknet_dataset(coco_info, tmp_path / "dn")
    info = load_dataset(data)
    ref = drop_crowd(coco_info)
    assert len(info.records) == len(ref.records) == 128
    assert info.names == coco_info.names and not info.problems
    for n, (a, b) in enumerate(zip(info.records, ref.records)):
        assert a.image_id == n + 1 and a.width is None and not a.crowd.any()
        assert a.path.resolve() == b.path.resolve()
        np.testing.assert_allclose(a.labels, b.labels, atol=1e-6)
    assert sum(len(r.labels) for r in info.records) == 929


def test_label_path_convention(tmp_path):
    img = _image(tmp_path / "set" / "images" / "a.jpg")
    assert label_path_for(img) == img.with_suffix(".txt")  # neither exists: the fallback
    lab = _write(tmp_path / "set" / "labels" / "a.txt", "0 0.5 0.5 0.1 0.1\n")
    assert label_path_for(img) == lab
    beside = _image(tmp_path / "flat" / "b.jpg")
    assert label_path_for(beside) == tmp_path / "flat" / "b.txt"


def test_paths_relative_to_data_file_then_cwd(tmp_path, monkeypatch):
    ds = tmp_path / "ds"
    _image(ds / "images" / "a.jpg")
    _write(ds / "labels" / "a.txt", "1 0.5 0.5 0.2 0.2\n")
    _write(ds / "list.txt", "images/a.jpg\n")  # relative to the list's folder
    _write(ds / "obj.names", "x\ny\n")
    data = _write(ds / "obj.data", "classes = 2\nvalid = list.txt\nnames = obj.names\n")
    monkeypatch.chdir(tmp_path)
    info = load_dataset(data)
    assert [r.labels[0, 0] for r in info.records] == [1.0] and info.names == ["x", "y"]
    # Darknet's own convention: paths relative to the working directory
    data2 = _write(tmp_path / "cfgs" / "cwd.data", "classes = 2\nvalid = ds/list.txt\nnames = ds/obj.names\n")
    assert len(load_dataset(data2).records) == 1


def test_bad_input_each_named_and_rest_kept(tmp_path):
    ds = tmp_path / "ds"
    good = _image(ds / "images" / "good.jpg")
    _write(ds / "labels" / "good.txt", "0 0.5 0.5 0.2 0.2\n0 0.5 0.5\n7 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n"
                                       "0.5 0.5 0.5 0.2 0.2\n")
    empty = _image(ds / "images" / "empty.jpg")
    _write(ds / "labels" / "empty.txt", "")
    _image(ds / "images" / "nolabel.jpg")
    broken = _write(ds / "images" / "broken.jpg", "this is not a jpeg")
    _write(ds / "labels" / "broken.txt", "0 0.5 0.5 0.2 0.2\n")
    _write(ds / "list.txt", f"{good}\nimages/missing.jpg\n{empty}\nimages/nolabel.jpg\n{broken}\n")
    data = _write(ds / "a.data", "classes = 2\nvalid = list.txt\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = load_dataset(data)
    msgs = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    label = ds / "labels" / "good.txt"
    assert any(f"{label}:2: expected 5 fields" in m for m in msgs)
    assert any(f"{label}:3: class 7 is not a class id in 0..1" in m for m in msgs)
    assert any(f"{label}:5: class 0.5 is not a class id" in m for m in msgs)
    assert any(f"{ds / 'list.txt'}:2: image not found: 'images/missing.jpg'" in m for m in msgs)
    assert any("1 image(s) have no label file" in m and "nolabel.txt" in m for m in msgs)
    assert not any("empty" in m for m in msgs)  # an empty label file is an image with no objects
    assert len(msgs) == 5
    assert [r.path.name for r in info.records] == ["good.jpg", "empty.jpg", "nolabel.jpg", "broken.jpg"]
    np.testing.assert_allclose(info.records[0].labels, [[0, .5, .5, .2, .2], [1, .3, .3, .1, .1]])
    assert len(info.records[1].labels) == 0 and len(info.records[2].labels) == 0
    assert info.problems.counts == {"bad label line": 3, "missing image": 1, "missing label file": 1}

    # the unreadable image is found when read: skipped by the collate, counted, named
    with pytest.warns(DataWarning, match="broken.jpg: not a readable image"):
        assert read_image(broken) is None
    ds_eval = EvalDataset(info.records, (32, 64), letter_box=False)
    batch = collate_eval([ds_eval[i] for i in range(len(ds_eval))])
    assert batch.images.shape == (3, 3, 32, 64) and batch.images.dtype == torch.float32
    assert batch.indices == [0, 1, 2] and batch.skipped[0][0] == 3
    assert batch.geometries[0].orig_hw == (48, 64)


def test_data_file_errors_name_file_and_key(tmp_path):
    data = _write(tmp_path / "x.data", "classes = 2\n# comment\nvalid = nowhere.txt\n")
    with pytest.raises(DataError, match=r"x\.data:3: key 'valid': 'nowhere.txt' not found"):
        load_dataset(data)
    with pytest.raises(DataError, match=r"x\.data: no 'train' key"):
        load_dataset(data, split="train")
    _write(tmp_path / "l.txt", "")
    _write(tmp_path / "n.names", "a\nb\nc\n")
    bad = _write(tmp_path / "y.data", "classes = 2\nvalid = l.txt\nnames = n.names\n")
    with pytest.raises(DataError, match=r"y\.data:1: classes=2 but the names list has 3"):
        load_dataset(bad)
    bad = _write(tmp_path / "z.data", "classes = two\nvalid = l.txt\n")
    with pytest.raises(DataError, match=r"z\.data:1: key 'classes': expected an integer"):
        load_dataset(bad)
    with pytest.raises(DataError, match="dataset not found"):
        load_dataset(tmp_path / "absent.data")


def test_eval_dataset_letterbox_geometry(coco_info):
    rec = coco_info.records[0]  # 640x480
    img, i, geom, _ = EvalDataset([rec], (320, 320), letter_box=True)[0]
    assert img.shape == (320, 320, 3) and i == 0
    assert geom.orig_hw == (480, 640) and geom.pad_xy == (0.0, 40.0)


def test_windows_and_odd_label_files_read_as_darknet_would(tmp_path):
    """CRLF endings, a UTF-8 BOM, trailing spaces and scientific notation are fine; NaN, negative
    and zero sizes are named and skipped; a .data file written on Windows reads the same."""
    ds = tmp_path / "ds"
    img = _image(ds / "images" / "a.jpg")
    (ds / "labels").mkdir(parents=True)
    (ds / "labels" / "a.txt").write_bytes(
        "\ufeff0 0.5 0.5 0.2 0.2  \r\n1 5e-1 3.0E-1 1e-1 1e-1\r\n0 nan 0.5 0.2 0.2\r\n"
        "1 0.5 0.5 -0.2 0.2\r\n1 0.5 0.5 0.2 0\r\n\r\n".encode("utf-8"))
    (ds / "list.txt").write_bytes(f"{img}\r\n".encode())
    data = ds / "a.data"
    data.write_bytes("\ufeffclasses = 2\r\nvalid = list.txt\r\n".encode("utf-8"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = load_dataset(data)
    msgs = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    label = ds / "labels" / "a.txt"
    np.testing.assert_allclose(info.records[0].labels, [[0, .5, .5, .2, .2], [1, .5, .3, .1, .1]], rtol=1e-6)
    assert [m.split(":")[1] for m in msgs if str(label) in m] == ["3", "4", "5"]
    assert all("w, h > 0" in m for m in msgs)
    assert info.problems.counts == {"bad label line": 3}


def test_coco_json_with_missing_keys_and_zero_area_boxes(tmp_path):
    img = _image(tmp_path / "imgs" / "a.jpg")
    _image(tmp_path / "imgs" / "b.jpg")
    ann = {"images": [{"id": 1, "file_name": img.name, "width": 64, "height": 48},
                      {"id": 2, "file_name": "b.jpg"},  # no size
                      {"id": 3, "file_name": "b.jpg", "width": 0, "height": 48}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [8, 8, 16, 16]},
                           {"id": 2, "image_id": 1, "category_id": 5, "bbox": [8, 8, 0, 16]},  # zero area
                           {"id": 3, "image_id": 1, "bbox": [1, 1, 5, 5]},  # no category
                           {"id": 4, "image_id": 1, "category_id": 5, "bbox": [1, "x", 5, 5]},
                           {"id": 5, "image_id": 1, "category_id": 5, "bbox": [1, 1, float("nan"), 5]}],
           "categories": [{"id": 5, "name": "thing"}]}
    path = _write(tmp_path / "ann.json", json.dumps(ann))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = load_dataset(path, tmp_path / "imgs")
    assert [r.image_id for r in info.records] == [1]
    np.testing.assert_allclose(info.records[0].labels, [[0, 16 / 64, 16 / 48, 16 / 64, 16 / 48]], rtol=1e-6)
    assert info.problems.counts == {"bad annotation": 4, "bad image entry": 2}
    assert all(str(path) in str(w.message) for w in caught if issubclass(w.category, DataWarning))
    bad = _write(tmp_path / "nocat.json", json.dumps({**ann, "categories": [{"name": "thing"}]}))
    with pytest.raises(DataError, match=r"nocat\.json: a category without a usable 'id'"):
        load_dataset(bad, tmp_path / "imgs")
