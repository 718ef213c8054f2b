"""The reusable pieces every block family is made of: activations by name, conv + BatchNorm
units (plain and ACNet's three-branch form), BatchNorm folding, the residual projection.

Each piece that can be simplified for inference says how (``fuse_bn``), and every fused
convolution is made by one helper, so plain and ACNet units fuse the same way.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import nn

from ..cfg import Section
from ..registry import WeightUnit

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
        self.conv, self.bn = conv_with(*fold_bn(self.conv, self.bn), like=self.conv), None


def conv_out_hw(conv: nn.Conv2d, in_hw: tuple[int, int]) -> tuple[int, int]:
    """Output map size of ``conv`` on an ``in_hw`` input (PyTorch's and Darknet's formula)."""
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1  # type: ignore[return-value]
                 for n, k, s, p, d in zip(in_hw, conv.kernel_size, conv.stride, conv.padding, conv.dilation))


def conv_with(kernel: torch.Tensor, bias: torch.Tensor | None, like: nn.Conv2d | None = None, *,
              stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0, dilation: int = 1,
              groups: int = 1) -> nn.Conv2d:
    """A convolution holding ``kernel`` (and ``bias``): the geometry of ``like`` when given."""
    if like is not None:
        stride, padding, dilation, groups = like.stride, like.padding, like.dilation, like.groups
    out_c, in_per_group = kernel.shape[:2]
    conv = nn.utils.skip_init(nn.Conv2d, in_per_group * groups, out_c, tuple(kernel.shape[2:]), stride, padding,
                              dilation=dilation, groups=groups, bias=bias is not None,
                              device=kernel.device, dtype=kernel.dtype)  # no random init: it is overwritten
    with torch.no_grad():
        conv.weight.copy_(kernel)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


def positive(s: Section, key: str, default: int | None = None) -> int:
    """An integer key that must be >= 1 (error names the line)."""
    value = s.int(key) if default is None else s.int(key, default)
    if value < 1:
        raise s.error(f"expected {key} >= 1, got {value}", key)
    return value


def make_downsample(c_in: int, c_out: int, stride: int) -> ConvBN | None:
    """The residual projection (1x1 conv + BN) when the shapes differ, else None (identity)."""
    return ConvBN(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else None


def add_asymmetric(square: torch.Tensor, hor: torch.Tensor, ver: torch.Tensor) -> torch.Tensor:
    """k x k kernel + 1 x k kernel on its centre row + k x 1 kernel on its centre column.

    Shapes: square (O, I, k, k), hor (O, I, 1, k), ver (O, I, k, 1); returns a new tensor.
    """
    k = square.shape[-1]
    c = k // 2
    kernel = square.clone()
    kernel[:, :, c:c + 1, :] += hor
    kernel[:, :, :, c:c + 1] += ver
    return kernel


class ACUnit(nn.Module):
    """The three branches of an ACNet block plus the activation; ``fuse_bn`` merges them."""

    def __init__(self, c_in: int, c_out: int, size: int, stride: int = 1, groups: int = 1,
                 act: nn.Module | None = None) -> None:
        super().__init__()
        if size < 3 or size % 2 == 0:
            raise ValueError(f"an ACNet block needs an odd kernel size >= 3, got {size}")
        self.c_in, self.c_out, self.size, self.step, self.groups = c_in, c_out, size, stride, groups
        self.square: ConvBN | None = ConvBN(c_in, c_out, size, stride, size // 2, groups)
        self.hor: ConvBN | None = ConvBN(c_in, c_out, (1, size), stride, (0, size // 2), groups)
        self.ver: ConvBN | None = ConvBN(c_in, c_out, (size, 1), stride, (size // 2, 0), groups)
        self.fused: nn.Conv2d | None = None  # set by fuse_bn(): the single equivalent convolution
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            return self.act(self.fused(x))
        return self.act(self.square(x) + self.hor(x) + self.ver(x))

    def weight_units(self) -> Iterator[WeightUnit]:
        """Stream order: square CB, hor CB, ver CB (after fuse_bn: the one biased conv)."""
        if self.fused is not None:
            yield self.fused, None
            return
        for branch in (self.square, self.hor, self.ver):
            yield from branch.weight_units()

    def fused_kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(k x k kernel, bias) of the one convolution equal to the three branches (eval mode)."""
        if self.fused is not None:
            return self.fused.weight.detach().clone(), self.fused.bias.detach().clone()
        (ks, bs), (kh, bh), (kv, bv) = (fold_bn(b.conv, b.bn) for b in (self.square, self.hor, self.ver))
        return add_asymmetric(ks, kh, kv), bs + bh + bv

    def fuse_bn(self) -> None:
        """Inference form: one convolution (BN folded, branches added). In place, exact."""
        if self.fused is not None:
            return
        self.fused = conv_with(*self.fused_kernel(), like=self.square.conv)
        self.square = self.hor = self.ver = None

    def deployed_unit(self, keep_bn: bool) -> ConvBN:
        """A plain ConvBN (with this activation) computing the same function.

        ``keep_bn=False``: conv with bias, no BN (a [convolutional] with batch_normalize=0).
        ``keep_bn=True``: conv without bias + an identity BatchNorm carrying the bias
        (gamma=1, beta=bias, mean=0, var=1-eps), for sections whose cfg form needs a BN.
        """
        kernel, bias = self.fused_kernel()
        p = self.size // 2
        unit = ConvBN(self.c_in, self.c_out, self.size, self.step, p, self.groups, bn=keep_bn,
                      act=self.act).to(kernel)
        with torch.no_grad():
            unit.conv.weight.copy_(kernel)
            if keep_bn:
                bn = unit.bn
                bn.weight.fill_(1.0)
                bn.bias.copy_(bias)
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)
            else:
                unit.conv.bias.copy_(bias)
        return unit


