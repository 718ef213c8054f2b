"""The Pascal VOC form: ``Annotations/*.xml`` (one per image), ``JPEGImages/``, ``ImageSets/Main/<split>.txt``.

What the user points at: a ``VOC2007``-style folder (holding ``Annotations``), a ``VOCdevkit``
folder (every ``VOC*`` folder inside it is read, in name order), or an ``Annotations`` folder
(images in ``../JPEGImages`` or beside the xml files).

* Splits are the ``ImageSets/Main/*.txt`` files without ``_`` in their name (``train``,
  ``val``, ``trainval``, ``test``; the per-class ``dog_train.txt`` lists are not splits); the
  split ``valid`` reads ``val.txt``. Without ``ImageSets`` every xml file is one split.
* Class names: a names file in the dataset folder (``classes.names``, ``classes.txt``,
  ``labels.txt``, one name a line), else the sorted set of ``<name>`` values of every xml file
  (VOC's own 20 classes are in alphabetical order, so VOC2007 gets its standard class ids).
* ``<difficult>1</difficult>`` objects are kept and flagged: the metric leaves them out of the
  truth (a detection on them is neither a true nor a false positive, as VOC's devkit scores).
* Pixel convention: Darknet's ``voc_label.py`` (and ultralytics' VOC.yaml) conversion,
  ``x1 = xmin - 1``, ``x2 = xmax - 1`` (VOC counts pixels from 1), so labels equal theirs.

Bad input (an xml file that does not parse, an object without ``name`` or ``bndbox``, a
coordinate that is not a number, an empty or inverted box, a class not in the names file, an
image or xml file not found) is named, counted in :class:`Problems` and skipped.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

import numpy as np

from ..io import InputFileError, imread, is_image, list_entries, read_names
from .records import DataError, DatasetInfo, ImageRecord, Problems, category_ids_for
from .registry import DatasetFormat, register_format

NAMES_FILES = ("classes.names", "classes.txt", "labels.txt")
#: the split names a caller may use for VOC's own (``valid`` is what test.py and train.py ask for)
SPLIT_ALIASES = {"valid": "val", "val": "valid"}


def voc_roots(path: Path) -> list[Path]:
    """The ``VOC2007``-style folders (each holding ``Annotations``) that ``path`` names."""
    if path.name == "Annotations":
        return [path.parent]
    if (path / "Annotations").is_dir():
        return [path]
    return sorted(p for p in path.iterdir() if p.is_dir() and (p / "Annotations").is_dir())


def _annotation_dir(path: Path, root: Path) -> Path:
    return path if path.name == "Annotations" else root / "Annotations"


def voc_names(path: Path, names: Sequence[str] | None = None) -> list[str]:
    """The class names: the caller's, a names file in the dataset folder, or every xml ``<name>`` sorted."""
    if names:
        return list(names)
    for folder in dict.fromkeys([path if path.is_dir() else path.parent, *voc_roots(path)]):
        for candidate in NAMES_FILES:
            if (folder / candidate).is_file():
                try:
                    return read_names(folder / candidate)
                except (OSError, InputFileError) as e:
                    raise DataError(f"{folder / candidate}: unusable names file ({e})") from None
    found: set[str] = set()
    for root in voc_roots(path):
        for xml in sorted(_annotation_dir(path, root).glob("*.xml")):
            try:
                found.update((o.findtext("name") or "").strip() for o in ET.parse(xml).getroot().iter("object"))
            except (ET.ParseError, OSError):
                continue  # named when the split is read
    found.discard("")
    if not found:
        raise DataError(f"{path}: no class names (no names file {'/'.join(NAMES_FILES)} and no <name> in any xml)")
    return sorted(found)


def _split_file(root: Path, split: str) -> Path | None:
    main = root / "ImageSets" / "Main"
    for name in (split, SPLIT_ALIASES.get(split)):
        if name and (main / f"{name}.txt").is_file():
            return main / f"{name}.txt"
    return None


def _number(obj: ET.Element, tag: str, where: str) -> float:
    text = obj.findtext(tag)
    if text is None:
        raise ValueError(f"{where}: no <{tag}>")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: <{tag}> is not a number: '{text.strip()}'") from None
    if not np.isfinite(value):
        raise ValueError(f"{where}: <{tag}> is not finite: '{text.strip()}'")
    return value


