"""The OpenVINO engine (optional: ``pip install -e ".[openvino]"``, or ``pip install openvino``).

Reads an ``.onnx`` written by :mod:`yolo.export` (fp32, or an INT8 QDQ copy: OpenVINO runs the
quantised graph as INT8) and compiles it for the CPU; the model info comes from the file's
metadata (read with ``onnx`` when it is installed, else through OpenVINO's own ONNX frontend),
or from ``--cfg`` for a foreign file. No torch on this path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .base import Backend, BackendError, ModelInfo, register_engine
from .threads import engine_threads

INSTALL = 'OpenVINO is not installed: pip install -e ".[openvino]" (or: pip install openvino)'


def onnx_metadata(path: Path) -> dict[str, str]:
    """The ``metadata_props`` of an ``.onnx`` ({} where there are none or ``onnx`` is missing)."""
    try:
        import onnx
    except ImportError:
        return {}
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


@register_engine("openvino")
class OpenVinoBackend(Backend):
    """An OpenVINO ``CompiledModel`` (CPU plugin) with the eval contract:
    ``np.ndarray[B, 3, H, W]`` -> ``np.ndarray[B, N, 5 + C]``."""

    precisions = ("fp32", "int8")
    devices = ("cpu",)
    suffixes = (".onnx",)  # onnxruntime is registered first: the default for an .onnx
    needs_cfg = False

    def __init__(self, compiled: Any, info: ModelInfo, precision: str, path: Path, threads: int) -> None:
        super().__init__(info, precision, "cpu")
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.path = path
        self.threads = threads
        shape = compiled.inputs[0].get_partial_shape()
        self.fixed_batch = shape[0].get_length() if shape[0].is_static else None

    @classmethod
    def from_files(cls, cfg: str | Path | None, weights: str | Path, precision: str = "fp32",
                   device: Any = "cpu", names: list[str] | None = None) -> "OpenVinoBackend":
        try:
            import openvino as ov
        except ImportError:
            raise BackendError(INSTALL) from None
        from ..cfg import resolve_path
        from ..weights_file import WEIGHTS_DIR

        if str(device) != "cpu":
            raise BackendError(f"device '{device}': the openvino backend runs on the CPU only here")
        if precision not in cls.precisions:
            raise BackendError(f"precision '{precision}' is not available for the openvino backend (fp32, int8: "
                               "an INT8 model is a quantised .onnx, python -m yolo.export --int8)")
        try:
            path = resolve_path(weights, WEIGHTS_DIR, "weights file")
        except (FileNotFoundError, ValueError) as e:
            raise BackendError(str(e)) from None
        if path.suffix.lower() != ".onnx":
            raise BackendError(f"{path.name}: the openvino backend reads our .onnx files (python -m yolo.export)")
        core = ov.Core()
        threads = engine_threads()
        try:
            model = core.read_model(str(path))
            config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                      "INFERENCE_PRECISION_HINT": "f32"}
            compiled = core.compile_model(model, "CPU", config)
        except Exception as e:  # noqa: BLE001 (OpenVINO raises RuntimeError subclasses of its own)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise BackendError(f"{path}: OpenVINO cannot compile it: {first}") from None
        meta = onnx_metadata(path)
        if "yolo.format" in meta:
            info = ModelInfo.from_metadata(meta, path)
        elif cfg is None:
            raise BackendError(f"{path}: no yolo metadata (not exported by yolo.export, or the onnx package is "
                               "missing to read it): pass --cfg with the model's cfg")
        else:
            from .ort import info_from_cfg

            info = info_from_cfg(cfg, None)
        if names is not None:
            if len(names) != info.num_classes:
                raise BackendError(f"--names: {len(names)} class names, but {path.name} has {info.num_classes} "
                                   "classes: use the names the model was trained with")
            info.names = list(names)
        ops = {op.get_type_name() for op in model.get_ops()}
        quantised = meta.get("precision") == "int8" if "precision" in meta else "FakeQuantize" in ops
        if precision == "int8" and not quantised:
            raise BackendError(f"--precision int8: {path.name} is not quantised; write an INT8 copy with "
                               "python -m yolo.export ... --int8 --calib-data IMAGES and run that file")
        info.extra["openvino"] = {"file": str(path), "version": ov.get_version()}
        return cls(compiled, info, "int8" if quantised else "fp32", path, threads)

    def _run(self, arr: np.ndarray) -> np.ndarray:
        return np.array(self.request.infer({0: arr})[0], dtype=np.float32, copy=True)

    def __call__(self, x: Any) -> Any:
        as_torch = type(x).__module__.startswith("torch")  # the engine contract before issue 19's numpy one
        arr = np.ascontiguousarray((x.detach().cpu().numpy() if as_torch else np.asarray(x)), dtype=np.float32)
        n = self.fixed_batch
        if n is None or arr.shape[0] == n:
            pred = self._run(arr)
        else:
            outs = []
            for i in range(0, arr.shape[0], n):
                chunk = arr[i:i + n]
                k = chunk.shape[0]
                if k < n:
                    chunk = np.concatenate([chunk, np.zeros((n - k,) + chunk.shape[1:], np.float32)])
                outs.append(self._run(chunk)[:k])
            pred = np.concatenate(outs)
        if as_torch:
            import torch

            return torch.from_numpy(pred)
        return pred

    def describe(self) -> str:
        return f"openvino {self.precision} on cpu ({self.threads} threads)"


__all__ = ["INSTALL", "OpenVinoBackend"]
