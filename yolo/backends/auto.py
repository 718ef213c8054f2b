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
2. Darknet ``.weights`` with a *companion* ``.onnx`` beside them (same name, ``.onnx``; its
   metadata records the sha256 of the cfg text and of the weights it was exported from, and both
   still match: :func:`companion_problem`) and onnxruntime installed: onnxruntime on that file.
   The shipped model has one (``yolo/assets/weights/yolo-fastest-1.1.onnx``, written by
   :func:`write_companion`), because its depthwise convolutions are where onnxruntime beats every
   other engine (0.49-0.64x OpenCV per forward) and because a process that never imports torch
   answers the README's first command in about a second (torch's import alone is 3.6-4.9 s);
3. a cfg OpenCV DNN reads: ``opencv``. Its Winograd 3x3 convolutions beat every other engine on
   dense models on AVX2 (yolov3-tiny: onnxruntime 1.2x, torch 1.4x its time; yolov3: all
   >= 1.3x), and on depthwise models without an ``.onnx`` it still beats torch eager
   (channels_last, as our torch engine runs: 1.1-1.4x);
4. else (our own blocks: Res2Net, ResNet/SCNet bottlenecks, ACNet before deploy, or a ``.pt``
   checkpoint): ``torch``.

onnxruntime also wins on other depthwise models, but only from an ``.onnx``: the benchmark
exports one into the cache folder and ``auto`` uses it once measured.
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


def fallback_engine(weights_suffix: str, opencv_reads: bool, installed: Sequence[str],
                    companion: bool = False) -> tuple[str, str]:
    """The documented order when nothing was measured: ``(engine, why)`` (pure). ``companion``: a
    checked companion ``.onnx`` sits beside the ``.weights`` (see the module docstring)."""
    if weights_suffix == ".onnx":
        for name in ("onnxruntime", "openvino"):
            if name in installed:
                return name, f"not measured; an .onnx runs on {name}"
    if weights_suffix == ".weights" and companion and "onnxruntime" in installed:
        return "onnxruntime", ("not measured; the .onnx exported from these weights lies beside them "
                               "(onnxruntime: the fastest engine on depthwise models)")
    if weights_suffix == ".weights" and opencv_reads and "opencv" in installed:
        return "opencv", "not measured; OpenCV DNN reads this plain Darknet cfg (fastest on dense cfgs on AVX2)"
    return "torch", "not measured; torch runs every cfg of ours"


#: the metadata keys of a companion .onnx: what it was exported from
SOURCE_KEYS = ("source.cfg_sha256", "source.weights_sha256")


