"""Datasets: one reader per format behind one dispatch (:func:`load_dataset`).

Every format yields the same records (normalised ``class cx cy w h`` labels per image, with
``crowd`` and ``difficult`` flags), so evaluation, training, anchors, export calibration and
the format converter see one thing. Built in: Darknet ``.data`` files, image lists and folders
with YOLO label files (:mod:`.darknet`), COCO instances json (:mod:`.coco`), Pascal VOC
folders (:mod:`.voc`), YOLO folders with a ``data.yaml`` (:mod:`.yolo_folder`); writers for
all four in :mod:`.writers`. A new format is one
module with a :class:`DatasetFormat` subclass under ``@register_format("name")``, imported below.

Bad input never stops the load: each problem is a :class:`DataWarning` naming file and line,
the offending line or image is skipped, and :class:`Problems` keeps the counts.
"""
from __future__ import annotations

from . import coco, darknet, voc, yolo_folder  # noqa: F401  (importing a format module registers it)
from .coco import load_coco
from .darknet import label_path_for, parse_data_file, parse_label_file, write_darknet_dataset
from .records import (
    COCO_IDS,
    DataError,
    DatasetInfo,
    DataWarning,
    ImageRecord,
    Problems,
    category_ids_for,
    drop_crowd,
    read_image,
)
from .registry import (
    DatasetFormat,
    dataset_images,
    dataset_splits,
    format_for,
    formats,
    load_dataset,
    recognising,
    register_format,
)
from .writers import write_dataset

__all__ = [
    "COCO_IDS", "DataError", "DataWarning", "DatasetFormat", "DatasetInfo", "ImageRecord", "Problems",
    "category_ids_for", "dataset_images", "dataset_splits", "drop_crowd", "format_for", "formats",
    "label_path_for", "load_coco", "load_dataset", "parse_data_file", "parse_label_file", "read_image",
    "recognising", "register_format", "write_darknet_dataset", "write_dataset",
]
