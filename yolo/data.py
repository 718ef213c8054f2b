"""``python -m yolo.data convert|check``: bring any dataset, and look at it before training on it.

``convert SRC --to darknet|coco|yolo|voc OUT`` reads every split of ``SRC`` (any registered
format: a Darknet ``.data``, a COCO json, a Pascal VOC folder, a YOLO ``data.yaml``, an image
list with ``--names``) and writes it in the other form (:mod:`yolo.datasets.writers`: images
linked, or copied with ``--copy``); boxes and classes survive a round trip, flags where the
form can hold them.

``check DATA [--cfg C]`` prints images and boxes per split and per class, the problems found
(missing or empty label files, boxes outside the image, zero-area boxes, duplicate boxes,
classes out of range, unreadable images, and whatever the reader skipped), the box size
distribution, how well the cfg's anchors fit the boxes (Darknet's avg IoU, as ``yolo.anchors``
prints it, beside the k-means anchors' own) and writes ``labels.png`` (class histogram, box
centres, box sizes). Exit code 0; 1 with ``--strict`` when a problem was found; 2 when the
dataset cannot be read at all.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .datasets import DatasetInfo, dataset_splits, format_for, label_path_for, load_dataset
from .io import imread, read_names

#: COCO's area ranges (pixels of the original image)
SMALL, MEDIUM = 32 ** 2, 96 ** 2
EDGE = 1e-3  # a box edge this far outside the image (normalised) is "outside"


def read_splits(src: str | Path, images: str | Path | None = None, names: Sequence[str] | None = None,
                splits: Sequence[str] | None = None) -> dict[str, DatasetInfo]:
    """Every split of a dataset (a one-split format: ``{"valid": ...}``), warnings recorded in each
    split's ``problems``."""
    src = Path(src)
    found = list(splits or dataset_splits(src) or ("valid",))
    out = {}
    for split in found:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # each is in info.problems
            out[split] = load_dataset(src, images, split=split, names=list(names) if names else None)
    return out


def convert(src: str | Path, form: str, out: str | Path, images: str | Path | None = None,
            names: Sequence[str] | None = None, splits: Sequence[str] | None = None, copy: bool = False) -> Path:
    """Read every split of ``src`` and write it as ``form`` under ``out``; the path to point the tools at."""
    from .datasets.writers import write_dataset

    return write_dataset(read_splits(src, images, names, splits), form, out, copy)


