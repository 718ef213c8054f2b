"""What a ``Detector`` is given, checked: class names, input size, class filter and images.

Numpy and OpenCV only (no torch, no engine), so the export tool and any engine-free path can
use the same checks and messages as the Python API.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from .assets import COCO_NAMES, NAMES_DIR
from .cfg import REPO_ROOT, resolve_path
from .errors import YoloError
from .io import read_names

DATA_DIR = REPO_ROOT / "data"  # a checkout's data folder (samples)


class DetectError(YoloError):
    """Bad input to detection (names, sizes, sources, images); the message says what was expected."""


def load_names(path: str | Path) -> list[str]:
    """A names file given by path, or by its name among the shipped names (or in a checkout's ``data/``)."""
    name = Path(path)
    if not name.exists() and not (NAMES_DIR / name.name).exists() and (DATA_DIR / name.name).exists():
        return read_names(DATA_DIR / name.name)
    return read_names(resolve_path(path, NAMES_DIR, "names file"))


def default_names_for(num_classes: int) -> Path | None:
    """The shipped coco.names for an 80-class model when the user gave no names."""
    return COCO_NAMES if num_classes == 80 and COCO_NAMES.exists() else None


def resolve_names(names: str | Path | Sequence[str] | None, saved: object, num_classes: int,
                  cfg: str | Path) -> list[str]:
    """The class names to report, checked against the model: the user's (a file or a list), else the
    checkpoint's, else data/coco.names for 80 classes, else the class numbers."""
    where = "names"
    if names is None:
        if isinstance(saved, (list, tuple)) and saved:
            names, where = list(saved), "the checkpoint's names"
        elif (default := default_names_for(num_classes)) is not None:
            return load_names(default)
        else:
            return [str(i) for i in range(num_classes)]
    elif isinstance(names, (str, Path)):
        where = str(names)
        names = load_names(names)
    names = [str(n) for n in names]
    if len(names) != num_classes:
        raise DetectError(f"{where}: {len(names)} class names, but {Path(cfg).name} has "
                          f"{num_classes} classes: use the names file the model was trained with")
    return names


def class_ids(classes: Sequence[int | str] | None, names: Sequence[str]) -> list[int] | None:
    """Class ids or names (case-insensitive) -> checked ids; None keeps every class."""
    if classes is None:
        return None
    lookup = {n.lower(): i for i, n in enumerate(names)}
    ids = []
    for c in classes:
        if isinstance(c, str) and not c.strip().isdigit():
            if c.strip().lower() not in lookup:
                raise DetectError(f"classes: '{c}' is not a class name of this model")
            ids.append(lookup[c.strip().lower()])
        elif not 0 <= int(c) < len(names):
            raise DetectError(f"classes: {int(c)} is out of range: the model has classes 0..{len(names) - 1}")
        else:
            ids.append(int(c))
    return ids


def image_size(img_size: int | Sequence[int] | None, default: tuple[int, int], stride: int) -> tuple[int, int]:
    """The network input (height, width): one size, (h, w) or the cfg's; each a multiple of ``stride``."""
    if img_size is None:
        hw = default
    elif isinstance(img_size, (int, np.integer)):
        hw = (int(img_size), int(img_size))
    else:
        sizes = [int(s) for s in img_size]
        if len(sizes) not in (1, 2):
            raise DetectError(f"img_size: expected one size or (height, width), got {list(img_size)}")
        hw = (sizes[0], sizes[-1])
    if min(hw) < stride or hw[0] % stride or hw[1] % stride:
        raise DetectError(f"img_size {hw[0]}x{hw[1]} (h x w): each side must be a positive multiple of "
                          f"the network's stride {stride}")
    return hw


def check_image(img: object, what: str = "image") -> np.ndarray:
    """HWC uint8 with 3 channels; grey and BGRA are converted, anything else refused with a message
    that says what came instead (``None`` is what ``cv2.imread`` returns for a missing file)."""
    if img is None:
        raise DetectError(f"{what}: expected a uint8 numpy array (H, W, 3), got None; did the image load? "
                          "(cv2.imread returns None for a missing or unreadable file)")
    if isinstance(img, (str, Path)):
        raise DetectError(f"{what}: expected a uint8 numpy array (H, W, 3), got the path '{img}'; "
                          "read it first (cv2.imread or yolo.io.imread)")
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
        kind = img.dtype if isinstance(img, np.ndarray) else type(img).__name__
        raise DetectError(f"{what}: expected a uint8 numpy array (H, W, 3), got {kind}")
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim == 3 and img.shape[2] == 4:
        return np.ascontiguousarray(img[..., :3])
    if img.ndim != 3 or img.shape[2] != 3 or min(img.shape[:2]) < 1:
        raise DetectError(f"{what}: expected an image of shape (H, W, 3), got {img.shape}")
    return img


def as_batch(images: object) -> tuple[list[object], bool]:
    """What ``Detector.__call__`` was given -> (a list of images, whether it was a single image)."""
    if isinstance(images, np.ndarray):
        return ([images], True) if images.ndim in (2, 3) else (list(images), False)
    if images is None or isinstance(images, (str, Path)):
        check_image(images)  # raises, with the message for None or a path
    if not isinstance(images, Sequence):
        raise DetectError(f"expected an image (a uint8 numpy array) or a list of them, got {type(images).__name__}")
    return list(images), False
