"""What training sees, as pictures: the labels overview (``labels.png``), augmented batches with
their labels drawn, predicted vs true boxes, a confusion matrix, P / R / F1 against the
confidence threshold. Each writes one PNG (matplotlib Agg, atomic, as :mod:`yolo.plots`).

The detection-to-truth matching of the confusion matrix is :func:`match_detections` (IoU via
:func:`yolo.boxes.box_iou`), kept apart from the drawing so it is tested on its own.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from .boxes import box_iou
from .plots import _pyplot, _save, class_colour, draw_detections, text_colour


def draw_truth(img: np.ndarray, boxes: np.ndarray, names: Sequence[str] | None = None) -> np.ndarray:
    """True boxes ``[M, 5]`` x1 y1 x2 y2 class (pixels) on a copy of a BGR image: class colour,
    class name only (no score), in :func:`yolo.plots.draw_detections`' style."""
    out = img.copy()
    h, w = out.shape[:2]
    lw = max(1, round((h + w) / 2 * 0.003))
    scale, thick = lw / 3, max(1, lw - 1)
    for x1, y1, x2, y2, cls in np.asarray(boxes, np.float64).reshape(-1, 5):
        cls = int(cls)
        colour = class_colour(cls)
        p1 = (int(round(x1)), int(round(y1)))
        cv2.rectangle(out, p1, (int(round(x2)), int(round(y2))), colour, lw)
        text = names[cls] if names is not None and 0 <= cls < len(names) else str(cls)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        th += base
        top = p1[1] - th if p1[1] - th >= 0 else p1[1]
        left = min(max(p1[0], 0), max(0, w - tw))
        cv2.rectangle(out, (left, top), (left + tw, top + th), colour, -1)
        cv2.putText(out, text, (left, top + th - base), cv2.FONT_HERSHEY_SIMPLEX, scale, text_colour(colour),
                    thick, cv2.LINE_AA)
    return out


def plot_labels(labels: np.ndarray, names: Sequence[str], png_path: str | Path) -> Path:
    """Labels overview of ``labels`` [N, 5] (class cx cy w h, normalised): boxes per class, box
    centres (2-D histogram) and box sizes w x h (2-D histogram), as ultralytics' labels.jpg."""
    plt = _pyplot()
    labels = np.asarray(labels, np.float64).reshape(-1, 5)
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    counts = np.bincount(labels[:, 0].astype(int), minlength=len(names))[:len(names)]
    order = np.argsort(-counts, kind="stable")
    shown = order[counts[order] > 0][:40]
    axes[0].bar(range(len(shown)), counts[shown], color=[np.array(class_colour(int(c))[::-1]) / 255 for c in shown])
    axes[0].set_xticks(range(len(shown)), [names[c] for c in shown], rotation=90, fontsize=7)
    axes[0].set(ylabel="boxes", title=f"{len(labels)} boxes, {int((counts > 0).sum())} of {len(names)} classes"
                + (" (40 most frequent shown)" if (counts > 0).sum() > 40 else ""))
    bins = np.linspace(0, 1, 51)
    axes[1].hist2d(labels[:, 1], labels[:, 2], bins=(bins, bins), cmap="Blues", cmin=1)
    axes[1].set(xlabel="x (centre, of image width)", ylabel="y (centre, of image height)", xlim=(0, 1),
                ylim=(1, 0), title="box centres", aspect="equal")
    axes[2].hist2d(labels[:, 3], labels[:, 4], bins=(bins, bins), cmap="Blues", cmin=1)
    axes[2].set(xlabel="width (of image width)", ylabel="height (of image height)", xlim=(0, 1), ylim=(0, 1),
                title="box sizes", aspect="equal")
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    _save(fig, png_path)
    return png_path


