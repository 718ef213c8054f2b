"""What detection over a source leaves behind, and the loop that produces it.

``Outputs`` writes what the user asked for: annotated images (encoded in a thread pool) or one
annotated video, YOLO label files (``class cx cy w h score``, normalised) and one JSON list
(written atomically at the end, so an interrupted run never leaves half a file). ``Summary``
counts what a run did. ``detect_source`` is the loop: frames from :mod:`yolo.sources`, batched
through a :class:`~yolo.detector.Detector`, into ``Outputs``. It lives here rather than in a file
of its own because its whole job is to feed these writers and this summary.
"""
from __future__ import annotations

import json
import logging
import time
from collections import Counter, deque
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from .boxes import box_convert, normalize_boxes
from .detector import DetectError, Detector
from .io import atomic_write
from .plots import draw_detections
from .sources import Frame, FrameReader, Source, has_gui, resolve_source

log = logging.getLogger(__name__)


@dataclass
class Summary:
    """What a run did, for the final message and for callers (benchmarks, tests)."""

    kind: str
    images: int = 0
    skipped: int = 0  # unreadable images
    frames: int = 0
    bad_frames: int = 0  # frames that failed to decode
    resized_frames: int = 0  # video frames of another size than the first, scaled to fit the output video
    detections: int = 0
    seconds: float = 0.0
    per_class: Counter = field(default_factory=Counter)
    output: Path | None = None
    saved: list[Path] = field(default_factory=list)
    interrupted: bool = False

    def count(self, frame: Frame, dets: np.ndarray | None) -> None:
        """One frame done: ``dets`` from the detector, or None when the frame did not decode."""
        still = frame.index is None
        if dets is None:
            if still:
                self.skipped += 1
            else:
                self.bad_frames += 1
            return
        if still:
            self.images += 1
        else:
            self.frames += 1
        self.detections += len(dets)
        self.per_class.update(int(c) for c in dets[:, 5])

    def line(self) -> str:
        n = self.images if self.kind == "images" else self.frames
        unit = "images" if self.kind == "images" else "frames"
        rate = n / self.seconds if self.seconds > 0 else 0.0
        parts = [f"{n} {unit} in {self.seconds:.2f} s ({rate:.1f}/s), {self.detections} detections"]
        if self.skipped:
            parts.append(f"{self.skipped} unreadable image(s) skipped")
        if self.bad_frames:
            parts.append(f"{self.bad_frames} undecodable frame(s) skipped")
        if self.resized_frames:
            parts.append(f"{self.resized_frames} frame(s) of another size scaled to the video's")
        if self.interrupted:
            parts.append("stopped early")
        return ", ".join(parts)


def counts_text(dets: np.ndarray, names: Sequence[str]) -> str:
    """``1 bicycle, 1 dog`` (or ``no detections``), for the per-image line."""
    counts = Counter(int(c) for c in dets[:, 5])
    return ", ".join(f"{n} {names[c]}" for c, n in sorted(counts.items())) or "no detections"


def yolo_label_lines(dets: np.ndarray, hw: tuple[int, int]) -> str:
    """``ndarray[K, 6]`` in pixels -> Darknet label lines ``class cx cy w h score``, normalised."""
    h, w = hw
    xywh = normalize_boxes(box_convert(dets[:, :4].astype(np.float64), "xyxy", "cxcywh"), w, h)
    return "".join(f"{int(c)} {x:.6f} {y:.6f} {bw:.6f} {bh:.6f} {s:.6f}\n"
                   for (x, y, bw, bh), s, c in zip(xywh, dets[:, 4], dets[:, 5]))


def imwrite(path: Path, img: np.ndarray) -> Path:
    if not cv2.imwrite(str(path), img):
        raise DetectError(f"cannot write '{path}' (check the folder is writable and the extension)")
    return path


def annotate_and_write(path: Path, img: np.ndarray, dets: np.ndarray, names: Sequence[str]) -> Path:
    return imwrite(path, draw_detections(img, dets, names, copy=False))


def video_writer(path: Path, fps: float, size_wh: tuple[int, int]) -> tuple[cv2.VideoWriter, Path]:
    """mp4v in .mp4 where OpenCV can write it, MJPG in .avi otherwise."""
    for ext, codec in ((".mp4", "mp4v"), (".avi", "MJPG")):
        target = path.with_suffix(ext)
        vw = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*codec), fps, size_wh)
        if vw.isOpened():
            return vw, target
        vw.release()
    raise DetectError(f"cannot write a video to '{path.parent}' (no usable codec or folder not writable)")


