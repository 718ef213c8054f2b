"""Inference: the ``Detector`` API, and running it over images, folders, lists, videos and webcams.

``Detector`` owns the model (fused, under ``torch.inference_mode``) and the pixel geometry;
``resolve_source`` turns what the user typed into a ``Source``; ``detect_source`` runs a
detector over a source and writes annotated images/videos, YOLO label files and a JSON list.
The command line (``yolo/cli/detect.py``) only parses arguments and calls these.
"""
from __future__ import annotations

import glob
import json
import logging
import re
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

import cv2
import numpy as np
import torch
from tqdm import tqdm

from .boxes import Geometry, box_convert, fit_image, normalize_boxes, postprocess, to_tensor
from .cfg import REPO_ROOT, resolve_path
from .checkpoint import load_weights
from .io import IMAGE_SUFFIXES, VIDEO_SUFFIXES, imread, is_image, read_image_list, read_names
from .plots import draw_detections
from .model import Darknet

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

STREAM_PREFIXES = ("rtsp://", "rtmp://", "http://", "https://")
DATA_DIR = REPO_ROOT / "data"
MAX_BAD_FRAMES_IN_A_ROW = 30  # after this many consecutive read failures a stream is over


class DetectError(ValueError):
    """Bad input to detection (names, sizes, sources, images); the message says what was expected."""


# --------------------------------------------------------------------------------------------
# The API
# --------------------------------------------------------------------------------------------
def load_names(path: str | Path) -> list[str]:
    """A names file given by path or by its name in ``data/``."""
    return read_names(resolve_path(path, DATA_DIR, "names file"))


def _size_hw(img_size: int | Sequence[int] | None, default: tuple[int, int], stride: int) -> tuple[int, int]:
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


