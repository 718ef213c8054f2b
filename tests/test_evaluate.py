"""Evaluation: pycocotools numbers on coco128 in both dataset forms, the ground-truth oracle, bad input."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from yolo.backends import Backend, ModelInfo
from yolo.backends.pytorch import TorchBackend
from yolo.checkpoint import load_weights
from yolo.cli.test import main
from yolo.datasets import DataWarning, drop_crowd, load_dataset, write_darknet_dataset
from yolo.evaluate import EvalError, evaluate
from yolo.model import Darknet


class Oracle(Backend):
    """An engine that outputs each image's non-crowd ground truth with score 1, in loader order.

    Boxes go in as network-input pixels (plain resize), so the whole path is exercised:
    postprocess, Geometry.to_original, category and image ids, the ground-truth conversion.
    """

    def __init__(self, records, num_classes: int, size_hw=(320, 320), max_stride: int = 32) -> None:
        super().__init__(ModelInfo(num_classes, size_hw, False, max_stride, [max_stride], "oracle"), "fp32",
                         torch.device("cpu"))
        self.records, self.num_classes, self.cursor = list(records), num_classes, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        out = torch.zeros(x.shape[0], 64, 5 + self.num_classes)
        for j in range(x.shape[0]):
            rec = self.records[self.cursor]
            self.cursor += 1
            lab = torch.from_numpy(rec.labels[~rec.crowd])
            k = torch.arange(len(lab))
            out[j, k, 0], out[j, k, 2] = lab[:, 1] * w, lab[:, 3] * w
            out[j, k, 1], out[j, k, 3] = lab[:, 2] * h, lab[:, 4] * h
            out[j, k, 4] = 1.0
            out[j, k, 5 + lab[:, 0].long()] = 1.0
        return out


class Memo(TorchBackend):
    """The real model, remembering its output per input image (keyed by the exact input bytes).

    The Darknet and COCO forms of coco128 feed identical arrays, so the comparisons below pay
    for one inference of the 128 images instead of three; outputs are the model's own.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.run = super().__call__
        self.cache: dict[bytes, np.ndarray] = {}
        self.calls = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        assert isinstance(x, np.ndarray)  # evaluate() feeds the engine contract's arrays, never tensors
        keys = [x[i].tobytes() for i in range(x.shape[0])]
        todo = [i for i, k in enumerate(keys) if k not in self.cache]
        if todo:
            self.calls += 1
            for i, out in zip(todo, self.run(x[todo])):
                self.cache[keys[i]] = out
        return np.stack([self.cache[k] for k in keys])


def _oracle_eval(info, **kw):
    # nms_thres=1: NMS must not remove ground truth boxes that overlap each other
    return evaluate(Oracle(info.records, info.num_classes), info, nms_thres=1.0, workers=0, verbose=False, **kw)


@pytest.fixture(scope="module")
def coco_info(coco128):
    return load_dataset(coco128 / "annotations" / "instances_val2017.json", coco128 / "val2017")


@pytest.fixture(scope="module")
def darknet_data(coco_info, tmp_path_factory) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # the 10 crowd boxes are dropped, on purpose
        return write_darknet_dataset(coco_info, tmp_path_factory.mktemp("coco128_darknet"))


@pytest.fixture(scope="module")
def fastest(fastest_cfg, fastest_weights) -> Darknet:
    model = Darknet(fastest_cfg)
    load_weights(model, fastest_weights)
    return model.fuse()


@pytest.fixture(scope="module")
def memo(fastest) -> Memo:
    return Memo(fastest)


# --- the conversion is exact: ground truth as detections scores 1.0, both forms -----------------
def test_ground_truth_oracle_coco_form(coco_info):
    m = _oracle_eval(coco_info)
    assert m["images"] == 128 and m["detections"] == 929
    assert m["map50"] == pytest.approx(1.0) and m["map"] == pytest.approx(1.0)


def test_ground_truth_oracle_darknet_form(darknet_data):
    info = load_dataset(darknet_data)
    m = _oracle_eval(info)
    assert m["map50"] == pytest.approx(1.0) and m["map"] == pytest.approx(1.0)


def test_oracle_wrong_category_mapping_is_caught(coco_info):
    # The oracle check is sensitive to what it guards: classes shifted by one score near 0.
    shifted = drop_crowd(coco_info).records  # fresh label arrays
    for r in shifted:
        r.labels[:, 0] = (r.labels[:, 0] + 1) % 80
    m = evaluate(Oracle(shifted, 80), coco_info, nms_thres=1.0, workers=0, verbose=False)
    assert m["map50"] < 0.1


