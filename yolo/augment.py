"""Training data: Darknet-style augmentation over the dataset layer's ImageRecords, and collate.

Per sample (``load_data_detection`` in Darknet): a random crop window whose sides move by up
to ``jitter`` of the image size (scale, aspect and translation at once), resized to the input
(plain resize or, with ``letter_box``, keeping the aspect), an optional rotation by up to
``angle`` degrees, a horizontal flip, and HSV jitter (``hue``, ``saturation``, ``exposure``).
With ``mosaic`` four images fill the four quadrants around a random centre. Boxes follow the
image; boxes smaller than ``MIN_BOX_PX`` after clipping are dropped; crowd boxes are not
trained on. Randomness comes from ``(seed, epoch, index)``, so a sample is the same with any
number of workers and after a resume.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .boxes import LETTERBOX_FILL, box_convert, denormalize_boxes, fit_image, normalize_boxes, placement

MIN_BOX_PX = 2.0


@dataclass
class AugmentConfig:
    """The augmentation knobs, from [net] and [yolo] (``jitter``), overridable on the command line."""

    jitter: float = 0.0
    hue: float = 0.0
    saturation: float = 1.0
    exposure: float = 1.0
    angle: float = 0.0
    flip: bool = False
    mosaic: bool = False
    letter_box: bool = False

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> "AugmentConfig":
        net = model.net
        jitter = max((layer.jitter for layer in model.yolo_layers), default=0.0)
        return cls(jitter=jitter, hue=net.hue, saturation=net.saturation, exposure=net.exposure,
                   angle=net.angle, flip=net.flip, mosaic=net.mosaic, letter_box=net.letter_box)


def _rand_scale(rng: np.random.Generator, s: float) -> float:
    """Darknet's rand_scale: a factor in [1, s], inverted half of the time."""
    s = max(s, 1.0 / s) if s > 0 else 1.0
    f = rng.uniform(1.0, s)
    return f if rng.random() < 0.5 else 1.0 / f


