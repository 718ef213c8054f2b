"""Classifier cfgs (darknet19, resnet50, ...) in detect.py: Darknet's ``classifier predict``.

A cfg is a classifier when its network's output is class scores: the last section, before any
[cost] (which Darknet's ``get_network_output`` skips), is a [softmax]. A detector always ends in its
head, so the rule needs no list of head types (:func:`is_classifier`, on the cfg text: no torch).

What ``predict_classifier`` (``classifier.c``, AlexeyAB 59596d7) does, done here the same way:

* the picture (RGB in [0, 1]) is resized so that its shorter side is the [net] width (``resize_min``:
  the other side ``side * width / shorter`` in integers), then the centre ``width x height`` window is
  cut (``crop_image`` at ``((w - width) / 2, (h - height) / 2)``, C division; rows and columns past the
  edge repeat it); the resize is OpenCV's bilinear, as every other input here (:mod:`yolo.boxes`);
* the network's output is flattened and the ``top`` best indices taken as ``top_k`` does (higher
  first, ties to the lower index);
* per image it prints ``<file>: Predicted in <ms> milli-seconds.`` then ``<name>: <probability>``
  (``"%s: %f"``) per class, best first.

``top`` is Darknet's ``-t``: 5 here unless a ``.data`` file given as names sets ``top=`` (Darknet's
own default is that key, else 1). Names: a names file, a Darknet ``.data`` file (its ``names`` or
``labels``), a checkpoint's names, else the class numbers. It runs on the torch engine, fp32.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import cv2
import numpy as np

from .boxes import to_array
from .cfg import parse_cfg
from .detect_inputs import DetectError, check_image, image_size, load_names
from .io import resolve_listed
from .sources import FrameReader, Source, resolve_source

if TYPE_CHECKING:
    import torch

    from .model import Darknet

DEFAULT_TOP = 5
#: a [cost] after the scores is the training loss; Darknet's network output is the layer before it
_SKIPPED_AT_THE_END = ("cost",)
_SCORES = ("softmax", "soft")


def is_classifier(cfg: str | Path | None) -> bool:
    """Whether the cfg's network outputs class scores (its last section before any [cost] is a [softmax])."""
    if cfg is None:
        return False
    sections = parse_cfg(cfg)[1:]
    while sections and sections[-1].type in _SKIPPED_AT_THE_END:
        sections.pop()
    return bool(sections) and sections[-1].type in _SCORES


