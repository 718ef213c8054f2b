"""Network slimming (Liu et al. 2017): sparsity training on BatchNorm scales, then channel pruning.

    python -m yolo.prune --cfg C --weights W|ckpt.pt (--ratio R | --threshold T) [--min-keep K] \\
        --out-cfg C2 --out-weights W2

Every channel of every map is a node of a channel graph (``yolo.pruning.graph``); channels the
structure ties together (a [shortcut]'s summands, [route] pieces and groups, a depthwise conv and
its input, the chunks of [res2net]/[triangle], residuals ...; each block class says what it ties in
its ``prune_rule``, see ``yolo.pruning.rules``) form one group and get one decision: removed when
the largest |gamma| of its BatchNorms is under a global threshold. The convolutions feeding a [yolo]
keep every channel.
A removed channel still carries a constant (act(beta) when gamma = 0): it is folded into the bias
(or BN running_mean) of the convolutions that read it, so the outputs before fine-tuning stay
close (exact for 1x1 readers; a k x k reader differs at the zero-padded border only).

The result is an ordinary cfg (new ``filters=``, ``groups=`` of depthwise convs, ``planes`` /
``baseWidth`` / ``expansion`` of composite blocks) and a ``.weights`` file our loader (and, for
standard sections, Darknet and OpenCV) reads.

Sparsity training: ``train.py --sparsity S [--sparsity-decay F]`` adds ``S * sign(gamma)`` to the
gradient of the prunable BN scales (``SparsityPenalty``, run by the trainer callback ``SparsityTraining``).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .callbacks import Callback
from .cfg import ConfigError
from .deploy import edit_cfg_text
from .errors import YoloError
from .model import Darknet
from .params import default
from .pruning.graph import (
    ChannelGraph,
    Decision,
    constants,
    decide,
    fold_constants,
    group_table,
    keep_masks,
    slice_units,
)
from .pruning.rules import rule_for

DEPLOYED_MARK = "# Deployed by yolo.deploy"


class PruneError(YoloError):
    """A model or request that cannot be pruned (the message says why)."""


# ---------------------------------------------------------------------------------------------
# the channel graph of a model
# ---------------------------------------------------------------------------------------------
@dataclass
class Traced:
    graph: ChannelGraph
    named: list[dict[str, int]]  # per section: tensors its cfg edits count


def trace(model: Darknet) -> Traced:
    """The channel graph of ``model``'s blocks (no forward pass)."""
    g = ChannelGraph()
    x = g.input = g.tensor(model.net.channels, "input")
    g.fix(x)
    named = []
    for block in model.module_list:
        x, info = rule_for(block).trace(block, g, x, g.layer_out)
        g.layer_out.append(x)
        named.append(info)
    if not model.yolo_layers:
        g.fix(x)  # a backbone's output is its interface
    return Traced(g, named)


def check_prunable(model: Darknet) -> None:
    if model.fused:
        raise PruneError("this model is fused (BatchNorm folded into the convolutions): the BN scales that rank "
                         "channels are gone; prune the unfused model (before fuse())")
    if getattr(model, "deployed_sections", None) is not None or model.cfg_text.lstrip().startswith(DEPLOYED_MARK):
        raise PruneError("this model is deployed (ACNet branches fused, BatchNorm folded): its convolutions no "
                         "longer have the BN scales that rank channels; prune the training-time cfg + weights, "
                         "then deploy the pruned model")
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        raise PruneError("this model has no BatchNorm: nothing ranks its channels")


# ---------------------------------------------------------------------------------------------
# pruning
# ---------------------------------------------------------------------------------------------
@dataclass
class PruneResult:
    model: Darknet  # the pruned network, eval mode
    cfg_text: str
    decision: Decision
    notes: list[str] = field(default_factory=list)


