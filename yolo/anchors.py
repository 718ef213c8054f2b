"""Darknet's ``detector calc_anchors``: k-means anchors for a dataset, 1 - IoU distance.

    python -m yolo.anchors --data D [--images DIR] --num 9 --img-size N | H W
                           [--cfg C --out-cfg C2] [--seed S] [--restarts R]

As Darknet: every (non-crowd) ground-truth box's (w, h) is scaled to the network input
(``w * W``, ``h * H`` from the normalised labels); boxes are compared centred on each other,
so IoU(box, anchor) = min(w) min(h) / (w h + aw ah - min(w) min(h)); k-means assigns each box
to the anchor of highest IoU (distance 1 - IoU) and moves each anchor to the mean (w, h) of
its boxes; anchors are sorted by area; avg IoU is the mean over all boxes of the best IoU
with any anchor (Darknet prints it in %). Unlike Darknet (random data points, clock-seeded)
the start is k-means++ from a fixed ``--seed``, and ``--restarts`` runs keep the one with
the best avg IoU, so a run is reproducible and at least as good.

With ``--cfg`` the avg IoU of the cfg's current anchors is printed beside the new one; with
``--out-cfg`` a copy of the cfg is written with the new anchors in every [yolo] section
(masks and every other line unchanged).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from .boxes import wh_iou
from .cli.common import ArgumentParser, add_img_size_arg, parse_img_size, user_errors
from .errors import YoloError

PROGRESS_MIN_BOXES = 20000  # show a progress bar from this many boxes on


class AnchorError(YoloError):
    """Input that k-means cannot work on (no boxes, fewer boxes than anchors, bad sizes)."""


def avg_iou(boxes: np.ndarray, anchors: np.ndarray) -> float:
    """Darknet's avg IoU: mean over boxes of the best IoU with any anchor (0..1)."""
    return float(wh_iou(boxes, np.asarray(anchors, np.float64)).max(1).mean())


def sort_by_area(anchors: np.ndarray) -> np.ndarray:
    anchors = np.asarray(anchors, np.float64)
    return anchors[np.argsort(anchors[:, 0] * anchors[:, 1], kind="stable")]


def _kmeans_pp(boxes: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ start: each next centre drawn with probability ~ (1 - best IoU)^2."""
    n = len(boxes)
    centres = [boxes[rng.integers(n)]]
    best = wh_iou(boxes, np.asarray(centres)).max(1)
    for _ in range(1, k):
        d2 = (1.0 - best) ** 2
        total = d2.sum()
        i = rng.integers(n) if total <= 0 else rng.choice(n, p=d2 / total)
        centres.append(boxes[i])
        best = np.maximum(best, wh_iou(boxes, boxes[i:i + 1])[:, 0])
    return np.asarray(centres, np.float64)


def _lloyd(boxes: np.ndarray, centres: np.ndarray, max_iter: int, tol: float = 1e-2) -> np.ndarray:
    """Assign to the highest-IoU centre, move centres to their boxes' mean, until the
    assignment is stable or no centre moves by ``tol`` (input pixels) or more."""
    k = len(centres)
    assign = None
    boxes32 = boxes.astype(np.float32)  # float32: k-means on millions of boxes
    for _ in range(max_iter):
        iou = wh_iou(boxes32, centres.astype(np.float32))
        new = iou.argmax(1)
        if assign is not None and np.array_equal(new, assign):
            break
        assign = new
        counts = np.bincount(assign, minlength=k)
        sums = np.stack([np.bincount(assign, boxes[:, 0], k), np.bincount(assign, boxes[:, 1], k)], 1)
        empty = counts == 0
        old = centres
        centres = np.where(empty[:, None], centres, sums / np.maximum(counts, 1)[:, None])
        if empty.any():  # an empty cluster takes the worst-served boxes
            worst = np.argsort(iou.max(1))[:int(empty.sum())]
            centres[empty] = boxes[worst]
            assign = None
        elif np.abs(centres - old).max() < tol:  # long tails of sub-pixel moves on big datasets
            break
    return centres


def kmeans_anchors(boxes: np.ndarray, k: int, seed: int = 0, restarts: int = 10,
                   max_iter: int = 1000, progress: bool | None = None) -> tuple[np.ndarray, float]:
    """k-means (1 - IoU) anchors for (w, h) boxes [N, 2]; ``restarts`` k-means++ starts, the
    one of best avg IoU kept. Returns (anchors [k, 2] sorted by area, avg IoU 0..1)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 2)
    if k < 1:
        raise AnchorError(f"--num must be at least 1, got {k}")
    if restarts < 1:
        raise AnchorError(f"--restarts must be at least 1, got {restarts}")
    if len(boxes) == 0:
        raise AnchorError("no boxes to cluster: the dataset has no (non-crowd) ground-truth boxes")
    if not np.isfinite(boxes).all() or (boxes <= 0).any():
        raise AnchorError("every box needs a finite width and height > 0")
    distinct = len(np.unique(boxes, axis=0))
    if k > distinct:
        raise AnchorError(f"asked for {k} anchors but the dataset has only {len(boxes)} box(es) "
                          f"({distinct} distinct sizes): use --num {distinct} or fewer")
    rng = np.random.default_rng(seed)
    if progress is None:
        progress = len(boxes) >= PROGRESS_MIN_BOXES
    runs = range(restarts)
    if progress:
        from tqdm import tqdm
        runs = tqdm(runs, desc="k-means restarts", unit="run", file=sys.stderr)
    best, best_iou = None, -1.0
    for _ in runs:
        centres = _lloyd(boxes, _kmeans_pp(boxes, k, rng), max_iter)
        score = avg_iou(boxes, centres)
        if score > best_iou:
            best, best_iou = centres, score
    return sort_by_area(best), best_iou


