"""``--backend auto``: the engine and precision :mod:`yolo.benchmark` measured fastest for this
model, size and machine, else a documented order.

:func:`choose_engine` is a pure function of a timing table. The table comes from the per-machine
cache (``$XDG_CACHE_HOME/darknet-yolo/auto.json``, else ``~/.cache/darknet-yolo/auto.json``) that
``python -m yolo.benchmark`` writes, keyed by :func:`model_key`: CPU model + ISA flags + engine
versions + the cfg's text hash + the input size (a figure from another CPU or another OpenCV is
never reused).

When nothing was measured (:func:`fallback_engine`), measured on the 2-core AVX2 EPYC
(per forward, batch 1, ratio to OpenCV DNN; issue 19 and ``python -m yolo.benchmark``):

1. an ``.onnx`` given: onnxruntime (OpenVINO when onnxruntime is missing);
2. a cfg OpenCV DNN reads: ``opencv``. Its Winograd 3x3 convolutions beat every other engine on
   dense models on AVX2 (yolov3-tiny: onnxruntime 1.2x, torch 1.4x its time; yolov3: all
   >= 1.3x), and on depthwise models without an ``.onnx`` it still beats torch eager
   (channels_last, as our torch engine runs: 1.1-1.4x);
3. else (our own blocks: Res2Net, ResNet/SCNet bottlenecks, ACNet before deploy): ``torch``.

onnxruntime wins on depthwise models (yolo-fastest-1.1: 0.49-0.64x OpenCV), but only from an
``.onnx``: the benchmark exports one into the cache folder and ``auto`` uses it once measured.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

CACHE_NAME = "auto.json"
#: an entry keeps accuracy when the benchmark says so (``ok``); these are its default limits:
#: max |difference| to torch fp32 (boxes / input size, scores), or mAP lost on --data. fp32: 5e-3,
#: not 1e-4: OpenCV's Winograd 3x3 convolutions sum in another order, which trained weights
#: amplify (measured 1.5e-3 on the shipped yolo-fastest-1.1 @320, <= 4e-6 on random weights;
#: tests/test_parity_opencv.py allows 5e-3 on the sample photos for the same reason)
ACCURACY_LIMITS = {"fp32": 5e-3, "bf16": 3e-2, "fp16": 3e-2, "int8": 5e-2}
MAP_LIMITS = {"fp32": 0.001, "bf16": 0.005, "fp16": 0.005, "int8": 0.01}


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "darknet-yolo"


def cache_file() -> Path:
    return cache_dir() / CACHE_NAME


def machine_fingerprint() -> str:
    """CPU model, speed flags and engine versions: what decides which engine is fastest."""
    from .. import machine

    flags = ",".join(f for f, on in machine.speed_flags().items() if on)
    vers = ",".join(f"{k}={v}" for k, v in sorted(machine.versions().items()))
    return f"{machine.cpu_model()}|{flags}|{vers}"


def model_key(cfg_text: str, size: Sequence[int], fingerprint: str | None = None) -> str:
    """The cache key of a model at ``size`` (h, w) on this machine."""
    fp = machine_fingerprint() if fingerprint is None else fingerprint
    raw = f"{fp}|{hashlib.sha256(cfg_text.encode()).hexdigest()}|{int(size[0])}x{int(size[1])}"
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def choose_engine(timings_table: Mapping[str, Any], model_key: str) -> tuple[str | None, str | None, str]:
    """The fastest measured entry that keeps accuracy: ``(engine, precision, why)``.

    ``timings_table``: ``{model_key: {"rows": [{"engine", "precision", "forward_ms", "ok"}, ...]}}``
    (``ok``: accuracy kept); no usable row for ``model_key``: ``(None, None, why)``."""
    entry = timings_table.get(model_key)
    rows = list(entry.get("rows", [])) if isinstance(entry, Mapping) else []
    measured = [r for r in rows if isinstance(r.get("forward_ms"), (int, float)) and r["forward_ms"] > 0]
    if not measured:
        return None, None, "nothing measured for this model, size and machine"
    good = [r for r in measured if r.get("ok")]
    if not good:
        return None, None, f"none of the {len(measured)} measured entries kept accuracy"
    best = min(good, key=lambda r: r["forward_ms"])
    why = f"measured fastest ({best['forward_ms']:.1f} ms/forward of {len(good)} accurate entries"
    ref = next((r for r in measured if r["engine"] == "opencv"), None)
    if ref is not None and ref is not best:
        why += f"; {best['forward_ms'] / ref['forward_ms']:.2f}x OpenCV DNN"
    return best["engine"], best["precision"], why + ")"


def fallback_engine(weights_suffix: str, opencv_reads: bool, installed: Sequence[str]) -> tuple[str, str]:
    """The documented order when nothing was measured: ``(engine, why)`` (pure)."""
    if weights_suffix == ".onnx":
        for name in ("onnxruntime", "openvino"):
            if name in installed:
                return name, f"not measured; an .onnx runs on {name}"
    if weights_suffix == ".weights" and opencv_reads and "opencv" in installed:
        return "opencv", "not measured; OpenCV DNN reads this plain Darknet cfg (fastest on dense cfgs on AVX2)"
    return "torch", "not measured; torch runs every cfg of ours"


def read_cache(path: Path | None = None) -> dict[str, Any]:
    path = path or cache_file()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_cache(key: str, entry: Mapping[str, Any], path: Path | None = None) -> Path:
    path = path or cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = read_cache(path)
    data[key] = dict(entry)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)
    return path


def _installed() -> list[str]:
    import importlib.util

    have = ["torch", "opencv"]
    for engine, module in (("onnxruntime", "onnxruntime"), ("openvino", "openvino")):
        if importlib.util.find_spec(module) is not None:
            have.append(engine)
    return have


def resolve_auto(cfg: str | Path | None, weights: str | Path,
                 size: Sequence[int] | None = None) -> tuple[str, str, Path | str, str]:
    """``(engine, precision, file to load, why)`` for ``--backend auto``."""
    from ..cfg import ConfigError, parse_cfg_text, read_cfg_text, resolve_cfg
    from .opencv import opencv_problem

    suffix = Path(str(weights)).suffix.lower()
    cfg_text, sections = None, None
    if cfg is not None:
        try:
            path = resolve_cfg(cfg)
            cfg_text = read_cfg_text(path)
            sections = parse_cfg_text(cfg_text, str(path))
        except (ConfigError, FileNotFoundError, ValueError):
            sections = None
    if sections is not None and suffix == ".weights":
        net = sections[0].options
        hw = tuple(size) if size else (int(net.get("height", "416")), int(net.get("width", "416")))
        key = model_key(cfg_text, hw)
        table = read_cache()
        engine, precision, why = choose_engine(table, key)
        if engine is not None:
            row = next(r for r in table[key]["rows"] if r["engine"] == engine and r["precision"] == precision)
            file = row.get("file") or weights
            if Path(file).exists() or file == weights:
                return engine, precision, file, f"{why}; cache {cache_file()}"
        reads = opencv_problem(sections) is None
    else:
        reads, why = False, "nothing measured"
    engine, fb_why = fallback_engine(suffix, reads, _installed())
    return engine, "fp32", weights, fb_why


__all__ = ["cache_dir", "cache_file", "choose_engine", "fallback_engine", "model_key", "read_cache",
           "resolve_auto", "write_cache"]
