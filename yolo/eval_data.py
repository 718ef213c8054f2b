"""Evaluation batches without torch: records -> network-input arrays, read and resized ahead in threads.

``evaluate()`` reads its images here, whichever engine runs: ``imread`` (``cv2.imdecode``) and
``cv2.resize`` release the GIL, so a thread pool overlaps decoding with the engine's forward as
well as DataLoader's worker processes did, without importing torch, forking, or pickling batches
between processes. Measured on the 2-core AVX2 EPYC (machine busy, so rough): test.py on the torch
engine, 48 coco128 images, one reader, medians of 3 interleaved runs: DataLoader 18.7 s, threads
18.3 s; on onnxruntime (all 128) one reading thread takes the run from 9.1-9.9 s to 6.7-7.9 s. The
torch ``DataLoader`` form of the same items (``yolo.loaders.collate_eval``) stays for callers that use it.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from .boxes import Geometry, fit_image, to_array
from .datasets import ImageRecord
from .io import imread

#: (network-input image HWC uint8 BGR, or None when unreadable; record index; Geometry or the reason; seconds)
Item = tuple[Any, int, Any, float]


class EvalDataset:
    """Records -> network-input images; an unreadable image yields None and is skipped by the collate.

    Items are ``(image HWC uint8 BGR at size_hw, index, Geometry | reason str, seconds spent)``.
    Map-style (``len`` and ``[i]``), so torch's ``DataLoader`` takes it as it is.
    """

    def __init__(self, records: Sequence[ImageRecord], size_hw: tuple[int, int], letter_box: bool) -> None:
        self.records = records
        self.size_hw = size_hw
        self.letter_box = letter_box

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Item:
        t0 = time.perf_counter()
        img, reason = imread(self.records[i].path)
        if img is None:
            return None, i, reason, time.perf_counter() - t0
        img, geom = fit_image(img, self.size_hw, self.letter_box)
        return img, i, geom, time.perf_counter() - t0


@dataclass
class EvalBatch:
    images: Any  # (B, 3, H, W) float32 RGB 0..1: np.ndarray here, a torch tensor from loaders.collate_eval
    indices: list[int]  # record index of each image
    geometries: list[Geometry]
    skipped: list[tuple[int, str]]  # (record index, reason) of unreadable images
    preprocess_s: float  # seconds spent reading + resizing + converting this batch


def collate_arrays(items: list[Item]) -> EvalBatch:
    """Items -> one batch, the images as the engine contract's float32 array (BGR uint8 HWC in)."""
    t0 = time.perf_counter()
    good = [it for it in items if it[0] is not None]
    skipped = [(i, str(reason)) for img, i, reason, _ in items if img is None]
    images = to_array([it[0] for it in good]) if good else np.zeros((0, 3, 0, 0), np.float32)
    return EvalBatch(images, [it[1] for it in good], [it[2] for it in good], skipped,
                     sum(it[3] for it in items) + time.perf_counter() - t0)


def eval_batches(dataset: Any, batch_size: int, workers: int) -> Iterator[EvalBatch]:
    """The dataset's items in order, ``batch_size`` at a time, as arrays; ``workers`` threads read
    and resize ahead (at most two batches ahead: bounded memory), 0: all in the calling thread.

    Threads rather than processes: the decoding and resizing release the GIL, and a batch comes
    back without being pickled (the module docstring has the measurement)."""
    from .sources import prefetch

    n = len(dataset)
    starts = range(0, n, batch_size)
    if workers <= 0:
        for s in starts:
            yield collate_arrays([dataset[i] for i in range(s, min(s + batch_size, n))])
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="eval-read") as pool:
        items = prefetch(pool, dataset.__getitem__, list(range(n)), depth=2 * batch_size)
        for s in starts:
            yield collate_arrays([next(items) for _ in range(min(batch_size, n - s))])


__all__ = ["EvalBatch", "EvalDataset", "Item", "collate_arrays", "eval_batches"]
