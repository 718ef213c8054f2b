"""Pixel geometry and post-processing shared by detect, test and train.

Boxes are ``Tensor[N, 4]`` / ``ndarray[N, 4]`` as x1, y1, x2, y2 unless a name or argument says
otherwise; :func:`box_convert` is the one conversion between xyxy, xywh (COCO) and cxcywh (YOLO).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import cv2
import numpy as np

if TYPE_CHECKING:  # the numpy part needs no torch; tensors are handled where torch is loaded
    import torch

Array = TypeVar("Array", "torch.Tensor", np.ndarray)


def _is_tensor(x: object) -> bool:
    """A torch tensor (only possible once torch is imported: never imports it)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)
LETTERBOX_FILL = 127  # Darknet pads with 0.5 grey


@dataclass(frozen=True)
class Geometry:
    """How an original image was mapped into the network input, so boxes can be mapped back."""

    orig_hw: tuple[int, int]
    scale_xy: tuple[float, float]  # input pixels per original pixel, x and y
    pad_xy: tuple[float, float]  # left, top padding in input pixels

    def to_original(self, boxes: np.ndarray, clip: bool = True, dtype: type = np.float32) -> np.ndarray:
        """Input-pixel x1y1x2y2 -> original-image pixels, clipped to the image unless ``clip=False``
        (Darknet's own mAP scores unclipped boxes)."""
        out = boxes.astype(dtype, copy=True)
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_xy[0]) / self.scale_xy[0]
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_xy[1]) / self.scale_xy[1]
        return clip_boxes(out, self.orig_hw[1], self.orig_hw[0]) if clip else out

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        """Original-image x1y1x2y2 -> network-input pixels (the inverse of to_original)."""
        out = boxes.astype(np.float32, copy=True)
        out[:, [0, 2]] = out[:, [0, 2]] * self.scale_xy[0] + self.pad_xy[0]
        out[:, [1, 3]] = out[:, [1, 3]] * self.scale_xy[1] + self.pad_xy[1]
        return out


def placement(src_wh: tuple[float, float], dst_wh: tuple[int, int], letter_box: bool
              ) -> tuple[int, int, int, int]:
    """Where a ``src_wh`` picture lands in a ``dst_wh`` input: (width, height, left, top) in
    input pixels. Plain resize fills the input (Darknet's default); letterbox keeps the aspect
    ratio and centres the picture on whole pixels. Inference and augmentation both use this rule."""
    w, h = dst_wh
    if not letter_box:
        return w, h, 0, 0
    r = min(h / src_wh[1], w / src_wh[0])
    nw, nh = max(1, round(src_wh[0] * r)), max(1, round(src_wh[1] * r))
    return nw, nh, (w - nw) // 2, (h - nh) // 2


def fit_image(img: np.ndarray, size_hw: tuple[int, int], letter_box: bool) -> tuple[np.ndarray, Geometry]:
    """Resize to the network input by :func:`placement`'s rule."""
    h0, w0 = img.shape[:2]
    h, w = size_hw
    nw, nh, left, top = placement((w0, h0), (w, h), letter_box)
    resized = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nh, nw) != (h0, w0) else img
    if (nw, nh) == (w, h):
        out = resized
    else:
        out = np.full((h, w) + img.shape[2:], LETTERBOX_FILL, dtype=img.dtype)
        out[top:top + nh, left:left + nw] = resized
    return out, Geometry((h0, w0), (nw / w0, nh / h0), (float(left), float(top)))


def to_array(images: list[np.ndarray], bgr: bool = True) -> np.ndarray:
    """HWC uint8 images of one size -> float32 array (B, 3, H, W) RGB in [0, 1] (the engine input)."""
    batch = np.stack(images)
    if bgr:
        batch = batch[..., ::-1]
    out = np.ascontiguousarray(batch.transpose(0, 3, 1, 2)).astype(np.float32)
    out /= np.float32(255.0)  # the same float32 values as torch's .float().div_(255) (checked for 0..255)
    return out


def to_tensor(images: list[np.ndarray], bgr: bool = True) -> "torch.Tensor":
    """HWC uint8 images of one size -> float tensor (B, 3, H, W) RGB in [0, 1] (:func:`to_array`)."""
    import torch

    return torch.from_numpy(to_array(images, bgr))


BoxFormat = Literal["xyxy", "xywh", "cxcywh"]
_FORMATS = ("xyxy", "xywh", "cxcywh")


