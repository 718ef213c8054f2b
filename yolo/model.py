"""Darknet: the nn.Module built from a cfg by the block registry."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from . import blocks  # noqa: F401  (registers every section type)
from . import weights as weights_io
from .blocks.crnn import refuse_text_model
from .cfg import ConfigError, Section, parse_cfg_text, read_cfg_text, resolve_cfg
from .cfg_edit import edit_cfg_text
from .heads import Head  # importing the package registers every head section type
from .netconfig import NetConfig
from .registry import Block, BuildContext, build_block, infer_shapes


class Darknet(nn.Module):
    """A network described by a Darknet cfg; ``module_list`` has one module per section.

    Training mode returns the raw output of each ``[yolo]`` layer, each (B, na, ny, nx, 5+C).
    Eval mode returns one tensor (B, N, 5+C): cx, cy, w, h in input pixels, objectness,
    class probabilities; rows by [yolo] layer, anchor, grid row, grid column.
    """

    def __init__(self, cfg: str | Path, warn_unused: bool = True, max_bytes: int | None = None) -> None:
        """``max_bytes``: refuse a network whose parameters plus activations at the [net] size
        (batch 1) need more memory than this (default: this machine's physical memory)."""
        super().__init__()
        self.cfg_path = resolve_cfg(cfg)
        self.cfg_text = read_cfg_text(self.cfg_path)
        sections = parse_cfg_text(self.cfg_text, str(self.cfg_path))
        refuse_text_model(sections)
        self.net = NetConfig.from_section(sections[0])
        self.sections: list[Section] = sections[1:]
        if not self.sections:
            raise ConfigError(f"{self.cfg_path}: no layers after [net] (the file may be cut short)")
        with torch.device("meta"):  # shapes and sizes first: nothing is allocated for a bad cfg
            plan = self._build_blocks()
        self.shapes = check_plan(plan, self.net, max_bytes)
        module_list = self._build_blocks()
        if warn_unused:
            for section in sections:
                section.warn_unused()
        self.module_list = module_list
        self.heads: list[Head] = [m for m in module_list if isinstance(m, Head)]
        if not self.heads:
            warnings.warn(f"{self.cfg_path}: no [yolo] section; the model is a backbone only")
        needed = {i for m in module_list for i in m.inputs}
        self._keep = [i in needed for i in range(len(module_list))]
        self._max_stride = int(max(m.out_stride for m in module_list))
        self.fused = False
        self.seen = 0
        self._sizes_checked: set[tuple[int, int]] = {(self.net.height, self.net.width)}

    def _build_blocks(self) -> nn.ModuleList:
        ctx = BuildContext(self.net.channels, input_size=(self.net.height, self.net.width))
        module_list = nn.ModuleList()
        for section in self.sections:
            block = build_block(section, ctx)
            check_weight_units(block)
            module_list.append(block)
            ctx.channels.append(block.out_channels)
            ctx.strides.append(block.out_stride)
        return module_list

    def output_shapes(self, height: int, width: int) -> list[tuple[int, int, int]]:
        """(channels, height, width) of every section's output for a ``height`` x ``width``
        input, computed without running the network (ConfigError where maps cannot join)."""
        return infer_shapes(list(self.module_list), (self.net.channels, height, width))

    # --- properties -----------------------------------------------------------------
    @property
    def yolo_layers(self) -> list[Head]:
        """The detection heads (``heads``), under their older name."""
        return self.heads

    @property
    def num_classes(self) -> int:
        return self.heads[0].num_classes if self.heads else 0

    @property
    def strides(self) -> list[float]:
        return [m.out_stride for m in self.heads]

    @property
    def max_stride(self) -> int:
        return self._max_stride

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) from [net]."""
        return self.net.height, self.net.width

    @property
    def stateful(self) -> bool:
        """Whether a block carries a state from one forward to the next (a [crnn]: video frames)."""
        return any(m.stateful for m in self.module_list)

    def reset_state(self, carry: bool = True) -> "Darknet":
        """A new source starts: every recurrent block forgets its state; ``carry``: each later forward
        continues the one before (one video), else each starts afresh (independent images, the default)."""
        for block in self.module_list:
            block.reset_state(carry)
        return self

    # --- forward -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if not torch.jit.is_tracing():
            self.check_input(x)
        saved: list[torch.Tensor | None] = [None] * len(self.module_list)
        outputs = []
        keep = self._keep
        for i, block in enumerate(self.module_list):
            if block.is_output:
                outputs.append(block(x))
            elif block.inputs:
                x = block(x, [saved[j] for j in block.inputs])
            else:
                x = block(x)
            if keep[i]:
                saved[i] = x
        if not outputs:  # a backbone-only cfg: its last map
            return x
        if self.training:
            return outputs
        return torch.cat(outputs, 1) if len(outputs) > 1 else outputs[0]

    def check_input(self, x: torch.Tensor) -> None:
        """Refuse, with the reason, an input the network cannot run on."""
        if x.dim() != 4 or x.shape[1] != self.net.channels:
            raise ValueError(f"expected input (batch, {self.net.channels}, height, width), "
                             f"got {tuple(x.shape)}")
        stride = self._max_stride
        if self.heads and (x.shape[-1] % stride or x.shape[-2] % stride):
            raise ValueError(f"input size {tuple(x.shape[-2:])} (h, w): each side must be a multiple "
                             f"of the network's stride {stride} (its detection heads place boxes at cell * stride)")
        hw = (int(x.shape[-2]), int(x.shape[-1]))
        if hw not in self._sizes_checked:  # maps that vanish or stop matching at this size
            self.output_shapes(*hw)
            self._sizes_checked.add(hw)

    # --- weights ------------------------------------------------------------------------
    def load_darknet_weights(self, path: str | Path, cutoff: int | None = None) -> "Darknet":
        self.seen = weights_io.load(self, path, cutoff)
        return self

    def save_darknet_weights(self, path: str | Path, cutoff: int | None = None) -> None:
        if self.fused:
            raise RuntimeError(
                "this model was fused (BatchNorm folded into convolutions): its weights no longer "
                f"follow {self.cfg_path.name}. Save the weights before calling fuse(), or use deploy().")
        weights_io.save(self, path, cutoff, self.seen)

    def num_weight_floats(self, cutoff: int | None = None) -> int:
        return weights_io.count_floats(self, cutoff)

    # --- inference ---------------------------------------------------------------------
    def fuse(self, channels_last: bool = True) -> "Darknet":
        """Fold every BatchNorm into its convolution (inference only); eval mode.

        ``channels_last`` also stores the weights NHWC, the layout oneDNN's CPU kernels run
        fastest on (yolo-fastest, depthwise-heavy, runs ~1.5x faster; see benchmarks/).
        Outputs keep their layout-independent meaning; inputs may be NCHW.
        """
        for block in self.module_list:
            block.fuse()
        self.fused = True
        if channels_last:
            self.to(memory_format=torch.channels_last)
        return self.eval()

    def optimize_for_inference(self) -> "FrozenDarknet":
        """A fused, TorchScript-frozen callable with the eval outputs of ``self``.

        Traced once per input shape/dtype/device (~0.1-2 s), then no Python runs per
        section: the choice for repeated inference at one size (detection, evaluation).
        """
        if not self.fused:
            self.fuse()
        return FrozenDarknet(self)

    def deploy(self) -> "Darknet":
        """In place: every block with a ``deploy()`` form (ACNet branches -> one plain convolution)
        is replaced by it, and ``cfg_text``/``sections`` become the deployed cfg, so
        ``save_darknet_weights`` writes weights that match that text. Must run before fuse()."""
        if self.fused:
            raise RuntimeError("deploy() needs the unfused model (call it before fuse(); "
                               "fuse() folds the BatchNorms the deployed cfg keeps)")
        self.eval()
        edits: dict[int, dict[str, str | None]] = {}
        for i, block in enumerate(self.module_list):
            deploy = getattr(block, "deploy", None)
            if deploy is None:
                continue
            new_block, key_edits = deploy()
            if new_block is not block:
                new_block.where, new_block.inputs, new_block.in_stride = block.where, block.inputs, block.in_stride
                self.module_list[i] = new_block
            if key_edits:
                edits[self.sections[i].line] = key_edits
        text = edit_cfg_text(self.cfg_text, edits)
        if edits:
            text = (f"# Deployed by yolo.deploy from {self.cfg_path.name}: {len(edits)} ACNet/re-parameterised "
                    f"section(s) fused into plain layers.\n") + text
        sections = parse_cfg_text(text, f"{self.cfg_path} (deployed)")
        self.cfg_text = text
        self.net.section = sections[0]
        self.sections = sections[1:]
        self.deployed_sections = sorted(edits)
        return self.eval()  # the blocks deploy() made are new modules, in training mode until now

    def export_onnx(self, path: str | Path, img_size: int | tuple[int, int] | None = None, batch: int = 1,
                    dynamic: bool = False, names: list[str] | None = None, check: bool = True) -> Path:
        """Write the eval graph (boxes decoded, NMS outside) to ``path`` as ONNX with our metadata;
        the model itself is not changed. See :func:`yolo.export.export_onnx`."""
        from .export import export_onnx
        return export_onnx(self, path, img_size, batch, dynamic, names, check=check)


def physical_memory() -> int:
    """Bytes of RAM on this machine (a generous ceiling for one network at batch 1)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB"


