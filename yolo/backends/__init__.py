"""Inference engines behind ``Detector`` and ``evaluate()``: one interface, one registry.

An engine takes the network input (``Tensor[B, 3, H, W]`` float32 RGB in [0, 1], on the CPU)
and returns the eval contract (``Tensor[B, N, 5 + C]`` float32: cx, cy, w, h in input pixels,
objectness, class probabilities). Pre-processing (resize / letterbox) and post-processing
(thresholds, NMS, boxes mapped back) stay in one shared code path, whichever engine runs.

Engines register themselves (:func:`register_engine`) and declare what they run; this module
only lists where they live (:data:`ENGINE_MODULES`), imported when an engine is first asked
for, so ``import yolo.backends`` stays cheap. Precision is the engine's business, never the
caller's.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .base import ENGINES, NMS_KEYS, PRECISIONS, Backend, BackendError, ModelInfo, register_engine

if TYPE_CHECKING:
    import torch

#: the modules that hold the engines, in the order of preference for a file suffix they share;
#: adding an engine is its file plus one name here
ENGINE_MODULES = ("pytorch", "ort", "opencv", "openvino")


def engines() -> dict[str, type[Backend]]:
    """Every registered engine by name (their modules imported on first use)."""
    for module in ENGINE_MODULES:
        importlib.import_module(f"{__name__}.{module}")
    # in ENGINE_MODULES order whichever module was imported first (the first engine for a suffix
    # is its default: importing yolo.backends.opencv early must not make it the .weights default)
    rank = {m: i for i, m in enumerate(ENGINE_MODULES)}
    ordered = sorted(ENGINES.items(), key=lambda kv: rank.get(kv[1].__module__.rsplit(".", 1)[-1], len(rank)))
    if list(ENGINES) != [k for k, _ in ordered]:
        ENGINES.clear()
        ENGINES.update(ordered)
    return ENGINES


def engine_names() -> tuple[str, ...]:
    return tuple(engines())


def __getattr__(name: str) -> object:
    if name == "BACKENDS":  # the engine names (before the registry: a fixed tuple)
        return engine_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def engine_class(name: str) -> type[Backend]:
    """The engine registered as ``name``; the error lists the registered ones."""
    known = engines()
    if name not in known:
        raise BackendError(f"backend must be one of {', '.join(known)}, got '{name}'")
    return known[name]


def backend_for(weights: str | Path | None, backend: str | None) -> str:
    """The engine a weights file asks for: the first engine that reads its suffix (``.onnx`` ->
    onnxruntime), else the first registered (torch); ``backend`` given: checked and returned."""
    if backend is not None:
        return engine_class(backend).name
    known = engines()
    if weights is not None:
        for name, cls in known.items():
            if cls.reads(weights):
                return name
    return next(iter(known))


def load_backend(cfg: str | Path | None, weights: str | Path, backend: str | None = None,
                 precision: str = "fp32", device: "str | torch.device" = "cpu",
                 names: list[str] | None = None, threads: int | None = None,
                 img_size: int | Sequence[int] | None = None) -> Backend:
    """An engine for ``cfg`` + ``weights`` (``.weights``, ``.pt`` or ``.onnx``); ``threads``: CPU
    threads for every engine (:mod:`yolo.backends.threads`; None: as set before, else all cores).
    ``backend="auto"``: :mod:`yolo.backends.auto` picks (for ``img_size``, default the cfg's), and
    ``describe()`` / ``info.extra["auto"]`` say what and why."""
    from .threads import set_threads

    if threads is not None:
        set_threads(threads)
    if backend == "auto":
        return _load_auto(cfg, weights, precision, device, names, threads, img_size)
    cls = engine_class(backend_for(weights, backend))
    if precision not in PRECISIONS:
        raise BackendError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    engine = cls.from_files(cfg, weights, precision, device, names)
    if threads is not None:
        set_threads(threads)  # again: the engine may have imported torch
    return engine


def _load_auto(cfg: str | Path | None, weights: str | Path, precision: str, device: "str | torch.device",
               names: list[str] | None, threads: int | None, img_size: int | Sequence[int] | None) -> Backend:
    """``backend="auto"``: the measured fastest for this model and machine, else a documented order.
    A precision other than fp32 asked for, or a GPU, is not auto's to choose: it keeps the engine the
    weights ask for (torch for Darknet files) with a why that says so."""
    from .auto import companion_problem, resolve_auto

    if precision != "fp32" or str(device) != "cpu":
        engine = load_backend(cfg, weights, None, precision, device, names, threads)
        return _say_why(engine, f"{precision} on {device} asked for: the engine of the weights file")
    skip = None
    while True:
        backend, precision, chosen, why, expected = resolve_auto(cfg, weights, img_size, skip)
        # the benchmark's or the companion .onnx carries its model info, so no cfg (checking it
        # against the cfg would build the model, importing torch)
        engine = load_backend(None if str(chosen) != str(weights) else cfg, chosen, backend, precision, device,
                              names, threads)
        if not expected:
            return _say_why(engine, why)
        meta = dict(engine.session.get_modelmeta().custom_metadata_map)  # type: ignore[attr-defined]
        hw = None
        if img_size is not None:
            hw = (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[-1]))
        skip = companion_problem(meta, expected, getattr(engine, "fixed_hw", None), hw)
        if skip is None:
            return _say_why(engine, why)


def _say_why(engine: Backend, why: str) -> Backend:
    plain = engine.describe()
    engine.describe = lambda: f"{plain} (auto: {why})"  # type: ignore[method-assign]
    engine.info.extra["auto"] = why
    return engine


__all__ = ["ENGINE_MODULES", "NMS_KEYS", "PRECISIONS", "Backend", "BackendError", "ModelInfo",
           "backend_for", "engine_class", "engine_names", "engines", "load_backend", "register_engine"]
