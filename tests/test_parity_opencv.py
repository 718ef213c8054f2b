"""Independent parity: OpenCV's own Darknet importer (cv2.dnn.readNetFromDarknet) as reference.

OpenCV returns, per [yolo] layer, rows (grid row, grid col, anchor) of
cx, cy, w, h (fractions of the input), objectness, objectness x class probability;
ours are (anchor, grid row, grid col) with boxes in input pixels and class
probabilities. OpenCV zeroes class scores below the [yolo] ``thresh`` key, so the
cfg handed to it gets ``thresh`` set (almost) to zero.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from yolo import Darknet

cv2 = pytest.importorskip("cv2")


def opencv_cfg(cfg: Path, tmp_path: Path) -> Path:
    """A copy of ``cfg`` whose [yolo] sections report every class score."""
    text = re.sub(r"^\[yolo\]\s*$", "[yolo]\nthresh=0.0000001", cfg.read_text(), flags=re.M)
    out = tmp_path / cfg.name
    out.write_text(text)
    return out


def opencv_rows(cfg: Path, weights: Path, blob: np.ndarray, model: Darknet) -> np.ndarray:
    """OpenCV's outputs, reordered to our row order and our units (boxes in pixels)."""
    cv2.setNumThreads(2)
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setInput(blob)
    outs = net.forward(net.getUnconnectedOutLayersNames())
    h, w = blob.shape[2:]
    rows = []
    # OpenCV lists the unconnected outputs in cfg order of the [yolo] layers
    for out, layer in zip(outs, model.yolo_layers):
        ny, nx = int(h // layer.out_stride), int(w // layer.out_stride)
        na = layer.num_anchors
        assert out.shape == (ny * nx * na, layer.num_attrib)
        rows.append(out.reshape(ny, nx, na, -1).transpose(2, 0, 1, 3).reshape(-1, layer.num_attrib))
    rows = np.concatenate(rows)
    rows[:, [0, 2]] *= w
    rows[:, [1, 3]] *= h
    return rows


def compare(ours: np.ndarray, theirs: np.ndarray, size: tuple[int, int], atol: float) -> None:
    """Boxes (as fractions of the input), objectness, and obj x class prob where OpenCV has one."""
    h, w = size
    scale = np.array([w, h, w, h])
    np.testing.assert_allclose(ours[:, :4] / scale, theirs[:, :4] / scale, atol=atol, rtol=0)
    np.testing.assert_allclose(ours[:, 4], theirs[:, 4], atol=atol, rtol=0)
    reported = theirs[:, 5:] > 0
    ours_scores = ours[:, 4:5] * ours[:, 5:]
    # the low thresh made OpenCV report every score that matters (and many that do not)
    assert reported[ours_scores > 1e-3].all()
    assert reported.mean() > 0.1
    np.testing.assert_allclose(ours_scores[reported], theirs[:, 5:][reported], atol=atol, rtol=0)


def test_shipped_model_matches_opencv_on_every_sample(fastest_cfg, fastest_weights, samples_dir, tmp_path):
    model = Darknet(fastest_cfg).load_darknet_weights(fastest_weights).eval()
    cfg = opencv_cfg(fastest_cfg, tmp_path)
    photos = sorted(samples_dir.glob("*.jpg"))
    assert len(photos) >= 7
    size = model.input_size
    blobs = np.concatenate([cv2.dnn.blobFromImage(cv2.imread(str(p)), 1 / 255, size[::-1], swapRB=True)
                            for p in photos])
    theirs = [opencv_rows(cfg, fastest_weights, b[None], model) for b in blobs]
    with torch.no_grad():
        ours = model(torch.from_numpy(blobs)).numpy()
        ours64 = model.double()(torch.from_numpy(blobs).double()).numpy()
    for photo, o, t in zip(photos, ours, theirs):
        assert o.shape == t.shape, photo.name
        compare(o, t, size, atol=5e-3)
    # float32 and float64 runs of the same forward agree far more tightly than OpenCV does
    scale = np.array([size[1], size[0]] * 2)
    np.testing.assert_allclose(ours[..., :4] / scale, ours64[..., :4] / scale, atol=5e-5, rtol=0)
    np.testing.assert_allclose(ours[..., 4:], ours64[..., 4:], atol=5e-5, rtol=0)
    # and the photos give confident detections, so the comparison is not all background
    assert (ours[..., 4:5] * ours[..., 5:]).max() > 0.5


def randomise_bn(model: Darknet, blob: np.ndarray, seed: int = 0) -> Darknet:
    """Non-default BatchNorm statistics and affine terms, so that a stream mix-up shows.

    The statistics start as those of ``blob`` itself (one training-mode pass with
    momentum 1), so every layer's output stays of order one, then are perturbed away
    from them; each head's last convolution is scaled so its raw outputs have unit
    spread: exp(t_wh) and the sigmoids then stay where a wrong weight changes the result.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(blob)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.momentum = 1.0
        model.train()(x)
        for m in bns:
            n = m.num_features
            m.momentum = 0.03
            m.running_mean.add_(torch.randn(n, generator=g) * 0.05 * m.running_var.sqrt())
            m.running_var.mul_(torch.rand(n, generator=g) * 0.4 + 0.8)
            m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)  # contracting: no chaos
            m.bias.copy_(torch.randn(n, generator=g) * 0.1)
        model.eval()
        blocks = list(model.module_list)
        for head in model.yolo_layers:
            conv = blocks[blocks.index(head) - 1].unit.conv
            raw = []
            hook = conv.register_forward_hook(lambda mod, inp, out: raw.append(out))
            model(x)
            hook.remove()
            conv.weight.div_(raw[0].std())
            conv.bias.div_(raw[0].std())
    return model


@pytest.mark.parametrize("name,size", [("yolov3.cfg", (160, 224)), ("yolov3-tiny.cfg", (224, 224)),
                                       ("yolov4-tiny.cfg", (224, 160))])
def test_opencv_reads_weights_we_wrote(root, tmp_path, name, size):
    torch.manual_seed(0)
    blob = np.random.default_rng(0).random((1, 3, *size), dtype=np.float32)
    model = randomise_bn(Darknet(name), blob)
    weights = tmp_path / "random.weights"
    model.save_darknet_weights(weights)
    # OpenCV's Darknet importer normalises with BatchNorm eps 1e-6 (Darknet's CPU path divides
    # by sqrt(var) + 1e-6; its cuDNN path and blocks.md use 1e-5, our default, checked in
    # test_model.py). Mirror the reference's constant so this compares the weights stream
    # and the graph: with eps 1e-5 these random nets differ from OpenCV by ~1.5e-3.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 1e-6
    theirs = opencv_rows(opencv_cfg(root / "cfg" / name, tmp_path), weights, blob, model)
    with torch.no_grad():
        ours = model(torch.from_numpy(blob))[0].numpy()
    assert ours.shape == theirs.shape
    compare(ours, theirs, size, atol=1e-4)