def check_plan(plan: nn.ModuleList, net: NetConfig, max_bytes: int | None) -> list[tuple[int, int, int]]:
    """Checks a network built on the meta device: shapes at the [net] size (every map computed with
    Darknet's own size formulas, so any size whose maps exist and join), memory (float32 parameters +
    batch-1 activations), and for a detector a [net] size that is a multiple of its max stride (the
    heads place boxes at cell * stride)."""
    shapes = infer_shapes(list(plan), (net.channels, net.height, net.width))
    limit = physical_memory() if max_bytes is None else max_bytes
    total = 0
    for block, (c, h, w) in zip(plan, shapes):
        need = 4 * (c * h * w + sum(p.numel() for p in block.parameters()))
        if need > limit:
            raise ConfigError(f"{block.where}: needs {_gib(need)} (output {c}x{h}x{w} plus parameters, float32) "
                              f"at the [net] size {net.width}x{net.height}, more than the limit {_gib(limit)}")
        total += need
    if total > limit:
        raise ConfigError(f"{net.section.where() if net.section else '[net]'}: the network needs {_gib(total)} "
                          f"(parameters plus activations at {net.width}x{net.height}), "
                          f"more than the limit {_gib(limit)}")
    stride = int(max(b.out_stride for b in plan))
    heads = [b for b in plan if isinstance(b, Head)]
    if heads and stride >= 1 and (net.width % stride or net.height % stride):
        where = net.section.where("width") if net.section else "[net]"
        raise ConfigError(f"{where}: width={net.width}, height={net.height} must be multiples of the network's "
                          f"stride {stride} (its deepest map): its detection heads ({heads[0].where} ...) place "
                          "boxes at cell * stride")
    return shapes