# ---------------------------------------------------------------------------------------------
# check
# ---------------------------------------------------------------------------------------------
def _scan_label_file(path: Path, num_classes: int, found: Counter, examples: dict[str, list[str]]) -> None:
    """Sort a label file's bad lines into the check's kinds (the reader calls them all 'bad label line')."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return  # the reader named it
    if not text.strip():
        _found(found, examples, "empty label file", f"{path}: empty (the image is used as background)")
        return
    for lineno, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split()
        if len(fields) != 5:
            continue
        try:
            cls, _, _, w, h = (float(v) for v in fields)
        except ValueError:
            continue
        if cls != int(cls) or not 0 <= cls < num_classes:
            _found(found, examples, "class out of range", f"{path}:{lineno}: class {fields[0]} not in "
                                                          f"0..{num_classes - 1}")
        elif w <= 0 or h <= 0:
            _found(found, examples, "zero area", f"{path}:{lineno}: box w {fields[3]} h {fields[4]}")


def _found(found: Counter, examples: dict[str, list[str]], kind: str, message: str) -> None:
    found[kind] += 1
    if len(examples.setdefault(kind, [])) < 5:
        examples[kind].append(message)


def check_split(info: DatasetInfo, read_images: bool = True) -> dict[str, Any]:
    """One split's figures and problems (see the module docstring)."""
    found: Counter = Counter()
    examples: dict[str, list[str]] = {}
    for kind, n in info.problems.counts.items():
        if kind != "bad label line":  # re-sorted by kind below
            found[kind] += n
    bad_lines = [m for m in info.problems.messages if ": expected " in m]
    n_bad_format = info.problems.counts.get("bad label line", 0)
    boxes_per_class = np.zeros(info.num_classes, np.int64)
    images_per_class = np.zeros(info.num_classes, np.int64)
    sizes = Counter()
    labels_all, fit_all, pixel_wh = [], [], []
    empty_images = 0
    for rec in info.records:
        label_file = label_path_for(rec.path)
        if label_file.is_file() and label_file.suffix == ".txt":
            _scan_label_file(label_file, info.num_classes, found, examples)
        w, h = rec.width, rec.height
        if read_images:
            img, reason = imread(rec.path)
            if img is None:
                _found(found, examples, "unreadable image", f"{rec.path}: {reason}")
                continue
            h, w = img.shape[:2]
        lab = rec.labels.astype(np.float64)
        if not len(lab):
            empty_images += 1
        where = label_file if label_file.is_file() else rec.path
        x1, x2 = lab[:, 1] - lab[:, 3] / 2, lab[:, 1] + lab[:, 3] / 2
        y1, y2 = lab[:, 2] - lab[:, 4] / 2, lab[:, 2] + lab[:, 4] / 2
        for k in np.nonzero((x1 < -EDGE) | (y1 < -EDGE) | (x2 > 1 + EDGE) | (y2 > 1 + EDGE))[0]:
            _found(found, examples, "box outside the image",
                   f"{where}: box {k + 1} ({info.names[int(lab[k, 0])]}) spans x {x1[k]:.3f}..{x2[k]:.3f}, "
                   f"y {y1[k]:.3f}..{y2[k]:.3f} of the image")
        _, first, counts = np.unique(np.round(lab, 6), axis=0, return_index=True, return_counts=True)
        for k, n in zip(first, counts):
            if n > 1:
                for _ in range(n - 1):
                    _found(found, examples, "duplicate box", f"{where}: box {k + 1} ({info.names[int(lab[k, 0])]}) "
                                                              f"appears {n} times")
        cls = lab[:, 0].astype(int)
        boxes_per_class += np.bincount(cls, minlength=info.num_classes)[:info.num_classes]
        images_per_class += np.bincount(np.unique(cls), minlength=info.num_classes)[:info.num_classes] > 0
        labels_all.append(lab)
        fit_all.append(lab[~(rec.crowd.astype(bool) | rec.difficult.astype(bool))])
        if w and h:
            wh = lab[:, 3:5] * [w, h]
            pixel_wh.append(wh)
            area = wh[:, 0] * wh[:, 1]
            sizes.update({"small": int((area < SMALL).sum()), "medium": int(((area >= SMALL) & (area < MEDIUM)).sum()),
                          "large": int((area >= MEDIUM).sum())})
    other_bad = n_bad_format - found["class out of range"] - found["zero area"]
    if other_bad > 0:
        found["bad label line"] += other_bad
        examples["bad label line"] = bad_lines[:5]
    labels = np.concatenate(labels_all) if labels_all else np.zeros((0, 5))
    wh = np.concatenate(pixel_wh) if pixel_wh else np.zeros((0, 2))
    pct = (5, 25, 50, 75, 95)
    return {
        "source": info.source, "images": len(info.records), "boxes": int(len(labels)),
        "background_images": empty_images,
        "per_class": {n: {"boxes": int(b), "images": int(i)} for n, b, i in
                      zip(info.names, boxes_per_class, images_per_class)},
        "problems": {k: int(v) for k, v in sorted(found.items()) if v},
        "examples": {k: v for k, v in sorted(examples.items()) if found.get(k)},
        "reader_messages": [m for m in info.problems.messages if ": expected " not in m][:10],
        "sizes": dict(sizes),
        "box_w_percentiles": dict(zip(map(str, pct), np.percentile(labels[:, 3], pct).round(4).tolist()))
        if len(labels) else {},
        "box_h_percentiles": dict(zip(map(str, pct), np.percentile(labels[:, 4], pct).round(4).tolist()))
        if len(labels) else {},
        "box_px_percentiles": dict(zip(map(str, pct), np.percentile(np.sqrt(wh.prod(1)), pct).round(1).tolist()))
        if len(wh) else {},
        "_labels": labels,
        "_fit": np.concatenate(fit_all) if fit_all else np.zeros((0, 5)),  # crowd, difficult left out
    }


def anchor_fit(labels: np.ndarray, cfg: str | Path, seed: int = 0) -> dict[str, Any]:
    """Darknet's avg IoU of the cfg's anchors on the boxes at the cfg's input size, and that of
    k-means anchors (as many, ``yolo.anchors``' algorithm) for comparison."""
    from .anchors import avg_iou, cfg_anchors, kmeans_anchors
    from .cfg import parse_cfg_text, resolve_cfg

    path = resolve_cfg(str(cfg))
    text = path.read_text()
    net = parse_cfg_text(text, str(path))[0]
    size = (net.int("width", 416), net.int("height", 416))
    _, current = cfg_anchors(text, str(path))
    wh = labels[:, 3:5] * np.array(size, np.float64)
    wh = wh[(wh > 0).all(1)]
    out: dict[str, Any] = {"cfg": str(path), "width": size[0], "height": size[1], "anchors": len(current),
                           "boxes": int(len(wh))}
    if len(wh):
        out["avg_iou"] = float(avg_iou(wh, np.array(current, np.float64)))
        if len(wh) >= len(current):
            out["kmeans_avg_iou"] = float(kmeans_anchors(wh, len(current), seed, restarts=3)[1])
    return out


def check(data: str | Path, images: str | Path | None = None, names: Sequence[str] | None = None,
          cfg: str | Path | None = None, out: str | Path | None = ".", read_images: bool = True) -> dict[str, Any]:
    """The whole check of a dataset: ``{"format", "splits": {split: check_split}, "anchors", "plot"}``."""
    from .plots_train import plot_labels

    fmt = format_for(data).name
    splits = read_splits(data, images, names)
    report: dict[str, Any] = {"data": str(data), "format": fmt, "splits": {}}
    for split, info in splits.items():
        report["splits"][split] = check_split(info, read_images)
    first = next(iter(splits.values()))
    main_split = "train" if "train" in splits else next(iter(splits))
    labels = report["splits"][main_split]["_labels"]
    report["names"] = list(first.names)
    if cfg is not None:
        report["anchors"] = anchor_fit(report["splits"][main_split]["_fit"], cfg)
        report["anchors"]["split"] = main_split
    if out is not None:
        report["plot"] = str(plot_labels(labels, first.names, Path(out) / "labels.png"))
    for r in report["splits"].values():
        r.pop("_labels")
        r.pop("_fit")
    return report


