"""The PyTorch engine: our Darknet model, fused, in the precision asked for."""
from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import load_weights
from ..model import Darknet
from . import Backend, BackendError, ModelInfo


def model_info(model: Darknet, names: list[str] | None = None) -> ModelInfo:
    head = model.yolo_layers[-1].settings if model.yolo_layers else None
    extra = {"nms_kind": head.nms_kind, "beta_nms": head.beta_nms} if head is not None else {}
    return ModelInfo(num_classes=model.num_classes, input_size=model.input_size,
                     letter_box=bool(model.net.letter_box), max_stride=model.max_stride,
                     strides=list(model.strides), cfg_name=model.cfg_path.name, names=names, extra=extra)


class TorchBackend(Backend):
    """Runs a ``Darknet`` in eval mode under ``torch.inference_mode``; never changes the
    caller's model unless it was handed over (``from_files`` builds its own)."""

    name = "torch"

    def __init__(self, model: Darknet, precision: str = "fp32", device: torch.device | None = None,
                 names: list[str] | None = None) -> None:
        device = device or next(model.parameters()).device
        if precision not in ("fp32", "fp16"):
            raise BackendError(f"precision '{precision}' is not available for the torch backend (fp32, fp16)")
        if precision == "fp16" and device.type != "cuda":
            raise BackendError(f"precision fp16 needs a CUDA device (got '{device}'): fp16 convolutions "
                               "on CPU are unsupported or slow; use fp32")
        super().__init__(model_info(model, names), precision, device)
        self.model = model

    @classmethod
    def from_files(cls, cfg: str | Path | None, weights: str | Path, precision: str,
                   device: torch.device) -> "TorchBackend":
        if cfg is None:
            raise BackendError(f"{weights}: the torch backend needs --cfg")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise BackendError(f"device '{device}': CUDA is not available here; use device='cpu'")
        model = Darknet(cfg)
        state = load_weights(model, weights)
        model = model.fuse().to(device)
        if precision == "fp16":
            model.half()
        saved = state.get("names")
        return cls(model, precision, device, list(saved) if isinstance(saved, (list, tuple)) and saved else None)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.precision == "fp16":
            x = x.half()
        return self.model(x).float()