def hsv_jitter(img: np.ndarray, hue: float, saturation: float, exposure: float,
               rng: np.random.Generator) -> np.ndarray:
    """Shift hue by up to ``hue`` (fraction of the circle), scale saturation and value (BGR uint8)."""
    dh = rng.uniform(-hue, hue) if hue > 0 else 0.0
    ds, dv = _rand_scale(rng, saturation), _rand_scale(rng, exposure)
    if dh == 0 and ds == 1 and dv == 1:
        return img
    h, s, v = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=np.float32)
    lut_h = ((x + dh * 180) % 180).astype(np.uint8)  # OpenCV hue is 0..179
    lut_s = np.clip(x * ds, 0, 255).astype(np.uint8)
    lut_v = np.clip(x * dv, 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(h, lut_h), cv2.LUT(s, lut_s), cv2.LUT(v, lut_v)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def random_place(img: np.ndarray, boxes: np.ndarray, out_wh: tuple[int, int], cfg: AugmentConfig,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random crop window (jitter) of ``img`` resized to ``out_wh``, rotated and flipped.

    ``boxes`` are x1, y1, x2, y2 in ``img`` pixels; returns the new image and its boxes in
    output pixels, clipped, with degenerate ones removed (the keep mask is applied to rows).
    """
    h0, w0 = img.shape[:2]
    out_w, out_h = out_wh
    dw, dh = cfg.jitter * w0, cfg.jitter * h0
    left, right = rng.uniform(-dw, dw), rng.uniform(-dw, dw)
    top, bottom = rng.uniform(-dh, dh), rng.uniform(-dh, dh)
    crop_w, crop_h = max(w0 - left - right, 1.0), max(h0 - top - bottom, 1.0)
    nw, nh, px, py = placement((crop_w, crop_h), (out_w, out_h), cfg.letter_box)  # inference's rule
    sx, sy = nw / crop_w, nh / crop_h
    tx, ty = px - left * sx, py - top * sy
    m = np.array([[sx, 0, tx], [0, sy, ty]], dtype=np.float64)
    if cfg.angle:
        a = rng.uniform(-cfg.angle, cfg.angle)
        r = cv2.getRotationMatrix2D((out_w / 2, out_h / 2), a, 1.0)
        m = r @ np.vstack((m, [0, 0, 1]))
    if cfg.flip and rng.random() < 0.5:
        m = np.array([[-1, 0, out_w], [0, 1, 0]], dtype=np.float64) @ np.vstack((m, [0, 0, 1]))
    out = cv2.warpAffine(img, m, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=(LETTERBOX_FILL,) * 3)
    return out, transform_boxes(boxes, m, out_wh)


def transform_boxes(boxes: np.ndarray, m: np.ndarray, out_wh: tuple[int, int]) -> np.ndarray:
    """Boxes ``[N, 4+]`` (x1 y1 x2 y2, extra columns kept) through the 2x3 affine ``m``; enclosing
    box of the four moved corners, clipped to the output; boxes under MIN_BOX_PX dropped."""
    if not len(boxes):
        return boxes.reshape(0, boxes.shape[1] if boxes.ndim == 2 else 4)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    corners = np.stack([np.stack((x1, y1), 1), np.stack((x2, y1), 1), np.stack((x1, y2), 1),
                        np.stack((x2, y2), 1)], 1)  # (N, 4, 2)
    moved = corners @ m[:, :2].T + m[:, 2]
    out = boxes.astype(np.float32, copy=True)
    out[:, 0] = moved[..., 0].min(1).clip(0, out_wh[0])
    out[:, 2] = moved[..., 0].max(1).clip(0, out_wh[0])
    out[:, 1] = moved[..., 1].min(1).clip(0, out_wh[1])
    out[:, 3] = moved[..., 1].max(1).clip(0, out_wh[1])
    keep = ((out[:, 2] - out[:, 0]) >= MIN_BOX_PX) & ((out[:, 3] - out[:, 1]) >= MIN_BOX_PX)
    return out[keep]


def _read_image(path: Any) -> np.ndarray | None:
    from .data import read_image  # the dataset layer reads (and warns about) images

    return read_image(path)


class TrainDataset(Dataset):
    """Augmented training samples over ``ImageRecord``s (``path``, ``labels`` [K,5] class cx cy w h
    normalised, ``crowd`` [K]).

    ``__getitem__`` returns ``(image uint8 HxWx3 BGR, boxes float32 [K, 5] class x1 y1 x2 y2 in
    input pixels, path)``; an image that fails to load gives ``image=None`` (skipped and counted
    by :func:`collate`).
    """

    def __init__(self, records: Sequence[Any], img_size: int | tuple[int, int], cfg: AugmentConfig,
                 augment: bool = True, seed: int = 0) -> None:
        self.records = list(records)
        self.size_hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.cfg = cfg
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Before each epoch's iterator is made (workers get a copy then)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, index: int) -> tuple[np.ndarray | None, np.ndarray]:
        rec = self.records[index]
        img = _read_image(rec.path)
        if img is None:
            return None, np.zeros((0, 5), np.float32)
        h0, w0 = img.shape[:2]
        labels = np.asarray(rec.labels, np.float32).reshape(-1, 5)
        crowd = getattr(rec, "crowd", None)
        if crowd is not None and len(crowd) == len(labels):
            labels = labels[~np.asarray(crowd, bool)]
        boxes = np.empty((len(labels), 5), np.float32)  # x1 y1 x2 y2 class, original pixels
        boxes[:, :4] = denormalize_boxes(box_convert(labels[:, 1:5], "cxcywh", "xyxy"), w0, h0)
        boxes[:, 4] = labels[:, 0]
        return img, boxes

    def __getitem__(self, index: int) -> tuple[np.ndarray | None, np.ndarray, str]:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        path = str(self.records[index].path)
        h, w = self.size_hw
        img, boxes = self._load(index)
        if img is None:
            return None, np.zeros((0, 5), np.float32), path
        if not self.augment:
            out, geo = fit_image(img, (h, w), self.cfg.letter_box)
            moved = geo.to_input(boxes[:, :4]) if len(boxes) else boxes[:, :4]
            boxes = transform_boxes(np.concatenate((moved, boxes[:, 4:]), 1), np.eye(2, 3), (w, h))
        elif self.cfg.mosaic:
            out, boxes = self._mosaic(index, img, boxes, rng)
        else:
            out, boxes = random_place(img, boxes, (w, h), self.cfg, rng)
        if self.augment:
            out = hsv_jitter(out, self.cfg.hue, self.cfg.saturation, self.cfg.exposure, rng)
        return out, boxes[:, [4, 0, 1, 2, 3]].astype(np.float32), path

    def _mosaic(self, index: int, img: np.ndarray, boxes: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Four images in the quadrants around a centre drawn in the middle half of the input."""
        h, w = self.size_hw
        xc = int(rng.uniform(0.25, 0.75) * w)
        yc = int(rng.uniform(0.25, 0.75) * h)
        canvas = np.full((h, w, 3), LETTERBOX_FILL, np.uint8)
        rects = [(0, 0, xc, yc), (xc, 0, w, yc), (0, yc, xc, h), (xc, yc, w, h)]
        others = [int(i) for i in rng.integers(0, len(self), 3)]
        pieces = [(img, boxes)] + [self._load(i) for i in others]
        out_boxes = []
        for (x0, y0, x1, y1), (im, bx) in zip(rects, pieces):
            if im is None or x1 - x0 < 1 or y1 - y0 < 1:
                continue
            piece, pb = random_place(im, bx, (x1 - x0, y1 - y0), self.cfg, rng)
            canvas[y0:y1, x0:x1] = piece
            pb[:, [0, 2]] += x0
            pb[:, [1, 3]] += y0
            out_boxes.append(pb)
        boxes = np.concatenate(out_boxes) if out_boxes else np.zeros((0, 5), np.float32)
        return canvas, boxes


def collate(batch: list[tuple[np.ndarray | None, np.ndarray, str]]) -> dict[str, Any]:
    """Samples -> ``images`` uint8 (B, 3, H, W) RGB, ``targets`` [N, 6] (image index, class, cx, cy,
    w, h normalised), ``paths``, and ``skipped`` (samples whose image failed to load)."""
    good = [b for b in batch if b[0] is not None]
    skipped = len(batch) - len(good)
    if not good:
        return {"images": None, "targets": torch.zeros(0, 6), "paths": [], "skipped": skipped}
    h, w = good[0][0].shape[:2]
    images = np.stack([b[0] for b in good])[..., ::-1].transpose(0, 3, 1, 2)  # BGR HWC -> RGB CHW
    rows = []
    for i, (_, boxes, _) in enumerate(good):
        t = np.zeros((len(boxes), 6), np.float32)
        t[:, 0] = i
        t[:, 1] = boxes[:, 0]
        t[:, 2:6] = normalize_boxes(box_convert(boxes[:, 1:5], "xyxy", "cxcywh"), w, h)
        rows.append(t)
    return {"images": torch.from_numpy(np.ascontiguousarray(images)),
            "targets": torch.from_numpy(np.concatenate(rows)),
            "paths": [b[2] for b in good], "skipped": skipped}


def warn_skipped(count: int, what: str = "images") -> None:
    if count:
        warnings.warn(f"{count} {what} could not be loaded and were skipped")