class Outputs:
    """Writes what the user asked for: annotated media, YOLO txt labels, the JSON list.

    Still images are annotated and encoded in ``pool`` (at most ``2 x workers`` waiting, so memory
    stays bounded); video frames go, in order, into one video named after the source. ``saved``
    lists the files written, media first, the JSON list last (after ``close``).
    """

    def __init__(self, output: Path | None, names: Sequence[str], source: Source, fps: float = 30.0,
                 save_media: bool = True, save_txt: bool = False, save_json: bool = False,
                 pool: Executor | None = None, max_pending: int = 2) -> None:
        if output is None and (save_media or save_txt or save_json):
            raise DetectError("an output folder is needed to save results")
        self.output, self.names, self.source, self.fps = output, names, source, fps
        self.save_media, self.save_txt, self.save_json = save_media, save_txt, save_json
        self.pool, self.max_pending = pool, max(1, max_pending)
        self.records: list[dict] = []
        self.saved: list[Path] = []
        self._pending: deque[Future | Path] = deque()
        self._used: set[str] = set()
        self._video: cv2.VideoWriter | None = None
        self._video_wh: tuple[int, int] = (0, 0)
        self.resized_frames = 0  # a stream whose frame size changes midway: frames scaled to the first's
        if output is not None and (save_media or save_txt or save_json):
            output.mkdir(parents=True, exist_ok=True)
            if save_txt:
                (output / "labels").mkdir(exist_ok=True)

    def unique_name(self, path: Path) -> str:
        """``dog.jpg``, then ``dog_2.jpg`` for a second file of that name from another folder."""
        name, n = path.name, 2
        while name in self._used:
            name = f"{path.stem}_{n}{path.suffix}"
            n += 1
        self._used.add(name)
        return name

    def write(self, frame: Frame, dets: np.ndarray, annotated: np.ndarray | None = None) -> None:
        """Everything asked for about one decoded frame; ``annotated`` when the caller drew it already."""
        assert frame.image is not None
        still = frame.index is None
        name = self.unique_name(frame.path) if still else ""
        stem = Path(name).stem if still else f"{self.source.stem}_{frame.index}"
        if self.save_txt:
            assert self.output is not None
            (self.output / "labels" / f"{stem}.txt").write_text(yolo_label_lines(dets, frame.image.shape[:2]))
        if self.save_json:
            self.records.extend(self._json_records(frame, dets))
        if not self.save_media:
            return
        assert self.output is not None
        if not still:
            self._write_video_frame(annotated if annotated is not None else
                                    draw_detections(frame.image, dets, self.names, copy=False))
        elif annotated is not None:
            self._submit(imwrite, self.output / name, annotated)
        else:
            self._submit(annotate_and_write, self.output / name, frame.image, dets, self.names)

    def _json_records(self, frame: Frame, dets: np.ndarray) -> list[dict]:
        records = []
        for x1, y1, x2, y2, s, c in dets.tolist():
            rec = {"file": frame.file, "class_id": int(c), "class_name": self.names[int(c)],
                   "score": round(s, 5), "bbox_xyxy": [round(v, 2) for v in (x1, y1, x2, y2)]}
            if frame.index is not None:
                rec["frame"] = frame.index
            records.append(rec)
        return records

    def _submit(self, fn: Callable[..., Path], *args: object) -> None:
        """Run a write in the pool (or now, without one), keeping at most ``max_pending`` waiting."""
        self._pending.append(self.pool.submit(fn, *args) if self.pool is not None else fn(*args))
        while len(self._pending) > self.max_pending:
            self._collect()

    def _collect(self) -> None:
        done = self._pending.popleft()
        self.saved.append(done.result() if isinstance(done, Future) else done)

    def _write_video_frame(self, annotated: np.ndarray) -> None:
        if self._video is None:
            assert self.output is not None
            size_wh = (annotated.shape[1], annotated.shape[0])
            self._video, target = video_writer(self.output / self.source.stem, self.fps, size_wh)
            self._video_wh = size_wh
            self.saved.append(target)
        if (annotated.shape[1], annotated.shape[0]) != self._video_wh:
            # a video file has one frame size; OpenCV's writer silently drops frames of another
            if not self.resized_frames:
                log.warning("warning: %s: the frame size changed from %dx%d to %dx%d; frames are scaled to "
                            "the first size in the output video", self.source.spec, *self._video_wh,
                            annotated.shape[1], annotated.shape[0])
            self.resized_frames += 1
            annotated = cv2.resize(annotated, self._video_wh, interpolation=cv2.INTER_AREA)
        self._video.write(annotated)

    def close(self) -> list[Path]:
        """Finish pending writes, close the video, write the JSON list; returns ``saved``."""
        try:
            while self._pending:
                self._collect()
        finally:
            if self._video is not None:
                self._video.release()
                self._video = None
            if self.save_json and self.output is not None:
                path = self.output / "detections.json"
                with atomic_write(path, "w") as f:
                    json.dump(self.records, f, indent=1)
                self.saved.append(path)
        return self.saved


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------
def detect_source(detector: Detector, source: Source | str | int, output: str | Path | None = None,
                  save: bool = True, save_txt: bool = False, save_json: bool = False, view: bool = False,
                  batch_size: int = 8, workers: int = 2, progress: bool = True, verbose: bool = True
                  ) -> Summary:
    """Run ``detector`` over ``source`` and write results under ``output``; returns a ``Summary``.

    Ctrl-C stops a webcam cleanly (the video and the JSON list are closed and the summary says
    "stopped early"); anywhere else it propagates, after the same clean-up.
    """
    if not isinstance(source, Source):
        source = resolve_source(source)
    if view and not has_gui():
        raise DetectError("--view needs an OpenCV build with a GUI, and this one has none "
                          "(opencv-python-headless); install opencv-python or leave out --view")
    out_dir = Path(output) if output is not None else None
    # a recurrent model ([crnn]): each frame of a video continues the state of the one before, one frame a
    # forward; still images are each a source of their own (no state carried between them)
    stream = False
    if getattr(detector, "stateful", False):
        stream = source.kind != "images"
        detector.reset_state(carry=stream)
    batch_size = 1 if source.kind == "webcam" or stream else max(1, batch_size)  # a webcam wants latency
    workers = max(0, workers)
    summary = Summary(source.kind, output=out_dir)
    start = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=workers) if workers else nullcontext() as pool, \
                FrameReader(source, detector.prepare, pool, ahead=batch_size + 2 * max(1, workers)) as reader:
            outputs = Outputs(out_dir, detector.names, source, reader.fps, save, save_txt, save_json,
                              pool, max_pending=2 * max(1, workers))
            try:
                _run(detector, reader, outputs, summary, view, batch_size, progress, verbose)
            finally:
                summary.saved = outputs.close()
                summary.resized_frames = outputs.resized_frames
    except KeyboardInterrupt:
        summary.interrupted = True
        if source.kind != "webcam":
            raise
    finally:
        summary.seconds = time.perf_counter() - start
        if view:
            cv2.destroyAllWindows()
    return summary


