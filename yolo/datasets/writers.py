"""Write records in each of the four forms (what ``python -m yolo.data convert`` does).

Every writer takes ``{split: DatasetInfo}`` (the splits share one class table) and an output
folder, links the images (symlinks; ``copy=True`` copies them) and returns the file to point
the tools at. Boxes and classes are kept exactly (pixel coordinates written with 4 decimals,
normalised ones with 6 as Darknet does); the flags each form can hold are kept:

* ``coco``: ``annotations/instances_<split>.json`` + ``<split>/``; crowd boxes keep
  ``iscrowd``, VOC ``difficult`` ones are written as ``iscrowd`` too (both are left out of the
  truth); COCO ``area`` is kept where the records carry it.
* ``voc``: ``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt``, ``classes.names``;
  crowd boxes become ``<difficult>1</difficult>`` (VOC's way of leaving a box out of the metric).
* ``darknet``: ``images/``, ``labels/``, ``<split>.txt``, ``classes.names``, ``dataset.data``;
  ``yolo``: ``images/<split>/``, ``labels/<split>/``, ``data.yaml``. YOLO label files cannot
  mark a box as crowd or difficult: those are dropped (Darknet's ``voc_label.py`` drops
  difficult boxes too), with one warning giving the count.

The split ``valid`` is written under VOC's and ultralytics' name ``val`` in those two forms.
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from ..boxes import box_convert, denormalize_boxes
from ..io import imread
from .records import DataError, DatasetInfo, DataWarning, ImageRecord

Splits = Mapping[str, DatasetInfo]


def _num(v: float) -> str:
    text = f"{v:.4f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _link(src: Path, dst: Path, copy: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    if copy:
        shutil.copy2(src, dst)
    else:
        os.symlink(src.resolve(), dst)


def image_size(rec: ImageRecord) -> tuple[int, int]:
    """``(width, height)`` of a record, read from the image when the record does not know it."""
    if rec.width is None or rec.height is None:
        img, reason = imread(rec.path)
        if img is None:
            raise DataError(f"{rec.path}: {reason}: its size is needed to write pixel boxes")
        rec.height, rec.width = img.shape[:2]
    return int(rec.width), int(rec.height)


def pixel_boxes(rec: ImageRecord) -> np.ndarray:
    """The record's boxes as ``x1 y1 x2 y2`` pixels (float64)."""
    w, h = image_size(rec)
    return box_convert(denormalize_boxes(rec.labels[:, 1:5].astype(np.float64), w, h), "cxcywh", "xyxy")


def _file_names(splits: Splits) -> dict[tuple[str, int], str]:
    """A unique file name for each (split, record index): the image's own, prefixed on a clash."""
    used: dict[str, Path] = {}
    out = {}
    for split, info in splits.items():
        for n, rec in enumerate(info.records):
            name = rec.path.name
            if name in used and used[name] != rec.path.resolve():
                name = f"{split}_{n}_{name}"
            used[name] = rec.path.resolve()
            out[split, n] = name
    return out


def _check_names(splits: Splits) -> list[str]:
    if not splits:
        raise DataError("nothing to write: no split")
    names = next(iter(splits.values())).names
    for split, info in splits.items():
        if info.names != names:
            raise DataError(f"split '{split}' has other class names than the first split")
    return list(names)


def _dropped_warning(out: Path, crowd: int, difficult: int, form: str) -> None:
    for n, what in ((crowd, "crowd"), (difficult, "difficult")):
        if n:
            warnings.warn(f"{out}: {n} {what} box(es) dropped: {form} labels cannot mark {what}",
                          DataWarning, stacklevel=3)


def _label_text(rec: ImageRecord) -> tuple[str, int, int]:
    crowd, difficult = rec.crowd.astype(bool), rec.difficult.astype(bool)
    rows = rec.labels[~crowd & ~difficult]
    text = "".join(f"{int(r[0])} {r[1]:.6f} {r[2]:.6f} {r[3]:.6f} {r[4]:.6f}\n" for r in rows)
    return text, int(crowd.sum()), int((difficult & ~crowd).sum())


def _voc_split(split: str) -> str:
    return "val" if split == "valid" else split


# ---------------------------------------------------------------------------------------------
def write_darknet(splits: Splits, out: str | Path, copy: bool = False) -> Path:
    """Darknet form; returns ``dataset.data`` (one split: ``train`` and ``valid`` both name it)."""
    out = Path(out).resolve()
    names = _check_names(splits)
    files = _file_names(splits)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    crowd = difficult = 0
    keys = []
    for split, info in splits.items():
        lines = []
        for n, rec in enumerate(info.records):
            dst = out / "images" / files[split, n]
            _link(rec.path, dst, copy)
            text, c, d = _label_text(rec)
            crowd, difficult = crowd + c, difficult + d
            (out / "labels" / Path(files[split, n]).with_suffix(".txt")).write_text(text)
            lines.append(str(dst))
        (out / f"{split}.txt").write_text("".join(f"{line}\n" for line in lines))
        keys.append(split)
    entries = {k: k for k in keys}
    if len(keys) == 1:
        entries = {"train": keys[0], "valid": keys[0]}
    data = out / "dataset.data"
    (out / "classes.names").write_text("\n".join(names) + "\n")
    data.write_text(f"classes = {len(names)}\n" + "".join(f"{k} = {v}.txt\n" for k, v in entries.items())
                    + "names = classes.names\nbackup = backup/\n")
    _dropped_warning(out, crowd, difficult, "Darknet")
    return data


