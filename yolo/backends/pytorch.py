"""The PyTorch engine: our Darknet model, fused, channels_last, in the precision asked for.

Precisions: ``fp32`` anywhere; ``bf16`` on a CPU with native bfloat16 (AVX-512 BF16 or AMX on
x86, BF16 on Arm; oneDNN runs the convolutions) and on a CUDA GPU with bfloat16 (compute
capability 8.0+); ``fp16`` on CUDA only (CPU float16 convolutions are unsupported or slow).

In reduced precision the convolutions (plain, grouped, depthwise, dilated), pooling, upsampling,
routes and shortcuts run in bf16/fp16; every ``[yolo]`` layer stays float32 (its anchors as
given; it casts its input up and decodes in float32), so the output is always float32 and NMS
never sees a reduced-precision score. Which layer types run in reduced precision was decided by
measurement (benchmarks/bench_precision.py --layers; AMD EPYC, AVX-512 BF16, torch 2.13, 2
threads, channels_last, bf16 time / fp32 time): dense 3x3 and 1x1 convolutions 0.45-0.75 (stride
1 and 2, the 3-channel stem included), grouped 0.52-0.63, dilated 0.53, depthwise 3x3 / 5x5
0.90-0.96 (no faster, but not slower either, so casting around them, two extra copies, would
cost more than it saves), pooling and upsampling 0.7-1.0. Elementwise activations are ~2x slower
in bf16, but they cost a few percent of a convolution and casting around them would cost as
much, so they stay in the network's dtype too. :data:`KEEP_FP32` is the hook where a layer type
measured slower on some CPU would be kept in float32 (cast around it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..blocks.yolo_layer import YOLOLayer
from ..checkpoint import load_weights
from ..model import Darknet
from . import Backend, BackendError, ModelInfo

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def model_info(model: Darknet, names: list[str] | None = None) -> ModelInfo:
    head = model.yolo_layers[-1].settings if model.yolo_layers else None
    extra = {"nms_kind": head.nms_kind, "beta_nms": head.beta_nms} if head is not None else {}
    return ModelInfo(num_classes=model.num_classes, input_size=model.input_size,
                     letter_box=bool(model.net.letter_box), max_stride=model.max_stride,
                     strides=list(model.strides), cfg_name=model.cfg_path.name, names=names, extra=extra)


def cpu_bf16_problem() -> str | None:
    """Why this CPU cannot run bfloat16 convolutions at speed (None: it can).

    oneDNN emulates bf16 on plain AVX-512 CPUs (slower than fp32), so native support is required:
    AVX-512 BF16 or AMX-BF16 on x86, the BF16 extension on Arm."""
    if not torch.backends.mkldnn.is_available():
        return "this PyTorch build has no oneDNN (mkldnn), which runs bf16 convolutions on the CPU"
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return "oneDNN reports no bf16 support on this CPU"
        caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    except (AttributeError, RuntimeError):  # an older PyTorch: trust oneDNN's answer
        return None
    if not caps:
        return None
    if caps.get("avx512_bf16") or caps.get("amx_bf16") or caps.get("bf16"):
        return None
    return (f"this CPU ({caps.get('cpu_name', 'unknown')}) has no native bfloat16 instructions "
            "(AVX-512 BF16 or AMX on x86, BF16 on Arm); oneDNN would emulate them, slower than fp32")


def check_precision(precision: str, device: torch.device) -> None:
    """Raise :class:`BackendError`, saying what would work, when ``precision`` cannot run on ``device``."""
    if precision not in DTYPES:
        raise BackendError(f"precision '{precision}' is not available for the torch backend "
                           f"({', '.join(DTYPES)}; int8 needs an .onnx model and onnxruntime)")
    if device.type not in ("cpu", "cuda"):
        if precision != "fp32":
            raise BackendError(f"precision {precision} on '{device}': the torch backend runs reduced "
                               "precision on the CPU (bf16) and on CUDA (bf16, fp16) only; use fp32")
        return
    if precision == "fp16" and device.type != "cuda":
        raise BackendError(f"precision fp16 needs a CUDA device (got '{device}'): float16 convolutions "
                           "on the CPU are unsupported or slow; use bf16 (CPUs with AVX-512 BF16 / AMX) "
                           "or fp32")
    if precision == "bf16" and device.type == "cpu":
        problem = cpu_bf16_problem()
        if problem:
            raise BackendError(f"precision bf16 on the CPU: {problem}. Use fp32 here "
                               "(or fp16/bf16 on a CUDA GPU)")
    if precision == "bf16" and device.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendError(f"device '{device}': CUDA is not available here; use device='cpu'")
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:
            raise BackendError(f"precision bf16 needs a GPU of compute capability 8.0+ (Ampere or later); "
                               f"{torch.cuda.get_device_name(device)} is {major}.{minor}: use fp16")


KEEP_FP32: Callable[[nn.Conv2d], bool] = lambda conv: False  # noqa: E731
"""Which convolutions a reduced-precision CPU model keeps in float32 (cast around them). None
today: every convolution type measured at least as fast in bf16 (see the module docstring)."""


class Fp32Island(nn.Module):
    """A layer kept in float32 inside a reduced-precision network: casts in and back out."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.float()).to(x.dtype)