def _run(detector: Detector, reader: FrameReader, outputs: Outputs, summary: Summary, view: bool,
         batch_size: int, progress: bool, verbose: bool) -> None:
    """Frames -> batches -> detections -> outputs, until the source ends or the user quits the window."""
    still = reader.source.kind == "images"
    if reader.source.kind == "webcam":
        log.warning("webcam %s: %s to stop", reader.source.target,
                    "press q in the window or Ctrl-C" if view else "press Ctrl-C")
    # on a terminal only (disable=None): in a log the bar's carriage returns tear the per-image lines
    bar = tqdm(total=reader.total or None, unit="img" if still else "frame", disable=None if progress else True,
               leave=False)
    batch: list[Frame] = []
    try:
        for frame in reader:
            if frame.image is None:
                bar.update(1)
                summary.count(frame, None)
                if still:
                    log.warning("warning: cannot read image '%s': %s; skipped", frame.file, frame.error)
                continue
            batch.append(frame)
            if len(batch) >= batch_size and not _flush(detector, batch, outputs, summary, view, verbose, bar):
                return
        if batch:
            _flush(detector, batch, outputs, summary, view, verbose, bar)
    finally:
        bar.close()


def _flush(detector: Detector, batch: list[Frame], outputs: Outputs, summary: Summary, view: bool,
           verbose: bool, bar: tqdm) -> bool:
    """Detect on a batch of frames and write the results; False when the user closed the window."""
    dets = detector.detect_prepared([f.prepared[0] for f in batch], [f.prepared[1] for f in batch])
    keep_going = True
    for frame, d in zip(batch, dets):
        summary.count(frame, d)
        bar.update(1)  # counted when detected, not when read ahead
        if verbose and frame.index is None:
            bar.write(f"{frame.file}: {counts_text(d, detector.names)}")
        annotated = draw_detections(frame.image, d, detector.names, copy=False) if view else None
        outputs.write(frame, d, annotated)
        if annotated is not None and keep_going:
            still = frame.index is None
            keep_going = _show("detect" if still else f"detect: {outputs.source.spec}", annotated,
                               0 if still else 1)
    batch.clear()
    return keep_going


def _show(name: str, img: np.ndarray, wait_ms: int) -> bool:
    """Show a frame; False when the user pressed q (or Esc)."""
    cv2.imshow(name, img)
    return (cv2.waitKey(wait_ms) & 0xFF) not in (ord("q"), 27)
