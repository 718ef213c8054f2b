"""The PyTorch engine: our Darknet model, fused, channels_last, in the precision asked for.

Precisions: ``fp32`` anywhere; ``bf16`` on a CPU with native bfloat16 (AVX-512 BF16 or AMX on
x86, BF16 on Arm; oneDNN runs the convolutions) and on a CUDA GPU with bfloat16 (compute
capability 8.0+); ``fp16`` on CUDA only (CPU float16 convolutions are unsupported or slow).

In reduced precision the convolutions (plain, grouped, depthwise, dilated), pooling, upsampling,
routes and shortcuts run in bf16/fp16; every ``[yolo]`` layer stays float32 (its anchors as
given; it casts its input up and decodes in float32), so the output is always float32 and NMS
never sees a reduced-precision score. On the CPU each convolution's activation runs inside it
(:class:`ConvAct`, oneDNN's fused post-op): on its own, leaky in bf16 takes 2.2x its fp32 time.

What runs in bf16 was decided by measurement, per layer type (``python
benchmarks/bench_precision.py --layers``: AMD EPYC with AVX-512 BF16, torch 2.13, 2 threads,
channels_last, batch 1, load average 1.5; bf16 time / fp32 time, medians of interleaved runs):
dense 3x3 and 1x1 convolutions 0.39-0.56 (stride 1 and 2), the 3-channel stem 0.60, grouped
(g=4, g=32) 0.56-0.70, dilated 0.55, depthwise 3x3 / 5x5 0.92-0.98, max/avg pooling 0.94-1.02,
upsampling 0.80; alone, leaky 2.04 and the shortcut add 1.69 (hence :class:`ConvAct`). Depthwise
convolutions gain little in bf16 but lose nothing (the open PyTorch report of slow bf16
grouped/dilated convolutions does not show on this CPU), while casting around them costs two
copies: yolo-fastest-1.1 @320 (28 depthwise) runs in 0.82x its fp32 time all-bf16 and in 1.04x
with its depthwise convolutions kept in fp32. So nothing is kept in fp32; :data:`KEEP_FP32` is
the hook for a CPU where a layer type measures slower.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..blocks.layers import ACUnit, ConvBN
from ..heads import Head
from ..model import Darknet
from ..weights_file import load_weights
from .base import Backend, BackendError, ModelInfo, register_engine

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def model_info(model: Darknet, names: list[str] | None = None) -> ModelInfo:
    """Kept for callers of the old name: :meth:`ModelInfo.from_model`."""
    return ModelInfo.from_model(model, names)


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


class _Wraps(nn.Module):
    """A module standing in for the convolution it holds: its geometry (kernel_size, stride,
    padding, ... which shape inference reads) is the convolution's."""

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["conv"], name)


class Fp32Island(_Wraps):
    """A convolution kept in float32 inside a reduced-precision network: casts in and back out."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.float()).to(x.dtype)


def _pointwise(act: nn.Module) -> tuple[str, list[float], str] | None:
    """oneDNN's name (attr, scalars, algorithm) for an activation it can run inside a convolution."""
    if isinstance(act, nn.Identity):
        return "none", [], ""
    if isinstance(act, nn.LeakyReLU):
        return "leaky_relu", [act.negative_slope], ""
    if isinstance(act, nn.ReLU):
        return "relu", [], ""
    if isinstance(act, nn.Hardtanh):  # ReLU6 is one
        return "hardtanh", [act.min_val, act.max_val], ""
    if isinstance(act, nn.SiLU):
        return "swish", [], ""
    if isinstance(act, nn.Sigmoid):
        return "sigmoid", [], ""
    if isinstance(act, nn.Tanh):
        return "tanh", [], ""
    if isinstance(act, nn.GELU):
        return "gelu", [], act.approximate
    return None  # mish, elu, Darknet's own: stay separate


class ConvAct(_Wraps):
    """A convolution and its activation in one oneDNN call (``mkldnn::_convolution_pointwise``, the
    op inductor emits for the CPU). In bf16 a separate activation pass takes ~2x its fp32 time;
    inside the convolution it is nearly free. On one idle thread that is worth little (yolov3-tiny
    @416: 0.54x -> 0.53x of fp32 time), but it halves the parallel regions, and with 2 threads on a
    busy machine each region's barrier costs (yolov3-tiny 0.79x -> 0.67x, yolo-fastest 1.17x ->
    0.93x of fp32 time, load average 10)."""

    def __init__(self, conv: nn.Conv2d, attr: str, scalars: list[float], algorithm: str) -> None:
        super().__init__()
        self.conv, self.attr, self.scalars, self.algorithm = conv, attr, scalars, algorithm
        self.args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        self.packed: torch.Tensor | None = None  # the weight in oneDNN's own layout (first call)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding, stride, dilation, groups = self.args
        x = x.contiguous(memory_format=torch.channels_last)
        weight = self.packed if self.packed is not None else self._pack(x)
        return torch.ops.mkldnn._convolution_pointwise(x, weight, self.conv.bias, padding, stride, dilation, groups,
                                                       self.attr, self.scalars, self.algorithm)

    def _pack(self, x: torch.Tensor) -> torch.Tensor:
        """The weight reordered once into the blocked layout oneDNN picks for inputs like ``x``
        (any input shape still works) instead of on every call: yolov3 @416 bf16 8% faster. The
        engine's model is not changed after its first call; a dense weight where this PyTorch
        cannot pack."""
        padding, stride, dilation, groups = self.args
        try:
            self.packed = torch.ops.mkldnn._reorder_convolution_weight(
                self.conv.weight.detach(), padding, stride, dilation, groups, list(x.shape))
        except (AttributeError, RuntimeError, NotImplementedError):
            self.packed = self.conv.weight.detach()
        return self.packed

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["packed"] = None  # an opaque oneDNN tensor: neither copied nor pickled, packed again
        return state

    def extra_repr(self) -> str:
        return f"{self.attr}{self.scalars or ''}"