def source_hashes(cfg_text: str, weights: str | Path) -> dict[str, str]:
    """The sha256 of a cfg's text and of a weights file (the companion's :data:`SOURCE_KEYS`)."""
    digest = hashlib.sha256()
    with open(weights, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {SOURCE_KEYS[0]: hashlib.sha256(cfg_text.encode()).hexdigest(), SOURCE_KEYS[1]: digest.hexdigest()}


def companion_file(weights: str | Path) -> Path | None:
    """The ``.onnx`` beside a ``.weights`` file (same name), where there is one."""
    path = Path(str(weights))
    onnx = path.with_suffix(".onnx")
    return onnx if path.suffix.lower() == ".weights" and onnx.is_file() else None


def companion_problem(meta: Mapping[str, str], expected: Mapping[str, str], fixed_hw: Sequence[int] | None,
                      size_hw: Sequence[int] | None) -> str | None:
    """Why a companion ``.onnx`` (its metadata ``meta``) cannot stand in for its ``.weights`` (None: it
    can): exported from another cfg or other weights, or at a fixed size other than ``size_hw``."""
    if any(meta.get(k) != v for k, v in expected.items()):
        return "it was exported from another cfg or other weights (export it again, or delete it)"
    if fixed_hw is not None and size_hw is not None and tuple(fixed_hw) != tuple(size_hw):
        return f"it was exported for {fixed_hw[0]}x{fixed_hw[1]} input, not {size_hw[0]}x{size_hw[1]}"
    return None


def write_companion(cfg: str | Path, weights: str | Path, out: str | Path | None = None) -> Path:
    """Export ``weights`` as the companion ``.onnx`` that ``auto`` runs in their place (dynamic batch
    and size: as fast as a fixed export with onnxruntime, measured 12.9 vs 13.0 ms per forward at
    320; fp32, checked against torch within 1e-4 by the export), with :data:`SOURCE_KEYS` in its
    metadata. Imports torch (the export does). The shipped one, after a change to its cfg or weights::

        from yolo.backends.auto import write_companion
        write_companion("yolo-fastest-1.1.cfg", "yolo-fastest-1.1.weights")
    """
    import onnx

    from ..cfg import read_cfg_text, resolve_cfg, resolve_path
    from ..export import export_onnx, set_metadata
    from ..model import Darknet
    from ..weights_file import WEIGHTS_DIR, load_weights

    cfg_path = resolve_cfg(cfg)
    weights_path = resolve_path(weights, WEIGHTS_DIR, "weights file")
    out = Path(out) if out is not None else weights_path.with_suffix(".onnx")
    model = Darknet(cfg_path)
    load_weights(model, weights_path)
    export_onnx(model.eval(), out, dynamic=True)
    meta = {p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props}
    set_metadata(out, meta | source_hashes(read_cfg_text(cfg_path), weights_path))
    return out


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

    have = ["torch", "opencv"]  # torch: the last resort, never probed (its engine says how to install it)
    for engine, module in (("onnxruntime", "onnxruntime"), ("openvino", "openvino")):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a finder that refuses it (a runtime-only install's test)
            found = False
        if found:
            have.append(engine)
    return have


def _size_hw(size: int | Sequence[int] | None, net: Mapping[str, str]) -> tuple[int, int]:
    if size is None:
        return int(net.get("height", "416")), int(net.get("width", "416"))
    if isinstance(size, int):
        return size, size
    size = [int(v) for v in size]
    return (size[0], size[-1]) if size else (int(net.get("height", "416")), int(net.get("width", "416")))


def resolve_auto(cfg: str | Path | None, weights: str | Path, size: int | Sequence[int] | None = None,
                 skip_companion: str | None = None) -> tuple[str, str, Path | str, str, dict[str, str]]:
    """``(engine, precision, file to load, why, expected)`` for ``--backend auto``; ``expected``: the
    :data:`SOURCE_KEYS` a companion ``.onnx`` chosen must carry (checked once it is loaded, see
    :func:`companion_problem`; empty for any other choice). ``skip_companion``: why the companion
    was refused (the next rule is taken and says so)."""
    from ..cfg import ConfigError, parse_cfg_text, read_cfg_text, resolve_cfg, resolve_path
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
    companion, weights_path = None, None
    if sections is not None and suffix == ".weights":
        hw = _size_hw(size, sections[0].options)
        key = model_key(cfg_text, hw)
        table = read_cache()
        engine, precision, why = choose_engine(table, key)
        if engine is not None:
            row = next(r for r in table[key]["rows"] if r["engine"] == engine and r["precision"] == precision)
            file = row.get("file") or weights
            if Path(file).exists() or file == weights:
                return engine, precision, file, f"{why}; cache {cache_file()}", {}
        reads = opencv_problem(sections) is None
        if skip_companion is None:
            try:
                from ..weights_file import WEIGHTS_DIR

                weights_path = resolve_path(weights, WEIGHTS_DIR, "weights file")
                companion = companion_file(weights_path)
            except (FileNotFoundError, ValueError):
                companion = None
    else:
        reads = False
    installed = _installed()
    engine, fb_why = fallback_engine(suffix, reads, installed, companion is not None)
    if skip_companion is not None:
        fb_why += f" (the .onnx beside the weights is not used: {skip_companion})"
    if engine == "onnxruntime" and companion is not None and weights_path is not None:
        return engine, "fp32", companion, f"{fb_why}: {companion.name}", source_hashes(cfg_text or "", weights_path)
    return engine, "fp32", weights, fb_why, {}


__all__ = ["SOURCE_KEYS", "cache_dir", "cache_file", "choose_engine", "companion_file", "companion_problem",
           "fallback_engine", "model_key", "read_cache", "resolve_auto", "source_hashes", "write_cache",
           "write_companion"]