class Detector:
    """A ready-to-run detector: ``Detector(cfg, weights)(bgr_image) -> ndarray[K, 6]``.

    Rows are x1, y1, x2, y2, score, class_id in the original image's pixels, best first.
    Preprocessing follows the cfg's ``letter_box`` (plain resize by default, as Darknet).
    """

    def __init__(self, cfg: str | Path, weights: str | Path, names: str | Path | Sequence[str] | None = None,
                 device: str | torch.device = "cpu", img_size: int | Sequence[int] | None = None,
                 conf_thres: float = 0.25, nms_thres: float = 0.45, max_det: int = 100,
                 classes: Sequence[int | str] | None = None, half: bool = False, batch_size: int = 16) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise DetectError(f"device '{device}': CUDA is not available here; use device='cpu'")
        if half and self.device.type != "cuda":
            raise DetectError(f"half precision needs a CUDA device (got device '{self.device}'); "
                              "fp16 convolutions on CPU are unsupported or slow")
        if not 0.0 <= conf_thres <= 1.0 or not 0.0 <= nms_thres <= 1.0:
            raise DetectError(f"conf_thres and nms_thres must lie in [0, 1], got {conf_thres}, {nms_thres}")
        if max_det < 1 or batch_size < 1:
            raise DetectError(f"max_det and batch_size must be positive, got {max_det}, {batch_size}")
        model = Darknet(cfg)
        state = load_weights(model, weights)
        self.model = model.fuse().to(self.device)
        if half:
            self.model.half()
        self.half = half
        self.num_classes = model.num_classes
        self.names = self._names(names, state.get("names"), cfg)
        self.img_size = _size_hw(img_size, model.input_size, model.max_stride)
        self.letter_box = bool(model.net.letter_box)
        self.conf_thres, self.nms_thres, self.max_det = float(conf_thres), float(nms_thres), int(max_det)
        self.batch_size = int(batch_size)
        self.classes = self._class_ids(classes)

    def _names(self, names: str | Path | Sequence[str] | None, saved: object, cfg: str | Path) -> list[str]:
        where = "names"
        if names is None:
            default = _default_names_for(self.num_classes)
            if isinstance(saved, (list, tuple)) and saved:
                names, where = list(saved), "the checkpoint's names"
            elif default is not None:
                return load_names(default)
            else:
                return [str(i) for i in range(self.num_classes)]
        elif isinstance(names, (str, Path)):
            where = str(names)
            names = load_names(names)
        names = [str(n) for n in names]
        if len(names) != self.num_classes:
            raise DetectError(f"{where}: {len(names)} class names, but {Path(cfg).name} has "
                              f"{self.num_classes} classes: use the names file the model was trained with")
        return names

    def _class_ids(self, classes: Sequence[int | str] | None) -> list[int] | None:
        """Class ids or names (case-insensitive) -> checked ids; None keeps every class."""
        if classes is None:
            return None
        lookup = {n.lower(): i for i, n in enumerate(self.names)}
        ids = []
        for c in classes:
            if isinstance(c, str) and not c.strip().isdigit():
                if c.strip().lower() not in lookup:
                    raise DetectError(f"classes: '{c}' is not a class name of this model")
                ids.append(lookup[c.strip().lower()])
            elif not 0 <= int(c) < self.num_classes:
                raise DetectError(f"classes: {int(c)} is out of range: the model has classes 0..{self.num_classes - 1}")
            else:
                ids.append(int(c))
        return ids

    # --- steps, usable on their own (the CLI decodes and prepares images in threads) -------------
    def prepare(self, img: np.ndarray) -> tuple[np.ndarray, Geometry]:
        """One HWC uint8 image -> network-size image and the geometry to map boxes back."""
        return fit_image(_check_image(img), self.img_size, self.letter_box)

    @torch.inference_mode()
    def detect_prepared(self, prepared: Sequence[np.ndarray], geometries: Sequence[Geometry],
                        rgb: bool = False) -> list[np.ndarray]:
        """A batch of prepared images -> per image ``ndarray[K, 6]`` in original pixels."""
        if not prepared:
            return []
        x = to_tensor(list(prepared), bgr=not rgb).to(self.device, non_blocking=True)
        if self.half:
            x = x.half()
        pred = self.model(x)
        dets = postprocess(pred, self.conf_thres, self.nms_thres, self.max_det, self.classes)
        for d, geometry in zip(dets, geometries):
            d[:, :4] = geometry.to_original(d[:, :4])
        return dets

    def __call__(self, images: np.ndarray | Sequence[np.ndarray], rgb: bool = False
                 ) -> np.ndarray | list[np.ndarray]:
        """Detect on one image (-> ``ndarray[K, 6]``) or a list of images (-> a list of them).

        Images are HWC uint8, BGR as OpenCV reads them (``rgb=True`` for RGB arrays); grey and
        4-channel images are accepted too.
        """
        single = isinstance(images, np.ndarray) and images.ndim in (2, 3)
        batch = [images] if single else list(images)
        out: list[np.ndarray] = []
        if not batch:
            return out
        for i in range(0, len(batch), self.batch_size):
            prepared, geometries = zip(*(self.prepare(img) for img in batch[i:i + self.batch_size]))
            out.extend(self.detect_prepared(prepared, geometries, rgb=rgb))
        return out[0] if single else out


def _check_image(img: np.ndarray) -> np.ndarray:
    """HWC uint8 with 3 channels; grey and BGRA are converted, anything else refused."""
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
        kind = img.dtype if isinstance(img, np.ndarray) else type(img).__name__
        raise DetectError(f"expected an image as a uint8 numpy array (H, W, 3), got {kind}")
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim == 3 and img.shape[2] == 4:
        return np.ascontiguousarray(img[..., :3])
    if img.ndim != 3 or img.shape[2] != 3 or min(img.shape[:2]) < 1:
        raise DetectError(f"expected an image of shape (H, W, 3), got {img.shape}")
    return img


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------
@dataclass
class Source:
    """What to run on: ``kind`` is ``images`` (``paths``), ``video`` or ``webcam`` (``target``)."""

    kind: str
    spec: str
    paths: list[Path] = field(default_factory=list)
    target: str | int = ""