def _fusable(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and not KEEP_FP32(conv))


def _fuse_activations(model: nn.Module) -> int:
    """Convolution + activation -> :class:`ConvAct` in every fused unit (ConvBN, ACUnit); returns
    how many. Nothing changes where this PyTorch lacks the op or it disagrees with the unfused pair."""
    if not _pointwise_op_works():
        return 0
    n = 0
    for unit in model.modules():
        if isinstance(unit, ConvBN) and unit.bn is None and _fusable(unit.conv):
            kind = _pointwise(unit.act)
            if kind is not None:
                unit.conv, unit.act = ConvAct(unit.conv, *kind), nn.Identity()
                n += 1
        elif isinstance(unit, ACUnit) and unit.fused is not None and _fusable(unit.fused):
            kind = _pointwise(unit.act)
            if kind is not None:
                unit.fused, unit.act = ConvAct(unit.fused, *kind), nn.Identity()
                n += 1
    return n


_OP_CHECKED: dict[str, bool] = {}


def _pointwise_op_works() -> bool:
    """Whether ``mkldnn::_convolution_pointwise`` exists here and matches conv + leaky in bf16
    (an internal op: checked once, on a tiny case, rather than trusted)."""
    if "ok" not in _OP_CHECKED:
        try:
            g = torch.Generator().manual_seed(0)
            conv = nn.Conv2d(8, 16, 3, 2, 1).to(torch.bfloat16, memory_format=torch.channels_last).eval()
            x = torch.randn(1, 8, 12, 12, generator=g).to(torch.bfloat16, memory_format=torch.channels_last)
            with torch.inference_mode():
                ref = nn.functional.leaky_relu(conv(x), 0.1).float()
                out = ConvAct(conv, "leaky_relu", [0.1], "")(x).float()
            _OP_CHECKED["ok"] = out.shape == ref.shape and bool(torch.allclose(out, ref, atol=0.05, rtol=0.02))
        except (AttributeError, RuntimeError, NotImplementedError):
            _OP_CHECKED["ok"] = False
    return _OP_CHECKED["ok"]


def reduce_precision(model: Darknet, precision: str, device: torch.device) -> Darknet:
    """Fuse ``model`` (if not yet), store it channels_last and cast everything but its ``[yolo]``
    layers to ``precision``, in place; convolutions :data:`KEEP_FP32` picks stay float32; on
    the CPU each convolution's activation runs inside it (:class:`ConvAct`)."""
    if not model.fused:
        model.fuse()
    model.to(device=device, memory_format=torch.channels_last)
    dtype = DTYPES[precision]
    if dtype == torch.float32:
        return model.eval()
    for block in model.module_list:
        if not isinstance(block, Head):  # anchors and decoding stay float32
            block.to(dtype)
    if device.type == "cpu":
        _fuse_activations(model)
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Conv2d) and not isinstance(parent, ConvAct) and KEEP_FP32(child):
                    setattr(parent, name, Fp32Island(child))
    model.engine_precision = precision  # prepared: a TorchBackend built on it does not redo this
    return model.eval()


@register_engine("torch")
class TorchBackend(Backend):
    """Runs a ``Darknet`` in eval mode under ``torch.inference_mode``.

    In fp32 the caller's model is run as it is. In bf16 / fp16 the model handed in is handed
    over: it is fused, made channels_last and cast in place (pass a copy to keep yours;
    ``from_files`` and ``evaluate()`` build their own). Input: float32 (any layout); output:
    float32 always."""

    precisions = tuple(DTYPES)
    devices = ("cpu", "cuda")
    suffixes = (".weights", ".pt")  # and any other name: Darknet backbone files such as darknet53.conv.74

    def __init__(self, model: Darknet, precision: str = "fp32", device: torch.device | None = None,
                 names: list[str] | None = None) -> None:
        device = device or next(model.parameters()).device
        check_precision(precision, device)
        super().__init__(ModelInfo.from_model(model, names), precision, device)
        if precision != "fp32" and getattr(model, "engine_precision", "fp32") != precision:
            model = reduce_precision(model, precision, device)
        self.model = model
        self.dtype = DTYPES[precision]

    @classmethod
    def from_files(cls, cfg: str | Path | None, weights: str | Path, precision: str = "fp32",
                   device: str | torch.device = "cpu", names: list[str] | None = None) -> "TorchBackend":
        """``names`` given: they replace the checkpoint's (checked against the model's classes)."""
        device = torch.device(device)
        if cfg is None:
            raise BackendError(f"{weights}: the torch backend needs --cfg")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise BackendError(f"device '{device}': CUDA is not available here; use device='cpu'")
        check_precision(precision, device)  # before the (possibly long) load
        model = Darknet(cfg)
        state = load_weights(model, weights)
        model = reduce_precision(model, precision, device)
        saved = state.get("names")
        if names is not None:
            if len(names) != model.num_classes:
                raise BackendError(f"names: {len(names)} class names, but {model.cfg_path.name} has "
                                   f"{model.num_classes} classes: use the names the model was trained with")
            saved = list(names)
        return cls(model, precision, device, list(saved) if isinstance(saved, (list, tuple)) and saved else None)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.dtype == torch.float32:
            x = x.to(self.device, non_blocking=True)
        else:  # cast, then NHWC: 2.5x faster than both in one .to() (0.26 vs 0.68 ms at 416, 1 thread)
            x = x.to(self.device, self.dtype, non_blocking=True).contiguous(memory_format=torch.channels_last)
        return self.model(x).float()