def parse_voc_xml(xml: Path, image_dirs: Sequence[Path], class_of: dict[str, int], image_id: int,
                  problems: Problems) -> ImageRecord | None:
    """One annotation file -> a record (None, named in ``problems``, when the file is unusable)."""
    try:
        tree = ET.parse(xml)
    except ET.ParseError as e:
        line, col = e.position
        problems.add("bad xml file", f"{xml}:{line}:{col}: not valid xml ({e}); skipped")
        return None
    except OSError as e:
        problems.add("bad xml file", f"{xml}: cannot read ({e.strerror or e}); skipped")
        return None
    ann = tree.getroot()
    file_name = (ann.findtext("filename") or "").strip()
    if not file_name:
        stems = [d / (xml.stem + s) for d in image_dirs for s in (".jpg", ".png", ".jpeg", ".bmp")]
        found = [p for p in stems if p.is_file()]
        image = found[0] if found else None
    else:
        image = next((d / file_name for d in image_dirs if (d / file_name).is_file()), None)
    if image is None:
        problems.add("missing image", f"{xml}: image '{file_name or xml.stem + '.*'}' not found in "
                                      f"{', '.join(map(str, image_dirs))}; skipped")
        return None
    try:
        width, height = int(float(ann.findtext("size/width") or 0)), int(float(ann.findtext("size/height") or 0))
    except ValueError:
        width = height = 0
    if width < 1 or height < 1:  # many exporters write 0 or nothing: read the image
        img, reason = imread(image)
        if img is None:
            problems.add("unreadable image", f"{xml}: no <size> and image '{image}' is {reason}; skipped")
            return None
        height, width = img.shape[:2]
    rows, difficult = [], []
    for k, obj in enumerate(ann.iter("object")):
        where = f"{xml}: <object> #{k + 1}"
        name = (obj.findtext("name") or "").strip()
        if not name:
            problems.add("bad object", f"{where}: no <name>; object skipped")
            continue
        if name not in class_of:
            problems.add("unknown class", f"{where}: class '{name}' is not in the names list; object skipped")
            continue
        box = obj.find("bndbox")
        if box is None:
            problems.add("bad object", f"{where} ('{name}'): no <bndbox>; object skipped")
            continue
        try:
            xmin, ymin, xmax, ymax = (_number(box, t, f"{where} ('{name}')") for t in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError as e:
            problems.add("bad object", f"{e}; object skipped")
            continue
        if xmax <= xmin or ymax <= ymin:
            problems.add("bad object", f"{where} ('{name}'): empty or inverted box xmin {xmin:g} ymin {ymin:g} "
                                       f"xmax {xmax:g} ymax {ymax:g}; object skipped")
            continue
        flag = (obj.findtext("difficult") or "0").strip()
        difficult.append(flag not in ("0", "", "false", "False"))
        x1, y1, x2, y2 = xmin - 1, ymin - 1, xmax - 1, ymax - 1
        rows.append([class_of[name], (x1 + x2) / 2 / width, (y1 + y2) / 2 / height,
                     (x2 - x1) / width, (y2 - y1) / height])
    labels = np.asarray(rows, np.float32).reshape(-1, 5)
    return ImageRecord(image, image_id, labels, np.zeros(len(labels), bool), width, height,
                       difficult=np.asarray(difficult, bool))


def read_voc(path: str | Path, split: str = "valid", names: Sequence[str] | None = None,
             images: Path | None = None) -> DatasetInfo:
    """One split of a VOC dataset (see the module docstring for what ``path`` may be)."""
    path = Path(path)
    roots = voc_roots(path)
    if not roots:
        raise DataError(f"{path}: no 'Annotations' folder (expected a VOC2007-style folder, a VOCdevkit or "
                        "an Annotations folder)")
    names = voc_names(path, names)
    class_of = {n: i for i, n in enumerate(names)}
    problems = Problems()
    records: list[ImageRecord] = []
    for root in roots:
        ann_dir = _annotation_dir(path, root)
        image_dirs = [images] if images is not None else [root / "JPEGImages", ann_dir]
        listed = _split_file(root, split) if path.name != "Annotations" else None
        if listed is None:
            xmls = [(None, p) for p in sorted(ann_dir.glob("*.xml"))]
        else:
            xmls = []
            for lineno, entry in list_entries(listed):
                xml = ann_dir / f"{entry.split()[0]}.xml"
                if xml.is_file():
                    xmls.append((lineno, xml))
                else:
                    problems.add("missing xml file", f"{listed}:{lineno}: '{xml}' not found; skipped")
        for _, xml in xmls:
            rec = parse_voc_xml(xml, image_dirs, class_of, len(records) + 1, problems)
            if rec is not None:
                records.append(rec)
    return DatasetInfo(records, names, category_ids_for(names), f"{path} ({split})", problems)


@register_format("voc")
class PascalVOC(DatasetFormat):
    """A Pascal VOC folder: ``VOCdevkit``, ``VOC2007``-style (``Annotations``, ``JPEGImages``,
    ``ImageSets/Main``) or an ``Annotations`` folder of xml files."""

    describe = "a Pascal VOC folder (VOCdevkit, VOC2007-style or Annotations/)"

    def recognises(self, path: Path) -> bool:
        if not path.is_dir():
            return False
        if path.name == "Annotations":
            return any(p.suffix == ".xml" for p in path.iterdir())
        return bool(voc_roots(path))

    def splits(self, path: Path) -> tuple[str, ...]:
        found: dict[str, None] = {}
        for root in voc_roots(path):
            main = root / "ImageSets" / "Main"
            if main.is_dir():
                found.update((p.stem, None) for p in sorted(main.glob("*.txt")) if "_" not in p.stem)
        return tuple(found)

    def read(self, path: Path, images: Path | None = None, split: str = "valid",
             names: Sequence[str] | None = None) -> DatasetInfo:
        return read_voc(path, split, names, images)

    def image_paths(self, path: Path) -> list[Path]:
        out = []
        for root in voc_roots(path):
            folder = root / "JPEGImages"
            if folder.is_dir():
                out += sorted(p for p in folder.iterdir() if is_image(p))
        return out or [r.path for r in self.read(path).records]
