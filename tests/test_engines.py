"""The engine registry, ModelInfo built in one place, the CLI's one error table and --img-size parser."""
from __future__ import annotations

import argparse
import inspect
import warnings

import numpy as np
import pytest
import torch

from yolo.backends import (
    ENGINES,
    Backend,
    BackendError,
    ModelInfo,
    backend_for,
    engine_names,
    engines,
    load_backend,
    register_engine,
)
from yolo.cfg import ConfigError
from yolo.cli.common import EXIT_INTERRUPTED, EXIT_USER_ERROR, UserError, add_img_size_arg, exit_code, parse_img_size
from yolo.detect_inputs import DetectError
from yolo.model import Darknet

from helpers import ROOT


@pytest.fixture
def fake_engine():
    """An engine defined in one class and registered, as a new engine file would be."""
    @register_engine("fake")
    class FakeBackend(Backend):
        precisions = ("fp32",)
        suffixes = (".fake",)

        @classmethod
        def from_files(cls, cfg, weights, precision="fp32", device="cpu", names=None):
            info = ModelInfo(3, (32, 32), False, 32, [32.0], "fake.cfg", names)
            return cls(info, precision, torch.device(device))

    yield FakeBackend
    ENGINES.pop("fake")


def test_engines_are_registered_with_their_capabilities():
    known = engines()
    assert list(known)[:2] == ["torch", "onnxruntime"] and engine_names() == tuple(known)
    assert set(known["torch"].precisions) == {"fp32", "bf16", "fp16"} and known["onnxruntime"].precisions == (
        "fp32", "int8")
    assert backend_for("m.onnx", None) == "onnxruntime" and backend_for("M.ONNX", None) == "onnxruntime"
    assert backend_for("m.weights", None) == backend_for("darknet53.conv.74", None) == "torch"
    assert backend_for(None, None) == "torch"
    assert backend_for("m.onnx", "torch") == "torch"


def test_unknown_engine_lists_the_registered_ones():
    with pytest.raises(BackendError, match="must be one of torch, onnxruntime.*got 'tensorrt'"):
        backend_for("m.weights", "tensorrt")


def test_one_from_files_signature():
    signatures = {name: list(inspect.signature(cls.from_files).parameters) for name, cls in engines().items()}
    assert all(s == ["cfg", "weights", "precision", "device", "names"] for s in signatures.values()), signatures


def test_a_new_engine_is_one_class_and_its_registration(fake_engine):
    engine = load_backend(None, "model.fake", names=["a", "b", "c"])
    assert isinstance(engine, fake_engine) and engine.name == "fake" and engine.info.names == ["a", "b", "c"]
    assert "fake" in engine_names()
    with pytest.raises(ValueError, match="registered twice"):
        register_engine("fake")(type("Other", (Backend,), {}))


def test_model_info_from_model_and_metadata_agree():
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = Darknet(ROOT / "cfg" / "yolov4-tiny.cfg", warn_unused=False)
    info = ModelInfo.from_model(model, ["x"] * 80)
    back = ModelInfo.from_metadata(info.to_metadata(), "m.onnx")
    assert back == info and info.input_size == (416, 416) and info.strides == [32.0, 16.0]
    assert ModelInfo.from_model(model, None, input_size=(320, 640)).input_size == (320, 640)
    with pytest.raises(BackendError, match="damaged yolo metadata"):
        ModelInfo.from_metadata({"num_classes": "x"}, "m.onnx")


def test_one_exit_code_table():
    for error in (ConfigError("bad"), DetectError("bad"), UserError("bad"), FileNotFoundError("gone")):
        assert exit_code(error) == EXIT_USER_ERROR, error
    assert exit_code(KeyboardInterrupt()) == EXIT_INTERRUPTED
    assert exit_code(RuntimeError("a bug")) is None and exit_code(RuntimeError("ours"), (RuntimeError,)) == 2


@pytest.mark.parametrize("words, hw", [([], None), (["320"], (320, 320)), (["320", "416"], (320, 416)),
                                       (["320,416"], (320, 416)), (["320x416"], (320, 416))])
def test_img_size_is_one_size_or_height_width(words, hw):
    p = argparse.ArgumentParser()
    add_img_size_arg(p, "input")
    assert parse_img_size(p.parse_args(["--img-size", *words] if words else []).img_size) == hw


def test_img_size_errors():
    with pytest.raises(UserError, match="one size or HEIGHT WIDTH, got 3"):
        parse_img_size([[1], [2], [3]])
    with pytest.raises(UserError, match="must be positive"):
        parse_img_size([0, 320])