def prune_model(model: Darknet, ratio: float | None = None, threshold: float | None = None,
                min_keep: int = 1, source: str = "") -> PruneResult:
    """A pruned copy of ``model`` (the model itself is not changed).

    ``ratio``: remove that share of the prunable BN-ranked channels (global threshold on |gamma|);
    ``threshold``: remove the groups whose largest |gamma| is under it. ``min_keep``: a convolution
    keeps at least this many output channels (the note says where that was needed).
    """
    if (ratio is None) == (threshold is None):
        raise PruneError("give exactly one of ratio and threshold")
    if ratio is not None and not 0 <= ratio < 1:
        raise PruneError(f"ratio must be in [0, 1), got {ratio}")
    if threshold is not None and threshold < 0:
        raise PruneError(f"threshold must be >= 0, got {threshold}")
    if min_keep < 1:
        raise PruneError(f"min-keep must be >= 1, got {min_keep}")
    check_prunable(model)
    work = copy.deepcopy(model).cpu().float().eval()
    traced = trace(work)
    g = traced.graph
    dec = decide(g, ratio=ratio, threshold=threshold, min_keep=min_keep)
    keep = keep_masks(g, dec)
    fold_constants(g, keep, constants(g, keep))

    edits = {}
    for block, section, named in zip(work.module_list, work.sections, traced.named):
        e = rule_for(block).edits(block, section, lambda name, named=named: int(keep[named[name]].sum()))
        if e:
            edits[section.line] = e
    how = f"ratio {ratio}" if ratio is not None else f"threshold {threshold}"
    header = (f"# Pruned by yolo.prune from {source or work.cfg_path.name} ({how}, |gamma| threshold "
              f"{dec.threshold:.4g}): {dec.removed_channels} of {dec.prunable_channels} prunable channels "
              f"removed, {len(edits)} section(s) changed.\n")
    text = header + edit_cfg_text(work.cfg_text, edits)
    new = model_from_text(text, work.cfg_path.name)
    copy_state(work, new, slice_units(g, keep))
    new.seen = work.seen
    return PruneResult(new.eval(), text, dec, list(dec.notes))


def model_from_text(text: str, name: str) -> Darknet:
    """The network of ``text``, its tensors allocated but not initialised (``copy_state`` fills them)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_text(text)
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            model = Darknet(path, warn_unused=False)
    return model.to_empty(device="cpu")


def copy_state(old: Darknet, new: Darknet, masks: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Every tensor of ``new``: the kept slice of the conv/BN units (``copy_sliced``), the rest (anchors,
    counters) as in ``old``."""
    units = {id(t) for b in new.module_list for u in b.weight_units() for m in u if m is not None
             for t in m.state_dict(keep_vars=True).values()}
    old_state = old.state_dict()
    with torch.no_grad():
        for name, t in new.state_dict(keep_vars=True).items():
            if id(t) not in units:
                t.copy_(old_state[name])
    copy_sliced(old, new, masks)


