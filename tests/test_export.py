"""ONNX export and the onnxruntime engine: parity with our PyTorch eval outputs for every cfg,
metadata that makes a .onnx self-sufficient, mAP and detections equal to the torch engine on real
data, INT8 files, and the errors a user meets (foreign files, class mismatches, missing cfg)."""
from __future__ import annotations

import json
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from yolo import Darknet
from yolo.backends import BackendError, load_backend
from yolo.backends.pytorch import TorchBackend
from yolo.export import ExportError, export_onnx, quantize_int8

from helpers import ROOT, build, randomize

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TOL = 1e-4  # boxes / input size, objectness and class probabilities


def slim_cfg(src: Path, tmp_path: Path, div: int = 8) -> Path:
    """``src`` with every filters= / planes= divided by ``div`` (the heads' last convolutions keep
    theirs): the same sections and constructs, a fraction of the parameters (test time)."""
    chunks = re.split(r"(?m)^(?=\[)", src.read_text())
    out = []
    for i, chunk in enumerate(chunks):
        feeds_yolo = i + 1 < len(chunks) and chunks[i + 1].lstrip().startswith("[yolo]")
        if not feeds_yolo:
            chunk = re.sub(r"(?m)^(filters|planes)\s*=\s*(\d+)",
                           lambda m: f"{m.group(1)}={max(8, int(m.group(2)) // div)}", chunk)
        out.append(chunk)
    path = tmp_path / src.name
    path.write_text("".join(out))
    return path


def model_for(cfg: Path, seed: int = 0) -> Darknet:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Darknet(cfg, warn_unused=False)
    torch.manual_seed(seed)
    return randomize(model, seed).eval()


