"""``python -m yolo.data`` (``darknet-yolo data``): convert between the four forms, check a dataset
(every problem kind, figures per split and class, anchor fit, labels.png)."""
from __future__ import annotations

import json
import warnings

import cv2
import numpy as np
import pytest

from yolo import data as data_tool
from yolo.cli import main as cli_main
from yolo.datasets import load_dataset

from helpers import ROOT, SHARED

COCO128 = SHARED / "data" / "coco128"


def _darknet(tmp, labels: dict[str, str | None], unreadable=(), names=("cat", "dog")):
    (tmp / "images").mkdir()
    (tmp / "labels").mkdir()
    for stem, text in labels.items():
        img = tmp / "images" / f"{stem}.jpg"
        if stem in unreadable:
            img.write_bytes(b"not a jpeg")
        else:
            cv2.imwrite(str(img), np.full((40, 80, 3), 128, np.uint8))
        if text is not None:
            (tmp / "labels" / f"{stem}.txt").write_text(text)
    (tmp / "list.txt").write_text("".join(f"images/{s}.jpg\n" for s in labels))
    (tmp / "n.names").write_text("\n".join(names) + "\n")
    (tmp / "d.data").write_text(f"classes = {len(names)}\ntrain = list.txt\nvalid = list.txt\nnames = n.names\n")
    return tmp / "d.data"


def test_check_finds_every_problem_kind(tmp_path, capsys):
    d = _darknet(tmp_path, {
        "ok": "0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n",
        "empty": "",
        "nolabel": None,
        "outside": "0 0.95 0.5 0.2 0.2\n",
        "zero": "0 0.5 0.5 0 0.2\n",
        "dup": "1 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2\n",
        "range": "5 0.5 0.5 0.2 0.2\n",
        "badline": "0 0.5 0.5\n",
        "broken": "0 0.5 0.5 0.2 0.2\n",
    }, unreadable={"broken"})
    out = tmp_path / "report"
    code = data_tool.main(["check", str(d), "--out", str(out), "--json", str(tmp_path / "r.json"), "--strict"])
    assert code == 1  # --strict: problems found
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report["splits"]) == {"train", "valid"}
    r = report["splits"]["train"]
    assert r["problems"] == {"box outside the image": 1, "bad label line": 1, "class out of range": 1,
                             "duplicate box": 1, "empty label file": 1, "missing label file": 1,
                             "unreadable image": 1, "zero area": 1}
    assert r["images"] == 9 and r["per_class"]["dog"] == {"boxes": 3, "images": 2}
    ex = r["examples"]
    assert "range.txt:1: class 5 not in 0..1" in ex["class out of range"][0]
    assert "zero.txt:1: box w 0" in ex["zero area"][0]
    assert "outside.txt: box 1 (cat) spans x 0.850..1.050" in ex["box outside the image"][0]
    assert "dup.txt: box 1 (dog) appears 2 times" in ex["duplicate box"][0]
    assert "broken.jpg: not a readable image" in ex["unreadable image"][0]
    assert "badline.txt:1: expected 5 fields" in ex["bad label line"][0]
    assert "empty.txt: empty" in ex["empty label file"][0]
    assert "1 missing label file" in printed and "[valid] 9 images" in printed
    assert (out / "labels.png").stat().st_size > 10_000


def test_check_clean_dataset_and_anchor_fit(tmp_path, capsys):
    d = _darknet(tmp_path, {"a": "0 0.5 0.5 0.2 0.4\n1 0.3 0.3 0.1 0.1\n", "b": "1 0.6 0.6 0.3 0.3\n"})
    report = data_tool.check(d, cfg=ROOT / "cfg" / "yolo-fastest-1.1.cfg", out=tmp_path)
    assert all(not r["problems"] for r in report["splits"].values())
    from yolo.anchors import avg_iou, cfg_anchors

    _, anchors = cfg_anchors((ROOT / "cfg" / "yolo-fastest-1.1.cfg").read_text())
    wh = np.array([[0.2, 0.4], [0.1, 0.1], [0.3, 0.3]]) * 320  # the cfg is 320 x 320
    assert report["anchors"]["avg_iou"] == pytest.approx(avg_iou(wh, np.array(anchors)), abs=1e-6)
    assert data_tool.main(["check", str(d), "--out", str(tmp_path), "--strict", "--no-images"]) == 0
    assert "problems: none" in capsys.readouterr().out


def test_check_unusable_dataset_exit_2(tmp_path, capsys):
    (tmp_path / "x.yaml").write_text("names: [a]\n")
    assert data_tool.main(["check", str(tmp_path / "x.yaml"), "--out", str(tmp_path)]) == 2
    assert "no 'valid' key" in capsys.readouterr().err


def test_convert_cli_every_form_and_back(tmp_path, capsys):
    """darknet -> yolo -> voc -> coco -> darknet through ``darknet-yolo data convert``: same boxes."""
    (tmp_path / "src").mkdir()
    d = _darknet(tmp_path / "src", {"a": "0 0.5 0.5 0.2 0.4\n1 0.25 0.3 0.1 0.1\n", "b": "1 0.6 0.6 0.3 0.3\n",
                                   "c": ""})
    src = d
    for form in ("yolo", "voc", "coco", "darknet"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert cli_main.main(["data", "convert", str(src), "--to", form, str(tmp_path / form)]) == 0
        src = capsys.readouterr().out.strip().rsplit(": ", 1)[1]
    a, b = load_dataset(d), load_dataset(src)
    assert a.names == b.names
    for ra, rb in zip(a.records, b.records):
        assert ra.path.name == rb.path.name
        np.testing.assert_allclose(ra.labels, rb.labels, atol=1e-6, rtol=0)


@pytest.mark.skipif(not COCO128.is_dir(), reason=f"{COCO128} not found (../shared)")
def test_check_coco128(tmp_path):
    report = data_tool.check(COCO128 / "annotations" / "instances_val2017.json", COCO128 / "val2017",
                             cfg=ROOT / "cfg" / "yolo-fastest-1.1.cfg", out=tmp_path, read_images=False)
    r = report["splits"]["valid"]
    assert (r["images"], r["boxes"], r["problems"]) == (128, 939, {})
    assert r["per_class"]["person"] == {"boxes": 259, "images": 61}
    assert report["anchors"]["boxes"] == 929  # crowd boxes left out, as yolo.anchors does
    assert round(100 * report["anchors"]["avg_iou"], 2) == 51.73  # what python -m yolo.anchors --cfg prints