def mosaic(images: Sequence[np.ndarray], titles: Sequence[str] | None = None,
           cols: int = 4, side: int = 320) -> np.ndarray:
    """A grid of BGR images, each scaled into a ``side`` x ``side`` cell (aspect kept)."""
    n = len(images)
    rows = max(1, -(-n // cols))
    cols = min(cols, max(n, 1))
    grid = np.full((rows * side, cols * side, 3), 114, np.uint8)
    for k, img in enumerate(images):
        h, w = img.shape[:2]
        s = side / max(h, w)
        small = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        r, c = divmod(k, cols)
        grid[r * side:r * side + small.shape[0], c * side:c * side + small.shape[1]] = small
        if titles:
            cv2.putText(grid, titles[k][:40], (c * side + 4, r * side + side - 6), cv2.FONT_HERSHEY_SIMPLEX,
                        0.4, (255, 255, 255), 1, cv2.LINE_AA)
        cv2.rectangle(grid, (c * side, r * side), ((c + 1) * side - 1, (r + 1) * side - 1), (255, 255, 255), 1)
    return grid


def _write_png(img: np.ndarray, png_path: str | Path) -> Path:
    from .io import atomic_write

    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise OSError(f"{png_path}: cannot encode PNG")
    with atomic_write(png_path) as f:
        f.write(buf.tobytes())
    return png_path


def plot_batch(images: np.ndarray, targets: np.ndarray, names: Sequence[str] | None, png_path: str | Path,
               max_images: int = 16) -> Path:
    """An augmented training batch with its labels drawn: ``images`` [B, 3, H, W] RGB 0..1 (float)
    or uint8, ``targets`` [M, 6] rows image index, class, cx, cy, w, h (normalised)."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
    targets = np.asarray(targets, np.float64).reshape(-1, 6)
    drawn = []
    for b in range(min(len(images), max_images)):
        img = np.ascontiguousarray(images[b].transpose(1, 2, 0)[:, :, ::-1])  # RGB CHW -> BGR HWC
        h, w = img.shape[:2]
        t = targets[targets[:, 0] == b]
        boxes = np.zeros((len(t), 5))
        boxes[:, 0], boxes[:, 2] = (t[:, 2] - t[:, 4] / 2) * w, (t[:, 2] + t[:, 4] / 2) * w
        boxes[:, 1], boxes[:, 3] = (t[:, 3] - t[:, 5] / 2) * h, (t[:, 3] + t[:, 5] / 2) * h
        boxes[:, 4] = t[:, 1]
        drawn.append(draw_truth(img, boxes, names))
    return _write_png(mosaic(drawn, side=max(images.shape[2:]) if len(images) else 320), png_path)


def plot_predictions(images: Sequence[np.ndarray], truths: Sequence[np.ndarray], preds: Sequence[np.ndarray],
                     names: Sequence[str] | None, png_path: str | Path, titles: Sequence[str] | None = None
                     ) -> Path:
    """Validation images side by side: true boxes (left, [M, 5] x1 y1 x2 y2 class pixels) and the
    model's (right, [N, 6] x1 y1 x2 y2 score class), one row per image."""
    tiles, labels = [], []
    for k, (img, gt, det) in enumerate(zip(images, truths, preds)):
        gt = np.asarray(gt, np.float64).reshape(-1, 5)
        tiles.append(draw_truth(img, gt, names))
        det = np.asarray(det, np.float64).reshape(-1, 6)
        tiles.append(draw_detections(img.copy(), det, names) if len(det) else img.copy())
        name = titles[k] if titles else f"image {k}"
        labels += [f"{name}: truth ({len(gt)})", f"{name}: predicted ({len(det)})"]
    return _write_png(mosaic(tiles, labels, cols=2, side=480), png_path)


def match_detections(dets: np.ndarray, truth: np.ndarray, iou_thres: float = 0.5) -> list[tuple[int, int]]:
    """One image's confusion pairs ``(true class, predicted class)``; ``-1`` is background.

    ``dets`` [N, 6] x1 y1 x2 y2 score class (already above the confidence threshold), ``truth``
    [M, 5] x1 y1 x2 y2 class. Pairs of IoU > ``iou_thres`` are matched greedily, highest IoU first,
    each detection and each true box at most once, whatever the classes (so a matched pair of
    different classes is a confusion); unmatched true boxes are (class, -1) missed, unmatched
    detections (-1, class) false alarms.
    """
    dets = np.asarray(dets, np.float64).reshape(-1, 6)
    truth = np.asarray(truth, np.float64).reshape(-1, 5)
    pairs: list[tuple[int, int]] = []
    used_d, used_t = set(), set()
    if len(dets) and len(truth):
        iou = box_iou(truth[:, :4], dets[:, :4])
        ti, di = np.nonzero(iou > iou_thres)
        for k in np.argsort(-iou[ti, di], kind="stable"):
            t, d = int(ti[k]), int(di[k])
            if t not in used_t and d not in used_d:
                used_t.add(t)
                used_d.add(d)
                pairs.append((int(truth[t, 4]), int(dets[d, 5])))
    pairs += [(int(truth[t, 4]), -1) for t in range(len(truth)) if t not in used_t]
    pairs += [(-1, int(dets[d, 5])) for d in range(len(dets)) if d not in used_d]
    return pairs


def confusion_matrix(dets: Sequence[np.ndarray], truths: Sequence[np.ndarray], num_classes: int,
                     conf_thres: float = 0.25, iou_thres: float = 0.5) -> np.ndarray:
    """``[nc + 1, nc + 1]`` counts, rows the predicted class, columns the true class, the last
    row / column background (as ultralytics draws it); detections below ``conf_thres`` are ignored."""
    m = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    for det, gt in zip(dets, truths):
        det = np.asarray(det, np.float64).reshape(-1, 6)
        for t, p in match_detections(det[det[:, 4] >= conf_thres], gt, iou_thres):
            m[p if p >= 0 else num_classes, t if t >= 0 else num_classes] += 1
    return m


def plot_confusion(matrix: np.ndarray, names: Sequence[str], png_path: str | Path, max_classes: int = 30) -> Path:
    """The confusion matrix, each true-class column normalised (background row/column last); with
    more than ``max_classes`` classes only the most frequent true classes are shown."""
    plt = _pyplot()
    nc = len(matrix) - 1
    keep = np.arange(nc)
    if nc > max_classes:
        keep = np.sort(np.argsort(-(matrix[:, :nc].sum(0) + matrix[:nc, :].sum(1)), kind="stable")[:max_classes])
    idx = np.append(keep, nc)
    sub = matrix[np.ix_(idx, idx)].astype(np.float64)
    norm = sub / np.maximum(sub.sum(0, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(12, 10))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    labels = [names[k] for k in keep] + ["background"]
    ax.set_xticks(range(len(idx)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(idx)), labels, fontsize=7)
    if len(idx) <= 31:
        for i in range(len(idx)):
            for j in range(len(idx)):
                if sub[i, j]:
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=5,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set(xlabel="true class", ylabel="predicted class",
           title="confusion matrix (columns normalised)" + (f", {len(keep)} of {nc} classes" if nc > len(keep) else ""))
    fig.colorbar(im, ax=ax, fraction=0.04)
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    _save(fig, png_path)
    return png_path


def prf1_curves(dets: Sequence[np.ndarray], truths: Sequence[np.ndarray], num_classes: int,
                iou_thres: float = 0.5, steps: int = 101) -> dict[str, np.ndarray]:
    """Precision, recall and F1 of every class against the confidence threshold: ``conf`` [steps],
    ``p``/``r``/``f1`` [nc, steps], ``gt`` [nc]. A detection is a true positive when it matches a
    true box of its class (IoU > ``iou_thres``, highest score first, each box once)."""
    scores, tp, cls = [], [], []
    gt_count = np.zeros(num_classes, np.int64)
    for det, gt in zip(dets, truths):
        det = np.asarray(det, np.float64).reshape(-1, 6)
        gt = np.asarray(gt, np.float64).reshape(-1, 5)
        gt_count += np.bincount(gt[:, 4].astype(int), minlength=num_classes)[:num_classes]
        order = np.argsort(-det[:, 4], kind="stable")
        det = det[order]
        iou = box_iou(det[:, :4], gt[:, :4]) if len(det) and len(gt) else np.zeros((len(det), len(gt)))
        taken = np.zeros(len(gt), bool)
        for k in range(len(det)):
            ok = (gt[:, 4] == det[k, 5]) & ~taken & (iou[k] > iou_thres)
            hit = bool(ok.any())
            if hit:
                taken[np.argmax(np.where(ok, iou[k], -1))] = True
            scores.append(det[k, 4])
            tp.append(hit)
            cls.append(int(det[k, 5]))
    conf = np.linspace(0, 1, steps)
    scores, tp, cls = np.asarray(scores), np.asarray(tp, bool), np.asarray(cls, np.int64)
    p = np.zeros((num_classes, steps))
    r = np.zeros((num_classes, steps))
    for c in range(num_classes):
        s, t = scores[cls == c], tp[cls == c]
        above = s[None, :] >= conf[:, None]  # [steps, n]
        n_det = above.sum(1)
        n_tp = (above & t[None, :]).sum(1)
        p[c] = np.where(n_det > 0, n_tp / np.maximum(n_det, 1), 1.0)
        r[c] = n_tp / max(gt_count[c], 1)
    f1 = 2 * p * r / np.maximum(p + r, 1e-16)
    return {"conf": conf, "p": p, "r": r, "f1": f1, "gt": gt_count}


def plot_prf1(curves: dict[str, np.ndarray], names: Sequence[str], out_dir: str | Path) -> list[Path]:
    """``P_curve.png``, ``R_curve.png``, ``F1_curve.png``: each class with truth (thin grey) and the
    mean over those classes (bold, its best value and threshold in the legend)."""
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    has = np.nonzero(curves["gt"] > 0)[0]
    paths = []
    for key, title in (("p", "Precision"), ("r", "Recall"), ("f1", "F1")):
        fig, ax = plt.subplots(figsize=(8, 6))
        for c in has:
            ax.plot(curves["conf"], curves[key][c], lw=0.6, alpha=0.35, color="tab:gray")
        if len(has):
            mean = curves[key][has].mean(0)
            best = int(np.argmax(mean)) if key != "r" else 0
            ax.plot(curves["conf"], mean, lw=2.5, color="tab:blue",
                    label=f"mean of {len(has)} classes: {mean[best]:.3f} at conf {curves['conf'][best]:.2f}")
            ax.legend(loc="lower left" if key == "p" else "upper right", fontsize=8)
        ax.set(xlabel="confidence threshold", ylabel=title.lower(), xlim=(0, 1), ylim=(0, 1.01),
               title=f"{title} against the confidence threshold (IoU 0.5)")
        ax.grid(alpha=0.3)
        path = out / f"{title.replace('Precision', 'P').replace('Recall', 'R')}_curve.png"
        _save(fig, path)
        paths.append(path)
    return paths


def truth_boxes(rec, hw: tuple[int, int]) -> np.ndarray:
    """A record's scored truth (crowd and difficult left out) as ``[M, 5]`` x1 y1 x2 y2 class pixels."""
    from .boxes import box_convert, denormalize_boxes

    keep = ~(np.asarray(rec.crowd, bool) | np.asarray(rec.difficult, bool))
    lab = np.asarray(rec.labels, np.float64)[keep].reshape(-1, 5)
    out = np.empty((len(lab), 5))
    out[:, :4] = box_convert(denormalize_boxes(lab[:, 1:5], hw[1], hw[0]), "cxcywh", "xyxy")
    out[:, 4] = lab[:, 0]
    return out


def predictions_picture(predictions: Sequence[tuple], names: Sequence[str], png_path: str | Path,
                        n: int = 4, conf_thres: float = 0.25) -> Path | None:
    """True and predicted boxes (score >= ``conf_thres``) on the first ``n`` readable images of
    ``predictions`` (what :func:`yolo.evaluate.evaluate` fills in)."""
    from .io import imread

    images, truths, preds, titles = [], [], [], []
    for rec, det, hw in predictions:
        img, _ = imread(rec.path)
        if img is None:
            continue
        images.append(img)
        truths.append(truth_boxes(rec, hw))
        preds.append(det[det[:, 4] >= conf_thres])
        titles.append(rec.path.name)
        if len(images) == n:
            break
    return plot_predictions(images, truths, preds, names, png_path, titles) if images else None


def eval_pictures(predictions: Sequence[tuple], names: Sequence[str], out_dir: str | Path,
                  conf_thres: float = 0.25, iou_thres: float = 0.5) -> list[Path]:
    """What ``test.py --plots`` and the end of training write: ``confusion_matrix.png`` (at
    ``conf_thres``), ``P_curve.png``, ``R_curve.png``, ``F1_curve.png``, ``val_pred.png``."""
    out = Path(out_dir)
    dets = [d for _, d, _ in predictions]
    truths = [truth_boxes(rec, hw) for rec, _, hw in predictions]
    paths = [plot_confusion(confusion_matrix(dets, truths, len(names), conf_thres, iou_thres), names,
                            out / "confusion_matrix.png")]
    paths += plot_prf1(prf1_curves(dets, truths, len(names), iou_thres), names, out)
    pic = predictions_picture(predictions, names, out / "val_pred.png", conf_thres=conf_thres)
    return paths + ([pic] if pic else [])
