"""Darknet's ``detector map``: hand-made cases of its rules, then the shipped model on coco128
against the figures Darknet itself printed (../shared/reference/darknet.md)."""
from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest

from yolo.checkpoint import load_weights
from yolo.cli.test import main
from yolo.darknet_map import average_precision, darknet_map, darknet_nms, darknet_resize, format_darknet_report
from yolo.datasets import DataWarning, drop_crowd, load_dataset, write_darknet_dataset
from yolo.evaluate import darknet_ground_truth, evaluate
from yolo.model import Darknet

from helpers import SHARED

REFERENCE = SHARED / "reference" / "darknet.md"


def _gt(*boxes):
    """x1, y1, x2, y2, class rows."""
    return np.asarray(boxes, np.float64).reshape(-1, 5)


def _dets(*rows):
    """x1, y1, x2, y2, score, class rows."""
    return np.asarray(rows, np.float64).reshape(-1, 6)


# --- matching ------------------------------------------------------------------------------------
def test_duplicate_detection_is_a_false_positive():
    r = darknet_map([_dets([0, 0, 10, 10, .9, 0], [0, 0, 10, 10, .8, 0])], [_gt([0, 0, 10, 10, 0])], 1)
    assert r["map"] == pytest.approx(1.0)  # the duplicate ranks after the match: precision 1 at recall 1
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 0)
    assert r["avg_iou"] == pytest.approx(0.5)  # (1.0 + nothing for the FP) / (TP + FP)


def test_detection_of_another_class_does_not_match():
    r = darknet_map([_dets([0, 0, 10, 10, .9, 1])], [_gt([0, 0, 10, 10, 0])], 2)
    assert r["map"] == 0.0 and (r["tp"], r["fp"], r["fn"]) == (0, 1, 1)
    assert r["per_class"]["1"] == {"ap": 0.0, "tp": 0, "fp": 1, "gt": 0}


def test_iou_must_exceed_the_threshold():
    gt = [_gt([0, 0, 20, 10, 0])]
    assert darknet_map([_dets([0, 0, 10, 10, .9, 0])], gt, 1)["tp"] == 0  # IoU exactly 0.5
    assert darknet_map([_dets([0, 0, 10.1, 10, .9, 0])], gt, 1)["tp"] == 1


def test_best_truth_taken_means_false_positive_no_fallback():
    # the second detection's best truth (A) is already taken; it does not fall back to B
    gt = [_gt([0, 0, 10, 10, 0], [1, 0, 11, 10, 0])]
    dets = [_dets([0, 0, 10, 10, .9, 0], [0.2, 0, 10.2, 10, .8, 0])]
    r = darknet_map(dets, gt, 1)
    assert (r["tp"], r["fp"]) == (1, 1)
    assert r["map"] == pytest.approx(51 / 101)  # precision 1 up to recall 0.5, nothing beyond


def test_report_threshold_follows_the_image_order():
    # Darknet counts TP/FP at the report threshold in the image's detection order: an earlier
    # detection below the threshold that took the truth makes the later, confident one an FP;
    # the mAP ranks by score and is not affected.
    gt = [_gt([0, 0, 10, 10, 0])]
    r = darknet_map([_dets([0, 0, 10, 10.5, .1, 0], [0, 0, 10, 10, .9, 0])], gt, 1)
    assert (r["tp"], r["fp"]) == (0, 1) and r["map"] == pytest.approx(1.0)
    r = darknet_map([_dets([0, 0, 10, 10, .9, 0], [0, 0, 10, 10.5, .1, 0])], gt, 1)
    assert (r["tp"], r["fp"]) == (1, 0)


def test_classes_without_truth_count_as_zero():
    r = darknet_map([_dets([0, 0, 10, 10, .9, 0])], [_gt([0, 0, 10, 10, 0])], 3, names=["a", "b", "c"])
    assert r["map"] == pytest.approx(1 / 3)
    assert [v["ap"] for v in r["per_class"].values()] == [1.0, 0.0, 0.0]


def test_truths_are_per_image():
    # the same box in another image is not a match
    r = darknet_map([_dets([0, 0, 10, 10, .9, 0]), _dets()], [_gt(), _gt([0, 0, 10, 10, 0])], 1)
    assert (r["tp"], r["fp"], r["fn"]) == (0, 1, 1)