def check_weight_units(block: Block) -> None:
    """Every conv and BatchNorm a block owns must be in its ``weight_units()``, once: a block that
    forgets one would otherwise read and write a silently wrong ``.weights`` file."""
    declared = [m for unit in block.weight_units() for m in unit if m is not None]
    owned = {id(m): name for name, m in block.named_modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))}
    missing = sorted(set(owned) - {id(m) for m in declared})
    twice = len(declared) - len({id(m) for m in declared})
    if missing or twice:
        what = (f"does not declare {', '.join(owned[i] for i in missing)} in weight_units()" if missing
                else f"declares {twice} unit(s) twice in weight_units()")
        raise RuntimeError(f"{block.where}: block [{block.section_type}] ({type(block).__name__}) {what}; "
                           "its .weights stream would be wrong")


class FrozenDarknet(nn.Module):
    """Eval-mode ``Darknet`` run through ``torch.jit.trace`` + ``torch.jit.freeze``.

    A trace fixes shapes (the [yolo] grids, the max-pool padding), so one frozen graph
    is kept per (shape, dtype, device) and built on first use.
    """

    def __init__(self, model: Darknet) -> None:
        super().__init__()
        self.model = model.eval()
        self._graphs: dict[tuple, torch.jit.ScriptModule] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype, x.device)
        graph = self._graphs.get(key)
        if graph is None:
            self.model.check_input(x)
            self.model.eval()
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                # shape-specialisation warnings are the point here (one graph per shape), and
                # torch.jit's deprecation notice is not the user's to act on
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                example = x.clone()  # a normal tensor even when called under inference_mode
                graph = torch.jit.freeze(torch.jit.trace(self.model, example, check_trace=False))
            self._graphs[key] = graph
        return graph(x)


__all__ = ["Darknet", "FrozenDarknet", "ConfigError", "Block"]