def resolve_source(spec: str | Path | int) -> Source:
    """An image, folder, glob, ``.txt`` list of images, video file, stream URL or webcam index."""
    text = str(spec).strip()
    if re.fullmatch(r"\d+", text) and not Path(text).exists():
        return Source("webcam", text, target=int(text))
    if text.lower().startswith(STREAM_PREFIXES):
        return Source("video", text, target=text)
    path = Path(text)
    if path.is_dir():
        paths = sorted(p for p in path.iterdir() if p.is_file() and is_image(p))
        if not paths:
            raise DetectError(f"{path}: no images in this folder (looked for {', '.join(sorted(IMAGE_SUFFIXES)[:6])} ...)")
        return Source("images", text, paths=paths)
    if path.is_file():
        ext = path.suffix.lower()
        if ext in VIDEO_SUFFIXES:
            return Source("video", text, target=text)
        if ext == ".txt":
            return Source("images", text, paths=read_image_list(path))
        if ext in IMAGE_SUFFIXES:
            return Source("images", text, paths=[path])
        raise DetectError(f"{path}: unknown source type '{ext}' (expected an image, a video, a folder, "
                          "a glob, a .txt list of images or a webcam index)")
    if glob.has_magic(text):
        paths = sorted(Path(p) for p in glob.glob(text, recursive=True) if is_image(Path(p)))
        if not paths:
            raise DetectError(f"'{text}': the pattern matches no images")
        return Source("images", text, paths=paths)
    raise DetectError(f"source not found: '{text}' (expected an image, a video, a folder, a glob, "
                      "a .txt list of images or a webcam index)")


def has_gui() -> bool:
    """Whether this OpenCV build can open windows (opencv-python-headless cannot)."""
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GUI:"):
            return line.split(":", 1)[1].strip().upper() not in ("NONE", "")
    return True


# --------------------------------------------------------------------------------------------
# Running over a source
# --------------------------------------------------------------------------------------------
@dataclass
class Summary:
    """What a run did, for the final message and for callers (benchmarks, tests)."""

    kind: str
    images: int = 0
    skipped: int = 0  # unreadable images
    frames: int = 0
    bad_frames: int = 0  # frames that failed to decode
    detections: int = 0
    seconds: float = 0.0
    per_class: Counter = field(default_factory=Counter)
    output: Path | None = None
    saved: list[Path] = field(default_factory=list)
    interrupted: bool = False

    def line(self) -> str:
        n = self.images if self.kind == "images" else self.frames
        unit = "images" if self.kind == "images" else "frames"
        rate = n / self.seconds if self.seconds > 0 else 0.0
        parts = [f"{n} {unit} in {self.seconds:.2f} s ({rate:.1f}/s), {self.detections} detections"]
        if self.skipped:
            parts.append(f"{self.skipped} unreadable image(s) skipped")
        if self.bad_frames:
            parts.append(f"{self.bad_frames} undecodable frame(s) skipped")
        if self.interrupted:
            parts.append("stopped early")
        return ", ".join(parts)


def _counts_text(dets: np.ndarray, names: Sequence[str]) -> str:
    counts = Counter(int(c) for c in dets[:, 5])
    return ", ".join(f"{n} {names[c]}" for c, n in sorted(counts.items())) or "no detections"


class _Writer:
    """Writes what the user asked for: annotated media, YOLO txt labels, the JSON list."""

    def __init__(self, detector: Detector, output: Path | None, save_media: bool, save_txt: bool,
                 save_json: bool) -> None:
        self.detector, self.names = detector, detector.names
        self.output, self.save_media, self.save_txt, self.save_json = output, save_media, save_txt, save_json
        self.records: list[dict] = []
        self._used: set[str] = set()
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

    def record(self, file: str, dets: np.ndarray, hw: tuple[int, int], stem: str, frame: int | None = None) -> None:
        if self.save_txt:
            h, w = hw
            xywh = normalize_boxes(box_convert(dets[:, :4].astype(np.float64), "xyxy", "cxcywh"), w, h)
            lines = [f"{int(c)} {x:.6f} {y:.6f} {bw:.6f} {bh:.6f} {s:.6f}"
                     for (x, y, bw, bh), s, c in zip(xywh, dets[:, 4], dets[:, 5])]
            (self.output / "labels" / f"{stem}.txt").write_text("".join(l + "\n" for l in lines))
        if self.save_json:
            for x1, y1, x2, y2, s, c in dets.tolist():
                rec = {"file": file, "class_id": int(c), "class_name": self.names[int(c)],
                       "score": round(s, 5), "bbox_xyxy": [round(v, 2) for v in (x1, y1, x2, y2)]}
                if frame is not None:
                    rec["frame"] = frame
                self.records.append(rec)

    def close(self) -> Path | None:
        if self.save_json and self.output is not None:
            path = self.output / "detections.json"
            path.write_text(json.dumps(self.records, indent=1))
            return path
        return None


