"""The [net] section: input geometry (typed here) and the training values (declared in ``yolo.params``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .cfg import Section
from .params import POLICIES, Param, make_fields, params

__all__ = ["NetConfig", "POLICIES"]

_TRAINING = params(section="net")
_READERS = {int: "int", float: "float", bool: "bool", str: "str", list[int]: "ints", list[float]: "floats"}


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