def dataset_boxes(data: str | Path, images: str | Path | None = None, size: tuple[int, int] = (416, 416),
                  split: str | None = None) -> tuple[np.ndarray, dict[str, int]]:
    """Non-crowd boxes' (w, h) scaled to ``size`` = (W, H) -> ([N, 2], counts of what was dropped)."""
    from .datasets import DataError, dataset_splits, load_dataset

    path = Path(data)
    if split is None:
        try:
            split = "train" if "train" in dataset_splits(path) else "valid"
        except DataError:  # load_dataset below says what is wrong
            split = "valid"
    try:
        info = load_dataset(path, images, split=split)
    except DataError as e:
        raise AnchorError(str(e)) from None
    labels, crowd = [], []
    for r in info.records:
        labels.append(np.asarray(r.labels, np.float64).reshape(-1, 5))
        crowd.append(np.asarray(r.crowd, bool).reshape(-1))
    labels = np.concatenate(labels) if labels else np.zeros((0, 5))
    crowd = np.concatenate(crowd) if crowd else np.zeros(0, bool)
    wh = labels[:, 3:5] * np.array(size, np.float64)
    bad = ~(np.isfinite(wh).all(1) & (wh > 0).all(1))
    counts = {"images": len(info.records), "crowd": int(crowd.sum()),
              "zero size": int((bad & ~crowd).sum()), "boxes": int((~crowd & ~bad).sum())}
    return wh[~crowd & ~bad], counts


def cfg_anchors(cfg_text: str, where: str = "<cfg>") -> tuple[list, list[tuple[float, float]]]:
    """([yolo] sections, anchors of the first) of a cfg's text."""
    from .cfg import ConfigError, parse_cfg_text

    try:
        sections = [s for s in parse_cfg_text(cfg_text, where) if s.type == "yolo"]
    except ConfigError as e:
        raise AnchorError(str(e)) from None
    if not sections:
        raise AnchorError(f"{where}: no [yolo] section, so no anchors to compare or replace")
    flat = sections[0].floats("anchors")
    return sections, [(flat[i], flat[i + 1]) for i in range(0, len(flat) - 1, 2)]


def anchors_text(anchors: np.ndarray) -> str:
    """Darknet's printout: ``7,15, 27,14, ...`` (rounded to whole input pixels, at least 1)."""
    return ", ".join(f"{max(1, round(w))},{max(1, round(h))}" for w, h in anchors)


def _check_count(sections: list, k: int) -> None:
    for s in sections:
        n = len(s.floats("anchors")) // 2
        if n != k:
            raise AnchorError(f"{s.where('anchors')}: has {n} anchors but --num is {k}; use --num {n} "
                              "so that the masks stay valid")


