"""Resolving a run's hyper-parameters: cfg value -> command-line override -> the run's plan.

Pure functions, no model and no files: each resolved value is a ``Setting`` that carries where
it came from ("cfg", "--lr", "shrunk from 4000", "checkpoint"), so the trainer can print what
it uses and why. Every [net] value and its Darknet default come from ``NetConfig`` (never
restated here). Darknet's bookkeeping is kept: an optimiser *step* is one Darknet "batch"
(``batch`` images through ``subdivisions`` forwards), and the lr schedule counts these steps.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Generic, Sequence, TypeVar

import numpy as np

from .netconfig import NetConfig

T = TypeVar("T")

#: the [net] policies the trainer implements (Darknet has more; they are refused with a clear error)
SUPPORTED_POLICIES = ("constant", "steps", "poly")
#: Darknet's multi-scale range at 416 is [320, 608]: these fractions scale it to any input size
MULTISCALE_LO, MULTISCALE_HI = 10 / 13, 19 / 13
MULTISCALE_EVERY = 10  # optimiser steps between two input sizes (Darknet's)


class HypError(ValueError):
    """Hyper-parameters that cannot work together (e.g. 2 steps but 1 scale)."""


@dataclass(frozen=True)
class Setting(Generic[T]):
    """A resolved value and where it came from (printed next to it)."""

    value: T
    source: str


@dataclass
class Hyp:
    """The schedule and optimiser values a run uses. No defaults on purpose: a [net] default lives
    in ``NetConfig`` only, and a Hyp is built from one (``from_net``/``resolve_hyp``) or from a
    checkpoint (``from_dict``)."""

    learning_rate: float
    momentum: float
    decay: float
    burn_in: int
    power: float
    policy: str
    steps: list[int]
    scales: list[float]
    max_batches: int
    batch: int  # images per optimiser step (Darknet's batch)
    subdivisions: int
    nesterov: bool

    @classmethod
    def from_net(cls, net: NetConfig, nesterov: bool = False) -> "Hyp":
        """The cfg's values as they are (no overrides, no shrinking)."""
        values = {f.name: getattr(net, f.name) for f in fields(cls) if f.name != "nesterov"}
        return cls(**{k: list(v) if isinstance(v, list) else v for k, v in values.items()}, nesterov=nesterov)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Hyp":
        """From a checkpoint's ``hyp`` entry; missing or unknown keys raise ``HypError``."""
        names = {f.name for f in fields(cls)}
        if set(d) != names:
            raise HypError(f"hyper-parameters do not match this version (missing: "
                           f"{sorted(names - set(d)) or '-'}, unknown: {sorted(set(d) - names) or '-'})")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Overrides:
    """Command-line values that replace the cfg's (None: not given)."""

    lr: float | None = None
    momentum: float | None = None
    decay: float | None = None
    burn_in: int | None = None
    steps: list[int] | None = None
    scales: list[float] | None = None
    batch: int | None = None
    nesterov: bool | None = None


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


def _shrunk(cfg_value: T, value: T, override: T | None, option: str) -> Setting[T]:
    if override is not None:
        return Setting(override, option)
    if value == cfg_value:
        return Setting(value, "cfg")
    shown = ",".join(map(str, cfg_value)) if isinstance(cfg_value, list) else cfg_value
    return Setting(value, f"shrunk from {shown}")


def resolve_hyp(net: NetConfig, o: Overrides, total_steps: int) -> dict[str, Setting]:
    """Every ``Hyp`` field as a Setting: cfg value, shrunk to the run unless overridden, overridden."""
    burn_in, steps, max_batches = shrink_schedule(net.burn_in, net.steps, net.max_batches, total_steps)
    s: dict[str, Setting] = {
        "learning_rate": pick(net.learning_rate, o.lr, "--lr"),
        "momentum": pick(net.momentum, o.momentum, "--momentum"),
        "decay": pick(net.decay, o.decay, "--decay"),
        "burn_in": _shrunk(net.burn_in, burn_in, o.burn_in, "--burn-in"),
        "power": Setting(net.power, "cfg"),
        "policy": Setting(net.policy, "cfg"),
        "steps": _shrunk(list(net.steps), steps, o.steps, "--steps"),
        "scales": pick(list(net.scales), o.scales, "--scales"),
        "max_batches": _shrunk(net.max_batches, max_batches, None, ""),
        "batch": pick(net.batch, o.batch, "--batch"),
        "subdivisions": Setting(net.subdivisions, "cfg"),
        "nesterov": Setting(bool(o.nesterov), "--nesterov") if o.nesterov else Setting(False, "default"),
    }
    check_hyp(hyp_from(s))
    return s


def hyp_from(settings: dict[str, Setting]) -> Hyp:
    return Hyp(**{k: v.value for k, v in settings.items()})


def check_hyp(hyp: Hyp, cfg_name: str = "the cfg") -> None:
    """Refuse what the trainer cannot do (an unsupported policy, steps without their scales)."""
    if hyp.policy not in SUPPORTED_POLICIES:
        raise HypError(f"{cfg_name}: policy={hyp.policy} is not supported by the trainer "
                       f"({', '.join(SUPPORTED_POLICIES)})")
    if hyp.policy == "steps" and len(hyp.steps) != len(hyp.scales):
        raise HypError(f"{len(hyp.steps)} steps but {len(hyp.scales)} scales")


# ---------------------------------------------------------------------------------------------
# per-step schedules: learning rate and multi-scale input size
# ---------------------------------------------------------------------------------------------
def lr_at(step: int, hyp: Hyp) -> float:
    """Darknet's ``get_current_rate`` for optimiser step ``step`` (0-based): ``lr * (i/burn_in)^power``
    during the warm-up, then the policy (steps: times each scale passed; poly: ``(1 - i/max)^power``)."""
    lr = hyp.learning_rate
    if step < hyp.burn_in:
        return lr * ((step + 1) / hyp.burn_in) ** hyp.power
    if hyp.policy == "steps":
        for s, scale in zip(hyp.steps, hyp.scales):
            if s > step:
                break
            lr *= scale
        return lr
    if hyp.policy == "poly" and hyp.max_batches:
        return lr * max(0.0, 1 - step / hyp.max_batches) ** hyp.power
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
