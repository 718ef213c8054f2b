"""[region]: the YOLOv2 detection head (Darknet's REGION layer), its settings, decode and loss.

Layout: the convolution before it has ``num * (coords + 1 + classes)`` filters, anchor-major
(filter ``a * (coords + 1 + classes) + k``), as [yolo]'s. Darknet's CPU forward flattens that map to
[row][col][anchor][entry], applies the logistic to the objectness and a softmax (or, with ``tree=``,
YOLO9000's softmax per sibling group) to the classes and leaves x, y, w, h raw;
``custom_get_region_detections`` then decodes, for cell (row, col) of an H x W grid::

    x = (col + logistic(t_x)) / W       w = exp(t_w) * anchor_w / W     (anchors in grid cells)
    prob[c] = logistic(t_o) * class[c]  (kept where > thresh)

Our eval contract (cx, cy, w, h in input pixels, objectness, class probabilities, scored as
objectness x probability by :func:`yolo.darknet_map.darknet_nms`) holds exactly that. With a
``tree=``, each class is multiplied by its ancestors' probabilities (``hierarchy_predictions``)
and ``map=`` picks the columns reported (YOLO9000: the 80 COCO classes among 9418 nodes).

The loss follows ``forward_region_layer``'s deltas (Darknet applies each delta straight to the raw
output, so each term below is the loss whose gradient is that delta): every prediction's
objectness is pulled to 0 (``noobject_scale``) unless its box overlaps a target by more than
``thresh``; each target goes to the cell holding its centre and, there, to the anchor whose shape
(``bias_match=1``: the anchor's, else the predicted box's) best overlaps it: x, y, w, h regress to
the target (``coord_scale``), its objectness to 1 or, ``rescore=1``, to the IoU
(``object_scale``), its classes by softmax cross-entropy (``class_scale``). Not modelled: the
"first 12800 images" pull of every box towards its anchor (the loss does not know how many images
were seen), ``classfix``, ``focal_loss``, and training with a ``tree=`` (refused).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..boxes import box_convert, box_iou
from ..cfg import REPO_ROOT, ConfigError, Section
from ..layer_table import ConvFigures, LayerRow, Shape
from ..registry import BuildContext, register
from .base import Head, HeadLoss


@dataclass
class RegionSettings:
    """The [region] keys besides anchors/classes/num/coords, with Darknet's defaults (``parse_region``)."""

    softmax: bool = False
    jitter: float = 0.2
    rescore: bool = False
    thresh: float = 0.5
    classfix: int = 0
    absolute: bool = False
    random: bool = False
    bias_match: bool = False
    coord_scale: float = 1.0
    object_scale: float = 1.0
    noobject_scale: float = 1.0
    class_scale: float = 1.0
    max_boxes: int = 90
    resize: float = 1.0
    mask_scale: float = 1.0

    @classmethod
    def from_section(cls, s: Section) -> "RegionSettings":
        d = cls()
        return cls(
            softmax=s.bool("softmax", d.softmax), jitter=s.float("jitter", d.jitter),
            rescore=s.bool("rescore", d.rescore), thresh=s.float("thresh", d.thresh),
            classfix=s.int("classfix", d.classfix), absolute=s.bool("absolute", d.absolute),
            random=s.float("random", float(d.random)) != 0, bias_match=s.bool("bias_match", d.bias_match),
            coord_scale=s.float("coord_scale", d.coord_scale), object_scale=s.float("object_scale", d.object_scale),
            noobject_scale=s.float("noobject_scale", d.noobject_scale),
            class_scale=s.float("class_scale", d.class_scale), max_boxes=s.int("max_boxes", d.max_boxes),
            resize=s.float("resize", d.resize), mask_scale=s.float("mask_scale", d.mask_scale))


