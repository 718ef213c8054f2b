"""Darknet's own ``detector map`` report (AlexeyAB ``validate_detector_map``), computed in numpy.

Pure computation, no model: per-image detections and ground truth in, the report dict out.
The rules are Darknet's, and several differ from pycocotools (which is why the two figures
differ on the same detections):

* **Matching.** Each detection (a box and one class with probability > 0) is compared with
  the ground truth of *its own image and class*; it is tied to the truth with the highest IoU
  provided that IoU is > ``iou_thres`` (strictly). The truth is chosen once, before ranking: if
  the detections are then ranked (by probability over *all images and classes*, ties kept in
  input order) and an earlier detection already took that truth, the later one is a false
  positive; it does **not** fall back to the next-best free truth (pycocotools does).
* **Precision/recall curve of a class** at every rank: precision = TP / (TP + FP) (0 before the
  class's first detection), recall = TP / number of truths of the class (0 when it has none).
* **AP.** ``points=101`` (MS COCO style) or ``11`` (PascalVOC 2007): the mean over recall
  points r = 0, 1/(n-1), ..., 1 of the highest precision at any rank whose recall >= r (0 when
  none). ``points=0``: the area under the curve at each unique recall, the precision of each
  recall step being the highest precision at that rank or any later one (PascalVOC 2010+).
* **mAP** = plain mean over *all* classes; a class without ground truth scores 0 (pycocotools
  leaves such classes out).
* **At the report threshold** (``conf_thres``, Darknet's ``-thresh``, 0.25): a detection with
  probability > ``conf_thres`` is a TP when it was tied to a truth and no *earlier detection of
  the same image* (in the image's detection order, whatever its probability) was tied to that
  same truth; otherwise an FP. FN = all truths - TP. avg IoU = (sum of the TPs' IoU) / (TP + FP):
  Darknet divides by all detections above the threshold, false positives included, which is
  why its "average IoU" is much lower than the mean IoU of the matches.

The image's detection order matters only for that last rule and for ties in probability:
Darknet visits the boxes in the order its NMS leaves them and, within a box, the classes in
index order. :func:`darknet_nms` reproduces that NMS (``do_nms_sort`` / ``diounms_sort``,
the [yolo] ``nms_kind``) and that order, from the network's decoded output.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .boxes import box_iou, darknet_overlap

POINTS = (101, 11, 0)


box_iou_matrix = box_iou  # the name this module's callers know: IoU of every x1y1x2y2 box pair (N, M)


def darknet_resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """Darknet's ``resize_image``: bilinear with the corner pixels aligned (scale (W-1)/(w-1)),
    columns first, in float, no rounding. HWC in (any dtype), float32 HWC out, same value scale.

    OpenCV's INTER_LINEAR aligns pixel centres instead and rounds to uint8; the scores it
    gives differ enough to move about 20 of coco128's 80 per-class APs by more than a point.
    """
    src = np.asarray(img, np.float32)
    hh, ww = src.shape[:2]
    if (hh, ww) == (h, w):
        return src.copy()
    if ww == 1 or w == 1:
        part = np.repeat(src[:, -1:], w, axis=1)
    else:
        sx = np.arange(w, dtype=np.float32) * np.float32((ww - 1) / np.float32(w - 1))
        ix = np.minimum(sx.astype(np.int64), ww - 1)
        dx = (sx - ix).astype(np.float32)
        ix1 = np.minimum(ix + 1, ww - 1)
        shape = (1, w) + (1,) * (src.ndim - 2)
        part = (1 - dx).reshape(shape) * src[:, ix] + dx.reshape(shape) * src[:, ix1]
        part[:, w - 1] = src[:, ww - 1]  # Darknet copies the last column
    if hh == 1 or h == 1:
        return np.ascontiguousarray(part[:1].repeat(h, axis=0) if hh == 1 else part[:h] * 1)
    sy = np.arange(h, dtype=np.float32) * np.float32((hh - 1) / np.float32(h - 1))
    iy = np.minimum(sy.astype(np.int64), hh - 1)
    dy = (sy - iy).astype(np.float32)
    iy1 = np.minimum(iy + 1, hh - 1)
    shape = (h, 1) + (1,) * (src.ndim - 2)
    out = (1 - dy).reshape(shape) * part[iy] + dy.reshape(shape) * part[iy1]
    out[h - 1] = (1 - dy[h - 1]) * part[iy[h - 1]]  # Darknet adds no lower neighbour on the last row
    return out.astype(np.float32, copy=False)


def darknet_letterbox_placement(src_wh: tuple[int, int], dst_wh: tuple[int, int]
                                ) -> tuple[int, int, float, float]:
    """Darknet's ``letterbox_image`` size (integer division) and the offsets its
    ``correct_yolo_boxes`` maps boxes back with ((W - new_w) / 2, a float); the picture itself
    is embedded at the integer part. Returns new_w, new_h, left, top."""
    (w0, h0), (w, h) = src_wh, dst_wh
    if w / w0 < h / h0:
        nw, nh = w, (h0 * w) // w0
    else:
        nw, nh = (w0 * h) // h0, h
    return nw, nh, (w - nw) / 2.0, (h - nh) / 2.0


def darknet_nms(pred: np.ndarray, conf_thres: float = 0.005, nms_thres: float = 0.45,
                nms_kind: str = "default", beta_nms: float | None = None,
                input_wh: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """One image's decoded network output ``(N, 5 + C)`` (cx, cy, w, h in input pixels,
    objectness, class probabilities) -> its detections ``(K, 6)`` x1, y1, x2, y2, score, class
    (input pixels), as ``detector map`` gets them, in the order it visits them.

    As Darknet: a box is a candidate when objectness > ``conf_thres``; its class scores are
    objectness x probability, zeroed where <= ``conf_thres``. Then, class by class, the boxes
    are sorted by that class's score and each box still scoring suppresses, in that class only,
    every later box whose overlap > ``nms_thres``: IoU for ``nms_kind`` "default" (and anything
    Darknet does not know), DIoU for "greedynms" (exponent 0.6) and "diounms" (``beta_nms``, the
    head's setting, so it has no default here: ``Head.nms_settings()`` gives both keyword arguments),
    measured in coordinates relative to the input (``input_wh``), as Darknet's are. The boxes
    are left in the order of the last sort; since each sort is stable that is the order of
    (score of class C-1, ..., score of class 0), highest first; each box yields one detection
    per class still scoring, in class order.
    """
    if nms_kind == "diounms" and beta_nms is None:
        raise ValueError("nms_kind=diounms needs beta_nms (the head's setting, e.g. [yolo] beta_nms)")
    pred = np.asarray(pred, np.float32)
    num_classes = pred.shape[1] - 5
    pred = pred[pred[:, 4] > conf_thres]
    if len(pred) == 0:
        return np.zeros((0, 6), np.float32)
    probs = pred[:, 5:] * pred[:, 4:5]
    probs[probs <= conf_thres] = 0
    keep_rows = probs.max(1) > 0  # boxes no class survives: no detection, no effect on NMS
    pred, probs = pred[keep_rows], probs[keep_rows]
    if len(pred) == 0:
        return np.zeros((0, 6), np.float32)
    rel = pred[:, :4].astype(np.float64) / np.array([input_wh[0], input_wh[1]] * 2)
    # the order the successive stable sorts leave: class C-1's score first, then C-2's, ...
    order = np.lexsort([-probs[:, k] for k in range(num_classes)])
    probs, pred, rel = probs[order], pred[order], rel[order]
    for k in np.flatnonzero(probs.max(0) > 0):
        idx = np.flatnonzero(probs[:, k] > 0)
        idx = idx[np.argsort(-probs[idx, k], kind="stable")]
        alive = np.ones(len(idx), bool)
        for n in range(len(idx) - 1):
            if not alive[n]:
                continue
            later = idx[n + 1:]
            alive[n + 1:] &= ~(darknet_overlap(rel[idx[n]], rel[later], nms_kind, beta_nms) > nms_thres)
        probs[idx[~alive], k] = 0
    box_i, cls_i = np.nonzero(probs)  # row-major: box order, then class order
    out = np.empty((len(box_i), 6), np.float32)
    xywh = pred[box_i, :4]
    out[:, 0:2] = xywh[:, 0:2] - xywh[:, 2:4] / 2
    out[:, 2:4] = xywh[:, 0:2] + xywh[:, 2:4] / 2
    out[:, 4] = probs[box_i, cls_i]
    out[:, 5] = cls_i
    return out


def average_precision(precision: np.ndarray, recall: np.ndarray, points: int) -> float:
    """AP of one class from its precision and recall at every rank, Darknet's way (see the module
    docstring): ``points`` recall points (101, 11, ...) or ``0`` for the area under the curve."""
    precision = np.asarray(precision, np.float64)
    recall = np.asarray(recall, np.float64)
    if len(precision) == 0:
        return 0.0
    # highest precision at this rank or any later one
    best_after = np.maximum.accumulate(precision[::-1])[::-1]
    if points == 0:
        # ranks n-2 .. 0: (recall[r+1] - recall[r]) * best_after[r], then recall[0] * best_after[0]
        ap = float(np.sum((recall[1:] - recall[:-1]) * best_after[:-1]))
        return ap + float(recall[0] * best_after[0])
    if points < 2:
        raise ValueError(f"points must be 0 (area under the curve) or >= 2, got {points}")
    total = 0.0
    for point in range(points):
        cur_recall = point * 1.0 / (points - 1)
        # recall never decreases with rank: the ranks with recall >= cur_recall are a suffix
        first = int(np.searchsorted(recall, cur_recall, side="left"))
        total += float(best_after[first]) if first < len(recall) else 0.0
    return total / points


def darknet_map(detections: Sequence[np.ndarray], ground_truth: Sequence[np.ndarray], num_classes: int,
                names: Sequence[str] | None = None, iou_thres: float = 0.5, conf_thres: float = 0.25,
                points: int = 101) -> dict[str, Any]:
    """Darknet's ``detector map`` figures.

    ``detections[i]``: image i's detections, ``(K, 6)`` x1, y1, x2, y2, score, class (pixels,
    class index 0..num_classes-1), in the order Darknet would visit them (see module docstring).
    ``ground_truth[i]``: image i's truth boxes, ``(M, 5)`` x1, y1, x2, y2, class (same pixels).
    Returns ``map``, ``points``, ``iou_thres``, ``conf_thres``, ``precision``, ``recall``, ``f1``,
    ``tp``, ``fp``, ``fn``, ``avg_iou`` (all at ``conf_thres``; fractions), ``detections``,
    ``truths`` and ``per_class`` {name: {ap, tp, fp, gt}}. Where Darknet would divide 0 by 0
    (no detection above ``conf_thres``) precision, recall and F1 are reported as 0.
    """
    if len(detections) != len(ground_truth):
        raise ValueError(f"{len(detections)} images of detections but {len(ground_truth)} of ground truth")
    if points not in POINTS and points < 2:
        raise ValueError(f"points must be 101, 11 or 0 (area under the curve), got {points}")
    names = list(names) if names is not None else [str(c) for c in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} names for {num_classes} classes")

    truth_count = np.zeros(num_classes, np.int64)
    at_thr = _AtThreshold(np.zeros(num_classes, np.int64), np.zeros(num_classes, np.int64))
    scores, classes, truth_ids = [], [], []
    truth_offset = 0  # Darknet's unique_truth_count before this image
    for dets, gt in zip(detections, ground_truth):
        score, det_cls, truth, gt_cls = _match_image(dets, gt, num_classes, iou_thres, conf_thres,
                                                     truth_offset, at_thr)
        truth_count += np.bincount(gt_cls, minlength=num_classes)
        scores.append(score)
        classes.append(det_cls)
        truth_ids.append(truth)
        truth_offset += len(gt_cls)
    score = np.concatenate(scores) if scores else np.zeros(0)
    cls, is_tp = _rank(score, np.concatenate(classes) if classes else np.zeros(0, np.int64),
                       np.concatenate(truth_ids) if truth_ids else np.zeros(0, np.int64))

    per_class: dict[str, dict[str, Any]] = {}
    aps = np.zeros(num_classes)
    for c in range(num_classes):
        mine = cls == c
        tp = np.cumsum(mine & is_tp)
        fp = np.cumsum(mine & ~is_tp)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
            recall = tp / truth_count[c] if truth_count[c] > 0 else np.zeros(len(tp))
        aps[c] = average_precision(precision, recall, points) if len(cls) else 0.0
        per_class[names[c]] = {"ap": float(aps[c]), "tp": int(at_thr.tp[c]), "fp": int(at_thr.fp[c]),
                               "gt": int(truth_count[c])}
    return {"map": float(aps.mean()) if num_classes else 0.0, "points": int(points),
            "iou_thres": float(iou_thres), "conf_thres": float(conf_thres),
            **at_thr.summary(int(truth_count.sum())), "detections": int(len(cls)), "per_class": per_class}


@dataclass
class _AtThreshold:
    """TP and FP per class, and the sum of the TPs' IoU, at the report threshold."""

    tp: np.ndarray
    fp: np.ndarray
    iou_sum: float = 0.0

    def summary(self, truths: int) -> dict[str, Any]:
        tp, fp = int(self.tp.sum()), int(self.fp.sum())
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / truths if truths else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"precision": float(precision), "recall": float(recall), "f1": float(f1), "tp": tp, "fp": fp,
                "fn": truths - tp, "avg_iou": self.iou_sum / (tp + fp) if tp + fp else 0.0, "truths": truths}


