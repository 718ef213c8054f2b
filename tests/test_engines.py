"""The engine registry, ModelInfo built in one place, the CLI's one error table and --img-size parser."""
from __future__ import annotations

import argparse
import inspect
import warnings

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
