"""What detection runs on: images, folders, globs, ``.txt`` lists, videos, streams, webcams -> frames.

``resolve_source`` turns what the user typed into a ``Source`` (and fails fast, before a model
is loaded, on a typo); ``FrameReader`` yields its frames in order. Still images are decoded (and
optionally prepared for the network) in a thread pool a bounded number ahead, since OpenCV
releases the GIL; video frames are read in the calling thread, where a bad frame inside a file is
reported and skipped rather than ending the video.
"""
from __future__ import annotations

import glob
import re
from collections import deque
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np

from .detector import DetectError
from .io import IMAGE_SUFFIXES, VIDEO_SUFFIXES, imread, is_image, read_image_list

STREAM_PREFIXES = ("rtsp://", "rtmp://", "http://", "https://")
MAX_BAD_FRAMES_IN_A_ROW = 30  # after this many consecutive read failures a stream is over
EXPECTED = "expected an image, a video, a folder, a glob, a .txt list of images or a webcam index"


@dataclass
class Source:
    """What to run on: ``kind`` is ``images`` (``paths``), ``video`` or ``webcam`` (``target``)."""

    kind: str
    spec: str
    paths: list[Path] = field(default_factory=list)
    target: str | int = ""

    @property
    def stem(self) -> str:
        """The base name of files written for a video or webcam: ``clip``, ``webcam0``, ``stream``."""
        if self.kind == "webcam":
            return f"webcam{self.target}"
        return Path(str(self.target).split("?")[0]).stem or "stream"


def resolve_source(spec: str | Path | int) -> Source:
    """An image, folder, glob, ``.txt`` list of images, video file, stream URL or webcam index.

    Relative paths in a ``.txt`` list resolve against the list's folder first, then the current
    directory (:func:`yolo.io.resolve_listed`)."""
    text = str(spec).strip()
    if re.fullmatch(r"\d+", text) and not Path(text).exists():
        return Source("webcam", text, target=int(text))
    if text.lower().startswith(STREAM_PREFIXES):
        return Source("video", text, target=text)
    path = Path(text)
    if path.is_dir():
        paths = sorted(p for p in path.iterdir() if p.is_file() and is_image(p))
        if not paths:
            looked = ", ".join(sorted(IMAGE_SUFFIXES)[:6])
            raise DetectError(f"{path}: no images in this folder (looked for {looked} ...)")
        return Source("images", text, paths=paths)
    if path.is_file():
        ext = path.suffix.lower()
        if ext in VIDEO_SUFFIXES:
            return Source("video", text, target=text)
        if ext == ".txt":
            return Source("images", text, paths=read_image_list(path))
        if ext in IMAGE_SUFFIXES:
            return Source("images", text, paths=[path])
        raise DetectError(f"{path}: unknown source type '{ext}' ({EXPECTED})")
    if glob.has_magic(text):
        paths = sorted(Path(p) for p in glob.glob(text, recursive=True) if is_image(Path(p)))
        if not paths:
            raise DetectError(f"'{text}': the pattern matches no images")
        return Source("images", text, paths=paths)
    raise DetectError(f"source not found: '{text}' ({EXPECTED})")


def has_gui() -> bool:
    """Whether this OpenCV build can open windows (opencv-python-headless cannot)."""
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GUI:"):
            return line.split(":", 1)[1].strip().upper() not in ("NONE", "")
    return True


@dataclass
class Frame:
    """One picture of a source. ``image`` is None when it could not be decoded (``error`` says why);
    ``prepared`` is what the reader's ``prepare`` made of it."""

    file: str  # the image's path, or the video, stream or webcam it came from
    index: int | None  # position in a video or stream (decodable or not); None for still images
    image: np.ndarray | None
    prepared: Any = None
    error: str = ""

    @property
    def path(self) -> Path:
        return Path(self.file)


class FrameReader:
    """The frames of a ``Source``, in order. Use as a context manager: closing releases the capture.

    ``prepare`` (e.g. ``Detector.prepare``) runs on each decoded image, in ``pool`` for still images
    (at most ``ahead`` of them in flight: bounded memory on big folders). ``total`` is the number of
    frames when known (0 for a webcam or a stream), ``fps`` the video's rate (30 when unknown).
    """

    def __init__(self, source: Source, prepare: Callable[[np.ndarray], Any] | None = None,
                 pool: Executor | None = None, ahead: int = 8) -> None:
        self.source, self.prepare, self.pool, self.ahead = source, prepare, pool, max(1, ahead)
        self.cap: cv2.VideoCapture | None = None
        self.total, self.fps = len(source.paths), 30.0
        if source.kind != "images":
            self.cap = open_capture(source)
            if source.kind == "video":
                self.total = max(0, int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT)))
            fps = self.cap.get(cv2.CAP_PROP_FPS)
            self.fps = fps if fps and np.isfinite(fps) and 0 < fps < 1000 else 30.0

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None

    def __iter__(self) -> Iterator[Frame]:
        return self._images() if self.source.kind == "images" else self._stream()

    def _load(self, path: Path) -> Frame:
        img, why = imread(path)
        prepared = self.prepare(img) if img is not None and self.prepare is not None else None
        return Frame(str(path), None, img, prepared, why)

    def _images(self) -> Iterator[Frame]:
        if self.pool is None:
            yield from map(self._load, self.source.paths)
        else:
            yield from prefetch(self.pool, self._load, self.source.paths, self.ahead)

    def _stream(self) -> Iterator[Frame]:
        """Read until the end; inside a file of known length a bad frame is yielded (image None) and
        skipped, past its end (or from a webcam, or after too many in a row) the stream is over."""
        assert self.cap is not None
        index, bad_in_a_row = 0, 0
        while True:
            ok, img = self.cap.read()
            if not ok or img is None:
                if not self.total or index >= self.total or bad_in_a_row >= MAX_BAD_FRAMES_IN_A_ROW:
                    return
                bad_in_a_row += 1
                yield Frame(str(self.source.target), index, None, error="undecodable frame")
            else:
                bad_in_a_row = 0
                prepared = self.prepare(img) if self.prepare is not None else None
                yield Frame(str(self.source.target), index, img, prepared)
            index += 1


def prefetch(pool: Executor, fn: Callable[[Any], Any], items: list, depth: int) -> Iterator[Any]:
    """``fn`` over ``items`` in the pool, in order, at most ``depth`` ahead (bounded memory)."""
    queue: deque[Future] = deque()
    it = iter(items)
    for item in it:
        queue.append(pool.submit(fn, item))
        if len(queue) >= depth:
            break
    while queue:
        yield queue.popleft().result()
        for item in it:
            queue.append(pool.submit(fn, item))
            break


def open_capture(source: Source) -> cv2.VideoCapture:
    """An opened ``cv2.VideoCapture``, or a DetectError naming the video or webcam."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # our own message is clearer
    try:
        cap = cv2.VideoCapture(source.target)
    finally:
        cv2.utils.logging.setLogLevel(level)
    if not cap.isOpened():
        what = f"webcam {source.target}" if source.kind == "webcam" else f"video '{source.target}'"
        raise DetectError(f"cannot open {what} (missing, unreadable or no codec for it in OpenCV)")
    return cap
