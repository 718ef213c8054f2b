"""One dispatch for every dataset format: each format is a reader class registered under a name
with :func:`register_format`; it says whether it recognises what the user points at and reads it
into :class:`~yolo.datasets.records.DatasetInfo`.

Train, test, anchors and export calibration all go through :func:`load_dataset` (or
:func:`dataset_images` / :func:`dataset_splits`), so adding a format is one file with one
registered class, imported by ``yolo/datasets/__init__.py``. Readers are asked in registration
order and the first that recognises the path reads it; a format's ``recognises`` should be
narrow (a suffix, a marker file) so that no two formats claim the same input.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, ClassVar, Sequence, TypeVar

from .records import DataError, DatasetInfo

_FORMATS: dict[str, DatasetFormat] = {}

F = TypeVar("F", bound="type[DatasetFormat]")


class DatasetFormat(ABC):
    """A reader of one dataset format.

    Subclasses set ``describe`` (what the user gives, for the error that lists the formats)
    and implement :meth:`recognises` and :meth:`read`; :meth:`splits` and :meth:`image_paths`
    have defaults that fit a format holding one split.
    """

    name: ClassVar[str] = ""  # set by @register_format
    describe: ClassVar[str] = ""  # e.g. "a COCO instances .json"

    @abstractmethod
    def recognises(self, path: Path) -> bool:
        """Whether ``path`` (which exists) is in this format; cheap, and never raises for foreign input."""

    @abstractmethod
    def read(self, path: Path, images: Path | None = None, split: str = "valid",
             names: Sequence[str] | None = None) -> DatasetInfo:
        """One split of the dataset at ``path``; ``images`` overrides the image folder and ``names``
        supplies class names where the format has none. Raises :class:`DataError` when unusable."""

    def splits(self, path: Path) -> tuple[str, ...]:
        """The splits ``path`` names (``()``: one split, ``read`` ignores ``split``)."""
        return ()

    def image_paths(self, path: Path) -> list[Path]:
        """Every image of the default split, for calibration (labels are not needed)."""
        return [r.path for r in self.read(path).records]


def register_format(name: str) -> Callable[[F], F]:
    """Class decorator: register one instance of a :class:`DatasetFormat` under ``name`` (unique)."""

    def wrap(cls: F) -> F:
        if name in _FORMATS:
            raise ValueError(f"dataset format '{name}' is already registered by {type(_FORMATS[name]).__name__}")
        if not issubclass(cls, DatasetFormat) or not cls.describe:
            raise TypeError(f"{cls.__name__}: a dataset format subclasses DatasetFormat and sets 'describe'")
        reader = cls()  # an abstract method left out fails here, at import
        cls.name = name
        _FORMATS[name] = reader
        return cls

    return wrap


def formats() -> list[str]:
    """The registered format names, in the order they are asked."""
    return list(_FORMATS)


def recognising(path: Path) -> DatasetFormat | None:
    """The first registered format that recognises ``path``, or None."""
    return next((f for f in _FORMATS.values() if f.recognises(path)), None)


def format_for(path: str | Path, where: str | None = None) -> DatasetFormat:
    """The format of ``path``; a :class:`DataError` naming every registered format when none fits."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"dataset not found: '{path}'")
    fmt = recognising(path)
    if fmt is None:
        known = "; ".join(f"{f.name}: {f.describe}" for f in _FORMATS.values())
        raise DataError(f"{where or path}: not a dataset format this reads (formats: {known})")
    return fmt


def load_dataset(data: str | Path, images: str | Path | None = None, split: str = "valid",
                 names: list[str] | None = None) -> DatasetInfo:
    """Read one split of a dataset, whichever registered format it is in.

    Built in: a Darknet ``.data`` file (its ``split`` key names an image list, a folder of
    images, or a COCO json with ``<split>_images`` naming the image folder), a COCO instances
    ``.json`` (with ``images`` or the standard COCO folder layout), or an image list ``.txt``
    / a folder of images. ``names`` supplies the class names (and so the class count) when the
    data has none.
    """
    data = Path(data)
    return format_for(data).read(data, None if images is None else Path(images), split, names)


def dataset_images(source: str | Path) -> list[Path]:
    """The image paths of a dataset's default split (labels and class names not needed)."""
    source = Path(source)
    return format_for(source).image_paths(source)


def dataset_splits(data: str | Path) -> tuple[str, ...]:
    """The splits a dataset names (``()`` for a one-split format)."""
    data = Path(data)
    return format_for(data).splits(data)
