"""Pascal VOC and YOLO-folder readers, the four writers: coco128 written in each form reads back
into the same records; test.py on the VOC and YOLO-folder forms gives the COCO json's figures;
each bad input is named and counted, never fatal for one bad file."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from yolo.datasets import DataError, format_for, load_dataset, write_dataset
from yolo.datasets.voc import read_voc
from yolo.datasets.yolo_folder import read_yolo_folder

from helpers import SHARED

COCO128 = SHARED / "data" / "coco128"
needs_coco128 = pytest.mark.skipif(not COCO128.is_dir(), reason=f"{COCO128} not found (../shared)")


@pytest.fixture(scope="module")
def coco_src():
    if not COCO128.is_dir():
        pytest.skip(f"{COCO128} not found (../shared)")
    return load_dataset(COCO128 / "annotations" / "instances_val2017.json", COCO128 / "val2017")


def _quiet(fn, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **k)


# --- round trips -------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["darknet", "coco", "yolo", "voc"])
def test_coco128_round_trip(coco_src, tmp_path, form):
    """Every box and class comes back; crowd boxes: kept (coco), difficult (voc), dropped with a
    warning (darknet, yolo: label files cannot mark them)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        target = write_dataset({"valid": coco_src}, form, tmp_path / form)
    dropped = [str(w.message) for w in caught if "dropped" in str(w.message)]
    assert bool(dropped) == (form in ("darknet", "yolo"))
    assert all("10 crowd box(es) dropped" in m for m in dropped)
    assert format_for(target).name == form
    back = load_dataset(target, split="valid")
    assert not back.problems
    assert back.names == coco_src.names
    if form == "coco":
        assert back.category_ids == coco_src.category_ids
    src = {r.path.name: r for r in coco_src.records}
    assert sorted(src) == sorted(r.path.name for r in back.records)
    for rec in back.records:
        orig = src[rec.path.name]
        excluded = orig.crowd | orig.difficult
        want = orig.labels if form in ("coco", "voc") else orig.labels[~excluded]
        assert rec.labels.shape == want.shape, rec.path
        np.testing.assert_allclose(rec.labels, want, atol=1e-6, rtol=0)
        if form in ("coco", "voc"):
            np.testing.assert_array_equal(rec.crowd | rec.difficult, excluded)
        if form == "voc":
            assert not rec.crowd.any() and (rec.width, rec.height) == (orig.width, orig.height)


def test_voc_to_yolo_to_voc_keeps_records(coco_src, tmp_path):
    """Chained conversions (voc -> coco -> voc) keep the difficult flags and boxes."""
    sub = type(coco_src)(coco_src.records[:12], coco_src.names, coco_src.category_ids, "sub")
    voc = write_dataset({"valid": sub}, "voc", tmp_path / "v1")
    coco = write_dataset({"valid": load_dataset(voc)}, "coco", tmp_path / "c")
    voc2 = write_dataset({"valid": load_dataset(coco)}, "voc", tmp_path / "v2")
    a, b = load_dataset(voc), load_dataset(voc2)
    for ra, rb in zip(a.records, b.records):
        np.testing.assert_allclose(ra.labels, rb.labels, atol=1e-6, rtol=0)
        np.testing.assert_array_equal(ra.difficult, rb.difficult)


@pytest.mark.slow
def test_eval_on_voc_and_yolo_forms(coco_src, tmp_path, fastest_cfg, fastest_weights):
    """test.py's figures: the VOC form (crowd -> difficult) gives the COCO json's 0.1708 / 0.3292;
    the YOLO-folder form the Darknet form's, ``drop_crowd`` of the json (its label files cannot
    keep the 10 crowd boxes)."""
    from yolo.checkpoint import load_weights
    from yolo.cli import test as test_cli
    from yolo.evaluate import evaluate
    from yolo.model import Darknet

    model = Darknet(fastest_cfg)
    load_weights(model, fastest_weights)
    kw = dict(img_size=320, conf_thres=0.005, nms_thres=0.45, max_det=100, workers=0, verbose=False)
    voc = _quiet(write_dataset, {"valid": coco_src}, "voc", tmp_path / "voc")
    yolo = _quiet(write_dataset, {"valid": coco_src}, "yolo", tmp_path / "yolo")
    m_voc = evaluate(model, load_dataset(voc), **kw)
    assert (round(m_voc["map"], 4), round(m_voc["map50"], 4)) == (0.1708, 0.3292)
    out = tmp_path / "m.json"
    code = test_cli.main(["--cfg", str(fastest_cfg), "--weights", str(fastest_weights), "--data", str(yolo),
                          "--img-size", "320", "--conf-thres", "0.005", "--workers", "0", "--no-progress",
                          "--metrics-json", str(out), "--plots", str(tmp_path / "plots")])
    assert code == 0
    written = {p.name for p in (tmp_path / "plots").iterdir()}  # test.py --plots: the end-of-training pictures too
    assert {"confusion_matrix.png", "P_curve.png", "R_curve.png", "F1_curve.png", "val_pred.png",
            "pr_curve_50.png"} <= written
    m_yolo = json.loads(out.read_text())
    # = evaluate(model, drop_crowd(coco_src), **kw): the Darknet form's figures (measured 0.1697 / 0.3261)
    assert (round(m_yolo["map"], 4), round(m_yolo["map50"], 4)) == (0.1697, 0.3261)


