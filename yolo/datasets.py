"""Datasets: Darknet lists + YOLO label files, or a COCO instances json + an image folder.

Both forms are read into the same records (normalised ``class cx cy w h`` labels per image),
so evaluation, training and the format converter see one thing.

Path rules (documented because Darknet itself is loose about them):

* paths inside a ``.data`` file are tried relative to the ``.data`` file's folder first,
  then relative to the current directory (Darknet's own convention), absolute paths as is;
* image paths inside a list file are tried relative to the list file's folder first, then
  relative to the current directory;
* the label file of ``.../images/x.jpg`` is ``.../labels/x.txt`` (the last ``images`` or
  ``JPEGImages`` folder replaced by ``labels``); ``x.txt`` beside the image is the fallback.

Bad input never stops the load: each problem is a :class:`DataWarning` naming file and line,
the offending line or image is skipped, and :class:`Problems` keeps the counts.
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .boxes import box_convert, normalize_boxes
from .io import InputFileError, imread, is_image, list_entries, read_names, resolve_listed

# COCO's 80 category ids in ascending order: class index i of coco.names <-> COCO_IDS[i].
COCO_IDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
            27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51,
            52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77,
            78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90]
_COCO_NAMES_FILE = Path(__file__).resolve().parent.parent / "data" / "coco.names"


class DataError(ValueError):
    """A dataset description that cannot be used at all (the message names file and key)."""


class DataWarning(UserWarning):
    """A skipped line or image; the rest of the dataset is still used."""


class Problems:
    """Counts skipped things by kind and warns for the first few of each kind.

    Warning for every bad line of a 100k-image dataset would bury the message, so after
    ``limit`` warnings of one kind the rest are only counted (see :meth:`summary`).
    """

    def __init__(self, limit: int = 20) -> None:
        self.counts: Counter[str] = Counter()
        self.messages: list[str] = []
        self.limit = limit

    def add(self, kind: str, message: str, warn: bool = True) -> None:
        self.counts[kind] += 1
        if self.counts[kind] <= self.limit:
            self.messages.append(message)
            if warn:
                warnings.warn(message, DataWarning, stacklevel=3)
        elif self.counts[kind] == self.limit + 1 and warn:
            warnings.warn(f"more '{kind}' problems: only counted from now on", DataWarning, stacklevel=3)

    def __bool__(self) -> bool:
        return bool(self.counts)

    def summary(self) -> str:
        return ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items())) or "none"


@dataclass
class ImageRecord:
    """One image and its ground truth, labels normalised to the image size."""

    path: Path
    image_id: int  # COCO image id (COCO form) / 1-based position (Darknet form)
    labels: np.ndarray  # float32 [K, 5]: class, cx, cy, w, h normalised to the image (0..1)
    crowd: np.ndarray  # bool [K]: COCO iscrowd (always False for Darknet labels)
    width: int | None = None  # known from COCO json; None for Darknet form until read
    height: int | None = None
    areas: np.ndarray | None = None  # float32 [K] COCO 'area' (segment area); None: box area


@dataclass
class DatasetInfo:
    """The records of one split plus the class table that maps them to COCO categories."""

    records: list[ImageRecord]
    names: list[str]  # class names, index = class id
    category_ids: list[int]  # COCO category id of each class index
    source: str  # what was read (for messages)
    problems: Problems = field(default_factory=Problems)

    @property
    def num_classes(self) -> int:
        return len(self.names)


# ---------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------
def read_image(path: str | Path) -> np.ndarray | None:
    """BGR uint8 image; None with a :class:`DataWarning` naming the file when unreadable."""
    img, reason = imread(path)
    if img is None:
        warnings.warn(f"{path}: {reason}; skipped", DataWarning, stacklevel=2)
    return img


# ---------------------------------------------------------------------------------------------
# names, .data files, list files, label files
# ---------------------------------------------------------------------------------------------
def category_ids_for(names: Sequence[str]) -> list[int]:
    """COCO's ids when the names are COCO's 80 classes (results then match official json), else 1..N."""
    try:
        if list(names) == read_names(_COCO_NAMES_FILE):
            return list(COCO_IDS)
    except OSError:
        pass
    return list(range(1, len(names) + 1))


def parse_data_file(path: str | Path) -> tuple[dict[str, str], dict[str, int]]:
    """``key = value`` lines of a Darknet ``.data`` file -> (options, line of each key)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise DataError(f"cannot read data file '{path}': {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a text .data file (undecodable byte at offset {e.start})") from None
    options: dict[str, str] = {}
    lines: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if "=" not in line:
            raise DataError(f"{path}:{lineno}: expected 'key = value', got '{raw.strip()}'")
        key, value = (p.strip() for p in line.split("=", 1))
        options[key] = value
        lines[key] = lineno
    return options, lines