# --- the real model ----------------------------------------------------------------------------
def test_coco128_reference_figures(memo, coco_info):
    """OpenCV's Darknet importer + pycocotools reach 0.165 / 0.329 with these settings."""
    m = evaluate(memo, coco_info, img_size=320, conf_thres=0.005, nms_thres=0.45, max_det=100,
                 workers=1, verbose=False)
    print(f"coco128 yolo-fastest-1.1 @320: mAP@[.5:.95]={m['map']:.4f} mAP@.5={m['map50']:.4f}")
    assert m["map"] >= 0.165 and m["map50"] >= 0.329
    assert m["images"] == 128 and len(m["stats"]) == 12 and m["map75"] == m["stats"][2]
    gt_classes = {coco_info.names[int(c)] for r in coco_info.records for c in r.labels[~r.crowd, 0]}
    assert set(m["per_class"]) == gt_classes
    assert sum(r["gt"] for r in m["per_class"].values()) == 929
    assert all(0 <= r["ap"] <= r["ap50"] <= 1 for r in m["per_class"].values())


def test_darknet_form_matches_coco_form(memo, coco_info, darknet_data):
    """The same images and boxes (crowd boxes dropped from both: YOLO labels cannot mark them)."""
    kw = dict(img_size=320, conf_thres=0.005, workers=0, verbose=False)
    dn = evaluate(memo, load_dataset(darknet_data), **kw)
    ref = evaluate(memo, drop_crowd(coco_info), **kw)
    print(f"darknet form {dn['map']:.4f}/{dn['map50']:.4f}, coco form (no crowd) "
          f"{ref['map']:.4f}/{ref['map50']:.4f}")
    assert dn["images"] == ref["images"] == 128
    assert dn["map"] == pytest.approx(ref["map"], abs=1e-3)
    assert dn["map50"] == pytest.approx(ref["map50"], abs=1e-3)
    assert dn["detections"] == ref["detections"] > 0
    assert dn["per_class"].keys() == ref["per_class"].keys()


