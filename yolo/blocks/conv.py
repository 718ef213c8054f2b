"""[convolutional], the conv+BatchNorm unit every block is made of, and activations."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from ..cfg import Section
from ..registry import Block, BuildContext, WeightUnit, register

BN_EPS = 1e-5  # Darknet's
BN_MOMENTUM = 0.03  # torch convention (1 - Darknet's 0.99 rolling average is 0.01; 0.03 as in common ports)


class _Lambda(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str) -> None:
        super().__init__()
        self.fn, self.name = fn, name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "linear": nn.Identity,
    "leaky": lambda: nn.LeakyReLU(0.1, inplace=True),
    "relu": lambda: nn.ReLU(inplace=True),
    "relu6": lambda: nn.ReLU6(inplace=True),
    "logistic": nn.Sigmoid,
    "loggy": lambda: _Lambda(lambda x: 2 * torch.sigmoid(x) - 1, "loggy"),
    "tanh": nn.Tanh,
    "elu": lambda: nn.ELU(inplace=True),
    "selu": lambda: nn.SELU(inplace=True),
    "gelu": nn.GELU,
    "swish": nn.SiLU,
    "mish": nn.Mish,
    "hard_mish": lambda: _Lambda(
        lambda x: torch.where(x > 0, x, torch.where(x > -2, x * x / 2 + x, torch.zeros_like(x))), "hard_mish"),
    "hardtan": lambda: nn.Hardtanh(-1.0, 1.0),
    "relie": lambda: nn.LeakyReLU(0.01, inplace=True),
    "ramp": lambda: _Lambda(lambda x: torch.relu(x) + 0.1 * x, "ramp"),
    "lhtan": lambda: _Lambda(lambda x: torch.where(x < 0, 0.001 * x, torch.where(x > 1, 0.001 * (x - 1) + 1, x)),
                             "lhtan"),
}


def make_activation(section: Section, default: str = "logistic") -> nn.Module:
    """Darknet's default for a [convolutional] without ``activation`` is logistic."""
    name = section.choice("activation", sorted(ACTIVATIONS), default)
    return ACTIVATIONS[name]()


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(kernel, bias) of the single convolution equal to conv followed by bn (eval mode)."""
    weight = conv.weight.detach()
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros(
        weight.shape[0], dtype=weight.dtype, device=weight.device)
    if bn is None:
        return weight, bias
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    return weight * scale.reshape(-1, 1, 1, 1), (bias - bn.running_mean) * scale + bn.bias.detach()


class ConvBN(nn.Module):
    """conv -> BatchNorm (optional) -> activation: one unit of the weights stream."""

    def __init__(self, c_in: int, c_out: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] | None = None, groups: int = 1, dilation: int = 1,
                 bn: bool = True, act: nn.Module | None = None) -> None:
        super().__init__()
        if padding is None:
            padding = (kernel // 2) * dilation if isinstance(kernel, int) else (kernel[0] // 2, kernel[1] // 2)
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation=dilation, groups=groups,
                              bias=not bn)
        self.bn = nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM) if bn else None
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)

    def weight_units(self) -> Iterator[WeightUnit]:
        yield self.conv, self.bn

    def fuse_bn(self) -> None:
        if self.bn is None:
            return
        weight, bias = fold_bn(self.conv, self.bn)
        conv = self.conv
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                          conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True).to(weight)
        with torch.no_grad():
            fused.weight.copy_(weight)
            fused.bias.copy_(bias)
        self.conv, self.bn = fused, None


@dataclass
class ConvSpec:
    """The keys of a [convolutional] section, typed and checked once (plain and ACNet alike)."""

    filters: int
    size: int
    stride: int
    padding: int
    groups: int
    dilation: int
    bn: bool
    act: nn.Module

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "ConvSpec":
        filters = s.int("filters", 1)
        size = s.int("size", 1)
        stride = s.int("stride", 1)
        pad = s.bool("pad", False)
        padding = s.int("padding", size // 2 if pad else 0)
        groups = s.int("groups", 1)
        dilation = s.int("dilation", 1)
        bn = s.bool("batch_normalize", False)
        act = make_activation(s)
        s.unsupported("stride_x", str(stride))
        s.unsupported("stride_y", str(stride))
        for key in ("binary", "xnor", "antialiasing", "deform"):
            s.unsupported(key, "0")
        if min(filters, size, stride, groups, dilation) < 1:
            raise s.error("filters, size, stride, groups and dilation must be >= 1")
        if ctx.c_in % groups or filters % groups:
            raise s.error(f"groups={groups} must divide the input channels ({ctx.c_in}) "
                          f"and filters ({filters})", "groups")
        if size == 1:
            dilation = 1  # as Darknet
        return cls(filters, size, stride, padding, groups, dilation, bn, act)


@register("convolutional", "conv")
class Convolutional(Block):
    """A Darknet [convolutional] section."""

    def __init__(self, unit: ConvBN, stride: float) -> None:
        super().__init__(unit.conv.out_channels, stride)
        self.unit = unit

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "Block":
        spec = ConvSpec.from_section(s, ctx)
        if s.bool("asymmetric", False):  # ACNet block: three branches, see acnet.py
            from .acnet import ACConv
            return ACConv.from_spec(s, spec, ctx)
        unit = ConvBN(ctx.c_in, spec.filters, spec.size, spec.stride, spec.padding * spec.dilation,
                      spec.groups, spec.dilation, spec.bn, spec.act)
        return cls(unit, ctx.stride_in * spec.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unit(x)

    def weight_units(self) -> Iterator[WeightUnit]:
        return self.unit.weight_units()

