"""python -m yolo.benchmark writes the columns it promises; --backend auto chooses from it."""
from __future__ import annotations

import json
import warnings

import pytest

from yolo import Darknet
from yolo import benchmark as bench
from yolo.backends import load_backend
from yolo.backends.auto import cache_file, choose_engine, fallback_engine, model_key, read_cache, write_cache

from helpers import TINY, randomize


def row(engine, precision, ms, ok=True):
    return {"engine": engine, "precision": precision, "forward_ms": ms, "ok": ok}


def test_choose_engine_is_the_fastest_accurate_entry():
    table = {"k": {"rows": [row("opencv", "fp32", 10.0), row("onnxruntime", "fp32", 6.0),
                            row("onnxruntime", "int8", 4.0, ok=False), row("torch", "fp32", 12.0)]}}
    engine, precision, why = choose_engine(table, "k")
    assert (engine, precision) == ("onnxruntime", "fp32")
    assert "0.60x OpenCV" in why and "6.0 ms" in why
    table["k"]["rows"][2]["ok"] = True
    assert choose_engine(table, "k")[:2] == ("onnxruntime", "int8")


def test_choose_engine_without_a_usable_entry():
    assert choose_engine({}, "k")[:2] == (None, None)
    assert "nothing measured" in choose_engine({"other": {"rows": [row("torch", "fp32", 1.0)]}}, "k")[2]
    engine, _, why = choose_engine({"k": {"rows": [row("torch", "bf16", 1.0, ok=False)]}}, "k")
    assert engine is None and "kept accuracy" in why
    assert choose_engine({"k": {"rows": [row("torch", "fp32", None)]}}, "k")[0] is None


def test_fallback_order():
    everything = ["torch", "opencv", "onnxruntime", "openvino"]
    assert fallback_engine(".onnx", False, everything)[0] == "onnxruntime"
    assert fallback_engine(".onnx", False, ["torch", "opencv", "openvino"])[0] == "openvino"
    assert fallback_engine(".weights", True, everything)[0] == "opencv"
    assert fallback_engine(".weights", False, everything)[0] == "torch"  # our own blocks
    assert fallback_engine(".pt", True, everything)[0] == "torch"


def test_model_key_changes_with_what_decides_speed():
    a = model_key("[net]\n", (320, 320), "cpu|avx2|opencv=4")
    assert a == model_key("[net]\n", (320, 320), "cpu|avx2|opencv=4")
    assert len({a, model_key("[net]\n", (416, 416), "cpu|avx2|opencv=4"),
                model_key("[net]\nx=1\n", (320, 320), "cpu|avx2|opencv=4"),
                model_key("[net]\n", (320, 320), "cpu|avx512f|opencv=4")}) == 4


@pytest.fixture
def plain_tiny(tmp_path, monkeypatch):
    """The tiny fixture without its dilated convolution (OpenCV ignores dilation), random weights;
    the user's cache folder in tmp_path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = tmp_path / "tiny-plain.cfg"
    cfg.write_text(TINY.read_text().replace("dilation=2\n", ""))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = randomize(Darknet(cfg, warn_unused=False)).eval()
    weights = tmp_path / "tiny-plain.weights"
    model.save_darknet_weights(weights)
    return cfg, weights


def check_table(table, out, engines):
    data = json.loads((out / "benchmark.json").read_text())
    assert data["header"].startswith("CPU: ") and "opencv" in data["header"]
    assert {r["engine"] for r in data["rows"]} >= engines
    for r in data["rows"]:
        assert set(bench.COLUMNS) <= set(r)
        assert r["forward_ms"] > 0 and r["images_per_s"] > 0 and r["load_s"] >= 0
        assert r["ok"] and r["accuracy"] <= 1e-4 and r["accuracy_kind"].startswith("max")
    cv = next(r for r in data["rows"] if r["engine"] == "opencv")
    assert cv["ratio_to_opencv"] == 1.0
    assert data["best"]["engine"] in engines and data["best"]["why"]
    assert (out / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "*" in bench.format_table(table)
    assert read_cache()[data["key"]]["rows"]  # the cache auto reads


def test_benchmark_writes_its_columns(plain_tiny, tmp_path, monkeypatch):
    real = bench.candidates
    monkeypatch.setattr(bench, "candidates", lambda *a: [c for c in real(*a) if c[0] in ("torch", "opencv")])
    table = bench.run_benchmark(*plain_tiny, batch=2, repeats=2, out=tmp_path / "out", log=lambda m: None)
    check_table(table, tmp_path / "out", {"torch", "opencv"})


@pytest.mark.slow
def test_benchmark_cli_every_engine(plain_tiny, tmp_path):
    cfg, weights = plain_tiny
    assert bench.main(["--cfg", str(cfg), "--weights", str(weights), "--batch", "2", "--repeats", "3",
                       "--out", str(tmp_path / "out")]) == 0
    table = json.loads((tmp_path / "out" / "benchmark.json").read_text())
    check_table(table, tmp_path / "out", {"torch", "opencv", "onnxruntime"})


def test_auto_uses_the_measured_entry_else_the_order(plain_tiny, tmp_path):
    cfg, weights = plain_tiny
    engine = load_backend(cfg, weights, "auto")
    assert engine.name == "opencv" and "not measured" in engine.describe()
    key = model_key(cfg.read_text(), (64, 64))
    write_cache(key, {"rows": [row("opencv", "fp32", 3.0), row("torch", "fp32", 1.0)]})
    assert cache_file().is_relative_to(tmp_path / "cache")
    engine = load_backend(cfg, weights, "auto")
    assert engine.name == "torch" and "measured fastest" in engine.describe() and "auto:" in engine.describe()
    assert engine.info.extra["auto"].startswith("measured fastest")
    assert load_backend(TINY, weights, "auto").name == "torch"  # dilation: OpenCV cannot, not measured
