"""One registry of block types: the section name is the key, the class says everything.

A block declares, in one class, how it is built from its cfg section
(``from_section``), what it outputs (``out_channels``, ``out_stride``), which earlier
outputs it reads (``inputs``) and the ordered (conv, batchnorm) units it puts in the
``.weights`` stream (``weight_units``). Weights IO, fusion and the model's forward
loop only ever walk these declarations.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

from torch import nn

from .cfg import ConfigError, Section

WeightUnit = tuple[nn.Conv2d, Optional[nn.BatchNorm2d]]


@dataclass
class BuildContext:
    """What a block may know about the network built before it."""

    in_channels: int  # the [net] channels, input of the first section
    channels: list[int] = field(default_factory=list)  # output channels per section so far
    strides: list[float] = field(default_factory=list)  # output stride per section so far
    input_size: Optional[tuple[int, int]] = None  # (height, width) from [net], when known

    @property
    def c_in(self) -> int:
        return self.channels[-1] if self.channels else self.in_channels

    @property
    def stride_in(self) -> float:
        return self.strides[-1] if self.strides else 1.0

    def map_size_in(self) -> Optional[tuple[int, int]]:
        """(height, width) of this section's input map at the [net] size, when known."""
        if self.input_size is None:
            return None
        return tuple(int(v // self.stride_in) for v in self.input_size)

    def layer_index(self, section: Section, value: int, key: str) -> int:
        """Darknet layer reference (negative: relative to this section) -> absolute index."""
        here = len(self.channels)
        index = here + value if value < 0 else value
        if not 0 <= index < here:
            raise section.error(
                f"refers to layer {value} (absolute {index}), outside layers 0..{here - 1} "
                f"built before this section", key)
        return index


class Block(nn.Module):
    """Base of every section's module."""

    section_type: str = ""
    inputs: tuple[int, ...] = ()  # absolute indices of earlier outputs passed to forward()
    is_output: bool = False  # a [yolo] head: its result is collected, x passes through

    def __init__(self, out_channels: int, out_stride: float) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.out_stride = out_stride  # of this block's output w.r.t. the input image (input pixels per output cell)
        self.where = ""

    @classmethod
    def from_section(cls, section: Section, ctx: BuildContext) -> "Block":
        raise NotImplementedError

    def weight_units(self) -> Iterator[WeightUnit]:
        """(conv, bn or None) pairs in ``.weights`` stream order; none by default."""
        return iter(())

    def fuse(self) -> None:
        """Fold BatchNorm into convolutions for inference (in place)."""
        for module in self.modules():
            if module is not self and hasattr(module, "fuse_bn"):
                module.fuse_bn()


BlockFactory = Callable[[Section, BuildContext], Block]
_REGISTRY: dict[str, BlockFactory] = {}
_VARIANTS: dict[str, dict[str, BlockFactory]] = {}  # section name -> {switch key: factory}


def register(*names: str, variant: str | None = None) -> Callable:
    """Class decorator: the section name(s) this block is built from. Refuses duplicates.

    ``variant`` names a boolean key that, set to 1 in the section, selects this class instead
    of the plain one (ACNet's ``asymmetric=1`` on a [convolutional]), so the plain block never
    needs to know its variants.
    """

    def wrap(cls):
        for name in names:
            table = _REGISTRY if variant is None else _VARIANTS.setdefault(name, {})
            key = name if variant is None else variant
            if key in table:
                raise RuntimeError(f"block type [{name}]{'' if variant is None else ' ' + variant + '=1'} "
                                   "registered twice")
            table[key] = cls.from_section
        cls.section_type = names[0]
        return cls

    return wrap


def registered_types() -> list[str]:
    return sorted(_REGISTRY)


def build_block(section: Section, ctx: BuildContext) -> Block:
    factory = _REGISTRY.get(section.type)
    if factory is None:
        raise ConfigError(f"{section.where()}: unknown section type; known: "
                          f"{', '.join('[' + n + ']' for n in registered_types())}")
    for key, variant in _VARIANTS.get(section.type, {}).items():
        if section.bool(key, False):
            factory = variant
    block = factory(section, ctx)
    block.where = section.where()
    return block
