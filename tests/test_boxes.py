"""Shared geometry and post-processing (yolo/boxes.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from yolo.boxes import Geometry, fit_image, postprocess


def _pred(boxes_xywh: list[list[float]], obj: list[float], cls: list[int], num_classes: int = 3) -> torch.Tensor:
    n = len(boxes_xywh)
    p = torch.zeros(1, n, 5 + num_classes)
    p[0, :, :4] = torch.tensor(boxes_xywh)
    p[0, :, 4] = torch.tensor(obj)
    p[0, torch.arange(n), 5 + torch.tensor(cls)] = 1.0
    return p


def test_postprocess_scores_nms_per_class_and_max_det():
    # two overlapping boxes of class 0 (the weaker is suppressed), the same box as class 1 (kept)
    p = _pred([[50, 50, 20, 20], [51, 50, 20, 20], [50, 50, 20, 20], [10, 10, 4, 4]],
              [0.9, 0.8, 0.7, 0.1], [0, 0, 1, 2])
    (d,) = postprocess(p, conf_thres=0.2, nms_thres=0.45, max_det=100)
    assert d[:, 4].tolist() == pytest.approx([0.9, 0.7], abs=1e-6)
    assert d[:, 5].tolist() == [0, 1]
    np.testing.assert_allclose(d[0, :4], [40, 40, 60, 60])
    (d1,) = postprocess(p, conf_thres=0.2, nms_thres=0.45, max_det=1)
    assert len(d1) == 1 and d1[0, 4] == np.float32(0.9)


def test_candidate_cap_keeps_the_best_and_bounds_time():
    """An untrained model at conf 0.001 floods NMS (minutes per image uncapped); the cap keeps
    the top-scoring candidates."""
    g = torch.Generator().manual_seed(0)
    n, c = 4000, 80
    p = torch.rand(2, n, 5 + c, generator=g)
    p[..., :2] *= 320
    p[..., 2:4] = p[..., 2:4] * 60 + 2
    out = postprocess(p, conf_thres=0.001, nms_thres=0.45, max_det=100, max_candidates=500)
    scores = (p[..., 5:] * p[..., 4:5]).reshape(2, -1)
    for i, d in enumerate(out):
        assert len(d) == 100
        floor = scores[i].topk(500).values[-1].item()
        assert (d[:, 4] >= floor - 1e-6).all()  # only the 500 best entered NMS
        assert d[0, 4] == np.float32(scores[i].max().item())


def test_geometry_round_trip_plain_and_letterbox():
    img = np.zeros((200, 400, 3), np.uint8)
    boxes = np.array([[10, 20, 110, 180], [0, 0, 400, 200]], np.float32)
    for letter_box in (False, True):
        out, g = fit_image(img, (320, 320), letter_box)
        assert out.shape == (320, 320, 3)
        np.testing.assert_allclose(g.to_original(g.to_input(boxes)), boxes, atol=1e-3)
    assert Geometry((200, 400), (0.8, 1.6), (0.0, 0.0)).to_original(np.array([[-5, -5, 999, 999]]))[0].tolist() \
        == [0, 0, 400, 200]
