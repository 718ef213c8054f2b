"""The files the package ships (package data, found through ``importlib.resources``).

``cfg/`` (every cfg of the README), ``weights/yolo-fastest-1.1.weights`` (the default COCO
model, public domain) and ``names/coco.names``. They are found the same way from a wheel, a
plain ``pip install .`` and a checkout; in a checkout the top-level ``cfg/``, ``weights/`` and
``data/coco.names`` are links to these, so README commands and bare names keep working.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

ROOT = Path(str(resources.files(__name__)))  # a folder on disk (wheels and checkouts, not zip imports)
CFG_DIR = ROOT / "cfg"
WEIGHTS_DIR = ROOT / "weights"
NAMES_DIR = ROOT / "names"

DEFAULT_CFG = CFG_DIR / "yolo-fastest-1.1.cfg"  # the shipped COCO model
DEFAULT_WEIGHTS = WEIGHTS_DIR / "yolo-fastest-1.1.weights"
COCO_NAMES = NAMES_DIR / "coco.names"
