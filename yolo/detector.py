"""The ``Detector`` Python API: one BGR image (or a list of them) -> ``ndarray[K, 6]`` boxes.

Three steps: ``prepare`` (resize/letterbox by :mod:`yolo.boxes`, checks the input), the engine
(:mod:`yolo.backends`: torch or onnxruntime, in the precision asked for; the only place that knows
about the model, its device and its precision) and post-processing (score threshold, NMS, boxes
mapped back to the original pixels), the same whichever engine runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from .backends import BackendError, load_backend
from .boxes import Geometry, fit_image, postprocess, to_tensor
from .cfg import REPO_ROOT, resolve_path
from .io import read_names

DATA_DIR = REPO_ROOT / "data"


class DetectError(ValueError):
    """Bad input to detection (names, sizes, sources, images); the message says what was expected."""


def load_names(path: str | Path) -> list[str]:
    """A names file given by path or by its name in ``data/``."""
    return read_names(resolve_path(path, DATA_DIR, "names file"))


def default_names_for(num_classes: int) -> Path | None:
    """data/coco.names for an 80-class model when the user gave no names (the shipped default)."""
    path = DATA_DIR / "coco.names"
    return path if num_classes == 80 and path.exists() else None


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


class Detector:
    """A ready-to-run detector: ``Detector(cfg, weights)(bgr_image) -> ndarray[K, 6]``.

    Rows are x1, y1, x2, y2, score, class_id in the original image's pixels, best first.
    Preprocessing follows the cfg's ``letter_box`` (plain resize by default, as Darknet).
    """

    def __init__(self, cfg: str | Path | None, weights: str | Path, names: str | Path | Sequence[str] | None = None,
                 device: str | torch.device = "cpu", img_size: int | Sequence[int] | None = None,
                 conf_thres: float = 0.25, nms_thres: float = 0.45, max_det: int = 100,
                 classes: Sequence[int | str] | None = None, half: bool = False, batch_size: int = 16,
                 backend: str | None = None, precision: str | None = None) -> None:
        """``backend``: ``torch`` or ``onnxruntime`` (default: by the weights file, ``.onnx`` ->
        onnxruntime); ``precision``: fp32 (default), bf16, fp16 (``half=True`` is fp16) or int8,
        where the engine and device support it. ``cfg`` may be None for a ``.onnx`` of ours."""
        if not 0.0 <= conf_thres <= 1.0 or not 0.0 <= nms_thres <= 1.0:
            raise DetectError(f"conf_thres and nms_thres must lie in [0, 1], got {conf_thres}, {nms_thres}")
        if max_det < 1 or batch_size < 1:
            raise DetectError(f"max_det and batch_size must be positive, got {max_det}, {batch_size}")
        precision = precision or ("fp16" if half else "fp32")
        try:
            self.engine = load_backend(cfg, weights, backend, precision, device)
        except BackendError as e:
            raise DetectError(str(e)) from None
        info = self.engine.info
        self.num_classes = info.num_classes
        self.names = resolve_names(names, info.names, self.num_classes, cfg or weights)
        self.img_size = image_size(img_size, info.input_size, info.max_stride)
        self.letter_box = info.letter_box
        self.conf_thres, self.nms_thres, self.max_det = float(conf_thres), float(nms_thres), int(max_det)
        self.batch_size = int(batch_size)
        self.classes = class_ids(classes, self.names)

    # --- steps, usable on their own (detect_source decodes and prepares images in threads) -----
    def prepare(self, img: np.ndarray, what: str = "image") -> tuple[np.ndarray, Geometry]:
        """One HWC uint8 image -> network-size image and the geometry to map boxes back."""
        return fit_image(check_image(img, what), self.img_size, self.letter_box)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The engine: ``Tensor[B, 3, H, W]`` RGB in [0, 1] on the CPU -> raw ``(B, N, 5 + C)``
        float32 predictions in input pixels (:mod:`yolo.backends`)."""
        return self.engine(x)

    @torch.inference_mode()
    def detect_prepared(self, prepared: Sequence[np.ndarray], geometries: Sequence[Geometry],
                        rgb: bool = False) -> list[np.ndarray]:
        """A batch of prepared images -> per image ``ndarray[K, 6]`` in original pixels."""
        if not prepared:
            return []
        pred = self.forward(to_tensor(list(prepared), bgr=not rgb))
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
        batch, single = as_batch(images)
        out: list[np.ndarray] = []
        for i in range(0, len(batch), self.batch_size):
            chunk = batch[i:i + self.batch_size]
            prepared, geometries = zip(*(self.prepare(img, "image" if single else f"image {i + j}")
                                         for j, img in enumerate(chunk)))
            out.extend(self.detect_prepared(prepared, geometries, rgb=rgb))
        return out[0] if single else out