def copy_sliced(old: Darknet, new: Darknet, masks: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Each (conv, bn) unit of ``new`` gets the kept rows/columns of the matching unit of ``old``."""
    with torch.no_grad():
        for ob, nb in zip(old.module_list, new.module_list):
            ou, nu = list(ob.weight_units()), list(nb.weight_units())
            if len(ou) != len(nu):
                raise RuntimeError(f"{ob.where}: {len(ou)} weight units before pruning, {len(nu)} after")
            for (oc, obn), (nc, nbn) in zip(ou, nu):
                kin, kout = (m.nonzero().squeeze(1) for m in masks[id(oc)])
                w = oc.weight.index_select(0, kout)
                if oc.groups == 1:
                    w = w.index_select(1, kin)
                nc.weight.copy_(w)
                if oc.bias is not None:
                    nc.bias.copy_(oc.bias[kout])
                if obn is not None:
                    for name in ("weight", "bias", "running_mean", "running_var"):
                        getattr(nbn, name).copy_(getattr(obn, name)[kout])
                    nbn.num_batches_tracked.copy_(obn.num_batches_tracked)


# ---------------------------------------------------------------------------------------------
# the report: parameters, BFLOPs, weights size, forward time, per layer and total
# ---------------------------------------------------------------------------------------------
def forward_ms(model: Darknet, size: tuple[int, int], runs: int = 3) -> float:
    """Median forward time (ms) of one image at ``size`` = (width, height) of a fused copy of
    ``model`` (BatchNorm folded: what inference runs); 0 runs -> nan."""
    if runs < 1:
        return float("nan")
    model = copy.deepcopy(model).fuse()
    x = torch.rand(1, model.net.channels, size[1], size[0])
    times = []
    with torch.inference_mode():
        model(x)
        for _ in range(runs):
            t0 = time.perf_counter()
            model(x)
            times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def compare(before: Darknet, after: Darknet, size: tuple[int, int] | int | None = None,
            runs: int = 3) -> dict[str, Any]:
    """Per layer (params, BFLOPs) and totals (params, BFLOPs, .weights bytes, forward ms) of the two
    models: a dict with ``layers`` (list of rows) and ``total`` ({name: (before, after)})."""
    from .info import layer_table, total_bflops, weights_file_bytes

    if size is None:
        size = (before.net.width, before.net.height)
    elif isinstance(size, int):
        size = (size, size)
    ra, rb = layer_table(before, size), layer_table(after, size)
    layers = [{"index": a.index, "type": a.type, "filters": (a.output[2], b.output[2]), "params": (a.params, b.params),
               "bflops": (a.bflops, b.bflops)} for a, b in zip(ra, rb)]
    total = {
        "params": (sum(p.numel() for p in before.parameters()), sum(p.numel() for p in after.parameters())),
        "bflops": (total_bflops(ra), total_bflops(rb)),
        "weights_bytes": (weights_file_bytes(before), weights_file_bytes(after)),
        "forward_ms": (forward_ms(before, size, runs), forward_ms(after, size, runs)),
    }
    return {"size": size, "layers": layers, "total": total}


def format_comparison(c: dict[str, Any]) -> str:
    lines = ["layer  type        channels      params before -> after      BFLOPs before -> after"]
    for r in c["layers"]:
        (fa, fb), (pa, pb), (ba, bb) = r["filters"], r["params"], r["bflops"]
        mark = "" if fa == fb and pa == pb else "  *"
        lines.append(f"{r['index']:5d}  {r['type']:<10s} {fa:5d} -> {fb:<5d} {pa:12,d} -> {pb:<12,d} "
                     f"{ba:8.3f} -> {bb:<8.3f}{mark}")
    lines.append(f"total at {c['size'][0]}x{c['size'][1]}:")
    for key, unit in (("params", ""), ("bflops", " BFLOPs"), ("weights_bytes", " bytes"), ("forward_ms", " ms")):
        a, b = c["total"][key]
        fmt = (lambda v: f"{v:,.0f}") if key in ("params", "weights_bytes") else (lambda v: f"{v:.3f}")
        change = f"({100 * (b - a) / a:+.1f}%)" if a == a and a else ""
        lines.append(f"  {key:<14s} {fmt(a)} -> {fmt(b)}{unit} {change}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# sparsity training
# ---------------------------------------------------------------------------------------------
class SparsityPenalty:
    """L1 on the BN scales of the prunable convolutions: ``__call__(s)`` adds ``s * sign(gamma)``
    to their gradients (call after backward, before the optimiser step; unscale AMP grads first).
    Channels that can never be pruned (fixed, e.g. before a [yolo]) are not penalised."""

    def __init__(self, model: Darknet) -> None:
        g = trace(model).graph
        scores, _ = group_table(g)
        self.params: list[tuple[nn.Parameter, torch.Tensor]] = []
        for op in g.ops:
            if not hasattr(op, "unit"):
                continue
            mask = torch.tensor([g.find(n) in scores for n in g.nodes(op.dst)], dtype=torch.bool)
            if not mask.any():
                continue
            for _, bn in op.unit.weight_units():
                if bn is not None:
                    self.params.append((bn.weight, mask.to(bn.weight.device)))

    def __call__(self, s: float) -> None:
        if s == 0:
            return
        with torch.no_grad():
            for p, mask in self.params:
                if p.grad is not None:
                    p.grad.add_(torch.sign(p.detach()) * mask * s)

    def scales(self) -> torch.Tensor:
        """|gamma| of every penalised channel (for the histogram)."""
        if not self.params:
            return torch.zeros(0)
        return torch.cat([p.detach().abs()[m].float().cpu() for p, m in self.params])


def sparsity_at(s: float, decay: float, progress: float) -> float:
    """The penalty at ``progress`` (0..1) of the run: linear from ``s`` to ``s * decay``."""
    return s * (1.0 - (1.0 - decay) * min(max(progress, 0.0), 1.0))


class SparsityTraining(Callback):
    """The trainer's sparsity regulariser (``train.py --sparsity S --sparsity-decay F``): before each
    optimiser step, ``SparsityPenalty`` at ``sparsity_at`` the run's progress; rank 0 draws the
    histogram of the penalised |gamma| after every epoch (bn_scales.png)."""

    def __init__(self, s: float, decay: float = default("sparsity_decay")) -> None:
        self.s, self.decay = s, decay
        self.penalty: SparsityPenalty | None = None
        self.history: list[Any] = []

    def on_train_start(self, trainer: Any) -> None:
        self.penalty = SparsityPenalty(trainer.model)

    def on_before_step(self, trainer: Any) -> None:
        assert self.penalty is not None, "on_train_start builds the penalty"
        trainer.unscale_gradients()
        self.penalty(sparsity_at(self.s, self.decay, trainer.state.step / trainer.plan.total_steps))

    def on_epoch_end(self, trainer: Any) -> None:
        from .plots import plot_bn_scales

        if not trainer.main or self.penalty is None:
            return
        self.history.append(self.penalty.scales().numpy())
        plot_bn_scales(self.history, trainer.out / "bn_scales.png",
                       first_epoch=trainer.state.epoch + 2 - len(self.history))


# ---------------------------------------------------------------------------------------------
# files and command line
# ---------------------------------------------------------------------------------------------
def load_for_pruning(cfg: str | Path, weights: str | Path | None) -> Darknet:
    """The model of ``cfg`` with ``weights`` (.weights or a .pt checkpoint of this very cfg)."""
    from .checkpoint import check_same_cfg, load_checkpoint

    model = Darknet(cfg)
    check_prunable(model)
    if weights is None:
        return model.eval()
    if str(weights).endswith(".pt"):
        state = load_checkpoint(weights)
        check_same_cfg(state, model.cfg_text, weights, model.cfg_path.name)
        sd = state.get("ema") if state.get("ema") is not None else state["model"]
        bn_keys = [k for k in model.state_dict() if k.endswith("running_var")]
        if bn_keys and not any(k.endswith("running_var") for k in sd):
            raise PruneError(f"{weights}: a fused model (no BatchNorm statistics): prune the unfused checkpoint")
        try:
            model.load_state_dict(sd)
        except RuntimeError as e:
            raise PruneError(f"{weights}: does not fit {model.cfg_path.name} (a checkpoint of another cfg?): "
                             f"{str(e).splitlines()[0]}") from None
    else:
        model.load_darknet_weights(weights)
    return model.eval()


def prune_files(cfg: str | Path, weights: str | Path | None, out_cfg: str | Path, out_weights: str | Path,
                ratio: float | None = None, threshold: float | None = None, min_keep: int = 1,
                size: int | None = None, runs: int = 3) -> tuple[PruneResult, dict[str, Any]]:
    """Prune, write cfg + weights, read them back strictly; returns the result and the comparison."""
    model = load_for_pruning(cfg, weights)
    result = prune_model(model, ratio, threshold, min_keep, source=Path(cfg).name)
    out_cfg, out_weights = Path(out_cfg), Path(out_weights)
    out_cfg.write_text(result.cfg_text)
    result.model.save_darknet_weights(out_weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = Darknet(out_cfg, warn_unused=False).load_darknet_weights(out_weights)  # strict read-back
    return result, compare(model, back, size, runs)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m yolo.prune",
        description="Channel pruning by BatchNorm scales (network slimming): writes a smaller cfg + weights.")
    p.add_argument("--cfg", required=True, help="model cfg (path or name in cfg/)")
    p.add_argument("--weights", help="Darknet .weights or a .pt checkpoint of this cfg (omit: random init, tests)")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--ratio", type=float, help="share of the prunable channels to remove (global threshold)")
    how.add_argument("--threshold", type=float, help="remove channel groups whose largest |gamma| is below this")
    p.add_argument("--min-keep", type=int, default=1, help="channels every convolution keeps at least (default 1)")
    p.add_argument("--out-cfg", required=True, help="pruned cfg to write")
    p.add_argument("--out-weights", required=True, help="pruned .weights to write")
    p.add_argument("--img-size", type=int, help="size for BFLOPs and timing (default: [net] width x height)")
    p.add_argument("--time-runs", type=int, default=3, help="forward passes timed per model (0: skip)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .weights import WeightsError

    args = get_args_parser().parse_args(argv)
    try:
        result, comparison = prune_files(args.cfg, args.weights, args.out_cfg, args.out_weights, args.ratio,
                                         args.threshold, args.min_keep, args.img_size, args.time_runs)
    except (PruneError, ConfigError, CheckpointError, WeightsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for note in result.notes:
        print(f"note: {note}")
    d = result.decision
    print(f"|gamma| threshold {d.threshold:.4g}: removed {d.removed_channels} of {d.prunable_channels} prunable "
          f"channels")
    print(format_comparison(comparison))
    print(f"wrote {args.out_cfg} and {args.out_weights}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
