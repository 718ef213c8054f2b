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

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from .boxes import LETTERBOX_FILL, placement
from .heads.yolo import YoloSettings
from .netconfig import NetConfig

MIN_BOX_PX = 2.0


@dataclass
class AugmentConfig:
    """The augmentation knobs, from [net] and the heads (``jitter``: ``Head.jitter``), overridable on
    the command line. Defaults are Darknet's, taken from the classes that read those sections (never
    restated; a model's heads give its jitter, [yolo]'s default is the one without a model)."""

    jitter: float = YoloSettings.jitter
    hue: float = NetConfig.hue
    saturation: float = NetConfig.saturation
    exposure: float = NetConfig.exposure
    angle: float = NetConfig.angle
    flip: bool = NetConfig.flip
    mosaic: bool = NetConfig.mosaic
    letter_box: bool = NetConfig.letter_box

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> "AugmentConfig":
        net = model.net
        jitter = max((head.jitter for head in model.heads), default=0.0)
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
