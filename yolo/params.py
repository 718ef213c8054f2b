"""Every training hyper-parameter declared once: name, type, Darknet default, cfg key, flag, help.

``NetConfig``'s training fields, ``Hyp``, ``Overrides``, ``TrainOptions``' override fields,
``resolve_hyp`` and the train command's flags are all derived from ``PARAMS``; adding a
hyper-parameter is one ``Param`` here (plus the code that uses its value). This module imports
nothing of the project, so that ``netconfig`` (read by inference) and ``hyp`` (training) can
both derive from it without an import cycle.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

#: Darknet's lr policies ([net] policy); the trainer implements a subset (``hyp.SUPPORTED_POLICIES``)
POLICIES = ("constant", "steps", "step", "exp", "poly", "sigmoid", "random", "sgdr")


#: what a Param may say: value types (a list is comma-separated in cfg and flag), cfg sections, groups
TYPES = (int, float, bool, str, list[int], list[float])
SECTIONS = ("net", "yolo", None)
GROUPS = ("hyp", "augment", "run")


@dataclass(frozen=True)
class Param:
    """One hyper-parameter. ``section``: where the cfg holds it ("net": a ``NetConfig`` field with
    ``default`` as Darknet's default; "yolo": a head setting, its default is the head's; None: not
    in the cfg, ``default`` is ours). ``group``: "hyp" (a ``Hyp`` field: schedule and optimiser),
    "augment" (image augmentation) or "run" (other training behaviour). ``flag``: the train
    command's override (None: the cfg's value only). ``shrinks``: fitted to a run shorter than
    the cfg's ``max_batches`` (``hyp.shrink_schedule``)."""

    name: str
    type: Any
    default: Any
    section: str | None
    flag: str | None
    help: str = ""
    group: str = "hyp"
    cfg_key: str | None = None  # defaults to ``name`` when ``section`` is set
    shrinks: bool = False
    choices: tuple[str, ...] = ()
    negatable: bool = True  # a bool flag with a --no- form (else store_true)

    def __post_init__(self) -> None:
        checks = ((self.type in TYPES, f"type {self.type} is not one of {', '.join(map(str, TYPES))}"),
                  (self.section in SECTIONS, f"section {self.section!r} is not one of {SECTIONS}"),
                  (self.group in GROUPS, f"group {self.group!r} is not one of {GROUPS}"),
                  (not self.flag or self.flag.startswith("--"), f"flag {self.flag!r} does not start with --"),
                  (self.group != "hyp" or self.section == "net" or self.default is not None,
                   "a Hyp field needs a cfg value or a default"))
        problem = next((message for ok, message in checks if not ok), None)
        if problem:
            raise ValueError(f"hyper-parameter {self.name}: {problem}")

    @property
    def key(self) -> str | None:
        """The cfg key (None: not in the cfg)."""
        return (self.cfg_key or self.name) if self.section else None

    @property
    def option(self) -> str | None:
        """The ``TrainOptions`` / ``Overrides`` field name of the flag ("--burn-in" -> "burn_in")."""
        return self.flag[2:].replace("-", "_") if self.flag else None

    @property
    def is_list(self) -> bool:
        return self.type in (list[int], list[float])

    def default_field(self) -> Any:
        """A dataclass field holding the declared default (lists copied per instance)."""
        if isinstance(self.default, (list, tuple)):
            return field(default_factory=lambda d=tuple(self.default): list(d))
        return field(default=self.default)

    def cli_help(self) -> str:
        """The flag's help: where the cfg holds it, what it does, its default when not the cfg's."""
        where = f"[{self.section}] {self.key}" if self.section else ""
        text = ": ".join(t for t in (where, self.help) if t)
        if self.shrinks:
            text += "; default: the cfg's, shrunk to the run's length"
        elif self.section is None and self.default is not None and self.type is not bool:
            text += f"; default {self.default:g}"
        return text


