"""One registry of block types: the section name is the key, the class says everything.

A block declares, in one class, how it is built from its cfg section
(``from_section``), what it outputs (``out_channels``, ``out_stride``), which earlier
outputs it reads (``inputs``) and the ordered (conv, batchnorm) units it puts in the
``.weights`` stream (``weight_units``), how pruning couples its channels (``prune_rule``,
``yolo.pruning.rules``) and its row of Darknet's layer table (``info_row``). Weights IO, fusion,
pruning, the layer table and the model's forward loop only ever walk these declarations.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterator, Optional, Sequence

from torch import nn

from .cfg import ConfigError, Section
from .layer_table import ConvFigures, LayerRow, Shape, composite_row
from .pruning.rules import Rule

WeightUnit = tuple[nn.Conv2d, Optional[nn.BatchNorm2d]]


@dataclass(frozen=True)
class RefMap:
    """An earlier output a block reads: its layer index, section (for messages) and map size."""

    index: int
    where: str
    hw: tuple[int, int]


@dataclass
class BuildContext:
    """What a block may know about the network built before it."""

    in_channels: int  # the [net] channels, input of the first section
    channels: list[int] = field(default_factory=list)  # output channels per section so far
    strides: list[float] = field(default_factory=list)  # output stride per section so far
    input_size: Optional[tuple[int, int]] = None  # (height, width) from [net], when known
    # exact (height, width) per section so far at the [net] size (None: unknown), kept by build_block
    hws: list[Optional[tuple[int, int]]] = field(default_factory=list)
    # the blocks built so far, appended by build_block: a [convolutional] share_index=N runs with block N's tensors
    blocks: list["Block"] = field(default_factory=list)

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

    def map_hw_in(self) -> Optional[tuple[int, int]]:
        """Exact (height, width) of this section's input at the [net] size (each earlier block's
        ``out_hw``), for blocks sized by their input map ([connected], [local]); None when unknown."""
        if self.input_size is None or len(self.hws) != len(self.channels):
            return None
        return self.hws[-1] if self.hws else self.input_size

    def record_hw(self, block: "Block") -> None:
        """Append ``block``'s output size at the [net] size; None where it cannot be had (a bad join
        or a vanished map: ``infer_shapes`` reports those, with its own messages, after the build)."""
        hw_in = self.map_hw_in()
        hw = None
        if hw_in is not None and all(0 <= j < len(self.hws) and self.hws[j] is not None for j in block.inputs):
            try:
                hw = block.out_hw(hw_in, [RefMap(j, "", self.hws[j]) for j in block.inputs])
            except (ConfigError, ValueError, IndexError, ArithmeticError):
                hw = None
            if hw is not None and min(hw) < 1:
                hw = None
        self.hws.append(hw)

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
    # how pruning couples its channels and edits its keys; None: pruning refuses it, naming the section
    prune_rule: ClassVar[Optional[Rule]] = None

    def __init__(self, out_channels: int, out_stride: float) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.out_stride = out_stride
        self.in_stride = 1.0  # set by build_block: input pixels per cell of this block's (main) input
        self.where = ""

    @classmethod
    def from_section(cls, section: Section, ctx: BuildContext) -> "Block":
        raise NotImplementedError

    def out_hw(self, in_hw: tuple[int, int], refs: list[RefMap]) -> tuple[int, int]:
        """(height, width) of the output for an input map of ``in_hw`` and earlier outputs
        ``refs`` (those named by ``inputs``). Default: a same-padded block that steps by
        ``out_stride / in_stride`` (ceil division, as a 3x3 pad-1 stride-s convolution does),
        or upsamples by its inverse. Blocks with other geometry override this; blocks that
        join maps check them here and raise a ConfigError naming both sections."""
        step = self.out_stride / self.in_stride
        if step >= 1:
            return -(-in_hw[0] // round(step)), -(-in_hw[1] // round(step))
        return in_hw[0] * round(1 / step), in_hw[1] * round(1 / step)

    def weight_units(self) -> Iterator[WeightUnit]:
        """(conv, bn or None) pairs in ``.weights`` stream order; none by default."""
        return iter(())

    def info_row(self, index: int, section: Section, inp: Optional[Shape], out: Shape,
                 convs: ConvFigures) -> LayerRow:
        """This section's row of Darknet's layer table, from its input and output maps (W, H, C) and the
        convolutions it ran (each with its BFLOPs). Default: a section Darknet does not have (its
        output channels, its stride, the sum of its convolutions)."""
        return composite_row(index, section.type, inp, out, convs)

    # a recurrent block ([crnn]) carries a state from one forward to the next
    stateful: ClassVar[bool] = False

    def reset_state(self, carry: bool = True) -> None:
        """A new source starts: forget any state; ``carry``: later forwards continue one another.
        Nothing to do for a block without state."""

    def training_problem(self) -> Optional[str]:
        """Why the trainer cannot train this block (None: it can); the trainer asks every block."""
        return None

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
    block.in_stride = ctx.stride_in
    ctx.record_hw(block)
    ctx.blocks.append(block)
    return block


def infer_shapes(blocks: Sequence[Block], in_chw: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    """(channels, height, width) of every block's output for an input of ``in_chw``, without
    running anything: joins of maps that disagree and maps under one pixel are ConfigErrors
    naming the sections, found before any tensor is allocated."""
    shapes: list[tuple[int, int, int]] = []
    hw = in_chw[1:]
    for i, block in enumerate(blocks):
        refs = [RefMap(j, blocks[j].where, shapes[j][1:]) for j in block.inputs]
        hw = block.out_hw(hw, refs)
        if min(hw) < 1:
            raise ConfigError(f"{block.where}: the map shrinks to {hw[1]}x{hw[0]} (w x h) at input "
                              f"{in_chw[2]}x{in_chw[1]}: nothing left to compute on")
        shapes.append((block.out_channels, *hw))
    return shapes
