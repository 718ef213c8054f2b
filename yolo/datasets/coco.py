"""The COCO form: an instances json (images, annotations, categories) + its image folder.

Crowd boxes are kept and flagged (the metric leaves them out of the truth); boxes are stored
as normalised ``class cx cy w h`` like every other format's, with COCO's ``area`` beside them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..boxes import box_convert, normalize_boxes
from .records import DataError, DatasetInfo, ImageRecord, Problems
from .registry import DatasetFormat, register_format


def load_coco(ann_file: str | Path, images: str | Path | None = None) -> DatasetInfo:
    """A COCO instances json + its image folder -> records (crowd boxes kept, flagged)."""
    ann_file = Path(ann_file)
    problems = Problems()
    try:
        data = json.loads(ann_file.read_text())
    except OSError as e:
        raise DataError(f"cannot read annotation file '{ann_file}': {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{ann_file}:{e.lineno}: not valid json ({e.msg})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{ann_file}: not a COCO instances file (no '{key}' list)")
    if images is None:
        images = _default_image_dir(ann_file)
    image_dir = Path(images)
    if not image_dir.is_dir():
        raise DataError(f"image folder not found: '{image_dir}' (for {ann_file}; pass --images DIR)")
    try:
        cats = sorted(data["categories"], key=lambda c: int(c["id"]))
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{ann_file}: a category without a usable 'id' ({type(e).__name__}: {e}); "
                        "every category needs an integer id") from None
    category_ids = [int(c["id"]) for c in cats]
    names = [str(c.get("name", c["id"])) for c in cats]
    by_image = _annotations_by_image(data["annotations"], {cid: i for i, cid in enumerate(category_ids)},
                                     ann_file, problems)
    records: list[ImageRecord] = []
    for img in data["images"]:
        try:
            image_id, file_name = int(img["id"]), str(img["file_name"])
            width, height = int(img["width"]), int(img["height"])
            if width < 1 or height < 1:
                raise ValueError(f"width {width}, height {height}")
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            problems.add("bad image entry", f"{ann_file}: image entry {img!r:.80}: unusable "
                                            f"({type(e).__name__}: {e}); skipped")
            continue
        path = image_dir / file_name
        if not path.is_file():
            problems.add("missing image", f"{ann_file}: image id {image_id}: file not found: '{path}'; skipped")
            continue
        anns = [a for a in by_image.get(image_id, []) if a["box"][2] > 0 and a["box"][3] > 0]
        if len(anns) != len(by_image.get(image_id, [])):
            problems.add("bad annotation", f"{ann_file}: image id {image_id}: box with w or h <= 0 skipped")
        boxes = np.array([a["box"] for a in anns], np.float64).reshape(-1, 4)
        labels = np.zeros((len(anns), 5), np.float32)
        if len(anns):
            labels[:, 0] = [a["cls"] for a in anns]
            labels[:, 1:5] = normalize_boxes(box_convert(boxes, "xywh", "cxcywh"), width, height)
        records.append(ImageRecord(path, image_id, labels, np.array([a["crowd"] for a in anns], bool),
                                   width, height, np.array([a["area"] for a in anns], np.float32)))
    return DatasetInfo(records, names, category_ids, f"{ann_file} + {image_dir}", problems)


def _annotations_by_image(annotations: list[Any], cls_of: dict[Any, int], ann_file: Path,
                          problems: Problems) -> dict[int, list[dict[str, Any]]]:
    """Usable annotations grouped by image id; each unusable one is named and skipped."""
    by_image: dict[int, list[dict[str, Any]]] = {}
    for n, a in enumerate(annotations):
        try:
            x, y, w, h = (float(v) for v in a["bbox"])
            if not np.isfinite([x, y, w, h]).all():
                raise ValueError(f"bbox {a['bbox']}")
            cls = cls_of[a["category_id"]]
            by_image.setdefault(int(a["image_id"]), []).append(
                {"box": (x, y, w, h), "cls": cls, "crowd": bool(a.get("iscrowd", 0)),
                 "area": float(a.get("area", w * h)), "id": a.get("id", n)})
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            ann_id = a.get('id', '?') if isinstance(a, dict) else '?'
            problems.add("bad annotation", f"{ann_file}: annotation #{n} (id {ann_id}): "
                                           f"unusable ({type(e).__name__}: {e}); skipped")
    return by_image


def _default_image_dir(ann_file: Path) -> Path:
    """COCO layout: ``annotations/instances_val2017.json`` -> ``../val2017``."""
    stem = ann_file.stem.split("_", 1)[-1]
    for candidate in (ann_file.parent.parent / stem, ann_file.parent / stem, ann_file.parent / "images"):
        if candidate.is_dir():
            return candidate
    raise DataError(f"{ann_file}: no image folder given and none found beside it; pass --images DIR")


@register_format("coco")
class CocoInstances(DatasetFormat):
    """A COCO instances ``.json``; the image folder is ``images`` or found by COCO's layout."""

    describe = "a COCO instances .json (+ --images DIR)"

    def recognises(self, path: Path) -> bool:
        return path.suffix == ".json"

    def read(self, path: Path, images: Path | None = None, split: str = "valid",
             names: Sequence[str] | None = None) -> DatasetInfo:
        return load_coco(path, images)