def test_the_shipped_cfg_is_implied_only_for_engines_that_need_one(fake_engine):
    from yolo.assets import DEFAULT_CFG
    from yolo.cli.common import engine_args

    def cfg_for(weights: str) -> str | None:
        args = argparse.Namespace(cfg=None, weights=weights, backend=None, precision=None, half=False)
        return engine_args(args)["cfg"]

    assert cfg_for("m.weights") == cfg_for("last.pt") == str(DEFAULT_CFG)
    assert cfg_for("m.onnx") is None
    fake_engine.needs_cfg = False
    assert cfg_for("m.fake") is None


# --- backend="auto": the companion .onnx beside the weights ---------------------------------------------
@pytest.fixture
def no_measurements(tmp_path, monkeypatch):
    """An empty user cache folder: nothing measured, so auto takes its documented order."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_fallback_order_with_a_companion():
    from yolo.backends.auto import fallback_engine

    everything = ["torch", "opencv", "onnxruntime"]
    assert fallback_engine(".weights", True, everything, companion=True)[0] == "onnxruntime"
    assert fallback_engine(".weights", False, everything, companion=True)[0] == "onnxruntime"
    assert fallback_engine(".weights", True, ["torch", "opencv"], companion=True)[0] == "opencv"  # no onnxruntime
    assert fallback_engine(".pt", False, everything, companion=True)[0] == "torch"


def test_companion_problem_names_what_differs():
    from yolo.backends.auto import SOURCE_KEYS, companion_problem

    want = {SOURCE_KEYS[0]: "a", SOURCE_KEYS[1]: "b"}
    assert companion_problem(dict(want, other="x"), want, None, (416, 416)) is None  # dynamic: any size
    assert "other weights" in companion_problem({**want, SOURCE_KEYS[1]: "c"}, want, None, None)
    assert "other weights" in companion_problem({}, want, None, None)
    assert companion_problem(want, want, (320, 320), (320, 320)) is None
    assert "exported for 320x320 input, not 416x416" in companion_problem(want, want, (320, 320), (416, 416))


def test_the_shipped_companion_is_exported_from_the_shipped_model():
    """yolo/assets/weights/yolo-fastest-1.1.onnx records the sha256 of the shipped cfg and weights:
    after a change to either, write it again (yolo.backends.auto.write_companion)."""
    onnx = pytest.importorskip("onnx")
    from yolo.assets import DEFAULT_CFG, DEFAULT_WEIGHTS
    from yolo.backends.auto import SOURCE_KEYS, companion_file, source_hashes
    from yolo.cfg import read_cfg_text

    path = companion_file(DEFAULT_WEIGHTS)
    assert path == DEFAULT_WEIGHTS.with_suffix(".onnx")
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert {k: meta.get(k) for k in SOURCE_KEYS} == source_hashes(read_cfg_text(DEFAULT_CFG), DEFAULT_WEIGHTS)
    assert meta["dynamic_size"] == "1" and meta["batch"] == "dynamic" and meta["precision"] == "fp32"


def test_detector_auto_runs_the_companion_and_says_why(fastest_cfg, fastest_weights, samples_dir, tmp_path,
                                                       no_measurements):
    """Detector(backend="auto"): onnxruntime on the shipped .onnx (the torch engine's boxes); the same
    .onnx beside a copy of the weights is used too, but not once the weights change (OpenCV then,
    and the why says so); without one: OpenCV (a plain cfg)."""
    pytest.importorskip("onnxruntime")
    import shutil

    import cv2

    from yolo import Detector

    img = cv2.imread(str(samples_dir / "dog.jpg"))
    ref = Detector(fastest_cfg, fastest_weights, backend="torch")(img)
    auto = Detector(fastest_cfg, fastest_weights, backend="auto", img_size=416)  # dynamic: any size
    assert auto.engine.name == "onnxruntime" and auto.img_size == (416, 416)
    auto = Detector(fastest_cfg, fastest_weights, backend="auto")
    why = auto.engine.describe()
    assert auto.engine.name == "onnxruntime" and "(auto: not measured; the .onnx exported from these weights" in why
    assert auto.engine.info.extra["auto"] in why and "yolo-fastest-1.1.onnx" in why
    got = auto(img)
    assert got.shape == ref.shape and (got[:, 5] == ref[:, 5]).all()
    np.testing.assert_allclose(got[:, :5], ref[:, :5], atol=1e-3, rtol=0)

    weights = tmp_path / "mine.weights"
    shutil.copy(fastest_weights, weights)
    assert Detector(fastest_cfg, weights, backend="auto").engine.name == "opencv"  # no companion
    shutil.copy(fastest_weights.with_suffix(".onnx"), tmp_path / "mine.onnx")
    assert Detector(fastest_cfg, weights, backend="auto").engine.name == "onnxruntime"
    data = bytearray(weights.read_bytes())
    data[-4:] = b"\0\0\0\0"  # the weights changed after the export
    weights.write_bytes(bytes(data))
    stale = Detector(fastest_cfg, weights, backend="auto").engine
    assert stale.name == "opencv" and "exported from another cfg or other weights" in stale.describe()