def write_cfg(cfg_text: str, out: str | Path, anchors: np.ndarray, where: str = "<cfg>") -> int:
    """A copy of the cfg with ``anchors=`` replaced in every [yolo] section; returns sections edited."""
    from .deploy import edit_cfg_text
    from .io import atomic_write

    sections, _ = cfg_anchors(cfg_text, where)
    _check_count(sections, len(anchors))
    text = edit_cfg_text(cfg_text, {s.line: {"anchors": anchors_text(anchors)} for s in sections})
    with atomic_write(out, "w") as f:
        f.write(text)
    return len(sections)


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m yolo.anchors",
                       description="Darknet's calc_anchors: k-means (1 - IoU) anchors of a dataset's boxes "
                                   "at the network input size.")
    p.add_argument("--data", required=True, help="COCO instances .json or Darknet .data (its train list, "
                                                 "else valid)")
    p.add_argument("--images", help="image folder of a COCO json (default: found beside it)")
    p.add_argument("--split", help="key of a .data file to read (default: train if present, else valid)")
    p.add_argument("--num", type=int, default=9, help="number of anchors (default 9)")
    add_img_size_arg(p, "network input (default: the --cfg's [net] size)")
    p.add_argument("--cfg", help="cfg whose current anchors are compared (and copied with --out-cfg)")
    p.add_argument("--out-cfg", help="write a copy of --cfg with the new anchors in every [yolo]")
    p.add_argument("--seed", type=int, default=0, help="k-means++ seed (default 0)")
    p.add_argument("--restarts", type=int, default=10, help="k-means++ starts, best kept (default 10)")
    return p


@user_errors()
def main(argv: Sequence[str] | None = None) -> int:
    from .cfg import resolve_cfg

    args = get_args_parser().parse_args(argv)
    if args.out_cfg and not args.cfg:
        raise AnchorError("--out-cfg needs --cfg (the cfg to copy)")
    cfg_text = cfg_path = None
    if args.cfg:
        cfg_path = resolve_cfg(args.cfg)
        cfg_text = cfg_path.read_text()
    hw = parse_img_size(args.img_size)
    if hw is not None:
        size = (hw[1], hw[0])  # (width, height), as Darknet scales the boxes
    elif cfg_text is not None:
        from .cfg import parse_cfg_text
        net = parse_cfg_text(cfg_text, str(cfg_path))[0]
        size = (net.int("width", 416), net.int("height", 416))
    else:
        raise AnchorError("--img-size N (or H W) is needed (or --cfg, whose [net] size is used)")
    if min(size) < 1:
        raise AnchorError(f"the [net] size must be positive, got {size[0]}x{size[1]} (w x h)")

    if args.out_cfg:  # fail before the work, not after it
        sections, _ = cfg_anchors(cfg_text, str(cfg_path))
        _check_count(sections, args.num)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        boxes, counts = dataset_boxes(args.data, args.images, size, args.split)
    skipped = [w for w in caught if issubclass(w.category, UserWarning)]
    print(f"{counts['images']} images, {counts['boxes']} boxes used"
          f" ({counts['crowd']} crowd excluded"
          + (f", {counts['zero size']} with zero width/height skipped" if counts["zero size"] else "")
          + (f", {len(skipped)} dataset warning(s): e.g. {skipped[0].message}" if skipped else "") + ")")
    anchors, iou = kmeans_anchors(boxes, args.num, args.seed, args.restarts)
    print(f"num_of_clusters = {args.num}, width = {size[0]}, height = {size[1]}, seed = {args.seed}, "
          f"restarts = {args.restarts}")
    print(f"anchors = {anchors_text(anchors)}")
    print(f"avg IoU = {100 * iou:.2f} %")
    rounded = np.array([[max(1, round(w)), max(1, round(h))] for w, h in anchors], np.float64)
    print(f"avg IoU of the rounded anchors = {100 * avg_iou(boxes, rounded):.2f} %")
    if cfg_text is not None:
        _, current = cfg_anchors(cfg_text, str(cfg_path))
        print(f"{cfg_path.name}: current anchors = {anchors_text(np.array(current))}; "
              f"avg IoU = {100 * avg_iou(boxes, np.array(current)):.2f} %")
    if args.out_cfg:
        n = write_cfg(cfg_text, args.out_cfg, rounded, str(cfg_path))
        print(f"wrote {args.out_cfg}: new anchors in {n} [yolo] section(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