_NET, _YOLO = "net", "yolo"
PARAMS: tuple[Param, ...] = (
    # schedule and optimiser: the fields of Hyp, in the order the trainer prints them
    Param("learning_rate", float, 0.001, _NET, "--lr"),
    Param("momentum", float, 0.9, _NET, "--momentum"),
    Param("decay", float, 0.0005, _NET, "--decay", "weight decay of conv weights"),
    Param("burn_in", int, 0, _NET, "--burn-in", "warm-up steps (lr * (i/burn_in)^power)", shrinks=True),
    Param("power", float, 4.0, _NET, None, "burn-in exponent"),
    Param("policy", str, "constant", _NET, None, "lr policy", choices=POLICIES),
    Param("steps", list[int], (), _NET, "--steps", "comma-separated optimiser steps", shrinks=True),
    Param("scales", list[float], (), _NET, "--scales", "comma-separated"),
    Param("step", int, 1, _NET, None, "policy=step: lr * scale^(i/step); policy=sig: the midpoint", shrinks=True),
    Param("scale", float, 1.0, _NET, None, "policy=step: the factor every step steps"),
    Param("gamma", float, 1.0, _NET, None, "policy=exp: lr * gamma^i; policy=sig: lr / (1 + exp(gamma (i - step)))"),
    Param("learning_rate_min", float, 0.00001, _NET, None, "policy=sgdr: the lr at the end of a cycle"),
    Param("sgdr_cycle", int, 0, _NET, None, "policy=sgdr: steps of the first cosine cycle (0: Darknet's default, "
          "max_batches)", shrinks=True),
    Param("sgdr_mult", int, 2, _NET, None, "policy=sgdr: each cycle is this many times as long as the one before"),
    Param("max_batches", int, 0, _NET, None, "optimiser steps of the run", shrinks=True),
    Param("batch", int, 1, _NET, "--batch", "images per optimiser step, gradients accumulated"),
    Param("subdivisions", int, 1, _NET, None, "forward passes per optimiser step"),
    Param("nesterov", bool, False, None, "--nesterov", "Nesterov momentum", negatable=False),
    # augmentation, in the order the trainer prints them
    Param("jitter", float, None, _YOLO, "--jitter", "random crop/scale/translate", group="augment"),
    Param("hue", float, 0.0, _NET, "--hue", group="augment"),
    Param("saturation", float, 1.0, _NET, "--saturation", group="augment"),
    Param("exposure", float, 1.0, _NET, "--exposure", group="augment"),
    Param("angle", float, 0.0, _NET, "--angle", "rotation, degrees", group="augment"),
    Param("mosaic", bool, False, _NET, "--mosaic", group="augment"),
    Param("flip", bool, True, _NET, "--flip", group="augment"),
    Param("letter_box", bool, False, _NET, None, group="augment"),
    # other training behaviour
    Param("multiscale", bool, None, _YOLO, "--multiscale", "a new input size every 10 steps (range scaled to "
          "--img-size)", group="run", cfg_key="random"),
    Param("augment", bool, None, None, "--augment", "all augmentation (default on); --no-augment trains on plain "
          "resized images", group="run"),
    Param("amp", bool, None, None, "--amp", "mixed precision (default: on CUDA): bf16 autocast on CPUs with AVX-512 "
          "BF16 / AMX and on CUDA 8.0+ GPUs, fp16 + loss scaling on older GPUs", group="run"),
    Param("ema_decay", float, 0.9999, None, "--ema-decay", "EMA decay, ramped up; default: the cfg's [net] "
          "ema_alpha when it is set, else 0.9999", group="run"),
    # Darknet (train_network_waitkey) averages from max_batches/2 on and copies the average into the weights
    # 1000 steps before the end; here the EMA runs from the start (ramped up) and is the model evaluated and
    # saved as best: only its decay comes from the cfg
    Param("ema_alpha", float, 0.0, _NET, None, "Darknet's weights EMA decay (0: none); the trainer's EMA "
          "decay unless --ema-decay is given", group="run"),
    Param("sparsity", float, 0.0, None, "--sparsity", "network slimming: add S * sign(gamma) to the gradients of "
          "the prunable BN scales (then python -m yolo.prune)", group="run"),
    Param("sparsity_decay", float, 1.0, None, "--sparsity-decay", "the --sparsity penalty falls linearly to S * "
          "this by the end of the run (1: constant)", group="run"),
)

BY_NAME: dict[str, Param] = {p.name: p for p in PARAMS}


_ANY: Any = object()


def params(*, section: str | None = _ANY, group: str | None = None,
           flagged: bool | None = None) -> tuple[Param, ...]:
    """The declared params with that section / group / having a flag (each filter optional)."""
    return tuple(p for p in PARAMS
                 if (section is _ANY or p.section == section) and (group is None or p.group == group)
                 and (flagged is None or (p.flag is not None) == flagged))


def make_fields(name: str, chosen: Iterable[Param], spec: Callable[[Param], tuple[str, Any, Any]],
                frozen: bool = False) -> type:
    """A dataclass with one field per param, ``spec(p) -> (field name, type, dataclasses.field)``;
    the classes that derive from the table subclass it (their methods stay readable code)."""
    return dataclasses.make_dataclass(name, [spec(p) for p in chosen], frozen=frozen)


def default(name: str) -> Any:
    """A param's declared default (e.g. ``ModelEMA``'s decay)."""
    return BY_NAME[name].default


# ---------------------------------------------------------------------------------------------
# cfg keys read and accepted without a Param: the one list of them, each with why
# ---------------------------------------------------------------------------------------------
#: what a declared key is. "unread": Darknet itself reads it nowhere in that section (it prints "Unused
#: field"); "runtime": a Darknet speed / memory / display setting, nothing computed changes; "classifier":
#: Darknet's classifier training (classifier.c) reads it, this project trains detectors only (a cfg without a
#: head is refused by the trainer); "training": Darknet's detector training reads it and this trainer does
#: not implement it: accepted for inference, refused at training unless it is ``inert``.
KEY_KINDS = ("unread", "runtime", "classifier", "training")


@dataclass(frozen=True)
class CfgKey:
    """One declared key of a cfg section (see ``KEY_KINDS``). ``inert``: for "training", the value
    (Darknet's default) at which the key changes nothing; None: any value is refused."""

    section: str
    key: str
    kind: str
    why: str
    inert: str | None = "0"

    def __post_init__(self) -> None:
        if self.kind not in KEY_KINDS:
            raise ValueError(f"cfg key [{self.section}] {self.key}: kind {self.kind!r} is not one of {KEY_KINDS}")


