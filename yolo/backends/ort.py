"""The onnxruntime engine (optional: ``pip install -e ".[onnx]"``).

Runs an ``.onnx`` written by :mod:`yolo.export` (fp32, or INT8 QDQ: a quantised file is just
another file) on its own: the model info comes from the file's metadata. A foreign ``.onnx``
(no metadata) runs when ``--cfg`` says what it is; its output must still be the eval contract.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .base import Backend, BackendError, ModelInfo, as_device, as_input, as_output, register_engine
from .threads import engine_threads

if TYPE_CHECKING:
    import torch

INSTALL = 'onnxruntime is not installed: pip install -e ".[onnx]" (or: pip install onnx onnxruntime)'
QUANTISED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger",
                 "QLinearMatMul", "DynamicQuantizeLinear"}


def info_from_metadata(meta: dict[str, str], path: Path) -> ModelInfo:
    """Kept for callers of the old name: :meth:`ModelInfo.from_metadata`."""
    return ModelInfo.from_metadata(meta, path)


def info_from_cfg(cfg: str | Path, names: list[str] | None) -> ModelInfo:
    """The info of a cfg without building its weights (the model on the meta device)."""
    import warnings

    import torch  # a foreign .onnx described by a cfg: the cfg is read by our model code

    from ..model import Darknet

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):  # the info only: no parameters allocated
            model = Darknet(cfg, warn_unused=False)
    return ModelInfo.from_model(model, names)


def is_quantised(path: Path, meta: dict[str, str]) -> bool:
    if "precision" in meta:
        return meta["precision"] == "int8"
    try:
        import onnx
    except ImportError:
        return False
    proto = onnx.load(str(path), load_external_data=False)
    return any(n.op_type in QUANTISED_OPS for n in proto.graph.node)


@register_engine("onnxruntime")
class OrtBackend(Backend):
    """An onnxruntime ``InferenceSession`` with the eval contract: ``(B, 3, H, W) -> (B, N, 5 + C)``.

    A file exported at a fixed batch runs any batch (in chunks of that size); one exported at a
    fixed size runs only that size (export with ``--dynamic`` for others).
    """

    precisions = ("fp32", "int8")
    devices = ("cpu", "cuda")
    suffixes = (".onnx",)
    needs_cfg = False  # the file's metadata is the model info

    def __init__(self, session: object, info: ModelInfo, precision: str, device: Any,
                 path: Path) -> None:
        super().__init__(info, precision, device)
        self.session = session
        self.path = path
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.fixed_hw = tuple(shape[2:]) if len(shape) == 4 and all(isinstance(s, int) for s in shape[2:]) else None

    @classmethod
    def from_files(cls, cfg: str | Path | None, weights: str | Path, precision: str = "fp32",
                   device: "str | torch.device" = "cpu", names: list[str] | None = None) -> "OrtBackend":
        device = as_device(str(device))  # no torch on this path
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError(INSTALL) from None
        from ..cfg import resolve_path
        from ..weights_file import WEIGHTS_DIR

        try:
            path = resolve_path(weights, WEIGHTS_DIR, "weights file")
        except (FileNotFoundError, ValueError) as e:
            raise BackendError(str(e)) from None
        if precision not in ("fp32", "int8"):
            raise BackendError(f"precision '{precision}' is not available for the onnxruntime backend (fp32, int8: "
                               "an INT8 model is a quantised .onnx, python -m yolo.export --int8)")
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendError(f"device '{device}': this onnxruntime has no CUDA provider "
                                   "(pip install onnxruntime-gpu), use --device cpu")
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        options = ort.SessionOptions()
        options.intra_op_num_threads = engine_threads()  # --threads, else torch's count (unchanged)
        options.inter_op_num_threads = 1
        # no busy-waiting between runs: spinning threads steal the cores the data loader, NMS and
        # any other engine in the process need (measured: OpenCV 2x and torch 4x slower beside it)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # noqa: BLE001 (onnxruntime raises its own, unexported types)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise BackendError(f"{path}: onnxruntime cannot load it: {first}") from None
        meta = dict(session.get_modelmeta().custom_metadata_map)
        ours = "yolo.format" in meta
        if ours:
            info = ModelInfo.from_metadata(meta, path)
            if cfg is not None:
                from_cfg = info_from_cfg(cfg, None)
                if from_cfg.num_classes != info.num_classes:
                    raise BackendError(f"{path} has {info.num_classes} classes ({info.cfg_name}), but --cfg "
                                       f"{Path(cfg).name} has {from_cfg.num_classes}: drop --cfg (the .onnx "
                                       "carries its model info) or give the cfg it was exported from")
        elif cfg is None:
            raise BackendError(f"{path}: not exported by yolo.export (no yolo metadata): pass --cfg with the "
                               "model's cfg (input size, classes, strides), or re-export it with "
                               "python -m yolo.export")
        else:
            info = info_from_cfg(cfg, None)
        if names is not None:
            if len(names) != info.num_classes:
                raise BackendError(f"--names: {len(names)} class names, but {path.name} has {info.num_classes} "
                                   "classes: use the names the model was trained with")
            info.names = list(names)
        out = session.get_outputs()
        last = out[0].shape[-1] if out and out[0].shape else None
        if len(out) != 1 or (isinstance(last, int) and last != 5 + info.num_classes):
            what = f"{len(out)} outputs" if len(out) != 1 else f"output {out[0].shape}"
            source = f"--cfg {Path(cfg).name}" if not ours else "its metadata"
            raise BackendError(f"{path}: {what}, but {source} says {info.num_classes} classes: expected one "
                               f"output (batch, boxes, {5 + info.num_classes})")
        quantised = is_quantised(path, meta)
        if precision == "int8" and not quantised:
            raise BackendError(f"--precision int8: {path.name} is not quantised; write an INT8 copy with "
                               "python -m yolo.export ... --int8 --calib-data IMAGES and run that file")
        info.extra["onnx"] = {"file": str(path), "ours": ours, "providers": session.get_providers()}
        return cls(session, info, "int8" if quantised else "fp32", device, path)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``np.ndarray[B, 3, H, W]`` -> ``np.ndarray[B, N, 5 + C]`` (a torch tensor in: one out)."""
        arr, tensor = as_input(x)
        if self.fixed_hw is not None and tuple(x.shape[-2:]) != self.fixed_hw:
            h, w = self.fixed_hw
            raise BackendError(f"{self.path.name} was exported for {h}x{w} (h x w) input, got "
                               f"{x.shape[-2]}x{x.shape[-1]}: use that size, or export with --dynamic")
        n = self.fixed_batch
        if n is None or arr.shape[0] == n:
            return as_output(self.session.run(None, {self.input_name: arr})[0], tensor)
        outs = []
        for i in range(0, arr.shape[0], n):
            chunk = arr[i:i + n]
            k = chunk.shape[0]
            if k < n:  # pad the last chunk to the fixed batch
                chunk = np.concatenate([chunk, np.zeros((n - k,) + chunk.shape[1:], np.float32)])
            outs.append(self.session.run(None, {self.input_name: chunk})[0][:k])
        return as_output(np.concatenate(outs), tensor)


__all__ = ["OrtBackend", "ModelInfo", "INSTALL"]