def _match_image(dets: np.ndarray, gt: np.ndarray, num_classes: int, iou_thres: float, conf_thres: float,
                 truth_offset: int, at_thr: _AtThreshold) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One image: each detection's truth (global index, -1 for none: the best-IoU truth of its class
    above ``iou_thres``), counting TP/FP at ``conf_thres`` in the image's own detection order.
    Returns (scores, classes, truth ids) of the kept detections and the truths' classes."""
    dets = np.asarray(dets, np.float64).reshape(-1, 6)
    gt = np.asarray(gt, np.float64).reshape(-1, 5)
    gt_cls = gt[:, 4].astype(np.int64)
    if len(gt_cls) and (gt_cls.min() < 0 or gt_cls.max() >= num_classes):
        raise ValueError(f"ground-truth class outside 0..{num_classes - 1}")
    det_cls = dets[:, 5].astype(np.int64)
    if len(det_cls) and (det_cls.min() < 0 or det_cls.max() >= num_classes):
        raise ValueError(f"detection class outside 0..{num_classes - 1}")
    keep = dets[:, 4] > 0  # Darknet keeps a (box, class) when its probability is > 0
    dets, det_cls = dets[keep], det_cls[keep]
    iou = box_iou_matrix(dets[:, :4], gt[:, :4])
    iou = np.where((det_cls[:, None] == gt_cls[None, :]) & (iou > iou_thres), iou, 0.0)
    best = iou.argmax(1) if gt.shape[0] else np.zeros(len(dets), np.int64)
    best_iou = iou[np.arange(len(dets)), best] if gt.shape[0] else np.zeros(len(dets))
    truth = np.where(best_iou > 0, truth_offset + best, -1)  # the first of equal IoUs, as Darknet
    taken: set[int] = set()
    for k in range(len(dets)):
        t = int(truth[k])
        if dets[k, 4] > conf_thres:
            if t >= 0 and t not in taken:
                at_thr.tp[det_cls[k]] += 1
                at_thr.iou_sum += float(best_iou[k])
            else:
                at_thr.fp[det_cls[k]] += 1
        taken.add(t)
    return dets[:, 4], det_cls, truth, gt_cls