def format_check(report: dict[str, Any]) -> str:
    lines = [f"{report['data']}: {report['format']} format, {len(report['names'])} classes"]
    for split, r in report["splits"].items():
        lines.append(f"\n[{split}] {r['images']} images, {r['boxes']} boxes, {r['background_images']} images "
                     f"without boxes ({r['source']})")
        width = max([len(n) for n in r["per_class"]] + [5])
        lines.append(f"  {'class':<{width}} {'images':>7} {'boxes':>7}")
        for name, c in r["per_class"].items():
            if c["boxes"]:
                lines.append(f"  {name:<{width}} {c['images']:>7} {c['boxes']:>7}")
        absent = [n for n, c in r["per_class"].items() if not c["boxes"]]
        if absent:
            more = f" (+{len(absent) - 20})" if len(absent) > 20 else ""
            lines.append(f"  no boxes: {', '.join(absent[:20])}{more}")
        s = r["sizes"]
        if s:
            lines.append(f"  box sizes (COCO areas of the original image): {s.get('small', 0)} small < 32^2 px, "
                         f"{s.get('medium', 0)} medium, {s.get('large', 0)} large >= 96^2 px")
        if r["box_px_percentiles"]:
            p = r["box_px_percentiles"]
            lines.append("  sqrt(box area) px, percentiles 5/25/50/75/95: " + " / ".join(f"{v:g}" for v in p.values()))
            lines.append("  box w, h (of the image), median: "
                         f"{r['box_w_percentiles']['50']:.3f}, {r['box_h_percentiles']['50']:.3f}")
        if r["problems"]:
            lines.append("  problems: " + ", ".join(f"{n} {k}" for k, n in r["problems"].items()))
            for kind, msgs in r["examples"].items():
                for m in msgs[:3]:
                    lines.append(f"    {kind}: {m}")
            for m in r["reader_messages"][:5]:
                lines.append(f"    read: {m}")
        else:
            lines.append("  problems: none")
    a = report.get("anchors")
    if a:
        fit = f"avg IoU = {100 * a['avg_iou']:.2f} %" if "avg_iou" in a else "no boxes"
        km = f"; k-means anchors ({a['anchors']}): avg IoU = {100 * a['kmeans_avg_iou']:.2f} %" \
            if "kmeans_avg_iou" in a else ""
        lines.append(f"\nanchors of {Path(a['cfg']).name} ({a['anchors']}, at {a['width']}x{a['height']}) on the "
                     f"{a['boxes']} '{a['split']}' boxes (no crowd, difficult): {fit}{km}")
    if report.get("plot"):
        lines.append(f"labels overview written to {report['plot']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
def get_args_parser() -> argparse.ArgumentParser:
    from .cli.common import ArgumentParser

    p = ArgumentParser(prog="python -m yolo.data", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="write a dataset in another form")
    c.add_argument("src", help="a .data file, COCO json, VOC folder, data.yaml, or image list (--names)")
    c.add_argument("--to", required=True, choices=("darknet", "coco", "yolo", "voc"), help="the form to write")
    c.add_argument("out", help="output folder")
    c.add_argument("--split", action="append", default=None, help="only this split (repeatable; default: all)")
    c.add_argument("--copy", action="store_true", help="copy the images (default: symlinks)")
    k = sub.add_parser("check", help="figures and problems of a dataset, labels.png")
    k.add_argument("data", help="a .data file, COCO json, VOC folder, data.yaml, or image list (--names)")
    k.add_argument("--cfg", default=None, help="a cfg whose anchors are fitted to the boxes")
    k.add_argument("--out", default=".", help="folder for labels.png")
    k.add_argument("--json", default=None, metavar="FILE", help="write the report as json")
    k.add_argument("--no-images", action="store_true", help="do not read the images (faster; no unreadable check)")
    k.add_argument("--strict", action="store_true", help="exit code 1 when a problem was found")
    for q in (c, k):
        q.add_argument("--images", default=None, help="image folder of a COCO json")
        q.add_argument("--names", default=None, help="class names file (an image list has none)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from .cli.common import user_errors

    @user_errors()
    def run(argv: Sequence[str] | None) -> int:
        args = get_args_parser().parse_args(argv)
        names = read_names(args.names) if args.names else None
        if args.command == "convert":
            path = convert(args.src, args.to, args.out, args.images, names, args.split, args.copy)
            print(f"{args.src} written as {args.to}: {path}")
            return 0
        report = check(args.data, args.images, names, args.cfg, args.out, not args.no_images)
        print(format_check(report))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))
        return 1 if args.strict and any(r["problems"] for r in report["splits"].values()) else 0

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