# --- recall-point methods on a hand-computed curve ------------------------------------------------
def test_101_11_and_area_under_curve():
    # 4 truths; ranked: TP, FP, TP, FP -> (recall, precision) = (.25, 1), (.25, .5), (.5, 2/3), (.5, .5)
    gt = [_gt([0, 0, 10, 10, 0], [20, 0, 30, 10, 0], [40, 0, 50, 10, 0], [60, 0, 70, 10, 0])]
    dets = [_dets([0, 0, 10, 10, .9, 0], [100, 100, 110, 110, .8, 0], [20, 0, 30, 10, .7, 0],
                  [200, 200, 210, 210, .6, 0])]
    ap101 = (26 * 1 + 25 * 2 / 3) / 101  # recall points 0..0.25: 1; 0.26..0.50: 2/3; above: 0
    ap11 = (3 * 1 + 3 * 2 / 3) / 11  # 0, .1, .2: 1; .3, .4, .5: 2/3
    auc = 0.25 * 1 + 0.25 * 2 / 3
    got = {p: darknet_map(dets, gt, 1, points=p)["map"] for p in (101, 11, 0)}
    assert got[101] == pytest.approx(ap101) and got[11] == pytest.approx(ap11) and got[0] == pytest.approx(auc)
    assert got[11] > got[101] > got[0]
    assert average_precision([1, .5, 2 / 3, .5], [.25, .25, .5, .5], 11) == pytest.approx(ap11)
    with pytest.raises(ValueError, match="points"):
        darknet_map(dets, gt, 1, points=1)


def test_report_printout():
    r = darknet_map([_dets([0, 0, 10, 10, .9, 0])], [_gt([0, 0, 10, 10, 0])], 1, names=["person"])
    text = format_darknet_report(r)
    assert "class_id = 0, name = person, ap = 100.00%" in text and "(TP = 1, FP = 0)" in text
    assert "for conf_thresh = 0.25, TP = 1, FP = 0, FN = 0, average IoU = 100.00 %" in text
    assert "mean average precision (mAP@0.50) = 1.000000, or 100.00 %" in text
    assert "used 101 Recall-points" in text
    r0 = darknet_map([_dets()], [_gt()], 1, points=0)
    assert "used Area-Under-Curve for each unique Recall" in format_darknet_report(r0)
    assert r0["map"] == 0.0 and r0["precision"] == 0.0  # Darknet's 0/0 reported as 0


# --- NMS and resize ------------------------------------------------------------------------------
def _pred(*rows):
    """cx, cy, w, h, objectness, class probabilities."""
    return np.asarray(rows, np.float32)


def test_darknet_nms_per_class_greedy_and_diou():
    a, b = [50, 50, 100, 100], [85, 50, 100, 100]  # IoU 0.48, but centres far apart: DIoU 0.33
    pred = _pred([*a, 1, .9, 0], [*b, 1, .8, 0], [*a, 1, 0, .7])
    iou = darknet_nms(pred, nms_kind="default")
    assert sorted(map(tuple, iou[:, 4:].astype(np.float64).round(3).tolist())) == [(.7, 1), (.9, 0)]
    greedy = darknet_nms(pred, nms_kind="greedynms")  # Darknet's greedynms measures DIoU
    assert sorted(map(tuple, greedy[:, 4:].astype(np.float64).round(3).tolist())) == [(.7, 1), (.8, 0), (.9, 0)]
    # candidates: objectness and objectness x probability must exceed the threshold
    assert len(darknet_nms(_pred([*a, .004, 1, 1]))) == 0
    assert darknet_nms(_pred([*a, .5, .009, .02]))[:, 5].tolist() == [1]
    box = darknet_nms(_pred([10, 20, 4, 6, 1, 1, 0]))[0, :4]
    assert box.tolist() == [8, 17, 12, 23]


def test_darknet_nms_leaves_boxes_in_darknet_order():
    # the last stable sort is by the last class: boxes scoring in class 1 come first, then class 0's;
    # a box yields its classes in index order
    pred = _pred([10, 10, 5, 5, 1, .9, 0], [100, 10, 5, 5, 1, 0, .3], [200, 10, 5, 5, 1, .4, .6])
    out = darknet_nms(pred)
    assert out[:, 0].tolist() == [197.5, 197.5, 97.5, 7.5]
    assert out[:, 5].tolist() == [0, 1, 1, 0]