def _rank(score: np.ndarray, cls: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All detections ranked by probability (stable: ties keep image order, then input order), and
    whether each is a TP: a truth counts for the first-ranked detection tied to it only."""
    order = np.argsort(-score.astype(np.float32), kind="stable")
    cls, truth = cls[order], truth[order]
    is_tp = np.zeros(len(order), bool)
    if len(order):
        matched = np.flatnonzero(truth >= 0)
        _, first = np.unique(truth[matched], return_index=True)
        is_tp[matched[first]] = True
    return cls, is_tp


def format_darknet_report(report: dict[str, Any]) -> str:
    """The report as Darknet's ``detector map`` prints it (its wording and rounding)."""
    lines = [f" detections_count = {report['detections']}, unique_truth_count = {report['truths']}"]
    for c, (name, row) in enumerate(report["per_class"].items()):
        lines.append(f"class_id = {c}, name = {name}, ap = {100 * row['ap']:.2f}%   \t "
                     f"(TP = {row['tp']}, FP = {row['fp']})")
    t = report["conf_thres"]
    lines.append("")
    lines.append(f" for conf_thresh = {t:.2f}, precision = {report['precision']:.2f}, "
                 f"recall = {report['recall']:.2f}, F1-score = {report['f1']:.2f}")
    lines.append(f" for conf_thresh = {t:.2f}, TP = {report['tp']}, FP = {report['fp']}, "
                 f"FN = {report['fn']}, average IoU = {100 * report['avg_iou']:.2f} %")
    lines.append("")
    how = (f"used {report['points']} Recall-points" if report["points"]
           else "used Area-Under-Curve for each unique Recall")
    lines.append(f" IoU threshold = {100 * report['iou_thres']:.0f} %, {how}")
    lines.append(f" mean average precision (mAP@{report['iou_thres']:.2f}) = {report['map']:.6f}, "
                 f"or {100 * report['map']:.2f} %")
    return "\n".join(lines)


__all__ = ["darknet_map", "darknet_nms", "darknet_resize", "darknet_letterbox_placement", "format_darknet_report",
           "average_precision", "box_iou_matrix", "POINTS"]
