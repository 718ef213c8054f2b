"""Pixel geometry and post-processing shared by detect, test and train.

Boxes are ``Tensor[N, 4]`` / ``ndarray[N, 4]`` as x1, y1, x2, y2 unless a name says xywh
(centre x, centre y, width, height).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

LETTERBOX_FILL = 127  # Darknet pads with 0.5 grey


@dataclass(frozen=True)
class Geometry:
    """How an original image was mapped into the network input, so boxes can be mapped back."""

    orig_hw: tuple[int, int]
    scale_xy: tuple[float, float]  # input pixels per original pixel, x and y
    pad_xy: tuple[float, float]  # left, top padding in input pixels

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """Input-pixel x1y1x2y2 -> original-image pixels, clipped to the image."""
        out = boxes.astype(np.float32, copy=True)
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_xy[0]) / self.scale_xy[0]
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_xy[1]) / self.scale_xy[1]
        h, w = self.orig_hw
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
        return out

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        """Original-image x1y1x2y2 -> network-input pixels (the inverse of to_original)."""
        out = boxes.astype(np.float32, copy=True)
        out[:, [0, 2]] = out[:, [0, 2]] * self.scale_xy[0] + self.pad_xy[0]
        out[:, [1, 3]] = out[:, [1, 3]] * self.scale_xy[1] + self.pad_xy[1]
        return out


def fit_image(img: np.ndarray, size_hw: tuple[int, int], letter_box: bool) -> tuple[np.ndarray, Geometry]:
    """Resize to the network input: plain resize (Darknet's default) or aspect-keeping letterbox."""
    h0, w0 = img.shape[:2]
    h, w = size_hw
    if not letter_box:
        out = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR) if (h0, w0) != (h, w) else img
        return out, Geometry((h0, w0), (w / w0, h / h0), (0.0, 0.0))
    r = min(h / h0, w / w0)
    nw, nh = max(1, round(w0 * r)), max(1, round(h0 * r))
    resized = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nh, nw) != (h0, w0) else img
    left, top = (w - nw) // 2, (h - nh) // 2
    out = np.full((h, w) + img.shape[2:], LETTERBOX_FILL, dtype=img.dtype)
    out[top:top + nh, left:left + nw] = resized
    return out, Geometry((h0, w0), (nw / w0, nh / h0), (float(left), float(top)))


def to_tensor(images: list[np.ndarray], bgr: bool = True) -> torch.Tensor:
    """HWC uint8 images of one size -> float tensor (B, 3, H, W) RGB in [0, 1]."""
    batch = np.stack(images)
    if bgr:
        batch = batch[..., ::-1]
    return torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2))).float().div_(255.0)


def xywh2xyxy(b: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    out = b.clone() if isinstance(b, torch.Tensor) else b.copy()
    out[..., 0] = b[..., 0] - b[..., 2] / 2
    out[..., 1] = b[..., 1] - b[..., 3] / 2
    out[..., 2] = b[..., 0] + b[..., 2] / 2
    out[..., 3] = b[..., 1] + b[..., 3] / 2
    return out


def xyxy2xywh(b: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    out = b.clone() if isinstance(b, torch.Tensor) else b.copy()
    out[..., 0] = (b[..., 0] + b[..., 2]) / 2
    out[..., 1] = (b[..., 1] + b[..., 3]) / 2
    out[..., 2] = b[..., 2] - b[..., 0]
    out[..., 3] = b[..., 3] - b[..., 1]
    return out


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix ``Tensor[N, M]`` of x1y1x2y2 boxes a ``[N, 4]`` and b ``[M, 4]``."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(2)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


MAX_CANDIDATES = 5000  # per image, highest scores first: OpenCV's NMS costs candidates x kept


def postprocess(pred: torch.Tensor, conf_thres: float = 0.25, nms_thres: float = 0.45,
                max_det: int = 100, classes: list[int] | None = None,
                max_candidates: int = MAX_CANDIDATES) -> list[np.ndarray]:
    """Eval-mode output (B, N, 5+C) -> per image ``ndarray[K, 6]``: x1, y1, x2, y2, score, class.

    Score = objectness x class probability; every class above ``conf_thres`` is a candidate
    (Darknet's multi-label rule); per-class NMS by OpenCV, one call per image.
    Boxes are in network-input pixels. At most ``max_candidates`` (the highest scores) per
    image enter NMS: an untrained model at conf 0.001 has ~80 k candidates per image, which
    would take OpenCV's NMS ~25 s per image; a trained one has ~1 k, so mAP is unaffected.
    """
    b, _, attrib = pred.shape
    num_classes = attrib - 5
    pred = pred.detach().float()
    scores = pred[..., 5:] * pred[..., 4:5]  # (B, N, C)
    if classes is not None:
        keep_cls = torch.zeros(num_classes, dtype=torch.bool, device=pred.device)
        keep_cls[[c for c in classes if 0 <= c < num_classes]] = True
        scores = scores * keep_cls
    img_i, box_i, cls_i = (scores > conf_thres).nonzero(as_tuple=True)
    empty = np.zeros((0, 6), np.float32)
    if img_i.numel() == 0:
        return [empty.copy() for _ in range(b)]
    xywh = pred[img_i, box_i, :4]
    cand = torch.cat((xywh2xyxy(xywh), scores[img_i, box_i, cls_i, None], cls_i[:, None].float()), 1)
    cand = cand.cpu().numpy()
    rects = xywh.cpu().numpy().astype(np.float64)
    rects[:, :2] -= rects[:, 2:] / 2  # x, y, w, h as OpenCV's Rect2d
    labels = cand[:, 5].astype(np.int32)
    # candidates come image by image (nonzero is row-major); NMS costs candidates x kept,
    # so one call per image is much cheaper than one call over the whole batch
    bounds = np.searchsorted(img_i.cpu().numpy(), np.arange(b + 1))
    out = []
    for i in range(b):
        lo, hi = bounds[i], bounds[i + 1]
        if lo == hi:
            out.append(empty.copy())
            continue
        rows = np.arange(lo, hi)
        if hi - lo > max_candidates:
            rows = lo + np.argpartition(-cand[lo:hi, 4], max_candidates - 1)[:max_candidates]
        kept = np.asarray(cv2.dnn.NMSBoxesBatched(rects[rows], cand[rows, 4], labels[rows],
                                                  conf_thres, nms_thres), dtype=np.int64).reshape(-1)
        kept = rows[kept]
        kept = kept[np.argsort(-cand[kept, 4], kind="stable")][:max_det]
        out.append(cand[kept])
    return out