_CLS, _AUG = "classifier", "training"
CFG_KEYS: tuple[CfgKey, ...] = (
    # [net]: classifier training (classifier.c load_data_augment)
    CfgKey("net", "max_crop", _CLS, "classifier training: the largest random crop"),
    CfgKey("net", "min_crop", _CLS, "classifier training: the smallest random crop"),
    CfgKey("net", "aspect", _CLS, "classifier training: the random aspect-ratio range"),
    CfgKey("net", "label_smooth_eps", _CLS, "classifier training's label smoothing ([yolo] has its own key)"),
    # [net]: keys Darknet reads nowhere
    CfgKey("net", "max_epochs", "unread", "Darknet reads no max_epochs (its runs last max_batches)"),
    CfgKey("net", "seen", "unread", "Darknet reads no seen key (the count is in the .weights header)"),
    # [net]: Darknet's speed / memory / display settings
    CfgKey("net", "use_cuda_graph", "runtime", "CUDA graphs on Darknet's GPU path"),
    CfgKey("net", "optimized_memory", "runtime", "Darknet's GPU memory saving"),
    CfgKey("net", "workspace_size_limit_MB", "runtime", "Darknet's cuDNN workspace size"),
    CfgKey("net", "try_fix_nan", "runtime", "Darknet's NaN guard"),
    CfgKey("net", "max_chart_loss", "runtime", "the top of Darknet's loss chart"),
    CfgKey("net", "show_receptive_field", "runtime", "Darknet prints the receptive fields"),
    # [net]: detector training Darknet has and this trainer does not (train_detector's load_args)
    CfgKey("net", "blur", _AUG, "blur augmentation"),
    CfgKey("net", "gaussian_noise", _AUG, "Gaussian noise augmentation"),
    CfgKey("net", "mixup", _AUG, "MixUp augmentation"),
    CfgKey("net", "cutmix", _AUG, "CutMix augmentation"),
    CfgKey("net", "mosaic_bound", _AUG, "mosaic with the boxes kept inside their tile"),
    CfgKey("net", "contrastive", _AUG, "contrastive (embedding) training"),
    CfgKey("net", "contrastive_jit_flip", _AUG, "contrastive training's flipped pairs"),
    CfgKey("net", "contrastive_color", _AUG, "contrastive training's colour jitter"),
    CfgKey("net", "unsupervised", _AUG, "unsupervised contrastive training"),
    CfgKey("net", "adversarial_lr", _AUG, "adversarial training"),
    CfgKey("net", "track", _AUG, "sequence (tracking) training"),
    CfgKey("net", "time_steps", _AUG, "frames per training sequence (Darknet multiplies the batch by it)", "1"),
    CfgKey("net", "augment_speed", _AUG, "the frame-step range of track=1 sequences", "2"),
    CfgKey("net", "dynamic_minibatch", _AUG, "a minibatch that changes with the input size"),
    CfgKey("net", "adam", _AUG, "the Adam optimiser (the trainer has SGD)"),
    CfgKey("net", "resize_step", _AUG, "the multi-scale step (the trainer's is the network stride)", "32"),
    CfgKey("net", "equidistant_point", _AUG, "Darknet's equidistant-point sampling of the rejected labels"),
    CfgKey("net", "badlabels_rejection_percentage", _AUG, "bad-label rejection"),
    CfgKey("net", "num_sigmas_reject_badlabels", _AUG, "bad-label rejection"),
    CfgKey("net", "weights_reject_freq", _AUG, "rejection of similar weights"),
    # [yolo]: keys parse_yolo reads nowhere (yolov4-sam-mish-csp-reorg-bfm.cfg writes them)
    CfgKey("yolo", "uc_normalizer", "unread", "parse_yolo reads no uc_normalizer (a [Gaussian_yolo] key)"),
    CfgKey("yolo", "beta1", "unread", "Darknet reads no beta1"),
    CfgKey("yolo", "show_details", "runtime", "what Darknet prints while training"),
    # [yolo]: parts of Darknet's [yolo] loss the trainer does not implement
    CfgKey("yolo", "focal_loss", _AUG, "the focal loss of the classes"),
    CfgKey("yolo", "counters_per_class", _AUG, "per-class loss multipliers", None),
    CfgKey("yolo", "delta_normalizer", _AUG, "a factor on every delta (Darknet's GPU path)", "1"),
    CfgKey("yolo", "iou_thresh_kind", _AUG, "another overlap than IoU for iou_thresh", "iou"),
    CfgKey("yolo", "max", _AUG, "at most this many boxes per image (the trainer uses them all)", "200"),
)


def cfg_keys(section: str, kind: str | None = None) -> tuple[CfgKey, ...]:
    """The declared keys of a section type (``"net"``, ``"yolo"``), of one kind when given."""
    return tuple(k for k in CFG_KEYS if k.section == section and (kind is None or k.kind == kind))
