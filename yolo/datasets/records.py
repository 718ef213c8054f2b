"""What every dataset format yields: one :class:`ImageRecord` per image inside a :class:`DatasetInfo`,
and the :class:`Problems` met on the way (bad lines and images are skipped, never fatal).

Labels are normalised ``class cx cy w h`` rows whichever form the data was in, so evaluation,
training, anchors and the format converter see one thing.
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..assets import COCO_NAMES
from ..errors import YoloError
from ..io import imread, read_names

# COCO's 80 category ids in ascending order: class index i of coco.names <-> COCO_IDS[i].
COCO_IDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
            27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51,
            52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77,
            78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90]
_COCO_NAMES_FILE = COCO_NAMES  # the shipped coco.names (package data)


class DataError(YoloError):
    """A dataset description that cannot be used at all (the message names file and key); exit code 2
    in every CLI through :mod:`yolo.cli.common`'s table."""


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
    """One image and its ground truth, labels normalised to the image size.

    ``crowd`` and ``difficult`` flag boxes that are kept for the record but left out of the
    metric's truth (COCO ``iscrowd``; Pascal VOC ``difficult``); a format without such a flag
    leaves it all False (``difficult`` is filled in when not given).
    """

    path: Path
    image_id: int  # COCO image id (COCO form) / 1-based position (Darknet form)
    labels: np.ndarray  # float32 [K, 5]: class, cx, cy, w, h normalised to the image (0..1)
    crowd: np.ndarray  # bool [K]: COCO iscrowd (always False for Darknet labels)
    width: int | None = None  # known from COCO json; None for Darknet form until read
    height: int | None = None
    areas: np.ndarray | None = None  # float32 [K] COCO 'area' (segment area); None: box area
    difficult: np.ndarray | None = None  # bool [K]: Pascal VOC 'difficult'; None -> all False

    def __post_init__(self) -> None:
        if self.difficult is None:
            self.difficult = np.zeros(len(self.labels), bool)
        elif len(self.difficult) != len(self.labels):
            raise ValueError(f"{self.path}: {len(self.difficult)} difficult flags for {len(self.labels)} boxes")


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


def read_image(path: str | Path) -> np.ndarray | None:
    """BGR uint8 image; None with a :class:`DataWarning` naming the file when unreadable."""
    img, reason = imread(path)
    if img is None:
        warnings.warn(f"{path}: {reason}; skipped", DataWarning, stacklevel=2)
    return img


def category_ids_for(names: Sequence[str]) -> list[int]:
    """COCO's ids when the names are COCO's 80 classes (results then match official json), else 1..N."""
    try:
        if list(names) == read_names(_COCO_NAMES_FILE):
            return list(COCO_IDS)
    except OSError:
        pass
    return list(range(1, len(names) + 1))


def drop_crowd(info: DatasetInfo) -> DatasetInfo:
    """A copy of ``info`` without crowd boxes (what the Darknet form of the same data holds)."""
    records = []
    for r in info.records:
        keep = ~r.crowd
        records.append(ImageRecord(r.path, r.image_id, r.labels[keep], r.crowd[keep], r.width, r.height,
                                   None if r.areas is None else r.areas[keep], r.difficult[keep]))
    return DatasetInfo(records, list(info.names), list(info.category_ids), info.source, info.problems)
