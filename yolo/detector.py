"""The ``Detector`` Python API: one BGR image (or a list of them) -> ``ndarray[K, 6]`` boxes.

Three steps: ``prepare`` (resize/letterbox by :mod:`yolo.boxes`, checks the input), the engine
(:mod:`yolo.backends`: torch, onnxruntime, OpenCV ..., in the precision asked for; the only place
that knows about the model, its device and its precision; numpy in, numpy out) and post-processing
(score threshold, NMS, boxes mapped back to the original pixels), the same whichever engine runs.
The checks of what it is given live in :mod:`yolo.detect_inputs`.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .backends import BackendError, load_backend
from .boxes import Geometry, fit_image, postprocess, to_array
from .detect_inputs import (
    DATA_DIR,
    DetectError,
    as_batch,
    check_image,
    class_ids,
    default_names_for,
    image_size,
    load_names,
    resolve_names,
)

if TYPE_CHECKING:
    import torch

__all__ = ["DATA_DIR", "DetectError", "Detector", "as_batch", "check_image", "class_ids", "default_names_for",
           "image_size", "load_names", "resolve_names"]


class Detector:
    """A ready-to-run detector: ``Detector(cfg, weights)(bgr_image) -> ndarray[K, 6]``.

    Rows are x1, y1, x2, y2, score, class_id in the original image's pixels, best first.
    Preprocessing follows the cfg's ``letter_box`` (plain resize by default, as Darknet).
    """

    def __init__(self, cfg: str | Path | None, weights: str | Path, names: str | Path | Sequence[str] | None = None,
                 device: "str | torch.device" = "cpu", img_size: int | Sequence[int] | None = None,
                 conf_thres: float = 0.25, nms_thres: float = 0.45, max_det: int = 100,
                 classes: Sequence[int | str] | None = None, half: bool = False, batch_size: int = 16,
                 backend: str | None = None, precision: str | None = None, threads: int | None = None) -> None:
        """``backend``: an engine of :mod:`yolo.backends` (torch, onnxruntime, opencv, openvino; default:
        by the weights file, ``.onnx`` -> onnxruntime, else torch); ``precision``: fp32 (default), bf16,
        fp16 (``half=True`` is fp16) or int8, where the engine and device support it. ``cfg`` may be
        None for a ``.onnx`` of ours. ``backend="auto"`` (what detect.py and test.py default to): the
        engine :mod:`yolo.benchmark` measured fastest for this model, size and machine, else the order
        of :mod:`yolo.backends.auto`; ``self.engine.describe()`` says which and why. ``threads``: CPU
        threads of the engine (default: all cores)."""
        if not 0.0 <= conf_thres <= 1.0 or not 0.0 <= nms_thres <= 1.0:
            raise DetectError(f"conf_thres and nms_thres must lie in [0, 1], got {conf_thres}, {nms_thres}")
        if max_det < 1 or batch_size < 1:
            raise DetectError(f"max_det and batch_size must be positive, got {max_det}, {batch_size}")
        precision = precision or ("fp16" if half else "fp32")
        try:
            self.engine = load_backend(cfg, weights, backend, precision, device, threads=threads, img_size=img_size)
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

    @property
    def stateful(self) -> bool:
        """Whether the model carries a state from one call to the next (a [crnn] tracker)."""
        return self.engine.stateful

    def reset_state(self, carry: bool = True) -> None:
        """A new source starts: the model forgets its state; ``carry=True``: each later call continues
        the one before (the frames of one video, in order, one batch row per stream), ``False`` (a new
        model's default): each call starts afresh (independent images). ``detect_source`` calls it."""
        self.engine.reset_state(carry)

    # --- steps, usable on their own (detect_source decodes and prepares images in threads) -----
    def prepare(self, img: np.ndarray, what: str = "image") -> tuple[np.ndarray, Geometry]:
        """One HWC uint8 image -> network-size image and the geometry to map boxes back."""
        return fit_image(check_image(img, what), self.img_size, self.letter_box)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The engine: ``ndarray[B, 3, H, W]`` float32 RGB in [0, 1] -> raw ``(B, N, 5 + C)``
        float32 predictions in input pixels (:mod:`yolo.backends`; torch only inside its engine)."""
        return self.engine(x)

    def detect_prepared(self, prepared: Sequence[np.ndarray], geometries: Sequence[Geometry],
                        rgb: bool = False) -> list[np.ndarray]:
        """A batch of prepared images -> per image ``ndarray[K, 6]`` in original pixels."""
        if not prepared:
            return []
        pred = self.forward(to_array(list(prepared), bgr=not rgb))
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