def max_errors(session: "ort.InferenceSession", model: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(boxes / input size, objectness and class probabilities) max abs differences."""
    with torch.no_grad():
        ref = model(x)
    out = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    assert out.shape == ref.shape
    h, w = x.shape[-2:]
    d = (out - ref).abs()
    boxes = torch.cat([d[..., 0:1] / w, d[..., 1:2] / h, d[..., 2:3] / w, d[..., 3:4] / h], -1)
    return float(boxes.max()), float(d[..., 4:].max())


def session(path: Path) -> "ort.InferenceSession":
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------------------------
# parity: every cfg in cfg/
# ---------------------------------------------------------------------------------------------
SMALL = ["yolov3-tiny.cfg", "yolov4-tiny.cfg", "yolo-fastest-1.1.cfg", "yolov3-tiny-ac.cfg",
         "yolov3-tiny-ac.cfg:deploy"]
BIG = ["yolov3.cfg", "resnet50-yolov3.cfg", "res2net-yolov3.cfg", "res2net-triangle-yolov3.cfg",
       "scnet50-yolov3.cfg", "acresnet50-yolov3.cfg", "acresnet50-yolov3.cfg:deploy"]


def test_every_cfg_is_covered() -> None:
    assert {c.split(":")[0] for c in SMALL + BIG} == {p.name for p in (ROOT / "cfg").glob("*.cfg")}


def _prepared(case: str, tmp_path: Path, slim: bool) -> Darknet:
    name, _, form = case.partition(":")
    cfg = slim_cfg(ROOT / "cfg" / name, tmp_path) if slim else ROOT / "cfg" / name
    model = model_for(cfg)
    if form == "deploy":
        model.deploy().eval()  # deploy() leaves its new blocks in training mode (BatchNorm batch stats)
        assert model.deployed_sections
    return model


@pytest.mark.parametrize("case", SMALL)
def test_dynamic_export_matches_pytorch(case: str, tmp_path: Path) -> None:
    """--dynamic: batch 2 at two input sizes (a square and a non-square one) from one file; the
    yolov3-tiny stride-1 maxpool (asymmetric F.pad), yolov4-tiny route groups and the [yolo] grids."""
    model = _prepared(case, tmp_path, slim=False)
    path = export_onnx(model, tmp_path / "m.onnx", 64, dynamic=True, check=False)
    s = session(path)
    for hw in [(64, 64), (96, 128)]:
        boxes, scores = max_errors(s, model, torch.rand(2, 3, *hw))
        assert boxes < TOL and scores < TOL, (case, hw, boxes, scores)
    shape = s.get_inputs()[0].shape
    assert shape[0] == "batch" and shape[2] == "height" and shape[3] == "width"


@pytest.mark.parametrize("case", BIG)
def test_big_cfg_export_matches_pytorch(case: str, tmp_path: Path) -> None:
    """Res2Net, triangle, ResNet, SCNet, ACNet (training form and deployed), yolov3: one case each,
    on slimmed copies (filters / 8; same sections) at a small size."""
    model = _prepared(case, tmp_path, slim=True)
    size = 128 if case.startswith("scnet") else 64  # SCNet pools its stride-32 map by pooling_r=4
    path = export_onnx(model, tmp_path / "m.onnx", size, batch=1, check=False)
    boxes, scores = max_errors(session(path), model, torch.rand(1, 3, size, size))
    assert boxes < TOL and scores < TOL, (case, boxes, scores)


def test_export_leaves_the_model_alone_and_checks_itself(tmp_path: Path) -> None:
    model = model_for(ROOT / "cfg" / "yolov3-tiny.cfg")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = model.export_onnx(tmp_path / "sub" / "t.onnx", img_size=(64, 96), batch=2)  # check=True
    assert not model.fused and model.training is False
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    s = session(path)
    assert s.get_inputs()[0].shape == [2, 3, 64, 96]
    assert [o.name for o in s.get_outputs()] == ["predictions"]
    assert onnx.load(str(path)).opset_import[0].version == 17
    assert not any(p.name.startswith(".export-") for p in path.parent.iterdir())  # no temp files left


# ---------------------------------------------------------------------------------------------
# metadata -> ModelInfo; the backend
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fastest_onnx(tmp_path_factory: pytest.TempPathFactory, fastest_cfg: Path, fastest_weights: Path) -> Path:
    model = Darknet(fastest_cfg).load_darknet_weights(fastest_weights)
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "fastest.onnx", batch=1)


def test_metadata_alone_gives_the_model_info(fastest_onnx: Path, fastest_cfg: Path, fastest_weights: Path,
                                              coco_names: Path) -> None:
    engine = load_backend(None, fastest_onnx)
    torch_engine = TorchBackend.from_files(fastest_cfg, fastest_weights, "fp32", torch.device("cpu"))
    a, b = engine.info, torch_engine.info
    assert (a.num_classes, a.input_size, a.letter_box, a.max_stride, a.strides, a.cfg_name) == \
           (b.num_classes, b.input_size, b.letter_box, b.max_stride, b.strides, b.cfg_name)
    assert a.extra["nms_kind"] == b.extra["nms_kind"] and a.extra["beta_nms"] == b.extra["beta_nms"]
    assert a.names == coco_names.read_text().split("\n")[:80]
    assert engine.precision == "fp32" and engine.describe() == "onnxruntime fp32 on cpu"
    assert engine.session.get_session_options().intra_op_num_threads == torch.get_num_threads()
    x = torch.rand(3, 3, 320, 320)  # a file with batch 1 runs any batch (in chunks)
    boxes, scores = max_errors(engine.session, torch_engine.model, x[:1])
    assert boxes < TOL and scores < TOL
    out = engine(x)
    assert out.shape == (3, 1500, 85) and torch.allclose(out[1:2], engine(x[1:2]))
    with pytest.raises(BackendError, match="exported for 320x320.*--dynamic"):
        engine(torch.rand(1, 3, 256, 256))


@pytest.mark.slow
def test_map_on_coco128_equals_the_torch_engine(fastest_onnx: Path, coco128: Path, fastest_weights: Path,
                                                 tmp_path: Path) -> None:
    from yolo.cli.test import main

    ann = coco128 / "annotations" / "instances_val2017.json"
    maps = {}
    for name, weights in (("torch", fastest_weights), ("ort", fastest_onnx)):
        out = tmp_path / f"{name}.json"
        assert main(["--weights", str(weights), "--data", str(ann), "--no-progress", "--workers", "0",
                     "--metrics-json", str(out)]) == 0
        maps[name] = json.loads(out.read_text())
    assert maps["torch"]["map50"] > 0.3
    assert abs(maps["ort"]["map50"] - maps["torch"]["map50"]) <= 0.001
    assert abs(maps["ort"]["map"] - maps["torch"]["map"]) <= 0.001


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    lt, rb = np.maximum(a[:2], b[:2]), np.minimum(a[2:4], b[2:4])
    inter = np.prod(np.clip(rb - lt, 0, None))
    return float(inter / (np.prod(a[2:4] - a[:2]) + np.prod(b[2:4] - b[:2]) - inter))


def test_detect_with_onnx_finds_what_torch_finds(fastest_onnx: Path, fastest_cfg: Path, fastest_weights: Path,
                                                 samples_dir: Path, tmp_path: Path) -> None:
    from yolo.cli.detect import main
    from yolo.detector import Detector
    from yolo.io import imread

    torch_det = Detector(fastest_cfg, fastest_weights)
    ort_det = Detector(None, fastest_onnx)
    for path in sorted(samples_dir.glob("*.jpg")):
        img = imread(path)[0]
        a, b = torch_det(img), ort_det(img)
        assert sorted(a[:, 5].tolist()) == sorted(b[:, 5].tolist()), path.name
        for row in a:  # each torch box has an onnxruntime box of its class with IoU >= 0.95
            same = b[b[:, 5] == row[5]]
            assert max(_iou(row, o) for o in same) >= 0.95, path.name
        if path.name == "dog.jpg":
            assert {ort_det.names[int(c)] for c in b[:, 5]} >= {"dog", "bicycle"}
    out = tmp_path / "det"
    assert main(["--weights", str(fastest_onnx), "--source", str(samples_dir / "dog.jpg"), "--output", str(out),
                 "--save-json", "--no-progress", "--quiet", "--workers", "0"]) == 0
    assert {d["class_name"] for d in json.loads((out / "detections.json").read_text())} >= {"dog", "bicycle"}


# ---------------------------------------------------------------------------------------------
# INT8
# ---------------------------------------------------------------------------------------------
def test_int8_file_runs_and_says_so(tmp_path: Path, samples_dir: Path) -> None:
    model = model_for(ROOT / "cfg" / "yolov3-tiny.cfg")
    fp32 = export_onnx(model, tmp_path / "t.onnx", 64, dynamic=True, check=False)
    q = quantize_int8(fp32, tmp_path / "t-int8.onnx", samples_dir, calib_images=2, keep_fp32="heads")
    proto = onnx.load(str(q))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["precision"] == "int8" and json.loads(meta["quantization"])["calibration_images"] == 2
    ops = {n.op_type for n in proto.graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    # the decode and the heads' last convolutions stay fp32: no QDQ around them
    heads = [n for n in proto.graph.node if n.op_type == "Conv" and n.name.startswith(("/module_list.15/",
                                                                                      "/module_list.22/"))]
    assert len(heads) == 2
    produced_by = {o: n for n in proto.graph.node for o in n.output}
    assert all(h.input[1] not in produced_by for h in heads)  # float weights, straight from the initializer
    assert any(produced_by.get(n.input[1]) is not None for n in proto.graph.node if n.op_type == "Conv")
    for precision in ("int8", "fp32"):  # a quantised file is just another file
        engine = load_backend(None, q, precision=precision)
        assert engine.precision == "int8"
        out = engine(torch.rand(2, 3, 96, 64))
        assert out.shape == (2, 3 * (3 * 2 + 6 * 4), 85) and torch.isfinite(out).all()
    with pytest.raises(BackendError, match="not quantised.*--int8"):
        load_backend(None, fp32, precision="int8")


def test_cli_writes_fp32_and_int8(tmp_path: Path, samples_dir: Path, capsys: pytest.CaptureFixture) -> None:
    from yolo.cli.export import main

    cfg = slim_cfg(ROOT / "cfg" / "yolov4-tiny.cfg", tmp_path)
    weights = tmp_path / "w.weights"
    model_for(cfg).save_darknet_weights(weights)
    out = tmp_path / "m.onnx"
    assert main(["--cfg", str(cfg), "--weights", str(weights), "--out", str(out), "--img-size", "64",
                 "--int8", "--calib-data", str(samples_dir), "--calib-images", "2"]) == 0
    assert out.exists() and (tmp_path / "m-int8.onnx").exists()
    assert load_backend(None, tmp_path / "m-int8.onnx").precision == "int8"
    assert main(["--cfg", str(cfg), "--weights", str(weights), "--out", str(out), "--int8"]) == 2
    assert "--int8 needs --calib-data" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Darknet]:
    """A yolov3-tiny export and a copy of it without our metadata (a 'foreign' file)."""
    folder = tmp_path_factory.mktemp("tiny")
    model = model_for(ROOT / "cfg" / "yolov3-tiny.cfg")
    ours = export_onnx(model, folder / "ours.onnx", 416, batch=1, check=False)
    proto = onnx.load(str(ours))
    del proto.metadata_props[:]
    foreign = folder / "foreign.onnx"
    onnx.save(proto, str(foreign))
    return ours, foreign, model


def test_foreign_onnx_needs_cfg(tiny_pair: tuple[Path, Path, Darknet]) -> None:
    _, foreign, model = tiny_pair
    with pytest.raises(BackendError, match="no yolo metadata.*--cfg"):
        load_backend(None, foreign)
    engine = load_backend(ROOT / "cfg" / "yolov3-tiny.cfg", foreign)
    assert engine.info.num_classes == 80 and engine.info.input_size == (416, 416)
    assert engine.info.cfg_name == "yolov3-tiny.cfg" and engine.info.max_stride == 32


def test_class_count_mismatch_names_both(tiny_pair: tuple[Path, Path, Darknet], tmp_path: Path) -> None:
    ours, foreign, _ = tiny_pair
    with pytest.raises(BackendError, match=r"--names: 3 class names, but ours.onnx has 80 classes"):
        load_backend(None, ours, names=["a", "b", "c"])
    other = tmp_path / "voc.cfg"  # yolov3-tiny with 20 classes
    text = (ROOT / "cfg" / "yolov3-tiny.cfg").read_text().replace("classes=80", "classes=20")
    other.write_text(text.replace("filters=255", "filters=75"))
    with pytest.raises(BackendError, match=r"ours.onnx has 80 classes \(yolov3-tiny.cfg\), but --cfg voc.cfg has 20"):
        load_backend(other, ours)
    with pytest.raises(BackendError, match=r"foreign.onnx: output .*85.*--cfg voc.cfg says 20 classes"):
        load_backend(other, foreign)


def test_missing_files_and_unknown_precision(tiny_pair: tuple[Path, Path, Darknet], tmp_path: Path) -> None:
    ours, foreign, _ = tiny_pair
    with pytest.raises(BackendError, match="not found|No such|does not exist"):
        load_backend(None, tmp_path / "nothing.onnx")
    with pytest.raises((BackendError, FileNotFoundError), match="missing.cfg"):
        load_backend(tmp_path / "missing.cfg", foreign)
    with pytest.raises(BackendError, match="precision 'fp16' is not available for the onnxruntime"):
        load_backend(None, ours, precision="fp16")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(BackendError, match="onnxruntime cannot load it"):
        load_backend(None, broken)


def test_cli_errors_are_one_line(tiny_pair: tuple[Path, Path, Darknet], tmp_path: Path,
                                 capsys: pytest.CaptureFixture, samples_dir: Path) -> None:
    from yolo.cli.detect import main

    _, foreign, _ = tiny_pair
    assert main(["--weights", str(foreign), "--source", str(samples_dir / "dog.jpg"), "--no-save",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "--cfg" in err and "\n" not in err


def test_without_onnxruntime_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tiny_pair) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(BackendError, match=re.escape('pip install -e ".[onnx]"')):
        load_backend(None, tiny_pair[0])


def test_construct_onnx_cannot_express_names_the_section(tmp_path: Path) -> None:
    """A stride-3 pool on a stride-1 map of a stride-4 network pads differently at 48 and 52: a
    --dynamic graph cannot hold that; one fixed size can."""
    head = ("[convolutional]\nfilters=21\nsize=1\nstride=1\nactivation=linear\n\n"
            "[yolo]\nmask=0,1,2\nanchors=4,4, 8,8, 12,12\nclasses=2\nnum=3\n\n")
    body = ("[convolutional]\nfilters=8\nsize=3\nstride=1\nactivation=leaky\n\n"
            "[maxpool]\nsize=2\nstride=2\n\n"
            "[convolutional]\nfilters=8\nsize=3\nstride=2\nactivation=leaky\n\n" + head +
            "[route]\nlayers=-5\n\n"
            "[maxpool]\nsize=3\nstride=3\n\n" + head)
    model = randomize(build(tmp_path, body, c=3, w=48)).eval()
    with pytest.raises(ExportError, match=r"t.cfg:\d+: \[maxpool\] size=3 stride=3.*without --dynamic"):
        export_onnx(model, tmp_path / "m.onnx", 48, dynamic=True)
    path = export_onnx(model, tmp_path / "m.onnx", 48)  # one size: checked against PyTorch inside
    assert path.exists()


def test_tracer_failure_names_the_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from yolo.blocks.routing import Upsample

    model = randomize(model_for(ROOT / "cfg" / "yolov3-tiny.cfg")).eval()

    def untraceable(self, x):  # an operator torch.onnx has no ONNX form for
        return torch.special.i0(x).repeat_interleave(2, 2).repeat_interleave(2, 3)

    monkeypatch.setattr(Upsample, "forward", untraceable)
    with pytest.raises(ExportError, match=r"yolov3-tiny.cfg:\d+: \[upsample\] cannot be expressed in ONNX"):
        export_onnx(model, tmp_path / "m.onnx", 64, check=False)
    assert not (tmp_path / "m.onnx").exists()