def _load_and_prepare(detector: Detector, path: Path) -> tuple[np.ndarray | None, np.ndarray | None,
                                                                Geometry | None]:
    img, _ = imread(path)
    if img is None:
        return None, None, None
    prepared, geometry = detector.prepare(img)
    return img, prepared, geometry


def _prefetch(pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Sequence[T], depth: int) -> Iterator[R]:
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


def detect_source(detector: Detector, source: Source | str | int, output: str | Path | None = None,
                  save: bool = True, save_txt: bool = False, save_json: bool = False, view: bool = False,
                  batch_size: int = 8, workers: int = 2, progress: bool = True, verbose: bool = True
                  ) -> Summary:
    """Run ``detector`` over ``source`` and write results under ``output``; returns a ``Summary``."""
    if not isinstance(source, Source):
        source = resolve_source(source)
    if view and not has_gui():
        raise DetectError("--view needs an OpenCV build with a GUI, and this one has none "
                          "(opencv-python-headless); install opencv-python or leave out --view")
    if output is None and (save or save_txt or save_json):
        raise DetectError("an output folder is needed to save results")
    out_dir = Path(output) if output is not None else None
    writer = _Writer(detector, out_dir, save, save_txt, save_json)
    summary = Summary(source.kind, output=out_dir)
    start = time.perf_counter()
    try:
        if source.kind == "images":
            _run_images(detector, source, writer, summary, view, max(1, batch_size), max(0, workers),
                        progress, verbose)
        else:
            _run_stream(detector, source, writer, summary, view, max(1, batch_size), progress)
    except KeyboardInterrupt:
        summary.interrupted = True
        if source.kind != "webcam":
            raise
    finally:
        summary.seconds = time.perf_counter() - start
        json_path = writer.close()
        if json_path is not None:
            summary.saved.append(json_path)
        if view:
            cv2.destroyAllWindows()
    return summary


def _show(name: str, img: np.ndarray, wait_ms: int) -> bool:
    """Show a frame; False when the user pressed q (or Esc)."""
    cv2.imshow(name, img)
    return (cv2.waitKey(wait_ms) & 0xFF) not in (ord("q"), 27)


def _run_images(detector: Detector, source: Source, writer: _Writer, summary: Summary, view: bool,
                batch_size: int, workers: int, progress: bool, verbose: bool) -> None:
    bar = tqdm(total=len(source.paths), unit="img", disable=not progress, leave=False)
    # decode + resize in threads (OpenCV releases the GIL); annotate + encode there too
    with (ThreadPoolExecutor(max_workers=workers) if workers else _InlinePool()) as pool:
        pending: deque[Future] = deque()  # annotate + encode + write, in the pool
        loaded = _prefetch(pool, lambda p: (p, *_load_and_prepare(detector, p)), source.paths,
                           depth=batch_size + 2 * max(1, workers))
        batch: list[tuple[Path, np.ndarray, np.ndarray, Geometry]] = []
        stop = False

        def flush() -> bool:
            dets = detector.detect_prepared([b[2] for b in batch], [b[3] for b in batch])
            keep_going = True
            for (path, img, _, _), d in zip(batch, dets):
                name = writer.unique_name(path)
                summary.images += 1
                summary.detections += len(d)
                summary.per_class.update(int(c) for c in d[:, 5])
                writer.record(str(path), d, img.shape[:2], Path(name).stem)
                if verbose:
                    bar.write(f"{path}: {_counts_text(d, detector.names)}")
                if view:
                    annotated = draw_detections(img, d, detector.names, copy=False)
                    keep_going = keep_going and _show("detect", annotated, 0)
                    if writer.save_media:
                        pending.append(pool.submit(_imwrite, writer.output / name, annotated))
                elif writer.save_media:
                    pending.append(pool.submit(_annotate_and_write, writer.output / name, img, d,
                                               detector.names))
            batch.clear()
            while len(pending) > 2 * max(1, workers):  # bounded memory on big folders
                summary.saved.append(pending.popleft().result())
            return keep_going

        for path, img, prepared, geometry in loaded:
            bar.update(1)
            if img is None:
                summary.skipped += 1
                log.warning("warning: cannot read image '%s' (missing, empty or not an image): skipped", path)
                continue
            batch.append((path, img, prepared, geometry))
            if len(batch) >= batch_size and not flush():
                stop = True
                break
        if batch and not stop:
            flush()
        while pending:
            summary.saved.append(pending.popleft().result())
    bar.close()


