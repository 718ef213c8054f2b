"""Datasets as PyTorch sees them: augmented training samples and evaluation batches, with
their collates. Records come from :mod:`yolo.datasets`; pixels go through :mod:`yolo.boxes`
(the same placement as inference) and :mod:`yolo.augment`. The evaluation items themselves are
torch-free (:mod:`yolo.eval_data`, what ``evaluate()`` reads with); :func:`collate_eval` is their
DataLoader collate."""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .augment import AugmentConfig, hsv_jitter, random_place, transform_boxes
from .boxes import LETTERBOX_FILL, box_convert, denormalize_boxes, fit_image, normalize_boxes
from .datasets import read_image
from .eval_data import EvalBatch, EvalDataset, Item, collate_arrays  # noqa: F401 (EvalDataset: its old home)


def collate_eval(items: list[Item]) -> EvalBatch:
    """:func:`yolo.eval_data.collate_arrays` with the images as a torch tensor (a DataLoader's collate)."""
    batch = collate_arrays(items)
    t0 = time.perf_counter()
    batch.images = torch.from_numpy(batch.images) if batch.indices else torch.zeros(0)
    batch.preprocess_s += time.perf_counter() - t0
    return batch


def worker_init(_: int) -> None:
    """One torch thread per worker: the workers already run in parallel.

    (No ``cv2.setNumThreads`` here: in a forked worker it can deadlock on the thread pool
    inherited from the parent, seen with OpenCV 4.14.)
    """
    torch.set_num_threads(1)



# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
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
        img = read_image(rec.path)
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
