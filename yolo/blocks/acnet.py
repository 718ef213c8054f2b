"""ACNet: ``asymmetric=1`` on a [convolutional] (Asymmetric Convolution Block) and its fusion.

Training time: three parallel conv+BN branches on one input (k x k, 1 x k, k x 1), summed,
then the activation. Deploy time: the BatchNorms are folded and the 1 x k / k x 1 kernels
are added onto the centre row / column of the k x k kernel, giving one ordinary convolution
with a bias: the same function (the convolution is linear), a plain Darknet layer.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from ..cfg import Section
from ..registry import Block, BuildContext, WeightUnit
from .conv import ConvBN, Convolutional, ConvSpec, fold_bn


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

    def plain_conv(self, bias: bool = True) -> nn.Conv2d:
        """An empty k x k convolution with this block's geometry."""
        p = self.size // 2
        return nn.Conv2d(self.c_in, self.c_out, self.size, self.step, p, groups=self.groups, bias=bias)

    def fuse_bn(self) -> None:
        """Inference form: one convolution (BN folded, branches added). In place, exact."""
        if self.fused is not None:
            return
        kernel, bias = self.fused_kernel()
        conv = self.plain_conv().to(kernel)
        with torch.no_grad():
            conv.weight.copy_(kernel)
            conv.bias.copy_(bias)
        self.fused = conv
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


class ACConv(Block):
    """A [convolutional] section with ``asymmetric=1`` (built through Convolutional's hook)."""

    section_type = "convolutional"

    def __init__(self, unit: ACUnit, stride: float) -> None:
        super().__init__(unit.c_out, stride)
        self.unit = unit

    @classmethod
    def from_spec(cls, s: Section, spec: ConvSpec, ctx: BuildContext) -> "ACConv":
        """Checks what ACNet adds to a [convolutional]'s keys (read once in ``ConvSpec``)."""
        size, padding = spec.size, spec.padding
        if size < 3 or size % 2 == 0:
            raise s.error(f"asymmetric=1 needs an odd kernel size >= 3 (1 x k and k x 1 branches "
                          f"centred on a k x k kernel), got size={size}", "asymmetric")
        if not spec.bn:
            raise s.error("asymmetric=1 needs batch_normalize=1 (each branch is conv + BatchNorm)",
                          "asymmetric")
        if padding != size // 2:
            raise s.error(f"asymmetric=1 needs 'same' padding (pad=1 or padding={size // 2}), "
                          f"got padding={padding}", "asymmetric")
        if spec.dilation != 1:
            raise s.error(f"asymmetric=1 does not support dilation, got dilation={spec.dilation}",
                          "asymmetric")
        return cls(ACUnit(ctx.c_in, spec.filters, size, spec.stride, spec.groups, spec.act),
                   ctx.stride_in * spec.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unit(x)

    def weight_units(self) -> Iterator[WeightUnit]:
        return self.unit.weight_units()

    def deploy(self) -> tuple[Block, dict[str, str | None]]:
        """One plain [convolutional]: batch_normalize=0, BN folded, branches added."""
        block = Convolutional(self.unit.deployed_unit(keep_bn=False), self.stride)
        block.where = self.where
        return block, {"asymmetric": None, "batch_normalize": "0"}
