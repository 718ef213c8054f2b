"""The torch side of the torch engine's reduced precision: the modules that stand in for a
convolution (:class:`Fp32Island`, :class:`ConvAct`) and the fusing of activations into oneDNN
convolutions. Imported only when the torch engine prepares a model (:mod:`yolo.backends.pytorch`
reads no torch at import time, so the registry can list it in a process without torch)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..blocks.layers import ACUnit, ConvBN


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


def _fusable(conv: nn.Module, keep_fp32: Callable[[nn.Conv2d], bool]) -> bool:
    return (type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and not keep_fp32(conv))


def fuse_activations(model: nn.Module, keep_fp32: Callable[[nn.Conv2d], bool]) -> int:
    """Convolution + activation -> :class:`ConvAct` in every fused unit (ConvBN, ACUnit) whose
    convolution ``keep_fp32`` leaves alone; returns how many. Nothing changes where this PyTorch
    lacks the op or it disagrees with the unfused pair."""
    if not _pointwise_op_works():
        return 0
    n = 0
    for unit in model.modules():
        if isinstance(unit, ConvBN) and unit.bn is None and _fusable(unit.conv, keep_fp32):
            kind = _pointwise(unit.act)
            if kind is not None:
                unit.conv, unit.act = ConvAct(unit.conv, *kind), nn.Identity()
                n += 1
        elif isinstance(unit, ACUnit) and unit.fused is not None and _fusable(unit.fused, keep_fp32):
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


__all__ = ["ConvAct", "Fp32Island", "fuse_activations"]
