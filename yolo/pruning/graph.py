"""The channel graph of a network: every channel of every tensor is a node, and nodes whose
keep-or-remove decision must be the same are united (union-find). A decision is taken once per
group.

Tensors are the block outputs and the maps inside composite blocks. Ops say how channels flow:

* ``ConvOp``: a conv (+BN +activation) unit, ``src -> dst``. Its BN scales rank ``dst``'s channels;
  a depthwise conv ties channel c of ``src`` to channel c of ``dst``; any other grouped conv, and a
  conv without BN, fixes its channels (they are always kept).
* ``MapOp`` ``cat``: ``dst`` is the concatenation of channel slices of its sources (channel ties).
* ``MapOp`` ``ew``: ``dst[c] = fn(src_0[c], src_1[c], ...)`` channel-wise (sums, gates, pools,
  upsampling): channel c of every source is tied to channel c of ``dst``.

``Constraint``: counts of kept channels along some axes that a section needs to be representable
in its cfg keys (``planes`` even, a ``baseWidth`` that hits the width ...), repaired by keeping
back the best-ranked removed groups.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from torch import nn

Fn = Callable[[list[torch.Tensor]], torch.Tensor]


@dataclass
class ConvOp:
    unit: nn.Module  # ConvBN or ACUnit (their weight_units() give the (conv, bn) pairs)
    src: int
    dst: int


@dataclass
class MapOp:
    kind: str  # "cat" | "ew"
    srcs: list[tuple[int, int, int]]  # (tensor, first channel, end channel)
    dst: int
    fn: Optional[Fn] = None  # ew: the channel-wise function of the sources' constant values


@dataclass
class Constraint:
    axes: list[list[int]]  # node lists (counted by distinct group)
    ok: Callable[..., bool]  # ok(*kept counts)
    what: str


def conv_units(unit: nn.Module) -> list[tuple[nn.Conv2d, Optional[nn.BatchNorm2d]]]:
    return list(unit.weight_units())


def unit_kind(unit: nn.Module, c_in: int) -> str:
    """'dense' (groups=1), 'depthwise' (groups = in = out) or 'fixed' (any other grouping)."""
    conv = conv_units(unit)[0][0]
    if conv.groups == 1:
        return "dense"
    if conv.groups == c_in == conv.out_channels:
        return "depthwise"
    return "fixed"


class ChannelGraph:
    """Tensors, ops, union-find over (tensor, channel) nodes, fixed nodes, per-node scores."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.offsets: list[int] = []
        self.names: list[str] = []
        self.parent: list[int] = []
        self.fixed: list[bool] = []
        self.score: list[float] = []  # |gamma| of a BN-ranked node, -1 where none
        self.ops: list[ConvOp | MapOp] = []
        self.constraints: list[Constraint] = []
        self.layer_out: list[int] = []  # tensor of each block's output
        self.input = -1

    # --- building --------------------------------------------------------------------------
    def tensor(self, channels: int, name: str) -> int:
        tid = len(self.sizes)
        self.offsets.append(len(self.parent))
        self.sizes.append(channels)
        self.names.append(name)
        n = len(self.parent)
        self.parent.extend(range(n, n + channels))
        self.fixed.extend([False] * channels)
        self.score.extend([-1.0] * channels)
        return tid

    def node(self, tid: int, c: int) -> int:
        return self.offsets[tid] + c

    def nodes(self, tid: int, a: int = 0, b: int | None = None) -> list[int]:
        b = self.sizes[tid] if b is None else b
        return [self.offsets[tid] + c for c in range(a, b)]

    def find(self, n: int) -> int:
        p = self.parent
        while p[n] != n:
            p[n] = p[p[n]]
            n = p[n]
        return n

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def tie(self, a: Sequence[int], b: Sequence[int]) -> None:
        """Tie node lists element-wise (same length)."""
        assert len(a) == len(b), (len(a), len(b))
        for x, y in zip(a, b):
            self.union(x, y)

    def fix(self, tid: int) -> None:
        for n in self.nodes(tid):
            self.fixed[n] = True

    def conv(self, unit: nn.Module, src: int, dst: int) -> int:
        units = conv_units(unit)
        kind = unit_kind(unit, self.sizes[src])
        if kind == "depthwise":
            self.tie(self.nodes(src), self.nodes(dst))
        elif kind == "fixed":
            self.fix(src)
            self.fix(dst)
        bns = [bn for _, bn in units]
        if any(bn is None for bn in bns):
            self.fix(dst)
        else:  # ACNet: three BNs summed; the channel's strength is the largest of its scales
            g = torch.stack([bn.weight.detach().abs().float().cpu() for bn in bns]).amax(0)
            for c, n in enumerate(self.nodes(dst)):
                self.score[n] = float(g[c])
        self.ops.append(ConvOp(unit, src, dst))
        return dst

    def cat(self, srcs: list[tuple[int, int, int]], name: str) -> int:
        dst = self.tensor(sum(b - a for _, a, b in srcs), name)
        pos = 0
        for t, a, b in srcs:
            self.tie(self.nodes(t, a, b), self.nodes(dst, pos, pos + b - a))
            pos += b - a
        self.ops.append(MapOp("cat", srcs, dst))
        return dst

    def ew(self, srcs: list[int], channels: int, fn: Fn, name: str) -> int:
        dst = self.tensor(channels, name)
        for t in srcs:
            n = min(self.sizes[t], channels)
            self.tie(self.nodes(t, 0, n), self.nodes(dst, 0, n))
        self.ops.append(MapOp("ew", [(t, 0, self.sizes[t]) for t in srcs], dst, fn))
        return dst

    def constrain(self, axes: list[list[int]], ok: Callable[..., bool], what: str) -> None:
        self.constraints.append(Constraint(axes, ok, what))

    # --- groups ----------------------------------------------------------------------------
    def groups(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for n in range(len(self.parent)):
            out.setdefault(self.find(n), []).append(n)
        return out

    def distinct(self, nodes: Sequence[int]) -> list[int]:
        """The nodes of ``nodes`` in distinct groups (first of each)."""
        seen, out = set(), []
        for n in nodes:
            r = self.find(n)
            if r not in seen:
                seen.add(r)
                out.append(n)
        return out


@dataclass
class Decision:
    """The outcome: which groups are removed, the threshold used, and what was kept back."""

    removed: set[int]  # group roots
    threshold: float
    notes: list[str] = field(default_factory=list)
    prunable_channels: int = 0  # BN-ranked channels in prunable groups
    removed_channels: int = 0


def group_table(g: ChannelGraph) -> tuple[dict[int, float], dict[int, int]]:
    """Prunable groups -> (score = max |gamma| of its members, number of BN-ranked members)."""
    scores: dict[int, float] = {}
    ranked: dict[int, int] = {}
    blocked: set[int] = set()
    for n in range(len(g.parent)):
        r = g.find(n)
        if g.fixed[n]:
            blocked.add(r)
        if g.score[n] >= 0:
            scores[r] = max(scores.get(r, 0.0), g.score[n])
            ranked[r] = ranked.get(r, 0) + 1
    for r in blocked:
        scores.pop(r, None)
        ranked.pop(r, None)
    return scores, ranked


def decide(g: ChannelGraph, ratio: float | None = None, threshold: float | None = None,
           min_keep: int = 1, names: Sequence[str] = ()) -> Decision:
    """Remove the groups whose score is below a global threshold (given, or the one that removes
    ``ratio`` of the BN-ranked channels), then keep back what the constraints need."""
    scores, ranked = group_table(g)
    order = sorted(scores, key=lambda r: scores[r])
    total = sum(ranked.values())
    if threshold is None:
        assert ratio is not None
        removed = set(order[:_rank_cut(order, ranked, ratio * total)])  # by rank: ties split too
        threshold = scores[order[len(removed)]] if len(removed) < len(order) else float("inf")
    else:
        removed = {r for r in order if scores[r] < threshold}
    dec = Decision(removed, threshold, prunable_channels=total)
    _repair(g, dec, scores, min_keep)
    dec.removed_channels = sum(ranked[r] for r in dec.removed)
    return dec


def _rank_cut(order: list[int], ranked: dict[int, int], target: float) -> int:
    """How many of the weakest groups to remove so that their BN-ranked channels come nearest ``target``."""
    acc = 0
    for k, r in enumerate(order):
        if acc + ranked[r] / 2 > target:
            return k
        acc += ranked[r]
    return len(order)


def _kept(g: ChannelGraph, dec: Decision, axis: list[int]) -> int:
    return sum(1 for n in axis if g.find(n) not in dec.removed)


def _keep_back(g: ChannelGraph, dec: Decision, axis: list[int], k: int, scores: dict[int, float]) -> None:
    gone = sorted((g.find(n) for n in axis if g.find(n) in dec.removed), key=lambda r: -scores[r])
    for r in gone[:k]:
        dec.removed.discard(r)


def _search(ok: Callable[..., bool], counts: list[int], caps: list[int]) -> list[int] | None:
    """The fewest channels to add (per axis) so that ``ok`` holds; None if nothing within caps does."""
    room = sum(c - n for c, n in zip(caps, counts))
    for t in range(room + 1):
        for add in _compositions(t, len(counts)):
            new = [n + a for n, a in zip(counts, add)]
            if all(v <= c for v, c in zip(new, caps)) and ok(*new):
                return list(add)
    return None


def _compositions(t: int, k: int):
    if k == 1:
        yield (t,)
        return
    for i in range(t + 1):
        for rest in _compositions(t - i, k - 1):
            yield (i, *rest)


def _repair(g: ChannelGraph, dec: Decision, scores: dict[int, float], min_keep: int) -> None:
    """Keep back channels until every conv keeps ``min_keep`` and every constraint holds.
    Only ever keeps more, so it ends (keeping everything satisfies all)."""
    conv_axes = []
    for op in g.ops:
        if isinstance(op, ConvOp):
            conv_axes.append((op, g.distinct(g.nodes(op.dst))))
    told: set[str] = set()
    changed = True
    while changed:
        changed = False
        for op, axis in conv_axes:
            need = min(min_keep, len(axis))
            have = _kept(g, dec, axis)
            if have < need:
                _keep_back(g, dec, axis, need - have, scores)
                changed = True
                where = g.names[op.dst]
                if where not in told:
                    told.add(where)
                    dec.notes.append(f"{where}: the threshold would leave {have} of {len(axis)} channels; "
                                     f"kept the {need} strongest (--min-keep {min_keep})")
        for con in g.constraints:
            axes = [g.distinct(a) for a in con.axes]
            counts = [_kept(g, dec, a) for a in axes]
            if con.ok(*counts):
                continue
            add = _search(con.ok, counts, [len(a) for a in axes])
            if add is None:
                raise RuntimeError(f"{con.what}: no channel counts satisfy this section")
            for axis, k in zip(axes, add):
                if k:
                    _keep_back(g, dec, axis, k, scores)
            changed = True


def keep_masks(g: ChannelGraph, dec: Decision) -> list[torch.Tensor]:
    """A bool keep mask per tensor."""
    out = []
    for t, size in enumerate(g.sizes):
        out.append(torch.tensor([g.find(n) not in dec.removed for n in g.nodes(t)], dtype=torch.bool))
    return out


def constants(g: ChannelGraph, keep: list[torch.Tensor]) -> list[torch.Tensor]:
    """The constant value each removed channel carries (its BN shift through the activation, taken
    on through sums, pools, concatenations); 0 for kept channels."""
    const = [torch.zeros(s, dtype=torch.float64) for s in g.sizes]
    for op in g.ops:
        gone = ~keep[op.dst]
        if not gone.any():
            continue
        if isinstance(op, ConvOp):
            beta = sum(bn.bias.detach().double().cpu() for _, bn in conv_units(op.unit))
            act = getattr(op.unit, "act", nn.Identity())
            value = act(beta.clone().view(1, -1, 1, 1)).view(-1)
        elif op.kind == "cat":
            value = torch.cat([const[t][a:b] for t, a, b in op.srcs])
        else:
            value = op.fn([const[t].clone() for t, _, _ in op.srcs]).double()
        const[op.dst] = torch.where(gone, value, torch.zeros_like(value))
    return const


def fold_constants(g: ChannelGraph, keep: list[torch.Tensor], const: list[torch.Tensor]) -> None:
    """In place: the constant of a removed input channel of a dense conv goes into that conv's bias
    (or its BN's running_mean). Exact away from zero padding (1x1 convs: exact)."""
    with torch.no_grad():
        for op in g.ops:
            if not isinstance(op, ConvOp):
                continue
            gone = ~keep[op.src]
            v = const[op.src][gone]
            if not gone.any() or not v.any():
                continue
            if unit_kind(op.unit, g.sizes[op.src]) != "dense":
                continue  # depthwise: the channel goes with its input
            for conv, bn in conv_units(op.unit):
                w = conv.weight.detach().sum((2, 3))[:, gone].double()
                delta = (w @ v.to(w.device)).to(conv.weight.dtype)
                if bn is not None:
                    bn.running_mean.sub_(delta.to(bn.running_mean.device))
                else:
                    conv.bias.add_(delta.to(conv.bias.device))


def slice_units(g: ChannelGraph, keep: list[torch.Tensor]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """id(conv) -> (input keep mask, output keep mask) for every conv of every ConvOp."""
    out = {}
    for op in g.ops:
        if isinstance(op, ConvOp):
            for conv, _ in conv_units(op.unit):
                out[id(conv)] = (keep[op.src], keep[op.dst])
    return out


__all__ = ["ChannelGraph", "ConvOp", "MapOp", "Constraint", "Decision", "decide", "keep_masks", "constants",
           "fold_constants", "slice_units", "group_table"]