def test_darknet_resize_aligns_corners():
    src = np.array([[0, 10], [20, 30]], np.float32)[..., None]
    out = darknet_resize(src, 3, 3)[..., 0]
    np.testing.assert_allclose(out, [[0, 5, 10], [10, 15, 20], [20, 25, 30]])
    img = np.random.default_rng(0).integers(0, 256, (37, 53, 3)).astype(np.uint8)
    big = darknet_resize(img, 320, 320)
    assert big.dtype == np.float32 and big.shape == (320, 320, 3)
    np.testing.assert_allclose(big[0, [0, -1]], img[0, [0, -1]])  # corners, not half-pixel centres
    np.testing.assert_allclose(big[:, -1], darknet_resize(img[:, -1:], 1, 320)[:, 0])  # last column copied
    np.testing.assert_array_equal(darknet_resize(img, 53, 37), img)


# --- the shipped model on coco128 against Darknet's own report ------------------------------------
def _reference() -> tuple[list[list[str]], dict[str, float]]:
    if not REFERENCE.exists():
        pytest.skip(f"needs {REFERENCE} (the project's ../shared folder, present in CI); not found")
    text = REFERENCE.read_text()
    table = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
             if re.match(r"\| \d+ \| ", line)]
    per_class = [row for row in table if len(row) == 7]
    assert len(per_class) == 80, "darknet.md's per-class table changed shape"
    maps = {int(row[0]): float(row[2].split()[0]) for row in table  # the -points table
            if len(row) == 3 and row[0] in ("101", "11", "0") and re.match(r"0\.\d+ \(", row[2])}
    assert set(maps) == {101, 11, 0}
    return per_class, maps


@pytest.fixture(scope="module")
def coco_info(coco128):
    return load_dataset(coco128 / "annotations" / "instances_val2017.json", coco128 / "val2017")