def box_convert(b: Array, in_fmt: BoxFormat, out_fmt: BoxFormat) -> Array:
    """Boxes ``[..., 4]`` from one format to another (a new array; torch or numpy in, same out).

    ``xyxy``: corners x1, y1, x2, y2; ``xywh``: top-left x, y and width, height (COCO json);
    ``cxcywh``: centre x, y and width, height (YOLO labels and the network's output).
    """
    if in_fmt not in _FORMATS or out_fmt not in _FORMATS:
        raise ValueError(f"box format must be one of {_FORMATS}, got '{in_fmt}' -> '{out_fmt}'")
    out = b.clone() if _is_tensor(b) else np.array(b, copy=True)
    if in_fmt == out_fmt:
        return out
    if in_fmt == "cxcywh":
        out[..., :2] = b[..., :2] - b[..., 2:4] / 2
    if in_fmt != "xyxy":  # now top-left + size
        out[..., 2:4] = out[..., :2] + b[..., 2:4]
    # out is xyxy here
    if out_fmt == "xyxy":
        return out
    wh = out[..., 2:4] - out[..., :2]
    if out_fmt == "cxcywh":
        out[..., :2] = out[..., :2] + wh / 2
    out[..., 2:4] = wh
    return out


def normalize_boxes(b: Array, width: float, height: float) -> Array:
    """Pixel boxes ``[..., 4]`` (any format) -> fractions of the image's width and height."""
    scale = b.new_tensor([width, height] * 2) if _is_tensor(b) else np.array([width, height] * 2, b.dtype)
    return b / scale


def denormalize_boxes(b: Array, width: float, height: float) -> Array:
    """Fractions of the image's width and height (any format) -> pixels."""
    scale = b.new_tensor([width, height] * 2) if _is_tensor(b) else np.array([width, height] * 2, b.dtype)
    return b * scale


def clip_boxes(b: Array, width: float, height: float) -> Array:
    """xyxy boxes ``[..., 4]`` clipped to the image, in place; returns them."""
    if _is_tensor(b):
        b[..., 0::2] = b[..., 0::2].clamp(0, width)
        b[..., 1::2] = b[..., 1::2].clamp(0, height)
    else:
        b[..., 0::2] = b[..., 0::2].clip(0, width)
        b[..., 1::2] = b[..., 1::2].clip(0, height)
    return b


# ---------------------------------------------------------------------------------------------
# IoU: every overlap the project computes (matching, NMS, the box loss, anchors) is one of these
# ---------------------------------------------------------------------------------------------
def box_iou(a: Array, b: Array) -> Array:
    """IoU matrix ``[N, M]`` of x1y1x2y2 boxes a ``[N, 4]`` and b ``[M, 4]``.

    A tensor in: computed in its dtype, the union clamped at 1e-9 (the loss, detect). An array in:
    float64, 0 where the union is empty (Darknet's ``detector map`` matching)."""
    if _is_tensor(a):
        import torch

        area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
        area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
        lt = torch.max(a[:, None, :2], b[None, :, :2])
        rb = torch.min(a[:, None, 2:], b[None, :, 2:])
        inter = (rb - lt).clamp(min=0).prod(2)
        return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


IOU_KINDS = ("iou", "giou", "diou", "ciou")


def paired_iou(a: "torch.Tensor", b: "torch.Tensor", kind: str = "iou", eps: float = 1e-9) -> "torch.Tensor":
    """Element-wise IoU / GIoU / DIoU / CIoU ``Tensor[N]`` of paired boxes ``Tensor[N, 4]`` given as
    cx, cy, w, h (the box loss; ``kind`` is ``[yolo] iou_loss``, ``mse`` meaning plain IoU)."""
    import torch

    a1, a2 = a[:, :2] - a[:, 2:] / 2, a[:, :2] + a[:, 2:] / 2
    b1, b2 = b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2
    inter = (torch.min(a2, b2) - torch.max(a1, b1)).clamp(min=0).prod(1)
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter + eps
    iou = inter / union
    if kind in ("iou", "mse"):
        return iou
    hull_wh = torch.max(a2, b2) - torch.min(a1, b1)
    if kind == "giou":
        hull = hull_wh.prod(1) + eps
        return iou - (hull - union) / hull
    c2 = hull_wh.square().sum(1) + eps  # squared diagonal of the enclosing box
    rho2 = (a[:, :2] - b[:, :2]).square().sum(1)  # squared distance of the centres
    if kind == "diou":
        return iou - rho2 / c2
    v = (4 / math.pi ** 2) * (torch.atan(b[:, 2] / (b[:, 3] + eps)) - torch.atan(a[:, 2] / (a[:, 3] + eps))).square()
    with torch.no_grad():
        alpha = v / (v - iou + 1 + eps)
    return iou - (rho2 / c2 + v * alpha)