def find_data_file(section: Section, key: str) -> Path:
    """A ``tree=`` / ``map=`` file: as written, relative to the cfg, its folder's parent, then
    ``zoo/data/`` of the shared Darknet cfg folder (Darknet itself opens it relative to its cwd)."""
    value = section.str(key)
    cfg_dir = Path(section.file).resolve().parent
    candidates = [Path(value), cfg_dir / value, cfg_dir.parent / value, cfg_dir / Path(value).name,
                  cfg_dir / "data" / Path(value).name]
    candidates.append(REPO_ROOT.parent / "shared" / "models" / "darknet-cfg" / "zoo" / "data" / Path(value).name)
    for path in candidates:
        if path.is_file():
            return path
    raise section.error(f"file '{value}' not found (looked relative to the cfg and in the shared "
                        f"zoo/data/)", key)


def read_data_text(section: Section, key: str, path: Path) -> str:
    """The text of a file a section names; a file holding NUL bytes (damaged: a download cut short or
    overwritten with zeros) is refused in one line with the line and byte offset of the first."""
    data = path.read_bytes()
    at = data.find(b"\0")
    if at >= 0:
        lineno, nuls = data.count(b"\n", 0, at) + 1, data.count(b"\0")
        raise ConfigError(f"{path}:{lineno}: damaged file: {nuls} NUL bytes, the first at byte offset "
                          f"{at} (named by {section.where(key)}); get a clean copy")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text file (undecodable byte at offset {e.start}; named by "
                          f"{section.where(key)})") from None


