"""Darknet's layer table: what Darknet prints when it loads a cfg, figure for figure.

    python -m yolo.info CFG [--img-size N | H W]

One row per section: index, type, filters, size/stride(dilation), input -> output
(W x H x C) and BFLOPs, then Darknet's ``Total BFLOPS``, the parameter count and the size
of the ``.weights`` file the network reads and writes.

BFLOPs are counted as Darknet counts them (a multiply-add is 2 operations). Each block class says
its own row (``Block.info_row``, a ``yolo.layer_table.LayerRow``): a [convolutional] by Darknet's
``l.bflops`` (``convolutional_layer.c``), [maxpool] and [shortcut] as ``maxpool_layer.c`` and
``shortcut_layer.c`` count them, [route] [upsample] [dropout] [yolo] 0; sections Darknet does not
have (``asymmetric=1`` ACNet, [res2net], [triangle], [bottleneck], [scbottleneck], and any new
block that declares nothing) the sum of their internal convolutions by the convolution rule
(pools, sums and gates inside them are not counted).

Shapes come from running the network once on a ``meta`` tensor (no memory, no arithmetic)
with forward hooks on every section and every ``nn.Conv2d``, so the table follows whatever
the blocks actually compute; the model's own weights are not touched.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .cli.common import ArgumentParser, add_img_size_arg, parse_img_size, user_errors
from .errors import YoloError
from .layer_table import LayerRow, conv_bflops

__all__ = ["LayerRow", "conv_bflops", "layer_table", "total_bflops", "weights_file_bytes", "report", "check_size",
           "InfoError", "parse_size", "get_args_parser", "main"]

HEADER = "   layer   type          filters  size/strd(dil)      input                  output"


def _whc(t: torch.Tensor) -> tuple[int, int, int]:
    return int(t.shape[3]), int(t.shape[2]), int(t.shape[1])


class _Done(Exception):
    """Raised by the last section's hook to end the shape run."""


def _run_shapes(model: nn.Module, size: tuple[int, int]):
    """Run the model once on a meta tensor of (width, height); returns per-section records.

    Each record: (input tensor, output tensor, [(conv, output tensor)]). The model's own
    parameters stay where they are (``functional_call`` swaps in meta copies for the call).
    """
    width, height = size
    blocks = list(model.module_list)
    records: list[list] = [[None, None, []] for _ in blocks]
    current: list[int] = [-1]
    handles = []

    def block_pre(i):
        def hook(_module, args):
            current[0] = i
        return hook

    def block_post(i):
        def hook(_module, args, output):
            records[i][0] = args[0] if args else None
            records[i][1] = output
            if i == len(blocks) - 1:
                raise _Done  # every shape is known; skip the model's own output assembly
        return hook

    def conv_post(conv, _args, output):
        if current[0] >= 0:
            records[current[0]][2].append((conv, output))

    for i, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(block_pre(i)))
        handles.append(block.register_forward_hook(block_post(i)))
        for m in block.modules():
            if isinstance(m, nn.Conv2d):
                handles.append(m.register_forward_hook(conv_post))
    meta = {name: torch.empty_like(t, device="meta")
            for name, t in list(model.named_parameters()) + list(model.named_buffers())}
    channels = model.net.channels
    was_training = model.training
    model.eval()
    try:
        try:
            x = torch.empty(1, channels, height, width, device="meta")
            with torch.no_grad():
                torch.func.functional_call(model, meta, (x,), strict=False)
        except _Done:
            pass
        except (NotImplementedError, RuntimeError):
            # a block that needs real data: run once on zeros where the model lives (eval, no_grad)
            for r in records:
                r[0], r[1], r[2] = None, None, []
            try:
                p = next(model.parameters(), None)
                x = torch.zeros(1, channels, height, width,
                                device=p.device if p is not None else "cpu",
                                dtype=p.dtype if p is not None else torch.float32)
                with torch.no_grad():
                    model(x)
            except _Done:
                pass
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return records


class InfoError(YoloError):
    """An input size the network cannot take (not positive, or a map that vanishes)."""