# --- VOC reader ----------------------------------------------------------------------------------
XML = """<annotation><filename>{file}</filename><size><width>{w}</width><height>{h}</height><depth>3</depth></size>
{objects}</annotation>"""
OBJ = "<object><name>{name}</name><difficult>{d}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>" \
      "<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"


def _voc(tmp: Path, files: dict[str, str], splits: dict[str, list[str]] | None = None, names=None) -> Path:
    root = tmp / "VOCdevkit" / "VOC2007"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for stem, xml in files.items():
        (root / "Annotations" / f"{stem}.xml").write_text(xml)
        cv2.imwrite(str(root / "JPEGImages" / f"{stem}.jpg"), np.zeros((40, 60, 3), np.uint8))
    for split, stems in (splits or {}).items():
        (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    if names:
        (root / "classes.names").write_text("\n".join(names) + "\n")
    return root


def _obj(name="dog", d=0, x1=1, y1=1, x2=31, y2=21):
    return OBJ.format(name=name, d=d, x1=x1, y1=y1, x2=x2, y2=y2)


def test_voc_reader_boxes_splits_names_difficult(tmp_path):
    root = _voc(tmp_path, {"a": XML.format(file="a.jpg", w=60, h=40, objects=_obj() + _obj("cat", 1, 11, 11, 21, 31)),
                           "b": XML.format(file="b.jpg", w=60, h=40, objects=_obj("cat"))},
                {"train": ["a"], "val": ["b"], "dog_train": ["a"]})
    fmt = format_for(root.parent)  # the VOCdevkit folder
    assert fmt.name == "voc" and format_for(root).name == "voc" and format_for(root / "Annotations").name == "voc"
    assert fmt.splits(root) == ("train", "val")  # dog_train.txt is a per-class list, not a split
    train = load_dataset(root, split="train")
    assert train.names == ["cat", "dog"]  # every xml's names, sorted
    rec = train.records[0]
    # Darknet voc_label.py's convention: x1 = xmin - 1, w = xmax - xmin
    np.testing.assert_allclose(rec.labels[0], [1, 15 / 60, 10 / 40, 30 / 60, 20 / 40], atol=1e-7)
    assert rec.difficult.tolist() == [False, True] and (rec.width, rec.height) == (60, 40)
    val = load_dataset(root.parent.parent / "VOCdevkit", split="valid")  # 'valid' reads val.txt
    assert [r.path.name for r in val.records] == ["b.jpg"]
    # all xml files when there is no ImageSets; a names file fixes the class order
    root2 = _voc(tmp_path / "n", {"a": XML.format(file="a.jpg", w=60, h=40, objects=_obj())}, names=["dog", "cat"])
    assert load_dataset(root2 / "Annotations").names == ["dog", "cat"]
    assert load_dataset(root2).records[0].labels[0, 0] == 0


def test_voc_difficult_left_out_of_the_metric(tmp_path):
    from yolo.evaluate import darknet_ground_truth, ground_truth_coco

    root = _voc(tmp_path, {"a": XML.format(file="a.jpg", w=60, h=40, objects=_obj() + _obj("dog", 1, 11, 11, 21, 31))})
    info = load_dataset(root)
    gt = ground_truth_coco(info, info.records)
    assert [a["iscrowd"] for a in gt["annotations"]] == [0, 1]
    assert len(darknet_ground_truth(info.records, [(40, 60)])[0]) == 1


def test_voc_bad_input_named_and_counted(tmp_path):
    files = {
        "ok": XML.format(file="ok.jpg", w=60, h=40, objects=_obj()),
        "broken": "<annotation><filename>broken.jpg</filename>\n<size>",  # does not parse
        "noname": XML.format(file="noname.jpg", w=60, h=40, objects="<object><bndbox/></object>"),
        "nobox": XML.format(file="nobox.jpg", w=60, h=40, objects="<object><name>dog</name></object>"),
        "nan": XML.format(file="nan.jpg", w=60, h=40, objects=_obj(x1="abc")),
        "empty": XML.format(file="empty.jpg", w=60, h=40, objects=_obj(x1=30, x2=30)),
        "unknown": XML.format(file="unknown.jpg", w=60, h=40, objects=_obj("zebra")),
        "noimage": XML.format(file="missing.jpg", w=60, h=40, objects=_obj()),
        "nosize": XML.format(file="nosize.jpg", w=0, h=0, objects=_obj()),
    }
    root = _voc(tmp_path, files, {"val": [*files, "gone"]}, names=["dog"])
    with pytest.warns(UserWarning) as caught:
        info = read_voc(root, "valid")
    c = info.problems.counts
    assert c["bad xml file"] == 1 and c["bad object"] == 4 and c["unknown class"] == 1
    assert c["missing image"] == 1 and c["missing xml file"] == 1
    text = "\n".join(str(w.message) for w in caught)
    assert "broken.xml:2:" in text and "not valid xml" in text  # file and line
    assert "noname.xml: <object> #1: no <name>" in text
    assert "nobox.xml: <object> #1 ('dog'): no <bndbox>" in text
    assert "<xmin> is not a number: 'abc'" in text and "empty or inverted box" in text
    assert "class 'zebra' is not in the names list" in text and "val.txt:10: " in text
    by = {r.path.stem: r for r in info.records}
    assert set(by) == {"ok", "noname", "nobox", "nan", "empty", "unknown", "nosize"}  # the rest still used
    assert (by["nosize"].width, by["nosize"].height) == (60, 40)  # read from the image
    assert len(by["ok"].labels) == 1 and len(by["nan"].labels) == 0


def test_voc_without_names(tmp_path):
    root = _voc(tmp_path, {"a": XML.format(file="a.jpg", w=60, h=40, objects="")})
    with pytest.raises(DataError, match="no class names"):
        load_dataset(root)


# --- YOLO folder reader --------------------------------------------------------------------------
def _yolo(tmp: Path, yaml: str, labels: dict[str, str], split: str = "val") -> Path:
    root = tmp / "ds"
    for stem, text in labels.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "images" / split / f"{stem}.jpg"), np.zeros((40, 60, 3), np.uint8))
        if text is not None:
            (root / "labels" / split / f"{stem}.txt").write_text(text)
    (tmp / "data.yaml").write_text(yaml)
    return tmp / "data.yaml"


