"""The Darknet form: ``.data`` files, image lists (or folders of images) and YOLO label files.

Path rules (documented because Darknet itself is loose about them):

* paths inside a ``.data`` file are tried relative to the ``.data`` file's folder first,
  then relative to the current directory (Darknet's own convention), absolute paths as is;
* image paths inside a list file are tried relative to the list file's folder first, then
  relative to the current directory;
* the label file of ``.../images/x.jpg`` is ``.../labels/x.txt`` (the last ``images`` or
  ``JPEGImages`` folder replaced by ``labels``); ``x.txt`` beside the image is the fallback.

A ``.data`` split key may also name a dataset of another registered format (a COCO json);
a file no format recognises is read as an image list, as Darknet would.
"""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from ..io import InputFileError, is_image, list_entries, read_image_list, read_names, resolve_listed
from .records import DataError, DatasetInfo, DataWarning, ImageRecord, Problems, category_ids_for
from .registry import DatasetFormat, recognising, register_format

#: Suffixes of a Darknet image list given directly (inside a ``.data`` file any file is a list).
LIST_SUFFIXES = frozenset({".txt", ".list", ""})


# ---------------------------------------------------------------------------------------------
# .data files, label files, list files
# ---------------------------------------------------------------------------------------------
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


def _int_option(options: dict[str, str], lines: dict[str, int], key: str, data: Path) -> int:
    try:
        return int(options[key])
    except ValueError:
        raise DataError(f"{data}:{lines[key]}: key '{key}': expected an integer, got '{options[key]}'") from None


def _class_names(data: Path, options: dict[str, str], lines: dict[str, int],
                 names: Sequence[str] | None) -> list[str]:
    """The ``names`` / ``classes`` keys (``names`` given by the caller win over the file's)."""
    base = data.parent
    names = list(names) if names else None
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
    return names


# ---------------------------------------------------------------------------------------------
# the two registered readers
# ---------------------------------------------------------------------------------------------
@register_format("darknet")
class DarknetData(DatasetFormat):
    """A Darknet ``.data`` file: ``<split> = list``, ``classes``, ``names`` (and ``<split>_images``
    when the split is a COCO json)."""

    describe = "a Darknet .data file"

    def recognises(self, path: Path) -> bool:
        return path.suffix == ".data"

    def splits(self, path: Path) -> tuple[str, ...]:
        options = parse_data_file(path)[0]
        return tuple(k for k in ("train", "valid", "test") if k in options)

    def read(self, path: Path, images: Path | None = None, split: str = "valid",
             names: Sequence[str] | None = None) -> DatasetInfo:
        options, lines = parse_data_file(path)
        base = path.parent
        if split not in options:
            raise DataError(f"{path}: no '{split}' key (expected '{split} = path/to/list.txt' or a COCO json)")
        where = f"{path}:{lines[split]}: key '{split}'"
        target = resolve_listed(options[split], base)
        if not target.exists():
            raise DataError(f"{where}: '{options[split]}' not found (looked in {base} and the current directory)")
        fmt = recognising(target)
        if fmt is not None and not isinstance(fmt, (ImageList, DarknetData)):
            return self._read_other(fmt, path, options, lines, target, images, split)
        names = _class_names(path, options, lines, names)
        problems = Problems()
        records = _read_list(target, where, len(names), problems)
        return DatasetInfo(records, names, category_ids_for(names), f"{path} ({split}: {target})", problems)

    @staticmethod
    def _read_other(fmt: DatasetFormat, data: Path, options: dict[str, str], lines: dict[str, int],
                    target: Path, images: Path | None, split: str) -> DatasetInfo:
        """A split held in another format (a COCO json): its own class table, checked against ``classes``."""
        img_key = f"{split}_images"
        if images is None and img_key in options:
            images = resolve_listed(options[img_key], data.parent)
        info = fmt.read(target, images, split)
        if "classes" in options and _int_option(options, lines, "classes", data) != info.num_classes:
            raise DataError(f"{data}:{lines['classes']}: classes={options['classes']} but {target} has "
                            f"{info.num_classes} categories")
        return info


@register_format("image-list")
class ImageList(DatasetFormat):
    """A Darknet image list (one path per line) or a folder of images, labels in YOLO label files;
    class names come from the caller."""

    describe = "an image list (.txt, .list) or a folder of images, with names=..."

    def recognises(self, path: Path) -> bool:
        if path.is_dir():
            return any(is_image(p) for p in path.iterdir())
        return path.suffix.lower() in LIST_SUFFIXES

    def read(self, path: Path, images: Path | None = None, split: str = "valid",
             names: Sequence[str] | None = None) -> DatasetInfo:
        if not names:
            raise DataError(f"{path}: an image list needs class names (a .data file or names=...)")
        problems = Problems()
        records = _read_list(path, str(path), len(names), problems)
        return DatasetInfo(records, list(names), category_ids_for(names), str(path), problems)

    def image_paths(self, path: Path) -> list[Path]:
        if path.is_dir():
            return sorted(p for p in path.iterdir() if is_image(p))
        return read_image_list(path)


# ---------------------------------------------------------------------------------------------
# conversion
# ---------------------------------------------------------------------------------------------
def write_darknet_dataset(info: DatasetInfo, out_dir: str | Path, split: str = "valid",
                          copy: bool = False) -> Path:
    """Write ``info`` in Darknet form; returns the ``.data`` file.

    Layout: ``out/images/<file>`` (symlinks, or copies with ``copy=True``), ``out/labels/<stem>.txt``,
    ``out/<split>.txt`` (absolute image paths), ``out/classes.names``, ``out/dataset.data`` whose
    ``train`` and ``valid`` both name the list. Crowd and difficult boxes are dropped (YOLO labels
    cannot mark them; Darknet's own ``voc_label.py`` drops difficult ones too), with one warning
    giving each count.
    """
    out = Path(out_dir).resolve()
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    lines: list[str] = []
    crowd = difficult = 0
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
        is_crowd, is_difficult = rec.crowd.astype(bool), rec.difficult.astype(bool)
        crowd += int(is_crowd.sum())
        difficult += int((is_difficult & ~is_crowd).sum())
        rows = rec.labels[~is_crowd & ~is_difficult]
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
    if difficult:
        warnings.warn(f"{out}: {difficult} difficult box(es) dropped: Darknet labels cannot mark difficult",
                      DataWarning, stacklevel=2)
    return data