@pytest.fixture(scope="module")
def darknet_run(coco_info, fastest_cfg, fastest_weights, tmp_path_factory):
    """One evaluation (metric darknet, 101 points) of the shipped model on coco128 in Darknet form
    (crowd dropped, 6 decimals, class = rank of the category id), keeping what darknet_map was given
    so the other recall-point methods are computed from the very same detections."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # the 10 crowd boxes are dropped, as in darknet.md
        data = write_darknet_dataset(coco_info, tmp_path_factory.mktemp("coco128_darknet"))
    info = load_dataset(data)
    model = Darknet(fastest_cfg)
    load_weights(model, fastest_weights)
    model.fuse()
    import yolo.evaluate as ev

    seen: dict[str, object] = {}
    real = ev.darknet_map

    def spy(dets, gt, *args, **kw):
        seen["dets"], seen["gt"] = dets, gt
        return real(dets, gt, *args, **kw)

    ev.darknet_map = spy
    try:
        metrics = evaluate(model, info, metric="darknet", points=101, workers=0, verbose=False)
    finally:
        ev.darknet_map = real
    reports = {101: metrics["darknet"]}
    for points in (11, 0):
        reports[points] = darknet_map(seen["dets"], seen["gt"], info.num_classes, info.names, points=points)
    return metrics, reports, seen, info


def test_coco128_map_matches_darknet(darknet_run):
    _, maps = _reference()
    metrics, reports, _, _ = darknet_run
    for points, report in reports.items():
        print(f"points {points}: mAP@0.50 {100 * report['map']:.2f} % (Darknet {100 * maps[points]:.2f} %)")
        assert report["map"] == pytest.approx(maps[points], abs=0.002)
    assert metrics["darknet"]["points"] == 101 and metrics["darknet"]["iou_thres"] == 0.5
    assert metrics["darknet"]["truths"] == 929  # Darknet: unique_truth_count = 929
    assert abs(metrics["darknet"]["detections"] - 22298) < 100  # Darknet: detections_count = 22298
    assert 0 < metrics["map50"] < 1  # the COCO figures are still there, on the same detections


def test_coco128_report_threshold_matches_darknet(darknet_run):
    _, reports, _, _ = darknet_run
    r = reports[101]
    print(f"TP {r['tp']} FP {r['fp']} FN {r['fn']} P {r['precision']:.3f} R {r['recall']:.3f} "
          f"F1 {r['f1']:.3f} avg IoU {100 * r['avg_iou']:.2f} %")
    assert r["conf_thres"] == 0.25
    assert abs(r["tp"] - 239) <= 3 and abs(r["fp"] - 343) <= 3 and abs(r["fn"] - 690) <= 3
    assert r["tp"] + r["fn"] == 929
    assert r["precision"] == pytest.approx(0.41, abs=0.01)
    assert r["recall"] == pytest.approx(0.26, abs=0.01)
    assert r["f1"] == pytest.approx(0.32, abs=0.01)
    assert r["avg_iou"] == pytest.approx(0.2962, abs=0.003)
    for other in (reports[11], reports[0]):  # the threshold figures do not depend on the AP method
        assert (other["tp"], other["fp"], other["avg_iou"]) == (r["tp"], r["fp"], r["avg_iou"])


def test_coco128_per_class_matches_darknet(darknet_run):
    per_class, _ = _reference()
    _, reports, _, _ = darknet_run
    for points, col in ((101, 2), (11, 3), (0, 4)):
        ours = [row["ap"] for row in reports[points]["per_class"].values()]
        off = [(ref[1], round(100 * ap, 2), ref[col]) for ap, ref in zip(ours, per_class)
               if abs(100 * ap - float(ref[col])) > 1.0]
        print(f"points {points}: {80 - len(off)}/80 classes within 1 point; off: {off}")
        assert len(off) <= 4, off
    ours = list(reports[101]["per_class"].values())
    tp_off = sum(abs(o["tp"] - int(ref[5])) for o, ref in zip(ours, per_class))
    fp_off = sum(abs(o["fp"] - int(ref[6])) for o, ref in zip(ours, per_class))
    assert tp_off <= 6 and fp_off <= 6, (tp_off, fp_off)


def test_coco_form_gives_the_same_report(darknet_run, coco_info):
    """Both dataset forms: the COCO json's records (crowd boxes left out) give the same truths and
    so the same report on the same detections."""
    _, reports, seen, _ = darknet_run
    records = coco_info.records
    gt = darknet_ground_truth(records, [(r.height, r.width) for r in records])
    assert sum(len(g) for g in gt) == 929
    for ours, theirs in zip(gt, seen["gt"]):
        np.testing.assert_allclose(ours, theirs, atol=1e-3)  # labels written with 6 decimals
    r = darknet_map(seen["dets"], gt, 80, coco_info.names)
    assert r["map"] == pytest.approx(reports[101]["map"], abs=1e-4)
    assert (r["tp"], r["fp"]) == (reports[101]["tp"], reports[101]["fp"])


def test_cli_darknet_metric(coco_info, tmp_path, capsys):
    """test.py --metric darknet on a 12-image subset: the printed report and the json block."""
    info = drop_crowd(coco_info)
    info.records = info.records[:12]
    data = write_darknet_dataset(info, tmp_path / "dn12")
    out = tmp_path / "metrics.json"
    rc = main(["--data", str(data), "--workers", "0", "--no-progress", "--metric", "darknet",
               "--points", "11", "--metrics-json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "used 11 Recall-points" in text and "mean average precision (mAP@0.50) = " in text
    assert "for conf_thresh = 0.25, TP = " in text and "speed:" in text
    assert "AP@[.5:.95] all" not in text
    block = json.loads(out.read_text())["darknet"]
    assert {"map", "points", "iou_thres", "conf_thres", "precision", "recall", "f1", "tp", "fp", "fn",
            "avg_iou", "per_class"} <= set(block)
    assert block["points"] == 11 and block["conf_thres"] == 0.25 and 0 < block["map"] < 1
    assert len(block["per_class"]) == 80 and {"ap", "tp", "fp"} <= set(block["per_class"]["person"])
    printed = float(re.search(r"mAP@0\.50\) = ([\d.]+)", text).group(1))
    assert printed == pytest.approx(block["map"], abs=1e-6)