def label_path_for(image: Path) -> Path:
    """``.../images/x.jpg`` -> ``.../labels/x.txt``; ``x.txt`` beside the image if that is missing."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] in ("images", "JPEGImages"):
            parts[i] = "labels"
            candidate = Path(*parts).with_suffix(".txt")
            if candidate.exists():
                return candidate
            break
    return image.with_suffix(".txt")


def parse_label_file(path: Path, num_classes: int, problems: Problems) -> np.ndarray:
    """YOLO label lines ``class cx cy w h`` -> float32 [K, 5]; a bad line is warned about and skipped."""
    rows: list[list[float]] = []
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM from a Windows editor is not a field
    except (OSError, UnicodeDecodeError) as e:
        problems.add("unreadable label file", f"{path}: cannot read label file ({e}); no objects used")
        return np.zeros((0, 5), np.float32)
    for lineno, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split()
        if not fields:
            continue
        where = f"{path}:{lineno}"
        if len(fields) != 5:
            problems.add("bad label line", f"{where}: expected 5 fields 'class cx cy w h', got {len(fields)}: "
                                           f"'{raw.strip()}'; line skipped")
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            problems.add("bad label line", f"{where}: expected numbers, got '{raw.strip()}'; line skipped")
            continue
        cls = values[0]
        if cls != int(cls) or not 0 <= cls < num_classes:
            problems.add("bad label line", f"{where}: class {fields[0]} is not a class id in "
                                           f"0..{num_classes - 1}; line skipped")
            continue
        if not all(np.isfinite(values)) or values[3] <= 0 or values[4] <= 0:
            problems.add("bad label line", f"{where}: box needs finite values and w, h > 0, got "
                                           f"'{raw.strip()}'; line skipped")
            continue
        rows.append(values)
    return np.asarray(rows, np.float32).reshape(-1, 5)


def _read_list(list_path: Path, where: str, num_classes: int, problems: Problems) -> list[ImageRecord]:
    """A text file of image paths (or a folder of images) -> records with their YOLO labels."""
    if list_path.is_dir():
        entries = [(0, str(p)) for p in sorted(list_path.iterdir()) if is_image(p)]
        base = list_path
    else:
        try:
            entries = list(list_entries(list_path))
        except OSError as e:
            raise DataError(f"{where}: cannot read image list '{list_path}': {e.strerror or e}") from None
        base = list_path.parent
    records: list[ImageRecord] = []
    missing_labels: list[Path] = []
    for lineno, entry in entries:
        image = resolve_listed(entry, base)
        if not image.is_file():
            problems.add("missing image", f"{list_path}:{lineno}: image not found: '{entry}'; skipped")
            continue
        label = label_path_for(image)
        if label.is_file():
            labels = parse_label_file(label, num_classes, problems)
        else:
            missing_labels.append(label)
            labels = np.zeros((0, 5), np.float32)
        records.append(ImageRecord(image, len(records) + 1, labels, np.zeros(len(labels), bool)))
    if missing_labels:
        # Darknet treats an image without a label file as background; say so once, with an example.
        problems.add("missing label file", f"{list_path}: {len(missing_labels)} image(s) have no label file "
                                            f"(e.g. '{missing_labels[0]}'); used as images with no objects",
                     warn=True)
        problems.counts["missing label file"] += len(missing_labels) - 1
    return records


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
    cls_of = {cid: i for i, cid in enumerate(category_ids)}
    by_image: dict[int, list[dict[str, Any]]] = {}
    for n, a in enumerate(data["annotations"]):
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


def _default_image_dir(ann_file: Path) -> Path:
    """COCO layout: ``annotations/instances_val2017.json`` -> ``../val2017``."""
    stem = ann_file.stem.split("_", 1)[-1]
    for candidate in (ann_file.parent.parent / stem, ann_file.parent / stem, ann_file.parent / "images"):
        if candidate.is_dir():
            return candidate
    raise DataError(f"{ann_file}: no image folder given and none found beside it; pass --images DIR")


def load_dataset(data: str | Path, images: str | Path | None = None, split: str = "valid",
                 names: list[str] | None = None) -> DatasetInfo:
    """Read one split of a dataset, whichever form it is in.

    ``data`` is a Darknet ``.data`` file (its ``split`` key names an image list, a folder of
    images, or a COCO json with ``<split>_images`` naming the image folder), a COCO instances
    ``.json`` (with ``images`` or the standard COCO folder layout), or an image list ``.txt``.
    ``names`` overrides the class names (and so the class count) when the data has none.
    """
    data = Path(data)
    if not data.exists():
        raise DataError(f"dataset not found: '{data}'")
    if data.suffix == ".json":
        return load_coco(data, images)
    if data.suffix != ".data":
        problems = Problems()
        n = len(names) if names else 0
        if not names:
            raise DataError(f"{data}: an image list needs class names (a .data file or names=...)")
        records = _read_list(data, str(data), n, problems)
        return DatasetInfo(records, list(names), category_ids_for(names), str(data), problems)

    options, lines = parse_data_file(data)
    base = data.parent
    if split not in options:
        raise DataError(f"{data}: no '{split}' key (expected '{split} = path/to/list.txt' or a COCO json)")
    where = f"{data}:{lines[split]}: key '{split}'"
    target = resolve_listed(options[split], base)
    if not target.exists():
        raise DataError(f"{where}: '{options[split]}' not found (looked in {base} and the current directory)")
    if target.suffix == ".json":
        img_key = f"{split}_images"
        img_dir = images
        if img_dir is None and img_key in options:
            img_dir = resolve_listed(options[img_key], base)
        info = load_coco(target, img_dir)
        if "classes" in options and _int_option(options, lines, "classes", data) != info.num_classes:
            raise DataError(f"{data}:{lines['classes']}: classes={options['classes']} but {target} has "
                            f"{info.num_classes} categories")
        return info

    if "names" in options:
        names_path = resolve_listed(options["names"], base)
        try:
            file_names = read_names(names_path)
        except OSError:
            raise DataError(f"{data}:{lines['names']}: key 'names': file not found: '{options['names']}'") from None
        except InputFileError as e:
            raise DataError(f"{data}:{lines['names']}: key 'names': {e}") from None
        names = names or file_names
    if "classes" in options:
        n = _int_option(options, lines, "classes", data)
        if names is None:
            names = [str(i) for i in range(n)]
        elif len(names) != n:
            raise DataError(f"{data}:{lines['classes']}: classes={n} but the names list has {len(names)} entries")
    if not names:
        raise DataError(f"{data}: needs 'classes' or 'names'")
    problems = Problems()
    records = _read_list(target, where, len(names), problems)
    return DatasetInfo(records, list(names), category_ids_for(names), f"{data} ({split}: {target})", problems)


def _int_option(options: dict[str, str], lines: dict[str, int], key: str, data: Path) -> int:
    try:
        return int(options[key])
    except ValueError:
        raise DataError(f"{data}:{lines[key]}: key '{key}': expected an integer, got '{options[key]}'") from None


# ---------------------------------------------------------------------------------------------
# conversion
# ---------------------------------------------------------------------------------------------
def write_darknet_dataset(info: DatasetInfo, out_dir: str | Path, split: str = "valid",
                          copy: bool = False) -> Path:
    """Write ``info`` in Darknet form; returns the ``.data`` file.

    Layout: ``out/images/<file>`` (symlinks, or copies with ``copy=True``), ``out/labels/<stem>.txt``,
    ``out/<split>.txt`` (absolute image paths), ``out/classes.names``, ``out/dataset.data`` whose
    ``train`` and ``valid`` both name the list. Crowd boxes are dropped (YOLO labels cannot mark
    them), with one warning giving the count.
    """
    out = Path(out_dir).resolve()
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    lines: list[str] = []
    crowd = 0
    for n, rec in enumerate(info.records):
        name = rec.path.name
        if name in used:  # two folders with the same file name
            name = f"{n}_{name}"
        used.add(name)
        dst = out / "images" / name
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        if copy:
            shutil.copy2(rec.path, dst)
        else:
            os.symlink(rec.path.resolve(), dst)
        keep = ~rec.crowd.astype(bool)
        crowd += int((~keep).sum())
        rows = rec.labels[keep]
        (out / "labels" / Path(name).with_suffix(".txt")).write_text(
            "".join(f"{int(r[0])} {r[1]:.6f} {r[2]:.6f} {r[3]:.6f} {r[4]:.6f}\n" for r in rows))
        lines.append(str(dst))
    (out / f"{split}.txt").write_text("\n".join(lines) + "\n")
    (out / "classes.names").write_text("\n".join(info.names) + "\n")
    data = out / "dataset.data"
    data.write_text(f"classes = {len(info.names)}\ntrain = {split}.txt\nvalid = {split}.txt\n"
                    f"names = classes.names\nbackup = backup/\n")
    if crowd:
        warnings.warn(f"{out}: {crowd} crowd box(es) dropped: Darknet labels cannot mark iscrowd",
                      DataWarning, stacklevel=2)
    return data


def drop_crowd(info: DatasetInfo) -> DatasetInfo:
    """A copy of ``info`` without crowd boxes (what the Darknet form of the same data holds)."""
    records = []
    for r in info.records:
        keep = ~r.crowd
        records.append(ImageRecord(r.path, r.image_id, r.labels[keep], r.crowd[keep], r.width, r.height,
                                   None if r.areas is None else r.areas[keep]))
    return DatasetInfo(records, list(info.names), list(info.category_ids), info.source, info.problems)