def resize_min_crop(img: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Darknet's ``resize_min(im, net.w)`` then ``crop_image`` to ``size_hw``: an (h, w, 3) image of that size."""
    h0, w0 = img.shape[:2]
    height, width = size_hw
    if w0 < h0:
        w, h = width, h0 * width // w0
    else:
        w, h = w0 * width // h0, width
    resized = img if (w, h) == (w0, h0) else cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    dx, dy = int((w - width) / 2), int((h - height) / 2)  # C's integer division truncates toward zero
    rows = np.clip(np.arange(height) + dy, 0, h - 1)
    cols = np.clip(np.arange(width) + dx, 0, w - 1)
    return np.ascontiguousarray(resized[rows][:, cols])


def top_k(scores: np.ndarray, k: int) -> list[int]:
    """The ``k`` best indices, best first; equal scores in index order (Darknet's ``top_k``)."""
    return [int(i) for i in np.argsort(-np.asarray(scores), kind="stable")[:k]]


def read_class_names(names: str | Path | Sequence[str] | None, count: int, saved: object = None
                     ) -> tuple[list[str], int | None]:
    """(names, the ``top`` a .data file sets or None): a names file, a ``.data`` file (``names``, else
    Darknet's ``labels``), a list, the checkpoint's ``saved`` names, else the class numbers; checked
    against the ``count`` scores the network gives."""
    top = None
    where = str(names)
    if names is None:
        if not (isinstance(saved, (list, tuple)) and saved):
            return [str(i) for i in range(count)], None
        names, where = list(saved), "the checkpoint's names"
    elif isinstance(names, (str, Path)) and Path(names).suffix == ".data":
        from .datasets.darknet import parse_data_file

        options, _ = parse_data_file(names)
        key = "names" if "names" in options else "labels"
        if key not in options:
            raise DetectError(f"{names}: no 'names' (or 'labels') key naming the classes")
        if "top" in options:
            try:
                top = int(options["top"])
            except ValueError:
                raise DetectError(f"{names}: key 'top': expected an integer, got '{options['top']}'") from None
        names = load_names(resolve_listed(options[key], Path(names).parent))
    elif isinstance(names, (str, Path)):
        names = load_names(names)
    names = [str(n) for n in names]
    if len(names) != count:
        raise DetectError(f"{where}: {len(names)} class names, but the network gives {count} scores "
                          "(Darknet: the classes of the data file must match the last layer)")
    return names, top


class Classifier:
    """``Classifier(cfg, weights)(bgr_image) -> ndarray[C]``: the network's class scores for one picture,
    prepared as :func:`resize_min_crop` says. ``names`` as :func:`read_class_names`."""

    def __init__(self, cfg: str | Path, weights: str | Path, names: str | Path | Sequence[str] | None = None,
                 device: "str | torch.device" = "cpu", img_size: int | Sequence[int] | None = None) -> None:
        import torch

        from .model import Darknet
        from .weights_file import load_weights

        self.device = torch.device(str(device))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r".*no \[yolo\] section")  # as expected of a classifier
            self.model: Darknet = Darknet(cfg)
        saved = load_weights(self.model, weights).get("names")
        self.model.fuse(channels_last=False).to(self.device)
        self.img_size = image_size(img_size, self.model.input_size, 1)
        c, h, w = self.model.output_shapes(*self.img_size)[-1]
        self.names, self.top = read_class_names(names, c * h * w, saved)

    def scores(self, batch: np.ndarray) -> np.ndarray:
        """``ndarray[B, 3, H, W]`` float32 RGB in [0, 1] -> ``ndarray[B, C]`` (the flattened output)."""
        import torch

        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device))
        return out.reshape(out.shape[0], -1).float().cpu().numpy()

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """One HWC uint8 BGR image -> its ``C`` scores."""
        return self.scores(to_array([resize_min_crop(check_image(img), self.img_size)]))[0]

    def lines(self, scores: np.ndarray, top: int) -> list[str]:
        """Darknet's ``"%s: %f"`` line per class of the ``top`` best."""
        return [f"{self.names[i]}: {scores[i]:f}" for i in top_k(scores, min(top, len(self.names)))]


def predict_source(cfg: str | Path, weights: str | Path, source: str | Path | int | Source,
                   names: str | Path | Sequence[str] | None = None, device: "str | torch.device" = "cpu",
                   img_size: int | Sequence[int] | None = None, top: int | None = None,
                   say: Callable[[str], None] = print) -> int:
    """``classifier predict`` over every picture of ``source`` (images, a video, ...): Darknet's lines per
    picture through ``say``; returns the number of pictures classified. ``top``: default 5, or the
    ``.data`` file's ``top=``."""
    if not isinstance(source, Source):
        source = resolve_source(source)  # before loading the model: a typo fails fast
    classifier = Classifier(cfg, weights, names, device, img_size)
    top = top or classifier.top or DEFAULT_TOP
    if top < 1:
        raise DetectError(f"top must be >= 1, got {top}")
    done = 0
    with FrameReader(source) as reader:
        for frame in reader:
            where = frame.file if frame.index is None else f"{frame.file} frame {frame.index}"
            if frame.image is None:
                say(f"{where}: skipped ({frame.error})")
                continue
            start = time.perf_counter()
            scores = classifier(frame.image)
            say(f"{where}: Predicted in {(time.perf_counter() - start) * 1000:f} milli-seconds.")
            for line in classifier.lines(scores, top):
                say(line)
            done += 1
    return done
