"""The [net] section: input geometry (typed here) and the training values (declared in ``yolo.params``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .cfg import Section
from .params import POLICIES, Param, cfg_keys, make_fields, params

__all__ = ["NetConfig", "POLICIES", "accept_declared", "training_refusals"]

_TRAINING = params(section="net")
_READERS = {int: "int", float: "float", bool: "bool", str: "str", list[int]: "ints", list[float]: "floats"}


def accept_declared(s: Section, section: str) -> None:
    """Read the keys ``yolo.params.CFG_KEYS`` declares for this section type, so that none of them is
    reported as unused (each is there with why it changes nothing computed here)."""
    for k in cfg_keys(section):
        if k.key in s:
            s.str(k.key)


def _same(value: str, inert: str) -> bool:
    try:
        return float(value) == float(inert)
    except ValueError:
        return value == inert


def training_refusals(s: Section, section: str, where: bool = True) -> list[str]:
    """What the trainer must refuse in this section: each declared "training" key set to another value
    than its inert one, as ``file:line: [type] key 'k': k=v (what it is) is not implemented by the trainer``
    (``where=False``, for a block whose messages the trainer prefixes with its section: ``line N: k=v ...``)."""
    return [f"{s.where(k.key) + ':' if where else f'line {s.key_lines.get(k.key, s.line)}:'} {k.key}={s.str(k.key)} "
            f"({k.why}) is not implemented by the trainer"
            for k in cfg_keys(section, "training")
            if k.key in s and (k.inert is None or not _same(s.str(k.key), k.inert))]


def _read(s: Section, p: Param) -> Any:
    """A declared [net] value from the cfg section (its Darknet default when the key is absent)."""
    if p.choices:
        return s.choice(p.key, p.choices, p.default)
    default = list(p.default) if p.is_list else p.default
    return getattr(s, _READERS[p.type])(p.key, default)


_NetTraining = make_fields("_NetTraining", _TRAINING, lambda p: (p.name, p.type, p.default_field()))


@dataclass
class NetConfig(_NetTraining):  # type: ignore[misc, valid-type]
    """[net]: the geometry below plus one field per training value of ``yolo.params`` (its default)."""

    width: int = 416
    height: int = 416
    channels: int = 3
    section: Section | None = None

    @classmethod
    def from_section(cls, s: Section) -> "NetConfig":
        d = cls()
        accept_declared(s, "net")
        net = cls(width=s.int("width", d.width), height=s.int("height", d.height),
                  channels=s.int("channels", d.channels), section=s, **{p.name: _read(s, p) for p in _TRAINING})
        if net.width < 1 or net.height < 1 or net.channels < 1:
            raise s.error(f"width, height and channels must be positive, got "
                          f"{net.width}, {net.height}, {net.channels}")
        if net.batch < 1 or net.subdivisions < 1 or net.batch % net.subdivisions:
            raise s.error(f"batch={net.batch} must be a positive multiple of subdivisions={net.subdivisions}",
                          "subdivisions")
        if net.policy == "steps" and len(net.steps) != len(net.scales):
            raise s.error(f"{len(net.steps)} steps but {len(net.scales)} scales", "scales")
        return net

    def training_problems(self) -> list[str]:
        """The [net] keys the trainer refuses (declared "training" keys at a value it does not implement)."""
        return training_refusals(self.section, "net") if self.section is not None else []