def check_size(model: nn.Module, size: tuple[int, int]) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise InfoError(f"--img-size must be positive, got {width}x{height} (w x h)")
    try:
        model.check_input(torch.empty(1, model.net.channels, height, width, device="meta"))
    except ValueError as e:
        raise InfoError(f"--img-size {height} {width} (h w): {e}") from None


def layer_table(model: nn.Module, size: tuple[int, int] | int | None = None) -> list[LayerRow]:
    """Darknet's layer table of ``model`` at input ``size`` = (width, height) (default: [net]).

    Reusable by any report (pruning, export): each row has the figures Darknet prints.
    """
    if size is None:
        size = (model.net.width, model.net.height)
    elif isinstance(size, int):
        size = (size, size)
    size = (int(size[0]), int(size[1]))
    check_size(model, size)
    records = _run_shapes(model, size)
    rows = []
    for i, (block, section, (x, y, convs)) in enumerate(zip(model.module_list, model.sections, records)):
        inp = _whc(x) if isinstance(x, torch.Tensor) and x.dim() == 4 else None
        # a [yolo] head returns decoded boxes; its map (what Darknet prints) is its input
        out = _whc(y) if isinstance(y, torch.Tensor) and y.dim() == 4 else (inp or (0, 0, 0))
        figures = [(c, conv_bflops(c, int(o.shape[2]), int(o.shape[3]))) for c, o in convs]
        row = block.info_row(i, section, inp, out, figures)
        row.params = sum(p.numel() for p in block.parameters())
        inner = [(f"{c.out_channels} {c.kernel_size[0]}x{c.kernel_size[1]}", b) for c, b in figures]
        row.convs = inner if len(inner) > 1 else []
        rows.append(row)
    return rows


def total_bflops(rows_or_model, size: tuple[int, int] | int | None = None) -> float:
    """Darknet's ``Total BFLOPS``: the sum over the rows (or over ``layer_table(model, size)``), added up as
    ``parse_network_cfg_custom`` does: each layer's ``float l.bflops`` into a ``float`` (float32 rounding,
    which moves the 4th decimal of a 700-BFLOPs net)."""
    rows = rows_or_model if isinstance(rows_or_model, list) else layer_table(rows_or_model, size)
    total = np.float32(0.0)
    for r in rows:
        if r.bflops > 0:
            total = np.float32(total + np.float32(r.bflops))
    return float(total)


def weights_file_bytes(model: nn.Module) -> int:
    """Size of the model's Darknet ``.weights`` file: 20-byte header (0.2.5) + float32 stream."""
    return 20 + 4 * model.num_weight_floats()


def report(model: nn.Module, size: tuple[int, int] | int | None = None) -> str:
    """The whole printout: header, rows, totals (as ``python -m yolo.info`` prints it)."""
    rows = layer_table(model, size)
    lines = [HEADER] + [r.text for r in rows]
    total = total_bflops(rows)
    params = sum(p.numel() for p in model.parameters())
    floats = model.num_weight_floats()
    size_bytes = weights_file_bytes(model)
    w, h = (model.net.width, model.net.height) if size is None else (
        (size, size) if isinstance(size, int) else size)
    lines += [f"Total BFLOPS {total:5.3f} (input {w}x{h})",
              f"parameters: {params:,} trainable; .weights: {floats:,} floats, "
              f"{size_bytes:,} bytes ({size_bytes / 2**20:.2f} MiB)"]
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m yolo.info",
                       description="Print Darknet's layer table (shapes, BFLOPs per layer, total), "
                                   "the parameter count and the .weights size of a cfg.")
    p.add_argument("cfg", help="Darknet cfg (path, or a name in cfg/)")
    add_img_size_arg(p, "input (default: the cfg's [net] height/width)")
    return p


def parse_size(values: Sequence[int] | None) -> tuple[int, int] | None:
    """``--img-size`` (one size, or height width, as every tool) -> (width, height) for :func:`layer_table`."""
    hw = parse_img_size(values)
    return None if hw is None else (hw[1], hw[0])


@user_errors()
def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    from .model import Darknet

    args = get_args_parser().parse_args(argv)
    size = parse_size(args.img_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unused keys, no [yolo]: not the table's business
        model = Darknet(Path(args.cfg) if Path(args.cfg).exists() else args.cfg, warn_unused=False)
    print(report(model, size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
