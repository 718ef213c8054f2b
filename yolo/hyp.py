"""Resolving a run's hyper-parameters: cfg value -> command-line override -> the run's plan.

Pure functions, no model and no files: each resolved value is a ``Setting`` that carries where
it came from ("cfg", "--lr", "shrunk from 4000", "checkpoint"), so the trainer can print what
it uses and why. Every hyper-parameter (name, type, Darknet default, cfg key, flag) is declared
once in ``yolo.params``; ``Hyp``, ``Overrides``, the options' override fields and ``resolve_hyp``
are derived from that table (never restated here). Darknet's bookkeeping is kept: an optimiser
*step* is one Darknet "batch" (``batch`` images through ``subdivisions`` forwards), and the lr
schedule counts these steps.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Generic, Sequence, TypeVar

import numpy as np

from .errors import YoloError
from .params import BY_NAME, Param, make_fields, params

if TYPE_CHECKING:
    from .netconfig import NetConfig

T = TypeVar("T")

#: the [net] policies the trainer implements (Darknet's "random", a new random lr every step, is refused)
SUPPORTED_POLICIES = ("constant", "steps", "step", "exp", "poly", "sigmoid", "sgdr")
#: the Hyp fields only some policies read (``get_current_rate``); the settings table shows them for those only
POLICY_FIELDS = {"step": ("step", "scale"), "exp": ("gamma",), "sigmoid": ("gamma", "step"),
                 "sgdr": ("learning_rate_min", "sgdr_cycle", "sgdr_mult")}
#: Hyp fields a checkpoint written before they were declared lacks: their defaults are what that run used
#: (the policies that read them were refused then)
LATER_FIELDS = ("step", "scale", "gamma", "learning_rate_min", "sgdr_cycle", "sgdr_mult")
#: Darknet's multi-scale range at 416 is [320, 608]: these fractions scale it to any input size
MULTISCALE_LO, MULTISCALE_HI = 10 / 13, 19 / 13
MULTISCALE_EVERY = 10  # optimiser steps between two input sizes (Darknet's)


class HypError(YoloError):
    """Hyper-parameters that cannot work together (e.g. 2 steps but 1 scale)."""


@dataclass(frozen=True)
class Setting(Generic[T]):
    """A resolved value and where it came from (printed next to it)."""

    value: T
    source: str


#: the Hyp fields (schedule and optimiser), in the order the trainer prints them
HYP_PARAMS: tuple[Param, ...] = params(group="hyp")


@dataclass
class Hyp(make_fields("HypFields", HYP_PARAMS, lambda p: (p.name, p.type, field()))):  # type: ignore[misc]
    """The schedule and optimiser values a run uses: one field per ``HYP_PARAMS`` entry. No defaults
    on purpose: a Hyp is built from a ``NetConfig`` (``from_net``/``resolve_hyp``) or from a
    checkpoint (``from_dict``)."""

    @classmethod
    def from_net(cls, net: NetConfig, nesterov: bool = False) -> "Hyp":
        """The cfg's values as they are (no overrides, no shrinking); a value the cfg does not hold
        is its declared default."""
        values = {p.name: _cfg_value(net, p) for p in HYP_PARAMS}
        return cls(**{**values, "nesterov": nesterov})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Hyp":
        """From a checkpoint's ``hyp`` entry; missing (except ``LATER_FIELDS``) or unknown keys raise ``HypError``."""
        names = {f.name for f in fields(cls)}
        d = {**{p.name: p.default for p in HYP_PARAMS if p.name in LATER_FIELDS}, **d}
        if set(d) != names:
            raise HypError(f"hyper-parameters do not match this version (missing: "
                           f"{sorted(names - set(d)) or '-'}, unknown: {sorted(set(d) - names) or '-'})")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cfg_value(net: NetConfig, p: Param) -> Any:
    """The cfg's value of a Hyp param (a copy of a list), its declared default when not in the cfg."""
    value = getattr(net, p.name) if p.section == "net" else p.default
    return list(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class Overrides(make_fields("OverrideFields", params(group="hyp", flagged=True),
                            lambda p: (p.option, p.type | None, field(default=None)), frozen=True)):  # type: ignore[misc]
    """Command-line values that replace the cfg's, parsed (None: not given); one field per Hyp
    param with a flag, named after the flag (``lr``, ``burn_in`` ...)."""


def _option_field(p: Param) -> tuple[str, Any, Any]:
    """A flag as ``TrainOptions`` keeps it: lists as the comma-separated text given; None (the cfg's
    value) for a param the cfg holds, else the declared default."""
    kind = str if p.is_list else p.type
    return p.option, kind | None, field(default=None if p.section else p.default)


#: the override fields of ``TrainOptions`` (one per flagged param), as given on the command line
OptionFields = make_fields("OptionFields", params(flagged=True), _option_field)


def overrides_from(options: Any) -> Overrides:
    """The ``Overrides`` of options holding ``OptionFields`` (comma-separated lists parsed)."""
    def parsed(p: Param) -> Any:
        v = getattr(options, p.option)
        if p.type == list[int]:
            return parse_ints(v, p.flag)
        return parse_floats(v, p.flag) if p.type == list[float] else v

    return Overrides(**{p.option: parsed(p) for p in params(group="hyp", flagged=True)})


def parse_ints(text: str | None, option: str) -> list[int] | None:
    """``"400,450"`` -> ``[400, 450]`` (None stays None); a bad list names the option."""
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise HypError(f"{option}: expected comma-separated integers, got '{text}'") from None


def parse_floats(text: str | None, option: str) -> list[float] | None:
    """``".1,.1"`` -> ``[0.1, 0.1]`` (None stays None); a bad list names the option."""
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise HypError(f"{option}: expected comma-separated numbers, got '{text}'") from None


def pick(cfg_value: T, override: T | None, option: str) -> Setting[T]:
    """The override when given, else the cfg's value."""
    return Setting(cfg_value, "cfg") if override is None else Setting(override, option)


# ---------------------------------------------------------------------------------------------
# the run's length
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunPlan:
    """How the images of one epoch become optimiser steps, and how many steps the run has."""

    minibatch: int  # images per forward pass (per rank)
    accumulate: int  # forward passes per optimiser step
    steps_per_epoch: int
    epochs: int
    total_steps: int


def plan_run(n_images: int, batch: int, subdivisions: int, batch_size: int | None = None,
             epochs: int | None = None, max_batches: int = 0, max_steps: int | None = None, world: int = 1,
             cfg_name: str = "the cfg") -> RunPlan:
    """Minibatch, accumulation and the number of steps. Without ``epochs`` the run lasts the cfg's
    ``max_batches`` steps (rounded up to whole epochs, then cut at ``max_batches``)."""
    minibatch = batch_size if batch_size is not None else max(1, batch // subdivisions)
    if minibatch < 1 or batch < 1:
        raise HypError("--batch and --batch-size must be positive")
    accumulate = max(1, round(batch / (minibatch * world)))
    per_rank = math.ceil(n_images / world)
    steps_per_epoch = math.ceil(math.ceil(per_rank / minibatch) / accumulate)
    if epochs is None:
        if not max_batches:
            raise HypError(f"{cfg_name} has no max_batches: give --epochs")
        epochs = math.ceil(max_batches / steps_per_epoch)
        total = min(epochs * steps_per_epoch, max_batches)
    else:
        total = epochs * steps_per_epoch
    if max_steps is not None:
        total = min(total, max_steps)
    return RunPlan(minibatch, accumulate, steps_per_epoch, epochs, total)


def shrink_schedule(burn_in: int, steps: Sequence[int], max_batches: int,
                    total_steps: int) -> tuple[int, list[int], int]:
    """Fit the cfg's schedule (written for ``max_batches`` steps) onto a shorter run.

    A COCO cfg warms up for 4000 steps and decays at 80 % / 90 % of 500k: kept verbatim, a
    fine-tuning run of a few hundred steps would never leave the warm-up. When the run is shorter
    than ``max_batches``, ``burn_in`` and ``steps`` scale by the same ratio (they fall at the same
    fraction of the run) and ``max_batches`` becomes the run's length (for ``poly``).
    Returns ``(burn_in, steps, max_batches)``, unchanged for a run as long as the cfg's.
    """
    if not max_batches or total_steps >= max_batches:
        return burn_in, list(steps), max_batches
    r = total_steps / max_batches
    return int(round(burn_in * r)), [max(1, int(round(s * r))) for s in steps], total_steps


def shrink_count(steps: int, max_batches: int, total_steps: int) -> int:
    """A length in steps (``step``, ``sgdr_cycle``) fitted to a shorter run as ``shrink_schedule`` fits
    the steps; 0 (sgdr_cycle: "max_batches") stays 0."""
    if not max_batches or total_steps >= max_batches or steps <= 0:
        return steps
    return max(1, int(round(steps * total_steps / max_batches)))


def _shrunk(cfg_value: T, value: T, override: T | None, option: str) -> Setting[T]:
    if override is not None:
        return Setting(override, option)
    if value == cfg_value:
        return Setting(value, "cfg")
    shown = ",".join(map(str, cfg_value)) if isinstance(cfg_value, list) else cfg_value
    return Setting(value, f"shrunk from {shown}")


def resolve_hyp(net: NetConfig, o: Overrides, total_steps: int) -> dict[str, Setting]:
    """Every ``Hyp`` field as a Setting: cfg value, shrunk to the run unless overridden, overridden.
    A param the cfg does not hold is its declared default unless given with another value."""
    burn_in, steps, max_batches = shrink_schedule(net.burn_in, net.steps, net.max_batches, total_steps)
    shrunk = {"burn_in": burn_in, "steps": steps, "max_batches": max_batches,
              **{k: shrink_count(getattr(net, k), net.max_batches, total_steps) for k in ("step", "sgdr_cycle")}}
    s: dict[str, Setting] = {}
    for p in HYP_PARAMS:
        given = getattr(o, p.option) if p.flag else None
        value = _cfg_value(net, p)
        if p.section is None:
            s[p.name] = Setting(given, p.flag) if given not in (None, p.default) else Setting(p.default, "default")
        elif p.shrinks:
            s[p.name] = _shrunk(value, shrunk[p.name], given, p.flag or "")
        else:
            s[p.name] = pick(value, given, p.flag or "")
    check_hyp(hyp_from(s))
    return s


def unread_by_policy(policy: str) -> set[str]:
    """The policy-specific Hyp fields ``policy`` does not read (left out of the settings table)."""
    return {k for keys in POLICY_FIELDS.values() for k in keys} - set(POLICY_FIELDS.get(policy, ()))


def resolve_ema_decay(given: float, net: NetConfig) -> Setting[float]:
    """The EMA's decay: ``--ema-decay`` when given (another value than its default), else the cfg's
    ``[net] ema_alpha`` when set, else the default."""
    ours = BY_NAME["ema_decay"].default
    if given != ours:
        return Setting(given, "--ema-decay")
    return Setting(net.ema_alpha, "cfg ema_alpha") if net.ema_alpha else Setting(ours, "default")


def hyp_from(settings: dict[str, Setting]) -> Hyp:
    return Hyp(**{k: v.value for k, v in settings.items()})


def check_hyp(hyp: Hyp, cfg_name: str = "the cfg") -> None:
    """Refuse what the trainer cannot do (an unsupported policy, steps without their scales)."""
    if hyp.policy not in SUPPORTED_POLICIES:
        raise HypError(f"{cfg_name}: policy={hyp.policy} is not supported by the trainer "
                       f"({', '.join(SUPPORTED_POLICIES)})")
    if hyp.policy == "steps" and len(hyp.steps) != len(hyp.scales):
        raise HypError(f"{len(hyp.steps)} steps but {len(hyp.scales)} scales")
    if hyp.policy == "step" and hyp.step < 1:
        raise HypError(f"{cfg_name}: policy=step needs step >= 1, got {hyp.step}")
    if hyp.policy == "sgdr" and ((hyp.sgdr_cycle or hyp.max_batches) < 1 or hyp.sgdr_mult < 1):
        raise HypError(f"{cfg_name}: policy=sgdr needs a cycle (sgdr_cycle or max_batches) of at least 1 step and "
                       f"sgdr_mult >= 1, got sgdr_cycle={hyp.sgdr_cycle}, max_batches={hyp.max_batches}, "
                       f"sgdr_mult={hyp.sgdr_mult}")


# ---------------------------------------------------------------------------------------------
# per-step schedules: learning rate and multi-scale input size
# ---------------------------------------------------------------------------------------------
def lr_at(step: int, hyp: Hyp) -> float:
    """Darknet's ``get_current_rate`` for optimiser step ``step`` (0-based): ``lr * (i/burn_in)^power``
    during the warm-up, with ``i = step + 1`` (Darknet's ``batch_num`` at that update), then the policy
    of ``i = step``: one step behind Darknet, as the steps and poly schedules always were here (a
    checkpoint resumes on the schedule it was trained with)."""
    lr = hyp.learning_rate
    if step < hyp.burn_in:
        return lr * ((step + 1) / hyp.burn_in) ** hyp.power
    i = step
    if hyp.policy == "steps":
        for s, scale in zip(hyp.steps, hyp.scales):
            if s > i:
                break
            lr *= scale
        return lr
    if hyp.policy == "poly" and hyp.max_batches:
        return lr * max(0.0, 1 - i / hyp.max_batches) ** hyp.power
    if hyp.policy == "step":
        return lr * hyp.scale ** (i // hyp.step)
    if hyp.policy == "exp":
        return lr * hyp.gamma ** i
    if hyp.policy == "sigmoid":
        return lr / (1 + math.exp(min(hyp.gamma * (i - hyp.step), 700.0)))
    if hyp.policy == "sgdr":  # cosine from lr down to learning_rate_min, each cycle sgdr_mult times longer
        start, cycle = 0, hyp.sgdr_cycle or hyp.max_batches
        while start + cycle < i:
            start += cycle
            cycle *= hyp.sgdr_mult
        lo = hyp.learning_rate_min
        return lo + 0.5 * (lr - lo) * (1 + math.cos((i - start) * math.pi / cycle))
    return lr


def multiscale_range(img_size: int, stride: int) -> tuple[int, int]:
    """Darknet's [320, 608] around 416, scaled to ``img_size`` (multiples of the network stride)."""
    lo = max(stride, int(round(img_size * MULTISCALE_LO / stride)) * stride)
    hi = max(lo, int(round(img_size * MULTISCALE_HI / stride)) * stride)
    return lo, hi


def multiscale_size(step: int, seed: int, lo: int, hi: int, stride: int, every: int = MULTISCALE_EVERY) -> int:
    """A new size every ``every`` optimiser steps, drawn from (seed, step), so it is the same on
    every rank and after a resume."""
    rng = np.random.default_rng((seed, 7919, step // every))
    return int(rng.integers(lo // stride, hi // stride + 1)) * stride


def format_settings(rows: Sequence[tuple[str, Any, str]]) -> str:
    """``name  value  source`` lines, aligned (the table a run prints before it starts)."""
    return "\n".join(f"  {k:<16}{_show(v):<28} {src}".rstrip() for k, v, src in rows)


def _show(v: Any) -> str:
    if isinstance(v, list):
        return ",".join(map(str, v)) or "-"
    return str(v)
