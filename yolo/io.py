"""The one place for files: image reading, image and video suffixes, list files, names files,
atomic writes.

Path rule for list files (``.txt`` lists of images, and the paths inside a ``.data`` file):
a relative path is resolved against the list file's folder first, then against the current
directory, as Darknet users expect; an absolute path is used as is.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO, Iterator

import cv2
import numpy as np

from .errors import YoloError

#: Every still-image format OpenCV's ``imdecode`` reads.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pbm",
                            ".pgm", ".ppm", ".pxm", ".pnm", ".sr", ".ras", ".exr", ".hdr", ".pic"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm", ".flv",
                            ".ts", ".asf", ".3gp", ".gif"})


class InputFileError(YoloError):
    """A names, list or other input file that is missing, unreadable or empty; names the file."""


def is_image(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def imread(path: str | Path) -> tuple[np.ndarray | None, str]:
    """BGR uint8 image, or None and the reason. Unicode-safe (``np.fromfile`` + ``imdecode``) and
    silent: the caller decides whether a bad image is a warning, a skip or an error."""
    try:
        buf = np.fromfile(str(path), dtype=np.uint8)
    except OSError as e:
        return None, f"cannot open ({e.strerror or e})"
    if buf.size == 0:
        return None, "empty file"
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None:
        return None, "not a readable image"
    return img, ""


def resolve_listed(entry: str | Path, list_dir: Path) -> Path:
    """A path named inside a list or ``.data`` file: the list's folder first, then the current
    directory (the module docstring's rule). A path found in neither resolves against the list."""
    p = Path(entry).expanduser()
    if p.is_absolute():
        return p
    candidate = list_dir / p
    if candidate.exists() or not p.exists():
        return candidate
    return p


def list_entries(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank, non-comment line of a list file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputFileError(f"{path}: not a text file (expected one path per line)") from None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield lineno, line


def read_image_list(path: Path) -> list[Path]:
    """A Darknet image list: one image path per line, resolved by :func:`resolve_listed`."""
    out = [resolve_listed(line, path.parent) for _, line in list_entries(path)]
    if not out:
        raise InputFileError(f"{path}: the list names no images (expected one image path per line)")
    return out


def read_names(path: str | Path) -> list[str]:
    """Darknet ``.names``: one class name per non-blank line."""
    path = Path(path)
    try:
        names = [s.strip() for s in path.read_text(encoding="utf-8-sig").splitlines() if s.strip()]
    except UnicodeDecodeError:
        raise InputFileError(f"{path}: not a text file of class names (one per line)") from None
    if not names:
        raise InputFileError(f"{path}: no class names in it (expected one name per line)")
    return names


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Write to a temporary file beside ``path``, fsync, then rename over it: a crash or an
    exception leaves the old file intact, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