def wh_iou(wh1: Array, wh2: Array) -> Array:
    """IoU matrix ``[N, M]`` of boxes sharing a centre, given widths/heights ``[N, 2]``, ``[M, 2]``
    (anchor matching, ``calc_anchors``). A tensor in: the union clamped at 1e-9; an array in: as
    given (callers pass positive sizes), in its dtype."""
    if _is_tensor(wh1):
        import torch

        inter = torch.min(wh1[:, None], wh2[None]).prod(2)
        return inter / (wh1.prod(1)[:, None] + wh2.prod(1)[None] - inter).clamp(min=1e-9)
    bw, bh = wh1[:, 0:1], wh1[:, 1:2]
    aw, ah = wh2[None, :, 0], wh2[None, :, 1]
    inter = np.minimum(bw, aw) * np.minimum(bh, ah)
    return inter / (bw * bh + aw * ah - inter)


def darknet_overlap(a: np.ndarray, b: np.ndarray, kind: str, beta_nms: float | None) -> np.ndarray:
    """Darknet's NMS overlap of box ``a`` (4,) with boxes ``b`` (M, 4), all cx, cy, w, h (relative):
    IoU (``box_iou``), or for ``greedynms`` IoU - (d^2/c^2)^0.6 (``box_diou``) and for ``diounms``
    IoU - (d^2/c^2)^beta_nms (``box_diounms``); d = centre distance, c = enclosing diagonal. Areas
    are w * h, as Darknet computes them (not from the corners), so its figures are matched."""
    al, ar, at, ab = a[0] - a[2] / 2, a[0] + a[2] / 2, a[1] - a[3] / 2, a[1] + a[3] / 2
    bl, br, bt, bb = b[:, 0] - b[:, 2] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 1] + b[:, 3] / 2
    iw = np.minimum(ar, br) - np.maximum(al, bl)
    ih = np.minimum(ab, bb) - np.maximum(at, bt)
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    union = a[2] * a[3] + b[:, 2] * b[:, 3] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where((inter > 0) & (union > 0), inter / union, 0.0)
        if kind not in ("greedynms", "diounms"):
            return iou
        cw = np.maximum(ar, br) - np.minimum(al, bl)
        ch = np.maximum(ab, bb) - np.minimum(at, bt)
        c = cw * cw + ch * ch
        d = (a[0] - b[:, 0]) ** 2 + (a[1] - b[:, 1]) ** 2
        term = np.power(np.where(c > 0, d / c, 0.0), 0.6 if kind == "greedynms" else beta_nms)
    return np.where(c > 0, iou - term, iou)


MAX_CANDIDATES = 5000  # per image, highest scores first: OpenCV's NMS costs candidates x kept


def postprocess(pred: "np.ndarray | torch.Tensor", conf_thres: float = 0.25, nms_thres: float = 0.45,
                max_det: int = 100, classes: list[int] | None = None,
                max_candidates: int = MAX_CANDIDATES) -> list[np.ndarray]:
    """Eval-mode output (B, N, 5+C) -> per image ``ndarray[K, 6]``: x1, y1, x2, y2, score, class.

    Score = objectness x class probability; every class above ``conf_thres`` is a candidate
    (Darknet's multi-label rule); per-class NMS by OpenCV, one call per image.
    Boxes are in network-input pixels. At most ``max_candidates`` (the highest scores) per
    image enter NMS: an untrained model at conf 0.001 has ~80 k candidates per image, which
    would take OpenCV's NMS ~25 s per image; a trained one has ~1 k, so mAP is unaffected.
    Numpy throughout (a torch tensor is read as its float32 array): no torch needed.
    """
    pred = _as_float32(pred)
    b, _, attrib = pred.shape
    num_classes = attrib - 5
    scores = pred[..., 5:] * pred[..., 4:5]  # (B, N, C)
    if classes is not None:
        keep_cls = np.zeros(num_classes, dtype=bool)
        keep_cls[[c for c in classes if 0 <= c < num_classes]] = True
        scores = scores * keep_cls
    img_i, box_i, cls_i = np.nonzero(scores > conf_thres)  # row-major, as torch's nonzero
    empty = np.zeros((0, 6), np.float32)
    if img_i.size == 0:
        return [empty.copy() for _ in range(b)]
    xywh = pred[img_i, box_i, :4]
    cand = np.concatenate((box_convert(xywh, "cxcywh", "xyxy"), scores[img_i, box_i, cls_i, None],
                           cls_i[:, None].astype(np.float32)), 1)
    rects = xywh.astype(np.float64)
    rects[:, :2] -= rects[:, 2:] / 2  # x, y, w, h as OpenCV's Rect2d
    labels = cls_i.astype(np.int32)
    # candidates come image by image (nonzero is row-major); NMS costs candidates x kept,
    # so one call per image is much cheaper than one call over the whole batch
    bounds = np.searchsorted(img_i, np.arange(b + 1))
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


def _as_float32(pred: Any) -> np.ndarray:
    """Engine output as a float32 array (a torch tensor detached and brought to the CPU)."""
    if _is_tensor(pred):
        pred = pred.detach().float().cpu().numpy()
    return np.asarray(pred, dtype=np.float32)