def reduce_precision(model: Darknet, precision: str, device: torch.device) -> Darknet:
    """Fuse ``model`` (if not yet), store it channels_last and cast everything but its ``[yolo]``
    layers to ``precision``, in place; convolutions :data:`KEEP_FP32` picks stay float32."""
    if not model.fused:
        model.fuse()
    model.to(device=device, memory_format=torch.channels_last)
    dtype = DTYPES[precision]
    if dtype == torch.float32:
        return model.eval()
    for block in model.module_list:
        if not isinstance(block, YOLOLayer):  # anchors and decoding stay float32
            block.to(dtype)
    if device.type == "cpu":
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Conv2d) and KEEP_FP32(child):
                    setattr(parent, name, Fp32Island(child))
    return model.eval()


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the network's input should have: that of its first convolution."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.weight.dtype
    return torch.float32


class TorchBackend(Backend):
    """Runs a ``Darknet`` in eval mode under ``torch.inference_mode``.

    In fp32 the caller's model is run as it is. In bf16 / fp16 the model handed in is handed
    over: it is fused, made channels_last and cast in place (pass a copy to keep yours;
    ``from_files`` and ``evaluate()`` build their own). Input: float32 (any layout); output:
    float32 always."""

    name = "torch"

    def __init__(self, model: Darknet, precision: str = "fp32", device: torch.device | None = None,
                 names: list[str] | None = None) -> None:
        device = device or next(model.parameters()).device
        check_precision(precision, device)
        super().__init__(model_info(model, names), precision, device)
        if precision != "fp32" and model_dtype(model) != DTYPES[precision]:
            model = reduce_precision(model, precision, device)
        self.model = model
        self.dtype = DTYPES[precision]

    @classmethod
    def from_files(cls, cfg: str | Path | None, weights: str | Path, precision: str,
                   device: torch.device) -> "TorchBackend":
        if cfg is None:
            raise BackendError(f"{weights}: the torch backend needs --cfg")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise BackendError(f"device '{device}': CUDA is not available here; use device='cpu'")
        check_precision(precision, device)  # before the (possibly long) load
        model = Darknet(cfg)
        state = load_weights(model, weights)
        model = reduce_precision(model, precision, device)
        saved = state.get("names")
        return cls(model, precision, device, list(saved) if isinstance(saved, (list, tuple)) and saved else None)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.dtype == torch.float32:
            x = x.to(self.device, non_blocking=True)
        else:  # one copy: device, dtype and NHWC together
            x = x.to(self.device, self.dtype, non_blocking=True, memory_format=torch.channels_last)
        return self.model(x).float()
