"""Training augmentation: boxes follow the image, degenerate/crowd boxes go, bad images are counted."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from yolo.augment import AugmentConfig, hsv_jitter, random_place, transform_boxes
from yolo.loaders import TrainDataset, collate


@dataclass
class Rec:
    path: Path
    labels: np.ndarray
    crowd: np.ndarray


def white_box_image(w: int = 200, h: int = 150, box=(40, 30, 120, 90)) -> tuple[np.ndarray, np.ndarray]:
    img = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = 255
    return img, np.array([[x1, y1, x2, y2, 3]], np.float32)


def bbox_of_white(img: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(img[..., 0] > 127)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


@pytest.mark.parametrize("letter_box", [False, True])
@pytest.mark.parametrize("angle", [0.0, 20.0])
@pytest.mark.parametrize("seed", range(6))
def test_boxes_follow_jitter_flip_and_rotation(seed, angle, letter_box):
    img, boxes = white_box_image()
    cfg = AugmentConfig(jitter=0.3, flip=True, angle=angle, letter_box=letter_box)
    out, moved = random_place(img, boxes, (128, 96), cfg, np.random.default_rng(seed))
    assert out.shape == (96, 128, 3)
    assert len(moved) == 1 and moved[0, 4] == 3
    # a rotated rectangle's bounding box is the box of its rotated corners: what the label becomes
    np.testing.assert_allclose(moved[0, :4], bbox_of_white(out), atol=2.0)


def test_rotation_turns_the_box_by_the_drawn_angle():
    """With jitter 0 and a fixed seed the rotation really happens (the white area is not upright)."""
    img, boxes = white_box_image()
    fills = []
    for seed in range(8):
        out, _ = random_place(img, boxes, (200, 150), AugmentConfig(jitter=0.0, flip=False, angle=30.0),
                              np.random.default_rng(seed))
        x1, y1, x2, y2 = bbox_of_white(out).astype(int)
        fills.append((out[y1:y2, x1:x2, 0] > 127).mean())
    assert min(fills) < 0.8  # at least one draw turned the rectangle by well over 10 degrees


def test_flip_mirrors_boxes():
    m = np.array([[-1, 0, 100], [0, 1, 0]], np.float64)
    out = transform_boxes(np.array([[10, 20, 30, 60, 1]], np.float32), m, (100, 80))
    np.testing.assert_allclose(out, [[70, 20, 90, 60, 1]])


def test_degenerate_and_outside_boxes_are_dropped():
    boxes = np.array([[10, 10, 11, 40, 0],  # 1 px wide
                      [-50, 10, -10, 40, 1],  # entirely left of the image
                      [90, 10, 130, 40, 2],  # partly outside: clipped to 90..100
                      [20, 20, 60, 60, 3]], np.float32)
    out = transform_boxes(boxes, np.eye(2, 3), (100, 80))
    assert out[:, 4].tolist() == [2, 3]
    np.testing.assert_allclose(out[0, :4], [90, 10, 100, 40])


def test_hsv_identity_and_change():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    assert hsv_jitter(img, 0.0, 1.0, 1.0, rng) is img
    out = hsv_jitter(img, 0.2, 2.0, 2.0, np.random.default_rng(3))
    assert out.shape == img.shape and out.dtype == np.uint8 and not np.array_equal(out, img)


def _write(tmp: Path, name: str, img: np.ndarray) -> Path:
    p = tmp / name
    cv2.imwrite(str(p), img)
    return p


def test_dataset_drops_crowd_counts_unreadable_and_is_deterministic(tmp_path):
    img, _ = white_box_image()
    good = _write(tmp_path, "a.png", img)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    labels = np.array([[3, 0.4, 0.4, 0.4, 0.4], [1, 0.8, 0.8, 0.2, 0.2]], np.float32)
    recs = [Rec(good, labels, np.array([False, True])), Rec(bad, labels, np.array([False, False]))]
    ds = TrainDataset(recs, 64, AugmentConfig(jitter=0.2, hue=0.1, saturation=1.5, exposure=1.5, flip=True), seed=1)
    with pytest.warns(UserWarning, match="broken.jpg"):
        batch = collate([ds[0], ds[1]])
    assert batch["skipped"] == 1
    assert batch["images"].shape == (1, 3, 64, 64)
    assert batch["targets"][:, 1].tolist() == [3.0]  # the crowd box (class 1) is not trained on
    a, b = ds[0], ds[0]
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    ds.set_epoch(1)
    assert not np.array_equal(ds[0][0], a[0])


def test_plain_resize_without_augmentation(tmp_path):
    img, boxes = white_box_image()
    p = _write(tmp_path, "a.png", img)
    h0, w0 = img.shape[:2]
    x1, y1, x2, y2 = boxes[0, :4]
    lab = np.array([[0, (x1 + x2) / 2 / w0, (y1 + y2) / 2 / h0, (x2 - x1) / w0, (y2 - y1) / h0]], np.float32)
    ds = TrainDataset([Rec(p, lab, np.zeros(1, bool))], (96, 128), AugmentConfig(), augment=False)
    out, b, _ = ds[0]
    assert out.shape == (96, 128, 3)
    np.testing.assert_allclose(b[0, 1:], bbox_of_white(out), atol=1.0)
    t = collate([ds[0]])["targets"]  # normalised cx, cy, w, h are those of the original label
    np.testing.assert_allclose(t[0, 2:].numpy(), lab[0, 1:], atol=1e-2)


def test_mosaic_puts_each_box_on_its_colour(tmp_path):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    recs = []
    for i, c in enumerate(colours):
        img = np.zeros((120, 160, 3), np.uint8)
        img[30:90, 40:120] = c
        recs.append(Rec(_write(tmp_path, f"{i}.png", img), np.array([[i, 0.5, 0.5, 0.5, 0.5]], np.float32),
                        np.zeros(1, bool)))
    ds = TrainDataset(recs, 128, AugmentConfig(jitter=0.1, mosaic=True, flip=True), seed=0)
    for idx in range(4):
        out, boxes, _ = ds[idx]
        assert out.shape == (128, 128, 3) and len(boxes) >= 1
        for cls, x1, y1, x2, y2 in boxes:
            patch = out[int(y1) + 1:int(y2) - 1, int(x1) + 1:int(x2) - 1].reshape(-1, 3)
            assert len(patch) and (np.abs(patch.astype(int) - colours[int(cls)]).max(1) < 40).mean() > 0.9