class _InlinePool(ThreadPoolExecutor):
    """``workers=0``: run each task at once in the calling thread (no threads competing with torch's)."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)

    def submit(self, fn: Callable, /, *args, **kwargs) -> Future:  # type: ignore[override]
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as e:  # delivered through .result(), as a pool would
            future.set_exception(e)
        return future


def _annotate_and_write(path: Path, img: np.ndarray, dets: np.ndarray, names: Sequence[str]) -> Path:
    return _imwrite(path, draw_detections(img, dets, names, copy=False))


def _imwrite(path: Path, img: np.ndarray) -> Path:
    if not cv2.imwrite(str(path), img):
        raise DetectError(f"cannot write '{path}' (check the folder is writable and the extension)")
    return path


def _open_capture(source: Source) -> cv2.VideoCapture:
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


def _video_writer(path: Path, fps: float, size_wh: tuple[int, int]) -> tuple[cv2.VideoWriter, Path]:
    """mp4v in .mp4 where OpenCV can write it, MJPG in .avi otherwise."""
    for ext, codec in ((".mp4", "mp4v"), (".avi", "MJPG")):
        target = path.with_suffix(ext)
        vw = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*codec), fps, size_wh)
        if vw.isOpened():
            return vw, target
        vw.release()
    raise DetectError(f"cannot write a video to '{path.parent}' (no usable codec or folder not writable)")


def _run_stream(detector: Detector, source: Source, writer: _Writer, summary: Summary, view: bool,
                batch_size: int, progress: bool) -> None:
    cap = _open_capture(source)
    webcam = source.kind == "webcam"
    if webcam:
        batch_size = 1  # latency over throughput
        log.warning("webcam %s: %s to stop", source.target,
                    "press q in the window or Ctrl-C" if view else "press Ctrl-C")
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if not webcam else 0
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = fps if fps and np.isfinite(fps) and 0 < fps < 1000 else 30.0
    stem = f"webcam{source.target}" if webcam else Path(str(source.target).split("?")[0]).stem or "stream"
    vw: cv2.VideoWriter | None = None
    bar = tqdm(total=total or None, unit="frame", disable=not progress, leave=False)
    frames: list[tuple[int, np.ndarray]] = []
    prepared: list[tuple[np.ndarray, Geometry]] = []
    index = 0  # position in the stream, decodable or not
    bad_in_a_row = 0

    def flush() -> bool:
        nonlocal vw
        dets = detector.detect_prepared([p[0] for p in prepared], [p[1] for p in prepared])
        keep_going = True
        for (i, frame), d in zip(frames, dets):
            summary.frames += 1
            summary.detections += len(d)
            summary.per_class.update(int(c) for c in d[:, 5])
            writer.record(str(source.target), d, frame.shape[:2], f"{stem}_{i}", frame=i)
            if writer.save_media or view:
                annotated = draw_detections(frame, d, detector.names, copy=False)
                if writer.save_media:
                    if vw is None:
                        vw, target = _video_writer(writer.output / stem, fps, (frame.shape[1], frame.shape[0]))
                        summary.saved.append(target)
                    vw.write(annotated)
                if view and keep_going and not _show(f"detect: {source.spec}", annotated, 1):
                    keep_going = False
        frames.clear()
        prepared.clear()
        return keep_going

    try:
        while True:
            ok, frame = cap.read()
            if not ok or frame is None:
                # past the end (or a dead camera): stop; inside the file: a bad frame, skip it
                if webcam or (total and index >= total) or not total or bad_in_a_row >= MAX_BAD_FRAMES_IN_A_ROW:
                    break
                summary.bad_frames += 1
                bad_in_a_row += 1
                index += 1
                bar.update(1)
                continue
            bad_in_a_row = 0
            frames.append((index, frame))
            prepared.append(detector.prepare(frame))
            index += 1
            bar.update(1)
            if len(frames) >= batch_size and not flush():
                break
        if frames:
            flush()
    finally:
        bar.close()
        cap.release()
        if vw is not None:
            vw.release()


def _default_names_for(num_classes: int) -> Path | None:
    """data/coco.names for an 80-class model when the user gave no names (the shipped default)."""
    path = DATA_DIR / "coco.names"
    return path if num_classes == 80 and path.exists() else None