def read_tree(section: Section, classes: int) -> tuple[list[int], list[tuple[int, int]]]:
    """Darknet's ``read_tree``: one ``name parent`` line per node; consecutive nodes with the same
    parent form a softmax group. Returns (parent per node, (offset, size) per group)."""
    path = find_data_file(section, "tree")
    parents: list[int] = []
    groups: list[tuple[int, int]] = []
    last = None
    for lineno, line in enumerate(read_data_text(section, "tree", path).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            parent = int(parts[1])
        except (IndexError, ValueError):
            raise ConfigError(f"{path}:{lineno}: expected 'name parent_index', got {line.strip()[:40]!r}") from None
        if parent != last or not groups:
            groups.append((len(parents), 0))
            last = parent
        groups[-1] = (groups[-1][0], groups[-1][1] + 1)
        parents.append(parent)
    if len(parents) != classes:
        raise section.error(f"tree file {path} has {len(parents)} nodes but classes={classes} "
                            "(the file may be cut short)", "tree")
    bad = [p for p in parents if p >= len(parents)]
    if bad:
        raise section.error(f"tree file {path}: parent index {bad[0]} is outside its {len(parents)} nodes", "tree")
    return parents, groups


def read_map(section: Section, classes: int) -> list[int]:
    path = find_data_file(section, "map")
    out = []
    for lineno, line in enumerate(read_data_text(section, "map", path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = int(line.strip())
        except ValueError:
            raise ConfigError(f"{path}:{lineno}: expected a class index, got {line.strip()[:40]!r}") from None
        if not 0 <= value < classes:
            raise ConfigError(f"{path}:{lineno}: class index {value} is outside classes=0..{classes - 1}")
        out.append(value)
    return out


@register("region")
class RegionLayer(Head):
    """YOLOv2's head: raw (b, num, ny, nx, coords+1+classes) in training, the eval contract in eval."""

    def __init__(self, anchors: torch.Tensor, classes: int, stride: float, channels: int,
                 settings: RegionSettings) -> None:
        super().__init__(channels, stride)
        self.register_buffer("anchors", anchors)  # (num, 2) in grid cells, as the cfg writes them
        self.classes = classes  # the section's classes (tree nodes for YOLO9000)
        self.num_classes = classes  # the eval contract's class columns (len(map) with a map)
        self.coords = 4
        self.settings = settings
        self.tree_parents: list[int] | None = None
        self.tree_groups: list[tuple[int, int]] = []
        self.class_map: list[int] | None = None
        self._grids: dict[tuple, torch.Tensor] = {}

    @property
    def num_anchors(self) -> int:
        return self.anchors.shape[0]

    @property
    def num_attrib(self) -> int:
        return self.coords + 1 + self.classes

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "RegionLayer":
        classes = s.int("classes", 20)
        coords = s.int("coords", 4)
        if coords != 4:
            raise s.error(f"coords={coords} (mask outputs) is not supported; only coords=4", "coords")
        num = s.int("num", 1)
        flat = s.floats("anchors", [0.5] * (2 * num))  # Darknet's biases start at .5
        if len(flat) != 2 * num:
            raise s.error(f"num={num} needs {2 * num} anchor numbers (w,h pairs); got {len(flat)}", "anchors")
        if s.bool("background", False):
            raise s.error("'background=1' is not supported by this implementation", "background")
        s.unsupported("log", "0")
        s.unsupported("sqrt", "0")
        if s.int("focal_loss", 0):  # training only
            raise s.error("'focal_loss=1' is not supported by this implementation", "focal_loss")
        expected = num * (coords + 1 + classes)
        if ctx.c_in != expected:
            raise s.error(f"the layer before has {ctx.c_in} filters, but num={num} and classes={classes} "
                          f"need {num} * ({coords} + 1 + {classes}) = {expected}")
        anchors = torch.tensor(flat, dtype=torch.float32).view(num, 2)
        layer = cls(anchors, classes, ctx.stride_in, ctx.c_in, RegionSettings.from_section(s))
        if "tree" in s:
            layer.tree_parents, layer.tree_groups = read_tree(s, classes)
            if "map" not in s:
                raise s.error("tree= without map= (Darknet's hierarchy_top_prediction: one class per box "
                              "by walking the tree) is not supported; give map=", "tree")
        if "map" in s:
            if layer.tree_parents is None:
                raise s.error("map= without tree= is not supported (Darknet uses it with a tree)", "map")
            layer.class_map = read_map(s, classes)
            layer.num_classes = len(layer.class_map)
        return layer

    def _grid(self, ny: int, nx: int, like: torch.Tensor) -> torch.Tensor:
        key = (ny, nx, like.device, like.dtype)
        grid = self._grids.get(key)
        if grid is None:
            ys, xs = torch.meshgrid(torch.arange(ny, device=like.device, dtype=like.dtype),
                                    torch.arange(nx, device=like.device, dtype=like.dtype), indexing="ij")
            grid = torch.stack((xs, ys), -1).view(1, 1, ny, nx, 2)
            self._grids[key] = grid
        return grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        b, _, ny, nx = x.shape
        p = x.view(b, self.num_anchors, self.num_attrib, ny, nx).permute(0, 1, 3, 4, 2)
        if self.training:
            return p.contiguous()
        return self.decode(p).reshape(b, -1, 5 + self.num_classes)

    def activate(self, p: torch.Tensor) -> torch.Tensor:
        """Raw (..., 5 + classes) -> what Darknet's forward leaves in ``l.output`` for each box:
        x, y, w, h raw, logistic objectness, softmax (per tree group) classes."""
        cls = p[..., 5:]
        if self.tree_parents is not None:
            cls = torch.cat([torch.softmax(cls[..., o:o + n], -1) for o, n in self.tree_groups], -1)
        elif self.settings.softmax:
            cls = torch.softmax(cls, -1)
        return torch.cat((p[..., :4], torch.sigmoid(p[..., 4:5]), cls), -1)

    def _hierarchy(self, cls: torch.Tensor) -> torch.Tensor:
        """``hierarchy_predictions``: each node times its ancestors (parents precede children)."""
        cols = list(cls.unbind(-1))
        for j, parent in enumerate(self.tree_parents):
            if parent >= 0:
                cols[j] = cols[j] * cols[parent]
        return torch.stack([cols[m] for m in self.class_map], -1)

    def decode(self, p: torch.Tensor) -> torch.Tensor:
        """Raw (b, num, ny, nx, 5 + classes) -> cx, cy, w, h (input pixels), objectness, class probs."""
        ny, nx = p.shape[2:4]
        a = self.activate(p)
        grid = self._grid(ny, nx, p)
        anchors = self.anchors.to(p.dtype).view(1, -1, 1, 1, 2)
        xy = (torch.sigmoid(a[..., :2]) + grid) * self.out_stride
        wh = torch.exp(a[..., 2:4]) * anchors * self.out_stride
        obj = a[..., 4:5]
        if self.settings.classfix == -1:
            obj = obj * (obj >= 0.5)
        cls = a[..., 5:] if self.tree_parents is None else self._hierarchy(a[..., 5:])
        return torch.cat((xy, wh, obj, cls), -1)

    def darknet_output(self, x: torch.Tensor) -> torch.Tensor:
        """Darknet's ``l.output`` for a (1, C, H, W) input: (H, W, num, coords + 1 + classes)."""
        b, _, ny, nx = x.shape
        p = x.view(b, self.num_anchors, self.num_attrib, ny, nx).permute(0, 1, 3, 4, 2)
        return self.activate(p)[0].permute(1, 2, 0, 3)

    def extra_repr(self) -> str:
        return f"classes={self.classes}, anchors={self.anchors.tolist()}, stride={self.out_stride}"

    # --- what the code above the model asks a head -----------------------------------------------
    def info_row(self, index: int, section: Section, inp: Shape | None, out: Shape,
                 convs: ConvFigures) -> LayerRow:
        """Darknet prints a REGION layer as "detection"."""
        return LayerRow(index, "detection", "", "", inp, out, 0.0)

    @classmethod
    def make_loss(cls, heads: Sequence["RegionLayer"]) -> HeadLoss:
        return RegionLoss(heads)

    def nms_settings(self) -> dict[str, Any]:
        return {}

    @property
    def jitter(self) -> float:
        return self.settings.jitter

    @property
    def multiscale(self) -> bool:
        return self.settings.random

    def training_problem(self) -> str | None:
        if self.tree_parents is not None:
            return "[region] with tree= (YOLO9000's hierarchical classes) has no training loss here"
        if not self.settings.softmax:
            return "[region] with softmax=0 has no training loss here (only softmax=1)"
        return None

    @torch.no_grad()
    def init_bias(self, bias: torch.Tensor, input_hw: tuple[int, int], num_heads: int,
                  objects_per_image: float) -> None:
        """Objectness ~ ``objects_per_image`` over every cell and anchor; classes equal (softmax)."""
        if bias.numel() != self.num_anchors * self.num_attrib:
            return
        cells = (input_hw[1] / self.out_stride) * (input_hw[0] / self.out_stride)
        b = bias.view(self.num_anchors, self.num_attrib)
        b[:, 4] = math.log(objects_per_image / (cells * num_heads * self.num_anchors))
        b[:, 5:] = 0.0

    def settings_row(self) -> tuple[str, str, str]:
        r = self.settings
        return ("region", f"bias_match={int(r.bias_match)} rescore={int(r.rescore)} thresh={r.thresh} "
                          f"coord={r.coord_scale} object={r.object_scale} noobject={r.noobject_scale} "
                          f"class={r.class_scale}", "cfg [region]")

    def clear_cache(self) -> None:
        self._grids = {}


def _iou_cxcywh(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of (N, 4) and (M, 4) boxes given as cx, cy, w, h."""
    return box_iou(box_convert(a, "cxcywh", "xyxy"), box_convert(b, "cxcywh", "xyxy"))


class RegionLoss(HeadLoss):
    """The summed (box, obj, cls) loss of every [region] head (see the module docstring)."""

    def __init__(self, heads: Sequence[RegionLayer]) -> None:
        self.heads = list(heads)
        for head in self.heads:
            problem = head.training_problem()
            if problem:
                raise ValueError(f"{head.where}: {problem}")

    def __call__(self, outputs: Sequence[torch.Tensor], targets: torch.Tensor,
                 input_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        device = outputs[0].device
        zero = torch.zeros((), device=device)
        lbox, lobj, lcls = zero, zero, zero
        for head, p in zip(self.heads, outputs):
            box, obj, cls = self._one(head, p.float(), targets.to(device=device, dtype=torch.float32))
            lbox, lobj, lcls = lbox + box, lobj + obj, lcls + cls
        return lbox, lobj, lcls

    @staticmethod
    def _one(head: RegionLayer, p: torch.Tensor, targets: torch.Tensor):
        r = head.settings
        batch, na, ny, nx, _ = p.shape
        device = p.device
        anchors = head.anchors.to(device)  # grid cells
        grid_wh = torch.tensor([nx, ny, nx, ny], device=device, dtype=torch.float32)
        img = targets[:, 0].long()
        tcls = targets[:, 1].long()
        tbox = targets[:, 2:6] * grid_wh  # cx, cy, w, h in grid cells
        obj = torch.sigmoid(p[..., 4])

        # "no object" for every prediction whose box overlaps no target by more than thresh
        noobj_w = torch.ones(p.shape[:4], device=device)
        with torch.no_grad():
            ys, xs = torch.meshgrid(torch.arange(ny, device=device), torch.arange(nx, device=device), indexing="ij")
            pred = torch.stack((xs + torch.sigmoid(p[..., 0]), ys + torch.sigmoid(p[..., 1]),
                                torch.exp(p[..., 2].clamp(max=10)) * anchors[:, 0].view(1, -1, 1, 1),
                                torch.exp(p[..., 3].clamp(max=10)) * anchors[:, 1].view(1, -1, 1, 1)), -1)
            for b in range(batch):
                t = tbox[img == b]
                if len(t):
                    best = _iou_cxcywh(pred[b].reshape(-1, 4), t).max(1).values.view(na, ny, nx)
                    noobj_w[b][best > r.thresh] = 0.0
        if not len(targets):
            return torch.zeros((), device=device), (0.5 * r.noobject_scale * obj.square() * noobj_w).sum(), \
                torch.zeros((), device=device)

        # each target: its cell, and the anchor (or predicted box) shape that best overlaps it
        gi = tbox[:, 0].long().clamp(0, nx - 1)
        gj = tbox[:, 1].long().clamp(0, ny - 1)
        if r.bias_match:
            shapes = anchors.unsqueeze(0).expand(len(targets), -1, -1)
        else:
            shapes = pred[img, :, gj, gi, 2:4]  # (N, na, 2)
        inter = torch.minimum(shapes, tbox[:, None, 2:]).prod(-1)
        wh_iou = inter / (shapes.prod(-1) + tbox[:, None, 2:].prod(-1) - inter)
        an = wh_iou.argmax(1)
        # one target per predictor (Darknet overwrites: the last target wins)
        cell = ((img * na + an) * ny + gj) * nx + gi
        order = torch.arange(len(cell), device=device)
        last = torch.full((int(cell.max()) + 1,), -1, dtype=torch.long, device=device).scatter_reduce(
            0, cell, order, "amax")
        keep = last[cell] == order
        img, an, gj, gi, tb, tc = img[keep], an[keep], gj[keep], gi[keep], tbox[keep], tcls[keep]

        noobj_w[img, an, gj, gi] = 0.0
        lobj = (0.5 * r.noobject_scale * obj.square() * noobj_w).sum()
        ps = p[img, an, gj, gi]
        # coordinates: logistic x, y to the offset in the cell, raw w, h to log(target / anchor)
        txy = tb[:, :2] - torch.stack((gi, gj), 1).float()
        twh = torch.log(tb[:, 2:] / anchors[an])
        lbox = 0.5 * r.coord_scale * ((torch.sigmoid(ps[:, :2]) - txy).square().sum()
                                      + (ps[:, 2:4] - twh).square().sum())
        o = torch.sigmoid(ps[:, 4])
        if r.rescore:
            with torch.no_grad():
                box = pred[img, an, gj, gi]
                target_obj = torch.diagonal(_iou_cxcywh(box, tb)) if len(box) else o.detach()
        else:
            target_obj = torch.ones_like(o)
        lobj = lobj + (0.5 * r.object_scale * (o - target_obj).square()).sum()
        lcls = r.class_scale * F.cross_entropy(ps[:, 5:], tc, reduction="sum")
        return lbox, lobj, lcls