def test_yolo_folder_names_list_or_dict_and_splits(tmp_path):
    y = _yolo(tmp_path, "path: ds\ntrain: images/val\nval: [images/val]\nnames: {0: cat, 1: dog}\n",
              {"a": "1 0.5 0.5 0.2 0.4\n", "b": "0 0.1 0.1 0.1 0.1\n"})
    assert format_for(y).name == "yolo" and format_for(tmp_path).name == "yolo"
    assert format_for(y).splits(y) == ("train", "val")
    info = load_dataset(y)  # 'valid' reads 'val'
    assert info.names == ["cat", "dog"] and [r.path.name for r in info.records] == ["a.jpg", "b.jpg"]
    np.testing.assert_allclose(info.records[0].labels, [[1, 0.5, 0.5, 0.2, 0.4]])
    (tmp_path / "list.txt").write_text("ds/images/val/b.jpg\n")
    y.write_text("train: list.txt\nval: list.txt\nnames: [cat, dog]\nnc: 2\n")  # path defaults to the yaml's folder
    assert [r.path.name for r in load_dataset(y, split="train").records] == ["b.jpg"]


@pytest.mark.parametrize("yaml, match", [
    ("val: images/val\nnames: [a\n", r"data.yaml:\d+: not valid YAML"),
    ("val: images/val\n", "needs 'names'"),
    ("val: images/val\nnames: {0: a, 2: b}\n", "without gaps"),
    ("val: images/val\nnames: [a, b]\nnc: 3\n", "nc=3 but 'names' has 2"),
    ("train: images/val\nnames: [a]\n", "no 'valid' key"),
    ("path: ds\nval: images/nope\nnames: [a]\n", "'images/nope' not found"),
    ("- a\n- b\n", "expected a mapping"),
])
def test_yolo_folder_bad_yaml(tmp_path, yaml, match):
    y = _yolo(tmp_path, yaml, {"a": ""})
    with pytest.raises(DataError, match=match):
        read_yolo_folder(y)


def test_yolo_folder_bad_labels_named_and_counted(tmp_path):
    y = _yolo(tmp_path, "path: ds\nval: images/val\nnames: [a, b]\n",
              {"ok": "0 0.5 0.5 0.2 0.2\n", "bad": "0 0.5 0.5 0.2\n7 0.5 0.5 0.1 0.1\n1 0.5 0.5 0.1 0.1\n",
               "nolabel": None})
    (tmp_path / "ds" / "list.txt").write_text("images/val/ok.jpg\nimages/val/gone.jpg\n")
    with pytest.warns(UserWarning) as caught:
        info = read_yolo_folder(y)
    assert info.problems.counts["bad label line"] == 2 and info.problems.counts["missing label file"] == 1
    text = "\n".join(str(w.message) for w in caught)
    assert "bad.txt:1: expected 5 fields" in text and "bad.txt:2: class 7" in text
    assert [len(r.labels) for r in info.records] == [1, 0, 1]  # bad.jpg keeps its good line; nolabel background
    y.write_text("path: ds\nval: list.txt\nnames: [a, b]\n")
    with pytest.warns(UserWarning, match=r"list.txt:2: image not found"):
        assert len(read_yolo_folder(y).records) == 1
