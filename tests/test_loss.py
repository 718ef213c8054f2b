"""The YOLOv3 loss: Darknet's assignment, ignore rule, gradients, and that it can be minimised."""
from __future__ import annotations

import math

import pytest
import torch

from yolo.loss import YOLOLoss, bbox_iou_kind, wh_iou
from yolo.model import Darknet

from helpers import TRAIN_TINY as TINY

SIZE = 128


@pytest.fixture()
def model() -> Darknet:
    m = Darknet(TINY)
    for layer in m.yolo_layers:  # plain Darknet-v3 rules unless a test says otherwise
        layer.settings.iou_thresh, layer.settings.iou_loss, layer.settings.ignore_thresh = 1.0, "mse", 0.7
    return m.train()


def zeros_like_outputs(model: Darknet, batch: int = 1) -> list[torch.Tensor]:
    with torch.no_grad():
        outs = model(torch.zeros(batch, 3, SIZE, SIZE))
    return [torch.zeros_like(o, requires_grad=True) for o in outs]


def target(img: int, cls: int, cx: float, cy: float, w: float, h: float) -> list[float]:
    return [img, cls, cx / SIZE, cy / SIZE, w / SIZE, h / SIZE]


def test_each_target_goes_to_its_best_anchor_over_all_layers(model):
    loss_fn = YOLOLoss(model)
    # anchors 10,16,22 (mask 0,1,2: stride-8 layer, index 1) and 30,40,52 (mask 3,4,5: stride-16 layer, index 0)
    t = torch.tensor([target(0, 1, 44, 20, 40, 40),  # anchor 4 -> layer 0 (stride 16), anchor 1, cell (1, 2)
                      target(0, 2, 100, 60, 16, 16)])  # anchor 1 -> layer 1 (stride 8), anchor 1, cell (7, 12)
    outs = zeros_like_outputs(model)
    loss, parts = loss_fn(outs, t, (SIZE, SIZE))
    loss.backward()
    g0, g1 = outs[0].grad[..., 4], outs[1].grad[..., 4]
    pos0 = (g0 < 0).nonzero().tolist()
    pos1 = (g1 < 0).nonzero().tolist()
    assert pos0 == [[0, 1, 1, 2]]
    assert pos1 == [[0, 1, 7, 12]]
    # Darknet's delta at a positive: obj_normalizer * (1 - sigmoid(0)) per image
    assert g0[0, 1, 1, 2].item() == pytest.approx(-0.5)
    # the class gradient at the positive: +0.5 for wrong classes, -0.5 for the right one
    assert outs[0].grad[0, 1, 1, 2, 5:].tolist() == pytest.approx([0.5, -0.5, 0.5])
    assert outs[1].grad[0, 1, 7, 12, 5:].tolist() == pytest.approx([0.5, 0.5, -0.5])
    assert torch.isfinite(parts).all() and parts.shape == (3,)


def test_iou_thresh_adds_other_anchors(model):
    loss_fn = YOLOLoss(model)
    t = torch.tensor([target(0, 0, 44, 20, 36, 36)])
    outs = zeros_like_outputs(model)
    loss_fn(outs, t, (SIZE, SIZE))[0].backward()
    single = sum(int((o.grad[..., 4] < 0).sum()) for o in outs)
    for layer in model.yolo_layers:
        layer.settings.iou_thresh = 0.5
    outs = zeros_like_outputs(model)
    loss_fn(outs, t, (SIZE, SIZE))[0].backward()
    several = sum(int((o.grad[..., 4] < 0).sum()) for o in outs)
    ious = wh_iou(torch.tensor([[36.0, 36.0]]), torch.tensor(model.yolo_layers[0].all_anchors))[0]
    assert single == 1
    assert several == int((ious > 0.5).sum()) + (0 if ious.max() > 0.5 else 1) and several > 1


def test_predictions_overlapping_a_target_are_not_penalised(model):
    loss_fn = YOLOLoss(model)
    t = torch.tensor([target(0, 0, 40, 40, 30, 30)])  # anchor 3 (30x30): layer 0, anchor 0, cell (2, 2)
    outs = zeros_like_outputs(model)
    with torch.no_grad():  # anchor 1 of the same cell (52x52) predicts the target box exactly: IoU 1
        outs[0][0, 2, 2, 2, 2:4] = math.log(30 / 52)
    loss_fn(outs, t, (SIZE, SIZE))[0].backward()
    g = outs[0].grad[..., 4]
    assert g[0, 0, 2, 2] < 0  # the assigned one is pushed up
    assert g[0, 2, 2, 2] == 0  # ignored: best IoU 1 > ignore_thresh
    assert g[0, 1, 5, 5] == pytest.approx(0.5)  # a far-away one is pushed down (sigmoid(0) - 0)


