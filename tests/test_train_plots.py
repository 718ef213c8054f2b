"""What training sees: the confusion matching and P / R / F1 on hand-made cases, the pictures'
files, the training-pictures callback in a run, and a run on the YOLO-folder form of the
synthetic shapes set learning exactly like one on its Darknet form."""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from helpers import FIXTURES, TRAIN_TINY

sys.path.insert(0, str(FIXTURES))
from yolo.datasets import load_dataset, write_dataset  # noqa: E402
from yolo.plots_train import (  # noqa: E402
    confusion_matrix,
    match_detections,
    plot_batch,
    plot_confusion,
    plot_labels,
    prf1_curves,
)
from yolo.train_pictures import TrainingPictures  # noqa: E402
from yolo.trainer import Trainer, TrainOptions, default_callbacks  # noqa: E402

from train_synth import NAMES, make_dataset  # noqa: E402

TRUTH = np.array([[0, 0, 10, 10, 0], [20, 20, 30, 30, 1], [50, 50, 60, 60, 2]], np.float64)


def test_match_detections_pairs():
    dets = np.array([[0, 0, 10, 11, 0.9, 0],      # person on person: (0, 0)
                     [20, 20, 30, 31, 0.8, 2],    # class 2 on a class-1 box: confusion (1, 2)
                     [80, 80, 90, 90, 0.7, 1],    # nothing there: false alarm (-1, 1)
                     [0, 0, 10, 10, 0.6, 0]])     # a second hit on box 0: false alarm (-1, 0)
    pairs = match_detections(dets, TRUTH)
    assert sorted(pairs) == sorted([(0, 0), (1, 2), (2, -1), (-1, 1), (-1, 0)])
    # the highest IoU pair wins: det 3 (IoU 1.0) takes box 0, det 0 (IoU 0.91) is the false alarm
    assert match_detections(dets[[0, 3]], TRUTH[:1]) == [(0, 0), (-1, 0)]
    assert match_detections(np.zeros((0, 6)), TRUTH[:1]) == [(0, -1)]
    m = confusion_matrix([dets], [TRUTH], 3, conf_thres=0.75)  # dets 2, 3 below the threshold
    assert m[0, 0] == 1 and m[2, 1] == 1 and m[3, 2] == 1 and m.sum() == 3  # rows predicted, last background


def test_prf1_curves():
    dets = np.array([[0, 0, 10, 10, 0.9, 0], [80, 80, 90, 90, 0.4, 0], [20, 20, 30, 30, 0.3, 1]])
    c = prf1_curves([dets], [TRUTH], 3, steps=11)
    conf = c["conf"]
    k = np.searchsorted(conf, 0.5)  # class 0: only the true positive above 0.5
    assert c["p"][0, k] == 1 and c["r"][0, k] == 1
    k = np.searchsorted(conf, 0.35)  # class 0 at 0.4: the false alarm too
    assert c["p"][0, k] == pytest.approx(0.5) and c["f1"][0, k] == pytest.approx(2 / 3)
    assert c["r"][1, 0] == 1 and c["r"][1, -1] == 0 and c["gt"].tolist() == [1, 1, 1]


def test_pictures_are_written(tmp_path):
    imgs = np.zeros((2, 3, 64, 64), np.uint8)
    targets = np.array([[0, 1, 0.5, 0.5, 0.5, 0.5], [1, 0, 0.2, 0.2, 0.2, 0.2]])
    png = plot_batch(imgs, targets, NAMES, tmp_path / "b.png")
    img = cv2.imread(str(png))
    assert img.shape == (64, 128, 3) and img[:, :64].max() > 0 and img[:, 64:].max() > 0  # boxes drawn
    assert plot_labels(targets[:, 1:], NAMES, tmp_path / "l.png").stat().st_size > 5000
    assert plot_confusion(np.eye(4, dtype=np.int64), NAMES, tmp_path / "c.png").stat().st_size > 5000


def _options(data: Path, out: Path) -> TrainOptions:
    return TrainOptions(cfg=str(TRAIN_TINY), data=str(data), output=str(out), epochs=2, batch=8, batch_size=4,
                        img_size=64, workers=0, progress=False, eval_interval=1, seed=3)


def _fit(opts: TrainOptions) -> Trainer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = Trainer(opts, torch.device("cpu"), say=lambda *a, **k: None)
        t.fit()
    return t


@pytest.mark.slow
def test_yolo_folder_form_trains_like_darknet_form_and_pictures(tmp_path):
    """Same seed, same records: the same losses and mAP on both forms; the run folder holds the pictures."""
    data = make_dataset(tmp_path / "shapes", n_train=16, n_valid=8, size=64)
    splits = {s: load_dataset(data, split=s) for s in ("train", "valid")}
    yaml = write_dataset(splits, "yolo", tmp_path / "yolo")
    assert any(isinstance(c, TrainingPictures) for c in default_callbacks(_options(data, tmp_path)))
    a = _fit(_options(data, tmp_path / "dark"))
    b = _fit(_options(yaml, tmp_path / "yolo_run"))
    sa = json.loads((tmp_path / "dark" / "summary.json").read_text())
    sb = json.loads((tmp_path / "yolo_run" / "summary.json").read_text())
    assert sa["best_map50"] == pytest.approx(sb["best_map50"], abs=1e-9)
    la = (tmp_path / "dark" / "results.csv").read_text().splitlines()
    lb = (tmp_path / "yolo_run" / "results.csv").read_text().splitlines()
    # step, box, obj, cls, total loss, lr, mAP, mAP@.5 of each epoch: identical
    assert [r.split(",")[1:9] for r in la] == [r.split(",")[1:9] for r in lb]
    assert float(lb[2].split(",")[5]) < float(lb[1].split(",")[5])  # the total loss falls
    assert a.state.step == b.state.step
    for run in ("dark", "yolo_run"):
        files = {p.name for p in (tmp_path / run).iterdir()}
        assert {"train_batch0.png", "train_batch1.png", "val_pred.png", "confusion_matrix.png",
                "P_curve.png", "R_curve.png", "F1_curve.png"} <= files, files
    batch = cv2.imread(str(tmp_path / "yolo_run" / "train_batch0.png"))
    assert batch.shape == (64, 256, 3)  # 4 images of 64 x 64 side by side