def write_yolo(splits: Splits, out: str | Path, copy: bool = False) -> Path:
    """YOLO folder form; returns ``data.yaml`` (one split: ``train`` and ``val`` both name it)."""
    out = Path(out).resolve()
    names = _check_names(splits)
    files = _file_names(splits)
    crowd = difficult = 0
    for split, info in splits.items():
        sub = _voc_split(split)
        (out / "labels" / sub).mkdir(parents=True, exist_ok=True)
        for n, rec in enumerate(info.records):
            _link(rec.path, out / "images" / sub / files[split, n], copy)
            text, c, d = _label_text(rec)
            crowd, difficult = crowd + c, difficult + d
            (out / "labels" / sub / Path(files[split, n]).with_suffix(".txt")).write_text(text)
    subs = [_voc_split(s) for s in splits]
    entries = {s: s for s in subs} if len(subs) > 1 else {"train": subs[0], "val": subs[0]}
    lines = ["path: .  # relative to this file"] + [f"{k}: images/{v}" for k, v in entries.items()]
    lines.append("names:")
    lines += [f"  {i}: {json.dumps(n)}" for i, n in enumerate(names)]
    yaml_path = out / "data.yaml"
    yaml_path.write_text("\n".join(lines) + "\n")
    _dropped_warning(out, crowd, difficult, "YOLO")
    return yaml_path


def write_coco(splits: Splits, out: str | Path, copy: bool = False) -> Path:
    """COCO form; returns the json of the first split (``annotations/instances_<split>.json``)."""
    out = Path(out).resolve()
    names = _check_names(splits)
    files = _file_names(splits)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    first = None
    for split, info in splits.items():
        cats = [{"id": int(c), "name": n, "supercategory": ""} for c, n in zip(info.category_ids, names)]
        ids = [int(r.image_id) for r in info.records]
        if len(set(ids)) != len(ids):
            ids = list(range(1, len(ids) + 1))
        images, anns = [], []
        for n, (rec, image_id) in enumerate(zip(info.records, ids)):
            _link(rec.path, out / split / files[split, n], copy)
            w, h = image_size(rec)
            images.append({"id": image_id, "file_name": files[split, n], "width": w, "height": h})
            xyxy = pixel_boxes(rec)
            excluded = rec.crowd.astype(bool) | rec.difficult.astype(bool)
            for k in range(len(rec.labels)):
                x1, y1, x2, y2 = (float(v) for v in xyxy[k])
                bw, bh = float(_num(x2 - x1)), float(_num(y2 - y1))
                area = float(rec.areas[k]) if rec.areas is not None else bw * bh
                anns.append({"id": len(anns) + 1, "image_id": image_id,
                             "category_id": int(info.category_ids[int(rec.labels[k, 0])]),
                             "bbox": [float(_num(x1)), float(_num(y1)), bw, bh], "area": area,
                             "iscrowd": int(excluded[k]), "segmentation": []})
        path = out / "annotations" / f"instances_{split}.json"
        path.write_text(json.dumps({"info": {"description": f"converted from {info.source}"},
                                    "images": images, "annotations": anns, "categories": cats}))
        first = first or path
    assert first is not None
    return first


def write_voc(splits: Splits, out: str | Path, copy: bool = False) -> Path:
    """Pascal VOC form; returns the dataset folder (``Annotations``, ``JPEGImages``, ``ImageSets/Main``)."""
    out = Path(out).resolve()
    names = _check_names(splits)
    files = _file_names(splits)
    (out / "Annotations").mkdir(parents=True, exist_ok=True)
    (out / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for split, info in splits.items():
        stems = []
        for n, rec in enumerate(info.records):
            name = files[split, n]
            _link(rec.path, out / "JPEGImages" / name, copy)
            w, h = image_size(rec)
            root = ET.Element("annotation")
            ET.SubElement(root, "folder").text = "JPEGImages"
            ET.SubElement(root, "filename").text = name
            size = ET.SubElement(root, "size")
            for tag, v in (("width", w), ("height", h), ("depth", 3)):
                ET.SubElement(size, tag).text = str(v)
            excluded = rec.crowd.astype(bool) | rec.difficult.astype(bool)
            for k, (x1, y1, x2, y2) in enumerate(pixel_boxes(rec)):
                obj = ET.SubElement(root, "object")
                ET.SubElement(obj, "name").text = names[int(rec.labels[k, 0])]
                ET.SubElement(obj, "difficult").text = str(int(excluded[k]))
                box = ET.SubElement(obj, "bndbox")
                for tag, v in (("xmin", x1), ("ymin", y1), ("xmax", x2), ("ymax", y2)):
                    ET.SubElement(box, tag).text = _num(v + 1)  # VOC counts pixels from 1 (see voc.py)
            ET.indent(root)
            ET.ElementTree(root).write(out / "Annotations" / f"{Path(name).stem}.xml", encoding="unicode")
            stems.append(Path(name).stem)
        (out / "ImageSets" / "Main" / f"{_voc_split(split)}.txt").write_text("".join(f"{s}\n" for s in stems))
    (out / "classes.names").write_text("\n".join(names) + "\n")
    return out


WRITERS: dict[str, Callable[..., Path]] = {"darknet": write_darknet, "coco": write_coco, "yolo": write_yolo,
                                           "voc": write_voc}


def write_dataset(splits: Splits, form: str, out: str | Path, copy: bool = False) -> Path:
    """Write ``splits`` in ``form`` (darknet, coco, yolo, voc) under ``out``; the path to point the tools at."""
    if form not in WRITERS:
        raise DataError(f"unknown dataset form '{form}': one of {', '.join(WRITERS)}")
    return WRITERS[form](splits, out, copy)