def test_mse_box_gradient_is_darknets(model):
    loss_fn = YOLOLoss(model)
    w = h = 30.0
    t = torch.tensor([target(0, 0, 40, 40, w, h)])
    outs = zeros_like_outputs(model)
    with torch.no_grad():
        outs[0][0, 0, 2, 2, 2] = 0.3  # tw; the target's tw is log(30/30) = 0
    loss_fn(outs, t, (SIZE, SIZE))[0].backward()
    scale = 2 - (w / SIZE) * (h / SIZE)
    iou_norm = model.yolo_layers[0].settings.iou_normalizer
    grad = outs[0].grad[0, 0, 2, 2]
    assert grad[2].item() == pytest.approx(scale * iou_norm * 0.3, rel=1e-4)
    assert grad[3].item() == pytest.approx(0.0, abs=1e-6)
    # x: target offset 0.5 in the cell, sigmoid(0) = 0.5 -> no gradient
    assert grad[0].item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("kind", ["mse", "giou", "ciou"])
def test_minimising_the_loss_recovers_the_targets(model, kind):
    for layer in model.yolo_layers:
        layer.settings.iou_loss = kind
    loss_fn = YOLOLoss(model)
    t = torch.tensor([target(0, 2, 50, 70, 34, 20), target(1, 0, 20, 30, 12, 14), target(1, 1, 90, 90, 50, 44)])
    outs = zeros_like_outputs(model, batch=2)
    opt = torch.optim.Adam(outs, lr=0.1)
    first = None
    for _ in range(150):
        opt.zero_grad()
        loss, parts = loss_fn(outs, t, (SIZE, SIZE))
        loss.backward()
        opt.step()
        first = parts if first is None else first
    model.eval()
    with torch.no_grad():
        dec = torch.cat([layer.decode(o).view(2, -1, 8) for layer, o in zip(model.yolo_layers, outs)], 1)
    for row in t:
        b = int(row[0])
        scores = dec[b, :, 4]
        best = scores.argmax()
        box = dec[b, best, :4]
        truth = row[2:6] * SIZE
        iou = bbox_iou_kind(box[None], truth[None], "iou").item()
        # every target is found; the best-scoring prediction of an image matches one of its targets
        ious = bbox_iou_kind(dec[b, :, :4], truth.expand(dec.shape[1], 4), "iou")
        found = (ious > 0.8) & (scores > 0.9) & (dec[b, :, 5:].argmax(1) == int(row[1]))
        assert found.any(), f"target {row.tolist()} not recovered"
        assert iou > 0.8 or any(
            bbox_iou_kind(box[None], (r[2:6] * SIZE)[None], "iou").item() > 0.8 for r in t if int(r[0]) == b)
    assert parts[1] < first[1] / 20  # objectness mostly solved


def test_batch_loss_is_the_mean_of_per_image_losses(model):
    loss_fn = YOLOLoss(model)
    torch.manual_seed(0)
    with torch.no_grad():
        outs = [o.detach() for o in model(torch.rand(2, 3, SIZE, SIZE))]
    t = torch.tensor([target(0, 2, 50, 70, 34, 20), target(1, 0, 20, 30, 12, 14), target(1, 1, 90, 90, 50, 44)])
    both, _ = loss_fn(outs, t, (SIZE, SIZE))
    per = []
    for b in range(2):
        tb = t[t[:, 0] == b].clone()
        tb[:, 0] = 0
        per.append(loss_fn([o[b:b + 1] for o in outs], tb, (SIZE, SIZE))[0])
    assert both.item() == pytest.approx((per[0] + per[1]).item() / 2, rel=1e-5)


def test_no_targets_only_objectness(model):
    loss_fn = YOLOLoss(model)
    outs = zeros_like_outputs(model, batch=2)
    loss, parts = loss_fn(outs, torch.zeros(0, 6), (SIZE, SIZE))
    n_pred = sum(o[0, ..., 0].numel() for o in outs)
    assert parts[0] == 0 and parts[2] == 0
    assert loss.item() == pytest.approx(n_pred * math.log(2), rel=1e-5)


def test_many_targets_vectorised(model):
    loss_fn = YOLOLoss(model)
    torch.manual_seed(1)
    n = 400
    t = torch.cat((torch.randint(0, 4, (n, 1)).float(), torch.randint(0, 3, (n, 1)).float(),
                   torch.rand(n, 2), torch.rand(n, 2) * 0.4 + 0.02), 1)
    outs = zeros_like_outputs(model, batch=4)
    loss, parts = loss_fn(outs, t, (SIZE, SIZE))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(o.grad).all() for o in outs)


def test_ciou_matches_definition():
    a = torch.tensor([[10.0, 10.0, 4.0, 2.0]])
    b = torch.tensor([[11.0, 10.0, 2.0, 2.0]])
    iou = bbox_iou_kind(a, b, "iou").item()
    assert iou == pytest.approx(4 / 8)  # inter: x 9..12 vs 10..12 -> 2x2=4; union 8+4-4
    # enclosing box 8..12 x 9..11: diagonal^2 = 16 + 4; centre distance^2 = 1
    assert bbox_iou_kind(a, b, "diou").item() == pytest.approx(0.5 - 1 / 20)
    v = 4 / math.pi ** 2 * (math.atan(1.0) - math.atan(2.0)) ** 2
    alpha = v / (1 - 0.5 + v)
    assert bbox_iou_kind(a, b, "ciou").item() == pytest.approx(0.5 - 1 / 20 - alpha * v, rel=1e-5)
    assert bbox_iou_kind(a, b, "giou").item() == pytest.approx(0.5 - (8 - 8) / 8)
