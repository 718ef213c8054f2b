"""The YOLO folder form (ultralytics' exchange format): a ``data.yaml`` and ``images/`` beside ``labels/``.

``data.yaml`` keys: ``path`` (the dataset root; relative to the yaml file's folder, default
that folder), ``train`` / ``val`` / ``test`` (each a folder of images, searched recursively, an
image list ``.txt``, or a list of those; relative to ``path``), ``names`` (a list, or a dict
``{id: name}`` with ids 0..N-1) and optionally ``nc`` (checked against ``names``). The label file
of ``.../images/x.jpg`` is ``.../labels/x.txt`` (rows ``class cx cy w h``, normalised), the
same rule as the Darknet form; the split ``valid`` reads ``val``. An image without a label file
is a background image (counted). The yaml is parsed with PyYAML (a dependency of the package).

What the user points at: the ``.yaml`` / ``.yml`` file, or a folder holding ``data.yaml``.
A yaml file that does not parse, or lacks ``names`` or the split, is a :class:`DataError`
naming file (and line); a bad label line or a missing image is named, counted and skipped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..io import is_image, list_entries, resolve_listed
from .darknet import label_path_for, parse_label_file
from .records import DataError, DatasetInfo, ImageRecord, Problems, category_ids_for
from .registry import DatasetFormat, register_format

YAML_NAMES = ("data.yaml", "data.yml", "dataset.yaml")
SPLIT_ALIASES = {"valid": "val", "val": "valid"}


def yaml_file(path: Path) -> Path:
    """``path`` itself, or the ``data.yaml`` inside the folder ``path``."""
    if path.is_dir():
        for name in YAML_NAMES:
            if (path / name).is_file():
                return path / name
        raise DataError(f"{path}: no {' / '.join(YAML_NAMES)} in this folder")
    return path


def read_yaml(path: Path) -> dict[str, Any]:
    """``data.yaml`` -> its mapping; a :class:`DataError` naming file and line when it is unusable."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except OSError as e:
        raise DataError(f"cannot read '{path}': {e.strerror or e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise DataError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a mapping with 'path', 'train', 'val', 'names', got {type(data).__name__}")
    return data


def yaml_names(data: dict[str, Any], path: Path) -> list[str]:
    """``names`` as a list or a dict ``{0: a, 1: b}`` (ids 0..N-1), checked against ``nc``."""
    names = data.get("names")
    if isinstance(names, dict):
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise DataError(f"{path}: key 'names': dict keys must be class ids 0..N-1, got {list(names)[:5]}") from None
        if ids != list(range(len(ids))):
            raise DataError(f"{path}: key 'names': class ids must be 0..{len(ids) - 1} without gaps, got {ids[:10]}")
        names = [str(names[k] if k in names else names[str(k)]) for k in ids]
    elif isinstance(names, list):
        names = [str(n) for n in names]
    else:
        raise DataError(f"{path}: needs 'names' (a list, or a dict {{id: name}}), got {names!r:.60}")
    if not names:
        raise DataError(f"{path}: key 'names' is empty")
    if "nc" in data and data["nc"] != len(names):
        raise DataError(f"{path}: nc={data['nc']} but 'names' has {len(names)} entries")
    return names


def dataset_root(data: dict[str, Any], path: Path) -> Path:
    root = Path(str(data.get("path") or "")).expanduser()
    return root if root.is_absolute() else (path.parent / root)


def split_key(data: dict[str, Any], split: str) -> str | None:
    for key in (split, SPLIT_ALIASES.get(split)):
        if key and data.get(key):
            return key
    return None


def split_images(data: dict[str, Any], path: Path, split: str, problems: Problems) -> list[Path]:
    """The images of ``split``: folders searched recursively, list files read (relative to ``path``)."""
    key = split_key(data, split)
    if key is None:
        raise DataError(f"{path}: no '{split}' key" + (f" (nor '{SPLIT_ALIASES[split]}')" if split in SPLIT_ALIASES
                                                       else "") + "; expected e.g. 'val: images/val'")
    root = dataset_root(data, path)
    entries = data[key] if isinstance(data[key], list) else [data[key]]
    images: list[Path] = []
    for entry in entries:
        target = resolve_listed(str(entry), root)
        if target.is_dir():
            images += sorted(p for p in target.rglob("*") if is_image(p))
        elif target.is_file():
            for lineno, line in list_entries(target):
                image = resolve_listed(line, target.parent)
                if image.is_file():
                    images.append(image)
                else:
                    problems.add("missing image", f"{target}:{lineno}: image not found: '{line}'; skipped")
        else:
            raise DataError(f"{path}: key '{key}': '{entry}' not found (looked in {root})")
    return images


def read_yolo_folder(path: str | Path, split: str = "valid", names: Sequence[str] | None = None) -> DatasetInfo:
    """One split of a YOLO folder dataset (``path``: the yaml file or its folder)."""
    path = yaml_file(Path(path))
    data = read_yaml(path)
    names = list(names) if names else yaml_names(data, path)
    problems = Problems()
    records: list[ImageRecord] = []
    missing: list[Path] = []
    for image in split_images(data, path, split, problems):
        label = label_path_for(image)
        if label.is_file():
            labels = parse_label_file(label, len(names), problems)
        else:
            missing.append(label)
            labels = np.zeros((0, 5), np.float32)
        records.append(ImageRecord(image, len(records) + 1, labels, np.zeros(len(labels), bool)))
    if missing:
        problems.add("missing label file", f"{path} ({split}): {len(missing)} image(s) have no label file "
                                           f"(e.g. '{missing[0]}'); used as images with no objects")
        problems.counts["missing label file"] += len(missing) - 1
    return DatasetInfo(records, names, category_ids_for(names), f"{path} ({split})", problems)


@register_format("yolo")
class YoloFolder(DatasetFormat):
    """A ``data.yaml`` (or a folder holding one) of the YOLO folder layout."""

    describe = "a YOLO folder data.yaml (or its folder)"

    def recognises(self, path: Path) -> bool:
        if path.is_dir():
            return any((path / n).is_file() for n in YAML_NAMES)
        return path.suffix.lower() in (".yaml", ".yml")

    def splits(self, path: Path) -> tuple[str, ...]:
        data = read_yaml(yaml_file(path))
        return tuple(k for k in ("train", "val", "test") if data.get(k))

    def read(self, path: Path, images: Path | None = None, split: str = "valid",
             names: Sequence[str] | None = None) -> DatasetInfo:
        return read_yolo_folder(path, split, names)

    def image_paths(self, path: Path) -> list[Path]:
        path = yaml_file(path)
        data = read_yaml(path)
        split = next((k for k in ("train", "val", "valid", "test") if data.get(k)), "train")
        return split_images(data, path, split, Problems())