def test_cli_outputs(coco_info, tmp_path, capsys):
    """test.py end to end on a 16-image Darknet-form subset: printed report, json files, plots."""
    info = drop_crowd(coco_info)
    info.records = info.records[:16]
    data = write_darknet_dataset(info, tmp_path / "dn16")
    out = tmp_path / "out"
    rc = main(["--data", str(data), "--workers", "0", "--no-progress",
               "--save-json", str(out / "det.json"), "--metrics-json", str(out / "metrics.json"),
               "--plots", str(out / "plots")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "AP@[.5:.95] all" in text and "speed:" in text and "\nperson " in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"map", "map50", "map75", "per_class", "images", "ms_per_image", "stats"} <= set(metrics)
    assert metrics["images"] == 16 and 0 < metrics["map"] < metrics["map50"] < 1
    assert set(metrics["ms_per_image"]) == {"preprocess", "inference", "nms"}
    det = json.loads((out / "det.json").read_text())
    assert len(det) == metrics["detections"] > 0
    assert {d["image_id"] for d in det} <= set(range(1, 17))
    # Darknet-form class names here are COCO's json names, not coco.names: ids 1..80
    assert {d["category_id"] for d in det} <= set(range(1, 81))
    assert all(len(d["bbox"]) == 4 and 0 < d["score"] <= 1 for d in det)
    for png in ("pr_curve_50.png", "pr_curve_50_95.png"):
        img = cv2.imread(str(out / "plots" / png))
        assert img is not None and img.shape[0] > 100


def test_evaluate_leaves_caller_model_alone(coco_info, fastest_cfg):
    model = Darknet(fastest_cfg).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    info = drop_crowd(coco_info)
    info.records = info.records[:4]
    evaluate(model, info, workers=0, verbose=False, batch_size=3, fuse=True)
    assert model.training and not model.fused
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_evaluate_backend_auto_and_threads(coco_info, memo, fastest, fastest_cfg, fastest_weights, tmp_path,
                                           monkeypatch):
    """evaluate(weights file, backend="auto", threads=1): onnxruntime on the .onnx shipped beside the
    weights (nothing measured), one thread, the torch engine's figures; a model in memory: auto is the
    torch engine (and says why), another engine needs the file."""
    pytest.importorskip("onnxruntime")
    from yolo.backends.threads import engine_threads, set_threads

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    info = drop_crowd(coco_info)
    info.records = info.records[:8]
    kw = dict(conf_thres=0.005, verbose=False)
    ref = evaluate(memo, info, workers=0, **kw)
    before = torch.get_num_threads()
    try:
        got = evaluate(str(fastest_weights), info, cfg=fastest_cfg, backend="auto", threads=1, workers=1, **kw)
        assert engine_threads() == 1
    finally:
        set_threads(None)
        torch.set_num_threads(before)
    assert got["engine"].startswith("onnxruntime fp32") and "auto: not measured" in got["engine"]
    assert got["detections"] == ref["detections"] > 0
    np.testing.assert_allclose(got["stats"], ref["stats"], atol=1e-4, rtol=0)  # measured: equal
    m = evaluate(fastest, info, backend="auto", workers=0, **kw)
    assert "auto: a model in memory" in m["engine"] and m["stats"] == ref["stats"]
    with pytest.raises(EvalError, match="runs on the torch engine only; pass its weights file"):
        evaluate(fastest, info, backend="opencv", verbose=False)
    with pytest.raises(EvalError, match="the engine given is torch"):
        evaluate(memo, info, backend="opencv", verbose=False)


# --- bad input -----------------------------------------------------------------------------------
def _tiny_darknet(root: Path, broken: bool) -> Path:
    lines = []
    for n in range(3):
        img = root / "images" / f"im{n}.jpg"
        img.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(img), np.full((60 + 10 * n, 80, 3), 90, np.uint8))
        (root / "labels").mkdir(exist_ok=True)
        (root / "labels" / f"im{n}.txt").write_text(f"{n % 2} 0.5 0.5 0.4 0.3\n1 0.2 0.3 0.1 0.2\n")
        lines.append(str(img))
    if broken:
        (root / "images" / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
        (root / "labels" / "bad.txt").write_text("0 0.5 0.5 0.4 0.3\n")
        lines.insert(1, str(root / "images" / "bad.jpg"))
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    data = root / "tiny.data"
    data.write_text("classes = 2\nvalid = list.txt\n")
    return data


def test_unreadable_image_skipped_rest_evaluated(tmp_path):
    info = load_dataset(_tiny_darknet(tmp_path, broken=True))
    readable = [r for r in info.records if r.path.name != "bad.jpg"]
    model = Oracle(readable, 2, size_hw=(64, 64))
    with pytest.warns(DataWarning, match=r"bad\.jpg: not a readable image; skipped"):
        m = evaluate(model, info, nms_thres=1.0, workers=0, verbose=False, batch_size=2)
    assert m["images"] == 3 and m["skipped"] == 1 and m["problems"] == {"unreadable image": 1}
    assert m["map"] == pytest.approx(1.0)  # the broken image's box is not counted as missed


def test_class_count_mismatch_is_an_error(tmp_path, fastest):
    info = load_dataset(_tiny_darknet(tmp_path, broken=False))
    with pytest.raises(EvalError, match="dataset has 2 classes but the model .* predicts 80"):
        evaluate(fastest, info, verbose=False)


def test_no_detections_is_zero_not_a_crash(tmp_path):
    info = load_dataset(_tiny_darknet(tmp_path, broken=False))
    empty = [SimpleNamespace(labels=np.zeros((0, 5), np.float32), crowd=np.zeros(0, bool))] * 3
    with pytest.warns(DataWarning, match="no detection"):
        m = evaluate(Oracle(empty, 2, (64, 64)), info, workers=0, verbose=False)
    assert m["map"] == 0.0 and m["images"] == 3


def test_cli_user_errors_are_one_line(tmp_path, capsys, coco128):
    data = tmp_path / "x.data"
    data.write_text("classes = 80\nvalid = missing_list.txt\n")
    assert main(["--data", str(data), "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "x.data:2: key 'valid': 'missing_list.txt' not found" in err

    assert main(["--data", str(_tiny_darknet(tmp_path, broken=False)), "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "dataset has 2 classes but the model" in err[-1] and err[-1].startswith("error:")

    ann = str(coco128 / "annotations" / "instances_val2017.json")
    assert main(["--data", ann, "--img-size", "100", "--workers", "0"]) == 2
    assert "multiple of the network's stride 32" in capsys.readouterr().err
    assert main(["--data", ann, "--conf-thres", "2"]) == 2
    assert "--conf-thres must be in [0, 1)" in capsys.readouterr().err
    assert main(["--data", str(tmp_path / "nope.json")]) == 2
    assert "dataset not found" in capsys.readouterr().err
